"""Streaming JSONL reading and Parquet/Arrow writing shared by the data scripts.

Usage (as a library; the command-line tools are scripts/convert_jsonl_to_parquet.py and
sft/prepare_data.py):
    from sft.dataprep.jsonl_io import JsonlReader, SchemaTracker, rows_to_table
    reader = JsonlReader("outputs/run1.jsonl")
    for chunk in reader:              # about `chunk_bytes` of input at a time
        chunk.rows, chunk.lines       # parsed objects and their 1-based line numbers
        chunk.bad                     # BadLine records: file, line, reason, detail, raw text
    reader.sha256, reader.size        # known once the file has been read to the end

What counts as what, identically in every tool:
- a *row* is a non-blank line; a blank or whitespace-only line is counted in
  `blank_lines` and is not a row;
- a UTF-8 byte order mark at the start of a line is ignored; CRLF line ends are accepted;
- a row that is not valid UTF-8, not valid JSON (NaN/Infinity and raw control characters are
  accepted, as Python's json module writes and reads them), holds an unpaired UTF-16
  surrogate escape, is nested deeper than MAX_DEPTH, or is not a JSON object becomes a
  BadLine, never silently dropped; a malformed last line with no newline after it is
  reported as `truncated_last_line`;
- numbers keep their exact value: an integer beyond 64 bits (which orjson reads as a float)
  is read again by Python's json module, so ids such as 2**70 and 2**70 + 1 stay distinct ints.

Memory stays bounded by the chunk size whatever the file size (a single line longer than a
chunk is held whole). The file is read and hashed (sha256) on a background thread, so
hashing overlaps parsing.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import tempfile
import threading
from itertools import chain
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from sft.common.errors import UserError

DEFAULT_CHUNK_BYTES = 8 << 20

# Reasons a line is not a row we can use; the keys of `rejected` counts in every manifest.
REASON_INVALID_UTF8 = "invalid_utf8"
REASON_MALFORMED_JSON = "malformed_json"
REASON_TRUNCATED_LAST_LINE = "truncated_last_line"
REASON_INVALID_UNICODE = "invalid_unicode_escape"
REASON_NOT_AN_OBJECT = "not_an_object"
REASON_TOO_DEEP = "too_deeply_nested"

PLACE_KEYS = {"line": "line", "row": "index"}
"""The key of a record (rejects.jsonl, answer_drops.jsonl) that says where its row is, by unit."""
MAX_DEPTH = 200
"""Deepest nesting of objects and lists a row may have: beyond it (orjson writes at most 254 levels,
Python's json module recurses) a row is a BadLine, never a RecursionError."""
_BOM = "\ufeff"
_EXACT_FLOAT = 2.0**63
"""orjson reads an integer beyond 64 bits as a float; a float this large is read again exactly."""


@dataclass
class BadLine:
    """One input line that could not be used, with where it is and why."""

    path: str
    line: int
    reason: str
    detail: str
    raw: str | None = None
    """The line's text (undecodable bytes shown as \\xNN) when it could not be parsed."""
    row: dict | None = None
    """The parsed object, when it parsed but failed a later check."""
    unit: str = "line"
    """What `line` counts: "line" (1-based, JSON Lines) or "row" (0-based, Parquet rows and JSON array items;
    `index` in the records)."""
    element: int | None = None
    """The index of the sample in a row whose response is a list (sft.dataprep.layouts), else None."""

    def where(self) -> str:
        place = f"{self.path}:{self.line}" if self.unit == "line" else f"{self.path} row {self.line}"
        return place if self.element is None else f"{place} sample {self.element}"

    def message(self) -> str:
        return f"{self.where()}: {self.detail}"

    def to_json(self) -> bytes:
        record: dict[str, Any] = {"file": self.path, PLACE_KEYS[self.unit]: self.line, "reason": self.reason,
                                  "detail": self.detail}
        if self.element is not None:
            record["sample"] = self.element
        if self.raw is not None:
            record["raw"] = self.raw
        if self.row is not None:
            record["row"] = self.row
        return dumps_exact(record) + b"\n"


def dumps_exact(value: Any) -> bytes:
    """JSON of a row or record, integers beyond 64 bits written exactly (orjson refuses them; Python's json
    module writes them), values JSON has no type for as text."""
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY, default=str)
    except TypeError:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str).encode()


def loads_exact(data: bytes | str) -> Any:
    """JSON text as Python values, integers beyond 64 bits exact (orjson reads them as floats)."""
    value = orjson.loads(data)
    if isinstance(value, (dict, list)) and needs_second_look(value):
        value = json.loads(data)
    return value


class InputError(UserError):
    """A problem with the inputs or the output location that the user has to fix."""


class DataError(UserError):
    """A bad input row under --on-error fail (prepare_data and convert_jsonl_to_parquet)."""

    def __init__(self, bad: BadLine):
        super().__init__(bad.message())
        self.bad = bad


@dataclass
class JsonlChunk:
    """The rows parsed from one piece of a file, in file order (every reader of sft.dataprep.readers
    yields these: `lines` are line numbers for JSON Lines, row indices for Parquet and JSON arrays)."""

    path: str
    rows: list[dict] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    bad: list[BadLine] = field(default_factory=list)
    blank_lines: int = 0
    nbytes: int = 0
    unsettled: Any = None
    """A lazy reader's chunk whose rows orjson parsed without a second look (sft.dataprep.jsonl_io.JsonlReader's
    `lazy`): (its lines, the first line's number) until settle() runs."""

    @property
    def rows_read(self) -> int:
        """Non-blank lines in this chunk: parsed rows plus bad lines."""
        return len(self.rows) + len(self.bad)

    def settle(self) -> None:
        """Give the rows their exact values (needs_second_look): a lazy reader's caller that reads values one
        by one calls this first; a caller that checks the values itself (the scan's Arrow path) need not."""
        if self.unsettled is None:
            return
        pieces, next_line = self.unsettled
        self.unsettled = None
        if _second_look_any(self.rows):
            settled = _parse_lines(self.path, pieces, next_line, False, self.nbytes)
            self.rows, self.lines, self.bad = settled.rows, settled.lines, settled.bad


def file_sha256(path: str | os.PathLike, block_bytes: int = 8 << 20) -> str:
    digest = hashlib.sha256()
    buffer = memoryview(bytearray(block_bytes))  # one buffer read into again and again: no allocation per block
    with open(path, "rb", buffering=0) as handle:
        while count := handle.readinto(buffer):
            digest.update(buffer[:count])
    return digest.hexdigest()


def line_boundaries(path: str | os.PathLike, every: int) -> list[int]:
    """Byte offsets that start a line, about `every` bytes apart (0 first, the file size last)."""
    size = os.path.getsize(path)
    bounds = [0]
    with open(path, "rb") as handle:
        position = every
        while position < size:
            handle.seek(position)
            while True:
                window = handle.read(1 << 16)
                if not window:
                    position = size
                    break
                newline = window.find(b"\n")
                if newline >= 0:
                    position += newline + 1
                    break
                position += len(window)
            if position >= size:
                break
            bounds.append(position)
            position += every
    bounds.append(size)
    return bounds


def _has_surrogate(value: Any) -> bool:
    """True when a parsed JSON value holds a lone UTF-16 surrogate (not encodable as UTF-8)."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """True when objects and lists nest more than `limit` levels deep (walked without recursion)."""
    pending = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        for child in children:
            if isinstance(child, (dict, list)):
                if depth + 1 >= limit:
                    return True
                pending.append((child, depth + 1))
    return False


def needs_second_look(value: dict | list, depth: int = 0) -> bool:
    """True when a row orjson parsed may not be what the text says: a float of magnitude 2**63 or more
    (orjson's reading of an integer beyond 64 bits) or nesting deeper than MAX_DEPTH. Such rows are
    read again by parse_line_slow; a NaN (only that path reads one) also answers True."""
    for item in value.values() if type(value) is dict else value:
        kind = type(item)
        if kind is float:
            if not -_EXACT_FLOAT < item < _EXACT_FLOAT:
                return True
        elif kind is dict or kind is list:
            if depth + 1 >= MAX_DEPTH or needs_second_look(item, depth + 1):
                return True
    return False


def _second_look_any(rows: list[dict]) -> bool:
    """needs_second_look for any of `rows`; rows whose values are all strings, ints, bools and nulls (the
    common flat row) are told apart by the types in one pass at C speed, without a walk."""
    kinds = set(map(type, chain.from_iterable(map(dict.values, rows))))
    return bool(kinds & _WALKED) and any(map(needs_second_look, rows))


_WALKED = {float, dict, list}


def deep_line(path: str, lineno: int, raw: bytes | str, unit: str = "line") -> BadLine:
    shown = _show(raw, 10_000) if isinstance(raw, bytes) else raw[:10_000]
    return BadLine(path, lineno, REASON_TOO_DEEP,
                   f"objects and lists nest more than {MAX_DEPTH} levels deep, which no training row needs; "
                   "flatten or drop that field (or the row)", raw=shown, unit=unit)


def _show(raw: bytes, limit: int | None = None) -> str:
    text = raw.decode("utf-8", errors="backslashreplace")
    if limit is not None and len(text) > limit:
        return text[:limit] + f"... ({len(raw)} bytes)"
    return text


def parse_line_slow(raw: bytes, path: str, lineno: int, unterminated: bool) -> dict | BadLine | None:
    """Parse a line that orjson refused (or read inexactly); returns the object, a BadLine, or None for
    a blank line.

    orjson is strict: it refuses NaN, raw control characters and byte order marks, which
    Python's json module (and many writers built on it) produce, so those get a second chance
    here; everything that still fails becomes a BadLine with the reason and the fix. Python's
    json module also reads integers beyond 64 bits exactly.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return BadLine(
            path, lineno, REASON_INVALID_UTF8,
            f"invalid UTF-8 byte 0x{raw[exc.start]:02x} at byte {exc.start + 1} of the line; "
            "re-encode the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`) or drop the line",
            raw=_show(raw),
        )
    text = text.lstrip(_BOM)
    if not text.strip():
        return None
    try:
        value = json.loads(text, strict=False)
    except RecursionError:
        return deep_line(path, lineno, raw)
    except json.JSONDecodeError as exc:
        if unterminated:
            return BadLine(
                path, lineno, REASON_TRUNCATED_LAST_LINE,
                f"the last line has no newline and is not valid JSON ({exc.msg}: column {exc.colno}): "
                "the file was probably cut off while being written; delete that line or regenerate it",
                raw=_show(raw),
            )
        return BadLine(
            path, lineno, REASON_MALFORMED_JSON,
            f"not valid JSON ({exc.msg}: column {exc.colno}); fix or delete the line",
            raw=_show(raw),
        )
    if too_deep(value):
        return deep_line(path, lineno, raw)
    if _has_surrogate(value):
        return BadLine(
            path, lineno, REASON_INVALID_UNICODE,
            "contains an unpaired UTF-16 surrogate escape such as \\ud800, which is not valid text; "
            "fix the writer's escaping or drop the line",
            raw=_show(raw),
        )
    return value


class JsonlReader:
    """Iterate over a JSONL file in chunks of parsed rows; see the module docstring."""

    def __init__(self, path: str | os.PathLike, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                 start: int = 0, end: int | None = None, lazy: bool = False):
        """Read the whole file, or only bytes [start, end) when both fall on line starts (then
        line numbers count from the start of that range and no sha256 is computed). `lazy`: a chunk
        orjson parsed whole is yielded before the second look for inexact numbers and deep nesting
        (JsonlChunk.settle)."""
        self.path = str(path)
        self.lazy = lazy
        self.chunk_bytes = max(1, int(chunk_bytes))
        if os.path.isdir(self.path):
            raise InputError(f"input {self.path} is a directory; pass JSONL files or a glob such as '{self.path}/*.jsonl'")
        try:
            self.size = os.path.getsize(self.path)
        except OSError as exc:
            raise InputError(f"cannot read input file {self.path}: {exc.strerror}") from exc
        self.start = start
        self.end = self.size if end is None else end
        self._digest = hashlib.sha256() if start == 0 and end is None else None
        self.sha256: str | None = None
        self.rows_read = 0
        self.blank_lines = 0
        self.lines = 0

    def _open(self) -> tuple[Any, Any]:
        """(the stream of JSON Lines text, the file it reads) positioned at `start`; a reader of compressed
        files (sft.dataprep.readers) returns the decompressing stream and reads it to its end."""
        handle = open(self.path, "rb")  # noqa: SIM115 - closed by the reader thread
        handle.seek(self.start)
        return handle, handle

    def _consumed(self, raw: Any, block: bytes) -> int:
        """Bytes of the file a block stands for (the progress bar counts file bytes)."""
        return len(block)

    def _blocks(self) -> Iterator[tuple[bytes, int]]:
        """(block, file bytes it stands for) of the text, read and hashed on a background thread."""
        try:
            stream, raw = self._open()
        except OSError as exc:
            raise InputError(f"cannot read input file {self.path}: {exc.strerror or exc}") from exc
        bounded = stream is raw
        blocks: queue.Queue = queue.Queue(maxsize=2)
        stop = threading.Event()

        def produce() -> None:
            try:
                with stream, raw:
                    left = self.end - self.start
                    while not stop.is_set():
                        if bounded:
                            block = stream.read(min(self.chunk_bytes, left)) if left > 0 else b""
                            left -= len(block)
                        else:
                            block = stream.read(self.chunk_bytes)
                        if block and self._digest is not None:
                            self._digest.update(block)  # hashlib releases the GIL on large blocks
                        item = (block, self._consumed(raw, block))
                        while not stop.is_set():
                            try:
                                blocks.put(item, timeout=0.1)
                                break
                            except queue.Full:
                                continue
                        if not block:
                            return
            except (OSError, EOFError, ValueError) as exc:  # ValueError: zstandard's damaged-frame error
                blocks.put(self._read_error(exc))

        thread = threading.Thread(target=produce, name="jsonl-reader", daemon=True)
        thread.start()
        try:
            while True:
                item = blocks.get()
                if isinstance(item, Exception):
                    raise item
                if not item[0]:
                    if self._digest is not None:
                        self.sha256 = self._digest.hexdigest()
                    return
                yield item
        finally:
            stop.set()
            thread.join()

    def _read_error(self, exc: BaseException) -> InputError:
        return InputError(f"cannot read input file {self.path}: {getattr(exc, 'strerror', None) or exc}")

    def __iter__(self) -> Iterator[JsonlChunk]:
        carry = b""
        next_line = 1
        pending = 0  # file bytes of blocks that ended inside a line
        blocks = self._blocks()
        at_end = False
        while not at_end:
            item = next(blocks, None)
            if item is None:
                at_end = True
                data = carry
                carry = b""
                if not data:
                    break
                pieces = data.split(b"\n")
                unterminated_last = not data.endswith(b"\n")
                nbytes = 0
                if pieces and pieces[-1] == b"":
                    pieces.pop()  # the piece after the final newline is not a line
            else:
                # Split the block itself (no copy of it joined to the carry or cut at its last
                # newline): the carry joins the first piece, the piece after the last newline
                # becomes the next carry.
                block, nbytes = item
                pieces = block.split(b"\n")
                if carry:
                    pieces[0] = carry + pieces[0]
                carry = pieces.pop()
                unterminated_last = False
                if not pieces:
                    pending += nbytes
                    continue  # a line longer than a block: keep reading
            nbytes, pending = nbytes + pending, 0
            chunk = self._parse(pieces, next_line, unterminated_last, nbytes)
            next_line += len(pieces)
            self.lines += len(pieces)
            self.rows_read += chunk.rows_read
            self.blank_lines += chunk.blank_lines
            yield chunk

    def _parse(self, pieces: list[bytes], next_line: int, unterminated_last: bool, nbytes: int) -> JsonlChunk:
        """The rows of one chunk's lines (`pieces`, the first numbered `next_line`)."""
        try:  # the usual chunk: every line a JSON object orjson takes exactly as it is
            values = [orjson.loads(raw) for raw in pieces]
        except orjson.JSONDecodeError:
            values = None
        if values is not None and set(map(type, values)) <= {dict}:
            chunk = JsonlChunk(self.path, rows=values, lines=list(range(next_line, next_line + len(values))),
                               nbytes=nbytes, unsettled=(pieces, next_line))
            if not self.lazy:
                chunk.settle()
            return chunk
        return _parse_lines(self.path, pieces, next_line, unterminated_last, nbytes)


def _parse_lines(path: str, pieces: list[bytes], next_line: int, unterminated_last: bool, nbytes: int) -> JsonlChunk:
    """The rows of a chunk's lines one by one: blank lines counted, bad ones named, inexact or deep ones read
    again (parse_line_slow)."""
    loads = orjson.loads
    decode_error = orjson.JSONDecodeError
    chunk = JsonlChunk(path=path, nbytes=nbytes)
    rows, lines, bad = chunk.rows, chunk.lines, chunk.bad
    last_index = len(pieces) - 1
    for index, raw in enumerate(pieces):
        lineno = next_line + index
        if not raw or raw.isspace():
            chunk.blank_lines += 1
            continue
        try:
            value = loads(raw)
            if type(value) in (dict, list) and needs_second_look(value):
                raise decode_error("read again", "", 0)
        except decode_error:
            value = parse_line_slow(raw, path, lineno, unterminated_last and index == last_index)
            if value is None:
                chunk.blank_lines += 1
                continue
            if isinstance(value, BadLine):
                bad.append(value)
                continue
        if type(value) is not dict:
            bad.append(
                BadLine(
                    path, lineno, REASON_NOT_AN_OBJECT,
                    f"expected a JSON object per line, found a JSON {type(value).__name__}",
                    raw=_show(raw, 10_000),
                )
            )
            continue
        rows.append(value)
        lines.append(lineno)
    return chunk


# ---------------------------------------------------------------------------------------
# Arrow conversion with types that may differ between rows and chunks.


def _json_text(value: Any) -> str:
    return value if isinstance(value, str) else dumps_exact(value).decode()


def _parquet_writable(data_type: pa.DataType) -> bool:
    """Parquet cannot store a struct without fields (from `{}` values)."""
    if pa.types.is_struct(data_type):
        return data_type.num_fields > 0 and all(_parquet_writable(f.type) for f in data_type)
    if pa.types.is_list(data_type) or pa.types.is_large_list(data_type):
        return _parquet_writable(data_type.value_type)
    return True


def inferred_array(values: list) -> pa.Array | None:
    """Arrow array of Python values with the type Arrow infers (int64, double, string, struct, list...), or
    None when they have none (mixed, unrepresentable or out-of-range types)."""
    try:
        array = pa.array(values, from_pandas=False)
        if _parquet_writable(array.type):
            return array
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, ValueError):
        pass
    return None


def values_to_array(values: list) -> pa.Array:
    """Arrow array of Python values with the type Arrow infers (int64, double, string, struct,
    list...); values of mixed, unrepresentable or out-of-range types become JSON text."""
    array = inferred_array(values)
    if array is not None:
        return array
    return pa.array([None if v is None else _json_text(v) for v in values], type=pa.string())


def exact_array(array: pa.Array, depth: int = 0) -> bool:
    """No value of `array` (nested ones included) can be orjson's float reading of an integer beyond 64 bits
    (a float of magnitude 2**63 or more), and it nests at most MAX_DEPTH deep: what a lazily read chunk
    (JsonlChunk.settle) must show before its values are used without a second look."""
    kind = array.type
    if depth > MAX_DEPTH:
        return False
    if pa.types.is_floating(kind):
        if len(array) == array.null_count:
            return True
        low, high = pc.min_max(array).values()
        return -_EXACT_FLOAT < low.as_py() and high.as_py() < _EXACT_FLOAT
    if pa.types.is_struct(kind):
        return all(exact_array(array.field(i), depth + 1) for i in range(kind.num_fields))
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return exact_array(array.flatten(), depth + 1)
    return True


def rows_to_table(rows: list[dict], keys: list[str] | None = None) -> pa.Table:
    """A table with one column per key (first-seen order; missing keys are null)."""
    if keys is None:
        keys = list(dict.fromkeys(k for row in rows for k in row))
    if not keys:  # rows without fields (a conversation row's other fields): no columns, but every row
        return pa.table({"_": pa.nulls(len(rows))}).drop_columns(["_"])
    return pa.table({k: values_to_array([row.get(k) for row in rows]) for k in keys})


def stringify_array(array: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The values of `array` as JSON text (strings unchanged, numbers as written, objects as JSON)."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if pa.types.is_string(array.type):
        return array
    if pa.types.is_null(array.type):
        return pa.nulls(len(array), pa.string())
    if pa.types.is_integer(array.type) or pa.types.is_boolean(array.type) or pa.types.is_large_string(array.type):
        return array.cast(pa.string())
    return pa.array([None if v is None else _json_text(v) for v in array.to_pylist()], type=pa.string())


def widen_type(current: pa.DataType, new: pa.DataType) -> pa.DataType:
    """The narrowest type that holds values of both types; JSON text when there is none."""
    if current == new:
        return current
    try:
        merged = pa.unify_schemas(
            [pa.schema([("f", current)]), pa.schema([("f", new)])], promote_options="permissive"
        ).field("f").type
    except (pa.ArrowTypeError, pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return pa.string()
    if pa.types.is_large_string(merged):
        return pa.string()
    return merged


def conform_table(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` with exactly `schema`'s columns, in order: missing ones null, others widened."""
    columns = []
    for target in schema:
        if target.name not in table.column_names:
            columns.append(pa.nulls(table.num_rows, target.type))
            continue
        column = table.column(target.name)
        if column.type == target.type:
            columns.append(column)
        elif pa.types.is_string(target.type):
            columns.append(stringify_array(column))
        else:
            columns.append(column.cast(target.type))
    return pa.Table.from_arrays(columns, schema=schema)


class SchemaTracker:
    """The schema that holds every table seen so far; it only ever widens.

    Columns keep their first-seen order, new columns are appended. A column whose types cannot
    be merged (say `id` is 7 in one file and "a7" in another) becomes JSON text for every row,
    so no value is lost and every output file has a single schema.
    """

    def __init__(self) -> None:
        self.schema: pa.Schema | None = None
        self.version = 0

    def observe(self, table: pa.Table) -> bool:
        """Widen for `table`; returns True when the schema changed."""
        if self.schema is None:
            self.schema = pa.schema([pa.field(f.name, f.type) for f in table.schema])
            self.version += 1
            return True
        fields = {f.name: f.type for f in self.schema}
        changed = False
        for new in table.schema:
            if new.name not in fields:
                fields[new.name] = new.type
                changed = True
            else:
                merged = widen_type(fields[new.name], new.type)
                if merged != fields[new.name]:
                    fields[new.name] = merged
                    changed = True
        if changed:
            self.schema = pa.schema(list(fields.items()))
            self.version += 1
        return changed

    def conform(self, table: pa.Table) -> pa.Table:
        self.observe(table)
        return conform_table(table, self.schema)


# ---------------------------------------------------------------------------------------
# Files in and out.


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create `path` if needed and prove a file can be written there, or raise InputError."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise InputError(
            f"cannot write to output directory {path}: {reason}; choose another directory or fix its permissions"
        ) from exc
    return path
