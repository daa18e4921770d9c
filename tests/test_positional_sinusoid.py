"""Constrained sinusoid projections against closed forms and grid symmetries."""

import functools
import math

from absl.testing import parameterized
import chex
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kattn
from kattn.positional import grid as grid_lib
from kattn.positional import sinusoid

_settings = hypothesis.settings(
    max_examples=100, deadline=None, derandomize=True
)
seeds = st.integers(0, 2**32 - 1)

# Grid and sizes shared by the attention tests; fixed, so each jitted function
# compiles once and hypothesis only draws values.
GRID = (4, 6)
LENGTH = GRID[0] * GRID[1]
BATCH, HEADS, DIM, V_DIM = 2, 2, 4, 3
ROW_SCALES, COL_SCALES = 2, 3
NUM_BLOCKS = ROW_SCALES + COL_SCALES
CODE_DIM = 2 * NUM_BLOCKS

# Softmax attention on O(1) float32 inputs: logits and outputs carry ~1e-6
# relative rounding, and cos/sin of positions that are equal modulo the period
# differ by a few ulps.
ATOL = RTOL = 2e-5


def _normal(rng, shape, scale=1.0):
  return (scale * rng.standard_normal(shape)).astype(np.float32)


def _frequencies(rng, kind, num_scales):
  if kind == "geometric":
    return np.asarray(sinusoid.geometric_frequencies(num_scales))
  return rng.uniform(0.05, 1.5, num_scales).astype(np.float32)


def _closed_form(positions_i, positions_j, row_frequencies, col_frequencies,
                 alpha, beta):
  """float64 sum over blocks of alpha cos(w delta) + beta sin(w delta).

  positions_* [L, 2]; alpha, beta [heads, B] (per head) or [Li, heads, B]
  (per query token). Returns [heads, Li, Lj].
  """
  f64 = lambda x: np.asarray(x, np.float64)
  delta = f64(positions_i)[:, None, :] - f64(positions_j)[None, :, :]
  rows = delta[..., :1] * f64(row_frequencies)
  cols = delta[..., 1:] * f64(col_frequencies)
  phases = np.concatenate([rows, cols], axis=-1)  # [Li, Lj, B]
  alpha, beta = f64(alpha), f64(beta)
  if alpha.ndim == 2:
    alpha, beta = alpha[None], beta[None]
  return (np.einsum("ihb,ijb->hij", alpha, np.cos(phases))
          + np.einsum("ihb,ijb->hij", beta, np.sin(phases)))


def _assert_within(error, bound):
  error = np.asarray(error)
  excess = error - np.broadcast_to(bound, error.shape)
  assert np.all(excess < 0), (error.max(), excess.max())


def _phase_error_bound(alpha, beta, phase_error):
  """[heads, 1, 1] logit error from a phase error in every block."""
  total = np.sum(np.abs(alpha) + np.abs(beta), axis=-1)
  return (phase_error * total)[:, None, None]


@jax.jit
def _logits_from_positions(positions_i, positions_j, row_frequencies,
                           col_frequencies, alpha, beta):
  code = functools.partial(
      sinusoid.sinusoid_position_code, row_frequencies=row_frequencies,
      col_frequencies=col_frequencies,
  )
  return sinusoid.relative_position_logits(
      code(positions_i), code(positions_j), alpha, beta
  )


# 1. The position term depends only on p_i - p_j, for any real translation.


@_settings
@hypothesis.given(
    seed=seeds,
    kind=st.sampled_from(["geometric", "random"]),
    shift=st.tuples(*[st.floats(-40, 40, width=32)] * 2),
)
def test_position_term_is_invariant_to_any_translation(seed, kind, shift):
  rng = np.random.default_rng(seed)
  positions = rng.uniform(-40, 40, (6, 2)).astype(np.float32)
  rows, cols = _frequencies(rng, kind, 3), _frequencies(rng, kind, 2)
  alpha, beta = _normal(rng, (HEADS, 5)), _normal(rng, (HEADS, 5))
  shifted = positions + np.asarray(shift, np.float32)
  before = _logits_from_positions(positions, positions, rows, cols, alpha, beta)
  after = _logits_from_positions(shifted, shifted, rows, cols, alpha, beta)
  # |position| <= 80, w <= 1.5: rounding p + t to float32 (half an ulp of 80,
  # 4e-6, times w) and the phase w x (half an ulp of 120, 4e-6) give a phase
  # error below 1e-5 per block, so a logit error below 1e-5 sum(|a| + |b|);
  # the bound doubles that (observed: 4e-6).
  bound = _phase_error_bound(alpha, beta, 2e-5)
  exact = _closed_form(positions, positions, rows, cols, alpha, beta)
  assert np.all(np.abs(np.asarray(after) - before) <= 2 * bound)
  assert np.all(np.abs(np.asarray(after) - exact) <= bound)


# 2. The closed form, which pins the sign convention.


@_settings
@hypothesis.given(seed=seeds, kind=st.sampled_from(["geometric", "random"]))
def test_logits_equal_the_float64_closed_form(seed, kind):
  rng = np.random.default_rng(seed)
  positions_i = rng.uniform(-10, 10, (4, 2)).astype(np.float32)
  positions_j = rng.uniform(-10, 10, (5, 2)).astype(np.float32)
  rows, cols = _frequencies(rng, kind, 3), _frequencies(rng, kind, 2)
  alpha, beta = _normal(rng, (HEADS, 5)), _normal(rng, (HEADS, 5))
  logits = _logits_from_positions(
      positions_i, positions_j, rows, cols, alpha, beta
  )
  chex.assert_shape(logits, (HEADS, 4, 5))
  # |position| <= 10, w <= 1.5: phases w x up to 15 rad carry a float32
  # error below 1e-6 each, 2e-6 in the difference (observed: 3e-7).
  _assert_within(
      np.abs(np.asarray(logits) - _closed_form(
          positions_i, positions_j, rows, cols, alpha, beta)),
      _phase_error_bound(alpha, beta, 4e-6),
  )


@_settings
@hypothesis.given(seed=seeds)
def test_rotation_is_the_row_vector_times_the_block_matrix(seed):
  rng = np.random.default_rng(seed)
  code = _normal(rng, (3, 6))
  alpha, beta = _normal(rng, (HEADS, 3)), _normal(rng, (HEADS, 3))
  rotated = jax.jit(sinusoid.rotate_position_code)(code, alpha, beta)
  for h in range(HEADS):
    blocks = np.zeros((6, 6))
    for b in range(3):
      blocks[2 * b:2 * b + 2, 2 * b:2 * b + 2] = [
          [alpha[h, b], beta[h, b]], [-beta[h, b], alpha[h, b]]
      ]
    np.testing.assert_allclose(
        rotated[:, h], code.astype(np.float64) @ blocks, rtol=1e-5, atol=1e-5
    )


def test_sign_convention_by_hand():
  # One row block, w = 1: alpha weighs cos, beta weighs +sin(x_i - x_j).
  code = sinusoid.sinusoid_position_code(
      jnp.array([[0.5, 0.0], [0.0, 0.0]]), jnp.array([1.0]), jnp.array([1.0])
  )
  only_beta = sinusoid.relative_position_logits(
      code, code, jnp.array([[0.0, 0.0]]), jnp.array([[1.0, 0.0]])
  )
  np.testing.assert_allclose(
      only_beta[0], [[0.0, math.sin(0.5)], [-math.sin(0.5), 0.0]], atol=1e-7
  )
  only_alpha = sinusoid.relative_position_logits(
      code, code, jnp.array([[0.0, 2.0]]), jnp.array([[0.0, 0.0]])
  )
  # The column block: both columns are 0, so cos(0) = 1 times alpha = 2.
  np.testing.assert_allclose(only_alpha[0], 2.0, atol=1e-7)


def test_code_layout_row_pairs_then_column_pairs():
  code = sinusoid.sinusoid_position_code(
      jnp.array([2, 3]), jnp.array([1.0, 0.5]), jnp.array([0.25])
  )
  np.testing.assert_allclose(code, [
      math.sin(2.0), math.cos(2.0), math.sin(1.0), math.cos(1.0),
      math.sin(0.75), math.cos(0.75),
  ], rtol=1e-6)


# 3 and 4. Exact circular equivariance with softmax attention, and CLS tokens.


def _grid_code(kind="circular"):
  if kind == "circular":
    rows = sinusoid.circular_frequencies(GRID[0], ROW_SCALES)
    cols = sinusoid.circular_frequencies(GRID[1], COL_SCALES)
  else:
    rows = sinusoid.geometric_frequencies(ROW_SCALES)
    cols = sinusoid.geometric_frequencies(COL_SCALES)
  return sinusoid.sinusoid_position_code(
      grid_lib.grid_positions(GRID), rows, cols
  )


def _contents(rng, length=LENGTH):
  return tuple(
      _normal(rng, (BATCH, length, HEADS, dim)) for dim in (DIM, DIM, V_DIM)
  )


def _per_head(rng):
  return _normal(rng, (HEADS, NUM_BLOCKS)), _normal(rng, (HEADS, NUM_BLOCKS))


shifts = st.tuples(st.integers(-2 * GRID[0], 2 * GRID[0]),
                   st.integers(-2 * GRID[1], 2 * GRID[1]))


def _roll(x, shift):
  return grid_lib.roll_tokens(x, shift, grid=GRID)


def _roll_after_cls(x, shift):
  """Rolls the grid tokens and leaves the leading CLS token in place."""
  return jnp.concatenate([x[:, :1], _roll(x[:, 1:], shift)], axis=1)


@functools.partial(jax.jit, static_argnames=("model", "roll"))
def _rolled_both_ways(contents, params, shift, *, model, roll):
  """(model(roll(contents)), roll(model(contents))): equal iff equivariant.

  The shift is traced, so every shift reuses one compilation.
  """
  rolled_contents = tuple(roll(x, shift) for x in contents)
  rolled_output = model(*rolled_contents, *params)
  return rolled_output, roll(model(*contents, *params), shift)


def _relative_softmax(q_content, k_content, v, code, alpha, beta):
  q, k = sinusoid.constrained_relative_qk(
      q_content, k_content, code, alpha, beta
  )
  return kattn.softmax_attention(q, k, v)


@_settings
@hypothesis.given(seed=seeds, shift=shifts)
def test_softmax_with_circular_frequencies_is_exactly_roll_equivariant(
    seed, shift
):
  rng = np.random.default_rng(seed)
  rolled, expected = _rolled_both_ways(
      _contents(rng), (_grid_code(), *_per_head(rng)), jnp.asarray(shift),
      model=_relative_softmax, roll=_roll,
  )
  np.testing.assert_allclose(rolled, expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("shift", [(1, 0), (0, 1), (2, 3)])
def test_geometric_frequencies_break_circular_equivariance(shift):
  rng = np.random.default_rng(0)
  rolled, expected = _rolled_both_ways(
      _contents(rng), (_grid_code("geometric"), *_per_head(rng)),
      jnp.asarray(shift), model=_relative_softmax, roll=_roll,
  )
  # The wrap-around pairs see different offsets: far above rounding (ATOL).
  assert np.max(np.abs(rolled - expected)) > 1e3 * ATOL


@_settings
@hypothesis.given(seed=seeds, shift=shifts)
def test_cls_token_with_zero_code_is_invariant_to_grid_rolls(seed, shift):
  rng = np.random.default_rng(seed)
  code = sinusoid.prepend_zero_code(_grid_code())
  rolled, expected = _rolled_both_ways(
      _contents(rng, LENGTH + 1), (code, *_per_head(rng)), jnp.asarray(shift),
      model=_relative_softmax, roll=_roll_after_cls,
  )
  # expected[:, 0] is the CLS output of the unrolled grid.
  np.testing.assert_allclose(rolled, expected, rtol=RTOL, atol=ATOL)


def test_cls_token_has_no_position_term():
  rng = np.random.default_rng(0)
  (q_content, k_content, _) = _contents(rng, LENGTH + 1)
  alpha, beta = _per_head(rng)
  code = sinusoid.prepend_zero_code(_grid_code())
  logits = sinusoid.relative_position_logits(code, code, alpha, beta)
  np.testing.assert_array_equal(logits[:, 0, :], 0.0)
  np.testing.assert_array_equal(logits[:, :, 0], 0.0)
  assert np.all(np.abs(logits[:, 1:, 1:]).max(axis=(1, 2)) > 0.1)
  q, k = sinusoid.constrained_relative_qk(
      q_content, k_content, code, alpha, beta
  )
  np.testing.assert_array_equal(q[:, 0, :, DIM:], 0.0)
  np.testing.assert_array_equal(k[:, 0, :, DIM:], 0.0)
  np.testing.assert_array_equal(q[..., :DIM], q_content)
  np.testing.assert_array_equal(k[..., :DIM], k_content)


def test_cls_token_at_a_grid_position_is_not_invariant():
  """Negative control: the zero code is what makes CLS roll-invariant."""
  rng = np.random.default_rng(0)
  grid_code = _grid_code()
  code = jnp.concatenate([grid_code[:1], grid_code], axis=0)
  rolled, expected = _rolled_both_ways(
      _contents(rng, LENGTH + 1), (code, *_per_head(rng)), jnp.asarray((1, 2)),
      model=_relative_softmax, roll=_roll_after_cls,
  )
  assert np.max(np.abs(rolled[:, 0] - expected[:, 0])) > 1e3 * ATOL


# 5. FAVOR+: equivariant in distribution over the projection, not per draw.

FAVOR_GRID = (4, 5)
FAVOR_LENGTH = FAVOR_GRID[0] * FAVOR_GRID[1]
FAVOR_SCALES = 2
FAVOR_CODE_DIM = 4 * FAVOR_SCALES
FAVOR_WIDTH = DIM + FAVOR_CODE_DIM
NUM_FEATURES = 5 * FAVOR_WIDTH
NUM_DRAWS = 200
# Per run: 2 samplers x 100 examples x 40 output coordinates = 8000 checks.
# 6 standard errors keep the family-wise false-alarm rate near 1e-5 for
# normal means (the relative model stays below ~4.5 in practice), while the
# absolute model misses by 11-30 standard errors.
SIGMAS = 6.0

FAVOR_CODE = np.asarray(sinusoid.sinusoid_position_code(
    grid_lib.grid_positions(FAVOR_GRID),
    sinusoid.circular_frequencies(FAVOR_GRID[0], FAVOR_SCALES),
    sinusoid.circular_frequencies(FAVOR_GRID[1], FAVOR_SCALES),
))


@functools.lru_cache(maxsize=None)
def _projections(kind):
  """NUM_DRAWS independent projections `[NUM_DRAWS, NUM_FEATURES, FAVOR_WIDTH]`.

  NUM_FEATURES is a multiple of FAVOR_WIDTH, so one call's orthogonal blocks
  split into whole blocks per draw: the same distribution as NUM_DRAWS
  separate calls, with one QR compilation instead of a vmapped one.
  """
  sampler = {
      "orthogonal": kattn.orthogonal_random_projection,
      "gaussian": kattn.gaussian_random_projection,
  }[kind]
  draw = jax.jit(
      lambda key: sampler(key, NUM_DRAWS * NUM_FEATURES, FAVOR_WIDTH)
  )
  return draw(jax.random.key(1234)).reshape(
      NUM_DRAWS, NUM_FEATURES, FAVOR_WIDTH
  )


def _favor_per_draw(q, k, v, projections):
  """`[draws, *batch, length, heads, v_dim]`: FAVOR+ under each projection."""
  return jax.vmap(
      lambda w: kattn.favor_attention(q, k, v, projection=w)
  )(projections)


def _relative_favor(q_content, k_content, v, alpha, beta, projections):
  q, k = sinusoid.constrained_relative_qk(
      q_content, k_content, FAVOR_CODE, alpha, beta
  )
  return _favor_per_draw(q, k, v, projections)


def _absolute_favor(q_content, k_content, v, mixing, projections):
  """q_pos = W p_i, k_pos = p_j: unconstrained, so absolute positions leak."""
  shape = q_content.shape[:-1] + (FAVOR_CODE_DIM,)
  q_position = jnp.broadcast_to((FAVOR_CODE @ mixing)[:, None], shape)
  k_position = jnp.broadcast_to(FAVOR_CODE[:, None], shape)
  q = jnp.concatenate([q_content, q_position], -1)
  k = jnp.concatenate([k_content, k_position], -1)
  return _favor_per_draw(q, k, v, projections)


def _favor_roll(x, shift):
  return grid_lib.roll_tokens(x, shift, grid=FAVOR_GRID)


def _favor_contents(rng):
  return tuple(
      _normal(rng, (1, FAVOR_LENGTH, 1, dim), 0.5) for dim in (DIM, DIM, 2)
  )


def _roll_z_scores(model, params, contents, shift):
  """|mean over draws of f(roll x) - roll f(x)| in standard errors."""
  rolled, expected = _rolled_both_ways(
      contents, params, jnp.asarray(shift), model=model, roll=_favor_roll
  )
  difference = np.asarray(rolled - expected, np.float64)
  mean = difference.mean(axis=0)
  standard_error = difference.std(axis=0, ddof=1) / math.sqrt(NUM_DRAWS)
  # The floor keeps 0 / 0 out where a coordinate matches in every draw.
  return np.abs(mean) / (standard_error + 1e-6)


@pytest.mark.parametrize("kind", ["orthogonal", "gaussian"])
@_settings
@hypothesis.given(
    seed=seeds,
    shift=st.tuples(st.integers(0, FAVOR_GRID[0] - 1),
                    st.integers(0, FAVOR_GRID[1] - 1)).filter(any),
)
def test_favor_is_roll_equivariant_in_distribution_only_if_relative(
    kind, seed, shift
):
  rng = np.random.default_rng(seed)
  contents = _favor_contents(rng)
  alpha = _normal(rng, (1, FAVOR_CODE_DIM // 2), 0.5)
  beta = _normal(rng, (1, FAVOR_CODE_DIM // 2), 0.5)
  mixing = _normal(rng, (FAVOR_CODE_DIM, FAVOR_CODE_DIM), 0.5)
  projections = _projections(kind)
  relative = _roll_z_scores(
      _relative_favor, (alpha, beta, projections), contents, shift
  )
  absolute = _roll_z_scores(
      _absolute_favor, (mixing, projections), contents, shift
  )
  assert relative.max() < SIGMAS, relative.max()
  assert absolute.max() > SIGMAS, absolute.max()


def test_favor_with_one_fixed_projection_is_not_exactly_equivariant():
  rng = np.random.default_rng(0)
  contents = _favor_contents(rng)
  alpha = _normal(rng, (1, FAVOR_CODE_DIM // 2), 0.5)
  beta = _normal(rng, (1, FAVOR_CODE_DIM // 2), 0.5)
  one_projection = _projections("orthogonal")[:1]
  rolled, expected = _rolled_both_ways(
      contents, (alpha, beta, one_projection), jnp.asarray((1, 2)),
      model=_relative_favor, roll=_favor_roll,
  )
  # Float32 rounding is ~1e-6; a fixed Omega misses by its Monte-Carlo error.
  assert np.max(np.abs(rolled - expected)) > 1e-3


# 6. Content-conditional alpha and beta, one pair per token and head.


@_settings
@hypothesis.given(seed=seeds)
def test_token_constant_alpha_beta_equal_per_head_alpha_beta(seed):
  rng = np.random.default_rng(seed)
  (q_content, k_content, _), (alpha, beta) = _contents(rng), _per_head(rng)
  code = _grid_code()
  per_token = lambda x: np.broadcast_to(x, (BATCH, LENGTH) + x.shape)
  widen = jax.jit(sinusoid.constrained_relative_qk)
  shared = widen(q_content, k_content, code, alpha, beta)
  conditional = widen(
      q_content, k_content, code, per_token(alpha), per_token(beta)
  )
  for got, want in zip(conditional, shared):
    chex.assert_shape(got, (BATCH, LENGTH, HEADS, DIM + CODE_DIM))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


@jax.jit
def _content_conditional_position_logits(q_content, positions, alpha, beta):
  rows = sinusoid.geometric_frequencies(ROW_SCALES)
  cols = sinusoid.geometric_frequencies(COL_SCALES)
  code = sinusoid.sinusoid_position_code(positions, rows, cols)
  q, k = sinusoid.constrained_relative_qk(
      q_content, q_content, code, alpha, beta
  )
  return jnp.einsum("blhc,bmhc->bhlm", q[..., DIM:], k[..., DIM:])


@_settings
@hypothesis.given(
    seed=seeds, shift=st.tuples(*[st.floats(-20, 20, width=32)] * 2)
)
def test_content_conditional_position_term_is_relative(seed, shift):
  rng = np.random.default_rng(seed)
  positions = rng.uniform(-20, 20, (LENGTH, 2)).astype(np.float32)
  q_content = _normal(rng, (BATCH, LENGTH, HEADS, DIM))
  alpha = _normal(rng, (BATCH, LENGTH, HEADS, NUM_BLOCKS))
  beta = _normal(rng, (BATCH, LENGTH, HEADS, NUM_BLOCKS))
  logits = _content_conditional_position_logits(
      q_content, positions + np.asarray(shift, np.float32), alpha, beta
  )
  rows = np.asarray(sinusoid.geometric_frequencies(ROW_SCALES))
  cols = np.asarray(sinusoid.geometric_frequencies(COL_SCALES))
  for b in range(BATCH):
    exact = _closed_form(positions, positions, rows, cols, alpha[b], beta[b])
    # |position| <= 40, w <= 1: phase error below 4e-6 (as in the translation
    # test above), doubled; each query's own alpha, beta bound its row.
    bound = 1e-5 * np.sum(np.abs(alpha[b]) + np.abs(beta[b]), axis=-1)
    _assert_within(np.abs(np.asarray(logits[b]) - exact), bound.T[:, :, None])


def _content_conditional_softmax(q_content, k_content, v, code, readout):
  # alpha and beta are functions of each token's content, so they roll with it.
  alpha_beta = jnp.tanh(jnp.einsum("blhd,hdn->blhn", q_content, readout))
  alpha, beta = jnp.split(alpha_beta, 2, axis=-1)
  q, k = sinusoid.constrained_relative_qk(
      q_content, k_content, code, alpha, beta
  )
  return kattn.softmax_attention(q, k, v)


@_settings
@hypothesis.given(seed=seeds, shift=shifts)
def test_content_conditional_softmax_is_exactly_roll_equivariant(seed, shift):
  rng = np.random.default_rng(seed)
  readout = _normal(rng, (HEADS, DIM, 2 * NUM_BLOCKS))
  rolled, expected = _rolled_both_ways(
      _contents(rng), (_grid_code(), readout), jnp.asarray(shift),
      model=_content_conditional_softmax, roll=_roll,
  )
  np.testing.assert_allclose(rolled, expected, rtol=RTOL, atol=ATOL)


# Shapes, dtypes, frequencies and gradients.


class ShapesTest(chex.TestCase, parameterized.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_code_of_integer_positions_is_float32(self):
    code = self.variant(sinusoid.sinusoid_position_code)(
        grid_lib.grid_positions(GRID)[None], sinusoid.geometric_frequencies(2),
        sinusoid.geometric_frequencies(3),
    )
    chex.assert_shape(code, (1, LENGTH, 10))
    chex.assert_type(code, jnp.float32)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(((HEADS, 3),), ((BATCH, 7, HEADS, 3),))
  def test_rotation_shapes(self, alpha_shape):
    code = jnp.ones((BATCH, 7, 6))
    rotated = self.variant(sinusoid.rotate_position_code)(
        code, jnp.ones(alpha_shape), jnp.ones(alpha_shape)
    )
    chex.assert_shape(rotated, (BATCH, 7, HEADS, 6))

  @chex.variants(with_jit=True, without_jit=True)
  def test_per_example_code_is_broadcast_over_heads_only(self):
    rng = np.random.default_rng(0)
    code = _normal(rng, (BATCH, 7, 6))
    x = _normal(rng, (BATCH, 7, HEADS, DIM))
    alpha, beta = _normal(rng, (HEADS, 3)), _normal(rng, (HEADS, 3))
    widen = self.variant(sinusoid.constrained_relative_qk)
    q, k = widen(x, x, code, alpha, beta)
    chex.assert_shape([q, k], (BATCH, 7, HEADS, DIM + 6))
    for h in range(HEADS):
      np.testing.assert_array_equal(k[:, :, h, DIM:], code)
      np.testing.assert_allclose(
          q[:, :, h, DIM:],
          sinusoid.rotate_position_code(code, alpha, beta)[:, :, h],
          rtol=1e-6, atol=1e-6,
      )


def test_frequencies():
  np.testing.assert_allclose(
      sinusoid.geometric_frequencies(4), 64.0 ** (-np.arange(4) / 4), rtol=1e-6
  )
  np.testing.assert_allclose(
      sinusoid.circular_frequencies(6, 3), 2 * np.pi * np.arange(1, 4) / 6,
      rtol=1e-6,
  )
  # Circular frequencies make every code entry periodic in the grid size.
  code = sinusoid.sinusoid_position_code(
      jnp.array([[1, 2], [5, 8]]), sinusoid.circular_frequencies(4, 2),
      sinusoid.circular_frequencies(6, 3),
  )
  np.testing.assert_allclose(code[0], code[1], atol=1e-5)


def test_gradients_in_float64_pass_finite_differences():
  with jax.enable_x64(True):
    rng = np.random.default_rng(0)
    positions = rng.uniform(-3, 3, (5, 2))
    rows, cols = rng.uniform(0.1, 1, 2), rng.uniform(0.1, 1, 1)
    alpha = rng.standard_normal((HEADS, 3))
    beta = rng.standard_normal((HEADS, 3))

    def logits(rows, cols, alpha, beta):
      code = sinusoid.sinusoid_position_code(positions, rows, cols)
      return sinusoid.relative_position_logits(code, code, alpha, beta)

    jax.test_util.check_grads(
        jax.jit(logits), (rows, cols, alpha, beta), order=1, modes=["rev"]
    )


# 7. Errors.

CODE = jnp.ones((5, 6))
AB = jnp.ones((HEADS, 3))
CONTENT = jnp.ones((BATCH, 5, HEADS, DIM))
ONES = jnp.ones


@pytest.mark.parametrize("call,match", [
    (lambda: sinusoid.geometric_frequencies(0),
     r"`num_scales` must be a positive"),
    (lambda: sinusoid.geometric_frequencies(2, 0.0), r"`max_period`.*positive"),
    (lambda: sinusoid.circular_frequencies(6, 4),
     r"`num_scales` must be <= size // 2 = 3"),
    (lambda: sinusoid.circular_frequencies(1, 1),
     r"`num_scales` must be <= size // 2 = 0"),
    (lambda: sinusoid.sinusoid_position_code(ONES((5, 3)), ONES(2), ONES(2)),
     r"`positions`.*\[..., 2\].*\(5, 3\)"),
    (lambda: sinusoid.sinusoid_position_code(
        ONES((5, 2), bool), ONES(2), ONES(2)), r"`positions`.*real"),
    (lambda: sinusoid.sinusoid_position_code(ONES((5, 2)), ONES(0), ONES(2)),
     r"`row_frequencies`.*num_scales >= 1"),
    (lambda: sinusoid.sinusoid_position_code(
        ONES((5, 2)), ONES(2), ONES((2, 1))), r"`col_frequencies`.*\(2, 1\)"),
    (lambda: sinusoid.prepend_zero_code(ONES(4)),
     r"`code` must have rank >= 2"),
    (lambda: sinusoid.prepend_zero_code(CODE, 0),
     r"`count` must be a positive"),
    (lambda: sinusoid.rotate_position_code(ONES((5, 5)), AB, AB),
     r"`code`.*even"),
    (lambda: sinusoid.rotate_position_code(
        CODE, ONES((HEADS, 2)), ONES((HEADS, 2))),
     r"last axis 3 for code width 6.*\(2, 2\)"),
    (lambda: sinusoid.rotate_position_code(CODE, AB, ONES((3, 3))),
     r"Shapes of `alpha` and `beta`"),
    (lambda: sinusoid.rotate_position_code(CODE, ONES(3), ONES(3)),
     r"`alpha` must have rank >= 2"),
    (lambda: sinusoid.rotate_position_code(
        CODE, ONES((4, HEADS, 3)), ONES((4, HEADS, 3))),
     r"Content-conditional.*\(4, 6\).*got \(5, 6\)"),
    (lambda: sinusoid.rotate_position_code(
        ONES((3, 5, 6)), ONES((2, 5, HEADS, 3)), ONES((2, 5, HEADS, 3))),
     r"Content-conditional.*got \(3, 5, 6\)"),
    (lambda: sinusoid.constrained_relative_qk(
        CONTENT, ONES((BATCH, 5, HEADS, 3)), CODE, AB, AB),
     r"Shapes of `q_content` and `k_content`"),
    (lambda: sinusoid.constrained_relative_qk(
        ONES((5, DIM)), ONES((5, DIM)), CODE, AB, AB),
     r"`q_content` must have rank >= 3"),
    (lambda: sinusoid.constrained_relative_qk(
        CONTENT, CONTENT, ONES((4, 6)), AB, AB),
     r"`code` must have shape \(5, 6\) or \(2, 5, 6\)"),
    (lambda: sinusoid.constrained_relative_qk(
        CONTENT, CONTENT, CODE, ONES((3, 3)), ONES((3, 3))),
     r"must have shape \(2, 3\)"),
    (lambda: sinusoid.constrained_relative_qk(
        CONTENT, CONTENT, CODE, ONES((5, HEADS, 3)), ONES((5, HEADS, 3))),
     r"must have shape \(2, 5, 2, 3\)"),
    (lambda: sinusoid.relative_position_logits(CODE, ONES((4, 4)), AB, AB),
     r"Code widths.*code_i=6, code_j=4"),
    (lambda: sinusoid.relative_position_logits(ONES((1, 5, 6)), CODE, AB, AB),
     r"`code_i` must have shape \[length, c\]"),
    (lambda: sinusoid.relative_position_logits(
        CODE, CODE, ONES((5, HEADS, 3)), ONES((5, HEADS, 3))),
     r"`alpha` must have shape \[heads, c // 2\]"),
])
def test_bad_arguments_raise(call, match):
  with pytest.raises(ValueError, match=match):
    call()
