"""Relative positions on pixel grids, inside linear attention.

* `toeplitz`: an exact 2-D relative bias c(p_j - p_i) multiplying any kernel,
  by FFT in O(L log L) (torus or zero-padded image).
* `sinusoid`: Horn et al.'s strategy 1, position codes whose query-key term
  depends on p_i - p_j only.
* `clipped`: Horn et al.'s strategy 2, learned embeddings of the clipped L1
  distance, in linear time.
* `absolute`: the absolute sinusoid embedding they are compared with.
* `grid`: row-major token grids and their circular shifts.
"""

from kattn.positional.absolute import sinusoid_position_embedding
from kattn.positional.clipped import (
    clipped_relative_attention,
    clipped_relative_distance,
    clipped_relative_favor_attention,
    dense_clipped_relative_attention,
)
from kattn.positional.grid import (
    check_grid,
    grid_positions,
    roll_tokens,
)
from kattn.positional.sinusoid import (
    circular_frequencies,
    constrained_relative_qk,
    geometric_frequencies,
    prepend_zero_code,
    relative_position_logits,
    rotate_position_code,
    sinusoid_position_code,
)
from kattn.positional.toeplitz import (
    RELATIVE_BIAS_MODES,
    dense_relative_kernel_attention,
    local_log_bias,
    relative_bias_matrix,
    relative_bias_shape,
    relative_favor_attention,
    relative_feature_map_attention,
    relative_softmax_attention,
    toeplitz_2d_linear_attention,
)
