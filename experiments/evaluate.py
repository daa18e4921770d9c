r"""Evaluates a trained run: accuracy, shift and rotation robustness.

  python -m experiments.evaluate --workdir runs/digits \
      [--dataset idx:/usr/share/datasets/fashion-mnist] [--output FILE.json]

Restores the latest checkpoint in --workdir and evaluates on the test split
of the run's dataset, or of --dataset (any spec `kattn.data.load` accepts, so
a model trained on one source is measured on another). Writes the report as
JSON (default WORKDIR/evaluation.json), with a CSV and a PNG plot beside it,
and prints a table.
"""

import json
import os

from absl import app
from absl import flags
from absl import logging

from kattn import robustness
from kattn import train

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A training run's --workdir.")
flags.DEFINE_string(
    "dataset", None, "Dataset spec to evaluate on; default the run's own."
)
flags.DEFINE_string(
    "output", None, "JSON report path; default WORKDIR/evaluation.json."
)
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  config, model, state = train.restore_for_evaluation(FLAGS.workdir)
  spec = FLAGS.dataset or config.dataset
  test = train.load_dataset(config, "test", spec)
  report = train.evaluate(model, state, test, config)
  report = {"dataset": spec, "workdir": FLAGS.workdir,
            "step": int(state.step), **report}
  output = FLAGS.output or os.path.join(FLAGS.workdir, "evaluation.json")
  directory = os.path.dirname(os.path.abspath(output))
  os.makedirs(directory, exist_ok=True)
  train.write_json_atomically(output, report)
  prefix = os.path.splitext(os.path.basename(output))[0]
  files = robustness.write_report_files(report, directory, prefix=prefix)
  print(f"{spec} (test split), checkpoint step {report['step']}:")
  print(robustness.format_report(report))
  print(f"\nwrote {output}, {files['csv']}, {files['png']}")


if __name__ == "__main__":
  app.run(main)
