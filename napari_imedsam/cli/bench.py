"""``imedsam bench``: the encoder's and the box decoder's speed and memory, as JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..model.config import DEVICE_CHOICES
from .train import positive_int


def _bench(args: argparse.Namespace) -> int:
    from ..bench import run_benchmark
    from ..saving import atomic_save
    from ..saving import check_outputs

    if args.json:  # before minutes of work: an existing report, a link or a device
        check_outputs([args.json], [], args.overwrite)
    results = run_benchmark(args.device, repeats=args.repeats, vit_b=args.vit_b,
                            volume=args.volume)
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        atomic_save(args.json, lambda tmp: tmp.write_text(text + "\n", encoding="utf-8"),
                    overwrite=args.overwrite)
    return 0


def _check_encoder(args: argparse.Namespace) -> int:
    from ..inference.accelerate import store_approximate_check
    from ..model.loading import load_model, model_from_adapter
    from ..saving import atomic_save, check_outputs
    from ..train.encoder_check import check_encoder, shared_sets

    if args.json:
        check_outputs([args.json], [], args.overwrite)
    sets = shared_sets(args.data)  # a missing set is said before the model loads
    model = (model_from_adapter(args.adapter, device="cpu") if args.adapter
             else load_model("medsam_lite", device="cpu"))
    result = check_encoder(model, sets, args.precision,
                           on_progress=lambda text: print(f"measuring {text}", flush=True))
    for name, got in result["sets"].items():
        print(f"{name} ({got['objects']} objects): Dice fp32 {got['dice_fp32']:.4f}, "
              f"{args.precision} {got[f'dice_{args.precision}']:.4f}, change "
              f"{got['change']:+.4f} (objects {got['object_change_min']:+.3f} to "
              f"{got['object_change_max']:+.3f})")
    ms = result["encoder_ms"]
    print(f"encoder: fp32 {ms['fp32']:.0f} ms, {args.precision} {ms[args.precision]:.0f} ms "
          "a 256 px image")
    where = store_approximate_check(model, args.precision, result)
    if result["passed"]:
        print(f"passed: every set within {result['tolerance']}; sessions on this CPU now "
              f"embed with {args.precision} (set IMEDSAM_ENCODER_FP32=1 for fp32). "
              f"Recorded in {where}")
    else:
        print(f"not passed: a set changed by more than {result['tolerance']}; sessions "
              f"keep fp32. Recorded in {where}")
    if args.json:
        text = json.dumps(result, indent=2)
        atomic_save(args.json, lambda tmp: tmp.write_text(text + "\n", encoding="utf-8"),
                    overwrite=args.overwrite)
    return 0 if result["passed"] else 1


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    b = subparsers.add_parser("bench", help="time the encoder and box -> mask decoding")
    b.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    b.add_argument("--repeats", type=positive_int, default=5,
                   help="timed runs of each step (at least 1); the median is reported")
    b.add_argument("--vit-b", action="store_true",
                   help="also time SAM's vit_b encoder at 384 and 1024 (random weights)")
    b.add_argument("--volume", type=positive_int, default=0, metavar="N",
                   help="also embed an N-slice volume ahead of time (slices per second, "
                        "against upstream's eager loop)")
    b.add_argument("--json", type=Path, help="also write the numbers here")
    b.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    b.set_defaults(func=_bench)
    c = subparsers.add_parser(
        "check-encoder",
        help="measure a faster encoder arithmetic (bf16) against fp32 on labelled sets; "
             "sessions on this CPU use it only after it passed")
    c.add_argument("--data", type=Path, required=True,
                   help="a folder with kvasir-sessile/ (and its splits/) and ct-slices/")
    c.add_argument("--precision", default="bf16", choices=("bf16",))
    c.add_argument("--adapter", type=Path, help="an adapter of the default model")
    c.add_argument("--json", type=Path, help="also write the check here")
    c.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    c.set_defaults(func=_check_encoder)
