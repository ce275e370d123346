"""Training never holds or augments an image larger than the model can see (issue 23:
three 12000 x 12000 images took 24 GB in adapters mode, 3.3 GB in decoder mode)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_imedsam.train.augment import Augmenter
from napari_imedsam.train.data import LabeledImage, load_folder, shrunk
from napari_imedsam.train.samples import TRAIN_SIDE_FACTOR, bounded, make_sample, sample_refs


def _pair(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    image = np.zeros((height, width, 3), np.uint8)
    labels = np.zeros((height, width), np.int32)
    labels[height // 4 : height // 2, width // 3 : 2 * width // 3] = 1
    labels[11, 11] = 2  # one pixel, between the rows and columns a third keeps
    image[labels == 1] = 200
    return image, labels


class _Spy(Augmenter):
    def __init__(self) -> None:
        super().__init__(seed=0)
        self.shapes: list[tuple[int, ...]] = []

    def __call__(self, image, mask):  # type: ignore[override]
        self.shapes.append(image.shape)
        return super().__call__(image, mask)


def test_a_large_training_image_is_shrunk_before_it_is_augmented():
    image, labels = _pair(3000, 2000)
    item = LabeledImage("big", image, labels)
    spy = _Spy()
    ref = [r for r in sample_refs([item], 1) if r.object_id == 1][0]
    tensor, box, xy, targets = make_sample(item, ref, num_classes=1, input_size=256, points=64,
                                           rng=np.random.default_rng(0), augmenter=spy,
                                           preprocess="medsam_lite")
    assert spy.shapes == [(1024, 683, 3)]  # 4 x 256 on the longer side
    assert tensor.shape == (1, 3, 256, 256) and targets.shape == (1, 64)
    assert 0 < targets.mean() < 1  # points inside and outside the object


def test_bounded_keeps_an_object_that_would_vanish_and_shrinks_the_others():
    image, labels = _pair(3000, 2000)
    big = np.stack([labels == 1])
    small_image, small = bounded(image, big, 256)
    assert small_image.shape == (1024, 683, 3) and small.shape == (1, 1024, 683)
    assert small_image.dtype == np.uint8
    # the object's box, shrunk: rows 750..1500 of 3000 -> 256..512 of 1024
    rows = np.flatnonzero(small[0].any(axis=1))
    assert (rows[0], rows[-1] + 1) == (256, 512)
    tiny = np.stack([labels == 2])
    same_image, same = bounded(image, tiny, 256)
    assert same_image is image and same is tiny
    # an image within the bound is left alone
    little = image[:1000, :800]
    assert bounded(little, big[:, :1000, :800], 256)[0] is little
    assert TRAIN_SIDE_FACTOR * 256 == 1024


def test_load_folder_shrinks_pairs_past_max_side_as_it_reads_them(tmp_path):
    image, labels = _pair(1500, 900)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    tifffile.imwrite(tmp_path / "images" / "a.tif", image)
    tifffile.imwrite(tmp_path / "masks" / "a.tif", (labels == 1).astype(np.uint8) * 255)
    whole = load_folder(tmp_path)[0]
    small = load_folder(tmp_path, max_side=500)[0]
    assert whole.image.shape == (1500, 900, 3)
    assert small.image.shape == (500, 300, 3) and small.labels.shape == (500, 300)
    expect_image, expect_labels = shrunk(whole.image, whole.labels, 500)
    assert np.array_equal(small.image, expect_image)
    assert np.array_equal(small.labels, expect_labels)
    assert set(np.unique(small.labels)) == {0, 1}
    assert small.image[small.labels == 1].min() == 200  # area means inside the object


def test_box_of_value_is_box_of_the_values_mask():
    rng = np.random.default_rng(3)
    labels = np.zeros((1300, 700), np.uint8)
    labels[rng.integers(0, 1300, 40), rng.integers(0, 700, 40)] = 2
    labels[600:1201, 5:9] = 1
    from napari_imedsam.train.data import box_of, box_of_value

    for value in (1, 2):
        assert box_of_value(labels, value, band_rows=97) == box_of(labels == value)
    try:
        box_of_value(labels, 3)
    except ValueError as exc:
        assert "empty" in str(exc)
    else:
        raise AssertionError("an absent value has no box")


def _folder(tmp_path, count: int, multiclass: bool = False):
    rng = np.random.default_rng(5)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for i in range(count):
        image = rng.integers(0, 50, (120, 150, 3), dtype=np.uint8)
        labels = np.zeros((120, 150), np.uint8)
        labels[20 + 5 * i : 70, 30 : 90 + 4 * i] = 1
        if multiclass:
            labels[90:110, 10:40] = 2
            labels[40:50, 100:140] = 2  # a second group of class 2
        image[labels > 0] += 150
        tifffile.imwrite(tmp_path / "images" / f"im{i}.tif", image)
        tifffile.imwrite(tmp_path / "masks" / f"im{i}.tif",
                         labels if multiclass else (labels > 0).astype(np.uint8) * 255)
    return tmp_path


def test_a_lazy_set_reads_one_pair_at_a_time_and_evaluates_as_the_list(tmp_path):
    """Evaluation reads a folder's pairs one at a time (three 12000 x 12000 images held
    3.05 GB before): the same rows as the set read whole, one pair held at a time."""
    import torch

    from napari_imedsam.model import build_model
    from napari_imedsam.train import data as data_module
    from napari_imedsam.train.data import LazyPairs
    from napari_imedsam.train.evaluate import evaluate_model

    folder = _folder(tmp_path, 3)
    whole = load_folder(folder)
    lazy = load_folder(folder, lazy=True)
    assert isinstance(lazy, LazyPairs) and len(lazy) == 3
    reads = []
    original = data_module.read_image

    def counting(path):
        reads.append(path)
        return original(path)

    data_module.read_image = counting
    try:
        torch.manual_seed(0)
        model = build_model("tiny")
        rows_whole = evaluate_model(model, whole, label_size=32, with_distances=False)
        rows_lazy = evaluate_model(model, lazy, label_size=32, with_distances=False)
    finally:
        data_module.read_image = original
    assert [r["dice"] for r in rows_lazy] == [r["dice"] for r in rows_whole]
    assert len(rows_lazy) == 3
    # Each pair read once to list the objects and once to evaluate them.
    assert len(reads) == 6
    assert lazy[2] is lazy[2] and lazy[-1] is lazy[2]  # the last pair is kept


def test_a_lazy_multiclass_set_keeps_each_groups_own_targets(tmp_path):
    """Connected groups are labelled again on a pair read again: a group's targets are
    its own pixels, not every pixel of its classes."""
    from napari_imedsam.train.data import LazyPairs, as_class_heads
    from napari_imedsam.train.samples import targets_for

    folder = _folder(tmp_path, 2, multiclass=True)
    lazy = load_folder(folder, binary=False, lazy=True)
    assert isinstance(lazy, LazyPairs)
    lazy.transform = lambda item: as_class_heads([item], [1, 2])[0]
    whole = as_class_heads(load_folder(folder, binary=False), [1, 2])
    refs = sample_refs(lazy, 2)
    assert refs == sample_refs(whole, 2) and len(refs) == 6  # 3 groups an image
    lazy[1]  # the first pair is read again below, without its groups
    for ref in refs:
        assert np.array_equal(targets_for(lazy[ref.index], ref, 2),
                              targets_for(whole[ref.index], ref, 2))
        assert targets_for(lazy[ref.index], ref, 2)[1].sum() in (0, 600, 400)


# -- the allocator: training's memory stays bounded over epochs (issue 23) ----------------
def _in_a_fresh_process(code: str, **env: str) -> str:
    import os
    import subprocess
    import sys

    environ = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env={**environ, **env})
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


_HUGE = ("import re, sys\n"
         "import torch\n"
         "x = torch.ones(64 << 20, dtype=torch.uint8)\n"
         "rollup = open('/proc/self/smaps_rollup').read()\n"
         "print(int(re.search(r'AnonHugePages:\\s+(\\d+)', rollup).group(1)))\n")


def _kernel_gives_huge_pages() -> bool:
    setting = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if not (setting.exists() and Path("/proc/self/smaps_rollup").exists()):
        return False
    return "[never]" not in setting.read_text()


def test_the_command_line_and_the_viewer_ask_torch_for_huge_pages_unless_told_not_to():
    """Without PyTorch's huge pages, `train --mode adapters` on 5 Kvasir images grew by
    epoch (2.10, 2.46, 2.82 GB after 1, 2 and 6); with them 1.56, 1.77 and 1.85 GB. The
    switch must be set before torch is imported, and a user's own setting stays."""
    ask = ("import os\n"
           "from napari_imedsam.model.torch_guard import prefer_huge_pages\n"
           "print(prefer_huge_pages(), os.environ.get('THP_MEM_ALLOC_ENABLE'))\n")
    assert _in_a_fresh_process(ask) == ["True", "1"]
    assert _in_a_fresh_process(ask, THP_MEM_ALLOC_ENABLE="0") == ["False", "0"]
    assert _in_a_fresh_process("import torch\n" + ask) == ["False", "None"]  # too late
    cli = ("import os\n"
           "from napari_imedsam.cli.app import main\n"
           "main(['weights', 'list'])\n"
           "print(os.environ.get('THP_MEM_ALLOC_ENABLE'))\n")
    assert _in_a_fresh_process(cli)[-1] == "1"
    viewer = ("import os\n"
              "from napari_imedsam.model.torch_guard import import_torch\n"
              "import_torch()\n"
              "print(os.environ.get('THP_MEM_ALLOC_ENABLE'))\n")
    assert _in_a_fresh_process(viewer) == ["1"]
    if _kernel_gives_huge_pages():  # torch read it: its large blocks are huge pages
        prefer = "from napari_imedsam.model.torch_guard import prefer_huge_pages\n"
        assert int(_in_a_fresh_process(prefer + "prefer_huge_pages()\n" + _HUGE)[0]) > 0
        assert int(_in_a_fresh_process(_HUGE, THP_MEM_ALLOC_ENABLE="0")[0]) == 0


def test_trim_heap_gives_the_heaps_free_pages_back():
    """Training trims after each step and evaluation between images: freed blocks in the
    middle of glibc's heap stay resident otherwise (20 epochs: 2.07 -> 1.90 GB)."""
    code = ("import numpy as np\n"
            "from napari_imedsam.model.torch_guard import trim_heap\n"
            "def rss(): return int(open('/proc/self/statm').read().split()[1]) * 4096\n"
            "blocks = [np.ones(2500) for _ in range(20000)]\n"  # 20 KB each: the heap's
            "keep = blocks[::50]\n"
            "del blocks\n"
            "before = rss(); trim_heap(); print((before - rss()) >> 20)\n")
    import platform

    if platform.libc_ver()[0] != "glibc" or not Path("/proc/self/statm").exists():
        pytest.skip("trim_heap does nothing off glibc (and the test reads /proc)")
    assert int(_in_a_fresh_process(code)[0]) > 200  # of the 400 MB freed
