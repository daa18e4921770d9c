"""Training and evaluation: state, jitted steps, checkpoints and the loop.

`train_and_evaluate(config, workdir)` is what `experiments/train.py` runs.
A run is a pure function of its config: data order comes from
(seed, epoch), augmentation from (seed, step), dropout keys and random-feature
redraws from (seed, step). So a run killed at any moment and restarted from
its latest checkpoint ends with the same parameters as an uninterrupted one,
bit for bit on CPU.

A run never loses a good result: the config is checked before any work
(`kattn.config_checks`), one run at a time holds its workdir
(`kattn.workdir_lock`), a state with a non-finite parameter or loss is never
saved (the run stops, naming the last good checkpoint), a corrupt checkpoint
is skipped for the newest intact one, and a finished run run again leaves
its files alone.

Data parallelism: the batch axis is sharded over a one-axis mesh of all
devices (`jax.make_mesh`), the state is replicated; the same code runs on one
CPU, on 8 fake CPU devices and on a multi-host accelerator slice.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Any, Callable, Optional

from absl import logging
import flax
import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from kattn import _memory
from kattn import config_checks
from kattn import data as data_lib
from kattn import robustness
from kattn import tensorboard
from kattn import workdir_lock
from kattn.flax import attention as attention_lib
from kattn.flax import models
from kattn.flax import registry

# Config keys that may change between a run and its resumption.
RESUMABLE_CHANGES = ("num_epochs", "num_steps", "log_every", "checkpoint_every")
# Where training moves checkpoints that cannot be restored, so that orbax
# neither resumes from them nor keeps them in place of good ones.
CORRUPT_CHECKPOINTS = "corrupt_checkpoints"


class TrainingDiverged(FloatingPointError):
  """The loss or a parameter became inf or NaN."""


@flax.struct.dataclass
class TrainState:
  """Everything a checkpoint holds; a pytree."""

  step: jax.Array
  params: Any
  random_features: Any
  opt_state: Any

  def variables(self) -> dict:
    variables = {"params": self.params}
    if self.random_features:
      variables[attention_lib.RANDOM_FEATURES] = self.random_features
    return variables


def load_dataset(
    config: ml_collections.ConfigDict, split: str, spec: Optional[str] = None
) -> data_lib.Dataset:
  """Split `split` of `spec` (default `config.dataset`) as the model sees it.

  With `config.image_size` set, images are resized to that square size
  (bilinear, `kattn.data.resize`), as Horn et al. resize 28 x 28 digits to
  32 x 32; without it they keep their native size. `config.max_train_examples`
  and `config.max_test_examples`, when set, keep the first N examples of
  that split: a class-balanced subset where the split is stored in mixed
  class order, as the bundled digits and Fashion-MNIST are.
  `config.train_fraction` (or `test_fraction`), when set, then keeps that
  fraction of every class (`kattn.data.class_balanced_subset`).
  `config.grayscale`, when true, turns RGB images into one grey channel
  (`kattn.data.to_grayscale`), as the LRA Image task does with CIFAR-10.
  """
  config_checks.check_data_config(config)
  grayscale = config.get("grayscale", False)
  dataset = data_lib.load(spec or config.dataset, split)
  limit = config.get(f"max_{split}_examples")
  if limit is not None and limit < len(dataset):
    dataset = data_lib.Dataset(
        dataset.images[:limit], dataset.labels[:limit], dataset.num_classes,
        f"{dataset.name}[:{limit}]",
    )
  fraction = config.get(f"{split}_fraction")
  if fraction is not None:
    dataset = data_lib.class_balanced_subset(dataset, fraction)
  if grayscale:
    dataset = data_lib.Dataset(
        data_lib.to_grayscale(dataset.images), dataset.labels,
        dataset.num_classes, f"{dataset.name} (grey)",
    )
  size = config.get("image_size")
  if size is None or dataset.images.shape[1:3] == (size, size):
    return dataset
  return data_lib.Dataset(
      data_lib.resize(dataset.images, size), dataset.labels,
      dataset.num_classes, dataset.name,
  )


def create_model(config: ml_collections.ConfigDict, num_classes: int):
  """The model `config.model.name` (default `"vit"`) with the other fields.

  Unknown model and attention names fail here, before any data is read.
  """
  fields = dict(config.model)
  model = registry.get_model(fields.pop("name", "vit"))
  if model is models.VisionTransformer:
    registry.get_attention(fields["attention"])
  return model(num_classes=num_classes, **fields)


def create_optimizer(config: ml_collections.ConfigDict, total_steps: int):
  """AdamW with linear warm-up, cosine decay and global-norm clipping."""
  opt = config.optimizer
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=opt.learning_rate,
      warmup_steps=opt.warmup_steps,
      decay_steps=max(total_steps, opt.warmup_steps + 1),
      end_value=opt.learning_rate * opt.final_learning_rate_fraction,
  )
  return optax.chain(
      optax.clip_by_global_norm(opt.grad_clip_norm),
      optax.adamw(schedule, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay),
  )


def init_state(model, optimizer, image_shape, seed: int) -> TrainState:
  """Parameters, random features and optimizer state of a fresh run."""
  variables = model.init(
      jax.random.key(seed), jnp.zeros((1,) + tuple(image_shape), jnp.float32)
  )
  params = variables["params"]
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=params,
      random_features=variables.get(attention_lib.RANDOM_FEATURES, {}),
      opt_state=optimizer.init(params),
  )


def abstract_state(model, optimizer, image_shape, seed: int) -> TrainState:
  """The shapes and dtypes of `init_state`, computing nothing: the template
  a checkpoint is restored into."""
  return jax.eval_shape(
      lambda: init_state(model, optimizer, image_shape, seed)
  )


def make_train_step(model, optimizer) -> Callable:
  """(state, images, labels, dropout_key) -> (state, metrics), jitted."""

  def train_step(state, images, labels, dropout_key):
    def loss_fn(params):
      logits = model.apply(
          state.replace(params=params).variables(), images,
          deterministic=False, rngs={"dropout": dropout_key},
      )
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
      return jnp.mean(loss), logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params
    )
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    new_state = state.replace(
        step=state.step + 1, params=optax.apply_updates(state.params, updates),
        opt_state=opt_state,
    )
    accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
    return new_state, {"loss": loss, "accuracy": accuracy}

  return jax.jit(train_step, donate_argnums=0)


def make_predict(model, state: TrainState) -> Callable[[np.ndarray], np.ndarray]:
  """images [n, H, W, C] -> logits [n, classes] with the state's weights."""
  apply = jax.jit(lambda variables, images: model.apply(variables, images))
  variables = state.variables()
  return lambda images: np.asarray(
      apply(variables, jnp.asarray(images, jnp.float32))
  )


def _one_line(error: BaseException, limit: int = 300) -> str:
  """`Type: first line of the message`, cut to `limit` characters.

  TensorStore's errors run to hundreds of lines; their first says what.
  """
  text = str(error).strip().splitlines()
  text = f"{type(error).__name__}: {text[0] if text else ''}"
  return text if len(text) <= limit else text[: limit - 3] + "..."


class Checkpoints:
  """Orbax `CheckpointManager` for a `TrainState`, restoring onto any mesh.

  Orbax writes each step into a temporary folder and renames it when
  complete, so a run killed while saving leaves no step that `latest_step`
  would pick up. A complete step whose files were later damaged (truncated,
  deleted) is skipped by `restore` for the newest intact one.
  """

  def __init__(
      self, directory: str, *, max_to_keep: int = 2, create: bool = True
  ):
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=create
        ),
    )

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, state: TrainState) -> None:
    self._manager.save(int(state.step), args=ocp.args.StandardSave(state))
    self._manager.wait_until_finished()

  def _restore_step(self, step: int, abstract):
    return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))

  def restore(
      self, template: TrainState, sharding, step: Optional[int] = None, *,
      quarantine: Optional[str] = None,
  ):
    """Restores `step`, or else the newest intact step, onto `sharding`.

    Args:
      template: a state with the structure to restore.
      sharding: the sharding of every restored array.
      step: restore exactly this step (an error if it is missing or
        corrupt); default: the newest step that restores, each skipped one
        reported on stderr with the reason.
      quarantine: a folder to move skipped steps into, so that later saves
        and `latest_step` ignore them (training); None leaves them in place
        (evaluation).

    Returns:
      The restored state, or None if there is no step at all.
    """
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
        template,
    )
    steps = self.steps()
    if step is not None:
      if step not in steps:
        raise ValueError(
            f"Checkpoint step {step} is not in {self.directory}; its steps"
            f" are {steps or 'none'}."
        )
      try:
        return self._restore_step(step, abstract)
      except Exception as error:  # pylint: disable=broad-except
        raise ValueError(
            f"Checkpoint step {step} in {self.directory} could not be restored"
            f" ({_one_line(error)}): it is corrupt or from another model."
        ) from error
    skipped = []
    for candidate in reversed(steps):
      try:
        state = self._restore_step(candidate, abstract)
      except Exception as error:  # pylint: disable=broad-except
        skipped.append((candidate, _one_line(error)))
        continue
      for bad, reason in skipped:
        moved = ""
        if quarantine is not None:
          os.makedirs(quarantine, exist_ok=True)
          target = os.path.join(quarantine, f"{bad}-{time.time_ns()}")
          shutil.move(os.path.join(self.directory, str(bad)), target)
          moved = f"; moved it to {target}"
        print(
            f"warning: skipped checkpoint step {bad} in {self.directory}: it"
            f" could not be restored ({reason}){moved}. Restored step"
            f" {candidate}.", file=sys.stderr, flush=True,
        )
      if quarantine is not None and skipped:
        self._manager.reload()
      return state
    if skipped:
      listed = "; ".join(f"step {bad} ({reason})" for bad, reason in skipped)
      raise ValueError(
          f"No checkpoint in {self.directory} could be restored: {listed}."
          " They are corrupt or from another model; use a new --workdir."
      )
    return None

  def close(self):
    self._manager.close()


def data_mesh(devices=None) -> jax.sharding.Mesh:
  """A one-axis mesh `("data",)` over `devices` (default: all).

  Auto axes: the compiler propagates the batch sharding through the model,
  so model code needs no sharding annotations.
  """
  devices = jax.devices() if devices is None else devices
  return jax.make_mesh(
      (len(devices),), ("data",), devices=devices,
      axis_types=(jax.sharding.AxisType.Auto,),
  )


def _global_batch(sharding, local: np.ndarray) -> jax.Array:
  return jax.make_array_from_process_local_data(sharding, local)


def _check_finite(images: np.ndarray, step: int) -> None:
  if not np.all(np.isfinite(images)):
    raise ValueError(
        f"The training batch of step {step} contains NaN or inf pixels;"
        " check the dataset and its transforms."
    )


def _augment(images: np.ndarray, config, step: int) -> np.ndarray:
  rng = np.random.default_rng([config.seed, step])
  if config.augment.max_shift:
    images = data_lib.random_shift(images, config.augment.max_shift, rng)
  if config.augment.max_rotation:
    images = data_lib.random_rotation(images, config.augment.max_rotation, rng)
  return images


def write_json_atomically(path: str, payload: Any) -> None:
  """Writes `payload` to `path` whole or not at all (temp file + rename)."""
  if os.path.isdir(path):
    raise ValueError(f"{path} is a folder; expected the path of a JSON file.")
  directory = os.path.dirname(os.path.abspath(path))
  with tempfile.NamedTemporaryFile(
      "w", dir=directory, delete=False, suffix=".tmp"
  ) as tmp:
    try:
      json.dump(payload, tmp, indent=2, sort_keys=True, default=str)
    except BaseException:
      tmp.close()
      os.unlink(tmp.name)
      raise
  try:
    os.replace(tmp.name, path)
  except BaseException:
    os.unlink(tmp.name)
    raise


def read_json(path: str, what: str) -> Any:
  """The JSON in `path`; a clear error naming the file if it is not JSON."""
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as error:
    raise ValueError(
        f"{path} is not valid JSON ({error}); it is not {what}. Use another"
        " --workdir, or move the file away if you know what it is."
    ) from None


def _check_workdir(workdir: str) -> str:
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ValueError(f"--workdir {workdir} is a file; expected a folder.")
  os.makedirs(workdir, exist_ok=True)
  return workdir


def _check_resumable(config, workdir: str) -> None:
  """A workdir holds one run: refuse to resume it with another config."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  saved = read_json(path, "a kattn run's config")
  if not isinstance(saved, dict):
    raise ValueError(
        f"{path} holds {type(saved).__name__}, not a kattn run's config; use"
        " another --workdir."
    )
  current = json.loads(config.to_json_best_effort())
  changed = sorted(
      key for key in set(saved) | set(current)
      if key not in RESUMABLE_CHANGES and saved.get(key) != current.get(key)
  )
  if changed:
    raise ValueError(
        f"--workdir {workdir} holds a run with a different config (keys"
        f" {changed} differ); use a new --workdir, or change only"
        f" {list(RESUMABLE_CHANGES)} when resuming."
    )


def _truncate_metrics(path: str, step: int) -> None:
  """Keeps the training lines up to `step`; a resumed run logs the rest.

  Test lines go too (a run that finishes writes its own). A torn last line,
  left by a run killed while appending, is dropped; a bad line elsewhere is
  an error naming the file and the line.
  """
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = f.read().splitlines()
  kept = []
  for number, line in enumerate(lines, 1):
    try:
      record = json.loads(line)
      if not isinstance(record, dict):
        raise ValueError(f"a {type(record).__name__}, not an object")
    except ValueError as error:
      if number == len(lines):
        print(
            f"warning: dropped the torn last line of {path}.", file=sys.stderr
        )
        break
      raise ValueError(
          f"{path} line {number} is not a metrics record ({error}); it is not"
          " a kattn run's metrics file. Use another --workdir."
      ) from None
    if "test_accuracy" not in record and record.get("step", 0) <= step:
      kept.append(line + "\n")
  with open(path, "w") as f:
    f.writelines(kept)


def _total_steps(config, steps_per_epoch: int) -> int:
  """`config.num_steps` when set (a budget independent of the data size),
  else `num_epochs` passes over the training split."""
  num_steps = config.get("num_steps")
  if num_steps is None:
    return config.num_epochs * steps_per_epoch
  return num_steps


@jax.jit
def _all_finite(state: TrainState, losses: jax.Array) -> jax.Array:
  """Whether every float in the state and every loss is finite: one fused
  reduction on device, cheap next to a save."""
  leaves = [
      jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves((state, losses))
      if jnp.issubdtype(x.dtype, jnp.inexact)
  ]
  return jnp.all(jnp.stack(leaves))


def _diverged(step: int, what: str, checkpoints, config) -> TrainingDiverged:
  good = checkpoints.latest_step()
  where = (
      f"the last good checkpoint is step {good} in {checkpoints.directory}"
      if good is not None else "no checkpoint was written"
  )
  return TrainingDiverged(
      f"Training diverged by step {step}: {what} is not finite; nothing was"
      f" saved after it, {where}. Lower optimizer.learning_rate (now"
      f" {config.optimizer.learning_rate:g}) or grad_clip_norm (now"
      f" {config.optimizer.grad_clip_norm:g}), or check the data, and train"
      " in a new --workdir."
  )


def _completed_results(workdir: str, total_steps: int, checkpoints):
  """The saved results if the run in `workdir` already finished, else None."""
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path) or checkpoints.latest_step() != total_steps:
    return None
  try:
    results = read_json(path, "a kattn run's results")
  except ValueError as error:
    print(f"warning: {error} Evaluating again.", file=sys.stderr)
    return None
  if isinstance(results, dict) and results.get("steps") == total_steps:
    return results
  return None


def evaluate(model, state: TrainState, dataset: data_lib.Dataset, config) -> dict:
  """Accuracy plus shift- and rotation-robustness curves on `dataset`."""
  return robustness.robustness_report(
      make_predict(model, state), dataset.images, dataset.labels,
      max_shift=config.eval.max_shift, angles=tuple(config.eval.angles),
      batch_size=config.eval.batch_size,
      shift_axes=tuple(config.eval.get("shift_axes", ("horizontal", "vertical"))),
  )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains `config` in `workdir`, resuming from its latest good checkpoint.

  Args:
    config: an experiment config (see `experiments/configs/digits.py`).
    workdir: holds config.json, checkpoints/, metrics.jsonl, tensorboard/
      and, at the end, results.json. One run at a time: a second run in the
      same workdir stops at once (`kattn.workdir_lock.WorkdirLocked`).

  Returns:
    The results dict also written to `workdir/results.json`. A run that
    already finished is not run again: its saved results come back as they
    are, files untouched.

  Raises:
    ValueError: a bad config value (`kattn.config_checks.ConfigError`),
      dataset or workdir, or a workdir holding another run.
    TrainingDiverged: the loss or a parameter became non-finite; nothing
      non-finite was saved and the message names the last good checkpoint.
  """
  config_checks.check_train_config(config)
  workdir = _check_workdir(workdir)
  is_chief = jax.process_index() == 0
  # The lock of a multi-process run is held by its chief alone.
  with workdir_lock.hold(workdir) if is_chief else contextlib.nullcontext():
    return _train_and_evaluate(config, workdir, is_chief)


def _train_and_evaluate(config, workdir: str, is_chief: bool) -> dict:
  _check_resumable(config, workdir)
  train = load_dataset(config, "train")
  test = load_dataset(config, "test")
  model = create_model(config, train.num_classes)
  num_devices, num_processes = jax.device_count(), jax.process_count()
  if config.batch_size % num_devices:
    raise ValueError(
        f"`batch_size` ({config.batch_size}) must be divisible by the number"
        f" of devices ({num_devices})."
    )
  steps_per_epoch = data_lib.num_batches(train, batch_size=config.batch_size)
  if steps_per_epoch == 0:
    raise ValueError(
        f"The training split of {config.dataset} has {len(train)} examples,"
        f" fewer than `batch_size` ({config.batch_size}): not one batch to"
        " train on."
    )
  total_steps = _total_steps(config, steps_per_epoch)
  optimizer = create_optimizer(config, total_steps)
  mesh = data_mesh()
  replicated = NamedSharding(mesh, PartitionSpec())
  batch_sharding = NamedSharding(mesh, PartitionSpec("data"))

  image_shape = train.images.shape[1:]
  checkpoints = Checkpoints(
      os.path.join(workdir, "checkpoints"), max_to_keep=config.keep_checkpoints
  )
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  writer = None
  # Closed even when training fails, so orbax stops its background threads.
  try:
    completed = _completed_results(workdir, total_steps, checkpoints)
    if completed is not None:
      print(
          f"{workdir} holds a complete run ({total_steps} steps): already"
          " complete, its files are left as they are.", flush=True,
      )
      return completed
    state = None
    if checkpoints.steps():
      state = checkpoints.restore(
          abstract_state(model, optimizer, image_shape, config.seed),
          replicated,
          quarantine=os.path.join(workdir, CORRUPT_CHECKPOINTS) if is_chief
          else None,
      )
      logging.info("Resumed from step %d in %s.", int(state.step), workdir)
      print(f"resumed from step {int(state.step)}", flush=True)
    else:
      state = jax.device_put(
          init_state(model, optimizer, image_shape, config.seed), replicated
      )
    if is_chief:
      write_json_atomically(
          os.path.join(workdir, "config.json"),
          json.loads(config.to_json_best_effort()),
      )
      _truncate_metrics(metrics_path, int(state.step))
      writer = tensorboard.TensorboardWriter(os.path.join(workdir, "tensorboard"))

    train_step = make_train_step(model, optimizer)
    redraw = jax.jit(attention_lib.redraw)
    seed_key = jax.random.key(config.seed)
    dropout_root, redraw_root = jax.random.split(seed_key)
    step = int(state.step)
    # Logging windows start at the resumed step, so every logged mean covers
    # the steps it says (`window_steps`).
    pending, window_start, window_step = [], time.perf_counter(), step
    unchecked_losses = []
    train_start, steps_run = time.perf_counter(), 0
    while step < total_steps:
      epoch, offset = divmod(step, steps_per_epoch)
      batches = data_lib.batches(
          train, batch_size=config.batch_size, seed=config.seed, epoch=epoch,
          process_index=jax.process_index(), process_count=num_processes,
      )
      for index, (images, labels) in enumerate(batches):
        if index < offset:
          continue
        _check_finite(images, step)
        images = _augment(images, config, step)
        if config.redraw_every and step and step % config.redraw_every == 0:
          state = state.replace(random_features=redraw(
              {attention_lib.RANDOM_FEATURES: state.random_features},
              jax.random.fold_in(redraw_root, step),
          ).get(attention_lib.RANDOM_FEATURES, {}))
        state, metrics = train_step(
            state, _global_batch(batch_sharding, images),
            _global_batch(batch_sharding, labels),
            jax.random.fold_in(dropout_root, step),
        )
        step += 1
        steps_run += 1
        pending.append(metrics)
        unchecked_losses.append(metrics["loss"])
        if step - window_step == config.log_every or step == total_steps:
          means = {
              k: float(np.mean([float(m[k]) for m in pending])) for k in pending[0]
          }
          if not np.isfinite(means["loss"]):
            raise _diverged(step, "the mean training loss", checkpoints, config)
          elapsed = time.perf_counter() - window_start
          examples_per_s = (step - window_step) * config.batch_size / elapsed
          eta = (total_steps - step) * elapsed / (step - window_step)
          record = {
              "step": step, "epoch": epoch, "window_steps": step - window_step,
              **means, "examples_per_s": examples_per_s,
          }
          if is_chief:
            writer.write_scalars(step, {
                f"train/{k}": v for k, v in record.items()
                if k not in ("step", "epoch", "window_steps")
            })
            with open(metrics_path, "a") as f:
              f.write(json.dumps(record) + "\n")
          print(
              f"step {step}/{total_steps}  epoch {epoch}  loss {means['loss']:.4f}"
              f"  accuracy {means['accuracy']:.3f}  {examples_per_s:.0f} ex/s"
              f"  ETA {eta:.0f}s", flush=True,
          )
          pending, window_start, window_step = [], time.perf_counter(), step
        if step % config.checkpoint_every == 0 or step == total_steps:
          if not bool(_all_finite(state, jnp.stack(unchecked_losses))):
            raise _diverged(
                step, "a parameter or a training loss", checkpoints, config
            )
          unchecked_losses = []
          checkpoints.save(state)
        if step == total_steps:
          break
    train_time = time.perf_counter() - train_start

    report = evaluate(model, state, test, config)
    results = {
        "dataset": config.dataset, "attention": config.model.get("attention"),
        "steps": total_steps, "steps_this_run": steps_run,
        "train_time_s": train_time if steps_run else None,
        "time_per_step_ms": 1e3 * train_time / steps_run if steps_run else None,
        "peak_rss_mib": _memory.peak_rss_bytes() / 2**20, "num_devices": num_devices,
        **report,
    }
    if is_chief:
      writer.write_scalars(total_steps, {"test/accuracy": report["accuracy"]})
      with open(metrics_path, "a") as f:
        f.write(json.dumps({"step": total_steps, "test_accuracy": report["accuracy"]}) + "\n")
      # Last: results.json marks the run complete.
      write_json_atomically(os.path.join(workdir, "results.json"), results)
  finally:
    if writer is not None:
      writer.close()
    checkpoints.close()
  return results


def restore_for_evaluation(workdir: str, *, step: Optional[int] = None):
  """(config, model, state) of a checkpoint in `workdir`.

  Args:
    workdir: a training run's workdir.
    step: the checkpoint step to restore; default the newest intact one
      (corrupt ones are skipped with a warning naming them).
  """
  config_path = os.path.join(workdir, "config.json")
  if not os.path.isdir(workdir):
    raise ValueError(f"--workdir {workdir} is not a folder.")
  if not os.path.exists(config_path):
    raise ValueError(
        f"--workdir {workdir} has no config.json: it holds no training run."
    )
  saved = read_json(config_path, "a kattn run's config")
  if not isinstance(saved, dict):
    raise ValueError(f"{config_path} does not hold a kattn run's config.")
  config = ml_collections.ConfigDict(saved)
  train = load_dataset(config, "train")
  model = create_model(config, train.num_classes)
  template = abstract_state(
      model, create_optimizer(config, 1), train.images.shape[1:], config.seed
  )
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    raise ValueError(f"--workdir {workdir} holds no checkpoint.")
  checkpoints = Checkpoints(directory, create=False)
  try:
    replicated = NamedSharding(data_mesh(), PartitionSpec())
    state = checkpoints.restore(template, replicated, step=step)
    if state is None:
      raise ValueError(f"--workdir {workdir} holds no complete checkpoint.")
  finally:
    checkpoints.close()
  return config, model, state


def load_evaluation_split(config: ml_collections.ConfigDict, spec: str):
  """The test split of `spec`, checked to fit the model `config` trained.

  The images must have the height, width and channels of the run's own
  test split (after `config.image_size` and `config.grayscale`), and the
  labels its classes: a clear error otherwise, not a shape error deep in
  the model.
  """
  config_checks.check_eval_config(config)
  test = load_dataset(config, "test", spec)
  if spec == config.dataset:
    return test
  own = load_dataset(config, "test")
  if test.images.shape[1:] != own.images.shape[1:]:
    raise ValueError(
        f"--dataset {spec} has images of shape {test.images.shape[1:]} (H, W,"
        f" C); the model was trained on {config.dataset} at"
        f" {own.images.shape[1:]}. Evaluate on data of that size and channel"
        " count."
    )
  if test.num_classes != own.num_classes:
    raise ValueError(
        f"--dataset {spec} has {test.num_classes} classes; the model was"
        f" trained on {config.dataset} with {own.num_classes}."
    )
  return test
