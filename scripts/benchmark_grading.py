"""Grading of real model-written solutions: recall and false acceptance per labelled set, and grading
speed per kind of answer against an earlier grader. Prints figures; asserts nothing
(tests/test_grading.py holds the goals).

Usage:
    python scripts/benchmark_grading.py                  # every set in tests/assets/graded_solutions
    python scripts/benchmark_grading.py --sets frozen    # one set (file name without .jsonl)
    python scripts/benchmark_grading.py --misses 20      # also list up to 20 rejected correct solutions per set
    python scripts/benchmark_grading.py --before         # the same figures for the grader at --baseline too
    python scripts/benchmark_grading.py --speed          # gradings/s per answer kind, this grader and --baseline
    python scripts/benchmark_grading.py --record-verdicts   # math-verify's own verdicts on the labelled pairs

Per set (a `*.jsonl` file of tests/assets/graded_solutions, README.md there): recall = the share of the
`correct` rows whose conclusion `sft.text.math_answers.grade` accepts against their own reference
(and among the human-verified ones); wrong accepted = `incorrect` rows accepted against their own
reference; false acceptance = the share of all rows accepted against another problem's reference of
a different value (`mismatched_references`), and how many of those were correct solutions (the
grader's own misreading).

--record-verdicts compares `answers_match` (numbers decided exactly, the common LaTeX forms parsed by
sft/text/latex_sympy.py) with math-verify parsing both answers itself, on every answer pair grading the
labelled sets compares that neither the same spelling nor plain-number arithmetic decides, prints the
disagreements, and records math-verify's verdicts in tests/assets/graded_solutions/math_verify/verdicts.jsonl
(tests/test_grading.py checks today's verdicts against them; pairs missing there it asks math-verify).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python scripts/benchmark_grading.py`: make `import sft.x` work
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import json
import re
import statistics
import subprocess
import sys as _sys
import time
import types
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


def accepts(row: dict, reference: str, strict: bool = False, grader=None) -> bool:
    """Does `grader` (sft.text.math_answers, or an earlier one from load_grader) accept the row's solution
    against `reference`?"""
    if grader is None:
        from sft.text import math_answers as grader
    graded = grader.grade(row["solution"], grader.reference_answer(reference), row["problem"], strict=strict)
    return graded.outcome == "correct"


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


def measure(rows: list[dict], strict: bool = False, grader=None, mismatched: list | None = None) -> SetFigures:
    """The set's figures with `grader` (today's by default); `mismatched`: the pairing, when computed already."""
    correct = [r for r in rows if r["label"] == "correct"]
    human = [r for r in correct if r["label_by"] == "human"]
    wrong = [r for r in rows if r["label"] == "incorrect"]
    accepted = {r["id"]: accepts(r, r["reference"], strict, grader) for r in rows}
    mismatched = mismatched_references(rows) if mismatched is None else mismatched
    paired = [(r, other) for r, other in zip(rows, mismatched) if other is not None]
    others = [accepts(r, other, strict, grader) for r, other in paired]
    return SetFigures(
        rows=len(rows), correct=len(correct), human=len(human),
        recall=sum(accepted[r["id"]] for r in correct) / max(1, len(correct)),
        human_recall=sum(accepted[r["id"]] for r in human) / max(1, len(human)),
        wrong=len(wrong), wrong_accepted=sum(accepted[r["id"]] for r in wrong),
        false_acceptance=sum(others) / max(1, len(paired)),
        misread=sum(a for a, (r, _) in zip(others, paired) if r["label"] == "correct"),
        misses=[r for r in correct if not accepted[r["id"]]])


def print_sets(sets: dict[str, list[dict]], misses: int, baseline: str | None) -> None:
    """The figures table; with `baseline`, a row for that commit's grader above today's, on the same pairs."""
    from sft.text.math_answers import grade

    graders = {"now": None} if baseline is None else {f"before ({baseline})": load_grader(baseline), "now": None}
    print("| set | rows | grader | recall on correct (human-verified) | wrong accepted | false acceptance (correct ones) |")
    print("|---|---:|---|---:|---:|---:|")
    for name, rows in sets.items():
        mismatched = mismatched_references(rows)
        for label, grader in graders.items():
            f = measure(rows, grader=grader, mismatched=mismatched)
            print(f"| {name} | {f.rows} | {label} | {f.recall:.1%} of {f.correct} ({f.human_recall:.1%} of {f.human}) | "
                  f"{f.wrong_accepted} of {f.wrong} | {f.false_acceptance:.2%} ({f.misread} of {f.correct}) |")
            for row in f.misses[:misses] if grader is None else []:
                found = grade(row["solution"], row["reference"], row["problem"])
                print(f"    miss {row['id']}: reference {row['reference']!r}, found {found.answer!r} ({found.rule})")


VERDICTS = GRADED_DIR / "math_verify" / "verdicts.jsonl"  # not a labelled set: in a folder of its own


def compared_pairs(sets: dict[str, list[dict]]) -> set[tuple[str, str]]:
    """(answer found, reference value) for every comparison grading each row against its own and a
    mismatched reference makes, less those decided by spelling or plain-number arithmetic alone."""
    from sft.text.answer_equivalence import _exact_numbers, _normalise
    from sft.text.math_answers import find_conclusion, read_reference, reference_answer

    pairs = set()
    for rows in sets.values():
        for row, other in zip(rows, mismatched_references(rows)):
            found = find_conclusion(row["solution"], row["problem"]).answer
            for reference in (row["reference"], other):
                if found and reference:
                    pairs |= {(found.strip(), value.strip()) for value in read_reference(reference_answer(reference)).values}
    return {(p, r) for p, r in pairs if p and r and _normalise(p) != _normalise(r) and _exact_numbers(p, r) is None}


def math_verify_verdict(predicted: str, reference: str, parsed: dict) -> bool:
    """math-verify's own verdict: both answers parsed by its parser (`parsed` remembers parses), then verify."""
    from math_verify import parse, verify

    from sft.text.answer_equivalence import PARSE_TIMEOUT_S

    for text in (predicted, reference):
        if text not in parsed:
            parsed[text] = parse(f"${text}$", parsing_timeout=PARSE_TIMEOUT_S) \
                or parse(text, parsing_timeout=PARSE_TIMEOUT_S)
    gold, target = parsed[reference], parsed[predicted]
    try:
        return bool(gold and target and verify(gold, target, timeout_seconds=1))
    except Exception:  # noqa: BLE001 - as answers_match: an error is no match
        return False


def record_verdicts(sets: dict[str, list[dict]]) -> None:
    import math_verify

    from sft.text.answer_equivalence import answers_match

    pairs, parsed, records, disagree = sorted(compared_pairs(sets)), {}, [], 0
    for predicted, reference in pairs:
        theirs = math_verify_verdict(predicted, reference, parsed)
        records.append({"predicted": predicted, "reference": reference, "math_verify": theirs})
        if answers_match(predicted, reference) != theirs:
            disagree += 1
            print(f"disagree: {predicted!r} against {reference!r}: math-verify {theirs}")
    version = getattr(math_verify, "__version__", None) or _installed_version("math-verify")
    with open(VERDICTS, "w", encoding="utf-8") as handle:
        handle.write(json.dumps({"math_verify_version": version, "pairs": len(records)}) + "\n")
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    print(f"{len(pairs)} answer pairs compared, {disagree} verdicts differ from math-verify's; recorded in {VERDICTS}")


def _installed_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


BASELINE = "0d9b8cc"
"""The grader before prose references, verdicts, several values and the LaTeX fast path (2026-12-05)."""

KINDS = ("number", "fraction", "tuple", "interval", "several values", "expression", "yes/no", "prose", "choice")
MATH_STYLE = ("tuple", "interval", "several values", "expression")


def answer_kind(reference: str) -> str:
    """The kind of a reference answer, from its text: what the speed table is split by."""
    text = re.sub(r"^\s*\$|\$\s*$|\\boxed\{|\\left|\\right|\\[,!; $]", "", reference.strip()).strip()
    text = re.sub(r"(?<=\d)\s*\\(?:text|mbox)\{\s*[A-Za-z][A-Za-z ]*\}\S*$", "", text)  # a unit: 162\text{ minutes}
    words = re.findall(r"[A-Za-z]{2,}", re.sub(r"\\[A-Za-z]+", " ", text))
    if is_choice(text):
        return "choice"
    if "matrix" in text:
        return "tuple"
    if re.fullmatch(r"(?i)(?:\\text\{)?\s*(?:yes|no|true|false)\s*\}?\.?", text):
        return "yes/no"
    if words or "\\text" in text:
        return "prose"
    if re.fullmatch(r"[-+]?(?:\d{1,3}(?:,\s?\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+", text):
        return "number"
    if "\\infty" in text or "\\cup" in text or re.fullmatch(r"(?:[a-z]\s*\\in\s*)?[\[(].*,.*[\])]", text) \
            and "]" in text + text[0]:
        return "interval"
    if re.fullmatch(r"\(.*,.*\)", text):
        return "tuple"
    if "," in re.sub(r"\{[^{}]*\}", "", text) or "\\{" in text:
        return "several values"
    if re.search(r"[a-zA-Z]|!", re.sub(r"\\(?:frac|dfrac|tfrac|sqrt|pi|circ|cdot|times)", "", text)):
        return "expression"
    return "fraction"


def load_grader(commit: str | None):
    """sft.text.math_answers as it is now (commit None), or as it was at `commit` (read with git show)."""
    if commit is None:
        from sft.text import math_answers

        return math_answers
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{commit}:sft/text/math_answers.py"],
                            capture_output=True, text=True)
    if source.returncode != 0:
        raise SystemExit(f"cannot read sft/text/math_answers.py at {commit}: {source.stderr.strip()} "
                         "(run in a git clone with that commit, or pass --baseline with another one)")
    module = types.ModuleType(f"math_answers_{commit}")
    _sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source.stdout, f"{commit}:sft/text/math_answers.py", "exec"), module.__dict__)
    return module


def _empty_caches(grader) -> None:
    """Every cache of answers a grading fills (ours, and math-verify's parses; not its compiled patterns),
    so a repeat costs what new data costs."""
    import math_verify.parser

    for owner in (grader, _sys.modules.get("sft.text.answer_equivalence")):
        for value in vars(owner or types.ModuleType("none")).values():
            if callable(getattr(value, "cache_clear", None)):
                value.cache_clear()
    for name in ("parse_latex_cached", "parse_expr_cached", "extract_latex"):
        getattr(math_verify.parser, name).cache_clear()


def time_kind(grader, rows: list[dict], gradings: int) -> float:
    """Gradings per second of `rows` (each against its own reference), cycled to `gradings`, caches emptied
    on every pass."""
    start, done = time.perf_counter(), 0
    while done < gradings:
        _empty_caches(grader)
        for row in rows[: gradings - done]:
            grader.grade(row["solution"], grader.reference_answer(row["reference"]), row["problem"])
        done += min(len(rows), gradings - done)
    return gradings / (time.perf_counter() - start)


def print_speed(sets: dict[str, list[dict]], baseline: str, gradings: int, repeats: int) -> None:
    rows = [row for name in sorted(sets) for row in sets[name]]
    by_kind = {kind: [r for r in rows if answer_kind(r["reference"]) == kind] for kind in KINDS}
    by_kind["MATH-style (tuples, intervals, several values, expressions)"] = [
        r for r in rows if answer_kind(r["reference"]) in MATH_STYLE]
    for dataset in ("MATH", "GSM8K"):  # every kind of answer, as a data set has them
        by_kind[f"all {dataset} rows"] = [r for r in rows if r["dataset"].split(" (")[0] == dataset]
    graders = {"before": load_grader(baseline), "now": load_grader(None)}
    for grader in graders.values():
        grader.warm_up()  # imports math-verify and sympy: once per process, not timed
    print(f"| answer kind (reference) | solutions | before ({baseline}) /s | now /s | ratio |")
    print("|---|---:|---:|---:|---:|")
    for kind, subset in by_kind.items():
        if not subset:
            continue
        figures = {name: [] for name in graders}
        for _ in range(repeats):  # alternating, so both see the same machine load
            for name, grader in graders.items():
                figures[name].append(time_kind(grader, subset, gradings))
        before, now = statistics.median(figures["before"]), statistics.median(figures["now"])
        print(f"| {kind} | {len(subset)} | {before:,.0f} | {now:,.0f} | {now / before:.1f}x |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="+", default=None,
                        help="labelled sets to measure (file names without .jsonl; default: all)")
    parser.add_argument("--misses", type=int, default=0,
                        help="list up to this many rejected correct solutions per set (0 = none)")
    parser.add_argument("--before", action="store_true",
                        help="also the set figures of the grader at --baseline, on the same pairs")
    parser.add_argument("--speed", action="store_true",
                        help="instead of the set figures, time grading per answer kind, now and at --baseline")
    parser.add_argument("--record-verdicts", action="store_true",
                        help=f"compare answers_match with math-verify's own parsing and record its verdicts in {VERDICTS.name}")
    parser.add_argument("--baseline", default=BASELINE,
                        help=f"git commit whose sft/text/math_answers.py is timed (--speed) or measured (--before) beside today's "
                             f"(default {BASELINE}: the grader before prose references and the LaTeX fast path)")
    parser.add_argument("--gradings", type=int, default=400,
                        help="gradings timed per kind and grader in each repeat (the kind's rows cycled)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating repeats; the median counts")
    args = parser.parse_args(argv)
    sets = load_sets(args.sets)
    if args.record_verdicts:
        record_verdicts(sets)
    elif args.speed:
        print_speed(sets, args.baseline, args.gradings, args.repeats)
    else:
        print_sets(sets, args.misses, args.baseline if args.before else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
