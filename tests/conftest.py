"""Shared fixtures: a tiny model and chat data built locally, and a way to run the launchers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from sft.tiny_model import TinyModelSpec, build_tiny_model  # noqa: E402

# Settings a user's shell may carry that would change what the launchers do under test.
_LAUNCHER_VARIABLES = (
    "NPROC_PER_NODE NNODES NODE_RANK MASTER_ADDR MASTER_PORT RDZV_ID DEVICE MODEL_NAME TRAIN_FILE VAL_FILE "
    "TRUST_REMOTE_CODE MAX_LENGTH MAX_TOKENS_PER_GPU BATCH_SIZE TRAIN_BATCH_SIZE EPOCHS LEARNING_RATE "
    "LR_SCHEDULER WARMUP_RATIO WEIGHT_DECAY SEED PROJECT_NAME EXPERIMENT_NAME OUTPUT_DIR SAVE_FREQ TEST_FREQ "
    "LOGGER DRY_RUN ATTN_IMPLEMENTATION COMPUTE_DTYPE REMOVE_PADDING GRADIENT_CHECKPOINTING VERL_DIR PYTHON LORA_RANK LORA_ALPHA TARGET_MODULES "
    "SFT_MODE VERL_USE_EXTERNAL_MODULES"
).split()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 0.1M-parameter Qwen2 model with its tokenizer (random weights, built in about a second)."""
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny", TinyModelSpec())


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


_STEP_LOSS = re.compile(r"step:(\d+) - .*?train/loss:([0-9.eE+-]+)")


def train_losses(output: str) -> dict[int, float]:
    """{global step: training loss} from verl's console logger lines."""
    return {int(step): float(loss) for step, loss in _STEP_LOSS.findall(output)}


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "slow: trains a tiny model with verl on CPU (tens of seconds each); skip with -m 'not slow'",
    )


@pytest.fixture(scope="session")
def data_tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="session")
def data_qwen_tokenizer_dir(request):
    """The Qwen2.5-style tokenizer (real 151k vocabulary), built once and kept in pytest's cache
    directory between runs (building takes 10-30 s on a busy 2-core machine)."""
    from sft.qwen_tokenizer import build_qwen_tokenizer

    return build_qwen_tokenizer(request.config.cache.mkdir("verl-sft-qwen-tokenizer") / "tokenizer")
