"""Rebuild frozen.jsonl from the public source files (provenance record).

Not used by any test.  frozen.jsonl is a FROZEN held-out set of competition-level
(olympiad) problems: it was built, and measured once, before the grader's rules for
prose references, yes/no conclusions and multi-value answers were written, and it is
never used to develop them.  Like the other build_*.py scripts it reads every source
file with ``git --git-dir=<root>/<owner>+<name>/repo show <commit>:<path>``; no
solution text is edited (a solution is always the source's text exactly as stored,
ProcessBench's paragraphs joined with a blank line as for freeform.jsonl's `pbench`).

    python build_frozen.py --mirror-root /work/.mirror --out frozen.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.dont_write_bytecode = True  # importing the sibling build script must not leave __pycache__ here
sys.path.insert(0, str(HERE))
import build_freeform as ff  # noqa: E402  (spread_sample and Stats only; its main() is not run)

MAX_CHARS = 8000

COMMITS = {
    # ProcessBench (Qwen team, ACL 2025), the official repository, before the data moved to Hugging Face
    # (606615c): expert paragraph-level labels of 8 open models' solutions.
    "QwenLM/ProcessBench": "2f2fd8ae590aeb949f7be265478b05280f93db68",
    # Omni-MATH-Rule: the rule-gradable part of Omni-MATH (problem, answer) and Qwen2.5-Math's copy of the
    # OlympiadBench OE_TO_maths_en_COMP test set (question, final_answer): the references.
    "KbsdJames/omni-math-rule": "bda09972374225ab2186582615307d909965b864",
    # Omni-MATH: the authors' GPT-4o-judged example outputs of two models (100 problems each), with the
    # full Omni-MATH record (problem, answer) in `original_json`.
    "KbsdJames/Omni-MATH": "5aac08bc8ebeef5511e244c094194321209550af",
}

PB_FILES = {"pbolym": "dataset/olympiadbench.json", "pbomni": "dataset/omnimath.json"}
OMNI_RULE = "omni_math_rule.jsonl"
OLYMPIAD_TEST = "evaluation/data/olympiadbench/test.jsonl"
OMNI_EXAMPLES = {
    "internlm2-math-plus-mixtral8x22b": "GPT_eval/examples/internlm2-math-plus-mixtral8x22b_gpteval.jsonl",
    "Meta-Llama-3.1-70B-Instruct": "GPT_eval/examples/meta_llama_3-1_70b_instruct_gpteval.jsonl",
}

# rows per ProcessBench subset and (label, label_by); drawn with ff.spread_sample (seeded shuffle,
# round-robin over the generating models). Omni-MATH problems whose reference comes from the examples
# file (prose answers the rule subset lacks) are all kept on top of these quotas.
QUOTA = {
    ("correct", "human"): 75,
    ("correct", "dataset-automatic"): 15,
    ("incorrect", "human"): 50,
}
# Omni-MATH's own example outputs: every GPT-4o "TRUE" row, and up to this many "FALSE" rows that state an answer
OMNIJUDGE_INCORRECT = 50


def norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def spelling(answer: str) -> str:
    """A spelling-only form for the label-consistency check (not the grader's): no spaces, `$`,
    `\\left`/`\\right`, `\\dfrac`/`\\tfrac` written `\\frac`."""
    answer = re.sub(r"\\left|\\right|\$|\s|\\[,;!]", "", answer)
    return re.sub(r"\\[dt]frac", r"\\frac", answer)


def last_boxed(text: str) -> str | None:
    found = None
    for match in re.finditer(r"\\boxed\s*\{", text):
        depth, start = 1, match.end()
        for pos in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[pos], 0)
            if depth == 0:
                found = text[start:pos]
                break
    return found


class Reader:
    def __init__(self, root: Path):
        self.root = root

    def raw(self, repo: str, path: str) -> bytes:
        gitdir = self.root / repo.replace("/", "+") / "repo"
        return subprocess.run(["git", "--git-dir", str(gitdir), "show", f"{COMMITS[repo]}:{path}"],
                              check=True, capture_output=True).stdout

    def jsonl(self, repo: str, path: str) -> list:
        return [json.loads(line) for line in self.raw(repo, path).decode("utf-8").splitlines() if line.strip()]


def src(repo, path, row, **extra):
    d = {"repo": repo, "path": path, "commit": COMMITS[repo], "row": row}
    d.update(extra)
    return d


class Stats(ff.Stats):
    """build_freeform's skip counter, and how many rows of each source were read."""

    def __init__(self):
        super().__init__()
        self.seen = Counter()


def references(reader: Reader) -> dict:
    """Whitespace-normalised problem text -> (reference string, its source record)."""
    refs = {}
    for i, r in enumerate(reader.jsonl("KbsdJames/omni-math-rule", OLYMPIAD_TEST)):
        answer = r["final_answer"]
        # a list of one string ("$6764$,$10945$" for several values), joined with ", " if it ever has more
        reference = answer[0] if len(answer) == 1 else ", ".join(answer)
        refs[norm(r["question"])] = (reference, src("KbsdJames/omni-math-rule", OLYMPIAD_TEST, i, id=r["id"]))
    for i, r in enumerate(reader.jsonl("KbsdJames/omni-math-rule", OMNI_RULE)):
        refs.setdefault(norm(r["problem"]), (r["answer"], src("KbsdJames/omni-math-rule", OMNI_RULE, i)))
    for model, path in OMNI_EXAMPLES.items():
        for i, r in enumerate(reader.jsonl("KbsdJames/Omni-MATH", path)):
            original = json.loads(r["original_json"])
            refs.setdefault(norm(original["problem"]),
                            (original["answer"], src("KbsdJames/Omni-MATH", path, i, field="original_json.answer")))
    return refs


def processbench(reader: Reader, refs: dict, stats: Stats) -> dict:
    pools = {}
    for short, path in PB_FILES.items():
        pool = []
        for i, r in enumerate(json.loads(reader.raw("QwenLM/ProcessBench", path))):
            stats.seen[short] += 1
            found = refs.get(norm(r["problem"]))
            if found is None:
                stats.skip(short, "no reference answer for the problem in any stored file")
                continue
            reference, ref_source = found
            solution = "\n\n".join(r["steps"])
            if len(solution) > MAX_CHARS:
                stats.skip(short, f"over {MAX_CHARS} characters")
                continue
            if r["final_answer_correct"]:
                label, by = "correct", "human" if r["label"] == -1 else "dataset-automatic"
            else:
                label, by = "incorrect", "human"
                boxed = last_boxed(solution)
                if boxed is not None and spelling(boxed) == spelling(reference):
                    stats.skip(short, "labelled incorrect but its last \\boxed{} is the reference as written")
                    continue
            dataset = "OlympiadBench (OE_TO_maths_en_COMP)" if short == "pbolym" else "Omni-MATH"
            pool.append({"problem": r["problem"], "solution": solution, "reference": reference, "label": label,
                         "label_by": by, "model": r["generator"], "dataset": dataset,
                         "source": src("QwenLM/ProcessBench", path, i, uuid=r["id"], reference=ref_source),
                         "_prose_reference": ref_source["repo"] == "KbsdJames/Omni-MATH", "_short": short})
        pools[short] = pool
    return pools


def omnijudge(reader: Reader, stats: Stats) -> list:
    pool = []
    for model, path in OMNI_EXAMPLES.items():
        for i, r in enumerate(reader.jsonl("KbsdJames/Omni-MATH", path)):
            stats.seen["omnijudge"] += 1
            original = json.loads(r["original_json"])
            verdict = re.search(r"## Equivalence Judgement\s*\n\s*(TRUE|FALSE)", r["gen"])
            stated = re.search(r"## Student Final Answer\s*\n(.*)", r["gen"])
            if verdict is None or stated is None:
                stats.skip("omnijudge", "judge output has no verdict or no student answer")
                continue
            if re.fullmatch(r"\s*\\text\{Proven\}\s*", original["answer"]):
                stats.skip("omnijudge", "proof problem (reference `\\text{Proven}`)")
                continue
            correct = verdict.group(1) == "TRUE"
            if not correct and stated.group(1).strip() in ("None", ""):
                stats.skip("omnijudge", "judged FALSE because no final answer was found (cut-off output)")
                continue
            if len(original["model_generation"]) > MAX_CHARS:
                stats.skip("omnijudge", f"over {MAX_CHARS} characters")
                continue
            pool.append({"problem": original["problem"], "solution": original["model_generation"],
                         "reference": original["answer"], "label": "correct" if correct else "incorrect",
                         "label_by": "dataset-automatic", "model": model, "dataset": "Omni-MATH",
                         "source": src("KbsdJames/Omni-MATH", path, i, uuid=r["uuid"],
                                       field="original_json.model_generation"), "_short": "omnijudge"})
    return pool


def existing_solutions() -> set:
    sols = set()
    for name in ("solutions.jsonl", "freeform.jsonl", "heldout.jsonl"):
        for line in (HERE / name).read_text(encoding="utf-8").splitlines():
            if line.strip():
                sols.add(json.loads(line)["solution"])
    return sols


def by_model(c):
    return c["model"]


def build(reader: Reader):
    stats = Stats()
    refs = references(reader)
    pools = processbench(reader, refs, stats)
    pools["omnijudge"] = omnijudge(reader, stats)
    old = existing_solutions()
    for short, pool in pools.items():
        for c in pool:
            if c["solution"] in old:
                stats.skip(short, "solution text already in solutions/freeform/heldout.jsonl")
        pools[short] = [c for c in pool if c["solution"] not in old]
    rows = []
    for short in PB_FILES:
        prose = [c for c in pools[short] if c["_prose_reference"]]
        rest = [c for c in pools[short] if not c["_prose_reference"]]
        rows += prose
        for (label, by), n in QUOTA.items():
            cands = [c for c in rest if c["label"] == label and c["label_by"] == by]
            rows += ff.spread_sample(cands, n, random.Random(f"frozen-{short}-{label}-{by}"), key=by_model)
    judged = pools["omnijudge"]
    rows += [c for c in judged if c["label"] == "correct"]
    rows += ff.spread_sample([c for c in judged if c["label"] == "incorrect"], OMNIJUDGE_INCORRECT,
                             random.Random("frozen-omnijudge-incorrect"), key=by_model)
    order = [*PB_FILES, "omnijudge"]
    rows.sort(key=lambda c: (order.index(c["_short"]), c["source"]["path"], c["source"]["row"]))
    counters = Counter()
    out = []
    for c in rows:
        row = {"id": f"{c['_short']}-{counters[c['_short']]}"}
        counters[c["_short"]] += 1
        row.update({k: v for k, v in c.items() if not k.startswith("_")})
        out.append(row)
    return out, stats, pools


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mirror-root", type=Path, required=True, help="folder of <owner>+<name>/repo bare clones")
    ap.add_argument("--out", type=Path, default=HERE / "frozen.jsonl")
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
    for short, pool in pools.items():
        print("pool", short, sorted(Counter((c["label"], c["label_by"]) for c in pool).items()))
    print("rows", sorted(Counter((r["id"].split("-")[0], r["label"], r["label_by"]) for r in rows).items()))


if __name__ == "__main__":
    main()
