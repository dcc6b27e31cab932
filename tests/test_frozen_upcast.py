"""sft/verl_plugins/cpu/frozen_upcast.py: a CPU LoRA run's frozen bf16 base gathered in bf16, computed in fp32.

Run: .venv/bin/python -m pytest -q tests/test_frozen_upcast.py      (the slow test trains once besides the shared LoRA run, about 40 s)

The plugin must not change what is computed: a bf16 value converts to fp32 exactly, so an
upcasting layer gives verl's fp32-gathered result. Checked on the arithmetic (one block: bit
for bit; several blocks: the same up to summation order) and end to end through the LoRA
launcher, against verl's own path (SFT_FROZEN_UPCAST=0 and verl's input-grads hook, SFT_LORA_INPUT_GRADS=1).
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from conftest import max_weight_difference, model_shards, run_lora, train_losses
from sft.verl_plugins.cpu import frozen_upcast
from sft.verl_plugins.cpu.frozen_upcast import upcast_frozen_modules, upcast_linear


def _case(rows=48, cols=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 5, cols, generator=generator, requires_grad=True)
    weight = torch.randn(rows, cols, generator=generator).to(torch.bfloat16)
    bias = torch.randn(rows, generator=generator).to(torch.bfloat16)
    return x, weight, bias


def test_one_block_is_bit_for_bit_verls_fp32_linear():
    x, weight, bias = _case()
    reference_x = x.detach().clone().requires_grad_(True)
    out = upcast_linear(x, weight, bias)
    reference = F.linear(reference_x, weight.float(), bias.float())
    assert out.dtype == torch.float32 and torch.equal(out, reference)
    grad = torch.randn_like(out)
    out.backward(grad)
    reference.backward(grad)
    assert torch.equal(x.grad, reference_x.grad)


def test_blocks_of_rows_give_the_same_result_up_to_summation_order(monkeypatch):
    x, weight, bias = _case(rows=50)
    monkeypatch.setattr(frozen_upcast, "BLOCK_BYTES", 7 * 16 * 4)  # 7 rows of fp32 per block: 8 blocks, one short
    assert frozen_upcast._block_rows(weight, torch.float32) == 7
    reference_x = x.detach().clone().requires_grad_(True)
    out = upcast_linear(x, weight, bias)
    reference = F.linear(reference_x, weight.float(), bias.float())
    torch.testing.assert_close(out, reference, rtol=1e-6, atol=1e-6)
    grad = torch.randn_like(out)
    out.backward(grad)
    reference.backward(grad)
    torch.testing.assert_close(x.grad, reference_x.grad, rtol=1e-5, atol=1e-5)  # 50 products summed in blocks


def test_only_frozen_low_precision_linear_and_embedding_layers_are_changed():
    model = torch.nn.Sequential(torch.nn.Embedding(10, 16), torch.nn.Linear(16, 16), torch.nn.Linear(16, 4))
    model.to(torch.bfloat16)
    model[2].float()  # a trainable fp32 layer (an adapter): untouched
    for p in list(model[0].parameters()) + list(model[1].parameters()):
        p.requires_grad_(False)
    assert upcast_frozen_modules(model, torch.float32) == {"linear": 1, "embedding": 1}
    assert "forward" not in vars(model[2])
    ids = torch.tensor([[1, 2, 3]])
    rows = model[0](ids)
    assert rows.dtype == torch.float32 and torch.equal(rows, model[0].weight[ids].float())
    out = model(ids)
    assert out.dtype == torch.float32
    out.sum().backward()
    assert model[2].weight.grad is not None and model[1].weight.grad is None


@pytest.mark.slow
def test_lora_training_matches_verls_fp32_gathering_exactly(lora_run_gathered, tmp_path, tiny_model_dir,
                                                            chat_data_dir):
    """conftest's LoRA run (this plugin, no input-grads hook; the embedding and LM head gathered as
    FSDP2 does, SFT_VOCAB_PARALLEL=0) against the same run as verl does it."""
    _, ours_dir, ours = lora_run_gathered
    assert ours.returncode == 0, ours.stdout[-4000:]
    verl = run_lora(tmp_path, tmp_path / "verl", tiny_model_dir, chat_data_dir, SFT_FROZEN_UPCAST="0",
                    SFT_LORA_INPUT_GRADS="1")
    assert verl.returncode == 0, verl.stdout[-4000:]
    assert "frozen base gathered in its own dtype" in ours.stdout and "frozen base gathered" not in verl.stdout
    assert train_losses(ours.stdout) == train_losses(verl.stdout) and len(train_losses(ours.stdout)) == 8
    step = sorted(p.name for p in ours_dir.glob("global_step_*"))[-1]
    assert max_weight_difference(ours_dir / step, tmp_path / "verl" / step) == 0.0
    dtypes = {str(v.dtype) for (n, _), v in model_shards(ours_dir / step).items() if "lora_" not in n}
    assert dtypes == {"torch.bfloat16"}
    assert json.loads((ours_dir / step / "lora_train_meta.json").read_text())["r"] == 8

def test_the_memory_plan_counts_the_plugins_block_size():
    from sft.launch import memory_plan

    assert memory_plan.FROZEN_UPCAST_BLOCK_BYTES == frozen_upcast.BLOCK_BYTES
