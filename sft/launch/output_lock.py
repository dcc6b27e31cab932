"""One launch per OUTPUT_DIR: the lock a local launch holds while it trains (imported by sft/launcher.py).

Two trainings writing one OUTPUT_DIR overwrite each other's checkpoints and tracker. The Slurm
batch files refuse a second job by its job id (slurm/lib/sft_slurm.sh); a local launch takes
`OUTPUT_DIR/.launch.lock` with flock(2) and keeps the descriptor open across its exec of
torchrun, so the lock lives exactly as long as the training's torchrun: the kernel releases it
when that process ends in any way (kill -9 included), and a lock file left by a dead launch is
simply taken over. The file records the holder's pid, host and start time for the message a
second launch prints. Where the file system has no flock (some network file systems), the
launch says so and runs unlocked.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from sft.launch.errors import LaunchError

LOCK_FILE = ".launch.lock"
_HELD: dict[Path, int] = {}  # lock file -> descriptor this process holds (until its exec)


def _let_go(path: Path) -> None:
    """A second launch in one process (tests call the launcher in-process, with exec stubbed) first lets go of the
    lock the first one took; in a real launch the exec comes first and this never applies."""
    fd = _HELD.pop(path, None)
    if fd is not None:
        os.close(fd)


def _holder(path: Path) -> str:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        return f"pid {record['pid']} on {record['host']}, started {record['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def _in_use(output_dir: Path, path: Path) -> str:
    return (f"OUTPUT_DIR {output_dir} is in use by another training ({_holder(path)}): two runs in one directory "
            "overwrite each other's checkpoints. Wait for it to end (or stop it), or set EXPERIMENT_NAME or OUTPUT_DIR "
            "for this run.")


def held_by_another(output_dir: Path) -> str | None:
    """The refusal a launch into `output_dir` would get now, or None (checked early; nothing is created)."""
    path = Path(output_dir) / LOCK_FILE
    _let_go(path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        return _in_use(output_dir, path) if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES) else None
    finally:
        os.close(fd)
    return None


def lock_output_dir(output_dir: Path) -> tuple[int | None, str | None]:
    """(the lock's file descriptor, kept open and inheritable across exec; a note). Raises LaunchError when held."""
    path = Path(output_dir) / LOCK_FILE
    _let_go(path)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise LaunchError(f"cannot create {path}: {exc.strerror}. OUTPUT_DIR must be a directory you can write to; "
                          "set OUTPUT_DIR to another place.") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise LaunchError(_in_use(output_dir, path)) from None
        return None, (f"OUTPUT_DIR's file system does not support locks ({exc.strerror}): this launch is not "
                      "protected against a second one into the same OUTPUT_DIR.")
    previous = _holder(path) if path.stat().st_size else None
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
    os.set_inheritable(fd, True)  # torchrun (exec'd next) holds it; its workers do not (Popen closes fds)
    _HELD[path] = fd
    return fd, f"the previous launch into OUTPUT_DIR ({previous}) has ended; this one holds {LOCK_FILE}" if previous \
        else None
