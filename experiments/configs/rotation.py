r"""Rotated digits: Z^2 self-attention vs p4 GSA-Net vs p4 linear attention.

The rotMNIST protocol of GSA-Nets (Romero & Cordonnier, 2021) on data that
ships with the package: the bundled digits (or Fashion-MNIST), each train and
test image cut to its disc and turned by a random angle
(`kattn.data.rotated_dataset`). One run trains one model:

  python -m experiments.train --config experiments/configs/rotation.py:p4 \
      --workdir runs/rotation/digits/p4

and `python -m experiments.rotation_study` trains all three and writes the
table and rotation curves.

Variants after the colon (comma-separated, one of each kind at most):
  model: z2 (plain translation-equivariant local self-attention with
    relative positions: the GSA-Net layers with the trivial group), p4
    (default: local group self-attention, exactly invariant to quarter
    turns), p4m (p4 and mirrors), p4_linear (the p4 network with the
    group-equivariant FAVOR+ linear attention, global over all pixels and
    group elements).
  data: digits (default: rotated bundled digits), fashion (rotated
    Fashion-MNIST from Debian's `dataset-fashion-mnist`: the first 12,000
    training images, rotMNIST's training size, and 1,000 test images; drop
    `max_train_examples` / `max_test_examples` for all of it).
  size: reference (GSA-Nets' rotMNIST net: 20 channels, 9 heads, 9 x 9
    windows, blocks ((2, 0), (2, 1, 1)), Adam 1e-3, batch 8, 300 epochs;
    needs an accelerator), runlocal (a few steps, for smoke tests).

The default size is a CPU network: 16 channels, 4 heads of width 8, 5 x 5
windows, the image max-pooled to 14 x 14 before the lifting layer, then
blocks ((1,), (0, 1)): 28 -> 14 -> 12 -> 6 -> 6 -> 4. All models share these widths, so their
parameter counts differ only by the group embedding (p4) or the position
MLPs of the linear layers: within 10% (checked by the tests).
"""

import ml_collections

MODELS = {
    # name: (group, attention)
    "z2": ("z2", "local"),
    "p4": ("p4", "local"),
    "p4m": ("p4m", "local"),
    "p4_linear": ("p4", "favor"),
}
DATASETS = {
    "digits": "rotated:bundled:digits",
    "fashion": "rotated:idx:/usr/share/datasets/fashion-mnist",
}
SIZES = ("reference", "runlocal")
VARIANTS = tuple(MODELS) + tuple(DATASETS) + SIZES


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  """The rotation experiment; `arg` lists VARIANTS."""
  variants = [a for a in (arg or "").split(",") if a]
  unknown = sorted(set(variants) - set(VARIANTS))
  if unknown:
    raise ValueError(
        f"Unknown variant(s) {unknown} of rotation.py; valid:"
        f" {list(VARIANTS)}."
    )
  for kind, names in (("model", MODELS), ("data", DATASETS), ("size", SIZES)):
    chosen = [v for v in variants if v in names]
    if len(chosen) > 1:
      raise ValueError(
          f"Pick at most one {kind} variant of rotation.py; got {chosen}."
      )
  model = next((v for v in variants if v in MODELS), "p4")
  dataset = next((v for v in variants if v in DATASETS), "digits")
  group, attention = MODELS[model]

  config = ml_collections.ConfigDict()
  config.model_variant = model
  config.dataset = DATASETS[dataset]
  config.seed = 0
  config.batch_size = 32
  # 1,500 steps on the digits: about 3 (z2), 20 (p4) and 30 (p4_linear)
  # minutes on 2 CPU cores.
  config.num_epochs = 12
  if dataset == "fashion":
    # rotMNIST's training-set size, 12,000 images, for 750 steps, and the
    # first 1,000 test images (both class-balanced): a CPU-sized run.
    config.max_train_examples = 12000
    config.max_test_examples = 1000
    config.num_epochs = 2

  config.model = ml_collections.ConfigDict(dict(
      name="gsa_net",
      group=group,
      attention=attention,
      channels=16,
      num_heads=4,
      head_dim=8,
      window=5,
      pool_input=True,
      pool_after_lifting=False,
      stages=((1,), (0, 1)),
      num_random_features=16,
      dropout_rate=0.0,
  ))
  config.optimizer = ml_collections.ConfigDict(dict(
      # Measured on z2, 750 steps: 60.8% test accuracy at 3e-3, 67.9% at 1e-2.
      learning_rate=1e-2,
      warmup_steps=100,
      final_learning_rate_fraction=0.01,
      weight_decay=1e-4,
      b1=0.9,
      b2=0.999,
      grad_clip_norm=1.0,
  ))
  # No augmentation, as in GSA-Nets: the training set is already rotated.
  config.augment = ml_collections.ConfigDict(dict(max_shift=0, max_rotation=0.0))
  config.redraw_every = 0
  config.log_every = 25
  config.checkpoint_every = 250
  config.keep_checkpoints = 1
  config.eval = ml_collections.ConfigDict(dict(
      max_shift=0,
      shift_axes=(),
      # Every 30 degrees: the quarter turns are exact pixel permutations,
      # the angles between them bilinear.
      angles=tuple(range(0, 361, 30)),
      batch_size=250,
  ))

  if "reference" in variants:
    config.model.update(dict(
        channels=20, num_heads=9, head_dim=10, window=9,
        pool_input=False, stages=((2, 0), (2, 1, 1)),
        dropout_rate=0.1,
    ))
    config.batch_size = 8
    config.num_epochs = 300
    config.optimizer.update(dict(
        learning_rate=1e-3, warmup_steps=0, final_learning_rate_fraction=1.0,
    ))
  if "runlocal" in variants:
    config.num_epochs = 1
    config.batch_size = 64
    config.model.update(dict(channels=4, num_heads=2, head_dim=4, window=3))
    config.optimizer.warmup_steps = 5
    config.log_every = 10
    config.checkpoint_every = 20
    config.eval.angles = (0, 45, 90)
  return config
