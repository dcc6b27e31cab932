"""Peak host memory of FSDP2 gathering one frozen unit on CPU (the memory plan's all-gather factor).

Run (2 processes, gloo, Qwen2.5-7B's LM head shape by default):
    .venv/bin/python -m torch.distributed.run --nproc-per-node 2 -m sft.bench.fsdp_gather --gather bf16
    .venv/bin/python -m torch.distributed.run --nproc-per-node 2 -m sft.bench.fsdp_gather --gather fp32

A bf16 nn.Linear(cols, rows) without bias is sharded with fully_shard (frozen, as a LoRA base
is), then `unshard()` gathers it, in bf16 (no MixedPrecisionPolicy param_dtype: what
sft/verl_plugins/cpu/frozen_upcast.py asks for) or cast to fp32 (param_dtype=fp32: verl's CPU path).
A thread samples the process's resident memory every 0.5 ms. Rank 0 prints the unit's gathered
size, the peak above the sharded state while gathering, and what stays held once gathered.
sft/launch/memory_plan.py counts the difference (peak minus held) as the all-gather's transient.
"""

from __future__ import annotations

import argparse
import gc
import threading
import time

GIB = 1 << 30


def _rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096


def measure(rows: int, cols: int, gather: str) -> dict[str, float]:
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    with torch.device("meta"):
        unit = torch.nn.Linear(cols, rows, bias=False)
    unit.weight.requires_grad_(False)
    unit = unit.to(torch.bfloat16)
    param_dtype = torch.float32 if gather == "fp32" else None
    fully_shard(unit, mesh=mesh, mp_policy=MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32))
    unit.to_empty(device="cpu")
    with torch.no_grad():
        unit.weight.to_local().fill_(1)
    gc.collect()
    time.sleep(0.5)
    base = _rss()
    peak, stop = [base], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.0005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    unit.unshard()
    time.sleep(0.3)
    held = _rss() - base
    unit.reshard()
    stop.set()
    sampler.join()
    gathered = rows * cols * (4 if gather == "fp32" else 2)
    return {"gathered_gib": gathered / GIB, "peak_gib": (peak[0] - base) / GIB, "held_gib": held / GIB,
            "peak_x_unit": (peak[0] - base) / gathered, "transient_x_unit": (peak[0] - base - held) / gathered}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sft.bench.fsdp_gather", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=152064, help="output features (Qwen2.5-7B's vocabulary)")
    parser.add_argument("--cols", type=int, default=3584, help="input features (Qwen2.5-7B's hidden size)")
    parser.add_argument("--gather", choices=("bf16", "fp32"), default="bf16",
                        help="bf16: gathered as stored; fp32: cast while gathering")
    args = parser.parse_args(argv)
    import torch.distributed as dist

    dist.init_process_group("gloo")
    result = measure(args.rows, args.cols, args.gather)
    if dist.get_rank() == 0:
        print(f"{args.gather} gather of a {args.rows} x {args.cols} bf16 unit over {dist.get_world_size()} processes: "
              f"{result['gathered_gib']:.2f} GiB gathered; peak {result['peak_gib']:.2f} GiB above the shard "
              f"({result['peak_x_unit']:.2f}x the unit), held once gathered {result['held_gib']:.2f} GiB; "
              f"transient {result['transient_x_unit']:.2f}x the unit")
    dist.barrier()  # leave gloo together: a rank tearing it down under the other can abort at exit
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
