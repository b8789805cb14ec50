#!/usr/bin/env bash
# Cloud TPU VM slice: create it, install the project on every host, train.
#   bash launch/tpu_vm.sh create                 # the slice (once)
#   bash launch/tpu_vm.sh install                # code + jax[tpu] on every host
#   bash launch/tpu_vm.sh train [CONFIG] [--config.field=value ...]
#   bash launch/tpu_vm.sh ssh 'COMMAND'          # any command on every host
#   bash launch/tpu_vm.sh delete
# Settings (environment): TPU_NAME, ZONE, ACCELERATOR_TYPE, TPU_VERSION
# (runtime image), PROJECT (gcloud's default when unset), WORKDIR: where all
# hosts write, a gs:// bucket (gs://BUCKET/fphtr) since a slice has no shared disk.
# Every host runs the same command; jax.distributed finds the others itself.
# requirements.txt pins the CPU build of jax; install adds jax[tpu] of that version.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TPU_NAME="${TPU_NAME:-fphtr}"
ZONE="${ZONE:-us-central2-b}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-32}"
TPU_VERSION="${TPU_VERSION:-tpu-ubuntu2204-base}"
REMOTE_DIR="fphtr-jax"
GCLOUD=(gcloud compute tpus tpu-vm)
PROJECT_ARGS=()
if [ -n "${PROJECT:-}" ]; then PROJECT_ARGS=(--project="$PROJECT"); fi

on_all_hosts() {
  "${GCLOUD[@]}" ssh "$TPU_NAME" --zone="$ZONE" "${PROJECT_ARGS[@]}" --worker=all --command="$1"
}

command="${1:-}"; shift || true
case "$command" in
  create)
    "${GCLOUD[@]}" create "$TPU_NAME" --zone="$ZONE" "${PROJECT_ARGS[@]}" \
        --accelerator-type="$ACCELERATOR_TYPE" --version="$TPU_VERSION"
    ;;
  install)
    # The working tree, without local environments, checkpoints or caches.
    tar -C "$ROOT" --exclude=.venv --exclude=.git --exclude=workdirs --exclude=__pycache__ \
        -czf /tmp/fphtr-jax.tgz .
    "${GCLOUD[@]}" scp /tmp/fphtr-jax.tgz "$TPU_NAME":/tmp/ --zone="$ZONE" "${PROJECT_ARGS[@]}" \
        --worker=all
    on_all_hosts "mkdir -p ~/$REMOTE_DIR && tar -C ~/$REMOTE_DIR -xzf /tmp/fphtr-jax.tgz && \
        cd ~/$REMOTE_DIR && source launch/setup_env.sh && \
        python -m pip install --quiet \"jax[tpu]==\$(sed -n 's/^jax==//p' requirements.txt)\" && \
        python -c 'import jax; print(jax.process_index(), jax.local_devices())'"
    ;;
  train)
    CONFIG=configs/default.py
    if [ $# -gt 0 ] && [[ "$1" != --* ]]; then CONFIG="$1"; shift; fi
    : "${WORKDIR:?set WORKDIR to a gs:// folder that every host can write, e.g. gs://BUCKET/fphtr}"
    # Quoted once for the remote shell; the process keeps running if ssh drops.
    args="$(printf ' %q' "$@")"
    on_all_hosts "cd ~/$REMOTE_DIR && source launch/setup_env.sh && \
        nohup python -m fphtr_jax.main --config=$CONFIG --workdir=$WORKDIR --distributed=on \
        $args > ~/fphtr-train.log 2>&1 & sleep 5; tail -n 5 ~/fphtr-train.log"
    echo "Training on $TPU_NAME; logs: bash $0 ssh 'tail -f ~/fphtr-train.log'"
    ;;
  ssh)
    on_all_hosts "${1:?a command to run on every host}"
    ;;
  delete)
    "${GCLOUD[@]}" delete "$TPU_NAME" --zone="$ZONE" "${PROJECT_ARGS[@]}" --quiet
    ;;
  *)
    sed -n '2,12p' "$0" >&2
    exit 2
    ;;
esac
