r"""Sample efficiency: ConViT vs its DeiT baseline on fractions of the data.

ConViT's subsampling study (d'Ascoli et al., 2021, Table 3) on data that
ships with the package: each class keeps its first 10, 25, 50 or 100% of
training images (`kattn.data.class_balanced_subset`), and every run gets the
same budget, a fixed number of optimizer steps of a fixed batch (so the same
number of images seen, as many epochs as that takes). One run:

  python -m experiments.train \
      --config experiments/configs/sample_efficiency.py:convit,f10 \
      --workdir runs/sample_efficiency/digits/convit/f10/seed0

and `python -m experiments.sample_efficiency_study` trains the grid (two
models x four fractions x three seeds per dataset) and writes the table and
plot.

Variants after the colon (comma-separated, at most one of each kind):
  model: convit (default: GPSA in the first 3 of 4 blocks, locality init),
    deit (the same network with plain self-attention everywhere: the matched
    baseline), convit_linear (the linear-cost GPSA: FAVOR+ content term,
    FAVOR+ in the non-local blocks).
  data: digits (default: the 4,000 bundled training digits), fashion
    (Fashion-MNIST from Debian's `dataset-fashion-mnist`: the first 12,000
    training images are its 100%, and the first 2,000 test images the test
    set, to fit the grid on 2 CPU cores; drop `max_train_examples` /
    `max_test_examples` for all of it).
  fraction: f10, f25, f50, f100 (default).
  size: runlocal (a few steps, for smoke tests). The reference sizes are
    `kattn.flax.CONVIT_SIZES`.

The default size is a CPU network for 28 x 28 images: patch 4 (a 7 x 7
grid), 9 heads of width 8, depth 4 with `local_up_to_layer=3`, MLP ratio 2,
500 steps of batch 64. No augmentation: the gap measured is the
architectures' own inductive bias.
"""

import ml_collections

MODELS = {
    # name: (registered model, attention)
    "convit": ("convit", "softmax"),
    "deit": ("deit", "softmax"),
    "convit_linear": ("convit", "favor"),
}
DATASETS = {
    "digits": "bundled:digits",
    "fashion": "idx:/usr/share/datasets/fashion-mnist",
}
FRACTIONS = {"f10": 0.1, "f25": 0.25, "f50": 0.5, "f100": 1.0}
SIZES = ("runlocal",)
VARIANTS = tuple(MODELS) + tuple(DATASETS) + tuple(FRACTIONS) + SIZES


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  """The sample-efficiency experiment; `arg` lists VARIANTS."""
  variants = [a for a in (arg or "").split(",") if a]
  unknown = sorted(set(variants) - set(VARIANTS))
  if unknown:
    raise ValueError(
        f"Unknown variant(s) {unknown} of sample_efficiency.py; valid:"
        f" {list(VARIANTS)}."
    )
  kinds = (("model", MODELS), ("data", DATASETS), ("fraction", FRACTIONS),
           ("size", SIZES))
  for kind, names in kinds:
    chosen = [v for v in variants if v in names]
    if len(chosen) > 1:
      raise ValueError(
          f"Pick at most one {kind} variant of sample_efficiency.py; got"
          f" {chosen}."
      )
  pick = lambda names, default: next(
      (v for v in variants if v in names), default
  )
  model, dataset = pick(MODELS, "convit"), pick(DATASETS, "digits")
  fraction = pick(FRACTIONS, "f100")
  name, attention = MODELS[model]

  config = ml_collections.ConfigDict()
  config.model_variant = model
  config.dataset = DATASETS[dataset]
  config.train_fraction = FRACTIONS[fraction]
  config.seed = 0
  config.batch_size = 64
  config.num_steps = 500
  # Unused with num_steps set; kept for the launcher's resume check.
  config.num_epochs = 1
  if dataset == "fashion":
    config.max_train_examples = 12000
    config.max_test_examples = 2000

  config.model = ml_collections.ConfigDict(dict(
      name=name,
      num_heads=9,
      head_dim=8,
      depth=4,
      patch_size=4,
      mlp_ratio=2.0,
      attention=attention,
      num_random_features=32,
      locality_strength=1.0,
      dropout_rate=0.0,
      drop_path_rate=0.0,
  ))
  if name == "convit":
    config.model.local_up_to_layer = 3
  config.optimizer = ml_collections.ConfigDict(dict(
      learning_rate=1e-3,
      warmup_steps=50,
      final_learning_rate_fraction=0.01,
      weight_decay=0.05,
      b1=0.9,
      b2=0.999,
      grad_clip_norm=1.0,
  ))
  config.augment = ml_collections.ConfigDict(dict(max_shift=0, max_rotation=0.0))
  config.redraw_every = 0
  config.log_every = 50
  config.checkpoint_every = 500
  config.keep_checkpoints = 1
  config.eval = ml_collections.ConfigDict(dict(
      max_shift=0, shift_axes=(), angles=(0,), batch_size=500,
  ))

  if "runlocal" in variants:
    config.num_steps = 4
    config.model.update(dict(num_heads=4, head_dim=4, depth=2))
    if name == "convit":
      config.model.local_up_to_layer = 1
    config.optimizer.warmup_steps = 2
    config.log_every = 2
    config.checkpoint_every = 2
  return config
