"""A causal output depends on nothing after it: not by rounding, not by NaN.

For every causal attention (the quadratic references and the linear engine
with every feature map: generalised, FAVOR+, learned kernels and a user's
own), later keys, alone or with their values, are replaced by huge,
infinite or NaN entries; every earlier output must stay bit for bit the same.
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kattn
from kattn.features import learned

LENGTH, HEADS, DIM, BATCH = 20, 2, 8, 2
# Keys (and values) replaced from these positions on: a chunk start for
# chunks of 2, inside a chunk for every other size tested.
CUTS = (4, 9, 15)
REPLACEMENTS = (1e8, 1e30, np.inf, -np.inf, np.nan)
# Every (cut, replacement, whether values are replaced too); variant 0 is
# the untouched input.
VARIANTS = [None] + list(itertools.product(CUTS, REPLACEMENTS, (False, True)))


def _user_features(x):
  """A user's own map: squared inputs plus a floor, plain array form."""
  return jnp.square(x) + 1e-3


def _linear_attention_of(feature_map):
  def attend(q, k, v, **kwargs):
    return kattn.linear_attention(feature_map(q), feature_map(k), v, **kwargs)
  return attend


def _learned(name):
  # 16 features suit every variant at dim 8 (FastFood: a multiple of 8).
  params, noise = kattn.init_learned_kernel(
      name, jax.random.key(3), num_heads=HEADS, dim=DIM, num_features=16
  )
  return functools.partial(
      kattn.learned_kernel_attention, kernel=name, params=params, noise=noise
  )


FEATURE_MAPS = {
    "relu": kattn.relu_features,
    "elu": kattn.elu_plus_one_features,
    "exp": kattn.exp_features,
    "user": _user_features,
}
CHUNKED_NAMES = (
    [f"feature_map[{name}]" for name in FEATURE_MAPS]
    + ["linear_attention[relu]"]
    + [f"favor[{kernel}]" for kernel in kattn.attention.SOFTMAX_KERNELS]
    + [f"learned[{name}]" for name in learned.LEARNED_KERNELS]
)
# (chunk_size, chunks_per_step): chunks of 1, 2, 7 and 64 tokens; one and
# several chunks per scan step; lengths that are multiples and that are not.
LAYOUTS = ((1, 4), (2, 1), (7, 3), (64, 4))


@functools.lru_cache(maxsize=None)
def _chunked_attentions():
  projection = kattn.orthogonal_random_projection(jax.random.key(7), 16, DIM)
  attentions = {
      f"feature_map[{name}]": functools.partial(
          kattn.feature_map_attention, feature_map=fn
      )
      for name, fn in FEATURE_MAPS.items()
  }
  attentions["linear_attention[relu]"] = _linear_attention_of(
      kattn.relu_features
  )
  for kernel in kattn.attention.SOFTMAX_KERNELS:
    attentions[f"favor[{kernel}]"] = functools.partial(
        kattn.favor_attention, projection=projection, kernel=kernel
    )
  for name in learned.LEARNED_KERNELS:
    attentions[f"learned[{name}]"] = _learned(name)
  assert sorted(attentions) == sorted(CHUNKED_NAMES)
  return attentions


def _quadratic(q, k, v, causal):
  return kattn.quadratic_kernel_attention(
      kattn.relu_features(q), kattn.relu_features(k), v, causal=causal
  )


def _variant_inputs():
  """q, k, v of every variant stacked on the batch axis: [n * B, L, h, d]."""
  q, k, v = (
      0.5 * jax.random.normal(key, (BATCH, LENGTH, HEADS, DIM))
      for key in jax.random.split(jax.random.key(0), 3)
  )
  ks, vs = [], []
  for variant in VARIANTS:
    k_i, v_i = k, v
    if variant is not None:
      cut, value, replace_values = variant
      k_i = k.at[:, cut:].set(value)
      if replace_values:
        v_i = v.at[:, cut:].set(value)
    ks.append(k_i)
    vs.append(v_i)
  return jnp.tile(q, (len(VARIANTS), 1, 1, 1)), jnp.concatenate(ks), jnp.concatenate(vs)


@functools.lru_cache(maxsize=None)
def _outputs(layout):
  """{name: [variants, B, L, h, d]} for every attention at `layout`.

  Every attention and variant runs in one jitted call (compiling once per
  layout, not once per attention); batch entries are independent, so the
  untouched variant is the reference for the others.
  """
  if layout is None:
    attentions = {"softmax": kattn.softmax_attention, "quadratic[relu]": _quadratic}
    options = {}
  else:
    attentions = _chunked_attentions()
    options = dict(chunk_size=layout[0], chunks_per_step=layout[1])
  run = jax.jit(lambda q, k, v: {
      name: attend(q, k, v, causal=True, **options)
      for name, attend in attentions.items()
  })
  outputs = run(*_variant_inputs())
  return {
      name: np.asarray(out).reshape((len(VARIANTS), BATCH) + out.shape[1:])
      for name, out in outputs.items()
  }


CASES = [
    pytest.param(name, layout, id=f"{name}-C{layout[0]}G{layout[1]}")
    for name in CHUNKED_NAMES for layout in LAYOUTS
] + [
    pytest.param(name, None, id=name) for name in ("softmax", "quadratic[relu]")
]


@pytest.mark.parametrize("name, layout", CASES)
def test_later_keys_and_values_never_reach_an_earlier_output(name, layout):
  outputs = _outputs(layout)[name]
  base = outputs[0]
  assert np.all(np.isfinite(base))
  for out, (cut, value, replace_values) in zip(outputs[1:], VARIANTS[1:]):
    what = "keys and values" if replace_values else "keys"
    np.testing.assert_array_equal(
        out[:, :cut], base[:, :cut],
        err_msg=f"{what} from position {cut} set to {value} changed an"
        " earlier output",
    )
    if replace_values and not np.isfinite(value):
      # The queries that do see a non-finite value say so.
      assert not np.any(np.isfinite(out[:, cut:])), (cut, value)
