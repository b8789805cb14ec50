"""Input pipeline: everything that turns data sources into batches (no JAX)."""

# The project's settings for TensorFlow, before any module here loads it
# (fphtr_jax/__init__.py; it imports nothing, JAX included).
import fphtr_jax  # noqa: F401
