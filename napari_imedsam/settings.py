"""The Segment dock's remembered choices, read in one place (no Qt here).

The dock stores them with ``QSettings("napari-imedsam", "segment")``
(``widgets/segment/settings.py``); the Segment dock restores its fields from
them, and the Fine-tune dock reads them when no Segment dock is open. Both go
through :func:`read_choices`, so a stored value means the same to each: a value
this version does not know (a device or decoder of another version, the retired
``demo`` model) falls back to the default instead of reaching a model load.

Keys: ``model``, ``adapter``, ``device``, ``decoder`` (as the dock words it:
:data:`DECODERS`), ``show_uncertainty``, ``zoom_preview`` and ``zoom_boundary``
(``"true"``/``"false"``). The CT window is not stored: it belongs to each image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from .model.config import DEVICE_CHOICES
from .session_holder import MODEL_CHOICES, ModelSpec

#: The decoder choices as the dock words them (and stores them), and what they mean.
DECODERS = {"I-MedSAM (any resolution, uncertainty)": "auto",
            "base model's own decoder": "sam"}
#: Models of earlier versions that no longer exist: the default replaces them.
RETIRED_MODELS = ("demo",)


class Store(Protocol):
    """Where the choices are kept: ``QSettings`` in the dock, a dict-backed stand-in
    in tests. Only ``value(key, default)`` is read."""

    def value(self, key: str, default: Any = None, /) -> Any: ...


@dataclass(frozen=True)
class StoredChoices:
    """The Segment dock's choices as they were last stored, checked."""

    model: str = MODEL_CHOICES[0]
    adapter: str | None = None
    device: str = DEVICE_CHOICES[0]
    #: The decoder's meaning (``ModelSpec.decoder``: ``auto`` or ``sam``), not its wording.
    decoder: str = "auto"
    show_uncertainty: bool = True
    zoom_preview: bool = True
    zoom_boundary: bool = False

    def spec(self) -> ModelSpec:
        """The model these choices name (every class: the class is chosen per box)."""
        return ModelSpec(self.model, self.adapter, self.device, self.decoder)

    @property
    def decoder_text(self) -> str:
        """The decoder as the dock words it."""
        return next(text for text, value in DECODERS.items() if value == self.decoder)


def read_choices(store: Store) -> StoredChoices:
    """The choices in ``store``, each checked; unknown or missing values give the default."""
    default = StoredChoices()

    def text(key: str, fallback: str) -> str:
        value = store.value(key, fallback)
        return fallback if value is None else str(value).strip()

    def flag(key: str, fallback: bool) -> bool:
        # QSettings gives back "true"/"false" (INI, native) or a bool (some back ends).
        value = text(key, "true" if fallback else "false").lower()
        return fallback if value not in ("true", "false") else value == "true"

    model = text("model", default.model)
    device = text("device", default.device)
    decoder = DECODERS.get(text("decoder", ""), default.decoder)
    return StoredChoices(
        model=default.model if not model or model in RETIRED_MODELS else model,
        adapter=text("adapter", "") or None,
        device=device if device in DEVICE_CHOICES else default.device,
        decoder=decoder,
        show_uncertainty=flag("show_uncertainty", default.show_uncertainty),
        zoom_preview=flag("zoom_preview", default.zoom_preview),
        zoom_boundary=flag("zoom_boundary", default.zoom_boundary))
