"""Clipped relative embeddings: the window algorithm against dense truth."""

import functools
import itertools

import chex
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kattn
from kattn.positional.clipped import (
    clipped_relative_attention,
    clipped_relative_distance,
    clipped_relative_favor_attention,
    dense_clipped_relative_attention,
)

# float32 rounding of sums over <= ~20 tokens of O(1) positive weights.
RTOL, ATOL = 1e-5, 1e-6
# Gradients add one more reduction over tokens and table rows.
GRAD_RTOL, GRAD_ATOL = 1e-4, 1e-5

# A small fixed set of (grid, max_distance, torus), so that jit compiles once
# per case and hypothesis draws values: every grid in both modes, K from 1 to
# 4, small tori where offsets wrap onto the same token, and K beyond the
# largest distance on the grid ((2, 3) finite, (2, 3) and (3, 3) tori).
CASES = [
    ((2, 3), 2, True), ((2, 3), 4, True), ((2, 3), 4, False),
    ((3, 3), 3, True), ((3, 3), 1, False), ((1, 5), 2, True),
    ((1, 5), 3, False), ((5, 4), 4, True), ((5, 4), 2, False),
]
# Gradients compile slower: a subset with wrapping tori, K = 1, K beyond the
# grid and a finite grid whose window leaves the image.
GRAD_CASES = [
    ((2, 3), 4, True), ((3, 3), 1, False), ((5, 4), 4, True),
    ((1, 5), 3, False),
]
BATCH, HEADS, NUM_FEATURES, V_DIM = 2, 2, 3, 2

PROPERTY = hypothesis.settings(
    max_examples=100, deadline=None, derandomize=True
)


def _numpy_distance(grid, max_distance, torus):
  """Clipped (torus-)L1 distances by an explicit loop over token pairs."""
  height, width = grid
  length = height * width
  out = np.zeros((length, length), np.int64)
  for i, j in itertools.product(range(length), repeat=2):
    dr = abs(i // width - j // width)
    dc = abs(i % width - j % width)
    if torus:
      dr, dc = min(dr, height - dr), min(dc, width - dc)
    out[i, j] = min(dr + dc, max_distance)
  return out


def _inputs(seed, grid, max_distance):
  """Positive query and table features and signed values, float32."""
  rng = np.random.default_rng(seed)
  length = grid[0] * grid[1]
  q_features = rng.uniform(0.05, 1.0, (BATCH, length, HEADS, NUM_FEATURES))
  v = rng.normal(size=(BATCH, length, HEADS, V_DIM))
  table = rng.uniform(0.05, 1.0, (max_distance + 1, HEADS, NUM_FEATURES))
  return tuple(jnp.asarray(x, jnp.float32) for x in (q_features, v, table))


@functools.lru_cache(maxsize=None)
def _jitted(grid, max_distance, torus):
  """Outputs of the window algorithm and of the dense reference."""
  kw = dict(grid=grid, max_distance=max_distance, torus=torus)
  return jax.jit(lambda *args: (
      clipped_relative_attention(*args, **kw),
      dense_clipped_relative_attention(*args, **kw),
  ))


@functools.lru_cache(maxsize=None)
def _jitted_grads(grid, max_distance, torus):
  """Gradients of <out, cotangent> for the window and the dense version."""
  def grads(fn, q_features, v, table, cotangent):
    attend = functools.partial(
        fn, grid=grid, max_distance=max_distance, torus=torus
    )
    loss = lambda *args: jnp.sum(attend(*args) * cotangent)
    return jax.grad(loss, argnums=(0, 1, 2))(q_features, v, table)

  return jax.jit(lambda *args: (
      grads(clipped_relative_attention, *args),
      grads(dense_clipped_relative_attention, *args),
  ))


@PROPERTY
@hypothesis.given(
    grid=st.sampled_from([(1, 1), (1, 4), (3, 3), (4, 5)]),
    max_distance=st.integers(1, 8),
    torus=st.booleans(),
)
def test_distance_matches_a_loop_over_pairs(grid, max_distance, torus):
  distance = clipped_relative_distance(grid, max_distance, torus=torus)
  chex.assert_type(distance, jnp.int32)
  np.testing.assert_array_equal(
      distance, _numpy_distance(grid, max_distance, torus)
  )


@pytest.mark.parametrize("torus", [False, True])
def test_dense_reference_matches_a_float64_loop(torus):
  grid, max_distance = (3, 4), 2
  q_features, v, table = _inputs(0, grid, max_distance)
  out = dense_clipped_relative_attention(
      q_features, v, table, grid=grid, max_distance=max_distance, torus=torus
  )
  q64, v64, t64 = (np.asarray(x, np.float64) for x in (q_features, v, table))
  distance = _numpy_distance(grid, max_distance, torus)
  expected = np.zeros(v.shape)
  for b, i, h in itertools.product(
      range(BATCH), range(grid[0] * grid[1]), range(HEADS)
  ):
    weights = np.array(
        [q64[b, i, h] @ t64[c, h] for c in distance[i]]
    )
    expected[b, i, h] = weights @ v64[b, :, h] / weights.sum()
  np.testing.assert_allclose(out, expected, rtol=RTOL, atol=ATOL)


@PROPERTY
@hypothesis.given(seed=st.integers(0, 2**31 - 1), case=st.sampled_from(CASES))
def test_window_algorithm_equals_the_dense_reference(seed, case):
  grid, max_distance, torus = case
  q_features, v, table = _inputs(seed, grid, max_distance)
  out, expected = _jitted(grid, max_distance, torus)(q_features, v, table)
  chex.assert_shape(out, v.shape)
  chex.assert_type(out, jnp.float32)
  np.testing.assert_allclose(out, expected, rtol=RTOL, atol=ATOL)


@PROPERTY
@hypothesis.given(
    seed=st.integers(0, 2**31 - 1), case=st.sampled_from(GRAD_CASES)
)
def test_gradients_equal_those_of_the_dense_reference(seed, case):
  grid, max_distance, torus = case
  q_features, v, table = _inputs(seed, grid, max_distance)
  cotangent = jnp.asarray(
      np.random.default_rng(seed + 1).normal(size=v.shape), jnp.float32
  )
  grads, expected = _jitted_grads(grid, max_distance, torus)(
      q_features, v, table, cotangent
  )
  for got, want in zip(grads, expected):
    np.testing.assert_allclose(got, want, rtol=GRAD_RTOL, atol=GRAD_ATOL)


@PROPERTY
@hypothesis.given(seed=st.integers(0, 2**31 - 1), case=st.sampled_from(CASES))
def test_equal_table_rows_give_the_mean_of_the_values(seed, case):
  """One shared key feature for all pairs: every query averages all tokens."""
  grid, max_distance, torus = case
  q_features, v, table = _inputs(seed, grid, max_distance)
  table = jnp.broadcast_to(table[:1], table.shape)
  out, _ = _jitted(grid, max_distance, torus)(q_features, v, table)
  mean = np.mean(np.asarray(v, np.float64), axis=1, keepdims=True)
  np.testing.assert_allclose(
      out, np.broadcast_to(mean, v.shape), rtol=RTOL, atol=ATOL
  )


def _roll_grid(x, shift, grid):
  """np.roll of the unflattened [*, height, width, ...] image."""
  image = np.asarray(x).reshape(x.shape[:1] + grid + x.shape[2:])
  return np.roll(image, shift, axis=(1, 2)).reshape(x.shape)


def _favor_inputs(grid, max_distance, dim=8, num_features=16, scale=0.5):
  """Queries, values, a relative table and a projection, float32."""
  rng = np.random.default_rng(0)
  length = grid[0] * grid[1]
  q = scale * rng.normal(size=(BATCH, length, HEADS, dim))
  v = rng.normal(size=(BATCH, length, HEADS, V_DIM))
  table = scale * rng.normal(size=(max_distance + 1, HEADS, dim))
  w = rng.normal(size=(num_features, dim))
  return tuple(jnp.asarray(x, jnp.float32) for x in (q, v, table, w))


EQUIVARIANCE_GRID, EQUIVARIANCE_MAX_DISTANCE = (4, 5), 3


@functools.lru_cache(maxsize=None)
def _favor_attend(torus):
  q, v, table, w = _favor_inputs(EQUIVARIANCE_GRID, EQUIVARIANCE_MAX_DISTANCE)
  attend = jax.jit(lambda q, v: clipped_relative_favor_attention(
      q, v, table, projection=w, grid=EQUIVARIANCE_GRID,
      max_distance=EQUIVARIANCE_MAX_DISTANCE, torus=torus,
  ))
  return q, v, attend


@PROPERTY
@hypothesis.given(shift=st.tuples(st.integers(-9, 9), st.integers(-9, 9)))
def test_torus_mode_is_exactly_translation_equivariant(shift):
  q, v, attend = _favor_attend(True)
  rolled = attend(_roll_grid(q, shift, EQUIVARIANCE_GRID),
                  _roll_grid(v, shift, EQUIVARIANCE_GRID))
  # Only the order of the sum over all tokens changes: float32 rounding.
  np.testing.assert_allclose(
      rolled, _roll_grid(attend(q, v), shift, EQUIVARIANCE_GRID),
      rtol=RTOL, atol=ATOL,
  )


def test_finite_grid_mode_is_not_circularly_equivariant():
  q, v, attend = _favor_attend(False)
  shift = (1, 2)
  rolled = attend(_roll_grid(q, shift, EQUIVARIANCE_GRID),
                  _roll_grid(v, shift, EQUIVARIANCE_GRID))
  error = np.max(np.abs(
      rolled - _roll_grid(attend(q, v), shift, EQUIVARIANCE_GRID)
  ))
  assert error > 1e-2, error


def _dense_favor_features(x, projection, kernel="positive"):
  fn = {
      "positive": kattn.positive_softmax_features,
      "hyperbolic": kattn.hyperbolic_softmax_features,
      "trigonometric": kattn.trigonometric_softmax_features,
  }[kernel]
  return fn(x * x.shape[-1] ** -0.25, projection)


FAVOR_CASE = dict(grid=(3, 4), max_distance=2, torus=True)


@pytest.mark.parametrize("kernel", ["positive", "hyperbolic", "trigonometric"])
def test_favor_variant_equals_dense_attention_on_the_same_features(kernel):
  q, v, table, w = _favor_inputs(FAVOR_CASE["grid"], FAVOR_CASE["max_distance"])

  @jax.jit
  def outputs(q, v, table):
    window = clipped_relative_favor_attention(
        q, v, table, projection=w, kernel=kernel, **FAVOR_CASE
    )
    dense = dense_clipped_relative_attention(
        _dense_favor_features(q, w, kernel), v,
        _dense_favor_features(table, w, kernel), **FAVOR_CASE
    )
    return window, dense

  out, expected = outputs(q, v, table)
  # Trigonometric denominators can be small, amplifying rounding.
  tol = 1e-3 if kernel == "trigonometric" else 1e-5
  np.testing.assert_allclose(out, expected, rtol=tol, atol=tol)


def test_favor_gradients_equal_those_of_dense_attention():
  q, v, table, w = _favor_inputs(FAVOR_CASE["grid"], FAVOR_CASE["max_distance"])
  cotangent = jnp.asarray(
      np.random.default_rng(9).normal(size=v.shape), jnp.float32
  )

  def window_loss(q, v, table):
    out = clipped_relative_favor_attention(
        q, v, table, projection=w, **FAVOR_CASE
    )
    return jnp.sum(out * cotangent)

  def dense_loss(q, v, table):
    out = dense_clipped_relative_attention(
        _dense_favor_features(q, w), v, _dense_favor_features(table, w),
        **FAVOR_CASE
    )
    return jnp.sum(out * cotangent)

  grads, expected = jax.jit(lambda *args: (
      jax.grad(window_loss, argnums=(0, 1, 2))(*args),
      jax.grad(dense_loss, argnums=(0, 1, 2))(*args),
  ))(q, v, table)
  for got, want in zip(grads, expected):
    np.testing.assert_allclose(got, want, rtol=GRAD_RTOL, atol=GRAD_ATOL)


def _float64_favor_reference(q, v, table, w, grid, max_distance, torus):
  """Positive-feature output in float64, every weight kept in log space."""
  q, v, table, w = (np.asarray(x, np.float64) for x in (q, v, table, w))
  dim, num_features = q.shape[-1], w.shape[0]

  def log_features(x):
    x = x * dim ** -0.25
    return (x @ w.T - 0.5 * np.sum(x * x, -1, keepdims=True)
            - 0.5 * np.log(num_features))

  # log s_ic = logsumexp_r(log phi(q_i)_r + log phi(r_c)_r): [B, L, K+1, h].
  pair = log_features(q)[:, :, None] + log_features(table)[None, None]
  peak = pair.max(-1)
  log_scores = peak + np.log(np.exp(pair - peak[..., None]).sum(-1))
  distance = _numpy_distance(grid, max_distance, torus)
  # log a_ij = log s_{i, c(i, j)}: [B, L(i), L(j), h].
  log_weights = np.take_along_axis(
      log_scores, distance[None, :, :, None], axis=2
  )
  weights = np.exp(log_weights - log_weights.max(axis=2, keepdims=True))
  numerator = np.einsum("bijh,bjhd->bihd", weights, v)
  return numerator / weights.sum(axis=2)[..., None]


@pytest.mark.parametrize("torus", [False, True])
def test_large_norms_stay_finite_and_match_a_float64_reference(torus):
  case = dict(FAVOR_CASE, torus=torus)
  q, v, table, w = _favor_inputs(
      case["grid"], case["max_distance"], num_features=64, scale=8.0
  )

  @jax.jit
  def outputs(q, v, table):
    attend = lambda q, table: clipped_relative_favor_attention(
        q, v, table, projection=w, **case
    )
    dense = dense_clipped_relative_attention(
        _dense_favor_features(q, w), v, _dense_favor_features(table, w), **case
    )
    grads = jax.grad(lambda *args: jnp.sum(attend(*args)), argnums=(0, 1))
    return attend(q, table), grads(q, table), dense

  out, grads, dense = outputs(q, v, table)
  # Negative control: the plain float32 features under/overflow.
  assert not bool(jnp.all(jnp.isfinite(dense)))
  assert bool(jnp.all(jnp.isfinite(out)))
  np.testing.assert_allclose(
      out, _float64_favor_reference(q, v, table, w, **case),
      rtol=1e-4, atol=1e-5,
  )
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)


def test_bfloat16_in_gives_bfloat16_out():
  q, v, table, w = _favor_inputs(FAVOR_CASE["grid"], FAVOR_CASE["max_distance"])
  attend = jax.jit(functools.partial(
      clipped_relative_favor_attention, projection=w, **FAVOR_CASE
  ))
  low = attend(*(x.astype(jnp.bfloat16) for x in (q, v, table)))
  chex.assert_type(low, jnp.bfloat16)
  # bf16 keeps 8 mantissa bits: inputs and outputs are rounded at ~0.4%;
  # accumulation runs in float32.
  np.testing.assert_allclose(
      low.astype(jnp.float32), attend(q, v, table), rtol=0.03, atol=0.03
  )
  q_features, v, table_features = _inputs(0, (2, 3), 2)
  low, _ = _jitted((2, 3), 2, True)(
      *(x.astype(jnp.bfloat16) for x in (q_features, v, table_features))
  )
  chex.assert_type(low, jnp.bfloat16)


class ShapesTest(chex.TestCase):

  @chex.variants(with_jit=True)
  def test_any_batch_axes(self):
    grid, max_distance = (2, 3), 2
    q_features, v, table = _inputs(0, grid, max_distance)
    attend = self.variant(functools.partial(
        clipped_relative_attention, grid=grid, max_distance=max_distance,
        torus=True,
    ))
    batched = attend(q_features, v, table)
    chex.assert_shape(attend(q_features[0], v[0], table), v.shape[1:])
    np.testing.assert_allclose(
        attend(q_features[0], v[0], table), batched[0], rtol=RTOL, atol=ATOL
    )
    nested = attend(q_features[None], v[None], table)
    chex.assert_shape(nested, (1,) + v.shape)
    np.testing.assert_allclose(nested[0], batched, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("torus", [False, True])
def test_the_window_algorithm_forms_no_length_squared_array(torus):
  grid, max_distance = (6, 8), 3
  length = grid[0] * grid[1]
  q_features, v, table = (
      jnp.ones((1, length, 2, 3)), jnp.ones((1, length, 2, 5)),
      jnp.ones((max_distance + 1, 2, 3)),
  )
  kw = dict(grid=grid, max_distance=max_distance, torus=torus)

  def all_shapes(jaxpr):
    """Shapes of every intermediate, nested jaxprs (jit, einsum) included."""
    for eqn in jaxpr.eqns:
      yield from (var.aval.shape for var in eqn.outvars)
      for param in eqn.params.values():
        inner = getattr(param, "jaxpr", param)
        if hasattr(inner, "eqns"):
          yield from all_shapes(inner)

  def quadratic_shapes(fn):
    jaxpr = jax.make_jaxpr(functools.partial(fn, **kw))(q_features, v, table)
    return [s for s in all_shapes(jaxpr.jaxpr) if s.count(length) >= 2]

  assert quadratic_shapes(clipped_relative_attention) == []
  # Negative control: the dense reference does form [L, L] arrays.
  assert quadratic_shapes(dense_clipped_relative_attention)


Q = jnp.ones((1, 6, 2, 3))
V = jnp.ones((1, 6, 2, 4))
T = jnp.ones((3, 2, 3))
W = jnp.ones((8, 3))
ARGS = dict(grid=(2, 3), max_distance=2)


@pytest.mark.parametrize("call,match", [
    (lambda: clipped_relative_attention(Q, V, T, grid=(2, 2), max_distance=2),
     r"`grid` \(2, 2\) holds 4 tokens.*length 6"),
    (lambda: clipped_relative_attention(Q, V, T, grid=6, max_distance=2),
     r"`grid` must be \(height, width\)"),
    (lambda: clipped_relative_attention(Q, V, T, grid=(2, 3), max_distance=0),
     r"`max_distance` must be a positive integer; got 0"),
    (lambda: clipped_relative_attention(Q, V, T, grid=(2, 3),
                                        max_distance=2.0),
     r"`max_distance` must be a positive integer"),
    (lambda: clipped_relative_attention(Q, V, T, **ARGS, torus=1),
     r"`torus` must be a bool"),
    (lambda: clipped_relative_attention(Q, V, jnp.ones((4, 2, 3)), **ARGS),
     r"`table_features` must have shape .*\[3, 2, 3\].*got \(4, 2, 3\)"),
    (lambda: clipped_relative_attention(Q, V, jnp.ones((3, 1, 3)), **ARGS),
     r"`table_features` must have shape .*got \(3, 1, 3\)"),
    (lambda: clipped_relative_attention(Q, V, jnp.ones((3, 2, 4)), **ARGS),
     r"`table_features` must have shape .*got \(3, 2, 4\)"),
    (lambda: clipped_relative_attention(Q, V, jnp.ones((3, 3)), **ARGS),
     r"`table_features` must have shape"),
    (lambda: clipped_relative_attention(Q, jnp.ones((1, 6, 3, 4)), T, **ARGS),
     r"Head counts.*q_features=2, v=3"),
    (lambda: clipped_relative_attention(Q, jnp.ones((1, 5, 2, 4)), T, **ARGS),
     r"lengths.*q_features=6, v=5"),
    (lambda: clipped_relative_attention(Q, jnp.ones((2, 6, 2, 4)), T, **ARGS),
     r"Batch axes"),
    (lambda: clipped_relative_attention(jnp.ones((6, 3)), V, T, **ARGS),
     r"`q_features` must have rank >= 3"),
    (lambda: clipped_relative_attention(Q.astype(jnp.int32), V, T, **ARGS),
     r"`q_features` must have a floating dtype"),
    (lambda: dense_clipped_relative_attention(Q, V, jnp.ones((2, 2, 3)),
                                              **ARGS),
     r"`table_features` must have shape"),
    (lambda: clipped_relative_distance((2, 0), 2), r"`grid`"),
    (lambda: clipped_relative_distance((2, 3), -1), r"`max_distance`"),
    (lambda: clipped_relative_favor_attention(Q, V, jnp.ones((3, 2, 4)),
                                              projection=W, **ARGS),
     r"`table` must have shape .*got \(3, 2, 4\)"),
    (lambda: clipped_relative_favor_attention(
        Q, V, T, projection=jnp.ones((8, 4)), **ARGS),
     r"`projection` must have shape \[num_features, 3\]"),
    (lambda: clipped_relative_favor_attention(Q, V, T, projection=W,
                                              kernel="gaussian", **ARGS),
     r"`kernel` must be one of"),
    (lambda: clipped_relative_favor_attention(Q, V, T, projection=W,
                                              grid=(3, 3), max_distance=2),
     r"`grid` \(3, 3\) holds 9 tokens"),
])
def test_bad_inputs_raise_clear_errors(call, match):
  with pytest.raises(ValueError, match=match):
    call()
