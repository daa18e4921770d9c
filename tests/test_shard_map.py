"""Every public attention inside `jax.shard_map` equals the unsharded call.

Each case runs `jax.jit(jax.shard_map(...))` over a batch-sharded 8-device
CPU mesh (queries, keys, values, features and landmarks split on the batch
axis; tables, projections and kernel parameters replicated) and compares the
output and the gradients of sum(out * cotangent), w.r.t. every array input,
with the same jitted function called unsharded. Inside `shard_map` a
replicated parameter's gradient is the `psum` of the shards' contributions
(the transpose of marking it as varying), so it is compared too.

The test process has one CPU device, so all cases run once, in one
subprocess with `--xla_force_host_platform_device_count=8`, which writes a
JSON report per case; the parametrised test then checks one case each.

Tolerance: the sharded program is the same computation on 2 examples per
shard instead of 16, so only float32 rounding may differ (XLA may vectorise
or fuse the smaller batch differently, and parameter gradients are summed in
another order): |sharded - unsharded| <= ATOL + RTOL |unsharded| elementwise
for outputs and batch-sharded gradients, ATOL + RTOL max |unsharded| for
parameter gradients (see `_compare`), matmuls at "highest" precision.
Measured: outputs and sharded gradients within 3.6e-7 (at most 3% of the
allowance; the linear attentions and SOFT bit-identical), parameter
gradients within 1.1e-5 (at most 12%, an FFT path's group log-bias).
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import subprocess
import sys
import time
import zlib

import jax
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np
import pytest

import kattn
from kattn import positional
from kattn.attention import (
    average_pool_landmarks,
    dense_group_kernel_attention,
    group_feature_map_attention,
    group_lifting_feature_map_attention,
    relative_group_index,
)

ROOT = pathlib.Path(__file__).resolve().parents[1]
NUM_DEVICES = 8
BATCH = 16  # 2 examples per shard
GRID = (4, 4)
LENGTH = GRID[0] * GRID[1]
HEADS, DIM, V_DIM, NUM_FEATURES = 2, 4, 3, 8
# Two scan steps (blocks of 4 x 2 tokens) over the 16 tokens.
CHUNKS = dict(chunk_size=4, chunks_per_step=2)
RTOL = ATOL = 1e-5


def _normal(rng, shape, scale=1.0):
  return (scale * rng.standard_normal(shape)).astype(np.float32)


def _positive(rng, shape):
  return (np.abs(rng.standard_normal(shape)) + 0.1).astype(np.float32)


def _qkv(rng, order=None, scale=0.5):
  lead = (BATCH,) if order is None else (BATCH, order)
  shape = lead + (LENGTH, HEADS, DIM)
  return dict(
      q=_normal(rng, shape, scale), k=_normal(rng, shape, scale),
      v=_normal(rng, lead + (LENGTH, HEADS, V_DIM)),
  )


def _projection(rng):
  return _normal(rng, (NUM_FEATURES, DIM), DIM ** -0.5)


# A builder takes a numpy Generator and returns (fn, sharded, replicated):
# `fn(*sharded.values(), *replicated.values())` is the attention, sharded
# arrays have the batch axis first, replicated ones are parameter pytrees.


def _softmax(rng, causal):
  fn = lambda q, k, v: kattn.softmax_attention(q, k, v, causal=causal)
  return fn, _qkv(rng), {}


def _quadratic_kernel(rng, causal):
  fn = lambda qf, kf, v: kattn.quadratic_kernel_attention(
      qf, kf, v, causal=causal)
  shape = (BATCH, LENGTH, HEADS, NUM_FEATURES)
  return fn, dict(
      q_features=_positive(rng, shape), k_features=_positive(rng, shape),
      v=_qkv(rng)["v"]), {}


def _linear(rng, causal):
  fn = lambda qf, kf, v: kattn.linear_attention(
      qf, kf, v, causal=causal, **CHUNKS)
  shape = (BATCH, LENGTH, HEADS, NUM_FEATURES)
  return fn, dict(
      q_features=_positive(rng, shape), k_features=_positive(rng, shape),
      v=_qkv(rng)["v"]), {}


def _feature_map(rng, features, causal):
  feature_map = {"relu": kattn.relu_features,
                 "elu": kattn.elu_plus_one_features}[features]
  fn = lambda q, k, v: kattn.feature_map_attention(
      q, k, v, feature_map=feature_map, causal=causal, **CHUNKS)
  return fn, _qkv(rng), {}


def _favor(rng, kernel, causal):
  fn = lambda q, k, v, projection: kattn.favor_attention(
      q, k, v, projection=projection, kernel=kernel, causal=causal, **CHUNKS)
  return fn, _qkv(rng), dict(projection=_projection(rng))


def _learned(rng, kernel, causal):
  # Random values of `init_learned_kernel`'s shapes (running it would cost a
  # compile): Gaussian parameters and noise, or FastFood's permutations.
  params, noise = jax.eval_shape(functools.partial(
      kattn.init_learned_kernel, kernel, num_heads=HEADS, dim=DIM,
      num_features=NUM_FEATURES), jax.random.key(0))
  params = jax.tree.map(lambda x: _normal(rng, x.shape, 0.5), params)
  if np.issubdtype(noise.dtype, np.integer):
    noise = np.stack([rng.permutation(noise.shape[-1])
                      for _ in range(noise.shape[0])]).astype(noise.dtype)
  else:
    noise = _normal(rng, noise.shape)
  fn = lambda q, k, v, params: kattn.learned_kernel_attention(
      q, k, v, kernel=kernel, params=params, noise=noise, causal=causal,
      **CHUNKS)
  return fn, _qkv(rng), dict(params=params)


def _log_bias(rng, mode):
  shape = (HEADS,) + positional.relative_bias_shape(GRID, mode=mode)
  return _normal(rng, shape, 0.5)


def _relative_softmax(rng, mode):
  fn = lambda q, k, v, log_bias: positional.relative_softmax_attention(
      q, k, v, log_bias, grid=GRID, mode=mode)
  return fn, _qkv(rng), dict(log_bias=_log_bias(rng, mode))


def _relative_feature_map(rng, mode, method):
  fn = lambda q, k, v, log_bias: positional.relative_feature_map_attention(
      q, k, v, log_bias, feature_map=kattn.elu_plus_one_features, grid=GRID,
      mode=mode, method=method)
  return fn, _qkv(rng), dict(log_bias=_log_bias(rng, mode))


def _relative_favor(rng, mode, method):
  fn = lambda q, k, v, log_bias, projection: (
      positional.relative_favor_attention(
          q, k, v, log_bias, projection=projection, grid=GRID, mode=mode,
          method=method))
  return fn, _qkv(rng), dict(
      log_bias=_log_bias(rng, mode), projection=_projection(rng))


def _toeplitz(rng, mode, method):
  fn = lambda qf, kf, v, log_bias: positional.toeplitz_2d_linear_attention(
      qf, kf, v, log_bias, grid=GRID, mode=mode, method=method)
  shape = (BATCH, LENGTH, HEADS, NUM_FEATURES)
  return fn, dict(
      q_features=_positive(rng, shape), k_features=_positive(rng, shape),
      v=_qkv(rng)["v"]), dict(log_bias=_log_bias(rng, mode))


def _dense_relative_kernel(rng, mode):
  fn = lambda qf, kf, v, log_bias: positional.dense_relative_kernel_attention(
      qf, kf, v, log_bias, grid=GRID, mode=mode)
  shape = (BATCH, LENGTH, HEADS, NUM_FEATURES)
  return fn, dict(
      q_features=_positive(rng, shape), k_features=_positive(rng, shape),
      v=_qkv(rng)["v"]), dict(log_bias=_log_bias(rng, mode))


MAX_DISTANCE = 2


def _clipped(rng, torus, dense=False):
  attention = (positional.dense_clipped_relative_attention if dense
               else positional.clipped_relative_attention)
  fn = lambda qf, v, table_features: attention(
      qf, v, table_features, grid=GRID, max_distance=MAX_DISTANCE,
      torus=torus)
  return fn, dict(
      q_features=_positive(rng, (BATCH, LENGTH, HEADS, NUM_FEATURES)),
      v=_qkv(rng)["v"]), dict(
          table_features=_positive(
              rng, (MAX_DISTANCE + 1, HEADS, NUM_FEATURES)))


def _clipped_favor(rng, torus):
  fn = lambda q, v, table, projection: (
      positional.clipped_relative_favor_attention(
          q, v, table, projection=projection, grid=GRID,
          max_distance=MAX_DISTANCE, torus=torus))
  qkv = _qkv(rng)
  return fn, dict(q=qkv["q"], v=qkv["v"]), dict(
      table=_normal(rng, (MAX_DISTANCE + 1, HEADS, DIM), 0.5),
      projection=_projection(rng))


def _relative_keys(rng, order, window):
  table = (window, window) if window else (2 * GRID[0] - 1, 2 * GRID[1] - 1)
  return _normal(rng, (order,) + table + (HEADS, DIM), 0.5)


def _lifting(rng, window):
  fn = lambda q, k, v, relative_keys: kattn.lifting_self_attention(
      q, k, v, relative_keys, grid=GRID, window=window)
  return fn, _qkv(rng), dict(relative_keys=_relative_keys(rng, 4, window))


def _group_self(rng, window):
  index = relative_group_index("p4")
  fn = lambda q, k, v, relative_keys, group_keys: kattn.group_self_attention(
      q, k, v, relative_keys, group_keys, index, grid=GRID, window=window)
  return fn, _qkv(rng, order=4), dict(
      relative_keys=_relative_keys(rng, 4, window),
      group_keys=_normal(rng, (4, HEADS, DIM), 0.5))


_ORDERS = {"p4": 4, "p4m": 8}


def _group_favor(rng, group, method):
  fn = lambda q, k, v, log_bias, group_log_bias, projection: (
      kattn.group_favor_attention(
          q, k, v, log_bias, group_log_bias, group=group,
          projection=projection, grid=GRID, method=method))
  return fn, _qkv(rng, order=_ORDERS[group]), dict(
      log_bias=_log_bias(rng, "padded"),
      group_log_bias=_normal(rng, (HEADS, _ORDERS[group]), 0.5),
      projection=_projection(rng))


def _group_lifting_favor(rng, group, method):
  fn = lambda q, k, v, log_bias, projection: (
      kattn.group_lifting_favor_attention(
          q, k, v, log_bias, group=group, projection=projection, grid=GRID,
          method=method))
  return fn, _qkv(rng), dict(
      log_bias=_log_bias(rng, "padded"), projection=_projection(rng))


def _group_feature_map(rng, group, method):
  fn = lambda q, k, v, log_bias, group_log_bias: group_feature_map_attention(
      q, k, v, log_bias, group_log_bias, group=group,
      feature_map=kattn.elu_plus_one_features, grid=GRID, method=method)
  return fn, _qkv(rng, order=_ORDERS[group]), dict(
      log_bias=_log_bias(rng, "padded"),
      group_log_bias=_normal(rng, (HEADS, _ORDERS[group]), 0.5))


def _group_lifting_feature_map(rng, group, method):
  fn = lambda q, k, v, log_bias: group_lifting_feature_map_attention(
      q, k, v, log_bias, group=group, feature_map=kattn.elu_plus_one_features,
      grid=GRID, method=method)
  return fn, _qkv(rng), dict(log_bias=_log_bias(rng, "padded"))


def _dense_group_kernel(rng):
  shape = (BATCH, 4, LENGTH, HEADS, NUM_FEATURES)
  fn = lambda qf, kf, v, log_bias, group_log_bias: (
      dense_group_kernel_attention(
          qf, kf, v, log_bias, group_log_bias, group="p4", grid=GRID))
  return fn, dict(
      q_features=_positive(rng, shape), k_features=_positive(rng, shape),
      v=_qkv(rng, order=4)["v"]), dict(
          log_bias=_log_bias(rng, "padded"),
          group_log_bias=_normal(rng, (HEADS, 4), 0.5))


def _gpsa_params(rng):
  # Mild locality: the "fft" method rounds relative to each head's largest
  # positional weight, so a wide log-bias spread (|w . r| up to ~10 at 0.5)
  # leaves ~1e-5 of float32 noise that the shards round differently.
  return dict(position_weights=_normal(rng, (HEADS, 3), 0.2),
              gate_logits=_normal(rng, (HEADS,)))


def _gpsa(rng):
  fn = lambda q, k, v, w, gates: kattn.gated_positional_self_attention(
      q, k, v, w, gates, grid=GRID)
  return fn, _qkv(rng), _gpsa_params(rng)


def _linear_gpsa(rng, positional_method):
  fn = lambda q, k, v, w, gates, projection: (
      kattn.linear_gated_positional_self_attention(
          q, k, v, w, gates,
          feature_map=kattn.attention.favor_feature_map(projection, DIM),
          grid=GRID, positional_method=positional_method))
  return fn, _qkv(rng), dict(**_gpsa_params(rng), projection=_projection(rng))


def _soft(rng):
  # Landmarks pooled from q: the gradient reaches q through them too.
  fn = lambda q, v: kattn.soft_attention(
      q, v, average_pool_landmarks(q, grid=GRID, reduction=2), ridge=0.01,
      normalization="symmetric")
  qkv = _qkv(rng, scale=1.0)
  return fn, dict(q=qkv["q"], v=qkv["v"]), {}


_case = functools.partial
# One case per public function and path: both directions of every function
# with `causal=`, every FAVOR+ kernel, an RKS and a PRF learned kernel, the
# FFT and dense paths, torus and finite grids, local and global windows.
CASES = {
    "softmax-bidirectional": _case(_softmax, causal=False),
    "softmax-causal": _case(_softmax, causal=True),
    "quadratic_kernel-bidirectional": _case(_quadratic_kernel, causal=False),
    "quadratic_kernel-causal": _case(_quadratic_kernel, causal=True),
    "linear-bidirectional": _case(_linear, causal=False),
    "linear-causal": _case(_linear, causal=True),
    "feature_map-relu-bidirectional": _case(
        _feature_map, features="relu", causal=False),
    "feature_map-elu-causal": _case(
        _feature_map, features="elu", causal=True),
    "favor-positive-causal": _case(_favor, kernel="positive", causal=True),
    "favor-hyperbolic-bidirectional": _case(
        _favor, kernel="hyperbolic", causal=False),
    "favor-trigonometric-causal": _case(
        _favor, kernel="trigonometric", causal=True),
    "learned-gmm_rks-causal": _case(_learned, kernel="gmm_rks", causal=True),
    "learned-fastfood_prf-bidirectional": _case(
        _learned, kernel="fastfood_prf", causal=False),
    "relative_softmax-padded": _case(_relative_softmax, mode="padded"),
    "relative_feature_map-torus-fft": _case(
        _relative_feature_map, mode="torus", method="fft"),
    "relative_favor-padded-dense": _case(
        _relative_favor, mode="padded", method="dense"),
    "toeplitz_2d_linear-padded-fft": _case(
        _toeplitz, mode="padded", method="fft"),
    "dense_relative_kernel-torus": _case(_dense_relative_kernel, mode="torus"),
    "clipped_relative-torus": _case(_clipped, torus=True),
    "clipped_relative_favor-finite": _case(_clipped_favor, torus=False),
    "dense_clipped_relative-finite": _case(_clipped, torus=False, dense=True),
    "lifting_self-window3": _case(_lifting, window=3),
    "group_self-global": _case(_group_self, window=None),
    "group_favor-p4-fft": _case(_group_favor, group="p4", method="fft"),
    "group_lifting_favor-p4m-dense": _case(
        _group_lifting_favor, group="p4m", method="dense"),
    "group_feature_map-p4-dense": _case(
        _group_feature_map, group="p4", method="dense"),
    "group_lifting_feature_map-p4-fft": _case(
        _group_lifting_feature_map, group="p4", method="fft"),
    "dense_group_kernel-p4": _dense_group_kernel,
    "gpsa": _gpsa,
    "linear_gpsa-separable": _case(
        _linear_gpsa, positional_method="separable"),
    "linear_gpsa-fft": _case(_linear_gpsa, positional_method="fft"),
    "soft-pooled_landmarks": _soft,
}


def _compare(got, want, *, summed=False) -> dict:
  """Largest error, and `ratio` (<= 1 passes) in units of the tolerance.

  The tolerance is ATOL + RTOL |want| per element, except for gradients
  `summed` over the batch (replicated parameters'), where the sum of 16
  examples' contributions may cancel to far below its terms, so the
  rounding of the terms is measured against the array's largest entry.
  """
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  if got.shape != want.shape:
    return dict(shape=[list(got.shape), list(want.shape)], ratio=np.inf)
  error = np.abs(got - want)
  scale = np.max(np.abs(want), initial=0.0) if summed else np.abs(want)
  return dict(
      max_abs_error=float(np.max(error, initial=0.0)),
      ratio=float(np.max(error / (ATOL + RTOL * scale), initial=0.0)),
      finite=bool(np.all(np.isfinite(want))),
  )


def _run_case(name, mesh):
  """`{"forward" | "grad_<input>": comparison}` for case `name`."""
  rng = np.random.default_rng(zlib.crc32(name.encode()))
  fn, sharded, replicated = CASES[name](rng)
  args = tuple(sharded.values()) + tuple(replicated.values())
  names = list(sharded) + list(replicated)
  out_shape = jax.eval_shape(fn, *args)
  cotangent = _normal(rng, out_shape.shape)

  def program(cotangent, *args):
    out, vjp = jax.vjp(fn, *args)
    return out, vjp(cotangent.astype(out.dtype))

  sharded_specs = (P("data"),) * (1 + len(sharded))
  replicated_specs = (P(),) * len(replicated)
  in_specs = sharded_specs + replicated_specs
  out_specs = (P("data"), sharded_specs[1:] + replicated_specs)
  on_mesh = [
      jax.device_put(x, NamedSharding(mesh, spec))
      for x, spec in zip((cotangent,) + args, in_specs)
  ]
  want = jax.jit(program)(cotangent, *args)
  got = jax.jit(jax.shard_map(
      program, mesh=mesh, in_specs=in_specs, out_specs=out_specs
  ))(*on_mesh)
  report = {"forward": _compare(got[0], want[0])}
  for index, (arg_name, got_grad, want_grad) in enumerate(
      zip(names, got[1], want[1])):
    got_leaves, _ = jax.tree_util.tree_flatten_with_path(got_grad)
    for (path, got_leaf), want_leaf in zip(
        got_leaves, jax.tree.leaves(want_grad)):
      label = f"grad_{arg_name}{jax.tree_util.keystr(path)}"
      report[label] = _compare(
          got_leaf, want_leaf, summed=index >= len(sharded))
  return report


def _main(path):
  """Runs every case on the 8-device mesh; writes `{case: report}` JSON."""
  assert jax.device_count() == NUM_DEVICES, jax.devices()
  mesh = jax.make_mesh(
      (NUM_DEVICES,), ("data",),
      axis_types=(jax.sharding.AxisType.Explicit,),
  )
  results = {}
  with jax.default_matmul_precision("highest"):
    for name in CASES:
      start = time.perf_counter()
      try:
        results[name] = _run_case(name, mesh)
      except Exception as error:  # pylint: disable=broad-except
        message = str(error).strip().splitlines()
        results[name] = {
            "error": f"{type(error).__name__}: {message[0] if message else ''}"
        }
      results[name]["seconds"] = time.perf_counter() - start
  pathlib.Path(path).write_text(json.dumps(results, indent=1))


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  path = tmp_path_factory.mktemp("shard_map") / "results.json"
  # Compiling dominates the run: XLA:CPU's classic emitters and LLVM's
  # cheapest settings compile about 5x faster than the defaults. Both sides
  # of every comparison are compiled with them.
  flags = " ".join([
      os.environ.get("XLA_FLAGS", ""),
      f"--xla_force_host_platform_device_count={NUM_DEVICES}",
      "--xla_cpu_use_fusion_emitters=false",
      "--xla_backend_optimization_level=0",
      "--xla_llvm_disable_expensive_passes=true",
  ])
  done = subprocess.run(
      [sys.executable, __file__, str(path)], cwd=ROOT, capture_output=True,
      text=True, timeout=600,
      env={**os.environ, "XLA_FLAGS": flags,
           "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join(
               filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))},
  )
  assert done.returncode == 0, done.stderr[-3000:]
  return json.loads(path.read_text())


@pytest.mark.parametrize("case", list(CASES))
def test_shard_map_matches_unsharded(results, case):
  report = results[case]
  assert "error" not in report, report["error"]
  for what, comparison in report.items():
    if what == "seconds":
      continue
    assert comparison.get("finite", False), (what, comparison)
    assert comparison["ratio"] <= 1.0, (what, comparison)


if __name__ == "__main__":
  _main(sys.argv[1])
