"""Multi-node training and exact resume without Slurm: two torchrun agents on one machine, SIGKILL and restart.

Every run here trains the same configuration (conftest.RESUME_SETTINGS: the tiny model,
64 rows, 4 steps per epoch, 2 epochs, CPU fp32 with one thread per process, world size 2),
so an interrupted run is compared with the uninterrupted reference run weight for weight and
loss for loss. Resuming from mid-epoch checkpoints (a SAVE_FREQ checkpoint after
`scontrol requeue`, and the checkpoint a stop request writes) is tested in tests/test_slurm.py.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import (
    REPO_ROOT,
    RESUME_SETTINGS,
    RESUME_STEPS_PER_EPOCH,
    RESUME_TOTAL_STEPS,
    RESUME_WEIGHT_TOLERANCE,
    launcher_env,
    max_weight_difference,
    train_losses,
)

_RESUMED_FROM = re.compile(r"Found latest checkpoint: .*global_step_(\d+) \(step (\d+)\)")


def _checkpoint_steps(output_dir: Path) -> list[int]:
    return sorted(int(p.name.split("_")[-1]) for p in output_dir.glob("global_step_*"))


def _tracker(output_dir: Path) -> int:
    return int((output_dir / "latest_checkpointed_iteration.txt").read_text())


def kill_process_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants at once, as losing the node would.

    torchrun starts its workers in sessions of their own, so killing its process group alone
    leaves them training.
    """
    import psutil

    parent = psutil.Process(pid)
    processes = [parent, *parent.children(recursive=True)]
    for process in processes:
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(processes[1:], timeout=30)  # the caller reaps `pid` itself, and gets its status


def run_and_kill_at(env: dict[str, str], log: Path, kill_at_step: int | None, cwd: Path, *overrides: str,
                    timeout: float = 600):
    """Run scripts/run_sft_training.sh [overrides]; SIGKILL it and all its processes once `step:<kill_at_step>` is logged.

    Returns (exit status, log text). With kill_at_step None the run goes to its end.
    """
    pattern = re.compile(rf"step:{kill_at_step} - ") if kill_at_step else None
    with open(log, "w") as output:
        process = subprocess.Popen([str(REPO_ROOT / "scripts" / "run_sft_training.sh"), *overrides], env=env, cwd=cwd,
                                   stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while process.poll() is None and time.monotonic() < deadline:
            if pattern and pattern.search(log.read_text(errors="replace")):
                kill_process_tree(process.pid)
                break
            time.sleep(0.1)
        else:
            if process.poll() is None:
                raise AssertionError(f"run did not finish within {timeout}s:\n{log.read_text()[-3000:]}")
        return process.wait(timeout=60), log.read_text(errors="replace")
    finally:
        if process.poll() is None:
            kill_process_tree(process.pid)


@pytest.mark.slow
def test_two_torchrun_agents_on_one_machine_train_one_run_together(reference_run):
    run = reference_run
    assert run.returncodes == [0, 0], "\n\n".join(log[-3000:] for log in run.logs)
    for node_rank, log in enumerate(run.logs):
        assert f"2 x 1 (NODE_RANK {node_rank})" in log  # NNODES x NPROC_PER_NODE as each agent resolved them
        assert "--nnodes=2" in log and "--rdzv-backend=c10d" in log and "--rdzv-id=reference-run" in log
    # One run of world size 2, not two runs: one set of steps, one shard per process in one checkpoint.
    assert sorted(run.losses) == list(range(1, RESUME_TOTAL_STEPS + 1))
    assert run.losses[RESUME_TOTAL_STEPS] < run.losses[1] - 0.2, run.losses
    assert _checkpoint_steps(run.output_dir) == [4, 8]
    final = run.output_dir / f"global_step_{RESUME_TOTAL_STEPS}"
    assert sorted(p.name for p in final.glob("model_world_size_*")) == [
        "model_world_size_2_rank_0.pt", "model_world_size_2_rank_1.pt"]


@pytest.mark.slow
def test_sigkill_after_an_epoch_boundary_checkpoint_resumes_exactly_and_trains_every_remaining_epoch(
        tmp_path, tiny_model_dir, chat_data_dir, reference_run):
    """Killed with SIGKILL after the checkpoint that ends epoch 1, then restarted with the same command: the restart
    trains all of epoch 2 (verl#7401 skipped it) and ends on the reference run's weights."""
    reference = reference_run
    assert reference.returncodes == [0, 0], "the reference run failed (see the two-agent test)"
    output_dir = tmp_path / "resumed run"
    env = launcher_env(MODEL_NAME=tiny_model_dir, TRAIN_FILE=chat_data_dir / "train.parquet", OUTPUT_DIR=output_dir,
                       SAVE_FREQ=RESUME_STEPS_PER_EPOCH, NPROC_PER_NODE=2, **RESUME_SETTINGS)

    # Killed once step 5 is trained: checkpoint 4 (end of epoch 1) is the latest, step 5 is lost.
    # The next checkpoint is 3 steps away, so the kill lands before it even on a busy machine.
    keep_one = "trainer.max_ckpt_to_keep=1"  # its rotation must also remove the first start's checkpoint
    status, first = run_and_kill_at(env, tmp_path / "first.log", RESUME_STEPS_PER_EPOCH + 1, tmp_path, keep_one)
    assert status == -signal.SIGKILL, first[-3000:]
    assert _tracker(output_dir) == RESUME_STEPS_PER_EPOCH, first[-3000:]
    assert RESUME_STEPS_PER_EPOCH + 1 in train_losses(first)

    status, second = run_and_kill_at(env, tmp_path / "second.log", None, tmp_path, keep_one)
    assert status == 0, second[-3000:]
    assert _RESUMED_FROM.search(second).group(2) == str(RESUME_STEPS_PER_EPOCH), second[-3000:]
    losses = train_losses(second)
    assert sorted(losses) == list(range(RESUME_STEPS_PER_EPOCH + 1, RESUME_TOTAL_STEPS + 1)), second[-3000:]
    assert _checkpoint_steps(output_dir) == [RESUME_TOTAL_STEPS], "a checkpoint of the first start was not rotated"

    # Every resumed step saw the reference run's weights and batch: same losses, same final weights.
    for step, loss in losses.items():
        assert abs(loss - reference.losses[step]) <= 1e-6 * abs(reference.losses[step]), (step, loss, reference.losses)
    final = f"global_step_{RESUME_TOTAL_STEPS}"
    difference = max_weight_difference(output_dir / final, reference.output_dir / final)
    print(f"[measured] largest weight difference, SIGKILLed and resumed vs uninterrupted: {difference:.3g}")
    assert difference <= RESUME_WEIGHT_TOLERANCE
