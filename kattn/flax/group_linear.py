"""Group-equivariant linear attention layers (p4, p4m) as thin Linen modules.

`LiftingLinearAttention` takes an image and returns a group feature map, one
channel block per group element; `GroupLinearAttention` maps group feature
maps to group feature maps. Both wrap `kattn.attention.group_linear` (exact
by FFT, O(|G| L log L) in L pixels) with pointwise query, key, value and
output projections, so turning the input by u turns the output as the
regular representation, out'(g, p) = out(u^-1 g, u^-1 p), exactly for a fixed
random projection. A stack lifting -> group -> ... is equivariant too.

The kernel comes from the attention registry by name; random projections
live in the `"random_features"` collection as in
`kattn.flax.MultiHeadSelfAttention`, and `kattn.flax.redraw` redraws them.
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kattn import _validation
from kattn import groups as groups_lib
from kattn.attention import group_linear
from kattn.flax import attention as attention_lib
from kattn.flax import registry
from kattn.positional import toeplitz


POSITION_BIASES = ("table", "mlp")
_BIAS_MLP_HIDDEN = 16


class _GroupLinearBase(nn.Module):
  """Shared attributes and projections of the two layers."""

  group: str
  features: int
  num_heads: int = 4
  head_dim: Optional[int] = None
  attention: str = "favor"
  num_random_features: Optional[int] = None
  position_bias: str = "table"
  method: str = "auto"

  def _head_dim(self) -> int:
    _validation.check_positive_int("features", self.features)
    _validation.check_positive_int("num_heads", self.num_heads)
    if self.head_dim is not None:
      return _validation.check_positive_int("head_dim", self.head_dim)
    if self.features % self.num_heads:
      raise ValueError(
          f"`features` ({self.features}) must be divisible by `num_heads`"
          f" ({self.num_heads}) when `head_dim` is unset."
      )
    return self.features // self.num_heads

  def _check(self):
    """(kernel spec, head width), validated before any parameter exists."""
    if self.position_bias not in POSITION_BIASES:
      raise ValueError(
          f"`position_bias` must be one of {POSITION_BIASES}; got"
          f" {self.position_bias!r}."
      )
    return registry.get_kernel_attention(self.attention), self._head_dim()

  def _log_bias(self, grid) -> jax.Array:
    """The spatial log-bias table `[heads, 2H - 1, 2W - 1]`.

    "table": one free parameter per offset. "mlp": a small MLP of the
    offset normalised to [-1, 1] (as GSA-Nets' position encoder), a few
    hundred parameters whatever the image size. Either way the attention
    turns the table by each group element, so equivariance stays exact.
    """
    shape = toeplitz.relative_bias_shape(grid, mode="padded")
    if self.position_bias == "table":
      return self.param(
          "log_bias", nn.initializers.zeros, (self.num_heads,) + shape
      )
    height, width = grid
    rows, cols = np.meshgrid(
        np.arange(1 - height, height) / max(height - 1, 1),
        np.arange(1 - width, width) / max(width - 1, 1), indexing="ij",
    )
    offsets = jnp.asarray(np.stack([rows, cols], -1), jnp.float32)
    # Random first biases: with zeros, LayerNorm would see w . delta and
    # keep only the direction of the offset, not its length.
    hidden = nn.Dense(
        _BIAS_MLP_HIDDEN, bias_init=nn.initializers.normal(1.0),
        name="bias_mlp_in",
    )(offsets)
    hidden = nn.swish(nn.LayerNorm(name="bias_mlp_norm")(hidden))
    table = nn.Dense(
        self.num_heads, kernel_init=nn.initializers.zeros, name="bias_mlp_out"
    )(hidden)
    # A learned Gaussian window per head, -|delta|^2 / (2 sigma^2) in pixels,
    # sigma from 1 to 4 pixels at init: global attention starts local, as a
    # convolution, and may widen. From a zero table a FAVOR+ GSA-Net stayed
    # at 28% train accuracy on rotated digits after 700 steps (measured),
    # the positional signal being too weak to learn. |g^-1 delta| = |delta|,
    # so the window is invariant and equivariance stays exact.
    sigma = np.linspace(1.0, 4.0, self.num_heads)
    log_width = self.param(
        "bias_locality",
        lambda *_: jnp.asarray(np.log(0.5 / sigma**2), jnp.float32),
        (self.num_heads,),
    )
    squared = jnp.asarray(
        (rows * max(height - 1, 1))**2 + (cols * max(width - 1, 1))**2,
        jnp.float32,
    )
    table = table - jnp.exp(log_width) * squared[..., None]
    return jnp.moveaxis(table, -1, 0)

  def _attend(self, x, grid, spec, head_dim, attend):
    """Pointwise q, k, v, `attend(q, k, v, log_bias, feature_map)`, output.

    x is `[*batch, (order,) L, C]` tokens; returns `[*batch, order, L,
    features]`.
    """
    heads = (self.num_heads, head_dim)
    dense = lambda name, features, axis=-1: nn.DenseGeneral(
        features, axis=axis, name=name
    )
    q, k, v = (dense(name, heads)(x) for name in ("query", "key", "value"))
    log_bias = self._log_bias(grid)
    out = attend(q, k, v, log_bias, attention_lib.kernel_feature_map(
        self, spec, self.num_random_features, head_dim
    ))
    return dense("out", self.features, (-2, -1))(out)


def _check_images(x, min_rank, layout):
  _validation.check_min_rank("x", x, min_rank, layout)
  _validation.check_floating("x", x)
  _validation.check_nonempty("x", x, -1, "have at least one channel")
  return x.shape[-3], x.shape[-2]


class LiftingLinearAttention(_GroupLinearBase):
  """Lifts an image to a group feature map by equivariant linear attention.

  Output element g weighs the pixels with the spatial bias seen from g,
  c_S(g^-1 (p_j - p_i)), learned as one `[heads, 2H - 1, 2W - 1]` table
  (`"log_bias"`, zeros at init), times the kernel of `attention`
  (`kattn.attention.group_linear.group_lifting_feature_map_attention`).

  Attributes:
    group: "z2", "mz2", "p4" or "p4m".
    features: output channels per group element.
    num_heads: number of heads.
    head_dim: width of each head's queries, keys and values; defaults to
      features // num_heads.
    attention: a kernel attention from `kattn.flax.available_attentions()`
      (one with a feature map: not "softmax").
    num_random_features: projection rows m; None takes the attention's
      default.
    position_bias: the spatial log-bias, `"table"` (a free
      `[heads, 2H - 1, 2W - 1]` parameter, zeros at init) or `"mlp"` (a
      16-unit MLP of the normalised offset, zero at init, plus a learned
      Gaussian window per head, 1 to 4 pixels wide at init; far fewer
      parameters).
    method: `"auto"`, `"fft"` or `"dense"`: how the attention sums (see
      `kattn.attention.group_linear.group_feature_map_attention`).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> layer = LiftingLinearAttention("p4", features=8, num_heads=2,
    ...                                num_random_features=16)
    >>> x = jnp.ones((2, 5, 5, 3))
    >>> variables = layer.init(jax.random.key(0), x)
    >>> variables["params"]["log_bias"].shape
    (2, 9, 9)
    >>> layer.apply(variables, x).shape
    (2, 4, 5, 5, 8)

  References:
    Romero & Cordonnier, "Group Equivariant Stand-Alone Self-Attention for
    Vision", ICLR 2021.
  """

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Attends over the pixels.

    Args:
      x: `[*batch, H, W, C]` images, square when the group has rotations.

    Returns:
      `[*batch, order, H, W, features]` group feature maps.
    """
    spec, head_dim = self._check()
    grid = _check_images(x, 3, "[*batch, H, W, C]")
    group = groups_lib.as_group(self.group)
    tokens = x.reshape(x.shape[:-3] + (grid[0] * grid[1], x.shape[-1]))
    out = self._attend(
        tokens, grid, spec, head_dim,
        lambda q, k, v, log_bias, feature_map: (
            group_linear.group_lifting_feature_map_attention(
                q, k, v, log_bias, group=group, feature_map=feature_map,
                grid=grid, method=self.method,
            )
        ),
    )
    return out.reshape(out.shape[:-2] + grid + out.shape[-1:])


class GroupLinearAttention(_GroupLinearBase):
  """Group-equivariant linear attention between group feature maps.

  Every (pixel, element) token attends to all others, with the kernel of
  `attention` times c_S(g^-1 (p_j - p_i)) c_G(g^-1 m): a spatial table
  (`"log_bias"`, `[heads, 2H - 1, 2W - 1]`) and a table over relative group
  elements (`"group_log_bias"`, `[heads, order]`), both zeros at init
  (`kattn.attention.group_linear.group_feature_map_attention`).

  Attributes:
    group: "z2", "mz2", "p4" or "p4m".
    features: output channels per group element.
    num_heads: number of heads.
    head_dim: width of each head's queries, keys and values; defaults to
      features // num_heads.
    attention: a kernel attention from `kattn.flax.available_attentions()`
      (one with a feature map: not "softmax").
    num_random_features: projection rows m; None takes the attention's
      default.
    position_bias: the spatial log-bias, `"table"` (a free
      `[heads, 2H - 1, 2W - 1]` parameter, zeros at init) or `"mlp"` (a
      16-unit MLP of the normalised offset, zero at init, plus a learned
      Gaussian window per head, 1 to 4 pixels wide at init; far fewer
      parameters).
    method: `"auto"`, `"fft"` or `"dense"`: how the attention sums (see
      `kattn.attention.group_linear.group_feature_map_attention`).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> layer = GroupLinearAttention("p4m", features=4, num_heads=2,
    ...                              attention="elu")
    >>> x = jnp.ones((8, 3, 3, 5))
    >>> variables = layer.init(jax.random.key(0), x)
    >>> variables["params"]["group_log_bias"].shape
    (2, 8)
    >>> layer.apply(variables, x).shape
    (8, 3, 3, 4)

  References:
    Romero & Cordonnier, "Group Equivariant Stand-Alone Self-Attention for
    Vision", ICLR 2021.
  """

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Attends over the pixels and group elements.

    Args:
      x: `[*batch, order, H, W, C]` group feature maps, square when the
        group has rotations.

    Returns:
      `[*batch, order, H, W, features]` group feature maps.
    """
    spec, head_dim = self._check()
    grid = _check_images(x, 4, "[*batch, order, H, W, C]")
    group = groups_lib.as_group(self.group)
    if x.shape[-4] != group.order:
      raise ValueError(
          f"`x` axis -4 must hold the {group.order} elements of group"
          f" {group.name!r} ([*batch, order, H, W, C]); got shape"
          f" {tuple(x.shape)}."
      )
    group_log_bias = self.param(
        "group_log_bias", nn.initializers.zeros, (self.num_heads, group.order)
    )
    tokens = x.reshape(x.shape[:-3] + (grid[0] * grid[1], x.shape[-1]))
    out = self._attend(
        tokens, grid, spec, head_dim,
        lambda q, k, v, log_bias, feature_map: (
            group_linear.group_feature_map_attention(
                q, k, v, log_bias, group_log_bias, group=group,
                feature_map=feature_map, grid=grid, method=self.method,
            )
        ),
    )
    return out.reshape(out.shape[:-2] + grid + out.shape[-1:])
