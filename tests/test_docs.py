"""The docs match the code: every setting and flag is documented, and the documented commands run.

Run: .venv/bin/python -m pytest -q tests/test_docs.py

- Every environment variable a shell script defaults (`NAME="${NAME:-...}"`, `: "${NAME:=...}"`),
  every setting of the launchers (the table in sft/launch/settings.py) and every long
  option of a Python command-line script appears in sft/README.md as inline code (`NAME`,
  `--flag`, or `NAME=...`, `--flag VALUE`).
- Every command in the ```bash blocks of sft/SFT_QUICKSTART.md, README.md and sft/README.md is
  checked the way a user would run it, without training and without a GPU, a cluster or the hub:
  * scripts/run_sft_*.sh lines run with DRY_RUN=1. The doc's own model and data paths point to a
    tiny model and tiny Parquet files in a scratch directory.
  * sbatch lines run the batch file with stand-ins for srun, scontrol and squeue. The job
    environment comes from --export, and SLURM_NNODES comes from --nodes.
  * Python commands (python -m sft.X, python sft/X.py, scripts/export_checkpoint.sh) must accept
    every option the line uses, according to their --help.
  * Other repository scripts exist, are executable, pass `bash -n`, and read the settings the line sets.
  Also: the runs of a sweep get distinct output directories, and the quick start exports the
  directories its training commands write.
- The exit-status table of sft/README.md is `exit_code_table()` of sft/common/errors.py, the commands
  return its constants, and each command refuses one mistake with the status the table gives.
  The dry runs are split in two so that verl is imported once rather than once per command (the
  import takes several seconds). First the real bash launcher or batch file runs, with PYTHON set
  to a stand-in that records the environment and arguments it gets for `python -m sft.launcher`.
  Then a single Python process runs `sft.launcher.main` on each record. That is the code
  `python -m sft.launcher` runs, DRY_RUN included. A slow test checks that the split gives the
  same composed config as a real end-to-end dry run.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import REPO_ROOT, launcher_env, write_chat_parquet
from sft.launch.settings import SETTINGS

SFT_README = REPO_ROOT / "sft" / "README.md"
QUICKSTART = REPO_ROOT / "sft" / "SFT_QUICKSTART.md"
# Docs whose ```bash blocks are run (launchers, batch files) or checked (Python commands).
COMMAND_DOCS = [QUICKSTART, REPO_ROOT / "README.md", SFT_README]

SHELL_SCRIPT_GLOBS = ("scripts/*.sh", "scripts/lib/*.sh", "sft/*.sh", "slurm/*.slurm", "slurm/lib/*.sh")
# Every setting of the launchers: defaulted in their table (Python), not in bash.
LAUNCHER_SETTINGS = {row.name: row.read_by or "sft/launch/settings.py" for row in SETTINGS}
# Variables that are defaulted in a script but are internal, so users never set them:
# name -> why. Keep this short. Anything a user can set belongs in sft/README.md instead.
UNDOCUMENTED_BY_DESIGN: dict[str, str] = {}

_SHELL_DEFAULT = re.compile(r'\b([A-Z_][A-Z0-9_]*)="\$\{\1:-|:\s+"\$\{([A-Z_][A-Z0-9_]*):=')
_LAUNCHERS = ("scripts/run_sft_training.sh", "scripts/run_sft_peft.sh")
_PYTHONS = ("python", "python3", ".venv/bin/python")
# Repository scripts that pass all their arguments, --help included, to a Python command (sft.export).
_HELP_WRAPPERS = ("scripts/export_checkpoint.sh",)
_REPO_PATH = re.compile(r"^(?:\./)?((?:scripts|sft|slurm|tests)/[\w./-]+\.(?:sh|py|slurm))$")


# ---------------------------------------------------------------------------------------------
# Reading the docs.


def _inline_code(markdown: str) -> set[str]:
    """Inline code spans of `markdown`, outside fenced blocks."""
    prose = re.sub(r"^```.*?^```", "", markdown, flags=re.DOTALL | re.MULTILINE)
    return {span.strip() for span in re.findall(r"`([^`\n]+)`", prose)}


def _documented(name: str, spans: set[str]) -> bool:
    """`name` is an inline code span, or the start of one (`NAME=value`, `--flag VALUE`)."""
    return any(span == name or span.startswith((name + "=", name + " ")) for span in spans)


def _github_anchor(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@dataclass
class DocCommand:
    """One simple command of a ```bash block: `ENV=value ... program args`."""

    doc: Path
    line: int
    text: str  # the logical line, loop variable substituted
    env: dict[str, str]
    argv: list[str]
    loop: str | None = None  # "doc:line" of the enclosing for loop
    loop_value: str = ""  # this copy's value of the loop variable
    problems: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        value = f"[{self.loop_value}]" if self.loop else ""
        return f"{self.doc.relative_to(REPO_ROOT)}:{self.line}:{self.argv[0] if self.argv else ''}{value}"

    @property
    def key(self) -> str:
        return f"{self.id} {self.text}"

    @property
    def program(self) -> str:
        match = _REPO_PATH.match(self.argv[0]) if self.argv else None
        return match.group(1) if match else (self.argv[0] if self.argv else "")

    @property
    def kind(self) -> str:
        if self.program in _LAUNCHERS:
            return "launcher"
        if self.program == "sbatch":
            return "sbatch"
        if self.program in _PYTHONS and len(self.argv) > 2:
            if (self.argv[1] == "-m" and self.argv[2].startswith("sft.")) or _REPO_PATH.match(self.argv[1]):
                return "python"
        if self.program in _HELP_WRAPPERS:
            return "python"
        if _REPO_PATH.match(self.program):
            return "script"
        return "external"  # mkdir, hf, source, ...: not ours to check


def _bash_blocks(path: Path) -> list[tuple[int, list[str]]]:
    """(line number of the first line, lines) of every ```bash block."""
    blocks, current, start = [], None, 0
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if current is None and re.fullmatch(r"```(bash|sh|shell)\s*", line):
            current, start = [], number + 1
        elif current is not None and line.strip() == "```":
            blocks.append((start, current))
            current = None
        elif current is not None:
            current.append(line)
    return blocks


def _tokens(text: str) -> list[str]:
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    return list(lexer)


def doc_commands(path: Path) -> list[DocCommand]:
    """Every simple command in the ```bash blocks of `path`; for-loop bodies once per value."""
    commands = []
    for start, lines in _bash_blocks(path):
        logical: list[tuple[int, str]] = []
        for offset, line in enumerate(lines):
            if logical and logical[-1][1].endswith("\\"):
                logical[-1] = (logical[-1][0], logical[-1][1][:-1] + " " + line.strip())
            else:
                logical.append((start + offset, line.strip()))
        loop: tuple[str, list[str], str] | None = None  # (variable, values, id)
        for number, text in logical:
            if not text or text.startswith("#"):
                continue
            header = re.fullmatch(r"for (\w+) in ([^;]+); do", text)
            if header:
                assert loop is None, f"{path.name}:{number}: nested loops are not supported by this test"
                loop = (header.group(1), header.group(2).split(), f"{path.name}:{number}")
                continue
            if text == "done":
                loop = None
                continue
            if not loop:
                commands += _simple_commands(path, number, text)
                continue
            pattern = re.compile(r"\$(?:\{%s\}|%s(?!\w))" % (loop[0], loop[0]))
            for value in loop[1]:
                for command in _simple_commands(path, number, pattern.sub(value, text)):
                    command.loop, command.loop_value = loop[2], value
                    commands.append(command)
    return commands


def _simple_commands(path: Path, number: int, text: str) -> list[DocCommand]:
    commands, segment = [], []
    for token in _tokens(text) + [";"]:
        if token not in (";", "&&", "||", "|", "&"):
            segment.append(token)
            continue
        if segment:
            env, index = {}, 0
            while index < len(segment) and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", segment[index]):
                name, value = segment[index].split("=", 1)
                env[name] = value
                index += 1
            command = DocCommand(path, number, text, env, segment[index:])
            if "$" in " ".join(segment):
                command.problems.append("a shell expansion this test cannot evaluate ($...)")
            if command.program == "sbatch":
                if not any(a.endswith(".slurm") for a in command.argv):
                    command.problems.append("no batch file (*.slurm) on the line")
                for option in command.argv:
                    if option.startswith("--export=") and "ALL" not in option.split("=", 1)[1].split(","):
                        command.problems.append("--export without ALL: the job would lose PATH and every other variable")
            commands.append(command)
        segment = []
    return commands


ALL_COMMANDS = [command for doc in COMMAND_DOCS for command in doc_commands(doc)]
RUN_COMMANDS = [c for c in ALL_COMMANDS if c.kind in ("launcher", "sbatch")]
PYTHON_COMMANDS = [c for c in ALL_COMMANDS if c.kind == "python"]
SCRIPT_COMMANDS = [c for c in ALL_COMMANDS if c.kind == "script"]


# ---------------------------------------------------------------------------------------------
# --help of the Python command-line interfaces.


@functools.lru_cache(maxsize=None)
def _help(*command: str) -> tuple[int, str]:
    """(exit code, output) of `command --help`, with lines wide enough that argparse does not wrap."""
    env = {**os.environ, "COLUMNS": "1000", "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run([*command, "--help"], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    return result.returncode, result.stdout + result.stderr


def _help_options(help_text: str) -> set[str]:
    """Option strings (`-o`, `--output-dir`) of an argparse --help text."""
    options = set()
    for line in help_text.splitlines():
        if re.match(r"^ {1,8}-", line):
            invocation = re.split(r"\s{2,}", line.strip(), maxsplit=1)[0]
            options.update(re.findall(r"(?<![\w-])--?[A-Za-z][\w-]*", invocation))
    return options


def _cli_scripts() -> list[str]:
    """Python files under sft/ and scripts/ that parse command-line options with argparse."""
    return sorted(str(p.relative_to(REPO_ROOT)) for pattern in ("sft/*.py", "scripts/*.py")
                  for p in REPO_ROOT.glob(pattern) if "ArgumentParser(" in p.read_text())


# ---------------------------------------------------------------------------------------------
# (a) and (b): everything a user can set is documented in sft/README.md.


def test_every_environment_variable_the_scripts_default_is_documented():
    defaults: dict[str, list[str]] = {}
    scripts = [p for pattern in SHELL_SCRIPT_GLOBS for p in sorted(REPO_ROOT.glob(pattern))]
    assert len(scripts) >= 8, scripts
    for script in scripts:
        for number, line in enumerate(script.read_text().splitlines(), 1):
            for match in _SHELL_DEFAULT.finditer(line):
                defaults.setdefault(match.group(1) or match.group(2), []).append(
                    f"{script.relative_to(REPO_ROOT)}:{number}")
    assert {"MAX_REQUEUES", "DEMO_DIR", "PYTHON"} <= defaults.keys(), "the pattern finds nothing"
    assert {"MODEL_NAME", "LORA_RANK", "VAL_FILE", "SFT_STOP_FILE"} <= LAUNCHER_SETTINGS.keys()
    for name, reader in LAUNCHER_SETTINGS.items():
        defaults.setdefault(name, []).append(reader)
    stale = sorted(set(UNDOCUMENTED_BY_DESIGN) - defaults.keys())
    assert not stale, f"UNDOCUMENTED_BY_DESIGN names variables no script defaults any more: {stale}"

    spans = _inline_code(SFT_README.read_text())
    missing = {name: where for name, where in sorted(defaults.items())
               if name not in UNDOCUMENTED_BY_DESIGN and not _documented(name, spans)}
    assert not missing, (
        f"{len(missing)} environment variable(s) missing from sft/README.md (document each as `NAME`):\n"
        + "\n".join(f"  {name:<20} set in {', '.join(where[:3])}" for name, where in missing.items())
    )


def test_every_command_line_option_is_documented():
    scripts = _cli_scripts()
    assert {"sft/prepare_data.py", "sft/evaluate.py", "sft/export.py", "scripts/benchmark_training.py"} <= set(scripts)
    with ThreadPoolExecutor(max_workers=4) as pool:
        helps = dict(zip(scripts, pool.map(lambda s: _help(sys.executable, str(REPO_ROOT / s)), scripts)))
    spans = _inline_code(SFT_README.read_text())
    missing = {}
    for script, (code, text) in helps.items():
        assert code == 0 and "usage:" in text, f"{script} --help failed:\n{text[-2000:]}"
        long_options = {o for o in _help_options(text) if o.startswith("--")} - {"--help"}
        assert long_options or script == "sft/text/math_answers.py", f"no options parsed from {script} --help"
        undocumented = sorted(o for o in long_options if not _documented(o, spans))
        if undocumented:
            missing[script] = undocumented
    assert not missing, (
        f"{sum(map(len, missing.values()))} option(s) missing from sft/README.md (document each as `--option`):\n"
        + "\n".join(f"  {script}: {' '.join(options)}" for script, options in missing.items())
    )


def test_quickstart_links_point_to_existing_sections():
    text = QUICKSTART.read_text()
    links = re.findall(r"\]\(([^)#\s]+)(?:#([^)\s]+))?\)", text)
    assert any(anchor for _, anchor in links), "the quick start links to no section of sft/README.md"
    for target, anchor in links:
        if "://" in target:
            continue
        path = (QUICKSTART.parent / target).resolve()
        assert path.is_file(), f"SFT_QUICKSTART.md links to a missing file: {target}"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", path.read_text(), re.MULTILINE)
            assert anchor in {_github_anchor(h) for h in headings}, (
                f"SFT_QUICKSTART.md links to {target}#{anchor}, which has no such section; "
                f"sections: {sorted(_github_anchor(h) for h in headings)}")


# ---------------------------------------------------------------------------------------------
# (c): the docs' commands run.


def test_the_quickstart_shows_every_common_configuration():
    """So the checks below cannot pass because the parser silently found nothing."""
    mine = [c for c in ALL_COMMANDS if c.doc == QUICKSTART]
    programs = {c.program for c in mine} | {c.argv[2] for c in mine if c.kind == "python" and c.argv[1] == "-m"}
    assert {"scripts/run_sft_training.sh", "scripts/run_sft_peft.sh", "sbatch", "sft/example_train.sh",
            "scripts/setup_env.sh", "sft.evaluate"} <= programs, programs
    batch_files = {a for c in mine if c.kind == "sbatch" for a in c.argv if a.endswith(".slurm")}
    assert batch_files == {"slurm/sft_training.slurm", "slurm/sft_peft.slurm"}
    assert any(a.startswith("--nodes=") for c in mine if c.kind == "sbatch" for a in c.argv), "no multi-node job"
    assert any(c.loop for c in mine if c.kind == "launcher") and any(c.loop for c in mine if c.kind == "sbatch")
    assert any("sft/prepare_data.py" in c.argv for c in mine)
    assert any("--baseline" in c.argv for c in mine)
    assert any(c.env.get("DRY_RUN") == "1" for c in mine)


@pytest.mark.parametrize("command", PYTHON_COMMANDS, ids=lambda c: c.id)
def test_documented_python_command_accepts_its_options(command):
    assert not command.problems, f"{command.id}: {command.problems}: {command.text}"
    if command.program in _HELP_WRAPPERS:
        help_command = (str(REPO_ROOT / command.program),)
        args = command.argv[1:]
    elif command.argv[1] == "-m":
        help_command = (sys.executable, "-m", command.argv[2])
        args = command.argv[3:]
    else:
        script = _REPO_PATH.match(command.argv[1]).group(1)
        assert (REPO_ROOT / script).is_file(), f"{command.id}: no such script {script}"
        help_command = (sys.executable, str(REPO_ROOT / script))
        args = command.argv[2:]
    code, text = _help(*help_command)
    assert code == 0, f"{command.id}: `{' '.join(help_command)} --help` failed:\n{text[-2000:]}"
    options = _help_options(text)
    used = {a.split("=", 1)[0] for a in args if re.match(r"^--?[A-Za-z]", a)}
    unknown = sorted(used - options)
    assert not unknown, f"{command.id}: {command.text}\nuses options its --help does not list: {unknown}"


@pytest.mark.parametrize("command", SCRIPT_COMMANDS, ids=lambda c: c.id)
def test_documented_script_exists_and_knows_its_settings(command):
    assert not command.problems, f"{command.id}: {command.problems}: {command.text}"
    script = REPO_ROOT / command.program
    assert script.is_file() and os.access(script, os.X_OK), f"{command.id}: {command.program} is missing or not executable"
    syntax = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
    # Settings on the line must be ones the script reads (its header documents each one).
    unknown = sorted(name for name in command.env if not re.search(rf"\b{name}\b", script.read_text()))
    assert not unknown, f"{command.id}: {command.program} does not read {unknown}"


# ---------------------------------------------------------------------------------------------
# Dry runs of the launcher and sbatch lines.

_PYTHON_STAND_IN = """#!{python}
# Stand-in for PYTHON: records what `python -m sft.launcher` would get; runs anything else.
import json, os, sys
if sys.argv[1:3] == ["-m", "sft.launcher"]:
    with open(os.environ["DOCS_CAPTURE"], "w") as capture:
        json.dump({{"argv": sys.argv[3:], "env": dict(os.environ), "cwd": os.getcwd()}}, capture)
    sys.exit(0)
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
"""
_FAKE_SRUN = """#!/usr/bin/env bash
# Stand-in for srun: runs the command once (this node's task).
while [[ "$1" == --* ]]; do shift; done
exec "$@"
"""
_FAKE_SCONTROL = """#!/usr/bin/env bash
if [[ "$1 $2" == "show hostnames" ]]; then for ((i = 1; i <= SLURM_NNODES; i++)); do printf 'node%02d\\n' "$i"; done; fi
"""
# Runs sft.launcher.main on every record in one process: verl is imported once.
_LAUNCHER_RUNNER = """
import contextlib, io, json, os, sys, traceback
sys.path.insert(0, sys.argv[3])
from sft import launcher
results = []
for job in json.load(open(sys.argv[1])):
    out, err = io.StringIO(), io.StringIO()
    if job["env"].get("DRY_RUN") != "1":  # main() would start torchrun
        results.append({"rc": "not a dry run", "stdout": "", "stderr": ""})
        continue
    os.chdir(job["cwd"])
    os.environ.clear()
    os.environ.update(job["env"])
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = launcher.main(job["argv"])
        except SystemExit as exc:
            rc = exc.code
        except Exception:
            rc = "exception"
            traceback.print_exc()
    results.append({"rc": rc, "stdout": out.getvalue(), "stderr": err.getvalue()})
json.dump(results, open(sys.argv[2], "w"))
"""


@dataclass
class DryRun:
    shell: subprocess.CompletedProcess  # the bash launcher or batch file
    launcher_rc: int | str | None = None  # sft.launcher.main (None: it was never reached)
    output: str = ""
    argv: list[str] | None = None  # what the bash side passed to sft.launcher

    def report(self) -> str:
        return f"bash (exit {self.shell.returncode}):\n{self.shell.stdout[-3000:]}\nlauncher (exit {self.launcher_rc}):\n{self.output[-3000:]}"

    def composed(self) -> dict[str, str]:
        section = self.output.split("composed config", 1)[-1]
        return dict(re.findall(r"^  ([a-z_.]+) = (.*)$", section, re.MULTILINE))


class Sandbox:
    """A scratch HOME and working directory with tiny data, a tiny model under every model path a
    doc names, and stand-ins for PYTHON, srun, scontrol and squeue."""

    def __init__(self, root: Path, tiny_model: Path):
        self.root, self.tiny_model = root, tiny_model
        self.home, self.work, self.bin = root / "home", root / "work", root / "bin"
        for directory in (self.home, self.work, self.bin, root / "captures"):
            directory.mkdir(parents=True)
        self.data = self.work / "data" / "sft"
        write_chat_parquet(self.data / "train.parquet", 256, seed=0)  # enough rows for TRAIN_BATCH_SIZE=64 on 8 processes
        write_chat_parquet(self.data / "val.parquet", 128, seed=1)
        for name, text in (("python-stand-in", _PYTHON_STAND_IN.format(python=sys.executable)), ("srun", _FAKE_SRUN),
                           ("scontrol", _FAKE_SCONTROL), ("squeue", "#!/usr/bin/env bash\n")):
            (self.bin / name).write_text(text)
            (self.bin / name).chmod(0o755)

    def path(self, value: str) -> Path:
        """Where `value` (a path as the doc writes it) is, seen from the working directory."""
        if value.startswith("~/"):
            return self.home / value[2:]
        return self.work / value  # an absolute value stays absolute

    def inside(self, path: Path) -> bool:
        return path.resolve().is_relative_to(self.root.resolve())

    def model(self, value: str) -> str:
        """A model path of the doc, made to exist as the tiny model (a Hub id is kept: a dry run reads nothing)."""
        if not value.startswith(("/", ".", "~")) and value.count("/") == 1 and not (self.work / value).exists():
            return value
        path = self.path(value)
        if not self.inside(path):  # e.g. /models/X: use the same directory name inside the sandbox
            path, value = self.root / "models" / path.name, str(self.root / "models" / path.name)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.symlink_to(self.tiny_model, target_is_directory=True)
        return value

    def parquet(self, value: str) -> str:
        """A data file of the doc, made to exist as the tiny data."""
        path = self.path(value)
        if not self.inside(path):
            return str(self.data / path.name)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(self.data / ("val.parquet" if "val" in path.name else "train.parquet"), path)
        return value

    def settings(self, env: dict[str, str], expand_tilde: bool) -> dict[str, str]:
        """The doc's settings with its model and data paths made to exist. `expand_tilde`: bash expands
        `NAME=~/x` in a command prefix; sbatch --export passes `~` on literally."""
        env = dict(env)
        for name, value in env.items():
            if expand_tilde and value.startswith("~/"):
                env[name] = str(self.home / value[2:])
        if env.get("MODEL_NAME"):
            env["MODEL_NAME"] = self.model(env["MODEL_NAME"])
        for name in ("TRAIN_FILE", "VAL_FILE"):
            if env.get(name):
                env[name] = self.parquet(env[name])
        if env.get("DEVICE", "").startswith("cuda"):
            env["DEVICE"] = "cpu"  # no GPU here; DEVICE=cuda would stop the launcher
        return env

    def base_env(self, capture: Path) -> dict[str, str]:
        env = {k: v for k, v in launcher_env().items() if not k.startswith("SLURM_")}
        del env["TRAIN_BATCH_SIZE"]  # the docs' commands run with the launchers' own default
        env.update({"HOME": str(self.home), "HF_HUB_OFFLINE": "1", "PATH": f"{self.bin}:{env['PATH']}",
                    "PYTHON": str(self.bin / "python-stand-in"), "DOCS_CAPTURE": str(capture)})
        return env


def _batch_file_index(command: DocCommand) -> int:
    return next(i for i, a in enumerate(command.argv) if a.endswith(".slurm"))


def _overrides(command: DocCommand) -> list[str]:
    """The Hydra overrides on the line: after the launcher, or after the batch file."""
    return command.argv[1:] if command.kind == "launcher" else command.argv[_batch_file_index(command) + 1:]


def _translated(overrides: list[str]) -> list[str]:
    """The overrides as the launcher passes them to verl: old key names and JSON values translated
    (a `+`/`++` prefix may differ: the launcher's own overrides add keys first)."""
    from sft.launch.verl_keys import composed_keys, translate

    return [item for item in translate(overrides, composed_keys())[0] if isinstance(item, str)]


def _sbatch_nodes(command: DocCommand) -> int:
    for option in command.argv[1:_batch_file_index(command)]:
        if option.startswith("--nodes="):
            return int(option.split("=", 1)[1])
    batch_file = (REPO_ROOT / command.argv[_batch_file_index(command)]).read_text()
    return int(re.search(r"^#SBATCH --nodes=(\d+)", batch_file, re.MULTILINE).group(1))


def _shell_invocation(command: DocCommand, sandbox: Sandbox, capture: Path) -> tuple[list[str], dict[str, str]]:
    """(argv, environment) that run the doc command's launcher or batch file with DRY_RUN=1 in the sandbox."""
    env = sandbox.base_env(capture)
    env.update(sandbox.settings(command.env, expand_tilde=True))
    if command.kind == "launcher":
        argv = [str(REPO_ROOT / command.program), *_overrides(command)]
    else:
        batch_file = REPO_ROOT / command.argv[_batch_file_index(command)]
        for option in command.argv[1:_batch_file_index(command)]:
            if option.startswith("--export="):
                exported = dict(item.split("=", 1) for item in option.split("=", 1)[1].split(",") if "=" in item)
                env.update(sandbox.settings(exported, expand_tilde=False))
        job_name = re.search(r"^#SBATCH --job-name=(\S+)", batch_file.read_text(), re.MULTILINE).group(1)
        nodes = _sbatch_nodes(command)
        # A job runs in the directory it was submitted from; here that is the sandbox, so REPO_DIR
        # names the checkout (as --export=ALL,REPO_DIR=... does when submitting from elsewhere).
        env.update({"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": job_name, "SLURM_NNODES": str(nodes),
                    "SLURM_JOB_NODELIST": f"node[01-{nodes:02d}]", "SLURM_SUBMIT_DIR": str(sandbox.work),
                    "REPO_DIR": str(REPO_ROOT)})
        argv = ["bash", str(batch_file), *_overrides(command)]
    env["DRY_RUN"] = "1"  # never train
    return argv, env


@dataclass
class DocDryRuns:
    sandbox: Sandbox
    runs: dict[str, DryRun]  # by DocCommand.key

    def of(self, command: DocCommand) -> DryRun:
        return self.runs[command.key]


@pytest.fixture(scope="module")
def dry_runs(tmp_path_factory, tiny_model_dir) -> DocDryRuns:
    """Every launcher and sbatch line of the docs, run with DRY_RUN=1."""
    sandbox = Sandbox(tmp_path_factory.mktemp("docs") / "sandbox", tiny_model_dir)
    runnable = [c for c in RUN_COMMANDS if not c.problems and not {"--help", "-h"} & set(c.argv)]
    captures = [sandbox.root / "captures" / f"{n}.json" for n in range(len(runnable))]
    # Prepared one by one (they create the model links), run side by side.
    invocations = [_shell_invocation(c, sandbox, capture) for c, capture in zip(runnable, captures)]

    def run_shell(invocation):
        argv, env = invocation
        return subprocess.run(argv, env=env, cwd=sandbox.work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=120)

    with ThreadPoolExecutor(max_workers=8) as pool:  # a batch file mostly sleeps: it polls srun every 2 s
        shells = list(pool.map(run_shell, invocations))
    runs, jobs = {}, []
    for command, shell, capture in zip(runnable, shells, captures):
        run = runs[command.key] = DryRun(shell)
        if capture.exists():
            job = json.loads(capture.read_text())
            run.argv = job["argv"]
            jobs.append((run, job))
    jobs_file, results_file = sandbox.root / "jobs.json", sandbox.root / "results.json"
    jobs_file.write_text(json.dumps([job for _, job in jobs]))
    runner = subprocess.run([sys.executable, "-c", _LAUNCHER_RUNNER, str(jobs_file), str(results_file), str(REPO_ROOT)],
                            capture_output=True, text=True, timeout=600)
    assert runner.returncode == 0, runner.stdout[-3000:] + runner.stderr[-3000:]
    for (run, _), result in zip(jobs, json.loads(results_file.read_text())):
        run.launcher_rc, run.output = result["rc"], result["stdout"] + result["stderr"]
    return DocDryRuns(sandbox, runs)


@pytest.mark.slow
@pytest.mark.parametrize("command", RUN_COMMANDS, ids=lambda c: c.id)
def test_documented_launch_command_passes_a_dry_run(command, dry_runs):
    assert not command.problems, f"{command.id}: {command.problems}: {command.text}"
    target = command.program if command.kind == "launcher" else command.argv[_batch_file_index(command)]
    assert (REPO_ROOT / target).is_file(), f"{command.id}: no such file {target}"
    syntax = subprocess.run(["bash", "-n", str(REPO_ROOT / target)], capture_output=True, text=True)
    assert syntax.returncode == 0, f"{target}: {syntax.stderr}"
    if {"--help", "-h"} & set(command.argv):
        result = subprocess.run([str(REPO_ROOT / target), "--help"], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and "MODEL_NAME" in result.stdout, result.stdout + result.stderr
        return
    run = dry_runs.of(command)
    assert run.shell.returncode == 0, f"{command.id}: {command.text}\n{run.report()}"
    assert run.argv is not None, f"{command.id}: the launcher was never reached\n{run.report()}"
    assert run.launcher_rc == 0, f"{command.id}: {command.text}\n{run.report()}"
    assert "[verl-sft] composed config" in run.output and "DRY_RUN=1: verl's Hydra config composes" in run.output
    torchrun = run.output.split("[verl-sft] command:\n", 1)[1].splitlines()[0]
    overrides = _translated(_overrides(command))
    if overrides:  # the doc's Hydra overrides (old key names translated) reach torchrun last, so they win
        last = [item.lstrip("+") for item in shlex.split(torchrun)[-len(overrides):]]
        assert last == [item.lstrip("+") for item in overrides], f"{command.id}: {overrides} are not last in\n{torchrun}"
    if command.kind == "sbatch":  # the topology comes from Slurm
        nodes = _sbatch_nodes(command)
        assert f"--nnodes={nodes} " in torchrun and "--rdzv-backend=c10d" in torchrun and "--rdzv-id=4242" in torchrun, torchrun


@pytest.mark.slow
def test_every_run_of_a_sweep_has_its_own_output_directory(dry_runs):
    loops: dict[str, list[str]] = {}
    for command in RUN_COMMANDS:
        run = dry_runs.runs.get(command.key)
        if command.loop and run and run.launcher_rc == 0:
            loops.setdefault(command.loop, []).append(run.composed()["trainer.default_local_dir"])
    assert loops, "no sweep found in the docs"
    for loop, directories in loops.items():
        assert len(directories) > 1 and len(set(directories)) == len(directories), (
            f"{loop}: runs of the sweep share an OUTPUT_DIR and would resume each other's checkpoints: {directories}")


@pytest.mark.slow
def test_the_quickstart_exports_the_checkpoints_its_training_commands_write(dry_runs):
    work = dry_runs.sandbox.work.resolve()
    written = {Path(run.composed()["trainer.default_local_dir"]).resolve()
               for run in dry_runs.runs.values() if run.launcher_rc == 0}
    exports = [c for c in PYTHON_COMMANDS if c.doc == QUICKSTART
               and (c.program in _HELP_WRAPPERS or c.argv[1:3] == ["-m", "sft.export"])]
    assert exports, "the quick start shows no export"
    for command in exports:
        args = command.argv[1:] if command.program in _HELP_WRAPPERS else command.argv[3:]
        checkpoint = (work / next(a for a in args if not a.startswith("-"))).resolve()
        if re.fullmatch(r"global_step_\d+", checkpoint.name):
            checkpoint = checkpoint.parent
        assert checkpoint in written, (
            f"{command.id}: exports {checkpoint.relative_to(work)}, which no training command of the quick start "
            f"writes; they write: {sorted(str(p.relative_to(work)) for p in written if p.is_relative_to(work))}")


def test_every_repository_script_the_docs_name_exists():
    named = {_REPO_PATH.match(a).group(1) for c in ALL_COMMANDS for a in c.argv if _REPO_PATH.match(a)}
    assert named, "the docs' commands name no script"
    assert not sorted(p for p in named if not (REPO_ROOT / p).is_file()), "the docs name scripts that do not exist"


@pytest.mark.slow
def test_split_dry_run_composes_what_a_real_dry_run_composes(dry_runs):
    """The harness above against the real thing: one quick start command, end to end in one process chain."""
    command = next(c for c in RUN_COMMANDS if c.doc == QUICKSTART and c.kind == "launcher" and not c.loop)
    sandbox = dry_runs.sandbox
    argv, env = _shell_invocation(command, sandbox, sandbox.root / "unused.json")
    env["PYTHON"] = sys.executable
    result = subprocess.run(argv, env=env, cwd=sandbox.work,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:]
    real = DryRun(result, 0, result.stdout).composed()
    assert real and real == dry_runs.of(command).composed()


# ---------------------------------------------------------------------------------------------
# Exit statuses: the table is the code's, and each command returns what it documents.


def _sft_readme_table(header: str) -> str:
    lines = SFT_README.read_text().splitlines()
    first = lines.index(header)
    end = next(i for i in range(first, len(lines)) if not lines[i].startswith("|"))
    return "\n".join(lines[first:end])


def test_the_readme_exit_status_table_is_the_code_table():
    from sft.common.errors import exit_code_table

    assert _sft_readme_table("| Command | Exit status | Meaning |") == exit_code_table()


def _command_modules() -> dict[str, Path]:
    from sft.common.errors import EXIT_CODES

    return {path: REPO_ROOT / path for command in EXIT_CODES for path in re.findall(r"[\w/]+\.py", command)}


def test_the_commands_return_the_declared_statuses_not_numbers_of_their_own():
    """main() (and the _run it wraps) return EXIT_OK, EXIT_FAILED or EXIT_REFUSED, so the table cannot drift."""
    import ast

    modules = _command_modules()
    assert {"sft/prepare_data.py", "sft/launcher.py", "sft/export.py", "sft/evaluate.py", "sft/generate.py",
            "scripts/gpu_check.py"} <= set(modules)
    literal = []
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name in ("main", "_run"):
                literal += [f"{name}:{n.lineno}" for n in ast.walk(node) if isinstance(n, ast.Return)
                            and isinstance(n.value, ast.Constant) and isinstance(n.value.value, int)]
    assert not literal, f"return a constant of sft/common/errors.py instead: {literal}"


def _refusals(tmp_path: Path) -> dict[str, "tuple[callable, str]"]:
    """One refusal per command: (a call returning its exit status, a fragment of its one-line message)."""
    from conftest import launcher_env
    from sft import evaluate, export, generate, launcher, plot_training, prepare_data, rounds

    missing = str(tmp_path / "missing.jsonl")
    problems = tmp_path / "problems.jsonl"
    problems.write_text(json.dumps({"id": "p0", "prompt": "What is 1 + 1?", "answer": "2"}) + "\n")
    empty = tmp_path / "empty-wheelhouse"
    empty.mkdir()
    setup_env = {**os.environ, "PYTHON": sys.executable, "VENV_DIR": str(tmp_path / "venv"), "WHEELHOUSE": str(empty)}
    launch_env = {**launcher_env(TRAIN_FILE=str(tmp_path / "train.parquet"), OUTPUT_DIR=str(tmp_path / "out")),
                  "SFT_MODE": "full"}

    def script(path: str, *args: str, env=None):
        def run():
            done = subprocess.run([sys.executable, str(REPO_ROOT / path), *args] if path.endswith(".py")
                                  else [str(REPO_ROOT / path), *args], env=env, capture_output=True, text=True)
            sys.stderr.write(done.stderr)
            return done.returncode
        return run

    return {
        "sft/prepare_data.py": (lambda: prepare_data.main([missing, "-o", str(tmp_path / "data")]), "does not exist"),
        "scripts/run_sft_training.sh, scripts/run_sft_peft.sh (sft/launcher.py)":
            (lambda: launcher.main(["--"], env=launch_env), "TRAIN_FILE not found"),
        "sft/export.py (scripts/export_checkpoint.sh)": (lambda: export.main([str(tmp_path / "none")]),
                                                         "checkpoint not found"),
        "sft/evaluate.py": (lambda: evaluate.main([str(tmp_path), str(problems), "-o", str(tmp_path / "eval")]),
                            "is not a Hugging Face model directory"),
        "sft/generate.py": (lambda: generate.main([str(tmp_path), str(problems), "-o", str(tmp_path / "gen")]),
                            "error: "),
        "scripts/gpu_check.sh (scripts/gpu_check.py)": (script("scripts/gpu_check.py", "--work-dir", str(tmp_path / "g")),
                                                        "no GPU visible"),
        "scripts/setup_env.sh": (script("scripts/setup_env.sh", env=setup_env), "has no requirements.lock"),
        "scripts/convert_jsonl_to_parquet.py": (script("scripts/convert_jsonl_to_parquet.py", missing), "error: "),
        "sft/plot_training.py": (lambda: plot_training.main([missing, "-o", str(tmp_path / "loss.png")]),
                                 "cannot read"),
        "sft/rounds.py": (lambda: rounds.main(["--check-heldout", str(problems), "--training", missing]),
                          "no such file"),
    }


@pytest.mark.parametrize("command", list(__import__("sft.common.errors", fromlist=["EXIT_CODES"]).EXIT_CODES))
def test_each_command_refuses_with_its_documented_status(command, tmp_path, capsys):
    from sft.common.errors import EXIT_CODES, EXIT_REFUSED

    if command.startswith("scripts/gpu_check"):
        torch = pytest.importorskip("torch")
        if torch.cuda.is_available():
            pytest.skip("a GPU is visible: gpu_check would run, not refuse")
    call, message = _refusals(tmp_path)[command]
    status = call()
    err = capsys.readouterr().err
    assert status == EXIT_REFUSED and str(EXIT_REFUSED) in EXIT_CODES[command], (command, status, err[-2000:])
    assert message in err and "Traceback" not in err, err[-2000:]
    assert not (tmp_path / "venv").exists() and not (tmp_path / "out").exists()  # refused before any work
