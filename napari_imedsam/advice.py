"""What the Segment widget may tell a user about a box's mask (no Qt, no napari).

Every hint comes from a check measured on real images for the backbone it is
given for (``training/advice_eval.py``; numbers in docs/results/advice_*.json
and docs/training.md). A backbone without measurements gets only the hint that
needs none: an empty mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AdviceThresholds:
    """Per-backbone facts, each measured (see the module docstring)."""

    #: Below this predicted IoU (the backbone's IoU head) most masks are poor.
    min_iou: float
    #: The box that scored best with this backbone, for the wording of hints.
    best_box: str = "a box tight around the whole object"


#: Measured per backbone (docs/results/advice_medsam_lite.json): with LiteMedSAM a
#: tight box scores best (Dice 0.908; 10 % looser 0.888, 25 % looser 0.780, cut
#: 10 % into the object 0.715); it never returned an empty mask, not even for boxes
#: on background; below a predicted IoU of 0.75, 77 % of masks are poor (boxes on
#: background or Dice < 0.7) while 2 of 88 tight boxes fall there.
ADVICE: dict[str, AdviceThresholds] = {
    "medsam_lite": AdviceThresholds(min_iou=0.75),
}


def advise(variant: str, mask: np.ndarray, iou: float) -> str | None:
    """One sentence for the user about this mask, or None when nothing measured
    says anything. ``variant``: the backbone; ``iou``: its predicted IoU (NaN if
    unknown)."""
    known = ADVICE.get(variant)
    how = known.best_box if known is not None else "a box around one whole object"
    if not mask.any():
        return f"no object found in the box; draw {how}"
    if known is not None and np.isfinite(iou) and iou < known.min_iou:
        return (f"the model doubts this mask (predicted IoU {iou:.2f}): check it, or "
                f"redraw the box: {how} works best")
    return None
