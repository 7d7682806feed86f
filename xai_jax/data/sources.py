"""The random-access protocol shared by every data source of `xai_jax.data`.

A source is a sequence of samples, each a dict of numpy arrays, read one at a time
(`source[i]`), by slice or index array (`source[a:b]`, `source[np.array([...])]`), or as one
stacked batch (`get_batch(indices)`, the fast path). It also speaks grain's batched-read
protocol (`__len__`, `__getitem__`, `__getitems__`), so a grain `DataLoader` or a plain loop
can read it. Subclasses: `cell_source.CellSource` (synthetic cells regenerated from a key),
`tfds_cells.TfdsCellSource`, `images.ImageFolderSource`, `images.TfdsImageSource` and
`mnist.MnistSource`.
"""

from __future__ import annotations

import operator
from typing import Any, Iterable, Sequence

import numpy as np


def check_indices(indices: Any, *, num_examples: int | None = None) -> np.ndarray:
  """Returns sample indices as a 1-D int64 numpy array, checking their range.

  Args:
    indices: an int or a 1-D sequence / array of ints.
    num_examples: the exclusive upper bound of a valid index; None allows up to 2**31.

  Returns:
    int64[N] (N = 1 for a scalar index).

  Raises:
    ValueError: indices that are not 1-D.
    TypeError: indices that are not integers.
    IndexError: an index out of range (negative indices are not wrapped).
  """
  array = np.asarray(indices)
  if array.ndim == 0:
    array = array[None]
  if array.ndim != 1:
    raise ValueError(f"indices must be 1-D, got shape {array.shape}.")
  if array.size and not np.issubdtype(array.dtype, np.integer):
    raise TypeError(f"indices must be integers, got dtype {array.dtype}.")
  array = array.astype(np.int64)
  if array.size:
    upper = num_examples if num_examples is not None else 2**31
    bad = (array < 0) | (array >= upper)
    if bad.any():
      raise IndexError(
          f"index {int(array[bad][0])} out of range [0, {upper}).")
  return array


class RandomAccessSource:
  """Base of random-access sources: indexing, batches and the grain protocol.

  Subclasses implement `__len__` and `_get_batch(indices int64[N])` returning a
  dict of stacked numpy arrays.
  """

  def __len__(self) -> int:
    raise NotImplementedError

  def _get_batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    raise NotImplementedError

  def _check_index(self, index: Any) -> int:
    try:
      index = operator.index(index)
    except TypeError:
      raise TypeError(
          f"index must be an int, a slice or a 1-D int array, got {type(index)}."
      ) from None
    if not 0 <= index < len(self):
      raise IndexError(f"index {index} out of range [0, {len(self)}).")
    return index

  def get_batch(self, indices: Iterable[int] | np.ndarray) -> dict[str, np.ndarray]:
    """Returns the samples at `indices` stacked: the fast batched path.

    Args:
      indices: 1-D ints in [0, len(self)).

    Returns:
      dict of numpy arrays with a leading axis of len(indices).

    Raises:
      IndexError: an index out of range (negative indices are not wrapped).
    """
    if not isinstance(indices, (np.ndarray, Sequence)):
      indices = list(indices)
    return self._get_batch(check_indices(indices, num_examples=len(self)))

  def __getitem__(self, index):
    """`source[i]` -> one sample; `source[a:b]` or `source[int array]` -> a batch.

    Raises:
      IndexError: index out of range (negative indices are not wrapped).
    """
    if isinstance(index, slice):
      return self.get_batch(np.arange(len(self))[index])
    if isinstance(index, (np.ndarray, list, tuple, range)):
      return self.get_batch(index)
    index = self._check_index(index)
    batch = self._get_batch(np.array([index], np.int64))
    return {k: v[0] for k, v in batch.items()}

  def __getitems__(self, indices: Sequence[int]) -> list[dict[str, np.ndarray]]:
    """Grain's batched-read protocol: a list of single samples."""
    batch = self.get_batch(indices)
    return [{k: v[i] for k, v in batch.items()} for i in range(len(indices))]

  def __iter__(self):
    for index in range(len(self)):
      yield self[index]


__all__ = ["RandomAccessSource", "check_indices"]
