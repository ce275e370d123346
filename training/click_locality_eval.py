"""Would a locality rule make clicks safe? Measured on the output grid; the product now
uses it on the backbone's low resolution grid (session `_local`).

    python training/click_locality_eval.py sam|imedsam kv|amos

The default model, tight boxes, 5 protocol clicks (train/clicks.py). "raw" takes each
click's answer as it is; "local" keeps the previous mask and takes from the new answer
only the connected change (added on a positive click, removed on a negative one) that
contains the click. Prints the mean Dice after the box and each click, and the share of
clicks that lowered Dice. Numbers in docs/training.md ("Corrective clicks").
"""
import sys, numpy as np
from scipy import ndimage as ndi
from napari_imedsam.model.loading import load_model
from napari_imedsam.inference.session import SegmentationSession, Clicks
from napari_imedsam.train.data import load_folder, box_of, load_ct_slices
from napari_imedsam.train.samples import sample_refs, targets_for
from napari_imedsam.train.clicks import protocol_click
from napari_imedsam.train import metrics

def local(old, new, click):
    r, c, pos = click.row, click.col, click.positive
    change = (new & ~old) if pos else (old & ~new)
    lab, n = ndi.label(change)
    k = lab[r, c]
    if k == 0:
        return old
    region = lab == k
    return (old | region) if pos else (old & ~region)

m = load_model("medsam_lite")
dec = sys.argv[1]; which = sys.argv[2]
s = SegmentationSession(m, device="cpu", mode=dec, precision="fp32", adaptive=False,
                         click_rule="replace")  # the raw answers; "local" below
K = "../shared/data/kvasir-sessile"
imgs = load_folder(K, split_csv=K + "/splits/surrogate_seed4200_118tr-39val-39ts.csv", subset="test") if which == "kv" else load_ct_slices("../shared/data/ct-slices")
shape = (384, 384); curves = {"raw": [], "local": []}
for ref in sample_refs(imgs, 1):
    it = imgs[ref.index]; s.set_image(it.image)
    native = targets_for(it, ref, 1)[0]; t = metrics.resize_mask(native, shape)
    if not t.any(): continue
    box = np.asarray(box_of(native), float); h, w = it.image.shape[:2]
    p0 = s.predict(box[None], region=(0, 0, h, w), out_shape=shape).prob[0, 0] > 0.5
    for mode in ("raw", "local"):
        pred = p0; xy = []; lab = []; curve = [metrics.dice(pred, t)]
        for _ in range(5):
            c = protocol_click(pred, t)
            if c is None: curve.append(curve[-1]); continue
            xy.append(c.xy(shape, (h, w))); lab.append(int(c.positive))
            new = s.predict(box[None], clicks=[Clicks.of(xy, lab)], region=(0, 0, h, w), out_shape=shape).prob[0, 0] > 0.5
            pred = new if mode == "raw" else local(pred, new, c)
            curve.append(metrics.dice(pred, t))
        curves[mode].append(curve)
for k, v in curves.items():
    a = np.array(v); d = np.diff(a, axis=1)
    print(dec, which, k, np.round(a.mean(0), 4).tolist(), "worse", round(float((d < -1e-9).mean()), 3))
