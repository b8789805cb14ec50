"""FPHTR glue of the searches: pages in, decoded tokens out.

`decode_images` runs the encoder once per image, then `decode_memory` builds
the `tokens_to_logits` callback of decoding.py from `FPHTR.decode` (with the
KV cache, or uncached for tests and benchmarks) and runs greedy or beam
search; `decode_fn` binds the settings of `config.decode`. `cross_attention`
gives the decoder's attention over the page while it wrote each token (one
teacher-forced pass), for attention pictures and line locations.
"""

import functools
from typing import Any

from flax import traverse_util
import jax
import jax.numpy as jnp

from fphtr_jax import decoding
from fphtr_jax.models import fphtr
from fphtr_jax.tokenizer import PAD_ID, SOS_ID


def _is_cross_attention(key: tuple[str, ...]) -> bool:
  return "cross_attention" in key


def cached_tokens_to_logits(
  model: fphtr.FPHTR, variables, memory, batch_size: int
) -> tuple[decoding.TokensToLogits, Any]:
  """One decoder step with the KV cache, and its initial state for `batch_size` rows.

  The state is the "cache" collection (`fphtr.init_cache`) less the
  cross-attention's part: the keys and values of the memory, computed once
  here for every row of `memory` and held as constants. The loop then neither
  carries nor copies them, and their cache_index, a constant past 0, lets XLA
  drop the branch that would project the memory again.
  """
  rows, memory_len = memory.shape[:2]
  _, primed = model.apply(
    {**variables, "cache": fphtr.init_cache(model, rows, memory_len)},
    memory,
    jnp.full((rows, 1), SOS_ID, jnp.int32),
    train=False,
    decode=True,
    method=fphtr.FPHTR.decode,
    mutable=["cache"],
  )
  cross_attention = {
    key: jnp.ones_like(value) if key[-1] == "cache_index" else value
    for key, value in traverse_util.flatten_dict(primed["cache"]).items()
    if _is_cross_attention(key)
  }
  state = {
    key: value
    for key, value in traverse_util.flatten_dict(
      fphtr.init_cache(model, batch_size, memory_len)
    ).items()
    if not _is_cross_attention(key)
  }

  def tokens_to_logits(tokens, state):
    cache = traverse_util.unflatten_dict({**state, **cross_attention})
    logits, mutated = model.apply(
      {**variables, "cache": cache},
      memory,
      tokens,
      train=False,
      decode=True,
      method=fphtr.FPHTR.decode,
      mutable=["cache"],
    )
    new_state = {
      key: value
      for key, value in traverse_util.flatten_dict(mutated["cache"]).items()
      if not _is_cross_attention(key)
    }
    return logits[:, -1], new_state

  return tokens_to_logits, state


def uncached_tokens_to_logits(model: fphtr.FPHTR, variables, memory) -> decoding.TokensToLogits:
  """One step that re-runs the whole decoder; state = {"tokens": [N, L'], "index": scalar}.

  The token at `index` is written into the buffer, the decoder reads the
  buffer (the causal mask hides the positions not written yet) and the logits
  at `index` are returned. The buffer has a static length, so every step costs
  a full pass over it, memory projections included.
  """

  def tokens_to_logits(tokens, state):
    index = state["index"]
    buffer = jax.lax.dynamic_update_slice_in_dim(state["tokens"], tokens, index, axis=1)
    logits = model.apply(variables, memory, buffer, train=False, method=fphtr.FPHTR.decode)
    step_logits = jax.lax.dynamic_index_in_dim(logits, index, axis=1, keepdims=False)
    return step_logits, {"tokens": buffer, "index": index + 1}

  return tokens_to_logits


def check_max_len(max_len: int, model: fphtr.FPHTR, field: str = "decode.max_len"):
  if not 2 <= max_len <= model.max_len:
    raise ValueError(
      f"{field}={max_len} is invalid: expected 2 to {model.max_len} "
      "(data.max_len, the length the model's decoder was built for)."
    )


def decode_images(model: fphtr.FPHTR, variables, images, **settings) -> decoding.DecodeOutput:
  """Transcribes a batch of pages: encoder once, then greedy or beam search.

  images: float32 [B, H, W, 1], normalised; `settings`: those of `decode_memory`.
  """
  memory = model.apply(variables, images, train=False, method=fphtr.FPHTR.encode)
  return decode_memory(model, variables, memory, **settings)


def decode_memory(
  model: fphtr.FPHTR,
  variables,
  memory,
  *,
  max_len: int,
  beam_size: int = 1,
  length_penalty: float = 0.0,
  use_cache: bool = True,
  ignore_eos: bool = False,
) -> decoding.DecodeOutput:
  """Greedy or beam search over the decoder, from the encoder's output.

  Args:
    model: the FPHTR module.
    variables: {"params": ..., "batch_stats": ...}.
    memory: float32 [B, S, d_model], `FPHTR.encode` of the pages.
    max_len: L, length of the returned sequences (2 to model.max_len).
    beam_size: 1 = greedy search, more = beam search.
    length_penalty: alpha of the beam search's length penalty.
    use_cache: decode with the KV cache; False re-runs the decoder over the
      whole prefix at every step (for tests and benchmarks).
    ignore_eos: never emit <EOS>, so that every sequence is L long.

  Returns:
    DecodeOutput: tokens int32 [B, L], token_log_probs float32 [B, L].
  """
  check_max_len(max_len, model)
  if beam_size < 1:
    raise ValueError(f"decode.beam_size={beam_size} is invalid: expected 1 or more.")
  batch_size = memory.shape[0]
  if beam_size > 1:
    memory = jnp.repeat(memory, beam_size, axis=0)
  if use_cache:
    tokens_to_logits, state = cached_tokens_to_logits(model, variables, memory, batch_size)
  else:
    tokens_to_logits = uncached_tokens_to_logits(model, variables, memory)
    # Positions 0 .. L - 2 are fed; the last token is never fed back.
    state = {
      "tokens": jnp.full((batch_size, max_len - 1), PAD_ID, jnp.int32),
      "index": jnp.int32(0),
    }
  if beam_size == 1:
    return decoding.greedy_search(
      tokens_to_logits, state, batch_size, max_len, ignore_eos=ignore_eos
    )
  return decoding.beam_search(
    tokens_to_logits,
    state,
    batch_size,
    beam_size,
    max_len,
    length_penalty=length_penalty,
    ignore_eos=ignore_eos,
  )


def decode_max_len(config) -> int:
  """config.decode.max_len, where 0 means data.max_len."""
  return int(config.decode.max_len) or int(config.data.max_len)


def decode_fn(model: fphtr.FPHTR, config):
  """decode_images with the settings of config.decode, as f(variables, images)."""
  return functools.partial(
    decode_images,
    model,
    max_len=decode_max_len(config),
    beam_size=int(config.decode.beam_size),
    length_penalty=float(config.decode.length_penalty),
  )


def cross_attention(model: fphtr.FPHTR, variables, images, tokens):
  """The decoder's cross-attention while it wrote `tokens`, averaged over heads and layers.

  One teacher-forced pass over the decoded sequence: the causal mask makes it
  see exactly what step-by-step decoding saw, so the weights are the same.

  Args:
    model: the FPHTR module.
    variables: {"params": ..., "batch_stats": ...}.
    images: float32 [B, H, W, 1], normalised.
    tokens: int32 [B, L] decoded sequences, starting with <SOS>.

  Returns:
    float32 [B, L - 1, S]: row t is the attention over the encoder grid
    (S = ceil(H/32) * ceil(W/32), row-major) while predicting tokens[:, t + 1].
  """
  memory = model.apply(variables, images, train=False, method=fphtr.FPHTR.encode)
  _, mutated = model.apply(
    variables,
    memory,
    tokens[:, :-1],
    train=False,
    method=fphtr.FPHTR.decode,
    mutable=["intermediates"],
  )
  maps = [
    leaf
    for path, leaf in jax.tree_util.tree_flatten_with_path(mutated)[0]
    if "cross_attention" in jax.tree_util.keystr(path)
  ]
  return jnp.mean(jnp.stack(maps), axis=0)
