"""Whether a faster, approximate encoder runtime (bf16) may embed images on this CPU.

Issue 24: an approximate encoder is used only when, on the shared Kvasir-Sessile
test split and the AMOS slices, each set's mean Dice stays within
``DICE_TOLERANCE`` (0.005) of the fp32 encoder's. :func:`check_encoder` measures
both runtimes on the same objects in one run (tight boxes, the implicit decoder,
label size 384, as ``imedsam evaluate``); the result goes beside the cached graph
(``accelerate.store_approximate_check``), with the graph's hashes and the CPU's
name, and the session reads it at its first image.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..inference.accelerate import DICE_TOLERANCE, EncoderRuntime, openvino_encoder
from ..model.modeling.imedsam import IMedSAM
from .data import LabeledImage, load_ct_slices, load_folder
from .evaluate import evaluate_model

SPLIT = "surrogate_seed4200_118tr-39val-39ts.csv"


def shared_sets(data: str | Path) -> dict[str, list[LabeledImage]]:
    """The two sets of the check, from a folder laid out as ``shared/data``:
    ``kvasir-sessile/`` (its test split) and ``ct-slices/``."""
    data = Path(data)
    kvasir, slices = data / "kvasir-sessile", data / "ct-slices"
    for needed in (kvasir / "splits" / SPLIT, slices / "images"):
        if not needed.exists():
            raise FileNotFoundError(f"{needed} not found: --data must be a folder with "
                                    "kvasir-sessile/ (and its splits/) and ct-slices/, "
                                    "as the project's shared/data")
    return {"kvasir_test": load_folder(kvasir, split_csv=kvasir / "splits" / SPLIT,
                                       subset="test"),
            "amos_slices": load_ct_slices(slices)}


def _median_ms(runtime: EncoderRuntime, probe: torch.Tensor, repeats: int) -> float:
    runtime.run(probe)  # the first run plans buffers
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        runtime.run(probe)
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1000)


def check_encoder(model: IMedSAM, sets: dict[str, list[LabeledImage]], precision: str = "bf16",
                  *, label_size: int = 384, repeats: int = 5,
                  on_progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Mean Dice of every set with the fp32 and the ``precision`` runtime, the change,
    each object's smallest and largest change, both runtimes' median time for one
    image, and ``passed`` (every set's mean within ``DICE_TOLERANCE``)."""
    exact = openvino_encoder(model, precision="fp32")
    approximate = openvino_encoder(model, precision=precision)
    probe = torch.rand(1, 3, model.config.input_size, model.config.input_size,
                       generator=torch.Generator().manual_seed(24))
    result: dict[str, Any] = {
        "precision": precision, "tolerance": DICE_TOLERANCE, "label_size": label_size,
        "decoder": "imedsam", "date": time.strftime("%Y-%m-%d"), "sets": {},
        "encoder_ms": {"fp32": _median_ms(exact, probe, repeats),
                       precision: _median_ms(approximate, probe, repeats)},
        "max_abs_difference": float((approximate.run(probe) - exact.run(probe)).abs().max()),
    }
    for name, images in sets.items():
        dice = {}
        for label, runtime in (("fp32", exact), (precision, approximate)):
            if on_progress is not None:
                on_progress(f"{name}: {label}")
            rows = evaluate_model(model, images, label_size=label_size, with_distances=False,
                                  encoder=runtime)
            dice[label] = np.array([r["dice"] for r in rows])
        if len(dice["fp32"]) == 0:
            raise ValueError(f"{name}: no object to measure: the check needs labelled objects")
        change = dice[precision] - dice["fp32"]
        result["sets"][name] = {
            "objects": len(change), "dice_fp32": float(dice["fp32"].mean()),
            f"dice_{precision}": float(dice[precision].mean()),
            "change": float(change.mean()),
            "object_change_min": float(change.min()), "object_change_max": float(change.max()),
        }
    result["passed"] = all(abs(s["change"]) <= DICE_TOLERANCE for s in result["sets"].values())
    return result
