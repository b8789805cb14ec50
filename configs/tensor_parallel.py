"""Tensor parallel decoder: the default run with the decoder's attention heads
and MLP split over the `tensor` mesh axis (Megatron-style), the batch over `data`.

Each device of a `tensor` group holds num_heads / tensor heads of every
attention layer and mlp_dim / tensor units of every MLP; the group sees the
same examples. `tensor` must divide model.num_heads (4: 1, 2 or 4) and
model.mlp_dim (1024):

  python -m fphtr_jax.main --config=configs/tensor_parallel.py --workdir=/tmp/fphtr_tp
  python -m fphtr_jax.main --config=configs/tensor_parallel.py --workdir=/tmp/fphtr_tp \
      --config.mesh.tensor=4
"""

from configs import default

# Logical axis -> mesh axis, replacing the default's None.
TENSOR_RULES = {"heads": "tensor", "mlp": "tensor"}


def get_config():
  config = default.get_config()
  config.mesh.data = -1  # the devices left over
  config.mesh.fsdp = 1
  config.mesh.tensor = 2
  config.mesh.rules = tuple(
      (name, TENSOR_RULES.get(name, axes)) for name, axes in config.mesh.rules)
  return config
