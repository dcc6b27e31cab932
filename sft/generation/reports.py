"""Markdown reports of evaluation summaries: one summary's table, a before/after comparison (imported; not a command).

Usage (as a library):
    from sft.generation.reports import compare_summaries, format_summary
    print(format_summary(summary))                     # summary.md
    print(compare_summaries(base, tuned))              # comparison.md: rates in percent, changes in points
"""

from __future__ import annotations


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
