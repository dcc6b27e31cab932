"""Fixes for verl 0.9.1 bugs that lose training work; loaded into every trainer process.

Usage (the launchers always do this, on CPU and GPU):
    VERL_USE_EXTERNAL_MODULES=sft.verl_plugins.verl_fixes torchrun ... -m verl.trainer.sft_trainer ...

verl imports the modules named in VERL_USE_EXTERNAL_MODULES at the end of `import verl`.

Resume at an epoch boundary (upstream report verl#7401, reproduced here by
tests/test_launchers.py and tests/test_resume.py, which restarts a run SIGKILLed after the
checkpoint that ends an epoch): the trainer saves the data loader's state
inside the step loop, after the epoch's last batch was yielded but before the iterator ran
out. Restoring that state makes the next epoch's iterator replay the finished epoch and stop
at once, so the whole next epoch is skipped; the run then never reaches its last step, and
never writes its final checkpoint. The fix: when the saved state says the epoch's batches were
all consumed, the state is not restored. verl's `fit()` already starts the next epoch
(`global_step // steps_per_epoch`) and calls `sampler.set_epoch`, so a fresh iterator gives
exactly the batches an uninterrupted run would have seen.

Checkpoint rotation across restarts: trainer.max_ckpt_to_keep also removes the checkpoints
that earlier starts of the run saved, which verl forgets on restart (details below).

Checkpoint and stop on request: with SFT_STOP_FILE=<path> in the environment, creating that file
makes the run save a checkpoint at the end of the current step and exit with status 0 (details
below). slurm/lib/sft_slurm.sh uses it when Slurm signals that the time limit is near
(tested end to end in tests/test_slurm.py); anyone can use it by hand:
    SFT_STOP_FILE=/tmp/stop scripts/run_sft_training.sh ...   # later: touch /tmp/stop
"""

from __future__ import annotations

import os
import sys

import torch

from verl.utils.checkpoint import checkpoint_handler

_original_load_dataloader_state = checkpoint_handler.CheckpointHandler._load_dataloader_state


def epoch_was_finished(state: dict, batches_per_epoch: int) -> bool:
    """True when a StatefulDataLoader state was saved after the epoch's last batch."""
    yielded = state.get("_num_yielded", 0) if isinstance(state, dict) else 0
    return batches_per_epoch > 0 and yielded >= batches_per_epoch


def _load_dataloader_state(self, checkpoint_path: str) -> None:
    path = os.path.join(checkpoint_path, f"data_{self.dp_rank}.pt")
    if os.path.exists(path):
        state = torch.load(path, map_location="cpu", weights_only=False)
        if epoch_was_finished(state, len(self.train_dataloader)):
            if self.rank == 0:
                print(
                    f"[verl-sft] {path} was saved at the end of an epoch; starting the next epoch with a fresh "
                    "data loader (works around verl#7401, which would skip that epoch)",
                    flush=True,
                )
            return
    _original_load_dataloader_state(self, checkpoint_path)


checkpoint_handler.CheckpointHandler._load_dataloader_state = _load_dataloader_state


# ---------------------------------------------------------------------------------------------
# Checkpoint rotation across restarts (found while testing requeued Slurm jobs here).
#
# verl's checkpoint manager enforces trainer.max_ckpt_to_keep with a list of the checkpoints it
# saved itself, in memory. A resumed run starts with an empty list, so the checkpoints of every
# earlier start are never removed: each requeue of a job leaves up to max_ckpt_to_keep more
# behind, until the disk quota ends the run. The fix: after resuming from step N, rank 0 (the one
# that rotates) starts the list with the complete checkpoints of this output directory up to N,
# oldest first. Directories past N (a save cut short by the kill) are left alone; the run
# overwrites them when it gets there.


def earlier_checkpoints(output_dir: str, resumed_step: int) -> list[str]:
    """global_step_<n> directories in `output_dir` with n <= resumed_step, oldest first."""
    steps = []
    if os.path.isdir(output_dir):
        for name in os.listdir(output_dir):
            if name.startswith("global_step_") and name[len("global_step_"):].isdigit():
                step = int(name[len("global_step_"):])
                if step <= resumed_step and os.path.isdir(os.path.join(output_dir, name)):
                    steps.append(step)
    return [os.path.join(output_dir, f"global_step_{step}") for step in sorted(steps)]


def _load_checkpoint(self):
    step = _original_load_checkpoint(self)
    manager = getattr(self.engine, "checkpoint_manager", None)
    if step and self.rank == 0 and manager is not None and getattr(manager, "previous_saved_paths", None) == []:
        manager.previous_saved_paths = earlier_checkpoints(self.default_local_dir, step)
    return step


_original_load_checkpoint = checkpoint_handler.CheckpointHandler.load_checkpoint
checkpoint_handler.CheckpointHandler.load_checkpoint = _load_checkpoint


# ---------------------------------------------------------------------------------------------
# Checkpoint and stop on request (used by the Slurm batch files before a time limit).
#
# verl's trainer cannot be told "save now and exit". When SFT_STOP_FILE names a file, every rank
# asks at the end of each training step (after the optimizer and learning-rate scheduler
# stepped) whether rank 0 sees that file; one all-reduce of a single integer makes all ranks
# agree, so they stop at the same step. The trainer is then told that this step is its last
# (`total_training_steps`, which verl's `fit()` reads at every step, and nothing else uses
# after start-up), so verl itself logs the step, saves a regular checkpoint (model, optimizer,
# scheduler, RNG, data loader; tracker file last, atomically), returns from `fit()` and the
# processes exit with status 0. Validation is skipped on that step. Rank 0 then deletes the
# file. Rerunning the same command resumes from that step and repeats none.
# Signals are not used because torchrun kills its workers 30 s after forwarding SIGTERM, too
# short to save a large model, and a file on the shared output directory reaches every node.

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
            print("[verl-sft] warning: stop requested, but this verl's SFTTrainer.fit is not the one "
                  "sft/verl_plugins/verl_fixes.py knows; training on (the last SAVE_FREQ checkpoint stays)", flush=True)
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


if os.environ.get(STOP_FILE_VARIABLE):
    from verl.workers.engine_workers import TrainingWorker

    _original_step_profile = TrainingWorker.step_profile
    TrainingWorker.step_profile = _step_profile
    _original_save_checkpoint = checkpoint_handler.CheckpointHandler.save_checkpoint
    checkpoint_handler.CheckpointHandler.save_checkpoint = _save_checkpoint
