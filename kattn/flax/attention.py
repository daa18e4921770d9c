"""Multi-head self-attention as a thin Linen wrapper over the pure functions.

The module owns the query, key, value and output projections and calls the
attention picked by name from `kattn.flax.registry`. Random projections are
not parameters: they live in the non-trainable `"random_features"`
collection, drawn once at init, and change only when the training loop calls
`redraw`. Learned-kernel attentions (`"gmm_rks"`, `"fastfood_prf"`, ...) keep
the noise of their spectral distribution there too, so it is fixed between
redraws and evaluation is deterministic, while the distribution's parameters
are trainable params (`"spectral_distribution"`, one set per head).
"""

from __future__ import annotations

from typing import Any, Optional

import flax.core
import flax.linen as nn
import jax
import jax.numpy as jnp

from kattn import _validation
from kattn.flax import registry

RANDOM_FEATURES = "random_features"
PROJECTION_PREFIX = "projection_"
SPECTRAL_DISTRIBUTION = "spectral_distribution"
# Folded into the "params" rng, so that a projection never reuses the key
# stream a parameter initialiser of the same module draws from.
PROJECTION_SALT = 0x52464


class MultiHeadSelfAttention(nn.Module):
  """Multi-head self-attention with the attention mechanism chosen by name.

  Queries, keys and values are `DenseGeneral` projections to
  `[*batch, length, num_heads, qkv_features // num_heads]`; the attention
  output goes through dropout and an output projection back to
  `out_features`. For attentions with random features, the `[m, head_dim]`
  projection (shared by all heads) is stored in the `"random_features"`
  collection under `"projection_<sampler>"`, so `init` returns it beside the
  params and `apply` needs it passed back in.

  Attributes:
    num_heads: number of heads; must divide `qkv_features`.
    attention: a name from `kattn.flax.available_attentions()`.
    num_random_features: projection rows m; None takes the attention's
      default. Ignored by attentions without random features, so a config
      can switch attention by name alone.
    causal: token i attends to tokens j <= i only.
    qkv_features: total width of queries, keys and values; defaults to the
      input width.
    out_features: output width; defaults to the input width.
    dropout_rate: dropout on the attention output, before the output
      projection, applied only when `deterministic=False`.
    dtype: computation dtype; None infers it from the inputs and params.
    param_dtype: dtype of the parameters.
    use_bias: whether the four projections have biases.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> layer = MultiHeadSelfAttention(num_heads=2, num_random_features=16)
    >>> x = jnp.ones((2, 5, 16))
    >>> variables = layer.init(jax.random.key(0), x)
    >>> sorted(variables)
    ['params', 'random_features']
    >>> variables["random_features"]["projection_orthogonal"].shape
    (16, 8)
    >>> layer.apply(variables, x).shape
    (2, 5, 16)
  """

  num_heads: int
  attention: str = "favor"
  num_random_features: Optional[int] = None
  causal: bool = False
  qkv_features: Optional[int] = None
  out_features: Optional[int] = None
  dropout_rate: float = 0.0
  dtype: Any = None
  param_dtype: Any = jnp.float32
  use_bias: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, *, deterministic: bool = True) -> jax.Array:
    """Attends over the length axis.

    Args:
      x: `[*batch, length, width]` inputs.
      deterministic: if False, applies dropout with the `"dropout"` rng.

    Returns:
      `[*batch, length, out_features]` outputs.
    """
    spec = registry.get_attention(self.attention)
    _validation.check_tokens("x", x)
    _validation.check_positive_int("num_heads", self.num_heads)
    width = x.shape[-1]
    qkv_features = _validation.check_optional_positive_int(
        "qkv_features", self.qkv_features
    ) or width
    out_features = _validation.check_optional_positive_int(
        "out_features", self.out_features
    ) or width
    if qkv_features % self.num_heads:
      raise ValueError(
          f"`qkv_features` ({qkv_features}, the input width when unset) must"
          f" be divisible by `num_heads`; got num_heads={self.num_heads}."
      )
    _validation.check_optional_positive_int(
        "num_random_features", self.num_random_features
    )
    head_dim = qkv_features // self.num_heads

    def dense(name, features, axis):
      return nn.DenseGeneral(
          features, axis=axis, use_bias=self.use_bias, dtype=self.dtype,
          param_dtype=self.param_dtype, name=name,
      )

    heads = (self.num_heads, head_dim)
    q = dense("query", heads, -1)(x)
    k = q if spec.ties_keys_to_queries else dense("key", heads, -1)(x)
    v = dense("value", heads, -1)(x)

    projection = random_projection(
        self, spec, self.num_random_features, head_dim
    )

    if spec.name == "softmax" and self.is_mutable_collection("intermediates"):
      # Only softmax has explicit weights worth inspecting (e.g. ConViT's
      # nonlocality); formed only when asked for.
      logits = jnp.einsum("...qhd,...khd->...hqk", q, k) * head_dim**-0.5
      if self.causal:
        length = x.shape[-2]
        logits = jnp.where(
            jnp.tril(jnp.ones((length, length), bool)), logits, -jnp.inf
        )
      self.sow(
          "intermediates", "attention_weights",
          jax.nn.softmax(logits.astype(jnp.float32), axis=-1),
      )
    kernel = {}
    if spec.init_kernel_params is not None:
      kernel["kernel_params"] = spectral_parameters(
          self, spec, self.num_random_features, self.num_heads, head_dim
      )
    out = spec.fn(
        q, k, v, projection=projection, causal=self.causal, **kernel
    )
    out = nn.Dropout(self.dropout_rate)(out, deterministic=deterministic)
    return dense("out", out_features, (-2, -1))(out)


def random_projection(
    module: nn.Module, spec: registry.AttentionSpec,
    num_random_features: Optional[int], dim: int,
) -> Optional[jax.Array]:
  """`module`'s projection for `spec` (`[m, dim]` unless the spec's
  `sample_shape` says otherwise), or None if it needs none.

  Call it inside the module's compact method: the projection is the
  variable `"projection_<sampler>"` of the `"random_features"` collection,
  drawn once at init from the module's `"params"` rng (salted, so it never
  reuses a parameter initialiser's keys), and redrawn only by `redraw`.

  Args:
    module: the bound module that owns the projection.
    spec: the attention, from `registry.get_attention`.
    num_random_features: m, or None for the attention's default.
    dim: the query/key width per head.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> class Features(nn.Module):
    ...   @nn.compact
    ...   def __call__(self, x):
    ...     return random_projection(self, registry.get_attention("favor"),
    ...                              8, x.shape[-1])
    >>> Features().init(jax.random.key(0), jnp.ones(4))[RANDOM_FEATURES][
    ...     "projection_orthogonal"].shape
    (8, 4)
  """
  if spec.projection_sampler is None:
    return None
  sampler = registry.get_projection_sampler(spec.projection_sampler)
  num_features = _default_feature_count(spec, num_random_features)
  shape = spec.sample_shape(num_features, dim)
  return module.variable(
      RANDOM_FEATURES, PROJECTION_PREFIX + spec.projection_sampler,
      lambda: sampler(
          jax.random.fold_in(module.make_rng("params"), PROJECTION_SALT),
          *shape,
      ),
  ).value


def spectral_parameters(
    module: nn.Module, spec: registry.AttentionSpec,
    num_random_features: Optional[int], num_heads: int, dim: int,
):
  """`module`'s per-head spectral parameters for the learned kernel `spec`.

  Call it inside the module's compact method: the parameters are the param
  `"spectral_distribution"`, every leaf with a leading `[num_heads]` axis.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> class Spectrum(nn.Module):
    ...   @nn.compact
    ...   def __call__(self, x):
    ...     return spectral_parameters(
    ...         self, registry.get_attention("gmm_prf"), 8, 2, x.shape[-1])
    >>> p = Spectrum().init(jax.random.key(0), jnp.ones(4))["params"]
    >>> p["spectral_distribution"]["log_variances"].shape
    (2, 2, 4)
  """
  num_features = _default_feature_count(spec, num_random_features)
  return module.param(
      SPECTRAL_DISTRIBUTION,
      lambda key: spec.init_kernel_params(key, num_heads, dim, num_features),
  )


def _default_feature_count(spec, num_random_features) -> int:
  # Only None takes the default: a 0 from a config is an error, not a request
  # for the default.
  if num_random_features is None:
    return spec.num_random_features
  return _validation.check_positive_int(
      "num_random_features", num_random_features
  )


def kernel_feature_map(
    module: nn.Module, spec: registry.AttentionSpec,
    num_random_features: Optional[int], dim: int,
):
  """`spec.feature_map` bound to `module`'s projection (`random_projection`).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> class Features(nn.Module):
    ...   @nn.compact
    ...   def __call__(self, x):
    ...     phi = kernel_feature_map(self, registry.get_attention("favor"),
    ...                              8, x.shape[-1])
    ...     return phi(x).values
    >>> Features().init_with_output(jax.random.key(0), jnp.ones(4))[0].shape
    (8,)
  """
  projection = random_projection(module, spec, num_random_features, dim)
  return lambda x: spec.feature_map(x, projection)


def _sampler_for(path) -> registry.ProjectionSampler:
  name = getattr(path[-1], "key", None)
  where = f"{RANDOM_FEATURES}{jax.tree_util.keystr(path)}"
  if not isinstance(name, str) or not name.startswith(PROJECTION_PREFIX):
    raise ValueError(
        f"Cannot redraw `{where}`: random-feature variables must be named"
        f" '{PROJECTION_PREFIX}<sampler>'; got {name!r}."
    )
  sampler_name = name[len(PROJECTION_PREFIX):]
  if sampler_name not in registry.available_projection_samplers():
    raise ValueError(
        f"Cannot redraw `{where}`: no projection sampler named"
        f" {sampler_name!r} is registered; registered samplers:"
        f" {registry.available_projection_samplers()}."
    )
  return registry.get_projection_sampler(sampler_name)


def redraw(variables, key: jax.Array):
  """Redraws every random projection in `variables` with its own sampler.

  Each leaf of the `"random_features"` collection, named
  `"projection_<sampler>"`, gets a fresh draw of the same shape and dtype from
  that sampler, with key `fold_in(key, i)` for the leaf's index i in the
  flattened collection, so leaves are independent and the result depends only
  on `key`. Other collections are returned as they are; `variables` without
  random features is returned unchanged. Pure, so it can be jitted.

  Args:
    variables: a variables dict (or `FrozenDict`) as returned by `init`.
    key: a `jax.random` key.

  Returns:
    Variables of the same structure with new random projections.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> layer = MultiHeadSelfAttention(num_heads=2, num_random_features=16)
    >>> variables = layer.init(jax.random.key(0), jnp.ones((2, 5, 16)))
    >>> new = jax.jit(redraw)(variables, jax.random.key(1))
    >>> old_w = variables["random_features"]["projection_orthogonal"]
    >>> new_w = new["random_features"]["projection_orthogonal"]
    >>> new_w.shape, bool(jnp.all(new_w != old_w))
    ((16, 8), True)
  """
  if RANDOM_FEATURES not in variables:
    return variables
  leaves, treedef = jax.tree_util.tree_flatten_with_path(
      variables[RANDOM_FEATURES]
  )
  new_leaves = []
  for index, (path, leaf) in enumerate(leaves):
    sampler = _sampler_for(path)
    if jnp.ndim(leaf) != 2:
      raise ValueError(
          f"Cannot redraw `{RANDOM_FEATURES}{jax.tree_util.keystr(path)}`:"
          " expected a projection of shape [num_features, dim]; got shape"
          f" {tuple(jnp.shape(leaf))}."
      )
    num_features, dim = jnp.shape(leaf)
    new_leaves.append(
        sampler(jax.random.fold_in(key, index), num_features, dim).astype(
            jnp.result_type(leaf)
        )
    )
  new = jax.tree_util.tree_unflatten(treedef, new_leaves)
  if isinstance(variables, flax.core.FrozenDict):
    return variables.copy({RANDOM_FEATURES: new})
  return {**variables, RANDOM_FEATURES: new}
