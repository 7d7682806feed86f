"""Saliency maps scored against ground truth: five-band scores and pixel-wise IOU.

Two protocols:

* **Five-band scores** (Tjoa & Guan, "Quantifying Explainability of Saliency
  Methods in Deep Neural Networks", arXiv:2009.02899), on the synthetic cells
  whose ground-truth heatmaps are 0 / 0.4 (localisation) / 0.9 (feature). This
  reproduces their public code (`ericotjo001/explainable_ai`, v1
  `xai_basic/legacy/srcV1/pipeline/eval/eval_metrics.py`) statement by statement:

  1. `channel_adjust`: optional clip of the *raw* attribution to
     `[-clamp, clamp]`, signed channel sum `S`, then `S / max|S|` per sample; an
     all-zero attribution stays zero. `clamp_order="paper"` follows the paper's
     text instead: `h / max|h|` first, then the clip, the sum and `S / max|S|`
     (`CLAMP_ORDERS`).
  2. `five_band`: stratification into {-2, -1, 0, 1, 2} with thresholds
     `(g1, g2, g3, g4)`: `v <= g1 -> -2`, `g1 < v <= g2 -> -1`,
     `g2 < v <= g3 -> 0`, `g3 < v <= g4 -> 1`, `v > g4 -> 2`. The ground truth is
     always banded with `(-0.7, -0.3, 0.3, 0.7)`, so 0 -> 0, 0.4 -> 1, 0.9 -> 2.
  3. `soft_thresholds`: the M threshold sets, each threshold moving by `delta`
     towards 0 at every step, accumulated in float64 like the original.
  4. `five_band_scores`: stringent counts per sample and threshold,
     `TP = [h != 0 and h == h0]`, `FP = [h != 0 and h != h0]` (a wrong non-zero
     band is a false positive, never a false negative), `TN = [h == 0 and h0 == 0]`,
     `FN = [h == 0 and h0 != 0]`; accuracy `mean[h == h0]`,
     `recall = TP / (TP + FN + eps)`, `precision = TP / (TP + FP + eps)`,
     `FPR = FP / (FP + TN + eps)` with `eps = 1e-6`.
  5. `five_band_summary` (the per-sample CSV columns `Amu, Au, Au1, Rmu, Ru, Ru1,
     Pmu, Pu, Pu1`), `roc_points` (mean recall and FPR per threshold over all
     samples) and `roc_auc` (an addition: the original computes no AUC).

* **Pixel-wise IOU and IOU\\*** (Gattas 2020, "Evaluating Feature Attribution
  Methods", thesis, sections 3.7-3.8 and 4.2): `iou`, `iou_star`, and
  `summarize_by_confidence` for the high (softmax > 0.9) / low confidence split.

Everything on device is batched over samples (and over thresholds), jittable,
and takes parameters as arguments. Input checks that need values (NaN) run only
when the inputs are concrete, i.e. not under an outer `jax.jit`.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from xai_jax import xla
from xai_jax.explain.postprocess import to_map

EPS = 1e-6
"""The `eps` of the original's recall, precision and FPR denominators."""

GROUND_TRUTH_THRESHOLDS = (-0.7, -0.3, 0.3, 0.7)
"""Band edges for the ground-truth heatmaps: 0 -> 0, 0.4 -> 1, 0.9 -> 2."""


class ThresholdPreset(NamedTuple):
  """A soft-threshold schedule of Tjoa & Guan's evaluation (`XAI_SETTING_000x`).

  Attributes:
    g0: the first threshold set `(g1, g2, g3, g4)`.
    delta: the step towards 0 per threshold index.
    m: the number of threshold sets.
    clamp: the clip before the channel sum (None: no clip); where it acts is
      `channel_adjust`'s `clamp_order`.
  """
  g0: tuple[float, float, float, float]
  delta: float
  m: int
  clamp: float | None


PRESETS: Mapping[str, ThresholdPreset] = {
    # XAI_SETTING_0001, files .xai / .csv: ends at (-0.225, -0.025, 0.025, 0.225).
    "soft": ThresholdPreset((-0.5, -0.3, 0.3, 0.5), 0.005, 56, None),
    # XAI_SETTING_0002, files .clamp.xai / .clamp.csv: ends at (-0.5, -0.1, 0.1, 0.5).
    "clamped": ThresholdPreset((-0.9, -0.5, 0.5, 0.9), 0.01, 41, 0.1),
}

CLAMP_ORDERS = ("code", "paper")
"""Where the clamp acts in `channel_adjust`. "code" (the default): on the raw attribution, as
the original code does (`h -> C(h) -> s_c(h) -> h / max|h|`), so an explainer whose raw
attributions stay within the clamp is never clamped. "paper": after a first normalisation,
as the paper's text (Sec. III) writes it (`h -> h / max|h| -> C(h) -> s_c(h) -> h / max|h|`),
so the clamp acts on every explainer alike."""

SUMMARY_COLUMNS = ("Amu", "Au", "Au1", "Rmu", "Ru", "Ru1", "Pmu", "Pu", "Pu1")
"""The per-sample score columns of the original CSV, in its order."""


# ----------------------------------------------------------------------------
# Input checks.


def _is_concrete(x: Any) -> bool:
  return not isinstance(x, jax.core.Tracer)


def _check_finite(name: str, x: Any) -> None:
  """Raises ValueError if a concrete array holds NaN or infinity."""
  if _is_concrete(x):
    values = np.asarray(x)
    if np.isnan(values).any():
      raise ValueError(f"{name} contains NaN values ({int(np.isnan(values).sum())} of {values.size})")
    if np.isinf(values).any():
      raise ValueError(f"{name} contains infinite values")


def _check_clamp(clamp: float | None) -> float | None:
  if clamp is None:
    return None
  clamp = float(clamp)
  if not np.isfinite(clamp) or clamp <= 0:
    raise ValueError(f"clamp must be a positive finite number or None; got {clamp}")
  return clamp


def _check_clamp_order(clamp_order: Any) -> str:
  if not isinstance(clamp_order, str) or clamp_order not in CLAMP_ORDERS:
    raise ValueError(f"unknown clamp_order {clamp_order!r}; valid: {', '.join(CLAMP_ORDERS)}")
  return clamp_order


def _check_maps(saliency: Any, reference: Any, *, reference_name: str) -> tuple[jax.Array, jax.Array]:
  """Checks a saliency batch against a [N, H, W] reference (heatmap or mask)."""
  saliency = jnp.asarray(saliency)
  reference = jnp.asarray(reference)
  if reference.ndim == 4 and reference.shape[-1] == 1:
    reference = reference[..., 0]
  if reference.ndim != 3:
    raise ValueError(
        f"{reference_name} must be [N, H, W] (or [N, H, W, 1]); got shape {reference.shape}")
  if saliency.ndim not in (3, 4):
    raise ValueError(
        f"saliency must be [N, H, W] or [N, H, W, C]; got shape {saliency.shape}")
  if saliency.shape[:3] != reference.shape:
    raise ValueError(
        f"saliency shape {saliency.shape} does not match {reference_name} shape "
        f"{reference.shape} in [N, H, W]")
  if min(saliency.shape) < 1:
    raise ValueError(f"saliency must hold at least one map of at least one pixel; got shape "
                     f"{saliency.shape}")
  _check_finite("saliency", saliency)
  _check_finite(reference_name, reference)
  return saliency, reference


# ----------------------------------------------------------------------------
# Five-band scores (Tjoa & Guan).


def channel_adjust(attributions: Any, *, clamp: float | None = None,
                   clamp_order: str = "code") -> jax.Array:
  """The channel adjustment: optional clip, channel sum, `/ max|S|`.

  `sum_pixels_over_channels` of Tjoa & Guan's evaluation code: if the attribution is all
  zero it stays zero; otherwise `S = sum_c attr` and the map is `S / max|S|` per sample,
  so it lies in [-1, 1] with a peak of +-1.

  With `clamp`, the attribution is clipped to `[-clamp, clamp]` before the sum, at one of
  two places (`CLAMP_ORDERS`):

  * "code" (default, the original code): the *raw, unnormalised* attribution is clipped,
    `h -> C(h) -> s_c(h) -> h / max|h|`. The effect depends on the explainer's absolute
    scale: an attribution whose raw maximum |value| is at most `clamp` is never clipped.
  * "paper" (the paper's text, Sec. III "clamping"): the attribution is first divided by
    its maximum |value| over all pixels and channels of the sample,
    `h -> h / max|h| -> C(h) -> s_c(h) -> h / max|h|`, so the clamp acts on the same
    scale for every explainer.

  (Without `clamp`, both orders are the same: a pre-normalisation by a positive scalar
  cancels in the final `/ max|S|`.)

  A non-zero attribution whose channel sum is zero everywhere (channels that cancel) gives
  0/0 = NaN in the original, which its banding puts in band 0 at every pixel; here it
  gives zeros, which band identically.

  Args:
    attributions: `float[N, H, W, C]` or `float[N, H, W]` (already one channel).
    clamp: clip to `[-clamp, clamp]` before the channel sum; None: no clip.
    clamp_order: "code" or "paper", where the clip acts (see above).

  Returns:
    `float32[N, H, W]` in [-1, 1].

  Raises:
    ValueError: for another rank, a non-positive clamp, an unknown `clamp_order`, or
      NaN/inf values.
  """
  x = jnp.asarray(attributions)
  if x.ndim not in (3, 4) or min(x.shape) < 1:
    raise ValueError(f"attributions must be [N, H, W, C] or [N, H, W] with non-empty axes; "
                     f"got shape {x.shape}")
  _check_finite("attributions", x)
  return _channel_adjust(x.astype(jnp.float32), _check_clamp(clamp),
                         _check_clamp_order(clamp_order))


def _unit_peak(x: jax.Array) -> jax.Array:
  """`x / max|x|` per sample over all non-batch axes; an all-zero sample stays zero."""
  axes = tuple(range(1, x.ndim))
  peak = jnp.max(jnp.abs(x), axis=axes, keepdims=True)
  nonzero = peak > 0
  return jnp.where(nonzero, x / jnp.where(nonzero, peak, 1.0), 0.0)


def _channel_adjust(x: jax.Array, clamp: float | None, clamp_order: str = "code") -> jax.Array:
  if clamp is not None:
    if clamp_order == "paper":
      x = _unit_peak(x)
    x = jnp.clip(x, -clamp, clamp)
  summed = to_map(x, "sum") if x.ndim == 4 else x
  return _unit_peak(summed)


def _check_thresholds(thresholds: Any) -> np.ndarray:
  """Returns thresholds as float64 [M, 4] after checking them."""
  g = np.asarray(thresholds, dtype=np.float64)
  if g.ndim == 1:
    g = g[None]
  if g.ndim != 2 or g.shape[1] != 4 or g.shape[0] < 1:
    raise ValueError(f"thresholds must be [M, 4] (or [4]) with M >= 1; got shape {np.shape(thresholds)}")
  if not np.isfinite(g).all():
    raise ValueError("thresholds contain NaN or infinite values")
  unsorted = np.nonzero((np.diff(g, axis=1) < 0).any(axis=1))[0]
  if unsorted.size:
    raise ValueError(
        f"each threshold set must be non-decreasing (g1 <= g2 <= g3 <= g4); rows "
        f"{unsorted[:5].tolist()} are not, e.g. {g[unsorted[0]].tolist()} (soft thresholds "
        "that crossed 0 do this: use fewer steps)")
  return g


def five_band(values: Any, thresholds: Any = GROUND_TRUTH_THRESHOLDS) -> jax.Array:
  """Five-band stratification of Tjoa & Guan into {-2, -1, 0, 1, 2}.

  With `thresholds = (g1, g2, g3, g4)`: `v <= g1 -> -2`, `g1 < v <= g2 -> -1`,
  `g2 < v <= g3 -> 0`, `g3 < v <= g4 -> 1`, `v > g4 -> 2`. For non-decreasing
  thresholds that is `-2 + #{i : v > g_i}`, which is how it is computed.

  Comparisons are in float32: values and thresholds are both rounded to float32
  first. This is what NumPy 1.x did in the original (a float32 map compared with
  float64 scalars uses the array's dtype), and it only matters for values within
  one float32 ulp of a threshold.

  Any real values are banded, so ground-truth heatmaps with values other than
  0 / 0.4 / 0.9 (e.g. interpolated ones from a resized heatmap) are accepted and
  banded with the same rule, as in the original.

  Args:
    values: `float[...]`, e.g. a map `[N, H, W]`.
    thresholds: `float[4]` (a `[1, 4]` array is accepted too); defaults to the
      ground-truth bands `(-0.7, -0.3, 0.3, 0.7)`.

  Returns:
    `int8[...]`, the band of each value.

  Raises:
    ValueError: for thresholds that are not 4 sorted finite numbers, or NaN values.
  """
  if _is_concrete(thresholds):
    g = _check_thresholds(thresholds)
    if g.shape[0] != 1:
      raise ValueError(f"five_band takes one threshold set [4]; got shape {np.shape(thresholds)}")
    g = jnp.asarray(g[0], jnp.float32)
  else:
    g = jnp.reshape(thresholds, (4,)).astype(jnp.float32)
  _check_finite("values", values)
  return _band(jnp.asarray(values, jnp.float32), g)


def _band(values: jax.Array, g: jax.Array) -> jax.Array:
  """`-2 + #{i : v > g_i}` for one threshold set `g: float32[..., 4]` broadcast on values."""
  count = ((values > g[..., 0]).astype(jnp.int8) + (values > g[..., 1]).astype(jnp.int8)
           + (values > g[..., 2]).astype(jnp.int8) + (values > g[..., 3]).astype(jnp.int8))
  return count - jnp.int8(2)


def soft_thresholds(g0: Any, delta: float, m: int) -> np.ndarray:
  """The soft-threshold schedule of Tjoa & Guan, accumulated like the original.

  `g_0 = g0`, and for `m >= 1`: `g_m = g_{m-1} + (-1)^[g_{m-1} > 0] * delta`
  elementwise, so every threshold moves by `delta` towards 0 (a threshold equal
  to 0 moves up, as `(-1)**False = 1` in the original). The sum is accumulated
  step by step in float64 (`soft_fiveband_score`), so `g_m` carries the same
  rounding as the original rather than the exact `g0 -+ m * delta`.

  Args:
    g0: `float[4]`, the first threshold set `(g1, g2, g3, g4)`.
    delta: the step, > 0.
    m: the number of threshold sets, >= 1.

  Returns:
    `float64[m, 4]`, row `i` being `g_i`.

  Raises:
    ValueError: for a g0 that is not 4 finite numbers, delta <= 0 or m < 1.
  """
  g = np.asarray(g0, dtype=np.float64)
  if g.shape != (4,) or not np.isfinite(g).all():
    raise ValueError(f"g0 must be 4 finite numbers; got {g0!r}")
  if (isinstance(delta, (bool, np.bool_)) or not isinstance(delta, (int, float, np.number))
      or not 0 < delta < np.inf):
    raise ValueError(f"delta must be a positive number; got {delta!r}")
  if int(m) != m or m < 1:
    raise ValueError(f"m must be a positive integer; got {m}")
  rows = [g]
  for _ in range(1, int(m)):
    g = g + (-1.0) ** (g > 0.0).astype(np.float64) * delta
    rows.append(g)
  return np.stack(rows)


def resolve_thresholds(thresholds: Any = "soft", clamp: float | None = None
                       ) -> tuple[np.ndarray, float | None]:
  """Turns a preset name or an array into (float64[M, 4] thresholds, clamp).

  Args:
    thresholds: "soft" (Set 1: g0 = (-0.5, -0.3, 0.3, 0.5), delta 0.005, M = 56,
      no clamp), "clamped" (Set 2: g0 = (-0.9, -0.5, 0.5, 0.9), delta 0.01,
      M = 41, clamp 0.1), or an explicit `float[M, 4]` array of non-decreasing rows.
    clamp: overrides the preset's clamp when given. To use the "clamped"
      thresholds without a clamp, pass `soft_thresholds(*PRESETS["clamped"][:3])`.

  Returns:
    `(thresholds float64[M, 4], clamp or None)`.

  Raises:
    ValueError: for an unknown preset name (listing the valid ones) or a bad array.
  """
  if isinstance(thresholds, str):
    if thresholds not in PRESETS:
      raise ValueError(f"unknown thresholds {thresholds!r}; valid: {', '.join(PRESETS)} or an [M, 4] array")
    preset = PRESETS[thresholds]
    g = soft_thresholds(preset.g0, preset.delta, preset.m)
    return g, _check_clamp(preset.clamp if clamp is None else clamp)
  return _check_thresholds(thresholds), _check_clamp(clamp)


class FiveBandScores(NamedTuple):
  """Per-sample, per-threshold five-band scores. All arrays are `[N, M]`.

  Attributes:
    accuracy: `float32`, `mean[h == h0]` over pixels.
    precision: `float32`, `TP / (TP + FP + 1e-6)`.
    recall: `float32`, `TP / (TP + FN + 1e-6)`.
    fpr: `float32`, `FP / (FP + TN + 1e-6)`.
    tp: `int32` count of `h != 0 and h == h0`.
    fp: `int32` count of `h != 0 and h != h0`.
    tn: `int32` count of `h == 0 and h0 == 0`.
    fn: `int32` count of `h == 0 and h0 != 0`.
  """
  accuracy: jax.Array
  precision: jax.Array
  recall: jax.Array
  fpr: jax.Array
  tp: jax.Array
  fp: jax.Array
  tn: jax.Array
  fn: jax.Array


def five_band_scores(saliency: Any, heatmap: Any, *, thresholds: Any = "soft",
                     clamp: float | None = None, clamp_order: str = "code") -> FiveBandScores:
  """Five-band accuracy, precision, recall and FPR per sample and threshold.

  Tjoa & Guan's ground-truth evaluation:
  `channel_adjust` the attribution (with the optional clamp of the raw values),
  band it with each threshold set and the heatmap with (-0.7, -0.3, 0.3, 0.7),
  and count TP/FP/TN/FN stringently (see `FiveBandScores`). Both the paper's
  settings are applied to the *same* attribution in the original: call this
  once with "soft" and once with "clamped".

  All samples and thresholds are evaluated in one jitted call, without looping
  over pixels or thresholds and without materialising a band map per threshold:
  the K = 4M threshold values are sorted, each pixel is put in the bucket
  `#{thresholds < v}` (which fixes its band under every threshold set), a
  per-sample histogram over (bucket, ground-truth band) is taken, and the counts
  for all M sets follow from a small `[M, K+1, 5] x [K+1, 5]` contraction. This
  is exact (the same float32 comparisons as `five_band`) and costs
  O(P log K + M K) per sample instead of O(P M).

  Args:
    saliency: `float[N, H, W, C]` attributions (summed over channels) or
      `float[N, H, W]` maps.
    heatmap: `float[N, H, W]` (or `[N, H, W, 1]`) ground truth, 0 / 0.4 / 0.9 for
      the cells; other values are banded with the same rule, not rejected.
    thresholds: "soft", "clamped" or `float[M, 4]` (see `resolve_thresholds`);
      under an outer `jax.jit` pass a name or a concrete (closed-over) array.
    clamp: the clip before the channel sum; default: the preset's (0.1 for
      "clamped", none for "soft" and for arrays).
    clamp_order: "code" (clip the raw attribution, the original code) or "paper"
      (normalise by `max|h|` first, the paper's text); see `channel_adjust`.

  Returns:
    `FiveBandScores` of `[N, M]` arrays.

  Raises:
    ValueError: for mismatched or wrong shapes, NaN/inf values, bad thresholds,
      an unknown preset, a non-positive clamp or an unknown `clamp_order`.
  """
  saliency, heatmap = _check_maps(saliency, heatmap, reference_name="heatmap")
  g, clamp = resolve_thresholds(thresholds, clamp)
  return _five_band_scores(saliency.astype(jnp.float32), heatmap.astype(jnp.float32),
                           jnp.asarray(g, jnp.float32), clamp=clamp,
                           clamp_order=_check_clamp_order(clamp_order))


def _band_counts(values: jax.Array, truth_bands: jax.Array, g: jax.Array) -> tuple[jax.Array, ...]:
  """Counts for every threshold set from one histogram per sample.

  Args:
    values: `float32[N, P]` adjusted maps.
    truth_bands: `int8[N, P]` ground-truth bands.
    g: `float32[M, 4]` threshold sets, each row non-decreasing.

  Returns:
    `(correct, tp, fp, tn, fn)`, each `int32[N, M]`.
  """
  n = values.shape[0]
  edges = jnp.sort(g.reshape(-1))  # K = 4M values, duplicates allowed
  n_buckets = edges.size + 1
  # A pixel in bucket k has exactly the k smallest edges below it, so g < v iff
  # k >= #{edges <= g}: its band under set m is -2 + #{i : k >= rank(g_mi)}.
  ranks = jnp.searchsorted(edges, g, side="right")  # [M, 4]
  buckets = jnp.arange(n_buckets)
  band_of_bucket = jnp.sum(buckets[None, :, None] >= ranks[:, None, :], axis=-1) - 2  # [M, K+1]
  bands = jnp.arange(-2, 3)
  band_onehot = (band_of_bucket[..., None] == bands).astype(jnp.int32)  # [M, K+1, 5]
  bucket_of_pixel = jnp.searchsorted(edges, values, side="left")  # #{edges < v}: [N, P]
  code = bucket_of_pixel * 5 + (truth_bands.astype(jnp.int32) + 2)
  histogram = jax.vmap(lambda c: jnp.bincount(c, length=n_buckets * 5))(code)
  histogram = histogram.reshape(n, n_buckets, 5)  # [N, K+1, truth band]
  # joint[n, m, b, c]: pixels of sample n in predicted band b (set m) and truth band c.
  joint = jnp.einsum("mkb,nkc->nmbc", band_onehot, histogram)
  matching = jnp.diagonal(joint, axis1=2, axis2=3)  # [N, M, 5]
  zero = 2  # index of band 0
  tn = joint[..., zero, zero]
  tp = jnp.sum(matching, axis=-1) - tn
  predicted_zero = jnp.sum(joint[..., zero, :], axis=-1)
  fn = predicted_zero - tn
  fp = values.shape[1] - predicted_zero - tp
  return tp + tn, tp, fp, tn, fn


@functools.partial(xla.jit, static_argnames=("clamp", "clamp_order"))
def _five_band_scores(saliency, heatmap, g, *, clamp, clamp_order="code"):
  n = saliency.shape[0]
  values = _channel_adjust(saliency, clamp, clamp_order).reshape(n, -1)
  truth_bands = _band(heatmap.reshape(n, -1), jnp.asarray(GROUND_TRUTH_THRESHOLDS, jnp.float32))
  correct, tp, fp, tn, fn = _band_counts(values, truth_bands, g)
  as_float = lambda c: c.astype(jnp.float32)
  pixels = values.shape[1]
  return FiveBandScores(
      accuracy=as_float(correct) / pixels,
      precision=as_float(tp) / (as_float(tp + fp) + EPS),
      recall=as_float(tp) / (as_float(tp + fn) + EPS),
      fpr=as_float(fp) / (as_float(fp + tn) + EPS),
      tp=tp, fp=fp, tn=tn, fn=fn)


def five_band_summary(scores: FiveBandScores) -> dict[str, jax.Array]:
  """The per-sample columns of the original CSV: mean, max and argmax over thresholds.

  `A`/`R`/`P` are accuracy/recall/precision; `mu` the mean over the M thresholds,
  `u` the max, `u1` the (first, 0-based) argmax index. FPR is not in the CSV.

  Args:
    scores: `FiveBandScores` of `[N, M]` arrays.

  Returns:
    A dict with exactly the keys `Amu, Au, Au1, Rmu, Ru, Ru1, Pmu, Pu, Pu1` (in
    that order): `float32[N]` for `mu`/`u` and `int32[N]` for `u1`.

  Raises:
    ValueError: if `scores` is not a `FiveBandScores`.
  """
  _check_five_band_scores(scores)
  out = {}
  for prefix, values in (("A", scores.accuracy), ("R", scores.recall), ("P", scores.precision)):
    out[prefix + "mu"] = jnp.mean(values, axis=-1)
    out[prefix + "u"] = jnp.max(values, axis=-1)
    out[prefix + "u1"] = jnp.argmax(values, axis=-1).astype(jnp.int32)
  return out


def _check_five_band_scores(scores: Any) -> None:
  if not isinstance(scores, FiveBandScores):
    raise ValueError(f"scores must be a FiveBandScores (from five_band_scores); got "
                     f"{type(scores).__name__}")


class RocPoints(NamedTuple):
  """One ROC point per threshold index. `recall, fpr: float32[M]`."""
  recall: jax.Array
  fpr: jax.Array


def roc_points(scores: FiveBandScores) -> RocPoints:
  """Mean recall and mean FPR over all samples, one point per threshold.

  As `unpack_and_pointwise_process_xai_data_for_roc_control` of the original:
  every test sample counts (every class, correct prediction or not); select
  rows of `scores` first for a subset. Note the original's plotting script
  (`L/analysis/xai_roc_analysis.py`) puts recall on x and FPR on y while
  labelling the axes FPR/recall, i.e. its axis labels are swapped; plot FPR on x.

  Args:
    scores: `FiveBandScores` of `[N, M]` arrays.

  Returns:
    `RocPoints(recall=float32[M], fpr=float32[M])`.

  Raises:
    ValueError: if `scores` is not a `FiveBandScores`.
  """
  _check_five_band_scores(scores)
  return RocPoints(recall=jnp.mean(scores.recall, axis=0), fpr=jnp.mean(scores.fpr, axis=0))


def roc_auc(points: RocPoints | tuple[Any, Any], *, add_endpoints: bool = True) -> float:
  """Area under the ROC polyline of `roc_points` (an xai_jax addition).

  The original mentions "ROC AUC" in its changelog but computes none. Here the
  points are sorted by FPR (then recall), `(0, 0)` and `(1, 1)` are added when
  `add_endpoints`, and the trapezoid rule integrates recall over FPR. Soft
  thresholds only cover part of the FPR axis, so this is the area of the
  interpolated curve, comparable between methods only for the same thresholds.

  Args:
    points: `RocPoints` or `(recall, fpr)`, each `float[M]`.
    add_endpoints: add the (0, 0) and (1, 1) corners.

  Returns:
    The area, a Python float in [0, 1].

  Raises:
    ValueError: for anything but two arrays, mismatched or empty shapes, or NaN/inf.
  """
  if len(points) != 2:
    raise ValueError(f"points must be RocPoints or (recall, fpr); got {len(points)} entries")
  recall, fpr = (np.asarray(a, np.float64).ravel() for a in points)
  if recall.shape != fpr.shape or recall.size == 0:
    raise ValueError(f"recall and fpr must have the same non-empty shape; got {recall.shape}, {fpr.shape}")
  if not (np.isfinite(recall).all() and np.isfinite(fpr).all()):
    raise ValueError("recall/fpr contain NaN or infinite values")
  order = np.lexsort((recall, fpr))
  x, y = fpr[order], recall[order]
  if add_endpoints:
    x = np.concatenate([[0.0], x, [1.0]])
    y = np.concatenate([[0.0], y, [1.0]])
  return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2))


# ----------------------------------------------------------------------------
# Pixel-wise IOU and IOU* (Gattas 2020).


def _kept_pixels(saliency: jax.Array, n_std: float, take_abs: bool) -> tuple[jax.Array, jax.Array]:
  """Normalised (optionally absolute) maps and the mask of pixels kept by the threshold."""
  summed = to_map(saliency, "sum") if saliency.ndim == 4 else saliency
  peak = jnp.max(jnp.abs(summed), axis=(1, 2), keepdims=True)
  nonzero = peak > 0
  values = jnp.where(nonzero, summed / jnp.where(nonzero, peak, 1.0), 0.0)
  if take_abs:
    values = jnp.abs(values)
  threshold = n_std * jnp.std(values, axis=(1, 2), keepdims=True)
  # The thesis code zeroes values below the threshold and then counts values > 0.
  kept = (values >= threshold) & (values > 0)
  return values, kept


@functools.partial(xla.jit, static_argnames=("take_abs", "weighted"))
def _iou(saliency, mask, n_std, *, take_abs, weighted):
  values, kept = _kept_pixels(saliency.astype(jnp.float32), n_std, take_abs)
  inside = mask > 0
  both = kept & inside
  union = jnp.sum(kept | inside, axis=(1, 2)).astype(jnp.float32)
  if weighted:
    numerator = jnp.sum(jnp.where(both, values, 0.0), axis=(1, 2))
  else:
    numerator = jnp.sum(both, axis=(1, 2)).astype(jnp.float32)
  return jnp.where(union > 0, numerator / jnp.where(union > 0, union, 1.0), 0.0)


def _check_n_std(n_std: Any) -> None:
  if _is_concrete(n_std):
    value = np.asarray(n_std)
    if value.shape != () or not np.isfinite(value) or value < 0:
      raise ValueError(f"n_std must be a non-negative finite scalar; got {n_std!r}")


def iou(saliency: Any, mask: Any, *, n_std: float = 0.5, abs: bool = True) -> jax.Array:  # noqa: A002
  """Pixel-wise IOU of Gattas (2020) between thresholded saliency and a mask.

  Per sample: normalise the map to [-1, 1] by its max |value| (a zero map stays
  zero), take the absolute value if `abs`, keep the pixels with
  `value >= n_std * std(map)` and `value > 0`, and return
  `|kept AND mask| / |kept OR mask|`.

  The threshold is `n_std` standard deviations *from zero*, not above the mean:
  the thesis says only "a threshold of 0.5 standard deviations was applied"; its
  code (`image_util.apply_threshold`) sets `attribution[attribution <
  n_std * attribution.std()] = 0` on the normalised, absolute map and then counts
  the pixels `> 0`, which is what is done here (std is the population std over
  the map's pixels, NumPy's default). With `abs=False`, negative pixels are
  never kept. The thesis used `n_std=0.5` for IOU and 1.0 for IOU*. Not copied:
  the code skipped thresholding (with a printed warning) when the threshold fell
  outside [-1, 1], which only a signed map with `n_std > 1` can reach; here the
  threshold always applies. A sample whose union is empty (zero map, empty mask)
  scores 0 (the original divides 0 by 0).

  Args:
    saliency: `float[N, H, W]` maps, or `float[N, H, W, C]` attributions summed
      over channels first.
    mask: `[N, H, W]` (or `[N, H, W, 1]`) binary mask, e.g. a bounding box or the
      non-zero region of a ground-truth heatmap; pixels with `mask > 0` count.
    n_std: threshold in standard deviations of the map, >= 0.
    abs: take the absolute value of the normalised map (positive and negative
      evidence count alike).

  Returns:
    `float32[N]`.

  Raises:
    ValueError: for mismatched or wrong shapes, NaN values or a negative `n_std`.
  """
  saliency, mask = _check_maps(saliency, mask, reference_name="mask")
  _check_n_std(n_std)
  return _iou(saliency, mask, jnp.float32(n_std), take_abs=bool(abs), weighted=False)


def iou_star(saliency: Any, mask: Any, *, n_std: float = 1.0, abs: bool = True) -> jax.Array:  # noqa: A002
  """Pixel-wise IOU* of Gattas (2020): attribution-weighted intersection over union.

  As `iou`, but the intersection counts each kept pixel inside the mask with its
  normalised value (absolute when `abs`) instead of 1:
  `sum(value over kept AND mask) / |kept OR mask|`. It rewards strong,
  committed attributions; it is at most `iou` at the same threshold.

  Args:
    saliency: `float[N, H, W]` or `float[N, H, W, C]`, as for `iou`.
    mask: `[N, H, W]` binary mask, as for `iou`.
    n_std: threshold in standard deviations of the map (the thesis: 1.0).
    abs: take the absolute value of the normalised map.

  Returns:
    `float32[N]`.

  Raises:
    ValueError: for mismatched or wrong shapes, NaN values or a negative `n_std`.
  """
  saliency, mask = _check_maps(saliency, mask, reference_name="mask")
  _check_n_std(n_std)
  return _iou(saliency, mask, jnp.float32(n_std), take_abs=bool(abs), weighted=True)


def confidence_from_logits(logits: Any) -> jax.Array:
  """The softmax probability of the predicted class, `float32[N]` from `float[N, K]` logits.

  Raises:
    ValueError: for logits that are not `[N, K]` with `K >= 1`, or (when concrete) hold NaN
      or infinite values.
  """
  logits = jnp.asarray(logits)
  if logits.ndim != 2 or logits.shape[1] < 1:
    raise ValueError(f"logits must be [N, K] with K >= 1; got shape {logits.shape}")
  _check_finite("logits", logits)
  return jnp.max(jax.nn.softmax(logits.astype(jnp.float32), axis=-1), axis=-1)


def summarize_by_confidence(values: Any, confidence: Any, *, threshold: float = 0.9,
                            ddof: int = 1) -> dict[str, dict[str, np.ndarray | int]]:
  """Mean and standard deviation of a per-sample metric, split by confidence.

  Gattas (2020, section 4.2.1) reports IOU and IOU* separately for high-confidence
  predictions (softmax probability `p > 0.9`) and the rest. Runs on the host.
  `ddof=1` (the sample std) is the default because the thesis's Analyser read
  its CSVs with pandas, whose `std` uses ddof 1 (the thesis does not say).

  Args:
    values: `float[N]` or `float[N, K]` (e.g. K methods).
    confidence: `float[N]`, e.g. `confidence_from_logits(logits)`.
    threshold: high confidence is `confidence > threshold` (strict).
    ddof: delta degrees of freedom of the std.

  Returns:
    `{"high": {...}, "low": {...}, "all": {...}}`, each with `mean` and `std`
    (`float64[]` or `float64[K]`, NaN for an empty group) and `count` (int).

  Raises:
    ValueError: for mismatched shapes, NaN or infinite values, confidences outside
      [0, 1], a `threshold` outside [0, 1] or a negative `ddof`.
  """
  values = np.asarray(values, np.float64)
  confidence = np.asarray(confidence, np.float64)
  if values.ndim not in (1, 2) or confidence.shape != values.shape[:1]:
    raise ValueError(
        f"values must be [N] or [N, K] and confidence [N]; got {values.shape} and {confidence.shape}")
  for name, array in (("values", values), ("confidence", confidence)):
    if not np.isfinite(array).all():
      raise ValueError(f"{name} contain NaN or infinite values "
                       f"({int((~np.isfinite(array)).sum())} of {array.size})")
  if ((confidence < 0) | (confidence > 1)).any():
    raise ValueError("confidence must be probabilities in [0, 1] (e.g. "
                     "confidence_from_logits(logits)); got values outside")
  if not 0 <= float(threshold) <= 1:
    raise ValueError(f"threshold must be a probability in [0, 1]; got {threshold}")
  if isinstance(ddof, bool) or not isinstance(ddof, (int, np.integer)) or ddof < 0:
    raise ValueError(f"ddof must be a non-negative integer; got {ddof!r}")
  high = confidence > threshold
  out = {}
  for name, rows in (("high", high), ("low", ~high), ("all", np.ones_like(high))):
    group = values[rows]
    count = int(group.shape[0])
    nan = np.full(values.shape[1:], np.nan)
    out[name] = {
        "mean": group.mean(axis=0) if count else nan,
        "std": group.std(axis=0, ddof=ddof) if count > ddof else nan,
        "count": count,
    }
  return out
