"""Shift / rotation evaluation against hand-computed expectations."""

import csv
import math
import os

import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax.numpy as jnp
import numpy as np
import pytest

from kattn import robustness

_settings = hypothesis.settings(
    max_examples=40, deadline=None, derandomize=True
)

small_images = hnp.arrays(
    np.float32,
    hnp.array_shapes(min_dims=4, max_dims=4, min_side=1, max_side=7),
    elements=st.floats(0, 1, width=32),
)


def _reference_shift(images, shift, axis):
  """Pixel-by-pixel translation with zero fill: out[j] = in[j - shift]."""
  array_axis = {"vertical": 1, "horizontal": 2}[axis]
  moved = np.moveaxis(images, array_axis, 0)
  out = np.zeros_like(moved)
  for j in range(len(moved)):
    if 0 <= j - shift < len(moved):
      out[j] = moved[j - shift]
  return np.moveaxis(out, 0, array_axis)


def _dots(size, positions, axis="horizontal", height=3):
  """One image per position: a single unit pixel at that column (or row)."""
  images = np.zeros((len(positions), height, size, 1), np.float32)
  for i, position in enumerate(positions):
    images[i, height // 2, position] = 1.0
  if axis == "vertical":
    images = images.transpose(0, 2, 1, 3)
  return images


def _right_half(images):
  """Logits for class 1 iff the centre of mass lies right of the middle."""
  columns = np.arange(images.shape[2])
  mass = images.sum(axis=(1, 3))
  centre = (mass * columns).sum(axis=1) / mass.sum(axis=1)
  return np.eye(2)[(centre > (images.shape[2] - 1) / 2).astype(int)]


def _heavy(images):
  """Logits for class 1 iff total mass > 1.5; blind to where the object is."""
  # A jax array, as a Flax apply would return.
  return jnp.eye(2)[(images.sum(axis=(1, 2, 3)) > 1.5).astype(int)]


@_settings
@hypothesis.given(
    images=small_images,
    shift=st.integers(-9, 9),
    axis=st.sampled_from(["horizontal", "vertical"]),
)
def test_shift_images_matches_pixelwise_reference(images, shift, axis):
  np.testing.assert_array_equal(
      robustness.shift_images(images, shift, axis),
      _reference_shift(images, shift, axis),
  )


@_settings
@hypothesis.given(
    images=small_images, axis=st.sampled_from(["horizontal", "vertical"])
)
def test_shift_zero_is_identity(images, axis):
  np.testing.assert_array_equal(
      robustness.shift_images(images, 0, axis), images
  )


@_settings
@hypothesis.given(
    images=small_images,
    shift=st.integers(-3, 3),
    axis=st.sampled_from(["horizontal", "vertical"]),
)
def test_shift_then_unshift_restores_exactly_the_images_that_fit(
    images, shift, axis
):
  def round_trip(s):
    return robustness.shift_images(
        robustness.shift_images(images, s, axis), -s, axis
    )

  fits = robustness.fits_under_shifts(images, abs(shift), axis)
  for s in (shift, -shift):
    np.testing.assert_array_equal(round_trip(s)[fits], images[fits])
  # A non-empty image that does not fit has a pixel within |shift| of one
  # border, which the round trip towards that border cuts off.
  lost = np.zeros(len(images), bool)
  for s in (shift, -shift):
    lost |= (round_trip(s) != images).any(axis=(1, 2, 3))
  empty = ~(images > 0).any(axis=(1, 2, 3))
  np.testing.assert_array_equal(lost, ~fits & ~empty)


def test_shift_by_image_size_or_more_gives_zeros():
  images = np.ones((2, 3, 4, 1))
  for shift, axis in ((4, "horizontal"), (-5, "horizontal"), (3, "vertical")):
    assert not robustness.shift_images(images, shift, axis).any()
  np.testing.assert_array_equal(
      robustness.shift_images(images, 3, "horizontal")[0, :, :, 0],
      [[0, 0, 0, 1]] * 3,
  )


@pytest.mark.parametrize("axis", ["horizontal", "vertical"])
def test_fits_under_shifts_at_the_boundaries(axis):
  # Width 10: with max_shift 3 a pixel must lie in columns 3..6.
  images = _dots(10, [2, 3, 6, 7, 0, 9], axis)
  np.testing.assert_array_equal(
      robustness.fits_under_shifts(images, 3, axis),
      [False, True, True, False, False, False],
  )
  np.testing.assert_array_equal(
      robustness.fits_under_shifts(images, 0, axis), [True] * 6
  )
  # Columns 4 and 5 are each 4 pixels from one border: 5 is one too many.
  middle = _dots(10, [4, 5], axis)
  np.testing.assert_array_equal(
      robustness.fits_under_shifts(middle, 4, axis), [True, True]
  )
  np.testing.assert_array_equal(
      robustness.fits_under_shifts(middle, 5, axis), [False, False]
  )


def test_fits_under_shifts_uses_the_whole_object_and_threshold():
  images = _dots(10, [4], height=3)
  images[0, 0, 1] = 0.2  # A faint pixel near the left border, in row 0.
  assert not robustness.fits_under_shifts(images, 2, "horizontal")[0]
  assert robustness.fits_under_shifts(images, 2, "horizontal", 0.5)[0]
  # Vertically the object spans rows 0..1 of 3 (row 0 only when faint).
  assert robustness.fits_under_shifts(images, 0, "vertical")[0]
  assert not robustness.fits_under_shifts(images, 1, "vertical")[0]
  assert robustness.fits_under_shifts(images, 1, "vertical", 0.5)[0]
  empty = np.zeros((1, 5, 5, 2))
  assert not robustness.fits_under_shifts(empty, 0, "horizontal")[0]


@pytest.mark.parametrize("quarter_turns", [-3, -1, 0, 1, 2, 3, 4, 5])
def test_rotation_by_multiples_of_90_is_exactly_rot90(quarter_turns):
  images = np.random.default_rng(0).random((3, 6, 6, 2)).astype(np.float32)
  np.testing.assert_array_equal(
      robustness.rotate_images(images, 90 * quarter_turns),
      np.rot90(images, quarter_turns, axes=(1, 2)),
  )


def test_rotation_is_counter_clockwise_as_displayed():
  images = np.zeros((1, 5, 5, 1))
  images[0, 0, 4] = 1.0  # Top right.
  assert robustness.rotate_images(images, 90)[0, 0, 0, 0] == 1.0  # Top left.
  assert robustness.rotate_images(images, -90)[0, 4, 4, 0] == 1.0


def test_rotation_by_0_and_360_is_identity_for_any_shape():
  images = np.random.default_rng(1).random((2, 5, 8, 1))
  for degrees in (0, 360, -720):
    np.testing.assert_array_equal(
        robustness.rotate_images(images, degrees), images
    )
  np.testing.assert_array_equal(
      robustness.rotate_images(images, 180), images[:, ::-1, ::-1]
  )


def _blob(size, row, col, sigma=2.0):
  rows, cols = np.mgrid[:size, :size]
  blob = np.exp(-((rows - row) ** 2 + (cols - col) ** 2) / (2 * sigma**2))
  return blob[None, :, :, None]


def test_rotation_moves_an_off_centre_blob_counter_clockwise():
  # Blob 8 pixels right of the centre of a 33 x 33 image; after rotating by
  # 30 degrees its centre of mass must sit 8 pixels out at 30 degrees up.
  centre = 16.0
  blob = _blob(33, centre, centre + 8)
  rotated = robustness.rotate_images(blob, 30)[0, ..., 0]
  rows, cols = np.mgrid[:33, :33]
  mass = rotated.sum()
  expected_col = centre + 8 * math.cos(math.radians(30))
  expected_row = centre - 8 * math.sin(math.radians(30))
  # Bilinear smoothing is symmetric, so the centre of mass is nearly exact.
  assert abs((rotated * cols).sum() / mass - expected_col) < 0.05
  assert abs((rotated * rows).sum() / mass - expected_row) < 0.05


@pytest.mark.parametrize("degrees", [17, 45, -130])
def test_rotation_preserves_the_mass_of_a_centred_blob(degrees):
  blob = _blob(33, 16, 16, sigma=3.0)
  rotated = robustness.rotate_images(blob, degrees)
  assert rotated.dtype == np.float64
  # Interpolation blurs a little but must not create or destroy mass.
  np.testing.assert_allclose(rotated.sum(), blob.sum(), rtol=1e-3)
  # An isotropic blob is (nearly) rotation invariant.
  np.testing.assert_allclose(rotated, blob, atol=0.03)


def test_rotation_fills_with_zeros_and_keeps_float32():
  images = np.ones((1, 9, 9, 1), np.float32)
  rotated = robustness.rotate_images(images, 45)
  assert rotated.dtype == np.float32
  assert rotated[0, 0, 0, 0] == 0.0  # Corners come from outside the frame.
  assert rotated[0, 4, 4, 0] == pytest.approx(1.0)


def test_accuracy_batches_and_pads_to_a_single_shape():
  seen_shapes = set()

  def predict(images):
    seen_shapes.add(images.shape)
    assert images.dtype == np.float32
    return _heavy(images)

  images = _dots(5, [1, 2, 3, 2, 1])
  images[[1, 2]] *= 2.0  # Mass 2: class 1.
  labels = np.array([0, 1, 1, 1, 1])
  assert robustness.accuracy(predict, images, labels, batch_size=2) == 3 / 5
  assert seen_shapes == {(2, 3, 5, 1)}


def test_shift_curve_of_a_position_classifier_drops_in_a_known_way():
  # Width 10, max_shift 2: columns 2..7 fit; 0, 1, 8, 9 must be dropped (their
  # labels are wrong on purpose, so keeping them would change every point).
  columns = [2, 3, 4, 5, 6, 7, 0, 1, 8, 9]
  images = _dots(10, columns)
  labels = np.array([int(c >= 5) for c in columns[:6]] + [1, 1, 0, 0])
  curve = robustness.shift_curve(
      _right_half, images, labels, max_shift=2, axis="horizontal",
      batch_size=4,
  )
  # Shifting by s flips the columns that cross the middle: s = 1 moves
  # column 4 to 5; s = 2 moves 3 and 4; s = -1 moves 5; s = -2 moves 5, 6.
  assert curve == [
      {"axis": "horizontal", "shift": s, "accuracy": a, "num_examples": 6}
      for s, a in zip(range(-2, 3), [4 / 6, 5 / 6, 1.0, 5 / 6, 4 / 6])
  ]


def test_shift_curve_along_the_other_axis_is_flat():
  # Dots in columns 3..6 at rows 2..7 of 10 x 10; vertical shifts move rows
  # only, which the column classifier cannot see.
  images = np.zeros((4, 10, 10, 1), np.float32)
  for i, (row, col) in enumerate([(2, 3), (7, 4), (3, 5), (6, 6)]):
    images[i, row, col] = 1.0
  labels = np.array([0, 0, 1, 0])  # The last label is wrong: 3/4 clean.
  curve = robustness.shift_curve(
      _right_half, images, labels, max_shift=2, axis="vertical"
  )
  assert [p["accuracy"] for p in curve] == [0.75] * 5
  assert {p["num_examples"] for p in curve} == {4}


def test_shift_invariant_classifier_gives_a_flat_curve_at_clean_accuracy():
  images = _dots(9, [3, 4, 5, 4, 3, 5])
  images[:3] *= 2.0
  labels = np.array([1, 1, 0, 0, 0, 1])  # 4 of 6 right.
  clean = robustness.accuracy(_heavy, images, labels)
  assert clean == 4 / 6
  for axis, max_shift in (("horizontal", 3), ("vertical", 1)):
    curve = robustness.shift_curve(
        _heavy, images, labels, max_shift=max_shift, axis=axis, batch_size=5
    )
    assert [p["accuracy"] for p in curve] == [clean] * (2 * max_shift + 1)
    assert [p["shift"] for p in curve] == list(range(-max_shift, max_shift + 1))


def test_shift_curve_without_fitting_images_suggests_a_smaller_max_shift():
  images = _dots(10, [1, 3])
  with pytest.raises(ValueError, match=r"max_shift=4.*largest max_shift .* 3"):
    robustness.shift_curve(
        _right_half, images, np.array([0, 0]), max_shift=4, axis="horizontal"
    )
  with pytest.raises(ValueError, match="max_shift"):
    robustness.shift_curve(
        _heavy, np.zeros((2, 4, 4, 1)), np.array([0, 0]), max_shift=0,
        axis="vertical",
    )


def test_rotation_curve_with_exact_angles():
  images = _dots(9, [6, 7, 2, 6], height=9)  # Right, right, left, right.
  labels = np.array([1, 1, 0, 0])  # Last label wrong.
  curve = robustness.rotation_curve(
      _right_half, images, labels, angles=[0, 90, 180, -180, 360], batch_size=3
  )
  # 90 degrees puts every dot on the vertical midline: centre exactly in the
  # middle, so all are called left; 180 mirrors left and right.
  assert curve == [
      {"angle": float(a), "accuracy": acc, "num_examples": 4}
      for a, acc in zip([0, 90, 180, -180, 360], [0.75, 0.5, 0.25, 0.25, 0.75])
  ]
  heavy = robustness.rotation_curve(
      _heavy, images * 2, np.ones(4, int), angles=[90, 270]
  )
  assert [p["accuracy"] for p in heavy] == [1.0, 1.0]


def _report():
  images = _dots(9, [3, 5, 6, 7], height=9)
  labels = np.array([0, 1, 1, 1])
  return robustness.robustness_report(
      _right_half, images, labels, max_shift=2, angles=(a for a in (0, 180))
  )


def test_robustness_report_collects_both_curves():
  report = _report()
  assert report["accuracy"] == 1.0 and report["num_examples"] == 4
  horizontal = report["shift"]["horizontal"]
  assert [p["num_examples"] for p in horizontal] == [3] * 5  # 7 is too close.
  assert [p["accuracy"] for p in report["shift"]["vertical"]] == [1.0] * 5
  assert [(p["angle"], p["accuracy"]) for p in report["rotation"]] == [
      (0.0, 1.0), (180.0, 0.0)
  ]
  text = robustness.format_report(report)
  assert text.splitlines()[0] == "clean accuracy: 1.0000 (n=4)"
  assert "shift  horizontal (n=3)  vertical (n=4)" in text
  assert "  180          0.0000" in text


def test_write_report_files_round_trips_the_csv(tmp_path):
  report = _report()
  directory = tmp_path / "results"
  paths = robustness.write_report_files(report, str(directory), prefix="run1")
  assert paths == {
      "csv": str(directory / "run1.csv"), "png": str(directory / "run1.png")
  }
  assert sorted(os.listdir(directory)) == ["run1.csv", "run1.png"]
  with open(paths["png"], "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert os.path.getsize(paths["png"]) > 1000
  with open(paths["csv"], newline="") as f:
    rows = list(csv.DictReader(f))
  assert list(rows[0]) == [
      "kind", "axis", "shift_or_angle", "accuracy", "num_examples"
  ]
  assert rows[0] == {
      "kind": "clean", "axis": "", "shift_or_angle": "", "accuracy": "1.0",
      "num_examples": "4",
  }
  for axis in ("horizontal", "vertical"):
    parsed = [
        {"axis": axis, "shift": int(r["shift_or_angle"]),
         "accuracy": float(r["accuracy"]),
         "num_examples": int(r["num_examples"])}
        for r in rows if r["kind"] == "shift" and r["axis"] == axis
    ]
    assert parsed == report["shift"][axis]
  rotation = [
      {"angle": float(r["shift_or_angle"]), "accuracy": float(r["accuracy"]),
       "num_examples": int(r["num_examples"])}
      for r in rows if r["kind"] == "rotation"
  ]
  assert rotation == report["rotation"]
  # Writing again replaces the files in place.
  robustness.write_report_files(report, str(directory), prefix="run1")
  assert sorted(os.listdir(directory)) == ["run1.csv", "run1.png"]


def test_write_report_files_leaves_no_temp_file_on_failure(
    tmp_path, monkeypatch
):
  def failing_plot(report, file):
    file.write(b"partial")
    raise RuntimeError("disk full")

  monkeypatch.setattr(robustness, "_plot_report", failing_plot)
  with pytest.raises(RuntimeError, match="disk full"):
    robustness.write_report_files(_report(), str(tmp_path))
  assert os.listdir(tmp_path) == ["robustness.csv"]


_IMAGES = np.zeros((2, 6, 6, 1), np.float32)
_LABELS = np.array([0, 1])
_VALID_REPORT = {
    "accuracy": 1.0, "num_examples": 1, "rotation": [],
    "shift": {"horizontal": [], "vertical": []},
}


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: robustness.shift_images(np.zeros((6, 6, 1)), 1, "horizontal"),
         "images"),
        (lambda: robustness.shift_images(_IMAGES, 1.5, "horizontal"), "shift"),
        (lambda: robustness.shift_images(_IMAGES, 1, "x"), "axis"),
        (lambda: robustness.fits_under_shifts(_IMAGES, -1, "vertical"),
         "max_shift"),
        (lambda: robustness.fits_under_shifts(_IMAGES, 1, "vertical", None),
         "threshold"),
        (lambda: robustness.rotate_images(_IMAGES, float("nan")), "degrees"),
        (lambda: robustness.rotate_images(_IMAGES.astype(complex), 1),
         "images"),
        (lambda: robustness.accuracy(_heavy, _IMAGES, np.array([0])),
         "labels"),
        (lambda: robustness.accuracy(_heavy, _IMAGES, np.array([0.0, 1.0])),
         "labels"),
        (lambda: robustness.accuracy(_heavy, _IMAGES, _LABELS, batch_size=0),
         "batch_size"),
        (lambda: robustness.accuracy(_heavy, _IMAGES[:0], _LABELS[:0]),
         "images"),
        (lambda: robustness.accuracy(lambda x: x, _IMAGES, _LABELS),
         "predict"),
        (lambda: robustness.shift_curve(
            _heavy, _IMAGES, _LABELS, max_shift=True, axis="vertical"),
         "max_shift"),
        (lambda: robustness.shift_curve(
            _heavy, _IMAGES, _LABELS, max_shift=1, axis="diagonal"), "axis"),
        (lambda: robustness.rotation_curve(
            _heavy, _IMAGES, _LABELS, angles=[]), "angles"),
        (lambda: robustness.rotation_curve(
            _heavy, _IMAGES, _LABELS, angles=90), "angles"),
        (lambda: robustness.robustness_report(
            _heavy, _IMAGES, _LABELS[:1], max_shift=0, angles=[0]), "labels"),
        (lambda: robustness.format_report({"accuracy": 1.0}), "report"),
        (lambda: robustness.write_report_files(_VALID_REPORT, "/tmp", ""),
         "prefix"),
        (lambda: robustness.write_report_files(
            _VALID_REPORT, "/tmp", "a/b"), "prefix"),
        (lambda: robustness.write_report_files(_VALID_REPORT, None),
         "directory"),
    ],
)
def test_bad_arguments_name_the_argument(call, name):
  with pytest.raises(ValueError, match=f"`{name}`"):
    call()
