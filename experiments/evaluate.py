r"""Evaluates a trained run: accuracy, shift and rotation robustness.

  python -m experiments.evaluate --workdir runs/digits \
      [--dataset idx:/usr/share/datasets/fashion-mnist] [--output FILE.json] \
      [--step N]

Restores the newest intact checkpoint in --workdir (or step --step) and
evaluates on the test split of the run's dataset, or of --dataset (any spec
`kattn.data.load` accepts with the image size, channels and classes the model
was trained on, so a model trained on one source is measured on another).
Writes the report as JSON (default WORKDIR/evaluation.json), with a CSV and a
PNG plot beside it, and prints a table. A user error is one line on stderr
and exit status 2; `--verbose` shows its traceback.
"""

import json
import os

from absl import app
from absl import flags
from absl import logging

from experiments import cli
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
flags.DEFINE_integer(
    "step", None, "Checkpoint step to evaluate; default the newest intact one."
)
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  output = FLAGS.output or os.path.join(FLAGS.workdir, "evaluation.json")
  if os.path.isdir(output):
    raise ValueError(
        f"--output {output} is a folder; expected the path of a .json file."
    )
  config, model, state = train.restore_for_evaluation(
      FLAGS.workdir, step=FLAGS.step
  )
  spec = FLAGS.dataset or config.dataset
  test = train.load_evaluation_split(config, spec)
  report = train.evaluate(model, state, test, config)
  report = {"dataset": spec, "workdir": FLAGS.workdir,
            "step": int(state.step), **report}
  directory = os.path.dirname(os.path.abspath(output))
  os.makedirs(directory, exist_ok=True)
  train.write_json_atomically(output, report)
  prefix = os.path.splitext(os.path.basename(output))[0]
  files = robustness.write_report_files(report, directory, prefix=prefix)
  print(f"{spec} (test split), checkpoint step {report['step']}:")
  print(robustness.format_report(report))
  print(f"\nwrote {output}, {files['csv']}, {files['png']}")


if __name__ == "__main__":
  cli.run(main)
