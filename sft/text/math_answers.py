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
Equivalence is math-verify's (sft/text/answer_equivalence.py): `1/2`, `0.5`,
`\\frac{1}{2}` and `\\dfrac12` all match; `12` and `13` do not. Plain numbers are compared
exactly without sympy (the common case, far faster).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as `python sft/text/math_answers.py`: make `import sft.x` work
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sft.text.answer_equivalence import (  # noqa: F401  (_answers_match, _parse: the caches benchmarks empty)
    _answers_match,
    _parse,
    answers_match,
    warm_up,
)
from sft.text.prose_answers import NO, alternatives, asks_yes_no, equation_values, main_clause, states_nonexistence, \
    verdict

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
         "choice", "verdict", "unreadable_reference")
"""How `grade` found the answer it judged (`none` when it found none, `strict` with strict=True);
`unreadable_reference`: a prose reference gave no answer to compare with."""

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
    r"will be)|factors? (?:as|into)|factorizes as|simplifies to|reduces to|(?:written|expressed|rewritten) as|"
    r"evaluates to|converges to|tends to|gives|yields|"
    r"has|have|had|is|are|was|were)\b\s*[:=]?\s*|:\s+",
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
    raw, value = value, _unwrap(value).replace("\\$", "").replace("\\%", "%").replace("−", "-").replace("\\!", "")
    value = re.sub(r"\\[\])]\s*$|^\s*\\[\[(]", "", value).strip()  # a delimiter left by a cut display
    value = re.sub(r"^\$\s*(?=\d)", "", value)
    # a unit after a value ("12 \text{ cm}"), not a value that is text ("\text{even}")
    value = re.sub(r"(?<=[\w})])\s*\\(?:text|mathrm|textbf|mbox|operatorname)\{\s*[a-zA-Z][a-zA-Z .]*\}\s*$", "",
                   value).strip()
    value = re.sub(r"^\\(?:text|textbf|mathrm)\{(?P<t>[^{}]*)\}$", r"\g<t>", value).strip()
    value = re.sub(r"(?<![\\A-Za-z])pi(?![A-Za-z])", r"\\pi", value)  # 12*pi as math-verify reads 12\pi
    value = re.sub(r"(?:\^\{\\circ\}|\^\\circ|°)\s*$", "", value).strip()  # a degree unit, not sin 80°
    value = re.sub(r"\\[dt]binom\b", r"\\binom", value)
    value = re.sub(r"\{\s*([^{}]+?)\s*\\choose\s*([^{}]+?)\s*\}", r"\\binom{\1}{\2}", value)  # {n \choose 4}
    value = re.sub(r"(?<![A-Za-z\\])C\s*\(\s*([^(),]+?)\s*,\s*([^(),]+?)\s*\)", r"\\binom{\1}{\2}", value)  # C(n, 4)
    value = re.sub(r"(?<![\\A-Za-z])sqrt\s*\(([^()]+)\)", r"\\sqrt{\1}", value)  # sqrt(2) as \sqrt{2}
    return _keep_factorial(raw, value.rstrip(_TRAILING).strip())


def _keep_factorial(raw: str, value: str) -> str:
    """`value` with the factorial sign that ends `raw` ("n!", "(n-1)!"), which stripping a sentence's "!"
    removed; a "!" after a digit stays an exclamation mark ("the count is 5!")."""
    factorial = re.search(r"[A-Za-z)}](!+)[\s.;,$]*$", raw)
    if factorial and value and (value[-1].isalpha() or value[-1] in ")}"):
        return value + factorial.group(1)
    return value


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
    taken, depth = [], 0
    tokens = phrase.split()
    for index, token in enumerate(tokens):
        core = token.strip(".,;:!?*")
        # a word of prose or a unit (cubic, inches, km/h, cm^2) ends the value, unless a bracket is open
        if depth <= 0 and re.fullmatch(r"[A-Za-z][a-z]+(?:[/^·][A-Za-z0-9²³]+)*|[A-Za-z]{1,3}/[A-Za-z0-9]{1,3}", core) \
                and core.split("/")[0].lower() not in _MATH_NAMES:
            break
        taken.append(token)
        depth += sum(token.count(c) for c in "([{") - sum(token.count(c) for c in ")]}")
        if depth <= 0 and token.endswith((".", ";", "!", "?")) and not re.fullmatch(r"[\d.]+", token):
            break
        if token.endswith(".") and index + 1 < len(tokens) and tokens[index + 1][:1].isupper():
            break  # "7. I hope it is correct"
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
    tail = main_clause(tail)  # "... is 2, and it occurs when x = 0": not the 0
    anchors = [m.end() for m in _ANCHOR.finditer(tail)]
    for anchor in sorted(anchors, reverse=True):
        stated_verdict = _VERDICTS.match(_FILLER.sub("", tail[anchor:].lstrip()))
        if stated_verdict:
            return stated_verdict.group().lower()
        phrase = tail[anchor:]
        listed = _stated_list(phrase)
        if listed:
            return listed
        if "=" in phrase and not _INLINE_MATH.search(phrase):  # ": 800 gallons - 250 gallons = 550 gallons."
            phrase = _rhs(phrase)
        value = _leading_value(phrase)
        if value:
            return value
    if marker is None and not concludes:
        listed = _stated_list(sentence)
        if listed:
            return listed
        if "=" in sentence and not _INLINE_MATH.search(sentence):  # "... 1+2+...+12 = 78 chimes."
            return _leading_value(_rhs(sentence))
        return None  # "Step 1", a truncated output's last words: no conclusion
    listed = _stated_list(tail)
    if listed:
        return listed
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
    if tail.strip(" ,:.") and not _words(tail):  # "We get n!.", "Thus, x^2 + 1.": the whole tail is math
        value = _leading_value(tail.strip(" ,:"))
        if value:
            return value
    if numbers:
        return _clean(numbers[0])
    return None


def _stated_list(phrase: str) -> str | None:
    """Several equations stated as the answer ("$x = 1$ or $x = 2$", "a = 3 and b = -4", "Solving the
    system, a = 3 and b = -4": the phrase or what follows one of its commas), as one answer
    (equation_values); None for anything else."""
    math = _INLINE_MATH.sub(lambda m: m.group("m") or m.group("n"), phrase).strip().rstrip(".;,!").strip()
    starts = [0] + [m.end() for m in re.finditer(r"[,:]\s+", math)]
    first_equation = re.search(r"(?<![\w\\])[A-Za-z](?:_\{?\w+\}?)?(?:\([A-Za-z]\))?\s*=", math)
    if first_equation:  # "the solutions x = 1 and x = 2"
        starts.append(first_equation.start())
    for start in starts:
        listed = equation_values(math[start:])
        if listed:
            return ", ".join(_clean(part) for part in listed.split(", "))
    return None


def _statement_value(stated: str, problem_numbers: set[str], concludes: bool = False) -> str | None:
    """The value of an explicit answer statement: the whole of a short one ("(2, 4)", "12*pi"), less
    trailing words ("12 tomatoes"); the stated value of a sentence."""
    stated = _CALCULATOR.sub("", stated).strip()
    if not stated:
        return None
    unwrapped = _keep_factorial(stated, _unwrap(stated))
    choice = _CHOICE.match(unwrapped)  # a multiple-choice letter: "(C) Plane", "D)", "\\text{(C)}"
    if choice and (len(unwrapped.strip()) <= 4 or re.match(r"^\s*(?:\\text\{)?\([A-J]\)", unwrapped)):
        return f"({choice.group(1)})"
    listed = _stated_list(unwrapped)
    if listed:
        return listed
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


def _explicit_statements(text: str) -> list[tuple[str, str]]:
    """(rule, stated text) of every explicit answer statement, the one written last first: `\\boxed{}`,
    `#### X`, answer lines ("Answer: X", "# Answer" then X, "A: X" at the end), "the answer is X"."""
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
    return [(rule, stated) for _, _, rule, stated in sorted(statements, key=lambda s: (-s[0], s[1]))]


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
    for rule, stated in _explicit_statements(text):
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
    if math is not None and _stated_list(math):
        return Conclusion(_stated_list(math), "display")
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


def _as_prose(text: str) -> str:
    """`text` with `\\text{...}` wrappers opened and math delimiters removed: "\\text{No such } n \\text{ exists}"
    -> "No such n exists"."""
    text = re.sub(r"\\(?:text|textbf|textit|mathrm|mbox)\s*\{([^{}]*)\}", r"\1", text)
    return re.sub(r"\s+", " ", text.replace("$", "").replace("\\(", "").replace("\\)", "")).strip()


@dataclass(frozen=True)
class ReferenceAnswer:
    """A reference answer as read: the values it accepts (the reference as written, the value a prose
    reference states, each equivalent form it gives: any one counts), the verdict it gives to a yes/no
    question, and whether it says that no such value exists."""

    values: tuple[str, ...]
    verdict: str | None = None
    nonexistence: bool = False
    prose: bool = False


def read_reference(reference: str) -> ReferenceAnswer:
    """Read a reference the way `find_conclusion` reads a solution: "The limit exists and is equal to 3"
    -> 3; "98 values" -> 98; "-3 is the only possible value" -> -3; "a=3, b=-4" and "f(x)=0 or f(x)=1"
    as sets; "2*C(10, 5), or equivalently 504" -> both; "Yes", "\\text{No}" -> a verdict; "No such
    values", "The limit does not exist" -> nonexistence."""
    raw = str(reference).strip()
    values, verdicts, nonexistence = [raw], set(), False
    text = _unwrap(raw)
    prose = False
    for form in alternatives(text):
        plain = _as_prose(form)
        words = _words(plain)
        if words:
            prose = prose or len(words) >= 2
            if states_nonexistence(plain):
                nonexistence = True
            value = _reference_value(form)
            values.append(value or "")
            stated = verdict(plain)
            leading = re.match(r"^\W*(?:yes|no|true|false)\b|.*\b(?:answer|statement|assertion|claim|conjecture)s? "
                               r"(?:is|are) (?:yes|no|true|false)\b", plain, re.IGNORECASE)
            if stated and (leading or len(words) <= 6 and not value):
                verdicts.add(stated)  # "Yes, S must contain ...", "It is impossible"; not "-3 is the only value"
        else:
            values.append(_clean(form))
            values.append(_stated_list(form) or "")
    found_verdict = verdicts.pop() if len(verdicts) == 1 else None
    values = values[1:] + values[:1]  # the forms read first, the reference as written last (often unparseable)
    return ReferenceAnswer(tuple(dict.fromkeys(v for v in values if v)), found_verdict, nonexistence, prose)


def _reference_value(form: str) -> str | None:
    """The value a prose reference states, read strictly (a wrong reading would accept wrong
    solutions): a number it starts with ("98 values", "-3 is the only possible value"), else the value
    right after its first "is/are/equals/is equal to/evaluates to" that has one ("The limit exists and is
    equal to 3", "Show that the answer is $25$"), else the right-hand side of the one equation it states
    ("Show that $f(1) = 101^{99}$"); several values or equations as one; None otherwise."""
    form = re.sub(r"\\(?:text|textbf|textit|mathrm|mbox)\s*\{([^{}]*)\}", r"\1", form).strip()
    if re.match(r"^(?:\$|\\\()?\s*[-−+]?\(?\d", form):
        value = _leading_value(form)
        if value:
            return value
    tail = main_clause(form)
    for anchor in (m.end() for m in _ANCHOR.finditer(tail)):
        phrase = _FILLER.sub("", tail[anchor:].lstrip())
        stated = _VERDICTS.match(phrase)
        if stated and stated.group().lower() not in ("yes", "no", "true", "false", "none", "no solution",
                                                     "no solutions", "impossible"):
            return stated.group().lower()
        value = _stated_list(phrase) or (_leading_value(phrase) if re.match(r"^[-−+(\\\d$]", phrase) else None)
        if value:
            return value
    alone = re.fullmatch(r"(?:(?:show|prove|verify) that\s+)?(\$[^$]+\$|\\\(.+?\\\))[\s.]*", form, re.IGNORECASE)
    if alone and "=" in alone.group(1):
        return _clean(_rhs(alone.group(1).strip("$").removeprefix("\\(").removesuffix("\\)"))) or None
    return None


_PLEASANTRY = re.compile(r"(?:I hope|Hope this|Let me know|Feel free|If you have|Please let)", re.IGNORECASE)


def find_verdict(text: str | None) -> tuple[str, str] | None:
    """("yes" / "no" / "none", rule) when the solution answers with a verdict or says that no such
    value exists: its last explicit statement ("\\boxed{\\text{No}}", "The answer is yes"), else a
    closing sentence ("Therefore, it is impossible to ...", "Hence no such n exists"); None otherwise."""
    if not text or not text.strip():
        return None
    statements = _explicit_statements(_CALCULATOR.sub("", text))
    candidates = [(_as_prose(_unwrap(statements[0][1])), statements[0][0])] if statements else []
    if not candidates:
        paragraphs = [p for p in re.split(r"\n\s*\n", text.strip()) if p.strip() and not _PLEASANTRY.match(p.strip())]
        sentences = [s for s in _SENTENCES.split(paragraphs[-1] if paragraphs else "") if s.strip()]
        candidates = [(_as_prose(s), "verdict") for s in reversed(sentences[-3:])]
    for sentence, rule in candidates:
        if states_nonexistence(sentence):
            return "none", "verdict"
        stated = verdict(sentence)
        if stated:
            return stated, "verdict"
    return None


@dataclass(frozen=True)
class Grade:
    """The verdict on one solution against a reference answer."""

    outcome: str
    """correct, wrong, no_answer (find_conclusion found none) or no_reference (none given, or a prose
    reference from which no answer could be read: rule `unreadable_reference`)."""
    rule: str
    answer: str | None


def grade(solution: str | None, reference: str | None, problem: str | None = None, strict: bool = False) -> Grade:
    """Is the solution's conclusion the reference answer? `problem` helps to tell a concluding
    sentence's answer from the givens it repeats, and whether a yes/no reference answers a yes/no
    question. `strict`: only the standard final-answer forms count (extract_final_answer), as before
    the lenient rules existed."""
    if reference is None or not str(reference).strip():
        return Grade("no_reference", "none", None)
    reference = str(reference)
    cleaned = _clean(reference)
    letter = _CHOICE.fullmatch(cleaned) if len(cleaned) <= 8 else None
    if strict or letter:
        return _grade_standard(solution, reference, problem, strict, letter)
    read = read_reference(reference)
    if read.verdict or read.nonexistence:
        stated = find_verdict(solution)
        yes_no_question = read.verdict and (problem is None or asks_yes_no(problem))
        said = NO if stated and stated[0] == "none" else stated[0] if stated else None  # "no such P exists": no
        if stated and (yes_no_question and said == read.verdict or read.nonexistence and stated[0] == "none"):
            return Grade("correct", stated[1], stated[0])
    found = find_conclusion(solution, problem)
    if found.answer is None:
        if read.verdict or read.nonexistence:
            stated = find_verdict(solution)
            return Grade("wrong", stated[1], stated[0]) if stated else Grade("no_answer", found.rule, None)
        return Grade("no_answer", found.rule, None)
    if any(answers_match(found.answer, value) for value in read.values) \
            or found.equation and "=" in reference and answers_match(found.equation, reference):
        return Grade("correct", found.rule, found.answer)
    if read.prose and len(read.values) == 1 and not (read.verdict or read.nonexistence):
        return Grade("no_reference", "unreadable_reference", found.answer)
    return Grade("wrong", found.rule, found.answer)


def _grade_standard(solution: str | None, reference: str, problem: str | None, strict: bool, letter) -> Grade:
    """grade() for --strict-grading (the standard forms only, the reference as written) and for a
    multiple-choice reference (the letter the solution picks last)."""
    if strict:
        answer = extract_final_answer(solution)
        found = Conclusion(answer, "strict" if answer else "none")
    elif solution:
        picks = [next(g for g in m.groups() if g) for m in _CHOICE_STATEMENT.finditer(solution)]
        found = Conclusion(f"({picks[-1].upper()})", "choice") if picks else find_conclusion(solution, problem)
    else:
        found = find_conclusion(solution, problem)
    if found.answer is None:
        return Grade("no_answer", found.rule, None)
    if letter:
        chosen = _CHOICE.fullmatch(found.answer)
        return Grade("correct" if chosen and chosen.group(1).upper() == letter.group(1).upper() else "wrong",
                     found.rule, found.answer)
    cleaned = _clean(reference)
    matched = answers_match(found.answer, reference) or (cleaned != reference.strip()
                                                         and answers_match(found.answer, cleaned))
    if not matched and found.equation and "=" in reference:  # the reference is the equation itself
        matched = answers_match(found.equation, reference)
    return Grade("correct" if matched else "wrong", found.rule, found.answer)


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
        read = read_reference(reference_answer(args.reference))
        print(f"reference read as: values {list(read.values)}, verdict {read.verdict}, "
              f"says none exists: {read.nonexistence}")
        graded = grade(args.solution, reference_answer(args.reference), args.problem)
        print(f"grade: {graded.outcome} (rule: {graded.rule}, answer: {graded.answer!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
