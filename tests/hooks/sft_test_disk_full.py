"""Test helper loaded into verl's trainer processes: every checkpoint save fails as on a full disk.

Usage (tests only):
    PYTHONPATH=tests/hooks VERL_USE_EXTERNAL_MODULES=sft_test_disk_full scripts/run_sft_training.sh ...

torch.save into a global_step_N directory raises OSError(ENOSPC) after writing nothing, the way
a full file system answers; every other torch.save works. tests/test_faults.py checks that the
run then ends in one line per rank (sft/verl_plugins/checkpoint_fixes.py) and keeps its newest
whole checkpoint.
"""

from __future__ import annotations

import errno
import os

import torch

_original_save = torch.save


def _save(obj, f, *args, **kwargs):
    if isinstance(f, (str, os.PathLike)) and "global_step_" in str(f):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))
    return _original_save(obj, f, *args, **kwargs)


torch.save = _save
