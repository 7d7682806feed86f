"""Weighted linear surrogate models for LIME and KernelSHAP, fitted in JAX, batched over images.

Each image `n` has P samples: binary coalitions `z[n, i] in {0, 1}^F` (which features were
kept), the target logit `y[n, i]` of the perturbed input and a sample weight `w[n, i]`. The
fits reproduce the scikit-learn estimators the reference implementations call, with an
intercept and sklearn's handling of sample weights (the data are centred with the w-weighted
means, and `intercept = ybar - zbar . beta`):

  * `linear_fit(..., alpha)`: minimises `sum_i w_i (y_i - b - z_i . beta)^2 + alpha |beta|^2`,
    i.e. `sklearn.linear_model.Ridge(alpha)` (the `lime` package's surrogate, alpha=1) and,
    for alpha=0, `LinearRegression()` (Captum's KernelShap; the minimum-norm least-squares
    solution when the samples do not determine every coefficient, as scipy's `lstsq`).
  * `lasso_fit(..., alpha)`: minimises
    `1 / (2 sum_i w_i) * sum_i w_i (y_i - b - z_i . beta)^2 + alpha |beta|_1`, i.e.
    `sklearn.linear_model.Lasso(alpha)` with `sample_weight` (Captum's `Lime` default,
    alpha=0.01), by the same cyclic coordinate descent from zero, run to convergence.

No regularisation is added beyond the reference's own: alpha > 0 solves the (positive
definite) normal equations, alpha = 0 a least-squares problem by SVD (`jnp.linalg.lstsq`) on
the weighted rows, never their normal equations, whose condition number is squared
(KernelSHAP's weights span six orders of magnitude). Singular values below `LSTSQ_RCOND`
times the largest count as zero, sklearn's `LinearRegression` cut-off (its `tol=1e-6` is
passed to scipy's `lstsq` as `cond`): with fewer samples than features the weighted,
centred design is exactly rank deficient, and its rounding-noise singular values (about 1e-8
of the largest in float32) must be cut, not inverted.

References:
  Ribeiro, Singh & Guestrin 2016, "Why should I trust you?", https://arxiv.org/abs/1602.04938.
  Lundberg & Lee 2017, "A unified approach to interpreting model predictions",
  https://arxiv.org/abs/1705.07874.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from xai_jax import xla

LSTSQ_RCOND = 1e-6


def _check(z, y, w, columns):
  z, y, w = jnp.asarray(z), jnp.asarray(y), jnp.asarray(w)
  if z.ndim != 3 or y.shape != z.shape[:2] or w.shape != z.shape[:2]:
    raise ValueError(f"expected z [N, P, F], y [N, P] and w [N, P]; got shapes {z.shape}, "
                     f"{y.shape} and {w.shape}")
  dtype = jnp.result_type(y.dtype, w.dtype, jnp.float32)
  z = z.astype(dtype)
  if columns is not None:
    columns = jnp.asarray(columns)
    if columns.shape != (z.shape[0], z.shape[2]):
      raise ValueError(f"columns must have shape {(z.shape[0], z.shape[2])}; got {columns.shape}")
    z = z * columns[:, None, :].astype(dtype)
  return z, y.astype(dtype), w.astype(dtype)


def _centred(z, y, w):
  """Weighted means and the centred data of one image: (zbar [F], ybar, zc [P, F], yc [P])."""
  total = jnp.sum(w)
  zbar = w @ z / total
  ybar = jnp.sum(w * y) / total
  return zbar, ybar, z - zbar, y - ybar


def _ridge_one(z, y, w, alpha):
  zbar, ybar, zc, yc = _centred(z, y, w)
  if alpha > 0:
    highest = jax.lax.Precision.HIGHEST
    gram = jnp.einsum("pf,p,pg->fg", zc, w, zc, precision=highest)
    rhs = jnp.einsum("pf,p,p->f", zc, w, yc, precision=highest)
    beta = jax.scipy.linalg.solve(gram + alpha * jnp.eye(z.shape[1], dtype=z.dtype), rhs,
                                  assume_a="pos")
  else:
    root = jnp.sqrt(w)
    beta = jnp.linalg.lstsq(root[:, None] * zc, root * yc, rcond=LSTSQ_RCOND)[0]
  return beta, ybar - zbar @ beta


def linear_fit(z, y, w, *, alpha: float = 0.0, columns=None) -> tuple[jax.Array, jax.Array]:
  """Weighted ridge (alpha > 0) or least squares (alpha = 0) with an intercept, per image.

  Args:
    z: `{0, 1}[N, P, F]` (any numeric dtype) samples' coalitions, the regressors.
    y: `float[N, P]` responses (target logits).
    w: `float[N, P]` sample weights (> 0).
    alpha: L2 penalty on the coefficients (not the intercept), as sklearn's `Ridge(alpha)`;
      0 is `LinearRegression()`.
    columns: optional `bool[N, F]`: features that exist in image n; the others are zeroed,
      so their coefficient is 0 and the fit of the rest is the fit without them.

  Returns:
    `(coefficients float[N, F], intercept float[N])`.

  Raises:
    ValueError: on mismatched shapes or a negative alpha.
  """
  if not alpha >= 0:
    raise ValueError(f"alpha must be >= 0; got {alpha}")
  z, y, w = _check(z, y, w, columns)
  return _linear_fits(z, y, w, alpha=float(alpha))


# Jitted so that eager callers do not retrace the vmapped solve (and the Lasso's loops) per call.
@functools.partial(xla.jit, static_argnames=("alpha",))
def _linear_fits(z, y, w, *, alpha):
  return jax.vmap(lambda a, b, c: _ridge_one(a, b, c, alpha))(z, y, w)


@functools.partial(xla.jit, static_argnames=("alpha", "max_iter", "tol"))
def _lasso_fits(z, y, w, *, alpha, max_iter, tol):
  return jax.vmap(lambda a, b, c: _lasso_one(a, b, c, alpha, max_iter, tol))(z, y, w)


def _lasso_one(z, y, w, alpha, max_iter, tol):
  zbar, ybar, zc, yc = _centred(z, y, w)
  s = w / jnp.sum(w)
  highest = jax.lax.Precision.HIGHEST
  gram = jnp.einsum("pf,p,pg->fg", zc, s, zc, precision=highest)
  rhs = jnp.einsum("pf,p,p->f", zc, s, yc, precision=highest)
  diag = jnp.diagonal(gram)
  features = z.shape[1]

  def update(j, beta):
    # The partial residual's correlation with feature j, as sklearn's cyclic update.
    rho = rhs[j] - gram[j] @ beta + diag[j] * beta[j]
    shrunk = jnp.sign(rho) * jnp.maximum(jnp.abs(rho) - alpha, 0.0)
    new = jnp.where(diag[j] > 0, shrunk / jnp.where(diag[j] > 0, diag[j], 1.0), 0.0)
    return beta.at[j].set(new)

  def sweep(state):
    beta, _, it = state
    new = jax.lax.fori_loop(0, features, update, beta)
    return new, jnp.max(jnp.abs(new - beta)), it + 1

  def running(state):
    beta, change, it = state
    return (it < max_iter) & (change > tol * jnp.maximum(jnp.max(jnp.abs(beta)), 1e-30))

  zero = jnp.zeros((features,), z.dtype)
  beta, _, _ = jax.lax.while_loop(running, sweep, (zero, jnp.asarray(jnp.inf, z.dtype), 0))
  return beta, ybar - zbar @ beta


def lasso_fit(z, y, w, *, alpha: float, columns=None, max_iter: int = 10_000,
              tol: float | None = None) -> tuple[jax.Array, jax.Array]:
  """Weighted Lasso with an intercept per image, sklearn's `Lasso(alpha)` objective.

  Cyclic coordinate descent over the features in index order, from zero, as sklearn; it
  stops when a full sweep changes no coefficient by more than `tol` times the largest
  coefficient, or after `max_iter` sweeps (sklearn stops earlier, at a duality gap of 1e-4
  by default).

  Args:
    z: `{0, 1}[N, P, F]` regressors.
    y: `float[N, P]` responses.
    w: `float[N, P]` sample weights (> 0).
    alpha: L1 penalty (> 0; with 0 use `linear_fit`).
    columns: optional `bool[N, F]` features present per image (see `linear_fit`).
    max_iter: most coordinate-descent sweeps.
    tol: relative change that ends the sweeps; None -> 10 machine epsilons of the dtype.

  Returns:
    `(coefficients float[N, F], intercept float[N])`.

  Raises:
    ValueError: on mismatched shapes or a non-positive alpha.
  """
  if not alpha > 0:
    raise ValueError(f"alpha must be > 0 for the Lasso (use linear_fit for 0); got {alpha}")
  z, y, w = _check(z, y, w, columns)
  if tol is None:
    tol = 10 * float(np.finfo(z.dtype).eps)
  return _lasso_fits(z, y, w, alpha=float(alpha), max_iter=int(max_iter), tol=float(tol))
