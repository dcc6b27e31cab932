"""Token ids of texts exactly as the model's tokenizer gives them (tiktoken where it is exact); length summaries.

Usage (as a library; sft/text/chat_format.py encodes every conversation through it):
    from sft.text.chat_tokens import TextTokenizer, length_summary
    texts = TextTokenizer(tokenizer)
    ids = texts.encode_batch(["<|im_start|>user\\nWhat is 2+2?<|im_end|>\\n", "4<|im_end|>"])
    summary = length_summary(counts, max_length=4096)

`TextTokenizer.encode_batch(texts)` returns, for each text, the ids that
`tokenizer(text, add_special_tokens=False)` returns (what `apply_chat_template(...,
tokenize=True)` does with a rendered template). For byte-level BPE tokenizers (Qwen2/2.5/3,
Llama 3, DeepSeek distills, Mistral's Tekken, GPT-2 and the like) it is about 3x faster than the
`tokenizers` library: texts are split at the tokenizer's added tokens (`<|im_start|>`,
`<|eot_id|>`, ... exactly as `tokenizers` splits them first), added tokens map to their ids, ASCII
pieces are encoded by tiktoken built from the same vocabulary and pre-tokenizer pattern, and
everything else by the library (`_TiktokenPieces`). That path is kept only when the tokenizer
is plain byte-level BPE and its ids equal the library's on a battery of texts; `check` compares
real texts too and drops it on any difference (later ids come from the library: still exact).
`text_encoder` names which path is in use; sft/prepare_data.py records it in the Parquet files
it writes, and training (sft/verl_plugins/sft_dataset.py) builds the same path, so the ids it trains on are
the ids prepare_data counted.
"""

from __future__ import annotations

import math
import re
from typing import Sequence

import numpy as np

BATCH_TEXTS = 512
TEXT_ENCODER_TIKTOKEN = "tiktoken+tokenizers"
"""`text_encoder` when ASCII pieces go through tiktoken (checked equal) and the rest through tokenizers."""
TEXT_ENCODER_LIBRARY = "tokenizers"
TEXT_ENCODER_PYTHON = "python"

# The GPT-2 pre-tokenizer pattern, used by a ByteLevel pre-tokenizer with use_regex=True.
_GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
_UNICODE_NORMALIZERS = ("NFC", "NFD", "NFKC", "NFKD")  # all leave ASCII text unchanged


def _self_test_texts(added: Sequence[str]) -> list[str]:
    """Texts that exercise the pre-tokenizer pattern, the merges and the split at added tokens:
    math, code, whitespace runs, contractions, digits, punctuation, chat markup, seeded random
    printable text, and the same with the tokenizer's own added tokens between the pieces."""
    import random

    texts = [
        "x", "", " ", "\n", "\n\nStep 1: 12 + 35 = 47.", "  leading spaces", "\tTabbed\n", "trailing newline\n",
        "trailing spaces   ", "\r\nwindows line\r\n", "{{ not a template }} {% raw %}",
        "user\nSolve: 12 + 35 = ?", "assistant\nStep 1: 12 + 35 = 47.\n\nStep 2: so $\\boxed{47}$.",
        "1234567890 3.14159 -42 1e-5 0.000001 99,999", "$\\frac{a}{b} + x^{2} - y_{i} \\cdot \\sqrt{3}$",
        "a  b   c\t\td\n\n\n  e \r\n f", "def f(x):\n    return x**2  # comment\n", "!!! ??? ... --- *** ((( )))",
        "it's I'm we'll they've she'd IT'S WE'LL", "HELLO World  Mixed CASE words", "   ", " leading", "trailing ",
        "<think>\nLet me think.\n</think>\n\nThe answer is 4.", "Ünïcödé ∑ x² — 数学 \\boxed{\\frac{1}{2}}", "é\u0301 ﬁ",
    ]
    rng = random.Random(0)
    alphabet = [chr(c) for c in range(32, 127)] + ["\n", "\t", " ", " ", "\r\n"] + list("0123456789")
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 300))) for _ in range(300)]
    if added:
        marks = list(added)
        texts += [
            "".join(rng.choice(marks) + rng.choice(texts[:40]) for _ in range(rng.randint(1, 6))) for _ in range(120)
        ]
        texts += [m + "\n" for m in marks] + ["\n" + m for m in marks] + [m + m for m in marks]
    return texts


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


def _threads() -> int:
    """tiktoken's batch threads: one per core unless the caller asked `tokenizers` for one."""
    import os

    if os.environ.get("TOKENIZERS_PARALLELISM", "").lower() in ("false", "0", "no", "off"):
        return 1
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return os.cpu_count() or 1


class _TiktokenPieces:
    """tiktoken for the ASCII pieces of texts, for byte-level BPE tokenizers: several times faster
    than `tokenizers` and the same ids.

    Built only when the tokenizer is plain byte-level BPE (a Split regex + ByteLevel, or ByteLevel
    with its own regex; no normaliser but a Unicode normal form, which leaves ASCII unchanged), and
    kept only if its ids equal the library's on `_self_test_texts`. When no added token swallows
    whitespace or needs word boundaries (no lstrip/rstrip/single_word flag), texts are split at
    added tokens as `tokenizers` splits them (only ASCII texts when some added token is matched
    on normalised text); otherwise a text that contains an added token's text is left to the
    library whole. Non-ASCII pieces always go to the library.
    """

    def __init__(self, encoding, added: dict[str, int], splits: bool, ascii_only: bool = False):
        self.encoding = encoding
        self.added = added
        pattern = "|".join(re.escape(t) for t in sorted(added, key=len, reverse=True))
        self.split_re = re.compile(f"({pattern})") if added and splits else None
        self.search_re = re.compile(pattern) if added else None
        self.ascii_only = ascii_only
        """Some added tokens are matched on normalised text: only ASCII texts (which the Unicode
        normal forms leave unchanged) are split here."""

    @classmethod
    def build(cls, backend) -> _TiktokenPieces | None:
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
        decoder = backend.get_added_tokens_decoder()
        added = {token.content: token_id for token_id, token in decoder.items() if token.content}
        splits = not any(t.lstrip or t.rstrip or t.single_word for t in decoder.values())
        normalized = any(t.normalized for t in decoder.values())
        pieces = cls(encoding, added, splits, ascii_only=normalized)
        texts = _self_test_texts(list(added)[:64])
        library = [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
        return pieces if _encode(pieces, backend, texts) == library else None

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

    def pieces(self, text: str) -> list[str] | None:
        """`text` split at added tokens (odd positions hold added tokens), or None when the library
        must encode it whole."""
        if self.split_re is not None and (not self.ascii_only or text.isascii()):
            return self.split_re.split(text)
        if self.search_re is not None and self.search_re.search(text):
            return None
        return [text]

    def encode_ascii(self, texts: list[str]) -> list[list[int]]:
        """Ids of ASCII texts; large batches in one contiguous slice per core (tiktoken releases the
        GIL), not one thread-pool task per text as encode_ordinary_batch does: texts are many and small."""
        encode = self.encoding.encode_ordinary
        threads = _threads()
        if threads == 1 or sum(map(len, texts)) < 1 << 16:
            return [encode(text) for text in texts]
        from concurrent.futures import ThreadPoolExecutor

        bounds = np.linspace(0, len(texts), threads + 1).astype(int)
        with ThreadPoolExecutor(threads) as pool:
            parts = pool.map(lambda span: [encode(text) for text in texts[span[0]:span[1]]], zip(bounds[:-1], bounds[1:]))
            return [ids for part in parts for ids in part]


def _library_ids(backend, texts: list[str]) -> list[list[int]]:
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
    ids: list[list[int]] = []
    for start in range(0, len(texts), BATCH_TEXTS):
        ids.extend(e.ids for e in encode(texts[start : start + BATCH_TEXTS], add_special_tokens=False))
    return ids


def _encode(tiktoken: _TiktokenPieces, backend, texts: Sequence[str]) -> list[list[int]]:
    """Ids of `texts` with tiktoken for ASCII pieces, the added-token table and the library for the rest."""
    plan: list[list] = []  # per text: ids (list) or ("a"|"l", index into the batches)
    ascii_batch: list[str] = []
    library_batch: list[str] = []
    for text in texts:
        parts = tiktoken.pieces(text)
        if parts is None:
            plan.append([("l", len(library_batch))])
            library_batch.append(text)
            continue
        steps: list = []
        for position, part in enumerate(parts):
            if position % 2:
                steps.append([tiktoken.added[part]])
            elif not part:
                continue
            elif part.isascii():
                steps.append(("a", len(ascii_batch)))
                ascii_batch.append(part)
            else:
                steps.append(("l", len(library_batch)))
                library_batch.append(part)
        plan.append(steps)
    ascii_ids = tiktoken.encode_ascii(ascii_batch) if ascii_batch else []
    library_ids = _library_ids(backend, library_batch) if library_batch else []
    out: list[list[int]] = []
    for steps in plan:
        ids: list[int] = []
        for step in steps:
            if type(step) is list:
                ids.extend(step)
            else:
                ids.extend(ascii_ids[step[1]] if step[0] == "a" else library_ids[step[1]])
        out.append(ids)
    return out


class TextTokenizer:
    """Exact token ids of texts (as `tokenizer(text, add_special_tokens=False)`), through tiktoken where exact.

    `use_tiktoken=False` forces the library path (what a Parquet file recorded as counted without
    tiktoken is trained with); `use_tiktoken=None` builds the tiktoken path where it applies
    (`self.tiktoken`, None where it does not or after `check` found a difference).
    """

    def __init__(self, tokenizer, use_tiktoken: bool | None = None):
        self.tokenizer = tokenizer
        self.backend = getattr(tokenizer, "backend_tokenizer", None)
        self.tiktoken = (_TiktokenPieces.build(self.backend)
                         if self.backend is not None and use_tiktoken is not False else None)

    @property
    def text_encoder(self) -> str:
        if self.tiktoken is not None:
            return TEXT_ENCODER_TIKTOKEN
        return TEXT_ENCODER_LIBRARY if self.backend is not None else TEXT_ENCODER_PYTHON

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text; identical texts are encoded once."""
        unique = list(dict.fromkeys(texts))
        if self.tiktoken is not None:
            encoded = _encode(self.tiktoken, self.backend, unique)
        elif self.backend is not None:
            encoded = _library_ids(self.backend, unique)
        else:  # a slow (Python) tokenizer
            encoded = [list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) for text in unique]
        if len(unique) == len(texts):
            return encoded
        known = dict(zip(unique, encoded))
        return [known[text] for text in texts]

    def lengths(self, texts: Sequence[str]) -> np.ndarray:
        return np.fromiter(map(len, self.encode_batch(texts)), dtype=np.int64, count=len(texts))

    def check(self, texts: Sequence[str]) -> bool:
        """Compare the tiktoken path with the library on real texts; on any difference stop using
        it (later ids come from the library). True when nothing differed."""
        if self.tiktoken is None or not texts:
            return True
        texts = list(dict.fromkeys(texts))
        if _encode(self.tiktoken, self.backend, texts) != [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=False)]:
            self.tiktoken = None
            return False
        return True


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


