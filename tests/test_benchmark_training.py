"""scripts/benchmark_training.py on CPU in its tiny shape: every part runs and the figures add up.

Run: .venv/bin/python -m pytest -q tests/test_benchmark_training.py     (about 3 minutes on 2 cores)

It checks the plumbing (model and data built, each configuration trained through its launcher,
steps timed, real tokens counted, the launcher's memory plan read and set beside the measured
peak, tables and JSON written), not the speed: timings on a shared machine say nothing in a test.
The speed figures come from running the script itself.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

_spec = importlib.util.spec_from_file_location("benchmark_training", REPO_ROOT / "scripts" / "benchmark_training.py")
benchmark = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = benchmark  # its dataclasses look their module up there
_spec.loader.exec_module(benchmark)
from sft.bench import trl_run  # noqa: E402

# What scripts/run_sft_peft.sh printed in a tiny CPU run (between its settings and verl's own lines).
LAUNCHER_OUTPUT = """\
[verl-sft] checked in 4.1 s: verl's config composes with every override, and SFTDataset loads and accepts the data.
[verl-sft] Memory plan per cpu device: qwen2, 0.2M params, LoRA r=32 all-linear (0.09M adapter params)
  FSDP world size 2, 512 tokens per micro batch, fp32 compute, gradient checkpointing off
  state    frozen base parameters (fp32, 1/2 shard)               0.00 GiB
  state    LoRA adapters (fp32, 1/2 shard)                        0.00 GiB
  state    runtime overhead (assumed)                             0.50 GiB
  compute  saved activations (512 tokens, checkpointing off)      0.01 GiB
  loss     logits + loss copies (512 x 512 x 12 B)                1.25 GiB
  layer    a layer's activation gradients                         0.00 GiB
  step     AdamW step temporaries (1 shard copy)                  0.00 GiB
  host     host RAM at load (rank 0; all if tied)                 3.75 GiB
  total    state + max(compute + max(loss, layer), step)          1.76 GiB
  (DRY_RUN=1 lists the assumptions)
[verl-sft] run record: /tmp/runs/ours-lora/run_record.json
  total    a later line that is not the plan's                    9.99 GiB
"""


def test_the_launchers_memory_plan_is_read_from_its_output():
    title, total, items = benchmark.parse_memory_plan(LAUNCHER_OUTPUT.splitlines(keepends=True))
    assert title == "Memory plan per cpu device: qwen2, 0.2M params, LoRA r=32 all-linear (0.09M adapter params)"
    assert total == 1.76
    assert [item["phase"] for item in items] == ["state", "state", "state", "compute", "loss", "layer", "step",
                                                 "host"]
    assert items[0] == {"phase": "state", "name": "frozen base parameters (fp32, 1/2 shard)", "gb": 0.0}
    assert items[4] == {"phase": "loss", "name": "logits + loss copies (512 x 512 x 12 B)", "gb": 1.25}
    assert items[-1]["gb"] == 3.75


def test_an_unknown_plan_total_and_a_missing_plan_read_as_none():
    unknown = ["[verl-sft] Memory plan per cuda device: unknown model, parameters unknown, full fine-tuning\n",
               "  FSDP world size 8, 8192 tokens per micro batch, bf16 compute, gradient checkpointing on\n",
               "  total    unknown: model_type 'mamba' is not a dense decoder this plan counts\n"]
    assert benchmark.parse_memory_plan(unknown) == (unknown[0][11:].strip(), None, [])
    assert benchmark.parse_memory_plan(["step:1 - train/loss:2.0\n"]) == ("", None, [])


def test_the_memory_table_sets_plan_beside_measured():
    run = benchmark.RunResult(config="ours-lora", ok=True, peak_memory_gb=1.43, peak_rss_sum_gb=1.43,
                              peak_rss_max_process_gb=0.61, plan_total_gb=0.51)
    failed = benchmark.RunResult(config="ours", ok=False, error="timed out after 9s", plan_total_gb=0.5)
    cpu = benchmark.format_memory_table([run, failed], processes=2, device="cpu")
    assert "| ours-lora | 0.51 | 0.61 | 1.20x | 1.02 | 1.43 |" in cpu
    assert "| ours | 0.50 | failed: timed out after 9s | | 1.00 | |" in cpu
    gpu = benchmark.format_memory_table([run], processes=2, device="cuda")
    assert "| ours-lora | 0.51 | 1.43 | 2.80x | 1.02 | - |" in gpu


@pytest.mark.slow
def test_tiny_shape_compares_original_and_ours_on_cpu(tmp_path):
    work = tmp_path / "bench"
    configs = ["original", "ours", "ours-lora"]
    command = [sys.executable, str(REPO_ROOT / "scripts" / "benchmark_training.py"), "--shape", "tiny",
               "--tokenizer", "tiny", "--device", "cpu", "--configs", ",".join(configs), "--rows", "48",
               "--median-words", "40", "--max-words", "150", "--max-length", "512", "--train-batch-size", "8",
               "--warmup-steps", "1", "--steps", "2", "--timeout", "600", "--work-dir", str(work)]
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=1500)
    assert result.returncode == 0, result.stdout[-5000:]
    report = json.loads((work / "benchmark_results.json").read_text())
    runs = {r["config"]: r for r in report["results"]}
    assert set(runs) == set(configs)
    for name, run in runs.items():
        assert run["ok"], (name, run["error"])
        assert run["steps"] == 2 and len(run["step_seconds"]) == 2
        assert all(seconds > 0 for seconds in run["step_seconds"])
        assert run["tokens"] > 0 and run["tokens_per_s_per_device"] > 0
        assert 0 < run["mfu_ours"] < 1  # against the CPU matmul peak measured in the same run
        assert run["peak_memory_gb"] > 0
        # The launcher's plan for one device was read, and one training process measured beside it.
        assert run["plan_total_gb"] > 0 and run["plan_title"].startswith("Memory plan per cpu device")
        assert {item["phase"] for item in run["plan_items"]} >= {"state", "compute", "loss", "step"}
        assert run["training_processes"] == 2
        assert 0 < run["peak_rss_max_process_gb"] < run["peak_rss_sum_gb"] == run["peak_memory_gb"]
    assert "LoRA r=32" in runs["ours-lora"]["plan_title"]  # trained through scripts/run_sft_peft.sh
    assert "frozen base parameters (bf16, 1/2 shard)" in [item["name"] for item in runs["ours-lora"]["plan_items"]]
    # Every configuration trained on the same samples, so they count the same real tokens.
    assert runs["original"]["tokens"] == runs["ours"]["tokens"] == runs["ours-lora"]["tokens"]
    assert (work / "runs" / "original.log").is_file()  # each configuration's whole training log is kept
    assert "ours / original:" in result.stdout and "tokens/s" in result.stdout
    table = (work / "benchmark_results.md").read_text()
    assert "| original |" in table and "| ours |" in table
    assert "| config | plan GiB per device | measured GiB per process (max) | measured/plan |" in result.stdout
    for name in configs:  # a row of numbers per configuration: plan, measured, ratio, x processes, all
        row = re.search(rf"^\| {re.escape(name)} \| ([0-9.]+) \| ([0-9.]+) \| ([0-9.]+)x \| ([0-9.]+) \| ([0-9.]+) \|$",
                        result.stdout, re.MULTILINE)
        assert row, (name, result.stdout[-3000:])
        plan, measured, _, together, everything = (float(value) for value in row.groups())
        assert plan == runs[name]["plan_total_gb"] and together == pytest.approx(2 * plan, abs=0.011)
        assert measured == pytest.approx(runs[name]["peak_rss_max_process_gb"], abs=0.006)
        assert everything == pytest.approx(runs[name]["peak_rss_sum_gb"], abs=0.006)


@pytest.mark.slow
def test_unknown_configuration_is_refused(tmp_path):
    result = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "benchmark_training.py"), "--configs",
                             "ours,fastest", "--work-dir", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
    assert result.returncode == 2
    assert "unknown configuration(s) fastest" in result.stdout


def _trl_site() -> str:
    """Where TRL is installed for these tests: $TRL_SITE, or "" when `import trl` works as it is."""
    return os.environ.get("TRL_SITE", "")


def test_a_skipped_trl_configuration_shows_the_install_hint_in_the_table():
    skipped = benchmark._skipped_trl("trl-pack")
    assert skipped.skipped and not skipped.ok
    table = benchmark.format_table([skipped], "2x CPU")
    assert "| trl-pack | skipped: TRL is not installed" in table
    assert f"pip install --no-deps --target .trl-site trl=={trl_run.TRL_VERSION}" in table


def test_asking_only_for_trl_without_trl_installed_stops_with_the_install_hint(tmp_path):
    env = {**os.environ, "TRL_SITE": str(tmp_path / "empty"), "PYTHONPATH": ""}
    probe = subprocess.run([sys.executable, "-c", "import trl"], env=env, capture_output=True)
    if probe.returncode == 0:
        pytest.skip("TRL is importable in this environment: the missing-TRL path cannot be shown")
    result = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "benchmark_training.py"), "--configs",
                             "trl-pad,trl-pack", "--work-dir", str(tmp_path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stdout.startswith("error: only TRL configurations asked for (trl-pad,trl-pack). TRL is not "
                                    "installed (it is not a dependency of verl-sft).")
    assert "pip install --no-deps --target .trl-site trl==1.16.0; then run the benchmark with TRL_SITE=.trl-site" \
        in result.stdout
    assert "Traceback" not in result.stdout and not (tmp_path / "data").exists()  # refused before any work


def test_verl_sample_order_gives_each_step_the_samples_verls_sampler_gives_it():
    lengths = [10 + 7 * i for i in range(40)]
    order = trl_run.verl_sample_order(len(lengths), world=2, train_batch_size=8, steps=3)
    assert len(order) == 24 and len(set(order)) == 24
    per_step = benchmark.real_tokens_per_step(lengths, 2, 8, 3)
    assert [sum(lengths[i] for i in order[step * 8:(step + 1) * 8]) for step in range(3)] == \
        [per_step[1], per_step[2], per_step[3]]


@pytest.mark.slow
def test_tiny_shape_runs_ours_beside_trl_on_the_same_loss_bearing_tokens(tmp_path):
    """About 40 s on 2 cores. Needs TRL (skipped with the install hint otherwise)."""
    if not trl_run.trl_available(_trl_site()):
        pytest.skip(trl_run.TRL_INSTALL_HINT)
    work = tmp_path / "bench"
    command = [sys.executable, str(REPO_ROOT / "scripts" / "benchmark_training.py"), "--shape", "tiny",
               "--tokenizer", "tiny", "--device", "cpu", "--configs", "ours,trl-pad,trl-pack", "--rows", "48",
               "--median-words", "40", "--max-words", "150", "--max-length", "512", "--train-batch-size", "8",
               "--warmup-steps", "1", "--steps", "2", "--timeout", "600", "--work-dir", str(work),
               "--trl-site", _trl_site()]
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-5000:]
    runs = {r["config"]: r for r in json.loads((work / "benchmark_results.json").read_text())["results"]}
    for name in ("ours", "trl-pad", "trl-pack"):
        assert runs[name]["ok"] and not runs[name]["error"], (name, runs[name]["error"])
        assert runs[name]["tokens_per_s_per_device"] > 0 and runs[name]["tokens_per_cpu_s"] > 0
    # trl-pad trains the samples verl trains at each step: its own per-step count equals the replayed one.
    assert runs["trl-pad"]["tokens"] == runs["ours"]["tokens"]
    # Both TRL runs counted the loss-bearing tokens of their data both ways, and they agree.
    for name in ("trl-pad", "trl-pack"):
        loss = runs[name]["loss_tokens"]
        assert loss["ours"] == loss["trl"] > 0
    assert runs["trl-pad"]["training_processes"] == 2  # TRL's own torchrun workers were measured
    best = max(runs[n]["tokens_per_s_per_device"] for n in ("trl-pad", "trl-pack"))
    ratio = runs["ours"]["tokens_per_s_per_device"] / best
    row = re.search(r"^\| ours \| 2 \| [0-9.,]+ \| [0-9.,]+ \| [0-9,]+ \| 1\.00x \| ([0-9.]+)x \|", result.stdout,
                    re.MULTILINE)
    assert row and float(row.group(1)) == pytest.approx(ratio, abs=0.006), result.stdout[-3000:]
    assert re.search(rf"^\| trl-pad \| 2 \| .* \| {runs['trl-pad']['loss_tokens']['ours']:,} \|", result.stdout,
                     re.MULTILINE)
