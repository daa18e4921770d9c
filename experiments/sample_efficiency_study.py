r"""ConViT's sample-efficiency study: ConViT vs DeiT on 10-100% of the data.

  python -m experiments.sample_efficiency_study --workdir runs/sample_efficiency \
      [--datasets digits,fashion] [--models deit,convit] \
      [--fractions f10,f25,f50,f100] [--seeds 0,1,2] [--size runlocal] \
      [--output experiments/results/sample_efficiency]

For each dataset, model, fraction and seed of
`configs/sample_efficiency.py` this trains one run in
WORKDIR/DATASET/MODEL/FRACTION/seedS (resuming, and skipping runs that
finished) under the same budget of steps, then reads its test accuracy and
the nonlocality of every block (`kattn.flax.layer_nonlocality`, on the first
200 test images) and, for ConViT, its gates sigma(lambda). It writes
OUTPUT/study.json, a Markdown table of mean and spread over seeds with the
relative gap beside the paper's ImageNet gaps (study.md) and a plot
(study.png). Fashion-MNIST is skipped, with a message, where Debian's
`dataset-fashion-mnist` is not installed.
"""

import os
import time

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np

from experiments import studies
from experiments.configs import sample_efficiency
from kattn import train
from kattn.flax import convit

FLAGS = flags.FLAGS

# ConViT-S vs DeiT-S top-1 on class-balanced ImageNet subsets (d'Ascoli et
# al. 2021, Table 3): relative gap (ConViT - DeiT) / DeiT.
PUBLISHED_GAP = {"f10": 0.24, "f25": 0.12, "f50": 0.05, "f100": 0.02}
LABELS = {
    "deit": "DeiT (plain self-attention)",
    "convit": "ConViT (GPSA, locality init)",
    "convit_linear": "ConViT, linear GPSA (FAVOR+)",
}
NONLOCALITY_IMAGES = 200


def _define_flags():
  """Flags of the command line; defined at run time so that importing this
  module beside another study does not define them twice."""
  flags.DEFINE_string("workdir", None, "Root folder of the runs.")
  flags.DEFINE_list("datasets", ["digits", "fashion"], "Datasets to run.")
  flags.DEFINE_list(
      "models", ["deit", "convit"], "Models of configs/sample_efficiency.py."
  )
  flags.DEFINE_list(
      "fractions", list(sample_efficiency.FRACTIONS), "Training fractions."
  )
  flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of each cell.")
  flags.DEFINE_string("size", "", "Size variant: '' (CPU net) or runlocal.")
  flags.DEFINE_string(
      "output", None, "Folder for study.json/.md/.png; default WORKDIR."
  )
  flags.mark_flags_as_required(["workdir"])


def run_one(dataset, model, fraction, seed, size, workdir) -> dict:
  """Trains (or finds) one run; its accuracy, nonlocality and gates."""
  config = sample_efficiency.get_config(
      ",".join(a for a in (model, dataset, fraction, size) if a)
  )
  config.seed = seed
  results = studies.train_or_find(
      config, workdir, f"{dataset}/{model}/{fraction}/seed{seed}"
  )
  config, module, state = train.restore_for_evaluation(workdir)
  test = train.load_dataset(config, "test")
  run = {
      "accuracy": results["accuracy"],
      "num_train_examples": len(train.load_dataset(config, "train")),
      "num_test_examples": results["num_examples"],
      "num_params": int(sum(
          np.size(p) for p in jax.tree_util.tree_leaves(state.params)
      )),
      "train_time_s": results["train_time_s"], "steps": results["steps"],
  }
  if module.attention == "softmax":
    run["nonlocality"] = convit.layer_nonlocality(
        module, state.variables(), test.images[:NONLOCALITY_IMAGES]
    ).mean(axis=1).tolist()
  if module.local_up_to_layer:
    run["gates"] = [
        jax.nn.sigmoid(state.params[f"block_{i}"]["attention"]["gate_logits"])
        .tolist() for i in range(module.local_up_to_layer)
    ]
  return run


def _cell(runs) -> tuple[float, float]:
  accuracy = 100 * np.array([r["accuracy"] for r in runs])
  return float(accuracy.mean()), float(accuracy.std())


def format_table(study: dict) -> str:
  """Markdown: mean +- std over seeds per fraction, and the relative gap."""
  lines = []
  for dataset, grid in study["datasets"].items():
    if not grid:
      continue
    models = list(grid)
    fractions = list(next(iter(grid.values())))
    first = next(iter(next(iter(grid.values())).values()))[0]
    seeds = len(next(iter(next(iter(grid.values())).values())))
    lines += [
        f"### {dataset} ({study['dataset_specs'][dataset]})", "",
        f"Test accuracy % (n = {first['num_test_examples']}), mean ± std over"
        f" {seeds} seeds; {first['steps']} steps of batch"
        f" {study['batch_size']} for every fraction.", "",
        "| fraction | train images | "
        + " | ".join(f"{LABELS[m]}" for m in models)
        + " | relative gap (ConViT − DeiT) / DeiT | paper (ImageNet) |",
        "|---|---|" + "---|" * len(models) + "---|---|",
    ]
    for fraction in fractions:
      cells = {m: _cell(grid[m][fraction]) for m in models}
      gap = ""
      if "convit" in cells and "deit" in cells:
        gap = f"{100 * (cells['convit'][0] / cells['deit'][0] - 1):+.1f}%"
      lines.append(
          f"| {sample_efficiency.FRACTIONS[fraction]:.0%} |"
          f" {grid[models[0]][fraction][0]['num_train_examples']:,} | "
          + " | ".join(f"{m:.2f} ± {s:.2f}" for m, s in cells.values())
          + f" | {gap} | +{100 * PUBLISHED_GAP[fraction]:.0f}% |"
      )
    lines += ["", "Nonlocality per block (mean attention distance in"
              " patches, mean over heads, seed 0, 100% of the data):", ""]
    for model in models:
      runs = grid[model].get("f100") or next(iter(grid[model].values()))
      if "nonlocality" in runs[0]:
        lines.append(f"- {LABELS[model]}: " + ", ".join(
            f"{d:.2f}" for d in runs[0]["nonlocality"]
        ))
    lines.append("")
  return "\n".join(lines)


def plot(study: dict, path: str) -> None:
  fig, axes, datasets = studies.figure_per_dataset(study)
  for ax, dataset in zip(axes[0], datasets):
    for model, cells in study["datasets"][dataset].items():
      fractions = [sample_efficiency.FRACTIONS[f] for f in cells]
      stats = [_cell(runs) for runs in cells.values()]
      ax.errorbar(
          [100 * f for f in fractions], [m for m, _ in stats],
          yerr=[s for _, s in stats], marker="o", capsize=3,
          label=LABELS[model],
      )
    ax.set_xscale("log")
    ax.set_xticks([10, 25, 50, 100], ["10%", "25%", "50%", "100%"])
    ax.set_title(f"{dataset}: same step budget, fraction of the data")
    ax.set_xlabel("training data")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
  axes[0][-1].legend(fontsize=8, loc="lower right")
  fig.tight_layout()
  studies.save_figure(fig, path)


def _seeds(values) -> list[int]:
  try:
    seeds = [int(s) for s in values]
  except ValueError:
    raise app.UsageError(f"--seeds must be integers; got {values}.") from None
  if not seeds or min(seeds) < 0:
    raise app.UsageError(f"--seeds must be non-negative; got {values}.")
  return seeds


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  studies.check_flags(
      {"datasets": (FLAGS.datasets, sample_efficiency.DATASETS),
       "models": (FLAGS.models, sample_efficiency.MODELS),
       "fractions": (FLAGS.fractions, sample_efficiency.FRACTIONS)},
      FLAGS.size, ("",) + sample_efficiency.SIZES,
  )
  seeds = _seeds(FLAGS.seeds)
  output = FLAGS.output or FLAGS.workdir
  os.makedirs(output, exist_ok=True)
  base = sample_efficiency.get_config(FLAGS.size)
  study = {
      "size": FLAGS.size or "cpu", "batch_size": base.batch_size,
      "dataset_specs": {
          d: sample_efficiency.DATASETS[d] for d in FLAGS.datasets
      },
      "datasets": {},
  }
  start = time.perf_counter()
  for dataset in FLAGS.datasets:
    study["datasets"][dataset] = {}
    if not studies.dataset_available(dataset):
      continue
    for model in FLAGS.models:
      cells = study["datasets"][dataset].setdefault(model, {})
      for fraction in FLAGS.fractions:
        cells[fraction] = [
            run_one(
                dataset, model, fraction, seed, FLAGS.size,
                os.path.join(FLAGS.workdir, dataset, model, fraction,
                             f"seed{seed}"),
            )
            for seed in seeds
        ]
        train.write_json_atomically(os.path.join(output, "study.json"), study)
  studies.write_outputs(output, study, format_table(study), plot, start)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
