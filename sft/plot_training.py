"""Plot training and validation loss of a verl run to a PNG.

Usage:
    python -m sft.plot_training outputs/demo/train.log -o outputs/demo/loss.png
    python -m sft.plot_training metrics.jsonl -o loss.png --title "Qwen2.5-1.5B, LoRA r=32"

The input is either what verl's console logger printed (lines `step:N - train/loss:X - ...`,
e.g. the launcher's output saved with `| tee train.log`) or the JSONL that verl's file logger
writes (`LOGGER=console,file`, `VERL_FILE_LOGGER_PATH=...`: one `{"step": N, "data": {...}}`
per line). Lines of other kinds are ignored; a file without any loss is an error.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python sft/plot_training.py`: make `import sft.x` work
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sft.common.errors import EXIT_OK, EXIT_REFUSED
from sft.common.files import atomic_path

_CONSOLE_STEP = re.compile(r"step:(\d+) - (.*)")
_METRIC = re.compile(r"([\w/()]+):([-+0-9.eE]+)")


def read_metrics(path: str | Path) -> dict[str, dict[int, float]]:
    """{metric name: {step: value}} from a console log or a file-logger JSONL."""
    series: dict[str, dict[int, float]] = {}
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            line = line.strip()
            if line.startswith("{"):
                try:
                    record = json.loads(line)
                    step, data = int(record["step"]), record["data"]
                except (ValueError, KeyError, TypeError):
                    continue
                items = [(k, v) for k, v in data.items() if isinstance(v, (int, float))]
            else:
                match = _CONSOLE_STEP.search(line)
                if not match:
                    continue
                step = int(match.group(1))
                items = [(k, float(v)) for k, v in _METRIC.findall(match.group(2))]
            for name, value in items:
                series.setdefault(name, {})[step] = float(value)
    return series


def plot_loss(metrics: dict[str, dict[int, float]], output: str | Path, title: str = "verl SFT") -> Path:
    """Write a PNG of train/loss (and val/loss when present) against the optimiser step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not metrics.get("train/loss"):
        raise ValueError("no train/loss values found")
    figure, axis = plt.subplots(figsize=(7, 4), dpi=120)
    for name, style in (("train/loss", "-"), ("val/loss", "o--")):
        points = sorted(metrics.get(name, {}).items())
        if points:
            axis.plot([s for s, _ in points], [v for _, v in points], style, label=name)
    axis.set_xlabel("optimiser step")
    axis.set_ylabel("loss (mean per response token)")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(output) as tmp:
        figure.savefig(tmp, format="png")  # the temporary name's suffix is not .png
    plt.close(figure)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Plot train/val loss of a verl run (console log or file-logger JSONL).")
    parser.add_argument("log", help="console log of a training run, or verl file-logger JSONL")
    parser.add_argument("-o", "--output", required=True, help="PNG to write")
    parser.add_argument("--title", default="verl SFT", help="plot title")
    args = parser.parse_args(argv)
    try:
        metrics = read_metrics(args.log)
        path = plot_loss(metrics, args.output, args.title)
    except OSError as exc:
        print(f"error: cannot read {args.log}: {exc.strerror}", file=sys.stderr)
        return EXIT_REFUSED
    except ValueError as exc:
        print(f"error: {args.log}: {exc}. Is it the output of a training run?", file=sys.stderr)
        return EXIT_REFUSED
    losses = metrics["train/loss"]
    first, last = min(losses), max(losses)
    print(f"loss plot: {path} (train/loss {losses[first]:.3f} at step {first} -> {losses[last]:.3f} at step {last})")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
