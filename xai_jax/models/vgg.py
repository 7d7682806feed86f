"""VGG 11/13/16/19 with and without batch norm, weight for weight torchvision's.

Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
Recognition" (ICLR 2015), as implemented by torchvision (`vgg16`, `vgg16_bn`):
`features` is a sequence of conv3x3 p1 [+ BatchNorm] + ReLU blocks and 2x2
max-pools numbered as in torch; then adaptive average pooling to 7x7 with
torch's bin boundaries (so any input >= 32x32 matches torch, bins overlapping
or repeating below 224), flatten in NCHW order (25088) and the classifier
0 linear 4096, 1 ReLU, 2 dropout, 3 linear 4096, 4 ReLU, 5 dropout,
6 linear num_classes (`classifier_width` changes the 4096: the parity tests use a narrow
classifier, which spares them a 25088 x 4096 float64 matrix per call).

Flax submodules are named like torchvision's (`features_0`, `features_1` (BN),
`classifier_0`), activations like the ReLU modules (VGG16: `features_1`, ...,
`features_29`, `classifier_1`, `classifier_4`), bias sites `<layer>/bias`.
Grad-CAM layer: the last conv ReLU before the last max-pool (VGG16
`features_29`, i.e. Selvaraju's relu5_3). DeepMaps layers (`deepmaps_layers`):
every conv ReLU, `features_1` ... `features_29` for VGG16, the 13 hidden layers
Grabska-Barwinska et al. (2021) sum (their Fig. 2 and Fig. 12, layers 1-13).

`head="tjoa"`: Tjoa & Guan's adjusted VGG (cells.md section 3): features,
7x7 pool, 0 dropout, 1 linear 4096, 2 LeakyReLU(0.01), 3 dropout,
4 linear num_classes, 5 LeakyReLU(0.01) on the logits (keys `classifier.1`,
`classifier.4`).
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from xai_jax.models import layers, taps

HEADS = ("torchvision", "tjoa")

CONFIGS = {
    11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    13: (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
         512, 512, 512, "M"),
    19: (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512,
         512, "M", 512, 512, 512, 512, "M"),
}


def feature_layout(depth: int, batch_norm: bool) -> list[tuple[str, int, Any]]:
  """torch `features` indices: [("conv"|"bn"|"relu"|"pool", index, channels)]."""
  out, i = [], 0
  for v in CONFIGS[depth]:
    if v == "M":
      out.append(("pool", i, None))
      i += 1
      continue
    out.append(("conv", i, v))
    i += 1
    if batch_norm:
      out.append(("bn", i, v))
      i += 1
    out.append(("relu", i, v))
    i += 1
  return out


class VGG(nn.Module):
  """torchvision VGG (NHWC input, any size >= 32x32).

  Attributes:
    depth: 11, 13, 16 or 19.
    batch_norm: the `_bn` variants.
    num_classes: number of logits.
    dtype: computation dtype.
    ops: nonlinearities (see `taps.Ops`).
    head: "torchvision" or "tjoa" (see module docstring).
    classifier_width: width of the hidden linear layers (4096 in torchvision; a torch
      model whose `classifier` linears have another width ports with the same value).
  """
  depth: int = 16
  batch_norm: bool = False
  num_classes: int = 1000
  dtype: Any = jnp.float32
  ops: taps.Ops = taps.DEFAULT_OPS
  head: str = "torchvision"
  classifier_width: int = 4096

  @property
  def gradcam_layer(self) -> str:
    relus = [i for kind, i, _ in feature_layout(self.depth, self.batch_norm)
             if kind == "relu"]
    return f"features_{relus[-1]}"

  @property
  def deepmaps_layers(self) -> tuple[str, ...]:
    """DeepMaps' layers: every conv ReLU (VGG16: the 13 of their Fig. 2 and Fig. 12)."""
    return tuple(f"features_{i}" for kind, i, _ in feature_layout(self.depth, self.batch_norm)
                 if kind == "relu")

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    """x: float32[N, H, W, 3] -> logits float32[N, num_classes]."""
    if self.depth not in CONFIGS:
      raise ValueError(f"unknown VGG depth {self.depth}; valid: {tuple(CONFIGS)}")
    if self.head not in HEADS:
      raise ValueError(f"unknown head {self.head!r}; valid: {HEADS}")
    if isinstance(self.classifier_width, bool) or not (
        isinstance(self.classifier_width, int) and self.classifier_width >= 1):
      raise ValueError(f"classifier_width must be a positive int; got {self.classifier_width!r}")
    width = self.classifier_width
    for kind, i, channels in feature_layout(self.depth, self.batch_norm):
      name = f"features_{i}"
      if kind == "conv":
        x = layers.Conv(channels, 3, padding=1, dtype=self.dtype, name=name)(x)
      elif kind == "bn":
        x = layers.BatchNorm(dtype=self.dtype, name=name)(x, train=train)
      elif kind == "relu":
        x = taps.activation(self, name, self.ops.relu(x))
      else:
        x = self.ops.max_pool(x, window=2, stride=2, padding=0)
    x = layers.adaptive_avg_pool(x, (7, 7))
    x = layers.flatten_nchw(x)
    drop = lambda x: nn.Dropout(0.5, deterministic=not train)(x)
    if self.head == "tjoa":
      x = layers.Dense(width, dtype=self.dtype, name="classifier_1")(drop(x))
      x = taps.activation(self, "classifier_2", self.ops.leaky_relu(x, 0.01))
      x = layers.Dense(self.num_classes, dtype=self.dtype,
                       name="classifier_4")(drop(x))
      x = self.ops.leaky_relu(x, 0.01)
      return x.astype(layers.output_dtype(self.dtype))
    x = layers.Dense(width, dtype=self.dtype, name="classifier_0")(x)
    x = drop(taps.activation(self, "classifier_1", self.ops.relu(x)))
    x = layers.Dense(width, dtype=self.dtype, name="classifier_3")(x)
    x = drop(taps.activation(self, "classifier_4", self.ops.relu(x)))
    x = layers.Dense(self.num_classes, dtype=self.dtype, name="classifier_6")(x)
    return x.astype(layers.output_dtype(self.dtype))
