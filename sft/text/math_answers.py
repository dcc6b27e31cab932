"""Final answers of math solutions and their equivalence, shared by data preparation and evaluation.

Usage (as a library):
    from sft.text.math_answers import grade, find_conclusion, extract_final_answer, answers_match
    grade("... Therefore, there are 239 such strings.", "239")          # -> Grade(outcome='correct', ...)
    find_conclusion("Summing, we get\n\\[ S = n(n+1)2^{n-2}. \\]")      # -> answer 'n(n+1)2^{n-2}', rule 'display'
    extract_final_answer("... so the answer is \\boxed{\\frac{1}{2}}.")   # -> "\\frac{1}{2}" (standard forms only)
    answers_match("\\frac{1}{2}", "0.5")                                 # -> True

Usage (command line, for a quick check):
    python -m sft.text.math_answers "Therefore, there are 7 ways." 7

Two questions, answered apart:
- Does a solution state a final answer in a standard form? `extract_final_answer`, strict by
  design: a `\\boxed{...}` (the last one wins), "final answer"/"the answer is", or GSM8K's
  `####`. A bare last number in running text does not count. (prepare_data
  --require-final-answer; evaluation's standard-form rate.)
- Is its conclusion correct? `grade(solution, reference)`: `find_conclusion` finds what the
  solution concludes, wherever and however it says it (boxed, answer phrases and lines, bold,
  a closing display, a concluding sentence, with units and trailing words removed) and
  `answers_match` compares it with the reference (prepare_data --answer-key/--answers,
  evaluation's accuracy; `strict=True` uses the standard forms only).
Equivalence is math-verify's (https://github.com/huggingface/Math-Verify): `1/2`, `0.5`,
`\\frac{1}{2}` and `\\dfrac12` all match; `12` and `13` do not. Plain numbers are compared
exactly without sympy (the common case, far faster).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
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


# ---------------------------------------------------------------------------------------
# What a free-form solution concludes (lenient): for grading correctness, not format.

RULES = ("boxed", "gsm8k", "answer_line", "answer_phrase", "bold", "display", "closing_value", "concluding_sentence",
         "choice")
"""How `find_conclusion` found an answer (`none` when it found none)."""

_CALCULATOR = re.compile(r"<<[^<>\n]*>>")  # GSM8K's calculator annotations: 40-4 = <<40-4=36>>36
_GSM8K_ANYWHERE = re.compile(r"(?:^|\s)####\s*(?P<answer>[^\n#]+)")
_ANSWER_LINE = re.compile(
    r"^[ \t>*#]*(?:\*\*|__)?\s*(?:the\s+)?(?:final\s+answer|answer)\s*(?:\*\*|__)?\s*[:：]\s*(?:\*\*|__)?"
    r"(?P<answer>[^\n]*)$|^[ \t]*#+\s*(?:final\s+)?answer\s*[:：]?\s*$",
    re.IGNORECASE | re.MULTILINE,
)
_SHORT_ANSWER_LINE = re.compile(r"^[ \t]*(?:A|Ans)\s*[:：]\s*(?P<answer>[^\n]+)$", re.MULTILINE)
# A lookahead, so that "... the answer is 17. The answer is (F)." gives both statements.
_LENIENT_PHRASE = re.compile(
    r"(?=(?:the\s+)?(?:final\s+|correct\s+)?answer\s+(?:is|would be|will be|should be)\s*[:=]?\s*(?P<answer>[^\n]+))",
    re.IGNORECASE,
)
_CHOICE = re.compile(r"^\s*(?:\\text\{)?\(?([A-J])\)?\}?(?=$|[\s.,;:)]|\s*[-–:]\s)")
_CHOICE_STATEMENT = re.compile(
    r"(?:option|choice|answer)\s*(?:is|would be|:)?\s*(?:\\text\{|\*\*)?\s*\(?([A-J])\)(?=\W|$)"
    r"|(?:option|choice|answer)\s*(?:is|would be|:)\s*(?:\\text\{|\*\*)?\s*([A-J])(?=[\s.,;:}*]|$)"
    r"|\(([A-J])\)\s*[.)]?\s*$", re.IGNORECASE | re.MULTILINE)
_BOLD = re.compile(r"\*\*(?P<answer>[^*\n]{1,200})\*\*|__(?P<answer2>[^_\n]{1,200})__")
_DISPLAY = re.compile(r"\\\[(?P<a>.+?)\\\]|\$\$(?P<b>.+?)\$\$", re.DOTALL)
_INLINE_MATH = re.compile(r"\$(?P<m>[^$\n]+)\$|\\\((?P<n>.+?)\\\)")
_CONCLUDING = re.compile(
    r"\b(?:therefore|thus|so|hence|consequently|in conclusion|in summary|in total|altogether|overall|in all|"
    r"finally|this means|which means|we (?:get|have|find|obtain|conclude)|the (?:result|total|solution|value) is)\b",
    re.IGNORECASE,
)
# What comes right before a stated value; longest first (an alternation takes the first alternative
# that matches where it starts).
_ANCHOR = re.compile(
    r"\b(?:is given by the (?:expression|formula)|is given by|is equal to|are equal to|equal to|equals|comes to|"
    r"amounts to|totals|a total of|results in|giving us|gives us|giving|will be|would be|there (?:are|is|were|was|"
    r"will be)|has|have|had|is|are|was|were)\b\s*[:=]?\s*|:\s+",
    re.IGNORECASE,
)
_FILLER = re.compile(r"^(?:(?:approximately|about|exactly|only|just|roughly|around|simply|now|then|still|also|a|an|the)"
                     r"\s+)+", re.IGNORECASE)
_VERDICTS = re.compile(r"^(?:undefined|no solutions?|none|impossible|infinite|infinity|true|false|yes|no|even|odd|"
                       r"neither)\b", re.IGNORECASE)
"""Answers that are words: "... is undefined", "the function is even"."""
_NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}
_NUMBER = re.compile(r"(?<![\w.#])[-−]?\$?\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d+)?%?")  # not "#2", a step label
_SENTENCES = re.compile(r"(?<=[.!?])\s+(?=[A-Z\\$*(])|\n+")
_WORD = re.compile(r"(?<![\\\w])[A-Za-z][a-z]+(?![\w(])")
_MATH_NAMES = {"pi", "sqrt", "sin", "cos", "tan", "cot", "sec", "csc", "log", "ln", "exp", "frac", "dfrac", "infty",
               "cup", "cap", "le", "ge", "leq", "geq", "neq", "pm", "mp", "arcsin", "arccos", "arctan", "mod", "gcd",
               "lcm"}
"""Words that are math, not prose, when written without a backslash."""


@dataclass(frozen=True)
class Conclusion:
    """What a solution concludes: the answer it states (None when none is found), the rule that found
    it, and, when the answer is an equation's right-hand side, the whole equation (`x^2 + y^2 = 13`)."""

    answer: str | None
    rule: str
    equation: str | None = None


def _unwrap(value: str) -> str:
    """`value` without bold markers, a \\boxed{} around all of it, math delimiters and sentence punctuation."""
    value = value.strip()
    value = re.sub(r"^(?:\*\*|__)|(?:\*\*|__)$", "", value).strip()
    boxed = _last_boxed(value)
    if boxed and re.fullmatch(r"[\s$\\(\[]*\\(?:boxed|fbox)\s*\{.*\}[\s$\\)\].,;]*", value, re.DOTALL):
        value = boxed
    return _strip_math_delimiters(value)


def _clean(value: str) -> str:
    """A stated answer without markup, currency, units and degree signs (math-verify compares the rest)."""
    value = _unwrap(value).replace("\\$", "").replace("\\%", "%").replace("−", "-").replace("\\!", "")
    value = re.sub(r"\\[\])]\s*$|^\s*\\[\[(]", "", value).strip()  # a delimiter left by a cut display
    value = re.sub(r"^\$\s*(?=\d)", "", value)
    # a unit after a value ("12 \text{ cm}"), not a value that is text ("\text{even}")
    value = re.sub(r"(?<=[\w})])\s*\\(?:text|mathrm|textbf|mbox|operatorname)\{\s*[a-zA-Z][a-zA-Z .]*\}\s*$", "",
                   value).strip()
    value = re.sub(r"^\\(?:text|textbf|mathrm)\{(?P<t>[^{}]*)\}$", r"\g<t>", value).strip()
    value = re.sub(r"(?<![\\A-Za-z])pi(?![A-Za-z])", r"\\pi", value)  # 12*pi as math-verify reads 12\pi
    value = re.sub(r"(?:\^\{\\circ\}|\^\\circ|°)\s*$", "", value).strip()  # a degree unit, not sin 80°
    return value.rstrip(_TRAILING).strip()


def _words(text: str) -> list[str]:
    """The natural-language words of `text` (outside $...$, not math names)."""
    prose = _INLINE_MATH.sub(" ", text)
    return [w for w in _WORD.findall(prose) if w.lower() not in _MATH_NAMES]


def _split_equation(math: str) -> tuple[str, str | None]:
    """(right-hand side of the last `=` or approximation, the whole equation or None when there is none)."""
    parts = re.split(r"(?<![<>!:])=(?!=)|\\approx|≈", math)
    return parts[-1], (math if len(parts) > 1 else None)


def _rhs(math: str) -> str:
    return _split_equation(math)[0]


def _leading_value(phrase: str) -> str | None:
    """The value a phrase starts with: its tokens up to the first word of prose ("216 cubic inches"
    -> 216); a number word ("four such integers") as digits."""
    phrase = _FILLER.sub("", _CALCULATOR.sub("", phrase).strip())
    spans = list(_INLINE_MATH.finditer(phrase))
    if spans and spans[0].start() == 0:
        return _clean(_rhs(spans[0].group("m") or spans[0].group("n"))) or None
    choice = re.match(r"^\(?([A-J])\)(?=\W|$)", phrase)  # "the best option is B) 5 hours"
    if choice:
        return f"({choice.group(1)})"
    first = phrase.split(maxsplit=1)[0].strip(".,;:!?").lower() if phrase.split() else ""
    if first in _NUMBER_WORDS:
        return _NUMBER_WORDS[first]
    taken = []
    for token in phrase.split():
        core = token.strip(".,;:!?*")
        # a word of prose or a unit (cubic, inches, km/h, cm^2) ends the value
        if re.fullmatch(r"[A-Za-z][a-z]+(?:[/^·][A-Za-z0-9²³]+)*|[A-Za-z]{1,3}/[A-Za-z0-9]{1,3}", core) \
                and core.split("/")[0].lower() not in _MATH_NAMES:
            break
        taken.append(token)
        if token.endswith((".", ";", "!", "?")) and not re.fullmatch(r"[\d.]+", token):
            break
    value = _clean(_rhs(" ".join(taken).strip().rstrip(",")))
    return value if value and re.search(r"[\w\\]", value) else None


def _numbers(text: str) -> list[str]:
    return [n.replace(",", "").replace("$", "").replace("−", "-").replace(" ", "") for n in _NUMBER.findall(text)]


def _sentence_value(sentence: str, problem_numbers: set[str], concludes: bool = False) -> str | None:
    """The answer a sentence states: after its last "is/are/equals/has/there are/a total of/:"; in a
    sentence that concludes ("Therefore", "So", ... or `concludes`: a bold statement), else its last
    math span, the right-hand side of its equation, or its first number the problem does not give."""
    sentence = _CALCULATOR.sub("", sentence)
    marker = _CONCLUDING.search(sentence)
    tail = sentence[marker.end():] if marker and sentence[marker.end():].strip(" .,") else sentence
    anchors = [m.end() for m in _ANCHOR.finditer(tail)]
    for anchor in sorted(anchors, reverse=True):
        verdict = _VERDICTS.match(_FILLER.sub("", tail[anchor:].lstrip()))
        if verdict:
            return verdict.group().lower()
        phrase = tail[anchor:]
        if "=" in phrase and not _INLINE_MATH.search(phrase):  # ": 800 gallons - 250 gallons = 550 gallons."
            phrase = _rhs(phrase)
        value = _leading_value(phrase)
        if value:
            return value
    if marker is None and not concludes:
        if "=" in sentence and not _INLINE_MATH.search(sentence):  # "... 1+2+...+12 = 78 chimes."
            return _leading_value(_rhs(sentence))
        return None  # "Step 1", a truncated output's last words: no conclusion
    spans = [m.group("m") or m.group("n") for m in _INLINE_MATH.finditer(tail)]
    fresh = [span for span in spans if _clean(_rhs(span)) not in problem_numbers]
    if fresh:
        value = _clean(_rhs(fresh[-1]))
        if value:
            return value
    if "=" in tail:  # a plain-text equation: "800 gallons - 250 gallons = 550 gallons."
        value = _leading_value(_rhs(tail))
        if value:
            return value
    numbers = [n for n in _numbers(tail) if n.rstrip("%") not in problem_numbers] \
        or [n for n in _numbers(sentence) if n.rstrip("%") not in problem_numbers] \
        or _numbers(tail)  # "... 679 words in total"; "Therefore, Elly needs 2 bookcases" when 2 is a given too
    if numbers:
        return _clean(numbers[0])
    return None


def _statement_value(stated: str, problem_numbers: set[str], concludes: bool = False) -> str | None:
    """The value of an explicit answer statement: the whole of a short one ("(2, 4)", "12*pi"), less
    trailing words ("12 tomatoes"); the stated value of a sentence."""
    stated = _CALCULATOR.sub("", stated).strip()
    if not stated:
        return None
    unwrapped = _unwrap(stated)
    choice = _CHOICE.match(unwrapped)  # a multiple-choice letter: "(C) Plane", "D)", "\\text{(C)}"
    if choice and (len(unwrapped.strip()) <= 4 or re.match(r"^\s*(?:\\text\{)?\([A-J]\)", unwrapped)):
        return f"({choice.group(1)})"
    if len(_words(unwrapped)) >= 2:
        return _sentence_value(stated, problem_numbers, concludes)
    if re.match(r"^[-+$(\[\\{\d.]", unwrapped):
        value = _leading_value(unwrapped)
        if value:
            return value
    value = _clean(_rhs(unwrapped))
    return value or None


def _closing_paragraph(text: str) -> str:
    """The last paragraph that states something (a digit, math, a number word): a closing
    pleasantry ("I hope this helps!") is skipped."""
    paragraphs = [p for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]
    for index in range(len(paragraphs) - 1, -1, -1):
        words = {w.lower() for w in re.findall(r"[A-Za-z]+", paragraphs[index])}
        if re.search(r"\d|\\[\[(]|\$", paragraphs[index]) or words & set(_NUMBER_WORDS):
            return paragraphs[index]
    return paragraphs[-1] if paragraphs else ""


def find_conclusion(text: str | None, problem: str | None = None) -> Conclusion:
    """The answer a free-form solution concludes with, wherever and however it states it.

    First the explicit statements: `\\boxed{}`, GSM8K's `#### X`, answer lines ("Answer: X",
    "**Final answer:** X", "# Answer" then X on the next lines, "A: X" at the end) and "the
    answer is X"; the one written last counts (a model that corrects itself ends with the
    correction). Without one, the closing paragraph (a closing pleasantry skipped): its last bold
    value, a closing display or lone equation's right-hand side, a value alone on the last line,
    or a concluding sentence ("Therefore/Thus/So/Hence ... is/are/equals X", "there are X ...",
    "... a total of X", else its last math span, else its first number that `problem`, when
    given, does not already contain). Units, currency and trailing words are removed.
    """
    if not text or not text.strip():
        return Conclusion(None, "none")
    text = _CALCULATOR.sub("", text)
    problem_numbers = {n.rstrip("%") for n in _numbers(problem)} if problem else set()
    statements: list[tuple[int, int, str, str]] = []  # (end, priority, rule, stated text)
    for match in _BOXED.finditer(text):
        boxed = _last_boxed(text[match.start():].split("\n\n", 1)[0]) or _last_boxed(text[match.start():])
        if boxed:
            statements.append((match.end() + len(boxed) + 1, 0, "boxed", boxed))  # + its closing brace
    for match in _GSM8K_ANYWHERE.finditer(text):
        statements.append((match.end(), 1, "gsm8k", match.group("answer")))
    for match in _ANSWER_LINE.finditer(text):
        stated = match.group("answer")
        end = match.end()
        if stated is None or not stated.strip(" *_"):  # "# Answer" with the value on the next lines
            rest = text[end:].lstrip("\n \t")
            stated = rest.split("\n\n", 1)[0]
            end += len(text[end:]) - len(rest) + len(stated)
        statements.append((end, 2, "answer_line", stated))
    closing_lines = text.rstrip().rsplit("\n", 3)
    offset = len(text.rstrip()) - len("\n".join(closing_lines[-3:]))
    for match in _SHORT_ANSWER_LINE.finditer("\n".join(closing_lines[-3:])):
        statements.append((offset + match.end(), 2, "answer_line", match.group("answer")))
    for match in _LENIENT_PHRASE.finditer(text):
        stated = re.split(r"(?<=[^\d\s])\.\s|\.$|\.(?=\s*[A-Z])", match.group("answer"), maxsplit=1)[0]
        statements.append((match.start("answer") + len(stated), 3, "answer_phrase", stated))
    for _, _, rule, stated in sorted(statements, key=lambda s: (-s[0], s[1])):
        value = _statement_value(stated, problem_numbers, concludes=True)
        if value:
            return Conclusion(value, "boxed" if _BOXED.search(stated) else rule)
    closing = _closing_paragraph(text)
    bolds = [m.group("answer") or m.group("answer2") for m in _BOLD.finditer(closing)]
    bolds = [b for b in bolds if re.search(r"\d", b) or _INLINE_MATH.search(b)]
    if bolds:
        value = _statement_value(bolds[-1], problem_numbers, concludes=True)
        if value:
            return Conclusion(value, "bold")
    displays = list(_DISPLAY.finditer(closing))
    math = None
    if displays and not closing[displays[-1].end():].strip(" \t\n.,;"):
        math = displays[-1].group("a") or displays[-1].group("b") or ""
    elif re.fullmatch(r"\s*(?:\$[^$\n]+\$|\\\(.+?\\\))[\s.,;]*", closing):  # a lone inline equation
        body = closing.strip().rstrip(".,; ")
        math = body[1:-1] if body.startswith("$") else body[2:-2]
    if math is not None:
        rhs, equation = _split_equation(math)
        value = _clean(rhs)
        if value:
            return Conclusion(value, "display", _clean(equation) if equation else None)
    last_line = closing.strip().splitlines()[-1] if closing.strip() else ""
    if re.fullmatch(r"\s*[-−$]?\d[\d,]*(?:\.\d+)?%?\s*", last_line) or re.fullmatch(r"[^\n]*=\s*\S+\s*", last_line) \
            and not _words(last_line):
        value = _leading_value(_rhs(last_line))  # a value or an equation alone on the last line: "6 × 20 = 120"
        if value:
            return Conclusion(value, "closing_value")
    sentences = [s for s in _SENTENCES.split(closing) if s.strip()]
    for index, sentence in enumerate(reversed(sentences[-3:])):
        if index and not _CONCLUDING.search(sentence) and not _ANCHOR.search(sentence):
            continue
        value = _sentence_value(sentence, problem_numbers)
        if value:
            return Conclusion(value, "concluding_sentence")
    return Conclusion(None, "none")


def warm_up() -> None:
    """Import math-verify and sympy and exercise its LaTeX grammar once (a second or two): done before
    prepare_data forks its workers, every worker starts warm instead of paying for it."""
    for answer, reference in (("\\frac{1}{2}", "0.5"), ("(1, 2)", "(1,2)"), ("[0, 1)", "x \\in [0,1)"),
                              ("\\{1, 2\\}", "1, 2"), ("x^2 + 1", "1 + x^2"), ("2\\sqrt{3}", "\\sqrt{12}")):
        answers_match(answer, reference)
    _answers_match.cache_clear()


@dataclass(frozen=True)
class Grade:
    """The verdict on one solution against a reference answer."""

    outcome: str
    """correct, wrong, no_answer (find_conclusion found none) or no_reference."""
    rule: str
    answer: str | None


def grade(solution: str | None, reference: str | None, problem: str | None = None, strict: bool = False) -> Grade:
    """Is the solution's conclusion the reference answer? `problem` helps to tell a concluding
    sentence's answer from the givens it repeats. `strict`: only the standard final-answer forms
    count (extract_final_answer), as before the lenient rules existed."""
    if reference is None or not str(reference).strip():
        return Grade("no_reference", "none", None)
    letter = _CHOICE.fullmatch(_clean(str(reference))) if len(_clean(str(reference))) <= 8 else None
    if strict:
        answer = extract_final_answer(solution)
        found = Conclusion(answer, "strict" if answer else "none")
    elif letter and solution:  # a multiple-choice problem: the letter the solution picks last
        picks = [next(g for g in m.groups() if g) for m in _CHOICE_STATEMENT.finditer(solution)]
        found = Conclusion(f"({picks[-1].upper()})", "choice") if picks else find_conclusion(solution, problem)
    else:
        found = find_conclusion(solution, problem)
    if found.answer is None:
        return Grade("no_answer", found.rule, None)
    cleaned = _clean(str(reference))
    if letter:
        chosen = _CHOICE.fullmatch(found.answer)
        return Grade("correct" if chosen and chosen.group(1).upper() == letter.group(1).upper() else "wrong",
                     found.rule, found.answer)
    matched = answers_match(found.answer, reference) or (cleaned != str(reference).strip()
                                                         and answers_match(found.answer, cleaned))
    if not matched and found.equation and "=" in str(reference):  # the reference is the equation itself
        matched = answers_match(found.equation, reference)
    return Grade("correct" if matched else "wrong", found.rule, found.answer)


VERIFY_TIMEOUT_S = 1
"""math-verify's limit on parsing or comparing one answer, in whole seconds (its default is 5): an
equivalence sympy cannot settle that fast (a trigonometric identity) counts as no match."""


_NUMERIC_LATEX = re.compile(r"[\d\s+\-*/^().{}]*")
_PARSE_TRANSFORMS = None


def _braced(text: str, start: int) -> tuple[str | None, int]:
    """The content of the {...} group that opens at text[start], and the position after it."""
    depth = 0
    for position in range(start, len(text)):
        if text[position] == "{":
            depth += 1
        elif text[position] == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : position], position + 1
    return None, start


def _numeric_expression(answer: str):
    """A sympy expression for a number written with digits, + - * / ^, parentheses, \\frac, \\sqrt,
    \\pi, \\cdot and \\times (no variable, no comma but thousands separators), parsed without
    math-verify's LaTeX grammar (30-100x faster); None for anything else, which math-verify parses."""
    global _PARSE_TRANSFORMS
    text = re.sub(r"\\left|\\right|\\[,;!]", "", answer.strip().rstrip("."))
    text = re.sub(r"(?<=\d),(?=\d{3}(?:\D|$))", "", text)  # 25,000
    text = re.sub(r"\\[dt]frac", r"\\frac", text)
    for command, pattern in (("frac", "(({})/({}))"), ("sqrt", "sqrt({})")):
        while (match := re.search(rf"\\{command}\s*(?=\{{)", text)) is not None:
            first, end = _braced(text, match.end())
            if first is None:
                return None
            if command == "frac":
                if end >= len(text) or text[end] != "{":
                    return None
                second, end = _braced(text, end)
                if second is None:
                    return None
                replacement = pattern.format(first, second)
            else:
                replacement = pattern.format(first)
            text = text[: match.start()] + replacement + text[end:]
    text = re.sub(r"\\sqrt\s*(\d)", r"sqrt(\1)", text)
    text = text.replace("\\pi", " pi ").replace("\\cdot", "*").replace("\\times", "*")
    if not _NUMERIC_LATEX.fullmatch(text.replace("sqrt", "").replace("pi", "")) or not re.search(r"\d", text):
        return None
    text = text.replace("{", "(").replace("}", ")").replace("^", "**")
    try:
        from sympy.parsing.sympy_parser import (implicit_multiplication_application, parse_expr,
                                                standard_transformations)

        if _PARSE_TRANSFORMS is None:
            _PARSE_TRANSFORMS = standard_transformations + (implicit_multiplication_application,)
        return parse_expr(text, transformations=_PARSE_TRANSFORMS)
    except Exception:  # noqa: BLE001 - anything sympy cannot read goes to math-verify
        return None


@lru_cache(maxsize=65536)
def _parse(answer: str):
    from math_verify import parse

    numeric = _numeric_expression(answer)
    if numeric is not None:
        return [numeric, answer]  # the form math-verify's parse returns: [sympy expression, text]

    # Wrapping in $...$ lets math-verify's LaTeX extractor read bare LaTeX such as \frac{1}{2};
    # its expression extractor still reads plain forms such as 1/2 and 0.5.
    parsed = parse(f"${answer}$", parsing_timeout=VERIFY_TIMEOUT_S)
    return parsed if parsed else parse(answer, parsing_timeout=VERIFY_TIMEOUT_S)


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
    try:
        # An equivalence sympy cannot settle in a couple of seconds (trigonometric identities) is no match.
        return bool(verify(gold, pred, timeout_seconds=VERIFY_TIMEOUT_S))
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

    parser = argparse.ArgumentParser(description="Find a solution's conclusion and grade it against a reference.")
    parser.add_argument("solution", help="solution text, e.g. 'Therefore, there are 7 ways.'")
    parser.add_argument("reference", nargs="?", help="reference answer or solution to compare with")
    parser.add_argument("--problem", default=None, help="the problem text (tells a concluding sentence's answer from its givens)")
    args = parser.parse_args(argv)
    found = find_conclusion(args.solution, args.problem)
    print(f"conclusion: {found.answer!r} (rule: {found.rule})")
    print(f"final answer in a standard form: {extract_final_answer(args.solution)!r}")
    if args.reference is not None:
        verdict = grade(args.solution, reference_answer(args.reference), args.problem)
        print(f"grade: {verdict.outcome}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
