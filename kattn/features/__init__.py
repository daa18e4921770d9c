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
