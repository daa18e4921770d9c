"""timm ConViT state dicts: the converted model against timm's own forward.

The reference is timm's `ConViT.forward` (`timm/models/convit.py`) redone in
float64 NumPy straight from the state dict, in PyTorch layouts: the patch
convolution on NCHW images, linears as `x @ W.T + b`, the fused `qk` and
`qkv` rows split by timm's reshapes, rel_indices built with timm's repeat
and repeat_interleave, the `pos_proj` bias included. Weights of std 0.2,
O(1) positional weights and gates make a transposed or misordered array
move the logits by far more than the tolerance (checked below).
"""

import dataclasses
import functools
import math
import os

import chex
import hypothesis
import hypothesis.strategies as st
import jax
import numpy as np
import pytest

from kattn.flax import ConViT
from kattn.flax import convert_timm

_settings = hypothesis.settings(
    max_examples=100, deadline=None, derandomize=True
)
seeds = st.integers(0, 2**32 - 1)
# float32 forward against float64: logits of O(1) after <= 3 blocks of
# <= 64-wide sums measure <= 1e-6 apart; a wrong layout moves them by > 1e-2.
RTOL, ATOL = 1e-5, 1e-5
EPSILON = 1e-6  # LayerNorm epsilon of the published models
STD = 0.2


@dataclasses.dataclass(frozen=True)
class Arch:
  num_heads: int
  head_dim: int
  depth: int
  local_up_to_layer: int
  patch_size: int
  side: int  # image side in pixels
  channels: int
  num_classes: int
  mlp_dim: int

  @property
  def width(self):
    return self.num_heads * self.head_dim

  @property
  def num_patches(self):
    return (self.side // self.patch_size) ** 2

  def config(self):
    return dict(
        num_classes=self.num_classes, num_heads=self.num_heads,
        head_dim=self.head_dim, depth=self.depth,
        local_up_to_layer=self.local_up_to_layer, patch_size=self.patch_size,
        mlp_ratio=self.mlp_dim / self.width, use_local_init=False,
    )


SMALL = Arch(num_heads=4, head_dim=4, depth=3, local_up_to_layer=2,
             patch_size=4, side=16, channels=3, num_classes=5, mlp_dim=64)
# Two heads (not a square), a 3 x 3 grid, MLP ratio 2.
ODD = Arch(num_heads=2, head_dim=3, depth=2, local_up_to_layer=1,
           patch_size=2, side=6, channels=1, num_classes=3, mlp_dim=12)
ARCHS = [SMALL, ODD]


def timm_state_dict(arch, seed=0, std=STD):
  """Random float32 arrays under timm's keys, in PyTorch layouts."""
  rng = np.random.default_rng(seed)
  normal = lambda *shape, scale=std: (
      scale * rng.standard_normal(shape)).astype(np.float32)
  w, p, m = arch.width, arch.patch_size, arch.mlp_dim
  state = {
      "patch_embed.proj.weight": normal(w, arch.channels, p, p),
      "patch_embed.proj.bias": normal(w),
      "pos_embed": normal(1, arch.num_patches, w),
      "cls_token": normal(1, 1, w),
  }
  for i in range(arch.depth):
    block = f"blocks.{i}."
    state[block + "norm1.weight"] = 1 + normal(w)
    state[block + "norm1.bias"] = normal(w)
    if i < arch.local_up_to_layer:
      state[block + "attn.qk.weight"] = normal(2 * w, w)
      state[block + "attn.v.weight"] = normal(w, w)
      state[block + "attn.pos_proj.weight"] = normal(arch.num_heads, 3,
                                                     scale=1.0)
      state[block + "attn.pos_proj.bias"] = normal(arch.num_heads, scale=1.0)
      state[block + "attn.gating_param"] = normal(arch.num_heads, scale=1.0)
    else:
      state[block + "attn.qkv.weight"] = normal(3 * w, w)
    state[block + "attn.proj.weight"] = normal(w, w)
    state[block + "attn.proj.bias"] = normal(w)
    state[block + "norm2.weight"] = 1 + normal(w)
    state[block + "norm2.bias"] = normal(w)
    state[block + "mlp.fc1.weight"] = normal(m, w)
    state[block + "mlp.fc1.bias"] = normal(m)
    state[block + "mlp.fc2.weight"] = normal(w, m)
    state[block + "mlp.fc2.bias"] = normal(w)
  state["norm.weight"] = 1 + normal(w)
  state["norm.bias"] = normal(w)
  state["head.weight"] = normal(arch.num_classes, w)
  state["head.bias"] = normal(arch.num_classes)
  return state


# ---- timm's forward in float64 NumPy ----------------------------------------


def _softmax(x):
  e = np.exp(x - x.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


_erf = np.vectorize(math.erf)


def _layer_norm(x, s, name):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + EPSILON) * s[name + ".weight"] + s[
      name + ".bias"]


def _linear(x, s, name, bias=True):
  y = x @ s[name + ".weight"].T
  return y + s[name + ".bias"] if bias else y


def _rel_indices(num_patches):
  """timm's `GPSA.get_rel_indices`: [N, N, 3] of (indx, indy, indd)."""
  side = int(num_patches**0.5)
  ind = np.arange(side)[None, :] - np.arange(side)[:, None]
  indx = np.tile(ind, (side, side))  # torch .repeat
  indy = np.repeat(np.repeat(ind, side, axis=0), side, axis=1)
  return np.stack([indx, indy, indx**2 + indy**2], axis=-1).astype(np.float64)


def _gpsa(x, s, name, heads):
  b, n, c = x.shape
  qk = _linear(x, s, name + ".qk", bias=False)
  q, k = qk.reshape(b, n, 2, heads, c // heads).transpose(2, 0, 3, 1, 4)
  pos_score = _linear(_rel_indices(n), s, name + ".pos_proj")  # [N, N, H]
  pos_score = _softmax(pos_score.transpose(2, 0, 1)[None])
  patch_score = _softmax(q @ k.swapaxes(-2, -1) * (c // heads) ** -0.5)
  gate = 1 / (1 + np.exp(-s[name + ".gating_param"]))[None, :, None, None]
  attn = (1 - gate) * patch_score + gate * pos_score
  attn /= attn.sum(-1, keepdims=True)
  v = _linear(x, s, name + ".v", bias=False)
  v = v.reshape(b, n, heads, c // heads).transpose(0, 2, 1, 3)
  out = (attn @ v).transpose(0, 2, 1, 3).reshape(b, n, c)
  return _linear(out, s, name + ".proj")


def _mhsa(x, s, name, heads):
  b, n, c = x.shape
  qkv = _linear(x, s, name + ".qkv", bias=False)
  q, k, v = qkv.reshape(b, n, 3, heads, c // heads).transpose(2, 0, 3, 1, 4)
  attn = _softmax(q @ k.swapaxes(-2, -1) * (c // heads) ** -0.5)
  out = (attn @ v).transpose(0, 2, 1, 3).reshape(b, n, c)
  return _linear(out, s, name + ".proj")


def timm_forward(state, images, arch):
  """Logits of timm's ConViT on `[batch, channels, side, side]` images."""
  s = {key: np.float64(value) for key, value in state.items()}
  b, p = images.shape[0], arch.patch_size
  grid = arch.side // p
  patches = np.float64(images).reshape(b, arch.channels, grid, p, grid, p)
  x = np.einsum("bcyuxv,dcuv->byxd", patches, s["patch_embed.proj.weight"])
  x = x.reshape(b, grid * grid, -1) + s["patch_embed.proj.bias"]
  x = x + s["pos_embed"]
  for i in range(arch.depth):
    if i == arch.local_up_to_layer:
      cls = np.broadcast_to(s["cls_token"], (b, 1, x.shape[-1]))
      x = np.concatenate([cls, x], axis=1)
    block = f"blocks.{i}."
    attention = _gpsa if i < arch.local_up_to_layer else _mhsa
    x = x + attention(_layer_norm(x, s, block + "norm1"), s, block + "attn",
                      arch.num_heads)
    h = _linear(_layer_norm(x, s, block + "norm2"), s, block + "mlp.fc1")
    h = 0.5 * h * (1 + _erf(h / np.sqrt(2)))
    x = x + _linear(h, s, block + "mlp.fc2")
  x = _layer_norm(x, s, "norm")
  return _linear(x[:, 0], s, "head")


# ---- helpers ----------------------------------------------------------------


def _images_nchw(arch, seed, batch=2):
  rng = np.random.default_rng(seed)
  return rng.standard_normal(
      (batch, arch.channels, arch.side, arch.side)).astype(np.float32)


def _nhwc(images):
  return images.transpose(0, 2, 3, 1)


@functools.lru_cache(maxsize=None)
def _jitted_apply(arch):
  model = ConViT(**arch.config())
  return jax.jit(lambda params, images: model.apply({"params": params},
                                                    images))


# ---- conversion against the reference ---------------------------------------


@_settings
@hypothesis.given(seed=seeds, arch=st.sampled_from(ARCHS))
def test_logits_match_timm_forward(seed, arch):
  state = timm_state_dict(arch, seed)
  images = _images_nchw(arch, seed)
  params = convert_timm.params_from_timm_state_dict(state)
  got = _jitted_apply(arch)(params, _nhwc(images))
  np.testing.assert_allclose(
      got, timm_forward(state, images, arch), rtol=RTOL, atol=ATOL
  )


@pytest.mark.parametrize("arch", ARCHS)
def test_config_is_read_from_the_shapes(arch):
  config = convert_timm.convit_config_from_state_dict(timm_state_dict(arch))
  assert config == arch.config()


@st.composite
def archs(draw):
  depth = draw(st.integers(2, 5))
  patch_size = draw(st.integers(1, 4))
  num_heads = draw(st.integers(1, 9))
  head_dim = draw(st.integers(1, 4))
  return Arch(
      num_heads=num_heads, head_dim=head_dim, depth=depth,
      local_up_to_layer=draw(st.integers(1, depth - 1)),
      patch_size=patch_size, side=patch_size * draw(st.integers(1, 4)),
      channels=draw(st.integers(1, 3)), num_classes=draw(st.integers(1, 6)),
      mlp_dim=draw(st.integers(1, 4 * num_heads * head_dim)),
  )


@_settings
@hypothesis.given(arch=archs())
def test_any_architecture_converts_to_the_tree_of_init(arch):
  state = timm_state_dict(arch)
  config = convert_timm.convit_config_from_state_dict(state)
  assert config == arch.config()
  images = jax.ShapeDtypeStruct((1, arch.side, arch.side, arch.channels),
                                np.float32)
  expected = jax.eval_shape(
      ConViT(**config).init, jax.random.key(0), images)["params"]
  params = convert_timm.params_from_timm_state_dict(state)
  assert (jax.tree_util.tree_structure(params)
          == jax.tree_util.tree_structure(expected))
  chex.assert_trees_all_equal_shapes_and_dtypes(params, expected)
  assert set(convert_timm.timm_convit_shapes(
      config, in_channels=arch.channels, num_patches=arch.num_patches)
  ) == set(state)


def _swap_position_columns(params):
  w = params["block_0"]["attention"]["position_weights"]
  params["block_0"]["attention"]["position_weights"] = w[:, [1, 0, 2]]


def _swap_query_and_key(params):
  attention = params["block_1"]["attention"]
  attention["query"], attention["key"] = attention["key"], attention["query"]


def _heads_minor_value(params):
  kernel = params["block_2"]["attention"]["value"]["kernel"]
  width, heads, head_dim = kernel.shape
  params["block_2"]["attention"]["value"]["kernel"] = kernel.reshape(
      width, head_dim, heads).swapaxes(1, 2)


def _untransposed_mlp(params):
  kernel = params["block_0"]["mlp_in"]["kernel"]
  params["block_0"]["mlp_in"]["kernel"] = kernel.T.reshape(kernel.shape)


@pytest.mark.parametrize("mistake", [
    _swap_position_columns, _swap_query_and_key, _heads_minor_value,
    _untransposed_mlp,
])
def test_the_comparison_catches_a_wrong_layout(mistake):
  state = timm_state_dict(SMALL, seed=1)
  images = _images_nchw(SMALL, seed=1)
  params = convert_timm.params_from_timm_state_dict(state)
  mistake(params)
  got = _jitted_apply(SMALL)(params, _nhwc(images))
  error = np.max(np.abs(got - timm_forward(state, images, SMALL)))
  assert error > 100 * ATOL


def test_npz_round_trip(tmp_path):
  state = timm_state_dict(SMALL, seed=2)
  path = tmp_path / "convit.npz"
  np.savez(path, **state)
  model, variables = convert_timm.load_timm_convit(path)
  assert model == ConViT(**SMALL.config())
  images = _images_nchw(SMALL, seed=2)
  np.testing.assert_allclose(
      jax.jit(model.apply)(variables, _nhwc(images)),
      timm_forward(state, images, SMALL), rtol=RTOL, atol=ATOL,
  )


# ---- errors -----------------------------------------------------------------


def _delete(key):
  return lambda state: state.pop(key)


def _set(key, value):
  return lambda state: state.__setitem__(key, value)


def _gpsa_to_mhsa(block):
  def mutate(state):
    for name in ("qk.weight", "v.weight", "pos_proj.weight", "pos_proj.bias",
                 "gating_param"):
      del state[f"blocks.{block}.attn.{name}"]
    state[f"blocks.{block}.attn.qkv.weight"] = np.zeros((48, 16), np.float32)
  return mutate


def _no_gpsa(state):
  _gpsa_to_mhsa(0)(state)
  _gpsa_to_mhsa(1)(state)


@pytest.mark.parametrize("mutate, fragments", [
    (_delete("blocks.1.attn.v.weight"),
     ["missing key 'blocks.1.attn.v.weight'", "(16, 16)"]),
    (_set("blocks.0.attn.rel_indices", np.zeros((1, 16, 16, 3), np.float32)),
     ["unexpected key 'blocks.0.attn.rel_indices'", "(1, 16, 16, 3)"]),
    (_set("head.bias", np.zeros(6, np.float32)),
     ["'head.bias'", "(6,)", "expected (5,)"]),
    (_set("blocks.2.mlp.fc2.weight", np.zeros((64, 16), np.float32)),
     ["'blocks.2.mlp.fc2.weight'", "(64, 16)", "expected (16, 64)"]),
    (_set("norm.weight", np.ones(16, np.int64)),
     ["'norm.weight'", "int64", "float"]),
    (_delete("patch_embed.proj.weight"),
     ["'patch_embed.proj.weight'", "[width, channels, patch, patch]"]),
    (_set("patch_embed.proj.weight", np.zeros((16, 3, 4, 2), np.float32)),
     ["square patches", "(16, 3, 4, 2)"]),
    (_delete("blocks.0.attn.gating_param"),
     ["'blocks.0.attn.gating_param'", "[heads]"]),
    (_set("blocks.0.attn.gating_param", np.zeros(5, np.float32)),
     ["divisible", "5 heads"]),
    (_set("pos_embed", np.zeros((1, 15, 16), np.float32)),
     ["perfect square", "(1, 15, 16)"]),
    (_gpsa_to_mhsa(0), ["GPSA keys in blocks [1]"]),
    (_no_gpsa, ["no GPSA block"]),
    (_set("blocks.2.attn.gating_param", np.zeros(4, np.float32)),
     ["All 3 blocks are GPSA"]),
    (lambda state: state.clear(), ["'patch_embed.proj.weight'"]),
])
def test_bad_state_dicts_raise_naming_the_key(mutate, fragments):
  state = timm_state_dict(SMALL)
  mutate(state)
  with pytest.raises(ValueError) as error:
    convert_timm.params_from_timm_state_dict(state)
  for fragment in fragments:
    assert fragment in str(error.value)


def test_every_bad_key_is_listed_in_one_error():
  state = timm_state_dict(SMALL)
  del state["norm.bias"]
  state["extra"] = np.zeros(2, np.float32)
  state["head.bias"] = np.zeros(6, np.float32)
  with pytest.raises(ValueError) as error:
    convert_timm.convit_config_from_state_dict(state)
  for key in ("'norm.bias'", "'extra'", "'head.bias'"):
    assert key in str(error.value)


def test_a_file_with_a_wrong_shape_raises(tmp_path):
  state = timm_state_dict(SMALL)
  state["cls_token"] = np.zeros((1, 2, 16), np.float32)
  path = tmp_path / "convit.npz"
  np.savez(path, **state)
  with pytest.raises(ValueError, match=r"'cls_token'.*\(1, 2, 16\)"):
    convert_timm.load_timm_convit(path)


def _truncated(path):
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])


def _garbage(path):
  path.write_bytes(b"not a zip archive" * 10)


def _flipped_byte(path):
  # A byte in the middle of the stored arrays: the zip CRC check fails.
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 0xFF
  path.write_bytes(bytes(data))


def _single_array(path):
  with open(path, "wb") as f:
    np.save(f, np.zeros(3))


@pytest.mark.parametrize("damage", [
    _truncated, _garbage, _flipped_byte, _single_array,
])
def test_unreadable_files_raise_naming_the_file(tmp_path, damage):
  path = tmp_path / "convit.npz"
  np.savez(path, **timm_state_dict(SMALL))
  damage(path)
  with pytest.raises(ValueError) as error:
    convert_timm.load_timm_convit(path)
  assert os.fspath(path) in str(error.value)


def test_a_missing_file_is_not_found(tmp_path):
  with pytest.raises(FileNotFoundError):
    convert_timm.load_timm_convit(tmp_path / "absent.npz")
