"""Tests for kattn.flax: the registry, MultiHeadSelfAttention, redraw, models.

Float32 tolerance ATOL = 1e-5 on O(1) outputs: a module must compute what its
reference function computes, so the two differ only by the rounding of
differently associated float32 matmuls (and, for softmax, of
`jax.nn.dot_product_attention` against `kattn.softmax_attention`).
"""

import re

import chex
import flax
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import kattn
from kattn.flax import registry
from kattn.flax import (
    AttentionSpec,
    EncoderBlock,
    MultiHeadSelfAttention,
    VisionTransformer,
    available_attentions,
    get_attention,
    redraw,
    register_attention,
    register_projection_sampler,
)

BUILTINS = ("softmax", "favor", "favor_hyperbolic", "favor_trig", "relu", "elu")
RANDOM_FEATURE_ATTENTIONS = ("favor", "favor_hyperbolic", "favor_trig")
ATOL = 1e-5
# One small configuration shared by the tests (MultiHeadSelfAttention inputs
# match the ViT's tokens), so eagerly compiled ops are reused across tests.
WIDTH, HEADS, HEAD_DIM, FEATURES = 16, 2, 8, 16
TOKENS = (2, 5, WIDTH)
IMAGES = (2, 8, 8, 3)

_settings = hypothesis.settings(max_examples=8, deadline=None)


@pytest.fixture
def isolated_registry(monkeypatch):
  """Registrations made in a test are undone after it."""
  monkeypatch.setattr(registry, "_ATTENTIONS", dict(registry._ATTENTIONS))
  monkeypatch.setattr(registry, "_SAMPLERS", dict(registry._SAMPLERS))


def _tokens(shape, seed=0):
  return jax.random.normal(jax.random.key(seed), shape)


def _small_vit(**overrides):
  config = dict(
      num_classes=5, width=WIDTH, depth=1, num_heads=HEADS, mlp_dim=32,
      num_random_features=FEATURES,
  )
  config.update(overrides)
  return VisionTransformer(**config)


def _param_names(variables):
  paths = jax.tree_util.tree_flatten_with_path(variables["params"])[0]
  return {str(getattr(k, "key", k)) for path, _ in paths for k in path}


# ----------------------------------------------------------------- registry


def test_builtins_are_registered():
  assert set(BUILTINS) <= set(available_attentions())
  assert get_attention("favor").num_random_features == 256
  assert get_attention("favor").projection_sampler == "orthogonal"
  for name in ("softmax", "relu", "elu"):
    assert get_attention(name).projection_sampler is None


def test_unknown_attention_lists_valid_names():
  with pytest.raises(ValueError, match="attention") as info:
    get_attention("nope")
  for name in BUILTINS:
    assert repr(name) in str(info.value)


def test_duplicate_registration_raises(isolated_registry):
  spec = AttentionSpec("favor", lambda q, k, v, *, projection, causal: v)
  with pytest.raises(ValueError, match="already registered"):
    register_attention(spec)
  register_attention(spec, overwrite=True)
  assert get_attention("favor") is spec
  with pytest.raises(ValueError, match="already registered"):
    register_projection_sampler(
        "gaussian", kattn.gaussian_random_projection
    )


def test_spec_validation(isolated_registry):
  fn = lambda q, k, v, *, projection, causal: v
  with pytest.raises(ValueError, match="projection_sampler"):
    AttentionSpec("half", fn, num_random_features=8)
  with pytest.raises(ValueError, match="num_random_features"):
    AttentionSpec("zero", fn, 0, "gaussian")
  with pytest.raises(ValueError, match="registered samplers"):
    register_attention(AttentionSpec("lost", fn, 8, "no_such_sampler"))


def test_registered_attention_is_used_by_name(isolated_registry):
  calls = []

  def mine(q, k, v, *, projection, causal):
    calls.append((projection.shape, causal))
    return v

  register_attention(AttentionSpec("mine", mine, 6, "gaussian"))
  layer = MultiHeadSelfAttention(
      num_heads=HEADS, attention="mine", causal=True
  )
  x = _tokens(TOKENS)
  variables = layer.init(jax.random.key(0), x)
  out = layer.apply(variables, x)

  assert calls[-1] == ((6, HEAD_DIM), True)
  assert set(variables["random_features"]) == {"projection_gaussian"}
  p = variables["params"]
  v = jnp.einsum("blw,whd->blhd", x, p["value"]["kernel"]) + p["value"]["bias"]
  expected = (
      jnp.einsum("blhd,hdo->blo", v, p["out"]["kernel"]) + p["out"]["bias"]
  )
  np.testing.assert_allclose(out, expected, atol=ATOL)
  redrawn = redraw(variables, jax.random.key(1))
  assert not np.array_equal(
      redrawn["random_features"]["projection_gaussian"],
      variables["random_features"]["projection_gaussian"],
  )


# ------------------------------------------------ MultiHeadSelfAttention


@pytest.mark.parametrize("attention", BUILTINS)
def test_attention_shapes_dtypes_and_collections(attention):
  # Abstract evaluation: shapes only; values are checked by the reference and
  # gradient tests.
  layer = MultiHeadSelfAttention(
      num_heads=3, attention=attention, num_random_features=8, out_features=10
  )
  x = jax.ShapeDtypeStruct((2, 3, 7, 12), jnp.float32)
  variables = jax.eval_shape(layer.init, jax.random.key(0), x)
  out = jax.eval_shape(layer.apply, variables, x)

  chex.assert_shape(out, (2, 3, 7, 10))
  chex.assert_type(out, jnp.float32)
  assert not any("projection" in n for n in _param_names(variables))
  if attention in RANDOM_FEATURE_ATTENTIONS:
    projection = variables["random_features"]["projection_orthogonal"]
    chex.assert_shape(projection, (8, 4))
  else:
    assert set(variables) == {"params"}


def test_default_feature_count_and_qkv_features():
  layer = MultiHeadSelfAttention(num_heads=2, qkv_features=8)
  variables = jax.eval_shape(layer.init, jax.random.key(0), jnp.ones((1, 3, 6)))
  chex.assert_shape(
      variables["random_features"]["projection_orthogonal"], (256, 4)
  )
  chex.assert_shape(variables["params"]["query"]["kernel"], (6, 2, 4))
  chex.assert_shape(variables["params"]["out"]["kernel"], (2, 4, 6))


def _by_hand(variables, x, attention_fn):
  p = variables["params"]
  project = lambda name: (
      jnp.einsum("...w,whd->...hd", x, p[name]["kernel"]) + p[name]["bias"]
  )
  out = attention_fn(project("query"), project("key"), project("value"))
  out = jnp.einsum("...hd,hdo->...o", out, p["out"]["kernel"])
  return out + p["out"]["bias"]


@pytest.mark.parametrize("causal", [False, True])
def test_favor_module_is_favor_attention(causal):
  layer = MultiHeadSelfAttention(
      num_heads=HEADS, num_random_features=FEATURES, causal=causal
  )
  x = _tokens((2,) + TOKENS)
  variables = layer.init(jax.random.key(0), x)
  # The module must use the stored projection, including a redrawn one.
  for variables in (variables, redraw(variables, jax.random.key(1))):
    projection = variables["random_features"]["projection_orthogonal"]
    expected = _by_hand(
        variables, x,
        lambda q, k, v: kattn.favor_attention(
            q, k, v, projection=projection, causal=causal
        ),
    )
    np.testing.assert_allclose(layer.apply(variables, x), expected, atol=ATOL)


@pytest.mark.parametrize("causal", [False, True])
def test_softmax_module_is_softmax_attention(causal):
  layer = MultiHeadSelfAttention(
      num_heads=HEADS, attention="softmax", causal=causal
  )
  x = _tokens((2,) + TOKENS)
  variables = layer.init(jax.random.key(0), x)
  expected = _by_hand(
      variables, x,
      lambda q, k, v: kattn.softmax_attention(q, k, v, causal=causal),
  )
  np.testing.assert_allclose(layer.apply(variables, x), expected, atol=ATOL)


_CAUSAL_LENGTH = 12


@pytest.fixture(scope="module")
def causal_layers():
  """Jitted causal apply functions, compiled once per attention."""
  x = _tokens((1, _CAUSAL_LENGTH, WIDTH))
  layers = {}
  for attention in ("softmax", "favor", "relu"):
    layer = MultiHeadSelfAttention(
        num_heads=HEADS, attention=attention, num_random_features=FEATURES,
        causal=True,
    )
    variables = layer.init(jax.random.key(0), x)
    layers[attention] = (variables, jax.jit(layer.apply))
  return x, layers


@pytest.mark.parametrize("attention", ["softmax", "favor", "relu"])
@_settings
@hypothesis.given(
    t=st.integers(0, _CAUSAL_LENGTH - 2), seed=st.integers(0, 2**16)
)
def test_causal_outputs_ignore_future_tokens(causal_layers, attention, t, seed):
  x, layers = causal_layers
  variables, apply = layers[attention]
  future = _tokens((1, _CAUSAL_LENGTH - t - 1, WIDTH), seed=seed)
  changed = x.at[:, t + 1:].set(10.0 * future)
  np.testing.assert_array_equal(
      apply(variables, x)[:, : t + 1], apply(variables, changed)[:, : t + 1]
  )


def test_dropout():
  layer = MultiHeadSelfAttention(
      num_heads=HEADS, num_random_features=FEATURES, dropout_rate=0.5
  )
  x = _tokens(TOKENS)
  variables = layer.init(jax.random.key(0), x)
  apply = jax.jit(layer.apply, static_argnames="deterministic")
  rngs = lambda seed: {"dropout": jax.random.key(seed)}

  deterministic = apply(variables, x, rngs=rngs(1))
  np.testing.assert_array_equal(
      deterministic, apply(variables, x, rngs=rngs(2))
  )
  dropped = apply(variables, x, deterministic=False, rngs=rngs(1))
  assert not np.allclose(dropped, deterministic)
  assert not np.allclose(
      dropped, apply(variables, x, deterministic=False, rngs=rngs(2))
  )
  np.testing.assert_array_equal(
      dropped, apply(variables, x, deterministic=False, rngs=rngs(1))
  )


# ------------------------------------------------------------------ redraw


@pytest.fixture(scope="module")
def vit_variables():
  model = _small_vit(depth=2)
  return model.init(jax.random.key(0), _tokens(IMAGES))


def test_vit_dropout(vit_variables):
  model = _small_vit(depth=2, dropout_rate=0.3)
  images = _tokens(IMAGES)
  deterministic = model.apply(vit_variables, images)
  np.testing.assert_array_equal(
      deterministic, model.apply(vit_variables, images)
  )
  dropped = model.apply(
      vit_variables, images, deterministic=False,
      rngs={"dropout": jax.random.key(1)},
  )
  assert not np.allclose(dropped, deterministic)


def test_redraw_changes_every_projection_and_nothing_else(vit_variables):
  new = redraw(vit_variables, jax.random.key(7))

  chex.assert_trees_all_equal(new["params"], vit_variables["params"])
  chex.assert_trees_all_equal_shapes_and_dtypes(new, vit_variables)
  old_leaves = jax.tree_util.tree_leaves(vit_variables["random_features"])
  new_leaves = jax.tree_util.tree_leaves(new["random_features"])
  assert len(new_leaves) == 2
  for old, fresh in zip(old_leaves, new_leaves):
    assert np.all(old != fresh)
  # Each leaf gets its own key.
  assert np.all(new_leaves[0] != new_leaves[1])


def test_redraw_is_deterministic_in_key_and_jittable(vit_variables):
  key = jax.random.key(3)
  eager = redraw(vit_variables, key)
  chex.assert_trees_all_equal(eager, redraw(vit_variables, key))
  chex.assert_trees_all_close(
      jax.jit(redraw)(vit_variables, key), eager, atol=ATOL
  )
  other = redraw(vit_variables, jax.random.key(4))
  for a, b in zip(
      jax.tree_util.tree_leaves(eager["random_features"]),
      jax.tree_util.tree_leaves(other["random_features"]),
  ):
    assert np.all(a != b)


def test_redrawn_projection_has_orthogonal_blocks(vit_variables):
  new = redraw(vit_variables, jax.random.key(5))
  projection = new["random_features"]["encoderblock_0"]["attention"][
      "projection_orthogonal"
  ]
  chex.assert_shape(projection, (FEATURES, HEAD_DIM))
  rows = projection / jnp.linalg.norm(projection, axis=-1, keepdims=True)
  for block in rows.reshape(-1, HEAD_DIM, HEAD_DIM):
    np.testing.assert_allclose(block @ block.T, jnp.eye(HEAD_DIM), atol=1e-5)


def test_redraw_without_random_features_is_identity():
  layer = MultiHeadSelfAttention(num_heads=HEADS, attention="softmax")
  variables = layer.init(jax.random.key(0), _tokens(TOKENS))
  assert redraw(variables, jax.random.key(1)) is variables


def test_redraw_keeps_frozen_dicts():
  variables = flax.core.freeze({
      "params": {"w": jnp.ones(3)},
      "random_features": {"projection_gaussian": jnp.zeros((4, 2))},
  })
  new = redraw(variables, jax.random.key(0))
  assert isinstance(new, flax.core.FrozenDict)
  assert np.all(new["random_features"]["projection_gaussian"] != 0)


@pytest.mark.parametrize(
    "name, match", [("projection_nope", "nope"), ("weights", "projection_")]
)
def test_redraw_rejects_unknown_samplers(name, match):
  variables = {"random_features": {"layer": {name: jnp.zeros((4, 2))}}}
  with pytest.raises(ValueError, match=match):
    redraw(variables, jax.random.key(0))


# ------------------------------------------------------------------ errors
# Argument errors are raised while tracing, so abstract evaluation finds them
# without compiling anything.


def _init_abstract(module, shape):
  return jax.eval_shape(
      module.init, jax.random.key(0), jax.ShapeDtypeStruct(shape, jnp.float32)
  )


def test_heads_must_divide_width():
  layer = MultiHeadSelfAttention(num_heads=3)
  for match in ("num_heads", "qkv_features"):
    with pytest.raises(ValueError, match=match):
      _init_abstract(layer, (1, 4, 8))
  with pytest.raises(ValueError, match="num_heads"):
    _init_abstract(_small_vit(num_heads=3), (1, 8, 8, 3))


def test_unknown_attention_raises():
  layer = MultiHeadSelfAttention(num_heads=2, attention="nope")
  with pytest.raises(ValueError, match="attention.*favor"):
    _init_abstract(layer, (1, 4, 8))


@pytest.mark.parametrize("num_random_features", [0, -4])
def test_non_positive_feature_count_raises(num_random_features):
  layer = MultiHeadSelfAttention(
      num_heads=2, num_random_features=num_random_features
  )
  with pytest.raises(ValueError, match="num_random_features"):
    _init_abstract(layer, (1, 4, 8))


@hypothesis.settings(max_examples=25, deadline=None)
@hypothesis.given(
    patch_size=st.integers(2, 5),
    height=st.integers(1, 12),
    width=st.integers(1, 12),
)
def test_patch_size_must_divide_image(patch_size, height, width):
  hypothesis.assume(height % patch_size or width % patch_size)
  model = _small_vit(patch_size=patch_size)
  with pytest.raises(ValueError, match="patch_size"):
    _init_abstract(model, (1, height, width, 3))


@pytest.mark.parametrize("shape", [(8, 8, 3), (1, 2, 8, 8, 3)])
def test_image_rank_must_be_four(shape):
  with pytest.raises(ValueError, match="images"):
    _init_abstract(_small_vit(), shape)


def test_unknown_position_embedding_raises():
  with pytest.raises(ValueError, match="position_embedding"):
    _init_abstract(_small_vit(position_embedding="sinusoidal"), (1, 8, 8, 3))


_BAD_VIT_FIELDS = [
    ("width", 0, r"`width` must be a positive integer; got 0\."),
    ("width", -16, r"`width` must be a positive integer; got -16\."),
    ("width", 16.0, r"`width` must be a positive integer; got 16\.0\."),
    ("width", 15,
     r"`width` \(15\) must be divisible by `num_heads`; got num_heads=2\."),
    ("num_classes", 0, r"`num_classes` must be a positive integer; got 0\."),
    ("depth", 0, r"`depth` must be a positive integer; got 0\."),
    ("num_heads", 0, r"`num_heads` must be a positive integer; got 0\."),
    ("mlp_dim", 0, r"`mlp_dim` must be a positive integer; got 0\."),
    ("patch_size", 0, r"`patch_size` must be a positive integer; got 0\."),
    ("num_random_features", 0,
     r"`num_random_features` must be a positive integer; got 0\."),
]


@pytest.mark.parametrize("field, value, match", [
    pytest.param(*case, id=f"{case[0]}={case[1]}") for case in _BAD_VIT_FIELDS
])
def test_vit_fields_are_checked_before_any_layer(field, value, match):
  # A zero width or class count used to reach an initialiser's fan-in as a
  # ZeroDivisionError; a width the heads do not divide blamed `qkv_features`.
  with pytest.raises(ValueError, match=match):
    _init_abstract(_small_vit(**{field: value}), IMAGES)


@pytest.mark.parametrize("kwargs, shape, match", [
    (dict(qkv_features=0), TOKENS,
     r"`qkv_features` must be a positive integer; got 0\."),
    (dict(qkv_features=-2), TOKENS,
     r"`qkv_features` must be a positive integer; got -2\."),
    (dict(out_features=0), TOKENS,
     r"`out_features` must be a positive integer; got 0\."),
    ({}, (2, 0, WIDTH),
     r"`x` must hold at least one token \(axis -2\); got shape \(2, 0, 16\)"),
    ({}, (2, 5, 0),
     r"`x` must have a positive width \(axis -1\); got shape \(2, 5, 0\)"),
], ids=["qkv_features=0", "qkv_features=-2", "out_features=0", "no_tokens",
        "no_width"])
def test_attention_module_rejects_empty_widths_and_tokens(kwargs, shape, match):
  # Before, a 0 width silently meant "the input width" and an empty input
  # divided by zero.
  layer = MultiHeadSelfAttention(num_heads=HEADS, **kwargs)
  with pytest.raises(ValueError, match=match):
    _init_abstract(layer, shape)


_KEY = jax.random.key(0)
_NO_WIDTH = r"`x` must have a positive width \(axis -1\); got shape "
_NO_CHANNEL = r"`x` must have at least one channel \(axis -1\); got shape "


@pytest.mark.parametrize("init, match", [
    (lambda: kattn.flax.RelativeSelfAttention(
        num_heads=HEADS, relative_position="fft_torus",
    ).init(_KEY, jnp.ones((1, 16, 0)), grid=(4, 4)),
     _NO_WIDTH + r"\(1, 16, 0\)"),
    (lambda: kattn.flax.SoftSelfAttention(num_heads=HEADS, reduction=2).init(
        _KEY, jnp.ones((1, 16, 0)), grid=(4, 4)),
     _NO_WIDTH + r"\(1, 16, 0\)"),
    (lambda: kattn.flax.GatedPositionalSelfAttention(num_heads=4).init(
        _KEY, jnp.ones((1, 9, 0)), grid=(3, 3)),
     _NO_WIDTH + r"\(1, 9, 0\)"),
    (lambda: kattn.flax.LiftingSelfAttention(
        group="p4", features=4, num_heads=HEADS, head_dim=4, window=3,
    ).init(_KEY, jnp.ones((1, 4, 4, 0))),
     _NO_CHANNEL + r"\(1, 4, 4, 0\)"),
    (lambda: kattn.flax.GroupSelfAttention(
        group="p4", features=4, num_heads=HEADS, head_dim=4, window=3,
    ).init(_KEY, jnp.ones((4, 4, 4, 0))),
     _NO_CHANNEL + r"\(4, 4, 4, 0\)"),
    (lambda: kattn.flax.LiftingLinearAttention(
        "p4", features=4, num_heads=HEADS, num_random_features=4,
    ).init(_KEY, jnp.ones((1, 4, 4, 0))),
     _NO_CHANNEL + r"\(1, 4, 4, 0\)"),
    (lambda: kattn.flax.GroupLinearAttention(
        "p4", features=4, num_heads=HEADS, num_random_features=4,
    ).init(_KEY, jnp.ones((4, 4, 4, 0))),
     _NO_CHANNEL + r"\(4, 4, 4, 0\)"),
], ids=["relative", "soft", "gpsa", "lifting", "group", "lifting_linear",
        "group_linear"])
def test_layers_reject_inputs_without_channels(init, match):
  # Before: ZeroDivisionError, from an initialiser's fan-in of 0 (GPSA: from
  # its logit scale 0 ** -0.5).
  with pytest.raises(ValueError, match=match):
    jax.eval_shape(init)


@pytest.mark.parametrize("init", [
    lambda: kattn.flax.RelativeSelfAttention(
        num_heads=HEADS, relative_position="fft_torus", num_random_features=0,
    ).init(_KEY, jnp.ones((1, 16, WIDTH)), grid=(4, 4)),
    lambda: kattn.flax.LiftingLinearAttention(
        "p4", features=4, num_heads=HEADS, num_random_features=0,
    ).init(_KEY, jnp.ones((1, 4, 4, 3))),
    lambda: kattn.flax.GroupLinearAttention(
        "p4", features=4, num_heads=HEADS, num_random_features=0,
    ).init(_KEY, jnp.ones((4, 4, 4, 3))),
], ids=["relative", "lifting_linear", "group_linear"])
def test_zero_random_features_are_an_error_not_the_default(init):
  # `num_random_features or default` used to turn a configured 0 into 256.
  with pytest.raises(
      ValueError, match=r"`num_random_features` must be a positive integer;"
                        r" got 0\."
  ):
    jax.eval_shape(init)


# The smallest configuration of every registered model, on 8 x 8 images.
SMALL_MODELS = {
    "vit": dict(width=8, depth=1, num_heads=2, mlp_dim=8, patch_size=4),
    "convit": dict(num_heads=4, head_dim=2, depth=2, local_up_to_layer=1,
                   patch_size=4),
    "deit": dict(num_heads=2, head_dim=2, depth=1, patch_size=4),
    "gsa_net": dict(group="p4", channels=4, num_heads=2, head_dim=4,
                    window=3, stages=((1,), (0,))),
}


def _small_model(name, **overrides):
  config = dict(num_classes=3, **SMALL_MODELS[name])
  config.update(overrides)
  return registry.get_model(name)(**config)


def test_every_registered_model_has_a_small_configuration():
  assert set(kattn.flax.available_models()) <= set(SMALL_MODELS)


@pytest.mark.parametrize("name", sorted(SMALL_MODELS))
@pytest.mark.parametrize("shape", [(1, 0, 0, 1), (1, 8, 8, 0)])
def test_models_reject_images_without_pixels_or_channels(name, shape):
  # Before: a `k` without tokens, or a ZeroDivisionError from a fan-in of 0.
  match = (
      r"`images` must have a positive height, width and channel count"
      r" \(axes 1-3\); got shape " + re.escape(str(shape))
  )
  with pytest.raises(ValueError, match=match):
    _init_abstract(_small_model(name), shape)


@pytest.mark.parametrize("name", sorted(SMALL_MODELS))
def test_models_reject_zero_classes(name):
  with pytest.raises(
      ValueError, match=r"`num_classes` must be a positive integer; got 0\."
  ):
    _init_abstract(_small_model(name, num_classes=0), (1, 8, 8, 1))


# ------------------------------------------------------------------ models


def test_encoder_block_shapes():
  block = EncoderBlock(
      num_heads=HEADS, mlp_dim=32, num_random_features=FEATURES
  )
  x = _tokens(TOKENS)
  variables = block.init(jax.random.key(0), x)
  out = block.apply(variables, x)
  chex.assert_shape(out, x.shape)
  chex.assert_type(out, jnp.float32)
  assert set(variables["random_features"]) == {"attention"}


@pytest.mark.parametrize("attention", BUILTINS)
def test_vit_gradients_and_bfloat16_logits_are_finite(attention):
  model = _small_vit(attention=attention)
  images = _tokens(IMAGES)
  labels = jnp.array([0, 3])
  variables = model.init(jax.random.key(0), images)

  def loss(params):
    logits = model.apply({**variables, "params": params}, images)
    return optax.softmax_cross_entropy_with_integer_labels(
        logits, labels
    ).mean()

  grads = jax.grad(loss)(variables["params"])
  chex.assert_tree_all_finite(grads)
  assert jnp.any(grads["encoderblock_0"]["attention"]["query"]["kernel"] != 0)

  # dtype changes the computation, not the float32 parameters.
  logits = model.clone(dtype=jnp.bfloat16).apply(variables, images)
  chex.assert_shape(logits, (2, 5))
  chex.assert_type(logits, jnp.float32)
  chex.assert_tree_all_finite(logits)


@pytest.mark.parametrize("name, attention", [
    ("vit", "softmax"), ("vit", "favor"),
    ("convit", "softmax"), ("convit", "favor"),
    ("deit", "softmax"), ("deit", "favor"),
    ("gsa_net", "local"), ("gsa_net", "favor"),
])
def test_an_empty_batch_gives_empty_logits(name, attention):
  """A batch of 0 (an empty shard) gives [0, num_classes] logits."""
  model = _small_model(name, attention=attention, num_random_features=4)
  images = jnp.zeros((0, 8, 8, 1))
  # One compile, where eager ops would compile one by one.
  logits = jax.jit(lambda x: model.apply(model.init(_KEY, x), x))(images)
  chex.assert_shape(logits, (0, 3))
  chex.assert_type(logits, jnp.float32)


@pytest.mark.parametrize("attention", available_attentions())
def test_every_attention_traces_an_empty_batch(attention):
  # Shapes only: running every attention would cost a minute of compiles.
  model = _small_vit(attention=attention)
  logits = jax.eval_shape(
      lambda x: model.apply(model.init(_KEY, x), x),
      jax.ShapeDtypeStruct((0,) + IMAGES[1:], jnp.float32),
  )
  assert logits.shape == (0, 5)


@pytest.mark.parametrize(
    "use_cls_token, position_embedding", [(True, "learned"), (False, "none")]
)
def test_vit_on_pixels(use_cls_token, position_embedding):
  model = _small_vit(
      patch_size=1, use_cls_token=use_cls_token,
      position_embedding=position_embedding,
  )
  images = _tokens((2, 6, 6, 1))
  variables = model.init(jax.random.key(0), images)
  logits = model.apply(variables, images)

  chex.assert_shape(logits, (2, 5))
  chex.assert_type(logits, jnp.float32)
  chex.assert_tree_all_finite(logits)
  params = variables["params"]
  assert ("cls" in params) == use_cls_token
  num_tokens = 36 + use_cls_token
  if position_embedding == "learned":
    chex.assert_shape(params["pos_embedding"], (1, num_tokens, WIDTH))
  else:
    assert "pos_embedding" not in params
  chex.assert_shape(params["embedding"]["kernel"], (1, 1, 1, WIDTH))


@pytest.mark.parametrize("name", ["gmm_rks", "fastfood_prf", "generative_rks"])
def test_layers_that_cannot_hold_learned_kernel_parameters_refuse_them(name):
  with pytest.raises(ValueError, match=f"{name}.*learned kernel.*MultiHeadSelfAttention"):
    registry.get_kernel_attention(name)


def test_learned_kernel_specs_state_their_noise_shapes():
  assert registry.get_attention("gmm_prf").sample_shape(256, 16) == (256, 16)
  assert registry.get_attention("fastfood_rks").sample_shape(128, 16) == (8, 16)
  with pytest.raises(ValueError, match="multiple of 16; got 100"):
    registry.get_attention("fastfood_rks").sample_shape(100, 16)
  with pytest.raises(ValueError, match="multiple of 2; got 7"):
    registry.get_attention("gmm_rks").sample_shape(7, 16)
