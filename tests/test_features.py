"""Random projections and feature maps against the exact kernels they estimate."""

import functools
import math

import chex
import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kattn
from kattn.features import favor

DIM = 4
NUM_FEATURES = 16
NUM_DRAWS = 4000
# A 5-sigma CLT bound: a correct estimator fails it with probability < 1e-6
# per check, while the biased maps below miss by 20+ standard errors.
SIGMAS = 5.0

SOFTMAX_FEATURES = {
    "positive": kattn.positive_softmax_features,
    "hyperbolic": kattn.hyperbolic_softmax_features,
    "trigonometric": kattn.trigonometric_softmax_features,
}


@functools.lru_cache(maxsize=None)
def _estimator(feature_fn, sampler):
  """Jitted (x, y) -> phi(x)^T phi(y) for NUM_DRAWS independent projections."""
  keys = jax.random.split(jax.random.key(1234), NUM_DRAWS)

  def estimates(x, y):
    def one(key):
      w = sampler(key, NUM_FEATURES, x.shape[-1])
      return jnp.dot(feature_fn(x, w), feature_fn(y, w))

    return jax.vmap(one)(keys)

  return jax.jit(estimates)


def _kernel_estimates(feature_fn, x, y, *, sampler):
  return np.asarray(_estimator(feature_fn, sampler)(x, y), np.float64)


def _clt_check(estimates, exact):
  """|mean - exact| and its bound: 5 standard errors plus float32 rounding."""
  mean = estimates.mean()
  standard_error = estimates.std(ddof=1) / math.sqrt(estimates.size)
  return abs(mean - exact), SIGMAS * standard_error + 1e-6 * abs(exact)


small_vectors = hnp.arrays(
    np.float32, (DIM,), elements=st.floats(-0.5, 0.5, width=32)
)


@pytest.mark.parametrize("name", sorted(SOFTMAX_FEATURES))
@pytest.mark.parametrize(
    "sampler",
    [kattn.gaussian_random_projection, kattn.orthogonal_random_projection],
    ids=["iid", "orthogonal"],
)
@hypothesis.settings(max_examples=6, deadline=None, derandomize=True)
@hypothesis.given(x=small_vectors, y=small_vectors)
def test_softmax_features_are_unbiased(name, sampler, x, y):
  exact = math.exp(float(np.dot(x.astype(np.float64), y)))
  estimates = _kernel_estimates(
      SOFTMAX_FEATURES[name], jnp.asarray(x), jnp.asarray(y), sampler=sampler
  )
  error, bound = _clt_check(estimates, exact)
  assert error <= bound, (name, error, bound)


def _forgot_norm_correction(x, w):
  """Positive features without the exp(-|x|^2 / 2) factor: biased."""
  return jnp.exp(x @ w.T) / math.sqrt(w.shape[0])


def _wrong_scale(x, w):
  """Positive features with a 10% scale error (e.g. wrong m normaliser)."""
  return 1.1 * kattn.positive_softmax_features(x, w)


@pytest.mark.parametrize("biased", [_forgot_norm_correction, _wrong_scale])
def test_biased_feature_map_fails_the_same_check(biased):
  x = jnp.array([0.5, -0.3, 0.4, 0.2])
  y = jnp.array([0.3, 0.5, -0.2, 0.4])
  exact = math.exp(float(jnp.dot(x, y)))
  estimates = _kernel_estimates(
      biased, x, y, sampler=kattn.gaussian_random_projection
  )
  error, bound = _clt_check(estimates, exact)
  assert error > 4 * bound, (error, bound)


def test_orthogonal_features_have_lower_error_than_iid_on_average():
  key_x, key_y = jax.random.split(jax.random.key(7))
  dim = 16
  xs = 0.25 * jax.random.normal(key_x, (24, dim))
  ys = 0.25 * jax.random.normal(key_y, (24, dim))
  exact = np.exp(np.sum(np.asarray(xs, np.float64) * np.asarray(ys), -1))

  def mse(sampler):
    keys = jax.random.split(jax.random.key(99), 2000)

    def one(key):
      w = sampler(key, dim, dim)
      fx = kattn.positive_softmax_features(xs, w)
      fy = kattn.positive_softmax_features(ys, w)
      return jnp.sum(fx * fy, -1)

    estimates = np.asarray(jax.jit(jax.vmap(one))(keys), np.float64)
    return np.mean((estimates - exact) ** 2)

  mse_iid = mse(kattn.gaussian_random_projection)
  mse_orf = mse(kattn.orthogonal_random_projection)
  assert mse_orf < mse_iid, (mse_orf, mse_iid)


@pytest.mark.parametrize("num_features,dim", [(8, 8), (20, 8), (5, 8), (64, 16)])
def test_orthogonal_projection_structure(num_features, dim):
  w = kattn.orthogonal_random_projection(
      jax.random.key(0), num_features, dim, row_norms="sqrt_dim"
  )
  chex.assert_shape(w, (num_features, dim))
  chex.assert_type(w, jnp.float32)
  np.testing.assert_allclose(
      jnp.linalg.norm(w, axis=-1), math.sqrt(dim), rtol=1e-5
  )
  for start in range(0, num_features, dim):
    block = w[start:start + dim]
    gram = block @ block.T
    np.testing.assert_allclose(
        gram, dim * jnp.eye(block.shape[0]), atol=1e-4 * dim
    )


def test_chi_row_norms_follow_chi_distribution():
  dim = 16
  w = kattn.orthogonal_random_projection(jax.random.key(3), 20000, dim)
  norms = np.asarray(jnp.linalg.norm(w, axis=-1), np.float64)
  # E[chi_d] = sqrt(2) Gamma((d+1)/2) / Gamma(d/2); Var = d - E^2.
  mean = math.sqrt(2) * math.exp(math.lgamma((dim + 1) / 2) - math.lgamma(dim / 2))
  std = math.sqrt(dim - mean ** 2)
  assert abs(norms.mean() - mean) < 5 * std / math.sqrt(norms.size)
  assert abs(norms.std() - std) < 0.05 * std


def test_orthogonal_projection_is_haar_not_sign_biased():
  # Without the sign fix Q diag(sign(diag R)), QR of a Gaussian matrix has a
  # first column biased towards positive entries.
  keys = jax.random.split(jax.random.key(5), 4000)
  w = jax.vmap(
      lambda k: kattn.orthogonal_random_projection(k, 4, 4, row_norms="sqrt_dim")
  )(keys)
  first_entries = np.asarray(w[:, :, 0]).ravel() / 2.0
  assert abs(first_entries.mean()) < 5 * 0.5 / math.sqrt(first_entries.size)


def test_projections_are_deterministic_in_the_key():
  for sampler in (kattn.gaussian_random_projection,
                  kattn.orthogonal_random_projection):
    a = sampler(jax.random.key(0), 12, 5)
    b = sampler(jax.random.key(0), 12, 5)
    c = sampler(jax.random.key(1), 12, 5)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


@pytest.mark.parametrize("name", ["positive", "hyperbolic"])
def test_positive_features_are_positive(name):
  w = kattn.gaussian_random_projection(jax.random.key(0), 32, 8)
  x = jax.random.normal(jax.random.key(1), (50, 8))
  assert bool(jnp.all(SOFTMAX_FEATURES[name](x, w) > 0))
  # At large norms the dense features underflow; the scaled form keeps the
  # largest feature of every token at exactly 1, so denominators stay > 0.
  scaled = favor.__dict__[f"{name}_softmax_scaled_features"](30.0 * x, w)
  np.testing.assert_array_equal(jnp.max(scaled.values, axis=-1), 1.0)


@pytest.mark.parametrize("name", sorted(SOFTMAX_FEATURES))
def test_scaled_features_match_the_textbook_formula_in_float64(name):
  w = np.asarray(kattn.gaussian_random_projection(jax.random.key(0), 6, 3), np.float64)
  x = np.asarray(jax.random.normal(jax.random.key(1), (5, 3)), np.float64)
  m = w.shape[0]
  proj = x @ w.T
  half_norm = 0.5 * np.sum(x * x, -1, keepdims=True)
  expected = {
      "positive": np.exp(proj - half_norm) / math.sqrt(m),
      "hyperbolic": np.exp(np.concatenate([proj, -proj], -1) - half_norm)
      / math.sqrt(2 * m),
      "trigonometric": np.exp(half_norm)
      * np.concatenate([np.sin(proj), np.cos(proj)], -1) / math.sqrt(m),
  }[name]
  got = SOFTMAX_FEATURES[name](jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32))
  np.testing.assert_allclose(got, expected, rtol=2e-5, atol=1e-7)
  scaled = favor.__dict__[f"{name}_softmax_scaled_features"](
      jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32)
  )
  assert float(jnp.max(jnp.abs(scaled.values))) <= 1.0 + 1e-6


def test_scaled_features_do_not_overflow_for_large_inputs():
  w = kattn.gaussian_random_projection(jax.random.key(0), 16, 8)
  x = 40.0 * jax.random.normal(jax.random.key(1), (10, 8))
  scaled = kattn.positive_softmax_scaled_features(x, w)
  assert bool(jnp.all(jnp.isfinite(scaled.values)))
  assert bool(jnp.all(jnp.isfinite(scaled.log_scale)))
  assert float(jnp.max(scaled.values)) == 1.0


def test_generalized_kernel_features():
  x = jnp.array([[-2.0, 0.0, 3.0]])
  np.testing.assert_allclose(kattn.relu_features(x), [[1e-3, 1e-3, 3.001]])
  np.testing.assert_allclose(
      kattn.elu_plus_one_features(x), [[math.exp(-2.0), 1.0, 4.0]], rtol=1e-6
  )
  np.testing.assert_allclose(
      kattn.generalized_kernel_features(x, jnp.square, eps=0.5),
      [[4.5, 0.5, 9.5]],
  )
  np.testing.assert_allclose(
      kattn.exp_features(x).dense(), jnp.exp(x), rtol=1e-6
  )
  w = kattn.gaussian_random_projection(jax.random.key(0), 5, 3)
  np.testing.assert_allclose(
      kattn.relu_features(x, w, eps=0.0), jax.nn.relu(x @ w.T), rtol=1e-6
  )


@pytest.mark.parametrize("fn", [
    kattn.positive_softmax_features, kattn.hyperbolic_softmax_features,
    kattn.trigonometric_softmax_features, kattn.relu_features,
])
def test_projection_of_the_wrong_width_is_rejected(fn):
  w = kattn.gaussian_random_projection(jax.random.key(0), 8, 5)
  with pytest.raises(ValueError, match=r"projection.*\[num_features, 4\]"):
    fn(jnp.ones((3, 4)), w)


@pytest.mark.parametrize("fn", [
    kattn.positive_softmax_features, kattn.hyperbolic_softmax_features,
    kattn.trigonometric_softmax_features, kattn.relu_features,
    kattn.elu_plus_one_features, kattn.exp_features,
    lambda x, w: kattn.generalized_kernel_features(x, jnp.square, w),
])
def test_projection_without_rows_is_rejected(fn):
  # Before: a math domain error from log(0), a max over nothing, or silently
  # zero features.
  with pytest.raises(
      ValueError,
      match=r"`projection` must have at least one row.*got shape \(0, 4\)",
  ):
    fn(jnp.ones((3, 4)), jnp.zeros((0, 4)))


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_non_positive_feature_counts_are_rejected(bad):
  for sampler in (kattn.gaussian_random_projection,
                  kattn.orthogonal_random_projection):
    with pytest.raises(ValueError, match="num_features"):
      sampler(jax.random.key(0), bad, 4)
    with pytest.raises(ValueError, match="dim"):
      sampler(jax.random.key(0), 4, bad)


def test_unknown_row_norms_are_rejected():
  with pytest.raises(ValueError, match="row_norms"):
    kattn.orthogonal_random_projection(jax.random.key(0), 4, 4, row_norms="unit")
