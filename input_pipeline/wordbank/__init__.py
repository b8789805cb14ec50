"""Word banks: crops of handwritten words for the synthetic composer (no JAX, no TensorFlow)."""
