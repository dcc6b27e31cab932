#!/usr/bin/env bash
# Install the Debian packages of a one-node Slurm test cluster (slurmctld, slurmd, munge) for tests/test_slurm.py.
#
# Usage:
#   tests/slurm/install_slurm.sh      # called by .ci/run before the tests; idempotent, quiet
#
# Fast when everything is already installed (checks the commands, no apt call). Needs root and
# apt-get; without them it prints why and exits 0, and tests/test_slurm.py then skips with that
# reason. It starts no daemon: the tests configure and start their own cluster in a scratch
# directory (tests/slurm/cluster.py) and stop it at the end.
set -euo pipefail

PACKAGES=(slurm-wlm munge)  # slurm-wlm pulls slurmctld, slurmd and slurm-client
COMMANDS=(sbatch srun scontrol squeue slurmctld slurmd munged munge)
APT_OPTIONS=(-qq -o DPkg::Lock::Timeout=300)  # wait for another apt-get instead of failing at once

missing() {
  local command
  for command in "${COMMANDS[@]}"; do
    command -v "$command" >/dev/null 2>&1 || { echo "$command"; return 0; }
  done
  return 1
}

if ! absent="$(missing)"; then
  echo "[install_slurm] Slurm and munge are installed (slurm $(dpkg-query -W -f='${Version}' slurmctld 2>/dev/null || echo "(version unknown)"))"
  exit 0
fi
if [[ "$(id -u)" -ne 0 ]]; then
  echo "[install_slurm] warning: $absent is missing and this is not root; the Slurm tests will be skipped." >&2
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "[install_slurm] warning: $absent is missing and apt-get is not available; the Slurm tests will be skipped." >&2
  exit 0
fi

log="$(mktemp -t install_slurm.XXXXXX.log)"
install_packages() {
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${APT_OPTIONS[@]}" "${PACKAGES[@]}" \
    >>"$log" 2>&1
}
start=$SECONDS
echo "[install_slurm] installing ${PACKAGES[*]} with apt-get (log: $log)"
# A fresh machine may have no package lists yet: update only when the first attempt fails.
if ! install_packages && ! { apt-get update "${APT_OPTIONS[@]}" >>"$log" 2>&1 && install_packages; }; then
  echo "[install_slurm] warning: apt-get could not install ${PACKAGES[*]}; the Slurm tests will be skipped. Last lines of $log:" >&2
  tail -n 20 "$log" >&2
  exit 0
fi
if absent="$(missing)"; then
  echo "[install_slurm] warning: $absent is still missing after installing ${PACKAGES[*]}; the Slurm tests will be skipped." >&2
  exit 0
fi
echo "[install_slurm] installed slurm $(dpkg-query -W -f='${Version}' slurmctld 2>/dev/null || echo "(version unknown)") in $((SECONDS - start))s"
