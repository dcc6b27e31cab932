"""scripts/benchmark_export.py on the tiny shape: one training step, export and evaluation, each measured.

The real shapes' figures (SFT_FRAMEWORK_OVERVIEW.md) come from the same script with --shape.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

pytestmark = pytest.mark.slow


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
