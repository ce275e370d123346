"""The ``imedsam`` command line.

Each subcommand lives in its own module of this package with ``add_parser(s)``
and a ``func`` default; this module only wires them. Heavy imports (torch) happen
inside the subcommands, so ``imedsam --help`` is instant.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import __version__
from . import bench, gui, infer, params, train, weights


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imedsam",
        description="I-MedSAM: box-prompted medical image segmentation at any resolution.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    params.add_parser(subparsers)
    weights.add_parser(subparsers)
    train.add_parsers(subparsers)
    infer.add_parsers(subparsers)
    bench.add_parser(subparsers)
    gui.add_parser(subparsers)
    return parser


#: What to do after Ctrl-C, per command.
_RESUME = {
    "train": "the last finished epoch is in NAME.last.safetensors: run the same command "
             "with --resume to continue",
    "segment": "each image's outputs are complete or absent (the one in progress was "
               "not written): run it again for the missing ones",
}


def _attach_negative_boxes(argv: list[str]) -> list[str]:
    """``--box -50,1,5,5`` -> ``--box=-50,1,5,5``: argparse takes a value that starts
    with '-' for an option, and boxes may start left of or above the image."""
    out: list[str] = []
    for token in argv:
        if out and out[-1] in ("--box", "--point") and token.startswith("-") and "," in token:
            out[-1] = f"{out[-1]}={token}"
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
    from ..model.torch_guard import hide_triton, prefer_huge_pages

    hide_triton()  # nothing here compiles kernels; it saves memory and the GUI's crash
    prefer_huge_pages()  # bounded training memory (see model/torch_guard.py)
    import signal

    def terminated(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # SIGTERM (kill, a scheduler's stop) cleans up as Ctrl-C

    before = None
    if args.command != "gui":  # napari's event loop keeps its own ways of closing
        try:
            before = signal.signal(signal.SIGTERM, terminated)
        except ValueError:  # not the main thread: signals stay as they are
            pass
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
    finally:
        if before is not None:
            signal.signal(signal.SIGTERM, before)

