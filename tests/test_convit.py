"""ConViT modules, the DeiT baseline, and the sample-efficiency experiment."""

import json
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kattn
from experiments import sample_efficiency_study
from experiments.configs import sample_efficiency
from kattn import train
from kattn.attention import gpsa
from kattn.flax import convit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _small(**kwargs):
  options = dict(num_classes=5, num_heads=9, head_dim=4, depth=3,
                 local_up_to_layer=2, patch_size=4)
  options.update(kwargs)
  return convit.ConViT(**options)


IMAGES = jax.random.uniform(jax.random.key(1), (2, 16, 16, 1))


def test_locality_init_values():
  layer = convit.GatedPositionalSelfAttention(num_heads=9,
                                              locality_strength=3.0)
  x = jnp.ones((1, 16, 36))
  params = layer.init(jax.random.key(0), x, grid=(4, 4))["params"]
  np.testing.assert_array_equal(params["gate_logits"], np.ones(9))
  np.testing.assert_array_equal(
      params["position_weights"],
      gpsa.locality_position_weights(9, locality_strength=3.0),
  )
  value = params["value"]["kernel"].reshape(36, 36)
  np.testing.assert_array_equal(value, np.eye(36))
  assert "bias" not in params["query"] and "bias" not in params["value"]
  # Queries and keys start small, so the content term is near uniform.
  assert float(jnp.std(params["query"]["kernel"])) < 0.03


def test_without_local_init_positions_are_random_and_value_is_not_identity():
  layer = convit.GatedPositionalSelfAttention(num_heads=3,
                                              use_local_init=False)
  params = layer.init(jax.random.key(0), jnp.ones((1, 9, 12)),
                      grid=(3, 3))["params"]
  assert float(jnp.abs(params["position_weights"]).max()) < 0.2
  assert not np.allclose(params["value"]["kernel"].reshape(12, 12),
                         np.eye(12))


@pytest.mark.parametrize("heads", [2, 6, 8])
def test_non_square_heads_with_locality_init_raise(heads):
  with pytest.raises(ValueError, match="perfect square"):
    _small(num_heads=heads).init(jax.random.key(0), IMAGES)


def test_module_sows_maps_whose_rows_sum_to_one():
  model = _small()
  variables = model.init(jax.random.key(0), IMAGES)
  maps = convit.attention_maps(model, variables, IMAGES)
  assert [m.shape for m in maps] == [(2, 9, 16, 16)] * 3
  for m in maps[:2]:  # GPSA blocks: rows over the patches sum to 1
    np.testing.assert_allclose(m.sum(-1), 1.0, atol=1e-5)
  # After the class token, patch rows give it some weight.
  assert float(maps[2].sum(-1).max()) < 1.0


def test_class_token_enters_at_local_up_to_layer():
  model = _small(depth=4, local_up_to_layer=2)
  variables = model.init(jax.random.key(0), IMAGES)
  _, state = model.apply(variables, IMAGES, mutable=["intermediates"])
  lengths = [
      state["intermediates"][f"block_{i}"]["attention"]["attention_weights"][0]
      .shape[-1] for i in range(4)
  ]
  assert lengths == [16, 16, 17, 17]


def test_init_nonlocality_is_local_in_gpsa_blocks():
  model = _small(locality_strength=10.0)
  variables = model.init(jax.random.key(0), IMAGES)
  per_layer = convit.layer_nonlocality(model, variables, IMAGES)
  chex.assert_shape(per_layer, (3, 9))
  # Content is near uniform at init (qk std 0.02), so with gate 0.73 the
  # positional bumps dominate: far below the uniform map's mean distance.
  uniform = float(gpsa.nonlocality(jnp.full((1, 16, 16), 1 / 16),
                                   grid=(4, 4))[0])
  assert per_layer[:2].mean() < 0.6 * uniform
  assert per_layer[2].mean() > 0.8 * uniform


def test_linear_gpsa_module_equals_its_quadratic_weights():
  layer = convit.GatedPositionalSelfAttention(
      num_heads=4, attention="favor", num_random_features=16
  )
  x = jax.random.normal(jax.random.key(2), (2, 16, 16))
  variables = layer.init(jax.random.key(0), x, grid=(4, 4))
  assert variables["random_features"]["projection_orthogonal"].shape == (16, 4)
  out, state = layer.apply(variables, x, grid=(4, 4),
                           mutable=["intermediates"])
  weights = state["intermediates"]["attention_weights"][0]
  params = variables["params"]
  v = jnp.einsum("bld,dhe->blhe", x, params["value"]["kernel"])
  mixed = kattn.attention.weighted_average(weights, v)
  expected = jnp.einsum("blhe,hed->bld", mixed, params["out"]["kernel"]) + (
      params["out"]["bias"]
  )
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attention", ["softmax", "favor"])
def test_model_logits_and_gradients_are_finite(attention):
  model = _small(attention=attention, num_random_features=8,
                 drop_path_rate=0.1, dropout_rate=0.1)
  variables = model.init(jax.random.key(0), IMAGES)

  def loss(params):
    logits = model.apply(
        {**variables, "params": params}, IMAGES, deterministic=False,
        rngs={"dropout": jax.random.key(3)},
    )
    chex.assert_shape(logits, (2, 5))
    return jnp.sum(logits**2)

  grads = jax.grad(loss)(variables["params"])
  chex.assert_tree_all_finite(grads)
  gpsa_grads = grads["block_0"]["attention"]
  assert float(jnp.abs(gpsa_grads["gate_logits"]).max()) > 0
  assert float(jnp.abs(gpsa_grads["position_weights"]).max()) > 0


def test_deit_is_convit_without_gpsa_and_matched_in_size():
  count = lambda m: sum(np.size(p) for p in jax.tree_util.tree_leaves(
      m.init(jax.random.key(0), IMAGES)["params"]))
  deit = convit.deit(5, num_heads=9, head_dim=4, depth=3, patch_size=4)
  assert deit.local_up_to_layer == 0
  assert abs(count(deit) - count(_small())) <= 0.01 * count(deit)
  with pytest.raises(ValueError, match="local_up_to_layer"):
    convit.deit(5, local_up_to_layer=2)
  assert {"convit", "deit"} <= set(kattn.flax.available_models())


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(local_up_to_layer=3), r"local_up_to_layer.*\[0, depth\)"),
     (dict(patch_size=3), "patch_size"),
     (dict(attention="clipped"), "Unknown `attention`"),
     (dict(attention="softmax", positional_method="conv"),
      "positional_method"),
     # A ratio with no hidden unit: before, 0 built an empty MLP and a
     # negative ratio failed in Dense with a shape error.
     (dict(mlp_ratio=0.0), r"`mlp_ratio` must .* >= 1 hidden units; got"
                           r" mlp_ratio=0\.0 for width 36"),
     (dict(mlp_ratio=-1.0), r"`mlp_ratio` .*got mlp_ratio=-1\.0"),
     (dict(num_random_features=0),
      r"`num_random_features` must be a positive integer; got 0\.")],
)
def test_bad_model_arguments_are_clear_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    _small(**kwargs).init(jax.random.key(0), IMAGES)


def test_attention_maps_refuse_linear_models():
  model = _small(attention="favor", num_random_features=8)
  variables = model.init(jax.random.key(0), IMAGES)
  with pytest.raises(ValueError, match="attention='softmax'"):
    convit.attention_maps(model, variables, IMAGES)


def test_reference_sizes():
  widths = {name: s["num_heads"] * s["head_dim"]
            for name, s in convit.CONVIT_SIZES.items()}
  assert widths == {"tiny": 192, "small": 432, "base": 768, "tiny_plus": 256,
                    "small_plus": 576, "base_plus": 1024}


@pytest.mark.parametrize("model", sorted(sample_efficiency.MODELS))
def test_sample_efficiency_variants_build(model):
  config = sample_efficiency.get_config(f"{model},f25")
  built = train.create_model(config, num_classes=10)
  assert built.attention == sample_efficiency.MODELS[model][1]
  assert config.train_fraction == 0.25
  assert config.num_steps == 500


@pytest.mark.parametrize(
    "arg, match",
    [("convit,deit", "at most one model"), ("f10,f25", "at most one fraction"),
     ("f5", "Unknown variant")],
)
def test_sample_efficiency_bad_variants(arg, match):
  with pytest.raises(ValueError, match=match):
    sample_efficiency.get_config(arg)


def test_fractions_are_class_balanced():
  config = sample_efficiency.get_config("f10")
  full = train.load_dataset(sample_efficiency.get_config(""), "train")
  part = train.load_dataset(config, "train")
  full_counts = np.bincount(full.labels, minlength=10)
  np.testing.assert_array_equal(
      np.bincount(part.labels, minlength=10), (0.1 * full_counts).astype(int)
  )
  with pytest.raises(ValueError, match="fraction"):
    kattn.data.class_balanced_subset(full, 0.0)


def test_study_end_to_end(tmp_path):
  output = tmp_path / "out"
  subprocess.run(
      [sys.executable, "-m", "experiments.sample_efficiency_study",
       f"--workdir={tmp_path / 'runs'}", f"--output={output}",
       "--datasets=digits", "--fractions=f10,f100", "--seeds=0,1",
       "--size=runlocal"],
      cwd=ROOT, check=True, capture_output=True, timeout=900,
  )
  study = json.loads((output / "study.json").read_text())
  grid = study["datasets"]["digits"]
  assert set(grid) == {"deit", "convit"}
  assert [len(grid["convit"][f]) for f in ("f10", "f100")] == [2, 2]
  run = grid["convit"]["f10"][0]
  assert run["num_train_examples"] < 500 and run["steps"] == 4
  assert len(run["nonlocality"]) == 2 and len(run["gates"]) == 1
  assert "gates" not in grid["deit"]["f10"][0]
  table = (output / "study.md").read_text()
  assert "+24%" in table and sample_efficiency_study.LABELS["deit"] in table
  assert (output / "study.png").stat().st_size > 0


@pytest.mark.parametrize(
    "size, millions", [("tiny", 5.71), ("small", 27.78), ("base", 86.54)]
)
def test_reference_sizes_have_the_published_parameter_counts(size, millions):
  # timm's convit_{tiny,small,base} on 224 x 224 RGB, 1,000 classes; ours
  # adds zero-initialised q/k/v biases in the two MHSA blocks (< 0.1%).
  model = convit.ConViT(num_classes=1000, **convit.CONVIT_SIZES[size])
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
  )
  count = sum(np.size(p) for p in jax.tree_util.tree_leaves(shapes["params"]))
  assert abs(count / 1e6 - millions) < 0.001 * millions + 0.01, count
