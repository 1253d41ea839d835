#!/usr/bin/env python3
"""Golden statistics for tessera's `stats` module, from pandas, SciPy and scikit-learn. The
files are committed, so `cargo test` needs no Python; re-run only when the cases change:

    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install numpy pandas scipy scikit-learn
    /tmp/venv/bin/python testdata/golden/make_stats_golden.py

Writes testdata/golden/stats/:
- table.csv: a synthetic phenotype table (8 samples of 4 animals, 1 to 160 objects each;
  `length` has missing values, `flat` is constant), floats written with 17 significant digits.
- within_between_by_<sample|animal>.csv: SPEC §7 from pandas (groupby mean / std with ddof=1,
  NaN skipped), one-way ANOVA from scipy.stats.f_oneway, ICC(1) from its textbook formula.
- pca.json: StandardScaler + PCA(n_components=2) on [volume, length, anisotropy, flat] over the
  complete rows: explained variance (and ratio), components, the first 20 rows' scores.
- kmeans.json: KMeans(k=3, algorithm='lloyd', n_init=1, tol=1e-4) on the same standardised
  rows from given starting centres (rows 0, 50, 100): labels, centres, iterations, inertia.
- bootstrap_by_<sample|animal>.csv: the confidence limits of within/between/ratio by the
  cluster bootstrap tessera documents (1000 replicates, level 0.95, seed 1), computed here with
  numpy from the same SplitMix64 draws: groups in sorted order, k draws with replacement per
  replicate (index = (next · k) >> 64), each drawn group's mean and sd (ddof 1) from numpy,
  `np.percentile(..., method="linear")` of the replicates that are defined, when they are more
  than half of them. It checks tessera's statistics and percentiles on the draws, not the draws.
- versions.json beside this script gets the library versions.
"""

import json
import os

import numpy as np
import pandas as pd
import scipy
import sklearn
from scipy.stats import f_oneway
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "stats")
PHENOTYPES = ["volume", "length", "anisotropy", "flat"]


def table():
    rng = np.random.default_rng(20261123)
    rows = []
    sizes = [120, 80, 160, 1, 60, 90, 40, 110]
    for s, n in enumerate(sizes):
        animal = f"a{s // 2 + 1}"
        scale = 1.0 + 0.3 * s
        vol = rng.lognormal(mean=np.log(300 * scale), sigma=0.5, size=n)
        length = 8.0 * scale + rng.normal(0, 2.0, size=n) + 0.01 * vol
        length[rng.random(n) < 0.05] = np.nan
        aniso = rng.beta(2 + s, 5, size=n)
        for i in range(n):
            rows.append(dict(sample=f"s{s + 1}", label=i + 1, animal=animal, volume=vol[i], length=length[i],
                             anisotropy=aniso[i], flat=2.0))
    return pd.DataFrame(rows)


def within_between(df, by):
    out = []
    for p in PHENOTYPES:
        g = df[[by, p]].dropna().groupby(by, sort=True)[p]
        means, sds, ns = g.mean(), g.std(ddof=1), g.count()
        cv = 100 * sds / means.abs()
        within = cv.mean()  # groups with one value have sd NaN and are skipped
        between = 100 * means.std(ddof=1) / abs(means.mean()) if len(means) > 1 else np.nan
        groups = [v.to_numpy() for _, v in g]
        n, k = ns.sum(), len(groups)
        if k > 1 and n > k:
            with np.errstate(all="ignore"):
                f, pval = f_oneway(*groups)
            grand = df[p].dropna().mean()
            ssb = sum(len(v) * (v.mean() - grand) ** 2 for v in groups)
            ssw = sum(((v - v.mean()) ** 2).sum() for v in groups)
            msb, msw = ssb / (k - 1), ssw / (n - k)
            n0 = (n - (ns ** 2).sum() / n) / (k - 1)
            icc = (msb - msw) / (msb + (n0 - 1) * msw)
        else:
            f = pval = icc = np.nan
        out.append(dict(phenotype=p, n_groups=k, n_objects=n, within_cv_pct=within, between_cv_pct=between,
                        ratio_pct=100 * within / between if between else np.nan, icc=icc, anova_f=f, anova_p=pval))
    return pd.DataFrame(out)


MASK = (1 << 64) - 1


class SplitMix:
    def __init__(self, seed):
        self.x = seed

    def next(self):
        self.x = (self.x + 0x9E3779B97F4A7C15) & MASK
        z = self.x
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)


def bootstrap(df, by, replicates=1000, level=0.95, seed=1):
    groups = sorted(df[by].dropna().astype(str).unique())
    out = []
    for p in PHENOTYPES:
        vals = [df.loc[df[by].astype(str) == g, p].dropna().to_numpy() for g in groups]
        k = len(groups)
        stats = {"within": [], "between": [], "ratio": []}
        if sum(len(v) > 0 for v in vals) >= 2:
            rng = SplitMix(seed)
            for _ in range(replicates):
                picked = [vals[(rng.next() * k) >> 64] for _ in range(k)]
                cvs = [100 * v.std(ddof=1) / abs(v.mean()) for v in picked if len(v) > 1]
                within = float(np.mean(cvs)) if cvs else np.nan
                means = np.array([v.mean() for v in picked if len(v) > 0])
                with np.errstate(all="ignore"):
                    between = 100 * means.std(ddof=1) / abs(means.mean()) if len(means) > 1 else np.nan
                    ratio = 100 * within / between
                for name, v in (("within", within), ("between", between), ("ratio", ratio)):
                    if not np.isnan(v):
                        stats[name].append(v)
        row = dict(phenotype=p)
        q = [100 * (1 - level) / 2, 100 * (1 + level) / 2]
        for name, col in (("within", "within_cv_pct"), ("between", "between_cv_pct"), ("ratio", "ratio_pct")):
            v = stats[name]
            lo, hi = np.percentile(v, q, method="linear") if 2 * len(v) > replicates else (np.nan, np.nan)
            row[col + "_lo"], row[col + "_hi"] = lo, hi
        out.append(row)
    return pd.DataFrame(out)


def main():
    os.makedirs(OUT, exist_ok=True)
    df = table()
    df.to_csv(os.path.join(OUT, "table.csv"), index=False, float_format="%.17g")
    # Read back what was written, so the references see exactly the numbers tessera reads.
    df = pd.read_csv(os.path.join(OUT, "table.csv"))
    for by in ["sample", "animal"]:
        within_between(df, by).to_csv(os.path.join(OUT, f"within_between_by_{by}.csv"), index=False, float_format="%.17g")
        bootstrap(df, by).to_csv(os.path.join(OUT, f"bootstrap_by_{by}.csv"), index=False, float_format="%.17g")
    complete = df[PHENOTYPES].dropna()
    z = StandardScaler().fit_transform(complete.to_numpy())
    pca = PCA(n_components=2, svd_solver="full").fit(z)
    scores = pca.transform(z)
    json.dump(dict(kept_rows=complete.index.tolist()[:20], explained_variance=pca.explained_variance_.tolist(),
                   explained_variance_ratio=pca.explained_variance_ratio_.tolist(), components=pca.components_.tolist(),
                   scores_first20=scores[:20].tolist()), open(os.path.join(OUT, "pca.json"), "w"), indent=1)
    init_rows = [0, 50, 100]
    km = KMeans(n_clusters=3, init=z[init_rows], n_init=1, algorithm="lloyd", tol=1e-4, max_iter=300).fit(z)
    json.dump(dict(init_rows=init_rows, labels=km.labels_.tolist(), centers=km.cluster_centers_.tolist(),
                   n_iter=int(km.n_iter_), inertia=float(km.inertia_)), open(os.path.join(OUT, "kmeans.json"), "w"), indent=1)
    vpath = os.path.join(HERE, "versions.json")
    versions = json.load(open(vpath)) if os.path.exists(vpath) else {}
    versions.update({"pandas": pd.__version__, "scikit-learn": sklearn.__version__, "scipy": scipy.__version__,
                     "numpy": np.__version__})
    json.dump(versions, open(vpath, "w"), indent=1)


if __name__ == "__main__":
    main()
