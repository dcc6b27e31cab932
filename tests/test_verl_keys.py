"""sft/launch/verl_keys.py against verl 0.9.1's real sft_trainer config: each table row, the issue's commands,
JSON values, "did you mean"."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from sft.launch.verl_keys import (
    DROP, MANIFEST, RENAME, REFUSE, ROWS_BY_OLD, ManifestCheck, VerlKeyError, compose_verl_config, composed_keys,
    did_you_mean, normalise_value, translate,
)

# For every row: (the old override's value, what verl 0.9.1's composed config must then hold at the new key).
ROW_CASES = {
    "model.partial_pretrain": ("/models/qwen", "/models/qwen"),
    "model.strategy": ("fsdp2", "fsdp2"),
    "model.fsdp_config.model_dtype": ("bf16", "bf16"),
    "model.fsdp_config.wrap_policy.min_num_params": ("1000", 1000),
    "model.fsdp_config.cpu_offload": ("true", True),
    "model.fsdp_config.offload_params": ("true", None),
    "optim.warmup_steps_ratio": ("0.05", 0.05),
    "optim.lr_scheduler": ("cosine", "cosine"),
    "use_remove_padding": ("false", False),
    "ulysses_sequence_parallel_size": ("2", 2),
    "trainer.resume_path": ("/ckpt/global_step_10", "/ckpt/global_step_10"),
    "trainer.checkpoint.save_contents": ("[model,optimizer,extra,hf_model]", ["model", "optimizer", "extra", "hf_model"]),
    "trainer.checkpoint.load_contents": ("[model]", ["model"]),
    "data.multiturn.messages_key": ("conversation", "conversation"),
    "data.multiturn.tools_key": ("functions", "functions"),
    "data.multiturn.enable_thinking_key": ("think", "think"),
    "data.chat_template": ("'{{ messages }}'", "{{ messages }}"),
    "data.multiturn.enable": ("true", None),
    "data.micro_batch_size": ("8", None),
    "data.prompt_dict_keys": ("[question]", None),
    "data.response_dict_keys": ("[answer]", None),
    "data.prompt_key": ("question", None),
    "data.response_key": ("answer", None),
    "optim.grad_clip": ("0.5", 0.5),
    "optim.name": ("adamw", "AdamW"),
    "optim.warmup_ratio": ("0.1", 0.1),
    "trainer.mixed_precision": ("bf16", "bf16"),
}

# The commands quoted in issue 14, as a shell splits them.
SEED_COMMANDS = {
    "optim.weight_decay=0.01 data.max_length=4096 trainer.save_freq=100 trainer.mixed_precision=bf16": {
        "optim.weight_decay": 0.01, "data.max_length": 4096, "trainer.save_freq": 100,
        "engine.mixed_precision": {"param_dtype": "bf16"},
    },
    "data.prompt_key=question data.response_key=answer": {},
    """data.apply_chat_template_kwargs='{\\"add_generation_prompt\\":false}'""": {
        "data.apply_chat_template_kwargs": {"add_generation_prompt": False},
    },
    "optim.name=adamw optim.lr=2e-5 optim.weight_decay=0.01 optim.betas='[0.9,0.999]'": {
        "optim.optimizer": "AdamW", "optim.lr": 2e-5, "optim.weight_decay": 0.01, "optim.betas": [0.9, 0.999],
    },
    "optim.lr_scheduler=cosine optim.warmup_ratio=0.1": {
        "optim.lr_scheduler_type": "cosine", "optim.lr_warmup_steps_ratio": 0.1,
    },
}


@pytest.fixture(scope="module")
def keys() -> frozenset[str]:
    return composed_keys()


def _composed(overrides: list) -> dict:
    """verl's config with the Hydra overrides, as plain values (interpolations resolved)."""
    config = compose_verl_config([o for o in overrides if isinstance(o, str)])
    return OmegaConf.to_container(config, resolve=True)


def _select(container: dict, key: str):
    for part in key.split("."):
        container = container[part]
    return container


def test_every_row_has_a_case():
    assert set(ROW_CASES) == set(ROWS_BY_OLD)


@pytest.mark.parametrize("old", sorted(ROW_CASES))
def test_row_translates_to_a_key_verl_composes(old, keys):
    row, (value, expected) = ROWS_BY_OLD[old], ROW_CASES[old]
    assert old not in keys  # else the row would never apply
    if row.kind == REFUSE:
        with pytest.raises(VerlKeyError, match=f"^{old} is not in verl 0.9.1's SFT config: "):
            translate([f"{old}={value}"], keys)
        return
    overrides, notes = translate([f"{old}={value}"], keys)
    assert len(notes) == 1 and notes[0].startswith(old)
    if row.kind == DROP:
        assert overrides == [] and "dropped" in notes[0]
    elif row.kind == MANIFEST:
        assert overrides == [ManifestCheck(old, old.split(".")[-1], value)]
    else:
        assert row.kind == RENAME
        assert notes[0].startswith(f"{old} is {row.new} in verl 0.9.1: passed ") and overrides[0] in notes[0]
        assert _select(_composed(overrides), row.new) == expected


def test_old_scheduler_wsd_is_refused(keys):
    with pytest.raises(VerlKeyError, match="constant and cosine only"):
        translate(["optim.lr_scheduler=wsd"], keys)


@pytest.mark.parametrize("value", ["bf16-mixed", "int8"])
def test_unknown_precision_is_refused(value, keys):
    with pytest.raises(VerlKeyError, match="bf16, fp16 or fp32"):
        translate([f"trainer.mixed_precision={value}"], keys)


def test_mixed_precision_after_the_launchers_own_dict(keys):
    launcher = "+engine.mixed_precision={param_dtype:fp32,reduce_dtype:fp32,buffer_dtype:fp32}"
    overrides, _ = translate([launcher, "trainer.mixed_precision=bfloat16"], keys)
    assert _composed(overrides)["engine"]["mixed_precision"] == {
        "param_dtype": "bf16", "reduce_dtype": "fp32", "buffer_dtype": "fp32"}


@pytest.mark.parametrize("command", list(SEED_COMMANDS))
def test_seed_command_composes(command, keys):
    overrides, notes = translate(shlex.split(command), keys)
    composed = _composed(overrides)
    for key, expected in SEED_COMMANDS[command].items():
        assert _select(composed, key) == expected, key
    assert len(notes) == len(set(notes))


def test_seed_commands_build_verl_typed_sections(keys):
    """All the commands together also pass verl 0.9.1's own dataclass checks (what the launcher's DRY_RUN does)."""
    from verl.utils.config import omega_conf_to_dataclass

    overrides, _ = translate([part for command in SEED_COMMANDS for part in shlex.split(command)], keys)
    config = compose_verl_config([o for o in overrides if isinstance(o, str)])
    optim = omega_conf_to_dataclass(config.optim)
    engine = omega_conf_to_dataclass(config.engine)
    assert (optim.optimizer, optim.lr_scheduler_type, optim.lr_warmup_steps_ratio) == ("AdamW", "cosine", 0.1)
    assert engine.mixed_precision == {"param_dtype": "bf16"}


def test_prompt_and_response_keys_become_manifest_checks(keys):
    overrides, notes = translate(["data.prompt_key=question", "data.response_key='answer'"], keys)
    assert overrides == [ManifestCheck("data.prompt_key", "prompt_key", "question"),
                         ManifestCheck("data.response_key", "response_key", "answer")]
    assert "prepare_data (--prompt-key)" in notes[0] and "prepare_data (--response-key)" in notes[1]


def test_same_name_keys_and_hydra_forms_are_left_alone(keys):
    overrides = ["optim.lr=1e-5", "data.max_length=2048", "+model.override_config.attn_implementation=sdpa",
                 "hydra.run.dir=/tmp/x", "~trainer.logger", "trainer.logger=[console]"]
    assert translate(overrides, keys) == (overrides, [])


def test_an_empty_dict_needs_no_plus(keys):
    assert translate(["data.apply_chat_template_kwargs={}"], keys) == (["data.apply_chat_template_kwargs={}"], [])
    assert _composed(["data.apply_chat_template_kwargs={}"])["data"]["apply_chat_template_kwargs"] == {}


def test_a_translated_key_given_with_plus_is_still_translated(keys):
    overrides, _ = translate(["+optim.warmup_ratio=0.2"], keys)
    assert overrides == ["optim.lr_warmup_steps_ratio=0.2"]


def test_unknown_key_fails_with_did_you_mean(keys):
    with pytest.raises(VerlKeyError) as error:
        translate(["optim.lr_sheduler_type=cosine"], keys)
    assert str(error.value) == ("optim.lr_sheduler_type is not a key of verl 0.9.1's SFT config "
                                "(sft_trainer_engine). Did you mean optim.lr_scheduler_type?")
    assert "+optim" not in str(error.value)  # never the advice to add a key nobody reads


@pytest.mark.parametrize("value", [
    '{"add_generation_prompt":false}',
    '{\\"add_generation_prompt\\":false}',
    """'{"add_generation_prompt":false}'""",
    """'{\\"add_generation_prompt\\":false}'""",
    '"{\\"add_generation_prompt\\":false}"',
    "{add_generation_prompt:false}",
])
def test_json_dict_values_become_hydra_dicts(value, keys):
    assert normalise_value(value) in ("{add_generation_prompt:false}", value)
    overrides, _ = translate([f"data.apply_chat_template_kwargs={value}"], keys)
    assert overrides == ["++data.apply_chat_template_kwargs={add_generation_prompt:false}"]
    assert _composed(overrides)["data"]["apply_chat_template_kwargs"] == {"add_generation_prompt": False}


def test_json_values_of_every_type():
    assert normalise_value('[0.9, 0.999]') == "[0.9,0.999]"
    assert normalise_value("'[0.9,0.999]'") == "[0.9,0.999]"
    assert normalise_value('{"a": null, "b": [1, "x y"], "c": {"d": true}, "e": "it\'s ${x}"}') == (
        "{a:null,b:[1,'x y'],c:{d:true},e:'it\\'s \\${x}'}")
    for unchanged in ("cosine", "2e-5", "[console,wandb]", "'{{ messages }}'", "{a:1}", ""):
        assert normalise_value(unchanged) == unchanged
    with pytest.raises(VerlKeyError, match="cannot be written"):
        normalise_value('{"a b": 1}')


def test_json_string_values_compose_verbatim():
    value = normalise_value('{"s": "a\'b\\\\c ${x}"}')
    assert _composed([f"++data.apply_chat_template_kwargs={value}"])["data"]["apply_chat_template_kwargs"] == {
        "s": "a'b\\c ${x}"}


@pytest.mark.parametrize("typo, expected", [
    ("optim.warmup_ratio", "optim.lr_warmup_steps_ratio"),
    ("optim.lr_sheduler_type", "optim.lr_scheduler_type"),
    ("trainer.save_frequency", "trainer.save_freq"),
    ("data.max_len", "data.max_length"),
    ("model.lora_rnak", "model.lora_rank"),
    ("trainer.total_epoch", "trainer.total_epochs"),
    ("max_length", "data.max_length"),
    ("+optim.weight_decy", "optim.weight_decay"),
])
def test_did_you_mean(typo, expected, keys):
    assert did_you_mean(typo, keys)[0] == expected


def test_did_you_mean_offers_nothing_for_nonsense(keys):
    assert did_you_mean("zzz.qqqq", keys) == []


def test_composed_keys_are_verl_091s(keys):
    assert {"optim.lr_scheduler_type", "engine.ulysses_sequence_parallel_size", "checkpoint.save_contents",
            "data.apply_chat_template_kwargs"} <= keys
    assert not keys & {"optim.warmup_steps_ratio", "data.prompt_key", "trainer.resume_path", "engine.mixed_precision"}
    assert composed_keys() is keys  # cached


def test_sft_readme_lists_every_row_of_the_table():
    """sft/README.md's "Commands written for older verl" table is RENAMED, row for row."""
    from sft.launch.verl_keys import DROP, MANIFEST, REFUSE, RENAME, RENAMED

    readme = (Path(__file__).resolve().parents[1] / "sft" / "README.md").read_text()
    kinds = {RENAME: None, DROP: "dropped, with a note", REFUSE: "refused, with the fix",
             MANIFEST: "checked against `manifest.json`"}
    listed = re.findall(r"^\| `([^`]+)` \| (.+?) \| (.+?) \|$", readme.split("### Commands written for older verl")[1]
                        .split("###")[0], re.MULTILINE)
    expected = [(row.old, kinds[row.kind] or f"`{row.new}`", row.versions) for row in RENAMED]
    assert listed == expected
