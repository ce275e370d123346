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


class StageFrequencyAdapter(nn.Module):
    """The frequency adapter redesigned for TinyViT's attention stages.

    TinyViT has no ViT patch embedding to turn the spectrum into tokens (its
    stem is two 1x1 convolutions at full resolution, then a convolutional
    stage), and its three attention stages differ in grid and width. So:

    - for each attention stage (grids 128, 64, 64 at 256 px; widths 128, 160,
      320), the spectrum is cut into non-overlapping ``s x s`` patches that
      tile the stage's token grid (s = 2, 4, 4) and a trainable ``Linear(s^2 ->
      width)`` makes the stage's frequency tokens;
    - inside a stage, one bottleneck adapter per block refines them in turn, as
      in the ViT design (LayerNorm, width -> 4 -> width, GELU, residual);
    - each block's output receives ``weight * gate * tokens``, with a
      per-channel ``gate`` that starts at zero (LayerScale-style): the encoder
      equals the pretrained LiteMedSAM encoder until training moves the gates,
      which the ViT design (trained from SAM, not from a distilled medical
      model) does not need.
    """

    def __init__(
        self,
        grids: tuple[int, ...],
        dims: tuple[int, ...],
        depths: tuple[int, ...],
        input_size: int,
        bottleneck: int,
        weight: float,
        mode: FrequencyMode,
    ) -> None:
        super().__init__()
        if mode not in ("amplitude", "phase"):
            raise ValueError(f"FrequencyAdapter mode must be amplitude or phase, got {mode!r}")
        self.mode = mode
        self.weight = weight
        self.patches = tuple(input_size // g for g in grids)
        self.embeds = nn.ModuleList(nn.Linear(p * p, d) for p, d in zip(self.patches, dims))
        self.adapters = nn.ModuleList(
            nn.ModuleList(BottleneckAdapter(d, bottleneck) for _ in range(n))
            for d, n in zip(dims, depths)
        )
        self.gates = nn.ParameterList(nn.Parameter(torch.zeros(d)) for d in dims)

    @property
    def is_identity(self) -> bool:
        """True while every gate is zero (the encoder output is unchanged)."""
        return all(not g.any() for g in self.gates)

    def spectrum(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` -> ``(B, 1, S, S)`` spectrum of the luminance in [0, 1]."""
        return image_spectrum(images, self.mode)

    def tokens(self, stage: int, spectrum: torch.Tensor) -> torch.Tensor:
        """Stage ``stage``'s frequency tokens ``(B, g * g, width)`` (row-major grid)."""
        patches = F.pixel_unshuffle(spectrum, self.patches[stage])  # (B, s*s, g, g)
        return self.embeds[stage](patches.flatten(2).transpose(1, 2).to(spectrum.dtype))

    def step(self, stage: int, block: int, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Refine ``tokens`` with the block's adapter; returns (new tokens, what the
        block output receives)."""
        tokens = self.adapters[stage][block](tokens)
        return tokens, self.weight * self.gates[stage] * tokens
