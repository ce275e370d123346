"""The Segment dock's "image" choice: which image boxes refer to, following the user.

The dock follows the image the user selects (or one of its layers) or opened
last: that image is shown with its boxes, masks and clicks layers, the other
images and their layers are hidden (so a box is never drawn over the wrong
picture), its boxes layer becomes active for the next box, and the user's own
Labels layers follow the image they annotate. Each image keeps its own
:class:`~.state.ImageState`. The decisions that need no viewer live in
``napari_imedsam/follow.py``.
"""

from __future__ import annotations

from typing import Any

from napari.layers import Image, Labels
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QComboBox

from .. import layers as wl
from ..common import tell
from ...boxes import check_image, spatial_shape
from ...follow import LabelsInfo, first_window, fit_plane, own_labels_visibility
from .state import ImageState, segmentable_images
from .dock import SegmentDock

NO_IMAGE = "add an image layer (File > Open, or File > Open Sample > I-MedSAM)"


class ImageFollower:
    """The image list of the dock, each image's state, and the one the dock follows."""

    def __init__(self, widget: SegmentDock) -> None:
        self.widget = widget
        self.viewer = widget.viewer
        self.combo = QComboBox()
        self.states: dict[int, ImageState] = {}  # id(image layer) -> its state
        #: True while this section adds or moves layers: the events that fires are ours.
        self.binding = False
        #: ids of the user's Labels layers hidden because they belong to another image
        self._hidden_labels: set[int] = set()
        self._refused: int | None = None  # the unusable layer last warned about
        self._activate_after = True  # whether choosing in the list activates the boxes

    def start(self) -> None:
        """Follow the viewer from now on (once the dock's other sections exist: binding
        an image shows it in them)."""
        self.combo.currentTextChanged.connect(lambda _: self.bind())
        # Choosing the same image again re-creates layers the user deleted.
        self.combo.activated.connect(lambda _: self.bind())
        self.viewer.layers.events.inserted.connect(self.on_layers_changed)
        self.viewer.layers.events.removed.connect(self.on_layers_changed)
        self.viewer.layers.selection.events.active.connect(self.on_active_layer)
        self.on_layers_changed()

    def on_layers_changed(self, event: Any = None) -> None:
        """Keep the image list current, forget removed layers, follow a new image.

        Layers are only ever created when an image is chosen or first appears,
        never in answer to a removal: napari removes every layer one by one when
        it closes, and re-creating them there would never end.
        """
        images = segmentable_images(self.viewer)
        for key in [k for k, st in self.states.items() if st.image not in images]:
            self._drop_state(key)
        for state in self.states.values():
            state.drop_missing(self.viewer)
        inserted = event is not None and getattr(event, "type", "") == "inserted"
        if inserted and isinstance(event.value, Image):
            event.value.events.name.connect(self.on_layers_changed)
        names = [layer.name for layer in images]
        current = self.combo.currentText()
        new_image = inserted and event.value in images and not self.binding
        if names != [self.combo.itemText(i) for i in range(self.combo.count())]:
            self.combo.blockSignals(True)
            self.combo.clear()
            self.combo.addItems(names)
            if current in names:
                self.combo.setCurrentText(current)
            self.combo.blockSignals(False)
        if self.binding:
            return
        if new_image:  # the user opened an image: annotate it next
            self.show_image(event.value)
            # napari makes the new image active once this event is over: take the
            # focus back to its boxes layer then.
            QTimer.singleShot(0, self.activate_boxes)
        elif self.widget.state is None and names and event is None:
            self.bind()
        elif self.widget.state is None:
            self.widget.set_status("choose an image to segment" if names else NO_IMAGE)

    def on_active_layer(self, event: Any = None) -> None:
        """Follow the user: selecting an image, or one of an image's layers, makes it current."""
        if self.binding or self.widget.edits.replaying:
            return
        layer = self.viewer.layers.selection.active
        state = self.widget.state
        if layer is None or (state is not None and state.owns(layer)):
            return
        owner = wl.owner_name(layer)
        if owner is not None and owner in self.viewer.layers:
            target = self.viewer.layers[owner]
        elif isinstance(layer, Image) and not wl.is_ours(layer):
            target = layer
        else:
            return
        # Choosing another image in the list: its boxes layer becomes active, ready for a
        # box (a second click on the image selects it, e.g. for its contrast). Choosing
        # one of its own layers (its masks, to paint) keeps that layer.
        self.show_image(target, activate=target is layer)

    def show_image(self, image: Image, activate: bool = True) -> None:
        """Make ``image`` the one boxes refer to (as choosing it in the list does)."""
        if self.combo.currentText() == image.name:
            self.bind(activate=activate)
        else:
            self._activate_after = activate
            self.combo.setCurrentText(image.name)  # -> bind

    def _drop_state(self, key: int) -> None:
        state = self.states.pop(key)
        self.widget.forget_request(key)  # its waiting boxes: the image is gone
        if state is self.widget.state:
            self.widget.state = None

    def bind(self, activate: bool | None = None) -> None:
        """Point the dock at the chosen image, with its own boxes and masks layers."""
        activate = self._activate_after if activate is None else activate
        self._activate_after = True
        w = self.widget
        name = self.combo.currentText()
        image = self.viewer.layers[name] if name in self.viewer.layers else None
        if not isinstance(image, Image):
            w.set_status(NO_IMAGE)
            return
        shape = wl.level0(image).shape
        try:
            check_image(shape, image.rgb)
        except ValueError as exc:
            w.state = None  # boxes drawn now get "choose an image", not a wrong image
            if self._refused != id(image):  # once per layer, not at every re-check
                self._refused = id(image)
                tell("warning", f"cannot use layer '{name}': {exc}")
            w.set_status(f"'{name}' cannot be segmented: {exc}")
            return
        self._refused = None
        state = self.states.get(id(image))
        if state is None:
            state = self.states[id(image)] = ImageState(
                image, window=first_window(getattr(image, "metadata", None)))
        spatial = spatial_shape(shape, image.rgb)
        self.binding = True  # adding layers below re-enters on_layers_changed
        try:
            if state.masks is None:
                state.masks = wl.find_or_add_masks(self.viewer, image, spatial)
            if state.boxes is None:
                state.boxes = wl.find_or_add_boxes(self.viewer, image, len(spatial))
            if state.points is None:
                state.points = wl.find_or_add_points(self.viewer, image, len(spatial))
            previous, w.state = w.state, state
            self._show_only(state)
            if previous is not state:
                try:
                    self._move_camera(previous, state)
                except Exception:  # noqa: BLE001 - framing is a courtesy, never a crash
                    pass
            w.connect_state(state)
            w.settings.show_window(state.window, image)
        finally:
            self.binding = False
        if activate:
            self.activate_boxes()
        w.unc_view.refresh_visibility()
        w.unc_view.apply_outline(state)
        w.series.follow(image)
        w.set_status(f"ready: draw a box on '{name}'")

    def activate_boxes(self) -> None:
        """The current boxes layer on top of the list and active: the next drag draws a box."""
        state = self.widget.state
        if state is None or state.boxes is None or state.boxes not in self.viewer.layers:
            return
        self.binding = True
        try:
            layers = self.viewer.layers
            if state.points is not None and state.points in layers \
                    and layers.index(state.points) != len(layers) - 1:
                layers.move(layers.index(state.points), len(layers))  # clicks just below
            if layers.index(state.boxes) != len(layers) - 1:
                layers.move(layers.index(state.boxes), len(layers))
            layers.selection.active = state.boxes
            state.boxes.mode = "add_rectangle"
        finally:
            self.binding = False

    def _move_camera(self, previous: ImageState | None, state: ImageState) -> None:
        """Frame the image the dock now follows: where the user left it, or whole.

        Images of different sizes share one canvas; without this a small image
        opened after zooming into a large one sits in a corner, and coming back
        to an image loses the place the user was working at.
        """
        camera = getattr(self.viewer, "scene", self.viewer).camera
        if previous is not None and previous.image in self.viewer.layers:
            previous.view = (tuple(camera.center), float(camera.zoom))
        if state.view is not None:
            camera.center, camera.zoom = state.view
            return
        try:
            self.viewer.reset_view(layers=[state.image])
        except (TypeError, IndexError):
            # napari before 0.6 has no ``layers``; napari 0.9 fails to fit a 2D layer
            # while a volume sets the world's dimensions: fit the image's plane by hand.
            self._fit_plane(state.image, camera)

    def _fit_plane(self, image: Image, camera: Any) -> None:
        """Centre the image's last two axes and fill 95 % of the canvas with them."""
        canvas = getattr(getattr(self.viewer, "canvas", None), "size", None)
        if canvas is None or self.viewer.dims.ndisplay != 2:
            self.viewer.reset_view()
            return
        centre, zoom = fit_plane([row[-2:] for row in image.extent.world], canvas)
        camera.center = tuple(camera.center)[:-2] + centre
        camera.zoom = zoom

    def _show_only(self, state: ImageState) -> None:
        """Show the current image with its layers; hide the other images and theirs."""
        for other in self.states.values():
            if other is not state and other.image.visible:
                other.image.visible = False
        for layer in self.viewer.layers:  # boxes, masks, previews... of other images
            owner = wl.owner_name(layer)
            if owner is not None and owner != state.image.name and layer.visible:
                layer.visible = False
        for layer in (state.image, state.boxes, state.masks, state.points):
            if layer is not None and not layer.visible:
                layer.visible = True
        self._show_own_labels(state)

    def _show_own_labels(self, state: ImageState) -> None:
        """The user's own Labels layers follow their image (guessed as the Fine-tune
        dock pairs them: by shape, name and order): those of other images are hidden,
        and shown again when their image is; a layer the user hid stays hidden."""
        layers = list(self.viewer.layers)
        images = [(i, layer.name, wl.image_spatial_shape(layer)) for i, layer in
                  enumerate(layers) if isinstance(layer, Image) and not wl.is_ours(layer)]
        own = {id(layer): layer for layer in layers
               if isinstance(layer, Labels) and not wl.is_ours(layer)}
        infos = [LabelsInfo(id(layer), index, layer.name, tuple(wl.level0(layer).shape),
                            bool(layer.visible))
                 for index, layer in enumerate(layers) if id(layer) in own]
        hide, show = own_labels_visibility(infos, images, state.image.name,
                                           self._hidden_labels)
        for key in hide:
            own[key].visible = False
            self._hidden_labels.add(key)
        for key in show:
            own[key].visible = True
            self._hidden_labels.discard(key)
