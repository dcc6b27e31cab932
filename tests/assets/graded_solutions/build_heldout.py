"""Rebuild heldout.jsonl from the public source files (provenance record).

Not used by any test.  heldout.jsonl is a HELD-OUT set: none of its source
repositories or files is used by solutions.jsonl or freeform.jsonl, and it was not
used to develop the grader.  Like build_solutions.py / build_freeform.py it reads
every source file with ``git --git-dir=<root>/<owner>+<name>/repo show <commit>:<path>``
(MMLU-Pro's per-model outputs are zip files in the repository; they are opened in
memory with the standard library's zipfile).  No solution text is edited: a
solution is always the source string exactly as stored.

    python build_heldout.py --mirror-root /work/.mirror --out heldout.jsonl

It reuses (imports, does not change) the ending-style rules and the
label-consistency helpers of build_solutions.py and build_freeform.py, so the
counts in README.md are made with the same rules as the other two sections.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import re
import subprocess
import sys
import zipfile
from collections import Counter
from fractions import Fraction
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.dont_write_bytecode = True  # importing the sibling build scripts must not leave __pycache__ here
sys.path.insert(0, str(HERE))
import build_freeform as ff  # noqa: E402  (helpers only; its main() is not run)
import build_solutions as bs  # noqa: E402

MAX_CHARS = 6000

COMMITS = {
    # Deductive Verification of CoT (NeurIPS 2023): human-annotated ChatGPT chains.
    "lz1oceani/verify_cot": "b458aa02880d9be95ab1d702277081c781e880cb",
    # Plan-and-Solve prompting (ACL 2023): text-davinci-003 outputs with a correctness flag.
    "AGI-Edgerunners/Plan-and-Solve-Prompting": "9d5a176f5b4de1011d426009ab6398dc76046e88",
    # GSM-Plus (ACL 2024): results on the original GSM8K test set.
    "qtli/GSM-Plus": "3474129ec12fcd3e8ac08cb037aca1928efca98c",
    # MMLU-Pro: per-model 5-shot CoT outputs (zip files, added in 964a136).
    "TIGER-AI-Lab/MMLU-Pro": "f418b116db00b065c2aea046518d8fcf74d39872",
    # MMLU-Pro: the gpt-4o result file, deleted later in 8f97a48.
    "TIGER-AI-Lab/MMLU-Pro@gpt4o": "ff991b5b7f14a383fd41da3987447ab6c08bf138",
    # TheoremQA: the authors' error-analysis files and the test set (references).
    "wenhuchen/TheoremQA": "585c960f647b3cae8b37ff71fd9dac45ce4b4e91",
}

# rows per (source, subset, label, label_by); drawn with ff.spread_sample
# (seeded shuffle, round-robin over the solutions.jsonl ending styles)
QUOTA = {
    # verify_cot: task file -> {(label, label_by): n}
    ("vcot", "gsm8k_100"): {("correct", "human"): 18, ("correct", "dataset-automatic"): 4,
                            ("incorrect", "human"): 16},
    ("vcot", "MATH_100"): {("correct", "human"): 22, ("correct", "dataset-automatic"): 6,
                           ("incorrect", "human"): 16},
    ("vcot", "addsub_100"): {("correct", "human"): 8, ("correct", "dataset-automatic"): 2,
                             ("incorrect", "human"): 10},
    ("vcot", "aqua_rat_100"): {("correct", "human"): 6, ("correct", "dataset-automatic"): 2,
                               ("incorrect", "human"): 6},
    # Plan-and-Solve: dataset -> (correct, incorrect)
    ("ps", "gsm8k"): (18, 18),
    ("ps", "SVAMP"): (9, 9),
    ("ps", "MultiArith"): (4, 5),
    ("ps", "AddSub"): (4, 5),
    ("ps", "SingleEq"): (4, 5),
    ("ps", "AQuA"): (5, 5),
    # GSM-Plus: model file -> (correct, incorrect)
    ("gsmplus", "gpt4"): (14, 14),
    ("gsmplus", "gpt-3.5-turbo"): (14, 14),
    # TheoremQA error files: model -> incorrect
    ("tqa", "GPT4"): 12,
    ("tqa", "ChatGPT"): 8,
}
MMLU_PER_MODEL = (3, 3)  # (correct, incorrect) per model

VCOT_TASKS = {"gsm8k_100": "GSM8K", "MATH_100": "MATH", "addsub_100": "AddSub", "aqua_rat_100": "AQuA"}
PS_FILES = {
    "gsm8k": ("generated_result/gsm8k-zero_shot-305-text-davinci-003.json", "GSM8K"),
    "SVAMP": ("generated_result/SVAMP-zero_shot-307-text-davinci-003.json", "SVAMP"),
    "MultiArith": ("generated_result/MultiArith-zero_shot-302-text-davinci-003.json", "MultiArith"),
    "AddSub": ("generated_result/AddSub-zero_shot-301-text-davinci-003.json", "AddSub"),
    "SingleEq": ("generated_result/SingleEq-zeri_shot-301-text-davinci-003.json", "SingleEq"),
    "AQuA": ("generated_result/AQuA-zero_shot-305-text-davinci-003.json", "AQuA"),
}
GSMPLUS_MODELS = {
    "gpt4": "GPT-4 (OpenAI API; version not stated in GSM-Plus)",
    "gpt-3.5-turbo": "gpt-3.5-turbo (OpenAI API; GSM-Plus script default gpt-3.5-turbo-0613)",
}
# gemini-1.5-pro-002 is left out: its stored text repeats "The answer is (X)." for the few-shot
# examples after its own answer, so the text does not end with the answer the source scored.
MMLU_ZIPS = {  # zip stem -> model name
    "Meta-Llama-3_1-8B-Instruct": "Meta-Llama-3.1-8B-Instruct",
    "Meta-Llama-3_1-70B-Instruct": "Meta-Llama-3.1-70B-Instruct",
    "Mistral-7B-Instruct-v0.2": "Mistral-7B-Instruct-v0.2",
    "Mixtral-8x7B-Instruct-v0.1": "Mixtral-8x7B-Instruct-v0.1",
    "Phi-3-mini-4k-instruct": "Phi-3-mini-4k-instruct",
    "Qwen1.5-72B-Chat": "Qwen1.5-72B-Chat",
    "Yi-6b-Chat": "Yi-6B-Chat",
    "c4ai-command-r-v01": "c4ai-command-r-v01",
}
TQA_FILES = {"GPT4": ("error_analysis/GPT4_errors.json", "GPT-4 (OpenAI API, 2023)"),
             "ChatGPT": ("error_analysis/ChatGPT_errors.json", "ChatGPT (gpt-3.5-turbo, 2023)")}

# Rows read by hand and left out although they pass the automatic checks:
# (short, path, row) -> why.  Filled after reading every kept row's ending.
HAND_EXCLUDED = {
    ("vcot", "data/human_annotation/aqua_rat_100.json", 97):
        "labelled correct (A), but the text computes 23 and calls option A) 15 'not the correct answer'",
    ("gsmplus", "results/gsm8k_results/gpt-3.5-turbo.json", 1277):
        "stops before any answer (last sentence only plans 40 - 16)",
    ("gsmplus", "results/gsm8k_results/gpt-3.5-turbo.json", 1018):
        "labelled incorrect, ends with 'approximately 59.94 minutes' for 60 (a rounding question)",
    ("tqa", "error_analysis/ChatGPT_errors.json", 41):
        "text is cut off inside a formula",
    ("tqa", "error_analysis/ChatGPT_errors.json", 30):
        "text is cut off inside a formula",
    ("tqa", "error_analysis/GPT4_errors.json", 35):
        "text is cut off mid-sentence",
}


# --------------------------------------------------------------------------
class Reader:
    def __init__(self, root: Path):
        self.root = root

    def raw(self, repo: str, path: str) -> bytes:
        name = repo.split("@")[0].replace("/", "+")
        gitdir = self.root / name / "repo"
        out = subprocess.run(["git", "--git-dir", str(gitdir), "show", f"{COMMITS[repo]}:{path}"],
                             check=True, capture_output=True)
        return out.stdout

    def json(self, repo: str, path: str):
        return json.loads(self.raw(repo, path).decode("utf-8"))

    def zip_json(self, repo: str, path: str):
        with zipfile.ZipFile(io.BytesIO(self.raw(repo, path))) as z:
            names = [n for n in z.namelist() if n.endswith(".json")]
            assert len(names) == 1, names
            return names[0], json.loads(z.read(names[0]).decode("utf-8"))


def src(repo, path, row, **extra):
    d = {"repo": repo.split("@")[0], "path": path, "commit": COMMITS[repo], "row": row}
    d.update(extra)
    return d


def num_ref(x) -> str:
    """A numeric reference written as the source's JSON writes it."""
    return json.dumps(x) if not isinstance(x, str) else x


# --------------------------------------------------------------------------
# label-consistency checks (documented in README.md, section heldout.jsonl)
# --------------------------------------------------------------------------
LETTER_PATS = [
    r"answer\s+is\s*:?\s*\(?\s*([A-J])\s*\)?(?![A-Za-z])",
    r"\(([A-J])\)",
    r"(?<![A-Za-z])([A-J])\)",
    r"(?:option|choice)\s*(?:is\s*)?:?\s*\(?([A-J])(?![A-Za-z])",
]


def stated_letter(sol: str):
    """The single option letter the last statement names, or None (none, or several)."""
    last = ff.last_statement(sol)
    letters = set()
    for p in LETTER_PATS:
        letters.update(re.findall(p, last))
    return letters.pop() if len(letters) == 1 else None


def close(a: Fraction, b: Fraction, rel: Fraction) -> bool:
    return abs(a - b) <= abs(b) * rel


class Stats:
    def __init__(self):
        self.skipped = Counter()
        self.seen = Counter()

    def skip(self, short, why):
        self.skipped[(short, why)] += 1


def consistent(c: dict, stats: Stats, short: str) -> bool:
    sol, ref, label = c["solution"], c["reference"], c["label"]
    key = (short, c["source"]["path"], c["source"]["row"])
    if key in HAND_EXCLUDED:
        stats.skip(short, "left out by hand (HAND_EXCLUDED)")
        return False
    if len(sol) > MAX_CHARS:
        stats.skip(short, "solution over 6,000 characters")
        return False
    if c["_mcq"]:
        letter = stated_letter(sol)
        if letter is None:
            stats.skip(short, "last line names no single option letter")
            return False
        if (letter == ref) != (label == "correct"):
            stats.skip(short, f"{label} label, last line names option {letter} (reference {ref})")
            return False
        return True
    last = ff.last_statement(sol)
    if not re.search(r"\d", last) and not re.search(r"\$|\\\(|\\frac|\\sqrt", last):
        stats.skip(short, "last line states no value (cut off or trailing text)")
        return False
    if label == "correct":
        if not ff.supports_correct(sol, ref):
            stats.skip(short, "correct label, last line states another answer")
            return False
        return True
    # incorrect: drop when the last line states the reference, or mentions it at all,
    # or (TheoremQA, graded with a tolerance) states a value within 2% of it
    if ff.states_reference(sol, ref):
        stats.skip(short, "incorrect label, last line states the reference")
        return False
    if ff.mentions(last, ref):
        stats.skip(short, "incorrect label, last line mentions the reference (ambiguous)")
        return False
    v = ff.ref_value(ref)
    if short == "tqa" and v is not None and any(close(x, v, Fraction(2, 100)) for x in ff.values(last)):
        stats.skip(short, "incorrect label, last line within 2% of the reference (ambiguous)")
        return False
    return True


# --------------------------------------------------------------------------
# sources
# --------------------------------------------------------------------------
def vcot(reader: Reader, stats: Stats) -> dict:
    repo = "lz1oceani/verify_cot"
    pools = {}
    for task, dataset in VCOT_TASKS.items():
        path = f"data/human_annotation/{task}.json"
        rows = reader.json(repo, path)
        pool = []
        for i, r in enumerate(rows):
            stats.seen["vcot"] += 1
            correct, flag = bool(r["correct"]), int(r["flag"])
            if correct and flag == 1:
                label, by = "correct", "human"
            elif correct and flag == 0:
                label, by = "correct", "dataset-automatic"
            elif not correct and flag == 0:
                label, by = "incorrect", "human"
            else:
                stats.skip("vcot", "annotator valid (flag 1) but final answer wrong")
                continue
            problem = r["question"]
            if task == "aqua_rat_100":
                choices = r["choices"]
                problem = problem + "\nAnswer Choices: " + " ".join(
                    f"({chr(65 + k)}) {ch}" for k, ch in enumerate(choices))
            c = {"problem": problem, "solution": r["answer"], "reference": num_ref(r["final_answer"]),
                 "label": label, "label_by": by, "model": "ChatGPT (gpt-3.5-turbo, 2023; Natural Program prompt)",
                 "dataset": dataset, "source": src(repo, path, i), "_mcq": task == "aqua_rat_100"}
            if consistent(c, stats, "vcot"):
                pool.append(c)
        pools[("vcot", task)] = pool
    return pools


def ps(reader: Reader, stats: Stats) -> dict:
    repo = "AGI-Edgerunners/Plan-and-Solve-Prompting"
    pools = {}
    for key, (path, dataset) in PS_FILES.items():
        rows = reader.json(repo, path)
        pool = []
        for i, r in enumerate(rows):
            stats.seen["ps"] += 1
            if r.get("pred") is None:
                stats.skip("ps", "no prediction recorded")
                continue
            c = {"problem": r["question"], "solution": r["chain-of-thought"], "reference": num_ref(r["answer"]),
                 "label": "correct" if r["ans"] else "incorrect", "label_by": "dataset-automatic",
                 "model": "text-davinci-003 (Plan-and-Solve PS+ prompt, 2023)", "dataset": dataset,
                 "source": src(repo, path, i, uuid=r["ID"]), "_mcq": dataset == "AQuA"}
            if consistent(c, stats, "ps"):
                pool.append(c)
        pools[("ps", key)] = pool
    return pools


def gsmplus(reader: Reader, stats: Stats) -> dict:
    repo = "qtli/GSM-Plus"
    pools = {}
    for key, model in GSMPLUS_MODELS.items():
        path = f"results/gsm8k_results/{key}.json"
        rows = reader.json(repo, path)
        pool = []
        for i, r in enumerate(rows):
            stats.seen["gsmplus"] += 1
            if not re.search(r"\d", r["gold"]):  # a few GSM8K answers are stored as "#### None"
                stats.skip("gsmplus", "reference stored as 'None' in the source file")
                continue
            t = r["model_prediction"]
            if "####" not in t and len(t) < 350 and not re.search(r"(^|[.\n]\s*)(Therefore|So),?\s", t):
                # gpt-3.5-turbo often answered with only its first step ("First, let's ...")
                stats.skip("gsmplus", "short reply without '####' or a concluding sentence (stops after a first step)")
                continue
            c = {"problem": r["question"], "solution": r["model_prediction"], "reference": num_ref(r["gold"]),
                 "label": "correct" if r["result"] else "incorrect", "label_by": "dataset-automatic",
                 "model": model, "dataset": "GSM8K", "source": src(repo, path, i), "_mcq": False}
            if consistent(c, stats, "gsmplus"):
                pool.append(c)
        pools[("gsmplus", key)] = pool
    return pools


def mmlu_problem(r) -> str:
    return r["question"] + "\nOptions:\n" + "\n".join(
        f"({chr(65 + k)}) {o}" for k, o in enumerate(r["options"]))


def mmlupro(reader: Reader, stats: Stats) -> dict:
    pools = {}
    jobs = [("gpt-4o", "TIGER-AI-Lab/MMLU-Pro@gpt4o", "eval_results/gpt4o/math_result.json", None)]
    for stem, model in MMLU_ZIPS.items():
        jobs.append((model, "TIGER-AI-Lab/MMLU-Pro", f"eval_results/model_outputs_{stem}_5shots.zip", stem))
    for model, repo, path, stem in jobs:
        if stem is None:
            rows, member = reader.json(repo, path), None
        else:
            member, rows = reader.zip_json(repo, path)
        pool = []
        for i, r in enumerate(rows):
            if r.get("category") != "math":
                continue
            stats.seen["mmlupro"] += 1
            if r.get("pred") is None:
                stats.skip("mmlupro", "no prediction extracted by the source (pred null)")
                continue
            # the field holding the model text differs between the source files
            sol = next(r[k] for k in ("response", "generated_text", "model_outputs") if k in r)
            if not isinstance(sol, str):
                stats.skip("mmlupro", "model text is not a single string")
                continue
            extra = {"question_id": r["question_id"]}
            if member:
                extra["member"] = member
            c = {"problem": mmlu_problem(r), "solution": sol, "reference": r["answer"],
                 "label": "correct" if r["pred"] == r["answer"] else "incorrect",
                 "label_by": "dataset-automatic", "model": model + " (MMLU-Pro 5-shot CoT, 2024)",
                 "dataset": f"MMLU-Pro math ({r['src']})", "source": src(repo, path, i, **extra), "_mcq": True}
            if consistent(c, stats, "mmlupro"):
                pool.append(c)
        pools[("mmlupro", model)] = pool
    return pools


def tqa(reader: Reader, stats: Stats) -> dict:
    repo = "wenhuchen/TheoremQA"
    test = {r["id"]: r for r in reader.json(repo, "theoremqa_test.json")}
    pools = {}
    for key, (path, model) in TQA_FILES.items():
        rows = reader.json(repo, path)
        pool = []
        for i, r in enumerate(rows):
            if key == "ChatGPT" and r.get("source") != "ChatGPT":
                continue
            stats.seen["tqa"] += 1
            t = test.get(r["id"])
            if t is None:
                stats.skip("tqa", "id not in theoremqa_test.json")
                continue
            if t["field"] != "Math" or t["Answer_type"] not in ("integer", "float") or t["Picture"] not in (None, "None"):
                stats.skip("tqa", "not a text-only Math question with a numeric answer")
                continue
            c = {"problem": r["question"], "solution": r["rationale"], "reference": num_ref(t["Answer"]),
                 "label": "incorrect", "label_by": "dataset-automatic", "model": model,
                 "dataset": "TheoremQA (Math)", "source": src(repo, path, i, uuid=r["id"]), "_mcq": False}
            if consistent(c, stats, "tqa"):
                pool.append(c)
        pools[("tqa", key)] = pool
    return pools


# --------------------------------------------------------------------------
def style_key(c):
    return bs.ending_style(c["solution"])


def draw(pool, label, by, n, seed):
    cands = [c for c in pool if c["label"] == label and c["label_by"] == by]
    return ff.spread_sample(cands, n, random.Random(seed), key=style_key)


def select(pools: dict, stats: Stats) -> list:
    out = []
    for (short, sub), pool in pools.items():
        seed = f"heldout-{short}-{sub}"
        if short == "vcot":
            for (label, by), n in QUOTA[(short, sub)].items():
                out += draw(pool, label, by, n, seed + f"-{label}-{by}")
        elif short in ("ps", "gsmplus"):
            nc, ni = QUOTA[(short, sub)]
            out += draw(pool, "correct", "dataset-automatic", nc, seed + "-correct")
            out += draw(pool, "incorrect", "dataset-automatic", ni, seed + "-incorrect")
        elif short == "mmlupro":
            nc, ni = MMLU_PER_MODEL
            out += draw(pool, "correct", "dataset-automatic", nc, seed + "-correct")
            out += draw(pool, "incorrect", "dataset-automatic", ni, seed + "-incorrect")
        elif short == "tqa":
            out += draw(pool, "incorrect", "dataset-automatic", QUOTA[(short, sub)], seed)
    return out


def existing_texts() -> tuple[set, set]:
    ids, sols = set(), set()
    for name in ("solutions.jsonl", "freeform.jsonl"):
        for line in (HERE / name).read_text(encoding="utf-8").splitlines():
            if line.strip():
                r = json.loads(line)
                ids.add(r["id"])
                sols.add(r["solution"])
    return ids, sols


def build(reader: Reader):
    stats = Stats()
    pools = {}
    for fn in (vcot, ps, gsmplus, mmlupro, tqa):
        pools.update(fn(reader, stats))
    _, old_sols = existing_texts()
    for key, pool in pools.items():
        kept = []
        for c in pool:
            if c["solution"] in old_sols:
                stats.skip(key[0], "solution text already in solutions.jsonl / freeform.jsonl")
            else:
                kept.append(c)
        pools[key] = kept
    rows = select(pools, stats)
    counters = Counter()
    out = []
    order = ["vcot", "ps", "gsmplus", "mmlupro", "tqa"]
    rows.sort(key=lambda c: (order.index(SHORT[c["source"]["repo"]]),
                             c["source"]["path"], c["source"]["row"]))
    for c in rows:
        short = SHORT[c["source"]["repo"]]
        row = {"id": f"{short}-{counters[short]}"}
        counters[short] += 1
        row.update({k: v for k, v in c.items() if not k.startswith("_")})
        out.append(row)
    return out, stats, pools


SHORT = {"lz1oceani/verify_cot": "vcot", "AGI-Edgerunners/Plan-and-Solve-Prompting": "ps",
         "qtli/GSM-Plus": "gsmplus", "TIGER-AI-Lab/MMLU-Pro": "mmlupro", "wenhuchen/TheoremQA": "tqa"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mirror-root", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=HERE / "heldout.jsonl")
    args = ap.parse_args()
    rows, stats, pools = build(Reader(args.mirror_root))
    with open(args.out, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} rows to {args.out}")
    for k, v in sorted(stats.seen.items()):
        print("seen", k, v)
    for (short, why), n in sorted(stats.skipped.items()):
        print(f"skipped {short}: {why}: {n}")
    for key, pool in pools.items():
        print("pool", key, Counter((c["label"], c["label_by"]) for c in pool))


if __name__ == "__main__":
    main()
