"""Export: labels at any scale, uncertainty, the JSON record; pure functions, the
Segment widget's Export section, and ``imedsam segment --from-export``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_imedsam import export as ex
from napari_imedsam.inference.merge import UNCERTAINTY_QUANTITY


# -- pure: a fake decoder that draws the disc inscribed in each box at any scale ----------
def _disc_decoder(calls: list | None = None) -> ex.Decode:
    def decode(plane, boxes, scale):  # noqa: ANN001, ANN202
        if calls is not None:
            calls.append((plane, scale))
        h, w = ex.output_grid((40, 60), scale)
        yy, xx = (np.mgrid[:h, :w] + 0.5) / scale  # pixel centres in image coordinates
        masks = []
        for x0, y0, x1, y1 in boxes:
            cy, cx, r = (y0 + y1) / 2, (x0 + x1) / 2, min(x1 - x0, y1 - y0) / 2
            masks.append((yy - cy) ** 2 + (xx - cx) ** 2 < r**2)
        unc = np.full((h, w), 0.25 * scale, np.float32)
        return np.array(masks), unc

    return decode


BOXES = [ex.ObjectBox(1, (4.0, 6.0, 20.0, 22.0)), ex.ObjectBox(2, (30.0, 10.0, 50.0, 30.0))]


def _grid_labels(decode: ex.Decode, objects=BOXES) -> np.ndarray:
    """What the widget would have written: each object decoded at scale 1, in order."""
    masks, _ = decode(None, np.array([o.box for o in objects]), 1.0)
    labels = np.zeros((40, 60), np.int32)
    for o, m in zip(objects, masks):
        labels[m & (labels == 0)] = o.object_id
    return labels


def test_nearest_resampling_and_shapes():
    a = np.arange(6).reshape(2, 3)
    assert np.array_equal(ex.resample_nearest(a, (4, 6)), np.kron(a, np.ones((2, 2), int)))
    assert np.array_equal(ex.resample_nearest(np.kron(a, np.ones((2, 2), int)), (2, 3)), a)
    assert ex.output_grid((40, 60), 2.5) == (100, 150) and ex.output_grid((3, 3), 0.25) == (1, 1)


def test_scale_one_keeps_the_labels_as_they_are():
    labels = _grid_labels(_disc_decoder())
    labels[0, 0] = 9  # a hand-painted id: kept
    out = ex.labels_at_scale(labels, BOXES, 1.0, None)
    assert np.array_equal(out.labels, labels) and out.labels is not labels


def test_scale_two_decodes_again_and_keeps_brush_edits():
    decode = _disc_decoder()
    labels = _grid_labels(decode)
    fine_truth, _ = decode(None, np.array([o.box for o in BOXES]), 2.0)
    # Untouched objects: exactly the fine decode.
    out = ex.labels_at_scale(labels, BOXES, 2.0, decode)
    assert out.labels.shape == (80, 120)
    assert np.array_equal(out.labels == 1, fine_truth[0])
    assert np.array_equal(out.labels == 2, fine_truth[1])
    assert [o["source"] for o in out.objects] == ["decoded", "decoded"]
    assert out.uncertainty.shape == (80, 120) and out.uncertainty.max() == pytest.approx(0.5)

    # Brush corrections: paint a square onto object 1, erase a bit of object 2, and
    # paint a new id by hand (no box).
    edited = labels.copy()
    edited[30:34, 2:6] = 1
    erased = (edited == 2) & (np.arange(60)[None, :] >= 45)
    edited[erased] = 0
    edited[36:39, 55:58] = 7
    out = ex.labels_at_scale(edited, BOXES, 2.0, decode)
    up = ex.resample_nearest(edited, (80, 120))
    assert (out.labels[60:68, 4:12] == 1).all()  # the painted square, as 2 x 2 blocks
    assert not (out.labels[ex.resample_nearest(erased, (80, 120))] == 2).any()
    assert np.array_equal(out.labels == 7, up == 7)
    # Away from the edits, object 2 still has its fine boundary.
    keep = ~ex.resample_nearest(erased, (80, 120))
    assert np.array_equal((out.labels == 2) & keep, fine_truth[1] & keep)
    how = {o["id"]: o for o in out.objects}
    assert how[1]["source"] == "decoded+edits" and how[1]["painted_pixels"] == 16
    assert how[2]["erased_pixels"] == int(erased.sum()) and how[7]["source"] == "labels"


def test_volume_only_planes_with_objects_are_decoded_and_stop_works():
    calls: list = []
    decode = _disc_decoder(calls)
    vol = np.zeros((4, 40, 60), np.int32)
    vol[2] = _grid_labels(_disc_decoder())
    objects = [ex.ObjectBox(o.object_id, o.box, 2) for o in BOXES]
    out = ex.labels_at_scale(vol, objects, 2.0, decode)
    assert out.labels.shape == (4, 80, 120) and not out.labels[[0, 1, 3]].any()
    assert {c[0] for c in calls} == {2} and out.labels[2].max() == 2
    with pytest.raises(InterruptedError):
        ex.labels_at_scale(vol, objects, 2.0, decode, should_stop=lambda: True)


def test_reproduce_from_the_record_gives_the_same_labels(tmp_path):
    decode = _disc_decoder()
    labels = _grid_labels(decode)
    for scale in (1.0, 2.0):
        exported = ex.labels_at_scale(labels, BOXES, scale, decode)
        record = ex.build_record(image={"shape": [40, 60]}, model={"name": "fake"}, window=None,
                                 scale=scale, objects=BOXES, exported=exported)
        record = json.loads(json.dumps(record))  # what a reader of the file gets
        assert np.array_equal(ex.reproduce(record, decode), exported.labels)
    assert record["objects"][0] == {"id": 1, "plane": None, "box": [4.0, 6.0, 20.0, 22.0],
                                    "accepted": False, "source": "decoded",
                                    "painted_pixels": 0, "erased_pixels": 0}
    assert record["ids_without_box"] == []


def test_files_read_back_equal_with_resolution_and_no_overwrite(tmp_path):
    decode = _disc_decoder()
    exported = ex.labels_at_scale(_grid_labels(decode), BOXES, 2.0, decode)
    geometry = ex.Geometry((40, 60), (0.5, 0.8), "mm")
    record = ex.build_record(image={"shape": [40, 60]}, model={"name": "fake"},
                             window="abdomen", scale=2.0, objects=BOXES, exported=exported)
    target = ex.targets_for(tmp_path / "case.tif", with_uncertainty=True)
    written = ex.write_export(target, exported, record, geometry, 2.0)
    assert [p.name for p in written] == ["case.tif", "case_uncertainty.tif", "case.json"]
    with tifffile.TiffFile(target.labels) as tif:
        assert np.array_equal(tif.asarray(), exported.labels)
        assert tif.pages[0].resolution == pytest.approx((10 / 0.4, 10 / 0.25))  # px per cm
    unc = tifffile.imread(target.uncertainty)
    assert unc.dtype == np.float32 and np.array_equal(unc, exported.uncertainty)
    saved = json.loads(target.record.read_text())
    assert saved["files"] == {"labels": "case.tif", "uncertainty": "case_uncertainty.tif",
                              "uncertainty_quantity": UNCERTAINTY_QUANTITY}
    assert "standard deviation" in UNCERTAINTY_QUANTITY
    assert saved["window_width_level"] == [400.0, 40.0] and saved["scale"] == 2.0
    for key in ("created", "napari_imedsam_version", "model", "box_convention", "objects"):
        assert key in saved
    # Nothing is replaced: the same export again fails before writing anything...
    before = target.labels.read_bytes()
    with pytest.raises(FileExistsError):
        ex.write_export(target, exported, record, geometry, 2.0)
    assert target.labels.read_bytes() == before
    # ... and a free name is one where none of the three files exists.
    (tmp_path / "case-2.json").write_text("{}")
    assert ex.free_targets(tmp_path / "case.tif", True).labels.name == "case-3.tif"
    # PNG holds 2D only.
    with pytest.raises(ValueError, match="2D"):
        ex.write_export(ex.targets_for(tmp_path / "v.png", False),
                        ex.ExportedLabels(np.zeros((2, 4, 4), np.int32), None), record,
                        geometry, 1.0)
    assert not (tmp_path / "v.png").exists()


def test_model_info_hashes_the_files(tmp_path):
    from napari_imedsam.model.weights import REGISTRY, sha256_file

    adapter = tmp_path / "a.safetensors"
    adapter.write_bytes(b"not really an adapter")
    info = ex.model_info("medsam_lite", str(adapter), "cpu")
    assert info["adapter_sha256"] == sha256_file(adapter)
    assert info["model_sha256"] == REGISTRY["medsam_lite"].sha256
    assert ex.model_info("vit_b", None, "cpu")["model_sha256"] == REGISTRY["vit_b"].sha256


# -- the Segment widget's Export section (pytest-qt, the default model) ------------------
def _ct_scene(size: int = 128, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic CT slice in HU and its object."""
    from napari_imedsam.train.synthetic import synthetic_sample

    image, labels = synthetic_sample(np.random.default_rng(seed), size, "ct")
    hu = np.rint(-160 + image[..., 0].astype(np.float32) / 255 * 400).astype(np.int16)
    return hu, labels > 0


def _rect(mask: np.ndarray, pad: int = 3) -> np.ndarray:
    rows, cols = np.nonzero(mask)
    r0, r1, c0, c1 = rows.min() - pad, rows.max() + pad, cols.min() - pad, cols.max() + pad
    return np.array([[r0, c0], [r0, c1], [r1, c1], [r1, c0]], float)


@pytest.fixture(scope="module")
def default_model():
    from napari_imedsam.model.loading import load_model

    return load_model("medsam_lite")


@pytest.fixture
def segment(make_napari_viewer, qtbot, default_model, private_qsettings):
    """open(path) -> (viewer, widget) with the default model and the abdomen window."""
    pytest.importorskip("pytestqt")

    def open_(path, plugin=None):  # noqa: ANN001, ANN202
        viewer = make_napari_viewer()
        viewer.open(str(path), plugin=plugin)
        _, widget = viewer.window.add_plugin_dock_widget("napari-imedsam", "Segment")
        widget.model_combo.setCurrentText("medsam_lite")
        widget.window_combo.setCurrentText("abdomen")
        widget.use_model(default_model)
        return viewer, widget

    return open_


def _wait(qtbot, widget) -> None:  # noqa: ANN001
    qtbot.waitUntil(lambda: not widget.busy and not widget.export.busy, timeout=120_000)


def test_widget_export_files_record_and_reproduction(segment, qtbot, tmp_path, notes):
    from napari_imedsam.cli import main
    from napari_imedsam.inference.session import SegmentationSession

    hu, truth = _ct_scene()
    tifffile.imwrite(tmp_path / "ct.tif", hu)
    viewer, widget = segment(tmp_path / "ct.tif")
    masks = widget.masks
    widget.boxes.add_rectangles(_rect(truth))
    _wait(qtbot, widget)
    assert (masks.data == 1).sum() > 100, notes

    # Scale 1: the labels as they are, the uncertainty layer, and the record.
    out = tmp_path / "exports" / "case.tif"
    assert widget.export.export(out)
    assert np.array_equal(tifffile.imread(out), masks.data)
    unc = tifffile.imread(out.with_name("case_uncertainty.tif"))
    # The default model has an error map, which the layer shows; the file holds the
    # MC-dropout std (one name, one quantity), what the layer shows when asked for it.
    shown = widget.uncertainty
    assert shown.name == "ct error map" and 0 < shown.data.max() <= 1
    widget.unc_view.shows.setCurrentText("MC-dropout std")
    assert shown.name == "ct uncertainty"
    assert unc.dtype == np.float32 and np.array_equal(unc, shown.data) and unc.max() <= 0.5
    record = json.loads(out.with_name("case.json").read_text())
    assert record["image"]["path"] == str(tmp_path / "ct.tif")
    assert record["image"]["shape"] == [128, 128] and record["window"] == "abdomen"
    assert record["model"]["name"] == "medsam_lite" and len(record["model"]["model_sha256"]) == 64
    [obj] = record["objects"]
    assert obj["id"] == 1 and obj["plane"] is None
    r0, c0 = _rect(truth)[0]
    assert obj["box"] == [c0, r0, _rect(truth)[2][1] + 1, _rect(truth)[2][0] + 1]
    # imedsam segment makes the same mask again from the record.
    again = tmp_path / "again.tif"
    assert main(["segment", "--from-export", str(out.with_name("case.json")),
                 "--out", str(again), "--device", "cpu"]) == 0
    assert np.array_equal(tifffile.imread(again), masks.data)

    # Scale 2 to PNG, in a worker: reproducible from the record with a fresh session.
    widget.export.scale.setValue(2.0)
    fine = tmp_path / "exports" / "fine.png"
    assert widget.export.export(fine)
    _wait(qtbot, widget)
    from PIL import Image

    fine_labels = np.asarray(Image.open(fine))
    assert fine_labels.shape == (256, 256) and fine_labels.max() == 1
    record = json.loads(fine.with_name("fine.json").read_text())
    assert record["scale"] == 2.0 and record["objects"][0]["source"] == "decoded"
    session = SegmentationSession(widget.pinned_model, device="cpu")
    decode = ex.session_decoder(session, hu, "abdomen")
    assert np.array_equal(ex.reproduce(record, decode), fine_labels)
    # The fine mask agrees with the grid mask (it is a sharper version of it).
    coarse = ex.resample_nearest(fine_labels, (128, 128)) == 1
    assert (coarse & (masks.data == 1)).sum() / (masks.data == 1).sum() > 0.9

    # A brush correction is kept; an existing name is never replaced without asking.
    masks.data_setitem(np.nonzero(np.pad(np.ones((4, 4), bool), ((2, 122), (2, 122)))), 1)
    widget.export.ask_existing = lambda taken: "rename"
    assert widget.export.export(fine)
    _wait(qtbot, widget)
    edited = np.asarray(Image.open(tmp_path / "exports" / "fine-2.png"))
    assert (edited[4:12, 4:12] == 1).all() and np.array_equal(
        np.asarray(Image.open(fine)), fine_labels)
    assert json.loads((tmp_path / "exports" / "fine-2.json").read_text())[
        "objects"][0]["source"] == "decoded+edits"
    widget.export.ask_existing = lambda taken: "cancel"
    before = sorted(p.name for p in (tmp_path / "exports").iterdir())
    assert not widget.export.export(fine)
    assert sorted(p.name for p in (tmp_path / "exports").iterdir()) == before
    widget.export.ask_existing = lambda taken: "replace"
    widget.export.scale.setValue(1.0)
    assert widget.export.export(fine)
    assert np.array_equal(np.asarray(Image.open(fine)), masks.data)
    assert not [m for s, m in notes if s == "error"], notes


def test_widget_export_nifti_on_the_source_grid(segment, qtbot, tmp_path):
    nib = pytest.importorskip("nibabel")
    hu, truth = _ct_scene()
    # Store three axial slices LPS-style (i = columns, j = rows), object on slice 1.
    view = np.full((3, 128, 128), -160, np.int16)
    view[1] = hu
    affine = np.array([[-0.7, 0, 0, 5.0], [0, -0.7, 0, 9.0], [0, 0, 3.0, -20.0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(view.transpose(2, 1, 0), affine), str(tmp_path / "ct.nii.gz"))
    viewer, widget = segment(tmp_path / "ct.nii.gz", plugin="napari-imedsam")
    masks = widget.masks
    assert masks.scale == pytest.approx((3.0, 0.7, 0.7))
    viewer.dims.set_current_step(0, 1)
    widget.boxes.add_rectangles(np.column_stack([np.ones(4), _rect(truth)]))
    _wait(qtbot, widget)
    assert masks.data[1].any() and not masks.data[[0, 2]].any()

    widget.export.with_uncertainty.setChecked(False)
    out = tmp_path / "masks.nii.gz"
    assert widget.export.export(out)
    saved = nib.load(str(out))
    assert np.allclose(saved.affine, affine)  # the source's voxel grid, voxel for voxel
    assert np.array_equal(np.asarray(saved.dataobj), masks.data.transpose(2, 1, 0))
    assert not (tmp_path / "masks_uncertainty.tif").exists()

    widget.export.scale.setValue(2.0)
    assert widget.export.export(tmp_path / "fine.nii.gz")
    _wait(qtbot, widget)
    fine = nib.load(str(tmp_path / "fine.nii.gz"))
    assert fine.shape == (256, 256, 3)
    assert fine.header.get_zooms() == pytest.approx((0.35, 0.35, 3.0))
    # Same physical place: the fine voxels of a coarse voxel are centred on it.
    centre = affine @ [10, 20, 1, 1]
    fine_centre = np.mean([fine.affine @ [20 + a, 40 + b, 1, 1] for a in (0, 1) for b in (0, 1)],
                          axis=0)
    assert np.allclose(centre, fine_centre)
    record = json.loads((tmp_path / "fine.json").read_text())
    assert record["objects"][0]["plane"] == 1 and record["image"]["spacing"] == [3.0, 0.7, 0.7]


def test_each_object_is_decoded_and_reproduced_with_its_own_class():
    """A model with several classes: export at another scale, and re-making the masks from
    the record, answer every object with the class it was drawn with."""
    from napari_imedsam.model.classes import ClassInfo

    calls: list = []

    def decode(plane, boxes, scale, head=None):  # noqa: ANN001, ANN202 - head 1 says "no"
        calls.append((len(boxes), scale, head))
        masks, unc = _disc_decoder()(plane, boxes, scale)
        return (masks & False if head == 1 else masks), unc

    objects = [ex.ObjectBox(1, BOXES[0].box, head=0), ex.ObjectBox(2, BOXES[1].box, head=1)]
    labels = _grid_labels(_disc_decoder(), BOXES)
    labels[labels == 2] = 0  # as the "no" class left it
    exported = ex.labels_at_scale(labels, objects, 2.0, decode)
    assert sorted(calls) == [(1, 1.0, 0), (1, 1.0, 1), (1, 2.0, 0), (1, 2.0, 1)]
    classes = (ClassInfo("disc", 1), ClassInfo("ring", 2))
    record = ex.build_record(image={"shape": [40, 60]}, model={"name": "fake"}, window=None,
                             scale=2.0, objects=objects, exported=exported, classes=classes)
    record = json.loads(json.dumps(record))
    assert [o["class"] for o in record["objects"]] == [
        {"head": 0, "name": "disc", "value": 1}, {"head": 1, "name": "ring", "value": 2}]
    calls.clear()
    again = ex.reproduce(record, decode)
    assert sorted(calls) == [(1, 2.0, 0), (1, 2.0, 1)]
    assert np.array_equal(again, exported.labels) and set(np.unique(again)) == {0, 1}


def test_an_export_with_clicks_records_them_and_is_made_again_identically():
    """Clicks travel with their object: the record lists them in order, and re-making the
    masks from the record (``imedsam segment --from-export``) uses them, an object of
    clicks alone (no box) included."""
    import torch

    from napari_imedsam.inference.session import SegmentationSession
    from napari_imedsam.model import build_model

    torch.manual_seed(0)
    model = build_model("tiny").eval()
    for module in model.implicit_decoder.modules():  # residual heads start at zero: wake them
        if isinstance(module, torch.nn.Linear) and not module.weight.any():
            module.weight.data.uniform_(-0.3, 0.3)
    session = SegmentationSession(model, device="cpu", mode="imedsam", adaptive=False)
    rng = np.random.default_rng(3)
    image = rng.integers(0, 255, (40, 60), dtype=np.uint8)
    clicked = ex.ObjectBox(1, (4.0, 6.0, 20.0, 22.0),
                           clicks=(((10.5, 12.5), (18.5, 20.5)), (1, 0)))
    alone = ex.ObjectBox(2, (float("nan"),) * 4, clicks=(((40.5, 20.5),), (1,)))
    plain = ex.ObjectBox(3, (30.0, 10.0, 50.0, 30.0))
    objects = [clicked, alone, plain]
    decode = ex.session_decoder(session, image)
    masks, _ = decode(None, np.array([o.box for o in objects]), 1.0,
                      clicks=[o.prompt_clicks() for o in objects])
    session.set_image(image)
    plain_prob = session.predict([clicked.box]).prob
    clicked_prob = session.predict([clicked.box], clicks=[clicked.prompt_clicks()]).prob
    assert np.abs(plain_prob - clicked_prob).max() > 0.1  # the clicks change the answer
    labels = np.zeros((40, 60), np.int32)
    for o, m in zip(objects, masks):
        labels[m & (labels == 0)] = o.object_id
    exported = ex.labels_at_scale(labels, objects, 2.0, decode)
    record = ex.build_record(image={"shape": [40, 60]}, model={"name": "tiny"}, window=None,
                             scale=2.0, objects=objects, exported=exported)
    record = json.loads(json.dumps(record))
    first, second = record["objects"][0], record["objects"][1]
    assert first["clicks"] == [{"x": 10.5, "y": 12.5, "positive": True},
                               {"x": 18.5, "y": 20.5, "positive": False}]
    assert second["box"] is None and second["clicks"] == [{"x": 40.5, "y": 20.5,
                                                          "positive": True}]
    assert "clicks" not in record["objects"][2]
    again = ex.reproduce(record, ex.session_decoder(session, image))
    assert np.array_equal(again, exported.labels)
    broken = json.loads(json.dumps(record))
    broken["objects"][0]["clicks"] = [{"x": "left"}]
    with pytest.raises(ValueError, match="clicks are not a list"):
        ex.reproduce(broken, decode)


def test_export_proposes_the_images_folder_and_name(tmp_path):
    """Export opened in the process's folder as "masks.tif" whatever the image (issue 23):
    it proposes the labels beside the image, named after it."""
    assert ex.suggested_path("/data/ct/scan.nii.gz", "scan") == Path("/data/ct/scan_labels.tif")
    assert ex.suggested_path("/data/p/polyp1.jpg", "x") == Path("/data/p/polyp1_labels.tif")
    assert ex.suggested_path("/data/dicom/series7", "s") == Path("/data/dicom/series7_labels.tif")
    assert ex.suggested_path(None, "sample: CT / slice", tmp_path) == (
        tmp_path / "sample__CT___slice_labels.tif")
