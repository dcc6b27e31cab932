"""Grading real model-written solutions as a person would: recall on correct ones, false acceptance.

The labelled sets are tests/assets/graded_solutions/*.jsonl: real solutions by GPT-4, GPT-3.5,
PaLM 2, Llama-family, Qwen and other models, with their problems' reference answers and correctness
labels from the sources (human step-by-step verification for PRM800K, MR-GSM8K, ProcessBench and
others; the sources' own flags elsewhere). README.md there records the source (repository, path,
commit, row) of every row and how it was selected; frozen.jsonl is a held-out set of competition
problems that is never used to develop the rules. Goals, on every set: at least 85% of the correct
solutions accepted, at most 2% accepted against another problem's reference answer.
scripts/benchmark_grading.py prints the figures these tests check.
"""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
from conftest import REPO_ROOT

from sft.text.math_answers import (answers_match, extract_final_answer, find_conclusion, find_verdict, grade,
                                   read_reference, reference_answer)

_spec = importlib.util.spec_from_file_location("benchmark_grading", REPO_ROOT / "scripts" / "benchmark_grading.py")
benchmark_grading = importlib.util.module_from_spec(_spec)
sys.modules["benchmark_grading"] = benchmark_grading  # its dataclass looks its module up
_spec.loader.exec_module(benchmark_grading)

SETS = benchmark_grading.load_sets()
HELD_OUT_SOURCES = ("vcot", "ps", "gsmplus", "mmlupro", "tqa")
"""heldout.jsonl's sources: collected after the grader's first rules were written (see its README section)."""


@pytest.fixture(scope="module")
def figures():
    """Recall and false acceptance of every labelled set (scripts/benchmark_grading.py's measure)."""
    return {name: benchmark_grading.measure(rows) for name, rows in SETS.items()}


def test_the_labelled_sets_are_real_and_record_their_sources():
    rows = [row for rows in SETS.values() for row in rows]
    assert len(rows) >= 1800 and {"solutions", "freeform", "heldout", "frozen"} <= set(SETS)
    for row in rows:
        assert row["source"]["repo"] and row["source"]["path"] and len(row["source"]["commit"]) == 40, row["id"]
        assert row["label"] in ("correct", "incorrect", "unlabelled") and row["reference"].strip()
    assert len({r["id"] for r in rows}) == len(rows)
    for name, rows in SETS.items():  # every set has human-verified correct solutions and wrong ones
        assert sum(r["label"] == "correct" and r["label_by"] == "human" for r in rows) >= 50, name
        assert sum(r["label"] == "incorrect" for r in rows) >= 100, name
    assert sum(r["label"] == "correct" and r["label_by"] == "human" for r in SETS["frozen"]) >= 150


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SETS))
def test_each_set_keeps_its_correct_solutions_and_rejects_other_problems_answers(figures, name):
    found = figures[name]
    print(f"{name}: recall {found.recall:.1%} of {found.correct} ({found.human_recall:.1%} of {found.human} "
          f"human-verified); false acceptance {found.false_acceptance:.2%} ({found.misread} correct ones)")
    assert found.human_recall >= 0.85 and found.recall >= 0.85
    assert found.false_acceptance <= 0.02 and found.misread <= 0.005 * found.correct
    # a wrong solution can coincide with the reference as written (a source's label noise); few do
    assert found.wrong_accepted <= 0.02 * found.wrong


@pytest.mark.slow
def test_the_held_out_sources_are_graded_as_well_as_the_rest(figures):
    held_out = [r for r in SETS["heldout"] if r["label"] == "correct" and r["id"].split("-")[0] in HELD_OUT_SOURCES]
    assert len(held_out) >= 150 and figures["heldout"].recall >= 0.85


@pytest.mark.slow
def test_strict_grading_is_todays_extraction(figures):
    """--strict-grading: only the standard forms count, so many correct solutions go unrecognised."""
    correct = [r for rows in SETS.values() for r in rows if r["label"] == "correct"]
    strict = sum(benchmark_grading.accepts(r, r["reference"], strict=True) for r in correct)
    lenient = sum(f.recall * f.correct for f in figures.values())
    assert strict < lenient
    for row in correct[:200]:
        found = grade(row["solution"], row["reference"], strict=True)
        assert (found.answer is None) == (extract_final_answer(row["solution"]) is None)


@pytest.mark.slow
def test_every_answer_pair_gets_math_verifys_own_verdict():
    """Answers are compared without math-verify's LaTeX grammar where they can be (numbers exactly,
    the common forms by sft/text/latex_sympy.py, unequal expressions by one numeric probe): on every
    pair that grading the labelled sets compares (neither spelled the same nor two plain numbers), the
    verdict is the one math-verify gives when it parses both answers itself. Its verdicts are recorded
    by `scripts/benchmark_grading.py --record-verdicts`; a pair missing there is asked of math-verify."""
    import math_verify  # noqa: F401
    from importlib.metadata import version

    lines = (benchmark_grading.VERDICTS).read_text(encoding="utf-8").splitlines()
    header, recorded = json.loads(lines[0]), [json.loads(line) for line in lines[1:]]
    assert header["math_verify_version"] == version("math-verify"), "rerun --record-verdicts for this math-verify"
    known = {(r["predicted"], r["reference"]): r["math_verify"] for r in recorded}
    pairs = benchmark_grading.compared_pairs(SETS)
    missing = [pair for pair in pairs if pair not in known]
    assert len(missing) <= 0.1 * len(pairs), "rerun scripts/benchmark_grading.py --record-verdicts"
    parsed: dict = {}
    known |= {pair: benchmark_grading.math_verify_verdict(*pair, parsed) for pair in missing}
    differ = [(p, r, known[(p, r)]) for p, r in sorted(pairs) if answers_match(p, r) != known[(p, r)]]
    assert len(pairs) >= 1000 and not differ, differ[:10]


@pytest.mark.parametrize(
    ("solution", "answer", "rule"),
    [
        ("We count them.\nTherefore, there are 239 such strings of length 6.", "239", "concluding_sentence"),
        ("The recurrence gives the rest.\nThe number of tilings is T(6) = 76.", "76", "concluding_sentence"),
        ("Each vertex connects to n-3 others.\nSo the number of diagonals is given by the expression n(n-3)/2.",
         "n(n-3)/2", "concluding_sentence"),
        ("Summing the series, we get\n\\[ S = n(n+1)2^{n-2}. \\]", "n(n+1)2^{n-2}", "display"),
        ("Adding up the three parts, the total is\n\n**76**", "76", "bold"),
        ("Pair the terms.\n\nAnswer: 5050", "5050", "answer_line"),
        ("Pair the terms.\n\n**Final Answer:** $\\dfrac{1}{2}$", "\\dfrac{1}{2}", "answer_line"),
        ("Simplify.\n# Answer\n\n2/3", "2/3", "answer_line"),
        ("So he has to spend $2*6 = $<<2*6=12>>12.\nA: 12", "12", "answer_line"),
        ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72", "72", "gsm8k"),
        ("So the volume is 216 cubic inches.", "216", "concluding_sentence"),
        ("Therefore, she pays $18.", "18", "concluding_sentence"),
        ("Thus, the perimeter is $12\\text{ cm}$.", "12", "concluding_sentence"),
        ("The sum is 5. The answer is $\\boxed{5}$.", "5", "boxed"),
        ("I first guessed \\boxed{3}, but that is wrong. Recounting, the answer is 4.", "4", "answer_phrase"),
        ("So, the correct answer is (C) Plane.", "(C)", "answer_phrase"),
        ("Thus, Karla would have saved 550 gallons last year had she driven a car averaging 48 miles per gallon.",
         "550", "concluding_sentence"),
    ],
)
def test_each_ending_style_gives_the_stated_answer(solution, answer, rule):
    problem = "Karla drove 12,000 miles in an SUV averaging 15 miles per gallon; a hybrid averages 48."
    found = find_conclusion(solution, problem)
    assert (found.answer, found.rule) == (answer, rule)


@pytest.mark.parametrize("solution", ["Step 1: add the numbers.\nStep 2", "I am not sure how to solve this.", "", None])
def test_no_conclusion_is_no_answer(solution):
    assert find_conclusion(solution) .answer is None
    assert grade(solution, "3").outcome == "no_answer"


def test_grading_outcomes():
    assert grade("Therefore, x = 1/2.", "0.5").outcome == "correct"
    assert grade("Therefore, x = 1/3.", "0.5").outcome == "wrong"
    assert grade("Therefore, x = 1/3.", None).outcome == "no_reference"
    assert grade("Hence the answer is $\\frac{3}{4}$.", "\\frac{3}{4}").rule == "answer_phrase"


YES_NO_PROBLEM = "Is it possible to label the vertices of a cube with 1, 2, ..., 8 so that every face has the same sum?"


@pytest.mark.parametrize(
    ("solution", "reference", "problem", "outcome"),
    [
        # yes/no conclusions in prose, negation included
        ("Each face would need sum 18, but vertex 8 ... Therefore, it's impossible to label the cube this way.",
         "No", YES_NO_PROBLEM, "correct"),
        ("Trying all cases, we find that such a labeling is possible.", "No", YES_NO_PROBLEM, "wrong"),
        ("By the identity above, 2n is always a sum of two perfect squares.", "Yes",
         "If n is a sum of two squares, is 2n always a sum of two squares?", "correct"),
        ("Thus there cannot exist a polynomial with integer coefficients with this property.", "\\text{No}",
         "Does there exist a polynomial P with integer coefficients such that P(1) = 2 and P(3) = 5?", "correct"),
        ("So the sequence is not periodic.", "No", "Is the sequence (a_n) periodic?", "correct"),
        ("So the sequence is not periodic.", "Yes", "Is the sequence (a_n) periodic?", "wrong"),
        ("Since 4 divides it, 10^n + 1 is not a perfect square.", "Yes",
         "Is 10^n + 1 a perfect square for some n?", "wrong"),
        ("Hence the answer is $\\boxed{\\text{No}}$.", "No", YES_NO_PROBLEM, "correct"),
        # a yes/no reference against a solution that states a number: no verdict read into it
        ("So the total is 12.", "Yes", "How many coins does she have?", "wrong"),
        ("So the total is 12.", "No", "Is the total even?", "wrong"),
        # "no such value" references
        ("Checking both cases, no such values of a exist.", "No such values", "Find all real a such that ...", "correct"),
        ("Therefore, the limit does not exist.", "The limit does not exist", "Find the limit of a_n.", "correct"),
        ("Therefore, the limit is 3.", "The limit does not exist", "Find the limit of a_n.", "wrong"),
    ],
)
def test_verdicts_and_nonexistence_are_read_in_prose(solution, reference, problem, outcome):
    assert grade(solution, reference, problem).outcome == outcome


@pytest.mark.parametrize(
    ("solution", "reference", "answer"),
    [
        # the concluding value, not a number from a trailing condition
        ("Thus the smallest value of f is 2, and it occurs when x = 0.", "2", "2"),
        ("By AM-GM, the maximum is 8, and this occurs when a = b = c.", "8", "8"),
        ("Therefore, there are 5050 different ordered triples (a, b, c) of nonnegative integers such that "
         "a+b+c=99.", "5050", "5050"),
        ("The minimum value is $2$, attained at $x=0$.", "2", "2"),
        # expressions: factorial, binomials, a factorization
        ("Each arrangement is a permutation, so the number of ways is n!.", "n!", "n!"),
        ("Choosing the four vertices fixes the quadrilateral, so the answer is C(n, 4).", "\\binom{n}{4}",
         "\\binom{n}{4}"),
        ("So the expression factors as (x - 1)(x + 1)(x^2 + 1).", "(x^2+1)(x+1)(x-1)", "(x - 1)(x + 1)(x^2 + 1)"),
        # several values and named values, as a set
        ("Solving the quadratic gives the solutions $x = 1$ and $x = 2$.", "1, 2", "1, 2"),
        ("Solving the system, a = 3 and b = -4.", "a=3, b=-4", "a=3, b=-4"),
        ("Hence (a, b) = (3, -4).", "a=3, b=-4", "a=3, b=-4"),
        ("Thus x = a + sqrt(2)a, x = a - sqrt(2)a, x = -a + sqrt(2)a, x = -a - sqrt(2)a.",
         "a+\\sqrt{2}a, a-\\sqrt{2}a, -a+\\sqrt{2}a, -a-\\sqrt{2}a",
         "a + \\sqrt{2}a, a - \\sqrt{2}a, -a + \\sqrt{2}a, -a - \\sqrt{2}a"),
        ("The functions are f(x) = 0 and f(x) = 1.", "f(x)=0 or f(x)=1", "0, 1"),
        ("\\[ x = 1, \\quad x = 2 \\]", "\\{1, 2\\}", "1, 2"),
    ],
)
def test_the_concluding_value_expressions_and_several_values(solution, reference, answer):
    verdict = grade(solution, reference, "Find it.")
    assert (verdict.outcome, verdict.answer) == ("correct", answer)


def test_several_values_must_all_be_there():
    assert grade("Solving, x = 1 or x = 3.", "1, 2", "Solve it.").outcome == "wrong"
    assert grade("Solving, a = 3 and b = 4.", "a=3, b=-4", "Find a and b.").outcome == "wrong"


@pytest.mark.parametrize(
    ("reference", "solution", "outcome"),
    [
        # prose references read as carefully as solutions
        ("The limit exists and is equal to 3", "Therefore, the limit is 3.", "correct"),
        ("The limit exists and is equal to 3", "Therefore, the limit is 4.", "wrong"),
        ("98 values", "So there are 98 possible values of the sum.", "correct"),
        ("-3 is the only possible value", "Therefore k = -3.", "correct"),
        ("2*C(10, 5), or equivalently 504", "So there are 504 such paths.", "correct"),
        ("2*C(10, 5), or equivalently 504", "So the count is $2\\binom{10}{5}$.", "correct"),
        ("2*C(10, 5), or equivalently 504", "So there are 252 such paths.", "wrong"),
        # a prose reference that states no answer: no verdict, and the row is not graded wrong
        ("Prove that the points must exist with three colors, but not necessarily with nine.",
         "So the answer is 3.", "no_reference"),
    ],
)
def test_prose_references_are_read(reference, solution, outcome):
    assert grade(solution, reference, "Find it.").outcome == outcome


@pytest.mark.parametrize(
    ("reference", "values", "verdict", "nonexistence"),
    [
        # real prose references: PutnamBench's informal solutions (trishullab/PutnamBench @
        # 3c9b9268ebd132d482938b8e9d242dd71fc1ebc0, informal/putnam.json; problem name in the comment)
        ("Show that the expression equals $n(n+1)2^{n-2}$.", ["n(n+1)2^{n-2}"], None, False),  # putnam_1962_a5
        ("Prove that there are no such functions.", [], None, True),  # putnam_1964_a2
        ("Show that the answer is 25.", ["25"], None, False),  # putnam_1974_a6
        ("Show that the assertion is false.", [], "no", False),  # putnam_1981_b4
        ("Both claims are true.", [], "yes", False),  # putnam_1982_b4
        ("Show that $f_{100}(1) = 101^{99}$.", ["101^{99}"], None, False),  # putnam_1985_b2
        ("Show that the answer is no.", [], "no", False),  # putnam_1990_a5
        ("Show that no such polynomials exist.", [], "no", True),  # putnam_2003_b1
        ("Show that the desired limit is $2/e$.", ["2/e"], None, False),  # putnam_2004_b5
        ("Prove that the smallest value of $a$ is $16$.", ["16"], None, False),  # putnam_2017_b2
        ("The limit exists and equals $\\frac{\\sqrt{2}}{2} \\pi \\log 2$.", ["\\frac{\\sqrt{2}}{2} \\pi \\log 2"],
         None, False),  # putnam_2021_a4
        ("Yes, $S$ must contain all positive integers.", [], "yes", False),  # putnam_2025_b3
        # the kinds
        ("\\text{No such } n \\text{ exists}", [], "no", True),
        ("a=3, b=-4", [], None, False),
        ("12", [], None, False),
    ],
)
def test_reference_reading(reference, values, verdict, nonexistence):
    read = read_reference(reference)
    assert list(read.values[:-1]) == values and read.values[-1] == reference
    assert (read.verdict, read.nonexistence) == (verdict, nonexistence)


def test_the_verdict_of_a_solution_is_its_last_statement():
    assert find_verdict("We check n = 2. The answer is \\boxed{\\text{Yes}}.") == ("yes", "verdict")
    assert find_verdict("Suppose such a labeling exists. Then 8 is on three faces.\n\nHence no such labeling "
                        "exists.") == ("none", "verdict")
    assert find_verdict("Therefore, the answer is \\boxed{12}.") is None


def test_strict_grading_ignores_prose_rules():
    """--strict-grading compares the standard forms only, with the reference as written."""
    assert grade("Therefore, it's impossible.", "No", YES_NO_PROBLEM, strict=True).outcome == "no_answer"
    assert grade("The answer is 3.", "The limit exists and is equal to 3", strict=True).outcome == "wrong"


@pytest.mark.parametrize(
    ("latex", "expected"),
    [
        ("\\frac{n(n+1)}{2}", "n*(n + 1)/2"),
        ("(-\\infty, 2]", "Interval(-oo, 2)"),
        ("(15, -29)", "(15, -29)"),
        ("x \\in [0,1)", "Eq(x, Interval.Ropen(0, 1))"),
        ("a=3, b=-4", "{Eq(a, 3), Eq(b, -4)}"),
        ("\\binom{n}{4}", "binomial(n, 4)"),
        ("(n-1)!", "factorial(n - 1)"),
        ("25,000", "25000"),
        ("\\cos^2 x", "cos(x)**2"),
        ("10^\\circ", "10"),
        ("\\text{east}", "east"),
        ("x \\le 3", "x <= 3"),
        ("(0, 0), (1, 2)", "{Interval.open(1, 2), (0, 0)}"),  # each pair read on its own, as math-verify does
        ("\\lfloor \\frac{n}{2} \\rfloor", "floor(n/2)"),
        ("2516_8", "2516"),  # math-verify drops a base
        # not in the subset: math-verify parses these itself
        ("e^{x}", "exp(x)"),
        ("f(x)=x^2+1", "Eq(f(x), x**2 + 1)"),
        ("x(x+1)", "x*(x + 1)"),
        ("even", None),
        ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", None),
        ("1 < x < 2", None),
        ("sqrt(2)", None),
        ("250,000 \\cdot 0.4", None),
    ],
)
def test_the_latex_fast_path_reads_the_common_forms_and_leaves_the_rest(latex, expected):
    from sft.text.latex_sympy import parse_latex_answer

    parsed = parse_latex_answer(latex)
    assert (None if parsed is None else str(parsed)) == expected


def test_every_rule_grade_records_is_one_prepare_data_counts():
    """manifest.grading.rules counts the rules of RULES (plus strict and none): a rule outside it would go uncounted."""
    from sft.text.math_answers import RULES

    cases = [("Therefore, it's impossible.", "No", YES_NO_PROBLEM), ("So the answer is 3.", "Prove that ...", None),
             ("The answer is (C).", "C", None), ("Thus x = 2.", "2", None), ("", "2", None), ("Hmm.", None, None)]
    rules = {grade(solution, reference, problem).rule for solution, reference, problem in cases}
    assert {"verdict", "unreadable_reference", "choice", "concluding_sentence", "none"} <= rules
    assert rules <= {*RULES, "none"} and grade("\\boxed{2}", "2", strict=True).rule == "strict"

