"""What the Segment dock decides when it follows another image (``napari_imedsam.follow``)."""

from __future__ import annotations

import pytest

from napari_imedsam.follow import LabelsInfo, first_window, fit_plane, own_labels_visibility

IMAGES = [(0, "scan_a", (32, 40)), (1, "scan_b", (32, 40)), (2, "photo", (50, 60))]


def _labels(key: int, index: int, name: str, shape=(32, 40), visible: bool = True):
    return LabelsInfo(key, index, name, shape, visible)


def test_labels_of_other_images_are_hidden_and_come_back_with_their_image():
    layers = [_labels(10, 3, "scan_a truth"), _labels(11, 4, "scan_b truth"),
              _labels(12, 5, "photo labels", (50, 60))]
    hide, show = own_labels_visibility(layers, IMAGES, "scan_a", set())
    assert (hide, show) == ([11, 12], [])
    # Following scan_b: scan_b's comes back (it was hidden by the dock), scan_a's goes.
    layers = [_labels(10, 3, "scan_a truth"), _labels(11, 4, "scan_b truth", visible=False),
              _labels(12, 5, "photo labels", (50, 60), visible=False)]
    hide, show = own_labels_visibility(layers, IMAGES, "scan_b", {11, 12})
    assert (hide, show) == ([10], [11])


def test_a_layer_the_user_hid_stays_hidden():
    layers = [_labels(10, 3, "scan_a truth", visible=False)]
    assert own_labels_visibility(layers, IMAGES, "scan_a", set()) == ([], [])


def test_labels_are_paired_by_name_then_by_order():
    # No name fits: the nearest image of that shape below the labels in the list.
    layers = [_labels(10, 2, "Labels")]
    assert own_labels_visibility(layers, IMAGES, "scan_a", set()) == ([10], [])
    assert own_labels_visibility(layers, IMAGES, "scan_b", set()) == ([], [])


def test_fit_plane_centres_the_image_and_fills_95_percent():
    centre, zoom = fit_plane([[-0.5, -0.5], [99.5, 199.5]], (400, 800))
    assert centre == (49.5, 99.5)
    assert zoom == pytest.approx(0.95 * 4)
    # A degenerate extent does not divide by zero.
    _, zoom = fit_plane([[0, 0], [0, 10]], (100, 100))
    assert zoom > 0


@pytest.mark.parametrize("metadata, window", [
    ({"suggested_window": "abdomen"}, "abdomen"), ({"suggested_window": 3}, None), ({}, None),
    (None, None)])
def test_first_window(metadata, window):
    assert first_window(metadata) == window
