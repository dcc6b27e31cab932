"""scripts/gpu_check.sh: its CPU mode end to end (every part passes on tiny shapes), and its judgements.

The CPU mode trains five times through the launchers (two configurations, LoRA, a stopped run
and its resumption), exports both final checkpoints and evaluates them, so the script a GPU
machine will run is itself run on every change. The judgements (resume exactness, the plugins'
evidence, a part that fails or runs out of time) are checked on made-up inputs.
"""

from __future__ import annotations

import importlib.util
import json
import shlex
import subprocess
import sys
from argparse import Namespace

import pytest

from conftest import REPO_ROOT

_spec = importlib.util.spec_from_file_location("gpu_check", REPO_ROOT / "scripts" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = gpu_check  # its dataclasses look their module up there
_spec.loader.exec_module(gpu_check)


@pytest.mark.slow
def test_the_cpu_mode_runs_every_part_and_reports_each(tmp_path):
    work = tmp_path / "check"
    result = subprocess.run([str(REPO_ROOT / "scripts" / "gpu_check.sh"), "--cpu-tiny", "--work-dir", str(work),
                             "--time-limit", "1200"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            timeout=1500)
    report = json.loads((work / "gpu_check.json").read_text())
    statuses = {part["name"]: part["status"] for part in report["parts"]}
    assert result.returncode == 0 and report["all_passed"], (statuses, result.stdout[-4000:])
    assert list(statuses) == ["inputs", "full", "resume", "lora", "export", "plugins"]
    runs = report["runs"]
    for name in ("original", "ours", "lora"):  # parts 1 and 2: measured as scripts/benchmark_training.py measures
        assert runs[name]["ok"] and runs[name]["steps"] == 2 and runs[name]["tokens_per_s_per_device"] > 0
        assert runs[name]["plan_total_gb"] > 0 and runs[name]["peak_memory_gb"] > 0
        assert 0 < runs[name]["mfu_ours"] < 1
    assert runs["original"]["tokens"] == runs["ours"]["tokens"]  # the same samples at the same steps
    resume = report["details"]["resume"]
    assert resume["verdict"] == "bit-identical" and resume["stop_after"] == 2  # CPU, fp32: exact
    assert (work / "runs" / "resume" / "global_step_4").is_dir()
    for name in ("full", "lora"):
        evaluation = report["details"]["export"][name]["transformers"]
        assert evaluation["graded"] == 4 and evaluation["device"] == "cpu"
    plugins = report["details"]["plugins"]
    assert "sft.verl_plugins.lora_precision" in plugins["lora"]["loaded"]
    assert "sft.verl_plugins.lora_precision" not in plugins["ours"]["loaded"]
    assert plugins["resume-stop"]["evidence"]["sft.verl_plugins.stop_file"].startswith("stop file honoured after step 2")
    assert "2 rank(s) of 2" in plugins["ours"]["evidence"]["sft.verl_plugins.sharded_loading"]
    assert "checkpoint: adapters float32, frozen base bfloat16" in plugins["lora"]["evidence"][
        "sft.verl_plugins.lora_precision"]
    table = (work / "gpu_check.md").read_text()
    assert "| 1 | ours | pass |" in table and "| 3 | resume | pass |" in table and "| 5 | plugins | pass |" in table
    assert table in result.stdout.replace("\r", "")  # printed as written


STEP = {"train/global_tokens": 1900.0, "train/lr": 1e-5, "train/loss": 6.25, "train/grad_norm": 1.125}


def _steps(count: int, **changes) -> dict[int, dict]:
    return {step: {**STEP, **changes} for step in range(1, count + 1)}


def test_a_resume_is_exact_on_cpu_and_within_bf16_noise_on_gpu():
    same = gpu_check.compare_steps(_steps(3), _steps(3))
    assert gpu_check.judge_resume(same, same, "cpu") == (True, "bit-identical")
    noisy = gpu_check.compare_steps(_steps(3), _steps(3, **{"train/loss": 6.25 * (1 + 1e-5)}))
    assert gpu_check.judge_resume(same, noisy, "cuda") == (True, "within 0.001 relative")
    ok, why = gpu_check.judge_resume(same, noisy, "cpu")
    assert not ok and "train/loss after the resume differs by 1.00e-05 relative (allowed 0)" in why


def test_a_resume_with_another_schedule_or_other_data_fails_even_on_a_gpu():
    same = gpu_check.compare_steps(_steps(3), _steps(3))
    lr = gpu_check.compare_steps(_steps(3), _steps(3, **{"train/lr": 2e-5}))
    assert not gpu_check.judge_resume(same, lr, "cuda")[0]
    tokens = gpu_check.compare_steps(_steps(3), _steps(3, **{"train/global_tokens": 1901.0}))
    assert "train/global_tokens after the resume" in gpu_check.judge_resume(same, tokens, "cuda")[1]
    missing = gpu_check.compare_steps(_steps(3), _steps(2))
    assert missing["missing_steps"] == [3] and not gpu_check.judge_resume(same, missing, "cuda")[0]


def test_the_plugins_are_read_from_the_command_the_launcher_printed():
    command = shlex.join(["/venv/bin/python", "-m", "torch.distributed.run", "-m", "verl.trainer.sft_trainer",
                          "data.custom_cls.path=/repo/sft/verl_plugins/sft_dataset.py", "data.custom_cls.path="
                          "/repo/sft/bench/padded_dataset.py"])
    log = ("[verl-sft] command:\n  PYTHONPATH=/repo VERL_USE_EXTERNAL_MODULES=sft.bench.check_hooks,"
           f"sft.verl_plugins.stop_file,sft.verl_plugins.sharded_loading OMP_NUM_THREADS=1 {command}\n")
    modules, dataset = gpu_check.loaded_plugins(log)
    assert modules == ["sft.verl_plugins.stop_file", "sft.verl_plugins.sharded_loading"]  # the check's hooks left out
    assert dataset == "/repo/sft/bench/padded_dataset.py"  # the user's override, last, is what verl used
    assert gpu_check.loaded_plugins("no command here\n") == ([], "")


def _check(tmp_path, device="cuda", config="ours") -> "gpu_check.Check":
    check = gpu_check.Check(Namespace(work_dir=str(tmp_path), time_limit=60), gpu_check.GPU)
    check.inputs["device"] = device
    check.runs["run"] = {"config": config, "metrics": {}, "log": tmp_path / "run.log", "output_dir": tmp_path}
    return check


def _load_record(check, rank, world, read, held, total=4 << 30):
    directory = check.work / "probe" / "run"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"load_rank{rank}.json").write_text(json.dumps({
        "rank": rank, "world": world, "bytes_read": read, "checkpoint_bytes": total, "parameter_bytes_held": held,
        "parameter_bytes_whole": total, "device": "cuda", "peak_allocated_during_load": held + (1 << 28)}))


SHARDED_LINE = "[verl-sft] loaded each rank's shard from the safetensors files (no full copy ...)\n"


def test_sharded_loading_passes_when_each_rank_read_and_holds_its_share(tmp_path):
    check = _check(tmp_path)
    for rank in range(2):
        _load_record(check, rank, 2, read=(2 << 30) + 4096, held=2 << 30)
    evidence = gpu_check.sharded_loading_evidence(check, "run", SHARDED_LINE)
    assert evidence.startswith("2 rank(s) of 2: each read at most 2.00 GiB of 4.00 GiB and holds 2.00 GiB")
    assert "GPU peak while loading 2.25 GiB" in evidence


def test_sharded_loading_fails_when_a_rank_read_the_whole_model(tmp_path):
    check = _check(tmp_path)
    _load_record(check, 0, 2, read=4 << 30, held=2 << 30)
    _load_record(check, 1, 2, read=2 << 30, held=2 << 30)
    with pytest.raises(gpu_check.PartFailed, match="rank 0 of 2 read 4,294,967,296 of 4,294,967,296 bytes"):
        gpu_check.sharded_loading_evidence(check, "run", SHARDED_LINE)


def test_verls_own_loading_is_expected_for_fsdp1_only(tmp_path):
    fallback = ("[verl-sft] loading the model as verl does (not a plain FSDP2 training engine (strategy, offload "
                "policy or forward-only); sft/verl_plugins/sharded_loading.py)\n")
    evidence = gpu_check.sharded_loading_evidence(_check(tmp_path / "a", config="original"), "run", fallback)
    assert evidence.startswith("verl's own loading, as expected for FSDP1")
    with pytest.raises(gpu_check.PartFailed, match="sharded loading did not apply"):
        gpu_check.sharded_loading_evidence(_check(tmp_path / "b", config="ours"), "run", fallback)
    with pytest.raises(gpu_check.PartFailed, match="no sign of sharded loading"):
        gpu_check.sharded_loading_evidence(_check(tmp_path / "c"), "run", "nothing\n")


def test_a_failing_part_leaves_the_others_and_the_report_says_which(tmp_path, monkeypatch, capsys):
    def broken(check):
        raise ValueError("a bug in this part")

    def refused(check):
        raise gpu_check.PartFailed("what was seen")

    def late(check):
        check.timeout(100)  # a run this part would start: the time limit is already spent

    def sleeps(check):
        check.deadline -= 10**6
        return "done"

    parts = (("inputs", "0", "inputs", lambda check: "built"), ("full", "1", "full", broken),
             ("resume", "3", "resume", refused), ("lora", "2", "lora", sleeps), ("export", "4", "export", late),
             ("plugins", "5", "plugins", lambda check: "looked"))
    monkeypatch.setattr(gpu_check, "PARTS", parts)
    assert gpu_check.main(["--cpu-tiny", "--work-dir", str(tmp_path)]) == 1
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    by_name = {part["name"]: part for part in report["parts"]}
    assert [p["status"] for p in report["parts"]] == ["pass", "fail", "fail", "pass", "fail", "pass"]
    assert by_name["full"]["error"] == "ValueError: a bug in this part"
    assert "Traceback" in by_name["full"]["figures"]["traceback"]
    assert by_name["resume"]["error"] == "what was seen"
    assert by_name["export"]["error"].startswith("not run: the check's time limit")
    assert not report["all_passed"]
    out = capsys.readouterr().out
    assert "| 1 | full | fail | | | | | | ValueError: a bug in this part |" in out


def test_without_a_gpu_the_check_points_to_the_cpu_mode(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    assert gpu_check.main([]) == 2
    assert "scripts/gpu_check.sh --cpu-tiny runs the same parts" in capsys.readouterr().err


def test_part_one_must_include_our_defaults(capsys):
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--full-configs", "original"])
    assert "must include ours" in capsys.readouterr().err


def test_every_plugin_the_launcher_can_load_has_its_evidence_check():
    from sft.verl_plugins.compat import CPU_ONLY, PLUGINS

    assert set(gpu_check.EVIDENCE) == {plugin.module for plugin in PLUGINS}
    assert set(gpu_check.CPU_ONLY_PLUGINS) == {p.module for p in PLUGINS if p.devices == CPU_ONLY} != set()
