"""Device choice and mixed precision."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from .config import DEVICE_CHOICES


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU; explicit names are checked."""
    if isinstance(name, torch.device):
        name = str(name)
    kind = name.split(":")[0]
    if kind == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "CUDA was requested but no CUDA GPU is usable by this PyTorch build; "
            "choose device 'cpu' (or 'auto'), or install a CUDA build of PyTorch."
        )
    if kind == "mps" and not _mps_available():
        raise RuntimeError("Apple MPS was requested but is not available; choose 'cpu' or 'auto'.")
    if kind not in ("cuda", "mps", "cpu"):
        raise ValueError(f"unknown device {name!r}; choose one of {DEVICE_CHOICES}")
    return torch.device(name)


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 matrix kernels (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``; ``None`` means fp32.

    ``auto``: bf16 on GPUs that support it, else fp16; bf16 on CPUs with native
    bf16 kernels, else fp32 (emulated bf16 is slower than fp32).
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if precision != "auto":
        raise ValueError(f"precision must be auto, fp32, bf16 or fp16, got {precision!r}")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_supports_bf16():
        return torch.bfloat16
    return None


def resolve_precision(precision: str, config: object) -> str:
    """``precision`` for a model: ``auto`` means fp32 for LiteMedSAM's TinyViT.

    Its small encoder is not robust to bf16 (on Kvasir images the embedding
    moved by up to 0.06 and mask edges by pixels), and it is fast in fp32.
    """
    encoder = getattr(config, "encoder", None)
    if precision == "auto" and getattr(encoder, "kind", "vit") == "tinyvit":
        return "fp32"
    return precision


@contextlib.contextmanager
def autocast(device: torch.device, precision: str = "auto") -> Iterator[torch.dtype | None]:
    """Autocast on ``device``; falls back to fp32 where the dtype is not supported."""
    dtype = autocast_dtype(device, precision)
    if dtype is None:
        yield None
        return
    try:
        context = torch.autocast(device_type=device.type, dtype=dtype)
    except RuntimeError:
        yield None
        return
    with context:
        yield dtype
