"""An inference-only form of the implicit decoder for one box, with the same outputs.

Two exact rewrites make a point cheap:
- BatchNorm (running statistics) is folded into the Linear before it.
- Dec_c's first layer is linear in its inputs, and bilinear sampling is linear
  too, so ``W @ sample(features) == sample(W @ features)``: the 1024-wide
  projections of the feature map and of the dense positional encoding are
  computed once per box, and a point then costs four lookups instead of a
  ``288 x 1024`` product. Only gamma(p) goes through the matrix per point.
The mask of a point needs only the logit column of Dec_c's head; ``z_c`` and
Dec_f run for refined points alone.
"""

from __future__ import annotations

import torch
from torch import nn

from ..model.modeling.imedsam import IMedSAM, PromptFeatures


def fold_linear_bn(linear: nn.Linear, bn: nn.BatchNorm1d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``bn(linear(x))`` with BatchNorm in eval mode."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    weight = linear.weight * scale[:, None]
    bias = (linear.bias - bn.running_mean) * scale + bn.bias
    return weight.detach(), bias.detach()


def _folded_mlp(seq: nn.Sequential) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``[Linear, BN, ReLU] * n`` -> folded (weight, bias) per layer."""
    modules = list(seq)
    return [fold_linear_bn(modules[i], modules[i + 1]) for i in range(0, len(modules), 3)]


class FastDecoder:
    """Dec_c, MC-dropout uncertainty and Dec_f for one box, at arbitrary points."""

    @torch.no_grad()
    def __init__(self, model: IMedSAM, prompt: PromptFeatures, networks: torch.Tensor | None):
        if prompt.features.shape[0] != 1:
            raise ValueError("FastDecoder works on one box at a time")
        dec = model.implicit_decoder
        self.decoder = dec
        self.prompt = prompt
        self.networks = networks
        self.classes = dec.coarse.classes
        self.feature_dim = dec.coarse.feature_dim
        (w1, b1), (w2, b2), *rest = _folded_mlp(dec.coarse.trunk)
        if rest:
            raise ValueError("FastDecoder expects Dec_c with two hidden layers")
        n_gamma = dec.positional_encoding.out_dim
        n_feat = prompt.features.shape[1]
        w_gamma, w_feat, w_pe = w1.split([n_gamma, n_feat, w1.shape[1] - n_gamma - n_feat], dim=1)
        self.w_gamma, self.b1 = w_gamma, b1
        # Per-box projected maps: (1, 1024, h, w) and (1, 1024, g, g).
        self.feat_map = self._channels_last(
            torch.einsum("oc,bchw->bohw", w_feat, prompt.features))
        self.pe_map = self._channels_last(
            torch.einsum("oc,bchw->bohw", w_pe, prompt.dense_pe.to(w_pe.dtype)))
        self.w2, self.b2 = w2, b2
        heads = dec.coarse.heads
        per_class = heads.weight.view(self.classes, 1 + self.feature_dim, -1)
        bias = heads.bias.view(self.classes, 1 + self.feature_dim)
        self.w_logit, self.b_logit = per_class[:, 0].detach(), bias[:, 0].detach()
        self.w_zc, self.b_zc = per_class[:, 1:].detach(), bias[:, 1:].detach()

    @staticmethod
    def _channels_last(maps: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """``(1, C, h, w)`` -> ``(h * w, C)`` rows, so a point reads 4 contiguous rows."""
        _, c, h, w = maps.shape
        return maps[0].permute(1, 2, 0).reshape(h * w, c).contiguous(), h, w

    @staticmethod
    def _sample(table: tuple[torch.Tensor, int, int], points: torch.Tensor) -> torch.Tensor:
        """Bilinear sampling with ``grid_sample``'s conventions (align_corners=False,
        border padding), gathering whole channel rows: on wide maps this is several
        times faster than ``grid_sample``'s channel-strided reads."""
        rows, h, w = table
        x = ((points[:, 0] + 1) * w - 1) / 2
        y = ((points[:, 1] + 1) * h - 1) / 2
        x = x.clamp(0, w - 1)
        y = y.clamp(0, h - 1)
        x0 = x.floor().clamp(max=w - 2 if w > 1 else 0)
        y0 = y.floor().clamp(max=h - 2 if h > 1 else 0)
        fx, fy = (x - x0)[:, None], (y - y0)[:, None]
        x0, y0 = x0.long(), y0.long()
        x1, y1 = (x0 + 1).clamp(max=w - 1), (y0 + 1).clamp(max=h - 1)
        top = rows[y0 * w + x0] * (1 - fx) + rows[y0 * w + x1] * fx
        bottom = rows[y1 * w + x0] * (1 - fx) + rows[y1 * w + x1] * fx
        return top * (1 - fy) + bottom * fy

    @torch.no_grad()
    def coarse(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(M, 2)`` normalised points -> hidden ``(M, 512)``, logits ``(M, K)``,
        MC-dropout variance ``(M, K)``."""
        gamma = self.decoder.positional_encoding(points)
        pre = self._sample(self.feat_map, points) + self._sample(self.pe_map, points)
        pre = torch.addmm(pre + self.b1, gamma, self.w_gamma.T)
        hidden = torch.relu(torch.addmm(self.b2, torch.relu(pre), self.w2.T))
        logits = torch.addmm(self.b_logit, hidden, self.w_logit.T)
        variance = self.decoder.coarse.mc_variance(hidden, self.networks)
        return hidden, logits, variance

    @torch.no_grad()
    def fine(self, points: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """Dec_f logits ``(M, K)`` at points whose Dec_c hidden layer is ``hidden``."""
        z_c = torch.einsum("mh,kfh->mkf", hidden, self.w_zc) + self.b_zc
        z_p = self.decoder.point_inputs(points[None], self.prompt.features,
                                        self.prompt.dense_pe)[0]
        return self.decoder.fine(z_c, z_p)
