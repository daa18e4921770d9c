"""GSA-Nets Linen layers: exact equivariance for drawn group elements, errors.

Every layer is checked with `kattn.testing.assert_group_equivariant`: a
90-degree rotation or flip of the input must turn the output and permute
its group axis, out'(g, p) = out(u^-1 g, u^-1 p). Outputs are O(10-100)
(N(0, 2 / fan_in) weights, a sum over the query elements); the transformed
input reorders float32 sums, which then differ by ~1e-6 of the largest
output, so RTOL = ATOL = 1e-4 leaves a wide margin and still catches any
misplaced offset or group element (O(1) errors).
"""

import functools

import chex
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kattn import groups
from kattn import testing
from kattn.flax.group import (
    GroupSelfAttention,
    LiftingSelfAttention,
    RelativePositionEncoder,
)

RTOL, ATOL = 1e-4, 1e-4
_exact = hypothesis.settings(max_examples=100, deadline=None, derandomize=True)
# Odd and even sizes, local windows 3 and 5 (the 5 x 5 window covers most of
# the image from its borders) and global; few shapes, so few compilations.
SHAPES = ((5, 3), (6, 5), (5, None), (6, None))
IN_FEATURES, FEATURES, HEADS = 3, 6, 2


def _layers(group, window):
  return (
      LiftingSelfAttention(group, FEATURES, num_heads=HEADS, window=window),
      GroupSelfAttention(group, FEATURES, num_heads=HEADS, window=window),
  )


def _images(seed, size, batch=2):
  return jax.random.normal(
      jax.random.key(seed), (batch, size, size, IN_FEATURES)
  )


def _group_maps(seed, order, size, batch=2):
  return jax.random.normal(
      jax.random.key(seed), (batch, order, size, size, IN_FEATURES)
  )


@functools.lru_cache(maxsize=None)
def _variables(kind, group, in_features, seed):
  """Parameters depend on neither the image size nor the window (the MLP
  reads one offset at a time), so one initialisation serves every shape."""
  lift, layer = _layers(group, window=3)
  if kind == "lift":
    return jax.jit(lift.init)(
        jax.random.key(seed), jnp.ones((1, 3, 3, in_features))
    )
  order = groups.get_group(group).order
  return jax.jit(layer.init)(
      jax.random.key(seed), jnp.ones((1, order, 3, 3, in_features))
  )


@functools.lru_cache(maxsize=None)
def _lifting(group, window):
  lift, _ = _layers(group, window)
  variables = _variables("lift", group, IN_FEATURES, 0)
  return jax.jit(functools.partial(lift.apply, variables))


@functools.lru_cache(maxsize=None)
def _group_layer(group, window):
  _, layer = _layers(group, window)
  variables = _variables("group", group, IN_FEATURES, 1)
  return jax.jit(functools.partial(layer.apply, variables))


def _norm_swish(y):
  """The reference block's GroupNorm (one group over the whole group map of a
  sample, so equivariant) and swish; keeps the stack's outputs O(10)."""
  mean = y.mean(axis=(-4, -3, -2, -1), keepdims=True)
  std = y.std(axis=(-4, -3, -2, -1), keepdims=True)
  return jax.nn.swish((y - mean) / std)


@functools.lru_cache(maxsize=None)
def _stack(group, window):
  """lift -> group -> group, normalised between layers."""
  lift, layer = _layers(group, window)
  lift_vars = _variables("lift", group, IN_FEATURES, 2)
  first_vars = _variables("group", group, FEATURES, 3)
  second_vars = _variables("group", group, FEATURES, 4)

  @jax.jit
  def apply(x):
    y = _norm_swish(lift.apply(lift_vars, x))
    y = _norm_swish(layer.apply(first_vars, y))
    return layer.apply(second_vars, y)

  return apply


def _pixel_elements(group):
  group = groups.get_group(group)
  return [e for e in range(group.order) if group.is_exact_on_pixels(e)]


_group_elements = st.sampled_from(["p4", "p4m"]).flatmap(
    lambda g: st.tuples(st.just(g), st.sampled_from(_pixel_elements(g)))
)


@_exact
@hypothesis.given(
    group_and_element=st.one_of(
        _group_elements,
        st.tuples(st.just("p8"), st.sampled_from(_pixel_elements("p8"))),
    ),
    size_and_window=st.sampled_from(SHAPES),
    seed=st.integers(0, 2**31 - 1),
)
def test_lifting_is_equivariant(group_and_element, size_and_window, seed):
  group, element = group_and_element
  size, window = size_and_window
  testing.assert_group_equivariant(
      _lifting(group, window), _images(seed, size), group,
      elements=[element], rtol=RTOL, atol=ATOL,
  )


@_exact
@hypothesis.given(
    group_and_element=_group_elements,
    size_and_window=st.sampled_from(SHAPES),
    seed=st.integers(0, 2**31 - 1),
)
def test_group_layer_is_equivariant(group_and_element, size_and_window, seed):
  group, element = group_and_element
  size, window = size_and_window
  x = _group_maps(seed, groups.get_group(group).order, size)
  testing.assert_group_equivariant(
      _group_layer(group, window), x, group, input_kind="regular",
      elements=[element], rtol=RTOL, atol=ATOL,
  )


@_exact
@hypothesis.given(
    group_and_element=_group_elements,
    size_and_window=st.sampled_from(SHAPES),
    seed=st.integers(0, 2**31 - 1),
)
def test_lift_group_group_stack_is_equivariant(
    group_and_element, size_and_window, seed
):
  group, element = group_and_element
  size, window = size_and_window
  testing.assert_group_equivariant(
      _stack(group, window), _images(seed, size), group,
      elements=[element], rtol=RTOL, atol=ATOL,
  )


def test_pooled_stack_is_invariant_while_one_group_channel_is_not():
  """Sum over space, max over the group: invariant logits. One channel of
  the group axis alone is not an equivariant image: the axis carries the
  orientation."""
  apply = _stack("p4m", 3)
  x = _images(3, 6)
  testing.assert_group_equivariant(
      lambda x: apply(x).sum((-3, -2)).max(-2), x, "p4m",
      output_kind="invariant", rtol=RTOL, atol=ATOL,
  )
  with pytest.raises(AssertionError, match="Not group equivariant"):
    testing.assert_group_equivariant(
        lambda x: apply(x)[..., 0, :, :, :], x, "p4m", output_kind="image",
        rtol=RTOL, atol=ATOL,
    )


def test_trivial_group_lifting_is_not_rotation_equivariant():
  """Negative control: one table of unacted offsets (z2) is anisotropic."""
  apply = _lifting("z2", 3)
  with pytest.raises(AssertionError, match="Not group equivariant"):
    testing.assert_group_equivariant(
        lambda x: apply(x)[..., 0, :, :, :], _images(4, 5), "p4",
        output_kind="image", rtol=RTOL, atol=ATOL,
    )


@pytest.mark.parametrize("window", [3, None])
def test_mirror_group_layers_are_equivariant_and_take_any_grid(window):
  x = _images(5, 5)
  lift = _lifting("mz2", window)
  testing.assert_group_equivariant(lift, x, "mz2", rtol=RTOL, atol=ATOL)
  testing.assert_group_equivariant(
      _group_layer("mz2", window), _group_maps(5, 2, 5), "mz2",
      input_kind="regular", rtol=RTOL, atol=ATOL,
  )
  for name in ("z2", "mz2"):
    lift, layer = _layers(name, window)
    x = jax.random.normal(jax.random.key(6), (1, 4, 7, IN_FEATURES))
    y, _ = jax.eval_shape(lift.init_with_output, jax.random.key(0), x)
    chex.assert_shape(y, (1, groups.get_group(name).order, 4, 7, FEATURES))
    out, _ = jax.eval_shape(layer.init_with_output, jax.random.key(0), y)
    chex.assert_shape(out, y.shape)


def test_parameters_and_relative_key_channels():
  x = _images(0, 5)
  lift = LiftingSelfAttention("p4", features=10, num_heads=3, window=5)
  params = jax.jit(lift.init)(jax.random.key(0), x)["params"]
  head_dim = 5  # features // 2
  for name in ("query", "key", "value"):
    chex.assert_shape(params[name]["kernel"], (IN_FEATURES, 3 * head_dim))
    np.testing.assert_array_equal(params[name]["bias"], 0.0)
  chex.assert_shape(params["out"]["kernel"], (3 * head_dim, 10))
  encoder = params["relative_position"]
  chex.assert_shape(encoder["row"]["out"]["kernel"], (16, head_dim // 2))
  chex.assert_shape(encoder["col"]["out"]["kernel"], (16, head_dim // 2))

  layer = GroupSelfAttention("p4m", features=6, num_heads=2, head_dim=7)
  y = _group_maps(0, 8, 5)
  params = jax.jit(layer.init)(jax.random.key(0), y)["params"]
  # 7 channels: 2 row, 2 column, 3 group.
  chex.assert_shape(params["group_embedding"]["embedding"], (8, 3))
  chex.assert_shape(
      params["relative_position"]["row"]["out"]["kernel"], (16, 2)
  )
  chex.assert_shape(params["query"]["kernel"], (IN_FEATURES, 2 * 7))


def test_relative_position_encoder_codes_rows_then_columns():
  encoder = RelativePositionEncoder(features=4)
  offsets = jnp.array([[0.5, -1.0], [0.5, 0.25], [-0.5, 0.25]])
  variables = encoder.init(jax.random.key(0), offsets)
  code = encoder.apply(variables, offsets)
  chex.assert_shape(code, (3, 8))
  # Same row, different columns: equal row code, different column code.
  np.testing.assert_array_equal(code[0, :4], code[1, :4])
  assert not np.allclose(code[0, 4:], code[1, 4:])
  np.testing.assert_array_equal(code[1, 4:], code[2, 4:])
  assert not np.allclose(code[1, :4], code[2, :4])
  # A smooth function of the coordinate, not of its sign alone.
  assert not np.allclose(
      encoder.apply(variables, offsets * 0.5)[:, :4], code[:, :4], atol=1e-3
  )


# ---------------------------------------------------------------------------
# Errors.


def test_module_argument_errors():
  lift, layer = _layers("p4", 3)
  with pytest.raises(ValueError, match="`group` must be one of"):
    LiftingSelfAttention("p6", FEATURES).init(jax.random.key(0), _images(0, 5))
  with pytest.raises(ValueError, match="`group` must be one of"):
    GroupSelfAttention("so2", FEATURES).init(
        jax.random.key(0), _group_maps(0, 4, 5)
    )
  with pytest.raises(ValueError, match="`x` must be square for rotations"):
    lift.init(jax.random.key(0), jnp.ones((1, 5, 6, IN_FEATURES)))
  with pytest.raises(ValueError, match="`x` must be square for rotations"):
    layer.init(jax.random.key(0), jnp.ones((1, 4, 5, 6, IN_FEATURES)))
  with pytest.raises(ValueError, match="Axis -4 of `x` must hold the 4"):
    layer.init(jax.random.key(0), _group_maps(0, 8, 5))
  with pytest.raises(ValueError, match="cannot be centred"):
    _layers("p4", 4)[0].init(jax.random.key(0), _images(0, 5))
  with pytest.raises(ValueError, match="cannot be centred"):
    _layers("p4", 2)[1].init(jax.random.key(0), _group_maps(0, 4, 5))
  with pytest.raises(ValueError, match="`head_dim` .* >= 3"):
    GroupSelfAttention("p4", 4, head_dim=2).init(
        jax.random.key(0), _group_maps(0, 4, 5)
    )
  with pytest.raises(ValueError, match="`head_dim` .* >= 2"):
    LiftingSelfAttention("p4", 3).init(jax.random.key(0), _images(0, 5))
  with pytest.raises(ValueError, match="`x` must have rank >= 3"):
    lift.init(jax.random.key(0), jnp.ones((5, 5)))
  with pytest.raises(ValueError, match=r"`acted_offsets` must be \[\.\.\., 2\]"):
    RelativePositionEncoder(3).init(jax.random.key(0), jnp.ones((4, 3)))
