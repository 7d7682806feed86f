"""Similarity between two saliency maps, as in the sanity checks of Adebayo et al. (2018).

Four measures, each with the pre-processing of the reference code
(adebayoj/sanity_checks_saliency, with PAIR saliency's visualisation helpers):

* `spearman(a, b, absolute=True)`: rank correlation of the *grayscale* maps (channel sum of
  absolute values, scaled by the 99th percentile and clipped to [0, 1]).
* `spearman(a, b, absolute=False)`: rank correlation of the *diverging* maps (signed channel
  sum, divided by the 99th-percentile span and clipped to [-1, 1]).
* `ssim`: structural similarity with an 11x11 Gaussian window (sigma 1.5) on maps min-max
  scaled to [0, 1] over the whole (multi-channel) mask; maps need at least 11x11 pixels.
* `hog`: correlation of the HOG features (16x16 pixels per cell, 9 orientations, 3x3 blocks,
  L2-Hys) of the diverging maps, which lie in [-1, 1] as in the paper's appendix.

These run on the host (numpy, scipy and scikit-image): they are cheap next to the
explanations they compare, and scikit-image owns the SSIM and HOG primitives.

Reference: Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018, Sec. 2.2 and
Appendix (calibration of the similarity metrics).
"""

from typing import Literal

import numpy as np
import scipy.stats
import skimage.feature
import skimage.metrics

MEASURES = ("spearman_abs", "spearman_signed", "ssim", "hog")


def _as_batch(maps, name: str) -> np.ndarray:
  """Returns `float64[N, H, W, C]`; `[N, H, W]` maps get a channel axis of 1."""
  try:
    raw = np.asarray(maps)
    if np.iscomplexobj(raw):
      raise TypeError("complex values")
    maps = raw.astype(np.float64)
  except (TypeError, ValueError) as error:
    raise ValueError(f"{name} must be an array of real numbers; got {type(maps).__name__} "
                     f"({error})") from None
  if maps.ndim == 3:
    maps = maps[..., None]
  if maps.ndim != 4:
    raise ValueError(f"{name} must be float[N, H, W] or float[N, H, W, C]; got shape {maps.shape}")
  if min(maps.shape) < 1:
    raise ValueError(f"{name} must have at least one map of at least one pixel; got shape "
                     f"{raw.shape}")
  if not np.all(np.isfinite(maps)):
    raise ValueError(f"{name} contains NaN or infinite values")
  return maps


def _check_percentile(percentile) -> float:
  value = float(percentile)
  if not 0.0 <= value <= 100.0:  # also rejects NaN
    raise ValueError(f"percentile must be in [0, 100]; got {percentile}")
  return value


def _check_positive_int(name: str, value) -> int:
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{name} must be a positive integer; got {value!r}")
  return int(value)


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
  a, b = _as_batch(a, "a"), _as_batch(b, "b")
  if a.shape != b.shape:
    raise ValueError(f"maps to compare must have the same shape; got {a.shape} and {b.shape}")
  return a, b


def grayscale(attributions, *, percentile: float = 99.0) -> np.ndarray:
  """PAIR's `VisualizeImageGrayscale`: |.| channel sum scaled to [0, 1] at a percentile.

  Args:
    attributions: `float[N, H, W, C]` or `float[N, H, W]`.
    percentile: values at or above this percentile of the map become 1.

  Returns:
    `float64[N, H, W]` in [0, 1]; a constant map gives zeros.
  """
  percentile = _check_percentile(percentile)
  maps = np.sum(np.abs(_as_batch(attributions, "attributions")), axis=-1)
  flat = maps.reshape(len(maps), -1)
  vmax = np.percentile(flat, percentile, axis=1)[:, None, None]
  vmin = np.min(flat, axis=1)[:, None, None]
  span = np.where(vmax > vmin, vmax - vmin, 1.0)
  return np.clip((maps - vmin) / span, 0.0, 1.0)


def diverging(attributions, *, percentile: float = 99.0) -> np.ndarray:
  """PAIR's `VisualizeImageDiverging`: signed channel sum scaled by the percentile span.

  Args:
    attributions: `float[N, H, W, C]` or `float[N, H, W]`.
    percentile: the span is `|percentile-th value|` of the signed map.

  Returns:
    `float64[N, H, W]` in [-1, 1]. The reference maps [-span, span] to [0, 1] and clips to
    [-1, 1], so values are `(v + span) / (2 span)`; an all-zero map gives zeros.
  """
  percentile = _check_percentile(percentile)
  maps = np.sum(_as_batch(attributions, "attributions"), axis=-1)
  flat = maps.reshape(len(maps), -1)
  span = np.abs(np.percentile(flat, percentile, axis=1))[:, None, None]
  safe_span = np.where(span > 0, span, 1.0)
  scaled = (maps + safe_span) / (2 * safe_span)
  return np.where(span > 0, np.clip(scaled, -1.0, 1.0), 0.0)


def _rank_correlation_rows(u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Spearman correlation of each row of `u` with the same row of `v` (average ranks)."""
  ru = scipy.stats.rankdata(u, axis=1)
  rv = scipy.stats.rankdata(v, axis=1)
  return _pearson_rows(ru, rv)


def _pearson_rows(u: np.ndarray, v: np.ndarray) -> np.ndarray:
  u = u - u.mean(axis=1, keepdims=True)
  v = v - v.mean(axis=1, keepdims=True)
  denominator = np.sqrt(np.sum(u * u, axis=1) * np.sum(v * v, axis=1))
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(denominator > 0, np.sum(u * v, axis=1) / denominator, np.nan)


def spearman(a, b, *, absolute: bool = True, percentile: float = 99.0) -> np.ndarray:
  """Spearman rank correlation between two batches of maps, per image.

  Args:
    a, b: `float[N, H, W, C]` or `float[N, H, W]` attributions of the same shape.
    absolute: compare grayscale (|.|) visualisations (True) or diverging ones (False).
    percentile: the visualisation's clipping percentile.

  Returns:
    `float64[N]`; NaN where a map is constant (rank correlation undefined).

  Raises:
    ValueError: for maps that differ in shape, are empty or hold NaN/inf, or a percentile
      outside [0, 100].
  """
  a, b = _pair(a, b)
  visualize = grayscale if absolute else diverging
  va = visualize(a, percentile=percentile).reshape(len(a), -1)
  vb = visualize(b, percentile=percentile).reshape(len(b), -1)
  return _rank_correlation_rows(va, vb)


def _min_max(maps: np.ndarray) -> np.ndarray:
  axes = tuple(range(1, maps.ndim))
  low = maps.min(axis=axes, keepdims=True)
  high = maps.max(axis=axes, keepdims=True)
  return (maps - low) / np.where(high > low, high - low, 1.0)


# scikit-image truncates its SSIM Gaussian at 3.5 sigma ("an 11-tap filter with the default
# sigma of 1.5 to match Wang et al. 2004").
_SSIM_TRUNCATE = 3.5


def ssim_window(sigma: float) -> int:
  """Side of scikit-image's Gaussian SSIM window for `sigma`: `2 * int(3.5 sigma + 0.5) + 1`.

  11 for the default sigma 1.5 (Wang et al. 2004; the window of the sanity-check paper's
  reference code). Maps must be at least this large on both sides.
  """
  return 2 * int(_SSIM_TRUNCATE * float(sigma) + 0.5) + 1


def ssim(a, b, *, sigma: float = 1.5, data_range: float = 1.0) -> np.ndarray:
  """Structural similarity of min-max scaled maps, per image.

  Args:
    a, b: `float[N, H, W, C]` or `float[N, H, W]` attributions of the same shape; every
      image is min-max scaled to [0, 1] over all its pixels and channels.
    sigma: Gaussian window width; the window is `ssim_window(sigma)` pixels square
      (11x11 for 1.5, scikit-image's default and the reference code's). The window is
      not shrunk to fit small maps: a smaller window would be another measure than the
      paper's, so maps smaller than the window are rejected.
    data_range: the range of the scaled maps, 1. The reference code's scikit-image
      inferred 2 for float images (the range [-1, 1]); pass 2.0 to reproduce it. The
      constants grow with the range, so two independent random maps score about 0.03 with
      1.0 and about 0.10 with 2.0 (64x64x3 Gaussian noise).

  Returns:
    `float64[N]`, 1 for identical maps.

  Raises:
    ValueError: for maps that differ in shape, are empty, hold NaN/inf or are smaller than
      the window (11x11 for the default sigma), or a `sigma` or `data_range` that is not a
      finite positive number, or a `sigma` of at most 1/7 (a 1-pixel window, whose sample
      variance is undefined).
  """
  a, b = _pair(a, b)
  for name, value in (("sigma", sigma), ("data_range", data_range)):
    if not 0 < float(value) < np.inf:
      raise ValueError(f"{name} must be a finite number > 0; got {value}")
  window = ssim_window(sigma)
  if window < 3:
    raise ValueError(f"SSIM with sigma={sigma} has a {window}x{window} window, in which the "
                     f"sample variance is undefined; sigma must be > 1/7 (a 3x3 window or larger)")
  height, width = a.shape[1:3]
  if min(height, width) < window:
    raise ValueError(f"SSIM with sigma={sigma} uses a {window}x{window} Gaussian window and "
                     f"needs maps of at least {window}x{window} pixels; got {height}x{width}")
  a, b = _min_max(a), _min_max(b)
  return np.array([
      skimage.metrics.structural_similarity(
          x, y, gaussian_weights=True, sigma=sigma, data_range=data_range, channel_axis=-1)
      for x, y in zip(a, b)])


def hog_features(maps, *, pixels_per_cell: int = 16, orientations: int = 9,
                 cells_per_block: int = 3) -> np.ndarray:
  """HOG descriptors of `float[N, H, W]` maps (scikit-image defaults otherwise).

  Raises:
    ValueError: if a map is smaller than one block of cells or holds NaN/inf, or a cell
      parameter is not a positive integer.
  """
  pixels_per_cell = _check_positive_int("pixels_per_cell", pixels_per_cell)
  orientations = _check_positive_int("orientations", orientations)
  cells_per_block = _check_positive_int("cells_per_block", cells_per_block)
  maps = np.asarray(maps, dtype=np.float64)
  block = pixels_per_cell * cells_per_block
  if maps.ndim != 3 or min(maps.shape[1:]) < block:
    raise ValueError(
        f"HOG needs maps float[N, H, W] with H, W >= {block} ({cells_per_block} cells of "
        f"{pixels_per_cell} px); got shape {maps.shape}")
  if len(maps) == 0:
    raise ValueError("maps must hold at least one map; got shape (0, ...)")
  if not np.all(np.isfinite(maps)):
    raise ValueError("maps contains NaN or infinite values")
  return np.stack([
      skimage.feature.hog(m, orientations=orientations,
                          pixels_per_cell=(pixels_per_cell, pixels_per_cell),
                          cells_per_block=(cells_per_block, cells_per_block),
                          block_norm="L2-Hys", feature_vector=True)
      for m in maps])


def hog(a, b, *, pixels_per_cell: int = 16, orientations: int = 9,
        correlation: Literal["pearson", "spearman"] = "pearson",
        percentile: float = 99.0) -> np.ndarray:
  """Correlation of HOG features of the diverging maps, per image.

  The paper reports the Pearson correlation of HOGs; `correlation="spearman"` ranks them
  first as some of the reference notebooks do.

  Returns:
    `float64[N]`; NaN where a descriptor is constant.

  Raises:
    ValueError: as `spearman`, for maps smaller than one HOG block, or an unknown
      `correlation`.
  """
  a, b = _pair(a, b)
  fa = hog_features(diverging(a, percentile=percentile), pixels_per_cell=pixels_per_cell,
                    orientations=orientations)
  fb = hog_features(diverging(b, percentile=percentile), pixels_per_cell=pixels_per_cell,
                    orientations=orientations)
  if correlation == "pearson":
    return _pearson_rows(fa, fb)
  if correlation == "spearman":
    return _rank_correlation_rows(fa, fb)
  raise ValueError(f"unknown correlation {correlation!r}; valid: pearson, spearman")


def similarities(a, b, *, measures=MEASURES) -> dict[str, np.ndarray]:
  """All similarity measures between two batches of maps.

  Args:
    a, b: `float[N, H, W, C]` or `float[N, H, W]` of the same shape.
    measures: a subset of `MEASURES` ("hog" needs maps of at least 48x48 pixels).

  Returns:
    A dict measure name -> `float64[N]`.

  Raises:
    ValueError: for unknown measure names (the valid ones listed), a single name passed as
      a string, or bad maps (see each measure).
  """
  if isinstance(measures, str):
    raise ValueError(f"measures must be a sequence of names, e.g. [{measures!r}]; got the "
                     f"string {measures!r}")
  functions = {
      "spearman_abs": lambda: spearman(a, b, absolute=True),
      "spearman_signed": lambda: spearman(a, b, absolute=False),
      "ssim": lambda: ssim(a, b),
      "hog": lambda: hog(a, b),
  }
  unknown = [m for m in measures if m not in functions]
  if unknown:
    raise ValueError(f"unknown similarity measures {unknown}; valid: {', '.join(MEASURES)}")
  return {m: functions[m]() for m in measures}
