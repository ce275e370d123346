"""The frequency adapter (FA) of I-MedSAM.

The image's spectrum (amplitude by default, phase for the paper's ablation)
goes through the encoder's frozen patch and position embedding to become
"frequency tokens". One small bottleneck adapter per ViT block refines these
tokens in sequence, and each block's output receives ``weight`` times the
refined tokens (DESIGN.md section 2).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..config import FrequencyMode

# ITU-R BT.601 luma weights: the spectrum is taken of one grey channel built
# from all three colour channels.
_LUMA = (0.299, 0.587, 0.114)


def image_spectrum(images: torch.Tensor, mode: FrequencyMode) -> torch.Tensor:
    """Centred, per-image min-max normalised spectrum of the luminance.

    Args:
        images: ``(B, 3, H, W)`` raw intensities (any range).
        mode: ``"amplitude"`` (|F|) or ``"phase"`` (arg F).

    Returns:
        ``(B, 1, H, W)`` float32 in ``[0, 1]``.
    """
    # FFTs have no bf16 kernels and need fp32 precision anyway.
    with torch.autocast(device_type=images.device.type, enabled=False):
        weights = images.new_tensor(_LUMA, dtype=torch.float32).view(1, 3, 1, 1)
        grey = (images.float() * weights).sum(dim=1, keepdim=True)
        spectrum = torch.fft.fftshift(torch.fft.fft2(grey), dim=(-2, -1))
        values = spectrum.abs() if mode == "amplitude" else spectrum.angle()
        low = values.amin(dim=(-2, -1), keepdim=True)
        high = values.amax(dim=(-2, -1), keepdim=True)
        return (values - low) / (high - low).clamp_min(1e-12)


class BottleneckAdapter(nn.Module):
    """LayerNorm, ``dim -> bottleneck -> dim`` with GELU, plus the residual."""

    def __init__(self, dim: int, bottleneck: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens + self.up(F.gelu(self.down(self.norm(tokens))))


class FrequencyAdapter(nn.Module):
    """Frequency tokens and one bottleneck adapter per encoder block.

    The patch and position embeddings are the encoder's own frozen modules,
    passed at call time so that no weights are duplicated.
    """

    def __init__(
        self, dim: int, depth: int, bottleneck: int, weight: float, mode: FrequencyMode
    ) -> None:
        super().__init__()
        if mode not in ("amplitude", "phase"):
            raise ValueError(f"FrequencyAdapter mode must be amplitude or phase, got {mode!r}")
        self.mode = mode
        self.weight = weight
        self.adapters = nn.ModuleList(BottleneckAdapter(dim, bottleneck) for _ in range(depth))

    def tokens(
        self, images: torch.Tensor, patch_embed: nn.Module, pos_embed: torch.Tensor | None
    ) -> torch.Tensor:
        """``(B, 3, S, S)`` raw images -> ``(B, S/p, S/p, dim)`` frequency tokens."""
        spectrum = image_spectrum(images, self.mode)
        # The patch embedding expects three channels.
        tokens = patch_embed(spectrum.expand(-1, 3, -1, -1).to(images.dtype))
        if pos_embed is not None:
            tokens = tokens + pos_embed
        return tokens

    def step(self, index: int, tokens: torch.Tensor) -> torch.Tensor:
        """Refine the frequency tokens with adapter ``index``; returns the new tokens."""
        return self.adapters[index](tokens)
