"""Turn CT volumes (NIfTI) into windowed 2D slices for `imedsam train --multiclass-labels`.

Writes OUT/images/<case>_<z>.png (8-bit RGB after the CT window), OUT/masks/<same>.png
(class ids), and OUT/split.csv (name,split) split by case, so no patient spans two
subsets. Only slices with at least one labelled voxel are kept. Needs nibabel.

Volumes are read with the plugin's own NIfTI reader, so each slice is oriented exactly
as napari shows it (radiological axial view, whatever the file's storage order) and a
model trained on these slices sees in the viewer what it saw in training.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from napari_imedsam.inference.intensity import CT_WINDOWS, to_encoder_rgb
from napari_imedsam.io import read_nifti


def main(argv: list[str] | None = None) -> None:
    from PIL import Image

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=Path, required=True)
    p.add_argument("--labels", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--window", default="abdomen", choices=sorted(CT_WINDOWS))
    p.add_argument("--split", default="", help="train,val,test fractions, e.g. 0.6,0.2,0.2")
    p.add_argument("--label-map", default="", help="old:new pairs, e.g. 10:11,13:0")
    p.add_argument("--ct-only", action="store_true", help="AMOS: keep case ids below 500 (CT)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

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
    for label_path in cases:
        image_path = args.images / label_path.name.replace("label", "img")
        volume = read_nifti(image_path).data  # (Z, Y, X), as napari shows it
        labels = lut[read_nifti(label_path).data.astype(np.uint8)]
        if volume.shape != labels.shape:
            raise SystemExit(f"{label_path.name}: labels {labels.shape} do not match the image "
                             f"{volume.shape} ({image_path.name})")
        case = label_path.name.split(".")[0]
        for z in range(labels.shape[0]):
            if not labels[z].any():
                continue
            name = f"{case}_{z:03d}.png"
            Image.fromarray(to_encoder_rgb(volume[z], args.window)).save(
                args.out / "images" / name)
            Image.fromarray(labels[z]).save(args.out / "masks" / name)
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
