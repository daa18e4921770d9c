"""Training loop, resume, multi-device and evaluation, end to end."""

import gzip
import json
import os
import pathlib
import struct
import subprocess
import sys

import jax
import numpy as np
import pytest

from experiments.configs import digits
from kattn import data as data_lib
from kattn import train

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _tiny_config(**overrides):
  config = digits.get_config("runlocal")
  config.num_epochs = 1
  for key, value in overrides.items():
    target = config
    *path, leaf = key.split(".")
    for part in path:
      target = target[part]
    target[leaf] = value
  return config


def _run(args, env=None, **kwargs):
  return subprocess.run(
      [sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
      env={**os.environ, **(env or {})}, **kwargs,
  )


def _launch(workdir, *extra, env=None):
  return [
      "-m", "experiments.train",
      "--config", "experiments/configs/digits.py:runlocal",
      "--workdir", str(workdir), *extra,
  ]


def _final_params(workdir):
  _, _, state = train.restore_for_evaluation(str(workdir))
  return state


def test_runlocal_trains_and_writes_everything(tmp_path):
  results = train.train_and_evaluate(_tiny_config(), str(tmp_path))
  assert results["steps"] == 4000 // 64
  assert 0.0 <= results["accuracy"] <= 1.0 and results["num_examples"] == 1000
  assert {"horizontal", "vertical"} <= set(results["shift"])
  for name in ("config.json", "metrics.jsonl", "results.json"):
    assert (tmp_path / name).exists(), name
  assert list((tmp_path / "tensorboard").iterdir())
  lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  logged = [l["step"] for l in lines if "loss" in l]
  assert logged == sorted(logged) and logged[-1] == results["steps"]
  assert "test_accuracy" in lines[-1]


_MULTI_DEVICE_CHECK = r"""
import json, sys
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec
from experiments.configs import digits
from kattn import data as data_lib, train
assert jax.device_count() == 8, jax.devices()
config = digits.get_config("runlocal")
dataset = data_lib.load(config.dataset, "train")
model = train.create_model(config, dataset.num_classes)
optimizer = train.create_optimizer(config, 100)
images, labels = next(data_lib.batches(dataset, batch_size=64, seed=0, epoch=0))
losses = {}
for n in (1, 8):
  mesh = train.data_mesh(jax.devices()[:n])
  state = jax.device_put(
      train.init_state(model, optimizer, images.shape[1:], 0),
      NamedSharding(mesh, PartitionSpec()))
  batch = NamedSharding(mesh, PartitionSpec("data"))
  step = train.make_train_step(model, optimizer)
  state, metrics = step(state, jax.device_put(images, batch),
                        jax.device_put(labels, batch), jax.random.key(1))
  losses[n] = float(metrics["loss"])
print(json.dumps(losses))
"""


def test_a_step_on_eight_devices_gives_the_loss_of_one_device():
  result = _run(
      ["-c", _MULTI_DEVICE_CHECK],
      env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"},
      timeout=600,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  losses = json.loads(result.stdout.strip().splitlines()[-1])
  # Same math, different reduction order across shards: float32 rounding.
  np.testing.assert_allclose(losses["8"], losses["1"], rtol=1e-6)


def test_checkpoint_written_on_eight_devices_restores_on_one(tmp_path):
  result = _run(
      _launch(tmp_path, "--config.num_epochs=1"),
      env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"},
      timeout=600,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  saved = json.loads((tmp_path / "results.json").read_text())
  assert saved["num_devices"] == 8
  assert jax.device_count() == 1
  config, model, state = train.restore_for_evaluation(str(tmp_path))
  report = train.evaluate(model, state, data_lib.load(config.dataset, "test"), config)
  assert report["accuracy"] == saved["accuracy"]


def _write_idx(directory, prefix, images, labels):
  directory.mkdir(parents=True, exist_ok=True)
  pixels = np.round(images[..., 0] * 255).astype(np.uint8)
  n, h, w = pixels.shape
  with gzip.open(directory / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
    f.write(struct.pack(">IIII", 2051, n, h, w) + pixels.tobytes())
  with gzip.open(directory / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
    f.write(struct.pack(">II", 2049, n) + labels.astype(np.uint8).tobytes())


def test_evaluate_on_an_idx_folder_holding_only_t10k_files(tmp_path):
  workdir = tmp_path / "run"
  train.train_and_evaluate(_tiny_config(), str(workdir))
  test = data_lib.load("bundled:digits", "test")
  _write_idx(tmp_path / "idx", "t10k", test.images, test.labels)
  output = tmp_path / "eval" / "report.json"
  result = _run([
      "-m", "experiments.evaluate", "--workdir", str(workdir),
      "--dataset", f"idx:{tmp_path / 'idx'}", "--output", str(output),
  ], timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(output.read_text())
  own = json.loads((workdir / "results.json").read_text())
  # The same 1,000 digits through an IDX round trip: the same accuracy.
  assert report["num_examples"] == 1000
  assert report["accuracy"] == pytest.approx(own["accuracy"], abs=2e-3)
  assert (tmp_path / "eval" / "report.csv").exists()
  assert (tmp_path / "eval" / "report.png").stat().st_size > 0
  assert "accuracy" in result.stdout


def test_unknown_config_key_is_a_clear_error(tmp_path):
  result = _run(_launch(tmp_path, "--config.model.attentoin=favor"), timeout=120)
  assert result.returncode == 2
  [line] = result.stderr.strip().splitlines()
  assert "attentoin" in line and 'Did you mean "attention"' in line


def test_unknown_attention_lists_the_valid_ones(tmp_path):
  with pytest.raises(ValueError, match=r"Unknown `attention` 'favour'.*favor"):
    train.train_and_evaluate(_tiny_config(**{"model.attention": "favour"}),
                             str(tmp_path))


def test_unknown_variant_is_a_clear_error():
  with pytest.raises(ValueError, match=r"variant.*runlocal"):
    digits.get_config("fast")


def test_unknown_dataset_spec_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match="bundled"):
    train.train_and_evaluate(_tiny_config(dataset="bundled:letters"), str(tmp_path))


def test_missing_idx_folder_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match="nowhere"):
    train.train_and_evaluate(
        _tiny_config(dataset=f"idx:{tmp_path / 'nowhere'}"), str(tmp_path / "w")
    )


def test_nan_in_a_batch_is_a_clear_error(tmp_path, monkeypatch):
  real_batches = data_lib.batches

  def poisoned(*args, **kwargs):
    for images, labels in real_batches(*args, **kwargs):
      images = images.copy()
      images[0, 0, 0, 0] = np.nan
      yield images, labels

  monkeypatch.setattr(data_lib, "batches", poisoned)
  with pytest.raises(ValueError, match="NaN"):
    train.train_and_evaluate(_tiny_config(), str(tmp_path))


def test_resuming_with_another_config_is_refused(tmp_path):
  train.train_and_evaluate(_tiny_config(), str(tmp_path))
  with pytest.raises(ValueError, match="different config"):
    train.train_and_evaluate(_tiny_config(**{"model.width": 48}), str(tmp_path))


def test_a_half_written_checkpoint_is_never_taken_for_a_good_one(tmp_path):
  train.train_and_evaluate(_tiny_config(), str(tmp_path))
  # What a run killed while saving step 9999 leaves behind: orbax stages
  # every save in a temporary folder and renames it only when complete.
  partial = tmp_path / "checkpoints" / "9999.orbax-checkpoint-tmp-1764000000"
  (partial / "default").mkdir(parents=True)
  (partial / "default" / "manifest.ocdbt").write_bytes(b"\0" * 7)
  _, _, state = train.restore_for_evaluation(str(tmp_path))
  assert int(state.step) == 4000 // 64
  # The finished run is found complete, its results returned as saved.
  results = train.train_and_evaluate(_tiny_config(), str(tmp_path))
  assert results == json.loads((tmp_path / "results.json").read_text())


def test_max_examples_keep_a_prefix_of_each_split():
  config = digits.get_config("runlocal")
  config.max_train_examples = 100
  config.max_test_examples = 7
  train_split = train.load_dataset(config, "train")
  test_split = train.load_dataset(config, "test")
  full = data_lib.load("bundled:digits", "test")
  assert len(train_split) == 100 and len(test_split) == 7
  np.testing.assert_array_equal(test_split.images, full.images[:7])
  assert test_split.name == "bundled:digits/test[:7]"
  config.max_test_examples = 0
  with pytest.raises(ValueError, match="`config.max_test_examples` must be an integer >= 1"):
    train.load_dataset(config, "test")
