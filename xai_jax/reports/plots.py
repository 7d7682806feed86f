"""Figures of an evaluation's scores: PNGs drawn from the runner's tables.

Everything here consumes the tables of `xai_jax.runner.evaluate` (see
`runner.EvaluationTables`): the per-sample `samples` table and the `roc` and `curves`
tables. Metric names and directions come from `xai_jax.metrics.registry`. Each function
reads the tables, writes one PNG and returns its path. Figures are bare
`matplotlib.figure.Figure` objects rendered by the Agg canvas (no pyplot, so no global
figure state and no display), dropped after saving (`save_figure`).

* `precision_recall_scatter`: per-sample recall vs precision, one panel per
  method, the mean marked with its standard deviations (Tjoa & Guan, Fig. 3).
* `recall_precision_points_figure`: one point per (model, method) in the three panels of
  Tjoa & Guan's Fig. 3 (average, best, best clamped).
* `roc_figure`: mean recall against mean FPR over the five-band thresholds,
  AUC in the legend (Tjoa & Guan, Fig. 4).
* `perturbation_curves_figure`: MoRF / LeRF curves (Samek et al. 2016).
* `win_rate_figure`: pairwise win rates of the methods on one metric
  (`tables.win_rate_table`; DeepMaps, Fig. 7).

The galleries of saliency maps are in `xai_jax.reports.gallery`.

References:
  E. Tjoa and C. Guan, "Quantifying explainability of saliency methods in deep
    neural networks with a synthetic dataset", IEEE TAI 2022.
  W. Samek et al., "Evaluating the visualization of what a deep neural network has
    learned", IEEE TNNLS 2016.
  A. Grabska-Barwinska et al., "Measuring and improving the quality of visual
    explanations" (DeepMaps), 2021, Fig. 7.
"""

from __future__ import annotations

import math
import os
import pathlib
from typing import Any, Sequence

import numpy as np
import pandas as pd
from matplotlib import colormaps
# A bare Figure (no pyplot): no global backend or figure state, works without a display.
from matplotlib.figure import Figure

from xai_jax.metrics import ground_truth
from xai_jax.metrics import registry
from xai_jax.reports import tables

SETTINGS = tuple(registry.FIVE_BAND_SETTINGS)
ORDERS = ("morf", "lerf", "random")
CURVE_QUANTITIES = ("score", "drop", "flip_rate")
_CURVE_LABELS = {"score": "mean f_c(x_k) of the predicted class",
                 "drop": "mean drop f_c(x_0) - f_c(x_k)",
                 "flip_rate": "share of decisions changed"}
_ORDER_TITLES = {"morf": "MoRF (most relevant first)", "lerf": "LeRF (least relevant first)",
                 "random": "random order"}

PathLike = str | os.PathLike


def save_figure(fig: Figure, path: PathLike, *, dpi: int = 110) -> pathlib.Path:
  """Writes `fig` to `path` (parent folders created), clears it and returns the path."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=dpi)
  # A bare Figure is not registered with pyplot: dropping it frees it; clearing
  # releases the artists now rather than at the next garbage collection.
  fig.clear()
  return path


def _colors(count: int) -> list[Any]:
  cmap = colormaps["tab10" if count <= 10 else "tab20"]
  return [cmap(i % cmap.N) for i in range(count)]


# ----------------------------------------------------------------------------
# Ground-truth scores (Tjoa & Guan, Fig. 3 and 4).


def panel_grid(count: int, *, max_columns: int = 4, size: float = 3.0):
  """A figure of `count` panels, at most `max_columns` a row; returns `(fig, axes[count])`."""
  columns = min(max_columns, count)
  rows = math.ceil(count / columns)
  fig = Figure(figsize=(size * columns + 0.4, size * rows + 0.5), layout="constrained")
  axes = np.asarray(fig.subplots(rows, columns, squeeze=False))
  for axis in axes.ravel()[count:]:
    axis.axis("off")
  return fig, axes.ravel()[:count]


def precision_recall_scatter(samples: pd.DataFrame, path: PathLike, *, model: str | None = None,
                             setting: str = "soft") -> pathlib.Path:
  """Per-sample recall (x) against precision (y), one panel per method (Tjoa & Guan, Fig. 3).

  Points are the samples' mean-over-thresholds scores (`Rmu`, `Pmu`; with
  `setting="clamped"` the `Rmu_clamp`, `Pmu_clamp` columns). The method mean is
  a large marker with error bars of one standard deviation each way, as in the
  paper's points (R_avg, P_avg). With several models in the table (and
  `model=None`), each model gets its own colour and mean marker. Rows with NaN
  scores are left out.

  Args:
    samples: the samples table (columns `model`, `method` and the score columns).
    path: the PNG to write.
    model: only this model's rows; None: every model in the table.
    setting: "soft" or "clamped".

  Returns:
    The path written.

  Raises:
    ValueError: an empty table, missing columns, an unknown model or setting.
  """
  if setting not in SETTINGS:
    raise ValueError(f"unknown setting {setting!r}; valid: {list(SETTINGS)}")
  suffix = "" if setting == "soft" else "_clamp"
  recall, precision = f"Rmu{suffix}", f"Pmu{suffix}"
  frame = tables.check_frame(samples, "samples", ["model", "method", recall, precision])
  frame = tables.select_model(frame, model, "samples")
  methods = tables.unique_in_order(frame["method"])
  models = tables.unique_in_order(frame["model"])
  colours = dict(zip(models, _colors(len(models))))
  fig, axes = panel_grid(len(methods))
  for axis, method in zip(axes, methods):
    rows = frame[frame["method"] == method]
    for name in models:
      points = rows.loc[rows["model"] == name, [recall, precision]].dropna().to_numpy(np.float64)
      if not len(points):
        continue
      colour = colours[name]
      axis.scatter(points[:, 0], points[:, 1], s=9, alpha=0.45, color=colour, linewidths=0,
                   label=name if len(models) > 1 else "samples")
      mean, spread = points.mean(axis=0), points.std(axis=0)
      axis.errorbar(mean[0], mean[1], xerr=spread[0], yerr=spread[1], fmt="D", markersize=7,
                    color=colour, markeredgecolor="black", ecolor="black", elinewidth=0.8,
                    capsize=2, label=f"mean ({mean[0]:.2f}, {mean[1]:.2f})", zorder=3)
    axis.set_xlim(-0.02, 1.02)
    axis.set_ylim(-0.02, 1.02)
    axis.set_title(method.replace("_", " "), fontsize=9)
    axis.set_xlabel(f"recall {recall}", fontsize=8)
    axis.set_ylabel(f"precision {precision}", fontsize=8)
    axis.legend(fontsize=6, loc="upper right")
  where = f"model {model}" if model is not None else ", ".join(map(str, models))
  fig.suptitle(f"Five-band recall vs precision per sample ({setting}; {where}); top right is "
               "better", fontsize=9)
  return save_figure(fig, path)


def recall_precision_points_figure(samples: pd.DataFrame, path: PathLike) -> pathlib.Path:
  """Tjoa & Guan Fig. 3 A/B/C: one point per (model, method), side by side per panel.

  Each point is a method's recall and precision averaged over the samples, for one trained
  model (their five branches give five points per method), with bars of one population
  standard deviation (`tables.recall_precision_points`). A: average over the soft thresholds;
  B: best threshold; C: best threshold after clamping. Colour = method, marker = model.

  Returns:
    The path written.

  Raises:
    ValueError: as `tables.recall_precision_points`.
  """
  points = tables.recall_precision_points(samples)
  panels = tables.unique_in_order(points["panel"])
  methods = tables.unique_in_order(points["method"])
  models = tables.unique_in_order(points["model"])
  colours = dict(zip(methods, _colors(len(methods))))
  markers = dict(zip(models, "os^Dv<>pPX*h" * (len(models) // 12 + 1)))
  fig, axes = panel_grid(len(panels), max_columns=3, size=4.0)
  for axis, panel in zip(axes, panels):
    for row in points[points["panel"] == panel].itertuples():
      axis.errorbar(row.recall, row.precision, xerr=row.recall_std, yerr=row.precision_std,
                    fmt=markers[row.model], color=colours[row.method], markersize=5,
                    elinewidth=0.5, capsize=1.5, alpha=0.85)
    axis.set_xlim(-0.02, 1.02)
    axis.set_ylim(-0.02, 1.02)
    axis.set_title(panel, fontsize=9)
    axis.set_xlabel("recall", fontsize=8)
    axis.set_ylabel("precision", fontsize=8)
  handles = [axes[0].plot([], [], "o", color=colours[m], label=m.replace("_", " "))[0]
             for m in methods]
  handles += [axes[0].plot([], [], markers[m], color="grey", label=str(m))[0] for m in models]
  fig.legend(handles=handles, fontsize=7, loc="outside right upper")
  fig.suptitle("Five-band recall vs precision per method and model (means over the samples, "
               "bars one std); top right is better", fontsize=9)
  return save_figure(fig, path)


def _panel_lines(frame: pd.DataFrame, *, panel: str, valid: Sequence[str], table: str,
                 order_by: str):
  """The panels and lines of a line figure: one panel per `panel` value, one line per
  (model, method).

  Returns:
    `(panels, lines, styles, colours)`: the panel values present, in `valid`'s order;
    `{panel value: [(model, method, rows sorted by order_by)]}`; a line style per model and
    a colour per method.

  Raises:
    ValueError: a `panel` value outside `valid`.
  """
  present = tables.unique_in_order(frame[panel])
  unknown = [v for v in present if v not in valid]
  if unknown:
    raise ValueError(f"unknown {panel} {unknown} in the {table} table; valid: {list(valid)}")
  panels = [v for v in valid if v in present]
  models = tables.unique_in_order(frame["model"])
  methods = tables.unique_in_order(frame["method"])
  colours = dict(zip(methods, _colors(len(methods))))
  styles = dict(zip(models, ["-", "--", ":", "-."] * (len(models) // 4 + 1)))
  lines = {}
  for value in panels:
    rows = frame[frame[panel] == value]
    lines[value] = [(name, method, line) for name in models for method in methods
                    if not (line := rows[(rows["model"] == name) & (rows["method"] == method)]
                            .sort_values(order_by)).empty]
  return panels, lines, styles, colours


def roc_figure(roc: pd.DataFrame, path: PathLike, *, model: str | None = None) -> pathlib.Path:
  """Mean recall against mean FPR over the thresholds (Tjoa & Guan, Fig. 4).

  One panel per setting present ("soft", "clamped"), one line per method (and
  model, when several share the panel), the points in threshold order; the
  legend gives `xai_jax.metrics.ground_truth.roc_auc` of each line (the
  polyline with the (0, 0) and (1, 1) corners added).

  Args:
    roc: the roc table: `model, method, setting, threshold, recall, fpr`.
    path: the PNG to write.
    model: only this model's rows; None: every model in the table.

  Returns:
    The path written.

  Raises:
    ValueError: an empty table, missing columns, an unknown model or setting
      value, duplicate thresholds or NaN points.
  """
  frame = tables.check_frame(roc, "roc",
                             ["model", "method", "setting", "threshold", "recall", "fpr"])
  frame = tables.select_model(frame, model, "roc")
  settings, lines, styles, colours = _panel_lines(frame, panel="setting", valid=SETTINGS,
                                                  table="roc", order_by="threshold")
  if frame.duplicated(["model", "method", "setting", "threshold"]).any():
    raise ValueError("roc table has duplicate (model, method, setting, threshold) rows")
  several_models = len(styles) > 1
  fig, axes = panel_grid(len(settings), size=4.2)
  for axis, setting in zip(axes, settings):
    for name, method, line in lines[setting]:
      recall = line["recall"].to_numpy(np.float64)
      fpr = line["fpr"].to_numpy(np.float64)
      area = ground_truth.roc_auc((recall, fpr))
      label = f"{method} (AUC {area:.3f})"
      if several_models:
        label = f"{name}: {label}"
      axis.plot(fpr, recall, styles[name], color=colours[method], marker=".", markersize=3,
                linewidth=1.2, label=label)
    axis.plot([0, 1], [0, 1], color="grey", linewidth=0.6, linestyle=":")
    axis.set_xlim(-0.02, 1.02)
    axis.set_ylim(-0.02, 1.02)
    axis.set_xlabel("false positive rate")
    axis.set_ylabel("recall")
    axis.set_title(f"{setting} thresholds", fontsize=9)
    axis.legend(fontsize=6, loc="lower right")
  where = f" (model {model})" if model is not None else ""
  fig.suptitle(f"Five-band ROC, means over samples{where}", fontsize=9)
  return save_figure(fig, path)


# ----------------------------------------------------------------------------
# Pixel removal.


def perturbation_curves_figure(curves: pd.DataFrame, path: PathLike, *, model: str | None = None,
                               quantity: str = "score") -> pathlib.Path:
  """Mean perturbation curves: `quantity` against the removed fraction, one panel per order.

  Panels MoRF and LeRF (and "random" if present), one line per method (line
  style per model when several share a panel). A good map makes the MoRF
  score fall fast (large drop) and the LeRF score stay (small drop).

  Args:
    curves: the curves table: `model, method, order, fraction` and `quantity`.
    path: the PNG to write.
    model: only this model's rows; None: every model in the table.
    quantity: "score" (mean f_c(x_k)), "drop" (mean f_c(x_0) - f_c(x_k)) or
      "flip_rate" (share of changed decisions).

  Returns:
    The path written.

  Raises:
    ValueError: an empty table, missing columns, an unknown model, order or quantity.
  """
  if quantity not in CURVE_QUANTITIES:
    raise ValueError(f"unknown quantity {quantity!r}; valid: {list(CURVE_QUANTITIES)}")
  frame = tables.check_frame(curves, "curves",
                             ["model", "method", "order", "fraction", quantity])
  frame = tables.select_model(frame, model, "curves")
  orders, lines, styles, colours = _panel_lines(frame, panel="order", valid=ORDERS,
                                                table="curves", order_by="fraction")
  fig, axes = panel_grid(len(orders), size=4.2)
  for axis, order in zip(axes, orders):
    for name, method, line in lines[order]:
      label = method if len(styles) == 1 else f"{name}: {method}"
      axis.plot(line["fraction"].to_numpy(np.float64), line[quantity].to_numpy(np.float64),
                styles[name], color=colours[method], linewidth=1.2, label=label)
    axis.set_xlabel("fraction of pixels removed")
    axis.set_ylabel(_CURVE_LABELS[quantity])
    axis.set_title(_ORDER_TITLES[order], fontsize=9)
    axis.legend(fontsize=6)
  where = f" (model {model})" if model is not None else ""
  fig.suptitle(f"Pixel-removal curves{where}", fontsize=9)
  return save_figure(fig, path)


# ----------------------------------------------------------------------------
# Win rates (DeepMaps, Fig. 7).


def _win_rate_plot(table: pd.DataFrame, *, title: str) -> Figure:
  """The annotated heatmap of a `tables.win_rate_table` (row method beats column method),
  centred on 0.5 (an even match)."""
  methods = list(table.index)
  values = table.to_numpy(np.float64)
  size = 0.75 * len(methods) + 2.2
  fig = Figure(figsize=(size + 0.8, size), layout="constrained")
  axis = fig.subplots()
  image = axis.imshow(values, cmap="RdBu_r", vmin=0.0, vmax=1.0)
  for i in range(len(methods)):
    for j in range(len(methods)):
      axis.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=7,
                color="white" if abs(values[i, j] - 0.5) > 0.3 else "black")
  labels = [m.replace("_", " ") for m in methods]
  axis.set_xticks(range(len(methods)), labels, rotation=45, ha="right", fontsize=7)
  axis.set_yticks(range(len(methods)), labels, fontsize=7)
  axis.set_xlabel("versus")
  axis.set_ylabel("method (row beats column)")
  fig.colorbar(image, ax=axis, shrink=0.8,
               label="win rate: share of images won (ties 1/2)")
  axis.set_title(title, fontsize=8)
  return fig


def win_rate_figure(samples: pd.DataFrame, path: PathLike, *, metric: str,
                    higher_is_better: bool | None = None,
                    model: str | None = None) -> pathlib.Path:
  """DeepMaps Fig. 7: how often the row method beats the column method on `metric`.

  An annotated heatmap of `tables.win_rate_table`: the win rate in [0, 1], ties
  counting one half, so the diagonal is 0.5 and `W[i, j] = 1 - W[j, i]`
  (DeepMaps shows `W - 0.5`; the colours are centred on 0.5 the same way).

  Args:
    samples: the samples table (`model, method, index` and `metric`).
    path: the PNG to write.
    metric: the metric column.
    higher_is_better: the metric's direction; None: the registry's.
    model: only this model's rows; None: every (model, image) pair counts.

  Returns:
    The path written.

  Raises:
    ValueError: as `tables.win_rate_table`.
  """
  table = tables.win_rate_table(samples, metric=metric, higher_is_better=higher_is_better,
                                model=model)
  where = f"model {model}, " if model is not None else ""
  direction = "higher" if tables.metric_direction(metric, higher_is_better) else "lower"
  title = f"Win rates on {metric} ({direction} is better; {where}{table.attrs['images']} images)"
  return save_figure(_win_rate_plot(table, title=title), path)

