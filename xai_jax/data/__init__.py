"""xai_jax.data: datasets with ground truth, generated or read.

`cells`: the pure-JAX synthetic cells of Tjoa & Guan with ground-truth heatmaps.
`cell_source`: the cell dataset as a function of (key, split, index), and `cell_source.source`,
  its disk-free random-access source.
`sources`: `RandomAccessSource`, the protocol every source here follows (`len`, `source[i]`,
  `get_batch`, grain's `__getitems__`).
`mnist`: MNIST and Fashion-MNIST read from prepared TFDS array_record files.
"""

from xai_jax.data import cell_source
from xai_jax.data import cells
from xai_jax.data import mnist
from xai_jax.data import sources

__all__ = ["cell_source", "cells", "mnist", "sources"]
