"""Import torch safely inside a running napari viewer.

torch pulls in Triton when it is installed (segment_anything -> torchvision.ops
-> torch._dynamo -> ``import triton``). Triton bundles its own LLVM; loading it
after Mesa's libLLVM is in the process (software OpenGL such as llvmpipe under
Xvfb or in VMs; Mesa's AMD and Intel drivers) crashes with a segmentation
fault. In a napari session the OpenGL context exists before any plugin code
runs, so the widgets import torch through :func:`import_torch`, which hides
Triton for good in that process. Nothing is lost: this package never compiles
kernels (no ``torch.compile``). Scripts and the command line, which import
torch before any OpenGL, do not need it.
"""

from __future__ import annotations

import sys
import threading

_lock = threading.Lock()


def import_torch() -> None:
    """Import torch (and torch._dynamo) with Triton hidden, unless already decided."""
    with _lock:
        if "torch._dynamo" in sys.modules or "triton" in sys.modules:
            return  # imported already (with or without Triton): nothing left to protect
        # A None entry makes ``import triton`` raise ImportError, which torch
        # treats as "Triton is not installed". It stays: a later import would crash.
        sys.modules["triton"] = None  # type: ignore[assignment]
        import torch._dynamo  # noqa: F401
