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
in large batches on all cores (`encode_batch_fast`), or, for ASCII texts of byte-level BPE
tokenizers, by tiktoken built from the same vocabulary and pattern (`_TiktokenCounts`: about 3x
faster, used only while its counts equal the library's on test texts and real samples).
Leading newlines and spaces in the content merge with the template's "\\n" exactly as they do
in verl, because that "\\n" is encoded together with the content. Every assumption is
verified against the real template on probe texts when the counter is built (and `verify`
checks real samples); if one fails, the counter falls back to encoding the whole rendered
message, and, for a template that rewrites content, to rendering every message with the
template (slow but still exact).
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


# The GPT-2 pre-tokenizer pattern, used by a ByteLevel pre-tokenizer with use_regex=True.
_GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
_UNICODE_NORMALIZERS = ("NFC", "NFD", "NFKC", "NFKD")  # all leave ASCII text unchanged


def _self_test_texts() -> list[str]:
    """ASCII texts that exercise the pre-tokenizer pattern and the merges: math, code,
    whitespace runs, contractions, digits, punctuation, and seeded random printable text."""
    import random

    texts = [c for c in PROBE_CONTENTS if c.isascii()] + [
        "user\nSolve: 12 + 35 = ?", "assistant\nStep 1: 12 + 35 = 47.\n\nStep 2: so $\\boxed{47}$.",
        "1234567890 3.14159 -42 1e-5 0.000001 99,999", "$\\frac{a}{b} + x^{2} - y_{i} \\cdot \\sqrt{3}$",
        "a  b   c\t\td\n\n\n  e \r\n f", "def f(x):\n    return x**2  # comment\n", "!!! ??? ... --- *** ((( )))",
        "it's I'm we'll they've she'd IT'S WE'LL", "HELLO World  Mixed CASE words", "   ", "\n", " leading", "trailing ",
    ]
    rng = random.Random(0)
    alphabet = [chr(c) for c in range(32, 127)] + ["\n", "\t", " ", " ", "\r\n"] + list("0123456789")
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 300))) for _ in range(300)]
    return texts


class _TiktokenCounts:
    """Token counts of ASCII texts with tiktoken, for byte-level BPE tokenizers (Qwen2/2.5/3,
    Llama 3, GPT-2 and the like): several times faster than `tokenizers` and the same counts.

    Built only when the tokenizer is plain byte-level BPE (a Split regex + ByteLevel, or
    ByteLevel with its own regex; no normaliser but a Unicode normal form, which leaves ASCII
    unchanged), and kept only if its counts equal the library's on a battery of texts
    (`_self_test_texts`). Non-ASCII texts, and texts that contain an added token's text
    (which `tokenizers` matches as one token), are left to the library.
    """

    def __init__(self, encoding, added: list[str]):
        import re

        self.encoding = encoding
        self.added = re.compile("|".join(re.escape(t) for t in sorted(added, key=len, reverse=True))) if added else None

    @classmethod
    def build(cls, backend) -> _TiktokenCounts | None:
        import json

        try:
            import tiktoken
        except ImportError:
            return None
        model = getattr(backend, "model", None)
        if type(model).__name__ != "BPE" or any(getattr(model, k, None) for k in (
                "dropout", "continuing_subword_prefix", "end_of_word_suffix", "byte_fallback")):
            return None
        try:
            normalizer = json.loads(backend.normalizer.__getstate__()) if backend.normalizer is not None else None
            pre = json.loads(backend.pre_tokenizer.__getstate__()) if backend.pre_tokenizer is not None else None
        except (AttributeError, TypeError, ValueError):
            return None
        if normalizer is not None and normalizer.get("type") not in _UNICODE_NORMALIZERS:
            return None
        pattern = cls._pattern(pre)
        if pattern is None:
            return None
        vocab = backend.get_vocab(with_added_tokens=False)
        byte_of = {char: byte for byte, char in _bytes_to_unicode().items()}
        try:
            ranks = {bytes(byte_of[c] for c in token): rank for token, rank in vocab.items()}
        except KeyError:  # a token that is not byte-level text
            return None
        if len(ranks) != len(vocab) or any(bytes([b]) not in ranks for b in range(256)):
            return None
        try:
            encoding = tiktoken.Encoding("sft-chat-tokens", pat_str=pattern, mergeable_ranks=ranks, special_tokens={})
        except Exception:  # noqa: BLE001 - a pattern tiktoken's regex engine does not take
            return None
        fast = cls(encoding, [t.content for t in backend.get_added_tokens_decoder().values() if t.content])
        texts = [t for t in _self_test_texts() if fast.takes(t)]
        library = [len(e) for e in backend.encode_batch(texts, add_special_tokens=False)]
        return fast if fast.lengths(texts) == library else None

    @staticmethod
    def _pattern(pre: dict | None) -> str | None:
        if pre is None:
            return None
        steps = pre["pretokenizers"] if pre.get("type") == "Sequence" else [pre]
        if len(steps) == 1 and steps[0].get("type") == "ByteLevel" and steps[0].get("use_regex", True) \
                and not steps[0].get("add_prefix_space"):
            return _GPT2_PATTERN
        if len(steps) == 2 and steps[0].get("type") == "Split" and steps[1].get("type") == "ByteLevel":
            split, level = steps
            if split.get("behavior") == "Isolated" and not split.get("invert") and "Regex" in split.get("pattern", {}) \
                    and not level.get("use_regex") and not level.get("add_prefix_space"):
                return split["pattern"]["Regex"]
        return None

    def takes(self, text: str) -> bool:
        return text.isascii() and (self.added is None or self.added.search(text) is None)

    def lengths(self, texts: Sequence[str]) -> list[int]:
        threads = _threads()
        if threads == 1:
            encode = self.encoding.encode_ordinary
            return [len(encode(text)) for text in texts]
        return [len(ids) for ids in self.encoding.encode_ordinary_batch(list(texts), num_threads=threads)]


def _threads() -> int:
    """tiktoken's batch threads: one per core unless the caller asked `tokenizers` for one."""
    import os

    if os.environ.get("TOKENIZERS_PARALLELISM", "").lower() in ("false", "0", "no", "off"):
        return 1
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return os.cpu_count() or 1


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: byte -> the printable character that stands for it."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) \
        + list(range(ord("\xae"), ord("\xff") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


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
        self.fast = _TiktokenCounts.build(self.backend) if self.backend is not None else None
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
            rest = list(range(len(texts)))
            if self.fast is not None:
                taken = list(map(self.fast.takes, texts))
                mine = [i for i in rest if taken[i]]
                if mine:
                    lengths[mine] = self.fast.lengths([texts[i] for i in mine])
                    rest = [i for i in rest if not taken[i]]
            encode = getattr(self.backend, "encode_batch_fast", self.backend.encode_batch)
            for start in range(0, len(rest), BATCH_TEXTS):
                part = rest[start : start + BATCH_TEXTS]
                batch = encode([texts[i] for i in part], add_special_tokens=False)
                lengths[part] = [len(e) for e in batch]
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

    @property
    def encoder(self) -> str:
        """What encodes the texts: tiktoken for ASCII texts (checked equal) or the tokenizer's library."""
        if self.fast is not None:
            return "tiktoken for ASCII texts (counts checked equal to tokenizers'), tokenizers for the rest"
        return "tokenizers" if self.backend is not None else "the tokenizer's Python code"

    def check_fast_path(self, prompts: Sequence[str], responses: Sequence[str]) -> None:
        """Compare the tiktoken counts with the library's on real samples, as they are encoded;
        on any difference stop using tiktoken (later counts come from the library: still exact)."""
        if self.fast is None:
            return
        texts = self._texts("user", prompts) + self._texts("assistant", responses)
        mine = [t for t in texts if self.fast.takes(t)]
        if mine and self.fast.lengths(mine) != [len(e) for e in self.backend.encode_batch(mine, add_special_tokens=False)]:
            self.fast = None

    # -- counting ---------------------------------------------------------------------
    def _texts(self, role: str, contents: Sequence[str]) -> list[str]:
        """The texts encoded for messages of `role` (template constants aside)."""
        template = self.templates[role]
        if template.mode == "render":
            return [self._render(role, c) for c in contents]
        head, tail = template.head, template.tail
        return [head + c + tail for c in contents] if head or tail else list(contents)

    def _message_lengths(self, role: str, contents: Sequence[str]) -> np.ndarray:
        return self._encode_lengths(self._texts(role, contents)) + self.templates[role].constant

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
