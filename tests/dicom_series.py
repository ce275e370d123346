"""A synthetic CT series written as DICOM files the way a scanner would (shared by the
DICOM SEG tests): one file per slice, in shuffled file order, with the UIDs, geometry
and patient/study attributes a Segmentation references."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def ct_series(folder: Path, volume: np.ndarray, spacing=(2.5, 0.7, 0.8),
              origin=(-50.0, -40.0, 10.0), seed: int = 0) -> str:
    """Write ``volume`` (Z, H, W, in HU) as a CT series in ``folder``; returns its
    SeriesInstanceUID. Slice ``z`` lies at ``origin + z * spacing[0]`` along the axis."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    for z in np.random.default_rng(seed).permutation(len(volume)):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"IM{z:04d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = "P1", "Test^P", "", "O"
        ds.StudyID, ds.AccessionNumber, ds.StudyDate, ds.StudyTime = "1", "", "20261205", "1200"
        ds.ReferringPhysicianName = ""
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 1, int(z) + 1
        ds.Manufacturer = "synthetic"
        ds.Rows, ds.Columns = volume.shape[1:]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelSpacing = [spacing[1], spacing[2]]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [origin[0], origin[1], origin[2] + spacing[0] * int(z)]
        ds.SliceThickness = spacing[0]
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = np.clip(volume[z] + 1024, 0, 65535).astype(np.uint16).tobytes()
        ds.save_as(str(path), enforce_file_format=True)
    return series
