"""Reading 2D segmentation data sets: images, masks, splits and box prompts.

Pure numpy/scipy/scikit-image on purpose (no torch), so the same loaders serve
training, benchmarks and tests. Images come out as (H, W, 3) uint8 RGB, the
input SAM expects; masks as (H, W) int32 label images.
"""

from __future__ import annotations

import csv
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable, Sequence

import numpy as np

from ..inference.intensity import as_rgb_uint8
from ..inference.regions import Box

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
Pair = tuple[str, Path, Path]


@dataclass
class LabeledImage:
    """One image with its ground truth; ``label_names`` maps ids to names when known."""

    name: str
    image: np.ndarray  # (H, W, 3) uint8 RGB
    labels: np.ndarray  # (H, W) int32, 0 = background, 1..n = objects or class ids
    label_names: dict[int, str] = field(default_factory=dict)
    #: Multi-class data: the connected groups of labelled pixels (0 = none, 1..g), each
    #: one training sample with its own box; filled by ``samples.sample_refs``.
    groups: np.ndarray | None = None


def _read_raw(path: Path) -> np.ndarray:
    """Pixels as stored; palette PNGs stay indices (label masks rely on that).

    Through the checks of :mod:`napari_imedsam.io` (the segment command's and the
    napari readers'): a regular file, the size its header claims against the file
    and the memory ceiling before decoding, and one line naming the file for a
    truncated or foreign file or Pillow's decompression-bomb guard."""
    from ..io import pillow_image, read_tiff

    if path.suffix.lower() in (".tif", ".tiff"):
        arr = read_tiff(path)
        # Channel-first TIFFs (C, H, W) are common in microscopy; move C last.
        if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] > 4:
            arr = np.moveaxis(arr, 0, -1)
        return arr
    with pillow_image(path) as img:
        if img.mode in ("1", "CMYK", "YCbCr", "LAB", "HSV"):
            img = img.convert("RGB")
        elif img.mode in ("LA", "PA"):
            img = img.convert("RGBA")
        return np.asarray(img)


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file (.tif/.tiff with tifffile, others with Pillow) as (H, W, 3) uint8."""
    return as_rgb_uint8(_read_raw(Path(path)))


def read_mask(path: str | Path, binary: bool = True) -> np.ndarray:
    """Read a mask file as an (H, W) array: uint8 {0, 1} with ``binary``, else int32 ids.

    ``binary=True`` gives {0, 1} (uint8: a 12000 x 12000 mask is 144 MB, not 576 MB
    as int32; memory of issue 23): colour masks use the max over channels; a
    two-valued mask (0/1, 0/255, 0/65535...) takes its larger value as foreground;
    otherwise (JPEG noise) uint8 is thresholded at > 127 (half the dtype range,
    so a noisy empty mask stays empty) and other dtypes at > half the observed max
    (> 0.5 for floats within [0, 1]). ``binary=False`` keeps integer labels as is
    and rejects non-integer floats and colour-coded masks.
    """
    arr = _read_raw(Path(path))
    if arr.ndim == 3 and arr.shape[-1] in (2, 4):
        arr = arr[..., :-1]  # drop alpha
    if arr.ndim == 3 and arr.shape[-1] in (1, 3):
        if binary:
            arr = arr.max(axis=-1)
        elif np.all(arr == arr[..., :1]):
            arr = arr[..., 0]
        else:
            raise ValueError(f"{path}: colour-coded label masks are not supported; save ids as a grey image")
    if arr.ndim != 2:
        raise ValueError(f"{path}: expected a 2D mask, got shape {arr.shape}")
    if binary:
        return _binarize(arr).view(np.uint8)
    if arr.dtype.kind == "f":
        if not (np.all(np.isfinite(arr)) and np.all(arr == np.round(arr))):
            raise ValueError(f"{path}: float mask with non-integer values; use binary=True")
    if arr.size and (arr.min() < np.iinfo(np.int32).min or arr.max() > np.iinfo(np.int32).max):
        raise ValueError(f"{path}: label values do not fit in int32")
    return arr.astype(np.int32)


def _binarize(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == bool:
        return arr
    lo, hi = arr.min(), arr.max()
    if lo == hi:  # constant: foreground only if the value is clearly "on"
        on = hi == 1 or (hi > 127 if arr.dtype == np.uint8 else hi > 0)
        return np.full(arr.shape, bool(on))
    # Row by row: three whole-mask temporaries were 432 MB on a 12000 x 12000 mask.
    if all(bool(((row == lo) | (row == hi)).all()) for row in arr):
        if arr.dtype == np.uint8 and arr.flags.writeable and arr.flags.c_contiguous:
            # Into the mask's own bytes (each compared where it lies): a second 144 MB
            # mask beside the first made `evaluate`'s peak on 12000 x 12000 images.
            return np.equal(arr, hi, out=arr.view(np.bool_))
        return arr == hi
    if arr.dtype == np.uint8:
        return arr > 127
    if arr.dtype.kind == "f" and hi <= 1:
        return arr > 0.5
    return arr > hi / 2


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )


def list_pairs(
    data_dir: str | Path | None = None,
    *,
    images_dir: str | Path | None = None,
    masks_dir: str | Path | None = None,
) -> list[Pair]:
    """Match images with masks: ``data_dir/images`` + ``data_dir/masks``, or two explicit folders.

    A mask matches by file name first, else by stem (``a.jpg`` with ``a.png``).
    Returns sorted ``(image file name, image path, mask path)``.
    """
    if data_dir is not None:
        if images_dir is not None or masks_dir is not None:
            raise ValueError("give either data_dir or images_dir + masks_dir, not both")
        images_dir, masks_dir = Path(data_dir) / "images", Path(data_dir) / "masks"
    if images_dir is None or masks_dir is None:
        raise ValueError("give data_dir (with images/ and masks/) or both images_dir and masks_dir")
    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    for folder in (images_dir, masks_dir):
        if not folder.is_dir():
            raise FileNotFoundError(f"folder not found: {folder}")
    masks = _image_files(masks_dir)
    by_name = {p.name: p for p in masks}
    by_stem: dict[str, list[Path]] = {}
    for p in masks:
        by_stem.setdefault(p.stem, []).append(p)
    pairs: list[Pair] = []
    missing: list[str] = []
    for img in _image_files(images_dir):
        mask = by_name.get(img.name)
        if mask is None:
            candidates = by_stem.get(img.stem, [])
            if len(candidates) > 1:
                raise ValueError(f"ambiguous masks for {img.name}: {[c.name for c in candidates]}")
            mask = candidates[0] if candidates else None
        if mask is None:
            missing.append(img.name)
        else:
            pairs.append((img.name, img, mask))
    if not pairs:
        raise FileNotFoundError(
            f"no image/mask pairs in {images_dir} and {masks_dir} "
            f"(matched by file name or stem; suffixes {', '.join(IMAGE_SUFFIXES)})"
        )
    if missing:
        warnings.warn(
            f"{len(missing)} image(s) in {images_dir} have no mask and are skipped, e.g. {missing[:3]}",
            stacklevel=2,
        )
    return sorted(pairs)


def read_split(csv_path: str | Path) -> dict[str, str]:
    """Read a ``name,split`` CSV into {name: split} (split lower-cased); a file that
    is not UTF-8 text, a short row or a FIFO is one line naming the file."""
    from ..io import check_regular_file

    check_regular_file(csv_path, "CSV file")  # a FIFO would block the read forever
    try:
        with open(csv_path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            fields = {(f or "").strip().lower(): f for f in reader.fieldnames or []}
            if "name" not in fields or "split" not in fields:
                raise ValueError(f"{csv_path}: expected a header with 'name' and 'split', "
                                 f"got {reader.fieldnames}")
            out: dict[str, str] = {}
            for row in reader:
                name, split = row[fields["name"]], row[fields["split"]]
                if name is None or split is None:
                    raise ValueError(f"{csv_path}, line {reader.line_num}: each row needs a "
                                     "name and a split")
                name, split = name.strip(), split.strip().lower()
                if name in out and out[name] != split:
                    raise ValueError(f"{csv_path}: {name} is in both {out[name]} and {split}")
                out[name] = split
    except UnicodeDecodeError as exc:
        raise ValueError(f"{csv_path} is not UTF-8 text ({exc.reason} at byte {exc.start}): "
                         "save it as UTF-8 CSV") from None
    return out


def select_split(pairs: Sequence[Pair], split_map: dict[str, str], subset: str) -> list[Pair]:
    """Keep the pairs whose name (or stem: the CSV may omit extensions) is in ``subset``."""
    subset = subset.strip().lower()
    wanted = {name for name, split in split_map.items() if split == subset}
    if not wanted:
        raise ValueError(f"split {subset!r} is empty; the CSV has {sorted(set(split_map.values()))}")
    wanted_stems = {Path(n).stem for n in wanted}
    chosen = [p for p in pairs if p[0] in wanted or Path(p[0]).stem in wanted_stems]
    found = {p[0] for p in chosen} | {Path(p[0]).stem for p in chosen}
    unknown = sorted(n for n in wanted if n not in found and Path(n).stem not in found)
    if unknown:
        # A split naming files that are not there means the wrong folder or CSV:
        # silently evaluating on fewer images would make numbers incomparable.
        raise ValueError(f"{len(unknown)} {subset} name(s) have no image/mask pair, e.g. {unknown[:3]}")
    return chosen


def load_folder(
    data_dir: str | Path | None = None,
    *,
    images_dir: str | Path | None = None,
    masks_dir: str | Path | None = None,
    split_csv: str | Path | None = None,
    subset: str | None = None,
    binary: bool = True,
    max_side: int | None = None,
    lazy: bool = False,
) -> list[LabeledImage] | LazyPairs:
    """Load image/mask pairs (optionally one subset of a split CSV) into memory.

    ``max_side``: a pair whose longer side is past it is shrunk to it as it is read
    (area for the image, nearest for the labels), so that the set in memory does not
    grow with the images' size: training uses it (three 12000 x 12000 images held
    3.3 GB in decoder mode, issue 23).
    ``lazy``: a :class:`LazyPairs` that reads each pair when asked for it and holds one
    at a time (evaluation, which needs each image at its own size).
    """
    pairs = list_pairs(data_dir, images_dir=images_dir, masks_dir=masks_dir)
    if (split_csv is None) != (subset is None):
        raise ValueError("split_csv and subset go together")
    if split_csv is not None and subset is not None:
        pairs = select_split(pairs, read_split(split_csv), subset)
    lazily = LazyPairs(pairs, binary=binary, max_side=max_side)
    return lazily if lazy else list(lazily)


class LazyPairs(Sequence[LabeledImage]):
    """Image/mask pairs read when asked for, the last one kept: memory holds one pair
    whatever the number of images. Evaluating three 12000 x 12000 images held all
    three (3.05 GB; issue 23). ``transform`` is applied to each pair as it is read."""

    def __init__(self, pairs: Sequence[Pair], *, binary: bool = True,
                 max_side: int | None = None,
                 transform: Callable[[LabeledImage], LabeledImage] | None = None) -> None:
        self.pairs = list(pairs)
        self.binary = binary
        self.max_side = max_side
        self.transform = transform
        self._last: tuple[int, LabeledImage] | None = None

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> LabeledImage:  # type: ignore[override]
        if not -len(self.pairs) <= index < len(self.pairs):
            raise IndexError(index)
        index %= len(self.pairs)
        if self._last is not None and self._last[0] == index:
            return self._last[1]
        self._last = None  # the pair before goes before the next is read
        name, image_path, mask_path = self.pairs[index]
        image, labels = read_image(image_path), read_mask(mask_path, binary=self.binary)
        if image.shape[:2] != labels.shape:
            raise ValueError(f"{name}: image {image.shape[:2]} and mask {labels.shape} differ in size")
        if self.max_side is not None and max(labels.shape) > self.max_side:
            image, labels = shrunk(image, labels, self.max_side)
        item = LabeledImage(name, image, labels)
        if self.transform is not None:
            item = self.transform(item)
        self._last = (index, item)
        return item


def shrunk_grid(shape: tuple[int, ...], max_side: int) -> tuple[int, int]:
    """The ``(h, w)`` of an ``(H, W)`` image shrunk so that its longer side is ``max_side``."""
    from ..inference.regions import output_grid

    return output_grid((shape[0], shape[1]), max_side / max(shape[0], shape[1]))


def shrunk(image: np.ndarray, labels: np.ndarray, max_side: int
           ) -> tuple[np.ndarray, np.ndarray]:
    """``(H, W, 3)`` uint8 image and ``(H, W)`` labels with the longer side made
    ``max_side``: area resampling for the image, nearest for the labels."""
    from ..inference.regions import resample_nearest
    from ..model.transforms import area_resize

    shape = shrunk_grid(labels.shape, max_side)
    return area_resize(image, shape).astype(image.dtype), resample_nearest(labels, shape)


_ORGAN_MASK = re.compile(r"^(?P<organ>.+)_(?P<index>\d+)$")


def load_ct_slices(ct_dir: str | Path) -> list[LabeledImage]:
    """Load the AMOS layout: ``images/<slice>.png`` and ``masks/<slice>_<organ>_<k>.png``.

    Class ids are 1..n over the organ names of the whole folder in sorted order, so
    one organ has one id on every slice; ``label_names`` lists those on each slice.
    Several masks of one organ (``_000``, ``_001``) merge into its id. A slice
    without masks is kept (all background) with a warning.
    """
    ct_dir = Path(ct_dir)
    images = _image_files(ct_dir / "images")
    if not images:
        raise FileNotFoundError(f"no slices in {ct_dir / 'images'}")
    # Longest slice name first, so 'a_1' never claims the masks of 'a_10'.
    slice_names = sorted((p.stem for p in images), key=len, reverse=True)
    per_slice: dict[str, list[tuple[str, Path]]] = {s: [] for s in slice_names}
    for mask in _image_files(ct_dir / "masks"):
        for s in slice_names:
            match = _ORGAN_MASK.match(mask.stem[len(s) + 1:]) if mask.stem.startswith(s + "_") else None
            if match:
                per_slice[s].append((match["organ"], mask))
                break
    organs = sorted({organ for masks in per_slice.values() for organ, _ in masks})
    ids = {organ: i + 1 for i, organ in enumerate(organs)}
    items = []
    for image_path in images:
        image = read_image(image_path)
        labels = np.zeros(image.shape[:2], dtype=np.int32)
        names: dict[int, str] = {}
        if not per_slice[image_path.stem]:
            warnings.warn(f"{image_path.name}: no organ masks; kept as all background", stacklevel=2)
        for organ, mask_path in sorted(per_slice[image_path.stem]):
            mask = read_mask(mask_path).astype(bool)
            if mask.shape != labels.shape:
                raise ValueError(f"{mask_path.name}: mask {mask.shape} vs image {labels.shape}")
            labels[mask] = ids[organ]  # organs should not overlap; if they do, the later name wins
            names[ids[organ]] = organ
        items.append(LabeledImage(image_path.stem, image, labels, names))
    return items


def from_arrays(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    names: Sequence[str] | None = None,
) -> list[LabeledImage]:
    """Training pairs handed over in memory (e.g. napari Image and Labels layers).

    Images go through :func:`as_rgb_uint8`; labels must be integer arrays of the
    image's height and width (each non-zero id is one object). The arrays are
    copied, so training never touches the caller's data.
    """
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} label images")
    items = []
    for i, (image, label) in enumerate(zip(images, labels)):
        name = names[i] if names is not None else f"image_{i}"
        rgb = as_rgb_uint8(image)
        label = np.asarray(label)
        if label.shape != rgb.shape[:2]:
            raise ValueError(f"{name}: labels of shape {label.shape} do not match the image's "
                             f"{rgb.shape[:2]}; give one 2D label image per 2D image")
        if label.dtype.kind not in "biu":
            raise ValueError(f"{name}: labels must be integers, got {label.dtype}")
        items.append(LabeledImage(name, rgb.copy(), label.astype(np.int32)))
    return items


def as_class_heads(items: list[LabeledImage], values: Sequence[int]) -> list[LabeledImage]:
    """Class label images -> head indices: pixels of ``values[k]`` become ``k + 1``, any
    other value background (a class the model does not have is not trained on)."""
    out = []
    for item in items:
        labels = np.zeros(item.labels.shape, np.int32)
        for k, value in enumerate(values):
            labels[item.labels == value] = k + 1
        out.append(LabeledImage(item.name, item.image, labels))
    return out


def object_ids(labels: np.ndarray) -> list[int]:
    """Sorted unique non-zero ids of a label image."""
    values = np.unique(np.asarray(labels))
    return [int(v) for v in values if v != 0]


def box_of(mask: np.ndarray) -> Box:
    """Tight box (x0, y0, x1, y1) in pixel-edge coordinates: x1 = last column + 1."""
    mask = np.asarray(mask)
    # Which rows and columns hold the mask: no index arrays (np.nonzero made 16 bytes
    # a pixel of the object: 64 MB for a 2000 x 2000 one).
    ys, xs = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if xs.size == 0:
        raise ValueError("empty mask has no box")
    return float(xs[0]), float(ys[0]), float(xs[-1] + 1), float(ys[-1] + 1)


def box_of_value(labels: np.ndarray, value: int, band_rows: int = 512) -> Box:
    """``box_of(labels == value)`` a band of rows at a time: no full-size mask (144 MB
    for a 12000 x 12000 label image, on top of the image, in evaluation)."""
    rows = np.zeros(labels.shape[0], bool)
    cols = np.zeros(labels.shape[1], bool)
    for r0 in range(0, labels.shape[0], band_rows):
        hit = labels[r0 : r0 + band_rows] == value
        rows[r0 : r0 + band_rows] = hit.any(axis=1)
        cols |= hit.any(axis=0)
    ys, xs = np.flatnonzero(rows), np.flatnonzero(cols)
    if xs.size == 0:
        raise ValueError("empty mask has no box")
    return float(xs[0]), float(ys[0]), float(xs[-1] + 1), float(ys[-1] + 1)


def jitter_box(box: Box, rng: np.random.Generator, max_shift: float, width: int, height: int) -> Box:
    """Move each side outward by uniform(0, max_shift) px, clipped to the image.

    Only outward, so the prompt still covers the whole object, as a user's box does.
    """
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")
    x0, y0, x1, y1 = box
    d = rng.uniform(0.0, max_shift, size=4) if max_shift > 0 else np.zeros(4)
    return (
        float(max(0.0, x0 - d[0])),
        float(max(0.0, y0 - d[1])),
        float(min(float(width), x1 + d[2])),
        float(min(float(height), y1 + d[3])),
    )
