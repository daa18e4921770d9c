"""GSA-Net: a rotation (and flip) invariant classifier of group self-attention.

A lifting self-attention layer maps the image to a group feature map
`[batch, |G|, H, W, C]`; residual blocks of group self-attention follow, with
2 x 2 max-pooling between stages and symmetric crops; the head is a norm
and a 1 x 1 layer to the classes, averaged over space and maxed over the
group, so the logits are invariant to every element of the group that maps pixels to pixels
(all of p4 and p4m). Every piece commutes with the group action: the norm is
taken over all of (group, space, channels) of a sample, crops remove the same
border on every side, and pools tile even sizes symmetrically.

`attention` picks the layers: `"local"` (GSA-Nets' windows), `"global"`
(every pixel, quadratic), or the name of a kernel attention from
`kattn.flax.available_attentions()` (e.g. `"favor"`), which uses the
group-equivariant linear attention of `kattn.attention.group_linear`.
"""

from __future__ import annotations

from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kattn import _validation
from kattn import groups as groups_lib
from kattn.flax import group as group_layers
from kattn.flax import group_linear
from kattn.flax import registry

QUADRATIC_ATTENTIONS = ("local", "global")


def _crop(x: jax.Array, pixels: int) -> jax.Array:
  """Removes `pixels` from every side of the spatial axes (-3, -2)."""
  if pixels == 0:
    return x
  return x[..., pixels:-pixels, pixels:-pixels, :]


def _max_pool(x: jax.Array) -> jax.Array:
  """2 x 2 max-pool, stride 2, of `[*batch, H, W, C]` with H and W even."""
  height, width = x.shape[-3:-1]
  if height % 2 or width % 2:
    raise ValueError(
        "2 x 2 pooling needs an even image size to commute with rotations;"
        f" got {height} x {width}. Change `crops` or the input size."
    )
  x = x.reshape(x.shape[:-3] + (height // 2, 2, width // 2, 2, x.shape[-1]))
  return jnp.max(x, axis=(-4, -2))


def _norm(name: str) -> nn.Module:
  """GroupNorm with one group: statistics over (group, H, W, C) per sample."""
  return nn.LayerNorm(
      reduction_axes=(-4, -3, -2, -1), feature_axes=-1, name=name
  )


def _dense(features: int, name: str) -> nn.Dense:
  # The reference's init: N(0, 2 / fan_in) weights, zero biases.
  return nn.Dense(
      features, kernel_init=nn.initializers.variance_scaling(
          2.0, "fan_in", "normal"), name=name,
  )


class _AttentionLayers(nn.Module):
  """Shared choice of lifting and group layers by `attention`."""

  group: str
  attention: str
  num_heads: int
  head_dim: Optional[int]
  window: Optional[int]
  num_random_features: Optional[int]
  position_bias: str

  def lifting(self, features: int, name: str) -> nn.Module:
    if self.attention in QUADRATIC_ATTENTIONS:
      return group_layers.LiftingSelfAttention(
          group=self.group, features=features, num_heads=self.num_heads,
          head_dim=self.head_dim,
          window=self.window if self.attention == "local" else None, name=name,
      )
    return group_linear.LiftingLinearAttention(
        group=self.group, features=features, num_heads=self.num_heads,
        head_dim=self.head_dim, attention=self.attention,
        num_random_features=self.num_random_features,
        position_bias=self.position_bias, name=name,
    )

  def group_layer(self, features: int, name: str) -> nn.Module:
    if self.attention in QUADRATIC_ATTENTIONS:
      return group_layers.GroupSelfAttention(
          group=self.group, features=features, num_heads=self.num_heads,
          head_dim=self.head_dim,
          window=self.window if self.attention == "local" else None, name=name,
      )
    return group_linear.GroupLinearAttention(
        group=self.group, features=features, num_heads=self.num_heads,
        head_dim=self.head_dim, attention=self.attention,
        num_random_features=self.num_random_features,
        position_bias=self.position_bias, name=name,
    )


class GroupAttentionBlock(_AttentionLayers):
  """Norm, swish, group attention, norm, swish, dropout; then an MLP.

  Both halves are residual; the shortcut is cropped like the attention's
  output (`crop` pixels per side) so the two line up.

  Attributes:
    crop: pixels removed from every side after the attention.
    dropout_rate: dropout on the attention output.
  """

  crop: int = 0
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, *, deterministic: bool = True) -> jax.Array:
    """`[*batch, |G|, H, W, C]` -> `[*batch, |G|, H - 2 crop, W - 2 crop, C]`."""
    channels = x.shape[-1]
    y = nn.swish(_norm("norm_in")(x))
    y = self.group_layer(channels, "attention")(y)
    y = nn.swish(_norm("norm_attention")(y))
    y = nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
    x = _crop(x, self.crop) + _crop(y, self.crop)
    y = _dense(max(channels // 2, 1), "mlp_in")(x)
    y = nn.swish(_norm("norm_mlp")(y))
    y = _norm("norm_out")(_dense(channels, "mlp_out")(y))
    return x + y


class GSANet(_AttentionLayers):
  """Group self-attention network; logits invariant under `group`.

  Attributes:
    num_classes: number of logits.
    group: a name from `kattn.groups.GROUP_NAMES` (`"z2"` gives the plain
      translation-equivariant network with the same parameters).
    channels: width C of every layer.
    stages: per stage, the crop of each block; a 2 x 2 max-pool follows every
      stage but the last. GSA-Nets' rotMNIST net is `((2, 0), (2, 1, 1))`
      (28 -> 24 -> 12 -> 8 -> 6 -> 4).
    pool_input: a 2 x 2 max-pool of the image before the lifting layer,
      to make pixel attention affordable on a CPU.
    pool_after_lifting: a 2 x 2 max-pool right after the lifting layer.
    attention: `"local"`, `"global"` or a kernel attention name (linear).
    num_heads, head_dim: heads and their width (default `channels // 2`).
    window: side of the local windows (odd).
    num_random_features: features of random-feature kernels.
    position_bias: the linear layers' spatial bias, `"mlp"` or `"table"`
      (see `kattn.flax.LiftingLinearAttention`).
    dropout_rate: dropout inside the blocks.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> net = GSANet(num_classes=3, group="p4", channels=4, num_heads=2,
    ...              head_dim=4, window=3, stages=((1,), (0,)))
    >>> x = jnp.zeros((2, 8, 8, 1))
    >>> variables = net.init(jax.random.key(0), x)
    >>> net.apply(variables, x).shape
    (2, 3)

  References:
    Romero and Cordonnier, "Group Equivariant Stand-Alone Self-Attention for
    Vision", ICLR 2021.
  """

  num_classes: int = 10
  group: str = "p4"
  channels: int = 20
  stages: Sequence[Sequence[int]] = ((2, 0), (2, 1, 1))
  pool_input: bool = False
  pool_after_lifting: bool = False
  attention: str = "local"
  num_heads: int = 9
  head_dim: Optional[int] = None
  window: Optional[int] = 9
  num_random_features: Optional[int] = None
  position_bias: str = "mlp"
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(
      self, images: jax.Array, *, deterministic: bool = True
  ) -> jax.Array:
    """`[batch, H, W, C]` square images -> `[batch, num_classes]` logits."""
    group = groups_lib.get_group(self.group)
    # Checked first: a zero count would reach an initialiser's fan-in as a
    # division by zero.
    for name in ("num_classes", "channels"):
      _validation.check_positive_int(name, getattr(self, name))
    _validation.check_images(images)
    if group.rotations > 1:
      groups_lib.check_square_grid(images.shape[1:3], name="image size")
    if self.pool_input:
      images = _max_pool(images)
    x = self.lifting(self.channels, "lifting")(images)
    x = nn.swish(_norm("norm_lifting")(x))
    if self.pool_after_lifting:
      x = _max_pool(x)
    for s, crops in enumerate(self.stages):
      if s:
        x = _max_pool(x)
      for b, crop in enumerate(crops):
        if crop < 0 or 2 * crop >= x.shape[-2]:
          raise ValueError(
              f"`stages` crop {crop} of block {b} in stage {s} does not fit"
              f" the {x.shape[-3]} x {x.shape[-2]} feature map."
          )
        x = GroupAttentionBlock(
            group=self.group, attention=self.attention,
            num_heads=self.num_heads, head_dim=self.head_dim,
            window=self.window, num_random_features=self.num_random_features,
            position_bias=self.position_bias, crop=crop,
            dropout_rate=self.dropout_rate,
            name=f"stage{s}_block{b}",
        )(x, deterministic=deterministic)
    x = nn.swish(_norm("norm_head")(x))
    # Mean over space where GSA-Nets sum: the same invariance, but logits of
    # order one at init (summing 4 x 4 positions started our runs at a loss
    # of ~50, which the first hundred steps only spent undoing).
    x = _dense(self.num_classes, "head")(x)
    logits = jnp.max(jnp.mean(x, axis=(-3, -2)), axis=-2)
    return logits.astype(jnp.float32)


registry.register_model("gsa_net", GSANet)
