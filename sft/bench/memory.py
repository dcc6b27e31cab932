"""Memory and CPU time of a process tree, as the benchmarks measure them (imported; not a command).

    process_tree_rss(pid)              # resident bytes of pid and all its descendants now
    training_processes_rss(pid)        # that sum, and the largest single training process's
    process_tree_cpu_seconds(pid)      # CPU seconds (user + system) pid and its live descendants have used
"""

from __future__ import annotations

from dataclasses import dataclass

TRAINER_MODULE = "verl.trainer.sft_trainer"
"""The module torchrun runs in each training process (sft/launcher.py torchrun_args)."""

TORCHRUN_MODULE = "torch.distributed.run"
AGENT_MODULES = (TORCHRUN_MODULE, "sft.launch.agent")
"""What runs torchrun's agent, on its command line: torchrun itself (the TRL runs), or the
launcher's wrapper of it (`python -m sft.launch.agent`, sft/launch/agent.py)."""


def _tree(pid: int) -> list:
    """psutil processes of `pid` and all its descendants ([] once it has gone)."""
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def _rss(process) -> int:
    import psutil

    try:
        return process.memory_info().rss
    except psutil.Error:
        return 0  # exited between the listing and the reading


def process_tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds that process `pid` and its live descendants have used so far.

    The difference between two readings taken while the same processes run is the CPU time a stretch
    of training cost: on a machine shared with other work, tokens per CPU-second compare runs more
    steadily than tokens per wall-clock second.
    """
    import psutil

    total = 0.0
    for process in _tree(pid):
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue  # exited between the listing and the reading
        total += times.user + times.system
    return total


def process_tree_rss(pid: int) -> int:
    """Resident bytes of process `pid` and all its descendants now (0 once it has gone).

    Sampled while a command runs, the maximum is the peak the benchmarks report: the memory a
    machine needs for the whole run (workers and torchrun ranks included), not one process's.
    """
    return sum(_rss(process) for process in _tree(pid))


def _is_training_process(process, module: str) -> bool:
    """A child of torchrun's agent whose command line runs `module` (the agent's own names it too)."""
    import psutil

    try:
        command = " ".join(process.cmdline())
        parent = process.parent()
        parent_command = " ".join(parent.cmdline()) if parent is not None else ""
    except psutil.Error:
        return False
    return (module in command and not any(agent in command for agent in AGENT_MODULES)
            and any(agent in parent_command for agent in AGENT_MODULES))


@dataclass(frozen=True)
class TreeMemory:
    """One sample of a training run's resident memory, in bytes."""

    total: int
    """every process of the tree: the bash launcher (exec'd into torchrun), torchrun, its workers"""
    largest_training_process: int
    """the largest single training process (0 when none has started yet)"""
    training_processes: int
    """how many training processes were found"""


def training_processes_rss(pid: int, module: str = TRAINER_MODULE) -> TreeMemory:
    """The resident memory of the tree under `pid` now: its sum, and the largest training process's.

    Training processes are torchrun's children running `module` (verl.trainer.sft_trainer), one
    per rank: what one device of the launcher's memory plan is, on a CPU. Each one's own RSS is
    counted, without its descendants (the launcher sets data.num_workers=0 on a CPU, so it has
    none). The torchrun parent (a few hundred MiB: Python with torch imported) and the bash
    launcher, which execs into torchrun, count in the sum only.
    """
    processes = _tree(pid)
    sizes = {process.pid: _rss(process) for process in processes}
    workers = [sizes[process.pid] for process in processes if _is_training_process(process, module)]
    return TreeMemory(total=sum(sizes.values()), largest_training_process=max(workers, default=0),
                      training_processes=len(workers))
