r"""Shift robustness of Performers with and without relative positions.

Horn et al. (2021) train pixel Performers on centred 32 x 32 images and test
them on images shifted by k pixels. One run trains one position variant:

  python -m experiments.train \
      --config experiments/configs/shift_robustness.py:fft_torus \
      --workdir runs/shift/digits/fft_torus

and `python -m experiments.shift_study` trains every variant and writes the
table and plot in the paper's layout.

Variants after the colon (comma-separated, one position variant at most):
  position: nopos, absolute, strategy1, strategy1_content, strategy2,
    fft_torus (default), fft_padded.
  data: digits (default: the 5,000 bundled MNIST digits), fashion (the full
    Fashion-MNIST from Debian's `dataset-fashion-mnist`).
  size: reference (Horn et al.'s pixel Performer: every pixel a token, width
    256, depth 6, 8 heads, m = floor(d ln d) features; needs an
    accelerator), pixels (every pixel a token at CPU size: width 32, 8
    epochs of the digits), runlocal (a few steps, for smoke tests).

The default size is the CPU model: 4 x 4 patch tokens on the 32 x 32 image
(an 8 x 8 token grid), width 64, depth 2, 4 heads, m = 32 features. A patch
model is equivariant to shifts by multiples of 4 pixels, which covers the paper's
table (-8, -4, 0, +4, +8); pixel tokens (`patch_size=1`) are equivariant to
every shift but cost 16 times the tokens.

All variants are trained on centred images without shift augmentation, and
pool by mean over tokens: with `fft_torus` every block is exactly
equivariant to circular shifts of the token grid, so the logits are exactly
invariant (a zero-filled shift of an object that fits is a circular one).
"""

import ml_collections

POSITIONS = {
    # name: (position_embedding, relative_position, content_conditional)
    "nopos": ("none", None, False),
    "absolute": ("sinusoid", None, False),
    "strategy1": ("none", "constrained_sinusoid", False),
    "strategy1_content": ("none", "constrained_sinusoid", True),
    "strategy2": ("none", "clipped", False),
    "fft_torus": ("none", "fft_torus", False),
    "fft_padded": ("none", "fft_padded", False),
}
DATASETS = {
    "digits": "bundled:digits",
    "fashion": "idx:/usr/share/datasets/fashion-mnist",
}
SIZES = ("reference", "pixels", "runlocal")
VARIANTS = tuple(POSITIONS) + tuple(DATASETS) + SIZES


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  """The shift-robustness experiment; `arg` lists VARIANTS."""
  variants = [a for a in (arg or "").split(",") if a]
  unknown = sorted(set(variants) - set(VARIANTS))
  if unknown:
    raise ValueError(
        f"Unknown variant(s) {unknown} of shift_robustness.py; valid:"
        f" {list(VARIANTS)}."
    )
  for group, names in (("position", POSITIONS), ("data", DATASETS)):
    chosen = [v for v in variants if v in names]
    if len(chosen) > 1:
      raise ValueError(
          f"Pick at most one {group} variant of shift_robustness.py; got"
          f" {chosen}."
      )
  position = next((v for v in variants if v in POSITIONS), "fft_torus")
  dataset = next((v for v in variants if v in DATASETS), "digits")
  position_embedding, relative_position, content_conditional = (
      POSITIONS[position]
  )

  config = ml_collections.ConfigDict()
  config.position_variant = position
  config.dataset = DATASETS[dataset]
  config.image_size = 32
  config.seed = 0
  config.batch_size = 128
  # About 1,250 steps on either dataset.
  config.num_epochs = 40 if dataset == "digits" else 3

  config.model = ml_collections.ConfigDict(dict(
      attention="favor",
      num_random_features=32,
      patch_size=4,
      width=64,
      depth=2,
      num_heads=4,
      mlp_dim=128,
      use_cls_token=False,
      position_embedding=position_embedding,
      relative_position=relative_position,
      num_scales=4,
      position_frequencies="geometric",
      max_period=None,
      content_conditional=content_conditional,
      max_distance=4,
      # The 8 x 8 grid is cheaper with explicit pairwise weights than with
      # FFTs; "fft" computes the same function (see toeplitz_2d_linear_attention).
      relative_method="auto",
      # Gaussian windows of 1..4 tokens: from zeros, 1,400 Adam steps move
      # the log-biases by about +-1 only (measured), a weak positional signal.
      bias_init="local",
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
  # Centred training images only: the study measures what the architecture
  # gives, not what augmentation teaches.
  config.augment = ml_collections.ConfigDict(dict(max_shift=0, max_rotation=0.0))
  config.redraw_every = 0
  config.log_every = 50
  config.checkpoint_every = 250
  config.keep_checkpoints = 1
  config.eval = ml_collections.ConfigDict(dict(
      max_shift=8,
      # The paper's protocol shifts columns; resized digits leave less than
      # 8 pixels above and below.
      shift_axes=("horizontal",),
      angles=(0,),
      batch_size=500,
  ))
  # Horn et al.'s shift table: class 1 (digit one, trouser).
  config.study = ml_collections.ConfigDict(dict(label=1, shifts=(-8, -4, 0, 4, 8)))

  if "reference" in variants:
    # Horn et al. section 2.4: dim 256, depth 6, 8 heads, FF x4, dropout 0.1,
    # m = floor(d ln d) for head dim d = 32, Adam(0.9, 0.98) at 5e-5, batch
    # 22, clipping 0.5, redraw every 1000 steps.
    config.model.update(dict(
        patch_size=1, width=256, depth=6, num_heads=8, mlp_dim=1024,
        num_random_features=110, dropout_rate=0.1,
    ))
    if relative_position == "constrained_sinusoid":
      # Head dim 32 + 4S = 48 positional-content features: floor(48 ln 48).
      config.model.num_random_features = 185
    config.batch_size = 22
    config.num_epochs = 20
    config.optimizer.update(dict(
        learning_rate=5e-5, warmup_steps=1, final_learning_rate_fraction=1.0,
        weight_decay=0.0, b2=0.98, grad_clip_norm=0.5,
    ))
    config.redraw_every = 1000
  if "pixels" in variants:
    # Pixel tokens make the torus model invariant to every pixel shift, not
    # only to multiples of the patch; 1,024 tokens cost 16x the patch model.
    config.model.update(dict(
        patch_size=1, width=32, depth=2, num_heads=4, mlp_dim=64,
        num_random_features=16,
    ))
    config.batch_size = 64
    config.num_epochs = 8 if dataset == "digits" else 1
  if "runlocal" in variants:
    config.num_epochs = 1
    config.batch_size = 64
    config.model.update(dict(
        width=32, depth=1, num_heads=2, mlp_dim=64, num_random_features=16,
    ))
    config.optimizer.warmup_steps = 5
    config.log_every = 10
    config.checkpoint_every = 20
    config.eval.batch_size = 250
  return config
