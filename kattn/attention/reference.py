"""Quadratic attention: the slow, obviously correct truth the tests compare to.

Both functions materialise the full `[*batch, heads, q_length, k_length]`
matrix, so they cost O(L^2) time and memory.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kattn import _validation
from kattn.attention import masking


def _causal_mask(q_length: int, k_length: int) -> jax.Array:
  return jnp.tril(jnp.ones((q_length, k_length), bool))


def softmax_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool = False
) -> jax.Array:
  """Exact softmax attention softmax(q k^T / sqrt(d)) v.

  Args:
    q: `[*batch, q_length, heads, dim]` queries.
    k: `[*batch, k_length, heads, dim]` keys.
    v: `[*batch, k_length, heads, v_dim]` values.
    causal: if True, query i attends to keys j <= i (needs equal lengths).

  Returns:
    `[*batch, q_length, heads, v_dim]` outputs.

  Examples:
    >>> import jax.numpy as jnp
    >>> x = jnp.ones((1, 4, 2, 8))
    >>> softmax_attention(x, x, x, causal=True).shape
    (1, 4, 2, 8)
  """
  _validation.check_attention_inputs(q, k, v)
  if causal:
    _validation.check_same(
        "Causal attention lengths (axis -3)", ("q", "k"),
        (q.shape[-3], k.shape[-3]),
    )
  logits = jnp.einsum("...qhd,...khd->...hqk", q, k) / jnp.sqrt(
      jnp.asarray(q.shape[-1], q.dtype)
  )
  if causal:
    logits = jnp.where(
        _causal_mask(q.shape[-3], k.shape[-3]), logits, -jnp.inf
    )
  weights = jax.nn.softmax(logits, axis=-1)
  if not causal:
    return jnp.einsum("...hqk,...khd->...qhd", weights, v)
  # Masked weights are 0, but 0 times a later inf or NaN value is NaN.
  v, seen = masking.split_non_finite_values(v)
  out = jnp.einsum("...hqk,...khd->...qhd", weights, v)
  return masking.restore_non_finite(out, seen)


def quadratic_kernel_attention(
    q_features: jax.Array,
    k_features: jax.Array,
    v: jax.Array,
    *,
    causal: bool = False,
) -> jax.Array:
  """Attention with the explicit kernel matrix A = q_features k_features^T.

  out_i = sum_j A_ij v_j / sum_j A_ij, with A masked to j <= i when causal.
  This is what `linear_attention` computes in linear time.

  Args:
    q_features: `[*batch, q_length, heads, m]` query features.
    k_features: `[*batch, k_length, heads, m]` key features.
    v: `[*batch, k_length, heads, v_dim]` values.
    causal: mask to j <= i (needs equal lengths).

  Returns:
    `[*batch, q_length, heads, v_dim]` outputs.

  Examples:
    >>> import jax.numpy as jnp
    >>> f = jnp.ones((3, 1, 5))
    >>> v = jnp.arange(3.0).reshape(3, 1, 1)
    >>> quadratic_kernel_attention(f, f, v, causal=True)[:, 0, 0]
    Array([0. , 0.5, 1. ], dtype=float32)
  """
  _validation.check_attention_inputs(
      q_features, k_features, v, q_name="q_features", k_name="k_features"
  )
  if causal:
    _validation.check_same(
        "Causal attention lengths (axis -3)", ("q_features", "k_features"),
        (q_features.shape[-3], k_features.shape[-3]),
    )
  kernel = jnp.einsum("...qhm,...khm->...hqk", q_features, k_features)
  if causal:
    kernel = jnp.where(
        _causal_mask(q_features.shape[-3], k_features.shape[-3]), kernel, 0.0
    )
    # As in `softmax_attention`: no later inf or NaN value reaches a query.
    v, seen = masking.split_non_finite_values(v)
    return masking.restore_non_finite(weighted_average(kernel, v), seen)
  return weighted_average(kernel, v)


def weighted_average(weights: jax.Array, v: jax.Array) -> jax.Array:
  """out_i = sum_j w_ij v_j / sum_j w_ij, from explicit attention weights.

  The last step of every quadratic reference.

  Args:
    weights: `[*batch, heads, q_length, k_length]` unnormalised weights.
    v: `[*batch, k_length, heads, v_dim]` values.

  Returns:
    `[*batch, q_length, heads, v_dim]` outputs.

  Examples:
    >>> import jax.numpy as jnp
    >>> w = jnp.array([[[1.0, 3.0]]])  # one head, one query, two keys
    >>> weighted_average(w, jnp.array([[[0.0]], [[4.0]]]))[0, 0, 0]
    Array(3., dtype=float32)
  """
  numerator = jnp.einsum("...hqk,...khd->...qhd", weights, v)
  denominator = jnp.swapaxes(jnp.sum(weights, axis=-1), -1, -2)[..., None]
  return numerator / denominator
