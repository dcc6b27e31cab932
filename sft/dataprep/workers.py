"""The scan's worker processes: both ends of their queues (imported; not a command).

Usage (internal; prepare_data drives it):
    inputs = WorkerInputs(answers, chat, tokenizer)            # what every worker scans with
    results, spills = scan_tasks(tasks, settings, inputs, workers, progress)

With more than one worker, `scan_in_workers` starts the processes (forked where the platform
allows, so they inherit the loaded tokenizer and answers, which then arrive as the process
target's arguments without being pickled; spawned otherwise, which load the tokenizer again
from `WorkerInputs.tokenizer`), hands them tasks through a queue and collects their messages:
("progress", bytes), ("task", TaskResult), ("done", worker, SpillInfo), and ("config" or
"error", worker, message) when one fails ("oserror" with errno, file and message for a full disk or a
missing permission, re-raised here as the OSError it was). After a task reports a bad row under
--on-error fail, later tasks are skipped. A worker dies with its parent, even one killed outright
(SIGKILL): on Linux the kernel signals it (PR_SET_PDEATHSIG), elsewhere a thread of the worker watches
its parent's pid.
"""

from __future__ import annotations

import ctypes
import errno
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from sft.common.errors import UserError
from sft.dataprep.scan import ConfigurationError, Scanner, ScanSettings, ScanTask, TaskResult
from sft.dataprep.spill import SpillInfo


@dataclass
class WorkerInputs:
    """What the scan needs besides its settings: the reference answers (--answers) and the chat template
    (--tokenizer): `chat`, the parent's ChatFormat, reaches forked workers as it is; a spawned worker
    loads its own from `tokenizer` (path, ChatFormat keyword arguments)."""

    answers: dict[str, str] | None = None
    chat: Any = None
    tokenizer: tuple[str, dict] | None = None

    def load_chat(self):
        if self.chat is None and self.tokenizer:
            from sft.text.chat_format import ChatFormat

            path, options = self.tokenizer
            return ChatFormat.load(path, **options)
        return self.chat

    def for_spawned_worker(self) -> WorkerInputs:
        """The picklable part: a spawned worker loads the tokenizer itself."""
        return WorkerInputs(self.answers, None, self.tokenizer)


IN_PROCESS_BYTES = 64 << 20
"""Inputs below this are scanned in this process when one worker is to scan them; larger ones in a worker
process even then, so that what the scan leaves in the heap (Python's and Arrow's allocators keep freed
memory) is gone before the write pass: memory stays what JSON Lines split among workers needs."""


def scan_tasks(tasks: list[ScanTask], settings: ScanSettings, inputs: WorkerInputs, workers: int,
               progress, input_bytes: int = 0) -> tuple[list[TaskResult], list[SpillInfo]]:
    """Scan every task (in this process with one worker and a small input); results in task order, spills of
    every worker."""
    if workers > 1 or input_bytes >= IN_PROCESS_BYTES:  # the workers fork before this process starts any thread
        return scan_in_workers(tasks, settings, inputs, workers, progress)
    return scan_in_process(tasks, settings, inputs, progress)


def scan_in_process(tasks, settings: ScanSettings, inputs: WorkerInputs, progress):
    scanner = Scanner(settings, inputs.answers, inputs.chat)
    results = []
    for task in tasks:
        result = scanner.scan(task, progress.update)
        results.append(result)
        if result.first_bad is not None:
            break
    return results, [scanner.finish()]


def _start_workers(settings: ScanSettings, inputs: WorkerInputs, workers: int):
    """Start the processes; returns them with their task queue, result queue and stop mark."""
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    forked = context.get_start_method() == "fork"
    saved_parallelism = os.environ.get("TOKENIZERS_PARALLELISM")
    if forked:
        # one core per worker; set before forking, which is when tokenizers checks it
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        pa.array(["x"])  # pyarrow imports pandas on its first conversion: once here, not in every worker
    task_queue, result_queue = context.Queue(), context.Queue()
    stop_after = context.Value("q", 1 << 62)
    handed = inputs if forked else inputs.for_spawned_worker()
    processes = [
        context.Process(target=worker_main, daemon=True, name=f"prepare-data-{i}",
                        args=(i, settings, handed, task_queue, result_queue, stop_after, os.getpid()))
        for i in range(workers)
    ]
    try:
        for process in processes:
            process.start()
    finally:
        if saved_parallelism is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = saved_parallelism
    return processes, task_queue, result_queue, stop_after


def scan_in_workers(tasks, settings: ScanSettings, inputs: WorkerInputs, workers: int, progress):
    processes, task_queue, result_queue, stop_after = _start_workers(settings, inputs, workers)
    for task in tasks:
        task_queue.put(task)
    for _ in processes:
        task_queue.put(None)
    results, spills, done = [], [], 0
    try:
        while done < len(processes):
            try:
                message = result_queue.get(timeout=1.0)
            except queue.Empty:
                dead = [p for p in processes if p.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(f"worker {dead[0].name} died (exit code {dead[0].exitcode}); "
                                       "out of memory? try fewer --workers") from None
                continue
            kind = message[0]
            if kind == "progress":
                progress.update(message[1])
            elif kind == "task":
                result = message[1]
                results.append(result)
                if result.first_bad is not None:
                    with stop_after.get_lock():
                        stop_after.value = min(stop_after.value, result.index)
            elif kind == "done":
                spills.append(message[2])
                done += 1
            elif kind == "config":
                raise ConfigurationError(message[2])
            elif kind == "oserror":
                raise OSError(message[2], message[4], message[3])
            else:
                raise RuntimeError(f"worker {message[1]} failed:\n{message[2]}")
    finally:
        for process in processes:
            if process.is_alive() and done < len(processes):
                process.terminate()
            process.join(timeout=10)
    results.sort(key=lambda r: r.index)
    return results, spills


PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """End this process when `parent` ends, however it ends: the kernel's parent-death signal on Linux,
    and on every platform a thread that checks the parent's pid every second (a parent that died before
    the signal was set, or a platform without one)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    if os.getppid() != parent:
        os._exit(1)
    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def worker_main(worker_id: int, settings: ScanSettings, inputs: WorkerInputs, tasks, results, stop_after,
                parent: int | None = None) -> None:
    """Entry point of a worker process: scan tasks until a None arrives, then report the spill files."""
    import traceback

    if parent is not None:
        die_with_parent(parent)
    try:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core per worker process
        scanner = Scanner(settings, inputs.answers, inputs.load_chat(), worker_id)
        pending = 0

        def progress(nbytes: int) -> None:
            nonlocal pending
            pending += nbytes
            if pending >= 4 << 20:
                results.put(("progress", pending))
                pending = 0

        while True:
            task = tasks.get()
            if task is None:
                break
            if task.index > stop_after.value:
                results.put(("task", TaskResult(task.index, task.file_index, skipped=True)))
                continue
            result = scanner.scan(task, progress, stop=lambda: stop_after.value < task.index)
            results.put(("task", result))
        if pending:
            results.put(("progress", pending))
        results.put(("done", worker_id, scanner.finish()))
    except OSError as exc:  # a full disk, a missing permission: the parent says so in one line
        results.put(("oserror", worker_id, exc.errno or errno.EIO, exc.filename, exc.strerror or str(exc)))
    except BaseException as exc:  # report anything, the parent decides
        kind = "config" if isinstance(exc, UserError) else "error"
        results.put((kind, worker_id, str(exc) if kind == "config" else traceback.format_exc()))
