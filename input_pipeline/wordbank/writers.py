"""Writers: the style a synthetic writer keeps for all of their words."""

import dataclasses

import numpy as np

from input_pipeline.wordbank import fonts as fonts_lib


@dataclasses.dataclass(frozen=True)
class WriterStyle:
  """The style of one synthetic writer, fixed for all of their words."""

  font: fonts_lib.FontSource
  x_height: float  # height of short letters, / word_height
  width: float  # horizontal scale of the letters (narrow < 1 < wide)
  slant: float  # horizontal shear per pixel above the baseline (+ = right)
  stroke: float  # Hershey pen width, or extra TTF outline; / word_height
  spacing: float  # extra letter spacing, / glyph scale (em)
  ink: float  # darkness of the ink, 0..1
  ink_texture: float  # depth of the uneven ink flow, 0..1
  wobble: float  # amplitude of the wavy baseline, / word_height
  wobble_period: float  # wavelength of the wavy baseline, / word_height
  weight: float | None = None  # "wght" axis of a variable font
  # How far each word's letters stray from the font's shapes: std of a smooth
  # random displacement of the ink, / x-height (letters of TTF fonts also vary
  # in size and height by a part of it). 0 = the font's shapes exactly.
  distortion: float = 0.0


def sample_writer_style(
  font: fonts_lib.FontSource,
  metrics: fonts_lib.FontMetrics,
  rng: np.random.Generator,
  distortion: float = 0.0,
) -> WriterStyle:
  """Draws the fixed style of a new writer who writes with `font`.

  distortion: the writers' mean `WriterStyle.distortion`; each draws 0.5 to
  1.5 times it (none with 0).
  """
  weights = fonts_lib.weight_range(font)
  if font.hershey is not None:
    stroke = rng.uniform(0.025, 0.055)  # pen width
  else:
    stroke = rng.choice([0.0, 0.0, 0.02, 0.04])  # extra boldness
  if metrics.joined:
    spacing = rng.uniform(-0.02, 0.01)  # more would break the joins
  else:
    spacing = rng.uniform(-0.03, 0.1)
  return WriterStyle(
    font=font,
    x_height=float(rng.uniform(0.22, 0.3)),
    width=float(rng.uniform(0.85, 1.15)),
    slant=float(rng.uniform(-0.12, 0.3)),
    stroke=float(stroke),
    spacing=float(spacing),
    ink=float(rng.uniform(0.6, 1.0)),
    ink_texture=float(rng.uniform(0.0, 0.35)),
    wobble=float(rng.uniform(0.0, 0.02)),
    wobble_period=float(rng.uniform(2.0, 6.0)),
    weight=None if weights is None else float(rng.uniform(*weights)),
    distortion=float(distortion * rng.uniform(0.5, 1.5)) if distortion else 0.0,
  )
