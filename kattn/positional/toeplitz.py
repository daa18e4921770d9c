"""Exact 2-D relative position biases inside linear attention, via the FFT.

Tokens sit on a `grid = (height, width)` image, flattened row-major. A learned
log-bias b(delta) per head, delta = p_j - p_i the offset from query i to key
j, weights kernelized attention multiplicatively with c = exp(b) > 0:

  out_i = sum_j c(p_j - p_i) phi(q_i)^T phi(k_j) v_j
          / sum_j c(p_j - p_i) phi(q_i)^T phi(k_j).

The numerator and denominator are phi(q_i)^T G_i with
G_i = sum_j c(p_j - p_i) F_j and F_j = phi(k_j) [v_j, 1]^T: a 2-D
cross-correlation of the field F over the image with c, one per feature and
value channel. The FFT computes it in O(L log L) per channel, so the
`[L, L]` bias matrix is never formed.

Two offset domains:

* `"torus"`: offsets wrap around, delta mod (height, width); the table is
  `[heads, height, width]` and the correlation a plain circular FFT. Rolling
  the image rolls the outputs exactly (translation equivariance on the torus).
* `"padded"`: a finite image, delta in [-(height-1), height-1] x
  [-(width-1), width-1]; the table is `[heads, 2 height - 1, 2 width - 1]`
  with b(delta) at index delta + (height - 1, width - 1). The field is
  zero-padded to at least twice its size, so that the circular correlation
  equals the linear one.

A zero table gives plain linear attention.
"""

from __future__ import annotations

import math
from typing import Literal

import jax
import jax.numpy as jnp

from kattn import _validation
from kattn.attention import linear
from kattn.attention import reference
from kattn.positional import grid as grid_lib

RELATIVE_BIAS_MODES = ("torus", "padded")
# "auto" takes whichever of the FFT and the explicit pairwise weights costs
# fewer multiply-adds for the grid and widths; both compute the same sums.
METHODS = ("auto", "fft", "dense")

Mode = Literal["torus", "padded"]


def _check_mode(mode) -> None:
  if mode not in RELATIVE_BIAS_MODES:
    raise ValueError(
        f"`mode` must be one of {RELATIVE_BIAS_MODES}; got {mode!r}."
    )


def relative_bias_shape(grid, *, mode: Mode) -> tuple[int, int]:
  """Shape of one head's log-bias table for offsets on `grid`.

  Args:
    grid: `(height, width)`.
    mode: `"torus"` (offsets modulo the grid) or `"padded"` (offsets on a
      finite image).

  Returns:
    `(height, width)` for `"torus"`, `(2 height - 1, 2 width - 1)` for
    `"padded"`.

  Examples:
    >>> relative_bias_shape((3, 5), mode="torus")
    (3, 5)
    >>> relative_bias_shape((3, 5), mode="padded")
    (5, 9)
  """
  _check_mode(mode)
  height, width = grid_lib.check_grid(grid)
  if mode == "torus":
    return height, width
  return 2 * height - 1, 2 * width - 1


def local_log_bias(grid, num_heads: int, *, mode: Mode) -> jax.Array:
  """A locality prior for the log-bias table: b_h(delta) = -|delta|^2 / (2 s_h^2).

  Head h attends within a Gaussian window of width s_h, spread evenly from
  1 token to half the longer grid side, as ConViT's locality initialisation
  does for positional attention: the heads start out like convolutions of
  several sizes and can learn to widen or sharpen. On the torus |delta| is
  the circular distance per axis, so the prior is itself shift-invariant.

  Args:
    grid: `(height, width)`.
    num_heads: number of heads.
    mode: `"torus"` or `"padded"`.

  Returns:
    `[num_heads, *relative_bias_shape(grid, mode=mode)]` float32 log-biases.

  Examples:
    >>> b = local_log_bias((4, 4), 2, mode="torus")
    >>> b.shape, float(b[0, 0, 1]), float(b[0, 0, 3]), float(b[0, 1, 1])
    ((2, 4, 4), -0.5, -0.5, -1.0)
  """
  _validation.check_positive_int("num_heads", num_heads)
  rows, cols = relative_bias_shape(grid, mode=mode)
  height, width = grid_lib.check_grid(grid)
  if mode == "torus":
    dr, dc = jnp.arange(rows), jnp.arange(cols)
    dr, dc = jnp.minimum(dr, height - dr), jnp.minimum(dc, width - dc)
  else:
    dr, dc = jnp.arange(rows) - (height - 1), jnp.arange(cols) - (width - 1)
  squared = (dr[:, None] ** 2 + dc[None, :] ** 2).astype(jnp.float32)
  widest = max(1.0, max(height, width) / 2)
  widths = jnp.linspace(1.0, widest, num_heads) if num_heads > 1 else jnp.ones(1)
  return -squared / (2 * widths[:, None, None] ** 2)


def _check_log_bias(log_bias, grid, mode, heads: int) -> None:
  _validation.check_floating("log_bias", log_bias)
  expected = (heads,) + relative_bias_shape(grid, mode=mode)
  if tuple(jnp.shape(log_bias)) != expected:
    raise ValueError(
        f"`log_bias` must have shape [heads, *relative_bias_shape(grid)] ="
        f" {expected} for grid {tuple(grid)} in {mode!r} mode; got"
        f" {tuple(jnp.shape(log_bias))}."
    )


def _table_indices(grid, mode) -> jax.Array:
  """`[L, L]` flat table index of the offset p_j - p_i for every pair (i, j)."""
  height, width = grid_lib.check_grid(grid)
  positions = grid_lib.grid_positions(grid)
  delta = positions[None, :, :] - positions[:, None, :]
  if mode == "torus":
    rows, cols = delta[..., 0] % height, delta[..., 1] % width
    return rows * width + cols
  rows, cols = delta[..., 0] + height - 1, delta[..., 1] + width - 1
  return rows * (2 * width - 1) + cols


def _log_bias_matrix(log_bias, grid, mode) -> jax.Array:
  """`[heads, L, L]` log-bias b(p_j - p_i), gathered from the table."""
  heads = log_bias.shape[0]
  return jnp.take(
      log_bias.reshape(heads, -1), _table_indices(grid, mode), axis=1
  )


def relative_bias_matrix(log_bias: jax.Array, *, grid, mode: Mode) -> jax.Array:
  """Dense relative bias matrix c(p_j - p_i) = exp(b(p_j - p_i)); O(L^2).

  For references and tests; `toeplitz_2d_linear_attention` never forms it.

  Args:
    log_bias: `[heads, *relative_bias_shape(grid, mode=mode)]` log-biases b.
    grid: `(height, width)`, L = height * width tokens.
    mode: `"torus"` or `"padded"`.

  Returns:
    `[heads, L, L]` with entry (h, i, j) = exp(b[h, offset(p_j - p_i)]).

  Examples:
    >>> import jax.numpy as jnp
    >>> b = jnp.log(jnp.arange(1.0, 4.0)).reshape(1, 1, 3)
    >>> relative_bias_matrix(b, grid=(1, 3), mode="torus")[0]
    Array([[1., 2., 3.],
           [3., 1., 2.],
           [2., 3., 1.]], dtype=float32)
  """
  _validation.check_min_rank("log_bias", log_bias, 3, "[heads, rows, cols]")
  _check_log_bias(log_bias, grid, mode, heads=jnp.shape(log_bias)[0])
  return jnp.exp(_log_bias_matrix(log_bias, grid, mode))


def _fft_size(n: int) -> int:
  """Smallest 5-smooth integer (2^a 3^b 5^c) >= n: a fast FFT length."""
  size = n
  while True:
    rest = size
    for prime in (2, 3, 5):
      while rest % prime == 0:
        rest //= prime
    if rest == 1:
      return size
    size += 1


def _circular_bias(log_bias, grid, mode):
  """c on the FFT's periodic domain: `[heads, P, Q]` with c at delta mod (P, Q).

  Each head's table is shifted by its max first: the factor is the same for
  every pair, so it cancels in the normaliser and keeps c <= 1.
  """
  peak = jax.lax.stop_gradient(jnp.max(log_bias, axis=(-2, -1), keepdims=True))
  bias = jnp.exp(log_bias - peak)
  if mode == "torus":
    return bias
  height, width = grid
  size = (_fft_size(2 * height - 1), _fft_size(2 * width - 1))
  # Offsets -(n - 1) .. n - 1 sit at table index 0 .. 2n - 2; the roll puts
  # offset delta at delta mod size, with zeros for offsets outside the image.
  bias = jnp.pad(bias, ((0, 0), (0, size[0] - bias.shape[1]),
                        (0, size[1] - bias.shape[2])))
  return jnp.roll(bias, (1 - height, 1 - width), axis=(-2, -1))


def _correlate(field, bias):
  """G(p) = sum_t c(t) F(p + t) over the last two (image) axes, by FFT.

  field `[..., height, width]`; bias `[..., P, Q]` from `_circular_bias`,
  broadcastable against the field's leading axes. Returns `[..., height,
  width]` with the broadcast leading axes.
  """
  height, width = field.shape[-2:]
  size = bias.shape[-2:]
  # Cross-correlation: spectrum conj(C) * F.
  bias_spectrum = jnp.conj(jnp.fft.rfft2(bias))
  return jnp.fft.irfft2(
      jnp.fft.rfft2(field, s=size) * bias_spectrum, s=size
  )[..., :height, :width]


def _correlate_and_read(q_features, k_features, rows, log_bias, grid, mode):
  """phi(q_i)^T sum_j c(p_j - p_i) phi(k_j) rows_j^T over its last column.

  q_features, k_features `[*batch, L, h, m]`, rows `[*batch, L, h, e]`
  ([v_j, 1] times key j's weight), all in the accumulation dtype.
  The field is laid out `[*batch, h, m, e, height, width]`, image axes last,
  where XLA's FFT wants them.
  """
  height, width = grid
  image = lambda x: x.reshape(x.shape[:-3] + (height, width) + x.shape[-2:])
  q_features, k_features, rows = map(image, (q_features, k_features, rows))
  field = jnp.einsum("...xyhm,...xyhe->...hmexy", k_features, rows)
  bias = _circular_bias(log_bias.astype(field.dtype), grid, mode)
  correlated = _correlate(field, bias[:, None, None])
  out = jnp.einsum("...xyhm,...hmexy->...xyhe", q_features, correlated)
  out = linear._normalise(out)  # pylint: disable=protected-access
  return out.reshape(out.shape[:-4] + (height * width,) + out.shape[-2:])


def _dense_and_read(q_features, k_features, rows, log_bias, grid, mode):
  """Same as `_correlate_and_read` through the explicit `[L, L]` weights.

  O(L^2 (m + e)) instead of O(L log L m e): cheaper for small grids, where
  the FFT's per-channel work exceeds the pairwise products.
  """
  peak = jax.lax.stop_gradient(jnp.max(log_bias, axis=(-2, -1), keepdims=True))
  bias = jnp.exp(_log_bias_matrix(log_bias - peak, grid, mode))
  weights = jnp.einsum("...ihm,...jhm->...hij", q_features, k_features) * bias
  return linear._normalise(  # pylint: disable=protected-access
      jnp.einsum("...hij,...jhe->...ihe", weights, rows)
  )


def _fft_cost(grid, mode, num_features, rows) -> float:
  """Cost of the FFT path per batch element and head, in dense-path units.

  Forward and inverse FFTs of every channel dominate. The constant 10 per
  log2 level is fitted to XLA:CPU timings of forward and backward passes
  (8 x 8 to 32 x 32 grids, m = 32, d_v = 16), where batched small FFTs run
  far below matmul speed.
  """
  height, width = grid
  if mode == "padded":
    height, width = _fft_size(2 * height - 1), _fft_size(2 * width - 1)
  size = height * width
  return 10.0 * num_features * rows * size * max(math.log2(size), 1.0)


def _use_fft(method, grid, mode, num_features, rows) -> bool:
  if method not in METHODS:
    raise ValueError(f"`method` must be one of {METHODS}; got {method!r}.")
  if method != "auto":
    return method == "fft"
  length = grid[0] * grid[1]
  return _fft_cost(grid, mode, num_features, rows) < (
      length * length * (num_features + rows)
  )


def _attend(method, q_features, k_features, rows, log_bias, grid, mode):
  read = (
      _correlate_and_read
      if _use_fft(method, grid, mode, q_features.shape[-1], rows.shape[-1])
      else _dense_and_read
  )
  return read(q_features, k_features, rows, log_bias, grid, mode)


def _values_and_one(v, key_weights=None):
  """[v, 1] rows, each scaled by its key's weight when given."""
  rows = jnp.concatenate([v, jnp.ones(v.shape[:-1] + (1,), v.dtype)], axis=-1)
  return rows if key_weights is None else rows * key_weights[..., None]


def _check_inputs(q, k, v, log_bias, grid, mode, names):
  _validation.check_attention_inputs(q, k, v, q_name=names[0], k_name=names[1])
  _check_mode(mode)
  _validation.check_same(
      "Query and key lengths (axis -3)", names, (q.shape[-3], k.shape[-3])
  )
  grid = grid_lib.check_grid(grid, q.shape[-3])
  _check_log_bias(log_bias, grid, mode, heads=q.shape[-2])
  return grid


def toeplitz_2d_linear_attention(
    q_features: jax.Array,
    k_features: jax.Array,
    v: jax.Array,
    log_bias: jax.Array,
    *,
    grid,
    mode: Mode = "torus",
    method: str = "auto",
    accum_dtype=jnp.float32,
) -> jax.Array:
  """Kernelized attention with an exact 2-D relative position bias (FFT-RPE).

  out_i = sum_j c(p_j - p_i) phi(q_i)^T phi(k_j) v_j / (same with v_j = 1),
  c = exp(log_bias), in O(L log L m d_v) time and O(L m d_v) memory: the
  bias multiplies a Toeplitz (torus: circulant) matrix, applied by FFT.

  The FFT rounds each channel relative to its largest term, so a query that
  sees only small c loses accuracy in proportion to the spread of log_bias:
  float32 errors are ~1e-6 for |b| <~ 3, ~1e-5 for |b| <~ 6. Pass
  `accum_dtype=jnp.float64` (with x64 enabled) for wider tables.

  Args:
    q_features: `[*batch, L, heads, m]` query features phi(q), L = height *
      width tokens in row-major order.
    k_features: `[*batch, L, heads, m]` key features phi(k); nonnegative
      features keep every denominator positive.
    v: `[*batch, L, heads, v_dim]` values.
    log_bias: `[heads, *relative_bias_shape(grid, mode=mode)]` log-biases b;
      zeros give plain linear attention.
    grid: `(height, width)`.
    mode: `"torus"` (offsets wrap around) or `"padded"` (finite image).
    method: `"fft"` (O(L log L m d_v)), `"dense"` (the explicit `[L, L]`
      weights, O(L^2 (m + d_v)), faster on small grids) or `"auto"` (the
      cheaper by a cost model fitted on CPU: dense up to about 32 x 32
      tokens on the torus for m = 32, d_v = 16). Both give the same
      result to float32 rounding.
    accum_dtype: dtype of features, FFTs, sums and normalisers.

  Returns:
    `[*batch, L, heads, v_dim]` outputs in v's dtype.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> f = jax.nn.softplus(jax.random.normal(jax.random.key(0), (2, 12, 4, 8)))
    >>> v = jnp.ones((2, 12, 4, 3))
    >>> b = jnp.zeros((4,) + relative_bias_shape((3, 4), mode="padded"))
    >>> out = toeplitz_2d_linear_attention(
    ...     f, f, v, b, grid=(3, 4), mode="padded")
    >>> bool(jnp.allclose(out, 1.0, atol=1e-5))
    True

  References:
    Luo et al., "Stable, Fast and Accurate: Kernelized Attention with
    Relative Positional Encoding", NeurIPS 2021.
  """
  grid = _check_inputs(
      q_features, k_features, v, log_bias, grid, mode,
      ("q_features", "k_features"),
  )
  cast = lambda x: x.astype(accum_dtype)
  out = _attend(
      method, cast(q_features), cast(k_features), _values_and_one(cast(v)),
      log_bias, grid, mode,
  )
  return out.astype(v.dtype)


def relative_feature_map_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    log_bias: jax.Array,
    *,
    feature_map: linear.FeatureMap,
    grid,
    mode: Mode = "torus",
    method: str = "auto",
    accum_dtype=jnp.float32,
) -> jax.Array:
  """FFT-RPE attention with `feature_map` applied to queries and keys.

  A map returning `ScaledFeatures` is stabilised exactly: a query's log-scale
  cancels in its own normaliser and is dropped; key log-scales are referred
  to their max over all keys of the same batch element and head. That max is
  a constant of the key set, so it cancels too, and, being invariant to
  moving keys around, keeps the torus mode exactly equivariant.

  Args:
    q: `[*batch, L, heads, dim]` queries on a row-major grid.
    k: `[*batch, L, heads, dim]` keys.
    v: `[*batch, L, heads, v_dim]` values.
    log_bias: `[heads, *relative_bias_shape(grid, mode=mode)]` log-biases.
    feature_map: `[..., dim] -> [..., m]` array or `ScaledFeatures`.
    grid: `(height, width)`.
    mode: `"torus"` or `"padded"`.
    method: `"fft"` (O(L log L m d_v)), `"dense"` (the explicit `[L, L]`
      weights, O(L^2 (m + d_v)), faster on small grids) or `"auto"` (the
      cheaper by a cost model fitted on CPU: dense up to about 32 x 32
      tokens on the torus for m = 32, d_v = 16). Both give the same
      result to float32 rounding.
    accum_dtype: dtype of features, FFTs, sums and normalisers.

  Returns:
    `[*batch, L, heads, v_dim]` outputs in v's dtype.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from kattn.features.favor import elu_plus_one_features
    >>> x = jax.random.normal(jax.random.key(0), (6, 2, 8))
    >>> b = jnp.zeros((2, 2, 3))
    >>> relative_feature_map_attention(
    ...     x, x, x, b, feature_map=elu_plus_one_features, grid=(2, 3)).shape
    (6, 2, 8)

  References:
    Luo et al., "Stable, Fast and Accurate: Kernelized Attention with
    Relative Positional Encoding", NeurIPS 2021.
  """
  grid = _check_inputs(q, k, v, log_bias, grid, mode, ("q", "k"))
  split = linear._split  # pylint: disable=protected-access
  q_values, _ = split(feature_map(q.astype(accum_dtype)))
  k_values, k_scale = split(feature_map(k.astype(accum_dtype)))
  key_weights = None
  if k_scale is not None:
    peak = jax.lax.stop_gradient(jnp.max(k_scale, axis=-2, keepdims=True))
    key_weights = jnp.exp(k_scale - peak).astype(accum_dtype)
  cast = lambda x: x.astype(accum_dtype)
  out = _attend(
      method, cast(q_values), cast(k_values),
      _values_and_one(cast(v), key_weights), log_bias, grid, mode,
  )
  return out.astype(v.dtype)


def relative_favor_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    log_bias: jax.Array,
    *,
    projection: jax.Array,
    grid,
    mode: Mode = "torus",
    kernel: Literal["positive", "hyperbolic", "trigonometric"] = "positive",
    method: str = "auto",
    accum_dtype=jnp.float32,
) -> jax.Array:
  """FAVOR+ attention with an exact 2-D relative position bias, by FFT.

  Estimates softmax_j(q_i^T k_j / sqrt(dim) + b(p_j - p_i)) v_j: queries and
  keys are scaled by dim^{-1/4}, so the random features estimate the softmax
  weight exp(q^T k / sqrt(dim)), which the relative bias then multiplies.

  Args:
    q: `[*batch, L, heads, dim]` queries on a row-major grid.
    k: `[*batch, L, heads, dim]` keys.
    v: `[*batch, L, heads, v_dim]` values.
    log_bias: `[heads, *relative_bias_shape(grid, mode=mode)]` log-biases.
    projection: `[m, dim]` random projection, e.g. from
      `orthogonal_random_projection(key, m, dim)`.
    grid: `(height, width)`.
    mode: `"torus"` or `"padded"`.
    kernel: `"positive"` (FAVOR+, default), `"hyperbolic"` or
      `"trigonometric"`; see `favor_attention`.
    method: `"fft"` (O(L log L m d_v)), `"dense"` (the explicit `[L, L]`
      weights, O(L^2 (m + d_v)), faster on small grids) or `"auto"` (the
      cheaper by a cost model fitted on CPU: dense up to about 32 x 32
      tokens on the torus for m = 32, d_v = 16). Both give the same
      result to float32 rounding.
    accum_dtype: dtype of features, FFTs, sums and normalisers.

  Returns:
    `[*batch, L, heads, v_dim]` outputs in v's dtype.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from kattn.features.random import orthogonal_random_projection
    >>> q = 0.3 * jax.random.normal(jax.random.key(0), (1, 20, 2, 16))
    >>> w = orthogonal_random_projection(jax.random.key(1), 32, 16)
    >>> b = jnp.zeros((2, 7, 9))
    >>> relative_favor_attention(
    ...     q, q, q, b, projection=w, grid=(4, 5), mode="padded").shape
    (1, 20, 2, 16)

  References:
    Luo et al., "Stable, Fast and Accurate: Kernelized Attention with
    Relative Positional Encoding", NeurIPS 2021.
    Choromanski et al., "Rethinking Attention with Performers", ICLR 2021.
  """
  _validation.check_attention_inputs(q, k, v)
  feature_map = linear.favor_feature_map(projection, q.shape[-1], kernel=kernel)
  return relative_feature_map_attention(
      q, k, v, log_bias, feature_map=feature_map, grid=grid, mode=mode,
      method=method, accum_dtype=accum_dtype,
  )


def dense_relative_kernel_attention(
    q_features: jax.Array,
    k_features: jax.Array,
    v: jax.Array,
    log_bias: jax.Array,
    *,
    grid,
    mode: Mode = "torus",
) -> jax.Array:
  """The slow truth for FFT-RPE: A_ij = c(p_j - p_i) phi(q_i)^T phi(k_j).

  Forms A as `[*batch, heads, L, L]` and returns A V / A 1; O(L^2) time and
  memory.

  Args:
    q_features: `[*batch, L, heads, m]` query features.
    k_features: `[*batch, L, heads, m]` key features.
    v: `[*batch, L, heads, v_dim]` values.
    log_bias: `[heads, *relative_bias_shape(grid, mode=mode)]` log-biases.
    grid: `(height, width)`.
    mode: `"torus"` or `"padded"`.

  Returns:
    `[*batch, L, heads, v_dim]` outputs.

  Examples:
    >>> import jax.numpy as jnp
    >>> f, v = jnp.ones((2, 1, 3)), jnp.array([0.0, 1.0]).reshape(2, 1, 1)
    >>> b = jnp.log(jnp.array([[[1.0, 1.0, 3.0]]]))  # offsets -1, 0, +1
    >>> dense_relative_kernel_attention(f, f, v, b, grid=(1, 2), mode="padded")
    Array([[[0.75]],
    <BLANKLINE>
           [[0.5 ]]], dtype=float32)
  """
  grid = _check_inputs(
      q_features, k_features, v, log_bias, grid, mode,
      ("q_features", "k_features"),
  )
  kernel = jnp.einsum("...qhm,...khm->...hqk", q_features, k_features)
  kernel = kernel * relative_bias_matrix(log_bias, grid=grid, mode=mode)
  return reference.weighted_average(kernel, v)


def relative_softmax_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    log_bias: jax.Array,
    *,
    grid,
    mode: Mode = "torus",
) -> jax.Array:
  """Exact softmax attention with a 2-D relative position bias; O(L^2).

  out_i = sum_j softmax_j(q_i^T k_j / sqrt(dim) + b(p_j - p_i)) v_j: what
  `relative_favor_attention` estimates, and the quadratic baseline.

  Args:
    q: `[*batch, L, heads, dim]` queries on a row-major grid.
    k: `[*batch, L, heads, dim]` keys.
    v: `[*batch, L, heads, v_dim]` values.
    log_bias: `[heads, *relative_bias_shape(grid, mode=mode)]` log-biases.
    grid: `(height, width)`.
    mode: `"torus"` or `"padded"`.

  Returns:
    `[*batch, L, heads, v_dim]` outputs.

  Examples:
    >>> import jax.numpy as jnp
    >>> x = jnp.ones((1, 6, 2, 8))
    >>> relative_softmax_attention(x, x, x, jnp.zeros((2, 3, 5)), grid=(2, 3),
    ...                            mode="padded").shape
    (1, 6, 2, 8)
  """
  grid = _check_inputs(q, k, v, log_bias, grid, mode, ("q", "k"))
  logits = jnp.einsum("...qhd,...khd->...hqk", q, k) / jnp.sqrt(
      jnp.asarray(q.shape[-1], q.dtype)
  )
  logits = logits + _log_bias_matrix(log_bias, grid, mode).astype(logits.dtype)
  weights = jax.nn.softmax(logits, axis=-1)
  return jnp.einsum("...hqk,...khd->...qhd", weights, v)

