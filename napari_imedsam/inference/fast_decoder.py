"""An inference-only form of the implicit decoder for one box, with the same outputs.

Two exact rewrites make a point cheap:
- BatchNorm (running statistics) is folded into the Linear before it.
- Dec_c's first layer is linear in its inputs, and bilinear sampling is linear
  too, so ``W @ sample(features) == sample(W @ features)``: the 1024-wide
  projections of the feature map and of the dense positional encoding are
  computed once per box, and a point then costs a weighted sum of eight table
  rows instead of a ``288 x 1024`` product. Only gamma(p) goes through the
  matrix per point. A table row is projected the first time a point reads it:
  adaptive evaluation reads about half of Dec_c's rows and a tenth of Dec_f's.
The mask of a point needs only the logit column of Dec_c's head; ``z_c`` and
Dec_f run for refined points alone. In residual mode SAM's logit at a point is
one more bilinear read, of SAM's own low-resolution logit map.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

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


Extent = tuple[float, float, float, float]  # x0, y0, x1, y1 of the points, in [-1, 1]


def _pixel(coord: torch.Tensor | float, size: int) -> torch.Tensor | float:
    """Normalised coordinate -> map pixel, as ``grid_sample`` (align_corners=False)."""
    return ((coord + 1) * size - 1) / 2


@dataclass(frozen=True)
class _Crop:
    """The rows ``y0..y0+h`` and columns ``x0..x0+w`` of a ``full_h x full_w`` map
    that a set of points can touch, stored at ``offset`` in the stacked table."""

    y0: int
    x0: int
    h: int
    w: int
    full_h: int
    full_w: int
    offset: int

    @classmethod
    def covering(cls, full_h: int, full_w: int, extent: Extent | None, offset: int) -> "_Crop":
        if extent is None:
            return cls(0, 0, full_h, full_w, full_h, full_w, offset)
        ex0, ey0, ex1, ey1 = extent
        # One pixel of slack on each side: the second bilinear tap, and rounding.
        xa = max(0, math.floor(_pixel(ex0, full_w)) - 1)
        xb = min(full_w, math.ceil(_pixel(ex1, full_w)) + 2)
        ya = max(0, math.floor(_pixel(ey0, full_h)) - 1)
        yb = min(full_h, math.ceil(_pixel(ey1, full_h)) + 2)
        xa, ya = min(xa, max(full_w - 2, 0)), min(ya, max(full_h - 2, 0))
        return cls(ya, xa, max(1, yb - ya), max(1, xb - xa), full_h, full_w, offset)

    def taps(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Table rows ``(M, 4)`` and weights ``(M, 4)`` of bilinear sampling with
        ``grid_sample``'s conventions (align_corners=False, border padding) at
        ``(M, 2)`` points in [-1, 1] (x, y)."""
        w, h = self.full_w, self.full_h
        x = _pixel(points[:, 0], w).clamp(0, w - 1)
        y = _pixel(points[:, 1], h).clamp(0, h - 1)
        x0 = x.floor().clamp(max=max(w - 2, 0))
        y0 = y.floor().clamp(max=max(h - 2, 0))
        fx, fy = x - x0, y - y0
        # Into the crop; clamping only matters for points outside the extent,
        # which coarse() refuses before they get here.
        x0 = (x0.long() - self.x0).clamp(0, self.w - 1)
        y0 = (y0.long() - self.y0).clamp(0, self.h - 1)
        x1, y1 = (x0 + 1).clamp(max=self.w - 1), (y0 + 1).clamp(max=self.h - 1)
        top, bottom = self.offset + y0 * self.w, self.offset + y1 * self.w
        index = torch.stack([top + x0, top + x1, bottom + x0, bottom + x1], 1)
        weight = torch.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], 1)
        return index, weight

    def rows(self, maps: torch.Tensor) -> torch.Tensor:
        """``(1, C, H, W)`` -> the crop's ``(h * w, C)`` channels-last rows."""
        crop = maps[0, :, self.y0 : self.y0 + self.h, self.x0 : self.x0 + self.w]
        return crop.permute(1, 2, 0).reshape(self.h * self.w, -1)


class _ProjectedTable:
    """Rows of ``[feat_in @ w_feat.T ; pe_in @ w_pe.T]``, each projected on its first read.

    The projection is the largest cost of a box when done for the whole window,
    yet most rows are never read (points gather near the boundary), so rows are
    computed on demand; a row's value does not depend on which others exist.
    """

    def __init__(self, feat_in: torch.Tensor, pe_in: torch.Tensor, w_feat: torch.Tensor,
                 w_pe: torch.Tensor):
        self._parts = ((feat_in, w_feat.T.contiguous(), 0),
                       (pe_in, w_pe.T.contiguous(), len(feat_in)))
        self.rows = torch.empty(len(feat_in) + len(pe_in), w_feat.shape[0], dtype=w_feat.dtype,
                                device=w_feat.device)
        self._done = torch.zeros(len(self.rows), dtype=torch.bool, device=w_feat.device)

    def read(self, index: torch.Tensor) -> torch.Tensor:
        """The table, with every row named in ``index`` projected."""
        wanted = index.flatten().unique()
        missing = wanted[~self._done[wanted]]
        if len(missing):
            for inputs, weight_t, start in self._parts:
                part = missing[(missing >= start) & (missing < start + len(inputs))]
                if len(part):
                    self.rows[part] = inputs[part - start] @ weight_t
            self._done[missing] = True
        return self.rows


class FastDecoder:
    """Dec_c, MC-dropout uncertainty and Dec_f for one box, at arbitrary points."""

    @torch.no_grad()
    def __init__(self, model: IMedSAM, prompt: PromptFeatures, networks: torch.Tensor | None,
                 extent: Extent | None = None):
        """``extent``: bounds of every point that will be queried (normalised x0, y0,
        x1, y1); the projected tables then cover only that part of the maps."""
        if prompt.features.shape[0] != 1:
            raise ValueError("FastDecoder works on one box at a time")
        dec = model.implicit_decoder
        self.decoder = dec
        self.prompt = prompt
        self.networks = networks
        self.extent = extent
        self.classes = dec.coarse.classes
        self.feature_dim = dec.coarse.feature_dim
        (w1, b1), (w2, b2), *rest = _folded_mlp(dec.coarse.trunk)
        if rest:
            raise ValueError("FastDecoder expects Dec_c with two hidden layers")
        n_gamma = dec.positional_encoding.out_dim
        n_feat = prompt.features.shape[1]
        w_gamma, w_feat, w_pe = w1.split([n_gamma, n_feat, w1.shape[1] - n_gamma - n_feat], dim=1)
        self.w_gamma_t, self.b1 = w_gamma.T.contiguous(), b1
        # The projected maps (1024 channels), channels-last so that a point reads
        # whole contiguous rows, both in one table: a point's two bilinear
        # samples are then one weighted sum of 8 rows. Only the part of the maps
        # the points can reach is kept, and a row is projected when first read.
        dense_pe = prompt.dense_pe.to(w_pe.dtype)
        self.feat_crop = _Crop.covering(*prompt.features.shape[2:], extent, 0)
        self.pe_crop = _Crop.covering(*dense_pe.shape[2:], extent,
                                      self.feat_crop.h * self.feat_crop.w)
        self._inputs = (self.feat_crop.rows(prompt.features), self.pe_crop.rows(dense_pe))
        self.table = _ProjectedTable(*self._inputs, w_feat, w_pe)
        self.w2, self.b2 = w2, b2
        heads = dec.coarse.heads
        per_class = heads.weight.view(self.classes, 1 + self.feature_dim, -1)
        bias = heads.bias.view(self.classes, 1 + self.feature_dim)
        self.w_logit, self.b_logit = per_class[:, 0].detach(), bias[:, 0].detach()
        self._fold_fine(dec, per_class[:, 1:].detach(), bias[:, 1:].detach(), n_gamma, n_feat)
        # Residual mode: SAM's logit map, read with the features' bilinear taps.
        self.sam_table = None
        if dec.sam_logit == "residual":
            self.sam_table = self.feat_crop.rows(prompt.sam_logits().to(w1.dtype)).contiguous()

    def _fold_fine(self, dec: torch.nn.Module, w_zc: torch.Tensor, b_zc: torch.Tensor,
                   n_gamma: int, n_feat: int) -> None:
        """Dec_f's first layer on ``[z_c, gamma, features, pe]``, rewritten exactly:

        - ``z_c = W_zc h + b_zc`` is linear in Dec_c's hidden layer ``h``, so
          ``W_1 z_c`` becomes one ``(256, 512)`` product on ``h`` per class;
        - the sampled parts go through a projected table like Dec_c's.
        """
        (w1, b1), *rest = _folded_mlp(dec.fine.trunk)
        n_zc = w_zc.shape[1]
        w1_zc, w1_gamma, w1_feat, w1_pe = w1.split(
            [n_zc, n_gamma, n_feat, w1.shape[1] - n_zc - n_gamma - n_feat], dim=1)
        self.fine_hidden_w = torch.einsum("of,kfh->koh", w1_zc, w_zc)  # (K, 256, 512)
        self.fine_b1 = b1 + b_zc @ w1_zc.T  # (K, 256)
        self.fine_gamma_t = w1_gamma.T.contiguous()
        self.fine_table = _ProjectedTable(*self._inputs, w1_feat, w1_pe)
        self.fine_rest = rest
        self.fine_heads = [(*fold_linear_bn(head[0], head[1]), head[3].weight.detach(),
                            head[3].bias.detach()) for head in dec.fine.heads]

    def _taps(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``(M, 8)`` and weights of both maps' bilinear taps in the stacked tables."""
        idx_f, wt_f = self.feat_crop.taps(points)
        idx_p, wt_p = self.pe_crop.taps(points)
        return torch.cat([idx_f, idx_p], 1), torch.cat([wt_f, wt_p], 1)

    @staticmethod
    def _projected_samples(table: _ProjectedTable,
                           taps: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """``(M, O)``: both projected maps of ``table`` sampled bilinearly at the points
        and summed.

        ``embedding_bag`` reads the 8 weighted rows of each point and sums them in
        one pass; indexing and multiplying whole ``(M, 1024)`` tensors instead
        was ten times slower (memory traffic of the temporaries).
        """
        index, weight = taps
        rows = table.read(index)
        return F.embedding_bag(index, rows, per_sample_weights=weight.to(rows.dtype), mode="sum")

    def _sam_logits(self, taps: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor | None:
        """``(M,)`` SAM's logit at the points (the feature map's four taps), or None."""
        if self.sam_table is None:
            return None
        index, weight = taps
        return F.embedding_bag(index[:, :4], self.sam_table,
                               per_sample_weights=weight[:, :4].to(self.sam_table.dtype),
                               mode="sum")[:, 0]

    def _check_extent(self, points: torch.Tensor) -> None:
        if self.extent is None or not len(points):
            return
        ex0, ey0, ex1, ey1 = self.extent
        lo, hi = points.amin(0), points.amax(0)
        tol = 1e-5
        if lo[0] < ex0 - tol or lo[1] < ey0 - tol or hi[0] > ex1 + tol or hi[1] > ey1 + tol:
            raise ValueError("points outside the extent this decoder was built for")

    def _hidden(self, points: torch.Tensor, taps: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        gamma = self.decoder.positional_encoding(points)
        # In place: each (M, 1024) temporary costs as much as the sampling itself.
        pre = self._projected_samples(self.table, taps).add_(self.b1).addmm_(gamma, self.w_gamma_t).relu_()
        return torch.addmm(self.b2, pre, self.w2.T).relu_()

    @torch.no_grad()
    def hidden(self, points: torch.Tensor) -> torch.Tensor:
        """Dec_c's hidden layer ``(M, 512)`` alone: what :meth:`coarse` returns first."""
        self._check_extent(points)
        return self._hidden(points, self._taps(points))

    @torch.no_grad()
    def coarse(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(M, 2)`` normalised points -> hidden ``(M, 512)``, logits ``(M, K)``,
        MC-dropout variance ``(M, K)``."""
        self._check_extent(points)
        taps = self._taps(points)
        hidden = self._hidden(points, taps)
        logits = torch.addmm(self.b_logit, hidden, self.w_logit.T)
        base = self._sam_logits(taps)
        if base is not None:
            logits += base[:, None]
        variance = self.decoder.coarse.mc_variance(hidden, self.networks, base)
        return hidden, logits, variance

    @torch.no_grad()
    def fine(self, points: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """Dec_f logits ``(M, K)`` at points whose Dec_c hidden layer is ``hidden``."""
        self._check_extent(points)
        taps = self._taps(points)
        shared = self._projected_samples(self.fine_table, taps).addmm_(
            self.decoder.positional_encoding(points), self.fine_gamma_t)
        logits = []
        for k, (wh, bh, w_out, b_out) in enumerate(self.fine_heads):
            x = torch.addmm(shared + self.fine_b1[k], hidden, self.fine_hidden_w[k].T).relu_()
            for weight, bias in self.fine_rest:
                x = torch.addmm(bias, x, weight.T).relu_()
            x = torch.addmm(bh, x, wh.T).relu_()
            logits.append(torch.addmm(b_out, x, w_out.T)[:, 0])
        out = torch.stack(logits, dim=1)
        base = self._sam_logits(taps)
        return out if base is None else out + base[:, None]
