"""The entry of every training process the launcher's torchrun starts: it dies with torchrun, then runs verl.

Usage (in the launcher's command; torchrun passes the module to run and the Hydra overrides):
    SFT_AGENT_PID=<pid> python -m torch.distributed.run ... -m sft.launch.worker verl.trainer.sft_trainer k=v ...

torchrun starts each worker in a session of its own (torch.distributed.elastic's
SubprocessHandler: Popen(start_new_session=True)), so that it can signal the worker's process
group on shutdown. Nothing then ends the workers when torchrun itself dies without that shutdown
(kill -9 of the launcher, which exec'd torchrun and keeps its pid; the OOM killer; a node agent):
they keep training and writing checkpoints into OUTPUT_DIR, and hold the GPUs. Here each worker,
before importing anything heavy, asks Linux to SIGKILL it when its parent dies (prctl
PR_SET_PDEATHSIG), then checks that its parent is still torchrun (SFT_AGENT_PID, set by the
launcher to its own pid before it exec'd torchrun): a parent gone before the request leaves it
at once. Ctrl-C and SIGTERM still go through torchrun, which stops its workers as before.
"""

from __future__ import annotations

import ctypes
import os
import runpy
import signal
import sys

AGENT_PID_VARIABLE = "SFT_AGENT_PID"
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(expected_parent: int | None) -> bool:
    """Have Linux SIGKILL this process when its parent dies; exit now if the parent is already not
    `expected_parent`. False where the request is not available (not Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return False
    if expected_parent and os.getppid() != expected_parent:
        os._exit(1)  # torchrun is gone: nothing should train
    return True


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1].startswith("-"):
        sys.exit("usage: python -m sft.launch.worker MODULE [hydra overrides]   (run by the launcher's torchrun)")
    die_with_parent(int(os.environ.get(AGENT_PID_VARIABLE) or 0) or None)
    module = argv[1]
    sys.argv = [argv[0], *argv[2:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv)
