"""Transformer text decoder with a KV cache for autoregressive decoding.

Layers follow torch.nn.TransformerDecoderLayer: causal self-attention,
cross-attention to the encoder memory, a GELU MLP, dropout after each, and
LayerNorm after each residual sum (post-norm, the default) or before each
sublayer with a final LayerNorm (pre-norm).

Decoding with a cache follows the flax WMT example: with `decode=True` the
input is one token per example, [B, 1], and state lives in the "cache"
collection, which must be passed in and returned as mutable:

  * each self-attention keeps `cached_key` / `cached_value` [B, H, max_len, Dh]
    and `cache_index` (the position the next token is written to);
  * each cross-attention keeps the projected memory, `cached_key` /
    `cached_value` [B, H, S, Dh], computed from `memory` on the first step
    only (while its `cache_index` is 0) and reused afterwards;
  * the decoder keeps `cache_index` for the position encoding.

The token at position t gets position encoding t both when teacher forcing
over a whole sequence and when decoding step by step, so the two agree.

Padding: the decoder applies no key-padding mask. <PAD> only ever follows
<EOS>, so under the causal mask no real token attends to padding; outputs at
padded positions are meaningless and the loss ignores them.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fphtr_jax.models import position

_EMBED_AXES = ("batch", "length", "embed")
_LAYER_NORM_EPS = 1e-5  # torch's default


def _dense(features: int, axes: tuple[str, str], dtype: Any, name: str) -> nn.Dense:
  """Dense layer with a Xavier-uniform kernel and a zero bias, both named."""
  return nn.Dense(
    features,
    dtype=dtype,
    param_dtype=jnp.float32,
    kernel_init=nn.with_logical_partitioning(nn.initializers.xavier_uniform(), axes),
    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[-1:]),
    name=name,
  )


def _layer_norm(dtype: Any, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(
    epsilon=_LAYER_NORM_EPS,
    dtype=dtype,
    param_dtype=jnp.float32,
    scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
    name=name,
  )


def _head_major(x):
  """[B, S, H, Dh] -> [B, H, S, Dh]."""
  return x.transpose(0, 2, 1, 3)


class _Attention(nn.Module):
  """Shared parts of self- and cross-attention: projections and the core."""

  num_heads: int
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  # nn.Einsum initialises each kernel at its full rank, so the logical names
  # match the array (DenseGeneral boxes a flattened kernel, which breaks the
  # sharding constraint applied under a mesh). Fans as in a flattened Dense.
  def _project_in(self, x, name: str):
    """[B, T, D] -> [B, T, H, D/H]."""
    d_model = x.shape[-1]
    return nn.Einsum(
      (d_model, self.num_heads, d_model // self.num_heads),
      "btd,dhk->bthk",
      dtype=self.dtype,
      param_dtype=jnp.float32,
      kernel_init=nn.with_logical_partitioning(
        nn.initializers.xavier_uniform(in_axis=0, out_axis=(1, 2)), ("embed", "heads", "kv")
      ),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("heads", "kv")),
      name=name,
    )(x)

  def _project_out(self, x, d_model: int):
    """[B, T, H, D/H] -> [B, T, D]."""
    return nn.Einsum(
      x.shape[-2:] + (d_model,),
      "bthk,hkd->btd",
      dtype=self.dtype,
      param_dtype=jnp.float32,
      kernel_init=nn.with_logical_partitioning(
        nn.initializers.xavier_uniform(in_axis=(0, 1), out_axis=2), ("heads", "kv", "embed")
      ),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
      name="out",
    )(x)

  def _attend(self, query, key, value, mask, deterministic: bool):
    """Scaled dot-product attention.

    Keys and values are head-major, the layout the cache keeps, so that a
    decoding step reads them without transposing the whole cache.

    Args:
      query: [B, T, H, Dh]; key, value: [B, H, S, Dh].
      mask: bool, broadcastable to [B, H, T, S]; True = may attend. None = all.
      deterministic: disables dropout on the attention weights.

    Returns:
      ([B, T, H, Dh] in dtype, weights float32 [B, H, T, S]).
    """
    depth = query.shape[-1]
    query = query / jnp.sqrt(depth).astype(query.dtype)
    # Softmax in float32: bfloat16 logits lose too much precision.
    logits = jnp.einsum("bthd,bhsd->bhts", query, key).astype(jnp.float32)
    if mask is not None:
      logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1)
    dropped = nn.Dropout(self.dropout_rate)(weights, deterministic=deterministic)
    out = jnp.einsum("bhts,bhsd->bthd", dropped.astype(self.dtype), value)
    return out, weights


class SelfAttention(_Attention):
  """Causal multi-head self-attention with an optional KV cache.

  Attributes:
    max_len: cache length (positions) for decode mode.
  """

  max_len: int = 512

  @nn.compact
  def __call__(self, x, *, deterministic: bool, decode: bool = False):
    """x [B, T, D] -> [B, T, D]; decode=True after cache init needs T == 1."""
    _, length, d_model = x.shape
    query = self._project_in(x, "query")
    key = _head_major(self._project_in(x, "key"))
    value = _head_major(self._project_in(x, "value"))
    mask = jnp.tril(jnp.ones((length, length), bool))[None, None]
    if decode:
      is_initialized = self.has_variable("cache", "cached_key")
      cache_shape = key.shape[:2] + (self.max_len, key.shape[3])
      cached_key = self.variable("cache", "cached_key", jnp.zeros, cache_shape, key.dtype)
      cached_value = self.variable("cache", "cached_value", jnp.zeros, cache_shape, value.dtype)
      cache_index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
      if is_initialized:
        if length != 1:
          raise ValueError(f"decode=True takes one token per step, got tokens of length {length}.")
        index = cache_index.value
        key = jax.lax.dynamic_update_slice(cached_key.value, key, (0, 0, index, 0))
        value = jax.lax.dynamic_update_slice(cached_value.value, value, (0, 0, index, 0))
        cached_key.value, cached_value.value = key, value
        cache_index.value = index + 1
        # Attend to the filled part of the cache: positions 0..index.
        mask = (jnp.arange(self.max_len) <= index)[None, None, None, :]
    out, _ = self._attend(query, key, value, mask, deterministic)
    return self._project_out(out, d_model)


class CrossAttention(_Attention):
  """Multi-head attention from the text to the encoder memory.

  Sows the head-averaged attention weights, float32 [B, T, S], as
  ("intermediates", "cross_attention") for drawing attention maps.
  """

  @nn.compact
  def __call__(self, x, memory, *, deterministic: bool, decode: bool = False):
    """x [B, T, D], memory [B, S, D] -> [B, T, D]."""
    d_model = x.shape[-1]
    query = self._project_in(x, "query")
    if decode and self.has_variable("cache", "cached_key"):
      cached_key = self.variable("cache", "cached_key")
      cached_value = self.variable("cache", "cached_value")
      cache_index = self.variable("cache", "cache_index")
      # The memory is fixed during decoding: project it on the first step
      # only. lax.cond runs one branch, so later steps skip the projection.
      key, value = nn.cond(
        cache_index.value == 0,
        lambda module, m, k, v: (
          _head_major(module._project_in(m, "key")),
          _head_major(module._project_in(m, "value")),
        ),
        lambda module, m, k, v: (k, v),
        self,
        memory,
        cached_key.value,
        cached_value.value,
      )
      cached_key.value, cached_value.value = key, value
      cache_index.value = cache_index.value + 1
    else:
      key = _head_major(self._project_in(memory, "key"))
      value = _head_major(self._project_in(memory, "value"))
      if decode:  # Cache initialisation: create the variables, zero-filled.
        self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
        self.variable("cache", "cached_value", jnp.zeros, value.shape, value.dtype)
        self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
    out, weights = self._attend(query, key, value, None, deterministic)
    self.sow("intermediates", "cross_attention", weights.mean(axis=1))
    return self._project_out(out, d_model)


class DecoderLayer(nn.Module):
  """Self-attention, cross-attention and MLP blocks, post- or pre-norm."""

  num_heads: int
  mlp_dim: int
  max_len: int
  dropout_rate: float = 0.1
  pre_norm: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, memory, *, train: bool, decode: bool = False):
    """x [B, T, D], memory [B, S, D] -> [B, T, D]."""
    deterministic = not train
    d_model = x.shape[-1]
    attention_args = dict(
      num_heads=self.num_heads, dropout_rate=self.dropout_rate, dtype=self.dtype
    )

    def sublayer(x, index, fn):
      """Residual around fn, with LayerNorm before (pre-norm) or after the sum."""
      norm = _layer_norm(self.dtype, f"norm{index}")
      y = fn(norm(x) if self.pre_norm else x)
      x = x + nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
      return x if self.pre_norm else norm(x)

    def mlp(y):
      y = nn.gelu(
        _dense(self.mlp_dim, ("embed", "mlp"), self.dtype, "mlp_in")(y), approximate=False
      )
      y = nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
      return _dense(d_model, ("mlp", "embed"), self.dtype, "mlp_out")(y)

    self_attention = SelfAttention(max_len=self.max_len, name="self_attention", **attention_args)
    cross_attention = CrossAttention(name="cross_attention", **attention_args)
    x = sublayer(x, 1, lambda y: self_attention(y, deterministic=deterministic, decode=decode))
    x = sublayer(
      x, 2, lambda y: cross_attention(y, memory, deterministic=deterministic, decode=decode)
    )
    x = sublayer(x, 3, mlp)
    return nn.with_logical_constraint(x, _EMBED_AXES)


class TextDecoder(nn.Module):
  """Token embedding x sqrt(d) + 1D position encoding -> layers -> vocab logits.

  Attributes:
    vocab_size: output classes and embedding rows.
    max_len: longest token sequence; sizes the position table and the cache.
    d_model, num_layers, num_heads, mlp_dim, dropout_rate: as in the paper.
    pre_norm: pre-norm layers plus a final LayerNorm instead of post-norm.
    dtype: compute dtype; parameters and logits are float32.
  """

  vocab_size: int
  max_len: int
  d_model: int = 260
  num_layers: int = 6
  num_heads: int = 4
  mlp_dim: int = 1024
  dropout_rate: float = 0.1
  pre_norm: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, memory, tokens, *, train: bool, decode: bool = False):
    """memory [B, S, D], tokens int32 [B, T] -> logits float32 [B, T, vocab_size]."""
    length = tokens.shape[1]
    if length > self.max_len:
      raise ValueError(f"tokens have length {length}, more than max_len={self.max_len}.")
    x = nn.Embed(
      self.vocab_size,
      self.d_model,
      dtype=self.dtype,
      param_dtype=jnp.float32,
      embedding_init=nn.with_logical_partitioning(
        nn.initializers.variance_scaling(1.0, "fan_in", "normal", out_axis=0), ("vocab", "embed")
      ),
      name="embed",
    )(tokens)
    x = x * np.sqrt(self.d_model).astype(x.dtype)
    table = jnp.asarray(position.sinusoidal_1d(self.max_len, self.d_model), self.dtype)
    if decode:
      is_initialized = self.has_variable("cache", "cache_index")
      cache_index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
      if is_initialized:
        # One token per step, at position cache_index.
        x = x + jax.lax.dynamic_slice_in_dim(table, cache_index.value, 1)[None]
        cache_index.value = cache_index.value + 1
      else:
        x = x + table[None, :length]
    else:
      x = x + table[None, :length]
    x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
    x = nn.with_logical_constraint(x, _EMBED_AXES)
    memory = jnp.asarray(memory, self.dtype)
    for index in range(self.num_layers):
      x = DecoderLayer(
        num_heads=self.num_heads,
        mlp_dim=self.mlp_dim,
        max_len=self.max_len,
        dropout_rate=self.dropout_rate,
        pre_norm=self.pre_norm,
        dtype=self.dtype,
        name=f"layers_{index}",
      )(x, memory, train=train, decode=decode)
    if self.pre_norm:
      x = _layer_norm(self.dtype, "final_norm")(x)
    logits = _dense(self.vocab_size, ("embed", "vocab"), self.dtype, "head")(x)
    return logits.astype(jnp.float32)
