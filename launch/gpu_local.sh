#!/usr/bin/env bash
# Trains on all GPUs of this machine: one process, one device per GPU; the
# config's mesh spreads over them (default: data parallel).
#   bash launch/gpu_local.sh [CONFIG] [WORKDIR] [--config.field=value ...]
#   CUDA_VISIBLE_DEVICES=0,1 bash launch/gpu_local.sh configs/fullpage.py --config.mesh.preset=fsdp
#
# requirements.txt pins the CPU build of jax. On first use this installs the
# CUDA 12 build of the same version into the environment:
#   pip install "jax[cuda12]==<the pinned version>"
# (the NVIDIA libraries come from pip; a driver for CUDA 12 is all the machine needs).
set -euo pipefail
source "$(dirname "$0")/setup_env.sh"

JAX_VERSION="$(sed -n 's/^jax==//p' requirements.txt)"
if ! python -c "import jax; assert jax.default_backend() == 'gpu'" >/dev/null 2>&1; then
  echo "Installing jax[cuda12]==$JAX_VERSION into $VIRTUAL_ENV ..."
  python -m pip install --quiet "jax[cuda12]==$JAX_VERSION"
fi

CONFIG=configs/default.py
WORKDIR=""
if [ $# -gt 0 ] && [[ "$1" != --* ]]; then CONFIG="$1"; shift; fi
if [ $# -gt 0 ] && [[ "$1" != --* ]]; then WORKDIR="$1"; shift; fi
WORKDIR="${WORKDIR:-workdirs/$(basename "$CONFIG" .py)}"

# JAX takes most of the GPU memory up front; the input pipeline stays on the CPU.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"
python -c "import jax; print('GPUs:', jax.devices())"
echo "Training $CONFIG in $WORKDIR (TensorBoard: tensorboard --logdir $WORKDIR)"
exec python -m fphtr_jax.main --config="$CONFIG" --workdir="$WORKDIR" --distributed=off "$@"
