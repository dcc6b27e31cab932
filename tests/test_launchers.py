"""The launchers: the settings table resolved as a pure function (environment in, settings,
overrides and printed output out), and end to end on CPU through the real bash launchers, the
way users run them: --help, dry runs, and (slow) training, LoRA and resume.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from conftest import (REPO_ROOT, composed_values, launcher_env, model_shards, run_launcher, train_losses,
                      write_chat_parquet)
from sft import launcher
from sft.launch.settings import SETTINGS, LaunchError, exported_settings, listing, resolve_settings

# Spaces, quotes, $, $(...), a Hydra interpolation and a comma: none may be evaluated or mangled.
AWKWARD_NAME = "out dir $(touch PWNED) 'q' ${HOME},x"


def _checkpoint_steps(output_dir: Path) -> list[int]:
    return sorted(int(p.name.split("_")[-1]) for p in output_dir.glob("global_step_*"))


@pytest.mark.slow
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


@pytest.mark.slow
def test_lora_trains_and_writes_lora_metadata(lora_run):
    tmp_path, output_dir, result = lora_run  # conftest.LORA_RUN_SETTINGS: rank 8, alpha 16, 2 epochs of 4 steps
    assert result.returncode == 0, result.stdout[-4000:]
    assert _checkpoint_steps(output_dir) == [4, 8]  # SAVE_FREQ=4
    meta = json.loads((output_dir / "global_step_8" / "lora_train_meta.json").read_text())
    assert meta["r"] == 8 and meta["lora_alpha"] == 16
    losses = train_losses(result.stdout)
    assert sorted(losses) == list(range(1, 9))
    assert losses[8] < losses[1] - 0.1, losses
    assert "val/loss" not in result.stdout
    # LORA_BASE_DTYPE=bf16 (the default): the frozen base is held in bf16, the adapters in fp32.
    assert "[verl-sft] LoRA: frozen base in bfloat16, adapters in fp32" in result.stdout
    dtypes = {name: str(value.dtype) for (name, _), value in model_shards(output_dir / "global_step_8").items()}
    assert {d for n, d in dtypes.items() if "lora_" in n} == {"torch.float32"}
    assert {d for n, d in dtypes.items() if "lora_" not in n} == {"torch.bfloat16"}
    # Hydra's run record lands beside the checkpoints, not in the working directory.
    assert list((output_dir / "hydra").glob("*/.hydra/config.yaml"))
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
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
    composed = composed_values(result.stdout)
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


@pytest.mark.slow
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
                                                       settings, expected, launch_in_process):
    not_parquet = tmp_path / "train.parquet"
    not_parquet.write_text("id,prompt\n1,hello\n")
    tiny_val = write_chat_parquet(tmp_path / "tiny_val.parquet", 4)
    replacements = {"<no-messages>": str(no_messages_parquet), "<not-parquet>": str(not_parquet),
                    "<tiny-val>": str(tiny_val)}
    settings = {k: replacements.get(v, v) for k, v in settings.items()}
    defaults = {"MODEL_NAME": tiny_model_dir, "TRAIN_FILE": chat_data_dir / "train.parquet", "OUTPUT_DIR": tmp_path / "out"}
    env = launcher_env(**{**defaults, **settings})
    with pytest.raises(LaunchError, match=re.escape(expected)):
        resolve_settings({**env, "SFT_MODE": "full"})
    returncode, output = launch_in_process(env)
    assert returncode == 2, output[-2000:]
    assert expected in output
    assert "[verl-sft] error:" in output and not (tmp_path / "out").exists()


def test_max_length_comes_from_the_prepare_data_manifest(tmp_path, tiny_model_dir, launch_in_process):
    data = tmp_path / "data"
    write_chat_parquet(data / "train.parquet", 32)
    tokens = {"recommended_max_length": 768, "recommended_max_tokens_per_gpu": 12288}
    (data / "manifest.json").write_text(json.dumps({"tokens": tokens}))
    env = launcher_env(MODEL_NAME=tiny_model_dir, TRAIN_FILE=data / "train.parquet", TRAIN_BATCH_SIZE=32,
                       OUTPUT_DIR=tmp_path / "out", DRY_RUN=1)
    returncode, output = launch_in_process(env)
    assert returncode == 0, output[-3000:]
    composed = composed_values(output)
    assert composed["data.max_length"] == "768"
    assert composed["data.max_token_len_per_gpu"] == "12288"
    assert composed["data.val_files"] == "None"  # no val.parquet beside TRAIN_FILE
    assert composed["trainer.test_freq"] == "-1"  # so verl does not iterate a missing val set



def test_training_encodes_rows_with_the_chat_template_dataset_and_flags_a_template_mismatch(tmp_path, tiny_model_dir,
                                                                                          launch_in_process):
    import hashlib

    from sft.demo.tiny_model import TinyModelSpec, build_tiny_model

    data = tmp_path / "data"
    write_chat_parquet(data / "train.parquet", 32)
    template = (tiny_model_dir / "chat_template.jinja").read_text()
    prepared = {"tokenizer": str(tiny_model_dir), "chat_template_sha256": hashlib.sha256(template.encode()).hexdigest()}
    (data / "manifest.json").write_text(json.dumps({"chat_template": prepared}))
    base = dict(TRAIN_FILE=data / "train.parquet", TRAIN_BATCH_SIZE=32, OUTPUT_DIR=tmp_path / "out", DRY_RUN=1)
    same_rc, same = launch_in_process(launcher_env(MODEL_NAME=tiny_model_dir, **base))
    assert same_rc == 0, same[-3000:]
    composed = composed_values(same)
    assert composed["data.custom_cls.path"] == str(REPO_ROOT / "sft" / "verl_plugins" / "sft_dataset.py")
    assert composed["data.custom_cls.name"] == "ChatTemplateSFTDataset"
    assert "template differs" not in same
    other = build_tiny_model(tmp_path / "other model", TinyModelSpec(seed=1))
    (other / "chat_template.jinja").write_text(template.replace("<|im_start|>", "<|im_start|> "))
    changed_rc, changed = launch_in_process(launcher_env(MODEL_NAME=other, **base))
    assert changed_rc == 0, changed[-3000:]
    assert "note: TRAIN_FILE was prepared with the chat template of" in changed
    assert "MODEL_NAME's template differs" in changed


def test_a_max_length_shorter_than_the_longest_sample_is_flagged(tmp_path, tiny_model_dir, launch_in_process):
    data = tmp_path / "data"
    write_chat_parquet(data / "train.parquet", 32)
    tokens = {"tokenizer": "tiny", "recommended_max_length": 768, "train": {"max": 600}}
    (data / "manifest.json").write_text(json.dumps({"tokens": tokens}))
    base = dict(MODEL_NAME=tiny_model_dir, TRAIN_FILE=data / "train.parquet", TRAIN_BATCH_SIZE=32,
                OUTPUT_DIR=tmp_path / "out", DRY_RUN=1)
    short_rc, short = launch_in_process(launcher_env(**base, MAX_LENGTH=512))
    assert short_rc == 0, short[-3000:]
    assert "note: MAX_LENGTH=512 is shorter than the longest training sample (600 tokens" in short
    enough_rc, enough = launch_in_process(launcher_env(**base, MAX_LENGTH=600))
    assert enough_rc == 0 and "shorter than the longest" not in enough


@pytest.mark.parametrize("script", ["run_sft_training.sh", "run_sft_peft.sh"])
def test_help_documents_every_setting_the_launcher_reads(script):
    result = subprocess.run([str(REPO_ROOT / "scripts" / script), "--help"], capture_output=True, text=True,
                            env=launcher_env())
    assert result.returncode == 0
    mode = "lora" if script == "run_sft_peft.sh" else "full"
    variables = {row.name for row in SETTINGS if mode in row.modes}
    assert {"NPROC_PER_NODE", "MODEL_NAME", "LEARNING_RATE", "DRY_RUN", "VERL_DIR"} <= variables
    if script == "run_sft_peft.sh":
        assert {"LORA_RANK", "LORA_ALPHA", "TARGET_MODULES"} <= variables
    documented = set(re.findall(r"^  ([A-Z_]+) ", result.stdout, re.MULTILINE))
    assert variables - documented == set(), "settings missing from --help"


def _header(path: Path) -> str:
    """The header comment of a bash file (what --help prints), without the leading "# "."""
    lines = path.read_text().splitlines()[1:]
    comment = [line for line in lines[: next(i for i, line in enumerate(lines) if not line.startswith("#"))]]
    return "\n".join(re.sub(r"^# ?", "", line) for line in comment)


@pytest.mark.parametrize(("path", "block"), [("scripts/lib/sft_env.sh", "shared"),
                                             ("scripts/run_sft_training.sh", "full"),
                                             ("scripts/run_sft_peft.sh", "lora")])
def test_header_listing_is_the_settings_table(path, block):
    header, expected = _header(REPO_ROOT / path), listing(block)
    pasteable = "\n".join(f"# {line}".rstrip() for line in expected.splitlines())
    assert expected in header, f"{path}: its settings listing differs from the table; replace it with:\n{pasteable}"
    names = re.compile(r"^  ([A-Z_]+) ", re.MULTILINE)
    assert names.findall(header) == names.findall(expected), f"{path} lists settings the table does not have"


def _minimal_env(tiny_model_dir, chat_data_dir, **settings) -> dict[str, str]:
    return launcher_env(MODEL_NAME=tiny_model_dir, TRAIN_FILE=chat_data_dir / "train.parquet", **settings)


def test_resolution_applies_the_defaults_of_each_mode(tmp_path, tiny_model_dir, chat_data_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    full = resolve_settings({**_minimal_env(tiny_model_dir, chat_data_dir), "SFT_MODE": "full"})
    assert full["LEARNING_RATE"] == 1e-5 and "LORA_RANK" not in full.values
    assert full["EXPERIMENT_NAME"] == "tiny-full" and full["OUTPUT_DIR"] == tmp_path / "checkpoints/verl-sft/tiny-full"
    assert full["VAL_FILE"] == chat_data_dir / "val.parquet" and full.sources["VAL_FILE"] == "auto: sibling val.parquet"
    assert (full["BATCH_SIZE"], full["DYNAMIC_BATCH"], full["COMPUTE_DTYPE"]) == (1, False, "fp32")
    assert full.sources["BATCH_SIZE"] == "auto: cpu" and "DEVICE" not in full.sources  # DEVICE=cpu was given
    lora = resolve_settings({**_minimal_env(tiny_model_dir, chat_data_dir, VAL_FILE=""), "SFT_MODE": "lora"})
    assert (lora["LEARNING_RATE"], lora["LORA_RANK"], lora["LORA_ALPHA"], lora["TARGET_MODULES"]) == (1e-4, 32, 64, "all-linear")
    assert lora["VAL_FILE"] is None and lora["TEST_FREQ"] == -1 and lora.sources["TEST_FREQ"] == "no VAL_FILE: validation off"
    overrides = launcher.hydra_overrides(lora)
    assert overrides[-4:] == ["model.lora_rank=32", "model.lora_alpha=64", "model.target_modules=all-linear",
                              "engine.model_dtype=bf16"]  # LORA_BASE_DTYPE: the frozen base in bf16
    assert "optim.lr=0.0001" in overrides and "data.val_files=null" in overrides and "trainer.test_freq=-1" in overrides


def test_every_setting_with_a_verl_key_reaches_the_command(tmp_path, tiny_model_dir, chat_data_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = resolve_settings({**_minimal_env(tiny_model_dir, chat_data_dir), "SFT_MODE": "lora"})
    keys = [override.split("=", 1)[0] for override in launcher.hydra_overrides(settings)]
    assert len(keys) == len(set(keys)), "an override is given twice"
    assert {key for row in SETTINGS for key in row.verl} <= set(keys)


def test_bash_gets_every_default_the_way_the_old_bash_defaults_set_them(tiny_model_dir):
    env = {"MODEL_NAME": "org/My-Model/", "PROJECT_NAME": "p", "EPOCHS": "", "VERL_DIR": "/v"}
    exported = dict(exported_settings(env, "lora"))
    assert exported["EXPERIMENT_NAME"] == "My-Model-lora"  # ${MODEL_NAME%/}, then ##*/
    assert exported["OUTPUT_DIR"] == "checkpoints/p/My-Model-lora"
    assert exported["EPOCHS"] == "3" and exported["VERL_DIR"] == "/v" and exported["RDZV_ID"] == ""
    assert exported["LEARNING_RATE"] == "1e-4" and exported["LORA_RANK"] == "32"
    assert "VAL_FILE" not in exported and "PYTHON" not in exported
    assert "LORA_RANK" not in dict(exported_settings(env, "full"))


def test_sourcing_sft_env_exports_every_setting_for_bash_code(tmp_path):
    """What slurm/lib/sft_slurm.sh relies on: after sourcing, every setting is an exported variable."""
    script = ('set -euo pipefail; SFT_MODE=lora; source "$1"; '
              'env -0 | grep -z -E "^(SFT_MODE|OUTPUT_DIR|EXPERIMENT_NAME|LORA_RANK|DRY_RUN|MASTER_PORT|VAL_FILE)="')
    env = launcher_env(MODEL_NAME="/models/my model", PROJECT_NAME="a $(b) 'c'")
    result = subprocess.run(["bash", "-c", script, "bash", str(REPO_ROOT / "scripts/lib/sft_env.sh")],
                            capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    exported = dict(item.split("=", 1) for item in result.stdout.split("\0") if item)
    assert exported == {"SFT_MODE": "lora", "EXPERIMENT_NAME": "my model-lora", "LORA_RANK": "32", "DRY_RUN": "0",
                        "OUTPUT_DIR": "checkpoints/a $(b) 'c'/my model-lora", "MASTER_PORT": "auto"}
