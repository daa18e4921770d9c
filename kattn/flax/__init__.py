"""Flax Linen modules and models, with attention picked by name."""

from kattn.flax.attention import (
    MultiHeadSelfAttention,
    kernel_feature_map,
    random_projection,
    redraw,
    spectral_parameters,
)
from kattn.flax.convit import (
    CONVIT_SIZES,
    ConViT,
    ConViTBlock,
    GatedPositionalSelfAttention,
    attention_maps,
    deit,
    layer_nonlocality,
)
from kattn.flax.convert_timm import (
    convit_config_from_state_dict,
    load_timm_convit,
    params_from_timm_state_dict,
    timm_convit_shapes,
)
from kattn.flax.group import (
    GroupSelfAttention,
    LiftingSelfAttention,
    RelativePositionEncoder,
)
from kattn.flax.group_linear import (
    GroupLinearAttention,
    LiftingLinearAttention,
)
from kattn.flax.gsa_net import (
    GroupAttentionBlock,
    GSANet,
)
from kattn.flax.learned import (
    FastFoodPRFFeatures,
    FastFoodRKSFeatures,
    GMMPRFFeatures,
    GMMRKSFeatures,
    GenerativePRFFeatures,
    GenerativeRKSFeatures,
    LearnedFeatureMap,
)
from kattn.flax.models import (
    EncoderBlock,
    VisionTransformer,
)
from kattn.flax.soft import (
    SoftSelfAttention,
    strided_conv_landmarks,
)
from kattn.flax.relative import (
    RELATIVE_POSITIONS,
    RelativeSelfAttention,
)
from kattn.flax.registry import (
    AttentionSpec,
    available_attentions,
    available_models,
    available_projection_samplers,
    get_attention,
    get_kernel_attention,
    get_model,
    get_projection_sampler,
    register_attention,
    register_model,
    register_projection_sampler,
)
