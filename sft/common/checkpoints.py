"""What a verl checkpoint directory holds, without loading it (imported; not a command).

verl 0.9.1 writes OUTPUT_DIR/global_step_N/ with, per rank R of W processes,
`model_world_size_W_rank_R.pt`, `optim_...`, `extra_state_...` (each as checkpoint.save_contents
says) and `data_R.pt` (the data loader's position), then `latest_checkpointed_iteration.txt`
(the tracker) last. A step is complete when every file the resume reads is there and not empty.
Used by the resume fix in the trainer (sft/verl_plugins/checkpoint_fixes.py) and by sft/export.py.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

TRACKER_FILE = "latest_checkpointed_iteration.txt"
STEP_PATTERN = re.compile(r"global_step_(\d+)")
_FILE_PREFIX = {"model": "model", "optimizer": "optim", "extra": "extra_state"}


def step_number(path: str | os.PathLike) -> int | None:
    match = STEP_PATTERN.fullmatch(Path(path).name)
    return int(match.group(1)) if match else None


def step_directories(output_dir: str | os.PathLike) -> list[Path]:
    """The global_step_N directories of `output_dir`, oldest first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    steps = [p for p in output_dir.iterdir() if step_number(p) is not None and p.is_dir()]
    return sorted(steps, key=step_number)


def expected_files(world_size: int, contents=("model", "optimizer", "extra"),
                   data_ranks: int | None = None) -> list[str]:
    """The file names a resume of `world_size` processes reads (`contents`: checkpoint.load_contents)."""
    names = [f"{_FILE_PREFIX[kind]}_world_size_{world_size}_rank_{rank}.pt"
             for kind in ("model", "optimizer", "extra") if kind in contents for rank in range(world_size)]
    return names + [f"data_{rank}.pt" for rank in range(world_size if data_ranks is None else data_ranks)]


def missing_files(step_dir: str | os.PathLike, names: list[str]) -> list[str]:
    """The `names` that are absent or empty in `step_dir`."""
    step_dir = Path(step_dir)
    missing = []
    for name in names:
        try:
            if (step_dir / name).stat().st_size == 0:
                missing.append(name)
        except OSError:
            missing.append(name)
    return missing


def tracked_step(output_dir: str | os.PathLike) -> int | None:
    """The step the tracker names, or None (no tracker, or not a number)."""
    try:
        return int((Path(output_dir) / TRACKER_FILE).read_text().strip())
    except (OSError, ValueError):
        return None


def newest_complete(output_dir: str | os.PathLike, names: list[str], up_to: int | None = None) -> Path | None:
    """The newest global_step_N of `output_dir` (N <= up_to) holding every one of `names`, or None."""
    for step_dir in reversed(step_directories(output_dir)):
        if (up_to is None or step_number(step_dir) <= up_to) and not missing_files(step_dir, names):
            return step_dir
    return None


def damaged_files(step_dir: str | os.PathLike, names: list[str]) -> list[str]:
    """The `names` absent, empty, or not a whole torch.save archive (its zip directory, at the end, is read)."""
    import zipfile

    damaged = missing_files(step_dir, names)
    for name in names:
        if name in damaged:
            continue
        try:
            with zipfile.ZipFile(Path(step_dir) / name):
                pass
        except (OSError, zipfile.BadZipFile):
            damaged.append(name)
    return damaged


def _why_not(step_dir: Path, tracked: bool, names: list[str]) -> str | None:
    """Why `step_dir` cannot be resumed from, or None when it is whole."""
    named = f"{step_dir.name} (named by {TRACKER_FILE})" if tracked else step_dir.name
    if not step_dir.is_dir():
        return f"{named} is gone"
    damaged = damaged_files(step_dir, names)
    if not damaged:
        return None
    return f"{named} lacks or has damaged {', '.join(damaged[:3])}{' ...' if len(damaged) > 3 else ''}"


def resume_point(output_dir: str | os.PathLike, names: list[str]) -> tuple[Path | None, str | None]:
    """(the step directory a resume should load, or None for a fresh start; a note when it is not the tracker's).

    The tracker's step when it is whole. Otherwise (its files deleted or damaged, its directory gone,
    or no tracker beside global_step_N directories) the newest whole step below it. Raises
    ValueError when there are step directories but none is whole (a fresh start would overwrite them).
    """
    output_dir = Path(output_dir)
    tracked, steps = tracked_step(output_dir), step_directories(output_dir)
    if not steps:  # nothing a fresh start could overwrite
        return None, (f"{TRACKER_FILE} names global_step_{tracked}, and no global_step_N is left: starting from the "
                      "beginning" if tracked is not None else None)
    newest = output_dir / f"global_step_{tracked}" if tracked is not None else steps[-1]
    why = _why_not(newest, tracked is not None, names)
    if why is None:
        return newest, (None if tracked is not None else f"resuming from {newest.name}: {TRACKER_FILE} is missing")
    if tracked is None:
        why = f"{TRACKER_FILE} is missing and {why}"
    older = [p for p in reversed(steps) if p != newest and (tracked is None or step_number(p) <= tracked)]
    for step_dir in older:
        if not damaged_files(step_dir, names):
            return step_dir, f"resuming from {step_dir.name}: {why}"
    also = "".join(f"; {_why_not(p, False, names)}" for p in older[:2])
    raise ValueError(f"no complete checkpoint to resume from in {output_dir}: {why}{also}. Move the global_step_* "
                     "directories away (or delete them) to start over, or set another OUTPUT_DIR.")
