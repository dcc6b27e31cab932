"""Answers written in prose: verdicts (yes/no, existence), the concluding clause of a sentence without
its trailing condition, several values and named values, equivalent forms in one reference.

Usage (as a library; sft.text.math_answers uses these on solutions and on reference answers):
    from sft.text.prose_answers import verdict, main_clause, equation_values, alternatives
    verdict("Therefore, it's impossible to label the cube this way.")         # -> "no"
    verdict("Hence 2n is always a sum of two perfect squares.")               # -> "yes"
    main_clause("the smallest value is 2, and it occurs when x = 0")          # -> "the smallest value is 2"
    equation_values("a = 3 and b = -4")                                       # -> "a=3, b=-4"
    equation_values("x = 1 \\text{ or } x = 2")                               # -> "1, 2"
    alternatives("2\\binom{10}{5}, or equivalently 504")                        # -> ["2\\binom{10}{5}", "504"]

Plain text rules, no math: what they return is graded by math-verify's equivalence.
"""

from __future__ import annotations

import re

YES, NO = "yes", "no"

_LEADING_VERDICT = re.compile(r"^[\W_]*(?:\\text(?:bf)?\{\s*)?(yes|no|true|false)\b(?!\s+(?:such|solutions?|values?|"
                              r"real|integers?|more|less|other|two|one)\b)", re.IGNORECASE)
# Negations that deny the statement (not "not only", "no more than", "no less than", "no other"):
_NEGATION = re.compile(
    r"\b(?:not(?!\s+only\b)|no(?!\s+(?:more|less|other|greater|smaller|larger)\b)|never|cannot|can't|none|neither|"
    r"nor|impossible|nonexistent|unsolvable|fails?|false|nowhere)\b|n't\b", re.IGNORECASE)
_AFFIRMATION = re.compile(
    r"\b(?:yes|true|possible|exists?|there (?:is|are|exists?)|always|can|could|indeed|holds|does|do|is|are|must|"
    r"infinitely many|works)\b", re.IGNORECASE)
_VALUE_STATEMENT = re.compile(r"\b(?:is|are|equals?|be|was|were|of)\s*[:=]?\s*(?:\$|\\\(|\\\[)?\s*[-−]?\d|=\s*[-−]?\d|"
                              r"\bthere (?:is|are|exist)s?\s+(?:exactly\s+|only\s+)?\$?\d", re.IGNORECASE)


def verdict(statement: str) -> str | None:
    """"yes" or "no" when `statement` answers a yes/no question ("Yes.", "it is impossible to ...",
    "there cannot exist ...", "... is always a sum of two squares", "the sequence is not periodic"),
    None when it does not (a number or other value, or no verdict words)."""
    statement = statement.strip()
    leading = _LEADING_VERDICT.match(statement)
    if leading:
        return YES if leading.group(1).lower() in ("yes", "true") else NO
    if _VALUE_STATEMENT.search(statement):
        return None  # "... is 12", "there are 3 such": a value, not a verdict
    if _NEGATION.search(statement):
        return NO
    if _AFFIRMATION.search(statement):
        return YES
    return None


_NONEXISTENCE = re.compile(
    r"\b(?:no\s+(?:such\b|real\b|integers?\b|integer\s+solutions?\b|positive\b|solutions?\b|values?\b|\w+\s+(?:exists?|"
    r"satisf))|there\s+(?:is|are|exists?)\s+no\b|(?:does|do|can)\s*(?:not|n't)\s+exist|cannot\s+exist|"
    r"has\s+no\s+(?:real\s+)?solutions?|none|empty\s+set|\\emptyset|\\varnothing|undefined|does\s*(?:not|n't)\s+"
    r"have\s+(?:a|any)\s+(?:real\s+)?(?:solution|limit))", re.IGNORECASE)


def states_nonexistence(statement: str) -> bool:
    """Does `statement` say that there is no such value ("No such values", "there is no solution",
    "the limit does not exist", "\\emptyset")?"""
    return bool(_NONEXISTENCE.search(statement))


_YES_NO_QUESTION = re.compile(
    r"(?:^|[.?!:,;]\s+|\n\s*|\)\s*)(?:is|are|was|were|does|do|did|can|could|will|would|should|must|has|have|may|might)\b"
    r"[^?.]*\?|\b(?:determine|decide|find out|show|prove|establish|investigate|check|examine)\s+(?:whether|if)\b|"
    r"\bprove or disprove\b|\bis it (?:possible|true)\b|\bdo(?:es)? there exist\b|\bwhether or not\b", re.IGNORECASE)


def asks_yes_no(problem: str) -> bool:
    """Does the problem ask a yes/no question ("Is ...?", "Can one ...?", "Does there exist ...",
    "Determine whether ...")?"""
    return bool(_YES_NO_QUESTION.search(problem))


_TRAILING_CONDITION = re.compile(
    r",?\s+(?:and\s+|which\s+|with\s+)?(?:(?:this|it|that|equality|the\s+(?:minimum|maximum|equality))\s+)?"
    r"(?:occurs|happens|is\s+(?:attained|achieved|reached|obtained)|holds|takes\s+place)\b|"
    r",?\s+(?:attained|achieved|reached|obtained)\s+(?:at|when|for|if)\b|"
    r",?\s+(?:when|whenever|where|if|iff|such\s+that|so\s+that|for\s+which|at\s+which|provided(?:\s+that)?|"
    r"with\s+equality|satisfying|for\s+all|for\s+every|for\s+each)\b", re.IGNORECASE)
_STATES_VALUE = re.compile(r"\d|\b(?:zero|one|two|three|four|five|six|seven|eight|nine|ten)\b", re.IGNORECASE)


def main_clause(text: str) -> str:
    """`text` up to the condition that trails its stated value: "... is 2, and it occurs when x = 0",
    "there are 5050 ordered triples such that a+b+c=99" (a condition before any value, as in "the
    number of n such that ... is 9", is kept)."""
    for match in _TRAILING_CONDITION.finditer(text):
        if _STATES_VALUE.search(text[: match.start()]):
            return text[: match.start()]
    return text


_SEPARATORS = re.compile(r"\s*(?:,\s*(?:and|or)\s+|,|;|\\quad|\\qquad|\\text\{\s*(?:,\s*)?(?:and|or)\s*\}|"
                         r"\s+(?:and|or)\s+)\s*")
_NAME = r"[A-Za-z](?:_\{?[\w]+\}?)?|[A-Za-z]\([A-Za-z]\)"
_NAMED = re.compile(rf"^\s*({_NAME})\s*=\s*([^=]+?)\s*$")
_TUPLE_ASSIGNMENT = re.compile(rf"^\s*\(\s*((?:{_NAME})(?:\s*,\s*(?:{_NAME}))+)\s*\)\s*=\s*\((.+)\)\s*$")


def _top_level_split(text: str) -> list[str]:
    """`text` split at the separators of a list that are outside brackets and braces."""
    parts, depth, start = [], 0, 0
    position = 0
    while position < len(text):
        char = text[position]
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif depth == 0:
            separator = _SEPARATORS.match(text, position)
            if separator and separator.end() > position and (separator.group().strip() or char in ",;"):
                parts.append(text[start:position])
                start = position = separator.end()
                continue
        position += 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def equation_values(text: str) -> str | None:
    """Several equations as one answer: the values when they share one unknown ("x = 1 or x = 2" ->
    "1, 2"), the named values otherwise ("a = 3 and b = -4", "(a, b) = (3, -4)" -> "a=3, b=-4"); None
    unless `text` is two or more equations (or one tuple assignment) and nothing else."""
    tuple_assignment = _TUPLE_ASSIGNMENT.match(text)
    if tuple_assignment:
        names = [n.strip() for n in tuple_assignment.group(1).split(",")]
        values = _top_level_split(tuple_assignment.group(2))
        if len(values) == len(names):
            return ", ".join(f"{n}={v}" for n, v in zip(names, values))
        return None
    parts = _top_level_split(text)
    if len(parts) < 2:
        return None
    named = [_NAMED.match(part) for part in parts]
    if not all(named):
        return None
    names = [m.group(1).replace(" ", "") for m in named]
    if len(set(names)) == 1:
        return ", ".join(m.group(2) for m in named)
    return ", ".join(f"{m.group(1)}={m.group(2)}" for m in named)


_EQUIVALENTLY = re.compile(r",?\s*\(?\s*(?:or\s+equivalently|equivalently|i\.\s?e\.,?|that\s+is,|or,?\s+in\s+other\s+words,?)"
                           r"\s+", re.IGNORECASE)


def alternatives(reference: str) -> list[str]:
    """The equivalent forms one reference gives ("X, or equivalently Y", "X (i.e. Y)"): each counts."""
    parts = []
    for part in _EQUIVALENTLY.split(reference):
        part = part.strip().rstrip(".").strip()
        while part.endswith(")") and part.count(")") > part.count("("):  # "X (i.e. Y)": Y's closing bracket
            part = part[:-1].rstrip(" .")
        parts.append(part)
    return [p for p in parts if p] or [reference]
