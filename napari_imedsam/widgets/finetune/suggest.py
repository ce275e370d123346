"""The Fine-tune widget's "Suggest what to correct next" box.

"Rank by uncertainty" scores every labelled image and slice of the ticked
pairs with the Segment widget's model (in a thread worker, with a model of its
own so the Segment widget's worker is never shared); "Go to the next most
uncertain" moves the viewer there: the slice for volumes, the layer pair
(shown, others of the ranking hidden) for 2D images; its Labels layer becomes
active so the brush is ready.
"""

from __future__ import annotations

import threading
from typing import Any

from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import QGroupBox, QHBoxLayout, QLabel, QPushButton, QVBoxLayout

from ... import suggest as sg
from ...session_holder import SessionHolder
from ...finetune import DataError


class SuggestBox(QGroupBox):
    """Rank the labelled slices/images by uncertainty; step through them."""

    def __init__(self, owner: Any) -> None:
        super().__init__("Suggest what to correct next")
        self.owner = owner  # the FinetuneWidget: its table, viewer and model source
        self.suggestions: sg.Suggestions | None = None
        self.position = -1
        self._holder = SessionHolder()
        self._worker: Any = None
        self._stop = threading.Event()
        self.rank_button = QPushButton("Rank by uncertainty")
        self.next_button = QPushButton("Next most uncertain")
        self.next_button.setToolTip("go to the next most uncertain image or slice")
        self.next_button.setEnabled(False)
        self.rank_button.clicked.connect(self.rank)
        self.next_button.clicked.connect(self.go_next)
        self.label = QLabel("ranks the labelled images and slices by the model's mean "
                            "uncertainty inside its predicted objects")
        self.label.setWordWrap(True)
        row = QHBoxLayout()
        row.addWidget(self.rank_button)
        row.addWidget(self.next_button)
        layout = QVBoxLayout(self)
        layout.addLayout(row)
        layout.addWidget(self.label)

    @property
    def busy(self) -> bool:
        return self._worker is not None

    def stop(self) -> None:
        self._stop.set()

    def rank(self) -> None:
        """Score the ticked pairs in a thread worker."""
        if self.busy or self.owner.busy:
            show_info("I-MedSAM: wait for the current run to finish, or stop it")
            return
        try:
            self.owner.recount()  # takes in layer changes still pending
            pairs = self.owner.pairs_table.pairs(self.owner.viewer)
            if not pairs:
                raise DataError("tick at least one Labels layer with objects in the table")
        except DataError as exc:
            show_error(f"I-MedSAM: cannot rank: {exc}")
            return
        spec, pinned, window = self.owner.model_source()
        self._holder.pinned = pinned
        self._stop.clear()

        def session_for() -> Any:
            # This holder is the ranking's own (one worker at a time), so its session's
            # default decoder and class are not shared with any other thread.
            session = self._holder.load(spec)
            session.use_decoder(spec.decoder)
            session.use_class(spec.head)
            return session

        worker = create_worker(sg.rank_body, session_for, pairs, window, self._stop.is_set,
                               _start_thread=False)
        worker.returned.connect(self._on_ranked)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self.rank_button.setEnabled(False)
        self.label.setText("ranking (the model predicts every labelled object)...")
        worker.start()

    def _on_finished(self) -> None:
        self._worker = None
        self.rank_button.setEnabled(True)

    def _on_ranked(self, result: sg.Suggestions | str) -> None:
        if isinstance(result, str):
            show_error(f"I-MedSAM: {result}")
            self.label.setText(result)
            return
        self.suggestions, self.position = result, -1
        self.next_button.setEnabled(len(result) > 0)
        top = ", ".join(f"{_where(o)} {s:.2g}" for o, s in result.ranked[:3])
        self.label.setText(f"ranked {len(result)} images/slices; most uncertain: {top}")

    def go_next(self) -> None:
        """Move the viewer to the next most uncertain image or slice (wrapping around)."""
        if not self.suggestions:
            show_info("I-MedSAM: rank by uncertainty first")
            return
        viewer = self.owner.viewer
        self.position = (self.position + 1) % len(self.suggestions)
        origin, score = self.suggestions.ranked[self.position]
        if origin.labels_name not in viewer.layers or origin.image_name not in viewer.layers:
            show_warning(f"I-MedSAM: the layers of {_where(origin)} were removed; rank again")
            return
        labels, image = viewer.layers[origin.labels_name], viewer.layers[origin.image_name]
        if origin.plane is not None:
            world = labels.data_to_world((origin.plane, *([0] * (labels.ndim - 1))))
            viewer.dims.set_point(viewer.dims.ndim - labels.ndim, world[0])
        else:
            # 2D images of a data set lie on top of each other: show only this pair.
            ranked = {name for o, _ in self.suggestions.ranked
                      for name in (o.image_name, o.labels_name)}
            for layer in viewer.layers:
                if layer.name in ranked:
                    layer.visible = layer.name in (origin.image_name, origin.labels_name)
            viewer.reset_view()  # images of a data set differ in size
        image.visible = labels.visible = True
        viewer.layers.selection.active = labels
        self.label.setText(f"{self.position + 1}/{len(self.suggestions)}: {_where(origin)} "
                           f"(mean uncertainty {score:.2g}); correct it with the brush")


def _where(origin: Any) -> str:
    return origin.image_name if origin.plane is None else \
        f"{origin.image_name} slice {origin.plane}"


