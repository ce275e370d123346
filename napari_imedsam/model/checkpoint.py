"""Adapter checkpoints: trained weights as safetensors plus a JSON config.

``NAME.safetensors`` holds the tensors and, in its header metadata, the same
JSON that is written beside it as ``NAME.json`` for people and tools. Only the
adapter scope is saved (LoRA, frequency adapters, prompt encoder, upscaling,
implicit decoder, with BatchNorm statistics) unless the model was trained in
full, e.g. a small variant from scratch. No pickle is involved.
"""

from __future__ import annotations

import datetime as _dt
import json
import threading
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from .. import __version__
from .adapter_config import (  # noqa: F401 - the adapter format, re-exported
    FORMAT, FORMAT_VERSION, json_path, read_adapter_config, unreadable,
)
from .classes import classes_from_json, classes_of
from .config import ModelConfig
from .modeling.imedsam import IMedSAM
from .weights import CheckpointError

Scope = Literal["adapters", "full"]

# State-dict keys that belong to the adapter scope.
_ADAPTER_PREFIXES = (
    "image_encoder.frequency.",
    "prompt_encoder.",
    "mask_decoder.output_upscaling.",
    "implicit_decoder.",
)
# Config fields an adapter cannot be loaded without matching.
_MUST_MATCH = ("variant", "input_size", "num_classes", "encoder", "prompt", "decoder", "adapters")


def _in_scope(key: str, scope: Scope) -> bool:
    return scope == "full" or key.startswith(_ADAPTER_PREFIXES) or ".lora_" in key


def adapter_state_dict(
    model: IMedSAM, scope: Scope = "adapters", dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """The tensors that an adapter file of ``scope`` stores (floats cast to ``dtype``)."""
    state = {}
    for key, value in model.state_dict().items():
        if _in_scope(key, scope):
            value = value.detach().to("cpu")
            if dtype is not None and value.is_floating_point():
                value = value.to(dtype)
            state[key] = value.contiguous()
    return state


def _file_sha256(path: Path) -> str:
    from .weights import sha256_file

    return sha256_file(path)


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` in one step (see :func:`napari_imedsam.saving.atomic_save`)."""
    from ..saving import atomic_save

    atomic_save(path, lambda tmp: tmp.write_bytes(data), overwrite=True)


def save_adapter(
    model: IMedSAM,
    path: str | Path,
    *,
    scope: Scope = "adapters",
    extra: dict[str, Any] | None = None,
    overwrite: bool = False,
    dtype: torch.dtype | None = None,
) -> Path:
    """Save ``model``'s adapter (or full) weights to ``path`` (``.safetensors``) atomically.

    An existing file is never replaced unless ``overwrite`` is true.
    ``dtype=torch.float16`` halves the file; loading casts back to the model's dtype.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_name(path.name + ".safetensors")
    if not overwrite and (path.exists() or json_path(path).exists()):
        raise FileExistsError(f"{path} already exists; choose another name or allow overwriting")
    path.parent.mkdir(parents=True, exist_ok=True)
    base = getattr(model, "base_weights", None) or {}
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "scope": scope,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "base_model": {"name": base.get("name"), "sha256": base.get("sha256")},
        "model": model.config.to_dict(),
        "classes": [c.to_dict() for c in classes_of(model)],
        "extra": extra or {},
    }
    text = json.dumps(config, indent=2, sort_keys=True)
    payload = save(adapter_state_dict(model, scope, dtype), metadata={"imedsam_config": text})
    atomic_write(path, payload)
    atomic_write(json_path(path), (text + "\n").encode())
    return path


#: Most parameters a model file's config may ask for: 2.5 times SAM's vit_h (636 M).
MAX_PARAMETERS = 1_600_000_000
#: ``Tensor.item`` is patched for the meta build: one build at a time, so that two threads
#: never save each other's patch as the original.
_META_BUILD = threading.Lock()


def expected_shapes(cfg: ModelConfig) -> tuple[dict[str, tuple[int, ...]], int]:
    """Every state-dict tensor's shape of the model ``cfg`` describes, and its number of
    parameters, from a build on PyTorch's meta device: no memory is taken, however
    large the config asks the model to be."""
    from .build import build_model

    with _META_BUILD:
        real_item = torch.Tensor.item

        def item(self: torch.Tensor) -> Any:  # a meta tensor has no value to give
            return 0.0 if self.is_meta else real_item(self)

        torch.Tensor.item = item  # type: ignore[method-assign]
        try:
            with torch.device("meta"):
                model = build_model(config=cfg)
        finally:
            torch.Tensor.item = real_item  # type: ignore[method-assign]
    shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    return shapes, sum(p.numel() for p in model.parameters())


def check_file_shapes(path: str | Path, config: dict[str, Any]) -> None:
    """Before any weight is read or any layer built: the model the file's config
    describes is of a sane size, and the file holds exactly its tensors (names and
    shapes) for the file's scope. An ``adapters`` file takes the rest from its
    registered base, whose parts its config must then describe as they are."""
    from safetensors import safe_open

    from .config import VARIANTS

    path = Path(path)
    cfg = adapter_model_config(config)
    scope = config.get("scope", "adapters")
    if scope != "full":
        base = VARIANTS.get(cfg.variant)
        if base is None:
            raise CheckpointError(f"{path}: its config names the model {cfg.variant!r}, which "
                                  f"is not one of {', '.join(sorted(VARIANTS))}")
        if cfg.encoder != base.encoder or _transformer(cfg) != _transformer(base):
            raise CheckpointError(f"{path}: its config describes {cfg.variant}'s encoder or "
                                  "mask decoder other than they are; the file is damaged or "
                                  "not a napari-imedsam adapter")
    try:
        shapes, parameters = expected_shapes(cfg)
    except Exception as exc:  # noqa: BLE001 - a config no model can be built from
        raise CheckpointError(f"{path}: its config describes no model that can be built "
                              f"({' '.join(str(exc).split())[:160]})") from exc
    if parameters > MAX_PARAMETERS:
        raise CheckpointError(f"{path}: its config asks for a model of {parameters / 1e9:.1f} "
                              f"billion parameters (at most {MAX_PARAMETERS / 1e9:.1f}): not read")
    wanted = {k: v for k, v in shapes.items() if _in_scope(k, scope)}
    try:
        with safe_open(str(path), framework="numpy") as f:
            held = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(unreadable(path, exc)) from exc
    missing, unexpected = set(wanted) - set(held), set(held) - set(wanted)
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: tensors do not match the model its config describes ({len(missing)} "
            f"missing, {len(unexpected)} unexpected, e.g. {sorted(missing or unexpected)[0]})")
    for key, shape in wanted.items():
        if held[key] != shape:
            raise CheckpointError(f"{path}: {key} has shape {held[key]}, its config asks for "
                                  f"{shape}; the file is damaged or its config was changed")


def _transformer(cfg: ModelConfig) -> tuple[Any, ...]:
    """The prompt path's shapes an adapter does not store (click LoRA aside)."""
    p = cfg.prompt
    return (p.embed_dim, p.transformer_depth, p.transformer_mlp_dim, p.transformer_heads,
            p.num_multimask_outputs, p.iou_head_depth, p.iou_head_hidden_dim)


def read_adapter(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read an adapter file; every failure is a :class:`CheckpointError` saying what to do."""
    config = read_adapter_config(path)
    check_file_shapes(path, config)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(unreadable(Path(path), exc)) from exc
    return tensors, config


def adapter_model_config(config: dict[str, Any]) -> ModelConfig:
    """The :class:`ModelConfig` recorded in an adapter's JSON."""
    try:
        return ModelConfig.from_dict(config["model"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"adapter config does not describe a model: {exc}") from exc


def check_compatible(model: IMedSAM, config: dict[str, Any]) -> None:
    """Raise :class:`CheckpointError` listing every difference that prevents loading."""
    theirs = adapter_model_config(config).to_dict()
    ours = model.config.to_dict()
    problems = [
        f"{key}: adapter has {theirs[key]!r}, model has {ours[key]!r}"
        for key in _MUST_MATCH
        if theirs[key] != ours[key]
    ]
    base = config.get("base_model") or {}
    mine = getattr(model, "base_weights", None) or {}
    if config.get("scope") != "full" and base.get("sha256") and mine.get("sha256"):
        if base["sha256"] != mine["sha256"]:
            problems.append(
                f"base weights: adapter was trained on {base.get('name')} "
                f"(sha256 {base['sha256'][:12]}...), model uses {mine.get('name')} "
                f"(sha256 {mine['sha256'][:12]}...)"
            )
    if problems:
        raise CheckpointError(
            "this adapter does not fit the loaded model:\n  - " + "\n  - ".join(problems)
            + "\nLoad it with the model it was trained for, or train a new adapter."
        )


def load_adapter(model: IMedSAM, path: str | Path, *, grow: bool = False) -> dict[str, Any]:
    """Load an adapter file into ``model`` after checking it fits; returns its config.
    ``grow``: a one-class model first gets the heads of an adapter with several classes."""
    tensors, config = read_adapter(path)
    heads = adapter_model_config(config).num_classes
    if grow and model.config.num_classes == 1 and heads > 1:
        from .classes import expand_classes

        try:
            expand_classes(model, classes_from_json(config.get("classes"), heads))
        except ValueError as exc:
            raise CheckpointError(f"{path}: {exc}") from exc
    check_compatible(model, config)
    try:
        classes = classes_from_json(config.get("classes"), model.config.num_classes)
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    scope = config.get("scope", "adapters")
    expected = set(adapter_state_dict(model, scope))
    missing, unexpected = expected - set(tensors), set(tensors) - expected
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: tensors do not match the model ({len(missing)} missing, "
            f"{len(unexpected)} unexpected, e.g. {sorted(missing or unexpected)[0]})"
        )
    own = model.state_dict()
    for key, value in tensors.items():
        if own[key].shape != value.shape:
            raise CheckpointError(
                f"{path}: {key} has shape {tuple(value.shape)}, model expects {tuple(own[key].shape)}"
            )
        # Weights that are not numbers (NaN, inf) or of another kind (integers where the
        # model has floats) would load and answer every box with an empty mask.
        if own[key].is_floating_point() and not value.is_floating_point():
            raise CheckpointError(f"{path}: {key} holds {value.dtype} values where the model "
                                  "has floating-point weights; the file is not a trained adapter")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{path}: {key} holds NaN or infinite values (a diverged or "
                                  "damaged training run); use an earlier adapter or retrain")
    error_model = None
    if (config.get("extra") or {}).get("error_map") is not None:
        from .error_map import ErrorModel

        try:
            error_model = ErrorModel.from_dict(config["extra"]["error_map"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: its error map is damaged ({exc})") from exc
    model.load_state_dict(tensors, strict=False)
    model.adapter_sha256 = _file_sha256(Path(path))
    model.classes = classes
    #: The calibrated error map's weights (``model.error_map``), when fitted.
    model.error_model = error_model
    if scope == "full":
        model.base_weights = dict(config.get("base_model") or {})
    return config
