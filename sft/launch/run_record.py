"""The run record: how a model was made, written by every launch and carried by its export (imported).

`append_launch(output_dir, entry)` adds one launch to OUTPUT_DIR/run_record.json (atomically; node
rank 0 only, the launcher decides), so a resumed run keeps the history of every start:
    {"format": 1, "launches": [{"started_at", "host", "mode", "settings", "given", "sources", "notes",
      "user_overrides", "overrides", "command", "versions", "code", "data"}, ...]}
`launch_entry(...)` builds one entry: the resolved settings, the user's overrides as given and the
final list verl got, the versions (python, verl, torch, transformers, peft, ...), this project's
git commit (and whether the work tree had changes), and the data: TRAIN_FILE, VAL_FILE and the
sha256 of the manifest.json prepare_data wrote beside them.
`copy_into_export(step_dir, model_dir)` is sft/export.py's: it copies the record and the data
manifest it names into the exported model directory, and says whether the manifest is unchanged.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import socket
import subprocess
import time
from importlib import metadata
from pathlib import Path

from sft.common.files import write_json_atomic

RECORD_FILE = "run_record.json"
MANIFEST_COPY = "data_manifest.json"
REPO_ROOT = Path(__file__).resolve().parents[2]
_PACKAGES = ("verl", "torch", "transformers", "peft", "accelerate", "flash-attn", "hydra-core", "pyarrow")


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def code_version() -> dict:
    """This project's git commit, and whether tracked files differ from it (None outside a git checkout)."""
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return {"git_commit": None}
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit, "uncommitted_changes": bool(status)}


def sha256_file(path: Path) -> str | None:
    try:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()
    except OSError:
        return None


def _plain(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def launch_entry(settings, user_overrides: list[str], overrides: list[str], notes: list[str],
                 command: list[str]) -> dict:
    manifest = Path(settings["TRAIN_FILE"]).parent / "manifest.json"
    return {
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": socket.gethostname(),
        "mode": settings.mode,
        "settings": {name: _plain(value) for name, value in settings.values.items()},
        "given": dict(settings.given),
        "sources": dict(settings.sources),
        "notes": list(settings.notes) + list(notes),
        "user_overrides": list(user_overrides),
        "overrides": list(overrides),
        "command": list(command),
        "versions": package_versions(),
        "code": code_version(),
        "data": {
            "train_file": str(settings["TRAIN_FILE"]),
            "val_file": _plain(settings["VAL_FILE"]),
            "manifest": str(manifest) if manifest.is_file() else None,
            "manifest_sha256": sha256_file(manifest) if manifest.is_file() else None,
        },
    }


def read_record(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("launches"), list) else None


def append_launch(output_dir: Path, entry: dict) -> tuple[Path, str | None]:
    """(the record's path, a note when an unreadable record had to be set aside)."""
    path = Path(output_dir) / RECORD_FILE
    record, note = read_record(path), None
    if record is None:
        if path.exists():
            aside = path.with_name(f"{RECORD_FILE}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}")
            path.replace(aside)
            note = f"{path} was not a readable run record; moved to {aside.name} and started a new one."
        record = {"format": 1, "launches": []}
    record["launches"].append(entry)
    write_json_atomic(path, record)
    return path, note


def copy_into_export(step_dir: Path, model_dir: Path) -> dict:
    """Copy OUTPUT_DIR's run record and the data manifest it names into `model_dir`; what was copied."""
    source = Path(step_dir).parent / RECORD_FILE
    record = read_record(source)
    if record is None or not record["launches"]:
        return {"run_record": None, "note": f"no run record at {source} (trained without the launchers, or before "
                                            "they wrote one): the export cannot say how the model was made"}
    shutil.copyfile(source, Path(model_dir) / RECORD_FILE)
    data = record["launches"][-1].get("data") or {}
    copied = {"run_record": RECORD_FILE, "data_manifest": None, "manifest_unchanged": None}
    manifest = Path(data["manifest"]) if data.get("manifest") else None
    if manifest is None:
        copied["note"] = "the run record names no data manifest (TRAIN_FILE had no manifest.json beside it)"
    elif not manifest.is_file():
        copied["note"] = f"the data manifest {manifest} named by the run record is gone"
    else:
        shutil.copyfile(manifest, Path(model_dir) / MANIFEST_COPY)
        copied["data_manifest"] = MANIFEST_COPY
        copied["manifest_unchanged"] = sha256_file(manifest) == data.get("manifest_sha256")
        if not copied["manifest_unchanged"]:
            copied["note"] = (f"{manifest} changed since the last launch (its sha256 differs from the run record's): "
                              "the data may have been prepared again after training")
    return copied
