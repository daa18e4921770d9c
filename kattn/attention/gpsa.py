r"""Gated positional self-attention (ConViT) and its linear-cost form.

Patch tokens sit on a row-major `grid = (height, width)`. Per head h, a gate
lambda_h mixes a content softmax with a positional softmax over the relative
encodings r_ij = (dcol, drow, dcol^2 + drow^2) of key j seen from query i:

  A^h_ij = (1 - sigma(lambda_h)) softmax_j(q_i^h . k_j^h / sqrt(d))
           + sigma(lambda_h) softmax_j(w_h . r_ij).

Both terms are row-stochastic, so the reference's renormalisation
A / sum_j A changes nothing but rounding; it is kept in the quadratic form.

The positional logit w_0 dcol + w_1 drow + w_2 (dcol^2 + drow^2) is a sum of
a column part and a row part, so the positional softmax factorises exactly
into a `[height, height]` row softmax times a `[width, width]` column softmax.
`linear_gated_positional_self_attention` applies it in that separable form
(O(L (height + width) d) per head, stable for any locality strength) or by
FFT (O(L log L d)), and the content term with kernel features (FAVOR+), so
nothing of size L x L is ever formed.

Locality initialisation: with k = sqrt(heads), head h = h1 + k h2 gets the
centre Delta_h = (h2 - c, h1 - c) (columns, rows), c the middle of 0..k-1,
and w_h = alpha (2 Delta_col, 2 Delta_row, -1): the positional logit is then
-alpha ||delta - Delta_h||^2 + const, a bump at offset Delta_h whose width
shrinks as alpha grows. Nine heads at large alpha are a 3 x 3 convolution.

References:
  d'Ascoli et al., "ConViT: Improving Vision Transformers with Soft
  Convolutional Inductive Biases", ICML 2021.
"""

from __future__ import annotations

import math
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from kattn import _validation
from kattn.attention import linear
from kattn.attention import reference
from kattn.positional import grid as grid_lib
from kattn.positional import toeplitz

POSITIONAL_METHODS = ("separable", "fft")


def relative_position_encodings(grid) -> np.ndarray:
  """r_ij = (dcol, drow, dcol^2 + drow^2) of key j from query i.

  Args:
    grid: `(height, width)` of the row-major token grid.

  Returns:
    `[L, L, 3]` float32, L = height * width, offsets key minus query.

  Examples:
    >>> r = relative_position_encodings((2, 2))
    >>> r[0, 3].tolist()  # from (0, 0) to (1, 1)
    [1.0, 1.0, 2.0]
  """
  height, width = grid_lib.check_grid(grid)
  rows, cols = np.divmod(np.arange(height * width), width)
  drow = rows[None, :] - rows[:, None]
  dcol = cols[None, :] - cols[:, None]
  return np.stack([dcol, drow, dcol**2 + drow**2], axis=-1).astype(np.float32)


def _locality_grid_side(num_heads) -> int:
  _validation.check_positive_int("num_heads", num_heads)
  side = math.isqrt(num_heads)
  if side * side != num_heads:
    raise ValueError(
        "Locality initialisation puts the heads on a k x k grid of offsets,"
        f" so `num_heads` must be a perfect square (1, 4, 9, 16, ...); got"
        f" num_heads={num_heads}."
    )
  return side


def locality_centres(num_heads: int) -> np.ndarray:
  """`[heads, 2]` attention centres (Delta_row, Delta_col) of the locality init.

  Head h = h1 + k h2 of k^2 heads looks at (h1 - c, h2 - c) rows and columns
  away, c = (k - 1) / 2: integers for odd k, half-integers for even k.

  Args:
    num_heads: a perfect square.

  Examples:
    >>> locality_centres(4).tolist()
    [[-0.5, -0.5], [0.5, -0.5], [-0.5, 0.5], [0.5, 0.5]]
  """
  side = _locality_grid_side(num_heads)
  centre = (side - 1) / 2
  h2, h1 = np.divmod(np.arange(num_heads), side)
  return np.stack([h1 - centre, h2 - centre], axis=-1).astype(np.float32)


def locality_position_weights(
    num_heads: int, *, locality_strength: float = 1.0
) -> np.ndarray:
  """`[heads, 3]` positional weights w_h = alpha (2 Delta_col, 2 Delta_row, -1).

  Args:
    num_heads: a perfect square k^2; the heads tile a k x k grid of offsets.
    locality_strength: alpha > 0; the positional softmax of a head is
      proportional to exp(-alpha ||delta - Delta_h||^2).

  Examples:
    >>> locality_position_weights(1, locality_strength=2.0).tolist()
    [[0.0, 0.0, -2.0]]
  """
  if not (isinstance(locality_strength, (int, float))
          and not isinstance(locality_strength, bool)
          and locality_strength > 0 and math.isfinite(locality_strength)):
    raise ValueError(
        "`locality_strength` must be a positive finite number; got"
        f" {locality_strength!r}."
    )
  rows, cols = locality_centres(num_heads).T
  weights = np.stack([2 * cols, 2 * rows, -np.ones_like(rows)], axis=-1)
  return (locality_strength * weights).astype(np.float32)


def _check_position_weights(position_weights, heads: int) -> None:
  if jnp.shape(position_weights) != (heads, 3):
    raise ValueError(
        f"`position_weights` must have shape [heads, 3] = [{heads}, 3];"
        f" got {tuple(jnp.shape(position_weights))}."
    )


def _check_gate(gate_logits, heads: int) -> None:
  if jnp.shape(gate_logits) != (heads,):
    raise ValueError(
        f"`gate_logits` must have shape [heads] = [{heads}]; got"
        f" {tuple(jnp.shape(gate_logits))}."
    )


def _axis_softmax(linear_weight, square_weight, size: int, dtype):
  """`[heads, size, size]` softmax_j(a (j - i) + c (j - i)^2) along one axis."""
  offsets = jnp.arange(size, dtype=dtype)
  delta = offsets[None, :] - offsets[:, None]
  logits = (linear_weight[:, None, None] * delta
            + square_weight[:, None, None] * delta**2)
  return jax.nn.softmax(logits, axis=-1)


def positional_attention_weights(
    position_weights: jax.Array, *, grid, dtype=jnp.float32
) -> jax.Array:
  """`[heads, L, L]` softmax_j(w_h . r_ij): the content-free positional term.

  Formed as the outer product of its exact row and column factors, so every
  row sums to 1 and no logit is ever exponentiated unshifted.

  Args:
    position_weights: `[heads, 3]` weights of (dcol, drow, dcol^2 + drow^2).
    grid: `(height, width)`.
    dtype: dtype of the result.

  Returns:
    `[heads, L, L]` row-stochastic weights, Toeplitz in each grid axis.

  Examples:
    >>> import jax.numpy as jnp
    >>> w = positional_attention_weights(jnp.zeros((1, 3)), grid=(2, 3))
    >>> float(w[0, 0, 0])  # zero weights: uniform over 6 tokens
    0.16666...
  """
  height, width = grid_lib.check_grid(grid)
  _validation.check_min_rank("position_weights", position_weights, 2,
                             "[heads, 3]")
  _check_position_weights(position_weights, jnp.shape(position_weights)[0])
  w = jnp.asarray(position_weights, dtype)
  rows = _axis_softmax(w[:, 1], w[:, 2], height, dtype)
  cols = _axis_softmax(w[:, 0], w[:, 2], width, dtype)
  weights = jnp.einsum("hyY,hxX->hyxYX", rows, cols)
  return weights.reshape(-1, height * width, height * width)


def _gate(gate_logits, dtype):
  return jax.nn.sigmoid(jnp.asarray(gate_logits, dtype))[:, None, None]


def _check_inputs(q, k, v, position_weights, gate_logits, grid):
  _validation.check_attention_inputs(q, k, v)
  heads = q.shape[-2]
  _check_position_weights(position_weights, heads)
  _check_gate(gate_logits, heads)
  _validation.check_same(
      "Query and key lengths (axis -3)", ("q", "k"), (q.shape[-3], k.shape[-3])
  )
  return grid_lib.check_grid(grid, q.shape[-3])


def _content_weights(q, k, scale, feature_map, dtype):
  """`[*batch, heads, L, L]` row-stochastic content attention."""
  if feature_map is None:
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    logits = jnp.einsum("...qhd,...khd->...hqk", q, k).astype(dtype) * scale
    return jax.nn.softmax(logits, axis=-1)
  split = linear._split  # pylint: disable=protected-access
  q_values, _ = split(feature_map(q.astype(dtype)))
  k_values, k_scale = split(feature_map(k.astype(dtype)))
  kernel = jnp.einsum("...qhm,...khm->...hqk", q_values, k_values)
  if k_scale is not None:
    # A query's own log-scale cancels in its normaliser; keys are referred to
    # their max, as `feature_map_attention` does.
    k_scale = k_scale - jnp.max(k_scale, axis=-2, keepdims=True)
    kernel = kernel * jnp.exp(jnp.swapaxes(k_scale, -1, -2))[..., None, :]
  return kernel / jnp.sum(kernel, axis=-1, keepdims=True)


def gpsa_attention_weights(
    q: jax.Array,
    k: jax.Array,
    position_weights: jax.Array,
    gate_logits: jax.Array,
    *,
    grid,
    scale: float | None = None,
    feature_map: linear.FeatureMap | None = None,
    accum_dtype=jnp.float32,
) -> jax.Array:
  """The explicit `[*batch, heads, L, L]` GPSA attention matrix.

  Args:
    q: `[*batch, L, heads, dim]` queries of the patch tokens.
    k: `[*batch, L, heads, dim]` keys.
    position_weights: `[heads, 3]` positional weights w_h.
    gate_logits: `[heads]` gate parameters lambda_h; sigma(lambda_h) is the
      weight of the positional term.
    grid: `(height, width)`, height * width = L.
    scale: logit scale of the content softmax; default dim^{-1/2}.
    feature_map: None for the content softmax, or a kernel feature map
      `[..., dim] -> [..., m]` (array or `ScaledFeatures`, e.g.
      `favor_feature_map`): the content term is then the normalised kernel
      phi(q_i) . phi(k_j), the quadratic truth of the linear form.
    accum_dtype: dtype of the logits, softmaxes and the result.

  Returns:
    `[*batch, heads, L, L]` weights; every row sums to 1.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> q = jax.random.normal(jax.random.key(0), (9, 4, 8))
    >>> w = locality_position_weights(4)
    >>> a = gpsa_attention_weights(q, q, w, jnp.ones(4), grid=(3, 3))
    >>> a.shape, bool(jnp.allclose(a.sum(-1), 1.0))
    ((4, 9, 9), True)
  """
  _check_inputs(q, k, k, position_weights, gate_logits, grid)
  content = _content_weights(q, k, scale, feature_map, accum_dtype)
  positional = positional_attention_weights(
      position_weights, grid=grid, dtype=accum_dtype
  )
  gate = _gate(gate_logits, accum_dtype)
  weights = (1 - gate) * content + gate * positional
  return weights / jnp.sum(weights, axis=-1, keepdims=True)


def gated_positional_self_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    position_weights: jax.Array,
    gate_logits: jax.Array,
    *,
    grid,
    scale: float | None = None,
    accum_dtype=jnp.float32,
) -> jax.Array:
  """GPSA (quadratic): the gated mix of content and positional softmaxes.

  Args:
    q: `[*batch, L, heads, dim]` queries of the patch tokens, row-major on
      `grid`.
    k: `[*batch, L, heads, dim]` keys.
    v: `[*batch, L, heads, v_dim]` values.
    position_weights: `[heads, 3]` weights of r_ij = (dcol, drow,
      dcol^2 + drow^2), e.g. `locality_position_weights(heads)`.
    gate_logits: `[heads]` gates lambda_h.
    grid: `(height, width)`, height * width = L.
    scale: content logit scale; default dim^{-1/2}.
    accum_dtype: dtype of the attention weights and sums.

  Returns:
    `[*batch, L, heads, v_dim]` outputs in v's dtype.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> x = jax.random.normal(jax.random.key(0), (2, 16, 9, 8))
    >>> w = locality_position_weights(9, locality_strength=30.0)
    >>> y = gated_positional_self_attention(
    ...     x, x, x, w, jnp.full(9, 30.0), grid=(4, 4))
    >>> # Head 4 looks at offset (0, 0): it copies its own token.
    >>> bool(jnp.allclose(y[:, :, 4], x[:, :, 4], atol=1e-5))
    True

  References:
    d'Ascoli et al., "ConViT", ICML 2021, eq. (5).
  """
  weights = gpsa_attention_weights(
      q, k, position_weights, gate_logits, grid=grid, scale=scale,
      accum_dtype=accum_dtype,
  )
  return reference.weighted_average(weights, v.astype(accum_dtype)).astype(
      v.dtype
  )


def _check_positional_method(method) -> None:
  if method not in POSITIONAL_METHODS:
    raise ValueError(
        f"`positional_method` must be one of {POSITIONAL_METHODS}; got"
        f" {method!r}."
    )


def _separable_positional_attention(v, position_weights, grid):
  height, width = grid
  rows = _axis_softmax(position_weights[:, 1], position_weights[:, 2], height,
                       v.dtype)
  cols = _axis_softmax(position_weights[:, 0], position_weights[:, 2], width,
                       v.dtype)
  image = v.reshape(v.shape[:-3] + (height, width) + v.shape[-2:])
  out = jnp.einsum("hyY,hxX,...YXhd->...yxhd", rows, cols, image)
  return out.reshape(v.shape)


def positional_log_bias_table(position_weights: jax.Array, *, grid) -> jax.Array:
  """`[heads, 2 height - 1, 2 width - 1]` table of w_h . r(delta).

  The log-bias of `kattn.positional.toeplitz` in `"padded"` mode: offset
  delta = (drow, dcol) sits at index delta + (height - 1, width - 1).

  Examples:
    >>> import jax.numpy as jnp
    >>> positional_log_bias_table(jnp.array([[0.0, 0.0, -1.0]]),
    ...                           grid=(2, 2))[0].tolist()
    [[-2.0, -1.0, -2.0], [-1.0, 0.0, -1.0], [-2.0, -1.0, -2.0]]
  """
  height, width = grid_lib.check_grid(grid)
  _check_position_weights(position_weights, jnp.shape(position_weights)[0])
  drow = jnp.arange(1 - height, height, dtype=jnp.float32)[:, None]
  dcol = jnp.arange(1 - width, width, dtype=jnp.float32)[None, :]
  w = jnp.asarray(position_weights, jnp.float32)[:, :, None, None]
  return w[:, 0] * dcol + w[:, 1] * drow + w[:, 2] * (dcol**2 + drow**2)


def linear_gated_positional_self_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    position_weights: jax.Array,
    gate_logits: jax.Array,
    *,
    feature_map: linear.FeatureMap,
    grid,
    positional_method: Literal["separable", "fft"] = "separable",
    accum_dtype=jnp.float32,
) -> jax.Array:
  """GPSA in linear cost: kernel content term plus exact positional term.

  out_i = (1 - sigma(lambda)) sum_j phi(q_i).phi(k_j) v_j / sum_j phi(q_i).phi(k_j)
          + sigma(lambda) sum_j softmax_j(w . r_ij) v_j,

  which equals `gpsa_attention_weights(..., feature_map=feature_map)` applied
  to v, without any `[L, L]` matrix.

  Args:
    q: `[*batch, L, heads, dim]` queries, row-major on `grid`.
    k: `[*batch, L, heads, dim]` keys.
    v: `[*batch, L, heads, v_dim]` values.
    position_weights: `[heads, 3]` positional weights.
    gate_logits: `[heads]` gates lambda_h.
    feature_map: `[..., dim] -> [..., m]` kernel features (array or
      `ScaledFeatures`), e.g. `kattn.attention.favor_feature_map(w, dim)`
      whose products estimate exp(q.k / sqrt(dim)).
    grid: `(height, width)`, height * width = L.
    positional_method: `"separable"` (default: the exact row and column
      softmaxes applied in turn, O(L (height + width) v_dim) per head, exact
      for any locality strength) or `"fft"` (the Toeplitz bias by FFT,
      `kattn.positional.toeplitz`, O(L log L v_dim); it rounds relative to
      each head's largest weight, so strongly local heads lose accuracy on
      tokens far from their bump).
    accum_dtype: dtype of features, sums and normalisers.

  Returns:
    `[*batch, L, heads, v_dim]` outputs in v's dtype.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from kattn.attention import favor_feature_map
    >>> from kattn.features import orthogonal_random_projection
    >>> x = 0.5 * jax.random.normal(jax.random.key(0), (64, 4, 8))
    >>> phi = favor_feature_map(
    ...     orthogonal_random_projection(jax.random.key(1), 32, 8), 8)
    >>> y = linear_gated_positional_self_attention(
    ...     x, x, x, locality_position_weights(4), jnp.ones(4),
    ...     feature_map=phi, grid=(8, 8))
    >>> y.shape
    (64, 4, 8)
  """
  grid = _check_inputs(q, k, v, position_weights, gate_logits, grid)
  _check_positional_method(positional_method)
  content = linear.feature_map_attention(
      q, k, v, feature_map=feature_map, accum_dtype=accum_dtype
  ).astype(accum_dtype)
  values = v.astype(accum_dtype)
  weights = jnp.asarray(position_weights, accum_dtype)
  if positional_method == "separable":
    positional = _separable_positional_attention(values, weights, grid)
  else:
    ones = jnp.ones(values.shape[:-1] + (1,), accum_dtype)
    positional = toeplitz.toeplitz_2d_linear_attention(
        ones, ones, values, positional_log_bias_table(weights, grid=grid),
        grid=grid, mode="padded", method="fft", accum_dtype=accum_dtype,
    ).astype(accum_dtype)
  gate = jax.nn.sigmoid(jnp.asarray(gate_logits, accum_dtype))[:, None]
  return ((1 - gate) * content + gate * positional).astype(v.dtype)


def nonlocality(weights: jax.Array, *, grid) -> jax.Array:
  """ConViT's nonlocality: attention-weighted mean distance, per head.

  D^h = (1 / L) sum_{i,j} A^h_ij ||p_j - p_i||, distances in tokens; the
  reference averages it over a batch of images.

  Args:
    weights: `[*batch, heads, L, L]` attention between the patch tokens of a
      row-major `grid` (drop class-token rows and columns first).
    grid: `(height, width)`, height * width = L.

  Returns:
    `[*batch, heads]` mean attention distances.

  Examples:
    >>> import jax.numpy as jnp
    >>> # Every token attends to its right neighbour (the last to itself).
    >>> a = jnp.eye(3, k=1).at[2, 2].set(1.0)[None]
    >>> nonlocality(a, grid=(1, 3)).tolist()
    [0.666...]
  """
  _validation.check_min_rank("weights", weights, 3, "[*batch, heads, L, L]")
  length = jnp.shape(weights)[-1]
  if jnp.shape(weights)[-2] != length:
    raise ValueError(
        "`weights` must be square over its last two axes [L, L]; got shape"
        f" {tuple(jnp.shape(weights))}."
    )
  grid_lib.check_grid(grid, length)
  distance = np.sqrt(relative_position_encodings(grid)[..., 2])
  return jnp.einsum("...qk,qk->...", weights, distance) / length

