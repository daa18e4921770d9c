"""Attention mechanisms and projection samplers, picked by name.

Modules look attention up by name, so a config line swaps softmax for FAVOR+,
and new mechanisms plug in with `register_attention` without editing any
module. Every attention function has one signature,

    fn(q, k, v, *, projection, causal) -> out

on `[*batch, length, heads, dim]` arrays, where `projection` is the
`[num_random_features, dim]` random projection drawn by the spec's sampler,
or None for an attention without random features. Learned-kernel attentions
(`"gmm_rks"`, `"fastfood_prf"`, ...) also take `kernel_params=`, their
trainable per-head spectral parameters, and their "projection" is the noise
of their spectral distribution, stored and redrawn like any projection.

Kernel attentions also expose their feature map, so relative-position
attentions (`kattn.flax.RelativeSelfAttention`) can put a positional factor
between the features of queries and keys.

Models are named as well (`register_model`), so an experiment config picks
its architecture with `config.model.name`.

Samplers are named too, because the name of the variable that holds a
projection records its sampler, so that `kattn.flax.redraw` can redraw any
projection without knowing which module made it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from kattn import _validation
from kattn.attention import linear
from kattn.attention import soft
from kattn.features import favor
from kattn.features import learned
from kattn.features import random

AttentionFn = Callable[..., jax.Array]
ProjectionSampler = Callable[[jax.Array, int, int], jax.Array]
FeatureMap = Callable[[jax.Array, Optional[jax.Array]], Any]


@dataclasses.dataclass(frozen=True)
class AttentionSpec:
  """A named attention mechanism.

  Attributes:
    name: the name modules use to pick it, e.g. `"favor"`.
    fn: `fn(q, k, v, *, projection, causal)` on `[*batch, length, heads, dim]`
      queries, keys and values, returning `[*batch, length, heads, v_dim]`.
    num_random_features: default number of projection rows m, or None for an
      attention without random features.
    projection_sampler: name of the registered sampler that draws the
      `[m, dim]` projection, or None for an attention without one. Set both
      this and `num_random_features`, or neither.
    feature_map: for kernel attentions, `feature_map(x, projection)` on
      `[..., dim]` queries or keys, returning the features (an array or
      `ScaledFeatures`) whose dot products are the unnormalised attention
      weights, so that `fn` equals `kattn.feature_map_attention` with them;
      None for attentions that are not kernelized (softmax).
    ties_keys_to_queries: the mechanism uses its queries as keys (SOFT's
      Gaussian kernel needs Q = K): modules then make no key projection and
      pass `k = q`.
    init_kernel_params: for attentions with trainable kernels,
      `init_kernel_params(key, num_heads, dim, num_random_features)` returns
      the parameters that modules create and pass to `fn` as
      `kernel_params=`; None for the others.
    projection_shape: `projection_shape(num_random_features, dim)` gives the
      shape of the sampled array when it is not `[num_random_features, dim]`
      (FastFood's noise is one permutation per block); it raises a
      ValueError for a feature count the attention cannot honour.

  Examples:
    >>> spec = AttentionSpec("plain", lambda q, k, v, *, projection, causal: v)
    >>> spec.projection_sampler is None
    True
  """

  name: str
  fn: AttentionFn
  num_random_features: Optional[int] = None
  projection_sampler: Optional[str] = None
  feature_map: Optional[FeatureMap] = None
  ties_keys_to_queries: bool = False
  init_kernel_params: Optional[Callable[..., Any]] = None
  projection_shape: Optional[Callable[[int, int], tuple[int, int]]] = None

  def __post_init__(self):
    if not isinstance(self.name, str) or not self.name:
      raise ValueError(f"`name` must be a non-empty string; got {self.name!r}.")
    if not callable(self.fn):
      raise ValueError(f"`fn` must be callable; got {self.fn!r}.")
    if self.feature_map is not None and not callable(self.feature_map):
      raise ValueError(
          f"`feature_map` must be callable or None; got {self.feature_map!r}."
      )
    if (self.num_random_features is None) != (self.projection_sampler is None):
      raise ValueError(
          "`num_random_features` and `projection_sampler` must both be set or"
          " both be None; got"
          f" num_random_features={self.num_random_features!r},"
          f" projection_sampler={self.projection_sampler!r}."
      )
    if self.num_random_features is not None:
      _validation.check_positive_int(
          "num_random_features", self.num_random_features
      )
    for field in ("init_kernel_params", "projection_shape"):
      value = getattr(self, field)
      if value is not None and not callable(value):
        raise ValueError(f"`{field}` must be callable or None; got {value!r}.")

  def sample_shape(self, num_random_features: int, dim: int) -> tuple[int, int]:
    """Shape of the array `projection_sampler` draws for m features on dim.

    Examples:
      >>> get_attention("fastfood_rks").sample_shape(64, 24)
      (2, 32)
    """
    if self.projection_shape is None:
      return (num_random_features, dim)
    return tuple(self.projection_shape(num_random_features, dim))


_ATTENTIONS: dict[str, AttentionSpec] = {}
_SAMPLERS: dict[str, ProjectionSampler] = {}


def register_projection_sampler(
    name: str, sampler: ProjectionSampler, *, overwrite: bool = False
) -> None:
  """Registers `sampler(key, num_features, dim) -> [num_features, dim]`.

  Args:
    name: the sampler's name; projections it draws are stored in variables
      named `"projection_" + name`.
    sampler: draws a float32 projection from a `jax.random` key; it must be
      traceable, so that `redraw` can be jitted.
    overwrite: replace an existing sampler of the same name instead of
      raising.

  Examples:
    >>> import jax
    >>> register_projection_sampler(
    ...     "my_uniform", lambda key, m, d: jax.random.uniform(key, (m, d)),
    ...     overwrite=True)
    >>> "my_uniform" in available_projection_samplers()
    True
  """
  if not isinstance(name, str) or not name:
    raise ValueError(f"`name` must be a non-empty string; got {name!r}.")
  if not callable(sampler):
    raise ValueError(f"`sampler` must be callable; got {sampler!r}.")
  if name in _SAMPLERS and not overwrite:
    raise ValueError(
        f"A projection sampler named {name!r} is already registered; pass"
        " overwrite=True to replace it."
    )
  _SAMPLERS[name] = sampler


def get_projection_sampler(name: str) -> ProjectionSampler:
  """Returns the projection sampler registered as `name`.

  Examples:
    >>> import jax
    >>> get_projection_sampler("gaussian")(jax.random.key(0), 4, 2).shape
    (4, 2)
  """
  if name not in _SAMPLERS:
    raise ValueError(
        f"Unknown projection sampler {name!r}; registered samplers:"
        f" {available_projection_samplers()}."
    )
  return _SAMPLERS[name]


def available_projection_samplers() -> list[str]:
  """Names of the registered projection samplers, sorted.

  Examples:
    >>> {"gaussian", "orthogonal"} <= set(available_projection_samplers())
    True
  """
  return sorted(_SAMPLERS)


def register_attention(spec: AttentionSpec, *, overwrite: bool = False) -> None:
  """Makes `spec` available to modules under `spec.name`.

  Args:
    spec: the attention; its projection sampler, if any, must already be
      registered.
    overwrite: replace an existing attention of the same name instead of
      raising.

  Examples:
    >>> import kattn
    >>> def gaussian_relu(q, k, v, *, projection, causal):
    ...   features = lambda x: kattn.relu_features(x, projection)
    ...   return kattn.feature_map_attention(
    ...       q, k, v, feature_map=features, causal=causal)
    >>> register_attention(
    ...     AttentionSpec("my_gaussian_relu", gaussian_relu, 64, "gaussian"),
    ...     overwrite=True)
    >>> get_attention("my_gaussian_relu").num_random_features
    64
  """
  if not isinstance(spec, AttentionSpec):
    raise ValueError(f"`spec` must be an AttentionSpec; got {spec!r}.")
  if spec.projection_sampler is not None:
    get_projection_sampler(spec.projection_sampler)
  if spec.name in _ATTENTIONS and not overwrite:
    raise ValueError(
        f"An attention named {spec.name!r} is already registered; pass"
        " overwrite=True to replace it."
    )
  _ATTENTIONS[spec.name] = spec


def get_attention(name: str) -> AttentionSpec:
  """Returns the attention registered as `name`.

  Examples:
    >>> get_attention("favor").projection_sampler
    'orthogonal'
  """
  if name not in _ATTENTIONS:
    raise ValueError(
        f"Unknown `attention` {name!r}; registered attentions:"
        f" {available_attentions()}."
    )
  return _ATTENTIONS[name]


def get_kernel_attention(name: str) -> AttentionSpec:
  """The attention `name`, which must be a kernel attention (a feature map).

  Examples:
    >>> get_kernel_attention("relu").feature_map is not None
    True
  """
  spec = get_attention(name)
  if spec.init_kernel_params is not None:
    raise ValueError(
        f"`attention` {name!r} is a learned kernel with per-head trainable"
        " parameters, which this layer does not create; learned kernels run"
        " in `MultiHeadSelfAttention` (e.g. `VisionTransformer(attention="
        f"{name!r})`) or `kattn.attention.learned_kernel_attention`."
    )
  if spec.feature_map is None:
    raise ValueError(
        f"`attention` must name a kernel attention with a feature map (e.g."
        f" 'favor', 'relu', 'elu'); got {name!r}, which has none."
    )
  return spec


def available_attentions() -> list[str]:
  """Names of the registered attentions, sorted.

  Examples:
    >>> {"softmax", "favor", "relu"} <= set(available_attentions())
    True
  """
  return sorted(_ATTENTIONS)


_MODELS: dict[str, Callable[..., Any]] = {}


def register_model(
    name: str, constructor: Callable[..., Any], *, overwrite: bool = False
) -> None:
  """Makes a model class available to `kattn.train` as `config.model.name`.

  Args:
    name: the name configs use.
    constructor: called with `num_classes=` and the other `config.model`
      fields as keywords; returns a Linen module mapping `[batch, H, W, C]`
      images to `[batch, num_classes]` logits, with a `deterministic=`
      keyword.
    overwrite: replace an existing model of the same name instead of raising.

  Examples:
    >>> "gsa_net" in available_models()
    True
  """
  if name in _MODELS and not overwrite:
    raise ValueError(
        f"A model named {name!r} is already registered; pass overwrite=True"
        " to replace it."
    )
  _MODELS[name] = constructor


def get_model(name: str) -> Callable[..., Any]:
  """The model class registered as `name`.

  Examples:
    >>> get_model("vit").__name__
    'VisionTransformer'
  """
  if name not in _MODELS:
    raise ValueError(
        f"Unknown model `name` {name!r}; registered models:"
        f" {available_models()}."
    )
  return _MODELS[name]


def available_models() -> list[str]:
  """Names of the registered models, sorted."""
  return sorted(_MODELS)


def _softmax(q, k, v, *, projection, causal):
  del projection
  # jax.nn.dot_product_attention takes exactly one batch axis and equal
  # query and value widths; zero padding to a common width changes neither
  # q^T k nor the values, given the scale of the true query width.
  batch_shape = q.shape[:-3]
  flat = lambda x: x.reshape((-1,) + x.shape[-3:])
  width = max(q.shape[-1], v.shape[-1])
  pad = lambda x: jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, width - x.shape[-1])])
  out = jax.nn.dot_product_attention(
      pad(flat(q)), pad(flat(k)), pad(flat(v)), scale=q.shape[-1] ** -0.5,
      is_causal=causal,
  )
  out = out[..., :v.shape[-1]]
  return out.reshape(batch_shape + out.shape[-3:])


def _soft(normalization):
  def fn(q, k, v, *, projection, causal):
    del k, projection  # the keys are the queries (ties_keys_to_queries)
    if causal:
      raise ValueError(
          "SOFT attention is bidirectional: its low-rank kernel mixes every"
          " token with every landmark; got causal=True."
      )
    landmarks = soft.segment_mean_landmarks(
        q, num_landmarks=min(q.shape[-3], soft.DEFAULT_NUM_LANDMARKS)
    )
    return soft.soft_attention(
        q, v, landmarks, ridge=soft.STABLE_RIDGE, normalization=normalization
    )
  return fn


def _softmax_kernel_features(kernel):
  def feature_map(x, projection):
    return linear.favor_feature_map(projection, x.shape[-1], kernel=kernel)(x)
  return feature_map


def _deterministic_features(features):
  def feature_map(x, projection):
    del projection
    return features(x)
  return feature_map


def _kernel_attention(feature_map):
  def fn(q, k, v, *, projection, causal):
    return linear.feature_map_attention(
        q, k, v, feature_map=lambda x: feature_map(x, projection),
        causal=causal,
    )
  return fn


def _learned_kernel_attention(name):
  def fn(q, k, v, *, projection, causal, kernel_params):
    return linear.learned_kernel_attention(
        q, k, v, kernel=name, params=kernel_params, noise=projection,
        causal=causal,
    )
  return fn


def _learned_kernel_params(name):
  def init(key, num_heads, dim, num_random_features):
    kernel = learned.get_learned_kernel(name)
    return jax.vmap(lambda k: kernel.init_params(k, dim, num_random_features))(
        jax.random.split(key, num_heads)
    )
  return init


register_projection_sampler("permutation", learned.random_permutations)
register_projection_sampler(
    "orthogonal",
    lambda key, m, d: random.orthogonal_random_projection(
        key, m, d, dtype=jnp.float32
    ),
)
register_projection_sampler(
    "gaussian",
    lambda key, m, d: random.gaussian_random_projection(
        key, m, d, dtype=jnp.float32
    ),
)

# Hyperbolic and trigonometric kernels give 2m features from m rows; half the
# rows keeps their cost equal to positive FAVOR+ with 256 features.
for _spec in (
    AttentionSpec("softmax", _softmax),
    # SOFT with 49 segment-mean landmarks and the stable ridge; modules with
    # a token grid can pass their own landmarks to kattn.attention.soft.
    AttentionSpec("soft", _soft(None), ties_keys_to_queries=True),
    AttentionSpec("soft_norm", _soft("symmetric"), ties_keys_to_queries=True),
    *(
        AttentionSpec(
            name, _kernel_attention(_softmax_kernel_features(kernel)), m,
            "orthogonal", _softmax_kernel_features(kernel),
        )
        for name, kernel, m in (
            ("favor", "positive", 256),
            ("favor_hyperbolic", "hyperbolic", 128),
            ("favor_trig", "trigonometric", 128),
        )
    ),
    *(
        AttentionSpec(
            name, _kernel_attention(_deterministic_features(features)),
            feature_map=_deterministic_features(features),
        )
        for name, features in (
            ("relu", favor.relu_features), ("elu", favor.elu_plus_one_features)
        )
    ),
    # Learned kernels: the "projection" is the noise of the spectral
    # distribution (Gaussian draws, or FastFood's permutations).
    *(
        AttentionSpec(
            name, _learned_kernel_attention(name),
            kernel.default_num_features,
            "permutation" if name.startswith("fastfood") else "gaussian",
            init_kernel_params=_learned_kernel_params(name),
            projection_shape=kernel.noise_shape,
        )
        for name, kernel in learned.LEARNED_KERNELS.items()
    ),
):
  register_attention(_spec)
del _spec
