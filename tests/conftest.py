"""Helpers shared by the test modules."""

from __future__ import annotations

from pathlib import Path

import pytest

import torch

from napari_imedsam.model import build_model
from napari_imedsam.train.data import LabeledImage
from napari_imedsam.train.engine import TrainConfig, train


def train_tiny(items: list[LabeledImage], path: Path) -> str:
    """The tiny variant trained from scratch for seconds on ``items`` (the last two
    validate); returns the full-scope model file."""
    torch.manual_seed(0)
    model = build_model("tiny")
    cfg = TrainConfig(mode="full", epochs=12, batch_size=4, points_per_sample=512,
                      val_label_size=48, device="cpu", precision="fp32", augment=False,
                      lr_base=1e-3, lr_decoder=3e-3)
    train(model, items[:-2], items[-2:], cfg, path)
    return str(path)


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Weights memo and exported encoders in a folder of the test run, not the user's
    cache (one folder for the whole run: exporting an encoder takes seconds)."""
    import os

    folder = tmp_path_factory.mktemp("imedsam-cache")
    old = os.environ.get("IMEDSAM_CACHE_DIR")
    os.environ["IMEDSAM_CACHE_DIR"] = str(folder)
    yield folder
    if old is None:
        os.environ.pop("IMEDSAM_CACHE_DIR", None)
    else:
        os.environ["IMEDSAM_CACHE_DIR"] = old


@pytest.fixture
def notes():
    """Notifications napari shows during a test, as (severity, message)."""
    from napari.utils.notifications import notification_manager

    seen: list[tuple[str, str]] = []

    def grab(notification) -> None:  # noqa: ANN001
        seen.append((str(notification.severity), str(notification.message)))

    notification_manager.notification_ready.connect(grab)
    yield seen
    notification_manager.notification_ready.disconnect(grab)


@pytest.fixture
def private_qsettings(tmp_path):
    """QSettings (the widgets' remembered choices) in a temporary folder, not the user's."""
    from qtpy.QtCore import QSettings

    folder = tmp_path / "settings"
    for fmt in (QSettings.Format.NativeFormat, QSettings.Format.IniFormat):
        QSettings.setPath(fmt, QSettings.Scope.UserScope, str(folder))
    return folder
