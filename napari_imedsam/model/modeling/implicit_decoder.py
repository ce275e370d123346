"""Coarse-to-fine implicit segmentation decoder with uncertainty-guided sampling.

Points are queried in normalised encoder-input coordinates ``p = (x, y)`` in
``[-1, 1]``, ``-1`` being the left/top edge of the first pixel and ``+1`` the
right/bottom edge of the last (``align_corners=False``). Each point's input
``z_p = [gamma(p), features(p), dense_pe(p)]`` goes through ``Dec_c``, giving a
coarse logit and a feature ``z_c`` per class; the most uncertain points under
MC dropout go through ``Dec_f`` (paper Eq. 5-7).

MC dropout here samples *networks*, not per-point noise: sample ``t`` draws one
mask on Dec_c's last hidden layer and applies it to every point. That is the
Bayesian reading of MC dropout, costs one ``(hidden x T)`` product per point,
and gives a point the same uncertainty whatever other points are queried with
it, so region-only and dense evaluation agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


class PositionalEncoding(nn.Module):
    """``gamma(p)``: sin and cos of ``2^k * pi * p`` for k < L (paper Eq. 4).

    ``set_progress(alpha)`` fades frequencies in during training (frequency
    ``k`` is fully on once ``alpha >= k + 1``); the default has all on.
    """

    def __init__(self, num_frequencies: int) -> None:
        super().__init__()
        self.num_frequencies = num_frequencies
        scales = (2.0 ** torch.arange(num_frequencies)) * math.pi
        self.register_buffer("scales", scales, persistent=False)
        # Persistent: a model trained with some frequencies faded out must be
        # evaluated the same way, so the window travels with its checkpoint.
        self.register_buffer("window", torch.ones(num_frequencies))

    @property
    def out_dim(self) -> int:
        return 4 * self.num_frequencies

    def set_progress(self, alpha: float) -> None:
        k = torch.arange(self.num_frequencies, device=self.window.device, dtype=torch.float32)
        ramp = (alpha - k).clamp(0.0, 1.0)
        self.window.copy_(0.5 * (1.0 - torch.cos(math.pi * ramp)))

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """``(..., 2)`` -> ``(..., 4L)``."""
        angles = points.unsqueeze(-1) * self.scales  # (..., 2, L)
        window = self.window
        encoded = torch.cat([torch.sin(angles) * window, torch.cos(angles) * window], dim=-1)
        return encoded.flatten(-2)


def _mlp(sizes: list[int]) -> nn.Sequential:
    """Linear -> BatchNorm -> ReLU for each consecutive pair of sizes."""
    layers: list[nn.Module] = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(fan_in, fan_out), nn.BatchNorm1d(fan_out), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class CoarseDecoder(nn.Module):
    """Dec_c: trunk, dropout on its last hidden layer, one ``1 + F`` head per class."""

    def __init__(
        self, in_dim: int, hidden: tuple[int, ...], feature_dim: int, classes: int, dropout: float
    ) -> None:
        super().__init__()
        self.trunk = _mlp([in_dim, *hidden])
        self.dropout = nn.Dropout(dropout)
        self.p = dropout
        self.classes = classes
        self.feature_dim = feature_dim
        # The per-class heads share an input, so they are stored as one Linear.
        self.heads = nn.Linear(hidden[-1], classes * (1 + feature_dim))

    def forward(self, z_p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(M, in)`` -> hidden ``(M, H)``, logits ``(M, K)``, features ``(M, K, F)``."""
        hidden = self.trunk(z_p)
        out = self.heads(self.dropout(hidden)).view(-1, self.classes, 1 + self.feature_dim)
        return hidden, out[..., 0], out[..., 1:]

    def sample_networks(
        self, samples: int, generator: torch.Generator | None = None
    ) -> torch.Tensor | None:
        """Logit-head weights of ``samples`` dropout networks, ``(T, K, H)``.

        Drawn once per query, then applied to every chunk of points, so that
        chunked and one-pass decoding see the same networks.
        """
        if samples < 2 or self.p <= 0.0:
            return None
        weight = self.heads.weight
        width = weight.shape[1]
        device = generator.device if generator is not None else weight.device
        keep = torch.rand(samples, width, generator=generator, device=device).to(weight.device)
        keep = (keep >= self.p).to(weight.dtype) / (1.0 - self.p)
        logit_rows = weight.view(self.classes, 1 + self.feature_dim, width)[:, 0]
        return keep[:, None, :] * logit_rows[None]

    def mc_variance(self, hidden: torch.Tensor, networks: torch.Tensor | None,
                    offset: torch.Tensor | None = None) -> torch.Tensor:
        """Variance of sigmoid probabilities over the sampled networks (Eq. 7).

        ``hidden (M, H)`` -> ``(M, K)``; zero when no networks were sampled.
        ``offset (M,)``: a logit every network adds (SAM's, in residual mode).
        """
        if networks is None:
            return hidden.new_zeros(hidden.shape[0], self.classes, dtype=torch.float32)
        bias = self.heads.bias.view(self.classes, 1 + self.feature_dim)[:, 0]
        logits = torch.einsum("mh,tkh->mtk", hidden, networks.to(hidden.dtype))
        logits = logits + bias.to(hidden.dtype)
        if offset is not None:
            logits = logits + offset.to(logits.dtype)[:, None, None]
        return torch.sigmoid(logits.float()).var(dim=1, unbiased=False)


class FineDecoder(nn.Module):
    """Dec_f: a shared trunk on ``[z_c, z_p]`` and one small head per class."""

    def __init__(
        self,
        in_dim: int,
        feature_dim: int,
        hidden: tuple[int, ...],
        head_hidden: int,
        classes: int,
    ) -> None:
        super().__init__()
        self.trunk = _mlp([feature_dim + in_dim, *hidden])
        self.heads = nn.ModuleList(
            nn.Sequential(*_mlp([hidden[-1], head_hidden]), nn.Linear(head_hidden, 1))
            for _ in range(classes)
        )

    def forward(self, z_c: torch.Tensor, z_p: torch.Tensor) -> torch.Tensor:
        """``z_c (S, K, F)`` and ``z_p (S, in)`` -> fine logits ``(S, K)``."""
        logits = [
            head(self.trunk(torch.cat([z_c[:, k], z_p], dim=-1))).squeeze(-1)
            for k, head in enumerate(self.heads)
        ]
        return torch.stack(logits, dim=-1)


@dataclass
class DecoderOutput:
    """Decoder results for ``N`` query sets of ``P`` points and ``K`` classes."""

    coarse_logits: torch.Tensor  # (N, P, K)
    logits: torch.Tensor  # (N, P, K): coarse everywhere, fine where refined (Eq. 6)
    uncertainty: torch.Tensor  # (N, P, K): MC-dropout variance of the coarse probability
    refined: torch.Tensor  # (N, P) bool


class ImplicitDecoder(nn.Module):
    """Dec_c + uncertainty-guided sampling + Dec_f over point queries.

    ``sam_logit="residual"``: SAM's own mask logit at each point (its mask
    token's hypernetwork weights dotted with the sampled features, exactly the
    bilinear sample of SAM's low-resolution logits) is added to the coarse and
    the fine logits, and the output layers start at zero; the decoder then
    begins as the pretrained prompt path and learns corrections to it.
    """

    def __init__(
        self,
        feature_channels: int,
        pe_channels: int,
        num_frequencies: int,
        coarse_hidden: tuple[int, ...],
        feature_dim: int,
        fine_hidden: tuple[int, ...],
        fine_head_hidden: int,
        classes: int,
        dropout: float,
        sam_logit: str = "off",
    ) -> None:
        super().__init__()
        if sam_logit not in ("off", "residual"):
            raise ValueError(f"sam_logit must be 'off' or 'residual', got {sam_logit!r}")
        self.positional_encoding = PositionalEncoding(num_frequencies)
        in_dim = self.positional_encoding.out_dim + feature_channels + pe_channels
        self.in_dim = in_dim
        self.feature_channels = feature_channels
        self.sam_logit = sam_logit
        self.coarse = CoarseDecoder(in_dim, coarse_hidden, feature_dim, classes, dropout)
        self.fine = FineDecoder(in_dim, feature_dim, fine_hidden, fine_head_hidden, classes)
        if sam_logit == "residual":
            with torch.no_grad():
                rows = self.coarse.heads.weight.view(classes, 1 + feature_dim, -1)
                rows[:, 0].zero_()
                self.coarse.heads.bias.view(classes, 1 + feature_dim)[:, 0].zero_()
                for head in self.fine.heads:
                    head[-1].weight.zero_()
                    head[-1].bias.zero_()

    def base_logits(self, z_p: torch.Tensor, mask_weights: torch.Tensor | None) -> torch.Tensor | None:
        """SAM's logit at each point in residual mode, ``(N, P)``; None otherwise.

        ``z_p (N, P, in)`` from :meth:`point_inputs`; ``mask_weights (N, C)`` the
        hypernetwork output of SAM's mask token for each box.
        """
        if self.sam_logit != "residual":
            return None
        if mask_weights is None:
            raise ValueError("a residual decoder needs the prompt's mask weights")
        start = self.positional_encoding.out_dim
        features = z_p[..., start : start + self.feature_channels]
        return torch.einsum("npc,nc->np", features, mask_weights.to(features.dtype))

    def point_inputs(
        self, points: torch.Tensor, features: torch.Tensor, dense_pe: torch.Tensor
    ) -> torch.Tensor:
        """Build ``z_p``.

        Args:
            points: ``(B, N, 2)`` in ``[-1, 1]``, (x, y) order.
            features: ``(B, C, h, w)`` fused prompt/image features.
            dense_pe: ``(1 or B, D, g, g)`` SAM's dense positional encoding.

        Returns:
            ``(B, N, 4L + C + D)``.
        """
        grid = points.to(features.dtype).unsqueeze(2)  # (B, N, 1, 2)

        def sample(maps: torch.Tensor) -> torch.Tensor:
            maps = maps.expand(points.shape[0], -1, -1, -1)
            out = F.grid_sample(maps, grid, mode="bilinear", align_corners=False,
                                padding_mode="border")
            return out.squeeze(-1).transpose(1, 2)  # (B, N, C)

        gamma = self.positional_encoding(points.to(features.dtype))
        return torch.cat([gamma, sample(features), sample(dense_pe.to(features.dtype))], dim=-1)

    def forward(
        self,
        z_p: torch.Tensor,
        *,
        mc_samples: int,
        top_k_ratio: float | None = None,
        refine_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        networks: torch.Tensor | None = None,
        base_logits: torch.Tensor | None = None,
    ) -> DecoderOutput:
        """Decode ``N`` query sets of ``P`` points each.

        Args:
            z_p: ``(N, P, in)`` point inputs.
            mc_samples: T, the number of dropout networks for the uncertainty.
            top_k_ratio: refine the ``ceil(ratio * P)`` most uncertain points of
                each query set (uncertainty = the largest over classes).
            refine_mask: ``(N, P)`` bool, explicit points to refine (overrides ratio).
            generator: makes the dropout networks reproducible.
            networks: dropout networks from ``coarse.sample_networks`` (instead
                of drawing new ones).
            base_logits: ``(N, P)`` SAM's logits (:meth:`base_logits`), added to
                every output in residual mode.
        """
        n, p, _ = z_p.shape
        flat = z_p.reshape(n * p, -1)
        # All points in one pass: BatchNorm sees the whole batch while training.
        hidden, coarse_logits, z_c = self.coarse(flat)
        base = None if base_logits is None else base_logits.reshape(n * p, 1)
        if base is not None:
            coarse_logits = coarse_logits + base.to(coarse_logits.dtype)
        with torch.no_grad():
            if networks is None:
                networks = self.coarse.sample_networks(mc_samples, generator)
            uncertainty = self.coarse.mc_variance(
                hidden.detach(), networks, None if base is None else base[:, 0].detach())
        uncertainty = uncertainty.view(n, p, -1)
        if refine_mask is None:
            refine_mask = top_k_mask(uncertainty.amax(dim=2), top_k_ratio or 0.0)
        logits = coarse_logits
        index = refine_mask.reshape(-1).nonzero().squeeze(1)
        if index.numel():
            fine = self.fine(z_c[index], flat[index]).to(coarse_logits.dtype)
            if base is not None:
                fine = fine + base[index].to(fine.dtype)
            logits = coarse_logits.index_put((index,), fine)
        return DecoderOutput(
            coarse_logits.view(n, p, -1), logits.view(n, p, -1), uncertainty, refine_mask
        )


def top_k_mask(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """``(N, P)`` scores -> bool mask of the ``ceil(ratio * P)`` highest of each row."""
    mask = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    count = min(scores.shape[1], math.ceil(ratio * scores.shape[1])) if ratio > 0 else 0
    if count:
        mask.scatter_(1, scores.topk(count, dim=1).indices, True)
    return mask
