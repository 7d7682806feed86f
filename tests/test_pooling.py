"""`models.pooling.max_pool`: torch values and torch's first-maximum gradient, from dense ops.

References: a numpy loop over windows (torch's CPU kernel: first maximum in
row-major window order wins, `-inf` padding) and XLA's own derivative of
`lax.reduce_window` (`select_and_scatter`), which the custom rule replaces.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xai_jax.models import pooling, taps

GEOMETRIES = [  # (shape, window, stride, padding)
    ((2, 8, 8, 3), 2, 2, 0),      # VGG / small CNN
    ((1, 9, 7, 2), 2, 2, 0),      # odd sizes: floor mode drops the last row/column
    ((2, 13, 11, 3), 3, 2, 0),    # AlexNet (overlapping)
    ((1, 10, 9, 2), 3, 2, 1),     # ResNet stem (overlapping, padded)
    ((1, 6, 6, 1), 3, 1, 1),      # stride 1: every input in up to 9 windows
    ((1, 4, 4, 2), 4, 4, 0),      # global pool
]


def _loop_max_pool_vjp(x, g, window, stride, padding):
  """Slow reference: each window's gradient added at its first maximum (row-major)."""
  n, h, w, c = x.shape
  xp = np.full((n, h + 2 * padding, w + 2 * padding, c), -np.inf)
  xp[:, padding:padding + h, padding:padding + w] = x
  grad = np.zeros_like(xp)
  for b in range(n):
    for ch in range(c):
      for i in range(g.shape[1]):
        for j in range(g.shape[2]):
          patch = xp[b, i * stride:i * stride + window, j * stride:j * stride + window, ch]
          di, dj = np.unravel_index(np.argmax(patch), patch.shape)  # first maximum
          grad[b, i * stride + di, j * stride + dj, ch] += g[b, i, j, ch]
  return grad[:, padding:padding + h, padding:padding + w]


def _xla_max_pool(x, window, stride, padding):
  return jax.lax.reduce_window(
      x, np.array(-np.inf, x.dtype), jax.lax.max, (1, window, window, 1), (1, stride, stride, 1),
      ((0, 0), (padding, padding), (padding, padding), (0, 0)))


def _tied_input(shape, seed):
  """Values on a coarse grid after a ReLU: many exact ties, as in real feature maps."""
  x = np.random.default_rng(seed).normal(size=shape)
  return np.maximum(np.round(2 * x) / 2, 0).astype(np.float32)


@pytest.mark.slow
@pytest.mark.parametrize("shape,window,stride,padding", GEOMETRIES)
def test_gradient_goes_to_first_maximum_like_torch(shape, window, stride, padding):
  x = _tied_input(shape, 0)
  pool = lambda x: pooling.max_pool(x, window=window, stride=stride, padding=padding)
  y, vjp = jax.vjp(pool, jnp.asarray(x))
  g = np.random.default_rng(1).normal(size=y.shape).astype(np.float32)
  np.testing.assert_allclose(vjp(jnp.asarray(g))[0],
                             _loop_max_pool_vjp(x, g, window, stride, padding),
                             rtol=1e-6, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("shape,window,stride,padding", GEOMETRIES)
def test_gradient_and_jvp_equal_xla_reduce_window_derivative(shape, window, stride, padding):
  x = jnp.asarray(_tied_input(shape, 2))
  ours = jax.jit(lambda x: pooling.max_pool(x, window=window, stride=stride, padding=padding))
  xla = lambda x: _xla_max_pool(x, window, stride, padding)
  y, vjp = jax.vjp(ours, x)
  y_ref, vjp_ref = jax.vjp(xla, x)
  np.testing.assert_array_equal(y, y_ref)
  g = jax.random.normal(jax.random.key(0), y.shape)
  np.testing.assert_allclose(vjp(g)[0], vjp_ref(g)[0], rtol=1e-6, atol=1e-6)
  tangent = jax.random.normal(jax.random.key(1), x.shape)
  np.testing.assert_array_equal(jax.jvp(ours, (x,), (tangent,))[1],
                                jax.jvp(xla, (x,), (tangent,))[1])


@pytest.mark.slow
def test_second_order_and_vmap():
  x = jax.random.normal(jax.random.key(0), (3, 1, 7, 7, 2))
  pool = lambda x: pooling.max_pool(x, window=3, stride=2, padding=1)
  loss = lambda f: lambda x: jnp.sum(jnp.sin(f(x)) ** 2)
  xla = lambda x: _xla_max_pool(x, 3, 2, 1)
  hvp = lambda f: jax.grad(lambda x: jnp.sum(jax.grad(loss(f))(x) * x))
  np.testing.assert_allclose(hvp(pool)(x[0]), hvp(xla)(x[0]), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(jax.vmap(jax.grad(loss(pool)))(x),
                             jnp.stack([jax.grad(loss(xla))(row) for row in x]),
                             rtol=1e-6, atol=1e-6)


def test_taps_max_pool_is_the_pooling_one_and_errors():
  assert taps.max_pool is pooling.max_pool
  with pytest.raises(ValueError, match="NHWC"):
    pooling.max_pool(jnp.ones((2, 2, 1)), window=2, stride=2)
  with pytest.raises(ValueError, match="window and stride"):
    pooling.max_pool(jnp.ones((1, 4, 4, 1)), window=2, stride=0)
  with pytest.raises(ValueError, match="smaller than the window"):
    pooling.max_pool(jnp.ones((1, 2, 2, 1)), window=3, stride=1)
