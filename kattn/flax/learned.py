"""Learned spectral feature maps as Linen modules, one per variant.

Each module owns one spectral distribution per head (trainable params
`"spectral_distribution"`) and the noise it is sampled with (the
`"random_features"` collection, as FAVOR+'s projection), and maps queries or
keys to their features. The noise changes only when the training loop calls
`kattn.flax.redraw`, so evaluation is deterministic. Attention layers do not
need these modules: `MultiHeadSelfAttention(attention="gmm_rks")` holds the
same variables itself. They are for users who build their own attention on
learned features, e.g. with `kattn.linear_attention`.
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from kattn import _validation
from kattn.features import favor
from kattn.features import learned
from kattn.flax import attention as attention_lib
from kattn.flax import registry

def _heads_first(x):
  return jnp.swapaxes(x, -2, -3)


class LearnedFeatureMap(nn.Module):
  """Learned spectral features of `[*batch, length, heads, dim]` inputs.

  Head h maps through its own distribution; the inputs are used as given
  (`kattn.learned_kernel_attention` first scales them by dim^{-1/4}).

  Attributes:
    kernel: a name from `kattn.features.learned.LEARNED_KERNELS`.
    num_random_features: the draws m; None takes the kernel's default.

  Returns (from `__call__`):
    RKS kernels: `[*batch, length, heads, 2 m + 1]` features; PRF kernels:
    `ScaledFeatures` with values `[*batch, length, heads, m]` and log_scale
    `[*batch, length, heads]`.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> phi = GMMRKSFeatures(num_random_features=8)
    >>> x = jnp.ones((2, 5, 3, 4))                       # [batch, L, heads, d]
    >>> variables = phi.init(jax.random.key(0), x)
    >>> phi.apply(variables, x).shape
    (2, 5, 3, 17)
    >>> variables["random_features"]["projection_gaussian"].shape
    (8, 4)
  """

  kernel: str
  num_random_features: Optional[int] = None

  @nn.compact
  def __call__(self, x: jax.Array):
    spec = registry.get_attention(self.kernel)
    if spec.init_kernel_params is None:
      raise ValueError(
          f"`kernel` must be a learned kernel, one of"
          f" {sorted(learned.LEARNED_KERNELS)}; got {self.kernel!r}."
      )
    _validation.check_min_rank("x", x, 3, "[*batch, length, heads, dim]")
    if self.num_random_features is not None:
      _validation.check_positive_int(
          "num_random_features", self.num_random_features
      )
    heads, dim = x.shape[-2:]
    noise = attention_lib.random_projection(
        self, spec, self.num_random_features, dim
    )
    params = attention_lib.spectral_parameters(
        self, spec, self.num_random_features, heads, dim
    )
    phi = learned.get_learned_kernel(self.kernel).multi_head_feature_map(
        params, noise
    )
    features = phi(_heads_first(x))
    if isinstance(features, favor.ScaledFeatures):
      return favor.ScaledFeatures(
          _heads_first(features.values),
          jnp.swapaxes(features.log_scale, -1, -2),
      )
    return _heads_first(features)


class GMMRKSFeatures(LearnedFeatureMap):
  """GMM-RKS: a Gaussian mixture per head, cos/sin features."""

  kernel: str = "gmm_rks"


class GMMPRFFeatures(LearnedFeatureMap):
  """GMM-PRF: a Gaussian mixture per head, positive features."""

  kernel: str = "gmm_prf"


class FastFoodRKSFeatures(LearnedFeatureMap):
  """FastFood-RKS: learned S, G, B diagonals, random permutations, cos/sin."""

  kernel: str = "fastfood_rks"


class FastFoodPRFFeatures(LearnedFeatureMap):
  """FastFood-PRF: learned S, G, B diagonals, random permutations, positive."""

  kernel: str = "fastfood_prf"


class GenerativeRKSFeatures(LearnedFeatureMap):
  """Generative-RKS: an MLP pushes Gaussian noise to frequencies, cos/sin."""

  kernel: str = "generative_rks"


class GenerativePRFFeatures(LearnedFeatureMap):
  """Generative-PRF: an MLP pushes Gaussian noise to frequencies, positive."""

  kernel: str = "generative_prf"
