"""Group-equivariant linear attention on p4 and p4m, exact by FFT.

Tokens are pairs (pixel p_i, group element g) of the homogeneous space of
p4 = Z^2 x| C_4 (or p4m = Z^2 x| D_4). A query at (i, g) weighs a key at
(j, m) by a kernel times a bias of the RELATIVE group element
(i, g)^-1 (j, m) = (g^-1 (p_j - p_i), g^-1 m):

  w(i, g; j, m) = phi(q_{i,g})^T phi(k_{j,m}) c_S(g^-1 (p_j - p_i)) c_G(g^-1 m),
  out(i, g) = sum_{j,m} w v_{j,m} / sum_{j,m} w,

with c_S = exp(b_S) a learned table over the offsets of a finite image
(`[heads, 2H - 1, 2W - 1]`, the "padded" mode of `kattn.positional.toeplitz`)
and c_G = exp(b_G) a learned `[heads, |G|]` table over group elements. The
lifting layer (an image in, no group axis) keeps the spatial term only:
w(i, g; j) = phi(q_i)^T phi(k_j) c_S(g^-1 (p_j - p_i)).

Since w depends on relative group elements only and the features act on one
token at a time, turning the input by u maps the outputs as the regular
representation, out'(g, p) = out(u^-1 g, u^-1 p), exactly for any fixed
feature map (a fixed FAVOR+ projection included), up to float32 rounding.

No `[|G| L, |G| L]` matrix is formed. With F_m(j) = phi(k_{j,m}) [v_{j,m}, 1]^T:

1. mix the group axis, A_g(j) = sum_m c_G(g^-1 m) F_m(j), a `[|G|, |G|]`
   matrix (done on the L pixels, before zero padding: real products on L
   values instead of complex ones on the ~2L-bin padded spectrum; the FFT is
   linear, so mixing before or after it gives the same sums);
2. for each g, cross-correlate A_g with the turned table c_S(g^-1 .) by 2-D
   rfft (the lifting layer transforms its single field once and multiplies
   it by every g's bias spectrum);
3. read with phi(q_{i,g}) and normalise.

The turned tables are exact index permutations of b_S: the 90-degree
rotations and the mirror map the square offset domain onto itself (no
interpolation), which is why only p4, p4m and their subgroups z2, mz2 are
supported, and rotations need a square grid.

Feature maps returning `ScaledFeatures` (FAVOR+) are stabilised as in
`toeplitz.relative_feature_map_attention`: query log-scales are dropped, key
log-scales referred to their max over every key (j, m); both tables are
shifted by their max. These constants cancel in the normaliser, so huge
queries and keys stay exact. As for FFT-RPE, the FFT rounds each channel
relative to its largest term: float32 errors are ~1e-6 for |b| <~ 3 and grow
with the spread of the tables (finite, never nan).

Cost: O(|G| L log L m (d_v + 1) + |G|^2 L m (d_v + 1)) time and
O(|G| L m (d_v + 1)) memory for L pixels, m features and d_v value
channels: linear in pixels x |G| up to the log.

References:
  Romero & Cordonnier, "Group Equivariant Stand-Alone Self-Attention for
  Vision", ICLR 2021.
  Luo et al., "Stable, Fast and Accurate: Kernelized Attention with Relative
  Positional Encoding", NeurIPS 2021.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from kattn import _validation
from kattn import groups as groups_lib
from kattn.attention import linear
from kattn.attention import reference
from kattn.positional import grid as grid_lib
from kattn.positional import toeplitz

_GROUP_LAYOUT = "[*batch, order, length, heads, dim]"

# The FFT-RPE internals this module extends to turned tables.
# pylint: disable=protected-access
_check_log_bias = toeplitz._check_log_bias
_circular_bias = toeplitz._circular_bias
_correlate = toeplitz._correlate
_table_indices = toeplitz._table_indices
_values_and_one = toeplitz._values_and_one
_fft_cost = toeplitz._fft_cost
# "auto" takes whichever path costs less by FFT-RPE's CPU cost model; both
# compute the same sums.
METHODS = toeplitz.METHODS
_normalise = linear._normalise
_split = linear._split
# pylint: enable=protected-access


def _pixel_group(group) -> groups_lib.Group:
  group = groups_lib.as_group(group)
  if not group.exact_on_pixels:
    raise ValueError(
        f"`group` must map pixels onto pixels: only the 90-degree groups"
        f" (z2, mz2, p4, p4m) are supported; got {group.name!r}, which turns"
        f" by {360 / group.rotations:g} degrees."
    )
  return group


def _check_grid(group, grid, length):
  # The mirror alone keeps any rectangle; rotations need a square.
  if group.rotations > 1:
    return groups_lib.check_square_grid(grid, length)
  return grid_lib.check_grid(grid, length)


def _check_inputs(q, k, v, log_bias, group_log_bias, group, grid, names, *,
                  lifting):
  """Validates shapes at trace time; returns the group and `(H, W)`."""
  group = _pixel_group(group)
  if not lifting:
    for name, x in zip(names + ("v",), (q, k, v)):
      _validation.check_min_rank(name, x, 4, _GROUP_LAYOUT)
      if jnp.shape(x)[-4] != group.order:
        raise ValueError(
            f"`{name}` axis -4 must hold the {group.order} elements of"
            f" group {group.name!r} ({_GROUP_LAYOUT}); got shape"
            f" {tuple(jnp.shape(x))}."
        )
  _validation.check_attention_inputs(q, k, v, q_name=names[0], k_name=names[1])
  _validation.check_same(
      "Query and key lengths (axis -3)", names, (q.shape[-3], k.shape[-3])
  )
  grid = _check_grid(group, grid, q.shape[-3])
  heads = q.shape[-2]
  _check_log_bias(log_bias, grid, "padded", heads)
  if group_log_bias is not None:
    _validation.check_floating("group_log_bias", group_log_bias)
    if tuple(jnp.shape(group_log_bias)) != (heads, group.order):
      raise ValueError(
          f"`group_log_bias` must have shape [heads, order] ="
          f" {(heads, group.order)} for group {group.name!r}; got"
          f" {tuple(jnp.shape(group_log_bias))}."
      )
  return group, grid


def _turned_table_indices(group, grid) -> np.ndarray:
  """`[order, 2H - 1, 2W - 1]` flat index of g^-1 delta in the offset table."""
  height, width = grid
  rows, cols = np.meshgrid(
      np.arange(1 - height, height), np.arange(1 - width, width), indexing="ij"
  )
  acted = groups_lib.acted_offsets(group, np.stack([rows, cols], axis=-1))
  # Integer matrices at 90-degree steps: the rint only undoes float64 storage.
  acted = np.rint(acted).astype(np.int64) + (height - 1, width - 1)
  return acted[..., 0] * (2 * width - 1) + acted[..., 1]


def turned_log_bias(log_bias: jax.Array, *, group, grid) -> jax.Array:
  """The offset table seen by every output element g: b_S(g^-1 delta).

  An exact gather (the 90-degree elements permute the offsets of a square
  image), so every turned table holds the same values as `log_bias`.

  Args:
    log_bias: `[heads, 2H - 1, 2W - 1]` log-biases b_S, offset delta at index
      delta + (H - 1, W - 1) as in `kattn.positional.toeplitz` "padded" mode.
    group: a `kattn.groups.Group` or name: "z2", "mz2", "p4" or "p4m".
    grid: `(H, W)`, square when the group has rotations.

  Returns:
    `[order, heads, 2H - 1, 2W - 1]`, entry (g, h, delta) = b_S[h, g^-1 delta].

  Examples:
    >>> import jax.numpy as jnp
    >>> b = jnp.arange(9.0).reshape(1, 3, 3)  # offsets (-1..1, -1..1)
    >>> turned_log_bias(b, group="p4", grid=(2, 2))[1, 0]  # np.rot90(b[0])
    Array([[2., 5., 8.],
           [1., 4., 7.],
           [0., 3., 6.]], dtype=float32)
  """
  group = _pixel_group(group)
  _validation.check_min_rank("log_bias", log_bias, 3, "[heads, rows, cols]")
  grid = _check_grid(group, grid, None)
  _check_log_bias(log_bias, grid, "padded", jnp.shape(log_bias)[0])
  return _turned_log_bias(log_bias, group, grid)


def _turned_log_bias(log_bias, group, grid):
  heads = log_bias.shape[0]
  turned = jnp.take(
      log_bias.reshape(heads, -1), _turned_table_indices(group, grid), axis=1
  )
  return jnp.swapaxes(turned, 0, 1)


def _group_mixing(group_log_bias, group) -> jax.Array:
  """`[heads, order g, order m]` c_G(g^-1 m), shifted by each head's max.

  The shift is one factor for every pair, so it cancels in the normaliser.
  """
  peak = jax.lax.stop_gradient(
      jnp.max(group_log_bias, axis=-1, keepdims=True)
  )
  relative = group.product[group.inverse]  # relative[g, m] = g^-1 m
  return jnp.exp(jnp.take(group_log_bias - peak, relative, axis=-1))


def _correlate_and_read(q_values, k_values, rows, log_bias, group_log_bias,
                        group, grid):
  """The FFT path; lifting when `group_log_bias` is None.

  q_values `[*batch, (order,) L, h, m]`, k_values `[*batch, (order,) L, h, m]`,
  rows `[*batch, (order,) L, h, e]` ([v, 1] times each key's weight), all in
  the accumulation dtype. Fields are laid out `[*batch, order, h, m, e, H, W]`,
  image axes last, where XLA's FFT wants them.
  """
  height, width = grid
  image = lambda x: x.reshape(x.shape[:-3] + (height, width) + x.shape[-2:])
  q_values, k_values, rows = map(image, (q_values, k_values, rows))
  field = jnp.einsum("...xyhm,...xyhe->...hmexy", k_values, rows)
  if group_log_bias is None:
    field = field[..., None, :, :, :, :, :]
    read = "...xyhm,...ghmexy->...gxyhe"
  else:
    mixing = _group_mixing(group_log_bias.astype(field.dtype), group)
    field = jnp.einsum("hgn,...nhmexy->...ghmexy", mixing, field)
    read = "...gxyhm,...ghmexy->...gxyhe"
  turned = _turned_log_bias(log_bias.astype(field.dtype), group, grid)
  bias = _circular_bias(
      turned.reshape((-1,) + turned.shape[2:]), grid, "padded"
  )
  bias = bias.reshape(turned.shape[:2] + (1, 1) + bias.shape[-2:])
  correlated = _correlate(field, bias)
  out = _normalise(jnp.einsum(read, q_values, correlated))
  return out.reshape(out.shape[:-4] + (height * width,) + out.shape[-2:])


def _dense_weights(q_values, k_values, log_bias, group_log_bias, group, grid):
  """`[*batch, order, h, L, (order *) L]` explicit weights w(i, g; j(, m)).

  Each head's tables are shifted by their max: one factor for every pair,
  cancelled by the normaliser.
  """
  peak = jax.lax.stop_gradient(
      jnp.max(log_bias, axis=(-2, -1), keepdims=True)
  )
  turned = _turned_log_bias(log_bias - peak, group, grid)
  indices = _table_indices(grid, "padded")
  # spatial[g, h, i, j] = c_S(g^-1 (p_j - p_i))
  spatial = jnp.exp(jnp.take(
      turned.reshape(turned.shape[:2] + (-1,)), indices, axis=-1
  ))
  if group_log_bias is None:
    kernel = jnp.einsum("...ihm,...jhm->...hij", q_values, k_values)
    return kernel[..., None, :, :, :] * spatial
  kernel = jnp.einsum("...gihm,...njhm->...ghinj", q_values, k_values)
  mixing = _group_mixing(group_log_bias, group)  # [h, g, n]
  weights = (
      kernel
      * spatial[:, :, :, None, :]
      * jnp.transpose(mixing, (1, 0, 2))[:, :, None, :, None]
  )
  # Not -1: reshape cannot infer it for a batch of 0.
  return weights.reshape(
      weights.shape[:-2] + (weights.shape[-2] * weights.shape[-1],)
  )


def _dense_and_read(q_values, k_values, rows, log_bias, group_log_bias,
                    group, grid):
  """The explicit-weights path, same sums as `_correlate_and_read`."""
  weights = _dense_weights(
      q_values, k_values, log_bias, group_log_bias, group, grid
  )
  if group_log_bias is not None:
    # Not -1: reshape cannot infer it for a batch of 0.
    rows = rows.reshape(
        rows.shape[:-4] + (rows.shape[-4] * rows.shape[-3],) + rows.shape[-2:]
    )
  out = jnp.einsum("...ghij,...jhe->...gihe", weights, rows)
  return _normalise(out)


def _use_fft(method, grid, num_features, rows, order, lifting) -> bool:
  """Whether the FFT path is cheaper (`method="auto"`) or requested.

  Per batch element and head, the FFT path costs |G| transforms of the key
  field (FFT-RPE's fitted CPU cost model, `toeplitz._fft_cost`); the dense
  path |G| L^2 (m + e) multiply-adds for lifting, |G|^2 L^2 (m + e) for the
  group layer.
  """
  if method not in METHODS:
    raise ValueError(f"`method` must be one of {METHODS}; got {method!r}.")
  if method != "auto":
    return method == "fft"
  length = grid[0] * grid[1]
  dense = length * length * (num_features + rows) * (1 if lifting else order)
  return _fft_cost(grid, "padded", num_features, rows) < dense


def _attend(q, k, v, log_bias, group_log_bias, group, grid, feature_map,
            accum_dtype, method="auto"):
  """Features, FAVOR+ stabilisation, and the FFT path.

  A query's log-scale cancels in its own normaliser and is dropped; key
  log-scales are referred to their max over all keys (every pixel and group
  element) of the batch element and head: a constant of the key set, so it
  cancels too and, being invariant to moving keys around, keeps the layer
  exactly equivariant.
  """
  cast = lambda x: x.astype(accum_dtype)
  q_values, _ = _split(feature_map(cast(q)))
  k_values, k_scale = _split(feature_map(cast(k)))
  key_weights = None
  if k_scale is not None:
    key_axes = (-2,) if group_log_bias is None else (-3, -2)
    peak = jax.lax.stop_gradient(jnp.max(k_scale, axis=key_axes, keepdims=True))
    key_weights = cast(jnp.exp(k_scale - peak))
  rows = _values_and_one(cast(v), key_weights)
  read = (
      _correlate_and_read
      if _use_fft(method, grid, q_values.shape[-1], rows.shape[-1],
                  group.order, group_log_bias is None)
      else _dense_and_read
  )
  out = read(
      cast(q_values), cast(k_values), rows, log_bias, group_log_bias, group,
      grid,
  )
  return out.astype(v.dtype)


def group_lifting_feature_map_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    log_bias: jax.Array,
    *,
    group,
    feature_map: linear.FeatureMap,
    grid,
    method: str = "auto",
    accum_dtype=jnp.float32,
) -> jax.Array:
  """Lifting linear attention: an image in, one output per group element.

  out(i, g) = sum_j c_S(g^-1 (p_j - p_i)) phi(q_i)^T phi(k_j) v_j
  / (same with v_j = 1), c_S = exp(log_bias), by FFT in
  O(|G| L log L m d_v). Turning the input by u gives
  out'(g, p) = out(u^-1 g, u^-1 p). A feature map returning `ScaledFeatures`
  is stabilised exactly (see the module docstring).

  Args:
    q: `[*batch, L, heads, dim]` queries, L = H * W pixels row-major.
    k: `[*batch, L, heads, dim]` keys.
    v: `[*batch, L, heads, v_dim]` values.
    log_bias: `[heads, 2H - 1, 2W - 1]` log-biases b_S over offsets on the
      finite image (`toeplitz.relative_bias_shape(grid, mode="padded")`).
    group: a `kattn.groups.Group` or name: "z2", "mz2", "p4" or "p4m".
    feature_map: `[..., dim] -> [..., m]` array or `ScaledFeatures`.
    grid: `(H, W)`, square when the group has rotations.
    accum_dtype: dtype of features, FFTs, sums and normalisers.
    method: `"fft"` (O(|G| L log L) per channel), `"dense"` (the explicit
      weights, O(|G|^2 L^2) for the group layer, faster on small images)
      or `"auto"` (the cheaper by FFT-RPE's CPU cost model: dense up to
      about 32 x 32 pixels). Both give the same result to float32 rounding.

  Returns:
    `[*batch, order, L, heads, v_dim]` outputs in v's dtype.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from kattn.features.favor import elu_plus_one_features
    >>> x = jax.random.normal(jax.random.key(0), (9, 2, 4))
    >>> group_lifting_feature_map_attention(
    ...     x, x, x, jnp.zeros((2, 5, 5)), group="p4",
    ...     feature_map=elu_plus_one_features, grid=(3, 3)).shape
    (4, 9, 2, 4)

  References:
    Romero & Cordonnier, "Group Equivariant Stand-Alone Self-Attention for
    Vision", ICLR 2021.
  """
  group, grid = _check_inputs(
      q, k, v, log_bias, None, group, grid, ("q", "k"), lifting=True
  )
  return _attend(q, k, v, log_bias, None, group, grid, feature_map,
                 accum_dtype, method)


def group_feature_map_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    log_bias: jax.Array,
    group_log_bias: jax.Array,
    *,
    group,
    feature_map: linear.FeatureMap,
    grid,
    method: str = "auto",
    accum_dtype=jnp.float32,
) -> jax.Array:
  """Group linear attention: every (pixel, element) token sees all others.

  out(i, g) = sum_{j,m} w v_{j,m} / sum_{j,m} w with
  w = phi(q_{i,g})^T phi(k_{j,m}) c_S(g^-1 (p_j - p_i)) c_G(g^-1 m), by FFT in
  O(|G| L log L m d_v + |G|^2 L m d_v). Turning the input F(m, p) into
  F(u^-1 m, u^-1 p) gives out'(g, p) = out(u^-1 g, u^-1 p).

  Args:
    q: `[*batch, order, L, heads, dim]` queries, L = H * W pixels row-major.
    k: `[*batch, order, L, heads, dim]` keys.
    v: `[*batch, order, L, heads, v_dim]` values.
    log_bias: `[heads, 2H - 1, 2W - 1]` spatial log-biases b_S.
    group_log_bias: `[heads, order]` log-biases b_G, indexed by the relative
      element g^-1 m (`group.product[group.inverse[g], m]`).
    group: a `kattn.groups.Group` or name: "z2", "mz2", "p4" or "p4m".
    feature_map: `[..., dim] -> [..., m]` array or `ScaledFeatures`.
    grid: `(H, W)`, square when the group has rotations.
    accum_dtype: dtype of features, FFTs, sums and normalisers.
    method: `"fft"` (O(|G| L log L) per channel), `"dense"` (the explicit
      weights, O(|G|^2 L^2) for the group layer, faster on small images)
      or `"auto"` (the cheaper by FFT-RPE's CPU cost model: dense up to
      about 32 x 32 pixels). Both give the same result to float32 rounding.

  Returns:
    `[*batch, order, L, heads, v_dim]` outputs in v's dtype.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from kattn.features.favor import elu_plus_one_features
    >>> x = jax.random.normal(jax.random.key(0), (8, 4, 2, 3))
    >>> group_feature_map_attention(
    ...     x, x, x, jnp.zeros((2, 3, 3)), jnp.zeros((2, 8)), group="p4m",
    ...     feature_map=elu_plus_one_features, grid=(2, 2)).shape
    (8, 4, 2, 3)

  References:
    Romero & Cordonnier, "Group Equivariant Stand-Alone Self-Attention for
    Vision", ICLR 2021.
  """
  group, grid = _check_inputs(
      q, k, v, log_bias, group_log_bias, group, grid, ("q", "k"),
      lifting=False,
  )
  return _attend(q, k, v, log_bias, group_log_bias, group, grid, feature_map,
                 accum_dtype, method)


def group_lifting_favor_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    log_bias: jax.Array,
    *,
    group,
    projection: jax.Array,
    grid,
    kernel: Literal["positive", "hyperbolic", "trigonometric"] = "positive",
    method: str = "auto",
    accum_dtype=jnp.float32,
) -> jax.Array:
  """FAVOR+ lifting attention: `group_lifting_feature_map_attention` with
  softmax random features.

  Queries and keys are scaled by dim^{-1/4}, so the features estimate
  exp(q^T k / sqrt(dim)), which c_S(g^-1 (p_j - p_i)) then multiplies.

  Args:
    q: `[*batch, L, heads, dim]` queries.
    k: `[*batch, L, heads, dim]` keys.
    v: `[*batch, L, heads, v_dim]` values.
    log_bias: `[heads, 2H - 1, 2W - 1]` log-biases b_S.
    group: a `kattn.groups.Group` or name: "z2", "mz2", "p4" or "p4m".
    projection: `[m, dim]` random projection, e.g. from
      `orthogonal_random_projection(key, m, dim)`; fixed, the layer is
      exactly equivariant.
    grid: `(H, W)`, square when the group has rotations.
    kernel: `"positive"` (FAVOR+), `"hyperbolic"` or `"trigonometric"`.
    accum_dtype: dtype of features, FFTs, sums and normalisers.
    method: `"fft"` (O(|G| L log L) per channel), `"dense"` (the explicit
      weights, O(|G|^2 L^2) for the group layer, faster on small images)
      or `"auto"` (the cheaper by FFT-RPE's CPU cost model: dense up to
      about 32 x 32 pixels). Both give the same result to float32 rounding.

  Returns:
    `[*batch, order, L, heads, v_dim]` outputs in v's dtype.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from kattn.features.random import orthogonal_random_projection
    >>> q = jax.random.normal(jax.random.key(0), (1, 16, 2, 8))
    >>> w = orthogonal_random_projection(jax.random.key(1), 16, 8)
    >>> group_lifting_favor_attention(
    ...     q, q, q, jnp.zeros((2, 7, 7)), group="p4m", projection=w,
    ...     grid=(4, 4)).shape
    (1, 8, 16, 2, 8)

  References:
    Choromanski et al., "Rethinking Attention with Performers", ICLR 2021.
  """
  _check_inputs(q, k, v, log_bias, None, group, grid, ("q", "k"), lifting=True)
  feature_map = linear.favor_feature_map(projection, q.shape[-1], kernel=kernel)
  return group_lifting_feature_map_attention(
      q, k, v, log_bias, group=group, feature_map=feature_map, grid=grid,
      accum_dtype=accum_dtype, method=method,
  )


def group_favor_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    log_bias: jax.Array,
    group_log_bias: jax.Array,
    *,
    group,
    projection: jax.Array,
    grid,
    kernel: Literal["positive", "hyperbolic", "trigonometric"] = "positive",
    method: str = "auto",
    accum_dtype=jnp.float32,
) -> jax.Array:
  """FAVOR+ group attention: `group_feature_map_attention` with softmax
  random features.

  Args:
    q: `[*batch, order, L, heads, dim]` queries.
    k: `[*batch, order, L, heads, dim]` keys.
    v: `[*batch, order, L, heads, v_dim]` values.
    log_bias: `[heads, 2H - 1, 2W - 1]` spatial log-biases b_S.
    group_log_bias: `[heads, order]` log-biases b_G of g^-1 m.
    group: a `kattn.groups.Group` or name: "z2", "mz2", "p4" or "p4m".
    projection: `[m, dim]` random projection; fixed, the layer is exactly
      equivariant.
    grid: `(H, W)`, square when the group has rotations.
    kernel: `"positive"` (FAVOR+), `"hyperbolic"` or `"trigonometric"`.
    accum_dtype: dtype of features, FFTs, sums and normalisers.
    method: `"fft"` (O(|G| L log L) per channel), `"dense"` (the explicit
      weights, O(|G|^2 L^2) for the group layer, faster on small images)
      or `"auto"` (the cheaper by FFT-RPE's CPU cost model: dense up to
      about 32 x 32 pixels). Both give the same result to float32 rounding.

  Returns:
    `[*batch, order, L, heads, v_dim]` outputs in v's dtype.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from kattn.features.random import orthogonal_random_projection
    >>> q = jax.random.normal(jax.random.key(0), (4, 9, 2, 8))
    >>> w = orthogonal_random_projection(jax.random.key(1), 16, 8)
    >>> group_favor_attention(
    ...     q, q, q, jnp.zeros((2, 5, 5)), jnp.zeros((2, 4)), group="p4",
    ...     projection=w, grid=(3, 3)).shape
    (4, 9, 2, 8)

  References:
    Choromanski et al., "Rethinking Attention with Performers", ICLR 2021.
  """
  _check_inputs(q, k, v, log_bias, group_log_bias, group, grid, ("q", "k"),
                lifting=False)
  feature_map = linear.favor_feature_map(projection, q.shape[-1], kernel=kernel)
  return group_feature_map_attention(
      q, k, v, log_bias, group_log_bias, group=group, feature_map=feature_map,
      grid=grid, accum_dtype=accum_dtype, method=method,
  )


def dense_group_kernel_attention(
    q_features: jax.Array,
    k_features: jax.Array,
    v: jax.Array,
    log_bias: jax.Array,
    group_log_bias: jax.Array | None = None,
    *,
    group,
    grid,
) -> jax.Array:
  """The slow truth: the explicit `[|G| L, |G| L]` weights; O((|G| L)^2 m).

  Lifting when `group_log_bias` is None (inputs without a group axis,
  w(i, g; j) = phi(q_i)^T phi(k_j) c_S(g^-1 (p_j - p_i))), the group layer
  otherwise (w(i, g; j, m) = phi(q_{i,g})^T phi(k_{j,m})
  c_S(g^-1 (p_j - p_i)) c_G(g^-1 m)). For tests and benchmarks.

  Args:
    q_features: `[*batch, L, heads, m]` (lifting) or
      `[*batch, order, L, heads, m]` query features.
    k_features: key features, shaped as `q_features`.
    v: `[*batch, (order,) L, heads, v_dim]` values.
    log_bias: `[heads, 2H - 1, 2W - 1]` spatial log-biases b_S.
    group_log_bias: `[heads, order]` log-biases b_G of g^-1 m, or None for
      the lifting layer.
    group: a `kattn.groups.Group` or name: "z2", "mz2", "p4" or "p4m".
    grid: `(H, W)`, square when the group has rotations.

  Returns:
    `[*batch, order, L, heads, v_dim]` outputs.

  Examples:
    >>> import jax.numpy as jnp
    >>> f = jnp.ones((2, 1, 1))  # two pixels in a row, one head
    >>> v = jnp.array([0.0, 1.0]).reshape(2, 1, 1)
    >>> b = jnp.log(jnp.array([[[1.0, 1.0, 3.0]]]))  # offsets -1, 0, +1
    >>> out = dense_group_kernel_attention(f, f, v, b, group="mz2", grid=(1, 2))
    >>> import numpy as np
    >>> np.asarray(out[..., 0, 0]).round(3)  # the mirror sees offset -1 as +1
    array([[0.75, 0.5 ],
           [0.5 , 0.25]], dtype=float32)
  """
  lifting = group_log_bias is None
  group, grid = _check_inputs(
      q_features, k_features, v, log_bias, group_log_bias, group, grid,
      ("q_features", "k_features"), lifting=lifting,
  )
  weights = _dense_weights(
      q_features, k_features, log_bias, group_log_bias, group, grid
  )
  if not lifting:
    # Not -1: reshape cannot infer it for a batch of 0.
    v = v.reshape(v.shape[:-4] + (v.shape[-4] * v.shape[-3],) + v.shape[-2:])
  return reference.weighted_average(weights, v[..., None, :, :, :])
