"""Suggest what to correct next: rank images or slices by the model's uncertainty.

Each labelled object's tight box is given to the model; the object's score is,
with a model that has an error map (``model.error_map``, what the Segment
widget shows and where it suggests clicking), the expected share of wrong
pixels in the box: the mean probability that a pixel's label is wrong; without
one, the mean MC-dropout standard deviation inside the mask the model predicts.
An image's (slice's) score is the mean over its objects. The most uncertain
comes first: that is where a correction teaches the model most. No Qt here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .train.data import LabeledImage, box_of, object_ids


class NoUncertainty(ValueError):
    """The model gives no uncertainty (SAM's own decoder, no I-MedSAM adapter)."""


def object_uncertainty(prob: np.ndarray, unc: np.ndarray, box: Sequence[float],
                       threshold: float = 0.5) -> float:
    """Mean MC-dropout standard deviation where ``prob`` (H, W) > ``threshold``.

    ``unc`` (H, W) is the model's variance of the probability. Its square root,
    the spread of the probability in probability units (0 to 0.5), is what is
    averaged: the variance inside an object is mostly near zero, so its mean
    (around 1e-4) shows as 0.000 and tells the user nothing.

    When nothing is predicted, the mean over the box (edge coordinates x0, y0,
    x1, y1) is used instead: the model missing an object the user outlined is
    worth a look, and its doubt there is what it has to say about it.
    """
    spread = np.sqrt(np.clip(unc, 0.0, None))
    inside = prob > threshold
    if not inside.any():
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        window = spread[max(0, y0):max(y0 + 1, y1), max(0, x0):max(x0 + 1, x1)]
        return float(window.mean()) if window.size else 0.0
    return float(spread[inside].mean())


def box_error(error: np.ndarray, box: Sequence[float]) -> float:
    """Mean probability that a pixel's label is wrong, over the box (edge coordinates)."""
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    window = error[max(0, y0):max(y0 + 1, y1), max(0, x0):max(x0 + 1, x1)]
    return float(window.mean()) if window.size else 0.0


def score_item(session: Any, item: LabeledImage, key: Any = None) -> float:
    """Mean uncertainty over the objects of one image; NaN when it has none."""
    ids = object_ids(item.labels)
    if not ids:
        return math.nan
    boxes = np.asarray([box_of(item.labels == i) for i in ids], dtype=np.float64)
    session.set_image(item.image, key=key)
    result = session.predict(boxes)
    if result.uncertainty is None:
        raise NoUncertainty(
            "the model gives no uncertainty (its own decoder, not I-MedSAM's): choose the "
            "I-MedSAM decoder and the medsam_lite model, or load an I-MedSAM adapter, in the "
            "Segment widget")
    if result.error is not None:
        scores = [box_error(result.error[i], boxes[i]) for i in range(len(ids))]
    else:
        scores = [object_uncertainty(result.prob[i].max(axis=0),
                                     result.uncertainty[i].max(axis=0), boxes[i])
                  for i in range(len(ids))]
    return float(np.mean(scores))


def score_items(session: Any, items: Sequence[LabeledImage], *,
                should_stop: Callable[[], bool] | None = None,
                on_progress: Callable[[int, int], None] | None = None) -> list[float]:
    """:func:`score_item` for each item (NaN for those not reached before a stop)."""
    scores = [math.nan] * len(items)
    for i, item in enumerate(items):
        if should_stop is not None and should_stop():
            break
        scores[i] = score_item(session, item, key=("suggest", i, id(item)))
        if on_progress is not None:
            on_progress(i + 1, len(items))
    return scores


def rank(scores: Sequence[float]) -> list[int]:
    """Indices from most to least uncertain; NaN (not scored) never ranks."""
    valid = [i for i, s in enumerate(scores) if not math.isnan(s)]
    return sorted(valid, key=lambda i: (-scores[i], i))


class Suggestions:
    """Ranked places to correct: ``(origin, score)`` from most to least uncertain."""

    def __init__(self, origins: Sequence[Any], scores: Sequence[float]) -> None:
        self.ranked = [(origins[i], scores[i]) for i in rank(scores)]

    def __len__(self) -> int:
        return len(self.ranked)


def suggest(session_for: Callable[[], Any], pairs: Sequence[Any], window: str | None = None,
            *, should_stop: Callable[[], bool] | None = None) -> Suggestions:
    """Rank every labelled image and slice of ``pairs`` (``finetune.LayerPair``).

    ``session_for`` gives the inference session (loaded in the caller's worker).
    """
    from .finetune import SliceChoice, collect

    collected = collect(pairs, SliceChoice("labelled"), window)
    session = session_for()
    scores = score_items(session, collected.items, should_stop=should_stop)
    return Suggestions(collected.origins, scores)


# -- worker body (run in a napari thread worker; never raises) --------------------

def rank_body(session_for: Any, pairs: list, window: str | None,
              should_stop: Any) -> Suggestions | str:
    """Worker body: the ranking, or a message saying what to do (never raises)."""
    from .finetune import DataError
    from .model.torch_guard import import_torch
    from .session_holder import SessionError

    try:
        import_torch()  # before the model loads: Triton hidden (see ``model.torch_guard``)
        return suggest(session_for, pairs, window, should_stop=should_stop)
    except (DataError, NoUncertainty) as exc:
        return f"cannot rank: {exc}"
    except SessionError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a notification
        text = str(exc) or type(exc).__name__
        if isinstance(exc, MemoryError) or "out of memory" in text.lower():
            return "ranking ran out of memory: choose device 'cpu' or fewer layers"
        return f"ranking failed: {text}"
