"""The launchers' settings, declared once in SETTINGS (imported by sft/launcher.py; run by bash).

Each row of SETTINGS is one environment variable of scripts/run_sft_training.sh and
scripts/run_sft_peft.sh: its default (per mode where the modes differ), how it is parsed and
checked, its `auto` rule, the verl keys it sets, and its help. From the table come:
    resolve_settings(env)   the validated values, with how each `auto` was chosen (sources) and notes
    listing(block)          the settings listed in the launchers' --help (the header comments of
                            scripts/lib/sft_env.sh and of each launcher; tests/test_launchers.py
                            checks they equal it)
    hydra_value(...)        each value as verl's Hydra reads it (sft/launcher.py builds the command)
    LAUNCHER_VARIABLES      what tests clear from the environment; what tests/test_docs.py checks
Relations between settings (batch sizes and world size, lengths, rows) are CROSS_CHECKS.

Run by scripts/lib/sft_env.sh (NAME NUL VALUE NUL for every setting of SFT_MODE, defaults applied):
    SFT_MODE=lora python -m sft.launch.settings --export
    python -m sft.launch.settings --listing shared|full|lora   # print a header listing

Adding a setting: a row in SETTINGS (plus a function in CROSS_CHECKS if it constrains another
setting), its line in sft/README.md, and the row's listing line pasted into the header comment
that tests/test_launchers.py names.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sft.common.files import directory_problem
from sft.launch.data_check import pairing_problem, read_parquet_facts
from sft.launch.errors import LaunchError

MODES = ("full", "lora")
LOGGERS = ("console", "wandb", "tensorboard", "mlflow", "swanlab", "vemlp_wandb", "clearml", "trackio", "file")
_FALLBACK_MAX_LENGTH = 2048
_FALLBACK_TOKENS_PER_GPU = 8192


# ---------------------------------------------------------------------------------------------
# One resolution: the environment in, values, sources and notes out. Each setting is resolved
# on first use, so a rule may use any other setting (NPROC_PER_NODE's auto rule uses DEVICE).


@dataclass
class Resolution:
    env: dict[str, str]
    mode: str
    values: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)  # how each auto value was chosen
    notes: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)  # what resolving learnt: rows, GPUs, manifest

    def text(self, name: str) -> str | None:
        """The setting as the environment gives it, its default when unset or empty (bash's ${NAME:-default})."""
        row = SETTINGS_BY_NAME[name]
        given = self.env.get(name)
        if given or row.default is None:
            return given
        return row.default_for(self.mode, self.text)

    def __getitem__(self, name: str) -> Any:
        if name not in self.values:
            self.values[name] = _resolve_row(self, SETTINGS_BY_NAME[name])
        return self.values[name]

    def fact(self, name: str, compute: Callable[[], Any]) -> Any:
        if name not in self.facts:
            self.facts[name] = compute()
        return self.facts[name]

    def gpus(self) -> int:
        return self.fact("gpus", _detect_cuda)

    def explicit(self, name: str) -> bool:
        """The user gave `name` a value of their own (not unset, empty or `auto`)."""
        given = (self.env.get(name) or "").strip()
        return bool(given) and given.lower() != "auto"

    def gpus_assumed(self) -> bool:
        """DRY_RUN=1 DEVICE=cuda where no GPU is visible (a cluster's login node): the GPU job is checked as
        it will run, with NPROC_PER_NODE GPUs per node assumed."""
        return self.fact("gpus_assumed", lambda: False)

    def train_path(self) -> Path:
        """TRAIN_FILE as given, not resolved: manifest.json is looked up, and named, beside it."""
        self["TRAIN_FILE"]  # resolving it records the path
        return self.facts["train_path"]

    def manifest_tokens(self) -> dict:
        return self.fact("manifest_tokens", lambda: read_manifest_section(self.train_path(), "tokens"))


def _resolve_row(r: Resolution, row: Setting) -> Any:
    text = r.text(row.name)
    if text is not None:
        text = text.strip().lower() if row.lower else text.strip()
    if row.auto is not None and text == "auto":
        value, source = row.auto(r)
        if source:
            r.sources[row.name] = source
        return value
    return row.parse(r, row.name, text)


# ---------------------------------------------------------------------------------------------
# Parsers: (resolution, name, text) -> value. Every error names the variable, the value and the fix.

Parser = Callable[[Resolution, str, Any], Any]


def _int(name: str, value: str, minimum: int | None = None) -> int:
    if not re.fullmatch(r"[+-]?\d+", value):
        raise LaunchError(f"{name} must be an integer, got {value!r}. Example: {name}=4")
    number = int(value)
    if minimum is not None and number < minimum:
        raise LaunchError(f"{name} must be >= {minimum}, got {number}.")
    return number


def integer(minimum: int | None = None) -> Parser:
    return lambda r, name, text: _int(name, text, minimum)


def number(minimum: float | None = None, maximum: float | None = None) -> Parser:
    def parse(r: Resolution, name: str, value: str) -> float:
        try:
            parsed = float(value)
        except ValueError:
            raise LaunchError(f"{name} must be a number, got {value!r}. Example: {name}=1e-5") from None
        if not math.isfinite(parsed):
            raise LaunchError(f"{name} must be a finite number, got {value!r}.")
        if minimum is not None and parsed < minimum:
            raise LaunchError(f"{name} must be >= {minimum}, got {value}.")
        if maximum is not None and parsed > maximum:
            raise LaunchError(f"{name} must be <= {maximum}, got {value}.")
        return parsed

    return parse


def boolean(r: Resolution, name: str, value: str) -> bool:
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise LaunchError(f"{name} must be 0 or 1, got {value!r}.")


def frequency(r: Resolution, name: str, value: str) -> int | str:
    if value == "after_each_epoch":
        return value
    parsed = _int(name, value)
    if parsed == 0 or parsed < -1:
        raise LaunchError(f"{name} must be a positive number of steps, -1 or after_each_epoch, got {value!r}.")
    return parsed


def choice(options: tuple[str, ...], message: str) -> Parser:
    """One of `options`; otherwise `message` with {value!r} filled in."""

    def parse(r: Resolution, name: str, value: str) -> str:
        if value not in options:
            raise LaunchError(message.format(value=value))
        return value

    return parse


def required(message: str) -> Parser:
    """Any text but an empty one (`message`, with {name}, says what to set)."""

    def parse(r: Resolution, name: str, value: str) -> str:
        if not value:
            raise LaunchError(message.format(name=name))
        return value

    return parse


def any_text(r: Resolution, name: str, value: str) -> str:
    return value


def _port(r: Resolution, name: str, value: str) -> int:
    port = _int(name, value, minimum=1)
    if port > 65535:
        raise LaunchError(f"MASTER_PORT must be a TCP port (1-65535), got {port}.")
    return port


def _device(r: Resolution, name: str, value: str) -> str:
    if value not in ("cuda", "cpu"):
        raise LaunchError(f"DEVICE must be auto, cuda or cpu, got {value!r}.")
    if value == "cuda" and not r.gpus():
        if not r["DRY_RUN"]:
            raise LaunchError("DEVICE=cuda but no GPU is visible to torch. Check CUDA_VISIBLE_DEVICES and the torch build, "
                              "or use DEVICE=cpu. (DRY_RUN=1 checks a GPU job's configuration without a GPU.)")
        r.facts["gpus_assumed"] = True
        r.sources[name] = "no GPU visible: GPUs assumed for this dry run"
        r.notes.append("DRY_RUN=1 with DEVICE=cuda and no GPU visible here: the configuration shown is the one a node "
                       f"with NPROC_PER_NODE={r.text('NPROC_PER_NODE')} GPUs will use (GPUs assumed; flash-attn and "
                       "the GPUs' memory are those of this machine's environment, not the job's).")
    return value


def _nproc(r: Resolution, name: str, value: str) -> int:
    nproc = _int(name, value, minimum=1)
    if r["DEVICE"] == "cuda" and nproc > r.gpus() and not r.gpus_assumed():
        raise LaunchError(f"NPROC_PER_NODE={nproc} but only {r.gpus()} GPU(s) are visible. Set NPROC_PER_NODE<={r.gpus()}.")
    return nproc


def _model_name(r: Resolution, name: str, model_name: str) -> str:
    if not model_name:
        raise LaunchError("MODEL_NAME is empty. Set a Hugging Face id (Qwen/Qwen2.5-0.5B-Instruct) or a local directory.")
    model_path = Path(model_name).expanduser()
    looks_local = model_path.exists() or model_name.startswith((".", "/", "~")) or model_name.count("/") != 1
    if not looks_local:
        r.sources[name] = "Hugging Face id"
        if r.env.get("HF_HUB_OFFLINE") == "1":
            r.notes.append(f"HF_HUB_OFFLINE=1: {model_name} must already be in the Hugging Face cache.")
            cached = _cached_model_dir(model_name)
            if cached is not None:
                _check_model_files(r, cached)
        return model_name
    if not (model_path / "config.json").is_file():
        raise LaunchError(
            f"MODEL_NAME is not a model directory: {model_name} (no config.json). Give a Hugging Face id "
            "such as Qwen/Qwen2.5-0.5B-Instruct, or a directory saved with save_pretrained "
            "(python -m sft.demo.tiny_model -o DIR builds a tiny one)."
        )
    r.sources[name] = "local directory"
    _check_model_files(r, model_path)
    return str(model_path.resolve())


def _check_model_files(r: Resolution, model_dir: Path) -> None:
    """Weights whole and a tokenizer that encodes text (sft/common/model_files.py), before any process starts."""
    from sft.common.model_files import ModelFilesError, check_model_weights, check_tokenizer_dir

    try:
        check_model_weights(model_dir, "MODEL_NAME")
        check_tokenizer_dir(model_dir, trust_remote_code=r["TRUST_REMOTE_CODE"])
    except ModelFilesError as exc:
        if not r["DRY_RUN"]:  # a dry run may plan a model from its config.json alone
            raise
        r.notes.append(f"a launch would stop here: {exc}")


def _cached_model_dir(model_id: str) -> Path | None:
    """The Hugging Face cache's snapshot directory of `model_id`, when its config.json is cached."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(model_id, "config.json")
    return Path(found).parent if isinstance(found, str) else None


def _train_file(r: Resolution, name: str, value: str) -> Path:
    train_path = Path(value).expanduser()
    r.facts["train_path"] = train_path
    r.facts["train"] = read_parquet_facts(train_path, name)
    mismatch = template_mismatch_note(r["MODEL_NAME"], train_path)
    if mismatch:
        r.notes.append(mismatch)
    return train_path.resolve()


def _val_file(r: Resolution, name: str, value: str | None) -> Path | None:
    """Unset: TRAIN_FILE's sibling val.parquet, if any; empty: no validation."""
    if value is None:
        sibling = r.train_path().parent / "val.parquet"
        val_file = sibling if sibling.exists() and sibling.resolve() != r["TRAIN_FILE"] else None
        r.sources[name] = "auto: sibling val.parquet" if val_file else "auto: none beside TRAIN_FILE"
    else:
        val_file = Path(value).expanduser() if value else None
    r.facts["val"] = read_parquet_facts(val_file, name) if val_file is not None else None
    return val_file.resolve() if val_file else None


def _max_length(r: Resolution, name: str, value: str) -> int:
    max_length = _int(name, value, minimum=1)
    tokens = r.manifest_tokens()
    longest = (tokens.get("train") or {}).get("max")
    if isinstance(longest, int) and longest > max_length:
        r.notes.append(
            f"MAX_LENGTH={max_length} is shorter than the longest training sample ({longest} tokens by "
            f"{tokens.get('tokenizer')}'s count in manifest.json): verl stops at the first longer one "
            f"(\"sequence_length=... is larger than self.max_length=...\") unless data.truncation=left|right is "
            "given. Use MAX_LENGTH=auto, or drop long samples with prepare_data.py --max-tokens."
        )
    return max_length


def _test_frequency(r: Resolution, name: str, value: str) -> int | str:
    test_freq = frequency(r, name, value)
    if r["VAL_FILE"] is None and test_freq != -1:
        # verl 0.9.1 iterates a missing validation loader when test_freq > 0 and crashes.
        r.sources[name] = "no VAL_FILE: validation off"
        return -1
    return test_freq


def _loggers(r: Resolution, name: str, value: str) -> list[str]:
    loggers = [item.strip() for item in value.split(",") if item.strip()]
    if not loggers:
        raise LaunchError("LOGGER is empty. Use console, or a comma list such as console,wandb.")
    for item in loggers:
        if item not in LOGGERS:
            raise LaunchError(f"LOGGER has unknown logger {item!r}. Choose from: {', '.join(LOGGERS)}.")
    if "wandb" in loggers and not r.env.get("WANDB_API_KEY") and r.env.get("WANDB_MODE") not in ("offline", "disabled"):
        r.notes.append("LOGGER includes wandb but WANDB_API_KEY is not set: run `wandb login` or set WANDB_MODE=offline.")
    return loggers


def _directory(r: Resolution, name: str, value: str) -> Path:
    unexpanded = re.search(r"\$\{?[A-Za-z_]\w*\}?", value)
    if unexpanded:
        r.notes.append(
            f"{name} contains {unexpanded.group(0)} as literal text (the shell did not expand it: quoted, or read from "
            f"a file), so the directory is named with it. If you meant the variable, write it unquoted or use ~.")
    path = Path(value).expanduser().resolve()
    problem = directory_problem(path)
    if problem:
        raise LaunchError(f"{name}={value}: {problem}. Set {name} to a directory you can write to.")
    return path


def _attention(r: Resolution, name: str, value: str) -> str:
    if value not in ("sdpa", "eager", "flash_attention_2", "flash_attention_3"):
        raise LaunchError(f"ATTN_IMPLEMENTATION must be auto, sdpa, eager, flash_attention_2 or flash_attention_3, got {value!r}.")
    return value


def _verl_dir(r: Resolution, name: str, value: str) -> Path | None:
    if not value:
        return None
    verl_dir = Path(value).expanduser().resolve()
    if not (verl_dir / "verl" / "__init__.py").is_file():
        raise LaunchError(f"VERL_DIR={value} is not a verl checkout (no verl/__init__.py inside). Point it at the repository root.")
    version_file = verl_dir / "verl" / "version" / "version"
    try:
        version = version_file.read_text(encoding="utf-8").strip()
    except OSError:
        raise LaunchError(f"VERL_DIR={value}: {version_file} is missing, so which verl this is cannot be told (verl-sft "
                          "is written for verl 0.9.1). Point VERL_DIR at a verl repository checkout.") from None
    r.sources[name] = f"verl {version}"
    return verl_dir


def _target_modules(r: Resolution, name: str, value: str) -> str:
    if not re.fullmatch(r"all-linear|[A-Za-z0-9_.]+(,[A-Za-z0-9_.]+)*", value):
        raise LaunchError(f"TARGET_MODULES must be all-linear or a comma list of module names (q_proj,v_proj), got {value!r}.")
    return value


# ---------------------------------------------------------------------------------------------
# `auto` rules: resolution -> (value, how it was chosen).


def _auto_device(r: Resolution):
    gpus = r.gpus()
    return ("cuda" if gpus else "cpu"), f"auto: {gpus} GPU(s) visible"


def _auto_nproc(r: Resolution):
    if r["DEVICE"] == "cuda":
        if r.gpus_assumed():
            raise LaunchError("NPROC_PER_NODE=auto counts the visible GPUs, and this machine has none. For a dry run of a "
                              "GPU job here, set NPROC_PER_NODE to the job's GPUs per node (e.g. NPROC_PER_NODE=4).")
        return r.gpus(), f"auto: {r.gpus()} visible GPU(s)"
    return (2 if (os.cpu_count() or 1) >= 2 else 1), f"auto: CPU with {os.cpu_count()} core(s)"


def _auto_port(r: Resolution):
    # A free port on one node: two jobs there never collide. Several nodes need a known port.
    return (None if (r["NNODES"] == 1 and not r["RDZV_ID"]) else 29500), None


def _auto_max_length(r: Resolution):
    recommended = r.manifest_tokens().get("recommended_max_length")
    if isinstance(recommended, int) and recommended > 0:
        return recommended, f"auto: {r.train_path().parent / 'manifest.json'}"
    return _FALLBACK_MAX_LENGTH, "auto: no token summary in manifest.json (run prepare_data.py --tokenizer)"


def _auto_tokens_per_gpu(r: Resolution):
    recommended = r.manifest_tokens().get("recommended_max_tokens_per_gpu")
    base = recommended if isinstance(recommended, int) and recommended > 0 else _FALLBACK_TOKENS_PER_GPU
    source = "auto: manifest.json" if base == recommended else f"auto: max({base}, MAX_LENGTH)"
    return _cap_by_batch_size(r, max(base, r["MAX_LENGTH"]), source)


def _tokens_per_gpu(r: Resolution, name: str, value: str) -> int:
    tokens = _int(name, value, minimum=1)
    if not r["DYNAMIC_BATCH"]:
        raise LaunchError(
            f"MAX_TOKENS_PER_GPU={tokens} is read only when micro batches are packed, and DYNAMIC_BATCH=0: training "
            f"would take BATCH_SIZE samples per micro batch and ignore it. Set DYNAMIC_BATCH=1 (or leave it auto) to "
            "pack up to MAX_TOKENS_PER_GPU tokens, or unset MAX_TOKENS_PER_GPU.")
    value, source = _cap_by_batch_size(r, tokens, None)
    if source:
        r.sources[name] = source
    return value


def _cap_by_batch_size(r: Resolution, tokens: int, source: str | None) -> tuple[int, str | None]:
    """With packed micro batches verl reads BATCH_SIZE for validation only; a BATCH_SIZE the user set
    (the documented fix for an out-of-memory error) bounds the packed budget at BATCH_SIZE x MAX_LENGTH."""
    if not (r["DYNAMIC_BATCH"] and r.explicit("BATCH_SIZE")):
        return tokens, source
    cap = r["BATCH_SIZE"] * r["MAX_LENGTH"]
    note = (f"BATCH_SIZE={r['BATCH_SIZE']} with DYNAMIC_BATCH on: micro batches are packed up to MAX_TOKENS_PER_GPU "
            f"tokens, capped at BATCH_SIZE x MAX_LENGTH = {cap} (at most the tokens of BATCH_SIZE samples of "
            "MAX_LENGTH); DYNAMIC_BATCH=0 gives exactly BATCH_SIZE samples per micro batch.")
    r.notes.append(note)
    if cap >= tokens:
        return tokens, (source + "; " if source else "") + f"under BATCH_SIZE x MAX_LENGTH = {cap}"
    return cap, f"BATCH_SIZE x MAX_LENGTH = {r['BATCH_SIZE']} x {r['MAX_LENGTH']} (was {tokens})"


def _auto_dynamic_batch(r: Resolution):
    if r.explicit("MAX_TOKENS_PER_GPU"):
        return True, "auto: MAX_TOKENS_PER_GPU set (a packed budget)"
    return _on_gpu(r)


def _on_gpu(r: Resolution):
    # DYNAMIC_BATCH: measured by scripts/benchmark_training.py on CPU (sdpa, --configs
    # ours,ours-dynamic): one sample per micro batch beats packed micro batches, which sdpa pads
    # to their longest sample. GRADIENT_CHECKPOINTING: memory is short on GPUs, not on CPUs.
    return r["DEVICE"] == "cuda", f"auto: {r['DEVICE']}"


def _auto_batch_size(r: Resolution):
    return (4 if r["DEVICE"] == "cuda" else 1), f"auto: {r['DEVICE']}"


def _auto_attention(r: Resolution):
    attn = "flash_attention_2" if r["DEVICE"] == "cuda" and _module_available("flash_attn") else "sdpa"
    return attn, "auto: " + ("flash-attn installed" if attn != "sdpa" else "sdpa (no flash-attn, or CPU)")


def _auto_compute_dtype(r: Resolution):
    # On CPUs without bf16 hardware, bf16 autocast is emulated and several times slower than
    # fp32 (scripts/benchmark_training.py --shape tiny --configs ours,ours-bf16 measures it); GPUs want bf16.
    return ("bf16" if r["DEVICE"] == "cuda" else "fp32"), f"auto: {r['DEVICE']}"


def _auto_remove_padding(r: Resolution):
    # Packed samples need varlen attention: flash-attn has it; sdpa would attend across the
    # whole pack (a block-diagonal mask over MAX_TOKENS_PER_GPU^2 scores).
    attn = r["ATTN_IMPLEMENTATION"]
    return attn.startswith("flash"), f"auto: {attn}"


def _experiment_name(text: Callable[[str], str], mode: str) -> str:
    model = text("MODEL_NAME")
    model = model[:-1] if model.endswith("/") else model  # as bash's ${MODEL_NAME%/}, then ##*/
    return f"{model.rsplit('/', 1)[-1]}-{mode}"


# ---------------------------------------------------------------------------------------------
# The table.


@dataclass(frozen=True)
class Setting:
    name: str  # the environment variable
    default: str | dict[str, str] | Callable[[Callable[[str], str], str], str] | None
    help: str | dict[str, str]  # per mode where the modes differ; "\n" continues the line in the listing
    group: str  # the heading it is listed under in scripts/lib/sft_env.sh ("" for one launcher's own)
    parse: Parser | None = any_text  # None: read elsewhere (read_by); the launcher passes it through
    auto: Callable[[Resolution], tuple[Any, str | None]] | None = None
    verl: tuple[str, ...] = ()  # the Hydra keys it sets
    modes: tuple[str, ...] = MODES
    lower: bool = False  # compared in lower case (auto and the choices)
    listed_default: str | None = None  # the default as the listing shows it, where it is not a literal
    read_by: str = ""

    def default_for(self, mode: str, text: Callable[[str], str] | None = None) -> str | None:
        if isinstance(self.default, dict):
            return self.default[mode]
        if callable(self.default):
            return self.default(text, mode)
        return self.default

    def help_for(self, mode: str) -> str:
        return self.help[mode] if isinstance(self.help, dict) else self.help

    @property
    def per_mode(self) -> bool:
        """Listed in each launcher's header instead of the shared one."""
        return isinstance(self.default, dict) or isinstance(self.help, dict) or self.modes != MODES


TOPOLOGY, DATA, OPTIMISATION, OUTPUT, BEHAVIOUR = (
    "Topology (torchrun):", "Model and data:", "Optimisation:", "Output and logging:", "Launcher behaviour:")
_NAME_RULE = required("{name} is empty. Give the run a name.")

SETTINGS: tuple[Setting, ...] = (
    Setting("NPROC_PER_NODE", "auto", "processes per node: all visible GPUs; on CPU 2 (1 on a 1-core machine)",
            TOPOLOGY, _nproc, _auto_nproc, verl=("trainer.n_gpus_per_node",)),
    Setting("NNODES", "1", "number of nodes", TOPOLOGY, integer(1), verl=("trainer.nnodes",)),
    Setting("NODE_RANK", "0", "rank of this node (0..NNODES-1)", TOPOLOGY, integer(0)),
    Setting("MASTER_ADDR", "127.0.0.1", "address of node 0 (rendezvous host)", TOPOLOGY,
            required("MASTER_ADDR is empty. Set it to the address of node 0.")),
    Setting("MASTER_PORT", "auto", "rendezvous port; auto: a free port on one node, 29500 on several",
            TOPOLOGY, _port, _auto_port),
    Setting("RDZV_ID", "", "c10d rendezvous id (e.g. $SLURM_JOB_ID); set: elastic c10d rendezvous",
            TOPOLOGY, listed_default="none"),
    Setting("DEVICE", "auto", "auto | cuda | cpu (auto: cuda when a GPU is visible, else cpu)", TOPOLOGY,
            _device, _auto_device, verl=("trainer.device",), lower=True),
    Setting("MODEL_NAME", "Qwen/Qwen2.5-0.5B-Instruct", "Hugging Face id or local directory", DATA, _model_name,
            verl=("model.path",)),
    Setting("TRAIN_FILE", "data/sft/train.parquet", "Parquet with a `messages` column (sft/prepare_data.py)",
            DATA, _train_file, verl=("data.train_files",)),
    Setting("VAL_FILE", None, "unset: TRAIN_FILE's sibling val.parquet if it exists; empty: no validation",
            DATA, _val_file, verl=("data.val_files",), listed_default="(unset)"),
    Setting("TRUST_REMOTE_CODE", "0", "1 lets transformers run code shipped with the model", DATA, boolean,
            verl=("model.trust_remote_code",)),
    Setting("MAX_LENGTH", "auto", "longest sample in tokens; auto: manifest.json's recommendation, else 2048",
            DATA, _max_length, _auto_max_length, verl=("data.max_length",)),
    Setting("MAX_TOKENS_PER_GPU", "auto",
            "tokens packed per micro batch per GPU (>= MAX_LENGTH; setting it turns DYNAMIC_BATCH\n"
            "auto on); auto: manifest, else max(8192, MAX_LENGTH); at most BATCH_SIZE x MAX_LENGTH\n"
            "when BATCH_SIZE is set",
            DATA, _tokens_per_gpu, _auto_tokens_per_gpu, verl=("data.max_token_len_per_gpu",)),
    Setting("BATCH_SIZE", "auto", "micro batch per device in samples (DYNAMIC_BATCH off, and validation); set with\n"
            "DYNAMIC_BATCH on, it caps MAX_TOKENS_PER_GPU at BATCH_SIZE x MAX_LENGTH (lower it on OOM);\n"
            "auto: 4 on GPU, 1 on CPU (no padding at all)", OPTIMISATION, integer(1), _auto_batch_size,
            verl=("data.micro_batch_size_per_gpu",)),
    Setting("DYNAMIC_BATCH", "auto", "1: micro batches packed up to MAX_TOKENS_PER_GPU tokens; auto: on for GPU,\n"
            "off for CPU (sdpa pads a packed micro batch; one sample at a time is 2-3x faster)", OPTIMISATION,
            boolean, _auto_dynamic_batch, verl=("data.use_dynamic_bsz",), lower=True),
    Setting("TRAIN_BATCH_SIZE", "64", "global batch in samples (a multiple of NNODES*NPROC_PER_NODE)",
            OPTIMISATION, integer(1), verl=("data.train_batch_size",)),  # verl's 256 starves small data sets
    Setting("EPOCHS", "3", "passes over the training set", OPTIMISATION, integer(1), verl=("trainer.total_epochs",)),
    # Full fine-tuning of a pretrained model: verl's 1e-3 diverges. LoRA adapters start at zero and need larger steps.
    Setting("LEARNING_RATE", {"full": "1e-5", "lora": "1e-4"},
            {"full": "peak AdamW learning rate for full fine-tuning",
             "lora": "peak AdamW learning rate (LoRA wants about 10x full fine-tuning's)"},
            "", number(minimum=0.0), verl=("optim.lr",)),
    Setting("LR_SCHEDULER", "cosine", "cosine | constant", OPTIMISATION,  # decays to 0; verl's default is constant
            choice(("cosine", "constant"), "LR_SCHEDULER must be cosine or constant (verl 0.9.1's choices), got {value!r}."),
            verl=("optim.lr_scheduler_type",)),
    Setting("WARMUP_RATIO", "0.03", "fraction of steps spent warming up the learning rate", OPTIMISATION,
            number(0.0, 1.0), verl=("optim.lr_warmup_steps_ratio",)),
    Setting("WEIGHT_DECAY", "0.01", "AdamW weight decay", OPTIMISATION, number(minimum=0.0), verl=("optim.weight_decay",)),
    Setting("SEED", "42", "verl's engine/trainer seed (used by engine.full_determinism)", OPTIMISATION, integer(0),
            verl=("trainer.seed", "engine.seed")),
    # Stable (the same command, the same directory): reruns and requeued jobs resume.
    Setting("OUTPUT_DIR", lambda text, mode: f"checkpoints/{text('PROJECT_NAME')}/{text('EXPERIMENT_NAME')}",
            "checkpoints; reruns resume from here", OUTPUT, _directory, verl=("trainer.default_local_dir",),
            listed_default="checkpoints/$PROJECT_NAME/$EXPERIMENT_NAME"),
    Setting("SAVE_FREQ", "500", "save every N steps (-1: only at the end; after_each_epoch)", OUTPUT, frequency,
            verl=("trainer.save_freq",)),  # bounds the work a preempted job repeats
    Setting("TEST_FREQ", "after_each_epoch", "validate every N steps (-1: only at the end)", OUTPUT, _test_frequency,
            verl=("trainer.test_freq",)),
    Setting("LOGGER", "console", "comma list of console, wandb, tensorboard, mlflow, swanlab", OUTPUT, _loggers,
            verl=("trainer.logger",)),  # works offline; add wandb or tensorboard when wanted
    Setting("PROJECT_NAME", "verl-sft", "experiment tracker project", OUTPUT, _NAME_RULE, verl=("trainer.project_name",)),
    Setting("EXPERIMENT_NAME", _experiment_name, "run name in the tracker and in OUTPUT_DIR", OUTPUT, _NAME_RULE,
            verl=("trainer.experiment_name",), listed_default="<model directory name>-<full|lora>"),
    Setting("DRY_RUN", "0", "1: print settings, command and composed config, also build verl's typed\n"
            "config, and exit without training (every launch checks that the config composes);\n"
            "with DEVICE=cuda where no GPU is visible, the GPU job's configuration (GPUs assumed)",
            BEHAVIOUR, boolean),
    Setting("ATTN_IMPLEMENTATION", "auto", "auto: flash_attention_2 on a GPU with flash-attn installed, else sdpa",
            BEHAVIOUR, _attention, _auto_attention, verl=("+model.override_config.attn_implementation",)),
    Setting("COMPUTE_DTYPE", "auto", "auto | bf16 | fp32 compute (auto: bf16 on GPU, fp32 on CPU, where bf16 is emulated)",
            BEHAVIOUR, choice(("bf16", "fp32"), "COMPUTE_DTYPE must be auto, bf16 or fp32, got {value!r}."),
            _auto_compute_dtype, verl=("+engine.mixed_precision",), lower=True),
    Setting("REMOVE_PADDING", "auto", "1: pack samples without padding; auto: on with flash attention, off with sdpa\n"
            "(sdpa attends over the whole pack, quadratic in MAX_TOKENS_PER_GPU)", BEHAVIOUR, boolean,
            _auto_remove_padding, verl=("model.use_remove_padding",), lower=True),
    Setting("GRADIENT_CHECKPOINTING", "auto", "recompute activations in the backward pass; auto: on for GPU, off for CPU",
            BEHAVIOUR, boolean, _on_gpu, verl=("model.enable_gradient_checkpointing",), lower=True),
    Setting("VERL_DIR", "", "a verl source checkout to use instead of the installed package", BEHAVIOUR, _verl_dir,
            listed_default="(unset)"),
    Setting("PYTHON", None, "", BEHAVIOUR, None, listed_default=".venv/bin/python if present, else python3",
            read_by="scripts/lib/python.sh"),
    Setting("SFT_STOP_FILE", None, "a path: once that file exists, the run saves a checkpoint at the end of\n"
            "the current step and exits 0 (sft/verl_plugins/stop_file.py; slurm/ batch files set it)", BEHAVIOUR, None,
            listed_default="(unset)", read_by="sft/verl_plugins/stop_file.py"),
    Setting("SFT_SHARDED_LOADING", None, "0: load the model as verl does (rank 0 reads it whole, then broadcasts);\n"
            "default: each rank reads only its shard from the safetensors files", BEHAVIOUR, None,
            listed_default="(unset)", read_by="sft/verl_plugins/sharded_loading.py"),
    Setting("SFT_FROZEN_UPCAST", None, "0: a CPU LoRA run gathers its frozen bf16 base in fp32 as verl does (and\n"
            "its embedding and LM head whole); default: gathered in bf16, computed in fp32 block by block",
            BEHAVIOUR, None, listed_default="(unset)", read_by="sft/verl_plugins/cpu/lora_wrapping.py"),
    Setting("SFT_VOCAB_PARALLEL", None, "0: a CPU LoRA run on several processes all-gathers its frozen embedding\n"
            "and LM head (FSDP2); default: each process keeps its rows, computed vocabulary-parallel", BEHAVIOUR, None,
            listed_default="(unset)", read_by="sft/verl_plugins/cpu/vocab_parallel.py"),
    Setting("SFT_LORA_INPUT_GRADS", None, "1: keep verl's enable_input_require_grads hook (LoRA); default: removed\n"
            "(only reentrant checkpointing needs it; FSDP2 re-gathers the embedding for it)", BEHAVIOUR, None,
            listed_default="(unset)", read_by="sft/verl_plugins/lora_precision.py"),
    Setting("LORA_RANK", {"lora": "32"}, "rank of the LoRA matrices", "", integer(1), verl=("model.lora_rank",),
            modes=("lora",)),
    Setting("LORA_ALPHA", {"lora": "64"}, "LoRA scaling numerator (scale = LORA_ALPHA / LORA_RANK)", "", integer(1),
            verl=("model.lora_alpha",), modes=("lora",)),  # scale 2, the common choice
    Setting("TARGET_MODULES", {"lora": "all-linear"},  # every linear layer: closest to full fine-tuning
            "modules that get adapters: all-linear, or a comma list (q_proj,v_proj)", "", _target_modules,
            verl=("model.target_modules",), modes=("lora",)),
    # verl holds the frozen base in engine.model_dtype, fp32 (4 bytes per parameter) when training;
    # sft/verl_plugins/lora_precision.py keeps the adapters fp32 whatever the base's dtype.
    Setting("LORA_BASE_DTYPE", {"lora": "bf16"}, "dtype the frozen base weights are held in (bf16 | fp32);\n"
            "adapters, their gradients and AdamW state stay fp32", "",
            choice(("bf16", "fp32"), "LORA_BASE_DTYPE must be bf16 or fp32, got {value!r}."),
            verl=("engine.model_dtype",), modes=("lora",), lower=True),
)
SETTINGS_BY_NAME = {row.name: row for row in SETTINGS}
# Every variable the launchers read, for tests that must start from a clean environment.
LAUNCHER_VARIABLES = ("SFT_MODE", *SETTINGS_BY_NAME)


# ---------------------------------------------------------------------------------------------
# Cross-checks: relations between settings, checked once every setting is resolved.


def check_node_rank(r: Resolution) -> None:
    if r["NODE_RANK"] >= r["NNODES"]:
        raise LaunchError(f"NODE_RANK={r['NODE_RANK']} must be smaller than NNODES={r['NNODES']}.")


def check_tokens_fit_the_longest_sample(r: Resolution) -> None:
    max_length, tokens = r["MAX_LENGTH"], r["MAX_TOKENS_PER_GPU"]
    if tokens < max_length:
        raise LaunchError(
            f"MAX_TOKENS_PER_GPU={tokens} is smaller than MAX_LENGTH={max_length}: the longest sample "
            f"could not fit in a micro batch. Set MAX_TOKENS_PER_GPU>={max_length}."
        )


def _world_size(r: Resolution) -> int:
    return r["NPROC_PER_NODE"] * r["NNODES"]


def check_batch_splits_over_the_processes(r: Resolution) -> None:
    train_batch_size, world_size = r["TRAIN_BATCH_SIZE"], _world_size(r)
    if train_batch_size % world_size:
        raise LaunchError(
            f"TRAIN_BATCH_SIZE={train_batch_size} is not a multiple of the {world_size} processes "
            f"(NNODES={r['NNODES']} x NPROC_PER_NODE={r['NPROC_PER_NODE']}). Use a multiple of {world_size}."
        )
    per_process, batch_size = train_batch_size // world_size, r["BATCH_SIZE"]
    if not r["DYNAMIC_BATCH"] and per_process % batch_size:
        raise LaunchError(
            f"TRAIN_BATCH_SIZE={train_batch_size} gives {per_process} samples per process ({world_size} processes), "
            f"not a multiple of the micro batch BATCH_SIZE={batch_size}: verl would stop with \"data size must be "
            f"divisible by force_group_size * micro_batch_size_per_gpu\". Set BATCH_SIZE to a divisor of {per_process}, "
            f"or TRAIN_BATCH_SIZE to a multiple of {world_size * batch_size}."
        )


def check_rows_fill_a_batch(r: Resolution) -> None:
    train_batch_size, world_size = r["TRAIN_BATCH_SIZE"], _world_size(r)
    train_rows = r.facts["train"].rows
    val_rows = r.facts["val"].rows if r.facts["val"] is not None else 0
    if train_rows < train_batch_size:
        raise LaunchError(
            f"TRAIN_FILE has {train_rows} rows, fewer than TRAIN_BATCH_SIZE={train_batch_size}: verl drops the last "
            f"incomplete batch, so nothing would train. Set TRAIN_BATCH_SIZE<={train_rows - train_rows % world_size or world_size}."
        )
    if r["VAL_FILE"] is not None and val_rows < train_batch_size:
        raise LaunchError(
            f"VAL_FILE has {val_rows} rows, fewer than TRAIN_BATCH_SIZE={train_batch_size}: verl validates in batches "
            "of TRAIN_BATCH_SIZE and drops incomplete ones, so val/loss would be nan. Use a larger validation split, "
            "a smaller TRAIN_BATCH_SIZE, or VAL_FILE= (empty) to skip validation."
        )


def check_train_and_val_come_from_one_run(r: Resolution) -> None:
    files = {"TRAIN_FILE": (r["TRAIN_FILE"], r.facts["train"])}
    if r["VAL_FILE"] is not None:
        files["VAL_FILE"] = (r["VAL_FILE"], r.facts["val"])
    error, note = pairing_problem(files)
    if error:
        raise LaunchError(error)
    if note:
        r.notes.append(note)


def check_attention_runs_on_the_device(r: Resolution) -> None:
    attn = r["ATTN_IMPLEMENTATION"]
    if r["DEVICE"] == "cpu" and attn.startswith("flash"):
        raise LaunchError(f"ATTN_IMPLEMENTATION={attn} needs a GPU. Use sdpa on CPU.")


CROSS_CHECKS: tuple[Callable[[Resolution], None], ...] = (
    check_node_rank,
    check_tokens_fit_the_longest_sample,
    check_batch_splits_over_the_processes,
    check_rows_fill_a_batch,
    check_train_and_val_come_from_one_run,
    check_attention_runs_on_the_device,
)


# ---------------------------------------------------------------------------------------------
# Resolution: apply the table, then the cross-checks.


@dataclass
class Settings:
    """Resolved launcher settings (every value validated), by environment variable name."""

    mode: str
    values: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)  # how each auto value was chosen
    given: dict[str, str] = field(default_factory=dict)  # the settings the environment set (non-empty), as text

    def __getitem__(self, name: str) -> Any:
        return self.values[name]


def settings_of(mode: str) -> list[Setting]:
    """The settings the launcher reads in `mode` (without those read elsewhere)."""
    return [row for row in SETTINGS if mode in row.modes and row.parse is not None]


def resolve_settings(env: dict[str, str] | None = None) -> Settings:
    """Validate every setting of the environment `env` (default: os.environ) and resolve the `auto` values."""
    env = dict(os.environ if env is None else env)
    if "SFT_MODE" not in env:
        raise LaunchError("SFT_MODE is not set. Run through scripts/run_sft_training.sh or scripts/run_sft_peft.sh.")
    mode = env["SFT_MODE"].strip()
    if mode not in MODES:
        raise LaunchError(f"SFT_MODE must be full or lora, got {mode!r}.")
    resolution = Resolution(env, mode)
    for row in settings_of(mode):
        resolution[row.name]
    for check in CROSS_CHECKS:
        check(resolution)
    values = {row.name: resolution[row.name] for row in settings_of(mode)}
    given = {name: env[name] for name in SETTINGS_BY_NAME if env.get(name)}
    return Settings(mode, values, resolution.notes, resolution.sources, given)


# ---------------------------------------------------------------------------------------------
# Checks of files and data, and what the machine has.


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


def _module_available(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


# ---------------------------------------------------------------------------------------------
# Values as verl's Hydra reads them.


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


def hydra_value(name: str, value: Any) -> str:
    """The resolved `value` of setting `name` as a Hydra override value."""
    if name == "COMPUTE_DTYPE":
        return f"{{param_dtype:{value},reduce_dtype:fp32,buffer_dtype:fp32}}"
    if name == "TARGET_MODULES" and value != "all-linear":
        return f"[{value}]"
    if value is None:
        return "null"
    if isinstance(value, (bool, int)):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list):
        return f"[{','.join(value)}]"
    return hydra_quote(str(value))


# ---------------------------------------------------------------------------------------------
# The listing in the launchers' header comments (their --help), and the defaults bash exports.

_DEFAULT_COLUMN, _HELP_COLUMN = 19, 29


def _listing_line(row: Setting, mode: str) -> list[str]:
    line = f"  {row.name}"
    line += " " * max(1, _DEFAULT_COLUMN - len(line))
    line += row.listed_default or row.default_for(mode) or ""
    line += " " * (_HELP_COLUMN - len(line) if len(line) < _HELP_COLUMN else 2)
    first, *more = row.help_for(mode).split("\n")
    return [(line + first).rstrip()] + [" " * _HELP_COLUMN + text for text in more]


def listing(block: str) -> str:
    """The settings listed in a header: "shared" (scripts/lib/sft_env.sh), "full" or "lora" (each launcher's own)."""
    lines, group = [], None
    for row in SETTINGS:
        if block == "shared" and not row.per_mode:
            if row.group != group:
                group = row.group
                lines.append(group)
            lines += _listing_line(row, "full")
        elif block in row.modes and row.per_mode:
            lines += _listing_line(row, block)
    return "\n".join(lines)


def exported_settings(env: dict[str, str], mode: str) -> list[tuple[str, str]]:
    """(name, value) of every setting of `mode` with a default, defaults applied: what bash exports."""
    resolution = Resolution(env, mode)
    pairs = []
    for row in settings_of(mode):
        value = resolution.text(row.name)
        if value is not None:
            pairs.append((row.name, value))
    return pairs


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--export"]:
        mode = os.environ.get("SFT_MODE", "")
        if mode not in MODES:
            print(f"SFT_MODE must be full or lora, got {mode!r}.", file=sys.stderr)
            return 2
        sys.stdout.write("".join(f"{name}\0{value}\0" for name, value in exported_settings(dict(os.environ), mode)))
        return 0
    if len(args) == 2 and args[0] == "--listing" and args[1] in ("shared", *MODES):
        print(listing(args[1]))
        return 0
    print(__doc__)
    return 0 if args[:1] in (["-h"], ["--help"]) else 2


if __name__ == "__main__":
    sys.exit(main())
