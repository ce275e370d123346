"""The training loop: plain callbacks in, best adapter out. No Qt, no napari.

Runs single-process, or data-parallel under ``torchrun`` (torch.distributed:
gloo on CPU, NCCL on GPU); rank 0 validates and writes files.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..inference.accelerate import choose_encoder
from ..inference.cache import EmbeddingCache
from ..model.build import enter_training, set_trainable, trainable_parts
from ..model.checkpoint import save_adapter
from ..model.config import FROZEN_ENCODER_MODES
from ..model.devices import autocast, autocast_dtype, resolve_device, resolve_precision
from ..model.modeling.imedsam import IMedSAM
from ..model.torch_guard import trim_heap
from . import run_state
from .augment import Augmenter
from .data import LabeledImage
from .distributed import DistContext, all_ranks_max, init_distributed
from .evaluate import evaluate_model
from .losses import coarse_fine_weights, seg_loss
from .samples import CACHED_FLIPS, JITTER_PX_AT_384, collate, flipped, make_sample, sample_refs
from .step import StepModule, cached_embeddings


@dataclass
class TrainConfig:
    """How to train. Learning rates and weight decay are the paper's."""

    mode: str = "adapters"
    epochs: int = 100
    batch_size: int = 4
    points_per_sample: int = 4096
    lr_decoder: float = 1e-3
    lr_adapters: float = 5e-5
    #: Encoder and SAM decoder weights in ``full`` mode (training from scratch).
    lr_base: float = 3e-4
    weight_decay: float = 0.01
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    #: The authors' schedules (5 and 20 epochs), shortened to 10 % and 20 % of short runs.
    coarse_to_fine_epochs: float = 5.0
    pe_warmup_epochs: float = 20.0
    augment: bool = True
    #: Each box side moves outward by up to this many pixels of a 384 px input
    #: while training (the authors' 20), so loose boxes still work; 0: tight boxes.
    box_jitter_px: float = JITTER_PX_AT_384
    val_label_size: int = 128
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    time_budget_s: float | None = None
    #: ``implicit``: the I-MedSAM loss. ``sam``: SAM's own mask decoder (mask token
    #: and hypernetwork) read at the same points, to pretrain the box -> feature
    #: path of a model trained from scratch before its implicit decoder learns.
    #: ``distill``: the I-MedSAM loss towards the backbone's own mask probability
    #: at the points instead of the labels (no labels needed: boxes are enough).
    objective: str = "implicit"
    #: With the ``implicit`` objective: add this weight times the ``distill`` loss
    #: (the backbone's own probability as target), which keeps a decoder trained
    #: on synthetic labels close to the pretrained backbone on what they do not teach.
    distill_weight: float = 0.0
    #: Mirrored views per image when embeddings are cached (frozen-encoder modes):
    #: 4 = as is, left-right, up-down, both; 1 = none (more images fit in memory).
    cached_flips: int = CACHED_FLIPS
    #: Modes that train the encoder: recompute each encoder block (and each image of a
    #: batch) in the backward pass rather than keep its activations (see
    #: ``modeling.blocks.run_block``, ``step.StepModule``): adapters at batch 4 peaked
    #: at 2.10 GB where they took 5.99 GB (docs/reliability.md, issue 23).
    recompute_encoder: bool = True


@dataclass
class TrainEvent:
    """What a progress callback receives after each step and each epoch."""

    kind: str  # "step", "epoch" or "done" (and "start" from fine-tuning: the starting Dice)
    epoch: int
    epochs: int
    step: int
    steps_per_epoch: int
    loss: float | None = None
    coarse_loss: float | None = None
    fine_loss: float | None = None
    val_dice: float | None = None
    best_val_dice: float | None = None
    elapsed_s: float = 0.0


@dataclass
class TrainResult:
    adapter: Path | None
    best_val_dice: float | None
    best_epoch: int | None
    epochs_done: int
    stopped: bool
    history: list[dict[str, Any]] = field(default_factory=list)


def _optimizer(model: IMedSAM, cfg: TrainConfig) -> torch.optim.Optimizer:
    set_trainable(model, cfg.mode)  # type: ignore[arg-type]
    parts = trainable_parts(model, cfg.mode)  # type: ignore[arg-type]
    rates = {"lora": cfg.lr_adapters, "frequency_adapter": cfg.lr_adapters,
             "encoder_base": cfg.lr_base, "mask_decoder_base": cfg.lr_base}
    groups = [{"params": ps, "lr": rates.get(name, cfg.lr_decoder), "name": name}
              for name, ps in parts.items() if ps]
    return torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)


def train(
    model: IMedSAM,
    train_images: list[LabeledImage],
    val_images: list[LabeledImage],
    cfg: TrainConfig,
    out: str | Path,
    *,
    on_progress: Callable[[TrainEvent], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    extra: dict[str, Any] | None = None,
) -> TrainResult:
    """Train ``model`` in place; the best validation epoch's adapter goes to ``out``.

    ``should_stop`` is polled between steps: training then ends cleanly, the
    best adapter so far kept (one is validated and saved if none was yet).
    ``resume`` continues a run from the files beside ``out``.
    """
    run = _setup(model, train_images, val_images, cfg, Path(out).with_suffix(".safetensors"),
                 resume=resume, overwrite=overwrite)
    state, stopped = run.state, False
    for epoch in range(state.epochs_done, cfg.epochs):
        losses, stopped = _train_epoch(run, epoch, on_progress, should_stop)
        if stopped and not losses:
            break  # nothing trained since the last epoch's end
        stopped = _end_epoch(run, epoch, losses, stopped, on_progress, should_stop, extra)
        if stopped:
            break
    run.dist.barrier()
    _emit(on_progress, run.dist, TrainEvent(
        "done", state.epochs_done, cfg.epochs, 0, run.steps_per_epoch, state.last_loss, None,
        None, None, state.best_val_dice, time.monotonic() - run.start))
    return TrainResult(run.out if run.out.exists() else None, state.best_val_dice,
                       state.best_epoch, state.epochs_done, stopped, state.history)


@dataclass
class _Run:
    """What a run sets up once and every epoch and step use."""

    model: IMedSAM
    cfg: TrainConfig
    train_images: list[LabeledImage]
    val_images: list[LabeledImage]
    out: Path
    files: run_state.RunFiles
    dist: DistContext
    device: torch.device
    precision: str
    refs: list  # the (image, object) samples, see ``samples.sample_refs``
    per_rank: int
    steps_per_epoch: int
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    state: run_state.RunProgress
    step_module: nn.Module  # ``StepModule``, wrapped in DDP when data-parallel
    step_objective: str
    encoder: Any  # the frozen encoder's fastest runtime, or None (it trains)
    flips: int  # views per image (1: no flips)
    val_embeddings: EmbeddingCache | None
    ramp: float  # epochs of the coarse-to-fine loss ramp
    warmup: float  # epochs of the positional encoding's frequency warm-up
    start: float
    #: The elapsed time the learning rate follows, the same on every rank (see
    #: ``_train_epoch``): ranks whose rates differed by a clock tick would drift apart.
    clock: dict[str, float] = field(default_factory=lambda: {"elapsed": 0.0})
    embeddings: dict[int, torch.Tensor] = field(default_factory=dict)

    @property
    def scope(self) -> str:
        return "full" if self.cfg.mode == "full" else "adapters"


def _setup(model: IMedSAM, train_images: list[LabeledImage], val_images: list[LabeledImage],
           cfg: TrainConfig, out: Path, *, resume: bool, overwrite: bool) -> _Run:
    """Check the request, place the model, build the optimiser and schedule, resume."""
    if cfg.objective not in ("implicit", "sam", "distill"):
        raise ValueError(f"objective must be 'implicit', 'sam' or 'distill', got {cfg.objective!r}")
    if cfg.objective in ("sam", "distill") and model.config.num_classes != 1:
        raise ValueError(f"the '{cfg.objective}' objective uses SAM's single-mask output: "
                         "use --classes 1")
    dist = init_distributed()
    device = dist.device if dist.world > 1 else resolve_device(cfg.device)
    model.to(device)
    refs = sample_refs(train_images, model.config.num_classes)
    if not refs:
        raise ValueError("no labelled objects to train on: every label image is empty")
    files = run_state.RunFiles(out)
    if dist.rank == 0 and not resume:
        files.check_new(overwrite)
    optimizer = _optimizer(model, cfg)
    per_rank = len(refs) // dist.world
    steps_per_epoch = max(1, math.ceil(per_rank / cfg.batch_size))
    total_steps = steps_per_epoch * cfg.epochs
    start = time.monotonic()
    clock = {"elapsed": 0.0}

    def lr_factor(step: int) -> float:
        return _cosine(schedule_position(step, total_steps, clock["elapsed"],
                                         cfg.time_budget_s), cfg)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    state = files.load(model, optimizer, scheduler) if resume else run_state.RunProgress()
    step_module: nn.Module = StepModule(model, recompute=cfg.recompute_encoder)
    if dist.world > 1:
        step_module = torch.nn.parallel.DistributedDataParallel(
            step_module, find_unused_parameters=True)
    precision = resolve_precision(cfg.precision, model.config)
    frozen_encoder = cfg.mode in FROZEN_ENCODER_MODES
    return _Run(
        model, cfg, train_images, val_images, out, files, dist, device, precision, refs,
        per_rank, steps_per_epoch, optimizer, scheduler,
        torch.amp.GradScaler(device.type, enabled=_uses_fp16(device, precision)), state,
        step_module,
        # What the step computes: the teacher's probability too when a loss needs it.
        "implicit+distill" if cfg.objective == "implicit" and cfg.distill_weight
        else cfg.objective,
        # Frozen-encoder modes cache embeddings, computed by the fastest encoder that
        # gives the same output, so they augment with flips only (one entry each).
        choose_encoder(model, device, precision) if frozen_encoder else None,
        max(1, cfg.cached_flips) if frozen_encoder and cfg.augment else 1,
        # The validation images' embeddings do not change either: kept between epochs.
        EmbeddingCache(2 << 30) if frozen_encoder else None,
        min(cfg.coarse_to_fine_epochs, 0.1 * cfg.epochs),
        min(cfg.pe_warmup_epochs, 0.2 * cfg.epochs),
        start, clock)


def _train_epoch(run: _Run, epoch: int, on_progress: Callable[[TrainEvent], None] | None,
                 should_stop: Callable[[], bool] | None) -> tuple[list[float], bool]:
    """One epoch's steps: ``(losses, stopped)``."""
    model, cfg, dist = run.model, run.cfg, run.dist
    enter_training(model)  # frozen BatchNorm layers stay as loaded
    # Every random stream restarts from (seed, epoch, rank): a resumed run
    # continues exactly as an uninterrupted one.
    torch.manual_seed(hash((cfg.seed, epoch, dist.rank)) % (2**31))
    rng = np.random.default_rng([cfg.seed, epoch, dist.rank])
    augmenter = (Augmenter(seed=int(rng.integers(2**31)))
                 if cfg.augment and run.encoder is None else None)
    order = np.random.default_rng([cfg.seed, epoch]).permutation(len(run.refs))
    mine = order[dist.rank :: dist.world][: run.per_rank]
    losses: list[float] = []
    for step in range(run.steps_per_epoch):
        elapsed = time.monotonic() - run.start
        stop_now = (should_stop is not None and should_stop()) or (
            cfg.time_budget_s is not None and elapsed > cfg.time_budget_s)
        stop_flag, run.clock["elapsed"] = all_ranks_max(dist, float(stop_now), elapsed)
        if stop_flag:
            return losses, True
        chosen = [run.refs[i] for i in mine[step * cfg.batch_size : (step + 1) * cfg.batch_size]]
        views = rng.integers(run.flips, size=len(chosen)).tolist()  # all 0 without flips
        batch = collate(
            [make_sample(flipped(run.train_images[r.index], v), r,
                         num_classes=model.config.num_classes,
                         input_size=model.config.input_size, preprocess=model.config.preprocess,
                         points=cfg.points_per_sample, rng=rng, augmenter=augmenter,
                         jitter_px=cfg.box_jitter_px) for r, v in zip(chosen, views)],
            [r.index * run.flips + v for r, v in zip(chosen, views)],  # embedding cache keys
        )
        parts = _train_step(run, batch, epoch + step / run.steps_per_epoch, should_stop)
        if parts is None:  # stopped while embedding
            return losses, True
        losses.append(parts[0])
        _emit(on_progress, dist, TrainEvent(
            "step", epoch, cfg.epochs, step + 1, run.steps_per_epoch, *parts, None,
            run.state.best_val_dice, time.monotonic() - run.start))
    return losses, False


def _train_step(run: _Run, batch: Any, progress: float,
                should_stop: Callable[[], bool] | None) -> tuple[float, float, float] | None:
    """One optimiser step at ``progress`` epochs: (loss, coarse loss, fine loss), or None
    when a stop came while embedding the batch."""
    cfg, device = run.cfg, run.device
    decoding = run.model.implicit_decoder.positional_encoding
    decoding.set_progress(decoding.num_frequencies * (
        1.0 if run.warmup <= 0 else min(1.0, progress / run.warmup)))
    w_coarse, w_fine = coarse_fine_weights(progress, run.ramp)
    images, embedded = batch.images.to(device), False
    if run.encoder is not None:
        images = cached_embeddings(run.encoder.run, batch, run.embeddings, device, should_stop)
        if images is None:
            return None
        embedded = True
    with autocast(device, run.precision):
        coarse, final, teacher = run.step_module(images, batch.boxes.to(device),
                                                 batch.points.to(device), embedded,
                                                 run.step_objective)
    targets = batch.targets.to(device) if cfg.objective != "distill" else teacher
    coarse_loss, fine_loss = seg_loss(coarse, targets), seg_loss(final, targets)
    if cfg.distill_weight and cfg.objective == "implicit":
        coarse_loss = coarse_loss + cfg.distill_weight * seg_loss(coarse, teacher)
        fine_loss = fine_loss + cfg.distill_weight * seg_loss(final, teacher)
    loss = w_coarse * coarse_loss + w_fine * fine_loss
    optimizer, scaler = run.optimizer, run.scaler
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    run.scheduler.step()
    if device.type == "cpu":  # with huge pages: 1.90 GB over 20 epochs where 2.07 without
        trim_heap()
    return float(loss.detach()), coarse_loss.item(), fine_loss.item()


def _end_epoch(run: _Run, epoch: int, losses: list[float], stopped: bool,
               on_progress: Callable[[TrainEvent], None] | None,
               should_stop: Callable[[], bool] | None, extra: dict[str, Any] | None) -> bool:
    """Validate, keep the best adapter, save the run's state; whether the run stops."""
    dist, state = run.dist, run.state
    # A Stop takes effect at once: a partial epoch is not validated, and a
    # validation in progress is cut short (seconds to minutes otherwise). A time
    # limit still validates what the last epoch did. Data-parallel ranks always
    # validate in full: they must meet at the barrier.
    single = dist.world == 1
    asked = single and should_stop is not None and should_stop()
    val = None
    if dist.rank == 0 and not asked:
        val = _validate(run.model, run.val_images or run.train_images, run.cfg, run.device,
                        should_stop if single else None, run.val_embeddings)
    stopped = stopped or (single and should_stop is not None and should_stop())
    state.record(epoch, float(np.mean(losses)) if losses else None, val)
    if dist.rank == 0:
        info = {**(extra or {}), "best_epoch": epoch, "val_dice": val,
                "train_config": asdict(run.cfg)}
        if state.best_epoch == epoch:
            save_adapter(run.model, run.out, scope=run.scope, overwrite=True, extra=info)
        elif state.best_epoch is None and val is None:
            # Stopped before any validation: keep what was trained, marked as not
            # measured, rather than lose it.
            save_adapter(run.model, run.out, scope=run.scope, overwrite=True,
                         extra={**info, "validated": False})
        run.files.save(run.model, run.optimizer, run.scheduler, state, run.scope, run.cfg)
    _emit(on_progress, dist, TrainEvent(
        "epoch", epoch, run.cfg.epochs, run.steps_per_epoch, run.steps_per_epoch,
        state.last_loss, None, None, val, state.best_val_dice, time.monotonic() - run.start))
    return stopped


def _uses_fp16(device: torch.device, precision: str) -> bool:
    return device.type == "cuda" and autocast_dtype(device, precision) == torch.float16


def schedule_position(step: int, total_steps: int, elapsed_s: float,
                      budget_s: float | None) -> float:
    """How far along the learning-rate schedule a run is, from 0 to 1.

    The schedule is planned over the epochs, but a run with a time limit
    usually stops long before its last epoch; it would then end at a high
    rate. With a limit, the position is the larger of the step share and the
    time share, so the rate has decayed when the limit is reached.
    """
    done = step / max(1, total_steps)
    if budget_s:
        done = max(done, elapsed_s / budget_s)
    return min(1.0, done)


def _cosine(done: float, cfg: TrainConfig) -> float:
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * done))


def _validate(model: IMedSAM, images: list[LabeledImage], cfg: TrainConfig,
              device: torch.device, should_stop: Callable[[], bool] | None = None,
              embeddings: EmbeddingCache | None = None) -> float | None:
    """Mean validation Dice; None when a stop request cut the validation short."""
    rows = evaluate_model(model, images, label_size=cfg.val_label_size, device=device,
                          with_distances=False, seed=cfg.seed,
                          decoder="sam" if cfg.objective == "sam" else "imedsam",
                          should_stop=should_stop, embeddings=embeddings,
                          accelerate=embeddings is not None)
    if should_stop is not None and should_stop():
        return None
    return float(np.mean([r["dice"] for r in rows])) if rows else 0.0


def _emit(callback: Callable[[TrainEvent], None] | None, dist: DistContext,
          event: TrainEvent) -> None:
    if callback is not None and dist.rank == 0:
        callback(event)
