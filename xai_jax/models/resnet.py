"""ResNet-18/34/50, weight for weight torchvision's `resnet18/34/50` (v1.5).

He et al., "Deep Residual Learning for Image Recognition" (CVPR 2016), as
implemented by torchvision: conv7x7/2 p3 (no bias), BN, ReLU, maxpool3/2 p1,
four stages of BasicBlocks (18/34) or Bottlenecks (50, stride on the 3x3 conv),
global average pool, `fc`.

Flax submodules are named like torchvision's (`conv1`, `bn1`, `layer1_0` with
`conv1`, `bn1`, ..., `downsample_0`, `downsample_1`, and `fc`). Each block
uses a separate ReLU per call site (as Tjoa & Guan rebuilt them for DeepLift);
activations: stem `relu`, inside blocks `relu1`, `relu2` [, `relu3`], the last
one being the block output (e.g. `layer4_1/relu2` for ResNet-18, the Grad-CAM
layer). DeepMaps layers (`deepmaps_layers`): the stem `relu` and every block
output, "every time the parallel routes of computation come together again"
(Grabska-Barwinska et al. 2021, appendix F): 17 for ResNet-50 and ResNet-34,
9 for ResNet-18. Bias sites are the batch norms (`layer1_0/bn1/bias`, ...) and
`fc/bias`: ResNet-18 has 21 of them, as FullGrad counts.

`head="tjoa"`: Tjoa & Guan's adjusted ResNet34 head (cells.md section 3): after
the global average pool a `Conv2d(512, num_classes, 1)` with bias (key
`fc.weight` of shape [K, C, 1, 1]), squeezed to [N, K]; its bias site output
is [N, 1, 1, K].
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from xai_jax.models import layers, taps

HEADS = ("torchvision", "tjoa")

# depth -> (block kind, blocks per stage)
CONFIGS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
}


class BasicBlock(nn.Module):
  """conv3x3-BN-ReLU-conv3x3-BN + shortcut, ReLU."""
  planes: int
  stride: int = 1
  dtype: Any = jnp.float32
  ops: taps.Ops = taps.DEFAULT_OPS
  expansion = 1

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    conv = lambda f, k, s, p, name: layers.Conv(
        f, k, stride=s, padding=p, use_bias=False, dtype=self.dtype, name=name)
    bn = lambda name: layers.BatchNorm(dtype=self.dtype, name=name)
    identity = x
    y = bn("bn1")(conv(self.planes, 3, self.stride, 1, "conv1")(x), train=train)
    y = taps.activation(self, "relu1", self.ops.relu(y))
    y = bn("bn2")(conv(self.planes, 3, 1, 1, "conv2")(y), train=train)
    if self.stride != 1 or x.shape[-1] != self.planes:
      identity = conv(self.planes, 1, self.stride, 0, "downsample_0")(x)
      identity = bn("downsample_1")(identity, train=train)
    return taps.activation(self, "relu2", self.ops.relu(y + identity))


class Bottleneck(nn.Module):
  """conv1x1-BN-ReLU-conv3x3(stride)-BN-ReLU-conv1x1(4x)-BN + shortcut, ReLU."""
  planes: int
  stride: int = 1
  dtype: Any = jnp.float32
  ops: taps.Ops = taps.DEFAULT_OPS
  expansion = 4

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    conv = lambda f, k, s, p, name: layers.Conv(
        f, k, stride=s, padding=p, use_bias=False, dtype=self.dtype, name=name)
    bn = lambda name: layers.BatchNorm(dtype=self.dtype, name=name)
    out_ch = self.planes * self.expansion
    identity = x
    y = bn("bn1")(conv(self.planes, 1, 1, 0, "conv1")(x), train=train)
    y = taps.activation(self, "relu1", self.ops.relu(y))
    y = bn("bn2")(conv(self.planes, 3, self.stride, 1, "conv2")(y), train=train)
    y = taps.activation(self, "relu2", self.ops.relu(y))
    y = bn("bn3")(conv(out_ch, 1, 1, 0, "conv3")(y), train=train)
    if self.stride != 1 or x.shape[-1] != out_ch:
      identity = conv(out_ch, 1, self.stride, 0, "downsample_0")(x)
      identity = bn("downsample_1")(identity, train=train)
    return taps.activation(self, "relu3", self.ops.relu(y + identity))


class ResNet(nn.Module):
  """torchvision ResNet (NHWC input, any size >= 32x32 that torch accepts).

  Attributes:
    depth: 18, 34 or 50.
    num_classes: number of logits.
    dtype: computation dtype.
    ops: nonlinearities (see `taps.Ops`).
    head: "torchvision" (`fc` linear) or "tjoa" (1x1 conv with bias).
  """
  depth: int = 50
  num_classes: int = 1000
  dtype: Any = jnp.float32
  ops: taps.Ops = taps.DEFAULT_OPS
  head: str = "torchvision"

  @property
  def gradcam_layer(self) -> str:
    kind, stages = CONFIGS[self.depth]
    last = "relu2" if kind == "basic" else "relu3"
    return f"layer4_{stages[-1] - 1}/{last}"

  @property
  def deepmaps_layers(self) -> tuple[str, ...]:
    """DeepMaps' layers: the stem ReLU and every block output (ResNet-50: 1 + 16 = 17)."""
    kind, stages = CONFIGS[self.depth]
    last = "relu2" if kind == "basic" else "relu3"
    return ("relu",) + tuple(f"layer{s + 1}_{b}/{last}" for s, n_blocks in enumerate(stages)
                             for b in range(n_blocks))

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    """x: float32[N, H, W, 3] -> logits float32[N, num_classes]."""
    if self.depth not in CONFIGS:
      raise ValueError(f"unknown ResNet depth {self.depth}; valid: {tuple(CONFIGS)}")
    if self.head not in HEADS:
      raise ValueError(f"unknown head {self.head!r}; valid: {HEADS}")
    kind, stages = CONFIGS[self.depth]
    block = BasicBlock if kind == "basic" else Bottleneck
    x = layers.Conv(64, 7, stride=2, padding=3, use_bias=False,
                    dtype=self.dtype, name="conv1")(x)
    x = layers.BatchNorm(dtype=self.dtype, name="bn1")(x, train=train)
    x = taps.activation(self, "relu", self.ops.relu(x))
    x = self.ops.max_pool(x, window=3, stride=2, padding=1)
    for s, n_blocks in enumerate(stages):
      planes = 64 * 2 ** s
      for b in range(n_blocks):
        stride = 2 if (s > 0 and b == 0) else 1
        x = block(planes, stride, dtype=self.dtype, ops=self.ops,
                  name=f"layer{s + 1}_{b}")(x, train=train)
    x = layers.adaptive_avg_pool(x, (1, 1))
    if self.head == "tjoa":
      x = layers.Conv(self.num_classes, 1, dtype=self.dtype, name="fc")(x)
      return x.reshape(x.shape[0], -1).astype(layers.output_dtype(self.dtype))
    x = layers.Dense(self.num_classes, dtype=self.dtype,
                     name="fc")(x.reshape(x.shape[0], -1))
    return x.astype(layers.output_dtype(self.dtype))
