"""Recent reasoning families: the reasoning is trained in each model's own format, never as a literal `<think>`.

Every template is a verbatim copy (tests/assets/chat_templates/, sources in README.md there) on the
tiny BPE of sft/demo/tiny_model.py with the family's special tokens (tests/chat_families.py). For
plain and reasoning data the loss-masked tokens are decoded and compared with what the model writes
after its generation prompt: its reasoning delimiters or channel, the answer, and the token it must
emit to stop. The context must be exactly the template's generation prompt with the setting the row
was rendered with (a thinking switch, a system-prompt toggle), which prepare_data records and
training reads back.
"""

from __future__ import annotations

import hashlib
import json
import shutil

import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from chat_families import (ASSETS, NEEDS_VARIABLES, REASONING_FAMILIES, family_spec, save_family_tokenizer,
                           trained_spans)
from sft.prepare_data import PrepareConfig, prepare_data
from sft.text.chat_format import PARQUET_METADATA_KEY, ChatFormat, TemplateError
from sft.verl_plugins.sft_dataset import ChatTemplateSFTDataset

PROMPT = "What is 12 + 35?"
REASONING = "I add the tens, then the ones: 10 + 30 = 40 and 2 + 5 = 7."
ANSWER = "The answer is \\boxed{47}."
PLAIN = ANSWER
THINKING = f"<think>\n{REASONING}\n</think>\n\n{ANSWER}"  # the data's reasoning, in the data's tags
R, A = REASONING, ANSWER

# What each model writes after its generation prompt, from its template by hand: reasoning delimiters
# (or channel), answer, and the token that ends its turn. Whitespace inside the data's own tags is
# kept where the template renders the content as given (DeepSeek-V3.1, the Nemotrons, Kimi, MiniMax).
TRAINED = {
    "gpt-oss-120b": (f"<|channel|>final<|message|>{A}<|return|>",
                     f"<|channel|>analysis<|message|>{R}<|end|><|start|>assistant<|channel|>final<|message|>{A}<|return|>"),
    "deepseek-v3.1": (f"{A}<｜end▁of▁sentence｜>", f"\n{R}\n</think>\n\n{A}<｜end▁of▁sentence｜>"),
    "glm-4.6": (f"\n<think></think>\n{A}<|user|>", f"\n<think>{R}</think>\n{A}<|user|>"),
    "seed-oss": (f"{A}<seed:eos>", f"<seed:think>{R}</seed:think>\n{A}<seed:eos>"),
    "ministral-3-reasoning": (f"{A}</s>", f"[THINK]{R}[/THINK]{A}</s>"),
    "nemotron-nano-v2": (f"{A}\n<SPECIAL_12>", f"{R}\n</think>\n\n{A}\n<SPECIAL_12>"),
    "nemotron-3-nano": (f"{A}<|im_end|>", f"{R}\n</think>\n{A}<|im_end|>"),
    "minimax-m2": (f"{A}[e~[", f"{R}\n</think>\n\n{A}[e~["),
    "kimi-k2-thinking": (f"<think></think>{A}<|im_end|>", f"<think>\n{R}\n</think>\n\n{A}<|im_end|>"),
    "solar-open-100b": (f"<|content|>{A}<|end|>", f"<|think|>{R}<|end|><|begin|>assistant<|content|>{A}<|end|>"),
}
# How each row's generation prompt is rendered (plain row, reasoning row): the template's default ({}),
# a template variable, or a system-prompt toggle; and how that prompt ends.
SETTINGS = {
    "deepseek-v3.1": ({}, {"thinking": True}),
    "nemotron-3-nano": ({"enable_thinking": False}, {}),
    "nemotron-nano-v2": ({"system": "/no_think"}, {}),
}
PROMPT_ENDS = {
    "deepseek-v3.1": ("<｜Assistant｜></think>", "<｜Assistant｜><think>"),
    "nemotron-3-nano": ("<|im_start|>assistant\n<think></think>", "<|im_start|>assistant\n<think>\n"),
    "nemotron-nano-v2": ("<SPECIAL_11>Assistant\n<think></think>", "<SPECIAL_11>Assistant\n<think>\n"),
    "minimax-m2": ("]~b]ai\n<think>\n", "]~b]ai\n<think>\n"),
}
# The mechanism each template has, as the probes must find it.
MECHANISM = {
    "gpt-oss-120b": ("message field 'thinking'", None, "template"),
    "deepseek-v3.1": (None, "thinking", "template"),
    "glm-4.6": ("message field 'reasoning_content'", "enable_thinking", "generation_config.json"),
    "seed-oss": ("message field 'reasoning_content'", "thinking_budget", "template"),
    "ministral-3-reasoning": ("content chunks of type 'thinking'", None, "template"),
    "nemotron-nano-v2": ("tags in the content", "system prompt", "template"),
    "nemotron-3-nano": ("message field 'reasoning_content'", "enable_thinking", "template"),
    "minimax-m2": ("message field 'reasoning_content'", None, "template"),
    "kimi-k2-thinking": ("tags in the content", None, "template"),
    "solar-open-100b": ("message field 'reasoning'", None, "template"),
}


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("reasoning-families")
    return {family: save_family_tokenizer(family, root / family, tiny_model_dir)
            for family in REASONING_FAMILIES + NEEDS_VARIABLES}


@pytest.fixture(scope="module")
def formats(family_dirs):
    """family -> (tokenizer as training loads it, its ChatFormat)."""
    loaded = {}
    for family in REASONING_FAMILIES + NEEDS_VARIABLES:
        tokenizer = AutoTokenizer.from_pretrained(family_dirs[family])
        loaded[family] = tokenizer, ChatFormat(tokenizer)
    return loaded


def _conversation(response: str) -> list[dict]:
    return [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": response}]


def _decode(tokenizer, ids) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _prompt_ids(tokenizer, family: str, reasoning: bool) -> list[int]:
    """The generation prompt's ids as transformers renders them with the row's setting."""
    setting = dict(SETTINGS.get(family, ({}, {}))[reasoning])
    messages = _conversation("")[:1]
    if "system" in setting:
        messages = [{"role": "system", "content": setting.pop("system")}] + messages
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, **setting)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def test_fixtures_are_the_recorded_templates():
    for family in REASONING_FAMILIES + NEEDS_VARIABLES:
        spec = family_spec(family)
        raw = (ASSETS / f"{family}.jinja").read_bytes()
        assert hashlib.sha256(raw).hexdigest() == spec["source"]["sha256"], family
        assert len(raw) == spec["source"]["bytes"], family


@pytest.mark.parametrize("family", REASONING_FAMILIES)
def test_the_probes_find_each_templates_reasoning_mechanism(family, formats):
    _, chat = formats[family]
    described = chat.describe()
    carrier, switch, end_source = MECHANISM[family]
    assert described["reasoning"]["carrier"].startswith(carrier or "none: the template drops reasoning"), \
        described["reasoning"]
    assert (described["reasoning"]["switch"] or {}).get("name") == switch, described["reasoning"]
    assert described["end_of_turn_source"].startswith(end_source), described


@pytest.mark.parametrize("family", REASONING_FAMILIES)
def test_plain_and_reasoning_replies_train_the_models_own_format_after_its_exact_prompt(family, formats):
    tokenizer, chat = formats[family]
    for reasoning, response in ((False, PLAIN), (True, THINKING)):
        ids, mask = chat.encode(_conversation(response))
        (start, end), = trained_spans(mask)
        trained = _decode(tokenizer, ids[start:end])
        assert trained == TRAINED[family][reasoning], (
            f"{family}, {'reasoning' if reasoning else 'plain'} reply: trained {trained!r}, "
            f"the model writes {TRAINED[family][reasoning]!r}")
        if chat.reasoning.own_tags():
            assert "<think>" not in trained and "</think>" not in trained, f"{family}: the data's tags trained: {trained!r}"
        prompt = _prompt_ids(tokenizer, family, reasoning)
        assert ids[:start] == prompt, (family, reasoning, _decode(tokenizer, ids[:start])[-80:],
                                       _decode(tokenizer, prompt)[-80:])
        if family in PROMPT_ENDS:
            assert _decode(tokenizer, prompt).endswith(PROMPT_ENDS[family][reasoning]), _decode(tokenizer, prompt)[-60:]
        # Evaluation splits a generated reply the same way: reasoning and answer back.
        generated = trained[: len(trained) - len(chat.end_of_turn)]
        assert chat.split_reply(generated) == (
            (R, A) if reasoning else (None, A)), (family, generated)


def test_reasoning_given_apart_trains_as_inline_tags(formats):
    tokenizer, chat = formats["gpt-oss-120b"]
    for key in ("reasoning_content", "thinking", "reasoning"):
        messages = [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": ANSWER, key: REASONING}]
        assert chat.encode(messages) == chat.encode(_conversation(THINKING)), key


def test_earlier_turns_continue_the_sequence_each_turn_ending_with_the_trained_stop_token(formats):
    conversation = [{"role": "user", "content": "What is 2 + 3?"},
                    {"role": "assistant", "content": "<think>\n2 + 3 = 5.\n</think>\n\n5"},
                    {"role": "user", "content": "And 5 + 5?"}, {"role": "assistant", "content": "10"}]
    tokenizer, chat = formats["glm-4.6"]  # closes no reply: <|user|> is trained as the stop token
    ids, mask = chat.encode(conversation)
    trained = [_decode(tokenizer, ids[a:b]) for a, b in trained_spans(mask)]
    assert trained == ["\n<think>2 + 3 = 5.</think>\n5<|user|>", "\n<think></think>\n10<|user|>"], trained
    assert _decode(tokenizer, ids).startswith(_decode(tokenizer, _prompt_ids(tokenizer, "glm-4.6", False))[:10])
    tokenizer, chat = formats["gpt-oss-120b"]  # earlier turns end <|end|> without their analysis, the last <|return|>
    ids, mask = chat.encode(conversation)
    trained = [_decode(tokenizer, ids[a:b]) for a, b in trained_spans(mask)]
    assert trained == ["<|channel|>analysis<|message|>2 + 3 = 5.<|end|><|start|>assistant<|channel|>final<|message|>"
                       "5<|return|>", "<|channel|>final<|message|>10<|return|>"], trained
    assert "history_rendered_differently" in chat.segments(conversation).flags


def test_a_forced_setting_that_closes_the_reasoning_refuses_reasoning_rows_in_one_line(formats):
    tokenizer, _ = formats["glm-4.6"]
    chat = ChatFormat(tokenizer, template_kwargs={"enable_thinking": False})
    ids, mask = chat.encode(_conversation(PLAIN))
    assert _decode(tokenizer, ids[trained_spans(mask)[0][0]:]) == f"\n{A}<|user|>"
    with pytest.raises(TemplateError) as refused:
        chat.encode(_conversation(THINKING))
    message = str(refused.value)
    assert "\n" not in message and "closes the reasoning block" in message and "enable_thinking=False" in message
    assert "--chat-template-kwargs" in message and "--answers-only" in message and "[user]" in message


@pytest.mark.parametrize("family, error, defaults", [
    ("hermes-3-tool-use", "'NoneType' object is not iterable", {"tools": []}),
    ("firefunction-v2", "'functions' is undefined", {"functions": "", "datetime": ""}),
])
def test_a_template_that_needs_variables_gets_neutral_ones(family, error, defaults, formats):
    tokenizer, chat = formats[family]
    with pytest.raises(Exception, match=error):
        tokenizer.apply_chat_template(_conversation(PLAIN), tokenize=False)
    assert chat.render_defaults == defaults
    ids, mask = chat.encode(_conversation(PLAIN))
    (start, end), = trained_spans(mask)
    assert _decode(tokenizer, ids[start:end]) == f"{A}<|{'im_end' if 'hermes' in family else 'eot_id'}|>"
    assert ids[:start] == tokenizer.apply_chat_template(_conversation("")[:1], add_generation_prompt=True,
                                                        tokenize=True, return_dict=True, **defaults)["input_ids"]


@pytest.mark.parametrize("family", ["gpt-oss-120b", "deepseek-v3.1", "glm-4.6", "nemotron-nano-v2"])
def test_prepared_data_records_the_settings_and_training_trains_what_was_counted(family, family_dirs, tmp_path):
    source = tmp_path / "rows.jsonl"
    source.write_text("".join(json.dumps({"id": i, "prompt": PROMPT, "generated_solution": response}) + "\n"
                              for i, response in enumerate([PLAIN, THINKING])))
    config = PrepareConfig(val_split=0.0, tokenizer=str(family_dirs[family]), progress=False, workers=1)
    manifest = prepare_data([str(source)], tmp_path / "out", config)
    template = manifest["chat_template"]
    assert template["reasoning"]["carrier"].startswith(MECHANISM[family][0] or "none")
    train = tmp_path / "out" / "train.parquet"
    record = json.loads(pq.read_schema(train).metadata[PARQUET_METADATA_KEY])
    assert record["reasoning_format"] == template["reasoning"] and record["stop_token"] == (
        "<|user|>" if family == "glm-4.6" else None)
    if family in SETTINGS:
        flag = "reasoning_switch_on" if SETTINGS[family][1] else "reasoning_switch_off"
        assert template["rows_by_flag"][flag]["rows"] == 1
    # Training loads the model's tokenizer from another directory, here one without generation_config.json:
    # the recorded stop token is trained all the same.
    model_dir = tmp_path / "model"
    shutil.copytree(family_dirs[family], model_dir)
    (model_dir / "generation_config.json").unlink(missing_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dataset = ChatTemplateSFTDataset(str(train), tokenizer, {"max_length": 100_000, "pad_mode": "no_padding"})
    for index, row in enumerate(pq.read_table(train).to_pylist()):
        item = dataset[index]
        ids, mask = item["input_ids"].tolist(), item["loss_mask"].tolist()
        assert len(ids) == row["sft_num_tokens"]
        (start, end), = trained_spans(mask)
        reasoning = row["generated_solution"] == THINKING
        assert _decode(tokenizer, ids[start:end]) == TRAINED[family][reasoning], row["generated_solution"]


def test_training_refuses_a_tokenizer_whose_reasoning_mechanism_differs_from_the_recorded_one(family_dirs, tmp_path):
    source = tmp_path / "rows.jsonl"
    source.write_text(json.dumps({"id": 0, "prompt": PROMPT, "generated_solution": THINKING}) + "\n")
    config = PrepareConfig(val_split=0.0, tokenizer=str(family_dirs["seed-oss"]), progress=False, workers=1)
    prepare_data([str(source)], tmp_path / "out", config)
    other = AutoTokenizer.from_pretrained(family_dirs["seed-oss"])
    other.chat_template = (ASSETS / "ministral-3-reasoning.jinja").read_text(encoding="utf-8")
    with pytest.raises(ValueError, match="reasoning format"):
        ChatTemplateSFTDataset(str(tmp_path / "out" / "train.parquet"), other, {"max_length": 4096})


@pytest.mark.parametrize("family", ["gpt-oss-120b", "deepseek-v3.1", "glm-4.6"])
def test_evaluation_prompts_as_training_did_and_grades_the_answer_of_the_models_own_format(family, family_dirs,
                                                                                           tmp_path):
    from sft.generation.backend import Replies, prompt_settings
    from sft.generation.grading import grade
    from sft.generation.problems import load_samples

    source = tmp_path / "rows.jsonl"
    source.write_text(json.dumps({"id": 0, "prompt": PROMPT, "generated_solution": THINKING}) + "\n")
    prepare_data([str(source)], tmp_path / "out", PrepareConfig(val_split=0.0, tokenizer=str(family_dirs[family]),
                                                                progress=False, workers=1))
    train = tmp_path / "out" / "train.parquet"
    samples = load_samples(train)
    settings, reasoning, recorded = prompt_settings(train, None, "auto", [s.solution for s in samples])
    assert reasoning and recorded["reasoning_prompt"] == "on" and recorded["chat_settings"] == str(train)
    tokenizer = AutoTokenizer.from_pretrained(family_dirs[family])
    replies = Replies(tokenizer, settings, reasoning)
    item = ChatTemplateSFTDataset(str(train), tokenizer, {"max_length": 4096, "pad_mode": "no_padding"})[0]
    ids, mask = item["input_ids"].tolist(), item["loss_mask"].tolist()
    (start, end), = trained_spans(mask)
    assert replies.prompt_ids([samples[0].messages]) == [ids[:start]], "evaluation prompts otherwise than training"
    # The model writes what it was trained on; the stop token ends it (generation drops it before decoding).
    generated = ids[start:end - 1]
    assert tokenizer.convert_ids_to_tokens(ids[end - 1]) in (replies.chat.stop_token, tokenizer.eos_token,
                                                            replies.chat.end_of_turn.strip())
    generation = replies.make(generated, False)
    assert generation.answer == ANSWER, _decode(tokenizer, generated)
    # The output as recorded (results.jsonl, generate's samples): reasoning in the data's tags where the model
    # writes its own (a channel would not survive decoding), else as decoded.
    decoded = tokenizer.decode(generated, skip_special_tokens=True)
    assert generation.text == (THINKING if replies.chat.reasoning.own_tags() else decoded), generation.text
    assert grade(samples[0], generation)["correct"]
    assert not prompt_settings(train, None, "off", [])[1]


def test_reasoning_prompt_follows_most_reference_solutions_unless_told():
    from sft.generation.backend import reasoning_prompt

    tags = ("<think>", "</think>")
    assert reasoning_prompt("auto", [THINKING, THINKING, PLAIN], tags)
    assert not reasoning_prompt("auto", [PLAIN, PLAIN, THINKING], tags)
    assert reasoning_prompt("auto", [None, None], tags)
    assert not reasoning_prompt("off", [THINKING], tags) and reasoning_prompt("on", [PLAIN], tags)


def test_a_generated_reply_splits_at_the_models_closing_even_without_an_opening_tag():
    from sft.text.reasoning_format import NEUTRAL, Carrier, ReasoningFormat

    # Apriel-style: the prompt opens with prose ("Here are my reasoning steps:"), the answer follows a marker.
    fmt = ReasoningFormat(Carrier("field", "reasoning_content"), "Here are my reasoning steps:\n",
                          "\n[BEGIN FINAL RESPONSE]\n", "", ("", "[BEGIN FINAL RESPONSE]"), NEUTRAL, None,
                          ("<think>", "</think>"))
    assert fmt.split(f"{R}\n[BEGIN FINAL RESPONSE]\n{A}") == (R, A)
    assert fmt.split(A) == (None, A)
    assert fmt.split(THINKING) == (R, A)  # the data's own tags are understood too
