"""``imedsam bench``: the numbers the inference targets are judged by, on this machine.

- Encoder: vit_b shapes (random weights: timing does not depend on them) at
  384 and 1024, batch 1, with the precision ``auto`` picks (bf16 where the
  hardware has it) and its cosine similarity to fp32.
- The reference: SAM's own prompt path (prompt encoder + mask decoder, vit_b
  shapes, 64 x 64 embedding as SAM tools use) plus upsampling to the image.
- box -> mask + uncertainty with the ``demo`` model on a cached embedding of a
  real-looking image (synthetic, with the box of its object), at 384 and 896,
  adaptive and dense.
- Peak memory of an 896 x 896 decode, adaptive and dense, above what was in use
  before it (``_peak_rise_mb``).
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from ..model.build import build_model
from ..model.devices import autocast, autocast_dtype, resolve_device


def _median_ms(fn: Callable[[], Any], repeats: int, device: torch.device) -> float:
    fn()  # warm-up: allocations, kernel selection
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def _rss_mb() -> tuple[float, float]:
    """(current, peak) resident memory of this process in MB, from /proc."""
    values = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                values[line.split(":")[0]] = int(line.split()[1]) / 1024
    return values.get("VmRSS", float("nan")), values.get("VmHWM", float("nan"))


def _return_free_heap() -> None:
    """Give the C heap's free blocks back to the OS (glibc), so that a decode has to
    raise the resident size for what it uses rather than reusing blocks freed earlier."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError, TypeError):
        pass  # not glibc: the measurement is then a lower bound


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


def _peak_rise_mb(run: Callable[[], Any], device: torch.device) -> float | None:
    """How far memory in use rises above its level before ``run()``, in MB.

    CUDA: the caching allocator's own peak count. CPU: the process's peak
    resident size (Linux), after the heap's free blocks went back to the OS,
    so that memory freed by earlier work is not silently reused; elsewhere None.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        run()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    _return_free_heap()
    now, _ = _rss_mb()
    if not _reset_peak_rss():
        return None
    run()
    return _rss_mb()[1] - now


@torch.no_grad()
def run_benchmark(device_name: str = "auto", repeats: int = 5,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    from ..model.loading import load_model
    from ..train.data import box_of
    from ..train.synthetic import synthetic_sample
    from .session import SegmentationSession

    device = resolve_device(device_name)
    results: dict[str, Any] = {
        "device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }
    dtype = autocast_dtype(device, "auto")
    results["encoder_precision"] = str(dtype).replace("torch.", "") if dtype else "fp32"
    torch.manual_seed(0)
    for size in (384, 1024):
        model = build_model("vit_b", input_size=size).to(device).eval()
        image = torch.rand(1, 3, size, size, device=device) * 255

        def encode() -> torch.Tensor:
            with autocast(device, "auto"):
                return model.embed(image)

        results[f"encoder_{size}_ms"] = _median_ms(encode, 1 if size == 1024 else repeats, device)
        if dtype is not None:
            cos = F.cosine_similarity(encode().float().flatten(), model.embed(image).flatten(), 0)
            results[f"encoder_{size}_cosine_to_fp32"] = float(cos)
        log(f"encoder {size}: {results[f'encoder_{size}_ms']:.0f} ms")
        if size == 1024:
            # SAM's own prompt path on a cached 64 x 64 embedding, upsampled to 1024 as SAM does.
            emb = torch.randn(1, 256, 64, 64, device=device)
            box = torch.tensor([[300.0, 280.0, 620.0, 560.0]], device=device)

            def sam_prompt() -> torch.Tensor:
                low, _ = model.predict_discrete(emb, box)
                return F.interpolate(low, (1024, 1024), mode="bilinear", align_corners=False) > 0

            results["sam_prompt_ms"] = _median_ms(sam_prompt, repeats * 2, device)
            log(f"SAM prompt path: {results['sam_prompt_ms']:.1f} ms")

    demo = load_model("demo", device=device)
    image, labels = synthetic_sample(np.random.default_rng(3), size=512, kind="rgb")
    box = np.asarray(box_of(labels == 1), dtype=np.float64)
    session = SegmentationSession(demo, device=device, mode="imedsam")
    session.set_image(image)
    # A first decode, so one-time costs do not count as the measured decode's memory.
    session.predict(box[None], out_shape=(384, 384), region=(0, 0, *session.image_shape))
    for key, adaptive in (("peak_mem_896_mb", True), ("peak_mem_896_dense_mb", False)):
        results[key] = _peak_rise_mb(lambda a=adaptive: session.predict(
            box[None], out_shape=(896, 896), region=(0, 0, *session.image_shape), adaptive=a),
            device)
        log(f"peak memory of a {'adaptive' if adaptive else 'dense'} 896x896 decode: "
            f"{results[key]:.0f} MB" if results[key] is not None else "peak memory: unknown")
    for out in (384, 896):
        for kind in ("adaptive", "dense"):
            def decode(kind: str = kind, out: int = out) -> Any:
                return session.predict(box[None], out_shape=(out, out),
                                       region=(0, 0, *session.image_shape),
                                       adaptive=kind == "adaptive")

            results[f"{kind}_{out}_ms"] = _median_ms(
                decode, repeats if kind == "adaptive" else max(1, repeats // 2), device)
            log(f"{kind} {out}x{out}: {results[f'{kind}_{out}_ms']:.0f} ms")
    sam = results["sam_prompt_ms"]
    results["ratio_adaptive_384_to_sam"] = results["adaptive_384_ms"] / sam
    results["ratio_adaptive_896_to_sam"] = results["adaptive_896_ms"] / sam
    results["ratio_adaptive_896_to_384"] = results["adaptive_896_ms"] / results["adaptive_384_ms"]
    results["speedup_adaptive_vs_dense_896"] = results["dense_896_ms"] / results["adaptive_896_ms"]
    return results
