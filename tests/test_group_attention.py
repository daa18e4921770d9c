"""GSA-Nets attention functions against dense float64 references; the group index.

The references build every (query, key) pair explicitly, with the
`[L, L, dim]` keys k_j + r(p_j - p_i) the fast functions avoid, and mask the
keys outside the window and the image with -inf. A loop over window offsets
is the plainest form of relative-position attention, for |G| = 1.
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

from kattn import groups
from kattn import testing
from kattn.attention.group import (
    group_self_attention,
    lifting_self_attention,
    relative_group_index,
    window_offsets,
)

# float32 logits of O(1-10) and softmax sums over <= 8 * 25 keys, compared
# with float64: a few ulps of the O(1) outputs.
RTOL, ATOL = 1e-5, 1e-5
_exact = hypothesis.settings(max_examples=100, deadline=None, derandomize=True)
GRIDS = ((3, 3), (4, 4), (5, 5))
WINDOWS = (1, 3, 5, None)
HEADS, DIM, V_DIM = 2, 3, 2


def _table_shape(grid, window):
  return (window, window) if window else (2 * grid[0] - 1, 2 * grid[1] - 1)


def _arrays(seed, magnitude, *shapes):
  rng = np.random.default_rng(seed)
  return [
      (magnitude * rng.standard_normal(shape)).astype(np.float32)
      for shape in shapes
  ]


def _lifting_inputs(seed, magnitude, grid, window, order, batch=(2,)):
  length = grid[0] * grid[1]
  return _arrays(
      seed, magnitude, batch + (length, HEADS, DIM), batch + (length, HEADS, DIM),
      batch + (length, HEADS, V_DIM),
      (order,) + _table_shape(grid, window) + (HEADS, DIM),
  )


def _group_inputs(seed, magnitude, grid, window, order, num_offsets, batch=(1,)):
  length = grid[0] * grid[1]
  shape = batch + (order, length, HEADS)
  return _arrays(
      seed, magnitude, shape + (DIM,), shape + (DIM,), shape + (V_DIM,),
      (order,) + _table_shape(grid, window) + (HEADS, DIM),
      (num_offsets, HEADS, DIM),
  )


def _pairs(grid, window):
  """Table index of p_j - p_i `[L, L, 2]` and whether j is seen by i `[L, L]`."""
  positions = np.indices(grid).reshape(2, -1).T
  delta = positions[None, :] - positions[:, None]
  if window is None:
    centre = np.array(grid) - 1
    seen = np.ones(delta.shape[:2], bool)
  else:
    centre = np.array([window // 2] * 2)
    seen = np.abs(delta).max(-1) <= window // 2
  return np.where(seen[..., None], delta + centre, 0), seen


def _masked_softmax(logits, seen, axis):
  logits = np.where(seen, logits, -np.inf)
  e = np.exp(logits - logits.max(axis=axis, keepdims=True))
  return e / e.sum(axis=axis, keepdims=True)


def _dense_lifting(q, k, v, relative_keys, grid, window, scale=None):
  q, k, v, r = (np.asarray(a, np.float64) for a in (q, k, v, relative_keys))
  scale = q.shape[-1] ** -0.5 if scale is None else scale
  index, seen = _pairs(grid, window)
  r = r[:, index[..., 0], index[..., 1]]  # [g, i, j, h, d]
  keys = k[..., None, None, :, :, :] + r  # [*batch, g, i, j, h, d]
  logits = scale * np.einsum("...ihd,...gijhd->...gijh", q, keys)
  weights = _masked_softmax(logits, seen[:, :, None], axis=-2)
  return np.einsum("...gijh,...jhe->...gihe", weights, v)


def _dense_group(q, k, v, relative_keys, group_keys, group_index, grid, window):
  q, k, v, r, e = (
      np.asarray(a, np.float64)
      for a in (q, k, v, relative_keys, group_keys)
  )
  index, seen = _pairs(grid, window)
  r = r[:, index[..., 0], index[..., 1]]  # [v, i, j, h, d]
  k = np.moveaxis(k, -4, -3)  # [*batch, j, m, h, d]
  keys = (  # [*batch, v, g, i, j, m, h, d]
      k[..., None, None, None, :, :, :, :]
      + r[:, None, :, :, None]
      + e[group_index][:, :, None, None]
  )
  logits = q.shape[-1] ** -0.5 * np.einsum(
      "...gihd,...vgijmhd->...vgijmh", q, keys
  )
  weights = _masked_softmax(logits, seen[:, :, None, None], axis=(-3, -2))
  return np.einsum("...vgijmh,...mjhe->...vihe", weights, v)


def _loop_relative_attention(q, k, v, relative_keys, grid, window):
  """Relative-position local attention, one query and one window at a time.

  q, k `[L, heads, dim]`, v `[L, heads, v_dim]`, relative_keys
  `[window, window, heads, dim]`.
  """
  height, width = grid
  half = window // 2
  out = np.zeros(v.shape)
  for i in range(height * width):
    row, col = divmod(i, width)
    for h in range(q.shape[1]):
      logits, values = [], []
      for dr in range(-half, half + 1):
        for dc in range(-half, half + 1):
          if 0 <= row + dr < height and 0 <= col + dc < width:
            j = (row + dr) * width + col + dc
            key = k[j, h] + relative_keys[dr + half, dc + half, h]
            logits.append(float(q[i, h] @ key) / np.sqrt(q.shape[-1]))
            values.append(v[j, h])
      weights = np.exp(np.array(logits) - max(logits))
      out[i, h] = weights @ np.array(values) / weights.sum()
  return out


@functools.lru_cache(maxsize=None)
def _jitted(fn, grid, window):
  return jax.jit(functools.partial(fn, grid=grid, window=window))


class DenseReferenceTest(chex.TestCase, parameterized.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.product(grid=GRIDS, window=WINDOWS)
  def test_lifting_matches_dense_reference(self, grid, window):
    q, k, v, r = _lifting_inputs(0, 1.0, grid, window, order=4)
    out = self.variant(functools.partial(
        lifting_self_attention, grid=grid, window=window
    ))(q, k, v, r)
    chex.assert_shape(out, (2, 4, grid[0] * grid[1], HEADS, V_DIM))
    chex.assert_type(out, jnp.float32)
    np.testing.assert_allclose(
        out, _dense_lifting(q, k, v, r, grid, window), rtol=RTOL, atol=ATOL
    )

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.product(grid=GRIDS, window=WINDOWS)
  def test_group_matches_dense_reference(self, grid, window):
    group = "p4m"  # Non-abelian, order 8; the drawn-value test covers C_n.
    order = groups.get_group(group).order
    q, k, v, r, e = _group_inputs(1, 1.0, grid, window, order, order)
    index = relative_group_index(group)
    out = self.variant(functools.partial(
        group_self_attention, group_index=index, grid=grid, window=window
    ))(q, k, v, r, e)
    chex.assert_shape(out, (1, order, grid[0] * grid[1], HEADS, V_DIM))
    chex.assert_type(out, jnp.float32)
    np.testing.assert_allclose(
        out, _dense_group(q, k, v, r, e, index, grid, window),
        rtol=RTOL, atol=ATOL,
    )

  @chex.variants(with_jit=True, without_jit=True)
  def test_explicit_scale_and_bfloat16_values(self):
    q, k, v, r = _lifting_inputs(2, 1.0, (4, 4), 3, order=2)
    out = self.variant(functools.partial(
        lifting_self_attention, grid=(4, 4), window=3, scale=0.3
    ))(q, k, v.astype(jnp.bfloat16), r)
    chex.assert_type(out, jnp.bfloat16)
    expected = _dense_lifting(
        q, k, np.asarray(v.astype(jnp.bfloat16), np.float32), r, (4, 4), 3, 0.3
    )
    # Only the output is rounded to bfloat16 (8 bits of mantissa).
    np.testing.assert_allclose(
        np.asarray(out, np.float32), expected, rtol=1e-2, atol=1e-2
    )


@_exact
@hypothesis.given(
    grid=st.sampled_from(GRIDS),
    window=st.sampled_from(WINDOWS),
    order=st.sampled_from([1, 4]),
    seed=st.integers(0, 2**32 - 1),
    magnitude=st.sampled_from([0.1, 1.0, 2.0]),
)
def test_lifting_matches_dense_reference_for_drawn_values(
    grid, window, order, seed, magnitude
):
  q, k, v, r = _lifting_inputs(seed, magnitude, grid, window, order)
  out = _jitted(lifting_self_attention, grid, window)(q, k, v, r)
  # Logits reach magnitude^2 * dim * 2 ~ 24: float32 rounds them to ~3e-6.
  np.testing.assert_allclose(
      out, _dense_lifting(q, k, v, r, grid, window), rtol=5e-5, atol=5e-5
  )


@functools.lru_cache(maxsize=None)
def _jitted_group(grid, window, order):
  """Jitted with a fixed random index into 3 group-key rows: for checking the
  arithmetic any table does, and a static one compiles once per shape."""
  index = np.random.default_rng(order).integers(0, 3, (order,) * 3)
  return index, jax.jit(functools.partial(
      group_self_attention, group_index=index, grid=grid, window=window
  ))


@_exact
@hypothesis.given(
    grid=st.sampled_from(GRIDS),
    window=st.sampled_from(WINDOWS),
    order=st.sampled_from([1, 2, 4]),
    seed=st.integers(0, 2**32 - 1),
    magnitude=st.sampled_from([0.1, 1.0, 2.0]),
)
def test_group_matches_dense_reference_for_drawn_values(
    grid, window, order, seed, magnitude
):
  index, attend = _jitted_group(grid, window, order)
  q, k, v, r, e = _group_inputs(seed, magnitude, grid, window, order, 3)
  # As above, with three terms per logit.
  np.testing.assert_allclose(
      attend(q, k, v, r, e), _dense_group(q, k, v, r, e, index, grid, window),
      rtol=5e-5, atol=5e-5,
  )


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("window", [1, 3, 5])
def test_trivial_group_is_plain_relative_position_attention(grid, window):
  """|G| = 1: both layers are stand-alone relative-position attention."""
  q, k, v, r = _lifting_inputs(3, 1.0, grid, window, order=1, batch=())
  expected = _loop_relative_attention(q, k, v, r[0], grid, window)
  lifted = _jitted(lifting_self_attention, grid, window)(q, k, v, r)
  np.testing.assert_allclose(lifted[0], expected, rtol=RTOL, atol=ATOL)
  # The single group key adds q_i . e to every logit of query i: it cancels.
  e = _arrays(4, 3.0, (1, HEADS, DIM))[0]
  grouped = jax.jit(functools.partial(
      group_self_attention, group_index=relative_group_index("z2"), grid=grid,
      window=window,
  ))(q[None], k[None], v[None], r, e)
  np.testing.assert_allclose(grouped[0], expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("window", [1, 3, 5, 7, None])
def test_rows_sum_to_one_near_borders_with_huge_logits(window):
  """v = 1 gives 1 per query element: in-image weights sum to 1, no NaN."""
  grid = (4, 4)
  q, k, _, r = _lifting_inputs(5, 30.0, grid, window, order=4)
  ones = np.ones(q.shape[:-1] + (V_DIM,), np.float32)
  out = jax.jit(functools.partial(
      lifting_self_attention, grid=grid, window=window
  ))(q, k, ones, r)
  np.testing.assert_allclose(out, 1.0, rtol=1e-6)
  q, k, _, r, e = _group_inputs(6, 30.0, grid, window, 4, 4)
  ones = np.ones(q.shape[:-1] + (V_DIM,), np.float32)
  out = group_self_attention(
      q, k, ones, r, e, relative_group_index("p4"), grid=grid, window=window
  )
  # Summed over the 4 query elements.
  np.testing.assert_allclose(out, 4.0, rtol=1e-6)


def test_gradients_are_finite_and_match_the_reference():
  grid, window = (4, 4), 3
  q, k, v, r = _lifting_inputs(7, 1.0, grid, window, order=2)
  cotangent = _arrays(8, 1.0, (2, 2, 16, HEADS, V_DIM))[0]

  def loss(q, k, v, r):
    out = lifting_self_attention(q, k, v, r, grid=grid, window=window)
    return jnp.sum(out * cotangent)

  with jax.enable_x64(True):
    args = [jnp.asarray(a, jnp.float64) for a in (q, k, v, r)]
    jax.test_util.check_grads(loss, args, order=1, modes=["rev"])
  grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))(q, k, v, r)
  assert all(np.all(np.isfinite(g)) for g in grads)


# ---------------------------------------------------------------------------
# The group index and equivariance of the pure group layer.


@pytest.mark.parametrize("name", groups.GROUP_NAMES)
def test_relative_group_index_is_invariant_under_left_multiplication(name):
  group = groups.get_group(name)
  index = relative_group_index(group)
  chex.assert_shape(index, (group.order,) * 3)
  assert index.dtype == np.int32
  act = group.product  # act[u, e] = u e
  for u in range(group.order):
    np.testing.assert_array_equal(
        index[np.ix_(act[u], act[u], act[u])], index
    )


def _reference_code_index(group):
  """The GSA-Nets reference's phi: (m - g + v) mod n, and its D_4 analogue."""
  order = group.order
  v, g, m = np.meshgrid(*[np.arange(order)] * 3, indexing="ij")
  if not group.mirrored:
    return ((m - g + v) % order).astype(np.int32)
  return group.product[group.product[group.inverse[g], m], v]


@pytest.mark.parametrize("name", ["p4", "p4m"])
def test_reference_code_index_is_not_invariant(name):
  group = groups.get_group(name)
  index = _reference_code_index(group)
  if name == "p4":
    # The reference builds the relative table m - g, rolled by v.
    np.testing.assert_array_equal(
        index, np.stack([np.roll(relative_group_index(group)[0], -v, axis=-1)
                         for v in range(4)])
    )
  act = group.product
  broken = [
      u for u in range(group.order)
      if not np.array_equal(index[np.ix_(act[u], act[u], act[u])], index)
  ]
  assert broken == [u for u in range(1, group.order)]


def _pure_group_layer(group, index, grid, window, seed=0):
  """An equivariant harness around `group_self_attention` for group maps.

  Pointwise channel maps give q, k, v; the relative keys are a fixed
  nonlinear function of v^-1 delta (as the Flax module's MLP is).
  """
  group = groups.as_group(group)
  channels, order = 3, group.order
  wq, wk, wv, wr = _arrays(
      seed, 1.0, (channels, HEADS, DIM), (channels, HEADS, DIM),
      (channels, HEADS, V_DIM), (2, HEADS, DIM),
  )
  (e,) = _arrays(seed + 1, 2.0, (order, HEADS, DIM))
  if window is None:
    offsets = np.stack(np.meshgrid(
        np.arange(1 - grid[0], grid[0]), np.arange(1 - grid[1], grid[1]),
        indexing="ij",
    ), -1)
  else:
    offsets = window_offsets(window)
  acted = groups.acted_offsets(group, offsets).astype(np.float32)
  relative_keys = np.sin(np.einsum("...a,ahd->...hd", acted, wr) + 0.5)

  @jax.jit
  def layer(x):  # [batch, order, H, W, C]
    tokens = x.reshape(x.shape[:2] + (-1, channels))
    q, k, v = (jnp.einsum("...c,chd->...hd", tokens, w) for w in (wq, wk, wv))
    out = group_self_attention(
        q, k, v, relative_keys, e, index, grid=grid, window=window
    )
    return out.reshape(x.shape[:-1] + (HEADS * V_DIM,))

  return layer


@pytest.mark.parametrize("name", ["p4", "p4m"])
@pytest.mark.parametrize("size,window", [(5, 3), (6, 5), (5, None)])
def test_group_layer_is_equivariant_only_with_a_valid_index(name, size, window):
  group = groups.get_group(name)
  grid = (size, size)
  (x,) = _arrays(9, 1.0, (2, group.order, size, size, 3))
  valid = _pure_group_layer(group, relative_group_index(group), grid, window)
  testing.assert_group_equivariant(
      valid, x, group, input_kind="regular", rtol=1e-4, atol=1e-5
  )
  invalid = _pure_group_layer(group, _reference_code_index(group), grid, window)
  with pytest.raises(AssertionError, match="Not group equivariant"):
    testing.assert_group_equivariant(
        invalid, x, group, input_kind="regular", rtol=1e-4, atol=1e-5
    )


# ---------------------------------------------------------------------------
# Errors.


def test_window_offsets():
  offsets = window_offsets(5)
  chex.assert_shape(offsets, (5, 5, 2))
  np.testing.assert_array_equal(offsets[2, 2], [0, 0])
  np.testing.assert_array_equal(offsets[0, 4], [-2, 2])
  np.testing.assert_array_equal(window_offsets(1), [[[0, 0]]])


@pytest.mark.parametrize("window", [0, 2, 4, -3, 3.0, True])
def test_even_or_bad_window_raises(window):
  with pytest.raises(ValueError, match="`window` must be a positive odd int"):
    window_offsets(window)
  q, k, v, r = _lifting_inputs(0, 1.0, (3, 3), 3, order=1)
  with pytest.raises(ValueError, match="cannot be centred"):
    lifting_self_attention(q, k, v, r, grid=(3, 3), window=window)


def test_lifting_argument_errors():
  q, k, v, r = _lifting_inputs(0, 1.0, (3, 3), 3, order=4)
  attend = functools.partial(lifting_self_attention, grid=(3, 3), window=3)
  with pytest.raises(ValueError, match=r"`relative_keys` must be .*\(3, 3\)"):
    attend(q, k, v, r[:, :2])
  with pytest.raises(ValueError, match=r"`relative_keys` must be .*\(5, 5\)"):
    lifting_self_attention(q, k, v, r, grid=(3, 3), window=None)
  with pytest.raises(ValueError, match="heads=2"):
    attend(q, k, v, r[..., :1, :])
  with pytest.raises(ValueError, match="`relative_keys` must have a floating"):
    attend(q, k, v, r.astype(np.int32))
  with pytest.raises(ValueError, match=r"`grid` \(3, 4\) holds 12 tokens"):
    lifting_self_attention(q, k, v, r, grid=(3, 4), window=3)
  with pytest.raises(ValueError, match="Query and key lengths"):
    attend(q[:, :4], k, v, r)
  with pytest.raises(ValueError, match="`scale` must be a positive"):
    attend(q, k, v, r, scale=0.0)


def test_group_argument_errors():
  grid, window = (3, 3), 3
  q, k, v, r, e = _group_inputs(0, 1.0, grid, window, 4, 4)
  index = relative_group_index("p4")
  attend = functools.partial(group_self_attention, grid=grid, window=window)
  with pytest.raises(ValueError, match=r"`group_index` must be \[order, order"):
    attend(q, k, v, r, e, index[:2])
  with pytest.raises(ValueError, match="`group_index` must have an integer"):
    attend(q, k, v, r, e, index.astype(np.float32))
  with pytest.raises(ValueError, match=r"index the 4 rows .* \[1, 4\]"):
    attend(q, k, v, r, e, index + 1)
  with pytest.raises(ValueError, match="concrete"):
    jax.jit(lambda i: attend(q, k, v, r, e, i))(index)
  with pytest.raises(ValueError, match="Group orders"):
    attend(q, k, v, r[:2], e, index)
  with pytest.raises(ValueError, match=r"`relative_keys` must be .*\(3, 3\)"):
    attend(q, k, v, r[:, :, :1], e, index)
  with pytest.raises(ValueError, match="`group_keys` must be"):
    attend(q, k, v, r, e[..., :2], index)
  with pytest.raises(ValueError, match="`q` must have rank >= 4"):
    attend(q[0, 0], k[0, 0], v[0, 0], r, e, index)
  with pytest.raises(ValueError, match="Batch axes"):
    attend(q, k[:, :2], v, r, e, index)
