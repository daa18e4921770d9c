"""Published ConViT weights from timm (PyTorch) state dicts, without torch.

Where timm is installed (e.g. on Colab), export a model's state dict once:

  model = timm.create_model("convit_small", pretrained=True)
  np.savez("convit_small.npz",
           **{k: v.numpy() for k, v in model.state_dict().items()})

`load_timm_convit("convit_small.npz")` then returns the matching
`kattn.flax.ConViT` and its variables, reading the file with numpy alone.
The architecture is inferred from the array shapes
(`convit_config_from_state_dict`), and every key is checked against the
table of `timm_convit_shapes`: a missing, unexpected or misshapen array is
an error, never skipped.

The conversion is exact; only layouts change:

* PyTorch `Linear` weights are `[out, in]`, Flax kernels `[in, out]` with
  the heads split out (output feature `head * head_dim + d`):
  `[width, heads, head_dim]` for queries, keys and values,
  `[heads, head_dim, width]` for the output projection.
* The patch convolution `[width, channels, p, p]` becomes
  `[p, p, channels, width]`: images are `[batch, height, width, channels]`,
  not NCHW.
* GPSA's fused `qk` rows are the queries then the keys; MHSA's fused `qkv`
  rows are queries, keys, values. timm has no query, key or value biases;
  `kattn.flax.MultiHeadSelfAttention` has, and they are set to zero.
* timm's `pos_proj` acts on rel_indices (dcol, drow, dcol^2 + drow^2), the
  column order of `position_weights`, so its weight is copied as is. Its
  bias adds one constant to all positional logits of a head, which the
  positional softmax removes: it is checked, then dropped.

A state dict does not record the LayerNorm epsilon, the activation or the
pooling; the published models use 1e-6, exact GELU and the class token, as
`ConViT` does.
"""

from __future__ import annotations

import math
import os
import re
import zipfile
import zlib
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from kattn.flax import convit as convit_lib

_BLOCK_KEY = re.compile(r"blocks\.(\d+)\.(.+)")
_GPSA_NAMES = frozenset({
    "attn.qk.weight", "attn.v.weight", "attn.pos_proj.weight",
    "attn.pos_proj.bias", "attn.gating_param",
})
_CONFIG_KEYS = (
    "num_classes", "num_heads", "head_dim", "depth", "local_up_to_layer",
    "patch_size", "mlp_ratio",
)


def timm_convit_shapes(
    config: Mapping[str, Any], *, in_channels: int, num_patches: int
) -> dict[str, tuple[int, ...]]:
  """Every key of a timm ConViT state dict, with its PyTorch shape.

  Args:
    config: `ConViT` keyword arguments with at least num_classes, num_heads,
      head_dim, depth, local_up_to_layer, patch_size and mlp_ratio, as
      `convit_config_from_state_dict` returns them.
    in_channels: image channels C.
    num_patches: N, the patch tokens of one image.

  Returns:
    `{key: shape}` in timm's names and layouts, e.g.
    `blocks.{i}.attn.qk.weight: (2 width, width)` for the GPSA blocks.

  Examples:
    >>> config = dict(num_classes=5, num_heads=4, head_dim=4, depth=3,
    ...               local_up_to_layer=2, patch_size=4, mlp_ratio=4.0)
    >>> shapes = timm_convit_shapes(config, in_channels=3, num_patches=16)
    >>> shapes["blocks.1.attn.qk.weight"], shapes["blocks.2.attn.qkv.weight"]
    ((32, 16), (48, 16))
  """
  missing = [name for name in _CONFIG_KEYS if name not in config]
  if missing:
    raise ValueError(
        f"`config` must set {', '.join(_CONFIG_KEYS)}; got none for"
        f" {', '.join(missing)}."
    )
  heads = config["num_heads"]
  width = heads * config["head_dim"]
  mlp_dim = int(round(config["mlp_ratio"] * width))
  patch = config["patch_size"]
  classes = config["num_classes"]
  vector = (width,)
  shapes = {
      "cls_token": (1, 1, width),
      "pos_embed": (1, num_patches, width),
      "patch_embed.proj.weight": (width, in_channels, patch, patch),
      "patch_embed.proj.bias": vector,
  }
  for i in range(config["depth"]):
    block = {
        "norm1.weight": vector, "norm1.bias": vector,
        "attn.proj.weight": (width, width), "attn.proj.bias": vector,
        "norm2.weight": vector, "norm2.bias": vector,
        "mlp.fc1.weight": (mlp_dim, width), "mlp.fc1.bias": (mlp_dim,),
        "mlp.fc2.weight": (width, mlp_dim), "mlp.fc2.bias": vector,
    }
    if i < config["local_up_to_layer"]:
      block.update({
          "attn.qk.weight": (2 * width, width),
          "attn.v.weight": (width, width),
          "attn.pos_proj.weight": (heads, 3),
          "attn.pos_proj.bias": (heads,),
          "attn.gating_param": (heads,),
      })
    else:
      block["attn.qkv.weight"] = (3 * width, width)
    shapes.update({f"blocks.{i}.{name}": s for name, s in block.items()})
  shapes.update({
      "norm.weight": vector, "norm.bias": vector,
      "head.weight": (classes, width), "head.bias": (classes,),
  })
  return shapes


def _shape_of(state, key: str, layout: str, reads: str) -> tuple[int, ...]:
  """The shape of `state[key]`, of rank and positive sizes per `layout`."""
  if key not in state:
    raise ValueError(
        f"The state dict has no key {key!r} ({layout}), from which {reads}"
        " is read."
    )
  shape = tuple(np.shape(state[key]))
  if len(shape) != layout.count(",") + 1 or 0 in shape:
    raise ValueError(
        f"Key {key!r} must have shape {layout} with positive sizes; got"
        f" {shape}."
    )
  return shape


def _check_state(state, expected: Mapping[str, tuple[int, ...]], summary):
  """Raises one error listing every missing, unexpected or wrong array."""
  problems = [
      f"missing key {key!r} (expected shape {shape})"
      for key, shape in expected.items() if key not in state
  ]
  problems += [
      f"unexpected key {key!r} (shape {tuple(np.shape(state[key]))})"
      for key in sorted(set(state) - set(expected))
  ]
  for key, shape in expected.items():
    if key not in state:
      continue
    got = tuple(np.shape(state[key]))
    dtype = np.asarray(state[key]).dtype
    if got != shape:
      problems.append(f"key {key!r} has shape {got}, expected {shape}")
    elif not np.issubdtype(dtype, np.floating):
      problems.append(f"key {key!r} has dtype {dtype}, expected a float")
  if problems:
    raise ValueError(
        f"The state dict is not that of a timm ConViT ({summary}): "
        + "; ".join(problems) + "."
    )


def convit_config_from_state_dict(state: Mapping[str, Any]) -> dict[str, Any]:
  """The `ConViT` keyword arguments of a timm ConViT state dict.

  Read from the shapes: width, channels and patch size from
  `patch_embed.proj.weight`, depth from the `blocks.{i}` keys, the GPSA
  blocks (`local_up_to_layer`) from their GPSA keys, which must be blocks
  0, 1, ... in a row, the heads from `blocks.0.attn.gating_param`, the MLP
  ratio from `blocks.0.mlp.fc1.weight`, the classes from `head.weight`.
  Then every key and shape is checked against `timm_convit_shapes`.

  `use_local_init=False`: the weights come from the file, and the locality
  initialisation would demand a square number of heads.

  Args:
    state: `{timm key: array}` in PyTorch layouts, float.

  Returns:
    A dict for `kattn.flax.ConViT(**config)`. The model takes square images
    of side `patch_size * sqrt(N)`, N from `pos_embed [1, N, width]` (224
    for the published models).

  Raises:
    ValueError: a key needed to read the architecture is missing, the GPSA
      blocks are not the first ones, there is no GPSA or no MHSA block, or
      any key is missing, unexpected, misshapen or not float; the message
      names each key with the expected and the received shape.

  Examples:
    >>> config = dict(num_classes=5, num_heads=4, head_dim=4, depth=3,
    ...               local_up_to_layer=2, patch_size=4, mlp_ratio=4.0)
    >>> state = {key: np.zeros(shape, np.float32) for key, shape in
    ...          timm_convit_shapes(config, in_channels=3,
    ...                             num_patches=16).items()}
    >>> inferred = convit_config_from_state_dict(state)
    >>> inferred == dict(config, use_local_init=False)
    True
  """
  width, channels, patch, patch_cols = _shape_of(
      state, "patch_embed.proj.weight", "[width, channels, patch, patch]",
      "the width and patch size",
  )
  if patch != patch_cols:
    raise ValueError(
        "Key 'patch_embed.proj.weight' must hold square patches [width,"
        f" channels, patch, patch]; got {(width, channels, patch, patch_cols)}."
    )
  blocks: dict[int, set[str]] = {}
  for key in state:
    match = _BLOCK_KEY.fullmatch(key)
    if match:
      blocks.setdefault(int(match[1]), set()).add(match[2])
  if not blocks:
    raise ValueError("The state dict has no block keys 'blocks.{i}.*'.")
  depth = max(blocks) + 1
  gated = sorted(i for i, names in blocks.items() if names & _GPSA_NAMES)
  local = len(gated)
  if gated != list(range(local)):
    raise ValueError(
        "GPSA blocks must be blocks 0, 1, ..., local_up_to_layer - 1 with"
        f" MHSA blocks after them; got GPSA keys in blocks {gated}."
    )
  if not local:
    raise ValueError(
        "The state dict has no GPSA block (no 'blocks.{i}.attn.gating_param'),"
        " so the number of heads cannot be read from it."
    )
  if local == depth:
    raise ValueError(
        f"All {depth} blocks are GPSA, so no block sees the class token;"
        " `ConViT` needs local_up_to_layer < depth."
    )
  (heads,) = _shape_of(
      state, "blocks.0.attn.gating_param", "[heads]", "the number of heads"
  )
  if width % heads:
    raise ValueError(
        f"The width {width} (axis 0 of 'patch_embed.proj.weight') must be"
        f" divisible by the {heads} heads of 'blocks.0.attn.gating_param'."
    )
  mlp_dim, _ = _shape_of(
      state, "blocks.0.mlp.fc1.weight", "[mlp_dim, width]", "the MLP ratio"
  )
  classes, _ = _shape_of(
      state, "head.weight", "[num_classes, width]", "the number of classes"
  )
  _, patches, _ = _shape_of(
      state, "pos_embed", "[1, patches, width]", "the number of patches"
  )
  if math.isqrt(patches) ** 2 != patches:
    raise ValueError(
        "timm's GPSA puts the patches on a square grid, so their number (axis"
        " 1 of 'pos_embed') must be a perfect square; got shape"
        f" {tuple(np.shape(state['pos_embed']))}."
    )
  config = dict(
      num_classes=classes, num_heads=heads, head_dim=width // heads,
      depth=depth, local_up_to_layer=local, patch_size=patch,
      mlp_ratio=mlp_dim / width, use_local_init=False,
  )
  _check_state(
      state,
      timm_convit_shapes(config, in_channels=channels, num_patches=patches),
      f"depth {depth}, {local} GPSA blocks, {heads} heads of width"
      f" {width // heads}, {channels} channels, {patches} patches",
  )
  return config


def params_from_timm_state_dict(state: Mapping[str, Any]) -> dict[str, Any]:
  """`ConViT` params from a timm ConViT state dict.

  The state dict is checked by `convit_config_from_state_dict`. The GPSA
  `pos_proj.bias` is dropped (the positional softmax removes it); the MHSA
  query, key and value biases are zero.

  Args:
    state: `{timm key: array}` in PyTorch layouts, float.

  Returns:
    The `"params"` collection of `ConViT(**convit_config_from_state_dict(
    state))`, float32: the same tree, shapes and dtypes as its `init` gives.

  Examples:
    >>> import jax
    >>> config = dict(num_classes=5, num_heads=4, head_dim=4, depth=3,
    ...               local_up_to_layer=2, patch_size=4, mlp_ratio=4.0)
    >>> state = {key: np.ones(shape, np.float32) for key, shape in
    ...          timm_convit_shapes(config, in_channels=3,
    ...                             num_patches=16).items()}
    >>> params = params_from_timm_state_dict(state)
    >>> params["block_0"]["attention"]["query"]["kernel"].shape
    (16, 4, 4)
    >>> params["embedding"]["kernel"].shape
    (4, 4, 3, 16)
  """
  config = convit_config_from_state_dict(state)
  heads = config["num_heads"]
  width = heads * config["head_dim"]
  array = lambda key: np.asarray(state[key], np.float32)
  layer_norm = lambda name: {
      "scale": array(name + ".weight"), "bias": array(name + ".bias")
  }
  dense = lambda name: {
      "kernel": array(name + ".weight").T, "bias": array(name + ".bias")
  }
  # Rows head * head_dim + d of a [heads * head_dim, width] weight.
  split_heads = lambda weight: weight.T.reshape(width, heads, -1)

  params = {
      "embedding": {
          "kernel": array("patch_embed.proj.weight").transpose(2, 3, 1, 0),
          "bias": array("patch_embed.proj.bias"),
      },
      "pos_embedding": array("pos_embed"),
      "cls": array("cls_token"),
      "encoder_norm": layer_norm("norm"),
      "head": dense("head"),
  }
  for i in range(config["depth"]):
    prefix = f"blocks.{i}."
    attention = {"out": {
        "kernel": array(prefix + "attn.proj.weight").T.reshape(
            heads, -1, width),
        "bias": array(prefix + "attn.proj.bias"),
    }}
    if i < config["local_up_to_layer"]:
      query, key = np.split(array(prefix + "attn.qk.weight"), 2)
      attention.update(
          query={"kernel": split_heads(query)},
          key={"kernel": split_heads(key)},
          value={"kernel": split_heads(array(prefix + "attn.v.weight"))},
          position_weights=array(prefix + "attn.pos_proj.weight"),
          gate_logits=array(prefix + "attn.gating_param"),
      )
    else:
      zero_bias = np.zeros((heads, width // heads), np.float32)
      for name, weight in zip(
          ("query", "key", "value"),
          np.split(array(prefix + "attn.qkv.weight"), 3),
      ):
        attention[name] = {"kernel": split_heads(weight), "bias": zero_bias}
    params[f"block_{i}"] = {
        "attention_norm": layer_norm(prefix + "norm1"),
        "attention": attention,
        "mlp_norm": layer_norm(prefix + "norm2"),
        "mlp_in": dense(prefix + "mlp.fc1"),
        "mlp_out": dense(prefix + "mlp.fc2"),
    }
  return jax.tree_util.tree_map(jnp.asarray, params)


def _read_npz(path) -> dict[str, np.ndarray]:
  """All arrays of an `.npz` archive; a file it cannot read is a ValueError."""
  try:
    archive = np.load(path, allow_pickle=False)
  except FileNotFoundError:  # already names the path, and is not corrupt
    raise
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
    raise ValueError(
        f"Cannot read {os.fspath(path)!r} as an .npz archive (truncated or"
        f" corrupt?): {error}"
    ) from error
  if not isinstance(archive, np.lib.npyio.NpzFile):
    raise ValueError(
        f"{os.fspath(path)!r} holds one array of shape {archive.shape}, not"
        " an .npz archive of named arrays (write it with np.savez)."
    )
  with archive:
    try:
      return {name: archive[name] for name in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile,
            zlib.error) as error:
      raise ValueError(
          f"Cannot read the arrays of {os.fspath(path)!r} (truncated or"
          f" corrupt?): {error}"
      ) from error


def load_timm_convit(
    path: str | os.PathLike,
) -> tuple[convit_lib.ConViT, dict[str, Any]]:
  """A `ConViT` and its variables from a timm state dict saved with np.savez.

  Args:
    path: `.npz` of `{timm key: array}`, as written by the export in the
      module docstring.

  Returns:
    `(model, variables)` for `model.apply(variables, images)` on
    `[batch, side, side, channels]` images, side = `patch_size * sqrt(N)`
    (224 for the published models, normalised with the ImageNet mean and
    standard deviation as timm does).

  Raises:
    ValueError: the file is not a readable `.npz` (named), or its arrays are
      not a timm ConViT state dict (see `convit_config_from_state_dict`).

  Examples:
    >>> import os, tempfile
    >>> config = dict(num_classes=5, num_heads=4, head_dim=4, depth=3,
    ...               local_up_to_layer=2, patch_size=4, mlp_ratio=4.0)
    >>> path = os.path.join(tempfile.mkdtemp(), "convit.npz")
    >>> np.savez(path, **{key: np.zeros(shape, np.float32) for key, shape in
    ...                   timm_convit_shapes(config, in_channels=3,
    ...                                      num_patches=16).items()})
    >>> model, variables = load_timm_convit(path)
    >>> model.apply(variables, np.zeros((2, 16, 16, 3), np.float32)).shape
    (2, 5)
  """
  state = _read_npz(path)
  model = convit_lib.ConViT(**convit_config_from_state_dict(state))
  return model, {"params": params_from_timm_state_dict(state)}
