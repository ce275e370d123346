"""The OpenVINO encoder: same embeddings as PyTorch, exported once, honest fallback."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_imedsam.inference import accelerate
from napari_imedsam.inference.session import SegmentationSession
from napari_imedsam.model import build_model

pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def lite():
    return build_model("medsam_lite", checkpoint="medsam_lite")


@pytest.fixture(scope="module")
def shared_cache(private_cache):
    """The test run's cache (conftest): exporting takes seconds, so it happens once."""
    return private_cache


@pytest.fixture(autouse=True)
def _no_compiled_encoders(monkeypatch):
    """Each test starts as a new process would: no encoder compiled in it yet."""
    monkeypatch.setattr(accelerate, "_COMPILED", type(accelerate._COMPILED)())


@pytest.fixture
def cache(shared_cache, monkeypatch):
    monkeypatch.setenv("IMEDSAM_CACHE_DIR", str(shared_cache))
    monkeypatch.delenv(accelerate.ENV_DISABLE, raising=False)
    return shared_cache / "openvino"


def test_openvino_equals_pytorch_and_is_exported_once(lite, cache, monkeypatch):
    exports = []
    real = accelerate._export
    monkeypatch.setattr(accelerate, "_export", lambda *a: exports.append(1) or real(*a))
    runtime = accelerate.choose_encoder(lite, torch.device("cpu"), "fp32")
    assert runtime.describe.startswith("OpenVINO")
    images = torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = lite.image_encoder(images)
    got = runtime.run(images)
    assert got.shape == (2, 256, 64, 64)
    assert float((got - expected).abs().max()) <= 1e-4
    again = accelerate.choose_encoder(lite, torch.device("cpu"), "fp32")
    assert again.describe.startswith("OpenVINO") and exports == [1]
    assert sorted(p.suffix for p in cache.iterdir()) == [".bin", ".json", ".xml"]


def test_the_graph_has_lora_merged_and_still_equals_pytorch(lite, cache, tmp_path, monkeypatch):
    """LoRA is folded into the qkv weights of the exported graph: no low-rank products
    and no scatter into the rows (44 ms of 605 on a 2-core AMD EPYC), the same output,
    also with adapters that are not the identity (a fine-tuned adapter)."""
    import openvino as ov

    from napari_imedsam.model.modeling.lora import LoRAQKV

    layers = [m for m in lite.image_encoder.modules() if isinstance(m, LoRAQKV)]
    generator = torch.Generator().manual_seed(5)
    try:
        with torch.no_grad():
            for layer in layers:
                for b in layer.lora_B.values():
                    b.copy_(torch.randn(b.shape, generator=generator) * 0.05)
        monkeypatch.setenv("IMEDSAM_CACHE_DIR", str(tmp_path))
        runtime = accelerate.openvino_encoder(lite)
        graph = ov.Core().read_model(next((tmp_path / "openvino").glob("encoder-*.xml")))
        kinds = {op.get_type_name() for op in graph.get_ops()}
        assert "ScatterElementsUpdate" not in kinds and "ScatterUpdate" not in kinds
        images = torch.rand(1, 3, 256, 256, generator=generator)
        with torch.no_grad():
            expected = lite.image_encoder(images)
        # The session's model keeps its LoRA layers (it may still train).
        assert sum(isinstance(m, LoRAQKV) for m in lite.image_encoder.modules()) == len(layers)
        assert float((runtime.run(images) - expected).abs().max()) <= 1e-4
    finally:
        with torch.no_grad():
            for layer in layers:
                for b in layer.lora_B.values():
                    b.zero_()


def test_changed_encoder_weights_get_their_own_graph(lite, cache):
    key = accelerate.encoder_key(lite, "x")
    gate = lite.image_encoder.frequency.gates[0]
    with torch.no_grad():
        gate.fill_(0.1)
    try:
        assert accelerate.encoder_key(lite, "x") != key
    finally:
        with torch.no_grad():
            gate.zero_()
    assert accelerate.encoder_key(lite, "x") == key


def test_fallback_to_pytorch_says_why(lite, cache, tmp_path, monkeypatch):
    notes = []
    monkeypatch.setenv(accelerate.ENV_DISABLE, "1")
    runtime = accelerate.choose_encoder(lite, torch.device("cpu"), "fp32", notes.append)
    assert runtime.describe == "PyTorch (cpu, fp32)" and "turned off" in notes[0]
    monkeypatch.delenv(accelerate.ENV_DISABLE)

    def broken(*args):  # noqa: ANN002
        raise RuntimeError("conversion failed: unsupported op")

    monkeypatch.setattr(accelerate, "_export", broken)
    monkeypatch.setenv("IMEDSAM_CACHE_DIR", str(tmp_path))  # nothing exported there yet
    notes.clear()
    runtime = accelerate.choose_encoder(lite, torch.device("cpu"), "fp32", notes.append)
    assert runtime.describe.startswith("PyTorch") and "unsupported op" in notes[0]
    # bf16 or a GPU: PyTorch, silently (nothing to fall back from).
    assert accelerate.choose_encoder(lite, torch.device("cpu"), "bf16").describe.startswith("PyTorch")


def test_a_runtime_that_disagrees_is_refused(lite, cache, tmp_path, monkeypatch):
    accelerate.openvino_encoder(lite)  # exported (or already) in the shared cache
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in cache.glob("encoder-*"):
        if path.suffix in (".xml", ".bin"):  # not the record of the passed check
            (broken / path.name).write_bytes(path.read_bytes())
    weights = next(broken.glob("*.bin"))
    data = bytearray(weights.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 4000] = bytes(4000)  # zero some weights
    weights.write_bytes(bytes(data))

    def export_broken(model, target, ov):  # noqa: ANN001, ANN202 - a faulty conversion
        target.parent.mkdir(parents=True, exist_ok=True)
        for path in broken.iterdir():
            (target.parent / path.name).write_bytes(path.read_bytes())

    monkeypatch.setattr(accelerate, "_export", export_broken)
    monkeypatch.setenv("IMEDSAM_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(RuntimeError, match="differs from PyTorch"):
        accelerate.openvino_encoder(lite)
    assert not list((tmp_path / "cache" / "openvino").glob("*.json"))  # never trusted


def test_session_uses_it_and_caches_embeddings(lite, cache):
    session = SegmentationSession(lite, device="cpu", mode="sam")
    image = np.random.default_rng(0).integers(0, 256, (120, 200, 3), dtype=np.uint8)
    session.set_image(image)
    assert session.encoder_runtime().describe.startswith("OpenVINO")
    eager = SegmentationSession(lite, device="cpu", mode="sam", accelerate=False)
    eager.set_image(image)
    assert eager.encoder_runtime().describe == "PyTorch (cpu, fp32)"
    assert float((session._embedding - eager._embedding).abs().max()) <= 1e-4


def test_a_cached_graph_changed_on_disk_is_exported_again(lite, cache, monkeypatch):
    """Issue 23: scaling a quarter of the cached graph's floats changed the masks
    (Dice 0.85 against the clean run) without a word; the files' hashes are now
    recorded with the equality check and compared at every first use."""
    runtime = accelerate.choose_encoder(lite, torch.device("cpu"), "fp32")
    assert runtime.describe.startswith("OpenVINO")
    weights = next(cache.glob("encoder-*.bin"))
    values = np.fromfile(weights, np.float32)
    values[: len(values) // 4] *= 1.5
    values.tofile(weights)
    exports = []
    real = accelerate._export
    monkeypatch.setattr(accelerate, "_export", lambda *a: exports.append(1) or real(*a))
    images = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(4))
    monkeypatch.setattr(accelerate, "_COMPILED", type(accelerate._COMPILED)())  # a new process
    again = accelerate.choose_encoder(lite, torch.device("cpu"), "fp32")
    assert exports == [1]  # found changed, exported again
    with torch.no_grad():
        expected = lite.image_encoder(images)
    assert float((again.run(images) - expected).abs().max()) <= 1e-4
    # Untouched files are trusted as they are: no export, no new comparison.
    accelerate._COMPILED.clear()
    accelerate.choose_encoder(lite, torch.device("cpu"), "fp32")
    assert exports == [1]
    # In one process, a compiled encoder serves every session (one per validation).
    assert accelerate.choose_encoder(lite, torch.device("cpu"), "fp32").run is \
        accelerate.choose_encoder(lite, torch.device("cpu"), "fp32").run


def _has_bf16() -> bool:
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


needs_bf16 = pytest.mark.skipif(not _has_bf16(), reason="this CPU runs no bf16")


def _record(lite, cache, **changes):  # noqa: ANN001, ANN003, ANN202
    """Store a passed bf16 check for the shared graph, with ``changes`` applied."""
    import json

    path = accelerate.store_approximate_check(lite, "bf16", {"passed": True,
                                                             "date": "2026-12-05"})
    if changes:
        record = json.loads(path.read_text())
        record.update(changes)
        path.write_text(json.dumps(record))
    return path


@needs_bf16
def test_bf16_is_used_only_where_its_dice_check_passed_on_this_cpu(lite, cache, monkeypatch):
    """Issue 24: an approximate encoder only after a passed check of this graph on this
    CPU; not for another CPU's record, a failed one, a changed graph, or when fp32 is
    asked for; the check's own runtimes never serve a session."""
    fp32 = accelerate.openvino_encoder(lite)  # exported in the shared cache
    assert fp32.precision == "fp32" and fp32.describe == "OpenVINO (CPU, fp32)"
    # The check's runtime, asked for by name, is not what sessions get.
    forced = accelerate.openvino_encoder(lite, precision="bf16")
    assert forced.precision == "bf16" and "unchecked" in forced.describe
    assert accelerate.openvino_encoder(lite) is fp32
    path = _record(lite, cache)
    try:
        chosen = accelerate.openvino_encoder(lite)
        assert chosen.precision == "bf16" and "Dice within 0.005" in chosen.describe
        session = SegmentationSession(lite, device="cpu", mode="sam")
        session.set_image(np.zeros((64, 64, 3), np.uint8))
        assert session.encoder_runtime().precision == "bf16"
        images = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(6))
        with torch.no_grad():
            expected = lite.image_encoder(images)
        got = chosen.run(images)
        assert got.shape == expected.shape and float((got - expected).abs().max()) < 0.5
        monkeypatch.setenv(accelerate.ENV_EXACT, "1")
        accelerate._COMPILED.clear()
        assert accelerate.openvino_encoder(lite).precision == "fp32"
        monkeypatch.delenv(accelerate.ENV_EXACT)
        for changes in ({"cpu": "another CPU"}, {"passed": False}, {"key": "other"},
                        {"sha256": {"encoder.xml": "0" * 64}}):
            _record(lite, cache, **changes)
            accelerate._COMPILED.clear()
            assert accelerate.openvino_encoder(lite).precision == "fp32", changes
        with pytest.raises(ValueError, match="precision"):
            accelerate.openvino_encoder(lite, precision="int4")
    finally:
        path.unlink(missing_ok=True)
        accelerate._COMPILED.clear()


@needs_bf16
def test_the_check_measures_both_runtimes_on_every_set(lite, cache):
    """``check_encoder``: each set's mean Dice with fp32 and bf16 on the same objects,
    their change, each object's range, the times, and ``passed`` by the tolerance."""
    from napari_imedsam.train.data import LabeledImage
    from napari_imedsam.train.encoder_check import check_encoder, shared_sets
    from napari_imedsam.train.synthetic import synthetic_sample

    rng = np.random.default_rng(11)
    sets = {name: [LabeledImage(f"{name}{i}", *synthetic_sample(rng, size=96, kind=kind))
                   for i in range(2)] for name, kind in (("rgb", "rgb"), ("ct", "ct"))}
    result = check_encoder(lite, sets, "bf16", label_size=64, repeats=1)
    assert set(result["sets"]) == {"rgb", "ct"}
    for got in result["sets"].values():
        assert got["objects"] >= 2 and 0.0 <= got["dice_fp32"] <= 1.0
        assert got["change"] == pytest.approx(got["dice_bf16"] - got["dice_fp32"])
        assert got["object_change_min"] <= got["change"] <= got["object_change_max"]
    assert result["passed"] == all(abs(s["change"]) <= 0.005 for s in result["sets"].values())
    assert result["encoder_ms"]["fp32"] > 0 and result["encoder_ms"]["bf16"] > 0
    with pytest.raises(FileNotFoundError, match="kvasir-sessile"):
        shared_sets(cache / "nowhere")


def test_a_cpu_that_keeps_fp32_is_not_told_bf16(lite, cache, monkeypatch):
    """Where OpenVINO quietly keeps fp32 for a bf16 request (a CPU without it), the check
    refuses to run and a session with a passed record says fp32, as it runs."""
    accelerate.openvino_encoder(lite)
    path = _record(lite, cache)
    monkeypatch.setattr(accelerate, "_OV_TYPES", {"bf16": "a type no CPU reports"})
    try:
        accelerate._COMPILED.clear()
        runtime = accelerate.openvino_encoder(lite)
        assert runtime.precision == "fp32" and runtime.describe == "OpenVINO (CPU, fp32)"
        with pytest.raises(RuntimeError, match="does not run the encoder in bf16"):
            accelerate.openvino_encoder(lite, precision="bf16")
    finally:
        path.unlink(missing_ok=True)
        accelerate._COMPILED.clear()


def test_check_encoder_command_says_what_is_missing(tmp_path, capsys):
    from napari_imedsam.cli import main

    assert main(["check-encoder", "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("imedsam check-encoder: error:") and "\n" not in err
    assert str(tmp_path / "kvasir-sessile") in err
