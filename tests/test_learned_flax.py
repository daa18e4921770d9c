"""The learned feature-map modules: variables, redraw, agreement with attention."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kattn
from kattn.features import favor
from kattn.features import learned
from kattn.flax import attention as attention_lib
from kattn.flax import learned as learned_flax

MODULES = {
    "gmm_rks": learned_flax.GMMRKSFeatures,
    "gmm_prf": learned_flax.GMMPRFFeatures,
    "fastfood_rks": learned_flax.FastFoodRKSFeatures,
    "fastfood_prf": learned_flax.FastFoodPRFFeatures,
    "generative_rks": learned_flax.GenerativeRKSFeatures,
    "generative_prf": learned_flax.GenerativePRFFeatures,
}
HEADS, DIM, DRAWS = 3, 8, 16


def _dense(features):
  if isinstance(features, favor.ScaledFeatures):
    return features.dense()
  return features


def _inputs(seed=0, length=11):
  return 0.5 * jax.random.normal(jax.random.key(seed), (2, length, HEADS, DIM))


def test_there_is_one_module_per_learned_kernel():
  assert set(MODULES) == set(learned.LEARNED_KERNELS)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_holds_per_head_parameters_and_noise(name):
  module = MODULES[name](num_random_features=DRAWS)
  x = _inputs()
  variables = module.init(jax.random.key(1), x)
  spectrum = variables["params"][attention_lib.SPECTRAL_DISTRIBUTION]
  assert all(leaf.shape[0] == HEADS for leaf in jax.tree.leaves(spectrum))
  (noise,) = jax.tree.leaves(variables[attention_lib.RANDOM_FEATURES])
  features = _dense(module.apply(variables, x))
  expected = 2 * DRAWS + 1 if name.endswith("rks") else DRAWS
  assert features.shape == (2, 11, HEADS, expected)
  # Head h is the kernel's own map with params[h], on the same tokens.
  for h in range(HEADS):
    phi = learned.get_learned_kernel(name).feature_map(
        jax.tree.map(lambda a: a[h], spectrum), noise
    )
    np.testing.assert_allclose(
        features[..., h, :], _dense(phi(x[..., h, :])), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("name", sorted(MODULES))
def test_features_give_the_attention_of_learned_kernel_attention(name):
  module = MODULES[name](num_random_features=DRAWS)
  q, k, v = _inputs(0), _inputs(1), _inputs(2)
  scale = DIM**-0.25
  variables = module.init(jax.random.key(1), q)
  q_features = _dense(module.apply(variables, q * scale))
  k_features = _dense(module.apply(variables, k * scale))
  out = kattn.linear_attention(q_features, k_features, v)
  (noise,) = jax.tree.leaves(variables[attention_lib.RANDOM_FEATURES])
  expected = kattn.learned_kernel_attention(
      q, k, v, kernel=name,
      params=variables["params"][attention_lib.SPECTRAL_DISTRIBUTION],
      noise=noise,
  )
  np.testing.assert_allclose(out, expected, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("name", ["gmm_prf", "fastfood_rks"])
def test_apply_is_deterministic_and_only_redraw_changes_the_noise(name):
  module = MODULES[name](num_random_features=DRAWS)
  x = _inputs()
  variables = module.init(jax.random.key(1), x)
  first = _dense(module.apply(variables, x))
  np.testing.assert_array_equal(first, _dense(module.apply(variables, x)))
  redrawn = attention_lib.redraw(variables, jax.random.key(7))
  old, new = (
      jax.tree.leaves(v[attention_lib.RANDOM_FEATURES])[0]
      for v in (variables, redrawn)
  )
  assert old.shape == new.shape and old.dtype == new.dtype
  assert not np.array_equal(old, new)
  for a, b in zip(jax.tree.leaves(variables["params"]),
                  jax.tree.leaves(redrawn["params"])):
    np.testing.assert_array_equal(a, b)
  assert not np.allclose(first, _dense(module.apply(redrawn, x)))


def test_a_kernel_that_is_not_learned_is_refused():
  with pytest.raises(ValueError, match="learned kernel.*got 'favor'"):
    learned_flax.LearnedFeatureMap(kernel="favor").init(
        jax.random.key(0), _inputs()
    )


def test_fastfood_count_that_is_not_whole_blocks_is_refused():
  with pytest.raises(ValueError, match="multiple of 8; got 20"):
    learned_flax.FastFoodPRFFeatures(num_random_features=20).init(
        jax.random.key(0), _inputs()
    )


def test_inputs_without_a_heads_axis_are_refused():
  with pytest.raises(ValueError, match="x"):
    learned_flax.GMMRKSFeatures(num_random_features=8).init(
        jax.random.key(0), jnp.ones((5, 8))
    )
