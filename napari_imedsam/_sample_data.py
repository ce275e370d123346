"""Sample images for File > Open Sample > I-MedSAM.

Both are synthetic (``train.synthetic``), drawn from a fixed seed so every user
sees the same picture, and free of any licence question. Real data (e.g. the
CC BY 4.0 AMOS slices) is not shipped inside the package.
"""

from __future__ import annotations

from typing import Any

import numpy as np

SIZE = 256
#: The abdomen window (width 400, level 40 HU): the CT sample's grey levels are
#: mapped back through it, so the "abdomen" preset shows exactly the rendered image.
_HU_LOW, _HU_WIDTH = -160.0, 400.0

LayerDataTuple = tuple[np.ndarray, dict[str, Any], str]


def _sample(kind: str, seed: int) -> np.ndarray:
    from .train.synthetic import synthetic_sample  # lazy: scipy is not needed to list samples

    image, _labels = synthetic_sample(np.random.default_rng(seed), SIZE, kind)
    return image


def ct_sample() -> list[LayerDataTuple]:
    """A synthetic CT-like slice in Hounsfield units (int16), best seen with the abdomen window."""
    grey = _sample("ct", seed=3)[..., 0].astype(np.float32)
    hu = np.rint(_HU_LOW + grey / 255.0 * _HU_WIDTH).astype(np.int16)
    meta = {"name": "synthetic CT (HU)", "colormap": "gray",
            "contrast_limits": (_HU_LOW, _HU_LOW + _HU_WIDTH),
            "metadata": {"kind": "synthetic CT", "units": "HU", "suggested_window": "abdomen"}}
    return [(hu, meta, "image")]


def rgb_sample() -> list[LayerDataTuple]:
    """A synthetic endoscopy-like RGB image (uint8)."""
    rgb = _sample("rgb", seed=5)
    meta = {"name": "synthetic endoscopy (RGB)", "rgb": True,
            "metadata": {"kind": "synthetic endoscopy"}}
    return [(rgb, meta, "image")]
