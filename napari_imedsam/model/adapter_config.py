"""An adapter's JSON config, read without torch (header only, no tensor).

The one reader of an adapter's description: the session holder uses it to list an
adapter's classes before any model loads (napari's main thread must not import
torch), and ``checkpoint`` uses it before loading the weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .weights import CheckpointError

FORMAT = "napari-imedsam-adapter"
FORMAT_VERSION = 1


def json_path(path: str | Path) -> Path:
    """The JSON written beside an adapter."""
    return Path(path).with_suffix(".json")


def unreadable(path: Path, exc: BaseException) -> str:
    return (f"{path} is not a readable safetensors adapter ({exc}). It may be truncated or of "
            "another type; adapters are the .safetensors files written by napari-imedsam.")


def read_adapter_config(path: str | Path) -> dict[str, Any]:
    """An adapter's JSON config from its safetensors header (else the JSON beside it),
    checked; no tensor is read. Failures are :class:`CheckpointError` s."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"adapter file {path} does not exist")
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(unreadable(path, exc)) from exc
    text = metadata.get("imedsam_config")
    if text is None and json_path(path).is_file():
        try:
            text = json_path(path).read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError) as exc:
            raise CheckpointError(f"{json_path(path)} (the config beside {path.name}) cannot "
                                  f"be read as text ({exc}): it is damaged; copy the adapter "
                                  "and its JSON again") from exc
    try:
        config = json.loads(text) if text else None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: its JSON config is corrupt ({exc})") from exc
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a safetensors file but not a napari-imedsam adapter")
    if config.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was written by a newer napari-imedsam ({config.get('package_version')}); "
            "upgrade the package to load it"
        )
    return config
