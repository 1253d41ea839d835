#!/usr/bin/env python3
"""CI: the OME-Zarr stores tessera writes, opened by the real clients.

For every `<stage>.ome.zarr` under the given output folders:
- ome-zarr-py's reader (what napari-ome-zarr uses) finds the image, every level with the scale
  written in the metadata, and the labels (a linked store: the image and its `labels/` group);
- zarr-python reads every level; level 0 equals tessera's TIFF output of the same stage when
  the run wrote one, and each level's shape is the one the metadata promises;
- the ome-zarr-models validator accepts the metadata (Image, or ImageLabel for labels);
- napari opens it through the napari-ome-zarr plugin (napari's reader machinery, headless: a
  ViewerModel, no window) as an Image or Labels layer — both for a linked store — with the
  level-0 scale and every level.

Usage: check_zarr.py OUT_DIR...
"""

import os
import sys

import numpy as np
import tifffile
import zarr
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader
from ome_zarr_models import open_ome_zarr

import npe2
from napari.components import ViewerModel

npe2.PluginManager.instance().discover()


def napari_layers(path):
    """(layer type, scale, level shapes) of what napari opens from `path`."""
    out = []
    for layer in ViewerModel().open(path, plugin="napari-ome-zarr"):
        data = layer.data if layer.multiscale else [layer.data]
        out.append((type(layer).__name__, [float(x) for x in layer.scale], [tuple(d.shape) for d in data]))
    return out


def ome(group):
    attrs = dict(group.attrs)
    return attrs.get("ome", attrs)


def check_multiscale(path, tif=None):
    """Every level readable, shapes decreasing, level 0 == the TIFF."""
    g = zarr.open_group(path, mode="r")
    ms = ome(g)["multiscales"][0]
    levels = [np.asarray(g[d["path"]]) for d in ms["datasets"]]
    for a, b in zip(levels, levels[1:]):
        assert all(y <= x for x, y in zip(a.shape, b.shape)), (path, a.shape, b.shape)
    if tif is not None and os.path.exists(tif):
        t = tifffile.imread(tif)
        assert np.array_equal(levels[0].reshape(t.shape), t), f"{path}: level 0 differs from {tif}"
    # ome-zarr-py finds it, with the levels and scales of the metadata.
    nodes = list(Reader(parse_url(path))())
    node = nodes[0]
    assert [tuple(x.shape) for x in node.data] == [a.shape for a in levels], (path, [x.shape for x in node.data])
    scales = [t[0]["scale"] for t in node.metadata["coordinateTransformations"]]
    assert scales == [d["coordinateTransformations"][0]["scale"] for d in ms["datasets"]], (path, scales)
    kind = type(open_ome_zarr(g)).__name__
    return levels, kind, nodes


def main():
    n = 0
    for out in sys.argv[1:]:
        for root, dirs, _ in os.walk(out):
            for d in sorted(dirs):
                if not d.endswith(".ome.zarr"):
                    continue
                path = os.path.join(root, d)
                stage = d[: -len(".ome.zarr")]
                tif = os.path.join(root, stage + ".tif")
                linked = os.path.isdir(os.path.join(path, "labels", stage))
                if linked:
                    # The image (links to the input's arrays) and its labels.
                    image_levels, kind, nodes = check_multiscale(path)
                    assert kind == "Image", (path, kind)
                    specs = [type(s).__name__ for node in nodes for s in node.specs]
                    assert "Labels" in specs and "Label" in specs, (path, specs)
                    label_levels, kind, _ = check_multiscale(os.path.join(path, "labels", stage), tif)
                    assert kind == "ImageLabel", (path, kind)
                    assert [a.shape for a in label_levels] == [a.shape for a in image_levels], path
                    kinds = [k for k, _, _ in napari_layers(path)]
                    assert kinds == ["Image", "Labels"], (path, kinds)
                    print(f"ok {path}: image {len(image_levels)} levels + labels/{stage} (linked)")
                else:
                    levels, kind, nodes = check_multiscale(path, tif)
                    is_label = "image-label" in ome(zarr.open_group(path, mode="r"))
                    assert kind == ("ImageLabel" if is_label else "Image"), (path, kind)
                    g = zarr.open_group(path, mode="r")
                    scale0 = ome(g)["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"]
                    layers = napari_layers(path)
                    assert layers == [("Labels" if is_label else "Image", scale0, [a.shape for a in levels])], (path, layers)
                    print(f"ok {path}: {kind}, levels {[a.shape for a in levels]}")
                n += 1
            dirs[:] = [d for d in dirs if not d.endswith(".ome.zarr") and d != ".tessera"]
    assert n > 0, "no .ome.zarr stores found"
    print(f"{n} OME-Zarr stores open in ome-zarr-py, zarr-python and napari (napari-ome-zarr) and validate (ome-zarr-models)")


if __name__ == "__main__":
    main()
