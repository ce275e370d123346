"""What a training run keeps on disk to be resumed: last weights, optimizer, progress.

Beside the best adapter ``NAME.safetensors`` a run writes
``NAME.last.safetensors`` (+ ``.json``: the latest weights),
``NAME.optim.safetensors`` (AdamW moments) and ``NAME.run.json`` (epoch,
history, scheduler and optimizer settings). All through safetensors and JSON,
all written atomically. The command line adds ``NAME.log.csv``, and holds
``NAME.lock`` while it runs, so that two runs never write one set of names.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
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


#: The key, in the last weights' JSON "extra" and the optimiser file's metadata, of
#: the epochs done when they were saved.
EPOCH_MARK = "run_epochs_done"


class RunFiles:
    """Paths of one run, derived from the best adapter's path."""

    def __init__(self, out: Path) -> None:
        stem = out.with_suffix("")
        self.best = out
        self.last = Path(f"{stem}.last.safetensors")
        self.optim = Path(f"{stem}.optim.safetensors")
        self.progress = Path(f"{stem}.run.json")
        self.log = Path(f"{stem}.log.csv")
        self.lock = Path(f"{stem}.lock")

    def paths(self) -> list[Path]:
        """Every file a run writes: the best adapter and its JSON, the last adapter and
        its JSON, the optimiser state, the progress record, the command line's log."""
        return [self.best, self.best.with_suffix(".json"), self.last,
                self.last.with_suffix(".json"), self.optim, self.progress, self.log]

    @contextmanager
    def claim(self) -> Iterator[Path]:
        """Hold ``NAME.lock`` for the run: a second run with the same names, started
        while this one runs, is refused at once (it would interleave the log and
        leave one run's adapter beside the other's record).

        The claim is an exclusive ``flock`` on the lock file, which the system drops
        when the process ends however it ends, so a run that was killed leaves no
        claim behind (its lock file is taken over by the next run). Without
        ``flock`` (Windows) the file is created exclusively instead.
        """
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not on POSIX
            fcntl = None  # type: ignore[assignment]
        self.lock.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
        while True:
            try:
                fd = os.open(self.lock, flags | (0 if fcntl else os.O_EXCL), 0o644)
            except FileExistsError:
                raise FileExistsError(self._busy()) from None
            except OSError as exc:  # e.g. a link planted at the lock's name
                raise OSError(exc.errno, f"cannot claim {self.lock} ({exc.strerror}): "
                              "choose another --out") from None
            if fcntl is None:
                break
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise FileExistsError(self._busy()) from None
            # The run that held it may have removed the file between our open and our
            # lock: then we hold a file nobody else sees; open the name again.
            try:
                if os.path.samestat(os.fstat(fd), os.stat(self.lock)):
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            yield self.lock
        finally:
            self.lock.unlink(missing_ok=True)  # while still held: nobody claims it between
            os.close(fd)

    def _check_one_epoch(self, epochs_done: int) -> None:
        """The last weights and the optimiser are of the epoch the progress records
        (files of runs from before the marks carry none and are taken as they are)."""
        from safetensors import safe_open

        from ..model.checkpoint import read_adapter_config

        weights = (read_adapter_config(self.last).get("extra") or {}).get(EPOCH_MARK)
        with safe_open(str(self.optim), "pt") as f:
            moments = (f.metadata() or {}).get(EPOCH_MARK)
        for path, mark in ((self.last, weights), (self.optim, moments)):
            if mark is not None and int(mark) != epochs_done:
                raise ValueError(
                    f"cannot resume: {path.name} is from epoch {int(mark)} but "
                    f"{self.progress.name} from epoch {epochs_done} (the run stopped while "
                    "saving them); start again with --overwrite, or from its last weights "
                    f"with --init {self.last} and another --out")

    def _busy(self) -> str:
        return (f"{self.lock} is held: another run with --out {self.best} is running now; "
                "wait for it to end, or choose another --out")

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
        """The last weights, the optimiser and the progress, each marked with the
        epochs done: a run killed between these writes leaves files of two epochs,
        which :meth:`load` refuses instead of training an epoch twice."""
        mark = {EPOCH_MARK: progress.epochs_done}
        save_adapter(model, self.last, scope=scope, overwrite=True,  # type: ignore[arg-type]
                     extra=mark)
        opt = optimizer.state_dict()
        tensors = {
            f"{index}.{name}": (value if torch.is_tensor(value) else torch.tensor(value)).cpu()
            for index, values in opt["state"].items()
            for name, value in values.items()
        }
        atomic_write(self.optim, save(tensors, metadata={EPOCH_MARK: str(progress.epochs_done)}))
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
        record = json.loads(self.progress.read_text())
        self._check_one_epoch(int(record["progress"]["epochs_done"]))
        load_adapter(model, self.last)
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
