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
from torch.nn import functional as F

from ..inference.accelerate import choose_encoder
from ..inference.cache import EmbeddingCache
from ..model.build import set_trainable, trainable_parts
from ..model.checkpoint import save_adapter
from ..model.config import FROZEN_ENCODER_MODES
from ..model.devices import autocast, autocast_dtype, resolve_device, resolve_precision
from ..model.modeling.imedsam import IMedSAM
from . import run_state
from .augment import Augmenter
from .data import LabeledImage
from .distributed import DistContext, all_ranks_max, init_distributed
from .evaluate import evaluate_model
from .losses import coarse_fine_weights, seg_loss
from .samples import CACHED_FLIPS, JITTER_PX_AT_384, collate, flipped, make_sample, sample_refs


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


class _Step(nn.Module):
    """The differentiable part of a step, as one module so DDP can wrap it."""

    def __init__(self, model: IMedSAM) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, boxes: torch.Tensor, points: torch.Tensor,
                embedded: bool, objective: str = "implicit"
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Coarse and final logits ``(B, K, P)``, and the backbone's own probability
        at the points when it is the target (``distill``)."""
        emb = images if embedded else self.model.embed(images)
        if objective == "sam":
            low_res, _ = self.model.predict_discrete(emb, boxes)  # (B, 1, 4g, 4g)
            logits = _at_points(low_res, points)
            return logits, logits, None
        prompt = self.model.encode_prompt(emb, boxes)
        pred = self.model.decode_points(prompt, points)
        teacher = None
        if objective in ("distill", "implicit+distill"):
            with torch.no_grad():
                teacher = torch.sigmoid(_at_points(prompt.sam_logits(), points).float())
        return pred.coarse_logits, pred.logits, teacher


def _at_points(maps: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """``(B, 1, H, W)`` maps read bilinearly at ``(B, P, 2)`` points -> ``(B, 1, P)``."""
    return F.grid_sample(maps, points.unsqueeze(2).to(maps.dtype), mode="bilinear",
                         align_corners=False, padding_mode="border")[..., 0]


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
    if cfg.objective not in ("implicit", "sam", "distill"):
        raise ValueError(f"objective must be 'implicit', 'sam' or 'distill', got {cfg.objective!r}")
    if cfg.objective in ("sam", "distill") and model.config.num_classes != 1:
        raise ValueError(f"the '{cfg.objective}' objective uses SAM's single-mask output: "
                         "use --classes 1")
    dist = init_distributed()
    device = dist.device if dist.world > 1 else resolve_device(cfg.device)
    model.to(device)
    classes = model.config.num_classes
    refs = sample_refs(train_images, classes)
    if not refs:
        raise ValueError("no labelled objects to train on: every label image is empty")
    out = Path(out).with_suffix(".safetensors")
    files = run_state.RunFiles(out)
    if dist.rank == 0 and not resume:
        files.check_new(overwrite)
    scope = "full" if cfg.mode == "full" else "adapters"
    optimizer = _optimizer(model, cfg)
    per_rank = len(refs) // dist.world
    steps_per_epoch = max(1, math.ceil(per_rank / cfg.batch_size))
    total_steps = steps_per_epoch * cfg.epochs
    start = time.monotonic()
    # The elapsed time the learning rate follows, the same on every rank (see the loop):
    # ranks whose rates differed by a clock tick would drift apart.
    clock = {"elapsed": 0.0}

    def lr_factor(step: int) -> float:
        done = schedule_position(step, total_steps, clock["elapsed"], cfg.time_budget_s)
        return _cosine(done, cfg)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    state = run_state.RunProgress()
    if resume:
        state = files.load(model, optimizer, scheduler)
    step_module: nn.Module = _Step(model)
    if dist.world > 1:
        step_module = torch.nn.parallel.DistributedDataParallel(
            step_module, find_unused_parameters=True)
    dtype_scaler = torch.amp.GradScaler(
        device.type, enabled=_uses_fp16(device, resolve_precision(cfg.precision, model.config)))
    cache: dict[int, torch.Tensor] = {}
    frozen_encoder = cfg.mode in FROZEN_ENCODER_MODES
    # What the step computes: the teacher's probability too when a loss needs it.
    step_objective = ("implicit+distill" if cfg.objective == "implicit" and cfg.distill_weight
                      else cfg.objective)
    # Frozen-encoder modes cache embeddings, so they augment with flips only (one
    # cache entry each), computed by the fastest encoder that gives the same output.
    flips = max(1, cfg.cached_flips) if frozen_encoder and cfg.augment else 1
    precision = resolve_precision(cfg.precision, model.config)
    encoder = choose_encoder(model, device, precision) if frozen_encoder else None
    # The validation images' embeddings do not change either: kept between epochs.
    val_embeddings = EmbeddingCache(2 << 30) if frozen_encoder else None
    decoding = model.implicit_decoder.positional_encoding
    ramp = min(cfg.coarse_to_fine_epochs, 0.1 * cfg.epochs)
    warmup = min(cfg.pe_warmup_epochs, 0.2 * cfg.epochs)
    stopped = False
    for epoch in range(state.epochs_done, cfg.epochs):
        model.train()
        # Every random stream restarts from (seed, epoch, rank): a resumed run
        # continues exactly as an uninterrupted one.
        torch.manual_seed(hash((cfg.seed, epoch, dist.rank)) % (2**31))
        rng = np.random.default_rng([cfg.seed, epoch, dist.rank])
        augmenter = (Augmenter(seed=int(rng.integers(2**31)))
                     if cfg.augment and not frozen_encoder else None)
        order = np.random.default_rng([cfg.seed, epoch]).permutation(len(refs))
        mine = order[dist.rank :: dist.world][:per_rank]
        losses = []
        for step in range(steps_per_epoch):
            elapsed = time.monotonic() - start
            stop_now = (should_stop is not None and should_stop()) or (
                cfg.time_budget_s is not None and elapsed > cfg.time_budget_s)
            stop_flag, clock["elapsed"] = all_ranks_max(dist, float(stop_now), elapsed)
            if stop_flag:
                stopped = True
                break
            chosen = [refs[i] for i in mine[step * cfg.batch_size : (step + 1) * cfg.batch_size]]
            views = rng.integers(flips, size=len(chosen)).tolist()  # all 0 without flips
            batch = collate(
                [make_sample(flipped(train_images[r.index], v), r, num_classes=classes,
                             input_size=model.config.input_size,
                             preprocess=model.config.preprocess,
                             points=cfg.points_per_sample, rng=rng, augmenter=augmenter,
                             jitter_px=cfg.box_jitter_px) for r, v in zip(chosen, views)],
                [r.index * flips + v for r, v in zip(chosen, views)],  # embedding cache keys
            )
            progress = epoch + step / steps_per_epoch
            decoding.set_progress(decoding.num_frequencies * (
                1.0 if warmup <= 0 else min(1.0, progress / warmup)))
            w_coarse, w_fine = coarse_fine_weights(progress, ramp)
            images, embedded = batch.images.to(device), False
            if encoder is not None:
                images = _cached_embeddings(encoder.run, batch, cache, device, should_stop)
                if images is None:  # stopped while embedding
                    stopped = True
                    break
                embedded = True
            with autocast(device, precision):
                coarse, final, teacher = step_module(images, batch.boxes.to(device),
                                                     batch.points.to(device), embedded,
                                                     step_objective)
            targets = batch.targets.to(device) if cfg.objective != "distill" else teacher
            coarse_loss, fine_loss = seg_loss(coarse, targets), seg_loss(final, targets)
            if cfg.distill_weight and cfg.objective == "implicit":
                coarse_loss = coarse_loss + cfg.distill_weight * seg_loss(coarse, teacher)
                fine_loss = fine_loss + cfg.distill_weight * seg_loss(final, teacher)
            loss = w_coarse * coarse_loss + w_fine * fine_loss
            optimizer.zero_grad(set_to_none=True)
            dtype_scaler.scale(loss).backward()
            dtype_scaler.unscale_(optimizer)
            params = [p for g in optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            dtype_scaler.step(optimizer)
            dtype_scaler.update()
            scheduler.step()
            losses.append(float(loss.detach()))
            _emit(on_progress, dist, TrainEvent(
                "step", epoch, cfg.epochs, step + 1, steps_per_epoch, loss.item(),
                coarse_loss.item(), fine_loss.item(), None, state.best_val_dice,
                time.monotonic() - start))
        if stopped and not losses:
            break  # nothing trained since the last epoch's end
        # A Stop takes effect at once: a partial epoch is not validated, and a
        # validation in progress is cut short (seconds to minutes otherwise). A time
        # limit still validates what the last epoch did. Data-parallel ranks always
        # validate in full: they must meet at the barrier.
        single = dist.world == 1
        asked = single and should_stop is not None and should_stop()
        val = None
        if dist.rank == 0 and not asked:
            val = _validate(model, val_images or train_images, cfg, device,
                            should_stop if single else None, val_embeddings)
        stopped = stopped or (single and should_stop is not None and should_stop())
        state.record(epoch, float(np.mean(losses)) if losses else None, val)
        if dist.rank == 0:
            info = {**(extra or {}), "best_epoch": epoch, "val_dice": val,
                    "train_config": asdict(cfg)}
            if state.best_epoch == epoch:
                save_adapter(model, out, scope=scope, overwrite=True, extra=info)
            elif state.best_epoch is None and val is None:
                # Stopped before any validation: keep what was trained, marked as not
                # measured, rather than lose it.
                save_adapter(model, out, scope=scope, overwrite=True,
                             extra={**info, "validated": False})
            files.save(model, optimizer, scheduler, state, scope, cfg)
        _emit(on_progress, dist, TrainEvent(
            "epoch", epoch, cfg.epochs, steps_per_epoch, steps_per_epoch, state.last_loss,
            None, None, val, state.best_val_dice, time.monotonic() - start))
        if stopped:
            break
    dist.barrier()
    _emit(on_progress, dist, TrainEvent(
        "done", state.epochs_done, cfg.epochs, 0, steps_per_epoch, state.last_loss, None, None,
        None, state.best_val_dice, time.monotonic() - start))
    return TrainResult(out if out.exists() else None, state.best_val_dice, state.best_epoch,
                       state.epochs_done, stopped, state.history)


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


@torch.no_grad()
def _cached_embeddings(embed: Callable[[torch.Tensor], torch.Tensor], batch: Any,
                       cache: dict[int, torch.Tensor], device: torch.device,
                       should_stop: Callable[[], bool] | None = None) -> torch.Tensor | None:
    """Frozen-encoder modes: each image (and view) is embedded once, one at a time so
    that a stop request is seen within one encoder run; None when stopped."""
    first = {key: i for i, key in reversed(list(enumerate(batch.keys)))}
    for key, i in first.items():
        if key in cache:
            continue
        if should_stop is not None and should_stop():
            return None
        cache[key] = embed(batch.images[i : i + 1].to(device)).to(device)
    return torch.cat([cache[key] for key in batch.keys])


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
