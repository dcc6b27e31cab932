"""sft/prepare_data.py under faults: full disk, no permission, kills at each publish point, a killed
parent, its own outputs in its input glob. Each asserts on the outcome a user sees: one line and
exit 2, the previous outputs untouched, files of one run told apart from another's, no process or
scratch folder left behind."""

from __future__ import annotations

import builtins
import errno
import fcntl
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest

from sft.dataprep import spill as data_spill
from sft.dataprep import write as data_write
from sft.dataprep.jsonl_io import InputError
from sft.dataprep.scratch import LOCK_NAME, PREFIX
from sft.prepare_data import PrepareConfig, main, prepare_data

REPO = Path(__file__).resolve().parent.parent


def write_rows(path: Path, rows: int, tag: str = "") -> Path:
    path.write_text("".join(json.dumps({"id": i // 2, "prompt": f"Problem {i // 2}{tag}: what is {i} + 1?",
                                        "generated_solution": f"{i} + 1 = {i + 1}. \\boxed{{{i + 1}}}"}) + "\n"
                            for i in range(rows)))
    return path


def run_id_of(path: Path) -> str:
    return json.loads(pq.read_schema(path).metadata[b"verl_sft"])["run_id"]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_run_id_and_each_outputs_sha256_tie_the_files_of_one_run(tmp_path):
    source = write_rows(tmp_path / "a.jsonl", 40)
    source.write_text(source.read_text() + "not json\n")
    manifest = prepare_data([str(source)], tmp_path / "out", PrepareConfig(progress=False, on_error="skip"))
    out = tmp_path / "out"
    assert len(manifest["run_id"]) == 32 and set(manifest["outputs"]) == {"train", "val", "rejects"}
    for name, info in manifest["outputs"].items():
        assert hashlib.sha256(Path(info["path"]).read_bytes()).hexdigest() == info["sha256"]
    assert run_id_of(out / "train.parquet") == run_id_of(out / "val.parquet") == manifest["run_id"]
    again = prepare_data([str(source)], tmp_path / "out", PrepareConfig(progress=False, on_error="skip"))
    assert again["run_id"] != manifest["run_id"] and run_id_of(out / "train.parquet") == again["run_id"]


class Killed(BaseException):
    """Stands for a SIGKILL between two renames of the publish."""


@pytest.mark.parametrize("point", [1, 2, 3])
def test_a_kill_at_each_publish_point_never_leaves_a_manifest_over_files_of_two_runs(tmp_path, monkeypatch, point):
    source = write_rows(tmp_path / "a.jsonl", 40)
    source.write_text(source.read_text() + "not json\n")
    out = tmp_path / "out"
    first = prepare_data([str(source)], out, PrepareConfig(progress=False, on_error="skip"))
    replace, published = os.replace, []

    def replace_then_die(src, dst):  # the point-th file put in place is the last thing the run does
        replace(src, dst)
        if Path(dst).parent == out and not Path(dst).name.startswith("."):
            published.append(Path(dst).name)
            if len(published) == point:
                raise Killed

    monkeypatch.setattr(os, "replace", replace_then_die)
    with pytest.raises(Killed):
        prepare_data([str(source)], out, PrepareConfig(progress=False, on_error="skip", seed=1))
    monkeypatch.setattr(os, "replace", replace)
    assert published[-1] == ["train.parquet", "val.parquet", "rejects.jsonl"][point - 1]
    assert not (out / "manifest.json").exists()  # removed before the first file moved
    ids = {name: run_id_of(out / name) for name in ("train.parquet", "val.parquet")}
    if point == 1:  # a new train beside the old val: told apart by their run_id
        assert ids["train.parquet"] != ids["val.parquet"] == first["run_id"]
    else:
        assert ids["train.parquet"] == ids["val.parquet"] != first["run_id"]
    assert not list(out.glob(".*"))  # no temporary file, no scratch folder


def test_a_full_disk_is_one_line_and_leaves_the_previous_outputs(tmp_path, monkeypatch, capsys):
    source = write_rows(tmp_path / "a.jsonl", 40)
    out = tmp_path / "out"
    assert main([str(source), "-o", str(out), "--no-progress"]) == 0
    before = snapshot(out)
    capsys.readouterr()

    def full(self, table, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(out / "train.parquet"))

    monkeypatch.setattr(data_write.pq.ParquetWriter, "write_table", full)
    assert main([str(source), "-o", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no space left on the device") and err.count("\n") == 1 and "Traceback" not in err
    assert snapshot(out) == before and not list(out.glob(".prepare_data-*"))


def test_a_full_disk_in_a_worker_process_is_the_same_one_line(tmp_path, monkeypatch, capsys):
    source = write_rows(tmp_path / "a.jsonl", 400)

    def full(self, bucket, table):
        raise OSError(errno.ENOSPC, "No space left on device", self.spill_dir)

    monkeypatch.setattr(data_spill.SpillWriter, "_write", full)  # forked workers inherit it
    assert main([str(source), "-o", str(tmp_path / "out"), "--no-progress", "--workers", "2", "--task-mb", "0.01"]) == 2
    err = capsys.readouterr().err
    assert "no space left on the device" in err and err.count("\n") == 1
    assert not (tmp_path / "out" / "train.parquet").exists() and not list((tmp_path / "out").glob(".prepare_data-*"))


def test_an_unreadable_input_is_named_with_the_fix(tmp_path, monkeypatch, capsys):
    source = write_rows(tmp_path / "a.jsonl", 10)
    real_open = builtins.open

    def denied(file, *args, **kwargs):  # tests run as root, where chmod 000 still reads
        if str(file) == str(source):
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", denied)
    assert main([str(source), "-o", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"cannot read input file {source}: Permission denied" in err and "chmod" in err and err.count("\n") == 1


def test_its_own_outputs_are_never_read_back(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    source = write_rows(data / "a.jsonl", 40)
    source.write_text(source.read_text() + "not json\n")
    first = prepare_data([str(data / "*.jsonl")], data, PrepareConfig(progress=False, on_error="skip"))
    assert (data / "rejects.jsonl").exists()  # now a .jsonl in the input glob
    second = prepare_data([str(data / "*.jsonl")], data, PrepareConfig(progress=False, on_error="skip"))
    assert second["counts"]["read"] == first["counts"]["read"] == 41
    assert any("rejects.jsonl" in w and "not read" in w for w in second["warnings"])
    third = prepare_data([str(data)], data, PrepareConfig(progress=False, on_error="skip"))  # the folder itself
    assert third["counts"]["read"] == 41 and [Path(i["path"]).name for i in third["inputs"]] == ["a.jsonl"]
    with pytest.raises(InputError, match="several splits"):  # read from elsewhere, it holds a train and a val file
        prepare_data([str(data)], tmp_path / "other", PrepareConfig(progress=False))
    with pytest.raises(InputError, match="is an output of this run"):
        prepare_data([str(source), str(data / "rejects.jsonl")], data, PrepareConfig(progress=False))


def _children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def test_a_killed_run_takes_its_workers_along_and_the_next_run_removes_only_stale_scratch(tmp_path):
    source = write_rows(tmp_path / "big.jsonl", 300_000)
    out = tmp_path / "out"
    out.mkdir()
    live = out / f"{PREFIX}live"  # a concurrent run's folder: locked, it must survive
    live.mkdir()
    lock = open(live / LOCK_NAME, "w")  # noqa: SIM115 - closed below
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    command = [sys.executable, str(REPO / "sft" / "prepare_data.py"), str(source), "-o", str(out), "--no-progress",
               "--workers", "2", "--task-mb", "1"]
    parent = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while len(workers := _children(parent.pid)) < 2 and time.time() < deadline and parent.poll() is None:
            time.sleep(0.05)
        assert len(workers) >= 2, "the workers never started"
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        gone, alive = psutil.wait_procs(workers, timeout=10)
        assert not alive, f"orphaned workers: {[p.pid for p in alive]}"
    finally:
        if parent.poll() is None:
            parent.kill()
    stale = [p for p in out.glob(f"{PREFIX}*") if p != live]
    assert stale, "the killed run left no scratch folder to clean (it was killed too late?)"
    manifest = prepare_data([str(write_rows(tmp_path / "small.jsonl", 20))], out, PrepareConfig(progress=False))
    assert not any(p.exists() for p in stale) and live.exists()
    assert any("scratch folder(s) of killed runs" in w for w in manifest["warnings"])
    lock.close()
