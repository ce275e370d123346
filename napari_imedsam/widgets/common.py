"""Notifications that fit: napari's pop-ups cut long messages mid-sentence.

The whole text goes to the widget's status line; the pop-up gets its first
sentence (or clause) and says where the rest is.
"""

from __future__ import annotations

from collections.abc import Callable

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
