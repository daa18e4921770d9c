"""Speed and memory of softmax, FAVOR+, SOFT, learned kernels and a scan.

Usage:

  python -m experiments.bench_attention              # lengths 256 ... 65536
  python -m experiments.bench_attention --quick      # lengths 256 and 1024
  python -m experiments.bench_attention --check_only # scan baseline vs kattn
  python -m experiments.bench_attention --suite relative  # FFT-RPE, 2-D grids
  python -m experiments.bench_attention --mechanisms=soft,favor \
      --paired_lengths=16384                         # SOFT against FAVOR+
  python -m experiments.bench_attention --suite learned  # learned vs FAVOR+

Every (mechanism, mode, length) runs in a fresh subprocess, so each one starts
from a clean allocator and has its own peak-memory counter: on CPU the peak
resident set of the subprocess (`VmHWM`), on GPU the device allocator's
`peak_bytes_in_use`. Both are also given as an increment over the memory held
right after JAX start-up and input creation. Configurations whose estimated
memory exceeds `--memory_limit_gib` are skipped before launch; a subprocess
that crashes, runs out of memory or times out is reported, never fatal.

Times are the min and median of `--repeats` runs after one warm-up run of the
ahead-of-time compiled function; compile time is reported apart. The ratios
the README quotes are timed again side by side: both mechanisms compiled in
one process, their runs interleaved for `--paired_rounds` rounds, so that a
slow spell of a shared machine hits both. Achieved
GFLOP/s use the matmul-only `FLOP_MODEL` and are compared with a measured
square-matmul ceiling.

SOFT (`kattn.attention.soft.soft_attention`, bidirectional only) runs with
`Settings.num_landmarks` segment-mean landmarks of the queries, the stable
ridge and `Settings.num_iterations` Newton-Schulz steps, as the registry's
"soft" attention. Its keys are its queries, so it ignores k (whose gradient
in fwd_bwd is zero) and the random projection. Its memory above the runtime
should grow linearly in L; the run prints the growth exponent between
consecutive lengths and a verdict (`memory_growth`).

The learned suite (`--suite learned`) times the six learned spectral kernels
of `kattn.features.learned.LEARNED_KERNELS` (`learned_kernel_attention`,
bidirectional) against bidirectional FAVOR+ at L = 1024, 4096 and 16384,
fwd_bwd by default: the gradient of sum(out) w.r.t. q, k, v and the spectral
parameters (one distribution a head, from `init_learned_kernel` with the
benchmark's heads and head dim). Each kernel draws its
`default_num_features` m unless `--learned_num_features` is given (RKS
kernels give 2 m + 1 features, PRF kernels m); FAVOR+ keeps
`--num_features`. The ratios learned / FAVOR+ are timed again side by side,
one process per pair and length.

The relative suite (`--suite relative`) follows the same conventions for 2-D
relative position biases on square side x side grids: FFT-RPE
(`relative_favor_attention`, padded and torus tables) against quadratic
softmax with the same bias (`relative_softmax_attention`), with time /
(L log2 L) per grid so that L log L growth can be read off.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Optional

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import psutil

import kattn
from kattn import _memory
from kattn.attention import linear
from kattn.attention import soft
from kattn.features import learned
from kattn.positional import toeplitz

MECHANISMS = (
    "softmax", "softmax_cudnn", "favor", "favor_causal", "scan_causal", "soft"
)
# The learned spectral kernels, bidirectional; run by the learned suite.
LEARNED_MECHANISMS = tuple(learned.LEARNED_KERNELS)
LEARNED_SUITE_MECHANISMS = ("favor",) + LEARNED_MECHANISMS
MODES = ("fwd", "fwd_bwd")
LENGTHS = (256, 1024, 4096, 16384, 65536)
QUICK_LENGTHS = (256, 1024)
# Ratios the README quotes, timed side by side in one process.
PAIRED_COMPARISONS = (
    ("scan_causal", "favor_causal", "fwd_bwd"),
    ("favor_causal", "favor", "fwd_bwd"),
    ("soft", "favor", "fwd_bwd"),
)
# The learned suite's ratios: each learned kernel against FAVOR+, in the
# modes the suite runs (fwd_bwd by default).
LEARNED_PAIRED_COMPARISONS = tuple(
    (name, "favor", mode) for mode in MODES for name in LEARNED_MECHANISMS
)
LEARNED_LENGTHS = (1024, 4096, 16384)
LEARNED_MODES = ("fwd_bwd",)
PAIRED_LENGTHS = (4096, 16384)
QUICK_PAIRED_LENGTHS = (1024,)
PAIRED_ROUNDS = 7
CEILING_SIZES = (1024, 2048, 4096)
# Mechanisms whose memory growth in L the run checks.
MEMORY_GROWTH_MECHANISMS = ("soft",)
# Growth exponents up to this count as at most linear. It separates linear
# from quadratic growth (exponent 2) with room for measurement noise; an
# L log L term (about 1.1 at these lengths) would pass.
LINEAR_EXPONENT_LIMIT = 1.25

FLOP_MODEL = (
    "matmul FLOPs only (2*M*N*K; exp and other elementwise work not counted,"
    " no recomputation counted); B batch, h heads, L length, d head dim,"
    " d_v value dim, m features, C chunk size."
    " softmax, softmax_cudnn: fwd 4*B*h*L^2*d (2*B*h*L^2*(d+d_v) in general),"
    " fwd_bwd 3x fwd."
    " favor (bidirectional): fwd 2*(2*B*h*L*m*d) [q, k feature projections]"
    " + 2*(2*B*h*L*m*(d_v+1)) [key-value state with denominator column, query"
    " readout]; fwd_bwd fwd + 2*(2*B*h*L*m*d) + 2*2*(2*B*h*L*m*(d_v+1))."
    " favor_causal: favor + 2*B*h*L*C*(m+d_v+1) [intra-chunk C x C blocks],"
    " that term 3x for fwd_bwd. scan_causal: as favor."
    " soft (n landmarks, T Newton-Schulz steps): fwd 2*B*h*L*n*d"
    " [segment-mean landmarks] + 2*B*h*(L*n*d + n^2*d) [kernels P, A]"
    " + 2*B*h*(2*L*n*d_v + n^2*d_v) [P^T v, A^+ (P^T v), P readout]"
    " + 4*B*h*T*n^3 [Newton-Schulz]; fwd_bwd fwd + the landmark term"
    " + 2x the kernel and product terms + 4*B*h*n^3 [pseudo-inverse VJP,"
    " applied once]."
    " learned kernels (bidirectional, m draws, F = 2m+1 features for *_rks,"
    " m for *_prf, D = d padded to a power of two, generator hidden width"
    " H = 2d): fwd 2*(2*B*h*L*m*d) [q, k projections; fastfood_*:"
    " 2*(2*B*h*L*m*log2 D), two Walsh-Hadamard transforms of D log2 D adds"
    " per block of D] + 2*(2*B*h*L*F*(d_v+1)) [state and readout] + the"
    " frequencies, once per head: gmm_rks 2*h*m*d^2, generative_*"
    " 2*h*m*d*(2H+d), none for gmm_prf and fastfood_*; fwd_bwd fwd + 2x the"
    " projections (1x for fastfood_*, whose learned diagonals get elementwise"
    " gradients) + 2x state and readout + frequency gradients gmm_rks"
    " 2*h*m*d^2, generative_* 2*h*m*d*(3H+d)."
)

# The generator's hidden width, in head dims: `init_generative_params`'s
# default, which `init_learned_kernel` uses.
_GENERATOR_HIDDEN_FACTOR = 2
# JAX, XLA and the compiled program hold this much before any attention
# buffer exists (0.33 to 0.39 GiB RSS measured on CPU); rounded up.
_RUNTIME_BYTES = 1 << 29
# The parent samples a CPU subprocess's resident set this often and kills it
# above the limit, before the kernel's OOM killer picks a victim on a shared
# machine.
_RSS_POLL_S = 0.05
_RESULT_MARKER = "BENCH_RESULT "
_CHECK_TOLERANCE = 1e-4
_CEILING_RUNS = 3
_MIB = 1 << 20
_GIB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Settings:
  """Problem shape and timing settings shared by every configuration."""

  batch: int = 1
  heads: int = 8
  head_dim: int = 64
  num_features: int = 256
  dtype: str = "float32"
  chunk_size: int = linear.DEFAULT_CHUNK_SIZE
  chunks_per_step: int = linear.DEFAULT_CHUNKS_PER_STEP
  repeats: int = 3
  seed: int = 0
  # SOFT: landmarks n, Newton-Schulz steps and the ridge on A.
  num_landmarks: int = soft.DEFAULT_NUM_LANDMARKS
  num_iterations: int = soft.DEFAULT_NUM_ITERATIONS
  ridge: float = soft.STABLE_RIDGE
  # Learned kernels: draws m of every one; None takes each kernel's own
  # `default_num_features`. FAVOR+ uses `num_features`.
  learned_num_features: Optional[int] = None


# The per-token scan baseline (google-research performer style).


def _time_major(x):
  """[*batch, L, h, c] -> [L, *batch, h, c]: `lax.scan` walks the lead axis."""
  return jnp.moveaxis(x, -3, 0)


def _causal_prefix_forward(q_features, k_features, values):
  """R_i = phi(q_i)^T S_i with S_i = sum_{j<=i} phi(k_j) values_j^T."""
  qs, ks, vs = map(_time_major, (q_features, k_features, values))
  state = jnp.zeros(ks.shape[1:] + vs.shape[-1:], ks.dtype)

  def step(state, token):
    q_i, k_i, v_i = token
    state = state + jnp.einsum("...m,...e->...me", k_i, v_i)
    return state, jnp.einsum("...m,...me->...e", q_i, state)

  state, out = jax.lax.scan(step, state, (qs, ks, vs))
  return jnp.moveaxis(out, 0, -3), state


@jax.custom_vjp
def causal_prefix_products(q_features, k_features, values):
  """Causal prefix products by a per-token scan, with a scan backward pass.

  Without the custom VJP, reverse-mode `lax.scan` would store the m x e state
  at every token (O(L m e) memory); the backward scan instead starts from the
  final state and recovers each earlier one by subtraction.

  Args:
    q_features: `[*batch, L, h, m]` query features phi(q).
    k_features: `[*batch, L, h, m]` key features phi(k).
    values: `[*batch, L, h, e]` rows to sum, e.g. [v, 1].

  Returns:
    `[*batch, L, h, e]` with row i = phi(q_i)^T sum_{j<=i} phi(k_j) values_j^T.
  """
  return _causal_prefix_forward(q_features, k_features, values)[0]


def _causal_prefix_fwd(q_features, k_features, values):
  out, state = _causal_prefix_forward(q_features, k_features, values)
  return out, (q_features, k_features, values, state)


def _causal_prefix_bwd(residuals, out_grad):
  """Reverse scan: q_bar_i = S_i g_i, k_bar_i = G_i v_i, v_bar_i = G_i^T k_i.

  G_i = sum_{j>=i} phi(q_j) g_j^T collects the query side from the end, and
  S_{i-1} = S_i - phi(k_i) v_i^T walks the key state back from S_L.
  """
  q_features, k_features, values, final_state = residuals
  tokens = tuple(map(_time_major, (q_features, k_features, values, out_grad)))

  def step(carry, token):
    state, query_grads = carry
    q_i, k_i, v_i, g_i = token
    q_bar = jnp.einsum("...me,...e->...m", state, g_i)
    query_grads = query_grads + jnp.einsum("...m,...e->...me", q_i, g_i)
    k_bar = jnp.einsum("...me,...e->...m", query_grads, v_i)
    v_bar = jnp.einsum("...me,...m->...e", query_grads, k_i)
    state = state - jnp.einsum("...m,...e->...me", k_i, v_i)
    return (state, query_grads), (q_bar, k_bar, v_bar)

  carry = (final_state, jnp.zeros_like(final_state))
  _, grads = jax.lax.scan(step, carry, tokens, reverse=True)
  return tuple(jnp.moveaxis(g, 0, -3) for g in grads)


causal_prefix_products.defvjp(_causal_prefix_fwd, _causal_prefix_bwd)


def scan_causal_favor(q, k, v, projection):
  """Causal FAVOR+ by a per-token prefix-sum scan: the baseline kattn beats.

  The denominator state z = sum_j phi(k_j) rides along as the last column of
  the key-value state (v_j extended by a 1), as in kattn, so both do the same
  matmuls. Features and sums are float32, as kattn's default `accum_dtype`.

  Args:
    q: `[*batch, L, h, d]` queries.
    k: `[*batch, L, h, d]` keys.
    v: `[*batch, L, h, d_v]` values.
    projection: `[m, d]` random projection.

  Returns:
    `[*batch, L, h, d_v]` outputs in the dtype of q.
  """
  scale = q.shape[-1] ** -0.25
  feature = lambda x: kattn.positive_softmax_features(
      x.astype(jnp.float32) * scale, projection.astype(jnp.float32)
  )
  v = v.astype(jnp.float32)
  values = jnp.concatenate([v, jnp.ones(v.shape[:-1] + (1,), v.dtype)], -1)
  out = causal_prefix_products(feature(q), feature(k), values)
  return (out[..., :-1] / out[..., -1:]).astype(q.dtype)


def check_scan_causal(
    *, batch=2, length=45, heads=2, head_dim=16, num_features=32, chunk_size=8,
    seed=0,
) -> dict:
  """Relative errors of `scan_causal_favor` vs kattn's causal FAVOR+.

  The length is not a multiple of the chunk and spans several scan steps, so
  kattn's padding and carried state are exercised too. Gradients are of a
  random projection of the output (a plain sum would hide some errors).

  Returns:
    `{"out", "grad_q", "grad_k", "grad_v"}`: max |a - b| / max |b| each.
  """
  keys = jax.random.split(jax.random.key(seed), 5)
  shape = (batch, length, heads, head_dim)
  q, k, v, weights = (jax.random.normal(key, shape) for key in keys[:4])
  projection = kattn.orthogonal_random_projection(
      keys[4], num_features, head_dim
  )
  reference = lambda q, k, v: kattn.favor_attention(
      q, k, v, projection=projection, causal=True, chunk_size=chunk_size
  )
  baseline = lambda q, k, v: scan_causal_favor(q, k, v, projection)

  def value_and_grads(attend):
    loss = lambda q, k, v: jnp.sum(attend(q, k, v) * weights)
    return attend(q, k, v), jax.grad(loss, argnums=(0, 1, 2))(q, k, v)

  (ref_out, ref_grads), (out, grads) = map(
      value_and_grads, (reference, baseline)
  )
  relative = lambda a, b: float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
  errors = {"out": relative(out, ref_out)}
  for name, grad, ref_grad in zip(("q", "k", "v"), grads, ref_grads):
    errors[f"grad_{name}"] = relative(grad, ref_grad)
  return errors


# Models: FLOPs and memory.


def _check_names(mechanism: str, mode: str) -> None:
  if mechanism not in MECHANISMS + LEARNED_MECHANISMS:
    raise ValueError(
        f"`mechanism` must be one of {MECHANISMS + LEARNED_MECHANISMS}; got"
        f" {mechanism!r}."
    )
  if mode not in MODES:
    raise ValueError(f"`mode` must be one of {MODES}; got {mode!r}.")


def mechanism_num_features(mechanism: str, settings: Settings) -> int:
  """m of `mechanism`: a learned kernel's draws, else FAVOR+'s features.

  Args:
    mechanism: one of `MECHANISMS` or `LEARNED_MECHANISMS`.
    settings: `learned_num_features` (None: the kernel's own default) for a
      learned kernel, `num_features` for every other mechanism.

  Returns:
    m, the number of random draws (projections) per head.

  Examples:
    >>> mechanism_num_features("gmm_rks", Settings())
    128
    >>> mechanism_num_features("gmm_rks", Settings(learned_num_features=64))
    64
    >>> mechanism_num_features("favor", Settings(learned_num_features=64))
    256
  """
  if mechanism not in LEARNED_MECHANISMS:
    return settings.num_features
  if settings.learned_num_features is None:
    return learned.get_learned_kernel(mechanism).default_num_features
  return settings.learned_num_features


def learned_feature_count(mechanism: str, num_draws: int) -> int:
  """Features per token of a learned kernel with m draws.

  RKS kernels give [cos, sin, constant], 2 m + 1 features; PRF kernels m.

  Examples:
    >>> learned_feature_count("fastfood_rks", 128)
    257
    >>> learned_feature_count("gmm_prf", 256)
    256
  """
  if mechanism not in LEARNED_MECHANISMS:
    raise ValueError(
        f"`mechanism` must be one of {LEARNED_MECHANISMS}; got {mechanism!r}."
    )
  return 2 * num_draws + 1 if mechanism.endswith("_rks") else num_draws


def check_learned_suite(
    mechanisms, *, head_dim: int, learned_num_features: Optional[int] = None
) -> tuple[str, ...]:
  """The learned suite's mechanisms, checked before any subprocess starts.

  Args:
    mechanisms: names from `LEARNED_SUITE_MECHANISMS`, or None for all.
    head_dim: d, which FastFood pads to a power of two.
    learned_num_features: m for every learned kernel, or None for their
      defaults.

  Returns:
    The mechanisms, in the given order.

  Raises:
    ValueError: for a name outside `LEARNED_SUITE_MECHANISMS`, or an m a
      selected kernel cannot draw (FastFood needs a multiple of the padded
      head dim, a GMM a multiple of its components).

  Examples:
    >>> check_learned_suite(["favor", "gmm_rks"], head_dim=64)
    ('favor', 'gmm_rks')
    >>> check_learned_suite(["favor", "gmm"], head_dim=64)
    Traceback (most recent call last):
    ...
    ValueError: `mechanisms` must be names from (...); got unknown ['gmm'].
  """
  mechanisms = tuple(
      LEARNED_SUITE_MECHANISMS if mechanisms is None else mechanisms
  )
  unknown = [m for m in mechanisms if m not in LEARNED_SUITE_MECHANISMS]
  if unknown:
    raise ValueError(
        f"`mechanisms` must be names from {LEARNED_SUITE_MECHANISMS}; got"
        f" unknown {unknown}."
    )
  if learned_num_features is not None:
    for mechanism in mechanisms:
      if mechanism not in LEARNED_MECHANISMS:
        continue
      try:
        learned.get_learned_kernel(mechanism).noise_shape(
            learned_num_features, head_dim
        )
      except ValueError as error:
        raise ValueError(
            f"`learned_num_features` {learned_num_features} does not suit"
            f" {mechanism} at head dim {head_dim}: {error}"
        ) from error
  return mechanisms


def _learned_flops(
    mechanism: str, mode: str, *, tokens: int, heads: int, head_dim: int,
    value_dim: int, num_draws: int,
) -> int:
  """`flop_model` for a learned kernel; see `FLOP_MODEL`."""
  num_features = learned_feature_count(mechanism, num_draws)
  if mechanism.startswith("fastfood"):
    width = learned.padded_dim(head_dim)
    projections = 2 * (2 * tokens * num_draws * int(math.log2(width)))
  else:
    projections = 2 * (2 * tokens * num_draws * head_dim)
  state_and_readout = 2 * (2 * tokens * num_features * (value_dim + 1))
  hidden = _GENERATOR_HIDDEN_FACTOR * head_dim
  # Frequencies are formed once per head, for the whole batch.
  if mechanism == "gmm_rks":
    frequencies = 2 * heads * num_draws * head_dim**2
    frequency_grads = frequencies  # the noise is constant: A_c's only
  elif mechanism.startswith("generative"):
    frequencies = 2 * heads * num_draws * head_dim * (2 * hidden + head_dim)
    # W_1 and the skip get weight gradients (the noise is constant); W_2
    # and the hidden layer both get one.
    frequency_grads = 2 * heads * num_draws * head_dim * (3 * hidden + head_dim)
  else:
    frequencies = frequency_grads = 0
  forward = projections + state_and_readout + frequencies
  if mode == "fwd":
    return forward
  # Learned frequencies are no constant: the explicit projections need
  # gradients on both operands. FastFood's transforms are linear in x and
  # its learned diagonals take elementwise gradients: one more transform.
  projection_grads = projections if mechanism.startswith("fastfood") else (
      2 * projections
  )
  return (
      forward + projection_grads + 2 * state_and_readout + frequency_grads
  )


def flop_model(
    mechanism: str, mode: str, *, batch: int, heads: int, length: int,
    head_dim: int, num_features: int,
    chunk_size: int = linear.DEFAULT_CHUNK_SIZE,
    value_dim: Optional[int] = None,
    num_landmarks: int = soft.DEFAULT_NUM_LANDMARKS,
    num_iterations: int = soft.DEFAULT_NUM_ITERATIONS,
) -> int:
  """Matmul FLOPs of one configuration, as stated in `FLOP_MODEL`.

  Args:
    mechanism: one of `MECHANISMS` or `LEARNED_MECHANISMS`.
    mode: `"fwd"` or `"fwd_bwd"`.
    batch: B.
    heads: h.
    length: L, for queries and keys.
    head_dim: d of queries and keys.
    num_features: m random features; for a learned kernel its draws m
      (`mechanism_num_features`), which give 2 m + 1 features for RKS.
    chunk_size: C of the causal chunked engine; kattn uses min(C, L).
    value_dim: d_v, head_dim if None.
    num_landmarks: n of SOFT.
    num_iterations: T, SOFT's Newton-Schulz steps.

  Returns:
    The FLOP count (an int).
  """
  _check_names(mechanism, mode)
  value_dim = head_dim if value_dim is None else value_dim
  if mechanism in ("softmax", "softmax_cudnn"):
    forward = 2 * batch * heads * length**2 * (head_dim + value_dim)
    return forward if mode == "fwd" else 3 * forward
  tokens = batch * heads * length
  if mechanism in LEARNED_MECHANISMS:
    return _learned_flops(
        mechanism, mode, tokens=tokens, heads=heads, head_dim=head_dim,
        value_dim=value_dim, num_draws=num_features,
    )
  if mechanism == "soft":
    n, heads_total = num_landmarks, batch * heads
    landmarks = 2 * tokens * n * head_dim
    kernels = 2 * heads_total * (length * n * head_dim + n**2 * head_dim)
    products = 2 * heads_total * (2 * length * n * value_dim + n**2 * value_dim)
    newton_schulz = 4 * heads_total * num_iterations * n**3
    forward = landmarks + kernels + products + newton_schulz
    if mode == "fwd":
      return forward
    # The segment one-hot matrix is a constant (one gradient matmul); both
    # operands of the kernels and products need gradients; the pseudo-inverse
    # VJP is -V^T G V^T, two n x n matmuls, however many steps ran.
    inverse_vjp = 4 * heads_total * n**3
    return forward + landmarks + 2 * (kernels + products) + inverse_vjp
  projections = 2 * (2 * tokens * num_features * head_dim)
  state_and_readout = 2 * (2 * tokens * num_features * (value_dim + 1))
  if mode == "fwd":
    flops = projections + state_and_readout
  else:
    # The projection matrix is a constant: its input gradients double the
    # projection term, while both operands of the state and readout matmuls
    # need gradients, tripling that term.
    flops = 2 * projections + 3 * state_and_readout
  if mechanism == "favor_causal":
    chunk = min(chunk_size, length)
    intra = 2 * tokens * chunk * (num_features + value_dim + 1)
    flops += intra if mode == "fwd" else 3 * intra
  return flops


def estimate_memory_bytes(
    mechanism: str, mode: str, *, batch: int, heads: int, length: int,
    head_dim: int, num_features: int, dtype: str = "float32",
    num_landmarks: int = soft.DEFAULT_NUM_LANDMARKS,
) -> int:
  """Rough peak memory of one configuration, to skip hopeless ones.

  With s the input itemsize, 4 bytes for float32 accumulation and
  N = B * L * h token-heads:

  * inputs and outputs: N * 4d * s (q, k, v, out), plus N * 3d * s for the
    three gradients in fwd_bwd;
  * softmax (XLA): 2 * B*h*L^2 * 4 (float32 logits and weights live together),
    3x that for fwd_bwd (the weights are saved and their cotangent built);
  * softmax_cudnn: flash attention, only B*h*L*4 * 2 softmax statistics;
  * favor, favor_causal, scan_causal: N * (2m + 3d + 1) * 4, as if the q and k
    features and float32 copies of q, k, [v, 1] existed for every token (kattn
    keeps features per block, so this bounds it from above); 2x for fwd_bwd
    (residuals and their cotangents);
  * soft: N * (2n + 2d) * 4 for n landmarks, the cross products and the
    kernel P `[L, n]` per head and float32 copies of q and v (the n x n
    terms are negligible); 2x for fwd_bwd;
  * learned kernels, with m = `num_features` draws and F features
    (`learned_feature_count`): N * (2F + 3d + 1) * 4, as favor with F
    features, plus h * m * (d + 2d) * 4 for each head's [m, d] frequencies
    and the generator's [m, 2d] hidden layer (an upper bound for the
    other kernels); 2x for fwd_bwd;
  * plus the runtime itself (`_RUNTIME_BYTES`).

  Returns:
    Estimated bytes.
  """
  _check_names(mechanism, mode)
  itemsize = jnp.dtype(dtype).itemsize
  tokens = batch * length * heads
  io = tokens * head_dim * itemsize * (4 if mode == "fwd" else 7)
  if mechanism == "softmax":
    work = 2 * batch * heads * length**2 * 4
  elif mechanism == "softmax_cudnn":
    work = 2 * batch * heads * length * 4
  elif mechanism == "soft":
    work = tokens * (2 * num_landmarks + 2 * head_dim) * 4
  elif mechanism in LEARNED_MECHANISMS:
    features = learned_feature_count(mechanism, num_features)
    frequencies = heads * num_features * (
        1 + _GENERATOR_HIDDEN_FACTOR
    ) * head_dim * 4
    work = tokens * (2 * features + 3 * head_dim + 1) * 4 + frequencies
  else:
    work = tokens * (2 * num_features + 3 * head_dim + 1) * 4
  if mode == "fwd_bwd":
    work *= 3 if mechanism == "softmax" else 2
  return _RUNTIME_BYTES + io + work


# Measurements inside one process.


def _attention_fn(mechanism: str, settings: Settings):
  """(q, k, v, projection) -> out, or (q, k, v, params, noise) -> out."""
  if mechanism in LEARNED_MECHANISMS:
    return lambda q, k, v, params, noise: linear.learned_kernel_attention(
        q, k, v, kernel=mechanism, params=params, noise=noise, causal=False,
        chunk_size=settings.chunk_size,
        chunks_per_step=settings.chunks_per_step,
    )
  if mechanism in ("softmax", "softmax_cudnn"):
    implementation = "xla" if mechanism == "softmax" else "cudnn"
    return lambda q, k, v, projection: jax.nn.dot_product_attention(
        q, k, v, is_causal=False, implementation=implementation
    )
  if mechanism == "scan_causal":
    return scan_causal_favor
  if mechanism == "soft":
    def soft_attention(q, k, v, projection):
      del k, projection  # SOFT's keys are its queries; no random features
      landmarks = soft.segment_mean_landmarks(
          q, num_landmarks=settings.num_landmarks
      )
      return soft.soft_attention(
          q, v, landmarks, num_iterations=settings.num_iterations,
          ridge=settings.ridge,
      )
    return soft_attention
  causal = mechanism == "favor_causal"
  return lambda q, k, v, projection: kattn.favor_attention(
      q, k, v, projection=projection, causal=causal,
      chunk_size=settings.chunk_size, chunks_per_step=settings.chunks_per_step,
  )


def _benchmark_fn(mechanism: str, mode: str, settings: Settings):
  """The jitted attention, or the gradients of sum(out) in fwd_bwd.

  The gradients are w.r.t. q, k, v and, for a learned kernel, its spectral
  parameters (the fourth argument); never w.r.t. a fixed projection or noise.
  """
  attend = _attention_fn(mechanism, settings)
  if mode == "fwd":
    return jax.jit(attend)
  loss = lambda *args: jnp.sum(attend(*args), dtype=jnp.float32)
  argnums = (0, 1, 2, 3) if mechanism in LEARNED_MECHANISMS else (0, 1, 2)
  return jax.jit(jax.grad(loss, argnums=argnums))


def _current_rss_bytes() -> int:
  return psutil.Process().memory_info().rss


def _device_memory(device, key: str) -> Optional[int]:
  stats = device.memory_stats()
  return None if not stats or key not in stats else int(stats[key])


def _inputs(length: int, settings: Settings):
  """(q, k, v, projection), ready on the device."""
  keys = jax.random.split(jax.random.key(settings.seed), 4)
  shape = (settings.batch, length, settings.heads, settings.head_dim)
  q, k, v = (jax.random.normal(key, shape, settings.dtype) for key in keys[:3])
  projection = kattn.orthogonal_random_projection(
      keys[3], settings.num_features, settings.head_dim
  )
  return jax.block_until_ready((q, k, v, projection))


def _mechanism_args(mechanism: str, inputs, settings: Settings):
  """The arguments of `_benchmark_fn(mechanism, ...)` from `_inputs`.

  A learned kernel takes its per-head parameters and shared noise from
  `init_learned_kernel` in place of the FAVOR+ projection; the key depends
  on the kernel, so kernels compared side by side draw independently.
  """
  if mechanism not in LEARNED_MECHANISMS:
    return inputs
  q, k, v, _ = inputs
  key = jax.random.fold_in(
      jax.random.key(settings.seed), 1 + LEARNED_MECHANISMS.index(mechanism)
  )
  # One compiled program, not dozens of eagerly compiled ops per process.
  init = jax.jit(lambda key: learned.init_learned_kernel(
      mechanism, key, num_heads=settings.heads, dim=settings.head_dim,
      num_features=mechanism_num_features(mechanism, settings),
  ))
  params, noise = init(key)
  return jax.block_until_ready((q, k, v, params, noise))


def _measure(fn, args, repeats: int) -> dict:
  """Compiles the jitted `fn` for `args`, runs it once, then times it.

  Returns:
    A result record: times in ms (`min_ms`, `median_ms`, `times_ms`),
    `compile_s`, host memory in MiB (`baseline_rss_mib` after JAX start-up and
    inputs, `rss_after_compile_mib` peak so far, `peak_rss_mib`,
    `increment_mib` = peak - baseline) and, where the device reports them,
    `baseline_device_mib`, `peak_device_mib`, `device_increment_mib`.
  """
  device = jax.devices()[0]
  baseline_rss = _current_rss_bytes()
  baseline_device = _device_memory(device, "bytes_in_use")

  start = time.perf_counter()
  compiled = fn.lower(*args).compile()
  compile_s = time.perf_counter() - start
  rss_after_compile = _memory.peak_rss_bytes()
  jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)

  peak_rss = _memory.peak_rss_bytes()
  record = {
      "status": "ok",
      "min_ms": 1e3 * min(times),
      "median_ms": 1e3 * statistics.median(times),
      "times_ms": [1e3 * t for t in times],
      "compile_s": compile_s,
      "baseline_rss_mib": baseline_rss / _MIB,
      "rss_after_compile_mib": rss_after_compile / _MIB,
      "peak_rss_mib": peak_rss / _MIB,
      "increment_mib": (peak_rss - baseline_rss) / _MIB,
  }
  peak_device = _device_memory(device, "peak_bytes_in_use")
  if peak_device is not None and baseline_device is not None:
    record.update(
        baseline_device_mib=baseline_device / _MIB,
        peak_device_mib=peak_device / _MIB,
        device_increment_mib=(peak_device - baseline_device) / _MIB,
    )
  return record


def run_config(
    mechanism: str, mode: str, length: int, settings: Settings = Settings()
) -> dict:
  """Compiles and times one configuration in this process.

  For isolated peak memory call it in a fresh process (`run_isolated`): the
  peak counters are per process and never go down.

  Args:
    mechanism: one of `MECHANISMS` or `LEARNED_MECHANISMS`.
    mode: `"fwd"` or `"fwd_bwd"` (gradient of sum(out) w.r.t. q, k, v and,
      for a learned kernel, its spectral parameters).
    length: sequence length L.
    settings: shapes, dtype and repeats.

  Returns:
    A result record; see `_measure`.
  """
  _check_names(mechanism, mode)
  args = _mechanism_args(mechanism, _inputs(length, settings), settings)
  return _measure(
      _benchmark_fn(mechanism, mode, settings), args, settings.repeats
  )


def _time_interleaved(calls: dict, rounds: int) -> dict:
  """Times `{name: (jitted fn, args)}` side by side, one run each per round."""
  compiled = {
      name: (fn.lower(*args).compile(), args)
      for name, (fn, args) in calls.items()
  }
  for fn, args in compiled.values():
    jax.block_until_ready(fn(*args))
  times = {name: [] for name in compiled}
  for _ in range(rounds):
    for name, (fn, args) in compiled.items():
      start = time.perf_counter()
      jax.block_until_ready(fn(*args))
      times[name].append(time.perf_counter() - start)
  return {
      "status": "ok",
      "min_ms": {m: 1e3 * min(t) for m, t in times.items()},
      "median_ms": {m: 1e3 * statistics.median(t) for m, t in times.items()},
  }


def run_paired(
    mechanisms, mode: str, length: int, settings: Settings = Settings(),
    rounds: int = PAIRED_ROUNDS,
) -> dict:
  """Times mechanisms side by side in this process, interleaving their runs.

  Separate processes run minutes apart on a shared machine see different
  loads; here every round runs each mechanism once, back to back, so slow
  spells hit all of them and the ratio of minima is stable.

  Returns:
    `{"status": "ok", "min_ms": {mechanism: ms}, "median_ms": {...}}`.
  """
  for mechanism in mechanisms:
    _check_names(mechanism, mode)
  inputs = _inputs(length, settings)
  return _time_interleaved(
      {
          m: (_benchmark_fn(m, mode, settings),
              _mechanism_args(m, inputs, settings))
          for m in mechanisms
      },
      rounds,
  )


def matmul_ceiling(dtype: str = "float32", sizes=CEILING_SIZES) -> dict:
  """Square matmul GFLOP/s of a jitted `a @ b`, the best of a few runs each.

  Returns:
    `{"gflops_by_size": {n: GFLOP/s}, "ceiling_gflops": max over n}`.
  """
  matmul = jax.jit(lambda a, b: a @ b)
  by_size = {}
  for n in sizes:
    a, b = (
        jax.random.normal(key, (n, n), dtype)
        for key in jax.random.split(jax.random.key(n))
    )
    jax.block_until_ready(matmul(a, b))
    best = math.inf
    for _ in range(_CEILING_RUNS):
      start = time.perf_counter()
      jax.block_until_ready(matmul(a, b))
      best = min(best, time.perf_counter() - start)
    by_size[n] = 2 * n**3 / best / 1e9
  return {"gflops_by_size": by_size, "ceiling_gflops": max(by_size.values())}


def _describe_device(device) -> str:
  if device.platform != "cpu":
    return f"{device.platform}: {device.device_kind}"
  model = ""
  try:
    with open("/proc/cpuinfo") as f:
      model = next(
          (line.split(":", 1)[1].strip() for line in f
           if line.startswith("model name")), "",
      )
  except OSError:
    pass
  return f"cpu: {model or device.device_kind}, {os.cpu_count()} cores"


def probe(dtype: str) -> dict:
  """Device facts, matmul ceilings and the scan baseline's self-check."""
  device = jax.devices()[0]
  ceilings = {"float32": matmul_ceiling("float32")}
  if dtype != "float32":
    ceilings[dtype] = matmul_ceiling(dtype)
  try:
    errors = check_scan_causal()
    self_check = {
        "errors": errors,
        "tolerance": _CHECK_TOLERANCE,
        "passed": max(errors.values()) <= _CHECK_TOLERANCE,
    }
  except Exception as error:  # pylint: disable=broad-except
    self_check = {
        "errors": {}, "tolerance": _CHECK_TOLERANCE, "passed": False,
        "error": f"{type(error).__name__}: {error}",
    }
  return {
      "status": "ok",
      "backend": jax.default_backend(),
      "device": _describe_device(device),
      "jax_version": jax.__version__,
      "kattn_version": kattn.__version__,
      "device_memory_bytes": _device_memory(device, "bytes_limit"),
      "ceilings": ceilings,
      "self_check": self_check,
  }


# Isolation: one subprocess per task.


def _run_worker_task(task: dict) -> dict:
  """Runs a task in this (fresh) process; errors become records."""
  try:
    if task["kind"] == "probe":
      return probe(task["dtype"])
    if task["kind"] == "paired":
      return run_paired(
          task["mechanisms"], task["mode"], task["length"],
          Settings(**task["settings"]), task["rounds"],
      )
    if task["kind"] == "relative_config":
      return run_relative_config(
          task["mechanism"], task["mode"], task["side"],
          Settings(**task["settings"]),
      )
    if task["kind"] == "relative_paired":
      return run_relative_paired(
          task["mechanisms"], task["mode"], task["side"],
          Settings(**task["settings"]), task["rounds"],
      )
    return run_config(
        task["mechanism"], task["mode"], task["length"],
        Settings(**task["settings"]),
    )
  except Exception as error:  # pylint: disable=broad-except
    message = f"{type(error).__name__}: {error}".strip()
    if "RESOURCE_EXHAUSTED" in message or "out of memory" in message.lower():
      status = "out of memory"
    elif task.get("mechanism") == "softmax_cudnn":
      # cuDNN refuses shapes, dtypes and GPUs it has no fused kernel for.
      status = "unsupported"
    else:
      status = "error"
    return {"status": status, "error": message[-2000:]}


def _module_root() -> str:
  """The directory that holds the `experiments` package."""
  return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_isolated(
    task: dict, *, rss_limit_bytes: Optional[int] = None,
    timeout_s: float = 3600.0, command: Optional[list] = None,
) -> dict:
  """Runs a worker task in a fresh interpreter and returns its record.

  A subprocess that dies, times out or (if `rss_limit_bytes` is set) grows
  past the resident-set limit is killed if needed and reported in the
  record's `status`; this never raises for the subprocess's failures.

  Args:
    task: `{"kind": "probe", "dtype": ...}`, `{"kind": "config",
      "mechanism", "mode", "length", "settings": dataclasses.asdict(...)}`,
      `{"kind": "paired", "mechanisms", "mode", "length", "rounds",
      "settings"}`, or their relative-suite forms `"relative_config"` and
      `"relative_paired"` with `"side"` in place of `"length"`.
    rss_limit_bytes: kill the subprocess when its resident set exceeds this.
    timeout_s: kill the subprocess after this many seconds.
    command: the worker's command line, for another benchmark module that
      prints its record after `_RESULT_MARKER`; default this module.

  Returns:
    The worker's record, or `{"status": ..., "error": ...}` on failure.
  """
  command = command or [
      sys.executable, "-m", "experiments.bench_attention",
      "--_worker=" + json.dumps(task),
  ]
  # Files, not pipes: a chatty subprocess cannot block on a full pipe while
  # the parent is busy polling.
  with tempfile.TemporaryFile("w+") as stdout, \
       tempfile.TemporaryFile("w+") as stderr:
    process = subprocess.Popen(
        command, stdout=stdout, stderr=stderr, cwd=_module_root()
    )
    killed = None
    start = time.monotonic()
    watched = psutil.Process(process.pid)
    while process.poll() is None:
      try:
        rss = watched.memory_info().rss
      except psutil.Error:
        rss = 0
      if rss_limit_bytes is not None and rss > rss_limit_bytes:
        killed = (
            f"killed (RSS {rss / _GIB:.2f} GiB > limit"
            f" {rss_limit_bytes / _GIB:.2f} GiB)"
        )
      elif time.monotonic() - start > timeout_s:
        killed = f"timed out (> {timeout_s:.0f} s)"
      if killed:
        process.kill()
        process.wait()
        break
      time.sleep(_RSS_POLL_S)
    stdout.seek(0)
    stderr.seek(0)
    output, errors = stdout.read(), stderr.read()
  for line in reversed(output.splitlines()):
    if line.startswith(_RESULT_MARKER):
      return json.loads(line[len(_RESULT_MARKER):])
  tail = errors.strip()[-2000:]
  if killed:
    return {"status": killed, "error": tail}
  code = process.returncode
  if code == -9:
    status = "crashed (SIGKILL, likely out of memory)"
  elif code < 0:
    status = f"crashed (signal {-code})"
  else:
    status = f"crashed (exit code {code})"
  return {"status": status, "error": tail}


# The benchmark driver.


def _write_jsonl_atomically(path: str, records) -> None:
  """Writes a temp file beside `path`, then renames it over `path`."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  with tempfile.NamedTemporaryFile(
      "w", dir=directory, prefix=".tmp_", suffix=".jsonl", delete=False
  ) as f:
    for record in records:
      f.write(json.dumps(record) + "\n")
  # Temp files are created private (0600); results are for everyone to read.
  os.chmod(f.name, 0o644)
  os.replace(f.name, path)


def _memory_columns(record: dict, device_memory: bool):
  if device_memory and "peak_device_mib" in record:
    return record["peak_device_mib"], record["device_increment_mib"]
  return record.get("peak_rss_mib"), record.get("increment_mib")


_ROW = "{:<14} {:<8} {:>6} {:>10} {:>10} {:>9} {:>9} {:>6} {:>9} {:>9}  {}"


def _format_row(record: dict, device_memory: bool) -> str:
  number = lambda x, spec: "-" if x is None else format(x, spec)
  peak, increment = _memory_columns(record, device_memory)
  fraction = record.get("ceiling_fraction")
  return _ROW.format(
      record["mechanism"], record["mode"], record["length"],
      number(record.get("min_ms"), ".2f"),
      number(record.get("median_ms"), ".2f"),
      number(record.get("compile_s"), ".2f"),
      number(record.get("gflops"), ".1f"),
      number(None if fraction is None else 100 * fraction, ".1f"),
      number(peak, ".0f"), number(increment, ".0f"), record["status"],
  )


def ratio_lines(records, device_memory: bool = False) -> list[str]:
  """The ratios the README quotes, from this run's successful records."""
  ok = {
      (r["mechanism"], r["mode"], r["length"]): r
      for r in records if r.get("status") == "ok"
  }
  ratio = lambda a, b: (
      "n/a" if a is None or b is None or b <= 0 else f"{a / b:.2f}x"
  )
  lengths = sorted({key[2] for key in ok})
  lines = []
  for numerator, denominator, mode in (
      ("softmax", "favor", "fwd"),
      ("scan_causal", "favor_causal", "fwd_bwd"),
      ("favor_causal", "favor", "fwd_bwd"),
      ("soft", "favor", "fwd_bwd"),
  ) + LEARNED_PAIRED_COMPARISONS:
    for length in lengths:
      a = ok.get((numerator, mode, length))
      b = ok.get((denominator, mode, length))
      if a is None or b is None:
        continue
      line = (
          f"{numerator}/{denominator} {mode} L={length}:"
          f" time {ratio(a['min_ms'], b['min_ms'])}"
      )
      if numerator in ("softmax", "soft") + LEARNED_MECHANISMS:
        (peak_a, inc_a), (peak_b, inc_b) = (
            _memory_columns(r, device_memory) for r in (a, b)
        )
        line += (
            f", peak memory {ratio(peak_a, peak_b)},"
            f" memory increment {ratio(inc_a, inc_b)}"
        )
      lines.append(line)
  return lines


def memory_growth(
    records, mechanism: str, mode: str, device_memory: bool = False
) -> Optional[dict]:
  """How one mechanism's memory above the runtime grows with L.

  The memory is the increment column (peak minus the memory held after JAX
  start-up and inputs). Between consecutive measured lengths L1 < L2 the
  growth exponent is log(M2 / M1) / log(L2 / L1): 1 for linear growth, 2
  for quadratic, below 1 while a constant (on CPU, the compiler's memory)
  still dominates. The verdict reads the largest pair, where the terms that
  grow with L dominate most.

  Args:
    records: result records of one run.
    mechanism: one of `MECHANISMS`.
    mode: `"fwd"` or `"fwd_bwd"`.
    device_memory: read device memory, not the resident set.

  Returns:
    None if fewer than two lengths succeeded, else `{"kind":
    "memory_growth", "mechanism", "mode", "lengths", "increment_mib",
    "exponents"}` (one exponent per consecutive pair, None where an increment
    is not positive) and `"at_most_linear"`: whether the largest pair's
    exponent is at most `LINEAR_EXPONENT_LIMIT` (None if it has none).
  """
  _check_names(mechanism, mode)
  measured = sorted(
      (r["length"], _memory_columns(r, device_memory)[1]) for r in records
      if r.get("kind") == "result" and r.get("status") == "ok"
      and r["mechanism"] == mechanism and r["mode"] == mode
  )
  if len(measured) < 2:
    return None
  exponents = [
      math.log(m2 / m1) / math.log(l2 / l1) if m1 > 0 and m2 > 0 else None
      for (l1, m1), (l2, m2) in zip(measured, measured[1:])
  ]
  last = exponents[-1]
  return {
      "kind": "memory_growth", "mechanism": mechanism, "mode": mode,
      "lengths": [length for length, _ in measured],
      "increment_mib": [memory for _, memory in measured],
      "exponents": exponents,
      "at_most_linear": (
          None if last is None else last <= LINEAR_EXPONENT_LIMIT
      ),
  }


def format_memory_growth(growth: dict) -> str:
  """One line: the increment at each length, exponents and the verdict."""
  steps = []
  for i, (length, memory) in enumerate(
      zip(growth["lengths"], growth["increment_mib"])
  ):
    step = f"L={length} {memory:.0f} MiB"
    if i:
      exponent = growth["exponents"][i - 1]
      step += (
          " (exponent n/a)" if exponent is None
          else f" (exponent {exponent:.2f})"
      )
    steps.append(step)
  if growth["at_most_linear"] is None:
    verdict = "no verdict (increment not positive)"
  else:
    grows = (
        "at most linearly" if growth["at_most_linear"]
        else "FASTER than linearly"
    )
    verdict = (
        f"grows {grows} (largest pair exponent"
        f" {growth['exponents'][-1]:.2f}, limit {LINEAR_EXPONENT_LIMIT})"
    )
  return (
      f"{growth['mechanism']} {growth['mode']} memory above the runtime: "
      + ", ".join(steps) + f": {verdict}"
  )


def _print_header(header: dict) -> None:
  settings, check = header["settings"], header["self_check"]
  print(f"device: {header['device']}  (jax {header['jax_version']})")
  print(
      f"shape: batch {settings['batch']}, {settings['heads']} heads, head dim"
      f" {settings['head_dim']}, {settings['num_features']} features,"
      f" {settings['dtype']}; chunk {settings['chunk_size']} x"
      f" {settings['chunks_per_step']} per step;"
      f" {settings['repeats']} timed runs"
  )
  for dtype, measured in header["ceilings"].items():
    sizes = ", ".join(
        f"n={n}: {g:.1f}" for n, g in measured["gflops_by_size"].items()
    )
    print(
        f"matmul ceiling {dtype}: {measured['ceiling_gflops']:.1f} GFLOP/s"
        f" ({sizes})"
    )
  print(f"FLOP model: {FLOP_MODEL}")
  print(
      "memory: "
      + (
          "device peak_bytes_in_use; incr = peak - bytes in use after inputs"
          if header["memory_measure"] == "device" else
          "peak RSS (VmHWM) of the config's subprocess; incr = peak - RSS"
          " after JAX init and inputs"
      )
      + f"; limit {header['memory_limit_gib']:.1f} GiB"
  )
  errors = ", ".join(f"{k} {v:.1e}" for k, v in check["errors"].items())
  print(
      f"self-check scan_causal vs kattn causal (max rel. error, tol"
      f" {check['tolerance']:.0e}): {errors}:"
      f" {'passed' if check['passed'] else 'FAILED'}"
      + (f" ({check['error']})" if "error" in check else "")
  )


def _probe_device(settings, host_limit: float, timeout_s: float):
  """The device's description from an isolated probe, or None if it failed."""
  info = run_isolated(
      {"kind": "probe", "dtype": settings.dtype}, rss_limit_bytes=host_limit,
      timeout_s=timeout_s,
  )
  if info.get("status") != "ok":
    print(f"device probe failed: {info.get('status')}\n{info.get('error', '')}")
    return None
  return info


def run_benchmark(
    settings: Settings, *, lengths, mechanisms, modes, out: Optional[str],
    memory_limit_gib: Optional[float], timeout_s: float,
    paired_lengths=PAIRED_LENGTHS, paired_rounds: int = PAIRED_ROUNDS,
    suite: str = "attention", paired_comparisons=PAIRED_COMPARISONS,
) -> int:
  """Probes the device, runs every configuration isolated, prints and saves.

  The attention and learned suites both run here; they differ in their
  mechanisms, lengths, modes and `paired_comparisons` (numerator,
  denominator, mode), each timed side by side at every `paired_lengths`
  when both mechanisms and the mode were selected.

  Returns:
    A process exit code: 0, or 1 if the device probe itself failed.
  """
  host_limit = 0.8 * psutil.virtual_memory().total
  info = _probe_device(settings, host_limit, timeout_s)
  if info is None:
    return 1
  backend = info["backend"]
  on_gpu = backend == "gpu"
  device_memory = info["device_memory_bytes"] is not None and backend != "cpu"
  if mechanisms is None:
    mechanisms = [m for m in MECHANISMS if on_gpu or m != "softmax_cudnn"]
  if memory_limit_gib is None:
    memory_limit_gib = (
        info["device_memory_bytes"] if device_memory else host_limit
    ) / _GIB
  # The limit guards host RAM on CPU; on GPU the host still needs a guard.
  rss_limit = host_limit if device_memory else memory_limit_gib * _GIB
  out = out or os.path.join("bench_results", f"{suite}_{backend}.jsonl")
  ceiling = info["ceilings"][settings.dtype]["ceiling_gflops"]
  check = info["self_check"]

  learned_draws = {
      m: mechanism_num_features(m, settings)
      for m in mechanisms if m in LEARNED_MECHANISMS
  }
  header = {
      "kind": "header",
      "suite": suite,
      "device": info["device"],
      "backend": backend,
      "jax_version": info["jax_version"],
      "kattn_version": info["kattn_version"],
      "settings": dataclasses.asdict(settings),
      "learned_num_features": learned_draws,
      "memory_limit_gib": memory_limit_gib,
      "memory_measure": "device" if device_memory else "rss",
      "ceilings": info["ceilings"],
      "ceiling_gflops": ceiling,
      "flop_model": FLOP_MODEL,
      "self_check": check,
  }
  _print_header(header)
  if "soft" in mechanisms:
    print(
        f"SOFT: {settings.num_landmarks} segment-mean landmarks, ridge"
        f" {settings.ridge}, {settings.num_iterations} Newton-Schulz steps;"
        " keys = queries"
    )
  if learned_draws:
    draws = ", ".join(
        f"{m} m={n} ({learned_feature_count(m, n)} features)"
        for m, n in learned_draws.items()
    )
    print(
        f"learned kernels, bidirectional (fwd_bwd also differentiates the"
        f" spectral parameters): {draws}; favor m={settings.num_features}"
    )
  print()
  print(_ROW.format(
      "mechanism", "mode", "L", "min ms", "median ms", "compile s", "GFLOP/s",
      "%ceil", "peak MiB", "incr MiB", "status",
  ))

  records = [header]
  shape = lambda mechanism: dict(
      batch=settings.batch, heads=settings.heads,
      head_dim=settings.head_dim,
      num_features=mechanism_num_features(mechanism, settings),
      num_landmarks=settings.num_landmarks,
  )
  for mechanism in mechanisms:
    for mode in modes:
      for length in lengths:
        estimate = estimate_memory_bytes(
            mechanism, mode, length=length, dtype=settings.dtype,
            **shape(mechanism),
        )
        flops = flop_model(
            mechanism, mode, length=length, chunk_size=settings.chunk_size,
            num_iterations=settings.num_iterations, **shape(mechanism),
        )
        record = {
            "kind": "result", "mechanism": mechanism, "mode": mode,
            "length": length, "flops": flops, "estimate_gib": estimate / _GIB,
        }
        if mechanism == "softmax_cudnn" and not on_gpu:
          result = {"status": "skipped (cudnn needs a GPU)"}
        elif mechanism == "softmax_cudnn" and settings.dtype != "bfloat16":
          result = {"status": "skipped (cudnn needs --dtype=bfloat16)"}
        elif mechanism == "scan_causal" and not check["passed"]:
          result = {"status": "skipped (self-check failed)"}
        elif estimate > memory_limit_gib * _GIB:
          result = {
              "status": f"skipped (estimated {estimate / _GIB:.2f} GiB >"
                        f" limit {memory_limit_gib:.2f} GiB)"
          }
        else:
          result = run_isolated(
              {
                  "kind": "config", "mechanism": mechanism, "mode": mode,
                  "length": length, "settings": dataclasses.asdict(settings),
              },
              rss_limit_bytes=rss_limit, timeout_s=timeout_s,
          )
        record.update(result)
        if record["status"] == "ok":
          record["gflops"] = flops / (record["min_ms"] / 1e3) / 1e9
          record["ceiling_fraction"] = record["gflops"] / ceiling
        records.append(record)
        print(_format_row(record, device_memory), flush=True)
        _write_jsonl_atomically(out, records)

  print()
  for line in ratio_lines(records[1:], device_memory):
    print(line)
  for mechanism in MEMORY_GROWTH_MECHANISMS:
    if mechanism not in mechanisms:
      continue
    for mode in modes:
      growth = memory_growth(records, mechanism, mode, device_memory)
      if growth is not None:
        records.append(growth)
        print(format_memory_growth(growth))
  _write_jsonl_atomically(out, records)

  print(f"\nside by side in one process, {paired_rounds} interleaved rounds:")
  for numerator, denominator, mode in paired_comparisons:
    if not {numerator, denominator} <= set(mechanisms):
      continue
    if mode not in modes or (
        "scan_causal" in (numerator, denominator) and not check["passed"]
    ):
      continue
    for length in paired_lengths:
      result = run_isolated(
          {
              "kind": "paired", "mechanisms": [numerator, denominator],
              "mode": mode, "length": length, "rounds": paired_rounds,
              "settings": dataclasses.asdict(settings),
          },
          rss_limit_bytes=rss_limit, timeout_s=timeout_s,
      )
      record = {
          "kind": "paired", "mechanisms": [numerator, denominator],
          "mode": mode, "length": length, "rounds": paired_rounds, **result,
      }
      records.append(record)
      if record["status"] == "ok":
        a, b = (record["min_ms"][m] for m in (numerator, denominator))
        line = (
            f"{numerator}/{denominator} {mode} L={length}: time {a / b:.2f}x"
            f" (min {a:.1f} ms vs {b:.1f} ms)"
        )
        for mechanism in (numerator, denominator):
          if mechanism in ("favor", "favor_causal", "soft") + (
              LEARNED_MECHANISMS
          ):
            flops = flop_model(
                mechanism, mode, length=length,
                chunk_size=settings.chunk_size,
                num_iterations=settings.num_iterations, **shape(mechanism),
            )
            gflops = flops / (record["min_ms"][mechanism] / 1e3) / 1e9
            line += (
                f"; {mechanism} {gflops:.0f} GFLOP/s ="
                f" {100 * gflops / ceiling:.1f}% of ceiling"
            )
      else:
        line = f"{numerator}/{denominator} {mode} L={length}: {record['status']}"
      print(line, flush=True)
      _write_jsonl_atomically(out, records)

  print(f"\nwrote {len(records)} JSON lines to {out}")
  return 0


# The relative suite: FFT-RPE against quadratic softmax with the same 2-D
# relative position bias, on square image grids.

RELATIVE_MECHANISMS = ("rpe_padded", "rpe_torus", "softmax_relative")
# The offset domain of each mechanism's bias table; softmax_relative uses the
# finite-image table, as a model on images would.
_RELATIVE_BIAS_MODE = {
    "rpe_padded": "padded", "rpe_torus": "torus", "softmax_relative": "padded",
}
RELATIVE_SIDES = (32, 64, 128, 256)
QUICK_RELATIVE_SIDES = (16, 32)
RELATIVE_MODES = ("fwd",)
RELATIVE_PAIRED_COMPARISONS = (("softmax_relative", "rpe_padded", "fwd"),)
RELATIVE_PAIRED_SIDES = (64, 128)
QUICK_RELATIVE_PAIRED_SIDES = (32,)
RELATIVE_PAIRED_ROUNDS = 3
RELATIVE_SETTINGS = Settings(heads=2, head_dim=16, num_features=32)


def _check_relative_names(mechanism: str, mode: str) -> None:
  if mechanism not in RELATIVE_MECHANISMS:
    raise ValueError(
        f"`mechanism` must be one of {RELATIVE_MECHANISMS}; got {mechanism!r}."
    )
  if mode not in MODES:
    raise ValueError(f"`mode` must be one of {MODES}; got {mode!r}.")


def estimate_relative_memory_bytes(
    mechanism: str, mode: str, *, batch: int, heads: int, side: int,
    head_dim: int, num_features: int, dtype: str = "float32",
) -> int:
  """Rough peak memory of one relative-suite configuration.

  With L = side^2 tokens, s the input itemsize and float32 work arrays:

  * inputs and outputs as in `estimate_memory_bytes`;
  * softmax_relative: 3 * B*h*L^2 * 4 (logits, the gathered bias, weights),
    3x that for fwd_bwd;
  * rpe_*: 4 * B*h*m*(d+1) * P*Q * 4, four copies of the correlated field
    (field, its spectrum, the product, the inverse) on the FFT domain of
    P*Q = side^2 (torus) or (2 side)^2 (padded); 1.5x that for fwd_bwd
    (measured peaks hold about 3 and 4.5 copies);
  * plus the runtime itself (`_RUNTIME_BYTES`).

  Returns:
    Estimated bytes.
  """
  _check_relative_names(mechanism, mode)
  length = side * side
  tokens = batch * length * heads
  io = tokens * head_dim * jnp.dtype(dtype).itemsize * (
      4 if mode == "fwd" else 7
  )
  if mechanism == "softmax_relative":
    work = 3 * batch * heads * length**2 * 4
    work *= 1 if mode == "fwd" else 3
  else:
    padded = _RELATIVE_BIAS_MODE[mechanism] == "padded"
    fft_points = length * (4 if padded else 1)
    work = 4 * batch * heads * num_features * (head_dim + 1) * fft_points * 4
    work = work if mode == "fwd" else 3 * work // 2
  return _RUNTIME_BYTES + io + work


def _relative_inputs(side: int, settings: Settings):
  """(q, k, v, projection, {bias mode: log-bias table}), ready on the device."""
  keys = jax.random.split(jax.random.key(settings.seed), 6)
  shape = (settings.batch, side * side, settings.heads, settings.head_dim)
  q, k, v = (jax.random.normal(key, shape, settings.dtype) for key in keys[:3])
  projection = kattn.orthogonal_random_projection(
      keys[3], settings.num_features, settings.head_dim
  )
  tables = {
      mode: 0.1 * jax.random.normal(
          key, (settings.heads,)
          + toeplitz.relative_bias_shape((side, side), mode=mode),
      )
      for mode, key in zip(toeplitz.RELATIVE_BIAS_MODES, keys[4:])
  }
  return jax.block_until_ready((q, k, v, projection, tables))


def _relative_benchmark_fn(mechanism: str, mode: str, side: int):
  """Jitted (q, k, v, projection, log_bias) -> out, or its gradients."""
  grid, bias_mode = (side, side), _RELATIVE_BIAS_MODE[mechanism]
  if mechanism == "softmax_relative":
    attend = lambda q, k, v, projection, log_bias: (
        toeplitz.relative_softmax_attention(
            q, k, v, log_bias, grid=grid, mode=bias_mode
        )
    )
  else:
    attend = lambda q, k, v, projection, log_bias: (
        toeplitz.relative_favor_attention(
            q, k, v, log_bias, projection=projection, grid=grid,
            mode=bias_mode, method="fft",
        )
    )
  if mode == "fwd":
    return jax.jit(attend)
  loss = lambda *args: jnp.sum(attend(*args), dtype=jnp.float32)
  return jax.jit(jax.grad(loss, argnums=(0, 1, 2, 4)))


def _relative_args(mechanism: str, inputs):
  q, k, v, projection, tables = inputs
  return q, k, v, projection, tables[_RELATIVE_BIAS_MODE[mechanism]]


def run_relative_config(
    mechanism: str, mode: str, side: int,
    settings: Settings = RELATIVE_SETTINGS,
) -> dict:
  """Compiles and times one relative-suite configuration in this process.

  Args:
    mechanism: one of `RELATIVE_MECHANISMS`.
    mode: `"fwd"` or `"fwd_bwd"` (gradient of sum(out) w.r.t. q, k, v and
      the log-bias table).
    side: the grid is side x side tokens.
    settings: shapes, dtype and repeats.

  Returns:
    A result record; see `_measure`.
  """
  _check_relative_names(mechanism, mode)
  args = _relative_args(mechanism, _relative_inputs(side, settings))
  return _measure(
      _relative_benchmark_fn(mechanism, mode, side), args, settings.repeats
  )


def run_relative_paired(
    mechanisms, mode: str, side: int, settings: Settings = RELATIVE_SETTINGS,
    rounds: int = RELATIVE_PAIRED_ROUNDS,
) -> dict:
  """Times relative-suite mechanisms side by side; see `run_paired`."""
  for mechanism in mechanisms:
    _check_relative_names(mechanism, mode)
  inputs = _relative_inputs(side, settings)
  return _time_interleaved(
      {
          m: (_relative_benchmark_fn(m, mode, side), _relative_args(m, inputs))
          for m in mechanisms
      },
      rounds,
  )


_RELATIVE_ROW = (
    "{:<17} {:<8} {:>9} {:>6} {:>10} {:>10} {:>9} {:>9} {:>9} {:>11}  {}"
)


def _format_relative_row(record: dict, device_memory: bool) -> str:
  number = lambda x, spec: "-" if x is None else format(x, spec)
  peak, increment = _memory_columns(record, device_memory)
  side = record["side"]
  return _RELATIVE_ROW.format(
      record["mechanism"], record["mode"], f"{side}x{side}", record["length"],
      number(record.get("min_ms"), ".2f"),
      number(record.get("median_ms"), ".2f"),
      number(record.get("compile_s"), ".2f"),
      number(peak, ".0f"), number(increment, ".0f"),
      number(record.get("time_per_l_log_l_vs_smallest"), ".2f"),
      record["status"],
  )


def relative_ratio_lines(records, device_memory: bool = False) -> list[str]:
  """softmax_relative / rpe_padded time and memory, from isolated runs."""
  ok = {
      (r["mechanism"], r["mode"], r["side"]): r
      for r in records if r.get("status") == "ok"
  }
  ratio = lambda a, b: (
      "n/a" if a is None or b is None or b <= 0 else f"{a / b:.2f}x"
  )
  lines = []
  for numerator, denominator, mode in RELATIVE_PAIRED_COMPARISONS:
    for side in sorted({key[2] for key in ok}):
      a = ok.get((numerator, mode, side))
      b = ok.get((denominator, mode, side))
      if a is None or b is None:
        continue
      (peak_a, inc_a), (peak_b, inc_b) = (
          _memory_columns(r, device_memory) for r in (a, b)
      )
      lines.append(
          f"{numerator}/{denominator} {mode} {side}x{side}:"
          f" time {ratio(a['min_ms'], b['min_ms'])}, peak memory"
          f" {ratio(peak_a, peak_b)}, memory increment {ratio(inc_a, inc_b)}"
      )
  return lines


def run_relative_benchmark(
    settings: Settings = RELATIVE_SETTINGS, *, sides=RELATIVE_SIDES,
    mechanisms=None, modes=RELATIVE_MODES, out: Optional[str] = None,
    memory_limit_gib: Optional[float] = None, timeout_s: float = 3600.0,
    paired_sides=RELATIVE_PAIRED_SIDES,
    paired_rounds: int = RELATIVE_PAIRED_ROUNDS,
) -> int:
  """FFT-RPE vs quadratic relative-bias softmax: isolated runs, then ratios.

  Same conventions as `run_benchmark`: one subprocess per configuration,
  peak memory, hopeless sizes skipped with their estimate, side-by-side
  ratios timed in one process, a table and JSON lines. Each row also gives
  time / (L log2 L) relative to the same mechanism's smallest grid: flat
  means growth as L log L (the FFT), rising like L / log L means L^2.

  Returns:
    A process exit code: 0, or 1 if the device probe itself failed.
  """
  host_limit = 0.8 * psutil.virtual_memory().total
  info = _probe_device(settings, host_limit, timeout_s)
  if info is None:
    return 1
  backend = info["backend"]
  device_memory = info["device_memory_bytes"] is not None and backend != "cpu"
  mechanisms = mechanisms or RELATIVE_MECHANISMS
  if memory_limit_gib is None:
    memory_limit_gib = (
        info["device_memory_bytes"] if device_memory else host_limit
    ) / _GIB
  rss_limit = host_limit if device_memory else memory_limit_gib * _GIB
  out = out or os.path.join("bench_results", f"relative_{backend}.jsonl")

  header = {
      "kind": "header",
      "suite": "relative",
      "device": info["device"],
      "backend": backend,
      "jax_version": info["jax_version"],
      "kattn_version": info["kattn_version"],
      "settings": dataclasses.asdict(settings),
      "bias_modes": {m: _RELATIVE_BIAS_MODE[m] for m in mechanisms},
      "memory_limit_gib": memory_limit_gib,
      "memory_measure": "device" if device_memory else "rss",
  }
  print(f"device: {header['device']}  (jax {header['jax_version']})")
  print(
      f"shape: batch {settings.batch}, {settings.heads} heads, head dim"
      f" {settings.head_dim}, {settings.num_features} FAVOR+ features,"
      f" {settings.dtype}; square grids, L = side^2; {settings.repeats} timed"
      " runs; rpe_* = relative_favor_attention (FFT), softmax_relative ="
      " relative_softmax_attention (quadratic), padded bias unless torus"
  )
  print(
      "memory: "
      + ("device peak_bytes_in_use" if device_memory else "peak RSS (VmHWM)")
      + f" of the config's subprocess; limit {memory_limit_gib:.1f} GiB;"
      " t/(LlgL): time / (L log2 L), relative to the mechanism's smallest grid"
  )
  print()
  print(_RELATIVE_ROW.format(
      "mechanism", "mode", "grid", "L", "min ms", "median ms", "compile s",
      "peak MiB", "incr MiB", "t/(LlgL)", "status",
  ))

  records = [header]
  shape = dict(
      batch=settings.batch, heads=settings.heads, head_dim=settings.head_dim,
      num_features=settings.num_features,
  )
  for mechanism in mechanisms:
    for mode in modes:
      smallest = None
      for side in sides:
        length = side * side
        estimate = estimate_relative_memory_bytes(
            mechanism, mode, side=side, dtype=settings.dtype, **shape
        )
        record = {
            "kind": "result", "mechanism": mechanism, "mode": mode,
            "side": side, "length": length,
            "bias_mode": _RELATIVE_BIAS_MODE[mechanism],
            "estimate_gib": estimate / _GIB,
        }
        if estimate > memory_limit_gib * _GIB:
          result = {
              "status": f"skipped (estimated {estimate / _GIB:.2f} GiB >"
                        f" limit {memory_limit_gib:.2f} GiB)"
          }
        else:
          result = run_isolated(
              {
                  "kind": "relative_config", "mechanism": mechanism,
                  "mode": mode, "side": side,
                  "settings": dataclasses.asdict(settings),
              },
              rss_limit_bytes=rss_limit, timeout_s=timeout_s,
          )
        record.update(result)
        if record["status"] == "ok":
          per_l_log_l = record["min_ms"] / (length * math.log2(length))
          smallest = smallest or per_l_log_l
          record["time_per_l_log_l_vs_smallest"] = per_l_log_l / smallest
        records.append(record)
        print(_format_relative_row(record, device_memory), flush=True)
        _write_jsonl_atomically(out, records)

  print()
  for line in relative_ratio_lines(records[1:], device_memory):
    print(line)

  print(f"\nside by side in one process, {paired_rounds} interleaved rounds:")
  for numerator, denominator, mode in RELATIVE_PAIRED_COMPARISONS:
    if not {numerator, denominator} <= set(mechanisms) or mode not in modes:
      continue
    for side in paired_sides:
      result = run_isolated(
          {
              "kind": "relative_paired", "mechanisms": [numerator, denominator],
              "mode": mode, "side": side, "rounds": paired_rounds,
              "settings": dataclasses.asdict(settings),
          },
          rss_limit_bytes=rss_limit, timeout_s=timeout_s,
      )
      record = {
          "kind": "paired", "mechanisms": [numerator, denominator],
          "mode": mode, "side": side, "length": side * side,
          "rounds": paired_rounds, **result,
      }
      records.append(record)
      if record["status"] == "ok":
        a, b = (record["min_ms"][m] for m in (numerator, denominator))
        line = (
            f"{numerator}/{denominator} {mode} {side}x{side}: time"
            f" {a / b:.2f}x (min {a:.1f} ms vs {b:.1f} ms)"
        )
      else:
        line = (
            f"{numerator}/{denominator} {mode} {side}x{side}:"
            f" {record['status']}"
        )
      print(line, flush=True)
      _write_jsonl_atomically(out, records)

  print(f"\nwrote {len(records)} JSON lines to {out}")
  return 0


def _define_flags():
  """Flags live here, not at import, so tests can import the module freely."""
  flags.DEFINE_list(
      "lengths", [str(n) for n in LENGTHS],
      "Sequence lengths L (learned suite: default"
      f" {','.join(map(str, LEARNED_LENGTHS))}).",
  )
  flags.DEFINE_list(
      "mechanisms", None,
      f"Subset of {', '.join(MECHANISMS)}; default all (softmax_cudnn on GPU"
      f" only). Learned suite: subset of {', '.join(LEARNED_SUITE_MECHANISMS)},"
      " default all.",
  )
  flags.DEFINE_list(
      "modes", list(MODES),
      "Subset of fwd, fwd_bwd (learned suite: default"
      f" {','.join(LEARNED_MODES)}).",
  )
  flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Input dtype.")
  flags.DEFINE_integer("repeats", 3, "Timed runs after one warm-up run.")
  flags.DEFINE_list(
      "paired_lengths", [str(n) for n in PAIRED_LENGTHS],
      "Lengths of the side-by-side ratio timings (one process per pair and"
      " length; learned suite: default --lengths).",
  )
  flags.DEFINE_integer(
      "paired_rounds", PAIRED_ROUNDS, "Interleaved rounds of the side-by-side"
      " timings.",
  )
  flags.DEFINE_bool(
      "quick", False, "Lengths 256 and 1024 only (relative suite: sides 16"
      " and 32)."
  )
  flags.DEFINE_enum(
      "suite", "attention", ["attention", "learned", "relative"],
      "attention: softmax vs FAVOR+ vs scan over --lengths. learned: the"
      " learned spectral kernels vs FAVOR+ (bidirectional) over --lengths,"
      f" default {','.join(map(str, LEARNED_LENGTHS))}, fwd_bwd, each ratio"
      " also side by side. relative: FFT-RPE"
      " (relative_favor_attention) vs quadratic relative-bias softmax over"
      f" --sides, with defaults {RELATIVE_SETTINGS.heads} heads, head dim"
      f" {RELATIVE_SETTINGS.head_dim}, {RELATIVE_SETTINGS.num_features}"
      f" features, modes {','.join(RELATIVE_MODES)} and"
      f" {RELATIVE_PAIRED_ROUNDS} paired rounds unless those flags are given.",
  )
  flags.DEFINE_list(
      "sides", [str(n) for n in RELATIVE_SIDES],
      "Relative suite: square grid sides (L = side^2).",
  )
  flags.DEFINE_list(
      "paired_sides", [str(n) for n in RELATIVE_PAIRED_SIDES],
      "Relative suite: grid sides of the side-by-side ratio timings.",
  )
  flags.DEFINE_string(
      "out", None,
      "JSON-lines path; default bench_results/<suite>_<backend>.jsonl.",
  )
  flags.DEFINE_float(
      "memory_limit_gib", None,
      "Skip configurations estimated above this; default 80% of physical RAM"
      " on CPU (also the RSS at which a subprocess is killed), the device"
      " memory on GPU.",
  )
  flags.DEFINE_integer("batch", 1, "Batch size B.")
  flags.DEFINE_integer("heads", 8, "Heads h.")
  flags.DEFINE_integer("head_dim", 64, "Head dim d (= value dim).")
  flags.DEFINE_integer("num_features", 256, "FAVOR+ random features m.")
  flags.DEFINE_integer(
      "learned_num_features", None,
      "Learned suite: draws m of every learned kernel (RKS: 2m+1 features,"
      " PRF: m); default each kernel's default_num_features.",
  )
  flags.DEFINE_integer(
      "chunk_size", linear.DEFAULT_CHUNK_SIZE, "kattn causal chunk size C."
  )
  flags.DEFINE_integer(
      "chunks_per_step", linear.DEFAULT_CHUNKS_PER_STEP,
      "kattn chunks per scan step.",
  )
  flags.DEFINE_float(
      "timeout_s", 3600.0, "Kill a configuration's subprocess after this."
  )
  flags.DEFINE_bool(
      "check_only", False,
      "Only check scan_causal against kattn (outputs and gradients) and exit.",
  )
  # Declared under another module name so that --help (main module flags)
  # leaves it out; --helpfull still lists it.
  flags.DEFINE_string(
      "_worker", None,
      "Internal: run one JSON task in this process and print its record.",
      module_name="experiments.bench_attention.internal",
  )


def _relative_main(flag_values) -> int:
  """Runs the relative suite; shape flags not given take its defaults."""
  for name in flag_values.mechanisms or ():
    if name not in RELATIVE_MECHANISMS:
      raise app.UsageError(
          f"--mechanisms: {name!r} is not one of {RELATIVE_MECHANISMS}"
      )
  modes = flag_values.modes if flag_values["modes"].present else RELATIVE_MODES
  for name in modes:
    if name not in MODES:
      raise app.UsageError(f"--modes: {name!r} is not one of {MODES}")
  if flag_values.repeats < 1:
    raise app.UsageError(f"--repeats must be >= 1; got {flag_values.repeats}")
  given = lambda name: flag_values[name].present
  settings = dataclasses.replace(RELATIVE_SETTINGS, **{
      name: flag_values[name].value
      for name in ("batch", "heads", "head_dim", "num_features", "dtype",
                   "repeats")
      if given(name)
  })
  quick = flag_values.quick
  return run_relative_benchmark(
      settings,
      sides=QUICK_RELATIVE_SIDES if quick else tuple(
          int(n) for n in flag_values.sides
      ),
      mechanisms=flag_values.mechanisms, modes=tuple(modes),
      out=flag_values.out, memory_limit_gib=flag_values.memory_limit_gib,
      timeout_s=flag_values.timeout_s,
      paired_sides=QUICK_RELATIVE_PAIRED_SIDES if quick else tuple(
          int(n) for n in flag_values.paired_sides
      ),
      paired_rounds=(
          flag_values.paired_rounds if given("paired_rounds")
          else RELATIVE_PAIRED_ROUNDS
      ),
  )


def _settings_from_flags(flag_values) -> Settings:
  return Settings(
      batch=flag_values.batch, heads=flag_values.heads,
      head_dim=flag_values.head_dim, num_features=flag_values.num_features,
      dtype=flag_values.dtype, chunk_size=flag_values.chunk_size,
      chunks_per_step=flag_values.chunks_per_step,
      repeats=flag_values.repeats,
      learned_num_features=flag_values.learned_num_features,
  )


def _learned_main(flag_values) -> int:
  """Runs the learned suite; length and mode flags not given take its own."""
  given = lambda name: flag_values[name].present
  try:
    mechanisms = check_learned_suite(
        flag_values.mechanisms, head_dim=flag_values.head_dim,
        learned_num_features=flag_values.learned_num_features,
    )
  except ValueError as error:
    raise app.UsageError(f"learned suite: {error}") from error
  modes = flag_values.modes if given("modes") else LEARNED_MODES
  for name in modes:
    if name not in MODES:
      raise app.UsageError(f"--modes: {name!r} is not one of {MODES}")
  if flag_values.repeats < 1:
    raise app.UsageError(f"--repeats must be >= 1; got {flag_values.repeats}")
  if flag_values.quick:
    lengths, paired_lengths = QUICK_LENGTHS, QUICK_PAIRED_LENGTHS
  else:
    lengths = (
        tuple(int(n) for n in flag_values.lengths) if given("lengths")
        else LEARNED_LENGTHS
    )
    paired_lengths = (
        tuple(int(n) for n in flag_values.paired_lengths)
        if given("paired_lengths") else lengths
    )
  return run_benchmark(
      _settings_from_flags(flag_values), lengths=lengths,
      mechanisms=mechanisms, modes=tuple(modes), out=flag_values.out,
      memory_limit_gib=flag_values.memory_limit_gib,
      timeout_s=flag_values.timeout_s, paired_lengths=paired_lengths,
      paired_rounds=flag_values.paired_rounds, suite="learned",
      paired_comparisons=LEARNED_PAIRED_COMPARISONS,
  )


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  flag_values = flags.FLAGS
  if flag_values["_worker"].value is not None:
    record = _run_worker_task(json.loads(flag_values["_worker"].value))
    print(_RESULT_MARKER + json.dumps(record), flush=True)
    return
  if flag_values.check_only:
    errors = check_scan_causal()
    for name, error in errors.items():
      print(f"{name}: max relative error {error:.2e}")
    passed = max(errors.values()) <= _CHECK_TOLERANCE
    verdict = "passed" if passed else "FAILED"
    print(f"tolerance {_CHECK_TOLERANCE:.0e}: {verdict}")
    sys.exit(0 if passed else 1)

  if flag_values.suite == "relative":
    sys.exit(_relative_main(flag_values))
  if flag_values.suite == "learned":
    sys.exit(_learned_main(flag_values))
  for name in flag_values.mechanisms or ():
    if name not in MECHANISMS:
      raise app.UsageError(f"--mechanisms: {name!r} is not one of {MECHANISMS}")
  for name in flag_values.modes:
    if name not in MODES:
      raise app.UsageError(f"--modes: {name!r} is not one of {MODES}")
  if flag_values.repeats < 1:
    raise app.UsageError(f"--repeats must be >= 1; got {flag_values.repeats}")
  lengths = (
      QUICK_LENGTHS if flag_values.quick
      else tuple(int(n) for n in flag_values.lengths)
  )
  paired_lengths = (
      QUICK_PAIRED_LENGTHS if flag_values.quick
      else tuple(int(n) for n in flag_values.paired_lengths)
  )
  sys.exit(run_benchmark(
      _settings_from_flags(flag_values), lengths=lengths,
      mechanisms=flag_values.mechanisms,
      modes=flag_values.modes, out=flag_values.out,
      memory_limit_gib=flag_values.memory_limit_gib,
      timeout_s=flag_values.timeout_s, paired_lengths=paired_lengths,
      paired_rounds=flag_values.paired_rounds,
  ))


if __name__ == "__main__":
  _define_flags()
  app.run(main)
