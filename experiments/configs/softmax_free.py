r"""Softmax vs FAVOR+ vs SOFT in one small ViT: accuracy, time per step, memory.

One run trains one attention:

  python -m experiments.train \
      --config experiments/configs/softmax_free.py:soft \
      --workdir runs/softmax_free/digits/soft

and `python -m experiments.softmax_free_study` trains them all and writes
the table beside the paper's figures.

Variants after the colon (comma-separated, at most one of each kind):
  attention: softmax (default), favor (FAVOR+, 64 orthogonal features),
    soft (SOFT: Gaussian kernel, 49 segment-mean landmarks, 20 Newton-Schulz
    steps, ridge 0.01), soft_norm (the same with the symmetric
    normalisation of the journal version).
  data: digits (default: the 4,000 bundled training digits), fashion
    (Fashion-MNIST from Debian's `dataset-fashion-mnist`: the first 12,000
    training and 2,000 test images, to fit on 2 CPU cores).
  size: runlocal (a few steps, for smoke tests).

The network: patch 2 on 28 x 28 images (196 patch tokens and a class token,
so SOFT's 49 landmarks are a rank-1/4 bottleneck), width 64, depth 3, 4
heads, MLP 128, 600 steps of batch 64 with a random shift of up to 2 pixels.
"""

import ml_collections

from experiments import configs

ATTENTIONS = ("softmax", "favor", "soft", "soft_norm")
DATASETS = {
    "digits": "bundled:digits",
    "fashion": "idx:/usr/share/datasets/fashion-mnist",
}
SIZES = ("runlocal",)
VARIANTS = ATTENTIONS + tuple(DATASETS) + SIZES


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  """The comparison; `arg` lists VARIANTS."""
  chosen = configs.choose_variants(
      arg, "softmax_free.py",
      {"attention": ATTENTIONS, "data": DATASETS, "size": SIZES},
  )
  attention = chosen["attention"] or "softmax"
  dataset = chosen["data"] or "digits"

  config = ml_collections.ConfigDict()
  config.dataset = DATASETS[dataset]
  config.seed = 0
  config.batch_size = 64
  config.num_steps = 600
  # Unused with num_steps set; kept for the launcher's resume check.
  config.num_epochs = 1
  if dataset == "fashion":
    config.max_train_examples = 12000
    config.max_test_examples = 2000
  config.model = ml_collections.ConfigDict(dict(
      attention=attention,
      num_random_features=64,
      patch_size=2,
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
      warmup_steps=60,
      final_learning_rate_fraction=0.01,
      weight_decay=1e-4,
      b1=0.9,
      b2=0.999,
      grad_clip_norm=1.0,
  ))
  config.augment = ml_collections.ConfigDict(dict(max_shift=2, max_rotation=0.0))
  config.redraw_every = 0
  config.log_every = 50
  config.checkpoint_every = 600
  config.keep_checkpoints = 1
  config.eval = ml_collections.ConfigDict(dict(
      max_shift=0, shift_axes=(), angles=(0,), batch_size=250,
  ))
  if chosen["size"] == "runlocal":
    config.num_steps = 4
    config.model.update(dict(depth=1, width=16, mlp_dim=32,
                             num_random_features=8))
    config.optimizer.warmup_steps = 2
    config.log_every = 2
    config.checkpoint_every = 2
  return config
