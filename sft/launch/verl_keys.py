"""Old verl SFT key names -> verl 0.9.1's, JSON values -> Hydra syntax, "did you mean" (imported; not a command).

Users bring commands written for verl's older `fsdp_sft_trainer` (verl 0.4-0.6) and for this
project's original design. verl 0.9.1's `verl.trainer.sft_trainer` composes the Hydra config
`sft_trainer_engine` (verl/trainer/sft_trainer.py, `@hydra.main(config_name="sft_trainer_engine")`),
where many of those keys have other names, and Hydra stops at the first with "Could not override".
`RENAMED` is the one table of those names; `translate` applies it to a list of overrides.

Where each old name comes from (all in https://github.com/volcengine/verl):
  verl/trainer/config/sft_trainer.yaml at tags v0.4.0, v0.4.1, v0.5.0, v0.6.0, v0.6.1, as read by
  verl/trainer/fsdp_sft_trainer.py at the same tags:
    model.partial_pretrain, model.strategy, model.fsdp_config.{model_dtype, wrap_policy.min_num_params,
    cpu_offload, offload_params}, optim.lr_scheduler, top-level use_remove_padding and
    ulysses_sequence_parallel_size, data.multiturn.{enable, messages_key, tools_key}, data.chat_template,
    data.prompt_key / response_key / prompt_dict_keys / response_dict_keys, data.micro_batch_size:
    v0.4.0-v0.6.1; data.multiturn.enable_thinking_key: v0.4.1-v0.6.1;
    optim.warmup_steps_ratio: v0.4.0-v0.6.0 (v0.6.1 already calls it lr_warmup_steps_ratio);
    trainer.resume_path: v0.4.0-v0.4.1, declared but read by no code (v0.5.0 has resume_mode + resume_from_path);
    trainer.checkpoint.{save_contents, load_contents}: v0.5.0-v0.6.1 (top-level `checkpoint` in 0.9.1).
  optim.grad_clip: the PPO actor's name (verl/trainer/config/actor/*.yaml); verl 0.9.1's
    FSDPOptimizerConfig still has it as a deprecated alias but its YAML does not, so Hydra refuses it.
  optim.name, optim.warmup_ratio, trainer.mixed_precision: this project's original design (the
    commands quoted in issue 14); no verl SFT config ever had them.

What verl 0.9.1 reads instead (its source, not its docs): the scheduler is `optim.lr_scheduler_type`,
"constant" or "cosine" only (FSDPOptimizerConfig.__post_init__; no "wsd"); warmup is
`optim.lr_warmup_steps_ratio` unless `optim.lr_warmup_steps` > 0 (FSDPEngine._build_lr_scheduler);
the optimizer class is `getattr(importlib.import_module(optim.optimizer_impl), optim.optimizer)`, so
its name is case-sensitive ("AdamW", not "adamw"); mixed precision is the dict
`engine.mixed_precision` (param_dtype/reduce_dtype/buffer_dtype, read by FSDPEngine._build_fsdp_module),
which the YAML does not declare (hence `++`); `engine.dtype` is declared but only Megatron reads it.

What the launcher must do with `translate`'s result:
  * pass the `str` entries of the returned overrides to Hydra, in order, in place of the user's;
  * print each note once (`[verl-sft] note: ...`);
  * handle each `ManifestCheck` entry (data.prompt_key / data.response_key, the single-turn field
    names of verl's old SFTDataset). verl 0.9.1 has no such keys: the fields were chosen when the
    data was prepared (prepare_data --prompt-key / --response-key, recorded in manifest.json under
    config.prompt_key / config.response_key). The launcher compares `check.value` with
    manifest["config"][check.field]: equal -> nothing to pass (a note may say so); different, or no
    manifest -> a UserError telling the user to run prepare_data again with --prompt-key/--response-key
    set to that value. Never pass a ManifestCheck to Hydra.
`translate` raises VerlKeyError for an unknown key (with "did you mean" from the composed config's
real keys) and for an old key whose value verl 0.9.1 cannot express.
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from sft.common.errors import UserError

VERL_CONFIG_NAME = "sft_trainer_engine"


class VerlKeyError(UserError):
    """An override verl 0.9.1's SFT config has no key for, or a value it cannot take."""


# --------------------------------------------------------------------------------------------
# Value transforms (old value -> verl 0.9.1 value; raise VerlKeyError where there is none).


def _precision(value: str) -> str:
    """trainer.mixed_precision's bf16/fp16/fp32 spellings -> verl's PrecisionType names."""
    names = {"bf16": "bf16", "bfloat16": "bf16", "fp16": "fp16", "float16": "fp16", "16": "fp16",
             "fp32": "fp32", "float32": "fp32", "32": "fp32", "no": "fp32"}
    try:
        return names[value.strip("'\"").lower()]
    except KeyError:
        raise VerlKeyError(
            f"trainer.mixed_precision={value}: verl 0.9.1 computes in bf16, fp16 or fp32 "
            "(engine.mixed_precision.param_dtype)."
        ) from None


# torch.optim class names by their lower-case spelling (verl 0.9.1 looks the name up with getattr).
_TORCH_OPTIMIZERS = {name.lower(): name for name in (
    "AdamW", "Adam", "SGD", "Adagrad", "Adadelta", "Adamax", "NAdam", "RAdam", "RMSprop", "Adafactor",
)}


def optimizer_class_name(value: str) -> str:
    name = value.strip("'\"")
    if name in _TORCH_OPTIMIZERS.values() or name[:1].isupper():
        return name
    if name.lower() in _TORCH_OPTIMIZERS:
        return _TORCH_OPTIMIZERS[name.lower()]
    raise VerlKeyError(
        f"optim.name={value}: verl 0.9.1 takes the optimizer's class name from optim.optimizer_impl "
        f"(torch.optim unless set), spelled exactly, e.g. optim.optimizer=AdamW."
    )


def _scheduler(value: str) -> str:
    name = value.strip("'\"").lower()
    if name in ("cosine", "constant"):
        return name
    raise VerlKeyError(
        f"optim.lr_scheduler={value}: verl 0.9.1's SFT trainer has the schedules constant and cosine "
        "only (optim.lr_scheduler_type); wsd is gone."
    )


# --------------------------------------------------------------------------------------------
# The table.

RENAME, DROP, REFUSE, MANIFEST = "rename", "drop", "refuse", "manifest"


@dataclass(frozen=True)
class KeyRow:
    """One old key: what verl 0.9.1 calls it (or why nothing does)."""

    old: str
    new: str | None  # None for DROP, REFUSE and MANIFEST
    versions: str  # where the old name is from (see the module docstring)
    note: str = ""  # for DROP/REFUSE/MANIFEST: the reason the user reads; for RENAME: an addition
    transform: Callable[[str], str] | None = None
    kind: str = RENAME


RENAMED: tuple[KeyRow, ...] = (
    # verl 0.4-0.6 sft_trainer.yaml
    KeyRow("model.partial_pretrain", "model.path", "verl v0.4.0-v0.6.1"),
    KeyRow("model.strategy", "engine.strategy", "verl v0.4.0-v0.6.1"),
    KeyRow("model.fsdp_config.model_dtype", "engine.model_dtype", "verl v0.4.0-v0.6.1"),
    KeyRow("model.fsdp_config.wrap_policy.min_num_params", "engine.wrap_policy.min_num_params", "verl v0.4.0-v0.6.1"),
    KeyRow("model.fsdp_config.cpu_offload", "engine.offload_policy", "verl v0.4.0-v0.6.1",
           "(FSDP2's CPUOffloadPolicy: parameters, gradients and optimizer state on the CPU)"),
    KeyRow("model.fsdp_config.offload_params", None, "verl v0.4.0-v0.6.1",
           "verl 0.9.1 has no separate switch for FSDP1's CPUOffload(offload_params): "
           "engine.offload_policy=true offloads parameters, gradients and optimizer state together",
           kind=REFUSE),
    KeyRow("optim.warmup_steps_ratio", "optim.lr_warmup_steps_ratio", "verl v0.4.0-v0.6.0"),
    KeyRow("optim.lr_scheduler", "optim.lr_scheduler_type", "verl v0.4.0-v0.6.1", transform=_scheduler),
    KeyRow("use_remove_padding", "model.use_remove_padding", "verl v0.4.0-v0.6.1"),
    KeyRow("ulysses_sequence_parallel_size", "engine.ulysses_sequence_parallel_size", "verl v0.4.0-v0.6.1"),
    KeyRow("trainer.resume_path", "trainer.resume_from_path", "verl v0.4.0-v0.4.1",
           "(verl 0.4's trainer declared but never read it; verl 0.9.1 resumes from this global_step_N "
           "directory under trainer.resume_mode=auto or resume_path)"),
    KeyRow("trainer.checkpoint.save_contents", "checkpoint.save_contents", "verl v0.5.0-v0.6.1"),
    KeyRow("trainer.checkpoint.load_contents", "checkpoint.load_contents", "verl v0.5.0-v0.6.1"),
    KeyRow("data.multiturn.messages_key", "data.messages_key", "verl v0.4.0-v0.6.1"),
    KeyRow("data.multiturn.tools_key", "data.tools_key", "verl v0.4.0-v0.6.1"),
    KeyRow("data.multiturn.enable_thinking_key", "data.enable_thinking_key", "verl v0.4.1-v0.6.1"),
    KeyRow("data.chat_template", "model.custom_chat_template", "verl v0.4.0-v0.6.1",
           "(a Jinja chat template that replaces the tokenizer's)"),
    KeyRow("data.multiturn.enable", None, "verl v0.4.0-v0.6.1",
           "every SFT dataset is a list of chat messages in verl 0.9.1 (prepare_data writes single-turn "
           "rows as messages too)", kind=DROP),
    KeyRow("data.micro_batch_size", None, "verl v0.4.0-v0.6.1",
           "it was deprecated in verl 0.4 and is gone; the per-GPU micro batch is data.micro_batch_size_per_gpu",
           kind=REFUSE),
    KeyRow("data.prompt_dict_keys", None, "verl v0.4.0-v0.6.1",
           "verl 0.9.1 reads chat messages only; prepare_data takes the prompt from a top-level field "
           "(--prompt-key)", kind=REFUSE),
    KeyRow("data.response_dict_keys", None, "verl v0.4.0-v0.6.1",
           "verl 0.9.1 reads chat messages only; prepare_data takes the response from a top-level field "
           "(--response-key)", kind=REFUSE),
    KeyRow("data.prompt_key", None, "verl v0.4.0-v0.6.1", "prompt_key", kind=MANIFEST),
    KeyRow("data.response_key", None, "verl v0.4.0-v0.6.1", "response_key", kind=MANIFEST),
    # Other verl configs
    KeyRow("optim.grad_clip", "optim.clip_grad", "verl actor configs; deprecated alias in verl 0.9.1"),
    # This project's original design (issue 14's commands)
    KeyRow("optim.name", "optim.optimizer", "verl-sft's original design", transform=optimizer_class_name),
    KeyRow("optim.warmup_ratio", "optim.lr_warmup_steps_ratio", "verl-sft's original design"),
    KeyRow("trainer.mixed_precision", "engine.mixed_precision.param_dtype", "verl-sft's original design",
           "(reduce and buffer dtypes stay fp32)", transform=_precision),
)

ROWS_BY_OLD = {row.old: row for row in RENAMED}


@dataclass(frozen=True)
class ManifestCheck:
    """data.prompt_key / data.response_key from a user: to compare with manifest.json, not for Hydra."""

    key: str  # the override's key, e.g. "data.prompt_key"
    field: str  # manifest["config"][field], e.g. "prompt_key"
    value: str  # what the user gave, quotes removed


# --------------------------------------------------------------------------------------------
# JSON values -> Hydra syntax.

_HYDRA_KEY = re.compile(r"[A-Za-z_][\w\-]*")


def _hydra_string(text: str) -> str:
    """Single-quoted for Hydra's parser: backslashes doubled only where Hydra reads them (before a
    quote or at the end), quotes escaped, `${` escaped so OmegaConf does not resolve it."""
    escaped = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, text)
    escaped = escaped.replace("'", "\\'").replace("${", "\\${")
    return f"'{escaped}'"


def _hydra_literal(value) -> str:
    if isinstance(value, dict):
        for key in value:
            if not _HYDRA_KEY.fullmatch(key):
                raise VerlKeyError(f"dictionary key {key!r} cannot be written in Hydra's override syntax.")
        return "{" + ",".join(f"{key}:{_hydra_literal(item)}" for key, item in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_hydra_literal(item) for item in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return _hydra_string(str(value))


def normalise_value(value: str) -> str:
    """A JSON object or array (bare, quoted, or with backslash-escaped quotes) in Hydra's syntax.

    '{"add_generation_prompt":false}', '{\\"add_generation_prompt\\":false}' and the same inside
    one pair of quotes all become {add_generation_prompt:false}; anything else is returned as is.
    """
    text = value.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        text = text[1:-1].strip()
    if not text.startswith(("{", "[")):
        return value
    for candidate in (text, text.replace('\\"', '"')):
        try:
            parsed = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(parsed, (dict, list)):
            return _hydra_literal(parsed)
    return value


# --------------------------------------------------------------------------------------------
# "Did you mean".


def _last(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _similarity(key: str, candidate: str) -> float:
    whole = difflib.SequenceMatcher(None, key, candidate).ratio()
    last, candidate_last = _last(key), _last(candidate)
    tail = difflib.SequenceMatcher(None, last, candidate_last).ratio()
    words = set(last.split("_"))
    if len(words) > 1 and words <= set(candidate_last.split("_")):
        tail = max(tail, 0.85)  # every word of warmup_ratio is in lr_warmup_steps_ratio
    same_section = key.split(".")[0] == candidate.split(".")[0] or "." not in key
    return max(whole, tail * (1.0 if same_section else 0.85))


# Keys verl 0.9.1 still declares but warns about (FSDPOptimizerConfig.__post_init__): never suggested.
DEPRECATED_KEYS = frozenset({"optim.warmup_style"})


def did_you_mean(key: str, known_keys: Iterable[str], limit: int = 3) -> list[str]:
    """The known keys closest to `key` by name (whole key and last segment), best first."""
    key = key.lstrip("+~")
    scored = []
    for candidate in known_keys:
        if _last(candidate) == "_target_" or candidate in DEPRECATED_KEYS:
            continue
        score = _similarity(key, candidate)
        if score >= 0.7:
            scored.append((-score, candidate.count("."), candidate))
    return [candidate for _, _, candidate in sorted(scored)[:limit]]


# --------------------------------------------------------------------------------------------
# Translation.


def _split(override: str) -> tuple[str, str, str | None]:
    """'++a.b=c' -> ('++', 'a.b', 'c'); a value of None when there is no '='."""
    prefix = re.match(r"\+\+|\+|~", override)
    prefix = prefix.group(0) if prefix else ""
    rest = override[len(prefix):]
    key, sep, value = rest.partition("=")
    return prefix, key, value if sep else None


def _is_open_dict(key: str, known_keys: set[str] | frozenset[str]) -> bool:
    """A key verl's YAML declares as `{}` (no sub-keys): Hydra adds new entries to it only with ++."""
    return key in known_keys and not any(k.startswith(key + ".") for k in known_keys)


def _translate_row(row: KeyRow, value: str, known_keys) -> tuple[str | ManifestCheck | None, str]:
    """(what to pass, the note) for one old key."""
    if row.kind == REFUSE:
        raise VerlKeyError(f"{row.old} is not in verl 0.9.1's SFT config: {row.note}.")
    if row.kind == DROP:
        return None, f"{row.old} is gone in verl 0.9.1: {row.note}; dropped {row.old}={value}."
    if row.kind == MANIFEST:
        check = ManifestCheck(row.old, row.note, value.strip("'\""))
        return check, (f"{row.old} is not a verl 0.9.1 key: the data's fields were chosen by prepare_data "
                       f"(--{row.note.replace('_', '-')}); checked against its manifest.")
    new_value = row.transform(value) if row.transform else value
    prefix = "" if row.new in known_keys else "++"
    passed = f"{row.new}={new_value}"
    note = f"{row.old} is {row.new} in verl 0.9.1: passed {prefix}{passed}"
    return prefix + passed, note + (f" {row.note}." if row.note else ".")


def _addition_notes(prefix: str, key: str, known_keys) -> list[str]:
    """`+key=...` of a key verl's YAML does not declare: where verl will, or will not, read it."""
    parent = key.rsplit(".", 1)[0] if "." in key else ""
    if parent not in known_keys:
        return [f"{prefix}{key} adds a key that verl 0.9.1's config does not have, under a section it does not have "
                f"either: verl's code will not read it unless it looks that name up. Check the name"
                f"{_suggestion(key, known_keys)}"]
    if f"{parent}._target_" in known_keys:
        return [f"{prefix}{key} adds a key that verl's YAML does not declare to {parent}, which verl builds as a "
                "dataclass: it works only if that class has the field (DRY_RUN=1 builds it and says)."]
    return []


def _suggestion(key: str, known_keys, question: bool = False) -> str:
    suggestions = did_you_mean(key, known_keys)
    if question:
        return f" Did you mean {' or '.join(suggestions)}?" if suggestions else ""
    return f" (closest keys verl has: {', '.join(suggestions)})." if suggestions else "."


def translate(overrides: list[str], known_keys: set[str] | frozenset[str]) -> tuple[list, list[str]]:
    """Old key names -> verl 0.9.1's, JSON values -> Hydra syntax; unknown keys refused.

    Returns (overrides for Hydra, with a ManifestCheck in place of data.prompt_key/response_key;
    notes, one per translated key). `known_keys` is `composed_keys()` (or the same set from a
    config composed with the launcher's own overrides). Keys verl has under the same name, `hydra.*`
    keys, deletions (`~key`) and additions (`+key=...`) of keys not in the table are left alone.
    """
    translated: list = []
    notes: list[str] = []
    for override in overrides:
        prefix, key, value = _split(override)
        if value is None or key.startswith("hydra.") or key == "hydra":
            translated.append(override)
            continue
        value = normalise_value(value)
        if prefix.startswith("+") and key not in known_keys and key not in ROWS_BY_OLD:
            notes += _addition_notes(prefix, key, known_keys)
        if key in known_keys or (prefix and key not in ROWS_BY_OLD):
            if not prefix and value.startswith("{") and value != "{}" and _is_open_dict(key, known_keys):
                prefix = "++"
                notes.append(f"{key} is an empty dictionary in verl 0.9.1's config: passed ++{key}={value}.")
            translated.append(f"{prefix}{key}={value}")
            continue
        row = ROWS_BY_OLD.get(key)
        if row is None:
            raise VerlKeyError(f"{key} is not a key of verl 0.9.1's SFT config ({VERL_CONFIG_NAME})."
                               f"{_suggestion(key, known_keys, question=True)}")
        passed, note = _translate_row(row, value, known_keys)
        if passed is not None:
            translated.append(passed)
        if note not in notes:
            notes.append(note)
    return translated, notes


# --------------------------------------------------------------------------------------------
# verl's real key set.


def verl_config_dir() -> Path:
    """verl's Hydra config directory, found without importing verl (that takes seconds)."""
    spec = importlib.util.find_spec("verl")
    if spec is None or spec.origin is None:
        raise VerlKeyError("verl is not installed in this Python environment.")
    return Path(spec.origin).parent / "trainer" / "config"


def compose_verl_config(overrides: list[str] = (), config_dir: Path | None = None):
    """verl 0.9.1's sft_trainer config composed with Hydra (no training, nothing instantiated)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(config_dir or verl_config_dir()), version_base=None):
        return compose(config_name=VERL_CONFIG_NAME, overrides=list(overrides))


def dotted_keys(node, prefix: str = "") -> list[str]:
    """Every key of an OmegaConf config, dotted, parents before children (values left unresolved)."""
    from omegaconf import DictConfig

    keys = []
    for name in node.keys():
        child = node._get_node(name)
        key = f"{prefix}{name}"
        keys.append(key)
        if isinstance(child, DictConfig) and not child._is_none() and not child._is_missing():
            keys += dotted_keys(child, key + ".")
    return keys


@functools.lru_cache(maxsize=4)
def composed_keys(config_dir: Path | None = None) -> frozenset[str]:
    """All dotted keys of verl's composed sft_trainer config (cached per config directory)."""
    return frozenset(dotted_keys(compose_verl_config(config_dir=config_dir)))
