"""The one reader of the Segment dock's stored choices (``napari_imedsam.settings``)."""

from __future__ import annotations

from typing import Any

import pytest

from napari_imedsam.session_holder import ModelSpec
from napari_imedsam.settings import DECODERS, StoredChoices, read_choices


class DictStore:
    """Stands for QSettings: ``value(key, default)`` over a dict."""

    def __init__(self, **values: Any) -> None:
        self.values = values

    def value(self, key: str, default: Any = None, /) -> Any:
        return self.values.get(key, default)


def test_nothing_stored_gives_the_defaults():
    choices = read_choices(DictStore())
    assert choices == StoredChoices()
    assert choices.spec() == ModelSpec("medsam_lite", None, "auto", "auto")
    assert (choices.show_uncertainty, choices.zoom_preview, choices.zoom_boundary) == (
        True, True, False)


def test_stored_choices_are_read_as_the_dock_wrote_them():
    wording = next(text for text, value in DECODERS.items() if value == "sam")
    choices = read_choices(DictStore(model="/m/tiny.safetensors", adapter=" /a/x.safetensors ",
                                     device="cpu", decoder=wording, show_uncertainty="false",
                                     zoom_preview="false", zoom_boundary=True))
    assert choices.spec() == ModelSpec("/m/tiny.safetensors", "/a/x.safetensors", "cpu", "sam")
    assert choices.decoder_text == wording
    assert (choices.show_uncertainty, choices.zoom_preview, choices.zoom_boundary) == (
        False, False, True)


@pytest.mark.parametrize("stored, field, expected", [
    ({"model": "demo"}, "model", "medsam_lite"),  # retired: the default replaces it
    ({"model": "  "}, "model", "medsam_lite"),
    ({"model": None}, "model", "medsam_lite"),
    ({"adapter": ""}, "adapter", None),
    ({"device": "tpu"}, "device", "auto"),  # another version's device
    ({"decoder": "auto"}, "decoder", "auto"),  # not a wording the dock stores
    ({"decoder": "something else"}, "decoder", "auto"),
    ({"show_uncertainty": "maybe"}, "show_uncertainty", True),
    ({"zoom_boundary": "TRUE"}, "zoom_boundary", True),
])
def test_unknown_values_fall_back_to_the_default(stored, field, expected):
    assert getattr(read_choices(DictStore(**stored)), field) == expected
