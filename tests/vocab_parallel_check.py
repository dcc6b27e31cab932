"""sft/verl_plugins/cpu/vocab_parallel.py against the plain computation, in 2 gloo processes.

Usage (tests/test_vocab_parallel.py runs it):
    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/vocab_parallel_check.py OUT.json

Each process holds its rows of a bf16 vocabulary x hidden matrix (an uneven split: 51 rows, 26
and 25; once as two matrices, once tied) and a different number of tokens (7 and 3, so the padding to the longest is used). The
embedding lookup must equal the plain one bit for bit; the LM head's logits and its input
gradient must equal the plain fp32 computation from the same bf16 weight up to summation order
(the gradient is a sum over the vocabulary, added in two parts). Rank 0 writes what it found.
"""

from __future__ import annotations

import json
import logging
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F


def main() -> None:
    logging.getLogger("torch.distributed.device_mesh").setLevel(logging.ERROR)
    dist.init_process_group("gloo")
    from torch.distributed.device_mesh import init_device_mesh

    from sft.verl_plugins.cpu import frozen_upcast, vocab_parallel

    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    vocab, hidden = 51, 12
    generator = torch.Generator().manual_seed(0)  # the same full matrices on every process
    weight = torch.randn(vocab, hidden, generator=generator).to(torch.bfloat16)
    tokens = (7, 3)[rank % 2]
    ids = torch.randint(0, vocab, (1, tokens), generator=torch.Generator().manual_seed(10 + rank))
    x = torch.randn(1, tokens, hidden, generator=torch.Generator().manual_seed(20 + rank), requires_grad=True)
    grad = torch.randn(1, tokens, vocab, generator=torch.Generator().manual_seed(30 + rank))

    embedding, head = torch.nn.Embedding(vocab, hidden), torch.nn.Linear(hidden, vocab, bias=False)
    for module in (embedding, head):
        module.weight = torch.nn.Parameter(weight.clone(), requires_grad=False)
    matmuls = dict(matmul_transposed=frozen_upcast.matmul_transposed, matmul=frozen_upcast.matmul)  # as the plugin
    vocab_parallel.shard_and_install([embedding, head], mesh, torch.float32, **matmuls)
    tied_embedding, tied_head = torch.nn.Embedding(vocab, hidden), torch.nn.Linear(hidden, vocab, bias=False)
    tied_embedding.weight = tied_head.weight = torch.nn.Parameter(weight.clone(), requires_grad=False)
    vocab_parallel.shard_and_install([tied_embedding, tied_head], mesh, torch.float32)  # the plain matmuls

    rows = embedding(ids)
    reference_rows = F.embedding(ids, weight).float()
    logits = head(x)
    reference_x = x.detach().clone().requires_grad_(True)
    reference_logits = F.linear(reference_x, weight.float())
    logits.backward(grad)
    reference_logits.backward(grad)
    blocked = frozen_upcast.matmul(grad.reshape(-1, vocab), weight).reshape(x.shape)  # the same code, 1 process

    found = {
        "rank": rank,
        "local_rows": embedding.weight.to_local().shape[0],
        "placements": str(embedding.weight.placements),
        "shape": list(embedding.weight.shape),
        "embedding_equal": rows.dtype == torch.float32 and torch.equal(rows, reference_rows),
        "logits_shape": list(logits.shape),
        "logits_max_difference": (logits - reference_logits).abs().max().item(),
        "grad_max_difference": (x.grad - reference_x.grad).abs().max().item(),
        "grad_scale": reference_x.grad.abs().max().item(),
        "blocked_grad_max_difference": (blocked - reference_x.grad).abs().max().item(),
        "full_tensor_equal": torch.equal(embedding.weight.full_tensor(), weight),
        "untied_stay_apart": embedding.weight is not head.weight,
        "tied_stay_tied": tied_embedding.weight is tied_head.weight,
        "tied_embedding_equal": torch.equal(tied_embedding(ids), reference_rows),
        "tied_logits_equal": torch.equal(tied_head(x.detach()), logits.detach()),
    }
    everything = [None] * world
    dist.all_gather_object(everything, found)
    if rank == 0:
        with open(sys.argv[1], "w") as handle:
            json.dump(everything, handle)
    # Both ranks leave together: a rank that tears gloo down while the other still uses its pairs aborts
    # ("terminate called without an active exception", about one run in three without this barrier).
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
