"""Synthetic grey disc scenes and volumes, and a tiny model trained on them once per
test run (shared by the zoom and volume widget tests)."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from napari_imedsam.train.data import LabeledImage

HEIGHT, WIDTH = 64, 96


def disc_slice(rng: np.random.Generator, centre, radius: float,
               shape=(HEIGHT, WIDTH)) -> tuple[np.ndarray, np.ndarray]:
    """A bright disc (edge coordinates ``centre`` = (y, x)) on a dark noisy
    background: (grey uint8 image, mask)."""
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    mask = (yy + 0.5 - centre[0]) ** 2 + (xx + 0.5 - centre[1]) ** 2 < radius**2
    image = rng.normal(40, 10, shape)
    image[mask] += 150
    return np.clip(image, 0, 255).astype(np.uint8), mask


def ball_volume(depth: int = 16, seed: int = 0):
    """A ball-like object across slices 3..12 (radius 12 in the middle, 6 at the
    ends, its centre drifting 1 px per slice): (volume uint8, truth bool, centre z)."""
    rng = np.random.default_rng(seed)
    volume = np.empty((depth, HEIGHT, WIDTH), np.uint8)
    truth = np.zeros((depth, HEIGHT, WIDTH), bool)
    for z in range(depth):
        if 3 <= z <= 12:
            radius = 12.0 - 6.0 * abs(z - 7.5) / 4.5
            volume[z], truth[z] = disc_slice(rng, (30 + 0.5 * (z - 7), 44 + (z - 7)), radius)
        else:
            volume[z] = np.clip(rng.normal(40, 10, (HEIGHT, WIDTH)), 0, 255).astype(np.uint8)
    return volume, truth


def _training_items(count: int = 40) -> list[LabeledImage]:
    rng = np.random.default_rng(123)
    items = []
    for i in range(count):
        radius = rng.uniform(5, 14)
        centre = (rng.uniform(radius + 2, HEIGHT - radius - 2),
                  rng.uniform(radius + 2, WIDTH - radius - 2))
        image, mask = disc_slice(rng, centre, radius)
        items.append(LabeledImage(f"d{i}", np.repeat(image[..., None], 3, -1),
                                  mask.astype(np.int32)))
    return items


@functools.lru_cache(maxsize=None)
def disc_model(folder: str) -> str:
    """The tiny variant trained for seconds on grey single-disc scenes; trained once
    per test process (the path is reused by every module that asks)."""
    from conftest import train_tiny

    return train_tiny(_training_items(), Path(folder) / "disc_tiny.safetensors")
