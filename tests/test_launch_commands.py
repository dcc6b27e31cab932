"""The commands users already have (issue 14), run through the launcher as written.

The five overrides from this project's original design (written for verl's older
fsdp_sft_trainer), each split exactly as a POSIX shell splits the documented line (shlex), with
DRY_RUN=1: accepted, and the config verl 0.9.1 composes has the intended value. Also: an unknown
key's "did you mean", a `${HOME}` left in OUTPUT_DIR, a GPU job checked where there is no GPU,
BATCH_SIZE under dynamic batching, the check before torchrun on every launch, and the run record
that each launch writes and the export copies. verl_keys' table itself, one test per old key:
tests/test_verl_keys.py.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from conftest import REPO_ROOT, composed_values, launcher_env, write_chat_parquet
from sft import launcher
from sft.launch.run_record import RECORD_FILE, copy_into_export
from sft.launch.settings import LaunchError, resolve_settings
from sft.prepare_data import main as prepare_data_main

# The overrides of the original design's commands, verbatim (SFT_FRAMEWORK_OVERVIEW.md's
# original text, quoted in issue 14): `bash scripts/run_sft_training.sh <these>`.
SEED_COMMANDS = {
    "precision": "optim.weight_decay=0.01 data.max_length=4096 trainer.save_freq=100 trainer.mixed_precision=bf16",
    "data_keys": "data.prompt_key=question data.response_key=answer",
    "template_kwargs": "data.apply_chat_template_kwargs='{\\\"add_generation_prompt\\\":false}'",
    "optimizer": "optim.name=adamw optim.lr=2e-5 optim.weight_decay=0.01 optim.betas='[0.9,0.999]'",
    "schedule": "optim.lr_scheduler=cosine optim.warmup_ratio=0.1",
}


@pytest.fixture(scope="module")
def prepared_question_answer(tmp_path_factory, tiny_model_dir) -> Path:
    """prepare_data output (train/val Parquet + manifest.json) from rows keyed `question` / `answer`."""
    work = tmp_path_factory.mktemp("qa")
    rows = [{"id": i, "question": f"Solve: What is {i} + {i + 3}?", "answer": f"Step 1: {i} + {i + 3} = {2 * i + 3}. "
             f"The answer is \\boxed{{{2 * i + 3}}}."} for i in range(80)]
    (work / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    rc = prepare_data_main([str(work / "rows.jsonl"), "-o", str(work / "data"), "--prompt-key", "question",
                            "--response-key", "answer", "--tokenizer", str(tiny_model_dir), "--val-split", "0.2",
                            "--no-progress"])
    assert rc == 0
    return work / "data"


def _env(tiny_model_dir, train_file: Path, tmp_path: Path, **settings) -> dict[str, str]:
    return launcher_env(**{"MODEL_NAME": tiny_model_dir, "TRAIN_FILE": train_file, "OUTPUT_DIR": tmp_path / "out",
                           "DRY_RUN": 1, **settings})


def _dry_run(launch_in_process, env, line: str) -> tuple[dict[str, str], str]:
    returncode, output = launch_in_process(env, *shlex.split(line))
    assert returncode == 0, output[-3000:]
    assert "Traceback" not in output
    return composed_values(output), output


def test_seed_command_precision_and_lengths(tmp_path, tiny_model_dir, chat_data_dir, launch_in_process):
    composed, output = _dry_run(launch_in_process, _env(tiny_model_dir, chat_data_dir / "train.parquet", tmp_path),
                                SEED_COMMANDS["precision"])
    assert composed["optim.weight_decay"] == "0.01"
    assert composed["data.max_length"] == "4096"
    assert composed["trainer.save_freq"] == "100"
    # bf16 compute: FSDP2's param_dtype, the only compute-dtype switch verl 0.9.1's FSDP engine reads.
    assert composed["engine.mixed_precision"] == "{'param_dtype': 'bf16', 'reduce_dtype': 'fp32', 'buffer_dtype': 'fp32'}"
    assert output.count("trainer.mixed_precision is engine.mixed_precision.param_dtype in verl 0.9.1") == 1
    assert "data.max_length=4096 (your override) replaces MAX_LENGTH=" in output


def test_seed_command_data_keys_agree_with_the_manifest(tmp_path, tiny_model_dir, prepared_question_answer,
                                                        launch_in_process):
    env = _env(tiny_model_dir, prepared_question_answer / "train.parquet", tmp_path, TRAIN_BATCH_SIZE=16)
    composed, output = _dry_run(launch_in_process, env, SEED_COMMANDS["data_keys"])
    assert "data.prompt_key=question matches TRAIN_FILE's manifest.json" in output
    assert "data.response_key=answer matches" in output
    command = output.split("[verl-sft] command:", 1)[1].splitlines()[1]
    assert "prompt_key" not in command and "response_key" not in command  # nothing verl 0.9.1 would refuse


def test_data_keys_that_differ_from_the_manifest_are_refused_with_the_fix(tmp_path, tiny_model_dir,
                                                                          prepared_question_answer, chat_data_dir,
                                                                          launch_in_process):
    env = _env(tiny_model_dir, prepared_question_answer / "train.parquet", tmp_path, TRAIN_BATCH_SIZE=16)
    returncode, output = launch_in_process(env, "data.prompt_key=problem", "data.response_key=answer")
    assert returncode == 2
    error = output.split("[verl-sft] error: ", 1)[1]
    assert "data.prompt_key=problem but TRAIN_FILE was prepared with --prompt-key question" in error
    assert "--prompt-key problem --response-key answer" in error and "Traceback" not in output
    # Without a manifest nobody can say which fields the messages came from.
    returncode, output = launch_in_process(_env(tiny_model_dir, chat_data_dir / "train.parquet", tmp_path),
                                           *shlex.split(SEED_COMMANDS["data_keys"]))
    assert returncode == 2 and "there is no readable" in output and "manifest.json" in output


@pytest.mark.parametrize("line", [
    SEED_COMMANDS["template_kwargs"],  # JSON with backslash-escaped quotes, as documented
    "data.apply_chat_template_kwargs='{\"add_generation_prompt\":false}'",  # plain JSON
    "data.apply_chat_template_kwargs={add_generation_prompt:false}",  # Hydra's own dict syntax
])
def test_seed_command_chat_template_kwargs(line, tmp_path, tiny_model_dir, prepared_question_answer,
                                           launch_in_process):
    env = _env(tiny_model_dir, prepared_question_answer / "train.parquet", tmp_path, TRAIN_BATCH_SIZE=16)
    composed, output = _dry_run(launch_in_process, env, line)
    assert composed["data.apply_chat_template_kwargs"] == "{'add_generation_prompt': False}"
    assert "ChatTemplateSFTDataset loads and accepts the data" in output


def test_the_dataset_trains_the_same_tokens_with_add_generation_prompt_false(prepared_question_answer,
                                                                             tiny_tokenizer):
    from sft.verl_plugins.sft_dataset import ChatTemplateSFTDataset

    files = [str(prepared_question_answer / "train.parquet")]
    plain = ChatTemplateSFTDataset(files, tiny_tokenizer, {"max_length": 512, "pad_mode": "no_padding"})
    asked = ChatTemplateSFTDataset(files, tiny_tokenizer, {"max_length": 512, "pad_mode": "no_padding",
                                                           "apply_chat_template_kwargs": {"add_generation_prompt": False}})
    for index in (0, len(plain) - 1):
        assert plain[index]["input_ids"].tolist() == asked[index]["input_ids"].tolist()
        assert plain[index]["loss_mask"].tolist() == asked[index]["loss_mask"].tolist()
    with pytest.raises(ValueError, match="add_generation_prompt=True.*never trained"):
        ChatTemplateSFTDataset.check_config({"apply_chat_template_kwargs": {"add_generation_prompt": True}}, files)


def test_a_template_setting_the_data_was_not_prepared_with_stops_before_torchrun(tmp_path, tiny_model_dir,
                                                                                 prepared_question_answer,
                                                                                 launch_in_process):
    env = _env(tiny_model_dir, prepared_question_answer / "train.parquet", tmp_path, TRAIN_BATCH_SIZE=16, DRY_RUN=0)
    returncode, output = launch_in_process(env, "data.apply_chat_template_kwargs={enable_thinking:false}")
    assert returncode == 2 and "Traceback" not in output
    assert "was prepared with none" in output and "--chat-template-kwargs" in output
    assert not (tmp_path / "out").exists()  # stopped before anything was written or started


def test_seed_command_optimizer(tmp_path, tiny_model_dir, chat_data_dir, launch_in_process):
    composed, output = _dry_run(launch_in_process, _env(tiny_model_dir, chat_data_dir / "train.parquet", tmp_path),
                                SEED_COMMANDS["optimizer"])
    assert composed["optim.optimizer"] == "AdamW"  # verl looks the class up by its exact name
    assert composed["optim.lr"] == "2e-05"
    assert composed["optim.weight_decay"] == "0.01"
    assert composed["optim.betas"] == "[0.9, 0.999]"
    assert "optim.name is optim.optimizer in verl 0.9.1: passed optim.optimizer=AdamW" in output


def test_seed_command_schedule(tmp_path, tiny_model_dir, chat_data_dir, launch_in_process):
    env = _env(tiny_model_dir, chat_data_dir / "train.parquet", tmp_path, LR_SCHEDULER="constant")
    composed, output = _dry_run(launch_in_process, env, SEED_COMMANDS["schedule"])
    assert composed["optim.lr_scheduler_type"] == "cosine"
    assert composed["optim.lr_warmup_steps_ratio"] == "0.1"
    assert "optim.lr_scheduler is optim.lr_scheduler_type in verl 0.9.1" in output
    assert "optim.warmup_ratio is optim.lr_warmup_steps_ratio in verl 0.9.1" in output


@pytest.mark.slow
def test_the_documented_line_through_bash(tmp_path, tiny_model_dir, prepared_question_answer):
    """The escaped-quotes command exactly as a user types it, parsed by bash itself."""
    env = _env(tiny_model_dir, prepared_question_answer / "train.parquet", tmp_path, TRAIN_BATCH_SIZE=16)
    line = f"bash scripts/run_sft_training.sh {SEED_COMMANDS['template_kwargs']} {SEED_COMMANDS['optimizer']}"
    result = subprocess.run(["bash", "-c", line], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    composed = composed_values(result.stdout)
    assert composed["data.apply_chat_template_kwargs"] == "{'add_generation_prompt': False}"
    assert composed["optim.betas"] == "[0.9, 0.999]" and composed["optim.optimizer"] == "AdamW"


@pytest.mark.parametrize("override, names", [
    ("optim.warmup_ratoi=0.1", "optim.lr_warmup_steps_ratio"),
    ("optim.weight_decy=0.1", "optim.weight_decay"),
    ("data.max_lenght=4096", "data.max_length"),
    ("trainer.save_frequency=100", "trainer.save_freq"),
])
def test_a_misspelt_key_stops_in_one_line_naming_the_right_key(override, names, tmp_path, tiny_model_dir,
                                                               chat_data_dir, launch_in_process):
    env = _env(tiny_model_dir, chat_data_dir / "train.parquet", tmp_path, DRY_RUN=0)
    returncode, output = launch_in_process(env, override)
    assert returncode == 2 and "Traceback" not in output
    error = output.split("[verl-sft] error: ", 1)[1].strip()
    assert "\n" not in error
    assert re.search(r"Did you mean " + re.escape(names) + r"\b", error), error
    assert "+" + override.split("=")[0] not in error  # never Hydra's advice to append an unread key
    assert not (tmp_path / "out").exists()


def test_an_added_key_verl_never_reads_is_flagged(tmp_path, tiny_model_dir, chat_data_dir, launch_in_process):
    env = _env(tiny_model_dir, chat_data_dir / "train.parquet", tmp_path)
    _, output = _dry_run(launch_in_process, env, "+trainer.schedule.kind=cosine")
    assert "+trainer.schedule.kind adds a key that verl 0.9.1's config does not have" in output
    # Added to a section verl builds as a dataclass: the dry run builds it and stops in one line.
    returncode, output = launch_in_process(env, "+optim.schedule=cosine")
    assert "+optim.schedule adds a key that verl's YAML does not declare to optim" in output
    assert returncode == 2 and "Traceback" not in output
    assert "unexpected keyword argument 'schedule'" in output.split("[verl-sft] error: ", 1)[1]


def test_a_literal_dollar_home_in_output_dir_is_kept_and_flagged(tmp_path, tiny_model_dir, chat_data_dir,
                                                                 launch_in_process):
    env = _env(tiny_model_dir, chat_data_dir / "train.parquet", tmp_path)
    env["OUTPUT_DIR"] = "${HOME}/ckpt"  # as read, unexpanded, from a config file
    composed, output = _dry_run(launch_in_process, env, "")
    assert composed["trainer.default_local_dir"] == str(tmp_path / "${HOME}" / "ckpt")
    assert "OUTPUT_DIR contains ${HOME} as literal text" in output


def test_a_gpu_job_is_checked_where_no_gpu_is_visible(tmp_path, tiny_model_dir, chat_data_dir, launch_in_process):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: nothing is assumed")
    env = _env(tiny_model_dir, chat_data_dir / "train.parquet", tmp_path, DEVICE="cuda", NPROC_PER_NODE=4,
               TRAIN_BATCH_SIZE=16)
    composed, output = _dry_run(launch_in_process, env, "")
    assert "GPUs assumed" in output
    assert composed["trainer.device"] == "cuda" and composed["trainer.n_gpus_per_node"] == "4"
    assert composed["data.use_dynamic_bsz"] == "True"  # the GPU defaults
    assert composed["model.enable_gradient_checkpointing"] == "True"
    assert "'param_dtype': 'bf16'" in composed["engine.mixed_precision"]
    # Only a dry run assumes GPUs; a real launch, or NPROC_PER_NODE=auto, says what to do.
    returncode, output = launch_in_process({**env, "DRY_RUN": "0"})
    assert returncode == 2 and "no GPU is visible" in output
    returncode, output = launch_in_process({**env, "NPROC_PER_NODE": "auto"})
    assert returncode == 2 and "set NPROC_PER_NODE to the job's GPUs per node" in output


def _gpu_settings(tiny_model_dir, chat_data_dir, **settings):
    env = launcher_env(MODEL_NAME=tiny_model_dir, TRAIN_FILE=chat_data_dir / "train.parquet", DRY_RUN=1,
                       DEVICE="cuda", NPROC_PER_NODE=1, MAX_LENGTH=1024, SFT_MODE="full", **settings)
    return resolve_settings(env)


def test_batch_size_bounds_the_packed_token_budget(tiny_model_dir, chat_data_dir, monkeypatch):
    monkeypatch.setattr("sft.launch.settings._detect_cuda", lambda: 0)
    default = _gpu_settings(tiny_model_dir, chat_data_dir)
    assert default["DYNAMIC_BATCH"] is True and default["MAX_TOKENS_PER_GPU"] == 8192
    halved = _gpu_settings(tiny_model_dir, chat_data_dir, BATCH_SIZE=2)
    assert halved["MAX_TOKENS_PER_GPU"] == 2 * 1024  # BATCH_SIZE x MAX_LENGTH
    assert "BATCH_SIZE x MAX_LENGTH = 2 x 1024 (was 8192)" in halved.sources["MAX_TOKENS_PER_GPU"]
    assert any("BATCH_SIZE=2 with DYNAMIC_BATCH on" in note for note in halved.notes)
    larger = _gpu_settings(tiny_model_dir, chat_data_dir, BATCH_SIZE=16)
    assert larger["MAX_TOKENS_PER_GPU"] == 8192  # already under 16 x 1024
    both = _gpu_settings(tiny_model_dir, chat_data_dir, BATCH_SIZE=2, MAX_TOKENS_PER_GPU=4096)
    assert both["MAX_TOKENS_PER_GPU"] == 2048
    fixed = _gpu_settings(tiny_model_dir, chat_data_dir, BATCH_SIZE=2, DYNAMIC_BATCH=0)
    assert fixed["DYNAMIC_BATCH"] is False and fixed["BATCH_SIZE"] == 2  # exactly 2 samples per micro batch


def test_max_tokens_per_gpu_set_on_its_own_turns_packing_on(tiny_model_dir, chat_data_dir):
    env = launcher_env(MODEL_NAME=tiny_model_dir, TRAIN_FILE=chat_data_dir / "train.parquet", SFT_MODE="full",
                       MAX_LENGTH=1024, MAX_TOKENS_PER_GPU=4096)  # CPU: DYNAMIC_BATCH auto would be off
    settings = resolve_settings(env)
    assert settings["DYNAMIC_BATCH"] is True and settings["MAX_TOKENS_PER_GPU"] == 4096
    assert settings.sources["DYNAMIC_BATCH"] == "auto: MAX_TOKENS_PER_GPU set (a packed budget)"
    with pytest.raises(LaunchError, match="MAX_TOKENS_PER_GPU=4096 is read only when micro batches are packed"):
        resolve_settings({**env, "DYNAMIC_BATCH": "0"})


def test_a_micro_batch_override_under_dynamic_batching_is_flagged(tmp_path, tiny_model_dir, chat_data_dir,
                                                                  launch_in_process):
    env = _env(tiny_model_dir, chat_data_dir / "train.parquet", tmp_path, DYNAMIC_BATCH=1)
    _, output = _dry_run(launch_in_process, env, "data.micro_batch_size_per_gpu=8")
    assert "data.micro_batch_size_per_gpu is read for validation only while data.use_dynamic_bsz=true" in output


def _launch_recording_exec(monkeypatch, env: dict[str, str], *overrides: str) -> list[str]:
    started = []
    monkeypatch.setattr(launcher.os, "execve", lambda path, argv, child_env: started.append(argv))
    assert launcher.main(["--", *overrides], env=env) == 0
    return started[0]


def test_every_launch_checks_then_records_the_run(tmp_path, tiny_model_dir, prepared_question_answer, monkeypatch,
                                                  capsys):
    env = _env(tiny_model_dir, prepared_question_answer / "train.parquet", tmp_path, TRAIN_BATCH_SIZE=16, DRY_RUN=0,
               SFT_MODE="full")
    argv = _launch_recording_exec(monkeypatch, env, "optim.warmup_ratio=0.1")
    output = capsys.readouterr().out
    assert re.search(r"checked in \d+\.\d s: verl's config composes with every override", output)
    assert argv[-1] == "optim.lr_warmup_steps_ratio=0.1"  # translated before torchrun, not by it
    record = json.loads((tmp_path / "out" / RECORD_FILE).read_text())
    (entry,) = record["launches"]
    assert entry["user_overrides"] == ["optim.warmup_ratio=0.1"]
    assert entry["overrides"] == argv[argv.index("verl.trainer.sft_trainer") + 1:]
    assert entry["settings"]["TRAIN_BATCH_SIZE"] == 16 and entry["given"]["TRAIN_BATCH_SIZE"] == "16"
    assert entry["versions"]["verl"] == "0.9.1" and entry["versions"]["torch"]
    assert re.fullmatch(r"[0-9a-f]{40}", entry["code"]["git_commit"])
    manifest = prepared_question_answer / "manifest.json"
    assert entry["data"]["manifest"] == str(manifest)
    assert entry["data"]["manifest_sha256"] == hashlib.sha256(manifest.read_bytes()).hexdigest()
    assert any("optim.warmup_ratio is optim.lr_warmup_steps_ratio" in note for note in entry["notes"])
    # A rerun (a resume) adds its launch; the history stays.
    _launch_recording_exec(monkeypatch, env)
    assert len(json.loads((tmp_path / "out" / RECORD_FILE).read_text())["launches"]) == 2


def test_the_export_copies_the_run_record_and_the_data_manifest(tmp_path, prepared_question_answer):
    output_dir, model_dir = tmp_path / "out", tmp_path / "model"
    (output_dir / "global_step_4").mkdir(parents=True)
    model_dir.mkdir()
    assert copy_into_export(output_dir / "global_step_4", model_dir)["run_record"] is None
    manifest = tmp_path / "manifest.json"
    manifest.write_bytes((prepared_question_answer / "manifest.json").read_bytes())
    digest = hashlib.sha256(manifest.read_bytes()).hexdigest()
    record = {"format": 1, "launches": [{"data": {"manifest": str(manifest), "manifest_sha256": digest}}]}
    (output_dir / RECORD_FILE).write_text(json.dumps(record))
    copied = copy_into_export(output_dir / "global_step_4", model_dir)
    assert copied == {"run_record": RECORD_FILE, "data_manifest": "data_manifest.json", "manifest_unchanged": True}
    assert (model_dir / "data_manifest.json").read_bytes() == manifest.read_bytes()
    assert json.loads((model_dir / RECORD_FILE).read_text()) == record
    manifest.write_text("{}")  # prepared again after training
    copied = copy_into_export(output_dir / "global_step_4", model_dir)
    assert copied["manifest_unchanged"] is False and "changed since the last launch" in copied["note"]


def test_a_bad_data_file_row_count_still_reports_before_composing(tmp_path, tiny_model_dir, launch_in_process):
    """Settings errors come first and alone: nothing is composed for a launch that cannot run."""
    data = tmp_path / "data"
    write_chat_parquet(data / "train.parquet", 8)
    returncode, output = launch_in_process(_env(tiny_model_dir, data / "train.parquet", tmp_path), "optim.nope=1")
    assert returncode == 2 and "fewer than TRAIN_BATCH_SIZE" in output and "nope" not in output


def test_cpu_training_processes_get_a_fixed_malloc_mmap_threshold(tmp_path, tiny_model_dir, prepared_question_answer,
                                                                   monkeypatch, capsys):
    """glibc keeps freed blocks below its growing mmap threshold (sft/launcher.py): 1 MiB on CPU, the user's wins."""
    recorded = []
    monkeypatch.setattr(launcher.os, "execve", lambda path, argv, child_env: recorded.append(child_env))
    env = _env(tiny_model_dir, prepared_question_answer / "train.parquet", tmp_path, TRAIN_BATCH_SIZE=16, DRY_RUN=0,
               SFT_MODE="full", DEVICE="cpu")
    assert launcher.main([], env=env) == 0
    assert recorded[-1]["MALLOC_MMAP_THRESHOLD_"] == str(1 << 20) == str(launcher.CPU_MALLOC_MMAP_THRESHOLD)
    assert "MALLOC_MMAP_THRESHOLD_=1048576 " in capsys.readouterr().out  # in the printed command
    assert launcher.main([], env={**env, "MALLOC_MMAP_THRESHOLD_": "65536"}) == 0
    assert recorded[-1]["MALLOC_MMAP_THRESHOLD_"] == "65536"
