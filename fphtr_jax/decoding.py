"""Greedy and beam search with the decoder's KV cache, inside lax.while_loop.

Structured like t5x's decoding: `greedy_search` and `beam_search` are pure
functions of a callback

  tokens_to_logits(tokens int32 [N, 1], state) -> (logits float32 [N, V], state)

and its initial `state`, and know nothing about FPHTR. The state is the
decoder's "cache" collection (each step costs O(T): keys and values of earlier
positions are kept), or, for the uncached decoder used by tests and the
benchmark, a token buffer that the whole decoder re-reads every step, the way
the reference implementation decoded (each step costs a full decoder pass).

The FPHTR glue (encoder once, then a search over `FPHTR.decode`) is in
transcribe.py; turning the result into text with confidences, in confidence.py.

Both searches are batched and stop as soon as every sequence has emitted <EOS>
(or after `max_len - 1` steps). <PAD> and <SOS> are never emitted. Under a
mesh (`jax.set_mesh`, `nn.logical_axis_rules`) they run inside jit with the
batch sharded over the data axes, like the train step.
"""

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp

from fphtr_jax.tokenizer import EOS_ID, PAD_ID, SOS_ID

TokensToLogits = Callable[[jax.Array, Any], tuple[jax.Array, Any]]
NEG_INF = -1.0e7  # a finite "impossible" score: -inf - -inf would give NaN


@flax.struct.dataclass
class DecodeOutput:
  """Decoded sequences.

  Attributes:
    tokens: int32 [B, L]: <SOS> c1 c2 ... <EOS> <PAD> ...
    token_log_probs: float32 [B, L]: log p(tokens[:, t] | tokens[:, :t]) under
      the model (not renormalised after masking), 0 at <SOS> and after <EOS>.
  """

  tokens: jax.Array
  token_log_probs: jax.Array


def _log_probs(logits, ignore_eos: bool):
  """(model log-probs, log-probs to search over) from float32 [N, V] logits.

  The search never picks <PAD> or <SOS>, nor <EOS> when `ignore_eos` (used to
  force a length when timing); the reported probabilities stay the model's.
  """
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  banned = [PAD_ID, SOS_ID] + ([EOS_ID] if ignore_eos else [])
  allowed = jnp.ones(logits.shape[-1], bool).at[jnp.array(banned)].set(False)
  return log_probs, jnp.where(allowed, log_probs, NEG_INF)


def _initial_tokens(shape) -> jax.Array:
  return jnp.full(shape, PAD_ID, jnp.int32).at[..., 0].set(SOS_ID)


# --- Greedy search ---------------------------------------------------------------


def greedy_search(
  tokens_to_logits: TokensToLogits,
  state,
  batch_size: int,
  max_len: int,
  *,
  ignore_eos: bool = False,
) -> DecodeOutput:
  """The most likely token at each step until every sequence has emitted <EOS>.

  Args:
    tokens_to_logits: one decoder step, see the module docstring.
    state: the callback's initial state for `batch_size` sequences.
    batch_size: B.
    max_len: L, length of the returned sequences, <SOS> included.
    ignore_eos: never emit <EOS>, so that every sequence has L - 1 tokens.

  Returns:
    DecodeOutput with tokens int32 [B, L] and token_log_probs float32 [B, L].
  """
  tokens = _initial_tokens((batch_size, max_len))
  token_log_probs = jnp.zeros((batch_size, max_len), jnp.float32)
  done = jnp.zeros((batch_size,), bool)

  def not_finished(carry):
    step, _, _, _, done = carry
    return (step < max_len - 1) & ~jnp.all(done)

  def decode_one(carry):
    step, tokens, token_log_probs, state, done = carry
    current = jax.lax.dynamic_slice_in_dim(tokens, step, 1, axis=1)
    logits, state = tokens_to_logits(current, state)
    log_probs, search_log_probs = _log_probs(logits, ignore_eos)
    next_token = jnp.argmax(search_log_probs, axis=-1).astype(jnp.int32)
    next_log_prob = jnp.take_along_axis(log_probs, next_token[:, None], axis=-1)[:, 0]
    next_token = jnp.where(done, PAD_ID, next_token)
    next_log_prob = jnp.where(done, 0.0, next_log_prob)
    tokens = jax.lax.dynamic_update_slice_in_dim(tokens, next_token[:, None], step + 1, axis=1)
    token_log_probs = jax.lax.dynamic_update_slice_in_dim(
      token_log_probs, next_log_prob[:, None], step + 1, axis=1
    )
    return step + 1, tokens, token_log_probs, state, done | (next_token == EOS_ID)

  _, tokens, token_log_probs, _, _ = jax.lax.while_loop(
    not_finished, decode_one, (jnp.int32(0), tokens, token_log_probs, state, done)
  )
  return DecodeOutput(tokens=tokens, token_log_probs=token_log_probs)


# --- Beam search -----------------------------------------------------------------


def length_penalty_factor(length, alpha: float):
  """GNMT's ((5 + length) / 6)^alpha; a score is the log-prob divided by it."""
  return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


def expand_to_beams(tree, beam_size: int):
  """Repeats every [B, ...] leaf to [B * beam_size, ...]; scalars (cache_index) stay."""
  return jax.tree.map(lambda x: x if jnp.ndim(x) == 0 else jnp.repeat(x, beam_size, axis=0), tree)


def gather_beams(tree, beam_indices, batch_size: int, beam_size: int):
  """Reorders the beams of every [B * K, ...] leaf: row (b, k) <- (b, beam_indices[b, k]).

  beam_indices: int32 [B, K]. Scalar leaves (cache_index, shared by all rows) stay.
  """

  def gather(x):
    if jnp.ndim(x) == 0:
      return x
    beams = x.reshape((batch_size, beam_size) + x.shape[1:])
    beams = jax.vmap(lambda rows, index: rows[index])(beams, beam_indices)
    return beams.reshape(x.shape)

  return jax.tree.map(gather, tree)


def _take(x, indices):
  """x [B, N, ...], indices int [B, M] -> [B, M, ...]."""
  return jax.vmap(lambda rows, index: rows[index])(x, indices)


@flax.struct.dataclass
class _BeamState:
  step: jax.Array  # int32 scalar: position of the last token written
  live_tokens: jax.Array  # int32 [B, K, L]
  live_token_log_probs: jax.Array  # float32 [B, K, L]
  live_log_probs: jax.Array  # float32 [B, K], sum of token log-probs
  finished_tokens: jax.Array  # int32 [B, K, L]
  finished_token_log_probs: jax.Array  # float32 [B, K, L]
  finished_scores: jax.Array  # float32 [B, K], log-prob / length penalty
  num_finished: jax.Array  # int32 [B]
  state: Any  # the callback's state for B * K rows


def beam_search(
  tokens_to_logits: TokensToLogits,
  state,
  batch_size: int,
  beam_size: int,
  max_len: int,
  *,
  length_penalty: float = 0.0,
  ignore_eos: bool = False,
) -> DecodeOutput:
  """The best of `beam_size` hypotheses per example, by log-prob / length penalty.

  Each step extends the K live hypotheses of an example by every token and
  ranks the K * V candidates by log-probability. As in fairseq, a candidate
  ending in <EOS> becomes a finished hypothesis only if it ranks among the top
  K; the K best other candidates stay live. An example is done once it has K
  finished hypotheses, so with beam_size 1 this is exactly greedy search.
  Finished hypotheses are ranked by log-prob / ((5 + length) / 6)^alpha
  (GNMT, t5x), length counting the tokens after <SOS>, <EOS> included.

  Args:
    tokens_to_logits: one decoder step over B * K rows (the callback's
      closure must hold the encoder memory repeated K times, `jnp.repeat`).
    state: the callback's initial state for B rows; expanded to B * K here.
    batch_size: B.
    beam_size: K.
    max_len: L, length of the returned sequences, <SOS> included.
    length_penalty: alpha; 0 ranks by plain log-probability.
    ignore_eos: never emit <EOS> (to force a length when timing).

  Returns:
    DecodeOutput of the best hypothesis per example: tokens int32 [B, L],
    token_log_probs float32 [B, L]. An example with no finished hypothesis
    after L - 1 steps returns its best live one.
  """
  b, k = batch_size, beam_size
  live_log_probs = jnp.tile(jnp.array([0.0] + [NEG_INF] * (k - 1), jnp.float32), (b, 1))
  init = _BeamState(
    step=jnp.int32(0),
    live_tokens=_initial_tokens((b, k, max_len)),
    live_token_log_probs=jnp.zeros((b, k, max_len), jnp.float32),
    live_log_probs=live_log_probs,
    finished_tokens=_initial_tokens((b, k, max_len)),
    finished_token_log_probs=jnp.zeros((b, k, max_len), jnp.float32),
    finished_scores=jnp.full((b, k), NEG_INF, jnp.float32),
    num_finished=jnp.zeros((b,), jnp.int32),
    state=expand_to_beams(state, k),
  )

  def not_finished(s: _BeamState):
    return (s.step < max_len - 1) & ~jnp.all(s.num_finished >= k)

  def decode_one(s: _BeamState) -> _BeamState:
    current = s.live_tokens[:, :, s.step].reshape(b * k, 1)
    logits, state = tokens_to_logits(current, s.state)
    log_probs, search_log_probs = _log_probs(logits, ignore_eos)
    vocab_size = log_probs.shape[-1]
    candidates = (
      s.live_log_probs[:, :, None] + search_log_probs.reshape(b, k, vocab_size)
    ).reshape(b, k * vocab_size)
    # 2K candidates: even if K of them end in <EOS>, K others stay live.
    top_scores, top_index = jax.lax.top_k(candidates, 2 * k)
    top_beam, top_token = top_index // vocab_size, (top_index % vocab_size).astype(jnp.int32)
    top_token_log_prob = jnp.take_along_axis(log_probs.reshape(b, k * vocab_size), top_index, 1)
    position = s.step + 1
    top_tokens = _take(s.live_tokens, top_beam).at[:, :, position].set(top_token)
    top_token_log_probs = (
      _take(s.live_token_log_probs, top_beam).at[:, :, position].set(top_token_log_prob)
    )
    alive = top_scores > NEG_INF / 2
    is_eos = top_token == EOS_ID

    # Finished: <EOS> candidates in the top K, of examples not yet done.
    newly_finished = (
      is_eos & alive & (jnp.arange(2 * k) < k)[None, :] & (s.num_finished < k)[:, None]
    )
    new_scores = jnp.where(
      newly_finished, top_scores / length_penalty_factor(position, length_penalty), NEG_INF
    )
    merged_scores = jnp.concatenate([s.finished_scores, new_scores], axis=1)
    finished_scores, keep = jax.lax.top_k(merged_scores, k)
    finished_tokens = _take(jnp.concatenate([s.finished_tokens, top_tokens], 1), keep)
    finished_token_log_probs = _take(
      jnp.concatenate([s.finished_token_log_probs, top_token_log_probs], 1), keep
    )

    # Live: the K best candidates that did not end in <EOS>.
    live_log_probs, live = jax.lax.top_k(jnp.where(is_eos, NEG_INF, top_scores), k)
    state = gather_beams(state, jnp.take_along_axis(top_beam, live, axis=1), b, k)
    return _BeamState(
      step=position,
      live_tokens=_take(top_tokens, live),
      live_token_log_probs=_take(top_token_log_probs, live),
      live_log_probs=live_log_probs,
      finished_tokens=finished_tokens,
      finished_token_log_probs=finished_token_log_probs,
      finished_scores=finished_scores,
      num_finished=s.num_finished + newly_finished.sum(axis=1).astype(jnp.int32),
      state=state,
    )

  final = jax.lax.while_loop(not_finished, decode_one, init)
  # Sorted by top_k: index 0 is the best finished (or, failing that, live) hypothesis.
  any_finished = (final.num_finished > 0)[:, None]
  tokens = jnp.where(any_finished, final.finished_tokens[:, 0], final.live_tokens[:, 0])
  token_log_probs = jnp.where(
    any_finished, final.finished_token_log_probs[:, 0], final.live_token_log_probs[:, 0]
  )
  return DecodeOutput(tokens=tokens, token_log_probs=token_log_probs)
