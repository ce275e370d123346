"""The Segment widget's hints: measured checks (napari_imedsam.advice), on real images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_imedsam.session_holder import ModelSpec, Request, SessionHolder, segment_body
from napari_imedsam.advice import ADVICE, advise

KVASIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "kvasir-sessile"


def test_hints_follow_the_measured_thresholds():
    mask = np.zeros((20, 20), bool)
    assert "no object found" in advise("medsam_lite", mask, float("nan"))
    mask[5:15, 5:15] = True
    limit = ADVICE["medsam_lite"].min_iou
    assert advise("medsam_lite", mask, limit + 0.01) is None
    low = advise("medsam_lite", mask, limit - 0.01)
    assert "doubts" in low and f"{limit - 0.01:.2f}" in low and "tight" in low
    assert advise("medsam_lite", mask, float("nan")) is None  # no IoU head, no claim
    # A backbone whose IoU head was never measured gets no confidence hint at all.
    assert advise("tiny", mask, 0.01) is None
    assert "no object found" in advise("tiny", mask & False, 0.01)


def _worker_outcome(holder: SessionHolder, image: np.ndarray, box) -> object:  # noqa: ANN001
    body = segment_body(holder, Request(1, ModelSpec("medsam_lite", None, "cpu"), image, None,
                                   tuple(float(v) for v in box)))
    try:
        while True:
            next(body)
    except StopIteration as stop:
        return stop.value


@pytest.mark.skipif(not KVASIR.is_dir(), reason="the shared Kvasir-Sessile images are absent")
def test_default_model_hints_on_background_boxes_not_on_tight_ones(tmp_path, monkeypatch):
    from napari_imedsam.train.data import load_folder

    monkeypatch.setenv("IMEDSAM_CACHE_DIR", str(tmp_path))
    holder = SessionHolder()
    items = load_folder(KVASIR)[2:5:2]  # two polyps with background in a corner
    for item in items:
        truth = item.labels > 0
        rows, cols = np.nonzero(truth)
        tight = (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
        outcome = _worker_outcome(holder, item.image, tight)
        assert outcome.error is None and outcome.advice is None, (item.name, outcome.advice)
        width, height = tight[2] - tight[0], tight[3] - tight[1]
        corner = (item.image.shape[1] - width, 0, item.image.shape[1], height)  # top right
        assert not truth[:height, -width:].any()
        outcome = _worker_outcome(holder, item.image, corner)
        assert outcome.mask.any()  # this model always outlines something...
        assert outcome.advice is not None and "doubts" in outcome.advice  # ...and says so
