"""Synthetic medical-looking images with instance labels, for box-prompted training.

The shipped default model's decoder may only see data we may redistribute, so
it is trained on procedurally generated samples of two families:

* ``"ct"``: grayscale axial-slice look: dark air, a body ellipse with a fat rim,
  unlabelled distractors, organ-like labelled blobs with their own mean and
  texture, spatially correlated CT noise.
* ``"rgb"``: endoscopy look: pink/red mucosa, illumination fall-off, folds,
  vessels, specular glints, shaded polyp-like blobs.

numpy / scipy only, ~10-20 ms per 256x256 sample; all randomness comes from the
caller's ``np.random.Generator``, so a sample is a pure function of its state.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import fft as sfft
from scipy import ndimage as ndi

__all__ = ["synthetic_sample", "synthetic_dataset"]

_KINDS = ("ct", "rgb", "mixed")
_MIN_KEEP = 0.6  # an object clipped by earlier ones must keep this share of its area
_P_SUBTLE = 0.25  # share of objects drawn with low contrast and soft edges
# polyp colour relative to the mucosa: hyperaemic (redder), pale / whitish, darker
_TINTS = np.array([[0.3, -1.0, -0.8], [0.2, 0.9, 0.8], [-0.6, -0.6, -0.4]], np.float32)


@lru_cache(maxsize=8)
def _freq_sq(size: int) -> np.ndarray:
    """Squared spatial frequency (cycles/px)^2 on the FFT grid, shape (size, size)."""
    k = np.fft.fftfreq(size).astype(np.float32)
    return k[:, None] ** 2 + k[None, :] ** 2


def _noise_pair(rng: np.random.Generator, size: int, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Two independent Gaussian random fields smoothed at scale ``sigma`` px.

    One inverse FFT of a complex (non-Hermitian) spectrum shaped by the Gaussian
    transfer function yields two independent fields (real and imaginary part).
    Spectral coefficients are uniform, not normal: 3x cheaper to draw and every
    pixel sums many of them, so it is Gaussian anyway.  Smooth fields only draw
    their low-frequency block.  Returns two float32 (size, size), mean 0, std 1.
    """
    n = int(np.ceil(0.6 / max(sigma, 1e-3) * size))  # envelope < 1e-3 beyond this index
    block: tuple = (slice(None), slice(None))
    if 2 * n + 1 < size:
        idx = np.r_[0 : n + 1, size - n : size]
        block = np.ix_(idx, idx)
    k2 = _freq_sq(size)[block]
    draw = rng.random((2, *k2.shape), dtype=np.float32) - 0.5
    spec = np.zeros((size, size), np.complex64)
    spec[block] = (draw[0] + 1j * draw[1]) * np.exp(-2.0 * np.pi**2 * sigma**2 * k2)
    spec[0, 0] = 0.0  # zero mean
    field = sfft.ifft2(spec, workers=1)
    re, im = field.real, field.imag
    return re * np.float32(1.0 / (re.std() + 1e-12)), im * np.float32(1.0 / (im.std() + 1e-12))


@dataclass
class _Shape:
    """A blob on the crop ``sl`` (rows, cols): ``mask`` (h, w) bool, ``rho`` (h, w)
    float32 normalised radius (0 centre, 1 boundary; drives soft edges and shading)."""

    sl: tuple[slice, slice]
    mask: np.ndarray
    rho: np.ndarray


def _random_shape(
    rng: np.random.Generator, size: int, area_px: float, center: tuple[float, float] | None,
    anchor: tuple[float, float] | None = None, aspect: tuple[float, float] = (0.55, 1.0),
    wobble: float = 0.3, angle: float | None = None,
) -> _Shape:
    """Ellipse with a radially Fourier-perturbed boundary, of roughly ``area_px`` pixels.

    ``center`` is used as given (the blob may leave the frame).  With
    ``center=None`` the blob is shrunk / moved to fit inside the frame, as close
    to ``anchor`` as possible: objects are cut by each other, never by the border.
    """
    ratio = rng.uniform(*aspect)
    ks = np.arange(2, 7)
    amps = rng.normal(0.0, 1.0, ks.size) * wobble / ks
    amps *= min(1.0, wobble / (np.abs(amps).sum() + 1e-8))  # radius stays > 1 - wobble
    phases = rng.uniform(0, 2 * np.pi, ks.size)
    # mean of (1 + sum a_k cos)^2 is 1 + sum a_k^2 / 2: correct r0 so the area hits target
    r0 = np.sqrt(area_px / (np.pi * (1.0 + 0.5 * np.sum(amps**2))))
    a, b = r0 / np.sqrt(ratio), r0 * np.sqrt(ratio)
    r_max = a * (1.0 + np.abs(amps).sum())
    if center is None:
        if 2 * r_max + 4 > size:
            shrink = (size - 4) / (2 * r_max)
            a, b, r_max = a * shrink, b * shrink, r_max * shrink
        lo, hi = r_max + 1, size - r_max - 1
        center = np.clip(anchor, lo, hi) if anchor is not None else rng.uniform(lo, hi, 2)
    # numpy float64 scalars would promote every float32 array below to float64 (2x slower)
    cy, cx, a, b, r_max = float(center[0]), float(center[1]), float(a), float(b), float(r_max)
    theta0 = float(rng.uniform(0, np.pi) if angle is None else angle)
    y0, y1 = max(0, int(cy - r_max) - 1), min(size, int(cy + r_max) + 2)
    x0, x1 = max(0, int(cx - r_max) - 1), min(size, int(cx + r_max) + 2)
    yy = np.arange(y0, y1, dtype=np.float32)[:, None] - cy
    xx = np.arange(x0, x1, dtype=np.float32)[None, :] - cx
    c, s = float(np.cos(theta0)), float(np.sin(theta0))
    u, v = (xx * c + yy * s) / a, (-xx * s + yy * c) / b
    # sum_k a_k cos(k theta + phi_k) = Re(sum_k a_k e^{i phi_k} z^k), z = e^{i theta}:
    # complex powers avoid arctan2 / cos, which dominated the cost
    dist = np.hypot(u, v)
    inv = 1.0 / np.maximum(dist, 1e-6)
    z = np.empty(dist.shape, np.complex64)
    z.real, z.imag = u * inv, v * inv
    zk, acc = z * z, np.zeros_like(z)
    for amp, ph in zip(amps, phases):
        acc += np.complex64(amp * np.exp(1j * ph)) * zk
        zk = zk * z
    rho = (dist / (1.0 + acc.real)).astype(np.float32)
    return _Shape((slice(y0, y1), slice(x0, x1)), rho < 1.0, rho)


def _place_objects(
    rng: np.random.Generator, size: int, allowed: np.ndarray, n_target: int
) -> tuple[np.ndarray, list[_Shape]]:
    """Place up to ``n_target`` non-overlapping blobs inside ``allowed`` (size, size) bool.

    A blob is clipped by earlier ones and by ``allowed`` and keeps its largest
    connected piece; it is accepted only if that piece holds >= 60 % of it.
    Returns labels (size, size) int32 (1..n) and the shapes with ``mask`` = kept piece.
    """
    labels = np.zeros((size, size), np.int32)
    shapes: list[_Shape] = []
    budget, used = 0.5 * allowed.mean(), 0.0  # at most half the allowed region is foreground
    free = allowed.copy()
    for _ in range(n_target):
        cand = np.flatnonzero(free)  # anchors on free pixels: far fewer rejected tries
        hi = min(0.30, budget - used)
        if cand.size == 0 or hi < 0.02:
            break
        frac = float(np.exp(rng.uniform(np.log(0.02), np.log(hi))))
        for _attempt in range(12):
            anchor = divmod(int(cand[rng.integers(cand.size)]), size)
            shp = _random_shape(rng, size, frac * size * size, None, anchor=anchor)
            keep = shp.mask & free[shp.sl]
            comp, n_comp = ndi.label(keep)
            if n_comp > 1:  # clipping may split the blob: one object must stay one piece
                keep = comp == (np.argmax(np.bincount(comp.ravel())[1:]) + 1)
            if keep.sum() >= max(_MIN_KEEP * shp.mask.sum(), 16):
                labels[shp.sl][keep] = len(shapes) + 1
                free[shp.sl][keep] = False
                shp.mask = keep
                shapes.append(shp)
                used += keep.sum() / size**2
                break
            frac = max(0.02, frac * 0.8)  # crowded: try a smaller blob next
    return labels, shapes


def _soft_alpha(rng: np.random.Generator, shp: _Shape, subtle: bool) -> np.ndarray:
    """Blend weight (h, w) in [0, 1] inside the kept mask, ramping to 0 at the boundary.

    A wide ramp mimics lesions that fade into their surroundings.
    """
    width = rng.uniform(0.15, 0.45) if subtle else rng.uniform(0.02, 0.15)
    return np.clip((1.0 - shp.rho) / width, 0.0, 1.0) * shp.mask


def _render_ct(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """CT-like slice: float32 (size, size) in ~[0, 1] and labels (size, size) int32."""
    mid = size / 2 + rng.normal(0, size * 0.02, 2)
    body = _random_shape(rng, size, rng.uniform(0.45, 0.7) * size * size, (mid[0], mid[1]),
                         aspect=(0.6, 0.9), wobble=0.08, angle=rng.normal(0, 0.08))
    rho_b = np.full((size, size), 2.0, np.float32)  # body-normalised radius, > 1 outside
    rho_b[body.sl] = body.rho
    body_mask, fat_edge = rho_b < 1.0, 1.0 - rng.uniform(0.04, 0.12)

    # two FFTs give four fields: smooth shading, mottling, fine grain, correlated CT noise
    tex_lo, tex_mid = _noise_pair(rng, size, size * rng.uniform(0.03, 0.08))
    ct_noise, tex_hi = _noise_pair(rng, size, rng.uniform(0.6, 1.2))
    soft = rng.uniform(0.4, 0.55)
    img = np.full((size, size), rng.uniform(0.0, 0.05), np.float32)  # air
    img = np.where(body_mask, soft + 0.03 * tex_lo + 0.015 * tex_mid, img)
    img = np.where(body_mask & (rho_b > fat_edge), rng.uniform(0.22, 0.32) + 0.01 * tex_hi, img)

    # unlabelled distractors (bone, gas, vessels): the box, not brightness, must pick the target
    for _ in range(rng.integers(2, 6)):
        d = _random_shape(rng, size, rng.uniform(0.002, 0.03) * size * size, None, wobble=0.2)
        inside = d.mask & (rho_b[d.sl] < fat_edge - 0.05)
        val = float(rng.choice([rng.uniform(0.8, 1.0), rng.uniform(0.02, 0.1), rng.uniform(0.6, 0.75)]))
        img[d.sl] = np.where(inside, val + 0.02 * tex_hi[d.sl], img[d.sl])

    labels, shapes = _place_objects(rng, size, rho_b < fat_edge - 0.03, int(rng.integers(1, 5)))
    for shp in shapes:
        subtle = rng.random() < _P_SUBTLE
        delta = rng.uniform(0.03, 0.07) if subtle else rng.uniform(0.08, 0.3)
        mean = float(np.clip(soft + delta * rng.choice([-1.0, 1.0]), 0.08, 0.92))
        # own grain / mottling amplitudes and a rim-core gradient (enhancing lesion look)
        val = (mean + rng.uniform(0.0, 0.04) * tex_hi[shp.sl] + rng.uniform(0.0, 0.05) * tex_mid[shp.sl]
               + rng.uniform(-0.08, 0.08) * (shp.rho - 0.5))
        alpha = _soft_alpha(rng, shp, subtle)
        img[shp.sl] += alpha * (val - img[shp.sl])

    img = ndi.gaussian_filter(img, rng.uniform(0.5, 1.0), truncate=2.5)  # partial volume
    img += rng.uniform(0.01, 0.05) * ct_noise  # CT noise is spatially correlated, not white
    return img, labels


def _render_rgb(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Endoscopy-like frame: float32 (3, size, size) in ~[0, 1] and labels (size, size) int32.

    Channel-first because broadcasting a (size, size) map over a trailing axis
    of length 3 is ~10x slower; most effects multiply a one-channel luminance
    map ``lum`` and only colour-dependent ones touch three channels.
    """
    base = np.array([rng.uniform(0.75, 0.95), rng.uniform(0.32, 0.55), rng.uniform(0.3, 0.5)], np.float32)
    low_a, low_b = _noise_pair(rng, size, size * rng.uniform(0.06, 0.12))
    mid_a, mid_b = _noise_pair(rng, size, rng.uniform(4.0, 8.0))
    hi_a, hi_b = _noise_pair(rng, size, rng.uniform(1.0, 2.0))

    lum = 1.0 + 0.06 * low_a + 0.03 * mid_a + rng.uniform(0.0, 0.03) * hi_a  # mucosal grain
    # folds: soft dark bands along level sets of a smooth field, with a lit ridge beside them
    fold_f = low_b + 0.5 * low_a
    ridges: list[np.ndarray] = []
    for lvl in rng.uniform(-1.2, 1.2, rng.integers(0, 4)):
        band = np.exp(-(((fold_f - lvl) / rng.uniform(0.12, 0.3)) ** 2))
        lum *= 1.0 - rng.uniform(0.1, 0.25) * band
        shift = int(rng.integers(4, 9)) * int(rng.choice([-1, 1]))
        ridges.append(np.roll(band, shift, axis=int(rng.integers(2))))
        lum += rng.uniform(0.04, 0.1) * ridges[-1]

    grid = (np.arange(size, dtype=np.float32) + 0.5) / size
    aperture = np.ones((size, size), bool)
    if rng.random() < 0.3:  # round scope aperture, black outside
        aperture = np.hypot(grid[:, None] - 0.5, grid[None, :] - 0.5) < rng.uniform(0.5, 0.7)
    labels, shapes = _place_objects(rng, size, aperture, int(rng.integers(1, 5)))

    # colour: mucosa with patchy redness and thin vessels (which lose green / blue)
    col = np.empty((3, size, size), np.float32)
    col[:] = base[:, None, None]
    vessels = np.exp(-((mid_b / rng.uniform(0.03, 0.07)) ** 2)) * rng.uniform(0.0, 0.2)
    col[1:] *= 1.0 + 0.05 * low_b - vessels
    lum *= 1.0 - 0.3 * vessels
    ld = rng.normal(0, 1, 2)
    ly_dir, lx_dir = (float(v) for v in ld / (np.linalg.norm(ld) + 1e-8))
    glints: list[tuple[int, int]] = []
    for shp in shapes:
        subtle = rng.random() < _P_SUBTLE
        h = np.sqrt(np.clip(1.0 - shp.rho**2, 0.0, 1.0))  # dome height from the radial profile
        gy, gx = np.gradient(h)
        span = max(shp.mask.shape) / 4.0
        lit = span * 0.4 * (gy * ly_dir + gx * lx_dir)  # Lambert-like directional term
        bulge = 0.3 if subtle else 1.0  # flat lesions barely bulge
        shade = 1.0 + bulge * (rng.uniform(0.1, 0.3) * (h - 0.5) + lit)
        shade *= 1.0 + rng.uniform(0.02, 0.08) * hi_b[shp.sl] + 0.04 * mid_a[shp.sl]
        alpha = _soft_alpha(rng, shp, subtle)
        lum[shp.sl] += alpha * (np.clip(shade, 0.3, 1.6) - lum[shp.sl])
        amount = rng.uniform(0.06, 0.12) if subtle else rng.uniform(0.12, 0.3)
        tint = base * (1.0 + amount * _TINTS[rng.integers(len(_TINTS))])
        sub_c = col[:, shp.sl[0], shp.sl[1]]
        sub_c += alpha * (tint[:, None, None] - sub_c)
        if not subtle and rng.random() < 0.7:  # wet domes glint where they face the light most
            iy, ix = np.unravel_index(np.argmax(np.where(shp.mask, lit, -np.inf)), lit.shape)
            for jy, jx in rng.normal(0, span * 0.15, (int(rng.integers(1, 4)), 2)):
                glints.append((int(shp.sl[0].start + iy + jy), int(shp.sl[1].start + ix + jx)))

    # illumination: bright near the light source, falling off towards the corners (separable)
    ly, lx = (float(v) for v in rng.uniform(0.3, 0.7, 2))
    w = 2 * rng.uniform(0.25, 0.5) ** 2
    fall = np.exp(-((grid - ly) ** 2) / w)[:, None] * np.exp(-((grid - lx) ** 2) / w)[None, :]
    lum *= 0.25 + 0.85 * fall
    lum[~aperture] = 0.01 / float(base.mean())
    img = col * lum
    img += rng.uniform(0.003, 0.02) * rng.standard_normal((size, size), dtype=np.float32)  # sensor

    # more glints on lit fold ridges (best of a random pixel sample) plus a few anywhere
    n_ridge = int(rng.integers(0, 12))
    if ridges and n_ridge:
        py, px = rng.integers(0, size, (2, 256))
        score = np.max([r[py, px] for r in ridges], axis=0) * fall[py, px] + 0.1 * rng.random(256)
        glints += [(int(py[i]), int(px[i])) for i in np.argsort(score)[-n_ridge:] if score[i] > 0.3]
    glints += [(int(y), int(x)) for y, x in rng.integers(0, size, (int(rng.integers(0, 4)), 2))]
    white = rng.uniform(0.9, 1.0)
    for cy, cx in glints:  # small elongated saturated spots; only their crops are touched
        if not (0 <= cy < size and 0 <= cx < size):
            continue
        r = rng.uniform(1.0, 3.5)
        spot = _random_shape(rng, size, np.pi * (2 * r) ** 2, (cy, cx), aspect=(0.4, 1.0), wobble=0.0)
        wgt = np.clip(1.6 * np.exp(-2.1 * spot.rho**2) - 0.2, 0.0, 1.0) * aperture[spot.sl]
        sub = img[:, spot.sl[0], spot.sl[1]]
        sub += wgt * (white - sub)
    return img, labels


def _to_uint8(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Random contrast / brightness / gamma, then quantise; float ~[0, 1] -> uint8, same shape.

    All three are folded into one 4096-entry lookup table: far cheaper than
    ``**`` on every pixel.
    """
    x = np.linspace(0.0, 1.0, 4096)
    y = (x - 0.5) * rng.uniform(0.8, 1.2) + 0.5 + rng.uniform(-0.08, 0.08)
    lut = (np.clip(y, 0.0, 1.0) ** rng.uniform(0.75, 1.35) * 255.0 + 0.5).astype(np.uint8)
    return lut[np.clip(img * 4095.0 + 0.5, 0.0, 4095.0).astype(np.uint16)]


def synthetic_sample(
    rng: np.random.Generator, size: int = 256, kind: str = "mixed"
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic image with instance labels.

    Args:
        rng: source of all randomness (the sample is deterministic given its state).
        size: side length in pixels (>= 32).
        kind: ``"ct"``, ``"rgb"`` or ``"mixed"`` (either, 50/50).

    Returns:
        image (size, size, 3) uint8 RGB (three equal channels for CT) and
        labels (size, size) int32: 0 = background, 1..n objects with n in 1..4.
    """
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
    if size < 32:
        raise ValueError(f"size must be >= 32, got {size}")
    if kind == "mixed":
        kind = "ct" if rng.random() < 0.5 else "rgb"
    if kind == "ct":
        gray, labels = _render_ct(rng, size)
        return np.repeat(_to_uint8(rng, gray)[..., None], 3, axis=2), labels
    chw, labels = _render_rgb(rng, size)
    return np.ascontiguousarray(_to_uint8(rng, chw).transpose(1, 2, 0)), labels


def synthetic_dataset(
    n: int, size: int = 256, kind: str = "mixed", seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` samples of :func:`synthetic_sample` drawn from one generator seeded with ``seed``."""
    rng = np.random.default_rng(seed)
    return [synthetic_sample(rng, size, kind) for _ in range(n)]
