"""What the Segment dock's sections may use of the dock: :class:`SegmentDock`.

Each section (clicks, edits, export, follow, propagate, series, uncertainty,
zoom) is handed the dock, ``SegmentWidget``, and keeps it as ``widget``. This
protocol names everything they read or call on it, and nothing else, so the
contract between the dock and its sections is written down: a reader sees what
a section depends on, and a type checker sees a section reaching past it.
``tests/widgets/segment/test_segment_dock.py`` checks that the sections use
exactly these names and that ``SegmentWidget`` has them all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # only the type checker needs them
    from napari.layers import Image, Labels, Shapes
    from qtpy.QtWidgets import QCheckBox

    from ...session_holder import Request, SessionHolder
    from .download import DownloadControls
    from .settings import SettingsForm
    from .state import ImageState


@runtime_checkable
class SegmentDock(Protocol):
    """The Segment dock as its sections see it."""

    #: The napari viewer itself (not napari's proxy of it: layers compare by identity).
    viewer: Any
    #: The image being annotated, with its layers and bookkeeping; the follow section
    #: sets it.
    state: ImageState | None
    settings: SettingsForm  # model, adapter, decoder, device, CT window, classes
    show_unc: QCheckBox  # "show uncertainty" (the settings form's)
    # The other sections, where one section hands work to another.
    # The sections that use one another, by their class's name only: this contract is
    # what the sections import, so it imports none of them (no circle of imports).
    edits: Any  # edits.ObjectEdits
    unc_view: Any  # uncertainty.UncertaintyView
    volume: Any  # propagate.VolumeTools
    export: Any  # export.ExportControls
    series: Any  # series.SeriesControls
    downloads: DownloadControls

    # -- the current image's layers (None without an image) ----------------------------
    @property
    def image(self) -> Image | None: ...

    @property
    def boxes(self) -> Shapes | None: ...

    @property
    def masks(self) -> Labels | None: ...

    # -- the model and the box requests ---------------------------------------------------
    @property
    def holder(self) -> SessionHolder:
        """The one loaded model, shared by every worker."""

    @property
    def busy(self) -> bool:
        """A box request runs or waits."""

    @property
    def waiting(self) -> bool:
        """Box requests wait for the model."""

    def request_rows(self, state: ImageState, rows: list[int]) -> None:
        """Ask for the objects of boxes ``rows`` of ``state`` (unless answered as they are)."""

    def queue(self, state: ImageState, request: Request) -> None:
        """Queue ``request`` as its object's newest."""

    def start_next(self) -> None:
        """Run the oldest waiting request unless one runs."""

    def forget_request(self, owner: int, key: int | None = None) -> None:
        """Drop the waiting request of box ``key`` of image ``owner`` (None: all of them)."""

    def state_of(self, owner: int) -> ImageState | None:
        """The state of image ``owner`` (a state's ``key``), if it is still open."""

    def current_row(self) -> int | None:
        """The box worked on: the one selected, else the last one."""

    # -- images ------------------------------------------------------------------------
    def show_image(self, image: Image, activate: bool = True) -> None:
        """Follow ``image`` (as choosing it in the list does)."""

    def connect_state(self, state: ImageState) -> None:
        """Wire ``state``'s boxes and clicks to requests, and the hotkeys."""

    def set_status(self, text: str) -> None:
        """Show ``text`` in the dock's status line."""
