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
  (sft/generate.py reads problems the same way: read_problem_rows and samples_from_rows.)

Generation: the model's chat template with the generation prompt, greedy decoding, at most
`--max-new-tokens` new tokens, stopping at EOS (the generation config's and tokenizer's EOS
plus the token that closes an assistant turn in the chat template). `--backend transformers`
(default) decodes in batches with left padding on CPU or GPU (`--device auto`);
`--backend vllm` uses vLLM when it is installed. Both sit behind `Generator` (loaded once,
greedy or sampled by a `Sampling`), which sft/generate.py uses too.

K samples (`--num-samples K`, K > 1): after the greedy pass (its accuracy and results.jsonl
are unchanged), K solutions per problem are sampled (`--temperature`, default 1.0; `--top-p`,
default 1.0; `--seed`, default 0) and graded the same way: pass@1 (the mean correct rate),
pass@k for k = K and the powers of two below it (the unbiased estimator of Chen et al. 2021,
1 - C(n-c, k)/C(n, k)), and maj@K (the answer most samples give, answers grouped by
math-verify equivalence; samples without an answer do not vote; a tie goes to the answer that
came first; a problem with no votes counts as wrong).

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

import os

# OpenMP threads that spin while they wait make CPU decoding many times slower as soon as another
# process wants the same cores (seen on the shared 2-core development machine; there is no
# benchmark of it in this repository). Sleeping waits cost little when the machine is idle. It only takes
# effect if torch is not imported yet (the CLI); set OMP_WAIT_POLICY yourself to choose.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

if __package__ in (None, ""):  # run as `python sft/evaluate.py`: make `import sft.x` work
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import contextlib
import json
import math
import re
import time
from collections.abc import Iterator
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
from sft.text.math_answers import answers_match, extract_final_answer, reference_answer
from sft.text.math_answers import grade as grade_solution

BACKENDS = ("transformers", "vllm")
RESULTS_FILE = "results.jsonl"
SAMPLES_FILE = "samples.jsonl"
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


def read_problem_rows(data_path: str | os.PathLike, limit: int | None = None) -> list[tuple[str, dict]]:
    """(location, row) pairs of the first `limit` rows of a Parquet/JSONL file; an empty file is an error."""
    path = Path(data_path)
    rows = _read_rows(path)
    if limit is not None:
        rows = rows[: max(limit, 0)]
    if not rows:
        raise EvaluationError(
            f"{path}: no rows to read (an empty file, or --limit 0). Pass a file with at least one row."
        )
    return rows


def samples_from_rows(
    rows: list[tuple[str, dict]],
    *,
    answer_key: str | None = None,
    prompt_key: str = "prompt",
    solution_key: str = "generated_solution",
    id_key: str = "id",
    system_prompt: str | None = None,
) -> list[EvalSample]:
    """The rows of read_problem_rows as samples: prompt conversation, id and reference answer (see the module doc)."""
    samples = []
    for index, (where, row) in enumerate(rows):
        messages, solution, solution_name = _conversation(row, where, prompt_key, solution_key)
        messages = _with_system_prompt(messages, system_prompt, where)
        reference, ref_answer, skip_reason = _reference(row, solution, solution_name, answer_key)
        samples.append(
            EvalSample(
                index=index,
                id=row.get(id_key, index),
                messages=messages,
                reference=reference,
                reference_answer=ref_answer,
                skip_reason=skip_reason,
            )
        )
    return samples


def load_samples(
    data_path: str | os.PathLike,
    *,
    answer_key: str | None = None,
    prompt_key: str = "prompt",
    solution_key: str = "generated_solution",
    id_key: str = "id",
    system_prompt: str | None = None,
    limit: int | None = None,
) -> list[EvalSample]:
    """Read the first `limit` rows of a Parquet/JSONL file into samples (see the module doc)."""
    return samples_from_rows(
        read_problem_rows(data_path, limit), answer_key=answer_key, prompt_key=prompt_key, solution_key=solution_key,
        id_key=id_key, system_prompt=system_prompt,
    )


# --------------------------------------------------------------------------- generation


class Generation(NamedTuple):
    text: str
    """The decoded output up to (not including) the stop token."""
    output_tokens: int
    """Generated tokens, not counting the EOS that ended the output."""
    truncated: bool
    """True when generation hit max_new_tokens without producing an EOS."""

    @property
    def finish_reason(self) -> str:
        """"stop" (a stop token ended the output) or "length" (max_new_tokens did)."""
        return "length" if self.truncated else "stop"


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
            if not model_dir.exists():  # a hub id: its config from the hub cache
                with contextlib.suppress(Exception):
                    from transformers import AutoConfig

                    config = AutoConfig.from_pretrained(str(model_dir)).to_dict()
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

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    except OSError as exc:  # a hub id that is neither cached nor reachable
        raise EvaluationError(
            f"cannot load {model_dir}: not a local model directory, and the Hugging Face Hub does not serve it here "
            f"({str(exc).splitlines()[0]}). Pass an exported model directory, or download the model first."
        ) from None
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


@dataclass(frozen=True)
class Sampling:
    """How outputs are decoded: greedy (temperature 0, one output per prompt) or `num_samples` sampled ones."""

    num_samples: int = 1
    """Outputs per prompt (--num-samples)."""
    temperature: float = 0.0
    """Softmax temperature (--temperature); 0 = greedy decoding."""
    top_p: float = 1.0
    """Nucleus sampling (--top-p): sample among the most likely tokens whose probabilities add up to top_p; 1 = all."""
    seed: int = 0
    """Seed of the random stream (--seed); unused when greedy."""

    def __post_init__(self):
        if not isinstance(self.num_samples, int) or self.num_samples < 1:
            raise EvaluationError(f"--num-samples must be a whole number of at least 1, not {self.num_samples}.")
        if not self.temperature >= 0:  # also refuses NaN
            raise EvaluationError(f"--temperature must be 0 (greedy) or more, not {self.temperature}.")
        if not 0 < self.top_p <= 1:
            raise EvaluationError(f"--top-p must be in (0, 1], not {self.top_p}; 1 keeps every token.")
        if self.greedy and self.num_samples > 1:
            raise EvaluationError(
                f"--temperature 0 is greedy decoding: all {self.num_samples} samples of a problem would be the same. "
                "Use a temperature above 0 (e.g. 1.0), or --num-samples 1."
            )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


GREEDY = Sampling()


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (e.g. (seed, shard index)): the same parts always give the same seed."""
    import numpy as np

    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def _transformers_batches(model, tokenizer, prompts: list[list[int]], *, stop_ids: set[int], sampling: Sampling,
                          max_new_tokens: int, batch_size: int, device: str, bar) -> list[list[Generation]]:
    """Batched, left-padded decoding, longest prompts first; `sampling.num_samples` outputs per prompt."""
    import torch
    from transformers import GenerationConfig

    # transformers fills every setting left unset here from the model's generation_config.json (Qwen's
    # instruct models set top_k 20 and repetition_penalty 1.05) and then its own defaults (top_k 50).
    # Sampling pins them to "off", as vLLM samples with SamplingParams: the distribution asked for.
    sampled = {} if sampling.greedy else {
        "temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": 0, "min_p": 0.0,
        "typical_p": 1.0, "repetition_penalty": 1.0, "num_return_sequences": sampling.num_samples,
    }
    generation_config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=not sampling.greedy, eos_token_id=sorted(stop_ids),
        pad_token_id=tokenizer.pad_token_id, **sampled,
    )
    k = sampling.num_samples
    # Sorting by length keeps padding (wasted compute) small; results go back in input order.
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    results: list[list[Generation]] = [[] for _ in prompts]
    # The random stream is the call's own (seeded here, the caller's restored after): the outputs
    # depend only on the prompts, the settings and the seed.
    with torch.random.fork_rng(devices=[] if device == "cpu" else None):
        torch.manual_seed(sampling.seed)
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            padded = tokenizer.pad({"input_ids": [prompts[i] for i in batch]}, padding=True, return_tensors="pt")
            padded = {key: value.to(device) for key, value in padded.items()}
            with torch.inference_mode():
                sequences = model.generate(**padded, generation_config=generation_config)
            new_tokens = sequences[:, padded["input_ids"].shape[1] :].tolist()
            for row, tokens in enumerate(new_tokens):  # num_return_sequences rows per prompt, in order
                kept, stopped = _split_at_stop(tokens, stop_ids)
                results[batch[row // k]].append(
                    Generation(tokenizer.decode(kept, skip_special_tokens=True), len(kept), not stopped)
                )
            if bar is not None:
                bar.update(len(batch) * k)
    return results


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


def _vllm_outputs(llm, tokenizer, prompts: list[list[int]], *, stop_ids: set[int], sampling: Sampling,
                  max_new_tokens: int, bar) -> list[list[Generation]]:
    """vLLM decoding (continuous batching: --batch-size does not apply); each prompt seeded on its own."""
    vllm = _require_vllm()
    common = {"max_tokens": max_new_tokens, "stop_token_ids": sorted(stop_ids), "skip_special_tokens": True}
    if sampling.greedy:
        params = vllm.SamplingParams(temperature=0.0, **common)
    else:
        params = [vllm.SamplingParams(n=sampling.num_samples, temperature=sampling.temperature, top_p=sampling.top_p,
                                      seed=derive_seed(sampling.seed, i), **common) for i in range(len(prompts))]
    shown = bar is not None and not bar.disable
    outputs = llm.generate([{"prompt_token_ids": ids} for ids in prompts], params, use_tqdm=shown)
    results = []
    for output in outputs:
        generations = []
        for completion in sorted(output.outputs, key=lambda c: c.index):
            kept, stopped = _split_at_stop(list(completion.token_ids), stop_ids)
            generations.append(Generation(tokenizer.decode(kept, skip_special_tokens=True), len(kept),
                                          completion.finish_reason == "length" and not stopped))
        results.append(generations)
    if bar is not None:
        bar.update(sum(len(g) for g in results))
    return results


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def check_model(model: str | os.PathLike) -> None:
    """A local Hugging Face model directory, or a hub id (`org/name`) that is not a local path."""
    path = Path(model)
    if (path / "config.json").is_file() or (not path.exists() and _HUB_ID.fullmatch(str(model))):
        return
    raise EvaluationError(
        f"{path / 'config.json'} not found: {path} is not a Hugging Face model directory. "
        "Export a training checkpoint first: python -m sft.export OUTPUT_DIR -o MODEL_DIR."
    )


class Generator:
    """A model loaded once for many calls, the same for both backends: chat prompts in, decoded outputs out.

        generator = Generator(model_dir, backend="transformers", device="auto", dtype="auto", batch_size=16)
        prompts = generator.prompt_ids([[{"role": "user", "content": "What is 3 + 4?"}]])
        outputs = generator.generate(prompts, Sampling(4, temperature=1.0, seed=0), max_new_tokens=512)
        outputs[0]  # four Generations of the first prompt
    """

    def __init__(self, model: str | os.PathLike, *, backend: str, device: str, dtype: str, batch_size: int):
        if backend not in BACKENDS:
            raise EvaluationError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        model_dir = Path(model)
        self.backend, self.batch_size = backend, batch_size
        resolved_device = _resolve_device(device)
        self.torch_dtype = _resolve_dtype(dtype, resolved_device, model_dir)
        self.device = resolved_device if backend == "transformers" else "vllm"
        self.tokenizer = _load_tokenizer(model_dir)
        self.stop_ids = _stop_token_ids(self.tokenizer, model_dir)
        if backend == "vllm":
            vllm = _require_vllm()
            vllm_dtype = str(self.torch_dtype).removeprefix("torch.") if dtype != "auto" else "auto"
            self._engine = vllm.LLM(model=str(model_dir), dtype=vllm_dtype, seed=0)
        else:
            from transformers import AutoModelForCausalLM

            self._engine = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=self.torch_dtype)
            self._engine = self._engine.to(resolved_device).eval()

    @property
    def dtype_name(self) -> str:
        return str(self.torch_dtype).removeprefix("torch.")

    def prompt_ids(self, conversations: list[list[dict]]) -> list[list[int]]:
        """Token ids of each conversation through the chat template, with the generation prompt."""
        return _prompt_token_ids(self.tokenizer, conversations)

    def generate(self, prompts: list[list[int]], sampling: Sampling = GREEDY, *, max_new_tokens: int,
                 bar=None) -> list[list[Generation]]:
        """`sampling.num_samples` outputs per prompt, in prompt order. `bar` (a tqdm, or None) advances by
        the outputs made: batch by batch (transformers), or at the end, with vLLM's own bar meanwhile."""
        if self.backend == "vllm":
            return _vllm_outputs(self._engine, self.tokenizer, prompts, stop_ids=self.stop_ids, sampling=sampling,
                                 max_new_tokens=max_new_tokens, bar=bar)
        return _transformers_batches(self._engine, self.tokenizer, prompts, stop_ids=self.stop_ids,
                                     sampling=sampling, max_new_tokens=max_new_tokens, batch_size=self.batch_size,
                                     device=self.device, bar=bar)


@contextlib.contextmanager
def torch_threads(num_threads: int | None, device: str) -> Iterator[int]:
    """Torch's CPU threads set to `num_threads` (on CPU, when given) inside the block; yields the number used."""
    import torch

    threads_before = torch.get_num_threads()
    if num_threads and device == "cpu":
        torch.set_num_threads(num_threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(threads_before)  # a library call leaves the caller's setting alone


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


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimate of pass@k from n samples of which c are correct (Chen et al. 2021):
    the chance that k of the n, drawn without replacement, include a correct one: 1 - C(n-c, k) / C(n, k)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def pass_at_k_values(num_samples: int) -> list[int]:
    """The k reported for `num_samples` samples: the powers of two below it, and itself
    (4 -> 1, 2, 4; 6 -> 1, 2, 4, 6)."""
    return sorted({2**i for i in range(num_samples.bit_length()) if 2**i < num_samples} | {num_samples})


def majority_vote(answers: list[str | None]) -> tuple[int | None, int]:
    """(index of the winning answer, its votes): answers grouped by math-verify equivalence
    (answers_match: "1/2" and "0.5" are one answer), None answers not voting, the largest group
    winning, a tie going to the group whose first answer came first. (None, 0) when nobody voted.
    The index is the group's first answer."""
    groups: list[list[int]] = []  # indices of equivalent answers, in order of first appearance
    for index, answer in enumerate(answers):
        if answer is None:
            continue
        group = next((g for g in groups if answers_match(answer, answers[g[0]])), None)
        if group is None:
            groups.append([index])
        else:
            group.append(index)
    if not groups:
        return None, 0
    winner = max(groups, key=len)  # max keeps the first of equally large groups
    return winner[0], len(winner)


SAMPLE_FIELDS = ("output", "predicted_answer", "answer_rule", "correct", "has_final_answer", "truncated",
                 "output_tokens")


def sampled_record(sample: EvalSample, generations: list[Generation], strict: bool = False) -> dict:
    """One problem's samples.jsonl record: each sample graded as `grade` grades the greedy output,
    the number correct, and the majority answer (majority_vote over the samples' answers)."""
    graded = [grade(sample, generation, strict=strict) for generation in generations]
    winner, votes = majority_vote([r["predicted_answer"] for r in graded])
    return {
        "index": sample.index,
        "id": sample.id,
        "prompt": sample.messages[-1]["content"],
        "reference_answer": sample.reference_answer,
        "num_samples": len(graded),
        "num_correct": sum(r["correct"] for r in graded),
        "majority_answer": None if winner is None else graded[winner]["predicted_answer"],
        "majority_votes": votes,
        "majority_correct": winner is not None and graded[winner]["correct"],
        "samples": [{key: r[key] for key in SAMPLE_FIELDS} for r in graded],
    }


def summarize_sampled(records: list[dict], num_samples: int) -> dict:
    """pass@k (k of pass_at_k_values), maj@K and the samples' truncation and length, over problems' sampled records."""
    n = len(records)
    samples = [s for r in records for s in r["samples"]]
    pass_at = {str(k): sum(pass_at_k(r["num_samples"], r["num_correct"], k) for r in records) / n
               for k in pass_at_k_values(num_samples)}
    return {
        "samples_per_problem": num_samples,
        "pass_at_k": pass_at,
        "maj_at_k": sum(r["majority_correct"] for r in records) / n,
        "sampled_final_answer_rate": sum(s["has_final_answer"] for s in samples) / len(samples),
        "sampled_truncation_rate": sum(s["truncated"] for s in samples) / len(samples),
        "sampled_mean_output_tokens": sum(s["output_tokens"] for s in samples) / len(samples),
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
    sampled = _sampled_metrics(summary)
    if sampled:
        lines[6:6] = [f"| {label} | {_percent(value)} |" for label, value in sampled.items()]
        lines.append(f"| sampled: truncation rate, mean length (tokens) | "
                     f"{_percent(summary['sampled_truncation_rate'])}, {_tokens(summary['sampled_mean_output_tokens'])} |")
        lines.append(f"\nAccuracy: greedy decoding. pass@k and maj@{summary['samples_per_problem']}: "
                     f"{summary['samples_per_problem']} samples per problem (temperature {summary['temperature']}, "
                     f"top-p {summary['top_p']}, seed {summary['seed']}); pass@k is the unbiased estimate of "
                     "Chen et al. (2021), pass@1 the mean correct rate; maj@K grades the answer most samples give "
                     "(math-verify equivalence; samples without an answer do not vote).")
    if summary.get("answer_rules"):
        found = ", ".join(f"{rule} {count}" for rule, count in summary["answer_rules"].items())
        lines.append(f"\nAccuracy grades what each output concludes ({summary.get('grader', 'lenient')} grader); "
                     f"answers found by: {found}. The standard-form rate counts \\boxed{{}}, 'the answer is' and '####' "
                     "only: a format, not correctness.")
    for reason, count in summary.get("skip_reasons", {}).items():
        lines.append(f"\nSkipped {count}: {reason}.")
    return "\n".join(lines) + "\n"


def _sampled_metrics(summary: dict) -> dict[str, float | None]:
    """{"pass@1": .., "pass@2": .., "maj@4": ..} of a summary with sampled solutions; {} without."""
    if "pass_at_k" not in summary:
        return {}
    metrics = {f"pass@{k}": value for k, value in summary["pass_at_k"].items()}
    metrics[f"maj@{summary['samples_per_problem']}"] = summary["maj_at_k"]
    return metrics


def _sampled_comparison(base: dict, tuned: dict) -> tuple[list[str], list[str]]:
    """(table rows, notes) comparing the sampled metrics of two summaries; empty when neither has any."""
    before, after = _sampled_metrics(base), _sampled_metrics(tuned)
    labels = sorted(before.keys() | after.keys(), key=lambda label: (label.startswith("maj"), int(label.split("@")[1])))
    rows = []
    for label in labels:
        b, t = before.get(label), after.get(label)
        change = "n/a" if b is None or t is None else f"{100 * (t - b):+.1f} pts"
        rows.append(f"| {label} | {_percent(b)} | {_percent(t)} | {change} |")
    notes = []
    if labels:
        for key in ("samples_per_problem", "temperature", "top_p"):
            if base.get(key) != tuned.get(key):
                notes.append(f"Note: {key} differs ({base.get(key)!r} vs {tuned.get(key)!r}).")
    return rows, notes


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
    sampled_rows, notes = _sampled_comparison(base, tuned)
    lines[3:3] = sampled_rows  # beside (greedy) accuracy
    if base["mean_output_tokens"] is None or tuned["mean_output_tokens"] is None:
        change = "n/a"
    else:
        change = f"{tuned['mean_output_tokens'] - base['mean_output_tokens']:+.1f}"
    lines.append(
        f"| mean output length (tokens) | {_tokens(base['mean_output_tokens'])} | "
        f"{_tokens(tuned['mean_output_tokens'])} | {change} |"
    )
    lines.append(f"| graded samples | {base['num_graded']} | {tuned['num_graded']} | |")
    if base.get("data") != tuned.get("data") or base["num_samples"] != tuned["num_samples"]:
        notes.append("Note: the two evaluations used different data; the comparison is not like for like.")
    for key in ("max_new_tokens", "system_prompt", "grader"):
        if base.get(key) != tuned.get(key):
            notes.append(f"Note: {key} differs ({base.get(key)!r} vs {tuned.get(key)!r}).")
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


# --------------------------------------------------------------------------- evaluation


def check_setup(model: str | os.PathLike, backend: str, dtype: str, max_new_tokens: int, batch_size: int) -> None:
    """Refuse bad settings before anything is loaded."""
    if backend not in BACKENDS:
        raise EvaluationError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if dtype not in DTYPES:
        raise EvaluationError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if max_new_tokens < 1 or batch_size < 1:
        raise EvaluationError("max_new_tokens and batch_size must be at least 1")
    if backend == "vllm":
        _require_vllm()  # fail before loading anything
    check_model(model)


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
    sampling = _sampling(num_samples, temperature, top_p, seed)
    samples, to_generate = _graded_samples(data_path, answer_key=answer_key, prompt_key=prompt_key,
                                           solution_key=solution_key, system_prompt=system_prompt, limit=limit)
    generator = Generator(model_dir, backend=backend, device=device, dtype=dtype, batch_size=batch_size)
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
        generation_seconds=round(seconds, 3),
        output_tokens_per_second=round(output_tokens / seconds, 1) if seconds > 0 else None,
    )
    sampled = None
    if sampling is not None:
        sampled = [sampled_record(s, g, strict=strict_grading) for s, g in zip(to_generate, outputs)]
        sampled_tokens = sum(x.output_tokens for g in outputs for x in g)
        summary.update(summarize_sampled(sampled, sampling.num_samples), temperature=sampling.temperature,
                       top_p=sampling.top_p, seed=sampling.seed, sampling_seconds=round(sampling_seconds, 3),
                       sampled_output_tokens_per_second=round(sampled_tokens / sampling_seconds, 1)
                       if sampling_seconds > 0 else None)
    _write_outputs(output_dir, records, summary, sampled)
    return summary


def _timed_generate(generator: Generator, prompts: list[list[int]], sampling: Sampling, max_new_tokens: int,
                    progress: bool, what: str) -> tuple[list[list[Generation]], float]:
    """(the generator's outputs, seconds taken), under a progress bar counting outputs."""
    from tqdm import tqdm

    started = time.time()
    with tqdm(total=len(prompts) * sampling.num_samples, desc=what, unit="sample", disable=not progress) as bar:
        outputs = generator.generate(prompts, sampling, max_new_tokens=max_new_tokens, bar=bar)
    return outputs, time.time() - started


# --------------------------------------------------------------------------- CLI


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    """The generation flags sft/evaluate.py and sft/generate.py share: length, batching, engine, device, dtype, threads."""
    parser.add_argument("--max-new-tokens", type=int, default=512, help="generation limit per answer, in tokens")
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per generate() call, each with its K samples when sampling (transformers backend)")
    parser.add_argument("--backend", choices=BACKENDS, default="transformers", help="generation engine")
    parser.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--dtype", choices=DTYPES, default="auto", help="auto = float32 on CPU, the model config's dtype on GPU"
    )
    parser.add_argument(
        "--num-threads", type=int, default=0,
        help="CPU threads for torch; 0 = torch's default (all cores). On a busy machine, 1 can be much faster",
    )


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
        )
    except EvaluationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(format_summary(summary))
    if baseline is not None:
        table = compare_summaries(baseline, summary)
        write_text_atomic(Path(args.output_dir) / COMPARISON_MD, table)
        print(table)
    written = [RESULTS_FILE] + ([SAMPLES_FILE] if "pass_at_k" in summary else []) + [SUMMARY_JSON, SUMMARY_MD]
    print(f"wrote {', '.join(written)} to {args.output_dir} "
          f"({summary['generation_seconds']:.1f}s generating on {summary['device']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
