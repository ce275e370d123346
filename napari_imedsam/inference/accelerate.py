"""A faster image encoder on the CPU: OpenVINO, where its results equal PyTorch's.

The frozen encoder is exported once per set of encoder weights into OpenVINO's
format (XML + binary weights, no pickle) in the per-user cache, and compiled
for the CPU in fp32. Before first use, its output on a fixed input is compared
with the eager encoder's; a runtime that differs by more than ``TOLERANCE`` is
not used. Anything that fails (OpenVINO missing, export or compile errors)
falls back to PyTorch: the caller is told why, in one line.

A faster approximate arithmetic (bf16) is used only where its Dice check passed
on this CPU for this graph: ``imedsam check-encoder`` measures the shared sets
with both and stores the result beside the graph (:func:`store_approximate_check`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import tempfile
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..model.modeling.imedsam import IMedSAM
from ..model.modeling.lora import merge_lora_qkv

#: Largest absolute difference from the eager encoder a runtime may show.
TOLERANCE = 1e-4
#: Exported encoders kept in the cache (each about 14 MB; one per set of encoder weights).
KEEP_EXPORTS = 8
ENV_DISABLE = "IMEDSAM_NO_OPENVINO"
#: Faster arithmetic that does not equal PyTorch's: used only where a Dice check of it
#: passed on this CPU (``imedsam check-encoder``, issue 24). bf16 on the 2-core AMD
#: EPYC (avx512_bf16), 2026-12-05: 349 ms against 503 ms in fp32, a 256 px image.
APPROXIMATE = ("bf16",)
#: How OpenVINO names each of them when a compiled model reports its precision.
_OV_TYPES = {"bf16": "bfloat16"}
#: The largest change of a shared set's mean Dice an approximate runtime may make.
DICE_TOLERANCE = 0.005
#: Set to use fp32 even where an approximate runtime passed its check.
ENV_EXACT = "IMEDSAM_ENCODER_FP32"
_LOCK = threading.Lock()
#: Compiled encoders of this process by (cache, key, precision), most recent last: a session made per
#: validation (every epoch of a run) and the run's own embedding took one compiled
#: model each, about 0.5 GB apiece on the CPU (issue 23's training memory).
_COMPILED: OrderedDict[tuple[str, str], EncoderRuntime] = OrderedDict()
KEEP_COMPILED = 2
# The exported graph's form: its input shape is fixed to one image, and LoRA is
# merged into the weights it adapts (see ``_export``).
GRAPH_FORM = "static-1-merged"


@dataclass
class EncoderRuntime:
    """How images are embedded: ``describe`` is what the widget shows; ``precision``
    the arithmetic (``fp32``: equal to PyTorch's within ``TOLERANCE``)."""

    describe: str
    run: Callable[[torch.Tensor], torch.Tensor]
    precision: str = "fp32"


def compiled_cache_dir() -> Path:
    """Where exported encoders live: ``$IMEDSAM_CACHE_DIR/openvino`` or the user cache."""
    from ..model.weights import ENV_CACHE_DIR

    env = os.environ.get(ENV_CACHE_DIR)
    if env:
        return Path(env).expanduser() / "openvino"
    import platformdirs

    return Path(platformdirs.user_cache_dir("napari-imedsam")) / "openvino"


def encoder_key(model: IMedSAM, openvino_version: str) -> str:
    """Names one exported graph: the encoder's weights, input size, both versions and
    the graph's form (a graph of another form is exported and checked again)."""
    digest = hashlib.sha256()
    digest.update(f"{model.config.input_size}|{openvino_version}|{torch.__version__}"
                  f"|{GRAPH_FORM}".encode())
    for name, tensor in sorted(model.image_encoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:24]


def _probe(size: int) -> torch.Tensor:
    """The fixed input both runtimes are compared on."""
    generator = torch.Generator().manual_seed(20261202)
    return torch.rand(1, 3, size, size, generator=generator)


def _export(model: IMedSAM, target: Path, ov: object) -> None:
    """Convert the encoder and write ``target`` (+ its ``.bin``) all at once."""
    probe = _probe(model.config.input_size)
    # A copy with each LoRA folded into its qkv weight: the same function (3.8e-6
    # apart on the probe, 2026-12-05), 605 -> 505 ms a 256 px image on the 2-core AMD
    # EPYC (median of 10), as the low-rank products and their scatter into the qkv
    # rows (44 ms) are gone. The session's model is not touched: it may still train.
    encoder = copy.deepcopy(model.image_encoder).eval()
    merge_lora_qkv(encoder)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python-side checks
        graph = ov.convert_model(encoder, example_input=probe)
    del encoder
    # One image of one size at a time (``run`` feeds them one by one): with the shape
    # fixed, OpenVINO plans its buffers once and shares them. Its first inference then
    # adds 159 MB where the dynamic graph added 324 MB, at the same speed (611-625 ms
    # a 256 px image, AMD EPYC, 2 cores, 2026-12-05); issue 23's memory targets.
    graph.reshape(list(probe.shape))
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=target.parent))
    try:
        # Weights stay fp32: OpenVINO would store them as fp16 by default.
        ov.save_model(graph, staging / target.name, compress_to_fp16=False)
        # The XML names its .bin; it goes into place last, so a reader that
        # finds the XML finds a complete pair.
        os.replace(staging / target.with_suffix(".bin").name, target.with_suffix(".bin"))
        os.replace(staging / target.name, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _prune(target.parent, keep=target)


def _prune(folder: Path, keep: Path) -> None:
    """Drop the least recently exported graphs beyond ``KEEP_EXPORTS``."""
    graphs = sorted(folder.glob("encoder-*.xml"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in graphs[KEEP_EXPORTS:]:
        if old == keep:
            continue
        for path in (old, old.with_suffix(".bin"), old.with_suffix(".json"),
                     *old.parent.glob(f"{old.stem}.*.json")):
            path.unlink(missing_ok=True)


def _files(target: Path) -> tuple[Path, Path]:
    return target, target.with_suffix(".bin")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _hashes(target: Path) -> dict[str, str]:
    """SHA-256 of the graph's two files, by name (empty when they are not there)."""
    try:
        return {path.name: _sha256(path) for path in _files(target)}
    except OSError:
        return {}


def _trusted(record_path: Path, key: str, hashes: dict[str, str], **expected: object
             ) -> dict | None:
    """The record at ``record_path`` when it names graph ``key``, the files it was made
    on are still these (``hashes``, from :func:`_hashes`) and each of ``expected``'s
    fields has its value (a Dice check's precision, CPU and outcome); else None."""
    try:
        record = json.loads(record_path.read_text())
        if (record.get("key") != key or not hashes or record.get("sha256") != hashes
                or any(record.get(name) != value for name, value in expected.items())):
            return None
        return record
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def approximate_record(cache: Path, key: str, precision: str) -> Path:
    """Where the Dice check of an approximate ``precision`` of graph ``key`` is kept."""
    return cache / f"encoder-{key}.{precision}.json"


def cpu_name(core: object) -> str:
    """The CPU as OpenVINO names it: a check made on one CPU says nothing of another
    (a cache folder in a home shared between machines)."""
    return str(core.get_property("CPU", "FULL_DEVICE_NAME"))


def _write_json(path: Path, data: dict) -> None:
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    staging.write_text(json.dumps(data, indent=1))
    os.replace(staging, path)


def store_approximate_check(model: IMedSAM, precision: str, result: dict, *,
                            cache: Path | None = None) -> Path:
    """Record a Dice check of ``precision`` (``result``: at least ``passed``) with the
    hashes of the graph it ran on and this CPU's name; returns the record's path.
    The graph must be exported (run :func:`openvino_encoder` first)."""
    import openvino as ov

    if precision not in APPROXIMATE:
        raise ValueError(f"precision must be one of {APPROXIMATE}, got {precision!r}")
    cache = cache or compiled_cache_dir()
    key = encoder_key(model, ov.__version__)
    target = cache / f"encoder-{key}.xml"
    if not target.exists():
        raise RuntimeError(f"no exported encoder at {target}: embed an image first")
    record = {**result, "key": key, "precision": precision, "cpu": cpu_name(ov.Core()),
              "openvino": ov.__version__,
              "sha256": _hashes(target)}
    path = approximate_record(cache, key, precision)
    _write_json(path, record)
    with _LOCK:  # the next session compiles what the record now says
        for name in [k for k in _COMPILED if k[:2] == (str(cache), key)]:
            del _COMPILED[name]
    return path


def openvino_encoder(model: IMedSAM, *, cache: Path | None = None,
                     precision: str | None = None) -> EncoderRuntime:
    """The encoder through OpenVINO on the CPU (exported once, then from the cache).

    ``precision``: ``None`` chooses: fp32, or an :data:`APPROXIMATE` one where a
    passed Dice check of it is stored for this graph on this CPU
    (:func:`store_approximate_check`) and ``$IMEDSAM_ENCODER_FP32`` is not set;
    ``"fp32"`` or one of :data:`APPROXIMATE` asks for it (the check itself).
    Raises ``RuntimeError`` with the reason when it cannot be used.
    """
    if os.environ.get(ENV_DISABLE):
        raise RuntimeError(f"OpenVINO is turned off (${ENV_DISABLE})")
    if precision is not None and precision != "fp32" and precision not in APPROXIMATE:
        raise ValueError(f"precision must be fp32 or one of {APPROXIMATE}, got {precision!r}")
    try:
        import openvino as ov
    except ImportError as exc:
        raise RuntimeError(f"OpenVINO is not installed ({exc})") from exc
    cache = cache or compiled_cache_dir()
    key = encoder_key(model, ov.__version__)
    target = cache / f"encoder-{key}.xml"
    checked = cache / f"encoder-{key}.json"
    # A runtime asked for by name (the check's) is kept apart from the chosen one,
    # so no session picks up an unchecked approximation.
    name = (str(cache), key, precision or "chosen")
    with _LOCK:
        if name in _COMPILED:
            _COMPILED.move_to_end(name)
            return _COMPILED[name]
    with _LOCK:  # one export at a time in this process (a worker and the main thread)
        hashes = _hashes(target)
        trusted = _trusted(checked, key, hashes)
        if trusted is None:
            # Never exported, or its files are not the ones checked (changed on disk,
            # or checked by a version that kept no hashes): exported again.
            checked.unlink(missing_ok=True)
            _export(model, target, ov)
            hashes = _hashes(target)
        core = ov.Core()
        graph = core.read_model(target)

    def compile_as(hint: str) -> object:
        return core.compile_model(graph, "CPU", {"INFERENCE_PRECISION_HINT": hint,
                                                 "PERFORMANCE_HINT": "LATENCY"})

    compiled = None
    if trusted is None:
        compiled = compile_as("f32")
        probe = _probe(model.config.input_size)
        with torch.no_grad():
            expected = model.image_encoder(probe)
        difference = float((_runner(compiled)(probe) - expected).abs().max())
        if not difference <= TOLERANCE:
            raise RuntimeError(f"OpenVINO's encoder differs from PyTorch's by {difference:.2g}")
        # The hashes of the files that were compared: a graph changed on disk after
        # this (a quarter of its floats scaled gave Dice 0.85 without a word before,
        # issue 23) no longer matches them and is exported again.
        _write_json(checked, {"max_abs_difference": difference, "key": key,
                              "sha256": hashes})
    chosen, describe = "fp32", "OpenVINO (CPU, fp32)"
    if precision is None and not os.environ.get(ENV_EXACT):
        for candidate in APPROXIMATE:
            record = _trusted(approximate_record(cache, key, candidate), key, hashes,
                              precision=candidate, cpu=cpu_name(core), passed=True)
            if record is not None:
                chosen = candidate
                describe = (f"OpenVINO (CPU, {candidate}; Dice within "
                            f"{record.get('tolerance', DICE_TOLERANCE)} of fp32, checked "
                            f"{record.get('date', '?')})")
                break
    elif precision is not None and precision != "fp32":
        chosen, describe = precision, f"OpenVINO (CPU, {precision}, unchecked)"
    if compiled is None or chosen != "fp32":
        compiled = None  # the check's buffers go before another is built (issue 23)
        compiled = compile_as("f32" if chosen == "fp32" else chosen)
    if chosen != "fp32" and _OV_TYPES[chosen] not in str(
            compiled.get_property("INFERENCE_PRECISION_HINT")):
        # A CPU without it: OpenVINO quietly keeps fp32, which is not what was checked
        # or asked for.
        kept = compiled.get_property("INFERENCE_PRECISION_HINT")
        if precision is not None:
            raise RuntimeError(f"this CPU does not run the encoder in {chosen} (OpenVINO "
                               f"keeps {kept}): there is nothing faster to check")
        chosen, describe = "fp32", "OpenVINO (CPU, fp32)"
        compiled = compile_as("f32")
    runtime = EncoderRuntime(describe, _runner(compiled), precision=chosen)
    with _LOCK:
        _COMPILED[name] = runtime
        while len(_COMPILED) > KEEP_COMPILED:
            _COMPILED.popitem(last=False)
    return runtime


def _runner(compiled: object) -> Callable[[torch.Tensor], torch.Tensor]:
    """``(B, 3, S, S) -> (B, D, g, g)`` through a compiled one-image graph."""
    request_lock = threading.Lock()

    def run(images: torch.Tensor) -> torch.Tensor:
        outputs = []
        with request_lock:  # one compiled model, called from several threads
            for image in images.detach().to("cpu", torch.float32).numpy():
                outputs.append(torch.from_numpy(np.array(compiled(image[None])[0])))
        return torch.cat(outputs)

    return run


def choose_encoder(model: IMedSAM, device: torch.device, precision: str,
                   on_note: Callable[[str], None] | None = None) -> EncoderRuntime:
    """OpenVINO where it applies (CPU, fp32, an encoder it can run), else PyTorch."""
    eager = EncoderRuntime(f"PyTorch ({device.type}, {precision})", model.embed)
    if device.type != "cpu" or precision != "fp32" or model.config.encoder.kind != "tinyvit":
        return eager
    try:
        return openvino_encoder(model)
    except Exception as exc:  # noqa: BLE001 - any failure means: use PyTorch
        if on_note is not None:
            on_note(f"encoder: PyTorch, not OpenVINO ({' '.join(str(exc).split())[:200]})")
        return eager
