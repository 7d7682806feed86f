"""Tests for xai_jax.metrics.stats: win rates, Wilcoxon, Krippendorff's alpha, Spearman."""

import warnings

import jax
import krippendorff
import numpy as np
import pytest
import scipy.stats

from xai_jax.metrics import stats

# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C: 4 observers
# x 12 units with missing values. Published: nominal .743, ordinal .815, interval .849, ratio .797.
_NAN = np.nan
_KRIPPENDORFF_2011 = np.array([
    [1, 2, 3, 3, 2, 1, 4, 1, 2, _NAN, _NAN, _NAN],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, _NAN, 3],
    [_NAN, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, _NAN],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, _NAN]])


def _slow_ordinal_alpha(data):
  """Krippendorff's ordinal alpha from the coincidence matrix, with explicit loops.

  o[c, k] sums, over units with m >= 2 values, the ordered pairs of values from
  different raters weighted 1 / (m - 1); n_c are its margins; the ordinal distance
  is delta2(c, k) = (sum_{g=c..k} n_g - (n_c + n_k) / 2)^2; and
  alpha = 1 - (n - 1) sum o delta2 / sum n_c n_k delta2.
  """
  values = np.unique(data[~np.isnan(data)])
  index = {v: i for i, v in enumerate(values)}
  o = np.zeros((len(values), len(values)))
  for unit in data.T:
    present = [index[v] for v in unit if not np.isnan(v)]
    m = len(present)
    if m < 2:
      continue
    for a in range(m):
      for b in range(m):
        if a != b:
          o[present[a], present[b]] += 1.0 / (m - 1)
  n_c = o.sum(axis=1)
  n = n_c.sum()
  observed = expected = 0.0
  for c in range(len(values)):
    for k in range(len(values)):
      lo, hi = min(c, k), max(c, k)
      delta2 = (n_c[lo:hi + 1].sum() - (n_c[lo] + n_c[hi]) / 2) ** 2
      observed += o[c, k] * delta2
      expected += n_c[c] * n_c[k] * delta2
  return 1.0 - (n - 1) * observed / expected


def test_krippendorff_textbook_values():
  assert round(stats.ordinal_alpha(_KRIPPENDORFF_2011), 3) == 0.815
  assert round(stats.ordinal_alpha(_KRIPPENDORFF_2011, level_of_measurement="nominal"), 3) == 0.743
  assert round(stats.ordinal_alpha(_KRIPPENDORFF_2011, level_of_measurement="interval"), 3) == 0.849
  # The independent loop implementation gives the same published value.
  assert round(_slow_ordinal_alpha(_KRIPPENDORFF_2011), 3) == 0.815
  assert stats.ordinal_alpha(_KRIPPENDORFF_2011) == pytest.approx(_slow_ordinal_alpha(_KRIPPENDORFF_2011),
                                                                  rel=1e-12)


def test_win_rate_matrix_hand_example_with_ties():
  scores = np.array([[1.0, 1.0, 0.0],
                     [2.0, 1.0, 3.0],
                     [0.0, 0.0, 0.0]])
  # W[0,1]: tie .5, win 1, tie .5 -> 2/3.  W[0,2]: win, loss, tie -> 1.5/3.  W[1,2]: same -> .5.
  expected = np.array([[0.5, 2 / 3, 0.5],
                       [1 / 3, 0.5, 0.5],
                       [0.5, 0.5, 0.5]])
  np.testing.assert_allclose(stats.win_rate_matrix(scores), expected)
  # One convention: the fraction won in [0, 1], never centred (a centred value is a separate,
  # explicitly named column of the tables that want it).
  with pytest.raises(TypeError, match="minus_half"):
    stats.win_rate_matrix(scores, minus_half=True)  # pylint: disable=unexpected-keyword-arg
  # Lower is better: W[0,1] = tie .5, loss 0, tie .5 -> 1/3.
  lower = stats.win_rate_matrix(scores, higher_is_better=False)
  np.testing.assert_allclose(lower[0, 1], 1 / 3)
  np.testing.assert_allclose(lower, expected.T)


def test_win_rate_matrix_is_complementary_on_random_scores():
  rng = np.random.default_rng(0)
  scores = np.round(rng.normal(size=(200, 4)), 1)  # rounding creates ties
  w = stats.win_rate_matrix(scores)
  np.testing.assert_allclose(w + w.T, 1.0)
  # Against an explicit loop.
  for i in range(4):
    for j in range(4):
      expected = np.mean([1.0 if a > b else 0.5 if a == b else 0.0
                          for a, b in zip(scores[:, i], scores[:, j])])
      assert w[i, j] == pytest.approx(expected)


def test_wilcoxon_matrix_matches_scipy_directly():
  rng = np.random.default_rng(1)
  base = rng.normal(size=60)
  scores = np.stack([base, base + 0.3 + 0.5 * rng.normal(size=60), base + 0.05 * rng.normal(size=60),
                     np.round(base, 1)], axis=1)
  p = stats.wilcoxon_matrix(scores)
  assert np.all(np.isnan(np.diag(p)))
  np.testing.assert_array_equal(p, p.T)
  for i in range(4):
    for j in range(4):
      if i != j:
        assert p[i, j] == scipy.stats.wilcoxon(scores[:, i], scores[:, j]).pvalue
  assert p[0, 1] < 1e-3 < p[0, 2]


def test_wilcoxon_matrix_all_zero_differences():
  scores = np.array([[1.0, 1.0, 2.0], [2.0, 2.0, 1.0], [3.0, 3.0, 5.0], [0.5, 0.5, 0.1]])
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # no division warnings leak out
    p = stats.wilcoxon_matrix(scores)
  assert p[0, 1] == 1.0 and p[1, 0] == 1.0
  assert 0 < p[0, 2] <= 1


def test_rankings_average_ties_and_direction():
  scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.2, 0.7]])
  np.testing.assert_array_equal(stats.rankings(scores), [[1, 3, 2], [2.5, 2.5, 1]])
  np.testing.assert_array_equal(stats.rankings(scores, higher_is_better=False), [[3, 1, 2], [1.5, 1.5, 3]])


def test_krippendorff_alpha_rankings_identical_rankings_give_one():
  scores = np.arange(4.0)[None, :] + 10.0 * np.arange(30.0)[:, None]  # same order on every image
  out = stats.krippendorff_alpha_rankings(scores, key=0, n_images=10, n_repeats=5)
  np.testing.assert_allclose(out["alphas"], 1.0)
  assert out["mean"] == pytest.approx(1.0) and out["low"] == pytest.approx(1.0)
  assert out["high"] == pytest.approx(1.0)


def test_krippendorff_alpha_rankings_against_loop_reference_and_keys():
  rng = np.random.default_rng(2)
  # Methods differ by a shared effect plus per-image noise: alpha strictly between 0 and 1.
  scores = np.array([0.0, 0.5, 1.0, 1.5])[None, :] + rng.normal(size=(40, 4))
  reference = _slow_ordinal_alpha(stats.rankings(scores))
  assert 0.05 < reference < 0.95
  # All images in every resample: each repeat is a permutation of the raters, same alpha.
  full = stats.krippendorff_alpha_rankings(scores, key=3, n_images=None, n_repeats=3)
  np.testing.assert_allclose(full["alphas"], reference, rtol=1e-10)
  # Subsets: reproducible for the same key, JAX keys accepted, different keys differ.
  a = stats.krippendorff_alpha_rankings(scores, key=7, n_images=20, n_repeats=12)
  b = stats.krippendorff_alpha_rankings(scores, key=7, n_images=20, n_repeats=12)
  c = stats.krippendorff_alpha_rankings(scores, key=8, n_images=20, n_repeats=12)
  d = stats.krippendorff_alpha_rankings(scores, key=jax.random.key(7), n_images=20, n_repeats=12)
  e = stats.krippendorff_alpha_rankings(scores, key=jax.random.PRNGKey(7), n_images=20, n_repeats=12)
  np.testing.assert_array_equal(a["alphas"], b["alphas"])
  assert not np.array_equal(a["alphas"], c["alphas"])
  np.testing.assert_array_equal(d["alphas"], e["alphas"])
  assert a["alphas"].shape == (12,)
  assert a["mean"] == pytest.approx(a["alphas"].mean())
  np.testing.assert_allclose([a["low"], a["high"]], np.quantile(a["alphas"], [0.025, 0.975]))
  normal = stats.krippendorff_alpha_rankings(scores, key=7, n_images=20, n_repeats=12, interval="normal")
  half = 1.959963984540054 * a["alphas"].std(ddof=1) / np.sqrt(12)
  np.testing.assert_allclose([normal["low"], normal["high"]], [a["mean"] - half, a["mean"] + half])
  # Direction does not change alpha (reversing every ranking preserves the distances).
  flipped = stats.krippendorff_alpha_rankings(scores, key=7, n_images=20, n_repeats=12,
                                              higher_is_better=False)
  np.testing.assert_allclose(flipped["alphas"], a["alphas"], rtol=1e-10)


def test_bad_input_raises_clear_errors():
  with pytest.raises(ValueError, match="n_images, n_methods"):
    stats.win_rate_matrix(np.zeros(5))
  with pytest.raises(ValueError, match="n_methods >= 2"):
    stats.wilcoxon_matrix(np.zeros((5, 1)))
  with pytest.raises(ValueError, match="NaN"):
    stats.win_rate_matrix(np.array([[1.0, np.nan]]))
  scores = np.random.default_rng(5).normal(size=(10, 3))
  with pytest.raises(ValueError, match="n_images must be"):
    stats.krippendorff_alpha_rankings(scores, key=0)  # default 500 > 10 images
  with pytest.raises(ValueError, match="n_repeats"):
    stats.krippendorff_alpha_rankings(scores, key=0, n_images=5, n_repeats=0)
  with pytest.raises(ValueError, match="unknown interval 'bootstrap'; valid: percentile, normal"):
    stats.krippendorff_alpha_rankings(scores, key=0, n_images=5, interval="bootstrap")
  with pytest.raises(ValueError, match="key must be"):
    stats.krippendorff_alpha_rankings(scores, key="seed", n_images=5)


def test_krippendorff_alpha_rankings_levels_against_the_package():
  # DeepMaps used the interval level (the default of the package they cite); the ordinal one
  # stays the default here. Every image in one draw: alpha of the whole rank table.
  rng = np.random.default_rng(9)
  scores = np.array([0.0, 0.4, 0.8, 1.2])[None, :] + rng.normal(size=(30, 4))
  ranks = scipy.stats.rankdata(-scores, axis=1)
  for level in ("interval", "ordinal"):
    out = stats.krippendorff_alpha_rankings(scores, key=1, n_images=30, n_repeats=1,
                                            level_of_measurement=level)
    expected = krippendorff.alpha(reliability_data=ranks, level_of_measurement=level)
    assert out["mean"] == pytest.approx(expected, rel=1e-12) and out["std"] == 0.0
  default = stats.krippendorff_alpha_rankings(scores, key=1, n_images=30, n_repeats=1)
  assert default["mean"] == pytest.approx(
      krippendorff.alpha(reliability_data=ranks, level_of_measurement="ordinal"), rel=1e-12)
  with pytest.raises(ValueError, match="unknown level_of_measurement 'rank'"):
    stats.krippendorff_alpha_rankings(scores, key=1, n_images=5, level_of_measurement="rank")
