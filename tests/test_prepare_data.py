"""sft/prepare_data.py: outputs verl can read, leak-free shuffled split, filters, bad input, manifest."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sft.dataprep.jsonl_io import InputError
from sft.dataprep import write as data_write
from sft.prepare_data import DataError, PrepareConfig, main, prepare_data

REPO = Path(__file__).resolve().parent.parent


def _solution(i: int, answer: str | int) -> str:
    return f"Step 1: think about problem {i}.\nStep 2: compute.\nThe answer is \\boxed{{{answer}}}."


def make_rows(problems: int = 40, per_problem: int = 3, with_ids: bool = True) -> list[dict]:
    rows = []
    for p in range(problems):
        for s in range(per_problem):
            row = {"prompt": f"Solve problem {p}: what is {p} + {p}?", "generated_solution": _solution(p, 2 * p + s),
                   "num_tokens": 20 + 10 * s, "solution_index": s}
            if with_ids:
                row = {"id": p, **row}
            rows.append(row)
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def read(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def non_blank_lines(*paths: Path) -> int:
    """Rows as the manifest must count them, computed independently of the code under test."""
    total = 0
    for path in paths:
        data = path.read_bytes()
        lines = data.split(b"\n")
        total += sum(1 for line in lines if line.strip(b" \t\r\n\x0b\x0c\xef\xbb\xbf"))
    return total


def assert_balanced(manifest: dict, *inputs: Path) -> None:
    c = manifest["counts"]
    accounted = sum(c["rejected"].values()) + c["deduplicated"] + sum(c["filtered"].values()) + c["train"] + c["val"]
    assert accounted == c["read"], c
    if inputs:
        assert c["read"] == non_blank_lines(*inputs), c


def run(tmp_path: Path, inputs, **config) -> dict:
    config.setdefault("progress", False)
    return prepare_data([str(p) for p in inputs], tmp_path / "out", PrepareConfig(**config))


# ---------------------------------------------------------------------------------------
# Outputs and split


def test_outputs_messages_fields_and_manifest(tmp_path):
    source = write_jsonl(tmp_path / "a.jsonl", make_rows())
    manifest = run(tmp_path, [source], system_prompt="Be careful.")
    out = tmp_path / "out"
    train, val = read(out / "train.parquet"), read(out / "val.parquet")
    assert len(train) + len(val) == 120
    row = train[0]
    assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]
    assert row["messages"][0]["content"] == "Be careful."
    assert row["messages"][1]["content"] == row["prompt"]
    assert row["messages"][2]["content"] == row["generated_solution"]
    assert set(row) == {"messages", "id", "prompt", "generated_solution", "num_tokens", "solution_index"}
    schema = pq.read_schema(out / "train.parquet")
    assert str(schema.field("id").type) == "int64" and str(schema.field("num_tokens").type) == "int64"
    messages_type = schema.field("messages").type
    assert pa.types.is_list(messages_type)
    assert messages_type.value_type == pa.struct([("role", pa.string()), ("content", pa.string())])
    # Same rows as the input, each exactly once.
    originals = {(r["id"], r["solution_index"]) for r in make_rows()}
    assert sorted((r["id"], r["solution_index"]) for r in train + val) == sorted(originals)
    # Manifest: inputs with size and sha256, counts, outputs.
    source_info = manifest["inputs"][0]
    assert source_info["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert source_info["bytes"] == source.stat().st_size and source_info["rows"] == 120
    assert manifest["counts"]["train"] == len(train) and manifest["counts"]["val"] == len(val)
    assert manifest["outputs"]["train"]["rows"] == len(train)
    assert "pyarrow" in manifest["versions"] and manifest["config"]["system_prompt"] == "Be careful."
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert not (out / "rejects.jsonl").exists() and not "tokens" in manifest
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no temporary files left
    assert_balanced(manifest, source)


def test_split_is_by_problem_exact_fraction_and_seeded(tmp_path):
    source = write_jsonl(tmp_path / "a.jsonl", make_rows(problems=100, per_problem=3))
    manifest = run(tmp_path, [source], val_split=0.1, seed=3)
    out = tmp_path / "out"
    train_ids = {r["id"] for r in read(out / "train.parquet")}
    val_ids = {r["id"] for r in read(out / "val.parquet")}
    assert not train_ids & val_ids  # no problem on both sides
    assert len(val_ids) == 10 and len(train_ids) == 90  # exactly round(0.1 * problems)
    assert manifest["split"]["val_problems"] == 10 and manifest["counts"]["val"] == 30
    again = prepare_data([str(source)], tmp_path / "again", PrepareConfig(val_split=0.1, seed=3, progress=False))
    assert read(tmp_path / "again" / "train.parquet") == read(out / "train.parquet")  # deterministic
    assert again["counts"] == manifest["counts"]
    other = prepare_data([str(source)], tmp_path / "other", PrepareConfig(val_split=0.1, seed=4, progress=False))
    assert {r["id"] for r in read(tmp_path / "other" / "val.parquet")} != val_ids
    assert other["counts"]["val"] == 30


def test_rows_are_shuffled_across_buckets(tmp_path):
    rows = [{**r, "pad": "x" * 300} for r in make_rows(problems=200, per_problem=2)]
    source = write_jsonl(tmp_path / "a.jsonl", rows)
    # A tiny shuffle buffer forces many on-disk buckets, as with inputs larger than memory.
    manifest = run(tmp_path, [source], val_split=0.0, shuffle_buffer_mb=0.02, chunk_mb=0.01)
    assert manifest["shuffle"]["buckets"] > 5
    train = read(tmp_path / "out" / "train.parquet")
    order = [(r["id"], r["solution_index"]) for r in train]
    assert sorted(order) == sorted((r["id"], r["solution_index"]) for r in rows)
    # Far from input order: few consecutive pairs survive a random permutation.
    input_position = {key: i for i, key in enumerate((r["id"], r["solution_index"]) for r in rows)}
    kept_neighbours = sum(input_position[b] == input_position[a] + 1 for a, b in zip(order, order[1:]))
    assert kept_neighbours < 20
    # Both halves of the input are spread over the whole output.
    first_half_positions = [i for i, key in enumerate(order) if input_position[key] < len(rows) // 2]
    assert min(first_half_positions) < 20 and max(first_half_positions) > len(rows) - 20


def test_val_split_zero_writes_no_val_and_removes_a_stale_one(tmp_path):
    source = write_jsonl(tmp_path / "a.jsonl", make_rows(problems=10))
    run(tmp_path, [source], val_split=0.2)
    assert (tmp_path / "out" / "val.parquet").exists()
    manifest = run(tmp_path, [source], val_split=0.0)
    assert not (tmp_path / "out" / "val.parquet").exists()
    assert manifest["counts"]["val"] == 0 and manifest["counts"]["train"] == 30
    assert "val" not in manifest["outputs"]


def test_rows_without_id_are_grouped_by_prompt(tmp_path):
    source = write_jsonl(tmp_path / "a.jsonl", make_rows(problems=50, with_ids=False))
    manifest = run(tmp_path, [source], val_split=0.2)
    train = {r["prompt"] for r in read(tmp_path / "out" / "train.parquet")}
    val = {r["prompt"] for r in read(tmp_path / "out" / "val.parquet")}
    assert not train & val and len(val) == 10
    assert_balanced(manifest, source)


def test_ids_restarting_per_file_are_reported(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", make_rows(problems=20))
    b = write_jsonl(tmp_path / "b.jsonl", [{**r, "prompt": "Other " + r["prompt"]} for r in make_rows(problems=20)])
    manifest = run(tmp_path, [str(tmp_path / "*.jsonl")])
    assert manifest["split"]["ids_with_several_prompts"] == 20
    assert any("--group-by prompt" in w for w in manifest["warnings"])
    by_prompt = prepare_data([str(a), str(b)], tmp_path / "p", PrepareConfig(group_by="prompt", progress=False))
    assert by_prompt["split"]["problems"] == 40
    assert_balanced(manifest, a, b)


def test_same_prompt_under_two_ids_is_reported_as_a_leak(tmp_path):
    rows = make_rows(problems=30, per_problem=1)
    rows += [{**r, "id": r["id"] + 1000} for r in rows]  # every problem twice, under two ids
    source = write_jsonl(tmp_path / "a.jsonl", rows)
    manifest = run(tmp_path, [source], val_split=0.3)
    assert manifest["split"]["val_prompts_also_in_train"] > 0
    assert any("both train and val" in w for w in manifest["warnings"])


def test_types_that_differ_between_files_become_text(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", make_rows(problems=5))
    b = write_jsonl(tmp_path / "b.jsonl", [{**r, "id": f"b-{r['id']}", "extra": {"k": 1}} for r in make_rows(problems=5)])
    manifest = run(tmp_path, [a, b], val_split=0.0)
    rows = read(tmp_path / "out" / "train.parquet")
    assert {r["id"] for r in rows} == {str(i) for i in range(5)} | {f"b-{i}" for i in range(5)}
    assert sorted(str(r["extra"]) for r in rows).count("None") == 15
    assert manifest["counts"]["train"] == 30


# ---------------------------------------------------------------------------------------
# Bad input: every case accounts for every row


BAD_CASES = {
    # name: (file bytes, rejected reasons expected under skip, rows kept, line of the first bad row)
    "malformed_json": (b'{"prompt": "p1", "generated_solution": "s1"}\n{"prompt": "p2", "generated_solution": \n'
                       b'{"prompt": "p3", "generated_solution": "s3"}\n', {"malformed_json": 1}, 2, 2),
    "truncated_last_line": (b'{"prompt": "p1", "generated_solution": "s1"}\n{"prompt": "p2", "generated_sol',
                            {"truncated_last_line": 1}, 1, 2),
    "invalid_utf8": (b'{"prompt": "p1", "generated_solution": "s1"}\n{"prompt": "caf\xe9", "generated_solution": "s"}\n',
                     {"invalid_utf8": 1}, 1, 2),
    "missing_keys": (b'{"prompt": "p1"}\n{"generated_solution": "s2"}\n{"prompt": "p3", "generated_solution": "s3"}\n',
                     {"missing_field": 2}, 1, 1),
    "null_values": (b'{"prompt": null, "generated_solution": "s1"}\n{"prompt": "p2", "generated_solution": null}\n'
                    b'{"prompt": "p3", "generated_solution": "s3"}\n', {"null_value": 2}, 1, 1),
    "non_string_values": (b'{"prompt": 12, "generated_solution": "s1"}\n{"prompt": "p2", "generated_solution": [1]}\n'
                          b'{"prompt": "p3", "generated_solution": {"t": 1}}\n{"prompt": "p4", "generated_solution": "s4"}\n',
                          {"not_a_string": 3}, 1, 1),
    "empty_strings": (b'{"prompt": "", "generated_solution": "s1"}\n{"prompt": "p2", "generated_solution": "  \\n "}\n'
                      b'{"prompt": "p3", "generated_solution": "s3"}\n', {"empty_string": 2}, 1, 1),
    "not_an_object": (b'[1, 2]\n"text"\n{"prompt": "p3", "generated_solution": "s3"}\n', {"not_an_object": 2}, 1, 1),
    "unpaired_surrogate": (b'{"prompt": "p\\ud800", "generated_solution": "s1"}\n{"prompt": "p2", "generated_solution": "s2"}\n',
                           {"invalid_unicode_escape": 1}, 1, 1),
    "invalid_id": (b'{"id": [1], "prompt": "p1", "generated_solution": "s1"}\n{"id": 2, "prompt": "p2", "generated_solution": "s2"}\n',
                   {"invalid_id": 1}, 1, 1),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_rows_are_rejected_with_file_line_and_reason(case, tmp_path):
    data, reasons, kept, first_bad = BAD_CASES[case]
    source = tmp_path / f"{case}.jsonl"
    source.write_bytes(data)
    manifest = run(tmp_path, [source], on_error="skip", val_split=0.0)
    assert manifest["counts"]["rejected"] == reasons
    assert manifest["counts"]["train"] == kept
    assert_balanced(manifest, source)
    rejects = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert len(rejects) == sum(reasons.values())
    assert {r["reason"] for r in rejects} == set(reasons)
    assert all(r["file"] == str(source) and r["detail"] for r in rejects)
    assert rejects[0]["line"] == first_bad
    assert manifest["outputs"]["rejects"]["rows"] == len(rejects)

    # Default --on-error fail: stop at the first bad row, name file and line, write nothing.
    with pytest.raises(DataError) as caught:
        prepare_data([str(source)], tmp_path / "fail", PrepareConfig(progress=False))
    assert f"{source}:{first_bad}:" in str(caught.value)
    assert list((tmp_path / "fail").iterdir()) == []


def test_blank_lines_bom_and_crlf_are_not_rows(tmp_path):
    source = tmp_path / "messy.jsonl"
    source.write_bytes(
        b'\xef\xbb\xbf{"id": 1, "prompt": "p1", "generated_solution": "s1"}\r\n'
        b"\r\n\n   \n"
        b'{"id": 2, "prompt": "p2", "generated_solution": "s2\\r\\nline two"}\r\n'
        b'{"id": 3, "prompt": "p3", "generated_solution": "s3"}'  # no newline at the end, but valid
    )
    manifest = run(tmp_path, [source], val_split=0.0)
    assert manifest["counts"]["read"] == 3 and manifest["counts"]["blank_lines"] == 3
    assert manifest["inputs"][0]["blank_lines"] == 3
    rows = {r["id"]: r for r in read(tmp_path / "out" / "train.parquet")}
    assert rows[1]["prompt"] == "p1"  # the BOM is not part of the first key or value
    assert rows[2]["generated_solution"] == "s2\r\nline two"
    assert_balanced(manifest, source)


def test_duplicate_ids_stay_together_and_dedup_counts_exact_duplicates(tmp_path):
    rows = make_rows(problems=30, per_problem=2)
    duplicates = [dict(r, generated_solution="  " + r["generated_solution"].replace(" ", "   ") + "\n") for r in rows[:10]]
    source = write_jsonl(tmp_path / "a.jsonl", rows + duplicates)
    manifest = run(tmp_path, [source], val_split=0.3, dedup=True)
    assert manifest["counts"]["deduplicated"] == 10
    train_ids = [r["id"] for r in read(tmp_path / "out" / "train.parquet")]
    val_ids = [r["id"] for r in read(tmp_path / "out" / "val.parquet")]
    assert not set(train_ids) & set(val_ids)
    assert_balanced(manifest, source)
    without = run(tmp_path, [source], val_split=0.3)
    assert without["counts"]["deduplicated"] == 0 and without["counts"]["train"] + without["counts"]["val"] == 70


def test_very_long_line(tmp_path):
    rows = make_rows(problems=3, per_problem=1)
    rows[1]["generated_solution"] = "Step: 1 + 1 = 2. " * 200_000 + "The answer is \\boxed{2}."  # 3.4 MB
    source = write_jsonl(tmp_path / "a.jsonl", rows)
    manifest = run(tmp_path, [source], val_split=0.0, chunk_mb=0.5)  # the line spans several reads
    kept = {r["id"]: r for r in read(tmp_path / "out" / "train.parquet")}
    assert kept[1]["generated_solution"] == rows[1]["generated_solution"]
    assert_balanced(manifest, source)


def test_nonexistent_file_and_empty_glob(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        run(tmp_path, [tmp_path / "missing.jsonl"])
    with pytest.raises(InputError, match="matches no file"):
        run(tmp_path, [str(tmp_path / "nothing" / "*.jsonl")])
    assert not (tmp_path / "out").exists()


def test_unwritable_output_directory(tmp_path):
    source = write_jsonl(tmp_path / "a.jsonl", make_rows(problems=2))
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(InputError, match="cannot write to output directory"):
        prepare_data([str(source)], blocker / "out", PrepareConfig(progress=False))
    if os.geteuid() != 0:  # root ignores directory permissions
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(InputError, match="cannot write to output directory"):
            prepare_data([str(source)], locked, PrepareConfig(progress=False))


def test_interrupted_run_leaves_previous_outputs_and_no_partial_files(tmp_path, monkeypatch):
    source = write_jsonl(tmp_path / "a.jsonl", make_rows(problems=20))
    run(tmp_path, [source])
    out = tmp_path / "out"
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def interrupted(table, schema, config):
        raise KeyboardInterrupt

    monkeypatch.setattr(data_write, "to_output", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, [source], seed=5)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_messages_field_is_the_conversation_and_is_never_overwritten(tmp_path):
    # A row's `messages` is its sample (a conversation); one that is not a usable conversation is a
    # bad row, never replaced by messages built from the prompt and response fields.
    source = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "p", "generated_solution": "s", "messages": []}])
    with pytest.raises(DataError, match="a.jsonl:1: field 'messages' is not a non-empty list of messages"):
        run(tmp_path, [source])
    # A field the user names wins or fails: never replaced by the row's `messages`.
    with pytest.raises(DataError, match="a.jsonl:1: field 'conversation' \\(--messages-key\\) is missing"):
        run(tmp_path, [source], messages_key="conversation")
    # With conversations read from another field, the row's `messages` moves aside (the output's is built).
    conversation = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    source = write_jsonl(tmp_path / "b.jsonl", [{"conversation": conversation, "messages": ["kept"]}])
    manifest = run(tmp_path, [source], messages_key="conversation", val_split=0.0)
    row = read(tmp_path / "out" / "train.parquet")[0]
    assert row["messages"] == conversation and row["input_messages"] == ["kept"] and "conversation" not in row
    assert manifest["layouts"]["messages_renamed"] == 1 and "input_messages" in " ".join(manifest["warnings"])


# ---------------------------------------------------------------------------------------
# Quality filters


def test_filters_are_counted_in_order(tmp_path):
    rows = make_rows(problems=20, per_problem=4)
    rows[0]["generated_solution"] = "I am not sure."  # no final answer
    rows[1]["num_tokens"] = 1  # too short
    rows[2]["num_tokens"] = 10_000  # too long
    source = write_jsonl(tmp_path / "a.jsonl", rows)
    manifest = run(tmp_path, [source], require_final_answer=True, min_tokens=5, max_tokens=1000, max_per_problem=2)
    filtered = manifest["counts"]["filtered"]
    assert filtered["no_final_answer"] == 1
    assert filtered["too_few_tokens"] == 1 and filtered["too_many_tokens"] == 1
    # problem 0 has one row left, the 19 others keep 2 of 4
    assert filtered["over_max_per_problem"] == 19 * 2
    kept = read(tmp_path / "out" / "train.parquet") + read(tmp_path / "out" / "val.parquet")
    by_problem = {}
    for r in kept:
        by_problem.setdefault(r["id"], []).append(r["solution_index"])
    assert all(sorted(v) == [0, 1] for k, v in by_problem.items() if k != 0)  # the first K in input order
    assert_balanced(manifest, source)


def test_correctness_against_answer_key_and_answers_file(tmp_path):
    rows = []
    for p in range(10):
        rows.append({"id": p, "prompt": f"q{p}", "generated_solution": "The answer is \\boxed{\\frac{1}{2}}.", "ref": "0.5"})
        rows.append({"id": p, "prompt": f"q{p}", "generated_solution": "So \\boxed{3}.", "ref": "0.5"})
        rows.append({"id": p, "prompt": f"q{p}", "generated_solution": "no idea", "ref": "0.5"})
    rows.append({"id": 99, "prompt": "q99", "generated_solution": "\\boxed{1}", "ref": None})
    source = write_jsonl(tmp_path / "a.jsonl", rows)
    manifest = run(tmp_path, [source], answer_key="ref", val_split=0.0)
    assert manifest["counts"]["filtered"] == {"no_reference_answer": 1, "no_answer_found": 10, "wrong_answer": 10}
    kept = read(tmp_path / "out" / "train.parquet")
    assert len(kept) == 10 and all("frac" in r["generated_solution"] for r in kept)
    assert all(r["sft_answer"] == "\\frac{1}{2}" and r["sft_answer_rule"] == "boxed" for r in kept)
    assert "math-verify" in manifest["versions"]
    assert manifest["grading"]["outcomes"] == {"correct": 10, "wrong": 10, "no_answer": 10, "no_reference": 1}
    assert manifest["grading"]["rules"] == {"boxed": 20, "none": 11}  # no reference: not graded
    drops = [json.loads(line) for line in (tmp_path / "out" / "answer_drops.jsonl").read_text().splitlines()]
    assert manifest["outputs"]["answer_drops"]["rows"] == len(drops) == 21
    wrong = next(d for d in drops if d["reason"] == "wrong_answer")
    assert wrong["answer"] == "3" and wrong["rule"] == "boxed" and wrong["reference"] == "0.5"
    assert wrong["line"] == 2 and wrong["row"]["generated_solution"] == "So \\boxed{3}."

    answers = tmp_path / "answers.jsonl"
    write_jsonl(answers, [{"id": p, "answer": "Thus \\boxed{1/2}"} for p in range(5)])
    manifest = run(tmp_path, [source], answers=str(answers), val_split=0.0)
    assert manifest["counts"]["filtered"]["wrong_answer"] == 5
    assert manifest["counts"]["filtered"]["no_reference_answer"] == 5 * 3 + 1
    assert manifest["counts"]["train"] == 5
    assert_balanced(manifest, source)
    answers_json = tmp_path / "answers.json"
    answers_json.write_text(json.dumps({str(p): "0.5" for p in range(10)}))
    assert run(tmp_path, [source], answers=str(answers_json), val_split=0.0)["counts"]["train"] == 10


def test_token_filter_without_counts_is_counted(tmp_path):
    rows = make_rows(problems=4, per_problem=1)
    del rows[0]["num_tokens"]
    source = write_jsonl(tmp_path / "a.jsonl", rows)
    manifest = run(tmp_path, [source], max_tokens=100, val_split=0.0)
    assert manifest["counts"]["filtered"] == {"no_token_count": 1}
    assert_balanced(manifest, source)


# ---------------------------------------------------------------------------------------
# Tokens and verl


def test_token_summary_and_recommendation(tmp_path, tiny_model_dir):
    rows = make_rows(problems=30, per_problem=2)
    rows[5]["generated_solution"] = "Step: 12 + 35 = 47. " * 400 + "\\boxed{47}"  # far longer than the rest
    source = write_jsonl(tmp_path / "a.jsonl", rows)
    manifest = run(tmp_path, [source], tokenizer=str(tiny_model_dir), max_length=1000)
    tokens = manifest["tokens"]
    assert tokens["before_length_filters"]["samples"] == 60
    assert tokens["before_length_filters"]["over_max_length"] == 1
    assert manifest["counts"]["filtered"] == {"over_max_length": 1}
    assert isinstance(tokens["recommended_max_length"], int) and isinstance(tokens["recommended_max_tokens_per_gpu"], int)
    kept = read(tmp_path / "out" / "train.parquet") + read(tmp_path / "out" / "val.parquet")
    longest = max(r["sft_num_tokens"] for r in kept)
    assert tokens["kept"]["max"] == longest
    assert longest <= tokens["recommended_max_length"] <= 1000
    assert tokens["recommended_max_length"] % 256 == 0 and tokens["recommended_max_length"] - longest < 256
    assert tokens["recommended_max_tokens_per_gpu"] >= tokens["recommended_max_length"]
    assert_balanced(manifest, source)


def test_training_dataset_reads_output_and_masks_only_the_response(tmp_path, tiny_model_dir, tiny_tokenizer):
    from verl.utils.dataset.multiturn_sft_dataset import MultiTurnSFTDataset

    from sft.verl_plugins.sft_dataset import ChatTemplateSFTDataset

    rows = make_rows(problems=6, per_problem=2)
    rows[0]["generated_solution"] = "\n  leading whitespace. \\boxed{1}"
    source = write_jsonl(tmp_path / "a.jsonl", rows)
    tokenizer = tiny_tokenizer
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for system in (None, "You are terse."):
        manifest = run(tmp_path, [source], tokenizer=str(tiny_model_dir), system_prompt=system, val_split=0.0)
        path = tmp_path / "out" / "train.parquet"
        table = read(path)
        config = {"max_length": manifest["tokens"]["recommended_max_length"], "truncation": "error",
                  "pad_mode": "no_padding"}
        dataset = ChatTemplateSFTDataset(str(path), tokenizer, config)
        verl_dataset = MultiTurnSFTDataset(str(path), tokenizer, config)  # this template renders per message
        assert len(dataset) == len(table) == 12
        for i, row in enumerate(table):
            item = dataset[i]
            ids, mask = item["input_ids"].tolist(), item["loss_mask"].tolist()
            assert len(ids) == row["sft_num_tokens"]  # our count is the training item's length
            assert ids == verl_dataset[i]["input_ids"].tolist()  # the same tokens verl's own dataset builds
            trained = [t for t, m in zip(ids, mask) if m]
            # exactly the response and its end of turn are trained on; the newline after it is not
            assert tokenizer.decode(trained) == row["generated_solution"] + "<|im_end|>"
            assert trained[-1] == eos
            start = mask.index(1)
            assert all(mask[start:-1]) and not any(mask[:start]) and mask[-1] == 0
            prefix = tokenizer.decode(ids[:start])
            assert prefix.endswith("<|im_start|>assistant\n") and row["prompt"] in prefix
            assert (system is None) == ("<|im_start|>system" not in prefix)


# ---------------------------------------------------------------------------------------
# Command line


@pytest.mark.slow
def test_cli_runs_as_a_script(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", make_rows(problems=5))
    script = REPO / "sft" / "prepare_data.py"
    help_text = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert help_text.returncode == 0 and "--val-split" in help_text.stdout and "--max-length" in help_text.stdout
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "*.jsonl"), "-o", "out", "--no-progress"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "train 12 rows, val 3 rows" in done.stdout
    assert (tmp_path / "out" / "train.parquet").exists()
    missing = subprocess.run([sys.executable, str(script), "nope/*.jsonl", "-o", "out2"], capture_output=True, text=True, cwd=tmp_path)
    assert missing.returncode == 2 and "matches no file" in missing.stderr


def test_main_exit_codes(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"prompt": "p", "generated_solution": "s"}\n{oops\n')
    assert main([str(bad), "-o", str(tmp_path / "o1"), "--no-progress"]) == 1
    assert f"{bad}:2:" in capsys.readouterr().err
    assert main([str(bad), "-o", str(tmp_path / "o2"), "--no-progress", "--on-error", "skip"]) == 0
    assert main([str(bad), "-o", str(tmp_path / "o3"), "--max-length", "10"]) == 2  # needs --tokenizer
    assert "needs --tokenizer" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------
# Parallel workers


def _padded_rows(problems: int) -> list[dict]:
    return [{**r, "pad": "y" * 200} for r in make_rows(problems=problems, per_problem=3)]


def test_workers_do_not_change_the_output(tmp_path):
    source = write_jsonl(tmp_path / "a.jsonl", _padded_rows(100))  # ~120 KB: many 8 KB tasks
    small = dict(task_mb=0.008, chunk_mb=0.002, shuffle_buffer_mb=0.03, dedup=True, max_per_problem=2)
    one = prepare_data([str(source)], tmp_path / "one", PrepareConfig(workers=1, progress=False, **small))
    two = prepare_data([str(source)], tmp_path / "two", PrepareConfig(workers=2, progress=False, **small))
    assert two["workers"] == 2 and one["workers"] == 1
    for name in ("train.parquet", "val.parquet"):
        assert read(tmp_path / "one" / name) == read(tmp_path / "two" / name)
    assert one["counts"] == two["counts"] and one["split"] == two["split"]
    assert one["counts"]["filtered"] == {"over_max_per_problem": 100}
    assert_balanced(two, source)


def test_bad_rows_in_later_tasks_get_absolute_line_numbers(tmp_path):
    rows = [json.dumps(r) for r in _padded_rows(60)]
    bad_lines = [5, 77, 150]
    for line in bad_lines:
        rows[line - 1] = '{"prompt": "broken'
    source = tmp_path / "a.jsonl"
    source.write_text("\n".join(rows) + "\n")
    small = dict(task_mb=0.008, chunk_mb=0.002, workers=2)
    manifest = run(tmp_path, [source], on_error="skip", **small)
    rejects = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rejects] == bad_lines
    assert all(r["raw"] == '{"prompt": "broken' for r in rejects)
    assert manifest["counts"]["rejected"] == {"malformed_json": 3}
    assert_balanced(manifest, source)
    with pytest.raises(DataError, match=rf"{source}:5: not valid JSON"):
        run(tmp_path, [source], **small)
    source.write_text("\n".join(rows[5:]) + "\n")  # now the first bad row is line 72, in a later task
    with pytest.raises(DataError, match=rf"{source}:72: not valid JSON"):
        run(tmp_path, [source], **small)


def test_token_counting_in_workers_matches_one_process(tmp_path, tiny_model_dir):
    source = write_jsonl(tmp_path / "a.jsonl", _padded_rows(60))
    parallelism_before = os.environ.get("TOKENIZERS_PARALLELISM")
    small = dict(task_mb=0.008, chunk_mb=0.002, tokenizer=str(tiny_model_dir), progress=False)
    one = prepare_data([str(source)], tmp_path / "one", PrepareConfig(workers=1, **small))
    longest = one["tokens"]["kept"]["max"]
    small["max_length"] = longest - 1  # drop the longest few, in whichever worker they are
    one = prepare_data([str(source)], tmp_path / "one", PrepareConfig(workers=1, **small))
    two = prepare_data([str(source)], tmp_path / "two", PrepareConfig(workers=2, **small))
    assert one["counts"]["filtered"]["over_max_length"] >= 1
    assert one["tokens"] == {**two["tokens"], "tokenizer": one["tokens"]["tokenizer"]}
    assert read(tmp_path / "one" / "train.parquet") == read(tmp_path / "two" / "train.parquet")
    assert os.environ.get("TOKENIZERS_PARALLELISM") == parallelism_before  # the caller's setting is restored


def _scan_everything(source: Path, spill_dir: Path, vectorised: bool, chunk_bytes: int = 600,
                     **settings) -> tuple[list, dict, pa.Schema, int]:
    from sft.dataprep import scan as data_scan
    from sft.dataprep.jsonl_io import conform_table

    spill_dir.mkdir()
    config = PrepareConfig(chunk_mb=chunk_bytes / (1 << 20), progress=False, **settings)
    assert config.chunk_bytes == chunk_bytes
    scanner = data_scan.Scanner(data_scan.ScanSettings(config, spill_dir=str(spill_dir), buckets=3))
    scanner.vectorised = vectorised
    vectorised_chunks = 0
    if vectorised:
        original = scanner._spill_vectorised

        def counting(*args):
            nonlocal vectorised_chunks
            taken = original(*args)
            vectorised_chunks += taken
            return taken

        scanner._spill_vectorised = counting
    results = [scanner.scan(task) for task in data_scan.plan_tasks([str(source)], task_bytes=3000)]
    spill = scanner.finish()
    buckets = {}
    for bucket, paths in spill.files.items():
        tables = [pa.ipc.open_stream(path).read_all() for path in paths]
        buckets[bucket] = pa.concat_tables([conform_table(t, spill.schema) for t in tables]).to_pylist()
    return results, buckets, spill.schema, vectorised_chunks


@pytest.mark.parametrize("settings", [{}, {"group_by": "prompt"}, {"dedup": True}, {"id_key": "absent"}])
def test_vectorised_scan_equals_the_row_by_row_scan(tmp_path, settings):
    # Chunks of every kind: int, string, float and missing ids; prompts that start with
    # whitespace or non-ASCII text; an extra field in some rows; and chunks with a blank
    # response, which must leave the vectorised path for the row-by-row one.
    rows = []
    for i in range(240):
        row = {"id": i // 3, "prompt": f"Solve problem {i // 3}", "generated_solution": _solution(i, i % 5), "n": i}
        block = i // 40
        if block == 1:
            row["id"] = f"s{i // 3}"
        elif block == 2:
            row["id"] = float(i // 3) if i % 2 else i // 3
        elif block == 3 and i % 4 == 0:
            row["id"] = None
        elif block == 4:
            row["prompt"] = ("\u00a0 " if i % 2 else " \t") + row["prompt"]
            if i % 5 == 0:
                row["extra"] = {"k": i}
        elif block == 5 and i % 13 == 0:
            row["generated_solution"] = " \n "
        rows.append(row)
    source = write_jsonl(tmp_path / "a.jsonl", rows)
    on_error = {"on_error": "skip"}
    by_row = _scan_everything(source, tmp_path / "by_row", vectorised=False, **on_error, **settings)
    vectorised = _scan_everything(source, tmp_path / "vectorised", vectorised=True, **on_error, **settings)
    assert vectorised[3] >= 5, "the vectorised path was hardly taken"
    assert vectorised[1] == by_row[1] and vectorised[2] == by_row[2]  # the same rows, values and types in every bucket
    for a, b in zip(by_row[0], vectorised[0]):
        for name in ("order", "groups", "prompts", "digests"):
            assert np.array_equal(getattr(a, name), getattr(b, name)) if getattr(a, name) is not None \
                else getattr(b, name) is None, name
        assert (a.rows_read, a.rejected, a.filtered) == (b.rows_read, b.rejected, b.filtered)
    assert sum(sum(r.rejected.values()) for r in vectorised[0]) == 3  # the three blank responses


def test_long_texts_are_written_without_dictionary_or_statistics(tmp_path):
    run(tmp_path, [write_jsonl(tmp_path / "a.jsonl", make_rows())])
    chunks = {}
    metadata = pq.ParquetFile(tmp_path / "out" / "train.parquet").metadata.row_group(0)
    for i in range(metadata.num_columns):
        column = metadata.column(i)
        chunks[column.path_in_schema] = (column.has_dictionary_page, column.is_stats_set)
    for text in ("messages.list.element.content", "prompt", "generated_solution"):
        assert chunks.pop(text) == (False, False), text
    assert chunks and all(chunks.values()), chunks  # ids, roles and the other fields keep both


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_scan_keeps_the_first_seen_order_of_nested_fields(tmp_path, seed):
    # A struct's field order is the order its fields are first seen in the input, not in the
    # bucket order the vectorised path builds its table in.
    rows = [{**r, "extra": {"j": "first"} if i == 0 else {"k": i}} for i, r in enumerate(make_rows(problems=20))]
    source = write_jsonl(tmp_path / "a.jsonl", rows)
    by_row = _scan_everything(source, tmp_path / "by_row", vectorised=False, chunk_bytes=1 << 20, seed=seed)
    vectorised = _scan_everything(source, tmp_path / "vectorised", vectorised=True, chunk_bytes=1 << 20, seed=seed)
    assert vectorised[3] >= 1
    assert vectorised[2] == by_row[2] and vectorised[2].field("extra").type.field(0).name == "j"
    assert vectorised[1] == by_row[1]
