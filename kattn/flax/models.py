"""Transformer blocks and a small Vision Transformer with attention by name.

`VisionTransformer(patch_size=1)` turns every pixel into a token: with a
linear attention such as `"favor"` this is the Performer on pixels, whose cost
grows linearly with the number of pixels.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from kattn import _validation
from kattn.flax import attention as attention_lib
from kattn.flax import registry
from kattn.flax import relative as relative_lib
from kattn.positional import absolute

_POSITION_EMBEDDINGS = ("learned", "sinusoid", "none")


class EncoderBlock(nn.Module):
  """Pre-norm Transformer encoder block.

  x + Dropout(MHSA(LN(x))), then x + Dropout(MLP(LN(x))) with
  MLP = Dense(mlp_dim) -> gelu -> Dropout -> Dense(width).

  Attributes:
    num_heads: attention heads; must divide the input width.
    mlp_dim: hidden width of the MLP.
    attention: a name from `kattn.flax.available_attentions()`.
    num_random_features: projection rows for random-feature attentions; None
      takes the attention's default.
    causal: token i attends to tokens j <= i only.
    dropout_rate: dropout after the attention, inside and after the MLP.
    dtype: computation dtype; None infers it from the inputs and params.
    param_dtype: dtype of the parameters.
    relative_position: None for position-free attention
      (`MultiHeadSelfAttention`), or a mode of
      `kattn.flax.RelativeSelfAttention` (then `grid` must be given).
    num_scales, position_frequencies, max_period, content_conditional,
      max_distance, relative_method, bias_init: options of `RelativeSelfAttention`.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> block = EncoderBlock(num_heads=2, mlp_dim=32, attention="relu")
    >>> x = jnp.ones((2, 5, 16))
    >>> block.apply(block.init(jax.random.key(0), x), x).shape
    (2, 5, 16)
  """

  num_heads: int
  mlp_dim: int
  attention: str = "favor"
  num_random_features: Optional[int] = None
  causal: bool = False
  dropout_rate: float = 0.0
  dtype: Any = None
  param_dtype: Any = jnp.float32
  relative_position: Optional[str] = None
  num_scales: int = 4
  position_frequencies: str = "geometric"
  max_period: Optional[float] = None
  content_conditional: bool = False
  max_distance: int = 4
  relative_method: str = "auto"
  bias_init: str = "local"

  @nn.compact
  def __call__(
      self, x: jax.Array, *, grid=None, deterministic: bool = True
  ) -> jax.Array:
    """Applies the block.

    Args:
      x: `[*batch, length, width]` tokens.
      grid: `(height, width)` of the token grid, for relative positions.
      deterministic: if False, applies dropout with the `"dropout"` rng.

    Returns:
      `[*batch, length, width]` tokens.
    """
    _validation.check_positive_int("mlp_dim", self.mlp_dim)
    norm = lambda name: nn.LayerNorm(
        dtype=self.dtype, param_dtype=self.param_dtype, name=name
    )
    dense = lambda features, name: nn.Dense(
        features, dtype=self.dtype, param_dtype=self.param_dtype, name=name
    )
    dropout = lambda y: nn.Dropout(self.dropout_rate)(
        y, deterministic=deterministic
    )

    y = norm("attention_norm")(x)
    if self.relative_position is None:
      y = attention_lib.MultiHeadSelfAttention(
          num_heads=self.num_heads, attention=self.attention,
          num_random_features=self.num_random_features, causal=self.causal,
          dtype=self.dtype, param_dtype=self.param_dtype, name="attention",
      )(y, deterministic=deterministic)
    else:
      if self.causal:
        raise ValueError(
            "`causal` attention with `relative_position` is not supported:"
            " relative positions here act on a 2-D grid of image tokens."
        )
      if grid is None:
        raise ValueError(
            f"`grid` must be given with relative_position="
            f"{self.relative_position!r}."
        )
      y = relative_lib.RelativeSelfAttention(
          num_heads=self.num_heads,
          relative_position=self.relative_position,
          attention=self.attention,
          num_random_features=self.num_random_features,
          num_scales=self.num_scales,
          position_frequencies=self.position_frequencies,
          max_period=self.max_period,
          content_conditional=self.content_conditional,
          max_distance=self.max_distance,
          relative_method=self.relative_method, bias_init=self.bias_init,
          dtype=self.dtype,
          param_dtype=self.param_dtype, name="attention",
      )(y, grid=grid, deterministic=deterministic)
    x = x + dropout(y)

    y = norm("mlp_norm")(x)
    y = dropout(nn.gelu(dense(self.mlp_dim, "mlp_in")(y)))
    y = dense(x.shape[-1], "mlp_out")(y)
    return x + dropout(y)


class VisionTransformer(nn.Module):
  """A small ViT-style image classifier with attention picked by name.

  Non-overlapping `patch_size` x `patch_size` patches are embedded by a
  strided convolution, optionally prefixed by a learned class token and given
  learned position embeddings, passed through `depth` pre-norm encoder blocks
  and a final LayerNorm, pooled (class token or mean) and classified.

  Attributes:
    num_classes: number of output logits.
    width: token width.
    depth: number of encoder blocks.
    num_heads: attention heads; must divide `width`.
    mlp_dim: hidden width of the MLPs.
    patch_size: side of the square patches; 1 makes every pixel a token.
    attention: a name from `kattn.flax.available_attentions()`.
    num_random_features: projection rows for random-feature attentions; None
      takes the attention's default.
    use_cls_token: pool with a learned class token; otherwise mean-pool the
      tokens.
    position_embedding: absolute positions added to the tokens: `"learned"`
      (one learned vector per token), `"sinusoid"` (fixed 2-D sinusoids of
      the patch grid, `kattn.positional.sinusoid_position_embedding`) or
      `"none"`.
    relative_position: None, or a mode of `kattn.flax.RelativeSelfAttention`
      used in every block. With `position_embedding="none"` and mean pooling
      (`use_cls_token=False`), `"fft_torus"` makes the logits exactly
      invariant to circular shifts of the image by multiples of
      `patch_size`; `"constrained_sinusoid"` also takes a class token, with a
      zero position code.
    num_scales, position_frequencies, max_period, content_conditional,
      max_distance, relative_method, bias_init: options of the relative positions (see
      `RelativeSelfAttention`).
    dropout_rate: dropout after the embeddings and inside the blocks.
    dtype: computation dtype; logits are always float32.
    param_dtype: dtype of the parameters.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> model = VisionTransformer(num_classes=5, width=16, depth=1,
    ...                           num_heads=2, mlp_dim=32,
    ...                           num_random_features=16)
    >>> images = jnp.zeros((2, 8, 8, 3))
    >>> variables = model.init(jax.random.key(0), images)
    >>> model.apply(variables, images).shape
    (2, 5)

  References:
    Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021.
    Choromanski et al., "Rethinking Attention with Performers", ICLR 2021.
  """

  num_classes: int
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  patch_size: int = 4
  attention: str = "favor"
  num_random_features: Optional[int] = None
  use_cls_token: bool = True
  position_embedding: str = "learned"
  relative_position: Optional[str] = None
  num_scales: int = 4
  position_frequencies: str = "geometric"
  max_period: Optional[float] = None
  content_conditional: bool = False
  max_distance: int = 4
  relative_method: str = "auto"
  bias_init: str = "local"
  dropout_rate: float = 0.0
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(
      self, images: jax.Array, *, deterministic: bool = True
  ) -> jax.Array:
    """Classifies images.

    Args:
      images: `[batch, height, width, channels]`, height and width divisible
        by `patch_size`.
      deterministic: if False, applies dropout with the `"dropout"` rng.

    Returns:
      `[batch, num_classes]` float32 logits.
    """
    # Every field is checked before the first layer: a zero width or class
    # count would otherwise reach an initialiser's fan-in as a division by
    # zero.
    for name in ("num_classes", "width", "depth", "num_heads", "mlp_dim",
                 "patch_size"):
      _validation.check_positive_int(name, getattr(self, name))
    _validation.check_optional_positive_int(
        "num_random_features", self.num_random_features
    )
    if self.width % self.num_heads:
      raise ValueError(
          f"`width` ({self.width}) must be divisible by `num_heads`; got"
          f" num_heads={self.num_heads}."
      )
    batch, height, width, _ = _validation.check_images(images)
    if height % self.patch_size or width % self.patch_size:
      raise ValueError(
          f"`patch_size` ({self.patch_size}) must divide the image height and"
          f" width; got images of shape {tuple(images.shape)}."
      )
    if self.position_embedding not in _POSITION_EMBEDDINGS:
      raise ValueError(
          f"`position_embedding` must be one of {list(_POSITION_EMBEDDINGS)};"
          f" got {self.position_embedding!r}."
      )
    if self.relative_position is not None:
      relative_lib.check_relative_position(self.relative_position)
      if self.use_cls_token and self.relative_position in relative_lib.GRID_ONLY:
        raise ValueError(
            f"relative_position={self.relative_position!r} has no position"
            " for a class token; set use_cls_token=False (mean pooling)."
        )
    grid = (height // self.patch_size, width // self.patch_size)

    x = nn.Conv(
        self.width, (self.patch_size, self.patch_size),
        strides=(self.patch_size, self.patch_size), padding="VALID",
        dtype=self.dtype, param_dtype=self.param_dtype, name="embedding",
    )(images)
    # The token count is spelt out: a -1 cannot be inferred for a batch of 0.
    x = x.reshape(batch, grid[0] * grid[1], self.width)
    if self.position_embedding == "sinusoid":
      x = x + absolute.sinusoid_position_embedding(grid, self.width).astype(
          x.dtype
      )
    if self.use_cls_token:
      cls = self.param(
          "cls", nn.initializers.zeros, (1, 1, self.width), self.param_dtype
      )
      cls = jnp.broadcast_to(cls, (batch, 1, self.width)).astype(x.dtype)
      x = jnp.concatenate([cls, x], axis=1)
    if self.position_embedding == "learned":
      positions = self.param(
          "pos_embedding", nn.initializers.normal(stddev=0.02),
          (1,) + x.shape[1:], self.param_dtype,
      )
      x = x + positions.astype(x.dtype)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)

    for i in range(self.depth):
      x = EncoderBlock(
          num_heads=self.num_heads, mlp_dim=self.mlp_dim,
          attention=self.attention,
          num_random_features=self.num_random_features,
          dropout_rate=self.dropout_rate, dtype=self.dtype,
          param_dtype=self.param_dtype,
          relative_position=self.relative_position,
          num_scales=self.num_scales,
          position_frequencies=self.position_frequencies,
          max_period=self.max_period,
          content_conditional=self.content_conditional,
          max_distance=self.max_distance,
          relative_method=self.relative_method, bias_init=self.bias_init,
          name=f"encoderblock_{i}",
      )(x, grid=grid, deterministic=deterministic)
    x = nn.LayerNorm(
        dtype=self.dtype, param_dtype=self.param_dtype, name="encoder_norm"
    )(x)

    x = x[:, 0] if self.use_cls_token else jnp.mean(x, axis=1)
    logits = nn.Dense(
        self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
        name="head",
    )(x)
    return logits.astype(jnp.float32)


registry.register_model("vit", VisionTransformer)
