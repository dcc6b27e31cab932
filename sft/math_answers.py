"""Final-answer extraction and answer equivalence for math solutions, shared by data prep and evaluation.

Usage (as a library):
    from sft.math_answers import extract_final_answer, answers_match
    extract_final_answer("... so the answer is \\boxed{\\frac{1}{2}}.")   # -> "\\frac{1}{2}"
    answers_match("\\frac{1}{2}", "0.5")                                 # -> True

Usage (command line, for a quick check):
    python -m sft.math_answers "The answer is 7" 7

Extraction is deliberately strict: a solution "has a final answer" only when it states one,
in a `\\boxed{...}` (the last one wins), after "final answer"/"the answer is", or after GSM8K's
`####`. A bare last number in running text does not count. Equivalence is math-verify's
(https://github.com/huggingface/Math-Verify): `1/2`, `0.5`, `\\frac{1}{2}` and `\\dfrac12` all
match; `12` and `13` do not.
"""

from __future__ import annotations

import re
import sys
from functools import lru_cache

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_PHRASE = re.compile(
    r"(?:final\s+answer|the\s+answer)\s*(?:is|=|:)?\s*[:=]?\s*(?P<answer>[^\n]+)",
    re.IGNORECASE,
)
_GSM8K = re.compile(r"^\s*####\s*(?P<answer>[^\n]+)", re.MULTILINE)
# Sentence punctuation and markup that trail a stated answer but are not part of it.
_TRAILING = " \t.;,!"


def _last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} with balanced braces, or None."""
    result = None
    for match in _BOXED.finditer(text):
        depth, start = 1, match.end()
        for pos in range(start, len(text)):
            char = text[pos]
            if char == "{":
                depth += 1
            elif char == "}":
                depth -= 1
                if depth == 0:
                    result = text[start:pos]
                    break
    return result.strip() if result is not None else None


def _strip_math_delimiters(answer: str) -> str:
    answer = answer.strip().rstrip(_TRAILING)
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if answer.startswith(left) and answer.endswith(right) and len(answer) > len(left) + len(right):
            answer = answer[len(left) : -len(right)]
    return answer.strip().rstrip(_TRAILING)


def extract_final_answer(text: str | None) -> str | None:
    """The final answer a solution states, as a string, or None when it states none."""
    if not text:
        return None
    boxed = _last_boxed(text)
    if boxed:
        return boxed
    for pattern in (_GSM8K, _ANSWER_PHRASE):
        matches = list(pattern.finditer(text))
        if matches:
            answer = matches[-1].group("answer")
            # Minerva's "Final Answer: The final answer is $7$." repeats the phrase within one match.
            while (inner := pattern.search(answer)) is not None:
                answer = inner.group("answer")
            # "The answer is 7. We checked it." -> "7"
            answer = re.split(r"\.\s", answer, maxsplit=1)[0]
            answer = _strip_math_delimiters(answer)
            if answer:
                return answer
    return None


@lru_cache(maxsize=65536)
def _parse(answer: str):
    from math_verify import parse

    # Wrapping in $...$ lets math-verify's LaTeX extractor read bare LaTeX such as \frac{1}{2};
    # its expression extractor still reads plain forms such as 1/2 and 0.5.
    parsed = parse(f"${answer}$")
    return parsed if parsed else parse(answer)


def _normalise(answer: str) -> str:
    return re.sub(r"\s+", "", answer).rstrip(".")


def answers_match(predicted: str | None, reference: str | None) -> bool:
    """True when `predicted` and `reference` are mathematically equivalent (math-verify)."""
    if predicted is None or reference is None:
        return False
    predicted, reference = predicted.strip(), reference.strip()
    if not predicted or not reference:
        return False
    if _normalise(predicted) == _normalise(reference):
        return True
    from math_verify import verify

    gold, pred = _parse(reference), _parse(predicted)
    if not gold or not pred:
        return False
    try:
        return bool(verify(gold, pred))
    except Exception:  # math-verify raises on expressions sympy cannot compare; that is "no match"
        return False


def reference_answer(value: str | None) -> str | None:
    """A reference given either as a bare answer ("7") or as a full solution ("... \\boxed{7}")."""
    if value is None:
        return None
    value = str(value).strip()
    if not value:
        return None
    return extract_final_answer(value) or value


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Extract a final answer and compare it with a reference.")
    parser.add_argument("solution", help="solution text, e.g. 'The answer is \\boxed{1/2}'")
    parser.add_argument("reference", nargs="?", help="reference answer or solution to compare with")
    args = parser.parse_args(argv)
    answer = extract_final_answer(args.solution)
    print(f"final answer: {answer!r}")
    if args.reference is not None:
        print(f"matches reference: {answers_match(answer, reference_answer(args.reference))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
