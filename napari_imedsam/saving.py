"""Writing results so that nothing the user made is lost, in bounded memory.

Every file is written to a hidden temporary file beside its target and put in
place in one step: a reader never sees half a file, and a failure leaves the
target untouched. Without ``overwrite`` the target name is claimed atomically
(a hard link that fails when the name exists), so of several writers racing
for one name exactly one wins. A *set* of files (a mask, its uncertainty map,
its JSON record) goes in place together or not at all (:func:`staged_files`).
Large label images and maps can be written a band of rows at a time
(:class:`TiffRows`), so their size never has to fit in memory.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

#: Free bytes below which a failed write is taken for a full disk.
DISK_FULL_BELOW = 1 << 20


def label_dtype(array: np.ndarray) -> np.dtype:
    """The smallest unsigned integer type that holds every label id of ``array``.

    Ids of 2**31 and more would wrap to negative (or zero) values in int32:
    objects silently erased. Negative ids are refused.
    """
    low, high = int(array.min(initial=0)), int(array.max(initial=0))
    if low < 0:
        raise ValueError(f"label ids must not be negative (found {low})")
    return dtype_for_ids(high)


def dtype_for_ids(largest: int) -> np.dtype:
    """The smallest unsigned integer type that holds ids up to ``largest``."""
    for dtype in (np.uint8, np.uint16, np.uint32, np.uint64):
        if largest <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(f"label id {largest} does not fit in 64 bits")


def numbered(path: str | Path) -> Iterator[Path]:
    """``path``, then ``NAME-2.EXT``, ``NAME-3.EXT``... without end (the one "next free
    name" sequence: saves, exports and adapters all number this way). Double suffixes
    such as ``.nii.gz`` stay whole."""
    path = Path(path)
    suffix = ".nii.gz" if path.name.lower().endswith(".nii.gz") else path.suffix
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    yield path
    n = 2
    while True:
        yield path.with_name(f"{stem}-{n}{suffix}")
        n += 1


def free_path(path: str | Path) -> Path:
    """``path`` if nothing is there, else the first free ``NAME-2.EXT``, ``NAME-3.EXT``..."""
    return next(p for p in numbered(path) if not p.exists())


def save_new(path: str | Path, save: Callable[[Path], Path], attempts: int = 100) -> Path:
    """``save(target)`` under ``path`` or, when taken, the next free ``NAME-2``...:
    a writer that loses the race for a name takes the next one, never replacing."""
    for _ in range(attempts):
        target = free_path(path)
        try:
            return save(target)
        except FileExistsError:
            if not target.exists():
                raise
    raise FileExistsError(f"no free name near {path} after {attempts} tries")


def check_outputs(outputs: Sequence[str | Path | None], inputs: Sequence[str | Path | None],
                  overwrite: bool) -> None:
    """Before any work: outputs distinct from each other and from the inputs, and, unless
    ``overwrite``, none of them already there (so a run writes all or nothing new); each
    output's folder takes a file (a missing folder is made when the outputs are
    written: its nearest existing parent must take one).
    An unwritable folder was found only after the work before (38 s of ``segment``;
    ``bench`` lost its results)."""
    chosen = [Path(p) for p in outputs if p is not None]
    resolved = [p.resolve() for p in chosen]
    if len(set(resolved)) < len(resolved):
        raise ValueError("two outputs name the same file: give each output its own name")
    sources = {Path(p).resolve() for p in inputs if p is not None}
    for path, full in zip(chosen, resolved):
        if full in sources:
            raise ValueError(f"{path} is an input: choose another output name")
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} already exists: choose another name or pass "
                                  "--overwrite")
        if (path.exists() or path.is_symlink()) and (path.is_symlink() or not path.is_file()):
            raise FileExistsError(f"{path} is not a regular file: it is never replaced; "
                                  "choose another name")
    for folder in sorted({full.parent for full in resolved}):
        check_writable_folder(folder)


def check_writable_folder(folder: Path) -> None:
    """``folder`` (or, while it does not exist, its nearest existing parent, where it
    will be made) is a folder this process can write a file into: tried with a
    temporary file, as permissions, a read-only mount or a full quota decide only
    when one is written."""
    target = folder
    while not target.exists() and target != target.parent:
        target = target.parent
    if not target.is_dir():
        raise NotADirectoryError(f"{target} is not a folder: choose an output inside a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=target, prefix=".imedsam-write-test."):
            pass
    except OSError as exc:
        raise PermissionError(f"cannot write in the folder {target} "
                              f"({exc.strerror or exc}): choose a folder you can write to"
                              ) from None


def _check_target(path: Path, overwrite: bool) -> None:
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise FileExistsError(f"{path} exists: choose another name or allow overwriting")
        if path.is_symlink() or not path.is_file():
            raise FileExistsError(f"{path} is not a regular file: it is never replaced")


#: In the name of every temporary file this module makes (``.NAME.imedsam-tmp.XXXXXXXX.EXT``),
#: so that one a killed process left behind is known to be ours.
TEMP_MARK = "imedsam-tmp"
#: A temporary file untouched this long belongs to a process that was killed (one
#: being written is touched at every band, and a set is put in place at once).
STALE_TEMPORARY_S = 600.0


def remove_stale_temporaries(folder: Path, targets: Sequence[Path] = (),
                             now: float | None = None) -> list[Path]:
    """Delete the temporary files that killed writers left in ``folder``: hidden files
    with :data:`TEMP_MARK` in their name, and those named as this module named them
    before the mark (``.NAME.XXXXXXXX.EXT``) for the ``targets`` about to be written,
    untouched for :data:`STALE_TEMPORARY_S`. Any other file is left alone."""
    now = time.time() if now is None else now
    older = [re.compile(re.escape(f".{t.stem}.") + r"[a-z0-9_]{8}"
                        + re.escape("".join(t.suffixes) or ".tmp") + "$") for t in targets]
    removed = []
    try:
        names = [e.name for e in os.scandir(folder) if e.name.startswith(".")]
    except OSError:
        return removed  # not there yet, or not ours to list
    for name in names:
        if f".{TEMP_MARK}." not in name and not any(r.match(name) for r in older):
            continue
        path = folder / name
        try:
            if (path.is_file() and not path.is_symlink()
                    and now - path.stat().st_mtime > STALE_TEMPORARY_S):
                path.unlink()
                removed.append(path)
        except OSError:
            continue  # another process removed it, or it is not ours to remove
    return removed


def _temporary_beside(path: Path) -> Path:
    suffix = "".join(path.suffixes) or ".tmp"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.{TEMP_MARK}.", suffix=suffix,
                                   dir=path.parent)
    except OSError as exc:  # the error would name our hidden temporary file, not the target
        raise type(exc)(exc.errno, f"cannot write {path}: {exc.strerror or exc} in the folder "
                        f"{path.parent}; choose a folder you can write to") from exc
    os.close(fd)
    return Path(tmp)


def _disk_is_full(exc: OSError, folder: Path) -> bool:
    """The error is a full disk (some writers, tifffile's among them, report it
    without an errno: "N requested and M written")."""
    if exc.errno == errno.ENOSPC:
        return True
    try:
        return shutil.disk_usage(folder).free < DISK_FULL_BELOW
    except OSError:
        return False


def _make_durable(tmp: Path) -> None:
    with open(tmp, "rb+") as f:  # on disk before the rename makes it visible
        os.fsync(f.fileno())
    umask = os.umask(0)  # mkstemp makes owner-only files; restore the usual mode
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)


def _claim(tmp: Path, path: Path) -> None:
    """Give ``tmp`` the name ``path`` only if nobody has it (atomically)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise FileExistsError(f"{path} exists: choose another name or allow overwriting") from None
    except OSError:
        # No hard links on this file system: an exclusive create claims the name.
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        os.close(fd)
        os.replace(tmp, path)
        return
    tmp.unlink()


@contextmanager
def staged_files(paths: Sequence[str | Path], *, overwrite: bool = False) -> Iterator[list[Path]]:
    """Temporary files, one beside each of ``paths``, put in place together when the
    block ends without an error.

    All targets are checked before anything is created (distinct, and absent
    unless ``overwrite``; only regular files are ever replaced). When the block
    raises, or one name is taken while placing, the files this call placed are
    removed again and every temporary file is deleted: the set is complete or
    absent. (With ``overwrite``, a file already replaced cannot be restored; the
    placing step is only renames, after every file was written and synced.)
    """
    targets = [Path(p) for p in paths]
    if len({t.resolve() for t in targets}) < len(targets):
        raise ValueError("two outputs name the same file: give each output its own name")
    for target in targets:
        _check_target(target, overwrite)
    for folder in dict.fromkeys(t.parent for t in targets):  # what killed runs left there
        remove_stale_temporaries(folder, [t for t in targets if t.parent == folder])
    temps: list[Path] = []
    try:
        for target in targets:
            temps.append(_temporary_beside(target))
        try:
            yield list(temps)
        except OSError as exc:
            if _disk_is_full(exc, targets[0].parent):
                names = ", ".join(t.name for t in targets)
                raise OSError(errno.ENOSPC, f"no space left in {targets[0].parent} for {names} "
                              "(nothing was written): free some space or choose another "
                              "folder") from exc
            raise
        for tmp in temps:
            _make_durable(tmp)
        placed: list[Path] = []
        try:
            for tmp, target in zip(temps, targets):
                if overwrite:
                    _check_target(target, overwrite)  # still a regular file (or absent)
                    os.replace(tmp, target)
                else:
                    _claim(tmp, target)
                placed.append(target)
        except BaseException:
            if not overwrite:
                for target in placed:
                    target.unlink(missing_ok=True)
            raise
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)


def atomic_save(path: str | Path, write: Callable[[Path], Any], *,
                overwrite: bool = False) -> Path:
    """Call ``write(tmp_path)`` then put the file in place in one step.

    Without ``overwrite`` of several writers racing for one name exactly one
    succeeds and the others get ``FileExistsError``: no result silently replaces
    another. With ``overwrite`` only a regular file is ever replaced (never a
    device, a folder or a link's target). On any error the temporary file is
    removed and the destination is untouched.
    """
    with staged_files([path], overwrite=overwrite) as (tmp,):
        write(tmp)
    return Path(path)


def tiff_options(pixel_size: tuple[float, float] | None = None, unit: str = "pixel",
                 spacing: tuple[float, ...] | None = None) -> dict[str, Any]:
    """tifffile keywords recording the pixel size.

    In mm the resolution tags hold pixels per centimetre (the TIFF unit that
    ImageJ/Fiji and other readers convert to mm); otherwise pixels per ``unit``
    with no TIFF unit. The JSON description (tifffile's shaped metadata) also
    records ``unit``, ``spacing_yx`` and, for volumes, the spacing of every axis.
    """
    if pixel_size is None:
        return {}
    py, px = pixel_size
    per = 10.0 if unit == "mm" else 1.0  # mm -> pixels per cm
    metadata: dict[str, Any] = {"unit": unit, "spacing_yx": [py, px]}
    if spacing is not None:
        metadata["spacing"] = [float(v) for v in spacing]
    return {"resolution": (per / px, per / py),
            "resolutionunit": "CENTIMETER" if unit == "mm" else "NONE", "metadata": metadata}


def save_tiff(target: Path, data: np.ndarray, *, pixel_size: tuple[float, float] | None = None,
              unit: str = "pixel", spacing: tuple[float, ...] | None = None) -> None:
    """A TIFF with the pixel size recorded (:func:`tiff_options`), written straight to
    ``target``: a temporary file of :func:`staged_files` (else use :func:`write_tiff`)."""
    import tifffile

    tifffile.imwrite(target, data, **tiff_options(pixel_size, unit, spacing))


def write_tiff(path: str | Path, data: np.ndarray, *, pixel_size: tuple[float, float] | None = None,
               unit: str = "pixel", overwrite: bool = False,
               spacing: tuple[float, ...] | None = None) -> Path:
    """:func:`save_tiff`, written atomically."""
    return atomic_save(path, lambda tmp: save_tiff(tmp, data, pixel_size=pixel_size, unit=unit,
                                                   spacing=spacing), overwrite=overwrite)


class TiffRows:
    """A 2D TIFF written a band of rows at a time.

    The file is laid out first (header, tags, and the pixel data as one
    contiguous, zero-filled run), then each band is written at its place:
    memory holds one band whatever the image's size, and rows never written
    stay 0 (background). Write it to a temporary file of :func:`staged_files`.
    """

    def __init__(self, path: str | Path, shape: tuple[int, int], dtype: np.dtype | type,
                 **options: Any) -> None:
        import tifffile

        self.path, self.shape = Path(path), (int(shape[0]), int(shape[1]))
        self.dtype = np.dtype(dtype).newbyteorder("<")
        tifffile.imwrite(self.path, shape=self.shape, dtype=self.dtype, byteorder="<", **options)
        with tifffile.TiffFile(self.path) as tif:
            page = tif.pages[0]
            contiguous, offset = bool(page.is_contiguous), int(page.dataoffsets[0])
            size = int(sum(page.databytecounts))
        if not contiguous or size != self.shape[0] * self.shape[1] * self.dtype.itemsize:
            raise RuntimeError(f"{self.path}: tifffile did not lay the pixels out contiguously")
        self._offset = offset
        self._file = open(self.path, "r+b")  # noqa: SIM115 - closed in close()

    def write(self, row0: int, band: np.ndarray) -> None:
        """Rows ``row0 .. row0 + len(band)`` of the image."""
        rows, cols = band.shape
        if cols != self.shape[1] or not 0 <= row0 <= self.shape[0] - rows:
            raise ValueError(f"a band of shape {band.shape} at row {row0} does not fit "
                             f"{self.shape}")
        self._file.seek(self._offset + row0 * cols * self.dtype.itemsize)
        self._file.write(np.ascontiguousarray(band, dtype=self.dtype).tobytes())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> TiffRows:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _png_image(data: np.ndarray) -> Any:
    """A 2D label image as a PIL image for PNG (8-bit when ids fit, else 16-bit)."""
    from PIL import Image

    if data.ndim != 2:
        raise ValueError(f"PNG holds 2D images; this one has shape {data.shape}: use TIFF or NIfTI")
    if data.min(initial=0) < 0 or data.max(initial=0) > 65535:
        raise ValueError("PNG holds ids 0..65535: use TIFF for larger ids")
    dtype = np.uint8 if data.max(initial=0) < 256 else np.uint16
    return Image.fromarray(np.ascontiguousarray(data.astype(dtype)))


def save_png(target: Path, data: np.ndarray) -> None:
    """A 2D label image as PNG, written straight to ``target``: a temporary file of
    :func:`staged_files` (else use :func:`write_png`)."""
    _png_image(data).save(target, format="PNG")


def write_png(path: str | Path, data: np.ndarray, *, overwrite: bool = False) -> Path:
    """A 2D label image as PNG (8-bit when ids fit, else 16-bit), written atomically."""
    image = _png_image(data)  # checked before any file is made
    return atomic_save(path, lambda tmp: image.save(tmp, format="PNG"), overwrite=overwrite)
