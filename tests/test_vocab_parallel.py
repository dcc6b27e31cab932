"""sft/verl_plugins/cpu/vocab_parallel.py: CPU LoRA's frozen embedding and LM head, never all-gathered.

Run: .venv/bin/python -m pytest -q tests/test_vocab_parallel.py     (the slow test trains once besides the shared LoRA run)

The arithmetic in two gloo processes against the plain computation (tests/vocab_parallel_check.py),
and the LoRA launcher's run (conftest.lora_run, where it is on by default) against the same run
with FSDP2 gathering these layers (SFT_VOCAB_PARALLEL=0): the same training up to summation
order, the same checkpoint layout, and an exact resume from its step-4 checkpoint.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import REPO_ROOT, RESUME_WEIGHT_TOLERANCE, max_weight_difference, model_shards, run_lora, train_losses


@pytest.fixture(scope="module")
def check(tmp_path_factory):
    out = tmp_path_factory.mktemp("vocab") / "check.json"
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(REPO_ROOT / "tests" / "vocab_parallel_check.py"), str(out)],
                            cwd=REPO_ROOT, env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin",
                                                "OMP_NUM_THREADS": "1"},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(out.read_text())


def test_each_process_keeps_its_rows_as_fsdp2_would(check):
    assert [c["local_rows"] for c in check] == [26, 25]  # 51 rows, torch.chunk's (and FSDP2's) split
    for c in check:
        assert c["placements"] == "(Shard(dim=0),)" and c["shape"] == [51, 12] and c["full_tensor_equal"]
        assert c["untied_stay_apart"] and c["tied_stay_tied"]


def test_embedding_is_exact_and_logits_and_gradient_match_up_to_summation_order(check):
    for c, tokens in zip(check, (7, 3)):
        assert c["embedding_equal"] and c["tied_embedding_equal"] and c["tied_logits_equal"]
        assert c["logits_shape"] == [1, tokens, 51]
        assert c["logits_max_difference"] <= 1e-5  # each logit is one dot product of 12 terms
        assert c["blocked_grad_max_difference"] == 0.0  # the checker's own reference path is sound
        # The input gradient sums 51 products in two parts (26 + 25) instead of one.
        assert c["grad_max_difference"] <= 1e-6 * c["grad_scale"] * 51


def test_frozen_vocabulary_modules_refuses_what_it_cannot_compute():
    from sft.verl_plugins.cpu.vocab_parallel import frozen_vocabulary_modules

    class Model(torch.nn.Module):
        def __init__(self, bias=False, trainable=False):
            super().__init__()
            self.embed, self.head = torch.nn.Embedding(10, 4), torch.nn.Linear(4, 10, bias=bias)
            for p in self.parameters():
                p.requires_grad_(trainable)

        def get_input_embeddings(self):
            return self.embed

        def get_output_embeddings(self):
            return self.head

    modules, why = frozen_vocabulary_modules(Model())
    assert why is None and len(modules) == 2
    assert "without bias" in frozen_vocabulary_modules(Model(bias=True))[1]
    assert "frozen" in frozen_vocabulary_modules(Model(trainable=True))[1]
    assert frozen_vocabulary_modules(torch.nn.Linear(2, 2))[0] == []


@pytest.mark.slow
def test_lora_training_matches_fsdp2_gathering(lora_run, lora_run_gathered):
    _, parallel_dir, parallel = lora_run
    _, gathered_dir, gathered = lora_run_gathered
    assert parallel.returncode == 0, parallel.stdout[-4000:]
    assert gathered.returncode == 0, gathered.stdout[-4000:]
    assert "computed vocabulary-parallel over 2 processes" in parallel.stdout
    assert "vocabulary-parallel" not in gathered.stdout
    ours, theirs = train_losses(parallel.stdout), train_losses(gathered.stdout)
    assert ours.keys() == theirs.keys() and len(ours) == 8
    for step in ours:
        assert ours[step] == pytest.approx(theirs[step], rel=1e-4), (step, ours[step], theirs[step])
    step = sorted(p.name for p in parallel_dir.glob("global_step_*"))[-1]
    # The same parameters under the same names and shapes (max_weight_difference checks the keys),
    # the frozen embedding bit for bit (it is only read), the adapters close after 8 steps of lr 1e-2.
    assert max_weight_difference(parallel_dir / step, gathered_dir / step) < 1e-3
    shards, reference = model_shards(parallel_dir / step), model_shards(gathered_dir / step)
    embedding = [key for key in shards if "embed_tokens" in key[0]]
    assert embedding and all(torch.equal(shards[key], reference[key]) for key in embedding)


@pytest.mark.slow
def test_lora_run_resumes_exactly_from_its_checkpoint(lora_run, tmp_path, tiny_model_dir, chat_data_dir):
    """The sharded embedding goes through checkpoint saving and loading: resumed at step 4, step 8 is the same."""
    _, output_dir, first = lora_run
    assert first.returncode == 0, first.stdout[-4000:]
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(output_dir / "global_step_4", resumed_dir / "global_step_4")
    (resumed_dir / "latest_checkpointed_iteration.txt").write_text("4")
    resumed = run_lora(tmp_path, resumed_dir, tiny_model_dir, chat_data_dir)
    assert resumed.returncode == 0, resumed.stdout[-4000:]
    assert "global_step_4" in resumed.stdout and sorted(train_losses(resumed.stdout)) == [5, 6, 7, 8]
    assert max_weight_difference(resumed_dir / "global_step_8", output_dir / "global_step_8") <= RESUME_WEIGHT_TOLERANCE


@pytest.mark.slow
def test_export_of_the_run_holds_the_whole_frozen_embedding(lora_run, tmp_path, tiny_model_dir):
    from safetensors.torch import load_file

    _, output_dir, first = lora_run
    assert first.returncode == 0, first.stdout[-4000:]
    exported = tmp_path / "exported"
    result = subprocess.run([sys.executable, "-m", "sft.export", str(output_dir / "global_step_8"), "-o", str(exported)],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    weights = {}
    for path in sorted(exported.glob("*.safetensors")):
        weights.update(load_file(path))
    base = load_file(tiny_model_dir / "model.safetensors")
    key = "model.embed_tokens.weight"
    assert weights[key].shape == base[key].shape  # both processes' rows, in order
    assert torch.equal(weights[key], base[key].to(weights[key].dtype))  # frozen: the base as trained (bf16)
