"""Tests for sft/generate.py: K samples per problem in the format sft/prepare_data.py reads, resumable shards.

Run: .venv/bin/python -m pytest -q tests/test_generate.py      (the fast ones: -m 'not slow')

Generation runs the tiny random model of tests/conftest.py on CPU (one thread, a few tokens), so
its outputs are gibberish: what is checked is the layout, the bookkeeping and the determinism. One
slow test samples from tests/test_evaluate.py's memorised model, whose samples are known answers.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from sft import generate as gen
from sft.common.errors import UserError
from sft.generation.backend import Generation
from sft.generation.problems import EvalSample
from sft.generate import generate
from sft.prepare_data import main as prepare_data_main
from test_evaluate import MEMORISED, PROMPT_A, PROMPT_B, base_and_memorised_models  # noqa: F401 (a fixture)

REPO_ROOT = Path(__file__).resolve().parent.parent
ROW_FIELDS = {"id", "prompt", "generated_solution", "num_tokens", "answer", "model", "sample_index", "finish_reason",
              "correct"}
FAST = {"max_new_tokens": 6, "num_threads": 1, "progress": False}


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def problems_jsonl(tmp_path) -> Path:
    """Five problems, four with an answer: three shards of two problems with --shard-size 2."""
    rows = [{"id": f"p{i}", "prompt": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(4)]
    rows.append({"id": "p4", "prompt": "What is 4 + 4?"})
    return _write_jsonl(tmp_path / "problems.jsonl", rows)


def _shards(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("samples-*.jsonl"))}


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for path in sorted(out.glob("samples-*.jsonl")) for line in path.read_text().splitlines()]


@pytest.fixture
def generated(tiny_model_dir, problems_jsonl, tmp_path) -> tuple[Path, dict]:
    """A complete run: 5 problems x 3 samples in shards of 2 problems."""
    out = tmp_path / "samples"
    record = generate(str(tiny_model_dir), problems_jsonl, out, num_samples=3, shard_size=2, **FAST)
    return out, record


# ----------------------------------------------------------------------------- format


def test_k_samples_per_problem_in_shards_of_contiguous_problems(generated, tiny_model_dir):
    out, record = generated
    assert sorted(_shards(out)) == ["samples-00000.jsonl", "samples-00001.jsonl", "samples-00002.jsonl"]
    shard_ids = [[json.loads(line)["id"] for line in (out / name).read_text().splitlines()] for name in sorted(_shards(out))]
    assert shard_ids == [["p0"] * 3 + ["p1"] * 3, ["p2"] * 3 + ["p3"] * 3, ["p4"] * 3]
    rows = _rows(out)
    assert all(set(r) == ROW_FIELDS for r in rows)
    assert [r["sample_index"] for r in rows] == [0, 1, 2] * 5
    assert all(r["model"] == str(tiny_model_dir) and r["prompt"] == f"What is {r['id'][1]} + {r['id'][1]}?" for r in rows)
    for r in rows:
        assert r["finish_reason"] in ("stop", "length") and 0 <= r["num_tokens"] <= FAST["max_new_tokens"]
        assert (r["finish_reason"] == "length") == (r["num_tokens"] == FAST["max_new_tokens"])
    assert [r["answer"] for r in rows[::3]] == ["0", "2", "4", "6", None]
    assert all(r["correct"] is False for r in rows[:12])  # a random model: wrong, but graded
    assert all(r["correct"] is None for r in rows[12:])  # no answer: not graded
    assert len({r["generated_solution"] for r in rows}) > 5  # sampled, not one greedy output repeated
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")], "temporary files left behind"


def test_generation_json_records_settings_and_summary(generated, problems_jsonl):
    out, record = generated
    assert json.loads((out / "generation.json").read_text()) == record
    settings, summary = record["settings"], record["summary"]
    assert record["status"] == "complete"
    assert settings["problems"] == str(problems_jsonl.resolve()) and len(settings["problems_sha256"]) == 64
    assert settings["problems_bytes"] == problems_jsonl.stat().st_size
    assert {k: settings[k] for k in ("num_samples", "temperature", "top_p", "max_new_tokens", "seed", "shard_size",
                                     "prompt_key", "id_key", "answer_key", "system_prompt")} == {
        "num_samples": 3, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 6, "seed": 0, "shard_size": 2,
        "prompt_key": "prompt", "id_key": "id", "answer_key": "answer", "system_prompt": None}
    rows = _rows(out)
    assert summary["problems"] == 5 and summary["samples"] == 15 and summary["samples_generated"] == 15
    assert summary["shards"] == 3 and summary["shards_generated"] == 3 and summary["shards_reused"] == 0
    assert sum(summary["finish_reasons"].values()) == 15
    assert summary["mean_num_tokens"] == pytest.approx(sum(r["num_tokens"] for r in rows) / 15)
    assert summary["samples_per_second"] > 0 and summary["output_tokens_per_second"] > 0
    assert summary["problems_with_answer"] == 4
    assert summary["correct_sample_rate"] == 0.0 and summary["solved_problem_rate"] == 0.0
    assert record["run"]["device"] == "cpu" and record["run"]["num_threads"] == 1


def test_prepare_data_reads_the_shards_and_keeps_a_problems_samples_together(generated, tmp_path, capsys):
    out, _ = generated
    data = tmp_path / "sft"
    assert prepare_data_main([str(out / "samples-*.jsonl"), "-o", str(data), "--val-split", "0.4", "--workers", "1"]) == 0
    train, val = pd.read_parquet(data / "train.parquet"), pd.read_parquet(data / "val.parquet")
    assert len(train) + len(val) == 15 and len(val) == 6  # 2 of 5 problems, with all 3 samples each
    assert set(train["id"]).isdisjoint(val["id"]) and val["id"].value_counts().tolist() == [3, 3]
    row = train.iloc[0]
    assert row["messages"][0]["content"] == row["prompt"] and row["messages"][1]["content"] == row["generated_solution"]


def test_messages_input_row_index_ids_and_no_answer_column(tiny_model_dir, tmp_path):
    problems = tmp_path / "val.parquet"
    pd.DataFrame({"messages": [
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 1 + 2?"},
         {"role": "assistant", "content": "\\boxed{3}"}],
        [{"role": "user", "content": "What is 2 + 2?"}],
    ]}).to_parquet(problems)
    record = generate(str(tiny_model_dir), problems, tmp_path / "out", num_samples=2, **FAST)
    rows = _rows(tmp_path / "out")
    assert [(r["id"], r["sample_index"], r["prompt"]) for r in rows] == [
        (0, 0, "What is 1 + 2?"), (0, 1, "What is 1 + 2?"), (1, 0, "What is 2 + 2?"), (1, 1, "What is 2 + 2?")]
    assert all(r["answer"] is None and r["correct"] is None for r in rows)  # graded only against an answer column
    assert record["settings"]["answer_key"] is None and record["summary"]["correct_sample_rate"] is None


def test_seed_format_rows_of_one_problem_are_sampled_once(tiny_model_dir, tmp_path, capsys):
    """Seed data has a row per solution; sampling each row would give 2K samples with repeated indices."""
    rows = [{"id": i, "prompt": f"What is {i} + 1?", "generated_solution": f"... \\boxed{{{i + 1}}}", "answer": str(i + 1)}
            for i in range(3) for _ in range(2)]
    record = generate(str(tiny_model_dir), _write_jsonl(tmp_path / "seed.jsonl", rows), tmp_path / "out",
                      num_samples=2, **FAST)
    assert [(r["id"], r["sample_index"]) for r in _rows(tmp_path / "out")] == [
        (0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    assert record["summary"]["problems"] == 3 and "6 rows are 3 problems" in capsys.readouterr().err
    rows[1]["prompt"] = "Another question?"
    with pytest.raises(UserError, match="rows 1 and 2 have the same id 0 but different prompts"):
        generate(str(tiny_model_dir), _write_jsonl(tmp_path / "bad.jsonl", rows), tmp_path / "out2", **FAST)


def test_correct_field_is_graded_as_evaluate_grades():
    problem = EvalSample(index=0, id="x", messages=[{"role": "user", "content": "Half of one?"}], reference="0.5",
                         reference_answer="0.5")
    outputs = [[Generation("So \\boxed{1/2}.", 5, False), Generation("The answer is 3", 4, False),
                Generation("I do not", 3, True)]]
    rows = gen.shard_rows([problem], outputs, "m")
    assert [r["correct"] for r in rows] == [True, False, False]
    assert [r["finish_reason"] for r in rows] == ["stop", "stop", "length"] and [r["num_tokens"] for r in rows] == [5, 4, 3]
    assert all(r["answer"] == "0.5" and r["id"] == "x" and r["model"] == "m" for r in rows)
    summary = gen.summarize(rows, 3, seconds=1.0, generated=rows, shards=1, reused=0)
    assert summary["correct_sample_rate"] == pytest.approx(1 / 3) and summary["solved_problem_rate"] == 1.0
    assert summary["finish_reasons"] == {"stop": 2, "length": 1} and summary["samples_per_second"] == 3.0


# ----------------------------------------------------------------------------- resuming and determinism


def test_rerun_after_an_interruption_regenerates_only_bad_shards_identically(generated, tiny_model_dir,
                                                                              problems_jsonl, tmp_path, capsys):
    out, _ = generated
    reference = _shards(out)
    (out / "samples-00001.jsonl").unlink()  # interrupted before this shard was written
    lines = (out / "samples-00000.jsonl").read_text().splitlines(keepends=True)
    (out / "samples-00000.jsonl").write_text("".join(lines[:4]))  # a partial shard (copied by hand, say)
    (out / "samples-00002.jsonl").write_text(lines[0] + '{"id": "p4", "sample_ind')  # a torn last line
    capsys.readouterr()
    record = generate(str(tiny_model_dir), problems_jsonl, out, num_samples=3, shard_size=2, **FAST)
    assert _shards(out) == reference  # the same samples, none lost, none twice
    summary = record["summary"]
    assert summary["shards_reused"] == 0 and summary["shards_generated"] == 3 and summary["samples"] == 15
    messages = capsys.readouterr().err
    assert "samples-00000.jsonl has 4 of its 6 rows: generating it again" in messages
    assert "samples-00002.jsonl has 2 of its 3 rows" in messages or "samples-00002.jsonl unreadable" in messages

    (out / "samples-00001.jsonl").unlink()
    again = generate(str(tiny_model_dir), problems_jsonl, out, num_samples=3, shard_size=2, **FAST)
    assert _shards(out) == reference
    assert again["summary"]["shards_reused"] == 2 and again["summary"]["samples_generated"] == 6
    assert again["summary"]["samples"] == 15  # the summary covers every shard, kept or generated

    done = generate(str(tiny_model_dir), problems_jsonl, out, num_samples=3, shard_size=2, **FAST)
    assert done["summary"]["shards_reused"] == 3 and done["summary"]["samples_generated"] == 0
    assert done["summary"]["samples_per_second"] is None and _shards(out) == reference
    assert done["run"]["device"] == "cpu" and done["run"]["num_threads"] == 1  # the run that made them


def test_an_interrupted_run_leaves_whole_shards_and_resumes_to_the_same_samples(generated, tiny_model_dir,
                                                                                 problems_jsonl, tmp_path, monkeypatch):
    out, _ = generated
    reference = _shards(out)
    interrupted = tmp_path / "interrupted"
    real_generate = gen.Generator.generate
    calls = []

    def interrupt_the_second_shard(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C, or a job's time limit, while shard 1 is being sampled
        return real_generate(self, *args, **kwargs)

    monkeypatch.setattr(gen.Generator, "generate", interrupt_the_second_shard)
    with pytest.raises(KeyboardInterrupt):
        generate(str(tiny_model_dir), problems_jsonl, interrupted, num_samples=3, shard_size=2, **FAST)
    assert sorted(p.name for p in interrupted.iterdir()) == ["generation.json", "samples-00000.jsonl"]  # no partial file
    assert json.loads((interrupted / "generation.json").read_text())["status"] == "running"
    monkeypatch.setattr(gen.Generator, "generate", real_generate)
    record = generate(str(tiny_model_dir), problems_jsonl, interrupted, num_samples=3, shard_size=2, **FAST)
    assert _shards(interrupted) == reference  # as if never interrupted
    assert record["summary"]["shards_reused"] == 1 and record["summary"]["samples_generated"] == 9


def test_a_shard_with_other_problems_is_regenerated(generated, tiny_model_dir, problems_jsonl, capsys):
    out, _ = generated
    reference = _shards(out)
    first, second = out / "samples-00000.jsonl", out / "samples-00001.jsonl"
    first.write_bytes(reference["samples-00001.jsonl"])  # six rows, but of problems p2 and p3
    generate(str(tiny_model_dir), problems_jsonl, out, num_samples=3, shard_size=2, **FAST)
    assert _shards(out) == reference and second.read_bytes() == reference["samples-00001.jsonl"]
    assert "samples-00000.jsonl line 1 is not sample 0 of problem 'p0'" in capsys.readouterr().err


def test_same_seed_same_samples_other_seed_other_samples(generated, tiny_model_dir, problems_jsonl, tmp_path):
    out, _ = generated
    generate(str(tiny_model_dir), problems_jsonl, tmp_path / "again", num_samples=3, shard_size=2, **FAST)
    assert _shards(tmp_path / "again") == _shards(out)
    generate(str(tiny_model_dir), problems_jsonl, tmp_path / "seed1", num_samples=3, shard_size=2, seed=1, **FAST)
    other = _rows(tmp_path / "seed1")
    assert [r["generated_solution"] for r in other] != [r["generated_solution"] for r in _rows(out)]
    # Shard seeds differ: shards 0 and 1 do not repeat each other's random stream.
    assert gen.derive_seed(0, 0) != gen.derive_seed(0, 1) and gen.derive_seed(0, 1) == gen.derive_seed(0, 1)


def test_the_models_generation_config_does_not_change_the_sampling(generated, tiny_model_dir, problems_jsonl,
                                                                    tmp_path):
    """A generation_config.json with top_k 1 (as Qwen's sets top_k 20) would make every sample greedy, were it
    to fill the settings left unset: sampling is the distribution asked for, as vLLM samples it."""
    out, _ = generated
    model = tmp_path / "model with top_k 1"
    shutil.copytree(tiny_model_dir, model)
    config = json.loads((model / "generation_config.json").read_text())
    (model / "generation_config.json").write_text(json.dumps({**config, "top_k": 1, "repetition_penalty": 1.5,
                                                              "do_sample": True, "temperature": 0.1}))
    generate(str(model), problems_jsonl, tmp_path / "out", num_samples=3, shard_size=2, **FAST)
    assert [r["generated_solution"] for r in _rows(tmp_path / "out")] == [r["generated_solution"] for r in _rows(out)]


def test_greedy_single_sample_is_evaluates_greedy_output(tiny_model_dir, problems_jsonl, tmp_path):
    from sft.evaluate import evaluate

    generate(str(tiny_model_dir), problems_jsonl, tmp_path / "greedy", num_samples=1, temperature=0.0, **FAST)
    evaluate(tiny_model_dir, problems_jsonl, tmp_path / "eval", answer_key="answer", **FAST)
    evaluated = [json.loads(line) for line in (tmp_path / "eval" / "results.jsonl").read_text().splitlines()]
    greedy = {r["id"]: r["generated_solution"] for r in _rows(tmp_path / "greedy")}
    assert {r["id"]: r["output"] for r in evaluated if r["status"] == "graded"} == {k: greedy[k] for k in greedy if k != "p4"}


# ----------------------------------------------------------------------------- refusals and bad input


def test_other_settings_into_the_same_directory_are_refused(generated, tiny_model_dir, problems_jsonl, tmp_path):
    out, _ = generated
    reference = _shards(out)
    with pytest.raises(UserError, match=r"temperature was 1.0, now 0.7 .*another -o .*--overwrite"):
        generate(str(tiny_model_dir), problems_jsonl, out, num_samples=3, shard_size=2, temperature=0.7, **FAST)
    with pytest.raises(UserError, match="num_samples was 3, now 4"):
        generate(str(tiny_model_dir), problems_jsonl, out, num_samples=4, shard_size=2, **FAST)
    changed = _write_jsonl(tmp_path / "changed.jsonl", [{"id": "p0", "prompt": "What is 9 + 9?"}])
    shutil.copy(changed, problems_jsonl)
    with pytest.raises(UserError, match=r"the problems file's content \(sha256\) was"):
        generate(str(tiny_model_dir), problems_jsonl, out, num_samples=3, shard_size=2, **FAST)
    assert _shards(out) == reference  # nothing touched by a refused run

    record = generate(str(tiny_model_dir), problems_jsonl, out, num_samples=2, overwrite=True, **FAST)
    assert sorted(_shards(out)) == ["samples-00000.jsonl"] and record["summary"]["samples"] == 2

    (out / "generation.json").write_text("[]")
    with pytest.raises(UserError, match=r"generation.json: unreadable .*--overwrite"):
        generate(str(tiny_model_dir), problems_jsonl, out, num_samples=2, **FAST)
    (out / "generation.json").unlink()
    with pytest.raises(UserError, match="no generation.json.*--overwrite"):
        generate(str(tiny_model_dir), problems_jsonl, out, num_samples=2, **FAST)


@pytest.mark.parametrize(
    "content, options, message",
    [
        ('{"question": "q"}\n', [], r"problems.jsonl:1: no 'messages' and no 'prompt' field .*--prompt-key"),
        ('{"prompt": "ok"}\n{"prompt": oops}\n', [], r"problems.jsonl:2: invalid JSON .*fix or remove that line"),
        ("", [], r"problems.jsonl: no rows to read"),
        ('{"prompt": "ok"}\n', ["-k", "0"], r"--num-samples must be a whole number of at least 1"),
        ('{"prompt": "ok"}\n', ["--top-p", "0"], r"--top-p must be in \(0, 1\]"),
        ('{"prompt": "ok"}\n', ["--top-p", "1.5"], r"--top-p must be in \(0, 1\]"),
        ('{"prompt": "ok"}\n', ["--temperature", "0"], r"--temperature 0 is greedy .*--num-samples 1"),
        ('{"prompt": "ok"}\n', ["--temperature", "-1"], r"--temperature must be 0 \(greedy\) or more"),
        ('{"prompt": "ok"}\n', ["--shard-size", "0"], r"--shard-size must be at least 1"),
        ('{"prompt": "ok", "solution": "7"}\n', ["--answer-key", "gold"],
         r"problems.jsonl: no row has the --answer-key column 'gold' \(fields: prompt, solution\)"),
        ('{"messages": [{"role": "system", "content": "A"}, {"role": "user", "content": "q"}]}\n',
         ["--system-prompt", "B"], r"problems.jsonl:1: the row already has a system message that differs"),
    ],
)
def test_bad_input_is_one_line_naming_file_line_and_fix(tiny_model_dir, tmp_path, capsys, content, options, message):
    (tmp_path / "problems.jsonl").write_text(content)
    rc = gen.main([str(tiny_model_dir), str(tmp_path / "problems.jsonl"), "-o", str(tmp_path / "out"), *options])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert __import__("re").search(message, err), err
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_missing_model_and_missing_vllm_are_clear_errors(problems_jsonl, tmp_path, capsys):
    assert gen.main([str(tmp_path), str(problems_jsonl), "-o", str(tmp_path / "out")]) == 2
    assert "is not a Hugging Face model directory" in capsys.readouterr().err
    try:
        import vllm  # noqa: F401
    except ImportError:
        assert gen.main([str(tmp_path), str(problems_jsonl), "-o", str(tmp_path / "out"), "--backend", "vllm"]) == 2
        assert "--backend vllm needs the vllm package" in capsys.readouterr().err


def test_cli_prints_the_summary(tiny_model_dir, problems_jsonl, tmp_path, capsys):
    out = tmp_path / "cli"
    assert gen.main([str(tiny_model_dir), str(problems_jsonl), "-o", str(out), "-k", "2", "--max-new-tokens", "4",
                     "--num-threads", "1", "--no-progress", "--limit", "3"]) == 0
    printed = capsys.readouterr().out
    assert "6 samples of 3 problems (2 each) in 1 shard(s): 0 kept from an earlier run, 1 generated" in printed
    assert "samples/s" in printed and "output tokens/s" in printed and "finish reasons: " in printed
    assert "correct samples: 0.0%; problems with a correct sample: 0.0% (of 3 with an answer)" in printed


def test_help():
    result = subprocess.run([sys.executable, str(REPO_ROOT / "sft" / "generate.py"), "--help"],
                            capture_output=True, text=True, check=True)
    for flag in ("--num-samples", "--temperature", "--top-p", "--seed", "--shard-size", "--backend", "--overwrite",
                 "--answer-key", "--id-key", "--system-prompt", "--num-threads"):
        assert flag in result.stdout


def test_vllm_backend_asks_for_k_seeded_samples_per_prompt(monkeypatch, tiny_tokenizer):
    """The vLLM path without vLLM: a stand-in module records what is asked and answers in vLLM's shapes."""
    import types

    from sft.generation import backend

    asked = {}

    class SamplingParams:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    class LLM:
        def generate(self, prompts, params, use_tqdm):
            asked.update(prompts=prompts, params=params, use_tqdm=use_tqdm)
            eos = tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
            word = tiny_tokenizer("7", add_special_tokens=False)["input_ids"]
            completion = types.SimpleNamespace
            return [types.SimpleNamespace(outputs=[completion(index=1, token_ids=word * 3, finish_reason="length"),
                                                   completion(index=0, token_ids=word + [eos], finish_reason="stop")])
                    for _ in prompts]

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(SamplingParams=SamplingParams, LLM=LLM))
    outputs = backend._vllm_outputs(LLM(), tiny_tokenizer, [[1, 2], [3]], stop_ids={tiny_tokenizer.eos_token_id},
                                    sampling=backend.Sampling(2, 0.7, 0.9, seed=5), max_new_tokens=3, bar=None)
    assert asked["prompts"] == [{"prompt_token_ids": [1, 2]}, {"prompt_token_ids": [3]}]
    first, second = (params.kwargs for params in asked["params"])  # one per prompt: each seeded on its own
    assert {k: first[k] for k in ("n", "temperature", "top_p", "max_tokens")} == {"n": 2, "temperature": 0.7,
                                                                                  "top_p": 0.9, "max_tokens": 3}
    assert first["seed"] == backend.derive_seed(5, 0) and second["seed"] == backend.derive_seed(5, 1)
    assert first["stop_token_ids"] == [tiny_tokenizer.eos_token_id]
    assert [[(g.output_tokens, g.finish_reason) for g in prompt] for prompt in outputs] == [[(1, "stop"), (3, "length")]] * 2
    assert outputs[0][0].text == "7" and outputs[0][1].text == "777"


# ----------------------------------------------------------------------------- a model that knows the answers


@pytest.mark.slow
def test_samples_of_a_memorised_model_are_graded_correct(base_and_memorised_models, tmp_path):  # noqa: F811
    problems = _write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "prompt": PROMPT_A, "answer": "7"},
                                                   {"id": "b", "prompt": PROMPT_B, "answer": "8"}])
    record = generate(str(base_and_memorised_models["memorised"]), problems, tmp_path / "out", num_samples=4,
                      temperature=0.5, max_new_tokens=32, num_threads=1, progress=False)
    rows = _rows(tmp_path / "out")
    memorised = [r for r in rows if r["generated_solution"] == MEMORISED]
    assert len(memorised) >= 6  # at temperature 0.5 nearly every sample is the memorised solution (measured: 8 of 8)
    assert all(r["correct"] == (r["id"] == "a") and r["finish_reason"] == "stop" for r in memorised)
    summary = record["summary"]
    assert summary["correct_sample_rate"] == pytest.approx(sum(r["correct"] for r in rows) / 8)
    assert summary["solved_problem_rate"] == 0.5  # a (answer 7) is solved, b (answer 8) cannot be
    assert summary["finish_reasons"].get("stop", 0) >= 6
