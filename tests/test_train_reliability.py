"""Training never loses a good result.

No non-finite checkpoint, one run per workdir, a finished run left alone,
corrupt checkpoints skipped, every bad config value refused before any work
with a message naming it, and a run SIGKILLed at chosen moments (inside the
finiteness check, while writing a checkpoint, after the first of two epochs)
resuming to bit-identical parameters.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import digits
from kattn import config_checks
from kattn import data as data_lib
from kattn import train
from kattn import workdir_lock

ROOT = pathlib.Path(__file__).resolve().parents[1]

# A small run: 640 training digits in batches of 64 (10 steps an epoch), two
# epochs, a checkpoint every 5 steps, a cheap evaluation.
SMALL = {
    "max_train_examples": 640, "max_test_examples": 100, "num_epochs": 2,
    "checkpoint_every": 5, "log_every": 4, "eval.angles": (0,),
    "eval.max_shift": 0,
}
STEPS = 20


def _config(**overrides):
  config = digits.get_config("runlocal")
  for key, value in {**SMALL, **overrides}.items():
    target = config
    *path, leaf = key.split(".")
    for part in path:
      target = target[part]
    target[leaf] = value
  return config


def _flags(**overrides):
  return [
      f"--config.{key}={value}" for key, value in {**SMALL, **overrides}.items()
  ]


def _leaves(state):
  return [np.asarray(x) for x in jax.tree.leaves(state)]


def _assert_same_state(a, b):
  for x, y in zip(_leaves(a), _leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


def _run(args, **kwargs):
  return subprocess.run(
      [sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
      timeout=600, **kwargs,
  )


def _steps(workdir):
  return sorted(
      int(p.name) for p in (pathlib.Path(workdir) / "checkpoints").iterdir()
      if p.name.isdigit()
  )


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """A finished small run: (workdir, its final state)."""
  workdir = tmp_path_factory.mktemp("finished")
  train.train_and_evaluate(_config(), str(workdir))
  return workdir, train.restore_for_evaluation(str(workdir))[2]


# --- Bad config values: refused before any work, naming key and value. ----

BAD_VALUES = [
    ("keep_checkpoints", 0), ("num_epochs", 0), ("num_epochs", -2),
    ("log_every", 0), ("checkpoint_every", 0), ("batch_size", 0),
    ("seed", -1), ("redraw_every", -1), ("max_train_examples", 0),
    ("optimizer.learning_rate", float("nan")),
    ("optimizer.learning_rate", float("inf")),
    ("optimizer.learning_rate", 0.0), ("optimizer.warmup_steps", -1),
    ("optimizer.b2", 1.0), ("optimizer.grad_clip_norm", 0.0),
    ("optimizer.weight_decay", -1e-4),
    ("augment.max_shift", -1), ("augment.max_rotation", float("nan")),
    ("eval.batch_size", 0), ("eval.angles", ()),
    ("eval.shift_axes", ("diagonal",)), ("image_size", 0),
    ("grayscale", "yes"), ("dataset", ""),
]


@pytest.mark.parametrize(
    "key, value", BAD_VALUES, ids=[f"{k}={v!r}" for k, v in BAD_VALUES]
)
def test_a_bad_config_value_is_refused_before_any_work(tmp_path, key, value):
  with pytest.raises(config_checks.ConfigError) as error:
    train.train_and_evaluate(_config(**{key: value}), str(tmp_path))
  message = str(error.value)
  assert f"`config.{key}`" in message and repr(value) in message
  assert "\n" not in message
  assert not list(tmp_path.iterdir()), "work was done before the check"


def test_model_field_errors_name_the_field(tmp_path):
  with pytest.raises(ValueError, match=r"`width`.*got 0"):
    train.train_and_evaluate(_config(**{"model.width": 0}), str(tmp_path))


def test_a_training_split_smaller_than_a_batch_is_refused(tmp_path):
  with pytest.raises(ValueError, match=r"has 50 examples, fewer than `batch_size` \(64\)"):
    train.train_and_evaluate(_config(max_train_examples=50), str(tmp_path))


def test_a_file_as_workdir_is_a_clear_error(tmp_path):
  path = tmp_path / "file"
  path.write_text("")
  with pytest.raises(ValueError, match="is a file; expected a folder"):
    train.train_and_evaluate(_config(), str(path))


# --- Divergence: nothing non-finite is saved, good checkpoints survive. ----


def test_divergence_from_the_start_saves_nothing(tmp_path):
  # As in the report: the first save (step 5) comes before the first log.
  with pytest.raises(
      train.TrainingDiverged, match=r"by step 5: a parameter.*no checkpoint was written"
  ):
    train.train_and_evaluate(
        _config(**{"optimizer.learning_rate": 1e6, "log_every": 10}),
        str(tmp_path),
    )
  assert not list((tmp_path / "checkpoints").iterdir())


@pytest.mark.parametrize("bad_step, good_steps", [
    # Found by the check before the save of step 15.
    (12, [5, 10]),
    # Found by the mean loss logged at step 20, before its save.
    (16, [10, 15]),
])
def test_late_divergence_keeps_the_good_checkpoints(
    tmp_path, monkeypatch, bad_step, good_steps
):
  """Parameters turn NaN after step `bad_step`: no NaN is saved, and the
  finite checkpoints (keep_checkpoints = 2) stay and restore."""
  real = train.make_train_step

  def poisoned(model, optimizer):
    step_fn = real(model, optimizer)

    def poisoned_step(state, images, labels, key):
      state, metrics = step_fn(state, images, labels, key)
      if int(state.step) >= bad_step:
        state = state.replace(
            params=jax.tree.map(lambda x: x * jnp.nan, state.params)
        )
      return state, metrics

    return poisoned_step

  monkeypatch.setattr(train, "make_train_step", poisoned)
  with pytest.raises(
      train.TrainingDiverged, match=f"last good checkpoint is step {good_steps[-1]}"
  ):
    train.train_and_evaluate(_config(), str(tmp_path))
  assert _steps(tmp_path) == good_steps
  monkeypatch.undo()
  for step in good_steps:
    state = train.restore_for_evaluation(str(tmp_path), step=step)[2]
    assert all(np.all(np.isfinite(x)) for x in _leaves(state))


# --- One run per workdir. ----------------------------------------------------


def test_a_second_run_in_a_held_workdir_stops_at_once(tmp_path):
  with workdir_lock.hold(str(tmp_path)):
    with pytest.raises(workdir_lock.WorkdirLocked, match=f"pid {os.getpid()}"):
      train.train_and_evaluate(_config(), str(tmp_path))
  assert not (tmp_path / "config.json").exists()


@pytest.mark.parametrize("seed", [0, 1])
def test_another_process_is_refused_a_held_workdir(tmp_path, seed):
  """The same config or another seed: a second process stops at once, in
  one line naming the holder, and writes nothing."""
  with workdir_lock.hold(str(tmp_path)):
    second = _run([
        "-m", "experiments.train", "--config",
        "experiments/configs/digits.py:runlocal", "--workdir", str(tmp_path),
        *_flags(seed=seed),
    ])
  assert second.returncode == 2
  lines = second.stderr.strip().splitlines()
  assert len(lines) == 1 and "is in use by another run" in lines[0], lines
  assert f"pid {os.getpid()}" in lines[0]
  assert [p.name for p in tmp_path.iterdir()] == ["lock"]


# --- A finished run is left alone; resumed logging windows say their span. -


def test_rerunning_a_finished_run_leaves_its_files_alone(finished, capsys):
  workdir, _ = finished
  before = {
      name: (workdir / name).read_bytes()
      for name in ("results.json", "metrics.jsonl", "config.json")
  }
  results = train.train_and_evaluate(_config(), str(workdir))
  assert "already complete" in capsys.readouterr().out
  assert results == json.loads(before["results.json"])
  for name, content in before.items():
    assert (workdir / name).read_bytes() == content, name


def test_a_resumed_run_restarts_its_logging_windows_and_drops_a_torn_line(
    tmp_path,
):
  train.train_and_evaluate(_config(num_epochs=1), str(tmp_path))
  metrics = tmp_path / "metrics.jsonl"
  # What a run killed while appending leaves behind.
  metrics.write_text(metrics.read_text() + '{"step": 11, "lo')
  train.train_and_evaluate(_config(num_epochs=2), str(tmp_path))
  records = [json.loads(l) for l in metrics.read_text().splitlines()]
  logged = [(r["step"], r["window_steps"]) for r in records if "loss" in r]
  # First run: 4, 8, then the end (10); the resumed run starts at 10.
  assert logged == [(4, 4), (8, 4), (10, 2), (14, 4), (18, 4), (20, 2)]
  assert [r["step"] for r in records if "test_accuracy" in r] == [STEPS]

  (tmp_path / "results.json").unlink()
  metrics.write_text("garbage\n" + metrics.read_text())
  with pytest.raises(ValueError, match=r"metrics.jsonl line 1 is not a metrics record"):
    train.train_and_evaluate(_config(num_epochs=3), str(tmp_path))


def test_a_garbage_config_json_names_the_file(tmp_path):
  (tmp_path / "config.json").write_text("{not json")
  with pytest.raises(ValueError, match=r"config.json is not valid JSON"):
    train.train_and_evaluate(_config(), str(tmp_path))
  with pytest.raises(ValueError, match=r"config.json is not valid JSON"):
    train.restore_for_evaluation(str(tmp_path))


# --- Corrupt checkpoints: the newest intact one is used, and said so. -------


def _damage(step_dir, how):
  files = [
      p for p in (step_dir / "default").rglob("*")
      if p.is_file() and p.parent.name == "d"
  ]
  assert files
  for path in files:
    if how == "truncated":
      path.write_bytes(path.read_bytes()[:7])
    else:
      path.unlink()


@pytest.mark.parametrize("how", ["truncated", "deleted"])
def test_a_corrupt_checkpoint_falls_back_to_the_newest_intact_one(
    finished, tmp_path, capfd, how
):
  source, final = finished
  workdir = tmp_path / "run"
  subprocess.run(["cp", "-r", str(source), str(workdir)], check=True)
  assert _steps(workdir) == [15, 20]
  _damage(workdir / "checkpoints" / "20", how)

  _, _, state = train.restore_for_evaluation(str(workdir))
  assert int(state.step) == 15
  err = capfd.readouterr().err
  assert "skipped checkpoint step 20" in err and len(err.splitlines()) == 1
  with pytest.raises(ValueError, match="step 20 .* could not be restored"):
    train.restore_for_evaluation(str(workdir), step=20)
  with pytest.raises(ValueError, match=r"step 3 is not in .*\[15, 20\]"):
    train.restore_for_evaluation(str(workdir), step=3)

  # Training resumes from 15, moves 20 aside and ends where it ended.
  (workdir / "results.json").unlink()
  results = train.train_and_evaluate(_config(), str(workdir))
  assert results["steps_this_run"] == 5
  assert [p.name.split("-")[0] for p in (workdir / "corrupt_checkpoints").iterdir()] == ["20"]
  _assert_same_state(train.restore_for_evaluation(str(workdir))[2], final)


def test_no_intact_checkpoint_is_an_error_not_a_silent_restart(finished, tmp_path):
  source, _ = finished
  workdir = tmp_path / "run"
  subprocess.run(["cp", "-r", str(source), str(workdir)], check=True)
  for step in _steps(workdir):
    _damage(workdir / "checkpoints" / str(step), "truncated")
  (workdir / "results.json").unlink()
  with pytest.raises(ValueError, match=r"No checkpoint .* could be restored: step 20 .*; step 15"):
    train.train_and_evaluate(_config(), str(workdir))
  assert _steps(workdir) == [15, 20]


# --- Evaluation data must fit the trained model. --------------------------


def test_evaluation_data_of_another_shape_or_class_count(finished, monkeypatch):
  workdir, _ = finished
  config = train.restore_for_evaluation(str(workdir))[0]
  real_load = data_lib.load
  own = real_load("bundled:digits", "test")

  def fake_load(spec, split):
    if spec == "fake:small":
      return data_lib.Dataset(own.images[:, :14, :14], own.labels, 10, spec)
    if spec == "fake:rgb":
      return data_lib.Dataset(np.repeat(own.images, 3, -1), own.labels, 10, spec)
    if spec == "fake:classes":
      return data_lib.Dataset(own.images, own.labels, 100, spec)
    return real_load(spec, split)

  monkeypatch.setattr(data_lib, "load", fake_load)
  with pytest.raises(ValueError, match=r"shape \(14, 14, 1\).*\(28, 28, 1\)"):
    train.load_evaluation_split(config, "fake:small")
  with pytest.raises(ValueError, match=r"shape \(28, 28, 3\).*\(28, 28, 1\)"):
    train.load_evaluation_split(config, "fake:rgb")
  with pytest.raises(ValueError, match="100 classes.*with 10"):
    train.load_evaluation_split(config, "fake:classes")


# --- The launchers: user errors in one line, exit status 2. ---------------

CLI_ERRORS = {
    "unknown key": (
        ["-m", "experiments.train", "--config",
         "experiments/configs/digits.py:runlocal", "--config.foo=1"],
        "no field 'foo'",
    ),
    "keep_checkpoints=0": (
        ["-m", "experiments.train", "--config",
         "experiments/configs/digits.py:runlocal", "--config.keep_checkpoints=0"],
        "`config.keep_checkpoints` must be an integer >= 1; got 0.",
    ),
    "evaluate --output DIR": (
        ["-m", "experiments.evaluate", "--output", "{tmp}"],
        "is a folder; expected the path of a .json file",
    ),
}


@pytest.mark.parametrize("case", sorted(CLI_ERRORS))
def test_a_user_error_is_one_line_and_exit_status_2(tmp_path, case):
  args, expected = CLI_ERRORS[case]
  args = [a.replace("{tmp}", str(tmp_path)) for a in args]
  result = _run([*args, "--workdir", str(tmp_path)])
  assert result.returncode == 2, result.stderr[-3000:]
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
  assert expected in lines[0]
  assert list(tmp_path.iterdir()) == [], "no file written, no temporary left"


def test_verbose_shows_the_traceback(tmp_path):
  result = _run([
      "-m", "experiments.train", "--config",
      "experiments/configs/digits.py:runlocal", "--workdir", str(tmp_path),
      "--config.keep_checkpoints=0", "--verbose",
  ])
  assert result.returncode != 0
  assert "Traceback" in result.stderr and "ConfigError" in result.stderr


# --- SIGKILL at chosen moments, then resume: bit-identical parameters. ----

# Trains the small config and SIGKILLs itself at the n-th call of a point:
# "write" while orbax writes a checkpoint (before it is committed), "check"
# inside the finiteness check before a save, "saved" just after a save.
_KILLED_RUN = r"""
import os, signal, sys
from tests.test_train_reliability import _config
from kattn import train

point, calls, workdir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
count = [0]

def die_at_call():
  count[0] += 1
  if count[0] == calls:
    os.kill(os.getpid(), signal.SIGKILL)

if point == "check":
  real_check = train._all_finite
  def check(*args):
    die_at_call()
    return real_check(*args)
  train._all_finite = check
elif point == "write":
  def save(self, state):
    self._manager.save(int(state.step), args=train.ocp.args.StandardSave(state))
    die_at_call()
    self._manager.wait_until_finished()
  train.Checkpoints.save = save
else:
  real_save = train.Checkpoints.save
  def save(self, state):
    real_save(self, state)
    die_at_call()
  train.Checkpoints.save = save
train.train_and_evaluate(_config(), workdir)
"""


def test_sigkill_at_three_moments_then_resume_matches_an_uninterrupted_run(
    finished, tmp_path
):
  """One run killed three times, each time resumed where it must be:

  1. while writing step 10 (step 5 is the newest complete checkpoint);
  2. resumed from 5, inside the finiteness check before saving 15: step 10,
     the end of the first epoch, is the newest;
  3. resumed from 10, just after saving 15, inside the second epoch;
  then resumed from 15 by the launcher to the end. Every kill happens while
  the run holds the workdir's lock. The final parameters equal the
  uninterrupted run's, bit for bit.
  """
  _, final = finished
  for point, calls, newest in (("write", 2, 5), ("check", 2, 10), ("saved", 1, 15)):
    killed = _run(["-c", _KILLED_RUN, point, str(calls), str(tmp_path)])
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert _steps(tmp_path)[-1] == newest, point
    assert not (tmp_path / "results.json").exists()
    # It died holding the lock: the file still names it.
    assert json.loads((tmp_path / "lock").read_text())["pid"] > 0
  resumed = _run([
      "-m", "experiments.train", "--config",
      "experiments/configs/digits.py:runlocal", "--workdir", str(tmp_path),
      *_flags(),
  ])
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resumed from step 15" in resumed.stdout
  _assert_same_state(train.restore_for_evaluation(str(tmp_path))[2], final)
