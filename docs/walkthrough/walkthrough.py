"""The annotator's walkthrough, scripted: what a user does in the viewer, with screenshots.

    xvfb-run -a python docs/walkthrough/walkthrough.py --out docs/walkthrough

Each step goes through the real widgets (their buttons and layers, as a user's clicks
would) with the default model on the CPU, leaves a screenshot of the whole window in
``--out`` and prints what it checked:

1. the synthetic endoscopy sample: a box -> mask and its uncertainty (``1_first_box.png``),
   then the mask as an outline above the uncertainty (``1b_outline.png``);
2. accept, a second box, Undo (box and mask go together), Redo (``2_second_box.png``);
3. the base model's own decoder for one box, then I-MedSAM's again;
4. zoom on an edge: the sharper preview (``3_zoomed.png``);
5. a second image, a real polyp (Kvasir-Sessile, ``shared/data``): the widget follows it,
   the first image hides (``4_polyp.png``); a corrective click where the challenge's
   protocol puts it, Undo and Redo (click, mask and map together), and the suggested next
   click from the error map (``4c_click.png``); a box on background gets the model's doubt
   as a hint (``4b_hint.png``), then Undo;
6. a CT slice saved as RGB (AMOS, CC BY 4.0) with the abdomen window: the liver
   (``5_ct_liver.png``);
7. a synthetic CT volume: a box on the middle slice, Propagate; slices labelled vs the
   organ's true range (``6_volume.png``);
8. back to the first image: its objects, boxes and undo are there; Clear and Undo
   (``7_back_to_first.png``);
9. export at scale 2 -> TIFF + uncertainty + JSON, read back;
10. a folder as a series: Next saves, Previous reloads (``8_series.png``);
11. the Fine-tune dock beside the Segment dock (``9_finetune_dock.png``);
12. classes: six images of a wall around a cavity as Labels layers read as classes,
    fine-tuned for two minutes (``10_finetune_classes.png``);
13. a held-out one: the same box answered by each class in turn (``11_classes.png``).

Settings go to a temporary folder, never the user's.
"""

from __future__ import annotations

import argparse
import json
import sys
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


def _rect(box_xyxy, plane: int | None = None) -> np.ndarray:
    """A rectangle as napari draws it: corner pixel centres (row, col) [, plane first]."""
    x0, y0, x1, y1 = box_xyxy
    corners = np.array([[y0, x0], [y0, x1 - 1], [y1 - 1, x1 - 1], [y1 - 1, x0]], dtype=float)
    return corners if plane is None else np.column_stack([np.full(4, plane), corners])


def _raise_dock(widget) -> None:  # noqa: ANN001
    """Bring a dock widget's tab to the front (docks opened together share tabs)."""
    from qtpy.QtWidgets import QDockWidget

    parent = widget
    while parent is not None and not isinstance(parent, QDockWidget):
        parent = parent.parent()
    if parent is not None:
        parent.raise_()


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(1, a.sum() + b.sum()))


def main() -> None:  # noqa: PLR0915 - one script, step after step, as a user goes
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/walkthrough"))
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--gui-fine-tune", action="store_true",
                        help="open the viewer as `imedsam gui --fine-tune --sample none` does "
                             "(both docks before any image), not the Segment dock alone")
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
    from napari_imedsam.train.data import box_of, read_image, read_mask
    from napari_imedsam.train.synthetic import synthetic_sample
    from napari_imedsam.train.synthetic_volume import TARGET, synthetic_ct_volume

    app = get_qapp()
    if args.gui_fine_tune:
        from napari_imedsam.cli.gui import open_viewer

        viewer = open_viewer([], "none", fine_tune=True)
    else:
        viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1600, 1000)
    # With --gui-fine-tune both docks are there: napari hands back the docked ones.
    _, widget = viewer.window.add_plugin_dock_widget("napari-imedsam", "Segment")
    widget.model_combo.setCurrentText("medsam_lite")
    widget.device_combo.setCurrentText("cpu")

    camera = getattr(viewer, "scene", viewer).camera

    def shot(name: str) -> None:
        app.processEvents()  # pending layouts first (a label whose text just changed)
        viewer.screenshot(str(args.out / name), canvas_only=False)

    def box_and_wait(rect: np.ndarray) -> float:
        widget.boxes.add_rectangles(rect)
        return _wait(app, lambda: not widget.busy)

    # 1. first box
    viewer.open_sample("napari-imedsam", "rgb")
    _wait(app, lambda: viewer.layers.selection.active is widget.boxes, 10)
    _, truth = synthetic_sample(np.random.default_rng(5), SIZE, "rgb")  # the sample's labels
    ids = [k for k in range(1, truth.max() + 1) if (truth == k).sum() > 400][:2]
    took = box_and_wait(_rect(box_of(truth == ids[0])))
    first_masks = widget.masks
    first = first_masks.data == 1
    unc = widget.uncertainty
    print(f"1. box -> mask in {took:.1f} s (model load included): {first.sum()} px, Dice "
          f"{_dice(first, truth == ids[0]):.3f}; layer '{unc.name}' max "
          f"{float(unc.data.max()):.3f} on scale {tuple(unc.contrast_limits)}; "
          f"status: {widget.status.text()}")
    shot("1_first_box.png")
    widget.unc_view.outline.setChecked(True)
    _wait(app, lambda: True)
    print(f"   mask as outline: contour {first_masks.contour}, masks above the uncertainty: "
          f"{viewer.layers.index(first_masks) > viewer.layers.index(unc)}")
    shot("1b_outline.png")
    widget.unc_view.outline.setChecked(False)

    # 2. accept, second box, undo, redo
    widget.accept_current()
    took = box_and_wait(_rect(box_of(truth == ids[1])))
    second = first_masks.data == 2
    print(f"2. second box -> id 2 in {took:.1f} s: {second.sum()} px, Dice "
          f"{_dice(second, truth == ids[1]):.3f}; id 1 unchanged: "
          f"{bool(((first_masks.data == 1) == first).all())}")
    widget.undo()
    print(f"   Undo -> id 2 pixels {(first_masks.data == 2).sum()}, boxes {len(widget.boxes.data)}")
    widget.redo()
    print(f"   Redo -> id 2 pixels {(first_masks.data == 2).sum()}, boxes {len(widget.boxes.data)}")
    shot("2_second_box.png")

    # 3. the base model's decoder for a moment
    widget.settings.decoder_combo.setCurrentIndex(1)
    widget.boxes.selected_data = {len(widget.boxes.data) - 1}
    rows = np.flatnonzero(widget.boxes.features["object_id"].to_numpy() == 2)
    moved = [np.array(d) for d in widget.boxes.data]
    moved[rows[0]] = moved[rows[0]] + np.array([1.0, 0.0])  # nudge: segment again
    widget.boxes.data = moved
    _wait(app, lambda: not widget.busy)
    print(f"3. base model's decoder: {widget.status.text()}")
    widget.settings.decoder_combo.setCurrentIndex(0)

    # 4. zoom in on the first object's edge
    r, c = np.nonzero(first)
    camera.center = (float(r.min()), float(c.mean()))
    camera.zoom = 10.0
    widget.zoom.schedule()
    took = _wait(app, lambda: not widget.zoom.busy and not widget.zoom._timer.isActive())
    preview = [layer for layer in viewer.layers if layer.name.endswith("preview")]
    print("4. zoom x10 -> " + (f"preview {preview[0].data.shape} at scale "
                                 f"{np.round(preview[0].scale, 3).tolist()} in {took:.1f} s"
                                 if preview else "no preview layer"))
    shot("3_zoomed.png")
    viewer.reset_view()

    # 5. a real polyp as a second image
    kvasir = args.data / "kvasir-sessile"
    name = sorted((kvasir / "images").iterdir())[0].name
    polyp, polyp_truth = read_image(kvasir / "images" / name), read_mask(kvasir / "masks" / name) > 0
    viewer.add_image(polyp, name="polyp", rgb=True)
    _wait(app, lambda: viewer.layers.selection.active is widget.boxes, 10)
    took = box_and_wait(_rect(box_of(polyp_truth)))
    got = widget.masks.data == 1
    print(f"5. second image '{widget.image.name}' (the first hidden: "
          f"{not viewer.layers['synthetic endoscopy (RGB)'].visible}): polyp Dice "
          f"{_dice(got, polyp_truth):.3f} in {took:.1f} s")
    shot("4_polyp.png")  # framed by the widget, as it follows the new image
    # A corrective click where the protocol puts it (the centre of the largest error),
    # through the polyp's points layer as a user's click lands there.
    from napari_imedsam.train.clicks import protocol_click

    click = protocol_click(got, polyp_truth)
    if click is not None:
        before_map = widget.uncertainty.data.copy()
        widget.clicks.negative = not click.positive
        widget.state.points.add(np.array([[click.row, click.col]], dtype=float))
        took = _wait(app, lambda: not widget.busy)
        clicked = widget.masks.data == 1
        after_map = widget.uncertainty.data.copy()
        print(f"   a {'positive' if click.positive else 'negative'} click at row {click.row}, "
              f"col {click.col}: polyp Dice {_dice(got, polyp_truth):.3f} -> "
              f"{_dice(clicked, polyp_truth):.3f} in {took:.1f} s; {widget.status.text()}")
        widget.undo()
        print(f"   Undo -> Dice {_dice(widget.masks.data == 1, polyp_truth):.3f}, clicks "
              f"{len(widget.state.points.data)}, map as before: "
              f"{bool(np.array_equal(widget.uncertainty.data, before_map))}")
        widget.redo()
        print(f"   Redo -> Dice {_dice(widget.masks.data == 1, polyp_truth):.3f}, clicks "
              f"{len(widget.state.points.data)}, map as after the click: "
              f"{bool(np.array_equal(widget.uncertainty.data, after_map))}")
        where = widget.clicks.suggest()  # the undone-and-redone object is still current
        print(f"   Shift+N -> next click suggested at {where}: {widget.status.text()}")
        shot("4c_click.png")
        widget.clicks.clear_suggestion()
    # A box on background (no polyp in it): the model still outlines something, and
    # says it doubts it (a hint measured for this model, napari_imedsam/advice.py).
    h, w = polyp_truth.shape
    corner = next((x, y) for x, y in ((0, 0), (w - 120, 0), (0, h - 120), (w - 120, h - 120))
                  if not polyp_truth[y:y + 120, x:x + 120].any())
    box_and_wait(_rect((corner[0], corner[1], corner[0] + 120, corner[1] + 120)))
    print(f"   a box on background: {widget.status.text()}")
    shot("4b_hint.png")
    widget.undo()

    # 6. a CT slice saved as RGB, with the abdomen window
    ct = args.data / "ct-slices"
    ct_image = read_image(ct / "images" / "amos_0004_75.png")
    liver = read_mask(ct / "masks" / "amos_0004_75_liver_000.png") > 0
    viewer.add_image(ct_image, name="CT slice", rgb=True)
    _wait(app, lambda: viewer.layers.selection.active is widget.boxes, 10)
    widget.window_combo.setCurrentText("abdomen")
    took = box_and_wait(_rect(box_of(liver)))
    got = widget.masks.data == 1
    print(f"6. CT saved as RGB, window {widget.settings.window()} (enabled: "
          f"{widget.window_combo.isEnabled()}): liver Dice {_dice(got, liver):.3f} in {took:.1f} s")
    shot("5_ct_liver.png")

    # 7. a volume: propagate from the middle slice
    volume, labels = synthetic_ct_volume(np.random.default_rng(11), depth=31, size=160,
                                         span=(5, 25))
    organ = labels == TARGET
    viewer.add_image(volume, name="CT volume")
    _wait(app, lambda: viewer.layers.selection.active is widget.boxes, 10)
    widget.window_combo.setCurrentText("abdomen")
    viewer.dims.set_current_step(0, 15)
    box_and_wait(_rect(box_of(organ[15]), plane=15))
    widget.volume.direction.setCurrentText("both")
    started = time.monotonic()
    widget.volume.propagate_button.click()
    _wait(app, lambda: not widget.volume.busy, 900)
    done = [z for z in range(len(volume)) if (widget.masks.data[z] == 1).any()]
    inter = ((widget.masks.data == 1) & organ).sum()
    volume_dice = 2 * inter / max(1, (widget.masks.data == 1).sum() + organ.sum())
    print(f"7. propagation in {time.monotonic() - started:.0f} s: slices {done[0]}..{done[-1]} "
          f"labelled (organ: 5..25), volume Dice {volume_dice:.3f}; {widget.status.text()}")
    shot("6_volume.png")

    # 7b. the real CT volume (NIfTI, 5 mm slices): one box, Propagate, correct a slice,
    # Propagate again, then "Propagate from here", Undo, and export as NIfTI
    import nibabel as nib

    spleen_path = args.data / "ct-volumes" / "spleen_2.nii.gz"
    from napari_imedsam.io import read_nifti

    spleen = read_nifti(args.data / "ct-volumes" / "spleen_2_label.nii.gz").data > 0
    layers = viewer.open(str(spleen_path), plugin="napari-imedsam")
    _wait(app, lambda: viewer.layers.selection.active is widget.boxes, 10)
    widget.window_combo.setCurrentText("abdomen")
    largest = int(spleen.sum(axis=(1, 2)).argmax())

    def go_to(plane: int) -> None:  # the slider is in mm here (5 mm slices)
        viewer.dims.set_point(0, float(layers[0].data_to_world((plane, 0, 0))[0]))

    go_to(largest)
    box_and_wait(_rect(box_of(spleen[largest]), plane=largest))
    oid = int(widget.boxes.features["object_id"].iloc[-1])
    widget.volume.direction.setCurrentText("both")
    started = time.monotonic()
    widget.volume.propagate_button.click()
    _wait(app, lambda: not widget.volume.busy, 900)
    got = widget.masks.data == oid
    labelled = [z for z in range(len(got)) if got[z].any()]
    print(f"7b. real CT '{layers[0].name}' (scale {tuple(round(v, 3) for v in layers[0].scale)}): "
          f"box on slice {largest}, Propagate in {time.monotonic() - started:.0f} s: slices "
          f"{labelled[0]}..{labelled[-1]} labelled (spleen: 3..22), volume Dice "
          f"{_dice(got, spleen):.3f}; {widget.status.text()}")
    go_to(5)
    shot("6b_spleen_propagated.png")
    # The user corrects slice 5 with the brush (here: paints the expert's outline).
    fix = 5
    data = widget.masks.data
    data[fix][data[fix] == oid] = 0
    data[fix][spleen[fix] & (data[fix] == 0)] = oid
    widget.masks.refresh()
    widget.volume.propagate_button.click()
    _wait(app, lambda: not widget.volume.busy, 900)
    got = widget.masks.data == oid
    print(f"    corrected slice {fix}, Propagate again: slice {fix} kept as painted: "
          f"{bool(np.array_equal(got[fix], spleen[fix]))}; volume Dice "
          f"{_dice(got, spleen):.3f}; {widget.status.text()}")
    go_to(fix)
    widget.volume.direction.setCurrentText("down")
    before = widget.masks.data.copy()
    widget.volume.from_here_button.click()
    _wait(app, lambda: not widget.volume.busy, 900)
    changed = sorted({int(z) for z in np.nonzero((widget.masks.data != before).any(
        axis=(1, 2)))[0]})
    print(f"    Propagate from here (slice {fix}, down): slices changed {changed}; "
          f"{widget.status.text()}")
    widget.undo()
    print(f"    Undo: back as before the run: {bool(np.array_equal(widget.masks.data, before))}")
    nifti_dir = Path(tempfile.mkdtemp(prefix="imedsam-nifti-"))
    widget.export.scale.setValue(1.0)
    widget.export.export(nifti_dir / "spleen_labels.nii.gz")
    _wait(app, lambda: not widget.export.busy)
    back = nib.load(str(nifti_dir / "spleen_labels.nii.gz"))
    same_affine = bool(np.allclose(back.affine, nib.load(str(spleen_path)).affine))
    exported = read_nifti(nifti_dir / "spleen_labels.nii.gz").data == oid
    print(f"    export -> {sorted(p.name for p in nifti_dir.iterdir())}; the source's affine: "
          f"{same_affine}; Dice vs the expert {_dice(exported, spleen):.3f}")
    go_to(fix)
    shot("6c_spleen_after_correction.png")

    # 7c. the same CT as a DICOM series: two key-slice boxes, Propagate, Export as DICOM
    # SEG, open the SEG again on the series
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
    from dicom_series import ct_series

    dicom_dir = Path(tempfile.mkdtemp(prefix="imedsam-dicom-"))
    ct_volume = read_nifti(spleen_path).data
    ct_series(dicom_dir / "spleen_ct", np.rint(ct_volume).astype(np.int16),
              spacing=tuple(float(v) for v in layers[0].scale))
    (series_layer,) = viewer.open(str(dicom_dir / "spleen_ct"), plugin="napari-imedsam")
    _wait(app, lambda: viewer.layers.selection.active is widget.boxes, 10)
    widget.window_combo.setCurrentText("abdomen")
    widget.volume.key_boxes.setChecked(True)
    for plane in (largest, 8):
        viewer.dims.set_point(0, float(series_layer.data_to_world((plane, 0, 0))[0]))
        box_and_wait(_rect(box_of(spleen[plane]), plane=plane))
    ids = sorted(set(int(v) for v in widget.boxes.features["object_id"]))
    widget.volume.direction.setCurrentText("both")
    widget.volume.propagate_button.click()
    _wait(app, lambda: not widget.volume.busy, 900)
    got = widget.masks.data == ids[0]
    print(f"7c. DICOM series '{series_layer.name}': 2 key-slice boxes (slices {largest}, 8) -> "
          f"object ids {ids}; Propagate: volume Dice {_dice(got, spleen):.3f}; "
          f"{widget.status.text()}")
    widget.export.seg_type.setCurrentText("spleen")
    widget.export.export(dicom_dir / "spleen_seg.dcm")
    _wait(app, lambda: not widget.export.busy)
    seg_layers = viewer.open(str(dicom_dir / "spleen_seg.dcm"), plugin="napari-imedsam")
    same = bool(np.array_equal(seg_layers[-1].data, widget.masks.data))
    import pydicom

    raw = pydicom.dcmread(str(dicom_dir / "spleen_seg.dcm"), stop_before_pixels=True)
    print(f"    export -> {sorted(p.name for p in dicom_dir.iterdir() if p.is_file())}; "
          f"{raw.SegmentationType} SEG, {raw.NumberOfFrames} frames, segment "
          f"'{raw.SegmentSequence[0].SegmentLabel}' "
          f"({raw.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeMeaning}); "
          f"opened again as '{seg_layers[-1].name}' equal to the masks: {same}")
    # A click on another slice joins the object as a key slice (the option is on); the
    # SEG written before stays as it was.
    click_plane = 20
    viewer.dims.set_point(0, float(series_layer.data_to_world((click_plane, 0, 0))[0]))
    rows, cols = np.nonzero(spleen[click_plane])
    widget.boxes.selected_data = {0}
    widget.clicks.negative = False  # a plain left click (the mouse press sets it in napari)
    widget.state.points.add(np.array([[click_plane, rows.mean(), cols.mean()]]))
    _wait(app, lambda: not widget.busy and len(widget.boxes.data) == 3, 120)
    joined = [int(v) for v in widget.boxes.features["object_id"]]
    shot("6e_key_slice_click.png")
    widget.undo()
    print(f"    a click on slice {click_plane}: boxes' object ids {joined} (a key slice of "
          f"object {ids[0]}); Undo -> {len(widget.boxes.data)} boxes; "
          f"{widget.status.text()}")
    seg_layers[-1].visible = True
    widget.masks.visible = False
    viewer.dims.set_point(0, float(series_layer.data_to_world((12, 0, 0))[0]))
    shot("6d_dicom_seg_reopened.png")
    widget.masks.visible = True

    # 8. back to the first image
    viewer.layers.selection.active = viewer.layers["synthetic endoscopy (RGB)"]
    _wait(app, lambda: True, 1)
    same = bool(np.array_equal(widget.masks.data == 1, first))
    print(f"8. back to '{widget.image.name}': {len(widget.boxes.data)} boxes, object 1 as it "
          f"was: {same}")
    widget.boxes.selected_data = {0}
    widget.clear_current()
    cleared = (widget.masks.data == 1).sum()
    widget.undo()
    print(f"   Clear -> object 1 {cleared} px, {len(widget.boxes.data)} boxes; Undo -> "
          f"{(widget.masks.data == 1).sum()} px, {len(widget.boxes.data)} boxes")
    shot("7_back_to_first.png")

    # 9. export at scale 2
    export_dir = Path(tempfile.mkdtemp(prefix="imedsam-export-"))
    widget.export.scale.setValue(2.0)
    widget.export.export(export_dir / "masks.tif")
    _wait(app, lambda: not widget.export.busy)
    back = tifffile.imread(export_dir / "masks.tif")
    record = json.loads((export_dir / "masks.json").read_text())
    print(f"9. export x2 -> {sorted(p.name for p in export_dir.iterdir())}; TIFF {back.shape}, "
          f"ids {np.unique(back).tolist()}; JSON objects {len(record.get('objects', []))}")

    # 10. a series of three polyps
    folder = Path(tempfile.mkdtemp(prefix="imedsam-series-"))
    names = sorted((kvasir / "images").iterdir())[1:4]
    for path in names:
        (folder / path.name).write_bytes(path.read_bytes())
    out = folder / "imedsam-labels"
    widget.series.open_folder(folder, out)
    truth0 = read_mask(kvasir / "masks" / names[0].name) > 0
    box_and_wait(_rect(box_of(truth0)))
    widget.series.move(1)
    widget.series.move(-1)
    print(f"10. series: saved {sorted(p.name for p in out.glob('*_labels*'))}; back on "
          f"'{widget.image.name}' with {int(widget.masks.data.max())} object(s) reloaded")
    shot("8_series.png")

    # 11. the Fine-tune dock
    _, finetune = viewer.window.add_plugin_dock_widget("napari-imedsam", "Fine-tune")
    _wait(app, lambda: finetune._placed, 10)
    _wait(app, lambda: True, 1)
    print(f"11. Fine-tune dock: Train visible {finetune.train_button.isVisible()}, plot "
          f"{finetune.plot.visibleRegion().boundingRect().height()} px high")
    shot("9_finetune_dock.png")

    # 12. classes: a wall around a cavity, one box; fine-tune two classes on 6 images
    from napari_imedsam.train.synthetic_rings import ring_dataset

    rings = ring_dataset(7, 11, 256)
    for i, (image, labels) in enumerate(rings[:6]):
        viewer.add_image(image, name=f"ring{i}", rgb=True)
        viewer.add_labels(labels, name=f"ring{i} classes")
    finetune.data.refresh()
    for _, labels_name, _ in finetune.pairs_table.used_rows():
        if not labels_name.endswith(" classes"):
            finetune.pairs_table.set_row(labels_name, use=False)
    finetune.data.read_as_combo.setCurrentText("classes (label value = class)")
    finetune.data.class_edit.setText("cavity=1, wall=2")
    finetune.device_combo.setCurrentText("cpu")
    finetune.epochs_spin.setValue(200)
    finetune.minutes_spin.setValue(2.0)
    finetune.start_training()
    took = _wait(app, lambda: not finetune.busy, 600)
    outcome = finetune.last_outcome
    if outcome.adapter is not None and widget.settings.adapter_edit.text() != str(outcome.adapter):
        finetune.adapters.use_selected()  # handed over at once when it scored higher
    print(f"12. classes fine-tune in {took:.0f} s: {outcome.summary()}; the Segment widget "
          f"offers {[widget.settings.class_combo.itemText(i) for i in range(2)]}")
    shot("10_finetune_classes.png")

    # 13. a held-out ring: the same box answered by each class
    image, labels = rings[6]
    viewer.add_image(image, name="held-out ring", rgb=True)
    _wait(app, lambda: widget.image is not None and widget.image.name == "held-out ring", 10)
    _raise_dock(widget)
    box = _rect(box_of(labels > 0))
    widget.settings.class_combo.setCurrentIndex(0)
    widget.settings.labelling_combo.setCurrentText("the class's label value")
    box_and_wait(box)
    widget.boxes.mode = "select"
    widget.cycle_class()
    widget.boxes.add_rectangles(box + np.array([0.0, 0.4]))  # the same box, drawn again
    _wait(app, lambda: not widget.busy)
    masks = widget.masks.data
    print(f"13. one box, two classes: cavity Dice {_dice(masks == 1, labels == 1):.3f}, wall "
          f"Dice {_dice(masks == 2, labels == 2):.3f}; status: {widget.status.text()}")
    widget.settings.show_unc.setChecked(False)  # the two classes' colours, unhidden
    _wait(app, lambda: True, 1)
    shot("11_classes.png")
    viewer.close()


if __name__ == "__main__":
    main()
