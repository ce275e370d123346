"""Adapter checkpoints: safetensors + JSON, atomic, checked on load."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from napari_imedsam.model import build_model, load_adapter, read_adapter, save_adapter
from napari_imedsam.model.checkpoint import adapter_state_dict, json_path
from napari_imedsam.model.modeling.imedsam import grid_points
from napari_imedsam.model.weights import CheckpointError


def _trained_like(seed: int = 0, **kwargs):
    """A tiny model whose adapter weights differ from a fresh one's."""
    torch.manual_seed(seed)
    model = build_model("tiny", **kwargs)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
        model.implicit_decoder.coarse.trunk[1].running_mean.uniform_(-0.2, 0.2)
    return model.eval()


def _predict(model):
    torch.manual_seed(0)
    images = torch.rand(1, 3, 64, 64) * 255
    with torch.no_grad():
        prompt = model.encode_prompt(model.embed(images), torch.tensor([[8.0, 8, 50, 40]]))
        return model.decode_points(prompt, grid_points(10, 10),
                                   generator=torch.Generator().manual_seed(0))


def test_roundtrip_reproduces_predictions(tmp_path):
    trained = _trained_like()
    # Share the frozen base so only the adapter differs between the two models.
    fresh = _trained_like(seed=1)
    fresh.load_state_dict(
        {k: v for k, v in trained.state_dict().items() if k not in adapter_state_dict(trained)},
        strict=False,
    )
    path = save_adapter(trained, tmp_path / "run1" / "adapter.safetensors", extra={"epochs": 3})
    assert path.is_file() and json_path(path).is_file()
    config = json.loads(json_path(path).read_text())
    assert config["model"]["variant"] == "tiny"
    assert config["model"]["adapters"]["lora_rank"] == 4
    assert config["model"]["adapters"]["lora_targets"] == ["q", "v"]
    assert config["model"]["adapters"]["frequency_mode"] == "amplitude"
    assert config["extra"] == {"epochs": 3} and "package_version" in config
    assert set(config["base_model"]) == {"name", "sha256"}
    before = _predict(fresh).logits
    assert not torch.allclose(before, _predict(trained).logits)
    load_adapter(fresh, path)
    assert torch.allclose(_predict(fresh).logits, _predict(trained).logits, atol=1e-6)
    # Only the adapter scope is stored: no frozen encoder weights.
    tensors, _ = read_adapter(path)
    assert not any(k.startswith("image_encoder.vit.patch_embed") for k in tensors)
    assert any(".lora_B." in k for k in tensors)
    assert any(k.endswith("running_mean") for k in tensors)


def test_no_silent_overwrite_and_no_temp_files(tmp_path):
    model = _trained_like()
    path = save_adapter(model, tmp_path / "a.safetensors")
    first = path.read_bytes()
    with pytest.raises(FileExistsError):
        save_adapter(_trained_like(seed=3), path)
    assert path.read_bytes() == first
    save_adapter(_trained_like(seed=3), path, overwrite=True)
    assert path.read_bytes() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "a.safetensors"]


@pytest.mark.parametrize(
    "kwargs, field",
    [({"num_classes": 2}, "num_classes"), ({"lora_rank": 8}, "adapters"),
     ({"frequency_mode": "phase"}, "adapters"), ({"input_size": 128}, "input_size")],
)
def test_mismatch_is_refused_with_reasons(tmp_path, kwargs, field):
    path = save_adapter(_trained_like(), tmp_path / "a.safetensors")
    other = build_model("tiny", **kwargs)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(CheckpointError, match=field):
        load_adapter(other, path)
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())


def test_base_weights_mismatch_is_refused(tmp_path):
    model = _trained_like()
    model.base_weights = {"name": "sam_vit_b_01ec64.pth", "sha256": "a" * 64}
    path = save_adapter(model, tmp_path / "a.safetensors")
    other = _trained_like()
    other.base_weights = {"name": "medsam_vit_b.pth", "sha256": "b" * 64}
    with pytest.raises(CheckpointError, match="base weights"):
        load_adapter(other, path)


def test_truncated_and_foreign_files(tmp_path):
    path = save_adapter(_trained_like(), tmp_path / "a.safetensors")
    truncated = tmp_path / "t.safetensors"
    truncated.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    text = tmp_path / "notes.safetensors"
    text.write_text("hello")
    pth = tmp_path / "model.pth"
    torch.save({"w": torch.zeros(3)}, pth)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(3)}, str(foreign))
    model = build_model("tiny")
    for bad in (truncated, text, pth):
        with pytest.raises(CheckpointError, match="safetensors"):
            load_adapter(model, bad)
    with pytest.raises(CheckpointError, match="not a napari-imedsam adapter"):
        load_adapter(model, foreign)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_adapter(model, tmp_path / "missing.safetensors")


def test_full_scope_holds_every_weight(tmp_path):
    model = _trained_like()
    path = save_adapter(model, tmp_path / "full.safetensors", scope="full")
    tensors, config = read_adapter(path)
    assert config["scope"] == "full"
    assert set(tensors) == set(model.state_dict())


def test_vit_b_binary_adapter_is_under_8_mb(tmp_path):
    model = build_model("vit_b")
    path = save_adapter(model, tmp_path / "vit_b.safetensors")
    assert path.stat().st_size < 8 * 1024 * 1024
    loaded = build_model("vit_b")
    load_adapter(loaded, path)
    key = "implicit_decoder.coarse.heads.weight"
    assert torch.equal(loaded.state_dict()[key], model.state_dict()[key])


@pytest.mark.parametrize("damage", ["nan", "inf", "int"])
def test_adapters_with_non_numbers_or_integer_weights_are_refused(tmp_path, damage):
    """Such files loaded before and answered every box with an empty mask and NaN
    uncertainty; now they are refused, naming the file and the tensor."""
    from safetensors import safe_open

    path = save_adapter(_trained_like(), tmp_path / "a.safetensors")
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    key = next(k for k, v in tensors.items() if k.startswith("implicit_decoder.")
               and v.is_floating_point() and v.ndim == 2)
    if damage == "int":
        tensors[key] = tensors[key].round().to(torch.int32)
    else:
        tensors[key][0, 0] = float(damage)
    save_file(tensors, str(path), metadata=metadata)
    words = "floating-point" if damage == "int" else "NaN or infinite"
    with pytest.raises(CheckpointError, match=f"a.safetensors: {key.replace('.', '[.]')} .*{words}"):
        load_adapter(build_model("tiny"), path)


def test_the_widget_takes_an_adapters_classes_from_its_header_as_the_model_does(tmp_path):
    """Issue 23: before an adapter loaded, the widget listed the class names of the
    JSON beside it while the model used the header's. One reader now, header first."""
    from napari_imedsam.model.classes import classes_of
    from napari_imedsam.model.loading import model_from_adapter
    from napari_imedsam.session_holder import ModelSpec, spec_classes

    path = save_adapter(build_model("tiny"), tmp_path / "a.safetensors", scope="full")
    side = json.loads(json_path(path).read_text())
    side["classes"][0]["name"] = "from the sidecar"
    json_path(path).write_text(json.dumps(side))
    listed = [c.name for c in spec_classes(ModelSpec("tiny", adapter=str(path)))]
    answered = [c.name for c in classes_of(model_from_adapter(path))]
    assert listed == answered and "from the sidecar" not in listed


def test_a_config_asking_for_a_huge_layer_is_refused_before_any_allocation(tmp_path):
    """Issue 23: a 1.5 KB model file whose config asked for a 30000 x 30000 layer took
    4.2 GB before it was refused. Loading it in a process of its own must stay near
    the memory of importing torch (the layer alone would be 3.6 GB)."""
    import subprocess
    import sys

    from safetensors.numpy import save_file

    path = save_adapter(build_model("tiny"), tmp_path / "tiny.safetensors", scope="full")
    config = json.loads(json_path(path).read_text())
    config["model"]["decoder"]["coarse_hidden"] = [30000, 30000]
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    wide = tmp_path / "wide.safetensors"
    save_file(tensors, str(wide), metadata={"imedsam_config": json.dumps(config)})
    # VmHWM, this program's own peak: ru_maxrss keeps what the process held before its
    # exec, a copy of the test run's (1.9-3.1 GB, depending on what ran before).
    code = ("import re, sys\nfrom napari_imedsam.model.loading import load_model\n"
            "try:\n    load_model(sys.argv[1])\nexcept Exception as exc:\n    print(exc)\n"
            "print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))\n")
    done = subprocess.run([sys.executable, "-c", code, str(wide)], capture_output=True,
                          text=True, timeout=300)
    assert "implicit_decoder.coarse" in done.stdout and "its config asks for" in done.stdout
    peak_gb = int(done.stdout.split()[-1]) / 1e6  # the child's own peak, in kB
    assert peak_gb < 1.5, peak_gb
