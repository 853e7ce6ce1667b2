#!/usr/bin/env python3
"""Writes the tiny Arrow IPC stream fixture for meft-assets' reader tests, plus the rows pyarrow
reads back from it as JSON lines (the expected output).

Run by hand (needs `pip install pyarrow`, a development-only dependency):
    python3 tools/make_arrow_fixture.py meft-assets/tests/fixtures
"""
import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc


def schema() -> pa.Schema:
    inner = pa.struct([("names", pa.list_(pa.string())), ("ranks", pa.list_(pa.int32())), ("kind", pa.string())])
    return pa.schema([
        ("question", pa.string()),
        ("big_text", pa.large_string()),
        ("answers", pa.list_(pa.string())),
        ("long_list", pa.large_list(pa.int64())),
        ("meta", inner),
        ("i8", pa.int8()),
        ("i64", pa.int64()),
        ("u16", pa.uint16()),
        ("f32", pa.float32()),
        ("f64", pa.float64()),
        ("flag", pa.bool_()),
        ("nothing", pa.null()),
    ])


def batch(offset: int, n: int) -> dict:
    rows = {k: [] for k in schema().names}
    for i in range(offset, offset + n):
        rows["question"].append(None if i % 4 == 3 else f"question {i} \u00e9\u4e2d")
        rows["big_text"].append("x" * i)
        rows["answers"].append(None if i % 5 == 4 else [f"a{i}.{j}" for j in range(i % 3)])
        rows["long_list"].append([i * 10 + j for j in range(i % 4)])
        rows["meta"].append(None if i == 6 else {"names": [f"n{i}"] * (i % 2), "ranks": list(range(i % 3)), "kind": None if i % 2 else f"k{i}"})
        rows["i8"].append(-i if i % 2 else i)
        rows["i64"].append(None if i == 2 else -(2**40) + i)
        rows["u16"].append(65535 - i)
        rows["f32"].append(i + 0.25)
        rows["f64"].append(-i / 8)
        rows["flag"].append(None if i % 3 == 2 else i % 2 == 0)
        rows["nothing"].append(None)
    return rows


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    sch = schema()
    batches = [pa.record_batch(batch(o, n), schema=sch) for o, n in [(0, 5), (5, 4), (9, 0), (9, 3)]]
    with ipc.new_stream(out / "tiny.arrow", sch) as writer:
        for b in batches:
            writer.write_batch(b)
    with ipc.open_stream(out / "tiny.arrow") as reader:
        table = reader.read_all()
    with open(out / "tiny.jsonl", "w") as f:
        for row in table.to_pylist():
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {table.num_rows} rows to {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "meft-assets/tests/fixtures"))
