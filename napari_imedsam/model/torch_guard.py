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

Both also ask PyTorch's CPU allocator for huge pages (:func:`prefer_huge_pages`)
before torch comes in.
"""

from __future__ import annotations

import ctypes
import math
import os
import sys
import threading
import time
from typing import Any

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


#: PyTorch's switch (read once, at its first allocation): its blocks of 2 MB and more
#: are given to the kernel's transparent huge pages (``madvise``).
HUGE_PAGES = "THP_MEM_ALLOC_ENABLE"


def prefer_huge_pages() -> bool:
    """Turn PyTorch's huge-page allocation on for this process, unless torch is in
    already or the user has set the switch. True if it is on.

    Why, measured (2-core AMD EPYC, ``imedsam train`` on 5 Kvasir images, adapters,
    batch 4; docs/reliability.md, issue 23): glibc keeps large blocks that a step frees
    for the next (its mmap threshold rises to them), and the encoder recomputed in the
    backward pass frees and asks for such blocks thousands of times, so the resident
    memory grew with every epoch: 2.10, 2.46 and 2.82 GB after 1, 2 and 6 epochs. With
    huge pages: 1.56, 1.77 and 1.85 GB, the same losses, no slower (page faults 4.9 M
    -> 0.43 M). Fixing glibc's threshold instead (``MALLOC_MMAP_THRESHOLD_``) gave
    1.42 GB but 75 % more time. Where the kernel gives no huge pages (``never``), or off
    Linux, the switch changes nothing."""
    if HUGE_PAGES not in os.environ and "torch" not in sys.modules:
        os.environ[HUGE_PAGES] = "1"
    return os.environ.get(HUGE_PAGES) == "1"


_LIBC: list[Any] = []
_LAST_TRIM = [-math.inf]


def trim_heap(at_most_every_s: float = 5.0) -> None:
    """Give the heap's free pages back to the system (glibc's ``malloc_trim``; nothing
    elsewhere), unless the last time was under ``at_most_every_s`` ago.

    Training trims after its steps and evaluation between images: the blocks a step
    freed in the middle of the heap stay resident otherwise. With huge pages, 20 epochs
    of the case above peaked at 1.90 GB with it and 2.07 GB without. A trim takes under
    1 ms, but the pages given back are faulted in again by the next step: trimming after
    every one of 32 short decoder-training steps took 2 s more (21.2 against 19.2 s), so
    it trims at most every 5 s by default (adapters steps take 5-15 s here, so each is
    followed by one)."""
    now = time.monotonic()
    if now - _LAST_TRIM[0] < at_most_every_s:
        return
    if not _LIBC:
        try:
            libc = ctypes.CDLL("libc.so.6")
            _LIBC.append(libc if hasattr(libc, "malloc_trim") else None)
        except OSError:
            _LIBC.append(None)
    if _LIBC[0] is not None:
        _LIBC[0].malloc_trim(0)
    _LAST_TRIM[0] = time.monotonic()


def import_torch() -> None:
    """Import torch (and torch._dynamo) with Triton hidden and huge pages preferred,
    unless already decided."""
    with _lock:
        prefer_huge_pages()
        if hide_triton():
            import torch._dynamo  # noqa: F401
