r"""Launches an experiment: trains, checkpoints, resumes and evaluates.

  python -m experiments.train --config experiments/configs/digits.py[:variant] \
      --workdir runs/NAME [--config.model.attention=softmax ...]

Re-running the same command resumes from the latest checkpoint in --workdir.
With `--distributed`, calls `jax.distributed.initialize()` first (multi-host
GPU/TPU; the cluster is discovered from the environment).
"""

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from kattn import robustness
from kattn import train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, with an optional :variant.",
    lock_config=True,
)
flags.DEFINE_string("workdir", None, "Folder for checkpoints, metrics, results.")
flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() (multi-host)."
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  if FLAGS.distributed:
    jax.distributed.initialize()
  print(f"devices: {jax.devices()}", flush=True)
  results = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  print()
  print(f"{results['dataset']}, attention {results['attention']}:"
        f" {results['steps']} steps, {results['train_time_s']:.0f}s training")
  print(robustness.format_report(results))
  print(f"\nresults: {FLAGS.workdir}/results.json")


if __name__ == "__main__":
  app.run(main)
