"""The write pass of sft/prepare_data.py: shuffle the spilled rows and write train/val Parquet (imported; not a command).

Usage (internal; prepare_data drives it):
    schema = output_schema(spill_schema, encoding_record(config, chat))
    outputs, rows = write_outputs(spills, spill_schema, schema, rows_out, config, tmp_dir, buckets, progress_factory)

Each bucket of the spill (sft.dataprep.spill) is read whole, its rows not dropped by the
global filters or the weights are put back in input order, repeated as often as their source's
weight says (sft.dataprep.sources) and permuted with a seeded RNG, then written in
slices of about SLICE_BYTES of text to train or val (a row is in val when its problem's hash
is below the split's threshold), with the `messages` column built from the prompt and
response (or the stored conversation). Each Parquet file is written on its own thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from sft.dataprep.config import PrepareConfig
from sft.dataprep.jsonl_io import InputError, loads_exact
from sft.dataprep.scan import MESSAGES_COLUMN
from sft.dataprep.spill import (
    CONVERSATION_COLUMN,
    GROUP_COLUMN,
    INTERNAL_COLUMNS,
    ORDER_COLUMN,
    TOOLS_COLUMN,
    SpillInfo,
    read_bucket,
    remove_bucket,
)

SLICE_BYTES = 16 << 20
"""Rows are taken, templated and written in slices of about this much text (bounds memory)."""
MESSAGES_TYPE = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
TOOL_MESSAGES_TYPE = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string()), ("tool_calls", pa.string()),
                                         ("name", pa.string()), ("tool_call_id", pa.string())]))
"""`messages` of a run with tool calls or tool messages: an assistant's tool_calls as the JSON text of its list of
{type, id?, function: {name, arguments}} (JSON text, not nested columns: each call's arguments have their own
keys), a tool message's name and tool_call_id; null where a message has none."""
TOOLS_OUTPUT_COLUMN = "tools"
"""Output column of such a run: the JSON text of the tools list each conversation's prompt offers (null: none)."""


@dataclass
class RowsOut:
    """Which spilled rows go where: the order keys of the rows the global filters and the weights dropped
    (sorted), the split's threshold (rows whose problem hash is below it go to val; None: no val), and the
    order keys (sorted) of the rows a weight writes more than once with their number of copies."""

    dropped_order: np.ndarray
    threshold: Any
    repeat_order: np.ndarray | None = None
    repeat_copies: np.ndarray | None = None

    def copies(self, keys: np.ndarray) -> np.ndarray | None:
        """How many times each row (by order key) is written; None when every row is written once."""
        if self.repeat_order is None or not len(self.repeat_order):
            return None
        at = np.minimum(np.searchsorted(self.repeat_order, keys), len(self.repeat_order) - 1)
        hit = self.repeat_order[at] == keys
        return np.where(hit, self.repeat_copies[at], 1)


def encoding_record(cfg: PrepareConfig, chat, run_id: str) -> dict:
    """How the messages are to be encoded; written into each Parquet file's schema metadata
    (chat_format.PARQUET_METADATA_KEY) so that training encodes them as this run counted them. `run_id`
    (also manifest.json's) names the run that wrote the file: files of one run share it."""
    record = {"version": 1, "run_id": run_id, "template_kwargs": cfg.chat_template_kwargs or {},
              "reasoning_tags": list(cfg.tags), "answers_only": cfg.answers_only}
    if chat is not None:
        described = chat.describe()
        record.update(tokenizer=described["tokenizer"], chat_template_sha256=described["chat_template_sha256"],
                      text_encoder=described["text_encoder"], **chat.recorded_settings())
    return record


def output_schema(spill_schema: pa.Schema, encoding: dict) -> pa.Schema:
    from sft.text.chat_format import PARQUET_METADATA_KEY

    tools = TOOLS_COLUMN in spill_schema.names
    fields = [pa.field(MESSAGES_COLUMN, TOOL_MESSAGES_TYPE if tools else MESSAGES_TYPE)]
    fields += [f for f in spill_schema if f.name not in INTERNAL_COLUMNS]
    if tools:
        if TOOLS_OUTPUT_COLUMN in spill_schema.names:
            raise InputError(f"the rows have a {TOOLS_OUTPUT_COLUMN!r} field that is not their tools list, and the "
                             f"output writes the tools list there; rename that field or name it with --tools-key")
        fields.append(pa.field(TOOLS_OUTPUT_COLUMN, pa.string()))
    return pa.schema(fields, metadata={PARQUET_METADATA_KEY: orjson.dumps(encoding)})


def build_messages(prompts: pa.Array, responses: pa.Array, system_prompt: str | None) -> pa.Array:
    """list<struct<role, content>> per row: [system?], user=prompt, assistant=response."""
    n = len(prompts)
    parts, roles = [prompts, responses], ["user", "assistant"]
    if system_prompt is not None:
        parts.insert(0, pa.array([system_prompt] * n, type=pa.string()))
        roles.insert(0, "system")
    width = len(parts)
    order = (np.arange(n)[:, None] + np.arange(width)[None, :] * n).ravel()
    contents = pa.chunked_array(parts).take(pa.array(order))  # one copy of the text: no concatenation first
    contents = contents.chunk(0) if contents.num_chunks == 1 else contents.combine_chunks()
    role_array = pa.array(roles, type=pa.string()).take(pa.array(np.tile(np.arange(width), n)))
    items = pa.StructArray.from_arrays([role_array, contents], names=["role", "content"])
    offsets = pa.array(np.arange(0, width * n + 1, width, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, items)


def to_output(table: pa.Table, schema: pa.Schema, cfg: PrepareConfig) -> pa.Table:
    """Spilled rows as output rows: `messages` first, the internal columns gone."""
    names = table.column_names
    conversations = table.column(CONVERSATION_COLUMN) if CONVERSATION_COLUMN in names else None
    message_type = schema.field(MESSAGES_COLUMN).type
    if conversations is not None and conversations.null_count < table.num_rows:
        messages = _mixed_messages(table, conversations, cfg, message_type)
    elif message_type != MESSAGES_TYPE:  # a slice of plain pairs in a run with tool conversations
        messages = _mixed_messages(table, pa.chunked_array([pa.nulls(table.num_rows, pa.string())]), cfg, message_type)
    else:
        prompts = table.column(cfg.prompt_field).combine_chunks()
        responses = table.column(cfg.response_field).combine_chunks()
        messages = build_messages(prompts, responses, cfg.system_prompt)
    # A run with tool conversations ends its schema with the tools list (output_schema); a row field that is
    # merely named `tools` in another run is an ordinary column, written as given.
    tools = message_type == TOOL_MESSAGES_TYPE
    columns = [messages] + [table.column(name) for name in schema.names[1:len(schema.names) - tools]]
    if tools:
        columns.append(table.column(TOOLS_COLUMN) if TOOLS_COLUMN in names else pa.nulls(table.num_rows, pa.string()))
    return pa.Table.from_arrays(columns, schema=schema)


def _mixed_messages(table: pa.Table, conversations: pa.ChunkedArray, cfg: PrepareConfig,
                    message_type: pa.DataType = MESSAGES_TYPE) -> pa.Array:
    """Messages of a slice holding conversation rows (stored as JSON) and maybe prompt/response rows."""
    names = table.column_names
    n = table.num_rows
    prompts = table.column(cfg.prompt_field).to_pylist() if cfg.prompt_field in names else [None] * n
    responses = table.column(cfg.response_field).to_pylist() if cfg.response_field in names else [None] * n
    system = [{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt is not None else []
    rows = [
        loads_exact(text) if text is not None else
        system + [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        for text, prompt, response in zip(conversations.to_pylist(), prompts, responses)
    ]
    if message_type != MESSAGES_TYPE:
        rows = [[_tool_fields(m) for m in messages] for messages in rows]
    return pa.array(rows, type=message_type)


def _tool_fields(message: dict) -> dict:
    """A message with its tool calls as JSON text (TOOL_MESSAGES_TYPE)."""
    calls = message.get("tool_calls")
    return {**message, "tool_calls": orjson.dumps(calls).decode() if calls else None}


def write_outputs(spills: list[SpillInfo], spill_schema: pa.Schema, schema: pa.Schema, rows_out: RowsOut,
                  cfg: PrepareConfig, tmp_dir: Path, buckets: int, progress_factory
                  ) -> tuple[dict[str, Path], dict[str, int], dict[str, str]]:
    """Write train (and val) Parquet files into `tmp_dir`, bucket by bucket, deleting each bucket's
    spill files once written; returns the files, their row counts and their sha256 by name."""
    outputs = {"train": tmp_dir / "train.parquet"}
    if rows_out.threshold is not None:
        outputs["val"] = tmp_dir / "val.parquet"
    compression = None if cfg.compression == "none" else cfg.compression
    text = {f"{MESSAGES_COLUMN}.list.element.content", cfg.prompt_field, cfg.response_field}
    # Dictionary encoding and min/max statistics help small repeated values (ids, roles),
    # not long unique texts: there they only cost time (about 6% of the write).
    indexed = [path for path in _leaf_paths(schema) if path not in text]
    writers = {name: _WriterThread(path, schema, compression, indexed) for name, path in outputs.items()}
    rows = {"train": 0, "val": 0}
    progress = progress_factory(total=buckets, desc="shuffle+write", unit="bucket")
    try:
        for bucket in range(buckets):
            table = read_bucket(spills, bucket, spill_schema)
            if table.num_rows:
                for name, count in _write_bucket(bucket, table, schema, rows_out, cfg, writers).items():
                    rows[name] += count
            del table
            remove_bucket(spills, bucket)
            progress.update(1)
    finally:
        progress.close()
        errors = [error for error in (writer.close() for writer in writers.values()) if error is not None]
    if errors:
        raise errors[0]
    return outputs, rows, {name: writer.sha256 for name, writer in writers.items()}


def _write_bucket(bucket: int, table: pa.Table, schema: pa.Schema, rows_out: RowsOut, cfg: PrepareConfig,
                  writers: dict) -> dict[str, int]:
    """Shuffle one bucket's kept rows and hand them to the writers; returns the rows written by name."""
    keys = table.column(ORDER_COLUMN).to_numpy()
    dropped = rows_out.dropped_order
    rows = np.flatnonzero(~np.isin(keys, dropped, assume_unique=True)) if len(dropped) else np.arange(len(keys))
    rows = rows[np.argsort(keys[rows], kind="stable")]  # input order, whichever worker wrote what
    copies = rows_out.copies(keys[rows])
    if copies is not None:  # a row's copies, side by side here, are spread over the bucket by the permutation
        rows = np.repeat(rows, copies)
    rows = rows[np.random.default_rng([cfg.seed, bucket]).permutation(len(rows))]
    groups = table.column(GROUP_COLUMN).to_numpy()[rows]
    is_val = groups < rows_out.threshold if rows_out.threshold is not None else np.zeros(len(rows), dtype=bool)
    per_slice = max(1, int(SLICE_BYTES * table.num_rows / max(1, table.nbytes)))
    written = {}
    for name, selected in (("train", rows[~is_val]), ("val", rows[is_val])):
        for start in range(0, len(selected), per_slice):
            part = table.take(pa.array(selected[start : start + per_slice]))
            writers[name].put(to_output(part, schema, cfg))
        written[name] = len(selected)
    return written


def _leaf_paths(schema: pa.Schema) -> list[str]:
    """Parquet column paths of the leaves of `schema` (lists as `name.list.element`)."""

    def walk(name: str, data_type: pa.DataType) -> list[str]:
        if pa.types.is_struct(data_type):
            return [p for child in data_type for p in walk(f"{name}.{child.name}", child.type)]
        if pa.types.is_map(data_type):
            return walk(f"{name}.key_value.key", data_type.key_type) + walk(f"{name}.key_value.value", data_type.item_type)
        if pa.types.is_list(data_type) or pa.types.is_large_list(data_type) or pa.types.is_fixed_size_list(data_type):
            return walk(f"{name}.list.element", data_type.value_type)
        return [name]

    return [p for f in schema for p in walk(f.name, f.type)]


class _TailHasher:
    """The sha256 of a file being written (the manifest records each output's), taken on a thread of its own
    that reads what the writer has appended so far: the Parquet writer keeps writing to its own native file
    (no Python file object, no copy, no GIL), and hashing overlaps its compression. A Parquet writer only
    appends, and bytes below the file's size are written."""

    BLOCK = 8 << 20

    def __init__(self, path: Path):
        self.path = path
        self.digest = hashlib.sha256()
        self.done = 0
        self.closing = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=f"sha256-{path.name}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        # Below the writers in priority: the train writer is what the run waits for (Linux: nice is per thread)
        with contextlib.suppress(AttributeError, OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        try:
            buffer = memoryview(bytearray(self.BLOCK))  # one buffer, read into again and again
            with open(self.path, "rb", buffering=0) as handle:
                while True:
                    final = self.closing.is_set()  # read before the size: the writer had closed by then
                    size = os.fstat(handle.fileno()).st_size
                    while self.done < size:
                        handle.seek(self.done)
                        count = handle.readinto(buffer[: min(self.BLOCK, size - self.done)])
                        self.digest.update(buffer[:count])  # hashlib releases the GIL on large buffers
                        self.done += count
                    if final:
                        return
                    self.closing.wait(0.05)
        except OSError as exc:
            self.error = exc

    def finish(self) -> str:
        """The sha256, once the writer has closed the file."""
        self.closing.set()
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.digest.hexdigest()


class _WriterThread:
    """A Parquet file written on its own thread, so compressing one slice overlaps preparing the
    next (and train overlaps val): Arrow's C++ code releases the GIL."""

    def __init__(self, path: Path, schema: pa.Schema, compression: str | None, indexed: list[str]):
        self.writer = pq.ParquetWriter(str(path), schema, compression=compression, use_dictionary=indexed,
                                       write_statistics=indexed)
        self.hasher = _TailHasher(path)
        self.pending: queue.Queue = queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=f"write-{path.name}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (table := self.pending.get()) is not None:
            if self.error is None:
                try:
                    self.writer.write_table(table)
                except BaseException as exc:  # raised in the main thread by put() or close()
                    self.error = exc

    def put(self, table: pa.Table) -> None:
        if self.error is not None:
            raise self.error
        self.pending.put(table)

    def close(self) -> BaseException | None:
        self.pending.put(None)
        self.thread.join()
        try:
            self.writer.close()
        except OSError as exc:  # a full disk shows here too
            self.error = self.error or exc
        try:
            self.sha256 = self.hasher.finish()
        except OSError as exc:
            self.error = self.error or exc
        return self.error
