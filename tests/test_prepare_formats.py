"""sft/prepare_data.py on the data people have: public schemas, file formats, layouts, ids.

Each public schema (tests/assets/data_layouts, sources in its README) is written in the file format
it is published in and prepared with the command sft/README.md gives for it; the test checks where
every row and sample ended and, through the chat template training uses (sft.text.chat_format), that
exactly the intended tokens are trained: the prompt (and system message) as context, the reasoning
and the answer trained, the end of turn trained.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sft.dataprep.jsonl_io import InputError
from sft.dataprep.layouts import canonical_conversation
from sft.prepare_data import DataError, PrepareConfig, main, prepare_data
from sft.text.chat_format import join_reasoning

ASSETS = Path(__file__).resolve().parent / "assets" / "data_layouts"


def rows_of(name: str) -> list[dict]:
    return [json.loads(line) for line in (ASSETS / f"{name}.jsonl").read_text().splitlines()]


def published(name: str, kind: str, folder: Path) -> Path:
    """The asset `name` written as it is published: parquet (shards of one row group per row), json (an
    indented array), jsonl, jsonl.gz."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = rows_of(name)
    if kind == "parquet":
        path = folder / "data"
        path.mkdir()
        pq.write_table(pa.Table.from_pylist(rows), path / "train-00000-of-00001.parquet", row_group_size=1)
        return path
    path = folder / f"{name}.{kind}"
    if kind == "json":
        path.write_text(json.dumps(rows, indent=4))
    elif kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    return path


def run(inputs, out: Path, **options) -> dict:
    options = {"progress": False, "val_split": 0.0, "workers": 1, **options}
    return prepare_data([str(p) for p in inputs], out, PrepareConfig(**options))


def train_rows(out: Path) -> list[dict]:
    return pq.read_table(out / "train.parquet").to_pylist()


@pytest.fixture(scope="module")
def chat(tiny_model_dir):
    from sft.text.chat_format import ChatFormat

    return ChatFormat.load(str(tiny_model_dir))


def assert_trains(chat, tokenizer, messages: list[dict], context: list[str], trained: str) -> None:
    """Through the template training uses: the trained tokens are exactly `trained` and the end of turn, and
    every text of `context` is in the untrained part before them."""
    ids, mask = chat.encode(messages)
    assert tokenizer.decode([t for t, m in zip(ids, mask) if m]) == trained + "<|im_end|>"
    first = mask.index(1)
    before = tokenizer.decode(ids[:first])
    assert all(text in before for text in context) and before.endswith("<|im_start|>assistant\n")


def accounted(manifest: dict) -> None:
    c = manifest["counts"]
    dropped = sum(c["rejected"].values()) + sum(c["filtered"].values()) + c["deduplicated"]
    assert c["read"] + c["extra_samples"] == dropped + c["train"] + c["val"] - c["repeats"], c


# ---------------------------------------------------------------------------------------
# Public schemas: command, outcome, trained tokens

SCHEMAS = {
    # case: (asset, published as, options, counts expected, a sample's prompt and its trained text)
    "openr1-messages": ("openr1_math_220k", "parquet", {},
                        {"read": 2, "train": 2}, "What is $3^2 + 4^2$?",
                        "<think>\n9 + 16 = 25.\n</think>\n\nThe answer is $\\boxed{25}$."),
    "openr1-generations": ("openr1_math_220k", "parquet",
                           dict(prompt_key="problem", response_key="generations",
                                sample_filter=["correctness_math_verify"]),
                           {"read": 2, "extra_samples": 3, "train": 3,
                            "filtered": {"truncated": 1, "failed_sample_filter": 1}},
                           "What is $3^2 + 4^2$?",
                           "<think>\n9 + 16 = 25, a perfect square.\n</think>\n\nThe answer is $\\boxed{25}$."),
    "numinamath-cot": ("numinamath_cot", "parquet", {}, {"read": 2, "train": 2}, "Compute $7 \\times 8$.",
                       "$7 \\times 8 = 56$. The answer is $\\boxed{56}$."),
    "openthoughts": ("openthoughts_114k", "parquet", {}, {"read": 2, "train": 2},
                     "What is 12 / 4?", "<|begin_of_thought|>\n\n12 split into 4 equal parts is 3.\n\n"
                     "<|end_of_thought|>\n\n<|begin_of_solution|>\n\n$\\boxed{3}$\n\n<|end_of_solution|>"),
    "bespoke-stratos": ("bespoke_stratos_17k", "parquet", {}, {"read": 1, "train": 1}, "Is 91 prime?",
                        "<|begin_of_thought|>\n\n91 = 7 x 13.\n\n<|end_of_thought|>\n\n<|begin_of_solution|>\n\n"
                        "No: $\\boxed{91 = 7 \\cdot 13}$\n\n<|end_of_solution|>"),
    "s1k-1.1": ("s1k_1_1", "parquet",
                dict(prompt_key="question", response_key="deepseek_attempt",
                     reasoning_key="deepseek_thinking_trajectory"),
                {"read": 2, "train": 2}, "How many subsets does a set of 7 elements have?",
                join_reasoning("Okay, each of the 7 elements is either in a subset or not, so 2^7 = 128 subsets.",
                               "There are $2^7 = \\boxed{128}$ subsets.")),
    "metamathqa": ("metamathqa", "json", dict(prompt_key="query", response_key="response"),
                   {"read": 2, "train": 2}, "What is the value of $\\sqrt{49}$?",
                   "$\\sqrt{49} = 7$.\nThe answer is: 7"),
    "gsm8k": ("gsm8k", "parquet", dict(prompt_key="question", response_key="answer"), {"read": 2, "train": 2},
              "Weng earns $12 an hour", "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\nWorking 50 minutes, she "
              "earned 0.2 x 50 = $<<0.2*50=10>>10.\n#### 10"),
    "limo": ("limo", "jsonl", dict(prompt_key="question", response_key="solution"), {"read": 1, "train": 1},
             "Find the last two digits of $7^{4}$.",
             "$7^2 = 49$, $49^2 = 2401$, so the last two digits are 01.\n\n**Final Answer**\n\\boxed{1}"),
    "vllm-outputs": ("vllm_outputs", "jsonl.gz", dict(response_key="outputs"),
                     {"read": 1, "extra_samples": 2, "train": 2, "filtered": {"truncated": 1}},
                     "What is 6 * 7?", "42, so $\\boxed{42}$."),
    "openmathreasoning": ("openmathreasoning", "parquet", dict(prompt_key="problem"), {"read": 1, "train": 1},
                          "How many edges does a cube have?",
                          "<think>\nA cube has 12 edges: 4 on top, 4 on the bottom, 4 vertical.\n</think>\n\n"
                          "A cube has $\\boxed{12}$ edges."),
    "sft-generate": ("sft_generate_samples", "jsonl", dict(sample_filter=["correct"]),
                     {"read": 4, "train": 2, "filtered": {"truncated": 1, "failed_sample_filter": 1}},
                     "What is 9 - 4?", "9 - 4 = 5. The answer is \\boxed{5}."),
}


@pytest.mark.parametrize("case", sorted(SCHEMAS))
def test_public_schema_trains_the_intended_tokens(case, tmp_path, chat, tiny_tokenizer):
    asset, kind, options, expected, prompt, trained = SCHEMAS[case]
    manifest = run([published(asset, kind, tmp_path / "in")], tmp_path / "out", seed=0, **options)
    counts = manifest["counts"]
    assert {k: counts[k] for k in expected} == expected
    assert counts["rejected"] == {} and counts["train"] + counts["val"] == expected["train"]
    accounted(manifest)
    row = next(r for r in train_rows(tmp_path / "out") if r["messages"][-1]["content"] == trained)
    assert prompt in row["messages"][-2]["content"]
    context = [prompt] + [m["content"] for m in row["messages"] if m["role"] == "system"]
    assert_trains(chat, tiny_tokenizer, row["messages"], context, trained)


def test_hendrycks_math_folder_of_json_files_and_alpaca_template(tmp_path, chat, tiny_tokenizer):
    folder = tmp_path / "MATH"
    shutil.copytree(ASSETS / "hendrycks_math", folder)
    (folder / "README.md").write_text("not data")
    manifest = run([folder], tmp_path / "math", prompt_key="problem", response_key="solution")
    assert manifest["counts"]["train"] == 2 and [i["format"] for i in manifest["inputs"]] == ["JSON Lines"] * 2
    assert any("README.md" in w for w in manifest["warnings"])  # the file that is not data is named, not read

    alpaca = ASSETS / "alpaca_data.json"
    # --prompt-key instruction alone: the `input` is left out (warned), and three problems merge into one
    manifest = run([alpaca], tmp_path / "narrow", prompt_key="instruction", response_key="output")
    warnings = " ".join(manifest["warnings"])
    assert "field 'input' holds text in 3 of 4 flat rows" in warnings and "--prompt-template" in warnings
    assert manifest["layouts"]["collapsed_problems"] == 1 and "1 problem(s)" in warnings
    # the documented template builds the whole prompt; an empty input leaves no trailing blank line
    manifest = run([alpaca], tmp_path / "alpaca", prompt_template="{instruction}\\n\\n{input}", response_key="output")
    assert manifest["counts"]["train"] == 4 and manifest["split"]["problems"] == 4 and not manifest["warnings"]
    rows = {r["output"]: r for r in train_rows(tmp_path / "alpaca")}
    assert rows["7"]["messages"][0]["content"] == "Add the two numbers.\n\n3 and 4"
    assert rows["1. Eat well. 2. Exercise. 3. Sleep."]["messages"][0]["content"] == "Give three tips for staying healthy."
    assert_trains(chat, tiny_tokenizer, rows["7"]["messages"], ["Add the two numbers.\n\n3 and 4"], "7")


def test_reasoning_field_is_counted_with_the_tokenizer_like_on_messages_rows(tmp_path, tiny_model_dir):
    flat = [dict(r, sft_num_tokens="stale") for r in rows_of("s1k_1_1")]
    as_messages = [{"messages": [{"role": "user", "content": r["question"]},
                                 {"role": "assistant", "content": r["deepseek_attempt"],
                                  "reasoning_content": r["deepseek_thinking_trajectory"]}]} for r in flat]
    (tmp_path / "flat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in flat))
    (tmp_path / "conv.jsonl").write_text("".join(json.dumps(r) + "\n" for r in as_messages))
    options = dict(prompt_key="question", response_key="deepseek_attempt", reasoning_key="deepseek_thinking_trajectory",
                   tokenizer=str(tiny_model_dir))
    one = run([tmp_path / "flat.jsonl"], tmp_path / "a", **options)
    two = run([tmp_path / "conv.jsonl"], tmp_path / "b", tokenizer=str(tiny_model_dir))
    assert one["tokens"]["kept"] == two["tokens"]["kept"]  # the same tokens, so the same counts
    assert sorted(r["messages"][-1]["content"] for r in train_rows(tmp_path / "a")) == \
        sorted(r["messages"][-1]["content"] for r in train_rows(tmp_path / "b"))
    assert "2 row(s) had a field 'sft_num_tokens', which this run writes: replaced" in " ".join(one["warnings"])


def test_explicit_fields_win_over_a_messages_column_or_fail(tmp_path):
    rows = rows_of("openr1_math_220k")
    source = tmp_path / "r.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    manifest = run([source], tmp_path / "flat", prompt_key="problem", response_key="solution")
    out = train_rows(tmp_path / "flat")
    assert {r["messages"][-1]["content"] for r in out} == {r["solution"] for r in rows}  # not `messages`
    assert all(r["input_messages"] for r in out) and manifest["layouts"]["messages_renamed"] == 2
    with pytest.raises(DataError, match=r"r.jsonl:1: field 'final' \(the reply\) is missing .* --response-key"):
        run([source], tmp_path / "missing", prompt_key="problem", response_key="final")


def test_sharegpt_tool_turns_become_the_canonical_form_with_the_tools_list_written_beside_them(tmp_path):
    row = rows_of("llamafactory_sharegpt_tools")[0]
    assert canonical_conversation(row["conversations"]) == [
        {"role": "user", "content": "What is 17 * 23? Use the calculator."},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "calculator", "arguments": {"expression": "17 * 23"}}}]},
        {"role": "tool", "content": "{\"result\": 391}", "name": "calculator"},
        {"role": "assistant", "content": "17 * 23 = 391."}]
    source = tmp_path / "tools.json"
    source.write_text(json.dumps([row] * 2))
    manifest = run([source], tmp_path / "out", on_error="skip")
    assert manifest["counts"]["rejected"] == {} and manifest["layouts"]["rows"] == {"sharegpt": 2}
    out = train_rows(tmp_path / "out")
    assert [m["role"] for m in out[0]["messages"]] == ["user", "assistant", "tool", "assistant"]
    assert json.loads(out[0]["messages"][1]["tool_calls"])[0]["function"]["name"] == "calculator"
    assert json.loads(out[0]["tools"]) == [{"type": "function", "function": json.loads(row["tools"])[0]}]


# ---------------------------------------------------------------------------------------
# File formats: read by content, or named with the fix


def test_every_readable_format_gives_the_same_rows(tmp_path):
    rows = rows_of("gsm8k") + [{"question": "Big id?", "answer": "yes", "id": 2**70}]
    text = "".join(json.dumps(r) + "\n" for r in rows).encode()
    import bz2
    import lzma

    import zstandard

    files = {"plain.jsonl": text, "gz.jsonl": gzip.compress(text), "zst.jsonl.zst": zstandard.compress(text),
             "bz.jsonl.bz2": bz2.compress(text), "xz.jsonl.xz": lzma.compress(text),
             "array.json": json.dumps(rows, indent=2).encode(), "array.json.gz": gzip.compress(json.dumps(rows).encode())}
    seen = []
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        manifest = run([tmp_path / name], tmp_path / f"out-{name}", prompt_key="question", response_key="answer")
        seen.append(sorted(json.dumps(r, sort_keys=True) for r in train_rows(tmp_path / f"out-{name}")))
        assert manifest["counts"]["train"] == 3
    assert all(s == seen[0] for s in seen) and '"id": "1180591620717411303424"' in " ".join(seen[0])
    shards = tmp_path / "shards"
    shards.mkdir()
    for i, row in enumerate(rows):  # Parquet has no integer beyond 64 bits: that id is text there
        row = dict(row, id=str(row["id"])) if "id" in row else row
        pq.write_table(pa.Table.from_pylist([row]), shards / f"train-0000{i}-of-00003.parquet")
    manifest = run([shards, tmp_path / "gz.jsonl"], tmp_path / "mixed", prompt_key="question", response_key="answer")
    assert manifest["counts"]["train"] == 6 and manifest["inputs"][0]["format"] == "Parquet"


UNREADABLE = {
    # name: (bytes, words the error must hold)
    "utf16.jsonl": ('{"prompt": "p"}\n'.encode("utf-16"), ["UTF-16 text", "iconv -f UTF-16 -t UTF-8"]),
    "utf16-no-bom.jsonl": ('{"prompt": "p"}\n'.encode("utf-16-le"), ["UTF-16 text", "iconv"]),
    "data.zip": (b"PK\x03\x04" + b"\x00" * 40, ["a zip archive", "unzip"]),
    "data.feather": (b"ARROW1\x00\x00" + b"\x00" * 40, ["Arrow IPC (Feather)", "pq.write_table"]),
    "data.csv": (b"prompt,generated_solution\nWhat is 1+1?,2\n", ["CSV", "read_csv"]),
    "page.jsonl": (b"<!DOCTYPE html><html><body>", ["HTML", "/resolve/"]),
    "pointer.parquet": (b"version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 12\n", ["Git LFS pointer",
                                                                                                 "git lfs pull"]),
    "cut.parquet": (b"PAR1" + b"\x00" * 64, ["incomplete Parquet file"]),
    "pretty.json": (b'{\n  "prompt": "p",\n  "generated_solution": "s"\n}\n', ["pretty-printed JSON object", "jq -c"]),
    "cut.jsonl.gz": (gzip.compress(b'{"prompt": "p", "generated_solution": "s"}\n' * 50)[:-20], ["gzip", "damaged"]),
}


@pytest.mark.parametrize("name", sorted(UNREADABLE))
def test_a_file_of_another_kind_is_named_with_the_fix(name, tmp_path, capsys):
    data, words = UNREADABLE[name]
    (tmp_path / name).write_bytes(data)
    assert main([str(tmp_path / name), "-o", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and all(w in err for w in words) and "latin1" not in err, err
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_json_array_items_that_cannot_be_used_are_rejects_and_the_rest_is_read(tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    text = ('[{"prompt": "a", "generated_solution": "x"},\n {"prompt": "b", oops},\n 7,\n'
            f' {{"prompt": "c", "generated_solution": "y", "deep": {deep}}},\n'
            ' {"prompt": "d", "generated_solution": "z", "s": "\\ud800"},\n {"prompt": "e", "generated_solution": "w"}]')
    (tmp_path / "a.json").write_text(text)
    manifest = run([tmp_path / "a.json"], tmp_path / "out", on_error="skip")
    assert manifest["counts"]["rejected"] == {"malformed_json": 1, "not_an_object": 1, "too_deeply_nested": 1,
                                              "invalid_unicode_escape": 1}
    assert manifest["counts"]["train"] == 2
    rejects = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rejects] == [1, 2, 3, 4]
    with pytest.raises(DataError, match=r"a.json row 1: not valid JSON"):
        run([tmp_path / "a.json"], tmp_path / "fail")


def test_jsonl_nested_100000_deep_is_a_counted_reject_never_a_recursion_error(tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    (tmp_path / "a.jsonl").write_text('{"prompt": "a", "generated_solution": "x"}\n'
                                      f'{{"prompt": "b", "generated_solution": "y", "d": {deep}}}\n'
                                      f'{{"prompt": "c", "generated_solution": "z", "d": {"[" * 300 + "]" * 300}}}\n')
    manifest = run([tmp_path / "a.jsonl"], tmp_path / "out", on_error="skip")
    assert manifest["counts"]["rejected"] == {"too_deeply_nested": 2} and manifest["counts"]["train"] == 1
    with pytest.raises(DataError, match="a.jsonl:2: objects and lists nest more than 200 levels"):
        run([tmp_path / "a.jsonl"], tmp_path / "fail")


# ---------------------------------------------------------------------------------------
# Ids and names


def test_ids_keep_their_exact_value_and_type(tmp_path):
    rows = [{"id": 2**70, "prompt": "p", "generated_solution": "a"}, {"id": 2**70 + 1, "prompt": "p", "generated_solution": "b"},
            {"id": 0, "prompt": "q", "generated_solution": "c"}, {"id": "0", "prompt": "r", "generated_solution": "d"},
            {"id": 2**63 + 1, "prompt": "s", "generated_solution": "e"}, {"id": 5, "prompt": "t", "generated_solution": "f"}]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    manifest = run([tmp_path / "a.jsonl"], tmp_path / "out", max_per_problem=1)
    assert manifest["split"]["problems"] == 6 and manifest["counts"]["train"] == 6  # nothing merged, nothing dropped
    ids = sorted(r["id"] for r in train_rows(tmp_path / "out"))
    assert str(2**70) in ids and str(2**70 + 1) in ids and str(2**63 + 1) in ids  # exact digits, never a float


def test_an_internal_name_in_the_input_is_a_named_reject(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"prompt": "p", "generated_solution": "s", "__sft_order": 3}\n'
                                      '{"prompt": "q", "generated_solution": "t", "sft_num_tokens": "kept"}\n')
    with pytest.raises(DataError, match="a.jsonl:1: field '__sft_order' has a name prepare_data uses"):
        run([tmp_path / "a.jsonl"], tmp_path / "fail")
    manifest = run([tmp_path / "a.jsonl"], tmp_path / "out", on_error="skip")
    assert manifest["counts"]["rejected"] == {"reserved_field": 1}
    assert train_rows(tmp_path / "out")[0]["sft_num_tokens"] == "kept"  # not this run's column: kept as given
