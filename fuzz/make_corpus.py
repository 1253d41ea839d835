#!/usr/bin/env python3
"""Seeds the fuzz corpus (fuzz/corpus/<target>/) with small, valid and broken inputs of every
kind each target reads: TIFFs in every layout and codec tessera reads, PNG/JPEG, .npy of every
element type and version, OME-Zarr stores (NGFF 0.4/0.5, several codecs, sharding), the
bundled pipelines and manifests, and checkpoints and records from a real `tessera run`.

Run once, then minimise with `cargo fuzz cmin <target>`; the minimised corpus is committed, so
CI and `cargo fuzz run` need no Python. Needs numpy, tifffile, imagecodecs, pillow, zarr,
pyarrow (the bench venv has them) and a built tessera (`cargo build --release`).

    ~/.cache/tessera-bench-venv/bin/python fuzz/make_corpus.py
"""

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import tifffile
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CORPUS = os.path.join(HERE, "corpus")
rng = np.random.default_rng(25)


def seed(target, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    name = hashlib.sha1(data).hexdigest()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def read(path):
    with open(path, "rb") as f:
        return f.read()


def vol(dtype, shape=(3, 16, 16)):
    if np.dtype(dtype).kind == "f":
        return rng.normal(10, 3, shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, min(info.max, 1000) + 1, shape).astype(dtype)


def tiff(data, **kw):
    b = io.BytesIO()
    tifffile.imwrite(b, data, **kw)
    return b.getvalue()


def tiffs():
    for dt in ["uint8", "uint16", "uint32", "float32", "int16", "int8", "int32", "float64"]:
        seed("tiff", tiff(vol(dt)))
    v = vol("uint16")
    for comp in ["lzw", "zlib", "packbits", "zstd", "lzma", "webp"]:
        try:
            seed("tiff", tiff(vol("uint8") if comp == "webp" else v, compression=comp))
        except Exception as e:  # a codec this tifffile lacks
            print("skip", comp, e, file=sys.stderr)
    seed("tiff", tiff(v, compression="lzw", predictor=True))
    seed("tiff", tiff(vol("float32"), compression="zlib", predictor=3))
    seed("tiff", tiff(v, tile=(16, 16), compression="lzw"))
    seed("tiff", tiff(vol("uint8", (2, 32, 32)), tile=(16, 16)))
    seed("tiff", tiff(v, rowsperstrip=5, compression="zlib"))
    seed("tiff", tiff(v, bigtiff=True))
    seed("tiff", tiff(v, byteorder=">", compression="lzw"))
    seed("tiff", tiff(v, imagej=True, resolution=(2.0, 2.0), metadata={"spacing": 3.0, "unit": "um", "axes": "ZYX"}))
    seed("tiff", tiff(vol("float32"), imagej=True))
    seed("tiff", tiff(v, ome=True, metadata={"axes": "ZYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5, "PhysicalSizeZ": 2.0}))
    seed("tiff", tiff(vol("uint8", (16, 16))))
    seed("tiff", tiff(vol("uint8", (16, 16, 3)), photometric="rgb"))
    seed("tiff", tiff(vol("uint8", (3, 16, 16)), photometric="rgb", planarconfig="separate"))
    seed("tiff", tiff(vol("uint16", (16, 16, 3)), photometric="rgb", compression="zlib"))
    seed("tiff", tiff(vol("uint8", (16, 16, 4)), photometric="rgb", extrasamples=["unassalpha"]))
    seed("tiff", tiff((vol("uint8", (16, 16)) > 500).astype(bool)))
    seed("tiff", tiff(vol("uint8", (2, 16, 16)), compression="jpeg"))
    seed("tiff", tiff(vol("uint8", (2, 3, 16, 16)), imagej=True, metadata={"axes": "ZCYX"}))
    for f in sorted(os.listdir(os.path.join(ROOT, "testdata", "bad"))):
        if f.endswith(".tif"):
            seed("tiff", read(os.path.join(ROOT, "testdata", "bad", f)))


def rasters():
    def png(a, **kw):
        b = io.BytesIO()
        Image.fromarray(a).save(b, format="PNG", **kw)
        return b"\x00" + b.getvalue()

    def jpg(a, **kw):
        b = io.BytesIO()
        Image.fromarray(a).save(b, format="JPEG", **kw)
        return b"\x01" + b.getvalue()

    g8 = vol("uint8", (12, 16))
    rgb = vol("uint8", (12, 16, 3))
    seed("raster", png(g8))
    seed("raster", png(vol("uint16", (12, 16))))
    seed("raster", png(rgb))
    seed("raster", png(vol("uint8", (12, 16, 4))))
    seed("raster", png(g8, optimize=True))
    seed("raster", b"\x00" + _png_palette())
    seed("raster", png(np.zeros((12, 16), bool)))
    seed("raster", jpg(g8))
    seed("raster", jpg(rgb, quality=50))
    seed("raster", jpg(rgb, progressive=True))
    seed("raster", jpg(rgb, subsampling=0))
    seed("raster", b"\x00" + read(os.path.join(ROOT, "testdata", "bad", "truncated.png")))


def _png_palette():
    b = io.BytesIO()
    Image.fromarray(vol("uint8", (12, 16)) % 8).convert("P").save(b, format="PNG")
    return b.getvalue()


def npys():
    def npy(a, version=None):
        b = io.BytesIO()
        if version is None:
            np.save(b, a)
        else:
            np.lib.format.write_array(b, a, version=version)
        return b.getvalue()

    for dt in ["u1", "u2", "u4", "f4", "i1", "i2", "f8", ">u2", "<i4", "?", "c8"]:
        seed("npy", npy(vol("uint8", (3, 5, 4)).astype(dt)))
    seed("npy", npy(vol("uint16", (5, 4))))
    seed("npy", npy(vol("uint8", (6,))))
    seed("npy", npy(vol("uint8", (2, 2, 3, 4))))
    seed("npy", npy(np.asfortranarray(vol("uint16", (3, 5, 4)))))
    seed("npy", npy(vol("uint8", (3, 5, 4)), version=(2, 0)))
    seed("npy", npy(vol("uint8", (3, 5, 4)), version=(3, 0)))
    seed("npy", read(os.path.join(ROOT, "testdata", "bad", "absurd_shape.npy")))


def pack(store):
    out = b""
    for dirpath, _, files in sorted(os.walk(store)):
        for f in sorted(files):
            p = os.path.join(dirpath, f)
            name = os.path.relpath(p, store).encode()
            data = read(p)
            out += bytes([len(name)]) + name + len(data).to_bytes(4, "little") + data
    return out


def zarrs(tmp):
    import zarr
    from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec, ShardingCodec, BytesCodec

    def ngff(version, nlevels, axes="zyx"):
        ax = [{"name": a, "type": "space", "unit": "micrometer"} if a in "zyx" else {"name": a, "type": "channel" if a == "c" else "time"} for a in axes]
        datasets = [
            {"path": f"s{i}", "coordinateTransformations": [{"type": "scale", "scale": [1.0 if a not in "zyx" else (2.0 if a == "z" else 0.5) * 2**i for a in axes]}]}
            for i in range(nlevels)
        ]
        ms = {"axes": ax, "datasets": datasets, "name": "seed"}
        if version == "0.4":
            ms["version"] = "0.4"
            return {"multiscales": [ms]}
        return {"ome": {"version": "0.5", "multiscales": [ms]}}

    cases = [
        ("v3_zstd", 3, {"compressors": ZstdCodec(level=1)}, "uint16", "zyx"),
        ("v3_gzip", 3, {"compressors": GzipCodec()}, "uint8", "zyx"),
        ("v3_blosc", 3, {"compressors": BloscCodec()}, "float32", "zyx"),
        ("v3_none", 3, {"compressors": None}, "uint8", "zyx"),
        ("v3_shard", 3, {"shards": (2, 8, 8), "compressors": ZstdCodec(level=1)}, "uint16", "zyx"),
        ("v3_2d", 3, {"compressors": None}, "uint8", "yx"),
        ("v3_czyx", 3, {"compressors": None}, "uint8", "czyx"),
        ("v2_zstd", 2, {"compressors": None}, "uint16", "zyx"),
        ("v2_none", 2, {"compressors": None}, "int16", "zyx"),
    ]
    for name, fmt, kw, dt, axes in cases:
        path = os.path.join(tmp, name + ".ome.zarr")
        root = zarr.open_group(path, mode="w", zarr_format=fmt)
        shape = {"zyx": (4, 8, 8), "yx": (8, 8), "czyx": (1, 4, 8, 8)}[axes]
        chunks = {"zyx": (2, 4, 4), "yx": (4, 4), "czyx": (1, 2, 4, 4)}[axes]
        for lvl in range(2):
            s = tuple(max(1, n // 2**lvl) if a in "yx" else n for n, a in zip(shape, axes))
            c = tuple(min(a, b) for a, b in zip(chunks, s))
            kws = dict(kw)
            if "shards" in kws:
                kws["shards"] = tuple(max(cc, min(sh, ss)) for cc, sh, ss in zip(c, kws["shards"], s))
                kws["shards"] = tuple(ss if ss % cc else min(sh, ss) for cc, sh, ss in zip(c, kws["shards"], s))
            a = root.create_array(f"s{lvl}", shape=s, chunks=c, dtype=dt, **kws)
            a[...] = vol(dt, s)
        root.attrs.update(ngff("0.5" if fmt == 3 else "0.4", 2, axes))
        seed("zarr", pack(path))


def pipelines():
    for d in ["pipelines", "testdata/bad/pipelines", "testdata/stream"]:
        for f in sorted(os.listdir(os.path.join(ROOT, d))):
            if f.endswith(".yaml"):
                seed("pipeline", read(os.path.join(ROOT, d, f)))
    # Placeholders of the manifest's columns, sources and every kind of output.
    seed("pipeline", b"""version: 1
name: seed
sources: [nuclei]
stages:
  smooth: {op: gaussian, input: image, sigma: "{sigma}"}
  mask: {op: threshold, input: smooth, method: otsu}
  objects: {op: label, input: mask, connectivity: 26, min_size: 3}
  shape: {op: measure, labels: objects, intensity: {raw: image, other: nuclei}}
outputs:
  objects: [tiff, ome-zarr]
  shape: [parquet, csv]
stats:
  table: shape
  by: group
  columns: [volume, mean_intensity_raw]
""")


def manifests(tmp):
    for f in ["samples.csv", "nuclei.csv", "bone.csv", "classify/objects_train.csv", "crops/photos.csv"]:
        seed("manifest", b"\x00" + read(os.path.join(ROOT, "testdata", f)))
    seed("manifest", b"\x00sample;image;group\na;a.tif;x\nb;\"b,1.tif\";y\n")
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = pa.table({"sample": ["a", "b"], "image": ["a.tif", "b.tif"], "dose": [1.5, 2.0], "n": [1, 2]})
    b = io.BytesIO()
    pq.write_table(t, b)
    seed("manifest", b"\x01" + b.getvalue())
    b = io.BytesIO()
    pq.write_table(t, b, compression="none")
    seed("manifest", b"\x01" + b.getvalue())


def run_outputs(tmp):
    """Checkpoints and records from a real run on a small volume (a mask, labels, images and
    tables), with one sample failing."""
    exe = os.path.join(ROOT, "target", "release", "tessera")
    img = (rng.random((6, 20, 20)) * 200).astype(np.uint8)
    img[2:4, 5:9, 5:9] = 250
    tifffile.imwrite(os.path.join(tmp, "a.tif"), img)
    tifffile.imwrite(os.path.join(tmp, "b.tif"), img[:, ::-1].copy())
    with open(os.path.join(tmp, "bad.tif"), "wb") as f:
        f.write(b"II*\x00garbage")
    with open(os.path.join(tmp, "s.csv"), "w") as f:
        f.write("sample,image,group\na,a.tif,x\nb,b.tif,y\nbad,bad.tif,y\n")
    with open(os.path.join(tmp, "p.yaml"), "w") as f:
        f.write("""version: 1
name: seed
samples: s.csv
stages:
  smooth: {op: gaussian, input: image, sigma: 1.0}
  mask: {op: threshold, input: smooth, method: otsu}
  objects: {op: label, input: mask, connectivity: 26}
  shape: {op: measure, labels: objects, intensity: {raw: image}}
  area: {op: mean, input: image, size: 3}
outputs:
  objects: tiff
  shape: csv
stats:
  table: shape
  by: group
""")
    out = os.path.join(tmp, "out")
    subprocess.run([exe, "run", os.path.join(tmp, "p.yaml"), "--out", out], check=False)
    seed("record", read(os.path.join(out, "run.json")))
    for dirpath, _, files in os.walk(os.path.join(out, ".tessera")):
        for f in files:
            p = os.path.join(dirpath, f)
            data = read(p)
            if f.endswith(".ckpt"):
                seed("checkpoint", b"\x00" + data)
                seed("checkpoint", b"\x01" + data[48:])
            elif os.path.basename(dirpath) == "samples":
                seed("record", data)


def main():
    shutil.rmtree(CORPUS, ignore_errors=True)
    with tempfile.TemporaryDirectory() as tmp:
        tiffs()
        rasters()
        npys()
        zarrs(tmp)
        pipelines()
        manifests(tmp)
        run_outputs(tmp)
    for t in sorted(os.listdir(CORPUS)):
        print(t, len(os.listdir(os.path.join(CORPUS, t))))


if __name__ == "__main__":
    main()
