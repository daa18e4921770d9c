"""The benchmark's baseline and models, the demo, and README's code."""

import pathlib
import re
import subprocess
import sys

import chex
import hypothesis
import hypothesis.strategies as st
import jax
import numpy as np
import psutil
import pytest

from experiments import bench_attention
from kattn.flax import registry

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_scan_baseline_matches_kattn_causal_favor():
  errors = bench_attention.check_scan_causal()
  assert set(errors) == {"out", "grad_q", "grad_k", "grad_v"}
  assert max(errors.values()) < 1e-4, errors


def test_flop_model_by_hand():
  shape = dict(batch=1, heads=2, length=10, head_dim=4, num_features=8)
  # softmax: Q K^T and A V, 2 * L^2 * d FLOPs each per head.
  assert bench_attention.flop_model("softmax", "fwd", **shape) == 2 * 2 * 2 * 100 * 4
  # favor: 2 projections (2*L*m*d) + state and readout (2*L*m*(d_v+1)) per head.
  per_head = 2 * (2 * 10 * 8 * 4) + 2 * (2 * 10 * 8 * 5)
  assert bench_attention.flop_model("favor", "fwd", **shape) == 2 * per_head
  causal = bench_attention.flop_model("favor_causal", "fwd", chunk_size=4, **shape)
  assert causal == 2 * per_head + 2 * 2 * 10 * 4 * (8 + 5)


def test_memory_estimates_scale_quadratically_and_linearly():
  shape = dict(batch=1, heads=8, head_dim=64, num_features=256, dtype="float32")
  runtime = bench_attention._RUNTIME_BYTES

  def work(mechanism, length):
    return bench_attention.estimate_memory_bytes(
        mechanism, "fwd", length=length, **shape) - runtime

  scores = 8 * 16384**2 * 4  # one float32 score matrix at L=16384
  assert work("softmax", 16384) >= scores
  assert work("softmax", 16384) == pytest.approx(16 * work("softmax", 4096), rel=0.05)
  assert work("favor", 16384) == pytest.approx(4 * work("favor", 4096), rel=0.01)


def test_soft_flop_model_by_hand():
  shape = dict(batch=1, heads=2, length=10, head_dim=4, num_features=8,
               num_landmarks=3, num_iterations=5)
  # Per head: segment means 2*L*n*d, kernels P and A, P^T v, A^+ (P^T v) and
  # the readout, 5 Newton-Schulz steps of two n x n matmuls.
  landmarks = 2 * 10 * 3 * 4
  kernels = 2 * (10 * 3 * 4 + 3 * 3 * 4)
  products = 2 * (2 * 10 * 3 * 4 + 3 * 3 * 4)
  newton_schulz = 5 * 2 * (2 * 3**3)
  fwd = 2 * (landmarks + kernels + products + newton_schulz)
  assert bench_attention.flop_model("soft", "fwd", **shape) == fwd
  # Backward: one matmul for the landmarks, two for every other product,
  # and the pseudo-inverse VJP -V^T G V^T once.
  bwd = 2 * (landmarks + 2 * (kernels + products) + 2 * (2 * 3**3))
  assert bench_attention.flop_model("soft", "fwd_bwd", **shape) == fwd + bwd


def test_soft_memory_estimate_is_linear_and_below_favor():
  shape = dict(batch=1, heads=8, head_dim=64, num_features=256,
               num_landmarks=49, dtype="float32")
  runtime = bench_attention._RUNTIME_BYTES

  def work(mechanism, mode, length):
    return bench_attention.estimate_memory_bytes(
        mechanism, mode, length=length, **shape) - runtime

  for mode in bench_attention.MODES:
    assert work("soft", mode, 65536) == pytest.approx(
        4 * work("soft", mode, 16384), rel=0.01)
    # n = 49 landmarks against m = 256 features per token and head.
    assert work("soft", mode, 65536) < work("favor", mode, 65536)
  # One float32 [L, n] kernel per head at L = 65536 must fit in the estimate.
  assert work("soft", "fwd", 65536) >= 8 * 65536 * 49 * 4


def test_benchmark_soft_is_the_registry_soft_attention():
  keys = jax.random.split(jax.random.key(0), 3)
  q, k, v = (jax.random.normal(key, (1, 64, 2, 8)) for key in keys)
  projection = jax.numpy.zeros((4, 8))
  settings = bench_attention.Settings(heads=2, head_dim=8)
  out = bench_attention._attention_fn("soft", settings)(q, k, v, projection)
  expected = registry.get_attention("soft").fn(
      q, k, v, projection=projection, causal=False)
  # The same float32 computation: equal up to XLA's fusion choices.
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_one_isolated_configuration_runs_and_reports():
  record = bench_attention.run_isolated(
      {
          "kind": "config", "mechanism": "favor_causal", "mode": "fwd_bwd",
          "length": 64,
          "settings": {**bench_attention.dataclasses.asdict(
              bench_attention.Settings(heads=2, head_dim=8, num_features=16,
                                       repeats=1))},
      },
      rss_limit_bytes=4 << 30, timeout_s=300,
  )
  assert record["status"] == "ok", record
  assert record["min_ms"] > 0 and record["peak_rss_mib"] > 0


def test_readme_example_runs():
  readme = (ROOT / "README.md").read_text()
  blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
  examples = [b for b in blocks if "kattn" in b and not b.lstrip().startswith("!")]
  assert examples, "README has no runnable python example"
  for code in examples:
    exec(compile(code, "README.md", "exec"), {})


def test_readme_gives_the_test_command_that_ci_runs():
  readme = (ROOT / "README.md").read_text()
  ci = (ROOT / ".ci" / "run").read_text()
  assert "make test" in readme and "make demo" in readme
  assert re.search(r"^make test$", ci, re.M)


def test_paired_timing_reports_every_mechanism():
  settings = bench_attention.Settings(heads=2, head_dim=8, num_features=16)
  result = bench_attention.run_paired(
      ["favor", "favor_causal"], "fwd", 32, settings, rounds=2
  )
  assert result["status"] == "ok"
  assert set(result["min_ms"]) == {"favor", "favor_causal"}
  assert all(t > 0 for t in result["min_ms"].values())


def test_soft_runs_isolated_and_side_by_side_with_favor():
  settings = bench_attention.Settings(heads=2, head_dim=8, num_features=16,
                                      num_landmarks=4, repeats=1)
  record = bench_attention.run_isolated(
      {
          "kind": "config", "mechanism": "soft", "mode": "fwd_bwd",
          "length": 64,
          "settings": bench_attention.dataclasses.asdict(settings),
      },
      rss_limit_bytes=4 << 30, timeout_s=300,
  )
  assert record["status"] == "ok", record
  assert record["min_ms"] > 0 and record["peak_rss_mib"] > 0
  result = bench_attention.run_paired(
      ["soft", "favor"], "fwd_bwd", 32, settings, rounds=2
  )
  assert result["status"] == "ok"
  assert set(result["min_ms"]) == {"soft", "favor"}


def _results(mechanism, mode, increments):
  return [
      {"kind": "result", "mechanism": mechanism, "mode": mode,
       "length": 256 * 4**i, "status": "ok", "increment_mib": memory}
      for i, memory in enumerate(increments)
  ]


def test_memory_growth_tells_linear_from_quadratic():
  linear = bench_attention.memory_growth(
      _results("soft", "fwd", [30, 32, 40, 70, 190]), "soft", "fwd")
  assert linear["lengths"] == [256, 1024, 4096, 16384, 65536]
  assert linear["exponents"][0] < 0.1  # the constant still dominates
  assert linear["exponents"][-1] == pytest.approx(np.log(190 / 70) / np.log(4))
  assert linear["at_most_linear"] is True
  assert "at most linearly" in bench_attention.format_memory_growth(linear)
  quadratic = bench_attention.memory_growth(
      _results("soft", "fwd_bwd", [1, 16, 256]), "soft", "fwd_bwd")
  assert quadratic["exponents"] == pytest.approx([2.0, 2.0])
  assert quadratic["at_most_linear"] is False
  assert "FASTER" in bench_attention.format_memory_growth(quadratic)


def test_memory_growth_skips_failures_other_mechanisms_and_modes():
  records = (
      _results("soft", "fwd", [10, 40])
      + _results("favor", "fwd", [1, 100])
      + _results("soft", "fwd_bwd", [1, 100])
      + [{"kind": "result", "mechanism": "soft", "mode": "fwd",
          "length": 4096, "status": "skipped (estimated 9 GiB > limit)"}]
  )
  growth = bench_attention.memory_growth(records, "soft", "fwd")
  assert growth["lengths"] == [256, 1024]
  assert growth["exponents"] == pytest.approx([1.0])
  assert bench_attention.memory_growth(
      _results("soft", "fwd", [10]), "soft", "fwd") is None
  # No growth exponent from a non-positive increment, and then no verdict.
  flat = bench_attention.memory_growth(
      _results("soft", "fwd", [0, 40]), "soft", "fwd")
  assert flat["exponents"] == [None] and flat["at_most_linear"] is None
  assert "no verdict" in bench_attention.format_memory_growth(flat)


def test_isolated_peak_memory_is_the_subprocess_own():
  # Linux keeps ru_maxrss across execve: a child of a large parent would
  # report the parent's peak. Make this process large, then check.
  ballast = np.ones((256, 1 << 20), np.float32)  # 1 GiB, touched
  parent_rss_mib = psutil.Process().memory_info().rss / (1 << 20)
  record = bench_attention.run_isolated(
      {
          "kind": "config", "mechanism": "favor", "mode": "fwd", "length": 32,
          "settings": bench_attention.dataclasses.asdict(
              bench_attention.Settings(heads=1, head_dim=8, num_features=8,
                                       repeats=1)),
      },
      rss_limit_bytes=8 << 30, timeout_s=300,
  )
  assert record["status"] == "ok", record
  assert record["peak_rss_mib"] < parent_rss_mib - 512, (record, parent_rss_mib)
  del ballast


def test_relative_suite_runs_isolated_and_side_by_side():
  settings = bench_attention.Settings(
      heads=1, head_dim=4, num_features=4, repeats=1
  )
  record = bench_attention.run_isolated(
      {
          "kind": "relative_config", "mechanism": "rpe_padded",
          "mode": "fwd_bwd", "side": 4,
          "settings": bench_attention.dataclasses.asdict(settings),
      },
      rss_limit_bytes=4 << 30, timeout_s=300,
  )
  assert record["status"] == "ok", record
  assert record["min_ms"] > 0 and record["peak_rss_mib"] > 0
  paired = bench_attention.run_relative_paired(
      ["softmax_relative", "rpe_torus"], "fwd", 4, settings, rounds=1
  )
  assert paired["status"] == "ok"
  assert set(paired["min_ms"]) == {"softmax_relative", "rpe_torus"}


def test_relative_memory_estimates_scale_quadratically_and_linearly():
  shape = dict(batch=1, heads=2, head_dim=16, num_features=32)

  def work(mechanism, side):
    return bench_attention.estimate_relative_memory_bytes(
        mechanism, "fwd", side=side, **shape) - bench_attention._RUNTIME_BYTES

  assert work("softmax_relative", 128) == pytest.approx(
      256 * work("softmax_relative", 32), rel=0.05)
  assert work("rpe_padded", 128) == pytest.approx(
      16 * work("rpe_padded", 32), rel=0.01)
  # The finite-image FFT runs on a grid twice as wide and tall.
  assert work("rpe_padded", 64) > 3 * work("rpe_torus", 64)


# The learned suite: learned spectral kernels against FAVOR+.

_TINY_LEARNED = bench_attention.Settings(
    heads=2, head_dim=8, num_features=16, learned_num_features=16, repeats=1
)


@pytest.mark.parametrize("mechanism", bench_attention.LEARNED_MECHANISMS)
def test_learned_benchmark_fns_run_and_differentiate_the_spectral_params(
    mechanism,
):
  settings = _TINY_LEARNED
  inputs = bench_attention._inputs(32, settings)
  args = bench_attention._mechanism_args(mechanism, inputs, settings)
  q, k, v, params, noise = args
  # --learned_num_features=16 draws: FastFood's noise is one permutation of
  # the head dim 8 per block; every head has its own parameters.
  rows = 2 if mechanism.startswith("fastfood") else 16
  chex.assert_shape(noise, (rows, 8))
  assert {leaf.shape[0] for leaf in jax.tree_util.tree_leaves(params)} == {2}
  out = bench_attention._benchmark_fn(mechanism, "fwd", settings)(*args)
  chex.assert_shape(out, q.shape)
  chex.assert_tree_all_finite(out)

  grads = bench_attention._benchmark_fn(mechanism, "fwd_bwd", settings)(*args)
  # Gradients w.r.t. q, k, v and every spectral parameter; none for noise.
  chex.assert_trees_all_equal_shapes(grads, (q, k, v, params))
  chex.assert_tree_all_finite(grads)
  param_grad_norm = sum(
      float(np.abs(g).sum()) for g in jax.tree_util.tree_leaves(grads[3]))
  assert param_grad_norm > 0, mechanism


def test_learned_kernels_draw_their_defaults_unless_overridden():
  settings = bench_attention.Settings()
  for mechanism in bench_attention.LEARNED_MECHANISMS:
    default = 128 if mechanism.endswith("_rks") else 256
    assert bench_attention.mechanism_num_features(
        mechanism, settings) == default
    assert bench_attention.mechanism_num_features(
        mechanism, _TINY_LEARNED) == 16
  # FAVOR+ keeps its own m.
  assert bench_attention.mechanism_num_features("favor", _TINY_LEARNED) == 16
  assert bench_attention.mechanism_num_features(
      "favor", bench_attention.Settings(learned_num_features=64)) == 256


def test_learned_flop_model_by_hand():
  shape = dict(batch=2, heads=3, length=10, head_dim=4, num_features=8)
  tokens = 2 * 3 * 10
  # gmm_rks: q, k projections 2*L*m*d each, 2m+1 = 17 features in the state
  # and readout, and eps A_c once per head.
  projections = 2 * (2 * tokens * 8 * 4)
  state = 2 * (2 * tokens * 17 * 5)
  frequencies = 2 * 3 * 8 * 4**2
  assert bench_attention.flop_model("gmm_rks", "fwd", **shape) == (
      projections + state + frequencies)
  assert bench_attention.flop_model("gmm_rks", "fwd_bwd", **shape) == (
      3 * projections + 3 * state + 2 * frequencies)
  # fastfood_prf: two transforms of D log2 D adds per block of D = 4, i.e.
  # 2 m log2 D per token for q and for k; m features; no frequency matrix.
  transforms = 2 * (2 * tokens * 8 * 2)
  prf_state = 2 * (2 * tokens * 8 * 5)
  assert bench_attention.flop_model("fastfood_prf", "fwd", **shape) == (
      transforms + prf_state)
  assert bench_attention.flop_model("fastfood_prf", "fwd_bwd", **shape) == (
      2 * transforms + 3 * prf_state)
  # generative: eps W_1 [d x 2d], gelu(.) W_2 [2d x d] and eps A [d x d].
  hidden = 2 * 4
  generator = 2 * 3 * 8 * (4 * hidden + hidden * 4 + 4 * 4)
  assert bench_attention.flop_model("generative_prf", "fwd", **shape) == (
      2 * (2 * tokens * 8 * 4) + prf_state + generator)


def _affine_in_length(model, length):
  """model(L) = a + b L with b > 0, read off at L, 2L and 4L."""
  at = [model(n * length) for n in (1, 2, 4)]
  return at[0] > 0 and at[1] > at[0] and at[2] - at[0] == 3 * (at[1] - at[0])


@hypothesis.settings(max_examples=40, deadline=None, derandomize=True)
@hypothesis.given(
    mechanism=st.sampled_from(bench_attention.LEARNED_MECHANISMS),
    mode=st.sampled_from(bench_attention.MODES),
    length=st.integers(1, 1 << 16),
    batch=st.integers(1, 4),
    heads=st.integers(1, 16),
    head_dim=st.sampled_from([8, 48, 64]),
    num_features=st.sampled_from([128, 256]),
)
def test_learned_flops_and_memory_are_positive_and_linear_in_length(
    mechanism, mode, length, batch, heads, head_dim, num_features,
):
  shape = dict(batch=batch, heads=heads, head_dim=head_dim,
               num_features=num_features)
  flops = lambda n: bench_attention.flop_model(
      mechanism, mode, length=n, **shape)
  memory = lambda n: bench_attention.estimate_memory_bytes(
      mechanism, mode, length=n, **shape)
  assert _affine_in_length(flops, length)
  assert _affine_in_length(memory, length)
  # The check can fail: softmax's L^2 terms are rejected.
  assert not _affine_in_length(
      lambda n: bench_attention.flop_model("softmax", mode, length=n, **shape),
      length)


def test_learned_costs_compare_sensibly_with_favor():
  shape = dict(batch=1, heads=8, length=4096, head_dim=64)
  flops = lambda mechanism, m: bench_attention.flop_model(
      mechanism, "fwd_bwd", num_features=m, **shape)
  memory = lambda mechanism, m: bench_attention.estimate_memory_bytes(
      mechanism, "fwd_bwd", num_features=m, **shape)
  # FastFood's transforms replace the [m, d] projection matmuls.
  assert flops("fastfood_prf", 256) < flops("gmm_prf", 256)
  # The default RKS draws (2 * 128 + 1 features) cost about FAVOR+ with 256.
  for mechanism in ("gmm_rks", "fastfood_rks", "generative_rks"):
    assert memory(mechanism, 128) == pytest.approx(
        memory("favor", 256), rel=0.05)
  assert memory("gmm_prf", 256) == pytest.approx(memory("favor", 256), rel=0.05)


def test_learned_suite_rejects_unknown_names_and_unusable_feature_counts():
  assert bench_attention.check_learned_suite(None, head_dim=64) == (
      ("favor",) + bench_attention.LEARNED_MECHANISMS)
  with pytest.raises(ValueError, match=r"unknown \['gmm', 'softmax'\]"):
    bench_attention.check_learned_suite(
        ["favor", "gmm", "softmax"], head_dim=64)
  with pytest.raises(ValueError, match="fastfood_rks at head dim 64.*multiple"
                     " of 64"):
    bench_attention.check_learned_suite(
        ["gmm_rks", "fastfood_rks"], head_dim=64, learned_num_features=96)
  with pytest.raises(ValueError, match="gmm_prf.*multiple of 2"):
    bench_attention.check_learned_suite(
        ["gmm_prf"], head_dim=64, learned_num_features=33)
  # 96 suits every kernel but FastFood at head dim 64; FAVOR+ ignores it.
  assert bench_attention.check_learned_suite(
      ["favor", "gmm_prf", "generative_rks"], head_dim=64,
      learned_num_features=96) == ("favor", "gmm_prf", "generative_rks")
  # The command line turns it into a usage error before any run starts.
  result = subprocess.run(
      [sys.executable, "-m", "experiments.bench_attention", "--suite=learned",
       "--mechanisms=favor,bogus"],
      cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode != 0
  assert "learned suite: `mechanisms` must be names from" in result.stderr
  assert "['bogus']" in result.stderr and "BENCH_RESULT" not in result.stdout


def test_learned_ratio_lines_compare_with_favor():
  record = lambda mechanism, ms, mib: {
      "kind": "result", "mechanism": mechanism, "mode": "fwd_bwd",
      "length": 1024, "status": "ok", "min_ms": ms, "peak_rss_mib": mib,
      "increment_mib": mib / 2}
  lines = bench_attention.ratio_lines(
      [record("fastfood_prf", 3.0, 300.0), record("favor", 2.0, 200.0)])
  assert lines == [
      "fastfood_prf/favor fwd_bwd L=1024: time 1.50x, peak memory 1.50x,"
      " memory increment 1.50x"]


def test_learned_kernel_runs_side_by_side_with_favor_in_a_subprocess():
  # The suite's paired task: the learned settings cross the process boundary
  # and each mechanism gets its own arguments. fwd compiles fastest.
  result = bench_attention.run_isolated(
      {
          "kind": "paired", "mechanisms": ["generative_prf", "favor"],
          "mode": "fwd", "length": 32, "rounds": 2,
          "settings": bench_attention.dataclasses.asdict(_TINY_LEARNED),
      },
      rss_limit_bytes=4 << 30, timeout_s=300,
  )
  assert result["status"] == "ok", result
  assert set(result["min_ms"]) == {"generative_prf", "favor"}
  assert all(t > 0 for t in result["min_ms"].values())
