"""The Fine-tune dock widget: train an adapter on the viewer's labels, use it at once.

Flow: the table pairs each Labels layer with its image; Train collects the
labelled objects (copies), measures the Segment widget's model on held-out
objects, trains a private copy of it in a napari thread worker (progress and
a live plot come back through a Qt signal), publishes the best adapter under
a new name and points the Segment widget at it. "Suggest what to correct
next" ranks the labelled slices by the model's uncertainty. The decisions
live in the Qt-free ``finetune``, ``adapter_store`` and ``suggest`` modules.
"""

from __future__ import annotations

import threading
from functools import partial
from pathlib import Path
from typing import Any

from napari.qt.threading import create_worker
from napari.utils import progress
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QObject, QSettings, Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QComboBox, QDockWidget, QDoubleSpinBox, QFormLayout, QFrame, QHBoxLayout,
    QLabel, QLineEdit, QMainWindow, QPushButton, QScrollArea, QSpinBox, QVBoxLayout, QWidget,
)

from ..common import browse
from . import link
from ... import adapter_store as store
from ... import finetune as ft
from ..common import with_button
from .data import DataBox, group, narrow
from .suggest import SuggestBox
from .plot import TrainingPlot
from ...model.config import DEVICE_CHOICES
from ...session_holder import MODEL_CHOICES, ModelSpec

MODES = {"quick: decoder only (CPU)": "decoder",
         "adapters: LoRA + frequency + decoder (GPU)": "adapters"}
START = ("the loaded adapter", "the base model (no adapter)")


def settings() -> QSettings:
    return QSettings("napari-imedsam", "finetune")


class _Bridge(QObject):
    """Carries engine callbacks from the worker thread to the GUI thread (queued)."""

    event = Signal(object)
    status = Signal(object, str)  # (the run it comes from, the text)


class _Run:
    """One press of Train: its stop flag, and whether Stop may still let it go.

    Until training begins (the data are read, the model loads, the starting model
    is measured) Stop lets the run go: the dock is idle at once, the worker's
    thread finishes by itself (a model load cannot be interrupted: 8 s measured)
    and what it returns is thrown away; :meth:`begin`, asked by the worker before
    it writes or trains anything, then says no. Once training began, Stop asks
    the engine to end after the current step, keeping the best adapter so far.
    """

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.stop = threading.Event()
        self.worker: Any = None
        self._lock = threading.Lock()  # begin (worker) and let_go (GUI) decide once
        self._training = False
        self._let_go = False

    def begin(self) -> bool:
        """The worker asks before it writes or trains anything: may it go on?"""
        with self._lock:
            if self._let_go or self.stop.is_set():
                return False
            self._training = True
            return True

    def let_go(self) -> bool:
        """Stop pressed: let the run go when it has not begun training (True), else ask
        it to stop after the current step (False)."""
        with self._lock:
            self.stop.set()
            self._let_go = not self._training
            return self._let_go


class FinetuneWidget(QWidget):
    """Dock widget: train on the viewer's labels, compare, and hand the result over."""

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        #: Set by scripts and tests; else the Segment widget is found among the docks.
        self.segment_widget: Any = None
        #: TrainConfig fields to override (tests use small numbers).
        self.train_overrides: dict[str, Any] = {}
        self.last_outcome: ft.FinetuneOutcome | None = None
        self._run: _Run | None = None  # the run in progress (a run let go is not)
        self._bar: Any = None
        self._bridge = _Bridge()
        self._bridge.event.connect(self._on_event)
        self._bridge.status.connect(self._on_status)
        self._build_ui()
        self.refresh_adapters()
        self._placed = False
        #: Whether placing it beside the Segment widget brings it to the front (opened
        #: from the Plugins menu: the user asked for it); ``imedsam gui --fine-tune``
        #: keeps the Segment widget in front, where the work starts.
        self.raise_when_placed = True

    def showEvent(self, event: Any) -> None:  # noqa: N802 (Qt's name)
        super().showEvent(event)
        if not self._placed:
            self._placed = True
            # Once napari has docked it: next to the Segment widget, as a tab.
            QTimer.singleShot(0, self.place_beside_segment)

    def place_beside_segment(self) -> None:
        """Share the Segment widget's dock area as a tab rather than squeeze under it:
        stacked, the Fine-tune widget got about 90 px, too little to see Train."""
        segment = self.find_segment_widget()
        mine, theirs = _dock_of(self), _dock_of(segment) if segment is not None else None
        main = mine.parentWidget() if mine is not None else None
        if theirs is None or not isinstance(main, QMainWindow) or mine is theirs:
            return
        if main.dockWidgetArea(mine) != main.dockWidgetArea(theirs) or \
                mine in main.tabifiedDockWidgets(theirs):
            return
        main.tabifyDockWidget(theirs, mine)
        mine.show()
        (mine if self.raise_when_placed else theirs).raise_()

    # -- UI --------------------------------------------------------------------------
    def _build_ui(self) -> None:
        self.data = DataBox(self.viewer, self.propagated_of)
        self.pairs_table = self.data.table

        self.mode_combo = QComboBox()
        self.mode_combo.addItems(list(MODES))
        self.epochs_spin = QSpinBox()
        self.epochs_spin.setRange(1, 1000)
        self.epochs_spin.setValue(20)
        self.minutes_spin = QDoubleSpinBox()
        self.minutes_spin.setRange(0.0, 1440.0)
        self.minutes_spin.setValue(10.0)
        self.minutes_spin.setSpecialValueText("no limit")
        self.minutes_spin.setToolTip("time limit of the run in minutes (0: no limit)")
        self.device_combo = QComboBox()
        self.device_combo.addItems(DEVICE_CHOICES)
        self.val_spin = QSpinBox()
        self.val_spin.setRange(0, 50)
        self.val_spin.setValue(20)
        self.val_spin.setSuffix(" %")
        self.start_combo = QComboBox()
        self.start_combo.addItems(list(START))
        self.out_edit = QLineEdit(str(settings().value("out_dir", str(store.default_adapter_dir()))))
        form = QFormLayout()
        form.addRow("mode", self.mode_combo)
        form.addRow("epochs", self.epochs_spin)
        form.addRow("minutes", self.minutes_spin)
        form.addRow("device", self.device_combo)
        form.addRow("held out", self.val_spin)
        form.addRow("start from", self.start_combo)
        form.addRow("save to", with_button(self.out_edit, "...", self._browse_out))
        self.train_button, self.stop_button = QPushButton("Train"), QPushButton("Stop")
        self.train_button.clicked.connect(self.start_training)
        self.stop_button.clicked.connect(self.stop)
        self.stop_button.setEnabled(False)
        buttons = QHBoxLayout()
        buttons.addWidget(self.train_button)
        buttons.addWidget(self.stop_button)
        self.plot = TrainingPlot()
        self.status = QLabel("ready")
        self.status.setWordWrap(True)
        self.result_label = QLabel("")
        self.result_label.setWordWrap(True)
        train_box = group("Training", form, buttons, self.plot, self.status, self.result_label)

        self.adapters = link.AdaptersBox(self)

        self.suggest = SuggestBox(self)
        # A scroll area: the widget is taller than a docked panel on small screens,
        # and squeezing its forms would make them unreadable.
        inner = QWidget()
        column = QVBoxLayout(inner)
        for box in (self.data, train_box, self.adapters, self.suggest):
            column.addWidget(box)
        column.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setWidget(inner)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(scroll)

        for combo in (self.mode_combo, self.device_combo, self.start_combo):
            narrow(combo)
        form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)  # narrow docks
        self.out_edit.editingFinished.connect(self._on_out_dir)

    def set_status(self, text: str) -> None:
        self.status.setText(text)

    @property
    def busy(self) -> bool:
        """True while training or ranking runs."""
        return self._run is not None or self.suggest.busy

    # -- data (the DataBox) -------------------------------------------------------------
    def refresh(self) -> None:
        """Bring the pairs table up to date with the layer list now."""
        self.data.refresh()

    def recount(self) -> tuple[int, int, list[str]]:
        """(objects, slices, problems) of the chosen data, shown in the summary."""
        return self.data.recount()

    def _browse_out(self) -> None:
        path = browse(self, "folder", "Folder for new adapters")
        if path:
            self.out_edit.setText(path)
            self._on_out_dir()

    def _on_out_dir(self) -> None:
        settings().setValue("out_dir", self.out_edit.text().strip())
        self.refresh_adapters()

    # -- the model the Segment widget uses ----------------------------------------------
    def find_segment_widget(self) -> Any:
        """The Segment widget of this viewer (or the one set by a script), if any."""
        return self.segment_widget or link.find_segment_widget(self.viewer)

    def propagated_of(self, labels: Any) -> dict[int, dict[int, set[bytes]]]:
        """What the Segment widget's propagation wrote into ``labels`` (its own masks
        layer), or nothing: object id -> {plane: fingerprints}."""
        segment = self.find_segment_widget()
        return {} if segment is None else segment.propagated_of(labels)

    def model_source(self) -> tuple[ModelSpec, Any, str | None]:
        """(spec, pinned model or None, CT window) the Segment widget segments with."""
        return link.model_source(self.find_segment_widget())

    # -- training --------------------------------------------------------------------------
    def start_training(self) -> None:
        """Check the data, then train in a thread worker."""
        if self.busy:
            show_info("I-MedSAM: a run is in progress; stop it first")
            return
        try:
            objects, _slices, problems = self.recount()
            pairs = self.data.pairs()
            if problems:
                raise ft.DataError(problems[0])
            folder = self.data.folder()
            if folder is not None and not (Path(folder) / "images").is_dir():
                raise ft.DataError(f"{folder} has no images/ folder (expected images/ and masks/)")
            if objects == 0 and folder is None:
                raise ft.DataError(
                    "no labelled objects to train on: paint objects into a Labels layer (or "
                    "segment them with the Segment widget) and tick its row in the table")
            try:
                classes = self.data.classes()
            except ValueError as exc:
                raise ft.DataError(f"classes: {exc}") from None
        except ft.DataError as exc:
            show_error(f"I-MedSAM: {exc}")
            self.set_status(f"cannot train: {exc}")
            return
        spec, pinned, window = self.model_source()
        adapter = spec.adapter if self.start_combo.currentText() == START[0] else None
        # A decoder that is already trained must not have its positional encoding
        # faded back in, nor its loss re-weighted from coarse-only: that would undo it.
        trained = pinned is not None or adapter is not None or spec.name == MODEL_CHOICES[0] \
            or spec.name.endswith(".safetensors")
        fields = self._train_fields(trained, classes is not None)
        job = dict(
            load_model=partial(link.load_start_model, spec.name, adapter, pinned),
            collect=partial(ft.collect_all, pairs, self.data.slice_choice(), window, folder),
            val_share=self.val_spin.value() / 100.0,
            out_dir=Path(self.out_edit.text().strip() or store.default_adapter_dir()),
            stem=store.adapter_stem(spec.name),
            extra={"finetune": {"model": spec.name, "started_from": adapter,
                                "mode": fields["mode"], "folder": folder,
                                "layers": [[p.image_name, p.labels_name] for p in pairs]}},
            classes=classes)
        # Each run its own stop flag: a run let go keeps its own, set, while the next runs.
        run = _Run(spec)
        self.plot.clear()
        self.result_label.setText("")
        self.set_status("starting: loading the model...")

        def should_stop() -> bool:  # the Stop button, or napari closing (worker.quit())
            return run.stop.is_set() or bool(run.worker is not None
                                              and run.worker.abort_requested)

        worker = create_worker(ft.train_body, job, fields, on_progress=self._bridge.event.emit,
                               should_stop=should_stop, may_train=run.begin,
                               on_status=partial(self._bridge.status.emit, run),
                               _start_thread=False)
        run.worker = worker
        worker.returned.connect(partial(self._on_returned, run))
        worker.finished.connect(partial(self._on_finished, run))
        self._run = run
        self._set_running(True)
        worker.start()

    def _train_fields(self, trained_decoder: bool, classes: bool = False) -> dict[str, Any]:
        """TrainConfig fields as chosen (the config is built in the worker, after torch)."""
        fields: dict[str, Any] = dict(
            mode=MODES[self.mode_combo.currentText()], epochs=self.epochs_spin.value(),
            device=self.device_combo.currentText(), val_label_size=128,
            time_budget_s=self.time_budget(), box_jitter_px=ft.FINETUNE_BOX_JITTER_PX)
        if trained_decoder:
            fields.update(coarse_to_fine_epochs=0.0, pe_warmup_epochs=0.0)
        if classes:  # heads for classes learn with these (measured: ft.CLASS_LR_DECODER)
            fields.update(lr_decoder=ft.CLASS_LR_DECODER, points_per_sample=ft.CLASS_POINTS)
        fields.update(self.train_overrides)
        return fields

    def stop(self) -> None:
        """End the run: at once before training began (nothing is saved), else after
        the current step, keeping the best adapter so far."""
        self.suggest.stop()
        run = self._run
        if run is None:
            return
        if not run.let_go():
            self.set_status("stopping after this step (the best adapter so far is kept)...")
            return
        # Its thread may still be loading the model: it finishes in the background,
        # trains nothing, writes nothing, and what it returns is thrown away.
        self._end_run()
        self._on_outcome(run.spec, ft.FinetuneOutcome(
            stopped=True, stop_reason="stopped before training began"))

    def _on_status(self, run: _Run, text: str) -> None:
        if run is self._run:  # a run let go says nothing more
            self.set_status(text)

    def _set_running(self, running: bool) -> None:
        self.train_button.setEnabled(not running)
        self.stop_button.setEnabled(running)

    def _on_event(self, event: Any) -> None:
        total = event.epochs * event.steps_per_epoch
        if event.kind == "step":
            done = event.epoch * event.steps_per_epoch + event.step
            self.plot.add_loss(event.epoch + event.step / event.steps_per_epoch, event.loss)
            if self._bar is None:
                self._bar = progress(total=total, desc="I-MedSAM fine-tune")
            left = ft.time_left(event.elapsed_s, done, total, self.time_budget())
            text = (f"epoch {event.epoch + 1}/{event.epochs}, step {event.step}/"
                    f"{event.steps_per_epoch}, loss {event.loss:.3f}, "
                    f"about {ft.format_duration(left)} left")
            self._bar.set_description(f"Fine-tune: {text}")
            self._bar.update(1)
            self.set_status(text)
        elif event.kind == "start" and event.val_dice is not None:
            self.plot.add_dice(0, event.val_dice)
            self.set_status(f"starting model: validation Dice {event.val_dice:.3f}; training...")
        elif event.kind == "epoch" and event.val_dice is not None:
            self.plot.add_dice(event.epoch + 1, event.val_dice)
            self.set_status(f"epoch {event.epoch + 1}: validation Dice {event.val_dice:.3f} "
                            f"(best {event.best_val_dice:.3f})")

    def time_budget(self) -> float | None:
        """The time limit in seconds, or None (0 minutes means no limit)."""
        minutes = self.minutes_spin.value()
        return minutes * 60.0 if minutes > 0 else None

    def _on_returned(self, run: _Run, outcome: ft.FinetuneOutcome) -> None:
        if run is self._run:  # a run let go by Stop hands nothing over
            self._on_outcome(run.spec, outcome)

    def _on_outcome(self, spec: ModelSpec, outcome: ft.FinetuneOutcome) -> None:
        self.last_outcome = outcome
        self.result_label.setText(outcome.summary())
        if outcome.error:
            show_error(f"I-MedSAM: {outcome.error}")
            self.set_status("training failed")
            return
        if outcome.adapter is None:
            if outcome.stop_reason == "stopped before training began":
                show_info("I-MedSAM: stopped before training began; nothing was saved")
            else:
                show_warning("I-MedSAM: training stopped before its first step, so nothing "
                             "was saved; press Train to start again")
            self.set_status("stopped: nothing saved")
            return
        note = f"new adapter {outcome.adapter.name}: {outcome.summary()}"
        if outcome.stop_reason == "stopped":
            note = "stopped; kept the best adapter so far. " + note
        if outcome.after is None:
            # Stopped before its first validation: kept, but not measured, so not used.
            outcome.model = None
            self.refresh_adapters(select=outcome.adapter)
            show_warning(f"I-MedSAM: stopped before the first validation: {outcome.adapter.name} "
                         "keeps what was trained but was not measured, so the Segment widget "
                         "keeps its model (Use selected, in the list, to try it).")
            self.set_status("stopped before any validation: the new adapter is saved, not used")
            return
        if outcome.worse:
            # A worse model never replaces the one the user was segmenting with.
            outcome.model = None
            self.refresh_adapters(select=outcome.adapter)
            show_warning(f"I-MedSAM: {note}. It scores lower than the starting model, so the "
                         "Segment widget keeps the starting model; the new adapter is in the "
                         "list (Use selected) if you want it anyway. More or more varied "
                         "labels usually help.")
            self.set_status("done: the starting model scored higher and stays in use")
            return
        try:
            link.hand_over(self.find_segment_widget(), outcome.adapter, spec.name, outcome.model)
        except Exception as exc:  # noqa: BLE001 - the file is saved; say how to use it
            show_error(f"I-MedSAM: {outcome.adapter.name} was saved but could not be loaded "
                       f"into the Segment widget ({exc}); choose it there under adapter")
        outcome.model = None  # the Segment widget has it (pinned) or reloads the file
        self.refresh_adapters(select=outcome.adapter)
        show_info(f"I-MedSAM: {note}. The Segment widget uses it from the next box.")
        self.set_status(f"done: the Segment widget now uses {outcome.adapter.name}")

    def refresh_adapters(self, select: Path | None = None) -> None:
        """List the adapters in the output folder, newest first."""
        self.adapters.refresh(self.out_edit.text().strip(), select)

    def _on_finished(self, run: _Run) -> None:
        if run is self._run:
            self._end_run()

    def _end_run(self) -> None:
        """The dock is idle again: Train can start the next run."""
        self._run = None
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._set_running(False)


def _dock_of(widget: QWidget) -> QDockWidget | None:
    """The dock widget that holds ``widget`` (napari wraps each plugin widget in one)."""
    parent = widget.parentWidget()
    while parent is not None and not isinstance(parent, QDockWidget):
        parent = parent.parentWidget()
    return parent


