# shellcheck shell=bash
# Shared settings of scripts/run_sft_training.sh and scripts/run_sft_peft.sh (sourced, not run).
#
# Every variable below can be set in the environment; the table gives its default.
# The launchers set SFT_MODE (full | lora); their own settings (LEARNING_RATE, LoRA's) are in
# their headers. `sft/launcher.py` validates all of them, resolves the "auto" values, prints
# the settings and the exact command, and starts torchrun.
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
#   TRAIN_FILE       data/sft/train.parquet  Parquet with a `messages` column (sft/prepare_data.py)
#   VAL_FILE         (unset)   unset: TRAIN_FILE's sibling val.parquet if it exists; empty: no validation
#   TRUST_REMOTE_CODE 0        1 lets transformers run code shipped with the model
#   MAX_LENGTH       auto      longest sample in tokens; auto: manifest.json's recommendation, else 2048
#   MAX_TOKENS_PER_GPU auto    tokens packed per micro batch per GPU (>= MAX_LENGTH; setting it turns DYNAMIC_BATCH
#                              auto on); auto: manifest, else max(8192, MAX_LENGTH); at most BATCH_SIZE x MAX_LENGTH
#                              when BATCH_SIZE is set
# Optimisation:
#   BATCH_SIZE       auto      micro batch per device in samples (DYNAMIC_BATCH off, and validation); set with
#                              DYNAMIC_BATCH on, it caps MAX_TOKENS_PER_GPU at BATCH_SIZE x MAX_LENGTH (lower it on OOM);
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
#   DRY_RUN          0         1: print settings, command and composed config, also build verl's typed
#                              config, and exit without training (every launch checks that the config composes);
#                              with DEVICE=cuda where no GPU is visible, the GPU job's configuration (GPUs assumed)
#   ATTN_IMPLEMENTATION auto   auto: flash_attention_2 on a GPU with flash-attn installed, else sdpa
#   COMPUTE_DTYPE    auto      auto | bf16 | fp32 compute (auto: bf16 on GPU, fp32 on CPU, where bf16 is emulated)
#   REMOVE_PADDING   auto      1: pack samples without padding; auto: on with flash attention, off with sdpa
#                              (sdpa attends over the whole pack, quadratic in MAX_TOKENS_PER_GPU)
#   GRADIENT_CHECKPOINTING auto  recompute activations in the backward pass; auto: on for GPU, off for CPU
#   VERL_DIR         (unset)   a verl source checkout to use instead of the installed package
#   PYTHON           .venv/bin/python if present, else python3
#   SFT_STOP_FILE    (unset)   a path: once that file exists, the run saves a checkpoint at the end of
#                              the current step and exits 0 (sft/verl_plugins/stop_file.py; slurm/ batch files set it)
#   SFT_SHARDED_LOADING (unset)  0: load the model as verl does (rank 0 reads it whole, then broadcasts);
#                              default: each rank reads only its shard from the safetensors files
#   SFT_FROZEN_UPCAST (unset)  0: a CPU LoRA run gathers its frozen bf16 base in fp32 as verl does (and
#                              its embedding and LM head whole); default: gathered in bf16, computed in fp32 block by block
#   SFT_VOCAB_PARALLEL (unset) 0: a CPU LoRA run on several processes all-gathers its frozen embedding
#                              and LM head (FSDP2); default: each process keeps its rows, computed vocabulary-parallel
#   SFT_LORA_INPUT_GRADS (unset)  1: keep verl's enable_input_require_grads hook (LoRA); default: removed
#                              (only reentrant checkpointing needs it; FSDP2 re-gathers the embedding for it)

# shellcheck source=python.sh
source "$(dirname "${BASH_SOURCE[0]}")/python.sh"

# The listing above is the table in sft/launch/settings.py, which holds the defaults
# (tests/test_launchers.py checks that the two agree). The launchers never source this file:
# bash code that needs the settings' values before launching (slurm/lib/sft_slurm.sh) does.
# After setting SFT_MODE, sourcing it exports every setting of that mode, defaults applied.
# VAL_FILE stays as it is: unset (auto) and empty (none) mean different things.
export SFT_MODE

_sft_settings=()
mapfile -d '' _sft_settings < <(PYTHONPATH="$SFT_REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}" \
  "$PYTHON" -m sft.launch.settings --export)
if ((${#_sft_settings[@]} == 0 || ${#_sft_settings[@]} % 2)); then
  echo "scripts/lib/sft_env.sh: \`$PYTHON -m sft.launch.settings --export\` failed (SFT_MODE=$SFT_MODE)." \
    "Set PYTHON to an interpreter with this project's requirements (scripts/setup_env.sh)." >&2
  exit 2  # refused before any work (sft/common/errors.py EXIT_CODES)
fi
for ((_sft_i = 0; _sft_i < ${#_sft_settings[@]}; _sft_i += 2)); do
  printf -v "${_sft_settings[_sft_i]}" '%s' "${_sft_settings[_sft_i + 1]}"
  export "${_sft_settings[_sft_i]}"
done
unset _sft_settings _sft_i
