"""First use of a SAM model: download its weights with napari progress and a Cancel.

The Segment widget asks :meth:`DownloadControls.ensure` before it starts work
that loads a model. When the weights are missing, a thread worker downloads
them (``napari_imedsam.download.fetch_steps``) while a napari progress bar (in the activity
dock, sized in MB, with its own cancel button) and this row (status and a
Cancel button) show how far it got. The waiting work starts when the file is
in the cache; a cancel or a failure drops it and says what to do offline.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from napari.utils.progress import cancelable_progress
from qtpy.QtWidgets import QHBoxLayout, QLabel, QPushButton, QWidget

from ...download import download_body, offline_advice, registry_name
from ...model import weights


class DownloadControls(QWidget):
    """A status line with a Cancel button, visible while weights download."""

    def __init__(self, holder: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._holder = holder
        self.label = QLabel()
        self.label.setWordWrap(True)
        self.cancel_button = QPushButton("Cancel download")
        self.cancel_button.clicked.connect(self.cancel)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.label, 1)
        row.addWidget(self.cancel_button)
        self.setVisible(False)
        self._worker: Any = None
        self._stop = threading.Event()
        self._pbar: cancelable_progress | None = None
        self._name = ""
        self._waiting: list[tuple[Callable[[], None], Callable[[str], None]]] = []
        #: (bytes done, total) as reported, for the status line (and tests).
        self.progress_seen: list[tuple[int, int]] = []

    @property
    def running(self) -> bool:
        return self._worker is not None

    def ensure(self, spec: Any, on_ready: Callable[[], None],
               on_failed: Callable[[str], None]) -> bool:
        """True when ``spec`` can load without a download. Otherwise start (or join)
        the download and return False: ``on_ready()`` runs once the file is there,
        ``on_failed(message)`` after a cancel or an error."""
        if self.running:
            self._waiting.append((on_ready, on_failed))
            return False
        name = registry_name(spec, self._holder)
        if name is None:
            return True
        self._waiting = [(on_ready, on_failed)]
        self._start(name)
        return False

    def _start(self, name: str) -> None:
        entry = weights.REGISTRY[name]
        self._name, self._stop = name, threading.Event()
        self.progress_seen = []
        # kB units: napari's Qt progress bar holds an int32, and vit_h has 2.6e9 bytes.
        self._pbar = cancelable_progress(
            total=max(1, entry.size // 1000),
            desc=f"I-MedSAM: downloading {entry.filename} ({entry.size_mb:.0f} MB)")
        pbar, stop = self._pbar, self._stop
        worker = create_worker(download_body, name, lambda: stop.is_set() or pbar.is_canceled,
                               _start_thread=False)
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(self._on_done)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self.label.setText(f"downloading {entry.filename} ({entry.size_mb:.0f} MB) into "
                           f"{weights.cache_dir()}...")
        self.setVisible(True)
        worker.start()

    def cancel(self) -> None:
        """Stop the download; the partial file is deleted, the waiting work dropped."""
        self._stop.set()
        self.label.setText("cancelling the download...")

    def _on_progress(self, step: tuple[int, int]) -> None:
        done, total = step
        self.progress_seen.append((done, total))
        if self._pbar is not None:
            self._pbar.total = max(1, total // 1000)
            self._pbar.update(done // 1000 - self._pbar.n)
        self.label.setText(f"downloading weights: {done / 1e6:.1f} of {total / 1e6:.1f} MB")

    def _on_done(self, outcome: tuple[Any, Exception | None]) -> None:
        # Tidy up before the callbacks: they may ask ensure() again at once.
        self._on_finished()
        path, error = outcome
        if error is not None:
            self._on_error(error)
            return
        waiting, self._waiting = self._waiting, []
        show_info(f"I-MedSAM: weights saved to {path}")
        for on_ready, _ in waiting:
            on_ready()

    def _on_error(self, exc: BaseException) -> None:
        waiting, self._waiting = self._waiting, []
        if isinstance(exc, weights.DownloadCancelled):
            message = "Download cancelled; nothing was kept. " + offline_advice(self._name)
            show_info(f"I-MedSAM: {message}")
        else:  # "not found" errors already say which file goes where
            advice = "" if isinstance(exc, weights.WeightsNotFoundError) \
                else " " + offline_advice(self._name)
            message = f"Could not download the weights: {exc}{advice}"
            show_error(f"I-MedSAM: {message}")
        for _, on_failed in waiting:
            on_failed(message)

    def _on_finished(self) -> None:
        """The worker ended (returned or not): drop it, close the bar, hide the row."""
        self._worker = None
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        self.setVisible(False)
