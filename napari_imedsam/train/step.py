"""One training step's forward pass, and the frozen encoder's embeddings of a batch.

``StepModule`` is the differentiable part of a step as one module, so that
DDP can wrap it; the loop around it is in ``engine``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from ..model.modeling.imedsam import IMedSAM


class StepModule(nn.Module):
    """The differentiable part of a step, as one module so DDP can wrap it."""

    def __init__(self, model: IMedSAM, *, recompute: bool = False) -> None:
        super().__init__()
        self.model = model
        self.recompute = recompute  # the encoder's blocks again in the backward pass

    def forward(self, images: torch.Tensor, boxes: torch.Tensor, points: torch.Tensor,
                embedded: bool, objective: str = "implicit"
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Coarse and final logits ``(B, K, P)``, and the backbone's own probability
        at the points when it is the target (``distill``)."""
        emb = images if embedded else self._embed(images)
        if objective == "sam":
            low_res, _ = self.model.predict_discrete(emb, boxes)  # (B, 1, 4g, 4g)
            logits = _at_points(low_res, points)
            return logits, logits, None
        prompt = self.model.encode_prompt(emb, boxes)
        pred = self.model.decode_points(prompt, points)
        teacher = None
        if objective in ("distill", "implicit+distill"):
            with torch.no_grad():
                teacher = torch.sigmoid(_at_points(prompt.sam_logits(), points).float())
        return pred.coarse_logits, pred.logits, teacher

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        """The encoder's embeddings ``(B, D, g, g)`` of ``(B, 3, S, S)`` images, with
        gradients. With ``recompute``, and where each image's embedding depends on that
        image alone (no BatchNorm normalising with the batch's statistics), each image
        is also recomputed on its own in the backward pass: the encoder's memory is then
        one image's, whatever the batch size (see docs/reliability.md, issue 23)."""
        model = self.model
        if not self.recompute or images.shape[0] == 1 or _batch_statistics(model.image_encoder):
            return model.embed(images, recompute=self.recompute)
        one = partial(model.embed, recompute=True)
        return torch.cat([checkpoint(one, images[i : i + 1], use_reentrant=False)
                          for i in range(images.shape[0])])


def _batch_statistics(module: nn.Module) -> bool:
    """Whether a BatchNorm layer in ``module`` normalises with each batch's statistics."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
               for m in module.modules())


def _at_points(maps: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """``(B, 1, H, W)`` maps read bilinearly at ``(B, P, 2)`` points -> ``(B, 1, P)``."""
    return F.grid_sample(maps, points.unsqueeze(2).to(maps.dtype), mode="bilinear",
                         align_corners=False, padding_mode="border")[..., 0]


@torch.no_grad()
def cached_embeddings(embed: Callable[[torch.Tensor], torch.Tensor], batch: Any,
                       cache: dict[int, torch.Tensor], device: torch.device,
                       should_stop: Callable[[], bool] | None = None) -> torch.Tensor | None:
    """Frozen-encoder modes: each image (and view) is embedded once, one at a time so
    that a stop request is seen within one encoder run; None when stopped."""
    first = {key: i for i, key in reversed(list(enumerate(batch.keys)))}
    for key, i in first.items():
        if key in cache:
            continue
        if should_stop is not None and should_stop():
            return None
        cache[key] = embed(batch.images[i : i + 1].to(device)).to(device)
    return torch.cat([cache[key] for key in batch.keys])
