"""Test helper loaded into verl's trainer processes: sleep after every training step.

Usage (tests only):
    PYTHONPATH=tests/hooks VERL_USE_EXTERNAL_MODULES=sft_test_step_delay SFT_TEST_STEP_DELAY=1.0 \\
        scripts/run_sft_training.sh ...

Tests that interrupt a run between two checkpoints (SIGKILL, `scontrol requeue`, a stop request)
need a step to take long enough that the interruption lands where they intend, even on a busy
machine. The sleep comes after the step's optimizer update and before verl logs or saves it,
so it changes the timing only, never the numbers.
"""

from __future__ import annotations

import os
import time

from verl.workers.engine_workers import TrainingWorker

_DELAY_SECONDS = float(os.environ.get("SFT_TEST_STEP_DELAY", "0"))
_original_step_profile = TrainingWorker.step_profile


def _step_profile(self) -> None:
    _original_step_profile(self)
    time.sleep(_DELAY_SECONDS)


TrainingWorker.step_profile = _step_profile
