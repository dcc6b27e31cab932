# shellcheck shell=bash
# Shared body of slurm/sft_training.slurm and slurm/sft_peft.slurm (sourced, not run).
#
# The batch file calls `sft_slurm_main LAUNCHER SFT_MODE [hydra overrides]`. This runs on the
# first node of the allocation (where Slurm starts batch scripts) and:
#   1. takes the topology from Slurm: NNODES=$SLURM_NNODES, MASTER_ADDR = first host of
#      `scontrol show hostnames "$SLURM_JOB_NODELIST"`, RDZV_ID=$SLURM_JOB_ID (c10d rendezvous),
#      MASTER_PORT = a free port on this node unless set;
#   2. resolves every other setting with the launchers' own defaults (scripts/lib/sft_env.sh),
#      so OUTPUT_DIR is stable across requeues (not derived from the job id) and resubmitting
#      the same command resumes;
#   3. refuses to start when another live job writes the same OUTPUT_DIR;
#   4. runs LAUNCHER once per node: srun --kill-on-bad-exit=1 --ntasks-per-node=1, overrides last;
#   5. on SIGUSR1 (sent by #SBATCH --signal=B:USR1@<seconds> before the time limit) creates
#      SFT_STOP_FILE; sft/verl_plugins/stop_file.py then saves a checkpoint at the end of the current step
#      and the trainer exits; the job requeues itself with `scontrol requeue` while
#      SLURM_RESTART_COUNT < MAX_REQUEUES, and resumes from that step. Without a checkpoint
#      within STOP_TIMEOUT seconds it requeues anyway (the last SAVE_FREQ checkpoint remains).
#      Preemption and `scontrol requeue` by others stop the job at once: it resumes from the
#      last SAVE_FREQ checkpoint, repeating at most SAVE_FREQ steps (the kill can land mid-save).
#
# Settings of the batch files (environment variable, default, meaning), besides every setting
# of the launchers (scripts/run_sft_training.sh --help):
#   REPO_DIR      $SLURM_SUBMIT_DIR  the verl-sft checkout (sbatch runs a copy of the batch file)
#   MASTER_PORT   auto      rendezvous port on the first node; auto: a free port there
#   MAX_REQUEUES  3         times a job requeues itself after the time-limit signal
#   STOP_TIMEOUT  240       seconds to wait for the checkpoint after the signal before requeueing
#                           anyway; keep it below the lead time of --signal (600). Jobs with a
#                           time limit under ~15 min also want a shorter lead: --signal=B:USR1@60
# Set by this file from Slurm, not settable: NNODES, MASTER_ADDR, RDZV_ID, SFT_STOP_FILE.

MAX_REQUEUES="${MAX_REQUEUES:-3}"  # bounds a job that can never finish in its time limit
STOP_TIMEOUT="${STOP_TIMEOUT:-240}"  # a step plus a checkpoint of a large model fit in 4 minutes

SFT_SLURM_STOP_REQUESTED=0  # set by the USR1 trap
SFT_SLURM_STOP_REQUESTED_AT=0  # $SECONDS when it was

sft_slurm_log() {
  echo "[verl-sft slurm] $*"
}

sft_slurm_fail() {
  echo "[verl-sft slurm] error: $*" >&2
  exit 1
}

# A free TCP port on this node (the head node: Slurm runs the batch script on the first node).
sft_slurm_free_port() {
  "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])'
}

# USR1 (the time limit is near): ask the trainer to save a checkpoint at the end of its step and exit.
sft_slurm_on_usr1() {
  SFT_SLURM_STOP_REQUESTED=1
  SFT_SLURM_STOP_REQUESTED_AT=$SECONDS
  sft_slurm_log "USR1 received (time limit near): asking the trainer to checkpoint and stop"
  if [[ -n "${SFT_STOP_FILE:-}" ]]; then
    touch "$SFT_STOP_FILE" || true  # the directory is missing only in a dry run
  fi
}

# Fail when another live job (running, pending or requeued) writes OUTPUT_DIR; then claim it.
sft_slurm_claim_output_dir() {
  local owner_file="$OUTPUT_DIR/.slurm_job_id" owner state
  mkdir -p "$OUTPUT_DIR"
  if [[ -f "$owner_file" ]]; then
    owner="$(<"$owner_file")"
    if [[ "$owner" != "$SLURM_JOB_ID" ]]; then
      state="$(squeue --noheader --jobs="$owner" --format=%T 2>/dev/null || true)"
      if [[ -n "$state" ]]; then
        sft_slurm_fail "OUTPUT_DIR $OUTPUT_DIR is in use by job $owner ($state); two jobs in one directory" \
          "overwrite each other's checkpoints. Set EXPERIMENT_NAME or OUTPUT_DIR for this run, or wait for job $owner."
      fi
    fi
  fi
  echo "$SLURM_JOB_ID" >"$owner_file.tmp.$SLURM_JOB_ID"
  mv -f "$owner_file.tmp.$SLURM_JOB_ID" "$owner_file"
}

sft_slurm_main() {
  local launcher="$1" mode="$2"
  shift 2
  # Trap USR1 first: with a time limit close to --signal's lead time it arrives at once, and
  # bash's default for it would end the job.
  trap sft_slurm_on_usr1 USR1
  if [[ -z "${SLURM_JOB_ID:-}" ]]; then
    sft_slurm_fail "not inside a Slurm job. Submit with sbatch (sbatch slurm/sft_training.slurm), or run" \
      "scripts/run_sft_training.sh directly."
  fi
  local restart="${SLURM_RESTART_COUNT:-0}"
  sft_slurm_log "job $SLURM_JOB_ID (${SLURM_JOB_NAME:-}) start $((restart + 1)) on $(hostname -s) at $(date '+%F %T')"

  # 1. Topology from Slurm.
  local hosts
  mapfile -t hosts < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
  [[ ${#hosts[@]} -gt 0 ]] || sft_slurm_fail "scontrol show hostnames returned nothing for '$SLURM_JOB_NODELIST'."
  NNODES="$SLURM_NNODES"
  MASTER_ADDR="${hosts[0]}"
  RDZV_ID="$SLURM_JOB_ID"
  export NNODES MASTER_ADDR RDZV_ID PYTHONUNBUFFERED=1  # unbuffered: the log shows each step as it ends

  # 2. Every other setting, with the launchers' defaults (SFT_MODE picks EXPERIMENT_NAME's suffix).
  SFT_MODE="$mode"
  # shellcheck source=scripts/lib/sft_env.sh source-path=SCRIPTDIR/../..
  source "$REPO_DIR/scripts/lib/sft_env.sh"
  if [[ "$MASTER_PORT" == auto ]]; then
    MASTER_PORT="$(sft_slurm_free_port)"
  fi

  # 3. One job per OUTPUT_DIR (a dry run writes nothing and claims nothing).
  local dry_run=0
  # shellcheck disable=SC2153  # DRY_RUN is exported by sft_env.sh from the settings table
  case "${DRY_RUN,,}" in 1 | true | yes | on) dry_run=1 ;; esac
  if [[ "$dry_run" == 0 ]]; then
    sft_slurm_claim_output_dir
  fi
  SFT_STOP_FILE="$(realpath -m "$OUTPUT_DIR")/stop_requested"
  export SFT_STOP_FILE
  rm -f "$SFT_STOP_FILE"  # a request of an earlier start was handled (or is obsolete)
  if ((SFT_SLURM_STOP_REQUESTED && !dry_run)); then
    touch "$SFT_STOP_FILE"  # the signal came during the setup above
  fi

  local srun_args=(--kill-on-bad-exit=1 --nodes="$SLURM_NNODES" --ntasks="$SLURM_NNODES" --ntasks-per-node=1)
  if [[ -n "${SLURM_CPUS_PER_TASK:-}" ]]; then
    srun_args+=(--cpus-per-task="$SLURM_CPUS_PER_TASK")  # srun does not inherit it from sbatch (Slurm >= 22.05)
  fi
  local command=(srun "${srun_args[@]}" "$SFT_REPO_ROOT/$launcher" "$@")
  sft_slurm_log "nodes: ${hosts[*]} (NNODES=$NNODES), rendezvous: c10d $MASTER_ADDR:$MASTER_PORT id $RDZV_ID"
  sft_slurm_log "OUTPUT_DIR: $(realpath -m "$OUTPUT_DIR") (resumes from its latest checkpoint); requeues: $restart of $MAX_REQUEUES"
  sft_slurm_log "command: $(printf '%q ' "${command[@]}")"

  # 4. Train. The batch shell waits in short sleeps so that the USR1 trap runs at once.
  "${command[@]}" &
  local srun_pid=$! timed_out=0 status=0
  while kill -0 "$srun_pid" 2>/dev/null; do
    if ((SFT_SLURM_STOP_REQUESTED && SECONDS - SFT_SLURM_STOP_REQUESTED_AT > STOP_TIMEOUT)); then
      sft_slurm_log "no checkpoint within STOP_TIMEOUT=${STOP_TIMEOUT}s; stopping the training (the last SAVE_FREQ checkpoint remains)"
      kill -TERM "$srun_pid" 2>/dev/null || true
      timed_out=1
      break
    fi
    sleep 2 &
    wait "$!" || true  # returns early when the trap runs
  done
  if ((!timed_out)); then
    wait "$srun_pid" || status=$?
  fi

  # 5. Finished, failed, or stopped for the time limit.
  if ((!SFT_SLURM_STOP_REQUESTED || dry_run)); then
    sft_slurm_log "training exited with status $status at $(date '+%F %T')"
    return "$status"
  fi
  if ((!timed_out && status == 0)) && [[ -e "$SFT_STOP_FILE" ]]; then
    rm -f "$SFT_STOP_FILE"  # the trainer deletes it when it stops for it
    sft_slurm_log "training finished before the stop request was seen; nothing to resume"
    return 0
  fi
  if ((restart >= MAX_REQUEUES)); then
    sft_slurm_log "requeue limit reached (MAX_REQUEUES=$MAX_REQUEUES). The latest checkpoint is in $OUTPUT_DIR:" \
      "resubmit the same command to continue."
    return 1
  fi
  sft_slurm_log "requeueing job $SLURM_JOB_ID (requeue $((restart + 1)) of $MAX_REQUEUES); it resumes from the latest checkpoint"
  scontrol requeue "$SLURM_JOB_ID" || sft_slurm_fail "scontrol requeue failed; resubmit the same command to continue."
  return 0
}
