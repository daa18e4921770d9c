"""Random projections and feature maps phi: [..., d] -> [..., m]."""

from kattn.features.favor import (
    ScaledFeatures,
    elu_plus_one_features,
    exp_features,
    generalized_kernel_features,
    hyperbolic_softmax_features,
    hyperbolic_softmax_scaled_features,
    positive_softmax_features,
    positive_softmax_scaled_features,
    relu_features,
    trigonometric_softmax_features,
    trigonometric_softmax_scaled_features,
)
from kattn.features.random import (
    gaussian_random_projection,
    orthogonal_random_projection,
)
from kattn.features.learned import (
    LEARNED_KERNELS,
    fast_walsh_hadamard_transform,
    fastfood_projections,
    generative_frequencies,
    gmm_frequencies,
    gmm_prf_kernel,
    gmm_rks_kernel,
    init_learned_kernel,
    positive_random_features,
    random_fourier_features,
    random_permutations,
)
