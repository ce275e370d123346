"""Segmentation loss on sampled points and the coarse-to-fine weighting."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def seg_loss(logits: torch.Tensor, targets: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """0.5 cross-entropy + 0.5 soft Dice (paper Eq. 8), classes one-vs-rest.

    Args:
        logits: ``(B, K, P)`` point logits.
        targets: ``(B, K, P)`` 0/1.
    """
    logits = logits.float()
    ce = F.binary_cross_entropy_with_logits(logits, targets)
    prob = torch.sigmoid(logits)
    inter = (prob * targets).sum(-1)
    dice = (2 * inter + eps) / (prob.sum(-1) + targets.sum(-1) + eps)
    return 0.5 * ce + 0.5 * (1.0 - dice.mean())


def coarse_fine_weights(epoch: float, ramp_epochs: float) -> tuple[float, float]:
    """Weights of the coarse and the final (fine-refined) loss at ``epoch``.

    Over the first ``ramp_epochs`` the coarse weight goes from 1 to 0.5 and the
    fine weight from 0 to 1, then both stay (the authors ramp over 5 epochs).
    """
    t = 1.0 if ramp_epochs <= 0 else min(1.0, max(0.0, epoch / ramp_epochs))
    return 1.0 - 0.5 * t, t
