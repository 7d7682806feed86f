"""Pixel-removal metrics against a plain-numpy reference (one forward pass per removal step).

The model is a one-layer conv + ReLU + dense classifier written twice: as a Flax module and in
numpy (explicit padding and shifted sums). The numpy reference ranks pixels with `np.lexsort`
and removes them in a Python loop, step by step; `perturbation_curve` must reproduce it.
"""

import fractions
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

from xai_jax.explain.postprocess import to_map
from xai_jax.metrics import pixel_removal as pr

H, W, C, NUM_CLASSES = 6, 5, 2, 3  # P = 30: non-square and step sizes that do not divide P


class TinyConvNet(nn.Module):
  features: int = 4

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(self.features, (3, 3), padding="SAME")(x))
    return nn.Dense(NUM_CLASSES)(x.reshape(x.shape[0], -1))


MODEL = TinyConvNet()


def numpy_forward(variables, x):
  """The same network in float64 numpy: 3x3 'SAME' conv, ReLU, flatten (NHWC), dense."""
  params = variables["params"]
  kernel = np.asarray(params["Conv_0"]["kernel"], np.float64)  # [3, 3, C, F]
  bias = np.asarray(params["Conv_0"]["bias"], np.float64)
  padded = np.pad(np.asarray(x, np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
  n, h, w, _ = x.shape
  out = np.zeros((n, h, w, kernel.shape[-1])) + bias
  for di in range(3):
    for dj in range(3):
      out += padded[:, di:di + h, dj:dj + w, :] @ kernel[di, dj]
  hidden = np.maximum(out, 0).reshape(n, -1)
  return hidden @ np.asarray(params["Dense_0"]["kernel"], np.float64) + np.asarray(
      params["Dense_0"]["bias"], np.float64)


def slow_fraction_grid(num_pixels, step_fraction, max_fraction=1.0):
  """The documented `step_fraction` grid in exact rational arithmetic: the set of
  `round(k * d * P)` (halves up) for every `k * d <= max_fraction`, and `round(max_fraction * P)`.
  """
  d = fractions.Fraction(str(step_fraction))
  top = fractions.Fraction(str(max_fraction))
  half_up = lambda v: math.floor(v + fractions.Fraction(1, 2))
  points = {half_up(k * d * num_pixels) for k in range(int(top / d) + 1)}
  return sorted(points | {half_up(top * num_pixels)})


def numpy_curve(params, x, sal, *, order, step, max_fraction, fill, score, perm=None,
                counts=None):
  """Slow reference: explicit ranking, one forward pass per grid point, one image at a time.

  The grid is `0, step, 2 step, ...` up to `floor(max_fraction * P)`, or `counts` when given.
  """
  x = np.asarray(x, np.float64)
  n, h, w, c = x.shape
  p = h * w
  if counts is None:
    kmax = int(np.floor(max_fraction * p + 1e-9))
    counts = list(range(0, kmax + 1, step))
    if counts[-1] != kmax:
      counts.append(kmax)
  fill_img = np.broadcast_to(np.asarray(fill, np.float64), x.shape)
  scores = np.zeros((n, len(counts)))
  labels = np.zeros((n, len(counts)), np.int64)
  for i in range(n):
    s = np.asarray(sal[i], np.float64).reshape(-1)
    if order == "morf":
      ranking = np.lexsort((np.arange(p), -s))  # primary key last: -s, then the index
    elif order == "lerf":
      ranking = np.lexsort((np.arange(p), s))
    else:
      ranking = np.argsort(perm[i])  # pixel removed at position r
    logits0 = numpy_forward(params, x[i:i + 1])[0]
    target = int(np.argmax(logits0))
    for j, k in enumerate(counts):
      xk = x[i].copy().reshape(p, c)
      for pixel in ranking[:k]:
        xk[pixel] = fill_img[i].reshape(p, c)[pixel]
      logits = numpy_forward(params, xk.reshape(1, h, w, c))[0]
      if score == "prob":
        e = np.exp(logits - logits.max())
        logits = e / e.sum()
      scores[i, j] = logits[target]
      labels[i, j] = np.argmax(logits)
  return np.asarray(counts), scores, labels


def numpy_aopc(scores, counts, p, max_fraction):
  kmax = np.floor(max_fraction * p + 1e-9)
  terms = [scores[:, 0] - scores[:, j] for j in range(len(counts)) if counts[j] <= kmax]
  return np.sum(terms, axis=0) / len(terms)


def numpy_afoc(scores, counts, p, fraction):
  kmax = np.floor(fraction * p + 1e-9)
  j = max(j for j in range(len(counts)) if counts[j] <= kmax)
  return np.abs(scores[:, 0] - scores[:, j]) / np.abs(scores[:, 0])


def numpy_flip(labels, counts, p):
  fractions, flipped = [], []
  for row in labels:
    changed = [j for j in range(len(counts)) if row[j] != row[0]]
    fractions.append(counts[changed[0]] / p if changed else 1.0)
    flipped.append(bool(changed))
  return np.asarray(fractions), np.asarray(flipped)


@pytest.fixture(scope="module")
def setup():
  kx, ks, kp = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, (4, H, W, C))
  saliency = jax.random.normal(ks, (4, H, W))
  variables = MODEL.init(kp, x)
  # Large dense weights so that removing pixels flips decisions within the curve.
  variables = jax.tree.map(lambda v: v * 3.0, variables)
  return x, saliency, variables


@pytest.mark.slow
@pytest.mark.parametrize("order,step,fill,score", [
    ("morf", 4, "batch_mean", "logit"),
    ("lerf", 7, 0.25, "prob"),
    ("morf", 1, "image_mean", "prob"),
    ("random", 3, "blur", "logit"),
])
def test_curve_matches_numpy_reference_float64(setup, order, step, fill, score):
  x, saliency, variables = setup
  key = jax.random.key(5)
  with jax.enable_x64(True):
    x64 = jnp.asarray(x, jnp.float64)
    v64 = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), variables)
    curve = pr.perturbation_curve(MODEL, v64, x64, jnp.asarray(saliency, jnp.float64),
                                  order=order, step=step, fill=fill, score=score, key=key,
                                  chunk=3)
    xn = np.asarray(x, np.float64)
    if fill == "batch_mean":
      fill_np = xn.mean(axis=(0, 1, 2))
    elif fill == "image_mean":
      fill_np = xn.mean(axis=(1, 2), keepdims=True)
    elif fill == "blur":
      fill_np = scipy.ndimage.gaussian_filter(xn, sigma=(0, 5.0, 5.0, 0), mode="nearest",
                                              truncate=3.0)
    else:
      fill_np = fill
    perm = None
    if order == "random":  # the reference reuses the documented per-image permutations
      keys = jax.random.split(key, x.shape[0])
      perm = np.stack([np.asarray(jax.random.permutation(k, H * W)) for k in keys])
    counts, scores, labels = numpy_curve(
        variables, xn, np.asarray(saliency), order=order, step=step, max_fraction=1.0,
        fill=fill_np, score=score, perm=perm)
  np.testing.assert_array_equal(np.asarray(curve.counts), counts)
  np.testing.assert_allclose(np.asarray(curve.fractions), counts / (H * W), rtol=1e-7)
  np.testing.assert_allclose(np.asarray(curve.scores), scores, rtol=1e-10, atol=1e-10)
  np.testing.assert_array_equal(np.asarray(curve.labels), labels)
  np.testing.assert_array_equal(np.asarray(curve.target), labels[:, 0])
  assert counts[-1] == H * W  # the full removal is on the grid even if step does not divide P


@pytest.mark.slow
def test_curve_and_metrics_float32_against_reference(setup):
  x, saliency, variables = setup
  curve = pr.perturbation_curve(MODEL, variables, x, saliency, order="morf", step=2,
                                fill="batch_mean", chunk=4)
  counts, scores, labels = numpy_curve(
      variables, np.asarray(x), np.asarray(saliency), order="morf", step=2, max_fraction=1.0,
      fill=np.asarray(x, np.float64).mean(axis=(0, 1, 2)), score="logit")
  assert curve.scores.dtype == jnp.float32 and curve.fractions.dtype == jnp.float32
  assert curve.labels.dtype == jnp.int32
  np.testing.assert_allclose(np.asarray(curve.scores), scores, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(curve.labels), labels)
  p = H * W
  for fraction in (0.2, 0.4, 0.6):  # 6, 12 and 18 pixels: grid points of step 2
    np.testing.assert_allclose(pr.aopc(curve, max_fraction=fraction),
                               numpy_aopc(scores, counts, p, fraction), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(pr.afoc(curve, fraction=fraction),
                               numpy_afoc(scores, counts, p, fraction), rtol=1e-4, atol=1e-5)
  fraction, flipped = pr.pixels_to_flip(curve)
  ref_fraction, ref_flipped = numpy_flip(labels, counts, p)
  np.testing.assert_allclose(fraction, ref_fraction, rtol=1e-6)
  np.testing.assert_array_equal(flipped, ref_flipped)
  assert ref_flipped.any(), "fixture too weak: no decision changes"


def test_aopc_normalisation_by_hand():
  # grid 0, 1, 2, 3 of P = 10 pixels; at 20% the included points are k = 0, 1, 2.
  curve = pr.PerturbationCurve(
      fractions=jnp.array([0.0, 0.1, 0.2, 0.3]), counts=jnp.array([0, 1, 2, 3]),
      scores=jnp.array([[4.0, 3.0, 1.0, -5.0]]), labels=jnp.array([[1, 1, 0, 0]]),
      target=jnp.array([1]), num_pixels=10, max_count=3)
  np.testing.assert_allclose(pr.aopc(curve, max_fraction=0.2), [(0 + 1 + 3) / 3])
  np.testing.assert_allclose(pr.afoc(curve, fraction=0.2), [3 / 4])
  np.testing.assert_allclose(pr.afoc(curve, fraction=0.25), [3 / 4])  # last point <= 2.5
  fraction, flipped = pr.pixels_to_flip(curve)
  np.testing.assert_allclose(fraction, [0.2])
  assert bool(flipped[0])
  with pytest.raises(ValueError, match="stops at 3 of 10"):
    pr.aopc(curve, max_fraction=0.5)
  with pytest.raises(ValueError, match=r"fraction must be a fraction in \(0, 1\]"):
    pr.afoc(curve, fraction=1.5)


def test_never_flipped_gives_one():
  curve = pr.PerturbationCurve(
      fractions=jnp.array([0.0, 0.5, 1.0]), counts=jnp.array([0, 1, 2]),
      scores=jnp.zeros((2, 3)), labels=jnp.array([[2, 2, 2], [0, 1, 0]]),
      target=jnp.array([2, 0]), num_pixels=2, max_count=2)
  fraction, flipped = pr.pixels_to_flip(curve)
  np.testing.assert_allclose(fraction, [1.0, 0.5])
  np.testing.assert_array_equal(flipped, [False, True])


@pytest.mark.slow
def test_jit_equals_eager_and_loops_agree(setup):
  x, saliency, variables = setup
  options = dict(order="lerf", step=3, max_fraction=0.8, fill=jnp.array([0.1, -0.2]),
                 score="prob")
  eager = pr.perturbation_curve(MODEL, variables, x, saliency, **options)
  jitted = jax.jit(lambda v, xx, s: pr.perturbation_curve(MODEL, v, xx, s, **options))(
      variables, x, saliency)
  python_loop = pr.perturbation_curve(MODEL, variables, x, saliency, loop="python", chunk=2,
                                      **options)
  for other in (jitted, python_loop):
    np.testing.assert_allclose(other.scores, eager.scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(other.labels, eager.labels)
    np.testing.assert_array_equal(other.counts, eager.counts)
  metric = lambda v, xx, s: pr.aopc(pr.perturbation_curve(MODEL, v, xx, s, **options),
                                    max_fraction=0.5)
  np.testing.assert_allclose(jax.jit(metric)(variables, x, saliency),
                             metric(variables, x, saliency), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_batch_composition_does_not_matter_with_an_explicit_fill(setup):
  x, saliency, variables = setup
  fill = jnp.array([0.3, -0.1])  # e.g. a training-set mean per channel
  options = dict(order="morf", step=5, fill=fill, chunk=2)
  batch = pr.perturbation_curve(MODEL, variables, x, saliency, **options)
  reverse = pr.perturbation_curve(MODEL, variables, x[::-1], saliency[::-1], **options)
  for i in range(x.shape[0]):
    alone = pr.perturbation_curve(MODEL, variables, x[i:i + 1], saliency[i:i + 1], **options)
    np.testing.assert_allclose(alone.scores[0], batch.scores[i], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(alone.labels[0], batch.labels[i])
  np.testing.assert_allclose(reverse.scores[::-1], batch.scores, rtol=1e-5, atol=1e-6)


def test_channel_attributions_are_reduced(setup):
  x, _, variables = setup
  attributions = jax.random.normal(jax.random.key(9), x.shape)
  for reduce in ("sum", "abs_sum"):
    from_map = pr.perturbation_curve(MODEL, variables, x,
                                     to_map(attributions, reduce), step=3, fill=0.0)
    direct = pr.perturbation_curve(MODEL, variables, x, attributions, step=3, fill=0.0,
                                   reduce=reduce)
    np.testing.assert_array_equal(direct.scores, from_map.scores)


@pytest.mark.slow
def test_constant_map_removes_in_raster_order():
  # A "model" that returns the image itself as logits reveals which pixels are removed.
  x = jnp.arange(1.0, 13.0).reshape(1, 3, 4, 1) + 100.0
  identity = lambda variables, xx: xx.reshape(xx.shape[0], -1)
  for order in ("morf", "lerf"):
    curve = pr.perturbation_curve(identity, None, x, jnp.zeros((1, 3, 4)), order=order,
                                  step=1, fill=0.0, score="logit")
    # The target is the brightest pixel (index 11): in raster order it is removed last.
    np.testing.assert_array_equal(curve.labels[0, :12], np.full(12, 11))
    assert int(curve.labels[0, 12]) == 0  # all zero: argmax is the first index
  # Ties between equal values follow the index in MoRF too (-0.0 == 0.0).
  # Removal order 0, 3, 1, 2 (equal values by index; -0.0 ties with 0.0, else 0, 3, 2, 1):
  # with fill -10 the largest remaining pixel is 4, 3 (idx 2), 3 (idx 2), then all equal.
  sal = jnp.array([[[1.0, -0.0, 0.0, 1.0]]])
  x2 = jnp.array([[[[1.0], [2.0], [3.0], [4.0]]]])
  curve = pr.perturbation_curve(identity, None, x2, sal, order="morf", step=1, fill=-10.0)
  np.testing.assert_array_equal(curve.labels[0], [3, 3, 2, 2, 0])


@pytest.mark.slow
def test_morf_with_exact_linear_attribution_removes_largest_contributions_first():
  # f_c(x) = sum_p w_c[p] . x[p] with fill 0: removing pixel p lowers f_c by a_p = w_c[p] . x[p],
  # so the exact attribution a = w_c * x summed over channels gives, in closed form,
  # f_c(x_k) = f_c(x) - (sum of the k largest a_p), the steepest possible descent.
  rng = np.random.default_rng(0)
  n, h, w, c, classes = 3, 4, 5, 2, 4
  weights = rng.normal(size=(h * w * c, classes))
  x = rng.normal(size=(n, h, w, c))
  linear = lambda v, xx: xx.reshape(xx.shape[0], -1) @ v
  with jax.enable_x64(True):
    logits = x.reshape(n, -1) @ weights
    target = logits.argmax(1)
    attribution = (x * weights[:, target].T.reshape(n, h, w, c)).sum(-1)
    curve = pr.perturbation_curve(linear, jnp.asarray(weights), jnp.asarray(x),
                                  jnp.asarray(attribution), step=1, fill=0.0)
    random_curves = [
        pr.perturbation_curve(linear, jnp.asarray(weights), jnp.asarray(x),
                              jnp.asarray(attribution), order="random", step=1, fill=0.0,
                              key=jax.random.key(s)) for s in range(3)]
  sorted_a = -np.sort(-attribution.reshape(n, -1), axis=1)
  expected = logits[np.arange(n), target][:, None] - np.concatenate(
      [np.zeros((n, 1)), np.cumsum(sorted_a, axis=1)], axis=1)
  np.testing.assert_allclose(curve.scores, expected, rtol=1e-10, atol=1e-10)
  # No order can beat MoRF of the exact attribution at any grid point.
  for rc in random_curves:
    assert np.all(np.asarray(rc.scores) >= np.asarray(curve.scores) - 1e-9)


def test_random_order_needs_key_and_depends_on_it(setup):
  x, saliency, variables = setup
  with pytest.raises(ValueError, match="key"):
    pr.perturbation_curve(MODEL, variables, x, saliency, order="random")
  a = pr.perturbation_curve(MODEL, variables, x, saliency, order="random", key=jax.random.key(1),
                            step=5)
  b = pr.perturbation_curve(MODEL, variables, x, saliency, order="random", key=jax.random.key(1),
                            step=5)
  c = pr.perturbation_curve(MODEL, variables, x, saliency, order="random", key=jax.random.key(2),
                            step=5)
  np.testing.assert_array_equal(a.scores, b.scores)
  assert not np.allclose(a.scores, c.scores)


def test_bad_input(setup):
  x, saliency, variables = setup
  curve = functools.partial(pr.perturbation_curve, MODEL, variables)
  with pytest.raises(ValueError, match=r"\(4, 6, 4\)"):
    curve(x, saliency[:, :, :4])
  with pytest.raises(ValueError, match=r"x must be float\[N, H, W, C\]; got shape \(6, 5, 2\)"):
    curve(x[0], saliency[0])
  with pytest.raises(ValueError, match=r"matching x \(4, 6, 5, 2\)"):
    curve(x, jnp.zeros((4, 6, 5, 3)))
  with pytest.raises(ValueError, match="NaN"):
    curve(x, saliency.at[2, 1, 1].set(jnp.nan))
  with pytest.raises(ValueError, match=r"step must be in \[1, P = H \* W = 30\]"):
    curve(x, saliency, step=31)
  with pytest.raises(ValueError, match="step must be in"):
    curve(x, saliency, step=0)
  with pytest.raises(ValueError, match="integer"):
    curve(x, saliency, step=2.5)
  for bad in (-0.1, 1.5, float("nan")):
    with pytest.raises(ValueError, match=r"max_fraction must be a fraction in \[0, 1\]"):
      curve(x, saliency, max_fraction=bad)
  with pytest.raises(ValueError, match="valid: morf, lerf, random"):
    curve(x, saliency, order="MoRF")
  with pytest.raises(ValueError, match="valid: batch_mean, image_mean, blur"):
    curve(x, saliency, fill="black")
  with pytest.raises(ValueError, match="fill 'mean' is ambiguous: 'batch_mean' is"):
    curve(x, saliency, fill="mean")
  with pytest.raises(ValueError, match="fill 'dataset_mean' must be resolved into per-channel"):
    curve(x, saliency, fill="dataset_mean")
  with pytest.raises(ValueError, match="per-channel fill must be a non-empty sequence"):
    curve(x, saliency, fill=(0.1, "a"))
  with pytest.raises(ValueError, match="not both"):
    curve(x, saliency, step=3, step_fraction=0.1)
  with pytest.raises(ValueError, match=r"step_fraction 0.02 of the 30 pixels is less than one"):
    curve(x, saliency, step_fraction=0.02)
  for bad in (0.0, 1.5, float("nan"), True, "0.1"):
    with pytest.raises(ValueError, match="step_fraction must be"):
      curve(x, saliency, step_fraction=bad)
  with pytest.raises(ValueError, match="valid: logit, prob"):
    curve(x, saliency, score="softmax")
  with pytest.raises(ValueError, match=r"does not broadcast to x of shape \(4, 6, 5, 2\)"):
    curve(x, saliency, fill=jnp.zeros(3))
  with pytest.raises(ValueError, match="chunk"):
    curve(x, saliency, chunk=0)


def test_nan_under_jit_is_removed_last():
  # Documented: the NaN check needs concrete values; under jit NaN pixels sort last.
  x = jnp.array([[[[1.0], [2.0], [3.0]]]])
  identity = lambda variables, xx: xx.reshape(xx.shape[0], -1)
  sal = jnp.array([[[jnp.nan, 1.0, 2.0]]])
  for order, expected in (("morf", [2, 1, 0, 0]), ("lerf", [2, 2, 0, 0])):
    f = jax.jit(lambda s, order=order: pr.perturbation_curve(
        identity, None, x, s, order=order, step=1, fill=-1.0).labels)
    np.testing.assert_array_equal(f(sal)[0], expected)


def test_max_fraction_grid_and_zero(setup):
  x, saliency, variables = setup
  curve = pr.perturbation_curve(MODEL, variables, x, saliency, step=4, max_fraction=0.5)
  np.testing.assert_array_equal(curve.counts, [0, 4, 8, 12, 15])
  only_zero = pr.perturbation_curve(MODEL, variables, x, saliency, step=4, max_fraction=0.0)
  np.testing.assert_array_equal(only_zero.counts, [0])
  np.testing.assert_allclose(only_zero.scores[:, 0], curve.scores[:, 0], rtol=1e-6)
  default = pr.perturbation_curve(MODEL, variables, x, saliency)  # 0.5% of 30 -> 1 pixel
  assert default.counts.shape == (31,)


@pytest.mark.slow
def test_pixel_removal_metrics_match_the_curves(setup):
  x, saliency, variables = setup
  metrics = pr.pixel_removal_metrics(MODEL, variables, x, saliency, step=3, fraction=0.2)
  morf = pr.perturbation_curve(MODEL, variables, x, saliency, order="morf", step=3)
  lerf = pr.perturbation_curve(MODEL, variables, x, saliency, order="lerf", step=3)
  np.testing.assert_allclose(metrics["aopc"], pr.aopc(morf, max_fraction=0.2), rtol=1e-6)
  np.testing.assert_allclose(metrics["afoc_morf"], pr.afoc(morf, fraction=0.2), rtol=1e-6)
  np.testing.assert_allclose(metrics["afoc_lerf"], pr.afoc(lerf, fraction=0.2), rtol=1e-6)
  np.testing.assert_allclose(metrics["n_morf"], pr.pixels_to_flip(morf)[0])
  np.testing.assert_allclose(metrics["n_lerf"], pr.pixels_to_flip(lerf)[0])
  np.testing.assert_allclose(metrics["flipped_lerf"], pr.pixels_to_flip(lerf)[1])


@pytest.mark.slow
def test_delta_against_a_loop_over_draws(setup):
  x, saliency, variables = setup
  metric = functools.partial(pr.pixel_removal_metrics, step=3, fill=jnp.array([0.2, 0.0]))
  result = pr.delta(metric, MODEL, variables, x, saliency, k=2, key=jax.random.key(3))
  index = np.asarray(result.other_index)
  assert index.shape == (4, 2)
  for i in range(4):
    assert i not in index[i] and len(set(index[i])) == 2
  own = metric(MODEL, variables, x, saliency)
  for name in own:
    others = np.mean([
        np.asarray(metric(MODEL, variables, x, saliency[index[:, j]])[name]) for j in range(2)],
        axis=0)
    np.testing.assert_allclose(result.own[name], own[name], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.others[name], others, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.delta[name], np.asarray(own[name]) - others,
                               rtol=1e-5, atol=1e-5)
  jitted = jax.jit(lambda v, xx, s, key: pr.delta(metric, MODEL, v, xx, s, k=2, key=key))(
      variables, x, saliency, jax.random.key(3))
  np.testing.assert_array_equal(jitted.other_index, index)
  np.testing.assert_allclose(jitted.delta["aopc"], result.delta["aopc"], rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="at least k = 4 other maps"):
    pr.delta(metric, MODEL, variables, x, saliency, k=4, key=jax.random.key(3))


@pytest.mark.slow
def test_draws_are_uniform_and_exclude_self():
  index = np.asarray(pr.draw_others(jax.random.key(0), 2000, 6, 5,
                                    jnp.zeros(2000, jnp.int32)))
  assert not np.any(index == 0)
  counts = np.bincount(index.ravel(), minlength=6)[1:]
  # Each of the 5 candidates is drawn once per row (k = 5 of 5): exactly 2000 times.
  np.testing.assert_array_equal(counts, np.full(5, 2000))
  index = np.asarray(pr.draw_others(jax.random.key(1), 3000, 10, 2, jnp.arange(3000) % 10))
  freq = np.bincount(index.ravel(), minlength=10) / index.size
  # 6000 draws over 10 values: binomial sd of a frequency ~ 0.004; allow 5 sd.
  np.testing.assert_allclose(freq, 0.1, atol=0.02)


@pytest.mark.slow
def test_random_saliency_has_delta_near_zero():
  # A uniform-noise "explainer" on the tiny net: own and borrowed maps are exchangeable,
  # so E[delta] = 0. Tolerance: 4 standard errors of the mean of the per-image deltas.
  kx, ks, kp = jax.random.split(jax.random.key(11), 3)
  n = 48
  x = jax.random.normal(kx, (n, H, W, C))
  variables = jax.tree.map(lambda v: 3.0 * v, MODEL.init(kp, x))
  noise = jax.random.uniform(ks, (n, H, W))
  metric = functools.partial(pr.pixel_removal_metrics, step=2, fraction=0.2, fill=jnp.zeros(C),
                             chunk=8)
  result = pr.delta(metric, MODEL, variables, x, noise, k=5, key=jax.random.key(4))
  informative = 0
  for name in ("aopc", "afoc_morf", "afoc_lerf", "n_morf", "n_lerf"):
    d = np.asarray(result.delta[name], np.float64)
    sem = d.std(ddof=1) / np.sqrt(n)
    assert abs(d.mean()) <= 4 * sem + 1e-6, (name, d.mean(), sem)
    informative += sem > 0
  assert informative >= 4  # the test would see a bias: the deltas are not all zero
  # The model's own exact-ish attribution (MoRF score drop) must give a clearly positive
  # delta AOPC, so the test statistic can detect a non-zero mean.
  grads = jax.grad(lambda xx: jnp.sum(jnp.max(MODEL.apply(variables, xx), axis=1)))(x)
  good = pr.delta(metric, MODEL, variables, x, (grads * x).sum(-1), k=5,
                  key=jax.random.key(4)).delta["aopc"]
  d = np.asarray(good, np.float64)
  assert d.mean() > 4 * d.std(ddof=1) / np.sqrt(n)


def test_shared_curve_delta_equals_delta_of_the_metrics(setup):
  # One MoRF and one LeRF call on the own and the other maps together give what `delta`
  # gives with separate metric calls for the same other maps (same repeated batch, so the
  # same "batch_mean" fill), and the own curves are the first N rows.
  x, saliency, variables = setup
  options = dict(fraction=0.2, step=3, fill="batch_mean", chunk=4)
  metric = functools.partial(pr.pixel_removal_metrics, **options)
  reference = pr.delta(metric, MODEL, variables, x, saliency, k=2, key=jax.random.key(3))
  index = np.asarray(reference.other_index)
  other_maps = saliency[index]  # [N, 2, H, W]
  shared = pr.shared_curve_delta(MODEL, variables, x, saliency, other_maps=other_maps,
                                 **options)
  assert set(shared.own) == set(pr.REMOVAL_METRICS)
  assert set(shared.delta) == set(shared.others) == set(pr.DELTA_METRICS)
  for name in pr.REMOVAL_METRICS:
    np.testing.assert_allclose(shared.own[name], reference.own[name], rtol=1e-6, atol=1e-7,
                               err_msg=name)
  for name in pr.DELTA_METRICS:
    np.testing.assert_allclose(shared.others[name], reference.others[name], rtol=1e-6,
                               atol=1e-7, err_msg=name)
    np.testing.assert_allclose(shared.delta[name], reference.delta[name], rtol=1e-6, atol=1e-6,
                               err_msg=name)
  # The own curves: rows 0..N-1 of the curve of the repeated batch.
  x_all = jnp.concatenate([x, jnp.repeat(x, 2, axis=0)])
  maps_all = jnp.concatenate([saliency, saliency[index.reshape(-1)]])
  for order in ("morf", "lerf"):
    full = pr.perturbation_curve(MODEL, variables, x_all, maps_all, order=order, step=3)
    own = shared.curves[order]
    assert own.scores.shape == (4, full.scores.shape[1])
    np.testing.assert_allclose(own.scores, full.scores[:4], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(own.labels, full.labels[:4])
    np.testing.assert_array_equal(own.target, full.target[:4])
    np.testing.assert_array_equal(own.fractions, full.fractions)


def test_shared_curve_delta_other_maps_of_other_images(setup):
  # Maps that are not in the batch (the partners of a whole evaluated set): each image's
  # delta is its own metric minus the mean of its metrics with each of its K maps.
  x, saliency, variables = setup
  fill = jnp.array([0.2, 0.0])
  other_maps = jax.random.normal(jax.random.key(7), (4, 3, H, W))
  shared = pr.shared_curve_delta(MODEL, variables, x, saliency, other_maps=other_maps,
                                 fraction=0.2, step=3, fill=fill)
  metric = functools.partial(pr.pixel_removal_metrics, fraction=0.2, step=3, fill=fill)
  own = metric(MODEL, variables, x, saliency)
  with_other = [metric(MODEL, variables, x, other_maps[:, j]) for j in range(3)]
  for name in pr.DELTA_METRICS:
    others = np.mean([np.asarray(m[name]) for m in with_other], axis=0)
    np.testing.assert_allclose(shared.others[name], others, rtol=1e-6, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(shared.delta[name], np.asarray(own[name]) - others, rtol=1e-6,
                               atol=1e-6, err_msg=name)


def test_shared_curve_delta_without_delta_and_under_jit(setup):
  x, saliency, variables = setup
  fill = jnp.array([0.2, 0.0])
  plain = pr.shared_curve_delta(MODEL, variables, x, saliency, fraction=0.2, step=3, fill=fill)
  assert plain.others is None and plain.delta is None
  reference = pr.pixel_removal_metrics(MODEL, variables, x, saliency, fraction=0.2, step=3,
                                       fill=fill)
  for name in pr.REMOVAL_METRICS:
    np.testing.assert_allclose(plain.own[name], reference[name], rtol=1e-6, atol=1e-7)
  # A per-channel fill may be a tuple (hashable, for static options).
  as_tuple = pr.shared_curve_delta(MODEL, variables, x, saliency, fraction=0.2, step=3,
                                   fill=(0.2, 0.0))
  np.testing.assert_array_equal(as_tuple.own["aopc"], plain.own["aopc"])
  other_maps = saliency[np.array([[1, 2], [0, 3], [3, 1], [2, 0]])]
  run = jax.jit(lambda v, xx, s, o: pr.shared_curve_delta(
      MODEL, v, xx, s, other_maps=o, fraction=0.2, step=3, fill=fill))
  jitted = run(variables, x, saliency, other_maps)
  eager = pr.shared_curve_delta(MODEL, variables, x, saliency, other_maps=other_maps,
                                fraction=0.2, step=3, fill=fill)
  for name in pr.DELTA_METRICS:
    np.testing.assert_allclose(jitted.delta[name], eager.delta[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    (dict(other_maps=np.zeros((4, H, W))), r"other_maps must be \[N = 4, K >= 1, 6, 5\]"),
    (dict(other_maps=np.zeros((3, 2, H, W))), "other_maps must be"),
    (dict(other_maps=np.zeros((4, 0, H, W))), "other_maps must be"),
    (dict(other_maps=np.zeros((4, 2, W, H))), "other_maps must be"),
    (dict(fraction=0.0), "fraction"),
    (dict(step=20, fraction=0.2), "step 20 removes more than fraction"),
])
def test_shared_curve_delta_bad_input(setup, kwargs, message):
  x, saliency, variables = setup
  kwargs = {"step": 3, **kwargs}
  with pytest.raises(ValueError, match=message):
    pr.shared_curve_delta(MODEL, variables, x, saliency, **kwargs)


def _slow_partners(key, index, total, k):
  """The partners of image `index` by a plain loop: the `k` other images whose uniforms
  (drawn from `fold_in(key, index)` for the `total - 1` others, in index order) are smallest."""
  others = [j for j in range(total) if j != index]
  u = np.asarray(jax.random.uniform(jax.random.fold_in(key, index), (total - 1,)))
  return [others[position] for position in np.argsort(u, kind="stable")[:k]]


def test_draw_partners_against_a_slow_loop_and_independent_of_the_batch():
  key = jax.random.key(12)
  total, k = 23, 4
  every = np.asarray(pr.draw_partners(key, np.arange(total), total, k))
  assert every.shape == (total, k) and every.dtype == np.int32
  for i in range(total):
    assert every[i].tolist() == _slow_partners(key, i, total, k), i
    assert i not in every[i] and len(set(every[i])) == k
  # An image's partners depend only on the key and its index: any batch, any order, jitted.
  some = np.array([17, 3, 22, 0])
  np.testing.assert_array_equal(pr.draw_partners(key, some, total, k), every[some])
  np.testing.assert_array_equal(
      jax.jit(lambda i: pr.draw_partners(key, i, total, k))(jnp.asarray(some)), every[some])
  # k = total - 1: every other image exactly once.
  np.testing.assert_array_equal(np.sort(pr.draw_partners(key, np.arange(5), 5, 4), axis=1),
                                [[j for j in range(5) if j != i] for i in range(5)])
  assert not np.array_equal(pr.draw_partners(jax.random.key(13), some, total, k), every[some])


def test_draw_partners_spread_over_the_classes_of_a_class_sorted_set():
  # A folder sorted by class (10 classes x 50 images, as ImageFolderSource orders ImageNet):
  # the partners come from the whole set, so the share of partners of the image's own class
  # is that of a uniform draw of 5 of the 499 others, 49 / 499 = 0.098 (drawing within
  # shards of 32 consecutive images, as before, gave 0.80).
  classes, per_class, k = 10, 50, 5
  total = classes * per_class
  label = np.arange(total) // per_class
  partners = np.asarray(pr.draw_partners(jax.random.key(0), np.arange(total), total, k))
  assert not np.any(partners == np.arange(total)[:, None])
  assert all(len(set(row)) == k for row in partners)
  same = label[partners] == label[:, None]
  p = (per_class - 1) / (total - 1)
  # Per image a hypergeometric count (k of total - 1, per_class - 1 marked), independent
  # across images (independent keys): the share's standard deviation; allow 4 of them.
  sd = np.sqrt(k * p * (1 - p) * (total - 1 - k) / (total - 2) * total) / (total * k)
  assert abs(same.mean() - p) < 4 * sd, (same.mean(), p, sd)
  # Every other class receives about its share (49 / 499 + 1 / 499 each): 4 sd of a binomial.
  other = np.bincount(label[partners][~same], minlength=classes) / (~same).sum()
  np.testing.assert_allclose(other, 1 / classes, atol=4 * np.sqrt(0.1 * 0.9 / (~same).sum()))


@pytest.mark.parametrize("args, message", [
    ((0, np.arange(3), 5, 2), "key"),
    ((jax.random.key(0), np.arange(3), 5, 5), r"k must be in \[1, total = 5\)"),
    ((jax.random.key(0), np.arange(3), 5, 0), r"k must be in \[1, total = 5\)"),
    ((jax.random.key(0), np.arange(3), 5, 2.0), "k must be an int"),
    ((jax.random.key(0), np.array([0, 5]), 5, 2), r"indices must lie in \[0, total = 5\)"),
    ((jax.random.key(0), np.array([[0, 1]]), 5, 2), r"indices must be int\[N\]"),
    ((jax.random.key(0), np.array([0.0, 1.0]), 5, 2), r"indices must be int\[N\]"),
])
def test_draw_partners_bad_input(args, message):
  with pytest.raises(ValueError, match=message):
    pr.draw_partners(*args)


def test_metrics_from_curves_is_the_metric_set(setup):
  x, saliency, variables = setup
  morf = pr.perturbation_curve(MODEL, variables, x, saliency, order="morf", step=3)
  lerf = pr.perturbation_curve(MODEL, variables, x, saliency, order="lerf", step=3)
  values = pr.metrics_from_curves(morf, lerf, fraction=0.2)
  assert tuple(values) == pr.REMOVAL_METRICS
  assert all(v.dtype == jnp.float32 for v in values.values())
  reference = pr.pixel_removal_metrics(MODEL, variables, x, saliency, fraction=0.2, step=3)
  for name in pr.REMOVAL_METRICS:
    np.testing.assert_allclose(values[name], reference[name], rtol=1e-6, err_msg=name)


# --------------------------------------------------------------------------------------------
# The grid as a fraction of the pixels (DeepMaps' 0.5% steps): 10% means 10%.


@pytest.mark.parametrize("num_pixels, step_fraction, max_fraction", [
    (224 * 224, 0.005, 1.0),  # DeepMaps: 0.5% steps at 224x224 (250.88 pixels per step)
    (224 * 224, 0.005, 0.1),
    (96 * 96, 0.1, 1.0),
    (32 * 32, 0.05, 1.0),
    (100, 0.015, 1.0),  # exact halves: 1.5 -> 2, 4.5 -> 5, ... round up
    (1000, 0.03, 0.37),  # 0.37 is no multiple of 0.03: the last point is round(0.37 * P)
    (30, 0.1, 0.5),
])
def test_fraction_grid_against_a_slow_loop(num_pixels, step_fraction, max_fraction):
  grid = pr.removal_grid(num_pixels, step_fraction=step_fraction, max_fraction=max_fraction)
  assert list(grid) == slow_fraction_grid(num_pixels, step_fraction, max_fraction)


def test_ten_percent_is_on_the_half_percent_grid_at_224():
  p = 224 * 224
  grid = pr.removal_grid(p)  # the default: step_fraction 0.005
  assert grid == pr.removal_grid(p, step_fraction=0.005)
  assert len(grid) == 201 and grid[-1] == p
  # 20 * 0.005 * 50176 = 5017.6: grid point 20 is round(0.1 * P) = 5018 pixels.
  assert grid[20] == 5018 == math.floor(fractions.Fraction(p, 10) + fractions.Fraction(1, 2))
  assert pr.removal_grid(100, step_fraction=0.015)[:4] == (0, 2, 3, 5)  # halves round up
  for fraction in (0.1, 0.005, 0.3, 1.0):
    pr.check_removal_grid(p, fraction=fraction)
    pr.check_removal_grid(p, step_fraction=0.005, fraction=fraction)
  # The former default, step round(0.005 * P) = 251 pixels, has no point at 10%: AOPC / AFOC
  # took 19 * 251 = 4769 pixels (9.5%). That is now refused, naming the nearest points.
  with pytest.raises(ValueError, match=r"fraction=0.1 \(5017 of 50176 pixels\) is not on the "
                                       r"removal grid of step=251 pixels: the nearest grid "
                                       r"fractions are 0.09505 \(4769 pixels\) and 0.10005 "
                                       r"\(5020 pixels\)"):
    pr.check_removal_grid(p, step=251, fraction=0.1)
  with pytest.raises(ValueError, match=r"fraction=0.0975 \(4892 of 50176 pixels\) is not on "
                                       r"the removal grid of step_fraction=0.005 .*nearest grid "
                                       r"fractions are 0.095 \(4767 pixels\) and 0.1 \(5018"):
    pr.check_removal_grid(p, step_fraction=0.005, fraction=0.0975)
  with pytest.raises(ValueError, match="step_fraction 0.2 removes 10035 pixels at the first"):
    pr.check_removal_grid(p, step_fraction=0.2, fraction=0.1)
  with pytest.raises(ValueError, match="not both"):
    pr.check_removal_grid(p, step=251, step_fraction=0.005, fraction=0.1)


def test_fraction_grid_curve_and_metrics_float64_against_reference(setup):
  # P = 30 with step_fraction 0.05 (1.5 pixels per step): counts 0, 2, 3, 5, 6, 8, ...
  x, saliency, variables = setup
  counts = slow_fraction_grid(H * W, 0.05)
  with jax.enable_x64(True):
    x64 = jnp.asarray(x, jnp.float64)
    v64 = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), variables)
    curve = pr.perturbation_curve(MODEL, v64, x64, jnp.asarray(saliency, jnp.float64),
                                  order="morf", step_fraction=0.05, fill=0.1, chunk=4)
    _, scores, labels = numpy_curve(variables, np.asarray(x, np.float64), np.asarray(saliency),
                                    order="morf", step=None, max_fraction=1.0, fill=0.1,
                                    score="logit", counts=counts)
    np.testing.assert_array_equal(curve.counts, counts)
    assert curve.step is None and curve.step_fraction == 0.05
    np.testing.assert_allclose(curve.scores, scores, rtol=1e-10, atol=1e-10)
    np.testing.assert_array_equal(curve.labels, labels)
    # 20% = 6 pixels, grid point 4: AOPC is the mean drop over counts 0, 2, 3, 5, 6.
    np.testing.assert_allclose(pr.aopc(curve, max_fraction=0.2),
                               (scores[:, :1] - scores[:, :5]).mean(1), rtol=1e-10)
    np.testing.assert_allclose(pr.afoc(curve, fraction=0.2),
                               np.abs(scores[:, 0] - scores[:, 4]) / np.abs(scores[:, 0]),
                               rtol=1e-10)
    # 13% = round(3.9) = 4 pixels lies between grid points 3 and 5 pixels: refused.
    for metric in (lambda c: pr.aopc(c, max_fraction=0.13),
                   lambda c: pr.afoc(c, fraction=0.13)):
      with pytest.raises(ValueError, match=r"fraction=0.13 \(4 of 30 pixels\) is not on the "
                                           r"removal grid of step_fraction=0.05 .*nearest grid "
                                           r"fractions are 0.1 \(3 pixels\) and 0.15 \(5 "
                                           r"pixels\)"):
        metric(curve)
      with pytest.raises(ValueError, match="is not on the removal grid"):  # static: under jit
        jax.jit(metric)(curve)


def test_off_grid_fractions_are_refused_not_rounded_down(setup):
  x, saliency, variables = setup
  curve = pr.perturbation_curve(MODEL, variables, x, saliency, order="morf", step=2)
  # 10% of 30 pixels = 3 is not on the grid 0, 2, 4, ...: not AOPC at 2 pixels (6.7%).
  for metric in (lambda: pr.aopc(curve, max_fraction=0.1), lambda: pr.afoc(curve, fraction=0.1),
                 lambda: pr.metrics_from_curves(curve, curve, fraction=0.1),
                 lambda: pr.pixel_removal_metrics(MODEL, variables, x, saliency, step=2),
                 lambda: pr.shared_curve_delta(MODEL, variables, x, saliency, step=2)):
    with pytest.raises(ValueError, match=r"fraction=0.1 \(3 of 30 pixels\) is not on the "
                                         r"removal grid of step=2 pixels: the nearest grid "
                                         r"fractions are 0.0667 \(2 pixels\) and 0.134 \(4 "
                                         r"pixels\)"):
      metric()
  # A curve that stops at the fraction ends on its count, a grid point.
  short = pr.perturbation_curve(MODEL, variables, x, saliency, step=2, max_fraction=0.1)
  np.testing.assert_array_equal(short.counts, [0, 2, 3])
  np.testing.assert_allclose(pr.afoc(short, fraction=0.1),
                             np.abs(short.scores[:, 0] - short.scores[:, 2])
                             / np.abs(short.scores[:, 0]), rtol=1e-6)


@pytest.mark.slow
def test_training_set_fill_makes_scores_independent_of_the_shard(setup):
  # The batch whole or split in two: per-image scores agree with a fill computed once (the
  # training set's mean, here any fixed per-channel numbers), not with the batch mean.
  x, saliency, variables = setup
  mean_rgb = tuple(float(v) for v in np.asarray(x, np.float64).mean(axis=(0, 1, 2)) + 0.3)
  options = dict(fraction=0.2, step=3, chunk=4)
  for fill, same in ((mean_rgb, True), ("batch_mean", False)):
    whole = pr.pixel_removal_metrics(MODEL, variables, x, saliency, fill=fill, **options)
    halves = [pr.pixel_removal_metrics(MODEL, variables, x[part], saliency[part], fill=fill,
                                       **options) for part in (slice(0, 1), slice(1, 4))]
    split = np.concatenate([np.asarray(h["aopc"]) for h in halves])
    assert np.allclose(split, whole["aopc"], rtol=1e-6, atol=1e-6) == same, fill
  # A tuple of per-channel numbers is the `[C]` array fill.
  as_array = pr.perturbation_curve(MODEL, variables, x, saliency, step=3,
                                   fill=jnp.asarray(mean_rgb, jnp.float32))
  as_tuple = pr.perturbation_curve(MODEL, variables, x, saliency, step=3, fill=mean_rgb)
  np.testing.assert_array_equal(as_tuple.scores, as_array.scores)
