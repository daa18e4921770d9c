"""Causal attention that no later value can reach, finite or not.

An attention output is a weighted sum of values. Computed as a matmul (or
carried as a state), every pair is multiplied, so a later key's value that
is inf or NaN turns its 0 weight into NaN (0 * NaN = NaN) and reaches the
queries before it: a causal output would depend on the future. Causal
attentions therefore run on values with their non-finite entries set to 0
(`split_non_finite_values`) and put NaN back, by selection, only for the
queries at or after such an entry (`restore_non_finite`), where the plain
sum would be non-finite too.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def split_non_finite_values(v: jax.Array, *, axis: int = -3):
  """`v` with inf and NaN entries set to 0, and which causal outputs see one.

  Args:
    v: `[*batch, length, heads, v_dim]` values (the length on `axis`).
    axis: the token axis.

  Returns:
    `(finite_v, seen)`: `finite_v` like `v`; `seen` bool of `v`'s shape,
    True at token i and column e where some token j <= i has a non-finite
    entry in column e. O(length) work: the first such token per column, not
    a running OR.

  Examples:
    >>> import jax.numpy as jnp
    >>> v = jnp.array([[1.0], [jnp.nan], [2.0]])
    >>> finite_v, seen = split_non_finite_values(v, axis=0)
    >>> finite_v[:, 0].tolist(), seen[:, 0].tolist()
    ([1.0, 0.0, 2.0], [False, True, True])
  """
  axis = axis % v.ndim
  bad = ~jnp.isfinite(v)
  first = jnp.expand_dims(jnp.argmax(bad, axis=axis), axis)
  any_bad = jnp.expand_dims(jnp.any(bad, axis=axis), axis)
  positions = jax.lax.broadcasted_iota(jnp.int32, v.shape, axis)
  return jnp.where(bad, jnp.zeros_like(v), v), any_bad & (positions >= first)


def restore_non_finite(out: jax.Array, seen: jax.Array) -> jax.Array:
  """`out` with NaN where `seen` (from `split_non_finite_values`)."""
  return jnp.where(seen, jnp.asarray(jnp.nan, out.dtype), out)
