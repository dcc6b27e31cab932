"""scripts/convert_jsonl_to_parquet.py: same columns and types, streaming, bad rows named by line."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sft.dataprep.jsonl_io import InputError

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "convert_jsonl_to_parquet.py"
_spec = importlib.util.spec_from_file_location("convert_jsonl_to_parquet", SCRIPT)
convert = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(convert)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_same_columns_and_types(tmp_path):
    rows = [
        {"id": i, "prompt": f"p{i}", "score": i / 2, "ok": i % 2 == 0, "tags": ["a", "b"][: i % 3],
         "meta": {"model": "m", "temperature": 0.7}, "num_tokens": 100 + i}
        for i in range(50)
    ]
    rows[3]["meta"] = None
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    stats = convert.convert_jsonl_to_parquet(source, tmp_path / "out.parquet", progress=False)
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.column_names == ["id", "prompt", "score", "ok", "tags", "meta", "num_tokens"]
    types = {f.name: f.type for f in table.schema}
    assert types["id"] == pa.int64() and types["num_tokens"] == pa.int64()
    assert types["score"] == pa.float64() and types["ok"] == pa.bool_() and types["prompt"] == pa.string()
    assert pa.types.is_list(types["tags"]) and pa.types.is_struct(types["meta"])
    assert table.to_pylist() == rows
    assert stats["rows_read"] == stats["rows_written"] == 50 and stats["rejected"] == {}


def test_streams_in_chunks_and_widens_types_without_losing_values(tmp_path):
    rows = [{"id": i, "text": "x" * 200} for i in range(300)]
    rows[250]["id"] = "id-250"  # a later chunk changes the type of `id`
    rows[280]["late"] = {"k": 1}  # and adds a column
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    output = tmp_path / "out.parquet"
    stats = convert.convert_jsonl_to_parquet(source, output, chunk_bytes=4096, progress=False)
    parquet = pq.ParquetFile(output)
    assert parquet.num_row_groups > 10  # written chunk by chunk, never all rows at once
    table = parquet.read()
    assert table.schema.field("id").type == pa.string()
    assert table.column("id").to_pylist() == [str(r["id"]) for r in rows]
    assert table.column("late").to_pylist()[280] == {"k": 1} and table.column("late").null_count == 299
    assert table.column("text").to_pylist() == [r["text"] for r in rows]
    assert stats["rows_written"] == 300
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.parquet"]  # temporary parts removed


def test_bad_line_stops_with_file_and_line(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_bytes(b'{"a": 1}\n\n{"a": 2}\n{"a": \n{"a": 4}\n')
    output = tmp_path / "out.parquet"
    with pytest.raises(convert.DataError, match=rf"{source}:4: not valid JSON"):
        convert.convert_jsonl_to_parquet(source, output, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]  # nothing half-written


def test_skip_writes_rejects_and_counts_add_up(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_bytes(
        b'\xef\xbb\xbf{"a": 1}\r\n'
        b"\n"
        b'{"a": \n'
        b'{"a": "caf\xe9"}\n'
        b"[1]\n"
        b'{"a": 5}\n'
        b'{"a": 6, "b'
    )
    output = tmp_path / "out.parquet"
    stats = convert.convert_jsonl_to_parquet(source, output, on_error="skip", progress=False)
    assert stats["rows_read"] == 6 and stats["blank_lines"] == 1
    assert stats["rejected"] == {"malformed_json": 1, "invalid_utf8": 1, "not_an_object": 1, "truncated_last_line": 1}
    assert stats["rows_written"] + sum(stats["rejected"].values()) == stats["rows_read"]
    assert pq.read_table(output).column("a").to_pylist() == [1, 5]
    rejects = [json.loads(line) for line in Path(stats["rejects_file"]).read_text().splitlines()]
    assert [(r["line"], r["reason"]) for r in rejects] == [
        (3, "malformed_json"), (4, "invalid_utf8"), (5, "not_an_object"), (7, "truncated_last_line")]
    assert rejects[1]["raw"] == '{"a": "caf\\xe9"}'


def test_missing_input_and_empty_input(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        convert.convert_jsonl_to_parquet(tmp_path / "nope.jsonl", tmp_path / "out.parquet", progress=False)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(InputError, match="no rows"):
        convert.convert_jsonl_to_parquet(empty, tmp_path / "out.parquet", progress=False)
    assert not (tmp_path / "out.parquet").exists()


def test_cli(tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": 1, "x": "y"}])
    help_text = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True)
    assert help_text.returncode == 0 and "--on-error" in help_text.stdout
    done = subprocess.run([sys.executable, str(SCRIPT), str(source), "--no-progress"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "1 rows" in done.stdout and (tmp_path / "in.parquet").exists()
    blocked = tmp_path / "file"
    blocked.write_text("")
    failed = subprocess.run([sys.executable, str(SCRIPT), str(source), "-o", str(blocked / "x.parquet")],
                            capture_output=True, text=True)
    assert failed.returncode == 2 and "cannot write to output directory" in failed.stderr


def test_compressed_jsonl_and_json_arrays_convert_and_other_kinds_are_named(tmp_path):
    import gzip

    rows = [{"id": i, "prompt": f"p{i}"} for i in range(5)]
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    (tmp_path / "b.json").write_text(json.dumps(rows, indent=2))
    for name in ("a.jsonl.gz", "b.json"):
        stats = convert.convert_jsonl_to_parquet(tmp_path / name, tmp_path / f"{name}.parquet", progress=False)
        assert pq.read_table(tmp_path / f"{name}.parquet").to_pylist() == rows and stats["rows_written"] == 5
    (tmp_path / "c.jsonl").write_bytes('{"id": 1}\n'.encode("utf-16"))
    with pytest.raises(InputError, match="UTF-16 text.*iconv -f UTF-16 -t UTF-8"):
        convert.convert_jsonl_to_parquet(tmp_path / "c.jsonl", tmp_path / "c.parquet", progress=False)
