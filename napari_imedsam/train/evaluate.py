"""Evaluate a model at any label size, next to the ellipse-in-the-box baseline.

Protocol (the paper's, and the data README's baseline): ground truth is
resized to ``label_size x label_size`` (nearest); the object's tight box in the
image (at its own resolution) is the prompt; the model's probability is decoded
on the label grid and thresholded at 0.5. The ellipse baseline is inscribed in
the tight box of the resized object. Cross-resolution evaluation is the same with another
``label_size`` than the training input size.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..inference.clicks import DEFAULT_CLICK_RULE
from ..inference.accelerate import EncoderRuntime
from ..inference.cache import EmbeddingCache
from ..inference.session import SegmentationSession
from ..model.modeling.imedsam import IMedSAM
from ..model.torch_guard import trim_heap
from . import metrics
from .data import LabeledImage, box_of, box_of_value
from .samples import sample_refs, targets_for

ProgressFn = Callable[[int, int], None]


@torch.no_grad()
def evaluate_model(
    model: IMedSAM,
    images: Sequence[LabeledImage],
    *,
    label_size: int,
    device: torch.device | None = None,
    with_distances: bool = True,
    seed: int = 0,
    on_progress: ProgressFn | None = None,
    decoder: str = "imedsam",
    box_margin_px: float = 0.0,
    should_stop: Callable[[], bool] | None = None,
    embeddings: EmbeddingCache | None = None,
    accelerate: bool = True,
    clicks: int = 0,
    error_pixels: list[tuple[np.ndarray, np.ndarray]] | None = None,
    click_rule: str = DEFAULT_CLICK_RULE,
    encoder: EncoderRuntime | None = None,
) -> list[dict[str, Any]]:
    """One row per object (binary) or per present class (multi-class).

    ``decoder``: ``imedsam`` (the implicit decoder) or ``sam`` (SAM's own).
    ``box_margin_px``: grow each prompt box by this many image pixels per side
    (clipped to the image), to see how loose a box the model expects.
    ``should_stop``: polled before each object; the rows so far come back at once.
    ``embeddings``: a cache kept between calls (validation after every epoch of a
    frozen-encoder run: the images are embedded once, not once an epoch).
    ``accelerate``: the OpenVINO encoder where it applies; off for an encoder that is
    being trained (each validation would export a new graph).
    ``clicks``: after the box, up to this many corrective clicks placed by the
    challenge's protocol from the ground truth on the label grid
    (:func:`napari_imedsam.train.clicks.protocol_click`); each row then has
    ``dice_c0`` (the box) .. ``dice_cN`` and ``clicks_made`` (binary models only).
    ``error_pixels``: when given and the model has an error map, each object's
    ``(P(wrong), wrong)`` for the pixels inside its box (after the last click) are
    appended, for :func:`napari_imedsam.model.error_map.calibration`.
    ``click_rule``: how each click's answer joins the mask
    (:data:`napari_imedsam.inference.clicks.CLICK_RULES`).
    ``encoder``: the runtime that embeds the images (else the session chooses).
    """
    # Each layer's own mode comes back: a training run keeps frozen BatchNorm layers
    # in evaluation mode (``build.enter_training``), which ``model.train()`` would undo.
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    device = device or model.device
    classes = model.config.num_classes
    if clicks and classes > 1:
        raise ValueError("clicks are evaluated on one-class models; choose --class for one "
                         "class's report without clicks")
    refs = sample_refs(images, classes)
    rows: list[dict[str, Any]] = []
    # Dense decoding: evaluation measures the model, not the adaptive approximation.
    # A small cache unless one is given: the objects of one image share its embedding.
    session = SegmentationSession(model, device=device, mode=decoder, precision="fp32",
                                  cache_bytes=64 << 20, seed=seed, adaptive=False,
                                  accelerate=accelerate, click_rule=click_rule,
                                  encoder=encoder)
    if embeddings is not None:
        session.cache = embeddings
    shape = (label_size, label_size)
    for done, ref in enumerate(refs):
        if should_stop is not None and should_stop():
            break
        item = None  # the image before goes before the next is read (a lazy set)
        trim_heap()  # and its pages with it
        item = images[ref.index]
        targets, image_box = _targets_and_box(item, ref, classes, shape)
        union = targets.any(axis=0)
        if not union.any():
            continue  # the object vanished at this size (smaller than a label pixel)
        grid_box = np.asarray(box_of(union), dtype=np.float64)
        height, width = item.image.shape[:2]
        # Keyed by position and name, not by the object: a lazily read set makes a new
        # object for each read, whose id may be a freed one's.
        session.set_image(item.image, key=("evaluate", ref.index, item.name))
        if box_margin_px:
            image_box = np.clip(image_box + np.array([-1, -1, 1, 1]) * box_margin_px,
                                0, [width, height, width, height])
        result = session.predict(image_box[None], region=(0.0, 0.0, height, width),
                                 out_shape=shape)
        curve: list[float] = []
        suggested = None
        if clicks:
            if result.error is not None:
                suggested = _suggested_dice(session, result, image_box, targets[0],
                                            (height, width), shape)
            result, curve = _click_curve(session, result, image_box, targets[0], clicks,
                                         (height, width), shape)
        if error_pixels is not None and result.error is not None and classes == 1:
            from .calibrate import box_window

            rows_, cols_ = box_window(image_box, (height, width), shape)
            pred = result.prob[0].max(axis=0) > 0.5
            error_pixels.append((result.error[0][rows_, cols_].ravel(),
                                 (pred != targets[0])[rows_, cols_].ravel()))
        ellipse = metrics.ellipse_in_box(tuple(grid_box), shape)
        for k in range(targets.shape[0]):
            if classes > 1 and not targets[k].any():
                continue
            pred = result.prob[0, k] > 0.5
            object_id = ref.object_id or k + 1
            row: dict[str, Any] = {"image": item.name, "object": object_id,
                                   "dice": metrics.dice(pred, targets[k]),
                                   "ellipse_dice": metrics.dice(ellipse, targets[k]),
                                   "label": item.label_names.get(object_id, "")}
            for c, value in enumerate(curve):
                row[f"dice_c{c}"] = value
            if curve:
                row["clicks_made"] = _made(curve)
            if suggested is not None:
                row["dice_suggested"] = suggested
            if result.iou is not None:
                row["pred_iou"] = float(result.iou[0])  # the backbone's own confidence
            if result.uncertainty is not None:
                std = np.sqrt(np.maximum(result.uncertainty[0, k], 0.0))
                row["unc_band_ratio"] = metrics.boundary_band_ratio(pred, std, grid_box)
            if with_distances:
                row["hd"] = metrics.hausdorff(pred, targets[k])
                row["hd95"] = metrics.hd95(pred, targets[k])
                row["ellipse_hd"] = metrics.hausdorff(ellipse, targets[k])
            rows.append(row)
        if on_progress is not None:
            on_progress(done + 1, len(refs))
    for module, training in modes:
        module.training = training
    return rows


def _targets_and_box(item: LabeledImage, ref: Any, classes: int, shape: tuple[int, int]
                     ) -> tuple[np.ndarray, np.ndarray]:
    """``(K, h, w)`` targets on the label grid and the prompt: the object's tight box at
    the image's own resolution (one from the resized labels would be up to a label
    pixel looser). One object's are found without a full-size mask, which on a
    12000 x 12000 image peaked 144 MB higher beside the encoder's buffers (issue 23)."""
    if ref.object_id is not None:
        from ..inference.regions import resample_nearest

        # The same pixels as resizing the object's mask: nearest takes one source
        # pixel per output pixel either way.
        targets = (resample_nearest(item.labels, shape) == ref.object_id)[None]
        if not targets.any():
            return targets, np.zeros(4)
        return targets, np.asarray(box_of_value(item.labels, ref.object_id), dtype=np.float64)
    native = targets_for(item, ref, classes)
    targets = np.stack([metrics.resize_mask(t, shape) for t in native])
    if not targets.any():
        return targets, np.zeros(4)
    box = box_of(native[0] if len(native) == 1 else native.any(axis=0))
    return targets, np.asarray(box, dtype=np.float64)


def _made(curve: list[float]) -> int:
    """Clicks made: until the mask was exact (Dice 1), every click."""
    exact = [i for i, d in enumerate(curve) if d >= 1.0]
    return (exact[0] if exact else len(curve) - 1)


def _click_curve(session: SegmentationSession, result: Any, box: np.ndarray,
                 target: np.ndarray, clicks: int, image_shape: tuple[int, int],
                 shape: tuple[int, int]) -> tuple[Any, list[float]]:
    """Dice after the box, then after each protocol click (the last result too)."""
    from ..inference.session import Clicks
    from .clicks import protocol_click

    height, width = image_shape
    xy: list[tuple[float, float]] = []
    labels: list[int] = []
    pred = result.prob[0].max(axis=0) > 0.5
    curve = [metrics.dice(pred, target)]
    for _ in range(clicks):
        click = protocol_click(pred, target)
        if click is None:  # exact: nothing to correct, the Dice carries over
            curve.append(curve[-1])
            continue
        xy.append(click.xy(shape, image_shape))
        labels.append(int(click.positive))
        result = session.predict(box[None], clicks=[Clicks.of(xy, labels)],
                                 region=(0.0, 0.0, height, width), out_shape=shape)
        pred = result.prob[0].max(axis=0) > 0.5
        curve.append(metrics.dice(pred, target))
    return result, curve


def _suggested_dice(session: SegmentationSession, result: Any, box: np.ndarray,
                    target: np.ndarray, image_shape: tuple[int, int],
                    shape: tuple[int, int]) -> float | None:
    """Dice after one click where the error map suggests it (the widget's Shift+N),
    signed as the ground truth says there; None when it suggests nothing."""
    from ..inference.session import Clicks
    from ..model.error_map import next_click
    from .clicks import Click

    pred = result.prob[0].max(axis=0) > 0.5
    found = next_click(result.error[0], pred)
    if found is None:
        return None
    row, col, _ = found
    click = Click(row, col, bool(target[row, col]))
    height, width = image_shape
    again = session.predict(box[None], clicks=[Clicks.of([click.xy(shape, image_shape)],
                                                         [int(click.positive)])],
                            region=(0.0, 0.0, height, width), out_shape=shape)
    return metrics.dice(again.prob[0].max(axis=0) > 0.5, target)


def dice_per_class(model: IMedSAM, images: list[LabeledImage], label_size: int = 128,
                   **options: Any) -> dict[str, float]:
    """Mean Dice per class name (multi-class models: every class of a group answers its
    group's box); ``options`` go to :func:`evaluate_model`."""
    from ..model.classes import classes_of

    rows = evaluate_model(model, images, label_size=label_size, with_distances=False, **options)
    names = {k + 1: c.name for k, c in enumerate(classes_of(model))}
    return {names[k]: float(np.mean([r["dice"] for r in rows if r["object"] == k]))
            for k in sorted(names) if any(r["object"] == k for r in rows)}


def summary(rows: list[dict[str, Any]], **info: Any) -> dict[str, Any]:
    """Means over objects, in the JSON layout the CLI writes."""
    def mean(key: str) -> float | None:
        values = [r[key] for r in rows if key in r and math.isfinite(r[key])]
        return float(np.mean(values)) if values else None

    names = sorted({r["label"] for r in rows if r.get("label")})
    per_label = {name: {"dice": float(np.mean([r["dice"] for r in rows if r.get("label") == name])),
                        "n_objects": sum(r.get("label") == name for r in rows)}
                 for name in names}
    curves = [[r[f"dice_c{c}"] for c in range(1 + max(int(k[6:]) for k in r
                                                      if k.startswith("dice_c")))]
              for r in rows if "dice_c0" in r]
    clicked: dict[str, Any] = {}
    if curves and len({len(c) for c in curves}) == 1:
        from .clicks import click_curve_summary

        made = np.array([[i < r["clicks_made"] for i in range(len(curves[0]) - 1)]
                         for r in rows if "dice_c0" in r])
        clicked = click_curve_summary(np.array(curves), made)
        pairs = [(r["dice_suggested"] - r["dice_c0"], r["dice_c1"] - r["dice_c0"])
                 for r in rows if "dice_suggested" in r and "dice_c1" in r]
        if pairs:
            gains = np.array(pairs)
            clicked["suggested_click_gain"] = float(gains[:, 0].mean())
            clicked["protocol_click_gain"] = float(gains[:, 1].mean())
            clicked["suggested_to_protocol_gain"] = (
                float(gains[:, 0].mean() / gains[:, 1].mean()) if gains[:, 1].mean() else None)
    return {
        "dice": mean("dice"),
        **clicked,
        "hd": mean("hd"),
        "hd95": mean("hd95"),
        "ellipse_dice": mean("ellipse_dice"),
        "ellipse_hd": mean("ellipse_hd"),
        "dice_std": float(np.std([r["dice"] for r in rows])) if rows else None,
        # MC-dropout std within 3 px of the predicted boundary / elsewhere in the box.
        "unc_band_ratio": mean("unc_band_ratio"),
        "n_images": len({r["image"] for r in rows}),
        "n_objects": len(rows),
        **({"per_label": per_label} if per_label else {}),
        **info,
    }


def report_paths(json_path: str | Path) -> tuple[Path, Path]:
    """``NAME.json`` and the per-object ``NAME.csv`` beside it."""
    json_path = Path(json_path)
    return json_path, json_path.with_suffix(".csv")


def check_report_paths(json_path: str | Path, overwrite: bool, inputs: tuple[Path, ...] = ()
                       ) -> None:
    """Before evaluating: the report's files are not inputs and, unless ``overwrite``,
    do not exist (``--json split.json`` would otherwise replace ``split.csv``)."""
    resolved = {Path(p).resolve() for p in inputs if p is not None}
    for path in report_paths(json_path):
        if path.resolve() in resolved:
            raise ValueError(f"{path} is an input of this evaluation: choose another --json name")
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} already exists: choose another --json name or "
                                  "pass --overwrite")
    from ..saving import check_writable_folder

    check_writable_folder(Path(json_path).resolve().parent)


def write_report(report: dict[str, Any], rows: list[dict[str, Any]], json_path: str | Path,
                 overwrite: bool = False) -> Path:
    """Write the JSON summary and a per-object CSV beside it (``NAME.csv``) as one set:
    both are put in place, or neither (a name taken meanwhile, a kill between the
    writes); an existing file is replaced only with ``overwrite``."""
    from ..saving import staged_files

    json_path, csv_path = report_paths(json_path)
    text = json.dumps(report, indent=2) + "\n"
    paths = [json_path, csv_path] if rows else [json_path]
    with staged_files(paths, overwrite=overwrite) as staged:
        staged[0].write_text(text)
        if rows:
            with staged[1].open("w", newline="") as f:
                # Every key of every row (with clicks, some rows have more than others).
                writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(
                    k for row in rows for k in row)))
                writer.writeheader()
                writer.writerows(rows)
    return csv_path
