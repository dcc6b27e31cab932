"""A real one-node Slurm cluster on localhost for tests (slurmctld, slurmd, munged from Debian's packages).

Usage (tests/test_slurm.py does this in a session fixture):
    cluster = SlurmCluster.start(Path(tempfile.mkdtemp()))   # a few seconds; raises SlurmUnavailable
    job_id = cluster.sbatch(["slurm/sft_training.slurm"], env=..., cwd=...)
    info = cluster.wait_for_state(job_id, {"COMPLETED"}, timeout=600)
    cluster.stop()

Everything lives in the scratch directory: its own munge key and socket, slurm.conf, state,
spool, pid and log files, and free TCP ports, so it neither needs nor touches /etc/slurm or a
system munged, and two test sessions on one machine do not meet. Clients find it through
SLURM_CONF (set in `cluster.env()`), which jobs inherit with --export=ALL. The daemons are
stopped by the pids in their pid files. tests/slurm/install_slurm.sh installs the packages
(.ci/run calls it); where it could not, `start` raises SlurmUnavailable with the reason, and
SlurmStartError with the daemon's log when an installed Slurm does not start.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

DAEMON_COMMANDS = ("slurmctld", "slurmd", "munged", "sbatch", "scontrol", "squeue", "srun")
# Job states after which a job never runs again (REQUEUED and PENDING are not among them).
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
                "PREEMPTED"}


class SlurmUnavailable(RuntimeError):
    """Slurm cannot run here (not installed, not root); the message says why. Tests skip on it."""


class SlurmStartError(RuntimeError):
    """Slurm is installed but a daemon did not start; the message holds its log. Tests fail on it."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _memory_mib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise SlurmStartError("cannot read MemTotal from /proc/meminfo")


def parse_scontrol(text: str) -> dict[str, str]:
    """`scontrol show job -o` output as {Key: value}; values may contain spaces (Command, WorkDir)."""
    fields: dict[str, str] = {}
    matches = list(re.finditer(r"(?:^|\s)([A-Za-z_:/]+)=", text.strip()))
    for match, following in zip(matches, matches[1:] + [None]):
        end = following.start() if following else len(text.strip())
        fields[match.group(1)] = text.strip()[match.end():end].strip()
    return fields


@dataclass
class SlurmCluster:
    root: Path
    node: str
    conf: Path
    pids: dict[str, Path] = field(default_factory=dict)  # daemon -> pid file

    # -----------------------------------------------------------------------------------------
    # Start and stop.

    @classmethod
    def start(cls, root: Path, cpus: int | None = None, timeout: float = 60.0) -> SlurmCluster:
        """Configure and start munged, slurmctld and slurmd under `root`; wait until the node is idle."""
        missing = [c for c in DAEMON_COMMANDS if shutil.which(c) is None]
        if missing:
            raise SlurmUnavailable(f"{', '.join(missing)} not installed; run tests/slurm/install_slurm.sh as root "
                                   "(Debian packages slurm-wlm and munge)")
        if os.geteuid() != 0:
            raise SlurmUnavailable("a test Slurm cluster needs root (slurmd starts jobs as their user)")
        node = socket.gethostname().split(".")[0]  # what `hostname -s` prints; slurmd registers under it
        try:
            address = socket.gethostbyname(node)
        except OSError:
            address = "127.0.0.1"
        root = root.resolve()
        root.chmod(0o755)  # munged runs as the munge user and must reach its directory
        cluster = cls(root=root, node=node, conf=root / "slurm.conf")
        try:
            cluster._start_munge()
            cluster._write_conf(address, cpus or os.cpu_count() or 1)
            cluster._start_slurm(timeout)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _start_munge(self) -> None:
        import pwd

        munge_dir = self.root / "munge"  # munged wants its socket directory open to all, its key private
        munge_dir.mkdir()
        munge_dir.chmod(0o755)
        (munge_dir / "private").mkdir(mode=0o700)
        key = munge_dir / "private" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        try:
            user = pwd.getpwnam("munge")
        except KeyError:
            raise SlurmUnavailable("the munge user does not exist; reinstall the munge package") from None
        for path in (munge_dir, munge_dir / "private", key):
            os.chown(path, user.pw_uid, user.pw_gid)
        self.munge_socket = munge_dir / "munge.socket"
        self.pids["munged"] = munge_dir / "munged.pid"
        command = ["runuser", "-u", "munge", "--", "munged", f"--key-file={key}", f"--socket={self.munge_socket}",
                   f"--pid-file={self.pids['munged']}", f"--log-file={munge_dir / 'munged.log'}",
                   f"--seed-file={munge_dir / 'private' / 'munged.seed'}"]
        self._run_daemon(command, "munged", munge_dir / "munged.log")
        probe = subprocess.run(f"munge -n -S '{self.munge_socket}' | unmunge -S '{self.munge_socket}'", shell=True,
                               capture_output=True, text=True, timeout=30)
        if probe.returncode != 0 or "Success" not in probe.stdout:
            raise SlurmStartError(f"munge does not work: {probe.stdout[-500:]}{probe.stderr[-500:]}")

    def _write_conf(self, address: str, cpus: int) -> None:
        for name in ("state", "spool", "log"):
            (self.root / name).mkdir()
        self.pids["slurmctld"] = self.root / "slurmctld.pid"
        self.pids["slurmd"] = self.root / "slurmd.pid"
        memory = max(512, int(_memory_mib() * 0.9))  # a little under the machine's, or slurmd drains the node
        self.conf.write_text(f"""\
# One-node test cluster written by tests/slurm_cluster.py.
ClusterName=verlsft
SlurmctldHost={self.node}({address})
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
# Cores only: jobs that ask for no memory share the node's instead of each taking all of it.
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
StateSaveLocation={self.root / 'state'}
SlurmdSpoolDir={self.root / 'spool'}
SlurmctldPidFile={self.pids['slurmctld']}
SlurmdPidFile={self.pids['slurmd']}
SlurmctldLogFile={self.root / 'log' / 'slurmctld.log'}
SlurmdLogFile={self.root / 'log' / 'slurmd.log'}
JobRequeue=1
ReturnToService=2
# Finished jobs stay visible to `scontrol show job` for 10 minutes (no accounting database here).
MinJobAge=600
KillWait=10
SchedulerType=sched/backfill
NodeName={self.node} NodeAddr={address} CPUs={cpus} RealMemory={memory} State=UNKNOWN
PartitionName=test Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
""")

    def _start_slurm(self, timeout: float) -> None:
        self._run_daemon(["slurmctld", "-f", str(self.conf)], "slurmctld", self.root / "log" / "slurmctld.log")
        self._run_daemon(["slurmd", "-f", str(self.conf)], "slurmd", self.root / "log" / "slurmd.log")
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            result = self.command(["sinfo", "-h", "-N", "-o", "%T"], check=False)
            state = result.stdout.strip()
            if state.rstrip("*") in ("idle", "mixed", "allocated"):
                return
            time.sleep(0.5)
        raise SlurmStartError(f"the node did not become idle within {timeout:.0f}s (sinfo: {state!r}); "
                               f"slurmd log:\n{self.log_tail('slurmd')}")

    def _run_daemon(self, command: list[str], name: str, log: Path, timeout: float = 30.0) -> None:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=self.env())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._pid(name):
            time.sleep(0.2)
        if result.returncode != 0 or not self._pid(name):
            text = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise SlurmStartError(f"{name} did not start (exit {result.returncode}): {result.stderr[-1000:]}\n{text}")

    def _pid(self, name: str) -> int | None:
        try:
            pid = int(self.pids[name].read_text().strip())
            os.kill(pid, 0)
            return pid
        except (KeyError, OSError, ValueError):
            return None

    def cancel_all_jobs(self, timeout: float = 60.0) -> None:
        """Cancel every job and wait until their processes are gone (the queue is empty)."""
        if not (self._pid("slurmctld") and self._pid("slurmd")):
            return
        self.command(["scancel", "--full", "--user=root"], check=False)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.command(["squeue", "--noheader"], check=False).stdout.strip():
            time.sleep(0.5)

    def stop(self, timeout: float = 20.0) -> None:
        """Cancel every job, then stop slurmd, slurmctld and munged by the pids in their pid files."""
        self.cancel_all_jobs()
        for name in ("slurmd", "slurmctld", "munged"):
            pid = self._pid(name)
            if pid is None:
                continue
            os.kill(pid, 15)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self._pid(name):
                time.sleep(0.2)
            if self._pid(name):
                os.kill(pid, 9)

    # -----------------------------------------------------------------------------------------
    # Clients.

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """`base` (default: this process's environment) with SLURM_CONF pointing at this cluster."""
        env = dict(os.environ if base is None else base)
        env["SLURM_CONF"] = str(self.conf)
        return env

    def command(self, argv: list[str], check: bool = True, env: dict[str, str] | None = None,
                cwd: Path | None = None, timeout: float = 60.0) -> subprocess.CompletedProcess:
        result = subprocess.run(argv, capture_output=True, text=True, env=self.env(env), cwd=cwd, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} failed ({result.returncode}): {result.stdout}{result.stderr}")
        return result

    def sbatch(self, argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> int:
        """Submit `sbatch --parsable *argv`; return the job id."""
        result = self.command(["sbatch", "--parsable", *argv], env=env, cwd=cwd)
        return int(result.stdout.strip().split(";")[0])

    def job(self, job_id: int) -> dict[str, str]:
        result = self.command(["scontrol", "show", "job", "-o", str(job_id)])
        return parse_scontrol(result.stdout)

    def wait_for_state(self, job_id: int, states: set[str], timeout: float, log: Path | None = None,
                       poll: float = 1.0) -> dict[str, str]:
        """Wait until the job is in one of `states`; fail at once when it ends in another final state."""
        deadline = time.monotonic() + timeout
        info: dict[str, str] = {}
        while time.monotonic() < deadline:
            info = self.job(job_id)
            state = info.get("JobState", "")
            if state in states:
                return info
            if state in FINAL_STATES:
                break
            time.sleep(poll)
        raise AssertionError(
            f"job {job_id} is {info.get('JobState')!r} (Reason={info.get('Reason')}, ExitCode={info.get('ExitCode')}), "
            f"wanted {sorted(states)} within {timeout:.0f}s.\n--- job log {log} ---\n{read_tail(log)}\n"
            f"--- slurmctld log ---\n{self.log_tail('slurmctld', 15)}")

    def log_tail(self, daemon: str, lines: int = 30) -> str:
        return read_tail(self.root / "log" / f"{daemon}.log", lines)


def read_tail(path: Path | None, lines: int = 80) -> str:
    if path is None or not path.exists():
        return f"(no file {path})"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
