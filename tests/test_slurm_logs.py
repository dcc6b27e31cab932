"""The batch files' log directories exist in a fresh clone: Slurm opens the log before the job runs,
and a job whose log directory is missing fails without a word in any log."""

from __future__ import annotations

import re
import subprocess
from pathlib import PurePosixPath

from conftest import REPO_ROOT

# `#SBATCH --output=PATH`, `#SBATCH --error PATH`, `#SBATCH -o PATH`, `#SBATCH -e PATH`.
_LOG_OPTION = re.compile(r"^#SBATCH\s+(?:--output|--error|-o|-e)(?:=|\s+)(\S+)", re.MULTILINE)


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, cwd=REPO_ROOT, check=True).stdout


def _log_directories() -> dict[str, str]:
    """{directory named by a log option: the batch file naming it} over the tracked slurm/*.slurm."""
    directories = {}
    for batch_file in _git("ls-files", "slurm/*.slurm").split():
        text = (REPO_ROOT / batch_file).read_text()
        for path in _LOG_OPTION.findall(text):
            directories[str(PurePosixPath(path).parent)] = batch_file
    return directories


def test_every_log_directory_of_the_batch_files_is_in_a_clean_checkout():
    directories = _log_directories()
    assert directories, "no #SBATCH --output/--error line found in slurm/*.slurm"
    tracked = set(_git("ls-files").split())
    missing = {}
    for directory, batch_file in directories.items():
        if directory in (".", ""):
            continue
        assert not PurePosixPath(directory).is_absolute() and "%" not in directory, (batch_file, directory)
        if not any(path.startswith(directory + "/") for path in tracked):
            missing[directory] = batch_file
    assert not missing, f"log directories a fresh clone lacks (track a .gitignore in each): {missing}"


def test_the_logs_themselves_stay_untracked():
    for directory in _log_directories():
        ignored = subprocess.run(["git", "check-ignore", "-q", f"{directory}/sft-full-123.out"], cwd=REPO_ROOT)
        assert ignored.returncode == 0, f"{directory}/ does not ignore job logs"
