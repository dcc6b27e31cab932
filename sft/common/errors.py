"""The one error type for a user's mistake, and every command's exit statuses (imported; not a command).

Every command raises a subclass of `UserError` for bad data, settings or templates; its
message is one line that names the file, the line and the fix. `main()` functions catch
`UserError` (and only it), print the message and exit `EXIT_REFUSED` (2): the user never sees a
traceback for their own mistake, and a real bug still shows one.

`EXIT_CODES` says what each status of each command means; the commands return these constants,
and `sft/README.md`, "Exit statuses", is `exit_code_table()` (tests/test_docs.py checks both).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable

EXIT_OK = 0
EXIT_FAILED = 1  # the work started and did not finish: a bad row found while reading, a part that failed
EXIT_REFUSED = 2  # the user's options, inputs, outputs or machine, in one line that names the fix (argparse: 2 too)

_REFUSED = "refused"
EXIT_CODES: dict[str, dict[str, str]] = {
    "sft/prepare_data.py": {
        "0": "train.parquet, val.parquet and manifest.json written",
        "1": "a bad row under `--on-error fail`, or no row left for training (only manifest.json and the rejects "
             "written)",
        "2": f"{_REFUSED}: options, inputs, output directory, a full disk or a missing permission",
    },
    "scripts/run_sft_training.sh, scripts/run_sft_peft.sh (sft/launcher.py)": {
        "0": "trained to the end, stopped by `SFT_STOP_FILE` after its checkpoint, or `DRY_RUN=1` composed the config",
        "2": f"{_REFUSED}, before torchrun starts: a setting, an override, the training files, OUTPUT_DIR in use, "
             "a verl whose replaced functions changed",
        "N": "training failed (N not 0): N is the exit status of the first training process that failed (1 when a signal "
             "ended it); rerunning resumes from the newest complete checkpoint",
        "128+N": "torchrun stopped by signal N (130: Ctrl-C, 143: SIGTERM); rerunning resumes",
    },
    "sft/export.py (scripts/export_checkpoint.sh)": {
        "0": "model exported",
        "2": f"{_REFUSED}: the checkpoint, the output directory, a shard that holds more than weights, a changed verl",
    },
    "sft/evaluate.py": {
        "0": "results, summary (and comparison with `--baseline`) written",
        "2": f"{_REFUSED}: the model, the problems, the output directory, `--baseline`",
    },
    "sft/generate.py": {
        "0": "every shard written (or already there)",
        "2": f"{_REFUSED}: the model, the problems, the settings, a rerun with other settings",
    },
    "scripts/gpu_check.sh (scripts/gpu_check.py)": {
        "0": "every part passed",
        "1": "a part failed or was not run (the table and gpu_check.json say which and why)",
        "2": f"{_REFUSED}: no GPU visible (without `--cpu-tiny`), options",
    },
    "scripts/setup_env.sh": {
        "0": "the environment is installed, or already up to date",
        "1": "the install failed (pip, the check of the machine's torch for an offline install, or the import check after it)",
        "2": f"{_REFUSED}: `PYTHON` missing or older than 3.10, `WHEELHOUSE`, a requirements file",
    },
    "scripts/convert_jsonl_to_parquet.py": {
        "0": "the Parquet file written",
        "1": "a bad row under `--on-error fail` (nothing written)",
        "2": f"{_REFUSED}: the input, the output, a full disk or a missing permission",
    },
    "sft/plot_training.py": {"0": "plot written", "2": f"{_REFUSED}: the log cannot be read or holds no losses"},
    "sft/rounds.py": {"0": "no held-out prompt in the training data (`--check-heldout`), or the table written",
                      "2": f"{_REFUSED}: a held-out prompt in the training data, an unreadable file"},
}


def exit_code_table() -> str:
    """`EXIT_CODES` as the Markdown table of sft/README.md."""
    lines = ["| Command | Exit status | Meaning |", "|---|---|---|"]
    for command, codes in EXIT_CODES.items():
        shown = re.sub(r"([\w./-]+\.(?:py|sh))", r"`\1`", command)
        lines += [f"| {shown if i == 0 else ''} | {code} | {meaning} |" for i, (code, meaning) in enumerate(codes.items())]
    return "\n".join(lines)


class UserError(Exception):
    """A mistake in the user's data, template or settings; the message says what to do."""


def exit_on_user_error(main: Callable[[], int | None], prefix: str) -> int:
    """Run `main`; on UserError print `prefix: message` to stderr and return EXIT_REFUSED."""
    try:
        return main() or EXIT_OK
    except UserError as exc:
        print(f"{prefix}: {exc}", file=sys.stderr)
        return EXIT_REFUSED
