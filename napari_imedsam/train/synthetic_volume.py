"""Synthetic CT volumes whose objects span known slice ranges (for propagation).

A body with a fat rim, a target organ shaped like an ellipsoid (it tapers to a
small tip at both ends of its slice range and drifts a little from slice to
slice), a larger neighbouring organ that continues beyond the target's ends
(where a propagated box can slip onto it), bright vessels through every slice,
and spatially correlated noise, in Hounsfield units. numpy / scipy only; all
randomness from the caller's generator.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

#: Label values in the returned label volume.
TARGET, NEIGHBOUR = 1, 2


def _ellipse(shape: tuple[int, int], centre: tuple[float, float], radii: tuple[float, float]
             ) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy + 0.5 - centre[0]) / radii[0]) ** 2 + ((xx + 0.5 - centre[1]) / radii[1]) ** 2 < 1


def synthetic_ct_volume(rng: np.random.Generator, depth: int = 31, size: int = 160,
                        span: tuple[int, int] = (5, 25)) -> tuple[np.ndarray, np.ndarray]:
    """``(volume, labels)``: int16 HU ``(depth, size, size)`` and int32 labels (1: the
    target organ, on slices ``span[0]..span[1]`` inclusive; 2: its neighbour).

    The target's radii follow an ellipsoid over its span, with at least 3 px at the
    tips, so its first and last slices hold a small but real object.
    """
    first, last = span
    if not 0 <= first <= last < depth:
        raise ValueError(f"span {span} must lie within 0..{depth - 1}")
    shape = (size, size)
    body = _ellipse(shape, (size * 0.5, size * 0.5), (size * 0.38, size * 0.46))
    inner = _ellipse(shape, (size * 0.5, size * 0.5), (size * 0.34, size * 0.42))
    centre = np.array([size * rng.uniform(0.42, 0.5), size * rng.uniform(0.38, 0.46)])
    drift = rng.uniform(-0.4, 0.4, 2)
    peak = np.array([size * rng.uniform(0.12, 0.16), size * rng.uniform(0.13, 0.18)])
    middle, half = (first + last) / 2, (last - first) / 2 + 1.0
    neighbour_centre = centre + np.array([0.0, peak[1] + size * 0.17])
    vessels = [(size * rng.uniform(0.6, 0.7), size * rng.uniform(0.3, 0.7)) for _ in range(2)]
    target_hu, neighbour_hu = rng.uniform(110, 140), rng.uniform(60, 80)
    volume = np.empty((depth, *shape), np.float32)
    labels = np.zeros((depth, *shape), np.int32)
    for z in range(depth):
        hu = np.full(shape, -1000.0, np.float32)
        hu[body] = -100.0  # fat
        hu[inner] = 40.0  # soft tissue
        neighbour = _ellipse(shape, neighbour_centre + drift * (z - middle) * 0.5,
                             (size * 0.15, size * 0.1)) & inner
        hu[neighbour] = neighbour_hu
        labels[z][neighbour] = NEIGHBOUR
        if first <= z <= last:
            scale = np.sqrt(max(0.0, 1.0 - ((z - middle) / half) ** 2))
            radii = np.maximum(peak * scale, 3.0)
            target = _ellipse(shape, centre + drift * (z - middle), tuple(radii)) & inner
            hu[target] = target_hu
            labels[z][target] = TARGET
        for vy, vx in vessels:
            hu[_ellipse(shape, (vy, vx), (size * 0.025, size * 0.025))] = 220.0
        volume[z] = hu
    volume = ndi.gaussian_filter(volume, (0.0, 0.8, 0.8))  # partial volume in-plane
    noise = ndi.gaussian_filter(rng.normal(0, 1, volume.shape).astype(np.float32), (0, 1, 1))
    volume += noise * (12.0 / max(float(noise.std()), 1e-6))
    return np.rint(volume).astype(np.int16), labels


def plain_noise_volume(rng: np.random.Generator, depth: int = 31, size: int = 128,
                       span: tuple[int, int] = (5, 25)) -> tuple[np.ndarray, np.ndarray]:
    """``(volume, labels)``: a bright ellipsoid (180) over plain noise (20 +- 8), float32.

    The case where the model's evidence says nothing: LiteMedSAM min-max
    normalises each slice, so past the object's ends the plain background becomes
    full-range noise, and the model answers the box with a confident blob.
    """
    first, last = span
    if not 0 <= first <= last < depth:
        raise ValueError(f"span {span} must lie within 0..{depth - 1}")
    volume = rng.normal(20.0, 8.0, (depth, size, size)).astype(np.float32)
    labels = np.zeros((depth, size, size), np.int32)
    middle, half = (first + last) / 2, (last - first) / 2 + 1.0
    for z in range(first, last + 1):
        scale = np.sqrt(max(0.0, 1.0 - ((z - middle) / half) ** 2))
        radii = (max(size * 0.22 * scale, 3.0), max(size * 0.3 * scale, 3.0))
        target = _ellipse((size, size), (size * 0.5, size * 0.5), radii)
        volume[z][target] = 180.0 + rng.normal(0.0, 8.0, int(target.sum()))
        labels[z][target] = TARGET
    return volume, labels
