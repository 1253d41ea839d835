#!/usr/bin/env python3
"""DuckDB reads the Parquet tables tessera writes as tessera wrote them: for every `.parquet`
under the folders given that has a `.csv` twin, the same columns in the same order, the same
row count and the same values cell by cell (numbers exactly, text, booleans, missing values),
and the `tessera.units` key-value metadata is JSON. Exits 1 naming the first difference."""
import csv
import json
import math
import pathlib
import sys

import duckdb


def same(cell, text):
    if cell is None:
        return text in ("", "NA", "NaN", "null")
    if isinstance(cell, bool):
        return text == ("true" if cell else "false")
    if isinstance(cell, (int, float)):
        if text == "":
            return isinstance(cell, float) and math.isnan(cell)
        v = float(text)
        return (math.isnan(v) and math.isnan(cell)) or v == cell
    return str(cell) == text


def main(folders):
    con = duckdb.connect()
    checked = 0
    for folder in folders:
        for pq in sorted(pathlib.Path(folder).rglob("*.parquet")):
            if ".tessera" in pq.parts:
                continue
            twin = pq.with_suffix(".csv")
            kv = con.execute("select key, value from parquet_kv_metadata(?)", [str(pq)]).fetchall()
            meta = {bytes(k).decode(): bytes(v).decode("utf-8", "replace") for k, v in kv}
            if "tessera.units" in meta:
                json.loads(meta["tessera.units"])
            if not twin.exists():
                continue
            rel = con.execute("select * from read_parquet(?)", [str(pq)])
            names = [d[0] for d in rel.description]
            rows = rel.fetchall()
            with open(twin, newline="") as f:
                r = list(csv.reader(f))
            if r[0] != names:
                sys.exit(f"{pq}: DuckDB sees columns {names}, the CSV has {r[0]}")
            if len(r) - 1 != len(rows):
                sys.exit(f"{pq}: DuckDB sees {len(rows)} rows, the CSV has {len(r) - 1}")
            for i, (row, text) in enumerate(zip(rows, r[1:])):
                for name, cell, t in zip(names, row, text):
                    if not same(cell, t):
                        sys.exit(f"{pq}: row {i}, column {name}: DuckDB reads {cell!r}, the CSV has {t!r}")
            checked += 1
            print(f"{pq}: {len(rows)} rows × {len(names)} columns, as in {twin.name}")
    if checked == 0:
        sys.exit("no Parquet table with a CSV twin found")
    print(f"DuckDB {duckdb.__version__}: {checked} tables read as written")


if __name__ == "__main__":
    main(sys.argv[1:])
