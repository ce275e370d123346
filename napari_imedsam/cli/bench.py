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
    results = run_benchmark(args.device, repeats=args.repeats, vit_b=args.vit_b)
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        atomic_save(args.json, lambda tmp: tmp.write_text(text + "\n", encoding="utf-8"),
                    overwrite=args.overwrite)
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    b = subparsers.add_parser("bench", help="time the encoder and box -> mask decoding")
    b.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    b.add_argument("--repeats", type=positive_int, default=5,
                   help="timed runs of each step (at least 1); the median is reported")
    b.add_argument("--vit-b", action="store_true",
                   help="also time SAM's vit_b encoder at 384 and 1024 (random weights)")
    b.add_argument("--json", type=Path, help="also write the numbers here")
    b.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    b.set_defaults(func=_bench)
