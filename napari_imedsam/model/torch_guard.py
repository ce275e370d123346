"""Import torch safely inside a running napari viewer.

torch pulls in Triton when it is installed (segment_anything -> torchvision.ops
-> torch._dynamo -> ``import triton``). Triton bundles its own LLVM; loading it
after Mesa's libLLVM is in the process (software OpenGL such as llvmpipe under
Xvfb or in VMs; Mesa's AMD and Intel drivers) crashes with a segmentation
fault. In a napari session the OpenGL context exists before any plugin code
runs, so the widgets import torch through :func:`import_torch`, which hides
Triton for good in that process. Nothing is lost: this package never compiles
kernels (no ``torch.compile``). Scripts, which import torch before any
OpenGL, do not need it; the command line hides Triton to save memory.
"""

from __future__ import annotations

import sys
import threading

_lock = threading.Lock()


def hide_triton() -> bool:
    """Make ``import triton`` fail in this process, unless torch has already been
    imported with it. The command line calls it too: besides the crash above,
    Triton and what torch loads with it take about 110 MB of resident memory
    that a process which never compiles does not need. True if hidden."""
    if "torch._dynamo" in sys.modules or "triton" in sys.modules:
        return sys.modules.get("triton", False) is None  # decided already
    # A None entry makes ``import triton`` raise ImportError, which torch treats
    # as "Triton is not installed". It stays: a later import would crash.
    sys.modules["triton"] = None  # type: ignore[assignment]
    return True


def import_torch() -> None:
    """Import torch (and torch._dynamo) with Triton hidden, unless already decided."""
    with _lock:
        if hide_triton():
            import torch._dynamo  # noqa: F401
