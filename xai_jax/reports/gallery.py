"""Gallery of the synthetic cells and their ground truth (Tjoa & Guan, Fig. 2).

`gallery_figure` draws images and their ground-truth heatmaps in a grid of
classes x backgrounds; `heatmap_to_rgb` colours a heatmap. Both take the arrays
(and the class and background names) as arguments: the samples come from
`xai_jax.pipelines.cells_gallery`, which generates one per (class, background).

Reference:
  E. Tjoa and C. Guan, "Quantifying explainability of saliency methods in deep
    neural networks with a synthetic dataset", IEEE TAI 2022, Fig. 2.
"""

from __future__ import annotations

import os
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.colors as mcolors  # pylint: disable=g-import-not-at-top
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

# The colour of each ground-truth heatmap value (the cells' `HEATMAP_VALUES`): 0 -> white,
# 0.4 -> light red, 0.9 -> dark red (the paper's heatmap colours).
HEATMAP_COLORS = {0.0: "#ffffff", 0.4: "#f4a09a", 0.9: "#a50f15"}


def heatmap_to_rgb(heatmap: np.ndarray) -> np.ndarray:
  """Colours a ground-truth heatmap: 0 white, 0.4 light red, 0.9 dark red.

  Args:
    heatmap: `float[..., H, W]` with values in {0, 0.4, 0.9} (`HEATMAP_COLORS`).

  Returns:
    `float32[..., H, W, 3]` in [0, 1].

  Raises:
    ValueError: if the heatmap holds another value.
  """
  heatmap = np.asarray(heatmap)
  codes = np.full(heatmap.shape, -1, np.int64)
  values = tuple(HEATMAP_COLORS)
  for code, value in enumerate(values):
    codes[np.isclose(heatmap, value, atol=1e-6)] = code
  if np.any(codes < 0):
    raise ValueError(f"heatmap values must be in {values}; got "
                     f"{np.unique(heatmap[codes < 0])[:5]}")
  palette = np.array([mcolors.to_rgb(c) for c in HEATMAP_COLORS.values()], np.float32)
  return palette[codes]


def gallery_figure(images: np.ndarray, heatmaps: np.ndarray, labels: Sequence[int],
                   backgrounds: Sequence[int], path: str | os.PathLike | None = None, *,
                   class_names: Sequence[str] | None = None,
                   background_names: Sequence[str] | None = None):
  """Draws a Fig. 2-like grid: the images, then the same grid of ground truths.

  Rows are backgrounds (in the order they first appear), columns classes; the
  image block comes first, the heatmap block below it. Columns are titled
  "<label> <class name>", rows "bg <background> <background name>" (the numbers
  alone without names).

  Args:
    images: `float[N, H, W, 3]` in [0, 1].
    heatmaps: `float[N, H, W]` in {0, 0.4, 0.9}.
    labels: `int[N]` class indices.
    backgrounds: `int[N]` background indices.
    path: where to write the figure (PNG); not written if None.
    class_names: names indexed by label (the cells' `CLASS_NAMES`); None: numbers only.
    background_names: names indexed by background (the cells' `BACKGROUND_NAMES`);
      None: numbers only.

  Returns:
    The matplotlib figure (closed if it was written to `path`).

  Raises:
    ValueError: if the array lengths disagree, or a name is missing for a label or
      background.
  """
  images, heatmaps = np.asarray(images), np.asarray(heatmaps)
  labels, backgrounds = np.asarray(labels), np.asarray(backgrounds)
  if not len(images) == len(heatmaps) == len(labels) == len(backgrounds):
    raise ValueError("images, heatmaps, labels and backgrounds must have the same length; got "
                     f"{len(images)}, {len(heatmaps)}, {len(labels)}, {len(backgrounds)}")
  for names, values, what in ((class_names, labels, "class_names"),
                              (background_names, backgrounds, "background_names")):
    if names is not None and len(values) and not 0 <= values.min() <= values.max() < len(names):
      raise ValueError(f"{what} has {len(names)} names; the values run from {values.min()} "
                       f"to {values.max()}")
  class_title = lambda label: (f"{label} {class_names[label]}" if class_names is not None
                               else f"{label}")
  background_title = lambda b: (f"bg {b} {background_names[b]}" if background_names is not None
                                else f"bg {b}")
  columns = list(dict.fromkeys(labels.tolist()))
  rows = list(dict.fromkeys(backgrounds.tolist()))
  fig, axes = plt.subplots(2 * len(rows), len(columns), squeeze=False,
                           figsize=(1.25 * len(columns), 1.3 * 2 * len(rows) + 0.5))
  coloured = heatmap_to_rgb(heatmaps)
  for axis in axes.ravel():
    axis.set_xticks([])
    axis.set_yticks([])
    axis.axis("off")
  for i, (label, background) in enumerate(zip(labels.tolist(), backgrounds.tolist())):
    column = columns.index(label)
    row = rows.index(background)
    for block, picture in ((0, images[i]), (1, coloured[i])):
      axis = axes[block * len(rows) + row, column]
      axis.imshow(np.clip(picture, 0.0, 1.0), interpolation="nearest")
      axis.axis("on")
      axis.set_xticks([])
      axis.set_yticks([])
      if block == 1:
        for spine in axis.spines.values():
          spine.set_edgecolor("#bbbbbb")
      if block * len(rows) + row == 0 or (block == 1 and row == 0):
        axis.set_title(class_title(label), fontsize=7)
      if column == 0:
        kind = "image" if block == 0 else "truth"
        axis.set_ylabel(f"{kind}\n{background_title(background)}", fontsize=6)
  fig.suptitle("Synthetic cells (top) and ground truth: light red 0.4, dark red 0.9 (bottom)",
               fontsize=8)
  fig.tight_layout()
  if path is not None:
    fig.savefig(path, dpi=120)
    plt.close(fig)
  return fig
