"""Atomic publishing, the one way every command writes its outputs (imported; not a command).

A reader never sees half a file or half a directory, and an interrupted run leaves the
previous output (or nothing) in place:

    with atomic_path("out/summary.json") as tmp:      # a file
        tmp.write_text(...)
    write_json_atomic("out/manifest.json", manifest)   # JSON, the common case
    with staging_directory("exports/model") as tmp:    # a directory, swapped in whole
        model.save_pretrained(tmp)

Temporary names start with "." and live beside the final path (same file system, so the
final `os.replace` is atomic); they are removed on any error, KeyboardInterrupt included.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def make_world_readable(path: str | os.PathLike) -> None:
    """Give a tree the modes of the user's umask (mkdtemp makes 0700, safetensors may write 0600)."""
    umask = _umask()
    for root, _dirs, files in os.walk(path):
        os.chmod(root, 0o777 & ~umask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~umask)


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `final`; on success it replaces `final`, on error it is removed."""
    final = Path(final)
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private; outputs are ordinary files
    try:
        yield Path(tmp)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically, creating its parent directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, value: Any) -> None:
    """Write `value` as indented JSON (numpy values allowed) to `path` atomically."""
    import orjson

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_bytes(orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY) + b"\n")


@contextlib.contextmanager
def scratch_directory(beside: str | os.PathLike, prefix: str | None = None) -> Iterator[Path]:
    """A private temporary directory in `beside`'s parent (same file system), removed afterwards."""
    beside = Path(beside)
    beside.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix or f".{beside.name}.tmp-", dir=beside.parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish_directory(built: str | os.PathLike, final: str | os.PathLike) -> None:
    """Move the finished directory `built` to `final`, replacing what is there.

    Two renames: the old `final` is moved aside and deleted only once the new one is in place,
    so an interruption leaves either the old or the new directory, never a mix.
    """
    built, final = Path(built), Path(final)
    make_world_readable(built)
    previous = built.parent / f".{final.name}.previous-{os.getpid()}"
    if final.exists():
        os.replace(final, previous)
    try:
        os.replace(built, final)
    except BaseException:
        if previous.exists():
            os.replace(previous, final)
        raise
    shutil.rmtree(previous, ignore_errors=True)


@contextlib.contextmanager
def staging_directory(final: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty directory beside `final`; on success it replaces `final` whole (publish_directory)."""
    final = Path(final)
    with scratch_directory(final) as tmp:
        built = tmp / "staged"
        built.mkdir()
        yield built
        publish_directory(built, final)
