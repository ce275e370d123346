"""The Segment dock's settings form and the Fine-tune dock read stored choices alike."""

from __future__ import annotations

import pytest

pytest.importorskip("pytestqt")

from napari_imedsam.widgets.finetune import link  # noqa: E402
from napari_imedsam.widgets.segment.settings import SettingsForm, settings  # noqa: E402

pytestmark = pytest.mark.usefixtures("private_qsettings")


@pytest.mark.parametrize("stored", [
    {},
    {"model": "demo", "device": "tpu", "decoder": "no such decoder"},
    {"model": "/m/tiny.safetensors", "adapter": "/a/x.safetensors", "device": "cpu",
     "decoder": "base model's own decoder", "show_uncertainty": "false"},
])
def test_the_form_and_the_finetune_dock_read_the_same_choices(qtbot, stored):
    s = settings()
    for key, value in stored.items():
        s.setValue(key, value)
    s.sync()
    form = SettingsForm()
    qtbot.addWidget(form)
    spec, pinned, window = link.model_source(None)  # no Segment dock open
    assert form.spec() == spec and pinned is None and window is None
    assert form.show_unc.isChecked() == (stored.get("show_uncertainty") != "false")
