r"""The image encoder's share of the train step: the ResNet trunk alone, JAX against PyTorch.

  python -m benchmarks.encoder_step [--cases=resnet18_line,resnet18_page] [--steps=5]

For each case of `benchmarks/train_step.py` (encoder, batch, image size),
times the forward and backward pass of the ResNet trunk alone (BatchNorm in
train mode, the gradient of the mean squared features; no decoder, no
optimizer) in JAX (`fphtr_jax.models.resnet`, jitted) and in the reference
PyTorch trunk (`torch_reference.ResNetTrunk`), alternately, as train_step.py
times the whole steps. The trunk is almost all convolutions, so the ratio
says how XLA's CPU convolutions compare with PyTorch's (oneDNN on a CPU);
set beside train_step.py's whole-step ratio of the same case, it splits the
step into the encoder and the rest.

Needs torch (`pip install torch==2.13.0`). Prints one JSON line per case:
medians over --steps steps after --warmup, wall and CPU seconds (all threads
of the process) of each framework, and `speedup_vs_torch_cpu` (PyTorch's CPU
time over JAX's) and `speedup_vs_torch` (the same for wall time).
"""

import dataclasses
import json
import statistics

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import train_step
from fphtr_jax.models import resnet


def jax_trunk_step(case: train_step.Case, images: np.ndarray):
  """A function running the JAX trunk's forward and backward pass on `images`."""
  block, stage_sizes = resnet.RESNETS[case.encoder]
  model = resnet.ResNet(block, stage_sizes)
  variables = model.init(jax.random.key(0), images, train=False)

  def loss(params, batch_stats, images):
    features, updates = model.apply(
      {"params": params, "batch_stats": batch_stats}, images, train=True, mutable=["batch_stats"]
    )
    return jnp.mean(jnp.square(features)), updates

  grad = jax.jit(jax.value_and_grad(loss, has_aux=True))
  images = jnp.asarray(images)

  def step():
    jax.block_until_ready(grad(variables["params"], variables["batch_stats"], images))

  return step


def torch_trunk_step(case: train_step.Case, images: np.ndarray):
  """The same for the reference PyTorch trunk."""
  import torch  # pylint: disable=g-import-not-at-top

  from benchmarks import torch_reference  # pylint: disable=g-import-not-at-top

  trunk = torch_reference.ResNetTrunk(case.encoder).train()
  images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()

  def step():
    trunk.zero_grad(set_to_none=True)
    torch.mean(torch.square(trunk(images))).backward()

  return step


def run_case(name: str, case: train_step.Case) -> dict:
  rng = np.random.default_rng(flags.FLAGS.seed)
  images = rng.normal(size=(case.batch, case.height, case.width, 1)).astype(np.float32)
  steps = {"jax": jax_trunk_step(case, images), "torch": torch_trunk_step(case, images)}
  for _ in range(flags.FLAGS.warmup):
    for step in steps.values():
      step()
  times = {name: [] for name in steps}
  for _ in range(flags.FLAGS.steps):
    for framework, step in steps.items():
      times[framework].append(train_step.seconds(step))
  result = {
    "case": name,
    **dataclasses.asdict(case),
    "backend": jax.default_backend(),
    "steps": flags.FLAGS.steps,
  }
  for framework, measured in times.items():
    result[f"{framework}_trunk_s"] = round(statistics.median(wall for wall, _ in measured), 4)
    result[f"{framework}_trunk_cpu_s"] = round(statistics.median(cpu for _, cpu in measured), 4)
  result["speedup_vs_torch"] = round(result["torch_trunk_s"] / result["jax_trunk_s"], 3)
  result["speedup_vs_torch_cpu"] = round(result["torch_trunk_cpu_s"] / result["jax_trunk_cpu_s"], 3)
  return result


def main(argv):
  del argv
  unknown = [name for name in flags.FLAGS.cases if name not in train_step.CASES]
  if unknown:
    raise app.UsageError(
      f"--cases has unknown cases {unknown}; choose from {list(train_step.CASES)}."
    )
  if train_step.load_torch(flags.FLAGS.torch_threads) is None:
    raise app.UsageError("benchmarks.encoder_step needs torch: pip install torch==2.13.0")
  for name in flags.FLAGS.cases:
    print(json.dumps(run_case(name, train_step.CASES[name])), flush=True)


if __name__ == "__main__":
  app.run(main)
