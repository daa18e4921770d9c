"""Helpers that let the pure functions run inside `jax.shard_map`.

Inside `shard_map` every value has a type that records the manual mesh axes
it varies over. A loop carry started from a constant (`jnp.zeros`) varies over
none of them, while the carry computed from sharded inputs varies over the
inputs' axes, so `lax.scan` refuses the two types as unequal. Starting the
carry from `match_varying(constant, *inputs)` gives both the same type.
Outside `shard_map` nothing varies and these are the identity.
"""

from __future__ import annotations

import jax


def varying_axes(*arrays) -> frozenset:
  """The manual mesh axes any of `arrays` varies over (empty outside)."""
  axes = frozenset()
  for x in arrays:
    aval = jax.typeof(x)
    # jax >= 0.10 keeps them in `manual_axis_type.varying`, earlier releases
    # in `vma`; concrete arrays outside any trace may have neither.
    manual = getattr(aval, "manual_axis_type", None)
    axes |= manual.varying if manual is not None else getattr(
        aval, "vma", frozenset()
    )
  return axes


def match_varying(x, *like):
  """`x` marked as varying over every manual mesh axis `like` varies over.

  Examples:
    >>> import jax.numpy as jnp
    >>> match_varying(jnp.zeros(3), jnp.ones(3)).shape  # outside shard_map
    (3,)
  """
  missing = varying_axes(*like) - varying_axes(x)
  if not missing:
    return x
  return jax.lax.pcast(x, tuple(sorted(missing)), to="varying")
