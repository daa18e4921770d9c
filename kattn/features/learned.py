"""Learned spectral random features: the kernel is learned through its spectrum.

By Bochner's theorem a stationary kernel k(x - y) is the Fourier transform of
a spectral density p(omega). Making p trainable, with samples drawn by
reparameterisation (omega = g_theta(noise) for fixed noise), learns the
attention kernel by gradient descent. Each distribution comes with two
estimators:

* RKS (random kitchen sinks, `random_fourier_features`):
  phi(x) = [sqrt(w_r) cos(omega_r^T x), sqrt(w_r) sin(omega_r^T x), s], so
  phi(x)^T phi(y) = sum_r w_r cos(omega_r^T (x - y)) + s^2, an unbiased
  estimate of Re E[exp(i omega^T (x - y))] + s^2 (the characteristic function
  of p, shifted by the smoothing constant s^2, which keeps every estimate
  >= s^2 - 1 and so, at the default s = 1, every attention weight >= 0).
* PRF (positive random features, `positive_random_features`):
  phi(x)_r = sqrt(w_r) exp(omega_r^T x - |x|^2), so
  E[phi(x)^T phi(y)] = E[exp(omega^T (x + y))] exp(-|x|^2 - |y|^2), the moment
  generating function of p at x + y. For omega ~ N(0, I) this is the Gaussian
  kernel exp(-|x - y|^2 / 2).

The three distributions:

* GMM: a Gaussian mixture per head. RKS takes full covariance factors
  (omega = mu_c + eps A_c); PRF takes diagonal log-variances
  (omega = mu_c + eps * exp(sigma_c / 2)). The noise rows are split evenly
  between components, and each component's features carry weight
  pi_c / n_c, so the estimator stays unbiased for the mixture and
  differentiable in the mixture weights.
* FastFood: rows of V = D^{-1/2} S H G P H B (padded width D, a power of two),
  with learned diagonals S, G, B, the Walsh-Hadamard matrix H applied in
  O(D log D) per token, and a random permutation P as the noise, one block
  of D rows per permutation. Features need no [m, d] matrix at all.
* Generative: omega = eps A + b + gelu(eps W_1 + c_1) W_2, an MLP that
  pushes Gaussian noise to frequencies, with a linear skip so that it starts
  near N(b, A^T A) = N(0, I).

Noise is an explicit array (drawn by `gaussian_random_projection` or
`random_permutations`), never drawn inside: it stays fixed between redraws,
so evaluation is deterministic, and gradients flow to the distribution
parameters through fixed noise.

Compared with the reference implementation (Chowdhury et al.), this module:
builds FastFood-PRF (the reference's constructor raises TypeError); keeps
every requested PRF feature (the reference's generator keeps 127 of 128);
never redraws noise at evaluation (the reference does by default); has no
BatchNorm in the generator (which made each frequency depend on the other
draws); and rejects a feature count FastFood cannot honour instead of
truncating it.

References:
  Chowdhury, Solomou, Dubey, Sachan, "Learning the Transformer Kernel",
  TMLR 2022.
  Le, Sarlos, Smola, "Fastfood: Approximating Kernel Expansions in
  Loglinear Time", ICML 2013.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Union

import jax
import jax.numpy as jnp

from kattn import _validation
from kattn.features import favor

Params = dict[str, jax.Array]
Features = Union[jax.Array, favor.ScaledFeatures]

DEFAULT_SMOOTHING = 1.0
# Mixture components of the registered GMM kernels.
GMM_COMPONENTS = 2


# --- Walsh-Hadamard ---------------------------------------------------------


def _check_power_of_two(name: str, value: int) -> None:
  if value < 1 or value & (value - 1):
    raise ValueError(
        f"`{name}` must be a power of two for the Walsh-Hadamard transform;"
        f" got {value}. Pad the inputs to {padded_dim(max(value, 1))} (as"
        " `fastfood_projections` does)."
    )


def padded_dim(dim: int) -> int:
  """The smallest power of two >= `dim`: FastFood's working width.

  Examples:
    >>> padded_dim(24), padded_dim(32)
    (32, 32)
  """
  _validation.check_positive_int("dim", dim)
  return 1 << (dim - 1).bit_length()


def fast_walsh_hadamard_transform(x: jax.Array) -> jax.Array:
  """x H along the last axis, H the unnormalised Sylvester Hadamard matrix.

  H has entries H_ij = (-1)^{popcount(i & j)} and H H^T = D I. The transform
  takes log2(D) butterfly stages, O(D log D) per row, and never forms H.

  Args:
    x: `[..., D]` with D a power of two.

  Returns:
    `[..., D]`, equal to `x @ scipy.linalg.hadamard(D)` (H is symmetric).

  Examples:
    >>> import jax.numpy as jnp
    >>> fast_walsh_hadamard_transform(jnp.array([1.0, 0.0, 0.0, 0.0]))
    Array([1., 1., 1., 1.], dtype=float32)
    >>> fast_walsh_hadamard_transform(jnp.array([0.0, 1.0, 0.0, 0.0]))
    Array([ 1., -1.,  1., -1.], dtype=float32)
  """
  _validation.check_min_rank("x", x, 1, "[..., D]")
  dim = x.shape[-1]
  _check_power_of_two("x.shape[-1]", dim)
  batch = x.shape[:-1]
  half = 1
  while half < dim:
    pairs = x.reshape(batch + (dim // (2 * half), 2, half))
    first, second = pairs[..., 0, :], pairs[..., 1, :]
    x = jnp.stack([first + second, first - second], axis=-2).reshape(
        batch + (dim,)
    )
    half *= 2
  return x


# --- Noise ------------------------------------------------------------------


def random_permutations(
    key: jax.Array, num_blocks: int, dim: int
) -> jax.Array:
  """`num_blocks` independent uniform permutations of `range(dim)`.

  FastFood's noise: one permutation per block of `dim` frequencies.

  Args:
    key: a `jax.random` key.
    num_blocks: number of permutations.
    dim: length of each permutation.

  Returns:
    `[num_blocks, dim]` int32 array, each row a permutation.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> p = random_permutations(jax.random.key(0), 3, 8)
    >>> p.shape, p.dtype, bool(jnp.all(jnp.sort(p, axis=-1) == jnp.arange(8)))
    ((3, 8), dtype('int32'), True)
  """
  _validation.check_positive_int("num_blocks", num_blocks)
  _validation.check_positive_int("dim", dim)
  keys = jax.random.split(key, num_blocks)
  return jax.vmap(lambda k: jax.random.permutation(k, dim))(keys).astype(
      jnp.int32
  )


def fastfood_num_blocks(num_features: int, dim: int) -> int:
  """Permutation blocks for `num_features` FastFood frequencies on `dim` inputs.

  Raises a ValueError unless `num_features` is a multiple of the padded
  width `padded_dim(dim)`: FastFood makes frequencies a whole block at a
  time, and silently dropping part of a block would change the estimator.

  Examples:
    >>> fastfood_num_blocks(128, 24)
    4
  """
  _validation.check_positive_int("num_features", num_features)
  width = padded_dim(dim)
  if num_features % width:
    lower = max(width, num_features - num_features % width)
    raise ValueError(
        f"FastFood makes frequencies in blocks of the padded head dim {width}"
        f" (dim {dim} padded to a power of two): `num_random_features` must"
        f" be a multiple of {width}; got {num_features} (use {lower} or"
        f" {lower + width})."
    )
  return num_features // width


# --- Spectral distributions: parameters and frequencies ---------------------


def _check_noise(noise, dim, what):
  if jnp.ndim(noise) != 2 or jnp.shape(noise)[-1] != dim:
    raise ValueError(
        f"`noise` for {what} must have shape [num_features, {dim}] (the"
        f" parameters' dim); got {tuple(jnp.shape(noise))}."
    )


def init_gmm_rks_params(
    key: jax.Array, dim: int, *, num_components: int = 2
) -> Params:
  """GMM-RKS parameters: means, full covariance factors, mixture logits.

  Component c is N(mu_c, A_c^T A_c). At init A_c = I and mu_c ~ N(0, I/dim),
  so the kernel starts near the Gaussian exp(-|x - y|^2 / 2), modulated by
  cos(mu_c^T (x - y)); distinct means keep the components apart.

  Args:
    key: a `jax.random` key.
    dim: d, the width of the (scaled) queries and keys.
    num_components: C, mixture components.

  Returns:
    `{"means": [C, d], "scale_factors": [C, d, d], "mixture_logits": [C]}`.

  Examples:
    >>> import jax
    >>> p = init_gmm_rks_params(jax.random.key(0), 4)
    >>> {k: v.shape for k, v in p.items()}
    {'means': (2, 4), 'scale_factors': (2, 4, 4), 'mixture_logits': (2,)}
  """
  _validation.check_positive_int("dim", dim)
  _validation.check_positive_int("num_components", num_components)
  return {
      "means": jax.random.normal(key, (num_components, dim)) / math.sqrt(dim),
      "scale_factors": jnp.broadcast_to(
          jnp.eye(dim), (num_components, dim, dim)
      ),
      "mixture_logits": jnp.zeros((num_components,)),
  }


def init_gmm_prf_params(
    key: jax.Array, dim: int, *, num_components: int = 2
) -> Params:
  """GMM-PRF parameters: means, diagonal log-variances, mixture logits.

  Component c is N(mu_c, diag(exp(sigma_c))). At init sigma_c = 0 and
  mu_c ~ N(0, 0.01 I/dim): near the Gaussian kernel, the means small because
  exp(mu^T (x + y)) weights whole tokens.

  Args:
    key: a `jax.random` key.
    dim: d, the width of the (scaled) queries and keys.
    num_components: C, mixture components.

  Returns:
    `{"means": [C, d], "log_variances": [C, d], "mixture_logits": [C]}`.

  Examples:
    >>> import jax
    >>> init_gmm_prf_params(jax.random.key(0), 4)["log_variances"].shape
    (2, 4)
  """
  _validation.check_positive_int("dim", dim)
  _validation.check_positive_int("num_components", num_components)
  return {
      "means": 0.1 * jax.random.normal(key, (num_components, dim))
      / math.sqrt(dim),
      "log_variances": jnp.zeros((num_components, dim)),
      "mixture_logits": jnp.zeros((num_components,)),
  }


def gmm_frequencies(params: Params, noise: jax.Array):
  """Frequencies and log-weights of a Gaussian mixture, by reparameterisation.

  The m noise rows are split into C equal groups, group c giving
  omega = mu_c + eps A_c (full factors) or mu_c + eps * exp(sigma_c / 2)
  (log-variances), each with weight pi_c / (m / C), so that
  sum_r w_r f(omega_r) is unbiased for E_{omega ~ mixture} f(omega).

  Args:
    params: from `init_gmm_rks_params` or `init_gmm_prf_params`.
    noise: `[m, d]` standard normal draws, m a multiple of C.

  Returns:
    `(frequencies [m, d], log_weights [m])`.

  Examples:
    >>> import jax, kattn
    >>> p = init_gmm_rks_params(jax.random.key(0), 4)
    >>> eps = kattn.gaussian_random_projection(jax.random.key(1), 8, 4)
    >>> omega, log_w = gmm_frequencies(p, eps)
    >>> omega.shape, float(jax.numpy.exp(log_w).sum())
    ((8, 4), 1.0)
  """
  means = params["means"]
  components, dim = means.shape
  _check_noise(noise, dim, "a Gaussian mixture")
  num_features = noise.shape[0]
  if num_features % components:
    raise ValueError(
        f"`noise` has {num_features} rows, which do not split evenly between"
        f" the {components} mixture components: `num_random_features` must"
        f" be a multiple of {components}."
    )
  per_component = num_features // components
  eps = noise.astype(means.dtype).reshape(components, per_component, dim)
  if "scale_factors" in params:
    spread = jnp.einsum("cre,ced->crd", eps, params["scale_factors"])
  else:
    spread = eps * jnp.exp(0.5 * params["log_variances"])[:, None, :]
  frequencies = (means[:, None, :] + spread).reshape(num_features, dim)
  log_weights = jax.nn.log_softmax(params["mixture_logits"]) - math.log(
      per_component
  )
  return frequencies, jnp.repeat(log_weights, per_component)


def init_generative_params(
    key: jax.Array, dim: int, *, hidden_dim: int | None = None
) -> Params:
  """Generator parameters: linear skip, one GELU hidden layer, output layer.

  At init the skip is the identity and the output layer is small, so
  frequencies start near N(0, I) (the Gaussian kernel) and the MLP learns
  the departure from it.

  Args:
    key: a `jax.random` key.
    dim: d, both the noise width and the frequency width.
    hidden_dim: width of the hidden layer; default 2 d.

  Returns:
    `{"skip": [d, d], "bias": [d], "hidden_weights": [d, H],
    "hidden_bias": [H], "out_weights": [H, d]}`.

  Examples:
    >>> import jax
    >>> init_generative_params(jax.random.key(0), 4)["out_weights"].shape
    (8, 4)
  """
  _validation.check_positive_int("dim", dim)
  hidden_dim = 2 * dim if hidden_dim is None else hidden_dim
  _validation.check_positive_int("hidden_dim", hidden_dim)
  hidden_key, out_key = jax.random.split(key)
  return {
      "skip": jnp.eye(dim),
      "bias": jnp.zeros((dim,)),
      "hidden_weights": jax.random.normal(hidden_key, (dim, hidden_dim))
      / math.sqrt(dim),
      "hidden_bias": jnp.zeros((hidden_dim,)),
      "out_weights": 0.1 * jax.random.normal(out_key, (hidden_dim, dim))
      / math.sqrt(hidden_dim),
  }


def generative_frequencies(params: Params, noise: jax.Array):
  """omega = eps A + b + gelu(eps W_1 + c_1) W_2, each with weight 1/m.

  Args:
    params: from `init_generative_params`.
    noise: `[m, d]` standard normal draws.

  Returns:
    `(frequencies [m, d], log_weights [m])`.

  Examples:
    >>> import jax, kattn
    >>> p = init_generative_params(jax.random.key(0), 4)
    >>> eps = kattn.gaussian_random_projection(jax.random.key(1), 6, 4)
    >>> generative_frequencies(p, eps)[0].shape
    (6, 4)
  """
  skip = params["skip"]
  _check_noise(noise, skip.shape[0], "the generator")
  eps = noise.astype(skip.dtype)
  hidden = jax.nn.gelu(
      eps @ params["hidden_weights"] + params["hidden_bias"], approximate=False
  )
  frequencies = eps @ skip + params["bias"] + hidden @ params["out_weights"]
  num_features = noise.shape[0]
  return frequencies, jnp.full((num_features,), -math.log(num_features))


def init_fastfood_params(
    key: jax.Array, dim: int, num_features: int
) -> Params:
  """FastFood's learned diagonals S, G, B, one row per block of frequencies.

  Initialised as the classic (unlearned) FastFood: B random signs, G
  standard normal, S = chi_D / |G| per row, so each row of V has the norm of
  a standard Gaussian vector and the kernel starts near the Gaussian one.

  Args:
    key: a `jax.random` key.
    dim: d, the width of the (scaled) queries and keys.
    num_features: m, a multiple of `padded_dim(dim)`.

  Returns:
    `{"signs": [b, D], "gaussian": [b, D], "scales": [b, D]}` with
    D = `padded_dim(dim)` and b = m / D blocks.

  Examples:
    >>> import jax
    >>> init_fastfood_params(jax.random.key(0), 6, 16)["scales"].shape
    (2, 8)
  """
  blocks = fastfood_num_blocks(num_features, dim)
  width = padded_dim(dim)
  sign_key, gaussian_key, norm_key = jax.random.split(key, 3)
  gaussian = jax.random.normal(gaussian_key, (blocks, width))
  chi = jnp.linalg.norm(
      jax.random.normal(norm_key, (blocks, width, width)), axis=-1
  )
  return {
      "signs": jax.random.rademacher(sign_key, (blocks, width), jnp.float32),
      "gaussian": gaussian,
      "scales": chi / jnp.linalg.norm(gaussian, axis=-1, keepdims=True),
  }


def _permute_blocks(y: jax.Array, permutations: jax.Array) -> jax.Array:
  """y[..., b, permutations[b, i]]: block b reordered by its permutation."""
  blocks, width = permutations.shape
  flat = (permutations + width * jnp.arange(blocks)[:, None]).reshape(-1)
  # blocks * width, not -1: a -1 cannot be inferred for an empty batch.
  out = jnp.take(y.reshape(y.shape[:-2] + (blocks * width,)), flat, axis=-1)
  return out.reshape(y.shape)


def fastfood_projections(
    x: jax.Array, params: Params, permutations: jax.Array
) -> jax.Array:
  """omega_r^T x for the FastFood rows V = D^{-1/2} S H G P H B, in O(m log D).

  `x` is zero-padded from d to D = `padded_dim(d)`; no [m, d] matrix is
  formed.

  Args:
    x: `[..., d]` inputs.
    params: from `init_fastfood_params`, diagonals `[b, D]`.
    permutations: `[b, D]` int permutations (`random_permutations`).

  Returns:
    `[..., b * D]` projections, block-major.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> p = init_fastfood_params(jax.random.key(0), 3, 8)
    >>> perm = random_permutations(jax.random.key(1), 2, 4)
    >>> fastfood_projections(jnp.ones((5, 3)), p, perm).shape
    (5, 8)
  """
  _validation.check_min_rank("x", x, 1, "[..., dim]")
  signs = params["signs"]
  blocks, width = signs.shape
  dim = x.shape[-1]
  if padded_dim(dim) != width:
    raise ValueError(
        f"FastFood parameters of width {width} need inputs of dim"
        f" {width // 2 + 1}..{width} (padded to {width}); got dim {dim}."
    )
  if tuple(jnp.shape(permutations)) != (blocks, width):
    raise ValueError(
        f"`permutations` must have shape [{blocks}, {width}] to match the"
        f" parameters; got {tuple(jnp.shape(permutations))}."
    )
  padded = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, width - dim)])
  y = fast_walsh_hadamard_transform(padded[..., None, :] * signs.astype(x.dtype))
  y = _permute_blocks(y, permutations)
  y = fast_walsh_hadamard_transform(y * params["gaussian"].astype(x.dtype))
  y = y * (params["scales"].astype(x.dtype) / math.sqrt(width))
  return y.reshape(x.shape[:-1] + (blocks * width,))


def fastfood_frequencies(params: Params, permutations: jax.Array, dim: int):
  """The FastFood rows as an explicit `[m, dim]` matrix, with weights 1/m.

  For tests and inspection: `x @ frequencies.T` equals
  `fastfood_projections(x, params, permutations)`.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> p = init_fastfood_params(jax.random.key(0), 3, 4)
    >>> perm = random_permutations(jax.random.key(1), 1, 4)
    >>> fastfood_frequencies(p, perm, 3)[0].shape
    (4, 3)
  """
  omega = fastfood_projections(jnp.eye(dim), params, permutations).T
  num_features = omega.shape[0]
  return omega, jnp.full((num_features,), -math.log(num_features))


# --- Feature maps -----------------------------------------------------------


def random_fourier_features(
    projections: jax.Array,
    log_weights: jax.Array,
    *,
    smoothing: float = DEFAULT_SMOOTHING,
) -> jax.Array:
  """[sqrt(w) cos(omega^T x), sqrt(w) sin(omega^T x), s]: RKS features.

  phi(x)^T phi(y) = sum_r w_r cos(omega_r^T (x - y)) + s^2.

  Args:
    projections: `[..., m]` values omega_r^T x.
    log_weights: `[m]` log w_r (summing to one in w for an unbiased
      estimate).
    smoothing: s, the constant feature; s = 1 keeps every estimate >= 0.

  Returns:
    `[..., 2 m + 1]` features.

  Examples:
    >>> import jax.numpy as jnp
    >>> phi = random_fourier_features(jnp.zeros((2, 3)), jnp.log(jnp.ones(3) / 3))
    >>> phi.shape, float(phi[0] @ phi[1])
    ((2, 7), 2.0)
  """
  half_weights = jnp.exp(0.5 * log_weights).astype(projections.dtype)
  constant = jnp.full(projections.shape[:-1] + (1,), smoothing, projections.dtype)
  return jnp.concatenate(
      [jnp.cos(projections) * half_weights, jnp.sin(projections) * half_weights,
       constant],
      axis=-1,
  )


def positive_random_features(
    projections: jax.Array, x: jax.Array, log_weights: jax.Array
) -> favor.ScaledFeatures:
  """sqrt(w_r) exp(omega_r^T x - |x|^2) in log-scale form: PRF features.

  E[phi(x)^T phi(y)] = E[exp(omega^T (x + y))] exp(-|x|^2 - |y|^2).

  Args:
    projections: `[..., m]` values omega_r^T x.
    x: `[..., d]` the inputs the projections came from.
    log_weights: `[m]` log w_r.

  Returns:
    `ScaledFeatures` with values `[..., m]` and log_scale `[...]`.

  Examples:
    >>> import jax.numpy as jnp
    >>> f = positive_random_features(jnp.zeros((2, 4)), jnp.ones((2, 3)),
    ...                              jnp.log(jnp.ones(4) / 4))
    >>> f.values.shape, float(f.log_scale[0])
    ((2, 4), -3.6931...)
  """
  exponents = projections + 0.5 * log_weights.astype(projections.dtype)
  return favor._exp_scaled(  # pylint: disable=protected-access
      exponents, -jnp.einsum("...d,...d->...", x, x)
  )


# --- Closed-form kernels ----------------------------------------------------


def gmm_rks_kernel(
    x: jax.Array, y: jax.Array, params: Params, *,
    smoothing: float = DEFAULT_SMOOTHING,
) -> jax.Array:
  """E[phi(x)^T phi(y)] of GMM-RKS: the mixture's characteristic function.

  sum_c pi_c exp(-|A_c (x - y)|^2 / 2) cos(mu_c^T (x - y)) + s^2.

  Args:
    x: `[..., d]`.
    y: `[..., d]`.
    params: from `init_gmm_rks_params`.
    smoothing: s.

  Returns:
    `[...]` kernel values.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> p = init_gmm_rks_params(jax.random.key(0), 3)
    >>> float(gmm_rks_kernel(jnp.ones(3), jnp.ones(3), p))
    2.0
  """
  delta = x - y
  spread = jnp.einsum("cde,...e->...cd", params["scale_factors"], delta)
  phase = jnp.einsum("cd,...d->...c", params["means"], delta)
  pi = jax.nn.softmax(params["mixture_logits"])
  return (
      jnp.sum(pi * jnp.exp(-0.5 * jnp.sum(spread**2, -1)) * jnp.cos(phase), -1)
      + smoothing**2
  )


def gmm_prf_kernel(x: jax.Array, y: jax.Array, params: Params) -> jax.Array:
  """E[phi(x)^T phi(y)] of GMM-PRF: the mixture's moment generating function.

  sum_c pi_c exp(mu_c^T u + u^T diag(exp sigma_c) u / 2) exp(-|x|^2 - |y|^2)
  with u = x + y.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> p = init_gmm_prf_params(jax.random.key(0), 3)
    >>> float(gmm_prf_kernel(jnp.zeros(3), jnp.zeros(3), p))
    1.0
  """
  u = x + y
  exponent = (
      jnp.einsum("cd,...d->...c", params["means"], u)
      + 0.5 * jnp.einsum("cd,...d->...c", jnp.exp(params["log_variances"]), u**2)
  )
  log_pi = jax.nn.log_softmax(params["mixture_logits"])
  return jnp.exp(
      jax.nn.logsumexp(exponent + log_pi, axis=-1)
      - jnp.sum(x**2, -1) - jnp.sum(y**2, -1)
  )


# --- Named learned kernels --------------------------------------------------


class LearnedKernel(NamedTuple):
  """A learned kernel: its parameters, its noise and its features.

  Attributes:
    name: e.g. `"gmm_rks"`.
    init_params: `init_params(key, dim, num_features) -> params` for one head.
    noise_sampler: `noise_sampler(key, rows, cols)` draws the noise.
    noise_shape: `noise_shape(num_features, dim) -> (rows, cols)`; raises a
      ValueError for a feature count the kernel cannot honour.
    prepare: `prepare(params, noise) -> state`, what the features need that
      does not depend on the tokens (the frequencies), formed once.
    features: `features(state, x)` maps `[..., dim]` to the features.
    default_num_features: the default m; RKS kernels give 2 m + 1 features,
      PRF kernels m.
  """

  name: str
  init_params: Callable[[jax.Array, int, int], Params]
  noise_sampler: Callable[[jax.Array, int, int], jax.Array]
  noise_shape: Callable[[int, int], tuple[int, int]]
  prepare: Callable[[Params, jax.Array], Any]
  features: Callable[[Any, jax.Array], Features]
  default_num_features: int

  def feature_map(
      self, params: Params, noise: jax.Array
  ) -> Callable[[jax.Array], Features]:
    """The map `[..., dim] -> features` of one head with `params`."""
    state = self.prepare(params, noise)
    return lambda x: self.features(state, x)

  def multi_head_feature_map(
      self, params: Params, noise: jax.Array
  ) -> Callable[[jax.Array], Features]:
    """The map on `[..., heads, length, dim]`, head h with `params[h]`.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> kernel = get_learned_kernel("gmm_prf")
      >>> params, noise = init_learned_kernel(
      ...     "gmm_prf", jax.random.key(0), num_heads=3, dim=4, num_features=8)
      >>> phi = kernel.multi_head_feature_map(params, noise)
      >>> phi(jnp.ones((2, 3, 5, 4))).values.shape
      (2, 3, 5, 8)
    """
    state = jax.vmap(self.prepare, in_axes=(0, None))(params, noise)

    def phi(x):
      _validation.check_min_rank("x", x, 3, "[..., heads, length, dim]")
      head_axis = x.ndim - 3
      return jax.vmap(
          self.features, in_axes=(0, head_axis), out_axes=head_axis
      )(state, x)
    return phi


def _gaussian_noise(key, rows, cols):
  return jax.random.normal(key, (rows, cols), jnp.float32)


def _rows_by_dim(num_features, dim):
  _validation.check_positive_int("num_random_features", num_features)
  return (num_features, dim)


def _fastfood_shape(num_features, dim):
  return (fastfood_num_blocks(num_features, dim), padded_dim(dim))


def _explicit_features(estimator):
  def features(state, x):
    frequencies, log_weights = state
    projections = x @ frequencies.T.astype(x.dtype)
    if estimator == "rks":
      return random_fourier_features(projections, log_weights)
    return positive_random_features(projections, x, log_weights)
  return features


def _fastfood_features(estimator):
  def features(state, x):
    params, permutations = state
    projections = fastfood_projections(x, params, permutations)
    log_weights = jnp.full(
        projections.shape[-1:], -math.log(projections.shape[-1]), x.dtype
    )
    if estimator == "rks":
      return random_fourier_features(projections, log_weights)
    return positive_random_features(projections, x, log_weights)
  return features


def _as_state(params, noise):
  return params, noise


def _gmm_shape(num_features, dim):
  _validation.check_positive_int("num_random_features", num_features)
  if num_features % GMM_COMPONENTS:
    raise ValueError(
        f"GMM kernels split their draws evenly between {GMM_COMPONENTS}"
        " mixture components: `num_random_features` must be a multiple of"
        f" {GMM_COMPONENTS}; got {num_features}."
    )
  return (num_features, dim)


def _gmm_init(init):
  def init_params(key, dim, num_features):
    del num_features
    return init(key, dim, num_components=GMM_COMPONENTS)
  return init_params


def _generative_init(key, dim, num_features):
  del num_features
  return init_generative_params(key, dim)


# RKS takes half the draws of PRF: [cos, sin] doubles its features, so the
# defaults cost the same as FAVOR+ with 256 features.
LEARNED_KERNELS: dict[str, LearnedKernel] = {
    kernel.name: kernel
    for kernel in (
        LearnedKernel(
            "gmm_rks", _gmm_init(init_gmm_rks_params), _gaussian_noise,
            _gmm_shape, gmm_frequencies, _explicit_features("rks"), 128,
        ),
        LearnedKernel(
            "gmm_prf", _gmm_init(init_gmm_prf_params), _gaussian_noise,
            _gmm_shape, gmm_frequencies, _explicit_features("prf"), 256,
        ),
        LearnedKernel(
            "fastfood_rks", init_fastfood_params, random_permutations,
            _fastfood_shape, _as_state, _fastfood_features("rks"), 128,
        ),
        LearnedKernel(
            "fastfood_prf", init_fastfood_params, random_permutations,
            _fastfood_shape, _as_state, _fastfood_features("prf"), 256,
        ),
        LearnedKernel(
            "generative_rks", _generative_init, _gaussian_noise,
            _rows_by_dim, generative_frequencies, _explicit_features("rks"), 128,
        ),
        LearnedKernel(
            "generative_prf", _generative_init, _gaussian_noise,
            _rows_by_dim, generative_frequencies, _explicit_features("prf"), 256,
        ),
    )
}


def get_learned_kernel(name: str) -> LearnedKernel:
  """The learned kernel `name`, one of `LEARNED_KERNELS`.

  Examples:
    >>> get_learned_kernel("fastfood_prf").default_num_features
    256
  """
  if name not in LEARNED_KERNELS:
    raise ValueError(
        f"Unknown learned `kernel` {name!r}; valid: {sorted(LEARNED_KERNELS)}."
    )
  return LEARNED_KERNELS[name]


def init_learned_kernel(
    name: str, key: jax.Array, *, num_heads: int, dim: int,
    num_features: int | None = None,
) -> tuple[Any, jax.Array]:
  """Per-head parameters and shared noise of the learned kernel `name`.

  Args:
    name: one of `LEARNED_KERNELS`.
    key: a `jax.random` key.
    num_heads: h; every head gets its own distribution.
    dim: d, the query/key width per head.
    num_features: m, default the kernel's `default_num_features`.

  Returns:
    `(params, noise)`: params with a leading `[h]` axis on every leaf, and
    the noise (shared by the heads) of shape `noise_shape(m, d)`.

  Examples:
    >>> import jax
    >>> params, noise = init_learned_kernel(
    ...     "fastfood_rks", jax.random.key(0), num_heads=2, dim=6,
    ...     num_features=16)
    >>> params["scales"].shape, noise.shape
    ((2, 2, 8), (2, 8))
  """
  kernel = get_learned_kernel(name)
  _validation.check_positive_int("num_heads", num_heads)
  if num_features is None:
    num_features = kernel.default_num_features
  shape = kernel.noise_shape(num_features, dim)
  params_key, noise_key = jax.random.split(key)
  params = jax.vmap(lambda k: kernel.init_params(k, dim, num_features))(
      jax.random.split(params_key, num_heads)
  )
  return params, kernel.noise_sampler(noise_key, *shape)
