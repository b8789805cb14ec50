r"""Scores a trained checkpoint on an evaluation split.

  python -m fphtr_jax.evaluate --workdir=W [--checkpoint=latest|best|STEP] \
      [--split=validation|test] [--config.decode.beam_size=4] [--output_dir=DIR]

The run's config and vocabulary come from its workdir and checkpoint; any
field can be overridden with --config.section.field=value. Writes into
--output_dir (default W/evaluations/<split>_<checkpoint>_step<N>[_beam<K>]):

  predictions.jsonl   one line per example: id, reference, hypothesis, cer,
                      confidence, min_confidence, log_prob
  summary.json        CER, WER, teacher-forced loss/accuracy, decode settings
  events.*            TensorBoard: the scores, pages with their predicted text

For the synthetic source, "validation" is the eval set seen during training
and "test" other examples from the same held-out word bank (another seed).
Every example counts once: the last batch is padded with masked blank pages.
"""

import json
import os

from absl import app, flags, logging
from clu import metric_writers
import jax

from fphtr_jax import cli, evaluation, inference, visualize

FLAGS = flags.FLAGS
flags.DEFINE_enum("split", "validation", ["validation", "test"], "Split to score.")
flags.DEFINE_string(
  "output_dir",
  None,
  "Where to write the predictions and the summary (default: a folder under <workdir>/evaluations).",
)


def default_output_dir(workdir: str, run: inference.Run, split: str) -> str:
  name = f"{split}_{run.which}_step{run.step}"
  if run.config.decode.beam_size > 1:
    name += f"_beam{run.config.decode.beam_size}"
  return os.path.join(workdir, "evaluations", name)


def evaluate_split(run: inference.Run, split: str = "validation", *, num_images: int = 0):
  """Decodes every example of `split` with config.decode and scores it (evaluation.py).

  Returns:
    (summary dict, predictions: one dict per example in id order, pages:
    uint8 [H', W, 3] images of the first `num_images` pages with their text).
  """
  from input_pipeline import datasets  # TensorFlow only where batches are made.

  eval_ds = datasets.create_eval_dataset(
    run.config, split, process_index=jax.process_index(), process_count=jax.process_count()
  )
  evaluator = evaluation.Evaluator(run.model, run.config, run.tokenizer, run.mesh)
  summary, predictions, pages = evaluator(run.state, eval_ds, split=split, num_images=num_images)
  return {"split": split, "checkpoint": run.which, "step": run.step, **summary}, predictions, pages


def write_results(output_dir: str, summary: dict, predictions: list[dict], pages):
  """predictions.jsonl, summary.json and TensorBoard events in `output_dir`."""
  os.makedirs(output_dir, exist_ok=True)
  with open(os.path.join(output_dir, "predictions.jsonl"), "w", encoding="utf-8") as f:
    for prediction in predictions:
      f.write(json.dumps(prediction, ensure_ascii=False) + "\n")
  with open(os.path.join(output_dir, "summary.json"), "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=2)
  writer = metric_writers.create_default_writer(output_dir)
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
  writer.close()


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments {argv[1:]}: evaluate takes only flags.")
  is_main = jax.process_index() == 0
  try:
    # The synthetic source renders its pages from the word bank (data.text_file).
    cli.check_config(FLAGS.config, word_bank=FLAGS.config.data.source == "embedded")
    cli.check_checkpoint(FLAGS.workdir, FLAGS.checkpoint)
    # Before hours of decoding: the folder the results go to. The default one
    # in the workdir is made only when the results are written.
    if is_main and FLAGS.output_dir:
      cli.make_writable_dir(FLAGS.output_dir, "output_dir")
    elif is_main:
      cli.check_writable_dir(
        os.path.join(FLAGS.workdir, "evaluations"),
        hint="; pass --output_dir=DIR to write the results elsewhere",
      )
  except cli.CommandLineError as error:
    cli.fail(str(error))
  try:
    run = inference.restore_run(FLAGS.workdir, FLAGS.config, FLAGS.checkpoint)
  except (ValueError, OSError) as error:  # no such step, a damaged checkpoint, another shape
    cli.fail(str(error), status=1)
  summary, predictions, pages = evaluate_split(
    run, FLAGS.split, num_images=int(run.config.eval.num_images)
  )
  if is_main:
    output_dir = FLAGS.output_dir or default_output_dir(FLAGS.workdir, run, FLAGS.split)
    write_results(output_dir, summary, predictions, pages)
    logging.info("Wrote %d predictions to %s.", len(predictions), output_dir)
    print(json.dumps({**summary, "output_dir": output_dir}))


if __name__ == "__main__":
  jax.config.config_with_absl()
  app.run(main, flags_parser=cli.parse_flags_with_run_config)
