#!/usr/bin/env python3
"""PIL, the client a crop job's next step uses, reads tessera's crops as PIL cuts them: for a
run of pipelines/crops.yaml (folder given), every row's `crop.png` equals
`Image.open(photo).crop((xmin·w, ymin·h, xmax·w, ymax·h))` pixel for pixel for PNG photos, and
has its size for JPEG photos (within a few grey levels: libjpeg and tessera's decoder round
differently); every row PIL refuses or makes empty, or whose photo is missing or broken, is in
errors.csv. Exits 1 naming the first difference."""
import csv
import os
import sys

import numpy as np
from PIL import Image


def main(out, crops_dir):
    photos = {r["photo_id"]: r for r in csv.DictReader(open(os.path.join(crops_dir, "photos.csv")))}
    failed = {r["sample"]: r["error"] for r in csv.DictReader(open(os.path.join(out, "errors.csv")))}
    exact = close = refused = 0
    worst = 0
    for r in csv.DictReader(open(os.path.join(crops_dir, "boxes.csv"))):
        s = r["sample"]
        crop = os.path.join(out, "samples", s, "crop.png")
        p = photos.get(r["photo_id"])
        try:
            if p is None:
                raise ValueError("no photo")
            im = Image.open(os.path.join(crops_dir, p["image"]))
            w, h = im.size
            x0, x1, y0, y1 = (float(r[k]) for k in ("xmin", "xmax", "ymin", "ymax"))
            want = np.asarray(im.crop((x0 * w, y0 * h, x1 * w, y1 * h)))
            if want.size == 0:
                raise ValueError("empty")
        except (ValueError, OSError) as e:
            if s not in failed or os.path.exists(crop):
                sys.exit(f"{s}: PIL fails ({e}) but tessera did not fail the row")
            refused += 1
            continue
        if s in failed:
            sys.exit(f"{s}: PIL cuts it, tessera failed: {failed[s]}")
        got = np.asarray(Image.open(crop))
        if got.shape != want.shape:
            sys.exit(f"{s}: tessera's crop is {got.shape}, PIL's {want.shape}")
        if p["image"].endswith(".png"):
            if not (got == want).all():
                sys.exit(f"{s}: pixels differ from PIL's crop of a PNG")
            exact += 1
        else:
            worst = max(worst, int(np.abs(got.astype(int) - want.astype(int)).max()))
            close += 1
    if worst > 8:
        sys.exit(f"JPEG crops differ from PIL's by up to {worst} grey levels")
    print(f"PIL: {exact} crops of PNG photos identical, {close} of JPEG photos within ±{worst}, {refused} rows failed as PIL fails them")


if __name__ == "__main__":
    main(*sys.argv[1:])
