"""Training and evaluation: state, jitted steps, checkpoints and the loop.

`train_and_evaluate(config, workdir)` is what `experiments/train.py` runs.
A run is a pure function of its config: data order comes from
(seed, epoch), augmentation from (seed, step), dropout keys and random-feature
redraws from (seed, step). So a run killed at any moment and restarted from
its latest checkpoint ends with the same parameters as an uninterrupted one,
bit for bit on CPU.

Data parallelism: the batch axis is sharded over a one-axis mesh of all
devices (`jax.make_mesh`), the state is replicated; the same code runs on one
CPU, on 8 fake CPU devices and on a multi-host accelerator slice.
"""

from __future__ import annotations

import json
import os
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
from kattn import data as data_lib
from kattn import robustness
from kattn import tensorboard
from kattn.flax import attention as attention_lib
from kattn.flax import models
from kattn.flax import registry

# Config keys that may change between a run and its resumption.
RESUMABLE_CHANGES = ("num_epochs", "num_steps", "log_every", "checkpoint_every")


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
  grayscale = config.get("grayscale", False)
  if not isinstance(grayscale, bool):
    raise ValueError(f"`grayscale` must be a bool; got {grayscale!r}.")
  dataset = data_lib.load(spec or config.dataset, split)
  limit = config.get(f"max_{split}_examples")
  if limit is not None and (
      isinstance(limit, bool) or not isinstance(limit, int) or limit < 1
  ):
    raise ValueError(
        f"`max_{split}_examples` must be a positive int or None; got"
        f" {limit!r}."
    )
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


class Checkpoints:
  """Orbax `CheckpointManager` for a `TrainState`, restoring onto any mesh.

  Orbax writes each step into a temporary folder and renames it when
  complete, so a run killed while saving leaves no step that `latest_step`
  would pick up.
  """

  def __init__(self, directory: str, *, max_to_keep: int = 2):
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
    )

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def save(self, state: TrainState) -> None:
    self._manager.save(int(state.step), args=ocp.args.StandardSave(state))
    self._manager.wait_until_finished()

  def restore(self, template: TrainState, sharding, step: Optional[int] = None):
    """Restores `step` (default latest) with `template`'s structure."""
    step = self.latest_step() if step is None else step
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
        template,
    )
    try:
      return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as error:  # pylint: disable=broad-except
      raise ValueError(
          f"Checkpoint step {step} in {self.directory} could not be restored"
          f" ({type(error).__name__}: {error}). It is corrupt or from another"
          " model; delete that step's folder to resume from an earlier one,"
          " or use a new --workdir."
      ) from error

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
  directory = os.path.dirname(os.path.abspath(path))
  with tempfile.NamedTemporaryFile(
      "w", dir=directory, delete=False, suffix=".tmp"
  ) as tmp:
    json.dump(payload, tmp, indent=2, sort_keys=True, default=str)
  os.replace(tmp.name, path)


def _check_resumable(config, workdir: str) -> None:
  """A workdir holds one run: refuse to resume it with another config."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  with open(path) as f:
    saved = json.load(f)
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
  """Drops lines logged after `step`, which a resumed run logs again."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = [line for line in f if json.loads(line).get("step", 0) <= step]
  with open(path, "w") as f:
    f.writelines(lines)


def _total_steps(config, steps_per_epoch: int) -> int:
  """`config.num_steps` when set (a budget independent of the data size),
  else `num_epochs` passes over the training split."""
  num_steps = config.get("num_steps")
  if num_steps is None:
    return config.num_epochs * steps_per_epoch
  if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
    raise ValueError(
        f"`num_steps` must be a positive int or None; got {num_steps!r}."
    )
  return num_steps


def evaluate(model, state: TrainState, dataset: data_lib.Dataset, config) -> dict:
  """Accuracy plus shift- and rotation-robustness curves on `dataset`."""
  return robustness.robustness_report(
      make_predict(model, state), dataset.images, dataset.labels,
      max_shift=config.eval.max_shift, angles=tuple(config.eval.angles),
      batch_size=config.eval.batch_size,
      shift_axes=tuple(config.eval.get("shift_axes", ("horizontal", "vertical"))),
  )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains `config` in `workdir`, resuming from its latest checkpoint.

  Args:
    config: an experiment config (see `experiments/configs/digits.py`).
    workdir: holds config.json, checkpoints/, metrics.jsonl, tensorboard/
      and, at the end, results.json.

  Returns:
    The results dict also written to `workdir/results.json`.
  """
  os.makedirs(workdir, exist_ok=True)
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
  total_steps = _total_steps(config, steps_per_epoch)
  optimizer = create_optimizer(config, total_steps)
  mesh = data_mesh()
  replicated = NamedSharding(mesh, PartitionSpec())
  batch_sharding = NamedSharding(mesh, PartitionSpec("data"))

  state = init_state(model, optimizer, train.images.shape[1:], config.seed)
  checkpoints = Checkpoints(
      os.path.join(workdir, "checkpoints"), max_to_keep=config.keep_checkpoints
  )
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  # Closed even when training fails, so orbax stops its background threads.
  try:
    if checkpoints.latest_step() is not None:
      state = checkpoints.restore(state, replicated)
      logging.info("Resumed from step %d in %s.", int(state.step), workdir)
      print(f"resumed from step {int(state.step)}", flush=True)
    else:
      state = jax.device_put(state, replicated)
    is_chief = jax.process_index() == 0
    if is_chief:
      write_json_atomically(
          os.path.join(workdir, "config.json"),
          json.loads(config.to_json_best_effort()),
      )
      _truncate_metrics(metrics_path, int(state.step))
    writer = (
        tensorboard.TensorboardWriter(os.path.join(workdir, "tensorboard"))
        if is_chief else None
    )

    train_step = make_train_step(model, optimizer)
    redraw = jax.jit(attention_lib.redraw)
    seed_key = jax.random.key(config.seed)
    dropout_root, redraw_root = jax.random.split(seed_key)
    step = int(state.step)
    pending, window_start, window_step = [], time.perf_counter(), step
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
        if step % config.log_every == 0 or step == total_steps:
          means = {
              k: float(np.mean([float(m[k]) for m in pending])) for k in pending[0]
          }
          if not np.isfinite(means["loss"]):
            raise FloatingPointError(
                f"Training diverged: mean loss {means['loss']} at step {step};"
                " lower optimizer.learning_rate or check the data."
            )
          elapsed = time.perf_counter() - window_start
          examples_per_s = (step - window_step) * config.batch_size / elapsed
          eta = (total_steps - step) * elapsed / (step - window_step)
          record = {
              "step": step, "epoch": epoch, **means,
              "examples_per_s": examples_per_s,
          }
          if is_chief:
            writer.write_scalars(step, {
                f"train/{k}": v for k, v in record.items()
                if k not in ("step", "epoch")
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
          checkpoints.save(state)
        if step == total_steps:
          break
    train_time = time.perf_counter() - train_start

    report = evaluate(model, state, test, config)
    results = {
        "dataset": config.dataset, "attention": config.model.attention,
        "steps": total_steps, "steps_this_run": steps_run,
        "train_time_s": train_time,
        "time_per_step_ms": 1e3 * train_time / steps_run if steps_run else None,
        "peak_rss_mib": _memory.peak_rss_bytes() / 2**20, "num_devices": num_devices,
        **report,
    }
    if is_chief:
      writer.write_scalars(total_steps, {"test/accuracy": report["accuracy"]})
      writer.close()
      write_json_atomically(os.path.join(workdir, "results.json"), results)
      with open(metrics_path, "a") as f:
        f.write(json.dumps({"step": total_steps, "test_accuracy": report["accuracy"]}) + "\n")
  finally:
    checkpoints.close()
  return results


def restore_for_evaluation(workdir: str):
  """(config, model, state) of the latest checkpoint in `workdir`."""
  config_path = os.path.join(workdir, "config.json")
  if not os.path.exists(config_path):
    raise ValueError(
        f"--workdir {workdir} has no config.json: it holds no training run."
    )
  with open(config_path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  train = load_dataset(config, "train")
  model = create_model(config, train.num_classes)
  template = init_state(
      model, create_optimizer(config, 1), train.images.shape[1:], config.seed
  )
  checkpoints = Checkpoints(os.path.join(workdir, "checkpoints"))
  try:
    if checkpoints.latest_step() is None:
      raise ValueError(f"--workdir {workdir} holds no complete checkpoint.")
    replicated = NamedSharding(data_mesh(), PartitionSpec())
    state = checkpoints.restore(template, replicated)
  finally:
    checkpoints.close()
  return config, model, state
