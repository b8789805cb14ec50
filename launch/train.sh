#!/usr/bin/env bash
# Trains on the local machine (all local devices).
#   bash launch/train.sh [CONFIG] [WORKDIR] [--config.field=value ...]
# Defaults: configs/default.py and workdirs/<config name>. Running it again resumes.
set -euo pipefail
source "$(dirname "$0")/setup_env.sh"

CONFIG=configs/default.py
WORKDIR=""
if [ $# -gt 0 ] && [[ "$1" != --* ]]; then CONFIG="$1"; shift; fi
if [ $# -gt 0 ] && [[ "$1" != --* ]]; then WORKDIR="$1"; shift; fi
WORKDIR="${WORKDIR:-workdirs/$(basename "$CONFIG" .py)}"

echo "Training $CONFIG in $WORKDIR (TensorBoard: tensorboard --logdir $WORKDIR)"
exec python -m fphtr_jax.main --config="$CONFIG" --workdir="$WORKDIR" "$@"
