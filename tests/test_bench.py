"""What ``imedsam bench`` compares (issue 24, item 3)."""

from __future__ import annotations

import torch


def test_encoder_max_abs_diff_compares_the_sessions_runtime_with_our_eager_encoder(monkeypatch):
    """``encoder_max_abs_diff`` is the session's runtime against PyTorch's eager run of
    the same encoder on the same input; upstream LiteMedSAM's encoder is compared apart.
    An adapter that changes the encoder (here its LoRA moved) shows up in the second
    number only: with PyTorch as the runtime the first is exactly 0.0. Before, the one
    number compared with upstream's encoder, so it mixed the two."""
    from napari_imedsam import bench
    from napari_imedsam.model import loading

    real = loading.load_model

    def with_moved_lora(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        model = real(*args, **kwargs)
        with torch.no_grad():
            for name, param in model.image_encoder.named_parameters():
                if "lora_B" in name:
                    param.add_(0.05)
        return model

    monkeypatch.setattr(loading, "load_model", with_moved_lora)
    monkeypatch.setenv("IMEDSAM_NO_OPENVINO", "1")
    results = bench.run_benchmark("cpu", repeats=1, log=lambda text: None)
    assert results["encoder_runtime"].startswith("PyTorch")
    assert results["encoder_max_abs_diff"] == 0.0
    assert results["encoder_vs_upstream_max_abs_diff"] > 1e-3
