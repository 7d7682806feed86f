r"""Adebayo et al.'s two analytic cases, as contract models, and their figure.

Adebayo, Gilmer, Muelly, Goodfellow, Hardt & Kim, "Sanity Checks for Saliency
Maps" (NeurIPS 2018), https://arxiv.org/abs/1810.03292, Sec. 5.3, Figs. 6/26:

* Linear model `f(x) = w . x`: the gradient is `w`, whatever the input (a
  random model gives white noise), input x gradient is `w * x` and integrated
  gradients from a baseline `b` is `(x - b) * w` (a noisy copy of the input).
* One-layer sum-pooling convolutional network on a grey-scale `n x n` image,
  `l(x) = sum_ij relu((w * x)_ij)` with one 3x3 filter `w`, zero padding (the
  output is `n x n`) and no bias. With the activation pattern
  `a_ij = 1{(w * x)_ij > 0}`, `dl/dx_ij = sum_{k,l in {-1,0,1}} a_{i+k,j+l} w_kl`:
  the gradient at a pixel depends only on the activation pattern in its 3x3
  neighbourhood, so it is constant over uniform regions and changes at edges,
  which is why the maps of a random filter look like an edge detector's.

Conventions (the tests check both): `w * x` in the paper is a convolution; the
layers here (like torch's) cross-correlate, so the formula holds with the
filter flipped, `w_kl -> kernel[1 - k, 1 - l]`. The paper writes
`a = 1{(w * x) >= 0}`; JAX and torch differentiate ReLU as 0 at 0, which only
differs where a pre-activation is exactly 0. (The paper's IG line ends in
`(x - b) * w / 2`; the integral of `w` over [0, 1] is `w`.)

  python docs/adebayo_analytic.py     # writes docs/adebayo_analytic.png (~10 s on a CPU)

The figure: scikit-image's `camera` test image (128x128), standardised to zero
mean and unit variance as a network's input is (on an all-positive image a
random filter's pre-activations have one sign nearly everywhere and its maps
are flat); rows the linear model with random weights and the sum-pool network
with two random filters; columns the input, its Sobel edges (`explain.edge`),
gradient, input x gradient, integrated gradients (zero baseline) and guided
backprop, shown as absolute values scaled to their 99th percentile.
"""

import os
import sys
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from xai_jax import explain
from xai_jax.models import layers, taps


class LinearModel(nn.Module):
  """`logits[n, k] = sum(w[k] * x[n])`, one weight image per class (no bias).

  Attributes:
    num_classes: number of logits.
    dtype: computation dtype.
    ops: unused (no nonlinearity), kept for the explainer contract.
  """
  num_classes: int = 1
  dtype: Any = jnp.float32
  ops: taps.Ops = taps.DEFAULT_OPS

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    """x: float[N, H, W, C] -> float[N, num_classes]."""
    del train
    w = self.param("w", nn.initializers.normal(1.0), (self.num_classes,) + x.shape[1:])
    logits = jnp.einsum("nhwc,khwc->nk", x.astype(self.dtype), w.astype(self.dtype))
    return logits.astype(layers.output_dtype(self.dtype))


class SumPoolConv(nn.Module):
  """`l(x) = sum_ij relu(conv3x3(x)_ij)`: one 3x3 filter, zero padding 1, no bias.

  The ReLU output is the activation "relu" (also the Grad-CAM layer).

  Attributes:
    num_classes: 1 (the single output `l`).
    dtype: computation dtype.
    ops: nonlinearities (see `taps.Ops`).
  """
  num_classes: int = 1
  dtype: Any = jnp.float32
  ops: taps.Ops = taps.DEFAULT_OPS
  gradcam_layer = "relu"

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    """x: float[N, n, n, 1] -> float[N, 1]."""
    del train
    if x.shape[-1] != 1:
      raise ValueError(f"SumPoolConv takes grey-scale images [N, n, n, 1], got {x.shape}")
    y = layers.Conv(1, 3, padding=1, use_bias=False, dtype=self.dtype, name="conv")(x)
    y = taps.activation(self, "relu", self.ops.relu(y))
    return jnp.sum(y, axis=(1, 2)).astype(layers.output_dtype(self.dtype))


def camera(size: int = 128) -> np.ndarray:
  """scikit-image's `camera` image, box-downsampled: float32[1, size, size, 1] in [0, 1]."""
  from skimage import data  # pylint: disable=g-import-not-at-top

  image = data.camera().astype(np.float32) / 255.0
  factor = image.shape[0] // size
  image = image[:size * factor, :size * factor]
  image = image.reshape(size, factor, size, factor).mean(axis=(1, 3))
  return image[None, :, :, None]


def standardize(x: np.ndarray) -> np.ndarray:
  """Zero mean, unit variance over the whole image."""
  return (x - x.mean()) / x.std()


def maps(x: np.ndarray, *, seed: int = 1) -> dict[str, dict[str, np.ndarray]]:
  """The figure's saliency maps: `{row: {column: float32[H, W]}}` for one image `x[1, H, W, 1]`."""
  key_w, *keys = jax.random.split(jax.random.key(seed), 3)
  x = jnp.asarray(x)
  target = jnp.zeros((1,), jnp.int32)
  rows = {}
  linear = LinearModel()
  variables = {"params": {"w": jax.random.normal(key_w, (1,) + x.shape[1:])}}
  rows["linear model, random w"] = {
      "gradient": explain.gradient(linear, variables, x, target),
      "input x gradient": explain.input_x_gradient(linear, variables, x, target),
      "integrated gradients": explain.integrated_gradients(linear, variables, x, target,
                                                           steps=8),
  }
  conv = SumPoolConv()
  for i, key in enumerate(keys):
    kernel = jax.random.normal(key, (3, 3, 1, 1))
    variables = {"params": {"conv": {"kernel": kernel}}}
    rows[f"sum-pool conv, random filter {i + 1}"] = {
        "gradient": explain.gradient(conv, variables, x, target),
        "input x gradient": explain.input_x_gradient(conv, variables, x, target),
        "integrated gradients": explain.integrated_gradients(conv, variables, x, target,
                                                             steps=16),
        "guided backprop": explain.guided_backprop(conv, variables, x, target),
    }
  edges = explain.edge(None, None, x)[0]
  return {row: {"input": np.asarray(x[0, :, :, 0]), "edge detector (Sobel)": np.asarray(edges),
                **{k: np.asarray(v[0, :, :, 0]) for k, v in cols.items()}}
          for row, cols in rows.items()}


COLUMNS = ("input", "edge detector (Sobel)", "gradient", "input x gradient",
           "integrated gradients", "guided backprop")


def figure(path: str, *, size: int = 128, seed: int = 1) -> str:
  """Draws the maps of `maps(standardize(camera(size)))` to `path` (PNG); returns `path`."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  rows = maps(standardize(camera(size)), seed=seed)
  fig, axes = plt.subplots(len(rows), len(COLUMNS), figsize=(2.2 * len(COLUMNS),
                                                             2.3 * len(rows)))
  for r, (row, cols) in enumerate(rows.items()):
    for c, column in enumerate(COLUMNS):
      ax = axes[r, c]
      ax.set_xticks([])
      ax.set_yticks([])
      if r == 0:
        ax.set_title(column, fontsize=9)
      if c == 0:
        ax.set_ylabel(row, fontsize=8)
      if column not in cols:
        ax.text(0.5, 0.5, "not defined\n(no ReLU)", ha="center", va="center", fontsize=8,
                transform=ax.transAxes)
        continue
      image = cols[column]
      if column == "input":
        ax.imshow(image, cmap="gray")
      else:
        image = np.abs(image)
        ax.imshow(image, cmap="gray", vmin=0, vmax=float(np.percentile(image, 99)) or 1.0)
  fig.suptitle("Adebayo et al. (2018) Sec. 5.3: a linear model and a 1-layer sum-pooling "
               "conv net with random weights", fontsize=10)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


if __name__ == "__main__":
  out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__),
                                                           "adebayo_analytic.png")
  print(figure(out))
