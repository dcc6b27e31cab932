#!/usr/bin/env bash
# The end-to-end demo: JSONL of math solutions -> prepare_data -> full fine-tuning -> export ->
# evaluation of the base and the fine-tuned model on held-out problems -> table and loss plot.
#
# Usage:
#   sft/example_train.sh                  # built-in default: synthetic problems, tiny model, CPU, no downloads
#   QUICK=1 sft/example_train.sh          # a shortened run of the same pipeline (the test suite uses it)
#   MODEL_NAME=Qwen/Qwen2.5-0.5B-Instruct DATA_GLOB='outputs/*.jsonl' EVAL_FILE=outputs/heldout.jsonl \
#     DEVICE=cuda sft/example_train.sh    # the same pipeline on your model and data
#
# With no MODEL_NAME it writes synthetic addition problems with step-by-step solutions (in the
# seed JSONL format) and a held-out set whose problems never appear in training, builds a tiny
# Qwen2 model with random weights (sft/demo/tiny_model.py), and trains it with the recipe measured
# in sft/demo/synthetic_math.py (DEMO_RECIPE). Everything lands in DEMO_DIR: the data, the
# checkpoints, the exported model, evaluation results, comparison.md and loss.png.
#
# Settings (environment variable, default, meaning):
#   DEMO_DIR         outputs/demo  where everything is written (the checkpoints of an earlier demo run
#                                  there are removed: every run trains from the start)
#   MODEL_NAME       (empty)   base model (Hugging Face id or directory); empty: build the tiny model
#   DATA_GLOB        (empty)   JSONL of solutions to train on (quoted glob); empty: synthetic problems
#   EVAL_FILE        (empty)   held-out JSONL or Parquet to evaluate on; empty: synthetic held-out set,
#                              or the val.parquet that prepare_data writes when DATA_GLOB is set
#   ANSWER_KEY       (empty)   field with the reference answer (empty: the reference solution's final answer)
#   EVAL_LIMIT       (all)     evaluate at most this many held-out problems
#   MAX_NEW_TOKENS   auto      generation budget per answer; auto: the recipe's for the tiny model, else 1024
#   QUICK            0         1: fewer problems, one epoch; checks the plumbing, not the learning
#   SAVE_FREQ        -1        checkpoint only at the end (the launcher's default is 500 steps)
# Every launcher setting (scripts/run_sft_training.sh --help) passes through, e.g. DEVICE,
# NPROC_PER_NODE, LEARNING_RATE, EPOCHS; arguments are Hydra overrides for the trainer.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEMO_DIR="${DEMO_DIR:-outputs/demo}"
MODEL_NAME="${MODEL_NAME:-}"
DATA_GLOB="${DATA_GLOB:-}"
EVAL_FILE="${EVAL_FILE:-}"
ANSWER_KEY="${ANSWER_KEY:-}"
EVAL_LIMIT="${EVAL_LIMIT:-}"
MAX_NEW_TOKENS="${MAX_NEW_TOKENS:-auto}"
QUICK="${QUICK:-0}"
# shellcheck source=../scripts/lib/python.sh
source "$REPO_ROOT/scripts/lib/python.sh"
export PYTHON
# Idle OpenMP threads spin by default; on a busy CPU that makes decoding many times slower.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  sed -n '2,/^[^#]/{/^#/!d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
  exit 0
fi

log() { printf '\n[demo] %s\n' "$*"; }
py() { PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" "$@"; }

start=$SECONDS
mkdir -p "$DEMO_DIR"
DEMO_DIR="$(cd "$DEMO_DIR" && pwd)"

tiny_model=0
if [[ -z "$MODEL_NAME" ]]; then
  tiny_model=1
  MODEL_NAME="$DEMO_DIR/base-model"
fi
synthetic=0
if [[ -z "$DATA_GLOB" ]]; then
  synthetic=1
  DATA_GLOB="$DEMO_DIR/problems.jsonl"
  EVAL_FILE="${EVAL_FILE:-$DEMO_DIR/heldout.jsonl}"
fi

if [[ "$synthetic" == 1 ]]; then
  log "1/6 writing synthetic problems with step-by-step solutions$([[ "$tiny_model" == 1 ]] && echo ", and a tiny model with random weights")"
  data_args=(-o "$DATA_GLOB" --heldout-output "$EVAL_FILE")
  [[ "$QUICK" == 1 ]] && data_args+=(--n 150 --n-heldout 16)  # enough for 16 steps and a val batch
  [[ "$tiny_model" == 1 ]] && data_args+=(--model-output "$MODEL_NAME")
  py -m sft.demo.synthetic_math "${data_args[@]}"
else
  log "1/6 training data: $DATA_GLOB; base model: $MODEL_NAME"
fi

log "2/6 preparing train/val Parquet (sft/prepare_data.py)"
py "$REPO_ROOT/sft/prepare_data.py" "$DATA_GLOB" -o "$DEMO_DIR/data" --tokenizer "$MODEL_NAME" --no-progress
EVAL_FILE="${EVAL_FILE:-$DEMO_DIR/data/val.parquet}"

log "3/6 full fine-tuning (scripts/run_sft_training.sh)"
rm -rf "$DEMO_DIR/checkpoints"
train_env=(MODEL_NAME="$MODEL_NAME" TRAIN_FILE="$DEMO_DIR/data/train.parquet" OUTPUT_DIR="$DEMO_DIR/checkpoints"
           EXPERIMENT_NAME="${EXPERIMENT_NAME:-demo}" SAVE_FREQ="${SAVE_FREQ:--1}")
train_overrides=()
if [[ "$tiny_model" == 1 ]]; then
  # The recipe measured for the tiny model (DEMO_RECIPE in sft/demo/synthetic_math.py): it starts
  # from random weights and wants a far larger learning rate than a pretrained model. Settings
  # given in the environment win; arguments (Hydra overrides) win over everything.
  while IFS='=' read -r name value; do
    case "$name" in
      OVERRIDES) read -r -a train_overrides <<<"$value" ;;
      MAX_NEW_TOKENS) [[ "$MAX_NEW_TOKENS" == auto ]] && MAX_NEW_TOKENS="$value" ;;
      *) [[ "$name" =~ ^[A-Z_][A-Z0-9_]*$ && -z "${!name:-}" ]] && train_env+=("$name=$value") ;;
    esac
  done < <(py -m sft.demo.synthetic_math --print-recipe)
  [[ "$QUICK" == 1 && -z "${EPOCHS:-}" ]] && train_env+=(EPOCHS=1)
fi
env "${train_env[@]}" "$REPO_ROOT/scripts/run_sft_training.sh" "${train_overrides[@]}" "$@" 2>&1 \
  | tee "$DEMO_DIR/train.log"

log "4/6 exporting the last checkpoint to a Hugging Face model (sft/export.py)"
py -m sft.export "$DEMO_DIR/checkpoints" -o "$DEMO_DIR/fine-tuned-model" --force

log "5/6 evaluating the base and the fine-tuned model on held-out problems (sft/evaluate.py)"
[[ "$MAX_NEW_TOKENS" == auto ]] && MAX_NEW_TOKENS=1024
eval_args=(--max-new-tokens "$MAX_NEW_TOKENS")
[[ -n "$ANSWER_KEY" ]] && eval_args+=(--answer-key "$ANSWER_KEY")
[[ -n "$EVAL_LIMIT" ]] && eval_args+=(--limit "$EVAL_LIMIT")
py -m sft.evaluate "$MODEL_NAME" "$EVAL_FILE" -o "$DEMO_DIR/eval/base" "${eval_args[@]}"
py -m sft.evaluate "$DEMO_DIR/fine-tuned-model" "$EVAL_FILE" -o "$DEMO_DIR/eval/fine-tuned" \
  --baseline "$DEMO_DIR/eval/base/summary.json" "${eval_args[@]}"
cp "$DEMO_DIR/eval/fine-tuned/comparison.md" "$DEMO_DIR/comparison.md"
log "6/6 plotting the training loss"
py -m sft.plot_training "$DEMO_DIR/train.log" -o "$DEMO_DIR/loss.png" --title "verl-sft demo: full fine-tuning"

log "done in $((SECONDS - start))s. Held-out problems, base vs fine-tuned:"
cat "$DEMO_DIR/comparison.md"
echo
echo "fine-tuned model: $DEMO_DIR/fine-tuned-model   loss plot: $DEMO_DIR/loss.png   per-sample results: $DEMO_DIR/eval/*/results.jsonl"
