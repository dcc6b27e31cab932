"""The check every launch runs before torchrun starts (imported by sft/launcher.py; not a command).

`check_overrides(settings, launcher_overrides, user_overrides)`:
  1. composes verl's `sft_trainer_engine` Hydra config with the launcher's own overrides, for the
     keys it really has (verl is not imported: that alone takes 8-10 s here);
  2. translates the user's overrides with sft/launch/verl_keys.py (old key names, JSON values,
     `++` for verl's empty dictionaries; an unknown key stops with "did you mean"), checks
     data.prompt_key / data.response_key against the data's manifest.json, and fixes the spelling
     of values verl compares exactly (optim.optimizer's class name);
  3. composes and resolves the whole config (an override Hydra cannot parse is named), checks that
     each user value has the type of the value it replaces (a number for optim.lr, true/false for
     a flag, a list for a list), and the few values verl restricts to a set;
  4. loads the dataset class named by data.custom_cls and lets it check its settings against the
     Parquet files (ChatTemplateSFTDataset.check_config: the chat template kwargs);
  5. checks every verl (and torch) function the run's plugins replace against the source that will
     run (sft/verl_plugins/compat.py), and what a resume will load (sft/common/checkpoints.py: the
     newest whole global_step_N, with a note when that is not the tracker's);
  6. notes every user override that replaces what a printed setting says, and settings verl reads
     only in another mode.
Any failure is one line; the result holds the final overrides, the notes and the composed config.
DRY_RUN adds `build_typed_sections` (verl's dataclasses; imports verl).

`memory_plan_for(settings, config)`: sft/launch/memory_plan.py's plan of what one device holds,
from the composed config (the values verl will really use), and the warning when the device's
free memory (GPU: the device's; CPU: the machine's available memory, shared by every local
process) is less than that.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from sft.common.checkpoints import expected_files, resume_point
from sft.launch.settings import SETTINGS, LaunchError, Settings, hydra_value
from sft.verl_plugins.compat import check_run, plugins_for
from sft.launch.verl_keys import (
    ManifestCheck,
    VerlKeyError,
    optimizer_class_name,
    compose_verl_config,
    dotted_keys,
    translate,
    verl_config_dir,
)

# Values verl 0.9.1 accepts only from a set (FSDPOptimizerConfig.__post_init__, its SFT dataset's
# padding and truncation, CheckpointHandler's resume modes): checked here so a typo stops in seconds.
ALLOWED_VALUES = {
    "optim.lr_scheduler_type": ("constant", "cosine"),
    "data.pad_mode": ("no_padding", "right"),
    "data.truncation": ("error", "left", "right"),
    "trainer.resume_mode": ("auto", "disable", "resume_path"),
}


@dataclass
class Preflight:
    overrides: list[str]  # what verl is given: the launcher's, then the user's (translated)
    notes: list[str] = field(default_factory=list)
    config: object = None  # the composed, resolved OmegaConf config
    seconds: float = 0.0


def config_dir_for(settings: Settings) -> Path:
    """The Hydra config directory of the verl that will run: VERL_DIR's, else the installed package's."""
    if settings["VERL_DIR"]:
        return Path(settings["VERL_DIR"]) / "verl" / "trainer" / "config"
    try:
        return verl_config_dir()
    except VerlKeyError as exc:
        raise LaunchError(f"{exc} Run scripts/setup_env.sh, or set PYTHON to the environment that has it.") from None


def _unparsable(overrides: list[str]) -> tuple[str, str] | None:
    """(the first override Hydra's grammar rejects, why), or None."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    for override in overrides:
        try:
            parser.parse_overrides([override])
        except HydraException as exc:
            return override, " ".join(str(exc).split("See https://")[0].split())
    return None


def _compose(overrides: list[str], config_dir: Path):
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        config = compose_verl_config(overrides, config_dir)
        OmegaConf.resolve(config)
    except (HydraException, OmegaConfBaseException, ValueError) as exc:
        bad = _unparsable(overrides)
        if bad:
            raise LaunchError(f"{bad[0]}: not a valid Hydra override ({bad[1]}). Quote a value that has brackets, "
                              "braces, commas, quotes or spaces in it: \"key='value'\".") from None
        message = " ".join(str(exc).split())
        raise LaunchError(f"verl's Hydra config does not accept the overrides: {message}") from None
    return config


# Keys whose number may also be one word (verl's sft_trainer reads it).
_WORDS_ALSO = {"trainer.save_freq": ("after_each_epoch",), "trainer.test_freq": ("after_each_epoch",)}


def _kind(value) -> str | None:
    """The kind of a config value a replacement must keep (None: text or null, anything goes)."""
    from omegaconf import DictConfig, ListConfig

    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, (list, ListConfig)):
        return "a list ([a,b])"
    if isinstance(value, (dict, DictConfig)):
        return "a mapping ({key:value})"
    return None


def _check_types(base, config, overrides: list[str]) -> None:
    """Each override's value has the kind of the value it replaces (verl would fail on it after torchrun)."""
    from omegaconf import OmegaConf

    for override in overrides:
        key, sep, _ = override.lstrip("+").partition("=")
        if not sep or override.startswith("~") or key.startswith("hydra."):
            continue
        before = OmegaConf.select(base, key, default=None, throw_on_resolution_failure=False)
        expected = _kind(before)
        value = OmegaConf.select(config, key, default=None, throw_on_resolution_failure=False)
        if expected is None or value is None or value in _WORDS_ALSO.get(key, ()):
            continue
        got = _kind(value)
        # verl reads one text where it reads a list of texts (trainer.logger, data.train_files, model.target_modules)
        one_for_many = expected.startswith("a list") and isinstance(value, str)
        if got != expected and not (expected == "a number" and got == "an integer") and not one_for_many:
            shown = OmegaConf.to_container(before) if OmegaConf.is_config(before) else before
            raise LaunchError(f"{override}: {key} takes {expected} (it was {shown!r}), got {value!r}. "
                              f"Example: {key}={_as_override(shown)}")


def _as_override(value) -> str:
    """A config value as an override writes it."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, dict)):
        return str(value).replace("'", "").replace(" ", "")
    return str(value)


def _manifest_config(settings: Settings) -> tuple[Path, dict | None]:
    manifest = Path(settings["TRAIN_FILE"]).parent / "manifest.json"
    try:
        config = json.loads(manifest.read_text(encoding="utf-8")).get("config")
    except (OSError, ValueError, AttributeError):
        return manifest, None
    return manifest, config if isinstance(config, dict) else None


def _check_manifest_keys(checks: list[ManifestCheck], settings: Settings) -> list[str]:
    """data.prompt_key / data.response_key: applied by prepare_data, so they must match its manifest."""
    if not checks:
        return []
    manifest, config = _manifest_config(settings)
    wanted = {check.field: check.value for check in checks}
    flags = " ".join(f"--{name.replace('_', '-')} {value}" for name, value in wanted.items())
    fix = f"Run sft/prepare_data.py again with {flags} (it writes the fields into `messages`), and drop these overrides."
    if config is None:
        raise LaunchError(f"{', '.join(c.key for c in checks)} given, but there is no readable {manifest} to say which "
                          f"fields TRAIN_FILE was prepared from. {fix}")
    wrong = [f"{c.key}={c.value} but TRAIN_FILE was prepared with --{c.field.replace('_', '-')} {config.get(c.field)}"
             for c in checks if config.get(c.field) != c.value]
    if wrong:
        raise LaunchError(f"{'; '.join(wrong)} ({manifest}). {fix}")
    return [f"{c.key}={c.value} matches TRAIN_FILE's manifest.json (prepare_data applied it when it wrote the "
            "messages); nothing to pass to verl." for c in checks]


def _fix_values(overrides: list[str]) -> tuple[list[str], list[str]]:
    """optim.optimizer's class name spelt as torch spells it (verl looks it up with getattr)."""
    fixed, notes = [], []
    for override in overrides:
        key, sep, value = override.partition("=")
        if sep and key.lstrip("+") == "optim.optimizer":
            name = optimizer_class_name(value)
            if name != value.strip("'\""):
                notes.append(f"optim.optimizer={value}: verl looks the class up by its exact name; passed {key}={name}.")
            override = f"{key}={name}"
        fixed.append(override)
    return fixed, notes


def _check_values(config) -> None:
    from omegaconf import OmegaConf

    for key, allowed in ALLOWED_VALUES.items():
        value = OmegaConf.select(config, key)
        if value is not None and value not in allowed:
            raise LaunchError(f"{key}={value}: verl 0.9.1 accepts {' or '.join(allowed)}.")
    resume = OmegaConf.select(config, "trainer.resume_from_path")
    if resume is not None and not (Path(resume).is_dir() and "global_step_" in Path(resume).name):
        raise LaunchError(f"trainer.resume_from_path={resume}: verl resumes from an existing OUTPUT_DIR/global_step_N "
                          "directory. Point it at one, or leave it unset (reruns resume from the latest step).")


def load_dataset_class(config):
    """The class data.custom_cls names, imported as verl will import it (by file path)."""
    path, name = config.data.custom_cls.path, config.data.custom_cls.name
    if not path:
        return None
    if not Path(path).is_file():
        raise LaunchError(f"data.custom_cls.path={path}: no such file.")
    spec = importlib.util.spec_from_file_location("verl_sft_dataset_check", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the user's own dataset file may raise anything
        raise LaunchError(f"data.custom_cls.path={path} does not import: {type(exc).__name__}: {exc}") from None
    cls = getattr(module, name, None)
    if cls is None:
        raise LaunchError(f"data.custom_cls.name={name}: {path} defines no such class.")
    return cls


def _check_dataset(config) -> None:
    from omegaconf import OmegaConf

    cls = load_dataset_class(config)
    check = getattr(cls, "check_config", None)
    if check is None:
        return
    files = [f for key in ("train_files", "val_files") for f in _as_list(OmegaConf.select(config, f"data.{key}"))]
    try:
        check(OmegaConf.to_container(config.data, resolve=False), files)
    except ValueError as exc:
        raise LaunchError(str(exc)) from None


def _as_list(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(item) for item in value]


_SETTING_OF_KEY = {key.lstrip("+"): row.name for row in SETTINGS for key in row.verl}


def _replaced_settings(settings: Settings, user_overrides: list[str]) -> list[str]:
    """A note for each user override of a key a printed setting sets: the printed value is not what runs."""
    notes = []
    for override in user_overrides:
        key, sep, value = override.lstrip("+").partition("=")
        name = _SETTING_OF_KEY.get(key)
        if sep and name and name in settings.values and value != hydra_value(name, settings[name]):
            notes.append(f"{key}={value} (your override) replaces {name}={settings[name]} shown above.")
    return notes


def _ignored_settings(settings: Settings) -> list[str]:
    """Settings the environment sets that this mode does not read (LoRA's, in full fine-tuning)."""
    env_names = [row.name for row in SETTINGS if row.parse is not None and settings.mode not in row.modes]
    given = [name for name in env_names if name in settings.given]
    if not given:
        return []
    return [f"{', '.join(given)} set in the environment: LoRA settings, not read by full fine-tuning "
            "(scripts/run_sft_peft.sh trains LoRA)."]


def _dynamic_micro_batch(config, user_overrides: list[str]) -> list[str]:
    keys = {o.lstrip("+").partition("=")[0] for o in user_overrides}
    if "data.micro_batch_size_per_gpu" in keys and config.data.use_dynamic_bsz:
        return ["data.micro_batch_size_per_gpu is read for validation only while data.use_dynamic_bsz=true: training "
                "micro batches hold up to data.max_token_len_per_gpu tokens. Set BATCH_SIZE instead (it caps that budget)."]
    return []


def _resume_note(settings: Settings, config) -> list[str]:
    """What `trainer.resume_mode=auto` will load from OUTPUT_DIR (sft/verl_plugins/checkpoint_fixes.py does the same)."""
    from omegaconf import OmegaConf

    # Values as composed and resolved once: a literal `${HOME}` in a path stays literal.
    trainer = OmegaConf.to_container(config.trainer, resolve=False)
    if trainer.get("resume_mode") != "auto" or trainer.get("resume_from_path"):
        return []
    world = settings["NNODES"] * settings["NPROC_PER_NODE"]
    sequence_parallel = int(OmegaConf.to_container(config.engine, resolve=False).get("ulysses_sequence_parallel_size")
                            or 1)
    contents = OmegaConf.to_container(config.checkpoint, resolve=False).get("load_contents") or ["model", "optimizer",
                                                                                                   "extra"]
    names = expected_files(world, contents, data_ranks=max(1, world // sequence_parallel))
    try:
        _, note = resume_point(Path(str(trainer["default_local_dir"])), names)
    except ValueError as exc:
        raise LaunchError(str(exc)) from None
    return [note] if note else []


def check_overrides(settings: Settings, launcher_overrides: list[str], user_overrides: list[str],
                    env: dict[str, str] | None = None) -> Preflight:
    """Translate, compose and check everything verl will be given; see the module docstring."""
    started = time.monotonic()
    config_dir = config_dir_for(settings)
    passed, notes, base = [], [], None
    if user_overrides:  # without any, the launcher's own overrides are composed once
        base = _compose(launcher_overrides, config_dir)
        known = frozenset(dotted_keys(base))
        translated, notes = translate(user_overrides, known)
        checks = [item for item in translated if isinstance(item, ManifestCheck)]
        passed, value_notes = _fix_values([item for item in translated if isinstance(item, str)])
        notes += value_notes + _check_manifest_keys(checks, settings)
    config = _compose(launcher_overrides + passed, config_dir)
    if base is not None:
        _check_types(base, config, passed)
    _check_values(config)
    _check_dataset(config)
    run_env = dict(os.environ if env is None else env)
    plugins = [plugin.module for plugin in plugins_for(settings.mode, settings["DEVICE"], run_env)]
    notes += check_run(plugins, settings["VERL_DIR"], run_env) + _resume_note(settings, config)
    notes += _replaced_settings(settings, passed) + _ignored_settings(settings) + _dynamic_micro_batch(config, passed)
    return Preflight(launcher_overrides + passed, notes, config, time.monotonic() - started)


def build_typed_sections(config, verl_dir: Path | None = None) -> None:
    """verl's dataclasses for the engine, optim and checkpoint sections (DRY_RUN; imports verl, seconds)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if verl_dir and str(verl_dir) not in sys.path:
        sys.path.insert(0, str(verl_dir))
    from verl.utils.config import omega_conf_to_dataclass

    try:
        # The model section is left out: building it loads the model's config and tokenizer.
        for section in ("engine", "optim", "checkpoint"):
            omega_conf_to_dataclass(config[section])
    except (HydraException, OmegaConfBaseException, ValueError, TypeError, AssertionError) as exc:
        cause = exc.__cause__ if isinstance(exc, HydraException) and exc.__cause__ else exc
        raise LaunchError(f"verl's config does not accept the overrides: {' '.join(str(cause).split())}") from None


def memory_plan_for(settings: Settings, config):
    """(the plan for one device of this run, warnings) from the composed config; (None, []) for an unknown model."""
    from omegaconf import OmegaConf

    from sft.launch.memory_plan import free_device_memory, load_model_config, plan_memory

    model_config = load_model_config(settings["MODEL_NAME"])
    if model_config is None:
        return None, [f"no memory plan: {settings['MODEL_NAME']}'s config.json is not on this machine (a hub id "
                      "not in the local cache)."]

    def value(key, default=None):
        found = OmegaConf.select(config, key)
        return default if found is None else found

    dynamic = bool(value("data.use_dynamic_bsz"))
    tokens = value("data.max_token_len_per_gpu") if dynamic else value("data.micro_batch_size_per_gpu") * value(
        "data.max_length")
    lora = int(value("model.lora_rank", 0)) > 0
    model_dtype = str(value("engine.model_dtype", "fp32"))
    target_modules = value("model.target_modules", "all-linear")
    plan = plan_memory(
        model_config, mode="lora" if lora else "full", world_size=settings["NNODES"] * settings["NPROC_PER_NODE"],
        max_tokens_per_gpu=int(tokens), gradient_checkpointing=bool(value("model.enable_gradient_checkpointing")),
        param_dtype=model_dtype, compute_dtype=str(value("engine.mixed_precision.param_dtype", "bf16")),
        lora_rank=int(value("model.lora_rank", 0)) or 32,
        target_modules=target_modules if isinstance(target_modules, str) else list(target_modules),
        frozen_dtype=model_dtype, device=settings["DEVICE"], offload=bool(value("engine.offload_policy", False)),
        flash_attn_installed=settings["DEVICE"] == "cuda" and importlib.util.find_spec("flash_attn") is not None,
        frozen_upcast=False if os.environ.get("SFT_FROZEN_UPCAST") == "0" else None,  # None: where it is loaded
        vocab_parallel=False if os.environ.get("SFT_VOCAB_PARALLEL") == "0" else None,
        defer_gradient_sync=bool(value("engine.use_no_sync_for_gradient_accumulation", False)),
        reshard_after_forward=bool(value("engine.reshard_after_forward", True)))
    if settings["DEVICE"] == "cuda" and settings.sources.get("DEVICE", "").startswith("no GPU visible"):
        return plan, ["memory plan not compared with free memory: no GPU here (GPUs assumed)."]
    processes = settings["NPROC_PER_NODE"] if settings["DEVICE"] == "cpu" else 1
    return plan, plan.warnings(free_device_memory("cpu" if settings["DEVICE"] == "cpu" else "cuda"), processes)
