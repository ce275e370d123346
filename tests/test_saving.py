"""Sets of files that land together or not at all, and TIFFs written band by band."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from napari_imedsam import export as ex
from napari_imedsam import saving
from napari_imedsam.saving import TiffRows, staged_files


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_a_set_lands_whole_or_not_at_all(tmp_path):
    a, b = tmp_path / "mask.tif", tmp_path / "mask.json"
    # A failure inside the block: nothing placed, no temporary files left.
    with pytest.raises(RuntimeError, match="disk full"):
        with staged_files([a, b]) as (ta, tb):
            ta.write_text("labels")
            raise RuntimeError("disk full")
    assert not a.exists() and not b.exists() and _leftovers(tmp_path) == []
    # A name taken by someone else while the set was written: the set's files
    # already placed are removed again, and the other writer's file survives.
    with pytest.raises(FileExistsError, match="mask.json exists"):
        with staged_files([a, b]) as (ta, tb):
            ta.write_text("labels")
            tb.write_text("{}")
            b.write_text("someone else's")
    assert not a.exists() and b.read_text() == "someone else's"
    assert _leftovers(tmp_path) == []
    b.unlink()
    with staged_files([a, b]) as (ta, tb):
        ta.write_text("labels")
        tb.write_text("{}")
    assert a.read_text() == "labels" and b.read_text() == "{}" and _leftovers(tmp_path) == []
    # Checked before anything is created: two names for one file, or one that exists.
    with pytest.raises(ValueError, match="same file"):
        with staged_files([a, tmp_path / "." / "mask.tif"], overwrite=True):
            pass
    with pytest.raises(FileExistsError, match="mask.tif exists"):
        with staged_files([tmp_path / "new.tif", a]):
            pass
    assert not (tmp_path / "new.tif").exists() and _leftovers(tmp_path) == []


def test_tiff_rows_write_bands_with_metadata_and_refuse_what_does_not_fit(tmp_path):
    path = tmp_path / "big.tif"
    options = saving.tiff_options((0.5, 0.25), "mm")
    with TiffRows(path, (300, 70), np.uint16, **options) as rows:
        rows.write(0, np.full((100, 70), 7, np.uint16))
        rows.write(250, np.arange(50 * 70, dtype=np.int64).reshape(50, 70) % 1000)
        with pytest.raises(ValueError, match="does not fit"):
            rows.write(280, np.zeros((30, 70), np.uint16))
        with pytest.raises(ValueError, match="does not fit"):
            rows.write(0, np.zeros((10, 71), np.uint16))
    with tifffile.TiffFile(path) as tif:
        back = tif.asarray()
        assert tif.pages[0].resolution == pytest.approx((40.0, 20.0))  # px per cm
        assert tif.shaped_metadata[0]["unit"] == "mm"
    assert back.dtype == np.uint16 and back.shape == (300, 70)
    assert (back[:100] == 7).all() and not back[100:250].any()  # never written: 0
    assert np.array_equal(back[250:], np.arange(50 * 70).reshape(50, 70) % 1000)


def _export_parts(tmp_path):
    labels = np.zeros((20, 30), np.int32)
    labels[5:10, 5:12] = 1
    exported = ex.ExportedLabels(labels, np.full((20, 30), 0.1, np.float32))
    record = {"format": ex.FORMAT, "objects": []}
    return exported, record, ex.Geometry((20, 30), (1.0, 1.0))


def test_a_failed_export_leaves_no_labels_without_their_record(tmp_path, monkeypatch):
    """Issue 15, item 8: an export that fails part-way (here: the uncertainty map)
    leaves none of its files; the same export then succeeds in full."""
    exported, record, geometry = _export_parts(tmp_path)
    target = ex.targets_for(tmp_path / "case.tif", with_uncertainty=True)
    real = saving.save_tiff

    def failing(path, data, **kwargs):  # noqa: ANN001, ANN003, ANN202
        if data.dtype == np.float32:
            raise OSError(28, "No space left on device")
        return real(path, data, **kwargs)

    monkeypatch.setattr(saving, "save_tiff", failing)
    with pytest.raises(OSError, match="no space left in .* for case.tif, case_uncertainty.tif"):
        ex.write_export(target, exported, record, geometry, 1.0)
    assert [p.exists() for p in target.paths()] == [False, False, False]
    assert _leftovers(tmp_path) == []
    monkeypatch.undo()
    written = ex.write_export(target, exported, record, geometry, 1.0)
    assert written == target.paths()
    assert np.array_equal(tifffile.imread(target.labels), exported.labels)
    assert json.loads(target.record.read_text())["files"]["uncertainty"] == "case_uncertainty.tif"


def test_a_full_disk_is_named_with_what_to_do(tmp_path, monkeypatch):
    """tifffile reports a full disk as "N requested and M written", without an errno:
    the set's error says what happened and what to do, and leaves nothing."""
    monkeypatch.setattr(saving, "DISK_FULL_BELOW", 1 << 62)  # any disk counts as full
    with pytest.raises(OSError, match=r"no space left in .* for m.tif, m.json \(nothing was "
                                      r"written\): free some space or choose another folder"):
        with staged_files([tmp_path / "m.tif", tmp_path / "m.json"]) as (labels, _):
            labels.write_bytes(b"partial")
            raise OSError("330282 requested and 74668 written")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(saving, "DISK_FULL_BELOW", 0)  # other errors pass unchanged
    with pytest.raises(OSError, match="^boom$"):
        with staged_files([tmp_path / "m.tif"]):
            raise OSError("boom")
