"""Tool-integrated reasoning: conversations with tool calls and tool results train through the chat template.

Every template is a verbatim copy (tests/assets/chat_templates/, sources in README.md there). The
conversation is the one code-executing math solutions have: user -> assistant (reasoning and a tool
call) -> tool result -> assistant (the final answer). Both assistant turns are trained, the tool call
and its end-of-turn token included; the user's text and the tool's result are context. A template that
would render the conversation without its calls, results or tools list is refused with the fix.
"""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from chat_families import save_family_tokenizer, trained_spans
from transformers import AutoTokenizer

from sft.prepare_data import PrepareConfig, prepare_data
from sft.text.chat_format import ChatFormat, TemplateError

USER = "What is 17 * 23? Check it with Python."
REASONING = "Multiplying by hand is error-prone, so I run it."
CODE = "print(17 * 23)"
RESULT = "Out[1]: 391"
ANSWER = "17 * 23 = \\boxed{391}."
TOOLS = [{"type": "function", "function": {"name": "python", "description": "Run Python code and return its output",
                                           "parameters": {"type": "object", "properties": {"code": {"type": "string"}},
                                                          "required": ["code"]}}}]


def conversation(reasoning: bool = True, arguments=None, content: str = "") -> list[dict]:
    call = {"role": "assistant", "content": content, "tool_calls": [
        {"type": "function", "id": "call00001", "function": {"name": "python", "arguments": arguments or {"code": CODE}}}]}
    if reasoning:
        call["reasoning_content"] = REASONING
    return [{"role": "user", "content": USER}, call,
            {"role": "tool", "content": RESULT, "tool_call_id": "call00001", "name": "python"},
            {"role": "assistant", "content": ANSWER}]


def decode(tokenizer, ids) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


@pytest.fixture(scope="module")
def family(tmp_path_factory, tiny_model_dir):
    """family -> (tokenizer as training loads it, its ChatFormat), built once per family."""
    root = tmp_path_factory.mktemp("tool-families")
    loaded: dict = {}

    def load(name: str):
        if name not in loaded:
            tokenizer = AutoTokenizer.from_pretrained(save_family_tokenizer(name, root / name, tiny_model_dir))
            loaded[name] = tokenizer, ChatFormat(tokenizer)
        return loaded[name]

    return load


def trained_turns(tokenizer, chat, messages, tools) -> tuple[list[str], str]:
    """(the decoded trained spans, the decoded untrained tokens) of a conversation."""
    ids, mask = chat.encode(messages, tools)
    spans = [decode(tokenizer, ids[a:b]) for a, b in trained_spans(mask)]
    return spans, decode(tokenizer, [t for t, m in zip(ids, mask) if not m])


def test_a_real_qwen_vocabulary_trains_both_assistant_turns_with_the_call_and_never_the_result(qwen_tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(qwen_tokenizer_dir)
    chat = ChatFormat(tokenizer)
    spans, context = trained_turns(tokenizer, chat, conversation(), TOOLS)
    assert spans == [
        f"<think>\n{REASONING}\n</think>\n<tool_call>\n"
        f'{{"name": "python", "arguments": {{"code": "{CODE}"}}}}\n</tool_call><|im_end|>',
        f"{ANSWER}<|im_end|>"]
    assert USER in context and f"<tool_response>\n{RESULT}\n</tool_response>" in context
    assert '"description": "Run Python code and return its output"' in context  # the tools list is in the prompt
    ids, _ = chat.encode(conversation(reasoning=False), TOOLS)
    whole = tokenizer.apply_chat_template(conversation(reasoning=False), tools=TOOLS, tokenize=False)
    assert decode(tokenizer, ids) == whole  # the sequence is the template's own render


# The end of a tool-calling turn in each model's own format, and what precedes the final answer.
CALL_TURN_ENDS = {
    "qwen3": "</tool_call><|im_end|>",
    "gpt-oss-120b": "<|call|>",
    "glm-4.6": "</tool_call><|observation|>",  # GLM closes with no token: the next turn's opener is the stop
    "seed-oss": "</seed:tool_call><seed:eos>",
    "ministral-3-reasoning": "</s>",
    "nemotron-3-nano": "</tool_call>\n<|im_end|>",
    "qwq-32b": "</tool_call><|im_end|>",
    "minimax-m2": "</minimax:tool_call>[e~[",
    "solar-open-100b": "<|tool_call:end|><|calls|>",
    "nemotron-nano-v2": "</TOOLCALL><SPECIAL_12>",
}
NO_REASONING = {  # templates that drop content beside a call, or whose model calls tools without reasoning
    "llama-3.1-instruct": "<|eot_id|>",
    "mistral-nemo-instruct": "</s>",
    "hermes-3-tool-use": "</tool_call><|im_end|>",
    "llama-3.2-instruct": "<|eot_id|>",
}


@pytest.mark.parametrize("name", sorted(CALL_TURN_ENDS) + sorted(NO_REASONING))
def test_each_template_trains_the_call_turn_and_the_answer_in_its_own_format(name, family):
    tokenizer, chat = family(name)
    reasoning = name in CALL_TURN_ENDS
    spans, context = trained_turns(tokenizer, chat, conversation(reasoning), TOOLS)
    call, answer = spans
    assert call.endswith(CALL_TURN_ENDS.get(name) or NO_REASONING[name])
    assert "python" in call and ("print(17 * 23)" in call)
    assert (REASONING in call) == reasoning
    assert ANSWER in answer and RESULT not in call + answer and USER not in call + answer
    assert USER in context and RESULT in context and "Run Python code" in context


@pytest.mark.parametrize("name, call_end", [
    ("deepseek-v3.1", 'python<｜tool▁sep｜>{"code": "print(17 * 23)"}<｜tool▁call▁end｜><｜tool▁calls▁end｜><｜end▁of▁sentence｜>'),
    ("firefunction-v2", ' functools[{"name": "python", "arguments": {"code": "print(17 * 23)"}}]<|eot_id|>'),
])
def test_templates_that_read_arguments_as_json_text_train_their_call_tokens(name, call_end, family):
    tokenizer, chat = family(name)
    assert chat.tools.arguments == "json"
    spans, context = trained_turns(tokenizer, chat, conversation(reasoning=False), None)
    assert spans[0].endswith(call_end)  # and nothing of the next turn's header
    assert ANSWER in spans[1] and RESULT in context and RESULT not in "".join(spans)


@pytest.mark.parametrize("name, refused", [
    ("smollm3", "does not write assistant tool calls"),       # renders the call-only turn empty
    ("phi-3.5-mini", "does not write assistant tool calls"),  # fails on a call; drops tool messages
    ("gemma-2-it", "does not write assistant tool calls"),
    ("gemma-3-it", "does not write assistant tool calls"),    # raises on them
    ("kimi-k2-thinking", "does not write assistant tool calls"),  # its call loop fails in the sandbox
    ("deepseek-v3.1", "does not write the tools list"),       # tools belong in its system prompt
])
def test_a_template_that_cannot_render_tools_is_refused_with_the_fix(name, refused, family):
    _, chat = family(name)
    with pytest.raises(TemplateError, match=refused) as error:
        chat.encode(conversation(reasoning=False), TOOLS)
    assert "use a model whose chat template renders tool calls" in str(error.value)


def test_content_a_template_drops_beside_a_call_is_refused_not_lost(family):
    _, chat = family("hermes-3-tool-use")  # writes only the calls of a turn that makes them
    with pytest.raises(TemplateError, match=r"drops part of the assistant turn .*'I will run it\.'"):
        chat.encode(conversation(reasoning=False, content="I will run it."), TOOLS)


def test_arguments_given_as_json_text_train_as_the_same_tokens(family):
    tokenizer, chat = family("qwen3")
    as_text = chat.encode(conversation(arguments=json.dumps({"code": CODE})), TOOLS)
    assert as_text == chat.encode(conversation(), TOOLS)


# ---------------------------------------------------------------------------------------------
# prepare_data: tool rows written with their calls and tools list, malformed ones rejected with a reason


def _prepare(tmp_path, rows, tokenizer_dir=None, **options):
    source = tmp_path / "rows.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    options = {"progress": False, "val_split": 0.0, "workers": 1, "on_error": "skip", **options}
    if tokenizer_dir is not None:
        options["tokenizer"] = str(tokenizer_dir)
    return prepare_data([str(source)], tmp_path / "out", PrepareConfig(**options))


def _openai_row(messages, tools=TOOLS) -> dict:
    return {"messages": messages, "tools": tools}


def test_malformed_tool_rows_are_rejects_with_a_reason_never_a_traceback(tmp_path, tiny_model_dir, family):
    bad_arguments = conversation(arguments="print(17 * 23)")  # not JSON
    unknown_role = conversation()
    unknown_role[2] = {"role": "function", "content": RESULT}
    orphan_result = [conversation()[0], {"role": "tool", "content": RESULT}, conversation()[3]]
    rows = [_openai_row(conversation()), _openai_row(bad_arguments), _openai_row(unknown_role),
            _openai_row(orphan_result), {"messages": conversation(), "tools": "{not json"}]
    manifest = _prepare(tmp_path, rows, family("qwen3")[1].tokenizer.name_or_path)
    assert manifest["counts"]["rejected"] == {"invalid_tool_call": 3, "invalid_messages": 1}
    details = [json.loads(line)["detail"] for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert any("arguments that are not a JSON object: 'print(17 * 23)'" in d for d in details)
    assert any("role 'function'" in d for d in details) and any("follows no assistant tool call" in d for d in details)
    assert len(pq.read_table(tmp_path / "out" / "train.parquet")) == 1


def test_prepared_tool_rows_train_in_the_dataset_as_they_were_counted(tmp_path, family):
    from sft.verl_plugins.sft_dataset import ChatTemplateSFTDataset

    tokenizer, chat = family("qwen3")
    plain = {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}
    manifest = _prepare(tmp_path, [_openai_row(conversation()), plain], tokenizer.name_or_path)
    assert manifest["counts"]["rejected"] == {}
    path = tmp_path / "out" / "train.parquet"
    table = pq.read_table(path)
    assert "tools" in table.column_names
    dataset = ChatTemplateSFTDataset([str(path)], tokenizer, {"max_length": 4096, "pad_mode": "no_padding"})
    rows = table.to_pylist()
    tool_row = next(i for i, r in enumerate(rows) if r["tools"])
    item = dataset[tool_row]
    assert item["loss_mask"].tolist() == chat.encode(conversation(), TOOLS)[1]
    assert len(item["input_ids"]) == rows[tool_row]["sft_num_tokens"]


def test_a_run_without_tools_keeps_the_plain_messages_schema(tmp_path):
    _prepare(tmp_path, [{"prompt": "2+2?", "generated_solution": "4"}])
    schema = pq.read_schema(tmp_path / "out" / "train.parquet")
    assert "tools" not in schema.names and schema.field("messages").type.value_type.num_fields == 2


def test_a_flat_rows_own_tools_field_is_written_as_given_and_never_reaches_the_template(tmp_path, family):
    from sft.verl_plugins.sft_dataset import ChatTemplateSFTDataset

    tokenizer, chat = family("qwen3")  # a template that renders a tools list into the prompt
    rows = [{"id": 1, "prompt": "2+2?", "generated_solution": "4", "tools": "calculator"},
            {"id": 2, "prompt": "3+3?", "generated_solution": "6", "tools": json.dumps(TOOLS)}]
    manifest = _prepare(tmp_path, rows, tokenizer.name_or_path)
    assert manifest["counts"]["train"] == 2 and manifest["counts"]["rejected"] == {}
    path = tmp_path / "out" / "train.parquet"
    written = {r["id"]: r for r in pq.read_table(path).to_pylist()}
    assert [written[i]["tools"] for i in (1, 2)] == [rows[0]["tools"], rows[1]["tools"]]  # the field, as given
    dataset = ChatTemplateSFTDataset([str(path)], tokenizer, {"max_length": 4096, "pad_mode": "no_padding"})
    for index, row in enumerate(pq.read_table(path).to_pylist()):
        plain = [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["generated_solution"]}]
        assert dataset[index]["input_ids"].tolist() == chat.encode(plain)[0]  # no tools list in the prompt


def test_llamafactory_sharegpt_function_calls_train_the_call_and_the_answer(tmp_path, family):
    from pathlib import Path

    from sft.verl_plugins.sft_dataset import ChatTemplateSFTDataset

    tokenizer, _ = family("qwen3")
    fixture = Path(__file__).resolve().parent / "assets" / "data_layouts" / "llamafactory_sharegpt_tools.jsonl"
    rows = [json.loads(line) for line in fixture.read_text().splitlines()]
    manifest = _prepare(tmp_path, rows, tokenizer.name_or_path)
    assert manifest["counts"]["rejected"] == {}
    path = tmp_path / "out" / "train.parquet"
    item = ChatTemplateSFTDataset([str(path)], tokenizer, {"max_length": 4096, "pad_mode": "no_padding"})[0]
    ids, mask = item["input_ids"].tolist(), item["loss_mask"].tolist()
    spans = [decode(tokenizer, ids[a:b]) for a, b in trained_spans(mask)]
    assert spans == ['<think>\n\n</think>\n\n<tool_call>\n{"name": "calculator", "arguments": {"expression": "17 * 23"}}'
                     "\n</tool_call><|im_end|>", "<think>\n\n</think>\n\n17 * 23 = 391.<|im_end|>"]
    context = decode(tokenizer, [t for t, m in zip(ids, mask) if not m])
    assert '"name": "calculator"' in context and "<tool_response>\n{\"result\": 391}\n</tool_response>" in context
