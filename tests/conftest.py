"""Shared fixtures. Data-preparation fixtures are prefixed `data_` (other suites add their own)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def data_tiny_model_dir(tmp_path_factory):
    """A tiny Qwen2-style model + tokenizer (chat template without a default system prompt)."""
    from sft.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("data_tiny") / "model")


@pytest.fixture(scope="session")
def data_tiny_tokenizer(data_tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(data_tiny_model_dir)


@pytest.fixture(scope="session")
def data_qwen_tokenizer_dir(request):
    """The Qwen2.5-style tokenizer (real 151k vocabulary), built once and kept in pytest's cache
    directory between runs (building takes 10-30 s on a busy 2-core machine)."""
    from sft.qwen_tokenizer import build_qwen_tokenizer

    return build_qwen_tokenizer(request.config.cache.mkdir("verl-sft-qwen-tokenizer") / "tokenizer")
