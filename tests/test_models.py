"""Tests for fphtr_jax.models: shapes, parameter counts, axis names, KV cache."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default as default_config
from configs import tiny as tiny_config
from fphtr_jax import pixels
from fphtr_jax.models import decoder as decoder_lib
from fphtr_jax.models import fphtr, position, resnet

VOCAB = 17
MAX_LEN = 9


def _key(seed):
  # XLA compiles the counter-based RNG of a whole model init slowly on CPU;
  # the RngBitGenerator-based keys compile several times faster.
  return jax.random.key(seed, impl="unsafe_rbg")


def _tiny_model(**overrides):
  kwargs = dict(
    vocab_size=VOCAB,
    max_len=MAX_LEN,
    encoder_width=8,
    d_model=32,
    num_layers=2,
    num_heads=2,
    mlp_dim=48,
    dropout_rate=0.1,
  )
  kwargs.update(overrides)
  return fphtr.FPHTR(**kwargs)


def _inputs(batch=2, height=64, width=96, length=MAX_LEN, seed=0):
  """Random images [B, H, W, 1] and tokens [B, T]; 64 x 96 gives S = 2 * 3."""
  image_rng, token_rng = jax.random.split(jax.random.key(seed))
  images = jax.random.normal(image_rng, (batch, height, width, 1))
  tokens = jax.random.randint(token_rng, (batch, length), 1, VOCAB)
  return images, tokens


def _init_and_run(model, images, tokens):
  """Variables, memory and teacher-forced logits, from one compiled init."""

  def encode_and_decode(module, images, tokens):
    memory = module.encode(images, train=False)
    return memory, module.decode(memory, tokens, train=False)

  (memory, logits), variables = jax.jit(
    lambda rng: model.init_with_output(rng, images, tokens, method=encode_and_decode)
  )(_key(0))
  return variables, memory, logits


@pytest.fixture(scope="module")
def tiny():
  """A tiny post-norm ResNet18 FPHTR, its variables, memory and logits."""
  model = _tiny_model()
  images, tokens = _inputs()
  variables, memory, logits = _init_and_run(model, images, tokens)
  return dict(
    model=model, images=images, tokens=tokens, variables=variables, memory=memory, logits=logits
  )


def _count(tree):
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def _torchvision_trunk_count(block, stage_sizes, width=64, in_channels=1):
  """Conv kernels + BN scale/bias of torchvision's ResNet without avgpool/fc."""
  count = 7 * 7 * in_channels * width + 2 * width
  in_features = width
  for stage, num_blocks in enumerate(stage_sizes):
    features = width * 2**stage
    for index in range(num_blocks):
      strides = 2 if stage > 0 and index == 0 else 1
      if block == "basic":
        out_features = features
        count += 9 * in_features * features + 2 * features
        count += 9 * features * features + 2 * features
      else:
        out_features = 4 * features
        count += in_features * features + 2 * features
        count += 9 * features * features + 2 * features
        count += features * out_features + 2 * out_features
      if strides != 1 or in_features != out_features:
        count += in_features * out_features + 2 * out_features
      in_features = out_features
  return count


def _decoder_count(vocab, d_model, num_layers, mlp_dim, pre_norm):
  attention = 4 * (d_model * d_model + d_model)  # q, k, v, out with biases
  mlp = d_model * mlp_dim + mlp_dim + mlp_dim * d_model + d_model
  layer = 2 * attention + mlp + 3 * 2 * d_model
  final_norm = 2 * d_model if pre_norm else 0
  return vocab * d_model + num_layers * layer + final_norm + d_model * vocab + vocab


def _decode_step_by_step(model, variables, memory, tokens, replace_memory_after_first=False):
  """Feeds tokens one at a time through the cache; returns [B, T, V] logits."""
  cache = fphtr.init_cache(model, tokens.shape[0], memory.shape[1])
  step = jax.jit(
    lambda cache, memory, token: model.apply(
      {**variables, "cache": cache},
      memory,
      token,
      train=False,
      decode=True,
      method=fphtr.FPHTR.decode,
      mutable=["cache"],
    )
  )
  logits = []
  for t in range(tokens.shape[1]):
    step_logits, mutated = step(cache, memory, tokens[:, t : t + 1])
    cache = mutated["cache"]
    logits.append(step_logits)
    if replace_memory_after_first:
      memory = jnp.full_like(memory, 7.0)
  return jnp.concatenate(logits, axis=1), cache


# --- Position encodings -------------------------------------------------------


def test_sinusoidal_tables():
  table = position.sinusoidal_1d(50, 8)
  assert table.shape == (50, 8) and table.dtype == np.float32
  np.testing.assert_allclose(table[0], [0, 1] * 4, atol=1e-7)
  np.testing.assert_allclose(table[7, 0], np.sin(7.0), rtol=1e-6)
  np.testing.assert_allclose(table[7, 3], np.cos(7.0 / 10000 ** (2 / 8)), rtol=1e-6)
  grid = position.sinusoidal_2d(3, 5, 8)
  assert grid.shape == (3, 5, 8)
  np.testing.assert_array_equal(grid[2, 4, :4], position.sinusoidal_1d(3, 4)[2])
  np.testing.assert_array_equal(grid[2, 4, 4:], position.sinusoidal_1d(5, 4)[4])
  with pytest.raises(ValueError, match="divisible by 4"):
    position.sinusoidal_2d(3, 5, 6)


# --- Encoder --------------------------------------------------------------------


@pytest.mark.parametrize(
  "name, height, width", [("resnet18", 64, 128), ("resnet34", 64, 128), ("resnet50", 65, 100)]
)
def test_encoder_output_shape(name, height, width):
  encoder = resnet.ImageEncoder(encoder=name, width=8, d_model=32)
  images = jnp.zeros((2, height, width, 1))
  memory, variables = jax.eval_shape(lambda: encoder.init_with_output(_key(0), images, train=False))
  # Every stride-2 layer rounds up, like 'SAME' padding.
  assert memory.shape == (2, math.ceil(height / 32) * math.ceil(width / 32), 32)
  assert memory.dtype == jnp.float32
  trunk = nn.unbox(variables["params"])["resnet"]
  assert trunk["conv1"]["kernel"].shape == (7, 7, 1, 8)
  assert trunk["layer4_0"]["conv1"]["kernel"].shape[-1] == 8 * 8  # width * 2**3
  assert variables["params"]["projection"]["kernel"].value.shape == (
    8 * 8 * resnet.RESNETS[name][0].expansion,
    32,
  )


@pytest.mark.parametrize("last_stride", [(2, 1), (1, 2), (1, 1)])
def test_encoder_last_stride_refines_the_grid(last_stride):
  encoder = resnet.ImageEncoder(width=8, d_model=32, last_stride=last_stride)
  images = jnp.zeros((2, 64, 128, 1))
  memory, variables = jax.eval_shape(lambda: encoder.init_with_output(_key(0), images, train=False))
  stride_h, stride_w = resnet.encoder_stride(last_stride)
  assert (stride_h, stride_w) == (16 * last_stride[0], 16 * last_stride[1])
  assert memory.shape == (2, (64 // stride_h) * (128 // stride_w), 32)
  # Same parameters as torchvision's trunk: only the stride changes.
  default = jax.eval_shape(
    lambda: resnet.ImageEncoder(width=8, d_model=32).init(_key(0), images, train=False)
  )
  assert jax.tree.map(lambda a: a.shape, variables) == jax.tree.map(lambda a: a.shape, default)


def test_blank_paper_has_no_frame():
  encoder = resnet.ImageEncoder(width=8, d_model=32, dropout_rate=0.0)
  page = jnp.full((1, 64, 128, 1), pixels.PAPER)
  memory, _ = jax.jit(lambda rng: encoder.init_with_output(rng, page, train=False))(_key(0))
  # Paper is 0 inside the trunk, like the convolutions' zero padding: no
  # feature anywhere, at the edges neither; only the position encoding remains.
  np.testing.assert_allclose(
    np.asarray(memory[0]), position.sinusoidal_2d(2, 4, 32).reshape(8, 32), atol=1e-5
  )


def test_encoder_runs(tiny):
  memory = tiny["memory"]
  assert memory.shape == (2, 2 * 3, 32) and memory.dtype == jnp.float32
  assert np.isfinite(np.asarray(memory)).all()
  # The 2D position encoding makes positions distinguishable even on a blank page.
  assert np.abs(np.diff(np.asarray(memory), axis=1)).max() > 0.1


@pytest.mark.parametrize(
  "name, block, expected",
  [
    # torchvision's 11,689,512 / 21,797,672 / 25,557,032 parameters, less the
    # classifier (512 or 2048 x 1000 + 1000) and 2 of the stem's 3 input channels.
    ("resnet18", "basic", 11_689_512 - 513_000 - 2 * 64 * 49),
    ("resnet34", "basic", 21_797_672 - 513_000 - 2 * 64 * 49),
    ("resnet50", "bottleneck", 25_557_032 - 2_049_000 - 2 * 64 * 49),
  ],
)
def test_resnet_trunk_matches_torchvision_parameter_count(name, block, expected):
  block_cls, stage_sizes = resnet.RESNETS[name]
  trunk = resnet.ResNet(block_cls, stage_sizes, width=64)
  shapes = jax.eval_shape(lambda: trunk.init(_key(0), jnp.zeros((1, 64, 64, 1)), train=False))
  assert _torchvision_trunk_count(block, stage_sizes) == expected
  assert _count(shapes["params"]) == expected
  # Running mean and variance for every BN channel, outside "params".
  bn_params = [x for x in jax.tree.leaves(nn.unbox(shapes["params"])) if x.ndim == 1]
  assert _count(shapes["batch_stats"]) == _count(bn_params)


def test_encoder_projection_parameter_count():
  encoder = resnet.ImageEncoder(encoder="resnet18", width=64, d_model=260)
  shapes = jax.eval_shape(lambda: encoder.init(_key(0), jnp.zeros((1, 64, 64, 1)), train=False))
  projection = nn.unbox(shapes["params"]["projection"])
  assert projection["kernel"].shape == (512, 260)
  assert _count(shapes["params"]) == _count(shapes["params"]["resnet"]) + 512 * 260 + 260


# --- Decoder --------------------------------------------------------------------


@pytest.mark.parametrize("pre_norm", [False, True])
def test_decoder_parameter_count_at_defaults(pre_norm):
  decoder = decoder_lib.TextDecoder(vocab_size=82, max_len=90, pre_norm=pre_norm)
  shapes = jax.eval_shape(
    lambda: decoder.init(
      jax.random.key(0), jnp.zeros((1, 4, 260)), jnp.zeros((1, 3), jnp.int32), train=False
    )
  )
  expected = _decoder_count(82, 260, 6, 1024, pre_norm)
  assert _count(shapes["params"]) == expected
  assert 6.4e6 < expected < 6.6e6


def _check_logical_names(params):
  known_names = {name for name, _ in default_config.get_config().mesh.rules}
  leaves = jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert leaves
  for leaf in leaves:
    assert isinstance(leaf, nn.LogicallyPartitioned), type(leaf)
    assert len(leaf.names) == len(leaf.value.shape), leaf.names
    assert set(leaf.names) <= known_names, leaf.names


def test_every_parameter_has_logical_axis_names(tiny):
  params = tiny["variables"]["params"]
  _check_logical_names(params)
  specs = nn.get_partition_spec(params)
  spec = jax.sharding.PartitionSpec
  decoder = specs["text_decoder"]
  assert decoder["embed"]["embedding"] == spec("vocab", "embed")
  assert decoder["layers_0"]["self_attention"]["query"]["kernel"] == spec("embed", "heads", "kv")
  assert decoder["layers_0"]["cross_attention"]["out"]["kernel"] == spec("heads", "kv", "embed")
  assert decoder["layers_0"]["mlp_out"]["kernel"] == spec("mlp", "embed")
  assert decoder["head"]["kernel"] == spec("embed", "vocab")
  encoder = specs["image_encoder"]
  assert encoder["resnet"]["conv1"]["kernel"] == spec(
    "conv_height", "conv_width", "conv_in", "conv_out"
  )
  assert encoder["resnet"]["bn1"]["scale"] == spec("conv_out")
  assert encoder["projection"]["kernel"] == spec("conv_in", "embed")


def test_traces_under_a_mesh_with_logical_rules(tiny):
  """Under a mesh, boxed parameters and activations get sharding constraints."""
  config = default_config.get_config()
  mesh = jax.sharding.Mesh(
    np.asarray(jax.devices()[:1]).reshape(1, 1, 1),
    ("data", "fsdp", "tensor"),
    axis_types=(jax.sharding.AxisType.Auto,) * 3,
  )
  # The Bottleneck and pre-norm variants, in both training and decode mode.
  model = _tiny_model(encoder="resnet50", pre_norm=True)
  images, tokens, memory = tiny["images"], tiny["tokens"], tiny["memory"]
  with jax.set_mesh(mesh), nn.logical_axis_rules(config.mesh.rules):
    variables = jax.eval_shape(lambda: model.init(_key(0), images, tokens, train=False))
    _check_logical_names(variables["params"])
    cache = fphtr.init_cache(model, 2, memory.shape[1])
    logits, _ = jax.eval_shape(
      lambda: model.apply(
        {**nn.unbox(variables), "cache": cache},
        memory,
        tokens[:, :1],
        train=False,
        decode=True,
        method=fphtr.FPHTR.decode,
        mutable=["cache"],
      )
    )
  assert logits.shape == (2, 1, VOCAB)


def test_forward_and_causality(tiny):
  model, variables, memory, tokens = (
    tiny["model"],
    tiny["variables"],
    tiny["memory"],
    tiny["tokens"],
  )
  logits = tiny["logits"]
  assert logits.shape == (2, MAX_LEN, VOCAB) and logits.dtype == jnp.float32
  decode = jax.jit(
    lambda tokens: model.apply(variables, memory, tokens, train=False, method=fphtr.FPHTR.decode)
  )
  decoded = decode(tokens)
  np.testing.assert_allclose(decoded, logits, atol=1e-5)
  # Changing token t + 1 leaves the logits at positions <= t alone.
  t = 3
  changed = tokens.at[:, t + 1].set(tokens[:, t + 1] % (VOCAB - 1) + 1)
  changed_logits = decode(changed)
  logits = decoded
  np.testing.assert_array_equal(changed_logits[:, : t + 1], logits[:, : t + 1])
  assert np.abs(changed_logits[:, t + 1 :] - logits[:, t + 1 :]).max() > 1e-4


@pytest.mark.parametrize("pre_norm", [False, True])
def test_kv_cache_matches_teacher_forcing(tiny, pre_norm):
  memory, tokens = tiny["memory"], tiny["tokens"]
  if pre_norm:
    model = _tiny_model(pre_norm=True)
    logits, variables = jax.jit(
      lambda rng: model.init_with_output(
        rng, memory, tokens, train=False, method=fphtr.FPHTR.decode
      )
    )(_key(1))
  else:
    model, variables, logits = tiny["model"], tiny["variables"], tiny["logits"]
  # The memory is replaced after the first step: its projection must be cached.
  step_logits, cache = _decode_step_by_step(
    model, variables, memory, tokens, replace_memory_after_first=True
  )
  np.testing.assert_allclose(step_logits, logits, atol=1e-5)
  indices = [
    x
    for path, x in jax.tree_util.tree_leaves_with_path(cache)
    if jax.tree_util.keystr(path).endswith("['cache_index']")
  ]
  assert len(indices) == 1 + 2 * model.num_layers
  assert all(int(x) == MAX_LEN for x in indices)


def test_decoder_rejects_bad_lengths(tiny):
  model, variables, memory, tokens = (
    tiny["model"],
    tiny["variables"],
    tiny["memory"],
    tiny["tokens"],
  )
  too_long = jnp.ones((2, MAX_LEN + 1), jnp.int32)
  with pytest.raises(ValueError, match=f"max_len={MAX_LEN}"):
    model.apply(variables, memory, too_long, train=False, method=fphtr.FPHTR.decode)
  cache = fphtr.init_cache(model, 2, memory.shape[1])
  with pytest.raises(ValueError, match="one token per step"):
    model.apply(
      {**variables, "cache": cache},
      memory,
      tokens[:, :2],
      train=False,
      decode=True,
      method=fphtr.FPHTR.decode,
      mutable=["cache"],
    )


def test_cross_attention_weights_are_sown(tiny):
  model, variables, memory = tiny["model"], tiny["variables"], tiny["memory"]
  tokens = tiny["tokens"][:, :5]
  _, state = model.apply(
    variables, memory, tokens, train=False, method=fphtr.FPHTR.decode, mutable=["intermediates"]
  )
  layer = state["intermediates"]["text_decoder"]["layers_1"]
  (weights,) = layer["cross_attention"]["cross_attention"]
  assert weights.shape == (2, 5, 2 * 3)  # [B, T, S]
  np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5)


def test_train_mode_updates_batch_stats_and_uses_dropout(tiny):
  model, variables, images, tokens = (
    tiny["model"],
    tiny["variables"],
    tiny["images"],
    tiny["tokens"],
  )

  @jax.jit
  def train_forward(rng):
    return model.apply(
      variables, images, tokens, train=True, rngs={"dropout": rng}, mutable=["batch_stats"]
    )

  logits_a, state = train_forward(_key(1))
  logits_b, _ = train_forward(_key(2))
  assert np.abs(logits_a - logits_b).max() > 1e-4
  old_mean = variables["batch_stats"]["image_encoder"]["resnet"]["bn1"]["mean"]
  new_mean = state["batch_stats"]["image_encoder"]["resnet"]["bn1"]["mean"]
  assert np.abs(new_mean - old_mean).max() > 0


def test_bfloat16_compute():
  model = _tiny_model(dtype=jnp.bfloat16, num_layers=1)
  images, tokens = _inputs(length=3)
  variables, memory, logits = _init_and_run(model, images, tokens)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nn.unbox(variables["params"])))
  assert memory.dtype == jnp.bfloat16 and memory.shape == (2, 6, 32)
  assert logits.dtype == jnp.float32 and np.isfinite(np.asarray(logits)).all()
  step_logits, _ = _decode_step_by_step(model, variables, memory, tokens)
  # Both paths round to bfloat16 at different points; they agree to that precision.
  np.testing.assert_allclose(step_logits, logits, atol=0.1)


# --- create_model -----------------------------------------------------------------


def test_create_model_from_config():
  config = tiny_config.get_config().model
  model = fphtr.create_model(config, vocab_size=VOCAB, max_len=MAX_LEN)
  assert (model.encoder, model.d_model, model.num_layers) == (
    config.encoder,
    config.d_model,
    config.num_layers,
  )
  assert model.dtype == jnp.float32
  config.dtype = "bfloat16"
  assert fphtr.create_model(config, VOCAB, MAX_LEN).dtype == jnp.bfloat16


@pytest.mark.parametrize(
  "field, value, message",
  [
    ("encoder", "resnet101", r"model\.encoder.*resnet18"),
    ("dtype", "float16", r"model\.dtype"),
    ("num_heads", 3, r"model\.d_model=32 .*model\.num_heads=3"),
    ("d_model", 30, r"model\.d_model=30 .*divisible by 4"),
  ],
)
def test_create_model_rejects_bad_config(field, value, message):
  config = tiny_config.get_config().model
  config[field] = value
  if field == "d_model":
    config.num_heads = 1
  with pytest.raises(ValueError, match=message):
    fphtr.create_model(config, VOCAB, MAX_LEN)
