"""Turn JSONL files of model-generated math solutions into the Parquet files verl's SFT trainer reads.

Usage:
    python sft/prepare_data.py "outputs/*.jsonl" -o data/sft
    python sft/prepare_data.py "outputs/*.jsonl" extra.jsonl -o data/sft --val-split 0.05 --seed 1 \\
        --tokenizer /models/Qwen2.5-7B-Instruct --max-length 4096 \\
        --require-final-answer --dedup --max-per-problem 4 --on-error skip
    python sft/prepare_data.py data.jsonl -o data/sft --answers answers.jsonl   # keep correct solutions only

Writes, in the output directory (each file atomically; a stale file a new run does not produce
is removed; manifest.json is written last, so its presence means the run completed):
    train.parquet    `messages` ([system?], user=prompt, assistant=response) + the input's fields
                     (+ `sft_num_tokens`, the exact token count verl will see, with --tokenizer)
    val.parquet      same columns; absent with --val-split 0
    rejects.jsonl    with --on-error skip, one line per bad input row: file, line, reason, detail
    manifest.json    inputs (size, sha256), arguments, library versions, counts per stage (they
                     add up to the rows read), split and shuffle details, token summary with
                     `tokens.recommended_max_length` and `tokens.recommended_max_tokens_per_gpu`

Rows are validated, then filtered in this order, each drop counted under its reason:
duplicates (--dedup), missing final answer (--require-final-answer, or implied by answer
checking), wrong answer (--answer-key / --answers), token-length filters (--min-tokens,
--max-tokens, --max-length), then --max-per-problem (the first K remaining solutions of each
problem in input order). The train/val split is by problem (all rows with the same id, or the
same prompt when a row has no id, go to one side), exactly round(val_split x problems) problems
to val, chosen by a seeded hash. Rows are shuffled uniformly at random (seeded) with bounded
memory: each row goes to a hashed bucket on disk, each bucket is permuted in memory. See
sft/README.md ("Data preparation") for details.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python sft/prepare_data.py`: make `import sft.x` work
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import collections
import contextlib
import datetime
import hashlib
import importlib.metadata
import math
import os
import platform
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from sft.jsonl_io import (
    DEFAULT_CHUNK_BYTES,
    BadLine,
    InputError,
    JsonlReader,
    SchemaTracker,
    atomic_path,
    conform_table,
    ensure_writable_dir,
    expand_inputs,
    rows_to_table,
    write_json_atomic,
)

MANIFEST_VERSION = 1
GROUP_COLUMN = "__sft_group"
TOKENS_COLUMN = "sft_num_tokens"
MESSAGES_COLUMN = "messages"
MAX_BUCKETS = 1024

# Reject reasons added by validation (parse failures come from sft.jsonl_io).
REASON_MISSING = "missing_field"
REASON_NULL = "null_value"
REASON_NOT_STRING = "not_a_string"
REASON_EMPTY = "empty_string"
REASON_BAD_ID = "invalid_id"

# Filter reasons, in the order the filters run.
FILTER_ORDER = (
    "no_final_answer",
    "no_reference_answer",
    "wrong_answer",
    "no_token_count",
    "too_few_tokens",
    "too_many_tokens",
    "over_max_length",
    "over_max_per_problem",
)
STAGE_ORDER = ["read", "rejected", "deduplicated", "filtered", "train", "val"]


class DataError(Exception):
    """A bad input row under --on-error fail."""

    def __init__(self, bad: BadLine):
        super().__init__(bad.message())
        self.bad = bad


@dataclass
class PrepareConfig:
    """Every option of prepare_data; the CLI flags map one to one (see --help)."""

    val_split: float = 0.1
    seed: int = 0
    prompt_key: str = "prompt"
    response_key: str = "generated_solution"
    id_key: str = "id"
    system_prompt: str | None = None
    group_by: str = "id"
    require_final_answer: bool = False
    dedup: bool = False
    max_per_problem: int | None = None
    min_tokens: int | None = None
    max_tokens: int | None = None
    num_tokens_key: str = "num_tokens"
    answer_key: str | None = None
    answers: str | None = None
    on_error: str = "fail"
    tokenizer: str | None = None
    max_length: int | None = None
    shuffle_buffer_mb: float = 128.0
    chunk_mb: float = DEFAULT_CHUNK_BYTES / (1 << 20)
    progress: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.val_split < 1.0:
            raise InputError(f"--val-split must be in [0, 1), got {self.val_split}")
        if self.on_error not in ("fail", "skip"):
            raise InputError(f"--on-error must be 'fail' or 'skip', got {self.on_error!r}")
        if self.group_by not in ("id", "prompt"):
            raise InputError(f"--group-by must be 'id' or 'prompt', got {self.group_by!r}")
        if self.prompt_key == self.response_key:
            raise InputError(f"--prompt-key and --response-key are both {self.prompt_key!r}")
        for name in ("max_per_problem", "min_tokens", "max_tokens", "max_length"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if self.min_tokens and self.max_tokens and self.min_tokens > self.max_tokens:
            raise InputError(f"--min-tokens {self.min_tokens} is above --max-tokens {self.max_tokens}")
        if self.max_length is not None and self.tokenizer is None:
            raise InputError(
                "--max-length needs --tokenizer: the limit applies to the tokens verl counts through the chat template"
            )
        if self.answer_key and self.answers:
            raise InputError("use either --answer-key (a field of each row) or --answers FILE, not both")
        if self.shuffle_buffer_mb <= 0 or self.chunk_mb <= 0:
            raise InputError("--shuffle-buffer-mb and --chunk-mb must be positive")

    @property
    def check_answers(self) -> bool:
        return bool(self.answer_key or self.answers)


# ---------------------------------------------------------------------------------------
# Helpers


def _hash_key(seed: int, purpose: str) -> str:
    """A 16-character SipHash key for pandas' hash_array, derived from the seed."""
    return hashlib.sha256(f"verl-sft:{purpose}:{seed}".encode()).hexdigest()[:16]


def _hash_strings(values: list[str], key: str) -> np.ndarray:
    from pandas.util import hash_array

    return hash_array(np.array(values, dtype=object), hash_key=key, categorize=False)


def _hash_ints(values: np.ndarray, key: str) -> np.ndarray:
    from pandas.util import hash_array

    return hash_array(np.asarray(values, dtype=np.uint64), hash_key=key)


def _normalise_ws(text: str) -> str:
    return " ".join(text.split())


def _versions(names: Iterable[str]) -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def load_answers(path: str, id_key: str) -> dict[str, str]:
    """Reference answers by id (as text) from a JSON object {id: answer}, a JSON list of
    {id_key: ..., "answer": ...} objects, or a JSONL file of such objects."""
    from sft.math_answers import reference_answer

    if not os.path.isfile(path):
        raise InputError(f"--answers file {path} does not exist")
    answers: dict[str, str] = {}

    def add(record: Any, where: str) -> None:
        if not isinstance(record, dict) or id_key not in record or "answer" not in record:
            raise InputError(f"{where}: expected an object with {id_key!r} and 'answer' keys")
        ref = reference_answer(None if record["answer"] is None else str(record["answer"]))
        if ref is not None:
            answers[str(record[id_key])] = ref

    if path.endswith(".json"):
        import json

        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read --answers file {path}: {exc}") from exc
        if isinstance(data, dict):
            for key, value in data.items():
                ref = reference_answer(None if value is None else str(value))
                if ref is not None:
                    answers[str(key)] = ref
        elif isinstance(data, list):
            for i, record in enumerate(data):
                add(record, f"{path}[{i}]")
        else:
            raise InputError(f"{path}: expected a JSON object {{id: answer}} or a list of objects")
        return answers
    for chunk in JsonlReader(path):
        if chunk.bad:
            raise InputError(chunk.bad[0].message())
        for line, record in zip(chunk.lines, chunk.rows):
            add(record, f"{path}:{line}")
    return answers


class _BucketSpill:
    """Arrow IPC files on disk, one series per shuffle bucket; a new file when the schema widens."""

    def __init__(self, directory: Path, buckets: int):
        self.directory = directory
        self.buckets = buckets
        self.files: list[list[Path]] = [[] for _ in range(buckets)]
        self.writers: dict[int, tuple[ipc.RecordBatchStreamWriter, pa.Schema]] = {}

    def write(self, bucket: int, table: pa.Table) -> None:
        current = self.writers.get(bucket)
        if current is None or current[1] != table.schema:
            if current is not None:
                current[0].close()
            path = self.directory / f"bucket{bucket:04d}-{len(self.files[bucket]):03d}.arrow"
            self.files[bucket].append(path)
            current = (ipc.new_stream(str(path), table.schema), table.schema)
            self.writers[bucket] = current
        current[0].write_table(table)

    def close(self) -> None:
        for writer, _ in self.writers.values():
            writer.close()
        self.writers.clear()

    def read(self, bucket: int, schema: pa.Schema) -> pa.Table:
        tables = []
        for path in self.files[bucket]:
            with pa.memory_map(str(path)) as source:
                tables.append(conform_table(ipc.open_stream(source).read_all(), schema))
        if not tables:
            return schema.empty_table()
        return pa.concat_tables(tables)


def build_messages(prompts: pa.Array, responses: pa.Array, system_prompt: str | None) -> pa.Array:
    """list<struct<role, content>> per row: [system?], user=prompt, assistant=response."""
    n = len(prompts)
    parts, roles = [prompts, responses], ["user", "assistant"]
    if system_prompt is not None:
        parts.insert(0, pa.array([system_prompt] * n, type=pa.string()))
        roles.insert(0, "system")
    width = len(parts)
    order = (np.arange(n)[:, None] + np.arange(width)[None, :] * n).ravel()
    contents = pa.concat_arrays([p.cast(pa.string()) for p in parts]).take(pa.array(order))
    role_array = pa.array(np.tile(np.array(roles, dtype=object), n), type=pa.string())
    items = pa.StructArray.from_arrays([role_array, contents], names=["role", "content"])
    offsets = pa.array(np.arange(0, width * n + 1, width, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, items)


# ---------------------------------------------------------------------------------------
# The run


@dataclass
class _Counts:
    read: int = 0
    blank_lines: int = 0
    rejected: collections.Counter = field(default_factory=collections.Counter)
    deduplicated: int = 0
    filtered: collections.Counter = field(default_factory=collections.Counter)
    train: int = 0
    val: int = 0

    def as_dict(self) -> dict:
        rejected = dict(sorted(self.rejected.items()))
        filtered = {reason: self.filtered[reason] for reason in FILTER_ORDER if self.filtered[reason]}
        return {
            "read": self.read,
            "blank_lines": self.blank_lines,
            "rejected": rejected,
            "rejected_total": sum(rejected.values()),
            "deduplicated": self.deduplicated,
            "filtered": filtered,
            "filtered_total": sum(filtered.values()),
            "train": self.train,
            "val": self.val,
        }

    def balanced(self) -> bool:
        return self.read == sum(self.rejected.values()) + self.deduplicated + sum(self.filtered.values()) + self.train + self.val


class _Preparer:
    def __init__(self, files: list[str], output_dir: Path, config: PrepareConfig):
        self.files = files
        self.output_dir = output_dir
        self.config = config
        self.counts = _Counts()
        self.tracker = SchemaTracker()
        self.inputs: list[dict] = []
        self.warnings: list[str] = []
        self.group_key = _hash_key(config.seed, "group")
        self.prompt_key_hash = _hash_key(config.seed, "prompt")
        self.bucket_key = _hash_key(config.seed, "bucket")
        self.dedup_seen: set[bytes] = set()
        self.per_problem: collections.Counter = collections.Counter()
        self.kept_groups: list[np.ndarray] = []
        self.kept_prompts: list[np.ndarray] = []
        self.kept_tokens: list[np.ndarray] = []
        self.counted_tokens: list[np.ndarray] = []
        self.answers: dict[str, str] | None = None
        self.counter = None
        self.rejects_handle = None
        self.rejects_count = 0

    # -- setup ------------------------------------------------------------------------
    def _load_tokenizer(self) -> None:
        from transformers import AutoTokenizer

        from sft.chat_tokens import ChatTokenCounter

        path = self.config.tokenizer
        if not os.path.exists(path):
            raise InputError(f"--tokenizer {path} does not exist; pass a local model or tokenizer directory")
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot load a tokenizer from {path}: {exc}") from exc
        try:
            self.counter = ChatTokenCounter(tokenizer)
        except ValueError as exc:
            raise InputError(f"--tokenizer {path}: {exc}") from exc
        if "render" in self.counter.modes.values():
            self.warnings.append(
                f"the chat template of {path} rewrites message content, so tokens are counted by rendering "
                "every message (exact but slow)"
            )
        self._verified = False

    # -- pass 1 -----------------------------------------------------------------------
    def _reject(self, bad: BadLine) -> None:
        self.counts.rejected[bad.reason] += 1
        if self.rejects_handle is not None:
            self.rejects_handle.write(bad.to_json())
            self.rejects_count += 1

    def _validate(self, path: str, line: int, row: dict) -> BadLine | None:
        cfg = self.config
        for key in (cfg.prompt_key, cfg.response_key):
            if key not in row:
                present = ", ".join(list(row)[:12]) or "none"
                flag = "--prompt-key" if key == cfg.prompt_key else "--response-key"
                return BadLine(path, line, REASON_MISSING,
                               f"field {key!r} is missing (fields present: {present}); fix the row or pass {flag} "
                               "to name the field that holds it", row=row)
            value = row[key]
            if value is None:
                return BadLine(path, line, REASON_NULL, f"field {key!r} is null; it must be a non-empty string", row=row)
            if type(value) is not str:
                return BadLine(path, line, REASON_NOT_STRING,
                               f"field {key!r} is a {type(value).__name__}, not a string", row=row)
            if not value or value.isspace():
                return BadLine(path, line, REASON_EMPTY, f"field {key!r} is empty", row=row)
        ident = row.get(cfg.id_key)
        if ident is not None and type(ident) not in (str, int, float):
            return BadLine(path, line, REASON_BAD_ID,
                           f"field {cfg.id_key!r} is a {type(ident).__name__}; an id must be a string or a number",
                           row=row)
        return None

    def _group_keys(self, rows: list[dict]) -> list[str]:
        cfg = self.config
        if cfg.group_by == "prompt":
            return ["p\x1f" + row[cfg.prompt_key] for row in rows]
        keys = []
        for row in rows:
            ident = row.get(cfg.id_key)
            keys.append("p\x1f" + row[cfg.prompt_key] if ident is None else "i\x1f" + str(ident))
        return keys

    def _reference(self, row: dict) -> str | None:
        from sft.math_answers import reference_answer

        if self.config.answer_key:
            value = row.get(self.config.answer_key)
            return reference_answer(None if value is None else str(value))
        ident = row.get(self.config.id_key)
        return None if ident is None else self.answers.get(str(ident))

    def _process_chunk(self, file_index: int, chunk) -> None:
        cfg = self.config
        counts = self.counts
        counts.read += chunk.rows_read
        counts.blank_lines += chunk.blank_lines
        bad = list(chunk.bad)
        rows: list[dict] = []
        lines: list[int] = []
        for line, row in zip(chunk.lines, chunk.rows):
            if MESSAGES_COLUMN in row:
                raise InputError(
                    f"{chunk.path}:{line}: the row already has a {MESSAGES_COLUMN!r} field; prepare_data builds it "
                    "from --prompt-key/--response-key, so rename or drop that field first"
                )
            problem = self._validate(chunk.path, line, row)
            if problem is None:
                rows.append(row)
                lines.append(line)
            else:
                bad.append(problem)
        if bad:
            if cfg.on_error == "fail":
                raise DataError(min(bad, key=lambda b: b.line))
            for item in sorted(bad, key=lambda b: b.line):
                self._reject(item)

        keep = list(range(len(rows)))

        def drop(indices: list[int], reason: str | None) -> None:
            nonlocal keep
            gone = set(indices)
            if reason == "duplicate":
                counts.deduplicated += len(gone)
            elif reason:
                counts.filtered[reason] += len(gone)
            keep = [i for i in keep if i not in gone]

        if cfg.dedup:
            duplicates = []
            for i in keep:
                row = rows[i]
                digest = hashlib.blake2b(
                    (_normalise_ws(row[cfg.prompt_key]) + "\x00" + _normalise_ws(row[cfg.response_key])).encode(),
                    digest_size=16,
                ).digest()
                if digest in self.dedup_seen:
                    duplicates.append(i)
                else:
                    self.dedup_seen.add(digest)
            drop(duplicates, "duplicate")

        if cfg.require_final_answer or cfg.check_answers:
            from sft.math_answers import answers_match, extract_final_answer

            no_answer, no_reference, wrong = [], [], []
            for i in keep:
                row = rows[i]
                predicted = extract_final_answer(row[cfg.response_key])
                if predicted is None:
                    no_answer.append(i)
                    continue
                if cfg.check_answers:
                    reference = self._reference(row)
                    if reference is None:
                        no_reference.append(i)
                    elif not answers_match(predicted, reference):
                        wrong.append(i)
            drop(no_answer, "no_final_answer")
            drop(no_reference, "no_reference_answer")
            drop(wrong, "wrong_answer")

        tokens = None
        if self.counter is not None and keep:
            prompts = [rows[i][cfg.prompt_key] for i in keep]
            responses = [rows[i][cfg.response_key] for i in keep]
            if not self._verified:  # prove the fast count equals verl's on real rows once per run
                self.counter.verify(prompts[:8], responses[:8], cfg.system_prompt)
                self._verified = True
            counted = self.counter.count(prompts, responses, cfg.system_prompt)
            self.counted_tokens.append(counted)
            tokens = dict(zip(keep, counted.tolist()))
        elif cfg.min_tokens or cfg.max_tokens:
            tokens, missing = {}, []
            for i in keep:
                value = rows[i].get(cfg.num_tokens_key)
                if type(value) in (int, float) and not (isinstance(value, float) and math.isnan(value)):
                    tokens[i] = value
                else:
                    missing.append(i)
            drop(missing, "no_token_count")
        if tokens is not None:
            for reason, limit, test in (
                ("too_few_tokens", cfg.min_tokens, lambda n, lim: n < lim),
                ("too_many_tokens", cfg.max_tokens, lambda n, lim: n > lim),
                ("over_max_length", cfg.max_length, lambda n, lim: n > lim),
            ):
                if limit is not None:
                    drop([i for i in keep if test(tokens[i], limit)], reason)

        if not keep:
            return
        kept_rows = [rows[i] for i in keep]
        groups = _hash_strings(self._group_keys(kept_rows), self.group_key)
        if cfg.max_per_problem is not None:
            over, selected = [], []
            for position, (i, group) in enumerate(zip(keep, groups.tolist())):
                self.per_problem[group] += 1
                if self.per_problem[group] > cfg.max_per_problem:
                    over.append(i)
                else:
                    selected.append(position)
            if over:
                drop(over, "over_max_per_problem")
                kept_rows = [kept_rows[p] for p in selected]
                groups = groups[selected]
        if not keep:
            return

        self.kept_groups.append(groups)
        self.kept_prompts.append(_hash_strings([row[cfg.prompt_key] for row in kept_rows], self.prompt_key_hash))
        table = rows_to_table(kept_rows)
        if TOKENS_COLUMN in table.column_names:
            table = table.drop_columns([TOKENS_COLUMN])
        if tokens is not None and self.counter is not None:
            token_array = np.array([tokens[i] for i in keep], dtype=np.int64)
            self.kept_tokens.append(token_array)
            table = table.append_column(TOKENS_COLUMN, pa.array(token_array))
        table = table.append_column(GROUP_COLUMN, pa.array(groups, type=pa.uint64()))
        table = self.tracker.conform(table)

        kept_lines = np.array([lines[i] for i in keep], dtype=np.uint64)
        buckets = (_hash_ints((np.uint64(file_index) << np.uint64(40)) | kept_lines, self.bucket_key)
                   % np.uint64(self.spill.buckets)).astype(np.int64)
        if self.spill.buckets == 1:
            self.spill.write(0, table)
            return
        order = np.argsort(buckets, kind="stable")
        sorted_table = table.take(pa.array(order))
        bounds = np.searchsorted(buckets[order], np.arange(self.spill.buckets + 1))
        for bucket in range(self.spill.buckets):
            start, end = int(bounds[bucket]), int(bounds[bucket + 1])
            if end > start:
                self.spill.write(bucket, sorted_table.slice(start, end - start))

    def _pass1(self, progress) -> None:
        chunk_bytes = int(self.config.chunk_mb * (1 << 20))
        for file_index, path in enumerate(self.files):
            reader = JsonlReader(path, chunk_bytes=chunk_bytes)
            rows_before, rejected_before = self.counts.read, sum(self.counts.rejected.values())
            for chunk in reader:
                self._process_chunk(file_index, chunk)
                progress.update(chunk.nbytes)
            self.inputs.append({
                "path": os.path.abspath(path),
                "bytes": reader.size,
                "sha256": reader.sha256,
                "rows": self.counts.read - rows_before,
                "blank_lines": reader.blank_lines,
                "rejected": sum(self.counts.rejected.values()) - rejected_before,
            })

    # -- split ------------------------------------------------------------------------
    def _split(self) -> dict:
        cfg = self.config
        groups = np.concatenate(self.kept_groups) if self.kept_groups else np.zeros(0, np.uint64)
        unique = np.unique(groups)
        n_groups = len(unique)
        val_groups = 0
        if cfg.val_split > 0:
            if n_groups >= 2:
                val_groups = min(max(int(round(cfg.val_split * n_groups)), 1), n_groups - 1)
            else:
                self.warnings.append(
                    f"only {n_groups} problem(s) left after filtering: no validation split is possible, "
                    "so no val.parquet was written"
                )
        # val = the val_groups problems with the smallest seeded hashes (np.unique sorts them)
        self.threshold = np.uint64(unique[val_groups]) if val_groups else None
        info = {
            "by": cfg.group_by if cfg.group_by == "prompt" else f"{cfg.id_key} (prompt text when a row has no {cfg.id_key})",
            "problems": int(n_groups),
            "val_problems": int(val_groups),
            "seed": cfg.seed,
        }
        # Leak checks: the same prompt text on both sides (possible when grouping by id).
        prompts = np.concatenate(self.kept_prompts) if self.kept_prompts else np.zeros(0, np.uint64)
        is_val = groups < self.threshold if val_groups else np.zeros(len(groups), bool)
        shared = np.intersect1d(prompts[is_val], prompts[~is_val]) if val_groups else np.zeros(0)
        info["val_prompts_also_in_train"] = int(len(shared))
        if len(shared):
            self.warnings.append(
                f"{len(shared)} prompt(s) appear in both train and val under different ids: the same problem has "
                "several ids; pass --group-by prompt for a split by prompt text"
            )
        if cfg.group_by == "id" and len(groups):
            pairs = np.unique(np.stack([groups, prompts], axis=1), axis=0)
            group_values, per_group = np.unique(pairs[:, 0], return_counts=True)
            several = int((per_group > 1).sum())
            info["ids_with_several_prompts"] = several
            if several:
                self.warnings.append(
                    f"{several} id(s) have more than one distinct prompt (ids may restart in every file); they are "
                    "kept together (no leak, but --max-per-problem counts them as one problem). "
                    "Pass --group-by prompt if ids are not problem ids"
                )
        self.is_val_all = is_val
        return info

    # -- pass 2 -----------------------------------------------------------------------
    def _output_schema(self) -> pa.Schema:
        fields = [pa.field(MESSAGES_COLUMN, pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())])))]
        fields += [f for f in self.tracker.schema if f.name not in (GROUP_COLUMN, TOKENS_COLUMN)]
        if TOKENS_COLUMN in self.tracker.schema.names:
            fields.append(self.tracker.schema.field(TOKENS_COLUMN))
        return pa.schema(fields)

    def _to_output(self, table: pa.Table, schema: pa.Schema) -> pa.Table:
        cfg = self.config
        prompts = table.column(cfg.prompt_key).combine_chunks()
        responses = table.column(cfg.response_key).combine_chunks()
        messages = build_messages(prompts, responses, cfg.system_prompt)
        columns = [messages] + [table.column(name) for name in schema.names[1:]]
        return pa.Table.from_arrays(columns, schema=schema)

    def _pass2(self, tmp_dir: Path, progress_factory) -> dict[str, Path]:
        cfg = self.config
        schema = self._output_schema()
        outputs = {"train": tmp_dir / "train.parquet"}
        if self.threshold is not None:
            outputs["val"] = tmp_dir / "val.parquet"
        writers = {name: pq.ParquetWriter(str(path), schema) for name, path in outputs.items()}
        try:
            progress = progress_factory(total=self.spill.buckets, desc="shuffle+write", unit="bucket")
            for bucket in range(self.spill.buckets):
                table = self.spill.read(bucket, self.tracker.schema)
                if table.num_rows:
                    rng = np.random.default_rng([cfg.seed, bucket])
                    table = table.take(pa.array(rng.permutation(table.num_rows)))
                    groups = table.column(GROUP_COLUMN).to_numpy()
                    is_val = groups < self.threshold if self.threshold is not None else np.zeros(len(groups), bool)
                    for name, mask in (("train", ~is_val), ("val", is_val)):
                        if name in writers and mask.any():
                            part = table.filter(pa.array(mask))
                            writers[name].write_table(self._to_output(part, schema))
                            setattr(self.counts, name, getattr(self.counts, name) + part.num_rows)
                for path in self.spill.files[bucket]:
                    path.unlink()
                progress.update(1)
            progress.close()
        finally:
            for writer in writers.values():
                writer.close()
        return outputs

    # -- tokens -----------------------------------------------------------------------
    def _token_summary(self) -> dict | None:
        if self.counter is None:
            return None
        from sft.chat_tokens import length_summary, recommend

        cfg = self.config
        counted = np.concatenate(self.counted_tokens) if self.counted_tokens else np.zeros(0, np.int64)
        kept = np.concatenate(self.kept_tokens) if self.kept_tokens else np.zeros(0, np.int64)
        summary: dict[str, Any] = {
            "tokenizer": os.path.abspath(cfg.tokenizer),
            "counted_as": "verl MultiTurnSFTDataset: each message templated alone, default system block cut "
            "from every non-first non-system message; chat template and EOS included",
            "template_modes": self.counter.modes,
            "max_length": cfg.max_length,
            "before_length_filters": length_summary(counted, cfg.max_length),
            "kept": length_summary(kept),
            "train": length_summary(kept[~self.is_val_all]) if len(kept) else {"samples": 0},
            "val": length_summary(kept[self.is_val_all]) if len(kept) else {"samples": 0},
        }
        if len(kept):
            max_length, per_gpu = recommend(int(kept.max()), cfg.max_length)
            summary["recommended_max_length"] = int(max_length)
            summary["recommended_max_tokens_per_gpu"] = int(per_gpu)
            summary["recommendation_rule"] = (
                "max_length = longest kept sample (train and val) rounded up to a multiple of 256, capped at "
                "--max-length; max_tokens_per_gpu = max(8192 (verl's default), max_length)"
            )
            p999 = summary["kept"]["percentiles"]["p99.9"]
            if cfg.max_length is None and kept.max() > 2 * max(p999, 1):
                longer = int((kept > p999).sum())
                self.warnings.append(
                    f"the longest sample has {int(kept.max())} tokens but 99.9% have at most {p999}; "
                    f"--max-length {p999} would drop {longer} sample(s) and allow a much smaller MAX_LENGTH"
                )
        return summary

    # -- everything -------------------------------------------------------------------
    def run(self, argv_record: dict) -> dict:
        from tqdm import tqdm

        cfg = self.config
        out = self.output_dir
        total_bytes = sum(os.path.getsize(p) for p in self.files)
        buckets = int(min(MAX_BUCKETS, max(1, math.ceil(total_bytes / (cfg.shuffle_buffer_mb * (1 << 20))))))
        if cfg.check_answers and cfg.answers:
            self.answers = load_answers(cfg.answers, cfg.id_key)
        if cfg.tokenizer:
            self._load_tokenizer()

        def progress_factory(**kwargs):
            return tqdm(disable=not cfg.progress, dynamic_ncols=True, mininterval=1.0, **kwargs)

        tmp_dir = Path(tempfile.mkdtemp(prefix=".prepare_data-", dir=out))
        try:
            self.spill = _BucketSpill(tmp_dir, buckets)
            if cfg.on_error == "skip":
                self.rejects_handle = open(tmp_dir / "rejects.jsonl", "wb")  # noqa: SIM115 - closed below
            progress = progress_factory(total=total_bytes, desc="reading", unit="B", unit_scale=True)
            try:
                self._pass1(progress)
            finally:
                progress.close()
                self.spill.close()
                if self.rejects_handle is not None:
                    self.rejects_handle.close()
            split = self._split()
            produced = self._pass2(tmp_dir, progress_factory) if self.kept_groups else {}
            tokens = self._token_summary()
            if not self.counts.balanced():  # a bug, never bad input: every row must be accounted for
                raise RuntimeError(f"internal error: stage counts do not add up: {self.counts.as_dict()}")

            manifest = {
                "manifest_version": MANIFEST_VERSION,
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "command": argv_record,
                "config": asdict(cfg),
                "inputs": self.inputs,
                "versions": _versions(
                    ["pyarrow", "numpy", "pandas", "orjson"]
                    + (["transformers", "tokenizers"] if cfg.tokenizer else [])
                    + (["math-verify"] if cfg.require_final_answer or cfg.check_answers else [])
                    + ["verl"]
                ),
                "stage_order": STAGE_ORDER,
                "filter_order": list(FILTER_ORDER),
                "counts": self.counts.as_dict(),
                "split": split,
                "shuffle": {
                    "buckets": buckets,
                    "guarantee": "uniform random permutation for the seed: each row goes to a bucket by a seeded "
                    "hash of (file, line), each bucket is permuted with a seeded RNG",
                },
                "outputs": {},
                "warnings": self.warnings,
            }
            if tokens is not None:
                manifest["tokens"] = tokens

            # Publish: drop the old manifest first so a crash mid-publish never leaves a manifest
            # describing files from two different runs; then data files; the manifest last.
            with contextlib.suppress(FileNotFoundError):
                (out / "manifest.json").unlink()
            finals = {"train": out / "train.parquet", "val": out / "val.parquet", "rejects": out / "rejects.jsonl"}
            if self.counts.train == 0:
                produced = {}
            if self.rejects_count:
                produced["rejects"] = tmp_dir / "rejects.jsonl"
            for name, final in finals.items():
                if name in produced:
                    os.replace(produced[name], final)
                    manifest["outputs"][name] = {"path": str(final.resolve()), "bytes": final.stat().st_size,
                                                 "rows": self.rejects_count if name == "rejects" else getattr(self.counts, name)}
                else:
                    with contextlib.suppress(FileNotFoundError):
                        final.unlink()
            write_json_atomic(out / "manifest.json", manifest)
            return manifest
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)


def prepare_data(inputs: list[str], output_dir: str | os.PathLike, config: PrepareConfig | None = None,
                 command: dict | None = None) -> dict:
    """Run the whole preparation; returns the manifest (also written to output_dir/manifest.json).

    Raises InputError for unusable inputs/outputs and DataError for the first bad row under
    on_error="fail"; nothing is written to output_dir in either case.
    """
    config = config or PrepareConfig()
    files = expand_inputs(list(inputs))
    output_dir = ensure_writable_dir(output_dir)
    return _Preparer(files, output_dir, config).run(command or {"inputs": list(inputs), "output_dir": str(output_dir)})


# ---------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    defaults = PrepareConfig()
    parser = argparse.ArgumentParser(
        prog="sft/prepare_data.py",
        description="Turn JSONL files of model-generated solutions into verl SFT Parquet files "
        "(train.parquet, val.parquet, manifest.json).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog='Example: python sft/prepare_data.py "outputs/*.jsonl" -o data/sft --tokenizer /models/qwen --max-length 4096',
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="JSONL files or quoted globs (e.g. 'outputs/*.jsonl')")
    parser.add_argument("-o", "--output-dir", required=True, help="directory for train.parquet, val.parquet, manifest.json")
    split = parser.add_argument_group("split and shuffle")
    split.add_argument("--val-split", type=float, default=defaults.val_split,
                       help="fraction of problems (not rows) held out for validation; 0 writes no val.parquet")
    split.add_argument("--seed", type=int, default=defaults.seed, help="seed of the split and of the shuffle")
    split.add_argument("--group-by", choices=["id", "prompt"], default=defaults.group_by,
                       help="what makes rows one problem for the split and --max-per-problem: the id field "
                       "(the prompt text for rows without one), or always the prompt text")
    split.add_argument("--shuffle-buffer-mb", type=float, default=defaults.shuffle_buffer_mb,
                       help="approximate input size per shuffle bucket, in MiB (memory use grows with it)")
    fields = parser.add_argument_group("fields")
    fields.add_argument("--prompt-key", default=defaults.prompt_key, help="field with the problem text (user message)")
    fields.add_argument("--response-key", default=defaults.response_key, help="field with the solution (assistant message)")
    fields.add_argument("--id-key", default=defaults.id_key, help="field with the problem id")
    fields.add_argument("--system-prompt", default=None, help="system message to put first in every sample (default: none)")
    filters = parser.add_argument_group("quality filters (all off by default; every drop is counted)")
    filters.add_argument("--dedup", action="store_true",
                         help="drop exact duplicate (prompt, response) pairs after whitespace normalisation; the first is kept")
    filters.add_argument("--require-final-answer", action="store_true",
                         help="drop solutions with no extractable final answer (\\boxed{...}, 'the answer is ...', '#### ...')")
    filters.add_argument("--answer-key", default=None,
                         help="field holding the reference answer (bare or a full solution); keeps only correct solutions (math-verify)")
    filters.add_argument("--answers", default=None, metavar="FILE",
                         help="reference answers by id: .json {id: answer} or .jsonl rows with the id field and 'answer'; "
                         "keeps only correct solutions (math-verify)")
    filters.add_argument("--max-per-problem", type=int, default=None, metavar="K",
                         help="keep at most K solutions per problem (the first K in input order)")
    filters.add_argument("--min-tokens", type=int, default=None,
                         help="drop samples with fewer tokens (with --tokenizer: the chat-templated count verl sees; "
                         "without: the --num-tokens-key field)")
    filters.add_argument("--max-tokens", type=int, default=None, help="drop samples with more tokens (same count as --min-tokens)")
    filters.add_argument("--num-tokens-key", default=defaults.num_tokens_key,
                         help="field with a token count, used by --min/--max-tokens when there is no --tokenizer")
    tokens = parser.add_argument_group("token budget")
    tokens.add_argument("--tokenizer", default=None, metavar="PATH",
                        help="local tokenizer/model directory: count every sample's tokens exactly as verl will, "
                        "print a length summary and recommend MAX_LENGTH and MAX_TOKENS_PER_GPU")
    tokens.add_argument("--max-length", type=int, default=None,
                        help="verl's data.max_length in tokens: longer samples are dropped (counted as over_max_length) "
                        "so training with truncation=error never stops on one (needs --tokenizer)")
    run = parser.add_argument_group("errors and progress")
    run.add_argument("--on-error", choices=["fail", "skip"], default=defaults.on_error,
                     help="bad row: fail = stop at the first with file, line and reason; skip = set it aside in rejects.jsonl")
    run.add_argument("--chunk-mb", type=float, default=defaults.chunk_mb, help="input read per step, in MiB")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def config_from_args(args: argparse.Namespace) -> PrepareConfig:
    return PrepareConfig(
        val_split=args.val_split, seed=args.seed, prompt_key=args.prompt_key, response_key=args.response_key,
        id_key=args.id_key, system_prompt=args.system_prompt, group_by=args.group_by,
        require_final_answer=args.require_final_answer, dedup=args.dedup, max_per_problem=args.max_per_problem,
        min_tokens=args.min_tokens, max_tokens=args.max_tokens, num_tokens_key=args.num_tokens_key,
        answer_key=args.answer_key, answers=args.answers, on_error=args.on_error, tokenizer=args.tokenizer,
        max_length=args.max_length, shuffle_buffer_mb=args.shuffle_buffer_mb, chunk_mb=args.chunk_mb,
        progress=not args.no_progress,
    )


def format_report(manifest: dict, output_dir: str) -> str:
    """The short summary printed at the end of a run."""
    from sft.chat_tokens import format_summary

    c = manifest["counts"]
    lines = [f"read {c['read']:,} rows from {len(manifest['inputs'])} file(s) (+{c['blank_lines']:,} blank lines skipped)"]
    if c["rejected_total"]:
        detail = ", ".join(f"{k} {v:,}" for k, v in c["rejected"].items())
        lines.append(f"rejected {c['rejected_total']:,}: {detail}")
    if c["deduplicated"]:
        lines.append(f"deduplicated {c['deduplicated']:,}")
    if c["filtered_total"]:
        detail = ", ".join(f"{k} {v:,}" for k, v in c["filtered"].items())
        lines.append(f"filtered {c['filtered_total']:,}: {detail}")
    split = manifest["split"]
    lines.append(f"train {c['train']:,} rows, val {c['val']:,} rows "
                 f"({split['problems']:,} problems, {split['val_problems']:,} in val)")
    tokens = manifest.get("tokens")
    if tokens:
        lines.append(format_summary(tokens["before_length_filters"], "tokens per sample (before length filters)"))
        if "recommended_max_length" in tokens:
            lines.append(f"recommended MAX_LENGTH={tokens['recommended_max_length']} "
                         f"MAX_TOKENS_PER_GPU={tokens['recommended_max_tokens_per_gpu']}")
    for name, info in manifest["outputs"].items():
        lines.append(f"wrote {info['path']} ({info['rows']:,} rows, {info['bytes'] / 1e6:.1f} MB)")
    lines.append(f"wrote {os.path.join(os.path.abspath(output_dir), 'manifest.json')}")
    for warning in manifest["warnings"]:
        lines.append(f"warning: {warning}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
        manifest = prepare_data(args.inputs, args.output_dir, config,
                                command={"argv": sys.argv[1:] if argv is None else list(argv), "cwd": os.getcwd()})
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except DataError as exc:
        rejects = os.path.join(args.output_dir, "rejects.jsonl")
        print(f"error: {exc}\nFix the row, or rerun with --on-error skip to set bad rows aside in {rejects} "
              "and continue. Nothing was written.", file=sys.stderr)
        return 1
    print(format_report(manifest, args.output_dir))
    if manifest["counts"]["train"] == 0:
        print("error: no rows left for training; see the counts above (nothing but manifest.json and rejects were written)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
