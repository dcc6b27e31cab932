"""CPU LoRA on several processes: the frozen embedding and LM head are never all-gathered.

Used by sft/verl_plugins/cpu/lora_wrapping.py (the launchers load that for LoRA on CPU);
SFT_VOCAB_PARALLEL=0 in the environment keeps FSDP2's gathering of these two. This module
replaces nothing in verl itself.

verl's apply_fsdp2 makes the input embedding and the LM head FSDP2 units of their own (untied
models) or puts the tied matrix into the root unit, so every process all-gathers the whole
vocabulary x hidden matrix: Qwen2.5-7B's head is 1.02 GiB in bf16 and a gather peaks at twice
that (sft/bench/fsdp_gather.py), in the forward and again in the backward; a tied root unit
stays gathered for the whole step. With LoRA these matrices are frozen, so nothing needs them
whole: each process keeps its FSDP2 shard of rows (the same DTensor, Shard(0) on the same mesh,
that FSDP2 would keep, so loading, checkpoints, resume and export see what they saw before) and
the two layers are computed vocabulary-parallel across the data-parallel processes:

  embedding: the token ids of every process are all-gathered, each process looks up the ids in
      its rows (zeros elsewhere), an all-reduce adds them up (exact: one non-zero per entry),
      and each keeps its own tokens' rows.
  LM head: the hidden states of every process are all-gathered, each process computes the logits
      of its vocabulary rows for all of them (fp32 from the bf16 weight, one block of rows at a
      time: cpu/frozen_upcast.py's matmuls), and an all-to-all hands each process its own tokens' logits.
      Backward: the logit gradients go back by all-to-all, each process multiplies them with
      its rows, and an all-reduce adds up the hidden-state gradient.

What is computed is the same up to summation order (the LM head's input gradient is a sum over
the vocabulary, added up in two parts); tests/test_vocab_parallel.py checks it. Every process
runs the same number of forward passes (FSDP2 requires that already: verl's dynamic batching
gives all data-parallel ranks the same number of micro batches).
"""

from __future__ import annotations

import math
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F


def _row_range(vocab: int, world: int, rank: int) -> tuple[int, int, int]:
    """(rows per process, first row, end row) of `rank`: torch.chunk's and FSDP2's Shard(0) split."""
    size = math.ceil(vocab / world)
    start = min(rank * size, vocab)
    return size, start, min(start + size, vocab)


def _matmul_transposed(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return F.linear(x, weight.to(x.dtype))


def _matmul(grad: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return grad.matmul(weight.to(grad.dtype))


def enabled() -> bool:
    return os.environ.get("SFT_VOCAB_PARALLEL", "1") != "0"


class _Shard:
    """This process's rows of a vocabulary x hidden matrix sharded on dim 0 over a process group."""

    def __init__(self, weight: torch.Tensor, group, world: int, rank: int, vocab: int,
                 matmul_transposed=_matmul_transposed, matmul=_matmul):
        self.weight, self.group, self.world, self.rank, self.vocab = weight, group, world, rank, vocab
        self.matmul_transposed, self.matmul = matmul_transposed, matmul  # x W^T and g W in x's (g's) dtype
        self.size, self.start, end = _row_range(vocab, world, rank)
        self.rows = end - self.start

    @classmethod
    def of(cls, parameter, **matmuls) -> "_Shard":
        mesh = parameter.device_mesh
        return cls(parameter.to_local(), mesh.get_group(), mesh.size(), mesh.get_local_rank(), parameter.shape[0],
                   **matmuls)


def _gather_padded(flat: torch.Tensor, shard: _Shard) -> tuple[torch.Tensor, int, int]:
    """([world, longest, ...] every process's `flat` zero-padded to the longest, own length, longest)."""
    lengths = torch.zeros(shard.world, dtype=torch.int64)
    own = torch.tensor([flat.shape[0]], dtype=torch.int64)
    dist.all_gather_into_tensor(lengths, own, group=shard.group)
    longest = int(lengths.max())
    padded = flat.new_zeros((longest, *flat.shape[1:]))
    padded[: flat.shape[0]] = flat
    out = flat.new_empty((shard.world * longest, *flat.shape[1:]))
    dist.all_gather_into_tensor(out, padded.contiguous(), group=shard.group)
    return out.view(shard.world, longest, *flat.shape[1:]), flat.shape[0], longest


def embedding_lookup(ids: torch.Tensor, shard: _Shard, compute_dtype: torch.dtype) -> torch.Tensor:
    """The embedding rows of `ids` (this process's tokens) from row-sharded weights, in compute_dtype."""
    flat = ids.reshape(-1)
    every, own, longest = _gather_padded(flat, shard)
    local = every - shard.start
    mine = (local >= 0) & (local < shard.rows)
    rows = F.embedding(local.clamp(0, max(shard.rows - 1, 0)), shard.weight) * mine.unsqueeze(-1).to(shard.weight.dtype)
    dist.all_reduce(rows, group=shard.group)  # one process holds each id: a sum of one value and zeros
    return rows[shard.rank, :own].reshape(*ids.shape, shard.weight.shape[1]).to(compute_dtype)


class _VocabParallelHead(torch.autograd.Function):
    """logits = x W^T for this process's tokens from row-sharded frozen W (no weight gradient)."""

    @staticmethod
    def forward(ctx, x, shard: _Shard):
        ctx.shard, ctx.shape = shard, x.shape
        every, own, longest = _gather_padded(x.reshape(-1, x.shape[-1]), shard)
        world, size = shard.world, shard.size
        if shard.rows == size:
            local = shard.matmul_transposed(every.view(world * longest, -1), shard.weight).view(world, longest, size)
        else:  # the last process's shorter shard (or none), padded to the others' width
            local = every.new_zeros(world, longest, size)
            if shard.rows:
                local[..., : shard.rows] = shard.matmul_transposed(every.view(world * longest, -1),
                                                                   shard.weight).view(world, longest, -1)
        del every
        received = torch.empty_like(local)
        dist.all_to_all_single(received, local, group=shard.group)  # received[s]: my tokens x rows of process s
        del local
        logits = received.permute(1, 0, 2).reshape(longest, world * size)[:own, : shard.vocab]
        ctx.lengths = (own, longest)
        return logits.reshape(*x.shape[:-1], shard.vocab)

    @staticmethod
    def backward(ctx, grad):
        shard, (own, longest) = ctx.shard, ctx.lengths
        if not ctx.needs_input_grad[0]:
            return None, None
        world, size = shard.world, shard.size
        if own == longest and world * size == shard.vocab:
            padded = grad.reshape(longest, world * size)
        else:
            padded = grad.new_zeros(longest, world * size)
            padded[:own, : shard.vocab] = grad.reshape(own, shard.vocab)
        outgoing = padded.view(longest, world, size).permute(1, 0, 2).contiguous()
        del padded
        incoming = torch.empty_like(outgoing)
        dist.all_to_all_single(incoming, outgoing, group=shard.group)  # incoming[s]: tokens of s x my rows
        del outgoing
        hidden = ctx.shape[-1]
        if shard.rows:
            grad_every = shard.matmul(incoming[..., : shard.rows].reshape(world * longest, shard.rows), shard.weight)
        else:
            grad_every = incoming.new_zeros(world * longest, hidden)
        del incoming
        dist.all_reduce(grad_every, group=shard.group)  # the sum over all rows of the vocabulary
        return grad_every.view(world, longest, hidden)[shard.rank, :own].reshape(ctx.shape), None


def head_logits(x: torch.Tensor, shard: _Shard) -> torch.Tensor:
    return _VocabParallelHead.apply(x, shard)


def frozen_vocabulary_modules(model: torch.nn.Module) -> tuple[list[torch.nn.Module], str | None]:
    """(the frozen input embedding and LM head to compute vocabulary-parallel, or [] and why not)."""
    try:
        embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return [], "the model has no get_input_embeddings/get_output_embeddings"
    modules = []
    for module, kind in ((embedding, torch.nn.Embedding), (head, torch.nn.Linear)):
        if module is None:
            continue
        if type(module) is not kind or module.weight.requires_grad or getattr(module, "bias", None) is not None:
            return [], f"{type(module).__name__} is not a frozen plain {kind.__name__} without bias"
        if kind is torch.nn.Embedding and (module.max_norm is not None or module.sparse):
            return [], "the embedding uses max_norm or sparse gradients"
        modules.append(module)
    if len(modules) == 2 and modules[0].weight.shape != modules[1].weight.shape:
        return [], "the embedding and the LM head have different shapes"
    return modules, None


def shard_and_install(modules: list[torch.nn.Module], mesh, compute_dtype: torch.dtype, **matmuls) -> None:
    """Replace each module's weight with its Shard(0) DTensor on `mesh` and give it the parallel forward.

    matmuls: matmul_transposed(x, W) = x W^T and matmul(g, W) = g W in the activations' dtype from a
    weight of another dtype (default: the weight cast whole; lora_wrapping.py passes frozen_upcast.py's
    block-wise ones).
    """
    from torch.distributed.tensor import DTensor, Shard

    world, rank = mesh.size(), mesh.get_local_rank()
    done: dict[int, torch.nn.Parameter] = {}
    for module in modules:
        weight = module.weight
        if id(weight) not in done:
            _, start, end = _row_range(weight.shape[0], world, rank)
            local = weight.detach()[start:end].clone()
            sharded = DTensor.from_local(local, mesh, [Shard(0)], run_check=False, shape=weight.shape,
                                         stride=weight.stride())
            done[id(weight)] = torch.nn.Parameter(sharded, requires_grad=False)
        module.weight = done[id(weight)]
        if isinstance(module, torch.nn.Embedding):
            module.forward = lambda ids, _m=module: embedding_lookup(ids, _Shard.of(_m.weight), compute_dtype)
        else:
            module.forward = lambda x, _m=module: head_logits(x, _Shard.of(_m.weight, **matmuls))
