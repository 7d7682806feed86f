"""The synthetic-cell dataset as a deterministic function of (key, split, index).

This module defines *which* sample sits at position `index` of a split of the
synthetic-cell dataset of Tjoa & Guan, "Quantifying Explainability of Saliency
Methods in Deep Neural Networks" (2020, arXiv:2009.02899), and regenerates it on
demand with the pure-JAX generator `xai_jax.data.cells.make_cell`. It is shared by

* `source(split, ...)`, a random-access data source that needs no disk at all, and
* the TFDS builder `xai_jax.data.tfds_cells.XaiCells` (dataset `xai_cells`),
  which writes the same samples to `array_record` files.

Sample definition:

    split_key = fold_in(dataset_key, SPLIT_IDS[split])
    sample_key = fold_in(split_key, index)
    label_key, background_key, cell_key = split(sample_key, 3)
    label = randint(label_key, 0, 10)          # uniform, not class-balanced
    background = randint(background_key, 0, 3)
    image, heatmap = make_cell(cell_key, label, background, size=size)

so sample `index` never depends on the batch it is generated in, labels and
backgrounds do not depend on the image size, and any prefix of a split is the
same at every dataset length. The paper's splits are 32 / 8 / 8 shards of 200
samples (train 6400, validation 1600, test 1600); shard `k` of a split holds the
indices `[200 k, 200 (k + 1))`.

Example:

    from xai_jax.data import cell_source
    train = cell_source.source("train", size=64)    # 6400 samples, no disk
    example = train[0]                              # dict of numpy arrays
    batch = train.get_batch(range(0, 128))          # one jitted vmapped call
"""

from __future__ import annotations

import functools
import operator
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from xai_jax import xla
from xai_jax.data import cells
from xai_jax.data import sources

# The paper's split layout (`L/pipeline/data/prepare_10classes_data.py`):
# number of shards per split, each of `SHARD_SIZE` samples.
SPLITS: Mapping[str, int] = {"train": 32, "validation": 8, "test": 8}
SHARD_SIZE = 200
# Fixed integers folded into the dataset key; never reorder (it would change data).
SPLIT_IDS: Mapping[str, int] = {"train": 0, "validation": 1, "test": 2}
NUM_LABELS = 10
NUM_BACKGROUNDS = 3
# The seed of the default dataset key (`jax.random.key(DEFAULT_SEED)`).
DEFAULT_SEED = 0
# Ground-truth heatmap values (localisation 0.4, feature 0.9) and their uint8
# band codes 0/1/2 as stored on disk.
HEATMAP_VALUES = np.array([0.0, 0.4, 0.9], np.float32)
# Samples per generator call: 8 up to 512x512 (on a 2-core CPU larger chunks
# were no faster per sample), fewer above to bound memory.
_CHUNK_PIXELS = 8 * 512 * 512
_MAX_CHUNK = 8


def default_key() -> jax.Array:
  """Returns the default dataset key, `jax.random.key(DEFAULT_SEED)`."""
  return jax.random.key(DEFAULT_SEED)


def _as_key(key: Any) -> jax.Array:
  """Accepts a typed key, a raw uint32[2] key, an int seed or None."""
  if key is None:
    return default_key()
  if isinstance(key, (int, np.integer)):
    return jax.random.key(int(key))
  key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    if key.shape != ():
      raise ValueError(f"key must be a single PRNG key, got shape {key.shape}.")
    return key
  if key.shape != (2,) or key.dtype != jnp.uint32:
    raise ValueError(
        "key must be a jax.random.key, a raw uint32[2] PRNGKey or an int seed;"
        f" got dtype {key.dtype} and shape {key.shape}.")
  return jax.random.wrap_key_data(key)


def _check_split(split: str) -> str:
  if split not in SPLIT_IDS:
    raise ValueError(
        f"Unknown split {split!r}; valid splits are {sorted(SPLIT_IDS)}.")
  return split


def split_key(key: Any, split: str) -> jax.Array:
  """Folds a split name into a dataset key.

  Args:
    key: the dataset key: a `jax.random.key`, a raw uint32[2] `PRNGKey`, an int
      seed, or None for `default_key()`.
    split: one of "train", "validation", "test".

  Returns:
    A typed PRNG key (scalar) from which every sample of the split derives.

  Raises:
    ValueError: unknown split or malformed key.
  """
  return jax.random.fold_in(_as_key(key), SPLIT_IDS[_check_split(split)])


def _sample_keys(the_split_key: jax.Array, index: jax.Array):
  sample_key = jax.random.fold_in(the_split_key, index)
  return jax.random.split(sample_key, 3)


def _labels_of(the_split_key: jax.Array, index: jax.Array):
  label_key, background_key, _ = _sample_keys(the_split_key, index)
  label = jax.random.randint(label_key, (), 0, NUM_LABELS, dtype=jnp.int32)
  background = jax.random.randint(
      background_key, (), 0, NUM_BACKGROUNDS, dtype=jnp.int32)
  return label, background


@xla.jit
def _labels_batch(the_split_key, indices):
  return jax.vmap(_labels_of, in_axes=(None, 0))(the_split_key, indices)


def sample_labels(the_split_key: jax.Array, indices: Any) -> tuple[np.ndarray, np.ndarray]:
  """Draws the labels and backgrounds of samples without generating images.

  Args:
    the_split_key: a key from `split_key`.
    indices: int or int[N], sample indices (>= 0).

  Returns:
    `(label, background)`: int32[N] each (N = 1 for a scalar index), label
    uniform in 0..9 and background uniform in 0..2, drawn independently as in
    the original's `uniform_random_draw` (spec section 1.1).

  Raises:
    IndexError: a negative index.
  """
  indices = sources.check_indices(indices)
  # Pad to a power of two (at least 1024) so that few shapes are compiled.
  padded = np.zeros(max(1024, 1 << max(0, len(indices) - 1).bit_length()), np.int64)
  padded[:len(indices)] = indices
  label, background = _labels_batch(the_split_key, jnp.asarray(padded, jnp.uint32))
  return np.asarray(label)[:len(indices)], np.asarray(background)[:len(indices)]


@functools.partial(xla.jit, static_argnames=("size",))
def _generate_batch(the_split_key, indices, *, size):
  def one(index):
    label_key, background_key, cell_key = _sample_keys(the_split_key, index)
    label = jax.random.randint(label_key, (), 0, NUM_LABELS, dtype=jnp.int32)
    background = jax.random.randint(
        background_key, (), 0, NUM_BACKGROUNDS, dtype=jnp.int32)
    image, heatmap = cells.make_cell(cell_key, label, background, size=size)
    return dict(image=image, heatmap=heatmap, label=label, background=background)

  return jax.vmap(one)(indices)


def default_chunk_size(size: int) -> int:
  """Samples per generator call at `size`: 8 up to 512x512, 2 at 1024x1024."""
  return int(max(1, min(_MAX_CHUNK, _CHUNK_PIXELS // (size * size))))


def _check_size(size: Any) -> int:
  if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
    raise ValueError(f"size must be an int in 32..1024, got {size!r}.")
  if not 32 <= size <= 1024:
    raise ValueError(f"size must be in 32..1024, got {size}.")
  return int(size)


def _check_chunk_size(chunk_size: Any, size: int) -> int:
  if chunk_size is None:
    return default_chunk_size(size)
  if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) \
      or chunk_size < 1:
    raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}.")
  return int(chunk_size)


def generate(the_split_key: jax.Array, indices: Any, *, size: int = 224,
             chunk_size: int | None = None) -> dict[str, np.ndarray]:
  """Generates the samples at `indices` of a split.

  The indices are cut into chunks of exactly `chunk_size` (the last one padded)
  and each chunk is one call of a single jitted `vmap(make_cell)`. Sample `i`
  depends only on `(the_split_key, i)`, and because every call has the same
  shape it is bitwise identical wherever it sits in whichever request. (XLA
  may round differently for another batch shape, ~1e-6, and a heatmap pixel
  within that of the 0.05 threshold could flip; so the chunk size is fixed.)

  Args:
    the_split_key: a key from `split_key`.
    indices: int[N] sample indices (>= 0), any order, repeats allowed.
    size: image height and width in pixels (32..1024).
    chunk_size: samples per generator call (default `default_chunk_size(size)`,
      the value the TFDS build uses; another value compiles another shape).

  Returns:
    dict of numpy arrays: `image` float32[N, size, size, 3] in [0, 1],
    `heatmap` float32[N, size, size] in {0, 0.4, 0.9}, `label` int32[N],
    `background` int32[N], `index` int64[N].

  Raises:
    IndexError: a negative index.
    ValueError: bad size or chunk_size.
  """
  size = _check_size(size)
  chunk_size = _check_chunk_size(chunk_size, size)
  indices = sources.check_indices(indices)
  parts = []
  for start in range(0, len(indices), chunk_size):
    chunk = indices[start:start + chunk_size]
    padded = np.full(chunk_size, chunk[-1], np.int64)
    padded[:len(chunk)] = chunk
    out = _generate_batch(the_split_key, jnp.asarray(padded, jnp.uint32), size=size)
    parts.append({k: np.asarray(v)[:len(chunk)] for k, v in out.items()})
  if not parts:
    return dict(
        image=np.zeros((0, size, size, 3), np.float32),
        heatmap=np.zeros((0, size, size), np.float32),
        label=np.zeros((0,), np.int32), background=np.zeros((0,), np.int32),
        index=np.zeros((0,), np.int64))
  batch = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
  batch["index"] = indices
  return batch


def heatmap_to_codes(heatmap: np.ndarray) -> np.ndarray:
  """Maps a ground-truth heatmap {0, 0.4, 0.9} to uint8 band codes {0, 1, 2}.

  Raises:
    ValueError: a value outside {0, 0.4, 0.9} (float32).
  """
  heatmap = np.asarray(heatmap, np.float32)
  codes = (heatmap > 0.2).astype(np.uint8) + (heatmap > 0.65).astype(np.uint8)
  if not np.array_equal(HEATMAP_VALUES[codes], heatmap):
    bad = np.setdiff1d(np.unique(heatmap), HEATMAP_VALUES)
    raise ValueError(f"heatmap has values outside {{0, 0.4, 0.9}}: {bad[:5]}.")
  return codes


def codes_to_heatmap(codes: np.ndarray) -> np.ndarray:
  """Maps uint8 band codes {0, 1, 2} back to float32 {0, 0.4, 0.9}."""
  return HEATMAP_VALUES[np.asarray(codes)]


def image_to_uint8(image: np.ndarray) -> np.ndarray:
  """float32 image in [0, 1] -> uint8, rounding to nearest (error <= 0.5/255)."""
  return np.round(np.clip(np.asarray(image, np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


class CellSource(sources.RandomAccessSource):
  """Random-access synthetic cells regenerated from a key: no disk needed.

  Build it with `source(split, ...)`.
  `source[i]` gives a dict of numpy arrays:

    image: float32[size, size, 3] in [0, 1]
    heatmap: float32[size, size] with values in {0, 0.4, 0.9}
    label: int32 scalar in 0..9 (`cells.CLASS_NAMES` order)
    background: int32 scalar in 0..2 (none, blotches, rings)
    index: int64 scalar, the position in the split

  The generator runs on chunks of `chunk_size` samples. `source[i]` generates
  the aligned chunk holding `i` and keeps it, so a sequential loop costs one
  generation per sample while a random single read costs a chunk; read many
  samples at once with `get_batch` (or `source[a:b]`, or grain's
  `__getitems__`).
  """

  def __init__(self, split: str, *, size: int = 224, key: Any = None,
               num_examples: int | None = None, chunk_size: int | None = None):
    self.split = _check_split(split)
    self.size = _check_size(size)
    self.key = split_key(key, split)
    if num_examples is None:
      num_examples = SPLITS[split] * SHARD_SIZE
    num_examples = operator.index(num_examples)
    if not 0 <= num_examples <= 2**31:
      raise ValueError(f"num_examples must be in 0..2**31, got {num_examples}.")
    self.num_examples = num_examples
    self.chunk_size = _check_chunk_size(chunk_size, self.size)
    self._cached_chunk: tuple[int, dict[str, np.ndarray]] | None = None

  def __len__(self) -> int:
    return self.num_examples

  def __repr__(self) -> str:
    return (f"CellSource(split={self.split!r}, size={self.size},"
            f" num_examples={self.num_examples})")

  def _get_batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    return generate(self.key, indices, size=self.size, chunk_size=self.chunk_size)

  def __getitem__(self, index):
    if isinstance(index, (slice, np.ndarray, list, tuple, range)):
      return super().__getitem__(index)
    index = self._check_index(index)
    chunk, offset = divmod(index, self.chunk_size)
    cached = self._cached_chunk  # One read: safe if threads share the source.
    if cached is None or cached[0] != chunk:
      start = chunk * self.chunk_size
      indices = np.arange(start, min(start + self.chunk_size, len(self)))
      cached = (chunk, self._get_batch(indices))
      self._cached_chunk = cached
    return {k: v[offset].copy() for k, v in cached[1].items()}

  def labels(self, indices: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Labels and backgrounds of `indices` (default all) without generating images.

    Returns:
      `(label int32[N], background int32[N])`.
    """
    if indices is None:
      indices = np.arange(len(self))
    indices = sources.check_indices(indices, num_examples=len(self))
    return sample_labels(self.key, indices)


def source(split: str, *, size: int = 224, key: Any = None,
           num_examples: int | None = None,
           chunk_size: int | None = None) -> CellSource:
  """A random-access source of synthetic cells, regenerated from a key (no disk).

  Sample `i` is regenerated from `fold_in(split_key(key, split), i)` (see the
  module docstring) in fixed-size chunks, so it is bitwise identical whether
  fetched alone or in a batch,
  any `num_examples` needs no disk, and with the default key the samples equal
  those of the TFDS dataset `xai_cells` up to its uint8 rounding of images.
  Usable by grain (`__len__`, `__getitem__`, `__getitems__`) or a plain loop.

  Args:
    split: "train", "validation" or "test".
    size: image height and width in pixels (32..1024).
    key: the dataset key (a `jax.random.key`, a raw `PRNGKey` or an int seed);
      None gives `default_key()`, the key of the TFDS build.
    num_examples: length of the source; default the paper's split size
      (`SPLITS[split] * SHARD_SIZE`: 6400, 1600, 1600).
    chunk_size: samples per generator call (default `default_chunk_size(size)`,
      as the TFDS build; another value compiles another shape and may change
      the last float bits).

  Returns:
    A `CellSource`.

  Raises:
    ValueError: unknown split (the message lists the valid ones), bad size,
      key or num_examples.
  """
  return CellSource(split, size=size, key=key, num_examples=num_examples,
                    chunk_size=chunk_size)


def num_examples_of(split: str) -> int:
  """The paper's number of samples of a split (6400, 1600 or 1600)."""
  return SPLITS[_check_split(split)] * SHARD_SIZE


__all__ = [
    "SPLITS", "SHARD_SIZE", "SPLIT_IDS", "HEATMAP_VALUES", "default_key",
    "split_key", "sample_labels", "generate", "source", "CellSource",
    "heatmap_to_codes", "codes_to_heatmap",
    "image_to_uint8", "default_chunk_size", "num_examples_of",
]
