"""Offline install: scripts/build_wheelhouse.py's commands and checks, and setup_env.sh installing from a wheelhouse.

The real build downloads about 280 MB (measured and reported in sft/README.md, "Offline install");
here the builder's commands are checked with --dry-run, and setup_env.sh installs a wheelhouse of
one small wheel made in the test, with every package index out of reach, into an environment
whose torch (a stand-in distribution on PYTHONPATH) must be kept.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from sft.common.errors import EXIT_FAILED, EXIT_REFUSED

_spec = importlib.util.spec_from_file_location("build_wheelhouse", REPO_ROOT / "scripts" / "build_wheelhouse.py")
wheelhouse = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(wheelhouse)

HERE = f"{sys.version_info.major}.{sys.version_info.minor}"


def test_a_manylinux_target_accepts_every_older_glibc_tag():
    tags = wheelhouse.platform_tags("manylinux_2_28_x86_64")
    assert tags[0] == "manylinux_2_28_x86_64" and "manylinux_2_17_x86_64" in tags and "manylinux_2_5_x86_64" in tags
    assert {"manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"} <= set(tags)
    assert "manylinux2014_aarch64" in wheelhouse.platform_tags("manylinux_2_17_aarch64")
    assert wheelhouse.platform_tags("macosx_11_0_arm64") == ["macosx_11_0_arm64"]


def test_the_dry_run_downloads_for_the_target_with_torch_only_stood_in(capsys, tmp_path):
    assert wheelhouse.main(["--dry-run", "--python-version", "3.12", "--platform", "manylinux_2_28_x86_64",
                            "-o", str(tmp_path / "wh"), "--slim"]) == 0
    out = capsys.readouterr().out
    requirements, stand_ins, command = out.splitlines()
    assert "verl==0.9.1" in requirements and "torch" not in requirements.split(":", 1)[1]
    assert stand_ins.endswith("torch==2.13.0+provided triton==9999+provided wandb==9999+provided "
                              "tensorboard==9999+provided ray==9999+provided")
    words = shlex.split(command)
    assert words[1:4] == ["-m", "pip", "download"] and "--only-binary=:all:" in words
    for flag, value in (("--python-version", "3.12"), ("--abi", "cp312"), ("--implementation", "cp"),
                        ("-d", str(tmp_path / "wh"))):
        assert words[words.index(flag) + 1] == value
    platforms = [words[i + 1] for i, word in enumerate(words) if word == "--platform"]
    assert platforms[0] == "manylinux_2_28_x86_64" and "manylinux2014_x86_64" in platforms
    assert not (tmp_path / "wh").exists()  # nothing downloaded


def test_requirement_lines_drop_torch_and_flash_attn_only(tmp_path):
    (tmp_path / "r.txt").write_text("# comment\ntorch==2.13.0\nverl==0.9.1  # pinned\nflash-attn==2.8.3\n"
                                    "Flash_Attn>=2\ntorchdata==0.11\n\n")
    assert wheelhouse.requirement_lines([tmp_path / "r.txt"]) == ["verl==0.9.1", "torchdata==0.11"]


def _wheel(directory: Path, name: str, version: str, module_source: str = "", requires: tuple[str, ...] = ()) -> Path:
    """A pure-Python wheel with one module (`name`.py) and Requires-Dist lines, made with the builder's stand-in
    writer and the module added."""
    path = wheelhouse.write_stand_in(directory, name, version)
    metadata = f"{name}-{version}.dist-info/METADATA"
    with zipfile.ZipFile(path) as archive:
        files = {n: archive.read(n).decode() for n in archive.namelist()}
    files[metadata] += "".join(f"Requires-Dist: {r}\n" for r in requires)
    if module_source:
        files[f"{name}.py"] = module_source
    path.unlink()
    with zipfile.ZipFile(path, "w") as archive:  # RECORD's hashes are not checked by pip for a local wheel
        for file_name, text in files.items():
            archive.writestr(file_name, text)
    return path


def test_torch_requirements_are_read_from_the_wheels_outside_extras(tmp_path):
    wheels = [_wheel(tmp_path, "accelerate", "1.16.0", requires=("numpy>=1.17", "torch>=2.6.0")),
              _wheel(tmp_path, "safetensors", "0.8.0", requires=("torch>=2.4 ; extra == 'torch'",)),
              _wheel(tmp_path, "tensordict", "0.10.0", requires=("torch",))]
    assert wheelhouse.torch_requirements(wheels) == {"accelerate 1.16.0": "torch>=2.6.0", "tensordict 0.10.0": "torch"}


def _fake_wheelhouse(directory: Path, torch_requirement: str, python_version: str = HERE) -> Path:
    directory.mkdir()
    _wheel(directory, "verl_sft_offline_probe", "1.0", module_source="ANSWER = 42\n")
    (directory / "requirements.lock").write_text("verl-sft-offline-probe==1.0\n")
    (directory / "wheelhouse.json").write_text(json.dumps({
        "python_version": python_version, "torch_requirements": {"accelerate 1.16.0": torch_requirement},
        "imports": ["verl_sft_offline_probe"]}))
    return directory


def _provided_torch(directory: Path, version: str = "2.13.0") -> Path:
    """A torch distribution (metadata only) as a cluster's environment would show it."""
    info = directory / f"torch-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n")
    return directory


def test_the_torch_check_names_what_refuses_the_installed_torch(tmp_path, capsys):
    assert wheelhouse.main(["--check-torch", str(_fake_wheelhouse(tmp_path / "ok", "torch>=2.6.0"))]) == 0
    assert "(kept) meets torch>=2.6.0" in capsys.readouterr().out
    assert wheelhouse.main(["--check-torch", str(_fake_wheelhouse(tmp_path / "new", "torch>=99"))]) == 1
    assert "is refused by: accelerate 1.16.0 needs torch>=99" in capsys.readouterr().err
    assert wheelhouse.main(["--check-torch", str(_fake_wheelhouse(tmp_path / "py", "torch", "3.99"))]) == 1
    assert "was built for Python 3.99" in capsys.readouterr().err


def _offline_env(tmp_path: Path, torch_dir: Path, wheelhouse_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    # Every index out of reach: a pip that asked one would fail (or hang until its 1 s timeout).
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_INDEX_URL="http://127.0.0.1:9/simple", PIP_DEFAULT_TIMEOUT="1",
               PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONPATH=str(torch_dir), WHEELHOUSE=str(wheelhouse_dir),
               VENV_DIR=str(tmp_path / "venv"), PYTHON=str(Path(sys.base_prefix) / "bin" / "python3"))
    return env


@pytest.mark.slow
def test_setup_env_checks_torch_then_installs_the_wheelhouse_offline_and_keeps_torch(tmp_path):
    wheelhouse_dir = _fake_wheelhouse(tmp_path / "wheelhouse", "torch>=2.6.0")
    setup = [str(REPO_ROOT / "scripts" / "setup_env.sh")]
    python = tmp_path / "venv" / "bin" / "python"
    old = _offline_env(tmp_path, _provided_torch(tmp_path / "old", version="2.4.1+cu121"), wheelhouse_dir)
    refused = subprocess.run(setup, env=old, capture_output=True, text=True, timeout=300)
    assert refused.returncode == EXIT_FAILED  # found while installing: the install failed
    assert "the installed torch 2.4.1+cu121 is refused by: accelerate 1.16.0 needs torch>=2.6.0" in refused.stderr
    assert "--system-site-packages" in refused.stdout  # the environment sees its base Python's torch
    assert subprocess.run([str(python), "-c", "import verl_sft_offline_probe"], env=old).returncode != 0

    env = _offline_env(tmp_path, _provided_torch(tmp_path / "site"), wheelhouse_dir)
    result = subprocess.run(setup, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "offline (no index)" in result.stdout and "torch 2.13.0 (kept)" in result.stdout
    assert "imports checked: verl_sft_offline_probe" in result.stdout
    probe = subprocess.run([str(python), "-c", "import verl_sft_offline_probe as p, importlib.metadata as m; "
                            "print(p.ANSWER, m.version('torch'))"], env=env, capture_output=True, text=True)
    assert probe.stdout.split() == ["42", "2.13.0"], probe.stderr  # installed; the machine's torch untouched
    again = subprocess.run(setup, env=env, capture_output=True, text=True)
    assert again.returncode == 0 and "is up to date" in again.stdout


def test_setup_env_names_a_folder_that_is_not_a_wheelhouse(tmp_path):
    (tmp_path / "empty").mkdir()
    env = _offline_env(tmp_path, tmp_path, tmp_path / "empty")
    result = subprocess.run([str(REPO_ROOT / "scripts" / "setup_env.sh")], env=env, capture_output=True, text=True)
    assert result.returncode == EXIT_REFUSED and "has no requirements.lock; build it with scripts/build_wheelhouse.py" in result.stderr
    assert not (tmp_path / "venv").exists()


def test_setup_env_will_not_build_an_environment_blind_to_a_venvs_torch(tmp_path):
    wheelhouse_dir = _fake_wheelhouse(tmp_path / "wheelhouse", "torch>=2.6.0")
    env = _offline_env(tmp_path, tmp_path, wheelhouse_dir)
    env["PYTHON"] = str(REPO_ROOT / ".venv" / "bin" / "python")  # a virtual environment's interpreter
    result = subprocess.run([str(REPO_ROOT / "scripts" / "setup_env.sh")], env=env, capture_output=True, text=True)
    assert result.returncode == EXIT_REFUSED and "a new environment made from it would not see its torch" in result.stderr
    assert "VENV_DIR=" in result.stderr and not (tmp_path / "venv").exists()
