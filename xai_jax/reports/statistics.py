"""DeepMaps' statistics across methods (appendix C): tables, CSV files and figures.

From the per-image `samples` table (one row per model x image x method, one column per
metric; `xai_jax.runner.evaluate`):

* `wilcoxon_table`: two-sided Wilcoxon signed-rank p-values of every pair of methods, per
  (model, metric), over the images that have a value for every method
  (`stats.wilcoxon_matrix`, i.e. `scipy.stats.wilcoxon`; DeepMaps Fig. 9 / 16).
* `alpha_table`: Krippendorff's alpha of the per-image rankings of the methods, per (model,
  metric), for all methods and without the random map (the paper's "Full" and "No Random"),
  as the mean over `draws` draws of `images` images with a 95% interval
  (`stats.krippendorff_alpha_rankings`; Fig. 10 / 17). The level of measurement is an
  argument: DeepMaps used the interval level (see `alpha_table`).
* `spearman_table`: Spearman's correlation between the metrics over the images, per (model,
  method), every metric oriented so that larger is better (`stats.spearman_matrix`;
  "internal consistency reliability", Fig. 11 / 18).
* `method_statistics`: the three tables, written as `wilcoxon.csv`,
  `krippendorff_alpha.csv` and `spearman.csv`; `statistics_figures`: their figures
  (`wilcoxon_figure`, `alpha_figure`, `spearman_figure`).

The win rates of the same pairs (Fig. 7) are `tables.pairwise_win_rates`. Everything is
recomputed from the samples table, deterministically given the key.

References:
  A. Grabska-Barwinska et al., "Measuring and improving the quality of visual
    explanations" (DeepMaps), 2021, appendix C.
  R. Tomsett et al., "Sanity checks for saliency metrics", AAAI 2020 (the two reliability
    measures).
"""

from __future__ import annotations

import os
import pathlib
from typing import Any, NamedTuple, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from xai_jax import files
from xai_jax.metrics import registry
from xai_jax.metrics import stats
from xai_jax.reports import plots
from xai_jax.reports import tables

# Krippendorff's levels of measurement offered for the rankings: "interval" is what DeepMaps
# used (the default of the package they cite), "ordinal" the level ranks are measured at.
ALPHA_LEVELS = ("interval", "ordinal")
# DeepMaps Fig. 10: "95% confidence intervals evaluated over the 50 random draws" (the
# 2.5 and 97.5 percentiles of the draws' alphas).
CONFIDENCE = 0.95
# The method left out of the "No Random" alpha, and the method sets' names and legends.
RANDOM_METHOD = "random"
METHOD_SETS = {"all": "all methods ('Full')", "without_random": "without random ('No Random')"}
# Wilcoxon p-values at or below this get the darkest colour (DeepMaps Fig. 9: p < 1e-30).
P_VALUE_FLOOR = 1e-30
FILES = {"wilcoxon": "wilcoxon.csv", "alpha": "krippendorff_alpha.csv",
         "spearman": "spearman.csv"}
WILCOXON_COLUMNS = ["model", "metric", "method", "opponent", "p_value", "images"]
ALPHA_COLUMNS = ["model", "metric", "methods", "level", "images", "draws", "available",
                 "alpha", "std", "low", "high"]
SPEARMAN_COLUMNS = ["model", "method", "metric", "versus", "rho", "images"]

PathLike = str | os.PathLike


class MethodStatistics(NamedTuple):
  """The tables of `method_statistics` (columns: `WILCOXON_COLUMNS`, `ALPHA_COLUMNS`,
  `SPEARMAN_COLUMNS`)."""
  wilcoxon: pd.DataFrame
  alpha: pd.DataFrame
  spearman: pd.DataFrame


def check_alpha_options(*, alpha_images: Any, alpha_draws: Any, alpha_level: Any) -> None:
  """Checks the options of `alpha_table`; the message names the bad one.

  Raises:
    ValueError: `alpha_images` not an int >= 2 or 0 (every image), `alpha_draws` not a
      positive int, or `alpha_level` not one of `ALPHA_LEVELS`.
  """
  if (isinstance(alpha_images, bool) or not isinstance(alpha_images, (int, np.integer))
      or alpha_images < 0 or alpha_images == 1):
    raise ValueError(f"alpha_images must be an int >= 2 (images per draw), or 0 for every "
                     f"image; got {alpha_images!r}")
  if (isinstance(alpha_draws, bool) or not isinstance(alpha_draws, (int, np.integer))
      or alpha_draws < 1):
    raise ValueError(f"alpha_draws must be a positive int; got {alpha_draws!r}")
  if alpha_level not in ALPHA_LEVELS:
    raise ValueError(f"alpha_level must be one of {', '.join(ALPHA_LEVELS)}; got "
                     f"{alpha_level!r}")


def _models(samples: pd.DataFrame):
  """`(model, rows, methods)` for every model with at least 2 methods, in order."""
  frame = tables.check_frame(samples, "samples", ["model", "method", "index"])
  if frame.duplicated(["model", "index", "method"]).any():
    raise ValueError("samples table has duplicate (model, index, method) rows")
  for model, group in frame.groupby("model", sort=False):
    methods = tables.unique_in_order(group["method"])
    if len(methods) >= 2:
      yield model, group, methods


def wilcoxon_table(samples: pd.DataFrame, *, metrics: Sequence[str]) -> pd.DataFrame:
  """Wilcoxon signed-rank p-values of every ordered pair of methods, per model and metric.

  For each model with at least 2 methods and each metric of `metrics` it has: the two-sided
  p-value of `scipy.stats.wilcoxon` on the paired values of the two methods over the images
  that have a value for every method (`stats.wilcoxon_matrix`; DeepMaps appendix C.1,
  Fig. 9 / 16). A metric without any such image is skipped.

  Args:
    samples: the samples table (`model, method, index` and the metric columns).
    metrics: registered score columns, in the order of the rows.

  Returns:
    Columns `WILCOXON_COLUMNS`: `model, metric, method, opponent, p_value, images`; one row
    per ordered pair of different methods (`p_value` is symmetric).

  Raises:
    ValueError: an empty table, missing key columns, duplicate (model, index, method) rows.
  """
  rows = []
  for model, group, methods in _models(samples):
    for metric in metrics:
      if metric not in group.columns:
        continue
      table = tables.complete_scores(group, metric, methods)
      if table.empty:
        continue
      p_values = stats.wilcoxon_matrix(table.to_numpy())
      for i, method in enumerate(methods):
        for j, opponent in enumerate(methods):
          if i != j:
            rows.append({"model": model, "metric": metric, "method": method,
                         "opponent": opponent, "p_value": float(p_values[i, j]),
                         "images": len(table)})
  return pd.DataFrame(rows, columns=WILCOXON_COLUMNS)


def _method_sets(methods: Sequence[str]) -> dict[str, list[str]]:
  """`{"all": methods}`, and `"without_random"` when `RANDOM_METHOD` is one of them and at
  least 2 others remain (DeepMaps Fig. 10: "Full" and "No Random")."""
  sets = {"all": list(methods)}
  others = [m for m in methods if m != RANDOM_METHOD]
  if len(others) < len(methods) and len(others) >= 2:
    sets["without_random"] = others
  return sets


def alpha_table(samples: pd.DataFrame, *, metrics: Sequence[str], key: Any, images: int,
                draws: int, level: str, confidence: float = CONFIDENCE) -> pd.DataFrame:
  """Krippendorff's alpha of the per-image method rankings, per model, metric and method set.

  Each image ranks the methods by the metric (1 = best in the registry's direction, ties
  averaged); alpha of those rankings measures how consistently the images rank the methods
  (DeepMaps appendix C.2, Fig. 10 / 17: 1 = every image ranks them alike, 0 = unrelated).
  DeepMaps used Grill's Krippendorff-alpha package (2017), whose default metric is the
  interval one (it has no ordinal metric), and name no level: `level="interval"` is the
  paper's (the package default; the text does not rule out another metric passed by their
  code); `"ordinal"` weighs a disagreement by the ranks that lie between the two values.
  Without ties every rank occurs equally often, the ordinal distance is then proportional
  to the interval one and both levels give the same alpha; they differ only where a metric
  ties methods (n_MoRF / n_LeRF on a coarse grid, a random map that never flips).

  The draws, as the paper ("500 randomly selected images (out of 5000) and repeated 50
  times"): `draws` sets of `images` images, each drawn without replacement from the
  `available` images that have a value for every method of the set; alpha is their mean,
  `std` their standard deviation (ddof 1) and `low` / `high` their `confidence` percentile
  interval. When `images` is 0 or at least `available`, there is nothing to draw: alpha is
  that of every image, once (`draws` 1, `std` 0, `low` = `high` = alpha). Every call draws
  from a generator made afresh from `key`, so the metrics and method sets of a model with the
  same number of available images see the same image sets.

  Alpha is undefined (NaN) when the rankings show no variation, i.e. the metric ties every
  method on every image (or on every image of one draw), and for fewer than 2 images.

  Args:
    samples: the samples table (`model, method, index` and the metric columns).
    metrics: registered score columns, in the order of the rows.
    key: an int seed or a JAX PRNG key (`stats.krippendorff_alpha_rankings`).
    images: images per draw (DeepMaps: 500 of 5000); 0: every image, once.
    draws: number of draws (DeepMaps: 50).
    level: "interval" (DeepMaps) or "ordinal".
    confidence: the interval's coverage.

  Returns:
    Columns `ALPHA_COLUMNS`: `model, metric, methods` ("all" or "without_random"), `level`,
    `images` (per draw), `draws`, `available`, `alpha` (the mean), `std`, `low`, `high`.

  Raises:
    ValueError: a bad option (`check_alpha_options`), or a bad samples table as
      `wilcoxon_table`.
  """
  check_alpha_options(alpha_images=images, alpha_draws=draws, alpha_level=level)
  rows = []
  for model, group, methods in _models(samples):
    for metric in metrics:
      if metric not in group.columns:
        continue
      higher = registry.score_direction(metric)
      for name, chosen in _method_sets(methods).items():
        table = tables.complete_scores(group, metric, chosen)
        if table.empty:
          continue
        values, available = table.to_numpy(), len(table)
        per_draw = available if images == 0 or images >= available else int(images)
        repeats = 1 if per_draw == available else int(draws)
        result = {"alpha": np.nan, "std": np.nan, "low": np.nan, "high": np.nan}
        if available >= 2 and np.unique(stats.rankings(values, higher_is_better=higher)).size > 1:
          try:
            out = stats.krippendorff_alpha_rankings(
                values, key=key, n_images=per_draw, n_repeats=repeats, higher_is_better=higher,
                confidence=confidence, level_of_measurement=level)
            result = {k: out[k] for k in ("std", "low", "high")} | {"alpha": out["mean"]}
          except ValueError:  # a draw whose images all tie every method: alpha undefined
            pass
        rows.append({"model": model, "metric": metric, "methods": name, "level": level,
                     "images": per_draw, "draws": repeats, "available": available, **result})
  return pd.DataFrame(rows, columns=ALPHA_COLUMNS)


def spearman_table(samples: pd.DataFrame, *, metrics: Sequence[str]) -> pd.DataFrame:
  """Spearman's correlation between the metrics over the images, per model and method.

  DeepMaps appendix C.2 (Fig. 11 / 18): for one saliency method, the correlation of two
  metrics' values over the images ("internal consistency reliability"), each metric
  oriented so that larger is better (the paper negates n_MoRF and AFOC_LeRF; here every
  metric whose registry direction is "lower is better", deltas included). The images are
  those with a value for every metric of `metrics` that the method has; a constant metric
  gives NaN (`stats.spearman_matrix`).

  Args:
    samples: the samples table (`model, method, index` and the metric columns).
    metrics: registered score columns, in the order of the rows.

  Returns:
    Columns `SPEARMAN_COLUMNS`: `model, method, metric, versus, rho, images`, one row per
    ordered pair of metrics (the diagonal included), for every (model, method) with at
    least 2 metrics and 2 images.

  Raises:
    ValueError: a bad samples table (as `wilcoxon_table`).
  """
  frame = tables.check_frame(samples, "samples", ["model", "method", "index"])
  if frame.duplicated(["model", "index", "method"]).any():
    raise ValueError("samples table has duplicate (model, index, method) rows")
  rows = []
  for (model, method), group in frame.groupby(["model", "method"], sort=False):
    present = [m for m in metrics if m in group.columns and group[m].notna().any()]
    values = group[present].astype(np.float64).dropna()
    if len(present) < 2 or len(values) < 2:
      continue
    signs = np.array([1.0 if registry.score_direction(m) else -1.0 for m in present])
    rho = stats.spearman_matrix(values.to_numpy() * signs,
                                names=[f"{m} ({model}, {method})" for m in present])
    for i, metric in enumerate(present):
      for j, versus in enumerate(present):
        rows.append({"model": model, "method": method, "metric": metric, "versus": versus,
                     "rho": float(rho[i, j]), "images": len(values)})
  return pd.DataFrame(rows, columns=SPEARMAN_COLUMNS)


def method_statistics(samples: pd.DataFrame, folder: PathLike, *, metrics: Sequence[str],
                      key: Any, alpha_images: int, alpha_draws: int, alpha_level: str
                      ) -> MethodStatistics:
  """DeepMaps' appendix-C statistics of a samples table, written as CSV files to `folder`.

  `wilcoxon_table`, `alpha_table` (`alpha_images` per draw, `alpha_draws` draws, level
  `alpha_level`) and `spearman_table` over `metrics`, written as `folder/wilcoxon.csv`,
  `folder/krippendorff_alpha.csv` and `folder/spearman.csv` (`FILES`). The experiments call
  this one function (`pipelines.cells`, `pipelines.pixel_removal`).

  Returns:
    The three tables.

  Raises:
    ValueError: a bad option (`check_alpha_options`) or samples table.
  """
  check_alpha_options(alpha_images=alpha_images, alpha_draws=alpha_draws,
                      alpha_level=alpha_level)
  result = MethodStatistics(
      wilcoxon=wilcoxon_table(samples, metrics=metrics),
      alpha=alpha_table(samples, metrics=metrics, key=key, images=alpha_images,
                        draws=alpha_draws, level=alpha_level),
      spearman=spearman_table(samples, metrics=metrics))
  folder = pathlib.Path(folder)
  for name, file_name in FILES.items():
    files.write_table(getattr(result, name), folder / file_name)
  return result


# ----------------------------------------------------------------------------
# Figures.


def _one_model(frame: pd.DataFrame, model: str | None, name: str) -> pd.DataFrame:
  frame = tables.select_model(frame, model, name)
  models = tables.unique_in_order(frame["model"])
  if len(models) != 1:
    raise ValueError(f"the {name} table holds several models {models}: pass model=")
  return frame


def _metrics_of(frame: pd.DataFrame, metrics: Sequence[str] | None, name: str) -> list[str]:
  present = tables.unique_in_order(frame["metric"])
  chosen = present if metrics is None else [m for m in metrics if m in present]
  if not chosen:
    raise ValueError(f"the {name} table has none of the metrics {list(metrics or [])}; it has "
                     f"{present}")
  return chosen


def _labels(names: Sequence[str]) -> list[str]:
  return [n.replace("_", " ") for n in names]


def _p_label(p: float) -> str:
  if np.isnan(p):
    return ""
  if p <= P_VALUE_FLOOR:
    return "<1e-30"
  return f"{p:.2f}" if p >= 0.01 else f"{p:.0e}"


def wilcoxon_figure(wilcoxon: pd.DataFrame, path: PathLike, *, model: str | None = None,
                    metrics: Sequence[str] | None = None) -> pathlib.Path:
  """DeepMaps Fig. 9 / 16: Wilcoxon p-values between the methods, one panel per metric.

  Each panel is the symmetric methods x methods matrix of `wilcoxon_table`, coloured by
  -log10 p: white is p = 1 (the two methods' values are indistinguishable), the darkest
  colour p <= 1e-30 (`P_VALUE_FLOOR`), as the paper's colour bar; cells show p.

  Args:
    wilcoxon: `wilcoxon_table` output.
    path: the PNG to write.
    model: this model's rows; None: the table's only model.
    metrics: the panels, in order (those the table has); None: every metric.

  Returns:
    The path written.

  Raises:
    ValueError: a table lacking the columns, several models and no `model`, or none of
      `metrics`.
  """
  frame = tables.check_frame(wilcoxon, "wilcoxon", WILCOXON_COLUMNS)
  frame = _one_model(frame, model, "wilcoxon")
  metrics = _metrics_of(frame, metrics, "wilcoxon")
  fig, axes = plots.panel_grid(len(metrics), max_columns=4, size=2.8)
  image = None
  for axis, metric in zip(axes, metrics):
    part = frame[frame["metric"] == metric]
    methods = tables.unique_in_order(part["method"])
    p = part.pivot(index="method", columns="opponent", values="p_value").reindex(
        index=methods, columns=methods).to_numpy(np.float64)
    strength = -np.log10(np.clip(p, P_VALUE_FLOOR, 1.0))
    image = axis.imshow(strength, cmap="Blues", vmin=0.0, vmax=-np.log10(P_VALUE_FLOOR))
    for i in range(len(methods)):
      for j in range(len(methods)):
        if i != j:
          axis.text(j, i, _p_label(p[i, j]), ha="center", va="center", fontsize=5.5,
                    color="white" if strength[i, j] > 15 else "black")
    axis.set_xticks(range(len(methods)), _labels(methods), rotation=45, ha="right", fontsize=6)
    axis.set_yticks(range(len(methods)), _labels(methods), fontsize=6)
    axis.set_title(f"{metric} ({int(part['images'].iloc[0])} images)", fontsize=8)
  fig.colorbar(image, ax=list(axes), shrink=0.8,
               label="-log10 p (white: p = 1; darkest: p <= 1e-30)")
  fig.suptitle(f"Wilcoxon signed-rank p-values between methods (model "
               f"{frame['model'].iloc[0]})", fontsize=9)
  return plots.save_figure(fig, path)


def alpha_figure(alpha: pd.DataFrame, path: PathLike, *, model: str | None = None,
                 metrics: Sequence[str] | None = None) -> pathlib.Path:
  """DeepMaps Fig. 10 / 17: Krippendorff's alpha per metric, with its interval.

  One group of bars per metric, one bar per method set of `alpha_table` ("Full": all
  methods; "No Random": without the random map), the error bars its `low` / `high` interval
  over the draws; an undefined alpha (NaN) is marked "n/a".

  Args:
    alpha: `alpha_table` output.
    path: the PNG to write.
    model: this model's rows; None: the table's only model.
    metrics: the groups, in order (those the table has); None: every metric.

  Returns:
    The path written.

  Raises:
    ValueError: as `wilcoxon_figure`.
  """
  frame = tables.check_frame(alpha, "alpha", ALPHA_COLUMNS)
  frame = _one_model(frame, model, "alpha")
  metrics = _metrics_of(frame, metrics, "alpha")
  sets = tables.unique_in_order(frame["methods"])
  fig = Figure(figsize=(max(4.5, 0.75 * len(metrics) + 2.0), 3.6), layout="constrained")
  axis = fig.subplots()
  width = 0.8 / len(sets)
  positions = np.arange(len(metrics), dtype=np.float64)
  for k, name in enumerate(sets):
    part = frame[frame["methods"] == name].drop_duplicates("metric").set_index("metric")
    part = part.reindex(metrics)
    x = positions + (k - (len(sets) - 1) / 2) * width
    values = part["alpha"].to_numpy(np.float64)
    below = np.nan_to_num(np.maximum(values - part["low"].to_numpy(np.float64), 0.0))
    above = np.nan_to_num(np.maximum(part["high"].to_numpy(np.float64) - values, 0.0))
    axis.bar(x, np.nan_to_num(values), width, yerr=np.stack([below, above]), capsize=3,
             color=f"C{k}", label=METHOD_SETS.get(name, name))
    for position, value in zip(x, values):
      if np.isnan(value):
        axis.text(position, 0.0, "n/a", ha="center", va="bottom", fontsize=6)
  axis.axhline(0.0, color="black", linewidth=0.6)
  axis.set_xticks(positions, _labels(metrics), rotation=45, ha="right", fontsize=7)
  axis.set_ylabel("Krippendorff's alpha of the rankings")
  axis.legend(fontsize=7)
  described = sorted({(int(r.images), int(r.draws)) for r in frame.itertuples()})
  draws = "; ".join(f"{d} draw{'s' if d > 1 else ''} of {i} images" for i, d in described)
  axis.set_title(f"Consistency of the method rankings (model {frame['model'].iloc[0]}, "
                 f"{frame['level'].iloc[0]} level; {draws}; {CONFIDENCE:.0%} intervals)",
                 fontsize=8)
  return plots.save_figure(fig, path)


def spearman_figure(spearman: pd.DataFrame, path: PathLike, *, model: str | None = None,
                    methods: Sequence[str] | None = None,
                    metrics: Sequence[str] | None = None) -> pathlib.Path:
  """DeepMaps Fig. 11 / 18: Spearman correlation between the metrics, one panel per method.

  Each panel is the metrics x metrics matrix of `spearman_table` for one method (the paper
  shows Random and DeepMaps), coloured from -1 to 1; every metric is oriented so that larger
  is better.

  Args:
    spearman: `spearman_table` output.
    path: the PNG to write.
    model: this model's rows; None: the table's only model.
    methods: the panels, in order (those the table has); None: every method.
    metrics: the rows and columns, in order (those the table has); None: every metric.

  Returns:
    The path written.

  Raises:
    ValueError: as `wilcoxon_figure`, or none of `methods`.
  """
  frame = tables.check_frame(spearman, "spearman", SPEARMAN_COLUMNS)
  frame = _one_model(frame, model, "spearman")
  present = tables.unique_in_order(frame["method"])
  methods = present if methods is None else [m for m in methods if m in present]
  if not methods:
    raise ValueError(f"the spearman table has none of the methods; it has {present}")
  metrics = _metrics_of(frame, metrics, "spearman")
  fig, axes = plots.panel_grid(len(methods), max_columns=3, size=0.42 * len(metrics) + 1.6)
  image = None
  for axis, method in zip(axes, methods):
    part = frame[frame["method"] == method]
    rho = part.pivot(index="metric", columns="versus", values="rho").reindex(
        index=metrics, columns=metrics).to_numpy(np.float64)
    image = axis.imshow(rho, cmap="RdBu_r", vmin=-1.0, vmax=1.0)
    for i in range(len(metrics)):
      for j in range(len(metrics)):
        if not np.isnan(rho[i, j]):
          axis.text(j, i, f"{rho[i, j]:.2f}", ha="center", va="center", fontsize=5.5,
                    color="white" if abs(rho[i, j]) > 0.6 else "black")
    axis.set_xticks(range(len(metrics)), _labels(metrics), rotation=45, ha="right", fontsize=6)
    axis.set_yticks(range(len(metrics)), _labels(metrics), fontsize=6)
    axis.set_title(f"{method} ({int(part['images'].iloc[0])} images)", fontsize=8)
  fig.colorbar(image, ax=list(axes), shrink=0.8, label="Spearman's rho (larger is better)")
  fig.suptitle(f"Spearman correlation between the metrics (model {frame['model'].iloc[0]})",
               fontsize=9)
  return plots.save_figure(fig, path)


def statistics_figures(statistics: MethodStatistics, folder: PathLike, *,
                       model: str | None = None, metrics: Sequence[str] | None = None
                       ) -> dict[str, pathlib.Path]:
  """The figures of `method_statistics`' tables: `folder/wilcoxon.png`, `folder/alpha.png`
  and `folder/spearman.png`, each drawn when its table has rows of `metrics`.

  Returns:
    `{caption: path}` for `reports.write_report`.
  """
  folder = pathlib.Path(folder)
  figures = {}

  def has(frame: pd.DataFrame, column: str) -> bool:
    rows = frame if model is None else frame[frame["model"] == model]
    return bool(len(rows)) and (metrics is None or rows[column].isin(metrics).any())

  if has(statistics.wilcoxon, "metric"):
    figures["Wilcoxon signed-rank p-values between the methods, per metric (DeepMaps Fig. 9 "
            "/ 16)"] = wilcoxon_figure(statistics.wilcoxon, folder / "wilcoxon.png",
                                       model=model, metrics=metrics)
  if has(statistics.alpha, "metric"):
    level = statistics.alpha["level"].iloc[0]
    figures[f"Krippendorff's alpha of the per-image method rankings, {level} level (DeepMaps "
            "Fig. 10 / 17)"] = alpha_figure(statistics.alpha, folder / "alpha.png",
                                            model=model, metrics=metrics)
  if has(statistics.spearman, "metric"):
    figures["Spearman correlation between the metrics over the images, per method (DeepMaps "
            "Fig. 11 / 18)"] = spearman_figure(statistics.spearman, folder / "spearman.png",
                                               model=model, metrics=metrics)
  return figures
