"""scripts/benchmark_training.py on CPU in its tiny shape: every part runs and the figures add up.

Run: .venv/bin/python -m pytest -q tests/test_benchmark_training.py     (about a minute on 2 cores)

It checks the plumbing (model and data built, both configurations trained through the launcher,
steps timed, real tokens counted, table and JSON written), not the speed: timings on a shared
machine say nothing in a test. The speed figures come from running the script itself.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

pytestmark = pytest.mark.slow


def test_tiny_shape_compares_original_and_ours_on_cpu(tmp_path):
    work = tmp_path / "bench"
    command = [sys.executable, str(REPO_ROOT / "scripts" / "benchmark_training.py"), "--shape", "tiny",
               "--tokenizer", "tiny", "--device", "cpu", "--configs", "original,ours", "--rows", "48",
               "--median-words", "40", "--max-words", "150", "--max-length", "512", "--train-batch-size", "8",
               "--warmup-steps", "1", "--steps", "2", "--timeout", "600", "--work-dir", str(work)]
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-5000:]
    report = json.loads((work / "benchmark_results.json").read_text())
    runs = {r["config"]: r for r in report["results"]}
    assert set(runs) == {"original", "ours"}
    for name, run in runs.items():
        assert run["ok"], (name, run["error"])
        assert run["steps"] == 2 and len(run["step_seconds"]) == 2
        assert all(seconds > 0 for seconds in run["step_seconds"])
        assert run["tokens"] > 0 and run["tokens_per_s_per_device"] > 0
        assert 0 < run["mfu_ours"] < 1  # against the CPU matmul peak measured in the same run
        assert run["peak_memory_gb"] > 0
    # Both configurations trained on the same samples, so they count the same real tokens.
    assert runs["original"]["tokens"] == runs["ours"]["tokens"]
    assert (work / "runs" / "original.log").is_file()  # each configuration's whole training log is kept
    assert "ours / original:" in result.stdout and "tokens/s" in result.stdout
    table = (work / "benchmark_results.md").read_text()
    assert "| original |" in table and "| ours |" in table


def test_unknown_configuration_is_refused(tmp_path):
    result = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "benchmark_training.py"), "--configs",
                             "ours,fastest", "--work-dir", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
    assert result.returncode == 2
    assert "unknown configuration(s) fastest" in result.stdout
