"""Noise-averaged explainers: SmoothGrad / SmoothGrad-squared / VarGrad, and GradientShap.

References:
  Smilkov et al. 2017, "SmoothGrad: removing noise by adding noise",
  https://arxiv.org/abs/1706.03825.
  Adebayo et al. 2018, "Local explanation methods for deep neural networks
  lack sensitivity to parameter values" (VarGrad), https://arxiv.org/abs/1810.03307.
  Lundberg & Lee 2017, "A unified approach to interpreting model predictions"
  (GradientShap as implemented by Captum), https://arxiv.org/abs/1705.07874.

Randomness comes only from the explicit `key`; for parity with Captum (whose
torch/numpy streams cannot be reproduced in JAX) the noise, interpolation
coefficients and baseline indices can be injected instead. Injected arrays use
Captum's interleaved order: entry `[n, s]` belongs to Captum's expanded row
`n * samples + s`.

Samples are evaluated `chunk` samples at a time (`chunk * N` rows per model
call; see `common`); noise for a chunk is drawn inside that chunk, so the full
`[samples, N, H, W, C]` noise tensor is never materialised unless injected.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from xai_jax import xla
from xai_jax.explain import common, sampling

KINDS = ("mean", "squared", "var")

GRADIENT_SHAP_KEY_SLOTS = ("indices", "noise", "alphas")
"""GradientSHAP's use of `jax.random.split(key, 3)` (see `sampling.expected_gradients_draws`)."""


def _check_method(method) -> Callable:
  # Registry names are resolved by `xai_jax.explain.smoothgrad` (the registry imports this
  # module, so it cannot be imported here).
  if callable(method):
    return method
  raise ValueError(f"method must be an explainer function (xai_jax.explain.smoothgrad also "
                   f"takes a registry name); got {method!r}")


def _split_options(options: dict) -> tuple[tuple, dict]:
  """Array options are traced (passed to jit as operands), the rest static (hashable)."""
  static, dynamic = [], {}
  for name, value in sorted(options.items()):
    if isinstance(value, (jax.Array, np.ndarray)):
      dynamic[name] = value
    else:
      try:
        hash(value)
      except TypeError as e:
        raise ValueError(f"option {name}={value!r} must be hashable or an array") from e
      static.append((name, value))
  return tuple(static), dynamic


def _sample_keys(key, samples: int, n: int, name: str = "key") -> dict:
  """The per-sample noise keys (`sampling.sample_keys`) of one key or per-image keys."""
  if key is None:
    raise ValueError(f"{name} is required (a jax.random key) unless the randomness is injected")
  key, per_image = sampling.check_keys(key, n, name=name)
  return sampling.sample_keys(key, samples, per_image=per_image)


def _noise_level(value, name: str):
  """Checks a concrete noise level >= 0 and returns it as a float; a traced one is kept."""
  if not common.is_concrete(value):
    return value
  level = float(np.asarray(value))
  if not level >= 0:
    raise ValueError(f"{name} must be >= 0; got {level}")
  return level


def _noise_chunk(args, x, sigma):
  """Noise `[c, N, H, W, C]` for a chunk: injected, or drawn from per-sample (or per-sample
  and per-image) keys."""
  if "noise" in args:
    return args["noise"]
  return (sampling.normal_noise(args, x.shape, x.dtype)
          * sigma.reshape((1, -1) + (1,) * (x.ndim - 1)))


def _smooth_body(method, model, static_options, ops, args):
  variables, x, target, sigma, dynamic = ops
  noisy = x[None] + _noise_chunk(args, x, sigma)
  c = noisy.shape[0]
  stacked = noisy.reshape((c * x.shape[0],) + x.shape[1:])
  attr = method(model, variables, stacked, jnp.tile(target, c),
                **dict(static_options), **dynamic)
  attr = attr.reshape((c, x.shape[0]) + attr.shape[1:])
  return jnp.sum(attr, axis=0), jnp.sum(attr * attr, axis=0)


@functools.partial(xla.jit, static_argnames=("method", "model", "static_options"))
def _smooth_unit(operands, chunked, *, method, model, static_options):
  body = functools.partial(_smooth_body, method, model, static_options)
  return common.sum_over_chunks(body, operands, chunked)


def smoothgrad(method, model: common.Model, variables: common.PyTree, x: jax.Array,
               target: jax.Array | None = None, *, key: jax.Array | None = None,
               samples: int = 50, stdev: float | None = None,
               stdev_spread: float | None = None, kind: str = "mean",
               chunk: int | None = None, loop: str = "auto",
               noise: jax.Array | None = None, **method_options) -> jax.Array:
  """Averages any explainer over Gaussian-noised copies of the input (Captum NoiseTunnel).

  `a_s = method(x + e_s)`, `e_s ~ N(0, sigma^2)`, s = 1..samples, and
    * kind="mean":    mean_s a_s            (SmoothGrad; NoiseTunnel "smoothgrad")
    * kind="squared": mean_s a_s^2          (SmoothGrad-squared; "smoothgrad_sq")
    * kind="var":     mean_s a_s^2 - (mean_s a_s)^2, population variance
                      (VarGrad; "vargrad").
  `sigma` is either absolute (`stdev`, Captum's `stdevs`) or relative to each
  image's value range (`stdev_spread * (max(x_n) - min(x_n))`, the SmoothGrad
  paper and PAIR saliency; 0.15 if neither is given).

  The wrapped method keeps its own defaults: `smoothgrad(gradient, ...)` averages
  the signed gradient (the paper), whereas Captum's `NoiseTunnel(Saliency)`
  averages |gradient| = `smoothgrad(gradient, ..., abs=True)`.

  Args:
    method: an explainer `method(model, variables, x, target, **options)`, or
      its registry name when called as `xai_jax.explain.smoothgrad`; it must be
      per-example (the noisy copies are stacked into one batch of `chunk * N`
      images).
    model: Flax module or `apply(variables, x) -> logits` callable.
    variables: model variables.
    x: `float32[N, H, W, C]`.
    target: `int32[N]`; None -> predicted class of the clean input.
    key: `jax.random` key, or one key per image `key[N]` (image i's noise drawn from
      `key[i]` alone, as if explained alone; `sampling.check_keys`); required unless
      `noise` is given.
    samples: number of noisy copies per image.
    stdev: absolute noise standard deviation.
    stdev_spread: noise standard deviation relative to each image's range.
    kind: "mean", "squared" or "var".
    chunk: noisy copies per method call (memory bound); None -> default.
    loop: "python", "lax" or "auto" (see `common.run_chunked`).
    noise: optional injected noise `float32[N, samples, H, W, C]` (Captum's
      interleaved order), used as is instead of drawing from `key`.
    **method_options: keyword options of `method`. Array-valued options are
      passed through unchanged and must broadcast against the stacked batch
      (e.g. a `[1, H, W, C]` baseline).

  Returns:
    Attributions of the method's output shape per image (e.g. `float32[N, H, W, C]`);
    all NaN for an image whose traced target is out of range (see `common`).

  Raises:
    ValueError: on malformed inputs (also variables or channels that do not
      fit the model), an unknown kind / method, both or negative
      `stdev`/`stdev_spread`, or a missing or malformed key (an integer seed
      instead of `jax.random.key(seed)`).
  """
  method = _check_method(method)
  if kind not in KINDS:
    raise ValueError(f"unknown kind {kind!r}; valid: {', '.join(KINDS)}")
  common.check_positive_int(samples, "samples")
  x, target, valid = common.prepare(model, variables, x, target)
  if stdev is not None and stdev_spread is not None:
    raise ValueError("give either stdev (absolute) or stdev_spread (relative), not both")
  if stdev is None and stdev_spread is None:
    stdev_spread = 0.15
  if stdev is not None:
    stdev = _noise_level(stdev, "stdev")
  else:
    stdev_spread = _noise_level(stdev_spread, "stdev_spread")
  if stdev is not None:
    sigma = jnp.full((x.shape[0],), stdev, x.dtype)
  else:
    flat = x.reshape(x.shape[0], -1)
    sigma = stdev_spread * (jnp.max(flat, axis=1) - jnp.min(flat, axis=1))
  if noise is not None:
    noise = jnp.asarray(noise, x.dtype)
    if noise.shape != (x.shape[0], samples) + x.shape[1:]:
      raise ValueError(f"noise must have shape {(x.shape[0], samples) + x.shape[1:]} "
                       f"([N, samples, H, W, C]); got {noise.shape}")
    step_args = {"noise": jnp.swapaxes(noise, 0, 1)}
  else:
    step_args = _sample_keys(key, samples, x.shape[0])
  static_options, dynamic = _split_options(method_options)
  chunk = common.resolve_chunk(chunk, samples, x.shape)
  unit = functools.partial(_smooth_unit, method=method, model=model,
                           static_options=static_options)
  eager = functools.partial(_smooth_body, method, model, static_options)
  total, total_sq = common.run_chunked(unit, (variables, x, target, sigma, dynamic), step_args,
                                       chunk=chunk, loop=loop, eager_body=eager)
  mean = total / samples
  if kind == "mean":
    return common.nan_where_invalid(mean, valid)
  mean_sq = total_sq / samples
  if kind == "squared":
    return common.nan_where_invalid(mean_sq, valid)
  return common.nan_where_invalid(mean_sq - mean * mean, valid)


def _shap_body(grad_fn, model, ops, args):
  variables, x, target, baselines, sigma = ops
  # The dict's keys are static: a noise-free call compiles without noise.
  has_noise = "noise" in args or "keys" in args or "image_keys" in args
  noisy = x[None] + _noise_chunk(args, x, sigma) if has_noise else x[None]
  base = sampling.gather_references(baselines, args["indices"])  # [c, N, H, W, C]
  alpha = args["alphas"].reshape(args["alphas"].shape + (1,) * (x.ndim - 1))
  scaled = alpha * noisy + (1.0 - alpha) * base  # Captum's _scale_input
  c = scaled.shape[0]
  grad, _ = grad_fn(model, variables, scaled.reshape((c * x.shape[0],) + x.shape[1:]), target)
  grad = grad.reshape(scaled.shape)
  return jnp.sum((noisy - base) * grad, axis=0)


@functools.partial(xla.jit, static_argnames=("model",))
def _shap_unit(operands, chunked, *, model):
  body = functools.partial(_shap_body, common.target_gradient, model)
  return common.sum_over_chunks(body, operands, chunked)


def gradient_shap(model: common.Model, variables: common.PyTree, x: jax.Array,
                  target: jax.Array | None = None, *, baselines: jax.Array,
                  key: jax.Array | None = None, samples: int = 5, stdev: float = 0.0,
                  chunk: int | None = None, loop: str = "auto",
                  alphas: jax.Array | None = None, baseline_indices: jax.Array | None = None,
                  noise: jax.Array | None = None) -> jax.Array:
  """GradientShap with Captum 0.9 semantics (reference-semantics A.6).

  For each image and sample s: a baseline `b_s` drawn with replacement from
  `baselines`, a noisy input `x~_s = x + N(0, stdev^2)`, `alpha_s ~ U(0, 1)`, and
  `a_s = (x~_s - b_s) * grad f_t(alpha_s x~_s + (1 - alpha_s) b_s)`; the result is
  `mean_s a_s`. Note that the noisy input enters the difference, as in Captum.

  Args:
    model: Flax module or `apply(variables, x) -> logits` callable.
    variables: model variables.
    x: `float32[N, H, W, C]`.
    target: `int32[N]`; None -> predicted class.
    baselines: `float32[M, H, W, C]`, the reference distribution (M >= 1), or
      `float32[N, M, H, W, C]`, one reference set per image.
    key: `jax.random` key, or one key per image `key[N]` (image i's draws from `key[i]`
      alone, as if explained alone; `sampling.check_keys`); required unless everything
      random is injected.
    samples: samples per image (Captum's `n_samples`).
    stdev: absolute noise standard deviation (Captum's `stdevs`).
    chunk: samples per model call (memory bound); None -> default.
    loop: "python", "lax" or "auto" (see `common.run_chunked`).
    alphas: optional injected `float32[N, samples]` coefficients.
    baseline_indices: optional injected `int[N, samples]` rows of `baselines`.
    noise: optional injected `float32[N, samples, H, W, C]` noise.

  Returns:
    `float32[N, H, W, C]` attributions; all NaN for an image whose traced
    target is out of range (see `common`).

  Raises:
    ValueError: on malformed inputs (also variables or channels that do not
      fit the model) or injected arrays, or a missing or malformed key.
  """
  x, target, valid = common.prepare(model, variables, x, target)
  baselines = sampling.check_references(baselines, x, name="baselines", per_image=True)
  common.check_positive_int(samples, "samples")
  stdev = _noise_level(stdev, "stdev")
  noisy = not common.is_concrete(stdev) or stdev > 0
  step_args = sampling.expected_gradients_draws(
      key, samples=samples, references=baselines.shape[-x.ndim], point_shape=x.shape,
      dtype=x.dtype, smoothing=noisy, key_slots=GRADIENT_SHAP_KEY_SLOTS,
      indices=baseline_indices, alphas=alphas, noise=noise, indices_name="baseline_indices",
      smoothing_name="stdev")
  sigma = jnp.full((x.shape[0],), stdev, x.dtype)
  chunk = common.resolve_chunk(chunk, samples, x.shape)
  unit = functools.partial(_shap_unit, model=model)
  eager = functools.partial(_shap_body, common.jit_target_gradient, model)
  total = common.run_chunked(unit, (variables, x, target, baselines, sigma), step_args,
                             chunk=chunk, loop=loop, eager_body=eager)
  return common.nan_where_invalid(total / samples, valid)
