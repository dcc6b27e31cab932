# shellcheck shell=bash
# Shared settings of scripts/run_sft_training.sh and scripts/run_sft_peft.sh (sourced, not run).
#
# Every variable below can be set in the environment; the table gives its default.
# The launchers set SFT_MODE (full | lora) and their mode-specific defaults (LEARNING_RATE,
# LoRA settings) before sourcing this file. `sft/launcher.py` validates all of them, resolves the
# "auto" values, prints the settings and the exact command, and starts torchrun.
#
# Topology (torchrun):
#   NPROC_PER_NODE   auto      processes per node: all visible GPUs; on CPU 2 (1 on a 1-core machine)
#   NNODES           1         number of nodes
#   NODE_RANK        0         rank of this node (0..NNODES-1)
#   MASTER_ADDR      127.0.0.1 address of node 0 (rendezvous host)
#   MASTER_PORT      auto      rendezvous port; auto: a free port on one node, 29500 on several
#   RDZV_ID          none      c10d rendezvous id (e.g. $SLURM_JOB_ID); set: elastic c10d rendezvous
#   DEVICE           auto      auto | cuda | cpu (auto: cuda when a GPU is visible, else cpu)
# Model and data:
#   MODEL_NAME       Qwen/Qwen2.5-0.5B-Instruct  Hugging Face id or local directory
#   TRAIN_FILE       data/sft/train.parquet      Parquet with a `messages` column (sft/prepare_data.py)
#   VAL_FILE         (unset)   unset: TRAIN_FILE's sibling val.parquet if it exists; empty: no validation
#   TRUST_REMOTE_CODE 0        1 lets transformers run code shipped with the model
#   MAX_LENGTH       auto      longest sample in tokens; auto: manifest.json's recommendation, else 2048
#   MAX_TOKENS_PER_GPU auto    tokens packed per micro batch per GPU (>= MAX_LENGTH); auto: manifest, else max(8192, MAX_LENGTH)
# Optimisation:
#   BATCH_SIZE       auto      micro batch per device when DYNAMIC_BATCH is off, and for validation;
#                              auto: 4 on GPU, 1 on CPU (no padding at all)
#   DYNAMIC_BATCH    auto      1: micro batches packed up to MAX_TOKENS_PER_GPU tokens; auto: on for GPU,
#                              off for CPU (sdpa pads a packed micro batch; one sample at a time is 2-3x faster)
#   TRAIN_BATCH_SIZE 64        global batch in samples (a multiple of NNODES*NPROC_PER_NODE)
#   EPOCHS           3         passes over the training set
#   LR_SCHEDULER     cosine    cosine | constant
#   WARMUP_RATIO     0.03      fraction of steps spent warming up the learning rate
#   WEIGHT_DECAY     0.01      AdamW weight decay
#   SEED             42        verl's engine/trainer seed (used by engine.full_determinism)
# Output and logging:
#   OUTPUT_DIR       checkpoints/$PROJECT_NAME/$EXPERIMENT_NAME  checkpoints; reruns resume from here
#   SAVE_FREQ        500       save every N steps (-1: only at the end; after_each_epoch)
#   TEST_FREQ        after_each_epoch  validate every N steps (-1: only at the end)
#   LOGGER           console   comma list of console, wandb, tensorboard, mlflow, swanlab
#   PROJECT_NAME     verl-sft  experiment tracker project
#   EXPERIMENT_NAME  <model directory name>-<full|lora>  run name in the tracker and in OUTPUT_DIR
# Launcher behaviour:
#   DRY_RUN          0         1: print settings and command, check that verl's Hydra config
#                              composes with every override, and exit without training
#   ATTN_IMPLEMENTATION auto   auto: flash_attention_2 on a GPU with flash-attn installed, else sdpa
#   COMPUTE_DTYPE    auto      auto | bf16 | fp32 compute (auto: bf16 on GPU, fp32 on CPU, where bf16 is emulated)
#   REMOVE_PADDING   auto      1: pack samples without padding; auto: on with flash attention, off with sdpa
#                              (sdpa attends over the whole pack, quadratic in MAX_TOKENS_PER_GPU)
#   GRADIENT_CHECKPOINTING auto  recompute activations in the backward pass; auto: on for GPU, off for CPU
#   VERL_DIR         (unset)   a verl source checkout to use instead of the installed package
#   PYTHON           .venv/bin/python if present, else python3
#   SFT_STOP_FILE    (unset)   a path: once that file exists, the run saves a checkpoint at the end of
#                              the current step and exits 0 (sft/verl_plugins/verl_fixes.py; slurm/ batch files set it)

SFT_REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

NPROC_PER_NODE="${NPROC_PER_NODE:-auto}"  # every GPU of the node; the launcher picks for CPU
NNODES="${NNODES:-1}"
NODE_RANK="${NODE_RANK:-0}"
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
MASTER_PORT="${MASTER_PORT:-auto}"  # a free port: two jobs on one node never collide
RDZV_ID="${RDZV_ID:-}"
DEVICE="${DEVICE:-auto}"
MODEL_NAME="${MODEL_NAME:-Qwen/Qwen2.5-0.5B-Instruct}"
TRAIN_FILE="${TRAIN_FILE:-data/sft/train.parquet}"  # what sft/prepare_data.py writes by default
TRUST_REMOTE_CODE="${TRUST_REMOTE_CODE:-0}"  # off: never run a model's code unasked
MAX_LENGTH="${MAX_LENGTH:-auto}"  # sized from the data so verl's truncation=error never fires
MAX_TOKENS_PER_GPU="${MAX_TOKENS_PER_GPU:-auto}"
BATCH_SIZE="${BATCH_SIZE:-auto}"
DYNAMIC_BATCH="${DYNAMIC_BATCH:-auto}"
TRAIN_BATCH_SIZE="${TRAIN_BATCH_SIZE:-64}"  # a common SFT batch; verl's 256 starves small data sets
EPOCHS="${EPOCHS:-3}"
LR_SCHEDULER="${LR_SCHEDULER:-cosine}"  # decays to 0 over the run; verl's default is constant
WARMUP_RATIO="${WARMUP_RATIO:-0.03}"
WEIGHT_DECAY="${WEIGHT_DECAY:-0.01}"
SEED="${SEED:-42}"
PROJECT_NAME="${PROJECT_NAME:-verl-sft}"
_sft_model_dir="${MODEL_NAME%/}"
EXPERIMENT_NAME="${EXPERIMENT_NAME:-${_sft_model_dir##*/}-${SFT_MODE}}"  # same command, same name: resumes
OUTPUT_DIR="${OUTPUT_DIR:-checkpoints/${PROJECT_NAME}/${EXPERIMENT_NAME}}"  # stable: reruns resume
SAVE_FREQ="${SAVE_FREQ:-500}"  # bounds the work a preempted job repeats
TEST_FREQ="${TEST_FREQ:-after_each_epoch}"
LOGGER="${LOGGER:-console}"  # works offline; add wandb or tensorboard when wanted
DRY_RUN="${DRY_RUN:-0}"
ATTN_IMPLEMENTATION="${ATTN_IMPLEMENTATION:-auto}"
COMPUTE_DTYPE="${COMPUTE_DTYPE:-auto}"
REMOVE_PADDING="${REMOVE_PADDING:-auto}"
GRADIENT_CHECKPOINTING="${GRADIENT_CHECKPOINTING:-auto}"
VERL_DIR="${VERL_DIR:-}"
if [[ -x "$SFT_REPO_ROOT/.venv/bin/python" ]]; then
  PYTHON="${PYTHON:-$SFT_REPO_ROOT/.venv/bin/python}"
else
  PYTHON="${PYTHON:-python3}"
fi

export NPROC_PER_NODE NNODES NODE_RANK MASTER_ADDR MASTER_PORT RDZV_ID DEVICE MODEL_NAME TRAIN_FILE \
  TRUST_REMOTE_CODE MAX_LENGTH MAX_TOKENS_PER_GPU BATCH_SIZE DYNAMIC_BATCH TRAIN_BATCH_SIZE EPOCHS LR_SCHEDULER \
  WARMUP_RATIO WEIGHT_DECAY SEED PROJECT_NAME EXPERIMENT_NAME OUTPUT_DIR SAVE_FREQ TEST_FREQ LOGGER \
  DRY_RUN ATTN_IMPLEMENTATION COMPUTE_DTYPE REMOVE_PADDING GRADIENT_CHECKPOINTING VERL_DIR LEARNING_RATE SFT_MODE
# VAL_FILE is exported only when set: unset (auto) and empty (none) mean different things.
if [[ -n "${VAL_FILE+set}" ]]; then export VAL_FILE; fi

# Print the header comment of each file given (the usage doc), without the leading "# ".
sft_print_usage() {
  local file
  for file in "$@"; do
    sed -n '2,/^[^#]/{/^#/!d;s/^# \{0,1\}//;/^shellcheck/d;p}' "$file"
    echo
  done
}

# Hand over to the Python launcher; it execs torchrun, so signals reach the trainer directly.
sft_launch() {
  export PYTHONPATH="$SFT_REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}"
  exec "$PYTHON" -m sft.launcher -- "$@"
}
