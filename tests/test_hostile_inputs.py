"""What users type and what files claim, generated: an answer or a ValueError, nothing else.

Property-based (hypothesis) over the parsers and checks that stand between input and
work: box strings, CT windows, class lists, header-claimed sizes, image arrays and the
corners of drawn boxes. A traceback of any other kind, or an answer that breaks its own
promise (a box outside the image, a window of zero width), fails.
"""

from __future__ import annotations

import argparse

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from napari_imedsam.boxes import MIN_BOX_SIDE, box_from_vertices, check_image  # noqa: E402
from napari_imedsam.cli.infer import _box  # noqa: E402
from napari_imedsam.inference.intensity import parse_window  # noqa: E402
from napari_imedsam.io import check_decoded_size, check_image_array  # noqa: E402
from napari_imedsam.model.classes import parse_class_names  # noqa: E402

FAST = settings(max_examples=300, deadline=None)
NUMBER = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**6, 10**6))
NUMBER_TEXT = st.one_of(NUMBER.map(str), st.text(max_size=6))


@FAST
@given(st.one_of(st.text(max_size=40), st.lists(NUMBER_TEXT, max_size=6).map(",".join)))
def test_box_strings(text):
    try:
        box = _box(text)
    except argparse.ArgumentTypeError as exc:
        assert "X0,Y0,X1,Y1" in str(exc)
        return
    assert len(box) == 4 and all(isinstance(v, float) for v in box)


@FAST
@given(st.one_of(st.text(max_size=30), st.lists(NUMBER_TEXT, min_size=2, max_size=2)
                 .map(",".join)))
def test_ct_windows(text):
    try:
        window = parse_window(text)
    except ValueError:
        return
    assert window is None or (np.isfinite(window).all() and window[0] > 0)


@FAST
@given(st.lists(st.tuples(st.text(max_size=8), st.one_of(st.none(), NUMBER_TEXT)), max_size=5))
def test_class_lists(parts):
    text = ",".join(n if v is None else f"{n}={v}" for n, v in parts)
    try:
        classes = parse_class_names(text)
    except ValueError:
        return
    names, values = [c.name for c in classes], [c.value for c in classes]
    assert len(set(names)) == len(names) and all(names)
    assert len(set(values)) == len(values) and all(1 <= v <= 65535 for v in values)


@FAST
@given(shape=st.lists(st.integers(-5, 2**40), min_size=1, max_size=5),
       itemsize=st.sampled_from([1, 2, 4, 8]), compressed=st.booleans())
def test_header_claims(tmp_path_factory, shape, itemsize, compressed):
    path = tmp_path_factory.getbasetemp() / "claim.bin"
    if not path.exists():
        path.write_bytes(b"\0" * 4096)
    try:
        check_decoded_size(path, tuple(shape), itemsize, compressed)
    except ValueError as exc:
        assert "claim.bin" in str(exc)
        return
    assert min(shape) >= 0
    claimed = int(np.prod(shape, dtype=np.float64)) * itemsize
    assert claimed <= (4096 * 2000 if compressed else 4096)


@FAST
@given(shape=st.lists(st.integers(0, 6), min_size=0, max_size=4),
       dtype=st.sampled_from(["u1", "i2", "f4", "f8", "c8", "?", "O", "V4", "U3"]))
def test_image_arrays(shape, dtype):
    data = np.zeros(shape, dtype=dtype)
    try:
        check_image_array(data, "x.tif")
    except ValueError as exc:
        assert "x.tif holds" in str(exc)
        return
    assert data.ndim >= 2 and data.size > 0 and data.dtype.kind in "biuf"


@FAST
@given(shape=st.lists(st.integers(1, 9), min_size=1, max_size=4), rgb=st.booleans())
def test_layer_shapes(shape, rgb):
    try:
        check_image(tuple(shape), rgb)
    except ValueError as exc:
        assert str(exc)
        return
    spatial = shape[:-1] if rgb else shape
    assert len(spatial) in (2, 3) and min(spatial[-2:]) >= 2


@FAST
@given(corners=st.lists(st.tuples(NUMBER, NUMBER), min_size=1, max_size=6),
       height=st.integers(1, 4000), width=st.integers(1, 4000))
def test_drawn_boxes(corners, height, width):
    vertices = np.asarray(corners, dtype=np.float64)
    try:
        x0, y0, x1, y1 = box_from_vertices(vertices, (height, width))
    except ValueError as exc:
        assert str(exc)
        return
    assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
    assert x1 - x0 >= MIN_BOX_SIDE and y1 - y0 >= MIN_BOX_SIDE
