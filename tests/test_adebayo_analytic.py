"""Adebayo et al.'s analytic cases (Sanity Checks for Saliency Maps, Sec. 5.3, Figs. 6/26).

The models are the contract modules of `docs/adebayo_analytic.py` (the script
that draws `docs/adebayo_analytic.png`); the closed forms are written here with
numpy loops, independently of JAX, and compared in float64:

* linear `f(x) = w . x`: gradient `w` (the same for every input), input x
  gradient `w * x`, integrated gradients `(x - b) * w`, SmoothGrad `w`;
* one-layer sum-pooling conv net `l(x) = sum_ij relu((w * x)_ij)`:
  `dl/dx_ij = sum_kl a_{i+k,j+l} w_kl` with `a = 1{w * x > 0}` and `*` the
  paper's convolution (the layer cross-correlates, so `w` is the flipped
  kernel), input x gradient `x * dl/dx`; the gradient is constant on uniform
  regions and varies only within 2 pixels of an edge (the edge-detector point).
"""

import importlib.util
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xai_jax import explain

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load_script():
  spec = importlib.util.spec_from_file_location("adebayo_analytic",
                                                ROOT / "docs" / "adebayo_analytic.py")
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # dataclasses (Flax modules) look their module up
  spec.loader.exec_module(module)
  return module


analytic = _load_script()


# ---------------------------------------------------------------------------
# numpy references
# ---------------------------------------------------------------------------


def _cross_correlate_same(image, kernel):
  """`out[i, j] = sum_{k,l in -1..1} kernel[k+1, l+1] * image[i+k, j+l]`, zeros outside."""
  n, m = image.shape
  padded = np.pad(image, 1)
  out = np.zeros((n, m))
  for i in range(n):
    for j in range(m):
      out[i, j] = np.sum(kernel * padded[i:i + 3, j:j + 3])
  return out


def _paper_gradient(image, kernel):
  """Adebayo et al.'s closed form `sum_kl a_{i+k,j+l} w_kl` with `w` the flipped kernel.

  The paper's `w * x` is a convolution, `(w * x)_ij = sum_kl w_kl x_{i-k,j-l}`; the
  network's layer computes it with `w_kl = kernel[1 - k, 1 - l]`. Activations outside the
  image do not exist (a = 0 there).
  """
  w = kernel[::-1, ::-1]
  a = (_cross_correlate_same(image, kernel) > 0).astype(np.float64)
  n, m = image.shape
  grad = np.zeros((n, m))
  for i in range(n):
    for j in range(m):
      for k in (-1, 0, 1):
        for l in (-1, 0, 1):
          if 0 <= i + k < n and 0 <= j + l < m:
            grad[i, j] += a[i + k, j + l] * w[k + 1, l + 1]
  return grad


def _conv(kernel):
  model = analytic.SumPoolConv(dtype=jnp.float64)
  return model, {"params": {"conv": {"kernel": jnp.asarray(kernel).reshape(3, 3, 1, 1)}}}


# ---------------------------------------------------------------------------
# Linear model
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_linear_model_closed_forms():
  rng = np.random.default_rng(0)
  with jax.enable_x64(True):
    model = analytic.LinearModel(num_classes=3, dtype=jnp.float64)
    w = rng.normal(size=(3, 6, 5, 2))
    variables = {"params": {"w": jnp.asarray(w)}}
    x = jnp.asarray(rng.normal(size=(2, 6, 5, 2)))
    other = jnp.asarray(10 * rng.normal(size=(2, 6, 5, 2)))
    target = jnp.array([2, 0])
    w_t = w[[2, 0]]
    logits = model.apply(variables, x)
    np.testing.assert_allclose(logits, np.einsum("nhwc,khwc->nk", np.asarray(x), w))
    # Gradient = w: independent of the input.
    for inputs in (x, other):
      np.testing.assert_allclose(explain.gradient(model, variables, inputs, target), w_t,
                                 rtol=1e-14, atol=0)
    np.testing.assert_allclose(explain.input_x_gradient(model, variables, x, target),
                               w_t * np.asarray(x), rtol=1e-14, atol=0)
    # IG = (x - b) * w (the integral of w over [0, 1] is w; the paper's "/2" is a typo):
    # the attributions sum to f(x) - f(b).
    b = 0.5 * np.asarray(other)
    for rule in ("gausslegendre", "riemann_trapezoid"):
      ig = explain.integrated_gradients(model, variables, x, target, baseline=jnp.asarray(b),
                                        steps=4, rule=rule)
      np.testing.assert_allclose(ig, (np.asarray(x) - b) * w_t, rtol=1e-6)  # float32 nodes
    sg = explain.smoothgrad(explain.gradient, model, variables, x, target,
                            key=jax.random.key(1), samples=3, stdev=0.5)
    np.testing.assert_allclose(sg, w_t, rtol=1e-14, atol=0)


# ---------------------------------------------------------------------------
# One-layer sum-pooling conv net
# ---------------------------------------------------------------------------


def test_sum_pool_conv_gradient_and_input_x_gradient_closed_forms():
  rng = np.random.default_rng(1)
  kernel = rng.normal(size=(3, 3))
  images = rng.normal(size=(2, 12, 11))
  with jax.enable_x64(True):
    model, variables = _conv(kernel)
    x = jnp.asarray(images[..., None])
    target = jnp.zeros((2,), jnp.int32)
    logits = model.apply(variables, x)
    ref_logits = [np.maximum(_cross_correlate_same(im, kernel), 0).sum() for im in images]
    np.testing.assert_allclose(logits[:, 0], ref_logits, rtol=1e-13)
    grad = np.asarray(explain.gradient(model, variables, x, target))[..., 0]
    ixg = np.asarray(explain.input_x_gradient(model, variables, x, target))[..., 0]
  for n in range(2):
    closed = _paper_gradient(images[n], kernel)
    np.testing.assert_allclose(grad[n], closed, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(ixg[n], images[n] * closed, rtol=1e-13, atol=1e-13)
  # The convention matters: with the unflipped kernel the formula is wrong for this filter.
  unflipped = _paper_gradient(images[0], kernel[::-1, ::-1])
  assert np.abs(unflipped - grad[0]).max() > 0.1


def test_relu_derivative_at_zero_follows_torch_not_the_paper():
  """Where a pre-activation is exactly 0 (a zero region), a = 0 (torch/JAX), not 1{>= 0}."""
  rng = np.random.default_rng(2)
  kernel = rng.normal(size=(3, 3))
  image = np.zeros((9, 9))
  image[:, 6:] = rng.uniform(0.5, 1.0, size=(9, 3))
  with jax.enable_x64(True):
    model, variables = _conv(kernel)
    grad = np.asarray(explain.gradient(model, variables, jnp.asarray(image[None, ..., None]),
                                       jnp.zeros((1,), jnp.int32)))[0, ..., 0]
  np.testing.assert_allclose(grad, _paper_gradient(image, kernel), rtol=1e-13, atol=1e-13)
  assert np.all(grad[:, :3] == 0)  # pre-activations exactly 0: no gradient
  paper_ge = kernel[::-1, ::-1].sum()  # what a = 1{>= 0} would give in the zero region
  assert paper_ge != 0


@pytest.mark.parametrize("seed", [3, 4])
def test_sum_pool_conv_gradient_is_an_edge_map(seed):
  """On a piecewise-constant image the gradient is constant inside each region and varies
  only within 2 pixels of an edge or of the border: it only sees the local activation
  pattern, whatever the (random) filter."""
  rng = np.random.default_rng(seed)
  kernel = rng.normal(size=(3, 3))
  n = 24
  levels = rng.uniform(0.2, 1.0, size=3)
  image = np.full((n, n), levels[0])
  image[5:15, 4:13] = levels[1]  # a rectangle
  image[12:20, 14:21] = levels[2]  # another one
  with jax.enable_x64(True):
    model, variables = _conv(kernel)
    grad = np.asarray(explain.gradient(model, variables, jnp.asarray(image[None, ..., None]),
                                       jnp.zeros((1,), jnp.int32)))[0, ..., 0]
  # Pixels whose 5x5 neighbourhood is inside the image and uniform.
  padded = np.pad(image, 2, constant_values=np.nan)
  uniform = np.zeros((n, n), bool)
  for i in range(n):
    for j in range(n):
      patch = padded[i:i + 5, j:j + 5]
      uniform[i, j] = np.all(patch == image[i, j])
  for level in levels:
    inside = uniform & (image == level)
    assert inside.sum() > 4
    values = grad[inside]
    np.testing.assert_allclose(values, values[0], rtol=0, atol=1e-13)
    # ... and that constant is sum(w) or 0, by the sign of the uniform pre-activation.
    expected = kernel.sum() if level * kernel.sum() > 0 else 0.0
    np.testing.assert_allclose(values[0], expected, atol=1e-13)
  # Input x gradient inside a region is level * constant: the input shows through.
  with jax.enable_x64(True):
    ixg = np.asarray(explain.input_x_gradient(
        model, variables, jnp.asarray(image[None, ..., None]), jnp.zeros((1,), jnp.int32)))
  np.testing.assert_allclose(ixg[0, ..., 0], image * grad, rtol=1e-13, atol=1e-13)


@pytest.mark.slow
def test_figure_maps_and_png(tmp_path):
  rows = analytic.maps(analytic.camera(32))
  assert len(rows) == 3
  for cols in rows.values():
    for name, image in cols.items():
      assert image.shape == (32, 32) and np.isfinite(image).all(), name
  linear = rows["linear model, random w"]
  np.testing.assert_allclose(linear["input x gradient"], linear["input"] * linear["gradient"],
                             rtol=1e-5, atol=1e-7)
  path = analytic.figure(str(tmp_path / "analytic.png"), size=32)
  assert pathlib.Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
