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

import lazy_loader

__version__ = "0.1.0"

__getattr__, __dir__, _names = lazy_loader.attach(__name__, submod_attrs={
    "model.loading": ["load_model"],
    "model.build": ["build_model"],
    "model.checkpoint": ["load_adapter", "save_adapter"],
    "inference.session": ["SegmentationSession"],
    "inference.merge": ["predict_merged"],
    "io": ["read_any"],
    "boxes": ["Box"],
    "session_holder": ["ModelSpec", "SessionHolder"],
})
__all__ = ["__version__", *_names]
