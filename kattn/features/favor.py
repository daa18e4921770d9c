"""Feature maps phi: [..., d] -> [..., m] with phi(x)^T phi(y) ~ k(x, y).

Softmax-kernel estimators (exp(x^T y)) come in two forms:

* `*_softmax_features(x, projection)`: the plain unbiased features, for
  composing and for tests. They overflow for large |x|.
* `*_softmax_scaled_features(x, projection)`: the same features factored as
  `values * exp(log_scale)[..., None]` with `max(values) <= 1`, so attention
  can keep the per-token scale in log space. `favor_attention` uses these; the
  per-query scale cancels in the attention normaliser and the per-key scale is
  carried causally (see `kattn.attention.linear`).

Generalised kernels (`relu_features`, `elu_plus_one_features`, `exp_features`,
`generalized_kernel_features`) are deterministic maps f(x) or f(Omega x).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from kattn import _validation


class ScaledFeatures(NamedTuple):
  """Features phi = values * exp(log_scale)[..., None] kept in log-scale form.

  Attributes:
    values: `[..., m]`, entries of magnitude at most 1.
    log_scale: `[...]`, one log-scale per token.
  """

  values: jax.Array
  log_scale: jax.Array

  def dense(self) -> jax.Array:
    """The features as one array (may overflow where log_scale is large)."""
    return self.values * jnp.exp(self.log_scale)[..., None]


def _check_projection(x, projection) -> None:
  _validation.check_min_rank("x", x, 1, "[..., dim]")
  _validation.check_min_rank("projection", projection, 2, "[num_features, dim]")
  if jnp.ndim(projection) != 2:
    raise ValueError(
        "`projection` must have shape [num_features, dim]; got shape"
        f" {tuple(jnp.shape(projection))}."
    )
  if jnp.shape(projection)[-1] != jnp.shape(x)[-1]:
    raise ValueError(
        f"`projection` has width {jnp.shape(projection)[-1]} but the inputs"
        f" have dim {jnp.shape(x)[-1]}: expected projection of shape"
        f" [num_features, {jnp.shape(x)[-1]}], got"
        f" {tuple(jnp.shape(projection))}."
    )
  if jnp.shape(projection)[0] == 0:
    raise ValueError(
        "`projection` must have at least one row (num_features >= 1); got"
        f" shape {tuple(jnp.shape(projection))}."
    )


def _project(x, projection):
  return jnp.einsum(
      "...d,md->...m", x, projection.astype(x.dtype),
      preferred_element_type=x.dtype,
  )


def _half_squared_norm(x):
  # An einsum, not sum(x * x): XLA:CPU runs it as a dot, several times faster.
  return 0.5 * jnp.einsum("...d,...d->...", x, x)


def _exp_scaled(exponents, log_scale) -> ScaledFeatures:
  """exp(exponents + log_scale) with the per-token max moved into log space."""
  peak = jax.lax.stop_gradient(jnp.max(exponents, axis=-1))
  return ScaledFeatures(
      jnp.exp(exponents - peak[..., None]), log_scale + peak
  )


def positive_softmax_scaled_features(
    x: jax.Array, projection: jax.Array
) -> ScaledFeatures:
  """Positive random features (FAVOR+) in log-scale form.

  phi(x)_r = m^{-1/2} exp(omega_r^T x - |x|^2 / 2), an unbiased estimator of
  the softmax kernel: E[phi(x)^T phi(y)] = exp(x^T y) for omega_r ~ N(0, I).

  Args:
    x: `[..., dim]` inputs (already scaled by dim^{-1/4} for attention).
    projection: `[m, dim]` random projection.

  Returns:
    `ScaledFeatures` with values `[..., m]` and log_scale `[...]`.

  Examples:
    >>> import jax, jax.numpy as jnp, kattn
    >>> w = kattn.gaussian_random_projection(jax.random.key(0), 64, 4)
    >>> f = positive_softmax_scaled_features(jnp.ones((3, 4)) * 0.1, w)
    >>> f.values.shape, f.log_scale.shape
    ((3, 64), (3,))

  References:
    Choromanski et al., "Rethinking Attention with Performers", ICLR 2021.
  """
  _check_projection(x, projection)
  num_features = projection.shape[0]
  sq_norm = _half_squared_norm(x)
  return _exp_scaled(
      _project(x, projection), -sq_norm - 0.5 * math.log(num_features)
  )


def hyperbolic_softmax_scaled_features(
    x: jax.Array, projection: jax.Array
) -> ScaledFeatures:
  """Hyperbolic (antithetic) positive features in log-scale form.

  phi(x) = (2m)^{-1/2} exp(-|x|^2/2) [exp(Omega x), exp(-Omega x)]: 2m features
  from m draws, unbiased for exp(x^T y) with lower variance than positive
  features.

  Args:
    x: `[..., dim]` inputs.
    projection: `[m, dim]` random projection.

  Returns:
    `ScaledFeatures` with values `[..., 2m]` and log_scale `[...]`.

  Examples:
    >>> import jax, jax.numpy as jnp, kattn
    >>> w = kattn.gaussian_random_projection(jax.random.key(0), 8, 4)
    >>> hyperbolic_softmax_scaled_features(jnp.zeros((2, 4)), w).values.shape
    (2, 16)
  """
  _check_projection(x, projection)
  num_features = projection.shape[0]
  sq_norm = _half_squared_norm(x)
  projected = _project(x, projection)
  return _exp_scaled(
      jnp.concatenate([projected, -projected], axis=-1),
      -sq_norm - 0.5 * math.log(2 * num_features),
  )


def trigonometric_softmax_scaled_features(
    x: jax.Array, projection: jax.Array
) -> ScaledFeatures:
  """Trigonometric (random Kitchen-sinks) softmax features, log-scale form.

  phi(x) = m^{-1/2} exp(|x|^2/2) [sin(Omega x), cos(Omega x)], unbiased for
  exp(x^T y). The features change sign, so attention denominators can get
  close to zero: prefer positive features for attention.

  Args:
    x: `[..., dim]` inputs.
    projection: `[m, dim]` random projection.

  Returns:
    `ScaledFeatures` with values `[..., 2m]` and log_scale `[...]`.

  Examples:
    >>> import jax, jax.numpy as jnp, kattn
    >>> w = kattn.gaussian_random_projection(jax.random.key(0), 8, 4)
    >>> trigonometric_softmax_scaled_features(jnp.zeros((2, 4)), w).values.shape
    (2, 16)

  References:
    Rahimi & Recht, "Random Features for Large-Scale Kernel Machines", 2007.
  """
  _check_projection(x, projection)
  num_features = projection.shape[0]
  projected = _project(x, projection)
  values = jnp.concatenate(
      [jnp.sin(projected), jnp.cos(projected)], axis=-1
  ) / math.sqrt(num_features)
  return ScaledFeatures(values, _half_squared_norm(x))


def positive_softmax_features(x: jax.Array, projection: jax.Array) -> jax.Array:
  """Positive random features, `[..., dim] -> [..., m]`; see the scaled form.

  Examples:
    >>> import jax, jax.numpy as jnp, kattn
    >>> w = kattn.gaussian_random_projection(jax.random.key(0), 32, 4)
    >>> bool(jnp.all(positive_softmax_features(jnp.ones((2, 4)), w) > 0))
    True
  """
  return positive_softmax_scaled_features(x, projection).dense()


def hyperbolic_softmax_features(
    x: jax.Array, projection: jax.Array
) -> jax.Array:
  """Hyperbolic positive features, `[..., dim] -> [..., 2m]`.

  Examples:
    >>> import jax, jax.numpy as jnp, kattn
    >>> w = kattn.gaussian_random_projection(jax.random.key(0), 8, 4)
    >>> hyperbolic_softmax_features(jnp.ones((2, 4)), w).shape
    (2, 16)
  """
  return hyperbolic_softmax_scaled_features(x, projection).dense()


def trigonometric_softmax_features(
    x: jax.Array, projection: jax.Array
) -> jax.Array:
  """Trigonometric softmax features, `[..., dim] -> [..., 2m]`.

  Examples:
    >>> import jax, jax.numpy as jnp, kattn
    >>> w = kattn.gaussian_random_projection(jax.random.key(0), 8, 4)
    >>> trigonometric_softmax_features(jnp.ones((2, 4)), w).shape
    (2, 16)
  """
  return trigonometric_softmax_scaled_features(x, projection).dense()


def generalized_kernel_features(
    x: jax.Array,
    fn: Callable[[jax.Array], jax.Array],
    projection: Optional[jax.Array] = None,
    *,
    eps: float = 0.0,
) -> jax.Array:
  """Generalised kernel features phi(x) = fn(x) + eps, or fn(Omega x) + eps.

  Args:
    x: `[..., dim]` inputs.
    fn: elementwise map; it should be non-negative for attention.
    projection: optional `[m, dim]` projection; without it the map is
      deterministic and the feature count equals `dim`.
    eps: constant added to every feature. It keeps denominators positive and,
      being independent of every other token, leaks nothing in causal mode.

  Returns:
    `[..., m]` features (`[..., dim]` without a projection).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> generalized_kernel_features(jnp.array([-1.0, 2.0]), jnp.square)
    Array([1., 4.], dtype=float32)
  """
  if projection is not None:
    _check_projection(x, projection)
    x = _project(x, projection)
  return fn(x) + eps


def relu_features(
    x: jax.Array, projection: Optional[jax.Array] = None, *, eps: float = 1e-3
) -> jax.Array:
  """ReLU kernel features relu(x) + eps (or relu(Omega x) + eps).

  Examples:
    >>> import jax.numpy as jnp
    >>> relu_features(jnp.array([-1.0, 2.0]), eps=0.0)
    Array([0., 2.], dtype=float32)
  """
  return generalized_kernel_features(x, jax.nn.relu, projection, eps=eps)


def elu_plus_one_features(
    x: jax.Array, projection: Optional[jax.Array] = None
) -> jax.Array:
  """ELU + 1 features (Katharopoulos et al. 2020), strictly positive.

  Examples:
    >>> import jax.numpy as jnp
    >>> elu_plus_one_features(jnp.array([0.0, 1.0]))
    Array([1., 2.], dtype=float32)

  References:
    Katharopoulos et al., "Transformers are RNNs", ICML 2020.
  """
  return generalized_kernel_features(
      x, lambda t: jax.nn.elu(t) + 1.0, projection
  )


def exp_features(
    x: jax.Array, projection: Optional[jax.Array] = None
) -> ScaledFeatures:
  """Deterministic exponential features exp(x) (or exp(Omega x)), log-scale.

  Returned in log-scale form because exp overflows; pass it as a
  `feature_map` to `feature_map_attention`, or call `.dense()`.

  Examples:
    >>> import jax.numpy as jnp
    >>> exp_features(jnp.array([0.0, 1.0])).dense()
    Array([1.       , 2.7182817], dtype=float32)
  """
  if projection is not None:
    _check_projection(x, projection)
    x = _project(x, projection)
  return _exp_scaled(x, jnp.zeros(x.shape[:-1], x.dtype))
