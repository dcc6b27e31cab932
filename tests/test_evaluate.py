"""Tests for sft/evaluate.py, the shared modules it is built from (sft/generation/: problems, grading,
reports) and the answer helpers it grades with (sft/text/math_answers.py).

Run: .venv/bin/python -m pytest -q tests/test_evaluate.py      (about half a minute on 2 cores)

End-to-end runs use two tiny models built in the test: the random base model (it cannot
produce an answer, so accuracy must be 0), and the same model after a few seconds of plain
PyTorch training to answer every training prompt with one memorised solution whose final
answer is 7, so the expected accuracy, final-answer rate, truncation and output length of
each run are known in advance.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from sft import evaluate as ev
from sft.evaluate import EvaluationError, compare_summaries, evaluate, load_samples
from sft.generation import grading
from sft.generation.backend import Generation, GenerationError
from sft.generation.problems import EvalSample, ProblemsError
from sft.text.math_answers import answers_match, extract_final_answer, find_conclusion, reference_answer
from sft.demo.tiny_model import build_tiny_model

REPO_ROOT = Path(__file__).resolve().parent.parent
PROMPT_A = "Solve: What is 3 + 4?"
PROMPT_B = "Solve: What is 10 - 3? Show your work."
MEMORISED = "Step 1: add. The answer is \\boxed{7}."


# ----------------------------------------------------------------------------- answers


@pytest.mark.parametrize(
    "text, expected",
    [
        ("So the answer is \\boxed{1/2}.", "1/2"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("The answer is 7", "7"),
        ("The answer is 7. We checked it twice.", "7"),
        ("First \\boxed{3}, then corrected: \\boxed{\\frac{3}{4}}", "\\frac{3}{4}"),
        ("He has 18 left.\n#### 18", "18"),
        ("Final Answer: The final answer is $\\frac{3}{4}$. I hope it is correct.", "\\frac{3}{4}"),
        ("The answer is $0.5$.", "0.5"),
        ("Adding gives 12, and 12 is even.", None),  # a bare last number is not a stated answer
        ("", None),
    ],
)
def test_extract_final_answer(text, expected):
    assert extract_final_answer(text) == expected


@pytest.mark.parametrize(
    "predicted, reference, match",
    [
        ("1/2", "0.5", True),
        ("\\frac{1}{2}", "0.5", True),
        ("1/2", "\\frac{1}{2}", True),
        ("\\dfrac12", "1/2", True),
        ("7", "7", True),
        ("7", "7.0", True),
        ("12", "13", False),
        ("\\frac{1}{2}", "\\frac{1}{3}", False),
        (None, "7", False),
        ("7", None, False),
    ],
)
def test_answers_match(predicted, reference, match):
    assert answers_match(predicted, reference) is match


def test_grading_a_generation_end_to_end():
    """`\\boxed{1/2}` in a model output is graded correct against a reference stated as 0.5 or \\frac{1}{2}."""
    sample = EvalSample(
        index=0, id=0, messages=[{"role": "user", "content": "q"}], reference="0.5", reference_answer="0.5"
    )
    record = grading.grade(sample, Generation("So \\boxed{1/2}.", 5, False))
    assert record["correct"] and record["has_final_answer"] and record["predicted_answer"] == "1/2"
    sample.reference_answer = reference_answer("Halving gives \\boxed{\\frac{1}{2}}.")
    assert grading.grade(sample, Generation("The answer is 0.5", 4, False))["correct"]
    assert reference_answer("7") == "7" and reference_answer("The answer is 7") == "7"
    wrong = grading.grade(sample, Generation("The answer is 7", 4, False))
    assert not wrong["correct"] and wrong["has_final_answer"]
    # A conclusion in running text is graded (correctness) but is no final answer in a standard form (format).
    prose = grading.grade(sample, Generation("Halving one gives a half, so I think it is 1/2 maybe", 9, True))
    assert prose["correct"] and not prose["has_final_answer"] and prose["predicted_answer"] == "1/2"
    assert prose["answer_rule"] == "concluding_sentence"
    strict = grading.grade(sample, Generation("Halving one gives a half, so I think it is 1/2 maybe", 9, True), strict=True)
    assert not strict["correct"] and strict["predicted_answer"] is None
    none = grading.grade(sample, Generation("I do not know.", 5, False))
    assert not none["correct"] and not none["has_final_answer"] and none["predicted_answer"] is None
    thinking = grading.grade(sample, Generation("<think>\nMaybe 7? No.\n</think>\n\nThe answer is $\\frac{1}{2}$.", 20, False))
    assert thinking["correct"] and thinking["has_final_answer"]  # graded after the reasoning


# ----------------------------------------------------------------------------- loading data


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_load_seed_jsonl_references_and_skips(tmp_path):
    data = _write_jsonl(
        tmp_path / "val.jsonl",
        [
            {"id": 10, "prompt": "p1", "generated_solution": "Step 1... \\boxed{7}", "num_tokens": 5},
            {"id": 11, "prompt": "p2", "generated_solution": "I give up."},
            {"id": 12, "prompt": "p3"},
        ],
    )
    samples = load_samples(data, system_prompt="Be brief.")
    assert [s.id for s in samples] == [10, 11, 12]
    assert samples[0].messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "p1"}]
    assert samples[0].reference_answer == "7" and samples[0].skip_reason is None
    assert "states no final answer" in samples[1].skip_reason
    assert "--answer-key" in samples[2].skip_reason
    assert len(load_samples(data, limit=2)) == 2


def test_load_parquet_messages_and_answer_key(tmp_path):
    path = tmp_path / "val.parquet"
    pd.DataFrame(
        [
            {
                "messages": [
                    {"role": "system", "content": "Reason step by step."},
                    {"role": "user", "content": "What is 1/2 as a decimal?"},
                    {"role": "assistant", "content": "It is \\boxed{0.5}."},
                ],
                "answer": "1/2",
            }
        ]
    ).to_parquet(path)
    (sample,) = load_samples(path)
    assert [m["role"] for m in sample.messages] == ["system", "user"]  # the solution is not in the prompt
    assert sample.reference_answer == "0.5"
    assert load_samples(path, answer_key="answer")[0].reference_answer == "1/2"
    assert load_samples(path, system_prompt="Reason step by step.")[0].messages[0]["role"] == "system"
    with pytest.raises(ProblemsError, match="row 0: the row already has a system message that differs"):
        load_samples(path, system_prompt="Something else.")


def test_bad_input_errors_name_file_line_and_fix(tmp_path):
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"prompt": "ok", "generated_solution": "\\\\boxed{1}"}\n\n{"prompt": oops}\n')
    with pytest.raises(ProblemsError, match=r"bad.jsonl:3: invalid JSON .*fix or remove that line"):
        load_samples(bad_json)
    no_prompt = _write_jsonl(tmp_path / "no_prompt.jsonl", [{"question": "q", "generated_solution": "\\boxed{1}"}])
    with pytest.raises(ProblemsError, match=r"no_prompt.jsonl:1: no 'messages' and no 'prompt' field .*--prompt-key"):
        load_samples(no_prompt)
    assert load_samples(no_prompt, prompt_key="question")[0].reference_answer == "1"
    with pytest.raises(ProblemsError, match="data file not found"):
        load_samples(tmp_path / "missing.jsonl")
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(ProblemsError, match="use .parquet or .jsonl"):
        load_samples(tmp_path / "data.csv")


def test_jsonl_read_as_prepare_data_reads_it(tmp_path):
    """A UTF-8 byte order mark and CRLF line ends are accepted (sft/dataprep/jsonl_io.py's reader);
    row locations still count the file's lines, blank ones included."""
    rows = [{"id": "a", "prompt": "p1", "generated_solution": "So \\boxed{7}."},
            {"id": "b", "prompt": "p2", "generated_solution": "The answer is 8"}]
    data = tmp_path / "windows.jsonl"
    data.write_bytes(b"\xef\xbb\xbf" + b"\r\n\r\n".join(json.dumps(r).encode() for r in rows) + b"\r\n")
    samples = load_samples(data)
    assert [s.id for s in samples] == ["a", "b"] and [s.index for s in samples] == [0, 1]
    assert [s.reference_answer for s in samples] == ["7", "8"]
    assert samples[0].messages == [{"role": "user", "content": "p1"}]
    data.write_bytes(data.read_bytes() + b'{"prompt": "p3"}\r\n{"prompt": oops}\r\n')
    with pytest.raises(ProblemsError, match=r"windows.jsonl:5: invalid JSON .*fix or remove that line"):
        load_samples(data)
    data.write_bytes(b"\xef\xbb\xbf" + json.dumps(rows[0]).encode() + b'\r\n["not", "an", "object"]\r\n')
    with pytest.raises(ProblemsError, match=r"windows.jsonl:2: expected a JSON object, found list"):
        load_samples(data)
    data.write_bytes(json.dumps(rows[0]).encode() + b'\r\n{"prompt": "caf\xe9"}\r\n')
    with pytest.raises(ProblemsError, match=r"windows.jsonl:2: invalid UTF-8 byte 0xe9"):
        load_samples(data)


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def base_and_memorised_models(tmp_path_factory) -> dict:
    """The random tiny base model, and a copy trained to answer PROMPT_A/PROMPT_B with MEMORISED."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("base_and_memorised_models")
    base = build_tiny_model(root / "base")
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is faster than two contending ones
    torch.manual_seed(0)
    examples = []
    for prompt in (PROMPT_A, PROMPT_B):
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)
        prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(MEMORISED + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
        examples.append((torch.tensor([prompt_ids + answer_ids]), torch.tensor([[-100] * len(prompt_ids) + answer_ids])))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        loss = sum(model(input_ids=ids, labels=labels).loss for ids, labels in examples)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.set_num_threads(threads)
    assert loss.item() < 0.05, f"memorisation did not converge (loss {loss.item()})"
    memorised = root / "memorised"
    model.save_pretrained(memorised)
    tokenizer.save_pretrained(memorised)
    n_tokens = len(tokenizer(MEMORISED, add_special_tokens=False)["input_ids"])
    return {"base": base, "memorised": memorised, "answer_tokens": n_tokens}


@pytest.fixture
def graded_problems_jsonl(tmp_path) -> Path:
    """Two problems graded correct (7 and 14/2), one wrong (8), one without a reference answer."""
    return _write_jsonl(
        tmp_path / "val.jsonl",
        [
            {"id": "a", "prompt": PROMPT_A, "generated_solution": "3 + 4 = 7. The answer is \\boxed{7}.", "num_tokens": 9},
            {"id": "b", "prompt": PROMPT_B, "generated_solution": "Subtract: \\boxed{\\frac{14}{2}}", "num_tokens": 9},
            {"id": "c", "prompt": PROMPT_A, "generated_solution": "Hmm, \\boxed{8}", "num_tokens": 9},
            {"id": "d", "prompt": PROMPT_B, "generated_solution": "No idea.", "num_tokens": 3},
        ],
    )


def _read_results(out: Path) -> tuple[list[dict], dict]:
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return records, json.loads((out / "summary.json").read_text())


def _check_consistent(records: list[dict], summary: dict, max_new_tokens: int) -> None:
    """Summary figures recomputed from the per-sample records, and each record checked on its own."""
    graded = [r for r in records if r["status"] == "graded"]
    assert summary["num_samples"] == len(records) and summary["num_graded"] == len(graded)
    assert summary["num_skipped"] == len(records) - len(graded)
    assert summary["accuracy"] == pytest.approx(sum(r["correct"] for r in graded) / len(graded))
    assert summary["final_answer_rate"] == pytest.approx(sum(r["has_final_answer"] for r in graded) / len(graded))
    assert summary["truncation_rate"] == pytest.approx(sum(r["truncated"] for r in graded) / len(graded))
    assert summary["mean_output_tokens"] == pytest.approx(sum(r["output_tokens"] for r in graded) / len(graded))
    for r in graded:
        assert r["predicted_answer"] == find_conclusion(r["output"], r["prompt"]).answer
        assert r["answer_rule"] == find_conclusion(r["output"], r["prompt"]).rule
        assert r["has_final_answer"] == (extract_final_answer(r["output"]) is not None)  # a standard form
        assert r["correct"] == (r["predicted_answer"] is not None
                                and answers_match(r["predicted_answer"], r["reference_answer"]))
        assert r["output_tokens"] <= max_new_tokens
        if r["truncated"]:
            assert r["output_tokens"] == max_new_tokens


@pytest.mark.slow
def test_evaluate_memorised_model_known_outcome(base_and_memorised_models, graded_problems_jsonl, tmp_path):
    out = tmp_path / "eval"
    summary = evaluate(
        base_and_memorised_models["memorised"], graded_problems_jsonl, out, max_new_tokens=32, batch_size=4, num_threads=1, progress=False
    )
    records, on_disk = _read_results(out)
    assert on_disk == summary
    _check_consistent(records, summary, 32)
    by_id = {r["id"]: r for r in records}
    assert [r["id"] for r in records] == ["a", "b", "c", "d"]  # input order, though prompts were length-sorted
    assert all(by_id[i]["output"] == MEMORISED for i in "abc")
    assert by_id["a"]["correct"] and by_id["b"]["correct"] and not by_id["c"]["correct"]
    assert by_id["d"]["status"] == "skipped" and "states no final answer" in by_id["d"]["skip_reason"]
    assert summary["num_graded"] == 3 and summary["num_skipped"] == 1
    assert summary["accuracy"] == pytest.approx(2 / 3)
    assert summary["final_answer_rate"] == 1.0 and summary["truncation_rate"] == 0.0
    assert summary["mean_output_tokens"] == base_and_memorised_models["answer_tokens"]  # stopped at EOS, EOS not counted
    markdown = (out / "summary.md").read_text()
    assert "| accuracy | 66.7% (2/3) |" in markdown and "Skipped 1:" in markdown
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")], "temporary files left behind"

    # Left padding: one prompt per batch gives the same outputs as mixed-length batches.
    single = evaluate(
        base_and_memorised_models["memorised"], graded_problems_jsonl, tmp_path / "bs1", max_new_tokens=32, batch_size=1,
        num_threads=1, progress=False,
    )
    assert _read_results(tmp_path / "bs1")[0] == records and single["accuracy"] == summary["accuracy"]


def test_evaluate_truncation_and_answer_key(base_and_memorised_models, graded_problems_jsonl, tmp_path):
    # Four new tokens cut the memorised solution before its answer: everything is truncated.
    short = evaluate(
        base_and_memorised_models["memorised"], graded_problems_jsonl, tmp_path / "short", max_new_tokens=4, num_threads=1, progress=False
    )
    records, _ = _read_results(tmp_path / "short")
    _check_consistent(records, short, 4)
    assert short["truncation_rate"] == 1.0 and short["mean_output_tokens"] == 4
    assert short["final_answer_rate"] == 0.0 and short["accuracy"] == 0.0

    # A Parquet with prompt/answer columns, graded against the answer column (limit 2 rows).
    data = tmp_path / "val.parquet"
    pd.DataFrame(
        {"prompt": [PROMPT_A, PROMPT_B, PROMPT_A], "answer": ["7.0", "6", "7"], "id": [1, 2, 3]}
    ).to_parquet(data)
    keyed = evaluate(
        base_and_memorised_models["memorised"], data, tmp_path / "keyed", answer_key="answer", limit=2, num_threads=1, progress=False
    )
    records, _ = _read_results(tmp_path / "keyed")
    assert [r["id"] for r in records] == [1, 2] and [r["correct"] for r in records] == [True, False]
    assert keyed["accuracy"] == 0.5 and keyed["answer_key"] == "answer"


def test_evaluate_random_model_cannot_answer(base_and_memorised_models, graded_problems_jsonl, tmp_path):
    summary = evaluate(
        base_and_memorised_models["base"], graded_problems_jsonl, tmp_path / "base", max_new_tokens=24, num_threads=1, progress=False
    )
    records, _ = _read_results(tmp_path / "base")
    _check_consistent(records, summary, 24)
    assert summary["accuracy"] == 0.0 and summary["num_graded"] == 3
    print(
        f"random model: final-answer rate {summary['final_answer_rate']}, "
        f"truncation {summary['truncation_rate']}, mean tokens {summary['mean_output_tokens']}"
    )


def test_cli_writes_results_and_comparison(base_and_memorised_models, graded_problems_jsonl, tmp_path, capsys):
    base_out, tuned_out = tmp_path / "base", tmp_path / "tuned"
    common = [str(graded_problems_jsonl), "--max-new-tokens", "24", "--num-threads", "1", "--no-progress"]
    assert ev.main([str(base_and_memorised_models["base"]), *common, "-o", str(base_out)]) == 0
    assert ev.main(
        [str(base_and_memorised_models["memorised"]), *common, "-o", str(tuned_out), "--baseline", str(base_out / "summary.json")]
    ) == 0
    printed = capsys.readouterr().out
    comparison = (tuned_out / "comparison.md").read_text()
    assert comparison in printed
    assert "| accuracy | 0.0% | 66.7% | +66.7 pts |" in comparison
    assert {p.name for p in tuned_out.iterdir()} == {"results.jsonl", "summary.json", "summary.md", "comparison.md"}


def test_cli_errors_and_help(base_and_memorised_models, tmp_path, capsys):
    assert ev.main([str(tmp_path), str(tmp_path / "x.jsonl"), "-o", str(tmp_path / "o")]) == 2
    assert "is not a Hugging Face model directory" in capsys.readouterr().err
    help_text = subprocess.run(
        [sys.executable, str(REPO_ROOT / "sft" / "evaluate.py"), "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "--max-new-tokens" in help_text and "--system-prompt" in help_text and "--backend" in help_text


def test_vllm_backend_missing_is_a_clear_error(base_and_memorised_models, graded_problems_jsonl, tmp_path):
    try:
        import vllm  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("vllm is installed here; the missing-package message cannot be exercised")
    with pytest.raises(GenerationError, match="--backend vllm needs the vllm package.*--backend transformers"):
        evaluate(base_and_memorised_models["memorised"], graded_problems_jsonl, tmp_path / "v", backend="vllm")
    assert not (tmp_path / "v").exists()


def test_compare_summaries_table():
    base = {"accuracy": 0.1, "final_answer_rate": 0.5, "truncation_rate": 0.25, "mean_output_tokens": 100.0,
            "num_graded": 20, "num_samples": 20, "data": "val.parquet", "max_new_tokens": 256, "system_prompt": None}
    tuned = {**base, "accuracy": 0.55, "final_answer_rate": 0.95, "truncation_rate": 0.0, "mean_output_tokens": 80.5}
    table = compare_summaries(base, tuned)
    assert "| metric | base | fine-tuned | change |" in table
    assert "| accuracy | 10.0% | 55.0% | +45.0 pts |" in table
    assert "| final-answer rate (standard form) | 50.0% | 95.0% | +45.0 pts |" in table
    assert "| truncation rate | 25.0% | 0.0% | -25.0 pts |" in table
    assert "| mean output length (tokens) | 100.0 | 80.5 | -19.5 |" in table
    assert "Note" not in table
    other = compare_summaries(base, {**tuned, "data": "other.parquet"}, "before", "after")
    assert "| metric | before | after | change |" in other and "different data" in other


# ----------------------------------------------------------------------------- k samples: pass@k and maj@K


@pytest.mark.parametrize(
    "n, c, k, expected",
    [
        (4, 1, 2, 0.5),  # 1 - C(3,2)/C(4,2) = 1 - 3/6
        (4, 1, 1, 0.25),  # pass@1 is the correct rate c/n
        (4, 0, 4, 0.0),
        (4, 4, 1, 1.0),
        (5, 2, 2, 0.7),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
        (4, 3, 2, 1.0),  # n - c < k: every draw of 2 holds a correct one
        (8, 2, 4, 1 - 15 / 70),  # C(6,4)/C(8,4)
    ],
)
def test_pass_at_k_is_the_unbiased_estimator(n, c, k, expected):
    assert grading.pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_values_and_bad_arguments():
    assert grading.pass_at_k_values(1) == [1] and grading.pass_at_k_values(2) == [1, 2]
    assert grading.pass_at_k_values(4) == [1, 2, 4] and grading.pass_at_k_values(6) == [1, 2, 4, 6]
    assert grading.pass_at_k_values(16) == [1, 2, 4, 8, 16]
    with pytest.raises(ValueError):
        grading.pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        grading.pass_at_k(4, 1, 5)


@pytest.mark.parametrize(
    "answers, winner",
    [
        (["1/2", "0.5", "3", None], (0, 2)),  # "1/2" and "0.5" are one answer
        (["3", "1/2", "0.5"], (1, 2)),
        (["3", "\\frac{1}{2}", None, "0.5", None], (1, 2)),
        (["3", "4"], (0, 1)),  # a tie: the answer that came first
        (["\\frac{1}{2}", "3", "3", "0.5"], (0, 2)),  # a 2-2 tie: the group that appeared first
        ([None, None], (None, 0)),  # nobody voted
        ([], (None, 0)),
    ],
)
def test_majority_vote_groups_equivalent_answers(answers, winner):
    assert grading.majority_vote(answers) == winner


def _problem(reference: str = "0.5") -> EvalSample:
    return EvalSample(index=0, id="q", messages=[{"role": "user", "content": "Half of one?"}], reference=reference,
                         reference_answer=reference)


def test_sampled_records_and_their_summary_by_hand():
    """Problem 1: samples 1/2, 0.5, 3, none -> 2 of 4 correct, majority 1/2 (correct). Problem 2: 3, 3, 1/2,
    none -> 1 correct, majority 3 (wrong). Problem 3: no sample states an answer -> majority wrong."""
    outputs = [
        ["So \\boxed{1/2}.", "The answer is 0.5", "The answer is 3", "I do not know."],
        ["The answer is 3", "\\boxed{3}", "\\boxed{\\frac{1}{2}}", "Hmm."],
        ["Hmm.", "No idea.", "Well.", "Maybe."],
    ]
    records = [grading.sampled_record(_problem(), [Generation(text, 3, i == 3) for i, text in enumerate(texts)])
               for texts in outputs]
    assert [r["num_correct"] for r in records] == [2, 1, 0]
    assert [r["majority_answer"] for r in records] == ["1/2", "3", None]
    assert [r["majority_votes"] for r in records] == [2, 2, 0]
    assert [r["majority_correct"] for r in records] == [True, False, False]
    assert [s["correct"] for s in records[0]["samples"]] == [True, True, False, False]
    assert set(records[0]["samples"][0]) == set(grading.SAMPLE_FIELDS)
    summary = grading.summarize_sampled(records, 4)
    assert summary["samples_per_problem"] == 4
    assert summary["pass_at_k"]["1"] == pytest.approx((2 / 4 + 1 / 4 + 0) / 3)
    assert summary["pass_at_k"]["2"] == pytest.approx(((1 - 1 / 6) + 0.5 + 0) / 3)  # C(2,2)/C(4,2), C(3,2)/C(4,2)
    assert summary["pass_at_k"]["4"] == pytest.approx(2 / 3)
    assert summary["maj_at_k"] == pytest.approx(1 / 3)
    assert summary["sampled_truncation_rate"] == 0.25 and summary["sampled_mean_output_tokens"] == 3


def test_sampling_settings_are_checked_before_anything_is_loaded(graded_problems_jsonl, tmp_path):
    model = tmp_path / "no model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    with pytest.raises(EvaluationError, match=r"--temperature set the sampled solutions of --num-samples K > 1"):
        evaluate(model, graded_problems_jsonl, tmp_path / "o", temperature=0.7)
    with pytest.raises(EvaluationError, match=r"--top-p, --seed set the sampled"):
        evaluate(model, graded_problems_jsonl, tmp_path / "o", top_p=0.9, seed=3)
    with pytest.raises(GenerationError, match="--temperature 0 is greedy decoding: all 4 samples"):
        evaluate(model, graded_problems_jsonl, tmp_path / "o", num_samples=4, temperature=0.0)
    with pytest.raises(GenerationError, match=r"--top-p must be in \(0, 1\]"):
        evaluate(model, graded_problems_jsonl, tmp_path / "o", num_samples=4, top_p=1.5)
    with pytest.raises(GenerationError, match="--num-samples must be a whole number of at least 1"):
        evaluate(model, graded_problems_jsonl, tmp_path / "o", num_samples=0)
    assert not (tmp_path / "o").exists()


def test_evaluate_with_k_samples_keeps_greedy_results_and_adds_pass_and_maj(base_and_memorised_models,
                                                                           graded_problems_jsonl, tmp_path, capsys):
    model = str(base_and_memorised_models["memorised"])
    common = [str(graded_problems_jsonl), "--max-new-tokens", "32", "--num-threads", "1", "--no-progress"]
    assert ev.main([model, *common, "-o", str(tmp_path / "greedy")]) == 0
    assert ev.main([model, *common, "-o", str(tmp_path / "k4"), "--num-samples", "4", "--temperature", "0.5",
                    "--baseline", str(tmp_path / "greedy" / "summary.json")]) == 0
    greedy, greedy_summary = _read_results(tmp_path / "greedy")
    records, summary = _read_results(tmp_path / "k4")
    assert records == greedy  # results.jsonl stays the greedy records
    assert {k: summary[k] for k in greedy_summary if "seconds" not in k and "per_second" not in k} == \
        {k: v for k, v in greedy_summary.items() if "seconds" not in k and "per_second" not in k}
    sampled = [json.loads(line) for line in (tmp_path / "k4" / "samples.jsonl").read_text().splitlines()]
    assert [r["id"] for r in sampled] == ["a", "b", "c"]  # graded problems only, in input order
    assert all(r["num_samples"] == 4 and len(r["samples"]) == 4 for r in sampled)
    for r in sampled:
        assert r["num_correct"] == sum(s["correct"] for s in r["samples"])
        memorised = sum(s["output"] == MEMORISED for s in r["samples"])
        assert memorised >= 3  # temperature 0.5 on a memorised answer (measured: 4 of 4)
    assert sampled[0]["majority_answer"] == "7" and sampled[0]["majority_correct"]
    assert sampled[2]["majority_answer"] == "7" and not sampled[2]["majority_correct"]  # reference 8
    assert summary["samples_per_problem"] == 4 and set(summary["pass_at_k"]) == {"1", "2", "4"}
    assert summary["pass_at_k"]["1"] == pytest.approx(sum(r["num_correct"] / 4 for r in sampled) / 3)
    assert summary["maj_at_k"] == pytest.approx(2 / 3)
    assert (summary["temperature"], summary["top_p"], summary["seed"]) == (0.5, 1.0, 0)
    markdown = (tmp_path / "k4" / "summary.md").read_text()
    assert "| accuracy | 66.7% (2/3) |\n| pass@1 |" in markdown and "| maj@4 | 66.7% |" in markdown
    comparison = (tmp_path / "k4" / "comparison.md").read_text()
    assert "| accuracy | 66.7% | 66.7% | +0.0 pts |" in comparison
    assert "| pass@4 | n/a |" in comparison and "| maj@4 | n/a | 66.7% | n/a |" in comparison
    assert "Note: samples_per_problem differs (None vs 4)." in comparison
    assert "samples.jsonl" in capsys.readouterr().out
    # A later greedy run into the same directory removes the samples that no longer belong to its summary.
    assert ev.main([model, *common, "-o", str(tmp_path / "k4")]) == 0
    assert not (tmp_path / "k4" / "samples.jsonl").exists()


def test_compare_summaries_with_sampled_metrics():
    base = {"accuracy": 0.1, "final_answer_rate": 0.5, "truncation_rate": 0.25, "mean_output_tokens": 100.0,
            "num_graded": 20, "num_samples": 20, "data": "val.parquet", "max_new_tokens": 256, "system_prompt": None,
            "samples_per_problem": 4, "pass_at_k": {"1": 0.2, "2": 0.3, "4": 0.4}, "maj_at_k": 0.25,
            "temperature": 1.0, "top_p": 1.0}
    tuned = {**base, "pass_at_k": {"1": 0.5, "2": 0.6, "4": 0.7}, "maj_at_k": 0.55}
    table = compare_summaries(base, tuned)
    lines = table.splitlines()
    assert lines[2] == "| accuracy | 10.0% | 10.0% | +0.0 pts |"
    assert lines[3:7] == ["| pass@1 | 20.0% | 50.0% | +30.0 pts |", "| pass@2 | 30.0% | 60.0% | +30.0 pts |",
                          "| pass@4 | 40.0% | 70.0% | +30.0 pts |", "| maj@4 | 25.0% | 55.0% | +30.0 pts |"]
    assert "Note" not in table
    hotter = compare_summaries(base, {**tuned, "temperature": 0.6})
    assert "Note: temperature differs (1.0 vs 0.6)." in hotter
