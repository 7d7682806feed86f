"""Figures of the sanity checks (Adebayo et al. 2018, Fig. 2 and Fig. 3)."""

from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np
import pandas as pd

from xai_jax.metrics import similarity


def randomization_grid(explanations: Mapping[str, np.ndarray], stages: Sequence[str], path,
                       *, image: int = 0, percentile: float = 99.0,
                       title: str = "Cascading randomisation"):
  """Rows = methods, columns = randomisation stages, diverging colour map (their Fig. 2).

  Args:
    explanations: method name -> `float[S, N, H, W(, C)]` explanations at each stage
      (`RandomizationResult.explanations`).
    stages: the `S` stage names (`RandomizationResult.stages`).
    path: where to write the PNG.
    image: which image of the batch to show.
    percentile: the diverging visualisation's clipping percentile.
    title: the figure title ("(diverging visualisation)" is appended), e.g.
      "Independent randomisation".

  Returns:
    The matplotlib figure (closed after saving).
  """
  methods = list(explanations)
  fig, axes = plt.subplots(len(methods), len(stages),
                           figsize=(1.3 * len(stages), 1.4 * len(methods) + 0.6),
                           squeeze=False)
  for row, method in enumerate(methods):
    maps = similarity.diverging(np.asarray(explanations[method])[:, image],
                                percentile=percentile)
    for column, stage in enumerate(stages):
      axis = axes[row, column]
      # The reference visualisation maps [-span, span] to [0, 1]; centre the colours on 0.5.
      axis.imshow(maps[column], cmap="RdBu_r", vmin=0.0, vmax=1.0)
      axis.set_xticks([])
      axis.set_yticks([])
      if row == 0:
        axis.set_title(stage, fontsize=7, rotation=45, ha="left")
      if column == 0:
        axis.set_ylabel(method, fontsize=8)
  fig.suptitle(f"{title} (diverging visualisation)", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return fig


def similarity_curves(tables: Mapping[str, pd.DataFrame], path,
                      *, measures: Sequence[str] = ("spearman_abs", "spearman_signed",
                                                    "ssim", "hog")):
  """Similarity against randomisation stage, one line per method (their Fig. 3 and 4).

  Args:
    tables: method name -> `xai_jax.metrics.sanity.similarity_table` output.
    path: where to write the PNG.
    measures: one panel per measure (measures missing from the tables are skipped).

  Returns:
    The matplotlib figure (closed after saving).
  """
  present = [m for m in measures if any(m in set(t.measure) for t in tables.values())]
  fig, axes = plt.subplots(1, len(present), figsize=(4 * len(present), 3.4), squeeze=False)
  for axis, measure in zip(axes[0], present):
    for method, table in tables.items():
      rows = table[table.measure == measure]
      grouped = rows.groupby("stage_index").value
      mean, sem = grouped.mean(), grouped.sem().fillna(0.0)
      stages = rows.drop_duplicates("stage_index").set_index("stage_index").stage
      axis.errorbar(mean.index, mean.values, yerr=sem.values, marker="o", markersize=3,
                    capsize=2, label=method)
      axis.set_xticks(list(stages.index))
      axis.set_xticklabels(list(stages.values), rotation=60, ha="right", fontsize=7)
    axis.axvline(0.5, color="black", linestyle="--", linewidth=0.8)
    axis.axhline(0.0, color="grey", linewidth=0.5)
    axis.set_ylim(-1.05, 1.05)
    axis.set_title(measure.replace("_", " "))
    axis.set_ylabel("similarity to the original explanation")
  axes[0, -1].legend(fontsize=7, loc="lower left")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return fig
