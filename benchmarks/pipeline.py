r"""Input pipeline throughput: synthetic forms/s and lines/s, 1 thread vs all cores.

  python -m benchmarks.pipeline [--batches=60] [--warmup=10] [--levels=form,line]

Forms use configs/default.py, lines configs/synthetic_line.py (training
batches, augmentation as configured). Prints one JSON line per case, e.g.
  {"case": "form", "threads": 1, "batch_size": 8, "examples_per_s": ...}
then one line per level with the speedup of all cores over one thread.
cpu_ms_per_example (all threads of the process) does not depend on what else
the machine runs; examples_per_s and the speedup do. Word banks are built (and
cached) before the timing.
"""

import json
import os
import time

from absl import app, flags

from configs import default, synthetic_line
from input_pipeline import datasets

_BATCHES = flags.DEFINE_integer("batches", 60, "Batches timed per case.")
_WARMUP = flags.DEFINE_integer("warmup", 10, "Batches drawn before timing.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", None, "Batch size; default: the config's.")
_LEVELS = flags.DEFINE_list("levels", ["form", "line"], "Levels to time: form, line.")

_CONFIGS = {"form": default.get_config, "line": synthetic_line.get_config}


def measure(config, num_batches: int, warmup: int) -> tuple[float, float]:
  """(examples per second of wall time, CPU milliseconds per example)."""
  train_ds, _ = datasets.create_datasets(config)
  batches = train_ds.as_numpy_iterator()
  for _ in range(warmup):
    next(batches)
  start, start_cpu = time.perf_counter(), time.process_time()
  for _ in range(num_batches):
    next(batches)
  wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
  num_examples = num_batches * config.train.batch_size
  return num_examples / wall, 1000.0 * cpu / num_examples


def main(argv):
  del argv
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  for level in _LEVELS.value:
    rates = {}
    for threads in (1, cores):
      config = _CONFIGS[level]()
      config.data.num_parallel_calls = threads
      if _BATCH_SIZE.value:
        config.train.batch_size = _BATCH_SIZE.value
      rates[threads], cpu_ms = measure(config, _BATCHES.value, _WARMUP.value)
      print(
        json.dumps(
          {
            "case": level,
            "threads": threads,
            "batch_size": config.train.batch_size,
            "image": [config.data.image_height, config.data.image_width],
            "examples_per_s": round(rates[threads], 1),
            "cpu_ms_per_example": round(cpu_ms, 2),
          }
        ),
        flush=True,
      )
    print(
      json.dumps(
        {"case": level, "speedup": round(rates[cores] / rates[1], 2), "threads": [1, cores]}
      ),
      flush=True,
    )


if __name__ == "__main__":
  app.run(main)
