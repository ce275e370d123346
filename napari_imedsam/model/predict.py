"""Box -> probability map on an output grid over the image, restricted to the box.

Points far outside the box are background for a box-prompted model, so only
the grid cells inside the box plus a margin are decoded; cost follows the box,
not the image. The inference engine builds its adaptive evaluation on this.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .modeling.imedsam import IMedSAM
from .transforms import Letterbox


@dataclass
class GridResult:
    """Maps of shape ``(K, H', W')``; zero outside ``region``."""

    prob: np.ndarray
    coarse_prob: np.ndarray
    uncertainty: np.ndarray
    refined: np.ndarray  # (H', W') bool
    region: tuple[int, int, int, int]  # row0, col0, row1, col1 actually decoded


def box_region(
    box: np.ndarray, image_shape: tuple[int, int], out_shape: tuple[int, int], margin: float
) -> tuple[int, int, int, int]:
    """Grid window covering ``box`` (image pixels) grown by ``margin`` x its size per side."""
    x0, y0, x1, y1 = (float(v) for v in box)
    grow_x, grow_y = margin * (x1 - x0) + 1.0, margin * (y1 - y0) + 1.0
    fy, fx = out_shape[0] / image_shape[0], out_shape[1] / image_shape[1]
    row0 = int(np.clip(np.floor((y0 - grow_y) * fy), 0, out_shape[0]))
    row1 = int(np.clip(np.ceil((y1 + grow_y) * fy), 0, out_shape[0]))
    col0 = int(np.clip(np.floor((x0 - grow_x) * fx), 0, out_shape[1]))
    col1 = int(np.clip(np.ceil((x1 + grow_x) * fx), 0, out_shape[1]))
    return row0, col0, max(row1, row0 + 1), max(col1, col0 + 1)


@torch.no_grad()
def predict_box_grid(
    model: IMedSAM,
    embedding: torch.Tensor,
    letterbox: Letterbox,
    box: np.ndarray,
    out_shape: tuple[int, int],
    *,
    margin: float = 0.25,
    chunk_size: int = 65536,
    generator: torch.Generator | None = None,
    top_k_ratio: float | None = None,
) -> GridResult:
    """Decode one box on an ``out_shape`` grid covering the image.

    Args:
        embedding: ``(1, D, g, g)`` from ``model.embed`` of the letterboxed image.
        box: x0, y0, x1, y1 in image pixels.
        out_shape: output grid ``(H', W')`` over the whole image (any scale).
    """
    device = embedding.device
    box_input = torch.as_tensor(letterbox.boxes_to_input(box), dtype=torch.float32, device=device)
    prompt = model.encode_prompt(embedding, box_input)
    region = box_region(np.asarray(box), (letterbox.height, letterbox.width), out_shape, margin)
    centres = letterbox.grid_centres(out_shape, region)
    rows, cols = centres.shape[:2]
    points = torch.as_tensor(letterbox.normalize(centres.reshape(-1, 2)), dtype=torch.float32,
                             device=device)
    pred = model.decode_points(prompt, points, generator=generator, chunk_size=chunk_size,
                               top_k_ratio=top_k_ratio)
    k = pred.logits.shape[1]

    def paste(values: torch.Tensor) -> np.ndarray:
        full = np.zeros((values.shape[0], *out_shape), dtype=np.float32)
        r0, c0, r1, c1 = region
        full[:, r0:r1, c0:c1] = values.float().reshape(-1, rows, cols).cpu().numpy()
        return full

    refined = paste(pred.refined[0][None].float())[0] > 0
    return GridResult(
        prob=paste(pred.prob[0]),
        coarse_prob=paste(pred.coarse_prob[0]),
        uncertainty=paste(pred.uncertainty[0].reshape(k, -1)),
        refined=refined,
        region=region,
    )
