"""napari-imedsam: box-prompted medical image segmentation at any resolution.

Importing the package is cheap on purpose (napari scans plugins at start-up):
torch and the model are imported only by the modules that need them, e.g.
``napari_imedsam.model``.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
