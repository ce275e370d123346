"""Low-rank adapters on the fused query/key/value projection of an attention layer.

Both encoders compute q, k and v with one ``nn.Linear``, but lay its output
rows out differently:

- SAM's ViT: all queries, then all keys, then all values (``[Q | K | V]``);
- TinyViT (LiteMedSAM): per head, ``[h0: q | k | v, h1: q | k | v, ...]``.

LoRA is added to the output rows of the chosen projections only (the paper:
query and value), found from that layout, so the frozen projection is kept
as it is and only ``A`` and ``B`` train. ``B`` starts at zero, which makes the
adapted encoder equal to the base at initialisation.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import nn

PROJECTIONS = ("q", "k", "v")


def blocked_rows(dim: int) -> dict[str, torch.Tensor]:
    """Output rows of q, k and v in SAM's ``Linear(dim, 3 * dim)``."""
    # Index tables are built on the CPU, also inside a ``torch.device("meta")`` block.
    return {name: torch.arange(i * dim, (i + 1) * dim, device="cpu")
            for i, name in enumerate(PROJECTIONS)}


def per_head_rows(heads: int, key_dim: int, value_dim: int) -> dict[str, torch.Tensor]:
    """Output rows of q, k and v when each head holds ``q | k | v`` in turn."""
    per_head = 2 * key_dim + value_dim
    starts = torch.arange(heads, device="cpu")[:, None] * per_head
    spans = {"q": (0, key_dim), "k": (key_dim, 2 * key_dim), "v": (2 * key_dim, per_head)}
    return {name: (starts + torch.arange(lo, hi, device="cpu")[None]).reshape(-1)
            for name, (lo, hi) in spans.items()}


class LoRAQKV(nn.Module):
    """A frozen fused qkv ``nn.Linear`` plus low-rank updates on some of its rows.

    Input ``(..., in)``, output ``(..., out)`` like the wrapped layer. ``rows``
    maps each of q, k, v to the output rows that hold it (default: SAM's
    ``[Q | K | V]``).
    """

    def __init__(
        self,
        base: nn.Linear,
        rank: int,
        alpha: float,
        targets: Sequence[str],
        rows: dict[str, torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        if rows is None:
            if base.out_features != 3 * base.in_features:
                raise ValueError("without rows, LoRAQKV expects SAM's Linear(dim, 3 * dim)")
            rows = blocked_rows(base.in_features)
        unknown = set(targets) - set(PROJECTIONS)
        if unknown or not targets:
            raise ValueError(f"LoRA targets must be a non-empty subset of q, k, v; got {targets}")
        covered = sorted(int(i) for p in PROJECTIONS for i in rows[p].tolist())
        if covered != list(range(base.out_features)):
            raise ValueError("the q/k/v rows must partition the qkv Linear's outputs")
        self.base = base
        self.targets = tuple(targets)
        self.scaling = alpha / rank
        self.lora_A = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        for name in self.targets:
            self.register_buffer(f"rows_{name}", rows[name].clone(), persistent=False)
            a = torch.empty(rank, base.in_features)
            # Kaiming-uniform A as in LoRA; B = 0 keeps the base output exact.
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
            self.lora_A[name] = nn.Parameter(a)
            self.lora_B[name] = nn.Parameter(torch.zeros(len(rows[name]), rank))

    @property
    def is_identity(self) -> bool:
        """True while every ``B`` is zero (the update adds nothing)."""
        return all(not b.any() for b in self.lora_B.values())

    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` computing the same as this layer: each update
        ``scaling * B A`` added to its rows of the frozen weight (a copy; this layer
        is left as it is). For inference graphs: the low-rank products and the
        ``index_add`` they need cost 44 ms of a 605 ms OpenVINO encoder on a 2-core
        AMD EPYC even while ``B`` is zero (2026-12-05, ``docs/benchmarks.md``)."""
        base = self.base
        merged = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None,
                           device=base.weight.device, dtype=base.weight.dtype)
        with torch.no_grad():
            weight = base.weight.detach().clone()
            for name in self.targets:
                update = self.lora_B[name] @ self.lora_A[name]  # (rows, in)
                weight.index_add_(0, getattr(self, f"rows_{name}"), update.to(weight.dtype),
                                  alpha=self.scaling)
            merged.weight.copy_(weight)
            if base.bias is not None:
                merged.bias.copy_(base.bias)
        merged.requires_grad_(False)
        return merged

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        for name in self.targets:
            delta = (x @ self.lora_A[name].T) @ self.lora_B[name].T
            rows = getattr(self, f"rows_{name}")
            out = out.index_add(-1, rows, delta.to(out.dtype), alpha=self.scaling)
        return out


def merge_lora_qkv(module: nn.Module) -> int:
    """Replace every :class:`LoRAQKV` inside ``module`` by its :meth:`~LoRAQKV.merged`
    Linear, in place (call it on a copy for export); returns how many."""
    found = [(parent, name, child) for parent in module.modules()
             for name, child in parent.named_children() if isinstance(child, LoRAQKV)]
    for parent, name, child in found:
        setattr(parent, name, child.merged())
    return len(found)


def _wrap(attn: nn.Module, rank: int, alpha: float, targets: Sequence[str],
          rows: dict[str, torch.Tensor] | None) -> LoRAQKV:
    if isinstance(attn.qkv, LoRAQKV):
        raise RuntimeError("LoRA is already injected into this encoder")
    attn.qkv = LoRAQKV(attn.qkv, rank, alpha, targets, rows)
    return attn.qkv


def inject_lora(
    encoder: nn.Module, rank: int, alpha: float, targets: Sequence[str]
) -> list[LoRAQKV]:
    """Wrap the ``attn.qkv`` Linear of every block of a SAM ``ImageEncoderViT``.

    Returns the new LoRA layers. ``rank == 0`` injects nothing.
    """
    if rank <= 0:
        return []
    return [_wrap(block.attn, rank, alpha, targets, None) for block in encoder.blocks]


def inject_lora_tinyvit(
    encoder: nn.Module, rank: int, alpha: float, targets: Sequence[str]
) -> list[LoRAQKV]:
    """Wrap the ``attn.qkv`` of every attention block of a TinyViT (stages 1-3;
    stage 0 is convolutional). Its rows are grouped per head."""
    if rank <= 0:
        return []
    layers = []
    for stage in encoder.layers:
        for block in stage.blocks:
            attn = getattr(block, "attn", None)
            if attn is None:  # MBConv blocks of the convolutional stage
                continue
            rows = per_head_rows(attn.num_heads, attn.key_dim, attn.d)
            layers.append(_wrap(attn, rank, alpha, targets, rows))
    return layers


#: Whether :class:`LoRALinear` layers add their update in the current thread (and
#: context): off for a prompt of a box alone, so the mask decoder's click adapters
#: leave box answers exactly as the backbone gives them. A context variable, not a
#: module attribute: threads that share a model each have their own.
_LORA_ON: ContextVar[bool] = ContextVar("imedsam_lora_linear_on", default=True)


@contextmanager
def lora_linear_enabled(on: bool) -> Iterator[None]:
    """Within the block, :class:`LoRALinear` layers add their update only if ``on``."""
    token = _LORA_ON.set(on)
    try:
        yield
    finally:
        _LORA_ON.reset(token)


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a low-rank update of all its outputs:
    ``base(x) + (alpha / rank) * x A^T B^T``, with ``B = 0`` at the start; the update
    is skipped inside ``lora_linear_enabled(False)``."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        self.base = base
        self.scaling = alpha / rank
        a = torch.empty(rank, base.in_features)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        self.lora_A = nn.Parameter(a)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _LORA_ON.get():
            return self.base(x)
        return self.base(x) + ((x @ self.lora_A.T) @ self.lora_B.T) * self.scaling


def inject_lora_linear(module: nn.Module, rank: int, alpha: float) -> list[LoRALinear]:
    """Wrap every ``nn.Linear`` inside ``module`` (e.g. SAM's two-way transformer: its
    attention projections and MLPs). ``rank == 0`` injects nothing."""
    if rank <= 0:
        return []
    found = [(parent, name, child) for parent in module.modules()
             for name, child in parent.named_children() if isinstance(child, nn.Linear)
             and not isinstance(parent, LoRALinear)]
    layers = []
    for parent, name, child in found:
        layer = LoRALinear(child, rank, alpha)
        setattr(parent, name, layer)
        layers.append(layer)
    return layers
