"""Gallery of the synthetic cells and their ground truth (Tjoa & Guan, Fig. 2), end to end.

`run(workdir, size=..., seed=...)` generates one sample per (class, background) with
`xai_jax.data.cells.make_batch`, draws them with `xai_jax.reports.gallery.gallery_figure`
(with the cells' class and background names) and writes `cells_gallery.png` and
`cells_gallery.npz`.

Reference:
  E. Tjoa and C. Guan, "Quantifying explainability of saliency methods in deep neural
    networks with a synthetic dataset", IEEE TAI 2022, Fig. 2.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from xai_jax.data import cells
from xai_jax.reports import gallery


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


def gallery_figure(samples: dict[str, np.ndarray], path: str | os.PathLike | None = None):
  """`gallery.gallery_figure` of `gallery_samples`' output, with the cells' names.

  Returns:
    The matplotlib figure (closed if it was written to `path`).
  """
  return gallery.gallery_figure(samples["images"], samples["heatmaps"], samples["labels"],
                                samples["backgrounds"], path, class_names=cells.CLASS_NAMES,
                                background_names=cells.BACKGROUND_NAMES)


def run(workdir: str | os.PathLike, *, size: int = 224, seed: int = 0) -> tuple[str, str]:
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
  gallery_figure(samples, png_path)
  np.savez_compressed(npz_path, **samples)
  return png_path, npz_path
