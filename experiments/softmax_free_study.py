r"""Softmax vs FAVOR+ vs SOFT: accuracy, time per step and memory, side by side.

  python -m experiments.softmax_free_study --workdir runs/softmax_free \
      [--datasets digits,fashion] [--attentions softmax,favor,soft,soft_norm] \
      [--size runlocal] [--output experiments/results/softmax_free]

For each dataset and attention of `configs/softmax_free.py` this trains one
run in WORKDIR/DATASET/ATTENTION, each in its own process (so that its peak
memory is its own), skipping runs that finished. It writes OUTPUT/study.json
and a Markdown table (study.md) with the test accuracy, the training time
per step and the peak resident memory of each run, beside the SOFT paper's
ImageNet comparison on its Tiny pyramid. Fashion-MNIST is skipped, with a
message, where Debian's `dataset-fashion-mnist` is not installed.
"""

import os
import time

from absl import app
from absl import flags
from absl import logging

from experiments import studies
from experiments.configs import softmax_free
from kattn import train

FLAGS = flags.FLAGS

# ImageNet top-1 (%) on SOFT's Tiny pyramid, every attention with the same
# backbone and recipe (Lu et al. 2021's comparison of linear attentions);
# SOFT-Norm is the released normalised Tiny model.
PUBLISHED = {"softmax": 79.1, "favor": 76.1, "soft": 79.3, "soft_norm": 79.4}
LABELS = {
    "softmax": "softmax",
    "favor": "FAVOR+ (Performer)",
    "soft": "SOFT",
    "soft_norm": "SOFT, symmetric normalisation",
}


def _define_flags():
  """Flags of the command line; defined at run time so that importing this
  module beside another study does not define them twice."""
  flags.DEFINE_string("workdir", None, "Root folder of the runs.")
  flags.DEFINE_list("datasets", ["digits", "fashion"], "Datasets to run.")
  flags.DEFINE_list(
      "attentions", list(softmax_free.ATTENTIONS), "Attentions to compare."
  )
  flags.DEFINE_string("size", "", "Size variant: '' or runlocal.")
  flags.DEFINE_string(
      "output", None, "Folder for study.json and study.md; default WORKDIR."
  )
  flags.mark_flags_as_required(["workdir"])


def run_one(dataset: str, attention: str, size: str, workdir: str) -> dict:
  """Trains one run in a fresh process (or finds it); its figures."""
  variant = ",".join(a for a in (attention, dataset, size) if a)
  results = studies.train_in_subprocess(
      softmax_free.__file__, variant, workdir, f"{dataset}/{attention}"
  )
  return {
      "attention": attention, "dataset": results["dataset"],
      "accuracy": results["accuracy"],
      "num_test_examples": results["num_examples"],
      "steps": results["steps"],
      "time_per_step_ms": results["median_time_per_step_ms"],
      "peak_rss_mib": results["peak_rss_mib"],
  }


def format_table(study: dict) -> str:
  """Markdown: accuracy, ms per step and peak memory per attention."""
  lines = []
  for dataset, runs in study["datasets"].items():
    if not runs:
      continue
    first = next(iter(runs.values()))
    lines += [
        f"### {dataset} ({first['dataset']})", "",
        f"Test accuracy % (n = {first['num_test_examples']}) after"
        f" {first['steps']} steps; training time per step (batch"
        f" {study['batch_size']}, median over logging windows after"
        " compilation) and the run's peak resident memory.", "",
        "| attention | test accuracy | ms / step | peak memory |"
        " ImageNet top-1, SOFT-Tiny pyramid (paper) |",
        "|---|---|---|---|---|",
    ]
    for attention, run in runs.items():
      lines.append(
          f"| {LABELS[attention]} | {100 * run['accuracy']:.2f} |"
          f" {run['time_per_step_ms']:.0f} | {run['peak_rss_mib']:.0f} MiB |"
          f" {PUBLISHED[attention]:.1f} |"
      )
    lines.append("")
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  studies.check_flags(
      {"datasets": (FLAGS.datasets, softmax_free.DATASETS),
       "attentions": (FLAGS.attentions, softmax_free.ATTENTIONS)},
      FLAGS.size, ("",) + softmax_free.SIZES,
  )
  output = FLAGS.output or FLAGS.workdir
  os.makedirs(output, exist_ok=True)
  study = {
      "size": FLAGS.size or "cpu",
      "batch_size": softmax_free.get_config(FLAGS.size).batch_size,
      "datasets": {},
  }
  start = time.perf_counter()
  for dataset in FLAGS.datasets:
    study["datasets"][dataset] = {}
    if not studies.dataset_available(dataset):
      continue
    for attention in FLAGS.attentions:
      study["datasets"][dataset][attention] = run_one(
          dataset, attention, FLAGS.size,
          os.path.join(FLAGS.workdir, dataset, attention),
      )
      train.write_json_atomically(os.path.join(output, "study.json"), study)
  studies.write_outputs(output, study, format_table(study), None, start)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
