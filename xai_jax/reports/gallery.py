"""Galleries: grids of images, their ground truth and their saliency maps.

* `gallery_figure`: the synthetic cells and their ground-truth heatmaps in a grid of
  classes x backgrounds (Tjoa & Guan, Fig. 2); `heatmap_to_rgb` colours a heatmap. Both
  take the arrays (and the class and background names) as arguments: the samples come from
  `xai_jax.pipelines.cells_gallery`, which generates one per (class, background).
* `method_class_gallery`: one sample per class, the image, its ground truth and one column
  per method (Tjoa & Guan, Fig. 5 and 6); `method_gallery`: one method over all gallery
  samples. Both read the gallery dict of `xai_jax.runner.evaluate`
  (`runner.EvaluationTables.gallery`), write one PNG (`plots.save_figure`) and return its
  path.

Reference:
  E. Tjoa and C. Guan, "Quantifying explainability of saliency methods in deep
    neural networks with a synthetic dataset", IEEE TAI 2022, Fig. 2, 5 and 6.
"""

from __future__ import annotations

import math
import os
import pathlib
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.colors as mcolors  # pylint: disable=g-import-not-at-top
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
# The saliency-map galleries draw on a bare Figure (no pyplot): no global figure state.
from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from xai_jax.reports import plots  # pylint: disable=g-import-not-at-top

PathLike = str | os.PathLike

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


# ----------------------------------------------------------------------------
# Saliency maps per class and per method (Tjoa & Guan, Fig. 5 and 6).


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
  return plots.save_figure(fig, path)


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
  return plots.save_figure(fig, path)
