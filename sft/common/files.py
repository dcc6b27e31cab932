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

A full disk or a missing permission while writing is the user's situation, not a bug:
`with writing("the export", "Free some space ..."):` turns it into one OutputError line.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sft.common.errors import UserError


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


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_cwd, rename_exchange = -100, 2
    if renameat2(at_cwd, os.fsencode(first), at_cwd, os.fsencode(second), rename_exchange) == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # a file system without the flag
        return False
    raise OSError(error, os.strerror(error), str(second))


def publish_directory(built: str | os.PathLike, final: str | os.PathLike) -> None:
    """Move the finished directory `built` to `final`, replacing what is there.

    An existing `final` is swapped with `built` in one atomic step where the system can (Linux),
    then deleted; elsewhere it is moved aside first and deleted only once the new one is in
    place. A kill at any point leaves the old or the new directory at `final`, never a mix.
    """
    built, final = Path(built), Path(final)
    make_world_readable(built)
    if final.is_dir() and not final.is_symlink() and _exchange(built, final):
        shutil.rmtree(built, ignore_errors=True)  # the old directory, now at `built`
        return
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


# ---------------------------------------------------------------------------------------------
# A full disk or a missing permission: one line for the user, never a traceback.

_WRITE_ERRNOS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
                 errno.EACCES: "permission denied", errno.EPERM: "permission denied",
                 errno.EROFS: "the file system is read-only", errno.ENOTDIR: "a part of the path is a file",
                 errno.EEXIST: "a file is in the way", errno.EISDIR: "a directory is in the way"}


class OutputError(UserError):
    """An output cannot be written (full disk, permissions); the message names the path and the fix."""


_WRITE_ERROR_TEXTS = (("No space left", errno.ENOSPC), ("StorageFull", errno.ENOSPC), ("os error 28", errno.ENOSPC),
                      ("write failed", errno.ENOSPC), ("Disk quota exceeded", errno.EDQUOT),
                      ("Permission denied", errno.EACCES), ("Read-only file system", errno.EROFS))


def write_failure(exc: BaseException) -> str | None:
    """Why a write failed, in words, when the cause is the user's disk or permissions (else None).

    Not every writer raises OSError: torch.save reports a full disk as RuntimeError("... file write
    failed"), safetensors as SafetensorError("... StorageFull ..."); their texts are recognised.
    """
    if isinstance(exc, OSError) and exc.errno is not None:
        return _WRITE_ERRNOS.get(exc.errno)
    text = str(exc)
    code = next((code for marker, code in _WRITE_ERROR_TEXTS if marker in text), None)
    return None if code is None else _WRITE_ERRNOS[code]


@contextlib.contextmanager
def writing(what: str, fix: str) -> Iterator[None]:
    """Turn a full disk or a permission error inside the block into OutputError("cannot write {what}: ... {fix}")."""
    try:
        yield
    except Exception as exc:  # writers raise their own types (see write_failure); anything else re-raises
        why = write_failure(exc)
        if why is None:
            raise
        where = getattr(exc, "filename", None)
        raise OutputError(f"cannot write {what}: {why}{f' ({where})' if where else ''}. {fix}") from None


def directory_problem(path: str | os.PathLike) -> str | None:
    """Why `path` cannot be (made into) a directory this process writes to, or None."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        return f"{path} is a file, not a directory"
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, so {path} cannot be created"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable by this user"
    return None
