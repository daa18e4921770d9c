"""Finite rotation/flip groups, their actions, and `assert_group_equivariant`."""

import hypothesis
import hypothesis.strategies as st
import jax.numpy as jnp
import numpy as np
import pytest

from kattn import groups
from kattn import testing


@pytest.mark.parametrize("name", groups.GROUP_NAMES)
def test_tables_form_a_group_of_the_matrices(name):
  group = groups.get_group(name)
  m = group.matrices
  for g in range(group.order):
    np.testing.assert_allclose(m[g] @ m[g].T, np.eye(2), atol=1e-12)
    for h in range(group.order):
      np.testing.assert_allclose(m[g] @ m[h], m[group.product[g, h]],
                                 atol=1e-12)
  assert np.all(group.product[np.arange(group.order), group.inverse] == 0)
  # Distinct elements are distinct matrices.
  flat = np.round(m.reshape(group.order, 4), 9)
  assert len({tuple(r) for r in flat}) == group.order


@pytest.mark.parametrize("name", groups.GROUP_NAMES)
def test_quarter_turns_are_integer_matrices(name):
  group = groups.get_group(name)
  for e in range(group.order):
    exact = group.is_exact_on_pixels(e)
    assert exact == np.array_equal(group.matrices[e],
                                   np.rint(group.matrices[e]))
  assert group.exact_on_pixels == (name in ("z2", "mz2", "p4", "p4m"))


@hypothesis.settings(max_examples=100, deadline=None, derandomize=True)
@hypothesis.given(
    name=st.sampled_from(["p4", "p4m", "mz2", "p8"]),
    size=st.sampled_from([1, 2, 3, 6]),
    data=st.data(),
)
def test_image_action_is_rot90_after_flip_and_composes(name, size, data):
  group = groups.get_group(name)
  exact = [e for e in range(group.order) if group.is_exact_on_pixels(e)]
  a, b = data.draw(st.sampled_from(exact)), data.draw(st.sampled_from(exact))
  x = np.random.default_rng(size).random((2, size, size, 3), np.float32)
  k, s = group.decompose(a)
  quarter_turns = 4 * k // group.rotations
  expected = np.rot90(np.flip(x, 2) if s else x, quarter_turns, axes=(1, 2))
  np.testing.assert_array_equal(groups.transform_images(x, group, a), expected)
  # A representation: (a . (b . x)) == (ab) . x, for images and group maps.
  ab = int(group.product[a, b])
  np.testing.assert_array_equal(
      groups.transform_images(groups.transform_images(x, group, b), group, a),
      groups.transform_images(x, group, ab),
  )
  f = jnp.asarray(
      np.random.default_rng(1).random((group.order, size * size, 1, 2))
  )
  act = lambda e, t: groups.transform_group_features(t, group, e,
                                                     grid=(size, size))
  np.testing.assert_array_equal(act(a, act(b, f)), act(ab, f))


def test_acted_offsets_use_the_inverse():
  group = groups.get_group("p4m")
  offsets = np.random.default_rng(0).normal(size=(5, 2))
  acted = groups.acted_offsets(group, offsets)
  for g in range(group.order):
    np.testing.assert_allclose(
        acted[g], offsets @ np.linalg.inv(group.matrices[g]).T, atol=1e-12
    )


def test_assert_group_equivariant_passes_and_fails():
  x = jnp.asarray(np.random.default_rng(0).random((2, 5, 5, 1), np.float32))
  testing.assert_group_equivariant(
      lambda t: t * 3.0, x, "p4m", output_kind="image"
  )
  testing.assert_group_equivariant(
      lambda t: jnp.max(t, axis=(1, 2)), x, "p4m", output_kind="invariant"
  )
  # Lifting by reading each pixel's neighbour at g e: F(g, p) = x(p + g e) is
  # equivariant; reading it at g^-1 e is not.
  p4 = groups.get_group("p4")
  def lift(t, inverse):
    steps = [p4.inverse[g] if inverse else g for g in range(4)]
    offsets = [np.rint(p4.matrices[g] @ [0, 1]).astype(int) for g in steps]
    return jnp.stack(
        [jnp.roll(t, tuple(-o), axis=(1, 2)) for o in offsets], axis=-4
    )
  testing.assert_group_equivariant(lambda t: lift(t, False), x, p4)
  with pytest.raises(AssertionError, match="element 1 of p4"):
    testing.assert_group_equivariant(lambda t: lift(t, True), x, p4)
  with pytest.raises(AssertionError, match="mirrored"):
    testing.assert_group_equivariant(
        lambda t: jnp.roll(t, 1, axis=-2), x, "p4m", output_kind="image",
        elements=[4],
    )


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: groups.get_group("so2"), "`group` must be one of"),
        (lambda: groups.get_group("p4").check_element(4), r"\[0, 4\)"),
        (lambda: groups.pixel_permutation("p8", 1, (3, 3)), "45 degrees"),
        (lambda: groups.pixel_permutation("p4", 1, (3, 4)), "must be square"),
        (lambda: groups.transform_images(np.zeros((3, 3)), "p4", 1),
         "H, W, C"),
        (lambda: groups.acted_offsets("p4", np.zeros((3, 3))), r"\[\.\.\., 2\]"),
        (lambda: groups.transform_group_features(
            jnp.zeros((3, 4, 1, 1)), "p4", 1, grid=(2, 2)), "4 elements"),
        (lambda: testing.assert_group_equivariant(
            lambda t: t, jnp.zeros((1, 2, 2, 1)), "p4", output_kind="vector"),
         "output_kind"),
    ],
)
def test_bad_input_raises(call, match):
  with pytest.raises(ValueError, match=match):
    call()
