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
- trained (loss on): the turn's content as given, reasoning included, in the template's own
  format (its whitespace rules, an empty reasoning block it adds), then the template's
  end-of-turn text up to and including its first special token (`<|im_end|>`, `<|eot_id|>`,
  `<end_of_turn>`, `</s>`, ...). What the template writes after that (a newline, Phi-3.5's
  final EOS) follows with loss off;
- where the generation prompt already opens the reasoning (`<|im_start|>assistant\\n<think>\\n`),
  the reply's own opening `<think>` is not repeated: the trained part starts right after the
  prompt, so no part of the reply is untrained and no token appears twice.

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

A template that cannot render a conversation raises TemplateError with one line: which
template, what it refused and what to do.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

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
    opening, closing = tags
    at = content.rfind(closing)
    if at >= 0:
        reasoning = content[:at]
        start = reasoning.find(opening)
        if start >= 0:
            reasoning = reasoning[start + len(opening):]
        return reasoning, content[at + len(closing):].lstrip()
    start = content.find(opening)
    if start >= 0:
        return content[start + len(opening):], ""
    return None, content


def join_reasoning(reasoning: str | None, answer: str, tags: Sequence[str] = REASONING_TAGS) -> str:
    """One content string for a reply given as separate reasoning and answer (the form that
    Qwen3's and DeepSeek-R1's templates parse)."""
    if reasoning is None:
        return answer
    return f"{tags[0]}\n{reasoning.strip()}\n{tags[1]}\n\n{answer.lstrip()}"


ROLES = ("system", "user", "assistant")
MESSAGE_KEYS = ("role", "content", "reasoning_content")


def conversation_problem(messages) -> str | None:
    """Why `messages` cannot be trained, in one line, or None when it can: an OpenAI-style list of
    {role, content[, reasoning_content]} with roles system/user/assistant, the first message after
    any system prompt from the user, the last an assistant reply, every reply non-empty. Other keys
    are refused unless null, so nothing a row carries (a per-turn weight, tool calls) is silently ignored."""
    if not isinstance(messages, list) or not messages:
        return "is not a non-empty list of messages"
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"has message {index} that is a {type(message).__name__}, not an object with role and content"
        extra = sorted(k for k, v in message.items() if k not in MESSAGE_KEYS and v is not None)
        if {"from", "value"} <= set(extra):
            return (f"has message {index} in ShareGPT form ('from', 'value'); write it as role and content "
                    "(human -> user, gpt -> assistant)")
        if extra:
            return (f"has message {index} with {', '.join(map(repr, extra))}, which training does not use (only "
                    "role, content and reasoning_content); remove it from the row, or set it to null")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            return f"has message {index} with role {role!r}; the roles are system, user and assistant"
        if not isinstance(content, str):
            return f"has message {index} ({role}) whose content is a {type(content).__name__}, not a string"
        reasoning = message.get("reasoning_content")
        if reasoning is not None and (role != "assistant" or not isinstance(reasoning, str)):
            return f"has message {index} ({role}) with a reasoning_content that is not an assistant's string"
        if role == "assistant" and not content.strip() and not (reasoning or "").strip():
            return f"has message {index} (assistant) that is empty"
    roles = [m["role"] for m in messages]
    if "assistant" not in roles:
        return "has no assistant message to train on"
    first = next((r for r in roles if r != "system"), None)
    if first != "user":
        return "does not start with a user message (after any system prompt)"
    if roles[-1] != "assistant":
        return f"ends with a {roles[-1]} message after the last assistant reply, which nothing would train on"
    return None


def canonical_messages(messages, tags: Sequence[str] = REASONING_TAGS) -> list[dict]:
    """`messages` as {role, content} dicts, reasoning_content joined into the content; raises
    ConversationError with conversation_problem's reason."""
    problem = conversation_problem(list(messages) if isinstance(messages, tuple) else messages)
    if problem is not None:
        raise ConversationError(f"the conversation {problem}")
    canon = []
    for message in messages:
        content = message["content"]
        if message.get("reasoning_content") is not None:
            content = join_reasoning(message["reasoning_content"], content, tags)
        canon.append({"role": message["role"], "content": content})
    return canon


def _first_line(exc: BaseException) -> str:
    """An exception's first line without its closing full stop (an ellipsis stays)."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    line = text.splitlines()[0]
    return line[:-1] if line.endswith(".") and not line.endswith("..") else line


def _squash(text: str) -> str:
    return "".join(text.split())


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


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
                 name: str | None = None, use_tiktoken: bool | None = None):
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
        self._render_cached = lru_cache(maxsize=8192)(self._render_key)
        self._probe()

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
    def _render_key(self, key: tuple, generation_prompt: bool) -> str:
        messages = [{"role": role, "content": content} for role, content in key]
        try:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt,
                                                      **self.template_kwargs)
        except Exception as exc:  # noqa: BLE001 - a template can raise anything; each is the template's refusal
            message = _first_line(exc)
            raise TemplateError(f"the chat template of {self.name} refused the conversation {_roles(messages)}: "
                                f"{message}") from None
        if not isinstance(text, str):
            raise TemplateError(f"the chat template of {self.name} returned {type(text).__name__}, not text")
        return text

    def render(self, messages: Sequence[dict], generation_prompt: bool) -> str:
        return self._render_cached(tuple((m["role"], m["content"]) for m in messages), generation_prompt)

    # -- the template's shape, found once ------------------------------------------------------
    def _probe(self) -> None:
        user = [{"role": "user", "content": _PROBE_USER}]
        prompt = self.render(user, True)
        full = self.render(user + [{"role": "assistant", "content": _REPLY}], False)
        if full.count(_REPLY) != 1:
            raise TemplateError(f"the chat template of {self.name} does not write an assistant message's content "
                                f"into its output ({_short(full, 120)}), so there is nothing to train")
        at = full.index(_REPLY)
        head, self.closing = full[:at], full[at + len(_REPLY):]
        common = _common_prefix(prompt, head)
        if common == len(prompt):
            self.opening, self.scaffold = "", head[len(prompt):]
        elif common == len(head):
            self.opening, self.scaffold = prompt[len(head):], ""
        else:
            raise TemplateError(f"the chat template of {self.name} ends its generation prompt with "
                                f"{prompt[common:]!r} but starts a reply with {head[common:]!r}; a model could not be "
                                "prompted the way it is trained. Use a template whose generation prompt begins its replies")
        self.end_of_turn, self.after_end_of_turn = self._split_closing(self.closing)
        # What add_generation_prompt adds (Phi-3.5 ends the render without it with EOS instead).
        self.generation_prompt = prompt[_common_prefix(prompt, self.render(user, False)):]

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

    def describe(self) -> dict:
        """What the template does, for manifests and logs."""
        return {
            "tokenizer": str(self.name),
            "chat_template_sha256": hashlib.sha256(self.tokenizer.chat_template.encode()).hexdigest(),
            "template_kwargs": self.template_kwargs,
            "reasoning_tags": list(self.reasoning_tags),
            "generation_prompt": self.generation_prompt,
            "generation_prompt_opens": self.opening,
            "reply_scaffold": self.scaffold,
            "end_of_turn": self.end_of_turn,
            "after_end_of_turn": self.after_end_of_turn,
            "text_encoder": self.text.text_encoder,
        }

    # -- one conversation ---------------------------------------------------------------
    def _without_opening(self, text: str, opening: str) -> str:
        """`text` less the reasoning opening that the generation prompt already wrote."""
        if text.startswith(opening):
            return text[len(opening):]
        tag = opening.strip()
        stripped = text.lstrip()
        if tag and stripped.startswith(tag):
            return stripped[len(tag):].lstrip()
        return text

    def _reply(self, history: list[dict], prompt: str, content: str) -> tuple[str, str, str, str, set[str]]:
        """(reply text, end of turn, untrained text after it, outcome, flags) of one assistant turn after
        `prompt`; the trained text is the reply text followed by the end of turn."""
        flags: set[str] = set()
        opening_tag, closing_tag = self.reasoning_tags
        if opening_tag in content and closing_tag not in content:
            flags.add(FLAG_UNCLOSED)
        full = self.render(history + [{"role": "assistant", "content": content}], False)
        opened = ""
        body = None
        if full.startswith(prompt):
            body = full[len(prompt):]
        elif self.opening and prompt.endswith(self.opening) and full.startswith(prompt[: -len(self.opening)]):
            body, opened = full[len(prompt) - len(self.opening):], self.opening
        expected = self._without_opening(content, opened) if opened else content
        if body is not None and body.endswith(self.closing):
            inner = body[: len(body) - len(self.closing)]
            if opened:
                inner = self._without_opening(inner, opened)
            if _squash(expected) in _squash(inner):
                end_of_turn, after = self.end_of_turn, self.after_end_of_turn
                if expected in inner:
                    outcome = OUTCOME_TEMPLATE
                    if inner != expected:
                        flags.add(FLAG_TEMPLATE_TEXT)
                else:
                    outcome = OUTCOME_WHITESPACE
                return self._finish(inner, end_of_turn, after, outcome, flags, opened, expected)
        # The template dropped or rewrote part of the reply: place it where a placeholder reply goes.
        placeholder = self.render(history + [{"role": "assistant", "content": _REPLY}], False)
        if placeholder.count(_REPLY) != 1:
            raise TemplateError(f"the chat template of {self.name} does not write the assistant content of "
                                f"{_roles(history + [{'role': 'assistant'}])}")
        at = placeholder.index(_REPLY)
        head, closing = placeholder[:at], placeholder[at + len(_REPLY):]
        if head.startswith(prompt):
            scaffold, opened = head[len(prompt):], ""
        elif self.opening and prompt.endswith(self.opening) and head == prompt[: -len(self.opening)]:
            scaffold, opened = "", self.opening
        else:
            raise TemplateError(f"the chat template of {self.name} renders the prompt of {_roles(history)} differently "
                                "when a reply follows than with the generation prompt, so the reply's place is unknown")
        expected = self._without_opening(content, opened) if opened else content
        if opening_tag in scaffold and closing_tag in expected:
            scaffold = ""  # the template's empty reasoning block gives way to the reply's own reasoning
        end_of_turn, after = self._split_closing(closing)
        return self._finish(scaffold + expected, end_of_turn, after, OUTCOME_INSERTED, flags, opened, expected)

    def _finish(self, inner, end_of_turn, after, outcome, flags, opened, expected):
        if inner != expected and outcome == OUTCOME_INSERTED:
            flags.add(FLAG_TEMPLATE_TEXT)
        if opened:
            flags.add(FLAG_OPENED)
            if self.reasoning_tags[1] not in expected:
                flags.add(FLAG_OPENED_NO_CLOSE)
        if not any(token in end_of_turn for token in self._added):
            flags.add(FLAG_NO_END_TOKEN)
        return inner, end_of_turn, after, outcome, flags

    def _bridge(self, messages: list[dict], turn: int, earlier: list[int], end_of_turn: str) -> str:
        """Text between the end of the previous assistant turn and the reply of `turn`, from a render
        whose earlier replies are placeholders (for templates that render history differently)."""
        history = list(messages[:turn])
        for j in earlier:
            history[j] = {"role": "assistant", "content": _TURN.format(j)}
        rendered = self.render(history, True)
        mark = _TURN.format(earlier[-1])
        if rendered.count(mark) != 1:
            raise TemplateError(f"the chat template of {self.name} does not write earlier assistant turns of "
                                f"{_roles(history)} into the prompt")
        after = rendered[rendered.index(mark) + len(mark):]
        if not after.startswith(end_of_turn):
            raise TemplateError(f"the chat template of {self.name} closes earlier assistant turns with "
                                f"{after[:40]!r}, not with {end_of_turn!r} as it closes the last one")
        return after[len(end_of_turn):]

    def segments(self, messages: Sequence[dict]) -> Encoding:
        """The conversation as text segments: context (untrained) and every assistant turn (trained)."""
        canon = canonical_messages(messages, self.reasoning_tags)
        turns = [i for i, m in enumerate(canon) if m["role"] == "assistant"]
        pieces: list[Segment] = []
        outcomes: list[str] = []
        flags: set[str] = set()
        text = ""
        after = ""
        end_of_turn = self.end_of_turn
        for n, turn in enumerate(turns):
            history = canon[:turn]
            prompt = self.render(history, True)
            if prompt.startswith(text):
                context = prompt[len(text):]
            else:
                context = self._bridge(canon, turn, turns[:n], end_of_turn)
                flags.add(FLAG_HISTORY)
            reply, end_of_turn, after, outcome, turn_flags = self._reply(history, prompt, canon[turn]["content"])
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
    def encode(self, messages: Sequence[dict]) -> tuple[list[int], list[int]]:
        """(input ids, loss mask) of one conversation."""
        encoding = self.segments(messages)
        ids: list[int] = []
        mask: list[int] = []
        for segment, piece in zip(encoding.segments, self.text.encode_batch([s.text for s in encoding.segments])):
            ids.extend(piece)
            mask.extend([int(segment.trained)] * len(piece))
        return ids, mask

    def count(self, conversations: Sequence[Sequence[dict]]) -> tuple[list[int | None], list[Encoding | str]]:
        """Token counts of many conversations (the lengths `encode` gives), batched. Returns the
        counts (None for a conversation that cannot be encoded) and, for each, its Encoding or
        the one-line reason it could not be encoded."""
        results: list[Encoding | str] = []
        texts: list[str] = []
        for messages in conversations:
            try:
                encoding = self.segments(messages)
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

    def explain(self, messages: Sequence[dict], limit: int = 200) -> str:
        """The conversation's segments, one per line, marked `context` or `trained`, with token counts."""
        encoding = self.segments(messages)
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
        for flag in sorted(encoding.flags):
            print(f"note: {FLAG_EXPLANATIONS.get(flag, flag)}")
    except (TemplateError, ConversationError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
