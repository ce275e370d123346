"""Fine-tune in the viewer as a user would: Kvasir images and masks as layers, the
Fine-tune widget in quick mode, validation Dice before/after, screenshots.

    python training/finetune_in_viewer.py --data ../shared/data/kvasir-sessile \
        --images 20 --minutes 10 --out runs/finetune-viewer

Takes the first ``--images`` images of the split's training subset (the CSV
beside the data by default), adds each as an RGB image layer with its mask as
a Labels layer, opens the Segment widget (``--model``, medsam_lite by default) and the
Fine-tune widget, presses Train, waits, and writes into ``--out``:
``training.png`` (mid-run), ``done.png``, ``suggest.png`` (the most uncertain
image after ranking, unless ``--no-suggest``), ``report.json`` and the adapter
(``adapters/``). Without a display it re-runs itself under ``xvfb-run``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=Path("../shared/data/kvasir-sessile"))
    p.add_argument("--split", type=Path, default=None,
                   help="name,split CSV (default: the first CSV in DATA/splits)")
    p.add_argument("--images", type=int, default=20, help="training images to load as layers")
    p.add_argument("--minutes", type=float, default=10.0, help="time limit of the run")
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--model", default="medsam_lite")
    p.add_argument("--device", default="cpu")
    p.add_argument("--mode", choices=("quick", "adapters"), default="quick")
    p.add_argument("--val-share", type=int, default=20, help="percent of images held out")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--no-suggest", action="store_true", help="skip the uncertainty ranking")
    return p.parse_args(argv)


def _training_names(data: Path, split: Path | None, count: int) -> list[str]:
    from napari_imedsam.train.data import list_pairs, read_split

    names = [name for name, _, _ in list_pairs(data)]
    if split is None:
        csvs = sorted((data / "splits").glob("*.csv"))
        split = csvs[0] if csvs else None
    if split is not None:
        subset = read_split(split)
        names = [n for n in names if subset.get(n, subset.get(Path(n).stem)) == "train"]
    return names[:count]


def _wait(app, widget, seconds: float, until=None) -> None:  # noqa: ANN001
    """Run the Qt event loop for ``seconds`` or until ``until()`` is true."""
    end = time.monotonic() + seconds
    while time.monotonic() < end and not (until is not None and until()):
        app.processEvents()
        time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if not os.environ.get("DISPLAY") and shutil.which("xvfb-run"):
        # napari needs OpenGL on an X display; Xvfb gives one on headless machines.
        os.execvp("xvfb-run", ["xvfb-run", "-a", "-s", "-screen 0 1600x1000x24",
                               sys.executable, *sys.argv])
    import napari
    from napari.qt import get_qapp

    from napari_imedsam.train.data import read_image, read_mask

    args.out.mkdir(parents=True, exist_ok=True)
    names = _training_names(args.data, args.split, args.images)
    if not names:
        print(f"no training images found in {args.data}", file=sys.stderr)
        return 1
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1600, 1000)
    app = get_qapp()
    for name in names:
        stem = Path(name).stem
        mask_path = next((args.data / "masks").glob(f"{stem}.*"))
        viewer.add_image(read_image(args.data / "images" / name), name=stem, rgb=True)
        viewer.add_labels(read_mask(mask_path), name=f"{stem} labels", opacity=0.4)
    _, segment = viewer.window.add_plugin_dock_widget("napari-imedsam", "Segment")
    segment.model_combo.setCurrentText(args.model)
    segment.adapter_edit.setText("")
    segment.device_combo.setCurrentText(args.device)
    _, widget = viewer.window.add_plugin_dock_widget("napari-imedsam", "Fine-tune",
                                                     tabify=True)
    widget.parent().raise_()  # show the Fine-tune tab
    if segment.masks is not None:  # the Segment widget's own, empty
        widget.pairs_table.set_row(segment.masks.name, use=False)
    widget.out_edit.setText(str((args.out / "adapters").resolve()))
    widget.refresh_adapters()
    widget.mode_combo.setCurrentIndex(0 if args.mode == "quick" else 1)
    widget.epochs_spin.setValue(args.epochs)
    widget.minutes_spin.setValue(args.minutes)
    widget.device_combo.setCurrentText(args.device)
    widget.val_spin.setValue(args.val_share)
    objects, slices, problems = widget.recount()
    print(f"{len(names)} images as layers: {objects} objects on {slices} images; {problems}")

    started = time.monotonic()
    widget.start_training()
    _wait(app, widget, args.minutes * 30, until=lambda: not widget.busy)
    viewer.screenshot(str(args.out / "training.png"), canvas_only=False)
    # The run ends itself at the time limit; the margin covers measuring before/after.
    _wait(app, widget, args.minutes * 60 + 600, until=lambda: not widget.busy)
    if widget.busy:
        widget.stop()
        _wait(app, widget, 600, until=lambda: not widget.busy)
    _wait(app, widget, 0.5)
    viewer.screenshot(str(args.out / "done.png"), canvas_only=False)
    outcome = widget.last_outcome
    report = {
        "images": len(names), "objects": objects, "model": args.model, "mode": args.mode,
        "minutes_limit": args.minutes, "wall_s": round(time.monotonic() - started, 1),
        "dice_before": getattr(outcome, "before", None),
        "dice_after": getattr(outcome, "after", None),
        "val_objects": getattr(outcome, "val_objects", None),
        "split": getattr(outcome, "split_note", None),
        "steps": getattr(outcome, "steps", None), "epochs": getattr(outcome, "epochs", None),
        "stopped": getattr(outcome, "stopped", None),
        "adapter": str(outcome.adapter) if outcome and outcome.adapter else None,
        "error": getattr(outcome, "error", "no outcome"),
        "segment_adapter": segment.adapter_edit.text(),
    }
    if not args.no_suggest and outcome is not None and outcome.adapter is not None:
        widget.suggest.rank()
        _wait(app, widget, 1800, until=lambda: not widget.suggest.busy)
        if widget.suggest.suggestions:
            widget.suggest.go_next()
            report["most_uncertain"] = [[o.image_name, float(f"{s:.3g}")] for o, s in
                                        widget.suggest.suggestions.ranked[:5]]
        _wait(app, widget, 0.5)
        viewer.screenshot(str(args.out / "suggest.png"), canvas_only=False)
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    viewer.close()
    return 0 if outcome is not None and outcome.error is None else 1


if __name__ == "__main__":
    sys.exit(main())
