"""Sample K solutions per problem from a model, as the JSONL rows sft/prepare_data.py reads.

Usage:
    python -m sft.generate MODEL_DIR data/problems.jsonl -o outputs/samples/run1
    python -m sft.generate Qwen/Qwen2.5-0.5B-Instruct problems.parquet -o outputs/samples/qwen \\
        --num-samples 8 --temperature 0.8 --top-p 0.95 --max-new-tokens 1024 --backend vllm
    python sft/prepare_data.py "outputs/samples/run1/samples-*.jsonl" -o data/sft --answer-key answer
    python sft/generate.py --help

Input: MODEL is a Hugging Face model directory (python -m sft.export writes one) or a hub id.
PROBLEMS is JSONL or Parquet, read as sft/evaluate.py reads it (sft/generation/problems.py): a
prompt column (`--prompt-key`, default `prompt`) or a `messages` conversation (its messages before
the last assistant message are the prompt), an id column (`--id-key`, default `id`; missing: the
row's index) and, when known, a reference answer (`--answer-key`, default `answer` if the file has
that column).

Output (in -o OUT_DIR, each file written atomically):
  samples-00000.jsonl, samples-00001.jsonl, ...  K samples of each of --shard-size problems (the
      last shard: the rest), in input order: id, prompt (the last user message), generated_solution
      (without the stop token; reasoning a model writes in its own format, a channel or its own tags,
      rewritten in <think>...</think>), num_tokens, answer (the reference, or null), model (MODEL as given),
      sample_index (0..K-1), finish_reason ("stop" or "length"), correct (graded as sft/evaluate.py
      grades, sft/generation/grading.py; null without an answer). The K samples of a problem share
      its id, so prepare_data's split by id keeps them together.
  generation.json  the settings, and at the end a summary: problems, samples, samples/s, output
      tokens/s, finish reasons, and with answers the correct-sample rate and the share of problems
      with at least one correct sample.

Resuming: rerun the same command. A shard already complete (its rows are exactly the K samples of
its problems) is kept; missing, partial or damaged shards are generated again. Each shard's random
stream is seeded from (--seed, shard index), so a shard's samples do not depend on whether the run
was interrupted (for one backend, device, dtype and --batch-size). Different settings into the same
OUT_DIR are refused: use another -o, or --overwrite to start over.

--temperature 0 is greedy decoding and needs --num-samples 1 (K greedy samples would all be the same).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python sft/generate.py`: make `import sft.x` work
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import hashlib
import json
import os
import time
from typing import Any

from sft.common.cli import HelpFormatter
from sft.common.errors import EXIT_OK, UserError, exit_on_user_error
from sft.common.files import write_json_atomic, write_text_atomic
from sft.generation.backend import (
    Generation,
    Generator,
    Sampling,
    add_backend_arguments,
    check_setup,
    derive_seed,
    prompt_settings,
    torch_threads,
)
from sft.generation.grading import grade
from sft.generation.problems import EvalSample, read_problem_rows, samples_from_rows

SETTINGS_FILE = "generation.json"
SHARD_GLOB = "samples-*.jsonl"
DEFAULT_ANSWER_KEY = "answer"
FORMAT_VERSION = 1
CHECKED_SETTINGS = ("format_version", "model", "problems_sha256", "num_problems", "num_samples", "temperature",
                    "top_p", "max_new_tokens", "seed", "shard_size", "prompt_key", "id_key", "answer_key",
                    "system_prompt", "limit", "template_kwargs", "reasoning_prompt")
"""The settings that decide what the samples are; a rerun into the same OUT_DIR must repeat them.
(backend, device, dtype, batch size and threads are recorded but not checked: they decide how.)"""


class GenerateError(UserError):
    """Bad input, settings or output directory; the message names the file (and line) and the fix."""


def shard_path(output_dir: Path, shard: int) -> Path:
    """OUT_DIR/samples-00000.jsonl for shard 0."""
    return output_dir / f"samples-{shard:05d}.jsonl"


# --------------------------------------------------------------------------- problems and settings


def load_problems(problems: Path, *, prompt_key: str, id_key: str, answer_key: str | None,
                  system_prompt: str | None, limit: int | None) -> tuple[list[EvalSample], str | None]:
    """(the problems, the answer column used or None); read as sft/evaluate.py reads its data.

    Without `answer_key`, the column `answer` is used if any row has it. A problem whose answer is
    missing is generated all the same (its rows have answer and correct null).
    """
    rows = read_problem_rows(problems, limit)
    if answer_key is None and any(DEFAULT_ANSWER_KEY in row for _, row in rows):
        answer_key = DEFAULT_ANSWER_KEY
    elif answer_key is not None and not any(answer_key in row for _, row in rows):
        fields = sorted({key for _, row in rows for key in row})
        raise GenerateError(f"{problems}: no row has the --answer-key column {answer_key!r} (fields: "
                            f"{', '.join(fields) or 'none'}). Name the answer column, or drop --answer-key.")
    samples = samples_from_rows(rows, answer_key=answer_key, prompt_key=prompt_key, id_key=id_key,
                                system_prompt=system_prompt)
    for sample in samples:
        if answer_key is None or sample.skip_reason is not None:  # graded only against a given answer
            sample.reference = sample.reference_answer = None
    return _distinct_problems(samples, problems), answer_key


def _distinct_problems(samples: list[EvalSample], problems: Path) -> list[EvalSample]:
    """One sample per problem id: seed-format data repeats a problem's row for each of its solutions.

    A repeated id with another prompt is an error: the samples of two problems would share an id,
    and prepare_data's split and --max-per-problem would take them for one.
    """
    first: dict[Any, EvalSample] = {}
    for sample in samples:
        key = json.dumps(sample.id, sort_keys=True, default=str)
        seen = first.setdefault(key, sample)
        if seen is not sample and seen.messages != sample.messages:
            raise GenerateError(
                f"{problems}: rows {seen.index + 1} and {sample.index + 1} have the same id {sample.id!r} but different "
                "prompts; give each problem its own id (--id-key names the id column)")
    distinct = list(first.values())
    if len(distinct) < len(samples):
        print(f"{problems}: {len(samples):,} rows are {len(distinct):,} problems (rows repeating a problem's id and "
              "prompt, e.g. one per solution, are sampled once)", file=sys.stderr)
    return distinct


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _check_settings(output_dir: Path, settings: dict, overwrite: bool) -> dict:
    """Refuse to mix settings in one OUT_DIR; with `overwrite`, remove the earlier run's files first.
    Returns the earlier run's generation.json ({} when there is none)."""
    recorded_path = output_dir / SETTINGS_FILE
    shards = sorted(output_dir.glob(SHARD_GLOB)) if output_dir.is_dir() else []
    if overwrite:
        for path in [*shards, recorded_path]:
            path.unlink(missing_ok=True)
        return {}
    if not recorded_path.is_file():
        if shards:
            raise GenerateError(f"{output_dir} holds {len(shards)} samples-*.jsonl file(s) but no {SETTINGS_FILE}, "
                                "so they cannot be checked. Use another -o, or --overwrite to start over.")
        return {}
    try:
        previous = json.loads(recorded_path.read_text())
        recorded = previous["settings"]
        if not isinstance(recorded, dict):
            raise TypeError("'settings' is not an object")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise GenerateError(
            f"{recorded_path}: unreadable ({exc}). Use another -o, or --overwrite to start over."
        ) from None
    for key in CHECKED_SETTINGS:
        if recorded.get(key) != settings[key]:
            what = "the problems file's content (sha256)" if key == "problems_sha256" else key
            raise GenerateError(
                f"{output_dir} holds samples made with different settings: {what} was {recorded.get(key)!r}, "
                f"now {settings[key]!r} ({recorded_path}). Use another -o for the new settings, or --overwrite "
                "to delete the samples there and start over."
            )
    return previous


# --------------------------------------------------------------------------- shards


def _expected_keys(problems: list[EvalSample], k: int) -> list[tuple[Any, int, str]]:
    return [(p.id, j, p.messages[-1]["content"]) for p in problems for j in range(k)]


def read_shard(path: Path, problems: list[EvalSample], k: int) -> tuple[list[dict] | None, str]:
    """(the rows of a complete shard, "") or (None, why it must be generated again)."""
    if not path.is_file():
        return None, "missing"
    try:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return None, f"unreadable ({exc})"
    expected = _expected_keys(problems, k)
    if len(rows) != len(expected):
        return None, f"has {len(rows)} of its {len(expected)} rows"
    for line, (row, key) in enumerate(zip(rows, expected), start=1):
        if not isinstance(row, dict) or (row.get("id"), row.get("sample_index"), row.get("prompt")) != key:
            return None, f"line {line} is not sample {key[1]} of problem {key[0]!r}"
    return rows, ""


def _complete_shards(output_dir: Path, shards: list[tuple[int, list[EvalSample]]],
                     k: int) -> tuple[dict[int, list[dict]], list[tuple[int, list[EvalSample]]]]:
    """({shard index: rows} of the shards already complete, the (index, problems) of the others)."""
    rows: dict[int, list[dict]] = {}
    missing = []
    for index, problems in shards:
        kept, why = read_shard(shard_path(output_dir, index), problems, k)
        if kept is None:
            missing.append((index, problems))
            if why != "missing":
                print(f"{shard_path(output_dir, index)} {why}: generating it again", file=sys.stderr)
        else:
            rows[index] = kept
    return rows, missing


def shard_rows(problems: list[EvalSample], outputs: list[list[Generation]], model: str) -> list[dict]:
    """The output rows of one shard: each problem's samples in order, graded when its answer is known."""
    rows = []
    for problem, generations in zip(problems, outputs):
        for index, generation in enumerate(generations):
            known = problem.reference_answer is not None
            rows.append({
                "id": problem.id,
                "prompt": problem.messages[-1]["content"],
                "generated_solution": generation.text,
                "num_tokens": generation.output_tokens,
                "answer": problem.reference,
                "model": model,
                "sample_index": index,
                "finish_reason": generation.finish_reason,
                "correct": grade(problem, generation)["correct"] if known else None,
            })
    return rows


def _generate_shards(generator: Generator, shards: list[tuple[int, list[EvalSample]]], output_dir: Path,
                     sampling: Sampling, *, max_new_tokens: int, model: str,
                     progress: bool) -> tuple[dict[int, list[dict]], float]:
    """Generate and write each (index, problems) shard; ({shard index: rows}, seconds spent generating)."""
    from tqdm import tqdm

    written: dict[int, list[dict]] = {}
    total = sum(len(problems) for _, problems in shards) * sampling.num_samples
    tokens, started = 0, time.time()
    with tqdm(total=total, desc="sampling", unit="sample", disable=not progress) as bar:
        for index, problems in shards:
            shard_sampling = Sampling(sampling.num_samples, sampling.temperature, sampling.top_p,
                                      derive_seed(sampling.seed, index))
            prompts = generator.prompt_ids([p.messages for p in problems])
            outputs = generator.generate(prompts, shard_sampling, max_new_tokens=max_new_tokens, bar=bar)
            rows = shard_rows(problems, outputs, model)
            write_text_atomic(shard_path(output_dir, index),
                              "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            written[index] = rows
            tokens += sum(r["num_tokens"] for r in rows)
            bar.set_postfix_str(f"{tokens / max(time.time() - started, 1e-9):.0f} tokens/s")
    return written, time.time() - started


# --------------------------------------------------------------------------- summary


def summarize(rows: list[dict], k: int, *, seconds: float, generated: list[dict], shards: int,
              reused: int) -> dict:
    """The run's summary over all shards' rows (throughput over the samples generated by this run)."""
    reasons: dict[str, int] = {}
    for row in rows:
        reasons[row["finish_reason"]] = reasons.get(row["finish_reason"], 0) + 1
    problems = [rows[i : i + k] for i in range(0, len(rows), k)]
    graded = [p for p in problems if p[0]["correct"] is not None]
    made_tokens = sum(r["num_tokens"] for r in generated)
    return {
        "problems": len(problems),
        "samples": len(rows),
        "samples_per_problem": k,
        "shards": shards,
        "shards_reused": reused,
        "shards_generated": shards - reused,
        "samples_generated": len(generated),
        "generation_seconds": round(seconds, 3),
        "samples_per_second": round(len(generated) / seconds, 2) if seconds > 0 else None,
        "output_tokens_per_second": round(made_tokens / seconds, 1) if seconds > 0 else None,
        "finish_reasons": reasons,
        "mean_num_tokens": sum(r["num_tokens"] for r in rows) / len(rows),
        "problems_with_answer": len(graded),
        "correct_sample_rate": sum(r["correct"] for p in graded for r in p) / (k * len(graded)) if graded else None,
        "solved_problem_rate": sum(any(r["correct"] for r in p) for p in graded) / len(graded) if graded else None,
    }


def format_summary(summary: dict, output_dir: Path) -> str:
    s = summary
    lines = [
        f"{s['samples']:,} samples of {s['problems']:,} problems ({s['samples_per_problem']} each) in {s['shards']} "
        f"shard(s): {s['shards_reused']} kept from an earlier run, {s['shards_generated']} generated",
    ]
    if s["samples_generated"]:
        lines.append(f"generated {s['samples_generated']:,} samples in {s['generation_seconds']:.1f} s: "
                     f"{s['samples_per_second']} samples/s, {s['output_tokens_per_second']} output tokens/s")
    reasons = ", ".join(f"{name} {count:,}" for name, count in sorted(s["finish_reasons"].items()))
    lines.append(f"finish reasons: {reasons}; mean {s['mean_num_tokens']:.1f} tokens per sample")
    if s["problems_with_answer"]:
        lines.append(f"correct samples: {100 * s['correct_sample_rate']:.1f}%; problems with a correct sample: "
                     f"{100 * s['solved_problem_rate']:.1f}% (of {s['problems_with_answer']:,} with an answer)")
    else:
        lines.append("no reference answers (--answer-key): samples not graded")
    lines.append(f"wrote {output_dir}/samples-*.jsonl and {output_dir / SETTINGS_FILE}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- generation


def generate(
    model: str,
    problems: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    num_samples: int = 4,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 512,
    seed: int = 0,
    batch_size: int = 16,
    backend: str = "transformers",
    device: str = "auto",
    dtype: str = "auto",
    num_threads: int | None = None,
    limit: int | None = None,
    shard_size: int = 256,
    prompt_key: str = "prompt",
    id_key: str = "id",
    answer_key: str | None = None,
    system_prompt: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    chat_settings: str | os.PathLike | None = None,
    reasoning: str = "auto",
) -> dict:
    """Write the shards and generation.json of the module doc into `output_dir`; return generation.json's content.

    The arguments mirror the CLI flags. Shards already complete are kept (see "Resuming").
    Raises GenerateError (a UserError) for bad input or settings, before anything is generated.
    """
    sampling = Sampling(num_samples, temperature, top_p, seed)
    if shard_size < 1:
        raise GenerateError(f"--shard-size must be at least 1, not {shard_size}.")
    check_setup(model, backend, dtype, max_new_tokens, batch_size)
    problems_path, output_dir = Path(problems), Path(output_dir)
    items, answer_key = load_problems(problems_path, prompt_key=prompt_key, id_key=id_key, answer_key=answer_key,
                                      system_prompt=system_prompt, limit=limit)
    template, reasoning_on, prompting = prompt_settings(problems_path, chat_settings, reasoning,
                                                        [p.solution for p in items])
    settings = {
        "format_version": FORMAT_VERSION, "model": str(model), "problems": str(problems_path.resolve()),
        "problems_bytes": problems_path.stat().st_size, "problems_sha256": _sha256(problems_path),
        "num_problems": len(items), "num_samples": num_samples, "temperature": temperature, "top_p": top_p,
        "max_new_tokens": max_new_tokens, "seed": seed, "shard_size": shard_size, "prompt_key": prompt_key,
        "id_key": id_key, "answer_key": answer_key, "system_prompt": system_prompt, "limit": limit, **prompting,
    }
    previous = _check_settings(output_dir, settings, overwrite)
    shards = [(i, items[start : start + shard_size]) for i, start in enumerate(range(0, len(items), shard_size))]
    rows, missing = _complete_shards(output_dir, shards, num_samples)
    if progress:
        print(f"{len(items):,} problems x {num_samples} samples in {len(shards)} shard(s) of up to {shard_size}: "
              f"{len(rows)} complete (kept), {len(missing)} to generate", file=sys.stderr)
    run = {"backend": backend, "device": device, "dtype": dtype, "batch_size": batch_size, "num_threads": num_threads}
    if not missing and isinstance(previous.get("run"), dict):  # nothing to generate: the run that made the samples
        run = previous["run"]
    record = {"settings": settings, "run": run, "status": "running"}
    write_json_atomic(output_dir / SETTINGS_FILE, record)

    generated: dict[int, list[dict]] = {}
    seconds = 0.0
    if missing:
        generator = Generator(model, backend=backend, device=device, dtype=dtype, batch_size=batch_size,
                              chat_settings=template, reasoning=reasoning_on)
        run.update(device=generator.device, dtype=generator.dtype_name)
        with torch_threads(num_threads, generator.device) as threads:
            run["num_threads"] = threads if generator.device == "cpu" else None
            generated, seconds = _generate_shards(generator, missing, output_dir, sampling,
                                                  max_new_tokens=max_new_tokens, model=str(model), progress=progress)
        rows.update(generated)
    all_rows = [row for index in sorted(rows) for row in rows[index]]
    summary = summarize(all_rows, num_samples, seconds=seconds,
                        generated=[r for shard in generated.values() for r in shard], shards=len(shards),
                        reused=len(shards) - len(missing))
    record.update(status="complete", summary=summary)
    write_json_atomic(output_dir / SETTINGS_FILE, record)
    return record


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sft.generate",
        description="Sample K solutions per problem from a model and write them as JSONL shards that "
        "sft/prepare_data.py reads (resumable: rerun the same command).",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("model", help="Hugging Face model directory (python -m sft.export writes one) or hub id")
    parser.add_argument("problems", help="JSONL or Parquet: a prompt column (--prompt-key) or a 'messages' column")
    parser.add_argument("--output-dir", "-o", required=True,
                        help="directory for samples-NNNNN.jsonl and generation.json (rerun to resume)")
    parser.add_argument("--num-samples", "-k", type=int, default=4, metavar="K", help="samples per problem")
    parser.add_argument("--temperature", type=float, default=1.0,
                        help="sampling temperature; 0 = greedy (then --num-samples must be 1)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling, in (0, 1]; 1 = off")
    parser.add_argument("--seed", type=int, default=0, help="seed; shard i samples with a seed made of (seed, i)")
    add_backend_arguments(parser)
    parser.add_argument("--limit", type=int, default=None, help="only the first N problems (default: all)")
    parser.add_argument("--shard-size", type=int, default=256, help="problems per output shard (the unit of resuming)")
    parser.add_argument("--prompt-key", default="prompt", help="prompt column for data without 'messages'")
    parser.add_argument("--id-key", default="id", help="problem id column (missing: the row's index)")
    parser.add_argument("--answer-key", default=None,
                        help="reference answer column (bare or a full solution) to grade against; "
                        "default: 'answer' if the file has it, else the samples are not graded")
    parser.add_argument("--system-prompt", default=None,
                        help="system message put first in every prompt (a row with a different one is an error)")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete OUT_DIR's samples and generation.json from a run with other settings, "
                        "and start over")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def _run(args: argparse.Namespace) -> int:
    record = generate(
        args.model, args.problems, args.output_dir, num_samples=args.num_samples, temperature=args.temperature,
        top_p=args.top_p, max_new_tokens=args.max_new_tokens, seed=args.seed, batch_size=args.batch_size,
        backend=args.backend, device=args.device, dtype=args.dtype, num_threads=args.num_threads or None,
        limit=args.limit, shard_size=args.shard_size, prompt_key=args.prompt_key, id_key=args.id_key,
        answer_key=args.answer_key, system_prompt=args.system_prompt, overwrite=args.overwrite,
        progress=not args.no_progress, chat_settings=args.chat_settings, reasoning=args.reasoning,
    )
    print(format_summary(record["summary"], Path(args.output_dir)))
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return exit_on_user_error(lambda: _run(args), "error")


if __name__ == "__main__":
    sys.exit(main())
