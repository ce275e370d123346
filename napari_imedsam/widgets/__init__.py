"""The napari side: the two docks and what they share. The only package that imports
qtpy or napari's Qt parts; the logic they call lives below (``session_holder``,
``boxes``, ``zoom``, ``propagate``, ``export``, ``finetune``, ``suggest``, ...), so it
runs and is tested without a display.

- ``segment/``: the Segment dock (boxes -> masks, uncertainty, zoom, volumes, export).
- ``finetune/``: the Fine-tune dock (labelled layers -> a trained adapter).
- ``layers.py``: finding, making and writing the layers both docks use.
- ``common.py``: small Qt helpers (notifications that fit, file browsing).
"""
