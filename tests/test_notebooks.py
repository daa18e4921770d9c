"""Notebooks run top to bottom in their fast mode."""

import os
import pathlib

import nbclient
import nbformat
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
# What each notebook must print, beyond running without error.
EXPECTED = {
    "quickstart.ipynb": ["test accuracy"],
    "translation_equivariance.ipynb": [
        "fft_torus: logits invariant under circular shifts",
        "absolute positions: Not translation invariant",
        "relative_favor_attention: rolling the grid rolls the output",
        "fft_torus: test accuracy",
    ],
    "group_equivariance.ipynb": [
        "lifting + group layer: p4m-equivariant for every element",
        "g^-1 m index: equivariant",
        "(m - g + v) index: Not group equivariant",
        "linear lifting + group layer: p4-equivariant",
        "p4: test accuracy",
        "spread over quarter turns 0.0000",
    ],
    "convit.ipynb": [
        "alpha=10: every head is one-hot at its own offset",
        "linear GPSA matches quadratic GPSA",
        "convit: test accuracy",
        "deit: test accuracy",
        "gates after training:",
        "nonlocality per layer:",
    ],
    "learned_kernels.ipynb": [
        "GMM-RKS: the Monte-Carlo mean matches the closed-form kernel",
        "fast Walsh-Hadamard equals the dense Hadamard product",
        "refused: FastFood makes frequencies in blocks",
        "gmm_prf: test accuracy",
        "evaluation is deterministic: identical logits twice",
        "parameter change from init:",
    ],
}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, monkeypatch):
  monkeypatch.setenv("KATTN_NOTEBOOK_FAST", "1")
  monkeypatch.setenv("PYTHONPATH", f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
  notebook = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(
      notebook, timeout=600, kernel_name="python3",
      resources={"metadata": {"path": str(ROOT)}},
  )
  client.execute()
  outputs = "".join(
      output.get("text", "") for cell in notebook.cells
      for output in cell.get("outputs", [])
  )
  for expected in EXPECTED[path.name]:
    assert expected in outputs, expected
