"""Statistics across saliency methods (DeepMaps, appendix C).

Grabska-Barwinska et al., "Towards Better Visual Explanations for Deep Image
Classifiers" (DeepMaps), compare methods on a metric with

* pairwise **win rates** (the fraction of images on which the row method beats
  the column method, ties counting one half; Fig. 7 shows it minus 50%),
* two-sided **Wilcoxon signed-rank** p-values for the same pairs (Fig. 9,
  `scipy.stats.wilcoxon`),
* **Krippendorff's alpha** (inter-rater reliability, following Tomsett et al.
  2020) of the per-image rankings of the methods, averaged over 50 resamples of
  500 images with a 95% interval (Fig. 10),
* a **Spearman correlation matrix** between metrics over the images, for one
  method at a time (internal consistency, Fig. 11: Random and DeepMaps).

DeepMaps computed alpha with Grill's Krippendorff-alpha package ("Krippendorff-alpha
python package", 2017), whose `krippendorff_alpha(data, metric=interval_metric)` defaults
to the interval metric and has no ordinal one; the paper names no level of measurement, so
unless its code passed another metric it used the interval level (the text does not say).
`krippendorff_alpha_rankings` offers both (its default stays "ordinal", the level ranks are
measured at; pass "interval" to follow the paper).

All functions run on the host with NumPy/SciPy; inputs are tables
`scores: float[n_images, n_methods]` of one metric, e.g. columns of the runner's
output. NaN is rejected everywhere (a missing value has no rank); infinite values
are allowed where only the order matters (AFOC is `inf` when `f_c(x) = 0`) and
rank as the largest or smallest values.

Undefined statistics are not papered over: Krippendorff's alpha of a table in
which a single value occurs is `0 / 0` and raises a ValueError; a Spearman
correlation with a constant metric is NaN with a `scipy.stats.ConstantInputWarning`
naming the metric, as `scipy.stats.spearmanr` does.
"""

from __future__ import annotations

from typing import Any, Sequence
import warnings

import jax
import krippendorff
import numpy as np
import scipy.stats

INTERVALS = ("percentile", "normal")
LEVELS = ("nominal", "ordinal", "interval", "ratio")


def _as_float_array(values: Any, name: str) -> np.ndarray:
  try:
    array = np.asarray(values)
    if np.iscomplexobj(array):
      raise TypeError("complex values")
    return array.astype(np.float64)
  except (TypeError, ValueError) as error:
    raise ValueError(f"{name} must be an array of real numbers; got {type(values).__name__} "
                     f"({error})") from None


def _check_scores(scores: Any, *, min_methods: int = 2) -> np.ndarray:
  table = _as_float_array(scores, "scores")
  if table.ndim != 2 or table.shape[0] < 1 or table.shape[1] < min_methods:
    raise ValueError(
        f"scores must be [n_images, n_methods] with n_methods >= {min_methods}; got shape {table.shape}")
  if np.isnan(table).any():
    raise ValueError(f"scores contain NaN values ({int(np.isnan(table).sum())} of {table.size})")
  return table


def win_rate_matrix(scores: Any, *, higher_is_better: bool = True) -> np.ndarray:
  """Pairwise win rates: how often the row method beats the column method.

  `W[i, j] = mean over images of ([better(s_i, s_j)] + 0.5 [s_i == s_j])`, so
  ties count one half, `W[i, j] + W[j, i] = 1` and the diagonal is 0.5. This is
  the one win-rate convention of the library: every table calls it `win_rate`,
  in [0, 1]. DeepMaps (Fig. 7) displays `W - 0.5` ("frequency (-50%)"); a table
  that wants that value names its column `win_rate_minus_half`.

  Args:
    scores: `float[n_images, n_methods]`, one metric.
    higher_is_better: False for metrics where smaller wins (n_MoRF, AFOC_LeRF;
      `registry.direction`).

  Returns:
    `float64[n_methods, n_methods]` in [0, 1].

  Raises:
    ValueError: for a table that is not 2-D with >= 2 methods, or NaN values.
  """
  table = _check_scores(scores)
  if not higher_is_better:
    table = -table
  a, b = table[:, :, None], table[:, None, :]
  return np.mean((a > b) + 0.5 * (a == b), axis=0)


def wilcoxon_matrix(scores: Any, *, zero_method: str = "wilcox") -> np.ndarray:
  """Two-sided Wilcoxon signed-rank p-values for every pair of methods.

  `P[i, j] = scipy.stats.wilcoxon(scores[:, i], scores[:, j]).pvalue` with
  `alternative="two-sided"` and SciPy's defaults otherwise (as DeepMaps). The
  matrix is symmetric; the diagonal is NaN. A pair whose differences are all
  zero (identical columns) has no evidence of a difference: p = 1.0 (SciPy
  returns 1.0 too, with a division warning).

  Args:
    scores: `float[n_images, n_methods]`, one metric.
    zero_method: SciPy's treatment of zero differences ("wilcox", "pratt", "zsplit").

  Returns:
    `float64[n_methods, n_methods]`.

  Raises:
    ValueError: for a table that is not 2-D with >= 2 methods, or NaN values.
  """
  table = _check_scores(scores)
  n_methods = table.shape[1]
  p = np.full((n_methods, n_methods), np.nan)
  for i in range(n_methods):
    for j in range(i + 1, n_methods):
      differences = table[:, i] - table[:, j]
      if np.all(differences == 0):
        value = 1.0
      else:
        value = float(scipy.stats.wilcoxon(table[:, i], table[:, j], zero_method=zero_method,
                                           alternative="two-sided").pvalue)
      p[i, j] = p[j, i] = value
  return p


def rankings(scores: Any, *, higher_is_better: bool = True) -> np.ndarray:
  """Per-image ranks of the methods, 1 = best, ties get their average rank.

  Args:
    scores: `float[n_images, n_methods]`.
    higher_is_better: False to rank the smallest value first.

  Returns:
    `float64[n_images, n_methods]`.
  """
  table = _check_scores(scores)
  return scipy.stats.rankdata(-table if higher_is_better else table, method="average", axis=1)


def ordinal_alpha(reliability_data: Any, *, level_of_measurement: str = "ordinal") -> float:
  """Krippendorff's alpha of a [raters, units] table (the `krippendorff` package).

  `alpha = 1 - D_o / D_e` (observed over expected disagreement). When only one value occurs
  in the pairable data, `D_o = D_e = 0`: the data have no variation and alpha is undefined
  (Krippendorff, "Computing Krippendorff's Alpha-Reliability", 2011), neither perfect
  agreement (1) nor chance (0). That case raises a ValueError; callers that want a table
  entry for it (e.g. a metric that ties every method on every image) should catch it or
  test `np.unique(data[~np.isnan(data)]).size > 1` first and record NaN.

  Args:
    reliability_data: `float[n_raters, n_units]`, NaN for missing values.
    level_of_measurement: "ordinal" (default), "nominal", "interval" or "ratio".

  Returns:
    alpha, a Python float.

  Raises:
    ValueError: for a table that is not 2-D, an unknown level, infinite values, no unit
      rated by at least two raters, or a single value in the data (alpha undefined).
  """
  if level_of_measurement not in LEVELS:
    raise ValueError(f"unknown level_of_measurement {level_of_measurement!r}; valid: "
                     f"{', '.join(LEVELS)}")
  data = _as_float_array(reliability_data, "reliability_data")
  if data.ndim != 2:
    raise ValueError(f"reliability_data must be [n_raters, n_units]; got shape {data.shape}")
  if np.isinf(data).any():
    raise ValueError("reliability_data contains infinite values (use NaN for missing ones)")
  pairable = np.sum(~np.isnan(data), axis=0) >= 2
  if not pairable.any():
    raise ValueError(
        f"Krippendorff's alpha needs a unit (column) rated by at least two raters (rows); "
        f"reliability_data of shape {data.shape} has none")
  values = np.unique(data[:, pairable][~np.isnan(data[:, pairable])])
  if values.size < 2:
    raise ValueError(
        f"Krippendorff's alpha is undefined (0 / 0) when only one value occurs: every "
        f"pairable entry of reliability_data is {values[0]:g}, so the data show no variation")
  return float(krippendorff.alpha(reliability_data=data,
                                  level_of_measurement=level_of_measurement))


def _rng(key: Any) -> np.random.Generator:
  """A NumPy generator from an int seed, a Generator or a JAX PRNG key."""
  if isinstance(key, np.random.Generator):
    return key
  if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
    return np.random.default_rng(int(key))
  try:
    data = np.asarray(jax.random.key_data(key) if jax.dtypes.issubdtype(
        getattr(key, "dtype", None), jax.dtypes.prng_key) else key)
  except Exception as error:  # pragma: no cover - message below
    raise ValueError(f"key must be an int seed, a numpy Generator or a JAX PRNG key; got {key!r}") from error
  if data.dtype != np.uint32:
    raise ValueError(f"key must be an int seed, a numpy Generator or a JAX PRNG key; got {key!r}")
  return np.random.default_rng(data.ravel().tolist())


def krippendorff_alpha_rankings(scores: Any, *, key: Any, n_images: int | None = 500,
                                n_repeats: int = 50, higher_is_better: bool = True,
                                confidence: float = 0.95, interval: str = "percentile",
                                level_of_measurement: str = "ordinal") -> dict[str, Any]:
  """Consistency of the method rankings a metric induces (DeepMaps appendix C.2).

  Each image is a "rater" that ranks the methods (the "units") by the metric
  (`rankings`: 1 = best, ties averaged); Krippendorff's alpha of the
  `[n_images, n_methods]` rank table is 1 when every image ranks the methods
  the same way and about 0 when rankings are unrelated. DeepMaps used the
  interval level (the default, and only rank-capable metric, of Grill's package
  that they cite); the ordinal level (the default here) weighs a disagreement
  by how many ranks lie between the two values. On rankings without ties both
  levels give the same alpha (every rank occurs equally often, so the ordinal
  distance is proportional to the squared difference); ties set them apart. As in
  the paper, alpha
  is computed on `n_images` images drawn without replacement, `n_repeats`
  times, and summarised by the mean and a `confidence` interval. The paper only
  says "95% confidence intervals evaluated over the 50 random draws":
  `interval="percentile"` (default) gives the 2.5/97.5 percentiles of the
  repeats, `"normal"` the interval of the mean, `mean +- z * std / sqrt(R)`.

  Args:
    scores: `float[total_images, n_methods]`, one metric.
    key: an int seed, a `numpy.random.Generator` or a JAX PRNG key (randomness
      is always explicit).
    n_images: images per resample (DeepMaps: 500 of 5000); None: all images,
      every repeat then gives the same alpha.
    n_repeats: number of resamples (DeepMaps: 50).
    higher_is_better: direction of the metric (alpha itself does not depend on it).
    confidence: interval coverage in (0, 1).
    interval: "percentile" or "normal".
    level_of_measurement: "ordinal" (default) or "interval" (DeepMaps), or "nominal" /
      "ratio" (`ordinal_alpha`).

  Returns:
    A dict with `mean`, `std` (over the repeats, ddof 1; 0 for one repeat), `low`, `high`
    (floats) and `alphas` (`float64[n_repeats]`).

  Raises:
    ValueError: for bad scores (fewer than 2 methods, NaN), `n_images` larger than
      the number of images or < 2, `n_repeats` < 1, an unknown interval or level, or scores
      that tie every method on every image (or on every image of one resample):
      the rankings then have no variation and alpha is undefined (`ordinal_alpha`).
  """
  table = _check_scores(scores)
  total = table.shape[0]
  if n_images is None:
    n_images = total
  if (isinstance(n_images, bool) or not isinstance(n_images, (int, np.integer))
      or not 2 <= n_images <= total):
    raise ValueError(f"n_images must be an integer in [2, {total}] (the number of images); "
                     f"got {n_images!r}")
  if isinstance(n_repeats, bool) or not isinstance(n_repeats, (int, np.integer)) or n_repeats < 1:
    raise ValueError(f"n_repeats must be a positive integer; got {n_repeats!r}")
  if interval not in INTERVALS:
    raise ValueError(f"unknown interval {interval!r}; valid: {', '.join(INTERVALS)}")
  if level_of_measurement not in LEVELS:
    raise ValueError(f"unknown level_of_measurement {level_of_measurement!r}; valid: "
                     f"{', '.join(LEVELS)}")
  if not 0 < confidence < 1:
    raise ValueError(f"confidence must be in (0, 1); got {confidence}")
  ranks = rankings(table, higher_is_better=higher_is_better)
  if np.unique(ranks).size < 2:
    raise ValueError(
        "Krippendorff's alpha of the rankings is undefined: the scores tie all "
        f"{table.shape[1]} methods on every one of the {total} images (every rank is "
        f"{ranks.flat[0]:g}), so the metric does not rank the methods at all")
  rng = _rng(key)
  alphas = []
  for repeat in range(int(n_repeats)):
    sample = ranks[rng.choice(total, size=int(n_images), replace=False)]
    if np.unique(sample).size < 2:
      raise ValueError(
          f"Krippendorff's alpha is undefined for resample {repeat}: its {n_images} images "
          "tie all methods (the metric ties on most images); use a larger n_images")
    alphas.append(ordinal_alpha(sample, level_of_measurement=level_of_measurement))
  alphas = np.array(alphas)
  mean = float(alphas.mean())
  std = float(alphas.std(ddof=1)) if n_repeats > 1 else 0.0
  tail = (1 - confidence) / 2
  if interval == "percentile":
    low, high = np.quantile(alphas, [tail, 1 - tail])
  else:
    half = scipy.stats.norm.ppf(1 - tail) * std / np.sqrt(n_repeats)
    low, high = mean - half, mean + half
  return {"mean": mean, "std": std, "low": float(low), "high": float(high), "alphas": alphas}


def spearman_matrix(values: Any, *, names: Sequence[str] | None = None) -> np.ndarray:
  """Spearman's rank correlation between every pair of columns (DeepMaps Fig. 11).

  `rho[a, b]` is the Pearson correlation of the average ranks of columns `a` and `b`
  (`scipy.stats.spearmanr`). DeepMaps correlates the metrics (columns) over the images
  (rows) of one saliency method, each metric oriented so that larger is better ("internal
  consistency reliability", after Tomsett et al. 2020). A constant column has no ranks to
  correlate: its row and column are NaN (diagonal included), with a
  `scipy.stats.ConstantInputWarning` naming it, as `scipy.stats.spearmanr` does.

  Args:
    values: `float[n_rows, n_columns]`, e.g. `[n_images, n_metrics]`; infinite values rank
      as the largest or smallest.
    names: the columns' names for the warning; default `column <i>`.

  Returns:
    `float64[n_columns, n_columns]`, symmetric, in [-1, 1], 1 on the diagonal.

  Raises:
    ValueError: a table that is not 2-D with at least 2 rows and 1 column, NaN values, or
      `names` of another length.
  """
  table = _as_float_array(values, "values")
  if table.ndim != 2 or table.shape[0] < 2 or table.shape[1] < 1:
    raise ValueError(f"values must be [n_rows, n_columns] with n_rows >= 2; got shape "
                     f"{table.shape}")
  if np.isnan(table).any():
    raise ValueError(f"values contain NaN values ({int(np.isnan(table).sum())} of {table.size})")
  if names is None:
    names = [f"column {i}" for i in range(table.shape[1])]
  elif len(names) != table.shape[1]:
    raise ValueError(f"names has {len(names)} entries for {table.shape[1]} columns")
  ranks = scipy.stats.rankdata(table, method="average", axis=0)
  centred = ranks - ranks.mean(axis=0)
  norms = np.sqrt(np.sum(centred ** 2, axis=0))
  constant = norms == 0
  if constant.any():
    warnings.warn(scipy.stats.ConstantInputWarning(
        f"Spearman correlation is undefined for constant columns "
        f"{[names[i] for i in np.flatnonzero(constant)]}: NaN"), stacklevel=2)
  safe = np.where(constant, 1.0, norms)
  rho = np.clip((centred.T @ centred) / np.outer(safe, safe), -1.0, 1.0)
  np.fill_diagonal(rho, 1.0)
  rho[constant, :] = np.nan
  rho[:, constant] = np.nan
  return rho
