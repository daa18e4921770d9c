"""SOFT (softmax-free attention): pure functions against explicit references.

The references are written from the definitions: the Gaussian kernel from
pairwise differences in float64 numpy (not the ||a||^2 + ||b||^2 - 2 a.b
expansion the code uses), pseudo-inverses by `jnp.linalg.pinv` (SVD), the
inverse's gradient by autodiff through `jnp.linalg.inv`. Newton-Schulz is
checked in float64, where convergence and rounding are not confused.
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
from kattn.attention import soft

_settings = hypothesis.settings(
    max_examples=100, deadline=None, derandomize=True
)
seeds = st.integers(0, 2**32 - 1)
# float64 Newton-Schulz at condition number <= 100 reaches ~1e-14; 1e-10
# leaves room for rounding, and an unconverged iterate is off by >= 1e-7.
NS_RTOL = 1e-10
# float32 kernels of O(1) tokens: rounding of the distance expansion.
KERNEL_ATOL = 1e-5

_pinv = jax.jit(
    soft.newton_schulz_pinv, static_argnames=("num_iterations", "ridge")
)
_soft = jax.jit(
    soft.soft_attention,
    static_argnames=("num_iterations", "ridge", "normalization",
                     "accum_dtype"),
)
_kernel = jax.jit(soft.gaussian_kernel)
_exact = jax.jit(soft.gaussian_kernel_attention)
_svd_pinv = jax.jit(jnp.linalg.pinv)


def _normal(rng, shape, scale=1.0):
  return (scale * rng.standard_normal(shape)).astype(np.float32)


def _spd(rng, n, kappa):
  """Symmetric positive definite, random eigenvectors, spectrum 1 .. 1/kappa."""
  eigenvectors, _ = np.linalg.qr(rng.standard_normal((n, n)))
  return (eigenvectors * np.geomspace(1.0, 1.0 / kappa, n)) @ eigenvectors.T


def _reference_pinv(a):
  """float64 Moore-Penrose pseudo-inverse by SVD (`jnp.linalg.pinv`)."""
  with jax.enable_x64(True):
    return np.asarray(_svd_pinv(np.float64(a)))


def _reference_kernel(a, b):
  """float64 exp(-||a_i - b_j||^2 / 2) of `[*b, n, h, d]`, `[*b, m, h, d]`.

  Returns `[*b, h, n, m]`, from the differences themselves.
  """
  a, b = np.float64(a), np.float64(b)
  sq = np.sum((a[..., :, None, :, :] - b[..., None, :, :, :]) ** 2, axis=-1)
  return np.moveaxis(np.exp(-0.5 * sq), -1, -3)


def _reference_soft(q, v, landmarks, normalization):
  """P A^+ P^T V (or P D^-1/2 A^+ D^-1/2 P^T V), in float64, A^+ by SVD."""
  scale = q.shape[-1] ** -0.25
  p = _reference_kernel(scale * np.float64(q), scale * np.float64(landmarks))
  a = _reference_kernel(
      scale * np.float64(landmarks), scale * np.float64(landmarks)
  )
  inverse = _reference_pinv(a)
  if normalization == "symmetric":
    d = a.sum(axis=-1) ** -0.5
    inverse = d[..., :, None] * inverse * d[..., None, :]
  weights = p @ inverse @ np.swapaxes(p, -1, -2)
  return np.einsum("...hlm,...mhd->...lhd", weights, np.float64(v))


def _relative_error(got, want):
  return np.linalg.norm(np.float64(got) - want) / np.linalg.norm(want)


@_settings
@hypothesis.given(
    seed=seeds, n=st.sampled_from([1, 2, 5, 16]),
    kappa=st.floats(1.0, 100.0),
    norms=st.tuples(*[st.sampled_from([1e-3, 1.0, 1e3])] * 2),
)
def test_newton_schulz_matches_pinv_up_to_condition_number_100(
    seed, n, kappa, norms
):
  # Two matrices of very different norms in one batch: each must get its own
  # start, or the smaller one needs ~log2(1e6) = 20 more iterations.
  rng = np.random.default_rng(seed)
  a = np.stack([s * _spd(rng, n, kappa) for s in norms])
  with jax.enable_x64(True):
    got = np.asarray(_pinv(a))
  for got_i, a_i in zip(got, a):
    assert _relative_error(got_i, _reference_pinv(a_i)) <= NS_RTOL


@pytest.mark.parametrize("n", [4, 16, 49])
def test_twenty_iterations_stop_sufficing_between_kappa_100_and_1000(n):
  """The default 20 steps invert kappa = 100, not kappa = 1e3; 30 steps do.

  Measured relative errors (float64, 5 seeds, n in {4, 16, 49}): 20 steps
  give <= 5e-14 at kappa 100, 1e-7 .. 2e-2 at 300, 0.23 .. 0.55 at 1e3;
  30 steps give <= 1e-13 at 1e3.
  """
  with jax.enable_x64(True):
    for seed in range(5):
      rng = np.random.default_rng(seed)
      well, ill = _spd(rng, n, 100.0), _spd(rng, n, 1e3)
      error = lambda a, steps: _relative_error(
          _pinv(a, num_iterations=steps), _reference_pinv(a)
      )
      assert error(well, soft.DEFAULT_NUM_ITERATIONS) <= NS_RTOL
      assert error(ill, soft.DEFAULT_NUM_ITERATIONS) >= 0.1
      assert error(ill, 30) <= NS_RTOL


@_settings
@hypothesis.given(
    seed=seeds, rank=st.integers(1, 8), kappa=st.floats(1.0, 10.0),
)
def test_penrose_identities_and_pinv_for_duplicated_rows(seed, rank, kappa):
  # Duplicated rows and columns (as from duplicated landmarks) make an 8 x 8
  # positive semi-definite A of rank `rank`.
  rng = np.random.default_rng(seed)
  rows = np.concatenate([np.arange(rank), rng.integers(0, rank, 8 - rank)])
  rng.shuffle(rows)
  a = _spd(rng, rank, kappa)[rows][:, rows]
  with jax.enable_x64(True):
    v = np.asarray(_pinv(a))
  atol = NS_RTOL * np.linalg.norm(a) * np.linalg.norm(v)
  np.testing.assert_allclose(a @ v @ a, a, rtol=0, atol=atol)
  np.testing.assert_allclose(v @ a @ v, v, rtol=0, atol=atol)
  np.testing.assert_allclose(a @ v, (a @ v).T, rtol=0, atol=atol)
  np.testing.assert_allclose(v @ a, (v @ a).T, rtol=0, atol=atol)
  assert _relative_error(v, _reference_pinv(a)) <= NS_RTOL


@_settings
@hypothesis.given(
    seed=seeds, rank=st.integers(0, 6),
    ridge=st.sampled_from([soft.STABLE_RIDGE, 0.1, 1.0]),
)
def test_ridge_inverts_the_shifted_matrix(seed, rank, ridge):
  # PSD of spectral norm 1 (or 0) and any rank: the ridge alone bounds the
  # condition number, by 1 + 1 / ridge.
  rng = np.random.default_rng(seed)
  n = 6
  x = rng.standard_normal((n, rank))
  a = x @ x.T / max(np.linalg.norm(x, 2) ** 2, 1.0)
  with jax.enable_x64(True):
    got = _pinv(a, ridge=ridge)
  want = _reference_pinv(a + ridge * np.eye(n))
  assert _relative_error(got, want) <= NS_RTOL


def test_float32_in_float32_out():
  a = _spd(np.random.default_rng(0), 6, 10.0).astype(np.float32)
  got = _pinv(a)
  chex.assert_type(got, jnp.float32)
  # float32 rounding amplified by kappa = 10.
  np.testing.assert_allclose(got, np.linalg.inv(a), rtol=1e-4, atol=1e-4)


@functools.partial(jax.jit, static_argnames="ridge")
def _inverse_gradients(a, cotangent, ridge):
  def newton_schulz_loss(a):
    return jnp.sum(cotangent * soft.newton_schulz_pinv(a, ridge=ridge))

  def inv_loss(a):
    shifted = a + ridge * jnp.eye(a.shape[-1], dtype=a.dtype)
    return jnp.sum(cotangent * jnp.linalg.inv(shifted))

  return jax.grad(newton_schulz_loss)(a), jax.grad(inv_loss)(a)


@_settings
@hypothesis.given(
    seed=seeds, ridge=st.sampled_from([0.0, 0.1]),
)
def test_custom_vjp_equals_autodiff_through_inv(seed, ridge):
  # Non-symmetric A and cotangent, so the transposes of -V^T G V^T matter;
  # I + 0.5 N / sqrt(n) keeps the singular values within a factor ~40.
  rng = np.random.default_rng(seed)
  n = 6
  a = np.eye(n) + 0.5 * rng.standard_normal((2, n, n)) / np.sqrt(n)
  cotangent = rng.standard_normal((2, n, n))
  with jax.enable_x64(True):
    got, want = map(np.asarray, _inverse_gradients(a, cotangent, ridge))
  assert _relative_error(got, want) <= NS_RTOL


@pytest.mark.parametrize("num_iterations", [0, 3])
def test_backward_applies_the_inverse_gradient_once_unconverged(
    num_iterations
):
  # Far from convergence, differentiating the loop would give another
  # gradient; the backward pass is -V^T G V^T of the forward iterate V.
  rng = np.random.default_rng(7)
  a = _spd(rng, 5, 1e3) + 0.1 * rng.standard_normal((5, 5))
  cotangent = rng.standard_normal((5, 5))
  with jax.enable_x64(True):
    v, vjp = jax.vjp(
        functools.partial(
            soft.newton_schulz_pinv, num_iterations=num_iterations
        ),
        a,
    )
    (got,) = vjp(cotangent)
  v = np.asarray(v)
  np.testing.assert_allclose(got, -v.T @ cotangent @ v.T, rtol=1e-12, atol=0)


@_settings
@hypothesis.given(
    seed=seeds, lengths=st.sampled_from([(1, 1), (12, 5)]),
    dim=st.sampled_from([1, 8]), scale=st.sampled_from([0.1, 0.5, 1.0]),
)
def test_kernel_matches_definition_and_is_a_correlation_matrix(
    seed, lengths, dim, scale
):
  rng = np.random.default_rng(seed)
  a = _normal(rng, (2, lengths[0], 3, dim), scale)
  b = _normal(rng, (2, lengths[1], 3, dim), scale)
  cross = _kernel(a, b)
  chex.assert_shape(cross, (2, 3) + lengths)
  np.testing.assert_allclose(
      cross, _reference_kernel(a, b), rtol=0, atol=KERNEL_ATOL
  )
  gram = np.asarray(_kernel(a, a))
  np.testing.assert_allclose(
      gram, np.swapaxes(gram, -1, -2), rtol=0, atol=1e-7
  )
  np.testing.assert_allclose(
      np.diagonal(gram, axis1=-2, axis2=-1), 1.0, rtol=0, atol=KERNEL_ATOL
  )
  assert np.all(gram > 0) and np.all(gram <= 1)
  # Measured minimum over such draws: -1.3e-7 (float32 rounding).
  assert np.linalg.eigvalsh(np.float64(gram)).min() >= -1e-6


def _identical_tokens(seed, scale, length=6, heads=3, dim=8):
  rng = np.random.default_rng(seed)
  return np.repeat(_normal(rng, (1, heads, dim), scale), length, axis=0)


@_settings
@hypothesis.given(seed=seeds, scale=st.sampled_from([1.0, 10.0, 100.0]))
def test_kernel_of_identical_tokens_never_exceeds_one(seed, scale):
  # ||a||^2 + ||a||^2 - 2 a.a rounds to +-eps ||a||^2; about half of these
  # draws round negative, where an unclamped kernel exceeds 1.
  x = _identical_tokens(seed, scale)
  gram = np.asarray(_kernel(x, x))
  assert np.all(gram <= 1)
  # Each of the three dot products rounds by <= dim eps ||x||^2, so the
  # distance by <= 4 dim eps ||x||^2 and the kernel by half that.
  sq_norm = np.sum(np.float64(x) ** 2, axis=-1).max()
  eps = np.finfo(np.float32).eps
  assert np.all(1 - gram <= 2 * x.shape[-1] * eps * sq_norm)


def test_kernel_of_identical_far_tokens_is_exactly_one():
  x = _identical_tokens(seed=2, scale=100.0)
  np.testing.assert_array_equal(_kernel(x, x), 1.0)


@_settings
@hypothesis.given(
    seed=seeds, length=st.sampled_from([1, 16]), dim=st.sampled_from([2, 8]),
)
def test_exact_attention_matches_definition(seed, length, dim):
  rng = np.random.default_rng(seed)
  q = _normal(rng, (2, length, 3, dim))
  v = _normal(rng, (2, length, 3, 3))
  s = _reference_kernel(q, q) ** (dim**-0.5)  # exp(-||q_i - q_j||^2 / 2 sqrt d)
  want = np.einsum("bhqk,bkhd->bqhd", s, v)
  np.testing.assert_allclose(_exact(q, v), want, rtol=1e-5, atol=1e-5)


@_settings
@hypothesis.given(
    seed=seeds, dim=st.sampled_from([4, 8]),
)
def test_all_tokens_as_landmarks_is_exact(seed, dim):
  # Tokens of scale 1.5 keep kappa(S) below ~200 (measured max 184), which 30
  # float32 steps invert; max error measured 1.3e-5, float32 rounding
  # amplified by kappa.
  rng = np.random.default_rng(seed)
  q = _normal(rng, (2, 16, 3, dim), 1.5)
  v = _normal(rng, (2, 16, 3, 3))
  np.testing.assert_allclose(
      _soft(q, v, q, num_iterations=30), _exact(q, v), rtol=1e-4, atol=1e-4
  )


def _smooth_tokens(rng, grid, heads, dim, noise=0.1):
  """A bilinearly upsampled 3 x 3 random field plus white noise."""
  coarse = rng.standard_normal((3, 3, heads, dim))
  field = jax.image.resize(coarse, grid + (heads, dim), "linear")
  tokens = np.asarray(field) + noise * rng.standard_normal(field.shape)
  return tokens.reshape((-1, heads, dim)).astype(np.float32)


@functools.partial(jax.jit, static_argnames=("grid", "reduction"))
def _pooled_soft(q, v, *, grid, reduction):
  landmarks = soft.average_pool_landmarks(q, grid=grid, reduction=reduction)
  return soft.soft_attention(q, v, landmarks)


def test_approximation_error_falls_as_landmarks_grow():
  """Mean relative error over 6 seeds, 8 x 8 grid, n = 4, 16, 64 landmarks.

  Measured: 0.23, 0.034, 0.0014 (the last not 0 because kappa(S) of smooth
  tokens exceeds what 20 float32 steps invert).
  """
  grid, reductions = (8, 8), (4, 2, 1)
  errors = np.zeros((6, len(reductions)))
  for seed in range(errors.shape[0]):
    rng = np.random.default_rng(seed)
    q = _smooth_tokens(rng, grid, heads=2, dim=8)
    v = _normal(rng, (q.shape[0], 2, 4))
    want = np.float64(_exact(q, v))
    for i, reduction in enumerate(reductions):
      errors[seed, i] = _relative_error(
          _pooled_soft(q, v, grid=grid, reduction=reduction), want
      )
  mean = errors.mean(axis=0)
  # Strictly decreasing, each step at least halving the error.
  assert np.all(mean[1:] < 0.5 * mean[:-1]), mean


def _tokens(kind, rng, length=12, heads=2, dim=4):
  shape = (2, length, heads, dim)
  if kind == "random":
    return _normal(rng, shape)
  if kind == "spread":  # kernel entries underflow: A = I, P nearly 0
    return _normal(rng, shape, 30.0)
  if kind == "pairs":
    return np.repeat(_normal(rng, (2, length // 2, heads, dim)), 2, axis=1)
  if kind == "identical":
    return np.repeat(_normal(rng, (2, 1, heads, dim), 10.0), length, axis=1)
  return np.zeros(shape, np.float32)


TOKEN_KINDS = ["random", "spread", "pairs", "identical", "zeros"]


@functools.partial(jax.jit, static_argnames=("ridge", "normalization"))
def _segment_soft(q, v, ridge, normalization):
  # 4 landmarks of 12 tokens: duplicated tokens give duplicated landmarks,
  # so A is singular.
  landmarks = soft.segment_mean_landmarks(q, num_landmarks=4)
  return soft.soft_attention(
      q, v, landmarks, ridge=ridge, normalization=normalization
  )


@functools.partial(jax.jit, static_argnames=("ridge", "normalization"))
def _segment_soft_gradients(q, v, ridge, normalization):
  def loss(q, v):
    out = _segment_soft(q, v, ridge, normalization)
    return jnp.sum(out.astype(jnp.float32) ** 2)

  return jax.grad(loss, argnums=(0, 1))(q, v)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("ridge", [0.0, soft.STABLE_RIDGE])
@pytest.mark.parametrize("normalization", soft.NORMALIZATIONS)
@pytest.mark.parametrize("kind", TOKEN_KINDS)
def test_outputs_finite_in_input_dtype(kind, normalization, ridge, dtype):
  rng = np.random.default_rng(0)
  q = jnp.asarray(_tokens(kind, rng), dtype)
  v = jnp.asarray(_normal(rng, (2, 12, 2, 3)), dtype)
  out = _segment_soft(q, v, ridge, normalization)
  chex.assert_shape(out, v.shape)
  chex.assert_type(out, dtype)
  chex.assert_tree_all_finite(out)


@pytest.mark.parametrize("ridge", [0.0, soft.STABLE_RIDGE])
@pytest.mark.parametrize("normalization", soft.NORMALIZATIONS)
@pytest.mark.parametrize("kind", TOKEN_KINDS)
def test_gradients_finite(kind, normalization, ridge):
  # The landmarks are computed from q inside the loss, so the gradient also
  # flows through A's pseudo-inverse and the landmark means.
  rng = np.random.default_rng(1)
  q, v = _tokens(kind, rng), _normal(rng, (2, 12, 2, 3))
  grads = _segment_soft_gradients(q, v, ridge, normalization)
  chex.assert_trees_all_equal_shapes_and_dtypes(grads, (q, v))
  chex.assert_tree_all_finite(grads)


@_settings
@hypothesis.given(seed=seeds, scale=st.sampled_from([0.0, 0.3, 1.0]))
def test_identical_tokens_are_exact_through_a_singular_a(seed, scale):
  # S = 1 1^T has rank one; P = 1 1^T, A^+ = 1 1^T / n^2, so P A^+ P^T = S
  # exactly, although A = 1 1^T is singular. Tokens of norm <= ~5: farther
  # ones lose digits to the distance expansion (1e-4 of S at norm ~30).
  rng = np.random.default_rng(seed)
  q = np.repeat(_normal(rng, (2, 1, 2, 4), scale), 12, axis=1)
  v = _normal(rng, (2, 12, 2, 3))
  np.testing.assert_allclose(
      _segment_soft(q, v, 0.0, None), _exact(q, v), rtol=1e-5, atol=1e-5
  )


def _nystrom_inputs(seed, length, num_landmarks, duplicate):
  # Tokens and landmarks of scale 1.5 keep kappa(A) below ~100 (measured
  # max 97), which 20 steps invert; a duplicated landmark makes A singular.
  rng = np.random.default_rng(seed)
  q = _normal(rng, (2, length, 2, 4), 1.5)
  v = _normal(rng, (2, length, 2, 3))
  landmarks = _normal(rng, (2, num_landmarks, 2, 4), 1.5)
  if duplicate:
    landmarks = np.concatenate([landmarks, landmarks[:, :1]], axis=1)
  return q, v, landmarks


@_settings
@hypothesis.given(
    seed=seeds, num_landmarks=st.sampled_from([1, 4]),
    duplicate=st.booleans(),
    normalization=st.sampled_from(soft.NORMALIZATIONS),
)
def test_matches_explicit_nystrom_with_pinv(
    seed, num_landmarks, duplicate, normalization
):
  # Measured max error 1.3e-6 of max |out| (float32).
  q, v, landmarks = _nystrom_inputs(seed, 12, num_landmarks, duplicate)
  got = _soft(q, v, landmarks, normalization=normalization)
  want = _reference_soft(q, v, landmarks, normalization)
  np.testing.assert_allclose(
      got, want, rtol=0, atol=1e-5 * np.abs(want).max()
  )


class SoftVariantsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_soft_attention_matches_explicit_nystrom(self):
    q, v, landmarks = _nystrom_inputs(3, 16, 4, duplicate=False)
    for normalization in soft.NORMALIZATIONS:
      fn = self.variant(functools.partial(
          soft.soft_attention, normalization=normalization
      ))
      got = fn(q, v, landmarks)
      chex.assert_shape(got, v.shape)
      chex.assert_type(got, jnp.float32)
      want = _reference_soft(q, v, landmarks, normalization)
      np.testing.assert_allclose(
          got, want, rtol=0, atol=1e-5 * np.abs(want).max()
      )

  @chex.variants(with_jit=True, without_jit=True)
  def test_landmarks_are_block_and_segment_means(self):
    rng = np.random.default_rng(4)
    q = _normal(rng, (2, 24, 3, 4))  # a 4 x 6 grid
    pool = self.variant(functools.partial(
        soft.average_pool_landmarks, grid=(4, 6), reduction=2
    ))
    blocks = q.reshape(2, 2, 2, 3, 2, 3, 4).mean(axis=(2, 4))
    np.testing.assert_allclose(
        pool(q), blocks.reshape(2, 6, 3, 4), rtol=1e-6, atol=1e-6
    )
    segments = self.variant(functools.partial(
        soft.segment_mean_landmarks, num_landmarks=5
    ))
    bounds = [0, 5, 10, 15, 20, 24]  # token i in segment floor(5 i / 24)
    means = np.stack(
        [q[:, lo:hi].mean(axis=1) for lo, hi in zip(bounds, bounds[1:])],
        axis=1,
    )
    np.testing.assert_allclose(segments(q), means, rtol=1e-6, atol=1e-6)


def test_landmarks_of_an_empty_batch_are_empty():
  # An empty shard: the landmark count must not be inferred from 0 elements.
  q = jnp.ones((0, 16, 2, 4))
  pooled = soft.average_pool_landmarks(q, grid=(4, 4), reduction=2)
  assert pooled.shape == (0, 4, 2, 4)
  assert soft.segment_mean_landmarks(q, num_landmarks=3).shape == (0, 3, 2, 4)


@pytest.mark.parametrize(
    "name, normalization", [("soft", None), ("soft_norm", "symmetric")]
)
def test_registered_soft_is_bidirectional_with_stable_ridge(
    name, normalization
):
  spec = kattn.flax.get_attention(name)
  assert spec.ties_keys_to_queries
  # Spread-out tokens keep A well conditioned: with 49 landmarks of O(1)
  # tokens, A + 0.01 I reaches kappa ~ 1e3 - 1e4, which 20 steps do not
  # invert, and two compilations of the same math then differ by ~1e-4.
  rng = np.random.default_rng(5)
  q, v = _normal(rng, (2, 60, 2, 4), 3.0), _normal(rng, (2, 60, 2, 3))
  with pytest.raises(ValueError, match="bidirectional.*causal=True"):
    spec.fn(q, q, v, projection=None, causal=True)
  attend = jax.jit(lambda q, v: spec.fn(q, q, v, projection=None, causal=False))
  landmarks = soft.segment_mean_landmarks(
      q, num_landmarks=soft.DEFAULT_NUM_LANDMARKS
  )
  want = _soft(
      q, v, landmarks, ridge=soft.STABLE_RIDGE, normalization=normalization
  )
  # float32 rounding of two compilations of the same math.
  np.testing.assert_allclose(attend(q, v), want, rtol=1e-5, atol=1e-5)


def test_multi_head_self_attention_ties_keys_to_queries():
  x = jnp.asarray(_normal(np.random.default_rng(6), (2, 10, 8)))
  layer = kattn.flax.MultiHeadSelfAttention(num_heads=2, attention="soft")
  variables = jax.jit(layer.init)(jax.random.key(0), x)
  assert sorted(variables) == ["params"]
  assert sorted(variables["params"]) == ["out", "query", "value"]
  out = jax.jit(layer.apply)(variables, x)
  chex.assert_shape(out, x.shape)
  chex.assert_tree_all_finite(out)
  softmax = kattn.flax.MultiHeadSelfAttention(num_heads=2, attention="softmax")
  assert "key" in jax.jit(softmax.init)(jax.random.key(0), x)["params"]


_Q = np.zeros((2, 36, 2, 4), np.float32)


@pytest.mark.parametrize(
    "call, match",
    [
        pytest.param(
            lambda: soft.gaussian_kernel(jnp.ones((4, 2)), _Q),
            r"`a` must have rank >= 3 with layout \[\*batch, n, heads, dim\];"
            r" got shape \(4, 2\)",
            id="rank-2 a of gaussian_kernel",
        ),
        pytest.param(
            lambda: soft.gaussian_kernel(_Q, jnp.ones((4, 2))),
            r"`b` must have rank >= 3 with layout \[\*batch, m, heads, dim\];"
            r" got shape \(4, 2\)",
            id="rank-2 b of gaussian_kernel",
        ),
        pytest.param(
            lambda: soft.newton_schulz_pinv(jnp.ones((3, 4))),
            r"`a` must be square .*\(3, 4\)",
            id="non-square a",
        ),
        pytest.param(
            lambda: soft.newton_schulz_pinv(jnp.ones(3)),
            r"`a` must have rank >= 2",
            id="rank-1 a",
        ),
        pytest.param(
            lambda: soft.newton_schulz_pinv(jnp.ones((2, 2), jnp.int32)),
            r"`a` must have a floating dtype; got int32",
            id="integer a",
        ),
        pytest.param(
            lambda: soft.newton_schulz_pinv(jnp.eye(2), ridge=-0.1),
            r"`ridge` must be >= 0; got -0.1",
            id="negative ridge",
        ),
        pytest.param(
            lambda: soft.newton_schulz_pinv(jnp.eye(2), num_iterations=-1),
            r"`num_iterations` must be a non-negative int; got -1",
            id="negative num_iterations",
        ),
        pytest.param(
            lambda: soft.newton_schulz_pinv(jnp.eye(2), num_iterations=2.0),
            r"`num_iterations` must be a non-negative int; got 2.0",
            id="float num_iterations",
        ),
        pytest.param(
            lambda: soft.soft_attention(_Q, _Q, _Q[:, :4], normalization="row"),
            r"`normalization` must be one of .*; got 'row'",
            id="bad normalization",
        ),
        pytest.param(
            lambda: soft.soft_attention(_Q, _Q, _Q[:, :4, :1]),
            r"`landmarks` must be .*; got \(2, 4, 1, 4\)",
            id="landmarks heads",
        ),
        pytest.param(
            lambda: soft.soft_attention(_Q, _Q, _Q[:, :4, :, :3]),
            r"`landmarks` must be .*; got \(2, 4, 2, 3\)",
            id="landmarks dim",
        ),
        pytest.param(
            lambda: soft.soft_attention(_Q, _Q, _Q[:1, :4]),
            r"with the batch, heads and dim of q \(2, 36, 2, 4\); got"
            r" \(1, 4, 2, 4\)",
            id="landmarks batch",
        ),
        pytest.param(
            lambda: soft.average_pool_landmarks(_Q, grid=(6, 6), reduction=4),
            r"`reduction` \(4\) must divide the grid \(6, 6\)",
            id="reduction not dividing grid",
        ),
        pytest.param(
            lambda: soft.average_pool_landmarks(_Q, grid=(6, 6), reduction=0),
            r"`reduction` must be a positive integer; got 0",
            id="zero reduction",
        ),
        pytest.param(
            lambda: soft.average_pool_landmarks(_Q, grid=(4, 4), reduction=2),
            r"`grid` \(4, 4\) holds 16 tokens, but the token axis has"
            r" length 36",
            id="grid not matching L",
        ),
        pytest.param(
            lambda: soft.segment_mean_landmarks(_Q, num_landmarks=37),
            r"`num_landmarks` \(37\) must be at most the number of tokens"
            r" \(36\)",
            id="num_landmarks above L",
        ),
        pytest.param(
            lambda: soft.segment_mean_landmarks(_Q, num_landmarks=0),
            r"`num_landmarks` must be a positive integer; got 0",
            id="zero num_landmarks",
        ),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(call, match):
  with pytest.raises(ValueError, match=match):
    call()
