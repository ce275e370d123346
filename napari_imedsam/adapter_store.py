"""Adapters trained in the viewer: where they go, names that never overwrite, the list.

Each run publishes ``<model>-<time>.safetensors`` (+ ``.json``) into a per-user
folder (or one the user picks); an existing name is never replaced, a taken
one gets ``-2``, ``-3``... The JSON's ``extra.finetune`` records what was
adapted and the Dice before training, so the list can say what each one is.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

APP_NAME = "napari-imedsam"


def default_adapter_dir() -> Path:
    """The per-user folder for adapters trained in the viewer."""
    import platformdirs

    return platformdirs.user_data_path(APP_NAME, appauthor=False) / "adapters"


def adapter_stem(model_name: str, when: _dt.datetime | None = None) -> str:
    """``<model>-<YYYYmmdd-HHMMSS>``: sorts by time, says what it adapts."""
    when = when or _dt.datetime.now()
    base = Path(model_name).stem if model_name.endswith((".pth", ".pt", ".safetensors")) \
        else model_name
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", base).strip("._") or "model"
    return f"{base}-{when:%Y%m%d-%H%M%S}"


def _candidates(folder: Path, stem: str):  # noqa: ANN202
    from .saving import numbered

    return numbered(folder / f"{stem}.safetensors")


def _taken(path: Path) -> bool:
    return path.exists() or path.with_suffix(".json").exists()


def unique_adapter_path(folder: str | Path, stem: str) -> Path:
    """The first free ``stem.safetensors``, ``stem-2.safetensors``, ... in ``folder``
    (a name whose ``.json`` exists counts as taken)."""
    return next(p for p in _candidates(Path(folder), stem) if not _taken(p))


def publish_adapter(src: str | Path, folder: str | Path, stem: str) -> Path:
    """Move the adapter ``src`` (+ its ``.json``) to a free name in ``folder``; returns it.

    A hard link makes the new name appear in one step and fails if the name was
    taken meanwhile (then the next number is tried); where links are not
    supported, an atomic copy that also refuses to replace is used. ``src`` is
    removed afterwards, so the published file shares its data with nothing.
    """
    from .saving import atomic_save

    src, folder = Path(src), Path(folder)
    text = src.with_suffix(".json").read_bytes()
    folder.mkdir(parents=True, exist_ok=True)
    for dest in _candidates(folder, stem):
        if _taken(dest):
            continue
        try:
            os.link(src, dest)
        except FileExistsError:
            continue
        except OSError:
            try:
                atomic_save(dest, lambda tmp: shutil.copyfile(src, tmp))
            except FileExistsError:
                continue
        try:
            atomic_save(dest.with_suffix(".json"), lambda tmp: tmp.write_bytes(text))
        except FileExistsError:
            dest.unlink()  # someone else's JSON under this name: leave it, try the next
            continue
        src.unlink()
        src.with_suffix(".json").unlink()
        return dest
    raise AssertionError("unreachable")  # _candidates never ends


@dataclass
class AdapterInfo:
    path: Path
    created: str
    model: str | None
    val_dice: float | None
    before_dice: float | None

    def describe(self) -> str:
        text = self.path.stem
        if self.val_dice is not None:
            text += f"  (Dice {self.val_dice:.3f}"
            text += f", was {self.before_dice:.3f})" if self.before_dice is not None else ")"
        return text


def list_adapters(folder: str | Path) -> list[AdapterInfo]:
    """Adapters in ``folder``, newest first (read from their JSON; unreadable ones skipped)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.glob("*.safetensors"):
        if path.name.startswith(".") or path.name.endswith((".last.safetensors",
                                                            ".optim.safetensors")):
            continue
        try:
            config = json.loads(path.with_suffix(".json").read_text())
        except (OSError, ValueError):
            continue
        extra = config.get("extra") or {}
        info = extra.get("finetune") or {}
        found.append(AdapterInfo(path, str(config.get("created", "")), info.get("model"),
                                 extra.get("val_dice"), info.get("val_dice_before")))
    found.sort(key=lambda a: (a.created, a.path.name), reverse=True)
    return found
