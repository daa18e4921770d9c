"""Checks of an experiment config, run before any work.

Every value the training loop, the data loading and the evaluation read
from a config is checked here, in one place, so that a bad value stops the
run at once with a message naming the key, the value and what is valid,
instead of a ZeroDivisionError, NaN parameters or results of an untrained
model later. The model's own fields are checked by the model itself when it
is built (`kattn.flax`), and names by the registry.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Optional

import ml_collections

SHIFT_AXES = ("horizontal", "vertical")


class ConfigError(ValueError):
  """A config value is out of range or of the wrong type."""


_MISSING = object()


def _get(config, key: str, default=_MISSING):
  node = config
  for part in key.split("."):
    if not isinstance(node, (ml_collections.ConfigDict, dict)) or part not in node:
      if default is _MISSING:
        raise ConfigError(f"`config.{key}` is missing; every run needs it.")
      return default
    node = node[part]
  return node


def _fail(key: str, valid: str, value: Any):
  raise ConfigError(f"`config.{key}` must be {valid}; got {value!r}.")


def _int(config, key: str, *, minimum: int, default=_MISSING) -> Optional[int]:
  value = _get(config, key, default)
  if value is None and default is None:
    return None
  if (
      isinstance(value, bool) or not isinstance(value, numbers.Integral)
      or value < minimum
  ):
    _fail(key, f"an integer >= {minimum}", value)
  return int(value)


def _real(config, key: str, valid: str, accept, default=_MISSING) -> float:
  """A finite real number (not a bool) for which `accept` holds."""
  value = _get(config, key, default)
  if (
      isinstance(value, bool) or not isinstance(value, numbers.Real)
      or not math.isfinite(value) or not accept(value)
  ):
    _fail(key, f"a finite number {valid}", value)
  return float(value)


def check_data_config(config: ml_collections.ConfigDict) -> None:
  """The keys `kattn.train.load_dataset` reads.

  Examples:
    >>> import ml_collections
    >>> check_data_config(ml_collections.ConfigDict({"dataset": "bundled:digits"}))
    >>> check_data_config(ml_collections.ConfigDict(
    ...     {"dataset": "bundled:digits", "max_train_examples": 0}))
    Traceback (most recent call last):
    ...
    kattn.config_checks.ConfigError: `config.max_train_examples` must be an integer >= 1; got 0.
  """
  dataset = _get(config, "dataset")
  if not isinstance(dataset, str) or not dataset:
    _fail("dataset", "a dataset spec such as 'bundled:digits'", dataset)
  for split in ("train", "test"):
    _int(config, f"max_{split}_examples", minimum=1, default=None)
    if _get(config, f"{split}_fraction", None) is not None:
      _real(config, f"{split}_fraction", "in (0, 1]", lambda x: 0 < x <= 1)
  grayscale = _get(config, "grayscale", False)
  if not isinstance(grayscale, bool):
    _fail("grayscale", "a bool", grayscale)
  _int(config, "image_size", minimum=1, default=None)


def check_eval_config(config: ml_collections.ConfigDict) -> None:
  """The keys `kattn.train.evaluate` reads."""
  _int(config, "eval.max_shift", minimum=0)
  _int(config, "eval.batch_size", minimum=1)
  angles = _get(config, "eval.angles")
  if isinstance(angles, (str, bytes)) or not hasattr(angles, "__len__") or not (
      len(angles) and all(
          isinstance(a, numbers.Real) and not isinstance(a, bool)
          and math.isfinite(a) for a in angles
      )
  ):
    _fail("eval.angles", "a non-empty sequence of finite angles in degrees", angles)
  axes = _get(config, "eval.shift_axes", SHIFT_AXES)
  if isinstance(axes, str) or not all(a in SHIFT_AXES for a in axes):
    _fail("eval.shift_axes", f"a sequence of names from {list(SHIFT_AXES)}", axes)


def check_train_config(config: ml_collections.ConfigDict) -> None:
  """Everything `kattn.train.train_and_evaluate` reads, before any work.

  Raises:
    ConfigError: naming the first bad key, its value and what is valid.
  """
  check_data_config(config)
  _int(config, "seed", minimum=0)
  _int(config, "batch_size", minimum=1)
  if _int(config, "num_steps", minimum=1, default=None) is None:
    _int(config, "num_epochs", minimum=1)
  for key in ("log_every", "checkpoint_every", "keep_checkpoints"):
    _int(config, key, minimum=1)
  _int(config, "redraw_every", minimum=0)

  model = _get(config, "model")
  if not isinstance(model, (ml_collections.ConfigDict, dict)):
    _fail("model", "a ConfigDict of model fields", model)

  _real(config, "optimizer.learning_rate", "> 0", lambda x: x > 0)
  _int(config, "optimizer.warmup_steps", minimum=0)
  _real(
      config, "optimizer.final_learning_rate_fraction", "in [0, 1]",
      lambda x: 0 <= x <= 1,
  )
  _real(config, "optimizer.weight_decay", ">= 0", lambda x: x >= 0)
  for key in ("optimizer.b1", "optimizer.b2"):
    _real(config, key, "in [0, 1)", lambda x: 0 <= x < 1)
  _real(config, "optimizer.grad_clip_norm", "> 0", lambda x: x > 0)

  _int(config, "augment.max_shift", minimum=0)
  _real(config, "augment.max_rotation", ">= 0 (degrees)", lambda x: x >= 0)
  check_eval_config(config)
