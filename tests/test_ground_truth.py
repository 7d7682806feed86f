"""Tests for xai_jax.metrics.ground_truth: five-band scores (Tjoa & Guan) and IOU (Gattas)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xai_jax.metrics import ground_truth as gt


# ----------------------------------------------------------------------------
# Independent slow reference: the original's `FiveBandXAIMetric`, written with
# explicit Python loops over thresholds and pixels.


def _slow_band(v, g):
  if v <= g[0]:
    return -2
  if g[0] < v <= g[1]:
    return -1
  if g[1] < v <= g[2]:
    return 0
  if g[2] < v <= g[3]:
    return 1
  assert v > g[3]
  return 2


def _slow_five_band(attribution, heatmap, thresholds, clamp, clamp_order="code"):
  """attribution: [H, W, C]; heatmap: [H, W]; thresholds: float64 [M, 4].

  `clamp_order`: "code" clips the raw attribution (the original code); "paper" first
  divides it by its maximum |value| over all pixels and channels (the paper's text).

  Returns int counts [M, 5] (correct, TP, FP, TN, FN) and float64 metrics [M, 4]
  (accuracy, precision, recall, FPR).
  """
  h = np.asarray(attribution, np.float32)
  if clamp is not None:
    if clamp_order == "paper":
      peak = np.float32(0)
      for value in h.ravel():
        peak = max(peak, abs(value))
      if peak > 0:
        h = h / peak
    h = np.clip(h, np.float32(-clamp), np.float32(clamp))
  if np.all(h == 0):
    s = np.zeros(h.shape[:2], np.float32)
  else:
    s = np.zeros(h.shape[:2], np.float32)
    for c in range(h.shape[2]):
      s = s + h[:, :, c]
    s = s / np.max(np.abs(s))
  rows, cols = s.shape
  # Comparisons in float32, as NumPy 1.x did for a float32 map against float64 scalars.
  g_truth = np.float32(gt.GROUND_TRUTH_THRESHOLDS)
  truth = [[_slow_band(np.float32(heatmap[i, j]), g_truth) for j in range(cols)] for i in range(rows)]
  counts, metrics = [], []
  for g in np.asarray(thresholds):
    g32 = g.astype(np.float32)
    correct = tp = fp = tn = fn = 0
    for i in range(rows):
      for j in range(cols):
        band, band0 = _slow_band(s[i, j], g32), truth[i][j]
        correct += band == band0
        if band != 0 and band0 != 0 and band == band0:
          tp += 1
        if band != 0 and (band0 == 0 or band != band0):
          fp += 1
        if band == 0 and band0 == 0:
          tn += 1
        if band == 0 and band0 != 0:
          fn += 1
    counts.append((correct, tp, fp, tn, fn))
    metrics.append((correct / (rows * cols), tp / (tp + fp + 1e-6), tp / (tp + fn + 1e-6),
                    fp / (fp + tn + 1e-6)))
  return np.array(counts), np.array(metrics)


def _random_case(seed, n=3, size=10, channels=3, scale=1.0):
  rng = np.random.default_rng(seed)
  attribution = (scale * rng.normal(size=(n, size, size, channels))).astype(np.float32)
  heatmap = rng.choice(np.float32([0.0, 0.4, 0.9]), size=(n, size, size), p=[0.6, 0.25, 0.15])
  return attribution, heatmap


def _counts(scores):
  return np.stack([np.asarray(scores.tp + scores.tn), np.asarray(scores.tp), np.asarray(scores.fp),
                   np.asarray(scores.tn), np.asarray(scores.fn)], axis=-1)


# ----------------------------------------------------------------------------
# Thresholds.


def test_soft_threshold_endpoints_match_cells_spec():
  soft = gt.soft_thresholds(*gt.PRESETS["soft"][:3])
  clamped = gt.soft_thresholds(*gt.PRESETS["clamped"][:3])
  assert soft.shape == (56, 4) and soft.dtype == np.float64
  assert clamped.shape == (41, 4)
  np.testing.assert_allclose(soft[0], [-0.5, -0.3, 0.3, 0.5])
  np.testing.assert_allclose(soft[55], [-0.225, -0.025, 0.025, 0.225], atol=1e-12)
  np.testing.assert_allclose(clamped[0], [-0.9, -0.5, 0.5, 0.9])
  np.testing.assert_allclose(clamped[40], [-0.5, -0.1, 0.1, 0.5], atol=1e-12)
  # Every threshold moves towards 0 by delta per step.
  steps = np.arange(56)[:, None] * 0.005 * np.array([1, 1, -1, -1])
  np.testing.assert_allclose(soft, soft[0] + steps, atol=1e-12)
  # The sum is accumulated step by step in float64, not computed as g0 + m * delta.
  accumulated = -0.3
  for _ in range(55):
    accumulated = accumulated + 0.005
  assert soft[55, 1] == accumulated


def test_soft_thresholds_sign_rule_moves_zero_up():
  # (-1) ** [g > 0]: a threshold at exactly 0 moves up, like the original.
  g = gt.soft_thresholds((-0.1, 0.0, 0.05, 0.1), 0.05, 3)
  np.testing.assert_allclose(g[1], [-0.05, 0.05, 0.0, 0.05], atol=1e-15)
  np.testing.assert_allclose(g[2], [0.0, 0.0, 0.05, 0.0], atol=1e-15)


def test_resolve_thresholds_presets_and_clamp():
  g, clamp = gt.resolve_thresholds("clamped")
  assert clamp == 0.1 and g.shape == (41, 4)
  assert gt.resolve_thresholds("soft")[1] is None
  assert gt.resolve_thresholds("clamped", clamp=0.5)[1] == 0.5
  g, clamp = gt.resolve_thresholds([[-0.5, -0.3, 0.3, 0.5]])
  assert g.shape == (1, 4) and clamp is None


# ----------------------------------------------------------------------------
# Banding and channel adjustment.


def test_five_band_exact_inequalities():
  values = np.float32([-1.0, -0.7, -0.69, -0.3, -0.29, 0.0, 0.3, 0.31, 0.7, 0.71, 1.0])
  expected = [-2, -2, -1, -1, 0, 0, 0, 1, 1, 2, 2]
  np.testing.assert_array_equal(gt.five_band(values), expected)
  np.testing.assert_array_equal(jax.jit(gt.five_band)(values), expected)
  # Ground-truth heatmap values: 0 -> 0, 0.4 -> 1, 0.9 -> 2.
  np.testing.assert_array_equal(gt.five_band(np.float32([0.0, 0.4, 0.9])), [0, 1, 2])


def test_heatmap_values_outside_the_three_levels_are_banded_not_rejected():
  # Interpolated heatmaps (e.g. resized) are banded with the same rule as the original.
  heatmap = np.float32([[[0.2, 0.35], [0.8, -0.5]]])
  np.testing.assert_array_equal(gt.five_band(heatmap), [[[0, 1], [2, -1]]])
  saliency = np.float32([[[0.0, 0.4], [1.0, -0.5]]])
  scores = gt.five_band_scores(saliency, heatmap, thresholds=[[-0.7, -0.3, 0.3, 0.7]])
  # Saliency bands [[0, 1], [2, -1]] equal the heatmap bands everywhere.
  assert int(scores.tp[0, 0]) == 3 and int(scores.tn[0, 0]) == 1
  assert float(scores.accuracy[0, 0]) == 1.0


def test_channel_adjust_sums_then_normalises_per_sample():
  attribution = np.zeros((2, 2, 2, 3), np.float32)
  attribution[0, 0, 0] = [1.0, 2.0, 1.0]   # channel sum 4 -> 1
  attribution[0, 1, 1] = [-1.0, -1.0, 0.0]  # channel sum -2 -> -0.5
  out = gt.channel_adjust(attribution)
  assert out.shape == (2, 2, 2) and out.dtype == jnp.float32
  np.testing.assert_allclose(out[0], [[1.0, 0.0], [0.0, -0.5]])
  np.testing.assert_array_equal(out[1], np.zeros((2, 2)))  # all-zero attribution stays zero
  # [N, H, W] input (already one channel) is normalised only.
  np.testing.assert_allclose(gt.channel_adjust(np.float32([[[2.0, -4.0]]])), [[[0.5, -1.0]]])
  # Channels that cancel: zeros, not NaN.
  cancelled = np.float32([[[[1.0, -1.0]]]])
  np.testing.assert_array_equal(gt.channel_adjust(cancelled), [[[0.0]]])
  np.testing.assert_array_equal(jax.jit(gt.channel_adjust)(attribution), out)


def test_channel_adjust_clamps_the_raw_attribution_before_summing():
  attribution = np.float32([[[[0.5, -0.05, 0.0], [0.02, 0.02, 0.0]]]])  # [1, 1, 2, 3]
  # Clip to [-0.1, 0.1] first: sums 0.1 - 0.05 = 0.05 and 0.04; then / 0.05.
  np.testing.assert_allclose(gt.channel_adjust(attribution, clamp=0.1), [[[1.0, 0.8]]], rtol=1e-6)
  # Without clamp: sums 0.45 and 0.04.
  np.testing.assert_allclose(gt.channel_adjust(attribution), [[[1.0, 0.04 / 0.45]]], rtol=1e-6)


def test_channel_adjust_paper_order_normalises_before_clamping():
  attribution = np.float32([[[[0.5, -0.05, 0.0], [0.02, 0.02, 0.0]]]])  # [1, 1, 2, 3]
  # / max|h| = 0.5: (1, -0.1, 0) and (0.04, 0.04, 0); clip to 0.1: (0.1, -0.1, 0) and
  # (0.04, 0.04, 0); sums 0 and 0.08; then / 0.08.
  np.testing.assert_allclose(gt.channel_adjust(attribution, clamp=0.1, clamp_order="paper"),
                             [[[0.0, 1.0]]], atol=1e-6)
  # The code's order on the same attribution (clip the raw values): (1, 0.8).
  np.testing.assert_allclose(gt.channel_adjust(attribution, clamp=0.1, clamp_order="code"),
                             [[[1.0, 0.8]]], rtol=1e-6)
  # Without a clamp the order does not matter; an all-zero attribution stays zero.
  np.testing.assert_array_equal(gt.channel_adjust(attribution, clamp_order="paper"),
                                gt.channel_adjust(attribution))
  np.testing.assert_array_equal(
      gt.channel_adjust(np.zeros((1, 2, 2, 3), np.float32), clamp=0.1, clamp_order="paper"),
      np.zeros((1, 2, 2)))
  with pytest.raises(ValueError, match="unknown clamp_order 'text'; valid: code, paper"):
    gt.channel_adjust(attribution, clamp=0.1, clamp_order="text")
  with pytest.raises(ValueError, match="unknown clamp_order"):
    gt.five_band_scores(attribution, np.zeros((1, 1, 2), np.float32), clamp_order=None)


@pytest.mark.parametrize("clamp_order", ["code", "paper"])
@pytest.mark.parametrize("peak", [3.0, 0.08])
def test_clamp_orders_match_slow_loop_reference(clamp_order, peak):
  # peak 0.08: a method whose raw maximum |value| is below the 0.1 clamp. The code's order
  # never clamps it (its clamped adjustment equals the unclamped one); the paper's does.
  attribution, heatmap = _random_case(4, n=2, size=9)
  attribution = attribution * np.float32(peak / np.abs(attribution).max())
  scores = gt.five_band_scores(attribution, heatmap, thresholds="clamped", clamp_order=clamp_order)
  thresholds, clamp = gt.resolve_thresholds("clamped")
  for i in range(attribution.shape[0]):
    slow_counts, slow_metrics = _slow_five_band(attribution[i], heatmap[i], thresholds, clamp,
                                                clamp_order)
    np.testing.assert_array_equal(_counts(scores)[i], slow_counts)
  adjusted = gt.channel_adjust(attribution, clamp=clamp, clamp_order=clamp_order)
  unclamped = gt.channel_adjust(attribution)
  if clamp_order == "code" and peak < clamp:
    np.testing.assert_array_equal(adjusted, unclamped)
  else:  # some values are clipped: the adjusted map differs
    assert np.abs(np.asarray(adjusted) - np.asarray(unclamped)).max() > 1e-3
  jitted = jax.jit(functools.partial(gt.five_band_scores, thresholds="clamped",
                                     clamp_order=clamp_order))(attribution, heatmap)
  np.testing.assert_array_equal(_counts(jitted), _counts(scores))


# ----------------------------------------------------------------------------
# Five-band scores.


# The hand-worked 4x4 example. Heatmap (ground-truth bands on the right):
#   0   0   .4  .4        0 0 1 1
#   0   .9  .9  .4   ->   0 2 2 1      7 non-zero, 9 zero pixels
#   0   .9  .9  0         0 2 2 0
#   0   0   0   0         0 0 0 0
# Saliency (one channel, max |S| = 1 so normalisation changes nothing):
#   0     .2    .4    .25
#   -.6   1     .6    .35
#   .1    .45   .8    -.2
#   0     0     .05   -1
_HAND_HEATMAP = np.float32([[0, 0, .4, .4], [0, .9, .9, .4], [0, .9, .9, 0], [0, 0, 0, 0]])
_HAND_SALIENCY = np.float32([[0, .2, .4, .25], [-.6, 1, .6, .35], [.1, .45, .8, -.2],
                             [0, 0, .05, -1]])
_HAND_THRESHOLDS = np.array([[-0.5, -0.3, 0.3, 0.5], [-0.7, -0.1, 0.1, 0.4], [-2, -1.5, 1.5, 2]])
# Threshold 0, (-.5, -.3, .3, .5): saliency bands
#    0  0  1  0          TN TN TP FN
#   -2  2  2  1    ->    FP TP TP TP      TP 5, FP 3, TN 7, FN 1; correct 12
#    0  1  2  0          TN FP TP TN      ((2,1) is band 1 vs 2: FP, not FN)
#    0  0  0 -2          TN TN TN FP
# Threshold 1, (-.7, -.1, .1, .4): .4 <= .4 is band 1 and .1 <= .1 band 0
#    0  1  1  1          TN FP TP TP
#   -1  2  2  1    ->    FP TP TP TP      TP 7, FP 4, TN 5, FN 0; correct 12
#    0  2  2 -1          TN TP TP FP
#    0  0  0 -2          TN TN TN FP
# Threshold 2, (-2, -1.5, 1.5, 2): every pixel band 0
#                                         TP 0, FP 0, TN 9, FN 7; correct 9
_HAND_COUNTS = np.array([  # correct, TP, FP, TN, FN
    [12, 5, 3, 7, 1],
    [12, 7, 4, 5, 0],
    [9, 0, 0, 9, 7]])


def test_hand_worked_4x4_example():
  scores = gt.five_band_scores(_HAND_SALIENCY[None], _HAND_HEATMAP[None], thresholds=_HAND_THRESHOLDS)
  np.testing.assert_array_equal(_counts(scores)[0], _HAND_COUNTS)
  eps = 1e-6
  np.testing.assert_allclose(scores.accuracy[0], [12 / 16, 12 / 16, 9 / 16], rtol=1e-6)
  np.testing.assert_allclose(scores.recall[0], [5 / (6 + eps), 7 / (7 + eps), 0.0], rtol=1e-6)
  np.testing.assert_allclose(scores.precision[0], [5 / (8 + eps), 7 / (11 + eps), 0.0], rtol=1e-6)
  np.testing.assert_allclose(scores.fpr[0], [3 / (10 + eps), 4 / (9 + eps), 0.0], rtol=1e-6)
  # The slow reference agrees with the hand counts.
  slow_counts, _ = _slow_five_band(_HAND_SALIENCY[..., None], _HAND_HEATMAP, _HAND_THRESHOLDS, None)
  np.testing.assert_array_equal(slow_counts, _HAND_COUNTS)
  # Channels [N, H, W, 1] give the same as [N, H, W].
  same = gt.five_band_scores(_HAND_SALIENCY[None, ..., None], _HAND_HEATMAP[None],
                             thresholds=_HAND_THRESHOLDS)
  np.testing.assert_array_equal(_counts(same), _counts(scores))


@pytest.mark.slow
@pytest.mark.parametrize("preset, scale", [("soft", 1.0), ("clamped", 0.08)])
def test_matches_slow_loop_reference_on_random_maps(preset, scale):
  # scale 0.08: part of the raw attribution exceeds the 0.1 clamp, part does not.
  attribution, heatmap = _random_case(1, scale=scale)
  scores = gt.five_band_scores(attribution, heatmap, thresholds=preset)
  thresholds, clamp = gt.resolve_thresholds(preset)
  metrics = np.stack([scores.accuracy, scores.precision, scores.recall, scores.fpr], axis=-1)
  for i in range(attribution.shape[0]):
    slow_counts, slow_metrics = _slow_five_band(attribution[i], heatmap[i], thresholds, clamp)
    np.testing.assert_array_equal(_counts(scores)[i], slow_counts)
    np.testing.assert_allclose(metrics[i], slow_metrics, rtol=2e-6, atol=1e-7)
  assert metrics.dtype == np.float32 and scores.tp.dtype == jnp.int32


def test_values_on_thresholds_and_duplicate_thresholds_match_slow_reference():
  # A map quantised to multiples of 0.025 puts many pixels exactly on (float32) thresholds;
  # the rows below repeat values within and across rows and are not sorted across rows.
  rng = np.random.default_rng(8)
  quantised = (rng.integers(-40, 41, size=(2, 9, 9)) * 0.025).astype(np.float32)
  quantised[:, 0, 0] = 1.0  # max |S| = 1: normalisation is exact
  heatmap = rng.choice(np.float32([0.0, 0.4, 0.9]), size=(2, 9, 9))
  thresholds = np.concatenate([
      gt.soft_thresholds((-0.5, -0.3, 0.3, 0.5), 0.025, 12),
      [[-0.3, 0.0, 0.0, 0.3], [0.1, 0.1, 0.1, 0.1], [-0.9, -0.5, 0.5, 0.9], [-0.3, 0.0, 0.0, 0.3]]])
  scores = gt.five_band_scores(quantised, heatmap, thresholds=thresholds)
  for i in range(2):
    slow_counts, _ = _slow_five_band(quantised[i, ..., None], heatmap[i], thresholds, None)
    np.testing.assert_array_equal(_counts(scores)[i], slow_counts)


@pytest.mark.slow
def test_jit_and_batch_agree_with_eager():
  attribution, heatmap = _random_case(2, n=4)
  eager = gt.five_band_scores(attribution, heatmap, thresholds="soft")
  jitted = jax.jit(functools.partial(gt.five_band_scores, thresholds="soft"))(attribution, heatmap)
  for a, b in zip(eager, jitted):
    np.testing.assert_array_equal(a, b)
  for i in range(4):
    single = gt.five_band_scores(attribution[i:i + 1], heatmap[i:i + 1], thresholds="soft")
    np.testing.assert_array_equal(_counts(single)[0], _counts(eager)[i])


def test_all_zero_attribution_scores_fraction_of_zero_ground_truth():
  _, heatmap = _random_case(3, n=3)
  scores = gt.five_band_scores(np.zeros(heatmap.shape + (3,), np.float32), heatmap)
  zero_fraction = (heatmap == 0).mean(axis=(1, 2))
  np.testing.assert_allclose(scores.accuracy, np.repeat(zero_fraction[:, None], 56, 1), rtol=1e-6)
  np.testing.assert_array_equal(scores.recall, 0.0)
  np.testing.assert_array_equal(scores.precision, 0.0)
  np.testing.assert_array_equal(scores.fpr, 0.0)


def test_class_9_empty_heatmap_gives_zero_recall_and_precision():
  attribution, _ = _random_case(4, n=2)
  heatmap = np.zeros(attribution.shape[:3], np.float32)
  for preset in ("soft", "clamped"):
    scores = gt.five_band_scores(attribution, heatmap, thresholds=preset)
    np.testing.assert_array_equal(scores.tp, 0)
    np.testing.assert_array_equal(scores.fn, 0)
    np.testing.assert_array_equal(scores.recall, 0.0)
    np.testing.assert_array_equal(scores.precision, 0.0)
    assert float(scores.fpr.max()) > 0  # random maps put pixels in non-zero bands


def _hand_cell_heatmaps():
  """Two 16x16 heatmaps drawn by hand: a cell (localisation border, feature core) and an empty one."""
  heatmap = np.zeros((2, 16, 16), np.float32)
  heatmap[0, 3:12, 4:13] = 0.4
  heatmap[0, 5:10, 6:11] = 0.9
  heatmap[0, 13:15, 1:3] = 0.9
  return heatmap


def test_perfect_oracle_map_scores_recall_and_precision_one():
  heatmap = _hand_cell_heatmaps()[:1]
  oracle = np.repeat(heatmap[..., None], 3, axis=-1)  # 0 / 0.4 / 0.9 in every channel
  soft = gt.five_band_scores(oracle, heatmap, thresholds="soft")
  # Adjusted oracle: 0, 0.444, 1. At g_0 = (-.5, -.3, .3, .5) its bands are exactly 0, 1, 2.
  assert float(soft.accuracy[0, 0]) == 1.0
  np.testing.assert_allclose([soft.recall[0, 0], soft.precision[0, 0]], 1.0, atol=1e-6)
  assert int(soft.fp[0, 0]) == 0 and int(soft.fn[0, 0]) == 0
  # Once g4 = 0.5 - 0.005 m falls below 0.444 (m >= 12) the 0.4 pixels move to band 2.
  assert float(soft.precision[0, 20]) < 1.0
  summary = gt.five_band_summary(soft)
  assert int(summary["Pu1"][0]) == 0 and float(summary["Au"][0]) == 1.0
  # Clamped setting on an oracle scaled below the clamp: bands are right once
  # g3 = 0.5 - 0.01 m < 0.444 (m >= 6) and g4 = 0.9 - 0.01 m >= 0.444 (m <= 40).
  clamped = gt.five_band_scores(0.1 * oracle, heatmap, thresholds="clamped")
  np.testing.assert_allclose(clamped.recall[0, 6:], 1.0, atol=1e-6)
  np.testing.assert_allclose(clamped.precision[0, 6:], 1.0, atol=1e-6)
  assert float(clamped.recall[0, 5]) < 1.0
  # The clamp acts on the raw attribution: at scale 1 both 0.4 and 0.9 clip to 0.1,
  # normalise to 1 and land in band 2, so the 0.4 pixels become false positives.
  raw = gt.five_band_scores(oracle, heatmap, thresholds="clamped")
  n_localisation = int((heatmap == np.float32(0.4)).sum())
  np.testing.assert_array_equal(raw.fp[0], n_localisation)
  np.testing.assert_array_equal(raw.fn[0], 0)


@pytest.mark.slow
def test_real_cells_heatmaps_oracle():
  from xai_jax.data import cells
  labels = np.array([0, 3, 6, 9])  # round cell, rectangle, ..., and the empty class 9
  batch = cells.make_batch(jax.random.key(0), 4, size=32, labels=labels)
  heatmap = np.asarray(batch["heatmap"])
  scores = gt.five_band_scores(heatmap, heatmap, thresholds="soft")
  np.testing.assert_allclose(scores.recall[:3, 0], 1.0, atol=1e-6)
  np.testing.assert_allclose(scores.precision[:3, 0], 1.0, atol=1e-6)
  np.testing.assert_array_equal(scores.accuracy[:, 0], 1.0)
  np.testing.assert_array_equal(scores.recall[3], 0.0)  # class 9: TP = FN = 0
  # The image itself is no oracle: summed over channels it also lights up background.
  from_image = gt.five_band_scores(np.asarray(batch["image"]), heatmap, thresholds="soft")
  assert float(from_image.precision[:3, 0].max()) < 1.0


def test_summary_columns_and_roc_points():
  attribution, heatmap = _random_case(5, n=4)
  scores = gt.five_band_scores(attribution, heatmap, thresholds="clamped")
  summary = gt.five_band_summary(scores)
  assert tuple(summary) == gt.SUMMARY_COLUMNS
  recall, precision, accuracy = (np.asarray(a) for a in (scores.recall, scores.precision, scores.accuracy))
  for column, values in (("A", accuracy), ("R", recall), ("P", precision)):
    np.testing.assert_allclose(summary[column + "mu"], values.mean(axis=1), rtol=1e-6)
    np.testing.assert_array_equal(summary[column + "u"], values.max(axis=1))
    np.testing.assert_array_equal(summary[column + "u1"], values.argmax(axis=1))
  points = gt.roc_points(scores)
  assert points.recall.shape == (41,)
  np.testing.assert_allclose(points.recall, recall.mean(axis=0), rtol=1e-6)
  np.testing.assert_allclose(points.fpr, np.asarray(scores.fpr).mean(axis=0), rtol=1e-6)
  jitted = jax.jit(gt.five_band_summary)(scores)
  for key in summary:
    np.testing.assert_allclose(jitted[key], summary[key], rtol=1e-6)


def test_roc_auc_hand_values():
  # One point at (fpr .5, recall .5) plus corners: the diagonal, area 0.5.
  assert gt.roc_auc(gt.RocPoints(recall=np.array([0.5]), fpr=np.array([0.5]))) == pytest.approx(0.5)
  # A perfect point (0, 1): area 1.
  assert gt.roc_auc((np.array([1.0]), np.array([0.0]))) == pytest.approx(1.0)
  # Unsorted points (recall, fpr) = (.8, .4), (.4, .1): trapezoids
  # .1 * .4 / 2 + .3 * (.4 + .8) / 2 + .6 * (.8 + 1) / 2 = .02 + .18 + .54 = .74.
  assert gt.roc_auc((np.array([0.8, 0.4]), np.array([0.4, 0.1]))) == pytest.approx(0.74)
  # Without the corners only the segment between the points: .3 * 1.2 / 2 = .18.
  assert gt.roc_auc((np.array([0.8, 0.4]), np.array([0.4, 0.1])), add_endpoints=False) == pytest.approx(0.18)


# ----------------------------------------------------------------------------
# IOU and IOU*.


# Hand example. Raw saliency (max |s| = 2) and its normalised absolute value:
#    2    2   0  0          1    1    0  0
#   -1   .5   0  0    ->    .5   .25  0  0      mean .25, E[x^2] = 2.75 / 16,
#   -1  -.5   0  0          .5   .25  0  0      population std = sqrt(.109375) = .3307
#   .5   .5   0  0          .25  .25  0  0
# Mask: rows 0-1, columns 0-2 (6 pixels).
_IOU_SALIENCY = np.float32([[2, 2, 0, 0], [-1, .5, 0, 0], [-1, -.5, 0, 0], [.5, .5, 0, 0]])
_IOU_MASK = np.zeros((4, 4), bool)
_IOU_MASK[0:2, 0:3] = True


def test_iou_hand_example():
  s, m = _IOU_SALIENCY[None], _IOU_MASK[None]
  # n_std .5: threshold .165 keeps all 8 non-zero pixels; 4 inside the mask; union 8 + 6 - 4.
  np.testing.assert_allclose(gt.iou(s, m), [4 / 10], rtol=1e-6)
  # n_std 1: threshold .331 keeps 1, 1, .5, .5 (4 pixels), 3 of them in the mask; union 7.
  np.testing.assert_allclose(gt.iou(s, m, n_std=1.0), [3 / 7], rtol=1e-6)
  # IOU* at n_std 1: weights 1 + 1 + .5 over the same union 7.
  np.testing.assert_allclose(gt.iou_star(s, m), [2.5 / 7], rtol=1e-6)
  # IOU* at n_std .5: weights 1 + 1 + .5 + .25 over union 10.
  np.testing.assert_allclose(gt.iou_star(s, m, n_std=0.5), [2.75 / 10], rtol=1e-6)
  # Signed map (abs=False): values 1, 1, -.5, .25, -.5, -.25, .25, .25; mean 1.5 / 16,
  # std = sqrt(.171875 - .09375^2) = .4038, threshold .2019 keeps the 5 positive pixels
  # (0,0), (0,1), (1,1), (3,0), (3,1); 3 inside the mask; union 5 + 6 - 3 = 8.
  np.testing.assert_allclose(gt.iou(s, m, abs=False), [3 / 8], rtol=1e-6)
  # n_std 0 keeps every pixel > 0.
  np.testing.assert_allclose(gt.iou(s, m, n_std=0.0), [4 / 10], rtol=1e-6)


def _slow_thesis_iou(attribution, mask, sigma, take_abs):
  """Gattas's `apply_threshold` + `evaluate_intersection` / `evaluate_intensity`."""
  a = attribution / np.max(np.abs(attribution))
  if take_abs:
    a = np.abs(a)
  a = a.copy()
  a[a < a.std() * sigma] = 0
  intersection = ((a > 0) & (mask > 0)).sum()
  union = ((a > 0) | (mask > 0)).sum()
  intensity = a.copy()
  intensity[(a > 0) & (mask < 0.1)] = 0
  return intersection / union, intensity.sum() / union


def test_iou_matches_thesis_code_on_random_maps():
  rng = np.random.default_rng(6)
  saliency = rng.normal(size=(5, 12, 12)).astype(np.float32)
  masks = np.zeros((5, 12, 12), np.float32)
  for i in range(5):
    r, c = rng.integers(0, 6, size=2)
    masks[i, r:r + 6, c:c + 5] = 1.0
  for n_std, take_abs in ((0.5, True), (1.0, True), (2.0, True), (0.5, False)):
    iou = gt.iou(saliency, masks, n_std=n_std, abs=take_abs)
    star = gt.iou_star(saliency, masks, n_std=n_std, abs=take_abs)
    for i in range(5):
      expected_iou, expected_star = _slow_thesis_iou(saliency[i], masks[i], n_std, take_abs)
      np.testing.assert_allclose(iou[i], expected_iou, rtol=1e-6)
      np.testing.assert_allclose(star[i], expected_star, rtol=1e-5)
  assert np.all(np.asarray(gt.iou_star(saliency, masks)) <= np.asarray(gt.iou(saliency, masks, n_std=1.0)))
  # jit equals eager; channels are summed first.
  jitted = jax.jit(functools.partial(gt.iou, n_std=0.5))(saliency, masks)
  np.testing.assert_array_equal(jitted, gt.iou(saliency, masks))
  split = np.stack([0.25 * saliency, 0.75 * saliency], axis=-1)
  np.testing.assert_allclose(gt.iou_star(split, masks), gt.iou_star(saliency, masks), rtol=1e-5)


def test_iou_edge_cases():
  zero = np.zeros((2, 4, 4), np.float32)
  mask = np.zeros((2, 4, 4), bool)
  mask[0, :2] = True
  # Zero map: nothing kept; union is the mask (score 0) or empty (defined as 0).
  np.testing.assert_array_equal(gt.iou(zero, mask), [0.0, 0.0])
  np.testing.assert_array_equal(gt.iou_star(zero, mask), [0.0, 0.0])


def test_summarize_by_confidence():
  values = np.array([[0.1, 1.0], [0.3, 2.0], [0.5, 3.0], [0.7, 5.0]])
  confidence = np.array([0.95, 0.5, 0.91, 0.9])  # 0.9 itself is low (p > 0.9 is high)
  out = gt.summarize_by_confidence(values, confidence)
  assert out["high"]["count"] == 2 and out["low"]["count"] == 2 and out["all"]["count"] == 4
  np.testing.assert_allclose(out["high"]["mean"], [0.3, 2.0])
  np.testing.assert_allclose(out["high"]["std"], [np.sqrt(0.08), np.sqrt(2.0)])  # ddof 1
  np.testing.assert_allclose(out["low"]["mean"], [0.5, 3.5])
  np.testing.assert_allclose(gt.summarize_by_confidence(values, confidence, ddof=0)["low"]["std"],
                             [0.2, 1.5])
  logits = np.log(np.array([[0.95, 0.05], [0.5, 0.5]]))
  np.testing.assert_allclose(gt.confidence_from_logits(logits), [0.95, 0.5], rtol=1e-6)


# ----------------------------------------------------------------------------
# Bad input.


def test_bad_input_raises_clear_errors():
  attribution, heatmap = _random_case(7, n=2, size=6)
  with pytest.raises(ValueError, match="saliency must be"):
    gt.five_band_scores(attribution[0, ..., 0], heatmap)
  with pytest.raises(ValueError, match="does not match"):
    gt.five_band_scores(attribution[:, :5], heatmap)
  with pytest.raises(ValueError, match="does not match"):
    gt.five_band_scores(attribution[:1], heatmap)
  with pytest.raises(ValueError, match="heatmap must be"):
    gt.five_band_scores(attribution, heatmap[0])
  nan_map = attribution.copy()
  nan_map[0, 1, 1, 0] = np.nan
  with pytest.raises(ValueError, match="saliency contains NaN"):
    gt.five_band_scores(nan_map, heatmap)
  nan_heatmap = heatmap.copy()
  nan_heatmap[1, 0, 0] = np.nan
  with pytest.raises(ValueError, match="heatmap contains NaN"):
    gt.five_band_scores(attribution, nan_heatmap)
  with pytest.raises(ValueError, match="unknown thresholds 'hard'; valid: soft, clamped"):
    gt.five_band_scores(attribution, heatmap, thresholds="hard")
  with pytest.raises(ValueError, match=r"\[M, 4\]"):
    gt.five_band_scores(attribution, heatmap, thresholds=np.zeros((3, 3)))
  with pytest.raises(ValueError, match="non-decreasing"):
    gt.five_band_scores(attribution, heatmap, thresholds=[[-0.5, 0.3, -0.3, 0.5]])
  with pytest.raises(ValueError, match="non-decreasing"):  # soft thresholds that crossed 0
    gt.five_band_scores(attribution, heatmap, thresholds=gt.soft_thresholds((-.5, -.3, .3, .5), .005, 70))
  with pytest.raises(ValueError, match="clamp"):
    gt.five_band_scores(attribution, heatmap, clamp=-0.1)
  with pytest.raises(ValueError, match="attributions must be"):
    gt.channel_adjust(attribution[0, 0])
  with pytest.raises(ValueError, match="attributions contains NaN"):
    gt.channel_adjust(nan_map)
  with pytest.raises(ValueError, match="delta"):
    gt.soft_thresholds((-.5, -.3, .3, .5), 0.0, 3)
  with pytest.raises(ValueError, match="mask must be"):
    gt.iou(attribution[..., 0], heatmap[0] > 0)
  with pytest.raises(ValueError, match="saliency contains NaN"):
    gt.iou_star(nan_map, heatmap > 0)
  with pytest.raises(ValueError, match="n_std"):
    gt.iou(attribution, heatmap > 0, n_std=-1.0)
  with pytest.raises(ValueError, match="values must be"):
    gt.summarize_by_confidence(np.zeros(3), np.zeros(4))
