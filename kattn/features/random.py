"""Random projections Omega in R^{m x d} for random-feature kernel estimators.

Every draw comes from an explicit `jax.random` key: the same key gives the same
projection, and nothing is ever seeded from data.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

from kattn import _validation

RowNorms = Literal["chi", "sqrt_dim"]


def gaussian_random_projection(
    key: jax.Array, num_features: int, dim: int, *, dtype=jnp.float32
) -> jax.Array:
  """Draws an iid Gaussian projection, rows omega_r ~ N(0, I_dim).

  Args:
    key: a `jax.random` key.
    num_features: m, the number of rows.
    dim: d, the width of the inputs the projection is applied to.
    dtype: floating dtype of the result.

  Returns:
    `[num_features, dim]` array.

  Examples:
    >>> import jax
    >>> gaussian_random_projection(jax.random.key(0), 16, 8).shape
    (16, 8)
  """
  _validation.check_positive_int("num_features", num_features)
  _validation.check_positive_int("dim", dim)
  return jax.random.normal(key, (num_features, dim), dtype)


def orthogonal_random_projection(
    key: jax.Array,
    num_features: int,
    dim: int,
    *,
    row_norms: RowNorms = "chi",
    dtype=jnp.float32,
) -> jax.Array:
  """Draws orthogonal random features (ORF): rows orthogonal within blocks.

  The projection stacks ceil(m / d) independent d x d blocks, each the
  transposed Q factor of the QR decomposition of a Gaussian matrix, with the
  sign fix Q diag(sign(diag R)) that makes Q Haar-distributed, and keeps the
  first m rows. Rows are then rescaled:

  * `row_norms="chi"`: each row gets the norm of an independent N(0, I_d)
    draw, so every row is marginally N(0, I_d) and kernel estimators stay
    unbiased, with lower variance than iid rows;
  * `row_norms="sqrt_dim"`: every row has the fixed length sqrt(d).

  Args:
    key: a `jax.random` key.
    num_features: m, the number of rows.
    dim: d, the width of the inputs the projection is applied to.
    row_norms: `"chi"` or `"sqrt_dim"`.
    dtype: floating dtype of the result.

  Returns:
    `[num_features, dim]` array.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> w = orthogonal_random_projection(jax.random.key(0), 8, 8, row_norms="sqrt_dim")
    >>> bool(jnp.allclose(w @ w.T, 8 * jnp.eye(8), atol=1e-4))
    True

  References:
    Choromanski et al., "Rethinking Attention with Performers", ICLR 2021.
  """
  _validation.check_positive_int("num_features", num_features)
  _validation.check_positive_int("dim", dim)
  if row_norms not in ("chi", "sqrt_dim"):
    raise ValueError(
        f"`row_norms` must be 'chi' or 'sqrt_dim'; got {row_norms!r}."
    )
  num_blocks = -(-num_features // dim)
  block_key, norm_key = jax.random.split(key)
  gaussian = jax.random.normal(block_key, (num_blocks, dim, dim), jnp.float32)
  q, r = jnp.linalg.qr(gaussian)
  signs = jnp.sign(jnp.diagonal(r, axis1=-2, axis2=-1))
  # sign(0) would zero a column; a zero diagonal has probability 0 but guard it.
  signs = jnp.where(signs == 0, 1.0, signs)
  q = q * signs[..., None, :]
  rows = jnp.swapaxes(q, -1, -2).reshape(num_blocks * dim, dim)[:num_features]
  if row_norms == "chi":
    norms = jnp.linalg.norm(
        jax.random.normal(norm_key, (num_features, dim), jnp.float32), axis=-1
    )
  else:
    norms = jnp.full((num_features,), jnp.sqrt(float(dim)), jnp.float32)
  return (rows * norms[:, None]).astype(dtype)
