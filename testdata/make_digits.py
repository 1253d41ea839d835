#!/usr/bin/env python3
"""scikit-learn's bundled handwritten digits as a feature table, and scikit-learn's figures on it.

Writes testdata/classify/digits/digit_NNNN.png (the images as 8-bit gray PNG files, grey level
g of 0–16 stored as round(255·g/16)) and testdata/classify/digits_images.csv (the manifest:
`sample`, `image`, `class`) for pipelines/digits.yaml, and testdata/classify/digits.csv: one row per image (1,797 images of 8×8 pixels, 10 classes),
columns `sample` (digit_0000…), `class` (0–9) and `p00`…`p63`, the pixels normalised to [0, 1]
(the 0–16 grey levels divided by 16, exact in binary). Then trains scikit-learn's
RandomForestClassifier (100 trees, √64 = 8 features per split, seed 1) on a stratified 80/20
split and 5-fold stratified cross-validation of the same rows and writes its accuracies to
testdata/classify/digits_sklearn.json, so `cargo test` can compare tessera's forest with it
without Python. Re-create with:

    python -m venv v && v/bin/pip install scikit-learn
    v/bin/python testdata/make_digits.py
"""
import json
import os

import numpy as np
import sklearn
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import StratifiedKFold, cross_val_score, train_test_split

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "classify")


def main():
    os.makedirs(OUT, exist_ok=True)
    d = load_digits()
    x = d.data / 16.0
    y = d.target
    os.makedirs(os.path.join(OUT, "digits"), exist_ok=True)
    with open(os.path.join(OUT, "digits_images.csv"), "w") as f:
        f.write("sample,image,class\n")
        for i, (img, c) in enumerate(zip(d.images, y)):
            name = f"digit_{i:04d}"
            px = np.round(img * 255.0 / 16.0).astype(np.uint8)
            Image.fromarray(px, mode="L").save(os.path.join(OUT, "digits", name + ".png"), optimize=False)
            f.write(f"{name},digits/{name}.png,{c}\n")
    with open(os.path.join(OUT, "digits.csv"), "w") as f:
        f.write("sample,class," + ",".join(f"p{i:02d}" for i in range(64)) + "\n")
        for i, (row, c) in enumerate(zip(x, y)):
            f.write(f"digit_{i:04d},{c}," + ",".join(repr(float(v)) for v in row) + "\n")
    figures = {"sklearn": sklearn.__version__, "rows": int(len(y)), "trees": 100, "max_features": "sqrt"}
    holdout = []
    for seed in range(5):
        xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.2, stratify=y, random_state=seed)
        rf = RandomForestClassifier(n_estimators=100, random_state=seed, n_jobs=1).fit(xtr, ytr)
        holdout.append(float((rf.predict(xte) == yte).mean()))
    figures["holdout_accuracy_seeds_0_4"] = holdout
    figures["holdout_accuracy_mean"] = float(np.mean(holdout))
    cv = cross_val_score(RandomForestClassifier(n_estimators=100, random_state=1, n_jobs=1), x, y,
                         cv=StratifiedKFold(5, shuffle=True, random_state=1))
    figures["kfold5_accuracy"] = float(cv.mean())
    with open(os.path.join(OUT, "digits_sklearn.json"), "w") as f:
        json.dump(figures, f, indent=1)
        f.write("\n")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
