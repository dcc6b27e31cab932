"""The launcher's FSDP2 schedule on a CPU (sft/launcher.py CPU_FSDP_OVERRIDES) trains what verl's trains.

Run: .venv/bin/python -m pytest -q tests/test_cpu_fsdp.py     (about a minute on 2 cores)

On a CPU, full fine-tuning keeps every layer gathered from its forward to its backward and reduces
gradients once per step instead of after every micro batch. That changes only when the sums are
made, so the losses of every step must equal verl's schedule's within float tolerance.
"""

from __future__ import annotations

import pytest

from conftest import launcher_env, run_launcher, train_losses
from sft import launcher

VERL_SCHEDULE = ["engine.use_no_sync_for_gradient_accumulation=false", "engine.reshard_after_forward=true"]


def test_cpu_full_fine_tuning_asks_verl_for_one_reduction_per_step_and_lora_does_not(tmp_path, tiny_model_dir,
                                                                                  chat_data_dir, monkeypatch, capsys):
    recorded = []
    monkeypatch.setattr(launcher.os, "execve", lambda path, argv, child_env: recorded.append(argv))
    for mode in ("full", "lora"):
        env = launcher_env(MODEL_NAME=tiny_model_dir, TRAIN_FILE=chat_data_dir / "train.parquet", VAL_FILE="",
                           OUTPUT_DIR=tmp_path / mode, SFT_MODE=mode, DRY_RUN=0)
        capsys.readouterr()
        assert launcher.main([], env=env) == 0
        wanted = mode == "full"
        assert all((item in recorded[-1]) == wanted for item in launcher.CPU_FSDP_OVERRIDES), (mode, recorded[-1])
        # The printed memory plan is the composed config's: the whole model gathered, gradients held unsharded.
        plan = capsys.readouterr().out.split("Memory plan per cpu device", 1)[1]
        assert ("(every unit: no reshard)" in plan) == wanted and ("sync deferred" in plan) == wanted, plan
    # A user's override wins: it comes after the launcher's.
    env = launcher_env(MODEL_NAME=tiny_model_dir, TRAIN_FILE=chat_data_dir / "train.parquet", VAL_FILE="",
                       OUTPUT_DIR=tmp_path / "user", SFT_MODE="full", DRY_RUN=0)
    assert launcher.main(VERL_SCHEDULE, env=env) == 0
    argv = recorded[-1]
    assert argv.index(VERL_SCHEDULE[0]) > argv.index(launcher.CPU_FSDP_OVERRIDES[0])


@pytest.mark.slow
def test_cpu_fsdp_schedule_and_packed_micro_batches_give_the_losses_of_verls_schedule(tmp_path, tiny_model_dir,
                                                                                     chat_data_dir):
    """Three runs of the same 4 steps: our CPU defaults, verl's FSDP2 schedule, and packed micro batches
    (DYNAMIC_BATCH=1 REMOVE_PADDING=1: one padding-free sequence per micro batch, sdpa keeping the samples
    apart by their position ids). Attention leaking across samples would change the first step's loss."""
    runs = {"ours": ({}, []), "verl schedule": ({}, VERL_SCHEDULE),
            "packed": ({"DYNAMIC_BATCH": "1", "REMOVE_PADDING": "1"}, [])}
    losses = {}
    for name, (settings, overrides) in runs.items():
        env = launcher_env(MODEL_NAME=tiny_model_dir, TRAIN_FILE=chat_data_dir / "train.parquet", VAL_FILE="",
                           OUTPUT_DIR=tmp_path / name, EPOCHS=1, LEARNING_RATE="1e-3", SAVE_FREQ=-1,
                           TRAIN_BATCH_SIZE=16, SEED=42, **settings)
        result = run_launcher("run_sft_training.sh", env, *overrides)
        assert result.returncode == 0, result.stdout[-3000:]
        losses[name] = train_losses(result.stdout)
    print("losses per step:", losses)
    assert sorted(losses["ours"]) == [1, 2, 3, 4]  # 64 rows / 16 per step
    assert len(set(losses["verl schedule"].values())) == 4  # the steps move the weights: a wrong gradient would show
    for name in ("ours", "packed"):
        for step, loss in losses["verl schedule"].items():
            assert losses[name][step] == pytest.approx(loss, rel=1e-5, abs=1e-6), (name, step, losses)
