"""Grading generated outputs and the metrics over them: accuracy, pass@k, maj@k (imported; not a command).

Shared by sft/evaluate.py (results.jsonl, samples.jsonl, summary.json) and sft/generate.py (each
sample's `correct`). Usage (as a library):
    from sft.generation.grading import grade, pass_at_k, majority_vote
    grade(sample, generation)["correct"]       # what the output concludes vs the reference answer
    pass_at_k(n=8, c=2, k=4)                   # 1 - C(6, 4) / C(8, 4), Chen et al. (2021)
    majority_vote(["1/2", "0.5", "3"])         # -> (0, 2): answers grouped by math-verify equivalence

Correctness is sft/text/math_answers.py's `grade` of what the output concludes (after a reasoning
model's </think>); whether it states a final answer in a standard form is recorded apart
(`has_final_answer`), so format never passes for correctness.
"""

from __future__ import annotations

import math
from typing import Any

from sft.generation.backend import Generation
from sft.generation.problems import EvalSample
from sft.text.math_answers import answers_match, extract_final_answer
from sft.text.math_answers import grade as grade_solution


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
