"""Packaging: cheap import, napari manifest, the ``imedsam`` command line."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from napari_imedsam.cli import main


def test_import_is_cheap():
    code = "import sys, napari_imedsam; print('torch' in sys.modules, 'qtpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_clicks_are_read_on_the_main_thread_without_torch():
    """The widget reads clicks on napari's main thread, after OpenGL is up: importing
    torch there (before ``model.torch_guard``) crashed the viewer under Xvfb when
    ``Clicks`` lived beside the session. Reading clicks must not import torch."""
    code = (
        "import sys, numpy as np\n"
        "from napari.layers import Image, Points\n"
        "from napari_imedsam.widgets import layers as wl\n"
        "from napari_imedsam.export import ObjectBox\n"
        "image = Image(np.zeros((20, 20)))\n"
        "points = Points(np.array([[5.0, 6.0]]), features={'box_key': [3], 'positive': [True],"
        " 'order': [1]})\n"
        "clicks = wl.clicks_of(points, image, 3, None)\n"
        "again = ObjectBox(1, (0, 0, 9, 9), clicks=(((1.5, 2.5),), (0,))).prompt_clicks()\n"
        "print(clicks.xy.tolist(), again.labels.tolist(), 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[0] == "[[6.5, 5.5]] [0] False"


def test_model_package_imports_neither_qt_nor_napari():
    code = (
        "import sys; import napari_imedsam.model as m; m.build_model('tiny');"
        "print(any(k.split('.')[0] in ('napari', 'qtpy', 'PyQt6', 'PyQt5', 'PySide6', 'magicgui')"
        " for k in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


PACKAGE = Path(__file__).resolve().parent.parent / "napari_imedsam"


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside functions, made absolute."""
    module = ".".join(("napari_imedsam", *path.relative_to(PACKAGE).with_suffix("").parts))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    package = package.removesuffix(".__init__")
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # maybe modules
    return found


def _part(module: str) -> str | None:
    """``napari_imedsam.model.build`` -> ``model``; None outside the package."""
    parts = module.split(".")
    return parts[1] if parts[0] == "napari_imedsam" and len(parts) > 1 else None


def test_layering_of_the_package():
    """The README's "Layout": Qt only in widgets/; model/ uses only io and saving;
    inference/ only model/, io and saving; train/ only those and inference/."""
    allowed = {"model": {"model", "io", "saving"},
               "inference": {"inference", "model", "io", "saving"},
               "train": {"train", "model", "io", "saving", "inference"}}
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 40
    problems = []
    for path in files:
        part = path.relative_to(PACKAGE).parts[0]
        imports = _imports(path)
        if part != "widgets":
            qt = [m for m in imports if m.split(".")[0] in ("qtpy", "PyQt5", "PyQt6", "PySide2",
                                                            "PySide6")
                  or m.startswith("napari.qt") or m.startswith("napari._qt")]
            problems += [f"{path.name} imports {m}" for m in qt]
        if part in allowed:
            # Names imported from a module count as that module (e.g. ``Box`` of regions).
            used = {_part(m) for m in imports} - {None}
            used = {p for p in used if (PACKAGE / p).exists() or (PACKAGE / f"{p}.py").exists()}
            problems += [f"{part}/{path.name} imports {p}" for p in used - allowed[part]]
    assert not problems, problems


def test_widgets_are_the_only_qt_modules_and_all_of_them_live_there():
    """Every module that imports qtpy is under widgets/ (the test above), and the
    manifest's widgets come from there."""
    manifest = (PACKAGE / "napari.yaml").read_text()
    assert "napari_imedsam.widgets.segment.widget:SegmentWidget" in manifest
    assert "napari_imedsam.widgets.finetune.widget:FinetuneWidget" in manifest
    flat = [p.name for p in PACKAGE.glob("_*.py")]
    assert sorted(flat) == ["__init__.py", "_reader.py", "_sample_data.py", "_writer.py"]


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


def test_wheel_holds_the_manifest_and_the_default_models_adapter(tmp_path):
    """The installed wheel, not only the editable checkout, carries what napari needs:
    built offline from a copy of the working tree (a stale build/ cannot leak in)."""
    import shutil
    import zipfile
    from pathlib import Path

    from npe2 import PluginManifest

    root = Path(__file__).resolve().parent.parent
    src = tmp_path / "src"
    shutil.copytree(root / "napari_imedsam", src / "napari_imedsam",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-index",
                    "--no-build-isolation", "-q", "-w", str(tmp_path / "dist")],
                   check=True, capture_output=True, text=True)
    [wheel] = (tmp_path / "dist").glob("napari_imedsam-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        entry_points = z.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
        (tmp_path / "napari.yaml").write_bytes(z.read("napari_imedsam/napari.yaml"))
    assert "napari_imedsam/resources/medsam_lite.safetensors" in names
    assert "napari_imedsam/resources/medsam_lite.json" in names
    assert not any("demo" in n for n in names)
    assert "[napari.manifest]" in entry_points
    assert "napari-imedsam = napari_imedsam:napari.yaml" in entry_points
    manifest = PluginManifest.from_file(tmp_path / "napari.yaml")  # schema-validated
    assert manifest.name == "napari-imedsam"
    for command in manifest.contributions.commands:  # every command's module is shipped
        module = command.python_name.split(":")[0]
        assert module.replace(".", "/") + ".py" in names, command.python_name
    assert {r.command for r in manifest.contributions.readers} == {
        "napari-imedsam.get_nifti_reader", "napari-imedsam.get_dicom_reader"}
    assert [w.command for w in manifest.contributions.writers] == ["napari-imedsam.write_labels"]


def test_readme_layout_matches_the_tree():
    """The README's map names every module and package there is, and nothing else."""
    import re

    readme = (PACKAGE.parent / "README.md").read_text()
    section = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    block = section.split("```", 2)[1]
    top = {p.name for p in PACKAGE.iterdir()
           if (p.suffix in (".py", ".yaml") or (p / "__init__.py").exists())}
    named = set(re.findall(r"[\w.]+\.(?:py|yaml)\b", block)) | {
        d for d in re.findall(r"(?m)^\s*(\w+)/", block)}
    assert {n for n in top if n not in ("__init__.py",)} - named == set()
    everything = {p.name for p in PACKAGE.rglob("*.py")} | {p.name for p in PACKAGE.rglob("*")
                                                           if p.is_dir()} | {"napari.yaml"}
    assert {n for n in named if n not in ("napari_imedsam", "tests")} - everything == set()
    for dock in ("segment", "finetune"):  # their sections are listed by name
        for module in (PACKAGE / "widgets" / dock).glob("*.py"):
            if module.stem != "__init__":
                assert module.stem in block, f"widgets/{dock}/{module.name} is not in the map"
    assert (PACKAGE.parent / "tests" / "widgets" / "segment").is_dir()
