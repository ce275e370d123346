"""``imedsam segment``: boxes -> label images, one image, a batch, or an export again."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..model.config import DEVICE_CHOICES as DEVICES
from ..saving import check_outputs


def _box(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"a box is X0,Y0,X1,Y1 (four numbers), got {text!r}")
    return values


def _key(text: str) -> tuple[int, list[float]]:
    plane, _, box = text.partition(":")
    try:
        z = int(plane)
    except ValueError:
        z = -1
    if z < 0 or not box:
        raise argparse.ArgumentTypeError(f"a key slice is Z:X0,Y0,X1,Y1 (a slice index, a "
                                         f"colon and its box), got {text!r}")
    return z, _box(box)


def _point(text: str) -> tuple[float, float, int]:
    parts = text.split(",")
    sign = parts.pop() if len(parts) == 3 else "+"
    try:
        x, y = (float(v) for v in parts)
    except ValueError:
        x = y = float("nan")
    if len(parts) != 2 or sign not in ("+", "-") or x != x or y != y:
        raise argparse.ArgumentTypeError(f"a point is X,Y or X,Y,+ or X,Y,- (positive by "
                                         f"default), got {text!r}")
    return x, y, int(sign == "+")


class _Prompt(argparse.Action):
    """Keeps --box and --point in the order given: a point belongs to the box before it."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option: Any = None) -> None:
        kind = "box" if self.dest == "box" else "point"
        getattr(namespace, self.dest).append(values)
        prompts = getattr(namespace, "prompts", None) or []
        prompts.append((kind, values))
        namespace.prompts = prompts


def objects_from_prompts(prompts: list[tuple[str, Any]]) -> tuple[list[list[float]], list[Any]]:
    """Boxes (N, 4) and one ``Clicks`` or None each, from --box and --point in order:
    points after a box are its clicks; points before any box make one object of
    clicks alone (its box row is NaN)."""
    from ..inference.clicks import Clicks

    boxes: list[list[float]] = []
    points: list[list[tuple[float, float, int]]] = []
    for kind, value in prompts:
        if kind == "box":
            boxes.append(list(value))
            points.append([])
        else:
            if not boxes:
                boxes.append([float("nan")] * 4)
                points.append([])
            points[-1].append(value)
    clicks = [Clicks.of([(x, y) for x, y, _ in p], [s for _, _, s in p]) if p else None
              for p in points]
    return boxes, clicks


def _slice_of(data: Any, index: int | None, source: str, first: int = 0) -> Any:
    """A 2D image from what was read: RGB(A) and 2D pass; volumes need --slice.
    ``first``: the volume's slice that ``data[0]`` is (a slice read alone)."""
    if data.ndim == 2 or (data.ndim == 3 and data.shape[-1] in (3, 4)):
        if index is not None:
            raise ValueError(f"--slice applies to volumes; {source} is one 2D image: "
                             "leave --slice out")
        return data
    if data.ndim == 3:
        if index is None:
            raise ValueError(f"{source} is a volume of {data.shape[0]} slices: choose one "
                             "with --slice Z")
        if not 0 <= index - first < data.shape[0]:
            raise ValueError(f"--slice {index} is outside 0..{data.shape[0] - 1}")
        return data[index - first]
    raise ValueError(f"{source} has shape {data.shape}: expected a 2D image or a 3D volume")


def _segment_one(session: Any, image_path: Path, boxes: list[list[float]], out: Path,
                 args: argparse.Namespace, loaded: Any = None,
                 clicks: list[Any] | None = None) -> dict[str, Any]:
    """``loaded``: the image already read (and checked) by the caller, if it was."""
    from ..inference.merge import BandMerge
    from ..io import read_any

    check_outputs([out, args.uncertainty, getattr(args, "error_map", None), args.polygons],
                  [image_path], args.overwrite)
    loaded = loaded if loaded is not None else read_any(image_path)
    session.set_image(_slice_of(loaded.data, args.slice, str(image_path), loaded.first_plane),
                      window=args.window)
    spacing = loaded.spacing[-2:] if loaded.spacing else None
    # The boxes need only the embedding: let the pixels go (the caller's reference
    # too) before the decoding, which is where memory peaks on large images.
    loaded.data = None
    chosen = None
    if session.head is not None and session.mode == "imedsam":
        from ..model.classes import classes_of

        chosen = classes_of(session.model)[session.head]
    # Semantic labels (a class without --instances): every box's mask gets its value.
    value = chosen.value if chosen is not None and not args.instances else None
    merge = BandMerge(session, boxes, scale=args.scale, class_value=value,
                      clicks=clicks if clicks and any(c is not None for c in clicks) else None)
    pixel = ((spacing[0] / args.scale, spacing[1] / args.scale) if spacing
             else (1.0 / args.scale, 1.0 / args.scale))
    written = _write_set(merge, out, image_path, pixel, "mm" if spacing else "pixel", args)
    report = {"image": str(image_path), "mode": merge.mode, "objects": len(boxes),
              "shape": list(merge.shape), "written": written}
    if chosen is not None:
        report["class"] = chosen.to_dict()
    return report


def _write_set(merge: Any, out: Path, image_path: Path, pixel: tuple[float, float], unit: str,
               args: argparse.Namespace) -> list[str]:
    """The mask, the uncertainty map and the outlines of one image, as one set: all
    are put in place, or none. The maps go to disk band by band as they are
    decoded, so memory does not grow with the output's size."""
    from contextlib import nullcontext

    from ..saving import TiffRows, staged_files, tiff_options

    uncertainty = args.uncertainty if merge.has_uncertainty else None
    if args.uncertainty and uncertainty is None:
        print("note: the base model's own decoder gives no uncertainty (use --decoder "
              "imedsam with medsam_lite or an adapter)")
    error_map = getattr(args, "error_map", None)
    error_map = error_map if merge.has_error_map else None
    if getattr(args, "error_map", None) and error_map is None:
        print("note: no error map: it needs the I-MedSAM decoder and a model that has one "
              "(the default medsam_lite)")
    paths = [p for p in (out, uncertainty, error_map, args.polygons) if p is not None]
    options = tiff_options(pixel, unit)
    with staged_files(paths, overwrite=args.overwrite) as staged:
        at = {p: staged[i] for i, p in enumerate(paths)}
        with TiffRows(staged[0], merge.shape, merge.dtype, **options) as labels, \
                (TiffRows(at[uncertainty], merge.shape, "float32", **options)
                 if uncertainty is not None else nullcontext()) as maps, \
                (TiffRows(at[error_map], merge.shape, "float32", **options)
                 if error_map is not None else nullcontext()) as errors:
            for band in merge:
                labels.write(band.row0, band.labels)
                if maps is not None and band.uncertainty is not None:
                    maps.write(band.row0, band.uncertainty)
                if errors is not None and band.error is not None:
                    errors.write(band.row0, band.error)
        if args.polygons:
            payload = {"image": str(image_path), "coordinates": "y, x in image pixels",
                       "objects": [{"id": i + 1, "box": _box_or_none(b),
                                    **_clicks_entry(merge.clicks, i),
                                    "polygons": [p.round(3).tolist() for p in ps]}
                                   for i, (b, ps) in enumerate(zip(merge.boxes,
                                                                   merge.outlines()))]}
            staged[-1].write_text(json.dumps(payload), encoding="utf-8")
    return [str(p) for p in paths]


def _box_or_none(box: Any) -> list[float] | None:
    values = [float(v) for v in box]
    return None if any(v != v for v in values) else values


def _clicks_entry(clicks: list[Any] | None, i: int) -> dict[str, Any]:
    """An object's clicks as the export record writes them (x, y, positive)."""
    mine = None if clicks is None else clicks[i]
    if mine is None:
        return {}
    return {"clicks": [{"x": float(x), "y": float(y), "positive": bool(s)}
                       for (x, y), s in zip(mine.xy, mine.labels)]}


def _from_export(args: argparse.Namespace) -> int:
    """Make an export's masks again from its JSON record (napari widget's Export).

    Everything is checked before the model loads: the record, the outputs (not an
    input, not there unless --overwrite, a TIFF name), the image (its SHA-256 and
    shape) and the weights (their SHA-256)."""
    from ..export import (beside_record, check_image_hash, check_model_hashes, read_record,
                          reproduce, session_decoder)
    from ..inference.session import SegmentationSession
    from ..io import check_regular_file, read_any
    from ..model.loading import load_model
    from ..model.weights import REGISTRY
    from ..saving import label_dtype, write_tiff

    record_path = Path(args.from_export)
    record = read_record(record_path)
    if args.uncertainty or args.polygons or getattr(args, "error_map", None):
        raise ValueError("--from-export makes the labels only: leave out --uncertainty, "
                         "--error-map and --polygons (the export wrote its uncertainty map "
                         f"beside {record_path.name})")
    image_path = (Path(args.image) if args.image
                  else beside_record(record_path, record["image"].get("path")))
    if image_path is None:
        raise ValueError(f"{record_path} names no image file (the layer had none): give IMAGE")
    if not args.out:
        raise ValueError("give --out MASK.tif")
    spec = record["model"]
    name = str(spec["name"])
    if name not in REGISTRY:  # a model file, named as the export's process saw it
        name = str(beside_record(record_path, name))
    adapter = beside_record(record_path, spec.get("adapter"))
    model_file = None if name in REGISTRY else Path(name)
    check_outputs([args.out], [record_path, image_path, adapter, model_file], args.overwrite)
    if Path(args.out).suffix.lower() not in (".tif", ".tiff"):
        raise ValueError(f"--out {args.out}: masks are written as TIFF; name the file .tif "
                         "or .tiff")
    check_regular_file(image_path, folder_ok=True)
    check_image_hash(record_path, record, image_path)
    if adapter is not None:
        check_regular_file(adapter, "adapter file")
    check_model_hashes(record_path, spec, name, adapter)
    loaded = read_any(image_path)
    spatial = list(loaded.data.shape[:-1] if record["image"].get("rgb") else loaded.data.shape)
    if spatial != list(record["image"]["shape"]):
        raise ValueError(f"{image_path} has shape {spatial}, the export's image "
                         f"{record['image']['shape']}")
    session = SegmentationSession(load_model(name, adapter=adapter),
                                  device=args.device, mode=spec.get("decoder", "auto"),
                                  click_rule=record.get("click_rule", "replace"))
    labels = reproduce(record, session_decoder(session, loaded.data, record.get("window")))
    spacing = record["image"].get("spacing") or [1.0, 1.0]
    scale = float(record["scale"])
    write_tiff(args.out, labels.astype(label_dtype(labels), copy=False),
               unit=record["image"].get("unit", "pixel"),
               pixel_size=(spacing[-2] / scale, spacing[-1] / scale), overwrite=args.overwrite)
    print(json.dumps({"image": str(image_path), "objects": len(record["objects"]),
                      "shape": list(labels.shape), "written": [str(args.out)]}, indent=2))
    return 0


def _segment_batch(make_session: Any, args: argparse.Namespace) -> int:
    """Every image of a boxes file; a failed image does not stop the others, and
    ``segment_report.json`` in the output folder lists what succeeded and what failed.
    All inputs and outputs are checked before the first image is segmented."""
    if not (args.boxes_file and args.out_dir):
        raise ValueError("batch mode needs --boxes-file CSV and --out-dir DIR")
    from ..boxes import read_boxes_csv

    if args.uncertainty or args.polygons or getattr(args, "error_map", None):
        raise ValueError("--uncertainty, --error-map and --polygons name one file: segment "
                         "images one at a time for them (batch mode writes one mask per image)")
    jobs = [(args.batch / name, args.out_dir / (Path(name).name.split(".")[0] + "_mask.tif"),
             boxes) for name, boxes in sorted(read_boxes_csv(args.boxes_file).items())]
    missing = [str(image) for image, _, _ in jobs if not image.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} image(s) of {args.boxes_file} are not in "
                                f"{args.batch}: {', '.join(missing[:3])}")
    from ..inference.intensity import parse_window

    parse_window(args.window)
    report_path = args.out_dir / "segment_report.json"
    check_outputs([out for _, out, _ in jobs] + [report_path],
                  [image for image, _, _ in jobs] + [args.boxes_file], args.overwrite)
    session = make_session()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    done, failed = [], []
    for image, out, boxes in jobs:
        try:
            done.append(_segment_one(session, image, boxes, out, args))
        except Exception as exc:  # noqa: BLE001 - reported, and the batch goes on
            failed.append({"image": str(image), "error": f"{type(exc).__name__}: {exc}"})
    report = {"boxes_file": str(args.boxes_file), "succeeded": done, "failed": failed}
    from ..saving import atomic_save

    atomic_save(report_path, lambda tmp: tmp.write_text(json.dumps(report, indent=2) + "\n"),
                overwrite=args.overwrite)
    print(json.dumps(report, indent=2))
    if failed:
        print(f"{len(failed)} of {len(jobs)} image(s) failed (see {report_path})",
              file=sys.stderr)
    return 1 if failed else 0


def _segment(args: argparse.Namespace) -> int:
    from ..inference.session import SegmentationSession
    from ..model.loading import load_model

    if args.from_export:
        return _from_export(args)

    def session() -> Any:  # loaded once the inputs and outputs are known to be usable
        model = load_model(args.model, adapter=args.adapter, device="cpu")
        made = SegmentationSession(model, device=args.device, mode=args.decoder)
        if args.class_name is not None:
            from ..model.classes import find_class

            made.use_class(find_class(model, args.class_name))
        return made

    if args.batch:
        return _segment_batch(session, args)
    if args.propagate or args.key or (args.out is not None
                                      and str(args.out).lower().endswith(".dcm")):
        return _propagate(session, args)
    if not (args.image and (args.box or args.point) and args.out):
        raise ValueError("give IMAGE, at least one --box X0,Y0,X1,Y1 (or --point X,Y) and "
                         "--out MASK.tif (or --batch DIR --boxes-file CSV --out-dir DIR)")
    boxes, clicks = objects_from_prompts(getattr(args, "prompts", None) or [])
    from ..io import check_regular_file

    # A folder is a DICOM series; a FIFO or a device is refused before it is opened.
    check_regular_file(args.image, folder_ok=True)
    check_outputs([args.out, args.uncertainty, args.error_map, args.polygons], [args.image],
                  args.overwrite)
    for flag, path in (("--out", args.out), ("--uncertainty", args.uncertainty),
                       ("--error-map", args.error_map)):
        if path is not None and Path(path).suffix.lower() not in (".tif", ".tiff"):
            raise ValueError(f"{flag} {path}: masks and maps are written as TIFF; name the "
                             "file .tif or .tiff")
    from ..inference.intensity import parse_window
    from ..io import read_any

    parse_window(args.window)
    loaded = read_any(args.image, plane=args.slice)  # a NIfTI's slice is read alone
    _slice_of(loaded.data, args.slice, str(args.image), loaded.first_plane)
    print(json.dumps(_segment_one(session(), args.image, boxes, args.out, args, loaded,
                                  clicks), indent=2))
    return 0


def _propagate(make_session: Any, args: argparse.Namespace) -> int:
    """``--propagate``: one object from its box on ``--slice`` (and ``--key`` slices)
    through the volume; the labels are written on the volume's grid (a NIfTI's own)."""
    from ..inference.intensity import parse_window
    from ..io import check_regular_file, read_any

    if args.key and not args.propagate:
        raise ValueError("--key gives more slices of the object to --propagate: add "
                         "--propagate")
    what = "--propagate" if args.propagate else "--out NAME.dcm (a DICOM SEG)"
    if args.image is None or args.out is None or args.slice is None or not args.box or (
            args.propagate and len(args.box) != 1):
        raise ValueError(f"{what} needs IMAGE (a volume), --slice Z, "
                         f"{'one --box' if args.propagate else '--box'} X0,Y0,X1,Y1 on it "
                         "and --out LABELS.nii.gz (or .tif, or .dcm for a DICOM series)")
    if args.point or args.uncertainty or args.error_map or args.polygons or args.scale != 1:
        raise ValueError(f"{what} writes the labels on the volume's own grid: leave out "
                         "--point, --uncertainty, --error-map, --polygons and --scale")
    out = Path(args.out)
    name = out.name.lower()
    nifti_out, seg_out = name.endswith((".nii", ".nii.gz")), name.endswith(".dcm")
    if not (nifti_out or seg_out or name.endswith((".tif", ".tiff"))):
        raise ValueError(f"--out {out}: a volume's labels are written as NIfTI (.nii.gz), "
                         "TIFF (.tif) or, for a DICOM series, DICOM SEG (.dcm)")
    from ..dicom_seg import SEGMENT_TYPES

    if args.seg_type not in SEGMENT_TYPES:
        raise ValueError(f"--seg-type {args.seg_type!r}: use one of {', '.join(SEGMENT_TYPES)}")
    check_regular_file(args.image, folder_ok=True)
    check_outputs([out], [args.image], args.overwrite)
    parse_window(args.window)
    loaded = read_any(args.image)
    if seg_out and loaded.dicom_files is None:
        raise ValueError(f"--out {out}: a DICOM SEG references a DICOM series, and "
                         f"{args.image} is not one: write .nii.gz or .tif")
    data = loaded.data
    if seg_out and data.ndim == 2:  # one DICOM slice: a volume of one
        data = data[None]
    rgb = data.ndim == 4 and data.shape[-1] in (3, 4)
    if not (data.ndim == 3 and data.shape[-1] not in (3, 4)) and not rgb:
        raise ValueError(f"{args.image} has shape {data.shape}: --propagate takes a volume "
                         "(slices, rows, columns)")
    depth = data.shape[0]
    if not args.propagate:
        return _write_volume(_slice_labels(make_session(), data, args), loaded, out, args,
                             {"key_slices": [args.slice]})
    keys = {args.slice: args.box[0]}
    for plane, box in args.key:
        if plane in keys:
            raise ValueError(f"slice {plane} has two boxes (--slice and --key, or two "
                             "--key): give each slice one box")
        keys[plane] = box
    for plane in keys:
        if not 0 <= plane < depth:
            raise ValueError(f"slice {plane} is outside {args.image}'s 0..{depth - 1}")
    from ..propagate import propagate_volume

    labels, summary = propagate_volume(make_session(), data, args.slice, keys,
                                       window=args.window, spacing=loaded.spacing)
    return _write_volume(labels, loaded, out, args,
                         {"key_slices": sorted(keys), "ended": summary.reasons})


def _slice_labels(session: Any, data: Any, args: argparse.Namespace) -> Any:
    """The boxes of --slice, one id each, in a volume of labels (the other slices 0)."""
    import numpy as np

    if not 0 <= args.slice < data.shape[0]:
        raise ValueError(f"--slice {args.slice} is outside 0..{data.shape[0] - 1}")
    session.set_image(data[args.slice], window=args.window)
    labels = np.zeros(data.shape[:3], np.uint16)
    masks = session.predict(np.asarray(args.box, np.float64)).masks()
    for i, mask in enumerate(masks):
        labels[args.slice][mask & (labels[args.slice] == 0)] = i + 1
    return labels


def _write_volume(labels: Any, loaded: Any, out: Path, args: argparse.Namespace,
                  report: dict[str, Any]) -> int:
    """A volume's labels to NIfTI (the source's grid), TIFF, or DICOM SEG (its series)."""
    import numpy as np

    name = out.name.lower()
    if name.endswith(".dcm"):
        from ..dicom_seg import segments_for, write_seg
        from ..export import model_info

        model = model_info(str(args.model), None if args.adapter is None else str(args.adapter),
                           args.device, args.decoder)
        write_seg(out, labels, loaded.dicom_files, segments_for(labels, kind=args.seg_type),
                  labelmap=args.labelmap, model=model, overwrite=args.overwrite,
                  source_frames=loaded.dicom_frames)
    elif name.endswith((".nii", ".nii.gz")):
        from ..io import write_nifti

        write_nifti(out, labels, spacing=loaded.spacing, source_affine=loaded.affine,
                    overwrite=args.overwrite)
    else:
        from ..saving import write_tiff

        write_tiff(out, labels, overwrite=args.overwrite)
    filled = np.flatnonzero(labels.any(axis=(1, 2)))
    print(json.dumps({"image": str(args.image), **report,
                      "slices": [int(filled.min()), int(filled.max())] if filled.size else [],
                      "labelled_slices": int(filled.size), "voxels": int((labels > 0).sum()),
                      "written": [str(out)]}, indent=2))
    return 0


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    s = subparsers.add_parser("segment", help="box -> mask (+ uncertainty, polygons)")
    s.add_argument("image", nargs="?", type=Path, help="PNG/JPEG/TIFF, NIfTI or DICOM")
    s.add_argument("--box", type=_box, action=_Prompt, default=[],
                   help="X0,Y0,X1,Y1 in pixels; repeat")
    s.add_argument("--point", type=_point, action=_Prompt, default=[], metavar="X,Y[,+|-]",
                   help="a corrective click (x, y in the boxes' pixel coordinates; + where the "
                        "object is, - where it is not; + by default) on the box before it; "
                        "points before any box make one object of their own; repeat")
    s.add_argument("--out", type=Path, help="label TIFF: one id per box")
    s.add_argument("--scale", type=float, default=1.0, help="output scale, 0.25 to 8")
    s.add_argument("--uncertainty", type=Path,
                   help="uncertainty TIFF (float32): the MC-dropout standard deviation of the "
                        "mask probability, 0 to 0.5, as the widget shows and the export writes")
    s.add_argument("--error-map", type=Path,
                   help="error map TIFF (float32): the probability that each pixel's label is "
                        "wrong (calibrated; the widget's 'error map'), 0 to 1")
    s.add_argument("--polygons", type=Path, help="sub-pixel boundaries as JSON")
    s.add_argument("--model", default="medsam_lite",
                   help="medsam_lite (the default: LiteMedSAM + our adapter), vit_b, vit_l, "
                        "vit_h or a .pth")
    s.add_argument("--adapter", type=Path, help="adapter .safetensors")
    s.add_argument("--decoder", default="auto", choices=("auto", "imedsam", "sam"),
                   help="imedsam: the implicit decoder (any scale, uncertainty); sam: the base "
                        "model's own mask decoder; auto: imedsam when the model has one")
    s.add_argument("--window", default=None, help="CT window: abdomen, lung, bone, brain, "
                   "liver, mediastinum or WIDTH,LEVEL")
    s.add_argument("--slice", type=int, help="slice index for volumes")
    s.add_argument("--propagate", action="store_true",
                   help="volumes: segment the box on --slice (and the --key slices), follow "
                        "the object through the volume until it ends, and write the volume's "
                        "labels (--out .nii.gz on a NIfTI's own grid, or .tif)")
    s.add_argument("--key", type=_key, action="append", default=[], metavar="Z:X0,Y0,X1,Y1",
                   help="with --propagate: the same object's box on another slice Z; the "
                        "slices between key slices are filled from both ends; repeat")
    s.add_argument("--seg-type", default="organ", metavar="TYPE",
                   help="--out NAME.dcm (DICOM SEG): what the segments are, as SNOMED CT codes: "
                        "organ (default), tissue, liver, spleen, kidney, 'blood vessel', "
                        "lesion, mass or neoplasm")
    s.add_argument("--labelmap", action="store_true",
                   help="--out NAME.dcm: a LABELMAP SEG (one frame per slice) instead of BINARY")
    s.add_argument("--class", dest="class_name", metavar="NAME",
                   help="a model with several classes: the class (name or label value) that "
                        "answers the boxes; masks get its label value")
    s.add_argument("--instances", action="store_true",
                   help="with --class: one id per box instead of the class's label value")
    s.add_argument("--device", default="auto", choices=DEVICES)
    s.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    s.add_argument("--batch", type=Path, help="folder of images (batch mode)")
    s.add_argument("--boxes-file", type=Path, help="CSV image,x0,y0,x1,y1 (batch mode)")
    s.add_argument("--out-dir", type=Path, help="output folder (batch mode)")
    s.add_argument("--from-export", type=Path, metavar="JSON",
                   help="make the masks of a napari export again from its JSON record "
                        "(its boxes, model, adapter, window and scale)")
    s.set_defaults(func=_segment)
