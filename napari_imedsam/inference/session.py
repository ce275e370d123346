"""A stateful segmentation session: embed an image once, answer many boxes.

Boxes, points and outputs are in pixel coordinates of the image as given
(x0, y0, x1, y1 with 0 at the top-left edge). Letterboxing into the encoder
input happens inside. Outputs can be asked for on the image grid at any scale,
on a region at a given shape (what a zoomed-in viewer shows), or at points.
"""

from __future__ import annotations

import math
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
from .fast_decoder import FastDecoder
from .intensity import Window, to_encoder_rgb
from .regions import Region


#: Output pixels decoded at once for one box (a tile's side is at most 512).
TILE = 512
#: Bytes per output pixel and box of a result (probability, uncertainty, two flags).
BYTES_PER_OUTPUT_PIXEL = 10
#: The largest result one predict call builds; callers merge boxes one by one beyond.
MAX_RESULT_BYTES = 4 << 30


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
    ) -> None:
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.use_decoder(mode)
        self.precision = resolve_precision(precision, model.config)
        self.accelerate = accelerate
        self._runtime: EncoderRuntime | None = None
        #: Why the accelerated encoder is not used, when it is not (for the status line).
        self.encoder_note: str | None = None
        self.cache = EmbeddingCache(cache_bytes)
        self.seed = seed
        self.adaptive = adaptive
        self._embedding: torch.Tensor | None = None
        self._letterbox: Letterbox | None = None
        #: The implicit decoder's head that answers (None: every class, maps ``(N, K, ...)``).
        self.head: int | None = None
        # Embeddings depend on the weights: key them by model and adapter too.
        self._model_key = (model.config.variant, model.config.input_size,
                           model.base_weights.get("sha256"), model.adapter_sha256)

    def use_decoder(self, mode: str) -> None:
        """``imedsam`` (the implicit decoder), ``sam`` (the backbone's own mask
        decoder) or ``auto`` (implicit when the model carries a trained one)."""
        if mode == "auto":
            mode = "imedsam" if self.model.adapter_sha256 is not None else "sam"
        if mode not in ("imedsam", "sam"):
            raise ValueError(f"mode must be auto, imedsam or sam, got {mode!r}")
        self.mode = mode

    def use_class(self, head: int | None) -> None:
        """Answer boxes with class ``head`` only (maps then have one class), or with every
        class (None). The backbone's own decoder has one mask and ignores it."""
        classes = self.model.config.num_classes
        if head is not None and not 0 <= head < classes:
            raise ValueError(f"class index {head} is outside the model's {classes} class(es)")
        self.head = head

    @property
    def image_shape(self) -> tuple[int, int]:
        if self._letterbox is None:
            raise RuntimeError("no image is set: call set_image first")
        return self._letterbox.height, self._letterbox.width

    # -- images --------------------------------------------------------------
    def embed(self, image: np.ndarray, *, window: Window = None,
              key: Hashable | None = None) -> tuple[torch.Tensor, Letterbox]:
        """Embedding of ``image`` (from the cache when possible)."""
        rgb = to_encoder_rgb(image, window)
        cache_key = (self._model_key, key if key is not None else content_key(rgb), str(window))
        cfg = self.model.config
        tensor, box = letterbox_image(rgb, cfg.input_size, cfg.preprocess)
        embedding = self.cache.get(cache_key)
        if embedding is None:
            runtime = self.encoder_runtime()
            with torch.no_grad(), autocast(self.device, self.precision):
                embedding = runtime.run(tensor.to(self.device)).float().to(self.device)
            self.cache.put(cache_key, embedding)
        return embedding, box

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
        self._embedding, self._letterbox = self.embed(image, window=window, key=key)

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

    # -- boxes ---------------------------------------------------------------
    def check_boxes(self, boxes: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
        """``(N, 4)`` boxes clipped to the image; clear errors for unusable ones."""
        height, width = self.image_shape
        arr = np.asarray(boxes, dtype=np.float64)
        if arr.ndim == 1:
            arr = arr[None]
        if arr.ndim != 2 or arr.shape[1] != 4 or len(arr) == 0:
            raise ValueError(f"boxes must be (N, 4) as x0, y0, x1, y1; got shape {arr.shape}")
        if not np.isfinite(arr).all():
            raise ValueError("boxes contain NaN or infinite coordinates")
        for x0, y0, x1, y1 in arr:
            if x1 <= x0 or y1 <= y0:
                raise ValueError(f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) is empty or inverted: "
                                 "x1 must exceed x0 and y1 exceed y0")
            if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
                raise ValueError(f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) lies outside the "
                                 f"{width} x {height} image")
        return np.clip(arr, 0, [width, height, width, height])

    def predict(
        self,
        boxes: np.ndarray | Sequence[Sequence[float]],
        *,
        scale: float = 1.0,
        region: Region | None = None,
        out_shape: tuple[int, int] | None = None,
        adaptive: bool | None = None,
        margin: float = 0.25,
    ) -> SegmentationResult:
        """Masks for ``boxes`` on the image grid times ``scale`` (0.25 to 8), or on
        ``region`` (y0, x0, y1, x1) sampled at ``out_shape``."""
        boxes = self.check_boxes(boxes)
        height, width = self.image_shape
        if region is None:
            if not 0.25 <= scale <= 8:
                raise ValueError(f"scale must be between 0.25 and 8, got {scale}")
            region = (0.0, 0.0, float(height), float(width))
            out_shape = out_shape or (max(1, round(height * scale)), max(1, round(width * scale)))
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
        classes = self.model.config.num_classes if self.mode == "imedsam" else 1
        heads = slice(None)
        if self.mode == "imedsam" and self.head is not None:
            classes, heads = 1, slice(self.head, self.head + 1)
        prob = np.zeros((len(boxes), classes, rows, cols), np.float32)
        unc = np.zeros_like(prob) if self.mode == "imedsam" else None
        refined = np.zeros((len(boxes), rows, cols), bool) if self.mode == "imedsam" else None
        evaluated = np.zeros((len(boxes), rows, cols), bool)
        ious = np.full(len(boxes), np.nan, np.float32)
        use_adaptive = self.adaptive if adaptive is None else adaptive
        for i, box in enumerate(boxes):
            window = window_of(box, region, out_shape, margin)
            if window is None:
                continue
            # Tiles bound the decoder's working memory whatever the window's size.
            for r0, c0, r1, c1 in tiles(window):
                points_of = self._points_of(region, out_shape, r0, c0)
                if self.mode == "sam":
                    prob[i, :, r0:r1, c0:c1], ious[i] = self._sam_prob(box, points_of,
                                                                       (r1 - r0, c1 - c0))
                    evaluated[i, r0:r1, c0:c1] = True
                    continue
                maps, ious[i] = self._implicit(box, points_of, (r1 - r0, c1 - c0),
                                               use_adaptive)
                prob[i, :, r0:r1, c0:c1] = maps[0][heads]
                unc[i, :, r0:r1, c0:c1] = maps[1][heads]  # type: ignore[index]
                refined[i, r0:r1, c0:c1] = maps[2]  # type: ignore[index]
                evaluated[i, r0:r1, c0:c1] = maps[3]
        return SegmentationResult(prob, unc, refined, evaluated, self.mode, region, boxes, ious)

    def predict_points(self, box: Sequence[float], points_xy: np.ndarray) -> dict[str, np.ndarray]:
        """Probability (and uncertainty) of one box at ``(P, 2)`` image points (x, y)."""
        box_arr = self.check_boxes(box)[0]
        pts = torch.as_tensor(self._letterbox.normalize(np.asarray(points_xy, np.float64)),
                              dtype=torch.float32, device=self.device)
        if self.mode == "sam":
            return {"prob": self._sam_prob(box_arr, lambda r, c: pts, None)[0]}
        with torch.no_grad():
            prompt = self._prompt(box_arr)
            pred = self.model.decode_points(prompt, pts, generator=self._generator(),
                                            chunk_size=65536)
        return {"prob": pred.prob[0].cpu().numpy(), "uncertainty": pred.uncertainty[0].cpu().numpy(),
                "refined": pred.refined[0].cpu().numpy()}

    # -- internals -----------------------------------------------------------
    def _generator(self) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(self.seed)

    def _box_prompt(self, box: np.ndarray) -> torch.Tensor:
        assert self._letterbox is not None
        prompt = self._letterbox.boxes_to_prompt(box, self.model.config.preprocess)
        return torch.as_tensor(prompt, dtype=torch.float32, device=self.device)

    def _prompt(self, box: np.ndarray):  # noqa: ANN202
        assert self._embedding is not None
        return self.model.encode_prompt(self._embedding, self._box_prompt(box))

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
    def _implicit(self, box: np.ndarray, points_of, shape: tuple[int, int],  # noqa: ANN001
                  adaptive: bool) -> tuple[tuple[np.ndarray, ...], float]:
        """((prob, uncertainty, refined, evaluated) maps, the backbone's predicted IoU)."""
        prompt = self._prompt(box)
        iou = float("nan") if prompt.iou is None else float(prompt.iou[0])
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
                    maps.refined.cpu().numpy(), maps.evaluated.cpu().numpy()), iou
        rows, cols = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
        points = points_of(rows.ravel(), cols.ravel())
        pred = self.model.decode_points(prompt, points, generator=self._generator(),
                                        chunk_size=65536)
        k = pred.logits.shape[1]
        return (pred.prob[0].reshape(k, *shape).cpu().numpy(),
                pred.uncertainty[0].reshape(k, *shape).cpu().numpy(),
                pred.refined[0].reshape(shape).cpu().numpy(), np.ones(shape, bool)), iou

    @torch.no_grad()
    def _sam_prob(self, box: np.ndarray, points_of,  # noqa: ANN001
                  shape: tuple[int, int] | None) -> tuple[np.ndarray, float]:
        """SAM's own decoder: its low-resolution logits, cropped to the image's part
        of the input and sampled bilinearly at the points (as SAM and LiteMedSAM
        crop, then resize to the image); and its predicted IoU."""
        assert self._embedding is not None and self._letterbox is not None
        low_res, iou = self.model.predict_discrete(self._embedding, self._box_prompt(box))
        if shape is None:
            points = points_of(None, None)
        else:
            rows, cols = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
            points = points_of(rows.ravel(), cols.ravel())
        grid = _clamp_to_image(points, self._letterbox, low_res.shape[-1]).view(1, -1, 1, 2)
        logits = F.grid_sample(low_res, grid, mode="bilinear", align_corners=False,
                               padding_mode="border")[0, 0, :, 0]
        prob = torch.sigmoid(logits).cpu().numpy()
        return (prob[None] if shape is None else prob.reshape(1, *shape)), float(iou[0, 0])


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
