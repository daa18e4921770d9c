"""Attention cores on `[*batch, length, heads, dim]`."""

from kattn.attention.linear import (
    SOFTMAX_KERNELS,
    favor_attention,
    favor_feature_map,
    feature_map_attention,
    linear_attention,
)
from kattn.attention.reference import (
    quadratic_kernel_attention,
    softmax_attention,
    weighted_average,
)
