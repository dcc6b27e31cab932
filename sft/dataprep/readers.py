"""One reader per input file format, all yielding the same batches of rows (imported; not a command).

Usage (internal; prepare_data plans with it, the scan reads with it):
    files = expand_inputs(["data/", "more/*.jsonl.gz"])   # globs and directories, each file once
    kind = detect_format("train-00000-of-00002.parquet")  # by content (magic bytes), not by name
    pieces = plan_file(path, kind, task_bytes)            # what parallel workers take: [(start, end), ...]
    reader = open_piece(path, kind, start, end, chunk_bytes)
    for batch in reader:                                  # sft.dataprep.jsonl_io.JsonlChunk
        batch.rows, batch.lines, batch.bad                # rows, where each is, rows that could not be read
    reader.lines, reader.rows_read, reader.blank_lines    # after the last batch

A file is recognised by its first bytes, whatever its name:
- JSON Lines (UTF-8, a byte order mark and CRLF accepted): one object per line; a row's place is its
  line (1-based). Parallel workers take line-aligned byte ranges (sft.dataprep.jsonl_io).
- a JSON array (`[` first, one line or indented over many): a row's place is its index in the array
  (0-based, "FILE row N"). Streamed item by item with Python's json decoder (exact integers, NaN
  accepted like JSON Lines), so memory holds a block and one item, never the file; one task per file.
- Parquet (`PAR1`), also a directory of Parquet shards: a row's place is its index in the file
  (0-based). Parallel workers take groups of row groups; a batch is about `chunk_bytes` of rows.
- gzip (1f 8b), zstd (28 b5 2f fd), bzip2 (`BZh`) and xz (fd 37 7a 58 5a 00) holding JSON Lines or a
  JSON array: decompressed as a stream, one task per file (a compressed stream cannot be split).
Everything else is refused before any work with what it is and the fix: UTF-16/32 text (a byte order
mark or NUL bytes between characters: `iconv -f UTF-16 -t UTF-8`), zip, tar, Arrow/Feather, SQLite,
HDF5, pickle, NumPy, PDF, an HTML page (a web page saved instead of the file), a Git LFS pointer
(`git lfs pull`), CSV/TSV, a pretty-printed JSON object, another binary file.
"""

from __future__ import annotations

import bz2
import codecs
import glob
import gzip
import json
import lzma
import os
import re
import shlex
from dataclasses import dataclass
from typing import Any, Collection, Iterator

import orjson

from sft.dataprep.jsonl_io import (
    REASON_INVALID_UNICODE,
    REASON_MALFORMED_JSON,
    REASON_NOT_AN_OBJECT,
    REASON_TRUNCATED_LAST_LINE,
    BadLine,
    InputError,
    JsonlChunk,
    JsonlReader,
    _has_surrogate,
    deep_line,
    dumps_exact,
    line_boundaries,
    too_deep,
)

JSONL, JSON_ARRAY, PARQUET = "jsonl", "json_array", "parquet"
COMPRESSIONS = {"gzip": b"\x1f\x8b", "zstd": b"\x28\xb5\x2f\xfd", "bzip2": b"BZh", "xz": b"\xfd7zXZ\x00"}
DATA_SUFFIXES = (".jsonl", ".json", ".ndjson", ".parquet", ".gz", ".zst", ".zstd", ".bz2", ".xz")
"""Files a directory given as INPUT contributes (others are listed in a warning, never read)."""
HEAD_BYTES = 1 << 16


@dataclass(frozen=True)
class FileFormat:
    """What a file holds: `kind` (jsonl, json_array, parquet) and its `compression` (None, gzip, zstd,
    bzip2, xz)."""

    kind: str
    compression: str | None = None

    @property
    def unit(self) -> str:
        """What a row's place counts: "line" (JSON Lines) or "row" (Parquet, JSON arrays)."""
        return "line" if self.kind == JSONL else "row"

    @property
    def name(self) -> str:
        base = {JSONL: "JSON Lines", JSON_ARRAY: "JSON array", PARQUET: "Parquet"}[self.kind]
        return f"{base} ({self.compression})" if self.compression else base

    @property
    def splittable(self) -> bool:
        """Parallel workers can share the file (byte ranges, row groups); otherwise one task reads it."""
        return self.compression is None and self.kind in (JSONL, PARQUET)


# ---------------------------------------------------------------------------------------
# Which files


def _split_token(name: str) -> str | None:
    """"train" or "held-out" when a file name says it holds one split of a data set (Hugging Face names
    its shards train-00000-of-00002.parquet, test-..., validation-...)."""
    for token in re.split(r"[-_./]", name.lower()):
        if token in ("train", "training"):
            return "train"
        if token in ("test", "testing", "validation", "valid", "val", "dev", "eval", "evaluation"):
            return "held-out"
    return None


def _directory_files(directory: str, exclude: Collection[str] = (), notes: list[str] | None = None
                     ) -> tuple[list[str], list[str]]:
    """The data files under `directory` (recursively, hidden ones and `exclude`d ones left out) and the other
    files."""
    data, other = [], []
    for root, dirs, names in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if name.startswith("."):
                continue
            (data if name.lower().endswith(DATA_SUFFIXES) else other).append(os.path.join(root, name))
    data = _leave_out(data, exclude, directory, notes)
    splits = {_split_token(os.path.relpath(p, directory)) for p in data} - {None}
    if len(splits) > 1:
        raise InputError(f"input directory {directory} holds files of several splits of a data set (train and "
                         "test/validation): training on all of them would train on the held-out data. Pass the split "
                         f"you want, e.g. '{directory}/**/train-*.parquet'")
    if not data:
        raise InputError(f"input directory {directory} holds no data file ({', '.join(DATA_SUFFIXES)}); pass the files "
                         f"or a glob such as '{directory}/*.jsonl'")
    return data, other


def expand_inputs(patterns: list[str], notes: list[str] | None = None, exclude: Collection[str] = ()) -> list[str]:
    """Files named by paths, globs or directories, in order, each once; an error names a pattern that
    matches nothing. A directory gives its data files (DATA_SUFFIXES); the others are named in `notes`.
    `exclude`: real paths never read (this run's own outputs): left out of a glob or directory with a
    note, an error when named."""
    files: list[str] = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            matches = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
            if not matches:
                raise InputError(
                    f"the pattern {pattern!r} matches no file (working directory {os.getcwd()}); "
                    "check the path, and quote the pattern so the shell does not expand it"
                )
            files.extend(_leave_out(matches, exclude, pattern, notes))
        elif os.path.isdir(pattern):
            data, other = _directory_files(pattern, exclude, notes)
            files.extend(data)
            if other and notes is not None:
                shown = ", ".join(os.path.relpath(p, pattern) for p in other[:5]) + (" ..." if len(other) > 5 else "")
                notes.append(f"input directory {pattern}: {len(other)} file(s) that are not data were not read ({shown})")
        elif not os.path.exists(pattern):
            raise InputError(f"input file {pattern} does not exist (working directory {os.getcwd()})")
        elif os.path.realpath(pattern) in exclude:
            raise InputError(f"input file {pattern} is an output of this run (-o): prepare_data would read what it "
                             "writes; move it elsewhere first, or choose another -o")
        else:
            files.append(pattern)
    seen: set[str] = set()
    unique = []
    for path in files:
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique


def _leave_out(paths: list[str], exclude: Collection[str], pattern: str, notes: list[str] | None) -> list[str]:
    kept = [p for p in paths if os.path.realpath(p) not in exclude]
    if len(kept) < len(paths) and notes is not None:
        left = [p for p in paths if p not in kept]
        notes.append(f"{pattern} matches {len(left)} file(s) that this run writes (-o), which were not read: "
                     f"{', '.join(left)}")
    return kept


# ---------------------------------------------------------------------------------------
# What a file is


def _refuse(path: str, what: str, fix: str) -> InputError:
    return InputError(f"input file {path} is {what}, not JSON Lines, a JSON array or Parquet; "
                      f"{fix.replace('FILE', shlex.quote(path))}")


_BINARY_KINDS = (
    (b"PK\x03\x04", "a zip archive", "unzip it (`unzip FILE`) and pass the files inside"),
    (b"ARROW1", "an Arrow IPC (Feather) file", "write it as Parquet: python -c \"import pyarrow.feather as f, "
     "pyarrow.parquet as pq; pq.write_table(f.read_table('FILE'), 'FILE.parquet')\""),
    (b"SQLite format 3\x00", "an SQLite database", "export the table as JSON Lines (e.g. sqlite3 -json) or Parquet"),
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file", "export the rows as JSON Lines or Parquet (e.g. with pandas)"),
    (b"\x93NUMPY", "a NumPy array file", "write the rows as JSON Lines or Parquet"),
    (b"%PDF", "a PDF document", "pass the data file itself"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive", "extract it (`7z x FILE`) and pass the files inside"),
)


def _text_encoding_problem(head: bytes) -> tuple[str, str] | None:
    """(what, fix) when `head` is UTF-16 or UTF-32 text (by byte order mark or NUL pattern)."""
    boms = ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"), (b"\xff\xfe", "UTF-16"),
            (b"\xfe\xff", "UTF-16"))
    found = next((name for mark, name in boms if head.startswith(mark)), None)
    sample = head[:4096]
    if found is None and len(sample) >= 8 and sample.count(0) * 4 >= len(sample):
        even, odd = sample[0::2].count(0), sample[1::2].count(0)
        quads = sum(sample[i::4].count(0) for i in range(4))
        if quads * 4 >= len(sample) * 3 - 8:
            found = "UTF-32"
        elif max(even, odd) * 2 >= len(sample) // 2 and min(even, odd) * 8 < len(sample) // 2:
            found = "UTF-16"
    if found is None:
        return None
    return (f"{found} text", f"re-encode it as UTF-8: iconv -f {found} -t UTF-8 FILE > FILE.utf8.jsonl")


def _binary_problem(head: bytes, strict: bool = False) -> tuple[str, str] | None:
    """(what, fix) for a binary file: by its magic bytes (`strict`), else any file with NUL bytes."""
    for magic, what, fix in _BINARY_KINDS:
        if head.startswith(magic):
            return what, fix
    if len(head) > 262 and head[257:262] == b"ustar":
        return "a tar archive", "extract it (`tar xf FILE`) and pass the files inside"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a Python pickle", "write the rows as JSON Lines or Parquet (prepare_data never unpickles data)"
    if not strict and b"\x00" in head[:4096]:
        return "a binary file", f"pass JSON Lines, a JSON array or Parquet (its first bytes: {head[:16]!r})"
    return None


def _text_kind(path: str, head: bytes) -> str:
    """JSONL or JSON_ARRAY for text; InputError for text that is neither."""
    text = head.lstrip(b"\xef\xbb\xbf").lstrip()
    lowered = text[:200].lower()
    if lowered.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head", b"<!--")):
        raise _refuse(path, "an HTML or XML page (a web page saved instead of the data: for a Hugging Face file "
                      "download the /resolve/ address, not /blob/)", "download the file itself")
    if text.startswith(b"version https://git-lfs.github.com/spec/"):
        raise _refuse(path, "a Git LFS pointer (the repository was cloned without its large files)",
                      "run `git lfs pull` in the repository, or download the file itself")
    first, _, rest = text.partition(b"\n")
    if first.strip() == b"{":
        raise _refuse(path, "a pretty-printed JSON object spread over several lines",
                      "write one object per line: jq -c . FILE > FILE.jsonl (or jq -c '.KEY[]' for the rows of a "
                      "list inside it)")
    if text.startswith(b"["):
        if rest.strip() and len(first) < HEAD_BYTES - 1:
            try:
                orjson.loads(first)
                return JSONL  # lines that are JSON values, the first an array: rows of the wrong kind, reported per line
            except orjson.JSONDecodeError:
                pass
        return JSON_ARRAY
    if text[:1] not in (b"{", b'"', b"") and first.count(b"\t") + first.count(b",") >= 1 and b"{" not in first:
        separator = b"\t" if first.count(b"\t") > first.count(b",") else b","
        second = rest.partition(b"\n")[0]
        if second and second.count(separator) >= first.count(separator):
            name = "TSV" if separator == b"\t" else "CSV"
            raise _refuse(path, f"{name} (first line: {first[:80].decode('utf-8', 'replace')!r})",
                          "convert it: python -c \"import pandas as pd; pd.read_csv('FILE'"
                          + (", sep='\\t'" if separator == b"\t" else "")
                          + ").to_json('FILE.jsonl', orient='records', lines=True, force_ascii=False)\"")
    return JSONL


def _open_compressed(path: str, compression: str, raw: Any | None = None) -> Any:
    raw = raw if raw is not None else open(path, "rb")  # noqa: SIM115 - the stream closes it
    if compression == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if compression == "bzip2":
        return bz2.BZ2File(raw, mode="rb")
    if compression == "xz":
        return lzma.LZMAFile(raw, mode="rb")
    import zstandard

    return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True, closefd=True)


def detect_format(path: str) -> FileFormat:
    """What `path` holds, read from its first bytes; InputError naming the file's kind and the fix for
    anything prepare_data cannot read (or a file it cannot open)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(HEAD_BYTES)
            if head.startswith(b"PAR1"):
                handle.seek(-4, os.SEEK_END)
                if handle.read(4) != b"PAR1":
                    raise InputError(f"input file {path} is an incomplete Parquet file (no footer: cut off while being "
                                     "written or downloaded); download or write it again")
                return FileFormat(PARQUET)
    except OSError as exc:
        raise InputError(f"cannot read input file {path}: {exc.strerror or exc}; check that it exists and that you "
                         "may read it (ls -l, chmod +r)") from None
    compression = next((name for name, magic in COMPRESSIONS.items() if head.startswith(magic)), None)
    if compression is not None:
        try:
            with _open_compressed(path, compression) as stream:
                inner = stream.read(HEAD_BYTES)
        except ImportError:
            raise InputError(f"input file {path} is zstd-compressed and the zstandard package is missing: "
                             "pip install -r requirements.txt (or decompress it: zstd -d FILE)") from None
        except (OSError, EOFError, ValueError) as exc:
            raise InputError(f"input file {path} is {compression}-compressed but its data is damaged or cut off "
                             f"({exc}); download or write it again") from None
        kind = _inner_kind(path, compression, inner)
        return FileFormat(kind, compression)
    problem = _binary_problem(head, strict=True) or _text_encoding_problem(head) or _binary_problem(head)
    if problem is not None:
        raise _refuse(path, *problem)
    return FileFormat(_text_kind(path, head))


def _inner_kind(path: str, compression: str, inner: bytes) -> str:
    if inner.startswith(b"PAR1") or any(inner.startswith(m) for m in COMPRESSIONS.values()):
        raise _refuse(path, f"{compression}-compressed binary data (Parquet or compressed again)",
                      "decompress it first and pass the file inside")
    problem = _binary_problem(inner, strict=True) or _text_encoding_problem(inner) or _binary_problem(inner)
    if problem is not None:
        raise _refuse(path, f"{compression}-compressed {problem[0]}", problem[1])
    return _text_kind(path, inner)


# ---------------------------------------------------------------------------------------
# Pieces for parallel workers


def plan_file(path: str, kind: FileFormat, task_bytes: int) -> list[tuple[int, int]]:
    """[start, end) pieces of a file for the scan's tasks: line-aligned byte ranges of about `task_bytes`
    (JSON Lines), groups of row groups of about `task_bytes` (Parquet, uncompressed size), or the whole
    file (compressed files, JSON arrays)."""
    if kind.kind == PARQUET:
        metadata = _parquet_file(path).metadata
        pieces, start, size = [], 0, 0
        for group in range(metadata.num_row_groups):
            size += metadata.row_group(group).total_byte_size
            if size >= task_bytes:
                pieces.append((start, group + 1))
                start, size = group + 1, 0
        if start < metadata.num_row_groups or not pieces:
            pieces.append((start, metadata.num_row_groups))
        return pieces
    if kind.splittable:
        bounds = line_boundaries(path, task_bytes)
        return list(zip(bounds[:-1], bounds[1:]))
    return [(0, os.path.getsize(path))]


def open_piece(path: str, kind: FileFormat, start: int, end: int, chunk_bytes: int, lazy: bool = False):
    """The reader of one piece (plan_file): iterate it for JsonlChunk batches; afterwards its `lines`
    (places counted: lines, or rows), `rows_read` and `blank_lines`. `lazy`: JSON Lines chunks come before
    their second look (JsonlChunk.settle; the other readers read exactly at once)."""
    if kind.kind == PARQUET:
        return ParquetReader(path, chunk_bytes, start, end)
    if kind.kind == JSON_ARRAY:
        return JsonArrayReader(path, kind.compression, chunk_bytes)
    if kind.compression:
        return CompressedJsonlReader(path, kind.compression, chunk_bytes, lazy)
    return JsonlReader(path, chunk_bytes=chunk_bytes, start=start, end=end, lazy=lazy)


def read_file(path: str, chunk_bytes: int = 8 << 20) -> Iterator[JsonlChunk]:
    """Every batch of a whole file of any format (detect_format)."""
    kind = detect_format(path)
    for start, end in plan_file(path, kind, 1 << 62):
        yield from open_piece(path, kind, start, end, chunk_bytes)


# ---------------------------------------------------------------------------------------
# Readers


class CompressedJsonlReader(JsonlReader):
    """JSON Lines inside gzip, zstd, bzip2 or xz, decompressed as a stream (the whole file, one task)."""

    def __init__(self, path: str, compression: str, chunk_bytes: int, lazy: bool = False):
        super().__init__(path, chunk_bytes=chunk_bytes, lazy=lazy)
        self.compression = compression
        self._digest = None  # the manifest hashes the file itself

    def _open(self):
        raw = open(self.path, "rb")  # noqa: SIM115 - closed with the stream
        return _open_compressed(self.path, self.compression, raw), raw

    def _consumed(self, raw, block: bytes) -> int:
        position = raw.tell()
        done, self._position = position - getattr(self, "_position", 0), position
        return done

    def _read_error(self, exc: BaseException) -> InputError:
        return InputError(f"input file {self.path}: its {self.compression} data is damaged or cut off ({exc}); the rows "
                          "before that point were read, the rest cannot be: download or write the file again")


def _parquet_file(path: str):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"input file {path} is not a readable Parquet file ({exc}); download or write it "
                         "again") from None


def _stored_bytes(group) -> int:
    return sum(group.column(i).total_compressed_size for i in range(group.num_columns))


class ParquetReader:
    """Rows of row groups [start, end) of a Parquet file, about `chunk_bytes` (uncompressed) a batch."""

    def __init__(self, path: str, chunk_bytes: int, start: int = 0, end: int | None = None):
        self.path, self.chunk_bytes, self.start, self.end = path, chunk_bytes, start, end
        self.lines = self.rows_read = self.blank_lines = 0

    def __iter__(self) -> Iterator[JsonlChunk]:
        import pyarrow as pa

        parquet = _parquet_file(self.path)
        metadata = parquet.metadata
        groups = list(range(self.start, metadata.num_row_groups if self.end is None else self.end))
        rows = sum(metadata.row_group(g).num_rows for g in groups)
        stored = sum(_stored_bytes(metadata.row_group(g)) for g in groups)
        size = sum(metadata.row_group(g).total_byte_size for g in groups)
        batch_rows = max(1, min(1 << 16, self.chunk_bytes * max(rows, 1) // max(size, 1)))
        position = 0
        try:
            for batch in parquet.iter_batches(batch_size=batch_rows, row_groups=groups, use_threads=False):
                count = batch.num_rows
                chunk = JsonlChunk(self.path, rows=batch.to_pylist(), lines=list(range(position, position + count)),
                                   nbytes=stored * count // max(rows, 1))
                position += count
                self.lines = self.rows_read = position
                yield chunk
        except (OSError, pa.ArrowException) as exc:
            raise InputError(f"input file {self.path}: Parquet data cannot be read after row {position} ({exc}); "
                             "download or write it again") from None


_SPACE = re.compile(r"[\s,]*")
_ITEM_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]|"')
_SCALAR = re.compile(r"[^,\]\s]+")


class JsonArrayReader:
    """Items of a JSON array (`[{...}, {...}]`, on one line or indented), streamed: a block of text and
    one item in memory. Each item is decoded exactly as a JSON Lines row is; an item that cannot be is a
    BadLine and reading goes on after it (its end found by matching brackets outside strings)."""

    def __init__(self, path: str, compression: str | None, chunk_bytes: int):
        self.path, self.compression, self.chunk_bytes = path, compression, max(1 << 16, chunk_bytes)
        self.lines = self.rows_read = self.blank_lines = 0
        self._decoder = json.JSONDecoder(strict=False)

    def _text_blocks(self) -> Iterator[tuple[str, int]]:
        """(text, file bytes it stands for); InputError for bytes that are not UTF-8."""
        raw = open(self.path, "rb")  # noqa: SIM115 - closed below
        stream = _open_compressed(self.path, self.compression, raw) if self.compression else raw
        decoder = codecs.getincrementaldecoder("utf-8")()
        done = 0
        with stream, raw:
            while True:
                try:
                    block = stream.read(self.chunk_bytes)
                except (OSError, EOFError, ValueError) as exc:
                    raise InputError(f"input file {self.path}: its {self.compression} data is damaged or cut off "
                                     f"({exc}); download or write it again") from None
                try:
                    text = decoder.decode(block, final=not block)
                except UnicodeDecodeError as exc:
                    raise InputError(f"input file {self.path}: invalid UTF-8 byte 0x{block[exc.start]:02x} near item "
                                     f"{self.lines}; re-encode the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)"
                                     ) from None
                position = raw.tell()
                yield text, position - done
                done = position
                if not block:
                    return

    def __iter__(self) -> Iterator[JsonlChunk]:
        blocks = self._text_blocks()
        text, nbytes = next(blocks)
        text = text.lstrip("\ufeff").lstrip()
        if not text.startswith("["):
            raise InputError(f"input file {self.path} does not start with '[' after decompression")
        self._text, self._pos, self._blocks, self._eof, self._cut_off = text, 1, blocks, False, False
        chunk = JsonlChunk(self.path, nbytes=nbytes)
        while self._next_item(chunk):
            if len(chunk.rows) + len(chunk.bad) >= 4096 or chunk.nbytes >= self.chunk_bytes:
                yield self._count(chunk)
                chunk = JsonlChunk(self.path)
        yield self._count(chunk)

    def _count(self, chunk: JsonlChunk) -> JsonlChunk:
        self.rows_read += chunk.rows_read
        return chunk

    def _more(self, chunk: JsonlChunk) -> bool:
        """Append the next block to the text (dropping what was read); False at the end of the file."""
        if self._eof:
            return False
        text, nbytes = next(self._blocks)
        chunk.nbytes += nbytes
        if not text:
            self._eof = True
            return False
        self._text = self._text[self._pos:] + text
        self._pos = 0
        return True

    def _next_item(self, chunk: JsonlChunk) -> bool:
        """Read one item into `chunk`; False after the closing bracket."""
        while True:
            self._pos = _SPACE.match(self._text, self._pos).end()
            if self._pos < len(self._text):
                break
            if not self._more(chunk):
                if self._cut_off:
                    return False
                raise InputError(f"input file {self.path}: the JSON array is not closed with ']' after item "
                                 f"{self.lines - 1} (the file was probably cut off); write or download it again")
        if self._text[self._pos] == "]":
            self._pos += 1
            self._check_tail(chunk)
            return False
        index = self.lines
        self.lines += 1
        try:
            value, end = self._decoder.raw_decode(self._text, self._pos)
        except (json.JSONDecodeError, RecursionError):
            value, end = None, None
        if end is None or (end == len(self._text) and not self._eof and self._text[self._pos] not in '{["'):
            value = self._slow_item(chunk, index)
        else:
            item_text = self._text[self._pos:end]
            self._pos = end
            if "\\u" in item_text and _has_surrogate(value):
                value = BadLine(self.path, index, REASON_INVALID_UNICODE, "contains an unpaired UTF-16 surrogate "
                                "escape such as \\ud800, which is not valid text; fix the writer's escaping or drop "
                                "the item", raw=item_text[:10_000], unit="row")
            elif isinstance(value, (dict, list)) and too_deep(value):
                value = deep_line(self.path, index, item_text, unit="row")
        self._place(chunk, index, value)
        return True

    def _place(self, chunk: JsonlChunk, index: int, value: Any) -> None:
        if isinstance(value, BadLine):
            chunk.bad.append(value)
        elif type(value) is not dict:
            chunk.bad.append(BadLine(self.path, index, REASON_NOT_AN_OBJECT, f"expected a JSON object per item of "
                                     f"the array, found a JSON {type(value).__name__}",
                                     raw=dumps_exact(value).decode()[:10_000], unit="row"))
        else:
            chunk.rows.append(value)
            chunk.lines.append(index)

    def _slow_item(self, chunk: JsonlChunk, index: int) -> Any:
        """An item the decoder could not take at once: find its end (matching brackets outside strings,
        reading on as needed), then decode its text alone; the value or a BadLine."""
        while True:  # an item longer than the text read so far is scanned again whole (rare: blocks are MiBs)
            end = self._item_end()
            if end >= 0:
                break
            if not self._more(chunk):
                item_text = self._text[self._pos:]
                self._pos = len(self._text)
                self._cut_off = True
                return BadLine(self.path, index, REASON_TRUNCATED_LAST_LINE, "the file ends inside this item of the "
                               "JSON array: it was probably cut off while being written; write or download it again",
                               raw=item_text[:10_000], unit="row")
        item_text = self._text[self._pos:end]
        self._pos = end
        try:
            value = json.loads(item_text, strict=False)
        except RecursionError:
            return deep_line(self.path, index, item_text, unit="row")
        except json.JSONDecodeError as exc:
            return BadLine(self.path, index, REASON_MALFORMED_JSON, f"not valid JSON ({exc.msg}: character "
                           f"{exc.pos + 1} of the item); fix or delete the item", raw=item_text[:10_000], unit="row")
        return deep_line(self.path, index, item_text, unit="row") if too_deep(value) else value

    def _item_end(self) -> int:
        """Where the item at self._pos ends; -1 when the text ends first."""
        text = self._text
        if text[self._pos] not in "{[":  # a string or a bare value
            match = _ITEM_TOKEN.match(text, self._pos) if text[self._pos] == '"' else _SCALAR.match(text, self._pos)
            if match is None or match.group() == '"' or match.end() == len(text):
                return -1
            return match.end()
        depth, cursor = 0, self._pos
        while True:
            match = _ITEM_TOKEN.search(text, cursor)
            if match is None or match.group() == '"':  # the text ends, or inside a string
                return -1
            token = match.group()
            if token in "[{":
                depth += 1
            elif token in "]}":
                depth -= 1
            cursor = match.end()
            if depth <= 0:
                return cursor

    def _check_tail(self, chunk: JsonlChunk) -> None:
        while True:
            rest = self._text[self._pos:].strip()
            if rest:
                raise InputError(f"input file {self.path}: text after the JSON array's closing ']' ({rest[:40]!r}); "
                                 "a file holds one array (or one JSON object per line)")
            self._pos = len(self._text)
            if not self._more(chunk):
                return
