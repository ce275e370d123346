"""What a training run keeps on disk to be resumed: last weights, optimizer, progress.

Beside the best adapter ``NAME.safetensors`` a run writes
``NAME.last.safetensors`` (+ ``.json``: the latest weights),
``NAME.optim.safetensors`` (AdamW moments) and ``NAME.run.json`` (epoch,
history, scheduler and optimizer settings). All through safetensors and JSON,
all written atomically.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from ..model.checkpoint import atomic_write, load_adapter, save_adapter
from ..model.modeling.imedsam import IMedSAM


@dataclass
class RunProgress:
    epochs_done: int = 0
    best_val_dice: float | None = None
    best_epoch: int | None = None
    last_loss: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    def record(self, epoch: int, loss: float | None, val_dice: float | None) -> None:
        self.epochs_done = epoch + 1
        self.last_loss = loss
        self.history.append({"epoch": epoch, "loss": loss, "val_dice": val_dice})
        if val_dice is not None and (self.best_val_dice is None or val_dice > self.best_val_dice):
            self.best_val_dice, self.best_epoch = val_dice, epoch


class RunFiles:
    """Paths of one run, derived from the best adapter's path."""

    def __init__(self, out: Path) -> None:
        stem = out.with_suffix("")
        self.best = out
        self.last = Path(f"{stem}.last.safetensors")
        self.optim = Path(f"{stem}.optim.safetensors")
        self.progress = Path(f"{stem}.run.json")

    def paths(self) -> list[Path]:
        """Every file a run writes: the best adapter and its JSON, the last adapter and
        its JSON, the optimiser state, the progress record."""
        return [self.best, self.best.with_suffix(".json"), self.last,
                self.last.with_suffix(".json"), self.optim, self.progress]

    def check_new(self, overwrite: bool, inputs: list[Path] | tuple[Path, ...] = ()) -> None:
        """Before anything is written: no output may be an input, and none may exist
        unless ``overwrite`` (a ``--out results.json`` would otherwise replace the
        user's results.json with the adapter's record)."""
        resolved = {Path(p).resolve() for p in inputs}
        for path in self.paths():
            if path.resolve() in resolved:
                raise ValueError(f"{path} is an input of this run: choose another output name")
        existing = [p for p in self.paths() if p.exists()]
        if existing and not overwrite:
            raise FileExistsError(
                f"{existing[0]} already exists: resume that run, choose another output name, "
                "or allow overwriting"
            )

    def save(self, model: IMedSAM, optimizer: torch.optim.Optimizer, scheduler: Any,
             progress: RunProgress, scope: str, train_config: Any) -> None:
        save_adapter(model, self.last, scope=scope, overwrite=True)  # type: ignore[arg-type]
        opt = optimizer.state_dict()
        tensors = {
            f"{index}.{name}": (value if torch.is_tensor(value) else torch.tensor(value)).cpu()
            for index, values in opt["state"].items()
            for name, value in values.items()
        }
        atomic_write(self.optim, save(tensors))
        record = {
            "progress": asdict(progress),
            "scheduler": scheduler.state_dict(),
            "param_groups": opt["param_groups"],
            "train_config": asdict(train_config),
        }
        atomic_write(self.progress, (json.dumps(record, indent=2, default=str) + "\n").encode())

    def load(self, model: IMedSAM, optimizer: torch.optim.Optimizer, scheduler: Any) -> RunProgress:
        missing = [p for p in (self.last, self.optim, self.progress) if not p.exists()]
        if missing:
            raise FileNotFoundError(f"cannot resume: {missing[0]} is missing")
        load_adapter(model, self.last)
        record = json.loads(self.progress.read_text())
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in load_file(str(self.optim)).items():
            index, name = key.split(".", 1)
            state.setdefault(int(index), {})[name] = value
        current = optimizer.state_dict()
        groups = record["param_groups"]
        if len(groups) != len(current["param_groups"]):
            raise ValueError("cannot resume: the run was trained in another mode")
        for saved, group in zip(groups, current["param_groups"]):
            saved["params"] = group["params"]
        optimizer.load_state_dict({"state": state, "param_groups": groups})
        scheduler.load_state_dict(record["scheduler"])
        return RunProgress(**record["progress"])
