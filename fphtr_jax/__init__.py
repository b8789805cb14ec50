"""fphtr-jax: full-page handwriting recognition (FPHTR) in JAX/Flax.

Subpackages import what they need; importing this package imports nothing heavy.
"""
