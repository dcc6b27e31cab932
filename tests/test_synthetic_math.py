"""Tests for sft/demo/synthetic_math.py: format, determinism, held-out disjointness, gradable answers."""

import json
import re

import pytest

from sft.demo import synthetic_math
from sft.text.math_answers import answers_match, extract_final_answer
from sft.demo.synthetic_math import (
    DEMO_RECIPE,
    HELDOUT_ID_OFFSET,
    OPERATIONS,
    Question,
    all_questions,
    check_disjoint,
    demo_model_spec,
    parse_prompt,
    is_heldout,
    make_rows,
    solve,
    write_synthetic_jsonl,
)


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_rows_have_the_seed_format(tmp_path):
    path = write_synthetic_jsonl(tmp_path / "p.jsonl", n_problems=30, solutions_per_problem=2, seed=0)
    rows = _read(path)
    assert len(rows) == 60
    for row in rows:
        assert set(row) == {"id", "prompt", "generated_solution", "num_tokens", "answer"}
        assert isinstance(row["id"], int) and 0 <= row["id"] < 30
        assert row["prompt"].startswith("Solve: ")
        assert row["generated_solution"].startswith("Step 1: ")
        assert row["num_tokens"] == len(row["generated_solution"].split())
        assert re.fullmatch(r"\d+", row["answer"])
    # Solutions of one problem share its id and prompt, and sit next to each other.
    for first, second in zip(rows[::2], rows[1::2]):
        assert first["id"] == second["id"] and first["prompt"] == second["prompt"]
        assert first["answer"] == second["answer"]
    assert len({row["id"] for row in rows}) == 30
    assert len({row["prompt"] for row in rows}) == 30


def test_several_solutions_of_a_problem_differ_in_wording():
    rows = make_rows(20, solutions_per_problem=2, seed=1)
    for first, second in zip(rows[::2], rows[1::2]):
        assert first["generated_solution"] != second["generated_solution"]


def test_same_seed_same_bytes_other_seed_other_problems(tmp_path):
    a = write_synthetic_jsonl(tmp_path / "a.jsonl", 50, 2, seed=7)
    b = write_synthetic_jsonl(tmp_path / "b.jsonl", 50, 2, seed=7)
    c = write_synthetic_jsonl(tmp_path / "c.jsonl", 50, 2, seed=8)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


def test_every_family_is_represented_and_correct():
    rows = make_rows(300, seed=0, operations=OPERATIONS)
    symbols = {"+": 0, "-": 0, "*": 0}
    for row in rows:
        numbers = [int(x) for x in re.findall(r"\d+", row["prompt"])]
        assert len(numbers) == 2
        if "sum" in row["prompt"] or "+" in row["prompt"]:
            symbols["+"] += 1
            assert int(row["answer"]) == numbers[0] + numbers[1]
        elif "product" in row["prompt"] or "*" in row["prompt"]:
            symbols["*"] += 1
            assert int(row["answer"]) == numbers[0] * numbers[1]
        elif row["prompt"].startswith("Solve: Subtract"):  # "Subtract b from a"
            symbols["-"] += 1
            assert int(row["answer"]) == numbers[1] - numbers[0]
        else:
            symbols["-"] += 1
            assert int(row["answer"]) == numbers[0] - numbers[1]
    assert all(count >= 90 for count in symbols.values()), symbols


@pytest.mark.parametrize("op", OPERATIONS)
def test_every_solution_states_a_final_answer_that_grades_correct(op):
    questions = all_questions(op)[::37]  # a spread of cases: with and without carry/borrow
    for question in questions:
        for variant in range(4):
            solution = solve(question, variant)
            answer = extract_final_answer(solution)
            assert answer == str(question.result), solution
            assert answers_match(answer, str(question.result))
            assert not answers_match(answer, str(question.result + 1))


def test_solution_steps_show_the_carry_and_borrow():
    carry = solve(Question("add", 47, 38))
    assert carry.splitlines() == [
        "Step 1: Add the ones: 7 + 8 = 15. Write 5, carry 1.",
        "Step 2: Add the tens: 4 + 3 = 7.",
        "Step 3: Add the carry: 7 + 1 = 8.",
        "The answer is \\boxed{85}.",
    ]
    no_carry = solve(Question("add", 52, 45), variant=1)
    assert no_carry.splitlines() == [
        "Step 1: Add the ones: 2 + 5 = 7.",
        "Step 2: Add the tens: 5 + 4 = 9.",
        "So the final answer is \\boxed{97}.",
    ]
    borrow = solve(Question("sub", 53, 49))
    assert "borrow 1 ten: 13 - 9 = 4." in borrow
    assert "Subtract the tens: 5 - 4 = 1." in borrow and "1 - 1 = 0." in borrow
    assert extract_final_answer(borrow) == "4"
    product = solve(Question("mul", 69, 8))
    assert "9 * 8 = 72. Write 2, carry 7." in product
    assert "6 * 8 = 48." in product and "Add the carry: 48 + 7 = 55." in product
    assert extract_final_answer(product) == "552"


def test_heldout_partition_is_disjoint_from_training_for_any_seed(tmp_path):
    heldout = write_synthetic_jsonl(tmp_path / "h.jsonl", 200, seed=0, heldout=True)
    held_rows = _read(heldout)
    assert all(row["id"] >= HELDOUT_ID_OFFSET for row in held_rows)
    held_questions = {_question_of(row) for row in held_rows}
    for seed in (0, 1, 2):
        train = write_synthetic_jsonl(tmp_path / f"t{seed}.jsonl", 2000, seed=seed)
        train_rows = _read(train)
        assert all(row["id"] < HELDOUT_ID_OFFSET for row in train_rows)
        # Disjoint on the arithmetic itself, not only on the prompt's wording.
        assert not held_questions & {_question_of(row) for row in train_rows}
        check_disjoint(train, heldout)  # raises on a shared prompt


def test_heldout_partition_is_a_fixed_tenth_of_each_family():
    for op in OPERATIONS:
        questions = all_questions(op)
        share = sum(map(is_heldout, questions)) / len(questions)
        assert 0.05 < share < 0.15, (op, share)


def test_check_disjoint_catches_a_leak(tmp_path):
    train = write_synthetic_jsonl(tmp_path / "t.jsonl", 20, seed=0)
    leaked = tmp_path / "leak.jsonl"
    leaked.write_text(train.read_text().splitlines()[3] + "\n")
    with pytest.raises(ValueError, match="also appear in"):
        check_disjoint(train, leaked)


def test_check_disjoint_catches_the_same_question_in_other_words(tmp_path):
    train = tmp_path / "t.jsonl"
    train.write_text(json.dumps({"id": 0, "prompt": "Solve: What is 47 + 38?"}) + "\n")
    for leak in ("Solve: Find the sum of 47 and 38.", "Solve: Compute 38 + 47."):
        heldout = tmp_path / "h.jsonl"
        heldout.write_text(json.dumps({"id": 1, "prompt": leak}) + "\n")
        with pytest.raises(ValueError, match="also appear in"):
            check_disjoint(train, heldout)
    heldout.write_text(json.dumps({"id": 1, "prompt": "Solve: Compute 47 - 38."}) + "\n")
    check_disjoint(train, heldout)  # another question: no error


def test_parse_prompt_reads_every_wording():
    for row in make_rows(200, seed=3):
        question = parse_prompt(row["prompt"])
        assert question is not None and str(question.result) == row["answer"]
    assert parse_prompt("Solve: What is 1 + 2 + 3?") is None


def test_check_disjoint_names_file_and_line_of_a_bad_row(tmp_path):
    train = write_synthetic_jsonl(tmp_path / "t.jsonl", 5, seed=0)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "Solve: What is 1 + 1?"}\nnot json\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2"):
        check_disjoint(train, bad)


def test_asking_for_more_problems_than_exist_is_a_clear_error():
    with pytest.raises(ValueError, match="distinct held-out questions"):
        make_rows(10_000, operations=["mul"], heldout=True)
    with pytest.raises(ValueError, match="solutions per problem"):
        make_rows(5, solutions_per_problem=0)


def test_num_tokens_from_a_tokenizer():
    rows = make_rows(3, count_tokens=lambda text: len(text))
    assert [row["num_tokens"] for row in rows] == [len(row["generated_solution"]) for row in rows]


def test_cli_writes_training_and_heldout_files(tmp_path, capsys):
    train, held = tmp_path / "out" / "train.jsonl", tmp_path / "out" / "held.jsonl"
    code = synthetic_math.main(
        ["-o", str(train), "--n", "40", "--solutions-per-problem", "3", "--heldout-output", str(held),
         "--n-heldout", "10", "--operations", "add", "sub"]
    )
    assert code == 0
    assert len(_read(train)) == 120 and len(_read(held)) == 10
    assert not any("*" in row["prompt"] or "product" in row["prompt"] for row in _read(train))
    assert "no problem shared with training" in capsys.readouterr().out
    assert synthetic_math.main(["-o", str(train), "--n", "-1"]) == 2


def _question_of(row):
    question = parse_prompt(row["prompt"])
    assert question is not None, row["prompt"]
    assert str(question.result) == row["answer"]
    return question.canonical


def test_demo_model_and_tokenizer_counts(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sft.demo.tiny_model import build_tiny_model
    from sft.launch.memory_plan import count_parameters

    spec = demo_model_spec()
    assert spec.num_layers == DEMO_RECIPE["model"]["num_layers"]
    path = build_tiny_model(tmp_path / "model", spec)
    model = AutoModelForCausalLM.from_pretrained(path)
    # The count the demo's builder prints is the memory plan's arithmetic: it matches the built model.
    assert count_parameters(json.loads((path / "config.json").read_text())) == sum(p.numel() for p in model.parameters())
    weights = model.model.layers[0].mlp.up_proj.weight.detach()
    assert abs(float(weights.std()) - spec.initializer_range) < 0.01  # the spec's init scale is used
    tokenizer = AutoTokenizer.from_pretrained(path)
    # The task's words are single tokens (the tokenizer was trained on tokenizer_corpus()).
    assert tokenizer.tokenize("Step") == ["Step"] and tokenizer.tokenize(" carry") == ["Ġcarry"]
    out = write_synthetic_jsonl(tmp_path / "p.jsonl", 5, tokenizer=path)
    for row in _read(out):
        ids = tokenizer(row["generated_solution"], add_special_tokens=False)["input_ids"]
        assert row["num_tokens"] == len(ids) > row["generated_solution"].count(" ") + 1
        # The longest solutions fit the recipe's generation budget with room to spare.
        assert row["num_tokens"] < DEMO_RECIPE["max_new_tokens"]


def test_cli_reports_a_missing_tokenizer(tmp_path, capsys):
    code = synthetic_math.main(["-o", str(tmp_path / "p.jsonl"), "--n", "3", "--tokenizer", str(tmp_path / "nope")])
    assert code == 2
    assert "cannot load a tokenizer" in capsys.readouterr().err
    assert not (tmp_path / "p.jsonl").exists()


def test_print_recipe_gives_the_launcher_settings(capsys):
    assert synthetic_math.main(["--print-recipe"]) == 0
    lines = dict(line.split("=", 1) for line in capsys.readouterr().out.splitlines())
    for name, value in DEMO_RECIPE["launcher_env"].items():
        assert lines[name] == value
    assert lines["OVERRIDES"].split() == DEMO_RECIPE["launcher_extra_overrides"]
    assert int(lines["MAX_NEW_TOKENS"]) == DEMO_RECIPE["max_new_tokens"]


def test_output_is_required_without_print_recipe():
    with pytest.raises(SystemExit) as excinfo:
        synthetic_math.main(["--n", "3"])
    assert excinfo.value.code == 2
