"""The rotation experiment: its configs, the GSA-Net model and the study."""

import json
import os
import subprocess
import sys

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import rotation_study
from experiments.configs import rotation
from kattn import flax as kflax
from kattn import testing
from kattn import train
from kattn.flax import gsa_net

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _num_params(config):
  model = train.create_model(config, num_classes=10)
  variables = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
  )
  return sum(np.size(p) for p in jax.tree_util.tree_leaves(
      variables["params"]))


@pytest.mark.parametrize("size", ["", "reference"])
def test_models_share_a_parameter_budget_within_ten_percent(size):
  counts = {
      model: _num_params(rotation.get_config(",".join(filter(None, [model, size]))))
      for model in rotation.MODELS
  }
  assert max(counts.values()) <= 1.1 * min(counts.values()), counts


@pytest.mark.parametrize("model", sorted(rotation.MODELS))
@pytest.mark.parametrize("size", ["", "runlocal", "reference"])
def test_every_variant_builds_its_model(model, size):
  config = rotation.get_config(",".join(filter(None, [model, size])))
  group, attention = rotation.MODELS[model]
  built = train.create_model(config, num_classes=10)
  assert isinstance(built, gsa_net.GSANet)
  assert (built.group, built.attention) == (group, attention)
  assert config.augment.max_rotation == 0.0  # the data are rotated instead
  assert config.dataset.startswith("rotated:")


def test_reference_variant_has_the_papers_network():
  config = rotation.get_config("reference")
  model = config.model
  assert (model.channels, model.num_heads, model.window) == (20, 9, 9)
  assert tuple(map(tuple, model.stages)) == ((2, 0), (2, 1, 1))
  assert config.batch_size == 8 and config.num_epochs == 300
  assert config.optimizer.learning_rate == 1e-3


@pytest.mark.parametrize(
    "arg, match",
    [("p4,z2", "at most one model"), ("digits,fashion", "at most one data"),
     ("p6", "Unknown variant")],
)
def test_bad_variants_are_clear_errors(arg, match):
  with pytest.raises(ValueError, match=match):
    rotation.get_config(arg)


def test_unknown_model_name_is_a_clear_error():
  config = rotation.get_config("runlocal")
  config.model.name = "resnet"
  with pytest.raises(ValueError, match="Unknown model `name` 'resnet'"):
    train.create_model(config, num_classes=10)
  assert {"vit", "gsa_net"} <= set(kflax.available_models())


_NETS = {}


def _net_apply(group, attention):
  """A jitted tiny GSA-Net with fixed random weights, built once per kind."""
  if (group, attention) not in _NETS:
    # 10 x 10 -> crop 1 -> 8 -> pool -> 4: even sizes at the pool.
    net = gsa_net.GSANet(
        num_classes=3, group=group, attention=attention, channels=4,
        num_heads=2, head_dim=4, window=3, stages=((1,), (0,)),
        num_random_features=8,
    )
    variables = net.init(jax.random.key(0), jnp.zeros((1, 10, 10, 1)))
    _NETS[group, attention] = jax.jit(lambda t: net.apply(variables, t))
  return _NETS[group, attention]


@hypothesis.settings(max_examples=100, deadline=None, derandomize=True)
@hypothesis.given(
    kind=st.sampled_from([("p4", "local"), ("p4m", "local"),
                          ("p4", "global"), ("p4m", "favor")]),
    seed=st.integers(0, 2**31 - 1),
    element=st.integers(0, 7),
)
def test_gsa_net_logits_are_invariant(kind, seed, element):
  group = kind[0]
  x = jax.random.normal(jax.random.key(seed), (2, 10, 10, 1))
  order = 8 if group == "p4m" else 4
  # float32 through six layers of O(1) activations: 1e-4 absolute.
  testing.assert_group_equivariant(
      _net_apply(*kind), x, group, output_kind="invariant",
      elements=[element % order], rtol=1e-4, atol=1e-4,
  )


def test_z2_net_is_not_rotation_invariant():
  apply = _net_apply("z2", "local")
  x = jax.random.normal(jax.random.key(1), (2, 10, 10, 1))
  with pytest.raises(AssertionError, match="element 1 of p4"):
    testing.assert_group_equivariant(
        apply, x, "p4", output_kind="invariant", rtol=1e-4, atol=1e-4)


def test_gsa_net_bad_input_is_a_clear_error():
  net = gsa_net.GSANet(num_classes=3, channels=4, num_heads=2, head_dim=4,
                       window=3, stages=((0,), (0,)))
  with pytest.raises(ValueError, match="image size.*must be square"):
    net.init(jax.random.key(0), jnp.zeros((1, 8, 6, 1)))
  with pytest.raises(ValueError, match="even image size"):
    net.init(jax.random.key(0), jnp.zeros((1, 7, 7, 1)))
  with pytest.raises(ValueError, match="`group` must be one of"):
    gsa_net.GSANet(group="p6", channels=4, num_heads=2, head_dim=4,
                   window=3).init(
        jax.random.key(0), jnp.zeros((1, 8, 8, 1)))


def test_study_end_to_end_p4_is_exact_at_quarter_turns(tmp_path):
  """Tiny runs, real protocol: p4's curve is flat at 0, 90, 180, 270."""
  output = tmp_path / "out"
  subprocess.run(
      [sys.executable, "-m", "experiments.rotation_study",
       f"--workdir={tmp_path / 'runs'}", f"--output={output}",
       "--datasets=digits", "--models=z2,p4", "--size=runlocal"],
      cwd=ROOT, check=True, capture_output=True, timeout=900,
  )
  study = json.loads((output / "study.json").read_text())
  runs = study["datasets"]["digits"]
  assert set(runs) == {"z2", "p4"}
  p4 = {p["angle"]: p["accuracy"] for p in runs["p4"]["rotation_curve"]}
  assert p4[0.0] == p4[90.0], p4
  assert runs["p4"]["quarter_turn_spread"] == 0.0
  assert runs["p4"]["num_params"] > 0
  table = (output / "study.md").read_text()
  assert "97.97" in table and "p4 GSA-Net" in table
  assert (output / "study.png").stat().st_size > 0
  assert rotation_study.LABELS["z2"] in table


@pytest.mark.parametrize("layer", ["local", "global", "linear"])
def test_group_benchmark_times_each_layer(layer):
  from experiments import bench_group
  settings = bench_group.GroupSettings(heads=1, head_dim=4, num_features=4,
                                       repeats=1)
  record = bench_group.run_config(layer, "fwd_bwd", 4, settings)
  assert record["status"] == "ok" and record["median_ms"] > 0
  small, large = (bench_group.estimate_memory_bytes(layer, "fwd", side,
                                                    settings)
                  for side in (28, 56))
  assert large > small
  with pytest.raises(ValueError, match="`layer` must be one of"):
    bench_group.run_config("conv", "fwd", 4, settings)
