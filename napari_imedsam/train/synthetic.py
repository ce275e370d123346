"""Synthetic medical-looking images with instance labels, for box-prompted training.

The shipped demo model may only see data we are allowed to redistribute, so it
is trained on procedurally generated samples.  Two families are produced:

* ``"ct"``: a grayscale axial-slice look (dark air, a body ellipse with a fat
  rim, unlabelled distractor structures, organ-like labelled blobs with their
  own mean intensity and texture, spatially correlated CT noise).
* ``"rgb"``: an endoscopy look (pink/red mucosa, illumination fall-off and
  vignetting, folds, vessels, specular highlights, polyp-like shaded blobs).

Everything is numpy / scipy.ndimage only and costs a few milliseconds per
256x256 sample.  All randomness flows through the caller's
``np.random.Generator`` so a sample is a pure function of the generator state.
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


@lru_cache(maxsize=8)
def _freq_sq(size: int) -> np.ndarray:
    """Squared spatial frequency (cycles/px)^2 on the FFT grid, shape (size, size)."""
    k = np.fft.fftfreq(size).astype(np.float32)
    return k[:, None] ** 2 + k[None, :] ** 2


def _noise_pair(rng: np.random.Generator, size: int, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Two independent Gaussian random fields smoothed at scale ``sigma`` px.

    A complex (non-Hermitian) white spectrum shaped by the Gaussian kernel's
    transfer function gives, after one inverse FFT, real and imaginary parts
    that are independent fields; that halves the FFT cost per texture.  The
    spectral coefficients are uniform rather than normal because drawing
    uniforms is ~3x cheaper and each pixel sums many of them (so it is Gaussian
    anyway); for smooth fields only the low-frequency block is drawn at all.
    Returns two float32 arrays (size, size) with zero mean and unit std.
    """
    n = int(np.ceil(0.6 / max(sigma, 1e-3) * size))  # envelope < 1e-3 beyond this index
    spec = np.zeros((size, size), np.complex64)
    if 2 * n + 1 < size:
        idx = np.r_[0 : n + 1, size - n : size]
        block = np.ix_(idx, idx)
    else:
        block = (slice(None), slice(None))
    k2 = _freq_sq(size)[block]
    draw = rng.random((2, *k2.shape), dtype=np.float32) - 0.5
    spec[block] = (draw[0] + 1j * draw[1]) * np.exp(-2.0 * np.pi**2 * sigma**2 * k2)
    spec[0, 0] = 0.0  # zero mean
    field = sfft.ifft2(spec, workers=1)
    out = []
    for part in (field.real, field.imag):
        out.append(part * np.float32(1.0 / (part.std() + 1e-12)))
    return out[0], out[1]


@dataclass
class _Shape:
    """A rasterised smooth blob on a crop of the image.

    ``sl``: (row slice, col slice) of the crop; ``mask``: (h, w) bool inside;
    ``rho``: (h, w) float32 normalised radius (0 at centre, 1 on the boundary),
    reused for soft edges and dome shading.
    """

    sl: tuple[slice, slice]
    mask: np.ndarray
    rho: np.ndarray


def _random_shape(
    rng: np.random.Generator,
    size: int,
    area_px: float,
    center: tuple[float, float] | None,
    anchor: tuple[float, float] | None = None,
    aspect: tuple[float, float] = (0.55, 1.0),
    wobble: float = 0.3,
    angle: float | None = None,
) -> _Shape:
    """Radially Fourier-perturbed ellipse of roughly ``area_px`` pixels.

    ``center`` is used as given (the blob may leave the frame).  With
    ``center=None`` the blob is moved to fit inside the frame, as close to
    ``anchor`` as possible (random if no anchor): objects are never cut by the
    image border, only by each other.
    """
    ratio = rng.uniform(*aspect)
    ks = np.arange(2, 7)
    amps = rng.normal(0.0, 1.0, ks.size) * wobble / ks
    amps *= min(1.0, wobble / (np.abs(amps).sum() + 1e-8))  # keep the radius positive
    phases = rng.uniform(0, 2 * np.pi, ks.size)
    # mean of (1 + sum a_k cos)^2 is 1 + sum a_k^2 / 2: correct r0 so the area hits target
    r0 = np.sqrt(area_px / (np.pi * (1.0 + 0.5 * np.sum(amps**2))))
    a, b = r0 / np.sqrt(ratio), r0 * np.sqrt(ratio)
    r_max = a * (1.0 + np.abs(amps).sum())
    if center is None:
        if 2 * r_max + 4 > size:  # too big to fit: shrink rather than clip at the border
            shrink = (size - 4) / (2 * r_max)
            a, b, r_max = a * shrink, b * shrink, r_max * shrink
        lo, hi = r_max + 1, size - r_max - 1
        cy, cx = np.clip(anchor, lo, hi) if anchor is not None else rng.uniform(lo, hi, 2)
    else:
        cy, cx = center
    theta0 = rng.uniform(0, np.pi) if angle is None else angle
    y0, y1 = max(0, int(cy - r_max) - 1), min(size, int(cy + r_max) + 2)
    x0, x1 = max(0, int(cx - r_max) - 1), min(size, int(cx + r_max) + 2)
    yy = np.arange(y0, y1, dtype=np.float32)[:, None] - cy
    xx = np.arange(x0, x1, dtype=np.float32)[None, :] - cx
    c, s = np.cos(theta0), np.sin(theta0)
    u, v = (xx * c + yy * s) / a, (-xx * s + yy * c) / b
    # sum_k amp_k cos(k*theta + phi_k) = Re(sum_k amp_k e^{i phi_k} z^k) with z = e^{i theta}:
    # complex powers avoid arctan2 / cos, which dominated the cost
    dist = np.hypot(u, v)
    z = (u + 1j * v).astype(np.complex64) / np.maximum(dist, 1e-6)
    zk = z * z
    acc = np.zeros_like(z)
    for amp, ph in zip(amps, phases):
        acc += np.complex64(amp * np.exp(1j * ph)) * zk
        zk = zk * z
    rho = (dist / (1.0 + acc.real)).astype(np.float32)
    return _Shape((slice(y0, y1), slice(x0, x1)), rho < 1.0, rho)


def _place_objects(
    rng: np.random.Generator, size: int, allowed: np.ndarray, n_target: int
) -> tuple[np.ndarray, list[_Shape]]:
    """Place up to ``n_target`` non-overlapping blobs inside ``allowed`` (size, size) bool.

    Later objects are clipped by earlier ones (and by ``allowed``) and keep only
    their largest connected piece; a placement is accepted only if that piece
    holds >= 60 % of the unclipped blob.  Returns labels (size, size) int32 and
    the accepted shapes (their ``mask`` replaced by the kept piece).
    """
    labels = np.zeros((size, size), np.int32)
    shapes: list[_Shape] = []
    total = float(size * size)
    budget = 0.5 * allowed.mean()  # at most half the allowed region becomes foreground
    used = 0.0
    cand = np.flatnonzero(allowed)  # anchors drawn here so few tries land outside
    if cand.size == 0:
        return labels, shapes
    for _ in range(n_target):
        hi = min(0.30, budget - used)
        if hi < 0.02:
            break
        frac = float(np.exp(rng.uniform(np.log(0.02), np.log(hi))))
        for _attempt in range(12):
            anchor = divmod(int(cand[rng.integers(cand.size)]), size)
            shp = _random_shape(rng, size, frac * total, None, anchor=anchor)
            keep = shp.mask & allowed[shp.sl] & (labels[shp.sl] == 0)
            comp, n_comp = ndi.label(keep)
            if n_comp > 1:  # clipping may split the blob: one object must stay one piece
                keep = comp == (np.argmax(np.bincount(comp.ravel())[1:]) + 1)
            if keep.sum() >= max(_MIN_KEEP * shp.mask.sum(), 16):
                labels[shp.sl][keep] = len(shapes) + 1
                shp.mask = keep
                shapes.append(shp)
                used += keep.sum() / total
                break
            frac = max(0.02, frac * 0.8)  # crowded: try a smaller blob next
    return labels, shapes


def _soft_alpha(rng: np.random.Generator, shp: _Shape, subtle: bool) -> np.ndarray:
    """Blend weight (h, w) inside the kept mask, ramping to 0 at the boundary.

    A wide ramp mimics lesions that fade into the surroundings.
    """
    width = rng.uniform(0.15, 0.45) if subtle else rng.uniform(0.02, 0.15)
    return np.clip((1.0 - shp.rho) / width, 0.0, 1.0) * shp.mask


def _render_ct(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """CT-like slice: float32 (size, size) in ~[0, 1] and labels (size, size) int32."""
    body = _random_shape(rng, size, rng.uniform(0.45, 0.7) * size * size,
                         (size / 2 + rng.normal(0, size * 0.02), size / 2 + rng.normal(0, size * 0.02)),
                         aspect=(0.6, 0.9), wobble=0.08, angle=rng.normal(0, 0.08))
    body_mask = np.zeros((size, size), bool)
    body_mask[body.sl] = body.mask
    rho_b = np.full((size, size), 2.0, np.float32)
    rho_b[body.sl] = body.rho
    fat_edge = 1.0 - rng.uniform(0.04, 0.12)

    tex_lo, tex_mid = _noise_pair(rng, size, size * rng.uniform(0.04, 0.1))
    tex_hi, obj_tex = _noise_pair(rng, size, rng.uniform(1.0, 2.5))
    soft = rng.uniform(0.4, 0.55)
    img = np.full((size, size), rng.uniform(0.0, 0.05), np.float32)  # air
    tissue = soft + 0.03 * tex_lo + 0.015 * tex_mid
    img = np.where(body_mask, tissue, img)
    img = np.where(body_mask & (rho_b > fat_edge), rng.uniform(0.22, 0.32) + 0.01 * tex_hi, img)

    # unlabelled distractors (bone, gas, vessels) so "anything bright" is not the answer
    for _ in range(rng.integers(2, 6)):
        d = _random_shape(rng, size, rng.uniform(0.002, 0.03) * size * size, None, wobble=0.2)
        inside = d.mask & body_mask[d.sl] & (rho_b[d.sl] < fat_edge - 0.05)
        val = rng.choice([rng.uniform(0.8, 1.0), rng.uniform(0.02, 0.1), rng.uniform(0.6, 0.75)])
        img[d.sl] = np.where(inside, val + 0.02 * tex_hi[d.sl], img[d.sl])

    allowed = body_mask & (rho_b < fat_edge - 0.03)
    labels, shapes = _place_objects(rng, size, allowed, int(rng.integers(1, 5)))
    for shp in shapes:
        subtle = rng.random() < 0.25
        delta = rng.uniform(0.03, 0.07) if subtle else rng.uniform(0.08, 0.3)
        mean = np.clip(soft + delta * rng.choice([-1.0, 1.0]), 0.08, 0.92)
        sub = img[shp.sl]
        # own texture amplitude and an optional rim/core gradient (enhancing lesion look)
        val = (mean + rng.uniform(0.01, 0.05) * obj_tex[shp.sl]
               + rng.uniform(-0.08, 0.08) * (shp.rho - 0.5))
        alpha = _soft_alpha(rng, shp, subtle)
        img[shp.sl] = sub * (1 - alpha) + val * alpha

    img = ndi.gaussian_filter(img, rng.uniform(0.5, 1.0), truncate=2.5)  # partial volume
    noise_a, _ = _noise_pair(rng, size, rng.uniform(0.6, 1.2))  # CT noise is correlated
    img += rng.uniform(0.01, 0.05) * noise_a
    return img, labels


def _render_rgb(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Endoscopy-like frame: float32 (size, size, 3) in ~[0, 1] and labels (size, size) int32.

    Most effects are single-channel multipliers on a luminance map ``lum`` and
    only the colour-dependent ones touch three channels: that keeps it fast.
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = np.array([rng.uniform(0.75, 0.95), rng.uniform(0.32, 0.55), rng.uniform(0.3, 0.5)], np.float32)
    low_a, low_b = _noise_pair(rng, size, size * rng.uniform(0.06, 0.12))
    mid_a, mid_b = _noise_pair(rng, size, rng.uniform(4.0, 8.0))
    hi_a, hi_b = _noise_pair(rng, size, rng.uniform(0.8, 1.5))

    lum = 1.0 + 0.06 * low_a + 0.03 * mid_a
    # folds: soft dark bands along level sets of a smooth field, lit on one side
    fold_f = low_b + 0.5 * low_a
    for lvl in rng.uniform(-1.2, 1.2, rng.integers(0, 4)):
        band = np.exp(-(((fold_f - lvl) / rng.uniform(0.08, 0.2)) ** 2))
        lum *= 1.0 - rng.uniform(0.1, 0.3) * band
        lum += rng.uniform(0.03, 0.08) * np.roll(band, int(rng.integers(3, 7)), axis=0)

    aperture = np.ones((size, size), bool)
    if rng.random() < 0.3:  # round scope aperture, black outside
        aperture = np.hypot(yy - 0.5, xx - 0.5) < rng.uniform(0.5, 0.7)
    labels, shapes = _place_objects(rng, size, aperture, int(rng.integers(1, 5)))

    # per-pixel colour: mucosa everywhere, then polyps blended over it
    col = np.empty((size, size, 3), np.float32)
    col[:] = base
    col[..., 1:] *= (1.0 + 0.05 * low_b)[..., None]  # patchy redness
    vessels = np.exp(-((mid_b / rng.uniform(0.03, 0.07)) ** 2)) * rng.uniform(0.0, 0.2)
    col *= 1.0 - vessels[..., None] * np.array([0.3, 1.0, 0.8], np.float32)
    ldir = rng.normal(0, 1, 2)
    ldir /= np.linalg.norm(ldir) + 1e-8
    spec_extra = np.zeros((size, size), np.float32)
    for shp in shapes:
        subtle = rng.random() < 0.25
        tint = base * (1.0 + rng.uniform(0.03, 0.08 if subtle else 0.25) * rng.choice([-1.0, 1.0], 3))
        h = np.sqrt(np.clip(1.0 - shp.rho**2, 0.0, 1.0))  # dome height from the radial profile
        gy, gx = np.gradient(h)
        span = max(shp.mask.shape) / 4.0
        strength = 0.3 if subtle else 1.0  # flat lesions barely bulge
        shade = 1.0 + strength * (rng.uniform(0.1, 0.3) * (h - 0.5) + span * 0.4 * (gy * ldir[0] + gx * ldir[1]))
        shade *= 1.0 + rng.uniform(0.02, 0.08) * hi_b[shp.sl] + 0.04 * mid_a[shp.sl]
        alpha = _soft_alpha(rng, shp, subtle)
        sub_l, sub_c = lum[shp.sl], col[shp.sl]
        lum[shp.sl] = sub_l * (1 - alpha) + np.clip(shade, 0.3, 1.6) * alpha
        sub_c += alpha[..., None] * (tint - sub_c)
        if not subtle:  # wet dome tops glint
            spec_extra[shp.sl] += np.clip((h + 0.05 * hi_a[shp.sl] - 0.97) / 0.02, 0, 1) * shp.mask

    # illumination: bright near the light source, falling off towards the corners
    ly, lx = rng.uniform(0.3, 0.7, 2)
    fall = np.exp(-((yy - ly) ** 2 + (xx - lx) ** 2) / (2 * rng.uniform(0.25, 0.5) ** 2))
    lum *= 0.25 + 0.85 * fall
    # speculars: sparse, clustered (gated by a smooth field) saturated spots, more where lit
    thr = rng.uniform(3.0, 3.8)
    spec = np.clip((hi_a + 0.8 * low_a + 0.8 * fall - thr) / 0.3, 0.0, 1.0) + spec_extra * rng.uniform(0.3, 1.0)
    spec = np.minimum(spec, 1.0) * aperture
    lum = np.where(aperture, lum, 0.01 / base.mean())
    img = col * lum[..., None]
    img += spec[..., None] * (rng.uniform(0.9, 1.0) - img)
    # sensor noise: near-white luminance noise plus weaker chroma noise
    n_l, n_c = _noise_pair(rng, size, 0.5)
    sig = rng.uniform(0.003, 0.02)
    img += (sig * n_l)[..., None] + (0.5 * sig * n_c)[..., None] * np.array([1.0, 0.0, -1.0], np.float32)
    return img, labels


def _photometric(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Random brightness / contrast / gamma on a float image in ~[0, 1]; same shape."""
    img = (img - 0.5) * rng.uniform(0.8, 1.2) + 0.5 + rng.uniform(-0.08, 0.08)
    return np.clip(img, 0.0, 1.0) ** rng.uniform(0.75, 1.35)


def synthetic_sample(
    rng: np.random.Generator, size: int = 256, kind: str = "mixed"
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic image with instance labels.

    Args:
        rng: source of all randomness (the sample is deterministic given its state).
        size: side length in pixels.
        kind: ``"ct"``, ``"rgb"`` or ``"mixed"`` (each 50/50).

    Returns:
        image (size, size, 3) uint8 RGB (equal channels for CT) and
        labels (size, size) int32 with 0 = background and 1..n objects (n in 1..4).
    """
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
    if size < 32:
        raise ValueError(f"size must be >= 32, got {size}")
    if kind == "mixed":
        kind = "ct" if rng.random() < 0.5 else "rgb"
    if kind == "ct":
        gray, labels = _render_ct(rng, size)
        gray = _photometric(rng, gray)
        img = np.repeat(gray[..., None], 3, axis=2)
    else:
        img, labels = _render_rgb(rng, size)
        img = _photometric(rng, img)
    return (img * 255.0 + 0.5).astype(np.uint8), labels


def synthetic_dataset(
    n: int, size: int = 256, kind: str = "mixed", seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` samples from :func:`synthetic_sample` drawn from one seeded generator."""
    rng = np.random.default_rng(seed)
    return [synthetic_sample(rng, size, kind) for _ in range(n)]
