"""Joint augmentation of an image and one object mask for box-prompted training.

Follows the I-MedSAM recipe (colour jitter, posterize, sharpen, blur, noise,
rotation, flips, affine) on top of ``torchvision.transforms.v2`` functionals
applied to ``tv_tensors.Image`` / ``tv_tensors.Mask`` so that one set of
geometric parameters moves image and mask together (masks always resample
with nearest neighbour, so label values never blend).

Design choices:

* All random parameters come from the augmenter's own ``np.random.Generator``
  (and a ``torch.Generator`` seeded from it for the noise), so results are
  deterministic given ``seed`` and the caller's global torch / numpy RNG state
  is never read or modified.
* Geometric parameters are drawn explicitly (not via ``v2.RandomAffine``) so
  the expected area change (``scale**2``) is known and a draw that pushes the
  object out of the frame can be detected and redrawn.
* Work happens on float32 images in [0, 1]: on CPU the float kernels are
  several times faster than the uint8 ones.  Hue uses a YIQ chroma rotation
  instead of ``F.adjust_hue`` (an HSV round trip, ~10 ms at 384x384).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

__all__ = ["AugmentConfig", "Augmenter"]

# RGB <-> YIQ (NTSC); rotating the (I, Q) plane shifts hue and leaves gray pixels alone
_RGB2YIQ = torch.tensor(
    [[0.299, 0.587, 0.114], [0.5959, -0.2746, -0.3213], [0.2115, -0.5227, 0.3112]], dtype=torch.float32
)
_YIQ2RGB = torch.linalg.inv(_RGB2YIQ)


@dataclass
class AugmentConfig:
    """Probabilities (``p_*``) and ranges of every augmentation.

    Intensity (image only): colour jitter, posterize, sharpen, blur, noise.
    Geometric (image and mask): flips, rotation, affine (translate/scale/shear).
    ``AugmentConfig.identity()`` switches everything off, which is a handy
    starting point for ``dataclasses.replace``.
    """

    # colour jitter: factors drawn from [1 - x, 1 + x]; hue shift in [-hue, hue] turns
    p_color_jitter: float = 0.8
    brightness: float = 0.25
    contrast: float = 0.25
    saturation: float = 0.25
    hue: float = 0.03
    p_posterize: float = 0.1
    posterize_bits: tuple[int, int] = (4, 7)
    p_sharpen: float = 0.15
    sharpness: tuple[float, float] = (1.5, 3.0)
    p_blur: float = 0.15
    blur_sigma: tuple[float, float] = (0.3, 1.2)
    p_noise: float = 0.3
    noise_sigma: tuple[float, float] = (0.005, 0.04)  # in units of full intensity range
    p_hflip: float = 0.5
    p_vflip: float = 0.5
    p_rotate: float = 0.3
    rotate_degrees: float = 30.0
    p_affine: float = 0.4
    translate: float = 0.1  # fraction of width / height
    scale: tuple[float, float] = (0.85, 1.2)
    shear_degrees: float = 8.0
    max_area_loss: float = 0.1  # reject geometric draws losing more of the object than this
    geometric_retries: int = 5
    # torch intra-op threads during a call (0: leave as is).  One sample is too small to
    # gain from more, and OpenMP spin-waiting next to other busy processes (loader
    # workers, training) measured 20x slower tails with 2 threads on 2 cores
    torch_threads: int = 1

    @classmethod
    def identity(cls) -> "AugmentConfig":
        """A config whose every ``p_*`` is 0 (the augmenter returns its inputs unchanged)."""
        return replace(cls(), **{f.name: 0.0 for f in fields(cls) if f.name.startswith("p_")})


@dataclass
class _Geometry:
    """One draw of geometric parameters (``F.affine`` conventions, degrees and pixels)."""

    hflip: bool = False
    vflip: bool = False
    angle: float = 0.0
    translate: tuple[float, float] = (0.0, 0.0)
    scale: float = 1.0
    shear: tuple[float, float] = (0.0, 0.0)

    @property
    def resamples(self) -> bool:
        """True if the affine part is not the identity (flips need no resampling)."""
        return (self.angle, self.translate, self.scale, self.shear) != (0.0, (0.0, 0.0), 1.0, (0.0, 0.0))


class Augmenter:
    """Callable applying random intensity and geometric augmentations.

    Each instance owns its random stream; give every data-loader worker its own
    seed, otherwise forked copies repeat the same augmentations.
    """

    def __init__(self, config: AugmentConfig | None = None, seed: int | None = None) -> None:
        self.config = config if config is not None else AugmentConfig()
        self._rng = np.random.default_rng(seed)

    # ------------------------------------------------------------------ public
    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Augment an image and its object mask jointly.

        Args:
            image: (H, W, 3) uint8 RGB.
            mask: (H, W) bool or integer; 0 is background.

        Returns:
            (H, W, 3) uint8 image and (H, W) mask of the input dtype whose
            values are a subset of the input values (plus 0 where the frame
            was padded).
        """
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
        if mask.shape != image.shape[:2]:
            raise ValueError(f"mask shape {mask.shape} does not match image {image.shape[:2]}")
        with _torch_threads(self.config.torch_threads):
            return self._augment(image, mask)

    def _augment(self, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Body of :meth:`__call__` on validated inputs (same shapes and dtypes)."""
        # torch lacks kernels for unsigned 16/32/64-bit ints: carry such masks as int64
        ok = (np.bool_, np.uint8, np.int16, np.int32, np.int64)
        work_dtype = mask.dtype if mask.dtype in ok else np.int64
        img_u8 = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        gray = bool(torch.equal(img_u8[0], img_u8[1]) and torch.equal(img_u8[1], img_u8[2]))
        img = tv_tensors.Image(img_u8.float().div_(255.0))
        msk = tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(mask.astype(work_dtype, copy=False))))

        img, msk = self._geometric(img, msk)
        img = self._intensity(img, gray)

        # transposing the float tensor into an HWC buffer first, then converting in
        # place, is the cheapest route to a C-contiguous (H, W, 3) uint8 array
        out = torch.empty((*img.shape[-2:], 3), dtype=torch.float32)
        out.copy_(img.as_subclass(torch.Tensor).permute(1, 2, 0))
        out = out.mul_(255.0).add_(0.5).clamp_(0.0, 255.0).to(torch.uint8)
        return out.numpy(), msk.numpy().astype(mask.dtype, copy=False)

    # --------------------------------------------------------------- geometric
    def _draw_geometry(self, height: int, width: int) -> _Geometry:
        """Random flips, rotation and affine parameters for an (height, width) image."""
        c, r = self.config, self._rng
        geo = _Geometry(hflip=bool(r.random() < c.p_hflip), vflip=bool(r.random() < c.p_vflip))
        if r.random() < c.p_rotate:
            geo.angle = float(r.uniform(-c.rotate_degrees, c.rotate_degrees))
        if r.random() < c.p_affine:
            geo.translate = (float(r.uniform(-c.translate, c.translate) * width),
                             float(r.uniform(-c.translate, c.translate) * height))
            geo.scale = float(r.uniform(*c.scale))
            geo.shear = (float(r.uniform(-c.shear_degrees, c.shear_degrees)),
                         float(r.uniform(-c.shear_degrees, c.shear_degrees)))
        return geo

    def _geometric(
        self, img: tv_tensors.Image, msk: tv_tensors.Mask
    ) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        """Flip / rotate / affine both tensors with shared parameters; img (3, H, W), msk (H, W).

        A draw is accepted if the object keeps >= (1 - max_area_loss) of its
        expected area (area * scale^2; rotation and shear preserve area).
        After ``geometric_retries`` rejected draws only the flips are kept:
        they are lossless, so the object can never leave the frame.
        """
        height, width = msk.shape[-2:]
        area0 = int((msk != 0).sum())
        geo = self._draw_geometry(height, width)
        if geo.hflip:
            img, msk = F.horizontal_flip(img), F.horizontal_flip(msk)
        if geo.vflip:
            img, msk = F.vertical_flip(img), F.vertical_flip(msk)
        for attempt in range(max(1, self.config.geometric_retries)):
            if attempt:  # redraw only the lossy part; flips already applied stay
                new = self._draw_geometry(height, width)
                geo = replace(new, hflip=geo.hflip, vflip=geo.vflip)
            if not geo.resamples:
                return img, msk
            params = dict(angle=geo.angle, translate=list(geo.translate), scale=geo.scale,
                          shear=list(geo.shear))
            msk_t = F.affine(msk, **params, fill=0)
            kept = int((msk_t != 0).sum())
            expected = area0 * geo.scale**2
            if area0 == 0 or (kept > 0 and kept >= (1.0 - self.config.max_area_loss) * expected):
                img_t = F.affine(img, **params, interpolation=InterpolationMode.BILINEAR, fill=0.0)
                return img_t, msk_t
        return img, msk

    # --------------------------------------------------------------- intensity
    def _intensity(self, img: tv_tensors.Image, gray: bool) -> tv_tensors.Image:
        """Image-only photometric changes on a float (3, H, W) image in [0, 1]."""
        c, r = self.config, self._rng
        if r.random() < c.p_color_jitter:
            img = F.adjust_brightness(img, float(r.uniform(1 - c.brightness, 1 + c.brightness)))
            img = F.adjust_contrast(img, float(r.uniform(1 - c.contrast, 1 + c.contrast)))
            if not gray:  # saturation / hue are no-ops on gray images: skip the work
                img = F.adjust_saturation(img, float(r.uniform(1 - c.saturation, 1 + c.saturation)))
                img = _shift_hue(img, float(r.uniform(-c.hue, c.hue)))
        if r.random() < c.p_posterize:
            img = F.posterize(img, int(r.integers(c.posterize_bits[0], c.posterize_bits[1] + 1)))
        # sharpen and blur would partly cancel: at most one of them
        u = r.random()
        if u < c.p_sharpen:
            img = F.adjust_sharpness(img, float(r.uniform(*c.sharpness)))
        elif u < c.p_sharpen + c.p_blur:
            sigma = float(r.uniform(*c.blur_sigma))
            k = 2 * math.ceil(2.0 * sigma) + 1  # +-2 sigma: 95 % of the weight, smaller kernel
            img = F.gaussian_blur(img, [k, k], [sigma, sigma])
        if r.random() < c.p_noise:
            gen = torch.Generator().manual_seed(int(r.integers(2**62)))
            # one noise plane for gray images keeps their channels equal (CT stays gray)
            shape = (1, *img.shape[-2:]) if gray else tuple(img.shape)
            noise = torch.randn(shape, generator=gen).mul_(float(r.uniform(*c.noise_sigma)))
            img = tv_tensors.wrap((img + noise).clamp_(0.0, 1.0), like=img)
        return img


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Temporarily set torch's intra-op thread count (``n <= 0``: unchanged)."""
    old = torch.get_num_threads()
    if n > 0 and n != old:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != old:
            torch.set_num_threads(old)


def _shift_hue(img: torch.Tensor, turns: float) -> torch.Tensor:
    """Rotate hue by ``turns`` of the colour wheel; img (3, H, W) float in [0, 1].

    A rotation of the YIQ chroma plane: one 3x3 colour matrix, so ~30x cheaper
    than an HSV round trip while giving a visually equivalent shift.
    """
    if turns == 0.0:
        return img
    cos, sin = math.cos(2 * math.pi * turns), math.sin(2 * math.pi * turns)
    rot = torch.tensor([[1.0, 0.0, 0.0], [0.0, cos, -sin], [0.0, sin, cos]], dtype=torch.float32)
    mat = _YIQ2RGB @ rot @ _RGB2YIQ
    out = (mat @ img.reshape(3, -1)).reshape(img.shape).clamp_(0.0, 1.0)
    return tv_tensors.wrap(out, like=img) if isinstance(img, tv_tensors.Image) else out
