"""Linear attention against the quadratic references it must reproduce."""

import functools
import re

from absl.testing import parameterized
import chex
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kattn

# float32 rounding of sums over <= ~100 terms of O(1) values.
RTOL, ATOL = 2e-5, 2e-6


def _normal(seed, shape, scale=1.0):
  return scale * jax.random.normal(jax.random.key(seed), shape)


def _positive_features(seed, shape):
  return jax.nn.relu(_normal(seed, shape)) + 0.05


def _dense_favor_features(x, projection, kernel="positive"):
  fn = {
      "positive": kattn.positive_softmax_features,
      "hyperbolic": kattn.hyperbolic_softmax_features,
      "trigonometric": kattn.trigonometric_softmax_features,
  }[kernel]
  return fn(x * x.shape[-1] ** -0.25, projection)


class LinearEqualsQuadraticTest(chex.TestCase, parameterized.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.product(
      causal=(False, True), chunk_size=(1, 7, 64), length=(1, 13, 70)
  )
  def test_linear_attention_matches_quadratic(self, causal, chunk_size, length):
    qf = _positive_features(0, (2, length, 3, 8))
    kf = _positive_features(1, (2, length, 3, 8))
    v = _normal(2, (2, length, 3, 5))
    attend = self.variant(functools.partial(
        kattn.linear_attention, causal=causal, chunk_size=chunk_size,
        chunks_per_step=3,
    ))
    out = attend(qf, kf, v)
    chex.assert_shape(out, (2, length, 3, 5))
    chex.assert_type(out, jnp.float32)
    expected = kattn.quadratic_kernel_attention(qf, kf, v, causal=causal)
    np.testing.assert_allclose(out, expected, rtol=RTOL, atol=ATOL)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.product(
      causal=(False, True), kernel=("positive", "hyperbolic", "trigonometric"),
      chunk_size=(1, 7, 64),
  )
  def test_favor_matches_quadratic_with_the_same_features(
      self, causal, kernel, chunk_size
  ):
    q, k, v = (_normal(i, (1, 45, 2, 8), 0.7) for i in range(3))
    w = kattn.orthogonal_random_projection(jax.random.key(3), 16, 8)
    attend = self.variant(functools.partial(
        kattn.favor_attention, projection=w, kernel=kernel, causal=causal,
        chunk_size=chunk_size,
    ))
    expected = kattn.quadratic_kernel_attention(
        _dense_favor_features(q, w, kernel), _dense_favor_features(k, w, kernel),
        v, causal=causal,
    )
    # Trigonometric denominators can be small, amplifying rounding.
    tol = 1e-3 if kernel == "trigonometric" else 1e-5
    np.testing.assert_allclose(attend(q, k, v), expected, rtol=tol, atol=tol)

  @chex.variants(with_jit=True, without_jit=True)
  def test_cross_attention_with_different_lengths(self):
    q = _normal(0, (2, 9, 2, 8), 0.5)
    k, v = _normal(1, (2, 31, 2, 8), 0.5), _normal(2, (2, 31, 2, 4))
    w = kattn.gaussian_random_projection(jax.random.key(3), 32, 8)
    out = self.variant(functools.partial(
        kattn.favor_attention, projection=w, chunk_size=4
    ))(q, k, v)
    expected = kattn.quadratic_kernel_attention(
        _dense_favor_features(q, w), _dense_favor_features(k, w), v
    )
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(False, True)
  def test_deterministic_exp_kernel(self, causal):
    q, k, v = (_normal(i, (1, 20, 2, 4), 2.0) for i in range(3))
    out = self.variant(functools.partial(
        kattn.feature_map_attention, feature_map=kattn.exp_features,
        causal=causal, chunk_size=6,
    ))(q, k, v)
    expected = kattn.quadratic_kernel_attention(
        jnp.exp(q), jnp.exp(k), v, causal=causal
    )
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


@hypothesis.settings(max_examples=25, deadline=None, derandomize=True)
@hypothesis.given(
    batch=st.lists(st.integers(1, 2), min_size=0, max_size=2),
    length=st.integers(1, 40),
    heads=st.integers(1, 3),
    num_features=st.integers(1, 9),
    chunk_size=st.sampled_from([1, 3, 7, 64]),
    chunks_per_step=st.integers(1, 4),
    causal=st.booleans(),
)
def test_linear_attention_matches_quadratic_for_any_shape(
    batch, length, heads, num_features, chunk_size, chunks_per_step, causal
):
  shape = tuple(batch) + (length, heads)
  qf = _positive_features(0, shape + (num_features,))
  kf = _positive_features(1, shape + (num_features,))
  v = _normal(2, shape + (3,))
  out = kattn.linear_attention(
      qf, kf, v, causal=causal, chunk_size=chunk_size,
      chunks_per_step=chunks_per_step,
  )
  expected = kattn.quadratic_kernel_attention(qf, kf, v, causal=causal)
  np.testing.assert_allclose(out, expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("chunk_size", [1, 7, 64])
def test_gradients_match_the_quadratic_reference(causal, chunk_size):
  q, k = (_normal(i, (2, 23, 2, 8), 0.6) for i in range(2))
  v = _normal(2, (2, 23, 2, 4))
  cotangent = _normal(3, (2, 23, 2, 4))
  w = kattn.orthogonal_random_projection(jax.random.key(4), 16, 8)

  def linear_loss(q, k, v):
    out = kattn.favor_attention(
        q, k, v, projection=w, causal=causal, chunk_size=chunk_size
    )
    return jnp.sum(out * cotangent)

  def quadratic_loss(q, k, v):
    out = kattn.quadratic_kernel_attention(
        _dense_favor_features(q, w), _dense_favor_features(k, w), v,
        causal=causal,
    )
    return jnp.sum(out * cotangent)

  grads = jax.jit(jax.grad(linear_loss, argnums=(0, 1, 2)))(q, k, v)
  expected = jax.grad(quadratic_loss, argnums=(0, 1, 2))(q, k, v)
  for got, want in zip(grads, expected):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_gradients_pass_finite_differences_in_float64(causal):
  with jax.enable_x64(True):
    q, k = (_normal(i, (1, 11, 2, 4), 0.5).astype(jnp.float64) for i in range(2))
    v = _normal(2, (1, 11, 2, 3)).astype(jnp.float64)
    w = kattn.gaussian_random_projection(jax.random.key(4), 8, 4, dtype=jnp.float64)
    attend = functools.partial(
        kattn.favor_attention, projection=w, causal=causal, chunk_size=4,
        accum_dtype=jnp.float64,
    )
    jax.test_util.check_grads(attend, (q, k, v), order=1, modes=["rev"])


@pytest.mark.parametrize("kernel", ["positive", "hyperbolic", "trigonometric"])
@pytest.mark.parametrize("chunk_size", [1, 7, 64])
def test_causal_outputs_ignore_the_future_bitwise(kernel, chunk_size):
  """Changing keys/values after position t leaves outputs up to t unchanged.

  Future keys are made huge: a stabiliser that takes a max over all keys (or
  an epsilon relative to it) would change earlier outputs.
  """
  length, t = 50, 29
  q, k, v = (_normal(i, (1, length, 2, 8), 0.5) for i in range(3))
  w = kattn.orthogonal_random_projection(jax.random.key(5), 32, 8)
  future = jnp.arange(length)[None, :, None, None] > t
  k2 = jnp.where(future, 30.0 * _normal(6, k.shape), k)
  v2 = jnp.where(future, 1e3 * _normal(7, v.shape), v)
  attend = jax.jit(functools.partial(
      kattn.favor_attention, projection=w, kernel=kernel, causal=True,
      chunk_size=chunk_size,
  ))
  before, after = attend(q, k, v), attend(q, k2, v2)
  np.testing.assert_array_equal(before[:, :t + 1], after[:, :t + 1])
  assert not np.allclose(before[:, t + 1:], after[:, t + 1:])


def test_favor_converges_to_softmax_attention_as_features_grow():
  q, k = (_normal(i, (1, 64, 2, 16), 0.5) for i in range(2))
  v = _normal(2, (1, 64, 2, 16))

  def mean_error(num_features, causal):
    errors = []
    exact = kattn.softmax_attention(q, k, v, causal=causal)
    for seed in range(4):
      w = kattn.orthogonal_random_projection(
          jax.random.key(seed), num_features, 16
      )
      out = kattn.favor_attention(q, k, v, projection=w, causal=causal)
      errors.append(float(jnp.sqrt(jnp.mean((out - exact) ** 2))))
    return float(np.mean(errors))

  for causal in (False, True):
    coarse, fine = mean_error(64, causal), mean_error(4096, causal)
    # Monte-Carlo error falls like m^{-1/2}: 8x expected, 4x required.
    assert fine < coarse / 4, (causal, coarse, fine)
    assert fine < 0.02, (causal, fine)


@pytest.mark.parametrize("causal", [False, True])
def test_large_norms_stay_finite_and_match_a_log_space_reference(causal):
  q, k = (_normal(i, (1, 37, 2, 8), 6.0) for i in range(2))
  v = _normal(2, (1, 37, 2, 4))
  w = kattn.orthogonal_random_projection(jax.random.key(3), 32, 8)
  out = kattn.favor_attention(q, k, v, projection=w, causal=causal, chunk_size=8)
  # Reference: the kernel matrix from log-scale features, each key row
  # referred to the largest key scale (a constant, so it cancels).
  qs = kattn.positive_softmax_scaled_features(q * 8 ** -0.25, w)
  ks = kattn.positive_softmax_scaled_features(k * 8 ** -0.25, w)
  key_weights = jnp.exp(ks.log_scale - jnp.max(ks.log_scale, axis=1, keepdims=True))
  expected = kattn.quadratic_kernel_attention(
      qs.values, ks.values * key_weights[..., None], v, causal=causal
  )
  assert bool(jnp.all(jnp.isfinite(out)))
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
  grads = jax.grad(
      lambda q, k: jnp.sum(kattn.favor_attention(
          q, k, v, projection=w, causal=causal, chunk_size=8))
  , argnums=(0, 1))(q, k)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)


@hypothesis.settings(max_examples=10, deadline=None, derandomize=True)
@hypothesis.given(seed=st.integers(0, 2**16), chunk_size=st.sampled_from([1, 5, 64]))
def test_permuting_tokens_permutes_outputs(seed, chunk_size):
  q, k, v = (_normal(seed + i, (1, 21, 2, 8), 0.5) for i in range(3))
  w = kattn.orthogonal_random_projection(jax.random.key(seed), 16, 8)
  perm = jax.random.permutation(jax.random.key(seed + 9), 21)
  attend = functools.partial(
      kattn.favor_attention, projection=w, chunk_size=chunk_size
  )
  np.testing.assert_allclose(
      attend(q[:, perm], k[:, perm], v[:, perm]), attend(q, k, v)[:, perm],
      rtol=1e-5, atol=1e-6,
  )


@pytest.mark.parametrize("causal", [False, True])
def test_bfloat16_inputs_are_finite_and_close_to_float32(causal):
  q, k, v = (_normal(i, (2, 40, 2, 16), 0.5) for i in range(3))
  w = kattn.orthogonal_random_projection(jax.random.key(3), 64, 16)
  attend = functools.partial(
      kattn.favor_attention, projection=w, causal=causal, chunk_size=16
  )
  low = attend(*(x.astype(jnp.bfloat16) for x in (q, k, v)))
  chex.assert_type(low, jnp.bfloat16)
  assert bool(jnp.all(jnp.isfinite(low)))
  # bf16 keeps 8 mantissa bits: inputs and outputs are rounded at ~0.4%;
  # accumulation runs in float32, so errors do not grow with the length.
  np.testing.assert_allclose(
      low.astype(jnp.float32), attend(q, k, v), rtol=0.03, atol=0.03
  )


@pytest.mark.parametrize("causal", [False, True])
def test_vmap_over_an_extra_batch_axis_equals_the_batched_call(causal):
  q, k, v = (_normal(i, (3, 2, 17, 2, 8), 0.5) for i in range(3))
  w = kattn.orthogonal_random_projection(jax.random.key(3), 16, 8)
  attend = functools.partial(
      kattn.favor_attention, projection=w, causal=causal, chunk_size=5
  )
  np.testing.assert_allclose(
      jax.vmap(attend)(q, k, v), attend(q, k, v), rtol=1e-6, atol=1e-7
  )


def test_vmap_over_projections_redraws_per_example():
  q = _normal(0, (2, 10, 1, 8), 0.5)
  ws = jax.vmap(lambda key: kattn.orthogonal_random_projection(key, 16, 8))(
      jax.random.split(jax.random.key(0), 2)
  )
  out = jax.vmap(lambda x, w: kattn.favor_attention(x, x, x, projection=w))(q, ws)
  for i in range(2):
    np.testing.assert_allclose(
        out[i], kattn.favor_attention(q[i], q[i], q[i], projection=ws[i]),
        rtol=1e-6, atol=1e-7,
    )


def test_values_equal_to_one_give_rows_summing_to_one():
  q, k = (_normal(i, (1, 30, 2, 8), 0.5) for i in range(2))
  w = kattn.orthogonal_random_projection(jax.random.key(3), 16, 8)
  out = kattn.favor_attention(
      q, k, jnp.ones((1, 30, 2, 1)), projection=w, causal=True, chunk_size=7
  )
  np.testing.assert_allclose(out, 1.0, rtol=1e-6)


def test_softmax_reference_matches_jax_dot_product_attention():
  q, k, v = (_normal(i, (2, 19, 3, 8)) for i in range(3))
  for causal in (False, True):
    np.testing.assert_allclose(
        kattn.softmax_attention(q, k, v, causal=causal),
        jax.nn.dot_product_attention(q, k, v, is_causal=causal),
        rtol=1e-5, atol=1e-6,
    )


W = kattn.gaussian_random_projection(jax.random.key(0), 8, 4)
GOOD = jnp.ones((1, 6, 2, 4))


@pytest.mark.parametrize("call,match", [
    (lambda: kattn.favor_attention(GOOD, jnp.ones((1, 6, 2, 5)), GOOD,
                                   projection=W), r"feature dims.*q=4, k=5"),
    (lambda: kattn.favor_attention(jnp.ones((6, 4)), GOOD, GOOD, projection=W),
     r"`q` must have rank >= 3"),
    (lambda: kattn.favor_attention(GOOD, jnp.ones((1, 6, 3, 4)), GOOD,
                                   projection=W), r"Head counts"),
    (lambda: kattn.favor_attention(GOOD, GOOD, jnp.ones((1, 5, 2, 4)),
                                   projection=W), r"lengths.*k=6, v=5"),
    (lambda: kattn.favor_attention(GOOD, GOOD, GOOD,
                                   projection=jnp.ones((8, 5))),
     r"projection.*\[num_features, 4\]"),
    (lambda: kattn.favor_attention(GOOD, GOOD, GOOD, projection=jnp.ones(8)),
     r"projection"),
    (lambda: kattn.favor_attention(GOOD, GOOD, GOOD, projection=W,
                                   kernel="gaussian"), r"kernel.*positive"),
    (lambda: kattn.favor_attention(jnp.ones((1, 3, 2, 4)), GOOD, GOOD,
                                   projection=W, causal=True),
     r"Causal attention lengths"),
    (lambda: kattn.favor_attention(GOOD, GOOD, GOOD, projection=W,
                                   chunk_size=0), r"chunk_size"),
    (lambda: kattn.linear_attention(GOOD, GOOD, GOOD, chunks_per_step=-1),
     r"chunks_per_step"),
    (lambda: kattn.linear_attention(GOOD.astype(jnp.int32), GOOD, GOOD),
     r"`q_features` must have a floating dtype"),
    (lambda: kattn.softmax_attention(GOOD, jnp.ones((2, 6, 2, 4)), GOOD),
     r"Batch axes"),
    (lambda: kattn.linear_attention(GOOD, jnp.ones((1, 0, 2, 4)),
                                    jnp.ones((1, 0, 2, 4))),
     r"at least one token"),
    (lambda: kattn.favor_attention(GOOD, GOOD, GOOD,
                                   projection=jnp.zeros((0, 4))),
     r"`projection` must have at least one row.*got shape \(0, 4\)"),
])
def test_bad_inputs_raise_clear_errors(call, match):
  with pytest.raises(ValueError, match=match):
    call()


_LEARNED_PARAMS, _LEARNED_NOISE = kattn.init_learned_kernel(
    "gmm_prf", jax.random.key(1), num_heads=2, dim=4, num_features=8
)
# (function, the name it gives its queries) for every cross-attention entry
# point, so the query length can differ from the key length.
CROSS_ATTENTIONS = {
    "softmax": (kattn.softmax_attention, "q"),
    "favor": (functools.partial(kattn.favor_attention, projection=W), "q"),
    "feature_map": (functools.partial(
        kattn.feature_map_attention, feature_map=kattn.elu_plus_one_features
    ), "q"),
    "linear": (kattn.linear_attention, "q_features"),
    "learned_kernel": (functools.partial(
        kattn.learned_kernel_attention, kernel="gmm_prf",
        params=_LEARNED_PARAMS, noise=_LEARNED_NOISE,
    ), "q"),
    "quadratic_kernel": (kattn.quadratic_kernel_attention, "q_features"),
}


@pytest.mark.parametrize("attention", sorted(CROSS_ATTENTIONS))
@pytest.mark.parametrize("q_shape, k_shape, v_shape, culprit, what, axis", [
    ((1, 0, 2, 4), (1, 3, 2, 4), (1, 3, 2, 4), "q", "token", -3),
    ((1, 3, 0, 4), (1, 3, 0, 4), (1, 3, 0, 4), "q", "head", -2),
    ((1, 3, 2, 0), (1, 3, 2, 0), (1, 3, 2, 4), "q", "feature", -1),
    ((1, 3, 2, 4), (1, 3, 2, 4), (1, 3, 2, 0), "v", "feature", -1),
], ids=["no_query", "no_heads", "no_query_features", "no_value_features"])
def test_empty_axes_name_the_argument_and_its_shape(
    attention, q_shape, k_shape, v_shape, culprit, what, axis
):
  """Only batch axes may be empty; before, most of these divided by zero."""
  fn, q_name = CROSS_ATTENTIONS[attention]
  name = q_name if culprit == "q" else culprit
  shape = {"q": q_shape, "v": v_shape}[culprit]
  match = (
      f"`{name}` must hold at least one {what} \\(axis {axis}\\); got shape"
      f" {re.escape(str(shape))}"
  )
  with pytest.raises(ValueError, match=match):
    fn(jnp.ones(q_shape), jnp.ones(k_shape), jnp.ones(v_shape))


_PHI = kattn.attention.favor_feature_map(W, 4)
_GPSA = (kattn.attention.locality_position_weights(4), jnp.ones(4))
_P4 = kattn.attention.relative_group_index("p4")
TOKENS, GROUP_TOKENS = (1, 0, 4, 4), (1, 4, 0, 4, 4)
# Self-attention entry points on a 3 x 3 grid, 4 heads of dim 4, and the
# query shape each takes (group layers: 4 elements of p4 before the length).
SELF_ATTENTIONS = {
    "gpsa": (lambda x: kattn.gated_positional_self_attention(
        x, x, x, *_GPSA, grid=(3, 3)), TOKENS),
    "linear_gpsa": (lambda x: kattn.linear_gated_positional_self_attention(
        x, x, x, *_GPSA, feature_map=_PHI, grid=(3, 3)), TOKENS),
    "soft": (lambda x: kattn.soft_attention(
        x, x, jnp.ones((1, 2, 4, 4))), TOKENS),
    "gaussian_kernel": (
        lambda x: kattn.attention.gaussian_kernel_attention(x, x), TOKENS),
    "relative_softmax": (lambda x: kattn.positional.relative_softmax_attention(
        x, x, x, jnp.zeros((4, 5, 5)), grid=(3, 3), mode="padded"), TOKENS),
    "relative_favor": (lambda x: kattn.positional.relative_favor_attention(
        x, x, x, jnp.zeros((4, 5, 5)), projection=W, grid=(3, 3),
        mode="padded"), TOKENS),
    "lifting": (lambda x: kattn.lifting_self_attention(
        x, x, x, jnp.zeros((4, 3, 3, 4, 4)), grid=(3, 3), window=3), TOKENS),
    "group": (lambda x: kattn.group_self_attention(
        x, x, x, jnp.zeros((4, 3, 3, 4, 4)), jnp.zeros((4, 4, 4)), _P4,
        grid=(3, 3), window=3), GROUP_TOKENS),
    "lifting_favor": (lambda x: kattn.group_lifting_favor_attention(
        x, x, x, jnp.zeros((4, 5, 5)), group="p4", projection=W,
        grid=(3, 3)), TOKENS),
    "group_favor": (lambda x: kattn.group_favor_attention(
        x, x, x, jnp.zeros((4, 5, 5)), jnp.zeros((4, 4)), group="p4",
        projection=W, grid=(3, 3)), GROUP_TOKENS),
}


@pytest.mark.parametrize("attention", sorted(SELF_ATTENTIONS))
def test_self_attentions_report_an_empty_query(attention):
  # Before, these blamed `k`, with no axis or shape.
  fn, shape = SELF_ATTENTIONS[attention]
  match = (
      r"`q` must hold at least one token \(axis -3\); got shape"
      f" {re.escape(str(shape))}"
  )
  with pytest.raises(ValueError, match=match):
    fn(jnp.ones(shape))
