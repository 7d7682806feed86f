"""Perturbation explainers against closed forms and independent NumPy/sklearn references.

Models (plain apply functions, float64 so that sums of logits cancel exactly):
  * linear:      logits = flatten(x) @ W + c. Feature k's effect is additive:
                 f_t(x) - f_t(x with k filled) = sum_{e in k} W[e, t] (x_e - fill_e), so
                 occlusion with a one-element window = W * (x - b), feature ablation, Shapley
                 values (for any permutations) and the exact-fit surrogates are per-feature
                 sums of W * (x - b).
  * interaction: logits_t = s0 * s1 + s2^2 (s_k: sum of x over feature k), whose Shapley
                 values are computed by the subset formula.
Occlusion with overlapping, border-clipped windows is checked against a loop over windows;
LIME's ridge/Lasso fits against sklearn on the same samples and weights computed in NumPy.
"""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xai_jax import explain, models
from xai_jax.explain import perturbation, segmentation, surrogate

N, H, W, C, K = 2, 6, 6, 3, 3
RNG = np.random.default_rng(0)
X = RNG.normal(size=(N, H, W, C))
T = np.array([0, 2], np.int32)
LINEAR = {"w": RNG.normal(size=(H * W * C, K)), "c": RNG.normal(size=(K,))}
# Four 3x3 quadrant features shared by both images; per-image masks with other ids.
QUADRANTS = np.repeat(np.repeat(np.arange(4).reshape(2, 2), 3, 0), 3, 1)[None]
PER_IMAGE = np.stack([QUADRANTS[0], np.where(QUADRANTS[0] == 3, 1, QUADRANTS[0])])


@pytest.fixture(autouse=True)
def _float64():
  with jax.enable_x64(True):
    yield


def linear_apply(v, x):
  return x.reshape(x.shape[0], -1) @ v["w"] + v["c"]


def _w_times(x, baseline=0.0):
  """W[:, t] * (x - b) per image, [N, H, W, C]."""
  w = LINEAR["w"][:, T].T.reshape(N, H, W, C)
  return w * (x - baseline)


def _feature_sums(values, mask):
  """Per-feature sums of values [N, H, W, C] over a [M, H, W] mask, painted back."""
  mask = np.broadcast_to(mask, values.shape[:3])
  out = np.zeros_like(values)
  for n in range(values.shape[0]):
    for k in np.unique(mask[n]):
      where = mask[n] == k
      out[n][where] = values[n][where].sum()
  return out


def _sklearn():
  """sklearn.linear_model (installed with the optional torch extra: lime, quantus need it)."""
  return pytest.importorskip("sklearn.linear_model")


def _close(got, want, tol=1e-10):
  got, want = np.asarray(got), np.asarray(want)
  assert got.shape == want.shape, (got.shape, want.shape)
  np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())


# ---------------------------------------------------------------------------
# Occlusion.
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_occlusion_single_element_window_is_w_times_x_minus_baseline():
  baseline = 0.3 * RNG.normal(size=(1, H, W, C))
  got = explain.occlusion(linear_apply, LINEAR, X, T, sliding_window_shapes=(1, 1, 1),
                          baseline=baseline)
  _close(got, _w_times(X, baseline))
  # A 1x1 window over all channels: the pixel's sum over channels, on every channel.
  got = explain.occlusion(linear_apply, LINEAR, X, T, sliding_window_shapes=(1, 1))
  per_pixel = _w_times(X).sum(-1, keepdims=True)
  _close(got, np.broadcast_to(per_pixel, X.shape))


def _occlusion_loop(x, window, stride, baseline=0.0):
  """Reference: every window position in a loop, sums of differences / windows covering."""
  dims = x.shape[1:]
  counts = [math.ceil((d - s) / st) + 1 for d, s, st in zip(dims, window, stride)]
  total, covered = np.zeros_like(x), np.zeros(dims)
  f_x = linear_apply(LINEAR, x)[np.arange(N), T]
  for index in itertools.product(*map(range, counts)):
    hidden = np.zeros(dims, bool)
    start = [i * st for i, st in zip(index, stride)]
    hidden[start[0]:start[0] + window[0], start[1]:start[1] + window[1],
           start[2]:start[2] + window[2]] = True
    occluded = np.where(hidden, baseline, x)
    diff = f_x - linear_apply(LINEAR, occluded)[np.arange(N), T]
    total += diff[:, None, None, None] * hidden
    covered += hidden
  return total / covered


@pytest.mark.slow
@pytest.mark.parametrize("window, strides, full", [
    ((2, 2), 1, (2, 2, C)),            # overlapping windows, every element covered 1-4 times
    ((4, 3), (3, 2), (4, 3, C)),       # last window clipped at the border (6 = 0, 3 -> 3..6)
    ((2, 3, 2), (2, 2, 1), (2, 3, 2)),  # windows over channels too
])
def test_occlusion_overlapping_and_clipped_windows_match_a_loop(window, strides, full):
  stride = (strides,) * 3 if isinstance(strides, int) else tuple(strides) + (1,) * (
      3 - len(strides))
  got = explain.occlusion(linear_apply, LINEAR, X, T, sliding_window_shapes=window,
                          strides=strides, baseline=0.5, chunk=3)
  _close(got, _occlusion_loop(X, full, stride, 0.5))


@pytest.mark.slow
def test_occlusion_loop_forms_and_chunks_agree():
  model = models.get("cnn", num_classes=K)
  variables = models.init(model, jax.random.key(0), (1, 8, 8, C))
  x = np.random.default_rng(3).normal(size=(2, 8, 8, C)).astype(np.float32)
  with jax.enable_x64(False):
    runs = [explain.occlusion(model, variables, x, T, sliding_window_shapes=(3, 3), strides=2,
                              chunk=chunk, loop=loop)
            for chunk, loop in ((None, "python"), (4, "python"), (4, "lax"))]
  for run in runs[1:]:
    np.testing.assert_allclose(run, runs[0], rtol=1e-5, atol=1e-6)
  assert np.abs(runs[0]).max() > 0


def test_occlusion_rejects_bad_windows():
  def run(**options):
    return explain.occlusion(linear_apply, LINEAR, X, T, **options)

  with pytest.raises(ValueError, match="exceeds the input's height"):
    run(sliding_window_shapes=(7, 2))
  with pytest.raises(ValueError, match="stride 3 exceeds the window"):
    run(sliding_window_shapes=(2, 2), strides=3)
  with pytest.raises(ValueError, match=r"sliding_window_shapes must be \(h, w\)"):
    run(sliding_window_shapes=(2, 0))
  with pytest.raises(ValueError, match="strides must be a positive int"):
    run(sliding_window_shapes=(2, 2), strides=(1, 1, 1, 1))
  with pytest.raises(TypeError, match="sliding_window_shapes"):
    explain.occlusion(linear_apply, LINEAR, X, T)  # pylint: disable=missing-kwoa


# ---------------------------------------------------------------------------
# Feature ablation and Shapley sampling.
# ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("mask", [QUADRANTS, PER_IMAGE, 7 * QUADRANTS + 3],
                         ids=["shared", "per_image", "sparse_ids"])
def test_feature_ablation_is_per_feature_sum_of_w_times_x(mask):
  baseline = RNG.normal(size=(N, H, W, C))
  got = explain.feature_ablation(linear_apply, LINEAR, X, T, feature_mask=mask,
                                 baseline=baseline, chunk=2)
  _close(got, _feature_sums(_w_times(X, baseline), mask))


def test_feature_ablation_default_mask_is_every_element_and_channel_masks_work():
  got = explain.feature_ablation(linear_apply, LINEAR, X, T)
  _close(got, _w_times(X))
  # A [1, H, W, C] mask: quadrant x channel features.
  mask = (QUADRANTS[..., None] * C + np.arange(C)).astype(np.int32)
  got = explain.feature_ablation(linear_apply, LINEAR, X, T, feature_mask=mask)
  want = np.zeros_like(X)
  for c in range(C):
    want[..., c] = _feature_sums(_w_times(X)[..., c:c + 1], QUADRANTS)[..., 0]
  _close(got, want)


@pytest.mark.slow
@pytest.mark.parametrize("mask", [QUADRANTS, PER_IMAGE], ids=["shared", "per_image"])
def test_shapley_sampling_on_a_linear_model_is_exact_for_any_permutations(mask):
  baseline = 0.2
  want = _feature_sums(_w_times(X, baseline), mask)
  got = explain.shapley_sampling(linear_apply, LINEAR, X, T, feature_mask=mask,
                                 baseline=baseline, samples=3, key=jax.random.key(1))
  _close(got, want)
  permutations = np.array([[3, 1, 0, 2], [0, 1, 2, 3]])
  got = explain.shapley_sampling(linear_apply, LINEAR, X, T, feature_mask=mask,
                                 baseline=baseline, samples=2, permutations=permutations,
                                 loop="lax", chunk=3)
  _close(got, want)


def interaction_apply(_, x):
  """logits_t = s0 * s1 + s2^2 + t: pairwise interaction and a non-additive feature."""
  s = jnp.stack([jnp.sum(jnp.where(jnp.asarray(INTERACTION_MASK)[None, ..., None] == k, x, 0),
                         axis=(1, 2, 3)) for k in range(3)], axis=1)
  value = s[:, 0] * s[:, 1] + s[:, 2] ** 2
  return value[:, None] + jnp.arange(K, dtype=x.dtype)[None]


INTERACTION_MASK = np.minimum(QUADRANTS[0], 2)


def _exact_shapley(value, features):
  """Shapley values by the subset formula: value(frozenset) -> number."""
  phi = np.zeros(features)
  for k in range(features):
    others = [j for j in range(features) if j != k]
    for r in range(features):
      for subset in itertools.combinations(others, r):
        weight = math.factorial(r) * math.factorial(features - r - 1) / math.factorial(features)
        phi[k] += weight * (value(frozenset(subset) | {k}) - value(frozenset(subset)))
  return phi


@pytest.mark.slow
def test_shapley_sampling_with_all_permutations_equals_the_subset_formula():
  baseline = 0.1 * RNG.normal(size=(1, H, W, C))
  permutations = np.array(list(itertools.permutations(range(3))))
  got = explain.shapley_sampling(interaction_apply, {}, X, T, feature_mask=INTERACTION_MASK,
                                 baseline=baseline, samples=6, permutations=permutations)
  for n in range(N):
    def value(kept, n=n):
      on = np.isin(INTERACTION_MASK, list(kept))[..., None]
      mixed = np.where(on, X[n], baseline[0])[None]
      return float(interaction_apply(None, mixed)[0, T[n]])
    phi = _exact_shapley(value, 3)
    want = phi[INTERACTION_MASK][..., None] * np.ones(C)
    _close(got[n], want)


@pytest.mark.slow
def test_shapley_sampling_key_determinism_and_permutation_checks():
  run = lambda **o: explain.shapley_sampling(interaction_apply, {}, X, T,
                                             feature_mask=INTERACTION_MASK, samples=2, **o)
  a, b = run(key=jax.random.key(5)), run(key=jax.random.key(5))
  np.testing.assert_array_equal(a, b)
  # Two of the six orders: the estimate of features 0 and 1 depends on which orders.
  estimates = {round(float(run(key=jax.random.key(k))[0, 0, 0, 0]), 9) for k in range(6)}
  assert len(estimates) > 1
  with pytest.raises(ValueError, match="needs a key"):
    run()
  with pytest.raises(ValueError, match=r"key must be a jax.random.key"):
    run(key=0)
  with pytest.raises(ValueError, match="every row of permutations must be a permutation"):
    run(permutations=np.array([[0, 1, 1], [2, 1, 0]]))
  with pytest.raises(ValueError, match=r"permutations must be int \[samples, F\] = \[2, 3\]"):
    run(permutations=np.array([[0, 1, 2]]))


# ---------------------------------------------------------------------------
# KernelSHAP and LIME.
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_kernel_shap_recovers_shapley_values_of_a_linear_model():
  baseline = RNG.normal(size=(1, H, W, C))
  want = _feature_sums(_w_times(X, baseline), PER_IMAGE)
  got = explain.kernel_shap(linear_apply, LINEAR, X, T, feature_mask=PER_IMAGE,
                            baseline=baseline, samples=30, key=jax.random.key(2))
  # Image 1 has no feature 3: its column is random noise the exact fit sets to ~0.
  _close(got, want, tol=1e-8)


@pytest.mark.slow
def test_kernel_shap_coalitions_follow_captum_sampling():
  features, draws = 6, 20000
  kept = np.asarray(perturbation.kernel_shap_coalitions(jax.random.key(0), 2, draws, features))
  assert kept.shape == (2, draws, features)
  assert kept[:, 0].all() and not kept[:, 1].any()
  sizes = kept[:, 2:].sum(-1)
  k = np.arange(1, features)
  mass = (features - 1) / (k * (features - k))
  expected = mass / mass.sum()
  observed = np.array([(sizes == s).mean() for s in k])
  # 40k draws: binomial standard errors below 0.003.
  np.testing.assert_allclose(observed, expected, atol=0.012)
  # Given the size, every feature is equally likely (uniform subsets).
  np.testing.assert_allclose(kept[:, 2:].mean((0, 1)), kept[:, 2:].mean(), atol=0.01)
  with pytest.raises(ValueError, match="needs F >= 2"):
    perturbation.kernel_shap_coalitions(jax.random.key(0), 1, 5, 1)


def _numpy_lime_inputs(x, kept, fill, mask):
  """Target logits of every coalition, computed in NumPy: [N, S]."""
  mask = np.broadcast_to(mask, x.shape[:3])
  y = np.zeros(kept.shape[:2])
  for n in range(x.shape[0]):
    for s in range(kept.shape[1]):
      on = kept[n, s][mask[n]][..., None]
      y[n, s] = linear_apply(LINEAR, np.where(on, x[n], fill[n])[None])[0, T[n]]
  return y


@pytest.mark.slow
@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_lime_reference_lime_matches_sklearn_ridge_on_numpy_samples(distance):
  Ridge = _sklearn().Ridge  # pylint: disable=invalid-name
  samples = 40
  kept = RNG.integers(0, 2, size=(N, samples, 4))
  kept[:, 0] = 1
  got = explain.lime(linear_apply, LINEAR, X, T, feature_mask=PER_IMAGE, samples=samples,
                     coalitions=kept, distance=distance, chunk=7)
  # lime's hide_color=None: each segment's mean colour.
  mask = np.broadcast_to(PER_IMAGE, X.shape[:3])
  fill = np.zeros_like(X)
  for n in range(N):
    for k in np.unique(mask[n]):
      fill[n][mask[n] == k] = X[n][mask[n] == k].mean(0)
  y = _numpy_lime_inputs(X, kept, fill, PER_IMAGE)
  for n in range(N):
    present = np.unique(mask[n])
    z = kept[n][:, present]
    if distance == "cosine":
      kept_count = z.sum(1)
      cos = kept_count / np.maximum(np.sqrt(kept_count) * np.sqrt(len(present)), 1e-300)
      d = 1 - cos  # sklearn: a zero vector has cosine similarity 0
    else:
      d = np.sqrt(len(present) - z.sum(1))
    weights = np.sqrt(np.exp(-d**2 / 0.25**2))
    coef = Ridge(alpha=1.0).fit(z, y[n], sample_weight=weights).coef_
    want = np.zeros(4)
    want[present] = coef
    _close(got[n], np.broadcast_to(want[mask[n]][..., None], X.shape[1:]), tol=1e-9)


@pytest.mark.slow
def test_lime_without_penalty_recovers_the_linear_coefficients():
  baseline = RNG.normal(size=(N, H, W, C))
  want = _feature_sums(_w_times(X, baseline), QUADRANTS)
  for reference in ("lime", "captum"):
    got = explain.lime(linear_apply, LINEAR, X, T, reference=reference, feature_mask=QUADRANTS,
                       baseline=baseline, samples=30, alpha=0.0, key=jax.random.key(4))
    _close(got, want, tol=1e-8)


@pytest.mark.slow
def test_lime_reference_captum_matches_sklearn_lasso_with_input_space_weights():
  Lasso = _sklearn().Lasso  # pylint: disable=invalid-name
  samples = 30
  kept = RNG.integers(0, 2, size=(N, samples, 4))
  baseline = 0.5
  got = explain.lime(linear_apply, LINEAR, X, T, reference="captum", feature_mask=QUADRANTS,
                     baseline=baseline, samples=samples, coalitions=kept, alpha=0.05,
                     kernel_width=0.7)
  fill = np.full_like(X, baseline)
  y = _numpy_lime_inputs(X, kept, fill, QUADRANTS)
  for n in range(N):
    perturbed = np.where(kept[n][:, QUADRANTS[0]][..., None], X[n], baseline)
    flat_x, flat_p = X[n].reshape(-1), perturbed.reshape(samples, -1)
    cos = flat_p @ flat_x / (np.linalg.norm(flat_x) * np.linalg.norm(flat_p, axis=1))
    weights = np.exp(-(1 - cos) ** 2 / (2 * 0.7**2))
    coef = Lasso(alpha=0.05, tol=1e-14, max_iter=1_000_000).fit(
        kept[n], y[n], sample_weight=weights).coef_
    assert np.abs(coef).min() > 0  # the penalty shrinks but does not zero them here
    _close(got[n], np.broadcast_to(coef[QUADRANTS[0]][..., None], X.shape[1:]), tol=1e-8)


@pytest.mark.slow
def test_lime_pads_the_superpixel_count_to_a_bucket_with_the_same_result():
  # Per-image keys: PER_IMAGE's F = 4 (image 1 lacks id 3) is padded to 16 ids; the padded ids
  # are absent from every image, so the map is the fit on the F = 4 coalitions drawn from the
  # same keys, given explicitly (that path is checked against sklearn above).
  assert perturbation.bucketed_features(4) == 16 and perturbation.bucketed_features(17) == 32
  keys = jax.random.split(jax.random.key(5), N)
  padded = explain.lime(linear_apply, LINEAR, X, T, feature_mask=PER_IMAGE, samples=30,
                        key=keys)
  kept = np.array(perturbation._draw_image_coalitions(  # pylint: disable=protected-access
      keys, samples=30, features=4))
  kept[:, 0] = True  # the lime package's first sample keeps everything
  unpadded = explain.lime(linear_apply, LINEAR, X, T, feature_mask=PER_IMAGE, samples=30,
                          coalitions=kept.astype(np.int32))
  _close(padded, unpadded, tol=1e-9)
  # Another superpixel count in the same bucket traces the model no more often than
  # repeating the first call does: the compiled sweep is reused.
  traces = []

  def counting_apply(v, x):
    traces.append(None)
    return linear_apply(v, x)

  run = lambda mask: explain.lime(counting_apply, LINEAR, X, T, feature_mask=mask, samples=30,
                                  key=keys)
  run(PER_IMAGE)
  first = len(traces)
  run(PER_IMAGE)
  repeat = len(traces) - first
  run(INTERACTION_MASK[None])  # F = 3
  assert len(traces) - first - repeat == repeat


@pytest.mark.slow
def test_lime_default_segments_x_with_quickshift_on_the_host():
  # quickshift's max_dist=200 merges everything in images much smaller than 32x32.
  size = 32
  smooth = np.zeros((1, size, size, 3))
  smooth[:, :16] = (0.9, 0.1, 0.1)
  smooth[:, 16:, :16] = (0.1, 0.8, 0.2)
  smooth[:, 16:, 16:] = (0.2, 0.2, 0.9)
  smooth += 0.01 * np.random.default_rng(1).normal(size=smooth.shape)
  segments = segmentation.segment(smooth)
  assert segments.dtype == np.int32 and segments.shape == (1, size, size)
  assert set(np.unique(segments)) == {0, 1, 2}
  w = {"w": np.random.default_rng(2).normal(size=(size * size * 3, K)), "c": np.zeros(K)}
  key = jax.random.key(3)
  got = explain.lime(linear_apply, w, smooth, 1, samples=20, key=key)
  want = explain.lime(linear_apply, w, smooth, 1, samples=20, key=key, feature_mask=segments)
  np.testing.assert_array_equal(got, want)
  assert len(np.unique(np.asarray(got))) == 3  # one coefficient per segment
  with pytest.raises(ValueError, match="needs a concrete x"):
    jax.jit(lambda x: explain.lime(linear_apply, w, x, 1, samples=20, key=key))(smooth)


@pytest.mark.slow
def test_surrogate_fits_match_sklearn():
  linear_model = _sklearn()
  Lasso, LinearRegression, Ridge = (  # pylint: disable=invalid-name
      linear_model.Lasso, linear_model.LinearRegression, linear_model.Ridge)
  rng = np.random.default_rng(5)
  n, p, f = 3, 25, 6
  z = rng.integers(0, 2, (n, p, f)).astype(float)
  y = z @ rng.normal(size=f) + 0.1 * rng.normal(size=(n, p))
  w = rng.uniform(0.2, 2.0, (n, p))
  for fit, reference in ((lambda: surrogate.linear_fit(z, y, w, alpha=1.0), Ridge(alpha=1.0)),
                         (lambda: surrogate.linear_fit(z, y, w), LinearRegression()),
                         (lambda: surrogate.lasso_fit(z, y, w, alpha=0.02),
                          Lasso(alpha=0.02, tol=1e-14, max_iter=1_000_000))):
    coef, intercept = fit()
    for i in range(n):
      model = reference.fit(z[i], y[i], sample_weight=w[i])
      np.testing.assert_allclose(coef[i], model.coef_, atol=1e-10)
      np.testing.assert_allclose(intercept[i], model.intercept_, atol=1e-10)
  # Fewer samples than features: sklearn's minimum-norm least squares.
  coef, intercept = surrogate.linear_fit(z[:, :4], y[:, :4], w[:, :4])
  for i in range(n):
    model = LinearRegression().fit(z[i, :4], y[i, :4], sample_weight=w[i, :4])
    np.testing.assert_allclose(coef[i], model.coef_, atol=1e-10)
  # A column marked absent gets 0 and leaves the others as the fit without it.
  columns = np.ones((n, f), bool)
  columns[:, 2] = False
  coef, _ = surrogate.linear_fit(z, y, w, alpha=1.0, columns=columns)
  assert np.all(coef[:, 2] == 0)
  for i in range(n):
    model = Ridge(alpha=1.0).fit(np.delete(z[i], 2, axis=1), y[i], sample_weight=w[i])
    np.testing.assert_allclose(np.delete(coef[i], 2), model.coef_, atol=1e-10)


# ---------------------------------------------------------------------------
# Masks, segmentation and option checks.
# ---------------------------------------------------------------------------


def test_feature_mask_checks():
  def run(mask, **options):
    return explain.feature_ablation(linear_apply, LINEAR, X, T, feature_mask=mask, **options)

  with pytest.raises(ValueError, match="must be an integer array"):
    run(QUADRANTS.astype(float))
  with pytest.raises(ValueError, match=r"must have shape \[H, W\], \[N or 1, H, W\]"):
    run(QUADRANTS[:, :5])
  with pytest.raises(ValueError, match=r"must have shape"):
    run(np.zeros((3, H, W), np.int32))
  with pytest.raises(ValueError, match="ids must be >= 0"):
    run(QUADRANTS - 1)
  with pytest.raises(ValueError, match="has id 3 but num_features=3"):
    run(QUADRANTS, num_features=3)
  with pytest.raises(ValueError, match="a traced feature_mask needs num_features"):
    jax.jit(run)(QUADRANTS)
  with pytest.raises(ValueError, match="unknown feature_mask method 'watershed'"):
    run("watershed")
  # A traced mask with an id outside [0, num_features) gives NaN on its elements only.
  bad = QUADRANTS.copy()
  bad[0, 0, 0] = 9
  out = np.asarray(jax.jit(lambda m: run(m, num_features=4))(bad))
  assert np.isnan(out[:, 0, 0]).all() and np.isfinite(out[:, 1:]).all()


def test_coalition_and_key_checks():
  run = lambda name, **o: explain.explain(name, linear_apply, LINEAR, X, T,
                                          feature_mask=QUADRANTS, samples=5, **o)
  for name in ("lime", "kernel_shap"):
    with pytest.raises(ValueError, match="needs a key"):
      run(name)
    with pytest.raises(ValueError, match=r"key must be a jax.random.key"):
      run(name, key=0)
    with pytest.raises(ValueError, match=r"coalitions must have shape \[N, samples, F\]"):
      run(name, coalitions=np.ones((N, 4, 4)))
    with pytest.raises(ValueError, match="only 0 and 1"):
      run(name, coalitions=np.full((N, 5, 4), 2))
  with pytest.raises(ValueError, match="unknown reference 'shap'"):
    run("lime", reference="shap", key=jax.random.key(0))
  with pytest.raises(ValueError, match="unknown distance"):
    run("lime", distance="manhattan", key=jax.random.key(0))
  with pytest.raises(ValueError, match="kernel_width must be > 0"):
    run("lime", kernel_width=0.0, key=jax.random.key(0))


def test_segment_options_and_errors():
  x = np.random.default_rng(0).uniform(size=(2, 12, 12, 3))
  for method in segmentation.METHODS:
    labels = explain.segment(x, method)
    assert labels.shape == (2, 12, 12) and labels.dtype == np.int32
    for image in labels:
      assert set(np.unique(image)) == set(range(image.max() + 1))
  assert explain.segment(x[0], "slic", n_segments=4).shape == (12, 12)
  assert explain.segment(x[..., :1]).shape == (2, 12, 12)  # grey replicated to RGB
  with pytest.raises(ValueError, match="unknown segmentation method"):
    explain.segment(x, "watershed")
  with pytest.raises(ValueError, match=r"unknown quickshift parameters \['n_segments'\]"):
    explain.segment(x, n_segments=3)
  with pytest.raises(ValueError, match="needs 3 channels"):
    explain.segment(np.zeros((1, 8, 8, 4)))
  with pytest.raises(ValueError, match="needs a concrete x"):
    jax.jit(explain.segment)(x)


def test_segment_default_is_lime_image_explainers_quickshift():
  lime_wrappers = pytest.importorskip("lime.wrappers.scikit_image")
  x = np.random.default_rng(1).uniform(size=(2, 20, 20, 3))
  x[:, :10] += 1.0  # two halves of different colour
  x /= x.max()
  lime_default = lime_wrappers.SegmentationAlgorithm(
      "quickshift", kernel_size=4, max_dist=200, ratio=0.2, random_seed=17)
  for image, labels in zip(x, explain.segment(x)):
    np.testing.assert_array_equal(labels, lime_default(image))


def test_check_options_knows_the_perturbation_methods():
  explain.check_options("occlusion", {"sliding_window_shapes": (4, 4), "strides": 2})
  explain.check_options("lime", {"reference": "captum", "samples": None}, supplied=("key",))
  with pytest.raises(ValueError, match=r"occlusion: missing required options "
                                       r"\['sliding_window_shapes'\]"):
    explain.check_options("occlusion", {})
  with pytest.raises(ValueError, match="occlusion: sliding_window_shapes must be"):
    explain.check_options("occlusion", {"sliding_window_shapes": (4, -1)})
  with pytest.raises(ValueError, match="lime: unknown reference"):
    explain.check_options("lime", {"reference": "shap"})
  with pytest.raises(ValueError, match="kernel_shap: unknown options"):
    explain.check_options("kernel_shap", {"n_samples": 3})
