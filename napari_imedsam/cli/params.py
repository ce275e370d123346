"""``imedsam params``: trainable parameters per part of a variant."""

from __future__ import annotations

import argparse
import contextlib
import json


def _params(args: argparse.Namespace) -> int:
    import torch

    from ..model import build_model, get_config, parameter_counts

    # Parameter shapes are all that is needed: build SAM's large ViTs without
    # allocating memory (TinyViT's builder reads values, and is small anyway).
    small = get_config(args.variant).encoder.kind == "tinyvit"
    with contextlib.nullcontext() if small else torch.device("meta"):
        model = build_model(
            args.variant,
            input_size=args.input_size,
            num_classes=args.classes,
            frequency_mode=args.frequency,
        )
    counts = parameter_counts(model, args.mode)
    if args.json:
        print(json.dumps({
            "variant": args.variant,
            "classes": args.classes,
            "mode": args.mode,
            "parts": {k: v for k, v in counts.items() if k != "total"},
            "trainable": counts["total"],
        }, indent=2))
    else:
        print(f"Trainable parameters of {args.variant}, {args.classes} class(es), mode {args.mode}:")
        for name, count in counts.items():
            if name == "total":
                continue
            print(f"  {name:<18} {count:>12,}")
        print(f"  {'total':<18} {counts['total']:>12,}  ({counts['total'] / 1e6:.2f}M)")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from ..model.config import TRAIN_MODES, VARIANTS

    p = subparsers.add_parser("params", help="count trainable parameters per part")
    p.add_argument("--variant", default="medsam_lite", choices=sorted(VARIANTS))
    p.add_argument("--classes", type=int, default=1, help="number of foreground classes")
    p.add_argument("--input-size", type=int, default=None)
    p.add_argument("--mode", default="adapters", choices=TRAIN_MODES)
    p.add_argument("--frequency", default="amplitude", choices=("amplitude", "phase", "off"))
    p.add_argument("--json", action="store_true", help="print JSON (top-level 'trainable')")
    p.set_defaults(func=_params)
