"""Gated positional self-attention (ConViT): pure functions against references.

The references are written from the definitions with numpy: r_ij from the
token coordinates, softmaxes over all keys, a 3 x 3 convolution with
`jax.lax.conv_general_dilated`, distances summed by hand.
"""

import functools

import chex
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kattn
from kattn.attention import gpsa

_settings = hypothesis.settings(
    max_examples=100, deadline=None, derandomize=True
)
seeds = st.integers(0, 2**32 - 1)
grids = st.sampled_from([(3, 3), (4, 5), (6, 6)])
head_counts = st.sampled_from([1, 4, 9])
BATCH, DIM = 2, 8
# float32 rounding of softmaxes and sums of O(1) terms over <= 36 keys.
RTOL, ATOL = 1e-5, 1e-5


def _normal(rng, shape, scale=1.0):
  return (scale * rng.standard_normal(shape)).astype(np.float32)


def _softmax(logits):
  logits = logits - logits.max(axis=-1, keepdims=True)
  e = np.exp(logits)
  return e / e.sum(axis=-1, keepdims=True)


def _reference_weights(q, k, position_weights, gate_logits, grid):
  """float64 GPSA weights straight from eq. (5) of the paper."""
  q, k = np.float64(q), np.float64(k)
  height, width = grid
  rows, cols = np.divmod(np.arange(height * width), width)
  dcol = cols[None, :] - cols[:, None]
  drow = rows[None, :] - rows[:, None]
  r = np.stack([dcol, drow, dcol**2 + drow**2], -1).astype(np.float64)
  content = _softmax(
      np.einsum("...qhd,...khd->...hqk", q, k) / np.sqrt(q.shape[-1])
  )
  positional = _softmax(np.einsum("qkc,hc->hqk", r, position_weights))
  gate = 1 / (1 + np.exp(-np.float64(gate_logits)))[:, None, None]
  return (1 - gate) * content + gate * positional


def _inputs(seed, grid, heads, scale=1.0):
  rng = np.random.default_rng(seed)
  length = grid[0] * grid[1]
  q, k, v = (_normal(rng, (BATCH, length, heads, DIM), scale) for _ in "qkv")
  return rng, q, k, v


_jit_weights = jax.jit(
    lambda q, k, w, g, *, grid: gpsa.gpsa_attention_weights(q, k, w, g, grid=grid),
    static_argnames="grid",
)


@_settings
@hypothesis.given(seed=seeds, grid=grids, heads=head_counts)
def test_weights_match_the_definition_and_rows_sum_to_one(seed, grid, heads):
  rng, q, k, _ = _inputs(seed, grid, heads)
  w = _normal(rng, (heads, 3))
  g = _normal(rng, (heads,), 2.0)
  got = _jit_weights(q, k, w, g, grid=grid)
  chex.assert_shape(got, (BATCH, heads, grid[0] * grid[1], grid[0] * grid[1]))
  np.testing.assert_allclose(
      got, _reference_weights(q, k, w, g, grid), rtol=RTOL, atol=ATOL
  )
  np.testing.assert_allclose(got.sum(-1), 1.0, rtol=0, atol=1e-6)


class GPSAVariantsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_output_is_the_weighted_average_of_values(self):
    grid, heads = (4, 5), 4
    rng, q, k, v = _inputs(0, grid, heads)
    w, g = _normal(rng, (heads, 3)), _normal(rng, (heads,))
    fn = self.variant(functools.partial(
        gpsa.gated_positional_self_attention, grid=grid
    ))
    out = fn(q, k, v, w, g)
    chex.assert_shape(out, v.shape)
    chex.assert_type(out, jnp.float32)
    expected = np.einsum(
        "bhqk,bkhd->bqhd", _reference_weights(q, k, w, g, grid), v
    )
    np.testing.assert_allclose(out, expected, rtol=RTOL, atol=ATOL)

  @chex.variants(with_jit=True, without_jit=True)
  def test_linear_form_matches_quadratic_with_the_same_features(self):
    grid, heads = (6, 6), 9
    rng, q, k, v = _inputs(1, grid, heads, scale=0.5)
    w, g = _normal(rng, (heads, 3)), _normal(rng, (heads,))
    projection = kattn.orthogonal_random_projection(
        jax.random.key(3), 16, DIM
    )
    phi = kattn.attention.favor_feature_map(projection, DIM)
    fn = self.variant(functools.partial(
        gpsa.linear_gated_positional_self_attention, feature_map=phi,
        grid=grid,
    ))
    weights = gpsa.gpsa_attention_weights(
        q, k, w, g, grid=grid, feature_map=phi
    )
    expected = kattn.attention.weighted_average(weights, v)
    np.testing.assert_allclose(fn(q, k, v, w, g), expected, rtol=RTOL,
                               atol=ATOL)


_FEATURES = {
    "favor": kattn.attention.favor_feature_map(
        kattn.orthogonal_random_projection(jax.random.key(3), 16, DIM), DIM
    ),
    "elu": kattn.elu_plus_one_features,
}


@functools.partial(
    jax.jit, static_argnames=("grid", "features", "method", "quadratic")
)
def _jit_gpsa(q, k, v, w, g, *, grid, features, method, quadratic):
  phi = _FEATURES[features]
  if quadratic:
    weights = gpsa.gpsa_attention_weights(q, k, w, g, grid=grid,
                                          feature_map=phi)
    return kattn.attention.weighted_average(weights, v)
  return gpsa.linear_gated_positional_self_attention(
      q, k, v, w, g, feature_map=phi, grid=grid, positional_method=method
  )


@_settings
@hypothesis.given(
    seed=seeds, grid=grids, heads=head_counts,
    features=st.sampled_from(sorted(_FEATURES)),
    method=st.sampled_from(gpsa.POSITIONAL_METHODS),
)
def test_linear_gpsa_matches_quadratic_gpsa(seed, grid, heads, features,
                                            method):
  rng, q, k, v = _inputs(seed, grid, heads, scale=0.5)
  w = _normal(rng, (heads, 3))
  if method == "fft":
    # The FFT rounds relative to a head's largest weight (see
    # `toeplitz_2d_linear_attention`): its tables are scaled to a spread of
    # 4 in log-weight, the range it is documented accurate for.
    table = np.asarray(gpsa.positional_log_bias_table(w, grid=grid))
    spread = (table.max(axis=(1, 2)) - table.min(axis=(1, 2)))[:, None]
    w = (4.0 * w / spread).astype(np.float32)
  g = _normal(rng, (heads,), 2.0)
  args = dict(grid=grid, features=features, method=method)
  np.testing.assert_allclose(
      _jit_gpsa(q, k, v, w, g, quadratic=False, **args),
      _jit_gpsa(q, k, v, w, g, quadratic=True, **args),
      rtol=1e-4, atol=2e-5,
  )


def test_separable_form_is_exact_at_large_locality_strength():
  grid, heads = (8, 8), 9
  _, q, k, v = _inputs(2, grid, heads)
  w = gpsa.locality_position_weights(heads, locality_strength=50.0)
  g = jnp.full((heads,), 3.0)
  phi = kattn.elu_plus_one_features
  expected = kattn.attention.weighted_average(
      gpsa.gpsa_attention_weights(q, k, w, g, grid=grid, feature_map=phi), v
  )
  got = gpsa.linear_gated_positional_self_attention(
      q, k, v, w, g, feature_map=phi, grid=grid
  )
  np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)


def test_locality_init_with_nine_heads_is_the_3x3_offset_grid():
  centres = gpsa.locality_centres(9)
  assert sorted(map(tuple, centres.tolist())) == [
      (float(r), float(c)) for r in (-1, 0, 1) for c in (-1, 0, 1)
  ]
  # The reference's ordering: head h1 + 3 h2 looks h1 - 1 rows, h2 - 1 cols.
  np.testing.assert_array_equal(centres[1], [0.0, -1.0])
  np.testing.assert_array_equal(centres[3], [-1.0, 0.0])
  w = gpsa.locality_position_weights(9, locality_strength=2.0)
  np.testing.assert_array_equal(
      w, 2.0 * np.stack([2 * centres[:, 1], 2 * centres[:, 0],
                         -np.ones(9)], -1)
  )


@pytest.mark.parametrize("alpha", [1.0, 10.0, 30.0])
def test_each_head_peaks_at_its_own_offset(alpha):
  grid = (7, 7)
  weights = np.asarray(gpsa.positional_attention_weights(
      gpsa.locality_position_weights(9, locality_strength=alpha), grid=grid
  ))
  centres = gpsa.locality_centres(9).astype(int)
  for query in range(49):
    row, col = divmod(query, 7)
    for head, (dr, dc) in enumerate(centres):
      target = (row + dr, col + dc)
      if not (0 <= target[0] < 7 and 0 <= target[1] < 7):
        continue
      assert np.argmax(weights[head, query]) == target[0] * 7 + target[1]
      if alpha >= 10:
        # One-hot: exp(-alpha) of the peak on each of the nearest offsets.
        assert weights[head, query].max() > 1 - 4 * np.exp(-alpha) - 1e-6
  if alpha == 1.0:
    # Digest: at alpha = 1 an interior head keeps 0.318 on its peak.
    np.testing.assert_allclose(weights[4, 24].max(), 0.318, atol=5e-4)


def test_large_alpha_and_gate_is_a_3x3_convolution_inside():
  grid, heads, width = (6, 7), 9, 5
  rng = np.random.default_rng(4)
  x = _normal(rng, (BATCH, grid[0] * grid[1], heads, width))
  w = gpsa.locality_position_weights(heads, locality_strength=30.0)
  out = gpsa.gated_positional_self_attention(
      x, x, x, w, jnp.full((heads,), 30.0), grid=grid
  )
  # Head h copies the token at its offset: a conv whose tap Delta_h is the
  # identity on the head's channels.
  kernel = np.zeros((3, 3, heads * width, heads * width), np.float32)
  for head, (dr, dc) in enumerate(gpsa.locality_centres(heads).astype(int)):
    block = slice(head * width, (head + 1) * width)
    kernel[dr + 1, dc + 1, block, block] = np.eye(width)
  image = x.reshape(BATCH, *grid, heads * width)
  conv = jax.lax.conv_general_dilated(
      image, kernel, (1, 1), "SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
  )
  got = np.asarray(out).reshape(BATCH, *grid, heads * width)
  np.testing.assert_allclose(
      got[:, 1:-1, 1:-1], conv[:, 1:-1, 1:-1], rtol=1e-5, atol=1e-5
  )


_jit_gpsa_plain = jax.jit(
    lambda q, k, v, w, g, *, grid: gpsa.gated_positional_self_attention(
        q, k, v, w, g, grid=grid
    ),
    static_argnames="grid",
)


@_settings
@hypothesis.given(seed=seeds, grid=grids, heads=head_counts)
def test_closed_gate_is_plain_softmax_attention(seed, grid, heads):
  rng, q, k, v = _inputs(seed, grid, heads)
  w = _normal(rng, (heads, 3), 3.0)
  got = _jit_gpsa_plain(q, k, v, w, jnp.full((heads,), -30.0), grid=grid)
  np.testing.assert_allclose(
      got, kattn.softmax_attention(q, k, v), rtol=1e-5, atol=1e-5
  )


def test_positional_term_is_toeplitz_and_input_independent():
  grid = (5, 6)
  w = _normal(np.random.default_rng(5), (4, 3))
  weights = np.asarray(gpsa.positional_attention_weights(w, grid=grid))
  # Logits depend on the offset only: the log-ratio of two keys seen from a
  # query equals that from a query moved by the same offset.
  logits = np.log(weights)
  table = np.asarray(gpsa.positional_log_bias_table(w, grid=grid))
  rows, cols = np.divmod(np.arange(30), 6)
  for i in (0, 7, 29):
    offsets = (rows - rows[i] + 4, cols - cols[i] + 5)
    expected = table[:, offsets[0], offsets[1]]
    np.testing.assert_allclose(
        logits[:, i] - logits[:, i, :1], expected - expected[:, :1],
        atol=1e-4,
    )
  _, q1, k1, _ = _inputs(6, grid, 4)
  _, q2, k2, _ = _inputs(7, grid, 4)
  g = jnp.full((4,), 30.0)
  np.testing.assert_allclose(
      gpsa.gpsa_attention_weights(q1, k1, w, g, grid=grid),
      gpsa.gpsa_attention_weights(q2, k2, w, g, grid=grid), atol=1e-6,
  )


def test_nonlocality_of_a_constructed_map():
  # On a 2 x 2 grid: query 0 splits between itself and the diagonal token
  # (distance sqrt 2), queries 1-3 attend to token 0 (distances 1, 1, sqrt 2).
  a = np.zeros((1, 4, 4), np.float32)
  a[0, 0, [0, 3]] = 0.5
  a[0, 1:, 0] = 1.0
  expected = (0.5 * np.sqrt(2) + 1 + 1 + np.sqrt(2)) / 4
  np.testing.assert_allclose(
      gpsa.nonlocality(a, grid=(2, 2)), [expected], rtol=1e-6
  )


def test_nonlocality_of_the_one_hot_init_is_the_closed_form():
  grid = (9, 9)
  weights = gpsa.positional_attention_weights(
      gpsa.locality_position_weights(9, locality_strength=30.0), grid=grid
  )
  rows, cols = np.divmod(np.arange(81), 9)
  interior = np.flatnonzero((rows % 8 != 0) & (cols % 8 != 0))
  sub = np.asarray(weights)[:, interior]
  distance = np.sqrt(gpsa.relative_position_encodings(grid)[..., 2])[interior]
  per_head = (sub * distance).sum(-1).mean(-1)
  # Each head's distance is |Delta_h|: 0 (1 head), 1 (4 heads), sqrt 2 (4).
  np.testing.assert_allclose(
      per_head.mean(), (4 * 1 + 4 * np.sqrt(2)) / 9, rtol=1e-5
  )
  # The library metric over all queries: borders pull it below.
  assert float(gpsa.nonlocality(weights, grid=grid).mean()) < per_head.mean()


def test_gradients_are_finite():
  grid, heads = (5, 5), 4
  rng, q, k, v = _inputs(8, grid, heads)
  w = gpsa.locality_position_weights(heads, locality_strength=30.0)
  g = jnp.zeros((heads,))
  phi = kattn.attention.favor_feature_map(
      kattn.orthogonal_random_projection(jax.random.key(0), 16, DIM), DIM
  )

  def losses(q, k, v, w, g):
    quadratic = gpsa.gated_positional_self_attention(q, k, v, w, g, grid=grid)
    linear = gpsa.linear_gated_positional_self_attention(
        q, k, v, w, g, feature_map=phi, grid=grid
    )
    return jnp.sum(quadratic**2) + jnp.sum(linear**2)

  grads = jax.grad(losses, argnums=(0, 1, 2, 3, 4))(q, k, v, w, g)
  for grad in grads:
    chex.assert_tree_all_finite(grad)
    assert float(jnp.abs(grad).max()) > 0


@pytest.mark.parametrize("heads", [2, 3, 8, 10])
def test_non_square_head_counts_are_refused_for_locality_init(heads):
  with pytest.raises(ValueError, match=f"perfect square.*num_heads={heads}"):
    gpsa.locality_position_weights(heads)


def test_bad_arguments_are_named():
  q = jnp.ones((9, 4, 8))
  w, g = gpsa.locality_position_weights(4), jnp.ones(4)
  with pytest.raises(ValueError, match=r"position_weights.*\[4, 3\]"):
    gpsa.gated_positional_self_attention(q, q, q, w[:3], g, grid=(3, 3))
  with pytest.raises(ValueError, match=r"gate_logits.*\[4\]"):
    gpsa.gated_positional_self_attention(q, q, q, w, g[:2], grid=(3, 3))
  with pytest.raises(ValueError, match="grid"):
    gpsa.gated_positional_self_attention(q, q, q, w, g, grid=(2, 4))
  with pytest.raises(ValueError, match="positional_method"):
    gpsa.linear_gated_positional_self_attention(
        q, q, q, w, g, feature_map=kattn.relu_features, grid=(3, 3),
        positional_method="toeplitz",
    )
  with pytest.raises(ValueError, match="locality_strength"):
    gpsa.locality_position_weights(4, locality_strength=0.0)
  with pytest.raises(ValueError, match="square"):
    gpsa.nonlocality(jnp.ones((2, 9, 4)), grid=(3, 3))
