"""Adaptive evaluation: decoder cost that follows the object boundary, not the area.

On an output grid of ``R x C`` points (a box region at some scale):

1. Dec_c (logit and MC-dropout variance) runs on a lattice of stride ``s``
   (:func:`start_stride`: about 32 cells across the output, so this first,
   area-proportional pass costs the same at every output size).
2. A lattice cell is *mixed* when its corners disagree about the mask (sign of
   the logit, for any class) or one of them is within ``margin`` of p = 0.5.
   Mixed cells, grown by one cell, are split in two along both axes and their
   new nodes evaluated; this repeats down to stride 1. Cells that are not mixed
   take bilinear values of their corners.
3. Uncertainty-guided sampling, adapted: ``K = ceil(top_k_ratio * R * C)`` as in
   dense evaluation; the threshold is the K-th largest uncertainty of the whole
   (exact where evaluated, interpolated elsewhere) map; Dec_f refines every
   *evaluated* point at or above it. Dense evaluation would also refine
   uncertain points inside uniform cells, where coarse and fine agree on the
   mask; that is where the two may differ.

Every evaluated point has exactly the values dense evaluation gives it (same
dropout networks, same inputs): the uncertainty maps agree there to float
precision.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from .fast_decoder import FastDecoder


#: The coarsest lattice stride, in output pixels.
DEFAULT_STRIDE = 8
#: Dec_c hidden layers (512 floats each) kept for Dec_f: at most 64 MB.
KEEP_HIDDEN = 32768


@dataclass
class AdaptiveMaps:
    """``(K, R, C)`` maps of one box; ``evaluated``/``refined`` are ``(R, C)``."""

    coarse_logits: torch.Tensor
    logits: torch.Tensor
    uncertainty: torch.Tensor
    evaluated: torch.Tensor
    refined: torch.Tensor

    @property
    def prob(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)


def _cells_mixed(logits: torch.Tensor, margin_logit: float) -> torch.Tensor:
    """``(K, n, m)`` lattice logits -> ``(n-1, m-1)`` cells whose mask is not settled."""
    corners = torch.stack([logits[:, :-1, :-1], logits[:, 1:, :-1],
                           logits[:, :-1, 1:], logits[:, 1:, 1:]])
    positive = corners > 0
    split = positive.any(0) & ~positive.all(0)
    close = (corners.abs() < margin_logit).any(0)
    return (split | close).any(0)


def _grow(cells: torch.Tensor) -> torch.Tensor:
    """Add the 8 neighbours of every marked cell (a boundary may bulge past a corner)."""
    padded = F.pad(cells[None, None].float(), (1, 1, 1, 1))
    return F.max_pool2d(padded, 3, stride=1)[0, 0] > 0


def _cells_to_child_nodes(cells: torch.Tensor) -> torch.Tensor:
    """Marked cells of a level -> marked nodes of the next (twice as fine) lattice."""
    n, m = cells.shape
    nodes = torch.zeros(2 * n + 1, 2 * m + 1, dtype=torch.bool)
    for di in range(3):
        for dj in range(3):
            nodes[di : di + 2 * n : 2, dj : dj + 2 * m : 2] |= cells
    return nodes


def start_stride(shape: tuple[int, int], cells: int = 32) -> int:
    """The coarsest stride for an ``R x C`` output: about ``cells`` lattice cells
    across its longer side (a power of two, 1 to 32), so that the first,
    area-proportional pass costs the same at every output size."""
    side = max(shape)
    return int(min(32, max(1, 2 ** round(math.log2(max(1.0, side / cells))))))


def lattice_shape(shape: tuple[int, int], stride: int = DEFAULT_STRIDE) -> tuple[int, int]:
    """The grid adaptive evaluation may query for an ``R x C`` output: padded so that
    every level divides it exactly; the extra nodes lie just past the output (rows
    ``R..``, columns ``C..``) and are cropped at the end."""
    if stride < 1 or stride & (stride - 1):
        raise ValueError(f"stride must be a power of two, got {stride}")
    rows, cols = shape
    n_cells = (max(1, math.ceil((rows - 1) / stride)), max(1, math.ceil((cols - 1) / stride)))
    return n_cells[0] * stride + 1, n_cells[1] * stride + 1


def adaptive_decode(
    fast: FastDecoder,
    points_of: Callable[[np.ndarray, np.ndarray], torch.Tensor],
    shape: tuple[int, int],
    *,
    stride: int = DEFAULT_STRIDE,
    margin: float = 0.1,
    top_k_ratio: float = 0.125,
    batch: int = 16384,
    keep_hidden: int | None = None,
) -> AdaptiveMaps:
    """Decode an ``R x C`` grid adaptively.

    Args:
        fast: the box's decoder.
        points_of: ``(rows, cols)`` integer index arrays -> ``(M, 2)`` normalised points.
        shape: ``(R, C)``.
        stride: the coarsest lattice stride (a power of two).
        margin: cells with a corner probability within ``margin`` of 0.5 are refined.
        keep_hidden: Dec_c hidden layers kept for Dec_f (points; default
            ``KEEP_HIDDEN``); past it a refined point's hidden layer is computed
            again, to the same values.
    """
    keep_hidden = KEEP_HIDDEN if keep_hidden is None else keep_hidden
    rows, cols = shape
    full = lattice_shape(shape, stride)
    n_cells = ((full[0] - 1) // stride, (full[1] - 1) // stride)
    k = fast.classes
    exact_logit = torch.full((k, *full), float("nan"))
    exact_unc = torch.zeros((k, *full))
    evaluated = torch.zeros(full, dtype=torch.bool)

    # Dec_c's hidden layer of the first ``keep_hidden`` evaluated points, kept for
    # Dec_f (row index per point; -1: not kept). A long boundary can need hundreds
    # of thousands of points (2 KB each), so the rest are recomputed if refined.
    hidden_rows: list[torch.Tensor] = []
    row_of = torch.full(full, -1, dtype=torch.long)
    stored = 0

    def evaluate(node_r: torch.Tensor, node_c: torch.Tensor) -> None:
        nonlocal stored
        for start in range(0, node_r.numel(), batch):
            r, c = node_r[start : start + batch], node_c[start : start + batch]
            hidden, logits, unc = fast.coarse(points_of(r.numpy(), c.numpy()))
            exact_logit[:, r, c] = logits.T.float()
            exact_unc[:, r, c] = unc.T.float()
            evaluated[r, c] = True
            keep = min(r.numel(), max(0, keep_hidden - stored))
            if keep:
                # A clone of a part: a view would keep the whole batch alive.
                hidden_rows.append(hidden if keep == r.numel() else hidden[:keep].clone())
                row_of[r[:keep], c[:keep]] = torch.arange(stored, stored + keep)
                stored += keep

    logit_map = torch.zeros((k, *full))
    unc_map = torch.zeros((k, *full))
    settled = torch.zeros(full, dtype=torch.bool)
    level = stride
    todo = torch.ones(n_cells[0] + 1, n_cells[1] + 1, dtype=torch.bool)
    margin_logit = math.log((0.5 + margin) / (0.5 - margin)) if 0 < margin < 0.5 else 0.0
    while True:
        lattice_r = torch.arange(0, full[0], level)
        lattice_c = torch.arange(0, full[1], level)
        grid_r, grid_c = torch.meshgrid(lattice_r, lattice_c, indexing="ij")
        need = todo & ~evaluated[grid_r, grid_c]
        evaluate(grid_r[need], grid_c[need])
        if level == 1:
            break
        lat_logit = exact_logit[:, grid_r, grid_c]
        lat_unc = exact_unc[:, grid_r, grid_c]
        active = todo[:-1, :-1] & todo[1:, :-1] & todo[:-1, 1:] & todo[1:, 1:]
        mixed = _cells_mixed(torch.nan_to_num(lat_logit), margin_logit) & active
        if level == stride:
            mixed = _grow(mixed)
        # Cells settled at this level take bilinear values of their corners.
        upsample = dict(size=full, mode="bilinear", align_corners=True)
        cell_of_point = F.interpolate((active & ~mixed)[None, None].float(),
                                      scale_factor=level, mode="nearest")
        cell_of_point = F.pad(cell_of_point, (0, 1, 0, 1), mode="replicate")[0, 0]
        fill = (cell_of_point > 0) & ~settled
        logit_map[:, fill] = F.interpolate(torch.nan_to_num(lat_logit)[None], **upsample)[0][:, fill]
        unc_map[:, fill] = F.interpolate(lat_unc[None], **upsample)[0][:, fill]
        settled |= fill
        todo = _cells_to_child_nodes(mixed)
        level //= 2
    exact = evaluated
    logit_map[:, exact] = exact_logit[:, exact]
    unc_map[:, exact] = exact_unc[:, exact]
    logit_map, unc_map = logit_map[:, :rows, :cols], unc_map[:, :rows, :cols]
    exact = exact[:rows, :cols]
    final = logit_map.clone()
    refined = torch.zeros(rows, cols, dtype=torch.bool)
    count = math.ceil(top_k_ratio * rows * cols) if top_k_ratio > 0 else 0
    if count:
        score = unc_map.amax(0)
        threshold = score.flatten().kthvalue(score.numel() - min(count, score.numel()) + 1).values
        refined = exact & (score >= threshold)
        ref_r, ref_c = refined.nonzero(as_tuple=True)
        hidden_all = torch.cat(hidden_rows) if hidden_rows else None
        for start in range(0, ref_r.numel(), batch):
            r, c = ref_r[start : start + batch], ref_c[start : start + batch]
            points = points_of(r.numpy(), c.numpy())
            rows_kept = row_of[r, c]
            if hidden_all is not None and bool((rows_kept >= 0).all()):
                hidden = hidden_all[rows_kept]
            else:
                hidden = fast.hidden(points)
            final[:, r, c] = fast.fine(points, hidden).T.float()
    return AdaptiveMaps(logit_map, final, unc_map, exact, refined)
