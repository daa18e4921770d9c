"""The shift-robustness experiment: its configs and the end-to-end study."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments import shift_study
from experiments.configs import shift_robustness
from kattn import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("position", sorted(shift_robustness.POSITIONS))
@pytest.mark.parametrize("size", ["", "runlocal", "reference", "pixels"])
def test_every_variant_builds_its_model(position, size):
  config = shift_robustness.get_config(",".join(filter(None, [position, size])))
  embedding, relative, conditional = shift_robustness.POSITIONS[position]
  assert config.model.position_embedding == embedding
  assert config.model.relative_position == relative
  assert config.model.content_conditional == conditional
  assert config.augment.max_shift == 0  # trained on centred images only
  model = train.create_model(config, num_classes=10)
  assert model.patch_size == (1 if size in ("reference", "pixels") else 4)


def test_reference_variant_has_the_papers_dimensions():
  config = shift_robustness.get_config("strategy1,reference")
  model = config.model
  assert (model.width, model.depth, model.num_heads, model.patch_size) == (
      256, 6, 8, 1)
  assert model.num_random_features == 185  # floor(48 ln 48)
  assert config.image_size == 32 and config.batch_size == 22
  assert config.optimizer.learning_rate == 5e-5


@pytest.mark.parametrize(
    "arg, match",
    [("fft_torus,nopos", "at most one position"),
     ("digits,fashion", "at most one data"), ("fft_sphere", "Unknown variant")],
)
def test_bad_variants_are_clear_errors(arg, match):
  with pytest.raises(ValueError, match=match):
    shift_robustness.get_config(arg)


def test_images_are_resized_to_the_configured_size():
  config = shift_robustness.get_config("runlocal")
  test = train.load_dataset(config, "test")
  assert test.images.shape == (1000, 32, 32, 1)
  assert test.images.min() == 0.0 and test.images.max() <= 1.0


def test_study_end_to_end_torus_model_is_exactly_invariant(tmp_path):
  """Tiny runs, real protocol: the torus model's curve is flat at 4k pixels."""
  output = tmp_path / "out"
  subprocess.run(
      [sys.executable, "-m", "experiments.shift_study",
       f"--workdir={tmp_path / 'runs'}", f"--output={output}",
       "--datasets=digits", "--variants=absolute,fft_torus", "--size=runlocal"],
      cwd=ROOT, check=True, capture_output=True, timeout=900,
  )
  study = json.loads((output / "study.json").read_text())
  runs = study["datasets"]["digits"]
  assert set(runs) == {"absolute", "fft_torus"}
  for run in runs.values():
    shifts = [p["shift"] for p in run["class_curve"]]
    assert shifts == list(range(-8, 9))
    # Class 1 only, every image in frame for every shift.
    assert 0 < run["class_curve"][0]["num_examples"] < 1000
  torus = {p["shift"]: p["accuracy"] for p in runs["fft_torus"]["class_curve"]}
  # Patch 4: shifts by 4 and 8 pixels move whole tokens, exactly.
  assert len({torus[s] for s in (-8, -4, 0, 4, 8)}) == 1, torus
  every = {p["shift"]: p["accuracy"]
           for p in runs["fft_torus"]["all_classes_curve"]}
  assert len({every[s] for s in (-8, -4, 0, 4, 8)}) == 1, every
  table = (output / "study.md").read_text()
  assert "FFT-RPE, torus" in table and "paper" in table
  assert (output / "study.png").stat().st_size > 10_000


def test_table_puts_the_papers_numbers_beside_ours():
  curve = [{"shift": s, "accuracy": 0.5, "num_examples": 7}
           for s in range(-8, 9)]
  study = {"datasets": {"fashion": {"absolute": {
      "dataset": "idx:x", "class_label": 1, "class_curve": curve,
      "all_classes_curve": curve, "accuracy": 0.9, "num_test_examples": 10,
  }}}}
  table = shift_study.format_table(study)
  assert "| absolute (sinusoid added) | 50.0 | 50.0 | 50.0 | 50.0 | 50.0 |" in table
  assert "| 0.0 | 0.8 | 99.1 | 90.6 | 0.1 |" in table
  np.testing.assert_equal(shift_study.PAPER["fashion"]["strategy1"],
                          (89.6, 98.2, 99.2, 98.9, 98.4))
