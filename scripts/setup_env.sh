#!/usr/bin/env bash
# Set up (or update) the project's virtual environment: .venv with requirements.txt installed.
#
# Usage:
#   scripts/setup_env.sh            # create .venv if missing, install/update pinned requirements
#   PYTHON=python3.11 scripts/setup_env.sh
#   EXTRA_REQUIREMENTS=requirements-gpu.txt scripts/setup_env.sh   # add the GPU-only speedups
#
# Idempotent and fast when already done: it records a hash of the requirement files in
# .venv/.requirements.sha256 and skips pip when nothing changed. Needs Python >= 3.10.
#
# Environment (default):
#   PYTHON              python3    interpreter that creates the virtual environment
#   VENV_DIR            .venv      where the environment lives (relative to the repository root)
#   EXTRA_REQUIREMENTS  (none)     further requirement files, space separated
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
VENV_DIR="${VENV_DIR:-$REPO_ROOT/.venv}"
EXTRA_REQUIREMENTS="${EXTRA_REQUIREMENTS:-}"

cd "$REPO_ROOT"
start=$SECONDS
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "error: $PYTHON is missing or older than Python 3.10; set PYTHON to a newer interpreter." >&2
  exit 1
fi
if [[ ! -x "$VENV_DIR/bin/python" ]]; then
  echo "[setup] creating virtual environment in $VENV_DIR"
  "$PYTHON" -m venv "$VENV_DIR"
fi

requirement_files=(requirements.txt)
if [[ -n "$EXTRA_REQUIREMENTS" ]]; then
  read -r -a extra <<<"$EXTRA_REQUIREMENTS"
  requirement_files+=("${extra[@]}")
fi
for file in "${requirement_files[@]}"; do
  [[ -f "$file" ]] || { echo "error: requirements file not found: $file" >&2; exit 1; }
done
wanted_hash="$(cat "${requirement_files[@]}" | sha256sum | cut -d' ' -f1)"
stamp="$VENV_DIR/.requirements.sha256"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$wanted_hash" ]]; then
  echo "[setup] $VENV_DIR is up to date with ${requirement_files[*]} ($((SECONDS - start))s)"
  exit 0
fi

echo "[setup] installing ${requirement_files[*]} into $VENV_DIR (a few minutes the first time)"
"$VENV_DIR/bin/python" -m pip install --quiet --upgrade pip
"$VENV_DIR/bin/python" -m pip install --quiet -r requirements.txt
# Extra files (requirements-gpu.txt: flash-attn) build against the torch installed above.
for file in "${requirement_files[@]:1}"; do
  "$VENV_DIR/bin/python" -m pip install --quiet --no-build-isolation -r "$file"
done
"$VENV_DIR/bin/python" -c 'import torch, verl, transformers, peft; print(f"[setup] torch {torch.__version__}, verl {verl.__version__}, transformers {transformers.__version__}, peft {peft.__version__}")' 2>/dev/null
echo "$wanted_hash" >"$stamp"
echo "[setup] done in $((SECONDS - start))s; the launchers use $VENV_DIR/bin/python"
