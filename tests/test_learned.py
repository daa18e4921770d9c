"""Learned spectral random features (KL-Transformer) against exact kernels.

The Monte-Carlo checks average phi(x)^T phi(y) over many independent noise
draws for FIXED, randomised parameters and compare the mean with the exact
expectation (closed form, exact sum over FastFood's permutations, or
Gauss-Hermite quadrature for the generator) under a 5-sigma CLT bound; the
same bound must reject a plausible wrong closed form.
"""

from __future__ import annotations

import functools
import itertools
import math
import re

from absl.testing import parameterized
import chex
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
from numpy.polynomial import hermite_e
import pytest
import scipy.linalg
import scipy.special

from kattn.attention import linear
from kattn.features import favor
from kattn.features import learned
from kattn.flax import attention as flax_attention
from kattn.flax import models

KERNEL_NAMES = sorted(learned.LEARNED_KERNELS)
NUM_DRAWS = 10_000
# A 5-sigma CLT bound: a correct estimator fails it with probability < 1e-6
# per check; the wrong closed forms below miss by far more.
SIGMAS = 5.0
NUM_PAIRS = 8
# Input width of each family's Monte-Carlo check: FastFood's d = 3 is padded
# to D = 4, the generator's d = 2 keeps the quadrature two-dimensional.
MC_DIM = {"gmm": 4, "fastfood": 3, "generative": 2}
# Draws per noise sample: FastFood's 8 are two blocks of D = 4 permutations.
MC_FEATURES = 8
GAUSS_HERMITE_POINTS = 60


def _family(name):
  return name.split("_")[0]


def _is_rks(name):
  return name.endswith("_rks")


def _dense(features):
  if isinstance(features, favor.ScaledFeatures):
    return features.dense()
  return features


# --- Fixed, randomised parameters and inputs --------------------------------


def _f32(tree):
  return jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), tree)


def _perturbed_params(name, seed):
  """Init parameters of `name` moved well away from init (so not Gaussian)."""
  family, dim = _family(name), MC_DIM[_family(name)]
  rng = np.random.default_rng(seed)
  key = jax.random.key(seed)
  noise = lambda shape: rng.standard_normal(shape)
  # Unequal mixture weights (pi near 0.88 / 0.12), so that a sampler
  # ignoring them would be biased.
  mixture_logits = np.array([1.0, -1.0]) + 0.3 * noise(2)
  if name == "gmm_rks":
    p = learned.init_gmm_rks_params(key, dim)
    # A_c = I + noise is far from symmetric, so A^T A != A A^T.
    return _f32({
        "means": p["means"] + 0.6 * noise(p["means"].shape),
        "scale_factors": p["scale_factors"] + 0.5 * noise((2, dim, dim)),
        "mixture_logits": mixture_logits,
    })
  if name == "gmm_prf":
    p = learned.init_gmm_prf_params(key, dim)
    return _f32({
        "means": p["means"] + 0.4 * noise(p["means"].shape),
        "log_variances": 0.4 * noise(p["log_variances"].shape),
        "mixture_logits": mixture_logits,
    })
  if family == "fastfood":
    p = learned.init_fastfood_params(key, dim, MC_FEATURES)
    shape = p["signs"].shape
    return _f32({
        "signs": p["signs"] * rng.uniform(0.5, 1.5, shape),
        "gaussian": p["gaussian"] + 0.5 * noise(shape),
        "scales": p["scales"] * rng.uniform(1.2, 1.8, shape),
    })
  p = learned.init_generative_params(key, dim)
  hidden = p["hidden_bias"].shape[0]
  return _f32({
      "skip": p["skip"] + 0.3 * noise((dim, dim)),
      "bias": 0.5 * noise(dim),
      "hidden_weights": p["hidden_weights"],
      "hidden_bias": 0.5 * noise(hidden),
      # Ten times the init scale: the MLP dominates the skip's Gaussian.
      "out_weights": noise((hidden, dim)) / math.sqrt(hidden),
  })


def _pairs(seed, dim, *, low=0.3, high=1.0):
  """NUM_PAIRS (x, y) float32 pairs with norms uniform in [low, high]."""
  rng = np.random.default_rng(seed)

  def points():
    direction = rng.standard_normal((NUM_PAIRS, dim))
    direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
    return (rng.uniform(low, high, (NUM_PAIRS, 1)) * direction).astype(
        np.float32
    )

  return points(), points()


def _mc_pairs(name, seed):
  # PRF estimates are log-normal-like in |x + y|: smaller norms keep their
  # tails light enough for the CLT at NUM_DRAWS draws.
  high = 1.0 if _is_rks(name) else 0.7
  return _pairs(seed, MC_DIM[_family(name)], high=high)


# --- Monte Carlo and the CLT bound ------------------------------------------


@functools.partial(jax.jit, static_argnames=("name",))
def _kernel_estimates(name, params, xs, ys):
  """[NUM_DRAWS, pairs] phi(x)^T phi(y), one independent noise draw a row."""
  kernel = learned.LEARNED_KERNELS[name]
  shape = kernel.noise_shape(MC_FEATURES, xs.shape[-1])
  keys = jax.random.split(jax.random.key(20240), NUM_DRAWS)

  def one_draw(key):
    phi = kernel.feature_map(params, kernel.noise_sampler(key, *shape))
    return jnp.sum(_dense(phi(xs)) * _dense(phi(ys)), -1)

  return jax.vmap(one_draw)(keys)


def _clt_errors_and_bounds(estimates, exact):
  """|mean - exact| and 5 standard errors plus float32 rounding, per pair."""
  estimates = np.asarray(estimates, np.float64)
  standard_error = estimates.std(0, ddof=1) / math.sqrt(estimates.shape[0])
  error = np.abs(estimates.mean(0) - exact)
  return error, SIGMAS * standard_error + 1e-6 * np.abs(exact)


def _accepts(estimates, exact):
  error, bound = _clt_errors_and_bounds(estimates, exact)
  return bool(np.all(error <= bound)), error / bound


# --- Exact expectations -----------------------------------------------------


def _np(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def _numpy_gmm_rks_kernel(x, y, params, smoothing=1.0):
  """sum_c pi_c exp(-delta^T A_c^T A_c delta / 2) cos(mu_c^T delta) + s^2."""
  p = _np(params)
  delta = np.asarray(x, np.float64) - np.asarray(y, np.float64)
  covariance = np.einsum("ced,cef->cdf", p["scale_factors"], p["scale_factors"])
  quadratic = np.einsum("...d,cdf,...f->...c", delta, covariance, delta)
  pi = scipy.special.softmax(p["mixture_logits"])
  phase = delta @ p["means"].T
  kernel = np.sum(pi * np.exp(-0.5 * quadratic) * np.cos(phase), -1)
  return kernel + smoothing**2


def _numpy_gmm_prf_kernel(x, y, params):
  """sum_c pi_c exp(mu_c^T u + u^T Sigma_c u / 2) exp(-|x|^2 - |y|^2)."""
  p = _np(params)
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  u = x + y
  exponent = u @ p["means"].T + 0.5 * (u**2) @ np.exp(p["log_variances"]).T
  pi = scipy.special.softmax(p["mixture_logits"])
  return np.sum(pi * np.exp(exponent), -1) * np.exp(
      -np.sum(x**2, -1) - np.sum(y**2, -1)
  )


def _fastfood_rows(params, permutations, dim):
  """Dense FastFood rows, float64: block j is D^{-1/2} S H G P H B.

  With P = I[perm] ((P z)_i = z_{perm_i}), restricted to the first `dim`
  columns (the zero padding drops the rest).
  """
  p = _np(params)
  blocks, width = p["signs"].shape
  hadamard = scipy.linalg.hadamard(width).astype(np.float64)
  rows = []
  for j in range(blocks):
    permutation = np.eye(width)[np.asarray(permutations[j])]
    v = (
        np.diag(p["scales"][j]) @ hadamard @ np.diag(p["gaussian"][j])
        @ permutation @ hadamard @ np.diag(p["signs"][j])
    ) / math.sqrt(width)
    rows.append(v[:, :dim])
  return np.concatenate(rows)


def _per_frequency_kernel(name, frequencies, xs, ys):
  """[pairs, m] the summand of phi(x)^T phi(y) at each frequency (weight 1)."""
  xs, ys = np.asarray(xs, np.float64), np.asarray(ys, np.float64)
  if _is_rks(name):
    return np.cos((xs - ys) @ frequencies.T)
  return np.exp(
      (xs + ys) @ frequencies.T
      - np.sum(xs**2, -1, keepdims=True) - np.sum(ys**2, -1, keepdims=True)
  )


def _fastfood_exact(name, params, xs, ys):
  """E over independent uniform permutations, as the exact sum over all D!.

  Each block's frequencies depend only on its own permutation, so the mean of
  the (1 / m)-weighted sum is the sum over blocks of each block's average
  over its D! permutations.
  """
  blocks, width = params["signs"].shape
  dim = xs.shape[-1]
  total = 0.0
  for j in range(blocks):
    block = {k: v[j:j + 1] for k, v in params.items()}
    values = [
        _per_frequency_kernel(
            name, _fastfood_rows(block, [permutation], dim), xs, ys
        ).sum(-1)
        for permutation in itertools.permutations(range(width))
    ]
    total = total + np.mean(values, axis=0)
  return total / (blocks * width) + (1.0 if _is_rks(name) else 0.0)


def _gauss_hermite_2d(points=GAUSS_HERMITE_POINTS):
  """Nodes [n^2, 2] and weights [n^2] of E_{eps ~ N(0, I_2)}, float64."""
  nodes, weights = hermite_e.hermegauss(points)
  grid = np.stack(np.meshgrid(nodes, nodes, indexing="ij"), -1).reshape(-1, 2)
  return grid, np.outer(weights, weights).ravel() / (2 * math.pi)


def _generative_exact(name, params, xs, ys, points=GAUSS_HERMITE_POINTS):
  """E_eps of the generator's kernel by 2-D Gauss-Hermite quadrature."""
  nodes, weights = _gauss_hermite_2d(points)
  with jax.enable_x64(True):
    frequencies, _ = learned.generative_frequencies(
        jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params),
        jnp.asarray(nodes),
    )
    frequencies = np.asarray(frequencies, np.float64)
  integral = _per_frequency_kernel(name, frequencies, xs, ys) @ weights
  return integral + (1.0 if _is_rks(name) else 0.0)


def _exact_kernel(name, params, xs, ys):
  if name == "gmm_rks":
    return np.asarray(learned.gmm_rks_kernel(xs, ys, params), np.float64)
  if name == "gmm_prf":
    return np.asarray(learned.gmm_prf_kernel(xs, ys, params), np.float64)
  if _family(name) == "fastfood":
    return _fastfood_exact(name, params, xs, ys)
  return _generative_exact(name, params, xs, ys)


# --- Wrong closed forms (each must be rejected) -----------------------------


def _gmm_rks_without_phase(xs, ys, params):
  """Forgets cos(mu_c^T delta): the means play no role."""
  return _numpy_gmm_rks_kernel(
      xs, ys, {**params, "means": jnp.zeros_like(params["means"])}
  )


def _gmm_rks_transposed_factor(xs, ys, params):
  """Uses A A^T where the covariance of eps A + mu is A^T A."""
  transposed = jnp.swapaxes(params["scale_factors"], -1, -2)
  return _numpy_gmm_rks_kernel(xs, ys, {**params, "scale_factors": transposed})


def _gmm_uniform_mixture(name, xs, ys, params):
  """Weights every component 1 / C, ignoring the mixture logits."""
  uniform = {
      **params, "mixture_logits": jnp.zeros_like(params["mixture_logits"])
  }
  if name == "gmm_rks":
    return _numpy_gmm_rks_kernel(xs, ys, uniform)
  return _numpy_gmm_prf_kernel(xs, ys, uniform)


def _gmm_prf_half_norm_offset(xs, ys, params):
  """exp(-|x|^2 / 2 - |y|^2 / 2) as in FAVOR+, not PRF's exp(-|x|^2 - |y|^2)."""
  half_norms = 0.5 * (np.sum(np.asarray(xs, np.float64)**2, -1)
                      + np.sum(np.asarray(ys, np.float64)**2, -1))
  return _numpy_gmm_prf_kernel(xs, ys, params) * np.exp(half_norms)


def _plain_gaussian_kernel(name, xs, ys):
  """exp(-|x - y|^2 / 2) (+ s^2 for RKS): classic FastFood's kernel on average
  over S, G, B, not the kernel of any one fixed set of diagonals."""
  delta = np.asarray(xs, np.float64) - np.asarray(ys, np.float64)
  return np.exp(-0.5 * np.sum(delta**2, -1)) + (1.0 if _is_rks(name) else 0.0)


def _skip_only_gaussian_kernel(name, xs, ys, params):
  """The generator's N(b, A^T A) kernel, as if the MLP were absent."""
  p = _np(params)
  xs, ys = np.asarray(xs, np.float64), np.asarray(ys, np.float64)
  if _is_rks(name):
    delta = xs - ys
    spread = delta @ p["skip"].T
    return (np.exp(-0.5 * np.sum(spread**2, -1)) * np.cos(delta @ p["bias"])
            + 1.0)
  u = xs + ys
  spread = u @ p["skip"].T
  return np.exp(
      u @ p["bias"] + 0.5 * np.sum(spread**2, -1)
      - np.sum(xs**2, -1) - np.sum(ys**2, -1)
  )


WRONG_KERNELS = {
    "gmm_rks/no_phase": lambda n, x, y, p: _gmm_rks_without_phase(x, y, p),
    "gmm_rks/transposed_factor": (
        lambda n, x, y, p: _gmm_rks_transposed_factor(x, y, p)
    ),
    "gmm_rks/uniform_mixture": _gmm_uniform_mixture,
    "gmm_prf/half_norm_offset": (
        lambda n, x, y, p: _gmm_prf_half_norm_offset(x, y, p)
    ),
    "gmm_prf/uniform_mixture": _gmm_uniform_mixture,
    "fastfood_rks/gaussian": lambda n, x, y, p: _plain_gaussian_kernel(n, x, y),
    "fastfood_prf/gaussian": lambda n, x, y, p: _plain_gaussian_kernel(n, x, y),
    "generative_rks/no_mlp": _skip_only_gaussian_kernel,
    "generative_prf/no_mlp": _skip_only_gaussian_kernel,
}


# --- 1. Unbiasedness --------------------------------------------------------


@pytest.mark.parametrize("name", KERNEL_NAMES)
@hypothesis.settings(max_examples=8, deadline=None, derandomize=True)
@hypothesis.given(seed=st.integers(0, 2**31 - 1))
def test_monte_carlo_mean_matches_the_exact_kernel(name, seed):
  params = _perturbed_params(name, seed)
  xs, ys = _mc_pairs(name, seed + 1)
  estimates = _kernel_estimates(name, params, xs, ys)
  chex.assert_shape(estimates, (NUM_DRAWS, NUM_PAIRS))
  accepted, z = _accepts(estimates, _exact_kernel(name, params, xs, ys))
  assert accepted, (name, z)


@pytest.mark.parametrize("wrong", sorted(WRONG_KERNELS))
def test_the_same_bound_rejects_a_wrong_closed_form(wrong):
  name = wrong.split("/")[0]
  params = _perturbed_params(name, 7)
  xs, ys = _mc_pairs(name, 8)
  estimates = _kernel_estimates(name, params, xs, ys)
  accepted, z = _accepts(estimates, _exact_kernel(name, params, xs, ys))
  assert accepted, (name, z)
  wrongly_accepted, z_wrong = _accepts(
      estimates, WRONG_KERNELS[wrong](name, xs, ys, params)
  )
  assert not wrongly_accepted, (wrong, z_wrong)


@hypothesis.settings(max_examples=30, deadline=None)
@hypothesis.given(seed=st.integers(0, 2**31 - 1), radius=st.floats(0.0, 2.0))
def test_gmm_closed_forms_match_float64_numpy(seed, radius):
  xs, ys = _pairs(seed, 4, low=0.0, high=radius + 1e-3)
  rks = _perturbed_params("gmm_rks", seed)
  np.testing.assert_allclose(
      learned.gmm_rks_kernel(xs, ys, rks), _numpy_gmm_rks_kernel(xs, ys, rks),
      rtol=1e-5, atol=1e-6,
  )
  prf = _perturbed_params("gmm_prf", seed)
  np.testing.assert_allclose(
      learned.gmm_prf_kernel(xs, ys, prf), _numpy_gmm_prf_kernel(xs, ys, prf),
      rtol=1e-5, atol=1e-7,
  )


def test_gauss_hermite_quadrature_has_converged():
  # The generator's exact kernel is only as exact as its quadrature.
  for name in ("generative_rks", "generative_prf"):
    params = _perturbed_params(name, 7)
    xs, ys = _mc_pairs(name, 8)
    np.testing.assert_allclose(
        _generative_exact(name, params, xs, ys, points=40),
        _generative_exact(name, params, xs, ys, points=60), rtol=1e-9,
    )


def test_generator_is_the_documented_mlp():
  params = _perturbed_params("generative_rks", 3)
  eps = np.random.default_rng(4).standard_normal((16, 2))
  p = _np(params)
  hidden = eps @ p["hidden_weights"] + p["hidden_bias"]
  gelu = 0.5 * hidden * (1.0 + scipy.special.erf(hidden / math.sqrt(2)))
  expected = eps @ p["skip"] + p["bias"] + gelu @ p["out_weights"]
  frequencies, log_weights = learned.generative_frequencies(
      params, jnp.asarray(eps, jnp.float32)
  )
  np.testing.assert_allclose(frequencies, expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(jnp.exp(log_weights), 1 / 16, rtol=1e-6)


@hypothesis.settings(max_examples=12, deadline=None)
@hypothesis.given(
    dim=st.integers(1, 9), blocks=st.integers(1, 3),
    seed=st.integers(0, 2**31 - 1),
)
def test_fastfood_projections_equal_the_dense_matrix(dim, blocks, seed):
  width = learned.padded_dim(dim)
  rng = np.random.default_rng(seed)
  # Learned diagonals are arbitrary reals, not FastFood's init distribution.
  params = _f32({
      k: rng.standard_normal((blocks, width))
      for k in ("signs", "gaussian", "scales")
  })
  permutations = np.stack(
      [rng.permutation(width) for _ in range(blocks)]
  ).astype(np.int32)
  x = rng.standard_normal((5, dim)).astype(np.float32)
  rows = _fastfood_rows(params, permutations, dim)
  projections = jax.jit(learned.fastfood_projections)(x, params, permutations)
  chex.assert_shape(projections, (5, blocks * width))
  np.testing.assert_allclose(projections, x @ rows.T, rtol=1e-4, atol=1e-4)
  frequencies, log_weights = jax.jit(
      learned.fastfood_frequencies, static_argnums=2
  )(params, permutations, dim)
  np.testing.assert_allclose(frequencies, rows, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(
      jnp.exp(log_weights), 1 / (blocks * width), rtol=1e-6
  )


@pytest.mark.parametrize("name", KERNEL_NAMES)
def test_registered_feature_maps_are_the_documented_estimators(name):
  """phi(x) = [sqrt(w) cos(omega x), sqrt(w) sin(omega x), 1] or PRF's."""
  kernel = learned.LEARNED_KERNELS[name]
  dim = MC_DIM[_family(name)]
  params = _perturbed_params(name, 5)
  noise = kernel.noise_sampler(
      jax.random.key(6), *kernel.noise_shape(MC_FEATURES, dim)
  )
  if _family(name) == "fastfood":
    frequencies = _fastfood_rows(params, noise, dim)
  elif _family(name) == "gmm":
    frequencies = np.asarray(learned.gmm_frequencies(params, noise)[0])
  else:
    frequencies = np.asarray(learned.generative_frequencies(params, noise)[0])
  log_weights = (
      learned.gmm_frequencies(params, noise)[1] if _family(name) == "gmm"
      else np.full(MC_FEATURES, -math.log(MC_FEATURES))
  )
  x = np.random.default_rng(7).standard_normal((6, dim)) * 0.5
  projections = x @ np.asarray(frequencies, np.float64).T
  root_weights = np.exp(0.5 * np.asarray(log_weights, np.float64))
  if _is_rks(name):
    expected = np.concatenate([
        np.cos(projections) * root_weights, np.sin(projections) * root_weights,
        np.ones((6, 1)),
    ], -1)
  else:
    expected = root_weights * np.exp(
        projections - np.sum(x**2, -1, keepdims=True)
    )
  got = _dense(kernel.feature_map(params, noise)(jnp.asarray(x, jnp.float32)))
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_gmm_weights_follow_the_mixture():
  params = _perturbed_params("gmm_rks", 1)
  noise = jax.random.normal(jax.random.key(0), (6, 4))
  frequencies, log_weights = learned.gmm_frequencies(params, noise)
  pi = scipy.special.softmax(np.asarray(params["mixture_logits"], np.float64))
  np.testing.assert_allclose(
      jnp.exp(log_weights), np.repeat(pi / 3, 3), rtol=1e-5
  )
  # Rows 0-2 come from component 0, rows 3-5 from component 1.
  eps = np.asarray(noise, np.float64).reshape(2, 3, 4)
  p = _np(params)
  expected = np.concatenate(
      [p["means"][c] + eps[c] @ p["scale_factors"][c] for c in range(2)]
  )
  np.testing.assert_allclose(frequencies, expected, rtol=1e-5, atol=1e-5)


# --- 2. Fast Walsh-Hadamard -------------------------------------------------


class WalshHadamardTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @hypothesis.settings(max_examples=8, deadline=None)
  @hypothesis.given(
      log_dim=st.integers(0, 8),
      batch=st.lists(st.integers(1, 3), min_size=0, max_size=2),
      seed=st.integers(0, 2**31 - 1),
  )
  def test_equals_the_dense_hadamard_product(self, log_dim, batch, seed):
    dim = 2**log_dim
    x = np.random.default_rng(seed).standard_normal(tuple(batch) + (dim,))
    got = self.variant(learned.fast_walsh_hadamard_transform)(
        jnp.asarray(x, jnp.float32)
    )
    chex.assert_shape(got, tuple(batch) + (dim,))
    chex.assert_type(got, jnp.float32)
    # float32 sums of D terms of size O(1).
    np.testing.assert_allclose(
        got, x @ scipy.linalg.hadamard(dim), rtol=1e-5,
        atol=1e-5 * math.sqrt(dim),
    )

  def test_rows_are_orthogonal(self):
    fwht = jax.jit(learned.fast_walsh_hadamard_transform)
    for dim in (1, 2, 4, 8, 16, 32, 64, 128, 256):
      h = np.asarray(fwht(jnp.eye(dim)), np.float64)
      np.testing.assert_array_equal(np.abs(h), 1.0)
      np.testing.assert_array_equal(h @ h.T, dim * np.eye(dim))

  @parameterized.parameters(0, 3, 5, 6, 12, 100)
  def test_non_power_of_two_width_is_rejected(self, width):
    with pytest.raises(ValueError, match=rf"power of two.*got {width}\b"):
      learned.fast_walsh_hadamard_transform(jnp.ones((2, width)))


# --- 3. Gradients -----------------------------------------------------------


GRAD_FEATURES = {"gmm": 4, "fastfood": 8, "generative": 4}


def _attention_loss_setup(name, dim=4, heads=2, length=5):
  """float64 params and a scalar loss of learned_kernel_attention.

  The noise is fixed inside the loss, as between redraws.
  """
  params, noise = learned.init_learned_kernel(
      name, jax.random.key(11), num_heads=heads, dim=dim,
      num_features=GRAD_FEATURES[_family(name)],
  )
  params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
  if jnp.issubdtype(noise.dtype, jnp.floating):
    noise = jnp.asarray(noise, jnp.float64)
  rng = np.random.default_rng(12)
  q, k, v, cotangent = (
      jnp.asarray(rng.standard_normal((1, length, heads, dim)), jnp.float64)
      for _ in range(4)
  )

  @jax.jit
  def loss(params):
    out = linear.learned_kernel_attention(
        q, k, v, kernel=name, params=params, noise=noise, causal=True,
        chunk_size=2, accum_dtype=jnp.float64,
    )
    return jnp.sum(out * cotangent)

  return params, loss


# Central differences in float64 with step 1e-5: truncation ~1e-10 and
# rounding ~1e-16 / 1e-5 = 1e-11, far inside the tolerance.
FINITE_DIFFERENCE_STEP = 1e-5
FINITE_DIFFERENCE_RTOL = 1e-6


@pytest.mark.parametrize("name", KERNEL_NAMES)
def test_every_parameter_gets_a_gradient_matching_finite_differences(name):
  with jax.enable_x64(True):
    params, loss = _attention_loss_setup(name)
    grads = jax.jit(jax.grad(loss))(params)
    assert set(grads) == set(params)
    rng = np.random.default_rng(13)
    for leaf_name, grad in grads.items():
      chex.assert_shape(grad, params[leaf_name].shape)
      grad = np.asarray(grad)
      # Every entry moves the loss: no parameter is disconnected, the
      # mixture logits included.
      assert np.all(np.abs(grad) > 1e-10), (name, leaf_name, grad)
      # One random direction per leaf, so each leaf's gradient is checked
      # on its own.
      direction = rng.standard_normal(grad.shape)
      step = {leaf_name: FINITE_DIFFERENCE_STEP * direction}
      shifted = lambda sign: float(loss({
          k: v + sign * step[k] if k in step else v for k, v in params.items()
      }))
      numerical = (shifted(1.0) - shifted(-1.0)) / (2 * FINITE_DIFFERENCE_STEP)
      analytic = float(np.sum(grad * direction))
      np.testing.assert_allclose(
          analytic, numerical, rtol=FINITE_DIFFERENCE_RTOL, atol=1e-9,
          err_msg=f"{name}: {leaf_name}",
      )


def test_fastfood_padding_sign_is_disconnected():
  # The check above can fail: with d = 3 padded to 4, the fourth sign only
  # ever multiplies a zero, so its gradient is exactly zero.
  with jax.enable_x64(True):
    params, loss = _attention_loss_setup("fastfood_rks", dim=3)
    signs = np.asarray(jax.grad(loss)(params)["signs"])
    np.testing.assert_array_equal(signs[..., 3], 0.0)
    assert np.all(signs[..., :3] != 0.0)


# --- 4. Deterministic evaluation in a model ---------------------------------


@pytest.mark.parametrize("name", KERNEL_NAMES)
def test_evaluation_is_deterministic_and_redraw_changes_only_noise(name):
  model = models.VisionTransformer(
      num_classes=10, patch_size=4, width=16, depth=1, num_heads=2,
      mlp_dim=16, attention=name, num_random_features=16,
  )
  images = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  # lazy_init skips compiling init's forward pass (seconds per kernel).
  variables = model.lazy_init(
      jax.random.key(1), jax.ShapeDtypeStruct(images.shape, images.dtype)
  )
  # One trainable distribution per head, beside the ordinary params.
  attention = variables["params"]["encoderblock_0"]["attention"]
  for leaf in jax.tree_util.tree_leaves(attention["spectral_distribution"]):
    assert leaf.shape[0] == 2, leaf.shape
  apply = jax.jit(model.apply)
  first = apply(variables, images)
  np.testing.assert_array_equal(apply(variables, images), first)

  redrawn = jax.jit(flax_attention.redraw)(variables, jax.random.key(2))
  old_noise = jax.tree_util.tree_leaves(variables["random_features"])
  new_noise = jax.tree_util.tree_leaves(redrawn["random_features"])
  assert len(old_noise) == len(new_noise) == 1
  assert old_noise[0].shape == new_noise[0].shape
  assert old_noise[0].dtype == new_noise[0].dtype
  assert not np.array_equal(old_noise[0], new_noise[0])
  jax.tree.map(np.testing.assert_array_equal, redrawn["params"],
               variables["params"])
  assert not np.allclose(apply(redrawn, images), first)


# --- 5. Bad input -----------------------------------------------------------
# Every check below happens while tracing, so jax.eval_shape runs them without
# compiling anything.


FASTFOOD_COUNT = r"`num_random_features` must be a multiple of 8; got 20"


def _init_shapes(name, *, heads=2, dim=4, num_features=8):
  return jax.eval_shape(
      lambda key: learned.init_learned_kernel(
          name, key, num_heads=heads, dim=dim, num_features=num_features
      ),
      jax.random.key(0),
  )


def _zeros(tree):
  return jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), tree)


def _attention_shape(name, params, noise, *, heads=2, dim=4):
  q = jax.ShapeDtypeStruct((1, 6, heads, dim), jnp.float32)
  return jax.eval_shape(
      lambda q, params, noise: linear.learned_kernel_attention(
          q, q, q, kernel=name, params=params, noise=noise
      ),
      q, params, noise,
  )


def test_fastfood_count_not_a_multiple_of_the_block_is_rejected():
  with pytest.raises(ValueError, match=FASTFOOD_COUNT):
    learned.fastfood_num_blocks(20, 8)
  for name in ("fastfood_rks", "fastfood_prf"):
    with pytest.raises(ValueError, match=FASTFOOD_COUNT):
      _init_shapes(name, dim=8, num_features=20)
  layer = flax_attention.MultiHeadSelfAttention(
      num_heads=2, attention="fastfood_rks", num_random_features=20
  )
  with pytest.raises(ValueError, match=FASTFOOD_COUNT):
    jax.eval_shape(layer.init, jax.random.key(0), jnp.ones((1, 5, 16)))
  # The same layer with a whole number of blocks builds.
  jax.eval_shape(
      layer.clone(num_random_features=24).init, jax.random.key(0),
      jnp.ones((1, 5, 16)),
  )


def test_gmm_odd_count_is_rejected():
  for name in ("gmm_rks", "gmm_prf"):
    with pytest.raises(
        ValueError,
        match=r"`num_random_features` must be a multiple of 2; got 7",
    ):
      _init_shapes(name, num_features=7)
  params = learned.init_gmm_prf_params(jax.random.key(0), 4)
  with pytest.raises(ValueError, match=r"7 rows.*multiple of 2"):
    learned.gmm_frequencies(params, jnp.ones((7, 4)))


@pytest.mark.parametrize("name", KERNEL_NAMES)
def test_valid_inputs_trace(name):
  # The rejections below come from the bad argument, not from the setup.
  params, noise = _init_shapes(name)
  chex.assert_shape(_attention_shape(name, params, noise), (1, 6, 2, 4))


@pytest.mark.parametrize("name", KERNEL_NAMES)
def test_params_for_the_wrong_number_of_heads_are_rejected(name):
  _, noise = _init_shapes(name)
  params, _ = _init_shapes(name, heads=3)
  with pytest.raises(
      ValueError, match=r"leading axis of 2 heads.*got shape \(3,"
  ):
    _attention_shape(name, params, noise)


@pytest.mark.parametrize("name", KERNEL_NAMES)
def test_wrong_noise_shapes_are_rejected(name):
  params, noise = _init_shapes(name)
  rows, cols = noise.shape
  bad_shapes = [(rows, cols + 1), (rows * cols,), (1, rows, cols)]
  if _family(name) == "fastfood":
    bad_shapes.append((rows + 1, cols))
  for shape in bad_shapes:
    bad = jax.ShapeDtypeStruct(shape, noise.dtype)
    with pytest.raises(
        ValueError,
        match=rf"`(noise|permutations)`.*got {re.escape(str(shape))}",
    ):
      _attention_shape(name, params, bad)


def test_unknown_kernel_is_rejected_listing_the_valid_names():
  message = rf"'gmm'.*valid: {re.escape(str(KERNEL_NAMES))}"
  with pytest.raises(ValueError, match=message):
    learned.get_learned_kernel("gmm")
  with pytest.raises(ValueError, match=message):
    _init_shapes("gmm")
  params, noise = _init_shapes("gmm_rks")
  with pytest.raises(ValueError, match=message):
    _attention_shape("gmm", params, noise)


@pytest.mark.parametrize("name", KERNEL_NAMES)
@hypothesis.settings(max_examples=10, deadline=None)
@hypothesis.given(multiple=st.integers(1, 6), dim=st.integers(1, 9))
def test_every_requested_feature_is_produced(name, multiple, dim):
  """2 m + 1 RKS features or m PRF features, never a truncated count."""
  step = {"gmm": learned.GMM_COMPONENTS, "generative": 1,
          "fastfood": learned.padded_dim(dim)}[_family(name)]
  num_features = multiple * step
  kernel = learned.LEARNED_KERNELS[name]

  def features(key, x):
    params, noise = learned.init_learned_kernel(
        name, key, num_heads=1, dim=dim, num_features=num_features
    )
    phi = kernel.feature_map(jax.tree.map(lambda a: a[0], params), noise)
    return _dense(phi(x))

  shape = jax.eval_shape(
      features, jax.random.key(0), jax.ShapeDtypeStruct((3, dim), jnp.float32)
  )
  expected = 2 * num_features + 1 if _is_rks(name) else num_features
  assert shape.shape == (3, expected), (shape, expected)


# --- 6. Linear == quadratic, causal == masked -------------------------------


@functools.partial(jax.jit, static_argnames=("name",))
def _head_features(name, head_params, noise, x):
  """One head's dense features at x * dim^{-1/4}, as the attention uses."""
  phi = learned.LEARNED_KERNELS[name].feature_map(head_params, noise)
  return _dense(phi(x * x.shape[-1] ** -0.25))


def _quadratic_reference(name, params, noise, q, k, v, causal):
  """Dense float64 attention from each head's own feature map."""
  outputs = []
  for h in range(q.shape[-2]):
    head_params = jax.tree.map(lambda a: a[h], params)
    features = lambda x: np.asarray(
        _head_features(name, head_params, noise, x[..., h, :]), np.float64
    )
    scores = np.einsum("bim,bjm->bij", features(q), features(k))
    if causal:
      scores = np.tril(scores)
    values = np.asarray(v[..., h, :], np.float64)
    outputs.append(scores @ values / scores.sum(-1, keepdims=True))
  return np.stack(outputs, axis=-2)


class LinearEqualsQuadraticTest(chex.TestCase, parameterized.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.product(name=KERNEL_NAMES, causal=(False, True))
  def test_learned_attention_matches_the_dense_reference(self, name, causal):
    params, noise = learned.init_learned_kernel(
        name, jax.random.key(3), num_heads=2, dim=4, num_features=8
    )
    q, k, v = (
        0.8 * jax.random.normal(jax.random.key(i), (2, 13, 2, 4))
        for i in range(3)
    )
    attend = self.variant(functools.partial(
        linear.learned_kernel_attention, kernel=name, causal=causal,
        chunk_size=4,
    ))
    # On GPUs float32 matmuls default to TF32 (a 10-bit mantissa), which is
    # a precision choice, not the linear == quadratic identity under test.
    with jax.default_matmul_precision("highest"):
      out = attend(q, k, v, params=params, noise=noise)
    chex.assert_shape(out, (2, 13, 2, 4))
    chex.assert_type(out, jnp.float32)
    with jax.default_matmul_precision("highest"):
      reference = _quadratic_reference(name, params, noise, q, k, v, causal)
    np.testing.assert_allclose(out, reference, rtol=1e-4, atol=1e-5)
