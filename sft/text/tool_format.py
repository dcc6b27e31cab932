"""How a model's chat template writes tool calls, tool results and the tools list, found by rendering probes.

Usage (sft/text/chat_format.py probes a template with it the first time a conversation has tools):
    problem = tool_message_problem(message, index)      # None, or why a message's tool fields are unusable
    fmt = probe_tools(render, user)                      # ToolFormat: what the template renders, and how
    fmt.refusal(name, calls=True, results=True, tools_list=False)   # None, or the one-line refusal
    fmt.template_message(message)                        # an assistant message in the form the template reads

The canonical conversation (sft.dataprep.layouts writes it, sft.text.chat_format validates it):
assistant {role, content, tool_calls: [{type: "function", id?, function: {name, arguments}}]} with
`arguments` a JSON object (a dict, or its JSON text); tool {role: "tool", content, name?, tool_call_id?};
the tools list as OpenAI's [{type: "function", function: {name, description?, parameters?}}], passed to
the template as `tools` (apply_chat_template(tools=...)).

What is found, each by rendering markers through the template (no table of model families):
- calls: whether a call's name, argument key and value appear in the render of an assistant message that
  makes it, and in which form the template takes `arguments`: a dict (Qwen, GLM, Seed-OSS, gpt-oss write
  it with `tojson` or key by key) or JSON text (DeepSeek-V3.1 concatenates it). A form whose render shows
  the arguments double-encoded (`"{\\"key\\": ...}"`) or as Python's repr (`{'key': ...}`) is not the
  template's; and whether a call-only message's content is "" or None (DeepSeek-R1 distills write calls
  only when the content is None).
- results: whether a `tool` message's content appears in the render (Phi-3.5 drops the message, SmolLM3
  drops the calls; Gemma raises on the role).
- tools list: whether a tool's name and description passed as `tools` appear in the generation prompt.
A template that renders a conversation's calls, results or tools list without them would train on a
conversation other than the data: such rows are refused, with the fix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

CALL_NAME = "sft_probe_call"
ARG_KEY = "sft_probe_argument"
ARG_VALUE = "SFT probe value 7"
CALL_ID = "sftcall01"
"""Nine alphanumeric characters: Mistral's templates refuse any other tool call id."""
RESULT_MARK = "\u27e6SFT-TOOL-RESULT\u27e7"
TOOL_NAME = "sft_probe_tool"
TOOL_DESCRIPTION = "SFT probe tool description"

ASSISTANT_TOOL_KEYS = ("tool_calls",)
TOOL_MESSAGE_KEYS = ("name", "tool_call_id")
FIX = ("use a model whose chat template renders tool calls and tool results, or give the tokenizer a template "
       "that does (the chat_template.jinja or tokenizer_config.json chat_template of its directory)")

TOOLS_FIX = ("describe the tools in the system message the way the model expects and leave the tools list out "
             "(prepare_data --tools-key ''), or " + FIX)


def from_stored(messages: list[dict], tools: str | None) -> tuple[list[dict], list[dict] | None]:
    """(messages, tools list) of a row prepare_data wrote: tool calls and the tools list are stored as JSON text
    (sft.dataprep.write.TOOL_MESSAGES_TYPE)."""
    messages = [dict(m, tool_calls=json.loads(m["tool_calls"])) if isinstance(m.get("tool_calls"), str) else m
                for m in messages]
    return messages, (json.loads(tools) if tools else None)


def _arguments(value: Any) -> dict | None:
    """A call's arguments as a dict: a dict as it is, JSON text of an object parsed; None for anything else."""
    if isinstance(value, dict):
        return value
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except ValueError:
            return None
        return parsed if isinstance(parsed, dict) else None
    return None


def tool_call_problem(call: Any, index: int, message: int) -> str | None:
    """Why one entry of an assistant's tool_calls cannot be trained, or None."""
    where = f"has message {message} (assistant) whose tool call {index}"
    if not isinstance(call, dict):
        return f"{where} is a {type(call).__name__}, not an object with type and function"
    function = call.get("function")
    if not isinstance(function, dict):
        return f"{where} has no 'function' object ({{name, arguments}})"
    name = function.get("name")
    if not isinstance(name, str) or not name.strip():
        return f"{where} has no function name"
    arguments = function.get("arguments", {})
    if _arguments(arguments) is None:
        shown = repr(arguments) if len(repr(arguments)) <= 60 else repr(arguments)[:57] + "..."
        return f"{where} ({name}) has arguments that are not a JSON object: {shown}"
    extra = sorted(k for k, v in call.items() if k not in ("type", "id", "function") and v is not None)
    if extra:
        return f"{where} ({name}) has {', '.join(map(repr, extra))}, which training does not use"
    return None


def tool_message_problem(message: dict, index: int) -> str | None:
    """Why a message's tool fields cannot be trained, or None: tool_calls only on assistant messages, a list of
    calls each with a function name and JSON-object arguments; name and tool_call_id only on tool messages,
    as strings."""
    role = message.get("role")
    calls = message.get("tool_calls")
    if calls is not None:
        if role != "assistant":
            return f"has message {index} ({role}) with tool_calls; only assistant messages make tool calls"
        if not isinstance(calls, list) or not calls:
            return f"has message {index} (assistant) whose tool_calls is not a non-empty list"
        for n, call in enumerate(calls):
            problem = tool_call_problem(call, n, index)
            if problem is not None:
                return problem
    for key in TOOL_MESSAGE_KEYS:
        value = message.get(key)
        if value is not None and (role != "tool" or not isinstance(value, str)):
            return f"has message {index} ({role}) with a {key} that is not a tool message's string"
    return None


def tools_problem(tools: Any) -> str | None:
    """Why a row's tools list cannot be passed to the template, or None: a list of function schemas, each
    OpenAI's {type: function, function: {name, ...}} or a bare {name, description?, parameters?}."""
    if not isinstance(tools, list):
        return f"is a {type(tools).__name__}, not a list of function schemas"
    for n, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) and isinstance(tool.get("function"), dict) else tool
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            return f"has entry {n} with no function name (each is {{name, description, parameters}})"
    return None


def canonical_tools(tools: list) -> list[dict]:
    """The tools list in OpenAI's form (a bare {name, ...} is wrapped as {type: function, function: {...}})."""
    return [tool if isinstance(tool.get("function"), dict) else {"type": "function", "function": tool}
            for tool in tools]


def canonical_call(call: dict) -> dict:
    """A tool call as {type: "function", id?, function: {name, arguments}} (arguments as given)."""
    function = call["function"]
    out: dict = {"type": "function", "function": {"name": function["name"], "arguments": function.get("arguments", {})}}
    if call.get("id") is not None:
        out["id"] = call["id"]
    return out


def call_texts(calls: list[dict]) -> list[str]:
    """What a rendered call must show: each function's name, and each argument's key and scalar value."""
    texts: list[str] = []
    for call in calls:
        texts.append(call["function"]["name"])
        texts.extend(_leaves(_arguments(call["function"]["arguments"]) or {}))
    return [t for t in texts if t.strip()]


def _leaves(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [text for key, item in value.items() for text in [str(key), *_leaves(item)]]
    if isinstance(value, list):
        return [text for item in value for text in _leaves(item)]
    if isinstance(value, str):
        return [value]
    return []  # numbers and booleans: JSON and Python write them differently; the keys stand for them


@dataclass(frozen=True)
class ToolFormat:
    """What the template renders of tools (see the module docstring); each `*_problem` is None when it renders
    that part, else what the probe saw."""

    arguments: str
    """"object" (the template reads arguments as a dict) or "json" (as JSON text)."""
    empty_content: Any
    """The content of a call-only assistant message: "" or None."""
    calls_problem: str | None
    results_problem: str | None
    tools_problem: str | None

    def template_message(self, message: dict) -> dict:
        """An assistant message with tool calls in the form the template reads."""
        out = dict(message)
        calls = []
        for call in message["tool_calls"]:
            arguments = call["function"]["arguments"]
            if self.arguments == "object":
                arguments = _arguments(arguments)
            elif not isinstance(arguments, str):
                arguments = json.dumps(arguments, ensure_ascii=False)
            calls.append({**call, "function": {**call["function"], "arguments": arguments}})
        out["tool_calls"] = calls
        if out.get("content") == "" and self.empty_content is None:
            out["content"] = None
        return out

    def refusal(self, name: str, calls: bool, results: bool, tools_list: bool) -> str | None:
        """The one-line refusal of a conversation with these parts, or None when the template renders them all."""
        for needed, problem, what, fix in ((calls, self.calls_problem, "assistant tool calls", FIX),
                                           (results, self.results_problem, "tool results (role 'tool')", FIX),
                                           (tools_list, self.tools_problem, "the tools list (tools=[...])", TOOLS_FIX)):
            if needed and problem is not None:
                return (f"the chat template of {name} does not write {what}: {problem}, so the conversation it would "
                        f"train on is not the data's; {fix}")
        return None

    def describe(self) -> dict:
        return {"arguments": self.arguments, "empty_content": self.empty_content, "calls": self.calls_problem or "rendered",
                "results": self.results_problem or "rendered", "tools_list": self.tools_problem or "rendered"}


def _why(exc: Exception) -> str:
    """The template's own error, without the renderer's prefix (sft.text.chat_format's "refused the conversation")."""
    text = str(exc).strip()
    if "refused the conversation" in text:
        text = text.split("]:", 1)[-1].strip()
    text = text.splitlines()[0] if text else ""
    return text[:160] or type(exc).__name__


def _probe_call(arguments: Any, content: Any) -> dict:
    return {"role": "assistant", "content": content, "tool_calls": [
        {"type": "function", "id": CALL_ID, "function": {"name": CALL_NAME, "arguments": arguments}}]}


def _shows_call(text: str) -> bool:
    """The probe call's name, key and value, with the arguments neither double-encoded nor Python's repr."""
    if not all(t in text for t in (CALL_NAME, ARG_KEY, ARG_VALUE)):
        return False
    return f'\\"{ARG_KEY}\\"' not in text and f"'{ARG_KEY}'" not in text


def probe_tools(render: Callable[..., str], user: list[dict]) -> ToolFormat:
    """The template's ToolFormat. `render(messages, generation_prompt, extra)` raises on a refusal; `user`: a
    one-message conversation."""
    forms = (("object", {ARG_KEY: ARG_VALUE}), ("json", json.dumps({ARG_KEY: ARG_VALUE})))
    found, seen = None, "it raises on every form of a call"
    for content in ("", None):
        for name, arguments in forms:
            try:
                text = render(user + [_probe_call(arguments, content)], False, None)
            except Exception as exc:  # noqa: BLE001 - the template refuses this form
                seen = f"it raises on a call ({_why(exc)})"
                continue
            if _shows_call(text):
                found = (name, content)
                break
            seen = f"a call to {CALL_NAME} renders as {text[-160:]!r}"
        if found:
            break
    arguments, empty = found or ("object", "")
    calls_problem = None if found else seen
    results_problem = _probe_results(render, user, _probe_call(forms[0][1] if arguments == "object" else forms[1][1],
                                                               empty))
    tools_problem = _probe_tools_list(render, user)
    return ToolFormat(arguments, empty, calls_problem, results_problem, tools_problem)


def _probe_results(render, user: list[dict], call: dict) -> str | None:
    result = {"role": "tool", "content": RESULT_MARK, "name": CALL_NAME, "tool_call_id": CALL_ID}
    try:
        text = render(user + [call, result], True, None)
    except Exception as exc:  # noqa: BLE001 - the template refuses the role
        return f"it raises on a tool message ({_why(exc)})"
    return None if RESULT_MARK in text else "a tool message's content is missing from its render"


def _probe_tools_list(render, user: list[dict]) -> str | None:
    tools = [{"type": "function", "function": {"name": TOOL_NAME, "description": TOOL_DESCRIPTION, "parameters": {
        "type": "object", "properties": {ARG_KEY: {"type": "string"}}, "required": [ARG_KEY]}}}]
    try:
        text = render(user, True, {"tools": tools})
    except Exception as exc:  # noqa: BLE001 - the template refuses a tools list
        return f"it raises on a tools list ({_why(exc)})"
    return None if TOOL_NAME in text and TOOL_DESCRIPTION in text else "a tool's name and description are missing " \
        "from the prompt rendered with tools=[...]"
