"""napari-imedsam: box-prompted medical image segmentation at any resolution.

The public API, for scripts::

    from napari_imedsam import load_model, SegmentationSession
    session = SegmentationSession(load_model("medsam_lite"))   # the default, offline
    session.set_image(image)
    masks = session.predict([[x0, y0, x1, y1]]).masks()

Importing the package is cheap on purpose (napari scans plugins at start-up):
the names below are imported on first use, and torch only with the model.
The README's "Layout" section maps the package.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_model": ".model.loading",
    "build_model": ".model.build",
    "load_adapter": ".model.checkpoint",
    "save_adapter": ".model.checkpoint",
    "SegmentationSession": ".inference.session",
    "predict_merged": ".inference.merge",
    "read_any": ".io",
    "Box": ".boxes",
    "ModelSpec": ".session_holder",
    "SessionHolder": ".session_holder",
}
__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
