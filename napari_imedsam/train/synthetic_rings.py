"""Two structures in one box: a wall around a cavity, for learning classes.

Each image holds one object of two classes that share a box: label 1 is the
inner structure (a disc: a blood pool, a cyst's content; or a lumen), label 2
the ring-shaped wall around it (a heart-muscle wall, a vessel wall, a cyst's
rim). Two families: ``"ring"`` (a round or oval disc with its wall) and
``"tube"`` (an elongated lumen, a vessel cut along its axis, with its wall).
Grey CT-like images: the wall is brighter than the tissue around it and than
the cavity, with texture, noise and a soft blur, so both of its edges are
visible but a box-prompted model picks the filled whole.

numpy / scipy only; a sample is a pure function of the generator's state.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

KINDS = ("ring", "tube", "mixed")
#: Label values of the two classes.
INNER, WALL = 1, 2


def _oval(rows: np.ndarray, cols: np.ndarray, centre: tuple[float, float],
          radii: tuple[float, float], angle: float) -> np.ndarray:
    """Normalised radius (1 on the boundary) of a rotated ellipse at every pixel."""
    dy, dx = rows - centre[0], cols - centre[1]
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * dx + s * dy, -s * dx + c * dy
    return np.sqrt((u / radii[1]) ** 2 + (v / radii[0]) ** 2)


def ring_sample(rng: np.random.Generator, size: int = 256,
                kind: str = "mixed") -> tuple[np.ndarray, np.ndarray]:
    """``(H, W, 3)`` uint8 image and ``(H, W)`` int32 labels (1 inner, 2 wall)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind == "mixed":
        kind = KINDS[int(rng.integers(2))]
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
    centre = (size * rng.uniform(0.35, 0.65), size * rng.uniform(0.35, 0.65))
    angle = rng.uniform(0, np.pi)
    if kind == "ring":
        outer = size * rng.uniform(0.14, 0.26)
        radii = (outer, outer * rng.uniform(0.75, 1.0))
    else:
        outer = size * rng.uniform(0.07, 0.11)
        radii = (outer, outer * rng.uniform(2.2, 3.4))  # long along the rotated x axis
    thickness = rng.uniform(0.22, 0.4)  # of the outer radius
    r = _oval(rows, cols, centre, radii, angle)
    labels = np.zeros((size, size), np.int32)
    labels[r <= 1.0] = WALL
    labels[r <= 1.0 - thickness] = INNER

    tissue = rng.uniform(70, 110)
    wall = tissue + rng.uniform(45, 90)
    inner = tissue + rng.uniform(-40, 30)
    if abs(inner - tissue) < 12:
        inner = tissue - 25
    texture = ndi.gaussian_filter(rng.normal(0, 1, (size, size)), size / 40)
    texture /= texture.std() + 1e-6
    image = np.full((size, size), tissue, np.float32) + 6 * texture
    image[labels == WALL] = wall + 5 * texture[labels == WALL]
    image[labels == INNER] = inner + 4 * texture[labels == INNER]
    # Unlabelled tissue structures so that the box is not the only thing in view.
    for _ in range(int(rng.integers(2, 5))):
        spot = _oval(rows, cols, (size * rng.uniform(0.05, 0.95), size * rng.uniform(0.05, 0.95)),
                     (size * rng.uniform(0.03, 0.08), size * rng.uniform(0.03, 0.08)), 0.0)
        image[(spot <= 1.0) & (labels == 0)] += rng.uniform(-30, 40)
    image = ndi.gaussian_filter(image, rng.uniform(0.6, 1.4))
    image += rng.normal(0, rng.uniform(3, 8), image.shape)
    grey = np.clip(image, 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1), labels


def ring_dataset(count: int, seed: int, size: int = 256,
                 kind: str = "mixed") -> list[tuple[np.ndarray, np.ndarray]]:
    """``count`` samples from one seed (the same seed gives the same images)."""
    rng = np.random.default_rng(seed)
    return [ring_sample(rng, size, kind) for _ in range(count)]
