"""One answer per request: threads that share a session each get their own decoder and
class (issue 23, item 1: the decoder and class head were session state, set by one
call and read by the next, so another thread could switch them in between)."""

from __future__ import annotations

import threading

import numpy as np
import torch

from napari_imedsam.model import build_model
from napari_imedsam.model.classes import ClassInfo, expand_classes
from napari_imedsam.session_holder import ModelSpec, SessionHolder


def _two_class_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = expand_classes(build_model("tiny").eval(), (ClassInfo("a", 1), ClassInfo("b", 2)))
    for module in model.implicit_decoder.modules():  # residual heads start at zero: wake them
        if isinstance(module, torch.nn.Linear):
            module.weight.data.uniform_(-0.3, 0.3)
    return model


def test_threads_with_different_decoders_and_heads_each_get_their_own_answer():
    holder = SessionHolder()
    holder.pinned = _two_class_model()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (48, 48), dtype=np.uint8)
    box = [[8.0, 10.0, 36.0, 40.0]]
    asks = [("imedsam", 0), ("imedsam", 1), ("sam", None), ("imedsam", None)]
    specs = [ModelSpec("tiny", None, "cpu", decoder=d, head=h) for d, h in asks]
    expected = [holder.run(spec, image, box)[0] for spec in specs]
    # The answers differ, so a request answered by another's decoder or head shows.
    assert expected[0].prob.shape == (1, 1, 48, 48) and expected[3].prob.shape == (1, 2, 48, 48)
    assert expected[2].mode == "sam" and expected[2].uncertainty is None
    assert not np.allclose(expected[0].prob, expected[1].prob)
    wrong: list[str] = []
    start = threading.Barrier(len(specs))

    def ask(i: int) -> None:
        start.wait()
        for _ in range(80):
            got, _ = holder.run(specs[i], image, box)
            if got.mode != expected[i].mode or got.prob.shape != expected[i].prob.shape \
                    or not np.allclose(got.prob, expected[i].prob, atol=1e-5):
                wrong.append(f"{asks[i]} answered as {got.mode} {got.prob.shape}")

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(specs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong, wrong[:3]
