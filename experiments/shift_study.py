r"""Horn et al.'s shift study: train every position variant, test shifted images.

  python -m experiments.shift_study --workdir runs/shift \
      [--datasets digits,fashion] [--variants nopos,absolute,...] \
      [--size runlocal] [--output experiments/results/shift_robustness]

For each dataset and position variant of `configs/shift_robustness.py` this
trains one run in WORKDIR/DATASET/VARIANT (resuming, and skipping runs that
finished), then evaluates the paper's protocol on the test split: images
whose object stays in frame under every horizontal shift up to 8 pixels,
shifted by -8..8 pixels with zero fill, for the class-1 subset (digit one,
trouser) and for all classes. It writes OUTPUT/study.json, a Markdown table
in the paper's layout with the paper's numbers beside ours (study.md) and a
plot of the curves (study.png). Fashion-MNIST is skipped, with a message,
where Debian's `dataset-fashion-mnist` is not installed.
"""

import os
import time

from absl import app
from absl import flags
from absl import logging

from experiments import studies
from experiments.configs import shift_robustness
from kattn import robustness
from kattn import train

FLAGS = flags.FLAGS


def _define_flags():
  """Flags of the command line; defined at run time so that importing this
  module beside another study does not define them twice."""
  flags.DEFINE_string("workdir", None, "Root folder of the runs.")
  flags.DEFINE_list("datasets", ["digits", "fashion"], "Datasets to run.")
  flags.DEFINE_list(
      "variants", ["nopos", "absolute", "strategy1", "strategy2", "fft_torus",
                   "fft_padded"],
      "Position variants of configs/shift_robustness.py.",
  )
  flags.DEFINE_string(
      "size", "", "Size variant: '' (CPU patch model), pixels or runlocal."
  )
  flags.DEFINE_string(
      "output", None, "Folder for study.json/.md/.png; default WORKDIR."
  )
  flags.mark_flags_as_required(["workdir"])


MAX_SHIFT = 8
# Horn et al. 2021, shift robustness on the class-1 test subset (accuracy %,
# shifts -8, -4, 0, +4, +8), from the authors' results files.
PAPER = {
    "digits": {
        "absolute": (25.8, 90.7, 99.3, 98.5, 58.2),
        "strategy1": (100.0, 99.9, 100.0, 100.0, 99.6),
        "strategy1_content": (99.9, 99.9, 99.9, 99.8, 99.9),
        "strategy2": (97.9, 99.5, 99.5, 99.5, 96.5),
        "nopos": (99.4, 99.4, 99.4, 99.4, 99.4),
    },
    "fashion": {
        "absolute": (0.0, 0.8, 99.1, 90.6, 0.1),
        "strategy1": (89.6, 98.2, 99.2, 98.9, 98.4),
        "strategy2": (39.4, 87.4, 98.6, 98.6, 92.0),
    },
}
LABELS = {
    "nopos": "no positions",
    "absolute": "absolute (sinusoid added)",
    "strategy1": "strategy 1 (constrained sinusoids)",
    "strategy1_content": "strategy 1 + content-conditional",
    "strategy2": "strategy 2 (clipped relative)",
    "fft_torus": "FFT-RPE, torus",
    "fft_padded": "FFT-RPE, zero-padded",
}


def _config_arg(dataset, variant, size):
  return ",".join(a for a in (variant, dataset, size) if a)


def run_one(dataset: str, variant: str, size: str, workdir: str) -> dict:
  """Trains (or finds) one run and measures its shift curves."""
  config = shift_robustness.get_config(_config_arg(dataset, variant, size))
  results = studies.train_or_find(config, workdir, f"{dataset}/{variant}")
  config, model, state = train.restore_for_evaluation(workdir)
  test = train.load_dataset(config, "test")
  predict = train.make_predict(model, state)
  subset = test.labels == config.study.label
  class_curve = robustness.shift_curve(
      predict, test.images[subset], test.labels[subset], max_shift=MAX_SHIFT,
      axis="horizontal", batch_size=config.eval.batch_size,
  )
  # Training evaluated every class under the same protocol.
  all_curve = results["shift"]["horizontal"]
  return {
      "variant": variant, "dataset": config.dataset,
      "accuracy": results["accuracy"],
      "num_test_examples": results["num_examples"],
      "train_time_s": results["train_time_s"], "steps": results["steps"],
      "class_label": config.study.label,
      "class_curve": class_curve, "all_classes_curve": all_curve,
  }


def _at(curve, shift):
  return next(p["accuracy"] for p in curve if p["shift"] == shift)


def format_table(study: dict) -> str:
  """Markdown: the paper's shift table, ours beside the paper's numbers."""
  shifts = (-8, -4, 0, 4, 8)
  head = "| model | " + " | ".join(f"{s:+d}" if s else "0" for s in shifts)
  lines = []
  for dataset, runs in study["datasets"].items():
    if not runs:
      continue
    first = next(iter(runs.values()))
    lines += [
        f"### {dataset} ({first['dataset']})", "",
        f"Class {first['class_label']}, images that fit every shift"
        f" (n = {first['class_curve'][0]['num_examples']}); all classes"
        f" (n = {first['all_classes_curve'][0]['num_examples']}); clean ="
        f" accuracy on the whole test split"
        f" (n = {first['num_test_examples']}). Accuracy %.", "",
        head + " | all classes: " + " / ".join(
            f"{s:+d}" if s else "0" for s in shifts) + " | clean |",
        "|---" * (len(shifts) + 3) + "|",
    ]
    for variant, run in runs.items():
      ours = " | ".join(f"{100 * _at(run['class_curve'], s):.1f}" for s in shifts)
      every = " / ".join(
          f"{100 * _at(run['all_classes_curve'], s):.1f}" for s in shifts
      )
      lines.append(
          f"| {LABELS[variant]} | {ours} | {every} |"
          f" {100 * run['accuracy']:.1f} |"
      )
      paper = PAPER.get(dataset, {}).get(variant)
      if paper:
        lines.append(
            f"| &nbsp;&nbsp; paper | "
            + " | ".join(f"{a:.1f}" for a in paper) + " | | |"
        )
    lines.append("")
  return "\n".join(lines)


def plot(study: dict, path: str) -> None:
  fig, axes, datasets = studies.figure_per_dataset(study)
  for ax, dataset in zip(axes[0], datasets):
    for index, (variant, run) in enumerate(study["datasets"][dataset].items()):
      color = f"C{index}"
      curve = run["class_curve"]
      ax.plot(
          [p["shift"] for p in curve], [100 * p["accuracy"] for p in curve],
          "-", color=color, label=LABELS[variant],
      )
      paper = PAPER.get(dataset, {}).get(variant)
      if paper:
        ax.plot((-8, -4, 0, 4, 8), paper, "x", color=color, markersize=8)
    ax.set_title(f"{dataset}: class {run['class_label']} (x: Horn et al.)")
    ax.set_xlabel("horizontal shift (pixels)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
  axes[0][-1].legend(fontsize=8, loc="lower center")
  fig.tight_layout()
  studies.save_figure(fig, path)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  studies.check_flags(
      {"datasets": (FLAGS.datasets, shift_robustness.DATASETS),
       "variants": (FLAGS.variants, shift_robustness.POSITIONS)},
      FLAGS.size, ("", "pixels", "runlocal"),
  )
  output = FLAGS.output or FLAGS.workdir
  os.makedirs(output, exist_ok=True)
  study = {"max_shift": MAX_SHIFT, "size": FLAGS.size or "cpu", "datasets": {}}
  start = time.perf_counter()
  for dataset in FLAGS.datasets:
    study["datasets"][dataset] = {}
    if not studies.dataset_available(dataset):
      continue
    for variant in FLAGS.variants:
      run = run_one(
          dataset, variant, FLAGS.size,
          os.path.join(FLAGS.workdir, dataset, variant),
      )
      study["datasets"][dataset][variant] = run
      train.write_json_atomically(os.path.join(output, "study.json"), study)
  studies.write_outputs(output, study, format_table(study), plot, start)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
