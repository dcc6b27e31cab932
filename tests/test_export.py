"""Tests for sft/export.py.

Run: .venv/bin/python -m pytest -q tests/test_export.py        (about 1.5 minutes on 2 cores)
     .venv/bin/python -m pytest -q -m "not slow" tests/test_export.py   (seconds; no training)

The slow tests train a 0.1M-parameter model with verl itself on 2 CPU processes for 2 steps
(full fine-tune, then LoRA), export the checkpoint, and compare the exported model's logits
with reference logits that tests/fsdp_reference_logits.py computes from the raw FSDP shards
(DTensor.full_tensor over gloo; LoRA adapters unmerged), i.e. without verl's merger or PEFT's
merge. They also check that training moved the logits far more than the tolerance, so an
export of the untouched base model cannot pass.

The fast merge tests check, without training, that the export's LoRA merge (one weight at a
time, sft/export.py) gives bit-for-bit the weights of loading in float32, PEFT's
merge_and_unload and one cast (the export before issue 15), for float32 and bfloat16 bases and
targets, tied and untied embeddings; and that a full model loaded straight into the target
dtype has the values of the float32 load and cast.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from sft import export
from sft.common import files
from sft.export import ExportError, export_checkpoint, inspect_checkpoint, resolve_checkpoint
from sft.demo.tiny_model import build_tiny_model

REPO_ROOT = Path(__file__).resolve().parent.parent
REFERENCE_SCRIPT = REPO_ROOT / "tests" / "fsdp_reference_logits.py"
LORA_RANK, LORA_ALPHA = 8, 16


def _env() -> dict:
    env = dict(os.environ)
    env.update(
        VERL_USE_EXTERNAL_MODULES="sft.verl_plugins.cpu.runtime",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])),
        PYTHONWARNINGS="ignore",
        OMP_NUM_THREADS="1",
    )
    return env


def _torchrun(args: list[str], cwd: Path, log: Path) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    with open(log, "w") as out:
        proc = subprocess.run(cmd, cwd=cwd, env=_env(), stdout=out, stderr=subprocess.STDOUT, timeout=600)
    if proc.returncode:
        raise AssertionError(f"{' '.join(cmd)} failed (rc {proc.returncode}):\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def export_workdir(tmp_path_factory) -> Path:
    """A tiny base model plus train/val Parquet files in verl's `messages` format."""
    work = tmp_path_factory.mktemp("export")
    build_tiny_model(work / "base")
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"Solve: What is {a} + {b}?"},
                {"role": "assistant", "content": f"Step 1: Add {a} and {b}. The answer is \\boxed{{{a + b}}}."},
            ]
        }
        for a, b in zip(range(1, 41), range(40, 0, -1))
    ]
    pd.DataFrame(rows[:32]).to_parquet(work / "train.parquet")
    pd.DataFrame(rows[32:]).to_parquet(work / "val.parquet")
    return work


def _train(work: Path, name: str, lora: bool) -> Path:
    """Train 2 steps (32 samples, batch 16) with verl on 2 CPU processes; return the output dir."""
    out = work / name
    overrides = [
        "-m", "verl.trainer.sft_trainer",
        f"model.path={work / 'base'}",
        f"data.train_files={work / 'train.parquet'}",
        f"data.val_files={work / 'val.parquet'}",
        "engine.strategy=fsdp2",
        "+model.override_config.attn_implementation=sdpa",
        "trainer.device=cpu",
        "trainer.logger=[console]",
        "data.train_batch_size=16",
        "trainer.total_epochs=1",
        f"trainer.default_local_dir={out}",
        "data.num_workers=0",
        "optim.lr=1e-2",
    ]
    if lora:
        overrides += [f"model.lora_rank={LORA_RANK}", f"model.lora_alpha={LORA_ALPHA}", "model.target_modules=all-linear"]
    _torchrun(overrides, cwd=work, log=work / f"{name}.log")
    return out


def _input_ids(work: Path) -> torch.Tensor:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(work / "base")
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": f"Solve: What is {a} + {b}?"}], add_generation_prompt=True, tokenize=False
        )
        + f"Step 1: Add {a} and {b}."
        for a, b in ((3, 4), (12, 9))
    ]
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    length = min(len(i) for i in ids)
    return torch.tensor([i[:length] for i in ids])


@pytest.fixture(scope="module")
def trained_runs(export_workdir) -> dict:
    """Full and LoRA runs of 2 steps each, with reference logits from their raw FSDP shards."""
    work = export_workdir
    runs = {"full": _train(work, "full_run", lora=False), "lora": _train(work, "lora_run", lora=True)}
    input_ids = _input_ids(work)
    torch.save(input_ids, work / "input_ids.pt")
    jobs = [
        {
            "step_dir": str(run / "global_step_2"),
            "input_ids": str(work / "input_ids.pt"),
            "output": str(work / f"reference_{kind}.pt"),
            "lora_rank": LORA_RANK if kind == "lora" else 0,
            "lora_alpha": LORA_ALPHA,
        }
        for kind, run in runs.items()
    ]
    (work / "reference_jobs.json").write_text(json.dumps(jobs))
    _torchrun([str(REFERENCE_SCRIPT), str(work / "reference_jobs.json")], cwd=work, log=work / "reference.log")
    return {
        "work": work,
        "input_ids": input_ids,
        "base_logits": _logits(_load(work / "base"), input_ids),
        **{f"{kind}_run": run for kind, run in runs.items()},
        **{f"{kind}_reference": torch.load(work / f"reference_{kind}.pt") for kind in runs},
    }


@pytest.fixture(scope="module")
def exported_full_model(trained_runs, tmp_path_factory) -> Path:
    # Given the training output directory, export follows latest_checkpointed_iteration.txt.
    return export_checkpoint(trained_runs["full_run"], tmp_path_factory.mktemp("full_export") / "model")


def _logits(model, input_ids: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=input_ids).logits.float()


def _load(path: Path, dtype=torch.float32):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype)


# ----------------------------------------------------------------------------- slow: real training


@pytest.mark.slow
def test_full_export_matches_trained_logits(trained_runs, exported_full_model, tmp_path):
    from transformers import AutoTokenizer, GenerationConfig

    out = exported_full_model
    step_dir = trained_runs["full_run"] / "global_step_2"
    assert json.loads((out / "export_info.json").read_text())["source_checkpoint"] == str(step_dir.resolve())
    input_ids, reference, base = trained_runs["input_ids"], trained_runs["full_reference"], trained_runs["base_logits"]
    exported = _logits(_load(out), input_ids)

    torch.testing.assert_close(exported, reference, atol=1e-5, rtol=1e-5)
    moved = (base - reference).abs().max().item()
    assert moved > 0.1, f"training moved the logits by only {moved}: the test could not tell base from trained"

    # A complete HF model directory: float32 as the base model's config declares, tokenizer with
    # the chat template, generation config with the EOS, safetensors weights, no LoRA adapter.
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == "float32" and config["architectures"] == ["Qwen2ForCausalLM"]
    assert (out / "model.safetensors").is_file() and not (out / "lora_adapter").exists()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"
    assert GenerationConfig.from_pretrained(out).eos_token_id == tokenizer.eos_token_id
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "temporary directory left behind"

    # --dtype bfloat16 writes bf16 weights whose logits are the reference's up to bf16 rounding.
    bf16_dir = export_checkpoint(step_dir, tmp_path / "model_bf16", dtype="bfloat16")
    bf16_model = _load(bf16_dir, dtype="auto")
    assert next(bf16_model.parameters()).dtype == torch.bfloat16
    bf16_error = (_logits(bf16_model.float(), input_ids) - reference).abs().max().item()
    assert 0 < bf16_error < moved / 4, (bf16_error, moved)


@pytest.mark.slow
def test_lora_export_merges_adapter_and_matches_trained_logits(trained_runs, tmp_path):
    from peft import PeftModel

    work = trained_runs["work"]
    step_dir = trained_runs["lora_run"] / "global_step_2"
    assert (step_dir / "lora_train_meta.json").is_file()
    out = export_checkpoint(step_dir, tmp_path / "model")
    input_ids, reference, base = trained_runs["input_ids"], trained_runs["lora_reference"], trained_runs["base_logits"]
    exported = _logits(_load(out), input_ids)

    # Merged weights vs. unmerged adapters differ only by float32 rounding.
    torch.testing.assert_close(exported, reference, atol=1e-4, rtol=1e-4)
    moved = (base - reference).abs().max().item()
    assert moved > 0.05, f"LoRA training moved the logits by only {moved}"

    info = json.loads((out / "export_info.json").read_text())
    assert info["lora_merged"] is True and info["lora"]["r"] == LORA_RANK

    # The adapter kept beside the model turns the base model into the trained one with PEFT.
    adapter_dir = out / "lora_adapter"
    adapter_config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert adapter_config["r"] == LORA_RANK and adapter_config["lora_alpha"] == LORA_ALPHA
    with_adapter = PeftModel.from_pretrained(_load(work / "base"), adapter_dir)
    torch.testing.assert_close(_logits(with_adapter, input_ids), reference, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_interrupted_or_failed_export_leaves_target_untouched(trained_runs, exported_full_model, tmp_path, monkeypatch):
    run = trained_runs["full_run"]
    target = shutil.copytree(exported_full_model, tmp_path / "model")
    before = {p.name: p.read_bytes() for p in target.iterdir()}

    def interrupt(_path):
        raise KeyboardInterrupt

    monkeypatch.setattr(files, "make_world_readable", interrupt)  # the first step of publishing
    with pytest.raises(KeyboardInterrupt):
        export_checkpoint(run, target, force=True)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"], "temporary directory left behind"

    # Without --force an existing export is never overwritten; with it, it is replaced.
    monkeypatch.undo()
    with pytest.raises(ExportError, match="already exists.*--force"):
        export_checkpoint(run, target)
    (target / "stale.txt").write_text("from an older export")
    export_checkpoint(run, target, force=True)
    assert not (target / "stale.txt").exists()
    assert (target / "model.safetensors").read_bytes() == before["model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]

    # A truncated shard is named in the error and no output appears.
    broken = tmp_path / "broken" / "global_step_2"
    shutil.copytree(run / "global_step_2", broken)
    shard = broken / "model_world_size_2_rank_1.pt"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(ExportError, match="model_world_size_2_rank_1.pt.*corrupt or truncated"):
        export_checkpoint(broken, tmp_path / "broken_model")
    assert not (tmp_path / "broken_model").exists()
    assert sorted(p.name for p in (tmp_path / "broken").iterdir()) == ["global_step_2"]


# ----------------------------------------------------------------------------- fast: checkpoint checks


def _fake_step_dir(root: Path, step: int = 3, world_size: int = 2, ranks=(0, 1)) -> Path:
    step_dir = root / f"global_step_{step}"
    (step_dir / "huggingface").mkdir(parents=True)
    (step_dir / "fsdp_config.json").write_text(json.dumps({"FSDP_version": 2, "world_size": world_size}))
    (step_dir / "huggingface" / "config.json").write_text(json.dumps({"model_type": "qwen2", "dtype": "bfloat16"}))
    for rank in ranks:
        (step_dir / f"model_world_size_{world_size}_rank_{rank}.pt").write_bytes(b"x")
    return step_dir


def test_resolve_checkpoint_follows_tracker(tmp_path):
    _fake_step_dir(tmp_path, step=3)
    latest = _fake_step_dir(tmp_path, step=6)
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("6")
    assert resolve_checkpoint(tmp_path) == latest
    assert resolve_checkpoint(latest) == latest


def test_resolve_checkpoint_errors_name_path_and_fix(tmp_path):
    with pytest.raises(ExportError, match=f"checkpoint not found: {tmp_path / 'nope'}.*global_step_N"):
        resolve_checkpoint(tmp_path / "nope")
    with pytest.raises(ExportError, match="no checkpoint in .*trainer.default_local_dir"):
        resolve_checkpoint(tmp_path)
    _fake_step_dir(tmp_path, step=3)
    with pytest.raises(ExportError, match="latest_checkpointed_iteration.txt is missing.*global_step_3"):
        resolve_checkpoint(tmp_path)
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("9")
    with pytest.raises(ExportError, match="names step 9, but .*global_step_9 does not exist"):
        resolve_checkpoint(tmp_path)
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("nine")
    with pytest.raises(ExportError, match="latest_checkpointed_iteration.txt:1: expected a step number"):
        resolve_checkpoint(tmp_path)


def test_inspect_checkpoint_reports_missing_pieces(tmp_path):
    partial = _fake_step_dir(tmp_path / "a", ranks=(0,))
    with pytest.raises(ExportError, match="incomplete: missing or empty model_world_size_2_rank_1.pt.*earlier"):
        inspect_checkpoint(partial)

    no_config = _fake_step_dir(tmp_path / "b")
    (no_config / "fsdp_config.json").unlink()
    with pytest.raises(ExportError, match="fsdp_config.json is missing"):
        inspect_checkpoint(no_config)

    no_hf = _fake_step_dir(tmp_path / "c")
    shutil.rmtree(no_hf / "huggingface")
    with pytest.raises(ExportError, match="huggingface/config.json is missing"):
        inspect_checkpoint(no_hf)

    bad_meta = _fake_step_dir(tmp_path / "d")
    (bad_meta / "lora_train_meta.json").write_text('{"r": 0}')
    with pytest.raises(ExportError, match="lora_train_meta.json: expected"):
        inspect_checkpoint(bad_meta)

    empty = tmp_path / "e" / "global_step_5"
    (empty / "huggingface").mkdir(parents=True)
    with pytest.raises(ExportError, match="no FSDP model shards .*checkpoint.save_contents"):
        inspect_checkpoint(resolve_checkpoint(empty))

    lora = _fake_step_dir(tmp_path / "f")
    (lora / "lora_train_meta.json").write_text('{"r": 8, "lora_alpha": 16, "task_type": "CAUSAL_LM"}')
    info = inspect_checkpoint(lora)
    assert info.is_lora and info.world_size == 2 and info.global_step == 3


def test_auto_dtype_follows_base_config(tmp_path):
    info = inspect_checkpoint(_fake_step_dir(tmp_path))
    assert export._resolve_dtype("auto", info) == torch.bfloat16
    assert export._resolve_dtype("float32", info) == torch.float32


def test_cli_runs_as_script_and_reports_errors(tmp_path):
    help_text = subprocess.run(
        [sys.executable, str(REPO_ROOT / "sft" / "export.py"), "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "--dtype" in help_text and "global_step_N" in help_text
    proc = subprocess.run(
        [sys.executable, "-m", "sft.export", str(tmp_path / "missing")],
        capture_output=True, text=True, cwd=REPO_ROOT,
    )
    assert proc.returncode == 2 and f"error: checkpoint not found: {tmp_path / 'missing'}" in proc.stderr
    wrapper = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "export_checkpoint.sh"), str(tmp_path / "missing")],
        capture_output=True, text=True, env={**os.environ, "PYTHON": sys.executable},
    )
    assert wrapper.returncode == 2 and "checkpoint not found" in wrapper.stderr


# ----------------------------------------------------------------------------- fast: the merge's arithmetic


def _staging_dir(root: Path, base_dtype, tied: bool, lora: dict | None) -> Path:
    """What _join_shards leaves: the tiny model in `base_dtype` and, for `lora` (a LoraConfig's
    arguments), a trained-looking adapter in lora_adapter/ with verl's key names."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from sft.demo.tiny_model import TinyModelSpec

    base = build_tiny_model(root / f"base_tied{tied}", TinyModelSpec(tie_word_embeddings=tied))
    staging = root / f"staging_{str(base_dtype)[6:]}_tied{tied}_{'lora' if lora else 'full'}"
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # random weights at full float32 precision, not bf16 values
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 1e-3)
    model.to(base_dtype).save_pretrained(staging)
    if lora:
        peft_model = get_peft_model(model, LoraConfig(**lora))
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                if "lora_" in name:  # lora_B starts at zero: make the delta non-zero and not exactly representable
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
        peft_model.save_pretrained(staging / export.ADAPTER_SUBDIR)
    return staging


def _merged_with_peft_as_before(staging: Path, target_dtype, lora: bool):
    """The export before issue 15: float32 model, PEFT's merge_and_unload, one cast to the target dtype."""
    model = _load(staging, dtype=torch.float32)
    if lora:
        model = export._apply_lora(model, staging / export.ADAPTER_SUBDIR)
    return model.to(target_dtype)


def _assert_same_bits(model, reference) -> None:
    ours, theirs = model.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys()
    for name, tensor in ours.items():
        assert tensor.dtype == theirs[name].dtype, name
        assert torch.equal(tensor, theirs[name]), f"{name}: differs from PEFT's merge"


def _info(staging: Path, lora: dict | None) -> export.CheckpointInfo:
    meta = {"r": lora["r"], "lora_alpha": lora["lora_alpha"]} if lora else None
    return export.CheckpointInfo(step_dir=staging, global_step=1, world_size=1, shard_files=[], lora=meta)


@pytest.mark.parametrize("tied", [True, False], ids=["tied-embeddings", "untied-embeddings"])
@pytest.mark.parametrize("base_dtype", [torch.float32, torch.bfloat16], ids=["fp32-base", "bf16-base"])
def test_lora_merge_by_tensor_is_bit_identical_to_peft_merge_and_unload(tmp_path, base_dtype, tied):
    lora = {"r": 8, "lora_alpha": 16, "target_modules": "all-linear"}
    staging = _staging_dir(tmp_path, base_dtype, tied, lora)
    for target_dtype in (torch.float32, torch.bfloat16):
        model = export._load_merged_model(_info(staging, lora), staging, target_dtype)
        reference = _merged_with_peft_as_before(staging, target_dtype, lora=True)
        assert next(model.parameters()).dtype == target_dtype and model.config.dtype == target_dtype
        _assert_same_bits(model, reference)
        assert "lora" not in " ".join(model.state_dict())
    base = _load(staging, dtype=torch.float32).state_dict()
    merged = model.state_dict()  # the merge changed the adapted weights and nothing else
    assert not torch.equal(merged["model.layers.0.mlp.down_proj.weight"].float(),
                           base["model.layers.0.mlp.down_proj.weight"].to(torch.bfloat16).float())
    assert torch.equal(merged["model.norm.weight"], base["model.norm.weight"].to(torch.bfloat16))


def test_adapters_other_than_plain_lora_still_merge_with_peft(tmp_path, monkeypatch):
    # rsLoRA scales by alpha / sqrt(r) (merged here); per-module alphas are left to PEFT.
    for extra, by_tensor in (({"use_rslora": True}, True), ({"alpha_pattern": {"down_proj": 2}}, False)):
        lora = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "down_proj"], **extra}
        staging = _staging_dir(tmp_path / next(iter(extra)), torch.float32, True, lora)
        calls = []
        monkeypatch.setattr(export, "_apply_lora", lambda model, path, real=export._apply_lora: calls.append(path)
                            or real(model, path))
        model = export._load_merged_model(_info(staging, lora), staging, torch.bfloat16)
        monkeypatch.undo()
        assert (not calls) == by_tensor, extra
        _assert_same_bits(model, _merged_with_peft_as_before(staging, torch.bfloat16, lora=True))


def test_full_model_loads_straight_into_the_target_dtype_with_the_same_values(tmp_path):
    for base_dtype, target_dtype in ((torch.float32, torch.bfloat16), (torch.bfloat16, torch.float32),
                                     (torch.bfloat16, torch.float16), (torch.float32, torch.float32)):
        staging = _staging_dir(tmp_path / f"{base_dtype}_{target_dtype}", base_dtype, False, None)
        model = export._load_merged_model(_info(staging, None), staging, target_dtype)
        _assert_same_bits(model, _merged_with_peft_as_before(staging, target_dtype, lora=False))
