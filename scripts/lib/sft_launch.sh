# shellcheck shell=bash
# What scripts/run_sft_training.sh and scripts/run_sft_peft.sh do once they have exported
# SFT_MODE (sourced, not run): `sft_launch LAUNCHER [hydra overrides]` prints LAUNCHER's usage
# for -h/--help, else hands over to sft/launcher.py. Python reads every setting from the
# environment (defaults, checks and auto values: the table in sft/launch/settings.py,
# listed in scripts/lib/sft_env.sh) and execs torchrun, so signals reach the trainer directly.

# shellcheck source=python.sh
source "$(dirname "${BASH_SOURCE[0]}")/python.sh"

# Print the header comment of each file given (the usage doc), without the leading "# ".
sft_print_usage() {
  local file
  for file in "$@"; do
    sed -n '2,/^[^#]/{/^#/!d;s/^# \{0,1\}//;/^shellcheck/d;p}' "$file"
    echo
  done
}

sft_launch() {
  local launcher="$1"
  shift
  if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    sft_print_usage "$launcher" "$SFT_REPO_ROOT/scripts/lib/sft_env.sh"
    exit 0
  fi
  export PYTHONPATH="$SFT_REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}"
  exec "$PYTHON" -m sft.launcher -- "$@"
}
