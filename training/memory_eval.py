"""Peak memory of the heavy cases of issue 15, as JSON (docs/benchmarks.md).

    python training/memory_eval.py --data ../shared/data/kvasir-sessile --work /tmp/mem \
        [--json docs/results/memory_cpu.json]

1. ``imedsam segment`` with a whole-image box on the Kvasir image
   ``cju0qoxqj9q6s0835b43399p4.jpg`` resized to 6000 x 6000 RGB (bilinear), scale 1,
   with the uncertainty map; peak resident memory from ``/usr/bin/time -v``.
2. ``imedsam segment --batch`` with 500 random boxes (sides 40-300 px,
   ``np.random.default_rng(0)``) on the same image at its own 1348 x 1070.
3. The napari export's decode (``export.session_decoder``) of 20 random boxes
   (80-400 px) at scale 2 on that image: the rise of peak resident memory over
   the embedded image, in a process of its own.
Target for 1 and 2: below 2 GB.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

IMAGE = "cju0qoxqj9q6s0835b43399p4.jpg"

EXPORT_DECODE = """
import re, sys, time
sys.modules["triton"] = None
import numpy as np
from napari_imedsam.export import session_decoder
from napari_imedsam.inference.session import SegmentationSession
from napari_imedsam.io import read_any
from napari_imedsam.model.loading import load_model

def peak():
    status = open("/proc/self/status").read()
    return int(re.search(r"VmHWM:\\s+(\\d+)", status).group(1)) / 1e6

session = SegmentationSession(load_model("medsam_lite"), device="cpu")
image = read_any(sys.argv[1]).data
session.set_image(image)
open("/proc/self/clear_refs", "w").write("5")  # restart the peak from here
base = peak()
rng = np.random.default_rng(0)
boxes = []
for _ in range(20):
    w, h = rng.integers(80, 400, 2)
    x0, y0 = rng.integers(0, image.shape[1] - w), rng.integers(0, image.shape[0] - h)
    boxes.append([x0, y0, x0 + w, y0 + h])
start = time.perf_counter()
masks, _ = session_decoder(session, image)(None, np.array(boxes, float), 2.0)
print(peak() - base, time.perf_counter() - start)
"""


def _timed(command: list[str]) -> tuple[float, float]:
    """(peak resident GB, seconds) of a command run under ``/usr/bin/time -v``."""
    done = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    clock = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)",
                      done.stderr).group(1)
    seconds = sum(float(p) * 60 ** i for i, p in enumerate(reversed(clock.split(":"))))
    return kb / 1e6, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/kvasir-sessile"))
    parser.add_argument("--work", type=Path, required=True, help="a folder for the inputs")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.json and args.json.exists():
        raise SystemExit(f"{args.json} exists: choose another name")
    import tifffile
    from PIL import Image

    args.work.mkdir(parents=True, exist_ok=True)
    source = args.data / "images" / IMAGE
    big = args.work / "big6000.tif"
    if not big.exists():
        resized = Image.open(source).convert("RGB").resize((6000, 6000), Image.BILINEAR)
        tifffile.imwrite(big, np.asarray(resized))
    one = args.work / "one"
    one.mkdir(exist_ok=True)
    (one / IMAGE).write_bytes(source.read_bytes())
    width, height = Image.open(source).size
    rng = np.random.default_rng(0)
    rows = ["image,x0,y0,x1,y1"]
    for _ in range(500):
        w, h = rng.integers(40, 301, 2)
        x0, y0 = rng.integers(0, width - w), rng.integers(0, height - h)
        rows.append(f"{IMAGE},{x0},{y0},{x0 + w},{y0 + h}")
    (args.work / "boxes500.csv").write_text("\n".join(rows) + "\n")

    results = {}
    results["whole_box_6000_gb"], results["whole_box_6000_s"] = _timed(
        ["imedsam", "segment", str(big), "--box", "0,0,6000,6000", "--out",
         str(args.work / "m.tif"), "--uncertainty", str(args.work / "u.tif"), "--device", "cpu",
         "--overwrite"])
    results["boxes_500_gb"], results["boxes_500_s"] = _timed(
        ["imedsam", "segment", "--batch", str(one), "--boxes-file",
         str(args.work / "boxes500.csv"), "--out-dir", str(args.work / "out"), "--device", "cpu",
         "--overwrite"])
    done = subprocess.run([sys.executable, "-c", EXPORT_DECODE, str(source)],
                          capture_output=True, text=True, check=True)
    rise, seconds = (float(v) for v in done.stdout.split()[-2:])
    results["export_20_boxes_x2_rise_gb"], results["export_20_boxes_x2_s"] = rise, seconds
    text = json.dumps({k: round(v, 3) for k, v in results.items()}, indent=2)
    print(text)
    if args.json:
        from napari_imedsam.saving import atomic_save

        atomic_save(args.json, lambda tmp: tmp.write_text(text + "\n"))


if __name__ == "__main__":
    main()
