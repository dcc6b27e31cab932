"""The common LaTeX forms of final answers as the sympy objects math-verify's parser makes of them,
without its ANTLR grammar (which costs 30-150 ms an answer in Python; this costs well under 1 ms).

Usage (as a library):
    from sft.text.latex_sympy import parse_latex_answer
    parse_latex_answer("\\\\frac{n(n+1)}{2}")     # -> n*(n + 1)/2 (real symbols, as math-verify's)
    parse_latex_answer("(-\\\\infty, 2]")         # -> Interval(-oo, 2)
    parse_latex_answer("\\\\text{east}")          # -> None: not in the subset, math-verify parses it

The subset: numbers, letters (real symbols, `a_1`, `x_{10}`, Greek), + - * / ^, \\cdot, \\times,
implicit multiplication, parentheses, \\frac, \\sqrt, \\binom, !, \\lfloor, \\lceil, \\pi, \\infty, \\sin and
its kin with a bracketed argument, \\ln, \\log, \\log_b, a degree sign, comma lists (sets), \\{...\\}, tuples
and intervals, \\cup, one `=`, `\\in`, `<` or `\\le`. Everything else (text, units, matrices, chains of
inequalities, i, capital letters, \\pm) gives None, and the caller uses math-verify's own parser.
Conventions follow latex2sympy2_extended (math-verify's parser): symbols are real, a comma list is
its FiniteSet, `(a, b)` is an interval unless it would be empty (a pair), a letter before parentheses
holding letters or numbers is a function (`f(x)`, but `x(x+1)` is a product), `e` is Euler's number,
`\\ln` is log base e, `\\log` base 10. tests/test_grading.py checks that math-verify's
verdicts are the same with either parser on every answer pair of the labelled set.
"""

from __future__ import annotations

import re

_TOKEN = re.compile(r"\s*(?:(?P<num>\d+(?:\.\d+)?|\.\d+)|(?P<word>\\text\{[A-Za-z]+\})|(?P<cmd>\\[A-Za-z]+|\\[{}])"
                    r"|(?P<letter>[A-Za-z])|(?P<op>[-+*/^()\[\]{},=!_%<>]))")
_GREEK = {"alpha", "beta", "gamma", "delta", "theta", "lambda", "mu", "sigma", "phi", "omega", "rho", "tau", "psi",
          "eta", "zeta", "kappa", "nu", "xi", "chi", "epsilon", "varepsilon", "varphi"}
_TRIG = {"sin", "cos", "tan", "cot", "sec", "csc"}
_RELATIONS = {"<": "StrictLessThan", "\\lt": "StrictLessThan", ">": "StrictGreaterThan", "\\gt": "StrictGreaterThan",
              "\\le": "LessThan", "\\leq": "LessThan", "\\leqslant": "LessThan", "\\ge": "GreaterThan",
              "\\geq": "GreaterThan", "\\geqslant": "GreaterThan"}
_DROP = re.compile(r"\\left\b|\\right\b|\\[,;!: ]|\\displaystyle|\\limits")
_DEGREE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?")


class _Unsupported(Exception):
    """The answer uses a form outside the subset: math-verify parses it."""


class _Parser:
    def __init__(self, text: str):
        self.tokens = []
        position = 0
        text = text.rstrip()
        while position < len(text):
            match = _TOKEN.match(text, position)
            if match is None or match.end() == position:
                raise _Unsupported(text[position:])
            kind = match.lastgroup
            self.tokens.append((kind, match.group(kind)))
            position = match.end()
        self.at = 0
        import sympy

        self.sp = sympy

    # -- token helpers
    def peek(self, offset: int = 0):
        index = self.at + offset
        return self.tokens[index] if index < len(self.tokens) else (None, None)

    def take(self, value: str | None = None):
        token = self.peek()
        if token[0] is None or (value is not None and token[1] != value):
            raise _Unsupported(f"expected {value!r}")
        self.at += 1
        return token

    def accept(self, value: str) -> bool:
        if self.peek()[1] == value:
            self.at += 1
            return True
        return False

    # -- grammar
    def answer(self):
        items = [self.relation()]
        while self.accept(","):
            items.append(self.relation())
        if self.peek()[0] is not None:
            raise _Unsupported("trailing tokens")
        if len(items) == 1:
            return items[0]
        return self.finite_set(items)

    def relation(self):
        left = self.union()
        if self.accept("="):
            right = self.union()
            if self.peek()[1] == "=":
                raise _Unsupported("a chain of equations")
            return self.sp.Eq(left, right, evaluate=False)
        if self.accept("\\in"):
            return self.sp.Eq(left, self.union(), evaluate=False)
        relation = _RELATIONS.get(self.peek()[1])
        if relation:  # x \le 3, k \geqslant 2 (a chain, 1 < x < 2, is math-verify's)
            self.take()
            right = self.union()
            if self.peek()[1] in _RELATIONS or self.peek()[1] == "=":
                raise _Unsupported("a chain of relations")
            return getattr(self.sp, relation)(left, right)
        return left

    def union(self):
        parts = [self.expr()]
        while self.accept("\\cup"):
            parts.append(self.expr())
        if len(parts) == 1:
            return parts[0]
        if not all(isinstance(p, self.sp.Set) for p in parts):
            raise _Unsupported("\\cup of non-sets")
        return self.sp.Union(*parts, evaluate=False)

    def expr(self):
        value = self.term()
        while self.peek()[1] in ("+", "-"):
            sign = self.take()[1]
            right = self.term()
            value = value + right if sign == "+" else value - right
        return value

    def term(self):
        value = self.unary()
        while True:
            kind, token = self.peek()
            if token in ("*", "\\cdot", "\\times"):
                self.take()
                value = value * self.unary()
            elif token == "/":
                self.take()
                value = value / self.unary()
            elif self.starts_atom(kind, token):
                if kind == "num" and self.tokens[self.at - 1][0] == "num":
                    raise _Unsupported("two numbers side by side")
                value = value * self.power()
            else:
                return value

    def starts_atom(self, kind, token) -> bool:
        return kind in ("num", "letter") or token in ("(", "{") or (kind == "cmd" and token not in (
            "\\cdot", "\\times", "\\cup", "\\in", "\\}", "\\rfloor", "\\rceil") and token not in _RELATIONS)

    def unary(self):
        if self.accept("-"):
            return -self.unary()
        if self.accept("+"):
            return self.unary()
        return self.power()

    def power(self):
        base = self.postfix()
        if self.accept("^"):
            exponent = self.exponent()
            base = self.sp.Pow(base, exponent)
            if self.peek()[1] == "!":
                raise _Unsupported("factorial after a power")
        return base

    def exponent(self):
        kind, token = self.peek()
        if token == "{":
            self.take()
            value = self.expr()
            self.take("}")
            return value
        if kind == "num":
            self.take()
            return self.number(token)
        if token == "-":
            raise _Unsupported("unbraced negative exponent")
        return self.atom()

    def postfix(self):
        value = self.atom()
        while self.accept("!"):
            value = self.sp.factorial(value)
        if self.accept("%"):  # 25% is 25 times an unevaluated 1/100 in math-verify (25\% is 25)
            if self.peek()[0] is not None:
                raise _Unsupported("% inside an expression")
            value = self.sp.Mul(value, self.sp.UnevaluatedExpr(self.sp.Rational(1, 100)))
        return value

    def number(self, text: str):
        if "." in text:
            return self.sp.Float(text)
        return self.sp.Integer(text)

    def atom(self):
        kind, token = self.take()
        if kind == "num":
            if self.accept("_"):  # 2516_8: math-verify reads the digits and drops the base
                sub_kind, sub = self.take()
                if sub == "{":
                    sub_kind, sub = self.take()
                    self.take("}")
                if sub_kind != "num":
                    raise _Unsupported("number subscript")
            return self.number(token)
        if kind == "letter":
            return self.letter(token)
        if kind == "word":  # \text{east}: one symbol named by the word in lower case
            if len(self.tokens) != 1:
                raise _Unsupported("a word inside an expression")
            return self.sp.Symbol(token[6:-1].lower(), real=True)
        if token == "{":
            value = self.expr()
            self.take("}")
            return value
        if token in ("(", "["):
            return self.bracketed(token)
        if token == "\\{":
            return self.braced_set()
        if kind == "cmd":
            return self.command(token[1:])
        raise _Unsupported(token)

    def letter(self, letter: str):
        if letter == "e" and self.peek()[1] != "_":
            return self.sp.E  # latex2sympy reads e as Euler's number: e^{2} is exp(2)
        if letter in "ei" or letter.isupper():
            raise _Unsupported("i and capital letters have their own readings")
        name = letter
        if self.accept("_"):
            kind, token = self.take()
            if kind == "num" and token.isdigit():
                name += "_" + token
            elif token == "{":
                inner = []
                while self.peek()[1] != "}":
                    sub_kind, sub = self.take()
                    if sub_kind not in ("num", "letter"):
                        raise _Unsupported("subscript")
                    inner.append(sub)
                self.take("}")
                subscript = "".join(inner)  # latex2sympy keeps the braces of a longer subscript: x_{10}, a_n
                name += "_" + (subscript if len(subscript) == 1 else "{" + subscript + "}")
            elif kind == "letter":
                name += "_" + token
            else:
                raise _Unsupported("subscript")
        arguments = self.function_arguments()
        if arguments is not None:  # f(x), g(2), f(x, y): a function applied, as latex2sympy reads it
            if "_" in name:
                raise _Unsupported("a function with a subscript")
            return self.sp.Function(name)(*arguments)
        return self.sp.Symbol(name, real=True)

    def function_arguments(self) -> list | None:
        """The arguments when "(" follows a letter and holds only single letters or numbers separated by
        commas ("f(x)", "f(x, y)", "g(2)"; latex2sympy's function application), else None ("x(x+1)"
        is a product)."""
        if self.peek()[1] != "(":
            return None
        offset, arguments = 1, []
        while True:
            kind, token = self.peek(offset)
            nxt = self.peek(offset + 1)[1]
            if kind not in ("num", "letter") or nxt not in (",", ")") or kind == "letter" and (token in "ei"
                                                                                                 or token.isupper()):
                return None
            arguments.append(self.number(token) if kind == "num" else self.sp.Symbol(token, real=True))
            offset += 2
            if nxt == ")":
                self.at += offset
                return arguments

    def bracketed(self, opening: str):
        items = [self.expr()]
        while self.accept(","):
            items.append(self.expr())
        closing = self.take()[1]
        if closing not in (")", "]"):
            raise _Unsupported("unclosed bracket")
        if len(items) == 1:
            if (opening, closing) != ("(", ")"):
                raise _Unsupported("a bracket that is not a grouping")
            return items[0]
        if len(items) > 2:
            if (opening, closing) != ("(", ")"):
                raise _Unsupported("brackets around a tuple")
            return self.sp.Tuple(*items)
        start, end = items
        left_open, right_open = opening == "(", closing == ")"
        try:  # latex2sympy's rule: an "interval" that would be empty is a pair
            if left_open and right_open and bool(end <= start) or not left_open and not right_open and bool(end < start):
                return self.sp.Tuple(start, end)
        except TypeError:  # undecidable with variables: an interval, as latex2sympy makes it
            pass
        return self.sp.Interval(start, end, left_open=left_open, right_open=right_open)

    def braced_set(self):
        items = [self.expr()]
        while self.accept(","):
            items.append(self.expr())
        self.take("\\}")
        return self.finite_set(items)

    def finite_set(self, items: list):
        """latex2sympy's FiniteSet of `items` ("(0, 0), (0, 1)": each pair read on its own, as it does)."""
        from latex2sympy2_extended.sets import FiniteSet

        return FiniteSet(*items)

    def group(self):
        self.take("{")
        value = self.expr()
        self.take("}")
        return value

    def command(self, name: str):
        sp = self.sp
        if name == "pi":
            return sp.pi
        if name == "infty":
            return sp.oo
        if name in _GREEK:
            return sp.Symbol(name, real=True)
        if name == "frac":
            numerator, denominator = self.fraction_part(), self.fraction_part()
            return numerator / denominator
        if name == "sqrt":
            if self.accept("["):
                index = self.expr()
                self.take("]")
                return sp.Pow(self.group(), 1 / index)
            return sp.sqrt(self.group())
        if name == "binom":
            return sp.binomial(self.group(), self.group())
        if name in _TRIG or name in ("ln", "log", "exp"):
            return self.function(name)
        if name in ("lfloor", "lceil"):
            inner = self.expr()
            self.take("\\rfloor" if name == "lfloor" else "\\rceil")
            return (sp.floor if name == "lfloor" else sp.ceiling)(inner)
        raise _Unsupported("\\" + name)

    def fraction_part(self):
        kind, token = self.peek()
        if token == "{":
            return self.group()
        if kind == "num" and len(token) == 1:  # \frac43: one digit each
            self.take()
            return self.sp.Integer(token)
        if kind == "letter":
            self.take()
            return self.letter(token)
        raise _Unsupported("\\frac argument")

    def function(self, name: str):
        sp = self.sp
        base = None
        if name == "log" and self.accept("_"):
            kind, token = self.peek()
            base = self.group() if token == "{" else self.number(self.take()[1]) if kind == "num" else None
            if base is None:
                raise _Unsupported("\\log base")
        power = None
        if self.accept("^"):
            power = self.exponent()
        kind, token = self.peek()
        if token == "(":
            self.take()
            argument = self.expr()
            self.take(")")
        elif token == "{":
            argument = self.group()
        elif kind in ("num", "letter") and self.peek(1)[1] in (None, "+", "-", ",", ")", "]", "}", "="):
            self.take()
            argument = self.number(token) if kind == "num" else self.letter(token)
        else:
            raise _Unsupported(f"\\{name} argument")
        if name == "ln":
            value = sp.log(argument, sp.E)
        elif name == "log":
            value = sp.log(argument, base if base is not None else 10)
        elif name == "exp":
            value = sp.exp(argument)
        else:
            value = getattr(sp, name)(argument)
        return sp.Pow(value, power) if power is not None else value


def parse_latex_answer(answer: str):
    """The sympy object for `answer` (see the module docstring), or None when it is not in the subset."""
    answer = answer.replace("\\$", "").replace("$", "").replace("\\%", "")  # currency, stray $, an escaped %
    thousands = re.fullmatch(r"\s*(-?\d{1,3}(?:,(?:\s*\\!\s*)?\d{3})+)(\.\d+)?\s*", answer)
    if thousands:  # 25,000 and 10,\!080, as math-verify reads them (but "1, 000" is a list)
        import sympy

        digits = re.sub(r",|\s|\\!", "", thousands.group(1))
        return sympy.Float(digits + thousands.group(2)) if thousands.group(2) else sympy.Integer(digits)
    outside_brackets = re.sub(r"\([^()]*\)|\[[^\[\]]*\]|\\\{.*?\\\}", "", answer)  # "(12,102)" is a pair
    if re.search(r"\d,(?:\s*\\!\s*)?\d{3}(?!\d)", outside_brackets):  # thousands inside more? math-verify decides
        return None
    text = _DEGREE.sub("", _DROP.sub(" ", answer.strip()))
    text = re.sub(r"\\[dt]frac\b", r"\\frac", text).strip().rstrip(".").strip()
    text = re.sub(r"\\sqrt\s*(\d)", r"\\sqrt{\1}", text)  # \sqrt3
    text = re.sub(r"\\frac\s*(\d)\s*(\d)", r"\\frac{\1}{\2}", text)  # \frac43
    if not text or "\\\\" in text:  # a matrix row break
        return None
    if re.search(r"(?<![\\A-Za-z])(?:[A-Za-z]{3,}|ln)(?![A-Za-z])", re.sub(r"\\text\{[A-Za-z]+\}", "", text)):
        return None  # a word ("even"), or a function name without its backslash: math-verify reads words its way
    try:
        return _Parser(text).answer()
    except (_Unsupported, TypeError, ValueError, ZeroDivisionError, RecursionError):
        return None
