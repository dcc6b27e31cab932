"""The spill: what the scan writes to disk and prepare_data's write pass reads back (imported; not a command).

Both sides of the format live here. In the run's private temporary directory:
- bucket files, Arrow IPC streams `b{bucket}-w{worker}-{part}.arrow`: every row that passed the
  scan, with the input's fields, this run's columns (TOKENS_COLUMN, GRADING_COLUMNS) and the
  internal ones (INTERNAL_COLUMNS: order key, problem hash, messages as JSON). `SpillWriter`
  writes one worker's files (a new part when its schema widens) and returns a `SpillInfo`;
  `merge_spill_schemas` gives all workers' files one schema, `read_bucket` reads a bucket back
  whole and `remove_bucket` deletes it.
- line records, JSON lines per task with line numbers counted from the task's first line:
  the rows set aside (rejects) or dropped by the grader (answer drops). `append_line_records`
  appends a task's records; `merge_line_records` writes all tasks' records of a kind into one file, with
  line numbers in their input file (`absolute_line`).
"""

from __future__ import annotations

import collections
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from sft.dataprep.jsonl_io import SchemaTracker, conform_table, dumps_exact, loads_exact, widen_type

ORDER_COLUMN = "__sft_order"
GROUP_COLUMN = "__sft_group"
TOKENS_COLUMN = "sft_num_tokens"
ANSWER_COLUMN = "sft_answer"
"""With --answer-key/--answers: the answer the grader found in the kept solution."""
RULE_COLUMN = "sft_answer_rule"
"""... and how it found it (sft.text.math_answers.RULES, or strict)."""
GRADING_COLUMNS = (ANSWER_COLUMN, RULE_COLUMN)
CONVERSATION_COLUMN = "__sft_messages"
"""JSON of the messages to train on, for rows whose messages are not [system?, prompt, response]
(conversation rows, and responses whose reasoning --answers-only removed)."""
TOOLS_COLUMN = "__sft_tools"
"""JSON of the tools list a conversation's prompt offers (null: none); present when any row of the run has tool
calls, tool messages or a tools list, which makes the output's messages carry their tool fields."""
INTERNAL_COLUMNS = (ORDER_COLUMN, GROUP_COLUMN, CONVERSATION_COLUMN, TOOLS_COLUMN)


@dataclass
class SpillInfo:
    files: dict[int, list[str]]
    schema: pa.Schema | None
    first_seen: dict[str, int]
    """order key of the first row with each column: fixes the output column order"""


class SpillWriter:
    """One process's bucket files."""

    def __init__(self, spill_dir: str, buckets: int, worker_id: int = 0):
        self.spill_dir, self.buckets, self.worker_id = spill_dir, buckets, worker_id
        self.tracker = SchemaTracker()
        self.first_seen: dict[str, int] = {}
        self.files: dict[int, list[str]] = collections.defaultdict(list)
        self.writers: dict[int, tuple[Any, pa.Schema]] = {}

    def append(self, table: pa.Table, first_order: int, added: dict[str, Any], buckets: np.ndarray) -> None:
        """Append `table`'s rows, with the `added` columns, to their buckets' files (`buckets`: each row's bucket).

        `first_order` is the order key of the chunk's first row in input order (it fixes the
        output column order of the input's fields); rows already grouped by bucket (`buckets`
        sorted) are not moved.
        """
        for name in table.column_names:
            if name not in self.first_seen:
                self.first_seen[name] = first_order
        ours = [name for name in added if name in table.column_names]
        if ours:  # an input field of the same name is replaced by this run's value (the scan counts them)
            table = table.drop_columns(ours)
        for name, values in added.items():
            if not isinstance(values, pa.Array):
                values = pa.array(values, type=pa.int64() if name == TOKENS_COLUMN else pa.uint64())
            table = table.append_column(name, values)
        table = self.tracker.conform(table)
        if len(buckets) > 1 and (buckets[1:] < buckets[:-1]).any():
            by_bucket = np.argsort(buckets, kind="stable")
            table, buckets = table.take(pa.array(by_bucket)), buckets[by_bucket]
        bounds = np.searchsorted(buckets, np.arange(self.buckets + 1))
        for bucket in range(self.buckets):
            start, end = int(bounds[bucket]), int(bounds[bucket + 1])
            if end > start:
                self._write(bucket, table.slice(start, end - start))

    def _write(self, bucket: int, table: pa.Table) -> None:
        current = self.writers.get(bucket)
        if current is None or current[1] != table.schema:
            if current is not None:
                current[0].close()
            name = f"b{bucket:04d}-w{self.worker_id:03d}-{len(self.files[bucket]):03d}.arrow"
            path = os.path.join(self.spill_dir, name)
            self.files[bucket].append(path)
            current = (ipc.new_stream(path, table.schema), table.schema)
            self.writers[bucket] = current
        current[0].write_table(table)

    def finish(self) -> SpillInfo:
        for writer, _ in self.writers.values():
            writer.close()
        self.writers.clear()
        return SpillInfo(dict(self.files), self.tracker.schema, self.first_seen)


def merge_spill_schemas(spills: list[SpillInfo]) -> pa.Schema:
    """One schema for all workers' spill files: widest types, columns in first-seen input order."""
    types: dict[str, pa.DataType] = {}
    first: dict[str, int] = {}
    for spill in spills:
        if spill.schema is None:
            continue
        for f in spill.schema:
            types[f.name] = widen_type(types[f.name], f.type) if f.name in types else f.type
            first[f.name] = min(first.get(f.name, 1 << 63), spill.first_seen.get(f.name, 1 << 62))
    ours = (*GRADING_COLUMNS, TOKENS_COLUMN)  # this run's columns go last
    rank = {name: (name in INTERNAL_COLUMNS or name in ours, first[name], name) for name in types}
    return pa.schema([(name, types[name]) for name in sorted(types, key=rank.get)])


def read_bucket(spills: list[SpillInfo], bucket: int, schema: pa.Schema) -> pa.Table:
    """Every worker's rows of one bucket, in `schema` (merge_spill_schemas)."""
    tables = []
    for spill in spills:
        for path in spill.files.get(bucket, []):
            with pa.memory_map(path) as source:
                tables.append(conform_table(ipc.open_stream(source).read_all(), schema))
    if not tables:
        return schema.empty_table()
    # One contiguous copy: taking rows from a many-chunk column would concatenate it on every take.
    return pa.concat_tables(tables).combine_chunks()


def remove_bucket(spills: list[SpillInfo], bucket: int) -> None:
    for spill in spills:
        for path in spill.files.get(bucket, []):
            os.unlink(path)


def append_line_records(path: str | None, spill_dir: str, kind: str, task_index: int, records: list[bytes]) -> str:
    """Append a task's line records of one kind (`kind`: "rejects" or "drops"; JSON lines whose `line`
    counts from the task's first line) to its file `path`, created when None; returns the file's path."""
    if path is None:
        fd, path = tempfile.mkstemp(dir=spill_dir, prefix=f"{kind}-{task_index:06d}-")
        os.close(fd)
    with open(path, "ab") as handle:
        handle.writelines(records)
    return path


def absolute_line(results: Sequence, index: int, relative: int) -> int:
    """The line in its input file of line `relative` of task `results[index]` (TaskResults in task order)."""
    file_index = results[index].file_index
    before = sum(r.lines for r in results[:index] if r.file_index == file_index)
    return before + relative


def merge_line_records(results: Sequence, path: Path, attribute: str) -> int:
    """The tasks' line records (`attribute`: the TaskResult field naming their file) in one file at `path`,
    with line numbers in their input file; returns how many."""
    count = 0
    with open(path, "wb") as out:
        for position, result in enumerate(results):
            if not getattr(result, attribute):
                continue
            offset = absolute_line(results, position, 0)
            with open(getattr(result, attribute), "rb") as source:
                for line in source:
                    record = loads_exact(line)
                    record["line" if "line" in record else "index"] += offset
                    out.write(dumps_exact(record) + b"\n")
                    count += 1
    return count
