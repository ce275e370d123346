"""Held-out Dice per epoch while fine-tuning: how quick mode's settings play out.

    python training/finetune_curve.py --data ../shared/data/kvasir-sessile \
        --images 16 --minutes 4 --box-jitter 0 --json runs/curve-tight-flips.json

Trains a model (the default ``medsam_lite`` model) in ``decoder`` (quick) mode on
the first ``--images`` images of the split's ``train`` subset, the way the
Fine-tune widget does (no warm-ups: the decoder is already trained), and
validates after every epoch on the whole ``val`` subset, which the Fine-tune
widget's small held-out share cannot do reliably. Prints and writes the Dice
of the starting model and after each epoch.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=Path("../shared/data/kvasir-sessile"))
    p.add_argument("--split", type=Path, default=None,
                   help="name,split CSV (default: the first CSV in DATA/splits)")
    p.add_argument("--images", type=int, default=16, help="training images")
    p.add_argument("--minutes", type=float, default=4.0, help="time limit of the training")
    p.add_argument("--model", default="medsam_lite")
    p.add_argument("--box-jitter", type=float, default=0.0, help="px of a 384 input")
    p.add_argument("--no-flips", action="store_true", help="no cached flipped views")
    p.add_argument("--label-size", type=int, default=128)
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--save", type=Path, default=None, help="keep the best adapter here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    import tempfile

    import torch

    from napari_imedsam.finetune import mean_dice
    from napari_imedsam.model.loading import load_model
    from napari_imedsam.train.data import load_folder
    from napari_imedsam.train.engine import TrainConfig, train

    split = args.split or sorted((args.data / "splits").glob("*.csv"))[0]
    train_set = load_folder(args.data, split_csv=split, subset="train")[: args.images]
    val_set = load_folder(args.data, split_csv=split, subset="val")
    torch.manual_seed(0)
    model = load_model(args.model)
    before = mean_dice(model, val_set, args.label_size, torch.device("cpu"))
    cfg = TrainConfig(mode="decoder", epochs=1000, device="cpu", val_label_size=args.label_size,
                      time_budget_s=args.minutes * 60, coarse_to_fine_epochs=0.0,
                      pe_warmup_epochs=0.0, box_jitter_px=args.box_jitter,
                      augment=not args.no_flips)
    steps = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.save or Path(tmp) / "curve.safetensors"
        result = train(model, train_set, val_set, cfg, out, overwrite=args.save is not None,
                       on_progress=lambda e: steps.append(1) if e.kind == "step" else None)
    report = {
        "model": args.model, "train_images": len(train_set), "val_images": len(val_set),
        "box_jitter_px": args.box_jitter, "flips": not args.no_flips,
        "minutes": args.minutes, "steps": len(steps), "wall_s": round(time.monotonic() - started),
        "dice_before": round(before or 0.0, 4),
        "dice_per_epoch": [round(h["val_dice"], 4) for h in result.history],
        "best": round(result.best_val_dice or 0.0, 4), "best_epoch": result.best_epoch,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
