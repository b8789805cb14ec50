r"""How well a model reads real scans, and what preparing a scan is worth.

  python -m benchmarks.real_scans --model=DIR --data=FOLDER
  python -m benchmarks.real_scans --workdir=W --checkpoint=best --data=FOLDER

FOLDER is a folder of real images with their transcriptions, as
`fphtr_jax.evaluate_real` reads it (manifest.jsonl, or image + .txt pairs).
Every image is read by the same model in several ways, in one process and
one batch loop, and each is scored as evaluate_real scores it:

  as_is        --scale=1 --noprepare: the image as it is, only fitted
  auto         --scale=auto (prepare on): predict's default
  auto_noprep  --scale=auto --noprepare: the scale alone
  scale_X      a fixed scale X with preparation, for X in --scales

Prints one JSON line: per setting the CER, WER and share of right line
counts over all images and per level (page, line, word), the scale each image
got, and `auto_cer_vs_as_is`, the auto CER over the as-is CER (below 1:
preparing helps). A handful of scans is a sanity signal, not a benchmark to
tune on.
"""

import json

from absl import app, flags
import jax

from fphtr_jax import cli, evaluate_real, inference, predict

FLAGS = flags.FLAGS
flags.DEFINE_list("scales", ["0.35", "0.5", "0.7"], "Fixed scales scored beside auto.")


def settings(scales) -> dict[str, tuple[str, bool]]:
  """name -> (--scale, --prepare) of each way of reading an image."""
  chosen = {"as_is": ("1", False), "auto": ("auto", True), "auto_noprep": ("auto", False)}
  chosen.update({f"scale_{s}": (s, True) for s in scales})
  return chosen


def main(argv):
  del argv
  if not FLAGS.data:
    cli.fail("--data is required: a folder of real images with their transcriptions.")
  try:
    samples = evaluate_real.read_samples(FLAGS.data)
  except (ValueError, OSError) as error:
    cli.fail(str(error))
  ways = settings(FLAGS.scales)
  pages = {
    name: [predict.load_config_page(s.path, FLAGS.config, scale, prep) for s in samples]
    for name, (scale, prep) in ways.items()
  }
  run = inference.open_run(FLAGS.config)
  # One loop over every way's pages: the decoder compiles once.
  texts, _ = predict.recognise(run, [page for name in ways for page in pages[name]])
  results = {}
  for index, name in enumerate(ways):
    hypotheses = [t.text for t in texts[index * len(samples) : (index + 1) * len(samples)]]
    results[name] = {
      **evaluate_real.score(samples, hypotheses),
      "scales": [round(page.scale, 3) for page in pages[name]],
    }
  as_is = results["as_is"]["all"]["cer"]
  print(
    json.dumps(
      {
        "benchmark": "real_scans",
        "images": len(samples),
        "levels": sorted({s.level for s in samples}),
        "step": run.step,
        "decode": dict(run.config.decode),
        "settings": results,
        "auto_cer_vs_as_is": results["auto"]["all"]["cer"] / as_is if as_is else None,
      }
    )
  )


if __name__ == "__main__":
  jax.config.config_with_absl()
  app.run(main, flags_parser=cli.parse_flags_with_run_config)
