"""What scripts/gpu_check.py loads into verl's trainer processes: a stop after step N, and a record of loading.

Usage (scripts/gpu_check.py sets these; not for training runs of your own):
    VERL_USE_EXTERNAL_MODULES=sft.bench.check_hooks SFT_CHECK_PROBE_DIR=DIR \\
        [SFT_STOP_FILE=PATH SFT_CHECK_STOP_AFTER=N] scripts/run_sft_training.sh ...

SFT_CHECK_STOP_AFTER=N  rank 0 creates SFT_STOP_FILE at the end of step N, so that
                        sft/verl_plugins/stop_file.py stops the run there with a checkpoint, as
                        slurm/lib/sft_slurm.sh does before a time limit (the step is exact, not a race
                        with a file written from outside).
SFT_CHECK_PROBE_DIR=DIR each rank writes DIR/load_rank<R>.json once sft/verl_plugins/sharded_loading.py
                        has loaded the model: the bytes it read from the safetensors files against their
                        total, the bytes of parameters the rank holds against the whole model's, and the
                        device memory at its peak during loading. A run loaded by verl's own code (FSDP1,
                        SFT_SHARDED_LOADING=0) writes no file.

The launcher puts modules named in the environment before its own plugins, so this one is
imported before stop_file and wraps TrainingWorker.step_profile first: stop_file's stop check,
which wraps it in turn, then sees the file at the end of the same step. Nothing here changes
what is computed.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from sft.verl_plugins import sharded_loading
from verl.workers.engine.fsdp import transformer_impl
from verl.workers.engine_workers import TrainingWorker

if "sft.verl_plugins.stop_file" in sys.modules and os.environ.get("SFT_CHECK_STOP_AFTER"):
    raise RuntimeError("sft.bench.check_hooks must be imported before sft.verl_plugins.stop_file (name it first in "
                       "VERL_USE_EXTERNAL_MODULES), or the stop lands one step late")

_STOP_AFTER = int(os.environ.get("SFT_CHECK_STOP_AFTER", "0") or 0)
_steps_done = 0
_original_step_profile = TrainingWorker.step_profile


def _step_profile(self) -> None:
    global _steps_done
    _original_step_profile(self)  # once per training step (sft_trainer.fit), after the optimizer step
    _steps_done += 1
    if _STOP_AFTER and _steps_done == _STOP_AFTER and torch.distributed.get_rank() == 0:
        Path(os.environ["SFT_STOP_FILE"]).touch()


TrainingWorker.step_profile = _step_profile

# ---------------------------------------------------------------------------------------------
# What sharded loading read and what each rank holds.

_read = {"bytes": 0, "checkpoint_bytes": 0}
_original_init = sharded_loading.CheckpointFiles.__init__
_original_rows = sharded_loading.CheckpointFiles.rows
_original_load = transformer_impl.fsdp2_load_full_state_dict  # sharded_loading's, installed on its import


def _init(self, directory: Path) -> None:
    _original_init(self, directory)
    _read["checkpoint_bytes"] = sum(os.path.getsize(path) for path in set(self.file_of.values()))


def _rows(self, key: str, start: int, end: int) -> torch.Tensor:
    rows = _original_rows(self, key, start, end)
    _read["bytes"] += rows.numel() * rows.element_size()
    return rows


def _parameter_bytes(model) -> tuple[int, int]:
    """(bytes of the parameters this rank holds, bytes of the whole parameters)."""
    from torch.distributed.tensor import DTensor

    held = whole = 0
    for parameter in model.parameters():
        local = parameter.to_local() if isinstance(parameter, DTensor) else parameter
        held += local.numel() * local.element_size()
        whole += parameter.numel() * parameter.element_size()
    return held, whole


def _load(model, full_state, device_mesh=None, cpu_offload=None):
    on_gpu = torch.cuda.is_available() and torch.cuda.is_initialized()
    if on_gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    result = _original_load(model, full_state, device_mesh, cpu_offload)
    held, whole = _parameter_bytes(model)
    record = {"rank": torch.distributed.get_rank(), "world": torch.distributed.get_world_size(),
              "bytes_read": _read["bytes"], "checkpoint_bytes": _read["checkpoint_bytes"],
              "parameter_bytes_held": held, "parameter_bytes_whole": whole, "device": "cuda" if on_gpu else "cpu"}
    if on_gpu:
        torch.cuda.synchronize()
        record.update(allocated_before_load=before, allocated_after_load=torch.cuda.memory_allocated(),
                      peak_allocated_during_load=torch.cuda.max_memory_allocated())
    directory = os.environ.get("SFT_CHECK_PROBE_DIR")
    if directory and _read["bytes"]:  # 0: verl's own loading ran (sharded_loading said why)
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / f"load_rank{record['rank']}.json").write_text(json.dumps(record, indent=2))
    return result


sharded_loading.CheckpointFiles.__init__ = _init
sharded_loading.CheckpointFiles.rows = _rows
transformer_impl.fsdp2_load_full_state_dict = _load
