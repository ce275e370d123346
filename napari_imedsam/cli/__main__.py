"""``python -m napari_imedsam.cli``: the ``imedsam`` command (e.g. under torchrun)."""

import sys

from .app import main

sys.exit(main())
