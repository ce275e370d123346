"""Where should propagation stop? The model's evidence per slice, measured on volumes.

    python training/propagation_stop_eval.py --volumes 16 --json docs/results/propagation_stop.json

Builds synthetic CT volumes (``train.synthetic_volume``: a target organ on a known
slice range beside a neighbour that continues past its ends), segments the target
on its middle slice from its tight box, as a user would, then propagates both ways
*without* the evidence checks (only an empty mask ends a direction), recording per
slice the backbone's predicted IoU, the share of the mask next to the previous
slice's, the area ratio, the mean probability and MC-dropout uncertainty inside the
mask, and whether the slice lies in the target's span.

Stopping only truncates a trajectory, so every stop rule can be replayed exactly
on the recordings. The thresholds are chosen on the first half of the volumes
(the calibration half) and reported on the second half: slices labelled outside
the span, slices missed inside it, volume Dice.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--volumes", type=int, default=16)
    p.add_argument("--depth", type=int, default=31)
    p.add_argument("--size", type=int, default=192)
    p.add_argument("--model", default="medsam_lite")
    p.add_argument("--window", default="abdomen")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args(argv)


def record(session, volume: np.ndarray, labels: np.ndarray, start: int, window: str) -> dict:  # noqa: ANN001
    """One volume's unchecked propagation: per-slice evidence and masks."""
    from napari_imedsam.propagate import StopRule, iter_propagation
    from napari_imedsam.train.synthetic_volume import TARGET

    truth = labels == TARGET
    rows, cols = np.nonzero(truth[start])
    box = (cols.min(), rows.min(), cols.max() + 1.0, rows.max() + 1.0)
    session.set_image(volume[start], window=window)
    start_mask = session.predict(np.asarray([box])).masks()[0]
    extra: dict[int, dict] = {}

    def segment_slice(plane: int, box):  # noqa: ANN001, ANN202
        session.set_image(volume[plane], window=window)
        result = session.predict(np.asarray([box]))
        mask = result.masks()[0]
        inside = mask if mask.any() else np.ones_like(mask)
        extra[plane] = {"prob": float(result.prob[0, 0][inside].mean()),
                        "unc": float(result.uncertainty[0, 0][inside].mean())
                        if result.uncertainty is not None else float("nan")}
        return mask, float(result.iou[0])

    open_rule = StopRule(min_pixels=1, min_fraction=0.0, max_growth=float("inf"))
    steps, gen = [], iter_propagation(segment_slice, start, start_mask, len(volume), "both",
                                      rule=open_rule)
    try:
        while True:
            steps.append(next(gen))
    except StopIteration:
        pass
    return {"start": start, "start_mask": start_mask, "truth": truth, "steps": [
        {"plane": s.plane, "way": s.direction, "mask": s.mask, "iou": s.evidence.iou,
         "overlap": s.evidence.overlap, **extra[s.plane]} for s in steps]}


def replay(rec: dict, rule) -> dict:  # noqa: ANN001
    """The labels a rule would have written, and how they compare with the truth."""
    from napari_imedsam.propagate import Evidence, check_mask

    truth, start = rec["truth"], rec["start"]
    pred = np.zeros_like(truth)
    pred[start] = rec["start_mask"]
    start_area = int(rec["start_mask"].sum())
    for way in ("up", "down"):
        previous_area = start_area
        for step in (s for s in rec["steps"] if s["way"] == way):
            evidence = Evidence(step["iou"], step["overlap"])
            if check_mask(step["mask"], previous_area, start_area, rule, evidence) is not None:
                break
            pred[step["plane"]] = step["mask"]
            previous_area = int(step["mask"].sum())
    span = np.flatnonzero(truth.any(axis=(1, 2)))
    labelled = np.flatnonzero(pred.any(axis=(1, 2)))
    dice = 2 * (pred & truth).sum() / max(1, pred.sum() + truth.sum())
    return {"extra_slices": int(np.setdiff1d(labelled, span).size),
            "missed_slices": int(np.setdiff1d(span, labelled).size),
            "max_slices_past_end": int(max(0, labelled.max() - span.max(),
                                           span.min() - labelled.min())),
            "volume_dice": float(dice)}


def summarise(recs: list[dict], rule) -> dict:  # noqa: ANN001
    rows = [replay(r, rule) for r in recs]
    return {k: round(float(np.mean([r[k] for r in rows])), 4) for k in rows[0]} | {
        "worst_past_end": max(r["max_slices_past_end"] for r in rows)}


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    from napari_imedsam.inference.session import SegmentationSession
    from napari_imedsam.model.loading import load_model
    from napari_imedsam.propagate import StopRule
    from napari_imedsam.train.synthetic_volume import synthetic_ct_volume

    session = SegmentationSession(load_model(args.model), device="cpu")
    rng = np.random.default_rng(args.seed)
    recs = []
    for i in range(args.volumes):
        first = int(rng.integers(3, 9))
        last = int(rng.integers(args.depth - 9, args.depth - 3))
        volume, labels = synthetic_ct_volume(rng, args.depth, args.size, (first, last))
        recs.append(record(session, volume, labels, (first + last) // 2, args.window))
        print(f"volume {i}: span {first}-{last}, {len(recs[-1]['steps'])} slices followed",
              flush=True)

    half = len(recs) // 2
    calib, held = recs[:half], recs[half:]
    inside = [s for r in calib for s in r["steps"] if r["truth"][s["plane"]].any()]
    past = [s for r in calib for s in r["steps"] if not r["truth"][s["plane"]].any()]
    table = {key: {"in_span_p05": float(np.nanpercentile([s[key] for s in inside], 5)),
                   "in_span_min": float(np.nanmin([s[key] for s in inside])),
                   "past_end_median": float(np.nanmedian([s[key] for s in past]))
                   if past else None}
             for key in ("iou", "overlap", "prob", "unc")}
    # Candidate thresholds on the calibration half: the best volume Dice wins.
    base = StopRule()
    candidates = {"default_area_rules_only": base}
    for iou in np.arange(0.50, 0.951, 0.025):
        for overlap in (None, 0.5, 0.7, 0.8, 0.9):
            candidates[f"iou<{iou:.3f},overlap<{overlap}"] = replace(
                base, min_iou=round(float(iou), 3), min_overlap=overlap)
    scored = {name: summarise(calib, rule) for name, rule in candidates.items()}
    best = max(scored, key=lambda n: (scored[n]["volume_dice"], -scored[n]["extra_slices"]))
    report = {
        "model": args.model, "volumes": args.volumes, "depth": args.depth, "size": args.size,
        "evidence_calibration_half": table,
        "chosen_on_calibration": {"rule": best, "min_iou": candidates[best].min_iou,
                                  "min_overlap": candidates[best].min_overlap,
                                  "calibration": scored[best]},
        "held_out": {"chosen": summarise(held, candidates[best]),
                     "default_area_rules_only": summarise(held, base),
                     "no_checks": summarise(held, StopRule(min_pixels=1, min_fraction=0.0,
                                                           max_growth=float("inf")))},
    }
    print(json.dumps(report, indent=1))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
