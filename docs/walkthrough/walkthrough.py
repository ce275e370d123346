"""The annotator's walkthrough, scripted: what a user does in the viewer, with screenshots.

    xvfb-run -a python docs/walkthrough/walkthrough.py --out docs/walkthrough

Steps (each leaves a screenshot of the whole window in ``--out``):

1. open the synthetic endoscopy sample and the Segment widget (the default model,
   LiteMedSAM + our I-MedSAM decoder, CPU);
   draw a box around the first object -> mask and uncertainty (``1_first_box.png``);
2. accept it (Shift+A), draw a box around a second object -> id 2, id 1 untouched;
   undo (Ctrl+Z) and redo the box (``2_second_box.png``);
3. zoom in on the first object's edge -> the high-resolution preview
   (``3_zoomed.png``);
4. export at scale 2 -> TIFF + uncertainty + JSON, read back;
5. a real CT slice (AMOS, CC BY 4.0, ``shared/data/ct-slices``) with a box on the
   liver (``4_ct_liver.png``).

Prints what it checked. Settings go to a temporary folder, never the user's.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def _wait(app, done, timeout: float = 300.0) -> float:
    start = time.monotonic()
    while not done():
        app.processEvents()
        time.sleep(0.02)
        if time.monotonic() - start > timeout:
            raise TimeoutError("the widget did not finish in time")
    for _ in range(20):  # let the canvas draw what just arrived
        app.processEvents()
        time.sleep(0.01)
    return time.monotonic() - start


def _rect(box_xyxy) -> np.ndarray:
    """A rectangle as napari draws it: corner pixel centres (row, col)."""
    x0, y0, x1, y1 = box_xyxy
    return np.array([[y0, x0], [y0, x1 - 1], [y1 - 1, x1 - 1], [y1 - 1, x0]], dtype=float)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(1, a.sum() + b.sum()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/walkthrough"))
    parser.add_argument("--ct", type=Path, default=Path("../shared/data/ct-slices"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    from qtpy.QtCore import QSettings
    settings_dir = tempfile.mkdtemp(prefix="imedsam-settings-")
    for fmt in (QSettings.Format.NativeFormat, QSettings.Format.IniFormat):
        QSettings.setPath(fmt, QSettings.Scope.UserScope, settings_dir)

    import napari
    import tifffile
    from napari.qt import get_qapp

    from napari_imedsam._sample_data import SIZE
    from napari_imedsam.train.data import box_of
    from napari_imedsam.train.synthetic import synthetic_sample

    app = get_qapp()
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1400, 900)
    viewer.open_sample("napari-imedsam", "rgb")
    _, truth = synthetic_sample(np.random.default_rng(5), SIZE, "rgb")  # the sample's labels
    _, widget = viewer.window.add_plugin_dock_widget("napari-imedsam", "Segment")
    widget.model_combo.setCurrentText("medsam_lite")
    widget.device_combo.setCurrentText("cpu")
    boxes, shot = widget.boxes, lambda name: viewer.screenshot(str(args.out / name),
                                                             canvas_only=False)
    ids = [k for k in range(1, truth.max() + 1) if (truth == k).sum() > 400][:2]

    # 1. first box
    boxes.add_rectangles(_rect(box_of(truth == ids[0])))
    took = _wait(app, lambda: not widget.busy)
    first = widget.masks.data == 1
    print(f"1. box -> mask in {took:.1f} s (model load included): {first.sum()} px, "
          f"Dice to the object {_dice(first, truth == ids[0]):.3f}; uncertainty layer: "
          f"{widget.uncertainty is not None and float(widget.uncertainty.data.max()) > 0}; "
          f"status: {widget.status.text()}")
    shot("1_first_box.png")

    # 2. accept, second box, undo, redo
    widget.accept_current()
    boxes.add_rectangles(_rect(box_of(truth == ids[1])))
    took = _wait(app, lambda: not widget.busy)
    second = widget.masks.data == 2
    print(f"2. second box -> id 2 in {took:.1f} s: {second.sum()} px, Dice "
          f"{_dice(second, truth == ids[1]):.3f}; id 1 unchanged: "
          f"{bool(((widget.masks.data == 1) == first).all())}")
    widget.masks.undo()
    print(f"   undo -> id 2 pixels: {(widget.masks.data == 2).sum()}")
    widget.masks.redo()
    print(f"   redo -> id 2 pixels: {(widget.masks.data == 2).sum()}")
    shot("2_second_box.png")

    # 3. zoom in on the first object's edge
    rows, cols = np.nonzero(first)
    viewer.camera.center = (float(rows.min()), float(cols.mean()))
    viewer.camera.zoom = 10.0
    widget.zoom.schedule()
    took = _wait(app, lambda: not widget.zoom.busy and not widget.zoom._timer.isActive())
    preview = [layer for layer in viewer.layers if layer.name.endswith("preview")]
    if preview:
        print(f"3. zoom x10 -> preview {preview[0].data.shape} at scale "
              f"{np.round(preview[0].scale, 3).tolist()}, in {took:.1f} s")
    else:
        print("3. zoom x10 -> no preview layer")
    shot("3_zoomed.png")
    viewer.reset_view()

    # 4. export at scale 2
    export_dir = Path(tempfile.mkdtemp(prefix="imedsam-export-"))
    widget.export.scale.setValue(2.0)
    widget.export.export(export_dir / "masks.tif")
    _wait(app, lambda: not widget.export.busy)
    written = sorted(p.name for p in export_dir.iterdir())
    back = tifffile.imread(export_dir / "masks.tif")
    record = json.loads((export_dir / "masks.json").read_text())
    print(f"4. export x2 -> {written}; TIFF {back.shape}, ids {np.unique(back).tolist()}; "
          f"JSON objects {len(record.get('objects', []))}")

    # 5. a real CT slice
    from skimage.io import imread
    images = sorted((args.ct / "images").glob("*.png"))
    ct = next((p for p in images if "mr" not in p.name.lower()), None)
    liver = sorted((args.ct / "masks").glob(f"{ct.stem}_liver*.png")) if ct else []
    if ct is not None and liver:
        viewer.layers.clear()
        viewer.add_image(imread(ct), name=ct.stem, rgb=True)
        widget.image_combo.setCurrentText(ct.stem)
        truth_ct = imread(liver[0]) > 0
        truth_ct = truth_ct if truth_ct.ndim == 2 else truth_ct[..., 0]
        widget.boxes.add_rectangles(_rect(box_of(truth_ct)))
        took = _wait(app, lambda: not widget.busy)
        got = widget.masks.data == 1
        print(f"5. CT slice {ct.name}, liver box -> {got.sum()} px in {took:.1f} s, "
              f"Dice {_dice(got, truth_ct):.3f}")
        shot("4_ct_liver.png")
    viewer.close()


if __name__ == "__main__":
    main()
