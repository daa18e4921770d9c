r"""Time and peak memory of group self-attention layers on square images.

  python -m experiments.bench_group [--sides 28,64,128] [--group p4] \
      [--modes fwd] [--out experiments/results/bench_group_cpu.jsonl]

One group layer (group feature map in, group feature map out, |G| = 4 for
p4) in three forms, each in a fresh process for its peak memory:

* `local`: GSA-Nets' windows (`kattn.attention.group.group_self_attention`,
  9 x 9 windows): logits `[|G|, |G|, L, 81, |G|]` per head, O(|G|^3 L p^2).
* `global`: the same layer over every pixel (`window=None`): O(|G|^3 L^2),
  the quadratic baseline.
* `linear`: the group-equivariant FAVOR+ attention
  (`kattn.attention.group_linear.group_favor_attention`, its FFT path): O(|G|
  L log L m d + |G|^2 L m d) time, O(|G| L m d) memory.

Configurations whose estimated memory exceeds the host limit are skipped and
reported as such, never run into the kernel's OOM killer. The table prints
time per layer call and the peak resident memory of the worker above its
start-up baseline; the JSON lines hold every field. For time per pixel x
|G| the last column divides by L |G|: flat for a linear cost.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import psutil

import kattn
from experiments import bench_attention
from kattn import groups as groups_lib
from kattn.attention import group as group_attention
from kattn.attention import group_linear

LAYERS = ("local", "global", "linear")
SIDES = (28, 64, 128)
WINDOW = 9


@dataclasses.dataclass(frozen=True)
class GroupSettings:
  """Shapes of one group layer call."""

  group: str = "p4"
  batch: int = 1
  heads: int = 4
  head_dim: int = 16
  num_features: int = 32
  repeats: int = 3
  seed: int = 0


def estimate_memory_bytes(layer: str, mode: str, side: int,
                          settings: GroupSettings) -> int:
  """Rough peak bytes: the largest work arrays, float32, plus the runtime.

  local: logits and weights, 3 x B h |G|^3 L p^2; global: 3 x B h |G|^3 L^2;
  linear: 3 x B h |G| m (d + 1) P (P the 5-smooth padded FFT domain, about
  4 L), the key field, its spectrum and the product (measured on CPU: 1.2
  GiB above the runtime at 64 x 64, p4, against 1.6 GiB estimated).
  Backward passes hold about 3x the forward work.
  """
  order = groups_lib.get_group(settings.group).order
  length = side * side
  per_head = settings.batch * settings.heads
  if layer == "local":
    work = 3 * per_head * order**3 * length * WINDOW**2
  elif layer == "global":
    work = 3 * per_head * order**3 * length**2
  else:
    work = 3 * per_head * order * settings.num_features * (
        settings.head_dim + 1) * 4 * length
  work *= 4 * (1 if mode == "fwd" else 3)
  return bench_attention._RUNTIME_BYTES + work  # pylint: disable=protected-access


def _inputs(side: int, settings: GroupSettings):
  group = groups_lib.get_group(settings.group)
  keys = jax.random.split(jax.random.key(settings.seed), 8)
  shape = (settings.batch, group.order, side * side, settings.heads,
           settings.head_dim)
  q, k, v = (jax.random.normal(key, shape) for key in keys[:3])
  return jax.block_until_ready(dict(
      q=q, k=k, v=v,
      projection=kattn.orthogonal_random_projection(
          keys[3], settings.num_features, settings.head_dim),
      local_keys=0.1 * jax.random.normal(
          keys[4], (group.order, WINDOW, WINDOW, settings.heads,
                    settings.head_dim)),
      global_keys=0.1 * jax.random.normal(
          keys[5], (group.order, 2 * side - 1, 2 * side - 1, settings.heads,
                    settings.head_dim)),
      group_keys=0.1 * jax.random.normal(
          keys[6], (group.order, settings.heads, settings.head_dim)),
      log_bias=0.1 * jax.random.normal(
          keys[7], (settings.heads, 2 * side - 1, 2 * side - 1)),
      group_log_bias=jnp.zeros((settings.heads, group.order)),
  ))


def _layer_fn(layer: str, side: int, settings: GroupSettings):
  """(q, k, v, extra) -> out, for one layer form."""
  grid = (side, side)
  if layer == "linear":
    return lambda q, k, v, x: group_linear.group_favor_attention(
        q, k, v, x["log_bias"], x["group_log_bias"], group=settings.group,
        projection=x["projection"], grid=grid, method="fft",
    )
  index = group_attention.relative_group_index(settings.group)
  local = layer == "local"
  return lambda q, k, v, x: group_attention.group_self_attention(
      q, k, v, x["local_keys" if local else "global_keys"], x["group_keys"],
      index, grid=grid, window=WINDOW if local else None,
  )


def run_config(layer: str, mode: str, side: int,
               settings: GroupSettings = GroupSettings()) -> dict:
  """Compiles and times one configuration in this process."""
  if layer not in LAYERS:
    raise ValueError(f"`layer` must be one of {LAYERS}; got {layer!r}.")
  if mode not in bench_attention.MODES:
    raise ValueError(
        f"`mode` must be one of {bench_attention.MODES}; got {mode!r}.")
  inputs = _inputs(side, settings)
  extra = {k: w for k, w in inputs.items() if k not in ("q", "k", "v")}
  attend = _layer_fn(layer, side, settings)
  if mode == "fwd":
    fn = jax.jit(attend)
  else:
    loss = lambda q, k, v, x: jnp.sum(attend(q, k, v, x))
    fn = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
  return bench_attention._measure(  # pylint: disable=protected-access
      fn, (inputs["q"], inputs["k"], inputs["v"], extra), settings.repeats
  )


FLAGS = flags.FLAGS


def _define_flags():
  """Flags of the command line; defined at run time so that importing this
  module beside another benchmark does not define them twice."""
  flags.DEFINE_list("sides", [str(s) for s in SIDES], "Image sides (L = side^2).")
  flags.DEFINE_list("layers", list(LAYERS), "Layer forms to run.")
  flags.DEFINE_list("modes", ["fwd"], "fwd and/or fwd_bwd.")
  flags.DEFINE_string("group", "p4", "Group name.")
  flags.DEFINE_string("out", None, "JSON-lines output; default"
                      " experiments/results/bench_group_<backend>.jsonl.")
  flags.DEFINE_float("memory_fraction", 0.6,
                     "Skip configurations estimated above this fraction of the"
                     " available host memory.")
  flags.DEFINE_string("_worker", None, "Internal: run one task and print it.")


def main(argv):
  del argv
  if FLAGS._worker:  # pylint: disable=protected-access
    task = json.loads(FLAGS._worker)  # pylint: disable=protected-access
    record = run_config(task["layer"], task["mode"], task["side"],
                        GroupSettings(**task["settings"]))
    print(bench_attention._RESULT_MARKER + json.dumps(record))  # pylint: disable=protected-access
    return
  settings = GroupSettings(group=FLAGS.group)
  order = groups_lib.get_group(settings.group).order
  limit = FLAGS.memory_fraction * psutil.virtual_memory().available
  backend = jax.default_backend()
  out = FLAGS.out or os.path.join(
      "experiments", "results", f"bench_group_{backend}.jsonl")
  device = bench_attention._describe_device(jax.devices()[0])  # pylint: disable=protected-access
  print(f"# group layer, {settings.group} (|G| = {order}), batch"
        f" {settings.batch}, {settings.heads} heads, d = {settings.head_dim},"
        f" m = {settings.num_features}, local window {WINDOW}; {device}")
  print(f"{'layer':8} {'mode':8} {'side':>5} {'time ms':>10} {'peak MiB':>9}"
        f" {'us / (L |G|)':>13}  status")
  records = []
  for mode in FLAGS.modes:
    for side in map(int, FLAGS.sides):
      for layer in FLAGS.layers:
        estimate = estimate_memory_bytes(layer, mode, side, settings)
        record = {"layer": layer, "mode": mode, "side": side,
                  "length": side * side, "backend": backend, "device": device,
                  "estimated_mib": estimate / 2**20,
                  **dataclasses.asdict(settings)}
        if estimate > limit:
          record.update(status=(
              f"skipped (estimated {estimate / 2**30:.1f} GiB > limit"
              f" {limit / 2**30:.1f} GiB)"))
        else:
          record.update(_run_isolated(
              {"layer": layer, "mode": mode, "side": side,
               "settings": dataclasses.asdict(settings)}, limit))
        records.append(record)
        if record["status"] == "ok":
          per = 1e3 * record["median_ms"] / (side * side * order)
          print(f"{layer:8} {mode:8} {side:5d} {record['median_ms']:10.2f}"
                f" {record['increment_mib']:9.1f} {per:13.3f}  ok", flush=True)
        else:
          print(f"{layer:8} {mode:8} {side:5d} {'-':>10} {'-':>9} {'-':>13}"
                f"  {record['status']}", flush=True)
  bench_attention._write_jsonl_atomically(out, records)  # pylint: disable=protected-access
  print(f"wrote {out}")


def _run_isolated(task: dict, limit: float) -> dict:
  """One configuration in a fresh interpreter of this module."""
  return bench_attention.run_isolated(
      task, rss_limit_bytes=int(limit), timeout_s=1800.0,
      command=[sys.executable, "-m", "experiments.bench_group",
               "--_worker=" + json.dumps(task)],
  )


if __name__ == "__main__":
  _define_flags()
  app.run(main)
