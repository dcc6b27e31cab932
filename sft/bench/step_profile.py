"""Profile one training step of verl's trainer with torch.profiler: where a step's time goes.

Usage (a benchmark aid, not for training runs of your own):
    VERL_USE_EXTERNAL_MODULES=sft.bench.step_profile SFT_PROFILE_STEP=2 SFT_PROFILE_DIR=DIR \\
        scripts/run_sft_training.sh ...

Rank 0 runs step SFT_PROFILE_STEP (counted from 1) under torch.profiler (CPU activities, input shapes)
and writes DIR/step_profile.txt: the step's wall time, the time of verl's and FSDP's named regions
(record_function ranges), a breakdown of its operators into groups (the LM head's matrix products,
recognised by the vocabulary dimension in their shapes; the other matrix products; attention;
log-probs; FSDP's gathers and copies; the optimizer; the rest) and the operators by self CPU time.
Nothing here changes what is computed.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from pathlib import Path

import torch
from verl.workers.engine_workers import TrainingWorker

_STEP = int(os.environ.get("SFT_PROFILE_STEP", "0") or 0)
_DIR = os.environ.get("SFT_PROFILE_DIR", "")

GROUPS = (  # (group, test on an operator's name and its input shapes); the first match wins
    ("LM head matmul (vocabulary projection)", lambda name, shapes, vocab: "mm" in name and vocab in shapes),
    ("log-probs (log_softmax/logsumexp/gather)",
     lambda name, shapes, vocab: any(k in name for k in ("logsumexp", "log_softmax", "gather", "_softmax"))),
    ("attention (sdpa)", lambda name, shapes, vocab: "scaled_dot_product" in name or "flash_attention" in name),
    ("other matmuls (layers)", lambda name, shapes, vocab: name in ("aten::mm", "aten::addmm", "aten::bmm",
                                                                    "aten::matmul", "aten::linear")),
    ("copies, casts and fills", lambda name, shapes, vocab: any(k in name for k in ("copy_", "_to_copy", "fill_",
                                                                                     "zero_", "cat", "clone"))),
    ("optimizer (AdamW foreach ops)", lambda name, shapes, vocab: "_foreach" in name),
)


def _vocab() -> str:
    return os.environ.get("SFT_PROFILE_VOCAB", "151936")


def _summary(profiler, seconds: float) -> str:
    events = profiler.key_averages(group_by_input_shape=True)
    vocab = _vocab()
    groups: dict[str, float] = defaultdict(float)
    for event in events:
        if not event.key.startswith("aten::"):
            continue
        shapes = str(event.input_shapes)
        group = next((g for g, test in GROUPS if test(event.key, shapes, vocab)), "other operators")
        groups[group] += event.self_cpu_time_total / 1e6
    regions = [(e.key, e.cpu_time_total / 1e6, e.count) for e in profiler.key_averages()
               if not e.key.startswith("aten::") and e.cpu_time_total > 0.01 * seconds * 1e6]
    lines = [f"step {_STEP}: {seconds:.2f} s wall, {torch.get_num_threads()} threads", "",
             "| operator group | self CPU s | share of step |", "|---|---:|---:|"]
    for group, total in sorted(groups.items(), key=lambda item: -item[1]):
        lines.append(f"| {group} | {total:.2f} | {total / seconds:.0%} |")
    lines += ["", "| named region (inclusive) | CPU s | calls |", "|---|---:|---:|"]
    lines += [f"| {key} | {total:.2f} | {count} |" for key, total, count in sorted(regions, key=lambda r: -r[1])[:25]]
    lines += ["", profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=30)]
    return "\n".join(lines)


_original_train_batch = TrainingWorker.train_batch
_calls = {"n": 0}


def _profiled_train_batch(self, *args, **kwargs):
    _calls["n"] += 1
    if _calls["n"] != _STEP or int(os.environ.get("RANK", "0")) != 0 or not _DIR:
        return _original_train_batch(self, *args, **kwargs)
    from torch.profiler import ProfilerActivity, profile

    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as profiler:
        output = _original_train_batch(self, *args, **kwargs)
    seconds = time.perf_counter() - start
    Path(_DIR).mkdir(parents=True, exist_ok=True)
    (Path(_DIR) / "step_profile.txt").write_text(_summary(profiler, seconds))
    return output


if _STEP:
    TrainingWorker.train_batch = _profiled_train_batch
