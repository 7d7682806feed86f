"""Integrated gradients (Sundararajan, Taly & Yan 2017, https://arxiv.org/abs/1703.01365).

`IG_i(x) = (x_i - b_i) * integral_0^1 d f_t(b + a (x - b)) / d x_i da`, the
integral approximated by a quadrature rule with nodes `a_k` and weights `w_k`
exactly as Captum 0.9 builds them (reference-semantics A.3):

| rule               | a_k                               | w_k                     |
|--------------------|-----------------------------------|-------------------------|
| gausslegendre      | (1 + t_k) / 2, numpy leggauss     | u_k / 2                 |
| riemann_left       | linspace(0, 1 - 1/n, n)           | 1/n                     |
| riemann_right      | linspace(1/n, 1, n)               | 1/n                     |
| riemann_middle     | linspace(1/(2n), 1 - 1/(2n), n)   | 1/n                     |
| riemann_trapezoid  | linspace(0, 1, n)                 | 1/(n-1), ends halved    |

Gauss-Legendre nodes are computed in float64 and rounded to the input's precision,
Riemann nodes come from a float32 linspace (torch.linspace's algorithm). Captum's
trapezoid weights are 1/n with the ends halved, which sum to 1 - 1/n (so the
attributions of a linear model sum to (1 - 1/n) * (f(x) - f(b))); that is
reproduced with `captum_compat=True`, the correct weights are the default.

The steps are evaluated `chunk` steps at a time (see `common`), so memory holds
`chunk * N` images' activations, never all steps at once.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from xai_jax import xla
from xai_jax.explain import common

RULES = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle",
         "riemann_trapezoid")


def _linspace32(start: float, stop: float, num: int) -> np.ndarray:
  """torch.linspace(start, stop, num) in float32 (torch's symmetric two-sided formula)."""
  start32, stop32 = np.float32(start), np.float32(stop)
  step = (stop32 - start32) / np.float32(num - 1)
  i = np.arange(num)
  half = num // 2
  out = np.where(i < half, start32 + step * i.astype(np.float32),
                 stop32 - step * (num - 1 - i).astype(np.float32))
  return out.astype(np.float32)


def nodes_and_weights(steps: int, rule: str = "gausslegendre", *,
                      captum_compat: bool = False,
                      dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
  """Quadrature nodes and weights on [0, 1] for integrated gradients.

  Args:
    steps: number of nodes n (>= 1; >= 2 for the Riemann rules, as in Captum).
    rule: one of `RULES`.
    captum_compat: Captum's weights: for "riemann_trapezoid" 1/n with the ends halved
      (they sum to 1 - 1/n) instead of the correct 1/(n-1); for every rule rounded to
      float32 (Captum multiplies by `torch.tensor(step_sizes).float()` whatever the input's
      precision, a ~3e-8 relative change of the Gauss-Legendre weights in float64).
    dtype: of the returned arrays. Gauss-Legendre nodes and every rule's weights are
      computed in float64 and rounded to `dtype` (float64 for float64 inputs, so that they
      are not float32-rounded); the Riemann nodes are torch's float32 `linspace` values,
      as Captum's, in any dtype.

  Returns:
    `(alphas dtype[n], weights dtype[n])`.

  Raises:
    ValueError: for an unknown rule or too few steps.
  """
  if rule not in RULES:
    raise ValueError(f"unknown rule {rule!r}; valid: {', '.join(RULES)}")
  if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)):
    raise ValueError(f"steps must be an int; got {steps!r}")
  steps = int(steps)
  if rule == "gausslegendre":
    if steps < 1:
      raise ValueError(f"steps must be >= 1; got {steps}")
    t, u = np.polynomial.legendre.leggauss(steps)
    weights = 0.5 * u
    if captum_compat:
      weights = weights.astype(np.float32)
    return (0.5 * (1.0 + t)).astype(dtype), weights.astype(dtype)
  if steps < 2:
    raise ValueError(f"{rule} needs steps >= 2 (as Captum); got {steps}")
  n = steps
  if rule == "riemann_left":
    alphas = _linspace32(0.0, 1.0 - 1.0 / n, n)
  elif rule == "riemann_right":
    alphas = _linspace32(1.0 / n, 1.0, n)
  elif rule == "riemann_middle":
    alphas = _linspace32(1.0 / (2 * n), 1.0 - 1.0 / (2 * n), n)
  else:
    alphas = _linspace32(0.0, 1.0, n)
  if rule == "riemann_trapezoid":
    weights = np.full(n, 1.0 / n if captum_compat else 1.0 / (n - 1), np.float64)
    weights[0] /= 2
    weights[-1] /= 2
  else:
    weights = np.full(n, 1.0 / n, np.float64)
  if captum_compat:
    weights = weights.astype(np.float32)
  return alphas.astype(dtype), weights.astype(dtype)


def _weighted_step_sum(grad_fn, model, variables, x, baseline, target, alphas, weights):
  """sum_k w_k * grad f_t(b + a_k (x - b)) for one chunk of steps (plain JAX)."""
  c = alphas.shape[0]
  n = x.shape[0]
  diff = x - baseline
  expand = (c,) + (1,) * x.ndim
  scaled = baseline[None] + alphas.reshape(expand) * diff[None]  # step-major, as Captum
  grad, _ = grad_fn(model, variables, scaled.reshape((c * n,) + x.shape[1:]), target)
  grad = grad.reshape((c,) + x.shape)
  return jnp.sum(weights.reshape(expand) * grad, axis=0)


@functools.partial(xla.jit, static_argnames=("model",))
def _ig_unit(operands, chunked, *, model):
  variables, x, baseline, target = operands

  def body(ops, args):
    variables, x, baseline, target = ops
    return _weighted_step_sum(common.target_gradient, model, variables, x, baseline, target,
                              *args)

  return common.sum_over_chunks(body, operands, chunked)


def integrated_gradients(model: common.Model, variables: common.PyTree, x: jax.Array,
                         target: jax.Array | None = None, *, baseline=None, steps: int = 50,
                         rule: str = "gausslegendre", captum_compat: bool = False,
                         chunk: int | None = None, loop: str = "auto",
                         return_delta: bool = False):
  """Integrated gradients with Captum's quadrature (A.3) and bounded memory.

  Args:
    model: Flax module or `apply(variables, x) -> logits` callable.
    variables: model variables.
    x: `float32[N, H, W, C]`.
    target: `int32[N]` class per image; None -> predicted class.
    baseline: None (zeros, Captum's default), a scalar, or an array
      broadcasting to `x` (`[1, H, W, C]`, `[N, H, W, C]`, ...).
    steps: number of quadrature nodes n.
    rule: quadrature rule, one of `RULES` ("gausslegendre" is Captum's default).
    captum_compat: reproduce Captum's weights (trapezoid weights summing to 1 - 1/n,
      float32 weights for float64 inputs too; see `nodes_and_weights`).
    chunk: steps per model call (memory ~ chunk * N images' activations and
      gradients); None -> `common.default_chunk` (about 32 images of 224x224
      in flight). Captum's `internal_batch_size` is `chunk * N`.
    loop: "python", "lax" or "auto" (see `common.run_chunked`).
    return_delta: also return Captum's convergence delta.

  Returns:
    `float32[N, H, W, C]` attributions; with `return_delta`, a tuple
    `(attributions, delta float32[N])` where
    `delta = sum(attributions) - (f_t(x) - f_t(baseline))` per image. Both are
    NaN for an image whose traced target is out of range (see `common`).

  Raises:
    ValueError: on malformed inputs (also variables or channels that do not
      fit the model), an unknown rule or bad `steps`/`chunk`.
  """
  x, target, valid = common.prepare(model, variables, x, target)
  baseline = common.check_like(baseline, x, "baseline")
  alphas, weights = nodes_and_weights(
      steps, rule, captum_compat=captum_compat,
      dtype=np.float64 if x.dtype == jnp.float64 else np.float32)
  chunk = common.resolve_chunk(chunk, len(alphas), x.shape)
  unit = functools.partial(_ig_unit, model=model)
  eager = lambda ops, args: _weighted_step_sum(common.jit_target_gradient, model, *ops, *args)
  total = common.run_chunked(unit, (variables, x, baseline, target),
                             (jnp.asarray(alphas), jnp.asarray(weights)),
                             chunk=chunk, loop=loop, eager_body=eager)
  attributions = total * (x - baseline)
  if not return_delta:
    return common.nan_where_invalid(attributions, valid)
  delta = convergence_delta(model, variables, attributions, x, baseline, target)
  return common.nan_where_invalid((attributions, delta), valid)


def convergence_delta(model: common.Model, variables: common.PyTree, attributions: jax.Array,
                      x: jax.Array, baseline: jax.Array, target: jax.Array) -> jax.Array:
  """Captum's convergence delta `sum(attributions) - (f_t(x) - f_t(baseline))`, `float32[N]`."""
  f_x = common.jit_target_logits(model, variables, x, target)
  f_b = common.jit_target_logits(model, variables, baseline, target)
  total = jnp.sum(attributions.reshape(attributions.shape[0], -1), axis=1)
  return total - (f_x - f_b)
