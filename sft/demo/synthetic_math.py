"""Synthetic arithmetic problems with step-by-step solutions, in the seed JSONL format: the demo's task.

Usage:
    python -m sft.demo.synthetic_math -o outputs/demo/problems.jsonl \
        --heldout-output outputs/demo/heldout.jsonl          # the demo's data (DEMO_RECIPE)
    python -m sft.demo.synthetic_math -o /tmp/p.jsonl --n 500 --solutions-per-problem 4 \
        --operations add sub mul --seed 3 --tokenizer outputs/demo/tiny-model

Every row is `{"id", "prompt", "generated_solution", "num_tokens", "answer"}`, the format
`sft/prepare_data.py` reads, e.g.
    {"id": 7, "prompt": "Solve: What is 47 + 38?",
     "generated_solution": "Step 1: Add the ones: 7 + 8 = 15. Write 5, carry 1.\nStep 2: Add the
     tens: 4 + 3 = 7.\nStep 3: Add the carry: 7 + 1 = 8.\nThe answer is \\boxed{85}.",
     "num_tokens": 37, "answer": "85"}
The solutions use the column method, one fact per step (a carry or a borrow gets its own step),
and end in a `\boxed{}` answer that `sft.text.math_answers` extracts and grades. Families:
two-digit addition (the demo's), two-digit subtraction with a non-negative result, and
two-digit-by-one-digit multiplication.

Held-out problems never appear in training, by construction: every arithmetic question (say
"47 + 38", whatever the wording of its prompt, together with "38 + 47") belongs to exactly one
of two fixed partitions, chosen by a hash of the question, and training files and held-out
files draw from different partitions, for every seed. Held-out ids start at
`HELDOUT_ID_OFFSET`, and `check_disjoint` checks two files: no prompt text and no question
(in any wording or operand order) in common.

Several solutions per problem share the problem's id (as samples from a model would), so data
preparation that splits by id keeps them on one side of its train/validation split. They differ
in wording, not in method or answer. `num_tokens` is the solution's count of whitespace-separated
words unless a tokenizer is given (`--tokenizer`), in which case it is that tokenizer's count.

`DEMO_RECIPE` records the demo's data sizes, tiny model shape and training settings, with the
figures measured for them; `demo_model_spec()` is that model's `TinyModelSpec`. Generation is
deterministic for a seed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

if __package__ in (None, ""):  # run as `python sft/demo/synthetic_math.py`: make `import sft.x` work
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sft.common.cli import HelpFormatter
from sft.common.files import atomic_path

OPERATIONS = ("add", "sub", "mul")
"""Problem families: two-digit addition, two-digit subtraction (non-negative result),
two-digit times one-digit multiplication."""

HELDOUT_ID_OFFSET = 1_000_000
"""Held-out problem ids start here; training ids start at 0."""

HELDOUT_BUCKETS = 10
"""One question in this many belongs to the held-out partition."""

DEMO_OPERATIONS = ("add",)
"""The demo's family, and the default here: two-digit addition, which the demo's tiny model
learns on a 2-core CPU in about two minutes (figures: sft/README.md, "The demo")."""

DEMO_RECIPE = {
    # Data: python -m sft.demo.synthetic_math (these are its defaults).
    "operations": list(DEMO_OPERATIONS),
    "n_problems": 2250,
    "solutions_per_problem": 2,
    "n_heldout": 200,
    "seed": 0,
    # sft/prepare_data.py's default split: 10% of the problems (by id) go to val.parquet,
    # 225 problems = 450 rows, more than one global batch (verl reports nan otherwise).
    "val_split": 0.1,
    # Tiny model: TinyModelSpec(**DEMO_RECIPE["model"], extra_corpus=tokenizer_corpus(...)),
    # see demo_model_spec(). 3 layers and initializer_range 0.1 are what make it learn in time.
    "model": {
        "hidden_size": 64,
        "num_layers": 3,
        "num_heads": 4,
        "num_kv_heads": 2,
        "intermediate_size": 256,
        "vocab_size": 512,
        "initializer_range": 0.1,
    },
    # Training, as the launcher's environment (scripts/run_sft_training.sh) ...
    "launcher_env": {
        "TRAIN_BATCH_SIZE": "16",
        # The whole local batch in one micro batch: these sequences are short (under 100
        # tokens), so the CPU default of one sample per micro batch (chosen for long ones)
        # is 3x slower per step here, with the same loss (measured over 60 steps).
        "BATCH_SIZE": "8",
        "EPOCHS": "2",
        "LEARNING_RATE": "7e-3",
        "LR_SCHEDULER": "cosine",
        "WARMUP_RATIO": "0.05",
        "COMPUTE_DTYPE": "fp32",
        "REMOVE_PADDING": "0",
        "GRADIENT_CHECKPOINTING": "0",
    },
    # ... plus these Hydra overrides the launcher does not set itself:
    "launcher_extra_overrides": ["engine.use_torch_compile=False", "+optim.override_optimizer_config.fused=True"],
    # Evaluation: greedy decoding. Addition solutions are 60 tokens on average and at most 78
    # (+1 for EOS) with the demo's tokenizer; a random base model never stops and uses all 96.
    "max_new_tokens": 96,
}
"""The demo's settings; measured results and the command that reproduces them: sft/README.md, "The demo"."""

LOOP_RECIPE = {
    # ROUNDS=2 sft/example_train.sh on the built-in task. Round 1 starts from less data than the
    # demo (1 solution for each of 1,500 problems instead of 2 for 2,250), so there is room to improve.
    "n_problems": 1500,
    "solutions_per_problem": 1,
    "round1_epochs": 4,
    # Rounds >= 2: sample NUM_SAMPLES solutions of every training problem with the previous round's
    # model, keep the correct ones (at most MAX_PER_PROBLEM per problem, deduplicated), mix them
    # with the seed data and train the previous round's model further for LOOP_EPOCHS.
    "num_samples": 4,
    "temperature": 0.7,
    "max_per_problem": 2,
    "loop_epochs": 2,
}
"""The loop's settings on the built-in task (ROUNDS > 1); measured results: sft/README.md, "The loop"."""

_SYMBOL = {"add": "+", "sub": "-", "mul": "*"}

_PROMPTS = {
    "add": ("Solve: What is {a} + {b}?", "Solve: Compute {a} + {b}.", "Solve: Find the sum of {a} and {b}."),
    "sub": ("Solve: What is {a} - {b}?", "Solve: Compute {a} - {b}.", "Solve: Subtract {b} from {a}."),
    "mul": ("Solve: What is {a} * {b}?", "Solve: Compute {a} * {b}.", "Solve: Find the product of {a} and {b}."),
}

# Wordings of the same column method; a problem's several solutions pick among these.
_CARRY_WORDS = (", carry {c}", " and carry {c}")
_FINAL_WORDS = ("The answer is \\boxed{{{r}}}.", "So the final answer is \\boxed{{{r}}}.")


@dataclass(frozen=True)
class Question:
    """One arithmetic question, independent of how its prompt is worded."""

    op: str
    a: int
    b: int

    @property
    def key(self) -> str:
        return f"{self.a} {_SYMBOL[self.op]} {self.b}"

    @property
    def canonical(self) -> str:
        """The key with a commutative operation's operands sorted: 38 + 47 is the problem 47 + 38."""
        if self.op == "add" and self.a > self.b:
            return Question(self.op, self.b, self.a).key
        return self.key

    @property
    def result(self) -> int:
        if self.op == "add":
            return self.a + self.b
        if self.op == "sub":
            return self.a - self.b
        return self.a * self.b


def is_heldout(question: Question) -> bool:
    """Whether `question` belongs to the held-out partition (a fixed hash, same for every seed).

    The hash is of the canonical key, so 47 + 38 and 38 + 47 are always on the same side.
    """
    digest = hashlib.sha256(question.canonical.encode()).digest()
    return int.from_bytes(digest[:4], "big") % HELDOUT_BUCKETS == 0


def all_questions(op: str) -> list[Question]:
    """Every question of a family, in a fixed order."""
    if op == "add":
        return [Question(op, a, b) for a in range(10, 100) for b in range(10, 100)]
    if op == "sub":
        return [Question(op, a, b) for a in range(10, 100) for b in range(10, a + 1)]
    if op == "mul":
        return [Question(op, a, b) for a in range(10, 100) for b in range(2, 10)]
    raise ValueError(f"unknown operation {op!r}; choose from {', '.join(OPERATIONS)}")


def solve(question: Question, variant: int = 0) -> str:
    """A step-by-step column-method solution ending in a boxed answer; `variant` picks the wording.

    Every step applies one fact to two numbers (a carry or borrow gets a step of its own), so
    the ones and the tens use the same small table of facts, which a tiny model learns fast.
    """
    final = _FINAL_WORDS[variant % len(_FINAL_WORDS)].format(r=question.result)
    carry_words = _CARRY_WORDS[(variant // len(_FINAL_WORDS)) % len(_CARRY_WORDS)]
    a, b = question.a, question.b
    a_tens, a_ones = divmod(a, 10)
    if question.op == "add":
        b_tens, b_ones = divmod(b, 10)
        ones, tens = a_ones + b_ones, a_tens + b_tens
        carry, digit = divmod(ones, 10)
        steps = [f"Add the ones: {a_ones} + {b_ones} = {ones}.", f"Add the tens: {a_tens} + {b_tens} = {tens}."]
        if carry:
            steps[0] += f" Write {digit}" + carry_words.format(c=carry) + "."
            steps.append(f"Add the carry: {tens} + {carry} = {tens + carry}.")
    elif question.op == "sub":
        b_tens, b_ones = divmod(b, 10)
        tens = a_tens - b_tens
        if a_ones >= b_ones:
            steps = [f"Subtract the ones: {a_ones} - {b_ones} = {a_ones - b_ones}."]
        else:
            steps = [f"{a_ones} is less than {b_ones}, so borrow 1 ten: {a_ones + 10} - {b_ones} = {a_ones + 10 - b_ones}."]
        steps.append(f"Subtract the tens: {a_tens} - {b_tens} = {tens}.")
        if a_ones < b_ones:
            steps.append(f"Take away the borrowed ten: {tens} - 1 = {tens - 1}.")
    else:
        ones, tens = a_ones * b, a_tens * b
        carry, digit = divmod(ones, 10)
        steps = [f"Multiply the ones: {a_ones} * {b} = {ones}.", f"Multiply the tens: {a_tens} * {b} = {tens}."]
        if carry:
            steps[0] += f" Write {digit}" + carry_words.format(c=carry) + "."
            steps.append(f"Add the carry: {tens} + {carry} = {tens + carry}.")
    numbered = [f"Step {number}: {step}" for number, step in enumerate(steps, 1)]
    return "\n".join(numbered + [final])


def tokenizer_corpus(operations: Sequence[str] = OPERATIONS) -> list[str]:
    """Sample prompts and solutions of every family and wording, to train a tiny model's tokenizer on
    (`TinyModelSpec(extra_corpus=tokenizer_corpus())`), so the task's words become single tokens."""
    examples = {"add": [(47, 38), (52, 45)], "sub": [(53, 49), (81, 70)], "mul": [(69, 8), (21, 4)]}
    lines = []
    for op in dict.fromkeys(operations):
        for a, b in examples[op]:
            # As the chat template renders them: the role name starts the line.
            lines.extend("user\n" + template.format(a=a, b=b) for template in _PROMPTS[op])
            for variant in range(len(_CARRY_WORDS) * len(_FINAL_WORDS)):
                lines.append("assistant\n" + solve(Question(op, a, b), variant))
    return lines


def demo_model_spec():
    """The `TinyModelSpec` of the demo's model (DEMO_RECIPE["model"]), its tokenizer trained on
    this task's words: `build_tiny_model(path, demo_model_spec())`."""
    from sft.demo.tiny_model import TinyModelSpec

    return TinyModelSpec(**DEMO_RECIPE["model"], extra_corpus=tokenizer_corpus(DEMO_RECIPE["operations"]))


def whitespace_token_count(text: str) -> int:
    """A rough token count: whitespace-separated words (real tokenizers give more)."""
    return len(text.split())


def sample_questions(n: int, seed: int, operations: Sequence[str] = DEMO_OPERATIONS, heldout: bool = False) -> list[Question]:
    """`n` distinct questions of the training (or held-out) partition, the families taking turns."""
    if n < 0:
        raise ValueError(f"number of problems must be >= 0, got {n}")
    if not operations:
        raise ValueError("no operations given; choose from " + ", ".join(OPERATIONS))
    rng = random.Random(f"{seed}:{'heldout' if heldout else 'train'}")
    pools = {}
    for op in dict.fromkeys(operations):
        pool = [q for q in all_questions(op) if is_heldout(q) == heldout]
        rng.shuffle(pool)
        pools[op] = pool
    capacity = sum(len(pool) for pool in pools.values())
    if n > capacity:
        side = "held-out" if heldout else "training"
        raise ValueError(
            f"asked for {n} {side} problems but operations {', '.join(pools)} have only {capacity} "
            f"distinct {side} questions; ask for fewer or add operations"
        )
    questions: list[Question] = []
    order = list(pools)
    turn = 0
    while len(questions) < n:
        pool = pools[order[turn % len(order)]]
        if pool:
            questions.append(pool.pop())
        turn += 1
    rng.shuffle(questions)
    return questions


def make_rows(
    n_problems: int,
    solutions_per_problem: int = 1,
    seed: int = 0,
    operations: Sequence[str] = DEMO_OPERATIONS,
    heldout: bool = False,
    count_tokens: Callable[[str], int] = whitespace_token_count,
) -> list[dict]:
    """Rows in the seed JSONL format: `solutions_per_problem` rows per problem, sharing its id."""
    if solutions_per_problem < 1:
        raise ValueError(f"solutions per problem must be >= 1, got {solutions_per_problem}")
    rng = random.Random(f"{seed}:rows:{'heldout' if heldout else 'train'}")
    id_offset = HELDOUT_ID_OFFSET if heldout else 0
    n_variants = len(_CARRY_WORDS) * len(_FINAL_WORDS)
    rows = []
    for index, question in enumerate(sample_questions(n_problems, seed, operations, heldout)):
        prompt = rng.choice(_PROMPTS[question.op]).format(a=question.a, b=question.b)
        first_variant = rng.randrange(n_variants)
        for k in range(solutions_per_problem):
            solution = solve(question, (first_variant + k) % n_variants)
            rows.append(
                {
                    "id": id_offset + index,
                    "prompt": prompt,
                    "generated_solution": solution,
                    "num_tokens": count_tokens(solution),
                    "answer": str(question.result),
                }
            )
    return rows


def _write_jsonl_atomic(path: Path, rows: Iterable[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")


def _token_counter(tokenizer) -> Callable[[str], int]:
    if tokenizer is None:
        return whitespace_token_count
    if isinstance(tokenizer, (str, os.PathLike)):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer)
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def write_synthetic_jsonl(
    path: str | os.PathLike,
    n_problems: int,
    solutions_per_problem: int = 1,
    seed: int = 0,
    operations: Sequence[str] = DEMO_OPERATIONS,
    heldout: bool = False,
    tokenizer=None,
) -> Path:
    """Write `n_problems` problems x `solutions_per_problem` solutions to `path` (JSONL, atomically).

    `heldout=True` draws from the held-out partition (ids from `HELDOUT_ID_OFFSET`), which
    no training file ever uses. `tokenizer` (a tokenizer or a directory to load one from)
    makes `num_tokens` the tokenizer's count of the solution instead of a word count.
    """
    rows = make_rows(n_problems, solutions_per_problem, seed, operations, heldout, _token_counter(tokenizer))
    path = Path(path)
    _write_jsonl_atomic(path, rows)
    return path


def _prompt_patterns() -> list[tuple[re.Pattern, str]]:
    patterns = []
    for op, templates in _PROMPTS.items():
        for template in templates:
            regex = re.escape(template).replace(re.escape("{a}"), r"(?P<a>\d+)").replace(re.escape("{b}"), r"(?P<b>\d+)")
            patterns.append((re.compile(regex + r"\Z"), op))
    return patterns


def parse_prompt(prompt: str) -> Question | None:
    """The question a prompt of this module asks (whatever its wording), or None for other text."""
    for pattern, op in _prompt_patterns():
        match = pattern.match(prompt)
        if match:
            return Question(op, int(match["a"]), int(match["b"]))
    return None


def read_prompts(path: str | os.PathLike) -> set[str]:
    """The prompts of a JSONL file; a row that is not JSON names its file and line."""
    prompts = set()
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                prompts.add(json.loads(line)["prompt"])
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{line_no}: not a JSON object with a 'prompt' ({exc}); regenerate the file") from exc
    return prompts


def check_disjoint(train_path: str | os.PathLike, heldout_path: str | os.PathLike) -> None:
    """Raise ValueError if a held-out problem also appears in the training file.

    Two prompts count as the same problem when their text is equal, or when they ask the same
    question in other words or order ("What is 47 + 38?", "Find the sum of 38 and 47.").
    """
    train_prompts, heldout_prompts = read_prompts(train_path), read_prompts(heldout_path)
    shared = train_prompts & heldout_prompts
    train_questions = {q.canonical for q in map(parse_prompt, train_prompts) if q is not None}
    shared |= {p for p in heldout_prompts if (q := parse_prompt(p)) is not None and q.canonical in train_questions}
    if shared:
        example = sorted(shared)[0]
        raise ValueError(
            f"{len(shared)} held-out problems of {heldout_path} also appear in {train_path}, e.g. {example!r}; "
            "write the held-out file with heldout=True (--heldout-output)"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m sft.demo.synthetic_math",
        description="Write synthetic arithmetic problems with step-by-step solutions (seed JSONL format).",
        formatter_class=HelpFormatter,
    )
    demo = DEMO_RECIPE
    parser.add_argument("--output", "-o", help="training problems JSONL to write (required unless --print-recipe)")
    parser.add_argument("--n", type=int, default=demo["n_problems"], help="number of training problems (distinct questions)")
    parser.add_argument(
        "--solutions-per-problem", type=int, default=demo["solutions_per_problem"],
        help="solutions (rows) per problem, sharing its id and differing in wording",
    )
    parser.add_argument("--heldout-output", help="also write held-out problems (never in training) to this JSONL")
    parser.add_argument(
        "--n-heldout", type=int, default=demo["n_heldout"], help="number of held-out problems, one solution each"
    )
    parser.add_argument(
        "--operations", nargs="+", choices=OPERATIONS, default=list(DEMO_OPERATIONS), help="problem families to mix"
    )
    parser.add_argument("--seed", type=int, default=demo["seed"], help="seed of the problem sampling and wording")
    parser.add_argument(
        "--tokenizer", help="tokenizer directory whose token count goes in num_tokens (unset: whitespace word count)"
    )
    parser.add_argument(
        "--model-output", metavar="DIR",
        help="also build the demo's tiny model (DEMO_RECIPE's shape, tokenizer trained on this task) in DIR",
    )
    parser.add_argument(
        "--print-recipe", action="store_true",
        help="print the demo's training settings as NAME=VALUE lines (launcher variables, then OVERRIDES=...) and exit",
    )
    parser.add_argument(
        "--print-loop-recipe", action="store_true",
        help="print the loop's settings on this task (ROUNDS > 1 in sft/example_train.sh) as NAME=VALUE lines and exit",
    )
    args = parser.parse_args(argv)
    if not (args.print_recipe or args.print_loop_recipe) and not args.output:
        parser.error("--output is required")
    return args


def recipe_lines() -> list[str]:
    """DEMO_RECIPE's training settings for sft/example_train.sh: launcher variables, then overrides."""
    lines = [f"{name}={value}" for name, value in DEMO_RECIPE["launcher_env"].items()]
    lines.append("OVERRIDES=" + " ".join(DEMO_RECIPE["launcher_extra_overrides"]))
    lines.append(f"MAX_NEW_TOKENS={DEMO_RECIPE['max_new_tokens']}")
    return lines


def loop_recipe_lines() -> list[str]:
    """LOOP_RECIPE for sft/example_train.sh, as the names of its settings (N_PROBLEMS, ...)."""
    return [f"{name.upper()}={value}" for name, value in LOOP_RECIPE.items()]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.print_recipe or args.print_loop_recipe:
        print("\n".join(recipe_lines() if args.print_recipe else loop_recipe_lines()))
        return 0
    try:
        counter = _token_counter(args.tokenizer)
    except OSError as exc:
        print(f"error: cannot load a tokenizer from {args.tokenizer}: {exc}; pass a tokenizer directory", file=sys.stderr)
        return 2
    try:
        rows = make_rows(args.n, args.solutions_per_problem, args.seed, args.operations, False, counter)
        heldout_rows = (
            make_rows(args.n_heldout, 1, args.seed, args.operations, True, counter) if args.heldout_output else []
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _write_jsonl_atomic(Path(args.output), rows)
    print(f"wrote {len(rows)} rows ({args.n} problems x {args.solutions_per_problem} solutions) to {args.output}")
    if args.heldout_output:
        _write_jsonl_atomic(Path(args.heldout_output), heldout_rows)
        check_disjoint(args.output, args.heldout_output)
        print(f"wrote {len(heldout_rows)} held-out problems to {args.heldout_output} (no problem shared with training)")
    if args.model_output:
        from sft.demo.tiny_model import build_tiny_model

        path = build_tiny_model(args.model_output, demo_model_spec())
        print(f"built the demo's tiny model (random weights) in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
