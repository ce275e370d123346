"""The Segment widget's model settings: fields, file pickers and persistence.

Kept apart from the widget's layer and worker logic; the values persist with
``QSettings("napari-imedsam", "segment")`` so a restarted napari comes back
with the same model, adapter, decoder, device and uncertainty toggle. The CT
window is not among them: it belongs to each image (a window remembered from a
CT scan must not follow the user to a photograph). What is stored is read by
``napari_imedsam.settings.read_choices`` only (the Fine-tune dock reads it too).
"""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import QSettings
from qtpy.QtWidgets import (
    QCheckBox, QComboBox, QFormLayout, QHBoxLayout, QLabel, QLineEdit, QWidget,
)

from ..common import browse, with_button
from ...model.config import DEVICE_CHOICES
from ...session_holder import MODEL_CHOICES, ModelSpec
from ...settings import DECODERS, StoredChoices, read_choices

from ...inference.intensity import CT_WINDOWS

#: Where a box's mask goes with a model of several classes.
LABELLING = {"new object id per box": "instance", "the class's label value": "semantic"}


def settings() -> QSettings:
    """Where the widget's choices are stored between sessions."""
    return QSettings("napari-imedsam", "segment")


def stored_choices() -> StoredChoices:
    """The choices stored last, checked (the one reader: ``napari_imedsam.settings``)."""
    return read_choices(settings())


class SettingsForm(QWidget):
    """Model, adapter, decoder, device, CT window and "show uncertainty", remembered."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model_combo = QComboBox()
        self.model_combo.setEditable(True)  # a typed path is a local checkpoint
        self.model_combo.addItems(MODEL_CHOICES)
        self.model_combo.setToolTip(
            "medsam_lite: LiteMedSAM with our I-MedSAM decoder (offline, the default); SAM "
            "vit_b/l/h (downloaded on first use); or a local .pth / .safetensors file")
        self.adapter_edit = QLineEdit()
        self.adapter_edit.setPlaceholderText("the model's own (medsam_lite: shipped)")
        self.adapter_edit.setToolTip("an I-MedSAM adapter (.safetensors) for the chosen model, "
                                     "e.g. one trained in the Fine-tune widget")
        self.decoder_combo = QComboBox()
        self.decoder_combo.addItems(list(DECODERS))
        self.decoder_combo.setToolTip(
            "I-MedSAM: the implicit decoder (masks at any resolution, uncertainty); base "
            "model: the backbone's own mask decoder (LiteMedSAM's / SAM's)")
        self.device_combo = QComboBox()
        self.device_combo.addItems(DEVICE_CHOICES)
        self.window_combo = QComboBox()
        self.window_combo.addItems(["none", *CT_WINDOWS])
        self.window_combo.setToolTip("CT intensity window applied before the encoder (HU data)")
        self.show_unc = QCheckBox("show uncertainty")
        self.show_unc.setChecked(True)
        # Shown for a model with several classes only (see set_classes).
        self.classes: tuple[Any, ...] = ()
        self.class_combo = QComboBox()
        self.class_combo.setToolTip("the class (decoder head) that answers the next box; "
                                    "Shift+K cycles through them (boxes layer active)")
        self.labelling_combo = QComboBox()
        self.labelling_combo.addItems(list(LABELLING))
        self.labelling_combo.setToolTip(
            "instance: each box's mask gets a new object id; semantic: the mask gets its "
            "class's label value (all objects of a class share it)")
        self.class_row = QWidget()
        row = QHBoxLayout(self.class_row)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.class_combo, 1)
        row.addWidget(self.labelling_combo, 1)
        self.class_label = QLabel("class")

        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("model", with_button(self.model_combo, "...", self._browse_model))
        form.addRow("adapter", with_button(self.adapter_edit, "...", self._browse_adapter))
        form.addRow("decoder", self.decoder_combo)
        form.addRow("device", self.device_combo)
        form.addRow("CT window", self.window_combo)
        form.addRow(self.class_label, self.class_row)
        form.addRow("", self.show_unc)
        self.set_classes(())

        self._restoring = False
        self.restore()
        for signal in (self.model_combo.currentTextChanged, self.adapter_edit.editingFinished,
                       self.device_combo.currentTextChanged,
                       self.decoder_combo.currentTextChanged, self.show_unc.toggled):
            signal.connect(self.save)

    def spec(self) -> ModelSpec:
        """The model the next request will use."""
        name = self.model_combo.currentText().strip() or MODEL_CHOICES[0]
        adapter = self.adapter_edit.text().strip() or None
        decoder = DECODERS.get(self.decoder_combo.currentText(), "auto")
        head = self.class_combo.currentIndex() if len(self.classes) > 1 else None
        return ModelSpec(name, adapter, self.device_combo.currentText(), decoder,
                         None if head is None or head < 0 else head)

    def set_classes(self, classes: tuple[Any, ...]) -> None:
        """Offer ``classes`` (``ClassInfo``); the row shows only for two or more. The
        chosen class stays chosen when a class of that name is still there."""
        current = self.class_combo.currentText()
        self.classes = tuple(classes)
        self.class_combo.blockSignals(True)
        self.class_combo.clear()
        self.class_combo.addItems([f"{c.name} ({c.value})" for c in self.classes])
        index = self.class_combo.findText(current)
        self.class_combo.setCurrentIndex(max(index, 0))
        self.class_combo.blockSignals(False)
        several = len(self.classes) > 1
        self.class_row.setVisible(several)
        self.class_label.setVisible(several)

    def cycle_class(self, step: int = 1) -> str | None:
        """Choose the next class (keyboard cycling); its name, or None with one class."""
        if len(self.classes) < 2:
            return None
        index = (self.class_combo.currentIndex() + step) % len(self.classes)
        self.class_combo.setCurrentIndex(index)
        return self.classes[index].name

    def semantic(self) -> bool:
        """Masks go to their class's label value (rather than a new object id each)."""
        return len(self.classes) > 1 and LABELLING[self.labelling_combo.currentText()] == "semantic"

    def window(self) -> str | None:
        """The CT window of the current image, or None."""
        text = self.window_combo.currentText()
        return None if text == "none" else text

    def show_window(self, window: str | None, image: Any) -> None:
        """Show an image's own CT window; a colour image cannot have one."""
        from ...inference.intensity import is_grey

        colour = bool(getattr(image, "rgb", False)) and not _looks_grey(image, is_grey)
        self.window_combo.blockSignals(True)
        self.window_combo.setCurrentText("none" if colour or window is None else window)
        self.window_combo.blockSignals(False)
        self.window_combo.setEnabled(not colour)
        self.window_combo.setToolTip(
            "this image has colour: a CT window applies to grey (CT) images only" if colour
            else "CT intensity window applied before the encoder (HU data); it belongs to "
                 "this image")

    def restore(self) -> None:
        """Load the stored choices (unknown stored values fall back to the defaults)."""
        self._restoring = True  # each field set below would otherwise save all the others
        try:
            stored = stored_choices()
            self.model_combo.setCurrentText(stored.model)
            self.adapter_edit.setText(stored.adapter or "")
            self.device_combo.setCurrentText(stored.device)
            self.decoder_combo.setCurrentText(stored.decoder_text)
            self.show_unc.setChecked(stored.show_uncertainty)
        finally:
            self._restoring = False

    def save(self, *_: Any) -> None:
        """Store the current choices."""
        if self._restoring:
            return
        s = settings()
        s.setValue("model", self.model_combo.currentText())
        s.setValue("adapter", self.adapter_edit.text())
        s.setValue("device", self.device_combo.currentText())
        s.setValue("decoder", self.decoder_combo.currentText())
        s.setValue("show_uncertainty", "true" if self.show_unc.isChecked() else "false")

    def _browse_model(self) -> None:
        path = browse(self, "open", "Model checkpoint", filters="Models (*.pth *.pt *.safetensors)")
        if path:
            self.model_combo.setCurrentText(path)

    def _browse_adapter(self) -> None:
        path = browse(self, "open", "Adapter", filters="Adapters (*.safetensors)")
        if path:
            self.adapter_edit.setText(path)
            self.save()


def _looks_grey(image: Any, is_grey: Any) -> bool:
    """Whether an RGB layer holds grey pixels (CT saved as RGB), from a sample of rows."""
    data = image.data[-1] if getattr(image, "multiscale", False) else image.data
    step = max(1, data.shape[-3] // 64)
    return is_grey(__import__("numpy").asarray(data[..., ::step, :, :]))
