"""The launch logic behind scripts/run_sft_training.sh and scripts/run_sft_peft.sh.

Usage (through the launchers, which set the defaults documented in scripts/lib/sft_env.sh):
    scripts/run_sft_training.sh [hydra.override=value ...]
    DRY_RUN=1 scripts/run_sft_peft.sh model.lora_rank=8

Run directly it reads the same environment variables (the bash defaults must be set):
    SFT_MODE=full ... python -m sft.launcher -- [hydra overrides]

It validates every setting (numbers are numbers, files exist, the Parquet has a `messages`
column, batch sizes fit the world size, the data was prepared with MODEL_NAME's chat template),
passes verl the dataset that encodes rows through that template (sft/verl_plugins/sft_dataset.py, the code
prepare_data counted with), resolves the `auto` values (device, processes per
node, port, MAX_LENGTH from prepare_data's manifest.json, attention, compute dtype), builds
verl's Hydra overrides with every value quoted for Hydra, prints the settings and the exact
command, and then replaces itself with torchrun. User overrides go last, so they win. With
DRY_RUN=1 it composes verl's Hydra config with all overrides and exits without training.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

# Secrets never appear in what the launcher prints; they are passed through the environment.
_SECRET_PATTERN = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD)", re.IGNORECASE)
_LOGGERS = ("console", "wandb", "tensorboard", "mlflow", "swanlab", "vemlp_wandb", "clearml", "trackio", "file")
_FALLBACK_MAX_LENGTH = 2048
_FALLBACK_TOKENS_PER_GPU = 8192


class LaunchError(Exception):
    """A setting is wrong; the message says which and how to fix it."""


@dataclass
class Settings:
    """Resolved launcher settings (every value validated)."""

    mode: str
    device: str
    nproc_per_node: int
    nnodes: int
    node_rank: int
    master_addr: str
    master_port: int | None  # None: pick a free port (single node, standalone rendezvous)
    rdzv_id: str
    model_name: str
    train_file: Path
    val_file: Path | None
    output_dir: Path
    trust_remote_code: bool
    max_length: int
    max_tokens_per_gpu: int
    batch_size: int
    train_batch_size: int
    epochs: int
    learning_rate: float
    lr_scheduler: str
    warmup_ratio: float
    weight_decay: float
    seed: int
    save_freq: int | str
    test_freq: int | str
    loggers: list[str]
    project_name: str
    experiment_name: str
    attn_implementation: str
    compute_dtype: str
    remove_padding: bool
    dynamic_batch: bool
    gradient_checkpointing: bool
    dry_run: bool
    verl_dir: Path | None
    lora_rank: int = 0
    lora_alpha: int = 0
    target_modules: str = ""
    notes: list[str] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)  # how each auto value was chosen


# ---------------------------------------------------------------------------------------------
# Parsing helpers: every error names the variable, the value and the fix.


def _env(name: str, env: dict[str, str]) -> str:
    if name not in env:
        raise LaunchError(f"{name} is not set. Run through scripts/run_sft_training.sh or scripts/run_sft_peft.sh.")
    return env[name].strip()


def _int(name: str, value: str, minimum: int | None = None) -> int:
    if not re.fullmatch(r"[+-]?\d+", value):
        raise LaunchError(f"{name} must be an integer, got {value!r}. Example: {name}=4")
    number = int(value)
    if minimum is not None and number < minimum:
        raise LaunchError(f"{name} must be >= {minimum}, got {number}.")
    return number


def _float(name: str, value: str, minimum: float | None = None, maximum: float | None = None) -> float:
    try:
        number = float(value)
    except ValueError:
        raise LaunchError(f"{name} must be a number, got {value!r}. Example: {name}=1e-5") from None
    if not math.isfinite(number):
        raise LaunchError(f"{name} must be a finite number, got {value!r}.")
    if minimum is not None and number < minimum:
        raise LaunchError(f"{name} must be >= {minimum}, got {value}.")
    if maximum is not None and number > maximum:
        raise LaunchError(f"{name} must be <= {maximum}, got {value}.")
    return number


def _bool(name: str, value: str) -> bool:
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise LaunchError(f"{name} must be 0 or 1, got {value!r}.")


def _frequency(name: str, value: str) -> int | str:
    if value == "after_each_epoch":
        return value
    number = _int(name, value)
    if number == 0 or number < -1:
        raise LaunchError(f"{name} must be a positive number of steps, -1 or after_each_epoch, got {value!r}.")
    return number


# ---------------------------------------------------------------------------------------------
# Checks of files and data.


def read_parquet_facts(path: Path, variable: str) -> int:
    """Check that `path` is a Parquet file with a `messages` column; return its row count."""
    if not path.exists():
        raise LaunchError(f"{variable} not found: {path}. Run sft/prepare_data.py first (it writes train.parquet and val.parquet).")
    if path.is_dir():
        raise LaunchError(f"{variable} is a directory: {path}. Point it at a .parquet file written by sft/prepare_data.py.")
    import pyarrow.parquet as pq

    try:
        metadata = pq.read_metadata(path)
        schema = pq.read_schema(path)
    except Exception as exc:  # pyarrow raises several types for a non-Parquet file
        raise LaunchError(f"{variable} is not a readable Parquet file: {path} ({exc}). Run sft/prepare_data.py to create it.") from None
    if "messages" not in schema.names:
        raise LaunchError(
            f"{variable} has no `messages` column: {path} (columns: {', '.join(schema.names)}). "
            "verl's SFT trainer reads chat messages; run sft/prepare_data.py on your JSONL to add them."
        )
    return metadata.num_rows


def read_manifest_section(train_file: Path, section: str) -> dict:
    """A section (`tokens`, `chat_template`) of the manifest.json that prepare_data wrote beside TRAIN_FILE, if any."""
    manifest = train_file.parent / "manifest.json"
    if not manifest.is_file():
        return {}
    try:
        found = json.loads(manifest.read_text()).get(section) or {}
    except (OSError, json.JSONDecodeError, AttributeError):
        return {}
    return found if isinstance(found, dict) else {}


def read_manifest_tokens(train_file: Path) -> dict:
    """The `tokens` section of the manifest.json that prepare_data wrote beside TRAIN_FILE, if any."""
    return read_manifest_section(train_file, "tokens")


def local_chat_template(model_dir: Path) -> str | None:
    """The chat template saved in a local model directory (chat_template.jinja or tokenizer_config.json)."""
    jinja = model_dir / "chat_template.jinja"
    try:
        if jinja.is_file():
            return jinja.read_text(encoding="utf-8")
        template = json.loads((model_dir / "tokenizer_config.json").read_text(encoding="utf-8")).get("chat_template")
    except (OSError, ValueError, AttributeError):
        return None
    if isinstance(template, list):  # named templates: the default one
        template = next((t.get("template") for t in template if isinstance(t, dict) and t.get("name") == "default"), None)
    return template if isinstance(template, str) else None


def template_mismatch_note(model_name: str, train_file: Path) -> str | None:
    """A note when TRAIN_FILE was prepared with another chat template than MODEL_NAME's (local models only)."""
    import hashlib

    prepared = read_manifest_section(train_file, "chat_template")
    recorded = prepared.get("chat_template_sha256")
    model_dir = Path(model_name)
    if not recorded or not model_dir.is_dir():
        return None
    template = local_chat_template(model_dir)
    if template is None or hashlib.sha256(template.encode()).hexdigest() == recorded:
        return None
    return (f"TRAIN_FILE was prepared with the chat template of {prepared.get('tokenizer')} (manifest.json), but "
            f"MODEL_NAME's template differs: training uses MODEL_NAME's, so sft_num_tokens, the length filters and "
            f"MAX_LENGTH=auto were computed for another format. Re-run sft/prepare_data.py --tokenizer {model_name}.")


def _detect_cuda() -> int:
    """Number of visible CUDA devices (0 without a GPU or without a CUDA build of torch)."""
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def _module_available(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


# ---------------------------------------------------------------------------------------------
# Resolution.


def resolve_settings(env: dict[str, str] | None = None) -> Settings:
    env = dict(os.environ if env is None else env)
    get = lambda name: _env(name, env)  # noqa: E731
    mode = get("SFT_MODE")
    if mode not in ("full", "lora"):
        raise LaunchError(f"SFT_MODE must be full or lora, got {mode!r}.")
    notes: list[str] = []
    sources: dict[str, str] = {}

    # Device and topology.
    device = get("DEVICE").lower()
    if device not in ("auto", "cuda", "cpu"):
        raise LaunchError(f"DEVICE must be auto, cuda or cpu, got {device!r}.")
    gpus = _detect_cuda() if device in ("auto", "cuda") else 0
    if device == "auto":
        device = "cuda" if gpus else "cpu"
        sources["DEVICE"] = f"auto: {gpus} GPU(s) visible"
    elif device == "cuda" and not gpus:
        raise LaunchError("DEVICE=cuda but no GPU is visible to torch. Check CUDA_VISIBLE_DEVICES and the torch build, or use DEVICE=cpu.")
    nproc_raw = get("NPROC_PER_NODE")
    if nproc_raw == "auto":
        if device == "cuda":
            nproc = gpus
            sources["NPROC_PER_NODE"] = f"auto: {gpus} visible GPU(s)"
        else:
            nproc = 2 if (os.cpu_count() or 1) >= 2 else 1
            sources["NPROC_PER_NODE"] = f"auto: CPU with {os.cpu_count()} core(s)"
    else:
        nproc = _int("NPROC_PER_NODE", nproc_raw, minimum=1)
        if device == "cuda" and nproc > gpus:
            raise LaunchError(f"NPROC_PER_NODE={nproc} but only {gpus} GPU(s) are visible. Set NPROC_PER_NODE<={gpus}.")
    nnodes = _int("NNODES", get("NNODES"), minimum=1)
    node_rank = _int("NODE_RANK", get("NODE_RANK"), minimum=0)
    if node_rank >= nnodes:
        raise LaunchError(f"NODE_RANK={node_rank} must be smaller than NNODES={nnodes}.")
    master_addr = get("MASTER_ADDR")
    if not master_addr:
        raise LaunchError("MASTER_ADDR is empty. Set it to the address of node 0.")
    port_raw = get("MASTER_PORT")
    rdzv_id = env.get("RDZV_ID", "").strip()
    if port_raw == "auto":
        master_port = None if (nnodes == 1 and not rdzv_id) else 29500
    else:
        master_port = _int("MASTER_PORT", port_raw, minimum=1)
        if master_port > 65535:
            raise LaunchError(f"MASTER_PORT must be a TCP port (1-65535), got {master_port}.")

    # Model and data.
    model_name = get("MODEL_NAME")
    if not model_name:
        raise LaunchError("MODEL_NAME is empty. Set a Hugging Face id (Qwen/Qwen2.5-0.5B-Instruct) or a local directory.")
    model_path = Path(model_name).expanduser()
    looks_local = model_path.exists() or model_name.startswith((".", "/", "~")) or model_name.count("/") != 1
    if looks_local:
        if not (model_path / "config.json").is_file():
            raise LaunchError(
                f"MODEL_NAME is not a model directory: {model_name} (no config.json). Give a Hugging Face id "
                "such as Qwen/Qwen2.5-0.5B-Instruct, or a directory saved with save_pretrained "
                "(python -m sft.demo.tiny_model -o DIR builds a tiny one)."
            )
        model_name = str(model_path.resolve())
        sources["MODEL_NAME"] = "local directory"
    else:
        sources["MODEL_NAME"] = "Hugging Face id"
    if not looks_local and env.get("HF_HUB_OFFLINE") == "1":
        notes.append(f"HF_HUB_OFFLINE=1: {model_name} must already be in the Hugging Face cache.")

    train_file = Path(get("TRAIN_FILE")).expanduser()
    train_rows = read_parquet_facts(train_file, "TRAIN_FILE")
    if "VAL_FILE" not in env:
        sibling = train_file.parent / "val.parquet"
        val_file = sibling if sibling.exists() and sibling.resolve() != train_file.resolve() else None
        sources["VAL_FILE"] = "auto: sibling val.parquet" if val_file else "auto: none beside TRAIN_FILE"
    else:
        val_file = Path(env["VAL_FILE"].strip()).expanduser() if env["VAL_FILE"].strip() else None
    val_rows = read_parquet_facts(val_file, "VAL_FILE") if val_file is not None else 0

    manifest_tokens = read_manifest_tokens(train_file)
    mismatch = template_mismatch_note(model_name, train_file)
    if mismatch:
        notes.append(mismatch)
    max_length_raw = get("MAX_LENGTH")
    if max_length_raw == "auto":
        recommended = manifest_tokens.get("recommended_max_length")
        if isinstance(recommended, int) and recommended > 0:
            max_length = recommended
            sources["MAX_LENGTH"] = f"auto: {train_file.parent / 'manifest.json'}"
        else:
            max_length = _FALLBACK_MAX_LENGTH
            sources["MAX_LENGTH"] = "auto: no token summary in manifest.json (run prepare_data.py --tokenizer)"
    else:
        max_length = _int("MAX_LENGTH", max_length_raw, minimum=1)
        longest = (manifest_tokens.get("train") or {}).get("max")
        if isinstance(longest, int) and longest > max_length:
            notes.append(
                f"MAX_LENGTH={max_length} is shorter than the longest training sample ({longest} tokens by "
                f"{manifest_tokens.get('tokenizer')}'s count in manifest.json): verl stops at the first longer one "
                f"(\"sequence_length=... is larger than self.max_length=...\") unless data.truncation=left|right is "
                "given. Use MAX_LENGTH=auto, or drop long samples with prepare_data.py --max-tokens."
            )
    tokens_raw = get("MAX_TOKENS_PER_GPU")
    if tokens_raw == "auto":
        recommended = manifest_tokens.get("recommended_max_tokens_per_gpu")
        base = recommended if isinstance(recommended, int) and recommended > 0 else _FALLBACK_TOKENS_PER_GPU
        max_tokens_per_gpu = max(base, max_length)
        sources["MAX_TOKENS_PER_GPU"] = "auto: manifest.json" if base == recommended else f"auto: max({base}, MAX_LENGTH)"
    else:
        max_tokens_per_gpu = _int("MAX_TOKENS_PER_GPU", tokens_raw, minimum=1)
    if max_tokens_per_gpu < max_length:
        raise LaunchError(
            f"MAX_TOKENS_PER_GPU={max_tokens_per_gpu} is smaller than MAX_LENGTH={max_length}: the longest sample "
            f"could not fit in a micro batch. Set MAX_TOKENS_PER_GPU>={max_length}."
        )

    # Optimisation.
    dynamic_raw = get("DYNAMIC_BATCH").lower()
    if dynamic_raw == "auto":
        # Measured by scripts/benchmark_training.py on CPU (sdpa): one sample per micro batch
        # beats packed micro batches, which sdpa pads to their longest sample.
        dynamic_batch = device == "cuda"
        sources["DYNAMIC_BATCH"] = f"auto: {device}"
    else:
        dynamic_batch = _bool("DYNAMIC_BATCH", dynamic_raw)
    batch_raw = get("BATCH_SIZE")
    if batch_raw == "auto":
        batch_size = 4 if device == "cuda" else 1
        sources["BATCH_SIZE"] = f"auto: {device}"
    else:
        batch_size = _int("BATCH_SIZE", batch_raw, minimum=1)
    train_batch_size = _int("TRAIN_BATCH_SIZE", get("TRAIN_BATCH_SIZE"), minimum=1)
    world_size = nproc * nnodes
    if train_batch_size % world_size:
        raise LaunchError(
            f"TRAIN_BATCH_SIZE={train_batch_size} is not a multiple of the {world_size} processes "
            f"(NNODES={nnodes} x NPROC_PER_NODE={nproc}). Use a multiple of {world_size}."
        )
    per_process = train_batch_size // world_size
    if not dynamic_batch and per_process % batch_size:
        raise LaunchError(
            f"TRAIN_BATCH_SIZE={train_batch_size} gives {per_process} samples per process ({world_size} processes), "
            f"not a multiple of the micro batch BATCH_SIZE={batch_size}: verl would stop with \"data size must be "
            f"divisible by force_group_size * micro_batch_size_per_gpu\". Set BATCH_SIZE to a divisor of {per_process}, "
            f"or TRAIN_BATCH_SIZE to a multiple of {world_size * batch_size}."
        )
    if train_rows < train_batch_size:
        raise LaunchError(
            f"TRAIN_FILE has {train_rows} rows, fewer than TRAIN_BATCH_SIZE={train_batch_size}: verl drops the last "
            f"incomplete batch, so nothing would train. Set TRAIN_BATCH_SIZE<={train_rows - train_rows % world_size or world_size}."
        )
    if val_file is not None and val_rows < train_batch_size:
        raise LaunchError(
            f"VAL_FILE has {val_rows} rows, fewer than TRAIN_BATCH_SIZE={train_batch_size}: verl validates in batches "
            "of TRAIN_BATCH_SIZE and drops incomplete ones, so val/loss would be nan. Use a larger validation split, "
            "a smaller TRAIN_BATCH_SIZE, or VAL_FILE= (empty) to skip validation."
        )
    epochs = _int("EPOCHS", get("EPOCHS"), minimum=1)
    learning_rate = _float("LEARNING_RATE", get("LEARNING_RATE"), minimum=0.0)
    lr_scheduler = get("LR_SCHEDULER")
    if lr_scheduler not in ("cosine", "constant"):
        raise LaunchError(f"LR_SCHEDULER must be cosine or constant (verl 0.9.1's choices), got {lr_scheduler!r}.")
    warmup_ratio = _float("WARMUP_RATIO", get("WARMUP_RATIO"), minimum=0.0, maximum=1.0)
    weight_decay = _float("WEIGHT_DECAY", get("WEIGHT_DECAY"), minimum=0.0)
    seed = _int("SEED", get("SEED"), minimum=0)
    save_freq = _frequency("SAVE_FREQ", get("SAVE_FREQ"))
    test_freq = _frequency("TEST_FREQ", get("TEST_FREQ"))
    if val_file is None and test_freq != -1:
        # verl 0.9.1 iterates a missing validation loader when test_freq > 0 and crashes.
        sources["TEST_FREQ"] = "no VAL_FILE: validation off"
        test_freq = -1

    loggers = [item.strip() for item in get("LOGGER").split(",") if item.strip()]
    if not loggers:
        raise LaunchError("LOGGER is empty. Use console, or a comma list such as console,wandb.")
    for item in loggers:
        if item not in _LOGGERS:
            raise LaunchError(f"LOGGER has unknown logger {item!r}. Choose from: {', '.join(_LOGGERS)}.")
    if "wandb" in loggers and not env.get("WANDB_API_KEY") and env.get("WANDB_MODE") not in ("offline", "disabled"):
        notes.append("LOGGER includes wandb but WANDB_API_KEY is not set: run `wandb login` or set WANDB_MODE=offline.")

    project_name = get("PROJECT_NAME")
    experiment_name = get("EXPERIMENT_NAME")
    for name, value in (("PROJECT_NAME", project_name), ("EXPERIMENT_NAME", experiment_name)):
        if not value:
            raise LaunchError(f"{name} is empty. Give the run a name.")
    output_dir = Path(get("OUTPUT_DIR")).expanduser()
    if not str(output_dir).strip():
        raise LaunchError("OUTPUT_DIR is empty. Set a directory for checkpoints.")

    attn = get("ATTN_IMPLEMENTATION")
    if attn == "auto":
        attn = "flash_attention_2" if device == "cuda" and _module_available("flash_attn") else "sdpa"
        sources["ATTN_IMPLEMENTATION"] = "auto: " + ("flash-attn installed" if attn != "sdpa" else "sdpa (no flash-attn, or CPU)")
    elif attn not in ("sdpa", "eager", "flash_attention_2", "flash_attention_3"):
        raise LaunchError(f"ATTN_IMPLEMENTATION must be auto, sdpa, eager, flash_attention_2 or flash_attention_3, got {attn!r}.")
    if device == "cpu" and attn.startswith("flash"):
        raise LaunchError(f"ATTN_IMPLEMENTATION={attn} needs a GPU. Use sdpa on CPU.")

    compute_dtype = get("COMPUTE_DTYPE").lower()
    if compute_dtype == "auto":
        # On CPUs without bf16 hardware, bf16 autocast is emulated and several times slower
        # than fp32 (scripts/benchmark_cpu_dtype.py measures it); GPUs want bf16.
        compute_dtype = "bf16" if device == "cuda" else "fp32"
        sources["COMPUTE_DTYPE"] = f"auto: {device}"
    elif compute_dtype not in ("bf16", "fp32"):
        raise LaunchError(f"COMPUTE_DTYPE must be auto, bf16 or fp32, got {compute_dtype!r}.")

    remove_padding_raw = get("REMOVE_PADDING").lower()
    if remove_padding_raw == "auto":
        # Packed samples need varlen attention: flash-attn has it; sdpa would attend across the
        # whole pack (a block-diagonal mask over MAX_TOKENS_PER_GPU^2 scores).
        remove_padding = attn.startswith("flash")
        sources["REMOVE_PADDING"] = f"auto: {attn}"
    else:
        remove_padding = _bool("REMOVE_PADDING", remove_padding_raw)
    checkpointing_raw = get("GRADIENT_CHECKPOINTING").lower()
    if checkpointing_raw == "auto":
        gradient_checkpointing = device == "cuda"
        sources["GRADIENT_CHECKPOINTING"] = f"auto: {device}"
    else:
        gradient_checkpointing = _bool("GRADIENT_CHECKPOINTING", checkpointing_raw)

    verl_dir_raw = env.get("VERL_DIR", "").strip()
    verl_dir = None
    if verl_dir_raw:
        verl_dir = Path(verl_dir_raw).expanduser().resolve()
        if not (verl_dir / "verl" / "__init__.py").is_file():
            raise LaunchError(f"VERL_DIR={verl_dir_raw} is not a verl checkout (no verl/__init__.py inside). Point it at the repository root.")

    settings = Settings(
        mode=mode,
        device=device,
        nproc_per_node=nproc,
        nnodes=nnodes,
        node_rank=node_rank,
        master_addr=master_addr,
        master_port=master_port,
        rdzv_id=rdzv_id,
        model_name=model_name,
        train_file=train_file.resolve(),
        val_file=val_file.resolve() if val_file else None,
        output_dir=output_dir.resolve(),
        trust_remote_code=_bool("TRUST_REMOTE_CODE", get("TRUST_REMOTE_CODE")),
        max_length=max_length,
        max_tokens_per_gpu=max_tokens_per_gpu,
        batch_size=batch_size,
        train_batch_size=train_batch_size,
        epochs=epochs,
        learning_rate=learning_rate,
        lr_scheduler=lr_scheduler,
        warmup_ratio=warmup_ratio,
        weight_decay=weight_decay,
        seed=seed,
        save_freq=save_freq,
        test_freq=test_freq,
        loggers=loggers,
        project_name=project_name,
        experiment_name=experiment_name,
        attn_implementation=attn,
        compute_dtype=compute_dtype,
        remove_padding=remove_padding,
        dynamic_batch=dynamic_batch,
        gradient_checkpointing=gradient_checkpointing,
        dry_run=_bool("DRY_RUN", get("DRY_RUN")),
        verl_dir=verl_dir,
        notes=notes,
        sources=sources,
    )
    if mode == "lora":
        settings.lora_rank = _int("LORA_RANK", get("LORA_RANK"), minimum=1)
        settings.lora_alpha = _int("LORA_ALPHA", get("LORA_ALPHA"), minimum=1)
        settings.target_modules = get("TARGET_MODULES")
        if not re.fullmatch(r"all-linear|[A-Za-z0-9_.]+(,[A-Za-z0-9_.]+)*", settings.target_modules):
            raise LaunchError(
                f"TARGET_MODULES must be all-linear or a comma list of module names (q_proj,v_proj), got {settings.target_modules!r}."
            )
    return settings


# ---------------------------------------------------------------------------------------------
# Command building.


def hydra_quote(value: str) -> str:
    """Quote `value` so Hydra's override parser and OmegaConf return it unchanged.

    Inside single quotes Hydra treats a backslash as an escape only before a quote or at the
    end of the string, and OmegaConf would still resolve `${...}`; both are escaped.
    """
    if re.fullmatch(r"[\w./@%+-]+", value):
        return value
    escaped = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, value)
    escaped = escaped.replace("'", "\\'").replace("${", "\\${")
    return f"'{escaped}'"


def hydra_overrides(s: Settings) -> list[str]:
    """verl Hydra overrides for the settings (user overrides are appended after these)."""
    overrides = [
        f"model.path={hydra_quote(s.model_name)}",
        f"model.trust_remote_code={s.trust_remote_code}",
        f"+model.override_config.attn_implementation={s.attn_implementation}",
        f"data.train_files={hydra_quote(str(s.train_file))}",
        f"data.val_files={hydra_quote(str(s.val_file)) if s.val_file else 'null'}",
        "data.pad_mode=no_padding",
        # Every sample is encoded through the model's chat template by sft/text/chat_format.py, the same
        # code prepare_data counted with (verl's own dataset templates each message on its own).
        f"data.custom_cls.path={hydra_quote(str(REPO_ROOT / 'sft' / 'verl_plugins' / 'sft_dataset.py'))}",
        "data.custom_cls.name=ChatTemplateSFTDataset",
        f"data.use_dynamic_bsz={s.dynamic_batch}",
        f"model.use_remove_padding={s.remove_padding}",
        f"model.enable_gradient_checkpointing={s.gradient_checkpointing}",
        f"data.max_length={s.max_length}",
        f"data.max_token_len_per_gpu={s.max_tokens_per_gpu}",
        f"data.micro_batch_size_per_gpu={s.batch_size}",
        f"data.train_batch_size={s.train_batch_size}",
        f"trainer.total_epochs={s.epochs}",
        f"optim.lr={s.learning_rate!r}",
        f"optim.lr_scheduler_type={s.lr_scheduler}",
        f"optim.lr_warmup_steps_ratio={s.warmup_ratio!r}",
        f"optim.weight_decay={s.weight_decay!r}",
        f"trainer.seed={s.seed}",
        f"engine.seed={s.seed}",
        "engine.strategy=fsdp2",
        f"+engine.mixed_precision={{param_dtype:{s.compute_dtype},reduce_dtype:fp32,buffer_dtype:fp32}}",
        f"trainer.default_local_dir={hydra_quote(str(s.output_dir))}",
        "trainer.resume_mode=auto",
        f"trainer.save_freq={s.save_freq}",
        f"trainer.test_freq={s.test_freq}",
        f"trainer.logger=[{','.join(s.loggers)}]",
        f"trainer.project_name={hydra_quote(s.project_name)}",
        f"trainer.experiment_name={hydra_quote(s.experiment_name)}",
        f"trainer.device={s.device}",
        f"trainer.nnodes={s.nnodes}",
        f"trainer.n_gpus_per_node={s.nproc_per_node}",
    ]
    if not re.search(r"[$\\]", str(s.output_dir)):
        # Hydra's record of the run (the composed config, the overrides, sft_trainer.log) goes
        # with the checkpoints instead of an outputs/DATE/TIME directory in the working directory.
        # Not for a path with `$` or `\`: Hydra re-reads its run directory as an OmegaConf string
        # (hydra.runtime.output_dir), so escaping it once for the override is not enough.
        run_dir = s.output_dir / "hydra" / time.strftime("%Y%m%d-%H%M%S")
        overrides.append(f"hydra.run.dir={hydra_quote(str(run_dir))}")
    if s.device == "cpu":
        # Data loader worker processes only add start-up time and memory on a CPU run.
        overrides.append("data.num_workers=0")
    if s.mode == "lora":
        targets = s.target_modules if s.target_modules == "all-linear" else f"[{s.target_modules}]"
        overrides += [f"model.lora_rank={s.lora_rank}", f"model.lora_alpha={s.lora_alpha}", f"model.target_modules={targets}"]
    return overrides


def torchrun_args(s: Settings) -> list[str]:
    args = ["-m", "torch.distributed.run", f"--nnodes={s.nnodes}", f"--nproc-per-node={s.nproc_per_node}"]
    if s.rdzv_id:
        endpoint = f"{s.master_addr}:{s.master_port}"
        args += ["--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}", f"--rdzv-id={s.rdzv_id}"]
    elif s.master_port is None:
        args += ["--rdzv-backend=c10d", "--rdzv-endpoint=localhost:0", "--rdzv-id=standalone"]
    else:
        args += [f"--node-rank={s.node_rank}", f"--master-addr={s.master_addr}", f"--master-port={s.master_port}"]
    return args + ["-m", "verl.trainer.sft_trainer"]


def child_environment(s: Settings, env: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if env is None else env)
    python_path = [str(REPO_ROOT)]
    if s.verl_dir:
        python_path.insert(0, str(s.verl_dir))
    python_path += [entry for entry in env.get("PYTHONPATH", "").split(os.pathsep) if entry]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(python_path))
    env.setdefault("HYDRA_FULL_ERROR", "1")
    # verl warns once per optional engine it cannot import (megatron, torchtitan, ...) on every rank.
    warning_filters = [f for f in env.get("PYTHONWARNINGS", "").split(",") if f]
    env["PYTHONWARNINGS"] = ",".join(warning_filters + ["ignore::UserWarning:verl.workers.engine"])
    # verl imports these at the end of `import verl` (its external-module extension point).
    modules = [m for m in env.get("VERL_USE_EXTERNAL_MODULES", "").split(",") if m]
    modules.append("sft.verl_plugins.verl_fixes")
    if s.device == "cpu":
        modules.append("sft.verl_plugins.cpu_runtime")
    env["VERL_USE_EXTERNAL_MODULES"] = ",".join(dict.fromkeys(modules))
    if s.device == "cpu":
        # torchrun gives each process one thread when it starts several; share the cores instead.
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // s.nproc_per_node)))
    return env


def format_settings(s: Settings) -> str:
    rows = [
        ("mode", "full fine-tuning" if s.mode == "full" else "LoRA"),
        ("DEVICE", s.device),
        ("NNODES x NPROC_PER_NODE", f"{s.nnodes} x {s.nproc_per_node} (NODE_RANK {s.node_rank})"),
        ("rendezvous", f"c10d {s.master_addr}:{s.master_port} id {s.rdzv_id}" if s.rdzv_id
         else ("free local port" if s.master_port is None else f"{s.master_addr}:{s.master_port}")),
        ("MODEL_NAME", s.model_name),
        ("TRAIN_FILE", str(s.train_file)),
        ("VAL_FILE", str(s.val_file) if s.val_file else "(none: no validation)"),
        ("OUTPUT_DIR", str(s.output_dir)),
        ("MAX_LENGTH", str(s.max_length)),
        ("MAX_TOKENS_PER_GPU", str(s.max_tokens_per_gpu)),
        ("BATCH_SIZE / TRAIN_BATCH_SIZE", f"{s.batch_size} / {s.train_batch_size}"),
        ("DYNAMIC_BATCH", str(int(s.dynamic_batch))),
        ("EPOCHS", str(s.epochs)),
        ("LEARNING_RATE", f"{s.learning_rate:g} ({s.lr_scheduler}, warmup {s.warmup_ratio:g}, weight decay {s.weight_decay:g})"),
        ("SEED", str(s.seed)),
        ("SAVE_FREQ / TEST_FREQ", f"{s.save_freq} / {s.test_freq}"),
        ("LOGGER", ",".join(s.loggers)),
        ("PROJECT_NAME / EXPERIMENT_NAME", f"{s.project_name} / {s.experiment_name}"),
        ("ATTN_IMPLEMENTATION", s.attn_implementation),
        ("COMPUTE_DTYPE", s.compute_dtype),
        ("REMOVE_PADDING", str(int(s.remove_padding))),
        ("GRADIENT_CHECKPOINTING", str(int(s.gradient_checkpointing))),
        ("TRUST_REMOTE_CODE", str(int(s.trust_remote_code))),
    ]
    if s.mode == "lora":
        rows.append(("LORA_RANK / LORA_ALPHA / TARGET_MODULES", f"{s.lora_rank} / {s.lora_alpha} / {s.target_modules}"))
    if s.verl_dir:
        rows.append(("VERL_DIR", str(s.verl_dir)))
    width = max(len(name) for name, _ in rows)
    lines = ["[verl-sft] settings:"]
    for name, value in rows:
        key = name.split(" ")[0]
        source = s.sources.get(key)
        lines.append(f"  {name:<{width}}  {value}" + (f"  ({source})" if source else ""))
    for note in s.notes:
        lines.append(f"[verl-sft] note: {note}")
    return "\n".join(lines)


def _printable_env(env: dict[str, str], keys: list[str]) -> str:
    parts = []
    for key in keys:
        if key in env:
            value = "***" if _SECRET_PATTERN.search(key) else env[key]
            parts.append(f"{key}={shlex.quote(value)}")
    return " ".join(parts)


def compose_config(overrides: list[str], verl_dir: Path | None = None):
    """Compose verl's sft_trainer Hydra config with `overrides` and build its typed sections.

    Raises LaunchError with Hydra's message when an override does not apply (unknown key,
    bad value) so DRY_RUN catches mistakes before any GPU time is spent.
    """
    if verl_dir and str(verl_dir) not in sys.path:
        sys.path.insert(0, str(verl_dir))
    import verl
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    config_dir = Path(verl.__file__).parent / "trainer" / "config"
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base=None):
            config = compose(config_name="sft_trainer_engine", overrides=overrides)
        OmegaConf.resolve(config)
        from verl.utils.config import omega_conf_to_dataclass

        # The model section is left out: building it loads the model's config and tokenizer.
        for section in ("engine", "optim", "checkpoint"):
            omega_conf_to_dataclass(config[section])
    except (HydraException, OmegaConfBaseException, ValueError, TypeError, AssertionError) as exc:
        raise LaunchError(f"verl's Hydra config does not accept the overrides: {exc}") from None
    return config


# The values a user most often wants to confirm after their own overrides were applied.
EFFECTIVE_KEYS = (
    "model.path", "model.lora_rank", "model.lora_alpha", "model.target_modules", "data.custom_cls.path",
    "data.custom_cls.name", "optim.lr",
    "optim.lr_scheduler_type", "optim.weight_decay", "data.train_files", "data.val_files", "data.max_length",
    "data.max_token_len_per_gpu", "data.micro_batch_size_per_gpu", "data.use_dynamic_bsz", "data.train_batch_size",
    "model.use_remove_padding",
    "model.enable_gradient_checkpointing", "engine.strategy", "engine.mixed_precision",
    "trainer.total_epochs", "trainer.default_local_dir", "trainer.resume_mode", "trainer.save_freq",
    "trainer.test_freq", "trainer.logger",
)


def format_effective_config(config) -> str:
    """The composed values of EFFECTIVE_KEYS, after every override (the user's included)."""
    import verl
    from omegaconf import OmegaConf

    lines = [f"[verl-sft] composed config (verl {verl.__version__} from {Path(verl.__file__).parent}):"]
    for key in EFFECTIVE_KEYS:
        value = OmegaConf.select(config, key)
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value)
        lines.append(f"  {key} = {value}")
    return "\n".join(lines)


def build_launch(s: Settings, user_overrides: list[str], env: dict[str, str] | None = None):
    """(argv, environment) of the torchrun command for `s`, user overrides last."""
    child_env = child_environment(s, env)
    python = sys.executable
    argv = [python, *torchrun_args(s), *hydra_overrides(s), *user_overrides]
    return argv, child_env


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "--":
        args = args[1:]
    if args and args[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    try:
        settings = resolve_settings()
        command, child_env = build_launch(settings, args)
        print(format_settings(settings), flush=True)
        shown_env = ["PYTHONPATH", "VERL_USE_EXTERNAL_MODULES", "OMP_NUM_THREADS"]
        print(f"[verl-sft] command:\n  {_printable_env(child_env, shown_env)} {shlex.join(command)}", flush=True)
        if settings.dry_run:
            config = compose_config(command[command.index("verl.trainer.sft_trainer") + 1 :], settings.verl_dir)
            print(format_effective_config(config))
            print("[verl-sft] DRY_RUN=1: verl's Hydra config composes with all overrides; not training.")
            return 0
    except LaunchError as exc:
        print(f"[verl-sft] error: {exc}", file=sys.stderr)
        return 2
    settings.output_dir.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    os.execve(command[0], command, child_env)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
