"""Shift and rotation robustness of image classifiers.

Everything here is plain numpy on `[N, H, W, C]` images whose background is 0,
so it evaluates any `predict` callable: a jitted Flax apply, a numpy model or
a test stub. The shift protocol follows Horn et al.: keep only the images
whose object stays inside the frame for every shift, translate with zero fill
and report the accuracy per shift, so a drop in accuracy comes from the model
and never from cropping the object.

References:
  Horn, Shridhar, Groenewald and Baumann, "Translational equivariance in
  kernelizable attention", arXiv:2102.07680, 2021.
"""

from __future__ import annotations

import csv
import math
import numbers
import os
import tempfile
from typing import Any, Callable, Iterable

import numpy as np
import numpy.typing as npt

from kattn import data

Predict = Callable[[np.ndarray], Any]

# Array axis of `[N, H, W, C]` along which each named shift moves pixels.
_SHIFT_AXES = {"vertical": 1, "horizontal": 2}


def _check_images(images: npt.ArrayLike, name: str = "images") -> np.ndarray:
  images = np.asarray(images)
  if images.ndim != 4:
    raise ValueError(
        f"`{name}` must have rank 4 with layout [N, H, W, C]; got shape"
        f" {images.shape}."
    )
  if not (
      np.issubdtype(images.dtype, np.floating)
      or np.issubdtype(images.dtype, np.integer)
  ):
    raise ValueError(
        f"`{name}` must hold real numbers; got dtype {images.dtype}."
    )
  return images


def _check_labels(labels: npt.ArrayLike, images: np.ndarray) -> np.ndarray:
  labels = np.asarray(labels)
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(
        "`labels` must be a 1-D array of integer class ids; got shape"
        f" {labels.shape} and dtype {labels.dtype}."
    )
  if len(labels) != len(images):
    raise ValueError(
        f"`labels` must have one entry per image ({len(images)}); got"
        f" {len(labels)}."
    )
  return labels


def _check_axis(axis: str) -> str:
  if axis not in _SHIFT_AXES:
    raise ValueError(
        f"`axis` must be one of {sorted(_SHIFT_AXES)}; got {axis!r}."
    )
  return axis


def _check_int(name: str, value: Any, *, minimum: int | None = None) -> int:
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise ValueError(f"`{name}` must be an integer; got {value!r}.")
  if minimum is not None and value < minimum:
    raise ValueError(f"`{name}` must be >= {minimum}; got {value!r}.")
  return int(value)


def _check_real(name: str, value: Any) -> float:
  if (
      isinstance(value, bool)
      or not isinstance(value, numbers.Real)
      or not math.isfinite(value)
  ):
    raise ValueError(f"`{name}` must be a finite real number; got {value!r}.")
  return float(value)


def _check_angles(angles: Iterable[float]) -> list[float]:
  try:
    angles = list(angles)
  except TypeError:
    raise ValueError(
        f"`angles` must be a sequence of degrees; got {angles!r}."
    ) from None
  if not angles:
    raise ValueError("`angles` must hold at least one angle; got none.")
  return [_check_real("angles", a) for a in angles]


def shift_images(
    images: npt.ArrayLike, shift: int, axis: str
) -> np.ndarray:
  """Translates images by a whole number of pixels, filling with zeros.

  Pixels moved past the border are dropped, not wrapped around.

  Args:
    images: `[N, H, W, C]` images.
    shift: pixels to move by; positive moves right (`"horizontal"`) or down
      (`"vertical"`). `|shift|` >= the image size gives all zeros.
    axis: `"horizontal"` (columns) or `"vertical"` (rows).

  Returns:
    `[N, H, W, C]` shifted images, same dtype as `images`.

  Examples:
    >>> import numpy as np
    >>> x = np.arange(1.0, 5.0).reshape(1, 1, 4, 1)
    >>> shift_images(x, 1, "horizontal")[0, 0, :, 0]
    array([0., 1., 2., 3.])
    >>> shift_images(x, -3, "horizontal")[0, 0, :, 0]
    array([4., 0., 0., 0.])
  """
  images = _check_images(images)
  shift = _check_int("shift", shift)
  array_axis = _SHIFT_AXES[_check_axis(axis)]
  size = images.shape[array_axis]
  shifted = np.zeros_like(images)
  if abs(shift) >= size:
    return shifted
  dst = [slice(None)] * 4
  src = [slice(None)] * 4
  dst[array_axis] = slice(max(shift, 0), size + min(shift, 0))
  src[array_axis] = slice(max(-shift, 0), size - max(shift, 0))
  shifted[tuple(dst)] = images[tuple(src)]
  return shifted


def _border_margins(
    images: np.ndarray, axis: str, threshold: float
) -> np.ndarray:
  """`[N]` pixels between each object and its nearer border; -1 if empty."""
  array_axis = _SHIFT_AXES[axis]
  other_axes = tuple(a for a in (1, 2, 3) if a != array_axis)
  occupied = (images > threshold).any(axis=other_axes)
  size = occupied.shape[1]
  first = occupied.argmax(axis=1)
  last = size - 1 - occupied[:, ::-1].argmax(axis=1)
  return np.where(
      occupied.any(axis=1), np.minimum(first, size - 1 - last), -1
  )


def fits_under_shifts(
    images: npt.ArrayLike,
    max_shift: int,
    axis: str,
    threshold: float = 0.0,
) -> np.ndarray:
  """Which images keep their whole object in frame under every shift.

  An image fits when every pixel above `threshold` lies at least `max_shift`
  pixels from both borders along `axis`, so that `shift_images` by any shift
  in `[-max_shift, max_shift]` cuts nothing off. Images with no pixel above
  `threshold` never fit.

  Args:
    images: `[N, H, W, C]` images with background <= `threshold`.
    max_shift: largest absolute shift, >= 0.
    axis: `"horizontal"` (columns) or `"vertical"` (rows).
    threshold: intensity above which a pixel belongs to the object.

  Returns:
    `[N]` bool mask.

  Examples:
    >>> import numpy as np
    >>> x = np.zeros((3, 1, 6, 1))
    >>> x[0, 0, 2] = x[1, 0, 1] = 1.0  # Objects in columns 2 and 1.
    >>> fits_under_shifts(x, 2, "horizontal")
    array([ True, False, False])
  """
  images = _check_images(images)
  max_shift = _check_int("max_shift", max_shift, minimum=0)
  axis = _check_axis(axis)
  threshold = _check_real("threshold", threshold)
  return _border_margins(images, axis, threshold) >= max_shift


def rotate_images(images: npt.ArrayLike, degrees: float) -> np.ndarray:
  """Rotates images about their centre, bilinear interpolation, zero fill.

  Positive `degrees` rotate counter-clockwise as displayed (row 0 at the
  top), matching `np.rot90(images, k, axes=(1, 2))`. Multiples of 90 degrees
  are exact: on square images (and for 180 degrees on any image) they are
  pure pixel permutations by `np.rot90`, with no interpolation error.

  Args:
    images: `[N, H, W, C]` images.
    degrees: rotation angle in degrees.

  Returns:
    `[N, H, W, C]` rotated images; float32 unless `images` is float64.

  Examples:
    >>> import numpy as np
    >>> x = np.array([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 2, 2, 1)
    >>> rotate_images(x, 90)[0, :, :, 0]
    array([[2., 4.],
           [1., 3.]])
    >>> rotate_images(x, 30).shape
    (1, 2, 2, 1)
  """
  images = _check_images(images)
  degrees = _check_real("degrees", degrees)
  dtype = np.result_type(images.dtype, np.float32)
  height, width = images.shape[1:3]
  quarter_turns, remainder = divmod(degrees, 90.0)
  if remainder == 0 and (quarter_turns % 2 == 0 or height == width):
    return np.rot90(images, int(quarter_turns) % 4, axes=(1, 2)).astype(dtype)
  return data.rotate(images.astype(dtype), degrees)


def _predicted_classes(
    predict: Predict, images: np.ndarray, batch_size: int
) -> np.ndarray:
  """Argmax of `predict` over `images`, in batches of one fixed shape."""
  num_examples = len(images)
  # The last batch is padded with copies of the last image, so a jitted
  # `predict` sees a single shape and compiles once.
  batch = min(batch_size, num_examples)
  classes = []
  for start in range(0, num_examples, batch):
    chunk = images[start:start + batch].astype(np.float32)
    valid = len(chunk)
    if valid < batch:
      chunk = np.concatenate(
          [chunk, np.repeat(chunk[-1:], batch - valid, axis=0)]
      )
    logits = np.asarray(predict(chunk))
    if logits.ndim != 2 or logits.shape[0] != batch:
      raise ValueError(
          f"`predict` must map [{batch}, H, W, C] images to [{batch},"
          f" num_classes] logits; got shape {logits.shape}."
      )
    classes.append(logits[:valid].argmax(axis=-1))
  return np.concatenate(classes)


def _accuracy(predict, images, labels, batch_size) -> float:
  predicted = _predicted_classes(predict, images, batch_size)
  return int((predicted == labels).sum()) / len(labels)


def accuracy(
    predict: Predict,
    images: npt.ArrayLike,
    labels: npt.ArrayLike,
    batch_size: int = 256,
) -> float:
  """Fraction of images whose argmax logit is their label.

  Args:
    predict: maps `[n, H, W, C]` float32 images to `[n, num_classes]` logits.
    images: `[N, H, W, C]` images, N >= 1.
    labels: `[N]` integer class ids.
    batch_size: images per `predict` call.

  Returns:
    Accuracy in [0, 1].

  Examples:
    >>> import numpy as np
    >>> x = np.zeros((4, 2, 2, 1))
    >>> predict = lambda b: np.tile([0.0, 1.0], (len(b), 1))  # Always class 1.
    >>> accuracy(predict, x, np.array([1, 1, 0, 1]), batch_size=3)
    0.75
  """
  images = _check_images(images)
  labels = _check_labels(labels, images)
  batch_size = _check_int("batch_size", batch_size, minimum=1)
  if len(images) == 0:
    raise ValueError("`images` must hold at least one image; got none.")
  return _accuracy(predict, images, labels, batch_size)


def shift_curve(
    predict: Predict,
    images: npt.ArrayLike,
    labels: npt.ArrayLike,
    *,
    max_shift: int,
    axis: str,
    batch_size: int = 256,
) -> list[dict]:
  """Accuracy per shift under Horn et al.'s shift-robustness protocol.

  Only the images for which `fits_under_shifts(images, max_shift, axis)`
  holds are evaluated, at every shift in `-max_shift..max_shift`, so no shift
  crops an object and every point of the curve uses the same images.

  Args:
    predict: maps `[n, H, W, C]` float32 images to `[n, num_classes]` logits.
    images: `[N, H, W, C]` images with background 0.
    labels: `[N]` integer class ids.
    max_shift: largest absolute shift, >= 0.
    axis: `"horizontal"` (columns) or `"vertical"` (rows).
    batch_size: images per `predict` call.

  Returns:
    One dict per shift, in increasing order: `{"axis", "shift", "accuracy",
    "num_examples"}`.

  Raises:
    ValueError: if no image fits `max_shift`; the message gives the largest
      `max_shift` that keeps at least one image.

  Examples:
    >>> import numpy as np
    >>> x = np.zeros((1, 1, 5, 1))
    >>> x[0, 0, 2] = 1.0
    >>> centre_column = lambda b: np.eye(5)[b[:, 0, :, 0].argmax(-1)]
    >>> curve = shift_curve(centre_column, x, np.array([2]), max_shift=1,
    ...                     axis="horizontal")
    >>> [(p["shift"], p["accuracy"]) for p in curve]
    [(-1, 0.0), (0, 1.0), (1, 0.0)]
  """
  images = _check_images(images)
  labels = _check_labels(labels, images)
  max_shift = _check_int("max_shift", max_shift, minimum=0)
  axis = _check_axis(axis)
  batch_size = _check_int("batch_size", batch_size, minimum=1)
  margins = _border_margins(images, axis, 0.0)
  keep = margins >= max_shift
  if not keep.any():
    if margins.size and margins.max() >= 0:
      hint = (
          f"the largest max_shift that keeps any image is {margins.max()}"
      )
    else:
      hint = "no image has a pixel above the background 0"
    raise ValueError(
        f"No image in `images` ({len(images)}) stays inside the frame for"
        f" every {axis} shift up to max_shift={max_shift}; use a smaller"
        f" `max_shift` ({hint})."
    )
  images, labels = images[keep], labels[keep]
  return [
      {
          "axis": axis,
          "shift": shift,
          "accuracy": _accuracy(
              predict, shift_images(images, shift, axis), labels, batch_size
          ),
          "num_examples": len(labels),
      }
      for shift in range(-max_shift, max_shift + 1)
  ]


def rotation_curve(
    predict: Predict,
    images: npt.ArrayLike,
    labels: npt.ArrayLike,
    *,
    angles: Iterable[float],
    batch_size: int = 256,
) -> list[dict]:
  """Accuracy of `predict` on all images rotated by each angle.

  Args:
    predict: maps `[n, H, W, C]` float32 images to `[n, num_classes]` logits.
    images: `[N, H, W, C]` images with background 0, N >= 1.
    labels: `[N]` integer class ids.
    angles: rotations in degrees, counter-clockwise (see `rotate_images`).
    batch_size: images per `predict` call.

  Returns:
    One dict per angle, in the given order: `{"angle", "accuracy",
    "num_examples"}`.

  Examples:
    >>> import numpy as np
    >>> x = np.zeros((1, 3, 3, 1))
    >>> x[0, 1, 2] = 1.0  # Right of centre.
    >>> right_half = lambda b: np.eye(2)[(b[:, :, 2].sum((1, 2)) > 0) * 1]
    >>> curve = rotation_curve(right_half, x, np.array([1]), angles=[0, 90])
    >>> [(p["angle"], p["accuracy"]) for p in curve]
    [(0.0, 1.0), (90.0, 0.0)]
  """
  images = _check_images(images)
  labels = _check_labels(labels, images)
  angles = _check_angles(angles)
  batch_size = _check_int("batch_size", batch_size, minimum=1)
  if len(images) == 0:
    raise ValueError("`images` must hold at least one image; got none.")
  return [
      {
          "angle": angle,
          "accuracy": _accuracy(
              predict, rotate_images(images, angle), labels, batch_size
          ),
          "num_examples": len(labels),
      }
      for angle in angles
  ]


def robustness_report(
    predict: Predict,
    images: npt.ArrayLike,
    labels: npt.ArrayLike,
    *,
    max_shift: int,
    angles: Iterable[float],
    batch_size: int = 256,
    shift_axes: Iterable[str] = ("horizontal", "vertical"),
) -> dict:
  """Clean accuracy, shift curves along both axes and the rotation curve.

  Args:
    predict: maps `[n, H, W, C]` float32 images to `[n, num_classes]` logits.
    images: `[N, H, W, C]` images with background 0, N >= 1.
    labels: `[N]` integer class ids.
    max_shift: largest absolute shift for both shift curves, >= 0.
    angles: rotations in degrees for the rotation curve.
    batch_size: images per `predict` call.
    shift_axes: the axes to measure shift curves along; an axis left out
      gets an empty curve (e.g. Horn et al. shift horizontally only, where
      narrow objects leave wide margins).

  Returns:
    `{"accuracy", "num_examples", "shift": {"horizontal": [...],
    "vertical": [...]}, "rotation": [...]}` with the curves of `shift_curve`
    and `rotation_curve`. Each shift curve counts only its fitting images.

  Examples:
    >>> import numpy as np
    >>> x = np.zeros((2, 5, 5, 1))
    >>> x[:, 2, 2] = 1.0
    >>> always_0 = lambda b: np.tile([1.0, 0.0], (len(b), 1))
    >>> report = robustness_report(always_0, x, np.array([0, 1]), max_shift=2,
    ...                            angles=[0, 45])
    >>> report["accuracy"], len(report["shift"]["vertical"])
    (0.5, 5)
  """
  images = _check_images(images)
  labels = _check_labels(labels, images)
  angles = _check_angles(angles)
  shift_axes = [_check_axis(axis) for axis in shift_axes]
  return {
      "accuracy": accuracy(predict, images, labels, batch_size),
      "num_examples": len(labels),
      "shift": {
          axis: shift_curve(
              predict, images, labels, max_shift=max_shift, axis=axis,
              batch_size=batch_size,
          ) if axis in shift_axes else []
          for axis in ("horizontal", "vertical")
      },
      "rotation": rotation_curve(
          predict, images, labels, angles=angles, batch_size=batch_size
      ),
  }


def _check_report(report: Any) -> None:
  try:
    report["accuracy"], report["num_examples"], report["rotation"]
    report["shift"]["horizontal"], report["shift"]["vertical"]
  except (KeyError, TypeError, IndexError):
    raise ValueError(
        "`report` must be a dict from `robustness_report`, with keys"
        ' "accuracy", "num_examples", "shift" (with "horizontal" and'
        f' "vertical") and "rotation"; got {type(report).__name__}'
        f" {report!r:.200}."
    ) from None


def _report_rows(report: dict) -> list[list]:
  rows = [["clean", "", "", report["accuracy"], report["num_examples"]]]
  for axis in ("horizontal", "vertical"):
    rows += [
        ["shift", axis, p["shift"], p["accuracy"], p["num_examples"]]
        for p in report["shift"][axis]
    ]
  rows += [
      ["rotation", "", p["angle"], p["accuracy"], p["num_examples"]]
      for p in report["rotation"]
  ]
  return rows


def _curve_size(curve: list[dict]) -> int:
  """Images behind a curve; every point of a curve uses the same ones."""
  return curve[0]["num_examples"] if curve else 0


def _plot_report(report: dict, file) -> None:
  # The object-oriented API with an explicit Agg canvas leaves pyplot's global
  # backend and figure list untouched, so this is safe in notebooks and threads.
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  figure = Figure(figsize=(10, 4), layout="constrained")
  FigureCanvasAgg(figure)
  shift_axes, rotation_axes = figure.subplots(1, 2)
  for axis, marker in (("horizontal", "o"), ("vertical", "s")):
    curve = report["shift"][axis]
    shift_axes.plot(
        [p["shift"] for p in curve], [p["accuracy"] for p in curve],
        marker=marker,
        label=f"{axis} (n={_curve_size(curve)})",
    )
  for plot_axes in (shift_axes, rotation_axes):
    plot_axes.axhline(
        report["accuracy"], color="gray", linestyle="--",
        label=f"clean (n={report['num_examples']})",
    )
    plot_axes.set_ylim(-0.02, 1.02)
    plot_axes.set_ylabel("accuracy")
    plot_axes.grid(alpha=0.3)
  shift_axes.set_xlabel("shift (pixels)")
  shift_axes.set_title("Shift robustness")
  shift_axes.legend()
  rotation = report["rotation"]
  rotation_axes.plot(
      [p["angle"] for p in rotation], [p["accuracy"] for p in rotation],
      marker="o", label="rotated",
  )
  rotation_axes.set_xlabel("angle (degrees, counter-clockwise)")
  rotation_axes.set_title("Rotation robustness")
  rotation_axes.legend()
  figure.savefig(file, format="png", dpi=100)


def _write_atomically(
    path: str, write: Callable[[Any], None], *, binary: bool
) -> None:
  """Writes through a temporary file in the same folder, then renames it."""
  directory, name = os.path.split(path)
  handle, temp_path = tempfile.mkstemp(
      dir=directory, prefix=f".{name}.", suffix=".tmp"
  )
  try:
    # mkstemp makes owner-only files; results are meant to be shared.
    os.chmod(temp_path, 0o644)
    with os.fdopen(
        handle, "wb" if binary else "w", newline=None if binary else ""
    ) as f:
      write(f)
    os.replace(temp_path, path)
  except BaseException:
    os.unlink(temp_path)
    raise


def write_report_files(
    report: dict, directory: str, prefix: str = "robustness"
) -> dict[str, str]:
  """Writes a report as `<prefix>.csv` and a two-panel `<prefix>.png`.

  The CSV has the columns `kind, axis, shift_or_angle, accuracy,
  num_examples`: one `clean` row (axis and shift_or_angle empty), one `shift`
  row per axis and shift, one `rotation` row per angle (axis empty). The PNG
  plots accuracy against shift for both axes and accuracy against angle,
  with the clean accuracy dashed. Each file appears atomically, so a reader
  never sees a partial file. `directory` is created if missing.

  Args:
    report: a dict from `robustness_report`.
    directory: folder to write into.
    prefix: file name stem, without a folder.

  Returns:
    `{"csv": path, "png": path}`.

  Examples:
    >>> import tempfile
    >>> report = {"accuracy": 1.0, "num_examples": 4, "rotation": [],
    ...           "shift": {"horizontal": [], "vertical": []}}
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...   paths = write_report_files(report, tmp)
    ...   print(open(paths["csv"]).read().splitlines())
    ['kind,axis,shift_or_angle,accuracy,num_examples', 'clean,,,1.0,4']
  """
  _check_report(report)
  if not isinstance(directory, (str, os.PathLike)):
    raise ValueError(f"`directory` must be a path; got {directory!r}.")
  if (
      not isinstance(prefix, str)
      or not prefix
      or os.sep in prefix
      or (os.altsep and os.altsep in prefix)
  ):
    raise ValueError(
        f"`prefix` must be a non-empty file name without a folder; got"
        f" {prefix!r}."
    )
  directory = os.fspath(directory)
  os.makedirs(directory, exist_ok=True)
  paths = {
      "csv": os.path.join(directory, f"{prefix}.csv"),
      "png": os.path.join(directory, f"{prefix}.png"),
  }

  def write_csv(f):
    writer = csv.writer(f, lineterminator="\n")
    writer.writerow(
        ["kind", "axis", "shift_or_angle", "accuracy", "num_examples"]
    )
    writer.writerows(_report_rows(report))

  _write_atomically(paths["csv"], write_csv, binary=False)
  _write_atomically(
      paths["png"], lambda f: _plot_report(report, f), binary=True
  )
  return paths


def format_report(report: dict) -> str:
  """Formats a report as printable tables: clean, per shift, per angle.

  Args:
    report: a dict from `robustness_report`.

  Returns:
    Multi-line text, accuracies with 4 decimals.

  Examples:
    >>> report = {"accuracy": 0.5, "num_examples": 4,
    ...           "rotation": [{"angle": 90.0, "accuracy": 0.25,
    ...                         "num_examples": 4}],
    ...           "shift": {"vertical": [],
    ...                     "horizontal": [{"axis": "horizontal", "shift": 0,
    ...                                     "accuracy": 0.5,
    ...                                     "num_examples": 3}]}}
    >>> print(format_report(report))
    clean accuracy: 0.5000 (n=4)
    <BLANKLINE>
    shift  horizontal (n=3)  vertical (n=0)
        0            0.5000               -
    <BLANKLINE>
    angle  accuracy (n=4)
       90          0.2500
  """
  _check_report(report)
  lines = [
      f"clean accuracy: {report['accuracy']:.4f} (n={report['num_examples']})",
      "",
  ]
  by_axis = {
      axis: {p["shift"]: p for p in report["shift"][axis]}
      for axis in ("horizontal", "vertical")
  }
  headers = ["shift"] + [
      f"{axis} (n={_curve_size(report['shift'][axis])})" for axis in by_axis
  ]
  shift_rows = [
      [str(shift)] + [
          f"{points[shift]['accuracy']:.4f}" if shift in points else "-"
          for points in by_axis.values()
      ]
      for shift in sorted(set().union(*by_axis.values()))
  ]
  lines += _table(headers, shift_rows)
  lines.append("")
  rotation = report["rotation"]
  lines += _table(
      ["angle", f"accuracy (n={_curve_size(rotation)})"],
      [[f"{p['angle']:g}", f"{p['accuracy']:.4f}"] for p in rotation],
  )
  return "\n".join(lines)


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
  """Right-aligned columns separated by two spaces."""
  widths = [max(len(c) for c in column) for column in zip(headers, *rows)]
  return [
      "  ".join(cell.rjust(width) for cell, width in zip(row, widths))
      for row in [headers, *rows]
  ]
