#!/usr/bin/env bash
# Trains on N simulated CPU devices, to try a sharding anywhere.
#   bash launch/cpu_mesh.sh N [CONFIG] [WORKDIR] [--config.field=value ...]
# e.g. FSDP over 4 of 8 devices with the tiny model:
#   bash launch/cpu_mesh.sh 8 configs/tiny.py /tmp/tiny_fsdp \
#       --config.mesh.data=2 --config.mesh.fsdp=4 \
#       --config.mesh.rules='(("batch",("data","fsdp")),("embed","fsdp"),("mlp","fsdp"),("conv_out","fsdp"))'
# The devices share the host's cores: this checks layouts and numerics, not speed.
set -euo pipefail
if [ $# -lt 1 ] || ! [[ "$1" =~ ^[0-9]+$ ]]; then
  echo "usage: $0 NUM_DEVICES [CONFIG] [WORKDIR] [--config.field=value ...]" >&2
  exit 2
fi
NUM_DEVICES="$1"; shift
source "$(dirname "$0")/setup_env.sh"

CONFIG=configs/tiny.py
WORKDIR=""
if [ $# -gt 0 ] && [[ "$1" != --* ]]; then CONFIG="$1"; shift; fi
if [ $# -gt 0 ] && [[ "$1" != --* ]]; then WORKDIR="$1"; shift; fi
WORKDIR="${WORKDIR:-workdirs/$(basename "$CONFIG" .py)_cpu${NUM_DEVICES}}"

export JAX_PLATFORMS=cpu
export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${NUM_DEVICES}"
echo "Training $CONFIG on $NUM_DEVICES simulated CPU devices in $WORKDIR"
exec python -m fphtr_jax.main --config="$CONFIG" --workdir="$WORKDIR" --distributed=off "$@"
