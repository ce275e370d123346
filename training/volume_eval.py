"""Propagation through whole volumes, measured: the real spleen CT and synthetic volumes.

    python training/volume_eval.py --json docs/results/volume_eval.json

Runs the product's propagation (``napari_imedsam.propagate.iter_propagation``) as a
user would, with the shipped default model on the CPU:

- ``spleen``: ``../shared/data/ct-volumes/spleen_2`` (26 slices of 5 mm, the spleen
  on slices 3..22). One tight box on the largest slice, then Propagate both ways;
  and separately 3 key slices (the largest, and those at 25 % and 75 % of the true
  span), each from its tight box, then Propagate.
- ``neighbour``: synthetic CT volumes (``train.synthetic_volume``) where a
  neighbouring organ continues past the target's ends; box on the middle slice.
- ``plain_noise``: a bright ellipsoid on slices 5..25 of 31 over plain noise, box on
  slice 15.

Per case: volume Dice, true slices missed, slices labelled outside the true span,
the tip slices' mean Dice (the first and last 2 of the span), and why each
direction ended. Every rule in ``--rules`` is run on every case; the model's
answers are memoised on (slice, box), so rules share the slices they agree on.
``--time`` also reports the propagation's time per slice with the embeddings
cached, against one box's answer.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SPLEEN = HERE.parent.parent / "shared" / "data" / "ct-volumes"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=SPLEEN, help="folder of spleen_2*.nii.gz")
    p.add_argument("--neighbour-volumes", type=int, default=6)
    p.add_argument("--seed", type=int, default=100, help="synthetic volumes' seed (the old "
                   "thresholds were measured on seed 0)")
    p.add_argument("--model", default="medsam_lite")
    p.add_argument("--rules", default="shipped",
                   help="comma list of: shipped, before (the rule of 2026-12-02: no "
                   "appearance), k2, k2.5, k4, no_iou, no_overlap, overlap0.8")
    p.add_argument("--time", action="store_true", help="also time a propagation per slice")
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args(argv)


def rules(names: str, variant: str) -> dict:
    """Named stop rules around the one shipped for ``variant``."""
    from napari_imedsam.propagate import stop_rule_for

    shipped = stop_rule_for(variant)
    table = {
        "shipped": shipped,
        "before": dataclasses.replace(shipped, appearance_k=None, min_iou=0.725,
                                      min_overlap=0.9),
        "k2": dataclasses.replace(shipped, appearance_k=2.0),
        "k2.5": dataclasses.replace(shipped, appearance_k=2.5),
        "k4": dataclasses.replace(shipped, appearance_k=4.0),
        "no_iou": dataclasses.replace(shipped, min_iou=None),
        "no_overlap": dataclasses.replace(shipped, min_overlap=None),
        "overlap0.8": dataclasses.replace(shipped, min_overlap=0.8),
        "overlap0.9": dataclasses.replace(shipped, min_overlap=0.9),
        "iou0.725": dataclasses.replace(shipped, min_iou=0.725),
    }
    chosen = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in table]
    if unknown:
        raise SystemExit(f"unknown rule(s) {unknown}: use {', '.join(table)}")
    return {n: table[n] for n in chosen}


class Answers:
    """The model's answer per (slice, box), memoised, on one volume."""

    def __init__(self, session, volume: np.ndarray, window: str | None) -> None:  # noqa: ANN001
        self.session, self.volume, self.window = session, volume, window
        self.memo: dict = {}

    def __call__(self, plane: int, box) -> tuple[np.ndarray, float]:  # noqa: ANN001
        key = (plane, tuple(round(float(v), 3) for v in box))
        if key not in self.memo:
            self.session.set_image(self.volume[plane], window=self.window)
            result = self.session.predict(np.asarray([box], np.float64))
            self.memo[key] = (result.masks()[0], float(result.iou[0]))
        return self.memo[key]


def tight_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    rows, cols = np.nonzero(mask)
    return (float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def run_case(answers: Answers, truth: np.ndarray, keys: list[int], rule,  # noqa: ANN001
             spacing: tuple[float, ...] | None = None) -> dict:
    """Key slices from their tight boxes, then the product's propagation, scored."""
    from napari_imedsam.propagate import iter_propagation

    volume = answers.volume
    given = {k: answers(k, tight_box(truth[k]))[0] for k in keys}
    pred = np.zeros_like(truth)
    for k, mask in given.items():
        pred[k] = mask
    start = keys[0]
    gen = iter_propagation(answers, start, given[start], len(volume), "both", rule=rule,
                           image_of=lambda p: volume[p], spacing=spacing,
                           keys={k: m for k, m in given.items() if k != start})
    steps = []
    try:
        while True:
            step = next(gen)
            pred[step.plane] = step.mask
            steps.append(step)
    except StopIteration as finished:
        summary = finished.value
    span = np.flatnonzero(truth.any(axis=(1, 2)))
    labelled = np.flatnonzero(pred.any(axis=(1, 2)))
    tips = [*span[:2], *span[-2:]]
    return {
        "volume_dice": round(dice(pred, truth), 4),
        "missed_slices": int(np.setdiff1d(span, labelled).size),
        "outside_slices": int(np.setdiff1d(labelled, span).size),
        "tip_dice": round(float(np.mean([dice(pred[z], truth[z]) for z in tips])), 4),
        "key_dice": {int(k): round(dice(given[k], truth[k]), 4) for k in keys},
        "slice_dice": {int(z): round(dice(pred[z], truth[z]), 3) for z in span},
        "ended": summary.reasons,
        "evidence": [{"plane": s.plane, "way": s.direction, "iou": round(s.evidence.iou, 3),
                      "overlap": round(s.evidence.overlap, 3),
                      "likeness": round(s.evidence.likeness, 3),
                      "area": int(s.mask.sum()), "raw_area": s.evidence.raw_area,
                      "true_area": int(truth[s.plane].sum())} for s in steps],
    }


def key_slices(truth: np.ndarray) -> list[int]:
    """The largest slice, then the slices at 25 % and 75 % of the true span."""
    span = np.flatnonzero(truth.any(axis=(1, 2)))
    largest = int(truth.sum(axis=(1, 2)).argmax())
    first, last = int(span[0]), int(span[-1])
    quarter = [int(round(first + f * (last - first))) for f in (0.25, 0.75)]
    return [largest] + [q for q in quarter if q != largest]


def time_propagation(session, volume: np.ndarray, truth: np.ndarray, rule,  # noqa: ANN001
                     window: str) -> dict:
    """Seconds per propagated slice with every slice's embedding cached, vs one box."""
    from napari_imedsam.propagate import iter_propagation

    for plane in range(len(volume)):  # embed every slice first: the cache holds them
        session.set_image(volume[plane], window=window)
    start = int(truth.sum(axis=(1, 2)).argmax())
    box = np.asarray([tight_box(truth[start])])
    session.set_image(volume[start], window=window)
    session.predict(box)  # warm
    t0 = time.perf_counter()
    for _ in range(5):
        session._memo.clear()  # a new box each time, as drawn  # noqa: SLF001
        start_mask = session.predict(box).masks()[0]
    box_s = (time.perf_counter() - t0) / 5

    def answer(plane: int, b) -> tuple[np.ndarray, float]:  # noqa: ANN001
        session.set_image(volume[plane], window=window)
        result = session.predict(np.asarray([b]))
        return result.masks()[0], float(result.iou[0])

    t0 = time.perf_counter()
    steps = list(iter_propagation(answer, start, start_mask, len(volume), "both", rule=rule,
                                  image_of=lambda p: volume[p]))
    per_slice = (time.perf_counter() - t0) / max(1, len(steps) + 2)  # + the 2 ending slices
    return {"box_answer_s": round(box_s, 4), "propagation_per_slice_s": round(per_slice, 4),
            "ratio": round(per_slice / box_s, 3), "slices": len(steps)}


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    from napari_imedsam.inference.session import SegmentationSession
    from napari_imedsam.io import read_nifti
    from napari_imedsam.model.loading import load_model
    from napari_imedsam.train.synthetic_volume import (
        TARGET, plain_noise_volume, synthetic_ct_volume,
    )

    session = SegmentationSession(load_model(args.model), device="cpu")
    chosen = rules(args.rules, session.model.config.variant)
    cases: list[tuple] = []  # (name, volume, truth, window, key sets, spacing)
    image, label = args.data / "spleen_2.nii.gz", args.data / "spleen_2_label.nii.gz"
    if image.exists() and label.exists():
        loaded = read_nifti(image)
        volume, truth = loaded.data.astype(np.float32), read_nifti(label).data > 0
        keys = key_slices(truth)
        cases.append(("spleen", volume, truth, "abdomen", [keys[:1], keys], loaded.spacing))
    else:
        print(f"no {image}: the real CT is skipped")
    rng = np.random.default_rng(args.seed)
    for i in range(args.neighbour_volumes):
        first, last = int(rng.integers(3, 9)), int(rng.integers(31 - 9, 31 - 3))
        volume, labels = synthetic_ct_volume(rng, 31, 160, (first, last))
        truth = labels == TARGET
        cases.append((f"neighbour_{i}", volume.astype(np.float32), truth, "abdomen",
                      [[(first + last) // 2]], None))
    volume, labels = plain_noise_volume(np.random.default_rng(args.seed), 31, 128, (5, 25))
    cases.append(("plain_noise", volume, labels == TARGET, None, [[15]], None))

    report: dict = {"model": args.model, "date": time.strftime("%Y-%m-%d"),
                    "rules": {n: dataclasses.asdict(r) for n, r in chosen.items()}, "cases": {}}
    for name, volume, truth, window, key_sets, spacing in cases:
        answers = Answers(session, volume, window)
        for keys in key_sets:
            case = name if len(keys) == 1 else f"{name}_{len(keys)}_keys"
            for rule_name, rule in chosen.items():
                t0 = time.perf_counter()
                # "before": as on 2026-12-02, the overlap's reach not scaled by spacing
                out = run_case(answers, truth, keys, rule,
                               None if rule_name == "before" else spacing)
                out["seconds"] = round(time.perf_counter() - t0, 1)
                report["cases"].setdefault(case, {})[rule_name] = out
                print(f"{case:22s} {rule_name:11s} dice {out['volume_dice']:.3f} missed "
                      f"{out['missed_slices']:2d} outside {out['outside_slices']:2d} tips "
                      f"{out['tip_dice']:.3f}  {out['ended']}", flush=True)
    summary = {}
    for rule_name in chosen:
        rows = {c: r[rule_name] for c, r in report["cases"].items()}
        neighbours = [r for c, r in rows.items() if c.startswith("neighbour")]
        summary[rule_name] = {
            **{c: {k: r[k] for k in ("volume_dice", "missed_slices", "outside_slices",
                                     "tip_dice")}
               for c, r in rows.items() if not c.startswith("neighbour")},
            "neighbour_mean": {k: round(float(np.mean([r[k] for r in neighbours])), 4)
                               for k in ("volume_dice", "missed_slices", "outside_slices",
                                         "tip_dice")} if neighbours else None,
            "neighbour_worst_outside": max((r["outside_slices"] for r in neighbours),
                                           default=None),
        }
    report["summary"] = summary
    if args.time and cases and cases[0][0] == "spleen":
        _, volume, truth, window, _, _ = cases[0]
        report["timing"] = time_propagation(session, volume, truth, chosen[next(iter(chosen))],
                                            window or "none")
        print("timing", report["timing"])
    print(json.dumps(summary, indent=1))
    if args.json is not None:
        from napari_imedsam.saving import atomic_save

        args.json.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(report, indent=1) + "\n"
        atomic_save(args.json, lambda tmp: tmp.write_text(text), overwrite=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
