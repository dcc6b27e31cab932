"""Conversations to token ids and a loss mask, in exactly the format the model's chat template defines.

Usage (as a library: sft/prepare_data.py counts with it, sft/verl_plugins/sft_dataset.py trains with it):
    from sft.text.chat_format import ChatFormat
    chat = ChatFormat.load("Qwen/Qwen3-8B")         # a local directory or a Hugging Face id
    messages = [{"role": "user", "content": "What is 2+2?"},
                {"role": "assistant", "content": "<think>\\n2 and 2 make 4.\\n</think>\\n\\n4"}]
    ids, loss_mask = chat.encode(messages)
    print(chat.explain(messages))                    # the sample, its context and trained parts marked

Usage (command line: see what one sample trains on with a tokenizer's template):
    python -m sft.text.chat_format TOKENIZER "What is 2+2?" "<think>\\nEasy.\\n</think>\\n\\n4"
    python -m sft.text.chat_format TOKENIZER --messages conversation.json --answers-only

What is trained, for every assistant turn of a conversation:
- context (loss off): the template's rendering of the messages before the turn with
  add_generation_prompt=True, system and date headers included: the exact prompt the model is
  given at inference;
- trained (loss on): the turn's content as given, reasoning included, in the model's own format
  (its whitespace rules, an empty reasoning block it adds, its own reasoning delimiters or
  channel), then the template's end-of-turn text up to and including its first special token
  (`<|im_end|>`, `<|eot_id|>`, `<end_of_turn>`, `</s>`, gpt-oss's `<|return|>`...). What the
  template writes after that (a newline, Phi-3.5's final EOS) follows with loss off. A template
  that closes replies with no special token (GLM-4.5/4.6, where the next role's `<|user|>`
  follows) has the token the model must emit to stop trained after the reply: one of the
  generation config's eos_token_id (the next turn's opening token when it is one), else the next
  turn's opening token (`describe()["end_of_turn_source"]`);
- where the generation prompt already opens the reasoning (`<|im_start|>assistant\\n<think>\\n`),
  the reply's own opening `<think>` is not repeated: the trained part starts right after the
  prompt, so no part of the reply is untrained and no token appears twice.

The reasoning (`<think>...</think>` in the content, or a reasoning_content / thinking / reasoning
key) is handed to the template the way the template reads it, found by probes in
sft/text/reasoning_format.py: a message field (gpt-oss's `thinking`, written in its analysis
channel; `reasoning_content` of Qwen3, GLM, Seed-OSS), content chunks (`[THINK]` of Mistral's
reasoning models), or the content's own tags. Where the template has a thinking switch (a
variable such as DeepSeek-V3.1's `thinking`, or a `/no_think` system-prompt toggle) and its
default generation prompt contradicts a conversation (closes the reasoning of one that has some,
opens it for one that has none), the conversation is rendered with the switch set the other way
(`_setting`); `prompt()` gives evaluation the same prompt, `split_reply()` splits a generated reply
in the model's format.

How, with no table of model families: for each turn the template renders the prompt (with the
generation prompt) and the prompt followed by the reply. When the second starts with the first
and still holds every non-space character of the reply, the reply's part of it is trained as the
template wrote it. When the template drops part of the reply (DeepSeek-R1 distills cut
everything before `</think>` out of every assistant message; Qwen3 drops the reasoning of
earlier turns), the template renders a placeholder reply instead and the content is put where
the placeholder stands, unchanged, so the reasoning is trained: it is the user's data. (To
train answers only, remove the reasoning from the data first: prepare_data --answers-only.)
Turns after the first continue the token sequence built so far; where the template renders the
earlier turns differently from how they were trained, the text between two turns is taken from a
render with placeholders. Every text piece is tokenized on its own (sft.text.chat_tokens), so the
context tokens are exactly the tokens of the rendered prompt.

Tool calls (an assistant's `tool_calls`), tool results (`role: tool`) and the tools list a prompt
offers (`encode(messages, tools)`) are handed to the template in the form it reads, found by probes
in sft/text/tool_format.py; a turn that makes calls is trained as the template writes it, its
reasoning, content and calls up to the token that ends it. A template that would render the
conversation without its calls, results, tools list or the content beside a call is refused.

A template that cannot render a conversation raises TemplateError with one line: which
template, what it refused and what to do; so does a generation prompt that closes the reasoning
of a reply that has some (a forced --chat-template-kwargs). Variables a template needs and
nothing passes (tools it iterates over) get neutral values (`render_defaults`).
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Sequence

from sft.text.reasoning_format import (CLOSES, OPENS, REASONING_FIELDS, common_prefix, split_at_tags,
                                      token_boundary)
from sft.text.tool_format import FIX as TOOL_FIX
from sft.text.tool_format import (ASSISTANT_TOOL_KEYS, TOOL_MESSAGE_KEYS, ToolFormat, call_texts, canonical_call,
                                  canonical_tools, probe_tools, tool_message_problem, tools_problem)

REASONING_TAGS = ("<think>", "</think>")
"""The reasoning delimiters of Qwen3, QwQ, DeepSeek-R1 and their distills (configurable)."""
PARQUET_METADATA_KEY = b"verl_sft"
"""Key of the JSON in a Parquet file's schema metadata that records how prepare_data encoded it
(template kwargs, reasoning tags, text encoder); sft/verl_plugins/sft_dataset.py trains with the same."""

_REPLY = "\u27e6SFT-REPLY\u27e7"
_PROBE_USER = "What is 2 + 2?"
_TURN = "\u27e6SFT-TURN-{}\u27e7"

OUTCOME_TEMPLATE = "template"
"""The template's rendering of the turn holds its content unchanged."""
OUTCOME_WHITESPACE = "template_whitespace"
"""The template's rendering holds every non-space character of the content, with whitespace
changed (Llama 3's trim, Qwen3's newlines around the reasoning)."""
OUTCOME_INSERTED = "inserted"
"""The template drops part of the content (reasoning): the content was put unchanged where the
template places a reply."""

FLAG_TEMPLATE_TEXT = "template_adds_text"
FLAG_OPENED = "prompt_opens_reasoning"
FLAG_OPENED_NO_CLOSE = "prompt_opens_reasoning_reply_never_closes_it"
FLAG_UNCLOSED = "reasoning_never_closed"
FLAG_HISTORY = "history_rendered_differently"
FLAG_NO_END_TOKEN = "no_end_of_turn_token"
FLAG_OWN_FORMAT = "reasoning_in_the_models_format"
FLAG_SWITCH_ON = "reasoning_switch_on"
FLAG_SWITCH_OFF = "reasoning_switch_off"

FLAG_EXPLANATIONS = {
    OUTCOME_WHITESPACE: "the template changes whitespace of the reply (trimmed ends, newlines around the reasoning): "
    "trained as the template writes it, every other character unchanged",
    OUTCOME_INSERTED: "the template drops part of the reply (reasoning before the closing tag): the reply was put "
    "unchanged where the template places replies, so the reasoning is trained",
    FLAG_TEMPLATE_TEXT: "the template adds text to replies (for example an empty reasoning block): it is trained as "
    "part of the reply, since the template writes every reply that way",
    FLAG_OPENED: "the generation prompt already opens the reasoning block: the reply's own opening tag is not "
    "repeated, its first trained token follows the prompt",
    FLAG_OPENED_NO_CLOSE: "the generation prompt opens a reasoning block that the reply never closes (replies "
    "without reasoning on a reasoning model): the model learns to answer inside an open reasoning block",
    FLAG_UNCLOSED: "the reply opens a reasoning block and never closes it (a truncated generation?): it is trained "
    "as given; prepare_data --require-final-answer drops such rows",
    FLAG_HISTORY: "the template renders earlier turns differently from the last one (it drops their reasoning, or "
    "moves the system prompt): earlier turns stay in the sequence as they were trained",
    FLAG_NO_END_TOKEN: "the template closes replies with no special token: the model may not learn to stop",
    FLAG_OWN_FORMAT: "the model writes reasoning with its own delimiters or channel, not the data's tags: the "
    "reasoning was handed to the template the way it reads it and trained as the template writes it",
    FLAG_SWITCH_ON: "the template's default generation prompt closes the reasoning block: rows with reasoning were "
    "rendered with the template's switch on (see chat_template.reasoning.switch)",
    FLAG_SWITCH_OFF: "the template's default generation prompt opens the reasoning block: rows without reasoning "
    "were rendered with the template's switch off (see chat_template.reasoning.switch)",
}


class TemplateError(ValueError):
    """The chat template refused a conversation, or renders it so that no reply can be placed."""


class ConversationError(ValueError):
    """The messages are not a conversation that can be trained (no assistant turn, bad roles...)."""


@dataclass(frozen=True)
class Segment:
    text: str
    trained: bool


@dataclass
class Encoding:
    """A conversation as text segments (trained or not), with how each assistant turn was placed."""

    segments: list[Segment]
    outcomes: list[str]
    flags: set[str] = field(default_factory=set)


def split_reasoning(content: str, tags: Sequence[str] = REASONING_TAGS) -> tuple[str | None, str]:
    """(reasoning, answer) of a reply: the answer is what follows the last closing tag (leading
    whitespace removed); a reply that opens reasoning and never closes it is all reasoning; a
    reply with neither tag is all answer (reasoning None)."""
    reasoning, answer, unclosed = split_at_tags(content, *tags)
    if unclosed:
        return content[content.find(tags[0]) + len(tags[0]):], ""
    return reasoning, answer.lstrip() if reasoning is not None else answer


def join_reasoning(reasoning: str | None, answer: str, tags: Sequence[str] = REASONING_TAGS) -> str:
    """One content string for a reply given as separate reasoning and answer (the form that
    Qwen3's and DeepSeek-R1's templates parse)."""
    if reasoning is None:
        return answer
    if not answer.strip():  # reasoning before tool calls: nothing follows the block in the content
        return f"{tags[0]}\n{reasoning.strip()}\n{tags[1]}"
    return f"{tags[0]}\n{reasoning.strip()}\n{tags[1]}\n\n{answer.lstrip()}"


ROLES = ("system", "user", "assistant", "tool")
REASONING_KEYS = REASONING_FIELDS
"""Message keys that hold an assistant's reasoning apart from its content (the same keys templates read)."""
MESSAGE_KEYS = ("role", "content", *REASONING_KEYS, *ASSISTANT_TOOL_KEYS, *TOOL_MESSAGE_KEYS)
REASON_BAD_TOOL_CALL = "invalid_tool_call"
"""The reject reason of a conversation whose tool calls or tool messages cannot be trained."""


class Problem(str):
    """Why a conversation cannot be trained (one line), with the reject reason it is counted under."""

    reason = "invalid_messages"


class ToolProblem(Problem):
    reason = REASON_BAD_TOOL_CALL


def conversation_problem(messages) -> Problem | None:
    """Why `messages` cannot be trained, in one line, or None when it can: an OpenAI-style list of
    {role, content[, reasoning_content | thinking | reasoning][, tool_calls]} with roles system/user/assistant/
    tool, the first message after any system prompt from the user, the last an assistant reply, every reply
    non-empty (a tool call is a reply), every tool result answering a tool call (sft.text.tool_format checks the
    calls). Other keys are refused unless null, so nothing a row carries (a per-turn weight) is silently ignored."""
    if not isinstance(messages, list) or not messages:
        return Problem("is not a non-empty list of messages")
    for index, message in enumerate(messages):
        problem = _message_problem(message, index, messages[index - 1] if index else None)
        if problem is not None:
            return problem
    roles = [m["role"] for m in messages]
    if "assistant" not in roles:
        return Problem("has no assistant message to train on")
    first = next((r for r in roles if r != "system"), None)
    if first != "user":
        return Problem("does not start with a user message (after any system prompt)")
    if roles[-1] != "assistant":
        return Problem(f"ends with a {roles[-1]} message after the last assistant reply, which nothing would train on")
    return None


def _message_problem(message, index: int, before) -> Problem | None:
    if not isinstance(message, dict):
        return Problem(f"has message {index} that is a {type(message).__name__}, not an object with role and content")
    extra = sorted(k for k, v in message.items() if k not in MESSAGE_KEYS and v is not None)
    if {"from", "value"} <= set(extra):
        return Problem(f"has message {index} in ShareGPT form ('from', 'value'); write it as role and content "
                       "(human -> user, gpt -> assistant)")
    if extra:
        return Problem(f"has message {index} with {', '.join(map(repr, extra))}, which training does not use (only "
                       f"role, content, one of {', '.join(REASONING_KEYS)}, tool_calls, and a tool message's name and "
                       "tool_call_id); remove it from the row, or set it to null")
    role, content = message.get("role"), message.get("content")
    if role not in ROLES:
        return Problem(f"has message {index} with role {role!r}; the roles are {', '.join(ROLES)}")
    tool_problem = tool_message_problem(message, index)
    if tool_problem is not None:
        return ToolProblem(tool_problem)
    calls = message.get("tool_calls")
    if calls and content is None:
        content = ""
    if not isinstance(content, str):
        return Problem(f"has message {index} ({role}) whose content is a {type(content).__name__}, not a string")
    given = [k for k in REASONING_KEYS if message.get(k) is not None]
    if len(given) > 1:
        return Problem(f"has message {index} ({role}) with reasoning in both {given[0]!r} and {given[1]!r}; keep one")
    reasoning = message.get(given[0]) if given else None
    if reasoning is not None and (role != "assistant" or not isinstance(reasoning, str)):
        return Problem(f"has message {index} ({role}) with a {given[0]} that is not an assistant's string")
    if role == "assistant" and not content.strip() and not (reasoning or "").strip() and not calls:
        return Problem(f"has message {index} (assistant) that is empty")
    if role == "tool" and not (isinstance(before, dict) and (before.get("tool_calls") or before.get("role") == "tool")):
        return ToolProblem(f"has a tool result (message {index}) that follows no assistant tool call")
    return None


def canonical_messages(messages, tags: Sequence[str] = REASONING_TAGS) -> list[dict]:
    """`messages` as {role, content} dicts, reasoning given apart (reasoning_content, thinking, reasoning)
    joined into the content with the data's tags, tool calls as {type, id?, function: {name, arguments}} and a
    tool message's name and tool_call_id kept where given; raises ConversationError with
    conversation_problem's reason."""
    problem = conversation_problem(list(messages) if isinstance(messages, tuple) else messages)
    if problem is not None:
        raise ConversationError(f"the conversation {problem}")
    canon = []
    for message in messages:
        content = message["content"] if message.get("content") is not None else ""
        reasoning = next((message[k] for k in REASONING_KEYS if message.get(k) is not None), None)
        if reasoning is not None:
            content = join_reasoning(reasoning, content, tags)
        out = {"role": message["role"], "content": content}
        if message.get("tool_calls"):
            out["tool_calls"] = [canonical_call(call) for call in message["tool_calls"]]
        out.update({k: message[k] for k in TOOL_MESSAGE_KEYS if message.get(k) is not None})
        canon.append(out)
    return canon


def _placed(pieces: Sequence[str], text: str) -> str | None:
    """OUTCOME_TEMPLATE when every piece stands in `text` unchanged, in order; OUTCOME_WHITESPACE when
    only their non-space characters do; None when a piece is missing or moved."""
    at, exact = 0, True
    for piece in pieces:
        found = text.find(piece, at)
        if found < 0:
            exact = False
            break
        at = found + len(piece)
    if exact:
        return OUTCOME_TEMPLATE
    squashed, at = _squash(text), 0
    for piece in pieces:
        found = squashed.find(_squash(piece), at)
        if found < 0:
            return None
        at = found + len(_squash(piece))
    return OUTCOME_WHITESPACE


def _freeze(value: Any):
    """A hashable stand-in for a message or a dict of template variables (render cache keys)."""
    if isinstance(value, dict):
        return ("\0dict", tuple((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, list):
        return ("\0list", tuple(_freeze(v) for v in value))
    return value


def _thaw(value: Any):
    if isinstance(value, tuple) and len(value) == 2 and value[0] == "\0dict":
        return {k: _thaw(v) for k, v in value[1]}
    if isinstance(value, tuple) and len(value) == 2 and value[0] == "\0list":
        return [_thaw(v) for v in value[1]]
    return value


def _generation_stop_tokens(tokenizer) -> list[str]:
    """The added tokens that the generation_config.json beside the tokenizer (its directory, or the
    Hugging Face cache for a hub id) lists as eos_token_id; [] where there is none."""
    import json

    source = str(getattr(tokenizer, "name_or_path", "") or "")
    path = Path(source).expanduser() / "generation_config.json"
    if not path.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(source, "generation_config.json") if source.count("/") == 1 else None
        except Exception:  # noqa: BLE001 - not a hub id, or no cache: no generation config
            cached = None
        if not isinstance(cached, str):
            return []
        path = Path(cached)
    try:
        ids = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id")
    except (OSError, ValueError, AttributeError):
        return []
    ids = [ids] if isinstance(ids, int) else [i for i in ids if isinstance(i, int)] if isinstance(ids, list) else []
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return [decoder[i].content for i in ids if i in decoder]


def read_encoding_record(path) -> dict | None:
    """The encoding record sft/prepare_data.py wrote into a Parquet file's schema metadata
    (PARQUET_METADATA_KEY: template kwargs, reasoning tags, text encoder, stop token, the template's
    reasoning mechanism), or None."""
    import json

    import pyarrow.parquet as pq

    raw = (pq.read_schema(path).metadata or {}).get(PARQUET_METADATA_KEY)
    if raw is None:
        return None
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _first_line(exc: BaseException) -> str:
    """An exception's first line without its closing full stop (an ellipsis stays)."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    line = text.splitlines()[0]
    return line[:-1] if line.endswith(".") and not line.endswith("..") else line


def _squash(text: str) -> str:
    return "".join(text.split())


def _shown(text: str, rendered: str) -> int:
    """Where `text` ends in `rendered`, as it is or JSON-escaped (a value with quotes or newlines in a call's
    arguments); 0 when it is not there."""
    import json

    for form in dict.fromkeys((text, json.dumps(text)[1:-1], json.dumps(text, ensure_ascii=False)[1:-1])):
        at = rendered.rfind(form)
        if at >= 0:
            return at + len(form)
    return 0


def _roles(messages: Iterable[dict]) -> str:
    return "[" + ", ".join(str(m.get("role")) for m in messages) + "]"


def _short(text: str, limit: int = 60) -> str:
    if len(text) <= limit:
        return repr(text)
    half = limit // 2
    return f"{text[:half]!r} ... {text[-half:]!r} ({len(text):,} chars)"


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    """A tokenizer from a local directory or a Hugging Face id (the local cache first, then the
    hub where it is reachable). Raises TemplateError with the fix when neither works."""
    from transformers import AutoTokenizer

    from sft.common.model_files import checked_tokenizer
    path = Path(name_or_path).expanduser()
    local = path.exists() or name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    if local and not path.is_dir():
        raise TemplateError(f"tokenizer {name_or_path} does not exist; pass a local model or tokenizer directory "
                            "or a Hugging Face id such as Qwen/Qwen2.5-7B-Instruct")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path) if local else name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        where = "directory" if local else "Hugging Face id (not in the local cache, and the hub was not reachable)"
        first = _first_line(exc)
        raise TemplateError(f"cannot load a tokenizer from {name_or_path}: {first}. Check the {where}; with no "
                            "network, download it first on a machine that has one (huggingface-cli download ...)") from None
    return checked_tokenizer(tokenizer, name_or_path, TemplateError)  # an empty vocabulary encodes nothing


class ChatFormat:
    """The model's chat template, turned into token ids and a loss mask (see the module docstring)."""

    def __init__(self, tokenizer, template_kwargs: dict | None = None, reasoning_tags: Sequence[str] = REASONING_TAGS,
                 name: str | None = None, use_tiktoken: bool | None = None, stop_token: str | None = None):
        from sft.text.chat_tokens import TextTokenizer

        self.tokenizer = tokenizer
        self.name = name or getattr(tokenizer, "name_or_path", None) or "the tokenizer"
        self.template_kwargs = dict(template_kwargs or {})
        self.reasoning_tags = tuple(reasoning_tags)
        if len(self.reasoning_tags) != 2 or not all(self.reasoning_tags):
            raise ValueError(f"reasoning tags must be two non-empty strings, got {reasoning_tags!r}")
        if "add_generation_prompt" in self.template_kwargs:
            raise TemplateError("add_generation_prompt cannot be a template setting: the prompt of every trained turn "
                                "is rendered with it on, the whole conversation with it off. Remove it")
        if not getattr(tokenizer, "chat_template", None):
            raise TemplateError(f"{self.name} has no chat template, so there is no format to train in. Use a chat or "
                                "instruct model's tokenizer, or set its chat_template")
        self.text = TextTokenizer(tokenizer, use_tiktoken=use_tiktoken)
        decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
        self._added = sorted({t.content for t in decoder.values() if getattr(t, "content", None)}, key=len, reverse=True)
        # Added tokens that swallow the whitespace after (rstrip) or before (lstrip) them, as Phi's
        # role tokens do: untrained text next to them loses that whitespace, as it would if the whole
        # conversation were tokenized at once.
        self._rstrip = tuple(t.content for t in decoder.values() if getattr(t, "rstrip", False) and t.content)
        self._lstrip = tuple(t.content for t in decoder.values() if getattr(t, "lstrip", False) and t.content)
        self.render_defaults: dict = {}
        self._tools: ToolFormat | None = None
        self._render_cached = lru_cache(maxsize=8192)(self._render_key)
        self._probe(stop_token)

    @classmethod
    def load(cls, name_or_path: str, **kwargs) -> "ChatFormat":
        return cls(load_tokenizer(name_or_path), name=kwargs.pop("name", name_or_path), **kwargs)

    def __getstate__(self) -> dict:  # data loader and prepare_data workers started by spawn
        state = dict(self.__dict__)
        del state["_render_cached"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._render_cached = lru_cache(maxsize=8192)(self._render_key)

    # -- rendering --------------------------------------------------------------------
    def _render_key(self, key: tuple, generation_prompt: bool, extra: tuple) -> str:
        messages = [_thaw(m) for m in key]
        kwargs = {**self.template_kwargs, **self.render_defaults, **dict(_thaw(extra) if extra else {})}
        try:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt,
                                                      **kwargs)
        except Exception as exc:  # noqa: BLE001 - a template can raise anything; each is the template's refusal
            message = _first_line(exc)
            raise TemplateError(f"the chat template of {self.name} refused the conversation {_roles(messages)}: "
                                f"{message}") from None
        if not isinstance(text, str):
            raise TemplateError(f"the chat template of {self.name} returned {type(text).__name__}, not text")
        return text

    def render(self, messages: Sequence[dict], generation_prompt: bool, extra: dict | None = None) -> str:
        """The template's text for `messages` (with `extra` template variables on top of the settings)."""
        return self._render_cached(tuple(_freeze(m) for m in messages), generation_prompt,
                                   _freeze(extra) if extra else ())

    # -- the template's shape, found once ------------------------------------------------------
    def _probe(self, stop_token: str | None) -> None:
        from sft.text.reasoning_format import probe_reasoning

        user = [{"role": "user", "content": _PROBE_USER}]
        self.render_defaults = self._neutral_variables(user)
        prompt = self.render(user, True)
        full = self.render(user + [{"role": "assistant", "content": _REPLY}], False)
        if full.count(_REPLY) != 1:
            raise TemplateError(f"the chat template of {self.name} does not write an assistant message's content "
                                f"into its output ({_short(full, 120)}), so there is nothing to train")
        at = full.index(_REPLY)
        head, self.closing = full[:at], full[at + len(_REPLY):]
        common = common_prefix(prompt, head)
        diverges = common not in (len(prompt), len(head))
        if diverges:  # the prompt opens a reasoning block where a reply writes its own (checked below)
            common = token_boundary(prompt, common, self._added)
        self.opening, self.scaffold = prompt[common:], head[common:]
        # What add_generation_prompt adds (Phi-3.5 ends the render without it with EOS instead).
        self.generation_prompt = prompt[common_prefix(prompt, self.render(user, False)):]
        self.reasoning = probe_reasoning(self.render, user, prompt, self.scaffold, self.reasoning_tags, self._added,
                                         self.tokenizer.chat_template, {**self.template_kwargs, **self.render_defaults})
        if diverges and not (self._only_tags(self.opening) and self._only_tags(self.scaffold)):
            raise TemplateError(f"the chat template of {self.name} ends its generation prompt with "
                                f"{self.opening!r} but starts a reply with {self.scaffold!r}; a model could not be "
                                "prompted the way it is trained. Use a template whose generation prompt begins its "
                                "replies")
        self.stop_token, self.end_of_turn_source = self._find_stop_token(user, stop_token)
        self.end_of_turn, self.after_end_of_turn = self._end_of_turn(self.closing)

    def _reply_start(self, prompt: str, rendered: str) -> int | None:
        """Where a reply starts in `rendered` (a conversation ending with it, or a placeholder): after the
        whole prompt, or, where the prompt ends with a reasoning opening or an empty block that the
        render of a reply does not repeat (DeepSeek-V3.1's `<think>` before a reply rendered after
        `</think>`, QwQ's `<think>\n`), where the two part. None when the prompt is not there."""
        if rendered.startswith(prompt):
            return len(prompt)
        start = token_boundary(prompt, common_prefix(prompt, rendered), self._added)
        return start if self._only_tags(prompt[start:]) else None

    def _neutral_variables(self, user: list[dict]) -> dict:
        """Template variables the template needs and nothing passes, with neutral values (tools=[] for a
        template that iterates over the tools transformers passes as None); {} when it needs none."""
        from sft.text.reasoning_format import neutral_variables

        probe = user + [{"role": "assistant", "content": _REPLY}]

        def render_ok(extra: dict) -> str | None:
            try:
                self.render(user, True, extra)
                self.render(probe, False, extra)
            except TemplateError as exc:
                return str(exc)
            return None

        return neutral_variables(render_ok, self.tokenizer.chat_template, self.template_kwargs)

    def _split_closing(self, closing: str) -> tuple[str, str]:
        """(end of turn, what follows it): the closing text up to and including its first special token."""
        best = None
        for token in self._added:
            at = closing.find(token)
            if at >= 0 and (best is None or at < best[0]):
                best = (at, token)
        if best is None:
            return closing, ""
        end = best[0] + len(best[1])
        return closing[:end], closing[end:]

    def _end_of_turn(self, closing: str) -> tuple[str, str]:
        """(trained end of turn, untrained text after it) of a reply the template closes with `closing`:
        up to its first special token, or, where it has none, followed by the stop token."""
        end, after = self._split_closing(closing)
        if self.stop_token is not None and not any(token in end for token in self._added):
            return closing + self.stop_token, ""
        return end, after

    def _find_stop_token(self, user: list[dict], given: str | None) -> tuple[str | None, str]:
        """(the token trained after replies the template closes with no special token, where it came from).
        GLM-4.5/4.6 end a reply with nothing: the next role's token (`<|user|>`) follows, and the model's
        generation config lists it as a stop token. The stop token is one of generation_config.json's
        eos_token_id (the next turn's opening token when it is one of them, else the tokenizer's EOS or
        the first); without a generation config, the next turn's opening token, else the tokenizer's EOS."""
        if given is not None:
            if given not in self._added:
                raise TemplateError(f"the recorded stop token {given!r} is not a token of {self.name}; prepare the "
                                    "data again with this tokenizer")
            return given, "recorded"
        end, _ = self._split_closing(self.closing)
        if any(token in end for token in self._added):
            return None, "template"
        next_token = None
        try:
            rendered = self.render(user + [{"role": "assistant", "content": _REPLY},
                                           {"role": "user", "content": _TURN.format(0)}], False)
            after = rendered[rendered.index(_REPLY) + len(_REPLY): rendered.index(_TURN.format(0))]
            found = [(after.find(t), t) for t in self._added if t in after]
            next_token = min(found)[1] if found else None
        except (TemplateError, ValueError):
            pass
        stops = _generation_stop_tokens(self.tokenizer)
        if stops:
            if next_token in stops:
                return next_token, "generation_config.json eos_token_id (the next turn's opening token)"
            eos = getattr(self.tokenizer, "eos_token", None)
            return (eos if eos in stops else stops[0]), "generation_config.json eos_token_id"
        if next_token is not None:
            return next_token, "the next turn's opening token (no generation_config.json beside the tokenizer)"
        eos = getattr(self.tokenizer, "eos_token", None)
        if eos and eos in self._added:
            return eos, "the tokenizer's eos_token (no generation_config.json beside the tokenizer)"
        return None, "none"

    @property
    def tools(self) -> ToolFormat:
        """How the template writes tool calls, tool results and the tools list (probed the first time a
        conversation has them; sft/text/tool_format.py)."""
        if self._tools is None:
            self._tools = probe_tools(self.render, [{"role": "user", "content": _PROBE_USER}])
        return self._tools

    def describe(self) -> dict:
        """What the template does, for manifests and logs."""
        return {
            "tokenizer": str(self.name),
            "chat_template_sha256": hashlib.sha256(self.tokenizer.chat_template.encode()).hexdigest(),
            "template_kwargs": self.template_kwargs,
            "render_defaults": self.render_defaults,
            "reasoning_tags": list(self.reasoning_tags),
            "generation_prompt": self.generation_prompt,
            "generation_prompt_opens": self.opening,
            "reply_scaffold": self.scaffold,
            "reasoning": self.reasoning.describe(),
            "end_of_turn": self.end_of_turn,
            "end_of_turn_source": self.end_of_turn_source,
            "after_end_of_turn": self.after_end_of_turn,
            "text_encoder": self.text.text_encoder,
        }

    def recorded_settings(self) -> dict:
        """What prepare_data records beside the template kwargs so that training and evaluation encode and
        prompt the same way (sft/verl_plugins/sft_dataset.py passes `stop_token` back and compares the rest)."""
        return {"stop_token": self.stop_token, "render_defaults": self.render_defaults,
                "reasoning_format": self.reasoning.describe()}

    # -- per conversation: the reasoning switch ----------------------------------------------
    def _setting(self, reasoning: bool) -> tuple[dict | None, str | None, str | None]:
        """(template variables, system-prompt toggle, flag) for a conversation with or without reasoning:
        the template's switch where its default generation prompt contradicts the conversation (closes the
        reasoning of a reply that has some, opens it for a reply that has none); else nothing."""
        fmt = self.reasoning
        switch = fmt.switch
        if switch is None:
            return None, None, None
        if reasoning and fmt.prompt == CLOSES and switch.on is not None:
            value, flag = switch.on, FLAG_SWITCH_ON
        elif not reasoning and fmt.prompt == OPENS and switch.off is not None:
            value, flag = switch.off, FLAG_SWITCH_OFF
        else:
            return None, None, None
        if switch.kind == "variable":
            return {switch.name: value}, None, flag
        return None, value, flag

    @staticmethod
    def _with_toggle(messages: list[dict], toggle: str) -> list[dict]:
        if messages and messages[0]["role"] == "system":
            first = messages[0]["content"]
            return [dict(messages[0], content=f"{first}\n{toggle}" if first.strip() else toggle)] + messages[1:]
        return [{"role": "system", "content": toggle}] + messages

    def prompt(self, messages: Sequence[dict], reasoning: bool = True) -> str:
        """The generation prompt for `messages` (a conversation ending before the reply) with the setting
        training uses for a reply with (or without) reasoning: what evaluation and generation prompt with."""
        extra, toggle, _ = self._setting(reasoning)
        canon = [{"role": m["role"], "content": m["content"]} for m in messages]
        return self.render(self._with_toggle(canon, toggle) if toggle else canon, True, extra)

    def split_reply(self, text: str) -> tuple[str | None, str]:
        """(reasoning, answer) of a generated reply in the model's own format (its delimiters, channels;
        see ReasoningFormat.split): what evaluation grades is the answer."""
        return self.reasoning.split(text)

    # -- one conversation ---------------------------------------------------------------
    def _without_opening(self, text: str, opening: str) -> str:
        """`text` less the reasoning opening that the generation prompt already wrote."""
        if text.startswith(opening):
            return text[len(opening):]
        for tag in dict.fromkeys((opening.strip(), self.reasoning_tags[0].strip())):
            stripped = text.lstrip()
            if tag and stripped.startswith(tag):
                return stripped[len(tag):].lstrip()
        return text

    def _only_tags(self, text: str) -> bool:
        """Whether `text` holds nothing but reasoning delimiters and whitespace (an empty reasoning block)."""
        for tag in (*self.reasoning.tags, *self.reasoning_tags):
            text = text.replace(tag.strip(), "")
        return not text.strip()

    def _reply(self, history: list[dict], prompt: str, content: str, extra: dict | None,
               calls: list[dict] | None = None, following: dict | None = None) -> tuple[str, str, str, str, set[str]]:
        """(reply text, end of turn, untrained text after it, outcome, flags) of one assistant turn after
        `prompt`; the trained text is the reply text followed by the end of turn. `calls`: the turn's tool calls
        (in the template's form); `following`: the message after the turn."""
        flags: set[str] = set()
        fmt = self.reasoning
        reasoning, answer, unclosed = split_at_tags(content, *self.reasoning_tags)
        if unclosed:
            flags.add(FLAG_UNCLOSED)
        state = fmt.state(prompt)
        if reasoning is not None and not unclosed and state == CLOSES:
            raise TemplateError(self._closed_prompt_refusal(history))
        opened = fmt.opened(prompt)
        carrier = fmt.carrier if (reasoning is not None and not unclosed and fmt.carrier is not None
                                  and fmt.carrier.kind != "inline") else None
        if carrier is not None:  # the template reads the reasoning apart and writes it its own way
            message = carrier.message(reasoning, answer, self.reasoning_tags)
            pieces = [reasoning.strip(), answer.strip()]
            if fmt.own_tags():
                flags.add(FLAG_OWN_FORMAT)
        else:
            message = {"role": "assistant", "content": content}
            pieces = [self._without_opening(content, opened) if opened else content]
        if calls:
            message = self._call_message(content, calls)
            full = self.render(history + [message], False, extra)
            return self._call_turn(history + [message], prompt, full, pieces, flags, opened, extra, following)
        full = self.render(history + [message], False, extra)
        start = self._reply_start(prompt, full)
        if start is not None and full.endswith(self.closing):
            inner = full[start: len(full) - len(self.closing)]
            lead = prompt[start:]  # in the prompt, not in the render of the reply
            if lead.strip():
                inner = self._without_opening(inner, lead)
            if opened:
                inner = self._without_opening(inner, opened)
            placed = _placed(pieces, inner)
            if placed is not None and carrier is None and reasoning is not None and not unclosed:
                lead = inner[: inner.find(pieces[0])] if placed == OUTCOME_TEMPLATE else ""
                if lead and self._only_tags(lead):  # an empty block the template writes before every reply
                    inner = inner[len(lead):]
            if placed is not None:
                if placed == OUTCOME_TEMPLATE and carrier is None and inner != pieces[0]:
                    flags.add(FLAG_TEMPLATE_TEXT)
                return self._finish(inner, self.end_of_turn, self.after_end_of_turn, placed, flags, opened)
        # The template dropped or rewrote part of the reply: place it where a placeholder reply goes.
        placeholder = self.render(history + [{"role": "assistant", "content": _REPLY}], False, extra)
        if placeholder.count(_REPLY) != 1:
            raise TemplateError(f"the chat template of {self.name} does not write the assistant content of "
                                f"{_roles(history + [{'role': 'assistant'}])}")
        at = placeholder.index(_REPLY)
        head, closing = placeholder[:at], placeholder[at + len(_REPLY):]
        scaffold = self._scaffold(history, prompt, head, flags)
        if carrier is not None:
            text = fmt.opening + reasoning.strip() + fmt.closing + answer.lstrip()
            text = self._without_opening(text, opened) if opened else text
        else:
            text = pieces[0]
        if reasoning is not None and self._only_tags(scaffold):
            scaffold = ""  # the template's empty reasoning block gives way to the reply's own reasoning
        elif opened and self._only_tags(scaffold):
            scaffold = ""
        if scaffold:
            flags.add(FLAG_TEMPLATE_TEXT)
        end_of_turn, after = self._end_of_turn(closing)
        return self._finish(scaffold + text, end_of_turn, after, OUTCOME_INSERTED, flags, opened)

    def _scaffold(self, history: list[dict], prompt: str, head: str, flags: set[str]) -> str:
        """What the template writes between `prompt` and a reply, read from `head` (a render with a placeholder
        reply, up to the placeholder); TemplateError when the reply's place in it is unknown."""
        start = self._reply_start(prompt, head)
        generation = self.generation_prompt
        if start is not None:
            return head[start:]  # where the prompt opened the block, the template may close an empty one
        if any(m["role"] == "tool" for m in history) and generation.strip() and prompt.endswith(generation) \
                and generation in head:
            # After tool results the prompt keeps the reasoning of the turns that called the tools, which the
            # render of a finished reply drops (gpt-oss): the reply follows the prompt, with the text the
            # template writes between its generation prompt and a reply.
            flags.add(FLAG_HISTORY)
            return head[head.rindex(generation) + len(generation):]
        from sft.text.reasoning_format import template_variables

        part = token_boundary(prompt, common_prefix(prompt, head), self._added)
        variables = ", ".join(template_variables(self.tokenizer.chat_template)[:8]) or "none"
        raise TemplateError(f"the chat template of {self.name} renders the prompt of {_roles(history)} differently "
                            f"when a reply follows (ending {head[part:][-40:]!r}) than with the generation prompt "
                            f"(ending {prompt[part:][-40:]!r}), so the reply's place is unknown; set the template "
                            f"variable that makes them agree with --chat-template-kwargs (it reads: {variables})")

    def _call_message(self, content: str, calls: list[dict]) -> dict:
        """A turn that makes tool calls as the template reads it: its reasoning in the template's carrier (as
        _reply hands it), its calls in the template's form. Later turns' prompts render it the same way."""
        reasoning, answer, unclosed = split_at_tags(content, *self.reasoning_tags)
        carrier = self.reasoning.carrier
        if reasoning is not None and not unclosed and carrier is not None and carrier.kind != "inline":
            message = carrier.message(reasoning, answer, self.reasoning_tags)
        else:
            message = {"role": "assistant", "content": content}
        return self.tools.template_message({**message, "tool_calls": calls})

    def _call_turn(self, turn: list[dict], prompt: str, full: str, pieces: list[str], flags: set[str], opened: str,
                   extra: dict | None, following: dict | None):
        """_reply's result for a turn that makes tool calls: the template's render of the turn, which must hold
        its content (reasoning and answer) and every call's name and arguments, trained up to and including the
        token that ends the template's other replies where it follows the calls (`<|im_end|>`, `<|eot_id|>`,
        `<｜end▁of▁sentence｜>`), else the last added token after them (gpt-oss's `<|call|>`); where the template
        closes replies with no special token (GLM), the token that opens the next turn follows."""
        history, calls = turn[:-1], turn[-1]["tool_calls"]
        start = self._reply_start(prompt, full)
        if start is None:
            raise TemplateError(f"the chat template of {self.name} renders the prompt of {_roles(history)} "
                                "differently when a tool call follows it, so the call's place is unknown")
        body = full[start:]
        lead = prompt[start:]
        if lead.strip():
            body = self._without_opening(body, lead)
        if opened:
            body = self._without_opening(body, opened)
        squashed = _squash(body)
        texts = call_texts(calls)
        missing = [p for p in pieces if p.strip() and _squash(p) not in squashed]
        missing += [t for t in texts if not _shown(t, body)]
        if missing:
            raise TemplateError(f"the chat template of {self.name} drops part of the assistant turn after "
                                f"{_roles(history)} that makes a tool call ({_short(missing[0], 60)} is not in its "
                                f"render), so that part would not be trained; remove it from the data if it does not "
                                f"belong there, or {TOOL_FIX}")
        end = max((_shown(t, body) for t in texts), default=0)
        tail = body[end:]
        token, cut = None, len(body)
        closing = self._split_closing(self.closing)[0]
        plain_end = next((t for t in self._added if t in closing), None)
        if plain_end is not None and plain_end in tail:  # the token that ends the template's other replies
            token, cut = plain_end, end + tail.index(plain_end)
        for candidate in self._added if token is None else ():  # else the last one after the calls (<|call|>)
            at = tail.rfind(candidate)
            if at >= 0 and (token is None or end + at > cut):
                token, cut = candidate, end + at
        if token is None:
            reply, end_of_turn, after = body, "", ""
        else:
            reply, end_of_turn, after = body[:cut], token, body[cut + len(token):]
        if self.stop_token is not None:  # no special token closes replies: the one that opens the next turn does
            end_of_turn += self._next_turn_token(turn, full, following, extra)
        return self._finish(reply, end_of_turn, after, OUTCOME_TEMPLATE, flags, opened)

    def _next_turn_token(self, turn: list[dict], full: str, following: dict | None, extra: dict | None) -> str:
        """The first added token the template writes after `full` (the render of `turn`, which ends with a tool
        call) when `following` comes next; the stop token where there is none."""
        if following is not None:
            rendered = self.render(turn + [following], False, extra)
            if rendered.startswith(full):
                found = [(rendered.find(t, len(full)), t) for t in self._added if t in rendered[len(full):]]
                if found:
                    return min(found)[1]
        return self.stop_token or ""

    def _closed_prompt_refusal(self, history: list[dict]) -> str:
        forced = False
        if self.template_kwargs:  # would the template's own default let the model reason?
            try:
                default = self.tokenizer.apply_chat_template(history, tokenize=False, add_generation_prompt=True,
                                                             **self.render_defaults)
                forced = self.reasoning.state(default) != CLOSES
            except Exception:  # noqa: BLE001 - the template needs the user's settings to render at all
                forced = False
        if forced:
            why = f"--chat-template-kwargs sets {', '.join(f'{k}={v!r}' for k, v in self.template_kwargs.items())}"
            fix = "drop it from --chat-template-kwargs, or remove the reasoning (prepare_data --answers-only)"
        else:
            why = "and it has no setting that opens it"
            fix = "remove the reasoning (prepare_data --answers-only), or use a template that lets the model reason"
        return (f"the chat template of {self.name} closes the reasoning block in the generation prompt ({why}), "
                f"but the reply after {_roles(history)} has reasoning, which the model would never be prompted to "
                f"write; {fix}")

    def _finish(self, inner, end_of_turn, after, outcome, flags, opened):
        if opened:
            flags.add(FLAG_OPENED)
            if not any(tag and tag in inner for tag in (self.reasoning.tags[1], self.reasoning_tags[1])):
                flags.add(FLAG_OPENED_NO_CLOSE)
        if not any(token in end_of_turn for token in self._added):
            flags.add(FLAG_NO_END_TOKEN)
        return inner, end_of_turn, after, outcome, flags

    def _bridge(self, messages: list[dict], turn: int, earlier: list[int], end_of_turn: str,
                extra: dict | None) -> str:
        """Text between the end of the previous assistant turn and the reply of `turn`, from a render
        whose earlier replies are placeholders (for templates that render history differently)."""
        history = list(messages[:turn])
        for j in earlier:
            history[j] = {"role": "assistant", "content": _TURN.format(j),
                          **({"tool_calls": history[j]["tool_calls"]} if history[j].get("tool_calls") else {})}
        rendered = self.render(history, True, extra)
        mark = _TURN.format(earlier[-1])
        if rendered.count(mark) != 1:
            raise TemplateError(f"the chat template of {self.name} does not write earlier assistant turns of "
                                f"{_roles(history)} into the prompt")
        after = rendered[rendered.index(mark) + len(mark):]
        calls = history[earlier[-1]].get("tool_calls")
        if calls:  # the earlier turn's calls follow its content: the turn ends at its end of turn after them
            end = max(_shown(text, after) for text in call_texts(calls))
            at = after.find(end_of_turn, end) if end and end_of_turn else -1
            if at < 0:
                raise TemplateError(f"the chat template of {self.name} writes the tool calls of earlier assistant turns "
                                    f"of {_roles(history)} differently from how it writes the last turn's")
            return after[at + len(end_of_turn):]
        if after.startswith(end_of_turn):
            return after[len(end_of_turn):]
        if self.end_of_turn_source == "template":
            # Earlier turns end with another special token (gpt-oss: <|end|>, the last one <|return|>).
            ending, rest = self._split_closing(after)
            if any(token in ending for token in self._added):
                return rest
        elif after.startswith(self.closing):  # the stop token was trained; the template's next turn follows
            return after[len(self.closing):]
        raise TemplateError(f"the chat template of {self.name} closes earlier assistant turns with "
                            f"{after[:40]!r}, not with {end_of_turn!r} as it closes the last one")

    def _tool_setting(self, canon: list[dict], tools: Sequence[dict] | None) -> tuple[list[dict], dict | None]:
        """(the conversation in the form the template reads, template variables for its tools list): tool calls in
        the template's form, `tools` as OpenAI's function schemas. Raises TemplateError where the template
        does not render a part of the conversation (its calls, results or tools list)."""
        calls = any(m.get("tool_calls") for m in canon)
        results = any(m["role"] == "tool" for m in canon)
        if tools is not None:
            problem = tools_problem(tools)
            if problem is not None:
                raise ConversationError(f"the tools list {problem}")
        if not (calls or results or tools):
            return canon, None
        refusal = self.tools.refusal(self.name, calls, results, bool(tools))
        if refusal is not None:
            raise TemplateError(refusal)
        canon = [self.tools.template_message(m) if m.get("tool_calls") else m for m in canon]
        return canon, ({"tools": canonical_tools(list(tools))} if tools else None)

    def segments(self, messages: Sequence[dict], tools: Sequence[dict] | None = None) -> Encoding:
        """The conversation as text segments: context (untrained) and every assistant turn (trained, tool calls
        included). `tools`: the function schemas the conversation's prompt lists (apply_chat_template's tools)."""
        canon, tool_variables = self._tool_setting(canonical_messages(messages, self.reasoning_tags), tools)
        reasoning = any(split_at_tags(m["content"] or "", *self.reasoning_tags)[0] is not None
                        for m in canon if m["role"] == "assistant")
        extra, toggle, setting_flag = self._setting(reasoning)
        if tool_variables:
            extra = {**(extra or {}), **tool_variables}
        if toggle is not None:
            canon = self._with_toggle(canon, toggle)
        turns = [i for i, m in enumerate(canon) if m["role"] == "assistant"]
        pieces: list[Segment] = []
        outcomes: list[str] = []
        flags: set[str] = {setting_flag} if setting_flag else set()
        text = ""
        after = ""
        end_of_turn = self.end_of_turn
        for n, turn in enumerate(turns):
            history = canon[:turn]
            prompt = self.render(history, True, extra)
            if prompt.startswith(text):
                context = prompt[len(text):]
            else:
                context = self._bridge(canon, turn, turns[:n], end_of_turn, extra)
                flags.add(FLAG_HISTORY)
            message = canon[turn]
            following = canon[turn + 1] if turn + 1 < len(canon) else None
            reply, end_of_turn, after, outcome, turn_flags = self._reply(
                history, prompt, message["content"] or "", extra, message.get("tool_calls"), following)
            if message.get("tool_calls"):
                canon[turn] = self._call_message(message["content"] or "", message["tool_calls"])
            trained = reply + end_of_turn
            pieces += [Segment(context, False), Segment(trained, True)]
            outcomes.append(outcome)
            flags |= turn_flags
            if outcome != OUTCOME_TEMPLATE:
                flags.add(outcome)
            text += context + trained
        if after:
            pieces.append(Segment(after, False))
        if self._rstrip or self._lstrip:
            pieces = self._absorb_whitespace(pieces)
        return Encoding([p for p in pieces if p.text], outcomes, flags)

    def _absorb_whitespace(self, pieces: list[Segment]) -> list[Segment]:
        """Drop the whitespace that an rstrip/lstrip added token next to a segment boundary absorbs,
        from untrained segments only (a reply keeps its text: the model writes it after the prompt)."""
        pieces = list(pieces)
        for i in range(1, len(pieces)):
            before, current = pieces[i - 1], pieces[i]
            if not current.trained and self._rstrip and before.text.endswith(self._rstrip):
                pieces[i] = Segment(current.text.lstrip(), False)
            if not before.trained and self._lstrip and pieces[i].text.startswith(self._lstrip):
                pieces[i - 1] = Segment(before.text.rstrip(), False)
        return pieces

    # -- token ids ----------------------------------------------------------------------
    def encode(self, messages: Sequence[dict], tools: Sequence[dict] | None = None) -> tuple[list[int], list[int]]:
        """(input ids, loss mask) of one conversation (with the tools list its prompt gives, if any)."""
        encoding = self.segments(messages, tools)
        ids: list[int] = []
        mask: list[int] = []
        for segment, piece in zip(encoding.segments, self.text.encode_batch([s.text for s in encoding.segments])):
            ids.extend(piece)
            mask.extend([int(segment.trained)] * len(piece))
        return ids, mask

    def count(self, conversations: Sequence[Sequence[dict]], tools: Sequence[Sequence[dict] | None] | None = None
              ) -> tuple[list[int | None], list[Encoding | str]]:
        """Token counts of many conversations (the lengths `encode` gives), batched; `tools`: each one's tools
        list (or None). Returns the counts (None for a conversation that cannot be encoded) and, for each, its
        Encoding or the one-line reason it could not be encoded."""
        results: list[Encoding | str] = []
        texts: list[str] = []
        for n, messages in enumerate(conversations):
            try:
                encoding = self.segments(messages, tools[n] if tools else None)
            except (TemplateError, ConversationError) as exc:
                results.append(str(exc))
                continue
            results.append(encoding)
            texts.extend(s.text for s in encoding.segments)
        lengths = self.text.lengths(texts).tolist() if texts else []
        counts: list[int | None] = []
        position = 0
        for result in results:
            if isinstance(result, str):
                counts.append(None)
                continue
            n = len(result.segments)
            counts.append(int(sum(lengths[position : position + n])))
            position += n
        return counts, results

    def explain(self, messages: Sequence[dict], limit: int = 200, tools: Sequence[dict] | None = None) -> str:
        """The conversation's segments, one per line, marked `context` or `trained`, with token counts."""
        encoding = self.segments(messages, tools)
        lengths = self.text.lengths([s.text for s in encoding.segments])
        lines = []
        for segment, n in zip(encoding.segments, lengths.tolist()):
            lines.append(f"  {'trained' if segment.trained else 'context'} {n:>6,} tokens  {_short(segment.text, limit)}")
        return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    parser = argparse.ArgumentParser(
        prog="python -m sft.text.chat_format",
        description="Show what one sample trains on with a tokenizer's chat template: its context (loss off) and "
        "trained (loss on) parts and their token counts.")
    parser.add_argument("tokenizer", help="local tokenizer/model directory or Hugging Face id")
    parser.add_argument("prompt", nargs="?", help="user message")
    parser.add_argument("response", nargs="?", help="assistant message (reasoning in <think>...</think> is kept)")
    parser.add_argument("--system-prompt", default=None, help="system message to put first")
    parser.add_argument("--messages", default=None, metavar="FILE",
                        help="a JSON file with an OpenAI-style messages list, instead of PROMPT and RESPONSE")
    parser.add_argument("--answers-only", action="store_true", help="remove the reasoning from assistant messages first")
    parser.add_argument("--chat-template-kwargs", default=None, metavar="JSON",
                        help="extra template variables, e.g. '{\"enable_thinking\": false}'")
    parser.add_argument("--full", action="store_true", help="print the segments whole instead of abbreviated")
    args = parser.parse_args(argv)
    try:
        kwargs = json.loads(args.chat_template_kwargs) if args.chat_template_kwargs else None
        if args.messages:
            messages = json.loads(Path(args.messages).read_text(encoding="utf-8"))
        elif args.prompt is not None and args.response is not None:
            messages = ([{"role": "system", "content": args.system_prompt}] if args.system_prompt is not None else []) + [
                {"role": "user", "content": args.prompt}, {"role": "assistant", "content": args.response}]
        else:
            parser.error("give PROMPT and RESPONSE, or --messages FILE")
        if args.answers_only:
            messages = [dict(m, content=split_reasoning(m["content"])[1]) if m.get("role") == "assistant" else m
                        for m in messages]
        chat = ChatFormat.load(args.tokenizer, template_kwargs=kwargs)
        encoding = chat.segments(messages)
        print(chat.explain(messages, limit=1 << 30 if args.full else 200))
        ids, mask = chat.encode(messages)
        print(f"{len(ids):,} tokens, {sum(mask):,} trained; turns: {', '.join(encoding.outcomes)}")
        reasoning = chat.reasoning.describe()
        print(f"reasoning: {reasoning['carrier']}; generation prompt {reasoning['generation_prompt']}"
              + (f"; switch {reasoning['switch']}" if reasoning["switch"] else "")
              + f"; end of turn {chat.end_of_turn!r} ({chat.end_of_turn_source})")
        for flag in sorted(encoding.flags):
            print(f"note: {FLAG_EXPLANATIONS.get(flag, flag)}")
    except (TemplateError, ConversationError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
