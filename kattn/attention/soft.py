r"""SOFT: softmax-free attention with a Gaussian kernel, in low rank.

Queries double as keys (Q = K, one projection), scaled by d^{-1/4}, so the
attention matrix is the Gaussian kernel

  S_ij = exp(-||q_i - q_j||^2 / 2),  q = x W_q / d^{1/4},

symmetric positive semi-definite with a unit diagonal, and not row-normalised:
out = S V. SOFT approximates S by Nystrom from n bottleneck tokens
(landmarks) q~: with P = k(Q, Q~) `[L, n]` and A = k(Q~, Q~) `[n, n]`,

  S ~= P A^+ P^T,   out = P (A^+ (P^T V)),

in O(L n d + n^3) time and O(L n) memory: the `[L, L]` matrix is never formed.
A^+ is the Moore-Penrose pseudo-inverse by Newton-Schulz iteration
(`newton_schulz_pinv`), whose backward pass applies the inverse's gradient
once instead of differentiating the loop.

Two safeguards, both choices of this library and both documented where they
act: squared distances are clamped at 0 (cancellation in
||a||^2 + ||b||^2 - 2 a.b can make them slightly negative, and the kernel
then exceeds 1), and the Newton-Schulz start is per matrix, scaled by its own
row-sum norm (a batch-wide norm, as in the normalised variant's code, slows
convergence for every matrix but the largest).

The stable variant for ill-conditioned A adds a ridge before inverting:
landmarks that cluster early in training make A nearly singular, and its
condition number then exceeds what 20 iterations can invert. The reference's
first release adds 0.01 I; but ||A|| grows up to n (49 landmarks: measured
||A||_1 of 19 to 44), so that leaves condition numbers of 10^3 and more,
which 20 steps do not invert (relative error 0.6 to 0.9), and the
unconverged iterate acts as an uncontrolled spectral filter. `soft_attention`
scales its ridge by the matrix: A + ridge ||A||_1 I, whose condition number
is at most (1 + ridge) / ridge, 101 for the default 0.01, which 20 steps
invert to float32 rounding. `ridge=0` gives the plain pseudo-inverse.

References:
  Lu et al., "SOFT: Softmax-free Transformer with Linear Complexity",
  NeurIPS 2021. Lu et al., "Softmax-free Linear Transformers", IJCV 2024
  (the symmetric normalisation).
"""

from __future__ import annotations

import functools
from typing import Literal, Optional

import jax
import jax.numpy as jnp

from kattn import _validation
from kattn.positional import grid as grid_lib

NORMALIZATIONS = (None, "symmetric")
DEFAULT_NUM_ITERATIONS = 20
# The reference's bottleneck size at 224 x 224 (a 7 x 7 grid of landmarks).
DEFAULT_NUM_LANDMARKS = 49
# The stable variant's ridge, relative to ||A||_1 (the reference adds an
# absolute 0.01 I).
STABLE_RIDGE = 0.01
# The reference's first release: Newton-Schulz starts from 0.9 of the largest
# safe step, 2 / ||A||_1^2.
_INIT_SAFETY = 0.9


def gaussian_kernel(a: jax.Array, b: jax.Array) -> jax.Array:
  """k(a_i, b_j) = exp(-||a_i - b_j||^2 / 2), the distances clamped at 0.

  Both inputs are first shifted by b's mean over its tokens, which changes no
  distance but keeps their float32 computation accurate.

  Args:
    a: `[*batch, n, heads, dim]`.
    b: `[*batch, m, heads, dim]`.

  Returns:
    `[*batch, heads, n, m]` kernel values in (0, 1].

  Examples:
    >>> import jax.numpy as jnp
    >>> x = jnp.array([[[0.0, 0.0]], [[1.0, 1.0]]])  # 2 tokens, 1 head
    >>> gaussian_kernel(x, x)[0]
    Array([[1.        , 0.36787...],
           [0.36787..., 1.        ]], dtype=float32)
  """
  _validation.check_min_rank("a", a, 3, "[*batch, n, heads, dim]")
  _validation.check_min_rank("b", b, 3, "[*batch, m, heads, dim]")
  # The kernel is invariant to a common shift; centring on b's mean keeps
  # ||a||^2 + ||b||^2 - 2 a.b from cancelling catastrophically for tokens
  # far from the origin (identical tokens then give exactly 1).
  centre = jax.lax.stop_gradient(jnp.mean(b, axis=-3, keepdims=True))
  a, b = a - centre, b - centre
  sq_a = jnp.swapaxes(jnp.sum(a * a, axis=-1), -1, -2)[..., :, None]
  sq_b = jnp.swapaxes(jnp.sum(b * b, axis=-1), -1, -2)[..., None, :]
  cross = jnp.einsum("...nhd,...mhd->...hnm", a, b)
  return jnp.exp(-0.5 * jnp.maximum(sq_a + sq_b - 2 * cross, 0.0))


def _check_square(name, a) -> None:
  _validation.check_min_rank(name, a, 2, "[..., n, n]")
  if a.shape[-1] != a.shape[-2]:
    raise ValueError(
        f"`{name}` must be square over its last two axes [..., n, n]; got"
        f" shape {tuple(a.shape)}."
    )


def _newton_schulz(a, num_iterations):
  # ||A||_2 <= sqrt(||A||_1 ||A||_inf); for symmetric A both are the max
  # absolute row sum, so alpha = 2 / (||A||_1 ||A||_inf) < 2 / sigma_max^2,
  # the condition for convergence, for any A.
  norm_1 = jnp.max(jnp.sum(jnp.abs(a), axis=-2), axis=-1)
  norm_inf = jnp.max(jnp.sum(jnp.abs(a), axis=-1), axis=-1)
  scale = 2 * _INIT_SAFETY / jnp.maximum(norm_1 * norm_inf, 1e-30)
  v = scale[..., None, None] * jnp.swapaxes(a, -1, -2)
  step = lambda _, v: 2 * v - v @ a @ v
  return jax.lax.fori_loop(0, num_iterations, step, v)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _pinv(a, num_iterations):
  return _newton_schulz(a, num_iterations)


def _pinv_fwd(a, num_iterations):
  v = _newton_schulz(a, num_iterations)
  return v, v


def _pinv_bwd(num_iterations, v, g):
  del num_iterations
  vt = jnp.swapaxes(v, -1, -2)
  # d(A^-1) = -A^-1 dA A^-1, so dL/dA = -V^T G V^T: the inverse's gradient,
  # exact where the iteration has converged to an inverse.
  return (-(vt @ g @ vt),)


_pinv.defvjp(_pinv_fwd, _pinv_bwd)


def newton_schulz_pinv(
    a: jax.Array,
    *,
    num_iterations: int = DEFAULT_NUM_ITERATIONS,
    ridge: float = 0.0,
) -> jax.Array:
  """Moore-Penrose pseudo-inverse by Newton-Schulz iteration, batched.

  V_0 = alpha A^T with alpha = 1.8 / (||A||_1 ||A||_inf) per matrix (the
  reference's 0.9 of the largest safe step), then V <- 2 V - V A V. The
  iteration converges quadratically to A^+ once ||I - A V|| < 1; it needs
  about log2(||A||_1^2 / lambda_min^2) + 5 steps, so the default 20 suffice
  up to a condition number of about 10^2 (see the tests for the measured
  limit). The backward pass is the exact inverse's, -V^T G V^T, applied once.

  Args:
    a: `[..., n, n]` matrices (symmetric positive semi-definite in SOFT).
    num_iterations: Newton-Schulz steps; the reference uses 20.
    ridge: added to the diagonal first (A + ridge I), bounding the condition
      number of nearly singular A; 0 gives the plain pseudo-inverse.

  Returns:
    `[..., n, n]` approximate pseudo-inverses, in a's dtype.

  Examples:
    >>> import jax.numpy as jnp
    >>> a = jnp.array([[2.0, 1.0], [1.0, 2.0]])
    >>> bool(jnp.allclose(newton_schulz_pinv(a), jnp.linalg.inv(a), atol=1e-5))
    True
  """
  _check_square("a", a)
  _validation.check_floating("a", a)
  if isinstance(num_iterations, bool) or not isinstance(num_iterations, int) \
      or num_iterations < 0:
    raise ValueError(
        f"`num_iterations` must be a non-negative int; got {num_iterations!r}."
    )
  if not ridge >= 0:
    raise ValueError(f"`ridge` must be >= 0; got {ridge!r}.")
  if ridge:
    a = a + ridge * jnp.eye(a.shape[-1], dtype=a.dtype)
  return _pinv(a, num_iterations)


def _scaled(q):
  return q * q.shape[-1] ** -0.25


def gaussian_kernel_attention(q: jax.Array, v: jax.Array) -> jax.Array:
  """Exact softmax-free attention S V with S = exp(-||q_i - q_j||^2 / (2 sqrt d)).

  The quadratic reference of SOFT: keys are the queries, and S is not
  row-normalised.

  Args:
    q: `[*batch, L, heads, dim]` queries (= keys).
    v: `[*batch, L, heads, v_dim]` values.

  Returns:
    `[*batch, L, heads, v_dim]` outputs, in v's dtype.

  Examples:
    >>> import jax.numpy as jnp
    >>> q = jnp.zeros((3, 1, 4))  # identical tokens: S is all ones
    >>> v = jnp.arange(3.0).reshape(3, 1, 1)
    >>> gaussian_kernel_attention(q, v)[:, 0, 0].tolist()
    [3.0, 3.0, 3.0]
  """
  _validation.check_attention_inputs(q, q, v)
  q32 = _scaled(q.astype(jnp.float32))
  kernel = gaussian_kernel(q32, q32)
  out = jnp.einsum("...hqk,...khd->...qhd", kernel, v.astype(jnp.float32))
  return out.astype(v.dtype)


def average_pool_landmarks(q: jax.Array, *, grid, reduction: int) -> jax.Array:
  """Bottleneck tokens: the mean of each `reduction x reduction` patch block.

  The parameter-free form of SOFT's spatial reduction (the reference uses a
  learned strided convolution, `kattn.flax.SoftSelfAttention`).

  Args:
    q: `[*batch, L, heads, dim]` tokens, row-major on `grid`.
    grid: `(height, width)`, both divisible by `reduction`.
    reduction: s; n = (height / s) (width / s) landmarks.

  Returns:
    `[*batch, n, heads, dim]` landmarks, row-major on the reduced grid.

  Examples:
    >>> import jax.numpy as jnp
    >>> q = jnp.arange(16.0).reshape(16, 1, 1)
    >>> average_pool_landmarks(q, grid=(4, 4), reduction=2)[:, 0, 0].tolist()
    [2.5, 4.5, 10.5, 12.5]
  """
  height, width = grid_lib.check_grid(grid, jnp.shape(q)[-3])
  _validation.check_positive_int("reduction", reduction)
  if height % reduction or width % reduction:
    raise ValueError(
        f"`reduction` ({reduction}) must divide the grid {(height, width)}."
    )
  batch, rest = q.shape[:-3], q.shape[-2:]
  blocks = q.reshape(
      batch + (height // reduction, reduction, width // reduction, reduction)
      + rest
  )
  n = len(batch)
  pooled = jnp.mean(blocks, axis=(n + 1, n + 3))
  # Not -1: reshape cannot infer it for a batch of 0.
  return pooled.reshape(batch + (pooled.shape[n] * pooled.shape[n + 1],) + rest)


def segment_mean_landmarks(q: jax.Array, *, num_landmarks: int) -> jax.Array:
  """Bottleneck tokens: means of `num_landmarks` contiguous token segments.

  Token i belongs to segment floor(i n / L), so segments differ in length by
  at most one and any L >= n works (a class token included). For tokens
  without a grid, as in `kattn.flax.MultiHeadSelfAttention`; on a grid,
  `average_pool_landmarks` keeps landmarks local in 2-D.

  Args:
    q: `[*batch, L, heads, dim]` tokens.
    num_landmarks: n, with 1 <= n <= L.

  Returns:
    `[*batch, n, heads, dim]` landmarks.

  Examples:
    >>> import jax.numpy as jnp
    >>> q = jnp.arange(5.0).reshape(5, 1, 1)
    >>> segment_mean_landmarks(q, num_landmarks=2)[:, 0, 0].tolist()
    [1.0, 3.5]
  """
  _validation.check_min_rank("q", q, 3, "[*batch, length, heads, dim]")
  length = q.shape[-3]
  _validation.check_positive_int("num_landmarks", num_landmarks)
  if num_landmarks > length:
    raise ValueError(
        f"`num_landmarks` ({num_landmarks}) must be at most the number of"
        f" tokens ({length})."
    )
  segment = (jnp.arange(length) * num_landmarks) // length
  assign = jax.nn.one_hot(segment, num_landmarks, dtype=q.dtype)  # [L, n]
  counts = jnp.sum(assign, axis=0)[:, None, None]
  return jnp.einsum("ln,...lhd->...nhd", assign, q) / counts


def _check_normalization(normalization) -> None:
  if normalization not in NORMALIZATIONS:
    raise ValueError(
        f"`normalization` must be one of {NORMALIZATIONS}; got"
        f" {normalization!r}."
    )


def soft_attention(
    q: jax.Array,
    v: jax.Array,
    landmarks: jax.Array,
    *,
    num_iterations: int = DEFAULT_NUM_ITERATIONS,
    ridge: float = 0.0,
    normalization: Optional[Literal["symmetric"]] = None,
    accum_dtype=jnp.float32,
) -> jax.Array:
  """SOFT low-rank attention P A^+ P^T V, in O(L n) memory.

  P = k(q, q~), A = k(q~, q~) with the Gaussian kernel of
  `gaussian_kernel_attention` (queries and landmarks both scaled by
  d^{-1/4}). With `normalization="symmetric"` (the IJCV version), A^+ is
  replaced by D^{-1/2} A^+ D^{-1/2}, D = diag(A 1) the landmark kernel's row
  sums, which keeps the output's scale independent of how many tokens sit
  near a landmark. Kernels and the inverse are computed in `accum_dtype`.

  Args:
    q: `[*batch, L, heads, dim]` queries (= keys).
    v: `[*batch, L, heads, v_dim]` values.
    landmarks: `[*batch, n, heads, dim]` bottleneck tokens, unscaled like q,
      e.g. `average_pool_landmarks(q, grid=grid, reduction=s)`; with all L
      tokens as landmarks the result is exact `gaussian_kernel_attention`.
    num_iterations: Newton-Schulz steps.
    ridge: relative ridge: A + ridge ||A||_1 I is inverted, which bounds the
      condition number by (1 + ridge) / ridge (0: plain pseudo-inverse;
      `STABLE_RIDGE` = 0.01 keeps it within what 20 steps invert).
    normalization: None or `"symmetric"`.
    accum_dtype: dtype of kernels, inverse and sums.

  Returns:
    `[*batch, L, heads, v_dim]` outputs, in v's dtype.

  Examples:
    >>> import jax
    >>> q = jax.random.normal(jax.random.key(0), (64, 2, 8))
    >>> landmarks = average_pool_landmarks(q, grid=(8, 8), reduction=2)
    >>> soft_attention(q, q, landmarks).shape
    (64, 2, 8)
  """
  _validation.check_attention_inputs(q, q, v)
  _validation.check_attention_inputs(landmarks, landmarks, landmarks,
                                     q_name="landmarks", k_name="landmarks")
  if (landmarks.shape[:-3] != q.shape[:-3]
      or landmarks.shape[-2:] != q.shape[-2:]):
    raise ValueError(
        "`landmarks` must be [*batch, n, heads, dim] with the batch, heads"
        f" and dim of q {tuple(q.shape)}; got {tuple(landmarks.shape)}."
    )
  _check_normalization(normalization)
  q_s = _scaled(q.astype(accum_dtype))
  l_s = _scaled(landmarks.astype(accum_dtype))
  p = gaussian_kernel(q_s, l_s)                     # [*b, h, L, n]
  a = gaussian_kernel(l_s, l_s)                     # [*b, h, n, n]
  if not ridge >= 0:
    raise ValueError(f"`ridge` must be >= 0; got {ridge!r}.")
  # A is entrywise positive, so its 1-norm is its largest row sum.
  shift = ridge * jnp.max(jnp.sum(a, axis=-1), axis=-1)
  regularised = a + shift[..., None, None] * jnp.eye(a.shape[-1], dtype=a.dtype)
  inverse = newton_schulz_pinv(regularised, num_iterations=num_iterations)
  if normalization == "symmetric":
    d = jax.lax.rsqrt(jnp.sum(a, axis=-1))
    inverse = d[..., :, None] * inverse * d[..., None, :]
  summary = jnp.einsum("...hln,...lhd->...hnd", p, v.astype(accum_dtype))
  out = jnp.einsum("...hln,...hnd->...lhd", p, inverse @ summary)
  return out.astype(v.dtype)
