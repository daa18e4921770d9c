"""kattn's main job: a worked example of the pure functions, then a benchmark.

  python -m experiments.demo            # about 3 minutes on 2 CPU cores
  python -m experiments.demo --skip_benchmark

Prints (1) how closely FAVOR+ matches exact softmax attention as the number
of random features grows, bidirectional and causal; (2) that causal outputs
ignore the future bit for bit; (3) jit, vmap and grad composed around
`favor_attention`; (4) the benchmark's small table (lengths 256 and 1024).
"""

from __future__ import annotations

import functools
import time

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

import kattn
from experiments import bench_attention

FLAGS = flags.FLAGS
flags.DEFINE_bool("skip_benchmark", False, "Only run the worked example.")
flags.DEFINE_integer("length", 1024, "Tokens in the worked example.")


def _inputs(length, heads=4, dim=32, seed=0):
  keys = jax.random.split(jax.random.key(seed), 3)
  q, k = (0.5 * jax.random.normal(key, (1, length, heads, dim)) for key in keys[:2])
  return q, k, jax.random.normal(keys[2], (1, length, heads, dim))


def accuracy_table(length):
  """Relative error of FAVOR+ against exact softmax attention."""
  q, k, v = _inputs(length)
  print(f"(1) FAVOR+ vs exact softmax attention, L={length}, 4 heads, d=32,"
        " orthogonal positive features, mean over 3 projections;"
        " Monte-Carlo error falls like m^(-1/2)")
  print(f"    {'features m':>10}  {'bidirectional':>13}  {'causal':>8}")
  for num_features in (16, 64, 256, 1024):
    errors = {}
    for causal in (False, True):
      exact = kattn.softmax_attention(q, k, v, causal=causal)
      per_draw = []
      for seed in range(3):
        w = kattn.orthogonal_random_projection(
            jax.random.key(seed), num_features, q.shape[-1]
        )
        out = kattn.favor_attention(q, k, v, projection=w, causal=causal)
        per_draw.append(float(jnp.linalg.norm(out - exact) / jnp.linalg.norm(exact)))
      errors[causal] = np.mean(per_draw)
    print(f"    {num_features:>10}  {errors[False]:>13.4f}  {errors[True]:>8.4f}")


def causality_check(length):
  q, k, v = _inputs(length)
  w = kattn.orthogonal_random_projection(jax.random.key(1), 256, q.shape[-1])
  t = length // 2
  future = jnp.arange(length)[None, :, None, None] > t
  k_changed = jnp.where(future, 20.0 * k, k)
  v_changed = jnp.where(future, -v, v)
  attend = jax.jit(functools.partial(kattn.favor_attention, projection=w, causal=True))
  before, after = attend(q, k, v), attend(q, k_changed, v_changed)
  same = bool(jnp.array_equal(before[:, :t + 1], after[:, :t + 1]))
  print(f"(2) causal: keys/values after t={t} changed (keys x20);"
        f" outputs up to t bitwise identical: {same}")


def composition_example(length):
  q, k, v = _inputs(length)
  batch = jnp.stack([q[0], k[0]])  # two examples [2, L, h, d]
  w = kattn.orthogonal_random_projection(jax.random.key(2), 256, q.shape[-1])
  attend = jax.jit(lambda x, w: kattn.favor_attention(x, x, x, projection=w))
  per_example = jax.vmap(attend, in_axes=(0, None))(batch, w)
  loss = lambda x: jnp.mean(attend(x, w) ** 2)
  start = time.perf_counter()
  grad = jax.block_until_ready(jax.jit(jax.grad(loss))(batch))
  print(f"(3) jit+vmap: outputs {per_example.shape}; jit+grad: gradient"
        f" {grad.shape}, finite={bool(jnp.all(jnp.isfinite(grad)))},"
        f" {time.perf_counter() - start:.2f}s including compilation")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # keep backend-probing notes out
  print(f"kattn {kattn.__version__}, jax {jax.__version__}, devices {jax.devices()}\n")
  accuracy_table(FLAGS.length)
  causality_check(FLAGS.length)
  composition_example(FLAGS.length)
  if FLAGS.skip_benchmark:
    return
  print("\n(4) benchmark, small table (`make bench` runs L up to 65536):\n")
  status = bench_attention.run_benchmark(
      bench_attention.Settings(), lengths=bench_attention.QUICK_LENGTHS,
      mechanisms=None, modes=bench_attention.MODES, out=None,
      memory_limit_gib=None, timeout_s=600.0,
      paired_lengths=bench_attention.QUICK_PAIRED_LENGTHS,
  )
  if status:
    raise SystemExit(status)


if __name__ == "__main__":
  app.run(main)
