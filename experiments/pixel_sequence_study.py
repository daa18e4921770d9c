r"""Pixel-sequence classification: softmax, FAVOR+ and six learned kernels.

  python -m experiments.pixel_sequence_study --workdir runs/pixel_sequence \
      [--datasets digits,fashion] [--attentions softmax,favor,gmm_rks,...] \
      [--seeds 0,1,2] [--size runlocal] [--output DIR]

For each seed, dataset and attention of `configs/pixel_sequence.py` this
trains one run in WORKDIR/DATASET/ATTENTION/seedS, each in its own process
(so that its peak memory is its own), skipping runs that finished. Seeds
run outermost, so an interrupted study still has whole seeds. It writes
OUTPUT/study.json and a Markdown table (study.md): test accuracy (mean and
standard deviation over seeds), training time per step and peak resident
memory (medians over seeds), beside the published LRA Image figures for
context. Fashion-MNIST is skipped, with a message, where Debian's
`dataset-fashion-mnist` is not installed; grey CIFAR-10 (`cifar10`) needs
`tensorflow_datasets` and the network, so it is not in the default list.
"""

import os
import time

from absl import app
from absl import flags
from absl import logging
import numpy as np

from experiments import studies
from experiments.configs import pixel_sequence
from kattn import train

FLAGS = flags.FLAGS

# LRA Image (grey CIFAR-10, L = 1024) test accuracy %, Tay et al. 2021:
# context only, since our data, model size and budget differ.
PUBLISHED = {"softmax": 42.44, "favor": 42.77}
LABELS = {
    "softmax": "softmax",
    "favor": "FAVOR+ (Performer)",
    "gmm_rks": "GMM-RKS",
    "gmm_prf": "GMM-PRF",
    "fastfood_rks": "FastFood-RKS",
    "fastfood_prf": "FastFood-PRF",
    "generative_rks": "Generative-RKS",
    "generative_prf": "Generative-PRF",
}
LABELS_ORDER = {name: i for i, name in enumerate(LABELS)}


def _define_flags():
  """Flags of the command line; defined at run time so that importing this
  module beside another study does not define them twice."""
  flags.DEFINE_string("workdir", None, "Root folder of the runs.")
  flags.DEFINE_list("datasets", ["digits", "fashion"], "Datasets to run.")
  flags.DEFINE_list(
      "attentions", list(pixel_sequence.ATTENTIONS), "Attentions to compare."
  )
  flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of each configuration.")
  flags.DEFINE_string("size", "", "Size variant: '' or runlocal.")
  flags.DEFINE_string(
      "output", None, "Folder for study.json and study.md; default WORKDIR."
  )
  flags.mark_flags_as_required(["workdir"])


def run_one(
    dataset: str, attention: str, seed: int, size: str, workdir: str
) -> dict:
  """Trains one run in a fresh process (or finds it); its figures."""
  variant = ",".join(a for a in (attention, dataset, size) if a)
  results = studies.train_in_subprocess(
      pixel_sequence.__file__, variant, workdir,
      f"{dataset}/{attention}/seed{seed}", overrides=(f"--config.seed={seed}",),
  )
  return {
      "seed": seed, "dataset": results["dataset"],
      "accuracy": results["accuracy"],
      "num_test_examples": results["num_examples"],
      "steps": results["steps"],
      "time_per_step_ms": results["median_time_per_step_ms"],
      "peak_rss_mib": results["peak_rss_mib"],
  }


def summarise(runs: list[dict]) -> dict:
  """Mean and standard deviation of accuracy, medians of time and memory."""
  accuracy = 100 * np.array([run["accuracy"] for run in runs])
  return {
      "num_seeds": len(runs),
      "accuracy_mean": float(accuracy.mean()),
      "accuracy_std": float(accuracy.std(ddof=1)) if len(runs) > 1 else None,
      "time_per_step_ms": float(np.median([r["time_per_step_ms"] for r in runs])),
      "peak_rss_mib": float(np.median([r["peak_rss_mib"] for r in runs])),
  }


def format_table(study: dict) -> str:
  """Markdown: accuracy over seeds, ms per step and peak memory."""
  lines = []
  for dataset, by_attention in study["datasets"].items():
    if not by_attention:
      continue
    first = next(iter(by_attention.values()))["runs"][0]
    lines += [
        f"### {dataset} ({first['dataset']})", "",
        f"Test accuracy % (n = {first['num_test_examples']}; mean ± std over"
        f" seeds) after {first['steps']} steps of batch"
        f" {study['batch_size']}; training time per step (median over"
        " logging windows after compilation, then over seeds) and the run's"
        " peak resident memory.", "",
        "| attention | test accuracy | seeds | ms / step | peak memory |"
        " LRA Image (published) |",
        "|---|---|---|---|---|---|",
    ]
    # In the configs' order (softmax, FAVOR+, then the learned kernels),
    # whatever order the JSON kept.
    for attention in sorted(
        by_attention, key=lambda a: LABELS_ORDER.get(a, len(LABELS_ORDER))
    ):
      summary = by_attention[attention]["summary"]
      spread = (
          f" ± {summary['accuracy_std']:.2f}"
          if summary["accuracy_std"] is not None else ""
      )
      published = PUBLISHED.get(attention)
      lines.append(
          f"| {LABELS[attention]} | {summary['accuracy_mean']:.2f}{spread} |"
          f" {summary['num_seeds']} | {summary['time_per_step_ms']:.0f} |"
          f" {summary['peak_rss_mib']:.0f} MiB |"
          f" {f'{published:.2f}' if published else '–'} |"
      )
    lines.append("")
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  studies.check_flags(
      {"datasets": (FLAGS.datasets, pixel_sequence.DATASETS),
       "attentions": (FLAGS.attentions, pixel_sequence.ATTENTIONS)},
      FLAGS.size, ("",) + pixel_sequence.SIZES,
  )
  try:
    seeds = [int(seed) for seed in FLAGS.seeds]
  except ValueError as err:
    raise app.UsageError(
        f"--seeds must be comma-separated integers; got {FLAGS.seeds}."
    ) from err
  output = FLAGS.output or FLAGS.workdir
  os.makedirs(output, exist_ok=True)
  study = {
      "size": FLAGS.size or "cpu",
      "batch_size": pixel_sequence.get_config(FLAGS.size).batch_size,
      "seeds": seeds,
      "datasets": {},
  }
  datasets = [d for d in FLAGS.datasets if studies.dataset_available(d)]
  for dataset in FLAGS.datasets:
    study["datasets"][dataset] = {}
  start = time.perf_counter()
  for seed in seeds:
    for dataset in datasets:
      for attention in FLAGS.attentions:
        run = run_one(
            dataset, attention, seed, FLAGS.size,
            os.path.join(FLAGS.workdir, dataset, attention, f"seed{seed}"),
        )
        entry = study["datasets"][dataset].setdefault(attention, {"runs": []})
        entry["runs"].append(run)
        entry["summary"] = summarise(entry["runs"])
        train.write_json_atomically(os.path.join(output, "study.json"), study)
  studies.write_outputs(output, study, format_table(study), None, start)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
