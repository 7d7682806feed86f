"""The reference sets and random draws of the expected-gradients methods (GradientSHAP, layer SHAP).

Both methods average, over samples s = 1..S per image n, gradients at points
`alpha_s * x~ + (1 - alpha_s) * b_s` between the (optionally noised) explained point
`x~` and a reference `b_s` drawn uniformly with replacement from a reference set:
  * Erion, Janizek, Sturmfels, Lundberg & Lee, "Improving performance of deep learning
    models with axiomatic attribution priors and expected gradients" (Nature Machine
    Intelligence 2021), https://arxiv.org/abs/1906.10670 (expected gradients; shap's
    `GradientExplainer`, used by `explain.layer_shap`);
  * Lundberg & Lee, "A Unified Approach to Interpreting Model Predictions" (NeurIPS
    2017), https://arxiv.org/abs/1705.07874 (GradientSHAP as Captum implements it,
    `explain.noise.gradient_shap`).

Per image and sample they draw a reference index, `alpha ~ U(0, 1)` and, when the
point is smoothed, Gaussian noise. Each draw can be injected instead (for parity with
Captum and shap, whose torch / numpy streams cannot be replayed in JAX), entry
`[n, s]` belonging to image n, sample s.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from xai_jax.explain import common

Array = jax.Array

DRAWS = ("indices", "alphas", "noise")
"""What is drawn; a method's `key_slots` orders them over `jax.random.split(key, 3)`."""


def check_references(references, x: Array, *, name: str) -> Array:
  """Validates a reference set (GradientSHAP's baselines, shap's background).

  Args:
    references: `float[M, H, W, C]`, M >= 1 images shaped like those of `x`.
    x: `float[N, H, W, C]`, the explained images.
    name: the argument's name, for the messages.

  Returns:
    `references` as an array of `x`'s dtype.

  Raises:
    ValueError: for a shape other than `[M, H, W, C]` with M >= 1, or (when concrete)
      NaN or infinite values.
  """
  concrete = common.is_concrete(references)
  if concrete:
    references = common.concrete_array(references)
  if (references.ndim != x.ndim or references.shape[1:] != x.shape[1:]
      or references.shape[0] < 1):
    raise ValueError(f"{name} must be [M, {', '.join(map(str, x.shape[1:]))}] with M >= 1; "
                     f"got shape {references.shape}")
  if concrete and not common.all_finite(references):
    raise ValueError(f"{name} must be finite; got NaN or infinite values")
  return references.astype(x.dtype)


def _check_injected(name: str, value, shape: tuple[int, ...], *, integer: bool) -> Array:
  if common.is_concrete(value):
    value = common.concrete_array(value)
  if value.shape != shape or (integer and not jnp.issubdtype(value.dtype, jnp.integer)):
    kind = "int" if integer else "float"
    raise ValueError(f"{name} must be {kind} {list(shape)}; got {value.dtype}{list(value.shape)}")
  return value


def expected_gradients_draws(key: Array | None, *, samples: int, references: int,
                             point_shape: tuple[int, ...], dtype, smoothing: bool,
                             key_slots: tuple[str, str, str], indices: Array | None = None,
                             alphas: Array | None = None, noise: Array | None = None,
                             indices_name: str, smoothing_name: str) -> dict[str, Array]:
  """The per-sample draws of an expected-gradients method, drawn from `key` or injected.

  `key` is split in three, `jax.random.split(key, 3)[i]` going to the draw
  `key_slots[i]`: the reference indices (`randint` over `[0, references)`), the
  coefficients (`uniform` on [0, 1)) and the noise keys (`split(., samples)`, one per
  sample, the noise itself being drawn chunk by chunk by the method).

  Args:
    key: `jax.random` key; required unless every draw needed is injected.
    samples: S, samples per image.
    references: M, the size of the reference set.
    point_shape: `(N, ...)`, the shape of the smoothed point (image or activation).
    dtype: float dtype of the coefficients and the noise.
    smoothing: whether noise is added (True for a traced noise level).
    key_slots: a permutation of `DRAWS`, fixed per method (results with a given key
      depend on it).
    indices: optional injected `int[N, S]` rows of the reference set.
    alphas: optional injected `float[N, S]` coefficients.
    noise: optional injected `float[N, S, ...]` noise (`point_shape` per sample), used as
      is (unscaled).
    indices_name: the method's name for `indices`, for the messages.
    smoothing_name: the method's name for the noise level, for the messages.

  Returns:
    Sample-major step arguments for `common.run_chunked`: `"indices"` `int32[S, N]`,
    `"alphas"` `[S, N]`, and when smoothing, `"noise"` `[S, N, ...]` (injected) or
    `"keys"` (S keys).

  Raises:
    ValueError: for a missing or malformed key, or injected draws of the wrong shape or
      dtype, or indices outside `[0, references)`.
  """
  if sorted(key_slots) != sorted(DRAWS):
    raise ValueError(f"key_slots must order {DRAWS}; got {key_slots}")
  n = point_shape[0]
  needs_key = alphas is None or indices is None or (noise is None and smoothing)
  if needs_key and key is None:
    raise ValueError(f"key is required unless alphas, {indices_name} (and noise when "
                     f"{smoothing_name} > 0) are injected")
  keys = None
  if key is not None:
    keys = dict(zip(key_slots, jax.random.split(common.check_key(key), 3)))
  if indices is None:
    indices = jax.random.randint(keys["indices"], (n, samples), 0, references)
  indices = _check_injected(indices_name, indices, (n, samples), integer=True)
  if common.is_concrete(indices) and (
      int(np.min(indices)) < 0 or int(np.max(indices)) >= references):
    raise ValueError(f"{indices_name} must lie in [0, {references})")
  if alphas is None:
    alphas = jax.random.uniform(keys["alphas"], (n, samples), dtype)
  alphas = _check_injected("alphas", jnp.asarray(alphas, dtype), (n, samples), integer=False)
  step_args = {"indices": jnp.swapaxes(indices, 0, 1).astype(jnp.int32),
               "alphas": jnp.swapaxes(alphas, 0, 1)}
  if noise is not None:
    noise = _check_injected("noise", jnp.asarray(noise, dtype), (n, samples) + point_shape[1:],
                            integer=False)
    step_args["noise"] = jnp.swapaxes(noise, 0, 1)
  elif smoothing:
    step_args["keys"] = jax.random.split(keys["noise"], samples)
  return step_args


__all__ = ["DRAWS", "check_references", "expected_gradients_draws"]
