"""One normaliser per row layout: a row in, the samples to train on out (imported; not a command).

Usage (internal; the scan calls it for every row that is not a plain prompt/response pair):
    layouts = Layouts(config)
    out = layouts.samples(row, "data.jsonl", 12, "line")   # RowSamples
    out.samples   # [Sample(row=output fields, messages=canonical conversation or None, prompt, element)]
    out.bad       # BadLine per row or per element that cannot be used
    out.dropped   # [(reason, element)]: `truncated`, `failed_sample_filter`
    layouts.plain(keys)   # True: rows with these keys are plain pairs the scan may take vectorised

Layouts, told apart by the row's structure (auto) unless a flag names the fields, and then the
flags win or the row fails (a field the user named is never replaced by another):
- conversation: a list of messages under `messages` or `conversations` (--messages-key). OpenAI
  style ({role, content, reasoning_content?, tool_calls?}; content as a list of text parts is
  joined) or ShareGPT ({from, value}: human/user -> user, gpt/assistant -> assistant, system,
  function_call -> an assistant tool call, observation/tool -> a tool result). A top-level system
  field (--system-key, ShareGPT's `system`) is the system message when the conversation has none; the
  tools list (--tools-key, default `tools`; a list or its JSON text) goes to Sample.tools in OpenAI's form.
- flat: the prompt from --prompt-key (default `prompt`) or --prompt-template ('{instruction}\n\n{input}'),
  the reply from --response-key (default `generated_solution`). Reasoning in a field of its own
  (--reasoning-key, or `reasoning_content`/`reasoning`/`thinking` when present) becomes the
  assistant message's `reasoning_content`, joined by sft.text.chat_format exactly as on conversation
  rows. A list-valued reply (OpenR1's `generations`, vLLM's `outputs: [{text, finish_reason}]`,
  OpenAI's `choices: [{message, finish_reason}]`) is one sample per element, with its index.

Every layout yields the canonical conversation (sft.text.chat_format validates and joins it):
system/user {role, content}; assistant {role, content, reasoning_content?, tool_calls?: [{type:
"function", function: {name, arguments}}]}; tool {role: "tool", content, name?, tool_call_id?}.
Truncation: a reply whose finish_reason/stop_reason (on the element, in a parallel `finish_reasons`
list, or on the row) says the length limit cut it is dropped as `truncated` unless --keep-truncated.
--sample-filter FIELD keeps the samples whose FIELD is true (a list parallel to the replies, a field
of each element, or of the row); the others are dropped as `failed_sample_filter`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from string import Formatter
from typing import Any

import orjson

from sft.dataprep.jsonl_io import BadLine, loads_exact

TRUNCATED = frozenset({"length", "max_tokens"})
"""finish_reason / stop_reason values that say the length limit cut the reply (vLLM, OpenAI, sft/generate.py:
"length"; Anthropic-style APIs: "max_tokens")."""
STOP_FIELDS = ("finish_reason", "stop_reason")
PARALLEL_STOP_FIELDS = ("finish_reasons",)
AUTO_REASONING = ("reasoning_content", "reasoning", "thinking")
CONVERSATION_KEYS = ("messages", "conversations")
PROMPT_LIKE = ("instruction", "input", "context", "question", "problem", "query", "prompt", "history")
"""Fields that usually hold part of a prompt: left unused by a flat row's prompt, they are counted and warned about."""
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "model": "assistant",
                  "system": "system", "function_call": "assistant", "observation": "tool", "tool": "tool"}
RESERVED_PREFIX = "__sft_"
SAMPLE_COLUMN = "sft_sample_index"
"""Output column of expanded rows: the element's index in the row's list of replies."""
RENAMED_MESSAGES = "input_messages"
"""The output column an input `messages` field moves to when it is not the conversation trained."""
MAX_SAMPLES = 4096
"""Elements of one row's list of replies (the order key keeps 12 bits for the element)."""

REASON_MISSING = "missing_field"
REASON_NULL = "null_value"
REASON_NOT_STRING = "not_a_string"
REASON_EMPTY = "empty_string"
REASON_BAD_MESSAGES = "invalid_messages"
REASON_BAD_SAMPLES = "invalid_samples"
REASON_RESERVED = "reserved_field"
REASON_BAD_TOOL_CALL = "invalid_tool_call"
TOOLS_KEY = "tools"


@dataclass
class Sample:
    row: dict
    """The output row's fields (the input's, with a list-valued reply replaced by the element)."""
    messages: list[dict] | None
    """The canonical conversation; None for a plain pair: [system?] + user=row[prompt] + assistant=row[response]."""
    prompt: str
    element: int | None = None
    tools: list[dict] | None = None
    """The tools list the conversation's prompt offers (--tools-key), in OpenAI's form; None: none."""


@dataclass
class RowSamples:
    samples: list[Sample] = field(default_factory=list)
    bad: list[BadLine] = field(default_factory=list)
    dropped: list[tuple[str, int | None]] = field(default_factory=list)
    layout: str = "flat"
    unused: tuple[str, ...] = ()
    """Prompt-like fields (PROMPT_LIKE) the flat row holds, non-empty, that no sample uses."""
    renamed: bool = False
    """The row's `messages` field moved to RENAMED_MESSAGES."""

    @property
    def expanded(self) -> int:
        """Samples beyond one that the row stands for (its list of replies less one); 0 for a rejected row."""
        if len(self.bad) == 1 and self.bad[0].element is None:
            return 0
        return max(0, len(self.samples) + len(self.bad) + len(self.dropped) - 1)


class _Bad(Exception):
    """A row (or element) that cannot be used: raised inside a normaliser, turned into a BadLine."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def template_fields(template: str) -> list[str]:
    """The {field} names of a --prompt-template; ValueError for anything but plain names."""
    names = []
    for _, name, spec, conversion in Formatter().parse(template):
        if name is None:
            continue
        if not name or spec or conversion or any(c in name for c in ".[]"):
            raise ValueError(f"{{{name}{'!' + conversion if conversion else ''}{':' + spec if spec else ''}}} is not a "
                             "field name; write fields as {name} and literal braces as {{ and }}")
        names.append(name)
    return names


def unescape(text: str) -> str:
    """\\n, \\t and \\\\ of a template written on the command line, as the characters."""
    return text.replace("\\\\", "\x00").replace("\\n", "\n").replace("\\t", "\t").replace("\x00", "\\")


def _text(row: dict, key: str, what: str, flag: str) -> str:
    """A non-empty string field, or _Bad with the reason."""
    value = row.get(key)
    if type(value) is str and value.strip():
        return value
    if key not in row:
        present = ", ".join(list(row)[:12]) or "none"
        raise _Bad(REASON_MISSING, f"field {key!r} ({what}) is missing (fields present: {present}); fix the row or pass "
                   f"{flag} to name the field that holds it")
    if value is None:
        raise _Bad(REASON_NULL, f"field {key!r} is null; it must be a non-empty string")
    if type(value) is not str:
        raise _Bad(REASON_NOT_STRING, f"field {key!r} is a {type(value).__name__}, not a string")
    raise _Bad(REASON_EMPTY, f"field {key!r} is empty")


def _truncated(value: Any) -> bool:
    return isinstance(value, str) and value.strip().lower() in TRUNCATED


def _element_reply(element: Any) -> tuple[str, str | None, Any, dict]:
    """(content, reasoning, finish reason, the fields the element carries) of one reply: a string, or an
    object with `text` (vLLM), `message: {content, reasoning_content}` (OpenAI choices) or `content`."""
    if isinstance(element, str):
        return element, None, None, {}
    if not isinstance(element, dict):
        raise _Bad(REASON_NOT_STRING, f"is a {type(element).__name__}, not a string or an object with text")
    holder = element.get("message") if isinstance(element.get("message"), dict) else element
    content = next((holder[k] for k in ("text", "content") if k in holder), None)
    if content is None and not holder.get("reasoning_content"):
        raise _Bad(REASON_NOT_STRING, f"is an object with no 'text', 'content' or 'message' to train on (keys: "
                   f"{', '.join(list(element)[:12])})")
    if content is not None and not isinstance(content, str):
        raise _Bad(REASON_NOT_STRING, f"has a text that is a {type(content).__name__}, not a string")
    reasoning = next((holder[k] for k in AUTO_REASONING if isinstance(holder.get(k), str) and holder[k].strip()), None)
    finish = next((element[k] for k in STOP_FIELDS if element.get(k) is not None), None)
    return content or "", reasoning, finish, element


class Layouts:
    """The normalisers of one run's options (a PrepareConfig)."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.prompt_key = cfg.prompt_key or "prompt"
        self.response_key = cfg.response_key or "generated_solution"
        self.template = unescape(cfg.prompt_template) if cfg.prompt_template else None
        self.template_fields = template_fields(self.template) if self.template else []
        self.flat_named = bool(cfg.prompt_key or cfg.response_key or cfg.prompt_template)
        self.filters = list(cfg.sample_filter or ())
        used = {self.response_key, cfg.id_key, cfg.system_key, cfg.reasoning_key, cfg.answer_key, cfg.num_tokens_key,
                *self.filters, *(self.template_fields or [self.prompt_key])}
        self.unused_candidates = tuple(k for k in PROMPT_LIKE if k not in used)
        special = {*CONVERSATION_KEYS, *STOP_FIELDS, *PARALLEL_STOP_FIELDS, *AUTO_REASONING, cfg.system_key,
                   cfg.reasoning_key, SAMPLE_COLUMN, RENAMED_MESSAGES, *self.filters, *self.unused_candidates}
        self._not_plain = frozenset(k for k in special if k)

    def plain(self, keys) -> bool:
        """Rows with these keys (and string prompt and response) are plain pairs: no layout work, no check
        beyond the scan's vectorised one."""
        if self.template or self.cfg.messages_key or self.filters:
            return False
        return not any(k in self._not_plain or k.startswith(RESERVED_PREFIX) for k in keys)

    def conversation_key(self, row: dict) -> str | None:
        """The field holding the row's conversation, or None for a flat row."""
        if self.cfg.messages_key is not None:
            if self.cfg.messages_key in row or not self.flat_named:
                return self.cfg.messages_key
            return None
        if self.flat_named:
            return None
        return next((key for key in CONVERSATION_KEYS if key in row), None)

    def samples(self, row: dict, path: str, line: int, unit: str) -> RowSamples:
        reserved = [k for k in row if k.startswith(RESERVED_PREFIX)]
        key = self.conversation_key(row)
        out = RowSamples(layout="flat" if key is None else "conversation")
        try:
            if reserved:
                raise _Bad(REASON_RESERVED, f"field {reserved[0]!r} has a name prepare_data uses for its own columns "
                           f"(names starting with {RESERVED_PREFIX!r}); rename or drop that field")
            if key is not None:
                self._conversation(row, key, out)
            else:
                self._flat(row, out)
        except _Bad as bad:
            out.samples, out.dropped = [], []
            out.bad = [BadLine(path, line, bad.reason, bad.detail, row=row, unit=unit)]
            return out
        for item in out.bad:
            item.path, item.line, item.unit, item.row = path, line, unit, row
        return out

    # -- conversations -------------------------------------------------------------------
    def _conversation(self, row: dict, key: str, out: RowSamples) -> None:
        if key not in row:
            raise _Bad(REASON_MISSING, f"field {key!r} (--messages-key) is missing (fields present: "
                       f"{', '.join(list(row)[:12]) or 'none'}); every row must hold its conversation there")
        messages = canonical_conversation(row[key])
        if isinstance(messages, str):
            out.layout = "sharegpt" if messages.startswith("ShareGPT ") else out.layout
            reason = REASON_BAD_TOOL_CALL if "(function_call)" in messages else REASON_BAD_MESSAGES
            raise _Bad(reason, f"field {key!r} {messages.removeprefix('ShareGPT ')}")
        if any("from" in m for m in row[key] if isinstance(m, dict)):
            out.layout = "sharegpt"
        system = row.get(self.cfg.system_key) if self.cfg.system_key else None
        if isinstance(system, str) and system.strip() and not (messages and messages[0]["role"] == "system"):
            messages.insert(0, {"role": "system", "content": system})
        tools_key = TOOLS_KEY if self.cfg.tools_key is None else self.cfg.tools_key
        tools = self._tools(row, tools_key) if tools_key else None
        kept = {k: v for k, v in row.items() if k != key and not (tools_key and k == tools_key)}
        if key != "messages" and "messages" in row:
            kept = self._rename_messages(kept, out)
        self._truncation(row, None, None, out)
        if out.dropped:
            return
        prompt = next((m["content"] for m in messages if m["role"] == "user" and isinstance(m.get("content"), str)), "")
        out.samples.append(Sample(kept, messages, prompt, tools=tools))

    def _tools(self, row: dict, key: str) -> list[dict] | None:
        """The row's tools list in OpenAI's form (JSON text parsed), None where it has none (missing, null,
        empty); _Bad for anything else. With --tools-key given, the field must be there."""
        from sft.text.tool_format import canonical_tools, tools_problem

        if key not in row and self.cfg.tools_key:
            raise _Bad(REASON_MISSING, f"field {key!r} (--tools-key) is missing (fields present: "
                       f"{', '.join(list(row)[:12]) or 'none'})")
        value = row.get(key)
        if isinstance(value, str):
            try:
                value = loads_exact(value) if value.strip() else None
            except (orjson.JSONDecodeError, ValueError, RecursionError):
                raise _Bad(REASON_BAD_TOOL_CALL, f"field {key!r} (the tools list, --tools-key) is text that is not "
                           "JSON") from None
        if value is None or value == []:
            return None
        problem = tools_problem(value)
        if problem is not None:
            raise _Bad(REASON_BAD_TOOL_CALL, f"field {key!r} (the tools list, --tools-key) {problem}")
        return canonical_tools(value)

    @staticmethod
    def _rename_messages(kept: dict, out: RowSamples) -> dict:
        if RENAMED_MESSAGES in kept:
            raise _Bad(REASON_RESERVED, f"the row has 'messages', which is not the conversation trained and moves to "
                       f"{RENAMED_MESSAGES!r}, but it has an {RENAMED_MESSAGES!r} field too; rename or drop one")
        out.renamed = True
        return {(RENAMED_MESSAGES if k == "messages" else k): v for k, v in kept.items()}

    # -- flat rows -----------------------------------------------------------------------
    def _prompt(self, row: dict) -> str:
        if self.template is None:
            return _text(row, self.prompt_key, "the prompt", "--prompt-key")
        values = {}
        for name in self.template_fields:
            if name not in row:
                raise _Bad(REASON_MISSING, f"field {name!r} of --prompt-template is missing (fields present: "
                           f"{', '.join(list(row)[:12]) or 'none'})")
            value = row[name]
            if value is not None and not isinstance(value, str):
                raise _Bad(REASON_NOT_STRING, f"field {name!r} of --prompt-template is a {type(value).__name__}, "
                           "not a string")
            values[name] = value or ""
        prompt = self.template.format(**values).strip()
        if not prompt:
            raise _Bad(REASON_EMPTY, f"the prompt built by --prompt-template from {', '.join(self.template_fields)} "
                       "is empty")
        return prompt

    def _flat(self, row: dict, out: RowSamples) -> None:
        prompt = self._prompt(row)
        if self.response_key not in row or not isinstance(row[self.response_key], (list, dict)):
            _text(row, self.response_key, "the reply", "--response-key")
        value = row[self.response_key]
        elements = value if isinstance(value, list) else [value]
        if isinstance(value, list) and not value:
            raise _Bad(REASON_BAD_SAMPLES, f"field {self.response_key!r} is an empty list: no reply to train on")
        if len(elements) > MAX_SAMPLES:
            raise _Bad(REASON_BAD_SAMPLES, f"field {self.response_key!r} holds {len(elements)} replies, more than "
                       f"{MAX_SAMPLES} per row; split the row")
        listed = isinstance(value, list)
        parallel = self._parallel_lists(row, len(elements)) if listed else {}
        system = row.get(self.cfg.system_key) if self.cfg.system_key else None
        if system is not None and not (isinstance(system, str)):
            raise _Bad(REASON_NOT_STRING, f"field {self.cfg.system_key!r} (the system message, --system-key) is a "
                       f"{type(system).__name__}, not a string")
        head = ([{"role": "system", "content": system}] if system and system.strip() else [])
        base = self._rename_messages(dict(row), out) if "messages" in row else row
        for index, element in enumerate(elements):
            self._flat_sample(row, base, prompt, head, element, index if listed else None, parallel, out)
        out.unused = tuple(k for k in self.unused_candidates if _filled(row.get(k)))

    def _parallel_lists(self, row: dict, count: int) -> dict[str, list]:
        """Fields whose list runs beside the replies: --sample-filter, --reasoning-key, finish_reasons."""
        found = {}
        for name in (*self.filters, self.cfg.reasoning_key, *PARALLEL_STOP_FIELDS):
            value = row.get(name) if name else None
            if isinstance(value, list):
                if len(value) != count:
                    raise _Bad(REASON_BAD_SAMPLES, f"field {name!r} has {len(value)} entries but "
                               f"{self.response_key!r} has {count} replies; they must run side by side")
                found[name] = value
        return found

    def _flat_sample(self, row: dict, base: dict, prompt: str, head: list, element: Any, index: int | None,
                     parallel: dict, out: RowSamples) -> None:
        try:
            content, reasoning, finish, carried = _element_reply(element)
            reasoning = self._reasoning(row, index, parallel, reasoning)
            if not (content.strip() or (reasoning or "").strip()):
                raise _Bad(REASON_EMPTY, "the reply is empty")
        except _Bad as bad:
            if index is None:
                raise _Bad(bad.reason, f"field {self.response_key!r} {bad.detail}"
                           if not bad.detail.startswith("field") else bad.detail) from None
            out.bad.append(BadLine("", 0, bad.reason, f"reply {index} of field {self.response_key!r} {bad.detail}",
                                   element=index))
            return
        self._truncation(row, index, finish, out, parallel)
        if not out.dropped or out.dropped[-1][1] != index:
            self._sample_filter(row, index, carried, parallel, out)
        if out.dropped and out.dropped[-1][1] == index:
            return
        assistant = {"role": "assistant", "content": content}
        if reasoning is not None:
            assistant["reasoning_content"] = reasoning
        plain = index is None and reasoning is None and not head and isinstance(element, str) and base is row
        messages = None if plain else head + [{"role": "user", "content": prompt}, assistant]
        if plain and self.template is not None:
            messages = [{"role": "user", "content": prompt}, assistant]
        sample_row = base
        if index is not None:
            sample_row = dict(base)
            sample_row[self.response_key] = element
            for name, values in parallel.items():
                sample_row[name] = values[index]
            sample_row[SAMPLE_COLUMN] = index
        out.samples.append(Sample(sample_row, messages, prompt, index))

    def _reasoning(self, row: dict, index: int | None, parallel: dict, found: str | None) -> str | None:
        name = self.cfg.reasoning_key
        if name:
            if name in parallel:
                value = parallel[name][index]
            elif name in row:
                value = row[name]
            else:
                raise _Bad(REASON_MISSING, f"field {name!r} (--reasoning-key) is missing (fields present: "
                           f"{', '.join(list(row)[:12])})")
            if value is not None and not isinstance(value, str):
                raise _Bad(REASON_NOT_STRING, f"field {name!r} (--reasoning-key) is a {type(value).__name__}, "
                           "not a string")
            return value if value and value.strip() else found
        if found is not None or index is not None:
            return found
        return next((row[k] for k in AUTO_REASONING if isinstance(row.get(k), str) and row[k].strip()), None)

    def _truncation(self, row: dict, index: int | None, finish: Any, out: RowSamples,
                    parallel: dict | None = None) -> None:
        if self.cfg.keep_truncated:
            return
        reasons = [finish]
        reasons += [parallel[k][index] for k in PARALLEL_STOP_FIELDS if parallel and k in parallel]
        if index is None:
            reasons += [row.get(k) for k in STOP_FIELDS]
        if any(_truncated(r) for r in reasons):
            out.dropped.append(("truncated", index))

    def _sample_filter(self, row: dict, index: int | None, carried: dict, parallel: dict, out: RowSamples) -> None:
        for name in self.filters:
            if name in parallel:
                value = parallel[name][index]
            elif name in carried:
                value = carried[name]
            elif name in row:
                value = row[name]
            else:
                raise _Bad(REASON_MISSING, f"field {name!r} (--sample-filter) is missing (fields present: "
                           f"{', '.join(list(row)[:12])})")
            if value is not True and value is not False and value is not None:
                raise _Bad(REASON_BAD_SAMPLES, f"field {name!r} (--sample-filter) is {value!r}; it must be true, "
                           "false or null (or a list of them beside the replies)")
            if value is not True:
                out.dropped.append(("failed_sample_filter", index))
                return


def _filled(value: Any) -> bool:
    if isinstance(value, str):
        return bool(value.strip())
    return isinstance(value, (list, dict)) and bool(value)


# ---------------------------------------------------------------------------------------
# Conversations in canonical form


def _text_parts(content: Any) -> Any:
    """OpenAI's content as a list of parts: the text of text-only parts joined; anything else unchanged."""
    if isinstance(content, list) and content and all(
            isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    return content


def _tool_call(call: Any) -> dict | None:
    """One tool call as {type: "function", function: {name, arguments}}, from OpenAI's form or ShareGPT's
    {name, arguments}; None when it is neither."""
    if not isinstance(call, dict):
        return None
    function = call.get("function") if isinstance(call.get("function"), dict) else call
    name = function.get("name")
    if not isinstance(name, str) or not name:
        return None
    arguments = function.get("arguments", function.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            parsed = loads_exact(arguments)
            arguments = parsed if isinstance(parsed, dict) else arguments
        except (orjson.JSONDecodeError, ValueError, RecursionError):
            pass
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


def _sharegpt_message(message: dict, index: int) -> dict | str:
    role = SHAREGPT_ROLES.get(str(message.get("from")).lower())
    if role is None:
        return (f"ShareGPT has message {index} from {message.get('from')!r}; the senders are "
                f"{', '.join(sorted(SHAREGPT_ROLES))}")
    extra = {k: v for k, v in message.items() if k not in ("from", "value")}
    value = _text_parts(message.get("value"))
    if message.get("from") == "function_call":
        try:
            calls = loads_exact(value) if isinstance(value, str) else value
        except (orjson.JSONDecodeError, ValueError, RecursionError):
            return f"ShareGPT has message {index} (function_call) whose value is not JSON {{name, arguments}}"
        calls = [_tool_call(c) for c in (calls if isinstance(calls, list) else [calls])]
        if not calls or None in calls:
            return f"ShareGPT has message {index} (function_call) whose value is not JSON {{name, arguments}}"
        return {"role": "assistant", "content": "", "tool_calls": calls, **extra}
    return {"role": role, "content": value, **extra}


def canonical_conversation(messages: Any) -> list[dict] | str:
    """`messages` (OpenAI style or ShareGPT) in canonical form; a one-line problem (str) when it is not a
    list of messages. What the canonical form holds is checked later by sft.text.chat_format."""
    if not isinstance(messages, list) or not messages:
        return "is not a non-empty list of messages"
    canon: list[dict] = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"has message {index} that is a {type(message).__name__}, not an object with role and content"
        if "from" in message and "role" not in message:
            converted = _sharegpt_message(message, index)
            if isinstance(converted, str):
                return converted
        else:
            converted = _openai_message(message)
        if converted["role"] == "tool" and canon and canon[-1].get("tool_calls") and "name" not in converted:
            calls = canon[-1]["tool_calls"]
            if len(calls) == 1:
                converted["name"] = calls[0]["function"]["name"]
        canon.append(converted)
    return canon


def _openai_message(message: dict) -> dict:
    converted = dict(message)
    converted["content"] = _text_parts(message.get("content"))
    for key in ("reasoning", "thinking"):
        if key in converted and "reasoning_content" not in converted:
            converted["reasoning_content"] = converted.pop(key)
    if message.get("tool_calls") is not None:
        calls = [_tool_call(c) for c in message["tool_calls"]] if isinstance(message["tool_calls"], list) else [None]
        if None not in calls:
            converted["tool_calls"] = calls
        if converted["content"] is None:
            converted["content"] = ""
    return converted
