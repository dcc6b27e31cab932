"""Convert one JSONL file (or a .jsonl.gz/.zst, a JSON array) to one Parquet file with the same columns, streaming.

Usage:
    python scripts/convert_jsonl_to_parquet.py outputs/run1.jsonl                 # -> outputs/run1.parquet
    python scripts/convert_jsonl_to_parquet.py in.jsonl -o out.parquet --on-error skip   # bad rows -> out.parquet.rejects.jsonl

Every JSON field becomes a column with the type Arrow infers (integers stay int64, floats
double, strings string, objects struct, arrays list); a row without a field gets null there.
A field whose type differs between rows (say `id` is 7 in one row and "a7" in another) is
stored as JSON text in every row, so nothing is lost and the file has one schema. Memory does
not grow with the file: rows are parsed and written one chunk (about --chunk-mb) at a time.
Blank lines are skipped and counted; a UTF-8 BOM and CRLF line ends are accepted. A bad row
(invalid JSON or UTF-8, not an object, a truncated last line) stops the conversion with its
file, line and reason (--on-error fail, the default) or is written to the rejects file with
them (--on-error skip). The Parquet file is written to a temporary name and renamed into place
(sft/common/files.py), so an interrupted run never leaves a partial file. The input is recognised
by its content as sft/prepare_data.py recognises it (sft/dataprep/readers.py): compressed JSON Lines
and JSON arrays are read too; any other kind of file is refused with the fix.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python scripts/convert_jsonl_to_parquet.py`: make `import sft.x` work
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import collections
import contextlib
import os

import pyarrow.parquet as pq

from sft.common.errors import EXIT_FAILED, EXIT_OK, EXIT_REFUSED
from sft.common.files import atomic_path, scratch_directory
from sft.dataprep.jsonl_io import (
    DEFAULT_CHUNK_BYTES,
    DataError,
    InputError,
    SchemaTracker,
    conform_table,
    ensure_writable_dir,
    file_sha256,
    rows_to_table,
)
from sft.dataprep.readers import detect_format, open_piece

__all__ = ["DataError", "InputError", "convert_jsonl_to_parquet", "main"]


def convert_jsonl_to_parquet(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    on_error: str = "fail",
    rejects_path: str | os.PathLike | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    progress: bool = True,
) -> dict:
    """Convert `input_path` to `output_path`; returns counts and the schema as a dict.

    Raises InputError (unreadable input, unwritable output, no rows) or DataError (first bad
    row under on_error="fail"); in both cases no output file is left behind.
    """
    if on_error not in ("fail", "skip"):
        raise InputError(f"on_error must be 'fail' or 'skip', got {on_error!r}")
    input_path, output_path = str(input_path), Path(output_path)
    if not os.path.isfile(input_path):
        raise InputError(f"input file {input_path} does not exist" if not os.path.exists(input_path)
                         else f"input {input_path} is not a file")
    ensure_writable_dir(output_path.parent if str(output_path.parent) else ".")
    if rejects_path is None:
        rejects_path = Path(str(output_path) + ".rejects.jsonl")
    kind = detect_format(input_path)
    reader = open_piece(input_path, kind, 0, os.path.getsize(input_path), chunk_bytes)
    with scratch_directory(output_path, prefix=f".{output_path.name}.") as tmp_dir:
        parts = _write_parts(reader, tmp_dir, on_error, progress)
        if parts.rows_written == 0:
            raise InputError(f"{input_path} has no rows to convert ({reader.blank_lines} blank lines, "
                             f"{sum(parts.rejected.values())} rejected)")
        with atomic_path(output_path) as tmp:
            _merge_parts(parts, tmp)
        if on_error == "skip":
            if sum(parts.rejected.values()):
                with atomic_path(rejects_path) as tmp:
                    os.replace(parts.rejects, tmp)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(rejects_path)
    return {
        "input": input_path,
        "output": str(output_path),
        "rows_read": reader.rows_read,
        "rows_written": parts.rows_written,
        "blank_lines": reader.blank_lines,
        "rejected": dict(parts.rejected),
        "rejects_file": str(rejects_path) if sum(parts.rejected.values()) else None,
        "sha256": getattr(reader, "sha256", None) or file_sha256(input_path),
        "schema": {f.name: str(f.type) for f in parts.tracker.schema},
    }


class _Parts:
    """The rows written so far: Parquet parts (a new one each time the schema widens) and the rejects file.
    (A plain class: the tests load this script without registering it as a module, which dataclasses need.)"""

    def __init__(self, rejects: Path):
        self.rejects = rejects
        self.files: list[Path] = []
        self.tracker = SchemaTracker()
        self.rows_written = 0
        self.rejected: collections.Counter = collections.Counter()


def _write_parts(reader, tmp_dir: Path, on_error: str, progress: bool) -> _Parts:
    """Read every chunk and write its rows to Parquet parts in `tmp_dir` (bad rows to its rejects.jsonl
    with on_error="skip"; DataError for the first with "fail")."""
    from tqdm import tqdm

    parts = _Parts(tmp_dir / "rejects.jsonl")
    writer = writer_schema = None
    rejects_handle = open(parts.rejects, "wb") if on_error == "skip" else None  # noqa: SIM115
    bar = tqdm(total=os.path.getsize(reader.path), unit="B", unit_scale=True, desc="converting", disable=not progress, mininterval=1.0)
    try:
        for chunk in reader:
            bar.update(chunk.nbytes)
            for bad in chunk.bad:
                if on_error == "fail":
                    raise DataError(bad)
                parts.rejected[bad.reason] += 1
                rejects_handle.write(bad.to_json())
            if not chunk.rows:
                continue
            table = parts.tracker.conform(rows_to_table(chunk.rows))
            if writer is None or writer_schema != parts.tracker.schema:
                # the schema widened: finish this part; the parts are merged at the end
                if writer is not None:
                    writer.close()
                parts.files.append(tmp_dir / f"part{len(parts.files):04d}.parquet")
                writer_schema = parts.tracker.schema
                writer = pq.ParquetWriter(str(parts.files[-1]), writer_schema)
            writer.write_table(table)
            parts.rows_written += table.num_rows
    finally:
        bar.close()
        if writer is not None:
            writer.close()
        if rejects_handle is not None:
            rejects_handle.close()
    return parts


def _merge_parts(parts: _Parts, path: Path) -> None:
    """The parts as one Parquet file at `path`, every row in the final schema."""
    if len(parts.files) == 1:
        os.replace(parts.files[0], path)
        return
    with pq.ParquetWriter(str(path), parts.tracker.schema) as final:
        for part in parts.files:
            source = pq.ParquetFile(str(part))
            for group in range(source.num_row_groups):
                final.write_table(conform_table(source.read_row_group(group), parts.tracker.schema))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Convert one JSONL file to one Parquet file with the same columns (streaming).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("input", help="JSONL file (also .jsonl.gz/.zst/.bz2/.xz, or a JSON array)")
    parser.add_argument("-o", "--output", default=None, help="Parquet file to write (default: INPUT with .parquet)")
    parser.add_argument("--on-error", choices=["fail", "skip"], default="fail",
                        help="bad row: fail = stop with file, line and reason; skip = write it to the rejects file")
    parser.add_argument("--rejects", default=None, help="rejects file for --on-error skip (default: OUTPUT.rejects.jsonl)")
    parser.add_argument("--chunk-mb", type=float, default=DEFAULT_CHUNK_BYTES / (1 << 20), help="input read per step, in MiB")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    output = args.output or str(Path(args.input).with_suffix(".parquet"))
    if os.path.abspath(output) == os.path.abspath(args.input):
        print(f"error: the output {output} would overwrite the input; pass -o", file=sys.stderr)
        return EXIT_REFUSED
    try:
        stats = convert_jsonl_to_parquet(args.input, output, args.on_error, args.rejects,
                                         int(args.chunk_mb * (1 << 20)), progress=not args.no_progress)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except OSError as exc:  # a full disk, a folder without permission
        print(f"error: {exc.strerror or exc}: {exc.filename or output}; free space or fix the permissions, or pass "
              "another -o. Nothing was written.", file=sys.stderr)
        return EXIT_REFUSED
    except DataError as exc:
        print(f"error: {exc}\nFix the line, or rerun with --on-error skip to write bad rows to a rejects file. "
              "Nothing was written.", file=sys.stderr)
        return EXIT_FAILED
    print(f"wrote {stats['output']}: {stats['rows_written']:,} rows "
          f"(read {stats['rows_read']:,}, {stats['blank_lines']:,} blank lines skipped)")
    print("columns: " + ", ".join(f"{name} ({kind})" for name, kind in stats["schema"].items()))
    if stats["rejected"]:
        detail = ", ".join(f"{k} {v:,}" for k, v in sorted(stats["rejected"].items()))
        print(f"rejected {sum(stats['rejected'].values()):,} rows ({detail}): see {stats['rejects_file']}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
