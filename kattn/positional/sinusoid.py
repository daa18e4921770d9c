"""Relative positions through constrained sinusoid projections (2-D).

Strategy 1 of Horn et al. (2021). Each token at (row, col) gets a sinusoid
code p in R^{2 (S_row + S_col)}: for every frequency w a pair
[sin(w x), cos(w x)] of its row x, then the same for its column. Queries and
keys are widened per head to

  q_i = [q_content_i ; R p_i],    k_j = [k_content_j ; p_j],

where R is block diagonal with one 2 x 2 block M = [[a, b], [-b, a]] per
(sin, cos) pair, acting on the row vector: the rotated pair is
[sin, cos] M = [a sin - b cos, b sin + a cos]. One block then contributes

  [sin w x_i, cos w x_i] M [sin w x_j, cos w x_j]^T
      = a cos(w (x_i - x_j)) + b sin(w (x_i - x_j)),

so the position term (R p_i)^T p_j depends on positions only through
x_i - x_j: with a = r cos(phi), b = r sin(phi) it is r cos(w delta - phi), a
learned bump of relative position. Any attention applied to the widened q, k
then sees relative positions only:

* exact softmax attention is equivariant to translations of the positions,
  and to circular shifts of an N-periodic grid when every frequency is a
  multiple of 2 pi / N (`circular_frequencies`);
* FAVOR+ under one fixed projection Omega is not: translating by t rotates
  the positional coordinates of every q and k by the same orthogonal Q(t)
  (the blocks M commute with 2-D rotations), which is the same as using the
  projection Omega Q(t). Gaussian and orthogonal (Haar, chi row norms)
  projections are invariant in distribution under that rotation, so FAVOR+
  is translation equivariant in distribution over Omega, not draw by draw.

A token with a zero code (a CLS token, see `prepend_zero_code`) has R p = 0
and a zero key position, so it has no position term with anyone.
"""

from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp

from kattn import _validation


def geometric_frequencies(
    num_scales: int, max_period: float = 64.0
) -> jax.Array:
  """`[S]` frequencies w_s = max_period ** (-s / S), s = 0, ..., S - 1.

  The reference initialisation (`max_period = 2 * 32`): frequencies from 1
  down to nearly 1 / max_period, geometrically spaced. They are not periodic
  on a finite grid, so circular shifts are not exact symmetries; translations
  of the positions still are.

  Args:
    num_scales: S, the number of frequencies.
    max_period: T > 0, the base of the geometric progression.

  Returns:
    `[num_scales]` float32 frequencies.

  Examples:
    >>> geometric_frequencies(2, 4.0).tolist()
    [1.0, 0.5]

  References:
    Horn et al., "Translational Equivariance in Kernelizable Attention", 2021.
  """
  _validation.check_positive_int("num_scales", num_scales)
  if (
      isinstance(max_period, bool) or not isinstance(max_period, numbers.Real)
      or not math.isfinite(max_period) or max_period <= 0
  ):
    raise ValueError(
        f"`max_period` must be a finite positive number; got {max_period!r}."
    )
  exponents = -jnp.arange(num_scales, dtype=jnp.float32) / num_scales
  return jnp.power(jnp.float32(max_period), exponents)


def circular_frequencies(size: int, num_scales: int) -> jax.Array:
  """`[S]` frequencies 2 pi k / size, k = 1, ..., S: periodic on `size` tokens.

  Every code pair then repeats with period `size`, so the position term is a
  function of (x_i - x_j) mod size and circular shifts of the grid along this
  axis are exact symmetries.

  Args:
    size: N, the grid extent along the axis (height for rows, width for
      columns).
    num_scales: S <= N // 2. On integer positions k and N - k give the same
      cosines and opposite sines (k > N / 2 aliases to N - k, a frequency
      already present), so at most N // 2 distinct frequencies exist.

  Returns:
    `[num_scales]` float32 frequencies.

  Examples:
    >>> import math
    >>> [round(w / math.pi, 3) for w in circular_frequencies(8, 2).tolist()]
    [0.25, 0.5]
  """
  _validation.check_positive_int("size", size)
  _validation.check_positive_int("num_scales", num_scales)
  if num_scales > size // 2:
    raise ValueError(
        f"`num_scales` must be <= size // 2 = {size // 2} for `size` {size}:"
        " higher multiples of 2 pi / size alias to lower ones on the grid;"
        f" got {num_scales}."
    )
  k = jnp.arange(1, num_scales + 1, dtype=jnp.float32)
  return (2 * math.pi / size) * k


def _check_frequencies(name: str, frequencies) -> None:
  if jnp.ndim(frequencies) != 1 or jnp.shape(frequencies)[0] == 0:
    raise ValueError(
        f"`{name}` must have shape [num_scales] with num_scales >= 1; got"
        f" shape {tuple(jnp.shape(frequencies))}."
    )
  _validation.check_floating(name, frequencies)


def _sin_cos_pairs(angles: jax.Array) -> jax.Array:
  """[..., S] angles -> [..., 2S] as (sin, cos) pairs, each pair adjacent."""
  pairs = jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1)
  return pairs.reshape(angles.shape[:-1] + (2 * angles.shape[-1],))


def sinusoid_position_code(
    positions, row_frequencies, col_frequencies
) -> jax.Array:
  """Sinusoid code of 2-D positions: row pairs, then column pairs.

  code = [sin w_0 r, cos w_0 r, ..., sin w'_0 c, cos w'_0 c, ...] for
  position (r, c), row frequencies w and column frequencies w'.

  Args:
    positions: `[..., 2]` (row, col), integer or floating (fractional
      positions are allowed), e.g. `grid_positions(grid)`.
    row_frequencies: `[S_row]` frequencies of the row coordinate.
    col_frequencies: `[S_col]` frequencies of the column coordinate.

  Returns:
    `[..., 2 * (S_row + S_col)]` code, float32 (or the frequencies' dtype
    when wider).

  Examples:
    >>> import jax.numpy as jnp
    >>> code = sinusoid_position_code(
    ...     jnp.array([[0, 0], [1, 2]]), jnp.array([1.0]), jnp.array([0.5]))
    >>> code.shape, code[0].tolist()
    ((2, 4), [0.0, 1.0, 0.0, 1.0])

  References:
    Horn et al., "Translational Equivariance in Kernelizable Attention", 2021.
  """
  _validation.check_min_rank("positions", positions, 1, "[..., 2]")
  if jnp.shape(positions)[-1] != 2:
    raise ValueError(
        "`positions` must have shape [..., 2] (row, col); got shape"
        f" {tuple(jnp.shape(positions))}."
    )
  dtype = jnp.result_type(positions)
  if dtype == jnp.bool_ or not (
      jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)
  ):
    raise ValueError(
        "`positions` must have a real (integer or floating) dtype; got"
        f" {dtype}."
    )
  _check_frequencies("row_frequencies", row_frequencies)
  _check_frequencies("col_frequencies", col_frequencies)
  code_dtype = jnp.result_type(jnp.float32, row_frequencies, col_frequencies)
  positions = jnp.asarray(positions, code_dtype)
  rows = positions[..., 0:1] * jnp.asarray(row_frequencies, code_dtype)
  cols = positions[..., 1:2] * jnp.asarray(col_frequencies, code_dtype)
  return jnp.concatenate([_sin_cos_pairs(rows), _sin_cos_pairs(cols)], axis=-1)


def prepend_zero_code(code, count: int = 1) -> jax.Array:
  """Puts `count` all-zero code rows (CLS tokens) before the grid tokens.

  A zero code has no position term with any token, so a CLS token attends by
  content alone and is invariant to shifts of the grid tokens.

  Args:
    code: `[..., length, code_dim]` position code.
    count: the number of zero rows to put first.

  Returns:
    `[..., count + length, code_dim]`.

  Examples:
    >>> import jax.numpy as jnp
    >>> prepend_zero_code(jnp.ones((2, 4))).tolist()
    [[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]]
  """
  _validation.check_min_rank("code", code, 2, "[..., length, code_dim]")
  _validation.check_positive_int("count", count)
  pad = [(0, 0)] * jnp.ndim(code)
  pad[-2] = (count, 0)
  return jnp.pad(code, pad)


def _check_code(name: str, code) -> None:
  _validation.check_min_rank(name, code, 2, "[..., length, code_dim]")
  _validation.check_floating(name, code)
  width = jnp.shape(code)[-1]
  if width == 0 or width % 2:
    raise ValueError(
        f"`{name}` must have an even, nonzero width (sin, cos pairs) on its"
        f" last axis; got shape {tuple(jnp.shape(code))}."
    )


def _code_shapes(batch, length: int, width: int) -> str:
  """The accepted code shapes: per-token codes, optionally per example."""
  shared = (length, width)
  return f"{shared} or {batch + shared}" if batch else str(shared)


def _check_rotation(code, alpha, beta) -> None:
  """alpha, beta: [heads, c // 2] or [*batch, length, heads, c // 2]."""
  _check_code("code", code)
  for name, x in (("alpha", alpha), ("beta", beta)):
    _validation.check_min_rank(
        name, x, 2, "[heads, c // 2] or [*batch, length, heads, c // 2]"
    )
    _validation.check_floating(name, x)
  _validation.check_same(
      "Shapes of `alpha` and `beta`", ("alpha", "beta"),
      (tuple(jnp.shape(alpha)), tuple(jnp.shape(beta))),
  )
  code_shape, alpha_shape = tuple(jnp.shape(code)), tuple(jnp.shape(alpha))
  num_blocks = code_shape[-1] // 2
  if alpha_shape[-1] != num_blocks:
    raise ValueError(
        f"`alpha` and `beta` need one entry per (sin, cos) pair of the code:"
        f" last axis {num_blocks} for code width {code_shape[-1]}; got shape"
        f" {alpha_shape}."
    )
  if len(alpha_shape) == 2:
    return
  batch, length = alpha_shape[:-3], alpha_shape[-3]
  if code_shape[-2] != length or code_shape[:-2] not in ((), batch):
    raise ValueError(
        "Content-conditional `alpha` and `beta` of shape"
        f" [*batch, length, heads, c // 2] = {alpha_shape} need `code` of"
        f" shape {_code_shapes(batch, length, code_shape[-1])}; got"
        f" {code_shape}."
    )


def _rotate(code, alpha, beta):
  pairs = code.reshape(code.shape[:-1] + (code.shape[-1] // 2, 2))
  sin, cos = pairs[..., None, :, 0], pairs[..., None, :, 1]
  rotated = jnp.stack([alpha * sin - beta * cos, beta * sin + alpha * cos], -1)
  return rotated.reshape(rotated.shape[:-2] + (code.shape[-1],))


def rotate_position_code(code, alpha, beta) -> jax.Array:
  """R p: every (sin, cos) pair times the block [[alpha, beta], [-beta, alpha]].

  The pair [s, c] becomes [s, c] M = [alpha s - beta c, beta s + alpha c],
  so that (R p_i)^T p_j = sum over pairs of
  alpha cos(w (x_i - x_j)) + beta sin(w (x_i - x_j)).

  Args:
    code: `[..., length, c]` code with c / 2 (sin, cos) pairs.
    alpha: `[heads, c // 2]` (shared by all tokens) or
      `[*batch, length, heads, c // 2]` (content-conditional, per token);
      for the latter `code` is `[length, c]` or `[*batch, length, c]`.
    beta: same shape as `alpha`.

  Returns:
    `[*batch, length, heads, c]` rotated codes, `*batch` from `code` (shared)
    or from `alpha` (content-conditional).

  Examples:
    >>> import jax.numpy as jnp
    >>> rotate_position_code(
    ...     jnp.array([[1.0, 0.0]]), jnp.array([[2.0]]), jnp.array([[3.0]])
    ... ).tolist()
    [[[2.0, 3.0]]]

  References:
    Horn et al., "Translational Equivariance in Kernelizable Attention", 2021.
  """
  _check_rotation(code, alpha, beta)
  return _rotate(code, alpha, beta)


def constrained_relative_qk(
    q_content, k_content, code, alpha, beta
) -> tuple[jax.Array, jax.Array]:
  """Queries [q_content, R p] and keys [k_content, p] for relative positions.

  Feed the results to any attention on `[*batch, length, heads, d + c]`,
  e.g. `softmax_attention` (exactly relative) or `favor_attention` (relative
  in distribution over the projection; see the module docstring). The
  position term enters the logits like the content term, so both share the
  attention's 1 / sqrt(d + c) temperature.

  Args:
    q_content: `[*batch, length, heads, d]` content queries.
    k_content: `[*batch, length, heads, d]` content keys (the same tokens:
      one code serves both).
    code: `[length, c]` or `[*batch, length, c]` position code, e.g. from
      `sinusoid_position_code`.
    alpha: `[heads, c // 2]` or `[*batch, length, heads, c // 2]`; see
      `rotate_position_code`.
    beta: same shape as `alpha`.

  Returns:
    `(q, k)`, each `[*batch, length, heads, d + c]` in the contents' dtype.

  Examples:
    >>> import jax.numpy as jnp
    >>> code = sinusoid_position_code(
    ...     jnp.array([[0, 0], [0, 1], [1, 0]]), jnp.ones(1), jnp.ones(2))
    >>> x = jnp.ones((2, 3, 4, 8))
    >>> alpha = beta = jnp.ones((4, 3))
    >>> q, k = constrained_relative_qk(x, x, code, alpha, beta)
    >>> q.shape, k.shape
    ((2, 3, 4, 14), (2, 3, 4, 14))

  References:
    Horn et al., "Translational Equivariance in Kernelizable Attention", 2021.
  """
  layout = "[*batch, length, heads, d]"
  for name, x in (("q_content", q_content), ("k_content", k_content)):
    _validation.check_min_rank(name, x, 3, layout)
    _validation.check_floating(name, x)
  q_shape = tuple(jnp.shape(q_content))
  _validation.check_same(
      "Shapes of `q_content` and `k_content`", ("q_content", "k_content"),
      (q_shape, tuple(jnp.shape(k_content))),
  )
  _check_rotation(code, alpha, beta)
  batch, length, heads = q_shape[:-3], q_shape[-3], q_shape[-2]
  code_shape, alpha_shape = tuple(jnp.shape(code)), tuple(jnp.shape(alpha))
  if code_shape[-2] != length or code_shape[:-2] not in ((), batch):
    raise ValueError(
        "`code` must have shape"
        f" {_code_shapes(batch, length, code_shape[-1])} for contents of"
        f" shape {q_shape}; got {code_shape}."
    )
  expected = (
      (heads,) if len(alpha_shape) == 2 else batch + (length, heads)
  ) + (code_shape[-1] // 2,)
  if alpha_shape != expected:
    raise ValueError(
        f"`alpha` and `beta` must have shape {expected} ([heads, c // 2] or"
        f" [*batch, length, heads, c // 2]) for contents of shape {q_shape};"
        f" got {alpha_shape}."
    )
  full = batch + (length, heads, code_shape[-1])
  q_position = jnp.broadcast_to(_rotate(code, alpha, beta), full)
  k_position = jnp.broadcast_to(code[..., None, :], full)
  return (
      jnp.concatenate([q_content, q_position.astype(q_content.dtype)], -1),
      jnp.concatenate([k_content, k_position.astype(k_content.dtype)], -1),
  )


def relative_position_logits(code_i, code_j, alpha, beta) -> jax.Array:
  """The position term (R p_i)^T p_j for every pair, per head.

  Quadratic in the lengths: a reference for tests and a way to look at the
  learned relative-position bumps.

  Args:
    code_i: `[q_length, c]` query codes.
    code_j: `[k_length, c]` key codes.
    alpha: `[heads, c // 2]`.
    beta: `[heads, c // 2]`.

  Returns:
    `[heads, q_length, k_length]`.

  Examples:
    >>> import jax.numpy as jnp
    >>> w = jnp.ones(1)
    >>> code = sinusoid_position_code(jnp.array([[0.0, 0.0], [0.5, 0.0]]), w, w)
    >>> alpha, beta = jnp.array([[0.0, 0.0]]), jnp.array([[1.0, 0.0]])
    >>> logits = relative_position_logits(code, code, alpha, beta)
    >>> round(float(logits[0, 1, 0]), 4)  # sin(1 * (0.5 - 0))
    0.4794

  References:
    Horn et al., "Translational Equivariance in Kernelizable Attention", 2021.
  """
  for name, x in (("code_i", code_i), ("code_j", code_j)):
    _check_code(name, x)
    if jnp.ndim(x) != 2:
      raise ValueError(
          f"`{name}` must have shape [length, c]; got shape"
          f" {tuple(jnp.shape(x))}."
      )
  _validation.check_same(
      "Code widths (axis -1)", ("code_i", "code_j"),
      (jnp.shape(code_i)[-1], jnp.shape(code_j)[-1]),
  )
  if jnp.ndim(alpha) != 2:
    raise ValueError(
        "`alpha` must have shape [heads, c // 2]; got shape"
        f" {tuple(jnp.shape(alpha))}."
    )
  _check_rotation(code_i, alpha, beta)
  return jnp.einsum("qhc,kc->hqk", _rotate(code_i, alpha, beta), code_j)
