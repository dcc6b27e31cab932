"""Turn JSONL files of model-generated math solutions into the Parquet files verl's SFT trainer reads.

Usage:
    python sft/prepare_data.py "outputs/*.jsonl" -o data/sft
    python sft/prepare_data.py "outputs/*.jsonl" extra.jsonl -o data/sft --val-split 0.05 --seed 1 \\
        --tokenizer /models/Qwen2.5-7B-Instruct --max-length 4096 \\
        --require-final-answer --dedup --max-per-problem 4 --on-error skip
    python sft/prepare_data.py data.jsonl -o data/sft --answers answers.jsonl   # keep correct solutions only
    python sft/prepare_data.py traces.jsonl -o data/sft --tokenizer Qwen/Qwen3-8B  # see what the template trains
    python sft/prepare_data.py "data/orig/*.jsonl" --source self="outputs/round2/*.jsonl" --weight self=2 \\
        -o data/sft --answer-key answer --max-per-problem 4         # mix sources: original data + the model's samples
    python sft/prepare_data.py --source seed="data/orig/*.jsonl" --source self="outputs/round2/*.jsonl" \\
        -o data/sft --answer-key answer --max-per-problem 2 --dedup --filters-for self   # filter the samples only

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
    manifest.json    inputs (size, sha256, source), arguments, library versions, counts per stage (they
                     add up to the rows read), the same per source (`sources`: globs, files, weight,
                     where its rows ended), split and shuffle details, token summary with
                     `tokens.recommended_max_length` and `tokens.recommended_max_tokens_per_gpu`

With --tokenizer every row is encoded through the model's chat template by sft/text/chat_format.py,
the code training uses: the prompt with the generation prompt as context, the reply (reasoning
included, unless --answers-only) and its end of turn trained; rows the template refuses are
rejects. Every non-blank line is a row; each row ends in exactly one place: rejected (bad row, by
reason), filtered (by reason, in this order: no_answer_after_reasoning, no_final_answer,
no_reference_answer, no_answer_found, wrong_answer, no_token_count, too_few_tokens,
too_many_tokens, over_max_length), deduplicated,
filtered as over_max_per_problem (the first K remaining solutions of a problem in input order
are kept), removed_by_weight (a source weight below 1), train or val; a weight above 1 writes
extra copies, counted as `repeats` (read = the drops + train + val - repeats).

Sources (sft/dataprep/sources.py): the INPUT files are the source `main`; --source NAME=GLOB adds
others. Every filter acts within a source (--dedup and --max-per-problem never compare rows of
two sources); then each kept row of a source of weight W is written floor(W) times, plus once
more with probability frac(W), drawn from --seed and the row's file and line. The split is by
problem across all sources, so every copy of every row of a problem is on one side.
--filters-for NAME[,NAME...] restricts the quality filters (--dedup, --require-final-answer,
--answer-key/--answers, --max-per-problem, --min/--max-tokens) to the named sources: the rows of
the others are still validated and encoded, and dropped only as no_answer_after_reasoning or
over_max_length (training could not use them); manifest `sources.NAME.filtered_by_options`.

The split is by problem (same id, or same prompt when a row has no id), exactly
round(val_split x problems) problems in val, chosen by a seeded hash. Rows are shuffled
uniformly at random (seeded) with bounded memory: each row goes to a hashed bucket on disk,
each bucket is permuted in memory (with a row's repeated copies). Parsing runs in --workers processes; the output does
not depend on their number. See sft/README.md ("Data preparation") for details.

The code, in pipeline order (`prepare_data` below reads top to bottom): every option is one
field of PrepareConfig (sft/dataprep/config.py); plan_run loads the answers and the chat
template and cuts the inputs into tasks; scan runs them in worker processes
(sft/dataprep/workers.py, sft/dataprep/scan.py) that spill rows to disk (sft/dataprep/spill.py);
select_rows (--dedup, --max-per-problem, within each source), weigh_rows (--weight) and
split_problems decide on all rows in input order; write_outputs shuffles and writes the
Parquet files (sft/dataprep/write.py); the summaries, build_manifest and publish finish the run.
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
import errno
import importlib.metadata
import json
import math
import os
import platform
import threading
import uuid
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Iterable

import numpy as np
import orjson
import pyarrow.parquet as pq

from sft.common.errors import EXIT_FAILED, EXIT_OK, EXIT_REFUSED
from sft.common.files import atomic_path, write_json_atomic
from sft.dataprep.config import PrepareConfig, add_arguments, config_from_args
from sft.dataprep.jsonl_io import DataError, InputError, ensure_writable_dir, file_sha256
from sft.dataprep.readers import FileFormat, detect_format, read_file
from sft.dataprep.scratch import run_scratch
from sft.dataprep.scan import (
    MESSAGES_COLUMN,
    ROW_FILTERS,
    ConfigurationError,
    ScanSettings,
    ScanTask,
    TaskResult,
    mix64,
    plan_tasks,
)
from sft.dataprep.sources import (
    MAIN,
    RowSources,
    Sources,
    add_source_arguments,
    parse_source_flags,
    resolve_sources,
    source_flags,
    source_table,
)
from sft.dataprep.spill import SpillInfo, absolute_line, merge_line_records, merge_spill_schemas
from sft.dataprep.workers import WorkerInputs, scan_tasks
from sft.dataprep.write import RowsOut, encoding_record, output_schema, write_outputs

__all__ = ["DataError", "InputError", "PrepareConfig", "build_parser", "config_from_args", "format_report", "main",
           "prepare_data"]

MANIFEST_VERSION = 1
MAX_BUCKETS = 512
FILTER_ORDER = ROW_FILTERS + ("over_max_per_problem",)
STAGE_ORDER = ["read", "rejected", *ROW_FILTERS, "deduplicated", "over_max_per_problem", "removed_by_weight", "train", "val"]
"""Where a row can end, in pipeline order; `repeats` (the extra copies a weight above 1 writes) are counted apart."""


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


# ---------------------------------------------------------------------------------------
# Setup: reference answers, the chat template, the tasks


def load_answers(path: str, id_key: str) -> dict[str, str]:
    """Reference answers by id (as text) from a JSON object {id: answer}, or rows of {id_key: ..., "answer": ...}
    in any input format (JSON Lines, a JSON array, Parquet; sft.dataprep.readers)."""
    from sft.text.math_answers import reference_answer

    if not os.path.isfile(path):
        raise InputError(f"--answers file {path} does not exist")
    answers: dict[str, str] = {}

    def add(key: Any, value: Any) -> None:
        ref = reference_answer(None if value is None else str(value))
        if ref is not None:
            answers[str(key)] = ref

    with open(path, "rb") as handle:
        starts_object = handle.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{")
    if path.endswith(".json") and starts_object:
        try:
            data = json.loads(Path(path).read_bytes())  # exact integer ids, unlike orjson
        except (OSError, ValueError, RecursionError) as exc:
            raise InputError(f"cannot read --answers file {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise InputError(f"{path}: expected a JSON object {{id: answer}} or rows of objects")
        for key, value in data.items():
            add(key, value)
        return answers
    for chunk in read_file(path):
        if chunk.bad:
            raise InputError(chunk.bad[0].message())
        for line, record in zip(chunk.lines, chunk.rows):
            if id_key not in record or "answer" not in record:
                where = f"{path}:{line}" if path.endswith((".jsonl", ".jsonl.gz")) else f"{path} row {line}"
                raise InputError(f"{where}: expected an object with {id_key!r} and 'answer' keys")
            add(record[id_key], record["answer"])
    return answers


def load_chat_format(files: list[str], cfg: PrepareConfig) -> tuple[Any, list[str]]:
    """The ChatFormat of --tokenizer, checked on the shape of every prompt/response row; and the warnings."""
    from sft.text.chat_format import ChatFormat, ConversationError, TemplateError, load_tokenizer

    try:
        chat = ChatFormat(load_tokenizer(cfg.tokenizer), name=cfg.tokenizer, **cfg.chat_options())
        # The shape of every prompt/response row, with this run's system prompt: refused here, it is
        # refused for all of them.
        probe = ([{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt is not None else []) + [
            {"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4"}]
        chat.segments(probe)
    except (TemplateError, ConversationError) as exc:
        hint = (" Drop --system-prompt (the template has no system role) or put the instructions into the prompts."
                if cfg.system_prompt is not None and "system" in str(exc).lower() else "")
        raise InputError(f"{exc}.{hint}") from None
    if _text_encoder_agrees(chat, files, cfg):
        return chat, []
    return chat, ["tiktoken's token ids differed from the tokenizer library's on a real sample, so every "
                  "text was encoded by the library (exact, slower)"]


def _text_encoder_agrees(chat, files: list[str], cfg: PrepareConfig, rows: int = 256) -> bool:
    """Compare the tiktoken text encoder with the tokenizer library on the first rows' texts before any
    worker starts, so every worker (and training, which reads the choice from the Parquet files)
    uses the same one."""
    from sft.dataprep.layouts import Layouts
    from sft.text.chat_format import ConversationError, TemplateError, canonical_messages

    system = [{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt is not None else []
    layouts = Layouts(cfg)
    texts: list[str] = []
    seen = 0
    for path in files:
        for chunk in read_file(path, chunk_bytes=1 << 20):
            for line, row in zip(chunk.lines, chunk.rows):
                for sample in layouts.samples(row, path, line, "line").samples:
                    try:
                        messages = canonical_messages(sample.messages, cfg.tags) if sample.messages else system + [
                            {"role": "user", "content": sample.prompt},
                            {"role": "assistant", "content": sample.row[cfg.response_field]}]
                        texts.extend(segment.text for segment in chat.segments(messages).segments)
                    except (TemplateError, ConversationError, KeyError, TypeError):
                        continue
                    seen += 1
                if seen >= rows:
                    break
            break  # the first chunk of each file is plenty
        if seen >= rows:
            break
    return chat.text.check(texts)


@dataclass
class _Plan:
    """The setup stage's output: how the scan runs and what it scans with."""

    files: list[str]
    kinds: list[FileFormat]
    """each file's format (sft.dataprep.readers.detect_format)"""
    buckets: int
    tasks: list[ScanTask]
    workers: int
    inputs: WorkerInputs
    warnings: list[str]

    @property
    def chat(self):
        """The ChatFormat of --tokenizer, or None."""
        return self.inputs.chat


def plan_run(sources: Sources, cfg: PrepareConfig) -> _Plan:
    """Load what the scan needs (reference answers, grader, chat template) and cut the inputs into tasks
    (each marked with whether the quality filters act on it, --filters-for)."""
    files = sources.files
    kinds = [detect_format(p) for p in files]  # refuses what it cannot read before any work
    # compressed inputs (Parquet included) grow when read: the buckets are sized for the rows, not the files
    total_bytes = sum(os.path.getsize(p) * (1 if k.kind != "parquet" and not k.compression else 4)
                      for p, k in zip(files, kinds))
    buckets = int(min(MAX_BUCKETS, max(1, math.ceil(total_bytes / (cfg.shuffle_buffer_mb * (1 << 20))))))
    answers = load_answers(cfg.answers, cfg.id_key) if cfg.check_answers and cfg.answers else None
    if cfg.check_answers:  # forked workers inherit the imported, exercised grader
        from sft.text.math_answers import warm_up

        warm_up()
    chat, warnings = load_chat_format(files, cfg) if cfg.tokenizer else (None, [])
    if cfg.filters_for is not None and not cfg.quality_filters:
        warnings.append(f"--filters-for {','.join(cfg.filters_for)} has no effect: no quality filter is on "
                        "(--dedup, --require-final-answer, --answer-key, --answers, --max-per-problem, "
                        "--min-tokens, --max-tokens)")
    tokenizer = None
    if chat is not None:  # what a worker started by spawn needs to build the same ChatFormat
        options = cfg.chat_options()
        if chat.text.tiktoken is None:
            options["use_tiktoken"] = False
        tokenizer = (cfg.tokenizer, options)
    tasks = plan_tasks(files, int(cfg.task_bytes), sources.filtered_files(), kinds)
    workers = min(cfg.workers or _cpu_count(), len(tasks))
    return _Plan(files, kinds, buckets, tasks, workers, WorkerInputs(answers, chat, tokenizer),
                 sources.notes + warnings)


# ---------------------------------------------------------------------------------------
# Pass 1: scan in parallel


def scan(plan: _Plan, cfg: PrepareConfig, spill_dir: Path) -> tuple[list[TaskResult], list[SpillInfo]]:
    """Scan every task; raises DataError for the first bad row under --on-error fail, InputError when
    the data does not fit the options."""
    total = sum(os.path.getsize(p) for p in plan.files)
    progress = _LazyBar(total, cfg.progress)
    try:
        results, spills = scan_tasks(plan.tasks, ScanSettings(cfg, str(spill_dir), plan.buckets), plan.inputs,
                                     plan.workers, progress, total)
    except ConfigurationError as exc:
        raise InputError(str(exc)) from exc
    finally:
        progress.close()
    first_bad = next((r for r in results if r.first_bad is not None), None)
    if first_bad is not None:
        bad = first_bad.first_bad
        bad.line = absolute_line(results, results.index(first_bad), bad.line)
        raise DataError(bad)
    return results, spills


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


def _hash_inputs(files: list[str]) -> tuple[threading.Thread, dict[str, str]]:
    """sha256 of every input, on a thread (join it before reading the digests)."""
    digests: dict[str, str] = {}

    def work() -> None:
        # Below the write pass's threads in priority: this hash has time to spare, the
        # train writer is what the run waits for (Linux: nice applies per thread).
        with contextlib.suppress(AttributeError, OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        for path in files:
            digests[path] = file_sha256(path)  # hashlib releases the GIL

    thread = threading.Thread(target=work, name="sha256", daemon=True)
    thread.start()
    return thread, digests


# ---------------------------------------------------------------------------------------
# Between the passes: what needs all rows in input order


@dataclass
class _Counts:
    read: int = 0
    blank_lines: int = 0
    rejected: collections.Counter = field(default_factory=collections.Counter)
    deduplicated: int = 0
    filtered: collections.Counter = field(default_factory=collections.Counter)
    removed_by_weight: int = 0
    """kept rows a weight below 1 did not write (0 copies)"""
    repeats: int = 0
    """extra copies a weight above 1 wrote: train + val count them, so `read` is short of them"""
    extra_samples: int = 0
    """samples beyond one per row (a row with a list of K replies is K samples): `read` is short of them"""
    train: int = 0
    val: int = 0

    @classmethod
    def of_scan(cls, results: list[TaskResult]) -> _Counts:
        counts = cls()
        for result in results:
            counts.read += result.rows_read
            counts.blank_lines += result.blank_lines
            counts.extra_samples += result.extra_samples
            counts.rejected.update(result.rejected)
            counts.filtered.update(result.filtered)
        return counts

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
            "removed_by_weight": self.removed_by_weight,
            "repeats": self.repeats,
            "extra_samples": self.extra_samples,
            "train": self.train,
            "val": self.val,
        }

    def balanced(self) -> bool:
        """read + extra_samples = rejected + filtered + deduplicated + removed_by_weight + train + val - repeats"""
        return self.read + self.extra_samples == (
            sum(self.rejected.values()) + self.deduplicated + sum(self.filtered.values())
            + self.removed_by_weight + self.train + self.val - self.repeats)


@dataclass
class _Selection:
    """The global filters' and the weights' output: the rows they dropped, the rows written more than once,
    and the written rows' problem and prompt hashes, token counts and sources in input order (a row written
    k times appears k times)."""

    dropped_order: np.ndarray
    groups: np.ndarray
    prompts: np.ndarray
    tokens: np.ndarray | None
    """chat-template token counts of the written rows (with --tokenizer)"""
    counted_tokens: np.ndarray
    """token counts of every row that reached the length filters"""
    deduplicated: int
    over_max_per_problem: int
    order: np.ndarray
    """order keys of the rows kept by the filters (before weighting)"""
    sources: np.ndarray
    """source index of each written row"""
    per_source: dict[str, np.ndarray]
    """per source index: deduplicated, over_max_per_problem, kept, removed_by_weight, repeats"""
    repeat_order: np.ndarray | None = None
    """order keys (sorted) of the rows written more than once, and how many times each"""
    repeat_copies: np.ndarray | None = None


def select_rows(results: list[TaskResult], cfg: PrepareConfig, tokenized: bool, rows: RowSources) -> _Selection:
    """--dedup (the first of identical pairs is kept) and --max-per-problem (the first K of a problem), each
    within a source, for the rows of the sources they act on (--filters-for)."""

    def gather(name: str, dtype) -> np.ndarray:
        parts = [getattr(r, name) for r in results if getattr(r, name) is not None]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)

    order, groups, prompts = gather("order", np.uint64), gather("groups", np.uint64), gather("prompts", np.uint64)
    tokens = gather("tokens", np.int64) if tokenized else None
    source = rows.source(order)
    applies = rows.filtered(order)
    # XOR with a per-source constant keeps equal values equal within a source and apart across sources
    source_salt = mix64(source.astype(np.uint64), 0x50_55_52_43)
    n_sources = len(rows.sources.sources)
    dropped = np.zeros(len(order), dtype=bool)
    per_source = {name: np.zeros(n_sources, dtype=np.int64) for name in ("deduplicated", "over_max_per_problem")}
    if cfg.dedup and applies.any():
        # 64-bit digests of the normalised (prompt, response): a false match needs ~4e9 rows
        candidates = np.flatnonzero(applies)
        _, first = np.unique((gather("digests", np.uint64) ^ source_salt)[candidates], return_index=True)
        duplicate = applies.copy()
        duplicate[candidates[first]] = False
        per_source["deduplicated"] = np.bincount(source[duplicate], minlength=n_sources)
        dropped |= duplicate
    if cfg.max_per_problem is not None and applies.any():
        alive = np.flatnonzero(~dropped & applies)
        problems = groups ^ source_salt
        by_group = alive[np.argsort(problems[alive], kind="stable")]  # input order within each group
        sorted_groups = problems[by_group]
        starts = np.r_[0, np.flatnonzero(sorted_groups[1:] != sorted_groups[:-1]) + 1]
        rank = np.arange(len(by_group)) - np.repeat(starts, np.diff(np.r_[starts, len(by_group)]))
        over = by_group[rank >= cfg.max_per_problem]
        per_source["over_max_per_problem"] = np.bincount(source[over], minlength=n_sources)
        dropped[over] = True
    keep = ~dropped
    per_source["kept"] = np.bincount(source[keep], minlength=n_sources)
    return _Selection(np.sort(order[dropped]), groups[keep], prompts[keep],
                      tokens[keep] if tokens is not None else None, gather("counted_tokens", np.int64),
                      int(per_source["deduplicated"].sum()), int(per_source["over_max_per_problem"].sum()),
                      order[keep], source[keep], per_source)


def weigh_rows(selection: _Selection, rows: RowSources, seed: int) -> _Selection:
    """The selection with each kept row written as many times as its source's weight says
    (RowSources.copies): rows with no copy join the dropped ones, rows with several are repeated in the
    arrays the split and summaries read."""
    n_sources = len(rows.sources.sources)
    none = np.zeros(n_sources, dtype=np.int64)
    if not rows.sources.weighted or not len(selection.order):
        return replace(selection, per_source={**selection.per_source, "removed_by_weight": none, "repeats": none})
    copies = rows.copies(selection.order, seed)
    removed, several = copies == 0, copies > 1
    source = selection.sources
    repeated = selection.order[several]
    by_order = np.argsort(repeated, kind="stable")
    return replace(
        selection,
        dropped_order=np.sort(np.concatenate([selection.dropped_order, selection.order[removed]])),
        groups=np.repeat(selection.groups, copies),
        prompts=np.repeat(selection.prompts, copies),
        tokens=np.repeat(selection.tokens, copies) if selection.tokens is not None else None,
        sources=np.repeat(source, copies),
        repeat_order=repeated[by_order],
        repeat_copies=copies[several][by_order],
        per_source={**selection.per_source,
                    "removed_by_weight": np.bincount(source[removed], minlength=n_sources),
                    "repeats": np.bincount(source[several], weights=copies[several] - 1,
                                           minlength=n_sources).astype(np.int64)},
    )


@dataclass
class _Split:
    info: dict
    """the manifest's `split`"""
    threshold: Any
    """rows whose problem hash is below it are in val; None: no val"""
    is_val: np.ndarray
    """per kept row (input order)"""
    warnings: list[str]


def split_problems(groups: np.ndarray, prompts: np.ndarray, cfg: PrepareConfig) -> _Split:
    """Exactly round(val_split x problems) problems in val: those with the smallest seeded hashes."""
    unique = np.unique(groups)
    n_groups = len(unique)
    val_groups = 0
    warnings = []
    if cfg.val_split > 0:
        if n_groups >= 2:
            val_groups = min(max(int(round(cfg.val_split * n_groups)), 1), n_groups - 1)
        else:
            warnings.append(f"only {n_groups} problem(s) left after filtering: no validation split is possible, "
                            "so no val.parquet was written")
    # val = the val_groups problems with the smallest seeded hashes (np.unique sorts them)
    threshold = unique[val_groups] if val_groups else None
    is_val = groups < threshold if val_groups else np.zeros(len(groups), dtype=bool)
    info = {
        "by": "prompt" if cfg.group_by == "prompt" else f"{cfg.id_key} (the prompt for rows without {cfg.id_key})",
        "problems": int(n_groups),
        "val_problems": int(val_groups),
        "seed": cfg.seed,
    }
    shared = np.intersect1d(prompts[is_val], prompts[~is_val]) if val_groups else np.zeros(0)
    info["val_prompts_also_in_train"] = int(len(shared))
    if len(shared):
        warnings.append(
            f"{len(shared)} prompt(s) appear in both train and val under different ids: the same problem has "
            "several ids; pass --group-by prompt for a split by prompt text"
        )
    if cfg.group_by == "id" and len(groups):
        pair_keys = mix64(groups ^ mix64(prompts, 1), 2)  # one key per (id, prompt)
        first_pair = np.unique(pair_keys, return_index=True)[1]
        _, per_group = np.unique(groups[first_pair], return_counts=True)
        several = int((per_group > 1).sum())
        info["ids_with_several_prompts"] = several
        if several:
            warnings.append(
                f"{several} id(s) have more than one distinct prompt (ids may restart in every file); their rows "
                "are kept on one side (no leak) and --max-per-problem counts them as one problem. "
                "Pass --group-by prompt if ids are not problem ids"
            )
    return _Split(info, threshold, is_val, warnings)


# ---------------------------------------------------------------------------------------
# Summaries: tokens, chat template, grading


def token_summary(chat, cfg: PrepareConfig, selection: _Selection, is_val: np.ndarray) -> tuple[dict | None, list[str]]:
    """The manifest's `tokens` (with --tokenizer) and its warning."""
    if chat is None:
        return None, []
    from sft.text.chat_tokens import length_summary, recommend

    kept = selection.tokens
    summary: dict[str, Any] = {
        "tokenizer": os.path.abspath(cfg.tokenizer) if os.path.exists(cfg.tokenizer) else cfg.tokenizer,
        "counted_as": "sft.text.chat_format, the encoding training uses (sft/verl_plugins/sft_dataset.py): the prompt as the chat "
        "template renders it with the generation prompt, then every reply in the template's format with its "
        "end of turn",
        "text_encoder": chat.text.text_encoder,
        "max_length": cfg.max_length,
        "before_length_filters": length_summary(selection.counted_tokens, cfg.max_length),
        "kept": length_summary(kept),
        "train": length_summary(kept[~is_val]),
        "val": length_summary(kept[is_val]),
    }
    warnings = []
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
            warnings.append(
                f"the longest sample has {int(kept.max())} tokens but 99.9% have at most {p999}; "
                f"--max-length {p999} would drop {longer} sample(s) and allow a much smaller MAX_LENGTH"
            )
    return summary, warnings


def template_summary(chat, cfg: PrepareConfig, flags: collections.Counter, train_file: Path | None,
                     train_rows: int) -> tuple[dict | None, list[str]]:
    """What the chat template did to the replies, with the first training sample as an example; and its warnings."""
    if chat is None:
        return None, []
    from sft.text.chat_format import FLAG_EXPLANATIONS, OUTCOME_INSERTED, OUTCOME_TEMPLATE, OUTCOME_WHITESPACE

    outcomes = (OUTCOME_TEMPLATE, OUTCOME_WHITESPACE, OUTCOME_INSERTED)
    summary: dict[str, Any] = dict(chat.describe())
    summary["answers_only"] = cfg.answers_only
    summary["replies"] = {name: flags[name] for name in outcomes if flags[name]}
    summary["rows_by_flag"] = {
        flag: {"rows": count, "meaning": FLAG_EXPLANATIONS.get(flag, flag)}
        for flag, count in sorted(flags.items()) if flag not in (OUTCOME_TEMPLATE,)
        and (flag not in outcomes or flag in FLAG_EXPLANATIONS)
    }
    if train_file is not None and train_rows:
        from sft.text.tool_format import from_stored

        parquet = pq.ParquetFile(train_file)
        columns = [MESSAGES_COLUMN] + [name for name in ("tools",) if name in parquet.schema_arrow.names
                                       and parquet.schema_arrow.field(MESSAGES_COLUMN).type.value_type.num_fields > 2]
        first = parquet.read_row_group(0, columns=columns).slice(0, 1).to_pylist()[0]
        messages, tools = from_stored(first[MESSAGES_COLUMN], first.get("tools"))
        summary["example"] = {"messages_roles": [m["role"] for m in messages],
                              "segments": chat.explain(messages, tools=tools).splitlines()}
    warnings = [f"{flags[flag]:,} row(s): {FLAG_EXPLANATIONS[flag]}"
                for flag in ("prompt_opens_reasoning_reply_never_closes_it", "reasoning_never_closed", "no_end_of_turn_token")
                if flags[flag]]
    return summary, warnings


def grading_summary(results: list[TaskResult], cfg: PrepareConfig) -> dict:
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
        if cfg.strict_grading else "lenient: the solution's conclusion wherever it states it (sft.text.math_answers.find_conclusion)",
        "outcomes": {k: outcomes[k] for k in ("correct", "wrong", "no_answer", "no_reference") if outcomes[k]},
        "rules": {k: rules[k] for k in order if rules[k]},
        "dropped_rows_in": "answer_drops.jsonl (file, line, reason, rule, the answer found, the reference, the row)",
    }


def source_summary(sources: Sources, results: list[TaskResult], selection: _Selection,
                   is_val: np.ndarray) -> dict[str, dict]:
    """The manifest's `sources`: per source its files and weight and where its rows ended, counted like
    `counts` (train and val count every copy; kept = removed_by_weight + train + val - repeats)."""
    file_source = sources.file_sources()
    summary = {}
    for index, source in enumerate(sources.sources):
        mine = [r for r in results if file_source[r.file_index] == index]
        rejected: collections.Counter = collections.Counter()
        filtered: collections.Counter = collections.Counter()
        for result in mine:
            rejected.update(result.rejected)
            filtered.update(result.filtered)
        filtered["over_max_per_problem"] = int(selection.per_source["over_max_per_problem"][index])
        written = selection.sources == index
        summary[source.name] = {
            "globs": source.globs,
            "files": [os.path.abspath(path) for path in source.files],
            "weight": source.weight,
            "filtered_by_options": source.filtered,
            "read": sum(r.rows_read for r in mine),
            "blank_lines": sum(r.blank_lines for r in mine),
            "extra_samples": sum(r.extra_samples for r in mine),
            "rejected": dict(sorted(rejected.items())),
            "filtered": {reason: filtered[reason] for reason in FILTER_ORDER if filtered[reason]},
            "deduplicated": int(selection.per_source["deduplicated"][index]),
            "kept": int(selection.per_source["kept"][index]),
            "removed_by_weight": int(selection.per_source["removed_by_weight"][index]),
            "repeats": int(selection.per_source["repeats"][index]),
            "train": int((written & ~is_val).sum()),
            "val": int((written & is_val).sum()),
        }
    return summary


def sources_add_up(summary: dict[str, dict], counts: _Counts) -> bool:
    """Every source accounts for each of its rows, and the sources add up to the run's counts."""
    for info in summary.values():
        dropped = sum(info["rejected"].values()) + sum(info["filtered"].values()) + info["deduplicated"]
        if info["read"] + info["extra_samples"] != dropped + info["kept"] or \
                info["kept"] != info["removed_by_weight"] + info["train"] + info["val"] - info["repeats"]:
            return False
    totals = {key: sum(info[key] for info in summary.values())
              for key in ("read", "extra_samples", "deduplicated", "removed_by_weight", "repeats", "train", "val")}
    return totals == {key: getattr(counts, key) for key in totals}


# ---------------------------------------------------------------------------------------
# Manifest and publishing


OUTPUT_FILES = {"train": "train.parquet", "val": "val.parquet", "rejects": "rejects.jsonl",
                "answer_drops": "answer_drops.jsonl"}
"""What a run publishes, in publishing order (a file this run does not produce is removed)."""


def line_record_files(results: list[TaskResult], cfg: PrepareConfig, tmp_dir: Path) -> dict[str, tuple[Path, int, str]]:
    """rejects.jsonl (--on-error skip) and answer_drops.jsonl (--answer-key/--answers) in `tmp_dir`, when
    they have lines: {name: (path, lines, sha256)}."""
    files = {}
    for name, attribute, wanted in (("rejects", "rejects_path", cfg.on_error == "skip"),
                                    ("answer_drops", "drops_path", cfg.check_answers)):
        path = tmp_dir / OUTPUT_FILES[name]
        count = merge_line_records(results, path, attribute) if wanted else 0
        if count:
            files[name] = (path, count, file_sha256(path))
    return files


def own_outputs(output_dir: str | os.PathLike) -> set[str]:
    """Real paths of what a run into `output_dir` writes: never read as input (a glob over the folder would
    otherwise read the last run's rejects.jsonl or train.parquet)."""
    out = Path(output_dir).resolve()
    return {os.path.realpath(out / name) for name in (*OUTPUT_FILES.values(), "manifest.json")}


def build_manifest(cfg: PrepareConfig, plan: _Plan, command: dict, results: list[TaskResult], digests: dict[str, str],
                   counts: _Counts, summaries: dict[str, Any], warnings: list[str]) -> dict:
    """The manifest, less `outputs` (filled in as they are published); `summaries`: run_id, split, tokens,
    chat_template, sources, layouts."""
    source_of = {path: name for name, info in summaries["sources"].items() for path in info["files"]}
    inputs = []
    for file_index, path in enumerate(plan.files):
        mine = [r for r in results if r.file_index == file_index]
        inputs.append({
            "path": os.path.abspath(path),
            "bytes": os.path.getsize(path),
            "sha256": digests[path],
            "format": plan.kinds[file_index].name,
            "rows": sum(r.rows_read for r in mine),
            "blank_lines": sum(r.blank_lines for r in mine),
            "rejected": sum(sum(r.rejected.values()) for r in mine),
            "source": source_of.get(os.path.abspath(path), MAIN),
        })
    config = asdict(cfg)
    config.update(prompt_key=cfg.prompt_field, response_key=cfg.response_field)  # the fields flat rows were read from
    manifest: dict[str, Any] = {
        "manifest_version": MANIFEST_VERSION,
        "run_id": summaries["run_id"],
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "config": config,
        "inputs": inputs,
        "versions": _versions(
            ["pyarrow", "numpy", "orjson"]
            + (["transformers", "tokenizers"] if cfg.tokenizer else [])
            + (["math-verify"] if cfg.require_final_answer or cfg.check_answers else [])
            + ["verl"]
        ),
        "stage_order": STAGE_ORDER,
        "counts": counts.as_dict(),
        "layouts": summaries["layouts"],
        "sources": summaries["sources"],
        "split": summaries["split"],
        "shuffle": {
            "buckets": plan.buckets,
            "guarantee": "a uniform random permutation for the seed: each row goes to a bucket by a seeded "
            "hash of its position in the input, each bucket is permuted with a seeded RNG; the same inputs, "
            "seed and --shuffle-buffer-mb give the same order; the copies of a row a weight above 1 writes are permuted "
            "within its bucket",
        },
        "workers": plan.workers,
        "outputs": {},
        "warnings": warnings,
    }
    for name in ("tokens", "chat_template"):
        if summaries[name] is not None:
            manifest[name] = summaries[name]
    if cfg.check_answers:
        manifest["grading"] = grading_summary(results, cfg)
    return manifest


def publish(out: Path, produced: dict[str, tuple[Path, int, str]], manifest: dict) -> None:
    """Move the `produced` files ({name: (path, rows, sha256)}) into `out` and write the manifest.

    The old manifest goes first, so a crash mid-publish never leaves a manifest describing files
    from two different runs; then the data files (a stale one this run did not produce is
    removed); the manifest last, so its presence means the run completed. Each Parquet file carries
    the run's `run_id` in its `verl_sft` metadata and the manifest each file's sha256, so a reader can
    tell files of two runs apart even after a kill between two renames.
    """
    with contextlib.suppress(FileNotFoundError):
        (out / "manifest.json").unlink()
    for name, filename in OUTPUT_FILES.items():
        final = out / filename
        if name in produced:
            built, rows, sha256 = produced[name]
            with atomic_path(final) as tmp:
                os.replace(built, tmp)
            manifest["outputs"][name] = {"path": str(final.resolve()), "bytes": final.stat().st_size, "rows": rows,
                                         "sha256": sha256}
        else:
            with contextlib.suppress(FileNotFoundError):
                final.unlink()
    write_json_atomic(out / "manifest.json", manifest)


# ---------------------------------------------------------------------------------------
# The pipeline


def prepare_data(inputs: list[str] | dict[str, list[str]], output_dir: str | os.PathLike,
                 config: PrepareConfig | None = None, command: dict | None = None,
                 weights: dict[str, float] | None = None) -> dict:
    """Run the whole preparation; returns the manifest (also written to output_dir/manifest.json).

    `inputs`: files, globs or directories (the source `main`), or {source name: files or globs}; `weights`:
    {source name: W}, 1 for a source not named (sft.dataprep.sources). Raises InputError for unusable
    inputs, options or output directory, and DataError for the first bad row under on_error="fail";
    nothing is written to output_dir in either case (OSError for a full disk or a missing permission).
    """
    cfg = config or PrepareConfig()
    sources = resolve_sources(inputs, weights, cfg.filters_for, exclude=own_outputs(output_dir))
    out = ensure_writable_dir(output_dir)
    command = command or {"inputs": inputs if isinstance(inputs, dict) else list(inputs), "output_dir": str(out),
                          **({"weights": dict(weights)} if weights else {})}
    plan = plan_run(sources, cfg)
    run_id = uuid.uuid4().hex
    with run_scratch(out) as (tmp_dir, stale):
        if stale:
            plan.warnings.append(f"removed {len(stale)} scratch folder(s) of killed runs: {', '.join(stale)}")
        results, spills = scan(plan, cfg, tmp_dir)
        counts = _Counts.of_scan(results)
        # sha256 of the inputs runs beside the write pass, which leaves a core partly idle
        # (the scan keeps every core busy)
        hash_thread, digests = _hash_inputs(plan.files)
        rows = RowSources.of(sources, plan.tasks, results)
        selection = weigh_rows(select_rows(results, cfg, plan.chat is not None, rows), rows, cfg.seed)
        counts.deduplicated = selection.deduplicated
        if selection.over_max_per_problem:
            counts.filtered["over_max_per_problem"] = selection.over_max_per_problem
        counts.removed_by_weight = int(selection.per_source["removed_by_weight"].sum())
        counts.repeats = int(selection.per_source["repeats"].sum())
        split = split_problems(selection.groups, selection.prompts, cfg)
        written, hashes = _write(plan, cfg, spills, selection, split, counts, tmp_dir, run_id)
        per_source = source_summary(sources, results, selection, split.is_val)
        if not counts.balanced() or not sources_add_up(per_source, counts):  # a bug, never bad input
            raise RuntimeError(f"internal error: stage counts do not add up: {counts.as_dict()} {per_source}")
        summaries, warnings = _summaries(plan, cfg, results, selection, split, counts, written.get("train"))
        # with no train rows neither Parquet file is published (main reports the error)
        produced = {name: (path, getattr(counts, name), hashes[name]) for name, path in written.items() if counts.train}
        produced.update(line_record_files(results, cfg, tmp_dir))
        hash_thread.join()
        manifest = build_manifest(cfg, plan, command, results, digests, counts,
                                  {**summaries, "run_id": run_id, "sources": per_source}, warnings)
        publish(out, produced, manifest)
        return manifest


def _write(plan: _Plan, cfg: PrepareConfig, spills: list[SpillInfo], selection: _Selection, split: _Split,
           counts: _Counts, tmp_dir: Path, run_id: str) -> tuple[dict[str, Path], dict[str, str]]:
    """The write pass: train and val Parquet in `tmp_dir` (none when no row is left), their sha256; sets
    counts.train and counts.val."""
    if not len(selection.groups):
        return {}, {}
    spill_schema = merge_spill_schemas(spills)
    schema = output_schema(spill_schema, encoding_record(cfg, plan.chat, run_id))
    rows_out = RowsOut(selection.dropped_order, split.threshold, selection.repeat_order, selection.repeat_copies)
    written, rows_written, hashes = write_outputs(spills, spill_schema, schema, rows_out, cfg, tmp_dir, plan.buckets,
                                                  _progress_factory(cfg))
    counts.train, counts.val = rows_written["train"], rows_written["val"]
    return written, hashes


def _summaries(plan: _Plan, cfg: PrepareConfig, results: list[TaskResult], selection: _Selection, split: _Split,
               counts: _Counts, train_file: Path | None) -> tuple[dict, list[str]]:
    """The manifest's split, tokens, chat_template and layouts, and every warning of the run."""
    flags: collections.Counter = collections.Counter()
    for result in results:
        flags.update(result.template_flags)
    tokens, token_warnings = token_summary(plan.chat, cfg, selection, split.is_val)
    template, template_warnings = template_summary(plan.chat, cfg, flags, train_file, counts.train)
    layouts, layout_warnings = layout_summary(results, cfg)
    warnings = plan.warnings + layout_warnings + split.warnings + token_warnings + template_warnings
    return {"split": split.info, "tokens": tokens, "chat_template": template, "layouts": layouts}, warnings


def layout_summary(results: list[TaskResult], cfg: PrepareConfig) -> tuple[dict, list[str]]:
    """Rows per layout, and the warnings for what the layouts may have left out or merged: prompt-like fields
    left unused, problems whose rows differ in them, a `messages` field moved aside, input fields replaced."""
    layouts, unused, replaced = collections.Counter(), collections.Counter(), collections.Counter()
    renamed = 0
    for result in results:
        layouts.update(result.layouts)
        unused.update(result.unused_fields)
        replaced.update(result.replaced_columns)
        renamed += result.renamed_messages
    flat = layouts["flat"]
    prompt = f"--prompt-template {cfg.prompt_template!r}" if cfg.prompt_template else f"--prompt-key {cfg.prompt_field}"
    warnings = [f"field {name!r} holds text in {n:,} of {flat:,} flat rows but is not part of the prompt ({prompt}); if "
                f"it belongs to the problem, build the prompt with it: --prompt-template "
                f"'{{{cfg.prompt_field}}}\\n\\n{{{name}}}'" for name, n in sorted(unused.items()) if n * 100 >= flat]
    groups = [r.groups for r in results if r.groups is not None]
    extras = [r.extras for r in results if r.extras is not None]
    collapsed = collapsed_problems(np.concatenate(groups), np.concatenate(extras)) if groups else 0
    if collapsed:
        by = "prompt" if cfg.group_by == "prompt" else f"{cfg.id_key}, or the prompt"
        warnings.append(f"{collapsed:,} problem(s) (same {by}) hold rows that differ in {', '.join(sorted(unused))}: the "
                        "split, --max-per-problem and --dedup treat each as one problem. Build the prompt from those "
                        "fields with --prompt-template")
    if renamed:
        warnings.append(f"{renamed:,} row(s) have a 'messages' field that is not the conversation trained (the fields "
                        "named by --prompt-key/--response-key or --messages-key are): kept as column 'input_messages'")
    warnings += [f"{n:,} row(s) had a field {name!r}, which this run writes: replaced by this run's value"
                 for name, n in sorted(replaced.items())]
    return {"rows": dict(sorted(layouts.items())), "unused_prompt_fields": dict(sorted(unused.items())),
            "collapsed_problems": collapsed, "messages_renamed": renamed,
            "replaced_columns": dict(sorted(replaced.items()))}, warnings


def collapsed_problems(groups: np.ndarray, extras: np.ndarray) -> int:
    """Problems (by group hash) whose samples differ in their unused prompt-like fields (hash `extras`, 0: none)."""
    if not (extras != 0).any():
        return 0
    suspects = np.isin(groups, np.unique(groups[extras != 0]))
    pairs = np.unique(np.stack([groups[suspects], extras[suspects]], axis=1), axis=0)
    _, per_group = np.unique(pairs[:, 0], return_counts=True)
    return int((per_group > 1).sum())


def _progress_factory(cfg: PrepareConfig):
    from tqdm import tqdm

    def factory(**kwargs):
        return tqdm(disable=not cfg.progress, dynamic_ncols=True, mininterval=1.0, **kwargs)

    return factory


# ---------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sft/prepare_data.py",
        description="Turn files of model-generated solutions (JSON Lines, JSON arrays, Parquet; conversation, "
        "ShareGPT or flat rows) into verl SFT Parquet files (train.parquet, val.parquet, manifest.json).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog='Example: python sft/prepare_data.py "outputs/*.jsonl" -o data/sft --tokenizer /models/qwen --max-length 4096',
    )
    parser.add_argument("inputs", nargs="*", metavar="INPUT", default=argparse.SUPPRESS,
                        help=f"input files (JSON Lines, .jsonl.gz/.zst/.bz2/.xz, JSON arrays, Parquet), directories of "
                        f"them or quoted globs (e.g. 'outputs/*.jsonl'): the source {MAIN!r}; required unless --source "
                        "is given")
    parser.add_argument("-o", "--output-dir", required=True, help="directory for train.parquet, val.parquet, manifest.json")
    add_source_arguments(parser)  # --source, --weight
    add_arguments(parser)  # every option of PrepareConfig
    return parser


def format_report(manifest: dict, output_dir: str) -> str:
    """The short summary printed at the end of a run."""
    from sft.text.chat_tokens import format_summary

    c = manifest["counts"]
    lines = [f"read {c['read']:,} rows from {len(manifest['inputs'])} file(s) (+{c['blank_lines']:,} blank lines skipped)"]
    layouts = manifest.get("layouts", {}).get("rows", {})
    if set(layouts) - {"flat"}:
        lines.append("layouts: " + ", ".join(f"{name} {n:,}" for name, n in layouts.items()))
    if c.get("extra_samples"):
        lines.append(f"lists of replies: {c['extra_samples']:,} samples beyond one per row (counted in extra_samples)")
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
    if c["removed_by_weight"] or c["repeats"]:
        lines.append(f"weights: removed {c['removed_by_weight']:,} kept rows, wrote {c['repeats']:,} repeated copies "
                     "(counted in train and val)")
    sources = manifest["sources"]
    if len(sources) > 1 or any(info["weight"] != 1 for info in sources.values()):
        lines.append(source_table(sources))
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


def os_error_message(exc: OSError, output_dir: str) -> str:
    """One line for an OSError of a run: what happened, where, and what to do."""
    where = exc.filename or output_dir
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"no space left on the device (or over quota) while writing {where}: free space there or choose "
                f"another -o (a run needs about the input's size for its scratch files, plus the outputs). The previous "
                f"outputs in {output_dir}, if any, are unchanged; no partial file was published")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{exc.strerror}: {where}; fix its permissions (ls -l, chmod) or choose another input or -o"
    return f"{exc.strerror or exc}: {where}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    inputs, sources, weights = source_flags(args)
    if not inputs and not sources:
        parser.error("the following arguments are required: INPUT (or --source NAME=GLOB)")
    try:
        config = config_from_args(args)
        specs, weights = parse_source_flags(inputs, sources, weights)
        inputs = specs[MAIN] if list(specs) == [MAIN] else specs
        manifest = prepare_data(inputs, args.output_dir, config, weights=weights,
                                command={"argv": sys.argv[1:] if argv is None else list(argv), "cwd": os.getcwd()})
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except OSError as exc:  # a full disk, a file or folder without permission: one line, never a traceback
        print(f"error: {os_error_message(exc, args.output_dir)}", file=sys.stderr)
        return EXIT_REFUSED
    except DataError as exc:
        rejects = os.path.join(args.output_dir, "rejects.jsonl")
        print(f"error: {exc}\nFix the row, or rerun with --on-error skip to set bad rows aside in {rejects} "
              "and continue. Nothing was written.", file=sys.stderr)
        return EXIT_FAILED
    print(format_report(manifest, args.output_dir))
    if manifest["counts"]["train"] == 0:
        print("error: no rows left for training; see the counts above (nothing but manifest.json and rejects were written)",
              file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
