"""Tables of an evaluation: means per (model, method), win rates, markdown.

Everything here consumes the tables of `xai_jax.runner.evaluate` (see
`runner.EvaluationTables`): the per-sample `samples` table and the experiment's
`accuracy` table. Metric names and directions come from `xai_jax.metrics.registry`.
The functions are pure: they read DataFrames and return a DataFrame or a string.

* `summary_table`: the mean of every metric per (model, method), with the model's accuracy.
* `win_rate_table`: pairwise win rates of the methods on one metric (DeepMaps, Fig. 7);
  `pairwise_win_rates`: the same for several metrics and models as one long table.
* `to_markdown`: a GitHub markdown table without `tabulate`.
* `check_frame`, `select_model`, `unique_in_order`, `metric_direction`, `complete_scores`:
  the checks and selections `xai_jax.reports.plots` and `xai_jax.reports.statistics` share.

Win rates follow one convention everywhere (`stats.win_rate_matrix`): the column
`win_rate` is the fraction of images on which the method beats the opponent, ties
counting one half, in [0, 1] (0.5: even). DeepMaps plots that fraction minus 50%.

References:
  A. Grabska-Barwinska et al., "Measuring and improving the quality of visual
    explanations" (DeepMaps), 2021, Fig. 7.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from xai_jax.metrics import registry
from xai_jax.metrics import stats


# ----------------------------------------------------------------------------
# Input checks, shared with the figures.


def check_frame(frame: Any, name: str, columns: Sequence[str]) -> pd.DataFrame:
  """`frame`, checked to be a non-empty DataFrame with `columns`.

  Raises:
    ValueError: naming the table (`name`): not a DataFrame, empty, or missing columns.
  """
  if not isinstance(frame, pd.DataFrame):
    raise ValueError(f"{name} must be a pandas DataFrame; got {type(frame).__name__}")
  if frame.empty:
    raise ValueError(f"{name} table is empty")
  missing = [c for c in columns if c not in frame.columns]
  if missing:
    raise ValueError(f"{name} table is missing columns {missing}; it has {list(frame.columns)}")
  return frame


def select_model(frame: pd.DataFrame, model: str | None, name: str) -> pd.DataFrame:
  """The rows of `model` (every row for None).

  Raises:
    ValueError: a model the table (`name`) lacks; the message lists its models.
  """
  if model is None:
    return frame
  models = list(dict.fromkeys(frame["model"].tolist()))
  if model not in models:
    raise ValueError(f"unknown model {model!r} in the {name} table; valid: {models}")
  return frame[frame["model"] == model]


def unique_in_order(values: Any) -> list[Any]:
  """Distinct values in order of first appearance."""
  return list(dict.fromkeys(list(values)))


# ----------------------------------------------------------------------------
# Win rates (DeepMaps, Fig. 7).


def metric_direction(metric: str, higher_is_better: bool | None) -> bool:
  """The given direction, or the registry's (`registry.score_direction`)."""
  if higher_is_better is None:
    return registry.score_direction(metric)
  if not isinstance(higher_is_better, (bool, np.bool_)):
    raise ValueError(f"higher_is_better must be True, False or None (the registry's "
                     f"direction); got {higher_is_better!r}")
  return bool(higher_is_better)


def complete_scores(frame: pd.DataFrame, metric: str, methods: Sequence[str]) -> pd.DataFrame:
  """`[(model, index), methods]` values of `metric`, images lacking a method's value dropped
  (the images every statistic across methods compares: win rates, Wilcoxon, alpha)."""
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
  frame = check_frame(samples, "samples", ["model", "method", "index", metric])
  higher_is_better = metric_direction(metric, higher_is_better)
  frame = select_model(frame, model, "samples")
  if frame.duplicated(["model", "index", "method"]).any():
    raise ValueError("samples table has duplicate (model, index, method) rows")
  methods = unique_in_order(frame["method"])
  if len(methods) < 2:
    raise ValueError(f"win rates need at least 2 methods; got {methods}")
  table = complete_scores(frame, metric, methods)
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
  frame = check_frame(samples, "samples", ["model", "method", "index"])
  if frame.duplicated(["model", "index", "method"]).any():
    raise ValueError("samples table has duplicate (model, index, method) rows")
  directions = {metric: registry.score_direction(metric) for metric in metrics}
  rows = []
  for model_name, group in frame.groupby("model", sort=False):
    methods = unique_in_order(group["method"])
    if len(methods) < 2:
      continue
    for metric, higher in directions.items():
      if metric not in group.columns:
        continue
      table = complete_scores(group, metric, methods)
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


# ----------------------------------------------------------------------------
# Summary and markdown.


# Tjoa & Guan Fig. 3's panels: (label, recall column, precision column).
RECALL_PRECISION_PANELS = (
    ("A: average over the thresholds", "Rmu", "Pmu"),
    ("B: best threshold", "Ru", "Pu"),
    ("C: best threshold, clamped", "Ru_clamp", "Pu_clamp"),
)


def recall_precision_points(samples: pd.DataFrame) -> pd.DataFrame:
  """Tjoa & Guan Fig. 3's points: per (panel, model, method), recall and precision averaged
  over the samples, with their population standard deviations (ddof 0, as their analysis).

  Panel A uses the mean over the soft thresholds (`Rmu`, `Pmu`), B the best threshold (`Ru`,
  `Pu`), C the best threshold of the clamped setting (`Ru_clamp`, `Pu_clamp`); a panel whose
  columns the table lacks is left out, and samples with NaN scores are dropped per panel.

  Returns:
    `panel, model, method, recall, precision, recall_std, precision_std, samples`, models and
    methods in order of first appearance.

  Raises:
    ValueError: not a samples table with `model`, `method`, `Rmu` and `Pmu`.
  """
  frame = check_frame(samples, "samples", ["model", "method", "Rmu", "Pmu"])
  rows = []
  for panel, recall, precision in RECALL_PRECISION_PANELS:
    if recall not in frame.columns or precision not in frame.columns:
      continue
    for model in unique_in_order(frame["model"]):
      for method in unique_in_order(frame["method"]):
        scores = frame.loc[(frame["model"] == model) & (frame["method"] == method),
                           [recall, precision]].dropna().to_numpy(np.float64)
        if len(scores):
          rows.append({"panel": panel, "model": model, "method": method,
                       "recall": scores[:, 0].mean(), "precision": scores[:, 1].mean(),
                       "recall_std": scores[:, 0].std(), "precision_std": scores[:, 1].std(),
                       "samples": len(scores)})
  return pd.DataFrame(rows, columns=["panel", "model", "method", "recall", "precision",
                                     "recall_std", "precision_std", "samples"])


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
  frame = check_frame(samples, "samples", ["model", "method"])
  if metrics is None:
    metrics = [m for m in registry.scores() if m in frame.columns]
    if not metrics:
      raise ValueError(f"samples table has no metric column; expected some of "
                       f"{list(registry.scores())}, it has {list(frame.columns)}")
  else:
    metrics = list(metrics)
    if not metrics:
      raise ValueError("metrics is empty")
    check_frame(frame, "samples", metrics)
  text = [m for m in metrics if not pd.api.types.is_numeric_dtype(frame[m])]
  if text:
    raise ValueError(f"metric columns {text} are not numeric")
  grouped = frame.groupby(["model", "method"], sort=False)
  summary = grouped[metrics].mean()
  summary.insert(0, "n", grouped.size())
  summary = summary.reset_index()
  if accuracy is not None:
    scores = check_frame(accuracy, "accuracy", ["model", "accuracy"])
    if "split" in scores.columns:
      splits = unique_in_order(scores["split"])
      if split not in splits:
        raise ValueError(f"accuracy table has no split {split!r}; it has {splits}")
      scores = scores[scores["split"] == split]
    if scores["model"].duplicated().any():
      raise ValueError(f"accuracy table has several {split!r} rows for model(s) "
                       f"{unique_in_order(scores.loc[scores['model'].duplicated(), 'model'])}")
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

