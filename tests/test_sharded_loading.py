"""sft/verl_plugins/sharded_loading.py: every rank reads its own shard from the safetensors files.

The weights it loads must be exactly verl's: each case trains one step at learning rate 0 (so
the saved checkpoint is the loaded model) with SFT_SHARDED_LOADING=0 (the plugin left out: verl's
loading) and with the plugin, and compares every shard of the two checkpoints. LoRA adapters are not in the files:
lora_B is zero in both, lora_A has PEFT's initialisation (same distribution, seeded by name).
"""

from __future__ import annotations

import math

import pytest
import torch

from conftest import launcher_env, model_shards, run_launcher, train_losses

pytestmark = pytest.mark.slow


def _one_step(tmp_path, model_dir, data_dir, name: str, sharded: bool, script: str):
    output_dir = tmp_path / name
    env = launcher_env(MODEL_NAME=model_dir, TRAIN_FILE=data_dir / "train.parquet", VAL_FILE="", OUTPUT_DIR=output_dir,
                       TRAIN_BATCH_SIZE=16, EPOCHS=1, LEARNING_RATE=0, WEIGHT_DECAY=0,
                       SFT_SHARDED_LOADING="1" if sharded else "0")
    result = run_launcher(script, env, "trainer.total_training_steps=1", "trainer.save_freq=1", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-4000:]
    return result.stdout, model_shards(output_dir / "global_step_1")


@pytest.fixture(scope="module")
def untied_model_dir(tmp_path_factory):
    from sft.demo.tiny_model import TinyModelSpec, build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("untied") / "tiny", TinyModelSpec(tie_word_embeddings=False))


@pytest.mark.parametrize("case", ["full-tied", "full-untied"])
def test_full_fine_tuning_loads_exactly_verls_weights(case, tmp_path, tiny_model_dir, untied_model_dir,
                                                      chat_data_dir):
    model = tiny_model_dir if case == "full-tied" else untied_model_dir
    verl_log, verl_shards = _one_step(tmp_path, model, chat_data_dir, "verl", False, "run_sft_training.sh")
    our_log, our_shards = _one_step(tmp_path, model, chat_data_dir, "ours", True, "run_sft_training.sh")
    verl_plugins = verl_log.split("VERL_USE_EXTERNAL_MODULES=", 1)[1].split()[0]
    assert "sharded_loading" not in verl_plugins  # SFT_SHARDED_LOADING=0 leaves the plugin out
    assert "loaded each rank's shard" not in verl_log
    assert "loaded each rank's shard from the safetensors files" in our_log
    assert verl_shards.keys() == our_shards.keys()
    for key, value in verl_shards.items():
        assert torch.equal(value, our_shards[key]), key
    assert train_losses(verl_log) == train_losses(our_log)


def test_lora_loads_verls_base_and_initialises_adapters_as_peft(tmp_path, tiny_model_dir, chat_data_dir):
    _, verl_shards = _one_step(tmp_path, tiny_model_dir, chat_data_dir, "verl", False, "run_sft_peft.sh")
    our_log, our_shards = _one_step(tmp_path, tiny_model_dir, chat_data_dir, "ours", True, "run_sft_peft.sh")
    assert "loaded each rank's shard from the safetensors files" in our_log
    assert verl_shards.keys() == our_shards.keys()
    for key, value in verl_shards.items():
        if "lora_" not in key[0]:
            assert torch.equal(value, our_shards[key]), key
        elif "lora_B" in key[0]:
            assert not value.any() and not our_shards[key].any(), key
    lora_a = [key for key in our_shards if "lora_A" in key[0]]
    assert lora_a
    for key in lora_a:  # kaiming uniform, a=sqrt(5): U(-b, b), b = 1/sqrt(fan_in)
        bound = 1 / math.sqrt(our_shards[key].shape[1])
        assert our_shards[key].abs().max() <= bound and our_shards[key].std() > bound / 3, key


def test_checkpoint_keys_and_adapter_initialisation():
    from sft.verl_plugins.sharded_loading import checkpoint_key, initial_adapter

    assert checkpoint_key("model.layers.0.mlp.up_proj.weight") == "model.layers.0.mlp.up_proj.weight"
    assert checkpoint_key("base_model.model.model.layers.3.self_attn.q_proj.base_layer.weight") == \
        "model.layers.3.self_attn.q_proj.weight"
    assert checkpoint_key("base_model.model.model.layers.3.self_attn.q_proj.lora_A.default.weight") is None
    name = "base_model.model.model.layers.3.self_attn.q_proj.lora_A.default.weight"
    first, again = initial_adapter(name, [8, 64], torch.float32), initial_adapter(name, [8, 64], torch.float32)
    assert torch.equal(first, again)  # the same full matrix on every rank
    assert not torch.equal(first, initial_adapter(name.replace("q_proj", "k_proj"), [8, 64], torch.float32))
    assert not initial_adapter(name.replace("lora_A", "lora_B"), [64, 8], torch.float32).any()
