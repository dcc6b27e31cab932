"""Checkpoint and stop on request: loaded into every trainer process while SFT_STOP_FILE is set.

Usage (the launchers load it when SFT_STOP_FILE is in the environment; slurm/lib/sft_slurm.sh
sets it and creates the file when Slurm signals that the time limit is near, tested end to end
in tests/test_slurm.py); anyone can use it by hand:
    SFT_STOP_FILE=/tmp/stop scripts/run_sft_training.sh ...   # later: touch /tmp/stop

Creating that file makes the run save a checkpoint at the end of the current step and exit with
status 0. verl's trainer cannot be told "save now and exit". Here every rank asks at the end of
each training step (after the optimizer and learning-rate scheduler stepped) whether rank 0 sees
that file; one all-reduce of a single integer makes all ranks agree, so they stop at the same
step. The trainer is then told that this step is its last (`total_training_steps`, which verl's
`fit()` reads at every step, and nothing else uses after start-up), so verl itself logs the step,
saves a regular checkpoint (model, optimizer, scheduler, RNG, data loader; tracker file last,
atomically), returns from `fit()` and the processes exit with status 0. Validation is skipped on
that step. Rank 0 then deletes the file. Rerunning the same command resumes from that step and
repeats none. Signals are not used because torchrun kills its workers 30 s after forwarding
SIGTERM, too short to save a large model, and a file on the shared output directory reaches
every node. The verl functions replaced here go through sft/verl_plugins/compat.py.
"""

from __future__ import annotations

import os
import sys

import torch

from sft.verl_plugins import compat

STOP_FILE_VARIABLE = "SFT_STOP_FILE"
_stop_at_step: int | None = None


def stop_requested(stop_file: str) -> bool:
    """True on every rank when rank 0 sees `stop_file` (a collective call: every rank must make it)."""
    from verl.utils.device import get_device_id, get_device_name

    seen = int(torch.distributed.get_rank() == 0 and os.path.exists(stop_file))
    device = "cpu" if get_device_name() == "cpu" else f"{get_device_name()}:{get_device_id()}"
    flag = torch.tensor([seen], dtype=torch.int32, device=device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return bool(flag.item())


def _fit_state():
    """(trainer, global_step) read from the running SFTTrainer.fit frame (other hooks may wrap this one)."""
    frame = sys._getframe(2)
    for _ in range(8):
        if frame is None:
            break
        if frame.f_code.co_name == "fit" and "global_step" in frame.f_locals:
            return frame.f_locals.get("self"), frame.f_locals["global_step"]
        frame = frame.f_back
    return None, None


def _step_profile(self) -> None:
    global _stop_at_step
    _original_step_profile(self)  # sft_trainer.fit calls it once per step, right after train_batch
    stop_file = os.environ.get(STOP_FILE_VARIABLE, "")
    if not stop_file or _stop_at_step is not None or not stop_requested(stop_file):
        return
    trainer, step = _fit_state()
    if not hasattr(trainer, "total_training_steps") or not isinstance(step, int):
        if torch.distributed.get_rank() == 0:
            print("[verl-sft] warning: stop requested, but the running SFTTrainer.fit is not the one "
                  "sft/verl_plugins/stop_file.py knows; training on (the last SAVE_FREQ checkpoint stays)", flush=True)
        _stop_at_step = -1
        return
    _stop_at_step = step
    trainer.total_training_steps = step  # fit() ends after this step: logs it, saves, returns
    trainer.val_dataloader = None  # no validation pass before stopping
    trainer.test_freq = -1
    if torch.distributed.get_rank() == 0:
        print(f"[verl-sft] stop requested ({stop_file} exists): step {step} is the last of this run; "
              "saving a checkpoint", flush=True)


def _save_checkpoint(self, step):
    _original_save_checkpoint(self, step)
    if step == _stop_at_step and self.rank == 0:
        try:
            os.remove(os.environ[STOP_FILE_VARIABLE])
        except FileNotFoundError:
            pass
        print(f"[verl-sft] stopped after step {step}; rerun the same command to resume from "
              f"{os.path.join(self.default_local_dir, f'global_step_{step}')}", flush=True)


_HANDLER = "verl/utils/checkpoint/checkpoint_handler.py:CheckpointHandler"
compat.relies_on("verl/trainer/sft_trainer.py:SFTTrainer.fit", __name__)  # its global_step, total_training_steps
_original_step_profile = compat.replace("verl/workers/engine_workers.py:TrainingWorker.step_profile", _step_profile,
                                        __name__)
_original_save_checkpoint = compat.replace(f"{_HANDLER}.save_checkpoint", _save_checkpoint, __name__)
