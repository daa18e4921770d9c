"""TensorBoard scalars without TensorFlow.

`clu.metric_writers` cannot be imported without TensorFlow (its package
imports the TF summary writer), so kattn writes the same event files through
tensorboardX and keeps TensorFlow optional.
"""

from __future__ import annotations

from typing import Mapping

import tensorboardX


class TensorboardWriter:
  """Writes scalar metrics as TensorBoard events under `logdir`.

  Examples:
    >>> import tempfile
    >>> writer = TensorboardWriter(tempfile.mkdtemp())
    >>> writer.write_scalars(1, {"train/loss": 0.5})
    >>> writer.close()
  """

  def __init__(self, logdir: str):
    self._writer = tensorboardX.SummaryWriter(logdir)

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    for name, value in scalars.items():
      self._writer.add_scalar(name, float(value), global_step=step)

  def flush(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()
