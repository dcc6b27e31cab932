"""The scan of sft/prepare_data.py: parse, validate, filter, hash and spill rows (imported; not a command).

Usage (internal; prepare_data drives it, in worker processes through sft.dataprep.workers):
    tasks = plan_tasks(files)                       # ~32 MiB line-aligned byte ranges
    scanner = Scanner(settings, answers, chat)      # one per worker process (chat: a ChatFormat or None)
    result = scanner.scan(task)                     # parse, validate, filter, hash, spill
    spill = scanner.finish()                        # the Arrow IPC bucket files it wrote (sft.dataprep.spill)

Each task's rows are parsed (sft.dataprep.jsonl_io), validated (bad rows become rejects with a
reason), turned into the messages to train on (a row's own conversation, --system-prompt,
replies less their reasoning with --answers-only) and, with --tokenizer, encoded by
sft.text.chat_format (rows the chat template refuses are rejects), passed through the
row-local filters (final answer, correctness, token limits) and written to the shuffle
buckets on disk, tagged with an order key (task index << 32 | line in task) and the seeded
hash of their problem. What needs every row in input order (dedup, the first K per problem,
the split) is decided afterwards by prepare_data from the compact per-row arrays in the
TaskResult, so any number of workers gives the same output. A task of a source that
--filters-for leaves out (`ScanTask.filtered` false) skips the quality filters: its rows are
validated, encoded and spilled, and dropped only when no answer is left after --answers-only or
when they are over --max-length (training could not use them).

A chunk takes one of two paths with identical results. The vectorised path
(`_spill_vectorised`: Arrow validates, hashes and builds the whole chunk's table) is taken
when no row-local filter needs the rows as Python values (`Scanner.vectorised`) and the chunk
has no bad line; it hands back any chunk with a row it cannot take. The row-by-row path
(`_scan_rows`: `_validate`, `_conversations`, `_filter_rows`, `_spill_items`) takes every
other chunk and finds and names every bad row.
"""

from __future__ import annotations

import collections
import hashlib
import math
import operator
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from sft.common.errors import UserError
from sft.dataprep.config import TASK_BYTES, PrepareConfig
from sft.dataprep.jsonl_io import PLACE_KEYS, BadLine, dumps_exact, exact_array, inferred_array, rows_to_table
from sft.dataprep.layouts import REASON_BAD_MESSAGES, Layouts, Sample
from sft.dataprep.readers import FileFormat, open_piece, plan_file
from sft.dataprep.spill import (
    ANSWER_COLUMN,
    CONVERSATION_COLUMN,
    GROUP_COLUMN,
    ORDER_COLUMN,
    RULE_COLUMN,
    TOKENS_COLUMN,
    TOOLS_COLUMN,
    append_line_records,
    SpillInfo,
    SpillWriter,
)

MESSAGES_COLUMN = "messages"

# Reject reasons added here (parse failures come from sft.dataprep.jsonl_io, layout ones from
# sft.dataprep.layouts).
REASON_BAD_ID = "invalid_id"
REASON_TEMPLATE = "chat_template_error"

# Row-local filter reasons, in the order they run; the first three act on every source (--filters-for).
ROW_FILTERS = (
    "truncated",
    "failed_sample_filter",
    "no_answer_after_reasoning",
    "no_final_answer",
    "no_reference_answer",
    "no_answer_found",
    "wrong_answer",
    "no_token_count",
    "too_few_tokens",
    "too_many_tokens",
    "over_max_length",
)


class ConfigurationError(UserError):
    """The data does not fit the options."""


TASK_SHIFT, POSITION_SHIFT = 44, 12
"""An order key is task << 44 | place in the task << 12 | sample: 2**20 tasks, 2**32 lines or rows per task,
4096 samples per row (sft.dataprep.layouts.MAX_SAMPLES); in input order when sorted."""
MAX_TASKS = 1 << (64 - TASK_SHIFT)


def order_keys(task: int, places, elements=None) -> np.ndarray:
    """Order keys of rows (their places in the task) and samples (their element, None or 0 for a whole row)."""
    keys = (np.uint64(task) << np.uint64(TASK_SHIFT)) | (np.asarray(places, dtype=np.uint64) << np.uint64(POSITION_SHIFT))
    if elements is not None:
        keys |= np.asarray([e or 0 for e in elements], dtype=np.uint64)
    return keys


def order_task(order) -> np.ndarray:
    return (np.asarray(order, dtype=np.uint64) >> np.uint64(TASK_SHIFT)).astype(np.int64)


def order_place(order) -> tuple[np.ndarray, np.ndarray]:
    """(place in the task, sample index) of each order key."""
    order = np.asarray(order, dtype=np.uint64)
    place = (order >> np.uint64(POSITION_SHIFT)) & np.uint64((1 << (TASK_SHIFT - POSITION_SHIFT)) - 1)
    return place, order & np.uint64((1 << POSITION_SHIFT) - 1)


@dataclass
class ScanTask:
    index: int
    file_index: int
    path: str
    start: int
    end: int
    filtered: bool = True
    """the quality filters act on its rows (its source is one of --filters-for)"""
    kind: FileFormat = FileFormat("jsonl")
    """the file's format (sft.dataprep.readers): start and end are bytes of JSON Lines, row groups of Parquet"""


@dataclass
class ScanSettings:
    """What a worker needs; picklable: the run's options, and where and into how many buckets to spill."""

    config: PrepareConfig
    spill_dir: str
    buckets: int


@dataclass
class TaskResult:
    index: int
    file_index: int
    nbytes: int = 0
    lines: int = 0
    rows_read: int = 0
    blank_lines: int = 0
    rejected: collections.Counter = field(default_factory=collections.Counter)
    filtered: collections.Counter = field(default_factory=collections.Counter)
    first_bad: BadLine | None = None
    rejects_path: str | None = None
    drops_path: str | None = None
    """rows the answer filters dropped, one JSON line each (task-relative line numbers)"""
    grading_rules: collections.Counter = field(default_factory=collections.Counter)
    grading_outcomes: collections.Counter = field(default_factory=collections.Counter)
    skipped: bool = False
    # one entry per row that reached the spill, in input order
    order: np.ndarray | None = None
    groups: np.ndarray | None = None
    prompts: np.ndarray | None = None
    digests: np.ndarray | None = None
    tokens: np.ndarray | None = None
    counted_tokens: np.ndarray | None = None
    """token counts of every row that reached the length filters (for the summary)"""
    template_flags: collections.Counter = field(default_factory=collections.Counter)
    """how the chat template placed those rows' replies (sft.text.chat_format outcomes and flags), rows per flag"""
    extra_samples: int = 0
    """samples beyond one per row: the elements of list-valued replies less one per such row"""
    layouts: collections.Counter = field(default_factory=collections.Counter)
    """rows per layout (flat, conversation, sharegpt); the vectorised path counts its rows as flat"""
    unused_fields: collections.Counter = field(default_factory=collections.Counter)
    """rows per prompt-like field left unused (sft.dataprep.layouts.PROMPT_LIKE)"""
    renamed_messages: int = 0
    replaced_columns: collections.Counter = field(default_factory=collections.Counter)
    """rows per input field this run's own column (sft_num_tokens, ...) replaced"""
    extras: np.ndarray | None = None
    """per spilled sample, a hash of its unused prompt-like fields (0: none), for the collapse check"""


def plan_tasks(files: list[str], task_bytes: int = TASK_BYTES, filtered: list[bool] | None = None,
               kinds: list[FileFormat] | None = None) -> list[ScanTask]:
    """The pieces of each file (sft.dataprep.readers.plan_file: line-aligned byte ranges of about `task_bytes`,
    groups of Parquet row groups, or the whole file); `filtered`: per file, whether the quality filters act on
    its rows (default: all); `kinds`: per file, its format (default: JSON Lines)."""
    tasks = []
    for file_index, path in enumerate(files):
        kind = kinds[file_index] if kinds is not None else FileFormat("jsonl")
        for start, end in plan_file(path, kind, task_bytes):  # an empty file gets one empty task
            tasks.append(ScanTask(len(tasks), file_index, path, start, end,
                                  True if filtered is None else filtered[file_index], kind))
    if len(tasks) >= MAX_TASKS:
        from sft.dataprep.jsonl_io import InputError

        raise InputError(f"the inputs make {len(tasks):,} tasks, more than {MAX_TASKS:,}: raise --task-mb")
    return tasks


def _seed_key(seed: int, purpose: str) -> bytes:
    return hashlib.sha256(f"verl-sft:{purpose}:{seed}".encode()).digest()[:32]


def mix64(values: np.ndarray, seed: int) -> np.ndarray:
    """A seeded 64-bit mix (splitmix64 finaliser) of uint64 values, vectorised."""
    x = np.asarray(values, dtype=np.uint64)
    salt = np.uint64((seed * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) & 0xFFFFFFFFFFFFFFFF)
    with np.errstate(over="ignore"):
        z = x + salt
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def bucket_of(order: np.ndarray, seed: int, buckets: int) -> np.ndarray:
    """The shuffle bucket of each order key: a seeded hash of (task, place, sample), the same as before samples
    existed for a whole row (task << 32 | place), so the outputs of flat inputs do not change."""
    order = np.asarray(order, dtype=np.uint64)
    place, element = order_place(order)
    with np.errstate(over="ignore"):
        legacy = ((order >> np.uint64(TASK_SHIFT)) << np.uint64(32)) | place
        legacy += element * np.uint64(0x9E3779B97F4A7C15)
    return (mix64(legacy, seed) % np.uint64(buckets)).astype(np.int64)


CACHED_TEXTS = 1 << 16
"""Texts a hash cache keeps (prompts of neighbouring rows repeat; memory stays bounded on one-task files)."""


class _HashCache:
    """Seeded 64-bit hashes of strings, remembered for the current task (solutions of one
    problem usually sit together, so most lookups hit)."""

    def __init__(self, key: bytes):
        self.key = key
        self.cache: dict[str, int] = {}

    def __call__(self, text: str) -> int:
        value = self.cache.get(text)
        if value is None:
            if len(self.cache) >= CACHED_TEXTS:  # a task that is a whole big file (gzip, a JSON array) must not grow it
                self.cache.clear()
            digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8, key=self.key).digest()
            value = self.cache[text] = int.from_bytes(digest, "little")
        return value

    def clear(self) -> None:
        self.cache.clear()


def _normalise_ws(text: str) -> str:
    return " ".join(text.split())


def _dedup_digest(prompt: str, response: str) -> bytes:
    """64-bit digest of a (prompt, response) pair with whitespace runs normalised."""
    text = _normalise_ws(prompt) + "\x00" + _normalise_ws(response)
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()


def _id_text(ident: Any) -> str:
    """An id as the text its problem hash is taken of, its type kept apart: "s" + the text for strings,
    "i" + the exact digits for numbers (so 0 and "0", 2**70 and 2**70 + 1 are distinct problems)."""
    return ("s\x1f" + ident) if isinstance(ident, str) else ("i\x1f" + str(ident))


@dataclass
class _Item:
    """A valid row on its way through the row-local filters."""

    row: dict
    line: int
    prompt: str
    """The problem's text: grouping, the split's leak check, --group-by prompt."""
    answer: str
    """The final reply less its reasoning: --require-final-answer, --answer-key, --answers."""
    dedup_prompt: str
    response: str
    messages: list[dict] | None
    """The messages to train on when they are not [system?, prompt, response] (None: built at output)."""
    tokens: int | None = None
    flags: set[str] = field(default_factory=set)
    graded: tuple[str, str] | None = None
    """(answer, rule) found by the grader in a kept solution"""
    element: int | None = None
    """the sample's index in its row's list of replies"""
    extras: int = 0
    """hash of the row's unused prompt-like fields (0: none)"""
    tools: list[dict] | None = None
    """the tools list the conversation's prompt offers (--tools-key)"""


_ID_TYPES = (pa.int64(), pa.string(), pa.null())
"""Arrow types of an id column the vectorised path takes (ints, strings or missing; floats go row by row)."""


class Scanner:
    """Runs tasks in one process and owns that process's spill files."""

    def __init__(self, settings: ScanSettings, answers: dict[str, str] | None = None, counter=None,
                 worker_id: int = 0):
        self.settings = settings
        self.cfg = s = settings.config
        self.tags = s.tags
        self.answers = answers
        self.chat = counter
        self.layouts = Layouts(s)
        self.spill = SpillWriter(settings.spill_dir, settings.buckets, worker_id)
        self.group_hash = _HashCache(_seed_key(s.seed, "group"))
        self.prompt_hash = _HashCache(_seed_key(0, "prompt"))
        self.extras_hash = _HashCache(_seed_key(0, "extras"))
        # No row-local filter needs the rows as Python values: chunks take the vectorised path.
        self.vectorised = not (s.require_final_answer or s.check_answers or counter is not None
                               or s.min_tokens or s.max_tokens or s.answers_only)

    def finish(self) -> SpillInfo:
        """Close the spill files; what they are, for the parent."""
        return self.spill.finish()

    # -- one task ---------------------------------------------------------------------
    def _validate(self, task: ScanTask, line: int, sample: Sample, key: str | None) -> BadLine | list[dict] | None:
        """A BadLine for a sample that cannot be trained; else its messages with reasoning joined (None for a
        plain pair)."""
        from sft.text.chat_format import canonical_messages, conversation_problem

        s = self.cfg
        ident = sample.row.get(s.id_key)
        if ident is not None and type(ident) not in (str, int, float):
            return BadLine(task.path, line, REASON_BAD_ID, f"field {s.id_key!r} is a {type(ident).__name__}; an id must "
                           "be a string or a number", row=sample.row, unit=task.kind.unit, element=sample.element)
        if sample.messages is None:
            return None
        problem = conversation_problem(sample.messages)
        if problem is not None:
            where = f"field {key!r}" if key else "the conversation"
            return BadLine(task.path, line, getattr(problem, "reason", REASON_BAD_MESSAGES), f"{where} {problem}",
                           row=sample.row, unit=task.kind.unit, element=sample.element)
        return canonical_messages(sample.messages, self.tags)

    def _reference(self, row: dict) -> str | None:
        from sft.text.math_answers import reference_answer

        if self.cfg.answer_key:
            value = row.get(self.cfg.answer_key)
            return reference_answer(None if value is None else str(value))
        ident = row.get(self.cfg.id_key)
        return None if ident is None or self.answers is None else self.answers.get(str(ident))

    def scan(self, task: ScanTask, progress: Callable[[int], None] | None = None,
             stop: Callable[[], bool] | None = None) -> TaskResult:
        """Scan one task: every chunk takes the vectorised path if it can, the row-by-row path otherwise."""
        result = TaskResult(task.index, task.file_index)
        arrays: dict[str, list] = collections.defaultdict(list)
        self.group_hash.clear()
        self.prompt_hash.clear()
        reader = open_piece(task.path, task.kind, task.start, task.end, self.cfg.chunk_bytes, lazy=True)
        for chunk in reader:
            result.nbytes += chunk.nbytes
            if progress is not None:
                progress(chunk.nbytes)
            spilled = not chunk.bad and self.vectorised and self._spill_vectorised(task, chunk.rows, chunk.lines, arrays)
            if spilled:
                result.layouts["flat"] += len(chunk.rows)
            else:
                chunk.settle()  # exact values before they are read one by one
                if self._scan_rows(task, chunk, result, arrays):
                    break  # a bad row under --on-error fail
            if stop is not None and stop():
                result.skipped = True
                break
        result.lines = reader.lines
        result.rows_read = reader.rows_read
        result.blank_lines = reader.blank_lines
        for name in ("order", "groups", "prompts", "tokens", "counted_tokens", "extras"):
            if arrays[name]:
                setattr(result, name, np.concatenate(arrays[name]))
        if arrays["digests"]:
            result.digests = np.frombuffer(b"".join(arrays["digests"]), dtype=np.uint64)
        return result

    # -- row by row ---------------------------------------------------------------------
    def _scan_rows(self, task: ScanTask, chunk, result: TaskResult, arrays: dict[str, list]) -> bool:
        """Normalise, validate, filter and spill a chunk row by row; True when it holds a bad row under
        --on-error fail (then `result.first_bad` is the first)."""
        bad = list(chunk.bad)
        pending: list[tuple[int, Sample, list[dict] | None, int]] = []
        for line, row in zip(chunk.lines, chunk.rows):
            out = self.layouts.samples(row, task.path, line, task.kind.unit)
            bad.extend(out.bad)
            result.layouts[out.layout] += 1
            result.extra_samples += out.expanded
            result.renamed_messages += out.renamed
            result.unused_fields.update(out.unused)
            extras = self.extras_hash(dumps_exact([row[k] for k in out.unused]).decode()) if out.unused else 0
            for reason, _ in out.dropped:  # truncation and --sample-filter act on every source
                result.filtered[reason] += 1
            key = self.layouts.conversation_key(row) if out.samples and out.layout != "flat" else None
            for sample in out.samples:
                checked = self._validate(task, line, sample, key)
                if isinstance(checked, BadLine):
                    bad.append(checked)
                else:
                    pending.append((line, sample, checked, extras))
        items = self._conversations(task, pending, result, bad) if pending else []
        if bad:
            bad.sort(key=lambda b: (b.line, b.element or 0))
            if self.cfg.on_error == "fail":
                result.first_bad = bad[0]
                return True
            for item in bad:
                result.rejected[item.reason] += 1
            result.rejects_path = append_line_records(result.rejects_path, self.settings.spill_dir, "rejects",
                                                      task.index, [item.to_json() for item in bad])
        self._filter_and_spill(task, items, result, arrays)
        return False

    # -- the common case, vectorised ------------------------------------------------------
    def _spill_vectorised(self, task: ScanTask, rows: list[dict], lines: list[int], arrays: dict[str, list]) -> bool:
        """Validate, hash and spill a chunk with no bad line, with Arrow doing the per-row work.

        Gives exactly what the row-by-row path gives (same columns, types, hashes and
        spill); returns False, having changed nothing, when any row needs that path (a
        missing, null, non-string, empty or blank prompt/response, an id that is not a
        string or an integer, any field a layout reads: sft.dataprep.layouts.Layouts.plain),
        so bad rows are still found and named there.
        """
        s = self.cfg
        if not rows:
            return True
        order_in = order_keys(task.index, lines)
        buckets = bucket_of(order_in, s.seed, self.settings.buckets)
        perm = np.argsort(buckets, kind="stable")
        # The long text columns are built in bucket order (no take of them); the others in input
        # order and then taken, since Arrow infers a struct's field order from the first values.
        ordered = list(map(rows.__getitem__, perm.tolist()))
        columns = self._vectorised_columns(rows, ordered, pa.array(perm))
        if columns is None:
            return False
        table = pa.table(columns)

        # Hashes, computed once per distinct prompt / id; the same values as the row-by-row path.
        prompts = columns[s.prompt_field].dictionary_encode()
        prompt_codes = prompts.indices.to_numpy()
        distinct_prompts = prompts.dictionary.to_pylist()
        prompt_hashes = np.array([self.prompt_hash(p) for p in distinct_prompts], dtype=np.uint64)[prompt_codes]
        groups = self._vectorised_groups(columns.get(s.id_key), distinct_prompts, prompt_codes, ordered)

        unsort = np.empty_like(perm)
        unsort[perm] = np.arange(len(perm))
        arrays["order"].append(order_in)
        arrays["groups"].append(groups[unsort])
        arrays["prompts"].append(prompt_hashes[unsort])
        arrays["extras"].append(np.zeros(len(rows), dtype=np.uint64))
        if s.dedup:
            arrays["digests"].extend(_dedup_digest(row[s.prompt_field], row[s.response_field]) for row in rows)

        self.spill.append(table, int(order_in[0]), {GROUP_COLUMN: groups, ORDER_COLUMN: order_in[perm]}, buckets[perm])
        return True

    def _vectorised_columns(self, rows: list[dict], ordered: list[dict], take: pa.Array) -> dict[str, pa.Array] | None:
        """The chunk's columns in bucket order (`ordered`: the rows in that order, `take`: the permutation),
        or None when a row needs the row-by-row path."""
        s = self.cfg
        first = rows[0]
        keys = list(first) if len(set().union(*rows)) == len(first) else list(
            dict.fromkeys(k for row in rows for k in row))
        prompt_key, response_key = s.prompt_field, s.response_field
        if prompt_key not in keys or response_key not in keys or not self.layouts.plain(keys):
            return None
        columns = {}
        for key in keys:
            text = key in (prompt_key, response_key)
            source = ordered if text else rows
            try:
                values = list(map(operator.itemgetter(key), source))
            except KeyError:  # not in every row
                values = [row.get(key) for row in source]
            if text:
                try:  # raises on any value that is not a str
                    array = pa.array(values, type=pa.string())
                except (pa.ArrowTypeError, pa.ArrowInvalid):
                    return None
                if array.null_count or not self._all_filled(array):
                    return None
            elif key == s.id_key:
                try:
                    array = pa.array(values, from_pandas=False)
                except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, ValueError):
                    return None
                if array.type not in _ID_TYPES:
                    return None
                array = array.take(take)
            else:  # mixed types, and what orjson may have read inexactly, go row by row (JsonlChunk.settle)
                array = inferred_array(values)
                if array is None or not exact_array(array):
                    return None
                array = array.take(take)
            columns[key] = array
        return columns

    def _vectorised_groups(self, ids: pa.Array | None, distinct_prompts: list[str], prompt_codes: np.ndarray,
                           ordered: list[dict]) -> np.ndarray:
        """The problem hash of each row in bucket order, each distinct id or prompt hashed once."""
        s = self.cfg
        if s.group_by == "prompt" or ids is None or ids.null_count == len(ids):
            by_prompt = np.array([self.group_hash("p\x1f" + p) for p in distinct_prompts], dtype=np.uint64)
            return by_prompt[prompt_codes]
        if ids.null_count == 0:  # all ints or all strings (_ID_TYPES)
            encoded = ids.dictionary_encode()
            by_id = np.array([self.group_hash(_id_text(v)) for v in encoded.dictionary.to_pylist()], dtype=np.uint64)
            return by_id[encoded.indices.to_numpy()]
        return np.array([self.group_hash(self._group_text(row[s.prompt_field], row.get(s.id_key))) for row in ordered],
                        dtype=np.uint64)

    def _group_text(self, prompt: str, ident: Any) -> str:
        """What a problem's hash is taken of: its id with its type (7 and "7" are two problems), or its prompt."""
        if self.cfg.group_by == "prompt" or ident is None:
            return "p\x1f" + prompt
        return _id_text(ident)

    @staticmethod
    def _all_filled(array: pa.Array) -> bool:
        """No empty or whitespace-only string (as str.isspace sees it). Only strings that do not
        start with a visible ASCII character are looked at in Python."""
        starts_visible = pc.match_substring_regex(array, "^[!-~]").to_numpy(zero_copy_only=False)
        if starts_visible.all():
            return True
        return all(v and not v.isspace() for v in array.filter(pa.array(~starts_visible)).to_pylist())

    def _conversations(self, task: ScanTask, pending: list, result: TaskResult, bad: list[BadLine]) -> list[_Item]:
        """The item of each valid sample (`pending`: line, Sample, its joined messages or None, extras hash): the
        messages to train on (--system-prompt added; replies less their reasoning with --answers-only), the
        texts the filters and hashes use, and, with --tokenizer, its exact token count. Samples the chat
        template refuses go to `bad`; samples left with no answer by --answers-only are counted as filtered."""
        from sft.text.chat_format import split_reasoning

        s = self.cfg
        items: list[_Item] = []
        system = [{"role": "system", "content": s.system_prompt}] if s.system_prompt is not None else []
        for line, sample, messages, extras in pending:
            if messages is not None:
                if system and messages[0]["role"] != "system":
                    messages = system + messages
                custom = True
            else:
                row = sample.row
                messages = system + [{"role": "user", "content": row[s.prompt_field]},
                                     {"role": "assistant", "content": row[s.response_field]}]
                custom = False
            if s.answers_only:
                replies = [split_reasoning(m["content"], self.tags)[1] if m["role"] == "assistant" else None
                           for m in messages]
                if any(m["role"] == "assistant" and not reply.strip() for m, reply in zip(messages, replies)):
                    result.filtered["no_answer_after_reasoning"] += 1
                    continue
                if any(reply is not None and reply != m["content"] for m, reply in zip(messages, replies)):
                    messages = [dict(m, content=reply) if reply is not None else m for m, reply in zip(messages, replies)]
                    custom = True
            answer = split_reasoning(messages[-1]["content"], self.tags)[1]
            item = _Item(sample.row, line, sample.prompt, answer,
                         dumps_exact(messages[:-1]).decode() if custom else sample.prompt,
                         messages[-1]["content"], messages if custom else None, element=sample.element, extras=extras,
                         tools=sample.tools)
            items.append(item)
        return self._count_tokens(task, items, bad) if self.chat is not None and items else items

    def _count_tokens(self, task: ScanTask, items: list[_Item], bad: list[BadLine]) -> list[_Item]:
        counts, results = self.chat.count([item.messages or self._default(item) for item in items],
                                          [item.tools for item in items])
        kept = []
        for item, count, outcome in zip(items, counts, results):
            if count is None:
                bad.append(BadLine(task.path, item.line, REASON_TEMPLATE,
                                   f"{outcome}; fix the row's messages, or use a model whose template accepts them",
                                   row=item.row, unit=task.kind.unit, element=item.element))
                continue
            item.tokens = count
            item.flags = outcome.flags | set(outcome.outcomes)
            kept.append(item)
        return kept

    def _default(self, item: _Item) -> list[dict]:
        s = self.cfg
        system = [{"role": "system", "content": s.system_prompt}] if s.system_prompt is not None else []
        return system + [{"role": "user", "content": item.prompt}, {"role": "assistant", "content": item.response}]

    def _grade(self, task: ScanTask, items: list[_Item], keep: list[int], result: TaskResult, drop) -> None:
        """--answer-key/--answers: keep the rows whose conclusion is the reference answer (sft.text.math_answers.grade);
        every dropped row goes to the task's drops file with what the grader found."""
        from sft.text.math_answers import grade

        reasons = {"no_reference": "no_reference_answer", "no_answer": "no_answer_found", "wrong": "wrong_answer"}
        dropped: dict[str, list[int]] = collections.defaultdict(list)
        records = []
        for i in keep:
            reference = self._reference(items[i].row)
            verdict = grade(items[i].answer, reference, items[i].prompt, strict=self.cfg.strict_grading)
            result.grading_outcomes[verdict.outcome] += 1
            result.grading_rules[verdict.rule] += 1
            if verdict.outcome == "correct":
                items[i].graded = (verdict.answer, verdict.rule)
                continue
            dropped[reasons[verdict.outcome]].append(i)
            record = {"file": task.path, PLACE_KEYS[task.kind.unit]: items[i].line, "reason": reasons[verdict.outcome],
                      "rule": verdict.rule, "answer": verdict.answer, "reference": reference, "row": items[i].row}
            if items[i].element is not None:
                record["sample"] = items[i].element
            records.append(dumps_exact(record) + b"\n")
        for reason in ("no_reference_answer", "no_answer_found", "wrong_answer"):
            drop(dropped[reason], reason)
        if records:
            result.drops_path = append_line_records(result.drops_path, self.settings.spill_dir, "drops", task.index,
                                                    records)

    def _filter_and_spill(self, task: ScanTask, items: list[_Item], result: TaskResult, arrays: dict[str, list]) -> None:
        if not items:
            return
        keep, tokens = self._filter_rows(task, items, result, arrays)
        if keep:
            counts = [tokens[i] for i in keep] if tokens is not None and self.chat is not None else None
            self._spill_items(task, [items[i] for i in keep], counts, arrays, result)

    def _filter_rows(self, task: ScanTask, items: list[_Item], result: TaskResult,
                     arrays: dict[str, list]) -> tuple[list[int], dict[int, int] | None]:
        """The row-local filters, in ROW_FILTERS' order: the indices of the items they keep, and the items'
        token counts (None without --tokenizer and token limits); drops are counted in `result`. In a task
        --filters-for leaves out, only over_max_length applies (no_answer_after_reasoning came before)."""
        s = self.cfg
        keep = list(range(len(items)))
        quality = task.filtered

        def drop(indices: list[int], reason: str) -> None:
            nonlocal keep
            if indices:
                result.filtered[reason] += len(indices)
                gone = set(indices)
                keep = [i for i in keep if i not in gone]

        if quality and s.require_final_answer:
            from sft.text.math_answers import extract_final_answer

            drop([i for i in keep if extract_final_answer(items[i].answer) is None], "no_final_answer")
        if quality and s.check_answers:
            self._grade(task, items, keep, result, drop)

        tokens: dict[int, int] | None = None
        if self.chat is not None and keep:
            counted = np.array([items[i].tokens for i in keep], dtype=np.int64)
            arrays["counted_tokens"].append(counted)
            tokens = dict(zip(keep, counted.tolist()))
            for i in keep:
                result.template_flags.update(items[i].flags)
        elif quality and (s.min_tokens or s.max_tokens) and keep:
            tokens, missing = {}, []
            for i in keep:
                value = items[i].row.get(s.num_tokens_key)
                if type(value) in (int, float) and not (isinstance(value, float) and math.isnan(value)):
                    tokens[i] = value
                else:
                    missing.append(i)
            drop(missing, "no_token_count")
        if tokens is not None:
            for reason, limit, too_far in (
                ("too_few_tokens", s.min_tokens, lambda n, lim: n < lim),
                ("too_many_tokens", s.max_tokens, lambda n, lim: n > lim),
                ("over_max_length", s.max_length, lambda n, lim: n > lim),
            ):
                if limit is not None and (quality or reason == "over_max_length"):
                    drop([i for i in keep if too_far(tokens[i], limit)], reason)
        return keep, tokens

    def _spill_items(self, task: ScanTask, kept: list[_Item], tokens: list[int] | None, arrays: dict[str, list],
                     result: TaskResult) -> None:
        """Hash the kept items and spill them (`tokens`: their chat-template token counts, with --tokenizer)."""
        s = self.cfg
        order = order_keys(task.index, [item.line for item in kept], [item.element for item in kept])
        groups = np.array([self.group_hash(self._group_text(item.prompt, item.row.get(s.id_key))) for item in kept],
                          dtype=np.uint64)
        arrays["order"].append(order)
        arrays["groups"].append(groups)
        arrays["prompts"].append(np.array([self.prompt_hash(item.prompt) for item in kept], dtype=np.uint64))
        arrays["extras"].append(np.array([item.extras for item in kept], dtype=np.uint64))
        if s.dedup:
            arrays["digests"].extend(_dedup_digest(item.dedup_prompt, item.response) for item in kept)

        table_rows = [item.row for item in kept]
        added: dict[str, Any] = {}
        if tokens is not None:
            token_array = np.array(tokens, dtype=np.int64)
            arrays["tokens"].append(token_array)
            added[TOKENS_COLUMN] = token_array
        if s.check_answers:
            graded = [item.graded or (None, None) for item in kept]  # None: a source --filters-for leaves out
            added[ANSWER_COLUMN] = pa.array([answer for answer, _ in graded], type=pa.string())
            added[RULE_COLUMN] = pa.array([rule for _, rule in graded], type=pa.string())
        for name in added:  # an input field of the same name is replaced by this run's value: counted, warned
            result.replaced_columns[name] += sum(name in row for row in table_rows)
        if any(item.messages is not None for item in kept):
            added[CONVERSATION_COLUMN] = pa.array(
                [dumps_exact(item.messages).decode() if item.messages is not None else None for item in kept],
                type=pa.string())
        if any(item.tools or _has_tool_fields(item.messages) for item in kept):
            added[TOOLS_COLUMN] = pa.array([dumps_exact(item.tools).decode() if item.tools else None for item in kept],
                                           type=pa.string())
        added.update({GROUP_COLUMN: groups, ORDER_COLUMN: order})
        self.spill.append(rows_to_table(table_rows), int(order[0]), added, bucket_of(order, s.seed, self.settings.buckets))


def _has_tool_fields(messages: list[dict] | None) -> bool:
    """Whether a conversation has tool calls or tool messages (written with the output's tool fields)."""
    return bool(messages) and any(m.get("tool_calls") or m["role"] == "tool" for m in messages)
