"""Layers shared by the `xai_jax.models` networks, each with torch semantics.

Conv, Dense and BatchNorm mark their output as a bias site (`taps.bias_site`
named "bias", so a site reads `"<layer path>/bias"`). Parameters are stored in
float32 with torchvision's layout transposed to Flax's (conv kernel HWIO, dense
kernel [in, out]); computation runs in `dtype` (e.g. bfloat16).

Default initialisation is PyTorch's layer default (`nn.Conv2d` / `nn.Linear`:
weights and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)); batch norm scale 1,
bias 0, running mean 0, var 1), which is what Tjoa & Guan's new heads use.
"""

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from xai_jax.models import taps

Dtype = Any


def _torch_uniform(fan_in: int):
  bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


class Conv(nn.Module):
  """2-D convolution, torch `nn.Conv2d` with symmetric integer padding (NHWC).

  Attributes:
    features: output channels.
    kernel_size: square kernel size.
    stride: stride.
    padding: zero padding on each side, or "SAME" (only for odd kernels,
      equal to `kernel_size // 2`).
    use_bias: whether there is a bias (then the output is a bias site).
    dtype: computation dtype.
  """
  features: int
  kernel_size: int
  stride: int = 1
  padding: int | str = 0
  use_bias: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    """x: float[N, H, W, Cin] -> float[N, H', W', features]."""
    cin = x.shape[-1]
    fan_in = cin * self.kernel_size ** 2
    kernel = self.param("kernel", _torch_uniform(fan_in),
                        (self.kernel_size, self.kernel_size, cin, self.features))
    pad = self.kernel_size // 2 if self.padding == "SAME" else self.padding
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype), kernel.astype(self.dtype),
        window_strides=(self.stride, self.stride),
        padding=((pad, pad), (pad, pad)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if self.use_bias:
      bias = self.param("bias", _torch_uniform(fan_in), (self.features,))
      y = y + bias.astype(self.dtype)
      y = taps.bias_site(self, "bias", y, bias)
    return y


class Dense(nn.Module):
  """Fully connected layer, torch `nn.Linear` (kernel stored [in, out]).

  Attributes:
    features: output size.
    dtype: computation dtype.
  """
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    """x: float[N, Din] -> float[N, features]."""
    fan_in = x.shape[-1]
    kernel = self.param("kernel", _torch_uniform(fan_in), (fan_in, self.features))
    bias = self.param("bias", _torch_uniform(fan_in), (self.features,))
    y = jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype)) + bias.astype(self.dtype)
    return taps.bias_site(self, "bias", y, bias)


class BatchNorm(nn.Module):
  """Batch norm over NHWC channels with torch `nn.BatchNorm2d` semantics.

  Eval: running statistics, `y = x * gamma / sqrt(var + eps) + effective_bias`
  with `effective_bias = beta - mean * gamma / sqrt(var + eps)` (the bias site).
  Train: biased batch variance for normalisation; the running statistics in
  the mutable collection "batch_stats" are updated as torch does
  (`momentum` 0.1, unbiased variance).

  Attributes:
    epsilon: torch `eps`.
    momentum: torch `momentum`.
    dtype: computation dtype (statistics are kept in float32).
  """
  epsilon: float = 1e-5
  momentum: float = 0.1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    """x: float[N, H, W, C] -> same shape."""
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,))
    beta = self.param("bias", nn.initializers.zeros, (c,))
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
    if train:
      # Statistics in float32, or float64 for a float64 model (its batch-norm outputs
      # would otherwise carry float32 rounding); the running averages stay float32.
      xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
      axes = tuple(range(x.ndim - 1))
      mean = jnp.mean(xf, axes)
      var = jnp.mean(jnp.square(xf - mean), axes)
      if not self.is_initializing():
        n = math.prod(x.shape[:-1])
        unbiased = var * (n / max(n - 1, 1))
        ra_mean.value = ((1 - self.momentum) * ra_mean.value
                         + self.momentum * mean).astype(ra_mean.value.dtype)
        ra_var.value = ((1 - self.momentum) * ra_var.value
                        + self.momentum * unbiased).astype(ra_var.value.dtype)
    else:
      mean, var = ra_mean.value, ra_var.value
    gain = scale * jax.lax.rsqrt(var + self.epsilon)
    bias = beta - mean * gain
    y = x.astype(self.dtype) * gain.astype(self.dtype) + bias.astype(self.dtype)
    return taps.bias_site(self, "bias", y, bias)


def _bin_matrix(size_in: int, size_out: int) -> np.ndarray:
  """Averaging matrix float32[out, in] for torch's adaptive pooling bins."""
  m = np.zeros((size_out, size_in), np.float32)
  for i in range(size_out):
    start = (i * size_in) // size_out
    end = -((-(i + 1) * size_in) // size_out)  # ceil((i+1)*in/out)
    m[i, start:end] = 1.0 / (end - start)
  return m


def adaptive_avg_pool(x: jax.Array, output_size: Sequence[int]) -> jax.Array:
  """torch `nn.AdaptiveAvgPool2d` (NHWC): bin i is [floor(i*in/out), ceil((i+1)*in/out)).

  Bins may overlap or repeat (e.g. VGG's 7x7 pool on a 64x64 input sees a 2x2
  map); each output is the plain mean over its bin, as in torch.

  Args:
    x: `float[N, H, W, C]`.
    output_size: `(out_h, out_w)`.

  Returns:
    `float[N, out_h, out_w, C]`.
  """
  out_h, out_w = output_size
  h, w = x.shape[1], x.shape[2]
  if (h, w) == (out_h, out_w):
    return x
  if out_h == 1 and out_w == 1:
    return jnp.mean(x, axis=(1, 2), keepdims=True)
  mh = jnp.asarray(_bin_matrix(h, out_h), x.dtype)
  mw = jnp.asarray(_bin_matrix(w, out_w), x.dtype)
  return jnp.einsum("nhwc,ph,qw->npqc", x, mh, mw,
                    precision=jax.lax.Precision.HIGHEST)


def flatten_nchw(x: jax.Array) -> jax.Array:
  """Flattens `[N, H, W, C]` in torch's NCHW order (so ported Linear weights match)."""
  return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)


def output_dtype(dtype: Dtype):
  """Logits dtype: float32, or float64 when computing in float64."""
  return jnp.promote_types(dtype, jnp.float32)
