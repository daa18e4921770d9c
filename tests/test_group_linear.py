"""Group-equivariant linear attention: FFT path vs float64 truth, symmetries.

The truth is a numpy float64 computation of the explicit weights
w(i, g; j, m) = phi(q_{i,g}) . phi(k_{j,m}) c_S(g^-1 (p_j - p_i)) c_G(g^-1 m),
with g^-1 taken straight from the group's matrices (M^-1 = M^T), not from
the library's tables.
"""

import functools

from absl.testing import parameterized
import chex
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kattn
from kattn import groups as groups_lib
from kattn import testing
from kattn.attention import group_linear
from kattn.flax import group_linear as flax_group_linear
from kattn.positional import toeplitz

_settings = hypothesis.settings(
    max_examples=100, deadline=None, derandomize=True
)
seeds = st.integers(0, 2**32 - 1)
# Few fixed shapes, so each jitted function compiles once per (group, grid)
# and hypothesis draws values, tables and group elements.
pixel_groups = st.sampled_from(["z2", "p4", "p4m"])
rotation_groups = st.sampled_from(["p4", "p4m"])
square_grids = st.sampled_from([(3, 3), (4, 4), (5, 5)])
small_grids = st.sampled_from([(3, 3), (4, 4)])
module_grids = st.just((3, 3))  # a module compiles slower than a function
elements = st.integers(0, 7)  # taken modulo the group's order
methods = st.sampled_from(["fft", "dense"])
BATCH, HEADS, NUM_FEATURES, DIM, V_DIM = 2, 2, 6, 8, 3

# float32 FFT rounding, relative to the largest term of a channel, with
# log-bias tables ~ N(0, 1) and O(1) outputs: measured <= 8e-7 against the
# float64 truth; 1e-5 leaves > 10x.
RTOL, ATOL = 1e-5, 1e-5
# A turned input changes which float32 roundings the FFT makes, not the math
# (the FFT is not a permutation of the sums): measured <= 8e-6 absolute on
# outputs up to ~7, and at most 21% of this allowance, over 150 draws of
# every test below and every element.
EQUIVARIANCE_RTOL, EQUIVARIANCE_ATOL = 1e-4, 1e-5

PROJECTION = kattn.orthogonal_random_projection(
    jax.random.key(7), NUM_FEATURES, DIM
)
FAVOR_MAP = kattn.attention.favor_feature_map(PROJECTION, DIM)
identity = lambda x: x


def _normal(rng, shape, scale=1.0):
  return (scale * rng.standard_normal(shape)).astype(np.float32)


def _positive(rng, shape):
  return (rng.random(shape) + 0.05).astype(np.float32)


def _tables(rng, group, grid, scale=1.0):
  """Random spatial `[heads, 2H-1, 2W-1]` and group `[heads, order]` tables."""
  group = groups_lib.get_group(group)
  shape = (HEADS,) + toeplitz.relative_bias_shape(grid, mode="padded")
  return _normal(rng, shape, scale), _normal(rng, (HEADS, group.order), scale)


def _tokens(rng, group, grid, dim, *, lifting, make=_normal):
  order = () if lifting else (groups_lib.get_group(group).order,)
  return make(rng, (BATCH,) + order + (grid[0] * grid[1], HEADS, dim))


# The float64 truth, from the definition.


def _np_relative(group, grid):
  """Spatial table indices of g^-1 (p_j - p_i) and the relative g^-1 m.

  Returns `([order, L, L] rows, [order, L, L] cols, [order, order] elements)`.
  """
  group = groups_lib.get_group(group)
  height, width = grid
  rows, cols = np.divmod(np.arange(height * width), width)
  positions = np.stack([rows, cols], -1).astype(np.float64)
  offsets = positions[None, :, :] - positions[:, None, :]  # p_j - p_i
  # g^-1 delta = M_g^T delta: the matrices are orthogonal.
  acted = np.rint(np.einsum("gab,ija->gijb", group.matrices, offsets))
  acted = acted.astype(np.int64)
  relative = np.einsum("gba,mbc->gmac", group.matrices, group.matrices)
  distance = np.abs(relative[:, :, None] - group.matrices[None, None]).sum(
      (-2, -1)
  )
  return acted[..., 0] + height - 1, acted[..., 1] + width - 1, np.argmin(
      distance, axis=-1
  )


def _np_attention(qf, kf, v, log_bias, group_log_bias, group, grid, *,
                  group_index="relative", turn_spatial=True):
  """float64 out(i, g) = sum w v / sum w with explicit weights.

  Lifting when `group_log_bias` is None. `group_index="absolute"` (c_G(m))
  and `turn_spatial=False` (c_S(p_j - p_i) for every g) are the broken
  variants of the negative controls.
  """
  f64 = lambda x: np.asarray(x, np.float64)
  qf, kf, v, log_bias = map(f64, (qf, kf, v, log_bias))
  rows, cols, relative = _np_relative(group, grid)
  if not turn_spatial:
    rows, cols = rows[:1].repeat(len(rows), 0), cols[:1].repeat(len(cols), 0)
  spatial = np.exp(log_bias[:, rows, cols])  # [h, g, i, j]
  if group_log_bias is None:
    kernel = np.einsum("bihf,bjhf->bhij", qf, kf)
    weights = kernel[:, :, None] * spatial  # [b, h, g, i, j]
    out = np.einsum("bhgij,bjhe->bgihe", weights, v)
    return out / weights.sum(-1).transpose(0, 2, 3, 1)[..., None]
  order = relative.shape[0]
  index = relative if group_index == "relative" else np.tile(
      np.arange(order), (order, 1)
  )
  mixing = np.exp(f64(group_log_bias)[:, index])  # [h, g, m]
  kernel = np.einsum("bgihf,bmjhf->bhgimj", qf, kf)
  weights = (
      kernel * spatial[:, :, :, None, :] * mixing[:, :, None, :, None]
  )
  out = np.einsum("bhgimj,bmjhe->bgihe", weights, v)
  return out / weights.sum((-2, -1)).transpose(0, 2, 3, 1)[..., None]


# The FFT and explicit-weights paths, jitted once per (group, grid, method).

_lifting = jax.jit(
    group_linear.group_lifting_feature_map_attention,
    static_argnames=("group", "feature_map", "grid", "method"),
)
_group = jax.jit(
    group_linear.group_feature_map_attention,
    static_argnames=("group", "feature_map", "grid", "method"),
)


def _fft(q, k, v, log_bias, group_log_bias, group, grid, feature_map,
         method="fft"):
  if group_log_bias is None:
    return _lifting(q, k, v, log_bias, group=group, feature_map=feature_map,
                    grid=grid, method=method)
  return _group(q, k, v, log_bias, group_log_bias, group=group,
                feature_map=feature_map, grid=grid, method=method)


@_settings
@hypothesis.given(
    seed=seeds, group=pixel_groups, grid=square_grids, lifting=st.booleans(),
    method=methods,
)
def test_both_paths_match_the_float64_dense_truth(
    seed, group, grid, lifting, method
):
  rng = np.random.default_rng(seed)
  qf, kf = (
      _tokens(rng, group, grid, NUM_FEATURES, lifting=lifting, make=_positive)
      for _ in range(2)
  )
  v = _tokens(rng, group, grid, V_DIM, lifting=lifting)
  log_bias, group_log_bias = _tables(rng, group, grid)
  group_log_bias = None if lifting else group_log_bias
  out = _fft(qf, kf, v, log_bias, group_log_bias, group, grid, identity,
             method)
  expected = _np_attention(qf, kf, v, log_bias, group_log_bias, group, grid)
  np.testing.assert_allclose(out, expected, rtol=RTOL, atol=ATOL)


@_settings
@hypothesis.given(
    seed=seeds, group=pixel_groups, grid=square_grids, lifting=st.booleans()
)
def test_library_dense_reference_matches_the_float64_truth(
    seed, group, grid, lifting
):
  rng = np.random.default_rng(seed)
  qf, kf = (
      _tokens(rng, group, grid, NUM_FEATURES, lifting=lifting, make=_positive)
      for _ in range(2)
  )
  v = _tokens(rng, group, grid, V_DIM, lifting=lifting)
  log_bias, group_log_bias = _tables(rng, group, grid)
  group_log_bias = None if lifting else group_log_bias
  out = _dense(qf, kf, v, log_bias, group_log_bias, group=group, grid=grid)
  expected = _np_attention(qf, kf, v, log_bias, group_log_bias, group, grid)
  # Explicit float32 sums of <= 200 positive O(1) terms.
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


_dense = jax.jit(
    group_linear.dense_group_kernel_attention, static_argnames=("group", "grid")
)


class FavorMatchesDenseTest(chex.TestCase, parameterized.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.product(group=("z2", "p4", "p4m"), lifting=(True, False))
  def test_favor_matches_dense_favor_features(self, group, lifting):
    rng = np.random.default_rng(0)
    # One grid per group here; the hypothesis tests above draw all of them.
    grid = {"z2": (3, 3), "p4": (4, 4), "p4m": (5, 5)}[group]
    q, k = (_tokens(rng, group, grid, DIM, lifting=lifting) for _ in range(2))
    v = _tokens(rng, group, grid, V_DIM, lifting=lifting)
    log_bias, group_log_bias = _tables(rng, group, grid)
    if lifting:
      attend = functools.partial(
          group_linear.group_lifting_favor_attention, group=group,
          projection=PROJECTION, grid=grid,
      )
      out = self.variant(attend)(q, k, v, log_bias)
      group_log_bias = None
    else:
      attend = functools.partial(
          group_linear.group_favor_attention, group=group,
          projection=PROJECTION, grid=grid,
      )
      out = self.variant(attend)(q, k, v, log_bias, group_log_bias)
    order = groups_lib.get_group(group).order
    chex.assert_shape(out, (BATCH, order, grid[0] * grid[1], HEADS, V_DIM))
    chex.assert_type(out, jnp.float32)
    expected = _np_attention(
        FAVOR_MAP(q).dense(), FAVOR_MAP(k).dense(), v, log_bias,
        group_log_bias, group, grid,
    )
    np.testing.assert_allclose(out, expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("group", ["p4", "p4m"])
def test_turned_tables_are_the_turned_images_of_the_table(group):
  group = groups_lib.get_group(group)
  log_bias = _normal(np.random.default_rng(0), (HEADS, 7, 7))
  turned = group_linear.turned_log_bias(log_bias, group=group, grid=(4, 4))
  for element in range(group.order):
    k, s = group.decompose(element)
    # (g . b)(delta) = b(g^-1 delta), g = R^k M^s: np.rot90 after the flip.
    flipped = np.flip(log_bias, -1) if s else log_bias
    np.testing.assert_array_equal(
        turned[element], np.rot90(flipped, k, axes=(-2, -1))
    )


# Equivariance: turning the input turns the output (regular representation).


def _as_images(tokens, grid):
  return tokens.reshape(tokens.shape[:-3] + grid + (-1,))


def _split_channels(x, grid):
  """`[*batch, H, W, 2 DIM + V_DIM]` -> q, k `[*batch, L, 1, DIM]`, v."""
  tokens = x.reshape(x.shape[:-3] + (grid[0] * grid[1], 1, x.shape[-1]))
  return (
      tokens[..., :DIM], tokens[..., DIM:2 * DIM], tokens[..., 2 * DIM:]
  )


@functools.partial(jax.jit, static_argnames=("group", "grid", "method"))
def _lifting_favor_images(x, log_bias, *, group, grid, method):
  q, k, v = _split_channels(x, grid)
  out = group_linear.group_lifting_favor_attention(
      q, k, v, log_bias, group=group, projection=PROJECTION, grid=grid,
      method=method,
  )
  return _as_images(out, grid)


@functools.partial(jax.jit, static_argnames=("group", "grid", "method"))
def _group_favor_images(x, log_bias, group_log_bias, *, group, grid, method):
  q, k, v = _split_channels(x, grid)
  out = group_linear.group_favor_attention(
      q, k, v, log_bias, group_log_bias, group=group, projection=PROJECTION,
      grid=grid, method=method,
  )
  return _as_images(out, grid)


def _assert_equivariant(fn, x, group, element, input_kind):
  group = groups_lib.get_group(group)
  testing.assert_group_equivariant(
      fn, x, group, input_kind=input_kind, output_kind="regular",
      elements=[element % group.order], rtol=EQUIVARIANCE_RTOL,
      atol=EQUIVARIANCE_ATOL,
  )


def _one_head_tables(rng, group, grid):
  log_bias, group_log_bias = _tables(rng, group, grid)
  return log_bias[:1], group_log_bias[:1]


@_settings
@hypothesis.given(
    seed=seeds, group=rotation_groups, grid=small_grids, element=elements,
    method=methods,
)
def test_lifting_favor_is_equivariant(seed, group, grid, element, method):
  rng = np.random.default_rng(seed)
  x = _normal(rng, (BATCH,) + grid + (2 * DIM + V_DIM,))
  log_bias, _ = _one_head_tables(rng, group, grid)
  fn = lambda x: _lifting_favor_images(
      x, log_bias, group=group, grid=grid, method=method
  )
  _assert_equivariant(fn, x, group, element, "image")


@_settings
@hypothesis.given(
    seed=seeds, group=rotation_groups, grid=small_grids, element=elements,
    method=methods,
)
def test_group_favor_is_equivariant(seed, group, grid, element, method):
  rng = np.random.default_rng(seed)
  order = groups_lib.get_group(group).order
  x = _normal(rng, (BATCH, order) + grid + (2 * DIM + V_DIM,))
  log_bias, group_log_bias = _one_head_tables(rng, group, grid)
  fn = lambda x: _group_favor_images(
      x, log_bias, group_log_bias, group=group, grid=grid, method=method
  )
  _assert_equivariant(fn, x, group, element, "regular")


def _np_images(x, log_bias, group_log_bias, group, grid, **broken):
  """The float64 truth on images, with positive pointwise features."""
  q, k, v = _split_channels(np.asarray(x, np.float64), grid)
  qf, kf = np.exp(0.5 * q), np.exp(0.5 * k)
  return _as_images(
      _np_attention(qf, kf, v, log_bias, group_log_bias, group, grid, **broken),
      grid,
  )


@pytest.mark.parametrize("group", ["p4", "p4m"])
@pytest.mark.parametrize(
    "lifting, broken",
    [
        (True, dict(turn_spatial=False)),
        (False, dict(turn_spatial=False)),
        (False, dict(group_index="absolute")),
    ],
)
def test_negative_control_unturned_or_absolute_biases_break_equivariance(
    group, lifting, broken
):
  """The same check fails when a bias is not of a relative group element.

  The float64 truth is exactly equivariant with relative biases
  and fails with the broken ones, so the FFT tests above could fail too.
  """
  rng = np.random.default_rng(0)
  grid = (4, 4)
  order = groups_lib.get_group(group).order
  shape = (BATCH,) + (() if lifting else (order,)) + grid
  x = _normal(rng, shape + (2 * DIM + V_DIM,))
  log_bias, group_log_bias = _one_head_tables(rng, group, grid)
  group_log_bias = None if lifting else group_log_bias
  kind = "image" if lifting else "regular"
  correct = lambda x: _np_images(x, log_bias, group_log_bias, group, grid)
  # Exact in float64; the assert's jnp transforms round to float32 (6e-8).
  testing.assert_group_equivariant(
      correct, x, group, input_kind=kind, rtol=1e-6, atol=1e-7
  )
  wrong = lambda x: _np_images(
      x, log_bias, group_log_bias, group, grid, **broken
  )
  with pytest.raises(AssertionError, match="group equivariant"):
    testing.assert_group_equivariant(
        wrong, x, group, input_kind=kind, elements=[1],
        rtol=EQUIVARIANCE_RTOL, atol=EQUIVARIANCE_ATOL,
    )


# The Flax modules, with random (nonzero) parameters and a fixed projection.

WIDTH, FEATURES = 5, 8


@functools.lru_cache(maxsize=None)
def _modules(group, grid):
  """Jitted lifting, group and stacked applies, and their init variables."""
  order = groups_lib.get_group(group).order
  lifting = flax_group_linear.LiftingLinearAttention(
      group, features=FEATURES, num_heads=2, num_random_features=8
  )
  layer = flax_group_linear.GroupLinearAttention(
      group, features=FEATURES, num_heads=2, num_random_features=8
  )
  images = jnp.zeros((BATCH,) + grid + (WIDTH,))
  maps = jnp.zeros((BATCH, order) + grid + (FEATURES,))
  variables = (
      _abstract_init(lifting, images, 0), _abstract_init(layer, maps, 1)
  )
  return (
      jax.jit(lifting.apply), jax.jit(layer.apply),
      jax.jit(lambda v1, v2, x: layer.apply(v2, lifting.apply(v1, x))),
      variables,
  )


def _abstract_init(module, x, seed):
  """Variables of `module.init` without compiling it (seconds per module).

  The tests redraw every parameter anyway; the projection is drawn as the
  "favor" sampler draws it. `test_modules_map_images_to_group_maps_*` runs
  the real init.
  """
  shapes = jax.eval_shape(module.init, jax.random.key(seed), x)
  (m, dim), = (
      p.shape for p in jax.tree_util.tree_leaves(shapes["random_features"])
  )
  return {
      "params": jax.tree_util.tree_map(
          lambda p: np.zeros(p.shape, p.dtype), shapes["params"]
      ),
      "random_features": {
          "projection_orthogonal": kattn.orthogonal_random_projection(
              jax.random.key(seed), m, dim
          ),
      },
  }


def _randomised(variables, rng):
  """Every parameter redrawn ~ N(0, 0.5^2); the projection kept."""
  params = jax.tree_util.tree_map(
      lambda p: _normal(rng, p.shape, 0.5), variables["params"]
  )
  return {**variables, "params": params}


@_settings
@hypothesis.given(
    seed=seeds, group=rotation_groups, grid=module_grids, element=elements
)
def test_lifting_module_is_equivariant(seed, group, grid, element):
  rng = np.random.default_rng(seed)
  apply, _, _, (variables, _) = _modules(group, grid)
  variables = _randomised(variables, rng)
  x = _normal(rng, (BATCH,) + grid + (WIDTH,))
  _assert_equivariant(lambda x: apply(variables, x), x, group, element, "image")


@_settings
@hypothesis.given(
    seed=seeds, group=rotation_groups, grid=module_grids, element=elements
)
def test_group_module_is_equivariant(seed, group, grid, element):
  rng = np.random.default_rng(seed)
  _, apply, _, (_, variables) = _modules(group, grid)
  variables = _randomised(variables, rng)
  order = groups_lib.get_group(group).order
  x = _normal(rng, (BATCH, order) + grid + (FEATURES,))
  _assert_equivariant(
      lambda x: apply(variables, x), x, group, element, "regular"
  )


@_settings
@hypothesis.given(
    seed=seeds, group=rotation_groups, grid=module_grids, element=elements
)
def test_lifting_then_group_stack_is_equivariant(seed, group, grid, element):
  rng = np.random.default_rng(seed)
  _, _, stack, (first, second) = _modules(group, grid)
  first, second = _randomised(first, rng), _randomised(second, rng)
  x = _normal(rng, (BATCH,) + grid + (WIDTH,))
  _assert_equivariant(
      lambda x: stack(first, second, x), x, group, element, "image"
  )


# Reductions: z2 is FFT-RPE, zero tables are plain linear attention.

_relative = jax.jit(
    functools.partial(
        toeplitz.relative_feature_map_attention, mode="padded", method="fft"
    ),
    static_argnames=("feature_map", "grid"),
)


@_settings
@hypothesis.given(
    seed=seeds, grid=st.sampled_from([(3, 3), (4, 4), (3, 5)]),
    lifting=st.booleans(),
)
def test_z2_is_relative_feature_map_attention(seed, grid, lifting):
  rng = np.random.default_rng(seed)
  q, k = (_tokens(rng, "z2", grid, DIM, lifting=True) for _ in range(2))
  v = _tokens(rng, "z2", grid, V_DIM, lifting=True)
  log_bias, group_log_bias = _tables(rng, "z2", grid)
  expected = _relative(q, k, v, log_bias, feature_map=FAVOR_MAP, grid=grid)
  if lifting:
    out = _fft(q, k, v, log_bias, None, "z2", grid, FAVOR_MAP)
  else:
    with_axis = lambda x: x[:, None]
    out = _fft(with_axis(q), with_axis(k), with_axis(v), log_bias,
               group_log_bias, "z2", grid, FAVOR_MAP)
  # The same FFTs on the same field: rounding differs only in the order of
  # a few sums.
  np.testing.assert_allclose(out[:, 0], expected, rtol=1e-5, atol=1e-6)


_linear = jax.jit(kattn.linear_attention)


@_settings
@hypothesis.given(
    seed=seeds, group=pixel_groups, grid=square_grids, lifting=st.booleans()
)
def test_zero_tables_are_linear_attention_over_every_token(
    seed, group, grid, lifting
):
  rng = np.random.default_rng(seed)
  qf, kf = (
      _tokens(rng, group, grid, NUM_FEATURES, lifting=lifting, make=_positive)
      for _ in range(2)
  )
  v = _tokens(rng, group, grid, V_DIM, lifting=lifting)
  log_bias, group_log_bias = map(np.zeros_like, _tables(rng, group, grid))
  if lifting:
    out = _fft(qf, kf, v, log_bias, None, group, grid, identity)
    expected = jnp.broadcast_to(_linear(qf, kf, v)[:, None], out.shape)
  else:
    out = _fft(qf, kf, v, log_bias, group_log_bias, group, grid, identity)
    # Query (i, g) sees every (j, m): one sequence of |G| L tokens.
    flat = lambda x: x.reshape((BATCH, -1) + x.shape[-2:])
    expected = _linear(flat(qf), flat(kf), flat(v)).reshape(out.shape)
  np.testing.assert_allclose(out, expected, rtol=RTOL, atol=ATOL)


# Stability, gradients, shapes and dtypes.


def _np_favor_features(x, *, key_axes=None):
  """float64 FAVOR+ features; keys referred to their max log-scale."""
  features = FAVOR_MAP(jnp.asarray(x))
  values = np.asarray(features.values, np.float64)
  if key_axes is None:
    return values
  log_scale = np.asarray(features.log_scale, np.float64)
  log_scale = log_scale - log_scale.max(axis=key_axes, keepdims=True)
  return values * np.exp(log_scale)[..., None]


@pytest.mark.parametrize("lifting", [True, False])
def test_huge_queries_and_keys_are_exact(lifting):
  """|q|, |k| ~ 30 sqrt(dim): exp(q.k / sqrt(dim)) overflows float32."""
  rng = np.random.default_rng(0)
  group, grid = "p4m", (4, 4)
  q, k = (
      30 * _tokens(rng, group, grid, DIM, lifting=lifting) for _ in range(2)
  )
  v = _tokens(rng, group, grid, V_DIM, lifting=lifting)
  log_bias, group_log_bias = _tables(rng, group, grid)
  group_log_bias = None if lifting else group_log_bias
  out = _fft(q, k, v, log_bias, group_log_bias, group, grid, FAVOR_MAP)
  expected = _np_attention(
      _np_favor_features(q),
      _np_favor_features(k, key_axes=(-2,) if lifting else (-3, -2)),
      v, log_bias, group_log_bias, group, grid,
  )
  assert np.all(np.isfinite(out))
  np.testing.assert_allclose(out, expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("method", ["fft", "dense"])
def test_masked_offsets_and_elements_are_exact(method):
  """-inf log-biases (c = 0) drop those offsets and relative elements."""
  rng = np.random.default_rng(0)
  group, grid = "p4m", (4, 4)
  qf, kf = (_tokens(rng, group, grid, NUM_FEATURES, lifting=False,
                    make=_positive) for _ in range(2))
  v = _tokens(rng, group, grid, V_DIM, lifting=False)
  log_bias, group_log_bias = _tables(rng, group, grid)
  log_bias[rng.random(log_bias.shape) < 0.5] = -np.inf
  log_bias[:, 3, 3] = 0.0  # every query keeps itself
  group_log_bias[:, 1:4] = -np.inf
  out = _fft(qf, kf, v, log_bias, group_log_bias, group, grid, identity,
             method)
  expected = _np_attention(qf, kf, v, log_bias, group_log_bias, group, grid)
  np.testing.assert_allclose(out, expected, rtol=RTOL, atol=ATOL)


def test_huge_tables_stay_finite():
  """Log-biases ~ N(0, 40^2): rounding grows, but no inf or nan.

  The FFT rounds each channel relative to its largest term, so accuracy
  degrades with the spread of the table, as in
  `kattn.positional.toeplitz_2d_linear_attention`.
  """
  rng = np.random.default_rng(0)
  group, grid = "p4m", (4, 4)
  q, k = (_tokens(rng, group, grid, DIM, lifting=False) * 30 for _ in range(2))
  v = _tokens(rng, group, grid, V_DIM, lifting=False)
  log_bias, group_log_bias = _tables(rng, group, grid, scale=40.0)
  out = _fft(q, k, v, log_bias, group_log_bias, group, grid, FAVOR_MAP)
  lifted = _fft(q[:, 0], k[:, 0], v[:, 0], log_bias, None, group, grid,
                FAVOR_MAP)
  assert np.all(np.isfinite(out)) and np.all(np.isfinite(lifted))


@pytest.mark.parametrize("lifting", [True, False])
def test_gradients_match_the_dense_reference(lifting):
  rng = np.random.default_rng(0)
  group, grid = "p4m", (3, 3)
  q, k = (_tokens(rng, group, grid, DIM, lifting=lifting, make=_normal)
          for _ in range(2))
  v = _tokens(rng, group, grid, V_DIM, lifting=lifting)
  log_bias, group_log_bias = _tables(rng, group, grid)
  tables = (log_bias,) if lifting else (log_bias, group_log_bias)
  cotangent = _normal(rng, (BATCH, 8, 9, HEADS, V_DIM))

  def fft_loss(q, k, v, *tables):
    out = _fft(q, k, v, tables[0], None if lifting else tables[1], group,
               grid, FAVOR_MAP)
    return jnp.sum(out * cotangent)

  def dense_loss(q, k, v, *tables):
    out = group_linear.dense_group_kernel_attention(
        FAVOR_MAP(q).dense(), FAVOR_MAP(k).dense(), v, *tables, group=group,
        grid=grid,
    )
    return jnp.sum(out * cotangent)

  argnums = tuple(range(3 + len(tables)))
  got = jax.jit(jax.grad(fft_loss, argnums))(q, k, v, *tables)
  expected = jax.jit(jax.grad(dense_loss, argnums))(q, k, v, *tables)
  for g, e in zip(got, expected):
    # Sums of ~|G| L products of O(1) float32 terms.
    np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5)


class ShapesAndDtypesTest(chex.TestCase, parameterized.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters((True, ()), (False, (2, 3)))
  def test_any_batch_shape_and_output_in_the_value_dtype(self, lifting, batch):
    rng = np.random.default_rng(0)
    group, grid = "p4", (3, 3)
    order = () if lifting else (4,)
    shape = batch + order + (9, HEADS)
    qf, kf = (_positive(rng, shape + (NUM_FEATURES,)) for _ in range(2))
    v = _normal(rng, shape + (V_DIM,)).astype(jnp.bfloat16)
    log_bias, group_log_bias = _tables(rng, group, grid)
    tables = (log_bias,) if lifting else (log_bias, group_log_bias)
    attend = (
        group_linear.group_lifting_feature_map_attention if lifting
        else group_linear.group_feature_map_attention
    )
    out = self.variant(functools.partial(
        attend, group=group, feature_map=identity, grid=grid
    ))(qf, kf, v, *tables)
    chex.assert_shape(out, batch + (4, 9, HEADS, V_DIM))
    chex.assert_type(out, jnp.bfloat16)
    expected = group_linear.dense_group_kernel_attention(
        qf, kf, v.astype(jnp.float32), *tables, group=group, grid=grid
    )
    # Only the output is rounded to bf16 (8 mantissa bits, ~0.4%).
    np.testing.assert_allclose(
        out.astype(jnp.float32), expected, rtol=1e-2, atol=1e-2
    )


def test_modules_map_images_to_group_maps_and_keep_their_projection():
  x = jnp.ones((2, 3, 3, WIDTH))
  lifting = flax_group_linear.LiftingLinearAttention(
      "p4m", features=6, num_heads=3, head_dim=5, num_random_features=8
  )
  variables = jax.jit(lifting.init)(jax.random.key(0), x)
  projection = variables["random_features"]["projection_orthogonal"]
  chex.assert_shape(projection, (8, 5))
  chex.assert_shape(variables["params"]["query"]["kernel"], (WIDTH, 3, 5))
  chex.assert_shape(variables["params"]["log_bias"], (3, 5, 5))
  np.testing.assert_array_equal(variables["params"]["log_bias"], 0.0)
  maps = jax.jit(lifting.apply)(variables, x)
  chex.assert_shape(maps, (2, 8, 3, 3, 6))
  redrawn = kattn.flax.redraw(variables, jax.random.key(3))
  assert not np.allclose(
      redrawn["random_features"]["projection_orthogonal"], projection
  )
  layer = flax_group_linear.GroupLinearAttention(
      "p4m", features=4, num_heads=2, attention="elu"
  )
  # Shapes only: the equivariance tests run the group layer.
  variables = jax.eval_shape(layer.init, jax.random.key(1), maps)
  assert "random_features" not in variables
  chex.assert_shape(variables["params"]["group_log_bias"], (2, 8))
  chex.assert_shape(
      jax.eval_shape(layer.apply, variables, maps), (2, 8, 3, 3, 4)
  )


# Errors, named after the argument.


def _group_inputs(order=4, length=9, heads=HEADS):
  x = np.ones((order, length, heads, DIM), np.float32)
  return x, x, x


def _lifting_inputs(length=9):
  x = np.ones((length, HEADS, DIM), np.float32)
  return x, x, x


def _favor(*args, **kwargs):
  return group_linear.group_favor_attention(
      *args, projection=PROJECTION, **kwargs
  )


def _lifting_favor(*args, **kwargs):
  return group_linear.group_lifting_favor_attention(
      *args, projection=PROJECTION, **kwargs
  )


ZERO_3X3 = np.zeros((HEADS, 5, 5), np.float32)


@pytest.mark.parametrize("group", ["p8", "p16"])
def test_groups_without_a_pixel_action_raise(group):
  with pytest.raises(ValueError, match="`group` must map pixels onto pixels"):
    _lifting_favor(*_lifting_inputs(), ZERO_3X3, group=group, grid=(3, 3))
  order = groups_lib.get_group(group).order
  with pytest.raises(ValueError, match="only the 90-degree groups"):
    _favor(*_group_inputs(order), ZERO_3X3, np.zeros((HEADS, order)),
           group=group, grid=(3, 3))
  with pytest.raises(ValueError, match="`group`"):
    group_linear.turned_log_bias(ZERO_3X3, group=group, grid=(3, 3))


def test_unknown_group_name_raises():
  with pytest.raises(ValueError, match="`group` must be one of"):
    _lifting_favor(*_lifting_inputs(), ZERO_3X3, group="p6", grid=(3, 3))


def test_rotations_need_a_square_grid_but_z2_and_mz2_do_not():
  q, k, v = _lifting_inputs(length=6)
  log_bias = np.zeros((HEADS, 3, 5), np.float32)
  for group in ("p4", "p4m"):
    with pytest.raises(ValueError, match="`grid` must be square"):
      _lifting_favor(q, k, v, log_bias, group=group, grid=(2, 3))
  for group in ("z2", "mz2"):
    out = _fft(q, k, v, log_bias, None, group, (2, 3), identity)
    chex.assert_shape(out, (groups_lib.get_group(group).order, 6, HEADS, DIM))
    np.testing.assert_allclose(out, 1.0, rtol=1e-6)  # all values are 1


def _ones(*shape, dtype=np.float32):
  return np.ones(shape, dtype)


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(k=_ones(8, 9, HEADS, DIM)),
         r"`k` axis -4 must hold the 4 elements of group 'p4'"),
        (dict(q=_ones(9, HEADS, DIM), k=_ones(9, HEADS, DIM),
              v=_ones(9, HEADS, DIM)),
         r"`q` must have rank >= 4"),
        (dict(k=_ones(4, 8, HEADS, DIM), v=_ones(4, 8, HEADS, DIM)),
         r"Query and key lengths"),
        (dict(v=_ones(4, 9, 1, DIM)), r"Head counts"),
        (dict(log_bias=_ones(HEADS, 3, 3)), r"`log_bias` must have shape"),
        (dict(log_bias=_ones(1, 5, 5)), r"`log_bias` must have shape"),
        (dict(group_log_bias=_ones(HEADS, 8)),
         r"`group_log_bias` must have shape \[heads, order\] = \(2, 4\)"),
        (dict(group_log_bias=_ones(HEADS, 4, dtype=np.int32)),
         r"`group_log_bias` must have a floating dtype"),
        (dict(grid=(4, 4)), r"`grid` \(4, 4\) holds 16 tokens"),
        (dict(grid=(3,)), r"`grid` must be \(height, width\)"),
    ],
)
def test_bad_shapes_raise_naming_the_argument(change, match):
  q, k, v = _group_inputs()
  arguments = dict(
      q=q, k=k, v=v, log_bias=ZERO_3X3, group_log_bias=_ones(HEADS, 4),
      grid=(3, 3),
  )
  arguments.update(change)
  grid = arguments.pop("grid")
  with pytest.raises(ValueError, match=match):
    _favor(*arguments.values(), group="p4", grid=grid)


def test_dense_reference_validates_like_the_fft_path():
  q, k, v = _group_inputs()
  with pytest.raises(ValueError, match="`q_features` axis -4"):
    group_linear.dense_group_kernel_attention(
        q[:2], k[:2], v[:2], ZERO_3X3, _ones(HEADS, 4),
        group="p4", grid=(3, 3),
    )


@pytest.mark.parametrize(
    "module", [flax_group_linear.LiftingLinearAttention,
               flax_group_linear.GroupLinearAttention]
)
def test_modules_refuse_softmax_and_bad_widths(module):
  order = (4,) if module is flax_group_linear.GroupLinearAttention else ()
  x = jnp.ones((1,) + order + (3, 3, WIDTH))
  init = lambda layer, x: layer.init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="`attention` must name a kernel"):
    init(module("p4", features=8, attention="softmax"), x)
  with pytest.raises(ValueError, match="Unknown `attention`"):
    init(module("p4", features=8, attention="nope"), x)
  with pytest.raises(ValueError, match=r"`features` \(6\) must be divisible"):
    init(module("p4", features=6, num_heads=4), x)
  with pytest.raises(ValueError, match="`grid` must be square"):
    init(module("p4", features=8), jnp.ones((1,) + order + (3, 4, WIDTH)))
  with pytest.raises(ValueError, match="`group` must map pixels onto pixels"):
    init(module("p8", features=8),
         jnp.ones((1,) + (8,) * len(order) + (3, 3, WIDTH)))


def test_group_module_checks_the_group_axis():
  layer = flax_group_linear.GroupLinearAttention("p4m", features=8)
  with pytest.raises(ValueError, match="`x` axis -4 must hold the 8 elements"):
    layer.init(jax.random.key(0), jnp.ones((1, 4, 3, 3, WIDTH)))


def test_unknown_method_and_position_bias_raise():
  with pytest.raises(ValueError, match="`method` must be one of"):
    _favor(*_group_inputs(), ZERO_3X3, np.zeros((HEADS, 4), np.float32),
           group="p4", grid=(3, 3), method="fast")
  layer = flax_group_linear.LiftingLinearAttention(
      "p4", features=4, num_heads=2, position_bias="free")
  with pytest.raises(ValueError, match="`position_bias` must be one of"):
    layer.init(jax.random.key(0), jnp.ones((1, 3, 3, 2)))


@pytest.mark.parametrize("lifting", [True, False])
def test_mlp_position_bias_is_equivariant_and_small(lifting):
  cls = (flax_group_linear.LiftingLinearAttention if lifting
         else flax_group_linear.GroupLinearAttention)
  layer = cls("p4m", features=4, num_heads=2, position_bias="mlp",
              num_random_features=8)
  shape = (2, 6, 6, 3) if lifting else (2, 8, 6, 6, 3)
  x = jax.random.normal(jax.random.key(1), shape)
  variables = layer.init(jax.random.key(0), x)
  # Make the bias non-trivial: the output layer of the MLP starts at zero.
  variables = jax.tree_util.tree_map(
      lambda p: p + 0.3 * jax.random.normal(jax.random.key(2), p.shape),
      variables,
  )
  assert "log_bias" not in variables["params"]
  mlp = sum(np.size(p) for name, tree in variables["params"].items()
            if name.startswith("bias_")
            for p in jax.tree_util.tree_leaves(tree))
  # Dense 2 -> 16, LayerNorm(16), Dense 16 -> heads: whatever the image
  # size (the free table here has 2 x 11 x 11 = 242 entries).
  assert mlp == (2 * 16 + 16) + 2 * 16 + (16 * 2 + 2) + 2  # + window widths
  testing.assert_group_equivariant(
      jax.jit(lambda t: layer.apply(variables, t)), x, "p4m",
      input_kind="image" if lifting else "regular",
      rtol=EQUIVARIANCE_RTOL, atol=EQUIVARIANCE_ATOL,
  )
