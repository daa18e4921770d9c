"""The benchmark's baseline and models, the demo, and README's code."""

import pathlib
import re

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
