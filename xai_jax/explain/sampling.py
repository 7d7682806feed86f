"""Random draws of the keyed explainers: one key per batch or one key per image, and the
reference sets and draws of the expected-gradients methods (GradientSHAP, layer SHAP).

Every explainer that takes a `key` (`explain.takes_key`) accepts either one key for the
whole batch (`jax.random.key(seed)`, or a legacy `uint32[2]` key) or one key per image,
`key[N]` (a typed key array of shape `[N]`, e.g. `jax.vmap(jax.random.fold_in, (None, 0))(
key, indices)`, or a legacy `uint32[N, 2]`). With one key the draws are those each method
always made. With per-image keys, image i's draws come from `key[i]` alone and are those the
method makes when it explains image i alone with the single key `key[i]` (`draw_batch`;
LIME and Shapley value sampling draw per feature id instead, see them), so image i's result
does not depend on the other images of the batch: an evaluation split into batches of any
size gives every image the same result (`xai_jax.runner.evaluate`).

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


def check_keys(key, n: int, *, name: str = "key") -> tuple[Array, bool]:
  """Checks `key`: one PRNG key, or one per image of a batch of `n`.

  Shapes and dtypes only, so traced keys (jit, vmap over keys) pass.

  Args:
    key: a single key (typed `jax.random.key(seed)` of shape `()`, or a legacy `uint32[2]`)
      or `n` keys (a typed key array of shape `[n]`, or a legacy `uint32[n, 2]`).
    n: the batch size N.
    name: the argument's name, for the messages.

  Returns:
    `(key, per_image)`: the key unchanged when single, per-image keys as a typed key array
    `[n]` (legacy keys wrapped), and whether they are per image.

  Raises:
    ValueError: for None, an integer seed or an array that is neither one key nor `n`.
  """
  dtype, shape = getattr(key, "dtype", None), getattr(key, "shape", None)
  if dtype is not None and shape is not None and len(shape) >= 1:
    typed = jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)
    legacy = (not typed and np.dtype(dtype) == np.uint32 and len(shape) == 2
              and tuple(shape[1:]) == tuple(jax.eval_shape(lambda: jax.random.PRNGKey(0)).shape))
    if (typed and len(shape) == 1) or legacy:
      if shape[0] != n:
        raise ValueError(f"{name} must be a jax.random.key(...) or one key per image "
                         f"(a key array of shape [{n}]); got {shape[0]} keys")
      return (key if typed else jax.random.wrap_key_data(key)), True
  try:
    return common.check_key(key, name=name), False
  except ValueError as error:
    raise ValueError(f"{error}; or one key per image: a key array of shape [{n}]") from None


def split(key: Array, num: int, *, per_image: bool) -> list[Array]:
  """`jax.random.split(key, num)` as a list, per image (each entry `[N]`) for per-image keys."""
  if per_image:
    keys = jax.vmap(lambda k: jax.random.split(k, num))(key)
    return [keys[:, i] for i in range(num)]
  return list(jax.random.split(key, num))


def draw_batch(draw, key: Array, n: int, *, per_image: bool):
  """`draw(key, count)` for a batch: `draw(key, n)`, or with per-image keys image i's rows of
  `draw(key[i], 1)`, i.e. what explaining image i alone with the key `key[i]` draws.

  Args:
    draw: `(key, count) -> pytree` of arrays whose leading axis has `count` rows.
    key: from `check_keys`.
    n: the batch size N.
    per_image: from `check_keys`.

  Returns:
    The pytree with leading axes `N`.
  """
  if not per_image:
    return draw(key, n)
  return jax.vmap(lambda k: jax.tree_util.tree_map(lambda a: a[0], draw(k, 1)))(key)


def sample_keys(key: Array, samples: int, *, per_image: bool) -> dict[str, Array]:
  """The noise keys of `samples` samples, as a step argument of `common.run_chunked`.

  Returns:
    `{"keys": split(key, samples)}` (one key per sample, the noise of sample s for the whole
    batch drawn from `keys[s]`), or with per-image keys `{"image_keys": [samples, N]}`, entry
    `[s, i]` being `split(key[i], samples)[s]` (the noise of image i alone); see
    `normal_noise`.
  """
  if per_image:
    return {"image_keys": jnp.swapaxes(jax.vmap(lambda k: jax.random.split(k, samples))(key),
                                       0, 1)}
  return {"keys": jax.random.split(key, samples)}


def normal_noise(args: dict, shape: tuple[int, ...], dtype) -> Array:
  """Standard normal noise `[c, N, ...]` for a chunk of `sample_keys` (`shape = (N, ...)`).

  With `"keys"` (one per sample) sample s's noise is `normal(keys[s], shape)`; with
  `"image_keys"` (`[c, N]`) image i's is `normal(image_keys[s, i], (1, ...))[0]`, what the
  single-key draw gives a batch of one image.
  """
  if "image_keys" in args:
    one = lambda k: jax.random.normal(k, (1,) + tuple(shape[1:]), dtype)[0]
    return jax.vmap(jax.vmap(one))(args["image_keys"])
  return jax.vmap(lambda k: jax.random.normal(k, shape, dtype))(args["keys"])


def check_references(references, x: Array, *, name: str, per_image: bool = False) -> Array:
  """Validates a reference set (GradientSHAP's baselines, shap's background).

  Args:
    references: `float[M, H, W, C]`, M >= 1 images shaped like those of `x`; with
      `per_image`, also `float[N, M, H, W, C]`, one set of M per image of `x`.
    x: `float[N, H, W, C]`, the explained images.
    name: the argument's name, for the messages.
    per_image: whether one set per image is accepted.

  Returns:
    `references` as an array of `x`'s dtype.

  Raises:
    ValueError: for a shape other than `[M, H, W, C]` (or `[N, M, H, W, C]`) with M >= 1,
      or (when concrete) NaN or infinite values.
  """
  concrete = common.is_concrete(references)
  if concrete:
    references = common.concrete_array(references)
  shared = references.ndim == x.ndim
  sets = per_image and references.ndim == x.ndim + 1 and references.shape[0] == x.shape[0]
  if ((not shared and not sets) or references.shape[-x.ndim + 1:] != x.shape[1:]
      or references.shape[-x.ndim] < 1):
    image = ", ".join(map(str, x.shape[1:]))
    raise ValueError(f"{name} must be [M, {image}] with M >= 1"
                     + (f" or [N = {x.shape[0]}, M, {image}] (one set per image)"
                        if per_image else "") + f"; got shape {references.shape}")
  if concrete and not common.all_finite(references):
    raise ValueError(f"{name} must be finite; got NaN or infinite values")
  return references.astype(x.dtype)


def gather_references(references: Array, indices: Array) -> Array:
  """The references of a chunk, `[c, N, ...]`: `references[indices[s, i]]` for a shared set
  `[M, ...]`, `references[i, indices[s, i]]` for one set per image `[N, M, ...]`.

  Args:
    references: from `check_references`.
    indices: `int[c, N]`, sample-major rows of the sets.
  """
  if references.ndim == indices.ndim + 3:  # [N, M, H, W, C]
    return references[jnp.arange(indices.shape[1])[None, :], indices]
  return references[indices]


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
    key: `jax.random` key, or one per image (`check_keys`); required unless every draw
      needed is injected.
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
    `"alphas"` `[S, N]`, and when smoothing, `"noise"` `[S, N, ...]` (injected) or the
    noise keys of `sample_keys` (`"keys"`, S keys, or `"image_keys"`, `[S, N]`).

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
  keys, per = None, False
  if key is not None:
    key, per = check_keys(key, n)
    keys = dict(zip(key_slots, split(key, 3, per_image=per)))
  if indices is None:
    indices = draw_batch(lambda k, count: jax.random.randint(k, (count, samples), 0, references),
                         keys["indices"], n, per_image=per)
  indices = _check_injected(indices_name, indices, (n, samples), integer=True)
  if common.is_concrete(indices) and (
      int(np.min(indices)) < 0 or int(np.max(indices)) >= references):
    raise ValueError(f"{indices_name} must lie in [0, {references})")
  if alphas is None:
    alphas = draw_batch(lambda k, count: jax.random.uniform(k, (count, samples), dtype),
                        keys["alphas"], n, per_image=per)
  alphas = _check_injected("alphas", jnp.asarray(alphas, dtype), (n, samples), integer=False)
  step_args = {"indices": jnp.swapaxes(indices, 0, 1).astype(jnp.int32),
               "alphas": jnp.swapaxes(alphas, 0, 1)}
  if noise is not None:
    noise = _check_injected("noise", jnp.asarray(noise, dtype), (n, samples) + point_shape[1:],
                            integer=False)
    step_args["noise"] = jnp.swapaxes(noise, 0, 1)
  elif smoothing:
    step_args.update(sample_keys(keys["noise"], samples, per_image=per))
  return step_args


__all__ = ["DRAWS", "check_keys", "check_references", "draw_batch", "expected_gradients_draws",
           "gather_references", "normal_noise", "sample_keys", "split"]
