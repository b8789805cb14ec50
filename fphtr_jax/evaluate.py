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
import time

import jax
import numpy as np
from absl import app, flags, logging
from clu import metric_writers

from fphtr_jax import decoding, inference, sharding, train, visualize
from fphtr_jax import metrics as text_metrics

FLAGS = flags.FLAGS
flags.DEFINE_enum("split", "validation", ["validation", "test"], "Split to score.")
flags.DEFINE_string("output_dir", None, "Where to write the predictions and the summary "
                    "(default: a folder under <workdir>/evaluations).")


def default_output_dir(workdir: str, run: inference.Run, split: str) -> str:
  name = f"{split}_{run.which}_step{run.step}"
  if run.config.decode.beam_size > 1:
    name += f"_beam{run.config.decode.beam_size}"
  return os.path.join(workdir, "evaluations", name)


def evaluate_split(run: inference.Run, split: str = "validation", *, num_images: int = 0):
  """Decodes every example of `split` with config.decode and scores it.

  Returns:
    (summary dict, predictions: one dict per example in id order, pages:
    uint8 [H', W, 3] images of the first `num_images` pages with their text).
  """
  from input_pipeline import pipeline  # TensorFlow only where batches are made.

  config = run.config
  eval_ds = pipeline.create_eval_dataset(
      config, split, process_index=jax.process_index(), process_count=jax.process_count())
  p_decode = inference.jit_decode(run)
  p_eval_step = jax.jit(train.eval_step)
  predictions, pages, eval_metrics = [], [], None
  start = time.monotonic()
  with run.mesh_context():
    for batch_index, batch in enumerate(eval_ds.as_numpy_iterator()):
      global_batch = sharding.put_batch(batch, run.mesh)
      update = p_eval_step(run.state, global_batch)
      eval_metrics = update if eval_metrics is None else eval_metrics.merge(update)
      output = p_decode(run.variables, global_batch["image"])
      fetched = inference.fetch({"tokens": output.tokens, "log_probs": output.token_log_probs,
                                 "references": global_batch["tokens"],
                                 "mask": global_batch["mask"]})
      texts = decoding.transcriptions(
          run.tokenizer, decoding.DecodeOutput(fetched["tokens"], fetched["log_probs"]))
      references = run.tokenizer.decode_batch(fetched["references"])
      global_size = len(texts)
      for position, (reference, text, mask) in enumerate(
          zip(references, texts, fetched["mask"])):
        if mask <= 0:
          continue
        predictions.append({
            "id": f"{split}/{batch_index * global_size + position:06d}",
            "reference": reference,
            "hypothesis": text.text,
            "cer": text_metrics.character_edits(reference, text.text) / max(len(reference), 1),
            "confidence": text.confidence,
            "min_confidence": text.min_confidence,
            "log_prob": text.log_prob,
        })
      # This process's examples lead its slice of the global batch.
      offset = jax.process_index() * len(batch["mask"])
      for position, (image, mask) in enumerate(zip(batch["image"], batch["mask"])):
        if mask > 0 and len(pages) < num_images:
          pages.append(visualize.page_with_text(image, references[offset + position],
                                                texts[offset + position].text))
  seconds = time.monotonic() - start
  references = [p["reference"] for p in predictions]
  hypotheses = [p["hypothesis"] for p in predictions]
  summary = {
      "split": split,
      "checkpoint": run.which,
      "step": run.step,
      "num_examples": len(predictions),
      "cer": text_metrics.character_error_rate(references, hypotheses),
      "wer": text_metrics.word_error_rate(references, hypotheses),
      **{k: float(v) for k, v in eval_metrics.compute().items()},
      "mean_confidence": float(np.mean([p["confidence"] for p in predictions])),
      "beam_size": int(config.decode.beam_size),
      "length_penalty": float(config.decode.length_penalty),
      "max_len": decoding.decode_max_len(config),
      "seconds": seconds,
      "examples_per_s": len(predictions) / seconds,
  }
  return summary, predictions, pages


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
  writer.write_scalars(step, {f"{split}/{k}": summary[k]
                              for k in ("cer", "wer", "loss", "accuracy", "mean_confidence")})
  if pages:
    writer.write_images(step, {f"{split}/pages": visualize.stack_images(pages)})
  writer.write_texts(step, {f"{split}/sample": visualize.markdown_pairs(
      [(p["reference"], p["hypothesis"]) for p in predictions[:8]])})
  writer.close()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  run = inference.restore_run(FLAGS.workdir, FLAGS.config, FLAGS.checkpoint)
  summary, predictions, pages = evaluate_split(
      run, FLAGS.split, num_images=int(run.config.eval.num_images))
  if jax.process_index() == 0:
    output_dir = FLAGS.output_dir or default_output_dir(FLAGS.workdir, run, FLAGS.split)
    write_results(output_dir, summary, predictions, pages)
    logging.info("Wrote %d predictions to %s.", len(predictions), output_dir)
    print(json.dumps({**summary, "output_dir": output_dir}))


if __name__ == "__main__":
  jax.config.config_with_absl()
  app.run(main, flags_parser=inference.parse_flags_with_saved_config)
