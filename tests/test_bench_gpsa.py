"""The GPSA benchmark: its command line end to end, its memory skip."""

from __future__ import annotations

import json
import math
import pathlib
import subprocess
import sys

import pytest

from experiments import bench_gpsa

ROOT = pathlib.Path(__file__).resolve().parents[1]

_POSITIVE_FIELDS = ("min_ms", "median_ms", "compile_s", "baseline_rss_mib",
                    "peak_rss_mib", "estimated_mib", "time_vs_quadratic")


def _is_positive(x) -> bool:
  return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_command_line_times_every_form_on_a_tiny_grid(tmp_path):
  out = tmp_path / "bench.jsonl"
  result = subprocess.run(
      [sys.executable, "-m", "experiments.bench_gpsa", "--sides=4",
       "--modes=fwd_bwd", "--repeats=1", f"--out={out}"],
      cwd=ROOT, check=True, capture_output=True, text=True, timeout=600,
  )
  records = [json.loads(line) for line in out.read_text().splitlines()]
  assert [r["form"] for r in records] == list(bench_gpsa.FORMS)
  for record in records:
    assert record["status"] == "ok", record
    assert (record["mode"], record["side"], record["length"]) == (
        "fwd_bwd", 4, 16)
    assert record["heads"] == 9 and record["num_features"] == 64
    assert len(record["times_ms"]) == 1
    for field in _POSITIVE_FIELDS:
      assert _is_positive(record[field]), (field, record)
    # The peak can equal the baseline in principle; it can never be below.
    assert record["increment_mib"] >= 0, record
    assert record["memory_vs_quadratic"] is None or _is_positive(
        record["memory_vs_quadratic"]), record
    assert record["form"] in result.stdout
  quadratic = records[0]
  assert quadratic["time_vs_quadratic"] == 1.0
  for record in records[1:]:
    assert record["time_vs_quadratic"] == pytest.approx(
        record["median_ms"] / quadratic["median_ms"], rel=1e-12)


def test_configurations_above_the_memory_limit_are_skipped(tmp_path):
  settings = bench_gpsa.GpsaSettings(repeats=1)
  limit = bench_gpsa.estimate_memory_bytes("quadratic", "fwd", 4, settings) - 1
  out = tmp_path / "bench.jsonl"
  records = bench_gpsa.run_benchmark(
      [4], ["quadratic"], ["fwd", "fwd_bwd"], settings, str(out), limit)
  assert [r["status"].split(" ")[0] for r in records] == ["skipped"] * 2
  assert all("median_ms" not in r and r["time_vs_quadratic"] is None
             for r in records)
  assert [json.loads(line) for line in out.read_text().splitlines()] == records


def test_memory_estimates_grow_quadratically_and_linearly():
  settings = bench_gpsa.GpsaSettings()
  runtime = bench_gpsa.bench_attention._RUNTIME_BYTES

  def work(form, side):
    return bench_gpsa.estimate_memory_bytes(form, "fwd", side,
                                            settings) - runtime

  # Doubling the side multiplies L by 4.
  assert work("quadratic", 64) == 16 * work("quadratic", 32)
  assert work("linear_separable", 64) == 4 * work("linear_separable", 32)
  assert work("linear_fft", 64) == 4 * work("linear_fft", 32)
  assert work("linear_fft", 64) < work("quadratic", 64)


def test_unknown_form_or_mode_raises():
  with pytest.raises(ValueError, match="`form` must be one of"):
    bench_gpsa.run_config("conv", "fwd", 4)
  with pytest.raises(ValueError, match="`mode` must be one of"):
    bench_gpsa.estimate_memory_bytes("quadratic", "bwd", 4,
                                     bench_gpsa.GpsaSettings())
