#!/usr/bin/env bash
# Set up (or update) the project's virtual environment: .venv with requirements.txt installed.
#
# Usage:
#   scripts/setup_env.sh            # create .venv if missing, install/update pinned requirements
#   PYTHON=python3.11 scripts/setup_env.sh
#   EXTRA_REQUIREMENTS=requirements-gpu.txt scripts/setup_env.sh   # add the GPU-only speedups
#   WHEELHOUSE=wheelhouse scripts/setup_env.sh                     # offline, from scripts/build_wheelhouse.py's folder
#   WHEELHOUSE=wheelhouse PYTHON=/opt/conda/bin/python scripts/setup_env.sh   # on top of that Python's CUDA torch
#
# Idempotent and fast when already done: it records a hash of the requirement files in
# .venv/.requirements.sha256 and skips pip when nothing changed. Needs Python >= 3.10.
#
# Offline (WHEELHOUSE set): no package index is asked. The environment is created with
# --system-site-packages on top of PYTHON, so it sees the torch that PYTHON has (a cluster's CUDA
# build); that torch is checked against what the wheelhouse's packages require and is never
# replaced (torch is not in the wheelhouse). Then exactly the wheels of WHEELHOUSE/requirements.lock
# are installed (--no-deps: nothing else is resolved) and the modules the project runs are imported
# once. To install into an existing environment instead (a conda env, a module's Python), set
# VENV_DIR to its root (the folder with bin/python), and PYTHON to its bin/python for the launchers.
#
# Environment (default):
#   PYTHON              python3    interpreter that creates the virtual environment
#   VENV_DIR            .venv      where the environment lives (relative to the repository root)
#   EXTRA_REQUIREMENTS  (none)     further requirement files, space separated
#   WHEELHOUSE          (none)     a folder from scripts/build_wheelhouse.py: install from it, offline
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
VENV_DIR="${VENV_DIR:-$REPO_ROOT/.venv}"
EXTRA_REQUIREMENTS="${EXTRA_REQUIREMENTS:-}"
WHEELHOUSE="${WHEELHOUSE:-}"  # offline: no index, the machine's torch kept

cd "$REPO_ROOT"
start=$SECONDS
# Exit status (sft/common/errors.py EXIT_CODES): 2 refused before any work, 1 the install failed, whatever
# status pip or Python gave it (pip's own 2 would otherwise read as a refusal).
trap 'exit 1' ERR
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "error: $PYTHON is missing or older than Python 3.10; set PYTHON to a newer interpreter." >&2
  exit 2
fi
if [[ -n "$WHEELHOUSE" ]]; then
  WHEELHOUSE="$(cd "$WHEELHOUSE" 2>/dev/null && pwd)" || { echo "error: WHEELHOUSE is not a folder: ${WHEELHOUSE}" >&2; exit 2; }
  for file in requirements.lock wheelhouse.json; do
    [[ -f "$WHEELHOUSE/$file" ]] || { echo "error: $WHEELHOUSE has no $file; build it with scripts/build_wheelhouse.py -o $WHEELHOUSE" >&2; exit 2; }
  done
fi
if [[ -n "$WHEELHOUSE" && ! -x "$VENV_DIR/bin/python" ]]; then
  # A venv made from a venv's interpreter sees the base Python's packages, not that venv's torch.
  base_env="$("$PYTHON" -c 'import sys; print(sys.prefix if sys.prefix != sys.base_prefix else "")')"
  if [[ -n "$base_env" ]]; then
    echo "error: PYTHON=$PYTHON belongs to the virtual environment $base_env; a new environment made from it would" \
      "not see its torch. Install into it instead: WHEELHOUSE=$WHEELHOUSE VENV_DIR=$base_env scripts/setup_env.sh" >&2
    exit 2
  fi
fi
if [[ ! -x "$VENV_DIR/bin/python" ]]; then
  venv_options=()
  [[ -n "$WHEELHOUSE" ]] && venv_options=(--system-site-packages)  # PYTHON's own torch stays visible
  echo "[setup] creating virtual environment in $VENV_DIR ${venv_options[*]}"
  "$PYTHON" -m venv "${venv_options[@]}" "$VENV_DIR"
fi

requirement_files=(requirements.txt)
if [[ -n "$EXTRA_REQUIREMENTS" ]]; then
  read -r -a extra <<<"$EXTRA_REQUIREMENTS"
  requirement_files+=("${extra[@]}")
fi
for file in "${requirement_files[@]}"; do
  [[ -f "$file" ]] || { echo "error: requirements file not found: $file" >&2; exit 2; }
done
stamped_files=("${requirement_files[@]}")
[[ -n "$WHEELHOUSE" ]] && stamped_files+=("$WHEELHOUSE/requirements.lock")
wanted_hash="$(cat "${stamped_files[@]}" | sha256sum | cut -d' ' -f1)"
stamp="$VENV_DIR/.requirements.sha256"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$wanted_hash" ]]; then
  echo "[setup] $VENV_DIR is up to date with ${stamped_files[*]} ($((SECONDS - start))s)"
  exit 0
fi

pip=("$VENV_DIR/bin/python" -m pip)
if [[ -n "$WHEELHOUSE" ]]; then
  echo "[setup] installing $WHEELHOUSE/requirements.lock into $VENV_DIR, offline (no index)"
  "$VENV_DIR/bin/python" "$REPO_ROOT/scripts/build_wheelhouse.py" --check-torch "$WHEELHOUSE"
  offline=(--no-index --find-links "$WHEELHOUSE")
  "${pip[@]}" install --quiet "${offline[@]}" --no-deps -r "$WHEELHOUSE/requirements.lock"
  # Extra files (requirements-gpu.txt) from the same folder; flash-attn only as a wheel put there.
  for file in "${requirement_files[@]:1}"; do
    "${pip[@]}" install --quiet "${offline[@]}" --no-build-isolation -r "$file"
  done
  # The modules the project runs (wheelhouse.json "imports"), imported once in one process.
  PYTHONWARNINGS=ignore "$VENV_DIR/bin/python" - "$WHEELHOUSE/wheelhouse.json" <<'PY'
import importlib, json, sys
for module in json.load(open(sys.argv[1]))["imports"]:
    try:
        importlib.import_module(module)
    except Exception as exc:
        sys.exit(f"error: {module} does not import after the offline install ({type(exc).__name__}: {exc})")
print("[setup] imports checked:", ", ".join(json.load(open(sys.argv[1]))["imports"]))
PY
else
  echo "[setup] installing ${requirement_files[*]} into $VENV_DIR (a few minutes the first time)"
  "${pip[@]}" install --quiet --upgrade pip
  "${pip[@]}" install --quiet -r requirements.txt
  # Extra files (requirements-gpu.txt: flash-attn) build against the torch installed above.
  for file in "${requirement_files[@]:1}"; do
    "${pip[@]}" install --quiet --no-build-isolation -r "$file"
  done
fi
if ! "$VENV_DIR/bin/python" -c 'import torch, verl, transformers, peft; print(f"[setup] torch {torch.__version__}, verl {verl.__version__}, transformers {transformers.__version__}, peft {peft.__version__}")' 2>/dev/null \
    && [[ -z "$WHEELHOUSE" ]]; then
  echo "error: torch, verl, transformers or peft does not import in $VENV_DIR after the install" >&2
  exit 1
fi
echo "$wanted_hash" >"$stamp"
echo "[setup] done in $((SECONDS - start))s; the launchers use $VENV_DIR/bin/python"
