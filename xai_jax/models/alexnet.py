"""AlexNet, weight for weight torchvision's `alexnet` (and Tjoa & Guan's variants).

Krizhevsky et al., "One weird trick for parallelizing convolutional neural
networks" (2014), as implemented by torchvision (`torchvision.models.alexnet`):

  features: 0 conv11x11/4 p2 64, 1 ReLU, 2 maxpool3/2, 3 conv5x5 p2 192, 4 ReLU,
            5 maxpool3/2, 6 conv3x3 p1 384, 7 ReLU, 8 conv3x3 p1 256, 9 ReLU,
            10 conv3x3 p1 256, 11 ReLU, 12 maxpool3/2
  avgpool:  adaptive 6x6 (torch bins), flatten in NCHW order (9216)
  classifier: 0 dropout, 1 linear 4096, 2 ReLU, 3 dropout, 4 linear 4096,
              5 ReLU, 6 linear num_classes

Flax submodules are named like torchvision's (`features_0`, `classifier_1`),
activations like the ReLU modules (`features_1`, ..., `classifier_5`), bias
sites `<layer>/bias`. Grad-CAM layer: `features_11`. DeepMaps layers: every
conv ReLU (`features_1`, `features_4`, `features_7`, `features_9`,
`features_11` and the extra layers' ReLUs), as DeepMaps sums for VGG16.

`head="tjoa"`: Tjoa & Guan's adjusted AlexNet (cells.md section 3): the same
layers with LeakyReLU(0.01) instead of the two classifier ReLUs (same keys).
`extra_layers=k` (`alexnet_plus`, the depth study in the appendix of Tjoa &
Guan): k extra conv3x3 p1 256->256 + ReLU blocks inserted after `features.11`
and before the last max-pool (`extra_0`, ... with activations
`extra_0_relu`, ...). The paper does not say where the layers went (the
workflow was abandoned, cells.md section 3); this placement keeps every shape
of the original network, so the torchvision weights still fit the rest.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from xai_jax.models import layers, taps

HEADS = ("torchvision", "tjoa")


class AlexNet(nn.Module):
  """torchvision AlexNet (NHWC input, any size >= 63x63).

  Attributes:
    num_classes: number of logits.
    dtype: computation dtype.
    ops: nonlinearities (see `taps.Ops`).
    head: "torchvision" (ReLU classifier) or "tjoa" (LeakyReLU(0.01)).
    extra_layers: number of extra conv3x3 layers (see module docstring).
    classifier_width: width of the hidden linear layers (4096 in torchvision; a torch
      model whose `classifier` linears have another width ports with the same value).
  """
  num_classes: int = 1000
  dtype: Any = jnp.float32
  ops: taps.Ops = taps.DEFAULT_OPS
  head: str = "torchvision"
  extra_layers: int = 0
  classifier_width: int = 4096

  @property
  def gradcam_layer(self) -> str:
    if self.extra_layers:
      return f"extra_{self.extra_layers - 1}_relu"
    return "features_11"

  @property
  def deepmaps_layers(self) -> tuple[str, ...]:
    """DeepMaps' layers: every conv ReLU, as for VGG (5, plus the extra layers)."""
    return ("features_1", "features_4", "features_7", "features_9", "features_11") + tuple(
        f"extra_{i}_relu" for i in range(self.extra_layers))

  def _act(self, x, name, *, leaky=False):
    x = self.ops.leaky_relu(x, 0.01) if leaky else self.ops.relu(x)
    return taps.activation(self, name, x)

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    """x: float32[N, H, W, 3] -> logits float32[N, num_classes]."""
    if self.head not in HEADS:
      raise ValueError(f"unknown head {self.head!r}; valid: {HEADS}")
    if isinstance(self.classifier_width, bool) or not (
        isinstance(self.classifier_width, int) and self.classifier_width >= 1):
      raise ValueError(f"classifier_width must be a positive int; got {self.classifier_width!r}")
    conv = lambda f, k, s, p, name: layers.Conv(
        f, k, stride=s, padding=p, dtype=self.dtype, name=name)
    pool = lambda x: self.ops.max_pool(x, window=3, stride=2, padding=0)
    x = self._act(conv(64, 11, 4, 2, "features_0")(x), "features_1")
    x = pool(x)
    x = self._act(conv(192, 5, 1, 2, "features_3")(x), "features_4")
    x = pool(x)
    x = self._act(conv(384, 3, 1, 1, "features_6")(x), "features_7")
    x = self._act(conv(256, 3, 1, 1, "features_8")(x), "features_9")
    x = self._act(conv(256, 3, 1, 1, "features_10")(x), "features_11")
    for i in range(self.extra_layers):
      x = self._act(conv(256, 3, 1, 1, f"extra_{i}")(x), f"extra_{i}_relu")
    x = pool(x)
    x = layers.adaptive_avg_pool(x, (6, 6))
    x = layers.flatten_nchw(x)
    leaky = self.head == "tjoa"
    drop = lambda x: nn.Dropout(0.5, deterministic=not train)(x)
    x = layers.Dense(self.classifier_width, dtype=self.dtype, name="classifier_1")(drop(x))
    x = self._act(x, "classifier_2", leaky=leaky)
    x = layers.Dense(self.classifier_width, dtype=self.dtype, name="classifier_4")(drop(x))
    x = self._act(x, "classifier_5", leaky=leaky)
    x = layers.Dense(self.num_classes, dtype=self.dtype, name="classifier_6")(x)
    return x.astype(layers.output_dtype(self.dtype))
