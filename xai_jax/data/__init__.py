"""xai_jax.data: datasets with ground truth, generated or read.

`cells`: the pure-JAX synthetic cells of Tjoa & Guan with ground-truth heatmaps.
"""

from xai_jax.data import cells

__all__ = ["cells"]
