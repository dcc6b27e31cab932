"""sft/launch/memory_plan.py: parameter counts, the plan's arithmetic, its table and its warnings.

Pure arithmetic: no model is built and torch is not imported (one test checks that importing the
module does not import torch or transformers).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from conftest import REPO_ROOT
from sft.launch import memory_plan as mp
from sft.launch.memory_plan import GIB, architecture, count_parameters, lora_parameters, plan_memory

# Public configs: the config.json of each model on the Hugging Face hub
# (https://huggingface.co/<id>/blob/main/config.json), the fields the plan reads.
QWEN25_05B = {  # Qwen/Qwen2.5-0.5B
    "model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
    "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True,
}
QWEN25_15B = {  # Qwen/Qwen2.5-1.5B
    "model_type": "qwen2", "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
    "num_attention_heads": 12, "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True,
}
QWEN25_7B = {  # Qwen/Qwen2.5-7B
    "model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
    "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064, "tie_word_embeddings": False,
}
LLAMA31_8B = {  # meta-llama/Llama-3.1-8B
    "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 128256,
    "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False,
}

# A Qwen2 small enough to count by hand: h=256, i=768, 4 heads of 64, 2 kv heads, vocab 512, tied.
TINY = {
    "model_type": "qwen2", "hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512, "tie_word_embeddings": True,
}
# q 256*256+256 = 65,792; k and v 256*128+128 = 32,896 each; o 256*256 = 65,536;
# gate, up, down 3*256*768 = 589,824; two norms 512: one layer 787,456.
TINY_LAYER = 65_792 + 2 * 32_896 + 65_536 + 589_824 + 512
# embedding 512*256 = 131,072 (tied: no lm_head) + 2 layers + final norm 256 = 1,706,240.
TINY_PARAMS = 131_072 + 2 * TINY_LAYER + 256

# Measured: bytes autograd saves per token (unique storages seen by
# torch.autograd.graph.saved_tensors_hooks in a forward pass of transformers 5.10.4's
# Qwen2ForCausalLM, sdpa, CPU, torch 2.13; the difference between 1 and 2 layers gives a layer).
MEASURED_LAYER = {4: 21_528, 2: 11_800}  # TINY, per layer per token: fp32, bf16
MEASURED_REST = {4: 3_596, 2: 2_316}  # TINY, final norm + RoPE cos/sin + position ids, per token
MEASURED_LAYER_HEAD_DIM_48 = {4: 18_712, 2: 10_392}  # TINY with i=640, head_dim=48 (q 192, kv 96 wide)
MEASURED_CHECKPOINTED_LAYER = {4: 1_024, 2: 512}  # TINY with gradient checkpointing: the layer input
# (with checkpointing the measured rest is 512 / 256 bytes smaller: cos/sin, which the plan still counts)


def test_parameter_counts_are_exact_for_published_models():
    # Totals of the hub's safetensors metadata for each model.
    assert count_parameters(QWEN25_05B) == 494_032_768
    assert count_parameters(QWEN25_15B) == 1_543_714_304
    assert count_parameters(QWEN25_7B) == 7_615_616_512
    assert count_parameters(LLAMA31_8B) == 8_030_261_248


def test_a_tiny_config_counts_as_by_hand():
    assert architecture(TINY).layer_parameters == TINY_LAYER == 787_456
    assert count_parameters(TINY) == TINY_PARAMS == 1_706_240
    untied = {**TINY, "tie_word_embeddings": False}
    assert count_parameters(untied) == TINY_PARAMS + 131_072  # plus lm_head 512*256


def test_other_architectures_count_their_own_layers():
    base = {key: TINY[key] for key in TINY if key != "model_type"}
    base["tie_word_embeddings"] = False
    # Llama: no biases: q 65,536 + k, v 32,768 each + o 65,536 + MLP 589,824 + norms 512 = 786,944.
    assert architecture({**base, "model_type": "llama"}).layer_parameters == 786_944
    assert count_parameters({**base, "model_type": "mistral"}) == 2 * 131_072 + 2 * 786_944 + 256
    # Qwen3: Llama's layer + q_norm and k_norm over head_dim 64: 786,944 + 128.
    assert architecture({**base, "model_type": "qwen3"}).layer_parameters == 787_072
    # Gemma2: four norms (1,024); Gemma3 text also q_norm/k_norm (128); both tie by default.
    assert architecture({**base, "model_type": "gemma2"}).layer_parameters == 786_944 + 512
    gemma3 = {key: value for key, value in base.items() if key != "tie_word_embeddings"}
    assert architecture({**gemma3, "model_type": "gemma3_text"}).layer_parameters == 786_944 + 512 + 128
    assert count_parameters({**gemma3, "model_type": "gemma3_text"}) == 131_072 + 2 * 787_584 + 256
    # Phi3 fuses qkv (256 x 512) and gate_up (256 x 1,536): the same sizes as Llama's.
    phi3 = architecture({**base, "model_type": "phi3"})
    assert [linear.name for linear in phi3.linears] == ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
    assert phi3.layer_parameters == 786_944
    # A composite config (Gemma 3 with a vision tower): the language model's text_config is read.
    composite = {"model_type": "gemma3", "text_config": {**gemma3, "model_type": "gemma3_text"}}
    assert count_parameters(composite) == count_parameters({**gemma3, "model_type": "gemma3_text"})


def test_unknown_and_mixture_of_experts_configs_give_a_reason_not_a_crash():
    for config in (None, {}, {"model_type": "mamba"}, {**TINY, "model_type": "qwen2_moe"},
                   {**TINY, "num_experts": 8}, {**TINY, "hidden_size": None}):
        assert count_parameters(config) is None
        assert isinstance(architecture(config), str)
        plan = plan_memory(config)
        assert plan.total is None and plan.unknown_reason
        assert "unknown" in plan.format() and plan.warnings(1) == []


def test_an_unknown_architecture_is_planned_from_an_explicit_parameter_count():
    config = {**TINY, "model_type": "some_new_llm"}
    plan = plan_memory(config, parameter_count=1_000_000, world_size=1, param_dtype="fp32")
    items = {item.name: item.bytes for item in plan.items}
    assert items["parameters (fp32, 1/1 shard)"] == 4_000_000
    assert plan.total is not None and "Llama-like" in plan.format()
    shapeless = plan_memory({"model_type": "some_new_llm"}, parameter_count=1_000_000)
    assert shapeless.total is None and "lacks the shapes" in shapeless.unknown_reason


def test_activations_match_what_autograd_saves():
    for config, measured in ((TINY, MEASURED_LAYER),
                             ({**TINY, "intermediate_size": 640, "head_dim": 48}, MEASURED_LAYER_HEAD_DIM_48)):
        arch = architecture(config)
        for compute_bytes, per_layer in measured.items():
            assert mp.layer_activation_bytes(arch, compute_bytes) == per_layer
    arch = architecture(TINY)
    for b in (4, 2):
        # 256 tokens, 2 layers: 256 x (2 x layer + rest); fp32: 256 x (2 x 21,528 + 3,596) = 11,942,912.
        no_checkpointing = 256 * (2 * MEASURED_LAYER[b] + MEASURED_REST[b])
        assert mp.model_activation_bytes(arch, b, 256, gradient_checkpointing=False) == no_checkpointing
        # Checkpointed: each layer's input and the rest: fp32 256 x (2 x 1,024 + 3,596) = 1,444,864.
        checkpointed = 256 * (2 * MEASURED_CHECKPOINTED_LAYER[b] + MEASURED_REST[b])
        assert mp.model_activation_bytes(arch, b, 256, gradient_checkpointing=True) == checkpointed
    assert mp.model_activation_bytes(arch, 4, 256, False) == 11_942_912
    assert mp.model_activation_bytes(arch, 4, 256, True) == 1_444_864


def test_a_full_fine_tuning_plan_adds_up_by_hand():
    plan = plan_memory(TINY, mode="full", world_size=2, max_tokens_per_gpu=256, gradient_checkpointing=False,
                       compute_dtype="bf16", device="cuda", overhead_bytes=0)
    items = {item.name: item.bytes for item in plan.items}
    assert items["parameters (fp32, 1/2 shard)"] == 3_412_480  # 1,706,240 x 4 / 2
    assert items["gradients (fp32, 1/2 shard)"] == 3_412_480
    assert items["AdamW moments (fp32, 1/2 shard)"] == 6_824_960  # 2 x 1,706,240 x 4 / 2
    assert items["AdamW step temporaries (1 shard copy)"] == 3_412_480
    # Root (tied embedding 131,072 + final norm 256) + the largest other unit and the prefetched
    # layer (787,456 each), in bf16: (131,328 + 2 x 787,456) x 2 = 3,412,480.
    assert items["gathered bf16 params (root + 2 units)"] == 3_412_480
    # Root gradient in bf16 held through backward + one layer's bf16 gradient and its fp32 copy:
    # 131,328 x 2 + 787,456 x (2 + 4) = 4,987,392.
    assert items["unsharded grads (bf16 + fp32 reduce)"] == 4_987_392
    assert items["saved activations (256 tokens, checkpointing off)"] == 256 * (2 * 11_800 + 2_316)  # 6,634,496
    assert items["logits + loss copies (256 x 512 x 2 B)"] == 262_144  # flash-attn CE: the bf16 logits only
    assert items["a layer's activation gradients"] == 256 * 11_800  # 3,020,800, larger than the logits here
    state = 3_412_480 + 3_412_480 + 6_824_960
    backward = 3_412_480 + 4_987_392 + 6_634_496 + max(262_144, 3_020_800)  # 18,055,168 > the step's 3,412,480
    assert plan.total == state + backward == 31_705_088
    checkpointed = plan_memory(TINY, mode="full", world_size=2, max_tokens_per_gpu=256, gradient_checkpointing=True,
                               compute_dtype="bf16", device="cuda", overhead_bytes=0)
    # The recomputed layer and its gradients: 2 x 256 x 11,800 = 6,041,600.
    assert {i.name: i.bytes for i in checkpointed.items}["recomputed layer + its gradients"] == 6_041_600


def test_the_loss_path_counts_its_logits_copies():
    assert mp.logits_bytes_per_element(2, True, "cuda") == 2  # flash-attn CE: gradient written in place
    assert mp.logits_bytes_per_element(4, False, "cpu") == 12  # logits + 2 fp32 gradients (measured on CPU)
    assert mp.logits_bytes_per_element(2, False, "cpu") == 6
    assert mp.logits_bytes_per_element(2, False, "cuda") == 10  # + autocast's fp32 log_softmax rows
    cpu = plan_memory(TINY, device="cpu", compute_dtype="fp32", max_tokens_per_gpu=256)
    assert {item.name: item.bytes for item in cpu.items}["logits + loss copies (256 x 512 x 12 B)"] == 1_572_864


def test_state_shards_with_the_world_size_and_the_rest_does_not():
    one, four = (plan_memory(QWEN25_7B, world_size=w, max_tokens_per_gpu=4096) for w in (1, 4))
    for a, b in zip(one.items, four.items):
        assert a.phase == b.phase
        if a.phase == mp.STATE and not a.name.startswith("runtime"):
            assert b.bytes * 4 == pytest.approx(a.bytes, abs=4)
        elif a.phase == mp.COMPUTE:
            assert a.bytes == b.bytes
    assert four.total < one.total


def test_gradient_checkpointing_reduces_activations():
    off, on = (plan_memory(QWEN25_05B, world_size=2, max_tokens_per_gpu=8192, gradient_checkpointing=gc)
               for gc in (False, True))
    off_bytes, on_bytes = (next(item.bytes for item in plan.items if item.name.startswith("saved activations"))
                           for plan in (off, on))
    assert on_bytes * 5 < off_bytes
    assert on.total < off.total


def test_lora_with_a_bf16_frozen_base_holds_half_the_base_bytes():
    def base_bytes(dtype):
        plan = plan_memory(QWEN25_15B, mode="lora", lora_rank=32, target_modules="all-linear", frozen_dtype=dtype)
        return next(item.bytes for item in plan.items if item.name.startswith("frozen base")), plan.total

    (fp32, fp32_total), (bf16, bf16_total) = base_bytes("fp32"), base_bytes("bf16")
    assert fp32 == 1_543_714_304 * 4 and bf16 * 2 == fp32
    assert fp32_total - bf16_total == bf16  # nothing else changes


def test_lora_adapters_are_rank_times_in_plus_out_on_each_target():
    arch = architecture(QWEN25_15B)
    # Per layer, r=32: q, o 32 x (1,536 + 1,536) = 98,304 each; k, v 32 x (1,536 + 256) = 57,344 each;
    # gate, up, down 32 x (1,536 + 8,960) = 335,872 each: 1,318,912 per layer x 28 = 36,929,536.
    assert lora_parameters(arch, 32, "all-linear") == 28 * (2 * 98_304 + 2 * 57_344 + 3 * 335_872) == 36_929_536
    assert lora_parameters(arch, 32, ["q_proj", "v_proj"]) == 28 * (98_304 + 57_344)
    assert lora_parameters(arch, 32, "q_proj,v_proj") == lora_parameters(arch, 32, ["q_proj", "v_proj"])
    plan = plan_memory(QWEN25_15B, mode="lora", lora_rank=32, world_size=2)
    items = {item.name: item.bytes for item in plan.items}
    assert items["LoRA adapters (fp32, 1/2 shard)"] == 36_929_536 * 4 // 2
    assert items["gradients (fp32, 1/2 shard)"] == 36_929_536 * 4 // 2
    assert items["AdamW moments (fp32, 1/2 shard)"] == 2 * 36_929_536 * 4 // 2
    nothing = plan_memory(QWEN25_15B, mode="lora", target_modules=["qkv_proj"])
    assert "matches no linear layer" in nothing.format()


def test_format_lists_every_item_in_gib_and_the_assumptions():
    plan = plan_memory(QWEN25_05B, world_size=2, max_tokens_per_gpu=8192, gradient_checkpointing=True)
    text = plan.format()
    for item in plan.items:
        assert f"{item.name}" in text and f"{item.bytes / GIB:.2f} GiB" in text
    assert f"{plan.total / GIB:.2f} GiB" in text
    assert "Assumptions:" in text and "engine.model_dtype" in text and "flash-attn" in text
    assert len(plan.items) == len({item.name for item in plan.items})  # one line each


def test_warnings_name_the_fixes_when_the_plan_does_not_fit():
    plan = plan_memory(QWEN25_7B, mode="full", world_size=1, max_tokens_per_gpu=8192, gradient_checkpointing=False)
    assert plan.warnings(plan.total) == [] and plan.warnings(None) == []
    (message,) = plan.warnings(plan.total // 2)
    for fix in ("LoRA", "more devices", "engine.offload_policy=true", "MAX_TOKENS_PER_GPU", "GRADIENT_CHECKPOINTING=1"):
        assert fix in message
    needed = [float(part.split(": ")[-1].split(" GiB")[0]) for part in message.split("; ")]
    assert needed == sorted(needed)  # largest effect first
    fitted = plan_memory(QWEN25_7B, mode="lora", gradient_checkpointing=True, max_tokens_per_gpu=2048)
    (lora_message,) = fitted.warnings(GIB)
    assert "LoRA" not in lora_message and "GRADIENT_CHECKPOINTING" not in lora_message
    cpu = plan_memory(TINY, device="cpu")
    assert cpu.warnings(cpu.total * 2, processes=2) == [] and cpu.warnings(cpu.total * 2 - 1, processes=2)
    assert "offload" not in cpu.warnings(1)[0]  # no device to offload from on a CPU


def test_importing_the_module_does_not_import_torch_or_transformers():
    code = ("import sys, sft.launch.memory_plan; "
            "print([m for m in ('torch', 'transformers') if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, check=True)
    assert result.stdout.strip() == "[]"


def test_free_device_memory_reads_the_cpu_and_guards_cuda():
    cpu = mp.free_device_memory("cpu")
    assert cpu is None or cpu > 0
    assert mp.free_device_memory("tpu") is None
    if "torch" in sys.modules:  # only ask CUDA when torch is already loaded (keeps this file fast)
        cuda = mp.free_device_memory("cuda")
        assert cuda is None or cuda > 0


def test_load_model_config_reads_a_directory_or_the_local_cache_only(tmp_path, monkeypatch):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps(TINY))
    assert mp.load_model_config(str(tmp_path / "model")) == TINY
    assert mp.load_model_config(str(tmp_path / "model" / "config.json")) == TINY
    assert mp.load_model_config(str(tmp_path / "missing-dir/")) is None
    assert mp.load_model_config("not a repo id!") is None
    constants = pytest.importorskip("huggingface_hub.constants")
    cache = tmp_path / "hub"
    snapshot = cache / "models--org--tiny" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps(TINY))
    (cache / "models--org--tiny" / "refs").mkdir()
    (cache / "models--org--tiny" / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    assert mp.load_model_config("org/tiny") == TINY
    assert mp.load_model_config("org/not-cached") is None


# ---------------------------------------------------------------------------------------------
# The plan as every launch prints it (sft/launch/preflight.py memory_plan_for).


def _model_directory(tmp_path, config: dict):
    """A model directory with the real model's config.json only: enough for a dry run's plan."""
    directory = tmp_path / "model"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def test_every_launch_prints_the_plan_of_the_composed_config(tmp_path, chat_data_dir, launch_in_process):
    from conftest import launcher_env

    model = _model_directory(tmp_path, QWEN25_7B)
    env = launcher_env(MODEL_NAME=model, TRAIN_FILE=chat_data_dir / "train.parquet", OUTPUT_DIR=tmp_path / "out",
                       DRY_RUN=1, MAX_LENGTH=2048)
    returncode, output = launch_in_process(env, "model.enable_gradient_checkpointing=true", mode="lora")
    assert returncode == 0, output[-3000:]
    plan = output.split("[verl-sft] Memory plan per cpu device: ", 1)[1]
    assert plan.startswith("qwen2, 7,615.6M params, LoRA r=32 all-linear")
    assert "2048 tokens per micro batch, fp32 compute, gradient checkpointing on" in plan  # the override counts
    expected = plan_memory(QWEN25_7B, mode="lora", world_size=2, max_tokens_per_gpu=2048, gradient_checkpointing=True,
                           param_dtype="bf16", compute_dtype="fp32", frozen_dtype="bf16", device="cpu",
                           flash_attn_installed=False)
    base = next(item for item in expected.items if item.name.startswith("frozen base"))
    assert re.search(r"frozen base parameters \(bf16, 1/2 shard\) +%.2f GiB" % (base.bytes / GIB), plan)
    assert f"{expected.total / GIB:.2f} GiB" in plan.split("\n  total", 1)[1].splitlines()[0]
    assert "Assumptions:" in plan  # a dry run lists them


def test_a_run_that_does_not_fit_is_warned_with_the_fixes(tmp_path, chat_data_dir, launch_in_process, monkeypatch):
    from conftest import launcher_env

    monkeypatch.setattr(mp, "_cpu_available_bytes", lambda: 24 * GIB)  # this machine's size, whatever is free now
    model = _model_directory(tmp_path, QWEN25_7B)
    env = launcher_env(MODEL_NAME=model, TRAIN_FILE=chat_data_dir / "train.parquet", OUTPUT_DIR=tmp_path / "out",
                       DRY_RUN=1, MAX_LENGTH=2048)
    returncode, output = launch_in_process(env)  # full fine-tuning of 7B on a 24 GiB CPU machine
    assert returncode == 0
    (warning,) = [line for line in output.splitlines() if line.startswith("[verl-sft] WARNING: Memory plan")]
    assert "x 2 processes" in warning and "but 24.00 GiB is free" in warning
    assert "LoRA (scripts/run_sft_peft.sh: rank 32, all-linear, bf16 frozen base)" in warning
    assert "more devices" in warning
    # LoRA with a bf16 base, gradient checkpointing and 512-token micro batches: 2 x 12.2 GiB would not fit
    # either; one process holding the whole base would (19.9 GiB).
    lora = {**env, "MAX_LENGTH": "512", "GRADIENT_CHECKPOINTING": "1", "NPROC_PER_NODE": "1", "TRAIN_BATCH_SIZE": "16"}
    returncode, output = launch_in_process(lora, mode="lora")
    assert returncode == 0 and "WARNING: Memory plan" not in output, output[-2000:]


def test_a_model_without_a_local_config_gets_a_note_not_a_plan(tmp_path, chat_data_dir, launch_in_process,
                                                               monkeypatch):
    from conftest import launcher_env

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    env = launcher_env(MODEL_NAME="nobody/no-such-model", TRAIN_FILE=chat_data_dir / "train.parquet",
                       OUTPUT_DIR=tmp_path / "out", DRY_RUN=1, MAX_LENGTH=2048)
    returncode, output = launch_in_process(env)
    assert returncode == 0 and "Memory plan per" not in output
    assert "no memory plan: nobody/no-such-model's config.json is not on this machine" in output


def test_cpu_lora_gathers_the_frozen_base_in_bf16_with_one_fp32_block():
    """sft/verl_plugins/cpu/frozen_upcast.py (loaded for LoRA on CPU): the gathered units of Qwen2.5-7B, by hand."""
    kwargs = dict(mode="lora", world_size=2, max_tokens_per_gpu=128, gradient_checkpointing=True, param_dtype="bf16",
                  compute_dtype="fp32", frozen_dtype="bf16", device="cpu")
    upcast, verl = plan_memory(QWEN25_7B, **kwargs, vocab_parallel=False), plan_memory(QWEN25_7B, **kwargs,
                                                                                         frozen_upcast=False)
    assert upcast.inputs["frozen_upcast"] is True and plan_memory(QWEN25_7B, **{**kwargs, "device": "cuda"}).inputs[
        "frozen_upcast"] is False
    # One decoder layer: q 3584*3584+3584, k and v 3584*512+512 each, o 3584*3584, gate/up/down 3584*18944 each,
    # two norms of 3584. Its adapters (r=32): 32 * (in + out) over the seven linears = 32 * 90,112.
    layer = 3584 * 3584 + 3584 + 2 * (3584 * 512 + 512) + 3584 * 3584 + 3 * 3584 * 18944 + 2 * 3584
    adapters = 32 * 90_112
    embedding = 152064 * 3584  # untied: its own unit, the largest besides a layer
    root = 3584  # the final norm
    frozen = root + embedding + layer  # root + the largest unit + the prefetched layer
    expected = frozen * 2 + adapters * 4 + (256 << 20)  # + one fp32 block of the LM head / embedding
    item = {i.name: i.bytes for i in upcast.items}["gathered params (bf16 base, root + 2 units) + one fp32 block"]
    assert item == expected
    assert {i.name: i.bytes for i in verl.items}["gathered fp32 params (root + 2 units)"] == (
        root + embedding + layer + adapters) * 4
    # FSDP2's all-gather buffer of the largest unit (the embedding), measured by sft/bench/fsdp_gather.py:
    # 1x the unit gathered as stored (bf16), 1.5x the fp32 unit when the gather casts.
    buffer = "all-gather buffer of the largest unit (measured)"
    assert {i.name: i.bytes for i in upcast.items}[buffer] == embedding * 2
    assert {i.name: i.bytes for i in verl.items}[buffer] == embedding * 4 * 3 // 2
    assert buffer not in {i.name for i in plan_memory(QWEN25_7B, **{**kwargs, "device": "cuda"}).items}


def test_cpu_lora_on_two_processes_never_gathers_the_embedding_or_lm_head():
    """sft/verl_plugins/cpu/vocab_parallel.py (with frozen_upcast, world size > 1): Qwen2.5-7B by hand."""
    kwargs = dict(mode="lora", world_size=2, max_tokens_per_gpu=128, gradient_checkpointing=True, param_dtype="bf16",
                  compute_dtype="fp32", frozen_dtype="bf16", device="cpu")
    parallel, gathered = plan_memory(QWEN25_7B, **kwargs), plan_memory(QWEN25_7B, **kwargs, vocab_parallel=False)
    assert parallel.inputs["vocab_parallel"] is True and gathered.inputs["vocab_parallel"] is False
    assert plan_memory(QWEN25_7B, **{**kwargs, "world_size": 1}).inputs["vocab_parallel"] is False
    assert plan_memory(QWEN25_7B, **kwargs, frozen_upcast=False).inputs["vocab_parallel"] is False
    layer = 3584 * 3584 + 3584 + 2 * (3584 * 512 + 512) + 3584 * 3584 + 3 * 3584 * 18944 + 2 * 3584
    adapters = 32 * 90_112
    root = 3584  # the final norm; the embedding and LM head are no FSDP2 unit now
    # root + the largest unit (a layer now) + the prefetched layer, adapters in fp32, + one fp32 block of
    # this process's 76,032 rows of the LM head (1.0 GiB in fp32: capped at the 256 MiB block).
    expected = (root + 2 * layer) * 2 + 2 * adapters * 4 + (256 << 20)
    item = {i.name: i.bytes for i in parallel.items}["gathered params (bf16 base, root + 2 units) + one fp32 block"]
    assert item == expected
    buffer = "all-gather buffer of the largest unit (measured)"
    assert {i.name: i.bytes for i in parallel.items}[buffer] == (layer + adapters) * 2
    embedding = 152064 * 3584
    # Gathered: the embedding unit (bf16) instead of a second layer, one layer's adapters fewer, and the
    # all-gather buffer of the embedding instead of a layer's: 4 bytes x (embedding - layer) - 6 x adapters.
    assert gathered.total - parallel.total == 4 * (embedding - layer) - 6 * adapters
    # The shards themselves are the same: 1/2 of every frozen weight, embedding and LM head included.
    assert [i for i in parallel.items if i.phase == "state"] == [i for i in gathered.items if i.phase == "state"]


def test_deferred_gradient_sync_and_no_reshard_hold_the_whole_model_gathered_and_its_gradients():
    """The launcher's CPU FSDP2 schedule (sft/launcher.py CPU_FSDP_OVERRIDES): every unit gathered from its
    forward to its backward, every unit's gradient unsharded until the step's last micro batch."""
    for config in (TINY, {**TINY, "num_hidden_layers": 6}, {**QWEN25_7B, "num_hidden_layers": 3}):
        params = mp.count_parameters(config)  # tied or not: every unit together is the whole model
        largest = max(mp.architecture(config).layer_parameters,
                      0 if config.get("tie_word_embeddings") else mp.architecture(config).embedding_parameters)
        verl = plan_memory(config, world_size=2, max_tokens_per_gpu=256, compute_dtype="fp32", device="cpu")
        cpu = plan_memory(config, world_size=2, max_tokens_per_gpu=256, compute_dtype="fp32", device="cpu",
                          defer_gradient_sync=True, reshard_after_forward=False)
        items = {item.name: item.bytes for item in cpu.items}
        assert items["gathered fp32 params (every unit: no reshard)"] == params * 4
        assert items["unsharded grads (fp32 + fp32 reduce, every unit: sync deferred)"] == params * 4 + largest * 4
        assert cpu.total > verl.total  # memory bought for fewer copies
        assert any("engine.use_no_sync_for_gradient_accumulation=true" in line for line in cpu.assumptions)
        assert any("engine.reshard_after_forward=false" in line for line in cpu.assumptions)
