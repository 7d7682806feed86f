"""Tests of the synthetic cell generator `xai_jax.data.cells` and its gallery.

References: a plain numpy/skimage/scipy port of the original generator
(`ericotjo001/explainable_ai`, `xai_basic/legacy/srcV1/pipeline/objgen`) fed with the same random settings, skimage's `resize`
and `rotate` for the helpers, and closed-form properties of each class.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.transform import resize as sk_resize
from skimage.transform import rotate as sk_rotate

from xai_jax.data import cells
from xai_jax.pipelines import cells_gallery
from xai_jax.reports import gallery

SIZE = 256                 # test size: lengths are half those of the 512 original
PER_CLASS = 6              # samples of each class in the shared batch
BATCH_KEY = 2024


@functools.lru_cache(maxsize=None)
def _jit_cell(size):
  return jax.jit(functools.partial(cells.make_cell, size=size))


EXTRA_TAILS = 12           # more samples of the tail classes (tails cut by the edge)


@pytest.fixture(scope="module")
def batch():
  """72 samples at 256: first class i % 10, background (i // 10) % 3; then 12
  more of classes 6, 7, 8."""
  n = 10 * PER_CLASS + EXTRA_TAILS
  labels = np.concatenate([np.arange(10 * PER_CLASS) % 10, 6 + np.arange(EXTRA_TAILS) % 3])
  backgrounds = (np.arange(n) // 10) % 3
  out = cells.make_batch(jax.random.key(BATCH_KEY), n, size=SIZE, labels=labels,
                         backgrounds=backgrounds)
  out = {k: np.asarray(v) for k, v in out.items()}
  # The per-sample keys, as documented in make_batch.
  out["keys"] = jax.random.split(jax.random.split(jax.random.key(BATCH_KEY), 3)[2], n)
  return out


@pytest.fixture(scope="module")
def settings(batch):
  """Public `cell_settings` of each sample, plus (under "internal") the full
  internal settings with noise fields, for the numpy port."""

  def both(key, label):
    internal = cells._settings(cells._accepted_key(jax.random.split(key)[0], label, SIZE),
                               label, SIZE)
    return cells.cell_settings(key, label, size=SIZE), internal

  public, internal = jax.jit(jax.vmap(both))(batch["keys"], batch["label"])
  out = {k: np.asarray(v) for k, v in public.items()}
  out["internal"] = {k: np.asarray(v) for k, v in internal.items()}
  return out


def _indices(batch, label, background=None):
  keep = batch["label"] == label
  if background is not None:
    keep &= batch["background"] == background
  return np.nonzero(keep)[0]


def _touches_edge(heatmap):
  nonzero = heatmap > 0
  return nonzero[0].any() or nonzero[-1].any() or nonzero[:, 0].any() or nonzero[:, -1].any()


def _components(mask, min_pixels=10):
  """Connected components (4-connectivity) of at least `min_pixels` pixels.

  Noise and the thresholds after bilinear rotation can leave specks of a few
  pixels next to a thin tail or bar; they are not separate features.
  """
  labelled, count = ndi.label(mask)
  return int((np.bincount(labelled.ravel(), minlength=count + 1)[1:] >= min_pixels).sum())


def _outside(heatmap, margin=2):
  """Pixels away from the object (its heatmap support dilated by `margin`)."""
  return ~ndi.binary_dilation(heatmap > 0, iterations=margin)


# ---------------------------------------------------------------------------
# Helpers against skimage / scipy.


@pytest.mark.slow
@pytest.mark.parametrize("cells_per_side,size", [(8, 32), (13, 100), (16, 224), (11, 1024)])
def test_resize_matches_skimage(cells_per_side, size):
  rng = np.random.default_rng(cells_per_side)
  grid = rng.normal(size=(cells_per_side, cells_per_side))
  padded = np.zeros((16, 16), np.float32)
  padded[:cells_per_side, :cells_per_side] = grid
  ours = np.asarray(cells._resize_grids(jnp.asarray(padded), jnp.int32(cells_per_side), size))
  np.testing.assert_allclose(ours, sk_resize(grid, (size, size)), atol=2e-5)


def test_resize_mirror_edges_example_of_the_spec():
  grid = np.zeros((16, 16), np.float32)
  grid[0, 1] = 1.0
  grid[1, 1] = 1.0   # rows equal: a [0, 1] ramp along columns, as in the spec
  row = np.asarray(cells._resize_grids(jnp.asarray(grid), jnp.int32(2), 8))[0]
  np.testing.assert_allclose(row, [.375, .125, .125, .375, .625, .875, .875, .625], atol=1e-6)


@pytest.mark.parametrize("angle,shift_rows,shift_cols,size,bits_per_pixel", [
    (30.0, 0, 0, 48, 3), (-47.3, 5, -9, 48, 1), (0.0, 0, 0, 47, 3), (59.9, -20, 13, 47, 1),
    (-60.0, 31, 31, 48, 3), (45.0, -3, 2, 33, 3), (-12.5, 0, 0, 33, 1)])
def test_rotate_shift_matches_skimage_rotate_then_scipy_shift(angle, shift_rows, shift_cols,
                                                              size, bits_per_pixel):
  masks = np.random.default_rng(size).random((size, size, bits_per_pixel)) > 0.6
  masks[:, :3] = True   # content at the edge exercises the fill-0 interpolation
  bits = sum(masks[..., c].astype(np.int32) << c for c in range(bits_per_pixel))
  derive = lambda b: tuple((b >> c) & 1 > 0 for c in range(bits_per_pixel))
  rotate = jax.jit(cells._rotate_shift, static_argnums=1, static_argnames="bits_per_pixel")
  ours = np.asarray(rotate(jnp.asarray(bits), derive, jnp.float32(angle), shift_rows,
                           shift_cols, bits_per_pixel=bits_per_pixel))
  reference = ndi.shift(sk_rotate(masks.astype(np.float64), angle),
                        (shift_rows, shift_cols, 0))
  np.testing.assert_allclose(ours, reference, atol=2e-5)


# ---------------------------------------------------------------------------
# Whole objects against a numpy port of the original.


def _reference_object(p, label, size):
  """The original's CCellX/CCellMX/CCellPX/RCellX/CCellTX/CCellTsX, in numpy.

  `p` holds the settings and noise fields drawn by `cells._settings`; lengths
  are already in pixels of `size`. Returns (image float64[S, S, 3], heatmap).
  """
  p = {k: np.asarray(v, np.float64) for k, v in p.items()}
  centre = size // 2
  x, y = np.meshgrid(np.arange(size) - centre, np.arange(size) - centre)
  border_rgb, inner_rgb = p["border_rgb"], p["inner_rgb"]
  off1, off2 = int(p["offset1"]), int(p["offset2"])

  def col(mask, rgb):
    return mask.astype(np.float64)[..., None] * rgb

  def rot(a):
    return sk_rotate(a, float(p["angle"]))

  def move(a):
    return ndi.shift(rot(a), (off1, off2, 0))   # cubic spline, integer shift

  def strength(part):
    return 1 / 3 * np.sum(part**2, axis=2)**0.5

  if label == 9:
    return np.zeros((size, size, 3)), np.zeros((size, size))
  if label in (3, 4, 5):
    xr = x + p["n_x"] - off1
    yr = y + p["n_x"] - off2          # the same noise field for both axes
    half_w, half_h, t = int(p["rect_w"] / 2), int(p["rect_h"] / 2), p["thickness"]
    outer = (xr <= half_w) * (xr >= -half_w) * (yr >= -half_h) * (yr <= half_h)
    inner = ((xr <= half_w - t) * (xr >= -half_w + t) * (yr >= -half_h + t)
             * (yr <= half_h - t))
    border = np.clip(outer.astype(float) - inner.astype(float), 0, 1)
    border, inner = col(border, border_rgb), col(inner, inner_rgb)
    rect = np.clip(rot(border + inner), 0, 1)
    border, inner = np.clip(rot(border), 0, 1), np.clip(rot(inner), 0, 1)
    e_border = strength(border) > 0.05
    e_inner = (strength(inner) > 0.05) * (1 - e_border)
    return rect, e_border * 0.9 + e_inner * 0.4
  r, s, t = p["radius"], p["stretch"], p["thickness"]
  d = (x**2 + (y / s)**2)**0.5 + p["n_dist"]
  border = col((d <= r) * (d >= r - t), border_rgb)
  inner = col(d < r - t, inner_rgb)
  ball = border + inner
  if label == 0:
    ball, border, inner = (np.clip(move(a), 0, 1) for a in (ball, border, inner))
    e_border = strength(border) > 0.05
    e_inner = (strength(inner) > 0.05) * (1 - e_border)
    return ball, e_border * 0.9 + e_inner * 0.4
  xp, yp = x + p["n_x"], y + p["n_y"]
  if label in (1, 2):
    feature = (xp <= r) * (xp >= -r) * (yp <= int(p["bar"] / 2)) * (yp >= -int(p["bar"] / 2))
    if label == 2:
      pole = ((yp <= r * s) * (yp >= -r * s) * (xp <= int(p["pole"] / 2))
              * (xp >= -int(p["pole"] / 2)))
      feature = feature + pole * (pole > 0) * ((1 - feature) > 0)
    feature_rgb = border_rgb
  else:
    angles = {6: [0.0], 7: [0.0, 120.0, 240.0], 8: [45.0 * i for i in range(8)]}[label]
    feature = 0
    for angle in np.deg2rad(angles):
      x1 = np.cos(angle) * xp - np.sin(angle) * yp
      y1 = np.sin(angle) * xp + np.cos(angle) * yp
      feature = feature + ((x1 <= p["tail"] / 2) * (x1 >= -p["tail"] / 2)
                           * (y1 >= 0.8 * s * r) * (y1 <= 1.5 * r * s + t))
    feature_rgb = np.clip(border_rgb * 0.75, 0, 1)
  position = col(feature > 0, np.ones(3))
  feature = col(feature, feature_rgb)
  ball = ball * (1 - position) + feature
  ball, border, inner, feature = (move(a) for a in (ball, border, inner, feature))
  ball, border, inner, feature = (np.clip(a, 0, 1) for a in (ball, border, inner, feature))
  explanation = np.maximum(strength(border) > 0.05, strength(inner) > 0.05)
  e_feature = strength(feature) > 0.05
  return ball, explanation * (1 - e_feature) * 0.4 + e_feature * 0.9


@pytest.mark.slow
def test_objects_match_a_numpy_port_of_the_original(batch, settings):
  """Every class on the black background equals the original's algorithm.

  The port draws nothing: it takes the settings and noise fields that the JAX
  generator drew for the sample. float32 vs float64 may flip the odd pixel
  whose strength lies within rounding of the 0.05 threshold.
  """
  for i in np.nonzero(batch["background"] == 0)[0][:10]:   # one of each class
    label = int(batch["label"][i])
    p = {k: v[i] for k, v in settings["internal"].items()}
    image, heatmap = _reference_object(p, label, SIZE)
    mismatch = batch["heatmap"][i] != heatmap.astype(np.float32)
    assert mismatch.mean() < 5e-4, (label, mismatch.sum())
    close = np.abs(batch["image"][i] - image) < 1e-4
    assert close.all(axis=-1)[~mismatch].mean() > 0.9995, label


# ---------------------------------------------------------------------------
# Distinguishing features in the heatmaps.


def test_heatmap_values_and_image_range(batch):
  assert batch["image"].dtype == np.float32 and batch["heatmap"].dtype == np.float32
  assert batch["image"].shape == (10 * PER_CLASS + EXTRA_TAILS, SIZE, SIZE, 3)
  assert batch["label"].dtype == np.int32 and batch["background"].dtype == np.int32
  assert set(np.unique(batch["heatmap"]).tolist()) == {0.0, np.float32(0.4), np.float32(0.9)}
  assert batch["image"].min() >= 0.0 and batch["image"].max() <= 1.0


def test_class_9_is_empty(batch):
  for i in _indices(batch, 9):
    assert not batch["heatmap"][i].any()
    if batch["background"][i] == 0:
      assert not batch["image"][i].any()


@pytest.mark.parametrize("label", [0, 3, 4, 5])
def test_border_classes_have_a_feature_ring_around_the_body(label, batch):
  for i in _indices(batch, label):
    heatmap = batch["heatmap"][i]
    feature, body = heatmap == 0.9, heatmap == np.float32(0.4)
    assert feature.sum() > 50 and body.sum() > 50
    # The body never touches the outside: the 0.9 ring lies between them.
    assert not (ndi.binary_dilation(body) & (heatmap == 0)).any()
    nonzero = heatmap > 0
    if not _touches_edge(heatmap):
      np.testing.assert_array_equal(ndi.binary_fill_holes(feature), nonzero)
      assert _components(feature) == 1


def _cell_frame(batch, settings, i, mask):
  """Pixel coordinates of `mask` in the un-rotated frame of sample i's object."""
  rows, cols = np.nonzero(mask)
  theta = np.deg2rad(settings["angle"][i])
  d_row, d_col = rows - settings["centre_row"][i], cols - settings["centre_col"][i]
  u = np.cos(theta) * d_col - np.sin(theta) * d_row
  v = np.sin(theta) * d_col + np.cos(theta) * d_row
  return u, v


def test_bar_class_1_feature_is_a_bar_across_the_cell(batch, settings):
  for i in _indices(batch, 1):
    feature = batch["heatmap"][i] == 0.9
    assert _components(feature) == 1
    u, v = _cell_frame(batch, settings, i, feature)
    r, s = settings["radius"][i], settings["stretch"][i]
    # Along the bar: it crosses the cell; across: it stays near the axis.
    if not _touches_edge(batch["heatmap"][i]):
      assert u.max() - u.min() > 1.5 * r
    assert np.abs(v).max() < 0.6 * r * s
    # Border and body are localisation only.
    assert (batch["heatmap"][i] == np.float32(0.4)).sum() > 2 * feature.sum()


def test_plus_class_2_feature_is_a_bar_and_a_pole(batch, settings):
  for i in _indices(batch, 2):
    feature = batch["heatmap"][i] == 0.9
    assert _components(feature) == 1
    u, v = _cell_frame(batch, settings, i, feature)
    r, s = settings["radius"][i], settings["stretch"][i]
    assert np.abs(u).max() > 0.8 * r        # bar arms
    assert np.abs(v).max() > 0.8 * r * s    # pole arms


@pytest.mark.parametrize("label,tails", [(6, 1), (7, 3), (8, 8)])
def test_tail_classes_have_separate_tails(label, tails, batch, settings):
  inside = 0
  for i in _indices(batch, label):
    feature = batch["heatmap"][i] == 0.9
    count = _components(feature)
    if _touches_edge(batch["heatmap"][i]):
      assert 1 <= count <= tails, i   # a tail may leave the image
      continue
    inside += 1
    assert count == tails, i
    u, v = _cell_frame(batch, settings, i, feature)
    r, s = settings["radius"][i], settings["stretch"][i]
    # Tails start inside at 0.8 r s and reach out to 1.5 r s + t.
    distance = np.hypot(u, v)
    assert distance.min() > 0.8 * r * s - 6 * SIZE / 512 * 12
    if label == 6:   # one tail, pointing down (+v) in the cell's frame
      assert np.median(v) > 0.8 * r * s
  assert inside >= 3


def test_rectangle_border_colour_is_dominated_by_its_channel(batch):
  for label, channel in [(3, 0), (4, 1), (5, 2)]:
    for i in _indices(batch, label):
      border = batch["heatmap"][i] == 0.9
      mean = batch["image"][i][border].mean(axis=0)
      assert mean.argmax() == channel
      if batch["background"][i] == 0:   # elsewhere, dark channels take the background
        assert mean[channel] > 0.45 and np.delete(mean, channel).max() < 0.2


def test_round_cells_have_light_border_and_bluish_inside(batch):
  for label in (0, 1, 2, 6, 7, 8):
    for i in _indices(batch, label, background=0):
      image, heatmap = batch["image"][i], batch["heatmap"][i]
      inside = ndi.binary_erosion(heatmap == np.float32(0.4), iterations=2)
      inside &= image.max(-1) < 0.6   # not bar / tail / border
      blue_minus_red = image[inside][:, 2] - image[inside][:, 0]
      assert np.median(blue_minus_red) > 0.0


@pytest.mark.slow
def test_class_0_nonzero_fraction_close_to_analytic():
  """Non-zero heatmap fraction of class 0 at 512.

  Analytic area: pi E[r^2] E[s] / 512^2 = pi (100^2 + 20^2 / 12) / 262144 = 0.1202.
  Cells cut by the image edge lower it, the 0.05 threshold after bilinear
  rotation raises it a little; the spec measured 0.117 on the original. Over
  256 samples (keys 100..103) this generator gives mean 0.1198, per-image
  standard deviation 0.038 (from r, s and clipping). With n = 48 the standard
  error is about 0.005: the test asks for the mean within 3 measured standard
  errors of both 0.117 (the original) and 0.1202 (analytic), and for the
  spread to be in the expected range.
  """
  n = 48
  out = cells.make_batch(jax.random.key(7), n, size=512, labels=0, backgrounds=0)
  fractions = np.asarray((out["heatmap"] > 0).mean(axis=(1, 2)))
  standard_error = fractions.std(ddof=1) / np.sqrt(n)
  assert 0.02 < fractions.std(ddof=1) < 0.06
  assert abs(fractions.mean() - 0.117) < 3 * standard_error, (fractions.mean(), standard_error)
  assert abs(fractions.mean() - 0.1202) < 3 * standard_error


# ---------------------------------------------------------------------------
# Backgrounds.


def test_background_none_is_black_outside_the_object(batch):
  for i in np.nonzero(batch["background"] == 0)[0]:
    assert not batch["image"][i][_outside(batch["heatmap"][i])].any()


def test_background_blotches_are_smooth_and_in_range(batch):
  for i in np.nonzero(batch["background"] == 1)[0]:
    image, outside = batch["image"][i], _outside(batch["heatmap"][i])
    values = image[outside]
    assert values.min() >= 0.2 - 1e-6 and values.max() <= 0.7 + 1e-6
    # Bilinear upsampling of an 8x8 grid of values in [0.2, 0.7]: neighbouring
    # pixels differ by at most 0.5 / (SIZE / 8).
    both = outside[:, 1:] & outside[:, :-1]
    step = np.abs(np.diff(image, axis=1))[both]
    assert step.max() <= 0.5 / (SIZE / 8) + 1e-5
    # The three channels are independent draws.
    assert np.abs(values[:, 0] - values[:, 1]).max() > 0.05


def test_background_rings_are_in_range_and_oscillate(batch):
  for i in np.nonzero(batch["background"] == 2)[0]:
    image, outside = batch["image"][i], _outside(batch["heatmap"][i])
    values = image[outside]
    assert values.min() >= 0.0 and values.max() <= 0.5 + 1e-6
    for channel in range(3):
      # At least one full period of 0.5 (0.5 sin + 0.5) over the image.
      assert values[:, channel].max() - values[:, channel].min() > 0.3
  # Far less smooth than the blotches: larger neighbour steps somewhere.
  i = np.nonzero(batch["background"] == 2)[0][0]
  assert np.abs(np.diff(batch["image"][i], axis=1)).max() > 0.5 / (SIZE / 8)


@pytest.mark.slow
def test_background_matches_numpy_formula():
  """bg 1 and 2 from the same random draws, recomputed with skimage's resize."""
  size = 64
  key = jax.random.key(3)
  blotches = np.asarray(cells._background(key, jnp.int32(1), size))
  rings = np.asarray(cells._background(key, jnp.int32(2), size))
  draws = {k: np.asarray(v, np.float64) for k, v in cells._background_draws(key, size).items()}
  bx, by = draws["centre"]
  assert size // 4 <= bx < 3 * size // 4 and size // 4 <= by < 3 * size // 4
  assert draws["blotches"].shape == (3, 8, 8) and draws["rings"].shape == (3, 16, 16)
  centre = size // 2
  x, y = np.meshgrid(np.arange(size) - centre, np.arange(size) - centre)
  dd = ((x - bx)**2 + (y - by)**2)**0.5
  grids, ring_grids = draws["blotches"], draws["rings"]
  stretch = draws["stretch"] * 512 / size
  for c in range(3):
    np.testing.assert_allclose(blotches[..., c], sk_resize(grids[c], (size, size)), atol=1e-5)
    n = sk_resize(ring_grids[c], (size, size))
    expected = 0.5 * (0.5 * np.sin(stretch[c] * (dd + n * dd) * 180 / np.pi) + 0.5)
    np.testing.assert_allclose(rings[..., c], expected, atol=1e-4)
  np.testing.assert_array_equal(np.asarray(cells._background(key, jnp.int32(0), size)), 0.0)


@pytest.mark.slow
def test_background_fills_only_dark_channels():
  """Per channel: background goes where the cell's channel is below 0.01."""
  key = jax.random.key(11)
  for label in (3, 0):
    cell, _ = _jit_cell(32)(key, label, 0)
    image, _ = _jit_cell(32)(key, label, 1)
    cell, image = np.asarray(cell), np.asarray(image)
    dark = cell < 0.01
    np.testing.assert_array_equal(image[~dark], cell[~dark])
    assert (image[dark] >= 0.2 - 1e-6).all()


# ---------------------------------------------------------------------------
# JAX behaviour: jit, vmap, determinism, traced arguments, sizes, errors.


@pytest.mark.slow
def test_jit_equals_eager():
  key = jax.random.key(5)
  jitted = _jit_cell(32)(key, 6, 2)
  eager = cells.make_cell(key, 6, 2, size=32)   # op by op
  # Different fusion, different float32 rounding: tiny differences only.
  np.testing.assert_allclose(np.asarray(jitted[0]), np.asarray(eager[0]), atol=1e-5)
  mismatch = np.asarray(jitted[1]) != np.asarray(eager[1])
  assert mismatch.mean() < 2e-3
  assert set(np.unique(np.asarray(eager[1])).tolist()) <= {0.0, np.float32(0.4), np.float32(0.9)}


@pytest.mark.slow
def test_vmap_equals_loop_and_same_key_same_bytes(tmp_path):
  # The gallery runs make_batch (jit of vmap(make_cell), traced labels/backgrounds).
  png, npz = cells_gallery.run(tmp_path, size=32, seed=4)
  assert (tmp_path / "cells_gallery.png").stat().st_size > 1000
  saved = np.load(npz)
  assert saved["images"].shape == (30, 32, 32, 3) and saved["heatmaps"].shape == (30, 32, 32)
  np.testing.assert_array_equal(saved["labels"], np.arange(30) % 10)
  np.testing.assert_array_equal(saved["backgrounds"], np.arange(30) // 10)
  keys = jax.random.split(jax.random.split(jax.random.key(4), 3)[2], 30)
  for i in (0, 6, 13, 17, 25, 29):
    image, heatmap = _jit_cell(32)(keys[i], i % 10, i // 10)
    np.testing.assert_allclose(saved["images"][i], np.asarray(image), atol=1e-6)
    assert (saved["heatmaps"][i] != np.asarray(heatmap)).mean() < 2e-3
  again = cells_gallery.gallery_samples(jax.random.key(4), size=32)
  assert again["images"].tobytes() == saved["images"].tobytes()
  assert again["heatmaps"].tobytes() == saved["heatmaps"].tobytes()
  assert png.endswith("cells_gallery.png")


@pytest.mark.slow
def test_same_key_identical_bytes_and_different_keys_differ():
  a = _jit_cell(32)(jax.random.key(1), 7, 1)
  b = _jit_cell(32)(jax.random.key(1), 7, 1)
  c = _jit_cell(32)(jax.random.key(2), 7, 1)
  assert np.asarray(a[0]).tobytes() == np.asarray(b[0]).tobytes()
  assert np.asarray(a[1]).tobytes() == np.asarray(b[1]).tobytes()
  assert np.asarray(a[0]).tobytes() != np.asarray(c[0]).tobytes()


@pytest.mark.slow
def test_make_batch_draws_labels_uniformly_and_matches_make_cell():
  n = 30   # as the gallery: the same compiled batch function
  out = cells.make_batch(jax.random.key(0), n, size=32)
  labels = np.asarray(out["label"])
  k_labels, k_backgrounds, k_cells = jax.random.split(jax.random.key(0), 3)
  np.testing.assert_array_equal(labels, np.asarray(jax.random.randint(k_labels, (n,), 0, 10)))
  np.testing.assert_array_equal(np.asarray(out["background"]),
                                np.asarray(jax.random.randint(k_backgrounds, (n,), 0, 3)))
  image, _ = _jit_cell(32)(jax.random.split(k_cells, n)[3], labels[3],
                           np.asarray(out["background"])[3])
  np.testing.assert_allclose(np.asarray(out["image"][3]), np.asarray(image), atol=1e-6)
  many = np.asarray(jax.random.randint(k_labels, (20000,), 0, 10))
  assert np.abs(np.bincount(many, minlength=10) / 20000 - 0.1).max() < 0.01


@pytest.mark.slow
def test_size_1024_one_image():
  image, heatmap = _jit_cell(1024)(jax.random.key(0), 8, 2)
  assert image.shape == (1024, 1024, 3) and heatmap.shape == (1024, 1024)
  assert 1 <= _components(np.asarray(heatmap) == 0.9, min_pixels=40) <= 8
  assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0


@pytest.mark.parametrize("call,message", [
    (lambda: cells.make_cell(jax.random.key(0), 10, 0), "label"),
    (lambda: cells.make_cell(jax.random.key(0), -1, 0), "label"),
    (lambda: cells.make_cell(jax.random.key(0), 0, 3), "background"),
    (lambda: cells.make_cell(jax.random.key(0), 0, 0, size=31), "size"),
    (lambda: cells.make_cell(jax.random.key(0), 0, 0, size=1025), "size"),
    (lambda: cells.make_cell(jax.random.key(0), 1.5, 0), "label"),
    (lambda: cells.make_batch(jax.random.key(0), 0), "n"),
    (lambda: cells.make_batch(jax.random.key(0), 2, labels=[0, 12]), "labels"),
    (lambda: cells.make_batch(jax.random.key(0), 2, labels=[0, 1, 2]), "labels"),
    (lambda: cells.make_batch(jax.random.key(0), 2, backgrounds=np.array([0, 5])), "backgrounds"),
    (lambda: cells.make_batch(jax.random.key(0), 2, size=16), "size"),
])
def test_invalid_arguments_raise(call, message):
  with pytest.raises(ValueError, match=message):
    call()


def test_heatmap_to_rgb_colours():
  rgb = gallery.heatmap_to_rgb(np.array([[0.0, 0.4, 0.9]], np.float32))
  np.testing.assert_allclose(rgb[0, 0], [1, 1, 1])
  assert rgb[0, 2].sum() < rgb[0, 1].sum() < 3   # dark red darker than light red
  assert rgb[0, 1, 0] > rgb[0, 1, 2] and rgb[0, 2, 0] > rgb[0, 2, 2]
  with pytest.raises(ValueError, match="heatmap"):
    gallery.heatmap_to_rgb(np.array([0.5]))
  # The palette has a colour for each value the generator writes.
  np.testing.assert_allclose(tuple(gallery.HEATMAP_COLORS), cells.HEATMAP_VALUES, atol=1e-6)


def test_gallery_figure_titles_from_the_given_names():
  images = np.zeros((2, 8, 8, 3), np.float32)
  heatmaps = np.zeros((2, 8, 8), np.float32)
  named = cells_gallery.gallery_figure(
      {"images": images, "heatmaps": heatmaps, "labels": np.array([3, 7]),
       "backgrounds": np.array([2, 2])})
  assert [a.get_title() for a in named.axes[:2]] == [f"3 {cells.CLASS_NAMES[3]}",
                                                     f"7 {cells.CLASS_NAMES[7]}"]
  assert named.axes[0].get_ylabel() == f"image\nbg 2 {cells.BACKGROUND_NAMES[2]}"
  bare = gallery.gallery_figure(images, heatmaps, [3, 7], [2, 2])
  assert [a.get_title() for a in bare.axes[:2]] == ["3", "7"]
  assert bare.axes[0].get_ylabel() == "image\nbg 2"
  with pytest.raises(ValueError, match="class_names has 2 names"):
    gallery.gallery_figure(images, heatmaps, [3, 7], [2, 2], class_names=("a", "b"))
