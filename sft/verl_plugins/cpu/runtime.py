"""CPU runtime for verl 0.9.1: lets verl's own `verl.trainer.sft_trainer` train on CPU processes.

Usage (the launchers do this when DEVICE resolves to cpu; nothing of it is loaded on a GPU):
    VERL_USE_EXTERNAL_MODULES=sft.verl_plugins.cpu.runtime PYTHONPATH=. \\
        torchrun --nproc_per_node 2 -m verl.trainer.sft_trainer engine.strategy=fsdp2 \\
        +model.override_config.attn_implementation=sdpa trainer.device=cpu ...

verl imports the modules named in VERL_USE_EXTERNAL_MODULES at the end of `import verl`,
before anything asks for the platform. verl 0.9.1 itself assumes an accelerator in four places
(its platform layer knows only CUDA and NPU, its process group always pairs gloo with an
accelerator backend, its engine registry lists FSDP for "cuda" and "npu" only, and its
log-probs fallback is written for GPU memory); importing this module closes each gap, with
verl's own extension points where it has them (1, 3) and through sft/verl_plugins/compat.py,
which checks what it replaces, where it does not (2, 4):

1. Platform: registers `PlatformCPU` under the name "cpu" in verl's PlatformRegistry and
   installs it with `set_platform()`, so `get_device_name()` is "cpu", the collective
   backend is gloo, memory queries answer without an accelerator, and
   `current_device()` is "cpu" (an integer would mean cuda:0 to `model.to(device=...)`).
2. Process group: verl's `initialize_global_process_group` builds the backend string
   "cpu:gloo,<device>:<backend>", which torch rejects when the device is itself "cpu". The
   trainer imports that function at call time, so replacing the module attribute with a
   gloo-only version takes effect for it.
3. Engines: verl registers its FSDP engines for "cuda" and "npu" only; the same classes are
   registered for "cpu" through `EngineRegistry.register`.
4. Log-probs: with no flash-attn, verl's `logprobs_from_logits` falls back to
   `logprobs_from_logits_v2`, which takes a separate `logsumexp` of every token's row of
   logits in a Python loop (to bound GPU memory) and stacks the results: thousands of tiny
   ops forward and backward per micro batch, a large share of a CPU step for a small
   model. It is replaced by the same arithmetic on blocks of rows (`_logprobs_by_blocks`),
   which tests/test_cpu_runtime.py checks against verl's own function. Forward + backward of
   one micro batch of 4,096 tokens in fp32 on the 2-core development machine (shared, load
   average about 5), `scripts/benchmark_training.py --logprobs`: 14.6 s -> 12.2 s (1.20x) with
   Qwen's 151,936-token vocabulary, 0.66 s -> 0.19 s (3.5x) with the demo's 512 tokens.

FSDP2 (`engine.strategy=fsdp2`) and sdpa attention are chosen by the launcher's Hydra
overrides, not here: FSDP1 wants an accelerator and flash-attn does not exist on CPU.
"""

from __future__ import annotations

import os
import types
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Optional

import torch

from verl.plugin.platform import PlatformBase, PlatformRegistry, set_platform

from sft.verl_plugins import compat


def _physical_memory() -> tuple[int, int]:
    """(available, total) bytes of host memory, read from sysconf (no extra dependency)."""
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        return os.sysconf("SC_AVPHYS_PAGES") * page, os.sysconf("SC_PHYS_PAGES") * page
    except (ValueError, OSError):
        return 0, 0


def _make_device_module() -> types.ModuleType:
    """A `torch.cuda`-shaped namespace for the CPU.

    verl calls `get_torch_device().<fn>` for memory statistics, caches, RNG state and
    streams. `torch.cpu` has streams and `current_device` but no memory or RNG functions.
    Memory counters answer 0 (the CPU allocator keeps no such statistics) and the RNG
    functions map to torch's global CPU generator, so checkpoints still save and restore it.
    """
    module = types.ModuleType("verl_sft_cpu_device")
    for name in ("Event", "Stream", "current_stream", "stream", "synchronize", "is_available"):
        setattr(module, name, getattr(torch.cpu, name))

    def _zero(*_args: Any, **_kwargs: Any) -> int:
        return 0

    def _noop(*_args: Any, **_kwargs: Any) -> None:
        return None

    module.current_device = lambda: "cpu"
    module.device_count = lambda: 1
    module.set_device = _noop
    module.get_device_name = lambda *_a, **_k: "CPU"
    module.get_device_capability = lambda *_a, **_k: (None, None)
    module.empty_cache = _noop
    module.ipc_collect = _noop
    module.reset_peak_memory_stats = _noop
    module.set_per_process_memory_fraction = _noop
    for name in ("memory_allocated", "memory_reserved", "max_memory_allocated", "max_memory_reserved"):
        setattr(module, name, _zero)
    module.mem_get_info = lambda *_a, **_k: _physical_memory()
    module.memory_stats = lambda *_a, **_k: {}
    module.manual_seed = torch.manual_seed
    module.manual_seed_all = torch.manual_seed
    module.get_rng_state = lambda *_a, **_k: torch.get_rng_state()
    module.set_rng_state = lambda state, *_a, **_k: torch.set_rng_state(state)
    return module


_CPU_DEVICE_MODULE = _make_device_module()


@PlatformRegistry.register(platform="cpu")
class PlatformCPU(PlatformBase):
    """verl platform for plain CPU processes communicating over gloo."""

    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self) -> types.ModuleType:
        return _CPU_DEVICE_MODULE

    def is_available(self) -> bool:
        return True

    def current_device(self) -> str:  # type: ignore[override]  # "cpu", never an index
        return "cpu"

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        return None

    def synchronize(self, device_index: Optional[int] = None) -> None:
        return None

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        return None

    def empty_cache(self) -> None:
        return None

    def get_device_capability(self, device_index: int = 0) -> tuple[Optional[int], Optional[int]]:
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        return "CUDA_VISIBLE_DEVICES"

    @contextmanager
    def nvtx_range(self, msg: str):
        yield

    def profiler_start(self) -> None:
        return None

    def profiler_stop(self) -> None:
        return None

    def ray_resource_name(self) -> str:
        return "CPU"

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self) -> Any:
        return None


def initialize_cpu_process_group(timeout_second: int = 36000) -> tuple[int, int, int]:
    """Stand-in for `verl.utils.distributed.initialize_global_process_group` on CPU: gloo only."""
    torch.distributed.init_process_group(
        backend="gloo",
        timeout=timedelta(seconds=timeout_second),
        init_method=os.environ.get("DIST_INIT_METHOD", None),
    )
    return int(os.environ["LOCAL_RANK"]), int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])


def _register_cpu_engines() -> None:
    compat.relies_on("verl/workers/engine/base.py:EngineRegistry.register", __name__)  # reads its _engines table
    from verl.workers.engine import EngineRegistry
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead, FSDPEngineWithValueHead

    registry = EngineRegistry._engines
    for model_type, engine_cls in (("language_model", FSDPEngineWithLMHead), ("value_model", FSDPEngineWithValueHead)):
        backends = [b for b in ("fsdp", "fsdp2") if "cpu" not in registry.get(model_type, {}).get(b, {})]
        if backends:
            EngineRegistry.register(model_type=model_type, backend=backends, device="cpu")(engine_cls)


_LOGSUMEXP_BLOCK_ELEMENTS = 1 << 26
"""Logits per logsumexp block (256 MiB of fp32): bounds memory like verl's row loop does."""


def _logprobs_by_blocks(logits: torch.Tensor, labels: torch.Tensor, _fallback=None) -> torch.Tensor:
    """`log_softmax(logits)[labels]` as verl's `logprobs_from_logits_v2`, on blocks of rows.

    verl computes float32 log-probs as `logit[label] - logsumexp(row)` one row at a time;
    this does the same per block of rows. Other dtypes keep verl's own path.
    """
    if logits.dtype not in (torch.float32, torch.float64):
        return _fallback(logits, labels)
    vocab = logits.shape[-1]
    rows = logits.reshape(-1, vocab)
    picked = rows.gather(-1, labels.reshape(-1, 1)).squeeze(-1)
    block = max(1, _LOGSUMEXP_BLOCK_ELEMENTS // vocab)
    logsumexp = torch.cat([torch.logsumexp(part, dim=-1) for part in rows.split(block)])
    return (picked - logsumexp).view(labels.shape)


def _vectorise_logprobs() -> None:
    import functools

    import verl.utils.torch_functional as torch_functional

    current = torch_functional.logprobs_from_logits_v2
    if getattr(current, "_verl_sft_cpu", False):
        return
    # logprobs_from_logits looks this name up at call time, so the engines pick it up.
    compat.relies_on("verl/utils/torch_functional.py:logprobs_from_logits", __name__)
    replacement = functools.partial(_logprobs_by_blocks, _fallback=current)
    replacement._verl_sft_cpu = True  # type: ignore[attr-defined]
    compat.replace("verl/utils/torch_functional.py:logprobs_from_logits_v2", replacement, __name__)


def install() -> None:
    """Make verl run on CPU in this process. Idempotent."""
    set_platform(PlatformCPU())
    # sft_trainer.run_sft imports initialize_global_process_group when it runs, so it gets this one.
    compat.relies_on("verl/trainer/sft_trainer.py:run_sft", __name__)
    compat.replace("verl/utils/distributed.py:initialize_global_process_group", initialize_cpu_process_group, __name__)
    _register_cpu_engines()
    _vectorise_logprobs()


install()
