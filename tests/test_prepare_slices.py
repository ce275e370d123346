"""training/prepare_slices.py: slices oriented as the viewer shows them."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")

from napari_imedsam.inference.intensity import to_encoder_rgb  # noqa: E402
from napari_imedsam.train.data import read_image, read_mask  # noqa: E402

SCRIPT = Path(__file__).parents[1] / "training" / "prepare_slices.py"


def _script():  # noqa: ANN202
    spec = importlib.util.spec_from_file_location("prepare_slices", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _case(folder: Path, name: str, data: np.ndarray) -> None:
    # Stored in RAS order (x to the patient's right, y anterior), 0.8 mm pixels.
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    folder.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(folder / name))


def test_slices_are_in_the_radiological_view_with_their_labels(tmp_path):
    rng = np.random.default_rng(0)
    hu = rng.uniform(-200, 300, size=(12, 10, 4)).astype(np.float32)  # (x, y, z)
    labels = np.zeros((12, 10, 4), np.uint8)
    labels[1:4, 6:9, 2] = 3  # an L-shaped object, so any flip shows
    labels[1:2, 2:6, 2] = 3
    labels[8:11, 1:3, 0] = 5
    _case(tmp_path / "img", "amos_0001.nii.gz", hu)
    _case(tmp_path / "lab", "amos_0001.nii.gz", labels)
    out = tmp_path / "out"
    _script().main(["--images", str(tmp_path / "img"), "--labels", str(tmp_path / "lab"),
                    "--out", str(out), "--label-map", "5:0", "--split", "1,0,0"])
    # Slice 0's only object was mapped to background: only slice 2 is kept.
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["amos_0001_002.png"]
    mask = read_mask(out / "masks" / "amos_0001_002.png", binary=False)
    # Radiological view: rows run anterior -> posterior, columns the patient's right -> left,
    # so from RAS storage both in-plane axes flip (and rows are y).
    expected = labels[::-1, ::-1, 2].T
    assert mask.shape == (10, 12) and np.array_equal(mask, expected)
    image = read_image(out / "images" / "amos_0001_002.png")
    assert np.array_equal(image, to_encoder_rgb(hu[::-1, ::-1, 2].T, "abdomen"))
    with (out / "split.csv").open() as f:
        assert list(csv.reader(f))[1:] == [["amos_0001_002.png", "train"]]


def test_mismatched_volumes_are_refused(tmp_path):
    _case(tmp_path / "img", "c.nii.gz", np.zeros((8, 8, 3), np.float32))
    _case(tmp_path / "lab", "c.nii.gz", np.ones((8, 8, 2), np.uint8))
    with pytest.raises(SystemExit, match="do not match"):
        _script().main(["--images", str(tmp_path / "img"), "--labels", str(tmp_path / "lab"),
                        "--out", str(tmp_path / "out")])
