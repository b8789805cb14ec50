"""Fully sharded data parallel: the default run with parameters and optimizer
state split over the `fsdp` mesh axis, as well as the batch.

Every large parameter has a dimension named "embed" (d_model, the decoder and
the encoder's projection) or "conv_out" (ResNet channels), and those map to
"fsdp"; each device keeps 1/fsdp of them and XLA gathers a layer's weights
when it needs them. The mesh axis must divide d_model (260 = 4 x 65: fsdp of
1, 2 or 4) and the ResNet widths; put the rest of the devices on `data`:

  python -m fphtr_jax.main --config=configs/fsdp.py --workdir=/tmp/fphtr_fsdp
  # 8 devices, d_model 260: 4-way FSDP inside 2-way data parallelism
  python -m fphtr_jax.main --config=configs/fsdp.py --workdir=/tmp/fphtr_fsdp \
      --config.mesh.data=2 --config.mesh.fsdp=4
"""

from configs import default

# Logical axis -> mesh axis, replacing the default's None. Rule order decides
# which dimension of a kernel is split: "embed" before "mlp".
FSDP_RULES = {"embed": "fsdp", "mlp": "fsdp", "conv_out": "fsdp"}


def get_config():
  config = default.get_config()
  config.mesh.data = 1
  config.mesh.fsdp = -1  # all devices
  config.mesh.tensor = 1
  config.mesh.rules = tuple((name, FSDP_RULES.get(name, axes)) for name, axes in config.mesh.rules)
  return config
