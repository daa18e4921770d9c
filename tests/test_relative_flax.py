"""Relative-position attention modules and models: exact symmetries, errors.

Whole models are checked with the public asserts of `kattn.testing`: rolling
the image by whole patches must leave the mean-pooled logits unchanged to
float32 rounding (ATOL below) for the modes that claim it, and must change
them for the absolute-position model.
"""

import functools

import chex
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kattn
from kattn import testing
from kattn.flax import RelativeSelfAttention, VisionTransformer, redraw
from kattn.positional import toeplitz

# float32 logits of O(1) after a few blocks; rolling reorders the sums.
ATOL = 2e-5
PATCH, IMAGE = 2, 8  # a 4 x 4 token grid
GRID = (IMAGE // PATCH, IMAGE // PATCH)
_exact = hypothesis.settings(max_examples=100, deadline=None, derandomize=True)


def _vit(**overrides):
  config = dict(
      num_classes=3, width=16, depth=2, num_heads=2, mlp_dim=32,
      patch_size=PATCH, num_random_features=8, use_cls_token=False,
      position_embedding="none",
  )
  config.update(overrides)
  return VisionTransformer(**config)


def _images(seed, batch=2):
  return jax.random.uniform(jax.random.key(seed), (batch, IMAGE, IMAGE, 1))


@functools.lru_cache(maxsize=None)
def _jitted_model(**overrides):
  model = _vit(**overrides)
  variables = model.init(jax.random.key(0), _images(0))
  # Nonzero relative parameters, so the positional factor really acts.
  variables = jax.tree_util.tree_map_with_path(
      lambda path, x: (
          x + 0.5 * jax.random.normal(jax.random.key(1), x.shape)
          if jax.tree_util.keystr(path).endswith(
              ("['log_bias']", "['distance_embedding']"))
          else x
      ),
      variables,
  )
  return jax.jit(lambda images: model.apply(variables, images)), variables


def _as_tokens(images):
  return images.reshape(images.shape[0], -1, images.shape[-1])


def _token_fn(apply):
  return lambda tokens: apply(tokens.reshape(-1, IMAGE, IMAGE, 1))


def _pixel_shifts(shift):
  return [(PATCH * shift[0], PATCH * shift[1])]


INVARIANT = {
    "fft_torus": dict(relative_position="fft_torus"),
    "clipped_torus": dict(relative_position="clipped_torus"),
    "sinusoid_circular_softmax": dict(
        relative_position="constrained_sinusoid", attention="softmax",
        position_frequencies="circular", num_scales=2,
    ),
    "sinusoid_circular_softmax_cls": dict(
        relative_position="constrained_sinusoid", attention="softmax",
        position_frequencies="circular", num_scales=2, use_cls_token=True,
    ),
    "fft_torus_softmax": dict(relative_position="fft_torus", attention="softmax"),
    "fft_torus_relu": dict(relative_position="fft_torus", attention="relu"),
    "nopos": dict(),
}


@pytest.mark.parametrize("name", sorted(INVARIANT))
@_exact
@hypothesis.given(
    shift=st.tuples(st.integers(-9, 9), st.integers(-9, 9)),
    seed=st.integers(0, 3),
)
def test_model_logits_are_invariant_to_circular_shifts(name, shift, seed):
  apply, _ = _jitted_model(**INVARIANT[name])
  testing.assert_translation_invariant(
      _token_fn(apply), _as_tokens(_images(seed)), grid=(IMAGE, IMAGE),
      shifts=_pixel_shifts(shift), atol=ATOL, rtol=0,
  )


@pytest.mark.parametrize(
    "overrides",
    [
        dict(position_embedding="sinusoid"),
        dict(position_embedding="learned"),
        dict(relative_position="fft_padded"),
        dict(relative_position="clipped"),
    ],
    ids=["absolute_sinusoid", "absolute_learned", "fft_padded", "clipped"],
)
def test_position_absolute_or_finite_models_are_not_circularly_invariant(
    overrides,
):
  apply, _ = _jitted_model(**overrides)
  images = _images(5)
  with pytest.raises(AssertionError, match="Not translation invariant"):
    testing.assert_translation_invariant(
        _token_fn(apply), _as_tokens(images), grid=(IMAGE, IMAGE),
        shifts=[(PATCH, 0), (0, PATCH), (PATCH, PATCH)], atol=1e-4, rtol=0,
    )


@pytest.mark.parametrize("jit", [True, False])
@pytest.mark.parametrize("mode", ["fft_torus", "fft_padded"])
def test_fft_layer_equals_dense_reference(mode, jit):
  layer = RelativeSelfAttention(
      num_heads=2, relative_position=mode, num_random_features=8
  )
  x = jax.random.normal(jax.random.key(0), (2, 12, 16))
  variables = layer.init(jax.random.key(1), x, grid=(3, 4))
  log_bias = 0.3 * jax.random.normal(
      jax.random.key(2), variables["params"]["log_bias"].shape
  )
  variables = {**variables, "params": {**variables["params"], "log_bias": log_bias}}
  apply = functools.partial(layer.apply, grid=(3, 4))
  out = (jax.jit(apply) if jit else apply)(variables, x)

  params = variables["params"]
  proj = lambda name: jnp.einsum(
      "bld,dhk->blhk", x, params[name]["kernel"]) + params[name]["bias"]
  q, k, v = proj("query"), proj("key"), proj("value")
  w = variables["random_features"]["projection_orthogonal"]
  features = lambda y: kattn.positive_softmax_features(y * 8 ** -0.25, w)
  attended = toeplitz.dense_relative_kernel_attention(
      features(q), features(k), v, log_bias, grid=(3, 4), mode=mode[4:]
  )
  expected = jnp.einsum(
      "blhk,hkd->bld", attended, params["out"]["kernel"]) + params["out"]["bias"]
  np.testing.assert_allclose(out, expected, atol=ATOL, rtol=1e-4)


def test_cls_token_with_strategy1_is_invariant_and_uses_zero_code():
  apply, variables = _jitted_model(**INVARIANT["sinusoid_circular_softmax_cls"])
  assert "cls" in variables["params"]
  logits = apply(_images(1))
  chex.assert_shape(logits, (2, 3))
  chex.assert_tree_all_finite(logits)


@pytest.mark.parametrize(
    "mode", ["fft_torus", "fft_padded", "constrained_sinusoid", "clipped",
             "clipped_torus"],
)
def test_every_mode_trains_and_redraws(mode):
  model = _vit(relative_position=mode)
  images = _images(3)
  variables = model.init(jax.random.key(0), images)
  assert "projection_orthogonal" in str(
      jax.tree_util.tree_structure(variables["random_features"])
  )
  grads = jax.jit(jax.grad(lambda p: model.apply(
      {**variables, "params": p}, images).sum()))(variables["params"])
  chex.assert_tree_all_finite(grads)
  norms = jax.tree_util.tree_leaves(
      jax.tree_util.tree_map(lambda g: jnp.abs(g).sum(), grads))
  assert sum(float(n) > 0 for n in norms) > len(norms) // 2
  apply = jax.jit(model.apply)
  new = redraw(variables, jax.random.key(7))
  assert not np.allclose(apply(new, images), apply(variables, images), atol=1e-7)


def test_content_conditional_rotation_is_read_from_tokens():
  model = _vit(relative_position="constrained_sinusoid", content_conditional=True)
  variables = model.init(jax.random.key(0), _images(0))
  attention = variables["params"]["encoderblock_0"]["attention"]
  assert "rotation" in attention and "alpha" not in attention
  chex.assert_shape(attention["rotation"]["kernel"], (16, 2, 2, 8))


def test_bfloat16_model_is_finite():
  model = _vit(relative_position="fft_torus", dtype=jnp.bfloat16)
  variables = model.init(jax.random.key(0), _images(0))
  logits = model.apply(variables, _images(0))
  chex.assert_type(logits, jnp.float32)
  chex.assert_tree_all_finite(logits)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(relative_position="fft_sphere"), "relative_position"),
        (dict(relative_position="fft_torus", use_cls_token=True), "class token"),
        (dict(relative_position="clipped", num_heads=1, width=16), "even"),
        (dict(relative_position="clipped", attention="softmax"), "feature map"),
        (dict(relative_position="constrained_sinusoid",
              position_frequencies="linear"), "position_frequencies"),
        (dict(relative_position="clipped", max_distance=0), "max_distance"),
        (dict(position_embedding="sinusoid", width=18, num_heads=2),
         "multiple of 4"),
    ],
)
def test_bad_configurations_raise(overrides, match):
  with pytest.raises(ValueError, match=match):
    _vit(**overrides).init(jax.random.key(0), _images(0))


def test_layer_rejects_token_count_off_the_grid():
  layer = RelativeSelfAttention(num_heads=2, relative_position="fft_torus")
  with pytest.raises(ValueError, match="height \\* width = 12"):
    layer.init(jax.random.key(0), jnp.ones((1, 13, 8)), grid=(3, 4))


def test_testing_asserts_report_the_shift():
  x = jnp.arange(12.0).reshape(1, 12, 1)
  with pytest.raises(AssertionError, match=r"shift \(0, 1\)"):
    testing.assert_translation_equivariant(
        lambda t: t * jnp.arange(12.0)[None, :, None], x, grid=(3, 4),
        shifts=[(0, 1)],
    )
  with pytest.raises(ValueError, match="shifts"):
    testing.assert_translation_invariant(lambda t: t, x, grid=(3, 4), shifts=[1])
  with pytest.raises(ValueError, match="grid"):
    testing.assert_translation_invariant(
        lambda t: t, x, grid=(3, 5), shifts=[(0, 1)]
    )


@pytest.mark.parametrize("mode", ["fft_torus", "fft_padded"])
def test_fft_and_dense_evaluations_give_the_same_model(mode):
  images = _images(4)
  apply_fft, variables = _jitted_model(relative_position=mode, relative_method="fft")
  apply_dense, _ = _jitted_model(relative_position=mode, relative_method="dense")
  np.testing.assert_allclose(apply_fft(images), apply_dense(images), atol=ATOL)


def test_fft_bias_starts_local_or_zero():
  model = _vit(relative_position="fft_torus")
  local = model.init(jax.random.key(0), _images(0))["params"]
  zeros = _vit(relative_position="fft_torus", bias_init="zeros").init(
      jax.random.key(0), _images(0))["params"]
  np.testing.assert_allclose(
      local["encoderblock_0"]["attention"]["log_bias"],
      toeplitz.local_log_bias(GRID, 2, mode="torus"))
  assert not np.any(zeros["encoderblock_0"]["attention"]["log_bias"])
  with pytest.raises(ValueError, match="bias_init"):
    _vit(relative_position="fft_torus", bias_init="gaussian").init(
        jax.random.key(0), _images(0))
