"""Flax Linen modules and models, with attention picked by name."""

from kattn.flax.attention import (
    MultiHeadSelfAttention,
    redraw,
)
from kattn.flax.models import (
    EncoderBlock,
    VisionTransformer,
)
from kattn.flax.relative import (
    RELATIVE_POSITIONS,
    RelativeSelfAttention,
)
from kattn.flax.registry import (
    AttentionSpec,
    available_attentions,
    available_projection_samplers,
    get_attention,
    get_projection_sampler,
    register_attention,
    register_projection_sampler,
)
