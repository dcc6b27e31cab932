"""Evaluate a model on held-out math problems: generate, extract the final answer, grade it.

Usage:
    python -m sft.evaluate MODEL_DIR data/sft/val.parquet -o outputs/eval/tuned
    python -m sft.evaluate MODEL_DIR data/raw/val.jsonl -o outputs/eval/base --limit 200 --max-new-tokens 1024
    python -m sft.evaluate MODEL_DIR val.parquet -o outputs/eval/tuned --baseline outputs/eval/base/summary.json
    python -m sft.evaluate MODEL_DIR val.parquet -o outputs/eval/k8 --num-samples 8 --temperature 0.8  # pass@k, maj@8
    python sft/evaluate.py --help

Grading: an output is correct when what it concludes is the reference answer (math-verify
equivalence): a `\\boxed{}`, "the answer is", an `Answer:` line, bold, a closing equation or a
concluding sentence ("Therefore, there are 12 ..."), found by sft/text/math_answers.py's
find_conclusion (`--strict-grading`: the standard forms only). The summary also reports, apart,
how many outputs state a final answer in a standard form: a format, not correctness.

Input (one row per problem):
  * Parquet or JSONL with a `messages` column (as sft/prepare_data.py writes for verl): the
    messages before the last assistant message are the prompt (a system message included),
    the last assistant message is the reference solution.
  * Parquet or JSONL with a prompt column (`--prompt-key`, default `prompt`; the seed format
    `{"id", "prompt", "generated_solution", ...}`): the prompt is one user message, the
    reference solution is the `--solution-key` column (default `generated_solution`).
  The reference answer is the final answer the reference solution states (sft/text/math_answers.py),
  or, with `--answer-key COL`, the value of that column (a bare answer or a full solution).
  A row whose reference states no final answer is not graded; it is listed as skipped.
  (sft/generation/problems.py reads them, for sft/generate.py too.)

Generation: the model's chat template with the generation prompt, greedy decoding, at most
`--max-new-tokens` new tokens, stopping at EOS (the generation config's and tokenizer's EOS
plus the token that closes an assistant turn in the chat template). `--backend transformers`
(default) decodes in batches with left padding on CPU or GPU (`--device auto`);
`--backend vllm` uses vLLM when it is installed. Both sit behind `Generator` (loaded once,
greedy or sampled by a `Sampling`) in sft/generation/backend.py, which sft/generate.py uses too.

K samples (`--num-samples K`, K > 1): after the greedy pass (its accuracy and results.jsonl
are unchanged), K solutions per problem are sampled (`--temperature`, default 1.0; `--top-p`,
default 1.0; `--seed`, default 0) and graded the same way: pass@1 (the mean correct rate),
pass@k for k = K and the powers of two below it (the unbiased estimator of Chen et al. 2021,
1 - C(n-c, k)/C(n, k)), and maj@K (the answer most samples give, answers grouped by
math-verify equivalence; samples without an answer do not vote; a tie goes to the answer that
came first; a problem with no votes counts as wrong). Grading and these metrics: sft/generation/grading.py;
the Markdown tables: sft/generation/reports.py.

Output (in --output-dir, each file written atomically):
  results.jsonl   one record per input row: prompt, output, predicted answer and the rule that
                  found it (answer_rule), reference answer, correct, has_final_answer (a standard
                  form), truncated, output_tokens (or status "skipped").
  summary.json    accuracy, final-answer rate, truncation rate (hit --max-new-tokens without
                  EOS), mean output length in tokens, counts, and the settings used.
  summary.md      the same as a Markdown table (and comparison.md with --baseline).
  samples.jsonl   with --num-samples K > 1, one record per graded problem: its K samples (output,
                  predicted answer, rule, correct, has_final_answer, truncated, output_tokens),
                  num_correct, majority_answer, majority_votes, majority_correct. summary.json then
                  adds samples_per_problem, pass_at_k ({"1": .., "2": .., "K": ..}), maj_at_k,
                  sampled_final_answer_rate, sampled_truncation_rate, sampled_mean_output_tokens,
                  temperature, top_p, seed, sampling_seconds, sampled_output_tokens_per_second.

As a library (the demo uses it this way):
    from sft.evaluate import evaluate, compare_summaries
    base = evaluate("outputs/tiny-model", "data/val.parquet", "outputs/eval/base")
    tuned = evaluate("outputs/model", "data/val.parquet", "outputs/eval/tuned")
    print(compare_summaries(base, tuned))
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python sft/evaluate.py`: make `import sft.x` work
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import json
import os
import time
from typing import Any

from sft.common.cli import HelpFormatter
from sft.common.errors import EXIT_OK, EXIT_REFUSED, UserError
from sft.common.files import directory_problem, write_text_atomic, writing
from sft.generation.backend import (
    GREEDY,
    Generation,
    Generator,
    Sampling,
    add_backend_arguments,
    check_setup,
    prompt_settings,
    torch_threads,
)
from sft.generation.grading import grade, sampled_record, skipped_record, summarize, summarize_sampled
from sft.generation.problems import EvalSample, load_samples
from sft.generation.reports import compare_summaries, format_summary

RESULTS_FILE = "results.jsonl"
SAMPLES_FILE = "samples.jsonl"
SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
COMPARISON_MD = "comparison.md"


class EvaluationError(UserError):
    """Bad evaluation settings or data; the message names the file (and line) and the fix.

    Reading the data and loading the model raise their own UserErrors (sft/generation/problems.py's
    ProblemsError, sft/generation/backend.py's GenerationError); main() reports them all the same way."""


# --------------------------------------------------------------------------- evaluation


def _sampling(num_samples: int, temperature: float | None, top_p: float | None, seed: int | None) -> Sampling | None:
    """The sampled pass of --num-samples K > 1 (temperature 1.0 unless given); None for K = 1."""
    if num_samples == 1:
        given = [name for name, value in (("--temperature", temperature), ("--top-p", top_p), ("--seed", seed))
                 if value is not None]
        if given:
            raise EvaluationError(f"{', '.join(given)} set the sampled solutions of --num-samples K > 1; with one "
                                  "sample the evaluation is greedy. Add --num-samples 4 (say), or drop them.")
        return None
    return Sampling(num_samples, 1.0 if temperature is None else temperature, 1.0 if top_p is None else top_p,
                    0 if seed is None else seed)


def _write_outputs(output_dir: Path, records: list[dict], summary: dict, sampled: list[dict] | None) -> None:
    """results.jsonl, samples.jsonl (sampled solutions; removed when there are none), summary.md and
    summary.json, each written atomically."""
    write_text_atomic(output_dir / RESULTS_FILE, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    if sampled is not None:
        write_text_atomic(output_dir / SAMPLES_FILE, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in sampled))
    else:  # an earlier run's samples would not belong to this summary
        (output_dir / SAMPLES_FILE).unlink(missing_ok=True)
    write_text_atomic(output_dir / SUMMARY_MD, format_summary(summary))
    write_text_atomic(output_dir / SUMMARY_JSON, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")


def _graded_samples(data_path: Path, **reading: Any) -> tuple[list[EvalSample], list[EvalSample]]:
    """(every sample, the ones with a reference answer); none with one is an error."""
    samples = load_samples(data_path, **reading)
    to_generate = [s for s in samples if s.skip_reason is None]
    if not to_generate:
        reasons = sorted({s.skip_reason for s in samples})
        raise EvaluationError(f"{data_path}: no row has a reference answer to grade against ({'; '.join(reasons)}).")
    return samples, to_generate


def evaluate(
    model_dir: str | os.PathLike,
    data_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    answer_key: str | None = None,
    prompt_key: str = "prompt",
    solution_key: str = "generated_solution",
    system_prompt: str | None = None,
    max_new_tokens: int = 512,
    batch_size: int = 16,
    limit: int | None = None,
    backend: str = "transformers",
    device: str = "auto",
    dtype: str = "auto",
    num_threads: int | None = None,
    progress: bool = True,
    strict_grading: bool = False,
    num_samples: int = 1,
    temperature: float | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    chat_settings: str | os.PathLike | None = None,
    reasoning: str = "auto",
) -> dict:
    """Evaluate `model_dir` on `data_path`, write results.jsonl, summary.json and summary.md, return the summary.

    The arguments mirror the CLI flags (see the module doc). `num_threads` sets torch's CPU
    threads for the generation only (None: leave as is). `num_samples` > 1 adds a sampled pass
    (`temperature` default 1.0, `top_p` 1.0, `seed` 0; they are errors with one sample): samples.jsonl,
    and pass@k and maj@K in the summary. The returned summary is what summary.json holds: rates
    are fractions of the graded rows (None when nothing was graded).
    Raises EvaluationError for bad input or setup, before anything is written.
    """
    model_dir, data_path, output_dir = Path(model_dir), Path(data_path), Path(output_dir)
    check_setup(model_dir, backend, dtype, max_new_tokens, batch_size)
    if directory_problem(output_dir):  # before any generation: the outputs must have somewhere to go
        raise EvaluationError(f"--output-dir {output_dir}: {directory_problem(output_dir)}. Choose a directory you "
                              "can write to.")
    sampling = _sampling(num_samples, temperature, top_p, seed)
    samples, to_generate = _graded_samples(data_path, answer_key=answer_key, prompt_key=prompt_key,
                                           solution_key=solution_key, system_prompt=system_prompt, limit=limit)
    settings, reasoning_on, prompting = prompt_settings(data_path, chat_settings, reasoning,
                                                        [s.solution for s in to_generate])
    generator = Generator(model_dir, backend=backend, device=device, dtype=dtype, batch_size=batch_size,
                          chat_settings=settings, reasoning=reasoning_on)
    prompts = generator.prompt_ids([s.messages for s in to_generate])
    with torch_threads(num_threads, generator.device) as threads:
        greedy, seconds = _timed_generate(generator, prompts, GREEDY, max_new_tokens, progress, "generating")
        if sampling is not None:
            outputs, sampling_seconds = _timed_generate(generator, prompts, sampling, max_new_tokens, progress,
                                                        f"sampling {sampling.num_samples} per problem")
    by_index = {s.index: grade(s, g[0], strict=strict_grading) for s, g in zip(to_generate, greedy)}
    records = [by_index.get(s.index) or skipped_record(s) for s in samples]
    output_tokens = sum(g[0].output_tokens for g in greedy)
    summary = summarize(
        records,
        model=str(model_dir.resolve()),
        data=str(data_path.resolve()),
        backend=backend,
        device=generator.device,
        dtype=generator.dtype_name,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        num_threads=threads if generator.device == "cpu" else None,
        limit=limit,
        answer_key=answer_key,
        system_prompt=system_prompt,
        grader="strict" if strict_grading else "lenient",
        **prompting,
        generation_seconds=round(seconds, 3),
        output_tokens_per_second=round(output_tokens / seconds, 1) if seconds > 0 else None,
    )
    sampled = None
    if sampling is not None:
        sampled = _sampled_pass(summary, to_generate, outputs, sampling, sampling_seconds, strict_grading)
    with writing(f"the evaluation's results to {output_dir}", "Free some space there, or choose another -o."):
        _write_outputs(output_dir, records, summary, sampled)
    return summary


def _sampled_pass(summary: dict, to_generate: list, outputs: list[list[Generation]], sampling: Sampling,
                  seconds: float, strict: bool) -> list[dict]:
    """The sampled pass's records (samples.jsonl); its pass@k, maj@K and settings added to `summary`."""
    sampled = [sampled_record(s, g, strict=strict) for s, g in zip(to_generate, outputs)]
    sampled_tokens = sum(x.output_tokens for g in outputs for x in g)
    summary.update(summarize_sampled(sampled, sampling.num_samples), temperature=sampling.temperature,
                   top_p=sampling.top_p, seed=sampling.seed, sampling_seconds=round(seconds, 3),
                   sampled_output_tokens_per_second=round(sampled_tokens / seconds, 1) if seconds > 0 else None)
    return sampled


def _timed_generate(generator: Generator, prompts: list[list[int]], sampling: Sampling, max_new_tokens: int,
                    progress: bool, what: str) -> tuple[list[list[Generation]], float]:
    """(the generator's outputs, seconds taken), under a progress bar counting outputs."""
    from tqdm import tqdm

    started = time.time()
    with tqdm(total=len(prompts) * sampling.num_samples, desc=what, unit="sample", disable=not progress) as bar:
        outputs = generator.generate(prompts, sampling, max_new_tokens=max_new_tokens, bar=bar)
    return outputs, time.time() - started


# --------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m sft.evaluate",
        description="Generate answers to held-out math problems, grade their final answers, and summarise.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("model", help="Hugging Face model directory (e.g. the output of python -m sft.export)")
    parser.add_argument("data", help="val Parquet or JSONL: a 'messages' column, or a prompt column (see --prompt-key)")
    parser.add_argument("--output-dir", "-o", required=True, help="directory for results.jsonl, summary.json, summary.md")
    parser.add_argument(
        "--answer-key", default=None,
        help="column holding the reference answer (bare or a full solution); default: the final answer "
        "of the reference solution (last assistant message, or --solution-key)",
    )
    parser.add_argument("--prompt-key", default="prompt", help="prompt column for data without 'messages'")
    parser.add_argument(
        "--solution-key", default="generated_solution", help="reference solution column for data without 'messages'"
    )
    parser.add_argument(
        "--system-prompt", default=None,
        help="system message put first in every prompt; must match training (a row with a different one is an error)",
    )
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N rows (default: all rows)")
    add_backend_arguments(parser)
    parser.add_argument(
        "--num-samples", type=int, default=1, metavar="K",
        help="K > 1: also sample K solutions per problem and report pass@k and maj@K beside the greedy accuracy "
        "(samples.jsonl); 1 = greedy only",
    )
    parser.add_argument("--temperature", type=float, default=None,
                        help="sampling temperature of the K samples (default 1.0; only with --num-samples > 1)")
    parser.add_argument("--top-p", type=float, default=None,
                        help="nucleus sampling of the K samples, in (0, 1] (default 1.0 = off; only with --num-samples > 1)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the K samples (default 0; only with --num-samples > 1)")
    parser.add_argument(
        "--baseline", default=None, metavar="SUMMARY_JSON",
        help="summary.json of an earlier evaluation (e.g. the base model): print and write a before/after table",
    )
    parser.add_argument(
        "--strict-grading", action="store_true",
        help="count an answer as correct only when stated in a standard form (\\boxed{...}, 'the answer is ...', "
        "'#### ...'); default: grade what the output concludes, wherever it states it",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        baseline = None
        if args.baseline:
            try:
                baseline = json.loads(Path(args.baseline).read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise EvaluationError(f"--baseline {args.baseline}: cannot read a summary.json ({exc}).") from None
        summary = evaluate(
            args.model, args.data, args.output_dir,
            answer_key=args.answer_key, prompt_key=args.prompt_key, solution_key=args.solution_key,
            system_prompt=args.system_prompt, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
            limit=args.limit, backend=args.backend, device=args.device, dtype=args.dtype,
            num_threads=args.num_threads or None, progress=not args.no_progress, strict_grading=args.strict_grading,
            num_samples=args.num_samples, temperature=args.temperature, top_p=args.top_p, seed=args.seed,
            chat_settings=args.chat_settings, reasoning=args.reasoning,
        )
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    print(format_summary(summary))
    if baseline is not None:
        table = compare_summaries(baseline, summary)
        write_text_atomic(Path(args.output_dir) / COMPARISON_MD, table)
        print(table)
    written = [RESULTS_FILE] + ([SAMPLES_FILE] if "pass_at_k" in summary else []) + [SUMMARY_JSON, SUMMARY_MD]
    print(f"wrote {', '.join(written)} to {args.output_dir} "
          f"({summary['generation_seconds']:.1f}s generating on {summary['device']})")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
