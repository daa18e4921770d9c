r"""Pixel-sequence classification (LRA Image style): learned kernels vs FAVOR+.

Every image is a sequence of grey pixels, one token each (a ViT with
`patch_size=1`): L = 784 for 28 x 28 digits and Fashion-MNIST, L = 1024 for
grey CIFAR-10 (the Long Range Arena's Image task). One run trains one
attention:

  python -m experiments.train \
      --config experiments/configs/pixel_sequence.py:gmm_rks \
      --workdir runs/pixel_sequence/digits/gmm_rks/seed0

and `python -m experiments.pixel_sequence_study` trains them all, three
seeds each, and writes the accuracy, time-per-step and memory table.

Variants after the colon (comma-separated, at most one of each kind):
  attention: softmax (default), favor (FAVOR+, 256 orthogonal positive
    features, redrawn with the others), and the six learned kernels of
    `kattn.features.learned`: gmm_rks, gmm_prf, fastfood_rks, fastfood_prf,
    generative_rks, generative_prf (RKS: 128 frequencies, 257 features;
    PRF: 256 frequencies and features; each head learns its own spectral
    distribution).
  data: digits (default: the 4,000 bundled training digits, 1,000 test),
    fashion (Fashion-MNIST from Debian's `dataset-fashion-mnist`: the first
    12,000 training and 2,000 test images, to fit on 2 CPU cores),
    cifar10 (`tfds:cifar10` turned grey, L = 1024, all 50,000 / 10,000
    images: the LRA Image task's data, for users with the network).
  size: runlocal (a few steps, for smoke tests).

The network: pixel values embedded linearly to width 32, a learned position
embedding and a class token, 1 pre-LN encoder block with 2 heads of dim 16
and MLP 64, classification from the class token. 300 steps of batch 16 with
AdamW, no augmentation. Random features and kernel noise are redrawn every
100 steps and held fixed at evaluation.
"""

import ml_collections

from experiments import configs

from kattn.features import learned

ATTENTIONS = ("softmax", "favor") + tuple(learned.LEARNED_KERNELS)
DATASETS = {
    "digits": "bundled:digits",
    "fashion": "idx:/usr/share/datasets/fashion-mnist",
    "cifar10": "tfds:cifar10",
}
SIZES = ("runlocal",)
VARIANTS = ATTENTIONS + tuple(DATASETS) + SIZES


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  """The comparison; `arg` lists VARIANTS."""
  chosen = configs.choose_variants(
      arg, "pixel_sequence.py",
      {"attention": ATTENTIONS, "data": DATASETS, "size": SIZES},
  )
  attention = chosen["attention"] or "softmax"
  dataset = chosen["data"] or "digits"

  config = ml_collections.ConfigDict()
  config.dataset = DATASETS[dataset]
  config.seed = 0
  config.batch_size = 16
  config.num_steps = 300
  # Unused with num_steps set; kept for the launcher's resume check.
  config.num_epochs = 1
  if dataset == "fashion":
    config.max_train_examples = 12000
    config.max_test_examples = 2000
  if dataset == "cifar10":
    config.grayscale = True
  config.model = ml_collections.ConfigDict(dict(
      attention=attention,
      # Each attention's own default, which makes their costs comparable.
      num_random_features=ml_collections.FieldReference(None, field_type=int),
      patch_size=1,
      width=32,
      depth=1,
      num_heads=2,
      mlp_dim=64,
      use_cls_token=True,
      position_embedding="learned",
      dropout_rate=0.0,
  ))
  config.optimizer = ml_collections.ConfigDict(dict(
      learning_rate=2e-3,
      warmup_steps=30,
      final_learning_rate_fraction=0.01,
      weight_decay=1e-4,
      b1=0.9,
      b2=0.999,
      grad_clip_norm=1.0,
  ))
  config.augment = ml_collections.ConfigDict(dict(max_shift=0, max_rotation=0.0))
  config.redraw_every = 100
  config.log_every = 50
  config.checkpoint_every = 300
  config.keep_checkpoints = 1
  config.eval = ml_collections.ConfigDict(dict(
      max_shift=0, shift_axes=(), angles=(0,), batch_size=250,
  ))
  if chosen["size"] == "runlocal":
    config.num_steps = 4
    config.model.update(dict(width=16, mlp_dim=32))
    config.optimizer.warmup_steps = 2
    config.redraw_every = 2
    config.log_every = 2
    config.checkpoint_every = 2
    if dataset == "digits":
      config.max_train_examples = 256
      config.max_test_examples = 100
  return config
