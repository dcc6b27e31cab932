"""Rebuild freeform.jsonl from the public source files (provenance record).

Not used by any test.  It documents exactly how every row of freeform.jsonl was
selected.  Like build_solutions.py it reads each source file with
``git --git-dir=<mirror> show <commit>:<path>``, so it needs local bare clones of
the source repositories (layout ``<root>/<owner>+<name>/repo``).  No solution text
is edited: a solution is the source string, or (ProcessBench only) the source's
paragraph list joined with "\\n\\n".

    python build_freeform.py --mirror-root /work/.mirror --out freeform.jsonl

MathVista's files are plain JSON; everything else is JSON / JSON lines too, so
only the standard library is needed.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
from collections import Counter, defaultdict
from fractions import Fraction
from pathlib import Path

SEED = 20240601
MAX_CHARS = 6000

COMMITS = {
    # ProcessBench data (Qwen/ProcessBench on Hugging Face) as committed in a
    # public GitHub fork of QwenLM/ProcessBench.
    "ljxzs-jjlzs/ProcessBench": "e607025b8d00e46838d5b84170c96529ba19c53d",
    # FELM: data/math.jsonl was deleted later; this is the last commit with it.
    "hkust-nlp/felm": "bdb2936639cb01c81ea60bc7926928c63ad2dd52",
    # RealCritic: mix_data at HEAD; the o1-mini output file was deleted in
    # f083c56, so it is read at the commit before that.
    "tangzhy/RealCritic": "0fbc04a15c127e405744105107f7a7a1d7bdb480",
    "tangzhy/RealCritic@o1": "149f6a31da19827746585626157af0a83f8cc2f1",
    "lupantech/MathVista": "53d525874bdde205128e6b160b7357a88277d479",
    # Reference answers for ProcessBench / FELM (joined on the problem text).
    "openai/grade-school-math": "3101c7d5072418e28b9008a6636bde82a006892c",
    "MDX-0003/cs336-assignment5": "a77b0ab9187babb8bda1011acd3e64173f3a015a",
}

# Rows read by hand and left out because the source label is contradicted by the
# text (or the text is ambiguous about the final answer): (source, path, row) -> why.
HAND_EXCLUDED = {
    ("rcritic", "outputs/o1-mini/critic_bench_cot/math_eval/math/test.jsonl", 57):
        "labelled incorrect, ends with the reference vector (2, -1, -5)",
    ("rcritic", "outputs/o1-mini/critic_bench_cot/math_eval/math/test.jsonl", 114):
        "labelled incorrect, ends with the reference matrix",
    ("rcritic", "outputs/o1-mini/critic_bench_cot/math_eval/math/test.jsonl", 117):
        "labelled incorrect, ends with the reference vector (-4/9, 1/9, 8/9)",
    ("rcritic", "outputs/o1-mini/critic_bench_cot/math_eval/math/test.jsonl", 159):
        "labelled incorrect, ends with the reference vector (-5, 2)",
    ("rcritic", "outputs/o1-mini/critic_bench_cot/math_eval/math/test.jsonl", 161):
        "labelled incorrect, ends with the reference factorisation in another factor order",
    ("rcritic", "outputs/o1-mini/critic_bench_cot/math_eval/math/test.jsonl", 220):
        "labelled incorrect, ends with 6! x 4! = 17,280 (the reference, unevaluated)",
    ("rcritic", "data/mix_data/math/test.jsonl", 11):
        "labelled correct (reference 6), but concludes only 'not divisible by 6'",
    ("rcritic", "data/mix_data/college_math/test.jsonl", 156):
        "labelled correct (reference 2), but ends with 1/sqrt(2)",
    ("felm", "data/math.jsonl", 103):
        "ambiguous: states x = 4 (the reference) and then ends with 4^x = 256",
}

GSM8K_TEST = "grade_school_math/data/test.jsonl"
MATH_TEST = "data/MATH/validation.jsonl"  # the 5,000 MATH test problems with answers


# --------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------
class Reader:
    def __init__(self, root: Path):
        self.root = root

    def text(self, repo: str, path: str) -> str:
        commit = COMMITS[repo]
        name = repo.split("@")[0].replace("/", "+")
        gitdir = self.root / name / "repo"
        out = subprocess.run(
            ["git", "--git-dir", str(gitdir), "show", f"{commit}:{path}"],
            check=True, capture_output=True,
        )
        return out.stdout.decode("utf-8")

    def jsonl(self, repo: str, path: str) -> list:
        return [json.loads(l) for l in self.text(repo, path).splitlines() if l.strip()]

    def json(self, repo: str, path: str):
        return json.loads(self.text(repo, path))


def ws(s: str) -> str:
    return re.sub(r"\s+", " ", s).strip()


# --------------------------------------------------------------------------
# ending style (rule documented in README.md, section freeform.jsonl)
# --------------------------------------------------------------------------
NUMBER_WORDS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
                "fifteen sixteen seventeen eighteen nineteen twenty").split()
ANSWER_LINE = re.compile(r"^[\s*#>\-]*(final\s+answer|answer)\s*\**\s*[:：]", re.I)
FINAL_ANSWER_ANYWHERE = re.compile(r"\bfinal\s+answer\s*\**\s*[:：]", re.I)
ANSWER_HEADING = re.compile(r"^[\s*#]*(final\s+answer|answer)\s*\**\s*[:：]?\s*\**\s*$", re.I)


def last_line(sol: str) -> str:
    lines = [l for l in sol.split("\n") if l.strip()]
    return lines[-1].strip() if lines else ""


def last_statement(sol: str) -> str:
    """The last non-empty line; when it closes a display block (\\] or $$), the whole block."""
    lines = [l.strip() for l in sol.split("\n") if l.strip()]
    if not lines:
        return ""
    last = lines[-1]
    for close, opener in (("\\]", "\\["), ("$$", "$$")):
        if last.endswith(close):
            inner = last[: -len(close)]
            if opener in inner:
                return last
            for j in range(len(lines) - 2, -1, -1):
                if opener in lines[j]:
                    return " ".join(lines[j:])
    return last


def prose_words(line: str) -> list:
    """Words of >= 2 letters outside $...$, \\(...\\), \\[...\\] and LaTeX commands."""
    t = re.sub(r"\$\$.*?\$\$|\$[^$]*\$|\\\(.*?\\\)|\\\[.*?\\\]", " ", line)
    t = re.sub(r"\\[A-Za-z]+(\{[^}]*\})?", " ", t)
    return re.findall(r"[A-Za-z]{2,}", t)


def ending_style(sol: str) -> str:
    lines = [l.strip() for l in sol.split("\n") if l.strip()]
    last = lines[-1] if lines else ""
    prev = lines[-2] if len(lines) > 1 else ""
    if last.endswith("\\]") or last.endswith("$$") or re.match(r"^\\end\{", last):
        return "closing_display"
    if ANSWER_LINE.search(last) or FINAL_ANSWER_ANYWHERE.search(last) or ANSWER_HEADING.match(prev):
        return "answer_line"
    if "**" in last:
        return "bold"
    has_value = bool(re.search(r"\d", last)) or bool(re.search(r"\$|\\\(|\\frac|\\sqrt|\\pi", last)) \
        or bool(re.search(r"\b(" + "|".join(NUMBER_WORDS) + r")\b", last, re.I))
    if prose_words(last) and has_value:
        return "concluding_sentence"
    return "other"


# --------------------------------------------------------------------------
# answer comparison for the label-consistency check
# --------------------------------------------------------------------------
NUM = r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+"


def clean(s: str) -> str:
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = s.replace("\\!", "").replace("\\,", "").replace("\\ ", " ").replace("\\;", "")
    s = s.replace("\\left", "").replace("\\right", "").replace("−", "-")
    s = re.sub(r"\\[bB]ig[lr]?", "", s)
    s = re.sub(r"\^\{?\\circ\}?|°|\\%|%|\\\$|\$|\*\*", "", s)
    s = s.replace("\\(", "").replace("\\)", "").replace("\\[", "").replace("\\]", "")
    return s


WORDS = {w: i for i, w in enumerate(NUMBER_WORDS)}


def values(s: str) -> list:
    """Numeric values written in s: \\frac{a}{b}, a/b, plain numbers (commas allowed), number words."""
    s = clean(s)
    out = [(m.start(), Fraction(WORDS[m.group(0).lower()]))
           for m in re.finditer(r"\b(" + "|".join(WORDS) + r")\b", s, re.I)]
    for m in re.finditer(r"(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}", s):
        if int(m.group(3)) != 0:
            v = Fraction(int(m.group(2)), int(m.group(3)))
            out.append((m.start(), -v if m.group(1) else v))
    s2 = re.sub(r"(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}", " ", s)
    for m in re.finditer(rf"({NUM})\s*/\s*({NUM})", s2):
        try:
            a, b = Fraction(m.group(1).replace(",", "")), Fraction(m.group(2).replace(",", ""))
            if b != 0:
                out.append((m.start(), a / b))
        except ValueError:
            pass
    s3 = re.sub(rf"({NUM})\s*/\s*({NUM})", " ", s2)
    for m in re.finditer(NUM, s3):
        t = m.group(0).replace(",", "")
        # "1,000,000" style commas only; "3,7" is a list
        if "," in m.group(0) and not re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", m.group(0)):
            for part in m.group(0).split(","):
                if part.strip("-"):
                    out.append((m.start(), Fraction(part)))
            continue
        try:
            out.append((m.start(), Fraction(t)))
        except ValueError:
            pass
    return [v for _, v in sorted(out, key=lambda x: x[0])]


def ref_value(ref: str):
    """The reference as a single number, or None when it is not one number."""
    r = re.sub(r"\\text\{[^}]*\}|\\mbox\{[^}]*\}", "", clean(ref)).strip()
    r = re.sub(r"^[a-zA-Z]\s*=\s*", "", r)
    if re.fullmatch(rf"\s*(?:{NUM}|-?\\frac\{{-?\d+\}}\{{-?\d+\}}|{NUM}\s*/\s*{NUM})\s*", r):
        v = values(r)
        return v[0] if len(v) == 1 else None
    return None


def squash(s: str) -> str:
    s = re.sub(r"\\text\{([^}]*)\}|\\mbox\{([^}]*)\}", r"\1\2", clean(s))
    return re.sub(r"[\s{}]|\.$", "", s).lower()


def mentions(text: str, ref: str) -> bool:
    """Does text state the reference (numerically, or as a normalised substring)?"""
    v = ref_value(ref)
    if v is not None:
        return any(abs(x - v) <= abs(v) * Fraction(1, 10**6) for x in values(text))
    r = squash(ref)
    return bool(r) and r in squash(text)


def final_candidate(sol: str) -> str:
    """The answer the last line states (rule documented in README.md)."""
    last = last_statement(sol)
    m = list(re.finditer(r"answer is", last, re.I))
    if m:
        return last[m[-1].end():]
    m = list(re.finditer(r"(final\s+answer|answer)\s*\**\s*[:：]", last, re.I))
    if m:
        return last[m[-1].end():]
    bold = re.findall(r"\*\*(.+?)\*\*", last)
    if bold:
        return bold[-1]
    if "=" in last:
        return last.rsplit("=", 1)[1]
    # last sentence of the line, then what follows its last " is " / " are " / " equals "
    sentence = re.split(r"(?<=[.!?])\s+(?=[A-Z])", last)[-1]
    m = list(re.finditer(r"\s(is|are|equals|was|were)\s", sentence))
    return sentence[m[-1].end():] if m else sentence


def states_reference(sol: str, ref: str) -> bool:
    """Used to drop `incorrect` rows whose last line states the reference."""
    cand = final_candidate(sol)
    r = squash(ref)
    if r and squash(cand).rstrip(".") == r:
        return True
    v = ref_value(ref)
    if v is not None:
        vals = values(cand)
        return bool(vals) and abs(vals[0] - v) <= abs(v) * Fraction(1, 10**6)
    return bool(r) and r in squash(cand)


def supports_correct(sol: str, ref: str) -> bool:
    """Used to drop `correct` rows whose last line ends with a different answer."""
    last = last_statement(sol)
    if mentions(last, ref):
        return True
    has_value = bool(re.search(r"\d", last)) or bool(re.search(r"\$|\\\(|\\frac|\\sqrt", last))
    if not has_value:  # e.g. "I hope this helps!": look at the whole text instead
        return mentions(sol, ref)
    return False


def has_box(sol: str) -> bool:
    return "\\boxed" in sol or "\\fbox" in sol or "boxed{" in sol


# --------------------------------------------------------------------------
# selection helpers
# --------------------------------------------------------------------------
def src(repo, path, row, **extra):
    d = {"repo": repo.split("@")[0], "path": path, "commit": COMMITS[repo], "row": row}
    d.update(extra)
    return d


def spread_sample(cands: list, n: int, rng: random.Random, key=lambda c: c["_style"]) -> list:
    """Seeded sample of n candidates, round-robin over groups (ending style by default)."""
    if len(cands) <= n:
        return list(cands)
    groups = defaultdict(list)
    for c in cands:
        groups[key(c)].append(c)
    for g in groups.values():
        rng.shuffle(g)
    out = []
    order = sorted(groups)
    while len(out) < n:
        for k in order:
            if groups[k] and len(out) < n:
                out.append(groups[k].pop())
    return out


class Stats:
    def __init__(self):
        self.skipped = Counter()

    def skip(self, short, why):
        self.skipped[(short, why)] += 1


def check(c: dict, stats: Stats, short: str) -> bool:
    """Label-consistency check; returns False (and counts) for rows to drop."""
    if (short, c["source"]["path"], c["source"]["row"]) in HAND_EXCLUDED:
        stats.skip(short, "left out by hand (HAND_EXCLUDED)")
        return False
    if c["label"] == "correct" and not supports_correct(c["solution"], c["reference"]):
        stats.skip(short, "correct label, last line states another answer")
        return False
    if c["label"] == "incorrect" and states_reference(c["solution"], c["reference"]):
        stats.skip(short, "incorrect label, last line states the reference")
        return False
    return True


# --------------------------------------------------------------------------
# sources
# --------------------------------------------------------------------------
def references(reader: Reader):
    gsm = {}
    for r in reader.jsonl("openai/grade-school-math", GSM8K_TEST):
        gsm[ws(r["question"])] = r["answer"].split("####")[-1].strip()
    math = {}
    for r in reader.jsonl("MDX-0003/cs336-assignment5", MATH_TEST):
        math[ws(r["problem"])] = (r["answer"], r["unique_id"])
    return gsm, math


def pbench(reader: Reader, gsm: dict, math: dict, stats: Stats) -> list:
    repo = "ljxzs-jjlzs/ProcessBench"
    out = []
    for split, dataset in (("gsm8k", "GSM8K"), ("math", "MATH")):
        path = f"code/dataset/{split}.json"
        for i, r in enumerate(reader.json(repo, path)):
            sol = "\n\n".join(r["steps"])
            if has_box(sol):
                continue
            if len(sol) > MAX_CHARS:
                stats.skip("pbench", "over 6000 characters")
                continue
            key = ws(r["problem"])
            if split == "gsm8k":
                ref = gsm.get(key)
                extra = {}
            else:
                hit = math.get(key)
                ref, extra = (hit[0], {"math_unique_id": hit[1]}) if hit else (None, {})
            if ref is None:
                stats.skip("pbench", "no reference found")
                continue
            if r["final_answer_correct"]:
                label = "correct"
                label_by = "human" if r["label"] == -1 else "dataset-automatic"
            else:
                label, label_by = "incorrect", "human"
            c = {"problem": r["problem"], "solution": sol, "reference": ref, "label": label,
                 "label_by": label_by, "model": r["generator"], "dataset": dataset,
                 "source": src(repo, path, i, uuid=r["id"], **extra)}
            if check(c, stats, "pbench"):
                out.append(c)
    return out


def felm(reader: Reader, math: dict, stats: Stats) -> list:
    repo, path = "hkust-nlp/felm", "data/math.jsonl"
    out = []
    for i, r in enumerate(reader.jsonl(repo, path)):
        if r["source"] != "MATH":
            continue
        sol = r["response"]
        if has_box(sol):
            continue
        hit = math.get(ws(r["prompt"]))
        if hit is None:
            stats.skip("felm", "no reference found")
            continue
        labels = r["labels"]
        if len(labels) != len(r["segmented_response"]):
            stats.skip("felm", "labels and segments differ in number")
            continue
        if all(x is True for x in labels):
            label = "correct"
        elif labels[-1] is False:
            label = "incorrect"
        else:
            stats.skip("felm", "an earlier segment is wrong but the concluding one is not")
            continue
        c = {"problem": r["prompt"], "solution": sol, "reference": hit[0], "label": label,
             "label_by": "human", "model": "gpt-3.5-turbo (ChatGPT, 2023; FELM)", "dataset": "MATH",
             "source": src(repo, path, i, uuid=r["index"], math_unique_id=hit[1])}
        if check(c, stats, "felm"):
            out.append(c)
    return out


def rcritic(reader: Reader, stats: Stats) -> list:
    out = []
    names = {"gsm8k": "GSM8K", "math": "MATH", "college_math": "College Math",
             "minerva_math": "Minerva Math", "olympiadbench": "OlympiadBench"}
    for split in names:
        repo, path = "tangzhy/RealCritic", f"data/mix_data/{split}/test.jsonl"
        for i, r in enumerate(reader.jsonl(repo, path)):
            sol = r["reasoning"]
            if has_box(sol):
                continue
            if len(sol) > MAX_CHARS:
                stats.skip("rcritic", "over 6000 characters")
                continue
            label = "correct" if r["previous_score"][0] else "incorrect"
            c = {"problem": r["question"], "solution": sol, "reference": str(r["gt"]), "label": label,
                 "label_by": "dataset-automatic", "model": r["model"], "dataset": names[split],
                 "source": src(repo, path, i, uuid=r["idx"])}
            if check(c, stats, "rcritic"):
                out.append(c)
    repo, path = "tangzhy/RealCritic@o1", "outputs/o1-mini/critic_bench_cot/math_eval/math/test.jsonl"
    for i, r in enumerate(reader.jsonl(repo, path)):
        assert len(r["reasoning"]) == 1
        sol = r["reasoning"][0]
        if has_box(sol):
            continue
        if len(sol) > MAX_CHARS:
            stats.skip("rcritic", "over 6000 characters")
            continue
        label = "correct" if r["score"][0] else "incorrect"
        c = {"problem": r["question"], "solution": sol, "reference": str(r["gt"]), "label": label,
             "label_by": "dataset-automatic", "model": "o1-mini", "dataset": "MATH",
             "source": src(repo, path, i, uuid=r["idx"])}
        if check(c, stats, "rcritic"):
            out.append(c)
    return out


def mvista(reader: Reader, stats: Stats) -> list:
    repo = "lupantech/MathVista"
    files = {
        "results/gpt4/output_gpt4_2shot_solution_use_ocr.json": "GPT-4 (text only, 2-shot, OCR text)",
        "results/claude/output_claude_2shot_solution_use_ocr.json": "Claude-2 (text only, 2-shot, OCR text)",
        "results/chatgpt/output_chatgpt_2shot_solution_use_ocr.json": "ChatGPT gpt-3.5-turbo (text only, 2-shot, OCR text)",
        "results/bard/output_bard.json": "Bard (multimodal, 2023)",
    }
    out = []
    for path, model in files.items():
        for pos, (pid, r) in enumerate(reader.json(repo, path).items()):
            if r["question_type"] != "free_form" or r["metadata"]["language"] != "english":
                continue
            if r["answer_type"] not in ("integer", "float"):
                continue
            sol = r["response"]
            if not sol or has_box(sol):
                continue
            if len(sol) > MAX_CHARS:
                stats.skip("mvista", "over 6000 characters")
                continue
            label = "correct" if r["true_false"] else "incorrect"
            if label == "incorrect" and not re.fullmatch(r"-?[\d,]*\.?\d+", str(r.get("extraction") or "").strip()):
                continue  # keep only wrong answers that are numbers (no "cannot be determined")
            c = {"problem": r["question"], "solution": sol, "reference": str(r["answer"]), "label": label,
                 "label_by": "dataset-automatic", "model": model, "dataset": "MathVista (testmini)",
                 "source": src(repo, path, pos, pid=pid)}
            if check(c, stats, "mvista"):
                out.append(c)
    return out


# --------------------------------------------------------------------------
def build(reader: Reader):
    stats = Stats()
    gsm, math = references(reader)
    pools = {
        "pbench": pbench(reader, gsm, math, stats),
        "felm": felm(reader, math, stats),
        "rcritic": rcritic(reader, stats),
        "mvista": mvista(reader, stats),
    }
    for rows in pools.values():
        for c in rows:
            c["_style"] = ending_style(c["solution"])
    return pools, stats


def select(pools: dict) -> list:
    """Selection rule (README.md): see the caps below."""
    chosen = []
    # ProcessBench: every correct row; incorrect rows spread over ending styles.
    pb = pools["pbench"]
    pb_right = [c for c in pb if c["label"] == "correct"]
    pb_wrong = [c for c in pb if c["label"] == "incorrect"]
    chosen += [("pbench", c) for c in pb_right]
    chosen += [("pbench", c) for c in spread_sample(pb_wrong, 70, random.Random(f"{SEED}-pbench"))]
    # FELM: all rows that pass.
    chosen += [("felm", c) for c in pools["felm"]]
    # RealCritic: o1-mini (correct and incorrect) and the other chat models.
    rc = pools["rcritic"]
    o1 = [c for c in rc if c["model"] == "o1-mini"]
    other = [c for c in rc if c["model"] != "o1-mini"]
    rng = random.Random(f"{SEED}-rcritic")
    chosen += [("rcritic", c) for c in spread_sample([c for c in o1 if c["label"] == "incorrect"], 25, rng)]
    chosen += [("rcritic", c) for c in spread_sample([c for c in o1 if c["label"] == "correct"], 60, rng)]
    chosen += [("rcritic", c) for c in [c for c in other if c["label"] == "correct"]]
    chosen += [("rcritic", c) for c in spread_sample([c for c in other if c["label"] == "incorrect"], 25, rng)]
    # MathVista: per model 8 correct + 6 incorrect.
    mv = pools["mvista"]
    rng = random.Random(f"{SEED}-mvista")
    for model in sorted({c["model"] for c in mv}):
        right = [c for c in mv if c["model"] == model and c["label"] == "correct"]
        wrong = [c for c in mv if c["model"] == model and c["label"] == "incorrect"]
        chosen += [("mvista", c) for c in spread_sample(right, 8, rng)]
        chosen += [("mvista", c) for c in spread_sample(wrong, 6, rng)]
    rows = []
    counters = Counter()
    for short, c in chosen:
        row = {"id": f"{short}-{counters[short]}"}
        counters[short] += 1
        row.update({k: v for k, v in c.items() if not k.startswith("_")})
        rows.append(row)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mirror-root", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("freeform.jsonl"))
    args = ap.parse_args()
    pools, stats = build(Reader(args.mirror_root))
    for k, v in pools.items():
        print(k, "pool", len(v), Counter((c["label"], c["label_by"]) for c in v),
              Counter(c["_style"] for c in v))
    for (short, why), n in sorted(stats.skipped.items()):
        print("skipped", short, why, n)
    rows = select(pools)
    with open(args.out, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print("wrote", len(rows), "rows to", args.out)


if __name__ == "__main__":
    main()
