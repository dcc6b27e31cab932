"""Are two final answers the same answer? math-verify's equivalence (https://github.com/huggingface/Math-Verify),
with the common forms parsed without its LaTeX grammar.

Usage (as a library):
    from sft.text.answer_equivalence import answers_match
    answers_match("\\frac{1}{2}", "0.5")          # -> True
    answers_match("(1, 2)", "(2, 1)")               # -> False

math-verify reads LaTeX with an ANTLR grammar (30-150 ms an answer in Python); plain numbers are
decided exactly here, and numbers, tuples, intervals, sets, equations and expressions written in the
common LaTeX forms are turned into the same sympy objects by a small parser (sft.text.latex_sympy),
so math-verify's own comparison (`verify`) decides them without its grammar. Anything else goes to
math-verify's parser unchanged. tests/test_grading.py checks the verdicts against math-verify's own
parsing on every answer pair of the labelled set.
"""

from __future__ import annotations

import re
from functools import lru_cache

from sft.text.latex_sympy import parse_latex_answer


VERIFY_TIMEOUT_S = 1
"""math-verify's limit on comparing two answers, in whole seconds (its default is 5): an equivalence
sympy cannot settle that fast (a trigonometric identity) counts as no match."""
PARSE_TIMEOUT_S = 5
"""math-verify's limit on parsing one answer (its default): a long answer can take over a second on a
busy machine, and a parse cut short reads something else (the last number), so this one is generous."""


@lru_cache(maxsize=65536)
def _parse(answer: str):
    from math_verify import parse

    fast = parse_latex_answer(answer)
    if fast is not None:
        return [fast, answer]  # the form math-verify's parse returns: [sympy expression, text]

    # Wrapping in $...$ lets math-verify's LaTeX extractor read bare LaTeX such as \frac{1}{2};
    # its expression extractor still reads plain forms such as 1/2 and 0.5.
    parsed = parse(f"${answer}$", parsing_timeout=PARSE_TIMEOUT_S)
    return parsed if parsed else parse(answer, parsing_timeout=PARSE_TIMEOUT_S)


def _normalise(answer: str) -> str:
    """A spelling-only canonical form: the same string means the same answer (no math needed)."""
    answer = re.sub(r"\\left\b|\\right\b|\\[,;!: ]|\\displaystyle", "", answer)
    answer = re.sub(r"\\[dt]frac", r"\\frac", answer)
    answer = re.sub(r"\\sqrt\s*(\d)", r"\\sqrt{\1}", answer)
    answer = re.sub(r"\\frac\s*(\d)\s*(\d)", r"\\frac{\1}{\2}", answer)
    return re.sub(r"\s+", "", answer).rstrip(".")


_PLAIN_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+|[-+]?\d+\s*/\s*\d+|"
                           r"[-+]?\\d?frac\{\d+\}\{\d+\}")


def _exact_numbers(predicted: str, reference: str) -> bool | None:
    """For two plain numbers (integers, decimals, a/b, \\frac{a}{b}): True when they are equal; False when
    both are integers and differ (math-verify agrees on both); None otherwise (math-verify decides)."""
    from fractions import Fraction

    values = []
    for text in (predicted, reference):
        text = text.strip().rstrip(".")
        if not _PLAIN_NUMBER.fullmatch(text):
            return None
        text = text.replace(",", "").replace(" ", "")
        fraction = re.fullmatch(r"([-+]?)\\d?frac\{(\d+)\}\{(\d+)\}", text)
        try:
            value = Fraction(int(fraction.group(2)), int(fraction.group(3))) * (-1 if fraction.group(1) == "-" else 1) \
                if fraction else Fraction(text)
        except (ValueError, ZeroDivisionError):
            return None
        values.append((value, value.denominator == 1 and "/" not in text and "frac" not in text and "." not in text))
    (a, a_int), (b, b_int) = values
    if a == b:
        return True
    return False if a_int and b_int else None


def answers_match(predicted: str | None, reference: str | None) -> bool:
    """True when `predicted` and `reference` are mathematically equivalent (math-verify)."""
    if predicted is None or reference is None:
        return False
    return _answers_match(predicted, reference)


@lru_cache(maxsize=65536)
def _answers_match(predicted: str, reference: str) -> bool:
    """answers_match, remembered: the solutions of one problem often share an answer."""
    predicted, reference = predicted.strip(), reference.strip()
    if not predicted or not reference:
        return False
    if _normalise(predicted) == _normalise(reference):
        return True
    exact = _exact_numbers(predicted, reference)
    if exact is not None:  # plain numbers: decided without sympy (the common case, and 100x faster)
        return exact
    from math_verify import verify

    gold, pred = _parse(reference), _parse(predicted)
    if not gold or not pred:
        return False
    if _certainly_different(gold[0], pred[0]):
        return False  # what math-verify's comparison would conclude, without its simplification (10-1000 ms)
    if _same_polynomial(gold[0], pred[0]):
        return True  # likewise: its simplification would find the difference 0
    try:
        # An equivalence sympy cannot settle in a couple of seconds (trigonometric identities) is no match.
        return bool(verify(gold, pred, timeout_seconds=VERIFY_TIMEOUT_S))
    except Exception:  # math-verify raises on expressions sympy cannot compare; that is "no match"
        return False


def _certainly_different(gold, pred) -> bool:
    """True when two plain sympy expressions (no equation, set, lone symbol or percent) take values that
    differ by more than math-verify's rounding at a point where both are finite and real: math-verify
    then answers False as well (its numeric test rounds to 6 decimals; its symbolic test needs the
    difference to simplify to 0), so it need not try. False when unsure: math-verify decides."""
    import math

    import sympy

    try:
        if not _plain_expressions(gold, pred):
            return False
        symbols = sorted(gold.free_symbols, key=str)
        point = {s: sympy.Float(0.5772156649 + 0.3183098862 * (i + 1)) for i, s in enumerate(symbols)}
        a, b = complex(gold.evalf(15, subs=point)), complex(pred.evalf(15, subs=point))
        if a.imag or b.imag or not all(math.isfinite(x) for x in (a.real, b.real)):
            return False
        return abs(a.real - b.real) > 1e-5 * (1 + max(abs(a.real), abs(b.real)))
    except Exception:  # noqa: BLE001 - anything sympy cannot evaluate is left to math-verify
        return False


def _plain_expressions(gold, pred) -> bool:
    """Both are sympy expressions math-verify compares by value alone: not an equation, set, tuple, lone
    symbol (a word answer) or percentage, with the same variables."""
    import sympy

    return isinstance(gold, sympy.Expr) and isinstance(pred, sympy.Expr) and gold.free_symbols == pred.free_symbols \
        and not isinstance(gold, sympy.Symbol) and not isinstance(pred, sympy.Symbol) \
        and not gold.has(sympy.UnevaluatedExpr) and not pred.has(sympy.UnevaluatedExpr)


def _same_polynomial(gold, pred) -> bool:
    """True when two plain expressions without floats are polynomials in their variables whose expanded
    difference is 0 ("7x(x-1)(x-2)" and "7x^3-21x^2+14x"): math-verify's symbolic test then answers True;
    False when unsure."""
    import sympy

    try:
        if not _plain_expressions(gold, pred) or gold.has(sympy.Float) or pred.has(sympy.Float):
            return False
        symbols = sorted(gold.free_symbols, key=str)
        if not (gold.is_polynomial(*symbols) and pred.is_polynomial(*symbols)):
            return False
        return sympy.expand(gold - pred) == 0
    except Exception:  # noqa: BLE001 - anything sympy cannot expand is left to math-verify
        return False


def warm_up() -> None:
    """Import math-verify and sympy and exercise its LaTeX grammar once (a second or two): done before
    prepare_data forks its workers, every worker starts warm instead of paying for it."""
    for answer, reference in (("\\frac{1}{2}", "0.5"), ("(1, 2)", "(1,2)"), ("[0, 1)", "x \\in [0,1)"),
                              ("\\{1, 2\\}", "1, 2"), ("x^2 + 1", "1 + x^2"), ("2\\sqrt{3}", "\\sqrt{12}")):
        answers_match(answer, reference)
    _answers_match.cache_clear()
