"""sft/verl_plugins/cpu/runtime.py's log-prob replacement gives verl's numbers (and gradients) on CPU.

The check runs in a subprocess that loads the runtime the way the launcher does
(VERL_USE_EXTERNAL_MODULES), so this test process keeps verl's default platform.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

_CHECK = r"""
import json, torch
import verl.utils.torch_functional as tf
from sft.verl_plugins.cpu import runtime as cpu_runtime

torch.manual_seed(0)
results = {"replaced": bool(getattr(tf.logprobs_from_logits_v2, "_verl_sft_cpu", False))}
cpu_runtime._vectorise_logprobs()  # idempotent: a second install keeps one wrapper
results["idempotent"] = tf.logprobs_from_logits_v2.keywords["_fallback"] is not tf.logprobs_from_logits_v2

# Small blocks, so several blocks (and a ragged last one) are exercised.
cpu_runtime._LOGSUMEXP_BLOCK_ELEMENTS = 7 * 50
for shape in [(37, 50), (3, 11, 50)]:
    logits = (torch.randn(*shape) * 4).requires_grad_()
    labels = torch.randint(0, shape[-1], shape[:-1])
    ours = tf.logprobs_from_logits(logits, labels)
    (grad_ours,) = torch.autograd.grad(ours.sum(), logits)
    reference = torch.log_softmax(logits, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    (grad_ref,) = torch.autograd.grad(reference.sum(), logits)
    results[str(shape)] = [
        list(ours.shape) == list(labels.shape),
        (ours - reference).abs().max().item(),
        (grad_ours - grad_ref).abs().max().item(),
    ]
bf16 = torch.randn(5, 50).bfloat16()
labels = torch.randint(0, 50, (5,))
results["bf16_dtype"] = str(tf.logprobs_from_logits(bf16, labels).dtype)
print("RESULT " + json.dumps(results))
"""


@pytest.mark.slow
def test_logprobs_match_log_softmax_and_verl_calls_the_replacement():
    env = dict(os.environ, VERL_USE_EXTERNAL_MODULES="sft.verl_plugins.cpu.runtime", PYTHONPATH=str(REPO), PYTHONWARNINGS="ignore")
    done = subprocess.run(
        [sys.executable, "-c", _CHECK], env=env, cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(l for l in done.stdout.splitlines() if l.startswith("RESULT "))
    results = json.loads(line[len("RESULT "):])
    assert results["replaced"] is True
    assert results["idempotent"] is True
    for shape in ("(37, 50)", "(3, 11, 50)"):
        same_shape, value_error, grad_error = results[shape]
        assert same_shape
        assert value_error < 1e-5, (shape, value_error)
        assert grad_error < 1e-6, (shape, grad_error)
    # bf16 keeps verl's own (log_softmax) path, whose result is bf16.
    assert results["bf16_dtype"] == "torch.bfloat16"
