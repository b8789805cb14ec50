"""Greedy and beam search: KV cache against full re-decoding, beam against greedy.

On random weights (decoder only) and on a tiny model trained by the training
CLI (the fixture `trained_tiny_workdir`, trained once per test run), plus
decoding with the batch sharded over an 8-device mesh in a subprocess.
"""

import os
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fphtr_jax import confidence, decoding, inference, transcribe
from fphtr_jax import metrics as text_metrics
from fphtr_jax import tokenizer as tokenizer_lib
from fphtr_jax.models import fphtr

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


_decode_jit = jax.jit(
  transcribe.decode_memory,
  static_argnums=0,
  static_argnames=("max_len", "beam_size", "length_penalty", "use_cache", "ignore_eos"),
)
_encode_jit = jax.jit(
  lambda model, variables, images: model.apply(
    variables, images, train=False, method=fphtr.FPHTR.encode
  ),
  static_argnums=0,
)


def _decode(model, variables, memory, **kwargs) -> decoding.DecodeOutput:
  return jax.device_get(_decode_jit(model, variables, memory, **kwargs))


@pytest.fixture(scope="module")
def random_model():
  """(model, decoder variables, memory) of configs/tiny.py: random weights, random memory.

  The searches only run the decoder; leaving the encoder out keeps this fast.
  """
  from configs import tiny

  config = tiny.get_config()
  model = fphtr.create_model(
    config.model, tokenizer_lib.Tokenizer(config.data.charset).vocab_size, config.data.max_len
  )
  d = config.data
  memory_len = -(-d.image_height // 32) * -(-d.image_width // 32)
  memory = jax.random.normal(jax.random.key(0), (4, memory_len, config.model.d_model))
  init = jax.jit(
    lambda rng, memory, tokens: nn.unbox(
      model.init(rng, memory, tokens, train=False, method=fphtr.FPHTR.decode)
    )
  )
  variables = init(jax.random.key(1), memory[:1], jnp.zeros((1, d.max_len - 1), jnp.int32))
  return model, variables, memory


@pytest.fixture(scope="module")
def trained(trained_tiny_workdir):
  """(run, eval images [32, H, W, 1], their memory, reference texts) of the trained model."""
  from input_pipeline import datasets

  config = inference.load_config(trained_tiny_workdir)
  config.eval.num_examples = 32
  config.eval.batch_size = 32
  run = inference.restore_run(trained_tiny_workdir, config, "latest")
  batch = next(datasets.create_eval_dataset(config, "validation").as_numpy_iterator())
  images = jnp.asarray(batch["image"])
  return (
    run,
    images,
    _encode_jit(run.model, run.variables, images),
    run.tokenizer.decode_batch(batch["tokens"]),
  )


# --- Random weights ----------------------------------------------------------------------


def test_cached_equals_uncached_on_random_weights(random_model):
  model, variables, memory = random_model
  for ignore_eos in (False, True):
    cached = _decode(model, variables, memory, max_len=model.max_len, ignore_eos=ignore_eos)
    uncached = _decode(
      model, variables, memory, max_len=model.max_len, ignore_eos=ignore_eos, use_cache=False
    )
    np.testing.assert_array_equal(cached.tokens, uncached.tokens)
    np.testing.assert_allclose(cached.token_log_probs, uncached.token_log_probs, atol=1e-5)
  # Forced to full length: every position written, never a special token, and
  # not one token repeated everywhere, so the comparison has something to compare.
  assert (cached.tokens[:, 1:] >= tokenizer_lib.NUM_SPECIAL).all()
  assert len(np.unique(cached.tokens[:, 1:])) > 3


def test_beam_search_cached_equals_uncached_on_random_weights(random_model):
  model, variables, memory = random_model
  kwargs = dict(max_len=16, beam_size=3, length_penalty=0.6)
  cached = _decode(model, variables, memory, **kwargs)
  uncached = _decode(model, variables, memory, use_cache=False, **kwargs)
  np.testing.assert_array_equal(cached.tokens, uncached.tokens)
  np.testing.assert_allclose(cached.token_log_probs, uncached.token_log_probs, atol=1e-5)


def test_beam_of_one_is_greedy_on_random_weights(random_model):
  model, variables, memory = random_model
  greedy = _decode(model, variables, memory, max_len=model.max_len)
  beam = _decode(model, variables, memory, max_len=model.max_len, beam_size=1)
  np.testing.assert_array_equal(greedy.tokens, beam.tokens)
  np.testing.assert_allclose(greedy.token_log_probs, beam.token_log_probs, atol=1e-6)


def test_beam_search_callback_with_one_beam_is_greedy_search():
  """The searches alone, over a fixed table of next-token logits (no model)."""
  vocab, steps = 8, 6
  table = jax.random.normal(jax.random.key(0), (2, steps + 1, vocab)) * 3.0

  def tokens_to_logits(tokens, state):
    del tokens
    rows = jnp.arange(state["logits"].shape[0])
    return state["logits"][rows, state["step"]], {**state, "step": state["step"] + 1}

  # Every hypothesis ends at the last step, so that all of them finish.
  table = table.at[:, steps - 1, tokenizer_lib.EOS_ID].set(20.0)
  state = {"logits": table, "step": jnp.zeros((2,), jnp.int32)}
  greedy = decoding.greedy_search(tokens_to_logits, state, 2, steps + 1)
  beam = decoding.beam_search(tokens_to_logits, state, 2, 1, steps + 1)
  np.testing.assert_array_equal(greedy.tokens, beam.tokens)
  np.testing.assert_allclose(greedy.token_log_probs, beam.token_log_probs)
  # Independent of the context: the greedy path is the best prefix at every
  # step, so beam 4 keeps it and can only find better.
  beam4 = decoding.beam_search(tokens_to_logits, state, 2, 4, steps + 1)
  assert (beam4.token_log_probs.sum(1) >= greedy.token_log_probs.sum(1) - 1e-5).all()


def test_greedy_stops_at_eos_and_pads_after():
  vocab = 6
  # Steps 0, 1, 2 emit 3, 4, <EOS>; then only <PAD> follows.
  table = jnp.full((5, vocab), -5.0).at[0, 3].set(5).at[1, 4].set(5).at[2, 2].set(5)
  table = table.at[3:, 5].set(5)

  def tokens_to_logits(tokens, step):
    return jnp.broadcast_to(table[step], (tokens.shape[0], vocab)), step + 1

  out = decoding.greedy_search(tokens_to_logits, jnp.int32(0), 1, 6)
  np.testing.assert_array_equal(out.tokens[0], [1, 3, 4, 2, 0, 0])
  assert out.token_log_probs[0, 4:].tolist() == [0.0, 0.0]


def test_transcription_lines_and_confidences():
  tokenizer = tokenizer_lib.Tokenizer("ab\n")
  a, b, newline = 3, 4, 5
  tokens = [1, a, b, newline, b, 2, 0]
  probs = np.array([1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 1.0])
  text = confidence.transcription(tokenizer, tokens, np.log(probs))
  assert text.text == "ab\nb"
  assert [l.text for l in text.lines] == ["ab", "b"]
  np.testing.assert_allclose(text.char_probs, [0.9, 0.8, 0.7, 0.6])
  np.testing.assert_allclose(text.lines[0].confidence, np.mean([0.9, 0.8, 0.7]))
  np.testing.assert_allclose(text.lines[1].min_confidence, 0.5)  # <EOS> ends the line
  np.testing.assert_allclose(text.confidence, np.mean([0.9, 0.8, 0.7, 0.6, 0.5]))
  np.testing.assert_allclose(text.log_prob, np.log(probs[1:6]).sum(), rtol=1e-6)
  assert text.lines[0].token_span == (1, 4) and text.lines[1].token_span == (4, 6)


def test_max_len_beyond_the_model_names_the_field(random_model):
  model, variables, memory = random_model
  with pytest.raises(ValueError, match="decode.max_len"):
    transcribe.decode_memory(model, variables, memory, max_len=model.max_len + 1)
  with pytest.raises(ValueError, match="decode.beam_size"):
    transcribe.decode_memory(model, variables, memory, max_len=model.max_len, beam_size=0)


# --- A trained model -----------------------------------------------------------------------


@pytest.mark.slow
def test_cached_equals_uncached_on_trained_model(trained):
  run, _, memory, _ = trained
  max_len = run.model.max_len
  cached = _decode(run.model, run.variables, memory, max_len=max_len)
  uncached = _decode(run.model, run.variables, memory, max_len=max_len, use_cache=False)
  np.testing.assert_array_equal(cached.tokens, uncached.tokens)
  np.testing.assert_allclose(cached.token_log_probs, uncached.token_log_probs, atol=1e-5)
  beam = _decode(run.model, run.variables, memory, max_len=max_len, beam_size=1)
  np.testing.assert_array_equal(cached.tokens, beam.tokens)


@pytest.mark.slow
def test_beam_search_beats_greedy_on_trained_model(trained):
  run, _, memory, references = trained
  max_len = run.model.max_len
  greedy = _decode(run.model, run.variables, memory, max_len=max_len)
  beam = _decode(run.model, run.variables, memory, max_len=max_len, beam_size=4)
  greedy_log_prob = greedy.token_log_probs.sum(axis=1)
  beam_log_prob = beam.token_log_probs.sum(axis=1)
  share = float(np.mean(beam_log_prob >= greedy_log_prob - 1e-4))
  greedy_cer = text_metrics.character_error_rate(
    references, run.tokenizer.decode_batch(greedy.tokens)
  )
  beam_cer = text_metrics.character_error_rate(references, run.tokenizer.decode_batch(beam.tokens))
  print(
    f"beam 4 log-prob >= greedy on {share:.0%} of {len(references)} examples; "
    f"CER beam {beam_cer:.4f}, greedy {greedy_cer:.4f}"
  )
  assert share >= 0.75, (beam_log_prob, greedy_log_prob)
  assert beam_log_prob.mean() >= greedy_log_prob.mean() - 1e-4
  assert beam_cer <= greedy_cer + 0.02, (beam_cer, greedy_cer)


@pytest.mark.slow
def test_cross_attention_covers_the_encoder_grid(trained):
  run, images, memory, _ = trained
  out = _decode(run.model, run.variables, memory[:2], max_len=run.model.max_len)
  attention = np.asarray(
    jax.jit(transcribe.cross_attention, static_argnums=0)(
      run.model, run.variables, images[:2], out.tokens
    )
  )
  d = run.config.data
  grid = -(-d.image_height // 32) * -(-d.image_width // 32)
  assert attention.shape == (2, d.max_len - 1, grid)
  np.testing.assert_allclose(attention.sum(-1), 1.0, rtol=1e-5)


# --- Sharded over a mesh --------------------------------------------------------------------

_SHARDED_SCRIPT = textwrap.dedent("""
    import flax.linen as nn
    import jax, jax.numpy as jnp, numpy as np
    from configs import tiny
    from fphtr_jax import sharding, transcribe
    from fphtr_jax import tokenizer as tokenizer_lib
    from fphtr_jax.models import fphtr

    assert jax.device_count() == 8, jax.devices()
    config = tiny.get_config()
    d = config.data
    model = fphtr.create_model(config.model, tokenizer_lib.Tokenizer(d.charset).vocab_size,
                               d.max_len)
    memory = np.asarray(jax.random.normal(jax.random.key(0), (8, 4, config.model.d_model)))
    variables = jax.jit(lambda rng, m, t: nn.unbox(model.init(
        rng, m, t, train=False, method=fphtr.FPHTR.decode)))(
            jax.random.key(1), memory[:1], jnp.zeros((1, d.max_len - 1), jnp.int32))
    results = {}
    for name, mesh_shape in (("single", dict(data=1, fsdp=1, tensor=1)),
                             ("data_fsdp", dict(data=4, fsdp=2, tensor=1))):
      config.mesh.update(mesh_shape)
      mesh = sharding.create_mesh(config.mesh, jax.devices()[:1] if name == "single" else None)
      with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.logical_rules(config.mesh)):
        batch = sharding.put_batch({"memory": memory}, mesh)
        for beam in (1, 2):
          out = jax.jit(lambda v, m: transcribe.decode_memory(
              model, v, m, max_len=d.max_len, beam_size=beam))(variables, batch["memory"])
          if name != "single":  # one example per device: the batch stayed split
            assert out.tokens.sharding.shard_shape(out.tokens.shape)[0] == 1, out.tokens.sharding
          results[name, beam] = np.asarray(out.tokens)
    for beam in (1, 2):
      np.testing.assert_array_equal(results["data_fsdp", beam], results["single", beam])
    print("SHARDED_OK")
""")


@pytest.mark.slow
def test_decoding_with_the_batch_sharded_over_eight_devices():
  env = dict(
    os.environ,
    XLA_FLAGS="--xla_force_host_platform_device_count=8",
    JAX_PLATFORMS="cpu",
    PYTHONPATH=ROOT,
  )
  result = subprocess.run(
    [sys.executable, "-c", _SHARDED_SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True
  )
  assert result.returncode == 0 and "SHARDED_OK" in result.stdout, result.stderr[-4000:]
