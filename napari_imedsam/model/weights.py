"""Base SAM weights: registry, local cache, download, verification, safe loading.

Lookup order for a registry name: ``$IMEDSAM_WEIGHTS_DIR`` (pre-downloaded
files, for offline machines), then the cache (``cache_dir()``), then a download
with pooch.  torch is imported lazily so importing this module stays cheap.
"""

from __future__ import annotations

import hashlib
import os
import re
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

    @property
    def size_mb(self) -> float:
        return self.size / 1e6


_BASE = "https://dl.fbaipublicfiles.com/segment_anything/"
REGISTRY: dict[str, WeightsEntry] = {e.name: e for e in (
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


def locate(name: str) -> Path | None:
    """Existing file for registry ``name`` (weights dir, then cache), or None.

    Only the size is checked (hashing GBs on every start is too slow); a file
    of the wrong size raises rather than failing obscurely later in torch.load.
    """
    entry = _entry(name)
    env = os.environ.get(ENV_WEIGHTS_DIR)
    for d in ([Path(env).expanduser()] if env else []) + [cache_dir()]:
        p = d / entry.filename
        if p.is_file():
            size = p.stat().st_size
            if size != entry.size:
                raise WeightsIncompleteError(
                    f"{p} is {size} bytes but {entry.filename} should be {entry.size} bytes: "
                    "the file is incomplete or corrupt. Delete it and download it again "
                    f"(imedsam weights fetch {name}), or replace it with a complete copy.")
            return p
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


def fetch(name: str, *, on_progress: Callable[[int, int], None] | None = None,
          should_stop: Callable[[], bool] | None = None, allow_download: bool = True,
          base_url: str | None = None) -> Path:
    """Local path of registry weights ``name``, downloading into ``cache_dir()`` if missing.

    ``on_progress(done_bytes, total_bytes)`` replaces the terminal tqdm bar;
    ``should_stop()`` returning True cancels (``DownloadCancelled``). ``base_url``
    (or ``$IMEDSAM_WEIGHTS_URL``) replaces the directory part of the URL.
    Nothing partial is ever left in the cache: pooch writes to a temporary file
    and moves it into place only once the sha256 matches.
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
    return Path(path)


def resolve_checkpoint(name_or_path: str | Path, **fetch_kwargs: Any) -> tuple[Path, str | None]:
    """Turn a registry name or a file path into ``(path, registry name or None)``.

    A path whose file name and size match a registry entry is reported as that
    entry (so callers know its variant); any other file, e.g. MedSAM's
    ``medsam_vit_b.pth``, gives None.
    """
    if isinstance(name_or_path, str) and name_or_path in REGISTRY:
        return fetch(name_or_path, **fetch_kwargs), name_or_path
    p = Path(name_or_path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"{name_or_path!s} is neither an existing file nor a known weights "
                                f"name; valid names: {', '.join(REGISTRY)}")
    size = p.stat().st_size
    match = next((e.name for e in REGISTRY.values() if e.filename == p.name and e.size == size), None)
    return p, match


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
