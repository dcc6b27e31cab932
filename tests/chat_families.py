"""Tiny tokenizers that carry real model families' chat templates and special tokens (test fixtures).

Usage (in tests):
    from chat_families import FAMILIES, family_tokenizer, family_model
    tokenizer = family_tokenizer("qwen3", tiny_tokenizer_dir)   # a PreTrainedTokenizerFast
    model_dir = family_model("gemma-2-it", tmp_path / "gemma", tiny_tokenizer_dir)

The templates and special tokens are byte-exact copies of the models' tokenizer_config.json, in
tests/assets/chat_templates/ (README.md there records the source of each: repository, path,
commit, and how it was checked). The vocabulary is the tiny byte-level BPE of sft/demo/tiny_model.py
with each family's added tokens on top (special ones as special tokens, `<think>`/`</think>` as
ordinary added tokens, as in Qwen3 and DeepSeek), its bos/eos/pad/unk, and, for Phi, role
tokens that absorb the whitespace after them (`rstrip`), as the real Phi tokenizers' do.
"""

from __future__ import annotations

import json
from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets" / "chat_templates"

MUST_HAVE = (
    "qwen2.5-instruct", "qwen3", "deepseek-r1-distill-qwen-2501", "deepseek-r1-distill-qwen-think",
    "llama-3.1-instruct", "gemma-2-it", "mistral-nemo-instruct", "phi-3.5-mini",
)
OTHERS = ("qwq-32b", "llama-3.2-instruct", "deepseek-r1-distill-llama", "smollm3", "phi-4-mini", "gemma-3-it")
FAMILIES = MUST_HAVE + OTHERS
REASONING_FAMILIES = (
    "gpt-oss-120b", "deepseek-v3.1", "glm-4.6", "seed-oss", "ministral-3-reasoning", "nemotron-nano-v2",
    "nemotron-3-nano", "minimax-m2", "kimi-k2-thinking", "solar-open-100b",
)
"""Recent reasoning families (tests/test_reasoning_formats.py): own delimiters, reasoning fields, switches."""
NEEDS_VARIABLES = ("hermes-3-tool-use", "firefunction-v2")
"""Templates that fail with transformers' defaults (tools=None; custom variables nothing passes)."""

# The Phi tokenizers' role and end tokens have rstrip=true (tests/assets/chat_templates/phi-*.json notes).
_RSTRIP = {
    "phi-3.5-mini": {"<|assistant|>", "<|system|>", "<|end|>", "<|user|>"},
    "phi-4-mini": {"<|assistant|>", "<|system|>", "<|end|>", "<|user|>"},
}


def trained_spans(mask) -> list[tuple[int, int]]:
    """(start, end) of each run of trained tokens in a loss mask."""
    spans, start = [], None
    for i, m in enumerate(list(mask) + [0]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            spans.append((start, i))
            start = None
    return spans


def family_spec(family: str) -> dict:
    spec = json.loads((ASSETS / f"{family}.json").read_text(encoding="utf-8"))
    spec["chat_template"] = (ASSETS / f"{family}.jinja").read_text(encoding="utf-8")
    return spec


def family_tokenizer(family: str, base_dir: str | Path):
    """The tiny tokenizer in `base_dir` with `family`'s chat template and special tokens."""
    from tokenizers import AddedToken, Tokenizer
    from transformers import PreTrainedTokenizerFast

    spec = family_spec(family)
    backend = Tokenizer.from_file(str(Path(base_dir) / "tokenizer.json"))
    rstrip = _RSTRIP.get(family, set())
    named = {spec.get(k) for k in ("bos_token", "eos_token", "pad_token", "unk_token")} - {None}
    tokens = [t["content"] for t in spec["added_tokens"]] + sorted(named - {t["content"] for t in spec["added_tokens"]})
    special = {t["content"] for t in spec["added_tokens"] if t.get("special", True)} | named
    for content in tokens:
        token = AddedToken(content, special=content in special, normalized=False, lstrip=False,
                           rstrip=content in rstrip, single_word=False)
        if content in special:
            backend.add_special_tokens([token])
        else:
            backend.add_tokens([token])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=spec.get("bos_token"), eos_token=spec.get("eos_token"), pad_token=spec.get("pad_token"),
        unk_token=spec.get("unk_token"), chat_template=spec["chat_template"], model_max_length=1 << 20,
    )


def save_family_tokenizer(family: str, output_dir: str | Path, base_dir: str | Path) -> Path:
    """`family_tokenizer` saved to `output_dir`, with a generation_config.json listing the stop tokens the
    model's own generation config lists (by their ids in this tokenizer) where the spec records them."""
    output_dir = Path(output_dir)
    tokenizer = family_tokenizer(family, base_dir)
    tokenizer.save_pretrained(output_dir)
    stops = family_spec(family).get("generation_config_eos_tokens")
    if stops:
        ids = tokenizer.convert_tokens_to_ids(stops)
        (output_dir / "generation_config.json").write_text(json.dumps({"eos_token_id": ids}) + "\n")
    return output_dir


def family_model(family: str, output_dir: str | Path, base_dir: str | Path) -> Path:
    """A tiny random Qwen2 model saved with `family`'s tokenizer (for training runs)."""
    from sft.demo.tiny_model import TinyModelSpec, build_model

    output_dir = Path(output_dir)
    if (output_dir / "config.json").is_file():
        return output_dir
    tokenizer = family_tokenizer(family, base_dir)
    model = build_model(TinyModelSpec(), tokenizer)
    if tokenizer.eos_token_id is not None:
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    tokenizer.save_pretrained(output_dir)
    model.save_pretrained(output_dir, safe_serialization=True)
    return output_dir
