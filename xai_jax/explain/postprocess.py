"""Turning attributions into maps: channel reduction (resizing kernels live here too)."""

import jax
import jax.numpy as jnp
import numpy as np

REDUCTIONS = ("sum", "abs_sum", "max_abs")


def to_map(attributions: jax.Array, reduce: str = "sum") -> jax.Array:
  """Reduces attributions over the channel axis to one saliency value per pixel.

  Args:
    attributions: `float[..., H, W, C]` (channels last), e.g. `[N, H, W, C]`.
    reduce: "sum" (signed channel sum, the default of Tjoa & Guan and of
      DeepMaps), "abs_sum" (sum of absolute values, as in Adebayo et al.'s
      grayscale visualisation) or "max_abs" (largest absolute value, as in
      Simonyan et al. 2014).

  Returns:
    `float[..., H, W]`.

  Raises:
    ValueError: for an unknown `reduce` or an input with fewer than 3 axes.
  """
  if attributions.ndim < 3:
    raise ValueError(
        f"attributions must be [..., H, W, C] with a channel axis; got shape {attributions.shape}")
  if reduce == "sum":
    return jnp.sum(attributions, axis=-1)
  if reduce == "abs_sum":
    return jnp.sum(jnp.abs(attributions), axis=-1)
  if reduce == "max_abs":
    return jnp.max(jnp.abs(attributions), axis=-1)
  raise ValueError(f"unknown reduce {reduce!r}; valid: {', '.join(REDUCTIONS)}")


# ---------------------------------------------------------------------------
# Resizing kernels.
#
# Index arrays and interpolation weights are computed once per (in, out) size in
# numpy, mirroring torch's CPU kernels (`UpSample.h`: `nearest_idx` in float32,
# `area_pixel_compute_source_index` in the maps' precision), so results match
# `F.interpolate` exactly for nearest and to rounding for bilinear. Sizes are static, so the
# kernels are gathers / small matmuls that jit and vmap cleanly.
# ---------------------------------------------------------------------------


def _as_size(size) -> tuple[int, int]:
  if isinstance(size, int):
    return (size, size)
  size = tuple(int(s) for s in size)
  if len(size) != 2 or min(size) < 1:
    raise ValueError(f"size must be an int or (height, width) of positive ints; got {size}")
  return size


def _check_maps(maps: jax.Array, name: str) -> None:
  if maps.ndim not in (3, 4):
    raise ValueError(f"{name}: maps must be [N, h, w] or [N, h, w, C]; got shape {maps.shape}")


def nearest_indices(in_size: int, out_size: int) -> np.ndarray:
  """Source indices of torch's `F.interpolate(mode="nearest")` along one axis.

  torch computes `min(floor(dst * (in / out)), in - 1)` with a float32 scale
  (identity when the sizes agree). This differs from `jax.image.resize`'s
  "nearest", which is torch's "nearest-exact" (half-pixel centres), unless the
  scale factor is an integer.

  Args:
    in_size: input length.
    out_size: output length.

  Returns:
    `int32[out_size]` source indices.
  """
  if in_size == out_size:
    return np.arange(out_size, dtype=np.int32)
  scale = np.float32(in_size) / np.float32(out_size)
  dst = np.arange(out_size, dtype=np.float32)
  idx = np.floor(dst * scale).astype(np.int64)
  return np.minimum(idx, in_size - 1).astype(np.int32)


def bilinear_matrix(in_size: int, out_size: int, *, align_corners: bool = False,
                    dtype=np.float32) -> np.ndarray:
  """Interpolation matrix `dtype[out_size, in_size]` of torch's 1-D linear kernel.

  With `align_corners=False` (torch's default, identical to cv2 INTER_LINEAR and
  `jax.image.resize("bilinear")` when upsampling) the source coordinate is
  `(dst + 0.5) * in / out - 0.5`, clamped at 0; with `align_corners=True` (used
  by the FullGrad reference) it is `dst * (in - 1) / (out - 1)`. No antialiasing
  when downsampling (torch's default `antialias=False`).

  Args:
    in_size: input length.
    out_size: output length.
    align_corners: torch's `align_corners` flag.
    dtype: float32 or float64; torch computes the source coordinates and weights in the
      tensor's own precision (`opmath_t`), float32 for float32 maps, float64 for float64.

  Returns:
    `dtype[out_size, in_size]`, each row holding the two interpolation weights.
  """
  f = np.dtype(dtype).type
  dst = np.arange(out_size, dtype=f)
  if align_corners:
    scale = f(in_size - 1) / f(out_size - 1) if out_size > 1 else f(0)
    src = scale * dst
  else:
    scale = f(in_size) / f(out_size)
    src = scale * (dst + f(0.5)) - f(0.5)
    src = np.maximum(src, f(0))
  lo = src.astype(np.int64)  # src >= 0, so truncation is floor, as in torch
  lo = np.minimum(lo, in_size - 1)
  hi = np.where(lo < in_size - 1, lo + 1, lo)
  w_hi = (src - lo.astype(f)).astype(f)
  w_lo = (f(1) - w_hi).astype(f)
  matrix = np.zeros((out_size, in_size), f)
  rows = np.arange(out_size)
  np.add.at(matrix, (rows, lo), w_lo)
  np.add.at(matrix, (rows, hi), w_hi)
  return matrix


def resize_nearest(maps: jax.Array, size) -> jax.Array:
  """Nearest-neighbour resize with torch `F.interpolate(mode="nearest")` semantics.

  Captum's `LayerAttribution.interpolate` (default mode) and `GuidedGradCam` use
  this kernel.

  Args:
    maps: `float[N, h, w]` or `float[N, h, w, C]`.
    size: output `(H, W)` or an int for a square output.

  Returns:
    `float[N, H, W]` or `float[N, H, W, C]`, same dtype as `maps`.

  Raises:
    ValueError: for maps that are not 3-D or 4-D, or a bad size.
  """
  _check_maps(maps, "resize_nearest")
  out_h, out_w = _as_size(size)
  rows = nearest_indices(maps.shape[1], out_h)
  cols = nearest_indices(maps.shape[2], out_w)
  return jnp.take(jnp.take(maps, rows, axis=1), cols, axis=2)


def resize_bilinear(maps: jax.Array, size, *, align_corners: bool = False) -> jax.Array:
  """Bilinear resize with torch `F.interpolate(mode="bilinear")` semantics.

  `align_corners=False` (default) is the half-pixel kernel of torch, cv2
  `INTER_LINEAR` (pytorch-grad-cam) and Captum's bilinear interpolate;
  `align_corners=True` is what idiap/fullgrad-saliency uses.

  Args:
    maps: `float[N, h, w]` or `float[N, h, w, C]`.
    size: output `(H, W)` or an int for a square output.
    align_corners: torch's `align_corners` flag.

  Returns:
    `float[N, H, W]` or `float[N, H, W, C]`, same dtype as `maps`.

  Raises:
    ValueError: for maps that are not 3-D or 4-D, or a bad size.
  """
  _check_maps(maps, "resize_bilinear")
  out_h, out_w = _as_size(size)
  weights = np.float64 if maps.dtype == jnp.float64 else np.float32
  rows = jnp.asarray(bilinear_matrix(maps.shape[1], out_h, align_corners=align_corners,
                                     dtype=weights), maps.dtype)
  cols = jnp.asarray(bilinear_matrix(maps.shape[2], out_w, align_corners=align_corners,
                                     dtype=weights), maps.dtype)
  hp = jax.lax.Precision.HIGHEST
  out = jnp.einsum("Hh,nhw...->nHw...", rows, maps, precision=hp)
  return jnp.einsum("Ww,nHw...->nHW...", cols, out, precision=hp)


def resize(maps: jax.Array, size, *, mode: str = "bilinear",
           align_corners: bool = False) -> jax.Array:
  """Dispatches to `resize_nearest` (mode "nearest") or `resize_bilinear` ("bilinear").

  Raises:
    ValueError: for an unknown mode (or a bad map / size, see the kernels).
  """
  if mode == "nearest":
    return resize_nearest(maps, size)
  if mode == "bilinear":
    return resize_bilinear(maps, size, align_corners=align_corners)
  raise ValueError(f"unknown resize mode {mode!r}; valid: nearest, bilinear")


def normalize_min_max(maps: jax.Array, *, eps: float = 1e-7) -> jax.Array:
  """Per-sample min-max normalisation over all non-batch axes.

  Computes `(m - min(m)) / (max(m - min(m)) + eps)` per sample, the form of
  pytorch-grad-cam's `scale_cam_image` (eps 1e-7) and of FullGrad's
  `_postProcess` after its abs (eps 1e-6).

  Args:
    maps: `float[N, ...]`.
    eps: added to the denominator; keeps constant maps finite (they map to 0).

  Returns:
    `float[N, ...]` in [0, 1).
  """
  if maps.ndim < 2:
    raise ValueError(f"maps must have a batch axis and at least one more; got shape {maps.shape}")
  axes = tuple(range(1, maps.ndim))
  shifted = maps - jnp.min(maps, axis=axes, keepdims=True)
  return shifted / (jnp.max(shifted, axis=axes, keepdims=True) + eps)
