"""The ``imedsam`` command line.

Each subcommand lives in its own ``_cli_*`` module with ``add_parser`` and a
``func`` default; this module only wires them. Heavy imports (torch) happen
inside the subcommands, so ``imedsam --help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from . import __version__, _cli_gui, _cli_infer, _cli_train, _cli_weights


def _params(args: argparse.Namespace) -> int:
    import torch

    import contextlib

    from .model import build_model, get_config, parameter_counts

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


def _add_params(subparsers: argparse._SubParsersAction) -> None:
    from .model.config import TRAIN_MODES, VARIANTS

    p = subparsers.add_parser("params", help="count trainable parameters per part")
    p.add_argument("--variant", default="medsam_lite", choices=sorted(VARIANTS))
    p.add_argument("--classes", type=int, default=1, help="number of foreground classes")
    p.add_argument("--input-size", type=int, default=None)
    p.add_argument("--mode", default="adapters", choices=TRAIN_MODES)
    p.add_argument("--frequency", default="amplitude", choices=("amplitude", "phase", "off"))
    p.add_argument("--json", action="store_true", help="print JSON (top-level 'trainable')")
    p.set_defaults(func=_params)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imedsam",
        description="I-MedSAM: box-prompted medical image segmentation at any resolution.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_params(subparsers)
    _cli_weights.add_parser(subparsers)
    _cli_train.add_parsers(subparsers)
    _cli_infer.add_parsers(subparsers)
    _cli_gui.add_parser(subparsers)
    return parser


#: What to do after Ctrl-C, per command.
_RESUME = {
    "train": "the last finished epoch is in NAME.last.safetensors: run the same command "
             "with --resume to continue",
    "segment": "outputs written so far are complete; the rest were not started: run it "
               "again for them",
}


def _attach_negative_boxes(argv: list[str]) -> list[str]:
    """``--box -50,1,5,5`` -> ``--box=-50,1,5,5``: argparse takes a value that starts
    with '-' for an option, and boxes may start left of or above the image."""
    out: list[str] = []
    for token in argv:
        if out and out[-1] == "--box" and token.startswith("-") and "," in token:
            out[-1] = f"--box={token}"
        else:
            out.append(token)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_attach_negative_boxes(list(sys.argv[1:] if argv is None
                                                          else argv)))
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except (ValueError, RuntimeError, OSError, KeyError) as exc:
        # User-facing errors get one line, not a traceback.
        text = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
        print(f"imedsam {args.command}: error: {text}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        advice = _RESUME.get(args.command, "nothing further was done")
        print(f"imedsam {args.command}: interrupted; {advice}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
