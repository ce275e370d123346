"""The ``imedsam`` command line: one module per subcommand, wired by :mod:`.app`.

Qt-free except ``gui``, which starts napari only when run; heavy imports (torch)
happen inside the subcommands, so ``imedsam --help`` is instant.
"""

from .app import build_parser, main

__all__ = ["build_parser", "main"]
