"""Teach the backbone's prompt path to use corrective clicks.

LiteMedSAM was trained with boxes only: its point embeddings are SAM's, and its
mask decoder drifted from SAM's while learning boxes. Given clicks as they are,
it gets worse with each one (Kvasir-Sessile test, protocol clicks, its own
decoder: Dice 0.902 with the box, 0.876, 0.850, 0.831 after 1-3 clicks;
``imedsam evaluate --clicks``, docs/training.md).

What trains: the prompt encoder (point embeddings, the mask prompt's
downscaling) and a LoRA of every Linear in the two-way transformer
(``PromptConfig.click_lora_rank``); the image encoder stays frozen, so each
image is embedded once. The implicit decoder reads the transformer's fused
features and is a residual on the backbone's own logit, so it follows.

Each sample is one object of a synthetic image: its box (tight, 0-5 px of
jitter, as LiteMedSAM was trained), or no box at all; then ``k`` clicks are
simulated on the model's own answers as it trains (the challenge's protocol
click or a random click in an error region, half each), each answer given the
one before as SAM's mask prompt; the loss is BCE + Dice to the labels. Only what
clicks use trains (:func:`click_path_parameters`), and the transformer's LoRA is
off for a box alone (``modeling.lora.lora_linear_enabled``), so box answers stay
exactly the backbone's. (The shipped run also trained the box corners' embeddings,
with ``k = 0`` samples distilled to the untouched box answer; they were put back
afterwards, :func:`restore_box_path`.)
Everything runs on the 256 x 256 low-resolution grid, where the clicks are
placed, as :func:`napari_imedsam.train.clicks.protocol_click` does on labels.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from ..model.modeling.imedsam import IMedSAM
from ..model.modeling.lora import LoRALinear
from ..model.transforms import Letterbox
from . import metrics
from .clicks import Click, protocol_click, random_click


@dataclass
class ClickTuningConfig:
    """How the click tuning runs (defaults: the shipped model's recipe)."""

    max_clicks: int = 5
    #: Share of samples with no click, distilled to the untouched box answer. Nothing
    #: they pass through trains now (the box path is frozen): 0. The shipped run: 0.25.
    box_only_share: float = 0.0
    #: Share of samples prompted by clicks alone (no box).
    no_box_share: float = 0.15
    box_jitter_px: float = 5.0
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.01
    time_budget_s: float = 1800.0
    max_steps: int = 100_000
    seed: int = 0
    log_every: int = 25


@dataclass
class Example:
    """One image on the encoder's grid: its embedding and instance labels."""

    embedding: torch.Tensor  # (1, D, g, g)
    labels: np.ndarray  # (S, S) int: the labels letterboxed like the image
    resized: tuple[int, int]  # (h, w) of the image inside the S x S input
    objects: list[int] = field(default_factory=list)


def letterbox_labels(labels: np.ndarray, box: Letterbox) -> np.ndarray:
    """Labels on the encoder's ``S x S`` grid: nearest by pixel centres inside the
    resized image, 0 in the padding."""
    h, w = box.resized
    rows = np.minimum(((np.arange(h) + 0.5) * labels.shape[0] / h).astype(int), labels.shape[0] - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * labels.shape[1] / w).astype(int), labels.shape[1] - 1)
    out = np.zeros((box.size, box.size), labels.dtype)
    out[:h, :w] = labels[np.ix_(rows, cols)]
    return out


def click_path_parameters(model: IMedSAM) -> list[torch.nn.Parameter]:
    """What only clicks use: the positive and negative point embeddings, the padding
    point's, the mask prompt's downscaling and the transformer's LoRA (which is off for
    a box alone). The box corners' embeddings and the no-mask embedding stay the
    backbone's, so a box alone is answered exactly as before."""
    pe = model.prompt_encoder
    params = [pe.point_embeddings[0].weight, pe.point_embeddings[1].weight,
              pe.not_a_point_embed.weight, *pe.mask_downscaling.parameters()]
    lora = [p for m in model.mask_decoder.transformer.modules() if isinstance(m, LoRALinear)
            for p in (m.lora_A, m.lora_B)]
    if not lora:
        raise ValueError("the model has no LoRA in its mask decoder: build it with "
                         "PromptConfig.click_lora_rank > 0")
    return params + lora


def trainable_click_parameters(model: IMedSAM) -> list[torch.nn.Parameter]:
    """:func:`click_path_parameters` made trainable; all else frozen."""
    for p in model.parameters():
        p.requires_grad_(False)
    params = click_path_parameters(model)
    for p in params:
        p.requires_grad_(True)
    return params


def restore_box_path(model: IMedSAM, base: IMedSAM) -> None:
    """Put back ``base``'s box-corner and no-mask embeddings (an earlier recipe trained
    them too, kept near by distillation): a box alone is then the backbone's answer."""
    with torch.no_grad():
        for index in (2, 3):
            model.prompt_encoder.point_embeddings[index].weight.copy_(
                base.prompt_encoder.point_embeddings[index].weight)
        model.prompt_encoder.no_mask_embed.weight.copy_(base.prompt_encoder.no_mask_embed.weight)


def _box_of(mask: np.ndarray) -> np.ndarray:
    """LiteMedSAM's box of a mask on the input grid: first and last pixel of each side."""
    rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    return np.array([cols[0], rows[0], cols[-1], rows[-1]], np.float64)


class ClickTuner:
    """The training loop: :meth:`step` until the budget, :meth:`evaluate` on held-out."""

    def __init__(self, model: IMedSAM, examples: list[Example], cfg: ClickTuningConfig) -> None:
        self.model, self.examples, self.cfg = model, examples, cfg
        # The untouched prompt path: the box answers the distillation keeps.
        self.teacher = copy.deepcopy(model).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.params = trainable_click_parameters(model)
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.rng = np.random.default_rng(cfg.seed)
        self.refs = [(i, o) for i, ex in enumerate(examples) for o in ex.objects]
        if not self.refs:
            raise ValueError("no objects to train on")

    def _answer(self, model: IMedSAM, ex: Example, box: np.ndarray | None,
                clicks: list[Click], mask: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        boxes = None if box is None else torch.as_tensor(box[None], dtype=torch.float32)
        points = None
        if clicks:
            xy = torch.tensor([[[c.col, c.row] for c in clicks]], dtype=torch.float32)
            labels = torch.tensor([[int(c.positive) for c in clicks]], dtype=torch.int64)
            points = (xy, labels)
        return model.predict_discrete(ex.embedding, boxes, points, mask)

    def _sample_loss(self) -> tuple[torch.Tensor, dict[str, float]]:
        cfg, rng = self.cfg, self.rng
        index, object_id = self.refs[int(rng.integers(len(self.refs)))]
        ex = self.examples[index]
        h, w = ex.resized
        target = ex.labels == object_id
        inside = target[:h, :w]
        clicks_wanted = 0 if rng.random() < cfg.box_only_share else int(
            rng.integers(1, cfg.max_clicks + 1))
        box: np.ndarray | None = _box_of(target)
        if clicks_wanted and rng.random() < cfg.no_box_share:
            box = None
        if box is not None:
            grow = rng.uniform(0, cfg.box_jitter_px, 4) * np.array([-1, -1, 1, 1])
            box = np.clip(box + grow, 0, [w - 1, h - 1, w - 1, h - 1])
        target_t = torch.as_tensor(target, dtype=torch.float32)[None, None]
        if clicks_wanted == 0:
            logits, iou = self._answer(self.model, ex, box, [], None)
            with torch.no_grad():
                t_logits, t_iou = self._answer(self.teacher, ex, box, [], None)
            loss = (F.binary_cross_entropy_with_logits(logits, torch.sigmoid(t_logits))
                    + F.mse_loss(iou, t_iou))
            return loss, {"distill": float(loss.detach())}
        clicks: list[Click] = []
        mask = None
        pred = np.zeros_like(inside)
        with torch.no_grad():
            if box is not None:
                mask, _ = self._answer(self.model, ex, box, [], None)
                pred = (mask[0, 0, :h, :w] > 0).numpy()
            for j in range(clicks_wanted):
                click = (protocol_click(pred, inside) if rng.random() < 0.5
                         else random_click(pred, inside, rng))
                if click is None:
                    break
                clicks.append(click)
                if j < clicks_wanted - 1:  # the answer each later click corrects
                    mask, _ = self._answer(self.model, ex, box, clicks, mask)
                    pred = (mask[0, 0, :h, :w] > 0).numpy()
        if len(clicks) < clicks_wanted:  # an exact answer before the last click: skip it
            return torch.zeros(()), {}
        # The answer before the last click is its mask prompt, as in the session.
        logits, _ = self._answer(self.model, ex, box, clicks, mask)
        prob = torch.sigmoid(logits)
        dice = 1 - (2 * (prob * target_t).sum() + 1) / (prob.sum() + target_t.sum() + 1)
        loss = F.binary_cross_entropy_with_logits(logits, target_t) + dice
        return loss, {"clicks": float(loss.detach())}

    def step(self) -> dict[str, float]:
        """One optimiser step over ``batch_size`` samples; their mean losses. (The
        prompt path has no dropout or BatchNorm: the model stays in eval mode.)"""
        self.optimizer.zero_grad(set_to_none=True)
        seen: dict[str, list[float]] = {}
        for _ in range(self.cfg.batch_size):
            loss, parts = self._sample_loss()
            if loss.requires_grad:
                (loss / self.cfg.batch_size).backward()
            for key, value in parts.items():
                seen.setdefault(key, []).append(value)
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        return {k: float(np.mean(v)) for k, v in seen.items()}

    def run(self, on_log: Callable[[int, dict[str, float]], None] | None = None) -> int:
        """Steps until the time budget or ``max_steps``; returns the steps done."""
        start, done = time.monotonic(), 0
        logged: dict[str, list[float]] = {}
        while done < self.cfg.max_steps and time.monotonic() - start < self.cfg.time_budget_s:
            for key, value in self.step().items():
                logged.setdefault(key, []).append(value)
            done += 1
            if on_log is not None and done % self.cfg.log_every == 0:
                on_log(done, {k: float(np.mean(v)) for k, v in logged.items()})
                logged = {}
        return done

    @torch.no_grad()
    def evaluate(self, examples: list[Example], clicks: int = 5) -> dict[str, Any]:
        """Protocol clicks on held-out examples, on the low-resolution grid: the mean
        Dice after the box and each click, with the box-only Dice of the teacher."""
        curves, teacher = [], []
        for ex in examples:
            h, w = ex.resized
            for object_id in ex.objects:
                target = (ex.labels == object_id)[:h, :w]
                box = _box_of(ex.labels == object_id)
                t_logits, _ = self._answer(self.teacher, ex, box, [], None)
                teacher.append(metrics.dice(t_logits[0, 0, :h, :w].numpy() > 0, target))
                logits, _ = self._answer(self.model, ex, box, [], None)
                pred = logits[0, 0, :h, :w].numpy() > 0
                curve, chosen = [metrics.dice(pred, target)], []
                for _ in range(clicks):
                    click = protocol_click(pred, target)
                    if click is None:
                        curve.append(curve[-1])
                        continue
                    chosen.append(click)
                    logits, _ = self._answer(self.model, ex, box, chosen, logits)
                    pred = logits[0, 0, :h, :w].numpy() > 0
                    curve.append(metrics.dice(pred, target))
                curves.append(curve)
        mean = np.mean(np.array(curves), axis=0)
        return {"dice_by_clicks": [round(float(v), 4) for v in mean],
                "teacher_box_dice": round(float(np.mean(teacher)), 4),
                "objects": len(curves)}


def examples_from(images: list[tuple[np.ndarray, np.ndarray]],
                  embed: Callable[[np.ndarray], tuple[torch.Tensor, Letterbox]],
                  min_area: int = 16) -> list[Example]:
    """Embed each ``(image, labels)`` once (``embed``: e.g. a session's ``embed``)."""
    out = []
    for image, labels in images:
        embedding, box = embed(image)
        grid = letterbox_labels(labels, box)
        ids = [int(i) for i in np.unique(grid) if i and (grid == i).sum() >= min_area]
        if ids:
            out.append(Example(embedding.detach().clone(), grid, box.resized, ids))
    return out


def click_model(adapter: str | None = None, rank: int = 8) -> IMedSAM:
    """The default model (or LiteMedSAM with ``adapter``) with a fresh click LoRA of
    ``rank`` in its mask decoder (``B = 0``: it answers exactly as before)."""
    from dataclasses import replace

    from ..model.build import build_model
    from ..model.checkpoint import read_adapter
    from ..model.config import DEFAULT_ADAPTER, DEFAULT_MODEL, get_config

    tensors, config = read_adapter(adapter or DEFAULT_ADAPTER)
    base = get_config(DEFAULT_MODEL)
    cfg = replace(base, prompt=replace(base.prompt, click_lora_rank=rank))
    model = build_model(config=cfg, checkpoint=DEFAULT_MODEL)
    _, unexpected = model.load_state_dict(tensors, strict=False)  # base weights: loaded
    if unexpected:
        raise ValueError(f"{adapter or DEFAULT_ADAPTER} does not fit the default model "
                         f"({len(unexpected)} tensors it does not have, e.g. {unexpected[0]})")
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    """``python -m napari_imedsam.train.click_tuning --out RUN.safetensors``: the
    recipe of the shipped default's clicks (training/default_clicks.sh)."""
    import argparse
    import json

    from ..inference.session import SegmentationSession
    from ..model.checkpoint import save_adapter
    from .synthetic import synthetic_dataset

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--adapter", help="start from this adapter (default: the shipped one)")
    parser.add_argument("--train", type=int, default=400, help="synthetic training images")
    parser.add_argument("--val", type=int, default=40, help="synthetic held-out images")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    model = click_model(args.adapter, args.rank)
    session = SegmentationSession(model, device="cpu", cache_bytes=0)
    started = time.monotonic()

    def embed(image: np.ndarray) -> tuple[torch.Tensor, Letterbox]:
        return session.embed(image)

    train = examples_from(synthetic_dataset(args.train, args.size, "mixed", args.seed), embed)
    val = examples_from(synthetic_dataset(args.val, args.size, "mixed", args.seed + 1000), embed)
    print(f"embedded {len(train)} + {len(val)} images in {time.monotonic() - started:.0f} s "
          f"({session.encoder_runtime().describe})", flush=True)
    cfg = ClickTuningConfig(batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                            time_budget_s=args.minutes * 60)
    tuner = ClickTuner(model, train, cfg)
    before = tuner.evaluate(val)
    print("before:", json.dumps(before), flush=True)
    steps = tuner.run(lambda step, losses: print(f"step {step}: {json.dumps(losses)}",
                                                 flush=True))
    restore_box_path(model, tuner.teacher)
    after = tuner.evaluate(val)
    print("after:", json.dumps(after), flush=True)
    extra = {"click_tuning": {"steps": steps, "config": cfg.__dict__, "train_images": args.train,
                              "val_images": args.val, "size": args.size,
                              "val_before": before, "val_after": after,
                              "data": "synthetic only (train.synthetic, mixed)"}}
    path = save_adapter(model, args.out, extra=extra, overwrite=args.overwrite,
                        dtype=torch.float32)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) after {steps} steps, "
          f"{(time.monotonic() - started) / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
