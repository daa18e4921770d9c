"""Group-equivariant stand-alone self-attention on pixels (GSA-Nets).

Stand-alone self-attention with relative positions scores query pixel i
against key pixel j as q_i . (k_j + r(p_j - p_i)): a function of the offset
only, hence translation equivariant. GSA-Nets make it equivariant to a group
G of rotations and flips by giving every element g its own positional table,
r_g(delta) = rho(g^-1 delta), one output channel per element:

* Lifting (image -> group map): out(g, i) attends with r_g. Turning the input
  by u gives out'(g, p) = out(u^-1 g, u^-1 p), the regular representation.
* Group layer (group map -> group map): queries (i, g) attend jointly over
  key pixels j and key elements m with r_v for output element v plus a
  learned embedding of a relative group element phi(v, g, m), then sum over
  the query element g.

The functions here take the tables r and phi as arrays; `kattn.flax.group`
builds them from an MLP on `kattn.groups.acted_offsets` and
`relative_group_index`.

Keys are gathered per window slot, so local attention over a P x P window
costs O(L P^2) logits per element and never forms `[L, L, dim]` arrays.
Logits and the softmax run in float32 (or wider), and keys outside the image
get a large finite negative logit: the window's centre is always inside, so
no row is empty and nothing can turn NaN.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from kattn import _validation
from kattn import groups as groups_lib
from kattn.positional.grid import check_grid

_LAYOUT = "[*batch, length, heads, dim]"
_GROUP_LAYOUT = "[*batch, order, length, heads, dim]"
# Finite, so that masked keys cannot make inf - inf; halved, so that adding a
# valid logit to it cannot overflow.
_MASKED_LOGIT = float(np.finfo(np.float32).min) / 2


def relative_group_index(group: groups_lib.Group | str) -> np.ndarray:
  """The relative group element g^-1 m of every (v, g, m): a valid phi.

  The group layer adds an embedding of phi(v, g, m) for output element v,
  query element g and key element m. Turning the input by u maps (v, g, m)
  to (uv, ug, um), so the layer is equivariant exactly when

    phi(uv, ug, um) = phi(v, g, m)  for every u, v, g, m.

  g^-1 m satisfies it, since (ug)^-1 (um) = g^-1 m. The GSA-Nets reference
  code uses (m - g + v) mod n on C_n, which changes by u under the same move
  (it depends on v alone, not on v relative to g), so its group layer is not
  equivariant (Xu et al. 2023).

  Args:
    group: a `kattn.groups.Group` or its name.

  Returns:
    `[order, order, order]` int32, indexed (v, g, m); independent of v.

  Examples:
    >>> relative_group_index("p4")[0].tolist()  # (m - g) mod 4, for every v
    [[0, 1, 2, 3], [3, 0, 1, 2], [2, 3, 0, 1], [1, 2, 3, 0]]

  References:
    Romero & Cordonnier, "Group Equivariant Stand-Alone Self-Attention For
    Vision", ICLR 2021.
    Xu et al., "E(2)-Equivariant Vision Transformer", UAI 2023.
  """
  group = groups_lib.as_group(group)
  relative = group.product[group.inverse]  # [g, m] -> g^-1 m
  return np.broadcast_to(relative, (group.order,) * 3).astype(np.int32)


def _check_window(window) -> int | None:
  if window is None:
    return None
  if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or (
      window <= 0 or window % 2 == 0
  ):
    raise ValueError(
        "`window` must be a positive odd int (or None for global attention):"
        " an even window cannot be centred on a pixel, so rotations would not"
        f" map it onto itself; got {window!r}."
    )
  return int(window)


def window_offsets(window: int) -> np.ndarray:
  """`[window, window, 2]` int (row, col) offsets of a window centred on 0.

  Args:
    window: P, a positive odd int; offsets run over -(P // 2) .. P // 2.

  Returns:
    `offsets[a, b] = (a - P // 2, b - P // 2)`.

  Examples:
    >>> window_offsets(3)[0].tolist()
    [[-1, -1], [-1, 0], [-1, 1]]
  """
  window = _check_window(window)
  if window is None:
    raise ValueError("`window` must be a positive odd int; got None.")
  half = window // 2
  return np.stack(np.meshgrid(
      np.arange(-half, half + 1), np.arange(-half, half + 1), indexing="ij"
  ), axis=-1)


def _table_shape(grid, window) -> tuple[int, int]:
  """Spatial shape of a relative-key table: the window, or every offset."""
  height, width = grid
  return (window, window) if window else (2 * height - 1, 2 * width - 1)


class _Neighbourhood(NamedTuple):
  """Which keys each query sees: K slots per query, static.

  Local: slot s of query i is the pixel p_i + offset s (`keys` [L, K], its
  token, set to i itself where `valid` [L, K] is False, outside the image);
  the table row is s. Global: slot j is token j (`keys` None) and its table
  row is `offsets[i, j]` [L, L], the index of p_j - p_i.
  """

  keys: np.ndarray | None
  valid: np.ndarray | None
  offsets: np.ndarray | None


def _neighbourhood(grid, window) -> _Neighbourhood:
  height, width = grid
  positions = np.indices((height, width)).reshape(2, -1).T  # [L, 2]
  if window is None:
    delta = positions[None, :] - positions[:, None]  # p_j - p_i
    offsets = (delta[..., 0] + height - 1) * (2 * width - 1) + (
        delta[..., 1] + width - 1
    )
    return _Neighbourhood(None, None, offsets.astype(np.int32))
  pixels = positions[:, None] + window_offsets(window).reshape(1, -1, 2)
  valid = np.all((pixels >= 0) & (pixels < (height, width)), axis=-1)
  tokens = pixels[..., 0] * width + pixels[..., 1]
  own = np.arange(height * width)[:, None]
  return _Neighbourhood(
      np.where(valid, tokens, own).astype(np.int32), valid, None
  )


def _check_scale(scale, dim: int) -> float:
  if scale is None:
    return dim ** -0.5
  if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (
      np.isfinite(scale) and scale > 0
  ):
    raise ValueError(f"`scale` must be a positive finite float; got {scale!r}.")
  return float(scale)


def _check_relative_keys(relative_keys, grid, window, heads, dim) -> int:
  """Returns the order |G| of `[order, *table, heads, dim]` relative keys."""
  _validation.check_floating("relative_keys", relative_keys)
  shape = tuple(jnp.shape(relative_keys))
  table = _table_shape(grid, window)
  what = (
      f"(window, window) = {table} for window={window}" if window
      else f"(2H - 1, 2W - 1) = {table} for global attention on grid {grid}"
  )
  if len(shape) != 5 or shape[0] < 1 or shape[1:] != table + (heads, dim):
    raise ValueError(
        "`relative_keys` must be [order, *table, heads, dim] with table"
        f" {what}, heads={heads}, dim={dim}; got shape {shape}."
    )
  return shape[0]


def _accum_dtype(*xs):
  return jnp.promote_types(jnp.result_type(*xs), jnp.float32)


def _gather_keys(x, hood: _Neighbourhood, token_axis: int):
  """`[..., L, ...]` -> `[..., L, K, ...]`: the keys of every query's slots."""
  return jnp.take(x, hood.keys, axis=token_axis)


def _position_table(table, hood: _Neighbourhood):
  """`[..., L, O]` scores per table row -> `[..., L, K]` per slot."""
  if hood.offsets is None:
    return table
  queries = np.arange(hood.offsets.shape[0])[:, None]
  return table[..., queries, hood.offsets]


def _masked_softmax(logits, hood: _Neighbourhood, num_key_axes: int):
  """Softmax of `[..., L, *key_axes]` logits jointly over the key axes.

  The first key axis holds the K slots; slots outside the image get
  `_MASKED_LOGIT`. The key axes are flattened into one trailing axis:
  XLA:CPU (jaxlib 0.10.2) crashes at run time on a softmax over several
  non-trailing axes whose result feeds a dot.
  """
  if hood.valid is not None:
    valid = hood.valid.reshape(hood.valid.shape + (1,) * (num_key_axes - 1))
    logits = jnp.where(valid, logits, _MASKED_LOGIT)
  # Sizes spelled out: reshape cannot infer a -1 when a batch of 0 empties
  # the array.
  lead = logits.ndim - num_key_axes
  flat = logits.reshape(
      logits.shape[:lead] + (math.prod(logits.shape[lead:]),)
  )
  return jax.nn.softmax(flat, axis=-1).reshape(logits.shape)


def lifting_self_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    relative_keys: jax.Array,
    *,
    grid,
    window: int | None,
    scale: float | None = None,
) -> jax.Array:
  """Lifting self-attention: one relative-position attention per group element.

  out[..., g, i] = sum_j softmax_j(scale q_i . (k_j + relative_keys[g,
  p_j - p_i])) v_j, over the keys j inside the image and, for local
  attention, inside the `window` x `window` square centred on i. With
  relative_keys[g, delta] = rho(g^-1 delta) the output is a group feature
  map in the regular representation.

  Args:
    q: `[*batch, L, heads, dim]` queries of the row-major pixels of `grid`.
    k: `[*batch, L, heads, dim]` keys.
    v: `[*batch, L, heads, v_dim]` values.
    relative_keys: `[order, P, P, heads, dim]` for a local window P, with
      offset delta at index delta + (P // 2, P // 2); or, for
      `window=None`, `[order, 2H - 1, 2W - 1, heads, dim]` with delta at
      delta + (H - 1, W - 1).
    grid: `(H, W)` with H * W = L.
    window: P, a positive odd int (larger than the image is fine), or None
      for global attention.
    scale: logit scale; defaults to 1 / sqrt(dim).

  Returns:
    `[*batch, order, L, heads, v_dim]` in the dtype of `v`.

  Examples:
    >>> import jax.numpy as jnp
    >>> q = k = v = jnp.ones((1, 9, 2, 4))  # a 3 x 3 image, 2 heads
    >>> relative_keys = jnp.zeros((4, 3, 3, 2, 4))  # 4 elements, 3 x 3 window
    >>> lifting_self_attention(q, k, v, relative_keys, grid=(3, 3),
    ...                        window=3).shape
    (1, 4, 9, 2, 4)

  References:
    Romero & Cordonnier, "Group Equivariant Stand-Alone Self-Attention For
    Vision", ICLR 2021.
    Ramachandran et al., "Stand-Alone Self-Attention in Vision Models",
    NeurIPS 2019.
  """
  _validation.check_attention_inputs(q, k, v)
  _validation.check_same(
      "Query and key lengths (axis -3)", ("q", "k"), (q.shape[-3], k.shape[-3])
  )
  grid = check_grid(grid, q.shape[-3])
  window = _check_window(window)
  heads, dim = q.shape[-2:]
  _check_relative_keys(relative_keys, grid, window, heads, dim)
  scale = _check_scale(scale, dim)
  accum = _accum_dtype(q, k, relative_keys)
  hood = _neighbourhood(grid, window)

  q = q.astype(accum) * scale
  k = k.astype(accum)
  relative_keys = relative_keys.reshape(
      relative_keys.shape[0], -1, heads, dim
  ).astype(accum)
  if window is None:
    content = jnp.einsum("...ihd,...khd->...hik", q, k)
  else:
    content = jnp.einsum("...ihd,...ikhd->...hik", q, _gather_keys(k, hood, -3))
  position = _position_table(
      jnp.einsum("...ihd,gohd->...ghio", q, relative_keys), hood
  )
  # [*batch, g, heads, L, K]
  weights = _masked_softmax(content[..., None, :, :, :] + position, hood, 1)
  if window is None:
    out = jnp.einsum("...ghik,...khe->...gihe", weights, v.astype(accum))
  else:
    out = jnp.einsum(
        "...ghik,...ikhe->...gihe", weights,
        _gather_keys(v, hood, -3).astype(accum),
    )
  return out.astype(v.dtype)


def _check_group_index(group_index, order: int, num_offsets: int) -> np.ndarray:
  try:
    index = np.asarray(group_index)
  except (
      jax.errors.TracerArrayConversionError,
      jax.errors.ConcretizationTypeError,
  ):
    raise ValueError(
        "`group_index` must be a concrete integer array (a static table such"
        " as `relative_group_index(group)`); got a traced value."
    ) from None
  if not np.issubdtype(index.dtype, np.integer):
    raise ValueError(
        f"`group_index` must have an integer dtype; got {index.dtype}."
    )
  if index.shape != (order,) * 3:
    raise ValueError(
        f"`group_index` must be [order, order, order] = {(order,) * 3}"
        f" (v, g, m) for the {order} group elements of `q` (axis -4); got"
        f" shape {index.shape}."
    )
  if index.size and (index.min() < 0 or index.max() >= num_offsets):
    raise ValueError(
        f"`group_index` entries must index the {num_offsets} rows of"
        f" `group_keys`; got values in [{index.min()}, {index.max()}]."
    )
  return index


def group_self_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    relative_keys: jax.Array,
    group_keys: jax.Array,
    group_index,
    *,
    grid,
    window: int | None,
    scale: float | None = None,
) -> jax.Array:
  """Group self-attention: group feature map in, group feature map out.

  For output element v, query pixel i and query element g, the softmax runs
  jointly over key pixels j (inside the image and the window) and key
  elements m; the results are summed over g:

    out[..., v, i] = sum_g sum_{j, m} softmax_{(j, m)}(scale q_{i,g} .
        (k_{j,m} + relative_keys[v, p_j - p_i]
         + group_keys[group_index[v, g, m]])) v_{j,m}.

  It is equivariant (regular representation in and out) when
  relative_keys[v, delta] = rho(v^-1 delta) and group_index satisfies
  phi(uv, ug, um) = phi(v, g, m), as `relative_group_index` does.

  Args:
    q: `[*batch, order, L, heads, dim]` queries (group axis before pixels).
    k: `[*batch, order, L, heads, dim]` keys.
    v: `[*batch, order, L, heads, v_dim]` values.
    relative_keys: `[order, P, P, heads, dim]` indexed by output element
      and offset, or `[order, 2H - 1, 2W - 1, heads, dim]` for
      `window=None` (see `lifting_self_attention`).
    group_keys: `[num_offsets, heads, dim]` group-offset embeddings.
    group_index: concrete int `[order, order, order]`, (v, g, m) -> a row of
      `group_keys`.
    grid: `(H, W)` with H * W = L.
    window: P, a positive odd int, or None for global attention.
    scale: logit scale; defaults to 1 / sqrt(dim).

  Returns:
    `[*batch, order, L, heads, v_dim]` in the dtype of `v`.

  Examples:
    >>> import jax.numpy as jnp
    >>> x = jnp.ones((4, 9, 1, 3))  # p4 map on a 3 x 3 image, 1 head
    >>> out = group_self_attention(
    ...     x, x, x, jnp.zeros((4, 3, 3, 1, 3)), jnp.zeros((4, 1, 3)),
    ...     relative_group_index("p4"), grid=(3, 3), window=3)
    >>> out.shape, float(out[0, 0, 0, 0])  # a sum over the 4 query elements
    ((4, 9, 1, 3), 4.0)

  References:
    Romero & Cordonnier, "Group Equivariant Stand-Alone Self-Attention For
    Vision", ICLR 2021.
    Xu et al., "E(2)-Equivariant Vision Transformer", UAI 2023 (the
    reference code's group index is not equivariant).
  """
  for name, x in (("q", q), ("k", k), ("v", v)):
    _validation.check_min_rank(name, x, 4, _GROUP_LAYOUT)
  _validation.check_attention_inputs(q, k, v)
  _validation.check_same(
      "Query and key lengths (axis -3)", ("q", "k"), (q.shape[-3], k.shape[-3])
  )
  grid = check_grid(grid, q.shape[-3])
  window = _check_window(window)
  order, _, heads, dim = q.shape[-4:]
  _validation.check_same(
      "Group orders", ("q (axis -4)", "relative_keys (axis 0)"),
      (order, _check_relative_keys(relative_keys, grid, window, heads, dim)),
  )
  _validation.check_floating("group_keys", group_keys)
  if jnp.ndim(group_keys) != 3 or tuple(jnp.shape(group_keys)[1:]) != (
      heads, dim
  ):
    raise ValueError(
        f"`group_keys` must be [num_offsets, heads, dim] with heads={heads},"
        f" dim={dim}; got shape {tuple(jnp.shape(group_keys))}."
    )
  group_index = _check_group_index(group_index, order, group_keys.shape[0])
  scale = _check_scale(scale, dim)
  accum = _accum_dtype(q, k, relative_keys, group_keys)
  hood = _neighbourhood(grid, window)

  q = q.astype(accum) * scale
  k = k.astype(accum)
  relative_keys = relative_keys.reshape(order, -1, heads, dim).astype(accum)
  if window is None:
    content = jnp.einsum("...gihd,...mkhd->...ghikm", q, k)
  else:
    content = jnp.einsum(
        "...gihd,...mikhd->...ghikm", q, _gather_keys(k, hood, -3)
    )
  position = _position_table(
      jnp.einsum("...gihd,vohd->...vghio", q, relative_keys), hood
  )
  # Scores of every query against every group key, then looked up per
  # (v, g, m): [*batch, g, n, h, L] -> [*batch, v, g, h, L, m].
  group_table = jnp.einsum("...gihd,nhd->...gnhi", q, group_keys.astype(accum))
  query_elements = np.arange(order)[None, :, None]
  group_scores = jnp.moveaxis(
      group_table[..., query_elements, group_index, :, :], -3, -1
  )
  logits = (
      content[..., None, :, :, :, :, :]  # [*batch, 1, g, h, L, K, m]
      + position[..., None]  # [*batch, v, g, h, L, K, 1]
      + group_scores[..., None, :]  # [*batch, v, g, h, L, 1, m]
  )
  weights = _masked_softmax(logits, hood, 2)
  if window is None:
    out = jnp.einsum("...vghikm,...mkhe->...vihe", weights, v.astype(accum))
  else:
    out = jnp.einsum(
        "...vghikm,...mikhe->...vihe", weights,
        _gather_keys(v, hood, -3).astype(accum),
    )
  return out.astype(v.dtype)
