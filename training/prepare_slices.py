"""Turn CT volumes (NIfTI) into windowed 2D slices for `imedsam train --multiclass-labels`.

Writes OUT/images/<case>_<z>.png (8-bit RGB after the CT window), OUT/masks/<same>.png
(class ids), and OUT/split.csv (name,split) split by case, so no patient spans two
subsets. Only slices with at least one labelled voxel are kept. Needs nibabel.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

WINDOWS = {"abdomen": (400, 40), "liver": (150, 30), "lung": (1500, -600), "bone": (1800, 400)}


def window(hu: np.ndarray, width: float, level: float) -> np.ndarray:
    low = level - width / 2
    return (np.clip((hu - low) / width, 0, 1) * 255).astype(np.uint8)


def main() -> None:
    import nibabel
    from PIL import Image

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--images", type=Path, required=True)
    p.add_argument("--labels", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--window", default="abdomen", choices=sorted(WINDOWS))
    p.add_argument("--split", default="", help="train,val,test fractions, e.g. 0.6,0.2,0.2")
    p.add_argument("--label-map", default="", help="old:new pairs, e.g. 10:11,13:0")
    p.add_argument("--ct-only", action="store_true", help="AMOS: keep case ids below 500 (CT)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    mapping = dict(tuple(map(int, pair.split(":"))) for pair in args.label_map.split(",") if pair)
    lut = np.arange(256, dtype=np.uint8)
    for old, new in mapping.items():
        lut[old] = new
    (args.out / "images").mkdir(parents=True, exist_ok=True)
    (args.out / "masks").mkdir(parents=True, exist_ok=True)
    cases = sorted(path for path in args.labels.glob("*.nii*"))
    if args.ct_only:
        cases = [c for c in cases if int("".join(ch for ch in c.name if ch.isdigit()) or 0) < 500]
    names: dict[str, list[str]] = {}
    width, level = WINDOWS[args.window]
    for label_path in cases:
        image_path = args.images / label_path.name.replace("label", "img")
        volume = np.asarray(nibabel.load(image_path).dataobj, dtype=np.float32)
        labels = lut[np.asarray(nibabel.load(label_path).dataobj).astype(np.uint8)]
        case = label_path.name.split(".")[0]
        for z in range(labels.shape[2]):
            if not labels[:, :, z].any():
                continue
            # NIfTI is (x, y, z); images are (rows, cols): transpose and flip to radiological view.
            grey = window(np.flipud(volume[:, :, z].T), width, level)
            name = f"{case}_{z:03d}.png"
            Image.fromarray(np.stack([grey] * 3, axis=-1)).save(args.out / "images" / name)
            Image.fromarray(np.flipud(labels[:, :, z].T)).save(args.out / "masks" / name)
            names.setdefault(case, []).append(name)
        print(f"{case}: {len(names.get(case, []))} slices")
    if args.split:
        fractions = [float(f) for f in args.split.split(",")]
        order = np.random.default_rng(args.seed).permutation(sorted(names))
        bounds = np.cumsum([round(f * len(order)) for f in fractions[:-1]])
        with (args.out / "split.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["name", "split"])
            for i, case in enumerate(order):
                subset = ["train", "val", "test"][int(np.searchsorted(bounds, i, side="right"))]
                writer.writerows([name, subset] for name in names[case])


if __name__ == "__main__":
    main()
