"""Finite groups of rotations and flips acting on the pixel grid and group axes.

A group here is C_n (rotations by 2*pi*k/n) or D_n (C_n and the mirror), as
orthogonal 2 x 2 matrices acting on (row, column) offsets, with row 0 on top
and positive angles turning counterclockwise as displayed, like `np.rot90`.
Element `e = s * n + k` is the rotation by k steps after the mirror when
s = 1: g = R^k M^s, with M the left-right flip (row, col) -> (row, -col).

Only rotations by multiples of 90 degrees map pixels onto pixels. Their
matrices are snapped to integers, so acting on a square image is an exact
permutation; the other rotations of C_8 and C_16 act exactly on continuous
coordinates (for example the offsets fed to a relative-position MLP) but have
no pixel action, and the functions that move pixels refuse them.

A group feature map `F[..., g, ..., pixel, ...]` transforms under u as the
regular representation: (u . F)(g, x) = F(u^-1 g, u^-1 x).

Examples:
  >>> p4 = get_group("p4")
  >>> p4.order, p4.exact_on_pixels
  (4, True)
  >>> p4.matrices[1].tolist()  # A quarter turn: (row, col) -> (-col, row).
  [[0.0, -1.0], [1.0, 0.0]]
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from kattn.positional import grid as grid_lib

# name: (rotations n, mirrored).
_GROUPS = {
    "z2": (1, False),
    "mz2": (1, True),
    "p4": (4, False),
    "p4m": (4, True),
    "p8": (8, False),
    "p16": (16, False),
}
GROUP_NAMES = tuple(_GROUPS)


@dataclasses.dataclass(frozen=True)
class Group:
  """C_n or D_n as a table: element `e = mirror * rotations + k`.

  Attributes:
    name: one of `GROUP_NAMES`.
    rotations: n, the number of rotations.
    mirrored: whether the mirror (left-right flip) is included.
  """

  name: str
  rotations: int
  mirrored: bool

  @property
  def order(self) -> int:
    """|G|."""
    return self.rotations * (2 if self.mirrored else 1)

  @property
  def exact_on_pixels(self) -> bool:
    """Whether every element maps the pixel grid of a square image onto itself."""
    return 4 % self.rotations == 0

  def decompose(self, element: int) -> tuple[int, int]:
    """(k, s) with element = R^k M^s."""
    element = self.check_element(element)
    return element % self.rotations, element // self.rotations

  def check_element(self, element) -> int:
    if (
        isinstance(element, bool)
        or not isinstance(element, (int, np.integer))
        or not 0 <= element < self.order
    ):
      raise ValueError(
          f"`element` must be an int in [0, {self.order}) for group"
          f" {self.name!r}; got {element!r}."
      )
    return int(element)

  @functools.cached_property
  def matrices(self) -> np.ndarray:
    """`[order, 2, 2]` float64 matrices on (row, col); integer at 90-degree steps."""
    out = []
    for element in range(self.order):
      k, s = self.decompose(element)
      if (4 * k) % self.rotations == 0:
        quarter = (4 * k) // self.rotations
        cos, sin = [(1, 0), (0, 1), (-1, 0), (0, -1)][quarter]
      else:
        angle = 2 * np.pi * k / self.rotations
        cos, sin = np.cos(angle), np.sin(angle)
      rotation = np.array([[cos, -sin], [sin, cos]], np.float64)
      mirror = np.diag([1.0, -1.0]) if s else np.eye(2)
      out.append(rotation @ mirror)
    return np.stack(out)

  @functools.cached_property
  def product(self) -> np.ndarray:
    """`[order, order]` int table: `product[g, h]` is the element g h."""
    n = self.rotations
    table = np.empty((self.order, self.order), np.int32)
    for g in range(self.order):
      kg, sg = self.decompose(g)
      for h in range(self.order):
        kh, sh = self.decompose(h)
        # M R^k = R^-k M, so R^kg M^sg R^kh M^sh = R^(kg +- kh) M^(sg + sh).
        k = (kg + (-kh if sg else kh)) % n
        table[g, h] = ((sg + sh) % 2) * n + k
    return table

  @functools.cached_property
  def inverse(self) -> np.ndarray:
    """`[order]` int: the inverse of each element."""
    return np.argmax(self.product == 0, axis=1).astype(np.int32)

  def is_exact_on_pixels(self, element: int) -> bool:
    """Whether `element` is a 90-degree rotation (after a flip): a pixel map."""
    k, _ = self.decompose(element)
    return (4 * k) % self.rotations == 0


def get_group(name: str) -> Group:
  """The group called `name`, one of `GROUP_NAMES`.

  `"z2"` is the trivial group, `"mz2"` the mirror alone, `"p4"` C_4,
  `"p4m"` D_4, `"p8"` and `"p16"` C_8 and C_16 (exact on continuous
  coordinates; only their C_4 subgroup is exact on pixels).

  Examples:
    >>> [get_group(n).order for n in GROUP_NAMES]
    [1, 2, 4, 8, 8, 16]
  """
  if name not in _GROUPS:
    raise ValueError(
        f"`group` must be one of {GROUP_NAMES}; got {name!r}."
    )
  rotations, mirrored = _GROUPS[name]
  return Group(name, rotations, mirrored)


def as_group(group: Group | str) -> Group:
  """Accepts a `Group` or its name."""
  return group if isinstance(group, Group) else get_group(group)


def check_square_grid(grid, length: int | None = None, *, name: str = "grid"):
  """`check_grid` that also requires height == width, as rotations need."""
  height, width = grid_lib.check_grid(grid, length, name=name)
  if height != width:
    raise ValueError(
        f"`{name}` must be square for rotations; got {(height, width)}."
    )
  return height, width


def _check_pixel_element(group: Group, element) -> int:
  element = group.check_element(element)
  if not group.is_exact_on_pixels(element):
    k, _ = group.decompose(element)
    raise ValueError(
        f"Element {element} of {group.name!r} turns by {360 * k / group.rotations:g}"
        " degrees, which does not map pixels onto pixels; only the multiples"
        " of 90 degrees act on images."
    )
  return element


def pixel_permutation(group: Group | str, element: int, grid) -> np.ndarray:
  """`[H * W]` int: transformed tokens are `x[..., perm, ...]`.

  (g . x)(p) = x(g^-1 p) for the row-major tokens of a square `grid`,
  positions taken about the image centre.

  Examples:
    >>> pixel_permutation("p4", 1, (2, 2)).tolist()  # np.rot90 of [[0,1],[2,3]]
    [1, 3, 0, 2]
  """
  group = as_group(group)
  element = _check_pixel_element(group, element)
  height, width = check_square_grid(grid)
  centre = (height - 1) / 2
  rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
  positions = np.stack([rows.ravel(), cols.ravel()], -1) - centre
  inverse = group.matrices[group.inverse[element]]
  source = np.rint(positions @ inverse.T + centre).astype(np.int64)
  return (source[:, 0] * width + source[:, 1]).astype(np.int32)


def group_permutation(group: Group | str, element: int) -> np.ndarray:
  """`[order]` int: the group axis of `u . F` is `F[..., perm, ...]`.

  perm[g] = u^-1 g, the left regular representation.

  Examples:
    >>> group_permutation("p4", 1).tolist()
    [3, 0, 1, 2]
  """
  group = as_group(group)
  element = group.check_element(element)
  return group.product[group.inverse[element]].astype(np.int32)


def transform_tokens(
    x: jax.Array, group: Group | str, element: int, *, grid, axis: int = -2
) -> jax.Array:
  """Moves the pixels on token axis `axis` of `x` by `element`: x(g^-1 p).

  Args:
    x: array whose `axis` holds the `H * W` row-major tokens of `grid`.
    group: a `Group` or its name.
    element: an element that maps pixels to pixels.
    grid: `(H, W)` with H == W.
    axis: the token axis.

  Examples:
    >>> import jax.numpy as jnp
    >>> transform_tokens(jnp.arange(4), "p4", 1, grid=(2, 2), axis=0).tolist()
    [1, 3, 0, 2]
  """
  axis = axis % jnp.ndim(x)
  perm = pixel_permutation(group, element, check_square_grid(grid, x.shape[axis]))
  return jnp.take(x, perm, axis=axis)


def transform_group_features(
    x: jax.Array,
    group: Group | str,
    element: int,
    *,
    grid,
    group_axis: int = -4,
    token_axis: int = -3,
) -> jax.Array:
  """(u . F)(g, p) = F(u^-1 g, u^-1 p): the regular representation.

  Args:
    x: a group feature map, by default `[*batch, group, length, heads, dim]`.
    group: a `Group` or its name; `x.shape[group_axis]` must be its order.
    element: u, an element that maps pixels to pixels.
    grid: square `(H, W)` of the token axis.
    group_axis, token_axis: where the group and the tokens are.

  Examples:
    >>> import jax.numpy as jnp
    >>> x = jnp.arange(16.0).reshape(4, 4, 1, 1)  # [group, length, 1, 1]
    >>> y = transform_group_features(x, "p4", 2, grid=(2, 2))
    >>> y[0, :, 0, 0].tolist()  # group 0 reads group 2, turned by 180 degrees.
    [11.0, 10.0, 9.0, 8.0]
  """
  group = as_group(group)
  group_axis = group_axis % jnp.ndim(x)
  if x.shape[group_axis] != group.order:
    raise ValueError(
        f"Axis {group_axis} of `x` must hold the {group.order} elements of"
        f" {group.name!r}; got shape {tuple(x.shape)}."
    )
  x = transform_tokens(x, group, element, grid=grid, axis=token_axis)
  return jnp.take(x, group_permutation(group, element), axis=group_axis)


def transform_images(
    images: jax.Array, group: Group | str, element: int
) -> jax.Array:
  """`[*batch, H, W, C]` square images turned/flipped by `element`, exactly.

  Equal to `np.rot90(np.flip(images, -2) if mirrored else images, k, (-3, -2))`.

  Examples:
    >>> import numpy as np
    >>> x = np.arange(4.0).reshape(2, 2, 1)
    >>> transform_images(x, "p4", 1)[..., 0].tolist()
    [[1.0, 3.0], [0.0, 2.0]]
  """
  images = jnp.asarray(images)
  if images.ndim < 3:
    raise ValueError(
        f"`images` must be [*batch, H, W, C]; got shape {tuple(images.shape)}."
    )
  height, width = images.shape[-3:-1]
  tokens = images.reshape(images.shape[:-3] + (height * width, images.shape[-1]))
  out = transform_tokens(tokens, group, element, grid=(height, width), axis=-2)
  return out.reshape(images.shape)


def acted_offsets(group: Group | str, offsets) -> np.ndarray:
  """g^-1 delta for every element g: `[order, *offsets.shape]` (float64).

  The relative-position input of an equivariant layer's output element g.

  Examples:
    >>> acted_offsets("p4", np.array([[1.0, 0.0]]))[:, 0].tolist()
    [[1.0, 0.0], [0.0, -1.0], [-1.0, 0.0], [0.0, 1.0]]
  """
  group = as_group(group)
  offsets = np.asarray(offsets, np.float64)
  if offsets.ndim < 1 or offsets.shape[-1] != 2:
    raise ValueError(
        f"`offsets` must be [..., 2] (row, col); got shape {offsets.shape}."
    )
  inverses = group.matrices[group.inverse]
  return np.einsum("gab,...b->g...a", inverses, offsets)
