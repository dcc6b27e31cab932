#!/usr/bin/env bash
# The end-to-end demo: JSONL of math solutions -> prepare_data -> full fine-tuning -> export ->
# evaluation of the base and the fine-tuned model on held-out problems -> table and loss plot.
# With ROUNDS > 1, then the generate-and-retrain loop (rejection-sampling fine-tuning), below.
#
# Usage:
#   sft/example_train.sh                  # built-in default: synthetic problems, tiny model, CPU, no downloads
#   QUICK=1 sft/example_train.sh          # a shortened run of the same pipeline (the test suite uses it)
#   ROUNDS=2 sft/example_train.sh         # the loop on the built-in task: round 2 also trains on round 1's correct samples
#   MODEL_NAME=Qwen/Qwen2.5-0.5B-Instruct DATA_GLOB='outputs/*.jsonl' EVAL_FILE=outputs/heldout.jsonl \
#     DEVICE=cuda sft/example_train.sh    # the same pipeline on your model and data
#   MODEL_NAME=Qwen/Qwen2.5-0.5B-Instruct DATA_GLOB='data/seed/*.jsonl' PROBLEMS=data/problems.jsonl \
#     EVAL_FILE=data/heldout.jsonl ROUNDS=3 DEVICE=cuda sft/example_train.sh   # the loop on yours
#
# With no MODEL_NAME it writes synthetic addition problems with step-by-step solutions (in the
# seed JSONL format) and a held-out set whose problems never appear in training, builds a tiny
# Qwen2 model with random weights (sft/demo/tiny_model.py), and trains it with the recipe measured
# in sft/demo/synthetic_math.py (DEMO_RECIPE). Everything lands in DEMO_DIR: the data, the
# checkpoints, the exported model, evaluation results, comparison.md and loss.png.
#
# The loop (ROUNDS=R > 1). Round 1 is the pipeline above. Each round r = 2..R then: samples
# NUM_SAMPLES solutions of every problem in PROBLEMS with round r-1's model (sft/generate.py),
# keeps the correct ones (prepare_data --answer-key answer --dedup --max-per-problem MAX_PER_PROBLEM,
# applied to those samples only: --filters-for self), mixes them with the seed data (DATA_GLOB, as
# given) at weight SELF_WEIGHT, trains (START_FROM), exports, evaluates on the held-out problems and
# checks that none of them is in the round's data. Round r writes DEMO_DIR/round-r/; the end prints
# one table of held-out accuracy per round (DEMO_DIR/rounds.md). On the built-in task round 1
# trains on less data than the demo (LOOP_RECIPE in sft/demo/synthetic_math.py).
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
#   ROUNDS           1         rounds of training; more than 1 runs the loop
#   PROBLEMS         (empty)   problems sampled in rounds >= 2: JSONL or Parquet with prompt, id and the
#                              reference answer (ANSWER_KEY, else 'answer'); empty: the built-in task's
#                              training problems (required with DATA_GLOB)
#   NUM_SAMPLES      auto      solutions sampled per problem and round; auto: the recipe's (4), else 4
#   TEMPERATURE      auto      sampling temperature; auto: the recipe's (0.7), else 1.0
#   TOP_P            1.0       nucleus sampling (1 = off)
#   MAX_PER_PROBLEM  auto      correct samples kept per problem; auto: the recipe's (2), else 4
#   SELF_WEIGHT      1         weight of the model's own samples against the seed data (prepare_data --weight)
#   START_FROM       previous  previous: round r trains round r-1's model further; base: MODEL_NAME every round
#   LOOP_EPOCHS      auto      epochs of rounds >= 2; auto: the recipe's (2), else EPOCHS (launcher default)
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
ROUNDS="${ROUNDS:-1}"
PROBLEMS="${PROBLEMS:-}"
NUM_SAMPLES="${NUM_SAMPLES:-auto}"
TEMPERATURE="${TEMPERATURE:-auto}"
TOP_P="${TOP_P:-1.0}"
MAX_PER_PROBLEM="${MAX_PER_PROBLEM:-auto}"
SELF_WEIGHT="${SELF_WEIGHT:-1}"
START_FROM="${START_FROM:-previous}"
LOOP_EPOCHS="${LOOP_EPOCHS:-auto}"
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
die() { printf '[demo] error: %s\n' "$*" >&2; exit 2; }
py() { PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" "$@"; }

[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "ROUNDS=$ROUNDS: give a whole number of rounds, 1 or more (1 = no loop)"
[[ "$START_FROM" == previous || "$START_FROM" == base ]] \
  || die "START_FROM=$START_FROM: use previous (train the last round's model further) or base (MODEL_NAME)"
if [[ "$ROUNDS" -gt 1 && -n "$DATA_GLOB" && ( -z "$PROBLEMS" || -z "$EVAL_FILE" ) ]]; then
  die "ROUNDS=$ROUNDS with your DATA_GLOB needs PROBLEMS (the problems to sample: JSONL or Parquet with prompt, id, answer) and EVAL_FILE (held-out problems, the same for every round)"
fi
[[ -z "$PROBLEMS" || -f "$PROBLEMS" ]] || die "PROBLEMS not found: $PROBLEMS"

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

if [[ "$synthetic" == 1 && "$ROUNDS" -gt 1 ]]; then
  # The loop's recipe (LOOP_RECIPE): fewer problems for round 1, and the sampling settings.
  while IFS='=' read -r name value; do
    case "$name" in
      N_PROBLEMS) loop_n_problems="$value" ;;
      SOLUTIONS_PER_PROBLEM) loop_solutions="$value" ;;
      ROUND1_EPOCHS) [[ -z "${EPOCHS:-}" && "$QUICK" != 1 ]] && EPOCHS="$value" && export EPOCHS ;;
      NUM_SAMPLES | TEMPERATURE | MAX_PER_PROBLEM) [[ "${!name}" == auto ]] && printf -v "$name" '%s' "$value" ;;
      LOOP_EPOCHS) [[ "$LOOP_EPOCHS" == auto && "$QUICK" != 1 ]] && LOOP_EPOCHS="$value" ;;
    esac
  done < <(py -m sft.demo.synthetic_math --print-loop-recipe)
  PROBLEMS="${PROBLEMS:-$DATA_GLOB}"
fi
[[ "$NUM_SAMPLES" == auto ]] && NUM_SAMPLES=4
[[ "$TEMPERATURE" == auto ]] && TEMPERATURE=1.0
[[ "$MAX_PER_PROBLEM" == auto ]] && MAX_PER_PROBLEM=4

if [[ "$synthetic" == 1 ]]; then
  log "1/5 writing synthetic problems with step-by-step solutions$([[ "$tiny_model" == 1 ]] && echo ", and a tiny model with random weights")"
  data_args=(-o "$DATA_GLOB" --heldout-output "$EVAL_FILE")
  [[ -n "${loop_n_problems:-}" ]] && data_args+=(--n "$loop_n_problems" --solutions-per-problem "$loop_solutions")
  [[ "$QUICK" == 1 ]] && data_args+=(--n 150 --solutions-per-problem 2 --n-heldout 16)  # 16 steps and a val batch
  [[ "$tiny_model" == 1 ]] && data_args+=(--model-output "$MODEL_NAME")
  py -m sft.demo.synthetic_math "${data_args[@]}"
else
  log "1/5 training data: $DATA_GLOB; base model: $MODEL_NAME"
fi

log "2/5 preparing train/val Parquet (sft/prepare_data.py)"
py "$REPO_ROOT/sft/prepare_data.py" "$DATA_GLOB" -o "$DEMO_DIR/data" --tokenizer "$MODEL_NAME" --no-progress
EVAL_FILE="${EVAL_FILE:-$DEMO_DIR/data/val.parquet}"

train_env=(SAVE_FREQ="${SAVE_FREQ:--1}")
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
[[ "$MAX_NEW_TOKENS" == auto ]] && MAX_NEW_TOKENS=1024
eval_args=(--max-new-tokens "$MAX_NEW_TOKENS")
[[ -n "$ANSWER_KEY" ]] && eval_args+=(--answer-key "$ANSWER_KEY")
[[ -n "$EVAL_LIMIT" ]] && eval_args+=(--limit "$EVAL_LIMIT")

# train OUT_DIR DATA_DIR INIT_MODEL [NAME=VALUE ...] -- HYDRA_OVERRIDES...: full fine-tuning of
# INIT_MODEL on DATA_DIR/train.parquet, then export of the last checkpoint to OUT_DIR/fine-tuned-model.
train() {
  local out="$1" data="$2" init="$3" extra=()
  shift 3
  while [[ "$1" != -- ]]; do extra+=("$1"); shift; done
  shift
  rm -rf "$out/checkpoints"
  env "${train_env[@]}" "${extra[@]}" MODEL_NAME="$init" TRAIN_FILE="$data/train.parquet" \
    OUTPUT_DIR="$out/checkpoints" EXPERIMENT_NAME="${EXPERIMENT_NAME:-demo}" \
    "$REPO_ROOT/scripts/run_sft_training.sh" "${train_overrides[@]}" "$@" 2>&1 | tee "$out/train.log"
  log "exporting the last checkpoint to a Hugging Face model (sft/export.py)"
  py -m sft.export "$out/checkpoints" -o "$out/fine-tuned-model" --force
}

log "3/5 full fine-tuning (scripts/run_sft_training.sh), then export (sft/export.py)"
round_start=$SECONDS
train "$DEMO_DIR" "$DEMO_DIR/data" "$MODEL_NAME" -- "$@"

log "4/5 evaluating the base and the fine-tuned model on held-out problems (sft/evaluate.py)"
py -m sft.evaluate "$MODEL_NAME" "$EVAL_FILE" -o "$DEMO_DIR/eval/base" "${eval_args[@]}"
py -m sft.evaluate "$DEMO_DIR/fine-tuned-model" "$EVAL_FILE" -o "$DEMO_DIR/eval/fine-tuned" \
  --baseline "$DEMO_DIR/eval/base/summary.json" "${eval_args[@]}"
py -m sft.rounds --check-heldout "$EVAL_FILE" --training "$DEMO_DIR/data"
cp "$DEMO_DIR/eval/fine-tuned/comparison.md" "$DEMO_DIR/comparison.md"
round_seconds=("1=$((SECONDS - round_start))")

log "5/5 plotting the training loss"
py -m sft.plot_training "$DEMO_DIR/train.log" -o "$DEMO_DIR/loss.png" --title "verl-sft demo: full fine-tuning"

previous="$DEMO_DIR" previous_summary="$DEMO_DIR/eval/fine-tuned/summary.json"
[[ "$ROUNDS" -gt 1 ]] && py -m sft.rounds --check-heldout "$EVAL_FILE" --training "$PROBLEMS"
for ((round = 2; round <= ROUNDS; round++)); do
  round_start=$SECONDS
  dir="$DEMO_DIR/round-$round"
  mkdir -p "$dir"
  log "round $round/$ROUNDS: sampling $NUM_SAMPLES solutions per problem of $PROBLEMS with round $((round - 1))'s model (sft/generate.py)"
  gen_args=(--num-samples "$NUM_SAMPLES" --temperature "$TEMPERATURE" --top-p "$TOP_P"
            --max-new-tokens "$MAX_NEW_TOKENS" --seed "$round")
  [[ -n "$ANSWER_KEY" ]] && gen_args+=(--answer-key "$ANSWER_KEY")
  py -m sft.generate "$previous/fine-tuned-model" "$PROBLEMS" -o "$dir/samples" "${gen_args[@]}"
  # --on-error skip: a sample the model left empty is a failed sample, set aside in rejects.jsonl and
  # counted; the seed data passed round 1's check (--on-error fail) already.
  log "round $round/$ROUNDS: the seed data and the correct samples, at most $MAX_PER_PROBLEM per problem (sft/prepare_data.py)"
  py "$REPO_ROOT/sft/prepare_data.py" --source seed="$DATA_GLOB" --source self="$dir/samples/samples-*.jsonl" \
    --weight self="$SELF_WEIGHT" --filters-for self --answer-key answer --dedup --max-per-problem "$MAX_PER_PROBLEM" \
    --on-error skip -o "$dir/data" --tokenizer "$MODEL_NAME" --no-progress
  py -m sft.rounds --check-heldout "$EVAL_FILE" --training "$dir/data"
  init="$MODEL_NAME"
  [[ "$START_FROM" == previous ]] && init="$previous/fine-tuned-model"
  round_env=()
  [[ "$LOOP_EPOCHS" != auto ]] && round_env+=(EPOCHS="$LOOP_EPOCHS")
  log "round $round/$ROUNDS: training $init on them"
  train "$dir" "$dir/data" "$init" "${round_env[@]}" -- "$@"
  log "round $round/$ROUNDS: evaluating on the held-out problems"
  py -m sft.evaluate "$dir/fine-tuned-model" "$EVAL_FILE" -o "$dir/eval" --baseline "$previous_summary" "${eval_args[@]}"
  round_seconds+=("$round=$((SECONDS - round_start))")
  previous="$dir" previous_summary="$dir/eval/summary.json"
done

if [[ "$ROUNDS" -gt 1 ]]; then
  log "the rounds (sft/rounds.py)"
  py -m sft.rounds --table "$DEMO_DIR" --seconds "${round_seconds[@]}"
fi

log "done in $((SECONDS - start))s. Held-out problems, base vs fine-tuned:"
cat "$DEMO_DIR/comparison.md"
echo
if [[ "$ROUNDS" -gt 1 ]]; then
  echo "Held-out accuracy per round ($DEMO_DIR/rounds.md):"
  cat "$DEMO_DIR/rounds.md"
  echo
fi
echo "fine-tuned model: $previous/fine-tuned-model   loss plot: $DEMO_DIR/loss.png   per-sample results: $DEMO_DIR/eval/*/results.jsonl"
