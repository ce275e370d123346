"""DICOM Segmentation (SEG) objects: labels out to the hospital's systems, and back in.

A SEG references the instances of the series it segments and holds one segment per
object (or per class): 3D Slicer, OHIF and PACS read it. Written and read with
highdicom (the ``medical`` extra); nothing here needs Qt or the model.

- :func:`write_seg`: label volume on a DICOM series' grid -> one SEG file, BINARY by
  default or LABELMAP, only the frames with labels, with the algorithm that made them
  (napari-imedsam, its version, the model's and the adapter's SHA-256; SEMIAUTOMATIC).
- :func:`read_seg`: a SEG -> the label volume on its source series' grid, each
  segment's pixels given the label value it was written from.

The segment's category and type are SNOMED CT codes from :data:`SEGMENT_TYPES`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .io import SEG_SOP_CLASSES

#: What a segment is, as the widget and the CLI offer it: name -> (category, type),
#: each a SNOMED CT (code, meaning) pair.
SEGMENT_TYPES: dict[str, tuple[tuple[str, str], tuple[str, str]]] = {
    "organ": (("91723000", "Anatomical Structure"), ("91772007", "Organ")),
    "tissue": (("85756007", "Tissue"), ("85756007", "Tissue")),
    "liver": (("91723000", "Anatomical Structure"), ("10200004", "Liver")),
    "spleen": (("91723000", "Anatomical Structure"), ("78961009", "Spleen")),
    "kidney": (("91723000", "Anatomical Structure"), ("64033007", "Kidney")),
    "blood vessel": (("91723000", "Anatomical Structure"), ("59820001", "Blood Vessel")),
    "lesion": (("49755003", "Morphologically Abnormal Structure"), ("52988006", "Lesion")),
    "mass": (("49755003", "Morphologically Abnormal Structure"), ("4147007", "Mass")),
    "neoplasm": (("49755003", "Morphologically Abnormal Structure"), ("108369006", "Neoplasm")),
}
DEFAULT_SEGMENT_TYPE = "organ"

#: Largest BINARY pixel array (one byte per voxel and segment) built for a SEG; more
#: objects than that go as a LABELMAP (one frame per slice), which stays small.
MAX_BINARY_BYTES = 2 << 30
#: How a segment remembers the label value it was written from (its tracking ID).
_TRACKING = "napari-imedsam label {value}"
_TRACKING_RE = re.compile(r"^napari-imedsam label (\d+)$")


@dataclass(frozen=True)
class Segment:
    """One segment: the label value whose pixels it holds, its label and its type."""

    value: int
    label: str
    kind: str = DEFAULT_SEGMENT_TYPE


def _hd() -> Any:
    try:
        import highdicom
    except ImportError:
        raise ValueError("DICOM SEG needs highdicom: pip install 'napari-imedsam[medical]'"
                         ) from None
    return highdicom


def _code(pair: tuple[str, str]) -> Any:
    from pydicom.sr.coding import Code

    return Code(pair[0], "SCT", pair[1])


def is_seg(path: str | Path) -> bool:
    """Whether ``path`` is a DICOM file of the Segmentation SOP class (header only)."""
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["SOPClassUID"])
    except Exception:  # noqa: BLE001 - not DICOM, or damaged: not a SEG
        return False
    return str(getattr(ds, "SOPClassUID", "")) in SEG_SOP_CLASSES


def source_headers(files: Sequence[str | Path]) -> list[Any]:
    """The series' instances' headers (no pixels), in the order given (the volume's)."""
    import pydicom

    headers = []
    for file in files:
        try:
            headers.append(pydicom.dcmread(str(file), stop_before_pixels=True))
        except Exception as exc:  # noqa: BLE001
            raise ValueError(f"{Path(file).name}: the series' file cannot be read again "
                             f"({' '.join(str(exc).split())[:120]}): a DICOM SEG references "
                             "the series' files; keep them where they were opened") from exc
    return headers


def segments_for(labels: np.ndarray, names: dict[int, str] | None = None,
                 kind: str = DEFAULT_SEGMENT_TYPE) -> list[Segment]:
    """One segment per label value present (objects, or classes with ``names``)."""
    values = [int(v) for v in np.unique(labels) if v > 0]
    return [Segment(v, (names or {}).get(v) or f"object {v}", kind) for v in values]


def write_seg(path: str | Path, labels: np.ndarray, source_files: Sequence[str | Path],
              segments: Sequence[Segment], *, labelmap: bool = False,
              model: dict[str, Any] | None = None, overwrite: bool = False,
              source_frames: Sequence[int] | None = None) -> Path:
    """Write ``labels`` as a DICOM SEG at ``path``, atomically (see :func:`build_seg`)."""
    from .saving import atomic_save

    seg = build_seg(labels, source_files, segments, labelmap=labelmap, model=model,
                    source_frames=source_frames)
    return atomic_save(path, lambda tmp: seg.save_as(str(tmp)), overwrite=overwrite)


def build_seg(labels: np.ndarray, source_files: Sequence[str | Path],
              segments: Sequence[Segment], *, labelmap: bool = False,
              model: dict[str, Any] | None = None,
              source_frames: Sequence[int] | None = None) -> Any:
    """A DICOM SEG (a highdicom ``Segmentation``) of ``labels`` ((Z, H, W) or (H, W),
    on the series' grid, slices in the order of ``source_files``, or, for one
    multi-frame image, in the order of its ``source_frames`` (1-based)).

    ``segments``: the label values to write (one segment each); ``model``: the
    export record's model entry (name, model_sha256, adapter_sha256), for the
    algorithm identification.
    """
    hd = _hd()
    from pydicom.sr.codedict import codes

    from . import __version__

    volume = np.asarray(labels)
    if volume.ndim == 2:
        volume = volume[None]
    if volume.ndim != 3:
        raise ValueError(f"a DICOM SEG holds slices; got labels of shape {labels.shape}")
    if source_frames is not None:
        if len(source_frames) != volume.shape[0] or len(source_files) != 1:
            raise ValueError(f"the labels have {volume.shape[0]} slice(s) but the image "
                             f"{len(source_frames)} frame(s): export on its own grid (scale 1)")
    elif len(source_files) != volume.shape[0]:
        raise ValueError(f"the labels have {volume.shape[0]} slice(s) but the series "
                         f"{len(source_files)} file(s): export on the series' own grid "
                         "(scale 1)")
    if not segments:
        raise ValueError("nothing to write: no object has pixels")
    unknown = [s.kind for s in segments if s.kind not in SEGMENT_TYPES]
    if unknown:
        raise ValueError(f"unknown segment type {unknown[0]!r}: use one of "
                         f"{', '.join(SEGMENT_TYPES)}")
    headers = source_headers(source_files)
    rows, cols = int(headers[0].Rows), int(headers[0].Columns)
    if volume.shape[1:] != (rows, cols):
        raise ValueError(f"the labels are {volume.shape[2]} x {volume.shape[1]} but the "
                         f"series' slices {cols} x {rows}: export at scale 1")
    model = model or {}
    parameters = {k: str(model[k]) for k in ("name", "model_sha256", "adapter_sha256")
                  if model.get(k)}
    algorithm = hd.AlgorithmIdentificationSequence(
        name="napari-imedsam", family=codes.cid7162.ArtificialIntelligence,
        version=__version__, parameters=parameters or None)
    descriptions = []
    for number, segment in enumerate(segments, 1):
        category, kind = SEGMENT_TYPES[segment.kind]
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=segment.label[:64],
            segmented_property_category=_code(category),
            segmented_property_type=_code(kind),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
            algorithm_identification=algorithm,
            tracking_id=_TRACKING.format(value=segment.value), tracking_uid=hd.UID()))
    if source_frames is not None:  # back to the image's own frame order
        frames = np.zeros((int(headers[0].NumberOfFrames), rows, cols), volume.dtype)
        frames[np.asarray(source_frames, int) - 1] = volume
        volume = frames
    if not labelmap and volume.size * len(segments) > MAX_BINARY_BYTES:
        raise ValueError(f"{len(segments)} segments on {volume.shape[0]} slice(s) of "
                         f"{cols} x {rows} need {volume.size * len(segments) / 2**30:.1f} GiB "
                         "as BINARY frames: export as a labelmap (one frame per slice)")
    if labelmap and len(segments) > 65535:
        raise ValueError(f"a labelmap SEG holds at most 65535 segments, not {len(segments)}")
    if labelmap:
        pixels = np.zeros(volume.shape, np.uint16 if len(segments) > 255 else np.uint8)
        for number, segment in enumerate(segments, 1):
            pixels[volume == segment.value] = number
    else:
        pixels = np.stack([volume == s.value for s in segments], axis=-1)
    return hd.seg.Segmentation(
        source_images=headers, pixel_array=pixels,
        segmentation_type="LABELMAP" if labelmap else "BINARY",
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=9000,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="napari-imedsam",
        manufacturer_model_name=str(model.get("name") or "I-MedSAM")[:64],
        software_versions=__version__, device_serial_number="none",
        series_description="napari-imedsam segmentation", omit_empty_frames=True)


@dataclass
class ReadSeg:
    """A SEG read onto its series' grid."""

    labels: np.ndarray  # (Z, H, W) int32, the label values written
    names: dict[int, str]  # label value -> segment label
    series_uid: str  # the series it segments


def referenced_series(path: str | Path) -> str:
    """The SeriesInstanceUID a SEG segments (header only)."""
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    except Exception as exc:  # noqa: BLE001 - pydicom's words name no file
        raise ValueError(f"{Path(path).name} cannot be read as DICOM "
                         f"({' '.join(str(exc).split())[:120]}): copy it again") from exc
    try:
        return str(ds.ReferencedSeriesSequence[0].SeriesInstanceUID)
    except (AttributeError, IndexError):
        raise ValueError(f"{Path(path).name} is a DICOM SEG that names no source series: "
                         "it cannot be placed on an image") from None


def read_seg(path: str | Path, source_files: Sequence[str | Path],
             series_uid: str | None = None,
             source_frames: Sequence[int] | None = None) -> ReadSeg:
    """The SEG at ``path`` as labels on the grid of the series ``source_files`` (in the
    volume's slice order; for one multi-frame image, its ``source_frames`` in that
    order). Refused in one line when it segments another series."""
    hd = _hd()
    name = Path(path).name
    wanted = referenced_series(path)
    headers = source_headers(source_files)
    have = series_uid or str(getattr(headers[0], "SeriesInstanceUID", ""))
    if wanted != have:
        raise ValueError(f"{name} segments series {wanted}, not the open series {have}: "
                         "open its own series first (or put the SEG beside it)")
    try:
        seg = hd.seg.segread(str(path))
        # Combined: one (Z, H, W) array of segment numbers, whatever the number of
        # segments (per-segment arrays grow with it; and highdicom 0.28.2 returned a
        # LABELMAP's numbers above 255 modulo 256 that way). Segments never overlap in
        # what this package writes; a SEG whose segments do is refused by highdicom.
        options = {"combine_segments": True, "relabel": False, "dtype": np.int32,
                   "assert_missing_frames_are_empty": True}
        if source_frames is not None:
            numbers = seg.get_pixels_by_source_frame(
                source_sop_instance_uid=str(headers[0].SOPInstanceUID),
                source_frame_numbers=[int(f) for f in source_frames], **options)
        else:
            numbers = seg.get_pixels_by_source_instance(
                source_sop_instance_uids=[str(h.SOPInstanceUID) for h in headers], **options)
    except Exception as exc:  # noqa: BLE001 - highdicom's words name no file
        raise ValueError(f"{name}: the DICOM SEG is damaged or cannot be placed on its series "
                         f"({' '.join(str(exc).split())[:160]}); copy or export it again"
                         ) from exc
    segment_numbers = [int(n) for n in seg.segment_numbers]
    lookup = np.zeros(max(segment_numbers, default=0) + 1, np.int32)
    names: dict[int, str] = {}
    for number in segment_numbers:
        description = seg.get_segment_description(number)
        match = _TRACKING_RE.match(str(getattr(description, "tracking_id", "") or ""))
        value = int(match.group(1)) if match else number
        lookup[number] = value
        names[value] = str(description.segment_label)
    numbers = np.asarray(numbers)
    labels = lookup[np.clip(numbers, 0, len(lookup) - 1)].astype(np.int32)
    return ReadSeg(labels, names, wanted)
