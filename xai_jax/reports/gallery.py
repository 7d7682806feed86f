"""Gallery of the synthetic cells and their ground truth (Tjoa & Guan, Fig. 2).

`cells_gallery(workdir, size=..., seed=...)` generates one sample per (class,
background) with `xai_jax.data.cells.make_cell`, draws them with
`gallery_figure` and writes `cells_gallery.png` and `cells_gallery.npz`.
"""

from __future__ import annotations

import os
from typing import Sequence

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.colors as mcolors  # pylint: disable=g-import-not-at-top
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from xai_jax.data import cells

# 0 -> white, 0.4 -> light red, 0.9 -> dark red (the paper's heatmap colours).
HEATMAP_COLORS = ("#ffffff", "#f4a09a", "#a50f15")


def heatmap_to_rgb(heatmap: np.ndarray) -> np.ndarray:
  """Colours a ground-truth heatmap: 0 white, 0.4 light red, 0.9 dark red.

  Args:
    heatmap: `float[..., H, W]` with values in {0, 0.4, 0.9}.

  Returns:
    `float32[..., H, W, 3]` in [0, 1].

  Raises:
    ValueError: if the heatmap holds another value.
  """
  heatmap = np.asarray(heatmap)
  codes = np.full(heatmap.shape, -1, np.int64)
  for code, value in enumerate(cells.HEATMAP_VALUES):
    codes[np.isclose(heatmap, value, atol=1e-6)] = code
  if np.any(codes < 0):
    raise ValueError(f"heatmap values must be in {cells.HEATMAP_VALUES}; got "
                     f"{np.unique(heatmap[codes < 0])[:5]}")
  palette = np.array([mcolors.to_rgb(c) for c in HEATMAP_COLORS], np.float32)
  return palette[codes]


def gallery_figure(images: np.ndarray, heatmaps: np.ndarray, labels: Sequence[int],
                   backgrounds: Sequence[int], path: str | os.PathLike | None = None):
  """Draws a Fig. 2-like grid: the images, then the same grid of ground truths.

  Rows are backgrounds (in the order they first appear), columns classes; the
  image block comes first, the heatmap block below it.

  Args:
    images: `float[N, H, W, 3]` in [0, 1].
    heatmaps: `float[N, H, W]` in {0, 0.4, 0.9}.
    labels: `int[N]` class indices (`cells.CLASS_NAMES`).
    backgrounds: `int[N]` background indices (`cells.BACKGROUND_NAMES`).
    path: where to write the figure (PNG); not written if None.

  Returns:
    The matplotlib figure (closed if it was written to `path`).

  Raises:
    ValueError: if the array lengths disagree.
  """
  images, heatmaps = np.asarray(images), np.asarray(heatmaps)
  labels, backgrounds = np.asarray(labels), np.asarray(backgrounds)
  if not len(images) == len(heatmaps) == len(labels) == len(backgrounds):
    raise ValueError("images, heatmaps, labels and backgrounds must have the same length; got "
                     f"{len(images)}, {len(heatmaps)}, {len(labels)}, {len(backgrounds)}")
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
        axis.set_title(f"{label} {cells.CLASS_NAMES[label]}", fontsize=7)
      if column == 0:
        kind = "image" if block == 0 else "truth"
        axis.set_ylabel(f"{kind}\nbg {background} {cells.BACKGROUND_NAMES[background]}",
                        fontsize=6)
  fig.suptitle("Synthetic cells (top) and ground truth: light red 0.4, dark red 0.9 (bottom)",
               fontsize=8)
  fig.tight_layout()
  if path is not None:
    fig.savefig(path, dpi=120)
    plt.close(fig)
  return fig


def gallery_samples(key: jax.Array, *, size: int = 224) -> dict[str, np.ndarray]:
  """One sample per (class, background), 30 in all, from `cells.make_batch`.

  Sample `i` has label `i % 10` and background `i // 10`; it equals
  `cells.make_cell(jax.random.split(k_cells, 30)[i], i % 10, i // 10, size=size)`
  with `k_cells = jax.random.split(key, 3)[2]` (see `cells.make_batch`).

  Args:
    key: a JAX PRNG key.
    size: image side length (32..1024).

  Returns:
    dict of numpy arrays: `images` float32[30, size, size, 3], `heatmaps`
    float32[30, size, size], `labels` int32[30], `backgrounds` int32[30].
  """
  count = cells.NUM_CLASSES * cells.NUM_BACKGROUNDS
  labels = np.arange(count, dtype=np.int32) % cells.NUM_CLASSES
  backgrounds = np.arange(count, dtype=np.int32) // cells.NUM_CLASSES
  batch = cells.make_batch(key, count, size=size, labels=labels, backgrounds=backgrounds)
  return dict(images=np.asarray(batch["image"]), heatmaps=np.asarray(batch["heatmap"]),
              labels=np.asarray(batch["label"]), backgrounds=np.asarray(batch["background"]))


def cells_gallery(workdir: str | os.PathLike, *, size: int = 224,
                  seed: int = 0) -> tuple[str, str]:
  """Writes `cells_gallery.png` (the Fig. 2-like grid) and `cells_gallery.npz`.

  The npz (`np.savez_compressed`) holds `images`, `heatmaps`, `labels`,
  `backgrounds` as returned by `gallery_samples(jax.random.key(seed), size=size)`.

  Args:
    workdir: output folder (created if missing).
    size: image side length (32..1024).
    seed: seed of the PRNG key.

  Returns:
    `(png_path, npz_path)`.
  """
  os.makedirs(workdir, exist_ok=True)
  samples = gallery_samples(jax.random.key(seed), size=size)
  png_path = os.path.join(os.fspath(workdir), "cells_gallery.png")
  npz_path = os.path.join(os.fspath(workdir), "cells_gallery.npz")
  gallery_figure(samples["images"], samples["heatmaps"], samples["labels"],
                 samples["backgrounds"], png_path)
  np.savez_compressed(npz_path, **samples)
  return png_path, npz_path
