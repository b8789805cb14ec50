"""The one evaluation core: teacher-forced loss, decoding per config.decode, CER/WER.

The training loop scores its validation set with it, and `evaluate.py`
scores any split of a restored checkpoint with it, so both report the same
numbers for the same checkpoint and settings.
"""

import time

from clu import metrics
import flax
import flax.linen as nn
import jax
import numpy as np

from fphtr_jax import confidence, losses, sharding, transcribe, visualize
from fphtr_jax import metrics as text_metrics


@flax.struct.dataclass
class EvalMetrics(metrics.Collection):
  loss: metrics.Average.from_output("loss")
  accuracy: metrics.Average.from_output("accuracy")


def eval_step(state, batch):
  """Teacher-forced loss and token accuracy of a batch (padding examples masked).

  `state` has apply_fn, params and batch_stats (a train state, or a restored
  run's inference state).
  """
  inputs, targets, weights = losses.split_batch(batch)
  logits = state.apply_fn(
    {"params": state.params, "batch_stats": state.batch_stats}, batch["image"], inputs, train=False
  )
  loss, accuracy = losses.token_loss(logits, targets, weights)
  return EvalMetrics.single_from_model_output(loss=loss, accuracy=accuracy)


class Evaluator:
  """Scores evaluation sets with a model, its config's decoding settings and vocabulary.

  Compiles its steps once; call it on any state of the same model.
  """

  def __init__(self, model, config, tokenizer, mesh):
    self.config = config
    self.tokenizer = tokenizer
    self.mesh = mesh
    self._rules = sharding.logical_rules(config.mesh)
    self._eval_step = jax.jit(eval_step)
    self._decode = jax.jit(transcribe.decode_fn(model, config))

  def __call__(self, state, eval_ds, *, split: str = "validation", num_images: int = 0):
    """Decodes and scores every example of `eval_ds` (batches with a mask of real examples).

    Returns:
      (summary dict: num_examples, cer, wer, loss, accuracy, mean_confidence,
      the decode settings, seconds, examples_per_s; predictions: one dict
      per example in id order (id, reference, hypothesis, cer, confidence,
      min_confidence, log_prob); pages: uint8 [H', W, 3] pictures of this
      process's first `num_images` pages with their true and predicted text).
    """
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    predictions, pages, eval_metrics = [], [], None
    start = time.monotonic()
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self._rules):
      for batch_index, batch in enumerate(eval_ds.as_numpy_iterator()):
        global_batch = sharding.put_batch(batch, self.mesh)
        update = self._eval_step(state, global_batch)
        eval_metrics = update if eval_metrics is None else eval_metrics.merge(update)
        # The whole global batch on every process, so all score the same examples.
        output, references, mask = sharding.to_host(
          (
            self._decode(variables, global_batch["image"]),
            global_batch["tokens"],
            global_batch["mask"],
          )
        )
        texts = confidence.transcriptions(self.tokenizer, output)
        references = self.tokenizer.decode_batch(references)
        for position, (reference, text, real) in enumerate(zip(references, texts, mask)):
          if real <= 0:
            continue
          predictions.append(
            {
              "id": f"{split}/{batch_index * len(texts) + position:06d}",
              "reference": reference,
              "hypothesis": text.text,
              "cer": text_metrics.character_edits(reference, text.text) / max(len(reference), 1),
              "confidence": text.confidence,
              "min_confidence": text.min_confidence,
              "log_prob": text.log_prob,
            }
          )
        # This process's examples lead its slice of the global batch.
        offset = jax.process_index() * len(batch["mask"])
        for position, (image, real) in enumerate(zip(batch["image"], batch["mask"])):
          if real > 0 and len(pages) < num_images:
            pages.append(
              visualize.page_with_text(
                image, references[offset + position], texts[offset + position].text
              )
            )
    seconds = time.monotonic() - start
    references = [p["reference"] for p in predictions]
    hypotheses = [p["hypothesis"] for p in predictions]
    decode = self.config.decode
    summary = {
      "num_examples": len(predictions),
      "cer": text_metrics.character_error_rate(references, hypotheses),
      "wer": text_metrics.word_error_rate(references, hypotheses),
      **{k: float(v) for k, v in eval_metrics.compute().items()},
      "mean_confidence": float(np.mean([p["confidence"] for p in predictions])),
      "beam_size": int(decode.beam_size),
      "length_penalty": float(decode.length_penalty),
      "max_len": transcribe.decode_max_len(self.config),
      "seconds": seconds,
      "examples_per_s": len(predictions) / seconds,
    }
    return summary, predictions, pages
