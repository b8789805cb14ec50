r"""Exports a trained checkpoint as a model folder: weights, config and vocabulary, nothing else.

  python -m fphtr_jax.export --workdir=W [--checkpoint=best|latest|STEP] --output=DIR \
      [--dtype=float16]

The folder holds what decoding needs and no optimizer state:

  DIR/weights.msgpack  parameters (in --dtype, float16 by default: half the
                       size) and BatchNorm statistics (float32), Flax msgpack
  DIR/config.json      the run's resolved config
  DIR/vocab.json       its vocabulary
  DIR/model.json       where it came from: the checkpoint's step, which one,
                       its parameter count and dtype

`predict --model=DIR` and `evaluate --model=DIR` read it instead of a
workdir (`inference.load_model`); the figures measured on it can be written
beside it (`evaluate --model=DIR` writes DIR/evaluations/).
"""

import json
import os

from absl import app, flags, logging
import flax
import jax
import jax.numpy as jnp
import numpy as np

from fphtr_jax import cli, inference, sharding

FLAGS = flags.FLAGS


def define_flags():
  """The command's own flags, defined when it runs (not on import: `export` is a library
  function too, and --output is also another command's flag)."""
  flags.DEFINE_string("output", None, "The model folder to write (made if missing).")
  flags.DEFINE_enum("dtype", "float16", ["float16", "bfloat16", "float32"], "Dtype of the weights.")


def export(run: inference.Run, output: str, dtype: str = "float16") -> dict:
  """Writes `run`'s weights (parameters in `dtype`), config and vocabulary to `output`.

  Returns the contents of model.json.
  """
  os.makedirs(output, exist_ok=True)
  # Whole arrays on the host, also from a multi-host mesh (every process calls export).
  params = jax.tree.map(lambda x: x.astype(jnp.dtype(dtype)), sharding.to_host(run.state.params))
  batch_stats = jax.tree.map(
    lambda x: x.astype(np.float32), sharding.to_host(run.state.batch_stats)
  )
  payload = flax.serialization.msgpack_serialize(
    {"params": flax.serialization.to_state_dict(params), "batch_stats": batch_stats}
  )
  with open(os.path.join(output, inference.WEIGHTS_FILENAME), "wb") as f:
    f.write(payload)
  with open(os.path.join(output, inference.CONFIG_FILENAME), "w", encoding="utf-8") as f:
    f.write(run.config.to_json_best_effort(indent=1))
  run.tokenizer.save(output)
  info = {
    "step": run.step,
    "checkpoint": run.which,
    "dtype": dtype,
    "params": int(sum(x.size for x in jax.tree.leaves(params))),
    "weights_bytes": len(payload),
  }
  with open(os.path.join(output, inference.MODEL_INFO_FILENAME), "w", encoding="utf-8") as f:
    json.dump(info, f, indent=1)
  return info


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments {argv[1:]}: export takes only flags.")
  if not FLAGS.output:
    cli.fail("--output is required: the model folder to write.")
  if not FLAGS.workdir:
    cli.fail("--workdir is required: the workdir of the training run to export.")
  try:
    cli.check_checkpoint(FLAGS.workdir, FLAGS.checkpoint)
    cli.make_writable_dir(FLAGS.output, "output")
  except cli.CommandLineError as error:
    cli.fail(str(error))
  try:
    run = inference.restore_run(FLAGS.workdir, FLAGS.config, FLAGS.checkpoint)
  except (ValueError, OSError) as error:
    cli.fail(str(error), status=1)
  info = export(run, FLAGS.output, FLAGS.dtype)
  logging.info("Exported step %d (%s) to %s.", run.step, run.which, FLAGS.output)
  print(json.dumps({"output": FLAGS.output, **info}))


if __name__ == "__main__":
  define_flags()
  jax.config.config_with_absl()
  app.run(main, flags_parser=cli.parse_flags_with_run_config)
