#!/usr/bin/env python3
"""OME-Zarr fixtures written by the real tools (ome-zarr-py, zarr-python), for tests/zarr.rs.

Every store holds testdata/nuclei3d.tif (31x61x57 uint16, z 2.0 / y,x 0.5 micrometer) or
testdata/nuclei2d.tif, written by ome-zarr-py's `write_image` as NGFF 0.4 (Zarr v2) or 0.5
(Zarr v3), with several chunk shapes and every codec tessera must read. Committed, so
`cargo test` needs no Python. Re-create with:

    python -m venv v && v/bin/pip install ome-zarr zarr tifffile numcodecs
    v/bin/python testdata/make_zarr.py [--out DIR]

(CI writes a fresh set with the installed versions into a temporary folder with --out.)
Versions used for the committed files: see testdata/formats/zarr/VERSIONS.
"""

import os
import shutil
import sys

import numcodecs
import numpy as np
import ome_zarr
import tifffile
import zarr
from ome_zarr.format import FormatV04, FormatV05
from ome_zarr.writer import write_image

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = sys.argv[sys.argv.index("--out") + 1] if "--out" in sys.argv else os.path.join(HERE, "formats", "zarr")


def store(name, img, fmt, axes, scale, options, scale_factors=(2,)):
    path = os.path.join(OUT, name)
    group = zarr.open_group(path, mode="w", zarr_format=fmt.zarr_format)
    write_image(
        img,
        group,
        fmt=fmt,
        axes=axes,
        scale=scale,
        axes_units={a: "micrometer" for a in axes if a in "zyx"},
        scale_factors=scale_factors,
        storage_options=options,
    )
    return path


def main():
    if os.path.exists(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    img3d = tifffile.imread(os.path.join(HERE, "nuclei3d.tif"))
    img2d = tifffile.imread(os.path.join(HERE, "nuclei2d.tif"))
    assert img3d.shape == (31, 61, 57) and img3d.dtype == np.uint16, (img3d.shape, img3d.dtype)
    s3 = {"z": 2.0, "y": 0.5, "x": 0.5}
    v3 = zarr.codecs
    # NGFF 0.5 (Zarr v3)
    store("v05_default.ome.zarr", img3d, FormatV05(), "zyx", s3, {})
    store("v05_zstd_8x16x16.ome.zarr", img3d, FormatV05(), "zyx", s3,
          {"chunks": (8, 16, 16), "compressor": [v3.ZstdCodec(level=5)]})
    store("v05_gzip_7x20x19.ome.zarr", img3d, FormatV05(), "zyx", s3,
          {"chunks": (7, 20, 19), "compressor": [v3.GzipCodec(level=6)]})
    store("v05_blosc_lz4.ome.zarr", img3d, FormatV05(), "zyx", s3,
          {"chunks": (4, 32, 32), "compressor": [v3.BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")]})
    store("v05_none_planes.ome.zarr", img3d, FormatV05(), "zyx", s3,
          {"chunks": (1, 61, 57), "compressor": None})
    store("v05_sharded.ome.zarr", img3d, FormatV05(), "zyx", s3,
          {"chunks": (4, 16, 16), "shards": (8, 32, 32)})
    # A channel axis of length 1 before z (tczyx-style images with one channel).
    store("v05_czyx.ome.zarr", img3d[None], FormatV05(), "czyx", s3, {"chunks": (1, 8, 32, 32)})
    store("v05_2d.ome.zarr", img2d, FormatV05(), "yx", {"y": 0.5, "x": 0.5}, {"chunks": (128, 128)})
    # Other sample types, read as float32, with the first 8 planes zero: the chunks (and shards)
    # holding only zeros are not stored, and read as the fill value.
    sparse = img3d.copy()
    sparse[:8] = 0
    assert sparse.max() < 2 ** 15
    store("v05_int16_sparse.ome.zarr", sparse.astype(np.int16), FormatV05(), "zyx", s3,
          {"chunks": (8, 16, 16)})
    store("v05_float64_sharded_sparse.ome.zarr", sparse.astype(np.float64), FormatV05(), "zyx", s3,
          {"chunks": (4, 16, 16), "shards": (8, 32, 32)})
    for name in ("v05_int16_sparse.ome.zarr", "v05_float64_sharded_sparse.ome.zarr"):
        level0 = os.path.join(OUT, name, "s0", "c", "0")
        assert not os.path.exists(level0), f"{name}: the all-zero chunk row was stored"
    # NGFF 0.4 (Zarr v2)
    store("v04_default.ome.zarr", img3d, FormatV04(), "zyx", s3, {})
    store("v04_blosc_zstd_8x16x16.ome.zarr", img3d, FormatV04(), "zyx", s3,
          {"chunks": (8, 16, 16), "compressor": numcodecs.Blosc(cname="zstd", clevel=3, shuffle=numcodecs.Blosc.SHUFFLE)})
    store("v04_gzip.ome.zarr", img3d, FormatV04(), "zyx", s3,
          {"chunks": (7, 20, 19), "compressor": numcodecs.GZip(level=6)})
    store("v04_zstd.ome.zarr", img3d, FormatV04(), "zyx", s3,
          {"chunks": (16, 64, 64), "compressor": numcodecs.Zstd(level=3)})
    store("v04_none.ome.zarr", img3d, FormatV04(), "zyx", s3, {"chunks": (31, 61, 57), "compressor": None})
    with open(os.path.join(OUT, "VERSIONS"), "w") as f:
        f.write(f"python {sys.version.split()[0]}\nome-zarr {ome_zarr.__version__}\nzarr {zarr.__version__}\n"
                f"numcodecs {numcodecs.__version__}\nnumpy {np.__version__}\n")
    # Every store reads back to the TIFF's voxels through zarr-python.
    for name in sorted(os.listdir(OUT)):
        if name.endswith(".ome.zarr"):
            g = zarr.open_group(os.path.join(OUT, name), mode="r")
            a = np.asarray(g[g.attrs.get("ome", g.attrs)["multiscales"][0]["datasets"][0]["path"]])
            want = img2d if "2d" in name else sparse if "sparse" in name else img3d
            assert np.array_equal(a.reshape(want.shape), want), name
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
