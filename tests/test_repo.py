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


def _readme_tree() -> dict[str, str]:
    """{path: comment} of the README's commented file tree (directories end with "/")."""
    readme = (REPO_ROOT / "README.md").read_text()
    block = readme.split("## Files", 1)[1].split("```", 2)[1]
    entries, parents = {}, []  # parents: (indent, directory path)
    for line in block.splitlines()[1:]:
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        name, _, comment = line.strip().partition("  ")
        while parents and parents[-1][0] >= indent:
            parents.pop()
        path = (parents[-1][1] if parents else "") + name
        entries[path] = comment.strip()
        if name.endswith("/"):
            parents.append((indent, path))
    return entries


def _tracked(*folders: str) -> list[str]:
    listed = subprocess.run(["git", "ls-files", *folders], capture_output=True, text=True, cwd=REPO_ROOT, check=True)
    return [p for p in listed.stdout.split() if not p.endswith("__init__.py")]


def test_the_readme_file_tree_lists_every_product_file_with_a_comment():
    tree = _readme_tree()
    missing = [path for path in _tracked("sft", "scripts", "slurm") if path not in tree]
    assert not missing, f"files missing from the README's tree: {missing}"
    stale = [path for path in tree if not (REPO_ROOT / path).exists()]
    assert not stale, f"the README's tree names paths that do not exist: {stale}"
    uncommented = [path for path, comment in tree.items() if not comment]
    assert not uncommented, f"tree entries without a comment: {uncommented}"


_TOP_FOLDERS = ("sft/", "scripts/", "slurm/", "tests/", ".ci/")


def _overview_owners() -> dict[str, str]:
    """{path: what it owns} of the overview's "What each file owns" table. A cell lists paths; a
    name without a top folder is in the folder of the last full path before it (`compat.py`, `cpu/runtime.py`)."""
    text = (REPO_ROOT / "SFT_FRAMEWORK_OVERVIEW.md").read_text()
    section = text.split("## What each file owns", 1)[1].split("\n## ", 1)[0]
    owners = {}
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        cell, owns = line.strip("|").split("|", 1)
        folder = ""
        for item in re.findall(r"`([^`]+)`", cell):
            if item.startswith(_TOP_FOLDERS):
                folder = item if item.endswith("/") else item.rsplit("/", 1)[0] + "/"
                owners[item] = owns.strip()
            else:
                owners[folder + item] = owns.strip()
    return owners


def test_the_overview_says_what_owns_every_product_file():
    owners = _overview_owners()
    folders = [path for path in owners if path.endswith("/")]
    missing = [path for path in _tracked("sft", "scripts", "slurm")
               if path not in owners and not any(path.startswith(folder) for folder in folders)]
    assert not missing, f"files missing from SFT_FRAMEWORK_OVERVIEW.md's 'What each file owns': {missing}"
    stale = [path for path in owners if not (REPO_ROOT / path).exists()]
    assert not stale, f"the overview's file table names paths that do not exist: {stale}"


def test_benchmark_support_is_imported_by_no_product_module():
    """sft/bench/ is benchmark and test support (the README's tree says why it sits inside sft/): the product
    never depends on it, so the commands run the same without it."""
    modules = _product_modules()
    users = sorted(name for name, tree in modules.items() if not name.startswith("sft.bench")
                   and any(m == "sft.bench" or m.startswith("sft.bench.") for m in _imported_modules(tree)))
    assert not users, f"product modules import sft/bench/: {users}"
    tree = _readme_tree()
    assert "module name" in tree["sft/bench/"], f"the README's tree does not say why sft/bench/ is in sft/: {tree['sft/bench/']}"


def _product_modules() -> dict[str, "object"]:
    import ast

    modules = {}
    for path in sorted((REPO_ROOT / "sft").rglob("*.py")):
        name = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = ast.parse(path.read_text(), filename=str(path))
    return modules


def test_the_import_graph_of_sft_has_no_cycles():
    import ast

    modules = _product_modules()
    graph = {name: set() for name in modules}
    for name, tree in modules.items():
        for node in ast.walk(tree):  # function-level imports count too: they are cycles that wait
            if isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t != name and not name.startswith(t + ".")}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module, path):
        state[module] = 1
        for target in sorted(graph[module]):
            assert state.get(target) != 1, "import cycle: " + " -> ".join(path + [target])
            if target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def _imported_modules(tree) -> set[str]:
    """Every module an AST imports, at any depth (`from sft import x` counts as `sft.x` too)."""
    import ast

    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
    return names


def test_no_command_imports_another_command():
    """The commands (sft/*.py at the top) share code through the folders below them, never through each other."""
    modules = _product_modules()
    commands = {name for name in modules if name.count(".") == 1 and name != "sft"}
    assert {"sft.evaluate", "sft.generate", "sft.prepare_data", "sft.rounds"} <= commands, commands
    crossing = {f"{name} imports {target}" for name in sorted(commands)
                for target in _imported_modules(modules[name]) & commands if target != name}
    assert not crossing, "move what both need into a shared module: " + "; ".join(sorted(crossing))


MAX_FUNCTION_LINES = 80


def test_no_product_function_is_longer_than_80_lines():
    import ast

    files = [*(REPO_ROOT / "sft").rglob("*.py"), *(REPO_ROOT / "scripts").glob("*.py")]
    long = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno} {node.name} ({length} lines)")
    assert not long, "split these along their seams: " + "; ".join(long)
