#!/usr/bin/env bash
# Full fine-tuning with verl's FSDP SFT trainer (torchrun ... -m verl.trainer.sft_trainer).
#
# Usage:
#   scripts/run_sft_training.sh [hydra.override=value ...]
#   MODEL_NAME=Qwen/Qwen2.5-1.5B-Instruct TRAIN_FILE=data/sft/train.parquet \
#     scripts/run_sft_training.sh trainer.total_epochs=1
#   DRY_RUN=1 scripts/run_sft_training.sh          # check settings and config, train nothing
#   DEVICE=cpu MODEL_NAME=outputs/tiny-model scripts/run_sft_training.sh   # CPU, tiny model
#
# Arguments are verl Hydra overrides, passed last, so they win over every setting below.
# Rerunning the same command resumes from the latest checkpoint in OUTPUT_DIR.
#
# Settings of this launcher (environment variable, default, meaning):
#   LEARNING_RATE    1e-5      peak AdamW learning rate for full fine-tuning
# Settings shared with scripts/run_sft_peft.sh: see scripts/lib/sft_env.sh, or run with --help.
set -euo pipefail

export SFT_MODE=full
LEARNING_RATE="${LEARNING_RATE:-1e-5}"  # full fine-tuning of a pretrained model; verl's 1e-3 diverges

# shellcheck source=lib/sft_env.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/sft_env.sh"
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  sft_print_usage "${BASH_SOURCE[0]}" "$SFT_REPO_ROOT/scripts/lib/sft_env.sh"
  exit 0
fi
sft_launch "$@"
