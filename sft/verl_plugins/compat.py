"""The one gate through which verl-sft replaces an internal of verl (or torch): declared, checked, then made.

Usage:
    _original = compat.replace(TARGET, new)        # a plugin, at import: checked, then replaced
    with compat.replaced(TARGET, new): ...         # replaced for the duration of one call
    compat.check(TARGET)                           # a behaviour a plugin or the export relies on
    python -m sft.verl_plugins.compat [--verl-dir DIR]   # every check against the verl that would run

verl 0.9.1 is pinned (requirements.txt). verl-sft wraps verl's trainer, and some of its fixes and
CPU support can only be made by replacing a private function of verl. Each such function (and
each one whose behaviour a replacement relies on) is a row of INTERNALS, with the plugin that
uses it and a fingerprint of its source in verl 0.9.1: the sha256 of the parsed definition
(`ast.unparse`, docstring removed, so comments and formatting do not count and any change of the
code does). PLUGINS lists the modules loaded into verl's training processes, when each is loaded
(the launcher's `VERL_USE_EXTERNAL_MODULES` comes from `plugins_for`), which devices need it and
the setting that leaves it out.

Nothing is replaced unchecked: `replace` looks the target up in INTERNALS, compares the
fingerprint of the installed source and checks that the live attribute is that function (not a
subclass's override or a moved definition). The launcher runs the same checks before torchrun
starts, on the source files of the verl that will run (the installed package or VERL_DIR), without
importing it (`check_run`). On a mismatch the run stops with one line: what changed, which plugin
replaces it, and how to run without it (its setting, or verl 0.9.1). A newer verl whose
replaced functions are unchanged runs, with a note.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import functools
import hashlib
import importlib
import importlib.util
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as `python sft/verl_plugins/compat.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sft.common.errors import UserError

TESTED = {"verl": "0.9.1", "torch": "2.13.0"}
"""The versions the fingerprints were taken from (requirements.txt pins them; a test keeps them equal)."""

GPU_AND_CPU, CPU_ONLY = ("cuda", "cpu"), ("cpu",)


class VerlMismatch(UserError):
    """The verl (or torch) that would run differs from the one a plugin was written for."""


@dataclass(frozen=True)
class Plugin:
    module: str
    does: str  # one line: what it changes in verl's run
    devices: tuple[str, ...]  # where the launcher loads it
    modes: tuple[str, ...] = ("full", "lora")
    switch: str | None = None  # NAME=VALUE in the environment that leaves it out of a run
    needs: str | None = None  # an environment variable that must be set for it to be loaded

    @property
    def path(self) -> str:
        return self.module.replace(".", "/") + ".py"

    def loaded(self, mode: str, device: str, env: dict[str, str]) -> bool:
        return (mode in self.modes and device in self.devices and not switched_off(self.switch, env)
                and (self.needs is None or bool(env.get(self.needs))))

    def loaded_when(self) -> str:
        """When a run loads it, in words (sft/README.md's plugin table shows this; a test compares)."""
        where = {GPU_AND_CPU: "every run", CPU_ONLY: "CPU runs"}[self.devices]
        if self.modes == ("lora",):
            where = {"every run": "LoRA runs", "CPU runs": "CPU LoRA runs"}[where]
        if self.needs:
            where = f"{where} with {self.needs} set"
        return where + (f", unless {self.switch}" if self.switch else "")


@dataclass(frozen=True)
class Internal:
    target: str  # "verl/<file>.py:Name[.attr]": where the replaced attribute is looked up
    fingerprint: str  # sha256 (16 hex digits) of the source definition in the TESTED version
    used_by: str  # the module that replaces it or relies on it
    use: str  # "replaces" | "replaces while it runs" | "relies on" | "overrides"
    source: str | None = None  # "verl/<file>.py:Name" where it is defined, when not at `target`
    switch: str | None = None  # NAME=VALUE that makes this use unnecessary (a narrower switch than the plugin's)

    @property
    def package(self) -> str:
        return self.target.split("/", 1)[0]

    @property
    def defined_at(self) -> str:
        return self.source or self.target


PLUGINS: tuple[Plugin, ...] = (
    Plugin("sft.verl_plugins.checkpoint_fixes", "resume at an epoch boundary trains the next epoch (verl#7401); "
           "max_ckpt_to_keep also rotates the checkpoints of earlier starts; a damaged newest checkpoint is skipped; "
           "a full disk during a save is one line", GPU_AND_CPU),
    Plugin("sft.verl_plugins.stop_file", "creating the SFT_STOP_FILE file saves a checkpoint at the end of the step "
           "and exits 0 (the Slurm batch files use it before the time limit)", GPU_AND_CPU, needs="SFT_STOP_FILE"),
    Plugin("sft.verl_plugins.sharded_loading", "each rank reads only its shard of the model from the safetensors "
           "files (no full copy in any process)", GPU_AND_CPU, switch="SFT_SHARDED_LOADING=0"),
    Plugin("sft.verl_plugins.lora_precision", "LoRA: frozen base in LORA_BASE_DTYPE, adapters and their optimizer "
           "state in fp32; verl's input-grads hook removed", GPU_AND_CPU, modes=("lora",)),
    Plugin("sft.verl_plugins.cpu.runtime", "makes verl train on CPU processes: platform, gloo process group, "
           "engine registry, block-wise log-probs", CPU_ONLY),
    Plugin("sft.verl_plugins.cpu.lora_wrapping", "CPU LoRA's FSDP2 wrapping: the frozen base gathered in its own "
           "dtype and computed in fp32 block by block (cpu/frozen_upcast.py); with several processes the frozen "
           "embedding and LM head kept out of FSDP2 and computed vocabulary-parallel (cpu/vocab_parallel.py)",
           CPU_ONLY, modes=("lora",), switch="SFT_FROZEN_UPCAST=0"),
)
EXPORT = "sft.export"

_HANDLER = "verl/utils/checkpoint/checkpoint_handler.py:CheckpointHandler"
_ENGINE = "verl/workers/engine/fsdp/transformer_impl.py"
_FSDP_UTILS = "verl/utils/fsdp_utils.py"
_MERGER = "verl/model_merger/fsdp_model_merger.py:"
_TRAINER = "verl/trainer/sft_trainer.py:"
_CHECKPOINTS, _STOP, _SHARDED, _LORA, _CPU, _CPU_LORA = (plugin.module for plugin in PLUGINS)

INTERNALS: tuple[Internal, ...] = (
    Internal(f"{_HANDLER}._load_dataloader_state", "36c13693b995b3a2", _CHECKPOINTS, "replaces"),
    Internal(f"{_HANDLER}.load_checkpoint", "11ce82616cac1a89", _CHECKPOINTS, "replaces"),
    Internal(f"{_HANDLER}._find_latest_checkpoint", "e92ea6ecca4adf3b", _CHECKPOINTS, "replaces"),
    Internal(f"{_HANDLER}.save_checkpoint", "941b515e1c11a66a", _CHECKPOINTS, "replaces"),
    Internal(f"{_TRAINER}SFTTrainer.fit", "30250b6034984548", _CHECKPOINTS, "relies on"),
    Internal("verl/workers/engine_workers.py:TrainingWorker.step_profile", "1da4f7192fc66143", _STOP, "replaces",
             source="verl/utils/profiler/profile.py:DistProfilerExtension.step_profile"),
    Internal(f"{_HANDLER}.save_checkpoint", "941b515e1c11a66a", _STOP, "replaces"),
    Internal(f"{_TRAINER}SFTTrainer.fit", "30250b6034984548", _STOP, "relies on"),
    Internal(f"{_ENGINE}:FSDPEngine._build_module", "2517b8179937f7b7", _SHARDED, "replaces"),
    Internal(f"{_ENGINE}:fsdp2_load_full_state_dict", "342db72f3f2e8b7c", _SHARDED, "replaces",
             source=f"{_FSDP_UTILS}:fsdp2_load_full_state_dict"),
    Internal(f"{_ENGINE}:get_init_weight_context_manager", "e7fe99eec82f9c48", _SHARDED, "replaces while it runs",
             source=f"{_FSDP_UTILS}:get_init_weight_context_manager"),
    Internal(f"{_ENGINE}:FSDPEngine._build_fsdp_module", "20dba9e5aaabf098", _SHARDED, "relies on"),
    Internal(f"{_ENGINE}:FSDPEngine._build_lora_module", "d430d9acfef183cf", _LORA, "replaces"),
    Internal("verl/utils/distributed.py:initialize_global_process_group", "44d73356020aa6d3", _CPU, "replaces"),
    Internal(f"{_TRAINER}run_sft", "e9561b50809cfc2b", _CPU, "relies on"),
    Internal("verl/utils/torch_functional.py:logprobs_from_logits_v2", "3368329206a08f61", _CPU, "replaces"),
    Internal("verl/utils/torch_functional.py:logprobs_from_logits", "7df3ada42c2d07af", _CPU, "relies on"),
    Internal("verl/workers/engine/base.py:EngineRegistry.register", "b5d49e31484203ad", _CPU, "relies on"),
    Internal(f"{_ENGINE}:apply_fsdp2", "35aa54de0841b6dc", _CPU_LORA, "replaces", source=f"{_FSDP_UTILS}:apply_fsdp2"),
    Internal(f"{_FSDP_UTILS}:_select_fsdp2_wrap_targets", "fc0a593bafb6050f", _CPU_LORA, "replaces while it runs",
             switch="SFT_VOCAB_PARALLEL=0"),
    Internal("torch/nn/modules/linear.py:Linear.forward", "601ba6d5a64ddbf3", _CPU_LORA, "relies on"),
    Internal("torch/nn/modules/sparse.py:Embedding.forward", "2e860ca7a04a0c37", _CPU_LORA, "relies on"),
    Internal(f"{_MERGER}FSDPModelMerger._load_and_merge_state_dicts", "d373fb2fbe8e8814", EXPORT, "overrides"),
    Internal(f"{_MERGER}FSDPModelMerger._load_rank_zero_state_dict", "f40d0ce976ec0131", EXPORT, "overrides"),
    Internal(f"{_MERGER}FSDPModelMerger.merge_and_save", "bb4343222e607840", EXPORT, "relies on"),
    Internal(f"{_MERGER}FSDPModelMerger._merge_by_placement", "9568ba48521d1608", EXPORT, "relies on"),
    Internal(f"{_MERGER}merge_non_dtensor_shards", "5828a4d747c6499f", EXPORT, "relies on"),
)


def switched_off(switch: str | None, env: dict[str, str] | None = None) -> bool:
    """True when the environment holds `switch` (NAME=VALUE)."""
    if not switch:
        return False
    name, _, value = switch.partition("=")
    return (os.environ if env is None else env).get(name, "").strip() == value


def plugins_for(mode: str, device: str, env: dict[str, str]) -> list[Plugin]:
    """The plugins a run of `mode` on `device` loads, in loading order."""
    return [plugin for plugin in PLUGINS if plugin.loaded(mode, device, env)]


# ---------------------------------------------------------------------------------------------
# Fingerprints: from a source file, without importing it.


def _split(location: str) -> tuple[str, str]:
    path, _, qualname = location.partition(":")
    return path, qualname


def _definition(tree: ast.Module, qualname: str) -> ast.AST | None:
    """The def/class node of `qualname` ("f", "Class.method") at the top of a module, or None."""
    body, node = tree.body, None
    for part in qualname.split("."):
        node = next((n for n in body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                     and n.name == part), None)
        if node is None:
            return None
        body = node.body
    return node


def _parsed(path: str) -> ast.Module | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return _parse(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=64)
def _parse(path: str, _mtime: int, _size: int) -> ast.Module | None:
    """A source file parsed once per version of it (the launcher and a plugin each check several functions)."""
    try:
        return ast.parse(Path(path).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return None


def fingerprint_of(node: ast.AST) -> str:
    """sha256 (16 hex digits) of a definition as parsed, without its docstring."""
    node = ast.parse(ast.unparse(node)).body[0]  # a copy
    body = getattr(node, "body", None)
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
            and isinstance(body[0].value.value, str) and len(body) > 1:
        del body[0]
    return hashlib.sha256(ast.unparse(node).encode()).hexdigest()[:16]


def source_fingerprint(root: Path, location: str) -> str | None:
    """The fingerprint of `location` ("pkg/file.py:Qual.name") under the package root `root`, or None if absent."""
    path, qualname = _split(location)
    tree = _parsed(str(root / path.split("/", 1)[1]))
    node = None if tree is None else _definition(tree, qualname)
    return None if node is None else fingerprint_of(node)


def _owner_defines(root: Path, target: str, source: str) -> bool:
    """Whether `target`'s file or class defines the name itself (then `source` is no longer what runs)."""
    path, qualname = _split(target)
    tree = _parsed(str(root / path.split("/", 1)[1]))
    if tree is None:
        return True
    owner, _, name = qualname.rpartition(".")
    scope = _definition(tree, owner) if owner else tree
    if scope is None:
        return True
    for node in scope.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            return True
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return True
    if owner:
        return False  # inherited: the class does not define it
    source_module = _split(source)[0].removesuffix(".py").replace("/", ".")
    return not any(isinstance(node, ast.ImportFrom) and node.module == source_module
                   and any(alias.name == name and alias.asname is None for alias in node.names)
                   for node in ast.walk(tree))


# ---------------------------------------------------------------------------------------------
# Checks.


def package_root(package: str, verl_dir: Path | None = None) -> Path | None:
    """The directory of `package` that would be imported (VERL_DIR's verl/ for verl when set), without importing it."""
    if package == "verl" and verl_dir is not None:
        return Path(verl_dir) / "verl"
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def installed_version(package: str, root: Path | None) -> str | None:
    if root is None:
        return None
    if package == "verl":
        try:
            return (root / "version" / "version").read_text(encoding="utf-8").strip()
        except OSError:
            return None
    try:
        found = re.search(r"^__version__\s*=\s*['\"]([^'\"+]+)", (root / "version.py").read_text(encoding="utf-8"),
                          re.MULTILINE)
    except OSError:
        return None
    return found.group(1) if found else None  # without a local part such as +cpu


def _how_to_run_without(internal: Internal) -> str:
    plugin = next((p for p in PLUGINS if p.module == internal.used_by), None)
    switches = [s for s in (internal.switch, plugin.switch if plugin else None) if s]
    if plugin is not None and plugin.needs:
        switches.append(f"unset {plugin.needs}")
    pin = f"install {internal.package}=={TESTED[internal.package]} (the version requirements.txt pins)"
    return f"Run without it: {switches[0]}, or {pin}." if switches else f"To run, {pin}."


_PHRASES = {"replaces": "replaces it", "replaces while it runs": "replaces it during a call", "relies on": "relies on it",
            "overrides": "overrides it in a subclass"}


def problem(internal: Internal, root: Path | None, version: str | None) -> str | None:
    """One line when `internal` is not what its user was written for, else None."""
    package = internal.package
    where = f"{package} {version or '(unknown version)'} at {root}"
    _, qualname = _split(internal.defined_at)
    used = f"{internal.used_by.replace('.', '/')}.py {_PHRASES[internal.use]}"
    if root is None:
        return f"{package} is not installed, and {used}. Run scripts/setup_env.sh."
    found = source_fingerprint(root, internal.defined_at)
    file = _split(internal.defined_at)[0].split("/", 1)[1]
    if found is None:
        change = f"has no {qualname} in {file}"
    elif found != internal.fingerprint:
        change = f"changed {qualname} ({file})"
    elif internal.source and _owner_defines(root, internal.target, internal.source):
        change = f"no longer uses {qualname} at {_split(internal.target)[1]} ({_split(internal.target)[0]})"
    else:
        return None
    return (f"{where} {change}; {used} and was written for {package} {TESTED[package]}. "
            f"{_how_to_run_without(internal)}")


def internals_of(modules: list[str], env: dict[str, str] | None = None) -> list[Internal]:
    """The internals the `modules` use, leaving out uses their narrower switch turns off."""
    return [i for i in INTERNALS if i.used_by in modules and not switched_off(i.switch, env)]


def check_run(modules: list[str], verl_dir: Path | None = None, env: dict[str, str] | None = None) -> list[str]:
    """Check every internal the `modules` use against the source files that would run.

    Raises VerlMismatch with the first problem; returns notes (a newer version whose internals are unchanged).
    """
    notes, roots = [], {}
    for internal in internals_of(modules, env):
        package = internal.package
        if package not in roots:
            root = package_root(package, verl_dir)
            roots[package] = (root, installed_version(package, root))
        root, version = roots[package]
        line = problem(internal, root, version)
        if line:
            raise VerlMismatch(line)
    for package, (root, version) in roots.items():
        if version != TESTED[package]:
            notes.append(f"{package} {version or '(unknown version)'} at {root} is not the tested {TESTED[package]}; "
                         f"the {sum(i.package == package for i in internals_of(modules, env))} {package} functions "
                         "verl-sft replaces or relies on are unchanged (sft/verl_plugins/compat.py).")
    return notes


# ---------------------------------------------------------------------------------------------
# Replacing, in the process that runs verl.


def _declared(target: str, used_by: str) -> Internal:
    for internal in INTERNALS:
        if internal.target == target and internal.used_by == used_by:
            return internal
    raise LookupError(f"{used_by} uses {target}, which sft/verl_plugins/compat.py INTERNALS does not declare")


def _owner(target: str):
    path, qualname = _split(target)
    obj = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    parts = qualname.split(".")
    for part in parts[:-1]:
        obj = getattr(obj, part)
    return obj, parts[-1]


def _live_problem(internal: Internal, current) -> str | None:
    """A line when the live attribute is not the declared definition (checked when it is the package's own)."""
    while hasattr(current, "__wrapped__"):
        current = current.__wrapped__
    module = getattr(current, "__module__", "") or ""
    if not module.startswith(internal.package + "."):
        return None  # another hook wraps it (tests/hooks): the source check above still holds
    path, qualname = _split(internal.defined_at)
    if module == path.removesuffix(".py").replace("/", ".") and current.__qualname__ == qualname:
        return None
    return (f"{internal.package}'s {_split(internal.target)[1]} is now {module}.{current.__qualname__}, not the "
            f"{qualname} {internal.used_by.replace('.', '/')}.py was written for. {_how_to_run_without(internal)}")


def check(target: str, used_by: str):
    """Check `target` as `used_by` declared it; return (owner object, attribute name, current value)."""
    internal = _declared(target, used_by)
    root = package_root(internal.package)
    line = problem(internal, root, installed_version(internal.package, root))
    owner, name = _owner(target)
    current = getattr(owner, name)
    line = line or _live_problem(internal, current)
    if line:
        raise VerlMismatch(line)
    return owner, name, current


def _stop(exc: VerlMismatch):
    """In a training process: one line on stderr and exit (a traceback from every rank helps nobody)."""
    print(f"[verl-sft] error: {exc}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def replace(target: str, new, used_by: str):
    """Check `target`, then replace it with `new`; return what was there."""
    try:
        owner, name, current = check(target, used_by)
    except VerlMismatch as exc:
        _stop(exc)
    setattr(owner, name, new)
    return current


def checked(target: str, used_by: str):
    """Check `target` now (at import); return a context manager factory that replaces it for a while."""
    try:
        check(target, used_by)
    except VerlMismatch as exc:
        _stop(exc)

    @contextlib.contextmanager
    def replaced(new):
        owner, name = _owner(target)
        current = getattr(owner, name)
        setattr(owner, name, new)
        try:
            yield current
        finally:
            setattr(owner, name, current)

    return replaced


def relies_on(target: str, used_by: str) -> None:
    """Check at import that `target` is the one `used_by` was written for."""
    try:
        check(target, used_by)
    except VerlMismatch as exc:
        _stop(exc)


# ---------------------------------------------------------------------------------------------
# The tables sft/README.md shows (tests/test_compat.py keeps them equal), and the command.


def _devices(plugin_module: str) -> str:
    plugin = next((p for p in PLUGINS if p.module == plugin_module), None)
    return "export" if plugin is None else ("CPU only" if plugin.devices == CPU_ONLY else "GPU and CPU")


def plugin_table() -> str:
    """The plugins a run loads, as a Markdown table."""
    lines = ["| Plugin | Needed on | Loaded | What it changes | Replaces in verl |", "|---|---|---|---|---|"]
    for plugin in PLUGINS:
        replaced = [f"`{_split(i.target)[1]}`" for i in INTERNALS if i.used_by == plugin.module and i.use != "relies on"]
        lines.append(f"| `{plugin.path}` | {_devices(plugin.module)} | {plugin.loaded_when()} | {plugin.does} | "
                     f"{', '.join(replaced)} |")
    return "\n".join(lines)


def internals_table() -> str:
    """Every verl (and torch) internal replaced or relied on, as a Markdown table."""
    lines = ["| Internal (file: name) | Used by | How | Needed on |", "|---|---|---|---|"]
    for internal in INTERNALS:
        path, qualname = _split(internal.target)
        shown = f"`{path}: {qualname}`" + (f" (defined in `{_split(internal.source)[0]}`)" if internal.source else "")
        switch = f" (not with {internal.switch})" if internal.switch else ""
        lines.append(f"| {shown} | `{internal.used_by}` | {internal.use}{switch} | {_devices(internal.used_by)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sft.verl_plugins.compat",
                                     description="Check every verl (and torch) internal verl-sft replaces or relies on "
                                                 "against the installed packages (or a verl checkout).")
    parser.add_argument("--verl-dir", type=Path, default=None, help="a verl checkout (as VERL_DIR) instead of the "
                        "installed package")
    parser.add_argument("--tables", action="store_true", help="print the plugin and internals tables of sft/README.md")
    args = parser.parse_args(argv)
    if args.tables:
        print(plugin_table() + "\n\n" + internals_table())
        return 0
    bad = 0
    for internal in INTERNALS:
        root = package_root(internal.package, args.verl_dir)
        found = None if root is None else source_fingerprint(root, internal.defined_at)
        line = problem(internal, root, installed_version(internal.package, root))
        bad += line is not None
        print(f"{'ok     ' if line is None else 'CHANGED'} {internal.used_by:36} {internal.use:22} "
              f"{internal.target}  {internal.fingerprint} {found or '-'}")
    print(f"{len(INTERNALS) - bad} of {len(INTERNALS)} unchanged")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
