"""Clipped learned relative embeddings on a 2-D grid, in linear time.

In a relative head the key is replaced by a learned relative embedding: the
unnormalised weight of query i on token j is

  a_ij = phi(q_i)^T phi(r_{c(i, j)}),  c(i, j) = min(dist(p_i, p_j), K),

with K = `max_distance` and dist the L1 (Manhattan) distance between the grid
positions: |dr| + |dc| on a finite grid, min(|dr|, H - |dr|) +
min(|dc|, W - |dc|) on an H x W torus (circular distance per axis). The table
r has K + 1 rows: distances 0 .. K - 1 get their own row and row K is shared by
all far pairs. out_i = sum_j a_ij v_j / sum_j a_ij.

Linear time: since every far pair shares r_K, with s_ic = phi(q_i)^T phi(r_c),

  out_i = [s_iK (sum_j v_j - sum_{j in W(i)} v_j) + sum_{j in W(i)} s_ic v_j]
          / [s_iK (L - |W(i)|) + sum_{j in W(i)} s_ic],

where W(i) holds the tokens at distance < K from token i: the sum over all
keys with row K, corrected inside the window (Horn et al.). The far sum of
values is taken as total minus window, while the normaliser uses the static
count n_ic of tokens at each clipped distance from i (L - |W(i)| for c = K),
so it is a sum of nonnegative terms, free of cancellation. Each query's scores
are divided by their largest value over the distances it has tokens at (a
constant that cancels in its own normaliser), so the normaliser is >= 1 and
its square in the gradient cannot underflow.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from kattn import _validation
from kattn.attention import reference
from kattn.attention.linear import favor_feature_map
from kattn.positional.grid import check_grid, grid_positions

_LAYOUT = "[*batch, length, heads, dim]"


def _check_max_distance(max_distance) -> int:
  return _validation.check_positive_int("max_distance", max_distance)


def _check_torus(torus) -> bool:
  if not isinstance(torus, bool):
    raise ValueError(f"`torus` must be a bool; got {torus!r}.")
  return torus


def clipped_relative_distance(
    grid, max_distance: int, *, torus: bool = False
) -> jax.Array:
  """Clipped L1 grid distances c(i, j) = min(dist(p_i, p_j), max_distance).

  The dense `[L, L]` matrix, O(L^2): the reference the window algorithm of
  `clipped_relative_attention` must reproduce.

  Args:
    grid: `(height, width)` of the row-major token grid, L = height * width.
    max_distance: K; distances >= K are clipped to K.
    torus: measure the per-axis distance circularly, min(|d|, size - |d|)
      (an image with wrap-around), instead of plain |d|.

  Returns:
    `[L, L]` int32 table indices in 0 .. K.

  Examples:
    >>> clipped_relative_distance((1, 4), 2).tolist()[0]
    [0, 1, 2, 2]
    >>> clipped_relative_distance((1, 4), 2, torus=True).tolist()[0]
    [0, 1, 2, 1]
  """
  height, width = check_grid(grid)
  max_distance = _check_max_distance(max_distance)
  torus = _check_torus(torus)
  positions = grid_positions((height, width))
  delta = jnp.abs(positions[:, None, :] - positions[None, :, :])
  if torus:
    sizes = jnp.array([height, width], jnp.int32)
    delta = jnp.minimum(delta, sizes - delta)
  return jnp.minimum(jnp.sum(delta, axis=-1), max_distance).astype(jnp.int32)


def _check_inputs(
    q, v, table, grid, max_distance, torus, *, q_name="q_features",
    table_name="table_features",
):
  """Validates shapes; returns `((height, width), K, torus)`."""
  for name, x in ((q_name, q), ("v", v)):
    _validation.check_min_rank(name, x, 3, _LAYOUT)
  for name, x in ((q_name, q), ("v", v), (table_name, table)):
    _validation.check_floating(name, x)
  qs, vs = jnp.shape(q), jnp.shape(v)
  _validation.check_same(
      "Ranks of queries and values", (q_name, "v"), (len(qs), len(vs))
  )
  _validation.check_same(
      "Batch axes [*batch] of queries and values", (q_name, "v"),
      (qs[:-3], vs[:-3]),
  )
  _validation.check_same(
      "Query and value lengths (axis -3)", (q_name, "v"), (qs[-3], vs[-3])
  )
  _validation.check_same(
      "Head counts (axis -2)", (q_name, "v"), (qs[-2], vs[-2])
  )
  grid = check_grid(grid, qs[-3])
  max_distance = _check_max_distance(max_distance)
  torus = _check_torus(torus)
  expected = (max_distance + 1, qs[-2], qs[-1])
  got = tuple(jnp.shape(table))
  if got != expected:
    raise ValueError(
        f"`{table_name}` must have shape [max_distance + 1, heads,"
        f" {q_name} dim] = {list(expected)} (max_distance={max_distance},"
        f" `{q_name}` of shape {tuple(qs)}); got {got}."
    )
  return grid, max_distance, torus


def _window_offsets(grid, max_distance: int, torus: bool):
  """`{distance: [(dr, dc), ...]}` for the distances 0 .. K - 1.

  Each token j within distance < K of a token i appears exactly once, as the
  offset p_j - p_i. On a finite grid these are the offsets with
  |dr| + |dc| < K and |dr| < height, |dc| < width (an offset can still leave
  the image from a token near its border; such neighbours do not exist). On
  a torus an offset and its wrap-arounds reach the same token, so each residue
  mod height (width) is represented once, by the one of least magnitude,
  dr in [-(height - 1) // 2, height // 2]: then |dr| is the circular distance
  and |dr| + |dc| the torus distance, even on tori smaller than the window.
  """
  height, width = grid

  def axis_offsets(size):
    if torus:
      return range(-((size - 1) // 2), size // 2 + 1)
    reach = min(max_distance - 1, size - 1)
    return range(-reach, reach + 1)

  rings = {}
  for dr in axis_offsets(height):
    for dc in axis_offsets(width):
      distance = abs(dr) + abs(dc)
      if distance < max_distance:
        rings.setdefault(distance, []).append((dr, dc))
  return rings


def _distance_counts(grid, rings, max_distance: int, torus: bool):
  """`[L, K + 1]` numpy count of the tokens at each clipped distance from i."""
  height, width = grid
  rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
  counts = np.zeros((height * width, max_distance + 1), np.int64)
  for distance, offsets in rings.items():
    for dr, dc in offsets:
      if torus:
        counts[:, distance] += 1
      else:
        inside = ((0 <= rows + dr) & (rows + dr < height)
                  & (0 <= cols + dc) & (cols + dc < width))
        counts[:, distance] += inside.ravel()
  counts[:, max_distance] = height * width - counts.sum(axis=1)
  return counts


def _normalise(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
  # A denominator vanishes only where every score underflowed (then the
  # numerator is zero too) or, for sign-changing features, by cancellation;
  # the floor keeps the output finite.
  tiny = jnp.finfo(denominator.dtype).tiny
  denominator = jnp.where(jnp.abs(denominator) > tiny, denominator, tiny)
  return numerator / denominator


def _window_attention(q_features, v, table_features, grid, max_distance, torus,
                      accum_dtype):
  """The linear-time algorithm on validated inputs; `accum_dtype` result.

  Tensors are `[B, L, h, *]` after flattening the batch axes.
  """
  height, width = grid
  batch_shape, (heads, v_dim) = v.shape[:-3], v.shape[-2:]
  q_features = q_features.reshape((-1,) + q_features.shape[-3:])
  values = v.reshape((-1,) + v.shape[-3:]).astype(accum_dtype)
  # s_ic for c = 0 .. K: O(L (K + 1) m).
  scores = jnp.einsum(
      "blhm,khm->blhk", q_features.astype(accum_dtype),
      table_features.astype(accum_dtype),
  )
  rings = _window_offsets(grid, max_distance, torus)
  counts = jnp.asarray(
      _distance_counts(grid, rings, max_distance, torus), accum_dtype
  )
  # Referring each query's scores to its largest one keeps the normaliser
  # >= 1 (see the module docstring); distances without tokens are left out.
  peak = jax.lax.stop_gradient(jnp.max(
      jnp.where(counts[:, None] > 0, jnp.abs(scores), 0.0), axis=-1,
      keepdims=True,
  ))
  scores = scores / jnp.maximum(peak, jnp.finfo(accum_dtype).tiny)

  reach_r = max(abs(dr) for ring in rings.values() for dr, _ in ring)
  reach_c = max(abs(dc) for ring in rings.values() for _, dc in ring)
  image = values.reshape((-1, height, width, heads, v_dim))
  # Zero padding: out-of-image neighbours add nothing (they are not counted
  # either). On the torus the padding wraps instead.
  padded = jnp.pad(
      image, ((0, 0), (reach_r, reach_r), (reach_c, reach_c), (0, 0), (0, 0)),
      mode="wrap" if torus else "constant",
  )

  def neighbours(dr, dc):
    """v_j of the token j at offset (dr, dc) from each token i."""
    shifted = padded[:, reach_r + dr:reach_r + dr + height,
                     reach_c + dc:reach_c + dc + width]
    return shifted.reshape(values.shape)

  window = jnp.zeros_like(values)
  near = jnp.zeros_like(values)
  for distance, offsets in rings.items():
    ring = neighbours(*offsets[0])
    for dr, dc in offsets[1:]:
      ring = ring + neighbours(dr, dc)
    window = window + ring
    near = near + scores[..., distance, None] * ring
  far = jnp.sum(values, axis=1, keepdims=True) - window
  numerator = near + scores[..., max_distance, None] * far
  denominator = jnp.einsum("blhk,lk->blh", scores, counts)[..., None]
  out = _normalise(numerator, denominator)
  return out.reshape(batch_shape + out.shape[1:])


def clipped_relative_attention(
    q_features: jax.Array,
    v: jax.Array,
    table_features: jax.Array,
    *,
    grid,
    max_distance: int,
    torus: bool = False,
    accum_dtype=jnp.float32,
) -> jax.Array:
  """Attention on clipped relative embeddings in O(L K^2 d_v + L (K+1) m).

  a_ij = q_features_i . table_features[c(i, j)] with c(i, j) the clipped L1
  grid distance (torus L1 when `torus`; see `clipped_relative_distance`), and
  out_i = sum_j a_ij v_j / sum_j a_ij. All pairs at distance >= K share row K,
  so out_i is row K applied to the sums over all tokens, corrected inside the
  window W(i) of tokens at distance < K (see the module docstring). The window
  is a static loop over its O(K^2) offsets, each a slice of the value image
  padded with zeros (finite grid) or wrapped around (torus). On the torus the
  offsets run over one representative per residue mod height and width, the
  one of least magnitude, so each token in the window is counted once and at
  its torus distance even on tori smaller than the window. No `[L, L]` array
  is formed.

  Args:
    q_features: `[*batch, length, heads, m]` nonnegative query features.
    v: `[*batch, length, heads, v_dim]` values.
    table_features: `[max_distance + 1, heads, m]` features phi(r_c) of the
      relative table; row c serves distance c and row `max_distance` all
      farther pairs. Broadcast a table shared by heads before the call.
    grid: `(height, width)`, the row-major token grid; length = height * width.
    max_distance: K, the clipping distance.
    torus: wrap-around grid (circular distance per axis).
    accum_dtype: dtype of scores, sums and normalisers; outputs come back in
      the inputs' dtype.

  Returns:
    `[*batch, length, heads, v_dim]` outputs.

  Examples:
    >>> import jax.numpy as jnp
    >>> qf, v = jnp.ones((6, 1, 2)), jnp.arange(6.0).reshape(6, 1, 1)
    >>> table = jnp.array([[[3.0, 3.0]], [[1.0, 1.0]]])  # self 3x, others 1x
    >>> clipped_relative_attention(
    ...     qf, v, table, grid=(2, 3), max_distance=1)[:2, 0, 0]
    Array([1.875, 2.125], dtype=float32)

  References:
    Horn et al., "Translational Equivariance in Kernelizable Attention",
    2021 (strategy 2); Shaw et al., "Self-Attention with Relative Position
    Representations", NAACL 2018.
  """
  grid, max_distance, torus = _check_inputs(
      q_features, v, table_features, grid, max_distance, torus
  )
  out = _window_attention(
      q_features, v, table_features, grid, max_distance, torus, accum_dtype
  )
  return out.astype(jnp.result_type(q_features, v, table_features))


def dense_clipped_relative_attention(
    q_features: jax.Array,
    v: jax.Array,
    table_features: jax.Array,
    *,
    grid,
    max_distance: int,
    torus: bool = False,
) -> jax.Array:
  """The slow truth for `clipped_relative_attention`, O(L^2 m).

  Forms A_ij = q_features_i . table_features[c(i, j)] as
  `[*batch, heads, L, L]` from `clipped_relative_distance` and returns
  A v / A 1.

  Args:
    q_features: `[*batch, length, heads, m]` query features.
    v: `[*batch, length, heads, v_dim]` values.
    table_features: `[max_distance + 1, heads, m]` table features.
    grid: `(height, width)`; length = height * width.
    max_distance: K, the clipping distance.
    torus: wrap-around grid.

  Returns:
    `[*batch, length, heads, v_dim]` outputs.

  Examples:
    >>> import jax.numpy as jnp
    >>> qf, v = jnp.ones((6, 1, 2)), jnp.arange(6.0).reshape(6, 1, 1)
    >>> table = jnp.array([[[3.0, 3.0]], [[1.0, 1.0]]])
    >>> dense_clipped_relative_attention(
    ...     qf, v, table, grid=(2, 3), max_distance=1)[:2, 0, 0]
    Array([1.875, 2.125], dtype=float32)
  """
  grid, max_distance, torus = _check_inputs(
      q_features, v, table_features, grid, max_distance, torus
  )
  distance = clipped_relative_distance(grid, max_distance, torus=torus)
  kernel = jnp.einsum(
      "...ihm,ijhm->...hij", q_features, table_features[distance]
  )
  return reference.weighted_average(kernel, v)


def clipped_relative_favor_attention(
    q: jax.Array,
    v: jax.Array,
    table: jax.Array,
    *,
    projection: jax.Array,
    grid,
    max_distance: int,
    torus: bool = False,
    kernel: Literal["positive", "hyperbolic", "trigonometric"] = "positive",
    accum_dtype=jnp.float32,
) -> jax.Array:
  """Clipped relative attention on FAVOR+ features: a_ij ~ exp(q_i.r_c/sqrt(d)).

  Queries and table rows are scaled by dim^{-1/4} and mapped by the softmax
  kernel features in log-scale form. A query's log-scale multiplies its whole
  row of weights, so it cancels in its own normaliser and is dropped. The
  table rows' log-scales are referred to their maximum over rows, per head (a
  constant, so it cancels too, and kept out of the gradient): every feature
  is then at most 1 and nothing overflows. The weights then go to
  `clipped_relative_attention` (L1 or torus-L1 distance, window algorithm).

  Args:
    q: `[*batch, length, heads, dim]` queries.
    v: `[*batch, length, heads, v_dim]` values.
    table: `[max_distance + 1, heads, dim]` learned relative embeddings r_c.
    projection: `[m, dim]` random projection, e.g. from
      `orthogonal_random_projection(key, m, dim)`.
    grid: `(height, width)`; length = height * width.
    max_distance: K, the clipping distance.
    torus: wrap-around grid (circular distance per axis).
    kernel: `"positive"` (FAVOR+, default), `"hyperbolic"` or
      `"trigonometric"`; see `favor_attention`.
    accum_dtype: dtype of features, sums and normalisers; outputs come back in
      the inputs' dtype.

  Returns:
    `[*batch, length, heads, v_dim]` outputs.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from kattn.features.random import orthogonal_random_projection
    >>> q = 0.3 * jax.random.normal(jax.random.key(0), (1, 12, 2, 8))
    >>> table = 0.3 * jax.random.normal(jax.random.key(1), (3, 2, 8))
    >>> w = orthogonal_random_projection(jax.random.key(2), 16, 8)
    >>> clipped_relative_favor_attention(
    ...     q, q, table, projection=w, grid=(3, 4), max_distance=2).shape
    (1, 12, 2, 8)

  References:
    Horn et al., "Translational Equivariance in Kernelizable Attention",
    2021; Choromanski et al., "Rethinking Attention with Performers",
    ICLR 2021.
  """
  grid, max_distance, torus = _check_inputs(
      q, v, table, grid, max_distance, torus, q_name="q", table_name="table"
  )
  features = favor_feature_map(
      jnp.asarray(projection).astype(accum_dtype), q.shape[-1], kernel=kernel
  )
  q_features = features(q.astype(accum_dtype)).values
  table_scaled = features(table.astype(accum_dtype))
  peak = jax.lax.stop_gradient(
      jnp.max(table_scaled.log_scale, axis=0, keepdims=True)
  )
  table_features = table_scaled.values * jnp.exp(
      table_scaled.log_scale - peak
  )[..., None]
  out = _window_attention(
      q_features, v, table_features, grid, max_distance, torus, accum_dtype
  )
  return out.astype(jnp.result_type(q, v, table))
