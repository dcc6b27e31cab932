"""prepare_data's private scratch folder in the output directory, and the removal of those killed runs left.

Usage (internal; prepare_data drives it):
    with run_scratch(out) as (tmp_dir, removed):   # removed: stale folders of killed runs, deleted first
        ...                                          # spill files, parts; the folder is deleted on exit

A run works in `OUT/.prepare_data-XXXXXXXX/` (same file system as its outputs, so publishing is a
rename) and holds an exclusive lock (flock) on the folder's `run.lock` for its whole life; its worker
processes share the lock and die with the run (sft.dataprep.workers). A run killed outright (SIGKILL,
out of memory, power) cannot delete its folder, so the next run into the same OUT deletes every
`.prepare_data-*` folder whose lock nobody holds. A live run's folder keeps its lock and is left alone:
two runs may share OUT's parent safely. Without flock (Windows), the pid written in `run.lock` decides.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

PREFIX = ".prepare_data-"
LOCK_NAME = "run.lock"
UNLOCKED_GRACE_S = 60.0
"""A folder without a lock file (a run between creating it and locking it, or an older version's) is stale after this."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _is_stale(folder: Path) -> bool:
    lock = folder / LOCK_NAME
    try:
        handle = open(lock, "r+")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        try:
            return time.time() - folder.stat().st_mtime > UNLOCKED_GRACE_S
        except OSError:
            return False
    except OSError:
        return False
    with handle:
        if fcntl is None:
            text = handle.read().strip()
            return not (text.isdigit() and _pid_alive(int(text)))
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False  # a live run holds it
        fcntl.flock(handle, fcntl.LOCK_UN)
        return True


def remove_stale(out: Path) -> list[str]:
    """Delete the scratch folders of killed runs in `out`; their names and sizes, for the manifest's warnings."""
    removed = []
    for folder in sorted(out.glob(PREFIX + "*")):
        if not folder.is_dir() or folder.is_symlink() or not _is_stale(folder):
            continue
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            removed.append(f"{folder.name} ({size / 1e6:.1f} MB)")
    return removed


@contextlib.contextmanager
def run_scratch(out: Path) -> Iterator[tuple[Path, list[str]]]:
    """This run's locked scratch folder in `out` (deleted afterwards, whatever happens), and the stale
    folders of killed runs deleted before it was made."""
    removed = remove_stale(out)
    folder = Path(tempfile.mkdtemp(prefix=PREFIX, dir=out))
    lock = open(folder / LOCK_NAME, "w")  # noqa: SIM115 - closed below
    try:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        yield folder, removed
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        lock.close()
