"""Fixes for verl 0.9.1's checkpoints that lose training work; loaded into every trainer process.

Usage (the launchers always do this, on CPU and GPU):
    VERL_USE_EXTERNAL_MODULES=sft.verl_plugins.checkpoint_fixes torchrun ... -m verl.trainer.sft_trainer ...

verl imports the modules named in VERL_USE_EXTERNAL_MODULES at the end of `import verl`. Every
verl function replaced here goes through sft/verl_plugins/compat.py, which checks it first.

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

A damaged newest checkpoint: verl resumes from the step latest_checkpointed_iteration.txt names
(a save cut short never updates it), loads its files and fails with a traceback on every rank
when one was deleted since, and silently starts over from step 0 when the directory is gone. Here
the newest whole step is loaded instead, with a note (sft/common/checkpoints.py `resume_point`;
the launcher runs the same check before torchrun and refuses when no step is whole).

A full disk (or a lost permission) during a save: verl's torch.save fails with a traceback on
every rank. Here each rank that fails says in one line which checkpoint could not be written and
that the newest whole one is kept (the tracker still names it), and the run ends with status 1.
"""

from __future__ import annotations

import os

import torch

from sft.common.checkpoints import expected_files, resume_point, step_directories, step_number
from sft.common.files import write_failure
from sft.verl_plugins import compat

_HANDLER = "verl/utils/checkpoint/checkpoint_handler.py:CheckpointHandler"
compat.relies_on("verl/trainer/sft_trainer.py:SFTTrainer.fit", __name__)  # starts the next epoch from global_step


def epoch_was_finished(state: dict, batches_per_epoch: int) -> bool:
    """True when a StatefulDataLoader state was saved after the epoch's last batch."""
    yielded = state.get("_num_yielded", 0) if isinstance(state, dict) else 0
    return batches_per_epoch > 0 and yielded >= batches_per_epoch


def _load_dataloader_state(self, checkpoint_path: str) -> None:
    path = os.path.join(checkpoint_path, f"data_{self.dp_rank}.pt")
    if os.path.exists(path):
        state = torch.load(path, map_location="cpu", weights_only=True)  # plain containers of numbers
        if epoch_was_finished(state, len(self.train_dataloader)):
            if self.rank == 0:
                print(
                    f"[verl-sft] {path} was saved at the end of an epoch; starting the next epoch with a fresh "
                    "data loader (works around verl#7401, which would skip that epoch)",
                    flush=True,
                )
            return
    _original_load_dataloader_state(self, checkpoint_path)


_original_load_dataloader_state = compat.replace(f"{_HANDLER}._load_dataloader_state", _load_dataloader_state,
                                                 __name__)


# ---------------------------------------------------------------------------------------------
# Checkpoint rotation across restarts (found while testing requeued Slurm jobs here).
#
# verl's checkpoint manager enforces trainer.max_ckpt_to_keep with a list of the checkpoints it
# saved itself, in memory. A resumed run starts with an empty list, so the checkpoints of every
# earlier start are never removed: each requeue of a job leaves up to max_ckpt_to_keep more
# behind, until the disk quota ends the run. The fix: after resuming from step N, rank 0 (the one
# that rotates) starts the list with the checkpoints of this output directory up to N, oldest
# first. Directories past N (a save cut short by the kill) are left alone; the run overwrites
# them when it gets there.


def earlier_checkpoints(output_dir: str, resumed_step: int) -> list[str]:
    """global_step_<n> directories in `output_dir` with n <= resumed_step, oldest first."""
    return [str(p) for p in step_directories(output_dir) if step_number(p) <= resumed_step]


def _load_checkpoint(self):
    step = _original_load_checkpoint(self)
    manager = getattr(self.engine, "checkpoint_manager", None)
    if step and self.rank == 0 and manager is not None and getattr(manager, "previous_saved_paths", None) == []:
        manager.previous_saved_paths = earlier_checkpoints(self.default_local_dir, step)
    return step


_original_load_checkpoint = compat.replace(f"{_HANDLER}.load_checkpoint", _load_checkpoint, __name__)


# ---------------------------------------------------------------------------------------------
# A damaged newest checkpoint: the newest whole one is loaded (see the module docstring).


def resume_files(handler) -> list[str]:
    """The files of a step directory that verl's load_checkpoint reads for this run."""
    manager = handler.engine.checkpoint_manager
    return expected_files(manager.world_size, manager.checkpoint_load_contents,
                          data_ranks=handler.engine.get_data_parallel_size())


def _find_latest_checkpoint(self):
    if not os.path.isdir(self.default_local_dir):
        return None
    try:
        step_dir, note = resume_point(self.default_local_dir, resume_files(self))
    except ValueError as exc:
        if self.rank == 0:
            print(f"[verl-sft] error: {exc}", flush=True)
        raise SystemExit(2) from None
    if step_dir is None:
        return None
    if self.rank == 0:
        if note:
            print(f"[verl-sft] note: {note}", flush=True)
        print(f"Found latest checkpoint: {step_dir} (step {step_number(step_dir)})", flush=True)
    return str(step_dir)


compat.replace(f"{_HANDLER}._find_latest_checkpoint", _find_latest_checkpoint, __name__)


# ---------------------------------------------------------------------------------------------
# A save that fails for a full disk or a permission: one line per rank, exit status 1.


def _save_checkpoint(self, step):
    try:
        _original_save_checkpoint(self, step)
    except Exception as exc:  # writers raise their own types for a full disk (sft/common/files.py write_failure)
        why = write_failure(exc)
        if why is None:
            raise
        try:
            kept = step_number(resume_point(self.default_local_dir, resume_files(self))[0] or "")
        except ValueError:
            kept = None
        print(f"[verl-sft] error (rank {self.rank}): checkpoint global_step_{step} could not be written: {why} "
              f"({getattr(exc, 'filename', None) or self.default_local_dir}). "
              + (f"global_step_{kept} is the newest whole checkpoint; " if kept is not None else "")
              + "free space (or lower trainer.max_ckpt_to_keep) and rerun the same command to resume.", flush=True)
        raise SystemExit(1) from None


_original_save_checkpoint = compat.replace(f"{_HANDLER}.save_checkpoint", _save_checkpoint, __name__)
