"""The generate-and-retrain loop's bookkeeping: the held-out check and the table of rounds.

`sft/example_train.sh` with `ROUNDS > 1` calls it; it reads only files the loop wrote.

Usage:
    python -m sft.rounds --check-heldout outputs/demo/heldout.jsonl --training outputs/demo/round-2/data problems.jsonl
    python -m sft.rounds --table outputs/demo --seconds 1=95 2=180
    python -m sft.rounds --help

--check-heldout HELDOUT --training PATH...: stops (exit 2) when a prompt of the held-out file is also a
prompt of a --training PATH: a prepared data directory (its train.parquet: every user message of every
conversation; val.parquet is not trained on, and may be the held-out file itself) or a JSONL/Parquet file of problems (the `prompt` column, or the user
messages of a `messages` column). Prompts are compared after collapsing runs of whitespace.

--table DEMO_DIR: one row per round from the files of the loop in DEMO_DIR (round 1 at the top level,
round r in round-r/): what the round trained (rows of the seed data and of the model's own correct
samples), the samples of the previous round's model, held-out accuracy and its change, and the
round's wall time (--seconds). Writes DEMO_DIR/rounds.md and rounds.json (atomically) and prints the table.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python sft/rounds.py`: make `import sft.x` work
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import json
import re
from typing import Any, Iterable

from sft.common.cli import HelpFormatter
from sft.common.errors import EXIT_OK, UserError, exit_on_user_error
from sft.common.files import write_text_atomic

ROUNDS_MD = "rounds.md"
ROUNDS_JSON = "rounds.json"


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _row_prompts(row: dict, prompt_key: str) -> Iterable[str]:
    messages = row.get("messages")
    if messages is not None:
        for message in messages:
            if isinstance(message, dict) and message.get("role") == "user" and isinstance(message.get("content"), str):
                yield message["content"]
    elif isinstance(row.get(prompt_key), str):
        yield row[prompt_key]


def read_prompts(path: str | Path, prompt_key: str = "prompt") -> set[str]:
    """Normalised user prompts of a data directory's train.parquet or of a JSONL/Parquet file."""
    from sft.generation.problems import read_problem_rows

    path = Path(path)
    file = path / "train.parquet" if path.is_dir() else path
    if not file.is_file():
        raise UserError(f"{file}: no such file; check the path (a data directory needs sft/prepare_data.py -o {path})")
    return {_normalise(p) for _, row in read_problem_rows(file) for p in _row_prompts(row, prompt_key)}


def check_heldout(heldout: str | Path, training: list[str | Path], prompt_key: str = "prompt") -> str:
    """A one-line report; raises UserError when a held-out prompt is in a training item."""
    held = read_prompts(heldout, prompt_key)
    if not held:
        raise UserError(f"{heldout}: no prompts found (a '{prompt_key}' column or user messages); check the file")
    for item in training:
        shared = held & read_prompts(item, prompt_key)
        if shared:
            raise UserError(
                f"{len(shared)} of the {len(held)} held-out problems of {heldout} are also in {item}, e.g. "
                f"{sorted(shared)[0][:120]!r}: held-out problems must never be trained on or sampled from; remove "
                "them from the training data and PROBLEMS, or choose another EVAL_FILE"
            )
    names = ", ".join(str(item) for item in training)
    return f"held-out check: none of the {len(held)} held-out problems of {heldout} is in {names}"


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _trained_from(round_dir: Path, demo_dir: Path) -> str | None:
    """'base', 'round N' (the loop's model of round N) or the model path the round trained from."""
    record = _read_json(round_dir / "fine-tuned-model" / "run_record.json")
    if not record or not record.get("launches"):
        return None
    model = Path(str(record["launches"][-1].get("settings", {}).get("MODEL_NAME", ""))).resolve()
    base = _read_json(demo_dir / "eval" / "base" / "summary.json")
    if base and Path(str(base.get("model", ""))).resolve() == model:
        return "base"
    if model == (demo_dir / "fine-tuned-model").resolve():
        return "round 1"
    if model.name == "fine-tuned-model" and model.parent.parent == demo_dir.resolve() and model.parent.name[6:].isdigit():
        return f"round {model.parent.name[6:]}"
    return str(model)


def round_row(demo_dir: Path, number: int, seconds: dict[int, int]) -> dict[str, Any]:
    """The figures of round `number` from the files the loop wrote."""
    round_dir = demo_dir if number == 1 else demo_dir / f"round-{number}"
    summary = _read_json(round_dir / "eval" / ("fine-tuned/summary.json" if number == 1 else "summary.json"))
    manifest = _read_json(round_dir / "data" / "manifest.json")
    if summary is None or manifest is None:
        raise UserError(f"{round_dir}: round {number} has no eval summary or data manifest; the loop did not finish it")
    sources = manifest.get("sources", {})
    self_rows = sources["self"]["train"] if "self" in sources else 0
    generation = _read_json(round_dir / "samples" / "generation.json")
    gen = (generation or {}).get("summary", {})
    return {
        "round": number,
        "trained_from": _trained_from(round_dir, demo_dir),
        "train_rows": manifest["counts"]["train"],
        "self_rows": self_rows,
        "samples": gen.get("samples"),
        "correct_sample_rate": gen.get("correct_sample_rate"),
        "solved_problem_rate": gen.get("solved_problem_rate"),
        "samples_per_second": gen.get("samples_per_second"),
        "accuracy": summary["accuracy"],
        "num_correct": summary["num_correct"],
        "num_graded": summary["num_graded"],
        "seconds": seconds.get(number),
    }


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def format_table(rows: list[dict], base_accuracy: float | None) -> str:
    lines = [
        "| round | trained from | training rows (own samples) | samples of the previous model: correct, problems solved "
        "| held-out accuracy | change | time |",
        "|---|---|---|---|---|---|---|",
    ]
    previous = base_accuracy
    for row in rows:
        samples = "-" if row["samples"] is None else (
            f"{row['samples']:,} at {row['samples_per_second']} samples/s: "
            f"{_pct(row['correct_sample_rate'])}, {_pct(row['solved_problem_rate'])}"
        )
        change = "-" if previous is None else f"{100 * (row['accuracy'] - previous):+.1f} points"
        time = "-" if row["seconds"] is None else f"{row['seconds']} s"
        lines.append(
            f"| {row['round']} | {row['trained_from'] or '-'} | {row['train_rows']:,} ({row['self_rows']:,}) | {samples} "
            f"| {_pct(row['accuracy'])} ({row['num_correct']}/{row['num_graded']}) | {change} | {time} |"
        )
        previous = row["accuracy"]
    if base_accuracy is not None:
        lines.append(f"\nBase model before round 1: {_pct(base_accuracy)} held-out accuracy (greedy decoding).")
    return "\n".join(lines)


def write_table(demo_dir: str | Path, seconds: dict[int, int]) -> str:
    """Write DEMO_DIR/rounds.md and rounds.json for every round found; return the table."""
    demo_dir = Path(demo_dir)
    numbers = [1] + sorted(int(p.name.split("-")[1]) for p in demo_dir.glob("round-*") if p.name[6:].isdigit())
    rows = [round_row(demo_dir, n, seconds) for n in numbers]
    base = _read_json(demo_dir / "eval" / "base" / "summary.json")
    table = format_table(rows, base["accuracy"] if base else None)
    write_text_atomic(demo_dir / ROUNDS_MD, table + "\n")
    write_text_atomic(demo_dir / ROUNDS_JSON, json.dumps({"rounds": rows, "base_accuracy": base and base["accuracy"]},
                                                         indent=2) + "\n")
    return table


def _seconds(values: list[str]) -> dict[int, int]:
    result = {}
    for value in values:
        number, _, secs = value.partition("=")
        if not (number.isdigit() and secs.isdigit()):
            raise UserError(f"--seconds {value}: write ROUND=SECONDS, e.g. --seconds 1=95 2=180")
        result[int(number)] = int(secs)
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m sft.rounds", description=__doc__.split("\n\n")[0],
                                     formatter_class=HelpFormatter)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--check-heldout", metavar="HELDOUT",
                      help="stop (exit 2) if a prompt of this held-out JSONL/Parquet is in a --training item")
    what.add_argument("--table", metavar="DEMO_DIR",
                      help="write and print the table of rounds of the loop in DEMO_DIR (round 1 at the top, round r in "
                           "round-r/)")
    parser.add_argument("--training", nargs="+", default=[], metavar="PATH",
                        help="with --check-heldout: prepared data directories (their train.parquet) or JSONL/Parquet "
                             "problem files")
    parser.add_argument("--prompt-key", default="prompt", help="prompt column of rows without 'messages'")
    parser.add_argument("--seconds", nargs="*", default=[], metavar="ROUND=SECONDS",
                        help="with --table: wall time of each round")
    args = parser.parse_args(argv)
    if args.check_heldout and not args.training:
        parser.error("--check-heldout needs --training PATH ...")
    return args


def _run(args: argparse.Namespace) -> int:
    if args.check_heldout:
        print(check_heldout(args.check_heldout, args.training, args.prompt_key))
    else:
        print(write_table(args.table, _seconds(args.seconds)))
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return exit_on_user_error(lambda: _run(args), "error")


if __name__ == "__main__":
    sys.exit(main())
