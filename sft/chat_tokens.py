"""Count a sample's tokens exactly as verl's MultiTurnSFTDataset will, fast; summarise lengths.

Usage (as a library; sft/prepare_data.py --tokenizer uses it):
    from sft.chat_tokens import ChatTokenCounter, length_summary
    counter = ChatTokenCounter.from_pretrained("path/to/model")
    counts = counter.count(prompts, responses, system_prompt=None)   # numpy int64 array
    summary = length_summary(counts, max_length=4096)

Usage (command line, to check a tokenizer's template on a few texts):
    python -m sft.chat_tokens path/to/model "What is 2+2?" "2+2 = \\boxed{4}"

How verl counts (verl/utils/dataset/multiturn_sft_dataset.py): every message is rendered
alone with `apply_chat_template([message], tokenize=True)`, and for every message after the
first that is not a system message, the template's default system block (found by
`extract_system_prompt_and_generation`) is cut from the front; the pieces are concatenated.

How this counts the same number fast: for each role the template is rendered once around a
sentinel to get the text it puts before and after the content. That is checked to be plain
concatenation (the content is inserted unchanged) on probe contents. The Rust tokenizer
splits text at added tokens such as `<|im_start|>` before anything else, so the template text
up to the last added token before the content (and from the first one after it) is a constant
number of tokens; only "role\\n" + content (+ anything before the closing token) is encoded,
in large batches on all cores (`encode_batch_fast`). Leading newlines and spaces in the
content merge with the template's "\\n" exactly as they do in verl, because that "\\n" is
encoded together with the content. Every assumption is verified against the real template on
probe texts when the counter is built (and `verify` checks real samples); if one fails, the
counter falls back to encoding the whole rendered message, and, for a template that rewrites
content, to rendering every message with the template (slow but still exact).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Sequence

import numpy as np

# Contents chosen to break naive counting: leading/trailing newlines and spaces merge with the
# template's own whitespace under byte-level BPE; special-token text inside content; unicode.
PROBE_CONTENTS = [
    "x",
    "",
    " ",
    "\n",
    "\n\nStep 1: 12 + 35 = 47.",
    "  leading spaces",
    "\tTabbed\n",
    "trailing newline\n",
    "trailing spaces   ",
    "ends with im tags <|im_end|> inside <|im_start|>user",
    "Ünïcödé ∑ x² — 数学 \\boxed{\\frac{1}{2}}",
    "\r\nwindows line\r\n",
    "{{ not a template }} {% raw %}",
]
_SENTINELS = ("\u27e6SFT-PROBE-A\u27e7", "\u27e6SFT-PROBE-B\u27e7")
ROLES = ("system", "user", "assistant")
BATCH_TEXTS = 512


def _ids(result) -> list[int]:
    """Token ids from apply_chat_template's return value (list, dict or BatchEncoding)."""
    if hasattr(result, "keys") and "input_ids" in result:
        result = result["input_ids"]
    if hasattr(result, "tolist"):
        result = result.tolist()
    if result and isinstance(result[0], list):
        result = result[0]
    return list(result)


def verl_system_prompt_length(tokenizer, **template_kwargs) -> int:
    """Length of the default system block verl strips (its extract_system_prompt_and_generation)."""
    one = _ids(tokenizer.apply_chat_template([{"role": "user", "content": ""}], add_generation_prompt=False, tokenize=True, **template_kwargs))
    two = _ids(tokenizer.apply_chat_template([{"role": "user", "content": ""}] * 2, add_generation_prompt=False, tokenize=True, **template_kwargs))
    return len(one[: -(len(two) - len(one))])


def verl_token_ids(tokenizer, messages: list[dict], **template_kwargs) -> list[int]:
    """The input ids verl's MultiTurnSFTDataset builds for `messages` (reference, slow)."""
    strip = verl_system_prompt_length(tokenizer, **template_kwargs)
    ids: list[int] = []
    for index, message in enumerate(messages):
        piece = _ids(tokenizer.apply_chat_template([message], add_generation_prompt=False, tokenize=True, **template_kwargs))
        if index != 0 and message["role"] != "system":
            piece = piece[strip:]
        ids.extend(piece)
    return ids


@dataclass
class _RoleTemplate:
    """How the chat template renders one message of a role, reduced to what the count needs."""

    role: str
    mode: str
    """"split": encode head + content + tail; "whole": encode prefix + content + suffix;
    "render": render every message with the template (content is not inserted verbatim)."""
    head: str = ""
    tail: str = ""
    constant: int = 0


class ChatTokenCounter:
    """Counts tokens per sample as verl's MultiTurnSFTDataset will (see the module docstring)."""

    def __init__(self, tokenizer, **template_kwargs):
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                "the tokenizer has no chat_template; verl's SFT dataset needs one. "
                "Use a chat/instruct model's tokenizer or set tokenizer.chat_template"
            )
        self.tokenizer = tokenizer
        self.template_kwargs = template_kwargs
        self.backend = getattr(tokenizer, "backend_tokenizer", None)
        self.strip = verl_system_prompt_length(tokenizer, **template_kwargs)
        self.templates = {role: self._analyse(role) for role in ROLES}

    @classmethod
    def from_pretrained(cls, path: str, **template_kwargs) -> "ChatTokenCounter":
        from transformers import AutoTokenizer

        return cls(AutoTokenizer.from_pretrained(path), **template_kwargs)

    # -- setup ------------------------------------------------------------------------
    def _render(self, role: str, content: str) -> str:
        return self.tokenizer.apply_chat_template(
            [{"role": role, "content": content}], add_generation_prompt=False, tokenize=False, **self.template_kwargs
        )

    def _reference_message(self, role: str, content: str) -> int:
        return len(_ids(self.tokenizer.apply_chat_template(
            [{"role": role, "content": content}], add_generation_prompt=False, tokenize=True, **self.template_kwargs
        )))

    def _encode_lengths(self, texts: list[str]) -> np.ndarray:
        """Token counts of texts, encoded without special tokens (as apply_chat_template does)."""
        lengths = np.empty(len(texts), dtype=np.int64)
        if self.backend is not None:
            encode = getattr(self.backend, "encode_batch_fast", self.backend.encode_batch)
            for start in range(0, len(texts), BATCH_TEXTS):
                batch = encode(texts[start : start + BATCH_TEXTS], add_special_tokens=False)
                lengths[start : start + len(batch)] = [len(e) for e in batch]
        else:  # a slow (Python) tokenizer
            for i, text in enumerate(texts):
                lengths[i] = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return lengths

    def _added_tokens_split_cleanly(self) -> list[str] | None:
        """Added-token strings when all are matched verbatim (no strip/normalise); else None."""
        if self.backend is None or not hasattr(self.backend, "get_added_tokens_decoder"):
            return None
        tokens = list(self.backend.get_added_tokens_decoder().values())
        if any(t.lstrip or t.rstrip or t.single_word or t.normalized for t in tokens):
            return None
        return [t.content for t in tokens if t.content]

    def _analyse(self, role: str) -> _RoleTemplate:
        first, second = (self._render(role, s) for s in _SENTINELS)
        if first.count(_SENTINELS[0]) != 1:
            return _RoleTemplate(role, "render")
        prefix, suffix = first.split(_SENTINELS[0])
        if second != prefix + _SENTINELS[1] + suffix or any(
            self._render(role, c) != prefix + c + suffix for c in PROBE_CONTENTS
        ):
            return _RoleTemplate(role, "render")
        reference = [self._reference_message(role, c) for c in PROBE_CONTENTS]
        candidates = []
        added = self._added_tokens_split_cleanly()
        if added:
            cut = max((prefix.rfind(t) + len(t) for t in added if t in prefix), default=0)
            end = min((suffix.find(t) for t in added if t in suffix), default=len(suffix))
            constant_text = [t for t in (prefix[:cut], suffix[end:]) if t]
            constant = int(self._encode_lengths(constant_text).sum()) if constant_text else 0
            candidates.append(_RoleTemplate(role, "split", prefix[cut:], suffix[:end], constant))
        candidates.append(_RoleTemplate(role, "whole", prefix, suffix, 0))
        for candidate in candidates:
            counted = self._encode_lengths([candidate.head + c + candidate.tail for c in PROBE_CONTENTS]) + candidate.constant
            if counted.tolist() == reference:
                return candidate
        return _RoleTemplate(role, "render")

    @property
    def modes(self) -> dict[str, str]:
        return {role: t.mode for role, t in self.templates.items()}

    # -- counting ---------------------------------------------------------------------
    def _message_lengths(self, role: str, contents: Sequence[str]) -> np.ndarray:
        template = self.templates[role]
        if template.mode == "render":
            texts = [self._render(role, c) for c in contents]
            return self._encode_lengths(texts)
        head, tail = template.head, template.tail
        if head or tail:
            texts = [head + c + tail for c in contents]
        else:
            texts = list(contents)
        return self._encode_lengths(texts) + template.constant

    def count(self, prompts: Sequence[str], responses: Sequence[str], system_prompt: str | None = None) -> np.ndarray:
        """Tokens verl will build for each [system?, user=prompt, assistant=response] sample."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        if not len(prompts):
            return np.zeros(0, dtype=np.int64)
        unique = list(dict.fromkeys(prompts))  # several solutions per problem share one prompt
        if len(unique) < len(prompts):
            known = dict(zip(unique, self._message_lengths("user", unique).tolist()))
            user = np.fromiter((known[p] for p in prompts), dtype=np.int64, count=len(prompts))
        else:
            user = self._message_lengths("user", prompts)
        total = user + self._message_lengths("assistant", responses)
        if system_prompt is not None:
            total += int(self._message_lengths("system", [system_prompt])[0]) - 2 * self.strip
        else:
            total -= self.strip  # the assistant message is not first: verl cuts the default system block
        return total

    def verify(self, prompts: Sequence[str], responses: Sequence[str], system_prompt: str | None = None) -> None:
        """Raise if `count` differs from verl's own per-message tokenization on these samples."""
        fast = self.count(prompts, responses, system_prompt)
        saved = self.tokenizer.model_max_length  # long samples are fine here: silence the length warning
        self.tokenizer.model_max_length = 1 << 62
        try:
            self._verify(fast, prompts, responses, system_prompt)
        finally:
            self.tokenizer.model_max_length = saved

    def _verify(self, fast, prompts, responses, system_prompt) -> None:
        for i, (prompt, response) in enumerate(zip(prompts, responses)):
            messages = ([{"role": "system", "content": system_prompt}] if system_prompt is not None else []) + [
                {"role": "user", "content": prompt},
                {"role": "assistant", "content": response},
            ]
            expected = len(verl_token_ids(self.tokenizer, messages, **self.template_kwargs))
            if fast[i] != expected:
                raise AssertionError(
                    f"token count {fast[i]} differs from verl's {expected} for sample {i} "
                    f"(template modes {self.modes}); please report this with the tokenizer used"
                )


# ---------------------------------------------------------------------------------------
# Length summary and the MAX_LENGTH / MAX_TOKENS_PER_GPU recommendation.

LENGTH_ROUNDING = 256
"""Recommended lengths are rounded up to a multiple of this (friendly to kernels and memory)."""
VERL_DEFAULT_TOKENS_PER_GPU = 8192
"""verl's default data.max_token_len_per_gpu."""
PERCENTILES = (50, 90, 95, 99, 99.9)
HISTOGRAM_EDGES = (128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)


def round_up(value: int, multiple: int = LENGTH_ROUNDING) -> int:
    return max(multiple, int(math.ceil(value / multiple)) * multiple)


def recommend(kept_max: int, max_length: int | None) -> tuple[int, int]:
    """(MAX_LENGTH, MAX_TOKENS_PER_GPU) for samples whose longest is `kept_max` tokens.

    MAX_LENGTH is the longest kept sample rounded up to a multiple of 256, so with verl's
    `data.truncation=error` no sample in train or val can stop the run; when --max-length was
    given it is never above it (longer samples were dropped). MAX_TOKENS_PER_GPU is verl's
    default budget (8192), raised to MAX_LENGTH when one sample needs more, since verl requires
    max_token_len_per_gpu >= max_length.
    """
    length = round_up(kept_max)
    if max_length is not None:
        length = min(length, max_length)
    return length, max(VERL_DEFAULT_TOKENS_PER_GPU, length)


def length_summary(counts: np.ndarray, max_length: int | None = None) -> dict:
    """Percentiles, histogram and how many exceed `max_length`, for an array of token counts."""
    counts = np.asarray(counts, dtype=np.int64)
    if counts.size == 0:
        return {"samples": 0}
    percentiles = np.percentile(counts, PERCENTILES, method="higher")
    top = int(counts.max())
    edges = [-1] + [e for e in HISTOGRAM_EDGES if e < top] + [top]
    histogram = [
        {"from": lower + 1, "to": int(upper), "samples": int(((counts > lower) & (counts <= upper)).sum())}
        for lower, upper in zip(edges[:-1], edges[1:])
    ]
    summary = {
        "samples": int(counts.size),
        "total": int(counts.sum()),
        "mean": round(float(counts.mean()), 1),
        "min": int(counts.min()),
        "max": int(counts.max()),
        "percentiles": {f"p{p:g}": int(v) for p, v in zip(PERCENTILES, percentiles)},
        "histogram": histogram,
    }
    if max_length is not None:
        summary["over_max_length"] = int((counts > max_length).sum())
    return summary


def format_summary(summary: dict, title: str) -> str:
    """A few readable lines: percentiles and a text histogram."""
    if not summary.get("samples"):
        return f"{title}: no samples"
    p = summary["percentiles"]
    lines = [
        f"{title}: {summary['samples']:,} samples, {summary['total']:,} tokens, mean {summary['mean']:.0f}, "
        f"min {summary['min']}, max {summary['max']}",
        "  " + "  ".join(f"{k} {v:,}" for k, v in p.items()),
    ]
    peak = max(h["samples"] for h in summary["histogram"]) or 1
    for bucket in summary["histogram"]:
        bar = "#" * int(round(40 * bucket["samples"] / peak))
        lines.append(f"  {bucket['from']:>7,}-{bucket['to']:<7,} {bucket['samples']:>10,} {bar}")
    if "over_max_length" in summary:
        lines.append(f"  longer than --max-length: {summary['over_max_length']:,}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Count one sample's tokens as verl will, and show the template modes.")
    parser.add_argument("tokenizer", help="local tokenizer/model directory")
    parser.add_argument("prompt", help="user message")
    parser.add_argument("response", help="assistant message")
    parser.add_argument("--system-prompt", default=None, help="optional system message")
    args = parser.parse_args(argv)
    counter = ChatTokenCounter.from_pretrained(args.tokenizer)
    fast = int(counter.count([args.prompt], [args.response], args.system_prompt)[0])
    counter.verify([args.prompt], [args.response], args.system_prompt)
    print(f"tokens: {fast} (matches verl's per-message tokenization; template modes {counter.modes})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
