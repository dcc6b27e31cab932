"""Several inputs mixed with weights: --source NAME=GLOB and --weight NAME=W of sft/prepare_data.py (imported; not a command).

Usage (internal; prepare_data drives it):
    specs, weights = parse_source_flags(*source_flags(args))   # the command line
    sources = resolve_sources(specs, weights, cfg.filters_for)  # files per source, checked; `sources.files` is scanned
    rows = RowSources.of(sources, tasks, results) # after the scan: which source and line each order key is
    copies = rows.copies(order, seed)             # how many times each kept row is written

A source is a name and the files its globs match; the positional INPUT files are the source
`main`. Every filter acts within a source (prepare_data passes `rows.source(order)` to --dedup and
--max-per-problem), then each kept row of a source of weight W is written floor(W) times, plus
once more with probability frac(W). That last draw is a seeded hash of the row's identity (the
source's name, the file's place among the source's files, the line in the file), so it depends
on neither --workers nor --task-mb, and the same row gets the same decision in every run with
the same seed.

--filters-for NAME[,NAME...] (PrepareConfig.filters_for) names the sources the quality filters act on
(`Source.filtered`; default every source): the scan skips the row-local ones for the tasks of the other
sources' files (`ScanTask.filtered`), and prepare_data's --dedup and --max-per-problem skip their rows
(`RowSources.filtered`).
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import re
from dataclasses import dataclass, field
from typing import Collection, Mapping, Sequence

import numpy as np

from sft.dataprep.jsonl_io import InputError
from sft.dataprep.readers import expand_inputs
from sft.dataprep.scan import mix64, order_place, order_task

MAIN = "main"
"""The source of the positional INPUT files."""
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]+")


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """--source and --weight, in their own argument group (absent from the parsed arguments when not given:
    read them with source_flags)."""
    group = parser.add_argument_group("sources and weights (mixing several inputs)")
    group.add_argument("--source", action="append", default=argparse.SUPPRESS, metavar="NAME=GLOB",
                       help="a named source of JSONL files (repeatable; the same NAME again adds globs to it). The "
                       f"INPUT files are the source {MAIN!r}. Filters act within each source; the split is by "
                       "problem across all of them")
    group.add_argument("--weight", action="append", default=argparse.SUPPRESS, metavar="NAME=W",
                       help="write each kept row of source NAME W times (W >= 0, default 1): floor(W) copies plus one "
                       "more with probability frac(W), drawn from --seed and the row's file and line; 0 drops the "
                       "source (counted)")


def source_flags(args: argparse.Namespace) -> tuple[list[str], list[str], list[str]]:
    """The INPUT files, --source and --weight values of parsed arguments (empty lists when not given)."""
    return getattr(args, "inputs", []), getattr(args, "source", []), getattr(args, "weight", [])


def parse_source_flags(inputs: Sequence[str], source_flags: Sequence[str],
                       weight_flags: Sequence[str]) -> tuple[dict[str, list[str]], dict[str, float]]:
    """The globs by source name (INPUT first, as `main`) and the weights by name, from the command line."""
    specs: dict[str, list[str]] = {MAIN: list(inputs)} if inputs else {}
    for flag in source_flags:
        name, _, pattern = flag.partition("=")
        if not NAME_PATTERN.fullmatch(name) or not pattern:
            raise InputError(f"--source {flag!r} is not NAME=GLOB (NAME of letters, digits, _ . -; a non-empty glob): "
                             "write e.g. --source self=outputs/self/*.jsonl")
        specs.setdefault(name, []).append(pattern)
    weights: dict[str, float] = {}
    for flag in weight_flags:
        name, _, text = flag.partition("=")
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not NAME_PATTERN.fullmatch(name) or not math.isfinite(value):
            raise InputError(f"--weight {flag!r} is not NAME=W with W a number: write e.g. --weight self=2 or "
                             "--weight main=0.5")
        if name in weights:
            raise InputError(f"--weight {name} is given twice ({weights[name]:g} and {value:g}): keep one")
        weights[name] = value
    return specs, weights


@dataclass
class Source:
    name: str
    globs: list[str]
    weight: float
    files: list[str]
    filtered: bool = True
    """the quality filters act on its rows (it is one of --filters-for, or that option is unset)"""


@dataclass
class Sources:
    """The run's sources, in order, and the files they scan: source by source, each file once."""

    sources: list[Source]
    notes: list[str] = field(default_factory=list)
    """what the expansion of globs and directories left out (this run's outputs, files that are not data)"""

    @property
    def files(self) -> list[str]:
        return [path for source in self.sources for path in source.files]

    @property
    def names(self) -> list[str]:
        return [source.name for source in self.sources]

    @property
    def weighted(self) -> bool:
        """Some weight is not 1: rows are repeated or removed."""
        return any(source.weight != 1 for source in self.sources)

    def file_sources(self) -> np.ndarray:
        """The source index of each of `files`."""
        return np.array([i for i, source in enumerate(self.sources) for _ in source.files], dtype=np.int64)

    def filtered_files(self) -> list[bool]:
        """Whether the quality filters act on each of `files`."""
        return [source.filtered for source in self.sources for _ in source.files]


def resolve_sources(inputs: Sequence[str] | Mapping[str, Sequence[str]],
                    weights: Mapping[str, float] | None = None, filters_for: Sequence[str] | None = None,
                    exclude: Collection[str] = ()) -> Sources:
    """Each source's files (globs and directories expanded as for INPUT, `exclude`d real paths left out), with
    its weight and whether the quality filters act on it (`filters_for`: source names, None for all); raises
    InputError for a name, weight or glob that cannot be used, and for a file that two sources match."""
    specs = {MAIN: list(inputs)} if not isinstance(inputs, Mapping) else {k: list(v) for k, v in inputs.items()}
    weights = dict(weights or {})
    if not specs or not any(specs.values()):
        raise InputError("no input: give INPUT files or globs, or --source NAME=GLOB")
    unknown = [name for name in filters_for or () if name not in specs]
    if unknown:
        raise InputError(f"--filters-for {','.join(unknown)} names no source (sources: {', '.join(specs)}); name "
                         f"the sources the quality filters act on (the INPUT files are the source {MAIN!r})")
    for name, value in weights.items():
        if name not in specs:
            known = ", ".join(specs)
            raise InputError(f"--weight {name}={value:g} names no source (sources: {known}); name one of them, or add "
                             f"--source {name}=GLOB (the INPUT files are the source {MAIN!r})")
        if not (math.isfinite(value) and value >= 0):
            raise InputError(f"--weight {name}={value:g}: a weight must be 0 or more (0 drops the source, 1 keeps it "
                             "as is, 2 writes every row twice)")
    sources, owner, notes = [], {}, []
    for name, globs in specs.items():
        if not NAME_PATTERN.fullmatch(name):
            raise InputError(f"source name {name!r}: use letters, digits, _ . - (e.g. --source self=outputs/*.jsonl)")
        if not globs:
            raise InputError(f"--source {name} has no glob: write --source {name}=GLOB")
        try:
            files = expand_inputs(globs, notes, exclude)
        except InputError as exc:
            raise (exc if name == MAIN else InputError(f"--source {name}: {exc}")) from None
        for path in files:
            key = os.path.realpath(path)
            if key in owner:
                raise InputError(f"{path} is in two sources, {owner[key]!r} and {name!r} (INPUT files are the source "
                                 f"{MAIN!r}); a file belongs to one source: narrow one of the globs (--source NAME=GLOB)")
            owner[key] = name
        sources.append(Source(name, list(globs), float(weights.get(name, 1.0)), files,
                              filters_for is None or name in filters_for))
    return Sources(sources, notes)


def _name_key(name: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"verl-sft:weight:{name}".encode(), digest_size=8).digest(), "little")


@dataclass
class RowSources:
    """Per scan task: its source, the line in its file its first line is, and its file's place among its
    source's files; with that, an order key (sft.dataprep.scan.order_keys) names a sample's source and identity."""

    sources: Sources
    task_source: np.ndarray
    task_first_line: np.ndarray
    task_file_rank: np.ndarray

    @classmethod
    def of(cls, sources: Sources, tasks: Sequence, results: Sequence) -> RowSources:
        """`tasks` (ScanTask) and their `results` (TaskResult, in task order; `lines` read per task)."""
        file_source = sources.file_sources()
        file_rank = np.array([rank for source in sources.sources for rank in range(len(source.files))], dtype=np.int64)
        lines_before: dict[int, int] = {}
        first_line = np.zeros(len(tasks), dtype=np.int64)
        for result in sorted(results, key=lambda r: r.index):  # a file's tasks in file order
            first_line[result.index] = lines_before.get(result.file_index, 0)
            lines_before[result.file_index] = int(first_line[result.index]) + result.lines
        file_index = np.array([task.file_index for task in tasks], dtype=np.int64)
        return cls(sources, file_source[file_index], first_line, file_rank[file_index])

    def source(self, order: np.ndarray) -> np.ndarray:
        """The source index of each row (by its order key)."""
        return self.task_source[order_task(order)]

    def filtered(self, order: np.ndarray) -> np.ndarray:
        """Whether the quality filters act on each row (by its order key): its source's `filtered`."""
        return np.array([s.filtered for s in self.sources.sources], dtype=bool)[self.source(order)]

    def copies(self, order: np.ndarray, seed: int) -> np.ndarray:
        """How many times each row (by order key) is written: floor(W) of its source's weight, plus one with
        probability frac(W), drawn from the seed and the row's source, file and line."""
        order = np.asarray(order, dtype=np.uint64)
        task = order_task(order)
        source = self.task_source[task]
        weight = np.array([s.weight for s in self.sources.sources], dtype=np.float64)[source]
        whole = np.floor(weight)
        copies = whole.astype(np.int64)
        fraction = weight - whole
        if fraction.any():
            place, element = order_place(order)
            line = place + self.task_first_line[task].astype(np.uint64)
            with np.errstate(over="ignore"):  # a sample of a list of replies: its element mixed in (0 for a row)
                identity = ((self.task_file_rank[task].astype(np.uint64) << np.uint64(32)) | line) + \
                    element * np.uint64(0x9E3779B97F4A7C15)
            names = np.array([_name_key(s.name) for s in self.sources.sources], dtype=np.uint64)[source]
            draw = (mix64(identity ^ names, seed) >> np.uint64(11)).astype(np.float64) * 2.0**-53  # uniform [0, 1)
            copies += draw < fraction
        return copies


def source_table(manifest_sources: Mapping[str, dict]) -> str:
    """The per-source lines of the end-of-run summary; a `filters` column (yes/no) when --filters-for leaves
    some source unfiltered."""
    show_filters = not all(info["filtered_by_options"] for info in manifest_sources.values())
    header = f"{'source':<12} {'weight':>6} " + (f"{'filters':>7} " if show_filters else "") + \
             f"{'read':>9} {'dropped':>9} {'kept':>9} {'repeats':>9} {'removed':>9} {'train':>9} {'val':>9}"
    lines = [header]
    for name, info in manifest_sources.items():
        dropped = sum(info["rejected"].values()) + sum(info["filtered"].values()) + info["deduplicated"]
        filters = f"{'yes' if info['filtered_by_options'] else 'no':>7} " if show_filters else ""
        lines.append(f"{name:<12} {info['weight']:>6g} {filters}{info['read']:>9,} {dropped:>9,} {info['kept']:>9,} "
                     f"{info['repeats']:>9,} {info['removed_by_weight']:>9,} {info['train']:>9,} {info['val']:>9,}")
    return "\n".join(lines)
