"""Problems to generate for: one row of a Parquet or JSONL file -> a prompt conversation and a reference answer.

Shared by sft/evaluate.py and sft/generate.py (imported; not a command). Usage (as a library):
    from sft.generation.problems import load_samples, read_problem_rows, samples_from_rows
    samples = load_samples("data/sft/val.parquet", limit=200)   # EvalSamples, in file order
    rows = read_problem_rows("problems.jsonl")                  # (location, row) pairs, then
    samples = samples_from_rows(rows, answer_key="answer")      # the same rows as samples

Input (one row per problem):
  * Parquet or JSONL with a `messages` column (as sft/prepare_data.py writes for verl): the
    messages before the last assistant message are the prompt (a system message included),
    the last assistant message is the reference solution.
  * Parquet or JSONL with a prompt column (`prompt_key`, default `prompt`; the seed format
    `{"id", "prompt", "generated_solution", ...}`): the prompt is one user message, the
    reference solution is the `solution_key` column (default `generated_solution`).
  The reference answer is the final answer the reference solution states (sft/text/math_answers.py),
  or, with `answer_key`, the value of that column (a bare answer or a full solution).
  A row whose reference states no final answer has a `skip_reason` (it is not graded).
JSONL is read as sft/prepare_data.py reads it (sft/dataprep/jsonl_io.py); the first unusable line
is a ProblemsError naming its file, line and fix.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sft.common.errors import UserError
from sft.dataprep.jsonl_io import (
    REASON_MALFORMED_JSON,
    REASON_NOT_AN_OBJECT,
    REASON_TRUNCATED_LAST_LINE,
    BadLine,
    InputError,
    JsonlReader,
)
from sft.text.math_answers import extract_final_answer, reference_answer


class ProblemsError(UserError):
    """A problems file that cannot be read as problems; the message names the file (and line) and the fix."""


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


def _bad_line_error(bad: BadLine) -> ProblemsError:
    """The error for the first unusable line of a JSONL file, naming its file and line."""
    if bad.reason == REASON_NOT_AN_OBJECT:  # the reader's detail ends "found a JSON <type>"
        return ProblemsError(f"{bad.path}:{bad.line}: expected a JSON object, found {bad.detail.rsplit(' ', 1)[-1]}.")
    if bad.reason in (REASON_MALFORMED_JSON, REASON_TRUNCATED_LAST_LINE):
        try:  # re-parsed for the parser's own words and column, as the reader parsed the line
            json.loads((bad.raw or "").lstrip("\ufeff"), strict=False)
        except json.JSONDecodeError as exc:
            return ProblemsError(
                f"{bad.path}:{bad.line}: invalid JSON ({exc.msg} at column {exc.colno}). "
                "Each line must be one JSON object; fix or remove that line."
            )
    return ProblemsError(f"{bad.message()}.")  # not UTF-8, or an unpaired surrogate escape


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
        raise ProblemsError(str(exc)) from None
    return rows


def _read_rows(path: Path) -> list[tuple[str, dict]]:
    """(location, row) pairs; location is 'FILE:LINE' for JSONL and 'FILE row N' for Parquet."""
    if not path.is_file():
        raise ProblemsError(f"data file not found: {path}. Pass a val Parquet (sft/prepare_data.py) or a JSONL file.")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
            raise ProblemsError(f"{path}: not a readable Parquet file ({exc}).") from exc
        return [(f"{path} row {i}", _plain(row)) for i, row in enumerate(table.to_pylist())]
    if suffix in (".jsonl", ".json"):
        return _read_jsonl(path)
    raise ProblemsError(f"{path}: unsupported file type {suffix!r}; use .parquet or .jsonl.")


def _check_messages(messages: Any, where: str) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise ProblemsError(f"{where}: 'messages' must be a non-empty list of {{'role', 'content'}} objects.")
    for message in messages:
        if not isinstance(message, dict) or "role" not in message or not isinstance(message.get("content"), str):
            raise ProblemsError(f"{where}: every message needs a 'role' and a string 'content'; found {message!r}.")
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
        raise ProblemsError(
            f"{where}: no 'messages' and no '{prompt_key}' field (fields: {', '.join(sorted(row)) or 'none'}). "
            "Pass --prompt-key NAME for a differently named prompt column."
        )
    if not messages or messages[-1]["role"] != "user":
        raise ProblemsError(f"{where}: the prompt must end with a user message; found {messages[-1:]!r}.")
    return messages, solution, solution_name


def _with_system_prompt(messages: list[dict], system_prompt: str | None, where: str) -> list[dict]:
    """`messages` with --system-prompt first; a row's own, different system message is an error."""
    if system_prompt is None:
        return messages
    if messages[0]["role"] != "system":
        return [{"role": "system", "content": system_prompt}, *messages]
    if messages[0]["content"] != system_prompt:
        raise ProblemsError(
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
        raise ProblemsError(
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
