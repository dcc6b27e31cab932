"""Turn JSONL files of model-generated math solutions into the Parquet files verl's SFT trainer reads.

Usage:
    python sft/prepare_data.py "outputs/*.jsonl" -o data/sft
    python sft/prepare_data.py "outputs/*.jsonl" extra.jsonl -o data/sft --val-split 0.05 --seed 1 \\
        --tokenizer /models/Qwen2.5-7B-Instruct --max-length 4096 \\
        --require-final-answer --dedup --max-per-problem 4 --on-error skip
    python sft/prepare_data.py data.jsonl -o data/sft --answers answers.jsonl   # keep correct solutions only
    python sft/prepare_data.py traces.jsonl -o data/sft --tokenizer Qwen/Qwen3-8B  # see what the template trains

Writes, in the output directory (each file atomically; a stale file this run does not produce
is removed; manifest.json is written last, so its presence means the run completed):
    train.parquet    `messages` ([system?], user=prompt, assistant=response; or a row's own `messages`
                     conversation) + the input's other fields (+ `sft_num_tokens`, the exact length of
                     the training item, with --tokenizer); schema metadata `verl_sft` records the
                     chat template settings training uses (sft/verl_plugins/sft_dataset.py)
    val.parquet      same columns; absent with --val-split 0
    rejects.jsonl    with --on-error skip, one line per bad input row: file, line, reason, detail
    answer_drops.jsonl  with --answer-key/--answers, one line per row the grader dropped: file, line,
                     reason, rule, the answer it found, the reference (kept rows carry `sft_answer`
                     and `sft_answer_rule`; manifest `grading` counts rows by outcome and by rule)
    manifest.json    inputs (size, sha256), arguments, library versions, counts per stage (they
                     add up to the rows read), split and shuffle details, token summary with
                     `tokens.recommended_max_length` and `tokens.recommended_max_tokens_per_gpu`

With --tokenizer every row is encoded through the model's chat template by sft/text/chat_format.py,
the code training uses: the prompt with the generation prompt as context, the reply (reasoning
included, unless --answers-only) and its end of turn trained; rows the template refuses are
rejects. Every non-blank line is a row; each row ends in exactly one place: rejected (bad row, by
reason), filtered (by reason, in this order: no_answer_after_reasoning, no_final_answer,
no_reference_answer, no_answer_found, wrong_answer, no_token_count, too_few_tokens,
too_many_tokens, over_max_length), deduplicated,
filtered as over_max_per_problem (the first K remaining solutions of a problem in input order
are kept), train or val. The split is by problem (same id, or same prompt when a row has no
id), exactly round(val_split x problems) problems in val, chosen by a seeded hash. Rows are
shuffled uniformly at random (seeded) with bounded memory: each row goes to a hashed bucket on
disk, each bucket is permuted in memory. Parsing runs in --workers processes; the output does
not depend on their number. See sft/README.md ("Data preparation") for details.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python sft/prepare_data.py`: make `import sft.x` work
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import collections
import contextlib
import datetime
import importlib.metadata
import math
import multiprocessing
import os
import platform
import queue
import shutil
import tempfile
import threading
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from sft.dataprep import scan as data_scan
from sft.dataprep.scan import (
    CONVERSATION_COLUMN,
    GRADING_COLUMNS,
    GROUP_COLUMN,
    INTERNAL_COLUMNS,
    MESSAGES_COLUMN,
    ORDER_COLUMN,
    ROW_FILTERS,
    TOKENS_COLUMN,
    ConfigurationError,
    ScanSettings,
    Scanner,
    SpillInfo,
    TaskResult,
    plan_tasks,
)
from sft.dataprep.jsonl_io import (
    DEFAULT_CHUNK_BYTES,
    BadLine,
    InputError,
    JsonlReader,
    conform_table,
    ensure_writable_dir,
    expand_inputs,
    file_sha256,
    widen_type,
    write_json_atomic,
)

MANIFEST_VERSION = 1
MAX_BUCKETS = 512
FILTER_ORDER = ROW_FILTERS + ("over_max_per_problem",)
STAGE_ORDER = ["read", "rejected", *ROW_FILTERS, "deduplicated", "over_max_per_problem", "train", "val"]
SLICE_BYTES = 16 << 20
"""Rows are taken, templated and written in slices of about this much text (bounds memory)."""


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
    strict_grading: bool = False
    on_error: str = "fail"
    tokenizer: str | None = None
    max_length: int | None = None
    messages_key: str = "messages"
    answers_only: bool = False
    reasoning_tags: str = "<think>,</think>"
    chat_template_kwargs: dict | None = None
    compression: str = "snappy"
    workers: int = 0
    """0 = one per CPU core."""
    shuffle_buffer_mb: float = 128.0
    chunk_mb: float = DEFAULT_CHUNK_BYTES / (1 << 20)
    task_mb: float = 0.0
    """0 = auto: 32 MiB, or 0.5 MiB with --answer-key/--answers (grading costs milliseconds a row, so
    smaller tasks keep every worker busy on inputs of a few tens of MiB)."""
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
                "--max-length needs --tokenizer: the limit applies to the tokens training sees through the chat template"
            )
        if self.strict_grading and not (self.answer_key or self.answers):
            raise InputError("--strict-grading needs --answer-key or --answers: it chooses how correctness is graded")
        if self.answer_key and self.answers:
            raise InputError("use either --answer-key (a field of each row) or --answers FILE, not both")
        if min(self.shuffle_buffer_mb, self.chunk_mb) <= 0 or self.task_mb < 0:
            raise InputError("--shuffle-buffer-mb and --chunk-mb must be positive, --task-mb positive or 0 (auto)")
        if self.workers < 0:
            raise InputError(f"--workers must be 0 (one per core) or more, got {self.workers}")
        if self.compression not in ("snappy", "zstd", "lz4", "gzip", "none"):
            raise InputError(f"--compression must be snappy, zstd, lz4, gzip or none, got {self.compression!r}")
        tags = self.reasoning_tags.split(",")
        if len(tags) != 2 or not all(t.strip() for t in tags):
            raise InputError(f"--reasoning-tags must be OPEN,CLOSE (two non-empty tags), got {self.reasoning_tags!r}")
        if isinstance(self.chat_template_kwargs, str):
            try:
                self.chat_template_kwargs = orjson.loads(self.chat_template_kwargs)
            except orjson.JSONDecodeError as exc:
                raise InputError(f"--chat-template-kwargs must be a JSON object, e.g. '{{\"enable_thinking\": false}}': "
                                 f"{exc}") from None
        if self.chat_template_kwargs is not None and not isinstance(self.chat_template_kwargs, dict):
            raise InputError("--chat-template-kwargs must be a JSON object, e.g. '{\"enable_thinking\": false}'")
        if self.chat_template_kwargs and "add_generation_prompt" in self.chat_template_kwargs:
            raise InputError("--chat-template-kwargs cannot set add_generation_prompt: every trained turn's prompt is "
                             "rendered with it on (the inference prompt), the conversation with it off")
        if self.messages_key in (self.prompt_key, self.response_key):
            raise InputError(f"--messages-key {self.messages_key!r} is also --prompt-key or --response-key")

    @property
    def check_answers(self) -> bool:
        return bool(self.answer_key or self.answers)

    @property
    def task_bytes(self) -> int:
        if self.task_mb:
            return int(self.task_mb * (1 << 20))
        return data_scan.HEAVY_TASK_BYTES if self.check_answers else data_scan.TASK_BYTES

    @property
    def tags(self) -> tuple[str, str]:
        opening, closing = (t.strip() for t in self.reasoning_tags.split(","))
        return opening, closing

    def chat_options(self) -> dict:
        """ChatFormat keyword arguments (what training must use too)."""
        return {"template_kwargs": self.chat_template_kwargs or {}, "reasoning_tags": self.tags}


def _versions(names: Iterable[str]) -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def load_answers(path: str, id_key: str) -> dict[str, str]:
    """Reference answers by id (as text) from a JSON object {id: answer}, a JSON list of
    {id_key: ..., "answer": ...} objects, or a JSONL file of such objects."""
    from sft.text.math_answers import reference_answer

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
        try:
            data = orjson.loads(Path(path).read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
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


MESSAGES_TYPE = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))


def build_messages(prompts: pa.Array, responses: pa.Array, system_prompt: str | None) -> pa.Array:
    """list<struct<role, content>> per row: [system?], user=prompt, assistant=response."""
    n = len(prompts)
    parts, roles = [prompts, responses], ["user", "assistant"]
    if system_prompt is not None:
        parts.insert(0, pa.array([system_prompt] * n, type=pa.string()))
        roles.insert(0, "system")
    width = len(parts)
    order = (np.arange(n)[:, None] + np.arange(width)[None, :] * n).ravel()
    contents = pa.concat_arrays(parts).take(pa.array(order))
    role_array = pa.array(roles, type=pa.string()).take(pa.array(np.tile(np.arange(width), n)))
    items = pa.StructArray.from_arrays([role_array, contents], names=["role", "content"])
    offsets = pa.array(np.arange(0, width * n + 1, width, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, items)


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
        self.warnings: list[str] = []
        self.answers: dict[str, str] | None = None
        self.counter = None
        self.template_flags: collections.Counter = collections.Counter()

    # -- setup ------------------------------------------------------------------------
    def _load_tokenizer(self) -> None:
        from sft.text.chat_format import ChatFormat, ConversationError, TemplateError, load_tokenizer

        cfg = self.config
        try:
            self.counter = ChatFormat(load_tokenizer(cfg.tokenizer), name=cfg.tokenizer, **cfg.chat_options())
            # The shape of every prompt/response row, with this run's system prompt: refused here, it is
            # refused for all of them.
            probe = ([{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt is not None else []) + [
                {"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4"}]
            self.counter.segments(probe)
        except (TemplateError, ConversationError) as exc:
            hint = (" Drop --system-prompt (the template has no system role) or put the instructions into the prompts."
                    if cfg.system_prompt is not None and "system" in str(exc).lower() else "")
            raise InputError(f"{exc}.{hint}") from None
        self._check_text_encoder()

    def _check_text_encoder(self, rows: int = 256) -> None:
        """Compare the fast text encoder with the tokenizer library on the first rows' texts before any
        worker starts, so every worker (and training, which reads the choice from the Parquet files)
        uses the same one."""
        from sft.text.chat_format import ConversationError, TemplateError, canonical_messages

        cfg = self.config
        system = [{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt is not None else []
        texts: list[str] = []
        seen = 0
        for path in self.files:
            for chunk in JsonlReader(path, chunk_bytes=1 << 20):
                for row in chunk.rows:
                    try:
                        if cfg.messages_key in row:
                            messages = canonical_messages(row[cfg.messages_key], cfg.tags)
                        elif isinstance(row.get(cfg.prompt_key), str) and isinstance(row.get(cfg.response_key), str):
                            messages = system + [{"role": "user", "content": row[cfg.prompt_key]},
                                                 {"role": "assistant", "content": row[cfg.response_key]}]
                        else:
                            continue
                        texts.extend(segment.text for segment in self.counter.segments(messages).segments)
                    except (TemplateError, ConversationError, KeyError, TypeError):
                        continue
                    seen += 1
                    if seen >= rows:
                        break
                break  # the first chunk of each file is plenty
            if seen >= rows:
                break
        if not self.counter.text.check(texts):
            self.warnings.append("tiktoken's token ids differed from the tokenizer library's on a real sample, so every "
                                 "text was encoded by the library (exact, slower)")

    def _settings(self, spill_dir: Path, buckets: int) -> ScanSettings:
        c = self.config
        return ScanSettings(
            spill_dir=str(spill_dir), buckets=buckets, seed=c.seed, prompt_key=c.prompt_key,
            response_key=c.response_key, id_key=c.id_key, group_by=c.group_by, system_prompt=c.system_prompt,
            require_final_answer=c.require_final_answer, answer_key=c.answer_key, check_answers=c.check_answers,
            min_tokens=c.min_tokens, max_tokens=c.max_tokens, max_length=c.max_length,
            num_tokens_key=c.num_tokens_key, dedup=c.dedup, on_error=c.on_error,
            chunk_bytes=int(c.chunk_mb * (1 << 20)), messages_key=c.messages_key, answers_only=c.answers_only,
            strict_grading=c.strict_grading,
            reasoning_tags=c.tags,
        )

    # -- pass 1: scan in parallel ---------------------------------------------------------
    def _scan_in_process(self, tasks, settings, progress) -> tuple[list[TaskResult], list[SpillInfo]]:
        scanner = Scanner(settings, self.answers, self.counter)
        results = []
        for task in tasks:
            result = scanner.scan(task, progress.update)
            results.append(result)
            if result.first_bad is not None:
                break
        return results, [scanner.finish()]

    def _scan_in_workers(self, tasks, settings, workers, progress):
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        forked = context.get_start_method() == "fork"
        saved_parallelism = os.environ.get("TOKENIZERS_PARALLELISM")
        if forked:  # workers inherit the loaded tokenizer and answers instead of loading them again
            data_scan._INHERITED.update(counter=self.counter, answers=self.answers)
            # one core per worker; set before forking, which is when tokenizers checks it
            os.environ["TOKENIZERS_PARALLELISM"] = "false"
            pa.array(["x"])  # pyarrow imports pandas on its first conversion: once here, not in every worker
        task_queue, result_queue = context.Queue(), context.Queue()
        stop_after = context.Value("q", 1 << 62)
        processes = [
            context.Process(
                target=data_scan.worker_main, daemon=True, name=f"prepare-data-{i}",
                args=(i, settings, None if forked or not self.config.tokenizer else self._worker_tokenizer(),
                      None if forked else self.answers,
                      task_queue, result_queue, stop_after),
            )
            for i in range(workers)
        ]
        try:
            for process in processes:
                process.start()
        finally:
            data_scan._INHERITED.clear()
            if saved_parallelism is None:
                os.environ.pop("TOKENIZERS_PARALLELISM", None)
            else:
                os.environ["TOKENIZERS_PARALLELISM"] = saved_parallelism
        for task in tasks:
            task_queue.put(task)
        for _ in processes:
            task_queue.put(None)
        results, spills, done = [], [], 0
        try:
            while done < len(processes):
                try:
                    message = result_queue.get(timeout=1.0)
                except queue.Empty:
                    dead = [p for p in processes if p.exitcode not in (None, 0)]
                    if dead:
                        raise RuntimeError(f"worker {dead[0].name} died (exit code {dead[0].exitcode}); "
                                           "out of memory? try fewer --workers") from None
                    continue
                kind = message[0]
                if kind == "progress":
                    progress.update(message[1])
                elif kind == "task":
                    result = message[1]
                    results.append(result)
                    if result.first_bad is not None:
                        with stop_after.get_lock():
                            stop_after.value = min(stop_after.value, result.index)
                elif kind == "done":
                    spills.append(message[2])
                    done += 1
                elif kind == "config":
                    raise ConfigurationError(message[2])
                else:
                    raise RuntimeError(f"worker {message[1]} failed:\n{message[2]}")
        finally:
            for process in processes:
                if process.is_alive() and done < len(processes):
                    process.terminate()
                process.join(timeout=10)
        results.sort(key=lambda r: r.index)
        return results, spills

    def _worker_tokenizer(self) -> tuple[str, dict]:
        """What a worker started by spawn needs to build the same ChatFormat."""
        options = self.config.chat_options()
        if self.counter.text.fast is None:
            options["fast_text"] = False
        return self.config.tokenizer, options

    def _hash_inputs(self) -> tuple[threading.Thread, dict[str, str]]:
        digests: dict[str, str] = {}

        def work() -> None:
            # Below the write pass's threads in priority: this hash has time to spare, the
            # train writer is what the run waits for (Linux: nice applies per thread).
            with contextlib.suppress(AttributeError, OSError):
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
            for path in self.files:
                digests[path] = file_sha256(path)  # hashlib releases the GIL

        thread = threading.Thread(target=work, name="sha256", daemon=True)
        thread.start()
        return thread, digests

    # -- between the passes: what needs all rows in input order -----------------------------
    def _absolute_line(self, results: list[TaskResult], index: int, relative: int) -> int:
        file_index = results[index].file_index
        before = sum(r.lines for r in results[:index] if r.file_index == file_index)
        return before + relative

    def _write_rejects(self, results: list[TaskResult], path: Path, attribute: str = "rejects_path") -> int:
        """The tasks' line records (rejects, or answer drops) in one file, with line numbers in their input file."""
        count = 0
        with open(path, "wb") as out:
            for position, result in enumerate(results):
                if not getattr(result, attribute):
                    continue
                offset = self._absolute_line(results, position, 0)
                with open(getattr(result, attribute), "rb") as source:
                    for line in source:
                        record = orjson.loads(line)
                        record["line"] += offset
                        out.write(orjson.dumps(record) + b"\n")
                        count += 1
        return count

    def _global_filters(self, results: list[TaskResult]) -> None:
        cfg = self.config

        def gather(name: str, dtype) -> np.ndarray:
            parts = [getattr(r, name) for r in results if getattr(r, name) is not None]
            return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)

        order, groups, prompts = gather("order", np.uint64), gather("groups", np.uint64), gather("prompts", np.uint64)
        tokens = gather("tokens", np.int64) if self.counter is not None else None
        self.counted_tokens = gather("counted_tokens", np.int64)
        dropped = np.zeros(len(order), dtype=bool)
        if cfg.dedup and len(order):
            # 64-bit digests of the normalised (prompt, response): a false match needs ~4e9 rows
            _, first = np.unique(gather("digests", np.uint64), return_index=True)
            duplicate = np.ones(len(order), dtype=bool)
            duplicate[first] = False
            self.counts.deduplicated = int(duplicate.sum())
            dropped |= duplicate
        if cfg.max_per_problem is not None and len(order):
            alive = np.flatnonzero(~dropped)
            by_group = alive[np.argsort(groups[alive], kind="stable")]  # input order within each group
            sorted_groups = groups[by_group]
            starts = np.r_[0, np.flatnonzero(sorted_groups[1:] != sorted_groups[:-1]) + 1]
            rank = np.arange(len(by_group)) - np.repeat(starts, np.diff(np.r_[starts, len(by_group)]))
            over = by_group[rank >= cfg.max_per_problem]
            self.counts.filtered["over_max_per_problem"] = int(len(over))
            dropped[over] = True
        self.dropped_order = np.sort(order[dropped])
        keep = ~dropped
        self.kept_groups, self.kept_prompts = groups[keep], prompts[keep]
        self.kept_tokens = tokens[keep] if tokens is not None else None

    def _split(self) -> dict:
        cfg = self.config
        groups, prompts = self.kept_groups, self.kept_prompts
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
        self.threshold = unique[val_groups] if val_groups else None
        self.is_val = groups < self.threshold if val_groups else np.zeros(len(groups), dtype=bool)
        info = {
            "by": "prompt" if cfg.group_by == "prompt" else f"{cfg.id_key} (the prompt for rows without {cfg.id_key})",
            "problems": int(n_groups),
            "val_problems": int(val_groups),
            "seed": cfg.seed,
        }
        shared = np.intersect1d(prompts[self.is_val], prompts[~self.is_val]) if val_groups else np.zeros(0)
        info["val_prompts_also_in_train"] = int(len(shared))
        if len(shared):
            self.warnings.append(
                f"{len(shared)} prompt(s) appear in both train and val under different ids: the same problem has "
                "several ids; pass --group-by prompt for a split by prompt text"
            )
        if cfg.group_by == "id" and len(groups):
            pair_keys = data_scan.mix64(groups ^ data_scan.mix64(prompts, 1), 2)  # one key per (id, prompt)
            first_pair = np.unique(pair_keys, return_index=True)[1]
            _, per_group = np.unique(groups[first_pair], return_counts=True)
            several = int((per_group > 1).sum())
            info["ids_with_several_prompts"] = several
            if several:
                self.warnings.append(
                    f"{several} id(s) have more than one distinct prompt (ids may restart in every file); their rows "
                    "are kept on one side (no leak) and --max-per-problem counts them as one problem. "
                    "Pass --group-by prompt if ids are not problem ids"
                )
        return info

    # -- pass 2: shuffle and write ------------------------------------------------------
    def _encoding_record(self) -> dict:
        """How the messages are to be encoded; written into each Parquet file's schema metadata
        (chat_format.PARQUET_METADATA_KEY) so that training encodes them as this run counted them."""
        cfg = self.config
        record = {"version": 1, "template_kwargs": cfg.chat_template_kwargs or {}, "reasoning_tags": list(cfg.tags),
                  "answers_only": cfg.answers_only}
        if self.counter is not None:
            described = self.counter.describe()
            record.update(tokenizer=described["tokenizer"], chat_template_sha256=described["chat_template_sha256"],
                          text_encoder=described["text_encoder"])
        return record

    def _output_schema(self) -> pa.Schema:
        from sft.text.chat_format import PARQUET_METADATA_KEY

        fields = [pa.field(MESSAGES_COLUMN, MESSAGES_TYPE)]
        fields += [f for f in self.spill_schema if f.name not in INTERNAL_COLUMNS]
        return pa.schema(fields, metadata={PARQUET_METADATA_KEY: orjson.dumps(self._encoding_record())})

    def _to_output(self, table: pa.Table, schema: pa.Schema) -> pa.Table:
        cfg = self.config
        names = table.column_names
        conversations = table.column(CONVERSATION_COLUMN) if CONVERSATION_COLUMN in names else None
        if conversations is not None and conversations.null_count < table.num_rows:
            messages = self._mixed_messages(table, conversations)
        else:
            prompts = table.column(cfg.prompt_key).combine_chunks()
            responses = table.column(cfg.response_key).combine_chunks()
            messages = build_messages(prompts, responses, cfg.system_prompt)
        columns = [messages] + [table.column(name) for name in schema.names[1:]]
        return pa.Table.from_arrays(columns, schema=schema)

    def _mixed_messages(self, table: pa.Table, conversations: pa.ChunkedArray) -> pa.Array:
        """Messages of a slice holding conversation rows (stored as JSON) and maybe prompt/response rows."""
        cfg = self.config
        names = table.column_names
        n = table.num_rows
        prompts = table.column(cfg.prompt_key).to_pylist() if cfg.prompt_key in names else [None] * n
        responses = table.column(cfg.response_key).to_pylist() if cfg.response_key in names else [None] * n
        system = [{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt is not None else []
        rows = [
            orjson.loads(text) if text is not None else
            system + [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
            for text, prompt, response in zip(conversations.to_pylist(), prompts, responses)
        ]
        return pa.array(rows, type=MESSAGES_TYPE)

    def _read_bucket(self, bucket: int) -> pa.Table:
        tables = []
        for spill in self.spills:
            for path in spill.files.get(bucket, []):
                with pa.memory_map(path) as source:
                    tables.append(conform_table(ipc.open_stream(source).read_all(), self.spill_schema))
        if not tables:
            return self.spill_schema.empty_table()
        # One contiguous copy: taking rows from a many-chunk column would concatenate it on every take.
        return pa.concat_tables(tables).combine_chunks()

    def _pass2(self, tmp_dir: Path, progress_factory) -> dict[str, Path]:
        cfg = self.config
        schema = self._output_schema()
        outputs = {"train": tmp_dir / "train.parquet"}
        if self.threshold is not None:
            outputs["val"] = tmp_dir / "val.parquet"
        compression = None if cfg.compression == "none" else cfg.compression
        text = {f"{MESSAGES_COLUMN}.list.element.content", cfg.prompt_key, cfg.response_key}
        # Dictionary encoding and min/max statistics help small repeated values (ids, roles),
        # not long unique texts: there they only cost time (about 6% of the write).
        indexed = [path for path in _leaf_paths(schema) if path not in text]
        writers = {name: _WriterThread(path, schema, compression, indexed) for name, path in outputs.items()}
        progress = progress_factory(total=self.buckets, desc="shuffle+write", unit="bucket")
        try:
            for bucket in range(self.buckets):
                table = self._read_bucket(bucket)
                if table.num_rows:
                    self._emit_bucket(bucket, table, schema, writers)
                del table
                for spill in self.spills:
                    for path in spill.files.get(bucket, []):
                        os.unlink(path)
                progress.update(1)
        finally:
            progress.close()
            errors = [error for error in (writer.close() for writer in writers.values()) if error is not None]
        if errors:
            raise errors[0]
        return outputs

    def _emit_bucket(self, bucket: int, table: pa.Table, schema: pa.Schema, writers: dict) -> None:
        cfg = self.config
        keys = table.column(ORDER_COLUMN).to_numpy()
        rows = np.flatnonzero(~np.isin(keys, self.dropped_order, assume_unique=True)) if len(self.dropped_order) \
            else np.arange(len(keys))
        rows = rows[np.argsort(keys[rows], kind="stable")]  # input order, whichever worker wrote what
        rows = rows[np.random.default_rng([cfg.seed, bucket]).permutation(len(rows))]
        groups = table.column(GROUP_COLUMN).to_numpy()[rows]
        is_val = groups < self.threshold if self.threshold is not None else np.zeros(len(rows), dtype=bool)
        per_slice = max(1, int(SLICE_BYTES * table.num_rows / max(1, table.nbytes)))
        for name, selected in (("train", rows[~is_val]), ("val", rows[is_val])):
            for start in range(0, len(selected), per_slice):
                part = table.take(pa.array(selected[start : start + per_slice]))
                writers[name].put(self._to_output(part, schema))
            setattr(self.counts, name, getattr(self.counts, name) + len(selected))

    # -- tokens -----------------------------------------------------------------------
    def _token_summary(self) -> dict | None:
        if self.counter is None:
            return None
        from sft.text.chat_tokens import length_summary, recommend

        cfg = self.config
        kept = self.kept_tokens
        summary: dict[str, Any] = {
            "tokenizer": os.path.abspath(cfg.tokenizer) if os.path.exists(cfg.tokenizer) else cfg.tokenizer,
            "counted_as": "sft.text.chat_format, the encoding training uses (sft/verl_plugins/sft_dataset.py): the prompt as the chat "
            "template renders it with the generation prompt, then every reply in the template's format with its "
            "end of turn",
            "text_encoder": self.counter.text.text_encoder,
            "max_length": cfg.max_length,
            "before_length_filters": length_summary(self.counted_tokens, cfg.max_length),
            "kept": length_summary(kept),
            "train": length_summary(kept[~self.is_val]),
            "val": length_summary(kept[self.is_val]),
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

    def _template_summary(self, train_file: Path | None) -> dict | None:
        """What the chat template did to the replies, with the first training sample as an example."""
        if self.counter is None:
            return None
        from sft.text.chat_format import FLAG_EXPLANATIONS, OUTCOME_INSERTED, OUTCOME_TEMPLATE, OUTCOME_WHITESPACE

        outcomes = (OUTCOME_TEMPLATE, OUTCOME_WHITESPACE, OUTCOME_INSERTED)
        summary: dict[str, Any] = dict(self.counter.describe())
        summary["answers_only"] = self.config.answers_only
        summary["replies"] = {name: self.template_flags[name] for name in outcomes if self.template_flags[name]}
        summary["rows_by_flag"] = {
            flag: {"rows": count, "meaning": FLAG_EXPLANATIONS.get(flag, flag)}
            for flag, count in sorted(self.template_flags.items()) if flag not in (OUTCOME_TEMPLATE,)
            and (flag not in outcomes or flag in FLAG_EXPLANATIONS)
        }
        if train_file is not None and self.counts.train:
            first = pq.ParquetFile(train_file).read_row_group(0, columns=[MESSAGES_COLUMN]).slice(0, 1)
            messages = first.column(MESSAGES_COLUMN).to_pylist()[0]
            summary["example"] = {"messages_roles": [m["role"] for m in messages],
                                  "segments": self.counter.explain(messages).splitlines()}
        for flag in ("prompt_opens_reasoning_reply_never_closes_it", "reasoning_never_closed", "no_end_of_turn_token"):
            if self.template_flags[flag]:
                self.warnings.append(f"{self.template_flags[flag]:,} row(s): {FLAG_EXPLANATIONS[flag]}")
        return summary

    def _grading_summary(self, results: list[TaskResult]) -> dict:
        """How --answer-key/--answers graded the rows that reached the answer filters: by outcome and by rule."""
        from sft.text.math_answers import RULES

        outcomes: collections.Counter = collections.Counter()
        rules: collections.Counter = collections.Counter()
        for result in results:
            outcomes.update(result.grading_outcomes)
            rules.update(result.grading_rules)
        order = ["strict", *RULES, "none"]
        return {
            "grader": "strict: the standard final-answer forms only (\\boxed{}, 'the answer is', ####)"
            if self.config.strict_grading else "lenient: the solution's conclusion wherever it states it (sft.text.math_answers.find_conclusion)",
            "outcomes": {k: outcomes[k] for k in ("correct", "wrong", "no_answer", "no_reference") if outcomes[k]},
            "rules": {k: rules[k] for k in order if rules[k]},
            "dropped_rows_in": "answer_drops.jsonl (file, line, reason, rule, the answer found, the reference, the row)",
        }

    # -- everything -------------------------------------------------------------------
    def run(self, command: dict) -> dict:
        from tqdm import tqdm

        cfg = self.config
        out = self.output_dir
        total_bytes = sum(os.path.getsize(p) for p in self.files)
        self.buckets = int(min(MAX_BUCKETS, max(1, math.ceil(total_bytes / (cfg.shuffle_buffer_mb * (1 << 20))))))
        if cfg.check_answers and cfg.answers:
            self.answers = load_answers(cfg.answers, cfg.id_key)
        if cfg.check_answers:  # forked workers inherit the imported, exercised grader
            from sft.text.math_answers import warm_up

            warm_up()
        if cfg.tokenizer:
            self._load_tokenizer()
        tasks = plan_tasks(self.files, int(cfg.task_bytes))
        workers = min(cfg.workers or _cpu_count(), len(tasks))

        def progress_factory(**kwargs):
            return tqdm(disable=not cfg.progress, dynamic_ncols=True, mininterval=1.0, **kwargs)

        tmp_dir = Path(tempfile.mkdtemp(prefix=".prepare_data-", dir=out))
        try:
            settings = self._settings(tmp_dir, self.buckets)
            progress = _LazyBar(total_bytes, cfg.progress)
            try:
                if workers > 1:  # the workers fork before this process starts any thread
                    scan = self._scan_in_workers(tasks, settings, workers, progress)
                else:
                    scan = self._scan_in_process(tasks, settings, progress)
            finally:
                progress.close()
            results, self.spills = scan
            first_bad = next((r for r in results if r.first_bad is not None), None)
            if first_bad is not None:
                bad = first_bad.first_bad
                position = results.index(first_bad)
                bad.line = self._absolute_line(results, position, bad.line)
                raise DataError(bad)
            for result in results:
                self.counts.read += result.rows_read
                self.counts.blank_lines += result.blank_lines
                self.counts.rejected.update(result.rejected)
                self.counts.filtered.update(result.filtered)
                self.template_flags.update(result.template_flags)
            # sha256 of the inputs runs beside the write pass, which leaves a core partly idle
            # (the scan keeps every core busy)
            hash_thread, digests = self._hash_inputs()
            self.spill_schema = merge_spill_schemas(self.spills)
            self._global_filters(results)
            split = self._split()
            produced: dict[str, Path] = {}
            if len(self.kept_groups):
                produced = self._pass2(tmp_dir, progress_factory)
            tokens = self._token_summary()
            template = self._template_summary(produced.get("train"))
            if not self.counts.balanced():  # a bug, never bad input: every row must be accounted for
                raise RuntimeError(f"internal error: stage counts do not add up: {self.counts.as_dict()}")
            rejects_count = self._write_rejects(results, tmp_dir / "rejects.jsonl") if cfg.on_error == "skip" else 0
            if rejects_count:
                produced["rejects"] = tmp_dir / "rejects.jsonl"
            drops_count = self._write_rejects(results, tmp_dir / "answer_drops.jsonl", "drops_path") \
                if cfg.check_answers else 0
            if drops_count:
                produced["answer_drops"] = tmp_dir / "answer_drops.jsonl"
            hash_thread.join()

            inputs = []
            for file_index, path in enumerate(self.files):
                mine = [r for r in results if r.file_index == file_index]
                inputs.append({
                    "path": os.path.abspath(path),
                    "bytes": os.path.getsize(path),
                    "sha256": digests[path],
                    "rows": sum(r.rows_read for r in mine),
                    "blank_lines": sum(r.blank_lines for r in mine),
                    "rejected": sum(sum(r.rejected.values()) for r in mine),
                })
            manifest: dict[str, Any] = {
                "manifest_version": MANIFEST_VERSION,
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "command": command,
                "config": asdict(cfg),
                "inputs": inputs,
                "versions": _versions(
                    ["pyarrow", "numpy", "orjson"]
                    + (["transformers", "tokenizers"] if cfg.tokenizer else [])
                    + (["math-verify"] if cfg.require_final_answer or cfg.check_answers else [])
                    + ["verl"]
                ),
                "stage_order": STAGE_ORDER,
                "counts": self.counts.as_dict(),
                "split": split,
                "shuffle": {
                    "buckets": self.buckets,
                    "guarantee": "a uniform random permutation for the seed: each row goes to a bucket by a seeded "
                    "hash of its position in the input, each bucket is permuted with a seeded RNG; the same inputs, "
                    "seed and --shuffle-buffer-mb give the same order",
                },
                "workers": workers,
                "outputs": {},
                "warnings": self.warnings,
            }
            if tokens is not None:
                manifest["tokens"] = tokens
            if template is not None:
                manifest["chat_template"] = template
            if cfg.check_answers:
                manifest["grading"] = self._grading_summary(results)

            # Publish: drop the old manifest first so a crash mid-publish never leaves a manifest
            # describing files from two different runs; then the data files; the manifest last.
            with contextlib.suppress(FileNotFoundError):
                (out / "manifest.json").unlink()
            if self.counts.train == 0:
                produced.pop("train", None)
                produced.pop("val", None)
            finals = {"train": out / "train.parquet", "val": out / "val.parquet", "rejects": out / "rejects.jsonl",
                      "answer_drops": out / "answer_drops.jsonl"}
            for name, final in finals.items():
                if name in produced:
                    os.replace(produced[name], final)
                    rows = {"rejects": rejects_count, "answer_drops": drops_count}.get(name) \
                        if name in ("rejects", "answer_drops") else getattr(self.counts, name)
                    manifest["outputs"][name] = {"path": str(final.resolve()), "bytes": final.stat().st_size, "rows": rows}
                else:
                    with contextlib.suppress(FileNotFoundError):
                        final.unlink()
            write_json_atomic(out / "manifest.json", manifest)
            return manifest
        except ConfigurationError as exc:
            raise InputError(str(exc)) from exc
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)


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


class _WriterThread:
    """A Parquet file written on its own thread, so compressing one slice overlaps preparing the
    next (and train overlaps val): Arrow's C++ code releases the GIL."""

    def __init__(self, path: Path, schema: pa.Schema, compression: str | None, indexed: list[str]):
        self.writer = pq.ParquetWriter(str(path), schema, compression=compression, use_dictionary=indexed,
                                       write_statistics=indexed)
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
        self.writer.close()
        return self.error


class _LazyBar:
    """A tqdm bar created on its first update: with worker processes that is after they forked
    (tqdm starts a monitor thread, and forking a process that has threads is unsafe)."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled, self.bar = total, enabled, None

    def update(self, n: int) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, desc="reading", unit="B", unit_scale=True, disable=not self.enabled,
                            dynamic_ncols=True, mininterval=1.0)
        self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def prepare_data(inputs: list[str], output_dir: str | os.PathLike, config: PrepareConfig | None = None,
                 command: dict | None = None) -> dict:
    """Run the whole preparation; returns the manifest (also written to output_dir/manifest.json).

    Raises InputError for unusable inputs, options or output directory, and DataError for the
    first bad row under on_error="fail"; nothing is written to output_dir in either case.
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
                       help="input per shuffle bucket, in MiB: each bucket is held in memory once while it is written")
    fields = parser.add_argument_group("fields")
    fields.add_argument("--prompt-key", default=defaults.prompt_key, help="field with the problem text (user message)")
    fields.add_argument("--response-key", default=defaults.response_key, help="field with the solution (assistant message)")
    fields.add_argument("--id-key", default=defaults.id_key, help="field with the problem id")
    fields.add_argument("--system-prompt", default=None,
                        help="system message to put first in every sample that has none (unset: none)")
    fields.add_argument("--messages-key", default=defaults.messages_key,
                        help="field of rows that are whole conversations: an OpenAI-style list of {role, content"
                        "[, reasoning_content]}; every assistant turn is trained. Rows without it use --prompt-key "
                        "and --response-key")
    chat = parser.add_argument_group("chat template and reasoning")
    chat.add_argument("--answers-only", action="store_true",
                      help="remove the reasoning (everything up to the closing tag of --reasoning-tags) from every "
                      "reply and train on the answers only; default: the reasoning is trained, whatever the template "
                      "does with it")
    chat.add_argument("--reasoning-tags", default=defaults.reasoning_tags, metavar="OPEN,CLOSE",
                      help="the tags that delimit reasoning in replies")
    chat.add_argument("--chat-template-kwargs", default=None, metavar="JSON",
                      help="extra variables for the chat template, recorded for training too, "
                      "e.g. '{\"enable_thinking\": false}' for Qwen3 replies without reasoning")
    filters = parser.add_argument_group("quality filters (all off by default; every drop is counted)")
    filters.add_argument("--dedup", action="store_true",
                         help="drop exact duplicate (prompt, response) pairs after whitespace normalisation; the first is kept")
    filters.add_argument("--require-final-answer", action="store_true",
                         help="drop solutions that state no final answer in a standard form (\\boxed{...}, 'the answer is ...', "
                         "'#### ...'): a format check, not a correctness one")
    filters.add_argument("--answer-key", default=None,
                         help="field holding the reference answer (bare or a full solution); keeps only solutions whose "
                         "conclusion is that answer (math-verify equivalence); dropped rows go to answer_drops.jsonl")
    filters.add_argument("--answers", default=None, metavar="FILE",
                         help="reference answers by id: .json {id: answer} or .jsonl rows with the id field and 'answer'; "
                         "keeps only correct solutions (math-verify)")
    filters.add_argument("--strict-grading", action="store_true",
                         help="with --answer-key/--answers: grade only answers stated in a standard form (\\boxed{...}, "
                         "'the answer is ...', '#### ...'); default: the solution's conclusion wherever it states it "
                         "(an 'Answer:' line, bold, a closing equation, 'Therefore, there are 12 ...')")
    filters.add_argument("--max-per-problem", type=int, default=None, metavar="K",
                         help="keep at most K solutions per problem (the first K in input order)")
    filters.add_argument("--min-tokens", type=int, default=None,
                         help="drop samples with fewer tokens (with --tokenizer: the chat-templated count training sees; "
                         "without: the --num-tokens-key field)")
    filters.add_argument("--max-tokens", type=int, default=None, help="drop samples with more tokens (same count as --min-tokens)")
    filters.add_argument("--num-tokens-key", default=defaults.num_tokens_key,
                         help="field with a token count, used by --min/--max-tokens when there is no --tokenizer")
    tokens = parser.add_argument_group("token budget")
    tokens.add_argument("--tokenizer", default=None, metavar="PATH_OR_ID",
                        help="the model's tokenizer (local directory or Hugging Face id): encode every sample through "
                        "its chat template exactly as training will, count its tokens, refuse rows the template "
                        "refuses, show what is trained, recommend MAX_LENGTH and MAX_TOKENS_PER_GPU")
    tokens.add_argument("--max-length", type=int, default=None,
                        help="verl's data.max_length in tokens: longer samples are dropped (counted as over_max_length) "
                        "so training with truncation=error never stops on one (needs --tokenizer)")
    run = parser.add_argument_group("errors and progress")
    run.add_argument("--on-error", choices=["fail", "skip"], default=defaults.on_error,
                     help="bad row: fail = stop at the first with file, line and reason; skip = set it aside in rejects.jsonl")
    run.add_argument("--workers", type=int, default=defaults.workers,
                     help="processes that parse and filter rows (0 = one per CPU core); the output does not depend on it")
    run.add_argument("--compression", default=defaults.compression, choices=["snappy", "zstd", "lz4", "gzip", "none"],
                     help="Parquet compression of the outputs")
    run.add_argument("--chunk-mb", type=float, default=defaults.chunk_mb, help="input parsed per step, in MiB")
    run.add_argument("--task-mb", type=float, default=defaults.task_mb,
                     help="input per worker task, in MiB (0 = 32, or 0.5 with --answer-key/--answers, whose grading is "
                     "slower per row); changes the shuffle order, like --shuffle-buffer-mb")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def config_from_args(args: argparse.Namespace) -> PrepareConfig:
    return PrepareConfig(
        val_split=args.val_split, seed=args.seed, prompt_key=args.prompt_key, response_key=args.response_key,
        id_key=args.id_key, system_prompt=args.system_prompt, group_by=args.group_by,
        require_final_answer=args.require_final_answer, dedup=args.dedup, max_per_problem=args.max_per_problem,
        min_tokens=args.min_tokens, max_tokens=args.max_tokens, num_tokens_key=args.num_tokens_key,
        answer_key=args.answer_key, answers=args.answers, strict_grading=args.strict_grading,
        on_error=args.on_error, tokenizer=args.tokenizer,
        max_length=args.max_length, messages_key=args.messages_key, answers_only=args.answers_only,
        reasoning_tags=args.reasoning_tags, chat_template_kwargs=args.chat_template_kwargs,
        shuffle_buffer_mb=args.shuffle_buffer_mb, chunk_mb=args.chunk_mb,
        task_mb=args.task_mb, workers=args.workers, compression=args.compression, progress=not args.no_progress,
    )


def format_report(manifest: dict, output_dir: str) -> str:
    """The short summary printed at the end of a run."""
    from sft.text.chat_tokens import format_summary

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
    grading = manifest.get("grading")
    if grading:
        outcomes = ", ".join(f"{k} {v:,}" for k, v in grading["outcomes"].items())
        rules = ", ".join(f"{k} {v:,}" for k, v in grading["rules"].items())
        lines.append(f"graded ({grading['grader'].split(':')[0]}): {outcomes}; answers found by {rules}")
    split = manifest["split"]
    lines.append(f"train {c['train']:,} rows, val {c['val']:,} rows "
                 f"({split['problems']:,} problems, {split['val_problems']:,} in val)")
    template = manifest.get("chat_template")
    if template:
        from sft.text.chat_format import OUTCOME_INSERTED, OUTCOME_TEMPLATE, OUTCOME_WHITESPACE

        lines.append(f"chat template of {template['tokenizer']}: generation prompt {template['generation_prompt']!r}, "
                     f"end of turn {template['end_of_turn']!r}"
                     + (f", kwargs {template['template_kwargs']}" if template["template_kwargs"] else "")
                     + ("; reasoning removed (--answers-only)" if template["answers_only"] else ""))
        names = {OUTCOME_TEMPLATE: "as the template writes them", OUTCOME_WHITESPACE: "with the template's whitespace",
                 OUTCOME_INSERTED: "inserted unchanged where the template drops part of them"}
        replies = ", ".join(f"{n:,} {names[k]}" for k, n in template["replies"].items())
        if replies:
            lines.append(f"  replies trained: {replies}")
        for flag, info in template["rows_by_flag"].items():
            if flag != OUTCOME_TEMPLATE:
                lines.append(f"  {info['rows']:,} row(s): {info['meaning']}")
        if "example" in template:
            lines.append("first training sample (context: loss off, trained: loss on):")
            lines.extend(template["example"]["segments"])
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
