"""``imedsam gui``: napari with the Segment widget, a sample or the user's files, offline."""

from __future__ import annotations

import argparse
from typing import Any

SAMPLES = ("rgb", "ct", "none")


def open_viewer(files: list[str], sample: str, fine_tune: bool, show: bool = True) -> Any:
    """A viewer with the files (or the sample) and the plugin's dock widgets; returns it."""
    import napari

    viewer = napari.Viewer(show=show)
    if files:
        viewer.open(files)
    elif sample != "none":
        viewer.open_sample("napari-imedsam", sample)
    viewer.window.add_plugin_dock_widget("napari-imedsam", "Segment")
    if fine_tune:
        _, finetune = viewer.window.add_plugin_dock_widget("napari-imedsam", "Fine-tune")
        # It shares the Segment dock's area as a tab: the Segment tab, where the work
        # starts, stays in front (the Fine-tune tab was in front, Segment hidden).
        finetune.raise_when_placed = False
    return viewer


def _gui(args: argparse.Namespace) -> int:
    import napari

    open_viewer(args.files, args.sample, args.fine_tune)
    napari.run()
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "gui", help="open napari with the Segment widget and a sample image (or FILES)")
    p.add_argument("files", nargs="*", help="images to open (default: the sample)")
    p.add_argument("--sample", choices=SAMPLES, default="rgb",
                   help="sample opened when no files are given: synthetic endoscopy (rgb) "
                        "or CT slice (ct)")
    p.add_argument("--fine-tune", action="store_true", help="also dock the Fine-tune widget")
    p.set_defaults(func=_gui)
