#!/usr/bin/env python3
"""A table-driven crop job's inputs, and PIL's boxes for it.

Writes testdata/crops/:
- `photo_a.png` (240×180 RGB, from scikit-image's `coffee`), `photo_b.png` (200×150 gray, from
  `camera`) and `photo_c.jpg` (320×240 RGB JPEG, from `chelsea`), and `broken.png` (a PNG cut
  short: every row naming it must fail alone);
- `photos.csv`: `photo_id, image, camera, shelf` (the table joined on `photo_id`);
- `boxes.csv`: `sample, photo_id, xmin, xmax, ymin, ymax` — 400 random normalised boxes, plus
  boxes whose corners land exactly on half pixels (where rounding matters), boxes that round to
  nothing, a box with xmin above xmax, and a row whose `photo_id` no photo has;
- `pil_boxes.json`: per row, the pixel box PIL's `Image.crop((xmin·w, ymin·h, xmax·w, ymax·h))`
  cuts (`x0, y0, x1, y1`, from PIL's own rounding) and the crop's size, or why PIL's result is
  empty or refused.

Re-create with: python -m venv v && v/bin/pip install numpy pillow scikit-image
                v/bin/python testdata/make_crops.py
"""
import csv
import json
import os
import random

import numpy as np
import skimage.data
from PIL import Image

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "crops")


def main():
    os.makedirs(HERE, exist_ok=True)
    photos = {
        "a": ("photo_a.png", Image.fromarray(skimage.data.coffee()).resize((240, 180), Image.BILINEAR)),
        "b": ("photo_b.png", Image.fromarray(skimage.data.camera()).resize((200, 150), Image.BILINEAR)),
        "c": ("photo_c.jpg", Image.fromarray(skimage.data.chelsea()).resize((320, 240), Image.BILINEAR)),
    }
    for name, im in photos.values():
        if name.endswith(".jpg"):
            im.save(os.path.join(HERE, name), quality=90)
        else:
            im.save(os.path.join(HERE, name))
    raw = open(os.path.join(HERE, "photo_a.png"), "rb").read()
    open(os.path.join(HERE, "broken.png"), "wb").write(raw[: len(raw) // 3])
    with open(os.path.join(HERE, "photos.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["photo_id", "image", "camera", "shelf"])
        w.writerow(["a", "photo_a.png", "cam1", "s01"])
        w.writerow(["b", "photo_b.png", "cam2", "s01"])
        w.writerow(["c", "photo_c.jpg", "cam1", "s02"])
        w.writerow(["x", "broken.png", "cam3", "s03"])
    rng = random.Random(7)
    rows = []
    for i in range(400):
        pid = "abc"[i % 3] if i % 50 else "x"
        wx, wy = rng.uniform(0.01, 0.6), rng.uniform(0.01, 0.6)
        x0, y0 = rng.uniform(0, 1 - wx), rng.uniform(0, 1 - wy)
        rows.append([pid, round(x0, 4), round(x0 + wx, 4), round(y0, 4), round(y0 + wy, 4)])
    # Corners on half pixels of photo a (240×180): 0.5/240 steps.
    for k in range(40):
        rows.append(["a", (2 * k + 1) / 480, (2 * k + 61) / 480, (2 * k + 1) / 360, (2 * k + 41) / 360])
    rows.append(["a", 0.3, 0.301, 0.1, 0.5])   # rounds to nothing in x
    rows.append(["b", 0.6, 0.4, 0.1, 0.5])     # xmin above xmax
    rows.append(["nope", 0.1, 0.5, 0.1, 0.5])  # no such photo
    out = []
    for i, (pid, x0, x1, y0, y1) in enumerate(rows):
        sample = f"r{i:04d}"
        rec = {"sample": sample, "photo_id": pid}
        if pid not in photos:
            rec["error"] = "no photo" if pid == "nope" else "broken photo"
        else:
            im = Image.open(os.path.join(HERE, photos[pid][0]))
            w, h = im.size
            box = (x0 * w, y0 * h, x1 * w, y1 * h)
            px = tuple(int(round(v)) for v in box)  # PIL's own rounding (Image._crop)
            if x1 < x0 or y1 < y0:
                try:
                    im.crop(box)
                    rec["error"] = "accepted?"
                except ValueError as e:
                    rec["error"] = f"PIL refuses: {e}"
            else:
                c = im.crop(box)
                rec["box"] = px
                rec["size"] = c.size
                if c.size[0] == 0 or c.size[1] == 0:
                    rec["error"] = "empty"
        out.append(rec)
    with open(os.path.join(HERE, "boxes.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sample", "photo_id", "xmin", "xmax", "ymin", "ymax"])
        for i, r in enumerate(rows):
            w.writerow([f"r{i:04d}"] + r)
    with open(os.path.join(HERE, "pil_boxes.json"), "w") as f:
        json.dump({"pillow": Image.__version__, "rows": out}, f, indent=0)
        f.write("\n")


if __name__ == "__main__":
    main()
