"""scripts/benchmark_export.py on the tiny shape: one training step, export and evaluation, each measured;
and its bit-for-bit comparison of two exports (fast).

Run: .venv/bin/python -m pytest -q tests/test_benchmark_export.py

The real shapes' figures (SFT_FRAMEWORK_OVERVIEW.md) come from the same script with --shape.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
import torch

from conftest import REPO_ROOT

_spec = importlib.util.spec_from_file_location("benchmark_export", REPO_ROOT / "scripts" / "benchmark_export.py")
benchmark_export = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(benchmark_export)


def test_same_weights_names_every_tensor_that_differs_in_any_bit(tmp_path):
    from safetensors.torch import save_file

    weights = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(4, dtype=torch.bfloat16)}
    for name, changes in (("old", {}), ("same", {}), ("other", {"b": torch.ones(4, dtype=torch.bfloat16)})):
        (tmp_path / name).mkdir()
        save_file({**weights, **changes}, tmp_path / name / "model.safetensors")
    assert benchmark_export.same_weights(tmp_path / "same", tmp_path / "old") == []
    other = {**weights, "b": torch.tensor([1.0, 1.0, 1.0, 1.0078125], dtype=torch.bfloat16)}  # one bit of one value
    save_file(other, tmp_path / "other" / "model.safetensors")
    assert benchmark_export.same_weights(tmp_path / "other", tmp_path / "old") == ["b"]
    save_file({"a": weights["a"].double()}, tmp_path / "other" / "model.safetensors")  # dtype differs, "b" missing
    assert benchmark_export.same_weights(tmp_path / "other", tmp_path / "old") == ["b", "a"]


@pytest.mark.slow
def test_the_export_benchmark_measures_export_and_evaluation(tmp_path):
    work = tmp_path / "bench"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "benchmark_export.py"), "--shape", "tiny", "--tokenizer", "tiny",
         "--mode", "lora", "--work-dir", str(work), "--problems", "2", "--max-new-tokens", "8", "--rows", "16"],
        capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((work / "export_results.json").read_text())
    assert report["mode"] == "lora" and report["model_bytes"] > 0
    assert report["export_peak_bytes"] > report["model_bytes"]  # the Python process alone is larger here
    assert report["eval_problems"] == 2 and report["eval_output_tokens_per_second"] > 0
    row = [line for line in result.stdout.splitlines() if line.startswith("| tiny | lora |")]
    assert row and f"{report['export_peak_bytes'] / 2**30:.2f}" in row[0]
    assert (work / "exported-lora" / "run_record.json").is_file()  # the export carries how it was made
