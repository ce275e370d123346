"""The contract between the Segment dock and its sections (``widgets/segment/dock.py``)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_imedsam.widgets.segment.dock import SegmentDock  # noqa: E402

SEGMENT = Path(__file__).resolve().parents[3] / "napari_imedsam" / "widgets" / "segment"
SECTIONS = ("clicks", "edits", "export", "follow", "propagate", "series", "uncertainty", "zoom")
#: What the sections call the dock: ``self.widget``, a parameter, or a local copy of either.
DOCK_NAMES = ("widget", "segment_widget")

pytestmark = pytest.mark.usefixtures("private_qsettings")


def _is_dock(node: ast.AST, aliases: set[str]) -> bool:
    if isinstance(node, ast.Attribute) and node.attr == "widget":
        return isinstance(node.value, ast.Name) and node.value.id == "self"
    return isinstance(node, ast.Name) and node.id in aliases


def _dock_uses(path: Path) -> set[str]:
    """Every name a section module reads or calls on the dock."""
    used: set[str] = set()
    for function in ast.walk(ast.parse(path.read_text())):
        if not isinstance(function, ast.FunctionDef):
            continue
        aliases = {a.arg for a in function.args.args if a.arg in DOCK_NAMES}
        for node in ast.walk(function):  # w = self.widget; state, w = ..., self.widget
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    pairs = (zip(target.elts, node.value.elts) if isinstance(target, ast.Tuple)
                             and isinstance(node.value, ast.Tuple) else [(target, node.value)])
                    aliases |= {t.id for t, v in pairs
                                if isinstance(t, ast.Name) and _is_dock(v, aliases)}
        for node in ast.walk(function):
            if isinstance(node, ast.Attribute) and _is_dock(node.value, aliases):
                used.add(node.attr)
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                    and node.func.id in ("getattr", "hasattr") and _is_dock(node.args[0], aliases):
                used.add(node.args[1].value)
    return used


def _protocol_members() -> set[str]:
    tree = ast.parse((SEGMENT / "dock.py").read_text())
    [protocol] = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SegmentDock"]
    return {n.target.id for n in protocol.body if isinstance(n, ast.AnnAssign)} | {
        n.name for n in protocol.body if isinstance(n, ast.FunctionDef)}


def test_the_sections_use_exactly_what_the_protocol_names():
    used = {name: _dock_uses(SEGMENT / f"{name}.py") for name in SECTIONS}
    members = _protocol_members()
    beyond = {section: sorted(names - members) for section, names in used.items()
              if names - members}
    assert not beyond, f"sections use the dock beyond SegmentDock: {beyond}"
    assert members - set().union(*used.values()) == set(), "SegmentDock names unused members"
    # Each section takes the dock typed as the protocol.
    for name in SECTIONS:
        assert "widget: SegmentDock" in (SEGMENT / f"{name}.py").read_text(), name


def test_the_segment_widget_is_a_segment_dock(make_napari_viewer):
    from napari_imedsam.widgets.segment.widget import SegmentWidget

    viewer = make_napari_viewer()
    widget = SegmentWidget(viewer)
    assert isinstance(widget, SegmentDock)
    for section in (widget.edits, widget.clicks, widget.follower, widget.zoom, widget.volume,
                    widget.export, widget.series, widget.unc_view):
        assert section.widget is widget
