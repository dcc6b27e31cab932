"""CPU LoRA's FSDP2 wrapping: verl's apply_fsdp2 replaced for runs whose frozen base is stored below fp32.

Usage (the launchers load it for LoRA runs on CPU; nothing of it is loaded on a GPU):
    VERL_USE_EXTERNAL_MODULES=sft.verl_plugins.lora_precision,sft.verl_plugins.cpu.lora_wrapping,... \\
        torchrun ... -m verl.trainer.sft_trainer model.lora_rank=32 engine.model_dtype=bf16 \\
        engine.mixed_precision.param_dtype=fp32 trainer.device=cpu ...
    SFT_FROZEN_UPCAST=0 leaves this plugin out (verl's wrapping: every unit gathered in fp32, the
    embedding and LM head gathered whole); SFT_VOCAB_PARALLEL=0 keeps only the vocabulary part out.

On a CPU, LoRA computes in fp32 (engine.mixed_precision.param_dtype=fp32) on a frozen base stored in
bf16 (LORA_BASE_DTYPE), and FSDP2 would all-gather every unit as an fp32 copy. When a model is
wrapped (verl's `apply_fsdp2`, replaced here through sft/verl_plugins/compat.py):
  1. FSDP2 gathers each parameter in its own dtype (MixedPrecisionPolicy without param_dtype), and
     every frozen nn.Linear / nn.Embedding computes in fp32 from its bf16 weight block by block
     (sft/verl_plugins/cpu/frozen_upcast.py);
  2. with two or more processes, the frozen input embedding and LM head are left out of FSDP2
     (verl's `_select_fsdp2_wrap_targets` is filtered while apply_fsdp2 runs) and computed
     vocabulary-parallel from each process's rows (sft/verl_plugins/cpu/vocab_parallel.py).
Part 2 uses part 1's block-wise matmuls, so SFT_FROZEN_UPCAST=0 turns both off.
"""

from __future__ import annotations

import os

import torch

from sft.verl_plugins import compat
from sft.verl_plugins.cpu import vocab_parallel
from sft.verl_plugins.cpu.frozen_upcast import matmul, matmul_transposed, upcast_frozen_modules

# The frozen layers' forward is replaced by the same arithmetic as torch's own.
compat.relies_on("torch/nn/modules/linear.py:Linear.forward", __name__)
compat.relies_on("torch/nn/modules/sparse.py:Embedding.forward", __name__)
_wrap_targets = (compat.checked("verl/utils/fsdp_utils.py:_select_fsdp2_wrap_targets", __name__)
                 if vocab_parallel.enabled() else None)


def _applies(model: torch.nn.Module, mp_policy) -> bool:
    if os.environ.get("SFT_FROZEN_UPCAST", "1") == "0" or mp_policy is None:
        return False
    compute = mp_policy.param_dtype
    if compute is None or compute != torch.float32:
        return False
    params = list(model.parameters())
    frozen_low = any(not p.requires_grad and p.dtype != compute and p.dtype.is_floating_point for p in params)
    trainable_fp32 = all(p.dtype == compute for p in params if p.requires_grad)
    return frozen_low and trainable_fp32  # loaded only on CPU (the parameters may still be on meta here)


def _vocabulary_modules(model: torch.nn.Module, mesh) -> list[torch.nn.Module]:
    """The frozen embedding and LM head to compute vocabulary-parallel, or []."""
    if _wrap_targets is None or mesh is None or mesh.ndim != 1 or mesh.size() < 2:
        return []
    modules, why_not = vocab_parallel.frozen_vocabulary_modules(model)
    if why_not and torch.distributed.get_rank() == 0:
        print(f"[verl-sft] embedding and LM head gathered by FSDP2 as usual ({why_not}; "
              "sft/verl_plugins/cpu/vocab_parallel.py)", flush=True)
    return modules


def apply_fsdp2(model, fsdp_kwargs, config):
    mp_policy = fsdp_kwargs.get("mp_policy")
    if not _applies(model, mp_policy):
        return _original_apply_fsdp2(model, fsdp_kwargs, config)
    counts = upcast_frozen_modules(model, mp_policy.param_dtype)
    fsdp_kwargs = dict(fsdp_kwargs, mp_policy=type(mp_policy)(
        param_dtype=None, reduce_dtype=mp_policy.reduce_dtype, output_dtype=mp_policy.output_dtype,
        cast_forward_inputs=mp_policy.cast_forward_inputs))
    vocabulary = _vocabulary_modules(model, fsdp_kwargs.get("mesh"))
    rank0 = not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
    if rank0:
        print(f"[verl-sft] frozen base gathered in its own dtype, computed in fp32 block by block "
              f"({counts['linear']} linear, {counts['embedding']} embedding layers; "
              "sft/verl_plugins/cpu/lora_wrapping.py; SFT_FROZEN_UPCAST=0 turns it off)", flush=True)
    if not vocabulary:
        return _original_apply_fsdp2(model, fsdp_kwargs, config)
    # FSDP2 leaves these weights alone (not wrapped, not in the root unit); they become the same
    # Shard(0) DTensors FSDP2 would have made, computed without gathering.
    ignored = set(fsdp_kwargs.get("ignored_params") or ())
    fsdp_kwargs["ignored_params"] = {module.weight for module in vocabulary} | ignored

    def without_vocabulary(select):
        return lambda *args: [m for m in select(*args) if all(m is not v for v in vocabulary)]

    from verl.utils import fsdp_utils

    with _wrap_targets(without_vocabulary(fsdp_utils._select_fsdp2_wrap_targets)):
        result = _original_apply_fsdp2(model, fsdp_kwargs, config)
    vocab_parallel.shard_and_install(vocabulary, fsdp_kwargs["mesh"], mp_policy.param_dtype,
                                     matmul_transposed=matmul_transposed, matmul=matmul)
    if rank0:
        print(f"[verl-sft] frozen embedding and LM head kept as each process's rows and computed "
              f"vocabulary-parallel over {fsdp_kwargs['mesh'].size()} processes, never all-gathered "
              "(sft/verl_plugins/cpu/vocab_parallel.py; SFT_VOCAB_PARALLEL=0 turns it off)", flush=True)
    return result


_original_apply_fsdp2 = compat.replace("verl/workers/engine/fsdp/transformer_impl.py:apply_fsdp2", apply_fsdp2,
                                       __name__)
