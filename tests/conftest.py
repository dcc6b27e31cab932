"""Shared fixtures, by what they build: models and tokenizers, chat data, launcher runs, and the
uninterrupted reference run that resumed runs must reproduce. Everything is built locally."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from sft.launch.settings import LAUNCHER_VARIABLES  # noqa: E402
from sft.demo.tiny_model import TinyModelSpec, build_tiny_model  # noqa: E402
from sft import launcher  # noqa: E402

# Settings a user's shell may carry that would change what the launchers do under test: every
# setting of the launchers' table, and the verl plugin list the launcher extends.
_LAUNCHER_VARIABLES = [*LAUNCHER_VARIABLES, "VERL_USE_EXTERNAL_MODULES"]


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "slow: over about 2 s on a 2-core machine (trains with verl, loads Qwen's 151k vocabulary, grades the whole "
        "labelled set, composes verl's config in a subprocess); skip with -m 'not slow' (the quick loop, under a minute)",
    )


# ---------------------------------------------------------------------------------------------
# Models and tokenizers.


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 0.1M-parameter Qwen2 model with its tokenizer (random weights, built in about a second)."""
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny", TinyModelSpec())


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    """The tiny model's tokenizer, loaded with AutoTokenizer as training loads it."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="session")
def qwen_tokenizer_dir(request):
    """The Qwen2.5-style tokenizer (real 151k vocabulary), built once and kept in pytest's cache
    directory between runs (building takes 10-30 s on a busy 2-core machine)."""
    from sft.bench.qwen_tokenizer import build_qwen_tokenizer

    return build_qwen_tokenizer(request.config.cache.mkdir("verl-sft-qwen-tokenizer") / "tokenizer")


# ---------------------------------------------------------------------------------------------
# Chat data.


def write_chat_parquet(path: Path, rows: int, seed: int = 0) -> Path:
    """Addition problems as verl chat messages: learnable, so the loss visibly falls."""
    import random

    import pandas as pd

    rng = random.Random(seed)
    records = []
    for index in range(rows):
        a, b = rng.randint(1, 50), rng.randint(1, 50)
        records.append(
            {
                "id": index,
                "messages": [
                    {"role": "user", "content": f"Solve: What is {a} + {b}?"},
                    {"role": "assistant", "content": f"Step 1: {a} + {b} = {a + b}. The answer is \\boxed{{{a + b}}}."},
                ],
            }
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(records).to_parquet(path)
    return path


@pytest.fixture(scope="session")
def chat_data_dir(tmp_path_factory) -> Path:
    """train.parquet (64 rows) and val.parquet (16 rows) in a directory whose name has a space."""
    directory = tmp_path_factory.mktemp("data") / "sft data"
    write_chat_parquet(directory / "train.parquet", 64, seed=0)
    write_chat_parquet(directory / "val.parquet", 16, seed=1)
    return directory


# ---------------------------------------------------------------------------------------------
# Launcher runs.


def launcher_env(**settings: str) -> dict[str, str]:
    """The current environment without launcher settings, plus `settings` (CPU, 16 samples per step by default)."""
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCHER_VARIABLES}
    # 16 samples per step: the fixtures' val set (16 rows) is one full validation batch.
    env.update({"DEVICE": "cpu", "PYTHON": sys.executable, "PYTHONUNBUFFERED": "1", "TRAIN_BATCH_SIZE": "16"})
    env.update({k: str(v) for k, v in settings.items()})
    return env


def run_launcher(script: str, env: dict[str, str], *overrides: str, cwd: Path | None = None, timeout: int = 900):
    """Run scripts/<script> as a user would; return the completed process (output merged)."""
    return subprocess.run(
        [str(REPO_ROOT / "scripts" / script), *overrides],
        env=env,
        cwd=cwd or REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def launch_in_process(monkeypatch, capsys, tmp_path):
    """Run `python -m sft.launcher` as the launchers do, in this process: (exit code, output).

    `mode` is the SFT_MODE a launcher sets; relative paths are relative to tmp_path. Only dry runs
    and errors can run here: a launch that would exec torchrun fails the test instead.
    """

    def refuse_exec(*args):
        raise AssertionError(f"the launcher would have started torchrun: {args[1]}")

    monkeypatch.setattr(launcher.os, "execve", refuse_exec)
    monkeypatch.chdir(tmp_path)

    def run(env: dict[str, str], *overrides: str, mode: str = "full") -> tuple[int, str]:
        capsys.readouterr()
        rc = launcher.main(["--", *overrides], env={**env, "SFT_MODE": mode})
        captured = capsys.readouterr()
        return rc, captured.out + captured.err

    return run


@pytest.fixture
def launch_until_exec(monkeypatch, capsys, tmp_path):
    """Like launch_in_process, but a launch that gets as far as torchrun records its command instead:
    (exit code, output, the command or None). The OUTPUT_DIR lock it took is let go by the next launch."""
    started = []
    monkeypatch.setattr(launcher.os, "execve", lambda path, argv, env: started.append(argv))
    monkeypatch.chdir(tmp_path)

    def run(env: dict[str, str], *overrides: str, mode: str = "full"):
        started.clear()
        capsys.readouterr()
        rc = launcher.main(["--", *overrides], env={**env, "SFT_MODE": mode})
        captured = capsys.readouterr()
        return rc, captured.out + captured.err, (started[0] if started else None)

    return run


def composed_values(output: str) -> dict[str, str]:
    """The `key = value` lines a dry run prints after composing verl's config."""
    section = output.split("composed config", 1)[1]
    return dict(re.findall(r"^  ([a-z_.]+) = (.*)$", section, re.MULTILINE))


_STEP_LOSS = re.compile(r"step:(\d+) - .*?train/loss:([0-9.eE+-]+)")


def train_losses(output: str) -> dict[int, float]:
    """{global step: training loss} from verl's console logger lines."""
    return {int(step): float(loss) for step, loss in _STEP_LOSS.findall(output)}


# ---------------------------------------------------------------------------------------------
# The reference run (tests/test_resume.py, tests/test_slurm.py): one uninterrupted run that
# interrupted and requeued runs must reproduce exactly.

from dataclasses import dataclass  # noqa: E402  (kept with the code that uses it)

_LAUNCHER_VARIABLES.extend(["SFT_STOP_FILE", "MAX_REQUEUES", "STOP_TIMEOUT", "REPO_DIR", "SFT_TEST_STEP_DELAY",
                            "SFT_AGENT_PID"])

# 64 rows / 16 per step = 4 steps per epoch, 2 epochs. One thread per process: the same
# arithmetic in every run, so weights can be compared bit for bit.
RESUME_SETTINGS = {"TRAIN_BATCH_SIZE": "16", "EPOCHS": "2", "LEARNING_RATE": "1e-3", "VAL_FILE": "",
                         "OMP_NUM_THREADS": "1", "SEED": "42"}
RESUME_STEPS_PER_EPOCH = 4
RESUME_TOTAL_STEPS = 8
# Largest difference allowed between the final weights of an interrupted run and the reference.
# Measured: 0 (bit-identical) on CPU, fp32, gloo, one thread per process; a resume that skipped,
# repeated or reordered a single step moves weights by about the learning rate (1e-3).
RESUME_WEIGHT_TOLERANCE = 1e-6


def step_delay_env(seconds: float) -> dict[str, str]:
    """Settings that load tests/hooks/sft_test_step_delay.py: each step sleeps `seconds` (timing only)."""
    return {"PYTHONPATH": str(REPO_ROOT / "tests" / "hooks"), "VERL_USE_EXTERNAL_MODULES": "sft_test_step_delay",
            "SFT_TEST_STEP_DELAY": str(seconds)}


def model_shards(checkpoint: Path) -> dict[tuple[str, int], "object"]:
    """{(parameter name, rank): local shard} of the model_world_size_*_rank_*.pt files in a checkpoint."""
    import warnings

    import torch

    shards = {}
    files = sorted(checkpoint.glob("model_world_size_*_rank_*.pt"))
    assert files, f"no model shards in {checkpoint}"
    for path in files:
        rank = int(path.stem.rsplit("_", 1)[1])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DTensor unpickled without a process group
            state = torch.load(path, map_location="cpu", weights_only=False)
        for name, value in state.items():
            shards[(name, rank)] = value.to_local() if hasattr(value, "to_local") else value
    return shards


LORA_RUN_SETTINGS = dict(TRAIN_BATCH_SIZE=16, EPOCHS=2, LEARNING_RATE=1e-2, LORA_RANK=8, LORA_ALPHA=16,
                         NPROC_PER_NODE=2, VAL_FILE="", SAVE_FREQ=4)
"""The LoRA run of the tests (tests/test_launchers.py checks it; tests/test_frozen_upcast.py compares
verl's own CPU path with it; tests/test_vocab_parallel.py resumes it from step 4): 8 steps on the
64-row chat data, checkpoints at steps 4 and 8, no validation."""


def run_lora(cwd: Path, output_dir: Path, tiny_model_dir: Path, chat_data_dir: Path, **switches: str):
    env = launcher_env(MODEL_NAME=tiny_model_dir, TRAIN_FILE=chat_data_dir / "train.parquet", OUTPUT_DIR=output_dir,
                       **LORA_RUN_SETTINGS, **switches)
    return run_launcher("run_sft_peft.sh", env, cwd=cwd)


@pytest.fixture(scope="session")
def lora_run(tmp_path_factory, tiny_model_dir, chat_data_dir):
    """(working directory, output directory, completed process) of the launcher's LoRA run, made once."""
    cwd = tmp_path_factory.mktemp("lora")
    output_dir = cwd / "lora run"
    return cwd, output_dir, run_lora(cwd, output_dir, tiny_model_dir, chat_data_dir)


@pytest.fixture(scope="session")
def lora_run_gathered(tmp_path_factory, tiny_model_dir, chat_data_dir):
    """The same LoRA run with the embedding and LM head gathered by FSDP2 (SFT_VOCAB_PARALLEL=0):
    tests/test_vocab_parallel.py compares lora_run with it, tests/test_frozen_upcast.py verl's path."""
    cwd = tmp_path_factory.mktemp("lora-gathered")
    output_dir = cwd / "lora run"
    return cwd, output_dir, run_lora(cwd, output_dir, tiny_model_dir, chat_data_dir, SFT_VOCAB_PARALLEL="0")


def max_weight_difference(first: Path, second: Path) -> float:
    """Largest absolute difference between the model weights of two checkpoints of one world size."""
    a, b = model_shards(first), model_shards(second)
    assert a.keys() == b.keys(), "the checkpoints hold different parameters or world sizes"
    return max((a[key].double() - b[key].double()).abs().max().item() for key in a)


@dataclass
class ReferenceRun:
    output_dir: Path
    logs: list[str]  # one per torchrun agent (node rank 0, 1)
    returncodes: list[int]
    losses: dict[int, float]


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, tiny_model_dir, chat_data_dir) -> ReferenceRun:
    """The reference run, trained by two torchrun agents on this machine as two "nodes" of one process each.

    Each agent is started through scripts/run_sft_training.sh with NNODES=2 and its NODE_RANK,
    meeting at a c10d rendezvous on loopback, as the Slurm batch files make them meet.
    """
    import socket

    root = tmp_path_factory.mktemp("reference")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    processes, log_files = [], []
    for node_rank in (0, 1):
        env = launcher_env(MODEL_NAME=tiny_model_dir, TRAIN_FILE=chat_data_dir / "train.parquet",
                           OUTPUT_DIR=root / "two nodes", SAVE_FREQ=RESUME_STEPS_PER_EPOCH, NNODES=2,
                           NODE_RANK=node_rank, NPROC_PER_NODE=1, MASTER_ADDR="127.0.0.1", MASTER_PORT=port,
                           RDZV_ID="reference-run", **RESUME_SETTINGS)
        log_files.append(root / f"agent{node_rank}.log")
        with open(log_files[-1], "w") as log:
            processes.append(subprocess.Popen([str(REPO_ROOT / "scripts" / "run_sft_training.sh")], env=env,
                                              cwd=root, stdout=log, stderr=subprocess.STDOUT))
    try:
        returncodes = [process.wait(timeout=900) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    logs = [path.read_text() for path in log_files]
    losses = {}
    for log in logs:
        losses.update(train_losses(log))
    return ReferenceRun(output_dir=root / "two nodes", logs=logs, returncodes=returncodes, losses=losses)
