"""The end-to-end demo, sft/example_train.sh, in its shortened mode (QUICK=1), with two rounds of the loop.

Run: .venv/bin/python -m pytest -q tests/test_demo.py      (about two minutes on 2 cores)

QUICK=1 runs every step of the real demo (synthetic data and tiny model, prepare_data, the full
fine-tuning launcher, export, evaluation of both models, the loss plot) on 150 problems for one
epoch: it checks the plumbing and that the loss falls, not the learned accuracy, which the full
demo reports (sft/README.md, "The demo"). ROUNDS=2 then runs one round of the loop on the same
files (sampling with the round-1 model, mixing its correct samples with the seed data, training
round 1's model further, evaluating): round 1 is the demo itself, so one run tests both.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT, launcher_env, train_losses
from sft.demo.synthetic_math import check_disjoint

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    demo_dir = tmp_path_factory.mktemp("demo") / "demo out"
    env = launcher_env(QUICK="1", ROUNDS="2", DEMO_DIR=str(demo_dir))
    env.pop("TRAIN_BATCH_SIZE")  # the demo's recipe sets it
    result = subprocess.run(
        [str(REPO_ROOT / "sft" / "example_train.sh")],
        env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-6000:]
    return demo_dir, result.stdout


def test_quick_demo_writes_every_artefact(quick_demo):
    demo_dir, output = quick_demo
    for name in ("problems.jsonl", "heldout.jsonl", "data/train.parquet", "data/val.parquet", "data/manifest.json",
                 "train.log", "fine-tuned-model/config.json", "comparison.md", "loss.png",
                 "eval/base/results.jsonl", "eval/fine-tuned/results.jsonl"):
        assert (demo_dir / name).is_file(), name
    assert (demo_dir / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (demo_dir / "comparison.md").read_text()
    assert "| accuracy |" in table and "| final-answer rate (standard form) |" in table
    assert table in output  # the table is printed at the end


def test_quick_demo_evaluates_both_models_on_every_heldout_problem(quick_demo):
    demo_dir, _ = quick_demo
    heldout = [json.loads(line) for line in (demo_dir / "heldout.jsonl").read_text().splitlines()]
    assert len(heldout) == 16
    for model in ("base", "fine-tuned"):
        summary = json.loads((demo_dir / "eval" / model / "summary.json").read_text())
        assert summary["num_graded"] == len(heldout), model
    fine_tuned = json.loads((demo_dir / "eval/fine-tuned/summary.json").read_text())
    assert fine_tuned["model"] == str(demo_dir / "fine-tuned-model")


def test_quick_demo_heldout_problems_never_appear_in_training(quick_demo):
    demo_dir, _ = quick_demo
    check_disjoint(demo_dir / "problems.jsonl", demo_dir / "heldout.jsonl")  # raises if one is shared
    import pandas as pd

    trained = set(pd.read_parquet(demo_dir / "data/train.parquet")["messages"].map(lambda m: m[0]["content"]))
    heldout = {json.loads(line)["prompt"] for line in (demo_dir / "heldout.jsonl").read_text().splitlines()}
    assert trained and not trained & heldout


def test_quick_demo_training_loss_falls(quick_demo):
    demo_dir, _ = quick_demo
    losses = train_losses((demo_dir / "train.log").read_text())
    steps = sorted(losses)
    assert len(steps) >= 8, losses
    first, last = losses[steps[0]], losses[steps[-1]]
    assert last < 0.5 * first, (first, last)


def test_demo_help_lists_its_settings():
    result = subprocess.run([str(REPO_ROOT / "sft" / "example_train.sh"), "--help"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60)
    assert result.returncode == 0
    for name in ("DEMO_DIR", "MODEL_NAME", "DATA_GLOB", "EVAL_FILE", "QUICK", "MAX_NEW_TOKENS"):
        assert name in result.stdout


def test_quick_demo_model_says_how_it_was_made(quick_demo):
    """The export carries the launch's run record and the manifest of the data it trained on."""
    demo_dir, _ = quick_demo
    model = demo_dir / "fine-tuned-model"
    record = json.loads((model / "run_record.json").read_text())
    launch = record["launches"][-1]
    assert launch["settings"]["TRAIN_FILE"] == str(demo_dir / "data" / "train.parquet")
    assert launch["versions"]["verl"] == "0.9.1"
    assert (model / "data_manifest.json").read_bytes() == (demo_dir / "data" / "manifest.json").read_bytes()
    provenance = json.loads((model / "export_info.json").read_text())["provenance"]
    assert provenance["manifest_unchanged"] is True


def test_quick_loop_samples_every_training_problem_with_the_round_one_model(quick_demo):
    demo_dir, _ = quick_demo
    record = json.loads((demo_dir / "round-2" / "samples" / "generation.json").read_text())
    assert record["status"] == "complete"
    assert record["settings"]["model"] == str(demo_dir / "fine-tuned-model")
    assert record["summary"]["problems"] == 150 and record["summary"]["samples"] == 150 * 4
    rows = [json.loads(line) for shard in sorted((demo_dir / "round-2" / "samples").glob("samples-*.jsonl"))
            for line in shard.read_text().splitlines()]
    assert len(rows) == 600 and {r["sample_index"] for r in rows} == {0, 1, 2, 3}
    check_disjoint(demo_dir / "round-2" / "samples" / "samples-00000.jsonl", demo_dir / "heldout.jsonl")


def test_quick_loop_round_two_trains_on_the_seed_data_and_only_correct_capped_samples(quick_demo):
    demo_dir, _ = quick_demo
    rows = [json.loads(line) for shard in sorted((demo_dir / "round-2" / "samples").glob("samples-*.jsonl"))
            for line in shard.read_text().splitlines()]
    manifest = json.loads((demo_dir / "round-2" / "data" / "manifest.json").read_text())
    seed, own = manifest["sources"]["seed"], manifest["sources"]["self"]
    assert seed["read"] == seed["kept"] == 300 and not seed["filtered_by_options"]  # the seed data as given
    assert own["read"] == 600 and own["filtered_by_options"]
    correct_per_problem: dict = {}
    for row in rows:
        correct_per_problem[row["id"]] = correct_per_problem.get(row["id"], 0) + bool(row["correct"])
    assert own["kept"] <= sum(min(c, 2) for c in correct_per_problem.values())  # correct, at most 2 a problem
    # prepare_data grades with the grader generate used: it drops exactly the samples marked wrong
    # (an empty sample is set aside as a bad row, --on-error skip, before grading), and every sample
    # cut off at the token budget (finish_reason "length": dropped as truncated, whatever its answer)
    wrong = own["filtered"].get("wrong_answer", 0) + own["filtered"].get("no_answer_found", 0)
    truncated = own["filtered"].get("truncated", 0)
    assert truncated <= sum(r["finish_reason"] == "length" for r in rows)
    assert wrong + truncated + sum(own["rejected"].values()) == sum(
        not r["correct"] or r["finish_reason"] == "length" for r in rows)
    assert set(own["rejected"]) <= {"empty_string"}
    assert own["train"] + own["val"] == own["kept"]
    assert manifest["counts"]["train"] == seed["train"] + own["train"]


def test_quick_loop_never_trains_on_a_heldout_problem_in_any_round(quick_demo):
    demo_dir, _ = quick_demo
    import pandas as pd

    heldout = {json.loads(line)["prompt"] for line in (demo_dir / "heldout.jsonl").read_text().splitlines()}
    for data in (demo_dir / "data", demo_dir / "round-2" / "data"):
        trained = set(pd.read_parquet(data / "train.parquet")["messages"].map(lambda m: m[0]["content"]))
        assert trained and not trained & heldout, data


def test_quick_loop_trains_round_one_model_further_and_tabulates_both_rounds(quick_demo):
    demo_dir, output = quick_demo
    record = json.loads((demo_dir / "round-2" / "fine-tuned-model" / "run_record.json").read_text())
    assert record["launches"][-1]["settings"]["MODEL_NAME"] == str(demo_dir / "fine-tuned-model")
    summary = json.loads((demo_dir / "round-2" / "eval" / "summary.json").read_text())
    assert summary["num_graded"] == 16
    table = (demo_dir / "rounds.md").read_text()
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert lines[1].startswith("| 1 | base | 270 (0) |") and lines[2].startswith("| 2 | round 1 |")
    rounds = json.loads((demo_dir / "rounds.json").read_text())["rounds"]
    assert [r["accuracy"] for r in rounds] == [
        json.loads((demo_dir / "eval/fine-tuned/summary.json").read_text())["accuracy"], summary["accuracy"]]
    assert table.strip() in output  # printed at the end
