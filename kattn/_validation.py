"""Argument checks shared by the public functions.

Checks run on static shapes at trace time, so they cost nothing under `jit`
and fail before any computation with a message naming the argument.
"""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp


def check_min_rank(name: str, x, min_rank: int, layout: str) -> None:
  if jnp.ndim(x) < min_rank:
    raise ValueError(
        f"`{name}` must have rank >= {min_rank} with layout {layout}; got shape"
        f" {tuple(jnp.shape(x))}."
    )


def check_positive_int(name: str, value) -> int:
  if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
    raise ValueError(f"`{name}` must be a positive integer; got {value!r}.")
  return value


def check_same(what: str, names: Sequence[str], values: Sequence) -> None:
  if len(set(values)) > 1:
    got = ", ".join(f"{n}={v}" for n, v in zip(names, values))
    raise ValueError(f"{what} must agree; got {got}.")


def check_floating(name: str, x) -> None:
  if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
    raise ValueError(
        f"`{name}` must have a floating dtype; got {jnp.result_type(x)}."
    )


def check_attention_inputs(q, k, v, *, q_name="q", k_name="k") -> None:
  """Validates `[*batch, length, heads, dim]` queries, keys and values."""
  layout = "[*batch, length, heads, dim]"
  for name, x in ((q_name, q), (k_name, k), ("v", v)):
    check_min_rank(name, x, 3, layout)
    check_floating(name, x)
  qs, ks, vs = jnp.shape(q), jnp.shape(k), jnp.shape(v)
  check_same(
      "Ranks of queries, keys and values", (q_name, k_name, "v"),
      (len(qs), len(ks), len(vs)),
  )
  check_same(
      "Batch axes [*batch] of queries, keys and values",
      (q_name, k_name, "v"), (qs[:-3], ks[:-3], vs[:-3]),
  )
  check_same(
      "Head counts (axis -2)", (q_name, k_name, "v"), (qs[-2], ks[-2], vs[-2])
  )
  check_same(
      "Key and value lengths (axis -3)", (k_name, "v"), (ks[-3], vs[-3])
  )
  check_same(
      "Query and key feature dims (axis -1)", (q_name, k_name), (qs[-1], ks[-1])
  )
  # Only the batch axes may be empty (an empty shard is a batch of 0); an
  # empty length, head or feature axis has no attention to compute.
  for name, x in ((q_name, q), (k_name, k), ("v", v)):
    for axis, what in ((-3, "token"), (-2, "head"), (-1, "feature")):
      check_nonempty(name, x, axis, f"hold at least one {what}")


def check_nonempty(name: str, x, axis: int, requirement: str) -> None:
  """Raises unless axis `axis` of `x` is non-empty; `requirement` says why."""
  shape = tuple(jnp.shape(x))
  if shape[axis] == 0:
    raise ValueError(
        f"`{name}` must {requirement} (axis {axis}); got shape {shape}."
    )


def check_optional_positive_int(name: str, value):
  """`value` if it is None or a positive integer; raises otherwise."""
  if value is not None:
    check_positive_int(name, value)
  return value


def check_tokens(name: str, x) -> None:
  """Validates `[*batch, length, width]` tokens; the batch may be empty."""
  check_min_rank(name, x, 2, "[*batch, length, width]")
  check_nonempty(name, x, -2, "hold at least one token")
  check_nonempty(name, x, -1, "have a positive width")


def check_images(images) -> tuple[int, int, int, int]:
  """Validates `[batch, height, width, channels]` images; returns the shape.

  The batch may be empty (an empty shard); the other axes may not.
  """
  shape = tuple(jnp.shape(images))
  if len(shape) != 4:
    raise ValueError(
        "`images` must have rank 4 with layout [batch, height, width,"
        f" channels]; got shape {shape}."
    )
  if 0 in shape[1:]:
    raise ValueError(
        "`images` must have a positive height, width and channel count"
        f" (axes 1-3); got shape {shape}."
    )
  return shape
