r"""Launches an experiment: trains, checkpoints, resumes and evaluates.

  python -m experiments.train --config experiments/configs/digits.py[:variant] \
      --workdir runs/NAME [--config.model.attention=softmax ...]

Re-running the same command resumes from the latest intact checkpoint in
--workdir; re-running a finished run reports it complete and changes nothing.
One run at a time may use a workdir. With `--distributed`, calls
`jax.distributed.initialize()` first (multi-host GPU/TPU; the cluster is
discovered from the environment). A user error (bad config value, busy
workdir, diverged training) is one line on stderr and exit status 2;
`--verbose` shows its traceback.
"""

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from experiments import cli
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
  trained = (
      f"{results['train_time_s']:.0f}s training"
      if results.get("train_time_s") is not None
      else "no training in this run"
  )
  print(f"{results['dataset']}, attention {results['attention']}:"
        f" {results['steps']} steps, {trained}")
  print(robustness.format_report(results))
  print(f"\nresults: {FLAGS.workdir}/results.json")


if __name__ == "__main__":
  cli.run(main)
