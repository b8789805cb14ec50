"""Input pipeline: everything that turns data sources into batches (no JAX)."""
