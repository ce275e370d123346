"""Low-rank adapters on the fused query/key/value projection of SAM's attention.

SAM computes q, k and v with one ``nn.Linear(dim, 3 * dim)``. LoRA is added to
selected slices of its output (the paper: query and value), so the frozen
projection is kept as it is and only ``A`` and ``B`` train. ``B`` starts at
zero, which makes the adapted encoder equal to SAM at initialisation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

_SLICES = {"q": 0, "k": 1, "v": 2}


class LoRAQKV(nn.Module):
    """A frozen fused qkv ``nn.Linear`` plus low-rank updates on some of its slices.

    Input ``(..., dim)``, output ``(..., 3 * dim)`` like the wrapped layer.
    """

    def __init__(
        self, base: nn.Linear, rank: int, alpha: float, targets: Sequence[str]
    ) -> None:
        super().__init__()
        if base.out_features != 3 * base.in_features:
            raise ValueError("LoRAQKV expects a fused qkv Linear(dim, 3 * dim)")
        unknown = set(targets) - set(_SLICES)
        if unknown or not targets:
            raise ValueError(f"LoRA targets must be a non-empty subset of q, k, v; got {targets}")
        self.base = base
        self.dim = base.in_features
        self.targets = tuple(targets)
        self.scaling = alpha / rank
        self.lora_A = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        for name in self.targets:
            a = torch.empty(rank, self.dim)
            # Kaiming-uniform A as in LoRA; B = 0 keeps the base output exact.
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
            self.lora_A[name] = nn.Parameter(a)
            self.lora_B[name] = nn.Parameter(torch.zeros(self.dim, rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        updates = [torch.zeros((), dtype=out.dtype, device=out.device)] * 3
        for name in self.targets:
            delta = (x @ self.lora_A[name].T) @ self.lora_B[name].T
            updates[_SLICES[name]] = delta.to(out.dtype) * self.scaling
        if all(u.dim() == 0 for u in updates):
            return out
        full = [u.expand(*out.shape[:-1], self.dim) for u in updates]
        return out + torch.cat(full, dim=-1)


def inject_lora(
    encoder: nn.Module, rank: int, alpha: float, targets: Sequence[str]
) -> list[LoRAQKV]:
    """Wrap the ``attn.qkv`` Linear of every block of a SAM ``ImageEncoderViT``.

    Returns the new LoRA layers. ``rank == 0`` injects nothing.
    """
    if rank <= 0:
        return []
    layers = []
    for block in encoder.blocks:
        if isinstance(block.attn.qkv, LoRAQKV):
            raise RuntimeError("LoRA is already injected into this encoder")
        block.attn.qkv = LoRAQKV(block.attn.qkv, rank, alpha, targets)
        layers.append(block.attn.qkv)
    return layers
