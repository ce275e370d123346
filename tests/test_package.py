"""Packaging: cheap import, napari manifest, the ``imedsam`` command line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from napari_imedsam.cli import main


def test_import_is_cheap():
    code = "import sys, napari_imedsam; print('torch' in sys.modules, 'qtpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_model_package_imports_neither_qt_nor_napari():
    code = (
        "import sys; import napari_imedsam.model as m; m.build_model('tiny');"
        "print(any(k.split('.')[0] in ('napari', 'qtpy', 'PyQt6', 'PyQt5', 'PySide6', 'magicgui')"
        " for k in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_manifest_is_found_through_the_entry_point():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-imedsam")
    assert manifest.name == "napari-imedsam"
    assert manifest.display_name == "I-MedSAM"


@pytest.mark.parametrize("classes, low, high", [(1, 1.52e6, 1.68e6), (13, 3.15e6, 3.85e6)])
def test_params_json(capsys, classes, low, high):
    assert main(["params", "--variant", "vit_b", "--classes", str(classes), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert low <= report["trainable"] <= high
    assert report["trainable"] == sum(report["parts"].values())
    assert report["parts"]["lora"] == 147_456


def test_params_text_and_errors(capsys):
    assert main(["params", "--variant", "vit_b"]) == 0
    out = capsys.readouterr().out
    assert "1,575,518" in out and "frequency_adapter" in out
    assert main(["params", "--variant", "vit_b", "--frequency", "off", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["parts"]["frequency_adapter"] == 0
    assert main(["params", "--variant", "vit_b", "--input-size", "100"]) == 2
    assert "input_size" in capsys.readouterr().err


def test_console_script_runs():
    out = subprocess.run(
        [sys.executable, "-m", "napari_imedsam.cli", "weights", "list"],
        capture_output=True, text=True, check=True,
    )
    assert "sam_vit_b_01ec64.pth" in out.stdout
