"""fphtr-jax: full-page handwriting recognition (FPHTR) in JAX/Flax.

Subpackages import what they need; importing this package imports nothing heavy.

It sets one XLA option for the CPU, before JAX starts its backend: XLA's CPU
compiler hands convolutions and matrix products to the YNNPACK library by
default, and on the x86 CPU measured (benchmarks/README.md) its own
convolutions make the train step 1.2x faster in the CPU recipe and 1.3-1.7x
in the default model, with the same numbers. So only matrix products (and
what fuses into them) go to YNNPACK. An `XLA_FLAGS` that names the option
itself wins; the option is inert on GPUs and TPUs, and is not applied when
JAX's backend started before this package was imported.
"""

import os

YNN_FUSION_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
# What XLA does with the option unset (the same compiled programs), the
# baseline of benchmarks/train_step.py.
XLA_DEFAULT_YNN_FUSIONS = (
  "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION,LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"
)
# Matrix products alone, and fused with what follows them; no convolutions.
YNN_FUSIONS = "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"

if YNN_FUSION_FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (
    f"{os.environ.get('XLA_FLAGS', '')} {YNN_FUSION_FLAG}={YNN_FUSIONS}".lstrip()
  )
