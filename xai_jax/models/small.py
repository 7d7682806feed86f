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
