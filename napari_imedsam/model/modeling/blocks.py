"""Running one encoder block, its activations kept or recomputed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint


def run_block(block: Callable[..., Any], recompute: bool, *inputs: torch.Tensor) -> Any:
    """``block(*inputs)``; with ``recompute`` while gradients are recorded, only the
    inputs are kept and the block runs again in the backward pass (PyTorch's
    activation checkpointing). The random state (drop path) is replayed, so the
    gradients are the ones without recomputation.

    Training LiteMedSAM's encoder adapters at batch 4 (256 px, 5 Kvasir images, one
    epoch, 2 AMD cores, 2026-12-05) peaked at 6.02 GB with every activation kept;
    see docs/reliability.md (issue 23) for the peak and time with recomputation.
    """
    if recompute and torch.is_grad_enabled():
        return checkpoint(block, *inputs, use_reentrant=False)
    return block(*inputs)
