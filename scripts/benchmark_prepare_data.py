"""Benchmark sft/prepare_data.py against a naive pandas baseline, its token counting against the
tokenizer library, and its grading of real solutions, in one run. Prints figures; asserts nothing.

Usage:
    python scripts/benchmark_prepare_data.py                      # 500,000 rows (about 1.3 GB), all three parts
    python scripts/benchmark_prepare_data.py --rows 50000 --token-rows 2000   # a quick look
    python scripts/benchmark_prepare_data.py --skip-pipeline --skip-grading   # token counting only
    python scripts/benchmark_prepare_data.py --skip-pipeline --skip-tokens    # grading only
    python scripts/benchmark_prepare_data.py --rows 400000 --formats --skip-pipeline --skip-tokens --skip-grading

Part 1, pipeline: a synthetic JSONL of `--rows` math-solution rows of realistic, long-tailed
sizes (a few hundred to several thousand tokens; several solutions per problem) is generated
once (reused when present), then each tool runs in its own subprocess on the same file:
  - prepare_data: `python sft/prepare_data.py FILE -o OUT` with default settings (validation,
    leak-free split by id, uniform shuffle, manifest with sha256);
  - baseline: `pandas.read_json(lines=True)`, then a shuffled random 10% split and
    `to_parquet` for each side.
Each runs --repeats times, alternating, each run into a fresh output directory after `sync`
(so no run pays for replacing or flushing another's files); the fastest run of each counts,
and the ratio of the median runs is printed beside it (other jobs share the CPUs; the load
average is printed). Wall time (process start to exit), CPU time, peak
memory (sum over the process and its worker processes, sampled every 50 ms), rows/s, MB/s and
the ratios are printed. Goals: >= 1.5x the baseline's throughput, <= half its peak memory.

Part 2, token counting: on the first `--token-rows` rows of the same file, with a tokenizer of
Qwen's real 151k vocabulary (sft/bench/qwen_tokenizer.py) and three real chat templates (Qwen2.5's;
Qwen3's and DeepSeek-R1-Distill's, from tests/assets/chat_templates, with the replies wrapped in
a reasoning block), times sft.text.chat_format's count (every render and every token: what prepare_data --tokenizer and
training compute; its one-time template analysis is timed apart) and the library's
own batched encoding (`encode_batch_fast`) of the same conversations rendered beforehand (their
rendering not timed). The fast count must equal the same count through the library alone.
Medians of alternating rounds. Goals: >= 1,000,000 tokens/s and at least the library's speed.

Part 3, grading: sft.text.math_answers.grade on --gradings (10,000) real model-written solutions
(tests/assets/graded_solutions, cycled, the grader's caches emptied on every pass), per second,
lenient and --strict-grading; then prepare_data on those solutions (each once), with and without
--answer-key (medians of --repeats runs).

Part 4, input formats (--formats, off by default): the same rows written as gzip JSON Lines, one
indented JSON array and Parquet shards (each generated once, reused), then prepare_data with default
settings on the plain JSON Lines and on each of them, one run each: wall, CPU and peak memory (all
processes, as in part 1). The streaming readers must keep memory at the plain JSON Lines' level.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python scripts/benchmark_prepare_data.py`: make `import sft.x` work
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import json
import os
import shutil
import statistics
import subprocess
import time

from sft.bench.memory import process_tree_rss
from sft.common.files import atomic_path, write_text_atomic

REPO = Path(__file__).resolve().parents[1]
GENERATOR_VERSION = 1
WORDS = (
    "the of and to a in is that we so then let be number sum product total each find value equation solve "
    "step first second next therefore thus hence since because multiply divide add subtract compute simplify "
    "fraction square root area triangle circle radius angle degrees probability remainder integer prime "
    "divisible factor common denominator numerator substitute expand both sides check"
).split()


def _sentences(rng, count: int) -> list[str]:
    """A pool of math-solution sentences: words, numbers, LaTeX fractions and equations."""
    out = []
    for _ in range(count):
        parts = []
        for k in rng.random(int(rng.integers(6, 22))):
            if k < 0.12:
                parts.append(str(int(rng.integers(0, 10_000))))
            elif k < 0.17:
                parts.append(f"$\\frac{{{int(rng.integers(1, 99))}}}{{{int(rng.integers(2, 99))}}}$")
            elif k < 0.20:
                parts.append(f"$x^{int(rng.integers(2, 5))} + {int(rng.integers(1, 50))}x = {int(rng.integers(1, 500))}$")
            else:
                parts.append(WORDS[int(rng.integers(len(WORDS)))])
        out.append(" ".join(parts).capitalize() + ".")
    return out


def generate_jsonl(path: Path, rows: int, seed: int = 0) -> None:
    """Write `rows` synthetic rows: 1-8 solutions per problem; sentence counts log-normal
    (prompt median 3 sentences, solution median 16, tail to 400), so samples run from about a
    hundred to over ten thousand tokens."""
    import numpy as np
    import orjson

    rng = np.random.default_rng(seed)
    pool = _sentences(rng, 20_000)
    solution_sentences = np.clip(rng.lognormal(np.log(16), 0.8, rows), 3, 400).astype(int)
    prompt_sentences = np.clip(rng.lognormal(np.log(3), 0.6, rows), 1, 30).astype(int)
    picks = rng.integers(0, len(pool), int(solution_sentences.sum() + prompt_sentences.sum())).tolist()
    answers = rng.integers(0, 1000, rows).tolist()
    per_problem = rng.integers(1, 9, rows).tolist()
    position, problem, left, prompt = 0, -1, 0, ""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        for i in range(rows):
            if left == 0:
                problem += 1
                left = per_problem[problem % rows]
                n = int(prompt_sentences[i])
                prompt = "Solve: " + " ".join(pool[j] for j in picks[position : position + n])
                position += n
            left -= 1
            n = int(solution_sentences[i])
            steps = "\n".join(f"Step {k + 1}: {pool[j]}" for k, j in enumerate(picks[position : position + n]))
            position += n
            solution = f"{steps}\nTherefore, the final answer is $\\boxed{{{answers[i]}}}$."
            handle.write(orjson.dumps({"id": problem, "prompt": prompt, "generated_solution": solution,
                                       "num_tokens": n * 30}) + b"\n")


def baseline(input_path: str, output_dir: str, val_split: float = 0.1, seed: int = 0) -> None:
    """The naive way: load everything with pandas, shuffle, split rows at random, write Parquet."""
    import pandas as pd

    frame = pd.read_json(input_path, lines=True)
    frame = frame.sample(frac=1.0, random_state=seed)
    n_val = int(len(frame) * val_split)
    os.makedirs(output_dir, exist_ok=True)
    frame.iloc[n_val:].to_parquet(os.path.join(output_dir, "train.parquet"))
    frame.iloc[:n_val].to_parquet(os.path.join(output_dir, "val.parquet"))


def measure(command: list[str]) -> dict:
    """Run `command`; its wall time, CPU time (its own and its workers') and peak memory.

    Peak memory is the largest sum of the resident set sizes of the process and all its
    descendants, sampled every 50 ms (prepare_data runs worker processes, so one process's
    ru_maxrss would understate it); the kernel's ru_maxrss of the largest single process is
    reported beside it.
    """
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO)
    output = bytearray()
    peak_tree = 0

    def drain() -> None:
        for line in process.stdout:
            output.extend(line)

    import threading

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    while True:
        peak_tree = max(peak_tree, process_tree_rss(process.pid))
        try:
            if os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                break
        except ChildProcessError:
            break
        time.sleep(0.05)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    reader.join()
    code = os.waitstatus_to_exitcode(status)
    process.returncode = code
    if code != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({code}):\n{output.decode(errors='replace')[-3000:]}")
    return {"wall_s": wall, "peak_rss_mb": peak_tree / 2**20, "max_single_rss_mb": usage.ru_maxrss / 1024,
            "cpu_s": usage.ru_utime + usage.ru_stime, "output": output.decode(errors="replace")}


def pipeline_benchmark(data: Path, work: Path, rows: int, repeats: int) -> dict:
    size_mb = data.stat().st_size / 1e6
    runs: dict[str, list[dict]] = {"prepare_data": [], "baseline": []}
    outputs = {"prepare_data": work / "prepared", "baseline": work / "baseline"}
    commands = {
        "prepare_data": [sys.executable, str(REPO / "sft" / "prepare_data.py"), str(data), "-o", str(outputs["prepare_data"]),
                         "--no-progress"],
        "baseline": [sys.executable, str(Path(__file__).resolve()), "--_baseline", str(data), str(outputs["baseline"])],
    }
    for _ in range(repeats):
        for name, command in commands.items():
            print(f"running {name} ...", flush=True)
            # Every run starts from the same state: no earlier output to replace (freeing a
            # large file can take seconds on some filesystems) and no dirty pages of the
            # previous run still being written back while this one is timed.
            shutil.rmtree(outputs[name], ignore_errors=True)
            os.sync()
            result = measure(command)
            runs[name].append(result)
            print(f"  {result['wall_s']:.1f} s wall, {result['cpu_s']:.1f} s CPU, peak RSS {result['peak_rss_mb']:,.0f} MB "
                  f"(all processes; largest single process {result['max_single_rss_mb']:,.0f} MB), "
                  f"load average {os.getloadavg()[0]:.1f}", flush=True)
    best = {name: min(r, key=lambda x: x["wall_s"]) for name, r in runs.items()}
    median_wall = {name: statistics.median(x["wall_s"] for x in r) for name, r in runs.items()}
    manifest = json.loads((outputs["prepare_data"] / "manifest.json").read_text())
    assert manifest["counts"]["train"] + manifest["counts"]["val"] == rows, manifest["counts"]
    figures = {}
    for name, result in best.items():
        figures[name] = {"wall_s": round(result["wall_s"], 2), "cpu_s": round(result["cpu_s"], 2),
                         "rows_per_s": round(rows / result["wall_s"]), "mb_per_s": round(size_mb / result["wall_s"], 1),
                         "peak_rss_mb": round(result["peak_rss_mb"]), "max_single_rss_mb": round(result["max_single_rss_mb"]),
                         "all_wall_s": [round(r["wall_s"], 1) for r in runs[name]]}
    figures["throughput_ratio"] = round(figures["prepare_data"]["rows_per_s"] / figures["baseline"]["rows_per_s"], 2)
    figures["median_throughput_ratio"] = round(median_wall["baseline"] / median_wall["prepare_data"], 2)
    figures["memory_ratio"] = round(figures["prepare_data"]["peak_rss_mb"] / figures["baseline"]["peak_rss_mb"], 3)
    figures["input_mb"] = round(size_mb, 1)
    figures["rows"] = rows
    return figures


def _format_variants(data: Path, work: Path) -> dict[str, Path]:
    """The rows of `data` as gzip JSON Lines, an indented JSON array and Parquet shards (written once, streaming)."""
    import gzip

    import orjson
    import pyarrow as pa
    import pyarrow.parquet as pq

    variants = {"jsonl": data, "jsonl.gz": work / f"{data.stem}.jsonl.gz", "json array": work / f"{data.stem}.json",
                "parquet shards": work / f"{data.stem}-parquet"}
    if not variants["jsonl.gz"].exists():
        with atomic_path(variants["jsonl.gz"]) as tmp, open(data, "rb") as source, \
                gzip.open(tmp, "wb", compresslevel=1) as sink:
            shutil.copyfileobj(source, sink, 8 << 20)
    if not variants["json array"].exists():
        with atomic_path(variants["json array"]) as tmp, open(data, "rb") as source, open(tmp, "wb") as sink:
            sink.write(b"[\n")
            for n, line in enumerate(source):
                sink.write((b",\n" if n else b"") + orjson.dumps(orjson.loads(line), option=orjson.OPT_INDENT_2))
            sink.write(b"\n]\n")
    shards = variants["parquet shards"]
    if not shards.exists():
        building = work / f".{shards.name}.tmp"
        shutil.rmtree(building, ignore_errors=True)
        building.mkdir()
        with open(data, "rb") as source:
            rows, shard = [], 0
            for line in source:
                rows.append(orjson.loads(line))
                if len(rows) == 100_000:
                    pq.write_table(pa.Table.from_pylist(rows), building / f"train-{shard:05d}.parquet", row_group_size=10_000)
                    rows, shard = [], shard + 1
            if rows:
                pq.write_table(pa.Table.from_pylist(rows), building / f"train-{shard:05d}.parquet", row_group_size=10_000)
        os.replace(building, shards)
    return variants


def formats_benchmark(data: Path, work: Path, rows: int) -> list[dict]:
    """prepare_data on the same rows in each input format (_format_variants): wall, CPU, peak memory."""
    results = []
    for name, path in _format_variants(data, work).items():
        out = work / "formats-out"
        shutil.rmtree(out, ignore_errors=True)
        os.sync()
        print(f"prepare_data on {name} ...", flush=True)
        result = measure([sys.executable, str(REPO / "sft" / "prepare_data.py"), str(path), "-o", str(out), "--no-progress"])
        counts = json.loads((out / "manifest.json").read_text())["counts"]
        assert counts["train"] + counts["val"] == rows, counts
        size = sum(f.stat().st_size for f in path.rglob("*")) if path.is_dir() else path.stat().st_size
        results.append({"format": name, "input_mb": round(size / 1e6, 1), "wall_s": round(result["wall_s"], 2),
                        "cpu_s": round(result["cpu_s"], 2), "peak_rss_mb": round(result["peak_rss_mb"]),
                        "load_average": round(os.getloadavg()[0], 1)})
        print(f"  {results[-1]}", flush=True)
    return results


GRADED_DIR = REPO / "tests" / "assets" / "graded_solutions"  # real model-written solutions with references


def grading_benchmark(work: Path, gradings: int, repeats: int) -> dict:
    """sft.text.math_answers.grade on real solutions (each against its own reference), `gradings` in all, its
    caches (math-verify's parses, equivalences) emptied on every pass over the set, so repeats cost
    what new data costs; then prepare_data on a file of those solutions, each once, with and without
    --answer-key."""
    from sft.text.math_answers import _answers_match, _parse, grade, reference_answer

    rows = [json.loads(line) for path in sorted(GRADED_DIR.glob("*.jsonl"))
            for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    grade(rows[0]["solution"], rows[0]["reference"])  # imports math-verify and sympy: once per process, not timed
    figures: dict = {"solutions": len(rows), "gradings": gradings}
    for label, strict in (("lenient", False), ("strict", True)):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            done = 0
            while done < gradings:
                _parse.cache_clear()
                _answers_match.cache_clear()
                for row in rows[: gradings - done]:
                    grade(row["solution"], reference_answer(row["reference"]), row["problem"], strict=strict)
                done += min(len(rows), gradings - done)
            times.append(time.perf_counter() - start)
        figures[f"{label}_per_s"] = round(gradings / statistics.median(times))
    by_dataset = {}
    for dataset in sorted({row["dataset"].split(" (")[0] for row in rows}):
        subset = [row for row in rows if row["dataset"].split(" (")[0] == dataset]
        _parse.cache_clear()
        _answers_match.cache_clear()
        start = time.perf_counter()
        for row in subset:
            grade(row["solution"], reference_answer(row["reference"]), row["problem"])
        by_dataset[dataset] = {"solutions": len(subset), "per_s": round(len(subset) / (time.perf_counter() - start))}
    figures["lenient_by_dataset"] = by_dataset
    source = work / "graded-solutions.jsonl"
    with open(source, "w", encoding="utf-8") as handle:
        for i, row in enumerate(rows):
            handle.write(json.dumps({"id": i, "prompt": row["problem"], "generated_solution": row["solution"],
                                     "answer": row["reference"]}) + "\n")
    for label, extra in (("prepare_data", []), ("prepare_data_answer_key", ["--answer-key", "answer"])):
        walls = []
        for _ in range(repeats):
            out = work / f"graded-{label}"
            shutil.rmtree(out, ignore_errors=True)
            result = measure([sys.executable, str(REPO / "sft" / "prepare_data.py"), str(source), "-o", str(out),
                              "--no-progress", *extra])
            walls.append(result["wall_s"])
        figures[f"{label}_wall_s"] = round(statistics.median(walls), 2)
        figures[f"{label}_rows_per_s"] = round(len(rows) / statistics.median(walls))
    figures["kept_with_answer_key"] = json.loads((work / "graded-prepare_data_answer_key" / "manifest.json").read_text())[
        "grading"]["outcomes"]
    return figures


TOKEN_TEMPLATES = (
    # (name, chat template (None: Qwen2.5's, built into sft/bench/qwen_tokenizer.py), replies wrapped in reasoning)
    ("qwen2.5-instruct", None, False),
    ("qwen3", "qwen3.jinja", True),
    ("deepseek-r1-distill-qwen-2501", "deepseek-r1-distill-qwen-2501.jinja", True),
)
TEMPLATE_DIR = REPO / "tests" / "assets" / "chat_templates"  # byte-exact copies of the models' templates


def _first_conversations(data: Path, token_rows: int) -> tuple[list[str], list[str]]:
    """(prompts, solutions) of the first `token_rows` rows of the synthetic JSONL."""
    import orjson

    prompts, responses = [], []
    with open(data, "rb") as handle:
        for _, line in zip(range(token_rows), handle):
            row = orjson.loads(line)
            prompts.append(row["prompt"])
            responses.append(row["generated_solution"])
    return prompts, responses


def _template_tokenizer(path: Path, name: str, template_file: str | None):
    """The Qwen-vocabulary tokenizer at `path` with the chat template (and its added tokens) of `name`."""
    from sft.bench.qwen_tokenizer import load_qwen_tokenizer

    tokenizer = load_qwen_tokenizer(path)
    if template_file is not None:
        tokenizer.chat_template = (TEMPLATE_DIR / template_file).read_text(encoding="utf-8")
        from tokenizers import AddedToken

        # ordinary (not special) added tokens matched verbatim, as in Qwen3's and DeepSeek's tokenizers
        tokenizer.add_tokens([AddedToken(t, normalized=False, special=False) for t in ("<think>", "</think>")])
        if "deepseek" in name:
            tokenizer.add_special_tokens({"bos_token": "<｜begin▁of▁sentence｜>", "eos_token": "<｜end▁of▁sentence｜>",
                                          "additional_special_tokens": ["<｜User｜>", "<｜Assistant｜>"]})
    return tokenizer


def _time_token_counts(tokenizer, conversations: list[list[dict]], repeats: int) -> dict:
    """Token counting by sft.text.chat_format against the library's batched encoding, alternating rounds."""
    from sft.text.chat_format import ChatFormat
    from sft.text.chat_tokens import BATCH_TEXTS

    rendered = [tokenizer.apply_chat_template(c, tokenize=False) for c in conversations]
    backend = tokenizer.backend_tokenizer

    def library() -> int:  # the library's batched encoding of the rendered conversations (rendering not timed)
        total = 0
        for start in range(0, len(rendered), BATCH_TEXTS):
            total += sum(len(e) for e in backend.encode_batch_fast(rendered[start : start + BATCH_TEXTS],
                                                                   add_special_tokens=False))
        return total

    start = time.perf_counter()
    chat = ChatFormat(tokenizer)  # template analysis and the tiktoken self-test: once per run
    setup_s = time.perf_counter() - start

    def ours() -> int:  # every render (cache emptied) and every token, as prepare_data and training do
        chat._render_cached.cache_clear()
        return sum(chat.count(conversations)[0])

    exact = ChatFormat(tokenizer, use_tiktoken=False)  # the same encoding with the library for every text
    reference = sum(exact.count(conversations)[0])
    times: dict[str, list[float]] = {"ours": [], "library": []}
    totals = {}
    for _ in range(repeats):
        for label, fn in (("ours", ours), ("library", library)):
            start = time.perf_counter()
            totals[label] = fn()
            times[label].append(time.perf_counter() - start)
    return {"chat": chat, "setup_s": setup_s, "reference": reference, "times": times, "totals": totals}


def token_benchmark(data: Path, work: Path, token_rows: int, repeats: int) -> list[dict]:
    from sft.bench.qwen_tokenizer import build_qwen_tokenizer

    path = build_qwen_tokenizer(REPO / "outputs" / "qwen-tokenizer")
    prompts, responses = _first_conversations(data, token_rows)
    results = []
    for name, template_file, reasoning in TOKEN_TEMPLATES:
        tokenizer = _template_tokenizer(path, name, template_file)
        replies = [f"<think>\n{r}\n</think>\n\nSo that is the answer." if reasoning else r for r in responses]
        conversations = [[{"role": "user", "content": p}, {"role": "assistant", "content": r}]
                         for p, r in zip(prompts, replies)]
        timed = _time_token_counts(tokenizer, conversations, repeats)
        chat, times, totals = timed["chat"], timed["times"], timed["totals"]
        if totals["ours"] != timed["reference"]:
            raise AssertionError(f"{name}: fast counts {totals['ours']} differ from the library path's {timed['reference']}")
        best = {label: sorted(t)[len(t) // 2] for label, t in times.items()}  # medians of alternating runs
        per_sample, encodings = chat.count(conversations)
        outcomes = sorted({o for e in encodings for o in e.outcomes})
        results.append({
            "template": name,
            "reasoning_replies": reasoning,
            "replies": outcomes,
            "samples": len(prompts),
            "tokens": totals["ours"],
            "library_tokens_of_whole_renders": totals["library"],
            "tokens_per_sample": {"median": int(sorted(per_sample)[len(per_sample) // 2]), "min": int(min(per_sample)),
                                  "max": int(max(per_sample))},
            "ours_tokens_per_s": round(totals["ours"] / best["ours"]),
            "library_tokens_per_s": round(totals["library"] / best["library"]),
            "ratio_to_library": round((totals["ours"] / best["ours"]) / (totals["library"] / best["library"]), 3),
            "setup_s": round(timed["setup_s"], 2),
            "all_times_s": {k: [round(t, 2) for t in v] for k, v in times.items()},
            "text_encoder": chat.text.text_encoder,
            "tokenizers_parallelism": os.environ.get("TOKENIZERS_PARALLELISM", "(unset: on)"),
            "cpus": os.cpu_count(),
        })
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--rows", type=int, default=500_000, help="rows in the synthetic JSONL")
    parser.add_argument("--token-rows", type=int, default=4000, help="rows used for the token-counting benchmark")
    parser.add_argument("--repeats", type=int, default=3,
                        help="alternating runs of each pipeline (the fastest of each is reported); the token part runs "
                        "max(5, this) alternating rounds and reports medians")
    parser.add_argument("--workdir", default=str(REPO / "outputs" / "benchmark_prepare_data"), help="where data and outputs go")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic data")
    parser.add_argument("--skip-pipeline", action="store_true", help="skip the pipeline part")
    parser.add_argument("--skip-tokens", action="store_true", help="skip the token-counting part")
    parser.add_argument("--skip-grading", action="store_true", help="skip the grading part")
    parser.add_argument("--gradings", type=int, default=10_000, help="solutions graded in the grading part")
    parser.add_argument("--formats", action="store_true", help="also run the input-format part (gzip JSON Lines, a "
                        "JSON array, Parquet shards of the same rows)")
    parser.add_argument("--_baseline", nargs=2, metavar=("INPUT", "OUTDIR"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def print_results(results: dict, work: Path) -> None:
    """The summary tables of the parts that ran."""
    print("\n== results ==")
    if "pipeline" in results:
        p = results["pipeline"]
        print(f"input: {p['rows']:,} rows, {p['input_mb']:,} MB")
        print(f"{'':14}{'wall s':>9}{'CPU s':>9}{'rows/s':>10}{'MB/s':>8}{'peak RSS MB':>13}   all runs (wall s)")
        for name in ("prepare_data", "baseline"):
            f = p[name]
            print(f"{name:14}{f['wall_s']:>9.1f}{f['cpu_s']:>9.1f}{f['rows_per_s']:>10,}{f['mb_per_s']:>8.1f}"
                  f"{f['peak_rss_mb']:>13,}   {f['all_wall_s']}")
        print(f"throughput ratio (prepare_data / baseline): {p['throughput_ratio']:.2f}x fastest runs, "
              f"{p['median_throughput_ratio']:.2f}x medians   (goal >= 1.5x)")
        print(f"peak memory ratio (prepare_data / baseline): {p['memory_ratio']:.3f}   (goal <= 0.5)")
    for t in results.get("tokens", []):
        print(f"token counting, {t['template']} template{' (reasoning replies)' if t['reasoning_replies'] else ''}, "
              f"{t['samples']:,} samples ({t['tokens']:,} tokens, median {t['tokens_per_sample']['median']}/sample), "
              f"Qwen vocabulary, {t['cpus']} CPUs; replies placed: {', '.join(t['replies'])}:")
        print(f"  ours (sft.text.chat_format, renders included) {t['ours_tokens_per_s']:>12,} tokens/s   (goal >= 1,000,000)")
        print(f"  library encode_batch_fast, pre-rendered  {t['library_tokens_per_s']:>12,} tokens/s")
        print(f"  ours / library {t['ratio_to_library']:.2f}x   (goal >= 1.0x); setup once per run {t['setup_s']} s")
    if "grading" in results:
        g = results["grading"]
        print(f"grading {g['gradings']:,} real solutions ({g['solutions']} distinct, tests/assets/graded_solutions), one "
              f"process: {g['lenient_per_s']:,}/s (lenient, what prepare_data --answer-key and evaluation use), "
              f"{g['strict_per_s']:,}/s (--strict-grading)")
        print("  by dataset (one pass each): " + ", ".join(f"{k} {v['per_s']:,}/s ({v['solutions']} solutions)"
                                                      for k, v in g["lenient_by_dataset"].items()))
        print(f"  prepare_data on those {g['solutions']:,} rows: {g['prepare_data_wall_s']} s without grading, "
              f"{g['prepare_data_answer_key_wall_s']} s with --answer-key ({g['prepare_data_answer_key_rows_per_s']:,} rows/s; "
              f"outcomes {g['kept_with_answer_key']})")
    for f in results.get("formats", []):
        print(f"input format {f['format']:<15} {f['input_mb']:>9,.1f} MB  {f['wall_s']:>7.1f} s wall  {f['cpu_s']:>7.1f} s CPU  "
              f"peak RSS {f['peak_rss_mb']:>6,} MB  (load {f['load_average']})")
    print(f"load average before/after: {results['load_average']} / {results['load_average_after']} (other jobs share these CPUs)")
    print(f"results written to {work / 'results.json'}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args._baseline:
        baseline(*args._baseline)
        return 0

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    data = work / f"synthetic-{args.rows}-seed{args.seed}-v{GENERATOR_VERSION}.jsonl"
    if not data.exists():
        print(f"generating {args.rows:,} rows into {data} ...", flush=True)
        start = time.perf_counter()
        generate_jsonl(data, args.rows, args.seed)
        print(f"  {data.stat().st_size / 1e6:,.0f} MB in {time.perf_counter() - start:.0f} s", flush=True)
    results: dict = {"input": str(data), "input_mb": round(data.stat().st_size / 1e6, 1), "load_average": os.getloadavg()}
    if not args.skip_pipeline:
        results["pipeline"] = pipeline_benchmark(data, work, args.rows, args.repeats)
    if not args.skip_tokens:
        print("token counting ...", flush=True)
        results["tokens"] = token_benchmark(data, work, args.token_rows, max(5, args.repeats))
    if not args.skip_grading:
        print("grading ...", flush=True)
        results["grading"] = grading_benchmark(work, args.gradings, args.repeats)
    if args.formats:
        results["formats"] = formats_benchmark(data, work, args.rows)
    results["load_average_after"] = os.getloadavg()
    write_text_atomic(work / "results.json", json.dumps(results, indent=2))
    print_results(results, work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
