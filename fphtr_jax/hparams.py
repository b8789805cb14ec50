"""A run's hyperparameters and hardware for TensorBoard's HParams tab.

Each training run writes, beside its summaries, an experiment summary that
declares its metrics (validation CER first) and its hyperparameters (every
config field, and `run.*`: backend, device kind and count), and a session
with their values. Declaring the metrics is what lets the HParams tab show
them when TensorBoard is opened on the workdir itself (the run is then named
`.`, which TensorBoard 2.21 does not resolve on its own) as well as on a
folder of runs. The HParams tab shows five hyperparameter columns at first:
those marked as differing, then the others by name. A run marks SHOWN_FIELDS;
a sweep's folder declares the fields its points differ in (`write_experiment`),
and TensorBoard takes the experiment of the folder it is opened on first.
"""

import glob
import itertools
import json
import os
import re
import socket
import time
from typing import Any, Iterable, Mapping

from flax import traverse_util
import jax
import ml_collections
from tensorboard.compat import tf as tb_tf
from tensorboard.compat.proto import event_pb2
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2, summary_v2
from tensorboard.summary.writer import record_writer

# (tag, display name): the metric columns, the first five shown.
METRICS = (
  ("eval/cer", "validation CER"),
  ("eval/wer", "validation WER"),
  ("eval/loss", "validation loss"),
  ("eval/accuracy", "validation token accuracy"),
  ("train/loss", "training loss"),
  ("train/accuracy", "training token accuracy"),
  ("train/steps_per_s", "steps/s"),
)
# The columns a single run shows at first: what it is, how it trained, on what.
SHOWN_FIELDS = (
  "model.encoder",
  "run.device_kind",
  "train.batch_size",
  "train.learning_rate",
  "train.num_steps",
)
# Suffix of the event files written here, beside the training summaries.
EVENTS_SUFFIX = ".hparams"
_FILE_NUMBERS = itertools.count()


def flat_hparams(config: ml_collections.ConfigDict | Mapping) -> dict[str, Any]:
  """Config fields by dotted path -> int, float, bool or str (tuples as JSON); unset left out.

  `config`: a ConfigDict, or its dict (a run's config.json).
  """
  if isinstance(config, ml_collections.ConfigDict):
    config = config.to_dict()
  flat = traverse_util.flatten_dict(dict(config), sep=".")
  out = {}
  for key, value in flat.items():
    if isinstance(value, (int, float, str, bool)):
      out[key] = value
    elif isinstance(value, (tuple, list)):
      out[key] = json.dumps(value)
  return out


def run_info() -> dict[str, Any]:
  """The hardware of this run: run.backend, run.device_kind, run.device_count, run.process_count."""
  return {
    "run.backend": jax.default_backend(),
    "run.device_kind": jax.devices()[0].device_kind,
    "run.device_count": jax.device_count(),
    "run.process_count": jax.process_count(),
  }


def _hparam_info(name: str, value, differs: bool) -> api_pb2.HParamInfo:
  if isinstance(value, bool):
    kind = api_pb2.DATA_TYPE_BOOL
  elif isinstance(value, (int, float)):
    kind = api_pb2.DATA_TYPE_FLOAT64
  else:
    kind = api_pb2.DATA_TYPE_STRING
  return api_pb2.HParamInfo(name=name, type=kind, differs=differs)


def experiment_summary(hparams: Mapping[str, Any], shown: Iterable[str]):
  """The summary_pb2.Summary declaring `hparams` (name -> a value) and METRICS.

  `shown`: the hyperparameters marked as differing, which the HParams tab
  shows first.
  """
  shown = set(shown)
  experiment = api_pb2.Experiment(
    hparam_infos=[_hparam_info(k, v, k in shown) for k, v in sorted(hparams.items())],
    metric_infos=[
      api_pb2.MetricInfo(name=api_pb2.MetricName(group="", tag=tag), display_name=name)
      for tag, name in METRICS
    ],
    time_created_secs=time.time(),
  )
  return summary_v2._summary_pb(  # pylint: disable=protected-access
    metadata.EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(experiment=experiment)
  )


def _write(logdir: str, summaries, wall_time: float | None = None):
  """An event file in `logdir` holding `summaries`, written at `wall_time` (default: now).

  TensorBoard orders runs by the time of their first event, and takes the
  experiment of the first run that has one.
  """
  wall_time = time.time() if wall_time is None else wall_time
  name = f"events.out.tfevents.{int(wall_time):010d}.{socket.gethostname()}.{os.getpid()}"
  path = os.path.join(logdir, f"{name}.{next(_FILE_NUMBERS)}{EVENTS_SUFFIX}")
  with tb_tf.io.gfile.GFile(path, "wb") as f:
    writer = record_writer.RecordWriter(f)
    events = [event_pb2.Event(wall_time=wall_time, file_version="brain.Event:2")]
    events += [event_pb2.Event(wall_time=wall_time, step=0, summary=s) for s in summaries]
    for event in events:
      writer.write(event.SerializeToString())


def write_run_hparams(workdir: str, config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Writes the run's experiment and session (config fields and run_info) into `workdir`.

  Returns the hyperparameters written.
  """
  values = {**flat_hparams(config), **run_info()}
  _write(workdir, [experiment_summary(values, SHOWN_FIELDS), summary_v2.hparams_pb(values)])
  return values


def write_experiment(logdir: str, runs: Iterable[Mapping[str, Any]]):
  """Declares the hyperparameters of several runs under `logdir` (a sweep's folder).

  `runs`: each run's hyperparameters (`flat_hparams`). Those whose values
  differ between the runs are the ones marked, so the HParams tab opened on
  `logdir` shows them first.
  """
  runs = list(runs)
  names = sorted({name for run in runs for name in run})
  union = {name: next(run[name] for run in runs if name in run) for name in names}
  differs = [name for name in names if len({json.dumps(run.get(name)) for run in runs}) > 1]
  # The run.* columns by type only: asking JAX for the devices here would take
  # the accelerators the runs need.
  run_columns = {"run.backend": "", "run.device_kind": "", "run.device_count": 0}
  # Before the runs' first events, so that TensorBoard takes this experiment.
  starts = [
    int(match.group(1))
    for path in glob.glob(os.path.join(logdir, "*", "events.out.tfevents.*"))
    if (match := re.match(r"events\.out\.tfevents\.(\d+)\.", os.path.basename(path)))
  ]
  os.makedirs(logdir, exist_ok=True)
  _write(
    logdir,
    [experiment_summary({**run_columns, **union}, differs)],
    wall_time=min([time.time(), *(start - 1 for start in starts)]),
  )
