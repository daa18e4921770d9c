"""Attention cores on `[*batch, length, heads, dim]` (group feature maps:
`[*batch, order, length, heads, dim]`)."""

from kattn.attention.gpsa import (
    gated_positional_self_attention,
    gpsa_attention_weights,
    linear_gated_positional_self_attention,
    locality_centres,
    locality_position_weights,
    nonlocality,
    positional_attention_weights,
    positional_log_bias_table,
    relative_position_encodings,
)
from kattn.attention.group import (
    group_self_attention,
    lifting_self_attention,
    relative_group_index,
    window_offsets,
)
from kattn.attention.group_linear import (
    dense_group_kernel_attention,
    group_favor_attention,
    group_feature_map_attention,
    group_lifting_favor_attention,
    group_lifting_feature_map_attention,
    turned_log_bias,
)
from kattn.attention.linear import (
    SOFTMAX_KERNELS,
    favor_attention,
    favor_feature_map,
    feature_map_attention,
    learned_kernel_attention,
    linear_attention,
)
from kattn.attention.soft import (
    average_pool_landmarks,
    gaussian_kernel,
    gaussian_kernel_attention,
    newton_schulz_pinv,
    segment_mean_landmarks,
    soft_attention,
)
from kattn.attention.reference import (
    quadratic_kernel_attention,
    softmax_attention,
    weighted_average,
)
