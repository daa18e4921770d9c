"""Tokens on a pixel grid: row-major positions and the checks that go with them.

An image of `grid = (height, width)` tokens is flattened row-major, so token
i sits at (i // width, i % width). Translations of the image act on the token
axis through these positions.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp


def check_grid(grid, length: int | None = None, *, name: str = "grid"):
  """Returns `grid` as a `(height, width)` tuple of positive ints.

  Args:
    grid: `(height, width)`.
    length: if given, the token count that `height * width` must equal.
    name: the argument name used in error messages.

  Examples:
    >>> check_grid([4, 3], 12)
    (4, 3)
  """
  if (
      not isinstance(grid, Sequence) or len(grid) != 2
      or any(isinstance(g, bool) or not isinstance(g, int) or g <= 0
             for g in grid)
  ):
    raise ValueError(
        f"`{name}` must be (height, width), two positive ints; got {grid!r}."
    )
  height, width = grid
  if length is not None and height * width != length:
    raise ValueError(
        f"`{name}` {tuple(grid)} holds {height * width} tokens, but the token"
        f" axis has length {length}."
    )
  return int(height), int(width)


def grid_positions(grid, dtype=jnp.int32) -> jax.Array:
  """`[height * width, 2]` (row, column) of each token, row-major.

  Examples:
    >>> grid_positions((2, 3)).tolist()
    [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]
  """
  height, width = check_grid(grid)
  rows, cols = jnp.meshgrid(
      jnp.arange(height), jnp.arange(width), indexing="ij"
  )
  return jnp.stack([rows.ravel(), cols.ravel()], axis=-1).astype(dtype)


def roll_tokens(x: jax.Array, shift, *, grid, axis: int = -3) -> jax.Array:
  """Circularly shifts the tokens of a row-major grid by `shift = (rows, cols)`.

  The token at (r, c) moves to ((r + rows) % height, (c + cols) % width), as
  `jnp.roll` does on the unflattened image.

  Args:
    x: array whose `axis` holds `height * width` tokens.
    shift: `(rows, cols)` integer shift.
    grid: `(height, width)`.
    axis: the token axis; `-3` is the length axis of
      `[*batch, length, heads, dim]`.

  Examples:
    >>> import jax.numpy as jnp
    >>> roll_tokens(jnp.arange(6), (0, 1), grid=(2, 3), axis=0).tolist()
    [2, 0, 1, 5, 3, 4]
  """
  axis = axis % jnp.ndim(x)
  height, width = check_grid(grid, jnp.shape(x)[axis])
  image = x.reshape(x.shape[:axis] + (height, width) + x.shape[axis + 1:])
  image = jnp.roll(image, tuple(shift), axis=(axis, axis + 1))
  return image.reshape(x.shape)
