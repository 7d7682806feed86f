"""Pixel-removal metrics: perturbation curves, AOPC, AFOC, pixels-to-flip and the DeepMaps delta.

A saliency map ranks the pixels of an image; removing them in that order (replacing all
channels of a pixel with a fill value) and watching the classifier's score of the originally
predicted class gives a *perturbation curve*. Everything here is computed from such curves:

* `perturbation_curve`: scores and labels on a grid of removed fractions, MoRF, LeRF or random
  order, evaluated on the device in chunks of grid points (no Python loop per step or image).
* `aopc` (Samek et al. 2016), `afoc` (Srinivas & Fleuret 2019), `pixels_to_flip`
  (n_MoRF / n_LeRF, Grabska-Barwinska et al. 2021).
* `pixel_removal_metrics`: the DeepMaps set from one MoRF and one
  LeRF curve.
* `metrics_from_curves`: the same set from curves already computed.
* `delta`: DeepMaps Eq. 9, a metric with the image's own map minus its mean with the maps of
  K other images drawn with an explicit key.
* `draw_partners`: the K other images of Eq. 9, drawn from the whole evaluated set per
  image index (independent of the batch).
* `shared_curve_delta`: the DeepMaps set and its Eq. 9 delta from one MoRF and one LeRF
  curve of the own and the other images' maps together, with the own curves (what an
  evaluation that also reports mean curves needs, without evaluating the own maps twice).
* `removal_grid`: the removed pixel counts of a grid.
* `check_removal_grid`: fails fast on a grid so coarse that AOPC / AFOC at a fraction would
  see no removal step (0 for every image), or on which the fraction is not a grid point.

References:
  W. Samek et al., "Evaluating the visualization of what a deep neural network has learned",
    IEEE TNNLS 2016 (AOPC, MoRF).
  S. Srinivas and F. Fleuret, "Full-gradient representation for neural network
    visualization", NeurIPS 2019 (AFOC, LeRF).
  A. Grabska-Barwinska et al., "Measuring and improving the quality of visual explanations"
    (DeepMaps), 2021, Sec. 4.2-4.3, Eq. 9 and App. B (n_MoRF, n_LeRF, delta).

Conventions:

* Images are `float[N, H, W, C]`, channels last; maps `float[N, H, W]` (or `[N, H, W, C]`,
  reduced over channels with `xai_jax.explain.postprocess.to_map`). `P = H * W` pixels; a
  removed pixel has all its channels replaced.
* Ties are broken by the flat pixel index `h * W + w`, ascending, in every order (MoRF sorts
  by descending saliency, then ascending index), so a constant map removes pixels in raster
  order. Results do not depend on the platform's sort.
* The grid of removed pixel counts, up to its last point `kmax`, has one of two spellings:
  `step` (an int, pixels): `0, step, 2 step, ...` with `kmax = floor(max_fraction * P)`
  appended when `step` does not divide it (as Quantus' `ceil(P / step)` steps do);
  `step_fraction` (a fraction `d` of the pixels, 0.5% in DeepMaps): grid point `k` removes
  `round(k * d * P)` pixels (halves round up), with `kmax = round(max_fraction * P)`. The
  default is `step_fraction=0.005`, or `step=1` for images of fewer than 200 pixels.
  `fractions = counts / P`.
* A metric's `fraction` (AOPC up to, AFOC at) must fall on the grid: its pixel count
  (`round(fraction * P)` on a `step_fraction` grid, `floor(fraction * P)` on a `step` grid) must
  be a grid point. With `step_fraction=0.005` every multiple of 0.5% is one (10% of 224 x 224 is
  grid point 20, `round(0.1 * 50176) = 5018` pixels); a fraction between two grid points is
  refused (`check_removal_grid`), never rounded down to the point before it.
* `c = argmax f(x)` of the unperturbed image; the curve records `f_c` (logit, or softmax
  probability with `score="prob"`) and `argmax f` at every grid point.
"""

from __future__ import annotations

import decimal
import functools
import math
from typing import Any, Callable, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from xai_jax import xla
from xai_jax.explain.postprocess import to_map
from xai_jax.keys import check_key
from xai_jax.models.base import as_apply

ORDERS = ("morf", "lerf", "random")
FILLS = ("batch_mean", "image_mean", "blur", "<float>", "<per-channel numbers>",
         "<array broadcastable to x>")
DATASET_MEAN = "dataset_mean"
"""The fill the papers use, the training set's mean RGB: not computable from the evaluated
batch, so a pipeline resolves this name into per-channel numbers (the mean over its training
split) before it reaches these functions, which refuse the name."""
SCORES = ("logit", "prob")
LOOPS = ("map", "python")
REMOVAL_METRICS = ("aopc", "afoc_morf", "afoc_lerf", "n_morf", "n_lerf", "flipped_morf",
                   "flipped_lerf")
"""The keys of `pixel_removal_metrics` / `metrics_from_curves`, in that order."""
DELTA_METRICS = ("aopc", "afoc_morf", "afoc_lerf", "n_morf", "n_lerf")
"""The metrics `shared_curve_delta` gives a DeepMaps Eq. 9 delta for (not the flip flags)."""
DEFAULT_STEP_FRACTION = 0.005


@flax.struct.dataclass
class PerturbationCurve:
  """Scores of the predicted class while pixels are removed (a pytree; jit-friendly).

  Attributes:
    fractions: `float32[K]`, removed fraction of pixels at each grid point (`counts / P`);
      `fractions[0] == 0`.
    counts: `int32[K]`, removed pixel counts at each grid point.
    scores: `float[N, K]`, `f_c(x_k)` for the predicted class `c` of the unperturbed image
      (logit or probability, see `score`); the dtype follows the model output.
    labels: `int32[N, K]`, `argmax f(x_k)` at each grid point; `labels[:, 0] == target`.
    target: `int32[N]`, `c = argmax f(x)` of the unperturbed images.
    num_pixels: `P = H * W` (static).
    max_count: `counts[-1]`, the last removed count (static).
    step: the grid's step in pixels (static), or None: a `step_fraction` grid, or a curve
      built by hand, whose grid is then read from `counts` when they are concrete.
    step_fraction: the grid's step as a fraction of the pixels (static; grid point `k` at
      `round(k * step_fraction * P)`), or None: a `step` grid or a curve built by hand.
  """
  fractions: jax.Array
  counts: jax.Array
  scores: jax.Array
  labels: jax.Array
  target: jax.Array
  num_pixels: int = flax.struct.field(pytree_node=False)
  max_count: int = flax.struct.field(pytree_node=False)
  step: int | None = flax.struct.field(pytree_node=False, default=None)
  step_fraction: float | None = flax.struct.field(pytree_node=False, default=None)


class DeltaResult(NamedTuple):
  """Result of `delta` (every leaf of the metric's output gets the same three trees).

  Attributes:
    delta: `sigma(x, s(x)) - mean_j sigma(x, s(xi_j))`, same structure as the metric's output,
      each leaf `float32[N]`.
    own: `sigma(x, s(x))`, the metric with the image's own map.
    others: `mean_j sigma(x, s(xi_j))`, the mean over the `k` other maps.
    other_index: `int32[N, k]`, indices into the pool of maps that were used for each image.
  """
  delta: Any
  own: Any
  others: Any
  other_index: jax.Array


# --------------------------------------------------------------------------------------------
# Validation helpers (concrete checks only; traced values are checked by shape only).


def _is_concrete(a) -> bool:
  return not isinstance(a, jax.core.Tracer)


def _check_fraction(name: str, value, *, positive: bool = False) -> float:
  """A fraction in [0, 1], or in (0, 1] with `positive` (a metric's cut-off)."""
  interval = "(0, 1]" if positive else "[0, 1]"
  if isinstance(value, (bool, np.bool_, str, bytes)) or np.ndim(value) != 0:
    raise ValueError(f"{name} must be a number in {interval}; got {value!r}")
  try:
    value = float(value)
  except (TypeError, jax.errors.ConcretizationTypeError):
    raise ValueError(f"{name} must be a concrete number in {interval} (it sets the grid, a "
                     f"static choice); got {value!r}") from None
  if positive and not 0.0 < value <= 1.0:
    raise ValueError(f"{name} must be a fraction in (0, 1]; got {value}")
  if not 0.0 <= value <= 1.0:  # also rejects NaN
    raise ValueError(f"{name} must be a fraction in [0, 1]; got {value}")
  return value


def _count_at(fraction: float, num_pixels: int) -> int:
  """`floor(fraction * P)`: a fraction's pixel count on a `step` grid."""
  # The tolerance absorbs the float error of e.g. 0.1 * 1000 without ever adding a pixel.
  return int(math.floor(fraction * num_pixels + 1e-9 * num_pixels))


def _round_count(pixels: float, num_pixels: int) -> int:
  """`round(pixels)`, halves up: a pixel count on a `step_fraction` grid."""
  # The tolerance (far below any fractional part a decimal step gives, far above float error)
  # makes an exact half round up even when e.g. 0.015 * 100 comes out as 1.4999999999999998.
  return int(math.floor(pixels + 0.5 + 1e-9 * num_pixels))


def _check_step(step, num_pixels: int) -> int:
  """`step` as an int in [1, P]."""
  if isinstance(step, (bool, np.bool_)) or not isinstance(step, (int, np.integer)):
    raise ValueError(f"step must be an integer number of pixels (for a fraction of the pixels "
                     f"use step_fraction); got {step!r}")
  step = int(step)
  if step < 1 or step > num_pixels:
    raise ValueError(f"step must be in [1, P = H * W = {num_pixels}] pixels; got {step}")
  return step


def _check_step_fraction(step_fraction, num_pixels: int) -> float:
  """`step_fraction` as a float in (0, 1] of at least one pixel."""
  if (isinstance(step_fraction, (bool, np.bool_, str, bytes))
      or not isinstance(step_fraction, (int, float, np.number))):
    raise ValueError(f"step_fraction must be a number in (0, 1] (a fraction of the pixels); "
                     f"got {step_fraction!r}")
  step_fraction = float(step_fraction)
  if not 0.0 < step_fraction <= 1.0:  # also rejects NaN
    raise ValueError(f"step_fraction must be a fraction of the pixels in (0, 1]; got "
                     f"{step_fraction}")
  if step_fraction * num_pixels < 1.0:
    raise ValueError(f"step_fraction {step_fraction} of the {num_pixels} pixels is less than one "
                     f"pixel per grid point; use step_fraction >= 1 / {num_pixels} or step=1")
  return step_fraction


def _grid_spec(step, step_fraction, num_pixels: int) -> tuple[int | None, float | None]:
  """`(step, None)` or `(None, step_fraction)`, checked, with the default filled in."""
  if step is not None and step_fraction is not None:
    raise ValueError(f"give the grid as step (pixels) or as step_fraction (a fraction of the "
                     f"pixels), not both; got step={step!r}, step_fraction={step_fraction!r}")
  if step is not None:
    return _check_step(step, num_pixels), None
  if step_fraction is not None:
    return None, _check_step_fraction(step_fraction, num_pixels)
  if DEFAULT_STEP_FRACTION * num_pixels >= 1.0:
    return None, DEFAULT_STEP_FRACTION
  return 1, None  # fewer than 200 pixels: every pixel is a grid point


def _grid_text(step: int | None, step_fraction: float | None) -> str:
  if step_fraction is not None:
    return f"step_fraction={step_fraction:g} (grid point k at round(k * {step_fraction:g} * P))"
  return f"step={step} pixels"


def _count_of(fraction: float, num_pixels: int, step_fraction: float | None) -> int:
  """The pixel count of a fraction on a grid: rounded on a `step_fraction` grid, else floored."""
  if step_fraction is not None:
    return _round_count(fraction * num_pixels, num_pixels)
  return _count_at(fraction, num_pixels)


def _grid_counts(num_pixels: int, step: int | None, step_fraction: float | None,
                 kmax: int) -> tuple[int, ...]:
  """The removed counts below `kmax` on the grid, then `kmax` itself (checked options)."""
  if step_fraction is None:
    counts = list(range(0, kmax, step))
  else:
    counts, k = [], 0
    while (count := _round_count(k * step_fraction * num_pixels, num_pixels)) < kmax:
      counts.append(count)
      k += 1
  return tuple(counts) + (kmax,)


def removal_grid(num_pixels: int, *, step: int | None = None,
                 step_fraction: float | None = None,
                 max_fraction: float = 1.0) -> tuple[int, ...]:
  """The removed pixel counts of `perturbation_curve`'s grid (module docstring).

  Args:
    num_pixels: `P = H * W`.
    step: pixels removed between grid points, an int in `[1, P]`; or
    step_fraction: a fraction `d` of the pixels in (0, 1], `d * P >= 1`: grid point `k`
      removes `round(k * d * P)` pixels (halves up). At most one of the two; neither:
      `step_fraction=0.005` (DeepMaps' 0.5%), or `step=1` when `P < 200`.
    max_fraction: the last grid point removes `floor(max_fraction * P)` pixels (`step`) or
      `round(max_fraction * P)` (`step_fraction`); in [0, 1].

  Returns:
    The counts, increasing, from 0 to the last point.

  Raises:
    ValueError: `num_pixels < 1`, both `step` and `step_fraction`, either out of range, or
      `max_fraction` outside [0, 1].
  """
  num_pixels = _check_num_pixels(num_pixels)
  max_fraction = _check_fraction("max_fraction", max_fraction)
  step, step_fraction = _grid_spec(step, step_fraction, num_pixels)
  kmax = min(num_pixels, _count_of(max_fraction, num_pixels, step_fraction))
  return _grid_counts(num_pixels, step, step_fraction, kmax)


def _check_num_pixels(num_pixels) -> int:
  if (isinstance(num_pixels, (bool, np.bool_)) or not isinstance(num_pixels, (int, np.integer))
      or num_pixels < 1):
    raise ValueError(f"num_pixels must be a positive integer (H * W); got {num_pixels!r}")
  return int(num_pixels)


def _as_fraction_text(count: int, num_pixels: int, step_fraction: float | None) -> str:
  """The shortest decimal (3 significant digits or more) whose count on the grid is `count`.

  Rounded to nearest, or up: on a `step` grid a count `c` is every fraction in
  `[c / P, (c + 1) / P)`, so e.g. 2 of 6 pixels is 0.334, not 0.333.
  """
  value = decimal.Decimal(count) / decimal.Decimal(num_pixels)
  for digits in range(3, 18):
    quantum = decimal.Decimal(1).scaleb(value.adjusted() - digits + 1)
    for rounding in (decimal.ROUND_HALF_EVEN, decimal.ROUND_CEILING):
      text = f"{value.quantize(quantum, rounding=rounding).normalize():f}"
      if _count_of(float(text), num_pixels, step_fraction) == count:
        return text
  return repr(count / num_pixels)


def _off_grid_error(name: str, fraction: float, target: int, counts: tuple[int, ...],
                    num_pixels: int, step_fraction: float | None, grid: str) -> ValueError:
  """The error for a fraction whose count `target` is not a grid point."""
  below = max(c for c in counts if c < target)
  above = [c for c in counts if c > target]
  nearest = []
  for count in [below] + above[:1]:
    text = _as_fraction_text(count, num_pixels, step_fraction)
    if step_fraction is not None:  # grid point k is the fraction k * step_fraction
      nominal = float(f"{counts.index(count) * step_fraction:.12g}")
      if _count_of(nominal, num_pixels, step_fraction) == count:
        text = f"{nominal:g}"
    nearest.append(f"{text} ({count} pixels)")
  return ValueError(
      f"{name}={fraction:g} ({target} of {num_pixels} pixels) is not on the removal grid of "
      f"{grid}: the nearest grid fractions are {' and '.join(nearest)}. Use one of them, or a "
      f"grid on which {fraction:g} lies (step_fraction=d has every multiple of d, e.g. "
      f"DeepMaps' d = 0.005), rather than the grid point before it")


def check_removal_grid(num_pixels: int, *, step: int | None = None, fraction: float,
                       step_fraction: float | None = None) -> None:
  """Checks that AOPC and AFOC at `fraction` are defined on the removal grid.

  The grid of removed counts (module docstring, `removal_grid`) is that of full curves
  (`max_fraction=1`). AOPC up to and AFOC at `fraction` need its count (`floor(fraction * P)`
  on a `step` grid, `round(fraction * P)` on a `step_fraction` grid) to be a grid point: when
  the first step already exceeds it, both metrics would be 0 for every image, whatever the
  saliency map; when it falls between two grid points, they would be computed at the point
  before it (e.g. 9.5% instead of 10% of 224 x 224 with `step=251`). Both are configuration
  errors, not results. (A curve computed with `max_fraction == fraction` ends on the
  fraction's own count; `aopc` and `afoc` accept that point.)

  Call it before an experiment to fail fast, e.g. from a config's validation.

  Args:
    num_pixels: `P = H * W`, the pixels of one image.
    step: pixels removed between grid points, in `[1, P]`; or
    step_fraction: the grid step as a fraction of the pixels, in (0, 1]. At most one of the
      two; neither: the default of `perturbation_curve` (`step_fraction=0.005`, or `step=1`
      below 200 pixels).
    fraction: the metrics' removed fraction, in (0, 1] (0.1 in DeepMaps).

  Raises:
    ValueError: `num_pixels < 1`, a bad `step` or `step_fraction` (or both given), `fraction`
      outside (0, 1], `fraction * P < 1` (no pixel at all), a first grid step above the
      fraction's count, or a fraction between two grid points (the message gives the nearest
      grid fractions).
  """
  num_pixels = _check_num_pixels(num_pixels)
  fraction = _check_fraction("fraction", fraction, positive=True)
  step, step_fraction = _grid_spec(step, step_fraction, num_pixels)
  target = _count_of(fraction, num_pixels, step_fraction)
  if target == 0:
    raise ValueError(
        f"fraction {fraction} of the {num_pixels} pixels is less than one pixel, so AOPC and "
        f"AFOC would be 0 for every image; use fraction >= 1 / {num_pixels}")
  counts = _grid_counts(num_pixels, step, step_fraction, num_pixels)
  if counts[1] > target:
    if step_fraction is None:
      raise ValueError(
          f"step {step} removes more than fraction {fraction} of the {num_pixels} pixels at "
          f"the first grid point, so AOPC and AFOC would be 0 for every image; use step <= "
          f"floor(fraction * P) = {target}")
    raise ValueError(
        f"step_fraction {step_fraction:g} removes {counts[1]} pixels at the first grid point, "
        f"more than fraction {fraction} of the {num_pixels} pixels ({target}), so AOPC and "
        f"AFOC would be 0 for every image; use step_fraction <= fraction")
  if target not in counts:
    raise _off_grid_error("fraction", fraction, target, counts, num_pixels, step_fraction,
                          _grid_text(step, step_fraction))


def _check_images(x) -> jax.Array:
  """`x` as a float `[N, H, W, C]` array; finite when concrete (shape and dtype always)."""
  x = jnp.asarray(x)
  if x.ndim != 4:
    raise ValueError(f"x must be float[N, H, W, C]; got shape {tuple(x.shape)}")
  if min(x.shape) < 1:
    raise ValueError(f"x must be float[N, H, W, C] with every axis non-empty; got shape "
                     f"{tuple(x.shape)}")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(
        f"x must be float[N, H, W, C] images; got dtype {x.dtype}. Convert (and scale) them "
        f"first, e.g. x.astype(jnp.float32) / 255 for uint8 images, as the model was trained")
  if _is_concrete(x):
    # Evaluated eagerly even while an outer jit traces (x itself is then a constant); only
    # one bool per image leaves the device.
    with jax.ensure_compile_time_eval():
      finite = np.asarray(jnp.isfinite(x).all(axis=(1, 2, 3)))
    if not finite.all():
      bad = np.flatnonzero(~finite)
      raise ValueError(f"x contains NaN or infinite values (images {bad[:10].tolist()}"
                       f"{'...' if bad.size > 10 else ''})")
  return x


def _saliency_map(x: jax.Array, saliency: jax.Array, reduce: str) -> jax.Array:
  """Checks shapes and returns the per-pixel map `float[N, H, W]`."""
  if x.ndim != 4:
    raise ValueError(f"x must be float[N, H, W, C]; got shape {tuple(x.shape)}")
  n, h, w, c = x.shape
  if not (jnp.issubdtype(saliency.dtype, jnp.floating)
          or jnp.issubdtype(saliency.dtype, jnp.integer)
          or saliency.dtype == jnp.bool_):
    raise ValueError(f"saliency must be a real-valued map; got dtype {saliency.dtype}")
  if saliency.ndim == 4:
    if saliency.shape != x.shape:
      raise ValueError(
          f"saliency must be [N, H, W] or [N, H, W, C] matching x {tuple(x.shape)}; "
          f"got shape {tuple(saliency.shape)}")
    saliency = to_map(saliency, reduce)
  elif saliency.ndim != 3 or saliency.shape != (n, h, w):
    raise ValueError(
        f"saliency must be [N, H, W] = {(n, h, w)} or [N, H, W, C] = {(n, h, w, c)} for x "
        f"of shape {tuple(x.shape)}; got shape {tuple(saliency.shape)}")
  if _is_concrete(saliency):
    with jax.ensure_compile_time_eval():
      nan_maps = np.asarray(jnp.isnan(saliency).any(axis=(1, 2)))
    bad = np.flatnonzero(nan_maps)
    if bad.size:
      raise ValueError(f"saliency contains NaN (images {bad[:10].tolist()}"
                       f"{'...' if bad.size > 10 else ''}); pixel removal needs a total order")
  return saliency


def _fill_spec(fill, x: jax.Array) -> tuple[str, jax.Array | None]:
  """Returns (static kind, dynamic value) for the fill option."""
  if isinstance(fill, str):
    if fill in ("batch_mean", "image_mean", "blur"):
      return fill, None
    if fill == "mean":
      raise ValueError(
          "fill 'mean' is ambiguous: 'batch_mean' is the per-channel mean of the evaluated "
          "batch (what 'mean' was); the papers fill with the training set's mean RGB, which "
          "is given as per-channel numbers (a pipeline's 'dataset_mean')")
    if fill == DATASET_MEAN:
      raise ValueError(
          f"fill {DATASET_MEAN!r} must be resolved into per-channel numbers (the mean over the "
          "training split) before pixel removal: a pipeline does it; here pass fill=(r, g, b)")
    raise ValueError(f"unknown fill {fill!r}; valid: {', '.join(FILLS)}")
  if isinstance(fill, (bool, np.bool_)):
    raise ValueError(f"unknown fill {fill!r}; valid: {', '.join(FILLS)}")
  if isinstance(fill, (tuple, list)):  # per-channel numbers, e.g. a training-set mean RGB
    if not fill or not all(isinstance(v, (int, float, np.number))
                           and not isinstance(v, (bool, np.bool_)) for v in fill):
      raise ValueError(f"per-channel fill must be a non-empty sequence of numbers; got {fill!r}")
    fill = np.asarray(fill, np.float64)
  if isinstance(fill, (int, float, np.number)):
    if not math.isfinite(float(fill)):
      raise ValueError(f"fill must be a finite number (or one of {', '.join(FILLS)}); "
                       f"got {fill}")
    return "value", jnp.asarray(fill, x.dtype)
  if isinstance(fill, (np.ndarray, jax.Array)):
    try:
      fits = np.broadcast_shapes(tuple(fill.shape), tuple(x.shape)) == tuple(x.shape)
    except ValueError:
      fits = False
    if not fits:
      raise ValueError(
          f"fill array of shape {tuple(fill.shape)} does not broadcast to x of shape "
          f"{tuple(x.shape)}; use [C] (per-channel), [N, 1, 1, 1] or [N, H, W, C]")
    if not (jnp.issubdtype(fill.dtype, jnp.floating) or jnp.issubdtype(fill.dtype, jnp.integer)):
      raise ValueError(f"fill array must be real-valued; got dtype {fill.dtype}")
    if _is_concrete(fill) and not np.isfinite(np.asarray(fill)).all():
      raise ValueError("fill array contains NaN or infinite values")
    return "value", jnp.asarray(fill, x.dtype)
  raise ValueError(f"unknown fill {fill!r}; valid: {', '.join(FILLS)}")


# --------------------------------------------------------------------------------------------
# Device code.


def _gaussian_matrix(size: int, sigma: float) -> np.ndarray:
  """`[size, size]` matrix of a 1-D Gaussian blur with 'nearest' (edge) boundary handling.

  Matches `scipy.ndimage.gaussian_filter1d(..., mode="nearest", truncate=3.0)`.
  """
  radius = int(3.0 * sigma + 0.5)
  offsets = np.arange(-radius, radius + 1)
  weights = np.exp(-0.5 * (offsets / sigma) ** 2)
  weights /= weights.sum()
  matrix = np.zeros((size, size), np.float64)
  for i in range(size):
    np.add.at(matrix[i], np.clip(i + offsets, 0, size - 1), weights)
  return matrix


def _fill_image(x: jax.Array, kind: str, value: jax.Array | None, blur_sigma: float):
  """The replacement values, broadcastable to `x` `[N, H, W, C]`."""
  if kind == "batch_mean":
    return jnp.mean(x, axis=(0, 1, 2), keepdims=True)
  if kind == "image_mean":
    return jnp.mean(x, axis=(1, 2), keepdims=True)
  if kind == "blur":
    _, h, w, _ = x.shape
    bh = jnp.asarray(_gaussian_matrix(h, blur_sigma), x.dtype)
    bw = jnp.asarray(_gaussian_matrix(w, blur_sigma), x.dtype)
    precision = jax.lax.Precision.HIGHEST
    return jnp.einsum("ih,jw,nhwc->nijc", bh, bw, x, precision=precision)
  return value


def _ranks(sal: jax.Array, order: str, key) -> jax.Array:
  """`int32[N, P]`: position of each pixel in the removal order (0 = removed first)."""
  n, h, w = sal.shape
  p = h * w
  flat = sal.reshape(n, p)
  if order == "random":
    keys = jax.random.split(key, n)
    # The inverse of a uniform permutation is uniform, so a permutation is used as the rank.
    return jax.vmap(lambda k: jax.random.permutation(k, p))(keys).astype(jnp.int32)
  sort_key = -flat if order == "morf" else flat
  # Stable: equal values keep ascending flat index in both orders (jnp treats -0.0 == 0.0).
  perm = jnp.argsort(sort_key, axis=1, stable=True)
  rows = jnp.arange(n)[:, None]
  return jnp.zeros((n, p), jnp.int32).at[rows, perm].set(jnp.arange(p, dtype=jnp.int32)[None])


def _score(logits: jax.Array, target: jax.Array, score: str) -> jax.Array:
  if score == "prob":
    logits = jax.nn.softmax(logits, axis=-1)
  return jnp.take_along_axis(logits, target[..., None], axis=-1)[..., 0]


def _prepare(model, variables, x, sal, fill_value, key, *, order, fill_kind, blur_sigma, score):
  apply = as_apply(model)
  logits0 = apply(variables, x)
  target = jnp.argmax(logits0, axis=-1).astype(jnp.int32)
  score0 = _score(logits0, target, score)
  rank = _ranks(sal, order, key)
  fill_img = jnp.broadcast_to(_fill_image(x, fill_kind, fill_value, blur_sigma), x.shape)
  return target, score0, rank, fill_img


def _evaluate_counts(model, variables, x, rank, fill_img, target, counts, *, score):
  """Scores and labels `[chunk, N]` for the removed counts `int32[chunk]`."""
  apply = as_apply(model)
  n, h, w, c = x.shape
  chunk = counts.shape[0]
  removed = (rank[None] < counts[:, None, None]).reshape(chunk, n, h, w, 1)
  x_k = jnp.where(removed, fill_img[None], x[None]).reshape(chunk * n, h, w, c)
  logits = apply(variables, x_k).reshape(chunk, n, -1)
  labels = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  return _score(logits, jnp.broadcast_to(target, (chunk, n)), score), labels


_STATIC = ("model", "order", "fill_kind", "blur_sigma", "score")
_prepare_jit = xla.jit(_prepare, static_argnames=_STATIC)
_evaluate_counts_jit = xla.jit(_evaluate_counts, static_argnames=("model", "score"))


@functools.partial(xla.jit, static_argnames=_STATIC + ("counts", "chunk"))
def _curve_lax_map(model, variables, x, sal, fill_value, key, *, order, fill_kind, blur_sigma,
                   score, counts, chunk):
  target, score0, rank, fill_img = _prepare(
      model, variables, x, sal, fill_value, key, order=order, fill_kind=fill_kind,
      blur_sigma=blur_sigma, score=score)
  rest = np.asarray(counts[1:], np.int32)
  n_chunks = -(-rest.size // chunk)
  # Padding repeats the last count; the padded results are dropped below.
  padded = np.concatenate([rest, np.full(n_chunks * chunk - rest.size, rest[-1], np.int32)])
  scores, labels = jax.lax.map(
      lambda cc: _evaluate_counts(model, variables, x, rank, fill_img, target, cc, score=score),
      jnp.asarray(padded.reshape(n_chunks, chunk)))
  scores = scores.reshape(n_chunks * chunk, -1)[:rest.size].T
  labels = labels.reshape(n_chunks * chunk, -1)[:rest.size].T
  return (target, jnp.concatenate([score0[:, None], scores], axis=1),
          jnp.concatenate([target[:, None], labels], axis=1))


def _curve_python_loop(model, variables, x, sal, fill_value, key, *, order, fill_kind,
                       blur_sigma, score, counts, chunk):
  target, score0, rank, fill_img = _prepare_jit(
      model, variables, x, sal, fill_value, key, order=order, fill_kind=fill_kind,
      blur_sigma=blur_sigma, score=score)
  rest = np.asarray(counts[1:], np.int32)
  n_chunks = -(-rest.size // chunk)
  padded = np.concatenate([rest, np.full(n_chunks * chunk - rest.size, rest[-1], np.int32)])
  all_scores, all_labels = [score0[:, None]], [target[:, None]]
  for i in range(n_chunks):
    s, l = _evaluate_counts_jit(model, variables, x, rank, fill_img, target,
                                jnp.asarray(padded[i * chunk:(i + 1) * chunk]), score=score)
    all_scores.append(s.T)
    all_labels.append(l.T)
  scores = jnp.concatenate(all_scores, axis=1)[:, :len(counts)]
  labels = jnp.concatenate(all_labels, axis=1)[:, :len(counts)]
  return target, scores, labels


# --------------------------------------------------------------------------------------------
# Public API.


def perturbation_curve(
    model: Any,
    variables: Any,
    x: jax.Array,
    saliency: jax.Array,
    *,
    order: str = "morf",
    step: int | None = None,
    step_fraction: float | None = None,
    max_fraction: float = 1.0,
    fill: Any = "batch_mean",
    score: str = "logit",
    key: jax.Array | None = None,
    chunk: int = 4,
    reduce: str = "sum",
    blur_sigma: float = 5.0,
    loop: str = "map",
) -> PerturbationCurve:
  """Removes pixels in saliency order and records the predicted-class score on a grid.

  For each grid count `k` the image `x_k` has its first `k` pixels of the removal order
  replaced (all channels) by the fill value; `f(x_k)` is evaluated for all grid points of the
  batch on the device, `chunk` grid points (i.e. `chunk * N` images) per forward pass. The
  ranking is computed once; the mask of grid point `k` is `rank < k`.

  Args:
    model: a Flax module or `apply(variables, x) -> logits` (see `models.base.as_apply`). It
      is a static argument of the compiled function: reuse the same object (or an equal,
      hashable one) to reuse the compilation.
    variables: the model's variables, passed as an argument (never closed over).
    x: `float[N, H, W, C]` images, finite, in the model's input scale (integer images such as
      uint8 are rejected rather than silently mixed with a float fill).
    saliency: `float[N, H, W]` maps, or `float[N, H, W, C]` attributions reduced with
      `to_map(saliency, reduce)`. Higher = more important. Must not contain NaN.
    order: "morf" (highest saliency first), "lerf" (lowest first) or "random" (a uniform
      permutation per image, `jax.random.permutation(k_i, H * W)` with `k_i` from
      `jax.random.split(key, N)`; the saliency is then unused). Ties: ascending flat pixel index `h * W + w`, so a
      constant map removes pixels in raster order in MoRF and LeRF alike.
    step: pixels removed between grid points, an integer in `[1, H * W]`; or
    step_fraction: the step as a fraction `d` of the pixels, in (0, 1] with `d * H * W >= 1`:
      grid point `k` removes `round(k * d * H * W)` pixels (halves up), so every multiple of
      `d` is on the grid. At most one of the two; neither: `step_fraction=0.005` (DeepMaps'
      0.5%), or `step=1` for images of fewer than 200 pixels. See `removal_grid`.
    max_fraction: the last grid point removes `floor(max_fraction * H * W)` (`step`) or
      `round(max_fraction * H * W)` (`step_fraction`) pixels; in [0, 1].
    fill: replacement values. "batch_mean": the per-channel mean over the evaluated batch `x`,
      so the curves depend on the batch's size and composition; the papers use the training
      set's mean RGB: pass it as per-channel numbers (a tuple / list or `float[C]` array),
      which makes every image's curve independent of its batch; "image_mean": per-image,
      per-channel mean; "blur": a Gaussian-blurred copy of the image (`blur_sigma` pixels,
      edge padding); a float constant; or any array broadcastable to `x` (`[C]`,
      `[N, 1, 1, 1]`, `[N, H, W, C]`, e.g. a precomputed baseline image). "mean" is refused
      as ambiguous, and `DATASET_MEAN` until a pipeline resolves it into numbers.
    score: "logit" (default, Samek et al.; DeepMaps) or "prob" (softmax probability, as
      Quantus' default `softmax=True`).
    key: PRNG key, required for `order="random"`, ignored otherwise.
    chunk: grid points per forward pass: the model sees batches of `chunk * N` images
      (memory grows accordingly; lower it for large models).
    reduce: channel reduction for `[N, H, W, C]` saliency ("sum", "abs_sum", "max_abs").
    blur_sigma: standard deviation in pixels of the Gaussian for `fill="blur"`.
    loop: how chunks are iterated: "map" (`lax.map` inside one jit, the default: one
      compiled program, no host round trip per chunk) or "python" (a jitted chunk function
      called from a Python loop). On XLA:CPU the two measured within noise of each other for
      this forward-only loop (small CNN, 64x64, batch 16, chunks 1-16; see
      `benchmarks/metrics.py --sweep`).

  Returns:
    A `PerturbationCurve` with `fractions float32[K]`, `counts int32[K]`, `scores [N, K]`,
    `labels int32[N, K]`, `target int32[N]`; `K = len(grid)` (see the module docstring).

  Raises:
    ValueError: wrong shapes (named in the message) or an empty axis; `x` not floating
      point (e.g. uint8 images: convert and scale them first); NaN or inf in a concrete `x`,
      NaN in a concrete `saliency`, a fill that is not finite; `step` not an integer in
      `[1, H * W]`, `step_fraction` outside (0, 1] or below one pixel, both given,
      `max_fraction` outside [0, 1], `blur_sigma` not finite and > 0; unknown
      `order`/`fill`/`score`/`loop` (valid values listed); `order="random"` without `key`,
      or a `key` that is not a PRNG key (e.g. the int 0); `chunk < 1`.

  Under `jax.jit` (traced `x`, `saliency` or fill) the value checks cannot run: NaN pixels of
  the saliency then sort after all numbers and are removed last in MoRF and LeRF, and NaN in
  `x` gives NaN scores. Shapes, dtypes and options are still checked.
  """
  if order not in ORDERS:
    raise ValueError(f"unknown order {order!r}; valid: {', '.join(ORDERS)}")
  if score not in SCORES:
    raise ValueError(f"unknown score {score!r}; valid: {', '.join(SCORES)}")
  if loop not in LOOPS:
    raise ValueError(f"unknown loop {loop!r}; valid: {', '.join(LOOPS)}")
  if order == "random" and key is None:
    raise ValueError('order="random" needs an explicit PRNG key (key=jax.random.key(...))')
  if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
    raise ValueError(f"chunk must be a positive integer number of grid points; got {chunk!r}")
  if not 0 < float(blur_sigma) < math.inf:
    raise ValueError(f"blur_sigma must be a finite number > 0; got {blur_sigma}")
  if key is not None:
    check_key(key)
  x = _check_images(x)
  sal = _saliency_map(x, jnp.asarray(saliency), reduce)
  _, h, w, _ = x.shape
  counts = removal_grid(h * w, step=step, step_fraction=step_fraction,
                        max_fraction=max_fraction)
  step, step_fraction = _grid_spec(step, step_fraction, h * w)
  fill_kind, fill_value = _fill_spec(fill, x)
  if key is None:
    key = jax.random.key(0)  # unused by MoRF/LeRF; keeps one compiled signature
  if len(counts) == 1:
    target, score0, _, _ = _prepare_jit(
        model, variables, x, sal, fill_value, key, order=order, fill_kind=fill_kind,
        blur_sigma=float(blur_sigma), score=score)
    scores, labels = score0[:, None], target[:, None]
  else:
    run = _curve_lax_map if loop == "map" else _curve_python_loop
    target, scores, labels = run(
        model, variables, x, sal, fill_value, key, order=order, fill_kind=fill_kind,
        blur_sigma=float(blur_sigma), score=score, counts=counts,
        chunk=min(int(chunk), len(counts) - 1))
  counts_arr = np.asarray(counts, np.int32)
  return PerturbationCurve(
      fractions=jnp.asarray(counts_arr / (h * w), jnp.float32), counts=jnp.asarray(counts_arr),
      scores=scores, labels=labels, target=target, num_pixels=h * w, max_count=counts[-1],
      step=step, step_fraction=step_fraction)


def _grid_index(curve: PerturbationCurve, fraction: float, name: str) -> int | jax.Array:
  """Index of the grid point of `fraction`'s pixel count (module docstring); at least 1.

  Raises a ValueError when the count is 0, beyond the curve, before the first step
  (`check_removal_grid`) or between two grid points (never the point before it).
  """
  if not isinstance(curve, PerturbationCurve):
    raise ValueError(f"curve must be a PerturbationCurve (from perturbation_curve); got "
                     f"{type(curve).__name__}")
  fraction = _check_fraction(name, fraction, positive=True)
  num_pixels = curve.num_pixels
  target = _count_of(fraction, num_pixels, curve.step_fraction)
  if curve.max_count < target:
    raise ValueError(
        f"the curve stops at {curve.max_count} of {num_pixels} pixels, before "
        f"{name}={fraction} ({target} pixels); compute it with max_fraction >= {fraction}")
  if curve.step is not None or curve.step_fraction is not None:  # static: known under jit
    counts = _grid_counts(num_pixels, curve.step, curve.step_fraction, curve.max_count)
    grid = _grid_text(curve.step, curve.step_fraction)
  elif _is_concrete(curve.counts):
    counts = tuple(int(c) for c in np.asarray(curve.counts))
    grid = f"the curve's counts {list(counts[:4])}{'...' if len(counts) > 4 else ''}"
  else:  # a hand-built curve under jit: nothing to check
    return jnp.sum(curve.counts <= target) - 1
  if target in counts[1:]:
    return counts.index(target)
  if target == 0 or len(counts) < 2 or counts[1] > target:
    first = counts[1] if len(counts) > 1 else curve.max_count
    check_removal_grid(num_pixels, step=curve.step or (None if curve.step_fraction else first),
                       step_fraction=curve.step_fraction, fraction=fraction)
    raise ValueError(  # reached only for a hand-built grid that is not `0, step, 2 step, ...`
        f"the curve's first grid point after 0 removes {first} of {num_pixels} pixels, "
        f"more than {name}={fraction} ({target} pixels): the metric would be 0 for every image")
  raise _off_grid_error(name, fraction, target, counts, num_pixels, curve.step_fraction, grid)


def aopc(curve: PerturbationCurve, *, max_fraction: float = 0.1) -> jax.Array:
  """Area over the perturbation curve (Samek et al. 2016; DeepMaps App. B, Eq. 10).

  `AOPC = 1/(K+1) sum_{k in grid, k <= K_P} (f_c(x) - f_c(x_k))`, i.e. the mean over the
  grid points up to the one of `max_fraction` (`K_P` its pixel count; the point `k = 0`
  included, contributing 0). Meant for MoRF curves (higher is better); on a LeRF curve it is
  the LeRF variant.

  Args:
    curve: a `PerturbationCurve` reaching at least `max_fraction`.
    max_fraction: last removed fraction included, in (0, 1], a grid point (module
      docstring); 10% in DeepMaps.

  Returns:
    `float[N]`.

  Raises:
    ValueError: `max_fraction` outside (0, 1] or beyond the end of the curve, a grid whose
      first step already removes more than `max_fraction` (AOPC would be 0 for every
      image), or a `max_fraction` between two grid points (the message gives the nearest
      ones; see `check_removal_grid`).
  """
  last = _grid_index(curve, max_fraction, "max_fraction")
  included = jnp.arange(curve.counts.shape[0]) <= last
  drop = curve.scores[:, :1] - curve.scores
  return jnp.sum(jnp.where(included[None], drop, 0), axis=1) / (last + 1)


def afoc(curve: PerturbationCurve, *, fraction: float = 0.1) -> jax.Array:
  """Absolute fractional output change (Srinivas & Fleuret 2019; DeepMaps App. B, Eq. 11).

  `AFOC = |f_c(x) - f_c(x_k)| / |f_c(x)|` at the grid point of `fraction` (`k` its pixel
  count, module docstring). On a LeRF curve lower is better; on a MoRF curve higher is
  better. `f_c(x) == 0` gives inf (or NaN).

  Args:
    curve: a `PerturbationCurve` reaching at least `fraction`.
    fraction: removed fraction, in (0, 1], a grid point; 10% in DeepMaps.

  Returns:
    `float[N]`.

  Raises:
    ValueError: `fraction` outside (0, 1] or beyond the end of the curve, a grid whose first
      step already removes more than `fraction` (AFOC would be 0 for every image), or a
      `fraction` between two grid points (see `check_removal_grid`).
  """
  index = _grid_index(curve, fraction, "fraction")
  s0 = curve.scores[:, 0]
  sk = jnp.take(curve.scores, index, axis=1)
  return jnp.abs(s0 - sk) / jnp.abs(s0)


def pixels_to_flip(curve: PerturbationCurve) -> tuple[jax.Array, jax.Array]:
  """Fraction of pixels removed when the decision first changes (n_MoRF / n_LeRF, DeepMaps).

  Args:
    curve: a `PerturbationCurve` (MoRF for n_MoRF, smaller is better; LeRF for n_LeRF, larger
      is better).

  Returns:
    `(fraction float32[N], flipped bool[N])`: the removed fraction at the first grid point
    whose label differs from `target`; 1.0 and `flipped=False` where the label never changes
    on the curve (also when the curve stops before `max_fraction = 1`).

  Raises:
    ValueError: if `curve` is not a `PerturbationCurve`.
  """
  if not isinstance(curve, PerturbationCurve):
    raise ValueError(f"curve must be a PerturbationCurve (from perturbation_curve); got "
                     f"{type(curve).__name__}")
  changed = curve.labels != curve.target[:, None]
  flipped = jnp.any(changed, axis=1)
  first = jnp.argmax(changed, axis=1)
  return jnp.where(flipped, curve.fractions[first], 1.0).astype(jnp.float32), flipped


def pixel_removal_metrics(
    model: Any,
    variables: Any,
    x: jax.Array,
    saliency: jax.Array,
    *,
    fraction: float = 0.1,
    step: int | None = None,
    step_fraction: float | None = None,
    fill: Any = "batch_mean",
    score: str = "logit",
    chunk: int = 4,
    reduce: str = "sum",
    blur_sigma: float = 5.0,
    loop: str = "map",
) -> dict[str, jax.Array]:
  """The DeepMaps pixel-removal set from one full MoRF and one full LeRF curve.

  Args:
    model, variables, x, saliency: as in `perturbation_curve`.
    fraction: removed fraction for AOPC (up to) and AFOC (at); 10% in DeepMaps. It must be
      on the grid (`check_removal_grid`).
    step, step_fraction, fill, score, chunk, reduce, blur_sigma, loop: as in
      `perturbation_curve`.

  Returns:
    A dict of `float32[N]`: "aopc" (MoRF, higher better), "afoc_morf" (higher better),
    "afoc_lerf" (lower better), "n_morf" (smaller better), "n_lerf" (larger better), and
    "flipped_morf", "flipped_lerf" (1.0 where the decision changed before all pixels were
    removed, else 0.0; n_* is 1.0 there).

  Raises:
    ValueError: as `perturbation_curve`; `fraction` outside (0, 1], before the first grid
      step (AOPC and AFOC would be 0) or between two grid points (`check_removal_grid`).
  """
  fraction = _check_fraction("fraction", fraction, positive=True)
  x = _check_images(x)
  check_removal_grid(x.shape[1] * x.shape[2], step=step, step_fraction=step_fraction,
                     fraction=fraction)
  options = dict(step=step, step_fraction=step_fraction, max_fraction=1.0, fill=fill,
                 score=score, chunk=chunk, reduce=reduce, blur_sigma=blur_sigma, loop=loop)
  morf = perturbation_curve(model, variables, x, saliency, order="morf", **options)
  lerf = perturbation_curve(model, variables, x, saliency, order="lerf", **options)
  return _metrics_from_curves(morf, lerf, fraction=fraction)


def metrics_from_curves(morf: PerturbationCurve, lerf: PerturbationCurve, *,
                        fraction: float = 0.1) -> dict[str, jax.Array]:
  """The DeepMaps pixel-removal set (`pixel_removal_metrics`) from a MoRF and a LeRF curve.

  Plain JAX (jit it, or call it inside a jitted function): `pixel_removal_metrics` and
  `shared_curve_delta` compute their metrics with it.

  Args:
    morf: a full MoRF `PerturbationCurve` (`max_fraction=1.0`, so that n_MoRF sees every
      decision change).
    lerf: the LeRF curve of the same images and grid.
    fraction: removed fraction for AOPC (up to) and AFOC (at), in (0, 1], on the grid.

  Returns:
    A dict with the keys `REMOVAL_METRICS`, each `float32[N]` (as `pixel_removal_metrics`).

  Raises:
    ValueError: a curve that is not a `PerturbationCurve`, `fraction` outside (0, 1] or
      beyond the curves, or not a grid point (`check_removal_grid`).
  """
  return {name: values.astype(jnp.float32)
          for name, values in _curve_metrics(morf, lerf, fraction=fraction).items()}


def _curve_metrics(morf: PerturbationCurve, lerf: PerturbationCurve, *,
                   fraction: float) -> dict[str, jax.Array]:
  """`metrics_from_curves` with AOPC and AFOC left in the curves' score dtype.

  `shared_curve_delta` keeps that dtype: under `jit`, XLA may drop a bfloat16 -> float32
  round trip (excess precision), so casting inside would change the values it records for a
  bfloat16 model.
  """
  n_morf, flipped_morf = pixels_to_flip(morf)
  n_lerf, flipped_lerf = pixels_to_flip(lerf)
  return {"aopc": aopc(morf, max_fraction=fraction),
          "afoc_morf": afoc(morf, fraction=fraction),
          "afoc_lerf": afoc(lerf, fraction=fraction),
          "n_morf": n_morf, "n_lerf": n_lerf,
          "flipped_morf": flipped_morf.astype(jnp.float32),
          "flipped_lerf": flipped_lerf.astype(jnp.float32)}


_metrics_from_curves = xla.jit(metrics_from_curves, static_argnames=("fraction",))


@functools.partial(xla.jit, static_argnames=("num_images", "pool_size", "k"))
def draw_others(key: jax.Array, num_images: int, pool_size: int, k: int,
                self_index: jax.Array | None = None) -> jax.Array:
  """Draws `k` distinct pool indices per image, uniformly, excluding the image's own index.

  Args:
    key: PRNG key.
    num_images: N.
    pool_size: M, the number of maps to draw from.
    k: draws per image (without replacement).
    self_index: `int[N]` index of each image in the pool (excluded), or None (nothing
      excluded; the images are not in the pool).

  Returns:
    `int32[N, k]`.

  Raises:
    ValueError: for a `key` that is not a PRNG key (e.g. an int seed), `k` outside
      `[1, pool_size]`, or `self_index` not of shape `[num_images]`.
  """
  check_key(key)
  if not 1 <= k <= pool_size:
    raise ValueError(f"k must be in [1, pool_size = {pool_size}]; got {k}")
  if self_index is not None and tuple(self_index.shape) != (num_images,):
    raise ValueError(f"self_index must be int[num_images = {num_images}]; got shape "
                     f"{tuple(self_index.shape)}")
  u = jax.random.uniform(key, (num_images, pool_size))
  if self_index is not None:
    u = u.at[jnp.arange(num_images), self_index].set(jnp.inf)
  # The k smallest of iid uniforms are a uniform k-subset, in uniformly random order.
  return jax.lax.top_k(-u, k)[1].astype(jnp.int32)


def draw_partners(key: jax.Array, indices, total: int, k: int) -> jax.Array:
  """The DeepMaps Eq. 9 partners: `k` distinct images of the evaluated set per image.

  Image `i` (an index into a set of `total` images) gets `k` distinct indices drawn
  uniformly without replacement from `{0, ..., total - 1} \\ {i}`, from `fold_in(key, i)`
  alone: the partners of an image do not depend on the batch it is evaluated in, so an
  evaluation split into shards of any size draws the same ones. DeepMaps draws K = 5 images
  "uniformly at random from our dataset for every image considered" (Sec. 4.3).

  Args:
    key: PRNG key of the draws (one for the whole evaluation).
    indices: `int[N]`, the images' indices in the evaluated set, in `[0, total)`.
    total: the size of the evaluated set.
    k: partners per image, `1 <= k < total`.

  Returns:
    `int32[N, k]`, in the uniformly random order of the draw.

  Raises:
    ValueError: a `key` that is not a PRNG key, `k` outside `[1, total)`, `indices` not a
      1-D integer array or (when concrete) outside `[0, total)`.
  """
  check_key(key)
  for name, value in (("total", total), ("k", k)):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
      raise ValueError(f"{name} must be an int; got {value!r}")
  if not 1 <= k < total:
    raise ValueError(f"k must be in [1, total = {total}) (each image needs k other images of "
                     f"the evaluated set); got {k}")
  concrete = _is_concrete(indices)
  indices = np.asarray(indices) if concrete else indices
  if indices.ndim != 1 or not jnp.issubdtype(indices.dtype, jnp.integer):
    raise ValueError(f"indices must be int[N]; got {indices.dtype}{list(indices.shape)}")
  if concrete and indices.size and (indices.min() < 0 or indices.max() >= total):
    raise ValueError(f"indices must lie in [0, total = {total}); got "
                     f"[{indices.min()}, {indices.max()}]")
  return _draw_partners(key, jnp.asarray(indices, jnp.int32), total=int(total), k=int(k))


@functools.partial(xla.jit, static_argnames=("total", "k"))
def _draw_partners(key, indices, *, total, k):
  def one(index):
    # The k smallest of iid uniforms are a uniform k-subset, in uniformly random order.
    u = jax.random.uniform(jax.random.fold_in(key, index), (total - 1,))
    drawn = jax.lax.top_k(-u, k)[1]  # in [0, total - 1): skip the image itself
    return jnp.where(drawn >= index, drawn + 1, drawn)
  return jax.vmap(one)(indices).astype(jnp.int32)


def delta(
    metric_fn: Callable[..., Any],
    model: Any,
    variables: Any,
    x: jax.Array,
    saliency: jax.Array,
    *,
    other_saliency: jax.Array | None = None,
    self_index: jax.Array | None = None,
    k: int = 5,
    key: jax.Array,
) -> DeltaResult:
  """DeepMaps Eq. 9: `sigma(x, s(x)) - 1/k sum_j sigma(x, s(xi_j))`.

  The maps `s(xi_j)` are those the same method produced for `k` other images, drawn uniformly
  without replacement (explicit `key`) from a pool of maps: by default the maps of the
  evaluated batch itself (`saliency`), each image excluding its own map. The own map and the
  `N * k` borrowed maps are evaluated in one call of `metric_fn` on `N * (k + 1)` images
  (`x` repeated), so one compilation serves both. With `fill="batch_mean"` the mean of the
  repeated batch equals that of `x` (up to rounding); pass an explicit fill to be exact.

  Args:
    metric_fn: `metric_fn(model, variables, x, saliency) -> pytree of float[N]`, e.g.
      `pixel_removal_metrics` or `functools.partial(pixel_removal_metrics, fill=mean_rgb)`, or a
      function wrapping `perturbation_curve` and `aopc`.
    model, variables: as in `perturbation_curve`.
    x: `float[N, H, W, C]`.
    saliency: `float[N, H, W]` (or `[N, H, W, C]`), the maps of `x`.
    other_saliency: `float[M, ...]` pool of maps with `saliency.shape[1:]`, default `saliency`.
    self_index: `int[N]`, the index of each image's own map in `other_saliency` (excluded
      from its draws); default `arange(N)` when `other_saliency` is None, otherwise None
      (the images are not in the pool).
    k: number of other maps per image (K = 5 in DeepMaps); needs at least `k` candidates.
    key: PRNG key for the draws.

  Returns:
    A `DeltaResult(delta, own, others, other_index)`; leaves `float32[N]`.

  Raises:
    ValueError: a `key` that is not a PRNG key (e.g. an int seed), `x` not finite
      `float[N, H, W, C]`, shape mismatches, `self_index` outside the pool (when concrete),
      `k < 1` or fewer than `k` candidate maps.
  """
  check_key(key)
  x = _check_images(x)
  saliency = jnp.asarray(saliency)
  n = x.shape[0]
  if saliency.shape[0] != n:
    raise ValueError(f"saliency has {saliency.shape[0]} maps for {n} images "
                     f"(x {tuple(x.shape)}, saliency {tuple(saliency.shape)})")
  if other_saliency is None:
    pool = saliency
    self_index = jnp.arange(n) if self_index is None else self_index
  else:
    pool = jnp.asarray(other_saliency)
    if pool.shape[1:] != saliency.shape[1:]:
      raise ValueError(f"other_saliency maps {tuple(pool.shape)} must have the shape of the "
                       f"saliency maps {tuple(saliency.shape)} after the first axis")
  if self_index is not None:
    self_index = jnp.asarray(self_index, jnp.int32)
    if self_index.shape != (n,):
      raise ValueError(f"self_index must be int[N = {n}]; got shape {tuple(self_index.shape)}")
    if _is_concrete(self_index):
      outside = np.asarray((self_index < 0) | (self_index >= pool.shape[0]))
      if outside.any():
        raise ValueError(f"self_index must index the pool of {pool.shape[0]} maps; got "
                         f"{np.asarray(self_index)[outside][:10].tolist()}")
  candidates = pool.shape[0] - (self_index is not None)
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
    raise ValueError(f"k must be a positive integer; got {k!r}")
  if candidates < k:
    raise ValueError(f"delta needs at least k = {k} other maps per image; the pool of "
                     f"{pool.shape[0]} maps offers {candidates}")
  index = draw_others(key, n, pool.shape[0], k, self_index)
  x_all, maps_all = _delta_inputs(x, saliency, pool, index)
  own, others = _delta_split(metric_fn(model, variables, x_all, maps_all), n=n, k=k)
  return DeltaResult(delta=jax.tree.map(jnp.subtract, own, others), own=own, others=others,
                     other_index=index)


@xla.jit
def _delta_inputs(x, saliency, pool, index):
  """`x` followed by each image repeated k times; own maps followed by the borrowed maps."""
  k = index.shape[1]
  x_all = jnp.concatenate([x, jnp.repeat(x, k, axis=0)], axis=0)
  return x_all, jnp.concatenate([saliency, pool[index.reshape(-1)]], axis=0)


@functools.partial(xla.jit, static_argnames=("n", "k"))
def _delta_split(values, *, n, k):
  own = jax.tree.map(lambda v: jnp.asarray(v, jnp.float32)[:n], values)
  others = jax.tree.map(
      lambda v: jnp.asarray(v, jnp.float32)[n:].reshape(n, k).mean(axis=1), values)
  return own, others


class SharedCurveDelta(NamedTuple):
  """Result of `shared_curve_delta`.

  Attributes:
    own: `{metric: float[N]}` for every key of `REMOVAL_METRICS`, with the images' own maps
      (as `pixel_removal_metrics`; AOPC and AFOC in the model output's dtype, the others
      float32).
    others: `{metric: float32[N]}` for `DELTA_METRICS`, the mean over the `K` other maps;
      None without `other_maps`.
    delta: `{metric: float32[N]}` for `DELTA_METRICS`, `own - others` (DeepMaps Eq. 9); None
      without `other_maps`.
    curves: `{"morf": PerturbationCurve, "lerf": PerturbationCurve}` of the own maps only
      (`N` rows).
  """
  own: dict[str, jax.Array]
  others: dict[str, jax.Array] | None
  delta: dict[str, jax.Array] | None
  curves: dict[str, PerturbationCurve]


def shared_curve_delta(
    model: Any,
    variables: Any,
    x: jax.Array,
    saliency: jax.Array,
    *,
    other_maps: jax.Array | None = None,
    fraction: float = 0.1,
    step: int | None = None,
    step_fraction: float | None = None,
    fill: Any = "batch_mean",
    score: str = "logit",
    chunk: int = 4,
) -> SharedCurveDelta:
  """The DeepMaps set, its Eq. 9 delta and the own curves, from one MoRF and one LeRF call.

  Eq. 9: `delta sigma(x_i) = sigma(x_i, s(x_i)) - 1/K sum_k sigma(x_i, s(xi_k))`, where
  `s(xi_k)` are the maps the same method gives K other images (`other_maps`, e.g. of the
  partners `draw_partners` picks from the whole evaluated set, each explained as its own
  image). The own and the other maps share one `perturbation_curve` call per order on
  `N * (K + 1)` images (`x` followed by each image repeated K times), whose first `N` rows
  are also returned as the own curves: an evaluation that reports mean curves does not
  evaluate the own maps a second time. Without `other_maps` it is `pixel_removal_metrics`
  plus the curves.

  `fill="batch_mean"` is the mean of the repeated batch (equal to the mean of `x` up to
  rounding); pass per-channel numbers (the training set's mean, as the papers) to make the
  metrics independent of the batch.

  Plain JAX: call it eagerly or inside a jitted function (the curves are jitted themselves).

  Args:
    model, variables: as in `perturbation_curve`.
    x: `float[N, H, W, C]` images.
    saliency: `float[N, H, W]` maps of `x` (or `[N, H, W, C]` attributions, summed over
      channels).
    other_maps: `float[N, K, H, W]` (or `[N, K, H, W, C]`), K >= 1 maps of other images per
      image (K = 5 in DeepMaps); None: no delta.
    fraction: removed fraction for AOPC (up to) and AFOC (at), in (0, 1], on the grid; 0.1
      in DeepMaps.
    step, step_fraction, score, chunk: as in `perturbation_curve` (full curves,
      `max_fraction=1.0`).
    fill: as in `perturbation_curve` (e.g. a tuple of per-channel values, hashable as the
      runner's static options need).

  Returns:
    A `SharedCurveDelta(own, others, delta, curves)`.

  Raises:
    ValueError: `other_maps` not shaped `[N, K, ...]` like `saliency` with K >= 1; as
      `pixel_removal_metrics` for the images, the maps and the options.
  """
  fraction = _check_fraction("fraction", fraction, positive=True)
  x = _check_images(x)
  n = x.shape[0]
  k = 0
  if other_maps is not None:
    other_maps = jnp.asarray(other_maps)
    if (other_maps.ndim != jnp.ndim(saliency) + 1 or other_maps.shape[0] != n
        or other_maps.shape[1] < 1 or other_maps.shape[2:] != jnp.shape(saliency)[1:]):
      raise ValueError(f"other_maps must be [N = {n}, K >= 1, "
                       f"{', '.join(map(str, jnp.shape(saliency)[1:]))}] (K maps of other "
                       f"images per image); got shape {tuple(other_maps.shape)}")
    k = other_maps.shape[1]
  check_removal_grid(x.shape[1] * x.shape[2], step=step, step_fraction=step_fraction,
                     fraction=fraction)
  # The operations below (and their order) are those of the evaluations whose tables are
  # recorded: changing them changes the recorded bytes.
  if k:
    x_all = jnp.concatenate([x, jnp.repeat(x, k, axis=0)], axis=0)
    maps_all = jnp.concatenate(
        [saliency, other_maps.reshape((n * k,) + other_maps.shape[2:]).astype(
            jnp.asarray(saliency).dtype)], axis=0)
  else:
    x_all, maps_all = x, saliency
  if isinstance(fill, (tuple, list)):  # per-channel fill, e.g. an RGB mean
    fill = jnp.asarray(fill, x.dtype)
  curves = {order: perturbation_curve(model, variables, x_all, maps_all, order=order,
                                      max_fraction=1.0, step=step, step_fraction=step_fraction,
                                      fill=fill, chunk=chunk, score=score)
            for order in ("morf", "lerf")}
  values = _curve_metrics(curves["morf"], curves["lerf"], fraction=fraction)
  own = {name: v[:n] for name, v in values.items()}
  if k:
    others = {name: values[name][n:].astype(jnp.float32).reshape(n, k).mean(axis=1)
              for name in DELTA_METRICS}
    delta_values = {name: own[name].astype(jnp.float32) - others[name]
                    for name in DELTA_METRICS}
  else:
    others = delta_values = None
  own_curves = {order: curve.replace(scores=curve.scores[:n], labels=curve.labels[:n],
                                     target=curve.target[:n])
                for order, curve in curves.items()}
  return SharedCurveDelta(own=own, others=others, delta=delta_values, curves=own_curves)
