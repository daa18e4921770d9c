"""Public asserts for the symmetries a model claims.

Use them in your own tests: each applies a group element to the input, runs
the function, and compares with the element applied to the output, reporting
the offending shift or group element and the mismatch when they differ.
"""

from __future__ import annotations

from typing import Callable, Iterable

import jax
import numpy as np

from kattn import groups as groups_lib
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


def _compare(what, under, got, expected, rtol, atol):
  """`under` names the transformation, e.g. "shift (1, 2)"."""
  got, expected = np.asarray(got), np.asarray(expected)
  if got.shape != expected.shape:
    raise AssertionError(
        f"Not {what} under {under}: output shapes differ, {got.shape}"
        f" vs {expected.shape}."
    )
  if not np.all(np.isfinite(got)) or not np.all(np.isfinite(expected)):
    raise AssertionError(f"Not {what} under {under}: non-finite output.")
  try:
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol)
  except AssertionError as e:
    raise AssertionError(f"Not {what} under {under}:\n{e}") from None


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
        "translation equivariant", f"shift {shift}", fn(_roll(x, shift, grid, axis)),
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
        "translation invariant", f"shift {shift}", fn(_roll(x, shift, grid, axis)), out,
        rtol, atol,
    )


_KINDS = ("image", "regular", "invariant")


def _act(x, kind, group, element):
  """Element `element` on `x` of layout `kind` (see `assert_group_equivariant`)."""
  if kind == "invariant":
    return x
  x = groups_lib.transform_images(x, group, element)
  if kind == "regular":
    perm = groups_lib.group_permutation(group, element)
    x = jax.numpy.take(x, perm, axis=-4)
  return x


def assert_group_equivariant(
    fn: Callable[[jax.Array], jax.Array],
    x,
    group,
    *,
    input_kind: str = "image",
    output_kind: str = "regular",
    elements: Iterable[int] | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
) -> None:
  """Asserts fn(g . x) == g . fn(x) for every element g of `group`.

  Layouts ("kinds") and how g acts on them:

  * `"image"`: `[*batch, H, W, C]` square images; g turns/flips the pixels,
    x(g^-1 p) (`kattn.groups.transform_images`).
  * `"regular"`: `[*batch, |G|, H, W, C]` group feature maps;
    F(g^-1 h, g^-1 p), the pixels moved and the group axis permuted.
  * `"invariant"` (output only): unchanged, e.g. logits.

  Args:
    fn: the function under test.
    x: its input, of layout `input_kind`.
    group: a `kattn.groups.Group` or name (`"p4"`, `"p4m"`, ...).
    input_kind: `"image"` or `"regular"`.
    output_kind: `"image"`, `"regular"` or `"invariant"`.
    elements: which elements to test; default every element that maps
      pixels to pixels (all of p4 and p4m; the C_4 subgroup of p8, p16).
    rtol, atol: tolerances of `np.testing.assert_allclose`; the defaults
      suit float32 computations with O(1) outputs.

  Raises:
    AssertionError: naming the first element that breaks equivariance,
      with the mismatch.
    ValueError: for an unknown group or kind, or an element with no pixel
      action.

  Examples:
    >>> import jax.numpy as jnp
    >>> x = jnp.arange(9.0).reshape(1, 3, 3, 1)
    >>> assert_group_equivariant(lambda t: t ** 2, x, "p4m",
    ...                          output_kind="image")
    >>> assert_group_equivariant(lambda t: t.sum((1, 2)), x, "p4m",
    ...                          output_kind="invariant")
  """
  group = groups_lib.as_group(group)
  if input_kind not in _KINDS[:2]:
    raise ValueError(
        f"`input_kind` must be one of {_KINDS[:2]}; got {input_kind!r}."
    )
  if output_kind not in _KINDS:
    raise ValueError(
        f"`output_kind` must be one of {_KINDS}; got {output_kind!r}."
    )
  if elements is None:
    elements = [e for e in range(group.order) if group.is_exact_on_pixels(e)]
  out = fn(x)
  for element in elements:
    k, s = group.decompose(element)
    under = (
        f"element {element} of {group.name} ({90 * k * 4 // group.rotations}"
        f" degrees{', mirrored' if s else ''})"
    )
    _compare(
        "group equivariant", under, fn(_act(x, input_kind, group, element)),
        _act(out, output_kind, group, element), rtol, atol,
    )
