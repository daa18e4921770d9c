"""The softmax / FAVOR+ / SOFT comparison: configs and the study."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from experiments import softmax_free_study
from experiments.configs import softmax_free
from kattn import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("attention", softmax_free.ATTENTIONS)
def test_every_attention_builds_and_runs(attention):
  config = softmax_free.get_config(f"{attention},runlocal")
  model = train.create_model(config, num_classes=10)
  assert model.attention == attention
  images = jnp.zeros((2, 28, 28, 1))
  variables = model.init(jax.random.key(0), images)
  assert model.apply(variables, images).shape == (2, 10)
  keys = variables["params"]["encoderblock_0"]["attention"]
  # SOFT ties keys to queries: no key projection to train.
  assert ("key" in keys) == (attention not in ("soft", "soft_norm"))


@pytest.mark.parametrize(
    "arg, match",
    [("soft,favor", "at most one attention"), ("linformer", "Unknown variant")],
)
def test_bad_variants(arg, match):
  with pytest.raises(ValueError, match=match):
    softmax_free.get_config(arg)


def test_study_end_to_end(tmp_path):
  output = tmp_path / "out"
  subprocess.run(
      [sys.executable, "-m", "experiments.softmax_free_study",
       f"--workdir={tmp_path / 'runs'}", f"--output={output}",
       "--datasets=digits", "--attentions=softmax,soft", "--size=runlocal"],
      cwd=ROOT, check=True, capture_output=True, timeout=900,
  )
  study = json.loads((output / "study.json").read_text())
  runs = study["datasets"]["digits"]
  assert set(runs) == {"softmax", "soft"}
  for run in runs.values():
    assert 0 <= run["accuracy"] <= 1
    assert run["time_per_step_ms"] > 0 and run["peak_rss_mib"] > 0
  table = (output / "study.md").read_text()
  assert "79.3" in table and softmax_free_study.LABELS["soft"] in table
