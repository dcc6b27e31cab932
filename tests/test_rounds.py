"""sft/rounds.py: the loop's held-out check and its table of rounds, on files written here.

Run: .venv/bin/python -m pytest -q tests/test_rounds.py      (a few seconds)
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sft.common.errors import UserError
from sft.rounds import check_heldout, main, read_prompts, write_table


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def _data_dir(path: Path, prompts: list[str], val_prompts: list[str] = ()) -> Path:
    path.mkdir(parents=True)
    for name, items in (("train", prompts), ("val", val_prompts)):
        messages = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": p},
                     {"role": "assistant", "content": "\\boxed{1}"}] for p in items]
        pq.write_table(pa.table({"messages": messages}), path / f"{name}.parquet")
    return path


def test_read_prompts_takes_user_messages_of_train_parquet_and_prompts_of_jsonl(tmp_path):
    data = _data_dir(tmp_path / "data", ["What is  1 + 2?\n"], val_prompts=["Val only?"])
    assert read_prompts(data) == {"What is 1 + 2?"}  # whitespace collapsed; val.parquet is not trained on
    problems = _jsonl(tmp_path / "p.jsonl", [{"id": 0, "prompt": "A?"}, {"id": 1, "messages": [
        {"role": "user", "content": "B?"}, {"role": "assistant", "content": "x"}, {"role": "user", "content": "C?"}]}])
    assert read_prompts(problems) == {"A?", "B?", "C?"}


def test_check_heldout_refuses_a_heldout_prompt_in_training_data_even_with_other_whitespace(tmp_path):
    heldout = _jsonl(tmp_path / "heldout.jsonl", [{"id": 9, "prompt": "What is 4 + 5?"}, {"id": 8, "prompt": "Q8?"}])
    clean = _data_dir(tmp_path / "clean", ["What is 1 + 2?"])
    assert "none of the 2 held-out problems" in check_heldout(heldout, [clean])
    leaky = _data_dir(tmp_path / "leaky", ["What is 1 + 2?", "What is  4 +\t5?"])
    with pytest.raises(UserError, match=r"1 of the 2 held-out problems .* are also in .*leaky.*What is 4 \+ 5\?"):
        check_heldout(heldout, [clean, leaky])
    problems = _jsonl(tmp_path / "problems.jsonl", [{"id": 0, "prompt": "Q8?"}])
    with pytest.raises(UserError, match="problems.jsonl"):
        check_heldout(heldout, [problems])


def test_check_heldout_command_exits_2_with_one_line(tmp_path, capsys):
    heldout = _jsonl(tmp_path / "heldout.jsonl", [{"prompt": "Q?"}])
    assert main(["--check-heldout", str(heldout), "--training", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "missing" in err


def _round_files(root: Path, accuracy: float, train: int, self_rows: int | None, generation: dict | None) -> None:
    (root / "data").mkdir(parents=True)
    manifest = {"counts": {"train": train}}
    if self_rows is not None:
        manifest["sources"] = {"seed": {"train": train - self_rows}, "self": {"train": self_rows}}
    (root / "data" / "manifest.json").write_text(json.dumps(manifest))
    if generation:
        (root / "samples").mkdir()
        (root / "samples" / "generation.json").write_text(json.dumps({"summary": generation}))


def test_table_lists_every_round_with_its_change_against_the_one_before(tmp_path):
    demo = tmp_path / "demo"
    _round_files(demo, 0.30, 1350, None, None)
    for name, acc, correct in (("base", 0.0, 0), ("fine-tuned", 0.30, 60)):
        (demo / "eval" / name).mkdir(parents=True)
        (demo / "eval" / name / "summary.json").write_text(json.dumps(
            {"accuracy": acc, "num_correct": correct, "num_graded": 200}))
    _round_files(demo / "round-2", 0.45, 3000, 1650, {
        "samples": 6000, "samples_per_second": 90.0, "correct_sample_rate": 0.25, "solved_problem_rate": 0.6})
    (demo / "round-2" / "eval").mkdir()
    (demo / "round-2" / "eval" / "summary.json").write_text(json.dumps(
        {"accuracy": 0.45, "num_correct": 90, "num_graded": 200}))
    table = write_table(demo, {1: 95, 2: 180})
    lines = table.splitlines()
    assert lines[2].startswith("| 1 | - | 1,350 (0) | - | 30.0% (60/200) | +30.0 points | 95 s |")
    assert lines[3].startswith("| 2 | - | 3,000 (1,650) | 6,000 at 90.0 samples/s: 25.0%, 60.0% | 45.0% (90/200) "
                               "| +15.0 points | 180 s |")
    assert (demo / "rounds.md").read_text() == table + "\n"
    record = json.loads((demo / "rounds.json").read_text())
    assert [r["accuracy"] for r in record["rounds"]] == [0.30, 0.45] and record["base_accuracy"] == 0.0


def test_table_of_an_unfinished_round_names_it(tmp_path):
    demo = tmp_path / "demo"
    _round_files(demo, 0.3, 10, None, None)
    with pytest.raises(UserError, match="round 1 has no eval summary"):
        write_table(demo, {})
