"""Figures, tables and the markdown report of an evaluation.

Everything here consumes the tables of `xai_jax.runner.evaluate` (see
`runner.EvaluationTables`): the per-sample `samples` table, the `roc` and `curves`
tables, the `gallery` dict and the experiment's `accuracy` table. Metric names,
directions and descriptions come from `xai_jax.metrics.registry`. The functions
are pure: they read the tables, write one PNG (or `report.md`) and return its
path. Figures are bare `matplotlib.figure.Figure` objects rendered by the Agg
canvas (no pyplot, so no global figure state and no display), dropped after
saving.

* `method_class_gallery`: one sample per class, the image, its ground truth and
  one column per method (Tjoa & Guan, Fig. 5/6); `method_gallery`: one method
  over all gallery samples.
* `precision_recall_scatter`: per-sample recall vs precision, one panel per
  method, the mean marked with its standard deviations (Tjoa & Guan, Fig. 3).
* `roc_figure`: mean recall against mean FPR over the five-band thresholds,
  AUC in the legend (Tjoa & Guan, Fig. 4).
* `perturbation_curves_figure`: MoRF / LeRF curves (Samek et al. 2016).
* `win_rate_figure` (and `win_rate_table`): pairwise win rates of the methods on
  one metric (DeepMaps, Fig. 7); `pairwise_win_rates`: the same for several
  metrics and models as one long table.

Win rates follow one convention everywhere (`stats.win_rate_matrix`): the column
`win_rate` is the fraction of images on which the method beats the opponent, ties
counting one half, in [0, 1] (0.5: even). DeepMaps plots that fraction minus 50%.
* `summary_table`, `to_markdown`, `write_report`: the means per (model,
  method), a markdown renderer without `tabulate`, and `report.md`.

References:
  E. Tjoa and C. Guan, "Quantifying explainability of saliency methods in deep
    neural networks with a synthetic dataset", IEEE TAI 2022.
  A. Grabska-Barwinska et al., "Measuring and improving the quality of visual
    explanations" (DeepMaps), 2021, Fig. 7.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib import colormaps
# A bare Figure (no pyplot): no global backend or figure state, works without a display.
from matplotlib.figure import Figure

from xai_jax import files
from xai_jax.metrics import ground_truth
from xai_jax.metrics import registry
from xai_jax.metrics import stats

SETTINGS = tuple(registry.FIVE_BAND_SETTINGS)
ORDERS = ("morf", "lerf", "random")
CURVE_QUANTITIES = ("score", "drop", "flip_rate")
_CURVE_LABELS = {"score": "mean f_c(x_k) of the predicted class",
                 "drop": "mean drop f_c(x_0) - f_c(x_k)",
                 "flip_rate": "share of decisions changed"}
_ORDER_TITLES = {"morf": "MoRF (most relevant first)", "lerf": "LeRF (least relevant first)",
                 "random": "random order"}

PathLike = str | os.PathLike


# ----------------------------------------------------------------------------
# Input checks.


def _check_frame(frame: Any, name: str, columns: Sequence[str]) -> pd.DataFrame:
  if not isinstance(frame, pd.DataFrame):
    raise ValueError(f"{name} must be a pandas DataFrame; got {type(frame).__name__}")
  if frame.empty:
    raise ValueError(f"{name} table is empty")
  missing = [c for c in columns if c not in frame.columns]
  if missing:
    raise ValueError(f"{name} table is missing columns {missing}; it has {list(frame.columns)}")
  return frame


def _select_model(frame: pd.DataFrame, model: str | None, name: str) -> pd.DataFrame:
  if model is None:
    return frame
  models = list(dict.fromkeys(frame["model"].tolist()))
  if model not in models:
    raise ValueError(f"unknown model {model!r} in the {name} table; valid: {models}")
  return frame[frame["model"] == model]


def _unique(values: Any) -> list[Any]:
  """Distinct values in order of first appearance."""
  return list(dict.fromkeys(list(values)))


def _save(fig: Figure, path: PathLike, *, dpi: int = 110) -> pathlib.Path:
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
# Galleries (Tjoa & Guan, Fig. 5 and 6).


def _gallery_arrays(gallery: Mapping[str, Any]) -> dict[str, Any]:
  """Validated numpy arrays of a gallery dict (`runner.EvaluationTables.gallery`)."""
  if not isinstance(gallery, Mapping) and not hasattr(gallery, "files"):
    raise ValueError(f"gallery must be a mapping of arrays; got {type(gallery).__name__}")
  keys = list(gallery.keys())
  if "images" not in keys:
    raise ValueError(f"gallery has no 'images'; keys: {keys}")
  images = np.asarray(gallery["images"], np.float32)
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4 or images.shape[0] == 0:
    raise ValueError(f"gallery images must be float[n >= 1, H, W, C]; got shape {images.shape}")
  n, height, width = images.shape[:3]
  out: dict[str, Any] = {"images": images}
  for key in ("labels", "predicted"):
    if key in keys:
      values = np.asarray(gallery[key]).astype(np.int64).reshape(-1)
      if values.shape != (n,):
        raise ValueError(f"gallery {key} must be int[{n}]; got shape {np.shape(gallery[key])}")
      out[key] = values
    else:
      out[key] = None
  heatmaps = None
  if "heatmaps" in keys:
    heatmaps = np.asarray(gallery["heatmaps"], np.float32)
    if heatmaps.ndim == 4 and heatmaps.shape[-1] == 1:
      heatmaps = heatmaps[..., 0]
    if heatmaps.shape != (n, height, width):
      raise ValueError(f"gallery heatmaps must be float[{n}, {height}, {width}]; got shape "
                       f"{heatmaps.shape}")
    if not np.any(heatmaps):
      heatmaps = None
  out["heatmaps"] = heatmaps
  maps = {}
  for key in keys:
    if not key.startswith("map/"):
      continue
    values = np.asarray(gallery[key], np.float32)
    if values.shape != (n, height, width):
      raise ValueError(f"gallery {key!r} must be float[{n}, {height}, {width}]; got shape "
                       f"{values.shape}")
    if not np.all(np.isfinite(values)):
      raise ValueError(f"gallery {key!r} holds NaN or infinite values")
    maps[key[len("map/"):]] = values
  out["maps"] = maps
  return out


def _class_namer(class_names: Sequence[str] | None):
  """label -> display name: `class_names[label]`, or the number (no names, or out of range).

  Raises:
    ValueError: `class_names` that is a single string.
  """
  if isinstance(class_names, str):
    raise ValueError(f"class_names must be a sequence of names, one per class, not the string "
                     f"{class_names!r}")

  def name(label: int) -> str:
    if class_names is not None and 0 <= label < len(class_names):
      return str(class_names[label])
    return str(label)
  return name


def _displayable(image: np.ndarray) -> tuple[np.ndarray, str | None]:
  """An image for imshow: RGB in [0, 1] (min-max scaled if outside) or a grey map."""
  if image.shape[-1] == 3:
    shown = image
  else:
    shown = image.mean(axis=-1)
  low, high = float(shown.min()), float(shown.max())
  if low < 0.0 or high > 1.0:
    shown = (shown - low) / (high - low) if high > low else np.zeros_like(shown)
  return np.clip(shown, 0.0, 1.0), (None if shown.ndim == 3 else "gray")


def _show_map(axis, values: np.ndarray) -> None:
  """Diverging colours symmetric around 0, scaled by this map's own max |value|."""
  span = float(np.max(np.abs(values)))
  span = span if span > 0 else 1.0
  axis.imshow(values, cmap="RdBu_r", vmin=-span, vmax=span, interpolation="nearest")


def _bare(axis) -> None:
  axis.set_xticks([])
  axis.set_yticks([])


def _gallery_rows(labels: np.ndarray | None, count: int) -> list[int]:
  """The first sample of each class, by class; unknown labels (< 0) each keep their row."""
  if labels is None:
    return list(range(count))
  first: dict[int, int] = {}
  unknown = []
  for i, label in enumerate(labels.tolist()):
    if label < 0:
      unknown.append(i)
    elif label not in first:
      first[label] = i
  return [first[label] for label in sorted(first)] + unknown


def _show_sample_image(axis, sample: int, images, labels, predicted, name) -> tuple[str, str]:
  """Draws gallery image `sample`; returns its caption (class, prediction) and colour (red
  when the prediction is wrong)."""
  shown, cmap = _displayable(images[sample])
  axis.imshow(shown, cmap=cmap, interpolation="nearest")
  text = name(int(labels[sample])) if labels is not None else f"#{sample}"
  colour = "black"
  if predicted is not None:
    text += f"\npred {name(int(predicted[sample]))}"
    if labels is not None and labels[sample] >= 0 and predicted[sample] != labels[sample]:
      colour = "tab:red"
  return text, colour


def _show_truth(axis, heatmap) -> None:
  axis.imshow(heatmap, cmap="Reds", vmin=0.0, vmax=1.0, interpolation="nearest")


def method_class_gallery(gallery: Mapping[str, np.ndarray], path: PathLike, *,
                         methods: Sequence[str] | None = None, title: str | None = None,
                         class_names: Sequence[str] | None = None) -> pathlib.Path:
  """Samples x methods grid of saliency maps (Tjoa & Guan, Fig. 5 and 6).

  Rows are the first gallery sample of each class (sorted by class; samples
  with an unknown label, < 0, each get a row), labelled with the class name
  (`class_names[label]`, or the number without names) and the
  predicted class (red when wrong). Columns: the image, the ground-truth
  heatmap (only if some heatmap is non-zero; white 0 to dark red 1), then one
  column per method: diverging colours (red positive, blue negative), each map
  scaled symmetrically by its own max |value|.

  Args:
    gallery: the runner's gallery dict (or the loaded `gallery.npz`): "images"
      `float32[n, H, W, C]`, optional "heatmaps" `float32[n, H, W]`, "labels" and
      "predicted" `int[n]`, and "map/<method>" `float32[n, H, W]` per method.
    path: the PNG to write (parent folders are created).
    methods: the methods (columns) to show, in this order; default: all maps in
      the gallery's order.
    title: the figure title.
    class_names: names of the classes, indexed by label (e.g. the cells'
      `CLASS_NAMES`); None (or a label beyond them): the label's number.

  Returns:
    The path written.

  Raises:
    ValueError: missing images or maps, shapes that disagree, NaN maps or an
      unknown method (the message lists the valid ones).
  """
  arrays = _gallery_arrays(gallery)
  maps = arrays["maps"]
  if not maps:
    raise ValueError(f"gallery holds no 'map/<method>' arrays; keys: {list(gallery.keys())}")
  if methods is None:
    methods = list(maps)
  methods = list(methods)
  unknown = [m for m in methods if m not in maps]
  if unknown or not methods:
    raise ValueError(f"unknown methods {unknown or methods}; the gallery has {list(maps)}")
  images, heatmaps = arrays["images"], arrays["heatmaps"]
  labels, predicted = arrays["labels"], arrays["predicted"]
  name = _class_namer(class_names)
  rows = _gallery_rows(labels, len(images))
  columns = ["image"] + (["ground truth"] if heatmaps is not None else []) + methods
  fig = Figure(figsize=(1.35 * len(columns) + 0.6, 1.35 * len(rows) + 0.8), layout="constrained")
  axes = np.asarray(fig.subplots(len(rows), len(columns), squeeze=False))
  for r, sample in enumerate(rows):
    for c, column in enumerate(columns):
      axis = axes[r, c]
      _bare(axis)
      if column == "image":
        text, colour = _show_sample_image(axis, sample, images, labels, predicted, name)
        axis.set_ylabel(text, fontsize=7, color=colour)
      elif column == "ground truth":
        _show_truth(axis, heatmaps[sample])
      else:
        _show_map(axis, maps[column][sample])
      if r == 0:
        axis.set_title(column.replace("_", " "), fontsize=7)
  fig.suptitle(title or "Saliency maps per class (red positive, blue negative; each map "
               "scaled by its max |value|)", fontsize=8)
  return _save(fig, path)


def method_gallery(gallery: Mapping[str, np.ndarray], method: str, path: PathLike, *,
                   columns: int = 10, title: str | None = None,
                   class_names: Sequence[str] | None = None) -> pathlib.Path:
  """One method over every gallery sample: image, ground truth (if any) and map per sample.

  Samples run left to right in blocks of `columns`; each block has a row of
  images, a row of ground truths (if any heatmap is non-zero) and a row of maps
  (diverging colours, each map scaled by its own max |value|). Column titles
  give the class and the prediction (red when wrong).

  Args:
    gallery: the runner's gallery dict (see `method_class_gallery`).
    method: the method name ("gradient" or "map/gradient").
    path: the PNG to write.
    columns: samples per block row.
    title: the figure title (default: the method name).
    class_names: names of the classes (see `method_class_gallery`).

  Returns:
    The path written.

  Raises:
    ValueError: an unknown method (listing the valid ones), bad shapes or `columns < 1`.
  """
  arrays = _gallery_arrays(gallery)
  maps = arrays["maps"]
  key = method[len("map/"):] if method.startswith("map/") else method
  if key not in maps:
    raise ValueError(f"unknown method {method!r}; the gallery has {list(maps)}")
  if int(columns) != columns or columns < 1:
    raise ValueError(f"columns must be a positive integer; got {columns}")
  images, heatmaps = arrays["images"], arrays["heatmaps"]
  labels, predicted = arrays["labels"], arrays["predicted"]
  name = _class_namer(class_names)
  count = len(images)
  width = min(int(columns), count)
  blocks = math.ceil(count / width)
  kinds = ["image"] + (["truth"] if heatmaps is not None else []) + ["map"]
  fig = Figure(figsize=(1.3 * width + 0.6, 1.3 * blocks * len(kinds) + 0.7), layout="constrained")
  axes = np.asarray(fig.subplots(blocks * len(kinds), width, squeeze=False))
  for axis in axes.ravel():
    _bare(axis)
    axis.axis("off")
  for sample in range(count):
    block, column = divmod(sample, width)
    for k, kind in enumerate(kinds):
      axis = axes[block * len(kinds) + k, column]
      axis.axis("on")
      if kind == "image":
        text, colour = _show_sample_image(axis, sample, images, labels, predicted, name)
        axis.set_title(text, fontsize=6, color=colour)
      elif kind == "truth":
        _show_truth(axis, heatmaps[sample])
      else:
        _show_map(axis, maps[key][sample])
      if column == 0:
        axis.set_ylabel(kind, fontsize=7)
  fig.suptitle(title or f"{key.replace('_', ' ')} (red positive, blue negative; each map "
               "scaled by its max |value|)", fontsize=8)
  return _save(fig, path)


# ----------------------------------------------------------------------------
# Ground-truth scores (Tjoa & Guan, Fig. 3 and 4).


def _panel_grid(count: int, *, max_columns: int = 4, size: float = 3.0):
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
  frame = _check_frame(samples, "samples", ["model", "method", recall, precision])
  frame = _select_model(frame, model, "samples")
  methods = _unique(frame["method"])
  models = _unique(frame["model"])
  colours = dict(zip(models, _colors(len(models))))
  fig, axes = _panel_grid(len(methods))
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
  return _save(fig, path)


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
  present = _unique(frame[panel])
  unknown = [v for v in present if v not in valid]
  if unknown:
    raise ValueError(f"unknown {panel} {unknown} in the {table} table; valid: {list(valid)}")
  panels = [v for v in valid if v in present]
  models = _unique(frame["model"])
  methods = _unique(frame["method"])
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
  frame = _check_frame(roc, "roc", ["model", "method", "setting", "threshold", "recall", "fpr"])
  frame = _select_model(frame, model, "roc")
  settings, lines, styles, colours = _panel_lines(frame, panel="setting", valid=SETTINGS,
                                                  table="roc", order_by="threshold")
  if frame.duplicated(["model", "method", "setting", "threshold"]).any():
    raise ValueError("roc table has duplicate (model, method, setting, threshold) rows")
  several_models = len(styles) > 1
  fig, axes = _panel_grid(len(settings), size=4.2)
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
  return _save(fig, path)


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
  frame = _check_frame(curves, "curves", ["model", "method", "order", "fraction", quantity])
  frame = _select_model(frame, model, "curves")
  orders, lines, styles, colours = _panel_lines(frame, panel="order", valid=ORDERS,
                                                table="curves", order_by="fraction")
  fig, axes = _panel_grid(len(orders), size=4.2)
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
  return _save(fig, path)


# ----------------------------------------------------------------------------
# Win rates (DeepMaps, Fig. 7).


def _direction(metric: str, higher_is_better: bool | None) -> bool:
  """The given direction, or the registry's (`registry.score_direction`)."""
  if higher_is_better is None:
    return registry.score_direction(metric)
  if not isinstance(higher_is_better, (bool, np.bool_)):
    raise ValueError(f"higher_is_better must be True, False or None (the registry's "
                     f"direction); got {higher_is_better!r}")
  return bool(higher_is_better)


def _complete_scores(frame: pd.DataFrame, metric: str, methods: Sequence[str]) -> pd.DataFrame:
  """`[(model, index), methods]` values of `metric`, images lacking a method's value dropped."""
  table = frame.pivot(index=["model", "index"], columns="method", values=metric)
  return table[list(methods)].astype(np.float64).dropna()


def win_rate_table(samples: pd.DataFrame, *, metric: str, higher_is_better: bool | None = None,
                   model: str | None = None) -> pd.DataFrame:
  """Pairwise win rates of the methods on one metric (`stats.win_rate_matrix`).

  The samples are pivoted to `[images, methods]` on the key (model, index), so
  with several models every (model, image) pair is one "image". Images lacking
  a value for some method (missing row or NaN) are left out.

  Args:
    samples: the samples table (`model, method, index` and `metric`).
    metric: the metric column.
    higher_is_better: the metric's direction; None: the registry's
      (`registry.direction`), which a column outside the registry must give.
    model: only this model's rows; None: every model.

  Returns:
    `DataFrame[methods, methods]` of win rates in [0, 1]: the fraction of images
    on which the row method beats the column method, ties counting one half
    (diagonal 0.5). `attrs["images"]` holds the number of images used.

  Raises:
    ValueError: an empty table, missing columns, an unknown model, duplicate
      (model, index, method) rows, fewer than 2 methods, no complete image, or
      no direction (a column that the registry does not know or that is not a
      score, with `higher_is_better=None`).
  """
  frame = _check_frame(samples, "samples", ["model", "method", "index", metric])
  higher_is_better = _direction(metric, higher_is_better)
  frame = _select_model(frame, model, "samples")
  if frame.duplicated(["model", "index", "method"]).any():
    raise ValueError("samples table has duplicate (model, index, method) rows")
  methods = _unique(frame["method"])
  if len(methods) < 2:
    raise ValueError(f"win rates need at least 2 methods; got {methods}")
  table = _complete_scores(frame, metric, methods)
  if table.empty:
    raise ValueError(f"no image has a {metric!r} value for every method {methods}")
  wins = stats.win_rate_matrix(table.to_numpy(), higher_is_better=higher_is_better)
  result = pd.DataFrame(wins, index=pd.Index(methods, name="method"),
                        columns=pd.Index(methods, name="versus"))
  result.attrs["images"] = len(table)
  return result


def pairwise_win_rates(samples: pd.DataFrame, *, metrics: Sequence[str]) -> pd.DataFrame:
  """Win rates of every ordered pair of methods, per model and metric, as one long table.

  For each model (in order of appearance) with at least 2 methods and each metric of
  `metrics` that the table has: `win_rate_table` of that model (images lacking a value for
  some method are left out; a metric without any complete image, e.g. one not computed for
  this model, is skipped), in the registry's direction.

  Args:
    samples: the samples table (`model, method, index` and the metric columns).
    metrics: registered score columns (`registry.scores()`), in the order of the rows.

  Returns:
    Columns `model, metric, method, opponent, win_rate, images`: `win_rate` is the fraction
    of the `images` images on which `method` beats `opponent`, ties counting one half, in
    [0, 1]; `win_rate[a, b] + win_rate[b, a] == 1`. One row per ordered pair of different
    methods.

  Raises:
    ValueError: an empty table, missing key columns, duplicate (model, index, method) rows,
      or a metric that is unknown or not a score.
  """
  frame = _check_frame(samples, "samples", ["model", "method", "index"])
  if frame.duplicated(["model", "index", "method"]).any():
    raise ValueError("samples table has duplicate (model, index, method) rows")
  directions = {metric: registry.score_direction(metric) for metric in metrics}
  rows = []
  for model_name, group in frame.groupby("model", sort=False):
    methods = _unique(group["method"])
    if len(methods) < 2:
      continue
    for metric, higher in directions.items():
      if metric not in group.columns:
        continue
      table = _complete_scores(group, metric, methods)
      if table.empty:
        continue
      wins = stats.win_rate_matrix(table.to_numpy(), higher_is_better=higher)
      for i, method in enumerate(methods):
        for j, opponent in enumerate(methods):
          if i != j:
            rows.append({"model": model_name, "metric": metric, "method": method,
                         "opponent": opponent, "win_rate": float(wins[i, j]),
                         "images": len(table)})
  return pd.DataFrame(rows, columns=["model", "metric", "method", "opponent", "win_rate",
                                     "images"])


def _win_rate_plot(table: pd.DataFrame, *, title: str) -> Figure:
  """The annotated heatmap of a `win_rate_table` (row method beats column method), centred
  on 0.5 (an even match)."""
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

  An annotated heatmap of `win_rate_table`: the win rate in [0, 1], ties
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
    ValueError: as `win_rate_table`.
  """
  table = win_rate_table(samples, metric=metric, higher_is_better=higher_is_better,
                         model=model)
  where = f"model {model}, " if model is not None else ""
  direction = "higher" if _direction(metric, higher_is_better) else "lower"
  title = f"Win rates on {metric} ({direction} is better; {where}{table.attrs['images']} images)"
  return _save(_win_rate_plot(table, title=title), path)


# ----------------------------------------------------------------------------
# Tables and the report.


def summary_table(samples: pd.DataFrame, *, metrics: Sequence[str] | None = None,
                  accuracy: pd.DataFrame | None = None, split: str = "test") -> pd.DataFrame:
  """Mean of every metric per (model, method), with the model's accuracy.

  Args:
    samples: the samples table (`model`, `method` and metric columns).
    metrics: the metric columns to average, in this order; default: the
      registry's scores (`registry.scores()`, no argmax indices) present in the
      table, in registry order.
    accuracy: the experiment's accuracy table (`model, split, accuracy, ...`);
      if given, its `split` row of each model becomes the column "accuracy"
      (NaN for a model it lacks).
    split: which split's accuracy to show.

  Returns:
    DataFrame with columns `model, method, n` (rows averaged), `accuracy` (if
    `accuracy` is given) and one column per metric: the mean over the samples,
    NaN values skipped. Rows are in order of first appearance.

  Raises:
    ValueError: an empty table, missing columns, no metric column, or an
      accuracy table without the split or with several rows for a model.
  """
  frame = _check_frame(samples, "samples", ["model", "method"])
  if metrics is None:
    metrics = [m for m in registry.scores() if m in frame.columns]
    if not metrics:
      raise ValueError(f"samples table has no metric column; expected some of "
                       f"{list(registry.scores())}, it has {list(frame.columns)}")
  else:
    metrics = list(metrics)
    if not metrics:
      raise ValueError("metrics is empty")
    _check_frame(frame, "samples", metrics)
  text = [m for m in metrics if not pd.api.types.is_numeric_dtype(frame[m])]
  if text:
    raise ValueError(f"metric columns {text} are not numeric")
  grouped = frame.groupby(["model", "method"], sort=False)
  summary = grouped[metrics].mean()
  summary.insert(0, "n", grouped.size())
  summary = summary.reset_index()
  if accuracy is not None:
    scores = _check_frame(accuracy, "accuracy", ["model", "accuracy"])
    if "split" in scores.columns:
      splits = _unique(scores["split"])
      if split not in splits:
        raise ValueError(f"accuracy table has no split {split!r}; it has {splits}")
      scores = scores[scores["split"] == split]
    if scores["model"].duplicated().any():
      raise ValueError(f"accuracy table has several {split!r} rows for model(s) "
                       f"{_unique(scores.loc[scores['model'].duplicated(), 'model'])}")
    mapping = dict(zip(scores["model"], scores["accuracy"].astype(np.float64)))
    summary.insert(3, "accuracy", summary["model"].map(mapping).astype(np.float64))
  return summary


def _format_cell(value: Any, floatfmt: str) -> str:
  if isinstance(value, (bool, np.bool_)):
    return str(int(value))
  if isinstance(value, (int, np.integer)):
    return str(int(value))
  if isinstance(value, (float, np.floating)):
    return "nan" if np.isnan(value) else format(float(value), floatfmt)
  if value is None or value is pd.NA or value is pd.NaT:
    return ""
  return str(value).replace("|", "\\|").replace("\n", " ")


def to_markdown(frame: pd.DataFrame, *, floatfmt: str = ".3f") -> str:
  """A GitHub markdown table of a DataFrame (pandas' own needs `tabulate`).

  A named or non-default index is written as leading columns. Floats use
  `floatfmt` ("nan" for NaN), integers are written whole, text has `|`
  escaped; numeric columns are right-aligned.

  Args:
    frame: the table.
    floatfmt: format spec of float cells, e.g. ".3f" or ".4g".

  Returns:
    The table, one line per row plus the header and alignment lines, ending in a newline.

  Raises:
    ValueError: not a DataFrame, no columns, or a bad `floatfmt`.
  """
  if not isinstance(frame, pd.DataFrame):
    raise ValueError(f"to_markdown needs a DataFrame; got {type(frame).__name__}")
  try:
    format(1.0, floatfmt)
  except (ValueError, TypeError) as error:
    raise ValueError(f"bad floatfmt {floatfmt!r}: {error}") from None
  plain = isinstance(frame.index, pd.RangeIndex) and frame.index.name is None and (
      frame.index.start == 0 and frame.index.step == 1)
  table = frame if plain else frame.reset_index()
  if len(table.columns) == 0:
    raise ValueError("to_markdown got a table without columns")
  names = [_format_cell(str(c), floatfmt) for c in table.columns]
  numeric = [pd.api.types.is_numeric_dtype(table[c]) and not pd.api.types.is_bool_dtype(table[c])
             for c in table.columns]
  lines = ["| " + " | ".join(names) + " |",
           "|" + "|".join("---:" if n else ":---" for n in numeric) + "|"]
  for row in table.itertuples(index=False, name=None):
    lines.append("| " + " | ".join(_format_cell(v, floatfmt) for v in row) + " |")
  return "\n".join(lines) + "\n"


def _figure_link(workdir: pathlib.Path, figure: PathLike) -> str:
  candidate = pathlib.Path(figure)
  if not candidate.is_absolute() and not candidate.exists() and (workdir / candidate).exists():
    candidate = workdir / candidate
  if not candidate.is_file():
    raise ValueError(f"figure {os.fspath(figure)!r} does not exist")
  relative = pathlib.Path(os.path.relpath(candidate.resolve(), workdir.resolve())).as_posix()
  return f"<{relative}>" if any(ch in relative for ch in " ()") else relative


def write_report(workdir: PathLike, *, title: str, summary: pd.DataFrame,
                 accuracy: pd.DataFrame | None, figures: Mapping[str, PathLike],
                 config: Mapping[str, Any] | None = None, notes: str = "",
                 floatfmt: str = ".3f") -> pathlib.Path:
  """Writes `workdir/report.md`: accuracy, the summary table, how to read it, the figures.

  The file is written to a temporary file and renamed, so a reader never sees
  a partial report. Figures are linked by paths relative to `workdir`.

  Args:
    workdir: the experiment folder (created if missing).
    title: the report's title.
    summary: `summary_table` output (or any table; its metric columns get a
      "how to read" line from the registry: description and direction).
    accuracy: the accuracy table (`model, split, accuracy, num_examples`), or
      None to leave the section out.
    figures: caption -> PNG path (absolute, relative to the current folder, or
      relative to `workdir`), in the order to show.
    config: the experiment's configuration (a mapping, or an object with
      `to_dict()` such as a `ConfigDict`), written as JSON; None: left out.
    notes: free text put under the title.
    floatfmt: format of the table floats.

  Returns:
    The path of `report.md`.

  Raises:
    ValueError: an empty summary or accuracy table, or a figure file that does not exist.
  """
  workdir = pathlib.Path(workdir)
  if not isinstance(summary, pd.DataFrame) or summary.empty:
    raise ValueError("write_report needs a non-empty summary DataFrame")
  if accuracy is not None and (not isinstance(accuracy, pd.DataFrame) or accuracy.empty):
    raise ValueError("accuracy must be a non-empty DataFrame or None")
  workdir.mkdir(parents=True, exist_ok=True)
  links = [(caption, _figure_link(workdir, figure)) for caption, figure in figures.items()]
  parts = [f"# {title}\n"]
  if notes:
    parts.append(notes.strip() + "\n")
  if accuracy is not None:
    parts.append("## Accuracy of the models\n")
    parts.append(to_markdown(accuracy, floatfmt=floatfmt))
  parts.append("## Summary: mean over the evaluated samples per model and method\n")
  parts.append(to_markdown(summary, floatfmt=floatfmt))
  parts.append("### How to read the columns\n")
  reading = []
  if "n" in summary.columns:
    reading.append("- `n`: number of samples averaged.")
  if "accuracy" in summary.columns:
    reading.append("- `accuracy`: the model's classification accuracy (higher is better).")
  for column in summary.columns:
    if column in registry.METRICS:
      metric = registry.METRICS[column]
      how = {True: "higher is better", False: "lower is better",
             None: "not a score"}[metric.higher_is_better]
      reading.append(f"- `{column}`: {metric.description}; **{how}**.")
  parts.append("\n".join(reading) + "\n")
  if links:
    parts.append("## Figures\n")
    for caption, link in links:
      parts.append(f"### {caption}\n\n![{caption}]({link})\n")
  if config is not None:
    data = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    parts.append("## Configuration\n")
    parts.append("```json\n" + json.dumps(data, indent=2, sort_keys=True, default=str) + "\n```\n")
  path = workdir / "report.md"
  files.write_text(path, "\n".join(parts))
  return path
