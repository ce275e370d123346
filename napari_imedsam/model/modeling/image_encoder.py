"""SAM's ViT image encoder with I-MedSAM's adapters (LoRA + frequency adapter)."""

from __future__ import annotations

import torch
from segment_anything.modeling import ImageEncoderViT
from torch import nn

from .blocks import run_block
from .frequency_adapter import FrequencyAdapter

# SAM normalises RGB in [0, 255] with ImageNet statistics.
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


class AdaptedImageEncoder(nn.Module):
    """Runs SAM's ``ImageEncoderViT`` block by block so the frequency tokens can join.

    LoRA lives inside the ViT's attention (see :mod:`.lora`); the frequency
    adapter is added to each block's output here.
    """

    def __init__(self, vit: ImageEncoderViT, frequency: FrequencyAdapter | None) -> None:
        super().__init__()
        self.vit = vit
        self.frequency = frequency
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1), False)

    @property
    def input_size(self) -> int:
        return self.vit.img_size

    def forward(self, images: torch.Tensor, *, recompute: bool = False) -> torch.Tensor:
        """Embed images.

        Args:
            images: ``(B, 3, S, S)`` RGB in ``[0, 255]``, S = the encoder input size.
            recompute: see :func:`.blocks.run_block`.

        Returns:
            ``(B, C, S/16, S/16)`` image embedding (C = 256 for SAM).
        """
        size = self.input_size
        if images.dim() != 4 or images.shape[1] != 3 or images.shape[-2:] != (size, size):
            raise ValueError(
                f"encoder expects images of shape (B, 3, {size}, {size}), got {tuple(images.shape)}"
            )
        vit = self.vit
        x = vit.patch_embed((images - self.pixel_mean) / self.pixel_std)
        if vit.pos_embed is not None:
            x = x + vit.pos_embed
        freq = None
        if self.frequency is not None:
            freq = self.frequency.tokens(images, vit.patch_embed, vit.pos_embed)
        for index, block in enumerate(vit.blocks):
            x = run_block(block, recompute, x)
            if freq is not None:
                freq = self.frequency.step(index, freq)
                x = x + self.frequency.weight * freq
        return vit.neck(x.permute(0, 3, 1, 2))
