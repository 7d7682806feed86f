"""Bad inputs to the metrics, the PRNG-key helper and the torchvision port get one clear error.

Each bad input is checked with `pytest.raises(ValueError, match=...)` where the match names the
argument; valid inputs are checked against hand-computed values (a linear model whose logit is
the sum of the pixels, so every perturbation curve is a running sum), and the pixel-removal
functions are checked under `jax.jit` and `jax.vmap` with traced images.
"""

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from xai_jax.keys import check_key
from xai_jax.metrics import ground_truth as gt
from xai_jax.metrics import pixel_removal as pr
from xai_jax.metrics import sanity
from xai_jax.metrics import similarity as sim
from xai_jax.metrics import stats
from xai_jax.models import port

# ---------------------------------------------------------------------------------------------
# A linear "classifier" with closed-form curves: logit 0 = sum_p w_p x_p, logit 1 = 10.
# Image: pixels 1..6 in raster order on a 2x3 grid, one channel, w = 1, so the contribution of
# each pixel is its value and the MoRF curve with fill 0 removes 6, 5, 4, ...

X = jnp.arange(1.0, 7.0).reshape(1, 2, 3, 1)
SALIENCY = X[..., 0]  # exact contributions
VARIABLES = {"w": jnp.ones(6)}
P = 6


def linear(variables, x):
  logit0 = x.reshape(x.shape[0], -1) @ variables["w"]
  return jnp.stack([logit0, jnp.full_like(logit0, 10.0)], axis=-1)


def curve(x=X, saliency=SALIENCY, **options):
  options = {"step": 1, "fill": 0.0, **options}
  return pr.perturbation_curve(linear, VARIABLES, x, saliency, **options)


# ---------------------------------------------------------------------------------------------
# Pixel removal: valid inputs give the hand-computed values.


@pytest.mark.slow
def test_valid_inputs_give_the_hand_computed_values():
  morf = curve(order="morf")
  lerf = curve(order="lerf")
  np.testing.assert_allclose(morf.scores[0], [21, 15, 10, 6, 3, 1, 0])
  np.testing.assert_allclose(lerf.scores[0], [21, 20, 18, 15, 11, 6, 0])
  # 50% = 3 pixels: the drops at k = 0..3 are 0, 6, 11, 15.
  np.testing.assert_allclose(pr.aopc(morf, max_fraction=0.5), [32 / 4])
  np.testing.assert_allclose(pr.afoc(morf, fraction=0.5), [15 / 21], rtol=1e-6)
  np.testing.assert_allclose(pr.afoc(lerf, fraction=0.5), [6 / 21], rtol=1e-6)
  # Step 2 (grid 0, 2, 4, 6) has no point at 3 pixels: refused, not AOPC at 2 pixels (33%).
  with pytest.raises(ValueError, match=r"max_fraction=0.5 \(3 of 6 pixels\) is not on the "
                                       r"removal grid of step=2 pixels: the nearest grid "
                                       r"fractions are 0.334 \(2 pixels\) and 0.667 \(4"):
    pr.aopc(curve(step=2), max_fraction=0.5)
  np.testing.assert_allclose(pr.aopc(curve(step=2), max_fraction=1 / 3), [(0 + 11) / 2])
  metrics = pr.pixel_removal_metrics(linear, VARIABLES, X, SALIENCY, fraction=0.5, step=1,
                                     fill=0.0)
  np.testing.assert_allclose(metrics["aopc"], [8.0])
  # Class 1 (logit 10) wins once logit 0 < 10: MoRF at k = 3 (6 < 10), LeRF at k = 5.
  np.testing.assert_allclose(metrics["n_morf"], [3 / 6])
  np.testing.assert_allclose(metrics["n_lerf"], [5 / 6])
  # A curve that stops exactly at the fraction has the point floor(F * P) itself: with step 4
  # and max_fraction 0.5 the grid is 0, 3, and AOPC at 50% is (0 + 15) / 2.
  short = curve(step=4, max_fraction=0.5)
  np.testing.assert_array_equal(short.counts, [0, 3])
  np.testing.assert_allclose(pr.aopc(short, max_fraction=0.5), [15 / 2])


@pytest.mark.slow
def test_pixel_removal_runs_under_jit_with_traced_images():
  aopc = lambda x, s: pr.aopc(curve(x, s), max_fraction=0.5)
  np.testing.assert_allclose(jax.jit(aopc)(X, SALIENCY), [8.0])
  metrics = jax.jit(lambda x, s: pr.pixel_removal_metrics(
      linear, VARIABLES, x, s, fraction=0.5, step=1, fill=0.0))(X, SALIENCY)
  np.testing.assert_allclose(metrics["afoc_morf"], [15 / 21], rtol=1e-6)
  # Traced fill arrays are accepted too (value checks need concrete values).
  jitted_fill = jax.jit(lambda f: curve(fill=f).scores)(jnp.zeros(1))
  np.testing.assert_allclose(jitted_fill[0], [21, 15, 10, 6, 3, 1, 0])
  # The grid check needs no values: it also fires on a curve passed into jit.
  with pytest.raises(ValueError, match="step 4 removes more than fraction 0.5"):
    jax.jit(lambda c: pr.aopc(c, max_fraction=0.5))(curve(step=4))


def test_pixel_removal_runs_under_vmap():
  xs = jnp.stack([X, 2 * X])  # [2, 1, 2, 3, 1]
  aopc = jax.vmap(lambda x: pr.aopc(curve(x, x[..., 0]), max_fraction=0.5))(xs)
  np.testing.assert_allclose(aopc, [[8.0], [16.0]])


def test_shape_and_dtype_checks_run_under_jit():
  with pytest.raises(ValueError, match=r"x must be float\[N, H, W, C\] images; got dtype uint8"):
    jax.jit(lambda x: curve(x).scores)(X.astype(jnp.uint8))
  with pytest.raises(ValueError, match="saliency must be"):
    jax.jit(lambda x: curve(x, SALIENCY[:, :1]).scores)(X)


# ---------------------------------------------------------------------------------------------
# Pixel removal: bad inputs.

BAD_IMAGES = [
    ("nan", X.at[0, 1, 1, 0].set(jnp.nan), r"x contains NaN or infinite values \(images \[0"),
    ("inf", X.at[0, 0, 0, 0].set(jnp.inf), r"x contains NaN or infinite values"),
    ("uint8", X.astype(jnp.uint8), r"x must be float\[N, H, W, C\] images; got dtype uint8"),
    ("int32", X.astype(jnp.int32), r"x must be float\[N, H, W, C\] images; got dtype int32"),
    ("rank 3", X[0], r"x must be float\[N, H, W, C\]; got shape \(2, 3, 1\)"),
    ("empty", X[:0], r"x must be float\[N, H, W, C\] with every axis non-empty"),
]


@pytest.mark.parametrize("name,x,match", BAD_IMAGES, ids=[b[0] for b in BAD_IMAGES])
def test_bad_images(name, x, match):
  del name
  saliency = jnp.ones(x.shape[:3]) if x.ndim == 4 else SALIENCY
  with pytest.raises(ValueError, match=match):
    curve(x, saliency)
  with pytest.raises(ValueError, match=match):
    pr.pixel_removal_metrics(linear, VARIABLES, x, saliency, fraction=0.5, step=1, fill=0.0)
  if x.ndim == 4 and x.shape[0]:
    metric = functools.partial(pr.pixel_removal_metrics, fraction=0.5, step=1, fill=0.0)
    with pytest.raises(ValueError, match=match):
      pr.delta(metric, linear, VARIABLES, jnp.concatenate([x, x]),
               jnp.ones((2,) + x.shape[1:3]), k=1, key=jax.random.key(0))


@pytest.mark.parametrize("saliency,match", [
    (SALIENCY[:, :1], r"saliency must be \[N, H, W\] = \(1, 2, 3\)"),
    (jnp.ones((1, 2, 3, 2)), r"saliency must be \[N, H, W\] or \[N, H, W, C\] matching x"),
    (SALIENCY.at[0, 0, 0].set(jnp.nan), r"saliency contains NaN \(images \[0\]\)"),
    (SALIENCY.astype(jnp.complex64), "saliency must be a real-valued map"),
])
def test_bad_saliency(saliency, match):
  with pytest.raises(ValueError, match=match):
    curve(saliency=saliency)


@pytest.mark.parametrize("fill,match", [
    (float("nan"), "fill must be a finite number"),
    (float("inf"), "fill must be a finite number"),
    (np.float32("nan"), "fill must be a finite number"),
    (jnp.array([jnp.nan]), "fill array contains NaN or infinite values"),
    (np.array([np.inf]), "fill array contains NaN or infinite values"),
    ("black", "unknown fill 'black'; valid: batch_mean, image_mean, blur"),
    (jnp.zeros(3), r"fill array of shape \(3,\) does not broadcast"),
])
def test_bad_fill(fill, match):
  with pytest.raises(ValueError, match=match):
    curve(fill=fill)


@pytest.mark.parametrize("options,match", [
    (dict(step=0), r"step must be in \[1, P = H \* W = 6\]"),
    (dict(step=7), r"step must be in \[1, P = H \* W = 6\]"),
    (dict(step=2.5), "step must be an integer number of pixels"),
    (dict(step=True), "step must be an integer number of pixels"),
    (dict(max_fraction=float("nan")), r"max_fraction must be a fraction in \[0, 1\]"),
    (dict(blur_sigma=float("inf"), fill="blur"), "blur_sigma must be a finite number > 0"),
    (dict(order="random", key=0), "key must be a jax.random.key.*; got int 0"),
    (dict(order="random", key=jnp.zeros(2)), r"key must be a jax.random.key.*float32\[2\]"),
])
def test_bad_curve_options(options, match):
  with pytest.raises(ValueError, match=match):
    curve(**options)


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5, float("nan")])
def test_metric_fraction_must_be_in_zero_one(fraction):
  full = curve()
  match = r"fraction must be a fraction in \(0, 1\]"
  with pytest.raises(ValueError, match="max_" + match):
    pr.aopc(full, max_fraction=fraction)
  with pytest.raises(ValueError, match=match):
    pr.afoc(full, fraction=fraction)
  with pytest.raises(ValueError, match=match):
    pr.pixel_removal_metrics(linear, VARIABLES, X, SALIENCY, fraction=fraction, step=1)
  with pytest.raises(ValueError, match=match):
    pr.check_removal_grid(P, step=1, fraction=fraction)


def test_step_beyond_the_fraction_is_an_error_not_zero():
  # Before: step 4 > floor(0.5 * 6) = 3 gave AOPC = AFOC = 0 for every image.
  match = r"step 4 removes more than fraction 0.5 of the 6 pixels.*use step <= .* = 3"
  with pytest.raises(ValueError, match=match):
    pr.check_removal_grid(P, step=4, fraction=0.5)
  with pytest.raises(ValueError, match=match):
    pr.aopc(curve(step=4), max_fraction=0.5)
  with pytest.raises(ValueError, match=match):
    pr.afoc(curve(step=4, order="lerf"), fraction=0.5)
  with pytest.raises(ValueError, match=match):
    pr.pixel_removal_metrics(linear, VARIABLES, X, SALIENCY, fraction=0.5, step=4)
  pr.check_removal_grid(P, step=3, fraction=0.5)  # the boundary is fine
  # The paper-scale shape: 224 x 224 at 10% allows step 5017, not 5018.
  pr.check_removal_grid(224 * 224, step=5017, fraction=0.1)
  with pytest.raises(ValueError, match="step 5018 removes more than fraction 0.1"):
    pr.check_removal_grid(224 * 224, step=5018, fraction=0.1)
  pr.check_removal_grid(224 * 224, step=None, fraction=0.1)  # default: 0.5% of the pixels
  # Less than one pixel at the fraction: nothing is ever removed.
  with pytest.raises(ValueError, match=r"fraction 0.1 of the 6 pixels is less than one pixel"):
    pr.check_removal_grid(P, step=1, fraction=0.1)
  with pytest.raises(ValueError, match="less than one pixel"):
    pr.aopc(curve(), max_fraction=0.1)


@pytest.mark.parametrize("arguments,match", [
    (dict(num_pixels=0, step=1, fraction=0.5), "num_pixels must be a positive integer"),
    (dict(num_pixels=6.0, step=1, fraction=0.5), "num_pixels must be a positive integer"),
    (dict(num_pixels=6, step=0, fraction=0.5), r"step must be in \[1, P"),
    (dict(num_pixels=6, step=1.0, fraction=0.5), "step must be an integer"),
    (dict(num_pixels=6, step=1, fraction="0.5"), r"fraction must be a number in \(0, 1\]"),
])
def test_check_removal_grid_arguments(arguments, match):
  num_pixels = arguments.pop("num_pixels")
  with pytest.raises(ValueError, match=match):
    pr.check_removal_grid(num_pixels, **arguments)


def test_hand_built_curves_are_checked_from_their_counts():
  by_hand = pr.PerturbationCurve(
      fractions=jnp.array([0.0, 0.5, 1.0]), counts=jnp.array([0, 5, 10]),
      scores=jnp.array([[4.0, 3.0, 1.0]]), labels=jnp.array([[1, 1, 0]]),
      target=jnp.array([1]), num_pixels=10, max_count=10)
  np.testing.assert_allclose(pr.aopc(by_hand, max_fraction=0.5), [0.5])
  with pytest.raises(ValueError, match="step 5 removes more than fraction 0.4"):
    pr.aopc(by_hand, max_fraction=0.4)


def test_metrics_need_a_curve():
  for function in (pr.aopc, pr.afoc, pr.pixels_to_flip):
    with pytest.raises(ValueError, match="curve must be a PerturbationCurve"):
      function(np.zeros((1, 7)))


@pytest.mark.slow
def test_delta_checks_key_and_self_index():
  metric = functools.partial(pr.pixel_removal_metrics, fraction=0.5, step=1, fill=0.0)
  xs = jnp.concatenate([X, 2 * X])
  with pytest.raises(ValueError, match="key must be a jax.random.key.*; got int 0"):
    pr.delta(metric, linear, VARIABLES, xs, xs[..., 0], k=1, key=0)
  with pytest.raises(ValueError, match=r"self_index must index the pool of 3 maps; got \[3\]"):
    pr.delta(metric, linear, VARIABLES, xs, xs[..., 0], other_saliency=jnp.ones((3, 2, 3)),
             self_index=jnp.array([0, 3]), k=1, key=jax.random.key(0))
  with pytest.raises(ValueError, match="key must be a jax.random.key"):
    pr.draw_others(0, 2, 3, 1)
  with pytest.raises(ValueError, match=r"k must be in \[1, pool_size = 3\]"):
    pr.draw_others(jax.random.key(0), 2, 3, 4)
  # A legacy raw key draws exactly what the typed key with the same seed draws.
  typed = pr.delta(metric, linear, VARIABLES, xs, xs[..., 0], k=1, key=jax.random.key(3))
  legacy = pr.delta(metric, linear, VARIABLES, xs, xs[..., 0], k=1, key=jax.random.PRNGKey(3))
  np.testing.assert_array_equal(typed.other_index, legacy.other_index)
  # Own map of image 0 is x, of image 1 is 2x: each borrows the other's map, which ranks the
  # pixels identically, so every delta is exactly 0.
  np.testing.assert_allclose(typed.delta["aopc"], [0.0, 0.0])


# ---------------------------------------------------------------------------------------------
# PRNG keys (xai_jax.keys.check_key) and the sanity functions that take one.


def test_check_key_accepts_typed_and_legacy_keys_also_traced():
  typed, legacy = jax.random.key(0), jax.random.PRNGKey(0)
  assert check_key(typed) is typed and check_key(legacy) is legacy
  assert jax.jit(lambda k: jax.random.key_data(check_key(k)))(typed).shape == (2,)
  assert jax.jit(lambda k: check_key(k))(legacy).shape == (2,)
  assert jax.vmap(lambda k: jax.random.uniform(check_key(k)))(jax.random.split(typed, 3)).shape \
      == (3,)


@pytest.mark.parametrize("bad,match", [
    (0, "seed_key must be a jax.random.key.*; got int 0"),
    (np.uint32(7), "got uint32 7"),
    (None, "got None"),
    (jnp.zeros(2), r"got float32\[2\]"),
    (np.zeros((1, 2), np.uint32), r"got uint32\[1, 2\].*a raw key is uint32\[2\]"),
    (jax.random.split(jax.random.key(0)), r"a single key of shape \(\); got .* shape \(2,\)"),
])
def test_check_key_rejects(bad, match):
  with pytest.raises(ValueError, match=match):
    check_key(bad, name="seed_key")


def test_sanity_functions_reject_int_keys():
  x = jnp.ones((1, 4, 4, 1))
  variables = {"params": {"dense": {"kernel": jnp.ones((16, 2))}}}
  calls = [
      lambda: sanity.input_times_random_gradient(x, key=0),
      lambda: sanity.permute_labels(np.arange(5), key=0),
      lambda: sanity.fresh_variables(None, variables, x, key=0, init="truncated_normal"),
      lambda: sanity.randomize(variables, ["dense"], key=0, init="truncated_normal"),
      lambda: sanity.cascading_randomization(None, None, variables, x, None, key=0),
      lambda: sanity.independent_randomization(None, None, variables, x, None, key=0),
      lambda: sanity.data_randomization(None, None, variables, x, None, x, None, key=0,
                                          train_fn=None),
  ]
  for call in calls:
    with pytest.raises(ValueError, match="key must be a jax.random.key.*; got int 0"):
      call()
  # Legacy and typed keys with the same seed give the same draws.
  u_typed, _ = sanity.input_times_random_gradient(x, key=jax.random.key(1))
  u_legacy, _ = sanity.input_times_random_gradient(x, key=jax.random.PRNGKey(1))
  np.testing.assert_array_equal(u_typed, u_legacy)


def test_random_order_accepts_both_key_kinds():
  typed = curve(order="random", key=jax.random.key(4))
  legacy = curve(order="random", key=jax.random.PRNGKey(4))
  np.testing.assert_array_equal(typed.scores, legacy.scores)
  # Every pixel has weight 1, so after k removals the logit is 21 minus k removed values.
  assert float(typed.scores[0, -1]) == 0.0 and float(typed.scores[0, 0]) == 21.0


# ---------------------------------------------------------------------------------------------
# Statistics across methods.


def test_krippendorff_alpha_undefined_cases():
  ties = np.tile([[2.0, 2.0, 2.0]], (10, 1)) + np.arange(10)[:, None]  # ties within each image
  with pytest.raises(ValueError, match="alpha of the rankings is undefined: the scores tie all 3"):
    stats.krippendorff_alpha_rankings(ties, key=0, n_images=5, n_repeats=3)
  with pytest.raises(ValueError, match=r"n_methods >= 2; got shape \(10, 1\)"):
    stats.krippendorff_alpha_rankings(np.arange(10.0)[:, None], key=0, n_images=5)
  with pytest.raises(ValueError, match=r"undefined \(0 / 0\) when only one value occurs"):
    stats.ordinal_alpha(np.ones((4, 3)))
  with pytest.raises(ValueError, match="a unit .column. rated by at least two raters"):
    stats.ordinal_alpha(np.array([[1.0, 2.0, 3.0]]))
  with pytest.raises(ValueError, match="unknown level_of_measurement 'foo'; valid: nominal"):
    stats.ordinal_alpha(np.ones((2, 3)), level_of_measurement="foo")
  with pytest.raises(ValueError, match=r"reliability_data must be \[n_raters, n_units\]"):
    stats.ordinal_alpha(np.arange(4.0))
  with pytest.raises(ValueError, match="reliability_data contains infinite values"):
    stats.ordinal_alpha(np.array([[1.0, 2.0, np.inf], [1.0, 2.0, 3.0]]))
  # Only one resample is degenerate: ties on 9 of 10 images, resamples of 2 images.
  mostly = np.zeros((10, 2))
  mostly[0] = [1.0, 0.0]
  with pytest.raises(ValueError, match="undefined for resample .*use a larger n_images"):
    stats.krippendorff_alpha_rankings(mostly, key=0, n_images=2, n_repeats=50)
  # A defined case is unchanged: two raters agreeing perfectly on 3 distinct values give 1.
  assert stats.ordinal_alpha(np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])) == 1.0


def test_stats_reject_non_numeric_scores():
  with pytest.raises(ValueError, match="scores must be an array of real numbers"):
    stats.win_rate_matrix([["a", "b"], ["c", "d"]])
  with pytest.raises(ValueError, match="scores must be an array of real numbers"):
    stats.wilcoxon_matrix(np.ones((3, 2)) * 1j)
  with pytest.raises(ValueError, match="n_images must be an integer in .*got '5'"):
    stats.krippendorff_alpha_rankings(np.random.default_rng(0).normal(size=(10, 3)), key=0,
                                      n_images="5")


# ---------------------------------------------------------------------------------------------
# Similarity measures.


def test_similarity_bad_inputs():
  maps = np.random.default_rng(0).normal(size=(2, 8, 8))
  with pytest.raises(ValueError, match="a must have at least one map of at least one pixel"):
    sim.spearman(np.zeros((0, 8, 8)), np.zeros((0, 8, 8)))
  with pytest.raises(ValueError, match="a must have at least one map"):
    sim.spearman(np.zeros((2, 0, 8)), np.zeros((2, 0, 8)))
  with pytest.raises(ValueError, match="a must be an array of real numbers"):
    sim.spearman(maps + 1j, maps)
  with pytest.raises(ValueError, match="b contains NaN or infinite values"):
    sim.ssim(maps, np.where(maps > 1, np.inf, maps))
  for percentile in (150, -1, float("nan")):
    with pytest.raises(ValueError, match=r"percentile must be in \[0, 100\]"):
      sim.spearman(maps, maps, percentile=percentile)
  for name in ("sigma", "data_range"):
    for value in (0.0, float("nan"), float("inf")):
      with pytest.raises(ValueError, match=f"{name} must be a finite number > 0"):
        sim.ssim(maps, maps, **{name: value})
  with pytest.raises(ValueError, match="maps contains NaN or infinite values"):
    sim.hog_features(np.full((1, 48, 48), np.nan))
  with pytest.raises(ValueError, match="pixels_per_cell must be a positive integer; got 0"):
    sim.hog_features(np.zeros((1, 48, 48)), pixels_per_cell=0)
  with pytest.raises(ValueError, match=r"measures must be a sequence of names, e.g. \['ssim'\]"):
    sim.similarities(maps, maps, measures="ssim")
  # Valid inputs are unchanged: identical maps are perfectly similar.
  np.testing.assert_allclose(sim.spearman(maps, maps), [1.0, 1.0])


# ---------------------------------------------------------------------------------------------
# Ground truth.


def test_ground_truth_bad_inputs():
  saliency = np.random.default_rng(0).normal(size=(2, 8, 8))
  heatmap = np.zeros((2, 8, 8))
  heatmap[:, 2:4, 2:4] = 0.9
  with pytest.raises(ValueError, match="saliency must hold at least one map"):
    gt.five_band_scores(np.zeros((0, 8, 8)), np.zeros((0, 8, 8)))
  with pytest.raises(ValueError, match="saliency must hold at least one map"):
    gt.iou(np.zeros((2, 0, 8)), np.zeros((2, 0, 8)))
  with pytest.raises(ValueError, match="attributions must be .* with non-empty axes"):
    gt.channel_adjust(np.zeros((1, 0, 8)))
  with pytest.raises(ValueError, match="logits contains NaN values"):
    gt.confidence_from_logits(np.full((2, 3), np.nan))
  with pytest.raises(ValueError, match=r"logits must be \[N, K\] with K >= 1"):
    gt.confidence_from_logits(np.zeros((2, 0)))
  with pytest.raises(ValueError, match="scores must be a FiveBandScores"):
    gt.roc_points(np.zeros(3))
  with pytest.raises(ValueError, match="scores must be a FiveBandScores"):
    gt.five_band_summary((1, 2))
  with pytest.raises(ValueError, match="points must be RocPoints or .recall, fpr.; got 3"):
    gt.roc_auc((np.zeros(2), np.zeros(2), np.zeros(2)))
  with pytest.raises(ValueError, match="delta must be a positive number; got 'x'"):
    gt.soft_thresholds((-0.5, -0.3, 0.3, 0.5), "x", 2)
  values, confidence = np.array([0.2, 0.4]), np.array([0.5, 0.95])
  with pytest.raises(ValueError, match="values contain NaN or infinite values"):
    gt.summarize_by_confidence(np.array([0.2, np.inf]), confidence)
  with pytest.raises(ValueError, match=r"confidence must be probabilities in \[0, 1\]"):
    gt.summarize_by_confidence(values, np.array([0.5, 1.5]))
  with pytest.raises(ValueError, match="ddof must be a non-negative integer"):
    gt.summarize_by_confidence(values, confidence, ddof=-1)
  with pytest.raises(ValueError, match=r"threshold must be a probability in \[0, 1\]"):
    gt.summarize_by_confidence(values, confidence, threshold=float("nan"))
  # Valid inputs are unchanged: the heatmap's own support scores IOU 1.
  np.testing.assert_allclose(gt.iou(heatmap, heatmap > 0), [1.0, 1.0])
  summary = gt.summarize_by_confidence(values, confidence, ddof=0)
  assert summary["high"]["mean"] == 0.4 and summary["all"]["std"] == pytest.approx(0.1)
  assert np.isfinite(gt.iou(saliency, heatmap > 0)).all()


# ---------------------------------------------------------------------------------------------
# torchvision state dicts: wrapper prefixes.


def _resnet18_state(num_classes=10, seed=0):
  rng = np.random.default_rng(seed)
  return {k: rng.normal(size=s).astype(np.float32)
          for k, s in port._expected_keys("resnet18", num_classes=num_classes).items()}


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod.",
                                    "_orig_mod.module."])
def test_wrapper_prefixes_are_stripped(prefix):
  state = _resnet18_state()
  plain = port.from_torchvision("resnet18", state)
  wrapped = {prefix + k: v for k, v in state.items()}
  wrapped[prefix + "bn1.num_batches_tracked"] = np.array(3)
  ported = port.from_torchvision("resnet18", wrapped)  # num_classes inferred from fc.weight
  assert ported["params"]["fc"]["kernel"].shape == (512, 10)
  jax.tree.map(np.testing.assert_array_equal, ported, plain)


def test_partial_prefix_is_not_stripped_and_errors_list_every_problem():
  state = {"module." + k: v for k, v in _resnet18_state().items()}
  del state["module.layer1.0.conv1.weight"]
  state["module.extra.weight"] = np.zeros(3, np.float32)
  state["module.fc.bias"] = np.zeros(11, np.float32)
  with pytest.raises(ValueError) as error:
    port.from_torchvision("resnet18", state)
  message = str(error.value)
  assert "missing keys (1): layer1.0.conv1.weight" in message
  assert "unexpected keys (1): extra.weight" in message
  assert "shape mismatches (1): fc.bias: got (11,), expected (10,)" in message
  assert "module." not in message
  # One key without the prefix: nothing is stripped, so every key is reported as it is.
  mixed = {**{"module." + k: v for k, v in _resnet18_state().items()},
           "fc.weight": np.zeros((10, 512), np.float32)}
  stripped = port.strip_wrapper_prefixes(mixed)
  assert stripped.keys() == mixed.keys()
  with pytest.raises(ValueError, match=r"missing keys \(101\)"):
    port.from_torchvision("resnet18", mixed)
  with pytest.raises(ValueError, match="state_dict must be a mapping"):
    port.from_torchvision("resnet18", [("fc.weight", np.zeros((10, 512)))])


def test_dataparallel_state_dict_from_torch():
  torch = pytest.importorskip("torch")
  torchvision = pytest.importorskip("torchvision")
  model = torchvision.models.resnet18(num_classes=5)
  wrapped = torch.nn.DataParallel(model).state_dict()
  assert all(k.startswith("module.") for k in wrapped)
  ported = port.from_torchvision("resnet18", wrapped)
  plain = port.from_torchvision("resnet18", model.state_dict())
  jax.tree.map(np.testing.assert_array_equal, ported, plain)
