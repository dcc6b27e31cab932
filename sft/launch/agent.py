"""torchrun, as the launcher runs it: the same agent, ending in one line instead of a traceback.

Usage (the launcher's command; every argument is torchrun's):
    python -m sft.launch.agent --nnodes=1 --nproc-per-node=2 ... -m sft.launch.worker verl.trainer.sft_trainer k=v ...

torch.distributed.run reports a worker that exited with an error, and its own stop on Ctrl-C or
SIGTERM, by raising out of its main(): a Python traceback of the agent and a table, printed
after the worker's own output (which holds the real cause, e.g. the one line the plugins print
for a full disk). Here the same main() runs, and those two endings become one line each, with
the exit status of the failed worker (or 128 + the signal). Anything else still raises.
"""

from __future__ import annotations

import signal
import sys

from sft.common.errors import EXIT_FAILED, EXIT_OK


def main(argv: list[str]) -> int:
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    try:
        torchrun.main(argv)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        status = failure.exitcode if isinstance(failure.exitcode, int) and failure.exitcode > 0 else EXIT_FAILED
        cause = f"signal {-failure.exitcode}" if isinstance(failure.exitcode, int) and failure.exitcode < 0 \
            else f"status {failure.exitcode}"
        print(f"[verl-sft] training failed: rank {rank} ended with {cause} (its output above says why). Rerunning the "
              "same command resumes from the newest complete checkpoint.", file=sys.stderr, flush=True)
        return status
    except SignalException as exc:
        name = signal.Signals(exc.sigval).name
        print(f"[verl-sft] training stopped by {name}; rerunning the same command resumes from the newest complete "
              "checkpoint.", file=sys.stderr, flush=True)
        return 128 + int(exc.sigval)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
