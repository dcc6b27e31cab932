"""Repository-level promises: the README's commands, CI and the shipped scripts stay consistent."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import REPO_ROOT


def _readme_quick_start() -> list[str]:
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(?:bash|sh)?\n(.*?)```", section, re.DOTALL)


def test_readme_quick_start_is_two_commands_and_ci_runs_the_test_command():
    blocks = _readme_quick_start()
    commands = [line.strip() for block in blocks for line in block.splitlines()
                if line.strip() and not line.strip().startswith("#")]
    assert len(commands) == 2, commands
    setup_and_demo, test_command = commands
    assert "scripts/setup_env.sh" in setup_and_demo and "sft/example_train.sh" in setup_and_demo
    ci_lines = [line.strip() for line in (REPO_ROOT / ".ci/run").read_text().splitlines()]
    assert test_command in ci_lines, f"CI does not run the README's test command: {test_command}"
    assert "scripts/setup_env.sh" in ci_lines  # CI installs from the project's own files first


def test_every_shell_script_is_strict_and_executable():
    scripts = [p for p in REPO_ROOT.glob("**/*.sh") if ".venv" not in p.parts] + list(REPO_ROOT.glob("slurm/*.slurm"))
    scripts.append(REPO_ROOT / ".ci/run")
    for script in scripts:
        text = script.read_text()
        if script.parent.name == "lib":
            continue  # sourced libraries inherit the caller's options
        assert text.startswith("#!/usr/bin/env bash"), script
        assert "set -euo pipefail" in text, script
        assert script.stat().st_mode & 0o111, f"{script} is not executable"


def test_python_scripts_have_help():
    for script in ["sft/demo/tiny_model.py", "sft/text/math_answers.py"]:
        result = subprocess.run([sys.executable, str(REPO_ROOT / script), "--help"],
                                capture_output=True, text=True, cwd=REPO_ROOT)
        assert result.returncode == 0 and "usage:" in result.stdout, (script, result.stderr[-500:])
