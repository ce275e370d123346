"""``imedsam train`` and ``imedsam evaluate``."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from ..model.config import DEVICE_CHOICES as DEVICES

def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data (a folder with images/ and masks/, or two folders)")
    g.add_argument("--data", type=Path, help="DIR with images/ and masks/ (Kvasir layout)")
    g.add_argument("--images", type=Path, help="folder of images (with --masks)")
    g.add_argument("--masks", type=Path, help="folder of masks with matching names")
    g.add_argument("--split", type=Path, help="CSV with columns name,split")
    g.add_argument("--ct-slices", type=Path, help="AMOS-style folder of CT slices")
    g.add_argument("--synthetic", type=positive_int, metavar="N",
                   help="use N generated images instead of files (--synthetic-kind)")
    g.add_argument("--synthetic-kind", default="mixed", choices=("ct", "rgb", "mixed"))
    g.add_argument("--synthetic-size", type=positive_int, default=256, metavar="PX",
                   help="side of the generated images")
    g.add_argument("--multiclass-labels", action="store_true",
                   help="masks are integer class images, not binary masks")


def _load(args: argparse.Namespace, subset: str | None, seed: int,
          max_side: int | None = None, lazy: bool = False) -> Any:
    """``max_side``, ``lazy``: see ``data.load_folder`` (training's bound on image size;
    evaluation reads a folder's images one at a time)."""
    from ..train import data

    if args.synthetic:
        from ..train.synthetic import synthetic_dataset

        offset = {"train": 0, "val": 1, "test": 2}.get(subset or "train", 0)
        count = args.synthetic if offset == 0 else max(8, args.synthetic // 5)
        pairs = synthetic_dataset(count, size=args.synthetic_size, kind=args.synthetic_kind,
                                  seed=seed + 7919 * offset)
        return [data.LabeledImage(f"synthetic_{offset}_{i}", im, lab)
                for i, (im, lab) in enumerate(pairs)]
    if args.ct_slices:
        return data.load_ct_slices(args.ct_slices)
    if not (args.data or (args.images and args.masks)):
        raise ValueError("give --data DIR, or --images DIR and --masks DIR, or --synthetic N")
    return data.load_folder(args.data, images_dir=args.images, masks_dir=args.masks,
                            split_csv=args.split if subset else None, subset=subset,
                            binary=not args.multiclass_labels, max_side=max_side, lazy=lazy)


def _split(args: argparse.Namespace, seed: int) -> tuple[list[Any], list[Any]]:
    """Train/val from the split CSV, else a seeded 80/20 hold-out. Images larger than
    the model sees them are shrunk as they are read (``samples.TRAIN_SIDE_FACTOR``)."""
    import numpy as np

    from ..model.config import get_config
    from ..train.samples import TRAIN_SIDE_FACTOR

    size = args.input_size or get_config(args.variant).input_size
    side = TRAIN_SIDE_FACTOR * size
    if args.split or args.synthetic:
        return _load(args, "train", seed, side), _load(args, "val", seed, side)
    items = _load(args, None, seed, side)
    order = np.random.default_rng(seed).permutation(len(items))
    n_val = max(1, len(items) // 5)
    return [items[i] for i in order[n_val:]], [items[i] for i in order[:n_val]]


def _train(args: argparse.Namespace) -> int:
    """The run's names are claimed (``NAME.lock``) for as long as it runs: a second
    ``imedsam train`` with the same --out is refused before it reads anything."""
    from contextlib import nullcontext

    from ..train.run_state import RunFiles

    files = RunFiles(Path(args.out).with_suffix(".safetensors"))
    # Under torchrun every rank runs this; rank 0 writes, and claims the names.
    lead = int(os.environ.get("RANK", "0")) == 0
    with files.claim() if lead else nullcontext():
        return _train_claimed(args, files, lead)


def _train_claimed(args: argparse.Namespace, files: Any, lead: bool) -> int:
    import torch
    from tqdm import tqdm

    from ..model import build_model, load_adapter
    from ..train.engine import TrainConfig, train

    if not args.resume:  # every output checked before anything is read or written
        inputs = tuple(p for p in (args.split, args.init, args.data, args.images, args.masks,
                                   args.ct_slices, args.base_weights) if p is not None)
        files.check_new(args.overwrite, tuple(Path(p) for p in inputs))
    torch.manual_seed(args.seed)
    cfg = TrainConfig(mode=args.mode, epochs=args.epochs, batch_size=args.batch_size,
                      points_per_sample=args.points, seed=args.seed, device=args.device,
                      precision=args.precision, augment=not args.no_augment,
                      val_label_size=args.val_label_size, time_budget_s=args.time_budget,
                      lr_base=args.lr_base, objective=args.objective,
                      box_jitter_px=args.box_jitter, cached_flips=args.flips,
                      distill_weight=args.distill_weight,
                      recompute_encoder=not args.keep_activations)
    from ..model.classes import default_classes, expand_classes, parse_class_names

    classes = parse_class_names(args.class_names) if args.class_names else None
    if classes is not None:
        args.classes, args.multiclass_labels = len(classes), True
    train_set, val_set = _split(args, args.seed)
    if classes is not None:
        from ..train.data import as_class_heads

        values = [c.value for c in classes]
        train_set, val_set = as_class_heads(train_set, values), as_class_heads(val_set, values)
    import dataclasses

    from ..model import get_config
    from ..model.weights import REGISTRY

    # With --init the model starts with one head: the adapter brings its own heads as it
    # loads, and a one-class adapter (e.g. the shipped default) grows one per class below.
    heads = 1 if args.init else args.classes
    config = get_config(args.variant, input_size=args.input_size, num_classes=heads,
                        frequency_mode=args.frequency)
    if args.sam_logit:
        config = dataclasses.replace(
            config, decoder=dataclasses.replace(config.decoder, sam_logit=args.sam_logit))
    # A variant with its own packaged weights (medsam_lite) starts from them.
    entry = REGISTRY.get(args.variant)
    base = args.base_weights or (args.variant if entry is not None and entry.package else None)
    model = build_model(config=config, checkpoint=base)
    if args.init:
        load_adapter(model, args.init, grow=True)
        if model.config.num_classes > 1 and classes is None and args.classes == 1:
            from ..model.classes import classes_of

            names = ",".join(f"{c.name}={c.value}" for c in classes_of(model))
            raise ValueError(f"{args.init} has {model.config.num_classes} classes: train them "
                             f"with --class-names {names} (and class label images)")
    if classes is not None or args.classes > 1:
        expand_classes(model, classes or default_classes(args.classes))
    # Only rank 0 talks and writes the log.
    if lead:
        print(f"training {args.variant} ({args.mode}) on {len(train_set)} images, "
              f"validating on {len(val_set)}; best adapter -> {args.out}")
    bar = tqdm(total=None, unit="step", dynamic_ncols=True, disable=not lead)
    # The log opens at the first step: a run refused while setting up (a --resume with
    # nothing to resume) leaves none. A new run's log is new (checked above); --resume
    # continues its own, --overwrite starts it again.
    log = _RunLog(files.log if lead else None, "a" if args.resume
                  else "w" if args.overwrite else "x")

    def on_progress(event: Any) -> None:
        if bar.total is None:
            bar.reset(total=event.steps_per_epoch * event.epochs)
        if event.kind == "step":
            bar.update(1)
            bar.set_postfix(epoch=event.epoch, loss=f"{event.loss:.4f}",
                            best=f"{event.best_val_dice or 0:.4f}")
        log.write(f"{event.elapsed_s:.1f},{event.epoch},{event.step},{event.loss or ''},"
                  f"{event.coarse_loss or ''},{event.fine_loss or ''},{event.val_dice or ''}\n")
        if event.kind == "epoch":
            log.flush()
            tqdm.write(f"epoch {event.epoch + 1}/{event.epochs}: loss {event.loss:.4f}, "
                       f"val Dice {event.val_dice:.4f} (best {event.best_val_dice:.4f})")

    extra = {"command": "imedsam train", "data": str(args.data or args.images or "synthetic"),
             "base_weights": base}
    start = time.monotonic()
    try:
        result = train(model, train_set, val_set, cfg, args.out, on_progress=on_progress,
                       resume=args.resume, overwrite=args.overwrite, extra=extra)
    finally:
        bar.close()
        log.close()
    if not lead:
        return 0
    print(json.dumps({"adapter": str(result.adapter), "best_val_dice": result.best_val_dice,
                      "best_epoch": result.best_epoch, "epochs_done": result.epochs_done,
                      "stopped": result.stopped,
                      "minutes": round((time.monotonic() - start) / 60, 2)}, indent=2))
    return 0


class _RunLog:
    """``NAME.log.csv``, opened (mode ``a``, ``w`` or ``x``) when first written;
    ``path`` None writes nowhere (ranks other than 0)."""

    HEADER = "time_s,epoch,step,loss,coarse_loss,fine_loss,val_dice\n"

    def __init__(self, path: Path | None, mode: str) -> None:
        self.path, self.mode, self.file = path, mode, None

    def write(self, text: str) -> None:
        if self.path is None:
            return
        if self.file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                self.file = self.path.open(self.mode)
            except FileExistsError:
                raise FileExistsError(f"{self.path} already exists: choose another output "
                                      "name, or allow overwriting") from None
            if self.file.tell() == 0:
                self.file.write(self.HEADER)
        self.file.write(text)

    def flush(self) -> None:
        if self.file is not None:
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def _check_report_outside_the_data(args: argparse.Namespace) -> None:
    """No report file may be a file the evaluation reads, nor become one: a name with
    an image suffix in a folder of images or masks (``--json data/images/X.jpg
    --overwrite`` replaced an image with the report)."""
    from ..train.data import IMAGE_SUFFIXES
    from ..train.evaluate import report_paths

    folders = [args.images, args.masks]
    for root in (args.data, args.ct_slices):
        if root is not None:
            folders += [Path(root) / "images", Path(root) / "masks"]
    read = {Path(f).resolve() for f in folders if f is not None}
    for path in report_paths(args.json):
        if path.resolve().parent in read and path.suffix.lower() in IMAGE_SUFFIXES:
            raise ValueError(f"{path} is an image name in {path.parent}, a folder this "
                             "evaluation reads: choose a --json name outside the data's "
                             "images and masks")


def _evaluate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..model.devices import resolve_device
    from ..model.loading import load_model, model_from_adapter
    from ..train.evaluate import evaluate_model, summary, write_report

    from ..train.evaluate import check_report_paths

    inputs = tuple(p for p in (args.split, args.adapter, args.data, args.images, args.masks,
                               args.ct_slices) if p is not None)
    check_report_paths(args.json, args.overwrite, inputs)  # before hours of evaluation
    _check_report_outside_the_data(args)
    if args.split is not None:  # read again with the data; checked before the model loads
        from ..train.data import read_split

        read_split(args.split)
    device = resolve_device(args.device)
    if args.adapter:
        model = model_from_adapter(args.adapter, base_checkpoint=args.base_weights, device=device)
    else:
        model = load_model(args.model, device=device)
    from ..model.classes import classes_of, find_class

    only = args.only_class
    if args.class_name is not None:
        only = find_class(model, args.class_name) + 1
    classes = classes_of(model)
    if len(classes) > 1:  # class label images, read as the model's heads
        args.multiclass_labels = True
    images = _load(args, args.subset if (args.split or args.synthetic) else None, args.seed,
                   lazy=True)
    if len(classes) > 1:
        from ..train.data import LazyPairs, as_class_heads

        values = [c.value for c in classes]
        if isinstance(images, LazyPairs):
            images.transform = lambda item: as_class_heads([item], values)[0]
        else:
            images = as_class_heads(images, values)
    with tqdm(total=None, unit="object") as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(1)

        error_pixels: list = []
        rows = evaluate_model(model, images, label_size=args.label_size, device=device,
                              on_progress=progress, decoder=args.decoder, clicks=args.clicks,
                              error_pixels=error_pixels)
    if len(classes) > 1:
        for row in rows:  # head index -> the class's name and label value
            info = classes[row["object"] - 1]
            row["label"], row["class_value"] = info.name, info.value
    if only is not None:
        rows = [r for r in rows if r["object"] == only]
    if not rows:  # a report of nothing would read as a result
        source = args.data or args.images or args.ct_slices or "the data"
        what = "" if only is None else f" of class {args.class_name or only}"
        raise ValueError(f"no labelled objects{what} to evaluate in {source} ({len(images)} "
                         "image(s) read): check the masks folder, --subset and --split")
    report = summary(rows, label_size=args.label_size, model=str(args.adapter or args.model),
                     subset=args.subset, input_size=model.config.input_size,
                     decoder=args.decoder, clicks=args.clicks)
    if error_pixels:
        import numpy as np

        from ..model.error_map import calibration

        measured = calibration(np.concatenate([p for p, _ in error_pixels]),
                               np.concatenate([w for _, w in error_pixels]))
        report.update(error_map_ece=measured["ece"], error_map_auroc=measured["auroc"],
                      error_map_pixels=measured["pixels"], error_map_table=measured["table"])
    csv_path = write_report(report, rows, args.json, overwrite=args.overwrite)
    print(json.dumps(report, indent=2))
    print(f"wrote {args.json} and {csv_path}")
    return 0


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    from ..model.config import TRAIN_MODES, VARIANTS

    t = subparsers.add_parser("train", help="fine-tune adapters (or train a small model)")
    _add_data_args(t)
    t.add_argument("--out", required=True, type=Path, help="best adapter: NAME.safetensors")
    t.add_argument("--variant", default="medsam_lite", choices=sorted(VARIANTS))
    t.add_argument("--base-weights", help="SAM weights name (vit_b...) or .pth path")
    t.add_argument("--init", type=Path, help="start from this adapter")
    t.add_argument("--mode", default="adapters", choices=TRAIN_MODES)
    t.add_argument("--epochs", type=positive_int, default=100)
    t.add_argument("--input-size", type=int, default=None)
    t.add_argument("--classes", type=positive_int, default=1)
    t.add_argument("--class-names", metavar="NAMES",
                   help="classes from integer label images: NAME[=VALUE],... (e.g. "
                        "inner,wall or liver=6,tumour=7); one decoder head each, named in "
                        "the adapter; implies --multiclass-labels")
    t.add_argument("--frequency", default="amplitude", choices=("amplitude", "phase", "off"))
    t.add_argument("--sam-logit", choices=("off", "residual"), default=None,
                   help="the implicit decoder as residual on the backbone's own mask logit, "
                        "or plain (the paper's); default: the variant's")
    t.add_argument("--batch-size", type=positive_int, default=4)
    t.add_argument("--points", type=positive_int, default=4096, help="query points per sample")
    t.add_argument("--lr-base", type=float, default=3e-4, help="encoder lr in full mode")
    t.add_argument("--objective", default="implicit", choices=("implicit", "sam", "distill"),
                   help="sam: train SAM's own decoder (pretrains the box path of a "
                        "from-scratch model; then train again with --init); distill: learn "
                        "the backbone's own mask probability (no labels used)")
    t.add_argument("--distill-weight", type=float, default=0.0, metavar="W",
                   help="add W x the distill loss to the label loss (keeps a decoder trained "
                        "on synthetic labels close to the backbone elsewhere)")
    t.add_argument("--keep-activations", action="store_true",
                   help="modes that train the encoder: keep every encoder block's "
                        "activations for the backward pass (faster, far more memory) "
                        "instead of running each block again")
    t.add_argument("--flips", type=int, default=4, choices=(1, 2, 4),
                   help="mirrored views per image when embeddings are cached "
                        "(decoder/implicit modes); 1 saves memory for many images")
    t.add_argument("--val-label-size", type=positive_int, default=128)
    t.add_argument("--time-budget", type=float, default=None, help="seconds; stop cleanly after")
    t.add_argument("--no-augment", action="store_true")
    t.add_argument("--box-jitter", type=float, default=20.0, metavar="PX",
                   help="each box side moves outward by up to PX pixels of a 384 input while "
                        "training (the authors' 20); 0 for tight boxes, best for short "
                        "fine-tuning runs (docs/training.md)")
    t.add_argument("--device", default="auto", choices=DEVICES)
    t.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--resume", action="store_true", help="continue the run at --out")
    t.add_argument("--overwrite", action="store_true", help="replace an earlier run at --out")
    t.set_defaults(func=_train)

    e = subparsers.add_parser("evaluate", help="Dice, HD, HD95 next to the ellipse baseline")
    _add_data_args(e)
    e.add_argument("--adapter", type=Path, help="adapter file to evaluate")
    e.add_argument("--model", default="medsam_lite",
                   help="medsam_lite (the default), vit_b... (when no --adapter)")
    e.add_argument("--base-weights", help="SAM weights the adapter was trained on")
    e.add_argument("--subset", default="test")
    e.add_argument("--label-size", type=positive_int, default=384)
    e.add_argument("--decoder", default="imedsam", choices=("imedsam", "sam"),
                   help="imedsam: the implicit decoder; sam: the backbone's own mask decoder "
                        "(the discrete path)")
    e.add_argument("--class", dest="class_name", metavar="NAME",
                   help="a model with several classes: report this class (name or value) only")
    e.add_argument("--only-class", type=int, help="multi-class: report head K (1..) only")
    e.add_argument("--clicks", type=int, default=0, metavar="N",
                   help="after the box, up to N corrective clicks at the centre of the largest "
                        "error region (the CVPR 2025 challenge's protocol, from the ground "
                        "truth): dice_by_clicks, dsc_auc, worse_click_share; dice is then the "
                        "Dice after the last click")
    e.add_argument("--json", required=True, type=Path,
                   help="the summary; the per-object rows go to the same name with .csv")
    e.add_argument("--overwrite", action="store_true", help="replace earlier reports")
    e.add_argument("--device", default="auto", choices=DEVICES)
    e.add_argument("--seed", type=int, default=0)
    e.set_defaults(func=_evaluate)
