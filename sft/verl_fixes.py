"""Fixes for verl 0.9.1 bugs that lose training work; loaded into every trainer process.

Usage (the launchers always do this, on CPU and GPU):
    VERL_USE_EXTERNAL_MODULES=sft.verl_fixes torchrun ... -m verl.trainer.sft_trainer ...

verl imports the modules named in VERL_USE_EXTERNAL_MODULES at the end of `import verl`.

Resume at an epoch boundary (upstream report verl#7401, reproduced here by
tests/test_launchers.py and tests/test_resume.py): the trainer saves the data loader's state
inside the step loop, after the epoch's last batch was yielded but before the iterator ran
out. Restoring that state makes the next epoch's iterator replay the finished epoch and stop
at once, so the whole next epoch is skipped; the run then never reaches its last step, and
never writes its final checkpoint. The fix: when the saved state says the epoch's batches were
all consumed, the state is not restored. verl's `fit()` already starts the next epoch
(`global_step // steps_per_epoch`) and calls `sampler.set_epoch`, so a fresh iterator gives
exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import os

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
