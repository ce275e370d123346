"""Hostile files for the tests of issue 23 (hostile input, second round): FIFOs
that cannot hang a test, DICOM series made with pydicom."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest


def dicom_slice(path: Path, pixels: np.ndarray, z: float) -> None:
    """One CT slice of a series (16-bit, 0.7 x 0.8 mm), written with pydicom."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.uid import ExplicitVRLittleEndian

    meta = pydicom.dataset.FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.dataset.FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID = "CT", "1.2.826.0.1.23"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelSpacing, ds.ImagePositionPatient, ds.SliceThickness = [0.7, 0.8], [0, 0, z], 2.5
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)


def dicom_folder(folder: Path, slices: int = 3) -> str:
    series = folder / "series"
    series.mkdir()
    for i in range(slices):
        pixels = np.full((48, 64), 900, np.uint16)
        pixels[10:30, 10:40] = 1200
        dicom_slice(series / f"s{i}.dcm", pixels, 2.5 * i)
    return str(series)


def fifo_opened_by_a_writer_if_read(path: Path, seconds: float = 20.0,
                                    opened: list[bool] | None = None) -> str:
    """A FIFO; should the code under test open it to read, a writer thread opens and
    closes it, so that the read ends (empty) instead of blocking the test forever
    (and appends True to ``opened``)."""
    import threading
    import time

    os.mkfifo(path)

    def unblock() -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))  # ENXIO: no reader
                if opened is not None:
                    opened.append(True)
                return
            except OSError:
                time.sleep(0.05)

    threading.Thread(target=unblock, daemon=True).start()
    return str(path)
