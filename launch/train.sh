#!/usr/bin/env bash
# Trains on the local machine (all local devices).
#   bash launch/train.sh [CONFIG] [WORKDIR] [--config.field=value ...]
# Without CONFIG: the best recipe for this machine, configs/cpu_fullpage.py on
# a CPU, configs/fullpage.py where JAX sees a GPU or TPU. WORKDIR defaults to
# workdirs/<config name>. Running it again resumes.
set -euo pipefail
source "$(dirname "$0")/setup_env.sh"

CONFIG=""
WORKDIR=""
if [ $# -gt 0 ] && [[ "$1" != --* ]]; then CONFIG="$1"; shift; fi
if [ $# -gt 0 ] && [[ "$1" != --* ]]; then WORKDIR="$1"; shift; fi
if [ -z "$CONFIG" ]; then
  BACKEND="$(python -c 'import jax; print(jax.default_backend())' 2>/dev/null || echo cpu)"
  if [ "$BACKEND" = "cpu" ]; then
    CONFIG=configs/cpu_fullpage.py
  else
    CONFIG=configs/fullpage.py
  fi
  echo "No config given: JAX runs on '$BACKEND', so training $CONFIG, the recipe for it."
fi
WORKDIR="${WORKDIR:-workdirs/$(basename "$CONFIG" .py)}"

echo "Training $CONFIG in $WORKDIR (TensorBoard: tensorboard --logdir $(dirname "$WORKDIR"))"
exec python -m fphtr_jax.main --config="$CONFIG" --workdir="$WORKDIR" "$@"
