"""The markdown report of an evaluation: `write_report` writes `workdir/report.md`.

The report holds the accuracy table, the summary table (`tables.summary_table`) with a
"how to read" line per metric column from `xai_jax.metrics.registry` (description and
direction), the figures (`xai_jax.reports.plots`, `xai_jax.reports.gallery`) linked by
relative paths, and the configuration as JSON. Tables are rendered by `tables.to_markdown`.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Mapping

import pandas as pd

from xai_jax import files
from xai_jax.metrics import registry
from xai_jax.reports import tables

PathLike = str | os.PathLike


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
    summary: `tables.summary_table` output (or any table; its metric columns get a
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
    parts.append(tables.to_markdown(accuracy, floatfmt=floatfmt))
  parts.append("## Summary: mean over the evaluated samples per model and method\n")
  parts.append(tables.to_markdown(summary, floatfmt=floatfmt))
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
