"""GSA-Nets layers: group-equivariant stand-alone self-attention, as Linen modules.

Thin wrappers over `kattn.attention.group`: the modules own the 1 x 1
projections, the relative-position MLP evaluated on the acted offsets
g^-1 delta (`kattn.groups.acted_offsets`), and the group-offset embedding
indexed by g^-1 m (`relative_group_index`). They take spatial layouts, images
`[*batch, H, W, C]` and group maps `[*batch, order, H, W, C]`, so that
`kattn.testing.assert_group_equivariant` applies to them directly.

Turning the input by u turns the output and permutes its group axis,
out'(g, p) = out(u^-1 g, u^-1 p), exactly for the 90-degree rotations and
flips (the pixel grid admits no other); p8 and p16 feed their finer
rotations to the MLP, on continuous offsets.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kattn import _validation
from kattn import groups as groups_lib
from kattn.attention import group as group_attention
from kattn.positional import grid as grid_lib

# N(0, 2 / fan_in), the GSA-Nets reference initialisation of every 1 x 1 conv.
_KERNEL_INIT = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


class _CoordinateMLP(nn.Module):
  """One scalar coordinate -> `features`: Dense, LayerNorm, swish, Dense."""

  features: int
  hidden: int

  @nn.compact
  def __call__(self, coordinate: jax.Array) -> jax.Array:
    # A zero first bias would hand LayerNorm w * x, whose normalised value
    # depends on sign(x) alone; random biases make the code a smooth
    # function of the coordinate from the start.
    h = nn.Dense(
        self.hidden, kernel_init=_KERNEL_INIT,
        bias_init=nn.initializers.normal(1.0), name="hidden",
    )(coordinate[..., None])
    h = nn.swish(nn.LayerNorm(name="norm")(h))
    return nn.Dense(self.features, kernel_init=_KERNEL_INIT, name="out")(h)


class RelativePositionEncoder(nn.Module):
  """rho(delta): separate MLPs on the row and the column of each offset.

  Attributes:
    features: width of each MLP's output; the result has 2 * features.
    hidden: width of each MLP's hidden layer.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> encoder = RelativePositionEncoder(features=3)
    >>> offsets = jnp.zeros((4, 5, 5, 2))  # [order, P, P, (row, col)]
    >>> variables = encoder.init(jax.random.key(0), offsets)
    >>> encoder.apply(variables, offsets).shape
    (4, 5, 5, 6)

  References:
    Romero & Cordonnier, "Group Equivariant Stand-Alone Self-Attention For
    Vision", ICLR 2021.
  """

  features: int
  hidden: int = 16

  @nn.compact
  def __call__(self, acted_offsets: jax.Array) -> jax.Array:
    """Encodes offsets.

    Args:
      acted_offsets: `[..., 2]` normalised (row, col) offsets, e.g.
        `[order, P, P, 2]` acted on by every group element.

    Returns:
      `[..., 2 * features]`: the row code, then the column code.
    """
    _validation.check_positive_int("features", self.features)
    _validation.check_positive_int("hidden", self.hidden)
    if jnp.ndim(acted_offsets) < 1 or jnp.shape(acted_offsets)[-1] != 2:
      raise ValueError(
          "`acted_offsets` must be [..., 2] (row, col); got shape"
          f" {tuple(jnp.shape(acted_offsets))}."
      )
    row = _CoordinateMLP(self.features, self.hidden, name="row")
    col = _CoordinateMLP(self.features, self.hidden, name="col")
    return jnp.concatenate(
        [row(acted_offsets[..., 0]), col(acted_offsets[..., 1])], axis=-1
    )


def _check_grid(group, grid) -> tuple[int, int]:
  """Rotations need a square image; the trivial group and the mirror do not."""
  if group.rotations > 1:
    return groups_lib.check_square_grid(grid, name="x")
  return grid_lib.check_grid(grid, name="x")


def _head_dim(module, minimum: int, split: str) -> int:
  _validation.check_positive_int("features", module.features)
  _validation.check_positive_int("num_heads", module.num_heads)
  head_dim = (
      module.features // 2 if module.head_dim is None else module.head_dim
  )
  if isinstance(head_dim, bool) or not isinstance(head_dim, int) or (
      head_dim < minimum
  ):
    raise ValueError(
        f"`head_dim` (features // 2 when unset) must be an int >= {minimum},"
        f" {split}; got {head_dim!r}."
    )
  return head_dim


def _acted_offsets(group, grid, window) -> np.ndarray:
  """`[order, *table, 2]` float32 g^-1 delta, scaled into [-1, 1].

  One scale for both axes keeps the normalisation isotropic, so it commutes
  with the rotations.
  """
  if window is None:
    height, width = grid
    rows, cols = np.meshgrid(
        np.arange(1 - height, height), np.arange(1 - width, width),
        indexing="ij",
    )
    offsets, radius = np.stack([rows, cols], -1), max(height, width) - 1
  else:
    offsets, radius = group_attention.window_offsets(window), window // 2
  return groups_lib.acted_offsets(
      group, offsets / max(radius, 1)
  ).astype(np.float32)


def _relative_keys(encoding, head_dim: int, num_heads: int) -> jax.Array:
  """`[order, *table, 2 d_r]` codes -> `[order, *table, heads, head_dim]`.

  The codes fill the first channels of every head; the rest is zero.
  """
  pad = [(0, 0)] * (encoding.ndim - 1) + [(0, head_dim - encoding.shape[-1])]
  keys = jnp.pad(encoding, pad)[..., None, :]
  return jnp.broadcast_to(
      keys, keys.shape[:-2] + (num_heads, head_dim)
  )


def _projections(module, tokens, head_dim):
  """q, k, v: 1 x 1 convolutions to `[..., length, heads, head_dim]`."""
  shape = tokens.shape[:-1] + (module.num_heads, head_dim)
  return [
      nn.Dense(
          module.num_heads * head_dim, kernel_init=_KERNEL_INIT, name=name
      )(tokens).reshape(shape)
      for name in ("query", "key", "value")
  ]


class LiftingSelfAttention(nn.Module):
  """Lifting self-attention: images to group feature maps (GSA-Nets).

  1 x 1 projections to `num_heads` heads of `head_dim`, attention with one
  relative-position table per group element (`lifting_self_attention`),
  heads concatenated and projected to `features`. The table's first
  head_dim // 2 channels hold rho_row((g^-1 delta)_row), the next
  head_dim // 2 rho_col((g^-1 delta)_col), shared by all heads; offsets are
  scaled by window // 2 (local) or size - 1 (global). Logits are scaled by
  1 / sqrt(C_in), as in the reference code.

  Attributes:
    group: a name from `kattn.groups.GROUP_NAMES`.
    features: output channels.
    num_heads: heads (9 in the paper).
    head_dim: per-head width; defaults to features // 2.
    window: odd local window P, or None for global attention.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> layer = LiftingSelfAttention("p4", features=4, num_heads=2, window=3)
    >>> x = jnp.ones((1, 5, 5, 3))
    >>> variables = layer.init(jax.random.key(0), x)
    >>> layer.apply(variables, x).shape
    (1, 4, 5, 5, 4)

  References:
    Romero & Cordonnier, "Group Equivariant Stand-Alone Self-Attention For
    Vision", ICLR 2021.
  """

  group: str
  features: int
  num_heads: int = 9
  head_dim: int | None = None
  window: int | None = 9

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Lifts images.

    Args:
      x: `[*batch, H, W, C_in]` images (square for groups with rotations).

    Returns:
      `[*batch, order, H, W, features]` group feature maps.
    """
    group = groups_lib.get_group(self.group)
    _validation.check_min_rank("x", x, 3, "[*batch, H, W, C_in]")
    _validation.check_nonempty("x", x, -1, "have at least one channel")
    grid = _check_grid(group, x.shape[-3:-1])
    head_dim = _head_dim(
        self, 2, "so that the row and column codes get a channel each"
    )
    in_features = x.shape[-1]
    tokens = x.reshape(x.shape[:-3] + (grid[0] * grid[1], in_features))
    q, k, v = _projections(self, tokens, head_dim)
    encoding = RelativePositionEncoder(head_dim // 2, name="relative_position")(
        jnp.asarray(_acted_offsets(group, grid, self.window))
    )
    out = group_attention.lifting_self_attention(
        q, k, v, _relative_keys(encoding, head_dim, self.num_heads),
        grid=grid, window=self.window, scale=in_features ** -0.5,
    )
    out = out.reshape(out.shape[:-3] + grid + (self.num_heads * head_dim,))
    return nn.Dense(self.features, kernel_init=_KERNEL_INIT, name="out")(out)


class GroupSelfAttention(nn.Module):
  """Group self-attention: group feature maps to group feature maps (GSA-Nets).

  As `LiftingSelfAttention`, with queries and keys on (pixel, element)
  (`group_self_attention`): the first head_dim // 3 channels of a head carry
  the row code of v^-1 delta, the next head_dim // 3 the column code, and
  the remaining ones an `nn.Embed` of the relative group element g^-1 m
  (`relative_group_index`), shared by all heads. The softmax runs jointly
  over key pixels and key elements; the outputs are summed over the query
  element.

  Attributes:
    group: a name from `kattn.groups.GROUP_NAMES`.
    features: output channels.
    num_heads: heads (9 in the paper).
    head_dim: per-head width (>= 3); defaults to features // 2.
    window: odd local window P, or None for global attention.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> layer = GroupSelfAttention("p4", features=6, num_heads=2, window=3)
    >>> x = jnp.ones((1, 4, 5, 5, 3))
    >>> variables = layer.init(jax.random.key(0), x)
    >>> layer.apply(variables, x).shape
    (1, 4, 5, 5, 6)

  References:
    Romero & Cordonnier, "Group Equivariant Stand-Alone Self-Attention For
    Vision", ICLR 2021.
    Xu et al., "E(2)-Equivariant Vision Transformer", UAI 2023.
  """

  group: str
  features: int
  num_heads: int = 9
  head_dim: int | None = None
  window: int | None = 9

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Attends over a group feature map.

    Args:
      x: `[*batch, order, H, W, C_in]` (square for groups with rotations).

    Returns:
      `[*batch, order, H, W, features]`.
    """
    group = groups_lib.get_group(self.group)
    _validation.check_min_rank("x", x, 4, "[*batch, order, H, W, C_in]")
    _validation.check_nonempty("x", x, -1, "have at least one channel")
    if x.shape[-4] != group.order:
      raise ValueError(
          f"Axis -4 of `x` must hold the {group.order} elements of"
          f" {group.name!r}; got shape {tuple(x.shape)}."
      )
    grid = _check_grid(group, x.shape[-3:-1])
    head_dim = _head_dim(
        self, 3, "so that row, column and group codes get a channel each"
    )
    position_dim = head_dim // 3
    in_features = x.shape[-1]
    tokens = x.reshape(x.shape[:-3] + (grid[0] * grid[1], in_features))
    q, k, v = _projections(self, tokens, head_dim)
    encoding = RelativePositionEncoder(position_dim, name="relative_position")(
        jnp.asarray(_acted_offsets(group, grid, self.window))
    )
    embedding = nn.Embed(
        group.order, head_dim - 2 * position_dim, name="group_embedding"
    )(jnp.arange(group.order))
    group_keys = jnp.pad(embedding, ((0, 0), (2 * position_dim, 0)))
    group_keys = jnp.broadcast_to(
        group_keys[:, None], (group.order, self.num_heads, head_dim)
    )
    out = group_attention.group_self_attention(
        q, k, v, _relative_keys(encoding, head_dim, self.num_heads),
        group_keys, group_attention.relative_group_index(group), grid=grid,
        window=self.window, scale=in_features ** -0.5,
    )
    out = out.reshape(out.shape[:-3] + grid + (self.num_heads * head_dim,))
    return nn.Dense(self.features, kernel_init=_KERNEL_INIT, name="out")(out)
