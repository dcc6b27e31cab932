"""Export a verl FSDP checkpoint as a Hugging Face model directory that transformers and vLLM load as is.

Usage:
    python -m sft.export checkpoints/my_run                      # latest step, to <step>/hf_model
    python -m sft.export checkpoints/my_run/global_step_300 -o outputs/my_model
    python -m sft.export checkpoints/my_run --dtype bfloat16 --force
    python sft/export.py --help

CHECKPOINT is either a step directory (`global_step_N/`, as verl writes it) or the training
output directory (`trainer.default_local_dir`), in which case the step named by its
`latest_checkpointed_iteration.txt` is exported.

What it writes (OUTPUT_DIR, default `<step dir>/hf_model`):
    config.json, generation_config.json, model.safetensors (or shards + index),
    tokenizer files and chat template, export_info.json (where the weights came from);
    run_record.json and data_manifest.json: how the model was made (the launches' settings,
    overrides, versions and git commit, and the manifest of the data it trained on; copied
    from the training output directory, sft/launch/run_record.py);
    lora_adapter/ (adapter_config.json, adapter_model.safetensors) for LoRA runs.

How: verl's own merger (`verl.model_merger`, FSDP backend) joins the per-rank shards and
splits off the LoRA adapter. Two of its behaviours are corrected here, both checked on verl
0.9.1 on CPU:
  * it casts every weight to bfloat16 while joining shards (and writes dtype bfloat16 in
    config.json) even when training kept float32 weights. This export keeps the weights'
    own dtype while joining and then casts once to `--dtype` (auto: the dtype the base
    model's config declares), so a float32 model exports bit-exact.
  * for LoRA runs (`lora_train_meta.json` in the step directory) it writes the adapter but
    leaves the LoRA deltas out of the full weights (upstream verl issue 4553). This export
    applies them and keeps the adapter beside the merged model. The values are those of PEFT's
    `merge_and_unload` on a float32 model, cast once to `--dtype`; computed one weight at a time
    (W + scaling * B @ A in float32, rounded once), so the model is never held in float32, which
    keeps the peak near the exported bytes (measured by scripts/benchmark_export.py; figures in
    SFT_FRAMEWORK_OVERVIEW.md). Adapters other than plain LoRA on linear layers are merged by PEFT
    itself.

The export is built in a temporary sibling directory and renamed into place at the end
(sft/common/files.py's publish_directory), so an interrupted export never leaves a
half-written model at OUTPUT_DIR. With --force it replaces only an earlier export (a directory
with export_info.json) or an empty directory, never one that holds the checkpoint or its run.

Loading the shards: verl writes them with torch.save, i.e. as Python pickles, and a pickle can
run code when it is loaded. The shards are read with torch.load(weights_only=True) and only the
classes a verl 0.9.1 FSDP2 shard holds allowed (SHARD_CLASSES: DTensor, its spec and placements,
the device mesh), so a crafted checkpoint stops the export instead of running code.

verl's merger is subclassed, not patched; the methods overridden and those relied on are checked
against verl's source by sft/verl_plugins/compat.py before anything is read.

Exit status: 0 exported; 2 a problem with the checkpoint, the output or the installed verl (one
line on stderr naming the path and the fix).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python sft/export.py`: make `import sft.x` work
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import contextlib
import json
import logging
import math
import os
import re
import shutil
import time
from dataclasses import dataclass, field

from sft.common.checkpoints import TRACKER_FILE, step_number
from sft.common.cli import HelpFormatter
from sft.common.dtypes import DTYPES, torch_dtype
from sft.common.errors import EXIT_OK, UserError, exit_on_user_error
from sft.common.files import publish_directory, scratch_directory, writing
from sft.common.model_files import ModelFilesError, check_tokenizer_dir, checked_tokenizer
from sft.launch.run_record import copy_into_export

LORA_META_FILE = "lora_train_meta.json"
HF_CONFIG_SUBDIR = "huggingface"
ADAPTER_SUBDIR = "lora_adapter"
EXPORT_INFO_FILE = "export_info.json"
DEFAULT_EXPORT_SUBDIR = "hf_model"
_SHARD_RE = re.compile(r"^model_world_size_(\d+)_rank_(\d+)\.pt$")


class ExportError(UserError):
    """A checkpoint cannot be exported; the message names the path and the fix."""


@dataclass
class CheckpointInfo:
    """What a verl FSDP step directory holds, as far as export needs to know."""

    step_dir: Path
    global_step: int | None
    world_size: int
    shard_files: list[Path]
    lora: dict | None = None
    """Contents of lora_train_meta.json (r, lora_alpha, task_type) for LoRA runs, else None."""
    config: dict = field(default_factory=dict)
    """huggingface/config.json of the trained model."""

    @property
    def is_lora(self) -> bool:
        return self.lora is not None


# --------------------------------------------------------------------------- checkpoint checks


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """The step directory to export: `path` itself, or the latest step of an output directory."""
    path = Path(path)
    if not path.exists():
        raise ExportError(
            f"checkpoint not found: {path}. Pass a step directory (OUTPUT_DIR/global_step_N) or the "
            "training output directory (trainer.default_local_dir)."
        )
    if not path.is_dir():
        raise ExportError(f"checkpoint is not a directory: {path}. Pass OUTPUT_DIR or OUTPUT_DIR/global_step_N.")
    if (
        step_number(path) is not None
        or (path / "fsdp_config.json").exists()
        or any(_SHARD_RE.match(p.name) for p in path.iterdir())
    ):
        return path  # a step directory; inspect_checkpoint() says what, if anything, is missing
    tracker = path / TRACKER_FILE
    steps = sorted((p for p in path.glob("global_step_*") if step_number(p) is not None), key=step_number)
    if not tracker.is_file():
        if steps:
            names = ", ".join(p.name for p in steps)
            raise ExportError(
                f"{tracker} is missing, so the latest complete checkpoint is unknown (found {names}; verl writes "
                f"the tracker only after a save completes). Pass one step directory explicitly, e.g. {steps[-1]}."
            )
        raise ExportError(
            f"no checkpoint in {path}: neither {TRACKER_FILE} nor global_step_N/ directories. "
            "Point at the directory training wrote (trainer.default_local_dir) or at one of its global_step_N/."
        )
    text = tracker.read_text().strip()
    try:
        step = int(text)
    except ValueError:
        raise ExportError(
            f"{tracker}:1: expected a step number, found {text!r}. Pass a step directory explicitly."
        ) from None
    step_dir = path / f"global_step_{step}"
    if not step_dir.is_dir():
        raise ExportError(
            f"{tracker} names step {step}, but {step_dir} does not exist (deleted or moved?). "
            "Pass an existing global_step_N directory explicitly."
        )
    return step_dir


def inspect_checkpoint(step_dir: str | os.PathLike) -> CheckpointInfo:
    """Check that a step directory holds a complete FSDP model checkpoint, and describe it."""
    step_dir = Path(step_dir)
    hint = "The save was probably interrupted: export an earlier global_step_N, or resume training to save again."
    fsdp_config_path = step_dir / "fsdp_config.json"
    shard_names = sorted(p.name for p in step_dir.iterdir() if _SHARD_RE.match(p.name))
    if not shard_names:
        raise ExportError(
            f"no FSDP model shards (model_world_size_W_rank_R.pt) in {step_dir}. Export needs a checkpoint "
            "saved with 'model' in checkpoint.save_contents; if this is not a verl step directory, pass one."
        )
    if not fsdp_config_path.is_file():
        raise ExportError(f"{fsdp_config_path} is missing. {hint}")
    try:
        fsdp_config = json.loads(fsdp_config_path.read_text())
        world_size = int(fsdp_config["world_size"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ExportError(f"{fsdp_config_path}: unreadable ({exc}); expected {{'world_size': N, ...}}. {hint}") from None

    expected = [step_dir / f"model_world_size_{world_size}_rank_{rank}.pt" for rank in range(world_size)]
    missing = [p.name for p in expected if not p.is_file() or p.stat().st_size == 0]
    if missing:
        raise ExportError(f"checkpoint {step_dir} is incomplete: missing or empty {', '.join(missing)}. {hint}")

    hf_config_path = step_dir / HF_CONFIG_SUBDIR / "config.json"
    if not hf_config_path.is_file():
        raise ExportError(
            f"{hf_config_path} is missing: verl saves the model config and tokenizer there with every "
            f"checkpoint. {hint}"
        )
    try:
        config = json.loads(hf_config_path.read_text())
    except json.JSONDecodeError as exc:
        raise ExportError(f"{hf_config_path}:{exc.lineno}: invalid JSON ({exc.msg}). {hint}") from None

    lora = None
    meta_path = step_dir / LORA_META_FILE
    if meta_path.exists():
        try:
            lora = json.loads(meta_path.read_text())
        except json.JSONDecodeError as exc:
            raise ExportError(f"{meta_path}:{exc.lineno}: invalid JSON ({exc.msg}). {hint}") from None
        if not isinstance(lora, dict) or int(lora.get("r", 0) or 0) <= 0 or "lora_alpha" not in lora:
            raise ExportError(
                f"{meta_path}: expected {{'r': >0, 'lora_alpha': ...}}, found {lora!r}; cannot merge the LoRA "
                "adapter without its rank and alpha."
            )
    return CheckpointInfo(
        step_dir=step_dir,
        global_step=step_number(step_dir),
        world_size=world_size,
        shard_files=expected,
        lora=lora,
        config=config,
    )


# --------------------------------------------------------------------------- merging


def _quiet_device_mesh_warning() -> None:
    # Unpickling DTensors outside a process group logs a torch.compile warning per shard;
    # the merger never compiles, so it is noise here.
    logging.getLogger("torch.distributed.device_mesh").setLevel(logging.ERROR)


def shard_classes() -> list:
    """The classes a verl 0.9.1 FSDP2 model shard pickles, beside tensors (found with
    torch.serialization.get_unsafe_globals_in_checkpoint on its checkpoints)."""
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor._dtensor_spec import DTensorSpec, ShardOrderEntry, TensorMeta
    from torch.distributed.tensor.placement_types import Replicate, Shard

    return [DTensor, DTensorSpec, TensorMeta, ShardOrderEntry, DeviceMesh, Shard, Replicate]


def _load_shard(path: Path) -> dict:
    import torch

    allowed = shard_classes()
    try:
        names = {f"{cls.__module__}.{cls.__qualname__}" for cls in allowed}
        unsafe = sorted(set(torch.serialization.get_unsafe_globals_in_checkpoint(path)) - names)
        if not unsafe:
            with torch.serialization.safe_globals(allowed):
                return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types for a truncated or corrupt file
        raise ExportError(
            f"cannot read {path}: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}. The file is corrupt or "
            "truncated; export an earlier global_step_N, or resume training to save again."
        ) from None
    raise ExportError(
        f"{path} holds more than model weights ({', '.join(unsafe[:3])}): loading it could run code, so it is not "
        "loaded. A verl FSDP shard holds only tensors and DTensors; export checkpoints from a source you trust."
    )


def _check_verl_merger() -> None:
    """verl's merger methods this export overrides or relies on are the ones it was written for (compat.py)."""
    from sft.verl_plugins.compat import EXPORT, INTERNALS, check

    for internal in INTERNALS:
        if internal.used_by == EXPORT:
            check(internal.target, EXPORT)


def _lora_without_meta(info: CheckpointInfo, state: dict) -> None:
    """A shard with LoRA weights needs lora_train_meta.json: without it verl's merger uses alpha 0 (the base model)."""
    if info.is_lora or not any(".lora_A." in key or ".lora_B." in key for key in state):
        return
    shape = next(tuple(value.shape) for key, value in state.items() if ".lora_A." in key)
    raise ExportError(
        f"{info.step_dir} holds LoRA adapter weights (rank {shape[0]}) but no {LORA_META_FILE}: without it verl's "
        f"merger merges them with lora_alpha 0 and exports the base model unchanged. Write {info.step_dir / LORA_META_FILE} "
        f'with the run\'s settings, e.g. {{"r": {shape[0]}, "lora_alpha": <LORA_ALPHA>, "task_type": "CAUSAL_LM"}} '
        "(LORA_RANK and LORA_ALPHA are in the run's run_record.json), then export again."
    )


def _make_merger(info: CheckpointInfo, target_dir: Path):
    """verl's FSDPModelMerger, joining shards in the dtype they were saved in (not bfloat16)."""
    _check_verl_merger()
    from tqdm import tqdm
    from verl.model_merger.base_model_merger import ModelMergerConfig
    from verl.model_merger.fsdp_model_merger import DTensor, FSDPModelMerger, merge_non_dtensor_shards

    class DtypePreservingFSDPMerger(FSDPModelMerger):
        """verl 0.9.1's `_load_and_merge_state_dicts` calls `.bfloat16()` on every shard.

        This override differs only in keeping the saved dtype; placement handling reuses the
        parent's `_merge_by_placement` and verl's `merge_non_dtensor_shards`. It also checks
        each joined tensor against the global shape the DTensor records.
        """

        _rank_zero = None  # loaded once: verl reads rank 0 for the mesh, then again to merge

        def _load_rank_zero_state_dict(self, world_size):
            self._rank_zero = _load_shard(info.shard_files[0])
            _lora_without_meta(info, self._rank_zero)
            return self._rank_zero

        def _load_and_merge_state_dicts(self, world_size, total_shards, mesh_shape, mesh_dim_names):
            if len(mesh_shape) != 1:
                raise NotImplementedError("FSDP + tensor parallel checkpoints are not supported (nor by verl)")
            paths = info.shard_files[:total_shards]
            shards = [self._rank_zero if rank == 0 and self._rank_zero is not None else _load_shard(path)
                      for rank, path in enumerate(tqdm(paths, desc=f"Loading {total_shards} FSDP shards"))]
            self._rank_zero = None
            merged = {}
            for key in list(shards[0].keys()):
                pieces = [shard.pop(key) for shard in shards]
                if isinstance(pieces[0], DTensor):
                    placements = tuple(pieces[0].placements)
                    if mesh_dim_names[0] in ("dp", "ddp"):
                        placements = placements[1:]
                    tensor = self._merge_by_placement([p._local_tensor for p in pieces], placements[0])
                    if tuple(tensor.shape) != tuple(pieces[0].shape):
                        raise ExportError(
                            f"{key}: joined shards have shape {tuple(tensor.shape)}, the checkpoint records "
                            f"{tuple(pieces[0].shape)}; {info.step_dir} looks inconsistent."
                        )
                    merged[key] = tensor
                else:
                    merged[key] = merge_non_dtensor_shards(key, pieces)
            return merged

    config = ModelMergerConfig(
        operation="merge",
        backend="fsdp",
        target_dir=str(target_dir),
        local_dir=str(info.step_dir),
        hf_model_config_path=str(info.step_dir / HF_CONFIG_SUBDIR),
    )
    return DtypePreservingFSDPMerger(config)


def _resolve_dtype(dtype: str, info: CheckpointInfo):
    """`--dtype` as a torch dtype; auto = the dtype the trained model's config declares."""
    if dtype not in DTYPES:
        raise ExportError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    return torch_dtype(dtype, info.config)


def _apply_lora(model, adapter_dir: Path):
    """Load verl's adapter onto `model` with PEFT, check every tensor arrived, and merge it in."""
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file

    adapter_file = adapter_dir / "adapter_model.safetensors"
    if not adapter_file.is_file():
        raise ExportError(
            f"the checkpoint has {LORA_META_FILE} but verl's merger wrote no LoRA adapter ({adapter_file} "
            "missing): its model shards hold no lora_A/lora_B weights."
        )
    peft_model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
    params = dict(peft_model.named_parameters())
    adapter = load_file(str(adapter_file))
    for key, value in adapter.items():
        # PEFT stores "...q_proj.lora_A.weight"; the live parameter is "...q_proj.lora_A.default.weight".
        live_key = re.sub(r"\.(lora_[AB])\.weight$", r".\1.default.weight", key)
        live = params.get(live_key)
        if live is None or not torch.equal(live.detach().to(value.dtype), value):
            raise ExportError(
                f"PEFT did not load adapter tensor {key} from {adapter_file} as saved; the adapter does not fit "
                "the base model in this checkpoint."
            )
    return peft_model.merge_and_unload()


def _dir_size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def _join_shards(info: CheckpointInfo, staging: Path) -> None:
    """verl's merger: the FSDP shards joined (in their saved dtype) into a model directory at `staging`."""
    _quiet_device_mesh_warning()
    merger = _make_merger(info, staging)
    # verl's merger prints its progress on stdout; keep stdout for our own summary.
    with contextlib.redirect_stdout(sys.stderr):
        merger.merge_and_save()
    merger.cleanup()


_LORA_KEY_RE = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<part>[AB])\.weight$")
# adapter_config.json fields under which PEFT's merge is more than W + scaling * B @ A.
_LORA_MERGE_CHANGERS = ("use_dora", "fan_in_fan_out", "lora_bias", "modules_to_save", "rank_pattern",
                        "alpha_pattern", "layer_replication", "trainable_token_indices", "target_parameters",
                        "use_qalora", "use_bdlora", "arrow_config", "kasa_config", "monteclora_config")


def _staging_weight_files(staging: Path) -> dict[str, Path]:
    """{weight name: the staging safetensors file holding it}."""
    from safetensors import safe_open

    index = staging / "model.safetensors.index.json"
    if index.is_file():
        return {name: staging / file for name, file in json.loads(index.read_text())["weight_map"].items()}
    single = staging / "model.safetensors"
    if not single.is_file():
        return {}
    with safe_open(str(single), "pt") as handle:
        return {name: single for name in handle.keys()}


def _read_weight(path: Path, name: str):
    """One tensor of a safetensors file, in its saved dtype."""
    from safetensors import safe_open

    # A handle per tensor: the pages a handle has mapped stay resident until it closes, so one
    # handle over the whole loop would hold the whole staging model in memory.
    with safe_open(str(path), "pt") as handle:
        return handle.get_tensor(name)


def _lora_merge_plan(model, adapter_dir: Path, adapter: dict, weight_files: dict) -> tuple[dict, float] | None:
    """({weight name: (lora_A key, lora_B key)}, scaling) for a plain LoRA adapter on linear layers, as verl
    writes them; None for anything else (DoRA, LoRA biases, embeddings, ...), which PEFT then merges."""
    import torch

    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    if config.get("peft_type", "LORA") != "LORA" or any(config.get(key) for key in _LORA_MERGE_CHANGERS):
        return None
    rank, alpha = config.get("r"), config.get("lora_alpha")
    if not isinstance(rank, int) or rank <= 0 or not isinstance(alpha, (int, float)):
        return None
    parts: dict[str, dict[str, str]] = {}
    for key in adapter:
        match = _LORA_KEY_RE.match(key)
        if match is None:
            return None
        parts.setdefault(match["module"], {})[match["part"]] = key
    plan = {}
    for module_name, keys in parts.items():
        if set(keys) != {"A", "B"}:
            return None
        lora_a, lora_b = adapter[keys["A"]], adapter[keys["B"]]
        try:
            module = model.get_submodule(module_name)
        except AttributeError:
            return None
        weight_name = f"{module_name}.weight"
        if (
            type(module) is not torch.nn.Linear
            or weight_name not in weight_files
            or lora_a.dim() != 2 or lora_b.dim() != 2 or lora_a.shape[0] != rank or lora_b.shape[1] != rank
            or tuple(module.weight.shape) != (lora_b.shape[0], lora_a.shape[1])
        ):
            return None
        plan[weight_name] = (module, keys["A"], keys["B"])
    scaling = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    return plan, scaling


def _merge_lora_by_tensor(model, staging: Path) -> bool:
    """Merge the adapter in `staging` into `model` one weight at a time; False where PEFT must do it.

    Each merged weight is computed as PEFT's merge_and_unload computes it on a float32 model,
    W + (B @ A) * scaling in float32 from the weight as saved, and rounded once into the model's
    dtype, so the whole model never exists in float32.
    """
    import torch
    from safetensors.torch import load_file
    from tqdm import tqdm

    adapter_dir = staging / ADAPTER_SUBDIR
    adapter_file = adapter_dir / "adapter_model.safetensors"
    if not adapter_file.is_file() or not (adapter_dir / "adapter_config.json").is_file():
        return False  # PEFT's path names what is missing
    adapter = load_file(str(adapter_file))
    weight_files = _staging_weight_files(staging)
    found = _lora_merge_plan(model, adapter_dir, adapter, weight_files)
    if found is None:
        return False
    plan, scaling = found
    with torch.no_grad():
        for weight_name, (module, key_a, key_b) in tqdm(plan.items(), desc="Merging LoRA weights"):
            weight = _read_weight(weight_files[weight_name], weight_name).to(torch.float32)
            weight += (adapter[key_b].to(torch.float32) @ adapter[key_a].to(torch.float32)) * scaling
            module.weight.copy_(weight)
    return True


def _load_merged_model(info: CheckpointInfo, staging: Path, target_dtype):
    """The joined weights as a transformers model (LoRA merged in), cast to `target_dtype`.

    The same values as loading in float32, merging with PEFT and casting once, without the
    float32 copy of the model: weights are loaded straight into `target_dtype` (one rounding),
    and each LoRA-adapted weight is recomputed in float32 from the staging file and rounded once.
    """
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(staging), dtype=target_dtype)
    if info.is_lora and not _merge_lora_by_tensor(model, staging):
        # Not plain LoRA on linear layers: PEFT merges it, on a float32 copy of the model.
        del model
        model = AutoModelForCausalLM.from_pretrained(str(staging), dtype=torch.float32)
        model = _apply_lora(model, staging / ADAPTER_SUBDIR)
    model = model.to(target_dtype)
    model.config.dtype = target_dtype
    return model


def _export_info(info: CheckpointInfo, target_dtype) -> dict:
    """export_info.json: where the weights came from and how they were exported."""
    export_info = {
        "source_checkpoint": str(info.step_dir.resolve()),
        "global_step": info.global_step,
        "fsdp_world_size": info.world_size,
        "lora": info.lora,
        "lora_merged": info.is_lora,
        "dtype": str(target_dtype)[6:],
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    with contextlib.suppress(ImportError):
        import verl

        export_info["verl_version"] = verl.__version__
    return export_info


def _write_model(model, info: CheckpointInfo, staging: Path, final: Path, target_dtype, log=print) -> None:
    """The Hugging Face model directory `final`: weights, tokenizer, adapter, the run record and data
    manifest (how the model was made), export_info.json; validated."""
    from transformers import AutoTokenizer
    from verl.model_merger.output_validation import validate_hf_model_output

    model.save_pretrained(str(final), safe_serialization=True)
    tokenizer = checked_tokenizer(AutoTokenizer.from_pretrained(str(staging)), str(staging), ExportError)
    tokenizer.save_pretrained(str(final))
    if info.is_lora:
        shutil.copytree(staging / ADAPTER_SUBDIR, final / ADAPTER_SUBDIR)
    export_info = _export_info(info, target_dtype)
    export_info["provenance"] = copy_into_export(info.step_dir, final)
    if export_info["provenance"].get("note"):
        log(f"note: {export_info['provenance']['note']}")
    (final / EXPORT_INFO_FILE).write_text(json.dumps(export_info, indent=2) + "\n")
    validate_hf_model_output(final)


def export_checkpoint(
    checkpoint: str | os.PathLike,
    output_dir: str | os.PathLike | None = None,
    dtype: str = "auto",
    force: bool = False,
    log=print,
) -> Path:
    """Export `checkpoint` (a step directory or a training output directory) and return the model directory.

    `output_dir` defaults to `<step dir>/hf_model`. An existing `output_dir` is replaced only
    with `force=True`, and only once the new export is complete.
    """
    started = time.time()
    step_dir = resolve_checkpoint(checkpoint)
    info = inspect_checkpoint(step_dir)
    output_dir = Path(output_dir) if output_dir is not None else step_dir / DEFAULT_EXPORT_SUBDIR
    _check_output_dir(output_dir, info, force)
    try:
        check_tokenizer_dir(step_dir / HF_CONFIG_SUBDIR)
    except ModelFilesError as exc:
        raise ExportError(f"the checkpoint's tokenizer: {exc}") from None
    target_dtype = _resolve_dtype(dtype, info)
    kind = f"LoRA r={info.lora['r']} alpha={info.lora['lora_alpha']}" if info.is_lora else "full fine-tune"
    log(f"exporting {step_dir} ({kind}, {info.world_size} FSDP shards) -> {output_dir} [{str(target_dtype)[6:]}]")

    # Built in a scratch directory beside output_dir, then swapped in whole (publish_directory).
    with writing(f"the export to {output_dir}", "Free some space there (the export needs about twice the model's "
                 "size while it is built), or choose another -o."):
        with scratch_directory(output_dir) as tmp_dir:
            staging, final = tmp_dir / "verl_merge", tmp_dir / "model"
            log("[1/3] joining FSDP shards with verl.model_merger")
            _join_shards(info, staging)
            log("[2/3] " + ("merging the LoRA adapter into the weights" if info.is_lora else "loading merged weights"))
            model = _load_merged_model(info, staging, target_dtype)
            log(f"[3/3] writing the Hugging Face model ({str(target_dtype)[6:]} safetensors, tokenizer, generation "
                "config)")
            _write_model(model, info, staging, final, target_dtype, log)
            publish_directory(final, output_dir)
    log(
        f"exported global_step_{info.global_step} to {output_dir} ({_dir_size_mb(output_dir):.1f} MiB"
        + (f", LoRA merged, adapter in {ADAPTER_SUBDIR}/" if info.is_lora else "")
        + f") in {time.time() - started:.1f}s"
    )
    return output_dir


def _check_output_dir(output_dir: Path, info: CheckpointInfo, force: bool) -> None:
    """Refuse an output that would replace the checkpoint, its run, or anything that is not an earlier export."""
    target = output_dir.resolve()
    step_dir = info.step_dir.resolve()
    run_dir = step_dir.parent if (step_dir.parent / TRACKER_FILE).exists() or step_number(step_dir) is not None \
        else step_dir
    for protected, what in ((run_dir, "the training run"), (step_dir, "the checkpoint")):
        if protected.is_relative_to(target):
            raise ExportError(f"-o {output_dir} holds {what} {protected}: the export replaces its output directory "
                              "whole, which would delete the checkpoints. Choose an output outside it, e.g. "
                              f"{step_dir / DEFAULT_EXPORT_SUBDIR} (the default) or outputs/{run_dir.name}-export.")
    if not output_dir.exists():
        return
    if not force:
        raise ExportError(f"{output_dir} already exists. Pass --force (force=True) to replace it, or choose another "
                          "-o.")
    if not output_dir.is_dir():
        raise ExportError(f"{output_dir} is a file; --force replaces only an earlier export. Choose another -o.")
    if not (output_dir / EXPORT_INFO_FILE).is_file() and any(output_dir.iterdir()):
        raise ExportError(f"{output_dir} is not an earlier export (no {EXPORT_INFO_FILE}), and --force replaces only "
                          "an export or an empty directory: everything in it would be deleted. Choose another -o.")


# --------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m sft.export",
        description="Export a verl FSDP checkpoint (full or LoRA) as a Hugging Face model directory.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "checkpoint",
        help="a step directory (OUTPUT_DIR/global_step_N) or the training output directory "
        f"(its {TRACKER_FILE} picks the latest step)",
    )
    parser.add_argument(
        "--output-dir", "-o", default=None,
        help=f"where to write the model (default: <step dir>/{DEFAULT_EXPORT_SUBDIR})",
    )
    parser.add_argument(
        "--dtype", choices=DTYPES, default="auto",
        help="weight dtype of the export; auto = the dtype the base model's config declares",
    )
    parser.add_argument("--force", action="store_true", help="replace an existing output directory")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Exit status: EXIT_CODES in sft/common/errors.py (0 exported; 2 refused, one line on stderr)."""
    args = parse_args(argv)
    return exit_on_user_error(
        lambda: export_checkpoint(args.checkpoint, args.output_dir, dtype=args.dtype, force=args.force) and EXIT_OK,
        "error")


if __name__ == "__main__":
    sys.exit(main())
