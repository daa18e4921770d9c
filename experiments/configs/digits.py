r"""A small Vision Transformer on the 5,000 bundled MNIST digits (no network).

Run (the README's main job, about 3 minutes on 2 CPU cores):

  python -m experiments.train --config experiments/configs/digits.py \
      --workdir runs/digits

Expected: test accuracy about 0.94 on the 1,000 held-out digits, with the
default `favor` (measured 0.944) and with `:softmax` (measured 0.945).

Variants after a colon: `digits.py:runlocal` (a few steps, for smoke tests),
`digits.py:softmax`, `digits.py:relu`. Any field can be overridden, e.g.
`--config.model.attention=favor_hyperbolic --config.num_epochs=5` or
`--config.max_train_examples=640` (a quick run on part of the data).
Another data source: `--config.dataset=idx:/usr/share/datasets/fashion-mnist`
(Debian's `dataset-fashion-mnist`) or `--config.dataset=tfds:mnist` (network).
"""

import ml_collections

VARIANTS = ("runlocal", "softmax", "relu")


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  """The digits experiment; `arg` is a comma-separated list of VARIANTS."""
  variants = [a for a in (arg or "").split(",") if a]
  unknown = sorted(set(variants) - set(VARIANTS))
  if unknown:
    raise ValueError(
        f"Unknown variant(s) {unknown} of digits.py; valid: {list(VARIANTS)}."
    )
  config = ml_collections.ConfigDict()
  config.dataset = "bundled:digits"
  # The first N examples of each split (class-balanced); None keeps all.
  config.max_train_examples = ml_collections.config_dict.placeholder(int)
  config.max_test_examples = ml_collections.config_dict.placeholder(int)
  config.seed = 0
  config.batch_size = 128
  config.num_epochs = 40

  config.model = ml_collections.ConfigDict(dict(
      attention="favor",
      num_random_features=64,
      patch_size=4,
      width=64,
      depth=3,
      num_heads=4,
      mlp_dim=128,
      use_cls_token=True,
      position_embedding="learned",
      dropout_rate=0.0,
  ))
  config.optimizer = ml_collections.ConfigDict(dict(
      learning_rate=2e-3,
      warmup_steps=100,
      final_learning_rate_fraction=0.01,
      weight_decay=1e-4,
      b1=0.9,
      b2=0.999,
      grad_clip_norm=1.0,
  ))
  config.augment = ml_collections.ConfigDict(dict(max_shift=2, max_rotation=0.0))
  # Fixed random features. Measured on this config (40 epochs, 1,240 steps):
  # redrawing every 100 steps ends at 86.3% test accuracy, fixed features at
  # 94.4% (softmax: 94.5%). Each redraw perturbs the kernel the model has
  # adapted to, and short runs at a decaying learning rate cannot recover;
  # Horn et al. saw the same collapse with frequent redraws. Long runs may
  # redraw every ~1000 steps (`--config.redraw_every=1000`).
  config.redraw_every = 0
  config.log_every = 50
  config.checkpoint_every = 200
  config.keep_checkpoints = 2
  config.eval = ml_collections.ConfigDict(dict(
      max_shift=4,
      angles=tuple(range(0, 360, 30)),
      batch_size=500,
  ))

  if "softmax" in variants:
    config.model.attention = "softmax"
  if "relu" in variants:
    config.model.attention = "relu"
  if "runlocal" in variants:
    config.num_epochs = 1
    config.batch_size = 64
    config.model.depth = 1
    config.model.width = 32
    config.model.mlp_dim = 64
    config.model.num_random_features = 16
    config.optimizer.warmup_steps = 5
    config.redraw_every = 10
    config.log_every = 10
    config.checkpoint_every = 20
    config.eval.angles = (0, 90, 180, 270)
  return config
