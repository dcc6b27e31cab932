"""sft/prepare_data.py with several sources (--source NAME=GLOB, --weight NAME=W): exact counts per source,
repeats on one side of the split, seeded fractional weights, filters within a source, a leak-free split
across sources, one-line errors, and positional INPUT output unchanged."""

from __future__ import annotations

import collections
import hashlib
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from sft.dataprep.jsonl_io import InputError
from sft.prepare_data import PrepareConfig, main, prepare_data

SMALL_TASKS = dict(task_mb=0.004, chunk_mb=0.002, shuffle_buffer_mb=0.01)
"""Many scan tasks and shuffle buckets on inputs of a few KB."""


def rows_of(source: str, problems: range, per_problem: int, **extra) -> list[dict]:
    return [{"id": p, "prompt": f"Solve problem {p}: what is {p} + {p}?",
             "generated_solution": f"[{source} {k}] {p} + {p} = {2 * p}. The answer is \\boxed{{{2 * p}}}.",
             "src": source, "k": k, **extra}
            for p in problems for k in range(per_problem)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def written(out: Path) -> tuple[list[dict], list[dict]]:
    val = out / "val.parquet"
    return pq.read_table(out / "train.parquet").to_pylist(), pq.read_table(val).to_pylist() if val.exists() else []


def run(tmp_path: Path, sources, name: str = "out", weights=None, **config) -> dict:
    config.setdefault("progress", False)
    return prepare_data(sources, tmp_path / name, PrepareConfig(**config), weights=weights)


def assert_accounted(manifest: dict) -> None:
    """Every row read ends in an output or a counted drop, repeats apart: for the run and for each source."""
    c = manifest["counts"]
    dropped = c["rejected_total"] + c["filtered_total"] + c["deduplicated"] + c["removed_by_weight"]
    assert c["read"] == dropped + c["train"] + c["val"] - c["repeats"], c
    for name, s in manifest["sources"].items():
        assert s["read"] == sum(s["rejected"].values()) + sum(s["filtered"].values()) + s["deduplicated"] + s["kept"], name
        assert s["kept"] == s["removed_by_weight"] + s["train"] + s["val"] - s["repeats"], name
    for key in ("read", "deduplicated", "removed_by_weight", "repeats", "train", "val"):
        assert c[key] == sum(s[key] for s in manifest["sources"].values()), key
    outputs = manifest["outputs"]
    assert c["train"] == outputs["train"]["rows"] and c["val"] == outputs.get("val", {"rows": 0})["rows"]


def test_two_sources_with_weights_1_and_2_write_exact_counts_and_keep_copies_on_one_side(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", rows_of("a", range(0, 20), 2))
    b1 = write_jsonl(tmp_path / "b1.jsonl", rows_of("b", range(10, 20), 1))
    b2 = write_jsonl(tmp_path / "b2.jsonl", rows_of("b", range(20, 30), 1))
    manifest = run(tmp_path, {"orig": [str(a)], "self": [str(b1)]} | {"self": [str(b1), str(b2)]},
                   weights={"self": 2}, val_split=0.2, **SMALL_TASKS)
    train, val = written(tmp_path / "out")
    assert len(train) + len(val) == 40 + 2 * 20
    copies = collections.Counter((r["src"], r["id"], r["k"]) for r in train + val)
    assert {n for key, n in copies.items() if key[0] == "a"} == {1} and len(copies) == 60
    assert {n for key, n in copies.items() if key[0] == "b"} == {2}
    val_keys = {(r["src"], r["id"], r["k"]) for r in val}
    assert not val_keys & {(r["src"], r["id"], r["k"]) for r in train}  # both copies on the same side
    s = manifest["sources"]
    assert list(s) == ["orig", "self"]
    assert s["orig"] | {"files": None} == {
        "globs": [str(a)], "files": None, "weight": 1.0, "filtered_by_options": True, "read": 40, "blank_lines": 0, "extra_samples": 0, "rejected": {},
        "filtered": {}, "deduplicated": 0, "kept": 40, "removed_by_weight": 0, "repeats": 0,
        "train": sum(r["src"] == "a" for r in train), "val": sum(r["src"] == "a" for r in val)}
    assert s["self"]["files"] == [str(b1.resolve()), str(b2.resolve())] and s["self"]["weight"] == 2.0
    assert (s["self"]["read"], s["self"]["kept"], s["self"]["repeats"]) == (20, 20, 20)
    assert s["self"]["train"] == sum(r["src"] == "b" for r in train)
    assert s["self"]["val"] == 2 * sum(key[0] == "b" for key in val_keys)
    assert manifest["counts"]["repeats"] == 20 and manifest["split"]["problems"] == 30
    assert [i["source"] for i in manifest["inputs"]] == ["orig", "self", "self"]
    assert_accounted(manifest)


def test_fractional_weight_is_seeded_by_row_and_the_same_for_any_workers_or_tasks(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", rows_of("a", range(60), 5))  # 300 rows, many tasks
    weights = {"main": 0.5}
    one = run(tmp_path, [str(a)], "one", weights, workers=1, **SMALL_TASKS)
    two = run(tmp_path, [str(a)], "two", weights, workers=2, **SMALL_TASKS)
    assert written(tmp_path / "one") == written(tmp_path / "two")
    assert one["counts"] == two["counts"] and one["sources"] == two["sources"]
    kept = one["sources"]["main"]["kept"] - one["sources"]["main"]["removed_by_weight"]
    assert 110 < kept < 190 and one["counts"]["repeats"] == 0  # about half of 300
    # The draw is by file and line, not by task: other task sizes keep the same rows (in another order).
    other_tasks = run(tmp_path, [str(a)], "big", weights, workers=1, task_mb=1.0)
    keys = lambda out: sorted((r["id"], r["k"]) for part in written(out) for r in part)  # noqa: E731
    assert keys(tmp_path / "big") == keys(tmp_path / "one")
    assert other_tasks["counts"] == one["counts"]
    reseeded = run(tmp_path, [str(a)], "seed", weights, seed=1, **SMALL_TASKS)
    assert keys(tmp_path / "seed") != keys(tmp_path / "one")
    # 1.5: every row once, about half twice, again independent of the workers.
    up1 = run(tmp_path, [str(a)], "up1", {"main": 1.5}, workers=1, **SMALL_TASKS)
    up2 = run(tmp_path, [str(a)], "up2", {"main": 1.5}, workers=2, **SMALL_TASKS)
    assert written(tmp_path / "up1") == written(tmp_path / "up2")
    assert 110 < up1["counts"]["repeats"] < 190 and up1["counts"]["removed_by_weight"] == 0
    for manifest in (one, two, other_tasks, reseeded, up1):
        assert_accounted(manifest)


def test_weight_zero_writes_nothing_of_its_source_and_counts_it(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", rows_of("a", range(10), 2))
    b = write_jsonl(tmp_path / "b.jsonl", rows_of("b", range(5, 25), 1) + [{"prompt": "broken"}])
    manifest = run(tmp_path, {"a": [str(a)], "b": [str(b)]}, weights={"b": 0}, on_error="skip")
    train, val = written(tmp_path / "out")
    assert {r["src"] for r in train + val} == {"a"} and len(train) + len(val) == 20
    s = manifest["sources"]["b"]
    assert (s["read"], s["rejected"], s["kept"], s["removed_by_weight"], s["train"], s["val"]) == \
        (21, {"missing_field": 1}, 20, 20, 0, 0)
    assert manifest["split"]["problems"] == 10  # only problems with written rows are split
    assert_accounted(manifest)


def test_filters_act_within_each_source(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", rows_of("x", range(10), 3))
    b = write_jsonl(tmp_path / "b.jsonl", rows_of("x", range(10), 3))  # the same rows, byte for byte
    manifest = run(tmp_path, {"a": [str(a)], "b": [str(b)]}, max_per_problem=1, dedup=True, val_split=0.0)
    train, _ = written(tmp_path / "out")
    assert len(train) == 20 and collections.Counter(r["id"] for r in train) == {p: 2 for p in range(10)}
    for name in ("a", "b"):  # one per problem per source; identical rows of two sources are not duplicates
        assert manifest["sources"][name]["filtered"] == {"over_max_per_problem": 20}
        assert manifest["sources"][name]["deduplicated"] == 0 and manifest["sources"][name]["train"] == 10
    # Duplicates within a source are removed; the same row in another source stays.
    c = write_jsonl(tmp_path / "c.jsonl", rows_of("x", range(10), 1) * 2)
    manifest = run(tmp_path, {"a": [str(a)], "c": [str(c)]}, "dedup", dedup=True, val_split=0.0)
    assert (manifest["sources"]["a"]["deduplicated"], manifest["sources"]["c"]["deduplicated"]) == (0, 10)
    assert manifest["counts"]["train"] == 30 + 10
    assert_accounted(manifest)


def test_answer_key_missing_in_one_source_is_no_reference_answer_there(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", rows_of("a", range(4), 1, ref="0"))  # 2p != 0 except p = 0
    b = write_jsonl(tmp_path / "b.jsonl", rows_of("b", range(4), 1))  # no `ref` field
    manifest = run(tmp_path, {"a": [str(a)], "b": [str(b)]}, weights={"b": 3}, answer_key="ref", val_split=0.0)
    assert manifest["sources"]["a"]["filtered"] == {"wrong_answer": 3} and manifest["sources"]["a"]["train"] == 1
    assert manifest["sources"]["b"]["filtered"] == {"no_reference_answer": 4} and manifest["sources"]["b"]["kept"] == 0
    assert manifest["counts"]["filtered"] == {"no_reference_answer": 4, "wrong_answer": 3}
    assert_accounted(manifest)


@pytest.mark.parametrize("group_by", ["id", "prompt"])
def test_the_split_is_leak_free_across_sources(tmp_path, group_by):
    a = write_jsonl(tmp_path / "a.jsonl", rows_of("a", range(40), 1))
    b = write_jsonl(tmp_path / "b.jsonl", rows_of("b", range(40), 3))  # the model's samples of the same problems
    sources, settings = {"orig": [str(a)], "self": [str(b)]}, dict(val_split=0.25, group_by=group_by, **SMALL_TASKS)
    manifest = run(tmp_path, sources, weights={"self": 1.7}, workers=1, **settings)
    train, val = written(tmp_path / "out")
    assert not {r["id"] for r in train} & {r["id"] for r in val}
    assert len({r["id"] for r in val}) == 10 and {r["src"] for r in val} == {"a", "b"}
    assert manifest["split"]["val_problems"] == 10 and manifest["split"]["val_prompts_also_in_train"] == 0
    assert_accounted(manifest)
    two = run(tmp_path, sources, "two", weights={"self": 1.7}, workers=2, **settings)
    assert written(tmp_path / "two") == (train, val) and two["sources"] == manifest["sources"]


# ---------------------------------------------------------------------------------------
# Command line and errors


def test_command_line_mixes_sources_and_prints_a_table(tmp_path, capsys):
    write_jsonl(tmp_path / "a.jsonl", rows_of("a", range(10), 2))
    write_jsonl(tmp_path / "b1.jsonl", rows_of("b", range(10), 1))
    write_jsonl(tmp_path / "b2.jsonl", rows_of("b", range(10, 12), 1))
    out = tmp_path / "cli"
    assert main([str(tmp_path / "a.jsonl"), "--source", f"self={tmp_path}/b1.jsonl", "--source",
                 f"self={tmp_path}/b2.jsonl", "--weight", "self=2", "--weight", "main=0.5", "-o", str(out),
                 "--no-progress"]) == 0
    report = capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert list(manifest["sources"]) == ["main", "self"] and manifest["sources"]["self"]["repeats"] == 12
    table = {line.split()[0]: line.split()[1:] for line in report.splitlines() if line.split()[0] in ("source", "self")}
    assert table["source"] == ["weight", "read", "dropped", "kept", "repeats", "removed", "train", "val"]
    self_info = manifest["sources"]["self"]
    assert table["self"] == ["2", "12", "0", "12", "12", "0", f"{self_info['train']}", f"{self_info['val']}"]
    assert_accounted(manifest)
    # --source alone, without INPUT
    assert main(["--source", f"b={tmp_path}/b1.jsonl", "-o", str(tmp_path / "only"), "--no-progress"]) == 0
    assert json.loads((tmp_path / "only" / "manifest.json").read_text())["counts"]["train"] == 9


ERRORS = {
    # arguments (after INPUT): the one-line message on stderr
    "bad_syntax": (["--source", "self"], "--source 'self' is not NAME=GLOB"),
    "bad_name": (["--source", "my source=b1.jsonl"], "is not NAME=GLOB"),
    "empty_glob": (["--source", "self="], "is not NAME=GLOB"),
    "negative": (["--weight", "main=-1"], "--weight main=-1: a weight must be 0 or more"),
    "not_a_number": (["--weight", "main=lots"], "--weight 'main=lots' is not NAME=W"),
    "unknown": (["--weight", "selff=2"], "--weight selff=2 names no source (sources: main)"),
    "twice": (["--weight", "main=2", "--weight", "main=3"], "--weight main is given twice"),
    "no_files": (["--source", "self=nothing/*.jsonl"], "--source self: the pattern 'nothing/*.jsonl' matches no file"),
    "missing_file": (["--source", "self=gone.jsonl"], "--source self: input file gone.jsonl does not exist"),
    "two_sources": (["--source", "self=*.jsonl"], "a.jsonl is in two sources, 'main' and 'self'"),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_source_and_weight_mistakes_are_one_line_errors(case, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "a.jsonl", rows_of("a", range(3), 1))
    arguments, message = ERRORS[case]
    assert main(["a.jsonl", *arguments, "-o", "out", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("error: "), err
    assert not (tmp_path / "out").exists()


def test_no_input_and_no_source_is_the_usual_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as caught:
        main(["-o", str(tmp_path / "out")])
    assert caught.value.code == 2
    assert "the following arguments are required: INPUT (or --source NAME=GLOB)" in capsys.readouterr().err
    with pytest.raises(InputError, match="no input"):
        prepare_data({}, tmp_path / "out")


# ---------------------------------------------------------------------------------------
# Positional INPUT: the output of before


def _golden_inputs(tmp_path: Path) -> list[str]:
    rows = rows_of("a", range(30), 3)
    rows += [dict(r, generated_solution="  " + r["generated_solution"]) for r in rows[:9]]  # --dedup's duplicates
    a = write_jsonl(tmp_path / "a.jsonl", rows)
    b = write_jsonl(tmp_path / "b.jsonl", [{**r, "id": r["id"] + 100, "pad": "z" * 50} for r in rows_of("b", range(12), 2)])
    return [str(a), str(b)]


GOLDEN_CASES = {
    "default": dict(),
    "filters": dict(dedup=True, max_per_problem=2, val_split=0.2, seed=3),
    "workers": dict(workers=2, dedup=True, seed=1, **SMALL_TASKS),
}
GOLDEN = {
    # case/file: (sha256 of the file, sha256 of its rows as JSON), both the first 16 hex digits, as written by
    # sft/prepare_data.py before sources and weights existed (commit 41615e2). The rows are checked; the files'
    # bytes now differ from run to run (each run's run_id is in the Parquet metadata)
    "default/train.parquet": ("6efdf49587703799", "3729aebe58e5ea54"),
    "default/val.parquet": ("51659ef46b167316", "da795dfcca36e8c0"),
    "filters/train.parquet": ("a152ea26a6610691", "9315e6604d7a92ac"),
    "filters/val.parquet": ("79ed801afa9c7535", "5d09a8950f9620bd"),
    "workers/train.parquet": ("3a799ed583ebeb2d", "52cacd45fc712212"),
    "workers/val.parquet": ("5d2f4a3dabd918a2", "413eb3dba925f888"),
}


def _digests(path: Path) -> tuple[str, str]:
    """(sha256 of the file's layout: schema, row groups and their sizes; sha256 of its rows as JSON). Every run
    writes its own run_id into the Parquet metadata, so the files' bytes differ from run to run; their
    layout and rows do not."""
    metadata = pq.read_metadata(path)
    layout = [str(metadata.schema.to_arrow_schema().remove_metadata())]
    layout += [(metadata.row_group(g).num_rows, metadata.row_group(g).total_byte_size)
               for g in range(metadata.num_row_groups)]
    rows = json.dumps(pq.read_table(path).to_pylist(), sort_keys=True).encode()
    return hashlib.sha256(str(layout).encode()).hexdigest()[:16], hashlib.sha256(rows).hexdigest()[:16]


@pytest.mark.parametrize("case", sorted(GOLDEN_CASES))
def test_positional_inputs_give_the_files_of_before(tmp_path, case):
    inputs = _golden_inputs(tmp_path)
    config = dict(GOLDEN_CASES[case], progress=False)
    prepare_data(inputs, tmp_path / "positional", PrepareConfig(**config))
    prepare_data({"main": inputs}, tmp_path / "named", PrepareConfig(**config), weights={"main": 1})
    for name in ("train.parquet", "val.parquet"):
        now = _digests(tmp_path / "positional" / name)
        assert _digests(tmp_path / "named" / name) == now  # --source main=... --weight main=1: the same bytes
        golden = GOLDEN[f"{case}/{name}"]
        assert now[1] == golden[1], f"{case}/{name}: the rows or their order changed"


# ---------------------------------------------------------------------------------------
# --filters-for: the quality filters act on the named sources only


def loop_inputs(tmp_path: Path) -> dict[str, list[str]]:
    """One round of the generate-and-retrain loop: `seed`, the user's data (2 solutions per problem, all correct,
    an `answer` field on even problems only, its first 3 rows twice) and `self`, the model's samples (4 per
    problem, every odd one wrong, all with an `answer`, its first 2 rows twice)."""
    seed = rows_of("seed", range(12), 2)
    for row in seed:
        if row["id"] % 2 == 0:
            row["answer"] = str(2 * row["id"])
    samples = rows_of("self", range(6, 18), 4)
    for row in samples:
        right = 2 * row["id"]
        row["answer"] = str(right)
        if row["k"] % 2:
            row["generated_solution"] = row["generated_solution"].replace(f"\\boxed{{{right}}}", f"\\boxed{{{right + 1}}}")
    a = write_jsonl(tmp_path / "seed.jsonl", seed + seed[:3])
    b = write_jsonl(tmp_path / "self.jsonl", samples + samples[:2])
    return {"seed": [str(a)], "self": [str(b)]}


def assert_untouched(manifest: dict, name: str, allowed: tuple[str, ...] = ()) -> None:
    """A source --filters-for leaves out: no quality filter dropped any of its rows."""
    info = manifest["sources"][name]
    assert info["filtered_by_options"] is False and info["deduplicated"] == 0
    assert set(info["filtered"]) <= set(allowed), info["filtered"]


def test_filters_for_self_grades_the_samples_and_keeps_the_seed_as_given(tmp_path):
    inputs = loop_inputs(tmp_path)
    manifest = run(tmp_path, inputs, answer_key="answer", filters_for=["self"], val_split=0.0)
    train, _ = written(tmp_path / "out")
    s = manifest["sources"]
    assert_untouched(manifest, "seed")
    assert (s["seed"]["read"], s["seed"]["kept"], s["seed"]["train"]) == (27, 27, 27)  # rows without `answer` too
    assert s["self"]["filtered_by_options"] is True and s["self"]["filtered"] == {"wrong_answer": 25}
    assert {r["k"] % 2 for r in train if r["src"] == "self"} == {0} and s["self"]["train"] == 25
    assert {r["sft_answer"] for r in train if r["src"] == "seed"} == {None}  # not graded
    assert all(r["sft_answer"] == str(2 * r["id"]) for r in train if r["src"] == "self")
    assert manifest["grading"]["outcomes"] == {"correct": 25, "wrong": 25}  # the graded rows: self's
    drops = [json.loads(line) for line in (tmp_path / "out" / "answer_drops.jsonl").read_text().splitlines()]
    assert len(drops) == 25 and {d["row"]["src"] for d in drops} == {"self"}
    assert manifest["config"]["filters_for"] == ["self"]
    assert_accounted(manifest)
    # Without --filters-for the seed rows without `answer` are dropped, as before.
    everything = run(tmp_path, inputs, "all", answer_key="answer", val_split=0.0)
    assert everything["sources"]["seed"]["filtered"] == {"no_reference_answer": 13}
    assert everything["sources"]["seed"]["filtered_by_options"] is True and everything["config"]["filters_for"] is None


def test_filters_for_caps_and_dedups_only_the_named_sources(tmp_path):
    inputs = loop_inputs(tmp_path)
    manifest = run(tmp_path, inputs, max_per_problem=1, dedup=True, filters_for=["self"], val_split=0.0)
    train, _ = written(tmp_path / "out")
    per_problem = collections.Counter((r["src"], r["id"]) for r in train)
    assert {n for (src, _), n in per_problem.items() if src == "self"} == {1} and len(per_problem) == 24
    assert per_problem[("seed", 0)] == 4 and per_problem[("seed", 5)] == 2  # the seed's repeated rows stay
    assert_untouched(manifest, "seed")
    assert manifest["sources"]["seed"]["train"] == 27
    assert manifest["sources"]["self"]["deduplicated"] == 2
    assert manifest["sources"]["self"]["filtered"] == {"over_max_per_problem": 36}
    assert_accounted(manifest)
    # Each named source is deduplicated and capped on its own, as without --filters-for.
    both = run(tmp_path, inputs, "both", max_per_problem=1, dedup=True, filters_for=["seed,self"], val_split=0.0)
    assert (both["sources"]["seed"]["deduplicated"], both["sources"]["seed"]["filtered"]) == \
        (3, {"over_max_per_problem": 12})
    assert both["sources"]["self"] == manifest["sources"]["self"]
    assert both["counts"]["train"] == 12 + 12
    assert_accounted(both)


def test_filters_for_leaves_answer_and_token_filters_off_but_keeps_what_training_needs(tmp_path, tiny_model_dir):
    seed = rows_of("seed", range(6), 1)
    seed[0]["generated_solution"] = "<think>all reasoning</think>"  # nothing left with --answers-only
    seed[1]["generated_solution"] = "No boxed answer here."  # fails --require-final-answer
    seed[2]["generated_solution"] = "Step. " * 300 + "\\boxed{4}"  # over --max-length
    samples = rows_of("self", range(6), 2)
    samples[0]["generated_solution"] = "No boxed answer here."
    inputs = {"seed": [str(write_jsonl(tmp_path / "seed.jsonl", seed))],
              "self": [str(write_jsonl(tmp_path / "self.jsonl", samples))]}
    options = dict(require_final_answer=True, answers_only=True, max_length=400, min_tokens=60, val_split=0.0,
                   filters_for=["self"])
    manifest = run(tmp_path, inputs, tokenizer=str(tiny_model_dir), **options)
    assert_untouched(manifest, "seed", ("no_answer_after_reasoning", "over_max_length"))
    assert manifest["sources"]["seed"]["filtered"] == {"no_answer_after_reasoning": 1, "over_max_length": 1}
    assert manifest["sources"]["seed"]["kept"] == 4  # the short answer-less solution too
    assert manifest["sources"]["self"]["filtered"] == {"no_final_answer": 1, "too_few_tokens": 11}
    assert manifest["tokens"]["before_length_filters"]["samples"] == 5 + 11
    assert_accounted(manifest)
    # Without a tokenizer --min-tokens reads a field: rows of the seed lacking it are not no_token_count.
    plain = run(tmp_path, inputs, "plain", min_tokens=10, val_split=0.0, filters_for=["self"])
    assert plain["sources"]["seed"]["kept"] == 6 and plain["sources"]["self"]["filtered"] == {"no_token_count": 12}
    assert_accounted(plain)


@pytest.mark.parametrize("options", [dict(dedup=True, max_per_problem=1),
                                     dict(answer_key="answer", max_per_problem=2, task_mb=0.002)])
def test_filters_for_output_is_the_same_with_1_and_2_workers(tmp_path, options):
    inputs = loop_inputs(tmp_path)
    settings = {**SMALL_TASKS, **options, "filters_for": ["self"]}
    one = run(tmp_path, inputs, "one", {"self": 1.5}, workers=1, **settings)
    two = run(tmp_path, inputs, "two", {"self": 1.5}, workers=2, **settings)
    assert written(tmp_path / "one") == written(tmp_path / "two")
    assert one["counts"] == two["counts"] and one["sources"] == two["sources"] and one["split"] == two["split"]
    assert_untouched(one, "seed")
    assert_accounted(one)


LOOP_OPTIONS = dict(answer_key="answer", dedup=True, max_per_problem=1, val_split=0.25, seed=5)
LOOP_GOLDEN = {
    # file: (sha256 of the file, sha256 of its rows as JSON), first 16 hex digits, as written by
    # sft/prepare_data.py before --filters-for existed (commit 3b9cbda), weights {"self": 1.5}; the rows are checked
    "train.parquet": ("aaf78b1cf303adef", "0f748b382055120c"),
    "val.parquet": ("d1ae8b7b31a581fb", "e7ea7af36f477394"),
}


@pytest.mark.parametrize("filters_for", [None, ["self", "seed"]])
def test_without_filters_for_or_naming_every_source_the_files_are_those_of_before(tmp_path, filters_for):
    manifest = run(tmp_path, loop_inputs(tmp_path), weights={"self": 1.5}, filters_for=filters_for, **LOOP_OPTIONS)
    for name, golden in LOOP_GOLDEN.items():
        now = _digests(tmp_path / "out" / name)
        assert now[1] == golden[1], f"{name}: the rows or their order changed"
    assert all(info["filtered_by_options"] for info in manifest["sources"].values())


def test_command_line_filters_for_shows_a_filters_column_and_records_it(tmp_path, capsys):
    inputs = loop_inputs(tmp_path)
    out = tmp_path / "cli"
    assert main(["--source", f"seed={inputs['seed'][0]}", "--source", f"self={inputs['self'][0]}", "-o", str(out),
                 "--answer-key", "answer", "--filters-for", "self", "--no-progress"]) == 0
    report = capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    table = {line.split()[0]: line.split()[1:] for line in report.splitlines()
             if line.split()[:1] in (["source"], ["seed"], ["self"])}
    assert table["source"] == ["weight", "filters", "read", "dropped", "kept", "repeats", "removed", "train", "val"]
    assert table["seed"][:5] == ["1", "no", "27", "0", "27"] and table["self"][:5] == ["1", "yes", "50", "25", "25"]
    assert manifest["config"]["filters_for"] == ["self"]
    assert [manifest["sources"][n]["filtered_by_options"] for n in ("seed", "self")] == [False, True]
    # Repeated and comma-separated names; a run without quality filters warns that the option does nothing.
    assert main([inputs["seed"][0], "--source", f"self={inputs['self'][0]}", "-o", str(tmp_path / "twice"),
                 "--filters-for", "self", "--filters-for", "main,self", "--no-progress"]) == 0
    manifest = json.loads((tmp_path / "twice" / "manifest.json").read_text())
    assert manifest["config"]["filters_for"] == ["self", "main"]
    assert any(w.startswith("--filters-for self,main has no effect") for w in manifest["warnings"])
    header = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("source ")]
    assert header == [["source", "weight", "read", "dropped", "kept", "repeats", "removed", "train", "val"]]


@pytest.mark.parametrize("names, message", [
    ("selff", "--filters-for selff names no source (sources: main, self)"),
    ("self,", "--filters-for 'self,' has an empty source name"),
])
def test_filters_for_mistakes_are_one_line_errors(tmp_path, capsys, monkeypatch, names, message):
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "a.jsonl", rows_of("a", range(3), 1))
    write_jsonl(tmp_path / "b.jsonl", rows_of("b", range(3), 1))
    assert main(["a.jsonl", "--source", "self=b.jsonl", "--filters-for", names, "-o", "out", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("error: "), err
    assert not (tmp_path / "out").exists()
