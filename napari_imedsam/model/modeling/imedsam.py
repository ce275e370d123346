"""I-MedSAM: adapted SAM encoder, SAM's box prompt path, implicit decoder."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from segment_anything.modeling import MaskDecoder, PromptEncoder
from torch import nn

from ..config import ModelConfig
from .implicit_decoder import ImplicitDecoder, top_k_mask
from .lora import lora_linear_enabled


@dataclass
class PromptFeatures:
    """What the implicit decoder reads for a batch of ``N`` boxes."""

    features: torch.Tensor  # (N, C, 4g, 4g) upscaled fused features (C = 32 for SAM)
    dense_pe: torch.Tensor  # (1, D, g, g) SAM's dense positional encoding (D = 256)
    #: (N, C) SAM's single-mask hypernetwork output: ``mask_weights @ features``
    #: is SAM's own low-resolution mask logit map.
    mask_weights: torch.Tensor | None = None
    #: (N,) SAM's predicted IoU of its single mask.
    iou: torch.Tensor | None = None

    def sam_logits(self) -> torch.Tensor:
        """SAM's low-resolution mask logits ``(N, 1, 4g, 4g)`` for these boxes."""
        if self.mask_weights is None:
            raise ValueError("these prompt features carry no mask weights")
        return torch.einsum("nc,nchw->nhw", self.mask_weights, self.features)[:, None]


@dataclass
class Prediction:
    """Decoder results for ``N`` boxes, ``K`` classes and ``P`` query points.

    Point queries give tensors shaped ``(N, K, P)``; grid queries reshape the
    last axis to ``(H, W)``. ``refined`` has no class axis.
    """

    coarse_logits: torch.Tensor
    logits: torch.Tensor
    uncertainty: torch.Tensor
    refined: torch.Tensor

    @property
    def coarse_prob(self) -> torch.Tensor:
        """Coarse probability (Dec_c, dropout off)."""
        return torch.sigmoid(self.coarse_logits.float())

    @property
    def prob(self) -> torch.Tensor:
        """Final probability: coarse everywhere, fine at refined points (Eq. 6)."""
        return torch.sigmoid(self.logits.float())


def grid_points(height: int, width: int, device: torch.device | None = None) -> torch.Tensor:
    """Centres of an ``height x width`` grid covering the encoder input, ``(H*W, 2)`` (x, y)."""
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) * (2.0 / height) - 1.0
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) * (2.0 / width) - 1.0
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=-1)


class IMedSAM(nn.Module):
    """The full model. Build it with :func:`napari_imedsam.model.build_model`."""

    def __init__(
        self,
        config: ModelConfig,
        image_encoder: nn.Module,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        implicit_decoder: ImplicitDecoder,
    ) -> None:
        super().__init__()
        self.config = config
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.implicit_decoder = implicit_decoder
        #: Name and SHA-256 of the SAM weights loaded into the base model, if any.
        self.base_weights: dict[str, str | None] = {"name": None, "sha256": None}
        #: SHA-256 of the adapter file loaded last (None: the implicit decoder is
        #: untrained, and only SAM's own decoder gives meaningful masks).
        self.adapter_sha256: str | None = None
        #: The calibrated error map (``model.error_map.ErrorModel``), read with an adapter.
        self.error_model = None

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def embed(self, images: torch.Tensor, *, recompute: bool = False) -> torch.Tensor:
        """``(B, 3, S, S)`` letterboxed input -> ``(B, D, g, g)`` image embeddings.

        The input is what ``transforms.letterbox_image`` makes for this model's
        ``config.preprocess``: RGB in [0, 255] for SAM's ViT, min-max [0, 1] for
        LiteMedSAM. ``recompute``: while training the encoder, keep each block's
        input only and run the block again in the backward pass (see
        :func:`.blocks.run_block`).
        """
        return self.image_encoder(images, recompute=recompute)

    def _prompt(
        self,
        embeddings: torch.Tensor,
        boxes: torch.Tensor | None,
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        mask_input: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if boxes is None and points is None:
            raise ValueError("a prompt needs boxes, points or both")
        if boxes is not None and (boxes.dim() != 2 or boxes.shape[1] != 4):
            raise ValueError(f"boxes must have shape (N, 4), got {tuple(boxes.shape)}")
        if points is not None:
            coords, labels = points
            if coords.dim() != 3 or coords.shape[2] != 2 or labels.shape != coords.shape[:2]:
                raise ValueError("points must be (N, P, 2) coordinates with (N, P) labels, got "
                                 f"{tuple(coords.shape)} and {tuple(labels.shape)}")
        n = boxes.shape[0] if boxes is not None else points[0].shape[0]  # type: ignore[index]
        if embeddings.shape[0] not in (1, n):
            raise ValueError(
                f"{embeddings.shape[0]} embeddings for {n} prompts: "
                "give one embedding per prompt, or one for all"
            )
        sparse, dense = self.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
        return sparse, dense, self.prompt_encoder.get_dense_pe()

    def encode_prompt(
        self,
        embeddings: torch.Tensor,
        boxes: torch.Tensor | None,
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        mask_input: torch.Tensor | None = None,
    ) -> PromptFeatures:
        """Fuse prompts with image embeddings through SAM's two-way transformer.

        Args:
            embeddings: ``(1 or N, D, g, g)`` from :meth:`embed`.
            boxes: ``(N, 4)`` as x0, y0, x1, y1 in encoder-input pixels, or None.
            points: ``(coords (N, P, 2), labels (N, P))``: clicks in encoder-input
                pixels (x, y), labels 1 positive, 0 negative, -1 padding; or None.
            mask_input: ``(N, 1, 4g, 4g)`` low-resolution logits (e.g. the
                previous answer's :meth:`PromptFeatures.sam_logits`), or None.
        """
        sparse, dense, dense_pe = self._prompt(embeddings, boxes, points, mask_input)
        decoder = self.mask_decoder
        output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
        tokens = torch.cat(
            [output_tokens.unsqueeze(0).expand(sparse.shape[0], -1, -1), sparse], dim=1
        )
        src = embeddings.expand(sparse.shape[0], -1, -1, -1) + dense
        pos = dense_pe.expand(sparse.shape[0], -1, -1, -1)
        n, c, h, w = src.shape
        # The click adapters (LoRA in the transformer) answer clicks only: a box alone
        # is answered exactly as the backbone answers it.
        with lora_linear_enabled(points is not None):
            hs, src = decoder.transformer(src, pos, tokens)
        fused = src.transpose(1, 2).reshape(n, c, h, w)
        # Token 0 is the IoU token, token 1 the first mask token: SAM's
        # single-mask output (multimask_output=False) reads exactly these.
        mask_weights = decoder.output_hypernetworks_mlps[0](hs[:, 1, :])
        iou = decoder.iou_prediction_head(hs[:, 0, :])[:, 0]
        return PromptFeatures(decoder.output_upscaling(fused), dense_pe, mask_weights, iou)

    def decode_points(
        self,
        prompt: PromptFeatures,
        points: torch.Tensor,
        *,
        mc_samples: int | None = None,
        top_k_ratio: float | None = None,
        refine_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        chunk_size: int | None = None,
    ) -> Prediction:
        """Query the implicit decoder at arbitrary points.

        Args:
            prompt: from :meth:`encode_prompt` for ``N`` boxes.
            points: ``(P, 2)`` shared by all boxes or ``(N, P, 2)``, in ``[-1, 1]``
                encoder-input coordinates, (x, y) order.
            mc_samples, top_k_ratio: default to the config (T = 8, 12.5 %).
            refine_mask: ``(N, P)`` bool, points to refine instead of the top-K.
            generator: seeds the MC-dropout networks.
            chunk_size: bound memory by decoding at most this many points at a
                time (two passes: coarse + uncertainty, then Dec_f on the chosen
                points); the result equals one-pass decoding.

        Returns:
            A :class:`Prediction` with ``(N, K, P)`` tensors and ``refined (N, P)``.
        """
        cfg = self.config.decoder
        samples = cfg.mc_samples if mc_samples is None else mc_samples
        ratio = cfg.top_k_ratio if top_k_ratio is None else top_k_ratio
        n = prompt.features.shape[0]
        if points.dim() == 2:
            points = points.unsqueeze(0).expand(n, -1, -1)
        if points.dim() != 3 or points.shape[0] != n or points.shape[2] != 2:
            raise ValueError(f"points must be (P, 2) or ({n}, P, 2), got {tuple(points.shape)}")
        if chunk_size is not None and points.shape[1] > chunk_size:
            return self._decode_chunked(
                prompt, points, samples, ratio, refine_mask, generator, chunk_size
            )
        dec = self.implicit_decoder
        z_p = dec.point_inputs(points, prompt.features, prompt.dense_pe)
        out = dec(
            z_p, mc_samples=samples, top_k_ratio=ratio, refine_mask=refine_mask,
            generator=generator, base_logits=dec.base_logits(z_p, prompt.mask_weights),
        )
        return Prediction(
            coarse_logits=out.coarse_logits.transpose(1, 2),
            logits=out.logits.transpose(1, 2),
            uncertainty=out.uncertainty.transpose(1, 2),
            refined=out.refined,
        )

    def _decode_chunked(
        self,
        prompt: PromptFeatures,
        points: torch.Tensor,
        samples: int,
        ratio: float,
        refine_mask: torch.Tensor | None,
        generator: torch.Generator | None,
        chunk_size: int,
    ) -> Prediction:
        dec = self.implicit_decoder
        networks = dec.coarse.sample_networks(samples, generator)
        n, p, _ = points.shape

        def inputs(i: int, pts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
            feats = prompt.features[i : i + 1]
            z_p = dec.point_inputs(pts[None], feats, prompt.dense_pe)
            weights = None if prompt.mask_weights is None else prompt.mask_weights[i : i + 1]
            base = dec.base_logits(z_p, weights)
            return z_p[0], None if base is None else base[0]

        coarse, uncertainty = [], []
        for i in range(n):
            logits_i, unc_i = [], []
            for start in range(0, p, chunk_size):
                z_p, base = inputs(i, points[i, start : start + chunk_size])
                hidden, logits, _ = dec.coarse(z_p)
                if base is not None:
                    logits = logits + base[:, None].to(logits.dtype)
                logits_i.append(logits)
                unc_i.append(dec.coarse.mc_variance(hidden, networks, base))
            coarse.append(torch.cat(logits_i))
            uncertainty.append(torch.cat(unc_i))
        coarse_logits = torch.stack(coarse)  # (N, P, K)
        unc = torch.stack(uncertainty)
        if refine_mask is None:
            refine_mask = top_k_mask(unc.amax(dim=2), ratio)
        final = coarse_logits.clone()
        for i in range(n):
            index = refine_mask[i].nonzero().squeeze(1)
            for start in range(0, index.numel(), chunk_size):
                chosen = index[start : start + chunk_size]
                z_p, base = inputs(i, points[i, chosen])
                _, _, z_c = dec.coarse(z_p)
                fine = dec.fine(z_c, z_p)
                if base is not None:
                    fine = fine + base[:, None].to(fine.dtype)
                final[i, chosen] = fine.to(final.dtype)
        return Prediction(
            coarse_logits=coarse_logits.transpose(1, 2),
            logits=final.transpose(1, 2),
            uncertainty=unc.transpose(1, 2),
            refined=refine_mask,
        )

    def decode_image_points(
        self,
        prompt: PromptFeatures,
        points_xy: torch.Tensor,
        image_shape: tuple[int, int],
        **kwargs: object,
    ) -> Prediction:
        """:meth:`decode_points` for points in pixel coordinates of the original image.

        ``points_xy`` is ``(P, 2)`` or ``(N, P, 2)``, (x, y) with 0 at the image's
        top-left edge; ``image_shape`` is its ``(H, W)``, letterboxed into the
        encoder input as :class:`~napari_imedsam.model.transforms.Letterbox` does.
        """
        from ..transforms import Letterbox

        box = Letterbox(image_shape[0], image_shape[1], self.config.input_size)
        sx, sy = box.scale_xy
        scale = points_xy.new_tensor([sx, sy]) * (2.0 / box.size)
        return self.decode_points(prompt, points_xy * scale - 1.0, **kwargs)  # type: ignore[arg-type]

    def decode_grid(
        self, prompt: PromptFeatures, size: tuple[int, int], **kwargs: object
    ) -> Prediction:
        """Decode a full ``(H, W)`` grid over the encoder input; tensors ``(N, K, H, W)``."""
        height, width = size
        points = grid_points(height, width, device=prompt.features.device)
        pred = self.decode_points(prompt, points, **kwargs)  # type: ignore[arg-type]
        n, k = pred.logits.shape[:2]
        return Prediction(
            coarse_logits=pred.coarse_logits.view(n, k, height, width),
            logits=pred.logits.view(n, k, height, width),
            uncertainty=pred.uncertainty.view(n, k, height, width),
            refined=pred.refined.view(n, height, width),
        )

    def predict_discrete(
        self,
        embeddings: torch.Tensor,
        boxes: torch.Tensor | None,
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        mask_input: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """SAM's own mask decoder: the paper's "w/o INR" path and base-SAM mode.

        Prompts as in :meth:`encode_prompt`. Returns low-resolution logits
        ``(N, 1, 4g, 4g)`` over the encoder input and SAM's predicted IoU ``(N, 1)``.
        """
        sparse, dense, dense_pe = self._prompt(embeddings, boxes, points, mask_input)
        masks, ious = [], []
        for i in range(sparse.shape[0]):
            # SAM's decoder repeats its image embedding per prompt: give it one image.
            emb = embeddings[min(i, embeddings.shape[0] - 1)].unsqueeze(0)
            with lora_linear_enabled(points is not None):  # as in encode_prompt
                mask, iou = self.mask_decoder(
                    image_embeddings=emb,
                    image_pe=dense_pe,
                    sparse_prompt_embeddings=sparse[i : i + 1],
                    dense_prompt_embeddings=dense[i : i + 1],
                    multimask_output=False,
                )
            masks.append(mask)
            ious.append(iou)
        return torch.cat(masks), torch.cat(ious)

    def forward(
        self, images: torch.Tensor, boxes: torch.Tensor, points: torch.Tensor, **kwargs: object
    ) -> Prediction:
        """Training entry: one box per image; ``points (N, P, 2)`` or ``(P, 2)``."""
        prompt = self.encode_prompt(self.embed(images), boxes)
        return self.decode_points(prompt, points, **kwargs)  # type: ignore[arg-type]
