"""Training samples: one object (or one multi-class image), its box, and query points.

Targets are read from the label image at its native resolution at continuous
point positions, so training never builds a dense label map at any size and
memory stays bounded whatever the label resolution (896 x 896 or more).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from ..model.transforms import letterbox_image
from .augment import Augmenter
from .data import LabeledImage, box_of, jitter_box, object_ids, shrunk_grid

#: Box jitter of the authors: up to 20 px per side at a 384 px input.
JITTER_PX_AT_384 = 20.0
#: A training image whose longer side is more than this many times the model's input
#: is shrunk to that first (1024 px for LiteMedSAM's 256): the model sees it at its
#: input size anyway, and augmenting 12000 x 12000 images in float took 24 GB for
#: three of them at batch 4 (issue 23's memory).
TRAIN_SIDE_FACTOR = 4


def bounded(image: np.ndarray, target: np.ndarray, input_size: int
            ) -> tuple[np.ndarray, np.ndarray]:
    """``(H, W, 3)`` uint8 image and ``(K, H, W)`` bool targets, shrunk together (area
    for the image, nearest for the targets) when the image's longer side is past
    ``TRAIN_SIDE_FACTOR * input_size``. Kept as they are when a target would vanish."""
    from ..inference.regions import resample_nearest
    from ..model.transforms import area_resize

    side = TRAIN_SIDE_FACTOR * input_size
    if max(target.shape[1:]) <= side:
        return image, target
    shape = shrunk_grid(target.shape[1:], side)
    small = np.stack([resample_nearest(t, shape) for t in target])
    if any(s.any() < t.any() for t, s in zip(target, small)):  # an object too small
        return image, target
    return area_resize(image, shape).astype(image.dtype), small


@dataclass(frozen=True)
class SampleRef:
    """One training sample: ``object_id`` in image ``index`` (binary models), or every
    class within connected group ``group`` of labelled pixels (multi-class)."""

    index: int
    object_id: int | None
    group: int | None = None


def sample_refs(images: Sequence[LabeledImage], num_classes: int) -> list[SampleRef]:
    """One sample per object for binary models. For multi-class ones, one per connected
    group of labelled pixels (a wall with the cavity it surrounds, an organ with a
    structure inside): its box is the group's, and every class answers in it, so a
    class absent from a group learns to answer nothing there."""
    refs: list[SampleRef] = []
    for i in range(len(images)):  # no item held while the next is read (a lazy set)
        refs.extend(_refs_of(images[i], i, num_classes))
    return refs


def _refs_of(item: LabeledImage, index: int, num_classes: int) -> list[SampleRef]:
    if num_classes == 1:
        return [SampleRef(index, obj) for obj in object_ids(item.labels)]
    return [SampleRef(index, None, int(g)) for g in np.unique(_groups(item)) if g > 0]


def _groups(item: LabeledImage) -> np.ndarray:
    """The item's connected groups of labelled pixels, labelled once and kept on it."""
    if item.groups is None:
        item.groups, _ = ndimage.label(item.labels > 0)
    return item.groups


#: Views of an image a ``decoder``-mode run trains on, each embedded once and
#: cached: as is, mirrored left-right, up-down, and both. Colour and affine
#: augmentation would change the embedding at every step.
CACHED_FLIPS = 4


def flipped(item: LabeledImage, view: int) -> LabeledImage:
    """``item`` mirrored: bit 0 of ``view`` left-right, bit 1 up-down (no copies)."""
    image, labels, groups = item.image, item.labels, item.groups
    if view & 1:
        image, labels = image[:, ::-1], labels[:, ::-1]
        groups = None if groups is None else groups[:, ::-1]
    if view & 2:
        image, labels = image[::-1], labels[::-1]
        groups = None if groups is None else groups[::-1]
    return LabeledImage(item.name, image, labels, groups=groups)


def targets_for(item: LabeledImage, ref: SampleRef, num_classes: int) -> np.ndarray:
    """``(K, H, W)`` bool targets of a sample."""
    if ref.object_id is not None:
        return (item.labels == ref.object_id)[None]
    targets = np.stack([item.labels == k + 1 for k in range(num_classes)])
    if ref.group is not None:  # labelled again where the item was read again (lazy sets)
        targets &= (_groups(item) == ref.group)[None]
    return targets


@dataclass
class Batch:
    """Tensors for one step; ``B`` samples, ``P`` points, ``K`` classes."""

    images: torch.Tensor  # (B, 3, S, S) letterboxed encoder input
    boxes: torch.Tensor  # (B, 4) box prompts in input pixels
    points: torch.Tensor  # (B, P, 2) in [-1, 1]
    targets: torch.Tensor  # (B, K, P) float 0/1
    keys: list[int]  # embedding cache keys (image index and view)


def make_sample(
    item: LabeledImage,
    ref: SampleRef,
    *,
    num_classes: int,
    input_size: int,
    points: int,
    rng: np.random.Generator,
    augmenter: Augmenter | None,
    jitter_px: float = JITTER_PX_AT_384,
    preprocess: str = "sam",
) -> tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray]:
    """Image tensor ``(1, 3, S, S)``, box prompt, points ``(P, 2)``, targets ``(K, P)``.

    ``jitter_px``: each box side moves outward by up to this many pixels of a
    384 px input (scaled to this input and image); 0 keeps the tight box.
    ``preprocess``: the model's way in (``ModelConfig.preprocess``): image
    tensor and box prompt are what inference gives the same model.
    """
    image, target = bounded(item.image, targets_for(item, ref, num_classes), input_size)
    if augmenter is not None:
        # Geometric augmentation moves image and labels together; the union of
        # the targets is what must stay in frame.
        label = np.zeros(target.shape[1:], dtype=np.int32)
        for k in range(target.shape[0]):
            label[target[k]] = k + 1
        image, label = augmenter(image, label)
        target = np.stack([label == k + 1 for k in range(target.shape[0])])
    tensor, box_map = letterbox_image(image, input_size, preprocess)
    height, width = target.shape[1:]
    box = np.asarray(box_of(target.any(axis=0)), dtype=np.float64)
    if jitter_px > 0:
        # The authors' pixels are at a 384 input; convert to this image's pixels.
        shift = jitter_px * (input_size / 384.0) / min(box_map.scale_xy)
        box = np.asarray(jitter_box(tuple(box), rng, shift, width, height))
    xy = _sample_points(rng, points, box, width, height)
    cols = np.clip(xy[:, 0].astype(np.int64), 0, width - 1)
    rows = np.clip(xy[:, 1].astype(np.int64), 0, height - 1)
    labels = target[:, rows, cols].astype(np.float32)
    return tensor, box_map.boxes_to_prompt(box, preprocess)[0], box_map.normalize(xy), labels


def _sample_points(
    rng: np.random.Generator, count: int, box: np.ndarray, width: int, height: int
) -> np.ndarray:
    """Half of the points uniform in the box, half uniform over the image."""
    inside = count // 2
    x0, y0, x1, y1 = box
    in_box = rng.uniform([x0, y0], [x1, y1], size=(inside, 2))
    anywhere = rng.uniform([0.0, 0.0], [width, height], size=(count - inside, 2))
    return np.concatenate([in_box, anywhere])


def collate(
    samples: list[tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray]], keys: list[int]
) -> Batch:
    images, boxes, points, targets = zip(*samples)
    return Batch(
        images=torch.cat(images),
        boxes=torch.as_tensor(np.stack(boxes), dtype=torch.float32),
        points=torch.as_tensor(np.stack(points), dtype=torch.float32),
        targets=torch.as_tensor(np.stack(targets), dtype=torch.float32),
        keys=keys,
    )

