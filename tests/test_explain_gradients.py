"""Gradient-family explainers, baselines and resize kernels against closed forms (no torch).

Models used:
  * linear:     logits = flatten(x) @ W + c        -> gradient = W[:, t], IG = (x - b) * w
  * relu_dense: logits = relu(flatten(x) @ A + a) @ B -> gradient = A diag(1[h > 0]) B[:, t]
  * quadratic:  logits_k = sum_i Q[k, i] x_i^2      -> gradient = 2 Q[t] x,
    IG over [b, x] with nodes a_k, weights w_k = 2 Q (x - b) sum_k w_k (b + a_k (x - b))
  * smooth:     a small tanh/softplus network for completeness checks.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

from xai_jax import explain
from xai_jax.explain import common, integrated, postprocess

H, W, C, K = 4, 5, 3, 6
D = H * W * C
RNG = np.random.default_rng(0)


def _flat(x):
  return x.reshape(x.shape[0], -1)


def linear_apply(v, x):
  return _flat(x) @ v["w"] + v["c"]


def relu_dense_apply(v, x):
  return jax.nn.relu(_flat(x) @ v["a"] + v["a_bias"]) @ v["b"]


def quadratic_apply(v, x):
  return (_flat(x) ** 2) @ v["q"].T


def smooth_apply(v, x):
  h = jnp.tanh(_flat(x) @ v["a"] + v["a_bias"])
  return jax.nn.softplus(h @ v["b"]) * 2.0 - 1.0


class FlaxLinear(nn.Module):
  """The linear model as a Flax module (checks the Module code path)."""

  @nn.compact
  def __call__(self, x):
    return nn.Dense(K)(_flat(x))


LIN = {"w": RNG.normal(size=(D, K)).astype(np.float32),
       "c": RNG.normal(size=(K,)).astype(np.float32)}
NET = {"a": (RNG.normal(size=(D, 16)) / np.sqrt(D)).astype(np.float32),
       "a_bias": RNG.normal(size=(16,)).astype(np.float32) * 0.1,
       "b": RNG.normal(size=(16, K)).astype(np.float32)}
QUAD = {"q": RNG.uniform(0.5, 1.5, size=(K, D)).astype(np.float32)}
X = RNG.normal(size=(3, H, W, C)).astype(np.float32)
T = np.array([0, 3, 5], np.int32)
B = RNG.normal(size=(3, H, W, C)).astype(np.float32) * 0.5


def _w_rows(t):
  return LIN["w"][:, t].T.reshape(-1, H, W, C)


def _close(a, b, tol=1e-5):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  assert a.shape == b.shape, (a.shape, b.shape)
  err = np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12)
  assert err < tol, f"relative error {err:.3g} >= {tol}"


# --------------------------------------------------------------------------
# gradient / input x gradient
# --------------------------------------------------------------------------


def test_gradient_linear_is_weight_row():
  _close(explain.gradient(linear_apply, LIN, X, T), _w_rows(T), 1e-6)
  _close(explain.gradient(linear_apply, LIN, X, T, abs=True), np.abs(_w_rows(T)), 1e-6)
  _close(explain.input_x_gradient(linear_apply, LIN, X, T), X * _w_rows(T), 1e-6)


def test_gradient_flax_module_and_predicted_target():
  model = FlaxLinear()
  variables = model.init(jax.random.key(0), jnp.asarray(X))
  w = np.asarray(variables["params"]["Dense_0"]["kernel"])
  pred = np.argmax(np.asarray(model.apply(variables, X)), axis=1)
  np.testing.assert_array_equal(explain.predicted_class(model, variables, X), pred)
  got = explain.gradient(model, variables, X)  # target None -> predicted class
  _close(got, w[:, pred].T.reshape(-1, H, W, C), 1e-6)


def test_gradient_one_layer_relu_closed_form():
  hidden = _flat(X) @ NET["a"] + NET["a_bias"]
  expected = np.stack([NET["a"] @ ((hidden[n] > 0) * NET["b"][:, T[n]]) for n in range(3)])
  _close(explain.gradient(relu_dense_apply, NET, X, T), expected.reshape(X.shape), 1e-5)


# --------------------------------------------------------------------------
# integrated gradients
# --------------------------------------------------------------------------


def test_nodes_and_weights_match_captum_definitions():
  t, u = np.polynomial.legendre.leggauss(7)
  a, w = integrated.nodes_and_weights(7, "gausslegendre")
  np.testing.assert_array_equal(a, (0.5 * (1 + t)).astype(np.float32))
  np.testing.assert_array_equal(w, (0.5 * u).astype(np.float32))
  n = 10
  ulp = 1.2e-7  # torch.linspace's vectorised kernel may round one ulp differently
  cases = {"riemann_left": (0, 1 - 1 / n), "riemann_right": (1 / n, 1),
           "riemann_middle": (1 / (2 * n), 1 - 1 / (2 * n)), "riemann_trapezoid": (0, 1)}
  for rule, (lo, hi) in cases.items():
    a, w = integrated.nodes_and_weights(n, rule)
    np.testing.assert_allclose(a, np.linspace(lo, hi, n), atol=ulp, rtol=0)
  _, w = integrated.nodes_and_weights(n, "riemann_trapezoid")
  np.testing.assert_allclose(w, [0.5 / 9] + [1 / 9] * 8 + [0.5 / 9], rtol=1e-6)
  _, w = integrated.nodes_and_weights(n, "riemann_trapezoid", captum_compat=True)
  np.testing.assert_allclose(w, [0.05] + [0.1] * 8 + [0.05], rtol=1e-6)
  _, w = integrated.nodes_and_weights(n, "riemann_left", captum_compat=True)
  np.testing.assert_allclose(w, [0.1] * n, rtol=1e-6)


def test_ig_linear_exact_for_every_rule():
  expected = (X - B) * _w_rows(T)
  for rule in integrated.RULES:
    got = explain.integrated_gradients(linear_apply, LIN, X, T, baseline=B, steps=7, rule=rule)
    _close(got, expected, 2e-6)


def test_ig_trapezoid_sums_and_captum_compat():
  delta_f = np.sum((X - B) * _w_rows(T), axis=(1, 2, 3))
  for n in (10, 50):
    ok, d_ok = explain.integrated_gradients(linear_apply, LIN, X, T, baseline=B, steps=n,
                                            rule="riemann_trapezoid", return_delta=True)
    compat, d_compat = explain.integrated_gradients(
        linear_apply, LIN, X, T, baseline=B, steps=n, rule="riemann_trapezoid",
        captum_compat=True, return_delta=True)
    _close(np.sum(ok, axis=(1, 2, 3)), delta_f, 1e-5)
    _close(np.sum(compat, axis=(1, 2, 3)), (1 - 1 / n) * delta_f, 1e-5)
    np.testing.assert_allclose(d_ok, 0.0, atol=1e-4 * np.max(np.abs(delta_f)))
    _close(d_compat, -delta_f / n, 1e-3)


@pytest.mark.parametrize("rule", integrated.RULES)
def test_ig_quadratic_nodes(rule):
  n = 6
  alphas, weights = integrated.nodes_and_weights(n, rule)
  d = X - B
  q = QUAD["q"][T].reshape(X.shape)
  path = sum(float(w) * (B + float(a) * d) for a, w in zip(alphas, weights))
  expected = 2 * q * d * path  # integrand linear in alpha: GL / middle / trapezoid are exact
  got = explain.integrated_gradients(quadratic_apply, QUAD, X, T, baseline=B, steps=n,
                                     rule=rule, chunk=4)
  _close(got, expected, 1e-5)
  if rule in ("gausslegendre", "riemann_middle", "riemann_trapezoid"):
    _close(got, q * (X ** 2 - B ** 2), 1e-5)


def test_ig_completeness_64_gausslegendre():
  ig, delta = explain.integrated_gradients(smooth_apply, NET, X, T, baseline=B, steps=64,
                                           return_delta=True)
  f_x = np.asarray(smooth_apply(NET, X))[np.arange(3), T]
  f_b = np.asarray(smooth_apply(NET, B))[np.arange(3), T]
  np.testing.assert_allclose(np.sum(ig, axis=(1, 2, 3)), f_x - f_b, rtol=1e-3)
  assert np.all(np.abs(delta) <= 1e-3 * np.abs(f_x - f_b))


@pytest.mark.slow
def test_ig_chunking_and_loop_forms_agree():
  ref = explain.integrated_gradients(smooth_apply, NET, X, T, steps=10, chunk=10)
  for chunk, loops in ((1, ("python",)), (4, ("python", "lax"))):
    for loop in loops:
      got = explain.integrated_gradients(smooth_apply, NET, X, T, steps=10, chunk=chunk,
                                         loop=loop)
      _close(got, ref, 1e-5)


def test_ig_baseline_scalar_and_broadcast():
  zero = explain.integrated_gradients(linear_apply, LIN, X, T, steps=4)
  _close(zero, X * _w_rows(T), 1e-6)
  one = explain.integrated_gradients(linear_apply, LIN, X, T, steps=4, baseline=1.0)
  _close(one, (X - 1) * _w_rows(T), 1e-6)
  row = explain.integrated_gradients(linear_apply, LIN, X, T, steps=4, baseline=B[:1])
  _close(row, (X - B[:1]) * _w_rows(T), 1e-6)


# --------------------------------------------------------------------------
# transforms and batch independence
# --------------------------------------------------------------------------


@pytest.mark.slow
def test_jit_equals_eager():
  ig = lambda v, x, t: explain.integrated_gradients(smooth_apply, v, x, t, steps=8, chunk=3)
  _close(jax.jit(ig)(NET, X, T), ig(NET, X, T), 1e-6)
  grad = lambda v, x, t: explain.gradient(relu_dense_apply, v, x, t, abs=True)
  _close(jax.jit(grad)(NET, X, T), grad(NET, X, T), 1e-6)
  sg = lambda v, x, t: explain.smoothgrad("gradient", smooth_apply, v, x, t,
                                          key=jax.random.key(1), samples=4, stdev=0.3)
  _close(jax.jit(sg)(NET, X, T), sg(NET, X, T), 1e-6)
  gs = lambda v, x, t: explain.gradient_shap(smooth_apply, v, x, t, baselines=B,
                                             key=jax.random.key(2), samples=3, stdev=0.1)
  _close(jax.jit(gs)(NET, X, T), gs(NET, X, T), 1e-6)


@pytest.mark.slow
def test_vmap_equals_loop():
  xs, ts = X[:, None], T[:, None]  # [3, 1, H, W, C]: vmap over single-image batches
  for fn in (lambda x, t: explain.gradient(relu_dense_apply, NET, x, t),
             lambda x, t: explain.integrated_gradients(smooth_apply, NET, x, t, steps=5)):
    batched = jax.vmap(fn)(xs, ts)
    looped = np.stack([fn(xs[i], ts[i]) for i in range(3)])
    _close(batched, looped, 1e-6)


@pytest.mark.slow
def test_batch_composition_does_not_matter():
  others = RNG.normal(size=(2, H, W, C)).astype(np.float32)
  big_x = np.concatenate([others[:1], X, others[1:]])
  big_t = np.array([1, *T, 2], np.int32)
  for fn in (lambda x, t: explain.integrated_gradients(smooth_apply, NET, x, t, steps=9),
             lambda x, t: explain.input_x_gradient(relu_dense_apply, NET, x, t)):
    alone = np.stack([fn(X[i:i + 1], T[i:i + 1])[0] for i in range(3)])
    _close(fn(big_x, big_t)[1:4], alone, 1e-6)
    _close(fn(X, T), alone, 1e-6)


# --------------------------------------------------------------------------
# SmoothGrad / VarGrad / GradientShap
# --------------------------------------------------------------------------


def _quad_rows():
  return QUAD["q"][T].reshape(X.shape)


def test_smoothgrad_kinds_with_injected_noise_closed_form():
  s = 5
  noise = RNG.normal(size=(3, s, H, W, C)).astype(np.float32) * 0.4
  grads = 2 * _quad_rows()[:, None] * (X[:, None] + noise)  # [N, S, H, W, C]
  expected = {"mean": grads.mean(1), "squared": (grads ** 2).mean(1), "var": grads.var(1)}
  for kind, want in expected.items():
    got = explain.smoothgrad(explain.gradient, quadratic_apply, QUAD, X, T, noise=noise,
                             samples=s, kind=kind, chunk=2)
    _close(got, want, 1e-5)


@pytest.mark.slow
def test_smoothgrad_expectations_with_key():
  s, sigma = 4000, 0.5
  q2 = 2 * _quad_rows()
  mean = explain.smoothgrad("gradient", quadratic_apply, QUAD, X, T, key=jax.random.key(3),
                            samples=s, stdev=sigma, chunk=1000)
  var = explain.smoothgrad("gradient", quadratic_apply, QUAD, X, T, key=jax.random.key(3),
                           samples=s, stdev=sigma, kind="var", chunk=1000)
  # E[2q(x+e)] = 2qx with std error 2q sigma/sqrt(S); Var = (2q sigma)^2.
  assert np.all(np.abs(mean - q2 * X) < 5 * q2 * sigma / np.sqrt(s))
  np.testing.assert_allclose(var, (q2 * sigma) ** 2, rtol=0.12)
  spread = 0.1
  sigma_n = spread * (X.max(axis=(1, 2, 3)) - X.min(axis=(1, 2, 3)))
  var = explain.smoothgrad("gradient", quadratic_apply, QUAD, X, T, key=jax.random.key(4),
                           samples=s, stdev_spread=spread, kind="var", chunk=1000)
  np.testing.assert_allclose(var, (q2 * sigma_n[:, None, None, None]) ** 2, rtol=0.12)


@pytest.mark.slow
def test_smoothgrad_zero_noise_is_the_method_and_wraps_options():
  ig = explain.integrated_gradients(smooth_apply, NET, X, T, steps=6, baseline=0.5)
  got = explain.smoothgrad("integrated_gradients", smooth_apply, NET, X, T,
                           key=jax.random.key(0), samples=3, stdev=0.0, steps=6, baseline=0.5)
  _close(got, ig, 1e-5)
  sal = explain.smoothgrad("gradient", smooth_apply, NET, X, T, key=jax.random.key(0),
                           samples=2, stdev=0.0, abs=True)
  _close(sal, np.abs(explain.gradient(smooth_apply, NET, X, T)), 1e-6)


@pytest.mark.slow
def test_gradient_shap_injected_closed_form():
  s = 4
  baselines = RNG.normal(size=(5, H, W, C)).astype(np.float32)
  idx = RNG.integers(0, 5, size=(3, s))
  alphas = RNG.uniform(size=(3, s)).astype(np.float32)
  noise = RNG.normal(size=(3, s, H, W, C)).astype(np.float32) * 0.2
  q = _quad_rows()[:, None]
  xt = X[:, None] + noise
  b = baselines[idx]
  a = alphas[..., None, None, None]
  expected = ((xt - b) * 2 * q * (a * xt + (1 - a) * b)).mean(1)
  got = explain.gradient_shap(quadratic_apply, QUAD, X, T, baselines=baselines, samples=s,
                              alphas=alphas, baseline_indices=idx, noise=noise, chunk=3)
  _close(got, expected, 1e-5)
  no_noise = explain.gradient_shap(quadratic_apply, QUAD, X, T, baselines=baselines,
                                   samples=s, alphas=alphas, baseline_indices=idx)
  expected = ((X[:, None] - b) * 2 * q * (a * X[:, None] + (1 - a) * b)).mean(1)
  _close(no_noise, expected, 1e-5)


@pytest.mark.slow
def test_gradient_shap_expectation_with_key():
  # E_alpha[(x - b) 2q (a x + (1 - a) b)] = q (x^2 - b^2); averaged over uniform baselines.
  baselines = RNG.normal(size=(2, H, W, C)).astype(np.float32)
  got = explain.gradient_shap(quadratic_apply, QUAD, X, T, baselines=baselines,
                              key=jax.random.key(5), samples=6000, chunk=2000)
  q = _quad_rows()
  expected = q * (X ** 2 - (baselines ** 2).mean(0))
  scale = np.max(np.abs(q * (X ** 2 + baselines.max(0) ** 2)))
  assert np.max(np.abs(got - expected)) < 0.06 * scale


# --------------------------------------------------------------------------
# registry and input validation
# --------------------------------------------------------------------------


def test_registry_dispatch_and_unknown_name():
  _close(explain.explain("gradient", linear_apply, LIN, X, T), _w_rows(T), 1e-6)
  _close(explain.explain("integrated_gradients", linear_apply, LIN, X, T, steps=3),
         X * _w_rows(T), 1e-6)
  for name in ("gradient", "input_x_gradient", "integrated_gradients", "smoothgrad",
               "gradient_shap", "random", "edge"):
    assert name in explain.METHODS
  noise = RNG.normal(size=(3, 2, H, W, C)).astype(np.float32)
  _close(explain.explain("smoothgrad", quadratic_apply, QUAD, X, T, samples=2, noise=noise),
         (2 * _quad_rows()[:, None] * (X[:, None] + noise)).mean(1), 1e-5)
  with pytest.raises(ValueError, match="valid: .*gradient"):
    explain.explain("no_such_method", linear_apply, LIN, X, T)


@pytest.mark.parametrize("bad_x, bad_t, match", [
    (X[0], T, "H, W, C"),
    (X.astype(np.int32), T, "floating"),
    (np.where(np.arange(D).reshape(1, H, W, C) == 7, np.nan, X), T, "NaN"),
    (X, T[:2], "shape"),
    (X, T.astype(np.float32), "integer"),
    (X, np.array([0, 1, K]), "range"),
    (X, np.array([0, -1, 1]), "range"),
])
def test_bad_inputs_raise(bad_x, bad_t, match):
  with pytest.raises(ValueError, match=match):
    explain.gradient(linear_apply, LIN, bad_x, bad_t)
  with pytest.raises(ValueError, match=match):
    explain.integrated_gradients(linear_apply, LIN, bad_x, bad_t, steps=2)


def test_bad_options_raise():
  with pytest.raises(ValueError, match="valid: gausslegendre"):
    explain.integrated_gradients(linear_apply, LIN, X, T, rule="simpson")
  with pytest.raises(ValueError, match="steps >= 2"):
    explain.integrated_gradients(linear_apply, LIN, X, T, rule="riemann_left", steps=1)
  with pytest.raises(ValueError, match="chunk"):
    explain.integrated_gradients(linear_apply, LIN, X, T, chunk=0)
  with pytest.raises(ValueError, match="broadcast"):
    explain.integrated_gradients(linear_apply, LIN, X, T, baseline=np.zeros((2, H, W, C)))
  with pytest.raises(ValueError, match="not both"):
    explain.smoothgrad("gradient", linear_apply, LIN, X, T, key=jax.random.key(0), stdev=1.0,
                       stdev_spread=0.1)
  with pytest.raises(ValueError, match="key"):
    explain.smoothgrad("gradient", linear_apply, LIN, X, T)
  with pytest.raises(ValueError, match="valid: mean"):
    explain.smoothgrad("gradient", linear_apply, LIN, X, T, key=jax.random.key(0), kind="max")
  with pytest.raises(ValueError, match="unknown method"):
    explain.smoothgrad("nope", linear_apply, LIN, X, T, key=jax.random.key(0))
  with pytest.raises(ValueError, match="baselines"):
    explain.gradient_shap(linear_apply, LIN, X, T, baselines=np.zeros((2, H, W)),
                          key=jax.random.key(0))
  with pytest.raises(ValueError, match="baseline_indices"):
    explain.gradient_shap(linear_apply, LIN, X, T, baselines=B, samples=2,
                          alphas=np.zeros((3, 2)), baseline_indices=np.full((3, 2), 3))


# --------------------------------------------------------------------------
# baselines
# --------------------------------------------------------------------------


def test_edge_matches_scipy_sobel():
  img = RNG.normal(size=(2, 7, 6, 3)).astype(np.float32)
  expected = np.zeros((2, 7, 6))
  for n in range(2):
    for c in range(3):
      ch = img[n, :, :, c].astype(np.float64)
      expected[n] += np.hypot(scipy.ndimage.sobel(ch, axis=0), scipy.ndimage.sobel(ch, axis=1))
  _close(explain.explain("edge", None, None, img), expected / 3, 1e-5)


def test_random_map_uniform_and_keyed():
  a = explain.explain("random", None, None, X, key=jax.random.key(0))
  b = explain.random_map(None, None, X, key=jax.random.key(0))
  c = explain.random_map(None, None, X, key=jax.random.key(1))
  assert a.shape == X.shape[:3] and float(a.min()) >= 0 and float(a.max()) < 1
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


# --------------------------------------------------------------------------
# resize kernels and normalisation, against slow per-pixel formulas
# --------------------------------------------------------------------------


def _slow_nearest(m, out_h, out_w):
  n, h, w = m.shape[:3]
  out = np.zeros((n, out_h, out_w) + m.shape[3:], m.dtype)
  for i in range(out_h):
    for j in range(out_w):
      # torch: src = min(floor(dst * (in / out)), in - 1), scale in float32
      si = min(int(np.floor(np.float32(i) * (np.float32(h) / np.float32(out_h)))), h - 1)
      sj = min(int(np.floor(np.float32(j) * (np.float32(w) / np.float32(out_w)))), w - 1)
      out[:, i, j] = m[:, si, sj]
  return out


def _slow_bilinear(m, out_h, out_w, align_corners):
  n, h, w = m.shape[:3]

  def src(dst, size_in, size_out):
    if align_corners:
      return dst * (size_in - 1) / (size_out - 1) if size_out > 1 else 0.0
    return max((dst + 0.5) * size_in / size_out - 0.5, 0.0)

  out = np.zeros((n, out_h, out_w) + m.shape[3:])
  for i in range(out_h):
    y = src(i, h, out_h)
    y0 = min(int(np.floor(y)), h - 1)
    y1, ly = min(y0 + 1, h - 1), y - y0
    for j in range(out_w):
      x = src(j, w, out_w)
      x0 = min(int(np.floor(x)), w - 1)
      x1, lx = min(x0 + 1, w - 1), x - x0
      out[:, i, j] = ((1 - ly) * ((1 - lx) * m[:, y0, x0] + lx * m[:, y0, x1])
                      + ly * ((1 - lx) * m[:, y1, x0] + lx * m[:, y1, x1]))
  return out


@pytest.mark.slow
@pytest.mark.parametrize("shape, size", [
    ((2, 7, 7), (28, 28)), ((2, 13, 9, 2), (30, 20)), ((1, 14, 14), (5, 7)),
    ((2, 5, 6), (5, 6)), ((1, 1, 1, 3), (4, 4)), ((1, 3, 4), (1, 1))])
def test_resize_kernels_match_slow_formulas(shape, size):
  m = RNG.normal(size=shape).astype(np.float32)
  np.testing.assert_array_equal(postprocess.resize_nearest(m, size), _slow_nearest(m, *size))
  for align in (False, True):
    got = postprocess.resize_bilinear(m, size, align_corners=align)
    _close(got, _slow_bilinear(m, *size, align), 1e-5)
    _close(postprocess.resize(m, size, mode="bilinear", align_corners=align), got, 1e-7)
  jitted = jax.jit(postprocess.resize_bilinear, static_argnums=1)(jnp.asarray(m), size)
  _close(jitted, postprocess.resize_bilinear(m, size), 1e-6)


def test_resize_bilinear_upsampling_equals_jax_image():
  m = RNG.normal(size=(2, 7, 9)).astype(np.float32)
  _close(postprocess.resize_bilinear(m, (21, 30)),
         jax.image.resize(m, (2, 21, 30), "bilinear"), 1e-5)


def test_normalize_min_max_and_bad_maps():
  m = RNG.normal(size=(3, 4, 5)).astype(np.float32)
  lo = m.min(axis=(1, 2), keepdims=True)
  hi = m.max(axis=(1, 2), keepdims=True)
  _close(postprocess.normalize_min_max(m, eps=0.0), (m - lo) / (hi - lo), 1e-6)
  _close(postprocess.normalize_min_max(m), (m - lo) / (hi - lo + 1e-7), 1e-6)
  np.testing.assert_array_equal(postprocess.normalize_min_max(np.ones((2, 3, 3))), 0.0)
  with pytest.raises(ValueError, match="maps"):
    postprocess.resize_nearest(np.zeros((4, 4)), (8, 8))
  with pytest.raises(ValueError, match="size"):
    postprocess.resize_bilinear(np.zeros((1, 4, 4)), (8, 0))
  with pytest.raises(ValueError, match="valid: nearest"):
    postprocess.resize(np.zeros((1, 4, 4)), 8, mode="bicubic")


def test_default_chunk_bounds_rows():
  assert common.default_chunk(50, (8, 224, 224, 3)) == 4
  assert common.default_chunk(50, (64, 64, 64, 3)) == 6
  assert common.default_chunk(3, (1, 8, 8, 1)) == 3
  assert common.default_chunk(50, (1024, 224, 224, 3)) == 1


def test_integrated_gradients_float64_uses_float64_nodes():
  """Gauss-Legendre nodes follow the input's precision: on f(x) = sum(x^3) with a zero
  baseline, IG = x^3 exactly (the rule integrates 3 a^2 exactly for n >= 2), so float64 maps
  agree to 1e-14, where float32-rounded nodes leave ~1e-8."""
  t, u = np.polynomial.legendre.leggauss(5)
  alphas, weights = integrated.nodes_and_weights(5, dtype=np.float64)
  assert alphas.dtype == weights.dtype == np.float64
  np.testing.assert_array_equal(alphas, 0.5 * (1 + t))
  np.testing.assert_array_equal(weights, 0.5 * u)
  cube = lambda v, a: jnp.stack([jnp.sum(a ** 3, axis=(1, 2, 3)), jnp.sum(a, axis=(1, 2, 3))],
                                axis=-1)
  with jax.enable_x64(True):
    x = jnp.asarray(np.random.default_rng(0).uniform(0.5, 2.0, (2, 3, 3, 1)), jnp.float64)
    got = explain.integrated_gradients(cube, {}, x, jnp.zeros(2, jnp.int32), steps=5)
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(got), np.asarray(x) ** 3, rtol=1e-14)
