"""Classes from a few labelled examples: a wall around a cavity, one box, two heads.

    python training/classes_eval.py --train 20 --test 40 --minutes 5 \
        --json docs/results/classes_synthetic.json

Images with a ring-shaped wall around a disc, or a tube wall around a lumen
(``train.synthetic_rings``); the box of a sample is the whole object's, the
same for both structures. The default model (one head) answers that box with
one mask; here it gets two heads, ``inner`` and ``wall``, each a copy of its
head (so before training both give the base model's mask), and the quick
fine-tuning mode of the Fine-tune widget (``decoder``: the implicit decoder,
frozen encoder, cached embeddings, tight boxes) trains them on ``--train``
labelled images for at most ``--minutes`` on the CPU. Dice per class on
``--test`` held-out images, before and after, is printed and written to
``--json``. ``--kvasir DIR`` does the same on real polyps (``inner``: the
polyp, ``wall``: its rim, a band of ``--rim`` px inside its edge).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def _items(pairs: list, prefix: str) -> list:
    from napari_imedsam.train.data import LabeledImage

    return [LabeledImage(f"{prefix}{i}", im, lab) for i, (im, lab) in enumerate(pairs)]


def _kvasir(folder: Path, count: int, offset: int, rim: int, size: int) -> list:
    """Polyp (1) and its rim (2) on Kvasir-Sessile images, the longest side ``size``."""
    from scipy import ndimage
    from skimage.transform import resize

    from napari_imedsam.train.data import list_pairs, read_image, read_mask

    pairs = sorted(list_pairs(folder))[offset : offset + count]
    out = []
    for _, image_path, mask_path in pairs:
        image, mask = read_image(image_path), read_mask(mask_path) > 0
        scale = size / max(image.shape[:2])  # the longest side to ``size``, aspect kept
        shape = (round(image.shape[0] * scale), round(image.shape[1] * scale))
        image = (resize(image, shape, anti_aliasing=True) * 255).astype(np.uint8)
        mask = resize(mask.astype(float), shape, order=0) > 0.5
        inner = ndimage.binary_erosion(mask, iterations=rim)
        labels = np.where(inner, 1, np.where(mask, 2, 0)).astype(np.int32)
        out.append((image, labels))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train", type=int, default=20, help="labelled training images")
    p.add_argument("--test", type=int, default=40, help="held-out images")
    p.add_argument("--size", type=int, default=256, help="image size (synthetic) in pixels")
    p.add_argument("--minutes", type=float, default=5.0)
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--label-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=None,
                   help="the decoder's learning rate (default: finetune.CLASS_LR_DECODER)")
    p.add_argument("--points", type=int, default=None,
                   help="query points per sample (default: finetune.CLASS_POINTS)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kvasir", type=Path, help="Kvasir-Sessile folder: polyp and rim instead")
    p.add_argument("--rim", type=int, default=6, help="rim width in pixels (--kvasir)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    import torch

    from napari_imedsam.finetune import CLASS_LR_DECODER, CLASS_POINTS
    from napari_imedsam.model.classes import ClassInfo, expand_classes
    from napari_imedsam.model.loading import load_model
    from napari_imedsam.train.engine import TrainConfig, train
    from napari_imedsam.train.evaluate import dice_per_class
    from napari_imedsam.train.synthetic_rings import ring_dataset

    torch.manual_seed(args.seed)
    if args.kvasir:
        train_items = _items(_kvasir(args.kvasir, args.train, 0, args.rim, args.size), "train")
        test_items = _items(_kvasir(args.kvasir, args.test, args.train, args.rim, args.size),
                            "test")
    else:
        train_items = _items(ring_dataset(args.train, args.seed, args.size), "train")
        test_items = _items(ring_dataset(args.test, args.seed + 1000, args.size), "test")
    classes = [ClassInfo("inner", 1), ClassInfo("wall", 2)]
    model = expand_classes(load_model("medsam_lite"), classes)
    before = dice_per_class(model, test_items, args.label_size)
    print(f"base model (one head, the same box for both): {before}")
    cfg = TrainConfig(mode="decoder", epochs=args.epochs, device="cpu",
                      val_label_size=args.label_size, time_budget_s=args.minutes * 60,
                      box_jitter_px=0.0, coarse_to_fine_epochs=0.0, pe_warmup_epochs=0.0,
                      seed=args.seed, lr_decoder=args.lr or CLASS_LR_DECODER,
                      points_per_sample=args.points or CLASS_POINTS)
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        result = train(model, train_items, train_items[: max(1, len(train_items) // 4)], cfg,
                       Path(tmp) / "classes.safetensors")
        from napari_imedsam.model.checkpoint import load_adapter

        load_adapter(model, result.adapter)  # the best epoch
    minutes = (time.monotonic() - start) / 60
    after = dice_per_class(model, test_items, args.label_size)
    print(f"after {minutes:.1f} min, {result.epochs_done} epochs: {after}")
    report = {"data": "kvasir polyp/rim" if args.kvasir else "synthetic rings and tubes",
              "train_images": args.train, "test_images": args.test, "size": args.size,
              "label_size": args.label_size, "minutes": round(minutes, 2),
              "epochs": result.epochs_done, "lr_decoder": cfg.lr_decoder,
              "points": cfg.points_per_sample, "before": before, "after": after,
              "date": time.strftime("%Y-%m-%d"), "threads": torch.get_num_threads()}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
