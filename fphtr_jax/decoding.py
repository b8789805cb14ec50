"""Autoregressive decoding with the decoder's KV cache, inside lax.while_loop.

The encoder runs once per image; each step feeds one token to the decoder,
whose cache holds the keys and values of every earlier position, so a step
costs O(T) rather than re-running the whole prefix.
"""

import jax
import jax.numpy as jnp

from fphtr_jax.models import fphtr
from fphtr_jax.tokenizer import EOS_ID, PAD_ID, SOS_ID


def greedy_decode(model: fphtr.FPHTR, variables, images, max_len: int):
  """Most likely token at each step until every sequence has emitted <EOS>.

  Args:
    model: the FPHTR module.
    variables: {"params": ..., "batch_stats": ...}.
    images: float32 [B, H, W, 1], normalised.
    max_len: length of the returned sequences (at most model.max_len).

  Returns:
    int32 [B, max_len]: <SOS> c1 c2 ... <EOS> <PAD> ...
  """
  memory = model.apply(variables, images, train=False, method=fphtr.FPHTR.encode)
  batch = images.shape[0]
  cache = fphtr.init_cache(model, batch, memory.shape[1])
  tokens = jnp.full((batch, max_len), PAD_ID, jnp.int32).at[:, 0].set(SOS_ID)
  done = jnp.zeros((batch,), bool)

  def not_finished(carry):
    step, _, _, done = carry
    return (step < max_len - 1) & ~jnp.all(done)

  def decode_one(carry):
    step, tokens, cache, done = carry
    current = jax.lax.dynamic_slice(tokens, (0, step), (batch, 1))
    logits, updated = model.apply(
        {**variables, "cache": cache}, memory, current, train=False, decode=True,
        method=fphtr.FPHTR.decode, mutable=["cache"])
    next_token = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)
    next_token = jnp.where(done, PAD_ID, next_token)
    tokens = jax.lax.dynamic_update_slice(tokens, next_token[:, None], (0, step + 1))
    return step + 1, tokens, updated["cache"], done | (next_token == EOS_ID)

  _, tokens, _, _ = jax.lax.while_loop(not_finished, decode_one, (0, tokens, cache, done))
  return tokens
