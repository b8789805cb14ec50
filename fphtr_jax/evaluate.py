r"""Scores a trained checkpoint, or every kept one, on an evaluation split.

  python -m fphtr_jax.evaluate --workdir=W [--checkpoint=latest|best|STEP|all] \
      [--every=N] [--split=validation|test] [--config.decode.beam_size=4] [--output_dir=DIR]
  python -m fphtr_jax.evaluate --model=DIR [--split=...]   # an exported model (export)

The run's config and vocabulary come from its workdir and checkpoint (or the
model folder, whose evaluations go to DIR/evaluations/ by default); any
field can be overridden with --config.section.field=value. Writes into
--output_dir (default W/evaluations/<split>_<checkpoint>_step<N>[_beam<K>]):

  predictions.jsonl   one line per example: id, reference, hypothesis, cer,
                      confidence, min_confidence, log_prob
  summary.json        CER, WER, teacher-forced loss/accuracy, decode settings
  events.*            TensorBoard: the scores, pages with their predicted text

--checkpoint=all scores every checkpoint the run keeps in W/checkpoints
(--every=N: those whose step is a multiple of N), one after another, into
--output_dir (default W/evaluations/<split>_history[_beam<K>]):

  history.jsonl       one row per step: step, cer, wer, loss, accuracy,
                      mean_confidence, num_examples and the decode settings
                      (rows of steps scored again are replaced)
  history.csv         the same rows
  step<N>/            that step's predictions.jsonl and summary.json
  events.*            TensorBoard: the scores and pages of every step

For the synthetic source, "validation" is the eval set seen during training
and "test" other examples from the same held-out word bank (another seed).
Every example counts once: the last batch is padded with masked blank pages.
"""

import csv
import json
import os

from absl import app, flags, logging
from clu import metric_writers
import jax

from fphtr_jax import checkpointing, cli, evaluation, inference, visualize

FLAGS = flags.FLAGS
flags.DEFINE_enum("split", "validation", ["validation", "test"], "Split to score.")
flags.DEFINE_string(
  "output_dir",
  None,
  "Where to write the predictions and the summary (default: a folder under <workdir>/evaluations).",
)
flags.DEFINE_integer(
  "every",
  None,
  "With --checkpoint=all: only the kept checkpoints whose step is a multiple of N.",
  lower_bound=1,
)

ALL_CHECKPOINTS = "all"
# The columns of history.jsonl / history.csv, in order.
HISTORY_FIELDS = (
  "step",
  "cer",
  "wer",
  "loss",
  "accuracy",
  "mean_confidence",
  "num_examples",
  "beam_size",
  "length_penalty",
  "max_len",
)
HISTORY_FILE = "history.jsonl"


def default_output_dir(workdir: str, run: inference.Run, split: str) -> str:
  name = f"{split}_{run.which}_step{run.step}"
  if run.config.decode.beam_size > 1:
    name += f"_beam{run.config.decode.beam_size}"
  return os.path.join(workdir, "evaluations", name)


def history_dir(workdir: str, config, split: str) -> str:
  """Where --checkpoint=all writes by default: W/evaluations/<split>_history[_beam<K>]."""
  name = f"{split}_history"
  if config.decode.beam_size > 1:
    name += f"_beam{config.decode.beam_size}"
  return os.path.join(workdir, "evaluations", name)


def _eval_dataset(config, split: str):
  from input_pipeline import datasets  # TensorFlow only where batches are made.

  return datasets.create_eval_dataset(
    config, split, process_index=jax.process_index(), process_count=jax.process_count()
  )


def evaluate_split(
  run: inference.Run,
  split: str = "validation",
  *,
  num_images: int = 0,
  evaluator: evaluation.Evaluator | None = None,
  eval_ds=None,
):
  """Decodes every example of `split` with config.decode and scores it (evaluation.py).

  `evaluator` and `eval_ds`: reused between checkpoints of one run (made here
  when not given).

  Returns:
    (summary dict, predictions: one dict per example in id order, pages:
    uint8 [H', W, 3] images of the first `num_images` pages with their text).
  """
  eval_ds = _eval_dataset(run.config, split) if eval_ds is None else eval_ds
  if evaluator is None:
    evaluator = evaluation.Evaluator(run.model, run.config, run.tokenizer, run.mesh)
  summary, predictions, pages = evaluator(run.state, eval_ds, split=split, num_images=num_images)
  return {"split": split, "checkpoint": run.which, "step": run.step, **summary}, predictions, pages


def _write_predictions_and_summary(output_dir: str, summary: dict, predictions: list[dict]):
  os.makedirs(output_dir, exist_ok=True)
  with open(os.path.join(output_dir, "predictions.jsonl"), "w", encoding="utf-8") as f:
    for prediction in predictions:
      f.write(json.dumps(prediction, ensure_ascii=False) + "\n")
  with open(os.path.join(output_dir, "summary.json"), "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=2)


def write_results(output_dir: str, summary: dict, predictions: list[dict], pages):
  """predictions.jsonl, summary.json and TensorBoard events in `output_dir`."""
  _write_predictions_and_summary(output_dir, summary, predictions)
  writer = metric_writers.create_default_writer(output_dir)
  _write_events(writer, summary, predictions, pages)
  writer.close()


def _write_events(writer, summary: dict, predictions: list[dict], pages):
  split, step = summary["split"], summary["step"]
  writer.write_scalars(
    step,
    {f"{split}/{k}": summary[k] for k in ("cer", "wer", "loss", "accuracy", "mean_confidence")},
  )
  if pages:
    writer.write_images(step, {f"{split}/pages": visualize.stack_images(pages)})
  writer.write_texts(
    step,
    {
      f"{split}/sample": visualize.markdown_pairs(
        [(p["reference"], p["hypothesis"]) for p in predictions[:8]]
      )
    },
  )


def kept_steps(workdir: str, every: int | None = None) -> list[int]:
  """The steps of the checkpoints in W/checkpoints, oldest first; with `every`, its multiples."""
  checkpointer = checkpointing.Checkpointer(workdir, read_only=True)
  try:
    steps = sorted(checkpointer.latest.all_steps())
  finally:
    checkpointer.close()
  return [step for step in steps if not every or step % every == 0]


def read_history(output_dir: str) -> list[dict]:
  """The rows of `output_dir`/history.jsonl by step ([] when there is none)."""
  path = os.path.join(output_dir, HISTORY_FILE)
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return sorted(rows, key=lambda row: row["step"])


def write_history(output_dir: str, rows: list[dict]):
  """history.jsonl and history.csv: `rows` merged into those there, a step's new row winning."""
  merged = {row["step"]: row for row in read_history(output_dir)}
  merged.update({row["step"]: row for row in rows})
  rows = [merged[step] for step in sorted(merged)]
  with open(os.path.join(output_dir, HISTORY_FILE), "w", encoding="utf-8") as f:
    for row in rows:
      f.write(json.dumps(row) + "\n")
  with open(os.path.join(output_dir, "history.csv"), "w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)


def evaluate_history(
  workdir: str, config, split: str, steps: list[int], output_dir: str, write: bool = True
) -> list[dict]:
  """Scores checkpoint `steps` of the run in `workdir` one after another (`evaluate_split`).

  Writes (when `write`, on process 0) each step's results into
  `output_dir`/step<N>, its scores and pages into TensorBoard events in
  `output_dir`, and the rows into history.jsonl and history.csv there, as
  each step is done. Returns the rows (HISTORY_FIELDS), by step.
  """
  evaluator = eval_ds = writer = None
  rows = []
  for step in steps:
    try:
      run = inference.restore_run(workdir, config, str(step))
    except checkpointing.DamagedCheckpointError as error:  # the others still count
      logging.warning("Skipped step %d: %s", step, error)
      continue
    if evaluator is None:  # one model: compiled once, for every step
      evaluator = evaluation.Evaluator(run.model, run.config, run.tokenizer, run.mesh)
      eval_ds, apply_fn = _eval_dataset(run.config, split), run.state.apply_fn
      if write:
        os.makedirs(output_dir, exist_ok=True)
        writer = metric_writers.create_default_writer(output_dir)
    # The same module as the first step's: the compiled steps apply as they are.
    run.state = run.state.replace(apply_fn=apply_fn)
    summary, predictions, pages = evaluate_split(
      run, split, num_images=int(config.eval.num_images), evaluator=evaluator, eval_ds=eval_ds
    )
    row = {field: summary[field] for field in HISTORY_FIELDS}
    rows.append(row)
    logging.info("Step %d: CER %.4f, WER %.4f.", step, row["cer"], row["wer"])
    if write:
      _write_predictions_and_summary(os.path.join(output_dir, f"step{step}"), summary, predictions)
      _write_events(writer, summary, predictions, pages)
      writer.flush()
      write_history(output_dir, [row])
  if writer is not None:
    writer.close()
  return rows


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments {argv[1:]}: evaluate takes only flags.")
  is_main = jax.process_index() == 0
  try:
    # The synthetic source renders its pages from the word bank (data.text_file).
    cli.check_config(FLAGS.config, word_bank=FLAGS.config.data.source == "embedded")
    history = FLAGS.checkpoint == ALL_CHECKPOINTS
    if FLAGS.every is not None and not history:
      raise cli.CommandLineError(
        f"--every={FLAGS.every} goes with --checkpoint=all (every kept checkpoint), "
        f"not --checkpoint={FLAGS.checkpoint}."
      )
    if FLAGS.model and history:
      raise cli.CommandLineError(
        "--checkpoint=all scores a training run's checkpoints: give its --workdir, not --model."
      )
    if not FLAGS.model:  # --checkpoint=all reads the latest checkpoints' folder.
      cli.check_checkpoint(FLAGS.workdir, "latest" if history else FLAGS.checkpoint)
    # Before hours of decoding: the folder the results go to. The default one
    # in the workdir is made only when the results are written.
    if is_main and FLAGS.output_dir:
      cli.make_writable_dir(FLAGS.output_dir, "output_dir")
    elif is_main:
      cli.check_writable_dir(
        os.path.join(FLAGS.workdir or FLAGS.model, "evaluations"),
        hint="; pass --output_dir=DIR to write the results elsewhere",
      )
  except cli.CommandLineError as error:
    cli.fail(str(error))
  if history:
    evaluate_all(is_main)
    return
  try:
    run = inference.open_run(FLAGS.config)
  except (ValueError, OSError) as error:  # no such step, a damaged checkpoint, another shape
    cli.fail(str(error), status=1)
  summary, predictions, pages = evaluate_split(
    run, FLAGS.split, num_images=int(run.config.eval.num_images)
  )
  if is_main:
    output_dir = FLAGS.output_dir or default_output_dir(
      FLAGS.workdir or FLAGS.model, run, FLAGS.split
    )
    write_results(output_dir, summary, predictions, pages)
    logging.info("Wrote %d predictions to %s.", len(predictions), output_dir)
    print(json.dumps({**summary, "output_dir": output_dir}))


def evaluate_all(is_main: bool):
  """--checkpoint=all: every kept checkpoint (of --every's steps) into the history."""
  workdir, every = FLAGS.workdir, FLAGS.every
  try:
    steps = kept_steps(workdir, every)
  except (ValueError, OSError) as error:
    cli.fail(str(error), status=1)
  if not steps:
    kept = kept_steps(workdir)
    cli.fail(
      f"--every={every}: none of the kept checkpoints {kept} of {workdir} is at a multiple "
      "of it; pass a divisor of their steps, or leave --every out."
      if kept
      else f"--checkpoint=all: {workdir} keeps no checkpoint yet; training writes them.",
      status=1,
    )
  output_dir = FLAGS.output_dir or history_dir(workdir, FLAGS.config, FLAGS.split)
  try:
    rows = evaluate_history(workdir, FLAGS.config, FLAGS.split, steps, output_dir, write=is_main)
  except (ValueError, OSError) as error:  # a damaged checkpoint, another shape
    cli.fail(str(error), status=1)
  if is_main:
    print(json.dumps({"split": FLAGS.split, "output_dir": output_dir, "history": rows}))


if __name__ == "__main__":
  jax.config.config_with_absl()
  app.run(main, flags_parser=cli.parse_flags_with_run_config)
