"""Grid helpers and the absolute sinusoid embedding."""

import hypothesis
import hypothesis.strategies as st
import jax.numpy as jnp
import numpy as np
import pytest

from kattn.positional import absolute
from kattn.positional import grid as grid_lib


@hypothesis.settings(max_examples=100, deadline=None, derandomize=True)
@hypothesis.given(
    grid=st.sampled_from([(1, 1), (2, 3), (4, 4), (5, 2)]),
    shift=st.tuples(st.integers(-12, 12), st.integers(-12, 12)),
)
def test_roll_tokens_is_roll_of_the_image(grid, shift):
  height, width = grid
  image = np.arange(2 * height * width * 3.0).reshape(2, height, width, 3)
  rolled = grid_lib.roll_tokens(
      jnp.asarray(image.reshape(2, height * width, 3)), shift, grid=grid, axis=1
  )
  expected = np.roll(image, shift, axis=(1, 2)).reshape(2, height * width, 3)
  np.testing.assert_array_equal(rolled, expected)


def test_grid_positions_are_row_major():
  positions = np.asarray(grid_lib.grid_positions((3, 4)))
  for i, (row, col) in enumerate(positions):
    assert (row, col) == divmod(i, 4)


@pytest.mark.parametrize(
    "grid, length, match",
    [((3,), None, "two positive ints"), ((0, 3), None, "two positive ints"),
     ((True, 3), None, "two positive ints"), ((3, 4), 11, "holds 12 tokens")],
)
def test_bad_grids_raise(grid, length, match):
  with pytest.raises(ValueError, match=match):
    grid_lib.check_grid(grid, length)


def test_sinusoid_embedding_closed_form():
  grid, width, period = (3, 5), 16, 100.0
  emb = np.asarray(
      absolute.sinusoid_position_embedding(grid, width, max_period=period)
  )
  frequencies = period ** (-np.arange(4) / 4)
  for i in range(15):
    row, col = divmod(i, 5)
    for half, coordinate in ((0, row), (1, col)):
      code = emb[i, half * 8:(half + 1) * 8].reshape(4, 2)
      np.testing.assert_allclose(code[:, 0], np.sin(coordinate * frequencies),
                                 atol=1e-6)
      np.testing.assert_allclose(code[:, 1], np.cos(coordinate * frequencies),
                                 atol=1e-6)
  # Distinct positions get distinct codes: the model can tell where it is.
  assert len({tuple(np.round(e, 5)) for e in emb}) == 15


@pytest.mark.parametrize(
    "width, period, match",
    [(6, 10.0, "multiple of 4"), (0, 10.0, "positive"), (8, 1.0, "max_period")],
)
def test_sinusoid_embedding_errors(width, period, match):
  with pytest.raises(ValueError, match=match):
    absolute.sinusoid_position_embedding((2, 2), width, max_period=period)
