"""The optimizer of config.train: Adam(W), warmup, cosine decay, clipping, frozen groups."""

import functools

import optax

from fphtr_jax import finetune


def create_optimizer(train_config) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Adam(W) with an optional linear warmup, cosine decay and global-norm clipping.

  The parameter groups of train_config.freeze get no update at all (no weight
  decay either) and no optimizer state, and their gradients do not count
  towards the clipping norm.

  Returns (optimizer, learning-rate schedule of the step).
  """
  lr, warmup = train_config.learning_rate, train_config.warmup_steps
  if train_config.schedule == "cosine":
    schedule = optax.warmup_cosine_decay_schedule(
      0.0, lr, warmup, decay_steps=max(train_config.num_steps, warmup + 1)
    )
  elif warmup:
    schedule = optax.join_schedules(
      [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup]
    )
  else:
    schedule = optax.constant_schedule(lr)
  if train_config.optimizer == "adamw":
    optimizer = optax.adamw(schedule, weight_decay=train_config.weight_decay)
  else:
    optimizer = optax.adam(schedule)
  if train_config.grad_clip_norm:
    optimizer = optax.chain(optax.clip_by_global_norm(train_config.grad_clip_norm), optimizer)
  if train_config.freeze:
    optimizer = optax.transforms.partition(
      {"train": optimizer, "freeze": optax.set_to_zero()},
      functools.partial(finetune.frozen_labels, freeze=tuple(train_config.freeze)),
    )
  return optimizer, schedule
