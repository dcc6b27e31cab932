"""Faults a user or a cluster inflicts on the launchers and the export, replayed; each ends well.

Run: .venv/bin/python -m pytest -q tests/test_faults.py    (about a minute; the slow test trains twice)

Kinds, as the fault campaign of issue 26 tried them: bad files (a Parquet with no rows, a
`messages` column of text, a damaged Parquet, train and val of two prepare_data runs, a model
without weights or with truncated ones, a tokenizer that encodes nothing), bad overrides (Hydra
syntax, values of the wrong type), an OUTPUT_DIR that is a file or not writable, a full disk
(an injected ENOSPC), a crafted checkpoint, a LoRA checkpoint without its metadata, an export
into its own checkpoint, kills at the export's publish step, a killed launcher, two launches into
one OUTPUT_DIR, and a resume whose newest checkpoint was half deleted. Every refusal is one line,
exit status 2, no traceback, before any work starts; nothing is left half written.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import REPO_ROOT, launcher_env, step_delay_env, write_chat_parquet
from sft import export
from sft.common import files
from sft.common.checkpoints import TRACKER_FILE

MESSAGES = [[{"role": "user", "content": f"What is {i} + 1?"}, {"role": "assistant", "content": f"{i + 1}"}]
            for i in range(16)]


def _one_clean_error(rc: int, output: str) -> str:
    """The single error line of a refused launch (exit 2, no traceback)."""
    assert rc == 2, output[-2000:]
    assert "Traceback" not in output
    (line,) = [line for line in output.splitlines() if "error:" in line]
    return line


def _write(path: Path, table: pa.Table, run_id: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if run_id:
        table = table.replace_schema_metadata({b"verl_sft": json.dumps({"run_id": run_id}).encode()})
    pq.write_table(table, path)
    return path


def _messages() -> pa.Table:
    return pa.table({"messages": MESSAGES})


# ---------------------------------------------------------------------------------------------
# The launcher: bad files and settings are refused before torchrun, in one line.


def _bad_data(tmp: Path, case: str) -> dict[str, str]:
    """Settings that point the launcher at the damaged input `case` (built under tmp)."""
    data = tmp / case
    if case == "train-no-rows":
        return {"TRAIN_FILE": str(_write(data / "train.parquet", _messages().slice(0, 0))), "VAL_FILE": ""}
    if case == "val-no-rows":
        _write(data / "val.parquet", _messages().slice(0, 0))
        return {"TRAIN_FILE": str(_write(data / "train.parquet", _messages()))}
    if case == "messages-as-text":
        return {"TRAIN_FILE": str(_write(data / "train.parquet", pa.table({"messages": ["hi"] * 16}))), "VAL_FILE": ""}
    if case == "messages-list-of-text":
        return {"TRAIN_FILE": str(_write(data / "train.parquet", pa.table({"messages": [["hi", "ho"]] * 16}))),
                "VAL_FILE": ""}
    if case == "messages-without-content":
        table = pa.table({"messages": [[{"role": "user", "text": "hi"}]] * 16})
        return {"TRAIN_FILE": str(_write(data / "train.parquet", table)), "VAL_FILE": ""}
    if case == "truncated-parquet":
        path = _write(data / "train.parquet", _messages())
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        return {"TRAIN_FILE": str(path), "VAL_FILE": ""}
    if case == "damaged-parquet-page":
        path = _write(data / "train.parquet", pa.table({"messages": MESSAGES * 8}))
        raw = bytearray(path.read_bytes())
        raw[8:200] = b"\xff" * 192  # the first data page, footer intact
        path.write_bytes(bytes(raw))
        return {"TRAIN_FILE": str(path), "VAL_FILE": ""}
    if case in ("train-and-val-of-two-runs", "val-unmarked-beside-a-marked-train", "train-not-its-manifests-run"):
        train = _write(data / "train.parquet", _messages(), run_id="run-b")
        val_run = {"train-and-val-of-two-runs": "run-a", "val-unmarked-beside-a-marked-train": None}.get(case, "run-b")
        _write(data / "val.parquet", _messages(), run_id=val_run)
        if "manifest" in case:
            (data / "manifest.json").write_text(json.dumps({"run_id": "run-a"}))
        return {"TRAIN_FILE": str(train)}
    raise AssertionError(case)


@pytest.mark.parametrize(("case", "expected"), [
    ("train-no-rows", "TRAIN_FILE has no rows"),
    ("val-no-rows", "VAL_FILE has no rows: .* VAL_FILE= \\(empty\\)"),
    ("messages-as-text", "`messages` column is string, not a list of messages"),
    ("messages-list-of-text", "`messages` column holds string items"),
    ("messages-without-content", "has messages without a `content` field"),
    ("truncated-parquet", "TRAIN_FILE is not a readable Parquet file"),
    ("damaged-parquet-page", "TRAIN_FILE is damaged"),
    ("train-and-val-of-two-runs", "come from two prepare_data runs \\(run run-b and run run-a\\)"),
    ("val-unmarked-beside-a-marked-train", "VAL_FILE has no prepare_data run id but the file beside it has one"),
    ("train-not-its-manifests-run", "written by prepare_data run run-b, but manifest.json beside it describes run run-a"),
])
def test_bad_training_data_is_refused_before_torchrun(tmp_path, tiny_model_dir, launch_until_exec, case, expected):
    env = launcher_env(MODEL_NAME=tiny_model_dir, OUTPUT_DIR=tmp_path / "out", **_bad_data(tmp_path, case))
    rc, output, command = launch_until_exec(env)
    assert re.search(expected, _one_clean_error(rc, output)), output[-1500:]
    assert command is None and not (tmp_path / "out").exists()


def test_files_of_one_run_pass_and_older_files_pass_with_a_note(tmp_path, tiny_model_dir, launch_until_exec):
    data = tmp_path / "data"
    _write(data / "val.parquet", _messages(), run_id="run-a")
    (data / "manifest.json").write_text(json.dumps({"run_id": "run-a"}))
    env = launcher_env(MODEL_NAME=tiny_model_dir, TRAIN_FILE=_write(data / "train.parquet", _messages(), run_id="run-a"),
                       OUTPUT_DIR=tmp_path / "out", DRY_RUN=1)
    rc, output, _ = launch_until_exec(env)
    assert rc == 0 and "run id" not in output, output[-1500:]
    old = write_chat_parquet(tmp_path / "old" / "train.parquet", 16)
    rc, output, _ = launch_until_exec({**env, "TRAIN_FILE": str(old), "VAL_FILE": ""})
    assert rc == 0 and "TRAIN_FILE: no prepare_data run id (written by an older sft/prepare_data.py)" in output


def _model_copy(tiny_model_dir: Path, tmp: Path, case: str) -> Path:
    model = Path(shutil.copytree(tiny_model_dir, tmp / case))
    if case == "no-weights":
        (model / "model.safetensors").unlink()
    elif case == "truncated-weights":
        weights = model / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size - 1000])
    elif case == "no-tokenizer":
        (model / "tokenizer.json").unlink()
    elif case == "vocab-without-merges":  # half of a slow tokenizer's files
        vocabulary = json.loads((model / "tokenizer.json").read_text())["model"]["vocab"]
        (model / "tokenizer.json").unlink()
        (model / "vocab.json").write_text(json.dumps(vocabulary))
    elif case == "empty-vocabulary":  # a tokenizer.json that loads and encodes every text to nothing
        spec = json.loads((model / "tokenizer.json").read_text())
        spec["model"].update(vocab={}, merges=[])
        (model / "tokenizer.json").write_text(json.dumps(spec))
    return model


@pytest.mark.parametrize(("case", "expected"), [
    ("no-weights", "has no weights"),
    ("truncated-weights", "model.safetensors is truncated"),
    ("no-tokenizer", "has no tokenizer: no tokenizer.json"),
    ("vocab-without-merges", "vocab-without-merges does not load"),
    ("empty-vocabulary", "tokenizer.json encodes text to no tokens at all"),
])
def test_a_model_directory_without_whole_weights_or_a_working_tokenizer_is_refused(
        tmp_path, tiny_model_dir, chat_data_dir, launch_until_exec, case, expected):
    env = launcher_env(MODEL_NAME=_model_copy(tiny_model_dir, tmp_path, case), TRAIN_FILE=chat_data_dir / "train.parquet",
                       OUTPUT_DIR=tmp_path / "out")
    rc, output, _ = launch_until_exec(env)
    assert expected in _one_clean_error(rc, output)


def test_a_tokenizer_from_slow_files_that_encode_is_accepted(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    from sft.common.model_files import check_tokenizer_dir

    model = _model_copy(tiny_model_dir, tmp_path, "slow")
    fast = AutoTokenizer.from_pretrained(model)
    (model / "tokenizer.json").unlink()
    bpe = json.loads(fast.backend_tokenizer.to_str())["model"]
    (model / "vocab.json").write_text(json.dumps(bpe["vocab"]))
    (model / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in bpe["merges"]) + "\n")
    check_tokenizer_dir(model)
    assert AutoTokenizer.from_pretrained(model)("What is 2 + 3?")["input_ids"] == fast("What is 2 + 3?")["input_ids"]


@pytest.mark.parametrize(("override", "expected"), [
    ("optim.lr=[1e-5", "optim.lr=[1e-5: not a valid Hydra override"),
    ("optim.lr=fast", "optim.lr=fast: optim.lr takes a number"),
    ("trainer.total_epochs=two", "trainer.total_epochs takes an integer"),
    ("model.enable_gradient_checkpointing=maybe", "model.enable_gradient_checkpointing takes true or false"),
    ("optim.betas=0.9", "optim.betas takes a list"),
])
def test_an_override_hydra_cannot_parse_or_of_the_wrong_type_is_named(tmp_path, tiny_model_dir, chat_data_dir,
                                                                      launch_until_exec, override, expected):
    env = launcher_env(MODEL_NAME=tiny_model_dir, TRAIN_FILE=chat_data_dir / "train.parquet", OUTPUT_DIR=tmp_path / "o")
    rc, output, _ = launch_until_exec(env, "trainer.save_freq=after_each_epoch", override)
    assert expected in _one_clean_error(rc, output)


def test_overrides_of_the_kind_verl_reads_pass(tmp_path, tiny_model_dir, chat_data_dir, launch_until_exec):
    env = launcher_env(MODEL_NAME=tiny_model_dir, TRAIN_FILE=chat_data_dir / "train.parquet", OUTPUT_DIR=tmp_path / "o")
    overrides = ("trainer.logger=console", "optim.lr=2e-5", "optim.clip_grad=1", "trainer.test_freq=after_each_epoch",
                 "optim.betas=[0.9,0.95]", "trainer.max_ckpt_to_keep=2")
    rc, output, command = launch_until_exec(env, *overrides)
    assert rc == 0 and command[-len(overrides):] == list(overrides), output[-2000:]


def test_output_dir_that_is_a_file_unwritable_or_on_a_full_disk_is_one_line(tmp_path, tiny_model_dir, chat_data_dir,
                                                                             launch_until_exec, monkeypatch):
    env = launcher_env(MODEL_NAME=tiny_model_dir, TRAIN_FILE=chat_data_dir / "train.parquet")
    (tmp_path / "a file").write_text("")
    rc, output, _ = launch_until_exec({**env, "OUTPUT_DIR": str(tmp_path / "a file")})
    assert "is a file, not a directory" in _one_clean_error(rc, output)
    rc, output, _ = launch_until_exec({**env, "OUTPUT_DIR": str(tmp_path / "a file" / "run")})
    assert "is a file, so" in _one_clean_error(rc, output)
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if Path(path) == locked else real_access(path, mode))
    rc, output, _ = launch_until_exec({**env, "OUTPUT_DIR": str(locked / "run")})
    assert "is not writable by this user" in _one_clean_error(rc, output)
    monkeypatch.undo()

    def full_disk(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    monkeypatch.setattr(Path, "mkdir", full_disk)
    rc, output, _ = launch_until_exec({**env, "OUTPUT_DIR": str(tmp_path / "new")})
    assert "cannot write OUTPUT_DIR" in _one_clean_error(rc, output) and "the disk is full" in output


def _fake_checkpoint_files(output_dir: Path, steps: list[int], world: int = 2) -> None:
    from sft.common.checkpoints import expected_files

    for step in steps:
        step_dir = output_dir / f"global_step_{step}"
        step_dir.mkdir(parents=True)
        for name in expected_files(world):
            with __import__("zipfile").ZipFile(step_dir / name, "w") as archive:  # what torch.save writes
                archive.writestr("data.pkl", b"x")
    (output_dir / TRACKER_FILE).write_text(str(steps[-1]))


def test_a_resume_skips_a_half_deleted_newest_checkpoint_and_refuses_when_none_is_whole(
        tmp_path, tiny_model_dir, chat_data_dir, launch_until_exec):
    out = tmp_path / "out"
    env = launcher_env(MODEL_NAME=tiny_model_dir, TRAIN_FILE=chat_data_dir / "train.parquet", OUTPUT_DIR=out,
                       NPROC_PER_NODE=2)
    _fake_checkpoint_files(out, [2, 4])
    (out / "global_step_4" / "optim_world_size_2_rank_1.pt").unlink()
    rc, output, command = launch_until_exec(env)
    assert rc == 0 and command, output[-1500:]
    assert ("note: resuming from global_step_2: global_step_4 (named by latest_checkpointed_iteration.txt) lacks or "
            "has damaged optim_world_size_2_rank_1.pt") in output
    shutil.rmtree(out / "global_step_4")
    rc, output, _ = launch_until_exec(env)
    assert rc == 0 and "resuming from global_step_2: global_step_4 (named by" in output and "is gone" in output
    (out / "global_step_2" / "data_0.pt").write_bytes(b"PK\x03\x04 cut short")
    line = _one_clean_error(*launch_until_exec(env)[:2])
    assert "no complete checkpoint to resume from" in line and "data_0.pt" in line


# ---------------------------------------------------------------------------------------------
# The export: crafted, incomplete or misdirected checkpoints, a full disk, a kill while publishing.


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_model_dir) -> Path:
    """A one-process training output directory (plain tensors in the shard, as FSDP with one rank writes)."""
    import torch
    from transformers import AutoModelForCausalLM

    run = tmp_path_factory.mktemp("faults-export") / "run"
    step = run / "global_step_3"
    (step / "huggingface").mkdir(parents=True)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    torch.save({k: v.clone() for k, v in model.state_dict().items()}, step / "model_world_size_1_rank_0.pt")
    (step / "fsdp_config.json").write_text(json.dumps({"FSDP_version": 2, "world_size": 1}))
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                 "chat_template.jinja"):
        shutil.copy(tiny_model_dir / name, step / "huggingface" / name)
    (run / TRACKER_FILE).write_text("3")
    return run


@pytest.fixture
def run_export(capsys):
    """sft/export.py's main in this process (as scripts/export_checkpoint.sh runs it): (exit status, output)."""

    def run(*args: str) -> tuple[int, str]:
        capsys.readouterr()
        rc = export.main(list(args))
        captured = capsys.readouterr()
        return rc, captured.out + captured.err

    return run


def _copy(checkpoint: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(checkpoint, tmp_path / "run"))


def test_a_crafted_shard_is_not_run(checkpoint, tmp_path, run_export):
    import torch

    run = _copy(checkpoint, tmp_path)
    marker = tmp_path / "PWNED"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch '{marker}'",))

    torch.save({"model.embed_tokens.weight": Payload()}, run / "global_step_3" / "model_world_size_1_rank_0.pt")
    rc, output = run_export(str(run), "-o", str(tmp_path / "model"))
    assert "holds more than model weights (posix.system): loading it could run code" in _one_clean_error(rc, output)
    assert not marker.exists() and not (tmp_path / "model").exists()


def test_lora_weights_without_their_metadata_are_not_exported_as_the_base_model(checkpoint, tmp_path, run_export):
    import torch

    run = _copy(checkpoint, tmp_path)
    shard = run / "global_step_3" / "model_world_size_1_rank_0.pt"
    state = torch.load(shard)
    state["model.layers.0.self_attn.q_proj.lora_A.default.weight"] = torch.zeros(8, 64)
    state["model.layers.0.self_attn.q_proj.lora_B.default.weight"] = torch.zeros(64, 8)
    torch.save(state, shard)
    rc, output = run_export(str(run), "-o", str(tmp_path / "model"))
    assert "holds LoRA adapter weights (rank 8) but no lora_train_meta.json" in _one_clean_error(rc, output)
    assert not (tmp_path / "model").exists()


def test_an_export_never_replaces_its_checkpoint_or_a_directory_that_is_not_an_export(checkpoint, tmp_path,
                                                                                      run_export):
    run = _copy(checkpoint, tmp_path)
    before = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
    for target, expected in ((run, "holds the training run"), (run / "global_step_3", "holds the checkpoint"),
                             (tmp_path, "holds the training run")):
        rc, output = run_export(str(run), "-o", str(target), "--force")
        assert expected in _one_clean_error(rc, output)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("keep")
    rc, output = run_export(str(run), "-o", str(tmp_path / "notes"), "--force")
    assert "is not an earlier export" in _one_clean_error(rc, output)
    assert (tmp_path / "notes" / "mine.txt").read_text() == "keep"
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*")) == before
    (run / "global_step_3" / "huggingface" / "tokenizer.json").unlink()
    rc, output = run_export(str(run), "-o", str(tmp_path / "model"))
    assert "the checkpoint's tokenizer" in _one_clean_error(rc, output)


def test_a_full_disk_or_a_kill_while_publishing_leaves_one_whole_export(checkpoint, tmp_path, monkeypatch,
                                                                        run_export):
    target = export.export_checkpoint(checkpoint, tmp_path / "model", log=lambda *a: None)  # float32
    before = {p.name: p.read_bytes() for p in target.iterdir()}

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))

    monkeypatch.setattr(export, "publish_directory", full_disk)
    rc, output = run_export(str(checkpoint), "-o", str(target), "--force")
    assert "cannot write the export to" in _one_clean_error(rc, output) and "the disk is full" in output
    monkeypatch.undo()
    for kill_after_swap in (False, True):  # SIGKILL just before, and just after, the atomic swap
        real_exchange = files._exchange

        def killed(first, second, after=kill_after_swap):
            if after:
                real_exchange(first, second)
            raise KeyboardInterrupt

        monkeypatch.setattr(files, "_exchange", killed)
        with pytest.raises(KeyboardInterrupt):
            export.export_checkpoint(checkpoint, target, dtype="bfloat16", force=True, log=lambda *a: None)
        monkeypatch.undo()
        now = {p.name: p.read_bytes() for p in target.iterdir()}
        assert now.keys() == before.keys(), "a mix of two exports"
        dtypes = {json.loads(now["export_info.json"])["dtype"], json.loads(now["config.json"])["dtype"]}
        assert dtypes == ({"bfloat16"} if kill_after_swap else {"float32"}), dtypes  # the new one whole, or the old
        assert (now["model.safetensors"] == before["model.safetensors"]) is not kill_after_swap
        assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
        if kill_after_swap is False:
            assert now == before


# ---------------------------------------------------------------------------------------------
# Processes: a killed launcher, two launches into one OUTPUT_DIR, a damaged resume, a full disk.


def _wait_for(predicate, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout:.0f}s:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.2)


@pytest.mark.slow
def test_a_killed_launcher_takes_its_trainer_along_and_frees_output_dir(tmp_path, tiny_model_dir, chat_data_dir,
                                                                        launch_until_exec):
    import psutil

    out = tmp_path / "run"
    settings = dict(MODEL_NAME=tiny_model_dir, TRAIN_FILE=chat_data_dir / "train.parquet", OUTPUT_DIR=out, VAL_FILE="",
                    EPOCHS=1, NPROC_PER_NODE=2)
    log = tmp_path / "first.log"
    with open(log, "w") as stream:
        first = subprocess.Popen([str(REPO_ROOT / "scripts" / "run_sft_training.sh")], cwd=tmp_path, stdout=stream,
                                 stderr=subprocess.STDOUT, env=launcher_env(**settings, **step_delay_env(2.0)),
                                 start_new_session=True)
    try:
        _wait_for(lambda: "step:1 - " in log.read_text(errors="replace"), 240, "first training step", log)
        # A second launch into the same OUTPUT_DIR is refused at once, naming the training that holds it.
        rc, output, _ = launch_until_exec(launcher_env(**settings))
        assert f"is in use by another training (pid {first.pid} on " in _one_clean_error(rc, output)
        workers = psutil.Process(first.pid).children(recursive=True)
        assert len(workers) >= 2
        os.kill(first.pid, signal.SIGKILL)  # the launcher only: it exec'd torchrun, which kept its pid
        first.wait(timeout=30)
        _, alive = psutil.wait_procs(workers, timeout=5)
        assert not alive, f"trainer processes outlived their killed launcher: {alive}"
    finally:
        if first.poll() is None:
            first.kill()
    # The next launch takes the lock over (the kernel released it with the process).
    rc, output, command = launch_until_exec(launcher_env(**settings))
    assert rc == 0 and command, output[-2000:]
    assert f"the previous launch into OUTPUT_DIR (pid {first.pid} on " in output


_PLUGIN_CHECK = r"""
import errno, json, os, sys, types
from sft.verl_plugins import checkpoint_fixes
from verl.utils.checkpoint.checkpoint_handler import CheckpointHandler

manager = types.SimpleNamespace(world_size=2, checkpoint_load_contents=["model", "optimizer", "extra"])
handler = types.SimpleNamespace(default_local_dir=sys.argv[1], rank=0, engine=types.SimpleNamespace(
    checkpoint_manager=manager, get_data_parallel_size=lambda: 2))
print("FOUND", CheckpointHandler._find_latest_checkpoint(handler), flush=True)

def full_disk(self, step):
    raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0: file write failed")

checkpoint_fixes._original_save_checkpoint = full_disk
CheckpointHandler.save_checkpoint(handler, 5)
"""


@pytest.mark.slow
def test_in_the_trainer_a_damaged_newest_checkpoint_is_skipped_and_a_full_disk_is_one_line(tmp_path):
    """sft/verl_plugins/checkpoint_fixes.py as a training process loads it (verl's own classes, a stand-in trainer)."""
    _fake_checkpoint_files(tmp_path / "run", [2, 4])
    (tmp_path / "run" / "global_step_4" / "model_world_size_2_rank_1.pt").unlink()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "VERL_USE_EXTERNAL_MODULES": "sft.verl_plugins.checkpoint_fixes",
           "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, "-c", _PLUGIN_CHECK, str(tmp_path / "run")], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 1 and "Traceback" not in output, output[-3000:]
    assert ("[verl-sft] note: resuming from global_step_2: global_step_4 (named by latest_checkpointed_iteration.txt) "
            "lacks or has damaged model_world_size_2_rank_1.pt") in output
    assert f"FOUND {tmp_path / 'run' / 'global_step_2'}" in output
    assert "[verl-sft] error (rank 0): checkpoint global_step_5 could not be written: the disk is full" in output
    assert "global_step_2 is the newest whole checkpoint" in output


@pytest.mark.slow
def test_a_failed_training_process_ends_the_launch_in_one_line(tmp_path):
    (tmp_path / "worker.py").write_text("import sys\nprint('[verl-sft] error: the cause, in one line', flush=True)\n"
                                        "sys.exit(3)\n")
    done = subprocess.run([sys.executable, "-m", "sft.launch.agent", "--standalone", "--nproc-per-node=1",
                           str(tmp_path / "worker.py")], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    output = done.stdout + done.stderr
    assert done.returncode == 3 and "Traceback" not in output, output
    assert "[verl-sft] training failed: rank 0 ended with status 3 (its output above says why)" in output


# ---------------------------------------------------------------------------------------------
# Evaluation: misleading references, rows without a usable prompt, an output location that is a file.


def test_a_reference_whose_final_answer_only_points_elsewhere_is_skipped_not_graded():
    from sft.generation.problems import samples_from_rows

    rows = [("data.jsonl:1", {"prompt": "What is 2 + 2?", "generated_solution": "Let me explain. The answer is here."}),
            ("data.jsonl:2", {"prompt": "Which option?", "generated_solution": "Comparing them, the answer is B."}),
            ("data.jsonl:3", {"prompt": "Is 7 odd?", "generated_solution": "7 = 2 * 3 + 1, so the answer is yes."}),
            ("data.jsonl:4", {"prompt": "What is 2 + 2?", "answer": "We add the numbers as usual and then we write "
                              "down what we get at the end of it all."})]
    graded = samples_from_rows(rows[:3])
    assert graded[0].reference_answer is None and "reads 'here', prose rather than a value" in graded[0].skip_reason
    assert [s.reference_answer for s in graded[1:]] == ["B", "yes"]
    (keyed,) = samples_from_rows(rows[3:], answer_key="answer")
    assert keyed.reference_answer is None and "holds a solution that states no final answer" in keyed.skip_reason


@pytest.mark.parametrize(("row", "expected"), [
    ({"prompt": None, "generated_solution": "4"}, "'prompt' is null: the row has no problem"),
    ({"prompt": 42, "generated_solution": "4"}, "'prompt' is int 42, not the problem's text"),
    ({"messages": None}, "'messages' is null"),
    ({"prompt": {"text": "hi"}}, "'prompt' is dict"),
])
def test_a_null_or_non_text_prompt_is_named_as_such(row, expected):
    from sft.generation.problems import ProblemsError, samples_from_rows

    with pytest.raises(ProblemsError, match=re.escape(expected)):
        samples_from_rows([("problems.jsonl:3", row)])


def test_evaluation_checks_its_output_location_and_model_before_generating(tmp_path, tiny_model_dir, monkeypatch,
                                                                          capsys):
    from sft import evaluate
    from sft.generation import backend

    data = tmp_path / "problems.jsonl"
    data.write_text(json.dumps({"prompt": "What is 2 + 2?", "generated_solution": "The answer is \\boxed{4}."}) + "\n")
    (tmp_path / "a file").write_text("")
    generated = []
    monkeypatch.setattr(evaluate.Generator, "generate", lambda *a, **k: generated.append(1) or [])
    assert evaluate.main([str(tiny_model_dir), str(data), "-o", str(tmp_path / "a file")]) == 2
    err = capsys.readouterr().err
    assert "--output-dir" in err and "is a file, not a directory" in err and "Traceback" not in err and not generated
    no_tokenizer = _model_copy(tiny_model_dir, tmp_path, "no-tokenizer")
    with pytest.raises(backend.GenerationError, match="encodes text to no tokens at all"):
        evaluate.evaluate(no_tokenizer, data, tmp_path / "out", progress=False)
    truncated = _model_copy(tiny_model_dir, tmp_path, "truncated-weights")
    with pytest.raises(Exception, match="model.safetensors is truncated"):
        evaluate.evaluate(truncated, data, tmp_path / "out", progress=False)
    assert not generated and not (tmp_path / "out").exists()
