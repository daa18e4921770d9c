r"""Time and peak memory of ConViT's GPSA layer, quadratic and linear-cost.

  python -m experiments.bench_gpsa [--sides 32,64] [--modes fwd,fwd_bwd] \
      [--repeats 3] [--out experiments/results/bench_gpsa_cpu.jsonl]

One gated positional self-attention call (`kattn.attention.gpsa`, patch
tokens on a square side x side grid, L = side^2) with locality-initialised
positional weights, in three forms, each in a fresh process for its peak
memory:

* `quadratic`: `gated_positional_self_attention`, the content softmax, the
  positional softmax and their gated mix as `[heads, L, L]` arrays:
  O(h L^2 d) time, O(h L^2) memory.
* `linear_separable`: `linear_gated_positional_self_attention` with FAVOR+
  content features (m of them) and the positional softmax applied as its
  exact row and column factors: O(h L (m d + (H + W) d)) time, so
  O(h L^1.5 d) on a square grid, and O(h L (m + d)) memory.
* `linear_fft`: the same content term, the positional term as a Toeplitz
  bias by FFT on the padded (2H - 1) x (2W - 1) domain: O(h L log L d).

Configurations whose estimated memory exceeds the host limit are skipped and
reported as such, never run into the kernel's OOM killer. The table prints
time per layer call, the peak resident memory of the worker above its
start-up baseline, and each form's time and memory as a multiple of the
quadratic form's at the same side and mode; the JSON lines hold every field.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Optional

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import psutil

from experiments import bench_attention
from kattn.attention import favor_feature_map
from kattn.attention import gpsa
from kattn.features import orthogonal_random_projection

FORMS = ("quadratic", "linear_separable", "linear_fft")
SIDES = (32, 64)


@dataclasses.dataclass(frozen=True)
class GpsaSettings:
  """Shapes of one GPSA layer call."""

  batch: int = 1
  heads: int = 9
  head_dim: int = 16
  num_features: int = 64
  locality_strength: float = 1.0
  repeats: int = 3
  seed: int = 0


def _check_names(form: str, mode: str) -> None:
  if form not in FORMS:
    raise ValueError(f"`form` must be one of {FORMS}; got {form!r}.")
  if mode not in bench_attention.MODES:
    raise ValueError(
        f"`mode` must be one of {bench_attention.MODES}; got {mode!r}.")


def estimate_memory_bytes(form: str, mode: str, side: int,
                          settings: GpsaSettings) -> int:
  """Rough peak bytes: the largest work arrays, float32, plus the runtime.

  quadratic: 4 x B h L^2 (content logits, their softmax, the positional
  weights and the gated mix); linear_separable: 3 x B h L (2m + 3d + 1), the
  q and k features and float32 copies of q, k, v and the outputs;
  linear_fft: that plus 3 x B h (d + 1) 4L, the value field on the padded
  FFT domain, its spectrum and the product. Backward passes hold about 3x
  the forward work. (Measured on CPU at side 64, quadratic: 1.9 GiB fwd and
  6.4 GiB fwd_bwd above the worker's baseline, against 2.3 and 6.8 GiB
  estimated.)

  Args:
    form: one of `FORMS`.
    mode: `"fwd"` or `"fwd_bwd"`.
    side: grid side; L = side^2 tokens.
    settings: the shapes.

  Returns:
    Estimated bytes.

  Examples:
    >>> small, large = (estimate_memory_bytes("quadratic", "fwd", s,
    ...                                       GpsaSettings()) for s in (8, 16))
    >>> large > small
    True
  """
  _check_names(form, mode)
  length = side * side
  per_head = settings.batch * settings.heads
  if form == "quadratic":
    work = 4 * per_head * length**2
  else:
    work = 3 * per_head * length * (
        2 * settings.num_features + 3 * settings.head_dim + 1)
    if form == "linear_fft":
      work += 3 * per_head * (settings.head_dim + 1) * 4 * length
  work *= 4 * (1 if mode == "fwd" else 3)
  return bench_attention._RUNTIME_BYTES + work  # pylint: disable=protected-access


def _inputs(side: int, settings: GpsaSettings):
  """q, k, v `[B, L, h, d]`, the locality init, gates and projection."""
  keys = jax.random.split(jax.random.key(settings.seed), 4)
  shape = (settings.batch, side * side, settings.heads, settings.head_dim)
  q, k, v = (jax.random.normal(key, shape) for key in keys[:3])
  return jax.block_until_ready(dict(
      q=q, k=k, v=v,
      position_weights=jnp.asarray(gpsa.locality_position_weights(
          settings.heads, locality_strength=settings.locality_strength)),
      # ConViT initialises every gate logit to 1.
      gate_logits=jnp.ones((settings.heads,)),
      projection=orthogonal_random_projection(
          keys[3], settings.num_features, settings.head_dim),
  ))


def _layer_fn(form: str, side: int, settings: GpsaSettings):
  """(q, k, v, extra) -> out, for one form."""
  grid = (side, side)
  if form == "quadratic":
    return lambda q, k, v, x: gpsa.gated_positional_self_attention(
        q, k, v, x["position_weights"], x["gate_logits"], grid=grid)
  method = form.removeprefix("linear_")
  return lambda q, k, v, x: gpsa.linear_gated_positional_self_attention(
      q, k, v, x["position_weights"], x["gate_logits"],
      feature_map=favor_feature_map(x["projection"], settings.head_dim),
      grid=grid, positional_method=method,
  )


def run_config(form: str, mode: str, side: int,
               settings: GpsaSettings = GpsaSettings()) -> dict:
  """Compiles and times one configuration in this process."""
  _check_names(form, mode)
  inputs = _inputs(side, settings)
  extra = {k: w for k, w in inputs.items() if k not in ("q", "k", "v")}
  attend = _layer_fn(form, side, settings)
  if mode == "fwd":
    fn = jax.jit(attend)
  else:
    loss = lambda q, k, v, x: jnp.sum(attend(q, k, v, x))
    fn = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
  return bench_attention._measure(  # pylint: disable=protected-access
      fn, (inputs["q"], inputs["k"], inputs["v"], extra), settings.repeats
  )


def ratios_to_quadratic(record: dict, records) -> dict:
  """`record`'s time and memory increment over the quadratic form's.

  Args:
    record: a measured record with `mode`, `side`, `median_ms` and
      `increment_mib`.
    records: the records so far, `record` among them or not; the quadratic
      one of the same mode and side is the reference.

  Returns:
    `{"time_vs_quadratic": ..., "memory_vs_quadratic": ...}`, each None when
    either side of the ratio was not measured or is not positive.

  Examples:
    >>> quad = dict(form="quadratic", mode="fwd", side=8, status="ok",
    ...             median_ms=4.0, increment_mib=100.0)
    >>> lin = dict(quad, form="linear_fft", median_ms=1.0, increment_mib=0.0)
    >>> ratios_to_quadratic(lin, [quad])
    {'time_vs_quadratic': 0.25, 'memory_vs_quadratic': None}
  """
  reference = next(
      (r for r in records if r["form"] == "quadratic" and r["status"] == "ok"
       and r["mode"] == record["mode"] and r["side"] == record["side"]),
      None,
  )

  def ratio(key: str) -> Optional[float]:
    if reference is None or record.get("status") != "ok":
      return None
    if not (record[key] > 0 and reference[key] > 0):
      return None
    return record[key] / reference[key]

  return {"time_vs_quadratic": ratio("median_ms"),
          "memory_vs_quadratic": ratio("increment_mib")}


def _format_row(record: dict) -> str:
  head = f"{record['form']:17} {record['mode']:8} {record['side']:5d}"
  if record["status"] != "ok":
    return f"{head} {'-':>10} {'-':>9} {'-':>8} {'-':>8}  {record['status']}"
  ratio = lambda x: f"{x:8.3f}" if x is not None else f"{'-':>8}"
  return (f"{head} {record['median_ms']:10.2f} {record['increment_mib']:9.1f}"
          f" {ratio(record['time_vs_quadratic'])}"
          f" {ratio(record['memory_vs_quadratic'])}  ok")


def run_benchmark(sides, forms, modes, settings: GpsaSettings, out: str,
                  memory_limit_bytes: float) -> list[dict]:
  """Runs every configuration in its own worker, prints the table, writes out.

  Args:
    sides: grid sides (L = side^2).
    forms: names from `FORMS`.
    modes: `"fwd"` and/or `"fwd_bwd"`.
    settings: the shapes and repeats.
    out: JSON-lines path, replaced atomically.
    memory_limit_bytes: configurations estimated above it are skipped, and a
      worker whose resident set grows past it is killed.

  Returns:
    The records written, one per (mode, side, form).
  """
  for form in forms:
    for mode in modes:
      _check_names(form, mode)
  backend = jax.default_backend()
  device = bench_attention._describe_device(jax.devices()[0])  # pylint: disable=protected-access
  print(f"# GPSA layer, batch {settings.batch}, {settings.heads} heads,"
        f" d = {settings.head_dim}, FAVOR+ m = {settings.num_features},"
        f" locality strength {settings.locality_strength}; {device}")
  print(f"{'form':17} {'mode':8} {'side':>5} {'time ms':>10} {'peak MiB':>9}"
        f" {'t / quad':>8} {'m / quad':>8}  status")
  records = []
  for mode in modes:
    for side in sides:
      for form in forms:
        estimate = estimate_memory_bytes(form, mode, side, settings)
        record = {"form": form, "mode": mode, "side": side,
                  "length": side * side, "backend": backend, "device": device,
                  "estimated_mib": estimate / 2**20,
                  **dataclasses.asdict(settings)}
        if estimate > memory_limit_bytes:
          record.update(status=(
              f"skipped (estimated {estimate / 2**30:.1f} GiB > limit"
              f" {memory_limit_bytes / 2**30:.1f} GiB)"))
        else:
          record.update(_run_isolated(
              {"form": form, "mode": mode, "side": side,
               "settings": dataclasses.asdict(settings)}, memory_limit_bytes))
        records.append(record)
        record.update(ratios_to_quadratic(record, records))
        print(_format_row(record), flush=True)
  bench_attention._write_jsonl_atomically(out, records)  # pylint: disable=protected-access
  print(f"wrote {out}")
  return records


def _run_isolated(task: dict, limit: float) -> dict:
  """One configuration in a fresh interpreter of this module."""
  return bench_attention.run_isolated(
      task, rss_limit_bytes=int(limit), timeout_s=1800.0,
      command=[sys.executable, "-m", "experiments.bench_gpsa",
               "--_worker=" + json.dumps(task)],
  )


FLAGS = flags.FLAGS


def _define_flags():
  """Flags of the command line; defined at run time so that importing this
  module beside another benchmark does not define them twice."""
  flags.DEFINE_list("sides", [str(s) for s in SIDES], "Grid sides (L = side^2).")
  flags.DEFINE_list("forms", list(FORMS), "GPSA forms to run.")
  flags.DEFINE_list("modes", list(bench_attention.MODES), "fwd and/or fwd_bwd.")
  flags.DEFINE_integer("repeats", GpsaSettings.repeats,
                       "Timed calls after the warm-up; the median is kept.")
  flags.DEFINE_string("out", None, "JSON-lines output; default"
                      " experiments/results/bench_gpsa_<backend>.jsonl.")
  flags.DEFINE_float("memory_fraction", 0.6,
                     "Skip configurations estimated above this fraction of the"
                     " available host memory.")
  flags.DEFINE_string("_worker", None, "Internal: run one task and print it.")


def main(argv):
  del argv
  if FLAGS._worker:  # pylint: disable=protected-access
    task = json.loads(FLAGS._worker)  # pylint: disable=protected-access
    record = run_config(task["form"], task["mode"], task["side"],
                        GpsaSettings(**task["settings"]))
    print(bench_attention._RESULT_MARKER + json.dumps(record))  # pylint: disable=protected-access
    return
  out = FLAGS.out or os.path.join(
      "experiments", "results", f"bench_gpsa_{jax.default_backend()}.jsonl")
  run_benchmark(
      [int(s) for s in FLAGS.sides], FLAGS.forms, FLAGS.modes,
      GpsaSettings(repeats=FLAGS.repeats), out,
      FLAGS.memory_fraction * psutil.virtual_memory().available,
  )


if __name__ == "__main__":
  _define_flags()
  app.run(main)
