"""The pixel-sequence comparison of learned kernels: configs, training, study."""

import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import pixel_sequence_study
from experiments.configs import pixel_sequence
from kattn import train
from kattn.features import learned

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_attention_is_compared():
  assert set(pixel_sequence.ATTENTIONS) == {"softmax", "favor"} | set(
      learned.LEARNED_KERNELS
  )
  assert len(learned.LEARNED_KERNELS) == 6


@pytest.mark.parametrize("attention", pixel_sequence.ATTENTIONS)
def test_every_attention_builds_a_pixel_sequence_model(attention):
  config = pixel_sequence.get_config(f"{attention},runlocal")
  model = train.create_model(config, num_classes=10)
  images = jnp.zeros((2, 28, 28, 1))
  variables = model.init(jax.random.key(0), images)
  assert model.apply(variables, images).shape == (2, 10)
  # One token per pixel, plus the class token.
  assert variables["params"]["pos_embedding"].shape[-2] == 28 * 28 + 1
  has_distribution = "spectral_distribution" in (
      variables["params"]["encoderblock_0"]["attention"]
  )
  assert has_distribution == (attention in learned.LEARNED_KERNELS)


@pytest.mark.parametrize(
    "arg, match",
    [("favor,gmm_rks", "at most one attention"),
     ("digits,cifar10", "at most one data"),
     ("gmm", "Unknown variant")],
)
def test_bad_variants(arg, match):
  with pytest.raises(ValueError, match=match):
    pixel_sequence.get_config(arg)


def test_cifar10_variant_is_grey_lra_image_data():
  config = pixel_sequence.get_config("cifar10")
  assert config.dataset == "tfds:cifar10" and config.grayscale is True


def test_learned_kernel_training_resumes_exactly_with_permutation_noise(
    tmp_path,
):
  """FastFood's int32 noise is checkpointed, redrawn and restored exactly."""
  config = pixel_sequence.get_config("fastfood_prf,runlocal")
  config.keep_checkpoints = 2
  straight, resumed = tmp_path / "straight", tmp_path / "resumed"
  train.train_and_evaluate(config, str(straight))
  train.train_and_evaluate(config, str(resumed))
  # Forget the end of the second run, so that it resumes from step 2 and
  # goes through one more redraw (every 2 steps) after the restore.
  shutil.rmtree(resumed / "checkpoints" / "4")
  (resumed / "results.json").unlink()
  results = train.train_and_evaluate(config, str(resumed))
  assert results["steps_this_run"] == 2
  a = train.restore_for_evaluation(str(straight))[2]
  b = train.restore_for_evaluation(str(resumed))[2]
  noise = jax.tree.leaves(a.random_features)
  assert noise and all(leaf.dtype == jnp.int32 for leaf in noise)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_study_end_to_end(tmp_path):
  output = tmp_path / "out"
  subprocess.run(
      [sys.executable, "-m", "experiments.pixel_sequence_study",
       f"--workdir={tmp_path / 'runs'}", f"--output={output}",
       "--datasets=digits", "--attentions=generative_rks",
       "--seeds=0,1", "--size=runlocal"],
      cwd=ROOT, check=True, capture_output=True, timeout=900,
  )
  study = json.loads((output / "study.json").read_text())
  by_attention = study["datasets"]["digits"]
  assert set(by_attention) == {"generative_rks"}
  for entry in by_attention.values():
    assert [run["seed"] for run in entry["runs"]] == [0, 1]
    accuracies = [100 * run["accuracy"] for run in entry["runs"]]
    assert entry["summary"]["accuracy_mean"] == pytest.approx(
        np.mean(accuracies)
    )
    assert entry["summary"]["accuracy_std"] == pytest.approx(
        np.std(accuracies, ddof=1)
    )
    assert entry["summary"]["time_per_step_ms"] > 0
  table = (output / "study.md").read_text()
  assert "LRA Image (published)" in table
  assert pixel_sequence_study.LABELS["generative_rks"] in table


def test_table_quotes_the_published_lra_image_figures():
  run = {"seed": 0, "dataset": "bundled:digits", "accuracy": 0.5,
         "num_test_examples": 10, "steps": 4, "time_per_step_ms": 1.0,
         "peak_rss_mib": 1.0}
  study = {"batch_size": 16, "datasets": {"digits": {
      name: {"runs": [run], "summary": pixel_sequence_study.summarise([run])}
      for name in ("gmm_prf", "favor", "softmax")
  }}}
  rows = [line for line in pixel_sequence_study.format_table(study).splitlines()
          if line.startswith("| ") and "attention" not in line]
  # Softmax and FAVOR+ first, with the LRA Image figures; no seed spread
  # from a single seed.
  assert rows[0].startswith("| softmax | 50.00 | 1 |") and "42.44" in rows[0]
  assert rows[1].startswith("| FAVOR+") and "42.77" in rows[1]
  assert rows[2].startswith("| GMM-PRF") and rows[2].endswith("| – |")


def test_study_rejects_non_integer_seeds(tmp_path):
  done = subprocess.run(
      [sys.executable, "-m", "experiments.pixel_sequence_study",
       f"--workdir={tmp_path}", "--seeds=0,one", "--size=runlocal"],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
  )
  assert done.returncode != 0 and "--seeds" in done.stderr


def test_grey_cifar10_variant_trains_on_mocked_tfds(tmp_path, monkeypatch):
  """The LRA Image data path (grey CIFAR-10, L = 1024), without the network."""
  tfds = pytest.importorskip("tensorflow_datasets")
  import socket  # pylint: disable=g-import-not-at-top

  def refuse(*args, **kwargs):
    raise OSError("network access in a test")

  monkeypatch.setattr(socket.socket, "connect", refuse)
  config = pixel_sequence.get_config("cifar10,gmm_prf,runlocal")
  config.max_train_examples = 64
  config.max_test_examples = 32
  with tfds.testing.mock_data(
      num_examples=64, policy=tfds.testing.MockPolicy.USE_CODE
  ):
    results = train.train_and_evaluate(config, str(tmp_path))
    variables = train.restore_for_evaluation(str(tmp_path))[2]
  assert results["dataset"] == "tfds:cifar10"
  assert results["num_examples"] == 32 and 0 <= results["accuracy"] <= 1
  # 32 x 32 grey pixels and a class token.
  assert variables.params["pos_embedding"].shape[-2] == 32 * 32 + 1
