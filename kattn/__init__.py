"""kattn: efficient and equivariant attention for vision, in JAX.

The curated public API; everything here is a pure function of arrays and
explicit `jax.random` keys.
"""

from kattn.attention import (
    favor_attention,
    feature_map_attention,
    gated_positional_self_attention,
    group_favor_attention,
    group_lifting_favor_attention,
    group_self_attention,
    learned_kernel_attention,
    lifting_self_attention,
    linear_attention,
    linear_gated_positional_self_attention,
    quadratic_kernel_attention,
    soft_attention,
    softmax_attention,
)
from kattn.features import (
    ScaledFeatures,
    elu_plus_one_features,
    exp_features,
    fast_walsh_hadamard_transform,
    gaussian_random_projection,
    generalized_kernel_features,
    hyperbolic_softmax_features,
    hyperbolic_softmax_scaled_features,
    init_learned_kernel,
    orthogonal_random_projection,
    positive_softmax_features,
    positive_softmax_scaled_features,
    random_permutations,
    relu_features,
    trigonometric_softmax_features,
    trigonometric_softmax_scaled_features,
)

from kattn import flax
from kattn import groups
from kattn import positional
from kattn import testing

__version__ = "0.1.0"
