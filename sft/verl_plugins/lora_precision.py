"""LoRA with a bf16 frozen base and fp32 adapters; loaded into every LoRA run (GPU and CPU).

Usage (the launchers do this for LoRA; scripts/run_sft_peft.sh sets engine.model_dtype from
LORA_BASE_DTYPE, bf16 by default):
    VERL_USE_EXTERNAL_MODULES=sft.verl_plugins.lora_precision torchrun ... -m verl.trainer.sft_trainer \
        model.lora_rank=32 engine.model_dtype=bf16 ...

verl 0.9.1 loads the model in `engine.model_dtype` (fp32 when training) and, after adding the
LoRA adapters, casts them to the base model's dtype (FSDPEngine._build_lora_module: "FSDP requires
all params in a flat group to share dtype"). So either the frozen base takes 4 bytes per
parameter (28 GB for a 7B model before anything is trained), or, with engine.model_dtype=bf16,
the adapters, their gradients and their AdamW state are bf16 too, and small updates to them are
lost to rounding.

That cast is needed by FSDP1's flat parameters, not by FSDP2 (the launchers' engine.strategy=fsdp2):
FSDP2 requires one dtype among the *trainable* parameters of a unit only
(torch/distributed/fsdp/_fully_shard/_fsdp_param_group.py `_init_mp_dtypes`), and all-gathers
every parameter in the compute dtype (MixedPrecisionPolicy.param_dtype). This module puts the
adapters back in fp32 after verl's cast, for FSDP2 only: the base stays in engine.model_dtype
(bf16: 2 bytes per frozen parameter), the adapters and everything the optimizer keeps for them
are fp32. Their initial values went through bf16 once (lora_A's random init is rounded to bf16;
lora_B starts at zero), which changes nothing that matters. Full fine-tuning is untouched.

It also removes the hook verl adds with `enable_input_require_grads()`, which marks the input
embeddings' output as requiring a gradient. That is needed only by reentrant gradient
checkpointing, and verl checkpoints with use_reentrant=False; with the hook, FSDP2 all-gathers the
frozen embedding unit again at the end of every backward to compute nothing (a second copy of
the embedding while the root unit is still gathered: 2.2 GiB in fp32 for Qwen2.5-7B, measured as
the step's peak). `SFT_LORA_INPUT_GRADS=1` keeps verl's hook.
"""

from __future__ import annotations

import os

import torch

from sft.verl_plugins import compat

ADAPTER_DTYPE = torch.float32


def adapters_to_fp32(module: torch.nn.Module) -> int:
    """Cast every trainable parameter below fp32 to fp32 in place; how many were cast."""
    cast = 0
    for parameter in module.parameters():
        if parameter.requires_grad and parameter.dtype != ADAPTER_DTYPE:
            parameter.data = parameter.data.to(ADAPTER_DTYPE)
            cast += 1
    return cast


def _build_lora_module(self, module):
    module = _original_build_lora_module(self, module)
    if self.engine_config.strategy != "fsdp2":
        return module  # FSDP1 flat parameters need one dtype: verl's cast stays
    cast = adapters_to_fp32(module)
    if os.environ.get("SFT_LORA_INPUT_GRADS", "0") != "1":
        module.disable_input_require_grads()
    frozen = {str(p.dtype).replace("torch.", "") for p in module.parameters() if not p.requires_grad}
    if torch.distributed.is_initialized() and torch.distributed.get_rank() == 0:
        print(f"[verl-sft] LoRA: frozen base in {', '.join(sorted(frozen))}, adapters in fp32 "
              f"({cast} adapter tensors cast back from the base dtype; sft/verl_plugins/lora_precision.py)", flush=True)
    return module


_original_build_lora_module = compat.replace(
    "verl/workers/engine/fsdp/transformer_impl.py:FSDPEngine._build_lora_module", _build_lora_module, __name__)
