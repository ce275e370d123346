"""Issue 23, "Hostile input, second round": the readers' answers to files that are
not what they claim. Each test names the item it holds; the command-line cases are
rows "23/N" of ``tests/test_hostile_table.py``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hostile_files import fifo_opened_by_a_writer_if_read
from napari_imedsam import io


# -- item 3: a FIFO or a device is refused before it is opened -------------------------
@pytest.mark.parametrize("name, read", [
    ("x.tif", io.read_tiff), ("x.png", io.read_pillow), ("x.nii.gz", io.read_nifti),
    ("x.dcm", io.read_dicom), ("x.png", io.read_any)])
def test_readers_refuse_a_fifo_before_opening_it(tmp_path, name, read):
    pytest.importorskip("nibabel")
    pytest.importorskip("pydicom")
    fifo = fifo_opened_by_a_writer_if_read(tmp_path / name)
    with pytest.raises(ValueError, match=rf"{name} is not a regular image file but a FIFO"):
        read(fifo)


def test_readers_refuse_a_device_and_name_a_missing_file(tmp_path):
    with pytest.raises(ValueError, match="/dev/zero is not a regular image file but a device"):
        io.read_any("/dev/zero")
    with pytest.raises(FileNotFoundError, match="gone.tif does not exist"):
        io.read_any(tmp_path / "gone.tif")


def test_the_dicom_reader_does_not_open_a_fifo_to_look_for_its_preamble(tmp_path):
    from napari_imedsam import _reader

    import time

    opened: list[bool] = []
    fifo = Path(fifo_opened_by_a_writer_if_read(tmp_path / "slice", opened=opened))
    assert _reader._looks_like_dicom(fifo) is False
    time.sleep(0.3)  # the writer gets in only while a reader has the FIFO open
    assert not opened, "the FIFO was opened (and would block without a writer)"
