"""Evaluate a model on held-out math problems: generate, extract the final answer, grade it.

Usage:
    python -m sft.evaluate MODEL_DIR data/sft/val.parquet -o outputs/eval/tuned
    python -m sft.evaluate MODEL_DIR data/raw/val.jsonl -o outputs/eval/base --limit 200 --max-new-tokens 1024
    python -m sft.evaluate MODEL_DIR val.parquet -o outputs/eval/tuned --baseline outputs/eval/base/summary.json
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

Generation: the model's chat template with the generation prompt, greedy decoding, at most
`--max-new-tokens` new tokens, stopping at EOS (the generation config's and tokenizer's EOS
plus the token that closes an assistant turn in the chat template). `--backend transformers`
(default) decodes in batches with left padding on CPU or GPU (`--device auto`);
`--backend vllm` uses vLLM when it is installed.

Output (in --output-dir, each file written atomically):
  results.jsonl   one record per input row: prompt, output, predicted answer and the rule that
                  found it (answer_rule), reference answer, correct, has_final_answer (a standard
                  form), truncated, output_tokens (or status "skipped").
  summary.json    accuracy, final-answer rate, truncation rate (hit --max-new-tokens without
                  EOS), mean output length in tokens, counts, and the settings used.
  summary.md      the same as a Markdown table (and comparison.md with --baseline).

As a library (the demo uses it this way):
    from sft.evaluate import evaluate, compare_summaries
    base = evaluate("outputs/tiny-model", "data/val.parquet", "outputs/eval/base")
    tuned = evaluate("outputs/model", "data/val.parquet", "outputs/eval/tuned")
    print(compare_summaries(base, tuned))
"""

from __future__ import annotations

import sys
from pathlib import Path

import os

# OpenMP threads that spin while they wait make CPU decoding many times slower as soon as another
# process wants the same cores (seen on the shared 2-core development machine; there is no
# benchmark of it in this repository). Sleeping waits cost little when the machine is idle. It only takes
# effect if torch is not imported yet (the CLI); set OMP_WAIT_POLICY yourself to choose.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

if __package__ in (None, ""):  # run as `python sft/evaluate.py`: make `import sft.x` work
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import json
import math
import time
from dataclasses import dataclass
from typing import Any, NamedTuple

from sft.common.cli import HelpFormatter
from sft.common.dtypes import DTYPES, torch_dtype
from sft.common.errors import UserError
from sft.common.files import write_text_atomic
from sft.dataprep.jsonl_io import (
    REASON_MALFORMED_JSON,
    REASON_NOT_AN_OBJECT,
    REASON_TRUNCATED_LAST_LINE,
    BadLine,
    InputError,
    JsonlReader,
)
from sft.text.math_answers import extract_final_answer, reference_answer
from sft.text.math_answers import grade as grade_solution

BACKENDS = ("transformers", "vllm")
RESULTS_FILE = "results.jsonl"
SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
COMPARISON_MD = "comparison.md"


class EvaluationError(UserError):
    """Bad input or setup; the message names the file (and line) and the fix."""


# --------------------------------------------------------------------------- data


@dataclass
class EvalSample:
    """One input row: the prompt to send and the answer to grade against."""

    index: int
    """0-based row number in the data file (JSONL: counting non-blank lines)."""
    id: Any
    """The row's `id` field, or `index` when there is none."""
    messages: list[dict]
    """Prompt conversation, ending with the last user turn (system message first, if any)."""
    reference: str | None
    """The reference as given: the --answer-key value or the reference solution."""
    reference_answer: str | None
    """The final answer graded against; None when the row is skipped."""
    skip_reason: str | None = None


def _plain(value: Any) -> Any:
    """pandas/numpy values as plain Python (lists, dicts, str, int, float, None)."""
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        value = value.tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _bad_line_error(bad: BadLine) -> EvaluationError:
    """The error for the first unusable line of a JSONL file, naming its file and line."""
    if bad.reason == REASON_NOT_AN_OBJECT:  # the reader's detail ends "found a JSON <type>"
        return EvaluationError(f"{bad.path}:{bad.line}: expected a JSON object, found {bad.detail.rsplit(' ', 1)[-1]}.")
    if bad.reason in (REASON_MALFORMED_JSON, REASON_TRUNCATED_LAST_LINE):
        try:  # re-parsed for the parser's own words and column, as the reader parsed the line
            json.loads((bad.raw or "").lstrip("\ufeff"), strict=False)
        except json.JSONDecodeError as exc:
            return EvaluationError(
                f"{bad.path}:{bad.line}: invalid JSON ({exc.msg} at column {exc.colno}). "
                "Each line must be one JSON object; fix or remove that line."
            )
    return EvaluationError(f"{bad.message()}.")  # not UTF-8, or an unpaired surrogate escape


def _read_jsonl(path: Path) -> list[tuple[str, dict]]:
    """(FILE:LINE, row) pairs, read as sft/prepare_data.py reads JSONL (sft/dataprep/jsonl_io.py:
    blank lines skipped, a byte order mark and CRLF line ends accepted)."""
    rows = []
    try:
        for chunk in JsonlReader(path):
            if chunk.bad:
                raise _bad_line_error(chunk.bad[0])
            rows.extend((f"{path}:{line}", row) for line, row in zip(chunk.lines, chunk.rows))
    except InputError as exc:
        raise EvaluationError(str(exc)) from None
    return rows


def _read_rows(path: Path) -> list[tuple[str, dict]]:
    """(location, row) pairs; location is 'FILE:LINE' for JSONL and 'FILE row N' for Parquet."""
    if not path.is_file():
        raise EvaluationError(f"data file not found: {path}. Pass a val Parquet (sft/prepare_data.py) or a JSONL file.")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
            raise EvaluationError(f"{path}: not a readable Parquet file ({exc}).") from exc
        return [(f"{path} row {i}", _plain(row)) for i, row in enumerate(table.to_pylist())]
    if suffix in (".jsonl", ".json"):
        return _read_jsonl(path)
    raise EvaluationError(f"{path}: unsupported file type {suffix!r}; use .parquet or .jsonl.")


def _check_messages(messages: Any, where: str) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise EvaluationError(f"{where}: 'messages' must be a non-empty list of {{'role', 'content'}} objects.")
    for message in messages:
        if not isinstance(message, dict) or "role" not in message or not isinstance(message.get("content"), str):
            raise EvaluationError(f"{where}: every message needs a 'role' and a string 'content'; found {message!r}.")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _conversation(row: dict, where: str, prompt_key: str, solution_key: str) -> tuple[list[dict], Any, str]:
    """(prompt messages, reference solution or None, what the solution is called in messages)."""
    if row.get("messages") is not None:
        messages = _check_messages(row["messages"], where)
        last_assistant = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
        if last_assistant is not None:
            solution = messages[last_assistant]["content"]
            messages = messages[:last_assistant]
        else:
            solution = None
        solution_name = "the last assistant message"
    elif row.get(prompt_key) is not None:
        prompt = row[prompt_key]
        if isinstance(prompt, str):
            messages = [{"role": "user", "content": prompt}]
        else:  # verl's RL format keeps a message list under `prompt`
            messages = _check_messages(prompt, where)
        solution = row.get(solution_key)
        solution_name = f"the '{solution_key}' field"
    else:
        raise EvaluationError(
            f"{where}: no 'messages' and no '{prompt_key}' field (fields: {', '.join(sorted(row)) or 'none'}). "
            "Pass --prompt-key NAME for a differently named prompt column."
        )
    if not messages or messages[-1]["role"] != "user":
        raise EvaluationError(f"{where}: the prompt must end with a user message; found {messages[-1:]!r}.")
    return messages, solution, solution_name


def _with_system_prompt(messages: list[dict], system_prompt: str | None, where: str) -> list[dict]:
    """`messages` with --system-prompt first; a row's own, different system message is an error."""
    if system_prompt is None:
        return messages
    if messages[0]["role"] != "system":
        return [{"role": "system", "content": system_prompt}, *messages]
    if messages[0]["content"] != system_prompt:
        raise EvaluationError(
            f"{where}: the row already has a system message that differs from --system-prompt. "
            "Drop --system-prompt to use the data's own, or remove it from the data."
        )
    return messages


def _reference(row: dict, solution: Any, solution_name: str, answer_key: str | None) -> tuple[Any, Any, str | None]:
    """(reference as given, final answer to grade against, why the row is skipped or None)."""
    skip_reason = None
    if answer_key is not None:
        value = row.get(answer_key)
        reference = None if value is None else str(value).strip() or None
        ref_answer = reference_answer(reference)
        if ref_answer is None:
            skip_reason = f"no value in the '{answer_key}' field"
    else:
        reference = solution if isinstance(solution, str) and solution.strip() else None
        ref_answer = extract_final_answer(reference)
        if reference is None:
            skip_reason = f"no reference solution ({solution_name} is missing); pass --answer-key COLUMN"
        elif ref_answer is None:
            skip_reason = f"the reference solution ({solution_name}) states no final answer"
    return reference, ref_answer, skip_reason


def load_samples(
    data_path: str | os.PathLike,
    *,
    answer_key: str | None = None,
    prompt_key: str = "prompt",
    solution_key: str = "generated_solution",
    system_prompt: str | None = None,
    limit: int | None = None,
) -> list[EvalSample]:
    """Read the first `limit` rows of a Parquet/JSONL file into samples (see the module doc)."""
    path = Path(data_path)
    rows = _read_rows(path)
    if limit is not None:
        rows = rows[: max(limit, 0)]
    if not rows:
        raise EvaluationError(f"{path}: no rows to evaluate.")
    samples = []
    for index, (where, row) in enumerate(rows):
        messages, solution, solution_name = _conversation(row, where, prompt_key, solution_key)
        messages = _with_system_prompt(messages, system_prompt, where)
        reference, ref_answer, skip_reason = _reference(row, solution, solution_name, answer_key)
        samples.append(
            EvalSample(
                index=index,
                id=row.get("id", index),
                messages=messages,
                reference=reference,
                reference_answer=ref_answer,
                skip_reason=skip_reason,
            )
        )
    return samples


# --------------------------------------------------------------------------- generation


class Generation(NamedTuple):
    text: str
    """The decoded output up to (not including) the stop token."""
    output_tokens: int
    """Generated tokens, not counting the EOS that ended the output."""
    truncated: bool
    """True when generation hit max_new_tokens without producing an EOS."""


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EvaluationError(f"--device {device} asked for, but torch sees no CUDA device here. Use --device cpu.")
    return device


def _resolve_dtype(dtype: str, device: str, model_dir: Path):
    """auto: float32 on CPU (bf16 matmuls are slow and lossy there), the config's dtype on GPU."""
    if dtype == "auto" and not device.startswith("cuda"):
        return torch_dtype("float32", {})
    config = {}
    if dtype == "auto":
        try:
            config = json.loads((model_dir / "config.json").read_text())
        except (OSError, json.JSONDecodeError):
            pass
    return torch_dtype(dtype, config)


def _stop_token_ids(tokenizer, model_dir: Path) -> set[int]:
    """EOS ids of the generation config and tokenizer, plus the token that closes an assistant turn.

    A base model fine-tuned on a chat template ends turns with the template's end-of-turn token
    (e.g. Qwen's <|im_end|>) even when its generation config only lists <|endoftext|>.
    """
    from transformers import GenerationConfig

    stop: set[int] = set()
    try:
        eos = GenerationConfig.from_pretrained(str(model_dir)).eos_token_id
    except OSError:  # no generation_config.json
        eos = None
    for value in (eos, tokenizer.eos_token_id):
        if isinstance(value, int):
            stop.add(value)
        elif isinstance(value, (list, tuple)):
            stop.update(v for v in value if isinstance(v, int))
    marker = "ANSWER_END_MARKER"
    try:
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": "x"}, {"role": "assistant", "content": marker}], tokenize=False
        )
    except Exception:  # templates may reject this toy conversation; the EOS ids above still apply
        rendered = ""
    if marker in rendered:
        tail = tokenizer(rendered.split(marker, 1)[1], add_special_tokens=False)["input_ids"]
        if tail and tail[0] in set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder):
            stop.add(tail[0])
    if not stop:
        raise EvaluationError(
            f"{model_dir}: neither generation_config.json nor the tokenizer defines an EOS token, so generation "
            "could never stop. Set eos_token_id in the model's generation_config.json."
        )
    return stop


def _load_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if not tokenizer.chat_template:
        raise EvaluationError(
            f"{model_dir}: the tokenizer has no chat template, so prompts cannot be formatted as in training. "
            "Add one to tokenizer_config.json (or chat_template.jinja), e.g. the template the model was trained with."
        )
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _prompt_token_ids(tokenizer, conversations: list[list[dict]]) -> list[list[int]]:
    texts = [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in conversations]
    # The template writes its special tokens itself; adding BOS again would change the prompt.
    return [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]


def _split_at_stop(tokens: list[int], stop_ids: set[int]) -> tuple[list[int], bool]:
    """(tokens before the first stop token, whether a stop token was found)."""
    for position, token in enumerate(tokens):
        if token in stop_ids:
            return tokens[:position], True
    return tokens, False


def generate_transformers(
    model_dir: Path,
    tokenizer,
    prompts: list[list[int]],
    *,
    stop_ids: set[int],
    max_new_tokens: int,
    batch_size: int,
    device: str,
    dtype,
    progress: bool = True,
) -> list[Generation]:
    """Greedy, batched, left-padded decoding with transformers; longest prompts first."""
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, GenerationConfig

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype).to(device).eval()
    generation_config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=sorted(stop_ids),
        pad_token_id=tokenizer.pad_token_id,
    )
    # Sorting by length keeps padding (wasted compute) small; results go back in input order.
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    results: list[Generation | None] = [None] * len(prompts)
    with tqdm(total=len(prompts), desc="generating", unit="sample", disable=not progress) as bar:
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            padded = tokenizer.pad({"input_ids": [prompts[i] for i in batch]}, padding=True, return_tensors="pt")
            padded = {k: v.to(device) for k, v in padded.items()}
            with torch.inference_mode():
                sequences = model.generate(**padded, generation_config=generation_config)
            new_tokens = sequences[:, padded["input_ids"].shape[1] :].tolist()
            for i, tokens in zip(batch, new_tokens):
                kept, stopped = _split_at_stop(tokens, stop_ids)
                results[i] = Generation(
                    text=tokenizer.decode(kept, skip_special_tokens=True),
                    output_tokens=len(kept),
                    truncated=not stopped,
                )
            bar.update(len(batch))
    return results  # type: ignore[return-value]


def _require_vllm():
    try:
        import vllm
    except ImportError as exc:
        raise EvaluationError(
            f"--backend vllm needs the vllm package, which is not installed for {sys.executable} ({exc}). "
            "Install it on a GPU machine (pip install vllm, matching your torch/CUDA), or use the default "
            "--backend transformers."
        ) from None
    return vllm


def generate_vllm(
    model_dir: Path,
    tokenizer,
    prompts: list[list[int]],
    *,
    stop_ids: set[int],
    max_new_tokens: int,
    dtype,
    progress: bool = True,
) -> list[Generation]:
    """Greedy decoding with vLLM (continuous batching; --batch-size does not apply)."""
    vllm = _require_vllm()
    llm = vllm.LLM(model=str(model_dir), dtype=str(dtype).removeprefix("torch.") if dtype is not None else "auto", seed=0)
    params = vllm.SamplingParams(
        temperature=0.0, max_tokens=max_new_tokens, stop_token_ids=sorted(stop_ids), skip_special_tokens=True
    )
    outputs = llm.generate([{"prompt_token_ids": ids} for ids in prompts], params, use_tqdm=progress)
    results = []
    for output in outputs:
        completion = output.outputs[0]
        kept, stopped = _split_at_stop(list(completion.token_ids), stop_ids)
        results.append(
            Generation(
                text=tokenizer.decode(kept, skip_special_tokens=True),
                output_tokens=len(kept),
                truncated=completion.finish_reason == "length" and not stopped,
            )
        )
    return results


# --------------------------------------------------------------------------- grading and summary


def grade(sample: EvalSample, generation: Generation, strict: bool = False) -> dict:
    """The per-sample record for a generated answer: correctness by what the output concludes
    (sft.text.math_answers.grade; `strict`: standard forms only), and separately whether it states a
    final answer in a standard form (`has_final_answer`), so format never passes for correctness."""
    from sft.text.chat_format import split_reasoning

    answer_part = split_reasoning(generation.text)[1]  # a reasoning model's answer follows </think>
    verdict = grade_solution(answer_part, sample.reference_answer, sample.messages[-1]["content"], strict=strict)
    return {
        "index": sample.index,
        "id": sample.id,
        "status": "graded",
        "prompt": sample.messages[-1]["content"],
        "output": generation.text,
        "predicted_answer": verdict.answer,
        "answer_rule": verdict.rule,
        "reference_answer": sample.reference_answer,
        "correct": verdict.outcome == "correct",
        "has_final_answer": extract_final_answer(answer_part) is not None,
        "truncated": generation.truncated,
        "output_tokens": generation.output_tokens,
    }


def skipped_record(sample: EvalSample) -> dict:
    return {
        "index": sample.index,
        "id": sample.id,
        "status": "skipped",
        "skip_reason": sample.skip_reason,
        "prompt": sample.messages[-1]["content"],
        "reference": sample.reference,
    }


def summarize(records: list[dict], **settings: Any) -> dict:
    """Summary figures over the graded records (rates are fractions in [0, 1]); `settings` are recorded."""
    graded = [r for r in records if r["status"] == "graded"]
    skipped = [r for r in records if r["status"] != "graded"]
    n = len(graded)

    def rate(key: str) -> float | None:
        return sum(bool(r[key]) for r in graded) / n if n else None

    reasons: dict[str, int] = {}
    for record in skipped:
        reasons[record["skip_reason"]] = reasons.get(record["skip_reason"], 0) + 1
    rules: dict[str, int] = {}
    for record in graded:
        rule = record.get("answer_rule", "none")
        rules[rule] = rules.get(rule, 0) + 1
    return {
        "num_samples": len(records),
        "num_graded": n,
        "num_skipped": len(skipped),
        "skip_reasons": reasons,
        "num_correct": sum(r["correct"] for r in graded),
        "num_with_final_answer": sum(r["has_final_answer"] for r in graded),
        "num_truncated": sum(r["truncated"] for r in graded),
        "accuracy": rate("correct"),
        "final_answer_rate": rate("has_final_answer"),
        "truncation_rate": rate("truncated"),
        "mean_output_tokens": sum(r["output_tokens"] for r in graded) / n if n else None,
        "answer_rules": rules,
        **settings,
    }


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _tokens(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def format_summary(summary: dict) -> str:
    """A Markdown table of one summary."""
    g = summary["num_graded"]
    lines = [
        f"Model: `{summary.get('model', '?')}`  ",
        f"Data: `{summary.get('data', '?')}` ({g} graded, {summary['num_skipped']} skipped)",
        "",
        "| metric | value |",
        "|---|---|",
        f"| accuracy | {_percent(summary['accuracy'])} ({summary['num_correct']}/{g}) |",
        f"| final-answer rate (standard form) | {_percent(summary['final_answer_rate'])} "
        f"({summary['num_with_final_answer']}/{g}) |",
        f"| truncation rate | {_percent(summary['truncation_rate'])} ({summary['num_truncated']}/{g}) |",
        f"| mean output length (tokens) | {_tokens(summary['mean_output_tokens'])} |",
    ]
    if summary.get("answer_rules"):
        found = ", ".join(f"{rule} {count}" for rule, count in summary["answer_rules"].items())
        lines.append(f"\nAccuracy grades what each output concludes ({summary.get('grader', 'lenient')} grader); "
                     f"answers found by: {found}. The standard-form rate counts \\boxed{{}}, 'the answer is' and '####' "
                     "only: a format, not correctness.")
    for reason, count in summary.get("skip_reasons", {}).items():
        lines.append(f"\nSkipped {count}: {reason}.")
    return "\n".join(lines) + "\n"


def compare_summaries(base: dict, tuned: dict, base_label: str = "base", tuned_label: str = "fine-tuned") -> str:
    """A before/after Markdown table of two summaries (rates in percent, changes in points)."""

    def points(key: str) -> str:
        if base[key] is None or tuned[key] is None:
            return "n/a"
        return f"{100 * (tuned[key] - base[key]):+.1f} pts"

    rows = [("accuracy", "accuracy"), ("final-answer rate (standard form)", "final_answer_rate"),
            ("truncation rate", "truncation_rate")]
    lines = [f"| metric | {base_label} | {tuned_label} | change |", "|---|---|---|---|"]
    for label, key in rows:
        lines.append(f"| {label} | {_percent(base[key])} | {_percent(tuned[key])} | {points(key)} |")
    if base["mean_output_tokens"] is None or tuned["mean_output_tokens"] is None:
        change = "n/a"
    else:
        change = f"{tuned['mean_output_tokens'] - base['mean_output_tokens']:+.1f}"
    lines.append(
        f"| mean output length (tokens) | {_tokens(base['mean_output_tokens'])} | "
        f"{_tokens(tuned['mean_output_tokens'])} | {change} |"
    )
    lines.append(f"| graded samples | {base['num_graded']} | {tuned['num_graded']} | |")
    notes = []
    if base.get("data") != tuned.get("data") or base["num_samples"] != tuned["num_samples"]:
        notes.append("Note: the two evaluations used different data; the comparison is not like for like.")
    for key in ("max_new_tokens", "system_prompt", "grader"):
        if base.get(key) != tuned.get(key):
            notes.append(f"Note: {key} differs ({base.get(key)!r} vs {tuned.get(key)!r}).")
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


# --------------------------------------------------------------------------- evaluation


def _check_setup(model_dir: Path, backend: str, dtype: str, max_new_tokens: int, batch_size: int) -> None:
    """Refuse bad settings before anything is loaded."""
    if backend not in BACKENDS:
        raise EvaluationError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if dtype not in DTYPES:
        raise EvaluationError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if max_new_tokens < 1 or batch_size < 1:
        raise EvaluationError("max_new_tokens and batch_size must be at least 1")
    if backend == "vllm":
        _require_vllm()  # fail before loading anything
    if not (model_dir / "config.json").is_file():
        raise EvaluationError(
            f"{model_dir / 'config.json'} not found: {model_dir} is not a Hugging Face model directory. "
            "Export a training checkpoint first: python -m sft.export OUTPUT_DIR -o MODEL_DIR."
        )


class _Run(NamedTuple):
    """What generating took: the outputs, the seconds and the CPU threads torch used."""

    generations: list[Generation]
    seconds: float
    threads: int


def _generate(
    model_dir: Path, prompts: list[list[int]], tokenizer, stop_ids: set[int], *, backend: str, device: str,
    dtype: str, resolved_dtype, max_new_tokens: int, batch_size: int, num_threads: int | None, progress: bool,
) -> _Run:
    """Generate with `backend`, torch's CPU threads set to `num_threads` for this call only."""
    import torch

    threads_before = torch.get_num_threads()
    if num_threads and device == "cpu":
        torch.set_num_threads(num_threads)
    threads_used = torch.get_num_threads()
    started = time.time()
    try:
        if backend == "vllm":
            generations = generate_vllm(
                model_dir, tokenizer, prompts, stop_ids=stop_ids, max_new_tokens=max_new_tokens,
                dtype=resolved_dtype if dtype != "auto" else None, progress=progress,
            )
        else:
            generations = generate_transformers(
                model_dir, tokenizer, prompts, stop_ids=stop_ids, max_new_tokens=max_new_tokens,
                batch_size=batch_size, device=device, dtype=resolved_dtype, progress=progress,
            )
    finally:
        torch.set_num_threads(threads_before)  # a library call leaves the caller's setting alone
    return _Run(generations, time.time() - started, threads_used)


def _write_outputs(output_dir: Path, records: list[dict], summary: dict) -> None:
    """results.jsonl, summary.md and summary.json, each written atomically."""
    write_text_atomic(output_dir / RESULTS_FILE, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    write_text_atomic(output_dir / SUMMARY_MD, format_summary(summary))
    write_text_atomic(output_dir / SUMMARY_JSON, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")


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
) -> dict:
    """Evaluate `model_dir` on `data_path`, write results.jsonl, summary.json and summary.md, return the summary.

    The arguments mirror the CLI flags (see the module doc). `num_threads` sets torch's CPU
    threads for the generation only (None: leave as is). The returned summary is what
    summary.json holds: rates are fractions of the graded rows (None when nothing was graded).
    Raises EvaluationError for bad input or setup, before anything is written.
    """
    model_dir, data_path, output_dir = Path(model_dir), Path(data_path), Path(output_dir)
    _check_setup(model_dir, backend, dtype, max_new_tokens, batch_size)
    samples = load_samples(
        data_path, answer_key=answer_key, prompt_key=prompt_key, solution_key=solution_key,
        system_prompt=system_prompt, limit=limit,
    )
    to_generate = [s for s in samples if s.skip_reason is None]
    if not to_generate:
        reasons = sorted({s.skip_reason for s in samples})
        raise EvaluationError(f"{data_path}: no row has a reference answer to grade against ({'; '.join(reasons)}).")

    resolved_device = _resolve_device(device)
    resolved_dtype = _resolve_dtype(dtype, resolved_device, model_dir)
    tokenizer = _load_tokenizer(model_dir)
    stop_ids = _stop_token_ids(tokenizer, model_dir)
    prompts = _prompt_token_ids(tokenizer, [s.messages for s in to_generate])
    run = _generate(
        model_dir, prompts, tokenizer, stop_ids, backend=backend, device=resolved_device, dtype=dtype,
        resolved_dtype=resolved_dtype, max_new_tokens=max_new_tokens, batch_size=batch_size, num_threads=num_threads,
        progress=progress,
    )

    by_index = {s.index: grade(s, g, strict=strict_grading) for s, g in zip(to_generate, run.generations)}
    records = [by_index.get(s.index) or skipped_record(s) for s in samples]
    output_tokens = sum(g.output_tokens for g in run.generations)
    summary = summarize(
        records,
        model=str(model_dir.resolve()),
        data=str(data_path.resolve()),
        backend=backend,
        device=resolved_device if backend == "transformers" else "vllm",
        dtype=str(resolved_dtype).removeprefix("torch."),
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        num_threads=run.threads if resolved_device == "cpu" and backend == "transformers" else None,
        limit=limit,
        answer_key=answer_key,
        system_prompt=system_prompt,
        grader="strict" if strict_grading else "lenient",
        generation_seconds=round(run.seconds, 3),
        output_tokens_per_second=round(output_tokens / run.seconds, 1) if run.seconds > 0 else None,
    )
    _write_outputs(output_dir, records, summary)
    return summary


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
    parser.add_argument("--max-new-tokens", type=int, default=512, help="generation limit per answer, in tokens")
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per generate() call (transformers backend)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N rows (default: all rows)")
    parser.add_argument("--backend", choices=BACKENDS, default="transformers", help="generation engine")
    parser.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--dtype", choices=DTYPES, default="auto", help="auto = float32 on CPU, the model config's dtype on GPU"
    )
    parser.add_argument(
        "--num-threads", type=int, default=0,
        help="CPU threads for torch; 0 = torch's default (all cores). On a busy machine, 1 can be much faster",
    )
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
        )
    except EvaluationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(format_summary(summary))
    if baseline is not None:
        table = compare_summaries(baseline, summary)
        write_text_atomic(Path(args.output_dir) / COMPARISON_MD, table)
        print(table)
    print(f"wrote {RESULTS_FILE}, {SUMMARY_JSON}, {SUMMARY_MD} to {args.output_dir} "
          f"({summary['generation_seconds']:.1f}s generating on {summary['device']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
