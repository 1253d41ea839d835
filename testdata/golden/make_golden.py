#!/usr/bin/env python3
"""Golden outputs for tessera's ops, from the reference implementations. The files are
committed, so `cargo test` needs no Python; run this only when the inputs or cases change:

    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install scipy scikit-image tifffile imagecodecs
    /tmp/venv/bin/python testdata/golden/make_golden.py

Versions used for the committed files are written to golden/versions.json.
Cases (all on the bundled images in testdata/):
- otsu.json: skimage.filters.threshold_otsu on each image as stored (u16, u16, f32) and on the
  float32 gaussian-smoothed nuclei3d; threshold_li and threshold_triangle (keys li_*, triangle_*)
  on each image and on nuclei3d // 2 as uint8.
- gaussian_*.npy: scipy.ndimage.gaussian_filter(img.astype(float32), sigma, mode='reflect',
  truncate=4.0).
- labels_*.npy: scipy.ndimage.label(img > otsu, structure) for each connectivity, uint16.
- props_*.csv: skimage.measure.regionprops_table on those labels with the raw image as
  intensity and a spacing, columns renamed to tessera's (SPEC §6).
- window_*.npy: scipy.ndimage.{uniform,median,minimum,maximum}_filter(img, size, mode='reflect'),
  in the image's own dtype (neuron3d_crop: neuron3d[10:30, 32:96, 32:96], float32).
- downsample_nuclei3d_1-2-3.npy: numpy block mean (reshape + mean) with factors (1, 2, 3), as float32.
- rescale_*.npy: skimage.exposure.rescale_intensity cases (see rescales()).
- distance_*.npy: scipy.ndimage.distance_transform_edt(mask, sampling) of the Otsu masks and
  their complements, as float32.
- morph_*.npy: scipy.ndimage.binary_{erosion,dilation,opening,closing} of the Otsu masks with
  ball/cube elements (voxel and physical radii), and binary_fill_holes; uint8 0/1.
- props_*.csv also hold the shape columns (see shape_columns): `surface_area` from
  skimage.measure.marching_cubes (Lewiner, level 0.5) of each object's mask padded with background,
  + mesh_surface_area, with spacing (2D: regionprops `perimeter`); regionprops `euler_number`
  (connectivity 26 in 3D, 8 in 2D) and `equivalent_diameter_area`; `sphericity`; `n_neighbors`
  and `n_territory_neighbors` from cc3d.contacts (face contacts).
- shapes{2,3}d_labels.npy + props_shapes{2,3}d.csv: awkward objects (one voxel, border, cavity,
  tunnel, face/edge/corner contacts) with anisotropic spacing.
- contacts_*.csv: cc3d.contacts(labels, connectivity=6 (4 in 2D), surface_area=True,
  anisotropy=spacing) and the face counts (surface_area=False), one row per pair label_a < label_b.
- territories_*.npy: skimage.segmentation.expand_labels(labels, 3), the territories the
  `n_territory_neighbors` goldens use.
- hmax_*.npy: skimage.morphology.h_maxima on the float32 distance map distance_nuclei3d.npy
  (h 1 and 2.5, default footprint; h 1 with the 6-connected footprint), on nuclei3d as stored
  (uint16; h 20 and the fractional 7.5) and on nuclei2d (h 30); uint8 0/1.
- watershed_*.npy: skimage.segmentation.watershed: the declumping recipe (markers = ndi.label of
  hmax_dist_h1 with the 26-connected structure, image = -distance, mask = the Otsu mask), the
  raw uint16 images flooded from the Otsu labels (connectivity 1 and 3 / 2 in 2D), and flat
  images (every value equal: the order is the heap's alone) with scattered markers; uint16.
- ../../src/ops/mc_table.rs: the triangles scikit-image's Lewiner marching cubes makes in each of
  the 256 binary 2×2×2 configurations at level 0.5, as area weights per normal direction (see
  marching_table); the surface-area column sums them per object.
"""

import json
import os

import numpy as np
import scipy
import scipy.ndimage as ndi
import skimage
import skimage.segmentation
import tifffile
from skimage.filters import threshold_otsu
from skimage.measure import regionprops_table

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.dirname(HERE)


def load(name):
    return tifffile.imread(os.path.join(DATA, name))


def structure(ndim, conn):
    rank = {4: 1, 8: 2, 6: 1, 18: 2, 26: 3}[conn]
    return ndi.generate_binary_structure(ndim, rank)


def main():
    images = {"nuclei2d": load("nuclei2d.tif"), "nuclei3d": load("nuclei3d.tif"), "neuron3d": load("neuron3d.tif")}
    otsu = {k: float(threshold_otsu(v)) for k, v in images.items()}

    gauss = {
        "nuclei3d_s1": (images["nuclei3d"], 1.0),
        "nuclei3d_s1-1.5-2": (images["nuclei3d"], (1.0, 1.5, 2.0)),
        "nuclei2d_s2": (images["nuclei2d"], 2.0),
    }
    for name, (img, sigma) in gauss.items():
        g = ndi.gaussian_filter(img.astype(np.float32), sigma, mode="reflect", truncate=4.0)
        np.save(os.path.join(HERE, f"gaussian_{name}.npy"), g)
        if name == "nuclei3d_s1":
            otsu["nuclei3d_gaussian_s1"] = float(threshold_otsu(g))

    from skimage.filters import threshold_li, threshold_triangle
    variants = dict(images, nuclei3d_u8=(images["nuclei3d"] // 2).astype(np.uint8))
    for k, v in variants.items():
        otsu[f"li_{k}"] = float(threshold_li(v))
        otsu[f"triangle_{k}"] = float(threshold_triangle(v))
    with open(os.path.join(HERE, "otsu.json"), "w") as f:
        json.dump(otsu, f, indent=1, sort_keys=True)

    cases = [("nuclei2d", 4, (0.5, 0.5)), ("nuclei2d", 8, (0.5, 0.5)), ("nuclei3d", 6, (2.0, 0.5, 0.5)),
             ("nuclei3d", 26, (2.0, 0.5, 0.5)), ("neuron3d", 18, (1.0, 0.3, 0.3))]
    for name, conn, spacing in cases:
        img = images[name]
        mask = img > threshold_otsu(img)
        labels, n = ndi.label(mask, structure(img.ndim, conn))
        assert n < 65536
        np.save(os.path.join(HERE, f"labels_{name}_c{conn}.npy"), labels.astype(np.uint16))
        props = regionprops_table(
            labels, intensity_image=img, spacing=spacing,
            properties=["label", "area", "centroid", "bbox", "inertia_tensor_eigvals", "axis_major_length",
                        "axis_minor_length", "intensity_mean", "intensity_min", "intensity_max", "intensity_std"],
        )
        axes = "zyx"[3 - img.ndim:]
        rename = {"area": "volume", "intensity_mean": "raw_mean", "intensity_min": "raw_min",
                  "intensity_max": "raw_max", "intensity_std": "raw_std",
                  "axis_major_length": "major_axis_length", "axis_minor_length": "minor_axis_length"}
        for e in range(img.ndim):
            rename[f"inertia_tensor_eigvals-{e}"] = f"inertia_eig_{e}"
        for i, a in enumerate(axes):
            rename[f"centroid-{i}"] = f"centroid_{a}"
            rename[f"bbox-{i}"] = f"bbox_{a}0"
            rename[f"bbox-{i + img.ndim}"] = f"bbox_{a}1"
        cols = {rename.get(k, k): v for k, v in props.items()}
        cols.update(shape_columns(labels, spacing))
        with np.errstate(divide="ignore", invalid="ignore"):
            cols["anisotropy"] = 1 - cols["minor_axis_length"] / cols["major_axis_length"]
        # Nearest other centroid, brute force (ties: lowest label).
        c = np.stack([cols[f"centroid_{a}"] for a in axes], axis=1)
        d2 = ((c[:, None, :] - c[None, :, :]) ** 2).sum(-1)
        np.fill_diagonal(d2, np.inf)
        nn = d2.argmin(axis=1)
        cols["nn_distance"] = np.sqrt(d2[np.arange(len(c)), nn])
        cols["nn_label"] = cols["label"][nn]
        shape = img.shape
        cols["touches_border"] = np.array([
            int(any(cols[f"bbox_{a}0"][r] == 0 or cols[f"bbox_{a}1"][r] == shape[i] for i, a in enumerate(axes)))
            for r in range(len(c))])
        keys = list(cols)
        with open(os.path.join(HERE, f"props_{name}_c{conn}.csv"), "w") as f:
            f.write(",".join(keys) + "\n")
            for r in range(len(cols["label"])):
                f.write(",".join(repr(float(cols[k][r])) if isinstance(cols[k][r], (float, np.floating)) else str(cols[k][r]) for k in keys) + "\n")
        with open(os.path.join(HERE, f"props_{name}_c{conn}.spacing"), "w") as f:
            f.write(" ".join(str(s) for s in spacing) + "\n")

    morphology(images)
    awkward_shapes()
    contact_goldens(cases, images)
    marching_table()
    distances(images)
    watersheds(images)
    window_filters(images)
    rescales(images)
    a = images["nuclei3d"]
    f = (1, 2, 3)
    c = a[: a.shape[0] // f[0] * f[0], : a.shape[1] // f[1] * f[1], : a.shape[2] // f[2] * f[2]]
    m = c.reshape(c.shape[0] // f[0], f[0], c.shape[1] // f[1], f[1], c.shape[2] // f[2], f[2]).mean(axis=(1, 3, 5))
    np.save(os.path.join(HERE, "downsample_nuclei3d_1-2-3.npy"), m.astype(np.float32))

    import cc3d
    from importlib.metadata import version
    path = os.path.join(HERE, "versions.json")
    versions = json.load(open(path)) if os.path.exists(path) else {}
    versions.update({"numpy": np.__version__, "scipy": scipy.__version__, "scikit-image": skimage.__version__,
                     "tifffile": tifffile.__version__, "connected-components-3d": version("connected-components-3d")})
    with open(path, "w") as f:
        json.dump(versions, f, indent=1)
    print("goldens written to", HERE)


def watersheds(images):
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed
    dist = np.load(os.path.join(HERE, "distance_nuclei3d.npy"))
    s6 = ndi.generate_binary_structure(3, 1)
    cases = {"dist_h1": (dist, 1.0, None), "dist_h2.5": (dist, 2.5, None), "dist_c6_h1": (dist, 1.0, s6),
             "nuclei3d_h20": (images["nuclei3d"], 20, None), "nuclei3d_h7.5": (images["nuclei3d"], 7.5, None),
             "nuclei2d_h30": (images["nuclei2d"], 30, None)}
    for name, (img, h, fp) in cases.items():
        np.save(os.path.join(HERE, f"hmax_{name}.npy"), h_maxima(img, h, footprint=fp).astype(np.uint8))
    img = images["nuclei3d"]
    mask = img > threshold_otsu(img)
    markers, _ = ndi.label(h_maxima(dist, 1.0), ndi.generate_binary_structure(3, 3))
    w = watershed(-dist, markers, mask=mask)
    np.save(os.path.join(HERE, "watershed_declump_nuclei3d.npy"), w.astype(np.uint16))
    for name, conn, c in (("nuclei3d", 26, 1), ("nuclei3d", 26, 3), ("nuclei2d", 8, 2)):
        lab = np.load(os.path.join(HERE, f"labels_{name}_c{conn}.npy")).astype(np.int32)
        w = watershed(images[name], lab, connectivity=c)
        np.save(os.path.join(HERE, f"watershed_{name}_c{conn}_conn{c}.npy"), w.astype(np.uint16))
    flat = np.zeros((9, 23, 31), np.uint8)
    m = np.zeros(flat.shape, np.int32)
    rng = np.random.default_rng(5)
    for k in range(1, 12):
        z, y, x = rng.integers(0, 9), rng.integers(0, 22), rng.integers(0, 30)
        m[z, y:y + 1 + k % 2, x:x + 1 + k % 3] = k
    np.save(os.path.join(HERE, "watershed_flat_markers.npy"), m.astype(np.uint16))
    for c in (1, 2, 3):
        np.save(os.path.join(HERE, f"watershed_flat_conn{c}.npy"), watershed(flat, m, connectivity=c).astype(np.uint16))


def write_csv(path, cols):
    keys = list(cols)
    with open(path, "w") as f:
        f.write(",".join(keys) + "\n")
        for r in range(len(cols[keys[0]])):
            f.write(",".join(repr(float(cols[k][r])) if isinstance(cols[k][r], (float, np.floating)) else str(cols[k][r])
                             for k in keys) + "\n")


def contact_pairs(labels, spacing, areas=True):
    """{(a, b): value} of face contacts, a < b."""
    import cc3d
    conn = 6 if labels.ndim == 3 else 4
    kw = dict(surface_area=True, anisotropy=tuple(spacing)) if areas else dict(surface_area=False)
    got = cc3d.contacts(np.ascontiguousarray(labels.astype(np.uint32)), connectivity=conn, **kw)
    return {(min(a, b), max(a, b)): v for (a, b), v in got.items()}


def degrees(labels, pairs):
    deg = {}
    for a, b in pairs:
        deg[a] = deg.get(a, 0) + 1
        deg[b] = deg.get(b, 0) + 1
    return deg


def shape_columns(labels, spacing, territories=None):
    """surface_area, equivalent_diameter, sphericity, euler_number, n_neighbors (and
    n_territory_neighbors) per object, in label order."""
    from skimage.measure import marching_cubes, mesh_surface_area, regionprops
    regions = regionprops(labels, spacing=spacing)
    ndim = labels.ndim
    cols = {"surface_area": [], "equivalent_diameter": [], "sphericity": [], "euler_number": [], "n_neighbors": []}
    deg = degrees(labels, contact_pairs(labels, spacing, areas=False))
    for r in regions:
        if ndim == 3:
            mask = np.pad(r.image, 1).astype(np.float32)
            verts, faces, _, _ = marching_cubes(mask, 0.5, spacing=spacing, method="lewiner")
            area = mesh_surface_area(verts, faces)
            sph = np.pi ** (1 / 3) * (6 * r.area) ** (2 / 3) / area
        else:
            area = r.perimeter
            sph = 2 * np.sqrt(np.pi * r.area) / area if area > 0 else np.nan
        cols["surface_area"].append(float(area))
        cols["equivalent_diameter"].append(float(r.equivalent_diameter_area))
        cols["sphericity"].append(float(sph))
        cols["euler_number"].append(int(r.euler_number))
        cols["n_neighbors"].append(deg.get(r.label, 0))
    if territories is not None:
        tdeg = degrees(territories, contact_pairs(territories, spacing, areas=False))
        cols["n_territory_neighbors"] = [tdeg.get(r.label, 0) for r in regions]
    return {k: np.array(v) for k, v in cols.items()}


def awkward_shapes():
    """Objects that break naive surface, Euler and contact code, with anisotropic spacing."""
    a = np.zeros((14, 18, 22), np.uint16)
    a[5, 5, 5] = 1                      # one voxel
    a[0:3, 0:4, 10:14] = 2              # touches two borders (z = 0, y = 0)
    a[6:13, 9:16, 1:8] = 3              # hollow cube: a cavity (Euler 2)
    a[8:11, 11:14, 3:6] = 0
    a[1:4, 8:15, 14:21] = 4             # a ring: one tunnel (Euler 0)
    a[1:4, 10:13, 16:19] = 0
    a[6:10, 2:6, 12:16] = 5             # 5 and 6 share a face
    a[6:10, 2:6, 16:20] = 6
    a[11, 1, 12] = 7                    # 7 and 8 touch along an edge only, 8 and 9 at a corner only
    a[12, 2, 12] = 8
    a[13, 3, 13] = 9
    a[13, 17, 21] = 10                  # a single voxel in the last corner
    a[10:14, 0:18, 21] = np.where(a[10:14, 0:18, 21] == 0, 11, a[10:14, 0:18, 21])  # a wall on the x border
    spacing = (1.5, 0.5, 0.75)
    np.save(os.path.join(HERE, "shapes3d_labels.npy"), a)
    terr = skimage.segmentation.expand_labels(a, 3)
    np.save(os.path.join(HERE, "territories_shapes3d.npy"), terr.astype(np.uint16))
    b = np.zeros((20, 24), np.uint16)
    b[3, 3] = 1                         # one pixel
    b[0:4, 8:12] = 2                    # touches the border
    b[8:15, 2:9] = 3                    # a ring: one hole (Euler 0)
    b[10:13, 4:7] = 0
    b[8:12, 12:16] = 4                  # 4 and 5 share an edge, 5 and 6 a corner only
    b[8:12, 16:20] = 5
    b[12, 20] = 6
    b[16:20, 14:24] = 7                 # touches two borders, with a one-pixel hole
    b[17, 18] = 0
    for name, lab, sp in (("shapes3d", a, spacing), ("shapes2d", b, (0.5, 0.5))):
        t = np.load(os.path.join(HERE, f"territories_{name}.npy")) if name == "shapes3d" else None
        cols = props_columns(lab, sp)
        cols.update(shape_columns(lab, sp, t))
        write_csv(os.path.join(HERE, f"props_{name}.csv"), cols)
        with open(os.path.join(HERE, f"props_{name}.spacing"), "w") as f:
            f.write(" ".join(str(s) for s in sp) + "\n")
    np.save(os.path.join(HERE, "shapes2d_labels.npy"), b)


def props_columns(labels, spacing):
    from skimage.measure import regionprops_table
    t = regionprops_table(labels, spacing=spacing, properties=["label", "area"])
    return {"label": t["label"], "volume": t["area"]}


def contact_goldens(cases, images):
    """contacts_<case>.csv for the labelled images and the awkward shapes; territories for nuclei3d."""
    for name, conn, spacing in cases:
        labels = np.load(os.path.join(HERE, f"labels_{name}_c{conn}.npy"))
        write_contacts(f"{name}_c{conn}", labels, spacing)
    write_contacts("shapes3d", np.load(os.path.join(HERE, "shapes3d_labels.npy")), (1.5, 0.5, 0.75))
    write_contacts("shapes2d", np.load(os.path.join(HERE, "shapes2d_labels.npy")), (0.5, 0.5))
    labels = np.load(os.path.join(HERE, "labels_nuclei3d_c26.npy"))
    terr = skimage.segmentation.expand_labels(labels, 3).astype(np.uint16)
    np.save(os.path.join(HERE, "territories_nuclei3d_c26.npy"), terr)
    cols = shape_columns(labels, (2.0, 0.5, 0.5), terr)
    write_csv(os.path.join(HERE, "territory_neighbors_nuclei3d_c26.csv"),
              {"label": np.unique(labels[labels > 0]), "n_territory_neighbors": cols["n_territory_neighbors"]})


def write_contacts(stem, labels, spacing):
    area = contact_pairs(labels, spacing)
    faces = contact_pairs(labels, spacing, areas=False)
    keys = sorted(area)
    write_csv(os.path.join(HERE, f"contacts_{stem}.csv"),
              {"label_a": [a for a, _ in keys], "label_b": [b for _, b in keys],
               "faces": [int(faces[k]) for k in keys], "area": [float(area[k]) for k in keys]})


def marching_table():
    """For each binary 2×2×2 configuration c (bit b = corner (z, y, x) = (b>>2 & 1, b>>1 & 1, b & 1)),
    the triangles of scikit-image's Lewiner marching cubes at level 0.5, grouped by the direction of
    their normal: with n = the cross product of two edges in voxel units, |n| = (w/4)·|d| for a primitive
    direction d among DIRS. The area of a triangle with spacing s is |d ⊙ (s_y s_x, s_z s_x, s_z s_y)|·w/8."""
    from skimage.measure import marching_cubes
    dirs = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (0, 1, 1), (1, 0, 1), (1, 1, 0), (1, 1, 1), (3, 1, 1), (1, 3, 1), (1, 1, 3)]
    rows = []
    for c in range(256):
        w = [0] * len(dirs)
        if 0 < c < 255:
            cube = np.zeros((2, 2, 2), np.float32)
            for b in range(8):
                if c >> b & 1:
                    cube[b >> 2 & 1, b >> 1 & 1, b & 1] = 1
            v, f, _, _ = marching_cubes(cube, 0.5, method="lewiner")
            for t in f:
                n = np.abs(np.cross(v[t[1]] - v[t[0]], v[t[2]] - v[t[0]])) * 4
                q = np.round(n).astype(int)
                assert np.allclose(n, q)
                g = np.gcd.reduce(q)
                d = tuple(q // g)
                w[dirs.index(d)] += int(g)
        rows.append(w)
    path = os.path.join(DATA, "..", "src", "ops", "mc_table.rs")
    with open(path, "w") as f:
        f.write("// Generated by testdata/golden/make_golden.py (marching_table) from scikit-image "
                + skimage.__version__ + "; do not edit.\n")
        f.write("//! Triangles of scikit-image's Lewiner marching cubes (level 0.5) in each binary 2×2×2\n"
                "//! configuration, as area weights per normal direction: see [`super::local`].\n\n")
        f.write("/// Normal directions (z, y, x) of the triangles.\n")
        f.write(f"pub const DIRS: [[u8; 3]; {len(dirs)}] = {[list(d) for d in dirs]};\n\n".replace("], [", "], [")) 
        f.write("/// Weights per configuration (bit b: corner (b>>2 & 1, b>>1 & 1, b & 1)) and direction.\n")
        f.write(f"pub const WEIGHTS: [[u8; {len(dirs)}]; 256] = [\n")
        for w in rows:
            f.write("    [" + ", ".join(str(x) for x in w) + "],\n")
        f.write("];\n")


def rescales(images):
    from skimage.exposure import rescale_intensity
    cases = [("nuclei3d", images["nuclei3d"], "image", "uint8"), ("nuclei3d", images["nuclei3d"], (150, 300), "uint8"),
             ("nuclei2d", images["nuclei2d"], "dtype", "uint8"), ("nuclei2d", images["nuclei2d"], "image", "float32"),
             ("neuron3d_crop", images["neuron3d"][10:30, 32:96, 32:96], "image", "uint16"),
             ("neuron3d_crop", images["neuron3d"][10:30, 32:96, 32:96], (40.0, 120.0), "uint8")]
    for i, (name, img, rin, rout) in enumerate(cases):
        out = rescale_intensity(img, in_range=rin, out_range=rout)
        np.save(os.path.join(HERE, f"rescale_{i}_{name}.npy"), out)


def window_filters(images):
    fs = {"mean": ndi.uniform_filter, "median": ndi.median_filter, "minimum": ndi.minimum_filter, "maximum": ndi.maximum_filter}
    cases = [("nuclei3d", images["nuclei3d"], 3), ("nuclei3d_u8", (images["nuclei3d"] // 2).astype(np.uint8), (1, 3, 5)),
             ("nuclei2d", images["nuclei2d"], 5), ("neuron3d_crop", images["neuron3d"][10:30, 32:96, 32:96], 3),
             # 8-bit cubes: tessera's sliding-histogram median.
             ("nuclei3d_u8_c3", (images["nuclei3d"] // 2).astype(np.uint8), 3),
             ("nuclei3d_u8_c5", (images["nuclei3d"] // 2).astype(np.uint8), 5)]
    for name, img, size in cases:
        for op, f in fs.items():
            if name.endswith(("_c3", "_c5")) and op != "median":
                continue
            out = f(img, size=size, mode="reflect")
            assert out.dtype == img.dtype
            np.save(os.path.join(HERE, f"window_{op}_{name}.npy"), out)


def distances(images):
    for name, sampling in (("nuclei3d", (2.0, 0.5, 0.5)), ("nuclei2d", (0.5, 0.25))):
        img = images[name]
        mask = img > threshold_otsu(img)
        for tag, m in (("", mask), ("_inverted", ~mask)):
            d = ndi.distance_transform_edt(m, sampling=sampling)
            np.save(os.path.join(HERE, f"distance_{name}{tag}.npy"), d.astype(np.float32))


def element(radius, shape, spacing, ndim):
    """tessera's structuring element: offsets d with sum((d*s)^2) <= r^2 (ball) or |d*s| <= r."""
    s = np.asarray(spacing, float)[-ndim:]
    reach = [int(np.floor(radius / v)) for v in s]
    grids = np.meshgrid(*[np.arange(-r, r + 1) for r in reach], indexing="ij")
    if shape == "ball":
        return sum((g * v) ** 2 for g, v in zip(grids, s)) <= radius * radius
    return np.ones([2 * r + 1 for r in reach], bool)


def morphology(images):
    ops = {"erosion": ndi.binary_erosion, "dilation": ndi.binary_dilation,
           "opening": ndi.binary_opening, "closing": ndi.binary_closing}
    cases = [("nuclei3d", "ball", 1.0, (1, 1, 1)), ("nuclei3d", "ball", 2.0, (1, 1, 1)),
             ("nuclei3d", "cube", 1.0, (1, 1, 1)), ("nuclei3d", "ball", 1.0, (2.0, 0.5, 0.5)),
             ("nuclei2d", "ball", 2.0, (1, 1, 1))]
    for name, shape, r, spacing in cases:
        img = images[name]
        mask = img > threshold_otsu(img)
        se = element(r, shape, spacing, img.ndim)
        tag = f"{name}_{shape}{r:g}" + ("_phys" if spacing != (1, 1, 1) else "")
        for op, f in ops.items():
            out = f(mask, structure=se, border_value=0)
            np.save(os.path.join(HERE, f"morph_{op}_{tag}.npy"), out.astype(np.uint8))
    for name in ("nuclei3d", "nuclei2d"):
        img = images[name]
        # The Otsu mask has few holes; its complement has many (the background between objects).
        mask = img > threshold_otsu(img)
        np.save(os.path.join(HERE, f"morph_fill_holes_{name}.npy"), ndi.binary_fill_holes(mask).astype(np.uint8))
        inv = ~mask
        np.save(os.path.join(HERE, f"morph_fill_holes_{name}_inverted.npy"), ndi.binary_fill_holes(inv).astype(np.uint8))


if __name__ == "__main__":
    main()
