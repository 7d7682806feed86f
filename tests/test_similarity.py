"""Similarity measures of the sanity checks: calibration (Adebayo et al. 2018, appendix)."""

import numpy as np
import pytest
import scipy.stats

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
