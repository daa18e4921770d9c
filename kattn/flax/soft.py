"""SOFT self-attention with the reference's learned landmarks, on a token grid.

`SoftSelfAttention` owns the projections (one query projection, which also
gives the keys, a value and an output projection), the landmark operator and
the optional convolution residual on the values, and calls
`kattn.attention.soft.soft_attention`. Its landmarks are those of the
reference: per head, the scaled queries on the grid through one strided
convolution shared by all heads, then LayerNorm over the head dimension and
GELU,

  q~ = GELU(LN(conv_s(q / d^{1/4}))),

where `kattn.flax.MultiHeadSelfAttention(attention="soft")` pools contiguous
token segments instead (it has no grid).

The one pure piece, `strided_conv_landmarks`, is the convolution itself: a
`reduction x reduction` kernel with the same stride, so each landmark is a
learned linear map of one block of tokens (the block mean with the kernel
`I / s^2`, which is `kattn.attention.soft.average_pool_landmarks`).
"""

from __future__ import annotations

from typing import Any, Literal, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from kattn import _validation
from kattn.attention import soft
from kattn.positional import grid as grid_lib

_TRUNC_NORMAL = nn.initializers.truncated_normal(stddev=0.02)
# PyTorch's default convolution initialisation, U(-1/sqrt(fan_in),
# 1/sqrt(fan_in)), which the reference keeps for both of its convolutions.
_TORCH_CONV_INIT = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
# PyTorch's LayerNorm default, used by the reference's landmark norm.
_LANDMARK_LN_EPSILON = 1e-5


def strided_conv_landmarks(
    q: jax.Array, kernel: jax.Array, *, grid, reduction: int
) -> jax.Array:
  """Per-head strided convolution of tokens on a grid, stride = kernel size.

  Landmark (a, b) of head h is sum_{i,j} q[(s a + i, s b + j), h] @
  kernel[i, j]: one `s x s` block of tokens, mixed over the head dimension by
  the same kernel for every head, with no bias and no padding.

  Args:
    q: `[*batch, L, heads, dim]` tokens, row-major on `grid`.
    kernel: `[reduction, reduction, dim, out_dim]` convolution kernel (the
      layout of `flax.linen.Conv`).
    grid: `(height, width)`, both divisible by `reduction`.
    reduction: s, the kernel size and stride; n = (height / s) (width / s).

  Returns:
    `[*batch, n, heads, out_dim]` landmarks, row-major on the reduced grid.

  Examples:
    >>> import jax.numpy as jnp
    >>> q = jnp.arange(16.0).reshape(16, 1, 1)
    >>> block_mean = jnp.full((2, 2, 1, 1), 0.25)
    >>> strided_conv_landmarks(q, block_mean, grid=(4, 4), reduction=2)[
    ...     :, 0, 0].tolist()
    [2.5, 4.5, 10.5, 12.5]
  """
  _validation.check_min_rank("q", q, 3, "[*batch, length, heads, dim]")
  height, width = grid_lib.check_grid(grid, q.shape[-3])
  _validation.check_positive_int("reduction", reduction)
  if height % reduction or width % reduction:
    raise ValueError(
        f"`reduction` ({reduction}) must divide the grid {(height, width)}."
    )
  if jnp.ndim(kernel) != 4 or kernel.shape[:3] != (
      reduction, reduction, q.shape[-1]
  ):
    raise ValueError(
        "`kernel` must be [reduction, reduction, dim, out_dim] ="
        f" [{reduction}, {reduction}, {q.shape[-1]}, out_dim]; got shape"
        f" {tuple(jnp.shape(kernel))}."
    )
  batch, heads = q.shape[:-3], q.shape[-2]
  blocks = q.reshape(
      batch + (height // reduction, reduction, width // reduction, reduction)
      + q.shape[-2:]
  )
  landmarks = jnp.einsum("...aibjhc,ijcd->...abhd", blocks, kernel)
  # The landmark count is spelt out: a -1 cannot be inferred for a batch of 0.
  num_landmarks = (height // reduction) * (width // reduction)
  return landmarks.reshape(batch + (num_landmarks, heads, kernel.shape[-1]))


def _check_value_conv_size(size) -> None:
  if size is None:
    return
  if isinstance(size, bool) or not isinstance(size, int) or size <= 0 \
      or size % 2 == 0:
    raise ValueError(
        "`value_conv_size` must be None or a positive odd int (a centred"
        f" 'SAME' kernel); got {size!r}."
    )


class SoftSelfAttention(nn.Module):
  """Multi-head SOFT attention over the patch tokens of a row-major grid.

  Parameters: `query` (with bias; the keys are the queries), `value` and
  `out` projections; `landmark_kernel [s, s, head_dim, head_dim]`, one
  strided convolution shared by all heads; `landmark_norm`, a LayerNorm over
  the head dimension with learnable scale and bias; and, when
  `value_conv_size` is set, `value_conv`, a depthwise `k x k` convolution of
  the values with one kernel per head shared over the head dimension, whose
  output is added to the attention output (the reference's residual, with
  k = 9, 5, 3 in its stages 1 to 3).

  Landmark scale. `soft_attention` multiplies queries and landmarks by
  d^{-1/4} itself. The reference applies its landmark operator to the
  already scaled queries and does not scale the result, so its kernel
  compares q / d^{1/4} with GELU(LN(conv(q / d^{1/4}))): the landmarks live
  at LayerNorm scale, not at the scaled queries' (the scale mismatch of its
  code). This module reproduces that kernel exactly: it convolves the scaled
  queries and hands `soft_attention` the landmarks times d^{1/4}, which
  undoes the function's own scaling. Convolving the unscaled queries instead
  would leave the LayerNorm output unchanged (it removes any scale, up to
  its epsilon), but the kernel would see it divided by d^{1/4}. At
  initialisation (d = 32, 49 landmarks, unit-variance tokens) the
  reference's scale gives a landmark kernel A close to I (condition number
  about 1.1) and small P (mean about 2e-3), so the attention term starts
  near zero; the other gives a condition number about 25 (still within 20
  Newton-Schulz steps) and P about 0.25. The learnable LayerNorm scale moves
  between the two, so the reference's convention is kept, with its weights
  and its well-conditioned start.

  `reduction=1` gives one landmark per token through a 1 x 1 convolution (a
  bias-free linear map of each token, as the reference's `ratio == 1`
  branch intends), so n = L and the cost is quadratic.

  Attributes:
    num_heads: heads; must divide the input width.
    reduction: s, the landmark convolution's kernel size and stride; must
      divide both grid sides. The default gives the reference's 7 x 7
      landmarks on its third stage's 14 x 14 grid.
    num_iterations: Newton-Schulz steps of the pseudo-inverse.
    ridge: A + ridge I before inverting; the reference adds 0.01.
    normalization: None, or `"symmetric"` (SOFT-Norm, D^{-1/2} A^+ D^{-1/2}).
    value_conv_size: odd k of the depthwise convolution residual on the
      values; None (the default) adds none.
    dropout_rate: dropout on the attention output before `out`.
    dtype, param_dtype: computation and parameter dtypes; kernels and the
      inverse are always computed in float32 by `soft_attention`.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> layer = SoftSelfAttention(num_heads=2, reduction=2, value_conv_size=3)
    >>> x = jnp.ones((3, 16, 8))
    >>> variables = layer.init(jax.random.key(0), x, grid=(4, 4))
    >>> variables["params"]["landmark_kernel"].shape
    (2, 2, 4, 4)
    >>> layer.apply(variables, x, grid=(4, 4)).shape
    (3, 16, 8)

  References:
    Lu et al., "SOFT: Softmax-free Transformer with Linear Complexity",
    NeurIPS 2021.
  """

  num_heads: int
  reduction: int = 2
  num_iterations: int = soft.DEFAULT_NUM_ITERATIONS
  ridge: float = soft.STABLE_RIDGE
  normalization: Optional[Literal["symmetric"]] = None
  value_conv_size: Optional[int] = None
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
      grid: `(height, width)` of the patch grid, both divisible by
        `reduction`.
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
    height, grid_width = grid_lib.check_grid(grid, x.shape[-2])
    _validation.check_positive_int("reduction", self.reduction)
    if height % self.reduction or grid_width % self.reduction:
      raise ValueError(
          f"`reduction` ({self.reduction}) must divide the grid"
          f" {(height, grid_width)}."
      )
    _check_value_conv_size(self.value_conv_size)
    head_dim = width // self.num_heads

    def dense(name, features, axis):
      return nn.DenseGeneral(
          features, axis=axis, kernel_init=_TRUNC_NORMAL, dtype=self.dtype,
          param_dtype=self.param_dtype, name=name,
      )

    heads = (self.num_heads, head_dim)
    q = dense("query", heads, -1)(x)
    v = dense("value", heads, -1)(x)

    kernel = self.param(
        "landmark_kernel", _TORCH_CONV_INIT,
        (self.reduction, self.reduction, head_dim, head_dim), self.param_dtype,
    )
    q, kernel = nn.dtypes.promote_dtype(q, kernel, dtype=self.dtype)
    scale = head_dim ** 0.25
    landmarks = strided_conv_landmarks(
        q / scale, kernel, grid=(height, grid_width), reduction=self.reduction
    )
    landmarks = nn.LayerNorm(
        epsilon=_LANDMARK_LN_EPSILON, dtype=self.dtype,
        param_dtype=self.param_dtype, name="landmark_norm",
    )(landmarks)
    landmarks = scale * nn.gelu(landmarks, approximate=False)
    out = soft.soft_attention(
        q, v, landmarks, num_iterations=self.num_iterations, ridge=self.ridge,
        normalization=self.normalization,
    )

    if self.value_conv_size is not None:
      out = out + self._value_conv(v, (height, grid_width))
    out = nn.Dropout(self.dropout_rate)(out, deterministic=deterministic)
    return nn.DenseGeneral(
        width, axis=(-2, -1), kernel_init=_TRUNC_NORMAL, dtype=self.dtype,
        param_dtype=self.param_dtype, name="out",
    )(out)

  def _value_conv(self, v, grid):
    height, width = grid
    batch, (heads, head_dim) = v.shape[:-3], v.shape[-2:]
    # Heads are the channels and head_dim a batch axis, so each head's one
    # k x k kernel is shared over its head_dim features.
    images = jnp.moveaxis(
        v.reshape(batch + (height, width, heads, head_dim)), -1, -4
    )
    size = self.value_conv_size
    conv = nn.Conv(
        heads, (size, size), padding="SAME", feature_group_count=heads,
        use_bias=False, kernel_init=_TORCH_CONV_INIT, dtype=self.dtype,
        param_dtype=self.param_dtype, name="value_conv",
    )(images)
    return jnp.moveaxis(conv, -4, -1).reshape(v.shape)
