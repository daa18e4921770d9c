"""SoftSelfAttention: the reference's SOFT layer against a rebuild by hand.

The rebuild takes the module's own parameters and recomputes queries and
values, the landmarks (convolution with `jax.lax.conv_general_dilated`,
LayerNorm and exact GELU written out, the reference's d^{1/4} convention)
and the value residual (shifted sums), then calls
`kattn.attention.soft.soft_attention`: the module must equal it to float32
rounding.
"""

import functools

import chex
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from kattn.attention import soft
from kattn.flax.soft import SoftSelfAttention, strided_conv_landmarks

_settings = hypothesis.settings(
    max_examples=100, deadline=None, derandomize=True
)
seeds = st.integers(0, 2**32 - 1)
# (grid, reduction) pairs with the grid divisible by the reduction.
grid_reductions = st.sampled_from([
    ((2, 2), 1), ((3, 5), 1), ((4, 4), 2), ((4, 6), 2), ((6, 3), 3),
    ((8, 4), 4),
])
batch_shapes = st.sampled_from([(), (2,), (2, 3)])
WIDTH, HEADS, GRID = 16, 2, (4, 6)
HEAD_DIM = WIDTH // HEADS
# float32 sums of <= 64 products of O(1) terms.
CONV_ATOL = 1e-5
# Module against rebuild: the same float32 ops in a different order, through
# a Newton-Schulz inverse of a well-conditioned A (LayerNorm-scale landmarks);
# measured at most 2e-6 on outputs of O(1).
RTOL, ATOL = 1e-5, 1e-5


def _tokens(seed, batch=(2,), length=GRID[0] * GRID[1], width=WIDTH,
            dtype=jnp.float32):
  return jax.random.normal(jax.random.key(seed), batch + (length, width),
                           dtype)


def _init(layer, x, grid=GRID, seed=0):
  return layer.init(jax.random.key(seed), x, grid=grid)


@functools.partial(jax.jit, static_argnames=("grid", "reduction"))
def _jit_conv_landmarks(q, kernel, *, grid, reduction):
  return strided_conv_landmarks(q, kernel, grid=grid, reduction=reduction)


@functools.partial(jax.jit, static_argnames=("grid", "reduction"))
def _jit_average_pool(q, *, grid, reduction):
  return soft.average_pool_landmarks(q, grid=grid, reduction=reduction)


def _normal(seed, shape):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _lax_conv_landmarks(q, kernel, grid, reduction):
  """Per-head strided convolution through `jax.lax`, heads as batch."""
  batch, (heads, dim) = q.shape[:-3], q.shape[-2:]
  images = jnp.moveaxis(q.reshape(batch + grid + (heads, dim)), -2, -4)
  images = images.reshape((-1,) + grid + (dim,))
  out = jax.lax.conv_general_dilated(
      images, kernel, (reduction, reduction), "VALID",
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      precision=jax.lax.Precision.HIGHEST,
  )
  out = out.reshape(batch + (heads, -1, kernel.shape[-1]))
  return jnp.moveaxis(out, -3, -2)


_jit_lax_conv_landmarks = jax.jit(
    lambda q, kernel, *, grid, reduction: _lax_conv_landmarks(
        q, kernel, grid, reduction
    ),
    static_argnames=("grid", "reduction"),
)


@_settings
@hypothesis.given(seed=seeds, grid_reduction=grid_reductions,
                  batch=batch_shapes, heads=st.sampled_from([1, 3]))
def test_block_mean_kernel_gives_average_pooling(seed, grid_reduction, batch,
                                                 heads):
  grid, s = grid_reduction
  dim = 4
  q = _normal(seed, batch + (grid[0] * grid[1], heads, dim))
  block_mean = jnp.broadcast_to(jnp.eye(dim) / s**2, (s, s, dim, dim))
  got = _jit_conv_landmarks(q, block_mean, grid=grid, reduction=s)
  n = (grid[0] // s) * (grid[1] // s)
  chex.assert_shape(got, batch + (n, heads, dim))
  np.testing.assert_allclose(
      got, _jit_average_pool(q, grid=grid, reduction=s), rtol=0,
      atol=CONV_ATOL,
  )


@_settings
@hypothesis.given(seed=seeds, grid_reduction=grid_reductions,
                  batch=batch_shapes, out_dim=st.sampled_from([2, 4, 5]))
def test_strided_conv_landmarks_match_lax_convolution(seed, grid_reduction,
                                                      batch, out_dim):
  grid, s = grid_reduction
  heads, dim = 2, 4
  q = _normal(seed, batch + (grid[0] * grid[1], heads, dim))
  kernel = _normal(seed + 1, (s, s, dim, out_dim))
  np.testing.assert_allclose(
      _jit_conv_landmarks(q, kernel, grid=grid, reduction=s),
      _jit_lax_conv_landmarks(q, kernel, grid=grid, reduction=s), rtol=0,
      atol=CONV_ATOL,
  )


def _layer_norm(x, scale, bias, epsilon=1e-5):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / jnp.sqrt(var + epsilon) * scale + bias


def _depthwise_same_conv(v, kernel, grid):
  """Zero-padded k x k conv of each head over the grid, as shifted sums."""
  height, width = grid
  size = kernel.shape[0]
  half = size // 2
  images = v.reshape(v.shape[:-3] + grid + v.shape[-2:])
  pad = [(0, 0)] * (images.ndim - 4) + [(half, half)] * 2 + [(0, 0)] * 2
  padded = jnp.pad(images, pad)
  out = jnp.zeros_like(images)
  for i in range(size):
    for j in range(size):
      shifted = padded[..., i:i + height, j:j + width, :, :]
      out = out + shifted * kernel[i, j, 0][:, None]
  return out.reshape(v.shape)


def _by_hand(params, x, *, grid, reduction, normalization, value_conv_size):
  dim = params["landmark_kernel"].shape[-1]
  q = jnp.einsum("...lw,whd->...lhd", x, params["query"]["kernel"])
  q = q + params["query"]["bias"]
  v = jnp.einsum("...lw,whd->...lhd", x, params["value"]["kernel"])
  v = v + params["value"]["bias"]
  # The reference: GELU(LN(conv(q / d^{1/4}))) enters the kernel as is, so
  # soft_attention, which scales its landmarks by d^{-1/4}, gets it times
  # d^{1/4}.
  scaled = q / dim**0.25
  conv = _lax_conv_landmarks(scaled, params["landmark_kernel"], grid,
                             reduction)
  norm = params["landmark_norm"]
  landmarks = jax.nn.gelu(_layer_norm(conv, norm["scale"], norm["bias"]),
                          approximate=False)
  attention = soft.soft_attention(q, v, dim**0.25 * landmarks, ridge=0.01,
                                  normalization=normalization)
  out = attention
  if value_conv_size is not None:
    out = out + _depthwise_same_conv(v, params["value_conv"]["kernel"], grid)
  out = (jnp.einsum("...lhd,hdw->...lw", out, params["out"]["kernel"])
         + params["out"]["bias"])
  return out, attention


def _perturbed(params, seed):
  """Init parameters plus noise, so biases and LayerNorm affine act too."""
  leaves, tree = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree_util.tree_unflatten(tree, [
      p + 0.1 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)
  ])


class SoftSelfAttentionTest(chex.TestCase, parameterized.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.product(
      batch=[(), (3,), (2, 2)],
      normalization=[None, "symmetric"],
      value_conv_size=[None, 3],
  )
  def test_shapes_dtypes_and_finite(self, batch, normalization,
                                    value_conv_size):
    layer = SoftSelfAttention(num_heads=HEADS, normalization=normalization,
                              value_conv_size=value_conv_size)
    x = _tokens(0, batch)
    variables = _init(layer, x)
    out = self.variant(functools.partial(layer.apply, grid=GRID))(
        variables, x
    )
    chex.assert_shape(out, x.shape)
    chex.assert_type(out, jnp.float32)
    chex.assert_tree_all_finite(out)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.product(
      reduction=[1, 2],
      normalization=[None, "symmetric"],
      value_conv_size=[None, 3, 5],
  )
  def test_module_equals_soft_attention_with_its_parameters(
      self, reduction, normalization, value_conv_size
  ):
    layer = SoftSelfAttention(
        num_heads=HEADS, reduction=reduction, normalization=normalization,
        value_conv_size=value_conv_size,
    )
    x = _tokens(1)
    params = _perturbed(_init(layer, x)["params"], seed=2)
    got = self.variant(functools.partial(layer.apply, grid=GRID))(
        {"params": params}, x
    )
    expected, attention = _by_hand(
        params, x, grid=GRID, reduction=reduction,
        normalization=normalization, value_conv_size=value_conv_size,
    )
    # The attention term must be O(1), or the comparison would not test it.
    assert float(jnp.abs(attention).max()) > 0.1
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("reduction", [1, 2])
@pytest.mark.parametrize("value_conv_size", [None, 3])
def test_parameter_shapes(reduction, value_conv_size):
  layer = SoftSelfAttention(num_heads=HEADS, reduction=reduction,
                            value_conv_size=value_conv_size)
  params = _init(layer, _tokens(0))["params"]
  shapes = jax.tree_util.tree_map(jnp.shape, params)
  expected = {
      "query": {"kernel": (WIDTH, HEADS, HEAD_DIM), "bias": (HEADS, HEAD_DIM)},
      "value": {"kernel": (WIDTH, HEADS, HEAD_DIM), "bias": (HEADS, HEAD_DIM)},
      "out": {"kernel": (HEADS, HEAD_DIM, WIDTH), "bias": (WIDTH,)},
      "landmark_kernel": (reduction, reduction, HEAD_DIM, HEAD_DIM),
      "landmark_norm": {"scale": (HEAD_DIM,), "bias": (HEAD_DIM,)},
  }
  if value_conv_size is not None:
    expected["value_conv"] = {
        "kernel": (value_conv_size, value_conv_size, 1, HEADS)
    }
  assert shapes == expected
  # PyTorch's default bound 1 / sqrt(fan_in) for both convolutions.
  bound = 1 / np.sqrt(reduction**2 * HEAD_DIM)
  assert float(jnp.abs(params["landmark_kernel"]).max()) <= bound


def test_reduction_one_has_a_landmark_per_token():
  layer = SoftSelfAttention(num_heads=HEADS, reduction=1)
  x = _tokens(3)
  variables = _init(layer, x)
  _, state = layer.apply(variables, x, grid=GRID,
                         capture_intermediates=True, mutable="intermediates")
  (landmarks,) = state["intermediates"]["landmark_norm"]["__call__"]
  chex.assert_shape(landmarks, (2, GRID[0] * GRID[1], HEADS, HEAD_DIM))


def test_gradients_reach_every_parameter():
  layer = SoftSelfAttention(num_heads=HEADS, value_conv_size=3,
                            normalization="symmetric")
  x = _tokens(4)
  params = _init(layer, x)["params"]
  loss = lambda p: jnp.sum(
      jnp.sin(layer.apply({"params": p}, x, grid=GRID))
  )
  grads = jax.jit(jax.grad(loss))(params)
  chex.assert_tree_all_finite(grads)
  norms = jax.tree_util.tree_leaves_with_path(
      jax.tree_util.tree_map(lambda g: float(jnp.abs(g).max()), grads)
  )
  for path, norm in norms:
    assert norm > 0, jax.tree_util.keystr(path)


def test_bfloat16_is_finite_and_near_float32():
  layer = SoftSelfAttention(num_heads=HEADS, value_conv_size=3)
  layer_bf16 = SoftSelfAttention(num_heads=HEADS, value_conv_size=3,
                                 dtype=jnp.bfloat16)
  x = _tokens(5)
  variables = {"params": _perturbed(_init(layer, x)["params"], seed=6)}
  out = layer_bf16.apply(variables, x.astype(jnp.bfloat16), grid=GRID)
  chex.assert_type(out, jnp.bfloat16)
  chex.assert_tree_all_finite(out)
  reference = layer.apply(variables, x, grid=GRID)
  # bfloat16 keeps 8 significant bits (relative rounding 2^-9 = 2e-3); a few
  # roundings in the projections, landmarks and value residual compound
  # (measured 1.2% of the largest output).
  scale = float(jnp.abs(reference).max())
  np.testing.assert_allclose(out.astype(jnp.float32), reference, rtol=0,
                             atol=0.05 * scale)


def test_dropout_acts_only_when_not_deterministic():
  layer = SoftSelfAttention(num_heads=HEADS, dropout_rate=0.5)
  x = _tokens(7)
  variables = _init(layer, x)
  rngs = {"dropout": jax.random.key(8)}
  kept = layer.apply(variables, x, grid=GRID, rngs=rngs)
  np.testing.assert_array_equal(kept, layer.apply(variables, x, grid=GRID))
  dropped = layer.apply(variables, x, grid=GRID, deterministic=False,
                        rngs=rngs)
  assert not np.allclose(dropped, kept)


@pytest.mark.parametrize("kwargs, x_shape, grid, match", [
    (dict(reduction=4), (1, 24, WIDTH), (4, 6), "reduction"),
    (dict(reduction=0), (1, 24, WIDTH), (4, 6), "reduction"),
    (dict(num_heads=3), (1, 24, WIDTH), (4, 6), "num_heads"),
    (dict(value_conv_size=4), (1, 24, WIDTH), (4, 6), "value_conv_size"),
    (dict(value_conv_size=0), (1, 24, WIDTH), (4, 6), "value_conv_size"),
    (dict(), (1, 20, WIDTH), (4, 6), "grid"),
    (dict(), (1, 24, WIDTH), (4, 6.0), "grid"),
    (dict(normalization="row"), (1, 24, WIDTH), (4, 6), "normalization"),
])
def test_bad_arguments_raise(kwargs, x_shape, grid, match):
  layer = SoftSelfAttention(**{"num_heads": HEADS, **kwargs})
  with pytest.raises(ValueError, match=match):
    layer.init(jax.random.key(0), jnp.ones(x_shape), grid=grid)


def test_strided_conv_landmarks_bad_kernel_raises():
  q = jnp.ones((16, 1, 4))
  with pytest.raises(ValueError, match="kernel"):
    strided_conv_landmarks(q, jnp.ones((2, 2, 3, 4)), grid=(4, 4),
                           reduction=2)


def test_strided_conv_landmarks_of_an_empty_batch_are_empty():
  # An empty shard: the landmark count must not be inferred from 0 elements.
  landmarks = strided_conv_landmarks(
      jnp.ones((0, 16, 2, 4)), jnp.ones((2, 2, 4, 3)), grid=(4, 4),
      reduction=2,
  )
  assert landmarks.shape == (0, 4, 2, 3)
