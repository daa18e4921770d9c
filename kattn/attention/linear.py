"""Linear-time kernelized attention, bidirectional and chunked causal.

All entry points share one chunked engine. The sequence is cut into chunks of
`chunk_size` tokens and a `lax.scan` carries the key-value state
S = sum_j phi(k_j) [v_j, 1]^T across chunks (the appended 1 gives the
denominator in the same product). Inside a causal chunk the masked product
tril(phi(Q) phi(K)^T) [V, 1] handles the intra-chunk pairs, so any length
works, with or without a multiple of the chunk.

Two choices make it fast and exact:

* Feature maps run *inside* the scan on one chunk at a time, and the scan body
  is rematerialised in the backward pass. The `[length, heads, m]` feature
  arrays never exist in full, so memory is O(L (d + d_v) + (L / C) m d_v) and
  the work stays in cache.
* Features in log-scale form (`ScaledFeatures`) keep one log-scale per token.
  A query's scale cancels in its own normaliser and is dropped. Key scales are
  referred to a running maximum M_i = max_{j <= i} s_j, rescaling the carried
  state when the maximum grows (as in online softmax). Every constant a query
  sees depends only on keys at or before it, so no future key can leak into a
  causal output, not even through rounding or underflow, and nothing overflows.
"""

from __future__ import annotations

import math
from typing import Callable, Literal, Union

import jax
import jax.numpy as jnp

from kattn import _sharding
from kattn import _validation
from kattn.attention import masking
from kattn.features import favor
from kattn.features import learned

FeatureMap = Callable[[jax.Array], Union[jax.Array, favor.ScaledFeatures]]

DEFAULT_CHUNK_SIZE = 64
DEFAULT_CHUNKS_PER_STEP = 4

SOFTMAX_KERNELS = {
    "positive": favor.positive_softmax_scaled_features,
    "hyperbolic": favor.hyperbolic_softmax_scaled_features,
    "trigonometric": favor.trigonometric_softmax_scaled_features,
}


def _split(features):
  if isinstance(features, favor.ScaledFeatures):
    return features.values, features.log_scale
  return features, None


def _to_blocks(x: jax.Array, block_size: int) -> jax.Array:
  """[B, L, h, d] -> [n, B, T, h, d], zero-padding L up to n * T.

  The block axis leads because `lax.scan` iterates over the leading axis; for
  batch 1 the move is a free reshape.
  """
  batch, length, heads, dim = x.shape
  num_blocks = -(-length // block_size)
  x = jnp.pad(x, ((0, 0), (0, num_blocks * block_size - length), (0, 0), (0, 0)))
  x = x.reshape(batch, num_blocks, block_size, heads, dim)
  return jnp.moveaxis(x, 1, 0)


def _from_blocks(y: jax.Array, length: int) -> jax.Array:
  """[n, B, T, h, d] -> [B, L, h, d]."""
  num_blocks, batch, block_size, heads, dim = y.shape
  y = jnp.moveaxis(y, 0, 1).reshape(batch, num_blocks * block_size, heads, dim)
  return y[:, :length]


def _normalise(numerator_and_denominator: jax.Array) -> jax.Array:
  numerator = numerator_and_denominator[..., :-1]
  denominator = numerator_and_denominator[..., -1:]
  # A denominator can only vanish where every feature product underflowed
  # (then the numerator is zero too) or, for sign-changing features, by
  # cancellation; the floor keeps the output finite in both cases.
  tiny = jnp.finfo(denominator.dtype).tiny
  denominator = jnp.where(jnp.abs(denominator) > tiny, denominator, tiny)
  return numerator / denominator


def _block_layout(length: int, chunk_size: int, chunks_per_step: int):
  """Chunk size C and chunks per scan step G, padding less than one step."""
  chunk_size = min(chunk_size, length)
  num_chunks = -(-length // chunk_size)
  num_steps = -(-num_chunks // chunks_per_step)
  return chunk_size, -(-num_chunks // num_steps)


def _masked_exp(mask, exponent):
  # Masking the exponent (not the result) keeps exp(+large) out of the
  # unselected branch, where it would overflow.
  return jnp.exp(jnp.where(mask, exponent, -jnp.inf))


def _decayed_prefix_sums(decay: jax.Array, x: jax.Array) -> jax.Array:
  """y_0 = x_0, y_g = decay_g y_{g-1} + x_g along axis 2, for every g.

  decay [B, h, n], x [B, h, n, m, e]. y_g combines x_0..x_g only, so
  nothing after g reaches it, neither through rounding (there is no total
  minus a later part) nor as inf or NaN. n is the few chunks of one scan
  step, so the recurrence is unrolled: fewer operations to compile than an
  associative scan.
  """
  y = [x[:, :, 0]]
  for g in range(1, x.shape[2]):
    y.append(decay[:, :, g, None, None] * y[-1] + x[:, :, g])
  return jnp.stack(y, axis=2)


# The two weightings below carry the key log-scales' gradient. Autodiff would
# form it as multiply-then-reduce, which XLA:CPU runs over 10x slower than
# the same contraction written as an einsum (a dot), so their VJPs are
# written out.


@jax.custom_vjp
def _scale_rows(x: jax.Array, log_scale: jax.Array) -> jax.Array:
  """x * exp(log_scale)[..., None]; x [..., n, e], log_scale [..., n]."""
  return x * jnp.exp(log_scale)[..., None]


def _scale_rows_fwd(x, log_scale):
  y = _scale_rows(x, log_scale)
  return y, (y, log_scale)


def _scale_rows_bwd(residuals, g):
  y, log_scale = residuals
  return (
      g * jnp.exp(log_scale)[..., None],
      jnp.einsum("...ne,...ne->...n", g, y),
  )


_scale_rows.defvjp(_scale_rows_fwd, _scale_rows_bwd)


@jax.custom_vjp
def _scale_causal_pairs(
    scores: jax.Array, key_scale: jax.Array, query_reference: jax.Array,
    mask: jax.Array,
) -> jax.Array:
  """scores_ij * exp(key_scale_j - query_reference_i) where mask_ij, else 0.

  scores [..., i, j], key_scale [..., j], query_reference [..., i] (a
  constant: no gradient), mask [i, j].
  """
  # Selected, not multiplied by a 0 weight: a later key's score may be inf
  # or NaN, and 0 * NaN would reach the earlier query.
  return jnp.where(mask, scores * _masked_exp(
      mask, key_scale[..., None, :] - query_reference[..., :, None]
  ), 0.0)


def _scale_causal_pairs_fwd(scores, key_scale, query_reference, mask):
  y = _scale_causal_pairs(scores, key_scale, query_reference, mask)
  return y, (y, key_scale, query_reference, mask)


def _scale_causal_pairs_bwd(residuals, g):
  y, key_scale, query_reference, mask = residuals
  weights = _masked_exp(
      mask, key_scale[..., None, :] - query_reference[..., :, None]
  )
  return (
      jnp.where(mask, g * weights, 0.0),
      jnp.einsum("...ij,...ij->...j", g, y),
      jnp.zeros_like(query_reference),
      None,
  )


_scale_causal_pairs.defvjp(_scale_causal_pairs_fwd, _scale_causal_pairs_bwd)


def _chunk_engine(
    q, k, v, q_map: FeatureMap, k_map: FeatureMap, *, causal, chunk_size,
    chunks_per_step, accum_dtype,
):
  """Shared engine; q, k, v are `[B, L, h, *]` with validated shapes.

  A scan step covers a block of T = G * C tokens: G chunks of C tokens.
  Inside a block everything is batched over the G chunks (the chunk states
  come from an associative scan over the G chunks), so the scan runs L / T
  steps and stores one state per step, while the masked intra-chunk products
  stay C x C.
  """
  q_length, k_length = q.shape[1], k.shape[1]
  out_dtype = jnp.result_type(q, k, v)
  chunk_size, chunks = _block_layout(
      max(q_length, k_length), chunk_size, chunks_per_step
  )
  block_size = chunk_size * chunks
  q_blocks = _to_blocks(q, block_size)
  k_blocks = _to_blocks(k, block_size)
  v_blocks = _to_blocks(v, block_size)
  num_k_blocks = k_blocks.shape[0]
  key_valid = (jnp.arange(num_k_blocks * block_size) < k_length).reshape(
      num_k_blocks, 1, 1, block_size
  )

  def features(feature_map, x):
    """[B, T, h, d] block -> [B, h, T, m] values and [B, h, T] log-scales."""
    values, log_scale = _split(
        feature_map(jnp.swapaxes(x, 1, 2).astype(accum_dtype))
    )
    return values.astype(accum_dtype), log_scale

  def values_and_one(v_block, valid):
    """[B, T, h, d_v] -> [B, h, T, d_v + 1]: the 1 makes the denominator.

    Padded keys get a zero row, so they add to neither sum.
    """
    v_block = jnp.swapaxes(v_block, 1, 2).astype(accum_dtype)
    one = jnp.broadcast_to(valid[..., None], v_block.shape[:-1] + (1,))
    return jnp.concatenate([v_block, one.astype(accum_dtype)], axis=-1)

  def key_features(k_block, valid):
    """Key features; padded keys get log-scale -inf, so weight exactly 0."""
    k_values, k_scale = features(k_map, k_block)
    if k_scale is not None:
      k_scale = jnp.where(valid, k_scale, -jnp.inf)
    return k_values, k_scale

  batch, _, heads, _ = k.shape
  num_features = jax.eval_shape(
      lambda x: features(k_map, x)[0], k_blocks[0]
  ).shape[-1]
  # Inside `jax.shard_map` the scans' initial carries must vary over the
  # mesh axes of what the carries are computed from: the state from keys
  # and values, the running max from keys.
  state = _sharding.match_varying(
      jnp.zeros((batch, heads, num_features, v.shape[-1] + 1), accum_dtype),
      k, v,
  )
  # Finite, so that exp(initial - initial) is 1, not nan.
  running_max = _sharding.match_varying(
      jnp.full((batch, heads), jnp.finfo(accum_dtype).min, accum_dtype), k
  )
  within_chunk = jnp.tril(jnp.ones((chunk_size, chunk_size), bool))

  def by_chunk(x):
    """[B, h, T, ...] -> [B, h, G, C, ...]."""
    return x.reshape(x.shape[:2] + (chunks, chunk_size) + x.shape[3:])

  # Layouts inside a step: features [B, h, G, C, m], log-scales and maxima
  # [B, h, G, C], chunk states [B, h, G, m, d_v + 1], carried state
  # [B, h, m, d_v + 1], running max [B, h]. Key scales multiply the
  # (d_v + 1)-wide rows [v_j, 1] rather than the m-wide features: fewer
  # multiplies, and their gradient reduces over d_v + 1, not m.

  def causal_step(carry, block):
    state, running_max = carry
    q_block, k_block, v_block, valid = block
    values = by_chunk(values_and_one(v_block, valid))
    q_values, _ = features(q_map, q_block)
    k_values, k_scale = key_features(k_block, valid)
    q_values, k_values = by_chunk(q_values), by_chunk(k_values)
    scores = jnp.einsum("bhgim,bhgjm->bhgij", q_values, k_values)
    # The carried state is source 0, chunk g's state source g + 1; the state
    # before chunk g sums sources 0..g: an exclusive prefix, never the total
    # minus later chunks, so no later key reaches an earlier query, neither
    # by rounding nor as inf or NaN.
    plain = k_scale is None
    if plain:
      # A pair's weight is its score; a cumulative sum's g-th total combines
      # sources 0..g only.
      weights = jnp.where(within_chunk, scores, 0.0)
      chunk_kv = jnp.einsum("bhgjm,bhgje->bhgme", k_values, values)
      sources = jnp.concatenate([state[:, :, None], chunk_kv], axis=2)
      prefix_states = jnp.cumsum(sources, axis=2)
      new_max = running_max
    else:
      # prefix[i] = max of key log-scales up to token i (the query's own
      # reference); ends[g] = prefix at the end of chunk g, the reference of
      # chunk g's state; starts[g] = the reference of the state before it.
      prefix = jax.lax.stop_gradient(
          jnp.maximum(running_max[..., None], jax.lax.cummax(k_scale, axis=2))
      )
      prefix, k_scale = by_chunk(prefix), by_chunk(k_scale)
      ends = prefix[..., -1]
      chunk_kv = jnp.einsum(
          "bhgjm,bhgje->bhgme", k_values,
          _scale_rows(values, k_scale - ends[..., None]),
      )
      sources = jnp.concatenate([state[:, :, None], chunk_kv], axis=2)
      # Each source is rescaled from its reference to the next one's.
      source_ends = jnp.concatenate([running_max[..., None], ends], axis=-1)
      decay = jnp.exp(source_ends[..., :-1] - source_ends[..., 1:])
      decay = jnp.concatenate([jnp.zeros_like(decay[..., :1]), decay], axis=-1)
      prefix_states = _decayed_prefix_sums(decay, sources)
      starts, new_max = source_ends[..., :-1], ends[..., -1]
      weights = _scale_causal_pairs(scores, k_scale, prefix, within_chunk)
    inter = jnp.einsum("bhgim,bhgme->bhgie", q_values, prefix_states[:, :, :-1])
    if not plain:
      inter = inter * jnp.exp(starts[..., None] - prefix)[..., None]
    # The masked product multiplies every pair: a later inf or NaN value
    # (a later chunk's reaches this one only through the states) is kept
    # out of it and its NaN put back for the queries at or after it.
    finite_values, seen = masking.split_non_finite_values(values, axis=3)
    out = inter + masking.restore_non_finite(
        jnp.einsum("bhgij,bhgje->bhgie", weights, finite_values), seen
    )
    out = out.reshape(out.shape[:2] + (block_size, out.shape[-1]))
    new_state = prefix_states[:, :, -1]
    return (new_state, new_max), jnp.swapaxes(_normalise(out), 1, 2)

  def key_step(carry, block):
    state, running_max = carry
    k_block, v_block, valid = block
    values = values_and_one(v_block, valid)
    k_values, k_scale = key_features(k_block, valid)
    if k_scale is None:
      new_state = state + jnp.einsum("bhjm,bhje->bhme", k_values, values)
      return (new_state, running_max), None
    new_max = jax.lax.stop_gradient(
        jnp.maximum(running_max, jnp.max(k_scale, axis=-1))
    )
    values = _scale_rows(values, k_scale - new_max[..., None])
    new_state = jnp.exp(running_max - new_max)[..., None, None] * state
    new_state = new_state + jnp.einsum("bhjm,bhje->bhme", k_values, values)
    return (new_state, new_max), None

  # Rematerialise each step in the backward pass: features are recomputed
  # from the block instead of being stored for the whole sequence.
  remat = lambda f: jax.checkpoint(f, prevent_cse=False)
  if causal:
    _, out = jax.lax.scan(
        remat(causal_step), (state, running_max),
        (q_blocks, k_blocks, v_blocks, key_valid),
    )
  else:
    (state, _), _ = jax.lax.scan(
        remat(key_step), (state, running_max), (k_blocks, v_blocks, key_valid)
    )

    def query_step(q_block):
      q_values, _ = features(q_map, q_block)
      out = jnp.einsum("bhim,bhme->bhie", q_values, state)
      return jnp.swapaxes(_normalise(out), 1, 2)

    out = jax.lax.map(remat(query_step), q_blocks)
  return _from_blocks(out, q_length).astype(out_dtype)


def _run(
    q, k, v, q_map, k_map, *, causal, chunk_size, chunks_per_step, accum_dtype,
    names,
):
  _validation.check_attention_inputs(q, k, v, q_name=names[0], k_name=names[1])
  _validation.check_positive_int("chunk_size", chunk_size)
  _validation.check_positive_int("chunks_per_step", chunks_per_step)
  if causal:
    _validation.check_same(
        "Causal attention lengths (axis -3)", names,
        (q.shape[-3], k.shape[-3]),
    )
  batch_shape = q.shape[:-3]
  flat = lambda x: x.reshape((math.prod(batch_shape),) + x.shape[-3:])
  out = _chunk_engine(
      flat(q), flat(k), flat(v), q_map, k_map, causal=causal,
      chunk_size=chunk_size, chunks_per_step=chunks_per_step,
      accum_dtype=accum_dtype,
  )
  out = out.reshape(batch_shape + out.shape[-3:])
  return out


def linear_attention(
    q_features: jax.Array,
    k_features: jax.Array,
    v: jax.Array,
    *,
    causal: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    chunks_per_step: int = DEFAULT_CHUNKS_PER_STEP,
    accum_dtype=jnp.float32,
) -> jax.Array:
  """Kernelized attention from precomputed features, in linear time.

  out_i = phi(q_i)^T S / phi(q_i)^T z with S = sum_j phi(k_j) v_j^T and
  z = sum_j phi(k_j), the sums running over j <= i when causal.

  Args:
    q_features: `[*batch, q_length, heads, m]` query features.
    k_features: `[*batch, k_length, heads, m]` key features.
    v: `[*batch, k_length, heads, v_dim]` values.
    causal: query i sees keys j <= i (needs q_length == k_length).
    chunk_size: C, tokens per chunk: causal attention computes C x C masked
      products inside chunks and carries states across them. Any length
      works, multiple of C or not.
    chunks_per_step: G, chunks handled together in one scan step (batched,
      so the scan has L / (C G) steps). Tuning only; results are the same.
    accum_dtype: dtype of features, sums and normalisers; outputs come back
      in the inputs' dtype.

  Returns:
    `[*batch, q_length, heads, v_dim]` outputs.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> qf = jax.nn.relu(jax.random.normal(jax.random.key(0), (2, 9, 4, 16))) + 1e-3
    >>> v = jnp.ones((2, 9, 4, 8))
    >>> out = linear_attention(qf, qf, v, causal=True, chunk_size=4)
    >>> bool(jnp.allclose(out, 1.0, atol=1e-5))
    True

  References:
    Katharopoulos et al., "Transformers are RNNs", ICML 2020.
  """
  identity = lambda x: x
  return _run(
      q_features, k_features, v, identity, identity, causal=causal,
      chunk_size=chunk_size, chunks_per_step=chunks_per_step,
      accum_dtype=accum_dtype, names=("q_features", "k_features"),
  )


def feature_map_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    feature_map: FeatureMap,
    causal: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    chunks_per_step: int = DEFAULT_CHUNKS_PER_STEP,
    accum_dtype=jnp.float32,
) -> jax.Array:
  """Linear attention with `feature_map` applied chunk by chunk.

  Same result as `linear_attention(feature_map(q), feature_map(k), v)`, but
  the features are computed inside the chunked scan (never stored for the
  whole sequence), and a map returning `ScaledFeatures` is stabilised exactly.

  Args:
    q: `[*batch, q_length, heads, dim]` queries.
    k: `[*batch, k_length, heads, dim]` keys.
    v: `[*batch, k_length, heads, v_dim]` values.
    feature_map: `[..., dim] -> [..., m]` array or `ScaledFeatures`.
    causal: query i sees keys j <= i.
    chunk_size: C, tokens per chunk; see `linear_attention`.
    chunks_per_step: G, chunks per scan step; see `linear_attention`.
    accum_dtype: dtype of features, sums and normalisers.

  Returns:
    `[*batch, q_length, heads, v_dim]` outputs.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from kattn.features.favor import elu_plus_one_features
    >>> x = jax.random.normal(jax.random.key(0), (10, 2, 8))
    >>> feature_map_attention(x, x, x, feature_map=elu_plus_one_features).shape
    (10, 2, 8)
  """
  return _run(
      q, k, v, feature_map, feature_map, causal=causal, chunk_size=chunk_size,
      chunks_per_step=chunks_per_step, accum_dtype=accum_dtype,
      names=("q", "k"),
  )


def favor_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    projection: jax.Array,
    kernel: Literal["positive", "hyperbolic", "trigonometric"] = "positive",
    causal: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    chunks_per_step: int = DEFAULT_CHUNKS_PER_STEP,
    accum_dtype=jnp.float32,
) -> jax.Array:
  """FAVOR+ attention: softmax attention estimated with random features.

  Queries and keys are scaled by dim^{-1/4}, so phi(q~)^T phi(k~) estimates
  exp(q^T k / sqrt(dim)), the unnormalised softmax weight.

  Args:
    q: `[*batch, q_length, heads, dim]` queries.
    k: `[*batch, k_length, heads, dim]` keys.
    v: `[*batch, k_length, heads, v_dim]` values.
    projection: `[m, dim]` random projection, e.g. from
      `orthogonal_random_projection(key, m, dim)`; redraw it by passing a new
      one.
    kernel: `"positive"` (FAVOR+, default), `"hyperbolic"` (antithetic
      positive, 2m features) or `"trigonometric"` (sin/cos, 2m features).
    causal: query i sees keys j <= i.
    chunk_size: C, tokens per chunk; see `linear_attention`.
    chunks_per_step: G, chunks per scan step; see `linear_attention`.
    accum_dtype: dtype of features, sums and normalisers.

  Returns:
    `[*batch, q_length, heads, v_dim]` outputs.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from kattn.features.random import orthogonal_random_projection
    >>> q = 0.3 * jax.random.normal(jax.random.key(0), (1, 100, 2, 16))
    >>> w = orthogonal_random_projection(jax.random.key(1), 128, 16)
    >>> favor_attention(q, q, q, projection=w, causal=True).shape
    (1, 100, 2, 16)

  References:
    Choromanski et al., "Rethinking Attention with Performers", ICLR 2021.
  """
  _validation.check_attention_inputs(q, k, v)
  feature_map = favor_feature_map(projection, q.shape[-1], kernel=kernel)
  return feature_map_attention(
      q, k, v, feature_map=feature_map, causal=causal, chunk_size=chunk_size,
      chunks_per_step=chunks_per_step, accum_dtype=accum_dtype,
  )


def favor_feature_map(
    projection: jax.Array,
    dim: int,
    *,
    kernel: Literal["positive", "hyperbolic", "trigonometric"] = "positive",
) -> Callable[[jax.Array], favor.ScaledFeatures]:
  """The feature map of `favor_attention`, for attentions built on it.

  Returns x -> `SOFTMAX_KERNELS[kernel](x * dim^{-1/4}, projection)`, so that
  feature products estimate exp(q^T k / sqrt(dim)), after checking `kernel`
  and that `projection` is `[m, dim]`.

  Args:
    projection: `[m, dim]` random projection.
    dim: the query/key dim the map will be applied to.
    kernel: `"positive"`, `"hyperbolic"` or `"trigonometric"`.

  Returns:
    A map `[..., dim] -> ScaledFeatures` in the inputs' dtype.

  Examples:
    >>> import jax.numpy as jnp
    >>> phi = favor_feature_map(jnp.eye(4), 4)
    >>> phi(jnp.ones((3, 4))).values.shape
    (3, 4)
  """
  if kernel not in SOFTMAX_KERNELS:
    raise ValueError(
        f"`kernel` must be one of {sorted(SOFTMAX_KERNELS)}; got {kernel!r}."
    )
  _validation.check_positive_int("dim", dim)
  if jnp.ndim(projection) != 2 or jnp.shape(projection)[-1] != dim:
    raise ValueError(
        f"`projection` must have shape [num_features, {dim}] to match the"
        f" query/key dim; got {tuple(jnp.shape(projection))}."
    )
  scale = dim ** -0.25
  scaled_features = SOFTMAX_KERNELS[kernel]
  return lambda x: scaled_features(x * scale, projection.astype(x.dtype))


def learned_kernel_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    kernel: str,
    params,
    noise: jax.Array,
    causal: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    chunks_per_step: int = DEFAULT_CHUNKS_PER_STEP,
    accum_dtype=jnp.float32,
) -> jax.Array:
  """Linear attention with a learned spectral kernel, one distribution a head.

  Queries and keys are scaled by dim^{-1/4} (as in FAVOR+), then head h uses
  the feature map of `kernel` with its own parameters `params[h]` and the
  shared `noise`. Gradients reach the parameters through the fixed noise;
  pass new noise to redraw.

  Args:
    q: `[*batch, q_length, heads, dim]` queries.
    k: `[*batch, k_length, heads, dim]` keys.
    v: `[*batch, k_length, heads, v_dim]` values.
    kernel: a name from `kattn.features.learned.LEARNED_KERNELS`, e.g.
      `"gmm_rks"` or `"fastfood_prf"`.
    params: the kernel's parameters, every leaf with a leading `[heads]`
      axis (`kattn.features.learned.init_learned_kernel`).
    noise: the kernel's noise (Gaussian draws, or FastFood permutations).
    causal: query i sees keys j <= i.
    chunk_size: C, tokens per chunk; see `linear_attention`.
    chunks_per_step: G, chunks per scan step; see `linear_attention`.
    accum_dtype: dtype of features, sums and normalisers.

  Returns:
    `[*batch, q_length, heads, v_dim]` outputs.

  Examples:
    >>> import jax
    >>> from kattn.features.learned import init_learned_kernel
    >>> q = jax.random.normal(jax.random.key(0), (1, 50, 2, 8))
    >>> params, noise = init_learned_kernel(
    ...     "gmm_prf", jax.random.key(1), num_heads=2, dim=8, num_features=32)
    >>> learned_kernel_attention(q, q, q, kernel="gmm_prf", params=params,
    ...                          noise=noise, causal=True).shape
    (1, 50, 2, 8)

  References:
    Chowdhury et al., "Learning the Transformer Kernel", TMLR 2022.
  """
  _validation.check_attention_inputs(q, k, v)
  spec = learned.get_learned_kernel(kernel)
  heads, dim = q.shape[-2], q.shape[-1]
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    if jnp.ndim(leaf) < 1 or jnp.shape(leaf)[0] != heads:
      raise ValueError(
          f"`params{jax.tree_util.keystr(path)}` must have a leading axis of"
          f" {heads} heads to match q; got shape {tuple(jnp.shape(leaf))}."
      )
  phi = spec.multi_head_feature_map(params, noise)
  scale = dim ** -0.25
  # The engine applies feature maps to [batch, heads, length, dim] blocks,
  # so the per-head map batches every head's features in one call; mapping
  # whole attentions over the heads instead ran about 1.7x slower on CPU.
  return _run(
      q, k, v, lambda x: phi(x * scale), lambda x: phi(x * scale),
      causal=causal, chunk_size=chunk_size, chunks_per_step=chunks_per_step,
      accum_dtype=accum_dtype, names=("q", "k"),
  )
