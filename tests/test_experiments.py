"""The benchmark's baseline and models, the demo, and README's code."""

import pathlib
import re

import jax
import numpy as np
import psutil
import pytest

from experiments import bench_attention

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
