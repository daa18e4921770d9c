"""Absolute 2-D sinusoid position embeddings, added to token contents.

The baseline that relative encodings are measured against: a token's
embedding depends on where it is, so shifting an image changes what the model
sees, and nothing in the model is translation equivariant.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kattn import _validation
from kattn.positional import grid as grid_lib


def sinusoid_position_embedding(
    grid, width: int, *, max_period: float = 10_000.0
) -> jax.Array:
  """`[height * width_tokens, width]` fixed sinusoid embedding of grid positions.

  The first half of the channels encodes the row, the second half the column,
  each as `width / 4` (sin, cos) pairs at frequencies
  `max_period ** (-s / (width / 4))`, s = 0, 1, ... (Vaswani et al.'s 1-D
  embedding, once per coordinate).

  Args:
    grid: `(height, width_tokens)` of the row-major token grid.
    width: embedding width; a multiple of 4.
    max_period: the longest period, in tokens.

  Returns:
    `[height * width_tokens, width]` float32 embeddings.

  Examples:
    >>> emb = sinusoid_position_embedding((2, 3), 8)
    >>> emb.shape, float(emb[0, 1])  # cos(0) of the row code at (0, 0)
    ((6, 8), 1.0)

  References:
    Vaswani et al., "Attention Is All You Need", NeurIPS 2017.
  """
  _validation.check_positive_int("width", width)
  if width % 4:
    raise ValueError(
        f"`width` must be a multiple of 4 (sin and cos for rows and columns);"
        f" got {width}."
    )
  if not max_period > 1:
    raise ValueError(f"`max_period` must be > 1; got {max_period!r}.")
  positions = grid_lib.grid_positions(grid, jnp.float32)
  num_frequencies = width // 4
  frequencies = max_period ** (-jnp.arange(num_frequencies) / num_frequencies)
  angles = positions[:, :, None] * frequencies  # [L, 2, F]
  pairs = jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1)  # [L, 2, F, 2]
  return pairs.reshape(positions.shape[0], width)
