"""Model and tokenizer directories checked before work starts on them (imported; not a command).

    check_model_weights(directory)       the weight files are there and whole (safetensors headers, shard
                                         lists, torch zip archives), read without loading a tensor
    check_tokenizer_dir(directory)       the directory's tokenizer encodes text (tokenizer.json with the
                                         `tokenizers` library; only slow-tokenizer files: with transformers)
    checked_tokenizer(tokenizer, name)   a loaded transformers tokenizer encodes text; returns it

Used by the launcher (MODEL_NAME, before torchrun), sft/export.py, sft/evaluate.py and
sft/text/chat_format.py's load_tokenizer (prepare_data --tokenizer, generation).

Why a tokenizer is probed: transformers 5 builds a tokenizer even when a directory has neither
tokenizer.json nor the vocabulary files its class converts from (AutoTokenizer picks the class
from config.json, e.g. Qwen2Tokenizer, and gives it an empty vocabulary): the result knows only
the special tokens of tokenizer_config.json and encodes every text to no tokens at all. Data
preparation then counts each sample as the 2 special tokens its chat template adds, training
trains on those, and generation writes empty outputs, all with exit status 0. A probe sentence
that encodes to nothing (or only to the unknown token) is refused here, whatever the cause.
"""

from __future__ import annotations

import json
import os
import struct
import zipfile
from pathlib import Path

from sft.common.errors import UserError

PROBE = "The answer is 42, because 6 x 7 = 42."
SAFETENSORS_INDEX, BIN_INDEX = "model.safetensors.index.json", "pytorch_model.bin.index.json"
SINGLE_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# Files a tokenizer class can build its vocabulary from when tokenizer.json is absent.
SLOW_TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model",
                        "vocab.txt", "tokenizer.tiktoken", "qwen.tiktoken")
_FIX_TOKENIZER = ("Copy tokenizer.json (and tokenizer_config.json) from the base model the weights came from into "
                  "{where}.")


class ModelFilesError(UserError):
    """A model or tokenizer directory is incomplete or damaged; the message names the file and the fix."""


# ---------------------------------------------------------------------------------------------
# Weights.


def _safetensors_problem(path: Path) -> str | None:
    """Why `path` is not a whole safetensors file (its header names every tensor's byte range), or None."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            raw = handle.read(8)
            if len(raw) < 8:
                return f"{path.name} is {size} bytes long, too short for a safetensors file"
            (header_length,) = struct.unpack("<Q", raw)
            if header_length > min(size, 100 << 20):
                return f"{path.name} does not start with a safetensors header"
            header = json.loads(handle.read(header_length))
    except OSError as exc:
        return f"{path.name} cannot be read ({exc.strerror})"
    except ValueError:
        return f"{path.name} has a damaged safetensors header"
    ends = [entry["data_offsets"][1] for key, entry in header.items()
            if key != "__metadata__" and isinstance(entry, dict) and "data_offsets" in entry]
    needed = 8 + header_length + max(ends, default=0)
    if size < needed:
        return f"{path.name} is truncated ({size:,} of {needed:,} bytes)"
    return None


def _zip_problem(path: Path) -> str | None:
    """Why a torch.save file is not whole (its zip directory is at the end), or None (old pickle format: unchecked)."""
    try:
        with open(path, "rb") as handle:
            if handle.read(2) != b"PK":
                return None
        with zipfile.ZipFile(path):
            return None
    except OSError as exc:
        return f"{path.name} cannot be read ({exc.strerror})"
    except zipfile.BadZipFile:
        return f"{path.name} is truncated or damaged"


def _weight_files(directory: Path) -> tuple[list[Path], str | None]:
    """(the weight files the directory's index or single file names, a problem with the index)."""
    for index_name in (SAFETENSORS_INDEX, BIN_INDEX):
        index = directory / index_name
        if index.is_file():
            try:
                names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                return [], f"{index_name} is not a readable index (no weight_map)"
            return [directory / name for name in names], None
    return [directory / name for name in SINGLE_WEIGHT_FILES if (directory / name).is_file()], None


def check_model_weights(directory: str | os.PathLike, what: str = "model directory") -> None:
    """Raise ModelFilesError unless `directory` holds whole weight files (checked by size, not loaded)."""
    directory = Path(directory)
    files, problem = _weight_files(directory)
    fix = "Copy the model again (or save it again with save_pretrained), then rerun."
    if problem:
        raise ModelFilesError(f"{what} {directory}: {problem}. {fix}")
    if not files:
        raise ModelFilesError(
            f"{what} {directory} has no weights (none of {', '.join(SINGLE_WEIGHT_FILES + (SAFETENSORS_INDEX,))}). "
            "Point at a directory saved with save_pretrained, or finish downloading the model.")
    for path in files:
        if not path.is_file():
            problem = f"{path.name} (listed in its index) is missing"
        elif path.suffix == ".safetensors":
            problem = _safetensors_problem(path)
        else:
            problem = _zip_problem(path)
        if problem:
            raise ModelFilesError(f"{what} {directory}: {problem}. {fix}")


# ---------------------------------------------------------------------------------------------
# Tokenizers.


def _probe_problem(ids: list[int], unknown: int | None, decoded: str) -> str | None:
    if not ids:
        return "encodes text to no tokens at all (its vocabulary is empty)"
    if unknown is not None and all(i == unknown for i in ids):
        return "encodes text to the unknown token only"
    if "42" not in decoded.replace(" ", ""):
        return f"does not decode its own tokens back to the text (got {decoded[:60]!r})"
    return None


def checked_tokenizer(tokenizer, name: str, error: type[Exception] = ModelFilesError):
    """Return `tokenizer` (transformers) after checking that it encodes a probe sentence; raise `error` if not."""
    ids = list(tokenizer.encode(PROBE, add_special_tokens=False))
    problem = _probe_problem(ids, getattr(tokenizer, "unk_token_id", None), tokenizer.decode(ids))
    if problem:
        where = Path(name) if Path(name).is_dir() else "the tokenizer directory"
        files = sorted(p.name for p in Path(name).iterdir()) if Path(name).is_dir() else []
        raise error(f"the tokenizer of {name} {problem}: every sample would count only its special tokens "
                    f"(files there: {', '.join(files) or 'none'}). " + _FIX_TOKENIZER.format(where=where))
    return tokenizer


def check_tokenizer_dir(directory: str | os.PathLike, trust_remote_code: bool = False) -> None:
    """Raise ModelFilesError unless the tokenizer saved in `directory` encodes text."""
    directory = Path(directory)
    fast = directory / "tokenizer.json"
    if fast.is_file():
        from tokenizers import Tokenizer

        try:
            tokenizer = Tokenizer.from_file(str(fast))
        except Exception as exc:  # the Rust library raises its own exception type for any unreadable file
            raise ModelFilesError(f"{fast} cannot be read ({str(exc).splitlines()[0][:200]}). "
                                  + _FIX_TOKENIZER.format(where=directory)) from None
        ids = tokenizer.encode(PROBE, add_special_tokens=False).ids
        unknown = getattr(tokenizer.model, "unk_token", None)
        problem = _probe_problem(ids, tokenizer.token_to_id(unknown) if unknown else None, tokenizer.decode(ids))
        if problem:
            raise ModelFilesError(f"{fast} {problem}. " + _FIX_TOKENIZER.format(where=directory))
        return
    if not any((directory / name).is_file() for name in SLOW_TOKENIZER_FILES):
        raise ModelFilesError(
            f"{directory} has no tokenizer: no tokenizer.json and none of {', '.join(SLOW_TOKENIZER_FILES)}; "
            "transformers would build a tokenizer that encodes every text to nothing. "
            + _FIX_TOKENIZER.format(where=directory))
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory), trust_remote_code=trust_remote_code)
    except (OSError, ValueError, ImportError) as exc:
        raise ModelFilesError(f"the tokenizer of {directory} does not load ({str(exc).splitlines()[0][:200]}). "
                              + _FIX_TOKENIZER.format(where=directory)) from None
    checked_tokenizer(tokenizer, str(directory))
