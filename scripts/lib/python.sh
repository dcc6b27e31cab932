# shellcheck shell=bash
# The Python interpreter of the repository's scripts (sourced, not run; one place decides it):
#   PYTHON   .venv/bin/python if present, else python3   (set it to use another interpreter)
# Also sets SFT_REPO_ROOT, the repository root (this file lives in scripts/lib/).

SFT_REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
if [[ -x "$SFT_REPO_ROOT/.venv/bin/python" ]]; then
  PYTHON="${PYTHON:-$SFT_REPO_ROOT/.venv/bin/python}"  # the project's own environment, when set up
else
  PYTHON="${PYTHON:-python3}"
fi
