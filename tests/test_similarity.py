"""Similarity measures of the sanity checks: calibration (Adebayo et al. 2018, appendix)."""

import numpy as np
import pytest
import scipy.ndimage
import scipy.stats
import skimage.feature
import skimage.metrics

from xai_jax.metrics import similarity


def _random_maps(seed, shape=(6, 64, 64, 3)):
  return np.random.default_rng(seed).normal(size=shape)


def test_grayscale_matches_the_reference_formula_on_one_map():
  attributions = _random_maps(0, (1, 10, 10, 3))
  image_2d = np.abs(attributions[0]).sum(-1)
  vmax, vmin = np.percentile(image_2d, 99), image_2d.min()
  expected = np.clip((image_2d - vmin) / (vmax - vmin), 0, 1)
  np.testing.assert_allclose(similarity.grayscale(attributions)[0], expected)


def test_diverging_matches_the_reference_formula_on_one_map():
  attributions = _random_maps(1, (1, 10, 10, 3))
  image_2d = attributions[0].sum(-1)
  span = abs(np.percentile(image_2d, 99))
  expected = np.clip((image_2d + span) / (2 * span), -1, 1)
  np.testing.assert_allclose(similarity.diverging(attributions)[0], expected)


def test_spearman_equals_scipy_on_the_visualised_maps():
  a, b = _random_maps(2), _random_maps(3)
  b = a + 0.5 * b  # correlated, so the value is far from 0
  got = similarity.spearman(a, b, absolute=True)
  for i in range(len(a)):
    expected = scipy.stats.spearmanr(similarity.grayscale(a[i:i + 1]).ravel(),
                                     similarity.grayscale(b[i:i + 1]).ravel()).statistic
    assert got[i] == pytest.approx(expected, abs=1e-12)
  assert np.all(got > 0.5)


def _structured_maps(seed, shape):
  """Smooth blobs plus noise, each channel on its own scale: `b` is `a` shifted, with other
  noise, so SSIM and HOG land well inside (0, 1) rather than at 0 or 1."""
  rng = np.random.default_rng(seed)
  n, h, w = shape[:3]
  yy, xx = np.mgrid[:h, :w]
  blobs = np.zeros((n, h, w))
  for i in range(n):
    for cy, cx, r in rng.uniform([0, 0, 3], [h, w, h / 4], size=(4, 3)):
      blobs[i] += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
  if len(shape) == 4:  # channels on different scales: per-channel scaling would differ
    blobs = blobs[..., None] * np.array([1.0, -3.0, 0.2])[: shape[3]]
  a = blobs + 0.2 * rng.normal(size=blobs.shape)
  b = np.roll(blobs, (2, 3), axis=(1, 2)) + 0.2 * rng.normal(size=blobs.shape)
  return a, b


def _min_max_whole_map(m):
  """The documented SSIM preprocessing: one min-max over all pixels and channels."""
  return (m - m.min()) / (m.max() - m.min())


def _ssim_wang(x, y, *, data_range, sigma=1.5):
  """Wang et al. (2004) SSIM with a Gaussian window, written out: the local means,
  variances and covariance are Gaussian-weighted (11 taps, reflected borders) with the
  sample-covariance factor N / (N - 1), N = 11 * 11, as scikit-image's default; the map is
  averaged away from the 5-pixel border and over channels."""
  def filt(v):
    return scipy.ndimage.gaussian_filter(v, sigma=(sigma, sigma, 0), truncate=3.5,
                                         mode="reflect")
  mx, my = filt(x), filt(y)
  norm = 121 / 120
  vx, vy = norm * (filt(x * x) - mx * mx), norm * (filt(y * y) - my * my)
  vxy = norm * (filt(x * y) - mx * my)
  c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
  s = ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
  return s[5:-5, 5:-5].mean()


@pytest.mark.parametrize("shape", [(3, 40, 36, 3), (2, 32, 32)])
@pytest.mark.parametrize("data_range", [1.0, 2.0])
def test_ssim_equals_scikit_image_and_the_formula_on_min_max_scaled_maps(shape, data_range):
  a, b = _structured_maps(10, shape)
  got = similarity.ssim(a, b, data_range=data_range)
  a3 = a if a.ndim == 4 else a[..., None]
  b3 = b if b.ndim == 4 else b[..., None]
  expected = [skimage.metrics.structural_similarity(
      _min_max_whole_map(x), _min_max_whole_map(y), gaussian_weights=True, sigma=1.5,
      data_range=data_range, channel_axis=-1) for x, y in zip(a3, b3)]
  np.testing.assert_allclose(got, expected, rtol=1e-12)
  formula = [_ssim_wang(_min_max_whole_map(x), _min_max_whole_map(y), data_range=data_range)
             for x, y in zip(a3, b3)]
  np.testing.assert_allclose(got, formula, rtol=1e-9)
  assert np.all((got > 0.05) & (got < 0.95)), got  # an informative value, not 0 or 1
  if a.ndim == 4:  # the scaling is over the whole mask: per-channel scaling differs
    per_channel = [skimage.metrics.structural_similarity(
        (x - x.min((0, 1))) / np.ptp(x, (0, 1)), (y - y.min((0, 1))) / np.ptp(y, (0, 1)),
        gaussian_weights=True, sigma=1.5, data_range=data_range, channel_axis=-1)
        for x, y in zip(a3, b3)]
    assert np.min(np.abs(got - np.array(per_channel))) > 1e-3


def _diverging_reference(m):
  """PAIR's VisualizeImageDiverging: signed channel sum over the 99th-percentile span."""
  m = m.sum(-1) if m.ndim == 3 else m
  span = abs(np.percentile(m, 99))
  return np.clip((m + span) / (2 * span), -1, 1)


@pytest.mark.parametrize("shape", [(3, 64, 80, 3), (2, 48, 48)])
def test_hog_equals_scikit_image_on_the_diverging_maps(shape):
  a, b = _structured_maps(11, shape)
  features = [[skimage.feature.hog(_diverging_reference(m), orientations=9,
                                   pixels_per_cell=(16, 16), cells_per_block=(3, 3),
                                   block_norm="L2-Hys", feature_vector=True) for m in maps]
              for maps in (a, b)]
  pearson = [np.corrcoef(fa, fb)[0, 1] for fa, fb in zip(*features)]
  spearman = [scipy.stats.spearmanr(fa, fb).statistic for fa, fb in zip(*features)]
  got = similarity.hog(a, b)
  np.testing.assert_allclose(got, pearson, rtol=1e-12)
  np.testing.assert_allclose(similarity.hog(a, b, correlation="spearman"), spearman,
                             rtol=1e-12)
  assert np.all((got > 0.05) & (got < 0.95)), got
  np.testing.assert_allclose(similarity.hog_features(np.stack([_diverging_reference(m)
                                                               for m in a])),
                             np.stack(features[0]), rtol=1e-12)


@pytest.mark.parametrize("measure", similarity.MEASURES)
def test_a_map_is_identical_to_itself(measure):
  maps = _random_maps(4)
  values = similarity.similarities(maps, maps, measures=(measure,))[measure]
  np.testing.assert_allclose(values, 1.0, atol=1e-9)


@pytest.mark.parametrize("measure, shape, tolerance", [
    # Rank correlations of 12288 independent values: standard error 0.009 per image.
    ("spearman_abs", (6, 64, 64, 3), 0.03),
    ("spearman_signed", (6, 64, 64, 3), 0.03),
    # SSIM of independent maps is small but positive (the stabilising constant C2 over
    # the local variances): measured 0.02-0.03 here.
    ("ssim", (6, 64, 64, 3), 0.05),
    # HOG descriptors share the pixel grid's orientation bias, so independent maps
    # correlate weakly: the paper's calibration reports 0.078 for uniform masks at
    # 299x229, and we measure 0.03-0.10 at 224x224.
    ("hog", (6, 224, 224), 0.1),
])
def test_two_independent_random_maps_are_near_zero(measure, shape, tolerance):
  rng = np.random.default_rng(5)
  a, b = rng.uniform(-1, 1, size=shape), rng.uniform(-1, 1, size=shape)
  values = similarity.similarities(a, b, measures=(measure,))[measure]
  assert abs(values.mean()) < tolerance, values


def test_ssim_with_the_reference_data_range_is_larger_on_random_maps():
  a, b = _random_maps(5), _random_maps(6)
  assert np.all(similarity.ssim(a, b, data_range=2.0) > similarity.ssim(a, b))


def test_signed_spearman_sees_a_sign_flip_that_absolute_spearman_ignores():
  maps = _random_maps(7)
  assert np.all(similarity.spearman(maps, -maps, absolute=True) > 0.99)
  assert np.all(similarity.spearman(maps, -maps, absolute=False) < -0.9)


def test_two_dimensional_maps_are_accepted():
  maps = _random_maps(8, (2, 48, 48))
  assert similarity.hog(maps, maps).shape == (2,)
  assert similarity.ssim(maps, maps).shape == (2,)


@pytest.mark.parametrize("a, b, match", [
    (np.zeros((2, 8, 8)), np.zeros((2, 8, 9)), "same shape"),
    (np.zeros((8, 8)), np.zeros((8, 8)), r"float\[N, H, W\]"),
    (np.full((1, 8, 8), np.nan), np.zeros((1, 8, 8)), "NaN"),
])
def test_bad_input_is_rejected_with_a_clear_message(a, b, match):
  with pytest.raises(ValueError, match=match):
    similarity.spearman(a, b)


def test_hog_on_maps_smaller_than_a_block_raises():
  with pytest.raises(ValueError, match="HOG needs"):
    similarity.hog(np.zeros((1, 32, 32)), np.zeros((1, 32, 32)))


def test_unknown_measure_lists_the_valid_ones():
  with pytest.raises(ValueError, match="spearman_abs"):
    similarity.similarities(np.zeros((1, 8, 8)), np.zeros((1, 8, 8)), measures=("pearson",))


@pytest.mark.parametrize("side", [7, 8, 10])
def test_ssim_on_maps_smaller_than_the_11_pixel_window_names_the_size_and_the_minimum(side):
  # scikit-image itself would fail here with "ensure that your images are at least 7x7".
  a, b = _random_maps(11, (2, side, side + 3, 3)), _random_maps(12, (2, side, side + 3, 3))
  with pytest.raises(ValueError, match="win_size exceeds image extent"):
    skimage.metrics.structural_similarity(a[0], b[0], gaussian_weights=True, sigma=1.5,
                                          data_range=1.0, channel_axis=-1)
  message = rf"11x11 Gaussian window and needs maps of at least 11x11 pixels; got {side}x"
  with pytest.raises(ValueError, match=message):
    similarity.ssim(a, b)
  with pytest.raises(ValueError, match=message):
    similarity.similarities(a, b, measures=("ssim",))


@pytest.mark.parametrize("sigma, window", [(1.5, 11), (0.5, 5), (0.2, 3), (3.0, 23)])
def test_ssim_window_is_scikit_images_and_maps_of_exactly_that_size_work(sigma, window):
  assert similarity.ssim_window(sigma) == window
  # The smallest map is the window; the value is scikit-image's with that window named.
  a, b = (m[:, :window, :window + 2] for m in _structured_maps(13, (2, 32, 32, 3)))
  expected = [skimage.metrics.structural_similarity(
      _min_max_whole_map(x), _min_max_whole_map(y), win_size=window, gaussian_weights=True,
      sigma=sigma, data_range=1.0, channel_axis=-1) for x, y in zip(a, b)]
  np.testing.assert_allclose(similarity.ssim(a, b, sigma=sigma), expected, rtol=1e-12)
  smaller = (slice(None), slice(1, None))
  with pytest.raises(ValueError, match=f"at least {window}x{window} pixels; got "
                                       f"{window - 1}x{window + 2}"):
    similarity.ssim(a[smaller], b[smaller], sigma=sigma)


def test_ssim_rejects_a_sigma_whose_window_is_one_pixel():
  maps = _random_maps(14, (1, 16, 16))
  with pytest.raises(ValueError, match=r"1x1 window.*sigma must be > 1/7"):
    similarity.ssim(maps, maps, sigma=0.1)
