"""How a model's chat template writes reasoning, found by rendering probes (no table of model families).

Usage (sft/text/chat_format.py probes every template with it; the result is `ChatFormat.reasoning`):
    fmt = probe_reasoning(render, user, prompt, answer_opening, data_tags, added_tokens, template_source, fixed)
    fmt.describe()            # {"carrier": "message field 'thinking'", "opening": ..., "switch": ...}
    fmt.split("<think>\\nx\\n</think>\\n\\n4")   # ('x', '4'): a generated text as reasoning and answer

`render(messages, generation_prompt, extra)` renders the template with the extra template variables
`extra` (a dict, or None) and raises on a refusal. What is found, each by rendering markers:

- the carrier: how the template takes an assistant's reasoning. A message field (Qwen3, GLM,
  Seed-OSS, MiniMax: `reasoning_content`; gpt-oss's harmony template: `thinking`, written in the
  `analysis` channel; Solar: `reasoning`), content chunks of type `thinking` (Mistral's reasoning
  models: `[THINK]`...`[/THINK]`), or tags in the content itself (QwQ). A reasoning marker and an
  answer marker are rendered through each candidate; the first whose output holds both, reasoning
  first, is the carrier. None when the template drops the reasoning wherever it is given
  (DeepSeek-R1 distills, DeepSeek-V3.1, Kimi-K2-Thinking for the last turn).
- the model's own delimiters: the text the carrier's render puts before the reasoning (`<think>\\n`,
  `<seed:think>`, `<|channel|>analysis<|message|>`) and between reasoning and answer (`\\n</think>\\n\\n`,
  `<|end|><|start|>assistant<|channel|>final<|message|>`); without a carrier, the data's own tags.
- what the generation prompt does to the reasoning block: opens it (ends with the opening), closes it
  (ends with the closing, as after an empty block), or neither.
- a switch: a template variable (`enable_thinking`, `thinking`, a budget...) or a system-prompt
  toggle the template tests for (`/think`, `/no_think`), whose values give a generation prompt that
  opens the reasoning and one that closes it. Each variable the template reads is rendered with True
  and with False; each string the template tests with `in` is rendered as a system prompt.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")
"""Message keys that templates read for an assistant's reasoning, tried in this order."""

OPENS, CLOSES, NEUTRAL = "opens", "closes", "neutral"
"""What a generation prompt does to the reasoning block."""

REASONING_MARK = "\u27e6SFT-REASONING\u27e7"
ANSWER_MARK = "\u27e6SFT-ANSWER\u27e7"

# Template variables that are never probed as switches or given neutral values.
_RESERVED = frozenset({
    "messages", "add_generation_prompt", "bos_token", "eos_token", "pad_token", "unk_token", "sep_token",
    "cls_token", "mask_token", "raise_exception", "strftime_now", "range", "namespace", "dict", "loop",
    "continue_final_message",
})
_NEUTRAL_VALUES: tuple = ([], "", False)


@dataclass(frozen=True)
class Carrier:
    """How an assistant message hands its reasoning to the template."""

    kind: str
    """"field" (a message key), "chunks" (content as [{type: thinking}, {type: text}]) or "inline" (tags in
    the content)."""
    field: str | None = None

    def message(self, reasoning: str, answer: str, tags: Sequence[str]) -> dict:
        """An assistant message with `reasoning` and `answer` in this carrier (the whitespace that laid them
        out around the data's tags is not part of either: the template lays them out its own way)."""
        reasoning, answer = reasoning.strip(), answer.lstrip()
        if self.kind == "field":
            return {"role": "assistant", "content": answer, self.field: reasoning}
        if self.kind == "chunks":
            return {"role": "assistant", "content": [{"type": "thinking", "thinking": reasoning},
                                                     {"type": "text", "text": answer}]}
        return {"role": "assistant", "content": f"{tags[0]}\n{reasoning}\n{tags[1]}\n\n{answer}"}

    def describe(self) -> str:
        if self.kind == "field":
            return f"message field {self.field!r}"
        if self.kind == "chunks":
            return "content chunks of type 'thinking'"
        return "tags in the content"


CARRIERS = tuple(Carrier("field", name) for name in REASONING_FIELDS) + (Carrier("chunks"), Carrier("inline"))


@dataclass(frozen=True)
class Switch:
    """A template setting whose values make the generation prompt open or close the reasoning block."""

    kind: str
    """"variable" (a template variable) or "system_prompt" (a text the template looks for in the system prompt)."""
    name: str
    on: Any
    """The value (or system-prompt text) for replies with reasoning; None: the template's default."""
    off: Any
    """The value (or system-prompt text) for replies without reasoning; None: the template's default."""

    def describe(self) -> dict:
        return {"kind": self.kind, "name": self.name, "on": self.on, "off": self.off}


@dataclass(frozen=True)
class ReasoningFormat:
    """The model's way of writing reasoning (see the module docstring)."""

    carrier: Carrier | None
    opening: str
    """What the template writes before the reasoning ("<think>\\n"), or the generation prompt's opening."""
    closing: str
    """What the template writes between the reasoning and the answer ("\\n</think>\\n\\n")."""
    answer_opening: str
    """What the template writes before the answer of a reply without reasoning (an empty block, a channel header)."""
    tags: tuple[str, str]
    """The opening and closing delimiters without surrounding whitespace."""
    prompt: str
    """What the default generation prompt does: OPENS, CLOSES or NEUTRAL."""
    switch: Switch | None
    data_tags: tuple[str, str]

    def state(self, prompt: str) -> str:
        """OPENS, CLOSES or NEUTRAL for a generation prompt."""
        return prompt_state(prompt, self.tags)

    def opened(self, prompt: str) -> str:
        """The reasoning opening that ends `prompt` (with the whitespace after it), or ""."""
        if self.state(prompt) != OPENS:
            return ""
        return prompt[prompt.rstrip().rfind(self.tags[0]):]

    def own_tags(self) -> bool:
        """Whether the model delimits reasoning with other tags than the data."""
        return tuple(self.tags) != tuple(t.strip() for t in self.data_tags)

    def describe(self) -> dict:
        return {
            "carrier": self.carrier.describe() if self.carrier else "none: the template drops reasoning; it is placed "
            "where the template puts a reply",
            "opening": self.opening,
            "closing": self.closing,
            "answer_opening": self.answer_opening,
            "generation_prompt": self.prompt,
            "switch": self.switch.describe() if self.switch else None,
        }

    def split(self, text: str) -> tuple[str | None, str]:
        """(reasoning, answer) of a generated reply in this format: the answer follows the last closing
        delimiter (the model's, else the data's); a reply that opens reasoning and never closes it is all
        reasoning; otherwise the whole reply is the answer, less a leading answer header (an empty
        reasoning block, a final-channel header). An empty reasoning block is no reasoning (None)."""
        tag_pairs = dict.fromkeys([self.tags, tuple(t.strip() for t in self.data_tags)])
        for opening, closing in tag_pairs:
            reasoning, answer, _ = split_at_tags(text, opening, closing)
            if reasoning is not None:
                return reasoning.strip() or None, _after_header(answer, self.answer_opening).strip()
        stripped = text.lstrip()
        for opening, _ in tag_pairs:
            if opening and stripped.startswith(opening):
                return stripped[len(opening):].strip() or None, ""
        return None, _after_header(text, self.answer_opening).strip()


def split_at_tags(text: str, opening: str, closing: str) -> tuple[str | None, str, bool]:
    """(reasoning, answer, unclosed) of a reply, whitespace kept: the reasoning between the opening tag
    and the last closing tag, the answer after it; without a closing tag the reasoning is None, the
    answer the whole text, and `unclosed` says whether the opening tag is in it."""
    at = text.rfind(closing)
    if at >= 0:
        reasoning = text[:at]
        start = reasoning.find(opening)
        return (reasoning[start + len(opening):] if start >= 0 else reasoning), text[at + len(closing):], False
    return None, text, opening in text


def _after_header(text: str, header: str) -> str:
    """`text` less a leading `header` (compared without whitespace)."""
    core = header.strip()
    stripped = text.lstrip()
    return stripped[len(core):] if core and stripped.startswith(core) else text


def common_prefix(a: str, b: str) -> int:
    """The length of the longest common prefix of two texts."""
    return len(os.path.commonprefix([a, b]))


def token_boundary(text: str, at: int, added: Sequence[str]) -> int:
    """`at` (where two renders part) moved back to a boundary: the start of an added token it falls
    inside (`<think>` against `</think>`), else, inside a word, the end of the last added token or
    whitespace before it. The end of `text` is a boundary (one render holds all of the other)."""
    if at >= len(text):
        return at
    last_end = 0
    for token in added:
        found = text.rfind(token, 0, at + len(token) - 1)
        if 0 <= found < at < found + len(token):
            return found
        found = text.rfind(token, 0, at)
        if found >= 0:
            last_end = max(last_end, found + len(token))
    if at == 0 or at == last_end or text[at - 1].isspace():
        return at
    space = max(text.rfind(c, 0, at) for c in " \n\t") + 1
    return max(space, last_end)


def prompt_state(prompt: str, tags: Sequence[str]) -> str:
    end = prompt.rstrip()
    opening, closing = tags
    if closing and end.endswith(closing):
        return CLOSES
    if opening and end.endswith(opening):
        return OPENS
    return NEUTRAL


# ---------------------------------------------------------------------------------------------
# What the template reads: its variables and the strings it looks for.

def _template_ast(source: str):
    try:
        # transformers' own environment (it knows the {% generation %} tag)
        from transformers.utils.chat_template_utils import _compile_jinja_template

        return _compile_jinja_template(source).environment.parse(source)
    except Exception:  # noqa: BLE001 - a private helper that may move: fall back to plain jinja2
        try:
            import jinja2.ext
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            return ImmutableSandboxedEnvironment(extensions=[jinja2.ext.loopcontrols]).parse(source)
        except Exception:  # noqa: BLE001 - unparsable here: nothing to probe
            return None


def template_variables(source: str) -> list[str]:
    """The variables a template reads but does not set, in the order they first appear."""
    ast = _template_ast(source)
    if ast is None:
        return []
    from jinja2 import meta, nodes

    undeclared = meta.find_undeclared_variables(ast)
    ordered = [n.name for n in ast.find_all(nodes.Name) if n.name in undeclared]
    return [name for name in dict.fromkeys(ordered) if name not in _RESERVED]


def membership_strings(source: str) -> list[str]:
    """Strings the template tests for with `in` ('/no_think' in content): candidate prompt toggles."""
    ast = _template_ast(source)
    if ast is None:
        return []
    from jinja2 import nodes

    found = []
    for compare in ast.find_all(nodes.Compare):
        if isinstance(compare.expr, nodes.Const) and isinstance(compare.expr.value, str) \
                and any(op.op in ("in", "notin") for op in compare.ops):
            value = compare.expr.value
            if value.strip() and len(value) <= 64:
                found.append(value)
    return list(dict.fromkeys(found))


def neutral_variables(render_ok: Callable[[dict], str | None], source: str, fixed: dict) -> dict:
    """Values for the template variables a template needs but nothing passes (tools it iterates over
    while transformers passes None, a string it concatenates): `render_ok(extra)` returns None when
    the probe renders with the extra variables, else the error's text. Each variable the template
    reads (those the error names first) is tried with [], "" and False; a value that lets the render
    succeed is kept, else one after which the error names another variable, else one that changes the
    error of a variable it named; at most six rounds. {} when the template needs nothing, or when no
    values let it render."""
    extra: dict = {}
    error = render_ok(extra)
    if error is None:
        return {}
    names = [n for n in template_variables(source) if n not in fixed]
    for _ in range(6):
        best = None
        for name in sorted((n for n in names if n not in extra), key=lambda n: f"'{n}'" not in error):
            for value in _NEUTRAL_VALUES:
                attempt = render_ok({**extra, name: value})
                if attempt is None:
                    return {**extra, name: value}
                rank = 0 if any(f"'{n}'" in attempt for n in names if n != name and n not in extra) else \
                    1 if attempt != error and f"'{name}'" in error else None
                if rank is not None and (best is None or rank < best[0]):
                    best = (rank, name, value, attempt)
            if best is not None and f"'{name}'" in error:
                break
        if best is None:
            break
        _, name, value, error = best
        extra = {**extra, name: value}
    return {}


# ---------------------------------------------------------------------------------------------
# The probe.

def _carrier_format(render, user: list[dict], prompt: str, carrier: Carrier, data_tags,
                    added: Sequence[str]) -> tuple[str, str] | None:
    """(text before the reasoning, text between reasoning and answer) when `carrier` carries the reasoning.
    Where the generation prompt already wrote the opening (`assistant\\n<think>\\n`), the text before the
    reasoning is that opening, read from the render: the data's opening tag or the last added token
    before the reasoning, with the whitespace after it."""
    try:
        full = render(user + [carrier.message(REASONING_MARK, ANSWER_MARK, data_tags)], False, None)
    except Exception:  # noqa: BLE001 - the template refuses this form (a list content, a field it checks)
        return None
    if full.count(REASONING_MARK) != 1 or full.count(ANSWER_MARK) != 1:
        return None
    r, a = full.index(REASONING_MARK), full.index(ANSWER_MARK)
    start = token_boundary(prompt, common_prefix(prompt, full), added)
    if not start <= r < a:
        return None
    pre, mid = full[start:r], full[r + len(REASONING_MARK):a]
    # A template that prints the structure (a list of chunks as its Python text) carries nothing.
    keys = ("type", "text", carrier.field or "thinking")
    if any(f"{quote}{key}{quote}" in pre + mid for quote in "'\"" for key in keys):
        return None
    if not pre.strip():  # the generation prompt wrote the opening, or there is none
        pre = _opening_in_prompt(render, user, prompt, full, r, start, data_tags, added)
    return pre, mid


def _opening_in_prompt(render, user, prompt: str, full: str, r: int, start: int, data_tags, added) -> str:
    """The opening before the reasoning at `r` in `full` where the render of the carrier shows none after
    the generation prompt: the data's opening tag or an added token that ends the text before the
    reasoning (not the role token that also ends the text before a plain answer), with the whitespace
    after it; else the text the generation prompt has beyond what the render shares (Apriel's
    "Here are my reasoning steps:"); else ""."""
    before = full[:r].rstrip()
    try:
        plain = render(user + [{"role": "assistant", "content": ANSWER_MARK}], False, None)
        header = plain[: plain.index(ANSWER_MARK)].rstrip()
    except Exception:  # noqa: BLE001 - the template refuses the plain probe: no role token to tell apart
        header = ""
    candidates = [data_tags[0].strip()] + [t for t in added if t]
    found = max(((before.rfind(t), t) for t in candidates if before.endswith(t) and not header.endswith(t)),
                default=None)
    if found is not None:
        return full[found[0]:r]
    return prompt[start:] if prompt[start:].strip() else ""


def probe_reasoning(render, user: list[dict], prompt: str, answer_opening: str, data_tags: Sequence[str],
                    added: Sequence[str], source: str, fixed: dict) -> ReasoningFormat:
    """The template's ReasoningFormat. `render(messages, generation_prompt, extra)`; `user`: a one-message
    conversation; `prompt`: its generation prompt; `answer_opening`: what a plain reply's render puts
    before it; `added`: the tokenizer's added tokens; `fixed`: template variables the user set (never
    probed as switches)."""
    data_tags = tuple(data_tags)
    carrier, opening, closing = None, data_tags[0], data_tags[1]
    for candidate in CARRIERS:
        found = _carrier_format(render, user, prompt, candidate, data_tags, added)
        if found is not None:
            carrier, (opening, closing) = candidate, found
            break
    core = answer_opening.strip()
    if carrier is not None and core and opening.strip().startswith(core) and opening.strip() != core:
        opening = opening[opening.index(core) + len(core):]  # an empty block the template writes before every reply
    tags = (opening.strip(), closing.strip())
    if not tags[1] or (carrier is None and not tags[0]):
        tags = tuple(t.strip() for t in data_tags)
    state = prompt_state(prompt, tags)
    switch = _find_switch(render, user, tags, state, source, fixed)
    return ReasoningFormat(carrier, opening, closing, answer_opening, tags, state, switch, data_tags)


def _find_switch(render, user, tags, default: str, source: str, fixed: dict) -> Switch | None:
    """A template variable (each rendered True and False), else a system-prompt toggle (each string the
    template tests for, rendered as the system prompt), with a setting that opens the reasoning block
    or one that closes it."""
    def state(messages, extra):
        try:
            return prompt_state(render(messages, True, extra), tags)
        except Exception:  # noqa: BLE001 - the template refuses this value
            return None

    for name in template_variables(source):
        if name not in fixed:
            switch = _pick("variable", name, {value: state(user, {name: value}) for value in (True, False)}, default)
            if switch is not None:
                return switch
    toggles = {text: state([{"role": "system", "content": text}] + user, None) for text in membership_strings(source)}
    return _pick("system_prompt", "system prompt", toggles, default)


def _pick(kind: str, name: str, states: dict, default: str) -> Switch | None:
    """The Switch among `states` (setting -> prompt state): `on` opens the reasoning (or, where the
    default closes it, leaves it to the model), `off` closes it (or, where the default opens it, leaves
    it to the model); None when no setting opens or closes it."""
    def first(wanted):
        return next((v for v, s in states.items() if s == wanted), None)

    if all(s in (default, None) for s in states.values()) or (first(OPENS) is None and first(CLOSES) is None):
        return None
    on = first(OPENS) if first(OPENS) is not None else first(NEUTRAL) if default == CLOSES else None
    off = first(CLOSES) if first(CLOSES) is not None else first(NEUTRAL) if default == OPENS else None
    return Switch(kind, name, on, off)
