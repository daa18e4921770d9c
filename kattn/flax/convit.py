"""ConViT: gated positional self-attention blocks, then a class token and MHSA.

`GatedPositionalSelfAttention` owns the projections, the `[heads, 3]`
positional weights and the `[heads]` gates, and calls
`kattn.attention.gpsa`: the quadratic GPSA for `attention="softmax"`, or the
linear-cost form (kernel features for the content term, the exact separable
or FFT positional term) for a kernel attention such as `"favor"`.

`ConViT` is the reference's architecture: patch embedding plus learned
absolute positions, `local_up_to_layer` GPSA blocks on the patch grid, then
a class token and plain multi-head self-attention blocks, a final LayerNorm
and a linear head on the class token. `DeiT` (`deit`) is the same network
with no GPSA block: the baseline of matched size.

Attention maps of the quadratic layers are sown into the `"intermediates"`
collection when it is mutable, for `attention_maps` and the nonlocality
metric (`layer_nonlocality`).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kattn import _validation
from kattn.attention import gpsa
from kattn.flax import attention as attention_lib
from kattn.flax import registry

# Sizes of the reference (per-head width x heads), depth 12, patch 16.
CONVIT_SIZES = {
    "tiny": dict(num_heads=4, head_dim=48),
    "small": dict(num_heads=9, head_dim=48),
    "base": dict(num_heads=16, head_dim=48),
    "tiny_plus": dict(num_heads=4, head_dim=64),
    "small_plus": dict(num_heads=9, head_dim=64),
    "base_plus": dict(num_heads=16, head_dim=64),
}
ATTENTION_WEIGHTS = "attention_weights"
_TRUNC_NORMAL = nn.initializers.truncated_normal(stddev=0.02)
_LN_EPSILON = 1e-6


def _projection(name, features, axis, use_bias, init, dtype, param_dtype):
  return nn.DenseGeneral(
      features, axis=axis, use_bias=use_bias, kernel_init=init, dtype=dtype,
      param_dtype=param_dtype, name=name,
  )


class GatedPositionalSelfAttention(nn.Module):
  """Multi-head GPSA over the patch tokens of a row-major grid.

  Parameters: `query`, `key`, `value` (no biases) and `out` projections, the
  positional weights `position_weights [heads, 3]` and the gates
  `gate_logits [heads]`. The reference's positional projection also has a
  bias; it adds one constant to all of a head's positional logits, which
  its softmax removes, so it is not a parameter here.

  Attributes:
    num_heads: heads; a perfect square when `use_local_init`.
    attention: `"softmax"` (quadratic GPSA) or the name of a registered
      kernel attention with a feature map (e.g. `"favor"`), which gives the
      linear-cost GPSA.
    num_random_features: projection rows for random-feature kernels; None
      takes the attention's default.
    positional_method: `"separable"` or `"fft"`, for the linear form (see
      `kattn.attention.gpsa.linear_gated_positional_self_attention`).
    use_local_init: the reference's locality initialisation: identity value
      projection, gates lambda = 1, positional weights of
      `locality_position_weights`. Otherwise the positional weights are
      drawn N(0, 0.02^2) and the value projection as the others.
    locality_strength: alpha of the locality initialisation.
    dropout_rate: dropout on the attention output before `out`.
    dtype, param_dtype: computation and parameter dtypes.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> layer = GatedPositionalSelfAttention(num_heads=4)
    >>> x = jnp.ones((2, 16, 8))
    >>> variables = layer.init(jax.random.key(0), x, grid=(4, 4))
    >>> variables["params"]["position_weights"].shape
    (4, 3)
    >>> layer.apply(variables, x, grid=(4, 4)).shape
    (2, 16, 8)

  References:
    d'Ascoli et al., "ConViT", ICML 2021.
  """

  num_heads: int
  attention: str = "softmax"
  num_random_features: Optional[int] = None
  positional_method: str = "separable"
  use_local_init: bool = True
  locality_strength: float = 1.0
  dropout_rate: float = 0.0
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(
      self, x: jax.Array, *, grid, deterministic: bool = True
  ) -> jax.Array:
    """Attends over the patch tokens.

    Args:
      x: `[*batch, L, width]` patch tokens, row-major on `grid`, no class
        token.
      grid: `(height, width)` of the patch grid.
      deterministic: if False, applies dropout with the `"dropout"` rng.

    Returns:
      `[*batch, L, width]` outputs.
    """
    _validation.check_tokens("x", x)
    _validation.check_positive_int("num_heads", self.num_heads)
    width = x.shape[-1]
    if width % self.num_heads:
      raise ValueError(
          f"The input width ({width}) must be divisible by `num_heads`; got"
          f" num_heads={self.num_heads}."
      )
    grid = tuple(grid)
    head_dim = width // self.num_heads
    spec = (None if self.attention == "softmax"
            else registry.get_kernel_attention(self.attention))
    gpsa._check_positional_method(self.positional_method)  # pylint: disable=protected-access
    if self.use_local_init:
      position_init = lambda *_: jnp.asarray(gpsa.locality_position_weights(
          self.num_heads, locality_strength=self.locality_strength
      ), self.param_dtype)
      value_init = lambda _, shape, dtype: jnp.eye(
          width, dtype=dtype
      ).reshape(shape)
    else:
      position_init = nn.initializers.normal(stddev=0.02)
      value_init = _TRUNC_NORMAL

    heads = (self.num_heads, head_dim)
    proj = lambda name, init: _projection(
        name, heads, -1, False, init, self.dtype, self.param_dtype
    )(x)
    q, k, v = proj("query", _TRUNC_NORMAL), proj("key", _TRUNC_NORMAL), proj(
        "value", value_init
    )
    position_weights = self.param(
        "position_weights", position_init, (self.num_heads, 3),
        self.param_dtype,
    )
    gate_logits = self.param(
        "gate_logits", nn.initializers.ones, (self.num_heads,),
        self.param_dtype,
    )

    feature_map = None
    if spec is not None:
      feature_map = attention_lib.kernel_feature_map(
          self, spec, self.num_random_features, head_dim
      )
      out = gpsa.linear_gated_positional_self_attention(
          q, k, v, position_weights, gate_logits, feature_map=feature_map,
          grid=grid, positional_method=self.positional_method,
      )
    else:
      out = gpsa.gated_positional_self_attention(
          q, k, v, position_weights, gate_logits, grid=grid
      )
    if self.is_mutable_collection("intermediates"):
      self.sow("intermediates", ATTENTION_WEIGHTS, gpsa.gpsa_attention_weights(
          q, k, position_weights, gate_logits, grid=grid,
          feature_map=feature_map,
      ))
    out = nn.Dropout(self.dropout_rate)(out, deterministic=deterministic)
    return _projection(
        "out", width, (-2, -1), True, _TRUNC_NORMAL, self.dtype,
        self.param_dtype,
    )(out)


class ConViTBlock(nn.Module):
  """Pre-norm block: x + DropPath(attention(LN x)), x + DropPath(MLP(LN x)).

  The attention is GPSA on the patch grid when `gated`, else multi-head
  self-attention (`kattn.flax.MultiHeadSelfAttention`) over all tokens.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> block = ConViTBlock(num_heads=4, mlp_dim=32, gated=True)
    >>> x = jnp.ones((2, 9, 16))
    >>> v = block.init(jax.random.key(0), x, grid=(3, 3))
    >>> block.apply(v, x, grid=(3, 3)).shape
    (2, 9, 16)
  """

  num_heads: int
  mlp_dim: int
  gated: bool
  attention: str = "softmax"
  num_random_features: Optional[int] = None
  positional_method: str = "separable"
  use_local_init: bool = True
  locality_strength: float = 1.0
  dropout_rate: float = 0.0
  drop_path_rate: float = 0.0
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, grid=None, deterministic: bool = True):
    _validation.check_positive_int("mlp_dim", self.mlp_dim)
    norm = lambda name: nn.LayerNorm(
        epsilon=_LN_EPSILON, dtype=self.dtype, param_dtype=self.param_dtype,
        name=name,
    )
    dense = lambda features, name: nn.Dense(
        features, kernel_init=_TRUNC_NORMAL, dtype=self.dtype,
        param_dtype=self.param_dtype, name=name,
    )
    # Stochastic depth: one keep/drop draw per sample, rescaled.
    drop_path = lambda y: nn.Dropout(
        self.drop_path_rate, broadcast_dims=tuple(range(1, y.ndim))
    )(y, deterministic=deterministic)

    y = norm("attention_norm")(x)
    if self.gated:
      y = GatedPositionalSelfAttention(
          num_heads=self.num_heads, attention=self.attention,
          num_random_features=self.num_random_features,
          positional_method=self.positional_method,
          use_local_init=self.use_local_init,
          locality_strength=self.locality_strength,
          dropout_rate=self.dropout_rate, dtype=self.dtype,
          param_dtype=self.param_dtype, name="attention",
      )(y, grid=grid, deterministic=deterministic)
    else:
      y = attention_lib.MultiHeadSelfAttention(
          num_heads=self.num_heads, attention=self.attention,
          num_random_features=self.num_random_features,
          dropout_rate=self.dropout_rate, dtype=self.dtype,
          param_dtype=self.param_dtype, name="attention",
      )(y, deterministic=deterministic)
    x = x + drop_path(y)
    y = norm("mlp_norm")(x)
    y = nn.Dropout(self.dropout_rate)(
        nn.gelu(dense(self.mlp_dim, "mlp_in")(y), approximate=False),
        deterministic=deterministic,
    )
    y = nn.Dropout(self.dropout_rate)(
        dense(x.shape[-1], "mlp_out")(y), deterministic=deterministic
    )
    return x + drop_path(y)


class ConViT(nn.Module):
  """ConViT image classifier (DeiT backbone with GPSA in the first blocks).

  Width = `num_heads * head_dim` (the reference's sizes are in
  `CONVIT_SIZES`: Ti 4 x 48, S 9 x 48, B 16 x 48, depth 12, patch 16,
  `local_up_to_layer=10`).

  Attributes:
    num_classes: output logits.
    num_heads: heads of every block; a perfect square with
      `use_local_init`.
    head_dim: width per head.
    depth: blocks.
    local_up_to_layer: blocks 0 .. local_up_to_layer - 1 are GPSA on the
      patch grid; the class token is inserted before block
      `local_up_to_layer`, which must be < depth. 0 gives DeiT.
    patch_size: side of the square patches.
    mlp_ratio: MLP hidden width over the token width.
    attention: `"softmax"`, or a kernel attention name (e.g. `"favor"`):
      then the GPSA blocks are linear-cost and the MHSA blocks use the same
      kernel, so no layer forms an L x L matrix.
    num_random_features, positional_method: see
      `GatedPositionalSelfAttention`.
    use_local_init, locality_strength: the locality initialisation.
    dropout_rate: dropout after the embeddings and in the blocks.
    drop_path_rate: stochastic depth, rising linearly to this over the
      blocks (the reference uses 0.1).
    dtype, param_dtype: computation and parameter dtypes; logits are
      float32.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> model = ConViT(num_classes=10, num_heads=4, head_dim=8, depth=2,
    ...                local_up_to_layer=1, patch_size=4)
    >>> images = jnp.zeros((2, 16, 16, 1))
    >>> variables = model.init(jax.random.key(0), images)
    >>> model.apply(variables, images).shape
    (2, 10)

  References:
    d'Ascoli et al., "ConViT: Improving Vision Transformers with Soft
    Convolutional Inductive Biases", ICML 2021.
    Touvron et al., "Training data-efficient image transformers (DeiT)",
    ICML 2021.
  """

  num_classes: int
  num_heads: int = 9
  head_dim: int = 48
  depth: int = 12
  local_up_to_layer: int = 10
  patch_size: int = 16
  mlp_ratio: float = 4.0
  attention: str = "softmax"
  num_random_features: Optional[int] = None
  positional_method: str = "separable"
  use_local_init: bool = True
  locality_strength: float = 1.0
  dropout_rate: float = 0.0
  drop_path_rate: float = 0.0
  dtype: Any = None
  param_dtype: Any = jnp.float32

  def _check(self, images):
    for name in ("num_classes", "num_heads", "head_dim", "depth",
                 "patch_size"):
      _validation.check_positive_int(name, getattr(self, name))
    _validation.check_optional_positive_int(
        "num_random_features", self.num_random_features
    )
    # The MLP width is rounded from the ratio, so a small positive ratio can
    # still leave no hidden unit.
    if not (isinstance(self.mlp_ratio, numbers.Real)
            and math.isfinite(self.mlp_ratio) and self._mlp_dim() >= 1):
      raise ValueError(
          "`mlp_ratio` must be a number with round(mlp_ratio * num_heads *"
          " head_dim) >= 1 hidden units; got"
          f" mlp_ratio={self.mlp_ratio!r} for width"
          f" {self.num_heads * self.head_dim}."
      )
    if (isinstance(self.local_up_to_layer, bool)
        or not isinstance(self.local_up_to_layer, int)
        or not 0 <= self.local_up_to_layer < self.depth):
      raise ValueError(
          "`local_up_to_layer` must be an int in [0, depth) so that at least"
          " one block sees the class token; got"
          f" local_up_to_layer={self.local_up_to_layer!r} with"
          f" depth={self.depth}."
      )
    if self.local_up_to_layer and self.use_local_init:
      gpsa.locality_centres(self.num_heads)  # raises for non-square heads
    _, height, width, _ = _validation.check_images(images)
    if height % self.patch_size or width % self.patch_size:
      raise ValueError(
          f"`patch_size` ({self.patch_size}) must divide the image height and"
          f" width; got images of shape {tuple(images.shape)}."
      )
    return height // self.patch_size, width // self.patch_size

  def _mlp_dim(self) -> int:
    return int(round(self.mlp_ratio * self.num_heads * self.head_dim))

  @nn.compact
  def __call__(
      self, images: jax.Array, *, deterministic: bool = True
  ) -> jax.Array:
    """Classifies `[batch, height, width, channels]` images into logits."""
    grid = self._check(images)
    batch = images.shape[0]
    width = self.num_heads * self.head_dim
    x = nn.Conv(
        width, (self.patch_size, self.patch_size),
        strides=(self.patch_size, self.patch_size), padding="VALID",
        dtype=self.dtype, param_dtype=self.param_dtype, name="embedding",
    )(images)
    # The token count is spelt out: a -1 cannot be inferred for a batch of 0.
    x = x.reshape(batch, grid[0] * grid[1], width)
    positions = self.param(
        "pos_embedding", _TRUNC_NORMAL, (1,) + x.shape[1:], self.param_dtype
    )
    x = nn.Dropout(self.dropout_rate)(
        x + positions.astype(x.dtype), deterministic=deterministic
    )
    cls = self.param("cls", _TRUNC_NORMAL, (1, 1, width), self.param_dtype)
    mlp_dim = self._mlp_dim()
    for i in range(self.depth):
      if i == self.local_up_to_layer:
        x = jnp.concatenate(
            [jnp.broadcast_to(cls, (batch, 1, width)).astype(x.dtype), x],
            axis=1,
        )
      x = ConViTBlock(
          num_heads=self.num_heads, mlp_dim=mlp_dim,
          gated=i < self.local_up_to_layer, attention=self.attention,
          num_random_features=self.num_random_features,
          positional_method=self.positional_method,
          use_local_init=self.use_local_init,
          locality_strength=self.locality_strength,
          dropout_rate=self.dropout_rate,
          drop_path_rate=self.drop_path_rate * i / max(self.depth - 1, 1),
          dtype=self.dtype, param_dtype=self.param_dtype, name=f"block_{i}",
      )(x, grid=grid, deterministic=deterministic)
    x = nn.LayerNorm(
        epsilon=_LN_EPSILON, dtype=self.dtype, param_dtype=self.param_dtype,
        name="encoder_norm",
    )(x)
    logits = nn.Dense(
        self.num_classes, kernel_init=_TRUNC_NORMAL, dtype=self.dtype,
        param_dtype=self.param_dtype, name="head",
    )(x[:, 0])
    return logits.astype(jnp.float32)


def deit(num_classes: int, **kwargs) -> ConViT:
  """The DeiT baseline: `ConViT` with no GPSA block (`local_up_to_layer=0`).

  Examples:
    >>> deit(10, num_heads=4, head_dim=8, depth=2, patch_size=4).local_up_to_layer
    0
  """
  if "local_up_to_layer" in kwargs:
    raise ValueError(
        "`local_up_to_layer` is not an option of the DeiT baseline (it has"
        " no GPSA block); use model `convit` to set it."
    )
  return ConViT(num_classes=num_classes, local_up_to_layer=0, **kwargs)


def attention_maps(model: ConViT, variables, images) -> list[jax.Array]:
  """`[batch, heads, L, L]` patch-to-patch attention of each block.

  Runs the model with the `"intermediates"` collection mutable. Blocks after
  the class token drop its row and column, so every map is over the same L
  patch tokens (their rows then sum to 1 minus the weight on the class token).
  Only quadratic (`attention="softmax"`) models have explicit maps for their
  MHSA blocks.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> model = ConViT(num_classes=3, num_heads=4, head_dim=4, depth=2,
    ...                local_up_to_layer=1, patch_size=4)
    >>> images = jnp.zeros((1, 12, 12, 1))
    >>> maps = attention_maps(model, model.init(jax.random.key(0), images), images)
    >>> [m.shape for m in maps]
    [(1, 4, 9, 9), (1, 4, 9, 9)]
  """
  if model.attention != "softmax" and model.local_up_to_layer < model.depth:
    raise ValueError(
        "attention_maps needs explicit attention in every block:"
        " attention='softmax'; got"
        f" attention={model.attention!r}."
    )
  _, state = model.apply(variables, images, mutable=["intermediates"])
  maps = []
  for i in range(model.depth):
    layer = state["intermediates"][f"block_{i}"]["attention"]
    weights = layer[ATTENTION_WEIGHTS][0]
    if i >= model.local_up_to_layer:
      weights = weights[..., 1:, 1:]
    maps.append(weights)
  return maps


def layer_nonlocality(model: ConViT, variables, images) -> np.ndarray:
  """`[depth, heads]` nonlocality per block and head, averaged over `images`.

  The reference's metric (`kattn.attention.gpsa.nonlocality`): the
  attention-weighted mean distance between patches, in patches, computed on
  each block's actual input.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> model = ConViT(num_classes=3, num_heads=9, head_dim=2, depth=2,
    ...                local_up_to_layer=1, patch_size=2)
    >>> images = jnp.zeros((1, 8, 8, 1))
    >>> layer_nonlocality(model, model.init(jax.random.key(0), images),
    ...                   images).shape
    (2, 9)
  """
  grid = model._check(images)  # pylint: disable=protected-access
  return np.stack([
      np.asarray(jnp.mean(gpsa.nonlocality(m, grid=grid), axis=0))
      for m in attention_maps(model, variables, images)
  ])


registry.register_model("convit", ConViT)
registry.register_model("deit", deit)
