#!/usr/bin/env bash
# Prove the GPU path in one short run and measure it: full fine-tuning (original design vs ours),
# LoRA, a stop and an exact resume, export and evaluation, and what each verl plugin did.
#
# Usage:
#   scripts/gpu_check.sh                 # a GPU machine: real shapes (Qwen2.5-0.5B full, 1.5B LoRA), random
#                                        # weights, Qwen's real vocabulary; no downloads; 8 minutes at most
#   scripts/gpu_check.sh --cpu-tiny      # any machine: the same parts on tiny shapes (the tests run it)
#   scripts/gpu_check.sh --work-dir /scratch/gpu_check --time-limit 600
#
# Prints one table; writes WORK_DIR/gpu_check.json (after every part) and gpu_check.md; every run's
# log is in WORK_DIR/runs/. Exit status 0 when every part passed, 1 when one failed, 2 on bad usage.
#
# Environment:
#   PYTHON="${PYTHON:-<repo>/.venv/bin/python, else python3}"   # interpreter with torch, verl, transformers
#
# All arguments go to scripts/gpu_check.py (see --help); this wrapper only picks the interpreter.
set -euo pipefail

# shellcheck source=lib/python.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/python.sh"  # PYTHON and SFT_REPO_ROOT

exec "${PYTHON}" "$SFT_REPO_ROOT/scripts/gpu_check.py" "$@"
