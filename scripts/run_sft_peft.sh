#!/usr/bin/env bash
# LoRA fine-tuning with verl's FSDP SFT trainer (torchrun ... -m verl.trainer.sft_trainer).
#
# Usage:
#   scripts/run_sft_peft.sh [hydra.override=value ...]
#   LORA_RANK=64 LORA_ALPHA=128 MODEL_NAME=Qwen/Qwen2.5-7B-Instruct scripts/run_sft_peft.sh
#   DRY_RUN=1 scripts/run_sft_peft.sh model.lora_rank=8    # overrides win over LORA_RANK
#
# Arguments are verl Hydra overrides, passed last, so they win over every setting below.
# Rerunning the same command resumes from the latest checkpoint in OUTPUT_DIR. Checkpoints
# hold the LoRA weights and lora_train_meta.json; sft/export.py merges them into a full model.
#
# Settings of this launcher (environment variable, default, meaning):
#   LEARNING_RATE    1e-4      peak AdamW learning rate (LoRA wants about 10x full fine-tuning's)
#   LORA_RANK        32        rank of the LoRA matrices
#   LORA_ALPHA       64        LoRA scaling numerator (scale = LORA_ALPHA / LORA_RANK)
#   TARGET_MODULES   all-linear  modules that get adapters: all-linear, or a comma list (q_proj,v_proj)
#   LORA_BASE_DTYPE  bf16      dtype the frozen base weights are held in (bf16 | fp32);
#                              adapters, their gradients and AdamW state stay fp32
# Settings shared with scripts/run_sft_training.sh: see scripts/lib/sft_env.sh, or run with --help.
set -euo pipefail

export SFT_MODE=lora
# shellcheck source=lib/sft_launch.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/sft_launch.sh"
sft_launch "${BASH_SOURCE[0]}" "$@"
