"""Self-attention with relative positions on a pixel grid, as a thin Linen module.

Three ways to make a kernelized attention depend on p_j - p_i only, so that
translating the image translates the tokens' outputs:

* `"fft_torus"`, `"fft_padded"`: a learned per-head bias c(p_j - p_i)
  multiplies the kernel, computed with 2-D FFTs in O(L log L)
  (`kattn.positional.toeplitz_2d_linear_attention`). On the torus, rolling
  the grid rolls the outputs exactly, for any fixed random projection.
* `"constrained_sinusoid"`: Horn et al.'s strategy 1; queries and keys get a
  sinusoid code of their position, the query's rotated by learned 2x2 blocks,
  so the position term of q_i^T k_j depends on p_i - p_j only
  (`kattn.positional.constrained_relative_qk`). Under FAVOR+ with a fixed
  projection this is equivariant in distribution over projections, not
  sample by sample.
* `"clipped"`, `"clipped_torus"`: Horn et al.'s strategy 2; half the heads
  attend by content, the other half weigh token j by a learned embedding of
  the clipped L1 distance |p_i - p_j| (`kattn.positional.clipped_relative_attention`).
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from kattn import _validation
from kattn.features import favor
from kattn.flax import attention as attention_lib
from kattn.flax import registry
from kattn.positional import clipped
from kattn.positional import grid as grid_lib
from kattn.positional import sinusoid
from kattn.positional import toeplitz

RELATIVE_POSITIONS = (
    "fft_torus", "fft_padded", "constrained_sinusoid", "clipped",
    "clipped_torus",
)
POSITION_FREQUENCIES = ("geometric", "circular")
BIAS_INITS = ("local", "zeros")
# Modes whose every token must sit on the grid: a class token has no place in
# a Toeplitz bias or a distance table.
GRID_ONLY = ("fft_torus", "fft_padded", "clipped", "clipped_torus")


def check_relative_position(name: str) -> str:
  if name not in RELATIVE_POSITIONS:
    raise ValueError(
        f"`relative_position` must be one of {list(RELATIVE_POSITIONS)}; got"
        f" {name!r}."
    )
  return name


def _unscaled(features, *, refer_to_max_over):
  """Dense features, with log-scales dropped or referred to a shared max.

  A query's own scale cancels in its normaliser, so queries pass
  `refer_to_max_over=None` and lose it. Keys (or table rows) are referred to
  their max over `refer_to_max_over` axes, a constant that cancels too.
  """
  if not isinstance(features, favor.ScaledFeatures):
    return features
  if refer_to_max_over is None:
    return features.values
  peak = jax.lax.stop_gradient(
      jnp.max(features.log_scale, axis=refer_to_max_over, keepdims=True)
  )
  return features.values * jnp.exp(features.log_scale - peak)[..., None]


class RelativeSelfAttention(nn.Module):
  """Multi-head self-attention over grid tokens with relative positions.

  Queries, keys and values are `DenseGeneral` projections as in
  `kattn.flax.MultiHeadSelfAttention`; the attention picked by `attention`
  supplies the kernel (its feature map for kernel attentions, exact softmax
  for `"softmax"`), and `relative_position` decides how positions enter.
  Random projections live in the `"random_features"` collection and are
  redrawn by `kattn.flax.redraw`.

  Attributes:
    num_heads: number of heads; must divide `qkv_features`, and be even for
      the clipped modes (half content heads, half relative heads).
    relative_position: one of `RELATIVE_POSITIONS`.
    attention: a name from `kattn.flax.available_attentions()`.
    num_random_features: projection rows m; None takes the attention's
      default.
    num_scales: S, sinusoid frequencies per coordinate
      (`"constrained_sinusoid"`).
    position_frequencies: `"geometric"` (learned, initialised at
      max_period^{-s/S} as Horn et al.) or `"circular"` (fixed 2 pi k / N:
      periodic on the grid, so exact under circular shifts with exact
      softmax).
    max_period: T of the geometric frequencies; None means twice the longer
      grid side, Horn et al.'s 2 x 32 on 32 x 32 pixels.
    content_conditional: `"constrained_sinusoid"` rotation blocks computed
      from each query token instead of learned per head.
    max_distance: K of the clipped modes: L1 distances 0..K-1 have their
      own embedding, all farther pairs share one.
    bias_init: the FFT modes' log-bias table at init: `"local"` (Gaussian
      windows of several widths, `kattn.positional.local_log_bias`) or
      `"zeros"` (plain linear attention at init).
    relative_method: how the FFT modes evaluate the biased kernel: `"fft"`,
      `"dense"` or `"auto"` (see `kattn.positional.toeplitz_2d_linear_attention`);
      the same function either way.
    qkv_features: total width of queries, keys and values; defaults to the
      input width.
    out_features: output width; defaults to the input width.
    dropout_rate: dropout on the attention output.
    dtype: computation dtype; None infers it.
    param_dtype: dtype of the parameters.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> layer = RelativeSelfAttention(num_heads=2, relative_position="fft_torus",
    ...                               num_random_features=8)
    >>> x = jnp.ones((1, 12, 8))
    >>> variables = layer.init(jax.random.key(0), x, grid=(3, 4))
    >>> variables["params"]["log_bias"].shape
    (2, 3, 4)
    >>> layer.apply(variables, x, grid=(3, 4)).shape
    (1, 12, 8)

  References:
    Horn et al., "Translational Equivariance in Kernelizable Attention", 2021.
    Luo et al., "Stable, Fast and Accurate: Kernelized Attention with
    Relative Positional Encoding", NeurIPS 2021.
  """

  num_heads: int
  relative_position: str
  attention: str = "favor"
  num_random_features: Optional[int] = None
  num_scales: int = 4
  position_frequencies: str = "geometric"
  max_period: Optional[float] = None
  content_conditional: bool = False
  max_distance: int = 4
  relative_method: str = "auto"
  bias_init: str = "local"
  qkv_features: Optional[int] = None
  out_features: Optional[int] = None
  dropout_rate: float = 0.0
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(
      self, x: jax.Array, *, grid, deterministic: bool = True
  ) -> jax.Array:
    """Attends over the tokens.

    Args:
      x: `[*batch, length, width]` tokens: the `height * width` grid tokens
        row-major, after `length - height * width` leading tokens without a
        position (class tokens; `"constrained_sinusoid"` only, where they get
        a zero position code).
      grid: `(height, width)` of the token grid.
      deterministic: if False, applies dropout with the `"dropout"` rng.

    Returns:
      `[*batch, length, out_features]` outputs.
    """
    spec = registry.get_attention(self.attention)
    mode = check_relative_position(self.relative_position)
    _validation.check_tokens("x", x)
    _validation.check_positive_int("num_heads", self.num_heads)
    _validation.check_optional_positive_int(
        "num_random_features", self.num_random_features
    )
    length, width = x.shape[-2:]
    height, grid_width = grid_lib.check_grid(grid)
    num_prefix = length - height * grid_width
    if num_prefix < 0 or (num_prefix and mode in GRID_ONLY):
      allowed = (
          "exactly" if mode in GRID_ONLY else "at least"
      )
      raise ValueError(
          f"`x` must hold {allowed} height * width = {height * grid_width}"
          f" tokens for grid {tuple(grid)} with relative_position={mode!r};"
          f" got length {length}."
      )
    qkv_features = _validation.check_optional_positive_int(
        "qkv_features", self.qkv_features
    ) or width
    out_features = _validation.check_optional_positive_int(
        "out_features", self.out_features
    ) or width
    if qkv_features % self.num_heads:
      raise ValueError(
          f"`qkv_features` ({qkv_features}, the input width when unset) must"
          f" be divisible by `num_heads`; got num_heads={self.num_heads}."
      )
    head_dim = qkv_features // self.num_heads

    def dense(name, features, axis=-1):
      return nn.DenseGeneral(
          features, axis=axis, dtype=self.dtype,
          param_dtype=self.param_dtype, name=name,
      )

    heads = (self.num_heads, head_dim)
    q = dense("query", heads)(x)
    v = dense("value", heads)(x)

    def projection(dim):
      return attention_lib.random_projection(
          self, spec, self.num_random_features, dim
      )

    if mode in ("fft_torus", "fft_padded"):
      k = dense("key", heads)(x)
      fft_mode = mode.removeprefix("fft_")
      if self.bias_init not in BIAS_INITS:
        raise ValueError(
            f"`bias_init` must be one of {list(BIAS_INITS)}; got"
            f" {self.bias_init!r}."
        )
      log_bias = self.param(
          "log_bias",
          lambda key, shape, dtype: (
              toeplitz.local_log_bias(grid, self.num_heads, mode=fft_mode)
              if self.bias_init == "local" else jnp.zeros(shape)
          ).astype(dtype),
          (self.num_heads,) + toeplitz.relative_bias_shape(grid, mode=fft_mode),
          self.param_dtype,
      )
      if spec.feature_map is None:
        out = toeplitz.relative_softmax_attention(
            q, k, v, log_bias, grid=grid, mode=fft_mode
        )
      else:
        w = projection(head_dim)
        out = toeplitz.relative_feature_map_attention(
            q, k, v, log_bias, feature_map=lambda y: spec.feature_map(y, w),
            grid=grid, mode=fft_mode, method=self.relative_method,
        )
    elif mode == "constrained_sinusoid":
      k = dense("key", heads)(x)
      out = self._constrained_sinusoid(
          spec, x, q, k, v, grid, num_prefix, projection
      )
    else:
      out = self._clipped(spec, x, q, v, grid, mode, dense, projection)

    out = nn.Dropout(self.dropout_rate)(out, deterministic=deterministic)
    return dense("out", out_features, (-2, -1))(out)

  def _constrained_sinusoid(self, spec, x, q, k, v, grid, num_prefix, projection):
    _validation.check_positive_int("num_scales", self.num_scales)
    if self.position_frequencies not in POSITION_FREQUENCIES:
      raise ValueError(
          "`position_frequencies` must be one of"
          f" {list(POSITION_FREQUENCIES)}; got {self.position_frequencies!r}."
      )
    height, grid_width = grid
    if self.position_frequencies == "circular":
      row_frequencies = sinusoid.circular_frequencies(height, self.num_scales)
      col_frequencies = sinusoid.circular_frequencies(
          grid_width, self.num_scales
      )
    else:
      max_period = self.max_period or 2.0 * max(height, grid_width)
      init = lambda key, shape, dtype: sinusoid.geometric_frequencies(
          self.num_scales, max_period
      ).astype(dtype)
      row_frequencies = self.param(
          "row_frequencies", init, (self.num_scales,), self.param_dtype
      )
      col_frequencies = self.param(
          "col_frequencies", init, (self.num_scales,), self.param_dtype
      )
    code = sinusoid.sinusoid_position_code(
        grid_lib.grid_positions(grid, jnp.float32), row_frequencies,
        col_frequencies,
    )
    if num_prefix:
      code = sinusoid.prepend_zero_code(code, num_prefix)
    num_blocks = code.shape[-1] // 2
    if self.content_conditional:
      # Reads the token itself, so the rotation moves with it under a shift.
      alpha_beta = nn.DenseGeneral(
          (self.num_heads, 2, num_blocks), dtype=self.dtype,
          param_dtype=self.param_dtype, name="rotation",
      )(x)
      alpha, beta = alpha_beta[..., 0, :], alpha_beta[..., 1, :]
    else:
      alpha = self.param(
          "alpha", nn.initializers.normal(1.0), (self.num_heads, num_blocks),
          self.param_dtype,
      )
      beta = self.param(
          "beta", nn.initializers.normal(1.0), (self.num_heads, num_blocks),
          self.param_dtype,
      )
    q, k = sinusoid.constrained_relative_qk(
        q, k, code.astype(q.dtype), alpha.astype(q.dtype), beta.astype(q.dtype)
    )
    return spec.fn(q, k, v, projection=projection(q.shape[-1]), causal=False)

  def _clipped(self, spec, x, q, v, grid, mode, dense, projection):
    if self.num_heads % 2:
      raise ValueError(
          f"`num_heads` must be even for relative_position={mode!r} (half"
          f" content heads, half relative heads); got {self.num_heads}."
      )
    if spec.feature_map is None:
      raise ValueError(
          f"relative_position={mode!r} needs a kernel attention with a"
          f" feature map; got attention={self.attention!r}."
      )
    _validation.check_positive_int("max_distance", self.max_distance)
    half = self.num_heads // 2
    head_dim = q.shape[-1]
    k = dense("key", (half, head_dim))(x)
    w = projection(head_dim)
    content = spec.fn(
        q[..., :half, :], k, v[..., :half, :], projection=w, causal=False
    )
    # One table shared by the relative heads, zero at init (Horn et al.).
    table = self.param(
        "distance_embedding", nn.initializers.zeros,
        (self.max_distance + 1, head_dim), self.param_dtype,
    )
    table = jnp.broadcast_to(
        table.astype(q.dtype)[:, None], (self.max_distance + 1, half, head_dim)
    )
    relative = clipped.clipped_relative_attention(
        _unscaled(spec.feature_map(q[..., half:, :], w), refer_to_max_over=None),
        v[..., half:, :],
        _unscaled(spec.feature_map(table, w), refer_to_max_over=0),
        grid=grid, max_distance=self.max_distance,
        torus=mode == "clipped_torus",
    )
    return jnp.concatenate([content, relative], axis=-2)
