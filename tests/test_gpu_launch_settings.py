"""The launcher's GPU-only settings, as a GPU job would get them, checked in verl's composed config (DRY_RUN).

No GPU here: DEVICE=cuda with DRY_RUN=1 checks a GPU job's configuration with GPUs assumed (the
launcher's own mode for a cluster's login node), and flash-attn is "installed" as an empty
`flash_attn` package on the path (the launcher only asks whether it can be found). Then:
flash_attention_2, remove-padding, packed (dynamic) micro batches, bf16 compute and gradient
checkpointing are what verl composes, Liger is accepted as the documented override, and verl's
own model config dataclass (HFModelConfig) builds from the composed model section, which
DRY_RUN itself leaves out because it loads the model's config and tokenizer (here: the tiny
model's, on disk).
"""

from __future__ import annotations

import pytest

from conftest import composed_values, launcher_env
from sft import launcher
from sft.launch.preflight import check_overrides
from sft.launch.settings import resolve_settings


@pytest.fixture
def no_gpu_here(monkeypatch):
    monkeypatch.setattr("sft.launch.settings._detect_cuda", lambda: 0)


@pytest.fixture
def flash_attn_installed(monkeypatch, tmp_path):
    package = tmp_path / "site" / "flash_attn"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text('__version__ = "2.8.3"  # stand-in: only found, never run\n')
    monkeypatch.syspath_prepend(str(tmp_path / "site"))


def _gpu_job(tiny_model_dir, chat_data_dir, tmp_path, **settings) -> dict[str, str]:
    return launcher_env(MODEL_NAME=tiny_model_dir, TRAIN_FILE=chat_data_dir / "train.parquet", DRY_RUN=1,
                        DEVICE="cuda", NPROC_PER_NODE=2, OUTPUT_DIR=tmp_path / "out", **settings)


def _composed(env: dict[str, str], *overrides: str):
    settings = resolve_settings({**env, "SFT_MODE": env.get("SFT_MODE", "full")})
    return settings, check_overrides(settings, launcher.hydra_overrides(settings), list(overrides)).config


def test_a_gpu_job_with_flash_attn_gets_flash_attention_remove_padding_and_packing(
        tiny_model_dir, chat_data_dir, tmp_path, no_gpu_here, flash_attn_installed, launch_in_process):
    env = _gpu_job(tiny_model_dir, chat_data_dir, tmp_path)
    settings, config = _composed(env)
    assert settings.sources["ATTN_IMPLEMENTATION"] == "auto: flash-attn installed"
    assert config.model.override_config.attn_implementation == "flash_attention_2"
    assert config.model.use_remove_padding is True  # packed samples need varlen attention: flash-attn has it
    assert config.data.use_dynamic_bsz is True and config.data.max_token_len_per_gpu >= config.data.max_length
    assert config.model.enable_gradient_checkpointing is True
    assert config.engine.strategy == "fsdp2" and config.engine.mixed_precision.param_dtype == "bf16"
    assert config.trainer.device == "cuda" and config.trainer.n_gpus_per_node == 2
    # The launcher's own dry run (typed engine, optim and checkpoint sections built by verl) agrees.
    returncode, output = launch_in_process(env)
    assert returncode == 0, output[-3000:]
    composed = composed_values(output)
    assert composed["model.use_remove_padding"] == "True" and composed["data.use_dynamic_bsz"] == "True"
    assert "GPUs assumed" in output


def test_without_flash_attn_a_gpu_job_keeps_sdpa_and_unpacked_attention(tiny_model_dir, chat_data_dir, tmp_path,
                                                                         no_gpu_here, monkeypatch):
    monkeypatch.setattr("sft.launch.settings._module_available", lambda name: False)
    settings, config = _composed(_gpu_job(tiny_model_dir, chat_data_dir, tmp_path))
    assert config.model.override_config.attn_implementation == "sdpa"
    assert config.model.use_remove_padding is False  # sdpa would attend across a whole pack
    assert config.data.use_dynamic_bsz is True


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_liger_and_the_gpu_settings_build_verls_model_config(mode, tiny_model_dir, chat_data_dir, tmp_path,
                                                            no_gpu_here, flash_attn_installed):
    from verl.utils.config import omega_conf_to_dataclass

    _, config = _composed({**_gpu_job(tiny_model_dir, chat_data_dir, tmp_path), "SFT_MODE": mode},
                          "model.use_liger=True")
    assert config.model.use_liger is True
    model = omega_conf_to_dataclass(config.model)  # verl's HFModelConfig: what the engine is built from
    assert model.use_liger is True and model.use_remove_padding is True
    assert model.override_config["attn_implementation"] == "flash_attention_2"
    assert model.enable_gradient_checkpointing is True
    if mode == "lora":
        assert model.lora_rank == 32 and config.engine.model_dtype == "bf16"
