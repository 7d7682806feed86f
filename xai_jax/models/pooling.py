"""Max-pooling with torch's semantics and a gradient built from dense ops.

torch's `nn.MaxPool2d` (floor mode, implicit `-inf` padding) routes each
window's gradient to its first maximum in row-major window order. XLA's own
gradient of `lax.reduce_window` (`select_and_scatter`) has the same semantics,
but on XLA:CPU it is slow: 84 ms for a 2x2/2 pool of a [64, 64, 64, 32] batch,
and 89 ms for ResNet's 3x3/2 stem pool of [8, 112, 112, 64], about half of the
small CNN's whole input gradient (benchmarks/RESULTS.md). `max_pool` here keeps
`reduce_window` for the value and defines its derivative (`jax.custom_jvp`)
from dense ops: one reshape into windows when they tile the input (VGG, the
small CNNs, global pools), strided slices, compares and selects when they
overlap (AlexNet, ResNet; at most 9 slices there, while a 16x16 global pool as
slices took 11 s to compile). The same numbers, bit for bit, including ties,
and 6-25x faster on CPU: 11 and 14 ms for the two cases above. Being a JVP
rule it works in forward mode and reverse mode (JAX transposes the reshape,
selects and strided slices), and under `vmap`.

The window helpers (`window_argmax`, `select_window_element`,
`scatter_to_windows`) are shared with DeepLift's max-pool rule
(`xai_jax.explain.deeplift_rules`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def output_size(size: int, window: int, stride: int, padding: int) -> int:
  """Pooled length of an axis of `size` (floor mode)."""
  return (size + 2 * padding - window) // stride + 1


def window_slices(z: Array, *, window: int, stride: int, padding: int,
                  pad_value: float) -> list[Array]:
  """The `window**2` strided views of `z`, one per window offset, row-major.

  Element `i = di * window + dj` holds, at output position `(oh, ow)`, the input
  at `(oh * stride + di - padding, ow * stride + dj - padding)`.

  Args:
    z: `float[B, H, W, C]`.
    window, stride, padding: the pooling geometry.
    pad_value: value of the padded border (`-inf` for values, 0 for tangents).

  Returns:
    `window**2` arrays `float[B, Ho, Wo, C]`.
  """
  p = padding
  ho = output_size(z.shape[1], window, stride, p)
  wo = output_size(z.shape[2], window, stride, p)
  if p:
    z = jnp.pad(z, ((0, 0), (p, p), (p, p), (0, 0)), constant_values=pad_value)
  return [jax.lax.slice(z, (0, di, dj, 0),
                        (z.shape[0], di + stride * (ho - 1) + 1, dj + stride * (wo - 1) + 1,
                         z.shape[3]),
                        (1, stride, stride, 1))
          for di in range(window) for dj in range(window)]


def is_tiling(*, window: int, stride: int, padding: int) -> bool:
  """True when the windows tile the input: `stride == window`, no padding (VGG, the small CNNs)."""
  return stride == window and padding == 0


def _tiles(z: Array, window: int) -> Array:
  """`float[B, H, W, C] -> float[B, Ho, Wo, C, window**2]` for tiling windows (row-major)."""
  b, h, w, c = z.shape
  ho, wo = h // window, w // window
  z = z[:, :ho * window, :wo * window].reshape(b, ho, window, wo, window, c)
  return z.transpose(0, 1, 3, 5, 2, 4).reshape(b, ho, wo, c, window * window)


def first_argmax(slices: list[Array]) -> Array:
  """`int32[B, Ho, Wo, C]`: index of the first maximum among `slices` (torch's choice).

  A running strict comparison, which XLA:CPU fuses into one pass; stacking
  the slices and calling `jnp.argmax` measured 1.2-6x slower.
  """
  best, index = slices[0], jnp.zeros(slices[0].shape, jnp.int32)
  for i, value in enumerate(slices[1:], start=1):
    larger = value > best
    best = jnp.where(larger, value, best)
    index = jnp.where(larger, i, index)
  return index


def window_argmax(z: Array, *, window: int, stride: int, padding: int) -> Array:
  """`int32[B, Ho, Wo, C]`: offset `di * window + dj` of each window's first maximum.

  Tiling windows (of any size, e.g. a global pool) go through one reshape;
  overlapping ones through `window**2` strided slices (see `window_slices`).
  """
  if is_tiling(window=window, stride=stride, padding=padding):
    return jnp.argmax(_tiles(z, window), axis=-1).astype(jnp.int32)
  return first_argmax(window_slices(z, window=window, stride=stride, padding=padding,
                                    pad_value=-np.inf))


def select_window_element(z: Array, argmax: Array, *, window: int, stride: int,
                          padding: int) -> Array:
  """`float[B, Ho, Wo, C]`: the element of each window of `z` at offset `argmax`.

  Linear in `z` (zero padding), so it also maps tangents and, transposed by
  JAX, gradients.
  """
  if is_tiling(window=window, stride=stride, padding=padding):
    chosen = jnp.arange(window * window, dtype=argmax.dtype) == argmax[..., None]
    return jnp.sum(jnp.where(chosen, _tiles(z, window), 0), axis=-1)
  slices = window_slices(z, window=window, stride=stride, padding=padding, pad_value=0)
  out = slices[0]
  for i, value in enumerate(slices[1:], start=1):
    out = jnp.where(argmax == i, value, out)
  return out


def place_window_offset(v: Array, di: int, dj: int, *, stride: int, padding: int,
                        height: int, width: int) -> Array:
  """Puts `v[:, oh, ow]` at input position `(oh*stride + di - padding, ow*stride + dj - padding)`.

  The transpose of one `window_slices` view: zeros elsewhere, `float[B, height, width, C]`.
  """
  ho, wo = v.shape[1], v.shape[2]
  lo_h, lo_w = di - padding, dj - padding
  hi_h = height - lo_h - (stride * (ho - 1) + 1)
  hi_w = width - lo_w - (stride * (wo - 1) + 1)
  zero = jnp.zeros((), v.dtype)
  return jax.lax.pad(v, zero, ((0, 0, 0), (lo_h, hi_h, stride - 1), (lo_w, hi_w, stride - 1),
                               (0, 0, 0)))


def scatter_to_windows(values: Array, argmax: Array, *, window: int, stride: int,
                       padding: int, height: int, width: int) -> Array:
  """Adds per-window `values [B, Ho, Wo, C]` at each window's `argmax` in `[B, height, width, C]`.

  Windows that share an input position (overlapping pools) add up: this is
  the max-pool VJP.
  """
  if is_tiling(window=window, stride=stride, padding=padding):
    b, ho, wo, c = values.shape
    chosen = jnp.arange(window * window, dtype=argmax.dtype) == argmax[..., None]
    tiles = jnp.where(chosen, values[..., None], 0).reshape(b, ho, wo, c, window, window)
    out = tiles.transpose(0, 1, 4, 2, 5, 3).reshape(b, ho * window, wo * window, c)
    return jnp.pad(out, ((0, 0), (0, height - ho * window), (0, width - wo * window), (0, 0)))
  offsets = [(di, dj) for di in range(window) for dj in range(window)]
  placed = [place_window_offset(jnp.where(argmax == i, values, 0), di, dj, stride=stride,
                                padding=padding, height=height, width=width)
            for i, (di, dj) in enumerate(offsets)]
  return functools.reduce(jnp.add, placed)


def _reduce_window_max(x: Array, window: int, stride: int, padding: int) -> Array:
  return jax.lax.reduce_window(
      x, np.array(-np.inf, dtype=x.dtype), jax.lax.max,
      window_dimensions=(1, window, window, 1),
      window_strides=(1, stride, stride, 1),
      padding=((0, 0), (padding, padding), (padding, padding), (0, 0)))


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3))
def _max_pool(x: Array, window: int, stride: int, padding: int) -> Array:
  return _reduce_window_max(x, window, stride, padding)


@_max_pool.defjvp
def _max_pool_jvp(window, stride, padding, primals, tangents):
  (x,), (dx,) = primals, tangents
  geometry = dict(window=window, stride=stride, padding=padding)
  dy = select_window_element(dx, window_argmax(x, **geometry), **geometry)
  return _reduce_window_max(x, window, stride, padding), dy


def max_pool(x: Array, *, window: int, stride: int, padding: int = 0) -> Array:
  """Max-pooling with torch's `nn.MaxPool2d` semantics (NHWC).

  Floor mode (`ceil_mode=False`), implicit `-inf` padding, square windows. The
  gradient goes to the first maximum of each window in row-major order, as in
  torch (reference-semantics A.4, A.11); see the module docstring for why the
  derivative is defined here rather than left to XLA.

  Args:
    x: `float[N, H, W, C]`.
    window: window size (square).
    stride: stride (both axes).
    padding: `-inf` padding on each side of H and W.

  Returns:
    `float[N, (H + 2p - window) // stride + 1, (W + 2p - window) // stride + 1, C]`.

  Raises:
    ValueError: if the input is not 4-D, the geometry is not positive, or the
      input is smaller than the window.
  """
  if x.ndim != 4:
    raise ValueError(f"max_pool expects NHWC input, got shape {x.shape}")
  if window < 1 or stride < 1 or padding < 0:
    raise ValueError(f"max_pool: window and stride must be >= 1 and padding >= 0; got "
                     f"window={window}, stride={stride}, padding={padding}")
  h, w = x.shape[1] + 2 * padding, x.shape[2] + 2 * padding
  if h < window or w < window:
    raise ValueError(
        f"max_pool: padded input {h}x{w} is smaller than the window {window}")
  return _max_pool(x, int(window), int(stride), int(padding))
