"""Grading of real model-written solutions: recall and false acceptance per labelled set. Prints
figures; asserts nothing (tests/test_grading.py holds the goals).

Usage:
    python scripts/benchmark_grading.py                  # every set in tests/assets/graded_solutions
    python scripts/benchmark_grading.py --sets frozen    # one set (file name without .jsonl)
    python scripts/benchmark_grading.py --misses 20      # also list up to 20 rejected correct solutions per set

Per set (a `*.jsonl` file of tests/assets/graded_solutions, README.md there): recall = the share of the
`correct` rows whose conclusion `sft.text.math_answers.grade` accepts against their own reference
(and among the human-verified ones); wrong accepted = `incorrect` rows accepted against their own
reference; false acceptance = the share of all rows accepted against another problem's reference of
a different value (`mismatched_references`), and how many of those were correct solutions (the
grader's own misreading).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python scripts/benchmark_grading.py`: make `import sft.x` work
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import json
import re
from dataclasses import dataclass

REPO = Path(__file__).resolve().parents[1]
GRADED_DIR = REPO / "tests" / "assets" / "graded_solutions"


def load_sets(names: list[str] | None = None) -> dict[str, list[dict]]:
    """{set name: rows} for the labelled files (all of them, or `names`)."""
    sets = {}
    for path in sorted(GRADED_DIR.glob("*.jsonl")):
        if names is None or path.stem in names:
            sets[path.stem] = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
                               if line.strip()]
    missing = set(names or ()) - set(sets)
    if missing:
        raise SystemExit(f"no labelled set named {sorted(missing)} in {GRADED_DIR} (have: "
                         f"{sorted(p.stem for p in GRADED_DIR.glob('*.jsonl'))})")
    return sets


def is_choice(reference: str) -> bool:
    """A multiple-choice reference: a letter, "(C)", "\\text{(C)}"."""
    return re.fullmatch(r"\s*(?:\\text\{)?\(?[A-J]\)?\}?\s*", reference) is not None


def mismatched_references(rows: list[dict]) -> list[str | None]:
    """For each row, the reference of the next row (cyclically, stepping 37 rows at a time) of another
    problem whose reference is a different value of the same kind (a letter for a multiple-choice
    row): a wrong answer for this row; None when the set has no such row (a lone multiple-choice row)."""
    from sft.text.math_answers import answers_match

    others = []
    for i, row in enumerate(rows):
        for k in range(1, len(rows)):
            other = rows[(i + 37 * k) % len(rows)]
            if other["problem"] != row["problem"] and is_choice(other["reference"]) == is_choice(row["reference"]) \
                    and not answers_match(other["reference"], row["reference"]) \
                    and not answers_match(row["reference"], other["reference"]):
                others.append(other["reference"])
                break
        else:
            others.append(None)
    return others


def accepts(row: dict, reference: str, strict: bool = False) -> bool:
    from sft.text.math_answers import grade, reference_answer

    return grade(row["solution"], reference_answer(reference), row["problem"], strict=strict).outcome == "correct"


@dataclass
class SetFigures:
    rows: int
    correct: int
    human: int
    recall: float
    human_recall: float
    wrong: int
    wrong_accepted: int
    false_acceptance: float
    misread: int
    misses: list


def measure(rows: list[dict], strict: bool = False) -> SetFigures:
    correct = [r for r in rows if r["label"] == "correct"]
    human = [r for r in correct if r["label_by"] == "human"]
    wrong = [r for r in rows if r["label"] == "incorrect"]
    accepted = {r["id"]: accepts(r, r["reference"], strict) for r in rows}
    paired = [(r, other) for r, other in zip(rows, mismatched_references(rows)) if other is not None]
    others = [accepts(r, other, strict) for r, other in paired]
    return SetFigures(
        rows=len(rows), correct=len(correct), human=len(human),
        recall=sum(accepted[r["id"]] for r in correct) / max(1, len(correct)),
        human_recall=sum(accepted[r["id"]] for r in human) / max(1, len(human)),
        wrong=len(wrong), wrong_accepted=sum(accepted[r["id"]] for r in wrong),
        false_acceptance=sum(others) / max(1, len(paired)),
        misread=sum(a for a, (r, _) in zip(others, paired) if r["label"] == "correct"),
        misses=[r for r in correct if not accepted[r["id"]]])


def print_sets(sets: dict[str, list[dict]], misses: int) -> None:
    from sft.text.math_answers import grade

    print("| set | rows | recall on correct (human-verified) | wrong accepted | false acceptance (correct ones) |")
    print("|---|---:|---:|---:|---:|")
    for name, rows in sets.items():
        f = measure(rows)
        print(f"| {name} | {f.rows} | {f.recall:.1%} of {f.correct} ({f.human_recall:.1%} of {f.human}) | "
              f"{f.wrong_accepted} of {f.wrong} | {f.false_acceptance:.2%} ({f.misread} of {f.correct}) |")
        for row in f.misses[:misses]:
            found = grade(row["solution"], row["reference"], row["problem"])
            print(f"    miss {row['id']}: reference {row['reference']!r}, found {found.answer!r} ({found.rule})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="+", default=None,
                        help="labelled sets to measure (file names without .jsonl; default: all)")
    parser.add_argument("--misses", type=int, default=0,
                        help="list up to this many rejected correct solutions per set (0 = none)")
    args = parser.parse_args(argv)
    print_sets(load_sets(args.sets), args.misses)
    return 0


if __name__ == "__main__":
    sys.exit(main())
