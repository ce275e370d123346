"""Export: labels at the image grid or any scale, the uncertainty map, and a JSON record.

No Qt and no napari here: the widget (``widgets.segment.export``) gathers the layers
into plain arrays and :class:`ObjectBox` lists, and tests call these functions
directly.

Labels at scale ``S`` (the paper's cross-resolution use). The implicit decoder
is queried again on the ``S``-times finer grid, but the labels layer stays the
truth about what the user wants, so for each object with a box:

- ``D1`` = its mask decoded at the image grid (what the widget wrote),
  ``DS`` = decoded at scale ``S``, ``L`` = the object's pixels in the labels;
- pixels the user painted on (``L`` and not ``D1``) are kept, and pixels the
  user erased (``D1``, now background) stay erased, both resampled nearest;
- everywhere else the fine mask ``DS`` gives the sub-pixel boundary.

An object nobody edited therefore comes out exactly as decoded at ``S``; an
accepted or brush-corrected object keeps every correction (at grid
resolution along the edited stretch). Ids without a box (painted by hand)
are resampled nearest. Where objects claim the same fine pixel, the owner in
the labels wins. At ``S = 1`` the labels are written as they are.

The JSON record beside each export holds what reproduces the masks: the
image, model and adapter (with SHA-256), CT window, scale, and per object its
id, box (x0, y0, x1, y1 in pixel-edge coordinates of the image grid) and
plane. :func:`reproduce` (and ``imedsam segment --from-export``) decodes the
recorded boxes again and writes them in the listed order onto background.
"""

from __future__ import annotations

import contextlib
import datetime
import json
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__, io, saving
from .inference.clicks import CLICK_RULES, DEFAULT_CLICK_RULE
from .inference.regions import output_grid, resample_nearest

FORMAT = "napari-imedsam export 1"
LABEL_SUFFIXES = (".tif", ".tiff", ".png", ".nii", ".nii.gz", ".dcm")
BOX_CONVENTION = ("x0, y0, x1, y1 in pixel-edge coordinates of the image grid (pixel i spans "
                  "[i, i + 1]); plane: index along the volume's first axis (null for 2D); "
                  "clicks: x, y in the same coordinates, in the order made")

#: decode(plane, boxes (N, 4), scale[, head[, clicks]]) -> (masks (N, h, w) bool,
#: uncertainty (h, w) or None); ``head``: the class that answers (models with several
#: classes); ``clicks``: one ``Clicks`` or None per box (a NaN box: clicks alone).
Decode = Callable[..., tuple[np.ndarray, np.ndarray | None]]


@dataclass(frozen=True)
class ObjectBox:
    """One object's prompt: its label id, its box and the slice it was drawn on."""

    object_id: int
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 (pixel edges)
    plane: int | None = None
    accepted: bool = False
    head: int | None = None  # the class (decoder head) that answered it, if chosen
    #: Corrective clicks, in order: ((x, y), ...) in pixel-edge coordinates and their
    #: labels (1 positive, 0 negative); an object of clicks alone has a NaN box.
    clicks: tuple[tuple[tuple[float, float], ...], tuple[int, ...]] | None = None

    def prompt_clicks(self) -> Any:
        """The clicks as ``inference.session.Clicks`` (None without clicks)."""
        if not self.clicks or not self.clicks[1]:
            return None
        from .inference.clicks import Clicks

        return Clicks.of(self.clicks[0], self.clicks[1])


@dataclass
class ExportedLabels:
    """Labels (and uncertainty) on the export grid, with what happened to each object."""

    labels: np.ndarray
    uncertainty: np.ndarray | None
    objects: list[dict[str, Any]] = field(default_factory=list)


def suggested_path(source: str | Path | None, layer_name: str,
                   folder: str | Path | None = None) -> Path:
    """Where Export proposes to write: beside the image's file, named after it
    (``scan.nii.gz`` -> ``scan_labels.tif``; a DICOM folder -> ``<folder>_labels.tif``
    beside it); for a layer without a file, the layer's name in ``folder`` (default:
    the current folder)."""
    if source:
        path = Path(source)
        stem = path.name
        for suffix in (".nii.gz", *LABEL_SUFFIXES, ".jpg", ".jpeg", ".dcm"):
            if stem.lower().endswith(suffix):
                stem = stem[: -len(suffix)]
                break
        return path.parent / f"{stem}_labels.tif"
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in layer_name).strip("._")
    return Path(folder or Path.cwd()) / f"{safe or 'image'}_labels.tif"


def session_decoder(session: Any, data: Any, window: Any = None,
                    lock: Any = None, decoder: str | None = None) -> Decode:
    """A :data:`Decode` over an inference session and the image (2D, RGB or a volume).

    ``lock`` (e.g. the widget's session lock) is held for each set_image +
    predict pair, since the session holds one current image. ``decoder``: the
    decoder that answers (None: the session's own choice).
    """
    from .inference.merge import box_windows, masks_box_by_box
    from .inference.session import SESSION_HEAD

    guard = lock if lock is not None else contextlib.nullcontext()

    def decode(plane: int | None, boxes: np.ndarray, scale: float,  # noqa: ANN202
               head: int | None = None, clicks: Any = None):
        image = np.asarray(data if plane is None else data[plane])
        with guard:
            session.set_image(image, window=window)
            # Box by box on their windows: many boxes at a large scale stay in memory.
            return masks_box_by_box(session, np.asarray(boxes, dtype=np.float64), scale=scale,
                                    decoder=decoder, clicks=clicks, head=head)

    def windows(plane: int | None, objects: Sequence[ObjectBox], scale: float
                ) -> Iterator[tuple[int, tuple[int, int, int, int], np.ndarray]]:
        """Each object's mask on its own window, in order (``merge.box_windows``)."""
        image = np.asarray(data if plane is None else data[plane])
        clicks = [o.prompt_clicks() for o in objects]
        with guard:
            session.set_image(image, window=window)
            for i, where, mask, _ in box_windows(
                    session, np.array([o.box for o in objects], np.float64), scale=scale,
                    decoder=decoder,
                    # No class recorded: the session's own, as decode() does.
                    heads=[SESSION_HEAD if o.head is None else o.head for o in objects],
                    clicks=clicks if any(c is not None for c in clicks) else None):
                yield i, where, mask

    decode.windows = windows  # type: ignore[attr-defined]
    return decode


def _record_box(entry: dict[str, Any]) -> tuple[float, ...]:
    box = entry.get("box")
    return (float("nan"),) * 4 if box is None else tuple(float(v) for v in box)


def _record_clicks(entry: dict[str, Any]) -> Any:
    """An export record's clicks as :attr:`ObjectBox.clicks` (None without clicks)."""
    clicks = entry.get("clicks")
    if not clicks:
        return None
    try:
        xy = tuple((float(c["x"]), float(c["y"])) for c in clicks)
        labels = tuple(1 if c["positive"] else 0 for c in clicks)
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"object {entry.get('id')}: its clicks are not a list of "
                         "{x, y, positive}: the record is damaged; export again") from None
    return xy, labels


def _planes(labels: np.ndarray) -> list[int | None]:
    return [None] if labels.ndim == 2 else list(range(labels.shape[0]))


def _compose(shape: tuple[int, int], masks: list[tuple[int, np.ndarray]],
             owner: np.ndarray | None) -> np.ndarray:
    """Write masks in order onto background; where several claim a pixel, ``owner``
    (the labels resampled to this grid) decides when it is one of them. The labels'
    type holds the largest id (ids of 2**31 and more would wrap in int32)."""
    out = np.zeros(shape, saving.dtype_for_ids(max((int(i) for i, _ in masks), default=0)))
    for object_id, mask in masks:
        out[mask & (out == 0)] = object_id
    if owner is not None:
        for object_id, mask in masks:
            out[mask & (owner == object_id)] = object_id
    return out


def labels_at_scale(labels: np.ndarray, objects: Sequence[ObjectBox], scale: float,
                    decode: Decode | None, *,
                    on_plane: Callable[[int, int], None] | None = None,
                    should_stop: Callable[[], bool] | None = None) -> ExportedLabels:
    """The labels on the image grid times ``scale`` (in-plane; slices stay slices).

    ``decode`` may be None at ``scale == 1``, where the labels are returned as
    they are. ``on_plane(done, total)`` reports progress; ``should_stop()``
    returning True raises InterruptedError between planes.
    """
    steps = iter_labels_at_scale(labels, objects, scale, decode)
    while True:
        try:
            done, total = next(steps)
        except StopIteration as finished:
            return finished.value
        if on_plane is not None:
            on_plane(done, total)
        if should_stop is not None and should_stop():
            steps.close()
            raise InterruptedError("export cancelled")


def iter_labels_at_scale(labels: np.ndarray, objects: Sequence[ObjectBox], scale: float,
                         decode: Decode | None) -> Generator[tuple[int, int], None, ExportedLabels]:
    """:func:`labels_at_scale` as a generator that yields ``(planes done, planes)``
    (a thread worker forwards these as progress and can stop between them)."""
    labels = np.asarray(labels)
    if scale == 1.0:
        info = [{"id": o.object_id, "plane": o.plane, "source": "labels"} for o in objects]
        return ExportedLabels(labels.astype(np.int32, copy=True), None, info)
    if decode is None:
        raise ValueError("labels at another scale need the model (a decode function)")
    planes = _planes(labels)
    fine = output_grid(labels.shape[-2:], scale)
    out = np.zeros((*labels.shape[:-2], *fine), np.int32)
    unc_out: np.ndarray | None = None
    info: list[dict[str, Any]] = []
    for done, plane in enumerate(planes, 1):
        grid = labels if plane is None else labels[plane]
        here = [o for o in objects if o.plane == plane and o.object_id > 0]
        present = set(np.unique(grid).tolist()) - {0}
        if here or present:
            owner = resample_nearest(grid, fine)
            masks: list[tuple[int, np.ndarray]] = []
            if here:
                coarse, sharp, unc = _decode_by_class(decode, plane, here, scale)
                if unc is not None:
                    if unc_out is None:
                        unc_out = np.zeros(out.shape, np.float32)
                    (unc_out if plane is None else unc_out[plane])[...] = unc
                for obj, d1, ds in zip(here, coarse, sharp):
                    mine = grid == obj.object_id
                    added, removed = mine & ~d1, d1 & ~mine & (grid == 0)
                    mask = (ds & ~resample_nearest(removed, fine)) | resample_nearest(added, fine)
                    masks.append((obj.object_id, mask))
                    info.append({"id": obj.object_id, "plane": plane,
                                 "source": "decoded+edits" if added.any() or removed.any()
                                 else "decoded",
                                 "painted_pixels": int(added.sum()),
                                 "erased_pixels": int(removed.sum())})
            for object_id in sorted(present - {o.object_id for o in here}):
                masks.append((object_id, owner == object_id))
                info.append({"id": int(object_id), "plane": plane, "source": "labels"})
            target = out if plane is None else out[plane]
            target[...] = _compose(fine, masks, owner)
        yield done, len(planes)
    return ExportedLabels(out, unc_out, info)


def _decode_by_class(decode: Decode, plane: int | None, objects: list[ObjectBox], scale: float,
                     *, at_one: bool = True
                     ) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray | None]:
    """Masks of ``objects`` at scale 1 (unless not ``at_one``) and at ``scale``, in their
    order, each answered by its own class, and the uncertainty's maximum."""
    coarse: list[Any] = [None] * len(objects)
    sharp: list[Any] = [None] * len(objects)
    unc = None
    for head in sorted({o.head for o in objects}, key=lambda h: -1 if h is None else h):
        index = [i for i, o in enumerate(objects) if o.head == head]
        boxes = np.array([objects[i].box for i in index], dtype=np.float64)
        clicks = [objects[i].prompt_clicks() for i in index]
        extra: dict[str, Any] = {} if head is None else {"head": head}
        if any(c is not None for c in clicks):
            extra["clicks"] = clicks
        masks1 = decode(plane, boxes, 1.0, **extra)[0] if at_one else [None] * len(index)
        masks, part = decode(plane, boxes, scale, **extra)
        for j, i in enumerate(index):
            coarse[i], sharp[i] = masks1[j], masks[j]
        if part is not None:
            unc = part if unc is None else np.maximum(unc, part)
    return coarse, sharp, unc


def record_id(entry: Any) -> int:
    """An export record's object id: a positive whole number (JSON ``3``, not ``3.5``,
    ``"3"``, ``true`` or ``-1``), which some unsigned 64-bit label type holds."""
    value = entry.get("id") if isinstance(entry, dict) else None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"object id {value!r} is not a positive whole number: the record is "
                         "damaged; export again from napari")
    if value > np.iinfo(np.uint64).max:
        raise ValueError(f"object id {value} does not fit in 64 bits: the record is damaged; "
                         "export again from napari")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and \
        bool(np.isfinite(value))


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def read_record(path: str | Path) -> dict[str, Any]:
    """An export's JSON record, checked for everything re-making its masks reads, so a
    damaged or foreign record is one line naming it, before any model loads: its
    keys, the image's shape, the scale, and per object a positive whole id, a box of
    four numbers (or none, with clicks), its clicks, its class and a plane that the
    image has (a plane on a 2D image was told as a box outside a "3 x 1348 image")."""
    from .io import check_regular_file

    path = Path(path)
    check_regular_file(path, "JSON file")  # a FIFO would block the read forever
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not a JSON file ({exc})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError(f"{path} is not a napari-imedsam export record")
    missing = [k for k in ("image", "model", "scale", "objects") if k not in record]
    for part, key in (("image", "shape"), ("model", "name")):
        if not missing and not (isinstance(record[part], dict) and key in record[part]):
            missing = [f"{part}.{key}"]
    if not missing and not isinstance(record["objects"], list):
        missing = ["objects (a list)"]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}: it is damaged or from another "
                         "tool; export again from napari")

    def damaged(what: str) -> ValueError:
        return ValueError(f"{path}: {what}: the record is damaged; export again from napari")

    shape = record["image"]["shape"]
    if not (isinstance(shape, list) and len(shape) in (2, 3)
            and all(_is_count(v) and v > 0 for v in shape)):
        raise damaged(f"its image shape {shape!r} is not 2 or 3 positive whole numbers "
                      "(rows, columns; or slices, rows, columns)")
    scale = record["scale"]
    if not (_is_number(scale) and 0.25 <= scale <= 8):
        raise damaged(f"its scale {scale!r} is not a number from 0.25 to 8")
    if record.get("click_rule", "replace") not in CLICK_RULES:
        raise damaged(f"its click rule {record['click_rule']!r} is not one of "
                      f"{', '.join(CLICK_RULES)}")
    planes = shape[0] if len(shape) == 3 else None
    for entry in record["objects"]:
        try:
            object_id = record_id(entry)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
        box = entry.get("box")
        if box is not None and not (isinstance(box, list) and len(box) == 4
                                    and all(_is_number(v) for v in box)):
            raise damaged(f"object {object_id}'s box {box!r} is not four numbers "
                          "(x0, y0, x1, y1)")
        try:
            _record_clicks(entry)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
        plane = entry.get("plane")
        if planes is None and plane is not None:
            raise damaged(f"object {object_id} lies on plane {plane!r}, but the record's "
                          f"image is 2D ({shape[0]} x {shape[1]})")
        if planes is not None and not (_is_count(plane) and plane < planes):
            raise damaged(f"object {object_id} lies on plane {plane!r}, not one of the "
                          f"volume's 0..{planes - 1}")
        chosen = entry.get("class")
        head = chosen.get("head") if isinstance(chosen, dict) else None
        if not (chosen is None or isinstance(chosen, dict)) or not (head is None
                                                                     or _is_count(head)):
            raise damaged(f"object {object_id}'s class {chosen!r} is not a class of the model")
    return record


def beside_record(record_path: Path, value: Any) -> Path | None:
    """A path written in an export record: a relative one is relative to the record's
    folder (where the export wrote it), not to the current folder."""
    if not value:
        return None
    path = Path(str(value)).expanduser()
    return path if path.is_absolute() else record_path.parent / path


def check_image_hash(record_path: Path, record: dict[str, Any], image_path: Path) -> None:
    """The image must be the one exported (SHA-256), not another of the same shape.
    A record without the hash (an export before it was recorded) is checked by shape
    only, and a note on stderr says so."""
    import sys

    expected = record["image"].get("sha256")
    if not expected:
        print(f"note: {record_path} records no SHA-256 of its image (an older export): "
              f"{image_path} is checked by its shape only", file=sys.stderr)
        return
    if source_sha256(image_path) != expected:
        raise ValueError(f"{image_path} is not the image {record_path} was exported from "
                         "(its SHA-256 differs): give the exported image as IMAGE")


def check_model_hashes(record_path: Path, spec: dict[str, Any], name: str,
                       adapter: Path | None) -> None:
    """The weights named by the record must be the ones it recorded (SHA-256): a
    registry name's hash is known, files are hashed (the same as the export did)."""
    now = model_info(name, None if adapter is None else str(adapter), "cpu")
    for key, what in (("model_sha256", f"the model {name}"),
                      ("adapter_sha256", f"the adapter {adapter or '(the default)'}")):
        if spec.get(key) and now.get(key) and spec[key] != now[key]:
            raise ValueError(f"{what} is not the one {record_path} was exported with (its "
                             "SHA-256 differs): use the export's weights to make its masks "
                             "again")


def reproduce(record: dict[str, Any], decode: Decode) -> np.ndarray:
    """Decode the recorded boxes again: labels on the record's grid and scale, in the
    smallest unsigned type that holds the record's largest id. Objects are written
    in the record's order onto background (the first one listed keeps a shared pixel).

    A decode from :func:`session_decoder` folds in each object's window as it comes:
    memory is the labels and one window, whatever the number of objects and the
    scale (a mask of the whole grid per object held 3.3 GB for 10 boxes at scale 4,
    and 2000 objects ran for more than 900 s; issue 23)."""
    shape = tuple(record["image"]["shape"])
    scale = float(record["scale"])
    fine = output_grid(shape[-2:], scale)
    ids = [record_id(obj) for obj in record["objects"]]
    out = np.zeros((*shape[:-2], *fine), saving.dtype_for_ids(max(ids, default=0)))
    by_plane: dict[int | None, list[dict[str, Any]]] = {}
    for obj in record["objects"]:
        if obj.get("box") is not None or obj.get("clicks"):
            by_plane.setdefault(obj.get("plane"), []).append(obj)
    windows = getattr(decode, "windows", None)
    for plane, objs in by_plane.items():
        # Each object answered by the class recorded with it (models with several classes).
        boxes = [ObjectBox(record_id(o), _record_box(o), plane,
                           head=(o.get("class") or {}).get("head"), clicks=_record_clicks(o))
                 for o in objs]
        target = out if plane is None else out[plane]
        if windows is None:
            _, masks, _ = _decode_by_class(decode, plane, boxes, scale, at_one=False)
            target[...] = _compose(fine, [(b.object_id, m) for b, m in zip(boxes, masks)],
                                   None)
            continue
        for i, (r0, c0, r1, c1), mask in windows(plane, boxes, scale):
            part = target[r0:r1, c0:c1]
            part[mask & (part == 0)] = boxes[i].object_id
    return out


# -- files -------------------------------------------------------------------------
@dataclass(frozen=True)
class ExportTarget:
    """The files one export writes: labels, optional uncertainty, and the JSON record."""

    labels: Path
    uncertainty: Path | None
    record: Path

    def paths(self) -> list[Path]:
        return [p for p in (self.labels, self.uncertainty, self.record) if p is not None]


def _split_name(path: Path) -> tuple[str, str]:
    name = path.name
    for suffix in LABEL_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)], name[-len(suffix):]
    raise ValueError(f"{name}: export labels as {', '.join(LABEL_SUFFIXES)}")


def targets_for(path: str | Path, with_uncertainty: bool) -> ExportTarget:
    """``NAME.EXT`` -> labels ``NAME.EXT``, ``NAME_uncertainty.tif``, ``NAME.json``."""
    path = Path(path)
    stem, _ = _split_name(path)
    return ExportTarget(path, path.with_name(f"{stem}_uncertainty.tif") if with_uncertainty
                        else None, path.with_name(f"{stem}.json"))


def free_targets(path: str | Path, with_uncertainty: bool) -> ExportTarget:
    """:func:`targets_for` with ``NAME-2``, ``NAME-3``... until none of the files exist."""
    _split_name(Path(path))  # a name export can write, else the one-line refusal
    targets = (targets_for(candidate, with_uncertainty) for candidate in saving.numbered(path))
    return next(t for t in targets if not any(p.exists() for p in t.paths()))


@dataclass
class Geometry:
    """Physical grid of the image the labels belong to."""

    shape: tuple[int, ...]  # spatial shape of the image grid
    spacing: tuple[float, ...]  # per spatial axis (mm, or 1.0 per pixel)
    unit: str = "pixel"  # "mm" or "pixel"
    nifti_affine: np.ndarray | None = None  # when the image came from a NIfTI file
    #: A DICOM series' files in slice order, when the image came from one (DICOM SEG).
    dicom_files: tuple[str, ...] | None = None
    #: A multi-frame DICOM image's frame numbers in slice order (its one file above).
    dicom_frames: tuple[int, ...] | None = None


@dataclass(frozen=True)
class SegOptions:
    """How a DICOM SEG export describes its segments."""

    kind: str = "organ"  # a key of ``dicom_seg.SEGMENT_TYPES``
    labelmap: bool = False  # LABELMAP instead of BINARY


def segment_names(record: dict[str, Any]) -> dict[int, str]:
    """Label value -> segment label from an export record: a class's name where the
    value is its class's (semantic labels), else ``object N`` (left to ``dicom_seg``)."""
    names: dict[int, str] = {}
    for entry in record.get("objects", []):
        chosen = entry.get("class") or {}
        if chosen.get("value") is not None and int(chosen["value"]) == int(entry["id"]):
            names[int(entry["id"])] = str(chosen.get("name") or f"class {entry['id']}")
    return names


def write_export(target: ExportTarget, exported: ExportedLabels, record: dict[str, Any],
                 geometry: Geometry, scale: float, *, overwrite: bool = False,
                 seg: SegOptions = SegOptions()) -> list[Path]:
    """Write the labels, the uncertainty (float32 TIFF) and the JSON record as one
    set: all of them are put in place, or none (a failure part-way leaves no labels
    without their record). Nothing is replaced unless ``overwrite``. ``.dcm``: a
    DICOM SEG of the series the image came from (``seg`` says how)."""
    labels = exported.labels
    name = target.labels.name.lower()
    if name.endswith(".png") and labels.ndim != 2:
        raise ValueError("PNG holds 2D images: export this volume as TIFF or NIfTI")
    built = None
    if name.endswith(".dcm"):  # checked and built before any file is written
        if geometry.dicom_files is None:
            raise ValueError("DICOM SEG needs an image opened from a DICOM series (it "
                             "references the series' files): export as TIFF or NIfTI")
        if scale != 1:
            raise ValueError("a DICOM SEG lies on its series' own grid: export it at scale 1")
        from . import dicom_seg

        built = dicom_seg.build_seg(
            labels, geometry.dicom_files,
            dicom_seg.segments_for(labels, segment_names(record), seg.kind),
            labelmap=seg.labelmap, model=record.get("model"),
            source_frames=geometry.dicom_frames)
    spacing = tuple(geometry.spacing)
    fine = (*spacing[:-2], spacing[-2] / scale, spacing[-1] / scale)
    with_uncertainty = target.uncertainty is not None and exported.uncertainty is not None
    paths = [target.labels, *([target.uncertainty] if with_uncertainty else []), target.record]
    from .inference.merge import UNCERTAINTY_QUANTITY

    files = {"labels": target.labels.name,
             "uncertainty": target.uncertainty.name if with_uncertainty else None,
             "uncertainty_quantity": UNCERTAINTY_QUANTITY if with_uncertainty else None}
    text = json.dumps({**record, "files": files}, indent=2) + "\n"
    with saving.staged_files(paths, overwrite=overwrite) as staged:
        if name.endswith((".tif", ".tiff")):
            saving.save_tiff(staged[0], labels.astype(saving.label_dtype(labels), copy=False),
                             pixel_size=fine[-2:], unit=geometry.unit, spacing=fine)
        elif name.endswith(".png"):
            saving.save_png(staged[0], labels)
        elif built is not None:
            built.save_as(str(staged[0]))
        else:
            io.save_nifti(staged[0], labels, spacing=spacing, source_affine=geometry.nifti_affine,
                          scale=scale, grid_shape=geometry.shape)
        if with_uncertainty:
            saving.save_tiff(staged[1], exported.uncertainty.astype(np.float32, copy=False),
                             pixel_size=fine[-2:], unit=geometry.unit, spacing=fine)
        staged[-1].write_text(text, encoding="utf-8")
    return paths


def model_info(name: str, adapter: str | None, device: str,
               decoder: str = "auto") -> dict[str, Any]:
    """Which weights and decoder made the masks, with hashes (files are hashed, not loaded)."""
    from .model.weights import REGISTRY, sha256_file

    info: dict[str, Any] = {"name": name, "adapter": adapter, "device": device,
                            "decoder": decoder, "model_sha256": None, "adapter_sha256": None}
    from .model.loading import DEFAULT_ADAPTER, DEFAULT_MODEL

    model_file = Path(name).expanduser()
    if name in REGISTRY:
        info["model_sha256"] = REGISTRY[name].sha256
        if name == DEFAULT_MODEL and not adapter and DEFAULT_ADAPTER.is_file():
            # The default model is the base weights plus the adapter it ships with.
            info["adapter_sha256"] = sha256_file(DEFAULT_ADAPTER)
    elif model_file.is_file():
        info["model_sha256"] = sha256_file(model_file)
    if adapter and Path(adapter).expanduser().is_file():
        info["adapter_sha256"] = sha256_file(Path(adapter).expanduser())
    return info


def source_sha256(path: str | Path | None) -> str | None:
    """The SHA-256 of the file an image layer was read from, so that a record can tell
    its image from another of the same shape; None when there is no such file (a
    layer made in napari, a DICOM folder, a file since moved)."""
    from .model.weights import sha256_file

    if not path or not Path(path).is_file():
        return None
    return sha256_file(path)


def build_record(*, image: dict[str, Any], model: dict[str, Any], window: str | None,
                 scale: float, objects: Sequence[ObjectBox], exported: ExportedLabels,
                 intensity: dict[str, Any] | None = None,
                 classes: Sequence[Any] = ()) -> dict[str, Any]:
    """The JSON record: enough to know how the masks were made and to make them again."""
    from .inference.intensity import parse_window

    how = {(d["id"], d["plane"]): d for d in exported.objects}
    listed = []
    for o in sorted(objects, key=lambda o: (o.object_id, -1 if o.plane is None else o.plane)):
        has_box = bool(np.isfinite(np.asarray(o.box, dtype=np.float64)).all())
        entry = {"id": o.object_id, "plane": o.plane,
                 "box": [float(v) for v in o.box] if has_box else None,
                 "accepted": o.accepted}
        if o.clicks:
            entry["clicks"] = [{"x": float(x), "y": float(y), "positive": bool(lab)}
                               for (x, y), lab in zip(*o.clicks)]
        if o.head is not None and o.head < len(classes):
            entry["class"] = {"head": o.head, **classes[o.head].to_dict()}
        extra = how.get((o.object_id, o.plane), {})
        entry.update({k: v for k, v in extra.items() if k not in ("id", "plane")})
        listed.append(entry)
    # Ids painted by hand (no box): the export holds them, the boxes cannot remake them.
    unboxed = set(np.unique(exported.labels).tolist()) - {0} - {o.object_id for o in objects}
    parsed = parse_window(window)
    if image.get("path") and "sha256" not in image:
        image = {**image, "sha256": source_sha256(image["path"])}
    return {
        "format": FORMAT,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "napari_imedsam_version": __version__,
        "image": image,
        "model": model,
        "window": window,
        "window_width_level": list(parsed) if parsed is not None else None,
        "intensity": intensity or {},
        "scale": float(scale),
        "shape": list(exported.labels.shape),
        "box_convention": BOX_CONVENTION,
        # How the clicks joined each mask; a record without it was made by replacing.
        "click_rule": DEFAULT_CLICK_RULE,
        "objects": listed,
        "ids_without_box": sorted(int(i) for i in unboxed),
    }


# -- worker body (run in a napari thread worker; never raises) --------------------

def export_body(holder: Any, spec: Any, data: Any, window: str | None, labels: np.ndarray,
                objects: list[ObjectBox], scale: float,
                ) -> Generator[tuple[int, int], None, ExportedLabels | str]:
    """Worker body: decodes at ``scale``; returns the labels, or an error message."""
    from .session_holder import SessionError

    try:
        session = holder.load(spec)
    except SessionError as exc:
        return str(exc)
    try:
        decode = session_decoder(session, data, window, holder.lock, decoder=spec.decoder)
        return (yield from iter_labels_at_scale(labels, objects, scale, decode))
    except Exception as exc:  # noqa: BLE001
        return f"Export failed: {exc}"
