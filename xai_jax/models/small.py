"""The small CNN and MLP trained from scratch in the sanity-check experiments.

Adebayo et al., "Sanity Checks for Saliency Maps" (NeurIPS 2018), MNIST/Fashion
models: a CNN (conv5x5-32 SAME, ReLU, max-pool 2, conv5x5-64 SAME, ReLU,
max-pool 2, dense 1024, ReLU, dense classes) and an MLP (dense 2500-1500-500,
ReLUs, dense classes). Both accept any NHWC input size; the first dense layer's
width follows from it at `init`. Flattening is in NCHW order like every model
here (see `layers.flatten_nchw`).

Taps (see `taps`): CNN activations "relu1", "relu2", "relu3", bias sites
"conv1/bias", "conv2/bias", "fc1/bias", "fc2/bias"; Grad-CAM layer "relu2".
MLP activations "relu1".."relu3", bias sites "fc1/bias".."fc4/bias".
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from xai_jax.models import layers, taps


class CNN(nn.Module):
  """conv5x5-32, pool, conv5x5-64, pool, dense 1024, dense classes.

  Attributes:
    num_classes: number of logits.
    dtype: computation dtype.
    ops: nonlinearities (see `taps.Ops`).
  """
  num_classes: int = 10
  dtype: Any = jnp.float32
  ops: taps.Ops = taps.DEFAULT_OPS
  gradcam_layer = "relu2"

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    """x: float32[N, H, W, C] -> logits float32[N, num_classes]."""
    del train  # no dropout or batch norm
    x = layers.Conv(32, 5, padding="SAME", dtype=self.dtype, name="conv1")(x)
    x = taps.activation(self, "relu1", self.ops.relu(x))
    x = self.ops.max_pool(x, window=2, stride=2, padding=0)
    x = layers.Conv(64, 5, padding="SAME", dtype=self.dtype, name="conv2")(x)
    x = taps.activation(self, "relu2", self.ops.relu(x))
    x = self.ops.max_pool(x, window=2, stride=2, padding=0)
    x = layers.flatten_nchw(x)
    x = layers.Dense(1024, dtype=self.dtype, name="fc1")(x)
    x = taps.activation(self, "relu3", self.ops.relu(x))
    x = layers.Dense(self.num_classes, dtype=self.dtype, name="fc2")(x)
    return x.astype(layers.output_dtype(self.dtype))


class MLP(nn.Module):
  """Dense 2500-1500-500-classes with ReLUs (input flattened).

  Attributes:
    num_classes: number of logits.
    dtype: computation dtype.
    ops: nonlinearities (see `taps.Ops`).
    hidden: hidden widths.
  """
  num_classes: int = 10
  dtype: Any = jnp.float32
  ops: taps.Ops = taps.DEFAULT_OPS
  hidden: tuple[int, ...] = (2500, 1500, 500)
  gradcam_layer = None

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    """x: float32[N, H, W, C] (or [N, D]) -> logits float32[N, num_classes]."""
    del train
    x = layers.flatten_nchw(x) if x.ndim == 4 else x.reshape(x.shape[0], -1)
    for i, width in enumerate(self.hidden):
      x = layers.Dense(width, dtype=self.dtype, name=f"fc{i + 1}")(x)
      x = taps.activation(self, f"relu{i + 1}", self.ops.relu(x))
    x = layers.Dense(self.num_classes, dtype=self.dtype,
                     name=f"fc{len(self.hidden) + 1}")(x)
    return x.astype(layers.output_dtype(self.dtype))


class SmallVGG(nn.Module):
  """A small VGG-style CNN for the quick cells experiment (an xai_jax addition).

  Blocks of two conv3x3 (padding 1) + batch norm + ReLU layers, a 2x2 max-pool
  after each block, then a global max-pool (a max-pool whose window is the
  whole remaining feature map, so explainers apply their max-pool rule), dense
  `hidden` + ReLU, dense classes. The quick cells experiment uses widths
  (8, 16, 32, 32) at 96x96 (about 26k parameters): 0.95 test accuracy on 600
  test cells after 1200 Adam steps of batch 32 (cosine schedule, peak 3e-3),
  3.5 minutes on a 2-core CPU. At 64x64 the thin bars and poles that tell
  classes 1 and 2 apart are 1-4 pixels wide and the accuracy stalls near 0.90.

  Taps: activations "relu{b}_{i}" (block b, layer i, 1-based) and "relu_fc";
  bias sites "conv{b}_{i}/bias", "bn{b}_{i}/bias", "fc1/bias", "fc2/bias";
  Grad-CAM layer: the last conv ReLU.

  Attributes:
    num_classes: number of logits.
    dtype: computation dtype.
    ops: nonlinearities (see `taps.Ops`).
    widths: channels of each block.
    hidden: width of the hidden dense layer.
  """
  num_classes: int = 10
  dtype: Any = jnp.float32
  ops: taps.Ops = taps.DEFAULT_OPS
  widths: tuple[int, ...] = (16, 32, 64)
  hidden: int = 64

  @property
  def gradcam_layer(self) -> str:
    return f"relu{len(self.widths)}_2"

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    """x: float32[N, H, W, C] with H == W divisible by 2**len(widths) -> float32[N, classes]."""
    if x.ndim != 4 or x.shape[1] != x.shape[2]:
      raise ValueError(f"SmallVGG expects square NHWC images; got shape {x.shape}")
    if x.shape[1] % 2 ** len(self.widths):
      raise ValueError(f"SmallVGG: image size {x.shape[1]} must be divisible by "
                       f"{2 ** len(self.widths)} ({len(self.widths)} 2x2 max-pools)")
    for b, width in enumerate(self.widths, start=1):
      for i in (1, 2):
        x = layers.Conv(width, 3, padding=1, dtype=self.dtype, name=f"conv{b}_{i}")(x)
        x = layers.BatchNorm(dtype=self.dtype, name=f"bn{b}_{i}")(x, train=train)
        x = taps.activation(self, f"relu{b}_{i}", self.ops.relu(x))
      x = self.ops.max_pool(x, window=2, stride=2, padding=0)
    x = self.ops.max_pool(x, window=x.shape[1], stride=x.shape[1], padding=0)
    x = x.reshape(x.shape[0], -1)
    x = layers.Dense(self.hidden, dtype=self.dtype, name="fc1")(x)
    x = taps.activation(self, "relu_fc", self.ops.relu(x))
    x = layers.Dense(self.num_classes, dtype=self.dtype, name="fc2")(x)
    return x.astype(layers.output_dtype(self.dtype))
