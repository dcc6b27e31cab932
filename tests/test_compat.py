"""sft/verl_plugins/compat.py: every replacement of a verl internal is declared, fingerprinted and checked.

A verl whose replaced functions changed must stop a launch before torchrun with one line naming
the function, the plugin and how to run without it; the same check runs when a plugin replaces a
function in a training process. Shown here on copies of verl's checkout with one function
changed (VERL_DIR), and on a stand-in package for the in-process replacement; nothing in
site-packages is touched. The docs' plugin tables are compared with the code that decides them.
"""

from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import REPO_ROOT, launcher_env
from sft import launcher
from sft.verl_plugins import compat

VERL_ROOT = compat.package_root("verl")
HANDLER = "verl/utils/checkpoint/checkpoint_handler.py"


def fake_checkout(tmp_path: Path, edits: dict[str, tuple[str, str]], version: str | None = None) -> Path:
    """A VERL_DIR whose verl/ mirrors the installed package (symlinks), with `edits` {file: (old, new)} applied to
    copies of those files and, if given, another version file."""
    checkout = tmp_path / "verl checkout"
    changed = {path.split("/", 1)[1]: edit for path, edit in edits.items()}
    if version is not None:
        changed["version/version"] = None

    def mirror(source: Path, target: Path, relative: str) -> None:
        target.mkdir(parents=True)
        for entry in source.iterdir():
            name = f"{relative}{entry.name}"
            if name in changed:
                text = entry.read_text()
                edit = changed[name]
                if edit is None:
                    text = version + "\n"
                else:
                    assert edit[0] in text, f"{name} no longer contains the text to change"
                    text = text.replace(edit[0], edit[1], 1)
                (target / entry.name).write_text(text)
            elif any(path.startswith(name + "/") for path in changed):
                mirror(entry, target / entry.name, name + "/")
            else:
                (target / entry.name).symlink_to(entry)

    mirror(VERL_ROOT, checkout / "verl", "")
    return checkout


@pytest.fixture
def launch(launch_until_exec, tmp_path, tiny_model_dir, chat_data_dir):
    """The launcher in this process up to its exec of torchrun: (exit code, output, the command or None)."""

    def run(mode: str = "full", *overrides: str, **settings):
        env = launcher_env(MODEL_NAME=tiny_model_dir, TRAIN_FILE=chat_data_dir / "train.parquet",
                           OUTPUT_DIR=tmp_path / "out", **settings)
        return launch_until_exec(env, *overrides, mode=mode)

    return run


def _error_line(output: str) -> str:
    (line,) = [line for line in output.splitlines() if line.startswith("[verl-sft] error:")]
    return line


# ---------------------------------------------------------------------------------------------
# The table is right for the pinned versions.


def test_every_fingerprint_matches_the_installed_verl_and_torch():
    for internal in compat.INTERNALS:
        root = compat.package_root(internal.package)
        assert compat.problem(internal, root, compat.installed_version(internal.package, root)) is None, internal.target
    pins = dict(re.findall(r"^([a-z]+)==(\S+)", (REPO_ROOT / "requirements.txt").read_text(), re.MULTILINE))
    assert {package: pins[package] for package in compat.TESTED} == compat.TESTED


def test_plugins_replace_nothing_behind_the_gate():
    """No plugin assigns into a verl module or class itself; each one's declared internals are named in its source
    (compat.replace/checked/relies_on refuse a target INTERNALS does not declare)."""
    for plugin in compat.PLUGINS:
        source = (REPO_ROOT / plugin.path).read_text()
        assert not re.search(r"^[A-Za-z_][\w.]*\.[A-Za-z_]\w* = ", source, re.MULTILINE), plugin.path  # at import
        for internal in compat.INTERNALS:
            if internal.used_by == plugin.module:
                assert internal.target.rsplit(".", 1)[-1].split(":")[-1] in source, (plugin.path, internal.target)


# ---------------------------------------------------------------------------------------------
# The check fires on a changed verl, before torchrun, with one line.


def test_a_changed_verl_function_stops_the_launch_with_one_line(tmp_path, launch):
    checkout = fake_checkout(tmp_path, {HANDLER: ("        resume_step = extract_step(checkpoint_path)",
                                                  "        resume_step = extract_step(checkpoint_path) + 1")})
    rc, output, command = launch(VERL_DIR=str(checkout))
    assert rc == 2 and command is None
    line = _error_line(output)
    print(line)  # the message a user sees (quoted in the docs)
    assert f"verl 0.9.1 at {checkout / 'verl'} changed CheckpointHandler.load_checkpoint" in line
    assert "sft/verl_plugins/checkpoint_fixes.py replaces it" in line
    assert "install verl==0.9.1" in line and "Traceback" not in output


def test_a_plugin_with_a_switch_names_it_and_the_switch_runs_without_it(tmp_path, launch):
    checkout = fake_checkout(tmp_path, {"verl/workers/engine/fsdp/transformer_impl.py": (
        "    def _build_module(self):", "    def _build_module(self, *unused):")})
    rc, output, _ = launch(VERL_DIR=str(checkout))
    assert rc == 2
    assert "changed FSDPEngine._build_module" in output and "Run without it: SFT_SHARDED_LOADING=0" in output
    rc, output, command = launch(VERL_DIR=str(checkout), SFT_SHARDED_LOADING="0")
    assert rc == 0, output[-2000:]
    modules = next(a for a in command if a.startswith("data.custom_cls.path"))  # the command was built
    assert modules and "sharded_loading" not in output.split("[verl-sft] command:", 1)[1].splitlines()[1]


def test_another_verl_version_with_the_same_functions_runs_with_a_note(tmp_path, launch):
    checkout = fake_checkout(tmp_path, {}, version="0.9.2")
    rc, output, command = launch(VERL_DIR=str(checkout))
    assert rc == 0 and command is not None, output[-2000:]
    assert f"verl 0.9.2 at {checkout / 'verl'} is not the tested 0.9.1; the " in output
    (checkout / "verl" / "version" / "version").unlink()
    rc, output, _ = launch(VERL_DIR=str(checkout))
    assert rc == 2 and "cannot be told" in _error_line(output)


def test_a_method_now_defined_by_the_class_itself_is_caught(tmp_path):
    checkout = fake_checkout(tmp_path, {"verl/workers/engine_workers.py": (
        "class TrainingWorker(Worker, DistProfilerExtension):\n",
        "class TrainingWorker(Worker, DistProfilerExtension):\n    def step_profile(self):\n        pass\n\n")})
    with pytest.raises(compat.VerlMismatch, match="no longer uses DistProfilerExtension.step_profile at "
                                                  "TrainingWorker.step_profile.*Run without it: unset SFT_STOP_FILE"):
        compat.check_run(["sft.verl_plugins.stop_file"], checkout, {})
    assert compat.check_run(["sft.verl_plugins.checkpoint_fixes"], checkout, {}) == []  # other plugins unaffected


# ---------------------------------------------------------------------------------------------
# In a training process: replace() checks before it replaces (a stand-in package, not verl).

STAND_IN = '''
class Engine:
    def build(self):
        return "original"


def helper():
    return "helper"
'''


@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    """A package `standin` declared in compat's table as if it were verl (version 1.0, Engine.build replaced)."""
    package = tmp_path / "site" / "standin"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "engine.py").write_text(textwrap.dedent(STAND_IN))
    (package / "version.py").write_text("__version__ = '1.0'\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    for name in [n for n in sys.modules if n == "standin" or n.startswith("standin.")]:
        monkeypatch.delitem(sys.modules, name)
    fingerprint = compat.source_fingerprint(package, "standin/engine.py:Engine.build")
    internal = compat.Internal("standin/engine.py:Engine.build", fingerprint, "tests.plugin", "replaces")
    monkeypatch.setattr(compat, "INTERNALS", (internal,))
    monkeypatch.setitem(compat.TESTED, "standin", "1.0")
    return package


def test_replace_replaces_a_function_whose_source_is_the_one_declared(stand_in):
    original = compat.replace("standin/engine.py:Engine.build", lambda self: "patched", "tests.plugin")
    from standin.engine import Engine

    assert Engine().build() == "patched" and original(Engine()) == "original"


def test_replace_stops_with_one_line_when_the_source_changed(stand_in, capsys):
    engine = stand_in / "engine.py"
    engine.write_text(engine.read_text().replace('return "original"', 'return "changed"'))
    with pytest.raises(SystemExit) as stopped:
        compat.replace("standin/engine.py:Engine.build", lambda self: "patched", "tests.plugin")
    assert stopped.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("[verl-sft] error: standin 1.0 at ") and "changed Engine.build (engine.py)" in line
    from standin.engine import Engine

    assert Engine().build() == "changed"  # nothing was replaced


def test_replace_stops_when_the_attribute_is_no_longer_the_declared_function(stand_in, capsys):
    from standin import engine

    engine.Engine.build = lambda self: "set elsewhere"
    engine.Engine.build.__module__ = "standin.engine"
    engine.Engine.build.__qualname__ = "helper"
    with pytest.raises(SystemExit):
        compat.replace("standin/engine.py:Engine.build", lambda self: "patched", "tests.plugin")
    assert "Engine.build is now standin.engine.helper" in capsys.readouterr().err
    with pytest.raises(LookupError, match="does not declare"):
        compat.replace("standin/engine.py:helper", lambda: None, "tests.plugin")


# ---------------------------------------------------------------------------------------------
# The docs: the plugin tables are the code's, and the launcher loads what the table says.


def _readme_table(heading: str) -> str:
    text = (REPO_ROOT / "sft" / "README.md").read_text()
    start = text.index(heading)
    lines = text[start:].splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next(i for i in range(first, len(lines)) if not lines[i].startswith("|"))
    return "\n".join(lines[first:end])


def test_the_readme_plugin_tables_are_the_code_tables():
    assert _readme_table("| Plugin | Needed on |") == compat.plugin_table()
    assert _readme_table("| Internal (file: name) |") == compat.internals_table()


def _loaded_by_the_readme(mode: str, device: str, env: dict[str, str]) -> list[str]:
    """The plugins whose README row says they are loaded for this run, read from the words of the "Loaded" column."""
    modules = []
    for row in compat.plugin_table().splitlines()[2:]:
        path, needed_on, loaded = (cell.strip(" `") for cell in row.strip("|").split("|")[:3])
        where, _, unless = loaded.partition(", unless ")
        where, _, needs = where.partition(" with ")
        wanted_device = device == "cpu" or needed_on == "GPU and CPU"
        wanted_mode = mode == "lora" or "LoRA" not in where
        switched = unless and env.get(unless.split("=")[0]) == unless.split("=")[1]
        needed = not needs or env.get(needs.removesuffix(" set"))
        if wanted_device and wanted_mode and not switched and needed:
            modules.append(path.removesuffix(".py").replace("/", "."))
    return modules


@pytest.mark.parametrize("mode", ["full", "lora"])
@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("env", [{}, {"SFT_STOP_FILE": "/tmp/stop", "SFT_SHARDED_LOADING": "0"},
                                 {"SFT_FROZEN_UPCAST": "0"}], ids=["defaults", "stop-file-no-sharding", "no-upcast"])
def test_the_launcher_loads_the_plugins_the_readme_lists(mode, device, env):
    from sft.launch.settings import Settings

    settings = Settings(mode, {"DEVICE": device, "VERL_DIR": None, "NPROC_PER_NODE": 2})
    child = launcher.child_environment(settings, {"PATH": "/usr/bin", **env})
    assert child["VERL_USE_EXTERNAL_MODULES"].split(",") == _loaded_by_the_readme(mode, device, env)
