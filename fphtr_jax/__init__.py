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

It also keeps TensorFlow (the input pipeline) off its oneDNN kernels unless
`TF_ENABLE_ONEDNN_OPTS` says otherwise. TensorFlow turns them on by itself on
some x86 CPUs only, so the same seed would compose slightly different pages
on different machines; on an AVX-512 CPU measured they also made the
pipeline slower (benchmarks/pipeline.py: 10.5-10.9 against 8.1-8.6 CPU ms per
page on 2 threads), and TensorFlow announces them on stderr when it loads.
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

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
