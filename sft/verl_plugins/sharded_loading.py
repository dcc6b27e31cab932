"""Load each FSDP2 rank's shard straight from the safetensors files; loaded into every trainer process.

Usage (the launchers always do this; SFT_SHARDED_LOADING=0 in the environment leaves it out, so verl loads):
    VERL_USE_EXTERNAL_MODULES=sft.verl_plugins.sharded_loading torchrun ... -m verl.trainer.sft_trainer ...

How verl 0.9.1 loads a model (workers/engine/fsdp/transformer_impl.py `_build_module` and
`_build_fsdp_module`, utils/fsdp_utils.py `get_init_weight_context_manager` and
`fsdp2_load_full_state_dict`): rank 0 reads the whole model into host memory in
engine.model_dtype; the other ranks build it on the meta device; after `fully_shard`, rank 0
broadcasts every tensor and each rank keeps its shard. Rank 0 therefore holds the whole model
and its own shard at once (1.5 copies), and for models with tied embeddings (Qwen2.5-0.5B/1.5B/3B,
Llama-3.2, Gemma) every rank reads the whole model, because verl does not build those on meta.
On one host (a CPU run, or a GPU box where the host has less memory than the GPUs), a 7B model in
bf16 then needs about 28 GB of host memory with two processes before the first step.

Here every rank builds the model on the meta device (accelerate's init_empty_weights, which keeps
buffers such as RoPE's inv_freq real), `fully_shard` shards the meta parameters as before, and
then each rank allocates only its shard and reads its rows of every tensor from the model's
safetensors files (safetensors' get_slice: a memory-mapped read of those rows only), cast to the
parameter's dtype. Nothing is broadcast. Tied weights are one parameter, read once. LoRA
adapters are not in the files: lora_B starts at zero and lora_A gets PEFT's default
initialisation (kaiming uniform, a=sqrt(5)) from a generator seeded by the parameter's name, so
every rank computes the same full matrix and keeps its rows.

Used only where it is exact; otherwise verl's own loading runs, with a line saying why: the
FSDP2 engine, a 1-D device mesh, no CPU offload policy, no pre-trained LoRA adapter, and a local
model directory with model.safetensors or model.safetensors.index.json whose keys cover every
parameter (checked on the meta model before anything is allocated).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from pathlib import Path

import torch

from sft.verl_plugins import compat

_ENGINE = "verl/workers/engine/fsdp/transformer_impl.py"
# verl's _build_module builds the model inside this factory's context; _build_fsdp_module calls
# fsdp2_load_full_state_dict(module, full_state, mesh, offload_policy) right after apply_fsdp2.
_init_weight_context = compat.checked(f"{_ENGINE}:get_init_weight_context_manager", __name__)
compat.relies_on(f"{_ENGINE}:FSDPEngine._build_fsdp_module", __name__)
_PENDING: dict = {}  # the checkpoint files of the model this process built on meta (one engine per process)


class CheckpointFiles:
    """The tensors of a model directory's safetensors files, by key (read lazily, by rows)."""

    def __init__(self, directory: Path):
        index = directory / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            self.file_of = {key: directory / name for key, name in weight_map.items()}
        else:
            from safetensors import safe_open

            single = directory / "model.safetensors"
            with safe_open(str(single), framework="pt") as handle:
                self.file_of = {key: single for key in handle.keys()}
        self._handles: dict[Path, object] = {}
        self._stack = contextlib.ExitStack()

    def _slice(self, key: str):
        """safetensors' lazy view of tensor `key` (its file opened once, memory-mapped)."""
        from safetensors import safe_open

        path = self.file_of[key]
        if path not in self._handles:
            self._handles[path] = self._stack.enter_context(safe_open(str(path), framework="pt"))
        return self._handles[path].get_slice(key)

    def rows(self, key: str, start: int, end: int) -> torch.Tensor:
        piece = self._slice(key)
        return piece[start:end] if piece.get_shape() else piece[:]

    def shape(self, key: str) -> list[int]:
        return list(self._slice(key).get_shape())

    def close(self) -> None:
        self._stack.close()
        self._handles.clear()


def checkpoint_key(name: str) -> str | None:
    """The safetensors key of a (PEFT-wrapped) model's parameter name; None for LoRA adapters."""
    if ".lora_A." in name or ".lora_B." in name:
        return None
    if name.startswith("base_model.model."):
        name = name[len("base_model.model."):]
    return name.replace(".base_layer.", ".")


def why_not(engine) -> str | None:
    """The reason verl's own loading must run for this engine, or None."""
    if os.environ.get("SFT_SHARDED_LOADING", "1") == "0":
        return "SFT_SHARDED_LOADING=0"
    config, model = engine.engine_config, engine.model_config
    if config.strategy != "fsdp2" or config.offload_policy or config.forward_only:
        return "not a plain FSDP2 training engine (strategy, offload policy or forward-only)"
    if getattr(engine, "device_mesh", None) is None or engine.device_mesh.ndim != 1:
        return "the device mesh is not 1-D"
    if getattr(model, "lora_adapter_path", None) or model.model_type != "language_model":
        return "a pre-trained LoRA adapter or a value model"
    directory = Path(model.local_path)
    if not ((directory / "model.safetensors").is_file() or (directory / "model.safetensors.index.json").is_file()):
        return f"{directory} has no model.safetensors(.index.json)"
    return None


def _missing_keys(module, files: CheckpointFiles) -> list[str]:
    missing = []
    for name, parameter in module.named_parameters():
        key = checkpoint_key(name)
        if key is not None and (key not in files.file_of or files.shape(key) != list(parameter.shape)):
            missing.append(key)
    return missing


def _tie_embeddings(module) -> None:
    """Tied input and output embeddings as one parameter: from_pretrained on meta leaves them apart."""
    if not getattr(module.config, "tie_word_embeddings", False):
        return
    module.tie_weights()
    output, inputs = module.get_output_embeddings(), module.get_input_embeddings()
    if output is not None and output.weight is not inputs.weight:
        raise RuntimeError("sharded loading: the tied embeddings could not be tied on the meta model. Set "
                           "SFT_SHARDED_LOADING=0 to load as verl does.")


def _build_module(self):
    reason = why_not(self)
    if reason is not None:
        if self.rank == 0:
            print(f"[verl-sft] loading the model as verl does ({reason}; sft/verl_plugins/sharded_loading.py)",
                  flush=True)
        return _original_build_module(self)
    from accelerate import init_empty_weights

    files = CheckpointFiles(Path(self.model_config.local_path))
    with _init_weight_context(lambda **kwargs: init_empty_weights):
        module = _original_build_module(self)
    _tie_embeddings(module)
    missing = _missing_keys(module, files)
    if missing:
        raise RuntimeError(
            f"sharded loading: {len(missing)} parameters of the model are not in {self.model_config.local_path}'s "
            f"safetensors files with their shape (first: {missing[0]}). Set SFT_SHARDED_LOADING=0 to load as verl does.")
    _PENDING["files"] = files
    return module


def _rows_of(parameter) -> tuple[torch.Tensor, int, int]:
    """(the local tensor to fill, first row, end row) of an FSDP2 dim-0 shard (or a whole tensor)."""
    from torch.distributed.tensor import DTensor, Shard

    if not isinstance(parameter, DTensor):
        return parameter.data, 0, parameter.shape[0] if parameter.dim() else 0
    if tuple(parameter.placements) != (Shard(0),):
        raise RuntimeError(f"sharded loading expects FSDP2's Shard(0) placement, got {parameter.placements}")
    rows, world, rank = parameter.shape[0], parameter.device_mesh.size(), parameter.device_mesh.get_local_rank()
    size = math.ceil(rows / world)
    start = min(rank * size, rows)
    return parameter.to_local(), start, min(start + size, rows)


def initial_adapter(name: str, shape: list[int], dtype: torch.dtype) -> torch.Tensor:
    """PEFT's default LoRA initialisation of the full matrix, the same on every rank (seeded by name)."""
    if ".lora_B." in name:
        return torch.zeros(shape, dtype=dtype)
    generator = torch.Generator().manual_seed(int(hashlib.sha256(name.encode()).hexdigest()[:15], 16))
    weight = torch.empty(shape, dtype=torch.float32)
    torch.nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
    return weight.to(dtype)


def _load_full_state_dict(model, full_state, device_mesh=None, cpu_offload=None):
    files = _PENDING.pop("files", None)
    if files is None:
        return _original_load_full_state_dict(model, full_state, device_mesh, cpu_offload)
    from verl.utils.device import get_device_id

    buffers = {name: buffer.detach().clone() for name, buffer in model.named_buffers()}
    model.to_empty(device=get_device_id())
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            local, start, end = _rows_of(parameter)
            key = checkpoint_key(name)
            full_rows = initial_adapter(name, list(parameter.shape), parameter.dtype)[start:end] if key is None \
                else files.rows(key, start, end)
            local.copy_(full_rows.to(dtype=local.dtype, device=local.device))
        for name, buffer in model.named_buffers():
            buffer.copy_(buffers[name].to(device=buffer.device))
    files.close()
    if torch.distributed.get_rank() == 0:
        print("[verl-sft] loaded each rank's shard from the safetensors files (no full copy of the model in any "
              "process; sft/verl_plugins/sharded_loading.py)", flush=True)


_original_build_module = compat.replace(f"{_ENGINE}:FSDPEngine._build_module", _build_module, __name__)
_original_load_full_state_dict = compat.replace(f"{_ENGINE}:fsdp2_load_full_state_dict", _load_full_state_dict,
                                                __name__)
