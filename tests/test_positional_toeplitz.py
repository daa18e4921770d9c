"""FFT-RPE (2-D relative biases inside linear attention) against dense truth."""

import functools
import types
import itertools
import math

from absl.testing import parameterized
import chex
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kattn
from kattn.positional import grid as grid_lib
from kattn.positional import toeplitz

_settings = hypothesis.settings(
    max_examples=100, deadline=None, derandomize=True
)
seeds = st.integers(0, 2**32 - 1)
# Few fixed shapes, so each jitted function compiles once per (grid, mode) and
# hypothesis only draws values, shifts and bias scales.
grids = st.sampled_from([(3, 5), (4, 4), (1, 6)])
modes = st.sampled_from(toeplitz.RELATIVE_BIAS_MODES)
bias_scales = st.sampled_from([0.0, 0.5, 1.0])
shifts = st.tuples(st.integers(-20, 20), st.integers(-20, 20))
BATCH, HEADS, NUM_FEATURES, DIM, V_DIM = 2, 2, 5, 8, 3

# A float32 FFT rounds each channel to ~eps * log2(L) of its largest term, so
# a query that only sees small c = exp(b) loses accuracy in proportion to the
# spread of b. With b ~ N(0, 1) (|b| <~ 3) and O(1) outputs the measured
# errors are <= 1.1e-6 (2e-5 at scale 2, 4e-4 at scale 3): 1e-5 leaves 10x.
RTOL, ATOL = 1e-5, 1e-5

# Everything below runs the FFT path; `test_every_method_*` checks the
# dense path and the automatic choice against it.
FFT = types.SimpleNamespace(**{
    name: functools.partial(getattr(toeplitz, name), method="fft")
    for name in ("toeplitz_2d_linear_attention", "relative_favor_attention",
                 "relative_feature_map_attention")
})

PROJECTION = kattn.orthogonal_random_projection(
    jax.random.key(7), NUM_FEATURES, DIM
)

toeplitz_attention = jax.jit(
    FFT.toeplitz_2d_linear_attention, static_argnames=("grid", "mode")
)
dense_attention = jax.jit(
    toeplitz.dense_relative_kernel_attention, static_argnames=("grid", "mode")
)
favor_attention = jax.jit(
    FFT.relative_favor_attention,
    static_argnames=("grid", "mode", "kernel"),
)


def _normal(rng, shape, scale=1.0):
  return (scale * rng.standard_normal(shape)).astype(np.float32)


def _positive(rng, shape):
  return (rng.random(shape) + 0.05).astype(np.float32)


def _log_bias(rng, grid, mode, scale=1.0, heads=HEADS):
  shape = (heads,) + toeplitz.relative_bias_shape(grid, mode=mode)
  return _normal(rng, shape, scale)


def _tokens(rng, grid, dim, make=_normal):
  return make(rng, (BATCH, grid[0] * grid[1], HEADS, dim))


def _dense_favor_features(x, projection=PROJECTION):
  return kattn.positive_softmax_features(x * x.shape[-1] ** -0.25, projection)


def _loop_bias_matrix(log_bias, grid, mode):
  """float64 c(p_j - p_i), one pair at a time, straight from the definition."""
  height, width = grid
  log_bias = np.asarray(log_bias, np.float64)
  length = height * width
  out = np.empty((log_bias.shape[0], length, length))
  for i, j in itertools.product(range(length), repeat=2):
    (ri, ci), (rj, cj) = divmod(i, width), divmod(j, width)
    if mode == "torus":
      row, col = (rj - ri) % height, (cj - ci) % width
    else:
      row, col = rj - ri + height - 1, cj - ci + width - 1
    out[:, i, j] = np.exp(log_bias[:, row, col])
  return out


# 1, 3. The FFT path is the dense Toeplitz computation, in both modes.


@_settings
@hypothesis.given(seed=seeds, grid=grids, mode=modes, scale=bias_scales)
def test_fft_matches_dense_reference(seed, grid, mode, scale):
  rng = np.random.default_rng(seed)
  qf, kf = (_tokens(rng, grid, NUM_FEATURES, _positive) for _ in range(2))
  v = _tokens(rng, grid, V_DIM)
  log_bias = _log_bias(rng, grid, mode, scale)
  out = toeplitz_attention(qf, kf, v, log_bias, grid=grid, mode=mode)
  expected = dense_attention(qf, kf, v, log_bias, grid=grid, mode=mode)
  np.testing.assert_allclose(out, expected, rtol=RTOL, atol=ATOL)


@_settings
@hypothesis.given(
    seed=seeds, grid=grids, mode=modes, method=st.sampled_from(toeplitz.METHODS)
)
def test_every_method_matches_the_dense_reference(seed, grid, mode, method):
  rng = np.random.default_rng(seed)
  q, k, v = (_tokens(rng, grid, DIM) for _ in range(3))
  log_bias = _log_bias(rng, grid, mode)
  out = _favor_by_method(q, k, v, log_bias, grid=grid, mode=mode, method=method)
  expected = dense_attention(
      _dense_favor_features(q), _dense_favor_features(k), v, log_bias,
      grid=grid, mode=mode,
  )
  np.testing.assert_allclose(out, expected, rtol=RTOL, atol=ATOL)


_favor_by_method = jax.jit(
    functools.partial(toeplitz.relative_favor_attention, projection=PROJECTION),
    static_argnames=("grid", "mode", "method"),
)


@pytest.mark.parametrize(
    "grid, mode, fft",
    [((8, 8), "torus", False), ((8, 8), "padded", False),
     ((64, 64), "torus", True), ((128, 128), "padded", True)],
)
def test_auto_method_takes_dense_on_small_grids_and_fft_on_large(grid, mode, fft):
  assert toeplitz._use_fft("auto", grid, mode, 32, 17) == fft
  assert toeplitz._use_fft("fft", grid, mode, 32, 17)
  assert not toeplitz._use_fft("dense", grid, mode, 32, 17)


def test_unknown_method_raises():
  x = np.ones((4, 1, 2), np.float32)
  with pytest.raises(ValueError, match="`method` must be one of"):
    toeplitz.toeplitz_2d_linear_attention(
        x, x, x, np.zeros((1, 2, 2), np.float32), grid=(2, 2), method="fast"
    )


# 5. A zero table is plain (non-causal) linear attention.


@_settings
@hypothesis.given(seed=seeds, grid=grids, mode=modes)
def test_zero_log_bias_is_linear_attention(seed, grid, mode):
  rng = np.random.default_rng(seed)
  qf, kf = (_tokens(rng, grid, NUM_FEATURES, _positive) for _ in range(2))
  v = _tokens(rng, grid, V_DIM)
  zeros = np.zeros((HEADS,) + toeplitz.relative_bias_shape(grid, mode=mode),
                   np.float32)
  np.testing.assert_allclose(
      toeplitz_attention(qf, kf, v, zeros, grid=grid, mode=mode),
      jax.jit(kattn.linear_attention)(qf, kf, v), rtol=RTOL, atol=ATOL,
  )


# 2. Rolling the image rolls the torus outputs, up to float32 rounding.

# A rolled input changes which float32 roundings the FFT makes, not the math:
# measured differences are <= 4e-7 relative to max |out|.
EQUIVARIANCE_TOL = 2e-6


def _roll(x, shift, grid):
  return grid_lib.roll_tokens(x, shift, grid=grid)


def _roll_both_ways(attend, inputs, shift, grid):
  """(outputs of rolled inputs, rolled outputs); `shift` may be traced."""
  rolled_out = attend(*(_roll(x, shift, grid) for x in inputs))
  return rolled_out, _roll(attend(*inputs), shift, grid)


@functools.partial(jax.jit, static_argnames=("grid", "mode"))
def _favor_rolled_both_ways(q, k, v, log_bias, shift, *, grid, mode):
  attend = lambda q, k, v: FFT.relative_favor_attention(
      q, k, v, log_bias, projection=PROJECTION, grid=grid, mode=mode
  )
  return _roll_both_ways(attend, (q, k, v), shift, grid)


@functools.partial(jax.jit, static_argnames=("grid",))
def _padded_rolled_both_ways(qf, kf, v, log_bias, shift, *, grid):
  attend = lambda qf, kf, v: FFT.toeplitz_2d_linear_attention(
      qf, kf, v, log_bias, grid=grid, mode="padded"
  )
  return _roll_both_ways(attend, (qf, kf, v), shift, grid)


def _relative_difference(a, b):
  return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


@_settings
@hypothesis.given(seed=seeds, grid=grids, shift=shifts, scale=bias_scales)
def test_torus_rolls_commute_with_relative_favor(seed, grid, shift, scale):
  rng = np.random.default_rng(seed)
  q, k, v = (_tokens(rng, grid, DIM) for _ in range(3))
  log_bias = _log_bias(rng, grid, "torus", scale)
  rolled_out, out_rolled = _favor_rolled_both_ways(
      q, k, v, log_bias, np.asarray(shift), grid=grid, mode="torus"
  )
  assert _relative_difference(rolled_out, out_rolled) < EQUIVARIANCE_TOL


@pytest.mark.parametrize("shift", [(1, 0), (0, 1), (2, 3), (-1, -2)])
def test_padded_mode_is_not_circularly_equivariant(shift):
  """Negative control: the same check fails for the finite-image bias."""
  rng = np.random.default_rng(0)
  grid = (4, 5)
  q, k, v = (_tokens(rng, grid, DIM) for _ in range(3))
  log_bias = _log_bias(rng, grid, "padded")
  rolled_out, out_rolled = _favor_rolled_both_ways(
      q, k, v, log_bias, np.asarray(shift), grid=grid, mode="padded"
  )
  assert _relative_difference(rolled_out, out_rolled) > 1e-2


@_settings
@hypothesis.given(
    seed=seeds, grid=st.just((5, 6)),
    box_corner=st.tuples(st.integers(0, 2), st.integers(0, 2)),
    shift=st.tuples(st.integers(0, 2), st.integers(0, 2)),
)
def test_padded_mode_is_equivariant_when_the_support_stays_inside(
    seed, grid, box_corner, shift
):
  """Keys supported on a 2 x 2 box: moving box and queries moves the outputs.

  Zero key features outside the box make the wrap-around of `roll_tokens`
  invisible as long as the box stays inside the image; queries that wrapped
  are left out of the comparison.
  """
  height, width = grid
  (r0, c0), (dr, dc) = box_corner, shift
  hypothesis.assume(r0 + dr + 2 <= height and c0 + dc + 2 <= width)
  rows, cols = np.divmod(np.arange(height * width), width)
  inside = (rows >= r0) & (rows < r0 + 2) & (cols >= c0) & (cols < c0 + 2)
  rng = np.random.default_rng(seed)
  qf = _tokens(rng, grid, NUM_FEATURES, _positive)
  kf = _tokens(rng, grid, NUM_FEATURES, _positive) * inside[:, None, None]
  v = _tokens(rng, grid, V_DIM)
  log_bias = _log_bias(rng, grid, "padded")
  rolled_out, out_rolled = _padded_rolled_both_ways(
      qf, kf, v, log_bias, np.asarray(shift), grid=grid
  )
  kept = (rows >= dr) & (cols >= dc)
  np.testing.assert_allclose(
      rolled_out[:, kept], out_rolled[:, kept], rtol=RTOL, atol=ATOL
  )


# 4. The dense bias matrix and the quadratic softmax baseline.


@_settings
@hypothesis.given(seed=seeds, grid=grids, mode=modes)
def test_bias_matrix_matches_a_loop_built_reference(seed, grid, mode):
  log_bias = _log_bias(np.random.default_rng(seed), grid, mode)
  matrix = jax.jit(
      toeplitz.relative_bias_matrix, static_argnames=("grid", "mode")
  )(log_bias, grid=grid, mode=mode)
  np.testing.assert_allclose(
      matrix, _loop_bias_matrix(log_bias, grid, mode), rtol=1e-6
  )


@_settings
@hypothesis.given(seed=seeds, grid=grids, mode=modes)
def test_relative_softmax_matches_a_float64_reference(seed, grid, mode):
  rng = np.random.default_rng(seed)
  q, k, v = (_tokens(rng, grid, DIM) for _ in range(3))
  log_bias = _log_bias(rng, grid, mode)
  out = jax.jit(
      toeplitz.relative_softmax_attention, static_argnames=("grid", "mode")
  )(q, k, v, log_bias, grid=grid, mode=mode)
  f64 = lambda x: np.asarray(x, np.float64)
  logits = np.einsum("bqhd,bkhd->bhqk", f64(q), f64(k)) / math.sqrt(DIM)
  logits = logits + np.log(_loop_bias_matrix(log_bias, grid, mode))
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  expected = np.einsum("bhqk,bkhd->bqhd", weights, f64(v))
  # Softmax of O(1) float32 logits: ~1e-6 relative rounding.
  np.testing.assert_allclose(out, expected, rtol=2e-5, atol=2e-6)


class ShapesAndDtypesTest(chex.TestCase, parameterized.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters("torus", "padded")
  def test_relative_softmax_with_zero_bias_is_softmax(self, mode):
    rng = np.random.default_rng(0)
    q, k, v = (_tokens(rng, (3, 4), DIM) for _ in range(3))
    zeros = jnp.zeros(
        (HEADS,) + toeplitz.relative_bias_shape((3, 4), mode=mode)
    )
    out = self.variant(functools.partial(
        toeplitz.relative_softmax_attention, grid=(3, 4), mode=mode
    ))(q, k, v, zeros)
    np.testing.assert_allclose(
        out, kattn.softmax_attention(q, k, v), rtol=1e-5, atol=1e-6
    )

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.product(mode=("torus", "padded"), batch=((), (2, 3)))
  def test_any_batch_shape_and_output_in_the_value_dtype(self, mode, batch):
    rng = np.random.default_rng(0)
    shape = batch + (6, HEADS)
    qf, kf = (_positive(rng, shape + (NUM_FEATURES,)) for _ in range(2))
    v = _normal(rng, shape + (V_DIM,)).astype(jnp.bfloat16)
    log_bias = _log_bias(rng, (2, 3), mode)
    out = self.variant(functools.partial(
        FFT.toeplitz_2d_linear_attention, grid=(2, 3), mode=mode
    ))(qf, kf, v, log_bias)
    chex.assert_shape(out, shape + (V_DIM,))
    chex.assert_type(out, jnp.bfloat16)
    expected = toeplitz.dense_relative_kernel_attention(
        qf, kf, v.astype(jnp.float32), log_bias, grid=(2, 3), mode=mode
    )
    # Only the output is rounded to bf16 (8 mantissa bits, ~0.4%).
    np.testing.assert_allclose(
        out.astype(jnp.float32), expected, rtol=1e-2, atol=1e-2
    )

  @chex.variants(with_jit=True, without_jit=True)
  def test_plain_feature_maps_equal_precomputed_features(self):
    rng = np.random.default_rng(0)
    q, k, v = (_tokens(rng, (3, 5), DIM) for _ in range(3))
    log_bias = _log_bias(rng, (3, 5), "padded")
    out = self.variant(functools.partial(
        FFT.relative_feature_map_attention,
        feature_map=kattn.elu_plus_one_features, grid=(3, 5), mode="padded",
    ))(q, k, v, log_bias)
    expected = toeplitz.dense_relative_kernel_attention(
        kattn.elu_plus_one_features(q), kattn.elu_plus_one_features(k), v,
        log_bias, grid=(3, 5), mode="padded",
    )
    np.testing.assert_allclose(out, expected, rtol=RTOL, atol=ATOL)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters("torus", "padded")
  def test_relative_favor_matches_dense_favor_features(self, mode):
    rng = np.random.default_rng(1)
    q, k, v = (_tokens(rng, (4, 3), DIM) for _ in range(3))
    log_bias = _log_bias(rng, (4, 3), mode)
    out = self.variant(functools.partial(
        FFT.relative_favor_attention, projection=PROJECTION, grid=(4, 3),
        mode=mode,
    ))(q, k, v, log_bias)
    expected = toeplitz.dense_relative_kernel_attention(
        _dense_favor_features(q), _dense_favor_features(k), v, log_bias,
        grid=(4, 3), mode=mode,
    )
    np.testing.assert_allclose(out, expected, rtol=RTOL, atol=ATOL)


def test_vmap_over_an_extra_batch_axis_equals_the_batched_call():
  rng = np.random.default_rng(0)
  q, k, v = (_normal(rng, (3, BATCH, 12, HEADS, DIM)) for _ in range(3))
  log_bias = _log_bias(rng, (3, 4), "padded")
  attend = lambda q, k, v: FFT.relative_favor_attention(
      q, k, v, log_bias, projection=PROJECTION, grid=(3, 4), mode="padded"
  )
  np.testing.assert_allclose(
      jax.jit(jax.vmap(attend))(q, k, v), jax.jit(attend)(q, k, v),
      rtol=1e-6, atol=1e-7,
  )


# 6. Gradients of the FFT path are those of the dense reference.


def _favor_loss(q, k, v, log_bias, cotangent, *, grid, mode):
  out = FFT.relative_favor_attention(
      q, k, v, log_bias, projection=PROJECTION, grid=grid, mode=mode
  )
  return jnp.sum(out * cotangent)


def _dense_loss(q, k, v, log_bias, cotangent, *, grid, mode):
  out = toeplitz.dense_relative_kernel_attention(
      _dense_favor_features(q), _dense_favor_features(k), v, log_bias,
      grid=grid, mode=mode,
  )
  return jnp.sum(out * cotangent)


@functools.partial(jax.jit, static_argnames=("grid", "mode"))
def _fft_and_dense_gradients(*args, grid, mode):
  return tuple(
      jax.grad(functools.partial(loss, grid=grid, mode=mode),
               argnums=(0, 1, 2, 3))(*args)
      for loss in (_favor_loss, _dense_loss)
  )


# Two grids only, odd and even FFT sizes: each (grid, mode) compiles both
# backward passes.
@_settings
@hypothesis.given(
    seed=seeds, grid=st.sampled_from([(3, 5), (1, 6)]), mode=modes
)
def test_gradients_match_the_dense_reference(seed, grid, mode):
  rng = np.random.default_rng(seed)
  q, k, v, cotangent = (_tokens(rng, grid, DIM) for _ in range(4))
  log_bias = _log_bias(rng, grid, mode)
  grads, expected = _fft_and_dense_gradients(
      q, k, v, log_bias, cotangent, grid=grid, mode=mode
  )
  for got, want in zip(grads, expected):
    # Gradients sum a few hundred O(1) float32 terms with cancellation.
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


# 7. Log-scale features keep huge inputs finite and exact.


def _float64_log_space_favor(q, k, v, log_bias, grid, mode):
  """Relative FAVOR+ with every kernel value kept as a float64 logarithm."""
  f64 = lambda x: np.asarray(x, np.float64)
  scale = q.shape[-1] ** -0.25
  projection = f64(PROJECTION)

  def log_features(x):
    x = f64(x) * scale
    return (np.einsum("...d,md->...m", x, projection)
            - 0.5 * np.sum(x * x, -1, keepdims=True)
            - 0.5 * math.log(projection.shape[0]))

  pair = (log_features(q)[:, :, None, :, :]
          + log_features(k)[:, None, :, :, :])  # [b, i, j, h, m]
  peak = pair.max(-1, keepdims=True)
  logits = (peak + np.log(np.exp(pair - peak).sum(-1, keepdims=True)))[..., 0]
  logits = np.moveaxis(logits, -1, 1)  # [b, h, i, j]
  logits = logits + np.log(_loop_bias_matrix(log_bias, grid, mode))
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  return np.einsum("bhij,bjhd->bihd", weights, f64(v))


@pytest.mark.parametrize("mode", toeplitz.RELATIVE_BIAS_MODES)
def test_huge_inputs_are_finite_and_match_a_float64_reference(mode):
  grid = (3, 4)
  rng = np.random.default_rng(0)
  direction = lambda: _tokens(rng, grid, DIM)
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  q, k = (30.0 * unit(direction()) for _ in range(2))
  v = _tokens(rng, grid, V_DIM)
  log_bias = _log_bias(rng, grid, mode)
  # Control: the plain float32 features underflow, so the dense path is 0/0.
  naive = toeplitz.dense_relative_kernel_attention(
      _dense_favor_features(q), _dense_favor_features(k), v, log_bias,
      grid=grid, mode=mode,
  )
  assert not bool(jnp.all(jnp.isfinite(naive)))
  out = favor_attention(q, k, v, log_bias, projection=PROJECTION, grid=grid,
                        mode=mode)
  assert bool(jnp.all(jnp.isfinite(out)))
  # Exponents of ~150 carry float32 rounding of ~1e-5 into the weights.
  np.testing.assert_allclose(
      out, _float64_log_space_favor(q, k, v, log_bias, grid, mode),
      rtol=1e-4, atol=1e-4,
  )
  grads = jax.grad(
      lambda q, k: jnp.sum(favor_attention(
          q, k, v, log_bias, projection=PROJECTION, grid=grid, mode=mode)),
      argnums=(0, 1),
  )(q, k)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)


def test_bfloat16_inputs_give_bfloat16_outputs_close_to_float32():
  rng = np.random.default_rng(0)
  grid = (4, 4)
  q, k, v = (_tokens(rng, grid, DIM, lambda r, s: _normal(r, s, 0.5))
             for _ in range(3))
  log_bias = _log_bias(rng, grid, "padded")
  attend = functools.partial(
      FFT.relative_favor_attention, projection=PROJECTION, grid=grid,
      mode="padded",
  )
  low = attend(*(jnp.asarray(x, jnp.bfloat16) for x in (q, k, v)), log_bias)
  chex.assert_type(low, jnp.bfloat16)
  assert bool(jnp.all(jnp.isfinite(low)))
  # bf16 rounds inputs and outputs at ~0.4%; sums run in float32.
  np.testing.assert_allclose(
      low.astype(jnp.float32), attend(q, k, v, log_bias), rtol=0.03, atol=0.03
  )


# 8. Bad inputs fail at trace time, naming the argument.

F = jnp.ones((1, 12, 2, 4))
TORUS = jnp.zeros((2, 3, 4))
PADDED = jnp.zeros((2, 5, 7))


@pytest.mark.parametrize("call,match", [
    (lambda: FFT.toeplitz_2d_linear_attention(
        F, F, F, TORUS, grid=(3, 4), mode="circular"),
     r"`mode` must be one of \('torus', 'padded'\); got 'circular'"),
    (lambda: toeplitz.relative_bias_shape((3, 4), mode="reflect"), r"`mode`"),
    (lambda: FFT.toeplitz_2d_linear_attention(
        F, F, F, TORUS, grid=(3, 4), mode="padded"),
     r"`log_bias` must have shape .* \(2, 5, 7\) for grid \(3, 4\) in"
     r" 'padded' mode; got \(2, 3, 4\)"),
    (lambda: FFT.toeplitz_2d_linear_attention(
        F, F, F, jnp.zeros((3, 3, 4)), grid=(3, 4)),
     r"`log_bias` must have shape .* \(2, 3, 4\) .*got \(3, 3, 4\)"),
    (lambda: toeplitz.relative_bias_matrix(jnp.zeros((3, 4)), grid=(3, 4),
                                           mode="torus"),
     r"`log_bias` must have rank >= 3"),
    (lambda: FFT.toeplitz_2d_linear_attention(F, F, F, TORUS, grid=(4, 4)),
     r"`grid` \(4, 4\) holds 16 tokens, but the token axis has length 12"),
    (lambda: toeplitz.relative_softmax_attention(F, F, F, TORUS, grid=(3, 3)),
     r"`grid` \(3, 3\) holds 9 tokens"),
    (lambda: FFT.toeplitz_2d_linear_attention(F, F, F, TORUS, grid=12),
     r"`grid` must be \(height, width\)"),
    (lambda: FFT.toeplitz_2d_linear_attention(
        F, jnp.ones((1, 12, 2, 5)), F, TORUS, grid=(3, 4)),
     r"feature dims.*q_features=4, k_features=5"),
    (lambda: toeplitz.dense_relative_kernel_attention(
        F, jnp.ones((1, 6, 2, 4)), jnp.ones((1, 6, 2, 4)), TORUS, grid=(3, 4)),
     r"Query and key lengths.*q_features=12, k_features=6"),
    (lambda: FFT.relative_favor_attention(
        F, F, F, TORUS, projection=jnp.ones((8, 5)), grid=(3, 4)),
     r"`projection` must have shape \[num_features, 4\]"),
    (lambda: FFT.relative_favor_attention(
        F, F, F, TORUS, projection=PROJECTION[:, :4], grid=(3, 4),
        kernel="gaussian"),
     r"`kernel` must be one of"),
    (lambda: FFT.relative_feature_map_attention(
        F, F, F, PADDED.astype(jnp.int32), feature_map=jax.nn.relu,
        grid=(3, 4), mode="padded"),
     r"`log_bias` must have a floating dtype"),
])
def test_bad_inputs_raise_clear_errors(call, match):
  with pytest.raises(ValueError, match=match):
    call()


@pytest.mark.parametrize("mode", toeplitz.RELATIVE_BIAS_MODES)
def test_local_log_bias_is_a_gaussian_window_per_head(mode):
  grid = (5, 8)
  bias = np.asarray(toeplitz.local_log_bias(grid, 3, mode=mode))
  assert bias.shape == (3,) + toeplitz.relative_bias_shape(grid, mode=mode)
  matrix = np.log(np.asarray(
      toeplitz.relative_bias_matrix(bias, grid=grid, mode=mode)))
  widths = np.array([1.0, 2.5, 4.0])  # 1 .. half the longer side
  for i, j in [(0, 0), (0, 9), (7, 32), (39, 0)]:
    (ri, ci), (rj, cj) = divmod(i, 8), divmod(j, 8)
    dr, dc = abs(rj - ri), abs(cj - ci)
    if mode == "torus":
      dr, dc = min(dr, 5 - dr), min(dc, 8 - dc)
    np.testing.assert_allclose(
        matrix[:, i, j], -(dr**2 + dc**2) / (2 * widths**2), rtol=1e-6)
  # Wider heads attend farther.
  assert np.all(np.diff(bias.min(axis=(1, 2))) > 0)
