"""Synthetic cells with ground-truth heatmaps (Tjoa & Guan), as pure JAX functions.

Reproduces the ten-class data generator of Tjoa & Guan, "Quantifying
Explainability of Saliency Methods in Deep Neural Networks" (IEEE TAI 2023,
arXiv:2009.02899), as their public code `ericotjo001/explainable_ai`
(`xai_basic/legacy/srcV1/pipeline/objgen`) generates it, statement by statement
(the functions below name the original routine each one follows).

Classes (`CLASS_NAMES`, the paper's order): 0 CCell (round cell), 1 CCellM (cell
with a bar), 2 CCellP (cell with a plus), 3 RCell (red-bordered rectangle),
4 RCellB (green), 5 RCellC (blue), 6 CCellT (one tail), 7 CCellT3 (three tails),
8 CCellT8 (eight tails), 9 empty (black image, all-zero heatmap). Backgrounds
(`BACKGROUND_NAMES`): 0 none (black), 1 blotches (smooth per-channel colour
blotches in [0.2, 0.7]), 2 rings (noisy concentric rings in [0, 0.5]).

Ground truth: 0.9 marks the discriminative feature (the border of round cells
and rectangles; the bar/plus of classes 1-2; the tails of classes 6-8), 0.4 the
rest of the object (localisation), 0 everything else. A part counts where
`E(part) = (1/3) * ||rgb||_2 > 0.05` after rotation (the original's 1/3, not
1/sqrt(3)), and the feature wins over localisation.

What is reproduced as the original does it (it changes what images look like):
rectangle coordinate noise shared by both axes, rectangles built at their offset
and then rotated about the image centre (their centre orbits), round cells
rotated about their own centre then translated by an integer shift (`x0` moves
rows for round cells, columns for rectangles), bilinear rotation with fill 0
before the 0.05 thresholds (edge pixels dilate the regions), background added
per channel wherever that channel of the cell image is < 0.01, noise grids of
`int(512 / rho)` cells upsampled with skimage's bilinear, pixel-centre,
mirror-edge RESIZE, and class 6's rejection of cells whose tail covers under
0.3 % of the image (`round(100 * fraction, 2) < 0.3`), here a `lax.while_loop`.

Deliberate differences from the original:
  * Randomness comes from an explicit JAX PRNG key, so data are reproducible
    (the original seeds nothing). Random streams differ: all scalar settings of a
    cell are drawn as one uniform vector, and quirks that only consume draws
    (the rectangle's unused second noise field, the colour drawn for class 2's
    bar and then overwritten) are not copied.
  * Any size from 32 to 1024 is generated directly: every length given for 512
    (radii, thicknesses, offsets, tail lengths, noise amplitude sigma, ring
    wavelength, background-ring centre range) scales by `size / 512`, while the
    noise grids keep their cell COUNT (`int(512 / rho)`, 8..16 per side; 8x8 for
    blotches, 16x16 for rings). Integer truncations (`int(w / 2)`, offsets) are
    applied after scaling. Heatmaps therefore stay exactly {0, 0.4, 0.9} at every
    size (the original resized 512 images and heatmaps to 224 with anti-aliasing,
    which produced in-between heatmap values).
  * Images are HWC (channels last) float32 in [0, 1] (the original: float64
    CHW); heatmaps are float32.
  * Tails of classes 7 and 8 are combined as a union rather than a sum (they
    never overlap at these widths, so the result is the same).
  * The part images are not built in colour and rotated channel by channel: the
    binary masks are rotated once and coloured afterwards. Rotation is linear, so
    this is the same image up to float rounding.
  * The computation is float32 (float64 in the original); a pixel whose rotated
    strength lies within ~1e-6 of the 0.05 threshold may fall on the other side
    (tests: under 0.05 % of pixels differ from a float64 numpy port).
  * Class 6's redraws use `fold_in(key, attempt)`; the background has its own key.

Speed (one code path for all classes, so `vmap` over traced labels costs about
one class, not ten): the shared ingredients (three noise fields, the round and
rectangular masks, bar, plus, tails) are computed once and selected per label
with `jnp.where`; the three binary masks (border, inner, feature) are packed as
bits, so ROT + SHIFT of every part costs two scalar gathers per 2x2 block of
output pixels; the eight tails of class 8 share their rotated coordinates.
Measured on a shared 2-core CPU at 224x224: about 210 images/s (220 per
CPU-second) with `jit(vmap(make_cell))`, batch 64, i.e. the 9,600 images of
the paper's dataset in about 46 s (`python -m benchmarks.cells`). Class 6's
rejection loop (`lax.while_loop`, batched by `vmap`) costs about 20 % of that.

Typical use:

  image, heatmap = cells.make_cell(jax.random.key(0), 3, 1, size=224)
  batch = cells.make_batch(jax.random.key(1), 64, size=224)   # jitted inside
  gen = xla.jit(jax.vmap(functools.partial(cells.make_cell, size=224)))
  images, heatmaps = gen(keys, labels, backgrounds)   # traced labels are fine
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from xai_jax import xla

CLASS_NAMES = (
    "CCell", "CCellM", "CCellP", "RCell", "RCellB", "RCellC",
    "CCellT", "CCellT3", "CCellT8", "empty",
)
BACKGROUND_NAMES = ("none", "blotches", "rings")
NUM_CLASSES = len(CLASS_NAMES)
NUM_BACKGROUNDS = len(BACKGROUND_NAMES)

LOCALIZATION_VALUE = 0.4
FEATURE_VALUE = 0.9
HEATMAP_VALUES = (0.0, LOCALIZATION_VALUE, FEATURE_VALUE)
THRESHOLD = 0.05           # on E = (1/3) * ||rgb||, both thresholds of setup0001
TAIL_MIN_PERCENT = 0.3     # class 6 rejection, percent of the image
BACKGROUND_EPSILON = 0.01  # background goes where a cell channel is below this
MIN_SIZE, MAX_SIZE = 32, 1024
REFERENCE_SIZE = 512       # all lengths of the original are given for 512x512

_MAX_GRID = 16             # largest noise grid, int(512 / 31)
_BLOTCH_GRID = 8           # int(512 / 64)
_RING_GRID = 16            # int(512 / 32)

# Layout of the uniform vector that holds every scalar draw of one cell.
(_U_BORDER, _U_INNER, _U_RADIUS, _U_STRETCH, _U_THICK, _U_SIGMA, _U_ROUGH,
 _U_ANGLE, _U_OFF1, _U_OFF2, _U_BAR, _U_POLE, _U_TAIL, _U_RECT_H,
 _U_RECT_W) = (0, 3, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18)
_NUM_UNIFORMS = 19


# ---------------------------------------------------------------------------
# Helpers of the original: RESIZE, ROT + SHIFT, NOISE.


def _resize_matrix(out_size: int, in_size: jax.Array, max_in: int) -> jax.Array:
  """Bilinear upsampling matrix of skimage.transform.resize (RESIZE).

  Pixel-centre mapping `u = (i + 0.5) * in / out - 0.5` and mirror edges
  (skimage's `mode="reflect"` is ndimage's `mirror`), for upsampling only
  (no anti-aliasing). `in_size` may be traced; columns `>= in_size` are zero.

  Args:
    out_size: static output length.
    in_size: int32 scalar, 2 <= in_size <= max_in <= out_size.
    max_in: static number of columns of the matrix.

  Returns:
    float32[out_size, max_in] `W` with `resized = W @ grid @ W.T`.
  """
  in_f = jnp.asarray(in_size, jnp.float32)
  u = (jnp.arange(out_size, dtype=jnp.float32) + 0.5) * (in_f / out_size) - 0.5
  lo = jnp.floor(u)
  frac = u - lo
  lo = lo.astype(jnp.int32)
  last = jnp.asarray(in_size, jnp.int32) - 1

  def mirror(j):
    j = jnp.where(j < 0, -j, j)
    return jnp.where(j > last, 2 * last - j, j)

  cols = jnp.arange(max_in, dtype=jnp.int32)
  w_lo = (mirror(lo)[:, None] == cols) * (1.0 - frac)[:, None]
  w_hi = (mirror(lo + 1)[:, None] == cols) * frac[:, None]
  return (w_lo + w_hi).astype(jnp.float32)


def _resize_grids(grids: jax.Array, in_size: jax.Array, out_size: int) -> jax.Array:
  """RESIZE of the top-left `in_size x in_size` block of each grid to `out_size^2`.

  Args:
    grids: float32[..., G, G] (G static; only the top-left block is used).
    in_size: int32 scalar, the grids' effective side length.
    out_size: static output side length.

  Returns:
    float32[..., out_size, out_size].
  """
  w = _resize_matrix(out_size, in_size, grids.shape[-1])
  hi = lax.Precision.HIGHEST
  return jnp.matmul(jnp.matmul(w, grids, precision=hi), w.T, precision=hi)


def _rotate_shift(bits: jax.Array, derive: Callable[[jax.Array], tuple[jax.Array, ...]],
                  angle_deg: jax.Array, shift_rows: jax.Array, shift_cols: jax.Array, *,
                  bits_per_pixel: int) -> jax.Array:
  """SHIFT(ROT(masks)) of binary masks packed as bits: skimage rotate, then shift.

  ROT is `skimage.transform.rotate(mask, angle_deg)`: counter-clockwise as
  displayed, about the image centre ((size - 1) / 2, (size - 1) / 2), bilinear,
  fill 0 outside the input. SHIFT moves rows by `shift_rows` and columns by
  `shift_cols` (integers) with fill 0. Both are done as one bilinear sampling:
  an output pixel reads the rotated image at its pre-shift position.
  skimage's final clip to the input range is a no-op for bilinear weights on
  inputs in [0, 1] and is not repeated.

  Speed (XLA:CPU gathers are the bottleneck): the masks are packed as bits, and
  the 4x4 input window that a 2x2 block of output pixels reads (a rotation
  moves neighbours by at most sqrt(2)) is packed into one or two int32 codes,
  so that the bilinear sampling of all masks costs one gather per 2x2 output
  block (1 bit per pixel) or two (2..3 bits). Four gathers of five float masks
  per output pixel made the whole generator about 4x slower. `derive` turns the bits of one input pixel into the binary
  masks to rotate (e.g. "border and not feature"), at no extra gather.

  Args:
    bits: int32[S, S], bit `c` holding binary mask `c` of the square image.
    derive: maps int32 pixel bits (any shape) to a tuple of C bool arrays of
      the same shape.
    angle_deg: float32 scalar, degrees.
    shift_rows, shift_cols: int32 scalars.
    bits_per_pixel: static, 1..3: how many bits of `bits` are used.

  Returns:
    float32[S, S, C], each in [0, 1].
  """
  size = bits.shape[0]
  half = (size + 1) // 2
  even = 2 * half   # odd sizes: one extra output row/column, cropped at the end
  centre = size / 2.0 - 0.5
  theta = jnp.deg2rad(jnp.asarray(angle_deg, jnp.float32))
  cos, sin = jnp.cos(theta), jnp.sin(theta)
  rows = jnp.arange(even, dtype=jnp.int32)[:, None] - jnp.asarray(shift_rows, jnp.int32)
  cols = jnp.arange(even, dtype=jnp.int32)[None, :] - jnp.asarray(shift_cols, jnp.int32)
  inside = (rows >= 0) & (rows < size) & (cols >= 0) & (cols < size)
  # Inverse map of skimage's rotate: (col, row)_in = R(theta) (col - c, row - c)_out + c,
  # at the pre-shift pixel (col - shift_cols, row - shift_rows).
  x_out = cols.astype(jnp.float32) - centre
  y_out = rows.astype(jnp.float32) - centre
  col_in = cos * x_out - sin * y_out + centre
  row_in = sin * x_out + cos * y_out + centre
  valid = inside & (row_in > -1) & (row_in < size) & (col_in > -1) & (col_in < size)
  r0 = jnp.floor(row_in)
  c0 = jnp.floor(col_in)
  dr = row_in - r0
  dc = col_in - c0
  r0 = jnp.clip(r0, -1, size - 1).astype(jnp.int32)
  c0 = jnp.clip(c0, -1, size - 1).astype(jnp.int32)

  def per_block(a, reduce):
    return reduce(a.reshape(half, 2, half, 2), axis=(1, 3))

  def per_pixel(a):
    return jnp.broadcast_to(a[:, None, :, None], (half, 2, half, 2)).reshape(even, even)

  # Window origin of each 2x2 output block; its pixels read rows/columns
  # origin + 0..3 (the floors differ by at most 2 within a block).
  block_r0 = per_block(r0, jnp.min)
  block_c0 = per_block(c0, jnp.min)
  # Zero frame: padded index = index + 1, neighbours outside read fill 0. The
  # pad also keeps XLA:CPU from fusing the mask computation into the gathers
  # (it would recompute the masks for every read, 3x slower;
  # `lax.optimization_barrier` does not prevent that fusion on CPU).
  padded = jnp.pad(bits, ((1, 3), (1, 3)))
  width = size + 1
  rows_per_code = min(4, 32 // (4 * bits_per_pixel))
  index = ((block_r0 + 1) * width + block_c0 + 1).reshape(-1)
  codes = []
  for first in range(0, 4, rows_per_code):
    code = jnp.zeros((width, width), jnp.int32)
    for a in range(first, min(first + rows_per_code, 4)):
      for b in range(4):
        shift = bits_per_pixel * (4 * (a - first) + b)
        code = code | (padded[a:a + width, b:b + width] << shift)
    gathered = jnp.take(code.reshape(-1), index, mode="clip").reshape(half, half)
    codes.append(per_pixel(gathered))
  row_in_window = r0 - per_pixel(block_r0)
  col_in_window = c0 - per_pixel(block_c0)
  low_bits = (1 << bits_per_pixel) - 1

  def corner(a, b):
    window_row = row_in_window + a
    window_col = col_in_window + b
    code = codes[0]
    for k in range(1, len(codes)):
      code = jnp.where(window_row >= k * rows_per_code, codes[k], code)
    shift = bits_per_pixel * (4 * (window_row % rows_per_code) + window_col)
    return derive((code >> shift) & low_bits)

  weights = {(0, 0): (1 - dr) * (1 - dc), (0, 1): (1 - dr) * dc,
             (1, 0): dr * (1 - dc), (1, 1): dr * dc}
  derived = {ab: corner(*ab) for ab in weights}
  out = []
  for channel in range(len(derived[0, 0])):
    value = sum(w * derived[ab][channel].astype(jnp.float32) for ab, w in weights.items())
    out.append(jnp.where(valid, value, 0.0)[:size, :size])
  return jnp.stack(out, -1)


# ---------------------------------------------------------------------------
# One cell.


def _pack_bits(*masks: jax.Array) -> jax.Array:
  """bool[H, W] masks -> int32[H, W] with bit c = mask c."""
  return functools.reduce(jnp.bitwise_or,
                          [mask.astype(jnp.int32) << c for c, mask in enumerate(masks)])


def _lattice(size: int) -> tuple[jax.Array, jax.Array]:
  """Centred lattice `x = col - size // 2`, `y = row - size // 2` (y grows down)."""
  centre = size // 2
  coords = jnp.arange(size, dtype=jnp.float32) - centre
  return coords[None, :], coords[:, None]


def _normal_from_uniform(u: jax.Array) -> jax.Array:
  """N(0, 1) from U[0, 1) as `jax.random.normal` does it (sqrt(2) erfinv)."""
  lowest = np.nextafter(np.float32(-1.0), np.float32(0.0))
  return np.float32(np.sqrt(2.0)) * lax.erf_inv(jnp.maximum(2.0 * u - 1.0, lowest))


def _settings(key: jax.Array, label: jax.Array, size: int, *,
              distance_noise: bool = True) -> dict[str, Any]:
  """Draws every random setting of one cell (section 1.2 of the spec).

  All draws come from one `jax.random.uniform` call (each separate call costs
  compile time): the scalar settings, then three 16x16 normal grids.

  Returns a dict of float32/int32 scalars (lengths already scaled by
  size / 512) plus the three noise fields `n_dist`, `n_x`, `n_y` (float32[S, S];
  `n_dist` is left out when `distance_noise` is False, which saves a resize).
  """
  scale = size / REFERENCE_SIZE
  draws = jax.random.uniform(key, (_NUM_UNIFORMS + 3 * _MAX_GRID**2,), jnp.float32)
  u = draws[:_NUM_UNIFORMS]
  grids = _normal_from_uniform(draws[_NUM_UNIFORMS:]).reshape(3, _MAX_GRID, _MAX_GRID)
  is_rect = (label >= 3) & (label <= 5)

  round_border = 0.5 + 0.4 * u[_U_BORDER:_U_BORDER + 3]
  dominant = jnp.arange(3) == (label - 3)
  rect_border = jnp.where(dominant, 0.6 + 0.3 * u[_U_BORDER:_U_BORDER + 3],
                          0.2 * u[_U_BORDER:_U_BORDER + 3])
  border_rgb = jnp.where(is_rect, rect_border, round_border)
  inner_rgb = jnp.array([0.1, 0.1, 0.3]) + 0.2 * u[_U_INNER:_U_INNER + 3]

  sigma = (6.0 + 6.0 * u[_U_SIGMA]) * scale
  roughness = 31.0 + 33.0 * u[_U_ROUGH]
  cells = jnp.clip(jnp.floor(REFERENCE_SIZE / roughness), 8, _MAX_GRID).astype(jnp.int32)
  # NOISE(sigma, rho) three times: fresh grids of N(0, sigma), RESIZEd.
  fields = _resize_grids(sigma * (grids if distance_noise else grids[1:]), cells, size)
  n_dist, n_x, n_y = fields if distance_noise else (None, *fields)
  max_offset = 0.33 * size
  return dict(
      border_rgb=border_rgb,
      inner_rgb=inner_rgb,
      radius=(90.0 + 20.0 * u[_U_RADIUS]) * scale,
      stretch=0.5 + u[_U_STRETCH],
      thickness=(10.0 + 20.0 * u[_U_THICK]) * scale,
      angle=-60.0 + 120.0 * u[_U_ANGLE],
      offset1=jnp.trunc(-max_offset + 2 * max_offset * u[_U_OFF1]).astype(jnp.int32),
      offset2=jnp.trunc(-max_offset + 2 * max_offset * u[_U_OFF2]).astype(jnp.int32),
      bar=(10.0 + 20.0 * u[_U_BAR]) * scale,
      pole=(5.0 + 35.0 * u[_U_POLE]) * scale,
      tail=(10.0 + 20.0 * u[_U_TAIL]) * scale,
      rect_h=(100.0 + 100.0 * u[_U_RECT_H]) * scale,
      rect_w=(100.0 + 100.0 * u[_U_RECT_W]) * scale,
      **({"n_dist": n_dist} if distance_noise else {}),
      n_x=n_x,
      # Rectangles use one field for both axes (the original's bug).
      n_y=jnp.where(is_rect, n_x, n_y),
  )


def _tails(xp: jax.Array, yp: jax.Array, p: dict[str, Any], label: jax.Array) -> jax.Array:
  """Union of the tails of class `label` (none unless 6, 7, 8), bool[S, S].

  A tail at angle a is `|x1| <= tail / 2` and `0.8 s r <= y1 <= 1.5 r s + t`
  with `(x1, y1)` the skeleton coordinates rotated by a. The directions that
  are multiples of 45 degrees share their rotated coordinates (+-x', +-y',
  +-(x' -+ y') / sqrt 2), which halves the work of the eight tails of class 8.
  """
  half = p["tail"] / 2
  start = 0.8 * p["stretch"] * p["radius"]
  end = 1.5 * p["radius"] * p["stretch"] + p["thickness"]

  def arm(across, along):
    return (jnp.abs(across) <= half) & (along >= start) & (along <= end)

  is7, is8 = label == 7, label == 8
  # 0 degrees (classes 6, 7, 8), with 180 degrees for class 8 (start > 0).
  vertical = arm(xp, jnp.where(is8, jnp.abs(yp), yp))
  # Class 8: 90/270 degrees, then 45/225 and 135/315 with u, v = (x' -+ y') / sqrt 2.
  horizontal = arm(yp, jnp.abs(xp))
  u = (xp - yp) * np.float32(np.sqrt(0.5))
  v = (xp + yp) * np.float32(np.sqrt(0.5))
  diagonal = arm(u, jnp.abs(v)) | arm(v, jnp.abs(u))
  # Class 7: 120 and 240 degrees.
  cos, sin = np.float32(-0.5), np.float32(np.sqrt(3) / 2)
  thirds = arm(cos * xp - sin * yp, sin * xp + cos * yp) | arm(cos * xp + sin * yp,
                                                              -sin * xp + cos * yp)
  return (((label >= 6) & (label <= 8) & vertical) | (is8 & (horizontal | diagonal))
          | (is7 & thirds))


def _tail_only_fraction(key: jax.Array, size: int) -> jax.Array:
  """Fraction of the image covered by class 6's rotated, shifted tail mask."""
  p = _settings(key, jnp.int32(6), size, distance_noise=False)
  x, y = _lattice(size)
  xp, yp = x + p["n_x"], y + p["n_y"]
  tail = ((jnp.abs(xp) <= p["tail"] / 2) & (yp >= 0.8 * p["stretch"] * p["radius"])
          & (yp <= 1.5 * p["radius"] * p["stretch"] + p["thickness"]))
  moved = _rotate_shift(_pack_bits(tail), lambda bits: (bits > 0,), p["angle"],
                        p["offset1"], p["offset2"], bits_per_pixel=1)
  return jnp.mean(moved)


def _accepted_key(key: jax.Array, label: jax.Array, size: int) -> jax.Array:
  """Class 6 rejection: the first `fold_in(key, i)` whose tail covers >= 0.3 %."""

  def rejected(i):
    fraction = _tail_only_fraction(jax.random.fold_in(key, i), size)
    # round(100 * fraction, 2) < 0.3  <=>  round(1e4 * fraction) < 30.
    return jnp.round(1e4 * fraction) < 100 * TAIL_MIN_PERCENT

  def cond(state):
    return ~state[1]

  def body(state):
    i, _ = state
    ok = ~rejected(i)
    return jnp.where(ok, i, i + 1), ok

  first, _ = lax.while_loop(cond, body, (jnp.int32(0), label != 6))
  return jax.random.fold_in(key, first)


def _cell_object(key: jax.Array, label: jax.Array, size: int) -> tuple[jax.Array, jax.Array]:
  """The object alone: image float32[S, S, 3] in [0, 1] and heatmap float32[S, S]."""
  p = _settings(key, label, size)
  x, y = _lattice(size)
  is_rect = (label >= 3) & (label <= 5)
  has_feature = ((label >= 1) & (label <= 2)) | ((label >= 6) & (label <= 8))
  present = label != 9

  # Round cells (1.3): distance with noise; border ring and inside.
  dist = jnp.sqrt(x**2 + (y / p["stretch"])**2) + p["n_dist"]
  inner_edge = p["radius"] - p["thickness"]
  ball_border = (dist <= p["radius"]) & (dist >= inner_edge)
  ball_inner = dist < inner_edge

  # Skeleton coordinates (1.3 step 2) and rectangle coordinates (1.4): the
  # rectangle's offset goes into the coordinates (offset1 moves columns).
  xp = x + p["n_x"]
  yp = y + p["n_y"]
  xr = jnp.abs(xp - p["offset1"].astype(jnp.float32))
  yr = jnp.abs(yp - p["offset2"].astype(jnp.float32))
  half_w = jnp.floor(p["rect_w"] / 2)
  half_h = jnp.floor(p["rect_h"] / 2)
  rect_outer = (xr <= half_w) & (yr <= half_h)
  rect_inner = (xr <= half_w - p["thickness"]) & (yr <= half_h - p["thickness"])
  rect_border = rect_outer & ~rect_inner

  border = jnp.where(is_rect, rect_border, ball_border) & present
  inner = jnp.where(is_rect, rect_inner, ball_inner) & present

  bar = (jnp.abs(xp) <= p["radius"]) & (jnp.abs(yp) <= jnp.floor(p["bar"] / 2))
  pole = (jnp.abs(yp) <= p["radius"] * p["stretch"]) & (jnp.abs(xp) <= jnp.floor(p["pole"] / 2))
  feature = jnp.where(label == 1, bar,
                      jnp.where(label == 2, bar | pole, _tails(xp, yp, p, label))) & present

  # ROT + SHIFT of every part; round cells rotate about their own centre and
  # then shift (offset1 moves rows), rectangles only rotate about the image centre.
  # Packed as bits; the rotation derives "border/inner outside the feature".
  parts = _pack_bits(border, inner, feature)

  def derive(bits):
    border, inner, feature = (bits & 1) > 0, (bits & 2) > 0, (bits & 4) > 0
    return border & ~feature, inner & ~feature, feature, border, inner

  shift_rows = jnp.where(is_rect, 0, p["offset1"])
  shift_cols = jnp.where(is_rect, 0, p["offset2"])
  moved = _rotate_shift(parts, derive, p["angle"], shift_rows, shift_cols, bits_per_pixel=3)
  m_border_kept, m_inner_kept, m_feature, m_border, m_inner = (
      moved[..., i] for i in range(5))

  tails = (label >= 6) & (label <= 8)
  feature_rgb = jnp.where(tails, jnp.clip(0.75 * p["border_rgb"], 0.0, 1.0), p["border_rgb"])
  image = (m_border_kept[..., None] * p["border_rgb"] + m_inner_kept[..., None] * p["inner_rgb"]
           + m_feature[..., None] * feature_rgb)
  image = jnp.clip(image, 0.0, 1.0)

  # E(part) = (1/3) sqrt(sum_c (mask * rgb_c)^2) = mask * ||rgb|| / 3.
  def strong(mask, rgb):
    return mask * (jnp.linalg.norm(rgb) / 3.0) > THRESHOLD

  e_border = strong(m_border, p["border_rgb"])
  e_inner = strong(m_inner, p["inner_rgb"])
  e_feature = strong(m_feature, feature_rgb)
  is_feature = e_feature | (~has_feature & e_border)
  heatmap = jnp.where(is_feature, FEATURE_VALUE,
                      jnp.where(e_border | e_inner, LOCALIZATION_VALUE, 0.0))
  return image, heatmap.astype(jnp.float32)


def _background_draws(key: jax.Array, size: int) -> dict[str, jax.Array]:
  """The random draws of a background (all types), from one uniform call.

  Returns dict: `centre` int32[2] (bx, by in [size // 4, 3 size // 4)),
  `blotches` float32[3, 8, 8] in U(0.2, 0.7), `rings` float32[3, 16, 16] in
  U(-0.3, 0.3), `stretch` float32[3] in U(1e-4, 1e-3) (before size scaling).
  """
  n_blotch, n_ring = 3 * _BLOTCH_GRID**2, 3 * _RING_GRID**2
  u = jax.random.uniform(key, (2 + n_blotch + n_ring + 3,), jnp.float32)
  low, high = size // 4, (3 * size) // 4
  centre = jnp.minimum(low + jnp.floor(u[:2] * (high - low)), high - 1).astype(jnp.int32)
  blotches = (0.2 + 0.5 * u[2:2 + n_blotch]).reshape(3, _BLOTCH_GRID, _BLOTCH_GRID)
  rings = (-0.3 + 0.6 * u[2 + n_blotch:2 + n_blotch + n_ring]).reshape(3, _RING_GRID, _RING_GRID)
  stretch = 1e-4 + 9e-4 * u[2 + n_blotch + n_ring:]
  return dict(centre=centre, blotches=blotches, rings=rings, stretch=stretch)


def _background(key: jax.Array, background: jax.Array, size: int) -> jax.Array:
  """Background texture (1.5), float32[S, S, 3] in [0, 1]; zeros for type 0."""
  draws = _background_draws(key, size)
  x, y = _lattice(size)
  bx, by = draws["centre"][0], draws["centre"][1]
  dd = jnp.sqrt((x - bx)**2 + (y - by)**2)
  blotches = _resize_grids(draws["blotches"], _BLOTCH_GRID, size)
  ring_noise = _resize_grids(draws["rings"], _RING_GRID, size)
  # The ring wavelength is a length: its frequency scales by 512 / size.
  stretch = draws["stretch"] * (REFERENCE_SIZE / size)
  rings = 0.5 * (0.5 * jnp.sin(stretch[:, None, None] * dd * (1 + ring_noise)
                               * (180.0 / math.pi)) + 0.5)
  bg = jnp.where(background == 1, blotches, jnp.where(background == 2, rings, 0.0))
  return jnp.clip(jnp.moveaxis(bg, 0, -1), 0.0, 1.0)


def _make_cell(key: jax.Array, label: jax.Array, background: jax.Array,
               size: int) -> tuple[jax.Array, jax.Array]:
  """`make_cell` without argument checks (traceable; size static)."""
  label = jnp.asarray(label, jnp.int32)
  background = jnp.asarray(background, jnp.int32)
  k_cell, k_bg = jax.random.split(key)
  k_cell = _accepted_key(k_cell, label, size)
  cell, heatmap = _cell_object(k_cell, label, size)
  bg = _background(k_bg, background, size)
  image = jnp.clip(cell + jnp.where(cell < BACKGROUND_EPSILON, bg, 0.0), 0.0, 1.0)
  return image, heatmap


def _cell_settings(key: jax.Array, label: jax.Array, size: int) -> dict[str, jax.Array]:
  label = jnp.asarray(label, jnp.int32)
  k_cell, _ = jax.random.split(key)
  p = _settings(_accepted_key(k_cell, label, size), label, size)
  is_rect = (label >= 3) & (label <= 5)
  centre = size / 2.0 - 0.5
  grid_centre = float(size // 2)
  # Pre-rotation centre of the object (pixel row, col), then ROT about `centre`
  # (counter-clockwise as displayed) and, for round cells, SHIFT.
  row0 = grid_centre + jnp.where(is_rect, p["offset2"], 0).astype(jnp.float32)
  col0 = grid_centre + jnp.where(is_rect, p["offset1"], 0).astype(jnp.float32)
  theta = jnp.deg2rad(p["angle"])
  dx, dy = col0 - centre, row0 - centre
  col = jnp.cos(theta) * dx + jnp.sin(theta) * dy + centre
  row = -jnp.sin(theta) * dx + jnp.cos(theta) * dy + centre
  row = row + jnp.where(is_rect, 0, p["offset1"]).astype(jnp.float32)
  col = col + jnp.where(is_rect, 0, p["offset2"]).astype(jnp.float32)
  out = {k: v for k, v in p.items() if not k.startswith("n_")}
  out.update(centre_row=row, centre_col=col)
  return out


# ---------------------------------------------------------------------------
# Public API.


def _check_size(size: Any) -> int:
  if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
    raise ValueError(f"size must be a Python int in [{MIN_SIZE}, {MAX_SIZE}]; got {size!r}")
  if not MIN_SIZE <= size <= MAX_SIZE:
    raise ValueError(f"size must be in [{MIN_SIZE}, {MAX_SIZE}]; got {size}")
  return int(size)


def _check_values(value: Any, name: str, count: int, valid: tuple[str, ...]) -> None:
  """Range-checks a concrete integer (array) argument; traced values pass."""
  if isinstance(value, jax.core.Tracer):
    return
  array = np.asarray(value)
  if not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
    if not (np.issubdtype(array.dtype, np.floating) and np.all(array == np.round(array))):
      raise ValueError(f"{name} must be integer; got {value!r}")
  if array.size and (array.min() < 0 or array.max() >= count):
    names = ", ".join(f"{i} {n}" for i, n in enumerate(valid))
    raise ValueError(f"{name} must be in 0..{count - 1} ({names}); got {value!r}")


def make_cell(key: jax.Array, label: Any, background: Any, *,
              size: int = 224) -> tuple[jax.Array, jax.Array]:
  """Generates one synthetic cell image and its ground-truth heatmap.

  Pure JAX: usable under `jax.jit` (with `size` static) and `jax.vmap`;
  `label` and `background` may be traced. The same key gives identical bytes.

  Args:
    key: a JAX PRNG key (typed `jax.random.key` or raw uint32[2]).
    label: int scalar in 0..9, the class (`CLASS_NAMES`).
    background: int scalar in 0..2 (`BACKGROUND_NAMES`): none, blotches, rings.
    size: side length in pixels, 32..1024; lengths scale by `size / 512`.

  Returns:
    `(image, heatmap)`: image float32[size, size, 3] in [0, 1] (HWC);
    heatmap float32[size, size] with values exactly in {0, 0.4, 0.9}.

  Raises:
    ValueError: for a concrete label outside 0..9, background outside 0..2,
      or size outside 32..1024.

  References:
    Tjoa & Guan, arXiv:2009.02899, Fig. 2.
  """
  size = _check_size(size)
  _check_values(label, "label", NUM_CLASSES, CLASS_NAMES)
  _check_values(background, "background", NUM_BACKGROUNDS, BACKGROUND_NAMES)
  if np.ndim(label) != 0 or np.ndim(background) != 0:
    raise ValueError("make_cell takes scalar label and background; use make_batch or "
                     f"jax.vmap for arrays (got shapes {np.shape(label)}, "
                     f"{np.shape(background)})")
  return _make_cell(key, label, background, size)


@functools.partial(xla.jit, static_argnames=("n", "size"))
def _make_batch(key, n, labels, backgrounds, size):
  keys = jax.random.split(key, n)
  generate = jax.vmap(functools.partial(_make_cell, size=size))
  images, heatmaps = generate(keys, labels, backgrounds)
  return dict(image=images, heatmap=heatmaps, label=labels, background=backgrounds)


def make_batch(key: jax.Array, n: int, *, size: int = 224, labels: Any = None,
               backgrounds: Any = None) -> dict[str, jax.Array]:
  """Generates `n` cells (jitted, vmapped; one compilation per `(n, size)`).

  Labels and backgrounds not given are drawn uniformly and independently, as
  the original's `uniform_random_draw` (so batches are not class-balanced).
  Sample `i` is `make_cell(jax.random.split(k_cells, n)[i], labels[i],
  backgrounds[i], size=size)` with `_, _, k_cells = jax.random.split(key, 3)`.

  Args:
    key: a JAX PRNG key.
    n: number of samples, >= 1.
    size: side length, 32..1024.
    labels: optional int array [n] (or scalar, broadcast) in 0..9.
    backgrounds: optional int array [n] (or scalar, broadcast) in 0..2.

  Returns:
    dict with `image` float32[n, size, size, 3] in [0, 1], `heatmap`
    float32[n, size, size] in {0, 0.4, 0.9}, `label` int32[n], `background`
    int32[n].

  Raises:
    ValueError: for n < 1, a bad size, labels/backgrounds out of range or of a
      shape other than () or (n,).
  """
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
    raise ValueError(f"n must be a positive int; got {n!r}")
  n = int(n)
  size = _check_size(size)
  k_labels, k_backgrounds, k_cells = jax.random.split(key, 3)

  def resolve(values, k, count, name, valid):
    if values is None:
      return jax.random.randint(k, (n,), 0, count, jnp.int32)
    _check_values(values, name, count, valid)
    if np.ndim(values) not in (0, 1) or (np.ndim(values) == 1 and np.shape(values)[0] != n):
      raise ValueError(f"{name} must be a scalar or have shape ({n},); got {np.shape(values)}")
    return jnp.broadcast_to(jnp.asarray(values, jnp.int32), (n,))

  labels = resolve(labels, k_labels, NUM_CLASSES, "labels", CLASS_NAMES)
  backgrounds = resolve(backgrounds, k_backgrounds, NUM_BACKGROUNDS, "backgrounds",
                        BACKGROUND_NAMES)
  return _make_batch(k_cells, n, labels, backgrounds, size)


def cell_settings(key: jax.Array, label: Any, *, size: int = 224) -> dict[str, jax.Array]:
  """The random settings `make_cell(key, label, background, size=size)` used.

  The counterpart of the original's `variables` dict: useful to check the
  geometry of a sample or to condition analyses on it. Lengths are in pixels
  of the `size` image (already scaled by `size / 512`).

  Args:
    key: the key given to `make_cell`.
    label: int scalar in 0..9 (may be traced).
    size: side length, 32..1024.

  Returns:
    dict of scalars: `angle` (degrees, counter-clockwise as displayed),
    `centre_row`, `centre_col` (float32, where the object's centre lands in the
    image), `offset1`, `offset2` (int32), `radius`, `stretch`, `thickness`,
    `bar`, `pole`, `tail`, `rect_h`, `rect_w` (float32) and `border_rgb`,
    `inner_rgb` (float32[3]). Fields a class does not use are still drawn.

  Raises:
    ValueError: for a concrete label outside 0..9 or a bad size.
  """
  size = _check_size(size)
  _check_values(label, "label", NUM_CLASSES, CLASS_NAMES)
  return _cell_settings(key, label, size)
