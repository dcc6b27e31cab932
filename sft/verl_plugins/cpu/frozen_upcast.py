"""CPU LoRA: frozen bf16 layers computed in fp32 block by block, so FSDP2 can gather them in bf16.

Used by sft/verl_plugins/cpu/lora_wrapping.py (loaded for LoRA runs on CPU; nothing of it on a
GPU), which makes FSDP2 gather the frozen base in its own dtype and gives the frozen layers the
forward defined here. SFT_FROZEN_UPCAST=0 leaves that plugin out: verl's behaviour (FSDP2
gathers every unit in fp32). This module replaces nothing in verl itself.

On a CPU without bf16 matrix units, bf16 matmuls run about 200x slower than fp32 ones (0.2 against
48 GFLOP/s on one core of the development machine), so LoRA there computes in fp32
(engine.mixed_precision.param_dtype=fp32) on a frozen base stored in bf16 (LORA_BASE_DTYPE).
FSDP2 then all-gathers every unit in the compute dtype: each gathered frozen weight is an fp32
copy, twice its stored size, and the root unit (the LM head of an untied model) stays gathered
from the start of the forward to the end of the backward: 2.2 GiB in fp32 for Qwen2.5-7B's
152k x 3,584 head, per process.

lora_wrapping.py makes FSDP2 gather in each parameter's own dtype (MixedPrecisionPolicy with no
param_dtype: the frozen base in bf16, the fp32 adapters in fp32), and this module computes each frozen
nn.Linear in fp32 from its bf16 weight one block of output rows at a time (`upcast_linear`):
the fp32 copy of a block lives only while it is multiplied, and backward casts it again instead
of keeping it. A frozen nn.Embedding looks its rows up in bf16 and returns them in fp32. The
arithmetic is the same as verl's (a bf16 value converts to fp32 exactly, and each output
element is the same dot product), so results match verl's path; tests/test_frozen_upcast.py
checks it. Norm weights stay bf16 and multiply fp32 activations by type promotion (Qwen2's and
Llama's RMSNorm); an architecture whose frozen norm calls F.layer_norm with a bf16 weight on fp32
input would stop with torch's dtype error: set SFT_FROZEN_UPCAST=0 for it.

With two or more processes the frozen input embedding and LM head are not FSDP2 units at all:
sft/verl_plugins/cpu/vocab_parallel.py keeps each process's rows and computes them vocabulary-parallel
with the block-wise matmuls defined here (SFT_VOCAB_PARALLEL=0 leaves them to FSDP2's gathering).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

BLOCK_BYTES = 256 << 20
"""At most this many bytes of a frozen weight are held in fp32 at once (whole layer weights of
7B models are 50-270 MiB; an LM head is cut into blocks of rows)."""


def _block_rows(weight: torch.Tensor, dtype: torch.dtype) -> int:
    row_bytes = weight.shape[1] * torch.empty((), dtype=dtype).element_size()
    return max(1, min(weight.shape[0], BLOCK_BYTES // max(1, row_bytes)))


def matmul_transposed(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x W^T (+ b) in x's dtype from a lower-precision W, one block of W's rows in x's dtype at a time."""
    rows = _block_rows(weight, x.dtype)
    if rows >= weight.shape[0]:
        return F.linear(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype))
    out = x.new_empty(*x.shape[:-1], weight.shape[0])  # one output: a list + cat would hold it twice
    for start in range(0, weight.shape[0], rows):
        out[..., start : start + rows] = F.linear(x, weight[start : start + rows].to(x.dtype))
    if bias is not None:
        out += bias.to(x.dtype)
    return out


def matmul(grad: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """grad W in grad's dtype from a lower-precision W, one block of W's rows at a time."""
    rows = _block_rows(weight, grad.dtype)
    if rows >= weight.shape[0]:
        return grad.matmul(weight.to(grad.dtype))
    out = None
    for start in range(0, weight.shape[0], rows):
        part = grad[..., start : start + rows].matmul(weight[start : start + rows].to(grad.dtype))
        out = part if out is None else out.add_(part)
    return out


class _UpcastLinear(torch.autograd.Function):
    """y = x W^T + b with W, b stored in a lower precision, computed in x's dtype; no weight gradient."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(weight)
        return matmul_transposed(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        (weight,) = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None
        return matmul(grad_out, weight), None, None


def upcast_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """A frozen linear layer in x's dtype from a lower-precision weight (see the module doc)."""
    return _UpcastLinear.apply(x, weight, bias)


def _linear_forward(self, x):
    if self.weight.dtype == x.dtype:
        return F.linear(x, self.weight, self.bias)
    return upcast_linear(x, self.weight, self.bias)


def _embedding_forward(self, ids, compute_dtype=torch.float32):
    rows = F.embedding(ids, self.weight, self.padding_idx, self.max_norm, self.norm_type, self.scale_grad_by_freq,
                       self.sparse)
    return rows.to(compute_dtype)


def upcast_frozen_modules(model: torch.nn.Module, compute_dtype: torch.dtype) -> dict[str, int]:
    """Give every frozen Linear/Embedding whose weight is not `compute_dtype` the upcasting forward."""
    counts = {"linear": 0, "embedding": 0}
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.nn.Parameter) or weight.requires_grad or weight.dtype == compute_dtype:
            continue
        if not weight.dtype.is_floating_point:
            continue
        if type(module) is torch.nn.Linear:
            module.forward = _linear_forward.__get__(module)
            counts["linear"] += 1
        elif type(module) is torch.nn.Embedding:
            module.forward = lambda ids, _m=module: _embedding_forward(_m, ids, compute_dtype)
            counts["embedding"] += 1
    return counts
