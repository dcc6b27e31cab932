"""Rebuild solutions.jsonl from the public source files (provenance record).

Not used by any test.  It documents exactly how every row of solutions.jsonl was
selected.  It reads each source file with ``git --git-dir=<mirror> show
<commit>:<path>``, so it needs local bare clones of the six source repositories
(pass their parent folder with --mirror-root; the layout expected is
``<root>/<owner>+<name>/repo``).  No solution text is edited: solutions are the
source strings, or the source's step list joined with "\\n".

    python build_solutions.py --mirror-root /work/.mirror --out solutions.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
from collections import defaultdict
from pathlib import Path

SEED = 20240601
MAX_CHARS = 6000

COMMITS = {
    "GAIR-NLP/ReasonEval": "6c91c7a16e2b0e12ebc89685207cd091fb411478",
    "WHGTyen/BIG-Bench-Mistake": "270683a4ecce6f3b22c4ab28a204ab8fa09f2517",
    "dvlab-research/MR-GSM8K": "3f666d60dd5f2fe31d619c528076bac54f4a13b7",
    "openai/grade-school-math": "3101c7d5072418e28b9008a6636bde82a006892c",
    "iiis-ai/cumulative-reasoning": "26c939b54b72f9a083a7594347d665c660a3023c",
    "Tebmer/Rereading-LLM-Reasoning": "0dbad50be663c2ea8c46334c2f9a086980d3e318",
}

# PRM800K solutions (via ReasonEval) whose final answer the human labeller
# rated >= 0 but which do NOT match the MATH ground truth (checked by hand):
# row -> reason.  They are left out; see README.md.
PRM_EXCLUDED = {
    45: "answer 9, ground truth 10 (p_i(1) sum is 5+1+2+2+0=10)",
    109: "answer 576, ground truth 144",
    153: "answer 39.6 (a wage), ground truth \\text{Navin} (a name)",
    172: "answer 49, ground truth 121 (fifth square of a prime)",
}

# cumulative-reasoning rows whose GPT-4-judge label is contradicted by the
# ground truth (checked by hand): row -> reason.  Left out; see README.md.
CR_EXCLUDED = {
    173: "judged Correct, but 0.35 != 9/100",
    3: "judged Wrong, but 65/169 = 5/13 (unreduced)",
    388: "judged Wrong, but binom(7,3)*binom(4,2) = 210 (unevaluated)",
    146: "judged Wrong, but 4!*binom(5,2)*2! = 480 (unevaluated)",
}


def ending_style(sol: str) -> str:
    """Classify a solution by its last non-empty line (rule documented in README)."""
    lines = [l for l in sol.split("\n") if l.strip()]
    if not lines:
        return "empty"
    last = lines[-1].strip()
    prev = lines[-2].strip() if len(lines) > 1 else ""
    if prev == "# Answer":
        return "prm_answer_heading"
    if "####" in last:
        return "gsm8k_hashes"
    if last.endswith("\\]") or last == "$$" or (last.endswith("$$") and last.count("$$") == 1):
        text = "\n".join(lines)
        start = max(text.rfind("\\["), text[:-2].rfind("$$"))
        block = text[start:] if start >= 0 else last
        return "boxed_in_closing_display" if "\\boxed" in block else "closing_display_math"
    if "\\boxed" in last or "\\fbox" in last:
        return "boxed"
    if re.search(r"answer is", last, re.I):
        return "the_answer_is"
    if re.match(r"^\**\s*(final answer|answer|a)\s*:", last, re.I):
        return "answer_label"
    if "**" in last:
        return "bold"
    return "plain_sentence"


class Reader:
    def __init__(self, root: Path):
        self.root = root

    def text(self, repo: str, path: str) -> str:
        git_dir = self.root / repo.replace("/", "+") / "repo"
        out = subprocess.run(
            ["git", f"--git-dir={git_dir}", "show", f"{COMMITS[repo]}:{path}"],
            check=True, capture_output=True,
        )
        return out.stdout.decode("utf-8")

    def jsonl(self, repo: str, path: str) -> list:
        return [json.loads(l) for l in self.text(repo, path).splitlines() if l.strip()]

    def json(self, repo: str, path: str):
        return json.loads(self.text(repo, path))


def boxed_agrees(solution: str, recorded) -> bool:
    """True when the Re2 scorer's recorded answer is the first number of the
    solution's last \\boxed{...} (the scorer's own first extraction rule)."""
    boxed = re.findall(r"boxed\{(.*?)\}", solution)
    if not boxed or recorded is None:
        return False
    m = re.search(r"[\-+]?\d*[\.,/]?\d+", boxed[-1])
    try:
        return m is not None and float(m.group().replace(",", "")) == float(recorded)
    except ValueError:
        return False


def stated_answer_matches(solution: str, reference: str) -> bool:
    """MR-GSM8K consistency check: the last "The answer is: X" (else "#### X")
    number in the solution equals the numeric reference."""
    def num(t):
        try:
            return float(t.replace(",", "").replace("$", "").rstrip("."))
        except ValueError:
            return None
    found = (re.findall(r"answer is:?\s*\$?(-?[\d,\.]+)", solution)
             or re.findall(r"####\s*\$?(-?[\d,\.]+)", solution))
    return bool(found) and num(found[-1]) is not None and num(found[-1]) == num(reference)


def src(repo, path, row, field=None):
    s = {"repo": repo, "path": path, "commit": COMMITS[repo], "row": row}
    if field is not None:
        s["field"] = field
    return s


def spread_sample(cands: list, n: int, rng: random.Random) -> list:
    """Seeded sample of n candidates, round-robin over ending styles."""
    groups = defaultdict(list)
    for c in cands:
        groups[ending_style(c["solution"])].append(c)
    for g in groups.values():
        rng.shuffle(g)
    keys = sorted(groups)
    rng.shuffle(keys)
    out = []
    while len(out) < n and any(groups.values()):
        for k in keys:
            if groups[k] and len(out) < n:
                out.append(groups[k].pop())
    return out


def build(reader: Reader) -> tuple[list, dict]:
    rows, dropped = [], defaultdict(int)  # dropped: rows left out, by reason

    def add(short, cands):
        for c in cands:
            if len(c["solution"]) > MAX_CHARS:
                dropped[f"{short}-over-{MAX_CHARS}-chars"] += 1
                continue
            rows.append(c)

    # 1. PRM800K GPT-4 solutions with human step ratings, via ReasonEval.
    repo, path = "GAIR-NLP/ReasonEval", "dataset/mr-math_redundant_errors.json"
    cands = []
    for i, x in enumerate(reader.jsonl(repo, path)):
        steps = [s[0] for s in x["model_output_step_format"]]
        if not steps[-1].startswith("# Answer"):
            continue  # prefix without a final answer: not a full solution
        if i in PRM_EXCLUDED:
            continue
        assert min(x["rating"]) >= 0
        cands.append(dict(problem=x["question"], solution="\n".join(steps),
                          reference=x["ground_truth_answer"], label="correct",
                          label_by="human", model="GPT-4 (PRM800K generator)",
                          dataset="MATH", source=src(repo, path, i)))
    add("prm800k", cands)

    # 2. Abel / WizardMath MATH solutions, human process labels (ReasonEval).
    path = "dataset/mr-math_invalid_errors.json"
    cands = []
    for i, x in enumerate(reader.jsonl(repo, path)):
        assert x["model_output_answer_correctness"] == "correct"
        human_ok = x["model_output_solution_correctness"] == "correct"
        cands.append(dict(problem=x["question"], solution=x["model_output"],
                          reference=x["ground_truth_answer"], label="correct",
                          label_by="human" if human_ok else "dataset-automatic",
                          model=x["generator"], dataset="MATH",
                          source=src(repo, path, i)))
    add("mrmath", cands)

    # 3. BIG-Bench Mistake, multistep arithmetic (PaLM 2-L), human mistake labels.
    repo, path = "WHGTyen/BIG-Bench-Mistake", "multistep_arithmetic.jsonl"
    good, bad = [], []
    for i, x in enumerate(reader.jsonl(repo, path)):
        c = dict(problem=x["input"], solution="\n".join(x["steps"]),
                 reference=x["target"], label_by="human", model="PaLM 2-L (Unicorn)",
                 dataset="BIG-Bench multistep_arithmetic", source=src(repo, path, i))
        if x["mistake_index"] is None and x["answer"] == x["target"]:
            good.append(dict(c, label="correct"))
        elif x["mistake_index"] is not None and x["answer"] != x["target"]:
            bad.append(dict(c, label="incorrect"))
    rng = random.Random(f"{SEED}-bbm")
    rng.shuffle(bad)
    add("bbm", good + bad[:60])

    # 4. MR-GSM8K, human-labelled solutions present in the gpt4-grading files.
    repo = "dvlab-research/MR-GSM8K"
    seen, wrong, right = set(), [], []
    for name in ["Claude", "GPT3_5", "llama2_70b", "mammoth_70B", "metamath_70B",
                 "wizardmath_70B"]:
        path = f"eval_results/gpt4-grading/{name}_eval_results.json"
        for i, x in enumerate(reader.json(repo, path)):
            if x["uuid"] in seen:
                continue
            seen.add(x["uuid"])
            if x["question_type"] != "original":
                # POT = code solutions; "reversed" rows in these files carry
                # broken ground_truth_answer fields ("Let's think step by step.")
                continue
            c = dict(problem=x["question"], solution="\n".join(x["model_output_steps"]),
                     reference=str(x["ground_truth_answer"]), model="unknown",
                     dataset="GSM8K",
                     source=dict(src(repo, path, i), uuid=x["uuid"]))
            if stated_answer_matches(c["solution"], c["reference"]) != (
                    x["model_output_answer_correctness"] == "correct"):
                dropped["mrgsm8k-inconsistent"] += 1
                continue  # stated final answer disagrees with the dataset's flag
            if x["model_output_answer_correctness"] == "wrong":
                assert x["model_output_solution_correctness"] == "wrong"
                wrong.append(dict(c, label="incorrect", label_by="human"))
            else:
                right.append(dict(c, label="correct", label_by="dataset-automatic"))
    add("mrgsm8k", right + spread_sample(wrong, 100, random.Random(f"{SEED}-mrgsm8k")))

    # 5. OpenAI GSM8K example model solutions (GPT-3 6B/175B), is_correct flag.
    repo, path = "openai/grade-school-math", "grade_school_math/data/example_model_solutions.jsonl"
    variants = {"6b_finetuning": "GPT-3 6B finetuned", "6b_verification": "GPT-3 6B + verifier",
                "175b_finetuning": "GPT-3 175B finetuned",
                "175b_verification": "GPT-3 175B + verifier"}
    data = reader.jsonl(repo, path)
    rng = random.Random(f"{SEED}-gsm8k-openai")
    idx = list(range(len(data)))
    rng.shuffle(idx)
    pos, neg = [], []
    for i in idx:
        x = data[i]
        k = rng.choice(sorted(variants))
        ref = x["ground_truth"].strip().split("\n")[-1]
        assert ref.startswith("A: ")
        c = dict(problem=x["question"], solution=x[k]["solution"], reference=ref[3:].strip(),
                 label="correct" if x[k]["is_correct"] else "incorrect",
                 label_by="dataset-automatic", model=variants[k], dataset="GSM8K",
                 source=src(repo, path, i, k))
        (pos if x[k]["is_correct"] else neg).append(c)
    add("gsm8k-openai", pos[:40] + neg[:40])

    # 6. GPT-4 complex-CoT on MATH (cumulative-reasoning logs), GPT-4-judged.
    repo, path = "iiis-ai/cumulative-reasoning", "MATH/results/results-math-complex-cot-gpt-4.jsonl"
    pos, neg = [], []
    for i, x in enumerate(reader.jsonl(repo, path)):
        # The judge saw a separate "final_answer" generation, not the solution:
        # keep only rows whose solution text itself states that answer, i.e. the
        # last \boxed{...} equals it, or it occurs verbatim in the last non-empty line.
        fa = x["final_answer"].strip()
        boxed = re.findall(r"\\boxed\{(.*)\}", x["final_solution"])
        last_line = [l for l in x["final_solution"].split("\n") if l.strip()][-1]
        if not fa or not ((boxed and boxed[-1].strip() == fa) or fa in last_line):
            continue
        if x["correctness"] not in ("Correct", "Wrong") or i in CR_EXCLUDED:
            continue
        c = dict(problem=x["problem_content"], solution=x["final_solution"],
                 reference=x["ground_truth_answer"],
                 label="correct" if x["correctness"] == "Correct" else "incorrect",
                 label_by="dataset-automatic", model="GPT-4 (OpenAI API, 2023)",
                 dataset="MATH", source=src(repo, path, i))
        (pos if c["label"] == "correct" else neg).append(c)
    rng = random.Random(f"{SEED}-cr-gpt4")
    add("cr-gpt4", spread_sample(pos, 50, rng) + spread_sample(neg, 50, rng))

    # 7. Re2 repo baselines on GSM8K (GPT-3.5-turbo, text-davinci-003, GPT-4o-mini).
    repo = "Tebmer/Rereading-LLM-Reasoning"
    files = {
        "results/gsm_topp1.0_temp0.0_majority1_20230828_1157.jsonl": "gpt-3.5-turbo",
        "results/gsm_topp1.0_temp0.0_majority1_20230828_141934.jsonl": "text-davinci-003",
        "results/gsm_gpt-4o-mini-2024-07-18_topp1.0_temp0.0_majority1_readtimes1_20240926_221724.jsonl":
            "gpt-4o-mini-2024-07-18",
    }
    for path, model in files.items():
        pos, neg = [], []
        for i, x in enumerate(reader.jsonl(repo, path)):
            v = x.get("vanilla")
            if not v or not v.get("generation") or not isinstance(v["generation"][0], str):
                continue
            if v["score"] != 1 and not boxed_agrees(v["generation"][0], v.get("answer")):
                continue  # "incorrect" only where the grader read a \boxed answer
            c = dict(problem=x["input"], solution=v["generation"][0], reference=str(x["target"]),
                     label="correct" if v["score"] == 1 else "incorrect",
                     label_by="dataset-automatic", model=model, dataset="GSM8K",
                     source=src(repo, path, i, "vanilla"))
            (pos if v["score"] == 1 else neg).append(c)
        rng = random.Random(f"{SEED}-re2-{model}")
        add("re2-" + model, spread_sample(pos, 20, rng) + spread_sample(neg, 20, rng))

    short = {"GAIR-NLP/ReasonEval": None, "WHGTyen/BIG-Bench-Mistake": "bbm",
             "dvlab-research/MR-GSM8K": "mrgsm8k", "openai/grade-school-math": "gsm8k-openai",
             "iiis-ai/cumulative-reasoning": "cr-gpt4", "Tebmer/Rereading-LLM-Reasoning": "re2"}
    counters, out = defaultdict(int), []
    for r in rows:
        s = short[r["source"]["repo"]]
        if s is None:
            s = "prm800k" if "redundant" in r["source"]["path"] else "mrmath"
        r = {"id": f"{s}-{counters[s]}", **r}
        counters[s] += 1
        out.append(r)
    return out, dict(dropped)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mirror-root", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("solutions.jsonl"))
    args = ap.parse_args()
    rows, dropped = build(Reader(args.mirror_root))
    with args.out.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} rows; left out (reason: count): {dropped}")


if __name__ == "__main__":
    main()
