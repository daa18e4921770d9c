"""What the studies (`shift_study`, `rotation_study`) share: resumable runs,
flag checks, and the atomic writing of their table, JSON and plot."""

import json
import os
import statistics
import subprocess
import sys
import time
from typing import Callable, Optional

from absl import app
import ml_collections

from kattn import data as data_lib
from kattn import train


def train_or_find(
    config: ml_collections.ConfigDict, workdir: str, tag: str
) -> dict:
  """`results.json` of a finished run in `workdir`, or trains (resuming) it."""
  results_path = os.path.join(workdir, "results.json")
  if os.path.exists(results_path):
    with open(results_path) as f:
      results = json.load(f)
    print(f"[{tag}] found finished run in {workdir}", flush=True)
    return results
  print(f"[{tag}] training in {workdir}", flush=True)
  return train.train_and_evaluate(config, workdir)


def train_in_subprocess(
    config_path: str, variant: str, workdir: str, tag: str, *,
    overrides: tuple = (),
) -> dict:
  """`results.json` of a run trained (or found) in its own process.

  A fresh process per run gives each run its own peak memory. The returned
  results gain `median_time_per_step_ms`: the median over the logging
  windows after the first (which includes compilation), or the run's
  overall time per step when it logged no later window.

  Args:
    config_path: the config file.
    variant: its variant string, e.g. `"favor,fashion"`.
    workdir: the run's folder; a finished run there is read, not retrained.
    tag: printed with the progress line.
    overrides: extra launcher flags, e.g. `("--config.seed=1",)`.
  """
  results_path = os.path.join(workdir, "results.json")
  if not os.path.exists(results_path):
    print(f"[{tag}] training in {workdir}", flush=True)
    subprocess.run(
        [sys.executable, "-m", "experiments.train",
         f"--config={config_path}:{variant}", *overrides,
         f"--workdir={workdir}"],
        check=True,
    )
  with open(results_path) as f:
    results = json.load(f)
  with open(os.path.join(workdir, "config.json")) as f:
    batch_size = json.load(f)["batch_size"]
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    windows = [json.loads(line) for line in f]
  rates = [w["examples_per_s"] for w in windows if "examples_per_s" in w][1:]
  results["median_time_per_step_ms"] = (
      1e3 * batch_size / statistics.median(rates) if rates
      else results["time_per_step_ms"]
  )
  return results


def check_flags(lists: dict, size: str, sizes) -> None:
  """UsageError for unknown names in list flags, or an unknown `--size`.

  Args:
    lists: `{flag name: (given names, valid names)}`.
    size: the value of `--size`.
    sizes: its valid values.
  """
  for name, (values, valid) in lists.items():
    unknown = sorted(set(values) - set(valid))
    if unknown:
      raise app.UsageError(
          f"--{name}: unknown {unknown}; valid: {list(valid)}."
      )
  if size not in sizes:
    raise app.UsageError(
        f"--size must be one of {list(sizes)}; got {size!r}."
    )


def dataset_available(dataset: str) -> bool:
  """False, with a message, for Fashion-MNIST where it is not installed."""
  if dataset == "fashion" and data_lib.fashion_mnist_dir() is None:
    print(
        "fashion: skipped, Fashion-MNIST is not installed (apt-get install"
        f" dataset-fashion-mnist provides {data_lib.FASHION_MNIST_DIR})."
    )
    return False
  return True


def figure_per_dataset(study: dict):
  """(figure, axes [1, n], dataset names): one panel per dataset with runs."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  datasets = [d for d, runs in study["datasets"].items() if runs]
  fig, axes = plt.subplots(
      1, len(datasets), figsize=(6 * len(datasets), 4.2), squeeze=False
  )
  return fig, axes, datasets


def save_figure(fig, path: str) -> None:
  """Writes `fig` beside `path`, then renames: never a half-written plot."""
  import matplotlib.pyplot as plt

  tmp = path + ".tmp.png"
  fig.savefig(tmp, dpi=110)
  plt.close(fig)
  os.replace(tmp, path)


def write_outputs(
    output: str, study: dict, table: str,
    plot: Optional[Callable[[dict, str], None]], start: float,
) -> None:
  """study.json, study.md and (unless `plot` is None) study.png in `output`,
  each atomically."""
  train.write_json_atomically(os.path.join(output, "study.json"), study)
  with open(os.path.join(output, "study.md.tmp"), "w") as f:
    f.write(table)
  os.replace(
      os.path.join(output, "study.md.tmp"), os.path.join(output, "study.md")
  )
  written = "study.json, study.md"
  if plot is not None:
    plot(study, os.path.join(output, "study.png"))
    written += ", study.png"
  print(table)
  print(f"wrote {output}/{written} in {time.perf_counter() - start:.0f} s")
