"""The launchers end to end on CPU, the way users run them: training, LoRA, resume, dry runs, errors."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO_ROOT, launcher_env, run_launcher, train_losses, write_chat_parquet

# Spaces, quotes, $, $(...), a Hydra interpolation and a comma: none may be evaluated or mangled.
AWKWARD_NAME = "out dir $(touch PWNED) 'q' ${HOME},x"


def _checkpoint_steps(output_dir: Path) -> list[int]:
    return sorted(int(p.name.split("_")[-1]) for p in output_dir.glob("global_step_*"))


def test_full_finetune_trains_checkpoints_and_resumes(tmp_path, tiny_model_dir, chat_data_dir):
    output_dir = tmp_path / AWKWARD_NAME
    env = launcher_env(
        MODEL_NAME=tiny_model_dir,
        TRAIN_FILE=chat_data_dir / "train.parquet",  # its directory name has a space
        OUTPUT_DIR=output_dir,
        TRAIN_BATCH_SIZE=16,  # 64 rows -> 4 steps per epoch
        EPOCHS=1,
        LEARNING_RATE=1e-3,
        NPROC_PER_NODE=2,
    )
    first = run_launcher("run_sft_training.sh", env, cwd=tmp_path)
    assert first.returncode == 0, first.stdout[-4000:]
    assert _checkpoint_steps(output_dir) == [4]
    assert (output_dir / "global_step_4" / "model_world_size_2_rank_0.pt").is_file()
    assert (output_dir / "global_step_4" / "huggingface" / "config.json").is_file()
    losses = train_losses(first.stdout)
    assert sorted(losses) == [1, 2, 3, 4]
    assert losses[4] < losses[1] - 0.2, losses
    assert "val/loss" in first.stdout  # VAL_FILE defaulted to the sibling val.parquet
    assert not list(tmp_path.rglob("PWNED")), "a path from the environment was evaluated as code"

    # The same command with more epochs continues from global_step_4 instead of starting over.
    second = run_launcher("run_sft_training.sh", {**env, "EPOCHS": "2"}, cwd=tmp_path)
    assert second.returncode == 0, second.stdout[-4000:]
    resumed = train_losses(second.stdout)
    assert sorted(resumed) == [5, 6, 7, 8], "the rerun did not resume from the last checkpoint"
    assert resumed[5] < losses[1] - 0.2, "the resumed run starts from untrained weights"
    assert _checkpoint_steps(output_dir) == [4, 8]


def test_lora_trains_and_writes_lora_metadata(tmp_path, tiny_model_dir, chat_data_dir):
    output_dir = tmp_path / "lora run"
    env = launcher_env(
        MODEL_NAME=tiny_model_dir,
        TRAIN_FILE=chat_data_dir / "train.parquet",
        VAL_FILE="",  # empty: no validation
        OUTPUT_DIR=output_dir,
        TRAIN_BATCH_SIZE=16,
        EPOCHS=2,
        LEARNING_RATE=1e-2,
        LORA_RANK=8,
        LORA_ALPHA=16,
        NPROC_PER_NODE=2,
    )
    result = run_launcher("run_sft_peft.sh", env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-4000:]
    assert _checkpoint_steps(output_dir) == [8]
    meta = json.loads((output_dir / "global_step_8" / "lora_train_meta.json").read_text())
    assert meta["r"] == 8 and meta["lora_alpha"] == 16
    losses = train_losses(result.stdout)
    assert sorted(losses) == list(range(1, 9))
    assert losses[8] < losses[1] - 0.1, losses
    assert "val/loss" not in result.stdout
    # Hydra's run record lands beside the checkpoints, not in the working directory.
    assert list((output_dir / "hydra").glob("*/.hydra/config.yaml"))
    assert not (tmp_path / "outputs").exists()


def _composed(output: str) -> dict[str, str]:
    """The `key = value` lines a dry run prints after composing verl's config."""
    section = output.split("composed config", 1)[1]
    return dict(re.findall(r"^  ([a-z_.]+) = (.*)$", section, re.MULTILINE))


def test_dry_run_user_overrides_win_and_nothing_trains(tmp_path, tiny_model_dir, chat_data_dir):
    output_dir = tmp_path / "never created"
    env = launcher_env(
        MODEL_NAME=tiny_model_dir,
        TRAIN_FILE=chat_data_dir / "train.parquet",
        OUTPUT_DIR=output_dir,
        LEARNING_RATE="2e-4",
        LORA_RANK=32,
        MAX_LENGTH=512,
        DRY_RUN=1,
        WANDB_API_KEY="sk-secret-should-never-print",
        LOGGER="console,tensorboard",
    )
    result = run_launcher("run_sft_peft.sh", env, "optim.lr=0.123", "model.lora_rank=8", "data.max_length=256",
                          cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-4000:]
    composed = _composed(result.stdout)
    assert composed["optim.lr"] == "0.123"
    assert composed["model.lora_rank"] == "8"
    assert composed["data.max_length"] == "256"
    assert composed["model.lora_alpha"] == "64"  # the launcher's default, not overridden
    assert composed["trainer.logger"] == "['console', 'tensorboard']"
    assert composed["trainer.default_local_dir"] == str(output_dir)
    assert composed["engine.strategy"] == "fsdp2"
    assert composed["trainer.resume_mode"] == "auto"
    # The exact command is printed, with the user's overrides after the launcher's own.
    command = result.stdout.split("[verl-sft] command:", 1)[1].splitlines()[1]
    assert command.index("optim.lr=0.0002") < command.index("optim.lr=0.123")
    assert "DRY_RUN=1" in result.stdout and not output_dir.exists()
    assert "sk-secret" not in result.stdout


def test_dry_run_rejects_an_override_verl_does_not_know(tmp_path, tiny_model_dir, chat_data_dir):
    env = launcher_env(MODEL_NAME=tiny_model_dir, TRAIN_FILE=chat_data_dir / "train.parquet", DRY_RUN=1,
                       OUTPUT_DIR=tmp_path / "out")
    result = run_launcher("run_sft_training.sh", env, "optim.no_such_key=1", cwd=tmp_path)
    assert result.returncode != 0
    assert "no_such_key" in result.stdout and "Hydra config does not accept" in result.stdout


def test_verl_dir_checkout_is_used_instead_of_the_installed_package(tmp_path, tiny_model_dir, chat_data_dir):
    import verl

    checkout = tmp_path / "my verl"
    checkout.mkdir()
    (checkout / "verl").symlink_to(Path(verl.__file__).parent, target_is_directory=True)
    env = launcher_env(MODEL_NAME=tiny_model_dir, TRAIN_FILE=chat_data_dir / "train.parquet", DRY_RUN=1,
                       OUTPUT_DIR=tmp_path / "out", VERL_DIR=checkout)
    result = run_launcher("run_sft_training.sh", env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]
    assert f"from {checkout / 'verl'})" in result.stdout
    assert f"PYTHONPATH='{checkout}:{REPO_ROOT}" in result.stdout

    bad = run_launcher("run_sft_training.sh", {**env, "VERL_DIR": str(tmp_path)}, cwd=tmp_path)
    assert bad.returncode == 2 and "is not a verl checkout" in bad.stdout


@pytest.fixture(scope="module")
def no_messages_parquet(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bad") / "train.parquet"
    pd.DataFrame({"prompt": ["a"], "response": ["b"]}).to_parquet(path)
    return path


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"TRAIN_FILE": "missing/train.parquet"}, "TRAIN_FILE not found: missing/train.parquet. Run sft/prepare_data.py first"),
        ({"VAL_FILE": "missing/val.parquet"}, "VAL_FILE not found"),
        ({"TRAIN_FILE": "<no-messages>"}, "has no `messages` column"),
        ({"VAL_FILE": "<tiny-val>", "TRAIN_BATCH_SIZE": "16"}, "VAL_FILE has 4 rows, fewer than TRAIN_BATCH_SIZE=16"),
        ({"TRAIN_FILE": "<not-parquet>"}, "is not a readable Parquet file"),
        ({"EPOCHS": "three"}, "EPOCHS must be an integer, got 'three'"),
        ({"LEARNING_RATE": "fast"}, "LEARNING_RATE must be a number, got 'fast'"),
        ({"TRAIN_BATCH_SIZE": "15", "NPROC_PER_NODE": "2"}, "TRAIN_BATCH_SIZE=15 is not a multiple of the 2 processes"),
        ({"TRAIN_BATCH_SIZE": "128"}, "fewer than TRAIN_BATCH_SIZE=128"),
        ({"TRAIN_BATCH_SIZE": "12", "NPROC_PER_NODE": "2", "BATCH_SIZE": "4", "DYNAMIC_BATCH": "0"},
         "TRAIN_BATCH_SIZE=12 gives 6 samples per process (2 processes), not a multiple of the micro batch BATCH_SIZE=4"),
        ({"MAX_LENGTH": "4096", "MAX_TOKENS_PER_GPU": "1024"}, "Set MAX_TOKENS_PER_GPU>=4096"),
        ({"LOGGER": "console,wandbb"}, "unknown logger 'wandbb'"),
        ({"DEVICE": "tpu"}, "DEVICE must be auto, cuda or cpu"),
        ({"MODEL_NAME": "./no/such/model"}, "MODEL_NAME is not a model directory"),
        ({"SAVE_FREQ": "0"}, "SAVE_FREQ must be a positive number of steps, -1 or after_each_epoch"),
        ({"MASTER_PORT": "70000"}, "MASTER_PORT must be a TCP port"),
        ({"NODE_RANK": "1"}, "NODE_RANK=1 must be smaller than NNODES=1"),
        ({"TRUST_REMOTE_CODE": "maybe"}, "TRUST_REMOTE_CODE must be 0 or 1"),
    ],
)
def test_preflight_errors_name_the_problem_and_the_fix(tmp_path, tiny_model_dir, chat_data_dir, no_messages_parquet,
                                                       settings, expected):
    not_parquet = tmp_path / "train.parquet"
    not_parquet.write_text("id,prompt\n1,hello\n")
    tiny_val = write_chat_parquet(tmp_path / "tiny_val.parquet", 4)
    replacements = {"<no-messages>": str(no_messages_parquet), "<not-parquet>": str(not_parquet),
                    "<tiny-val>": str(tiny_val)}
    settings = {k: replacements.get(v, v) for k, v in settings.items()}
    defaults = {"MODEL_NAME": tiny_model_dir, "TRAIN_FILE": chat_data_dir / "train.parquet", "OUTPUT_DIR": tmp_path / "out"}
    env = launcher_env(**{**defaults, **settings})
    result = run_launcher("run_sft_training.sh", env, cwd=tmp_path)
    assert result.returncode == 2, result.stdout[-2000:]
    assert expected in result.stdout
    assert "[verl-sft] error:" in result.stdout and not (tmp_path / "out").exists()


def test_max_length_comes_from_the_prepare_data_manifest(tmp_path, tiny_model_dir):
    data = tmp_path / "data"
    write_chat_parquet(data / "train.parquet", 32)
    tokens = {"recommended_max_length": 768, "recommended_max_tokens_per_gpu": 12288}
    (data / "manifest.json").write_text(json.dumps({"tokens": tokens}))
    env = launcher_env(MODEL_NAME=tiny_model_dir, TRAIN_FILE=data / "train.parquet", TRAIN_BATCH_SIZE=32,
                       OUTPUT_DIR=tmp_path / "out", DRY_RUN=1)
    result = run_launcher("run_sft_training.sh", env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]
    composed = _composed(result.stdout)
    assert composed["data.max_length"] == "768"
    assert composed["data.max_token_len_per_gpu"] == "12288"
    assert composed["data.val_files"] == "None"  # no val.parquet beside TRAIN_FILE
    assert composed["trainer.test_freq"] == "-1"  # so verl does not iterate a missing val set



def test_training_encodes_rows_with_the_chat_template_dataset_and_flags_a_template_mismatch(tmp_path, tiny_model_dir):
    import hashlib

    from sft.demo.tiny_model import TinyModelSpec, build_tiny_model

    data = tmp_path / "data"
    write_chat_parquet(data / "train.parquet", 32)
    template = (tiny_model_dir / "chat_template.jinja").read_text()
    prepared = {"tokenizer": str(tiny_model_dir), "chat_template_sha256": hashlib.sha256(template.encode()).hexdigest()}
    (data / "manifest.json").write_text(json.dumps({"chat_template": prepared}))
    base = dict(TRAIN_FILE=data / "train.parquet", TRAIN_BATCH_SIZE=32, OUTPUT_DIR=tmp_path / "out", DRY_RUN=1)
    same = run_launcher("run_sft_training.sh", launcher_env(MODEL_NAME=tiny_model_dir, **base), cwd=tmp_path)
    assert same.returncode == 0, same.stdout[-3000:]
    composed = _composed(same.stdout)
    assert composed["data.custom_cls.path"] == str(REPO_ROOT / "sft" / "verl_plugins" / "sft_dataset.py")
    assert composed["data.custom_cls.name"] == "ChatTemplateSFTDataset"
    assert "template differs" not in same.stdout
    other = build_tiny_model(tmp_path / "other model", TinyModelSpec(seed=1))
    (other / "chat_template.jinja").write_text(template.replace("<|im_start|>", "<|im_start|> "))
    changed = run_launcher("run_sft_training.sh", launcher_env(MODEL_NAME=other, **base), cwd=tmp_path)
    assert changed.returncode == 0, changed.stdout[-3000:]
    assert "note: TRAIN_FILE was prepared with the chat template of" in changed.stdout
    assert "MODEL_NAME's template differs" in changed.stdout


def test_a_max_length_shorter_than_the_longest_sample_is_flagged(tmp_path, tiny_model_dir):
    data = tmp_path / "data"
    write_chat_parquet(data / "train.parquet", 32)
    tokens = {"tokenizer": "tiny", "recommended_max_length": 768, "train": {"max": 600}}
    (data / "manifest.json").write_text(json.dumps({"tokens": tokens}))
    base = dict(MODEL_NAME=tiny_model_dir, TRAIN_FILE=data / "train.parquet", TRAIN_BATCH_SIZE=32,
                OUTPUT_DIR=tmp_path / "out", DRY_RUN=1)
    short = run_launcher("run_sft_training.sh", launcher_env(**base, MAX_LENGTH=512), cwd=tmp_path)
    assert short.returncode == 0, short.stdout[-3000:]
    assert "note: MAX_LENGTH=512 is shorter than the longest training sample (600 tokens" in short.stdout
    enough = run_launcher("run_sft_training.sh", launcher_env(**base, MAX_LENGTH=600), cwd=tmp_path)
    assert enough.returncode == 0 and "shorter than the longest" not in enough.stdout

@pytest.mark.parametrize("script", ["run_sft_training.sh", "run_sft_peft.sh"])
def test_help_documents_every_setting_the_launcher_reads(script):
    result = subprocess.run([str(REPO_ROOT / "scripts" / script), "--help"], capture_output=True, text=True,
                            env=launcher_env())
    assert result.returncode == 0
    sources = (REPO_ROOT / "scripts" / script).read_text() + (REPO_ROOT / "scripts/lib/sft_env.sh").read_text()
    variables = set(re.findall(r'^([A-Z_]+)="\$\{\1:-', sources, re.MULTILINE)) - {"SFT_MODE"}
    assert {"NPROC_PER_NODE", "MODEL_NAME", "LEARNING_RATE", "DRY_RUN", "VERL_DIR"} <= variables
    if script == "run_sft_peft.sh":
        assert {"LORA_RANK", "LORA_ALPHA", "TARGET_MODULES"} <= variables
    documented = set(re.findall(r"^  ([A-Z_]+) ", result.stdout, re.MULTILINE))
    assert variables - documented == set(), "settings missing from --help"
