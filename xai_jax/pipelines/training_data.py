"""Training shards from any random-access source, as `xai_jax.train` reads them.

Every pipeline trains on, and measures accuracy over, consecutive slices of a source: the
synthetic cells (`xai_jax.data.cell_source.source`), the TFDS cells (`tfds_cells.load`) or an image
dataset (`xai_jax.data.images`). `TrainingShards` is that view, with the two variations the
pipelines need: a preprocessing of the images (the sanity checks' ImageNet normalisation) and
replacement labels (the permuted labels of Adebayo et al.'s data randomisation test).

`channel_mean` is the per-channel mean over such shards, and `resolve_dataset_mean` puts the
training split's mean into the pixel-removal options in place of the fill "dataset_mean": the
papers' removal fill ("the mean RGB values over the training set", DeepMaps App. B), computed
once, so that no image's scores depend on the shard it is evaluated in. `unset_zero_grid` and
`describe_fill` are the other two pixel-removal conventions every pipeline shares: a grid
`step` / `step_fraction` of 0 in a config means unset, and the fill is reported by name and
value.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np

from xai_jax.metrics import pixel_removal


class TrainingShards:
  """Consecutive slices of `shard_size` examples of a source as `{"image", "label"}` shards.

  Shard `i` holds examples `i * shard_size` up to `(i + 1) * shard_size` (the last shard the
  remainder), read with one `source.get_batch` call: pass `shards.get` to
  `train.train_continuous(..., num_shards=shards.num_shards)`, or the object itself (an
  iterable of the shards) to `train.evaluate`.

  Args:
    source: anything with `len()` and `get_batch(int64[n]) -> {"image": float32[n, H, W, C],
      "label": int32[n], ...}` (other entries are dropped).
    shard_size: examples per shard, >= 1.
    preprocess: applied to each shard's images (`float32[n, H, W, C]` -> same shape), e.g.
      a normalisation; None keeps them as read.
    labels: `int[len(source)]` replacing the source's labels (e.g. permuted labels); None
      keeps the source's. Labels are returned as int32 either way.
    keep: keep each shard once read (for small sets read several times, such as training
      and then measuring accuracy on the same shards); False reads a shard on every access.

  Raises:
    ValueError: `shard_size` below 1, or `labels` not one per example.
  """

  def __init__(self, source: Any, shard_size: int, *,
               preprocess: Callable[[np.ndarray], np.ndarray] | None = None,
               labels: np.ndarray | None = None, keep: bool = False):
    if not isinstance(shard_size, int) or shard_size < 1:
      raise ValueError(f"shard_size must be a positive int; got {shard_size!r}")
    if labels is not None and len(labels) != len(source):
      raise ValueError(f"labels must give one label per example: {len(labels)} labels for "
                       f"{len(source)} examples")
    self.source, self.shard_size = source, shard_size
    self.preprocess, self.labels = preprocess, labels
    self.num_shards = -(-len(source) // shard_size)
    # `get(i)`: shard i as `{"image": float32[n, H, W, C], "label": int32[n]}`.
    self.get = functools.cache(self._read) if keep else self._read

  def sizes(self) -> list[int]:
    """The number of examples of every shard, counted without reading any."""
    total = len(self.source)
    return [min(self.shard_size, total - i * self.shard_size) for i in range(self.num_shards)]

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    """Every shard in order, each read when it is reached."""
    return (self.get(i) for i in range(self.num_shards))

  def _read(self, index: int) -> dict[str, np.ndarray]:
    if not 0 <= index < self.num_shards:
      raise IndexError(f"shard {index} out of range [0, {self.num_shards})")
    indices = np.arange(index * self.shard_size,
                        min(len(self.source), (index + 1) * self.shard_size))
    batch = self.source.get_batch(indices)
    images = batch["image"] if self.preprocess is None else self.preprocess(batch["image"])
    labels = batch["label"] if self.labels is None else self.labels[indices]
    return {"image": images, "label": np.asarray(labels, np.int32)}


def channel_mean(shards: Iterable[Mapping[str, Any]]) -> tuple[float, ...]:
  """The per-channel mean of every image of `shards`, accumulated in float64.

  Args:
    shards: an iterable of `{"image": float[n, H, W, C], ...}` (e.g. a `TrainingShards`).

  Returns:
    `C` Python floats: the mean over all images and pixels of each channel.

  Raises:
    ValueError: no image at all, or images that are not `[n, H, W, C]`.
  """
  total, count = None, 0
  for shard in shards:
    images = np.asarray(shard["image"], np.float64)
    if images.ndim != 4:
      raise ValueError(f"images must be [n, H, W, C]; got shape {images.shape}")
    sums = images.sum(axis=(0, 1, 2))
    total = sums if total is None else total + sums
    count += images.shape[0] * images.shape[1] * images.shape[2]
  if not count:
    raise ValueError("channel_mean needs at least one image")
  return tuple(float(v) for v in total / count)


def resolve_dataset_mean(metric_options: Mapping[str, Mapping[str, Any]],
                         shards: Callable[[], Iterable[Mapping[str, Any]]]
                         ) -> dict[str, dict[str, Any]]:
  """`metric_options` with the pixel-removal fill "dataset_mean" replaced by numbers.

  Args:
    metric_options: `{family: {option: value}}` as the runner takes them.
    shards: returns the training split's shards (`TrainingShards`); called, and the split
      read, only when the fill is "dataset_mean".

  Returns:
    A copy in which `pixel_removal.fill == "dataset_mean"` is the tuple `channel_mean` of
    the shards (per-channel numbers, which `runner.evaluate` passes as the fill of every
    shard); other options are unchanged.
  """
  resolved = {family: dict(options) for family, options in metric_options.items()}
  removal = resolved.get("pixel_removal")
  if removal is not None and removal.get("fill") == pixel_removal.DATASET_MEAN:
    removal["fill"] = channel_mean(shards())
  return resolved


def unset_zero_grid(removal: Mapping[str, Any]) -> dict[str, Any]:
  """A copy of pixel-removal options whose `step` / `step_fraction` of 0 is None (unset).

  A ConfigDict field cannot be overridden from the command line once it holds None, so the
  configs write 0 for "unset". Anything else, a bool included, is left for the metric
  registry to check (it refuses bools with a message naming the field).
  """
  resolved = dict(removal)
  for grid in ("step", "step_fraction"):
    value = resolved.get(grid)
    if value is not None and not isinstance(value, (bool, np.bool_)) and value == 0:
      resolved[grid] = None
  return resolved


def describe_fill(name: str, fill: Any) -> str:
  """The removal fill for reports: its config name, then its numbers when it resolved to any.

  Example: `describe_fill("dataset_mean", (0.5, 0.25, 0.125))` is
  `"dataset_mean = 0.5000, 0.2500, 0.1250"`; `describe_fill("batch_mean", "batch_mean")` is
  `"batch_mean"`.
  """
  if isinstance(fill, (tuple, list)):
    return f"{name} = {', '.join(f'{float(v):.4f}' for v in fill)}"
  if isinstance(fill, (int, float, np.number)) and not isinstance(fill, bool):
    return f"{name} = {float(fill):.4f}"
  return str(name)
