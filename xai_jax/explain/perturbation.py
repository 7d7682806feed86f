"""Perturbation explainers: occlusion, feature ablation, Shapley value sampling, LIME, KernelSHAP.

Each method evaluates the target logit (raw, no softmax; Captum's convention) of P perturbed
copies of the batch and reduces the `[P, N]` outputs to attributions shaped like `x`. The
copies are built on the device from `x`, a fill (baseline) and a small per-perturbation
description (a window position, a feature id, a permutation step, a binary coalition),
`chunk` perturbations (`chunk * N` rows) per model call, in the two loop forms of
`xai_jax.explain.common` (`loop="python"`: a jitted forward pass per chunk, shared by every
method with the same rows per call; `loop="lax"`: one jitted `lax.map` over the chunks). Random
draws come from an explicit `key` (one for the batch, or one per image: `sampling.check_keys`)
and can be injected instead (`permutations`, `coalitions`), so that tests replay a reference's
draws exactly.

Features are given by an integer `feature_mask`, `[H, W]` or `[N or 1, H, W]` (one id per
pixel, broadcast over channels) or `[N or 1, H, W, 1 or C]`; the features are the ids
`0 .. F - 1`, `F = max id + 1` (or `num_features`, required when the mask is traced under
`jax.jit`). `feature_mask=None` is Captum's default, every input element its own feature
(numbered `c * H * W + h * W + w` as in Captum's NCHW layout), and a method name
("quickshift", "slic", "felzenszwalb") segments `x` on the host (`segmentation.segment`),
which needs a concrete `x`. A feature's attribution is painted onto all its elements, so
with a mask broadcast over channels every channel carries the same value (Captum does the
same). Unlike Captum's Lime, a mask whose smallest id is not 0 is not shifted.

Every method runs under `jax.jit` and `jax.vmap` (x, target, variables, baselines, masks,
keys and injected draws traced or not), except the host-side segmentation.

Semantics (Captum 0.9 unless stated; the reference's numerical quirks noted per method):
  * occlusion: for each element, the mean over the windows w that cover it of
    `f(x) - f(x with w set to the baseline)` (Zeiler & Fergus 2014,
    https://arxiv.org/abs/1311.2901).
  * feature_ablation: `f(x) - f(x with feature k set to the baseline)` on feature k.
  * shapley_sampling: marginal contributions along random feature orders, averaged
    (Castro, Gomez & Tejada 2009, "Polynomial calculation of the Shapley value based on
    sampling"; Strumbelj & Kononenko 2014).
  * lime: a weighted linear model on binary coalitions (Ribeiro, Singh & Guestrin 2016,
    https://arxiv.org/abs/1602.04938), with the `lime` package's defaults (`reference="lime"`)
    or Captum's (`reference="captum"`).
  * kernel_shap: Captum's KernelShap (Lundberg & Lee 2017, https://arxiv.org/abs/1705.07874).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from xai_jax import xla
from xai_jax.explain import common, sampling, segmentation, surrogate

REFERENCES = ("lime", "captum")
DISTANCES = ("cosine", "euclidean")
# Captum KernelShap's sample weight of the all-kept and all-hidden coalitions.
KERNEL_SHAP_INF_WEIGHT = 1e6
# Per-reference LIME defaults: samples, kernel width, penalty (L2 ridge / L1 Lasso).
LIME_DEFAULTS = {
    "lime": {"samples": 1000, "kernel_width": 0.25, "alpha": 1.0},
    "captum": {"samples": 25, "kernel_width": 1.0, "alpha": 0.01},
}
# LIME ("lime" reference, per-image keys) rounds a concrete mask's feature count up to a
# multiple of this, so that batches with other superpixel counts reuse the compiled sweep and
# fit (the extra ids are absent from every image: left out of the fit, the result unchanged).
LIME_FEATURE_BUCKET = 16


def bucketed_features(features: int, bucket: int = LIME_FEATURE_BUCKET) -> int:
  """`features` rounded up to a multiple of `bucket` (>= 1)."""
  return -(-features // bucket) * bucket


# ---------------------------------------------------------------------------
# Option checks.
# ---------------------------------------------------------------------------


def _number(value, name: str, *, positive: bool) -> float:
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
    raise ValueError(f"{name} must be a Python number; got {value!r}")
  value = float(value)
  if not (value > 0 if positive else value >= 0) or not math.isfinite(value):
    raise ValueError(f"{name} must be {'> 0' if positive else '>= 0'} and finite; got {value}")
  return value


def _choice(value, name: str, valid: tuple[str, ...]) -> str:
  if value not in valid:
    raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(valid)}")
  return value


def check_static_options(name: str, options: dict) -> None:
  """Checks the options of perturbation method `name` that need no model or data.

  Used by `explain.check_options`. Raises ValueError naming the option.
  """
  if name == "occlusion" and "sliding_window_shapes" in options:
    _parse_window(options["sliding_window_shapes"], options.get("strides"))
  if options.get("num_features") is not None:
    common.check_positive_int(options["num_features"], "num_features")
  if isinstance(options.get("feature_mask"), str):
    _choice(options["feature_mask"], "feature_mask method", segmentation.METHODS)
  if name == "lime":
    _choice(options.get("reference", "lime"), "reference", REFERENCES)
    _choice(options.get("distance", "cosine"), "distance", DISTANCES)
    if options.get("kernel_width") is not None:
      _number(options["kernel_width"], "kernel_width", positive=True)
    if options.get("alpha") is not None:
      _number(options["alpha"], "alpha", positive=False)


# ---------------------------------------------------------------------------
# Feature masks.
# ---------------------------------------------------------------------------


def _default_mask(x_shape) -> tuple[jax.Array, int]:
  """Captum's default: every element its own feature, ids in NCHW order."""
  _, h, w, c = x_shape
  ids = np.arange(c * h * w, dtype=np.int32).reshape(c, h, w).transpose(1, 2, 0)
  return common.concrete_array(ids[None]), c * h * w


def feature_mask_of(feature_mask, x: jax.Array, num_features: int | None = None
                    ) -> tuple[jax.Array, int]:
  """Validates a feature mask for `x` and returns `(int32[M, H, W, Cm], F)`.

  Args:
    feature_mask: None (every element its own feature), a segmentation method name
      (`segmentation.METHODS`, run on the host on `x`), or an integer array `[H, W]`,
      `[N or 1, H, W]` or `[N or 1, H, W, 1 or C]` of ids >= 0.
    x: `float[N, H, W, C]`.
    num_features: F, the number of feature ids `0 .. F - 1`; required for a traced mask;
      for a concrete one it defaults to `max id + 1` and must exceed every id.

  Returns:
    The mask (M in {1, N}, Cm in {1, C}) and F.

  Raises:
    ValueError: for a malformed mask, negative or too large ids, or a traced mask
      without `num_features`.
  """
  n, h, w, c = x.shape
  if num_features is not None:
    num_features = common.check_positive_int(num_features, "num_features")
  if feature_mask is None:
    mask, count = _default_mask(x.shape)
    if num_features is not None and num_features < count:
      raise ValueError(f"num_features={num_features} is less than the {count} elements of "
                       f"the default (per-element) feature mask")
    return mask, num_features or count
  if isinstance(feature_mask, str):
    _choice(feature_mask, "feature_mask method", segmentation.METHODS)
    if not common.is_concrete(x):
      raise ValueError(f"feature_mask={feature_mask!r} segments x on the host and needs a "
                       f"concrete x (not traced under jax.jit); compute the masks outside "
                       f"(explain.segment) and pass them as feature_mask")
    feature_mask = segmentation.segment(np.asarray(x), feature_mask)
  concrete = common.is_concrete(feature_mask)
  # A concrete mask is reshaped in NumPy: jnp operations inside a trace would stage it.
  mask = np.asarray(feature_mask) if concrete else feature_mask
  if not jnp.issubdtype(mask.dtype, jnp.integer):
    raise ValueError(f"feature_mask must be an integer array; got dtype {mask.dtype}")
  if mask.ndim == 2:
    mask = mask[None]
  if mask.ndim == 3:
    mask = mask[..., None]
  if (mask.ndim != 4 or mask.shape[0] not in (1, n) or mask.shape[1:3] != (h, w)
      or mask.shape[3] not in (1, c)):
    raise ValueError(f"feature_mask must have shape [H, W], [N or 1, H, W] or "
                     f"[N or 1, H, W, 1 or C] "
                     f"for x of shape {tuple(x.shape)}; got {tuple(jnp.shape(feature_mask))}")
  if not concrete:
    if num_features is None:
      raise ValueError("a traced feature_mask needs num_features (the number of feature ids "
                       "0 .. F-1), which fixes the shapes under jax.jit")
    return mask.astype(jnp.int32), num_features
  low, high = int(mask.min()), int(mask.max())
  if low < 0:
    raise ValueError(f"feature_mask ids must be >= 0; got a minimum of {low}")
  if num_features is not None and high >= num_features:
    raise ValueError(f"feature_mask has id {high} but num_features={num_features}")
  return common.concrete_array(mask.astype(np.int32)), num_features or high + 1


def _paint(values: jax.Array, mask: jax.Array, fill_value) -> jax.Array:
  """Per-feature values onto the mask's elements.

  Args:
    values: `[..., K, F]` (K in {1, N}).
    mask: `int[M, H, W, Cm]` (M in {1, N}); ids outside `[0, F)` get `fill_value`.

  Returns:
    `[..., max(K, M), H, W, Cm]`.
  """
  features = values.shape[-1]
  flat = mask.reshape(mask.shape[0], -1)
  flat = jnp.where(flat < 0, features, flat)  # out of range, not wrapped around
  flat = flat.reshape((1,) * (values.ndim - 2) + flat.shape)
  out = jnp.take_along_axis(values, flat, axis=-1, mode="fill", fill_value=fill_value)
  return out.reshape(out.shape[:-1] + mask.shape[1:])


def _group_sums(values: jax.Array, mask: jax.Array, features: int, *, per_channel: bool):
  """Sums of `values [N, H, W, C]` over each image's feature elements.

  Returns `[N, F, C]` (sums per channel) if `per_channel`, else `[N, F]`. Elements whose id
  lies outside `[0, F)` are left out.
  """
  n, _, _, c = values.shape
  ids = jnp.broadcast_to(mask, (n,) + mask.shape[1:3] + (mask.shape[3],))
  ids = jnp.broadcast_to(ids, values.shape)
  valid = (ids >= 0) & (ids < features)
  key = jnp.arange(n).reshape(n, 1, 1, 1) * features + ids
  if per_channel:
    key = key * c + jnp.arange(c)
    segments = n * features * c
  else:
    segments = n * features
  key = jnp.where(valid, key, segments)  # dropped by segment_sum
  sums = jax.ops.segment_sum(values.reshape(-1), key.reshape(-1), num_segments=segments)
  return sums.reshape((n, features, c) if per_channel else (n, features))


def _present(mask: jax.Array, n: int, features: int) -> jax.Array:
  """`bool[N, F]`: feature f has at least one element in image n."""
  ones = jnp.ones((n,) + mask.shape[1:], jnp.float32)
  return _group_sums(ones, mask, features, per_channel=False) > 0


def _segment_means(x: jax.Array, mask: jax.Array, features: int) -> jax.Array:
  """Each element replaced by the mean of its channel over its feature (lime's hide_color=None)."""
  sums = _group_sums(x, mask, features, per_channel=True)
  counts = _group_sums(jnp.ones_like(x), mask, features, per_channel=True)
  means = sums / jnp.maximum(counts, 1)  # [N, F, C]
  n, h, w, c = x.shape
  ids = jnp.broadcast_to(jnp.broadcast_to(mask, (n, h, w, mask.shape[3])), x.shape)
  ids = jnp.clip(ids, 0, features - 1)
  return jnp.take_along_axis(means[:, None, None, :, :], ids[..., None, :], axis=3)[..., 0, :]


# ---------------------------------------------------------------------------
# The forward sweep: target logits of every perturbation, chunk by chunk.
# ---------------------------------------------------------------------------


def _sweep_body(logits_fn, model, build, ops, spec):
  """Target logits `[c, N]` of one chunk of c perturbations (plain JAX)."""
  variables, target, operands = ops
  rows = build(operands, spec)  # [c, N, H, W, C]
  c, n = rows.shape[:2]
  out = logits_fn(model, variables, rows.reshape((c * n,) + rows.shape[2:]), jnp.tile(target, c))
  return out.reshape(c, n)


@functools.partial(xla.jit, static_argnames=("model", "build"))
def _sweep_unit(ops, chunked, *, model, build):
  body = functools.partial(_sweep_body, common.target_logits, model, build, ops)
  num = jax.tree_util.tree_leaves(chunked)[0].shape[0]
  if num == 1:
    return body(jax.tree_util.tree_map(lambda a: a[0], chunked))[None]
  return jax.lax.map(body, chunked)


def _sweep(build, model, variables, x, target, operands, specs, *, chunk, loop) -> jax.Array:
  """Target logits of P perturbations of the batch, `float[P, N]`.

  `build(operands, spec_chunk) -> rows [c, N, H, W, C]` is a module-level function (static
  under jit); `specs` is a pytree of `[P, ...]` arrays describing each perturbation. The
  chunking mirrors `common.run_chunked`, collecting outputs instead of summing them.
  """
  loop = common.resolve_loop(loop)
  steps = jax.tree_util.tree_leaves(specs)[0].shape[0]
  chunk = common.resolve_chunk(chunk, steps, x.shape)
  full, rest = divmod(steps, chunk)
  ops = (variables, target, operands)
  unit = functools.partial(_sweep_unit, model=model, build=build)
  eager = functools.partial(_sweep_body, common.jit_target_logits, model, build, ops)

  def piece(lo, num, size):
    return jax.tree_util.tree_map(
        lambda a: a[lo:lo + num * size].reshape((num, size) + a.shape[1:]), specs)

  outputs = []
  if full and loop == "lax":
    outputs.append(unit(ops, piece(0, full, chunk)).reshape(full * chunk, -1))
  elif full:
    for i in range(full):
      outputs.append(eager(jax.tree_util.tree_map(lambda a: a[i * chunk:(i + 1) * chunk],
                                                  specs)))
  if rest:
    last = jax.tree_util.tree_map(lambda a: a[full * chunk:], specs)
    outputs.append(eager(last) if loop == "python" else unit(ops, piece(full * chunk, 1, rest))[0])
  return outputs[0] if len(outputs) == 1 else jnp.concatenate(outputs)


def _rows(on: jax.Array, x: jax.Array, fill: jax.Array) -> jax.Array:
  """`x` where `on [c, M, H, W, Cm]` is true, `fill` elsewhere: `[c, N, H, W, C]`."""
  return jnp.where(on, x[None], fill[None])


def _build_occlusion(operands, start):
  """Rows with window w at `start[w]` (int[c, 3], (h, w, channel)) set to the baseline."""
  x, baseline, window = operands
  inside = []
  for axis in range(3):
    position = jnp.arange(x.shape[axis + 1])
    low = start[:, axis:axis + 1]
    inside.append((position >= low) & (position < low + window[axis]))  # [c, D]
  hidden = (inside[0][:, :, None, None] & inside[1][:, None, :, None]
            & inside[2][:, None, None, :])
  return _rows(~hidden[:, None], x, baseline)


def _build_ablation(operands, feature):
  """Rows with feature `feature[p]` (int[c]) set to the baseline."""
  x, baseline, mask = operands
  return _rows(mask[None] != feature.reshape(-1, 1, 1, 1, 1), x, baseline)


def _build_shapley(operands, spec):
  """Rows with the first `step + 1` features of permutation `sample` taken from x (ranks
  `[S, 1 or N, F]`: one order for the batch, or one per image)."""
  x, baseline, mask, ranks = operands
  kept = ranks[spec["sample"]] <= spec["step"][:, None, None]  # [c, 1 or N, F]
  return _rows(_paint(kept, mask, False), x, baseline)


def _build_coalitions(operands, kept):
  """Rows with the features of each image's coalition `kept [c, N, F]` taken from x."""
  x, fill, mask = operands
  return _rows(_paint(kept, mask, False), x, fill)


def _finish(painted: jax.Array, x: jax.Array, valid) -> jax.Array:
  return common.nan_where_invalid(jnp.broadcast_to(painted, x.shape).astype(x.dtype), valid)


# ---------------------------------------------------------------------------
# Occlusion and feature ablation.
# ---------------------------------------------------------------------------


def _sizes(value) -> tuple:
  if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
    return (int(value),)
  try:
    return tuple(value)
  except TypeError:
    raise ValueError(f"expected an int or a tuple of ints; got {value!r}") from None


def _parse_window(sliding_window_shapes, strides) -> tuple[tuple, tuple]:
  """(window of 2 or 3 sizes, stride of 3) from the options, checked for form only."""
  window = _sizes(sliding_window_shapes)
  if len(window) not in (2, 3) or not all(
      isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 1 for s in window):
    raise ValueError(f"sliding_window_shapes must be (h, w) (all channels) or (h, w, c) of "
                     f"positive ints; got {sliding_window_shapes!r}")
  if strides is None:
    return tuple(int(s) for s in window), (1, 1, 1)
  stride = _sizes(strides)
  if len(stride) == 1:
    stride = stride * 3
  elif len(stride) == 2:
    stride = stride + (1,)
  if len(stride) != 3 or not all(
      isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 1 for s in stride):
    raise ValueError(f"strides must be a positive int, (h, w) or (h, w, c); got {strides!r}")
  return tuple(int(s) for s in window), tuple(int(s) for s in stride)


def _window_geometry(sliding_window_shapes, strides, dims) -> tuple[tuple, tuple, tuple]:
  """(window, stride, count) per axis (H, W, C), Captum's rules and assertions."""
  window, stride = _parse_window(sliding_window_shapes, strides)
  window = window + ((dims[2],) if len(window) == 2 else ())
  for axis, name in enumerate(("height", "width", "channels")):
    if window[axis] > dims[axis]:
      raise ValueError(f"sliding window {window} exceeds the input's {name} ({dims[axis]})")
    if window[axis] < dims[axis] and stride[axis] > window[axis]:
      raise ValueError(f"stride {stride[axis]} exceeds the window ({window[axis]}) along "
                       f"{name}: some elements would never be occluded")
  count = tuple(math.ceil((dims[a] - window[a]) / stride[a]) + 1 for a in range(3))
  return window, stride, count


def occlusion(model: common.Model, variables: common.PyTree, x: jax.Array,
              target: jax.Array | None = None, *, sliding_window_shapes, strides=None,
              baseline=None, chunk: int | None = None, loop: str = "auto") -> jax.Array:
  """Occlusion with Captum's `Occlusion` semantics, all windows as batched forward passes.

  A window slides over the image with the given strides, starting at 0 on every axis;
  `ceil((D - window) / stride) + 1` positions per axis, so the last one may extend past the
  border and is clipped there, as in Captum. Each element's attribution is the mean, over
  the windows covering it, of `f_t(x) - f_t(x with the window set to the baseline)`.

  Args:
    model: Flax module or `apply(variables, x) -> logits` callable.
    variables: model variables.
    x: `float32[N, H, W, C]`.
    target: `int32[N]` class per image; None -> predicted class.
    sliding_window_shapes: `(h, w)` (the window spans all channels, the usual choice) or
      `(h, w, c)`; Captum's `(c, h, w)` in NHWC order.
    strides: None (1), an int for every axis, `(h, w)` or `(h, w, c)`. A stride larger
      than the window (where the window is smaller than the axis) is refused, as in Captum.
    baseline: None (0), a scalar or an array broadcasting to `x`.
    chunk: windows per model call (`chunk * N` rows); None -> `common.default_chunk`.
    loop: "python", "lax" or "auto" (see `common`).

  Returns:
    `float32[N, H, W, C]`; all NaN for an image whose traced target is out of range.
    (Captum returns float32 even for float64 inputs: it divides in float32.)

  Raises:
    ValueError: on malformed inputs, windows or strides.
  """
  x, target, valid = common.prepare(model, variables, x, target)
  baseline = common.check_like(baseline, x, "baseline")
  window, stride, count = _window_geometry(sliding_window_shapes, strides, x.shape[1:])
  starts = [np.arange(k) * s for k, s in zip(count, stride)]
  grid = np.stack(np.meshgrid(*starts, indexing="ij"), axis=-1).reshape(-1, 3)
  outputs = _sweep(_build_occlusion, model, variables, x, target,
                   (x, baseline, jnp.asarray(window, jnp.int32)),
                   jnp.asarray(grid, jnp.int32), chunk=chunk, loop=loop)
  f_x = common.jit_target_logits(model, variables, x, target)
  differences = (f_x[None] - outputs).reshape(count + (x.shape[0],))
  # Window k along an axis covers [start_k, start_k + size): indicator matrices per axis.
  covers = [(np.arange(d)[None] >= s[:, None]) & (np.arange(d)[None] < s[:, None] + size)
            for d, s, size in zip(x.shape[1:], starts, window)]
  covers = [c.astype(np.float64) for c in covers]
  total = jnp.einsum("aben,ah,bw,ec->nhwc", differences, *[jnp.asarray(c, x.dtype)
                                                          for c in covers],
                     precision=jax.lax.Precision.HIGHEST)
  windows_per_element = np.einsum("ah,bw,ec->hwc", *covers)
  return _finish(total / jnp.asarray(windows_per_element, x.dtype), x, valid)


def feature_ablation(model: common.Model, variables: common.PyTree, x: jax.Array,
                     target: jax.Array | None = None, *, feature_mask=None, baseline=None,
                     num_features: int | None = None, chunk: int | None = None,
                     loop: str = "auto") -> jax.Array:
  """Feature ablation with Captum's `FeatureAblation` semantics.

  Feature k's attribution, painted onto its elements, is `f_t(x) - f_t(x with feature k
  set to the baseline)`. With a concrete mask only the ids that occur are ablated (as
  Captum); with a traced one every id `0 .. num_features - 1`.

  Args:
    model: Flax module or `apply(variables, x) -> logits` callable.
    variables: model variables.
    x: `float32[N, H, W, C]`.
    target: `int32[N]`; None -> predicted class.
    feature_mask: see the module docstring (None: every element its own feature).
    baseline: None (0), a scalar or an array broadcasting to `x`.
    num_features: number of feature ids; required for a traced mask.
    chunk: ablated features per model call; None -> default.
    loop: "python", "lax" or "auto".

  Returns:
    `float32[N, H, W, C]`; NaN for an image whose traced target is out of range and for
    elements whose traced id lies outside `[0, num_features)`.

  Raises:
    ValueError: on malformed inputs or masks.
  """
  x, target, valid = common.prepare(model, variables, x, target)
  baseline = common.check_like(baseline, x, "baseline")
  mask, features = feature_mask_of(feature_mask, x, num_features)
  if common.is_concrete(mask):
    ids, dense = np.unique(np.asarray(mask), return_inverse=True)
    mask = common.concrete_array(dense.reshape(mask.shape).astype(np.int32))
    features = len(ids)
  outputs = _sweep(_build_ablation, model, variables, x, target, (x, baseline, mask),
                   jnp.arange(features, dtype=jnp.int32), chunk=chunk, loop=loop)
  f_x = common.jit_target_logits(model, variables, x, target)
  return _finish(_paint((f_x[None] - outputs).T, mask, jnp.nan), x, valid)


# ---------------------------------------------------------------------------
# Entry of the sampling methods.
# ---------------------------------------------------------------------------


def _sampling_entry(model, variables, x, target, *, samples, baseline, feature_mask,
                    num_features) -> tuple:
  """The checks Shapley value sampling and KernelSHAP share, in their order.

  Returns:
    `(samples, x, target, valid, fill, mask, features)`: `samples` as an int, the prepared
    `x`, `target` and validity (`common.prepare`), the baseline broadcast to `x`, and the
    feature mask with its number of features (`feature_mask_of`).
  """
  samples = common.check_positive_int(samples, "samples")
  x, target, valid = common.prepare(model, variables, x, target)
  fill = common.check_like(baseline, x, "baseline")
  mask, features = feature_mask_of(feature_mask, x, num_features)
  return samples, x, target, valid, fill, mask, features


def _required_key(method: str, key, injected: str, n: int) -> tuple[jax.Array, bool]:
  """`(key, per_image)` (`sampling.check_keys`), checked, for a method that draws `injected`
  unless they are given."""
  if key is None:
    raise ValueError(f"{method} needs a key (jax.random.key) unless {injected} are given")
  return sampling.check_keys(key, n)


def _feature_uniforms(key, *, samples, features):
  """`float32[samples, F]`, entry `[s, f]` drawn from `fold_in(split(key, samples)[s], f)`:
  each feature id's draws do not depend on how many features there are."""
  per_feature = lambda k: jax.vmap(lambda f: jax.random.uniform(jax.random.fold_in(k, f)))(
      jnp.arange(features))
  return jax.vmap(per_feature)(jax.random.split(key, samples))


# ---------------------------------------------------------------------------
# Shapley value sampling.
# ---------------------------------------------------------------------------


@functools.partial(xla.jit, static_argnames=("samples", "features"))
def _draw_permutations(key, *, samples, features):
  """`samples` independent uniform permutations of `0 .. features - 1`, `int32[S, F]`."""
  keys = jax.random.split(key, samples)
  return jax.vmap(lambda k: jax.random.permutation(k, features))(keys).astype(jnp.int32)


@functools.partial(xla.jit, static_argnames=("samples", "features"))
def _draw_image_ranks(keys, *, samples, features):
  """Per-image feature orders from per-image keys, as ranks `int32[S, N, F]`.

  Image i's order in sample s sorts the features by `_feature_uniforms(keys[i])[s]` (ties by
  id), so the relative order of the features an image has does not depend on F: its result
  does not depend on the other images' segmentations either (absent ids contribute 0).
  """
  def ranks(key):
    order = jnp.argsort(_feature_uniforms(key, samples=samples, features=features), axis=1,
                        stable=True)
    return jnp.argsort(order, axis=1, stable=True)
  return jnp.swapaxes(jax.vmap(ranks)(keys), 0, 1).astype(jnp.int32)


def _check_permutations(permutations, samples: int, features: int) -> jax.Array:
  concrete = common.is_concrete(permutations)
  if concrete:
    permutations = common.concrete_array(permutations)
  if (permutations.shape != (samples, features)
      or not jnp.issubdtype(permutations.dtype, jnp.integer)):
    raise ValueError(f"permutations must be int [samples, F] = [{samples}, {features}]; got "
                     f"{permutations.dtype}{list(permutations.shape)}")
  if concrete and not np.array_equal(np.sort(np.asarray(permutations), axis=1),
                                     np.broadcast_to(np.arange(features), (samples, features))):
    raise ValueError(f"every row of permutations must be a permutation of 0 .. {features - 1}")
  return permutations.astype(jnp.int32)


def shapley_sampling(model: common.Model, variables: common.PyTree, x: jax.Array,
                     target: jax.Array | None = None, *, feature_mask=None, baseline=None,
                     samples: int = 25, num_features: int | None = None,
                     key: jax.Array | None = None, permutations: jax.Array | None = None,
                     chunk: int | None = None, loop: str = "auto") -> jax.Array:
  """Shapley value sampling with Captum's `ShapleyValueSampling` semantics.

  For each of `samples` random orders of the F features (one order shared by the whole
  batch, as Captum; one per image with per-image keys), start from the baseline and switch the features to their values in `x`
  one at a time; each feature's marginal contribution `f_t(after) - f_t(before)` is averaged
  over the orders. `samples * F + 1` forward passes of the batch. Every id `0 .. F - 1` takes
  part in the orders, also ids absent from the mask (their contribution is 0), as in Captum.
  Captum accumulates in float32; this accumulates in x's dtype.

  Args:
    model: Flax module or `apply(variables, x) -> logits` callable.
    variables: model variables.
    x: `float32[N, H, W, C]`.
    target: `int32[N]`; None -> predicted class.
    feature_mask: see the module docstring (None: every element its own feature).
    baseline: None (0), a scalar or an array broadcasting to `x`.
    samples: number of permutations (Captum's `n_samples`).
    num_features: F; required for a traced mask.
    key: `jax.random` key; required unless `permutations` is given. One key per image,
      `key[N]` (`sampling.check_keys`), draws one order per image and sample from `key[i]`,
      sorting the features by draws per feature id (`_feature_uniforms`), so that image
      i's result depends neither on the other images nor on F.
    permutations: optional injected `int[samples, F]` orders (each row a permutation of
      `0 .. F - 1`), e.g. Captum's `torch.randperm` draws.
    chunk: forward passes of the batch per model call; None -> default.
    loop: "python", "lax" or "auto".

  Returns:
    `float32[N, H, W, C]` (NaN as `feature_ablation`).

  Raises:
    ValueError: on malformed inputs, masks or permutations, or a missing key.
  """
  samples, x, target, valid, baseline, mask, features = _sampling_entry(
      model, variables, x, target, samples=samples, baseline=baseline,
      feature_mask=feature_mask, num_features=num_features)
  ranks = None
  if permutations is None:
    key, per_image = _required_key("shapley_sampling", key, "permutations", x.shape[0])
    if per_image:
      ranks = _draw_image_ranks(key, samples=samples, features=features)
    else:
      permutations = _draw_permutations(key, samples=samples, features=features)
  if ranks is None:
    permutations = _check_permutations(permutations, samples, features)
    # The position of each feature, [S, 1, F]: one order per sample for the whole batch.
    ranks = jnp.argsort(permutations, axis=1).astype(jnp.int32)[:, None, :]
  spec = {"sample": jnp.repeat(jnp.arange(samples, dtype=jnp.int32), features),
          "step": jnp.tile(jnp.arange(features, dtype=jnp.int32), samples)}
  outputs = _sweep(_build_shapley, model, variables, x, target, (x, baseline, mask, ranks),
                   spec, chunk=chunk, loop=loop).reshape(samples, features, x.shape[0])
  f_baseline = common.jit_target_logits(model, variables, baseline, target)
  before = jnp.concatenate(
      [jnp.broadcast_to(f_baseline, (samples, 1, x.shape[0])), outputs[:, :-1]], axis=1)
  gains = outputs - before  # gains[s, i]: contribution of feature permutations[s, i]
  per_feature = jnp.take_along_axis(gains, jnp.swapaxes(ranks, 1, 2), axis=1)  # [S, F, N]
  return _finish(_paint(jnp.mean(per_feature, axis=0).T, mask, jnp.nan), x, valid)


# ---------------------------------------------------------------------------
# LIME and KernelSHAP.
# ---------------------------------------------------------------------------


def _check_coalitions(coalitions, n: int, samples: int, features: int) -> jax.Array:
  concrete = common.is_concrete(coalitions)
  if concrete:
    coalitions = common.concrete_array(coalitions)
  if coalitions.shape != (n, samples, features):
    raise ValueError(f"coalitions must have shape [N, samples, F] = [{n}, {samples}, "
                     f"{features}]; got {list(coalitions.shape)}")
  if concrete and not np.isin(np.asarray(coalitions), (0, 1)).all():
    raise ValueError("coalitions must contain only 0 and 1 (hidden / kept)")
  return coalitions.astype(jnp.bool_)


def _surrogate_inputs(model, variables, x, target, mask, fill, kept, *, chunk, loop):
  """Target logits of every coalition, `float[N, samples]`."""
  outputs = _sweep(_build_coalitions, model, variables, x, target, (x, fill, mask),
                   jnp.swapaxes(kept, 0, 1), chunk=chunk, loop=loop)
  return outputs.T


def _input_space_distance(x, fill, mask, features, kept, distance):
  """Captum's distance between x and each perturbed input, from per-feature sums.

  With `p = x` on kept features and `fill` elsewhere, `x . p`, `|p|^2` and `|x - p|^2` are
  sums over features of per-feature sums, so the perturbed inputs are never rebuilt.
  """
  z = kept.astype(x.dtype)  # [N, S, F]
  sums = lambda v: _group_sums(v, mask, features, per_channel=False)[:, None, :]
  if distance == "euclidean":
    return jnp.sqrt(jnp.sum((1 - z) * sums((x - fill) ** 2), axis=-1))
  xx, xf, ff = sums(x * x), sums(x * fill), sums(fill * fill)
  dot = jnp.sum(z * xx + (1 - z) * xf, axis=-1)
  norm_x = jnp.sum(xx, axis=-1)
  norm_p = jnp.sum(z * xx + (1 - z) * ff, axis=-1)
  # torch.nn.CosineSimilarity: x . p / sqrt(max(|x|^2 |p|^2, eps^2)), eps = 1e-8.
  return 1 - dot / jnp.sqrt(jnp.maximum(norm_x * norm_p, 1e-16))


def _binary_distance(kept, present, distance, dtype):
  """The lime package's distance between each coalition and the all-kept one (sklearn's)."""
  kept_count = jnp.sum(kept & present[:, None, :], axis=-1).astype(dtype)
  total = jnp.sum(present, axis=-1).astype(dtype)[:, None]
  if distance == "euclidean":
    return jnp.sqrt(total - kept_count)
  # cosine: 1 - k / (sqrt(k) sqrt(n)); sklearn's cosine similarity of a zero vector is 0.
  return jnp.where(kept_count > 0, 1 - jnp.sqrt(kept_count / total), 1.0)


def lime(model: common.Model, variables: common.PyTree, x: jax.Array,
         target: jax.Array | None = None, *, reference: str = "lime", feature_mask=None,
         baseline=None, samples: int | None = None, kernel_width: float | None = None,
         distance: str = "cosine", alpha: float | None = None, num_features: int | None = None,
         key: jax.Array | None = None, coalitions: jax.Array | None = None,
         chunk: int | None = None, loop: str = "auto") -> jax.Array:
  """LIME: a weighted linear surrogate on binary feature coalitions, painted onto the features.

  Each image gets `samples` coalitions `z in {0, 1}^F` (1: the feature keeps its value in
  x, 0: it takes the fill), the target logit of each perturbed input, a proximity weight
  `exp(-d^2 / (2 width^2))` (= the lime package's `sqrt(exp(-d^2 / width^2))`), and a
  weighted linear fit with an intercept; the coefficients are painted onto their features
  (as Gattas's thesis, sec. 3.7, did with the lime package's output).

  The two references differ in every default; `reference` picks the set
  ("lime", the default: the `lime` package's `LimeImageExplainer`; "captum": Captum's `Lime`):

  | default                           | "lime"                          | "captum"        |
  |-----------------------------------|---------------------------------|-----------------|
  | features (`feature_mask=None`)    | quickshift superpixels (host)   | every element   |
  | hidden features (`baseline=None`) | segment's mean colour           | 0               |
  | samples                           | 1000, the first all kept        | 25              |
  | distance d (cosine / euclidean)   | z to all-kept, binary space     | x to perturbed x|
  | kernel width                      | 0.25                            | 1.0             |
  | fit                               | ridge, alpha=1 (sklearn Ridge)  | Lasso, alpha=0.01 |

  Coalitions are Bernoulli(0.5) draws in both (the lime package sets row 0 to all kept).
  With "lime", features absent from an image (a segmentation with fewer segments than F)
  are left out of its fit and distance, as the lime package fits each image on its own
  segments; Captum keeps every id `0 .. F - 1` as a column. `alpha=0` is ordinary least
  squares for either. The Lasso is solved to convergence (sklearn stops at a duality gap of
  1e-4); the coefficients of the lime package's default `feature_selection="auto"` with
  its default `num_features=100000` are those of the ridge fit on all features.

  Args:
    model: Flax module or `apply(variables, x) -> logits` callable.
    variables: model variables.
    x: `float32[N, H, W, C]`.
    target: `int32[N]`; None -> predicted class.
    reference: "lime" or "captum" (the defaults above).
    feature_mask: an integer mask or a segmentation method name (module docstring);
      None -> the reference's default.
    baseline: fill of hidden features: a scalar or an array broadcasting to `x`; None ->
      the reference's default.
    samples: coalitions per image; None -> the reference's default.
    kernel_width: None -> the reference's default.
    distance: "cosine" or "euclidean".
    alpha: penalty of the fit (>= 0); None -> the reference's default.
    num_features: F; required for a traced mask. Left None with `reference="lime"`, per-image
      keys and no injected coalitions, a concrete mask's F is rounded up to a multiple of
      `LIME_FEATURE_BUCKET` (`bucketed_features`): the padded ids are absent from every
      image, so the result is the same, and batches whose superpixel counts fall in one
      bucket share one compilation.
    key: `jax.random` key; required unless `coalitions` is given. One key per image,
      `key[N]` (`sampling.check_keys`), draws image i's coalitions from `key[i]` per
      feature id (`_feature_uniforms(key[i]) < 0.5`), so that its result depends neither on
      the other images nor on F (features absent from an image are left out of its fit).
    coalitions: optional injected `{0, 1}[N, samples, F]` (the lime package's `data` matrix
      per image, Captum's interpretable samples), used as is.
    chunk: coalitions per model call (`chunk * N` rows); None -> default.
    loop: "python", "lax" or "auto".

  Returns:
    `float32[N, H, W, C]` (NaN as `feature_ablation`).

  Raises:
    ValueError: on malformed inputs, masks or coalitions, unknown options, a missing key,
      or host-side segmentation of a traced x.
  """
  reference = _choice(reference, "reference", REFERENCES)
  distance = _choice(distance, "distance", DISTANCES)
  defaults = LIME_DEFAULTS[reference]
  samples = common.check_positive_int(defaults["samples"] if samples is None else samples,
                                      "samples")
  width = _number(defaults["kernel_width"] if kernel_width is None else kernel_width,
                  "kernel_width", positive=True)
  alpha = _number(defaults["alpha"] if alpha is None else alpha, "alpha", positive=False)
  x, target, valid = common.prepare(model, variables, x, target)
  n = x.shape[0]
  if feature_mask is None and reference == "lime":
    feature_mask = "quickshift"
  mask, features = feature_mask_of(feature_mask, x, num_features)
  per_image = coalitions is None and key is not None and sampling.check_keys(key, n)[1]
  if (reference == "lime" and per_image and num_features is None
      and common.is_concrete(mask)):
    features = bucketed_features(features)
  if baseline is None and reference == "lime":
    fill = _segment_means(x, mask, features)
  else:
    fill = common.check_like(baseline, x, "baseline")
  if coalitions is None:
    key, per_image = _required_key("lime", key, "coalitions", n)
    if per_image:
      kept = _draw_image_coalitions(key, samples=samples, features=features)
    else:
      kept = jax.random.bernoulli(key, 0.5, (n, samples, features))
    if reference == "lime":
      kept = kept.at[:, 0].set(True)
  else:
    kept = _check_coalitions(coalitions, n, samples, features)
  y = _surrogate_inputs(model, variables, x, target, mask, fill, kept, chunk=chunk, loop=loop)
  if reference == "lime":
    present = _present(mask, n, features)
    d = _binary_distance(kept, present, distance, x.dtype)
  else:
    present = None
    d = _input_space_distance(x, fill, mask, features, kept, distance)
  weights = jnp.exp(-(d.astype(y.dtype) ** 2) / (2 * width**2))
  z = kept.astype(y.dtype)
  if reference == "captum" and alpha > 0:
    coefficients, _ = surrogate.lasso_fit(z, y, weights, alpha=alpha)
  else:
    coefficients, _ = surrogate.linear_fit(z, y, weights, alpha=alpha, columns=present)
  return _finish(_paint(coefficients, mask, jnp.nan), x, valid)


@functools.partial(xla.jit, static_argnames=("samples", "features"))
def _draw_image_coalitions(keys, *, samples, features):
  """LIME's Bernoulli(0.5) coalitions `bool[N, samples, F]` from per-image keys, per feature
  id (`_feature_uniforms`)."""
  draw = lambda k: _feature_uniforms(k, samples=samples, features=features) < 0.5
  return jax.vmap(draw)(keys)


def kernel_shap_coalitions(key: jax.Array, n: int, samples: int, features: int) -> jax.Array:
  """Captum KernelShap's coalitions, `bool[N, samples, F]`, drawn from `key`.

  Per image: all kept, then all hidden, then coalitions whose size k is drawn with
  probability proportional to `(F - 1) / (k (F - k))`, k = 1 .. F-1 (the Shapley kernel's
  mass per size), and whose members are a uniformly random k-subset. With one key per image
  (`key[N]`, `sampling.check_keys`), image i's are those of `key[i]` for a batch of one. The
  sizes' distribution depends on F (every id is a column, as in Captum), so with per-image
  segmentations image i's result depends on the batch's F unless `num_features` fixes it.

  Raises:
    ValueError: for fewer than 2 features when random coalitions are needed.
  """
  key, per_image = sampling.check_keys(key, n)
  if samples > 2 and features < 2:
    raise ValueError("kernel_shap draws coalition sizes 1 .. F-1 and needs F >= 2 features")
  draw = lambda k, count: _draw_kernel_shap_coalitions(k, n=count, samples=samples,
                                                       features=features)
  return sampling.draw_batch(draw, key, n, per_image=per_image)


@functools.partial(xla.jit, static_argnames=("n", "samples", "features"))
def _draw_kernel_shap_coalitions(key, *, n, samples, features):
  drawn = max(samples - 2, 0)
  fixed = jnp.stack([jnp.ones((features,), bool), jnp.zeros((features,), bool)])[:samples]
  fixed = jnp.broadcast_to(fixed, (n,) + fixed.shape)
  if not drawn:
    return fixed
  sizes = np.arange(1, features)
  log_mass = jnp.asarray(np.log((features - 1) / (sizes * (features - sizes))), jnp.float32)
  size_key, subset_key = jax.random.split(key)
  size = jax.random.categorical(size_key, log_mass, shape=(n, drawn)) + 1
  order = jnp.argsort(jax.random.uniform(subset_key, (n, drawn, features)), axis=-1)
  rank = jnp.argsort(order, axis=-1)  # a uniformly random ranking of the features
  return jnp.concatenate([fixed, rank < size[..., None]], axis=1)


def kernel_shap(model: common.Model, variables: common.PyTree, x: jax.Array,
                target: jax.Array | None = None, *, feature_mask=None, baseline=None,
                samples: int = 25, num_features: int | None = None,
                key: jax.Array | None = None, coalitions: jax.Array | None = None,
                chunk: int | None = None, loop: str = "auto") -> jax.Array:
  """KernelSHAP with Captum's `KernelShap` semantics.

  Coalitions as `kernel_shap_coalitions` (the Shapley kernel enters through the sampling of
  coalition sizes, every sample weighing 1, except the all-kept and all-hidden coalitions,
  which weigh 1e6 to pin the fit to f(x) and f(baseline)); an unregularised weighted least-
  squares fit with an intercept (sklearn `LinearRegression`, minimum-norm when the samples do
  not determine every coefficient); the coefficients painted onto their features. Captum
  fits in float32 whatever the input's dtype; this fits in x's dtype.

  Args:
    model: Flax module or `apply(variables, x) -> logits` callable.
    variables: model variables.
    x: `float32[N, H, W, C]`.
    target: `int32[N]`; None -> predicted class.
    feature_mask: see the module docstring (None: every element its own feature).
    baseline: fill of hidden features: None (0), a scalar or an array broadcasting to `x`.
    samples: coalitions per image, the two fixed ones included (Captum's `n_samples`).
    num_features: F; required for a traced mask.
    key: `jax.random` key, or one per image (`kernel_shap_coalitions`); required unless
      `coalitions` is given.
    coalitions: optional injected `{0, 1}[N, samples, F]`, used as is.
    chunk: coalitions per model call; None -> default.
    loop: "python", "lax" or "auto".

  Returns:
    `float32[N, H, W, C]` (NaN as `feature_ablation`).

  Raises:
    ValueError: on malformed inputs, masks or coalitions, or a missing key.
  """
  samples, x, target, valid, fill, mask, features = _sampling_entry(
      model, variables, x, target, samples=samples, baseline=baseline,
      feature_mask=feature_mask, num_features=num_features)
  n = x.shape[0]
  if coalitions is None:
    if key is None:
      raise ValueError("kernel_shap needs a key (jax.random.key) unless coalitions are given")
    kept = kernel_shap_coalitions(key, n, samples, features)
  else:
    kept = _check_coalitions(coalitions, n, samples, features)
  y = _surrogate_inputs(model, variables, x, target, mask, fill, kept, chunk=chunk, loop=loop)
  size = jnp.sum(kept, axis=-1)
  weights = jnp.where((size == 0) | (size == features), KERNEL_SHAP_INF_WEIGHT, 1.0)
  coefficients, _ = surrogate.linear_fit(kept.astype(y.dtype), y, weights.astype(y.dtype))
  return _finish(_paint(coefficients, mask, jnp.nan), x, valid)
