"""Statistics across saliency methods (DeepMaps, appendix C).

Grabska-Barwinska et al., "Towards Better Visual Explanations for Deep Image
Classifiers" (DeepMaps), compare methods on a metric with

* pairwise **win rates** (the fraction of images on which the row method beats
  the column method, shown minus 50%, Fig. 7),
* two-sided **Wilcoxon signed-rank** p-values for the same pairs (Fig. 9,
  `scipy.stats.wilcoxon`),
* **Krippendorff's alpha** (inter-rater reliability, following Tomsett et al.
  2020) of the per-image rankings of the methods, averaged over 50 resamples of
  500 images with a 95% interval (Fig. 10),
* a **Spearman correlation matrix** between metrics over all (image, method)
  values (internal consistency, Fig. 11).

All functions run on the host with NumPy/SciPy; inputs are tables
`scores: float[n_images, n_methods]` of one metric, e.g. columns of the runner's
output. See `../shared/specs/metrics.md` section 5.
"""

from __future__ import annotations

from typing import Any, Mapping

import krippendorff
import numpy as np
import scipy.stats

INTERVALS = ("percentile", "normal")


def _check_scores(scores: Any, *, min_methods: int = 2) -> np.ndarray:
  table = np.asarray(scores, dtype=np.float64)
  if table.ndim != 2 or table.shape[0] < 1 or table.shape[1] < min_methods:
    raise ValueError(
        f"scores must be [n_images, n_methods] with n_methods >= {min_methods}; got shape {table.shape}")
  if np.isnan(table).any():
    raise ValueError(f"scores contain NaN values ({int(np.isnan(table).sum())} of {table.size})")
  return table


def win_rate_matrix(scores: Any, *, higher_is_better: bool = True, minus_half: bool = False
                    ) -> np.ndarray:
  """Pairwise win rates: how often the row method beats the column method.

  `W[i, j] = mean over images of ([better(s_i, s_j)] + 0.5 [s_i == s_j])`, so
  ties count one half, `W[i, j] + W[j, i] = 1` and the diagonal is 0.5.
  DeepMaps (Fig. 7) displays `W - 0.5` ("frequency (-50%)"): `minus_half=True`.

  Args:
    scores: `float[n_images, n_methods]`, one metric.
    higher_is_better: False for metrics where smaller wins (n_MoRF, AFOC_LeRF).
    minus_half: subtract 0.5, giving values in [-0.5, 0.5] with diagonal 0.

  Returns:
    `float64[n_methods, n_methods]`.

  Raises:
    ValueError: for a table that is not 2-D with >= 2 methods, or NaN values.
  """
  table = _check_scores(scores)
  if not higher_is_better:
    table = -table
  a, b = table[:, :, None], table[:, None, :]
  wins = np.mean((a > b) + 0.5 * (a == b), axis=0)
  return wins - 0.5 if minus_half else wins


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

  Args:
    reliability_data: `float[n_raters, n_units]`, NaN for missing values.
    level_of_measurement: "ordinal" (default), "nominal", "interval" or "ratio".

  Returns:
    alpha, a Python float.
  """
  return float(krippendorff.alpha(reliability_data=np.asarray(reliability_data, np.float64),
                                  level_of_measurement=level_of_measurement))


def _rng(key: Any) -> np.random.Generator:
  """A NumPy generator from an int seed, a Generator or a JAX PRNG key."""
  if isinstance(key, np.random.Generator):
    return key
  if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
    return np.random.default_rng(int(key))
  try:
    import jax  # pylint: disable=import-outside-toplevel
    data = np.asarray(jax.random.key_data(key) if jax.dtypes.issubdtype(
        getattr(key, "dtype", None), jax.dtypes.prng_key) else key)
  except Exception as error:  # pragma: no cover - message below
    raise ValueError(f"key must be an int seed, a numpy Generator or a JAX PRNG key; got {key!r}") from error
  if data.dtype != np.uint32:
    raise ValueError(f"key must be an int seed, a numpy Generator or a JAX PRNG key; got {key!r}")
  return np.random.default_rng(data.ravel().tolist())


def krippendorff_alpha_rankings(scores: Any, *, key: Any, n_images: int | None = 500,
                                n_repeats: int = 50, higher_is_better: bool = True,
                                confidence: float = 0.95, interval: str = "percentile"
                                ) -> dict[str, Any]:
  """Consistency of the method rankings a metric induces (DeepMaps appendix C.2).

  Each image is a "rater" that ranks the methods (the "units") by the metric
  (`rankings`: 1 = best, ties averaged); Krippendorff's ordinal alpha of the
  `[n_images, n_methods]` rank table is 1 when every image ranks the methods
  the same way and about 0 when rankings are unrelated. As in the paper, alpha
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

  Returns:
    A dict with `mean`, `low`, `high` (floats) and `alphas` (`float64[n_repeats]`).

  Raises:
    ValueError: for bad scores, `n_images` larger than the number of images or
      < 2, `n_repeats` < 1, or an unknown interval.
  """
  table = _check_scores(scores)
  total = table.shape[0]
  if n_images is None:
    n_images = total
  if int(n_images) != n_images or not 2 <= n_images <= total:
    raise ValueError(f"n_images must be an integer in [2, {total}] (the number of images); got {n_images}")
  if int(n_repeats) != n_repeats or n_repeats < 1:
    raise ValueError(f"n_repeats must be a positive integer; got {n_repeats}")
  if interval not in INTERVALS:
    raise ValueError(f"unknown interval {interval!r}; valid: {', '.join(INTERVALS)}")
  if not 0 < confidence < 1:
    raise ValueError(f"confidence must be in (0, 1); got {confidence}")
  ranks = rankings(table, higher_is_better=higher_is_better)
  rng = _rng(key)
  alphas = np.array([
      ordinal_alpha(ranks[rng.choice(total, size=int(n_images), replace=False)])
      for _ in range(int(n_repeats))])
  mean = float(alphas.mean())
  tail = (1 - confidence) / 2
  if interval == "percentile":
    low, high = np.quantile(alphas, [tail, 1 - tail])
  else:
    half = scipy.stats.norm.ppf(1 - tail) * (alphas.std(ddof=1) if n_repeats > 1 else 0.0) / np.sqrt(n_repeats)
    low, high = mean - half, mean + half
  return {"mean": mean, "low": float(low), "high": float(high), "alphas": alphas}


def spearman_matrix(table: Any) -> np.ndarray:
  """Spearman rank correlations between metrics over all (image, method) values.

  Internal consistency in DeepMaps (Fig. 11). Flip the sign of metrics where
  smaller is better (n_MoRF, AFOC_LeRF) first if correlations should read "both
  say better". A constant metric has undefined correlation (NaN).

  Args:
    table: `float[n_values, n_metrics]`, one column per metric; or a mapping
      `metric name -> float[...]` (e.g. `[n_images, n_methods]` per metric),
      each flattened, all of the same size, in the mapping's order.

  Returns:
    `float64[n_metrics, n_metrics]`, ones on the diagonal (NaN row, column and
    diagonal entry for a constant metric).

  Raises:
    ValueError: for fewer than 2 metrics or 3 values, mismatched sizes or NaN.
  """
  if isinstance(table, Mapping):
    columns = [np.asarray(v, np.float64).ravel() for v in table.values()]
    sizes = {c.size for c in columns}
    if len(sizes) > 1:
      raise ValueError(f"all metrics must have the same number of values; got sizes "
                       f"{dict(zip(table, (c.size for c in columns)))}")
    data = np.stack(columns, axis=1) if columns else np.zeros((0, 0))
  else:
    data = np.asarray(table, np.float64)
  if data.ndim != 2 or data.shape[1] < 2 or data.shape[0] < 3:
    raise ValueError(f"table must be [n_values >= 3, n_metrics >= 2]; got shape {data.shape}")
  if np.isnan(data).any():
    raise ValueError("table contains NaN values")
  ranks = scipy.stats.rankdata(data, axis=0)
  with np.errstate(invalid="ignore", divide="ignore"):
    rho = np.corrcoef(ranks, rowvar=False)
  diagonal = np.diag_indices_from(rho)
  rho[diagonal] = np.where(np.isfinite(rho[diagonal]), 1.0, np.nan)
  return rho
