"""Public asserts for the symmetries a model claims.

Use them in your own tests: each applies a group element to the input, runs
the function, and compares with the element applied to the output, reporting
the worst offending shift and its error when they differ.
"""

from __future__ import annotations

from typing import Callable, Iterable

import jax
import numpy as np

from kattn.positional import grid as grid_lib


def _check_shifts(shifts) -> list[tuple[int, int]]:
  try:
    shifts = [tuple(s) for s in shifts]
  except TypeError:
    shifts = None
  if not shifts or any(
      len(s) != 2
      or any(isinstance(c, bool) or not isinstance(c, (int, np.integer))
             for c in s)
      for s in shifts
  ):
    raise ValueError(
        "`shifts` must be a non-empty sequence of (rows, cols) integer pairs;"
        f" got {shifts!r}."
    )
  return [(int(r), int(c)) for r, c in shifts]


def _roll(x, shift, grid, axis):
  return np.asarray(
      grid_lib.roll_tokens(jax.numpy.asarray(x), shift, grid=grid, axis=axis)
  )


def _compare(what, shift, got, expected, rtol, atol):
  got, expected = np.asarray(got), np.asarray(expected)
  if got.shape != expected.shape:
    raise AssertionError(
        f"Not {what} under shift {shift}: output shapes differ, {got.shape}"
        f" vs {expected.shape}."
    )
  if not np.all(np.isfinite(got)) or not np.all(np.isfinite(expected)):
    raise AssertionError(f"Not {what} under shift {shift}: non-finite output.")
  try:
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol)
  except AssertionError as e:
    raise AssertionError(f"Not {what} under shift {shift}:\n{e}") from None


def assert_translation_equivariant(
    fn: Callable[[jax.Array], jax.Array],
    x,
    *,
    grid,
    shifts: Iterable,
    axis: int = 1,
    output_axis: int | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
) -> None:
  """Asserts fn(roll(x, s)) == roll(fn(x), s) for every circular shift s.

  Tokens of a `grid = (height, width)` image lie row-major along `axis`;
  rolling by s = (rows, cols) moves the token at (r, c) to
  ((r + rows) % height, (c + cols) % width) (`kattn.positional.roll_tokens`).

  Args:
    fn: maps `x` to an array whose `output_axis` holds the same grid tokens.
    x: input array, `height * width` tokens along `axis`.
    grid: `(height, width)`.
    shifts: `(rows, cols)` integer shifts to test.
    axis: the token axis of `x`; 1 is `[batch, length, ...]`.
    output_axis: the token axis of `fn(x)`; defaults to `axis`.
    rtol, atol: tolerances of `np.testing.assert_allclose`; the defaults
      suit float32 computations with O(1) outputs.

  Raises:
    AssertionError: naming the first shift that breaks equivariance, with
      the mismatch.
    ValueError: for a malformed `grid` or `shifts`.

  Examples:
    >>> import jax.numpy as jnp
    >>> x = jnp.arange(12.0).reshape(1, 12, 1)
    >>> assert_translation_equivariant(lambda t: 2 * t, x, grid=(3, 4),
    ...                                shifts=[(1, 2), (-1, 5)])
  """
  shifts = _check_shifts(shifts)
  output_axis = axis if output_axis is None else output_axis
  grid_lib.check_grid(grid, np.shape(x)[axis])
  out = fn(x)
  for shift in shifts:
    _compare(
        "translation equivariant", shift, fn(_roll(x, shift, grid, axis)),
        _roll(out, shift, grid, output_axis), rtol, atol,
    )


def assert_translation_invariant(
    fn: Callable[[jax.Array], jax.Array],
    x,
    *,
    grid,
    shifts: Iterable,
    axis: int = 1,
    rtol: float = 1e-5,
    atol: float = 1e-5,
) -> None:
  """Asserts fn(roll(x, s)) == fn(x) for every circular shift s.

  For pooled outputs such as logits. Images `[batch, height, width,
  channels]` are tokens too: pass them reshaped, or use `axis=1` on
  `x.reshape(batch, height * width, channels)` inside `fn`.

  Args:
    fn: any function of `x`.
    x: input array, `height * width` tokens along `axis`.
    grid: `(height, width)`.
    shifts: `(rows, cols)` integer shifts to test.
    axis: the token axis of `x`.
    rtol, atol: tolerances of `np.testing.assert_allclose`.

  Raises:
    AssertionError: naming the first shift that changes the output.

  Examples:
    >>> import jax.numpy as jnp
    >>> x = jnp.arange(12.0).reshape(1, 12, 1)
    >>> assert_translation_invariant(lambda t: t.sum(1), x, grid=(3, 4),
    ...                              shifts=[(1, 2)])
  """
  shifts = _check_shifts(shifts)
  grid_lib.check_grid(grid, np.shape(x)[axis])
  out = fn(x)
  for shift in shifts:
    _compare(
        "translation invariant", shift, fn(_roll(x, shift, grid, axis)), out,
        rtol, atol,
    )
