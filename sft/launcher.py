"""The launch logic behind scripts/run_sft_training.sh and scripts/run_sft_peft.sh.

Usage (through the launchers; every setting and its default: scripts/lib/sft_env.sh, or --help):
    scripts/run_sft_training.sh [hydra.override=value ...]
    DRY_RUN=1 scripts/run_sft_peft.sh model.lora_rank=8

Run directly it reads the same environment variables, with the same defaults (SFT_MODE must be set):
    SFT_MODE=full ... python -m sft.launcher -- [hydra overrides]

It validates every setting (numbers are numbers, files exist, the Parquet has a `messages`
column, batch sizes fit the world size, the data was prepared with MODEL_NAME's chat template),
passes verl the dataset that encodes rows through that template (sft/verl_plugins/sft_dataset.py, the code
prepare_data counted with), resolves the `auto` values (device, processes per
node, port, MAX_LENGTH from prepare_data's manifest.json, attention, compute dtype), builds
verl's Hydra overrides with every value quoted for Hydra, and prints the settings. Then, on every
launch, sft/launch/preflight.py translates the user's overrides (verl's older key names and this
project's original ones: sft/launch/verl_keys.py; each translation is printed once), composes
verl's config with all of them and loads the dataset class, so a bad override stops in about a
second with one line ("did you mean ..."); it also checks the training files, the model's weights
and tokenizer, the verl functions the run's plugins replace (sft/verl_plugins/compat.py) and what
a resume will load. It prints the exact command, takes OUTPUT_DIR's lock (sft/launch/output_lock.py:
one training per OUTPUT_DIR), appends the launch to OUTPUT_DIR/run_record.json
(sft/launch/run_record.py) and replaces itself with torchrun (sft/launch/agent.py), whose
processes start in sft/launch/worker.py so that they die with it. User overrides go last, so they
win. DRY_RUN=1 also builds verl's typed config sections, prints the
composed values and exits without training.
The settings themselves (defaults, parsing, auto rules, verl keys, help) are one table:
sft/launch/settings.py.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
import time
from pathlib import Path

from sft.common.errors import EXIT_OK, exit_on_user_error
from sft.common.files import writing
from sft.launch.output_lock import held_by_another, lock_output_dir
from sft.launch.preflight import Preflight, build_typed_sections, check_overrides, config_dir_for, memory_plan_for
from sft.launch.run_record import append_launch, launch_entry
from sft.launch.worker import AGENT_PID_VARIABLE
from sft.verl_plugins.compat import plugins_for
from sft.launch.settings import (  # noqa: F401  (LaunchError, resolve_settings: this module's interface)
    SETTINGS,
    LaunchError,
    Settings,
    hydra_quote,
    hydra_value,
    resolve_settings,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
CPU_MALLOC_MMAP_THRESHOLD = 1 << 20
"""glibc's MALLOC_MMAP_THRESHOLD_ for CPU training processes (bytes; see build_launch's env)."""

# Secrets never appear in what the launcher prints; they are passed through the environment.
_SECRET_PATTERN = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD)", re.IGNORECASE)


# ---------------------------------------------------------------------------------------------
# Command building.

# The launcher's overrides in the order the command lists them: a verl key that a setting sets
# (SETTINGS' `verl`), or a fixed `key=value`. Keys of settings not listed here follow at the end.
_COMMAND_ORDER = (
    "model.path", "model.trust_remote_code", "+model.override_config.attn_implementation",
    "data.train_files", "data.val_files", "data.pad_mode=no_padding",
    # Every sample is encoded through the model's chat template by sft/text/chat_format.py, the same
    # code prepare_data counted with (verl's own dataset templates each message on its own).
    f"data.custom_cls.path={hydra_quote(str(REPO_ROOT / 'sft' / 'verl_plugins' / 'sft_dataset.py'))}",
    "data.custom_cls.name=ChatTemplateSFTDataset",
    "data.use_dynamic_bsz", "model.use_remove_padding", "model.enable_gradient_checkpointing",
    "data.max_length", "data.max_token_len_per_gpu", "data.micro_batch_size_per_gpu", "data.train_batch_size",
    "trainer.total_epochs", "optim.lr", "optim.lr_scheduler_type", "optim.lr_warmup_steps_ratio",
    "optim.weight_decay", "trainer.seed", "engine.seed", "engine.strategy=fsdp2", "+engine.mixed_precision",
    "trainer.default_local_dir", "trainer.resume_mode=auto", "trainer.save_freq", "trainer.test_freq",
    "trainer.logger", "trainer.project_name", "trainer.experiment_name", "trainer.device", "trainer.nnodes",
    "trainer.n_gpus_per_node",
)


# On a CPU FSDP2's gathers and reduce-scatters are memory copies of the whole model, made for every micro
# batch (one sample per micro batch on a CPU): verl's fsdp.yaml reduces gradients after every micro batch
# and regathers each layer for its backward. Keeping every layer gathered from its forward to its backward
# and reducing gradients once per step (verl's own switches) leaves the losses equal (tests/test_cpu_fsdp.py)
# and costs memory the plan counts (sft/launch/memory_plan.py): the whole model gathered and its
# gradients unsharded, per process. Full fine-tuning only: a LoRA run's frozen base gathered whole
# would double its largest item, for adapters whose gradients are small anyway.
# `scripts/benchmark_training.py --configs ours,ours-verl-fsdp` measures the difference.
CPU_FSDP_OVERRIDES = ["engine.use_no_sync_for_gradient_accumulation=true", "engine.reshard_after_forward=false"]


def _setting_overrides(s: Settings) -> dict[str, str]:
    """{verl key: `key=value`} for every verl key a resolved setting sets, in table order."""
    return {key: f"{key}={hydra_value(row.name, s[row.name])}"
            for row in SETTINGS if row.name in s.values for key in row.verl}


def hydra_overrides(s: Settings) -> list[str]:
    """verl Hydra overrides for the settings (user overrides are appended after these)."""
    by_key = _setting_overrides(s)
    overrides = [item if "=" in item else by_key.pop(item) for item in _COMMAND_ORDER]
    output_dir = s["OUTPUT_DIR"]
    if not re.search(r"[$\\]", str(output_dir)):
        # Hydra's record of the run (the composed config, the overrides, sft_trainer.log) goes
        # with the checkpoints instead of an outputs/DATE/TIME directory in the working directory.
        # Not for a path with `$` or `\`: Hydra re-reads its run directory as an OmegaConf string
        # (hydra.runtime.output_dir), so escaping it once for the override is not enough.
        run_dir = output_dir / "hydra" / time.strftime("%Y%m%d-%H%M%S")
        overrides.append(f"hydra.run.dir={hydra_quote(str(run_dir))}")
    if s["DEVICE"] == "cpu":
        # Data loader worker processes only add start-up time and memory on a CPU run.
        overrides.append("data.num_workers=0")
        overrides += CPU_FSDP_OVERRIDES if s.mode == "full" else []
    return overrides + list(by_key.values())  # the LoRA settings, and any new setting's keys


def torchrun_args(s: Settings) -> list[str]:
    # torchrun's own agent (sft/launch/agent.py: its failures end in one line, not a traceback).
    args = ["-m", "sft.launch.agent", f"--nnodes={s['NNODES']}", f"--nproc-per-node={s['NPROC_PER_NODE']}"]
    addr, port = s["MASTER_ADDR"], s["MASTER_PORT"]
    if s["RDZV_ID"]:
        args += ["--rdzv-backend=c10d", f"--rdzv-endpoint={addr}:{port}", f"--rdzv-id={s['RDZV_ID']}"]
    elif port is None:
        args += ["--rdzv-backend=c10d", "--rdzv-endpoint=localhost:0", "--rdzv-id=standalone"]
    else:
        args += [f"--node-rank={s['NODE_RANK']}", f"--master-addr={addr}", f"--master-port={port}"]
    # Each worker starts in sft/launch/worker.py, which makes it die with torchrun, then runs verl's trainer.
    return args + ["-m", "sft.launch.worker", "verl.trainer.sft_trainer"]


def child_environment(s: Settings, env: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if env is None else env)
    python_path = [str(REPO_ROOT)]
    if s["VERL_DIR"]:
        python_path.insert(0, str(s["VERL_DIR"]))
    python_path += [entry for entry in env.get("PYTHONPATH", "").split(os.pathsep) if entry]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(python_path))
    env.setdefault("HYDRA_FULL_ERROR", "1")
    # verl warns once per optional engine it cannot import (megatron, torchtitan, ...) on every rank.
    warning_filters = [f for f in env.get("PYTHONWARNINGS", "").split(",") if f]
    env["PYTHONWARNINGS"] = ",".join(warning_filters + ["ignore::UserWarning:verl.workers.engine"])
    # verl imports these at the end of `import verl` (its external-module extension point); which
    # plugins a run loads is sft/verl_plugins/compat.py's PLUGINS table.
    modules = [m for m in env.get("VERL_USE_EXTERNAL_MODULES", "").split(",") if m]
    modules += [plugin.module for plugin in plugins_for(s.mode, s["DEVICE"], env)]
    env["VERL_USE_EXTERNAL_MODULES"] = ",".join(dict.fromkeys(modules))
    if s["DEVICE"] == "cpu":
        # torchrun gives each process one thread when it starts several; share the cores instead.
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // s["NPROC_PER_NODE"])))
        # glibc raises its mmap threshold up to 32 MiB as large blocks are freed, and keeps what is
        # freed below it in the heap: a CPU training process then stays about 2 GiB above what it
        # holds (Qwen2.5-1.5B LoRA: 6.70 against 3.99 GiB per process, same losses, 1.13x the step
        # time; SFT_FRAMEWORK_OVERVIEW.md, "Memory"). A fixed 1 MiB threshold returns every large
        # tensor to the system when it is freed. A value in the environment wins.
        env.setdefault("MALLOC_MMAP_THRESHOLD_", str(CPU_MALLOC_MMAP_THRESHOLD))
    return env


# ---------------------------------------------------------------------------------------------
# What the launcher prints.

# The printed settings: (label, template of setting names). A line whose settings are not set
# in this mode (LoRA's) or are unset (VERL_DIR) is left out; settings no line names follow at
# the end, one per line. The source of an auto value is shown after the line named for it.
_SUMMARY = (
    ("DEVICE", "{DEVICE}"),
    ("NNODES x NPROC_PER_NODE", "{NNODES} x {NPROC_PER_NODE} (NODE_RANK {NODE_RANK})"),
    ("rendezvous", None),
    ("MODEL_NAME", "{MODEL_NAME}"),
    ("TRAIN_FILE", "{TRAIN_FILE}"),
    ("VAL_FILE", "{VAL_FILE}"),
    ("OUTPUT_DIR", "{OUTPUT_DIR}"),
    ("MAX_LENGTH", "{MAX_LENGTH}"),
    ("MAX_TOKENS_PER_GPU", "{MAX_TOKENS_PER_GPU}"),
    ("BATCH_SIZE / TRAIN_BATCH_SIZE", "{BATCH_SIZE} / {TRAIN_BATCH_SIZE}"),
    ("DYNAMIC_BATCH", "{DYNAMIC_BATCH}"),
    ("EPOCHS", "{EPOCHS}"),
    ("LEARNING_RATE", "{LEARNING_RATE} ({LR_SCHEDULER}, warmup {WARMUP_RATIO}, weight decay {WEIGHT_DECAY})"),
    ("SEED", "{SEED}"),
    ("SAVE_FREQ / TEST_FREQ", "{SAVE_FREQ} / {TEST_FREQ}"),
    ("LOGGER", "{LOGGER}"),
    ("PROJECT_NAME / EXPERIMENT_NAME", "{PROJECT_NAME} / {EXPERIMENT_NAME}"),
    ("ATTN_IMPLEMENTATION", "{ATTN_IMPLEMENTATION}"),
    ("COMPUTE_DTYPE", "{COMPUTE_DTYPE}"),
    ("REMOVE_PADDING", "{REMOVE_PADDING}"),
    ("GRADIENT_CHECKPOINTING", "{GRADIENT_CHECKPOINTING}"),
    ("TRUST_REMOTE_CODE", "{TRUST_REMOTE_CODE}"),
    ("LORA_RANK / LORA_ALPHA / TARGET_MODULES", "{LORA_RANK} / {LORA_ALPHA} / {TARGET_MODULES}"),
    ("LORA_BASE_DTYPE", "{LORA_BASE_DTYPE} frozen base, fp32 adapters"),
    ("VERL_DIR", "{VERL_DIR}"),
)
_NOT_SHOWN = {"MASTER_ADDR", "MASTER_PORT", "RDZV_ID", "DRY_RUN"}  # in the rendezvous line, or the dry run's own
_SHOWN_WHEN_SET = {"VERL_DIR"}


def _shown(value) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return ",".join(value)
    return "(none: no validation)" if value is None else str(value)  # VAL_FILE


def _rendezvous(s: Settings) -> str:
    if s["RDZV_ID"]:
        return f"c10d {s['MASTER_ADDR']}:{s['MASTER_PORT']} id {s['RDZV_ID']}"
    return "free local port" if s["MASTER_PORT"] is None else f"{s['MASTER_ADDR']}:{s['MASTER_PORT']}"


def _summary_rows(s: Settings) -> list[tuple[str, str]]:
    rows = [("mode", "full fine-tuning" if s.mode == "full" else "LoRA")]
    named = set(_NOT_SHOWN)
    for label, template in _SUMMARY:
        if template is None:
            rows.append((label, _rendezvous(s)))
            continue
        names = re.findall(r"\{([A-Z_]+)\}", template)
        named.update(names)
        if all(name in s.values and not (name in _SHOWN_WHEN_SET and s[name] is None) for name in names):
            rows.append((label, template.format(**{name: _shown(s[name]) for name in names})))
    return rows + [(name, _shown(value)) for name, value in s.values.items() if name not in named]


def format_settings(s: Settings) -> str:
    rows = _summary_rows(s)
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


# The values a user most often wants to confirm after their own overrides were applied (what a
# dry run prints, in this order; a display choice, so a new setting need not appear here).
EFFECTIVE_KEYS = (
    "model.path", "model.lora_rank", "model.lora_alpha", "model.target_modules", "engine.model_dtype",
    "data.custom_cls.path",
    "data.custom_cls.name", "data.apply_chat_template_kwargs", "optim.optimizer", "optim.lr", "optim.betas",
    "optim.lr_scheduler_type", "optim.lr_warmup_steps_ratio", "optim.weight_decay", "optim.clip_grad", "data.train_files", "data.val_files", "data.max_length",
    "data.max_token_len_per_gpu", "data.micro_batch_size_per_gpu", "data.use_dynamic_bsz", "data.train_batch_size",
    "model.use_remove_padding",
    "model.enable_gradient_checkpointing", "engine.strategy", "engine.mixed_precision",
    "trainer.total_epochs", "trainer.default_local_dir", "trainer.resume_mode", "trainer.save_freq",
    "trainer.test_freq", "trainer.logger", "trainer.device", "trainer.nnodes", "trainer.n_gpus_per_node",
)


def verl_version(config_dir: Path) -> str:
    """The version of the verl whose config is composed (its version file; importing verl takes seconds)."""
    try:
        return (config_dir.parents[1] / "version" / "version").read_text().strip()
    except OSError:
        return "unknown"


def format_effective_config(config, config_dir: Path) -> str:
    """The composed values of EFFECTIVE_KEYS, after every override (the user's included)."""
    from omegaconf import OmegaConf

    # The values as resolved once (OmegaConf.resolve): a literal `${HOME}` in a path stays literal.
    plain = OmegaConf.to_container(config, resolve=False)
    lines = [f"[verl-sft] composed config (verl {verl_version(config_dir)} from {config_dir.parents[1]}):"]
    for key in EFFECTIVE_KEYS:
        value = plain
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        lines.append(f"  {key} = {value}")
    return "\n".join(lines)


def build_launch(s: Settings, overrides: list[str], env: dict[str, str] | None = None):
    """(argv, environment) of the torchrun command for `s` with verl's `overrides` (preflight's)."""
    child_env = child_environment(s, env)
    argv = [sys.executable, *torchrun_args(s), *overrides]
    return argv, child_env


def _record_launch(s: Settings, user_overrides: list[str], checked: Preflight, command: list[str]) -> None:
    """OUTPUT_DIR/run_record.json (node 0 only: on several nodes OUTPUT_DIR is usually shared)."""
    if s["NODE_RANK"] != 0:
        return
    entry = launch_entry(s, user_overrides, checked.overrides, checked.notes, command)
    path, note = append_launch(s["OUTPUT_DIR"], entry)
    if note:
        print(f"[verl-sft] note: {note}", flush=True)
    print(f"[verl-sft] run record: {path}", flush=True)


def _print_memory_plan(settings: Settings, config) -> None:
    """sft/launch/memory_plan.py's plan for one device (assumptions with DRY_RUN), and its warning."""
    plan, warnings = memory_plan_for(settings, config)
    if plan is not None:
        text = plan.format()
        if not settings["DRY_RUN"]:
            text = text.split("\nAssumptions:", 1)[0] + "\n  (DRY_RUN=1 lists the assumptions)"
        print("[verl-sft] " + text, flush=True)
    for warning in warnings:
        print(f"[verl-sft] {'WARNING' if warning.startswith('Memory plan:') else 'note'}: {warning}", flush=True)


def launch(user_overrides: list[str], env: dict[str, str] | None = None) -> int:
    """Resolve, print the settings, check every override, print the command, then dry-run or exec torchrun."""
    settings = resolve_settings(env)
    print(format_settings(settings), flush=True)
    busy = held_by_another(settings["OUTPUT_DIR"]) if _locks(settings) else None
    if busy and not settings["DRY_RUN"]:
        raise LaunchError(busy)
    checked = check_overrides(settings, hydra_overrides(settings), user_overrides, env)
    for note in checked.notes:
        print(f"[verl-sft] note: {note}", flush=True)
    command, child_env = build_launch(settings, checked.overrides, env)
    shown_env = ["PYTHONPATH", "VERL_USE_EXTERNAL_MODULES", "OMP_NUM_THREADS", "MALLOC_MMAP_THRESHOLD_"]
    print(f"[verl-sft] command:\n  {_printable_env(child_env, shown_env)} {shlex.join(command)}", flush=True)
    print(f"[verl-sft] checked in {checked.seconds:.1f} s: verl's config composes with every override, and "
          f"{checked.config.data.custom_cls.name} loads and accepts the data.", flush=True)
    _print_memory_plan(settings, checked.config)
    if settings["DRY_RUN"]:
        if busy:
            print(f"[verl-sft] note: {busy}", flush=True)
        build_typed_sections(checked.config, settings["VERL_DIR"])
        print(format_effective_config(checked.config, config_dir_for(settings)))
        print("[verl-sft] DRY_RUN=1: verl's Hydra config composes with all overrides and its typed sections "
              "build; not training.")
        return 0
    with writing(f"OUTPUT_DIR {settings['OUTPUT_DIR']}", "Free some space there, or set OUTPUT_DIR to a directory "
                 "you can write to."):
        settings["OUTPUT_DIR"].mkdir(parents=True, exist_ok=True)
        _lock_output_dir(settings)
        _record_launch(settings, user_overrides, checked, command)
    child_env[AGENT_PID_VARIABLE] = str(os.getpid())  # torchrun keeps this pid: the exec replaces this process
    sys.stdout.flush()
    os.execve(command[0], command, child_env)
    return 0  # not reached


def _locks(s: Settings) -> bool:
    """Whether this launch takes OUTPUT_DIR's lock (sft/launch/output_lock.py): single-node runs, and node 0 of a
    static multi-node rendezvous. Every node of an elastic (RDZV_ID) multi-node run has NODE_RANK 0 and shares
    OUTPUT_DIR, so those rely on their scheduler's lock (slurm/lib/sft_slurm.sh)."""
    return s["NNODES"] == 1 or (not s["RDZV_ID"] and s["NODE_RANK"] == 0)


def _lock_output_dir(s: Settings) -> None:
    if not _locks(s):
        return
    _fd, note = lock_output_dir(s["OUTPUT_DIR"])  # held open across the exec, by torchrun
    if note:
        print(f"[verl-sft] note: {note}", flush=True)


def main(argv: list[str] | None = None, env: dict[str, str] | None = None) -> int:
    """`python -m sft.launcher -- [overrides]`; `env` (default: os.environ) holds the settings."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "--":
        args = args[1:]
    if args and args[0] in ("-h", "--help"):
        print(__doc__)
        return EXIT_OK
    return exit_on_user_error(lambda: launch(args, env), "[verl-sft] error")


if __name__ == "__main__":
    sys.exit(main())
