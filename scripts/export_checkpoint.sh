#!/usr/bin/env bash
# Export a verl FSDP checkpoint (full or LoRA) as a Hugging Face model directory.
#
# Usage:
#   scripts/export_checkpoint.sh CHECKPOINT [-o OUTPUT_DIR] [--dtype auto|float32|bfloat16|float16] [--force]
#
#   CHECKPOINT   a step directory (OUTPUT_DIR/global_step_N), or the training output directory,
#                whose latest_checkpointed_iteration.txt picks the latest step.
#   -o DIR       where to write the model (default: <step dir>/hf_model).
#   --dtype      weight dtype (default auto: the dtype the base model's config declares).
#   --force      replace an existing output directory (only once the new export is complete).
#
# Environment:
#   PYTHON="${PYTHON:-<repo>/.venv/bin/python, else python3}"   # interpreter with verl, transformers, peft
#
# Examples:
#   scripts/export_checkpoint.sh checkpoints/my_run
#   scripts/export_checkpoint.sh checkpoints/my_run/global_step_300 -o outputs/my_model --dtype bfloat16
#
# All arguments go to `python -m sft.export` (see `--help`); this wrapper only picks the
# interpreter and the repository root.
set -euo pipefail

# shellcheck source=lib/python.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/python.sh"  # PYTHON and SFT_REPO_ROOT

if [[ $# -eq 0 ]]; then
  echo "usage: $0 CHECKPOINT [-o OUTPUT_DIR] [--dtype DTYPE] [--force]   (see --help)" >&2
  exit 2
fi

# Relative paths stay relative to the caller's directory: find `sft` through PYTHONPATH, not cd.
export PYTHONPATH="${SFT_REPO_ROOT}${PYTHONPATH:+:${PYTHONPATH}}"
exec "${PYTHON}" -m sft.export "$@"
