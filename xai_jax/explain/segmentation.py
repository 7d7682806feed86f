"""Superpixel segmentation on the host (scikit-image): feature masks for perturbation explainers.

`segment(x)` returns one `int32[H, W]` label map per image with labels `0 .. n_i - 1`
(consecutive, as the `lime` package assumes), to pass as `feature_mask` to `lime`,
`kernel_shap`, `shapley_sampling` and `feature_ablation`.

The default is the `lime` package's image segmentation (`LimeImageExplainer`): quickshift
with `kernel_size=4, max_dist=200, ratio=0.2`. lime also passes `random_seed`, which its
wrapper drops because scikit-image's quickshift (>= 0.19) names that argument `rng`, so
quickshift runs with scikit-image's default `rng=42`; so does `segment`.

Segmentation runs in NumPy on concrete arrays, never under `jax.jit`. Quickshift converts RGB
to Lab, for which scikit-image expects floats in [0, 1]: segment the displayable image, not
a mean/std-normalised model input, when the two differ.
"""

from __future__ import annotations

import inspect
from typing import Callable

import numpy as np
import skimage.segmentation

# Each method's defaults; keys a caller passes override them.
DEFAULTS: dict[str, dict] = {
    "quickshift": {"kernel_size": 4, "max_dist": 200, "ratio": 0.2},  # LimeImageExplainer's
    "slic": {},
    "felzenszwalb": {},
}
METHODS = tuple(DEFAULTS)


def _function(method: str) -> Callable:
  return getattr(skimage.segmentation, method)


def _relabel(labels: np.ndarray) -> np.ndarray:
  """Labels mapped to 0 .. n-1 in increasing order of the original labels."""
  _, dense = np.unique(labels, return_inverse=True)
  return dense.reshape(labels.shape).astype(np.int32)


def segment(x, method: str = "quickshift", **params) -> np.ndarray:
  """Superpixels of each image, on the host with scikit-image.

  Args:
    x: `float[N, H, W, C]` images (array-like, concrete), or one `[H, W, C]` image.
    method: "quickshift" (the `lime` package's default), "slic" or "felzenszwalb".
    **params: keyword arguments of the scikit-image function, overriding `DEFAULTS`.
      Quickshift on one channel replicates it to RGB (as lime's `gray2rgb`) unless
      `convert2lab=False` is given; other channel counts need `convert2lab=False`.

  Returns:
    `int32[N, H, W]` (or `[H, W]` for one image): labels `0 .. n_i - 1` per image, in the
    order of scikit-image's labels.

  Raises:
    ValueError: for an unknown method or parameter, a traced `x`, a wrong rank or a
      channel count the method cannot segment.
  """
  if method not in DEFAULTS:
    raise ValueError(f"unknown segmentation method {method!r}; valid: {', '.join(METHODS)}")
  function = _function(method)
  valid = [name for name in inspect.signature(function).parameters if name != "image"]
  unknown = sorted(set(params) - set(valid))
  if unknown:
    raise ValueError(f"unknown {method} parameters {unknown}; valid: {valid}")
  try:
    images = np.asarray(x)
  except Exception as error:  # a jax tracer refuses conversion with a framework error
    raise ValueError("segment runs on the host and needs a concrete x (not traced under "
                     "jax.jit); compute the masks outside and pass them as feature_mask") from error
  single = images.ndim == 3
  if single:
    images = images[None]
  if images.ndim != 4 or 0 in images.shape:
    raise ValueError(f"x must be float[N, H, W, C] or [H, W, C]; got shape {images.shape}")
  if not np.all(np.isfinite(images)):
    raise ValueError("x contains NaN or infinite values")
  options = {**DEFAULTS[method], **params}
  channels = images.shape[-1]
  if method == "quickshift" and options.get("convert2lab", True):
    if channels == 1:
      images = np.repeat(images, 3, axis=-1)
    elif channels != 3:
      raise ValueError(f"quickshift converts RGB to Lab and needs 3 channels (or 1); got "
                       f"{channels}: pass convert2lab=False")
  labels = np.stack([_relabel(function(image, **options)) for image in images])
  return labels[0] if single else labels
