"""The Slurm batch files, submitted with sbatch to a real one-node Slurm cluster on localhost (CPU, tiny model).

Usage:
    .venv/bin/python -m pytest -q tests/test_slurm.py     # as root, after tests/slurm/install_slurm.sh

A session fixture configures and starts slurmctld, slurmd and munged in a scratch directory
(tests/slurm_cluster.py) and stops them at the end. Tests that need it skip, with the reason,
only where Slurm is not installed or this is not root; .ci/run installs it. The shipped batch
files are submitted unchanged: sbatch options given on the command line override their
#SBATCH lines, so `--gpus-per-node=0 --cpus-per-task=N` plus DEVICE=cpu make them run on this
GPU-less node. The multi-node topology and the requeue bookkeeping of the batch files are
also tested without Slurm, with stand-ins for srun, scontrol and squeue.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import (
    REPO_ROOT,
    RESUME_SETTINGS,
    RESUME_TOTAL_STEPS,
    RESUME_WEIGHT_TOLERANCE,
    launcher_env,
    max_weight_difference,
    step_delay_env,
    train_losses,
)
from slurm_cluster import FINAL_STATES, SlurmCluster, SlurmUnavailable, read_tail

_JOB_START = re.compile(r"^\[verl-sft slurm\] job \d+ \(.*?\) start (\d+) on ", re.MULTILINE)
_RESUMED_FROM = re.compile(r"Found latest checkpoint: .*global_step_(\d+) \(step (\d+)\)")
_SAVED = re.compile(r"Saving checkpoint to: .*global_step_(\d+)\n(?:.*\n)*?Updated checkpoint tracker")


@pytest.fixture(scope="session")
def slurm_cluster():
    root = Path(tempfile.mkdtemp(prefix="verl-sft-slurm-"))
    try:
        cluster = SlurmCluster.start(root)
    except SlurmUnavailable as exc:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"Slurm is not available here: {exc}")
    yield cluster
    cluster.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def slurm_node(slurm_cluster):
    """The cluster, with no job left behind by the test (a failed test must not hold the node's CPUs)."""
    yield slurm_cluster
    slurm_cluster.cancel_all_jobs()


def submit(cluster: SlurmCluster, batch_file: str, workdir: Path, settings: dict, *options: str,
           overrides: tuple[str, ...] = ()) -> tuple[int, Path]:
    """sbatch a shipped batch file in CPU mode from the repository root; return (job id, log path)."""
    (workdir / "logs").mkdir(parents=True, exist_ok=True)  # Slurm opens the log before the job starts
    cpus = settings.get("NPROC_PER_NODE", 1)
    argv = [f"--chdir={workdir}", "--gpus-per-node=0", f"--cpus-per-task={cpus}", *options,
            str(REPO_ROOT / "slurm" / batch_file), *overrides]
    job_id = cluster.sbatch(argv, env=_without_slurm(launcher_env(**settings)), cwd=REPO_ROOT)
    name = cluster.job(job_id)["JobName"]
    return job_id, workdir / "logs" / f"{name}-{job_id}.out"


def runs_in_log(text: str) -> list[str]:
    """The log of each start of a job (its log is appended to across requeues)."""
    starts = list(_JOB_START.finditer(text))
    return [text[m.start(): following.start() if following else len(text)]
            for m, following in zip(starts, starts[1:] + [None])]


def wait_for_log(cluster: SlurmCluster, job_id: int, log: Path, pattern: str, timeout: float = 600) -> str:
    """Wait until the job's log matches `pattern`; fail at once if the job ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        if re.search(pattern, text):
            return text
        info = cluster.job(job_id)
        if info.get("JobState") in FINAL_STATES:
            break
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} never logged {pattern!r} (state {cluster.job(job_id).get('JobState')}):\n"
                         f"{read_tail(log)}")


def wait_until_requeued(cluster: SlurmCluster, job_id: int, log: Path, restarts: int, timeout: float = 120,
                        release: bool = True) -> None:
    """Wait for the requeued job to be pending again; `release`: make it eligible now instead of in ~2 minutes."""
    deadline = time.monotonic() + timeout
    info = {}
    while time.monotonic() < deadline:
        info = cluster.job(job_id)
        if info["JobState"] == "PENDING" and int(info["Restarts"]) == restarts:
            if release:
                release_now(cluster, job_id)
            return
        assert info["JobState"] not in FINAL_STATES, f"job {job_id} ended instead of requeueing:\n{read_tail(log)}"
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} was not requeued ({info.get('JobState')}, Restarts={info.get('Restarts')}):\n"
                         f"{read_tail(log)}")


def release_now(cluster: SlurmCluster, job_id: int) -> None:
    """A requeued job waits about two minutes (Reason=BeginTime); make it eligible now.

    Not at once: slurmd revoked the job's credential when it was requeued, and credentials carry
    1-second timestamps, so a restart allocated within the same second is killed as "Job
    credential revoked" (seen here). Waiting a few seconds is what the two-minute delay is for.
    """
    time.sleep(3)
    cluster.command(["scontrol", "update", f"JobId={job_id}", "StartTime=now"])


def _checkpoint_steps(output_dir: Path) -> list[int]:
    return sorted(int(p.name.split("_")[-1]) for p in output_dir.glob("global_step_*"))


# ---------------------------------------------------------------------------------------------
# On the real cluster.


@pytest.mark.slow
def test_both_batch_files_at_once_on_one_node_and_a_requeued_job_resumes_from_its_last_checkpoint(
        slurm_node, tmp_path, tiny_model_dir, chat_data_dir):
    cluster = slurm_node
    workdir = tmp_path / "submit dir"  # the jobs' working directory; its name has a space
    common = {"MODEL_NAME": tiny_model_dir, "TRAIN_FILE": chat_data_dir / "train.parquet", "VAL_FILE": "",
              "NPROC_PER_NODE": 1}  # default OUTPUT_DIRs
    full_steps, full_save_freq = 8, 3  # 64 rows / 8 per step, one epoch; checkpoints 3, 6, 8
    started = time.monotonic()
    full_settings = {**common, "TRAIN_BATCH_SIZE": 8, "SAVE_FREQ": full_save_freq, "LEARNING_RATE": "1e-3"}
    full_id, full_log = submit(cluster, "sft_training.slurm", workdir, full_settings,
                               "--export=ALL,EPOCHS=1", overrides=("trainer.max_ckpt_to_keep=1",))
    lora_id, lora_log = submit(cluster, "sft_peft.slurm", workdir,
                               {**common, "TRAIN_BATCH_SIZE": 16, "EPOCHS": 1, "SAVE_FREQ": 2, "LEARNING_RATE": "1e-2",
                                "LORA_RANK": 8, "LORA_ALPHA": 16})
    deadline = time.monotonic() + 120
    while {cluster.job(j)["JobState"] for j in (full_id, lora_id)} != {"RUNNING"}:
        assert time.monotonic() < deadline, "the two jobs never ran at the same time on the node"
        time.sleep(0.5)

    # Requeue the full job once its first checkpoint is written and the next step trained.
    wait_for_log(cluster, full_id, full_log, r"Updated checkpoint tracker(?:.|\n)*step:4 - ")
    cluster.command(["scontrol", "requeue", str(full_id)])
    wait_until_requeued(cluster, full_id, full_log, restarts=1, release=False)
    # While it waits, the requeued job still owns its output directory: a second job for it is refused.
    duplicate_id, duplicate_log = submit(cluster, "sft_training.slurm", workdir, full_settings,
                                         "--export=ALL,EPOCHS=1")
    cluster.wait_for_state(duplicate_id, {"FAILED"}, timeout=300, log=duplicate_log)
    assert f"is in use by job {full_id} (PENDING)" in duplicate_log.read_text()
    release_now(cluster, full_id)

    cluster.wait_for_state(lora_id, {"COMPLETED"}, timeout=900, log=lora_log)
    full = cluster.wait_for_state(full_id, {"COMPLETED"}, timeout=900, log=full_log)
    print(f"[measured] full job (requeued once) and LoRA job on one node: {time.monotonic() - started:.0f}s wall")
    assert full["Restarts"] == "1"
    assert full_log.name == f"sft-full-{full_id}.out" and lora_log.name == f"sft-lora-{lora_id}.out"

    # The requeued job resumed from its last checkpoint and trained the planned steps.
    first, second = runs_in_log(full_log.read_text())  # appended across the requeue (--open-mode=append)
    saved = [int(step) for step in _SAVED.findall(first)]
    assert saved and saved[-1] % full_save_freq == 0, first[-3000:]
    resumed_from = int(_RESUMED_FROM.search(second).group(2))
    assert resumed_from == saved[-1], f"resumed from step {resumed_from}, the last checkpoint was {saved[-1]}"
    first_steps, second_steps = train_losses(first), train_losses(second)
    assert sorted(second_steps) == list(range(resumed_from + 1, full_steps + 1)), second[-3000:]
    assert set(first_steps) | set(second_steps) == set(range(1, full_steps + 1))
    repeated = max(first_steps) - resumed_from
    print(f"[measured] steps repeated after scontrol requeue: {repeated} (SAVE_FREQ={full_save_freq}; the last "
          f"checkpoint was step {resumed_from}, the first start had logged step {max(first_steps)})")
    # At most SAVE_FREQ: the kill can land while the checkpoint after step k*SAVE_FREQ is being saved.
    assert 0 <= repeated <= full_save_freq

    # No collision: one rendezvous port each, one stable default output directory each.
    lora_text = lora_log.read_text()
    assert sorted(train_losses(lora_text)) == [1, 2, 3, 4], lora_text[-3000:]
    for job_id, text in ((full_id, first), (full_id, second), (lora_id, lora_text)):
        assert f"--rdzv-id={job_id}" in text and "--nnodes=1" in text
    ports = [re.search(r"rendezvous: c10d \S+:(\d+) id", text).group(1) for text in (first, lora_text)]
    assert ports[0] != ports[1], "both jobs used one rendezvous port"
    full_dir = workdir / "checkpoints" / "verl-sft" / "tiny-full"
    lora_dir = workdir / "checkpoints" / "verl-sft" / "tiny-lora"
    assert _checkpoint_steps(full_dir) == [full_steps]  # trainer.max_ckpt_to_keep=1 passed through sbatch
    assert _checkpoint_steps(lora_dir) == [2, 4]
    assert json.loads((lora_dir / "global_step_4" / "lora_train_meta.json").read_text())["r"] == 8
    assert (full_dir / ".slurm_job_id").read_text().strip() == str(full_id)
    command = first.split("[verl-sft] command:", 1)[1].splitlines()[1]
    assert command.rstrip().endswith("trainer.max_ckpt_to_keep=1")


@pytest.mark.slow
def test_time_limit_signal_checkpoints_requeues_and_resumes_exactly(slurm_node, tmp_path, tiny_model_dir,
                                                                    chat_data_dir, reference_run):
    """USR1 to the batch shell is what #SBATCH --signal=B:USR1@600 sends before the time limit."""
    cluster = slurm_node
    workdir = tmp_path / "work"
    settings = {"MODEL_NAME": tiny_model_dir, "TRAIN_FILE": chat_data_dir / "train.parquet", "OUTPUT_DIR": "run",
                "SAVE_FREQ": -1, "NPROC_PER_NODE": 2, **RESUME_SETTINGS, **step_delay_env(0.5)}
    started = time.monotonic()
    job_id, log = submit(cluster, "sft_training.slurm", workdir, settings)
    wait_for_log(cluster, job_id, log, r"step:1 - ")
    cluster.command(["scancel", "--batch", "--signal=USR1", str(job_id)])
    wait_until_requeued(cluster, job_id, log, restarts=1)
    cluster.wait_for_state(job_id, {"COMPLETED"}, timeout=900, log=log)
    print(f"[measured] job stopped by USR1 and requeued by itself: {time.monotonic() - started:.0f}s wall")

    first, second = runs_in_log(log.read_text())
    assert "USR1 received" in first and "requeueing job" in first, first[-3000:]
    stopped_at = int(re.search(r"stopped after step (\d+)", first).group(1))
    first_steps, second_steps = train_losses(first), train_losses(second)
    assert sorted(first_steps) == list(range(1, stopped_at + 1)), first[-3000:]  # SAVE_FREQ=-1: no other checkpoint
    assert int(_RESUMED_FROM.search(second).group(2)) == stopped_at
    assert sorted(second_steps) == list(range(stopped_at + 1, RESUME_TOTAL_STEPS + 1)), second[-3000:]
    print(f"[measured] steps repeated after the time-limit signal: 0 (checkpoint at step {stopped_at} "
          f"of {RESUME_TOTAL_STEPS}, resumed at step {stopped_at + 1})")
    assert not (workdir / "run" / "stop_requested").exists()

    final = f"global_step_{RESUME_TOTAL_STEPS}"
    difference = max_weight_difference(workdir / "run" / final, reference_run.output_dir / final)
    print(f"[measured] largest weight difference, stopped by USR1 and requeued vs uninterrupted: {difference:.3g}")
    assert difference <= RESUME_WEIGHT_TOLERANCE


# ---------------------------------------------------------------------------------------------
# Without Slurm: the batch files' own logic, with stand-ins for srun, scontrol and squeue.

_FAKE_SRUN = """#!/usr/bin/env bash
# Stand-in for srun: records its arguments, then runs the command (one task: this node's).
printf '%s\\n' "$*" >>"$FAKE_CALLS"
while [[ "$1" == --* ]]; do shift; done
case "$FAKE_TRAINER" in
  run) exec "$@" ;;
  obey-stop) while [[ ! -e "$SFT_STOP_FILE" ]]; do sleep 0.1; done; rm -f "$SFT_STOP_FILE" ;;  # like sft/verl_plugins/stop_file.py
  finish) while [[ ! -e "$SFT_STOP_FILE" ]]; do sleep 0.1; done ;;  # its last step ended as the request came
  ignore-stop) exec sleep 60 ;;
esac
"""
_FAKE_SCONTROL = """#!/usr/bin/env bash
printf 'scontrol %s\\n' "$*" >>"$FAKE_CALLS"
if [[ "$1 $2" == "show hostnames" ]]; then printf 'node07\\nnode08\\n'; fi
"""


def _without_slurm(env: dict[str, str]) -> dict[str, str]:
    """`env` without the SLURM_* variables of a job these tests may themselves run in."""
    return {k: v for k, v in env.items() if not k.startswith("SLURM_")}


def _batch_env(tmp_path: Path, trainer: str, restart_count: str = "", **settings) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in (("srun", _FAKE_SRUN), ("scontrol", _FAKE_SCONTROL), ("squeue", "#!/usr/bin/env bash\n")):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = _without_slurm(launcher_env(**settings))
    env.update({"PATH": f"{bin_dir}:{env['PATH']}", "FAKE_CALLS": str(tmp_path / "calls"), "FAKE_TRAINER": trainer,
                "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "sft-test", "SLURM_NNODES": "2",
                "SLURM_JOB_NODELIST": "node[07-08]", "SLURM_SUBMIT_DIR": str(REPO_ROOT), "SLURM_CPUS_PER_TASK": "3"})
    if restart_count:
        env["SLURM_RESTART_COUNT"] = restart_count  # Slurm sets it from the first requeue on
    return env


@pytest.mark.slow
def test_batch_file_takes_a_two_node_topology_from_slurm(tmp_path, tiny_model_dir, chat_data_dir):
    """Both batch files share this logic (slurm/lib/sft_slurm.sh); the LoRA one also runs for real above."""
    batch_file, mode = "sft_training.slurm", "full"
    env = _batch_env(tmp_path, "run", MODEL_NAME=tiny_model_dir, TRAIN_FILE=chat_data_dir / "train.parquet",
                     NPROC_PER_NODE=1, DRY_RUN=1, MASTER_ADDR="127.0.0.1", NNODES=7)  # the last two lose to Slurm
    result = subprocess.run(["bash", str(REPO_ROOT / "slurm" / batch_file), "optim.lr=0.5"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    port = re.search(r"rendezvous: c10d node07:(\d+) id 4242", result.stdout).group(1)
    srun = (tmp_path / "calls").read_text().splitlines()[-1]
    assert srun.startswith("--kill-on-bad-exit=1 --nodes=2 --ntasks=2 --ntasks-per-node=1 --cpus-per-task=3 ")
    assert srun.endswith(f"/scripts/run_sft_{'training' if mode == 'full' else 'peft'}.sh optim.lr=0.5")
    assert (f"--nnodes=2 --nproc-per-node=1 --rdzv-backend=c10d --rdzv-endpoint=node07:{port} --rdzv-id=4242"
            in result.stdout)
    assert "optim.lr = 0.5" in result.stdout  # the Hydra override reached verl's composed config
    assert f"trainer.default_local_dir = {tmp_path}/checkpoints/verl-sft/tiny-{mode}" in result.stdout
    assert not (tmp_path / "checkpoints").exists()  # a dry run claims and writes nothing


@pytest.mark.parametrize(
    ("trainer", "restart_count", "expected_status", "expected_log", "requeued"),
    [
        ("obey-stop", "0", 0, "requeueing job 4242 (requeue 1 of 1)", True),
        ("obey-stop", "1", 1, "requeue limit reached (MAX_REQUEUES=1)", False),
        ("ignore-stop", "0", 0, "no checkpoint within STOP_TIMEOUT=2s", True),
        ("finish", "0", 0, "training finished before the stop request was seen", False),
    ],
)
@pytest.mark.slow
def test_time_limit_signal_requeues_a_bounded_number_of_times(tmp_path, tiny_model_dir, chat_data_dir, trainer,
                                                              restart_count, expected_status, expected_log, requeued):
    env = _batch_env(tmp_path, trainer, MODEL_NAME=tiny_model_dir, TRAIN_FILE=chat_data_dir / "train.parquet",
                     OUTPUT_DIR=tmp_path / "out", MAX_REQUEUES=1, STOP_TIMEOUT=2, restart_count=restart_count)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / ".slurm_job_id").write_text("999\n")  # a finished job (squeue no longer lists it)
    batch = subprocess.Popen(["bash", str(REPO_ROOT / "slurm" / "sft_training.slurm")], env=env, cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while not ((tmp_path / "calls").exists() and "--kill-on-bad-exit" in (tmp_path / "calls").read_text()):
        assert time.monotonic() < deadline and batch.poll() is None, batch.communicate()[0]
        time.sleep(0.1)
    batch.send_signal(signal.SIGUSR1)
    output = batch.communicate(timeout=60)[0]
    assert batch.returncode == expected_status, output
    assert expected_log in output
    assert ("scontrol requeue 4242" in (tmp_path / "calls").read_text()) == requeued
    assert (tmp_path / "out" / ".slurm_job_id").read_text().strip() == "4242"


def test_batch_files_refuse_to_run_outside_slurm(tmp_path):
    env = _without_slurm(launcher_env())
    result = subprocess.run(["bash", str(REPO_ROOT / "slurm" / "sft_training.slurm")], env=env, cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "not inside a Slurm job. Submit with sbatch" in result.stderr


def test_ci_installs_slurm_before_running_the_tests():
    lines = [line.strip() for line in (REPO_ROOT / ".ci/run").read_text().splitlines()]
    install = lines.index("tests/slurm/install_slurm.sh")
    assert install < lines.index(".venv/bin/python -m pytest -q tests")
    assert os.access(REPO_ROOT / "tests/slurm/install_slurm.sh", os.X_OK)
