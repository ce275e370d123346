"""A stateful segmentation session: embed an image once, answer many boxes.

Boxes, points and outputs are in pixel coordinates of the image as given
(x0, y0, x1, y1 with 0 at the top-left edge). Letterboxing into the encoder
input happens inside. Outputs can be asked for on the image grid at any scale,
on a region at a given shape (what a zoomed-in viewer shows), or at points.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from ..model.devices import autocast, resolve_device, resolve_precision
from ..model.modeling.imedsam import IMedSAM
from ..model.transforms import Letterbox, letterbox_image
from .accelerate import EncoderRuntime, choose_encoder
from .adaptive import adaptive_decode, lattice_shape, start_stride
from .cache import EmbeddingCache, content_key
from .clicks import AGREED_REACH, CLICK_RULES, DEFAULT_CLICK_RULE, Bump, Clicks, bump_for
from .fast_decoder import FastDecoder
from .intensity import Window, to_encoder_rgb
from .regions import Region, output_grid


#: Output pixels decoded at once for one box (a tile's side is at most 512).
TILE = 512
#: Bytes per output pixel and box of a result (probability, uncertainty, error map, two
#: flags).
BYTES_PER_OUTPUT_PIXEL = 14
#: The largest result one predict call builds; callers merge boxes one by one beyond.
MAX_RESULT_BYTES = 4 << 30
#: Prompt answers kept per session (each holds one object's fused features, 8 MB
#: for LiteMedSAM): a click re-answers its object from the answer before it, and under
#: the local rule the answers of its earlier clicks still answer their own regions.
MEMO_ENTRIES = 16
#: ``predict``'s default for ``head``: the class the session was set to (``use_class``).
SESSION_HEAD = ...


@dataclass
class _Answer:
    """The prompt path's answer for one object (box and/or clicks)."""

    features: object  # PromptFeatures for the implicit decoder, or None
    low_res: torch.Tensor  # (1, 1, 4g, 4g) the backbone's own logits (a click's: composed)
    iou: float
    extent: np.ndarray  # (4,) x0, y0, x1, y1: where the object may lie, in image pixels
    #: A click's answer under the local rule: ``(4g, 4g)`` bool, the cells of the low
    #: resolution grid where this step's own answer is taken (the connected change
    #: that holds the click); elsewhere the steps before it answer. None: everywhere.
    accepted: torch.Tensor | None = None
    #: Under the ``local_bump`` rule, the push that made the click's own pixel follow
    #: the click (None: the model followed it by the margin, or another rule).
    bump: Bump | None = None
    #: A click's answer under the local rule: the click's sign (it only adds on a
    #: positive click, only removes on a negative one).
    positive: bool | None = None
    #: The cells whose bilinear share says how much of each point the click's answer
    #: takes (see ``_owned``): the accepted cells and, a cell deep, the mask's cells on
    #: the click's side beside them. None: the accepted cells.
    share: torch.Tensor | None = None


def tiles(window: tuple[int, int, int, int], size: int = TILE
          ) -> list[tuple[int, int, int, int]]:
    """``(r0, c0, r1, c1)`` tiles of at most ``size`` x ``size`` covering ``window``."""
    r0, c0, r1, c1 = window
    return [(r, c, min(r + size, r1), min(c + size, c1))
            for r in range(r0, r1, size) for c in range(c0, c1, size)]


@dataclass
class SegmentationResult:
    """Maps for ``N`` boxes and ``K`` classes on an ``H' x W'`` grid over ``region``."""

    prob: np.ndarray  # (N, K, H', W') float32
    uncertainty: np.ndarray | None  # (N, K, H', W'); None from SAM's own decoder
    refined: np.ndarray | None  # (N, H', W') bool: points Dec_f refined
    #: (N, H', W') bool: points the decoder computed (the rest were interpolated
    #: by adaptive evaluation, or lie outside the box's window).
    evaluated: np.ndarray | None
    mode: str  # "imedsam" (implicit decoder) or "sam" (SAM's mask decoder)
    region: Region
    boxes: np.ndarray  # (N, 4) as used (clipped to the image)
    #: (N,) the backbone's own predicted IoU of its mask for each box (SAM's IoU
    #: head): its confidence that the box holds one clear object. NaN: not computed.
    iou: np.ndarray | None = None
    #: (N, H', W') the probability that each pixel's label is wrong
    #: (``model.error_map``); None without the implicit decoder or a fitted model.
    error: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.prob.shape[-2], self.prob.shape[-1]

    def masks(self, threshold: float = 0.5) -> np.ndarray:
        """``(N, H', W')`` bool: foreground of any class."""
        return (self.prob > threshold).any(axis=1)

    def labels(self, first_id: int = 1, threshold: float = 0.5) -> np.ndarray:
        """One id per box (``first_id``, ``first_id + 1``, ...); overlaps go to the
        box with the highest probability."""
        best = self.prob.max(axis=1)  # (N, H', W')
        winner = best.argmax(axis=0)
        out = np.where(best.max(axis=0) > threshold, winner + first_id, 0)
        return out.astype(np.int32)


class SegmentationSession:
    """Holds a model, the current image and an embedding cache."""

    def __init__(
        self,
        model: IMedSAM,
        *,
        device: str | torch.device = "auto",
        mode: str = "auto",
        precision: str = "auto",
        cache_bytes: int = 1 << 30,
        seed: int = 0,
        adaptive: bool = True,
        accelerate: bool = True,
        click_rule: str = DEFAULT_CLICK_RULE,
        encoder: EncoderRuntime | None = None,
    ) -> None:
        """``encoder``: the runtime that embeds images (else chosen at the first image,
        see :meth:`encoder_runtime`); ``imedsam check-encoder`` gives each precision."""
        if click_rule not in CLICK_RULES:
            raise ValueError(f"click_rule must be one of {CLICK_RULES}, got {click_rule!r}")
        #: How each click's answer joins the mask (see ``CLICK_RULES``); fixed for the
        #: session's life, so an answer depends on its prompts only.
        self.click_rule = click_rule
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.use_decoder(mode)
        self.precision = resolve_precision(precision, model.config)
        self.accelerate = accelerate
        self._runtime: EncoderRuntime | None = encoder
        #: Why the accelerated encoder is not used, when it is not (for the status line).
        self.encoder_note: str | None = None
        self.cache = EmbeddingCache(cache_bytes)
        self.seed = seed
        self.adaptive = adaptive
        self._embedding: torch.Tensor | None = None
        self._letterbox: Letterbox | None = None
        self._image_key: Hashable | None = None
        #: Recent prompt answers by (image, decoder, box, clicks so far): a click's
        #: answer starts from the previous one's logits (SAM's mask prompt), and the
        #: tiles and extents of one object share one prompt pass. Values never
        #: change once stored, so sharing it between threads is safe.
        self._memo: OrderedDict[Hashable, _Answer] = OrderedDict()
        self._memo_lock = threading.Lock()
        #: Whether each click also gives the object's previous logits as SAM's mask
        #: prompt (replayed from the box on, so an answer depends on its prompts only).
        self.click_mask_prompt = model.config.prompt.click_mask_prompt
        #: The implicit decoder's head that answers (None: every class, maps ``(N, K, ...)``).
        self.head: int | None = None
        # Embeddings depend on the weights: key them by model and adapter too.
        self._model_key = (model.config.variant, model.config.input_size,
                           model.base_weights.get("sha256"), model.adapter_sha256)

    def resolve_decoder(self, mode: str) -> str:
        """``imedsam`` or ``sam`` for a choice of ``imedsam``, ``sam`` or ``auto``
        (implicit when the model carries a trained one)."""
        if mode == "auto":
            mode = "imedsam" if self.model.adapter_sha256 is not None else "sam"
        if mode not in ("imedsam", "sam"):
            raise ValueError(f"mode must be auto, imedsam or sam, got {mode!r}")
        return mode

    def check_head(self, head: int | None) -> int | None:
        classes = self.model.config.num_classes
        if head is not None and not 0 <= head < classes:
            raise ValueError(f"class index {head} is outside the model's {classes} class(es)")
        return head

    def use_decoder(self, mode: str) -> None:
        """The session's default decoder (``predict(decoder=...)`` chooses per call):
        ``imedsam``, ``sam`` or ``auto``. For a session one thread owns (scripts, the
        command line); shared sessions pass the decoder to each call instead."""
        self.mode = self.resolve_decoder(mode)

    def use_class(self, head: int | None) -> None:
        """The session's default class (``predict(head=...)`` chooses per call): class
        ``head`` only (maps then have one class), or every class (None). The
        backbone's own decoder has one mask and ignores it."""
        self.head = self.check_head(head)

    @property
    def image_shape(self) -> tuple[int, int]:
        if self._letterbox is None:
            raise RuntimeError("no image is set: call set_image first")
        return self._letterbox.height, self._letterbox.width

    # -- images --------------------------------------------------------------
    def embed(self, image: np.ndarray, *, window: Window = None,
              key: Hashable | None = None) -> tuple[torch.Tensor, Letterbox]:
        """Embedding of ``image`` (from the cache when possible)."""
        embedding, box, _ = self._embed(image, window, key)
        return embedding, box

    def _embed(self, image: np.ndarray, window: Window,
               key: Hashable | None) -> tuple[torch.Tensor, Letterbox, Hashable]:
        rgb = to_encoder_rgb(image, window)
        cache_key = (self._model_key, key if key is not None else content_key(rgb), str(window))
        cfg = self.model.config
        tensor, box = letterbox_image(rgb, cfg.input_size, cfg.preprocess)
        # The full-size RGB copy is not needed past here; on a 12000 x 12000 image it
        # is 432 MB beside the encoder's own memory (issue 23: a 1.99 GB peak was 1.65 GB without it).
        del rgb
        embedding = self.cache.get(cache_key)
        if embedding is None:
            runtime = self.encoder_runtime()
            with torch.no_grad(), autocast(self.device, self.precision):
                embedding = runtime.run(tensor.to(self.device)).float().to(self.device)
            self.cache.put(cache_key, embedding)
        return embedding, box, cache_key

    def encoder_runtime(self) -> EncoderRuntime:
        """How images are embedded (OpenVINO on the CPU where it gives the same
        embeddings, else PyTorch); chosen at the first image, as exporting can
        take seconds the first time."""
        if self._runtime is None:
            if self.accelerate:
                def note(text: str) -> None:
                    self.encoder_note = text

                self._runtime = choose_encoder(self.model, self.device, self.precision, note)
            else:
                self._runtime = EncoderRuntime(f"PyTorch ({self.device.type}, {self.precision})",
                                               self.model.embed)
        return self._runtime

    def set_image(self, image: np.ndarray, *, window: Window = None,
                  key: Hashable | None = None) -> None:
        """Make ``image`` (a 2D image or one slice) the one boxes refer to."""
        self._embedding, self._letterbox, self._image_key = self._embed(image, window, key)

    def precompute(
        self,
        slices: Sequence[Callable[[], np.ndarray]] | Sequence[np.ndarray],
        keys: Sequence[Hashable],
        *,
        window: Window = None,
        on_progress: Callable[[int, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> int:
        """Embed many slices ahead of time (e.g. around the one in view); returns
        how many were done before a stop request."""
        done = 0
        for item, key in zip(slices, keys):
            if should_stop is not None and should_stop():
                break
            image = item() if callable(item) else item
            self.embed(image, window=window, key=key)
            done += 1
            if on_progress is not None:
                on_progress(done, len(keys))
        return done

    # -- prompts -------------------------------------------------------------
    def check_boxes(self, boxes: np.ndarray | Sequence[Sequence[float]],
                    clicks: Sequence[Clicks | None] | None = None) -> np.ndarray:
        """``(N, 4)`` boxes clipped to the image; clear errors for unusable ones.

        With ``clicks`` (one entry per box), a box row of NaN means "no box":
        that object is prompted by its clicks alone, which must then exist.
        """
        height, width = self.image_shape
        arr = np.asarray(boxes, dtype=np.float64)
        if arr.ndim == 1:
            arr = arr[None]
        if arr.ndim != 2 or arr.shape[1] != 4 or len(arr) == 0:
            raise ValueError(f"boxes must be (N, 4) as x0, y0, x1, y1; got shape {arr.shape}")
        if clicks is not None and len(clicks) != len(arr):
            raise ValueError(f"{len(clicks)} click sets for {len(arr)} boxes: give one entry "
                             "(or None) per box")
        for i, (x0, y0, x1, y1) in enumerate(arr):
            mine = clicks[i] if clicks is not None else None
            if mine is not None and len(mine):
                for x, y in mine.xy:
                    if not (0 <= x <= width and 0 <= y <= height):
                        raise ValueError(f"click ({x:g}, {y:g}) lies outside the {width} x "
                                         f"{height} image")
                if np.isnan(arr[i]).all():
                    continue  # an object of clicks alone
            if not np.isfinite(arr[i]).all():
                raise ValueError("boxes contain NaN or infinite coordinates")
            if x1 <= x0 or y1 <= y0:
                raise ValueError(f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) is empty or inverted: "
                                 "x1 must exceed x0 and y1 exceed y0")
            if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
                raise ValueError(f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) lies outside the "
                                 f"{width} x {height} image")
        return np.clip(arr, 0, [width, height, width, height])

    def extents(self, boxes: np.ndarray, clicks: Sequence[Clicks | None] | None = None, *,
                decoder: str | None = None) -> np.ndarray:
        """``(N, 4)`` where each object may lie, in image pixels: its box, or with
        clicks the box, the clicks and the backbone's own mask together."""
        mode = self.resolve_decoder(decoder) if decoder is not None else self.mode
        boxes = self.check_boxes(boxes, clicks)
        return np.stack([self._answer(box, None if clicks is None else clicks[i], mode).extent
                         for i, box in enumerate(boxes)])

    def predict(
        self,
        boxes: np.ndarray | Sequence[Sequence[float]],
        *,
        clicks: Sequence[Clicks | None] | None = None,
        decoder: str | None = None,
        head: int | None = SESSION_HEAD,  # type: ignore[assignment]
        scale: float = 1.0,
        region: Region | None = None,
        out_shape: tuple[int, int] | None = None,
        adaptive: bool | None = None,
        margin: float = 0.25,
        error_map: bool = True,
    ) -> SegmentationResult:
        """Masks for ``boxes`` on the image grid times ``scale`` (0.25 to 8), or on
        ``region`` (y0, x0, y1, x1) sampled at ``out_shape``.

        ``clicks``: one :class:`Clicks` (or None) per box; a NaN box row with
        clicks is an object of clicks alone. ``decoder`` (``auto``, ``imedsam``,
        ``sam``) and ``head`` (a class index, or None for every class) choose for
        this call; left out, the session's defaults (:meth:`use_decoder`,
        :meth:`use_class`) answer. A shared session must be given both.
        ``error_map``: False leaves ``error`` None (callers that use only the masks and
        the uncertainty: it costs a distance transform per object's window).
        """
        mode = self.resolve_decoder(decoder) if decoder is not None else self.mode
        chosen_head = self.head if head is SESSION_HEAD else self.check_head(head)
        boxes = self.check_boxes(boxes, clicks)
        height, width = self.image_shape
        if region is None:
            if not 0.25 <= scale <= 8:
                raise ValueError(f"scale must be between 0.25 and 8, got {scale}")
            region = (0.0, 0.0, float(height), float(width))
            out_shape = out_shape or output_grid((height, width), scale)
        elif out_shape is None:
            raise ValueError("a region needs an out_shape")
        rows, cols = out_shape
        if rows < 1 or cols < 1:
            raise ValueError(f"the output grid {rows} x {cols} is empty: use a larger scale")
        need = len(boxes) * rows * cols * BYTES_PER_OUTPUT_PIXEL
        if need > MAX_RESULT_BYTES:
            raise ValueError(
                f"{len(boxes)} box(es) on a {cols} x {rows} output grid need "
                f"{need / 2**30:.1f} GiB of maps; ask for fewer boxes at a time or a smaller "
                "scale (`imedsam segment` and export merge boxes one by one)")
        classes = self.model.config.num_classes if mode == "imedsam" else 1
        heads = slice(None)
        if mode == "imedsam" and chosen_head is not None:
            classes, heads = 1, slice(chosen_head, chosen_head + 1)
        prob = np.zeros((len(boxes), classes, rows, cols), np.float32)
        unc = np.zeros_like(prob) if mode == "imedsam" else None
        refined = np.zeros((len(boxes), rows, cols), bool) if mode == "imedsam" else None
        evaluated = np.zeros((len(boxes), rows, cols), bool)
        ious = np.full(len(boxes), np.nan, np.float32)
        error_model = (getattr(self.model, "error_model", None)
                       if mode == "imedsam" and error_map else None)
        error = None if error_model is None else np.zeros((len(boxes), rows, cols), np.float32)
        pixel = 0.5 * ((region[2] - region[0]) / rows + (region[3] - region[1]) / cols)
        used = boxes.copy()
        use_adaptive = self.adaptive if adaptive is None else adaptive
        for i, box in enumerate(boxes):
            answer = self._answer(box, None if clicks is None else clicks[i], mode)
            ious[i], used[i] = answer.iou, answer.extent
            chain = (self._chain(box, clicks[i], mode)
                     if mode != "sam" and clicks is not None and answer.accepted is not None
                     else [answer])
            window = window_of(answer.extent, region, out_shape, margin)
            if window is None:
                continue
            # Tiles bound the decoder's working memory whatever the window's size.
            for r0, c0, r1, c1 in tiles(window):
                points_of = self._points_of(region, out_shape, r0, c0)
                if mode == "sam":
                    prob[i, :, r0:r1, c0:c1] = self._sam_prob(answer.low_res, points_of,
                                                              (r1 - r0, c1 - c0))
                    evaluated[i, r0:r1, c0:c1] = True
                    continue
                maps = self._implicit(chain[0].features, points_of, (r1 - r0, c1 - c0),
                                      use_adaptive)
                if len(chain) > 1:
                    maps = self._clicked(chain[1:], points_of, maps)
                prob[i, :, r0:r1, c0:c1] = maps[0][heads]
                unc[i, :, r0:r1, c0:c1] = maps[1][heads]  # type: ignore[index]
                refined[i, r0:r1, c0:c1] = maps[2]  # type: ignore[index]
                evaluated[i, r0:r1, c0:c1] = maps[3]
            if error is not None:  # on the whole window: distances cross the tiles
                r0, c0, r1, c1 = window
                error[i, r0:r1, c0:c1] = error_model(prob[i, :, r0:r1, c0:c1].max(axis=0),
                                                     unc[i, :, r0:r1, c0:c1].max(axis=0), pixel)
        return SegmentationResult(prob, unc, refined, evaluated, mode, region, used, ious, error)

    def predict_points(self, box: Sequence[float], points_xy: np.ndarray, *,
                       clicks: Clicks | None = None, decoder: str | None = None
                       ) -> dict[str, np.ndarray]:
        """Probability (and uncertainty) of one object at ``(P, 2)`` image points (x, y)."""
        mode = self.resolve_decoder(decoder) if decoder is not None else self.mode
        box_arr = self.check_boxes(box, None if clicks is None else [clicks])[0]
        answer = self._answer(box_arr, clicks, mode)
        pts = torch.as_tensor(self._letterbox.normalize(np.asarray(points_xy, np.float64)),
                              dtype=torch.float32, device=self.device)
        if mode == "sam":
            return {"prob": self._sam_prob(answer.low_res, lambda r, c: pts, None)}
        chain = (self._chain(box_arr, clicks, mode) if answer.accepted is not None
                 else [answer])
        prob, unc, refined = self._decode_at(chain[0].features, pts)
        self._join_clicks(chain[1:], pts, prob, unc, refined)
        return {"prob": prob, "uncertainty": unc, "refined": refined}

    @torch.no_grad()
    def _decode_at(self, features: object, points: torch.Tensor
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(K, P)`` probability and uncertainty and ``(P,)`` refined flags of one
        prompt's implicit decoder at ``(P, 2)`` normalised points (dense)."""
        pred = self.model.decode_points(features, points, generator=self._generator(),
                                        chunk_size=65536)
        return (pred.prob[0].cpu().numpy(), pred.uncertainty[0].cpu().numpy(),
                pred.refined[0].cpu().numpy())

    def _owned(self, step: _Answer, points: torch.Tensor) -> np.ndarray:
        """``(P,)`` float in [0, 1]: how much of the step's own answer each normalised
        point takes: its accepted cells interpolated bilinearly between the cells'
        centres, so 1 inside, 0 from a cell beyond its edge on. Taking whole cells
        drew the click's region as a staircase of the 256-cell grid when zoomed in
        (2 image pixels a step on a 500-pixel polyp); across the last cell the click's
        own answer now decides where its edge runs."""
        assert step.accepted is not None
        accepted = (step.accepted if step.share is None else step.share).numpy().astype(
            np.float32)
        n = accepted.shape[-1]
        # Cell (r, c) has its centre at (c + 0.5, r + 0.5); padded by a cell of zeros.
        xy = (points.detach().cpu().numpy().astype(np.float64) + 1.0) * (0.5 * n) - 0.5
        grid = np.pad(accepted, 1)
        x = np.clip(xy[:, 0] + 1.0, 0.0, n + 1.0 - 1e-9)
        y = np.clip(xy[:, 1] + 1.0, 0.0, n + 1.0 - 1e-9)
        c0, r0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
        fx, fy = x - c0, y - r0
        c1, r1 = np.minimum(c0 + 1, n + 1), np.minimum(r0 + 1, n + 1)
        return ((grid[r0, c0] * (1 - fx) + grid[r0, c1] * fx) * (1 - fy)
                + (grid[r1, c0] * (1 - fx) + grid[r1, c1] * fx) * fy).astype(np.float32)

    def _join_clicks(self, steps: list[_Answer], points: torch.Tensor, prob: np.ndarray,
                     unc: np.ndarray, refined: np.ndarray) -> np.ndarray:
        """In place: the ``(K, P)`` / ``(P,)`` maps at ``(P, 2)`` points with each click's
        accepted region answered by that click's own prompt (later clicks over earlier
        ones), densely: the regions are small. A positive click only raises the
        probability, a negative one only lowers it, by the share :meth:`_owned` gives
        each point. Returns the ``(P,)`` points so answered."""
        joined = np.zeros(len(points), bool)
        for step in steps:
            weight = self._owned(step, points)
            touched = weight > 0
            if not touched.any():
                continue
            mine = points[torch.from_numpy(touched).to(points.device)]
            own, own_unc, own_refined = self._decode_at(step.features, mine)
            if step.bump is not None:
                own = step.bump.push_implicit(own, mine.detach().cpu().numpy().astype(np.float64))
                # Where the backbone's pushed mask says what the click says, so does
                # the implicit decoder: the next click is placed on what the user
                # sees, and is joined on the backbone's grid (Kvasir-Sessile
                # validation, 5 clicks: 0.926 -> 0.931, and no click that joined
                # nothing, against 42 % before).
                backbone = self._sam_prob(step.low_res, lambda r, c: mine, None)
                own = (np.maximum if step.bump.sign > 0 else np.minimum)(own, backbone)
            w = weight[touched]
            before = prob[:, touched]
            if step.positive is False:
                after = before - w * np.maximum(before - own, 0.0)
            elif step.positive is True:
                after = before + w * np.maximum(own - before, 0.0)
            else:
                after = before + w * (own - before)
            prob[:, touched] = after
            # The spread blends as the probability does (switching it at half a share
            # drew the cells' edges into the error map); the refined flags follow the
            # answer that holds most of the point.
            unc[:, touched] += w * (own_unc - unc[:, touched])
            taken = w >= 0.5
            refined[np.flatnonzero(touched)[taken]] = own_refined[taken]
            joined |= touched
        return joined

    def _clicked(self, steps: list[_Answer], points_of, maps: tuple[np.ndarray, ...]  # noqa: ANN001
                 ) -> tuple[np.ndarray, ...]:
        """A tile's maps with each click's accepted pixels answered by that click's own
        prompt (see :meth:`_join_clicks`); those pixels count as evaluated."""
        prob, unc, refined, evaluated = (m.copy() for m in maps)
        shape = prob.shape[-2:]
        rows, cols = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
        points = points_of(rows.ravel(), cols.ravel())
        k = prob.shape[0]
        flat = (prob.reshape(k, -1), unc.reshape(k, -1), refined.reshape(-1))
        joined = self._join_clicks(steps, points, *flat)
        evaluated[joined.reshape(shape)] = True
        return prob, unc, refined, evaluated

    # -- internals -----------------------------------------------------------
    def _generator(self) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(self.seed)

    def _box_prompt(self, box: np.ndarray) -> torch.Tensor:
        assert self._letterbox is not None
        prompt = self._letterbox.boxes_to_prompt(box, self.model.config.preprocess)
        return torch.as_tensor(prompt, dtype=torch.float32, device=self.device)

    def _click_prompt(self, clicks: Clicks) -> tuple[torch.Tensor, torch.Tensor]:
        """Clicks in SAM's point convention: input pixels, where SAM adds 0.5 itself."""
        assert self._letterbox is not None
        xy = self._letterbox.to_input(clicks.xy) - 0.5
        return (torch.as_tensor(xy[None], dtype=torch.float32, device=self.device),
                torch.as_tensor(clicks.labels[None], dtype=torch.int64, device=self.device))

    def _answer(self, box: np.ndarray, clicks: Clicks | None, mode: str) -> _Answer:
        """The prompt path's answer for one object (its last step), from the memo when
        it is there; see :meth:`_steps`."""
        return self._steps(box, clicks, mode)[-1]

    @torch.no_grad()
    def _steps(self, box: np.ndarray, clicks: Clicks | None, mode: str) -> list[_Answer]:
        """The prompt path's answers for one object, one per step (the box, then each
        click), from the memo when they are there; the last is the object's answer.

        With clicks, each click is answered in turn from the box (or the first
        click) on, each step given the step before's logits as SAM's mask prompt
        (when ``click_mask_prompt``): the answer is a function of the prompts
        alone, as an interactive session that answered each click would have it.
        """
        assert self._embedding is not None and self._letterbox is not None
        has_box = bool(np.isfinite(box).all())
        clicks = clicks if clicks is not None and len(clicks) else None
        steps = 0 if clicks is None else len(clicks)
        first = 0 if has_box else 1  # an object without a box starts at its first click
        answer = None
        answers: list[_Answer] = []
        local = self.click_rule in ("local", "local_bump")
        for k in range(first, steps + 1):
            # Without the mask prompt and the local rule only the last step is needed.
            if not self.click_mask_prompt and not local and k < steps:
                continue
            part = None if k == 0 else Clicks(clicks.xy[:k], clicks.labels[:k])  # type: ignore[union-attr]
            key = (self._image_key, mode, self.click_mask_prompt, self.click_rule,
                   box.tobytes(), None if part is None else part.key())
            with self._memo_lock:
                found = self._memo.get(key)
                if found is not None:
                    self._memo.move_to_end(key)
            if found is None:
                mask = (answer.low_res if answer is not None and self.click_mask_prompt
                        else None)
                found = self._compute_answer(box if has_box else None, part, mask, mode)
                if local and answer is not None and part is not None:
                    found = self._local(answer, found, box if has_box else None, part)
                with self._memo_lock:
                    self._memo[key] = found
                    while len(self._memo) > MEMO_ENTRIES:
                        self._memo.popitem(last=False)
            answer = found
            answers.append(found)
        assert answers
        return answers

    def _chain(self, box: np.ndarray, clicks: Clicks | None, mode: str) -> list[_Answer]:
        """The answers that make an object's mask under the local rule, oldest first:
        the last that answers everywhere (the box, or a click that could not be
        joined locally), then each later click's, for its accepted cells."""
        chain = self._steps(box, clicks, mode)
        start = max(i for i, a in enumerate(chain) if a.accepted is None)
        return chain[start:]

    def _local(self, before: _Answer, found: _Answer, box: np.ndarray | None,
               clicks: Clicks) -> _Answer:
        """The click's answer joined under the local rule: of what changed between the
        mask before it and its own answer (added on a positive click, removed on a
        negative one), only the connected part that holds the click is taken, on the
        backbone's low resolution grid. Under ``local`` a click whose own cell did not
        change takes nothing; under ``local_bump`` the click's answer is first pushed
        towards the click where it did not follow it (:class:`~.clicks.Bump`). Answers
        without the backbone's logits are taken whole."""
        from scipy import ndimage

        if before.low_res is None or found.low_res is None:
            return found
        assert self._letterbox is not None
        old = before.low_res[0, 0] > 0
        n = old.shape[0]
        x, y = self._letterbox.to_input(clicks.xy[-1:])[0] * (n / self._letterbox.size)
        row, col = min(max(int(y), 0), n - 1), min(max(int(x), 0), n - 1)
        positive = bool(clicks.labels[-1])
        bump = self._bump(old, found, clicks, x, y, row, col) if (
            self.click_rule == "local_bump") else None
        if bump is not None:
            field = torch.from_numpy(bump.field(n).astype(np.float32))
            found = _Answer(found.features, found.low_res + field.to(found.low_res.device),
                            found.iou, found.extent)
        new = found.low_res[0, 0] > 0
        if bump is not None and bool(old[row, col]) == positive:
            # The backbone's mask already says what the click says there (the implicit
            # decoder's, which the user sees, did not): the click's answer is taken
            # around it, where the mask before and the pushed answer both say so (never
            # across the mask's edge), as far as its bump reaches (2 sigma) but at most
            # AGREED_REACH cells: such a disagreement is a thin one, and a far reach
            # would hand a wide area's pixels to another prompt (a click on far
            # background changed 8 pixels by the object's edge).
            side = (new & old if positive else ~new & ~old).cpu().numpy()
            ys, xs = np.mgrid[0:n, 0:n] + 0.5
            reach = min(2.0 * bump.sigma, AGREED_REACH)
            change = side & ((xs - x) ** 2 + (ys - y) ** 2 <= reach ** 2)
        else:
            change = ((new & ~old) if positive else (old & ~new)).cpu().numpy()
        groups, _ = ndimage.label(change)
        group = groups[row, col]
        accepted = torch.from_numpy(groups == group if group else np.zeros_like(change))
        low_res = torch.where(accepted.to(found.low_res.device), found.low_res, before.low_res)
        # Where the region meets the mask on the click's side, the share stays whole a
        # cell into the mask: a ramp there let the implicit decoder's own edge, which
        # lies up to a cell off the backbone's, through as a crack across the joined
        # mask. Only the region's outer edge is blended.
        same_side = (old if positive else ~old).cpu().numpy()
        share = accepted.numpy() | (ndimage.binary_dilation(accepted.numpy()) & same_side)
        return _Answer(found.features, low_res, found.iou, self._extent(box, clicks, low_res),
                       accepted, bump, positive, torch.from_numpy(share))

    def _bump(self, old: torch.Tensor, found: _Answer, clicks: Clicks, x: float, y: float,
              row: int, col: int) -> Bump | None:
        """The click's bump (:func:`~.clicks.bump_for`), sized on the backbone's logit
        and the implicit decoder's answer at the click."""
        implicit = None
        if found.features is not None:
            n = old.shape[0]
            point = torch.tensor([[2.0 * x / n - 1.0, 2.0 * y / n - 1.0]], dtype=torch.float32,
                                 device=self.device)
            prob = float(self._decode_at(found.features, point)[0].max(axis=0)[0])
            prob = min(max(prob, 1e-6), 1 - 1e-6)
            implicit = math.log(prob / (1 - prob))
        return bump_for(old.cpu().numpy(), (x, y), bool(clicks.labels[-1]),
                        float(found.low_res[0, 0, row, col]), implicit)

    def _compute_answer(self, box: np.ndarray | None, clicks: Clicks | None,
                        mask: torch.Tensor | None, mode: str) -> _Answer:
        boxes = None if box is None else self._box_prompt(box)
        points = None if clicks is None else self._click_prompt(clicks)
        features = None
        extra = () if points is None and mask is None else (points, mask)
        if mode == "sam":
            low_res, iou = self.model.predict_discrete(self._embedding, boxes, *extra)
            iou_value = float(iou[0, 0])
        else:
            features = self.model.encode_prompt(self._embedding, boxes, *extra)
            low_res = features.sam_logits() if features.mask_weights is not None else mask
            iou_value = float("nan") if features.iou is None else float(features.iou[0])
        extent = box if clicks is None else self._extent(box, clicks, low_res)
        return _Answer(features, low_res, iou_value, extent)

    def _extent(self, box: np.ndarray | None, clicks: Clicks,
                low_res: torch.Tensor | None) -> np.ndarray:
        """The box, the clicks and the backbone's own mask (where it is positive),
        together, in image pixels and inside the image."""
        assert self._letterbox is not None
        height, width = self.image_shape
        parts = [np.concatenate([clicks.xy.min(0) - 1, clicks.xy.max(0) + 1])]
        if box is not None:
            parts.append(box)
        if low_res is not None:
            fg = (low_res[0, 0] > 0).cpu().numpy()
            if fg.any():
                rows, cols = np.nonzero(fg.any(1))[0], np.nonzero(fg.any(0))[0]
                cell = self._letterbox.size / fg.shape[0]
                sx, sy = self._letterbox.scale_xy
                parts.append(np.array([cols[0] * cell / sx, rows[0] * cell / sy,
                                       (cols[-1] + 1) * cell / sx, (rows[-1] + 1) * cell / sy]))
        stacked = np.stack(parts)
        out = np.concatenate([stacked[:, :2].min(0), stacked[:, 2:].max(0)])
        return np.clip(out, 0, [width, height, width, height])

    def _points_of(self, region: Region, out_shape: tuple[int, int], r0: int, c0: int):  # noqa: ANN202
        y0, x0, y1, x1 = region
        sy, sx = (y1 - y0) / out_shape[0], (x1 - x0) / out_shape[1]
        assert self._letterbox is not None
        letterbox, device = self._letterbox, self.device

        def points_of(rows: np.ndarray, cols: np.ndarray) -> torch.Tensor:
            xy = np.stack([x0 + (c0 + cols + 0.5) * sx, y0 + (r0 + rows + 0.5) * sy], axis=-1)
            return torch.as_tensor(letterbox.normalize(xy), dtype=torch.float32, device=device)

        return points_of

    @torch.no_grad()
    def _implicit(self, prompt, points_of, shape: tuple[int, int],  # noqa: ANN001
                  adaptive: bool) -> tuple[np.ndarray, ...]:
        """(prob, uncertainty, refined, evaluated) maps of one object's prompt features."""
        cfg = self.model.config.decoder
        if adaptive:
            networks = self.model.implicit_decoder.coarse.sample_networks(
                cfg.mc_samples, self._generator())
            stride = start_stride(shape)
            # The corners of the (padded) lattice bound every point decoded for this box.
            last = np.asarray(lattice_shape(shape, stride)) - 1
            corners = points_of(np.array([0, last[0]]), np.array([0, last[1]]))
            extent = (*corners.amin(0).tolist(), *corners.amax(0).tolist())
            fast = FastDecoder(self.model, prompt, networks, extent=tuple(extent))
            maps = adaptive_decode(fast, points_of, shape, stride=stride,
                                   top_k_ratio=cfg.top_k_ratio)
            return (maps.prob.cpu().numpy(), maps.uncertainty.cpu().numpy(),
                    maps.refined.cpu().numpy(), maps.evaluated.cpu().numpy())
        rows, cols = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
        points = points_of(rows.ravel(), cols.ravel())
        pred = self.model.decode_points(prompt, points, generator=self._generator(),
                                        chunk_size=65536)
        k = pred.logits.shape[1]
        return (pred.prob[0].reshape(k, *shape).cpu().numpy(),
                pred.uncertainty[0].reshape(k, *shape).cpu().numpy(),
                pred.refined[0].reshape(shape).cpu().numpy(), np.ones(shape, bool))

    @torch.no_grad()
    def _sam_prob(self, low_res: torch.Tensor, points_of,  # noqa: ANN001
                  shape: tuple[int, int] | None) -> np.ndarray:
        """SAM's own decoder: its low-resolution logits, cropped to the image's part
        of the input and sampled bilinearly at the points (as SAM and LiteMedSAM
        crop, then resize to the image)."""
        assert self._letterbox is not None
        if shape is None:
            points = points_of(None, None)
        else:
            rows, cols = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
            points = points_of(rows.ravel(), cols.ravel())
        grid = _clamp_to_image(points, self._letterbox, low_res.shape[-1]).view(1, -1, 1, 2)
        logits = F.grid_sample(low_res, grid, mode="bilinear", align_corners=False,
                               padding_mode="border")[0, 0, :, 0]
        prob = torch.sigmoid(logits).cpu().numpy()
        return prob[None] if shape is None else prob.reshape(1, *shape)


def _clamp_to_image(points: torch.Tensor, letterbox: Letterbox, map_size: int) -> torch.Tensor:
    """Normalised points clamped to the map pixels that cover the image, not its
    padding: the border rule of resizing the cropped logits."""
    h, w = letterbox.resized
    last = torch.tensor([w, h], dtype=points.dtype, device=points.device) * (
        map_size / letterbox.size) - 1
    upper = (2 * last.clamp_min(0) + 1) / map_size - 1
    return torch.minimum(points, upper)


def window_of(box: np.ndarray, region: Region, out_shape: tuple[int, int],
              margin: float = 0.25) -> tuple[int, int, int, int] | None:
    """Output-grid window covering the box plus ``margin`` of its size, inside ``region``."""
    y0, x0, y1, x1 = region
    bx0, by0, bx1, by1 = box
    gx, gy = margin * (bx1 - bx0) + 1.0, margin * (by1 - by0) + 1.0
    fy, fx = out_shape[0] / (y1 - y0), out_shape[1] / (x1 - x0)
    r0 = max(0, math.floor((by0 - gy - y0) * fy))
    r1 = min(out_shape[0], math.ceil((by1 + gy - y0) * fy))
    c0 = max(0, math.floor((bx0 - gx - x0) * fx))
    c1 = min(out_shape[1], math.ceil((bx1 + gx - x0) * fx))
    if r1 <= r0 or c1 <= c0:
        return None  # the box is outside the requested region
    return r0, c0, r1, c1


def boundary_polygons(result: SegmentationResult, level: float = 0.5) -> list[list[np.ndarray]]:
    """Sub-pixel boundaries of each box's mask: marching squares on the continuous
    probability (scikit-image), as ``(M, 2)`` (y, x) arrays in image pixels."""
    from skimage.measure import find_contours

    y0, x0, y1, x1 = result.region
    rows, cols = result.shape
    sy, sx = (y1 - y0) / rows, (x1 - x0) / cols
    out = []
    for prob in result.prob.max(axis=1):
        # Pad with background so contours close at the grid's edge.
        padded = np.pad(prob, 1)
        contours = find_contours(padded, level)
        out.append([np.stack([y0 + (c[:, 0] - 1 + 0.5) * sy, x0 + (c[:, 1] - 1 + 0.5) * sx],
                             axis=1) for c in contours])
    return out
