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
# shellcheck source=lib/sft_launch.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/sft_launch.sh"
sft_launch "${BASH_SOURCE[0]}" "$@"
