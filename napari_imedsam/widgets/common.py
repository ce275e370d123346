"""Small Qt helpers both docks use: notifications that fit, and file pickers.

Notifications: napari's pop-ups cut long messages mid-sentence, so the whole
text goes to the widget's status line and the pop-up gets its first sentence
(or clause) and says where the rest is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

#: Characters a napari notification shows on one line without cutting.
POPUP_LIMIT = 150


def headline(text: str, limit: int = POPUP_LIMIT) -> str:
    """``text`` if it fits, else its first sentence (or clause) and a pointer to the rest."""
    if len(text) <= limit:
        return text
    for mark in (". ", "; ", ": ", ", "):
        cut = text.find(mark, 20, limit)
        if cut > 0:
            return text[: cut + 1].rstrip(",;:") + " (details in the widget's status line)"
    return text[: limit - 1].rstrip() + "... (details in the widget's status line)"


def tell(level: str, text: str, status: Callable[[str], None] | None = None) -> None:
    """Show ``text`` whole in ``status`` and as a short napari notification."""
    from napari.utils.notifications import show_error, show_info, show_warning

    if status is not None:
        status(text)
    show = {"error": show_error, "warning": show_warning}.get(level, show_info)
    show(f"I-MedSAM: {headline(text)}")


def browse(parent: Any, kind: Literal["folder", "open", "save"], title: str, *,
           filters: str = "", start: str = "") -> str:
    """A path picked in Qt's file dialog, or ``""`` when the user cancels.

    ``save`` does not ask about replacing an existing file: our writers check
    every output of an export before writing any, and ask once for all of them.
    """
    from qtpy.QtWidgets import QFileDialog

    if kind == "folder":
        return QFileDialog.getExistingDirectory(parent, title, start)
    if kind == "open":
        return QFileDialog.getOpenFileName(parent, title, start, filters)[0]
    return QFileDialog.getSaveFileName(parent, title, start, filters,
                                       options=QFileDialog.Option.DontConfirmOverwrite)[0]


def with_button(field: Any, text: str, slot: Callable[[], Any]) -> Any:
    """``field`` with a small button after it ("..." to browse), as one widget."""
    from qtpy.QtWidgets import QHBoxLayout, QPushButton, QWidget

    box = QWidget()
    row = QHBoxLayout(box)
    row.setContentsMargins(0, 0, 0, 0)
    button = QPushButton(text)
    button.setMaximumWidth(30)
    button.clicked.connect(slot)
    row.addWidget(field, 1)
    row.addWidget(button)
    return box
