"""Memory of a process tree, as the benchmarks measure it (imported; not a command)."""

from __future__ import annotations


def process_tree_rss(pid: int) -> int:
    """Resident bytes of process `pid` and all its descendants now (0 once it has gone).

    Sampled while a command runs, the maximum is the peak the benchmarks report: the memory a
    machine needs for the whole run (workers and torchrun ranks included), not one process's.
    """
    import psutil

    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except psutil.Error:
            pass  # exited between the listing and the reading
    return total
