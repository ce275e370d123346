"""Fine-tuning from the viewer, without Qt: samples from layer arrays, a held-out
split, and the run itself with before/after Dice (names and files: ``adapter_store``).

The Fine-tune dock widget (``widgets.finetune.widget``) only gathers the user's choices
and shows progress; everything that decides what trains, what is measured and
where files go lives in these two modules, driven by plain callbacks, so it is tested (and
scripted) without a display.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .adapter_store import publish_adapter
from .propagate import mask_digest
from .train.data import LabeledImage, as_class_heads, from_arrays, object_ids

SLICE_MODES = ("labelled", "current", "range")

#: Box jitter when fine-tuning (pixels of a 384 input). With the authors' 20 px,
#: short runs on 16 Kvasir images got worse on tight boxes (held-out Dice 0.722 ->
#: 0.672 after 4 min); with tight boxes they improved (-> 0.781). docs/training.md.
FINETUNE_BOX_JITTER_PX = 0.0
#: Teaching new classes (heads grown from a one-class model): the decoder's learning
#: rate and query points per sample. On the ring/tube synthetic data (20 images, 3 min,
#: docs/training.md) the wall reached Dice 0.65 with the one-class settings (1e-3, 4096
#: points) and 0.94 with these; 1e-2 gave the same as 3e-3.
CLASS_LR_DECODER = 3e-3
CLASS_POINTS = 2048


class DataError(ValueError):
    """The chosen layers cannot give training samples; the message says what to do."""


# -- samples from layers ------------------------------------------------------------
@dataclass
class LayerPair:
    """An image layer's data with the Labels layer that annotates it (plain arrays)."""

    image_name: str
    labels_name: str
    image: Any  # array-like (H, W), (H, W, C), (Z, H, W) or (Z, H, W, C)
    labels: Any  # array-like (H, W) or (Z, H, W), integer ids
    rgb: bool = False
    #: What propagation wrote into these labels (the Segment widget's record of its own
    #: masks layer): object id -> {plane: fingerprints (``propagate.mask_digest``) of the
    #: masks propagations wrote there}. An object's slice that still equals one of them
    #: was never reviewed: it does not train (the model would learn its own answers).
    #: Empty: every labelled slice trains.
    propagated: Mapping[int, Mapping[int, Collection[bytes]]] = field(default_factory=dict)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        shape = tuple(self.image.shape)
        return shape[:-1] if self.rgb else shape


@dataclass(frozen=True)
class SliceChoice:
    """Which slices of volumes train: those with labels, the one in view, or a range."""

    mode: str = "labelled"
    current: int = 0
    start: int = 0
    stop: int = 0  # inclusive, as people count slices

    def __post_init__(self) -> None:
        if self.mode not in SLICE_MODES:
            raise ValueError(f"slice mode must be one of {SLICE_MODES}, got {self.mode!r}")


@dataclass(frozen=True)
class Origin:
    """Where a sample came from, so the viewer can go back to it."""

    pair: int
    image_name: str
    labels_name: str
    plane: int | None  # slice of a volume, None for a 2D image


@dataclass
class Collected:
    """Training images (one per 2D image or slice) and where each came from."""

    items: list[LabeledImage] = field(default_factory=list)
    origins: list[Origin] = field(default_factory=list)

    @property
    def objects(self) -> int:
        return sum(len(object_ids(item.labels)) for item in self.items)


def guess_image(labels_name: str, labels_index: int, labels_shape: tuple[int, ...],
                images: Sequence[tuple[int, str, tuple[int, ...]]]) -> str | None:
    """The image layer a Labels layer most likely annotates.

    ``images`` are ``(layer index, name, spatial shape)``. Among images of the
    labels' shape: the longest name the labels' name starts with ("scan" for
    "scan masks"), else the nearest one below the labels in the layer list
    (napari adds a new Labels layer above the image it was made for). With no
    image of that shape, the first image (the table then shows the mismatch).
    """
    same = [im for im in images if tuple(im[2]) == tuple(labels_shape)]
    if not same:
        return images[0][1] if images else None
    prefixed = [im for im in same if labels_name.startswith(im[1])]
    if prefixed:
        return max(prefixed, key=lambda im: len(im[1]))[1]
    below = [im for im in same if im[0] < labels_index]
    return (max(below, key=lambda im: im[0]) if below else same[0])[1]


def check_pair(pair: LayerPair) -> None:
    """Raise :class:`DataError` when the labels cannot annotate the image."""
    spatial, labels = pair.spatial_shape, tuple(pair.labels.shape)
    if labels != spatial:
        raise DataError(
            f"labels '{pair.labels_name}' {labels} do not match image '{pair.image_name}' "
            f"{spatial}: choose the image these labels were drawn on")
    if len(spatial) not in (2, 3):
        raise DataError(f"image '{pair.image_name}' has {len(spatial)} spatial dimensions: "
                        "use 2D images or 3D volumes")
    if np.dtype(pair.labels.dtype).kind not in "biu":
        raise DataError(f"'{pair.labels_name}' is not an integer label image")


def _wanted(pair: LayerPair, choice: SliceChoice) -> list[int]:
    """The slices of a volume ``choice`` names (labelled or not)."""
    depth = pair.spatial_shape[0]
    if choice.mode == "current":
        return [choice.current] if 0 <= choice.current < depth else []
    if choice.mode == "range":
        return list(range(max(0, choice.start), min(depth, choice.stop + 1)))
    return list(range(depth))


def planes_of(pair: LayerPair, choice: SliceChoice) -> list[int | None]:
    """The planes of ``pair`` that hold labelled objects under ``choice`` (objects that
    only propagation wrote, and nobody reviewed, do not count)."""
    if len(pair.spatial_shape) == 2:
        return [None] if np.any(np.asarray(pair.labels)) else []
    # One slice at a time: lazy (dask, zarr) volumes are never read whole.
    return [int(z) for z in _wanted(pair, choice) if np.any(training_labels(pair, z))]


def unreviewed(pair: LayerPair, plane: int | None) -> list[int]:
    """The objects whose mask on ``plane`` is still exactly what propagation wrote there
    (a slice the user corrected, even by a pixel, is theirs)."""
    if plane is None or not pair.propagated:
        return []
    labels: np.ndarray | None = None
    found = []
    for object_id, planes in pair.propagated.items():
        written = planes.get(plane)
        if not written:
            continue
        if labels is None:
            labels = np.asarray(pair.labels[plane])
        mask = labels == object_id
        if mask.any() and mask_digest(mask) in written:
            found.append(int(object_id))
    return sorted(found)


def training_labels(pair: LayerPair, plane: int | None) -> np.ndarray:
    """The labels of ``plane`` that train: without the objects propagation wrote there
    that nobody reviewed."""
    labels = _plane(pair.labels, plane)
    left_out = unreviewed(pair, plane)
    if left_out:
        labels = np.where(np.isin(labels, left_out), 0, labels).astype(labels.dtype)
    return labels


def count(pair: LayerPair, choice: SliceChoice) -> tuple[int, int]:
    """``(objects, slices)`` that ``pair`` gives; raises :class:`DataError` for a bad pair."""
    check_pair(pair)
    planes = planes_of(pair, choice)
    objects = sum(len(object_ids(training_labels(pair, z))) for z in planes)
    return objects, len(planes)


def count_unreviewed(pair: LayerPair, choice: SliceChoice) -> int:
    """How many propagated slices of objects (an object on a slice) under ``choice`` are
    still as propagation wrote them: what :func:`collect` leaves out of ``pair``."""
    if not pair.propagated or len(pair.spatial_shape) != 3:
        return 0
    written = {int(p) for planes in pair.propagated.values() for p in planes}
    return sum(len(unreviewed(pair, z)) for z in _wanted(pair, choice) if z in written)


def collect(pairs: Sequence[LayerPair], choice: SliceChoice,
            window: str | None = None) -> Collected:
    """One :class:`LabeledImage` per labelled 2D image or chosen slice (copies).

    Images go through the same intensity path as segmentation
    (:func:`~napari_imedsam.inference.intensity.to_encoder_rgb` with the CT
    window), so the model trains on what it will later see.
    """
    from .inference.intensity import to_encoder_rgb

    out = Collected()
    for index, pair in enumerate(pairs):
        check_pair(pair)
        for z in planes_of(pair, choice):
            name = pair.image_name if z is None else f"{pair.image_name} [slice {z}]"
            image = _plane(pair.image, z)
            grey = image.ndim == 2 or image.shape[-1] == 1
            rgb = to_encoder_rgb(image, window if grey else None)
            out.items.extend(from_arrays([rgb], [training_labels(pair, z)], [name]))
            out.origins.append(Origin(index, pair.image_name, pair.labels_name, z))
    if not out.items:
        raise DataError(
            "no labelled objects to train on: paint objects into a Labels layer (or segment "
            "them with the Segment widget), tick its row, and for volumes check the slices")
    return out


def _plane(data: Any, z: int | None) -> np.ndarray:
    return np.asarray(data if z is None else data[z])


# -- held-out objects --------------------------------------------------------------
@dataclass
class Split:
    train: list[LabeledImage]
    val: list[LabeledImage]
    note: str


def split_validation(items: list[LabeledImage], share: float, seed: int = 0,
                     by_class: bool = False) -> Split:
    """Hold out about ``share`` of the data for validation.

    Whole images (slices) are held out when there are at least two, so no
    held-out pixel is seen in training. A single image with several objects is
    split by object instead (each sample's target is its own object, so the
    others are background to it either way). A single object cannot be held
    out: validation then uses the training object, and the note says so.
    """
    if share <= 0 or not items:
        return Split(list(items), [], "validation on the training objects (no share held out)")
    rng = np.random.default_rng(seed)
    if len(items) >= 2:
        n_val = min(len(items) - 1, max(1, round(share * len(items))))
        order = rng.permutation(len(items))
        held = set(order[:n_val].tolist())
        return Split([x for i, x in enumerate(items) if i not in held],
                     [x for i, x in enumerate(items) if i in held],
                     f"{n_val} of {len(items)} images held out")
    item = items[0]
    ids = object_ids(item.labels)
    if by_class:  # label values are classes, not objects: holding one out would drop a class
        return Split(list(items), [], "validation on the training image (one image of classes)")
    if len(ids) < 2:
        return Split(list(items), [], "validation on the training object (only one object)")
    n_val = min(len(ids) - 1, max(1, round(share * len(ids))))
    held_ids = sorted(rng.choice(ids, size=n_val, replace=False).tolist())
    held = np.isin(item.labels, held_ids)
    train = LabeledImage(item.name, item.image, np.where(held, 0, item.labels).astype(np.int32))
    val = LabeledImage(f"{item.name} (held out)", item.image,
                       np.where(held, item.labels, 0).astype(np.int32))
    return Split([train], [val], f"{n_val} of {len(ids)} objects held out")


# -- the run ----------------------------------------------------------------------------
@dataclass
class FinetuneJob:
    """Everything a run needs; ``load_model`` returns a private copy to train."""

    load_model: Callable[[], Any]
    collect: Callable[[], list[LabeledImage]]
    config: Any  # train.engine.TrainConfig
    val_share: float
    out_dir: Path
    stem: str
    extra: dict[str, Any] = field(default_factory=dict)
    #: Train classes (``model.classes.ClassInfo``: label value = class, one head each)
    #: instead of one object per label id; None: objects.
    classes: tuple[Any, ...] | None = None


@dataclass
class FinetuneOutcome:
    adapter: Path | None = None
    before: float | None = None
    after: float | None = None
    val_objects: int = 0
    split_note: str = ""
    steps: int = 0
    epochs: int = 0
    stopped: bool = False
    #: Why a run ended before its last epoch: "stopped" (the user) or "time limit reached".
    stop_reason: str = ""
    model: Any = None
    error: str | None = None
    #: Class mode: Dice per class name before and after.
    before_by_class: dict[str, float] = field(default_factory=dict)
    after_by_class: dict[str, float] = field(default_factory=dict)

    @property
    def worse(self) -> bool:
        """The trained model scored lower than the starting one on the held-out objects."""
        return self.before is not None and self.after is not None and self.after < self.before

    def summary(self) -> str:
        """One line for the widget: Dice before and after, on which objects."""
        if self.error:
            return self.error
        if self.adapter is None:
            return "stopped before the first training step: nothing was saved"
        def fmt(v: float | None) -> str:
            return "n/a" if v is None else f"{v:.3f}"
        noun = "object" if self.val_objects == 1 else "objects"
        text = (f"validation Dice {fmt(self.before)} -> {fmt(self.after)} on {self.val_objects} "
                f"{noun} ({self.split_note}); {self.steps} steps")
        if self.after_by_class:
            text += "; per class: " + ", ".join(
                f"{name} {fmt(self.before_by_class.get(name))} -> {fmt(dice)}"
                for name, dice in self.after_by_class.items())
        return text + (f", {self.stop_reason or 'stopped'}" if self.stopped else "")


def explain_error(exc: BaseException, device: str) -> str:
    """A message that says what went wrong and what to do."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, MemoryError) or "out of memory" in text.lower():
        return (f"Fine-tuning ran out of memory on device '{device}': choose the quick mode, "
                "fewer or smaller images, or device 'cpu'. Your layers were not changed.")
    if isinstance(exc, DataError):
        return f"Fine-tuning cannot start: {text}"
    return f"Fine-tuning failed: {text}. Your layers were not changed."


def mean_dice(model: Any, items: list[LabeledImage], label_size: int, device: Any,
              seed: int = 0, should_stop: Callable[[], bool] | None = None) -> float | None:
    """Mean Dice over the objects of ``items``: the engine's validation protocol, so
    the "before" number compares with the "after" one the engine measures."""
    from .train.evaluate import evaluate_model

    rows = evaluate_model(model, items, label_size=label_size, device=device,
                          with_distances=False, seed=seed, should_stop=should_stop)
    return float(np.mean([r["dice"] for r in rows])) if rows else None


def _class_dice(model: Any, items: list[LabeledImage], cfg: Any, device: Any) -> dict[str, float]:
    from .train.evaluate import dice_per_class

    return dice_per_class(model, items, cfg.val_label_size, device=device, seed=cfg.seed)


def _mean(values: dict[str, float]) -> float | None:
    return float(np.mean(list(values.values()))) if values else None


def run_finetune(job: FinetuneJob, *, on_progress: Callable[[Any], None] | None = None,
                 should_stop: Callable[[], bool] | None = None,
                 on_status: Callable[[str], None] | None = None,
                 may_train: Callable[[], bool] | None = None) -> FinetuneOutcome:
    """Collect, split, measure, train, publish. Never raises: errors come back as text.

    The engine writes its run files into a hidden folder beside the adapters;
    only the best adapter is published (under a new name) and the folder is
    removed, so a failed or stopped run leaves nothing half-written behind.
    ``may_train`` is asked once, after the starting model is measured and before
    anything is written or trained: False ends the run there, as a stop does (the
    widget has let the run go: its Stop cannot wait for a model load).
    """
    from .model.checkpoint import load_adapter
    from .model.devices import resolve_device
    from .train.engine import TrainEvent, train

    status = on_status or (lambda _text: None)
    outcome = FinetuneOutcome()
    run_dir: Path | None = None
    cfg = job.config

    def stopped_early() -> bool:
        """Stop pressed before training began: end now (Stop answers within 2 s)."""
        if should_stop is None or not should_stop():
            return False
        outcome.stopped, outcome.stop_reason = True, "stopped before training began"
        return True

    try:
        status("reading the training data...")
        items = job.collect()
        if stopped_early():
            return outcome
        if job.classes is not None:
            items = as_class_heads(items, [c.value for c in job.classes])
        split = split_validation(items, job.val_share, cfg.seed, by_class=job.classes is not None)
        outcome.split_note = split.note
        if stopped_early():
            return outcome
        status("loading the model...")
        model = job.load_model()
        if stopped_early():
            return outcome
        if job.classes is not None:
            from .model.classes import expand_classes

            expand_classes(model, job.classes)
        device = resolve_device(cfg.device)
        measured = split.val or split.train
        outcome.val_objects = sum(len(object_ids(x.labels)) for x in measured)
        status("measuring the starting model...")
        if job.classes is not None:
            outcome.before_by_class = _class_dice(model, measured, cfg, device)
            outcome.before = _mean(outcome.before_by_class)
        else:
            outcome.before = mean_dice(model, measured, cfg.val_label_size, device, cfg.seed,
                                       should_stop)
        if stopped_early():
            return outcome
        if may_train is not None and not may_train():
            outcome.stopped, outcome.stop_reason = True, "stopped before training began"
            return outcome

        def progress(event: Any) -> None:
            if event.kind == "step":
                outcome.steps += 1
            if on_progress is not None:
                on_progress(event)

        # The starting model's Dice as epoch 0, so the live plot shows the gain.
        progress(TrainEvent("start", 0, cfg.epochs, 0, 0, val_dice=outcome.before,
                            best_val_dice=outcome.before))

        job.out_dir.mkdir(parents=True, exist_ok=True)
        run_dir = Path(tempfile.mkdtemp(prefix=".run-", dir=job.out_dir))
        extra = {**job.extra, "finetune": {**job.extra.get("finetune", {}),
                                           "val_dice_before": outcome.before,
                                           "split": split.note}}
        status("training...")
        result = train(model, split.train, split.val, cfg, run_dir / "adapter.safetensors",
                       on_progress=progress, should_stop=should_stop, extra=extra)
        outcome.stopped, outcome.epochs = result.stopped, result.epochs_done
        if result.stopped:
            asked = should_stop is not None and should_stop()
            outcome.stop_reason = "stopped" if asked else "time limit reached"
        if outcome.steps == 0 or result.adapter is None:
            return outcome  # nothing learned: publishing a copy of the start would mislead
        outcome.adapter = publish_adapter(result.adapter, job.out_dir, job.stem)
        load_adapter(model, outcome.adapter)  # the best epoch's weights, and their hash
        outcome.after, outcome.model = result.best_val_dice, model.eval()
        if job.classes is not None:
            outcome.after_by_class = _class_dice(model, measured, cfg, device)
            outcome.after = _mean(outcome.after_by_class)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a notification
        outcome.error = explain_error(exc, cfg.device)
    finally:
        if run_dir is not None:
            shutil.rmtree(run_dir, ignore_errors=True)
    return outcome


def time_left(elapsed_s: float, done_steps: int, total_steps: int,
              budget_s: float | None = None) -> float | None:
    """Seconds left, from the pace so far and capped by the time budget."""
    remaining_budget = None if budget_s is None else max(0.0, budget_s - elapsed_s)
    if done_steps <= 0:
        return remaining_budget
    estimate = max(0.0, elapsed_s / done_steps * (total_steps - done_steps))
    return estimate if remaining_budget is None else min(estimate, remaining_budget)


def format_duration(seconds: float | None) -> str:
    """``"1 h 5 min"``, ``"2 min 10 s"``, ``"45 s"``; ``"?"`` when unknown."""
    if seconds is None:
        return "?"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60} min"
    if s >= 60:
        return f"{s // 60} min {s % 60} s"
    return f"{s} s"


# -- worker bodies (run in napari thread workers) ----------------------------------

def train_body(job: dict[str, Any], fields: dict[str, Any],
               **callbacks: Any) -> FinetuneOutcome:
    """Worker body: torch comes in here, with Triton hidden (see ``model.torch_guard``)."""
    from .model.torch_guard import import_torch

    import_torch()
    from .train.engine import TrainConfig

    return run_finetune(FinetuneJob(config=TrainConfig(**fields), **job), **callbacks)


def collect_all(pairs: list[LayerPair], choice: SliceChoice, window: str | None,
                folder: str | None) -> list:
    """Samples from the layers plus the optional folder (runs in the worker)."""
    from .train.data import load_folder

    items = []
    try:
        items = collect(pairs, choice, window).items
    except DataError:
        if folder is None:
            raise
    if folder is not None:
        items += load_folder(folder)
    if not items:
        raise DataError("no labelled objects to train on")
    return items
