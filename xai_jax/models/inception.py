"""Inception v3, weight for weight torchvision's `inception_v3`.

Szegedy, Vanhoucke, Ioffe, Shlens & Wojna, "Rethinking the Inception
Architecture for Computer Vision" (CVPR 2016), https://arxiv.org/abs/1512.00567,
as implemented by torchvision (`torchvision.models.inception_v3`, class
`Inception3`), the network of Adebayo et al.'s sanity checks:

  BasicConv2d = conv (no bias) + BatchNorm(eps=0.001) + ReLU
  Conv2d_1a_3x3 (s2), Conv2d_2a_3x3, Conv2d_2b_3x3 (p1), maxpool 3/2,
  Conv2d_3b_1x1, Conv2d_4a_3x3, maxpool 3/2,
  Mixed_5b/5c/5d (InceptionA), Mixed_6a (B), Mixed_6b..6e (C),
  [AuxLogits (train mode only)], Mixed_7a (D), Mixed_7b/7c (E),
  adaptive average pool to 1x1, dropout, fc.

The branch pools of InceptionA/C/E are `F.avg_pool2d(3, stride 1, padding 1)`
with torch's default `count_include_pad=True` (every window divided by 9,
zero padding included); InceptionB/D use `max_pool2d(3, stride 2)`. The input
is 299x299 natively; the final pool is adaptive, so any size torchvision
accepts (>= 75x75) works and matches torch.

Options as torchvision's `Inception3`:
- `transform_input`: torchvision re-normalises its input channel-wise,
  `x_c * (std_c / 0.5) + (mean_c - 0.5) / 0.5` with ImageNet's mean/std, so
  that ImageNet-normalised images become the [-1, 1] scaling the original
  (Google) weights were trained on. The `Inception3` class defaults to False
  (as here); `torchvision.models.inception_v3(weights=...)` sets it to True.
  Use `models.get("inception_v3", transform_input=True)` with torchvision's
  pretrained weights and ImageNet-normalised inputs; leave it False for
  weights trained on inputs as given (and for random weights).
- `aux_logits`: the auxiliary classifier on Mixed_6e (`AuxLogits`), off by
  default (explainers never see it). When on, its parameters exist (and
  ported weights fill them) and, in train mode only, `__call__` returns
  `InceptionOutputs(logits, aux_logits)` like torchvision; in eval mode it
  returns the logits alone, so every explainer still works. Initialising or
  training it needs inputs of at least 299x299 (as in torchvision). With it,
  `metrics.sanity.layer_order` lists `AuxLogits` first (it is not called in
  eval mode); Adebayo et al.'s order is that of the model without it.
- `dropout`: the rate of the dropout before `fc` (0.5).

Flax submodules carry torchvision's module names (`Conv2d_1a_3x3` with `conv`
and `bn`, `Mixed_5b` with `branch1x1`, `branch5x5_1`, ..., `fc`), so the
top-level parameter collections are, in forward order, the 16 blocks of
Adebayo et al.'s cascading randomisation followed by the logits (`fc`):
`xai_jax.metrics.sanity.layer_order` gives `fc, Mixed_7c, ..., Conv2d_1a_3x3`
(their 17 phases). Activations: every BasicConv2d ReLU (`<block path>/relu`,
e.g. `Mixed_5b/branch5x5_2/relu`, `Conv2d_4a_3x3/relu`) and every Mixed
block's output, the channel concatenation of its branches (`Mixed_5b/output`).
Bias sites: every batch norm (`.../bn/bias`, effective biases) and `fc/bias`.
Grad-CAM layer: `Mixed_7c/output` (Captum's `LayerGradCam(model, model.Mixed_7c)`).
DeepMaps layers (`deepmaps_layers`, 16): the five stem BasicConv2d ReLUs and the eleven
Mixed block outputs, the analogue of DeepMaps' ResNet-50 set (stem and the outputs where
parallel branches join; Grabska-Barwinska et al. 2021, appendix F).

Initialisation follows torchvision's `init_weights=True`: conv and linear
weights truncated normal with std 0.1 (0.01 for `AuxLogits.conv1`, 0.001 for
`AuxLogits.fc`), truncated at +-2 (absolute, as `torch.nn.init.trunc_normal_`
with `a=-2, b=2`), batch norm scale 1 and bias 0, `fc` biases as `nn.Linear`.
"""

from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from xai_jax.models import layers, taps

HEADS = ("torchvision",)

# ImageNet channel statistics used by torchvision's `_transform_input`.
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)

# Top-level blocks in forward order (AuxLogits sits between Mixed_6e and Mixed_7a).
BLOCKS = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1",
          "Conv2d_4a_3x3", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b",
          "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c")


class InceptionOutputs(NamedTuple):
  """What a model with `aux_logits=True` returns in train mode (torchvision's namedtuple)."""
  logits: jax.Array
  aux_logits: jax.Array


def _trunc_normal(std: float):
  """`torch.nn.init.trunc_normal_(w, std=std, a=-2, b=2)`: bounds are absolute values."""

  def init(key, shape, dtype=jnp.float32):
    return std * jax.random.truncated_normal(key, -2.0 / std, 2.0 / std, shape, dtype)
  return init


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
  return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def avg_pool(x: jax.Array, *, window: int, stride: int, padding: int = 0) -> jax.Array:
  """torch `F.avg_pool2d` with `count_include_pad=True` (NHWC, floor mode).

  Every window sum is divided by `window**2`, zero padding included (in floor
  mode no window reaches past the padding, so torch's divisor is always
  `window**2`).

  Args:
    x: `float[N, H, W, C]`.
    window, stride, padding: the pooling geometry.

  Returns:
    `float[N, (H + 2p - window) // stride + 1, (W + 2p - window) // stride + 1, C]`.
  """
  # A concrete zero init value makes this `reduce_window_sum`, which JAX differentiates.
  summed = jax.lax.reduce_window(
      x, np.array(0, x.dtype), jax.lax.add,
      window_dimensions=(1, window, window, 1), window_strides=(1, stride, stride, 1),
      padding=((0, 0), (padding, padding), (padding, padding), (0, 0)))
  return summed / window ** 2


class Conv2d(nn.Module):
  """Bias-free `nn.Conv2d` with rectangular kernels and symmetric padding (NHWC).

  Attributes:
    features: output channels.
    kernel_size: `k` or `(kh, kw)`.
    stride: stride (both axes).
    padding: `p` or `(ph, pw)` zeros on each side.
    stddev: std of the truncated-normal initialiser (torchvision's `stddev`).
    dtype: computation dtype (the kernel is stored in float32).
  """
  features: int
  kernel_size: int | tuple[int, int]
  stride: int = 1
  padding: int | tuple[int, int] = 0
  stddev: float = 0.1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    """x: float[N, H, W, Cin] -> float[N, H', W', features]."""
    kh, kw = _pair(self.kernel_size)
    ph, pw = _pair(self.padding)
    kernel = self.param("kernel", _trunc_normal(self.stddev),
                        (kh, kw, x.shape[-1], self.features))
    return jax.lax.conv_general_dilated(
        x.astype(self.dtype), kernel.astype(self.dtype),
        window_strides=(self.stride, self.stride), padding=((ph, ph), (pw, pw)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"))


class Linear(nn.Module):
  """`nn.Linear` with torchvision Inception's truncated-normal weight initialiser.

  Attributes:
    features: output size.
    stddev: std of the weight initialiser.
    dtype: computation dtype.
  """
  features: int
  stddev: float = 0.1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    """x: float[N, Din] -> float[N, features]; the output is the bias site `bias`."""
    fan_in = x.shape[-1]
    kernel = self.param("kernel", _trunc_normal(self.stddev), (fan_in, self.features))
    bound = 1.0 / fan_in ** 0.5
    bias = self.param("bias", lambda k, s: jax.random.uniform(k, s, jnp.float32, -bound, bound),
                      (self.features,))
    y = jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype)) + bias.astype(self.dtype)
    return taps.bias_site(self, "bias", y, bias)


class BasicConv2d(nn.Module):
  """conv (no bias) + BatchNorm(eps=0.001) + ReLU; the ReLU output is activation `relu`."""
  features: int
  kernel_size: int | tuple[int, int]
  stride: int = 1
  padding: int | tuple[int, int] = 0
  stddev: float = 0.1
  dtype: Any = jnp.float32
  ops: taps.Ops = taps.DEFAULT_OPS

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    """x: float[N, H, W, Cin] -> float[N, H', W', features]."""
    x = Conv2d(self.features, self.kernel_size, self.stride, self.padding, self.stddev,
               dtype=self.dtype, name="conv")(x)
    x = layers.BatchNorm(epsilon=0.001, dtype=self.dtype, name="bn")(x, train=train)
    return taps.activation(self, "relu", self.ops.relu(x))


class _Block(nn.Module):
  """Shared fields of the Mixed blocks."""
  dtype: Any = jnp.float32
  ops: taps.Ops = taps.DEFAULT_OPS

  def conv(self, features, kernel_size, name, *, stride=1, padding=0):
    return BasicConv2d(features, kernel_size, stride, padding, dtype=self.dtype,
                       ops=self.ops, name=name)

  def output(self, branches):
    """Concatenates the branches along channels (torch.cat(dim=1)); activation `output`."""
    return taps.activation(self, "output", jnp.concatenate(branches, axis=-1))


class InceptionA(_Block):
  """Mixed_5b/5c/5d: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1 (pool_features)."""
  pool_features: int = 32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    b1 = self.conv(64, 1, "branch1x1")(x, train=train)
    b5 = self.conv(48, 1, "branch5x5_1")(x, train=train)
    b5 = self.conv(64, 5, "branch5x5_2", padding=2)(b5, train=train)
    b3 = self.conv(64, 1, "branch3x3dbl_1")(x, train=train)
    b3 = self.conv(96, 3, "branch3x3dbl_2", padding=1)(b3, train=train)
    b3 = self.conv(96, 3, "branch3x3dbl_3", padding=1)(b3, train=train)
    bp = avg_pool(x, window=3, stride=1, padding=1)
    bp = self.conv(self.pool_features, 1, "branch_pool")(bp, train=train)
    return self.output([b1, b5, b3, bp])


class InceptionB(_Block):
  """Mixed_6a: 3x3/2 | 1x1-3x3-3x3/2 | maxpool 3/2."""

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    b3 = self.conv(384, 3, "branch3x3", stride=2)(x, train=train)
    bd = self.conv(64, 1, "branch3x3dbl_1")(x, train=train)
    bd = self.conv(96, 3, "branch3x3dbl_2", padding=1)(bd, train=train)
    bd = self.conv(96, 3, "branch3x3dbl_3", stride=2)(bd, train=train)
    bp = self.ops.max_pool(x, window=3, stride=2, padding=0)
    return self.output([b3, bd, bp])


class InceptionC(_Block):
  """Mixed_6b..6e: 1x1 | 1x1-1x7-7x1 | 1x1-7x1-1x7-7x1-1x7 | avgpool-1x1."""
  channels_7x7: int = 128

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    c7 = self.channels_7x7
    b1 = self.conv(192, 1, "branch1x1")(x, train=train)
    b7 = self.conv(c7, 1, "branch7x7_1")(x, train=train)
    b7 = self.conv(c7, (1, 7), "branch7x7_2", padding=(0, 3))(b7, train=train)
    b7 = self.conv(192, (7, 1), "branch7x7_3", padding=(3, 0))(b7, train=train)
    bd = self.conv(c7, 1, "branch7x7dbl_1")(x, train=train)
    bd = self.conv(c7, (7, 1), "branch7x7dbl_2", padding=(3, 0))(bd, train=train)
    bd = self.conv(c7, (1, 7), "branch7x7dbl_3", padding=(0, 3))(bd, train=train)
    bd = self.conv(c7, (7, 1), "branch7x7dbl_4", padding=(3, 0))(bd, train=train)
    bd = self.conv(192, (1, 7), "branch7x7dbl_5", padding=(0, 3))(bd, train=train)
    bp = avg_pool(x, window=3, stride=1, padding=1)
    bp = self.conv(192, 1, "branch_pool")(bp, train=train)
    return self.output([b1, b7, bd, bp])


class InceptionD(_Block):
  """Mixed_7a: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool 3/2."""

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    b3 = self.conv(192, 1, "branch3x3_1")(x, train=train)
    b3 = self.conv(320, 3, "branch3x3_2", stride=2)(b3, train=train)
    b7 = self.conv(192, 1, "branch7x7x3_1")(x, train=train)
    b7 = self.conv(192, (1, 7), "branch7x7x3_2", padding=(0, 3))(b7, train=train)
    b7 = self.conv(192, (7, 1), "branch7x7x3_3", padding=(3, 0))(b7, train=train)
    b7 = self.conv(192, 3, "branch7x7x3_4", stride=2)(b7, train=train)
    bp = self.ops.max_pool(x, window=3, stride=2, padding=0)
    return self.output([b3, b7, bp])


class InceptionE(_Block):
  """Mixed_7b/7c: 1x1 | 1x1-(1x3, 3x1) | 1x1-3x3-(1x3, 3x1) | avgpool-1x1."""

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    b1 = self.conv(320, 1, "branch1x1")(x, train=train)
    b3 = self.conv(384, 1, "branch3x3_1")(x, train=train)
    b3 = [self.conv(384, (1, 3), "branch3x3_2a", padding=(0, 1))(b3, train=train),
          self.conv(384, (3, 1), "branch3x3_2b", padding=(1, 0))(b3, train=train)]
    bd = self.conv(448, 1, "branch3x3dbl_1")(x, train=train)
    bd = self.conv(384, 3, "branch3x3dbl_2", padding=1)(bd, train=train)
    bd = [self.conv(384, (1, 3), "branch3x3dbl_3a", padding=(0, 1))(bd, train=train),
          self.conv(384, (3, 1), "branch3x3dbl_3b", padding=(1, 0))(bd, train=train)]
    bp = avg_pool(x, window=3, stride=1, padding=1)
    bp = self.conv(192, 1, "branch_pool")(bp, train=train)
    return self.output([b1, *b3, *bd, bp])


class InceptionAux(nn.Module):
  """AuxLogits: avgpool 5/3, 1x1 conv 128, 5x5 conv 768, global average pool, fc."""
  num_classes: int = 1000
  dtype: Any = jnp.float32
  ops: taps.Ops = taps.DEFAULT_OPS

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    """x: float[N, 17, 17, 768] (at 299x299) -> float32[N, num_classes]."""
    x = avg_pool(x, window=5, stride=3)
    x = BasicConv2d(128, 1, dtype=self.dtype, ops=self.ops, name="conv0")(x, train=train)
    x = BasicConv2d(768, 5, stddev=0.01, dtype=self.dtype, ops=self.ops,
                    name="conv1")(x, train=train)
    x = layers.adaptive_avg_pool(x, (1, 1)).reshape(x.shape[0], -1)
    x = Linear(self.num_classes, stddev=0.001, dtype=self.dtype, name="fc")(x)
    return x.astype(layers.output_dtype(self.dtype))


class Inception3(nn.Module):
  """torchvision Inception v3 (NHWC input, 299x299 natively, any size >= 75x75).

  Attributes:
    num_classes: number of logits.
    dtype: computation dtype.
    ops: nonlinearities (see `taps.Ops`).
    head: "torchvision" (the only head).
    transform_input: torchvision's input re-normalisation (module docstring).
    aux_logits: build the auxiliary classifier (train-mode output only).
    dropout: dropout rate before `fc`.
  """
  num_classes: int = 1000
  dtype: Any = jnp.float32
  ops: taps.Ops = taps.DEFAULT_OPS
  head: str = "torchvision"
  transform_input: bool = False
  aux_logits: bool = False
  dropout: float = 0.5

  gradcam_layer = "Mixed_7c/output"
  # DeepMaps' layers, by analogy with their ResNet-50 set (stem + the points where parallel
  # routes join): the five stem conv ReLUs (a plain chain, every layer as for VGG16) and the
  # eleven Mixed block outputs.
  deepmaps_layers = (
      "Conv2d_1a_3x3/relu", "Conv2d_2a_3x3/relu", "Conv2d_2b_3x3/relu", "Conv2d_3b_1x1/relu",
      "Conv2d_4a_3x3/relu", "Mixed_5b/output", "Mixed_5c/output", "Mixed_5d/output",
      "Mixed_6a/output", "Mixed_6b/output", "Mixed_6c/output", "Mixed_6d/output",
      "Mixed_6e/output", "Mixed_7a/output", "Mixed_7b/output", "Mixed_7c/output")

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    """x: float32[N, H, W, 3] -> logits float32[N, num_classes].

    With `aux_logits=True` and `train=True`: `InceptionOutputs(logits, aux_logits)`.
    """
    if self.head not in HEADS:
      raise ValueError(f"unknown head {self.head!r}; valid: {HEADS}")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
    if x.ndim != 4 or min(x.shape[1:3]) < 75:
      raise ValueError(f"inception_v3 needs NHWC input of at least 75x75, got shape {x.shape}")
    if self.transform_input:
      scale = jnp.asarray([s / 0.5 for s in _IMAGENET_STD], x.dtype)
      shift = jnp.asarray([(m - 0.5) / 0.5 for m in _IMAGENET_MEAN], x.dtype)
      x = x * scale + shift
    kw = dict(dtype=self.dtype, ops=self.ops)
    conv = lambda f, k, name, **o: BasicConv2d(f, k, name=name, **o, **kw)
    pool = lambda x: self.ops.max_pool(x, window=3, stride=2, padding=0)
    x = conv(32, 3, "Conv2d_1a_3x3", stride=2)(x, train=train)
    x = conv(32, 3, "Conv2d_2a_3x3")(x, train=train)
    x = conv(64, 3, "Conv2d_2b_3x3", padding=1)(x, train=train)
    x = pool(x)
    x = conv(80, 1, "Conv2d_3b_1x1")(x, train=train)
    x = conv(192, 3, "Conv2d_4a_3x3")(x, train=train)
    x = pool(x)
    x = InceptionA(pool_features=32, name="Mixed_5b", **kw)(x, train=train)
    x = InceptionA(pool_features=64, name="Mixed_5c", **kw)(x, train=train)
    x = InceptionA(pool_features=64, name="Mixed_5d", **kw)(x, train=train)
    x = InceptionB(name="Mixed_6a", **kw)(x, train=train)
    x = InceptionC(channels_7x7=128, name="Mixed_6b", **kw)(x, train=train)
    x = InceptionC(channels_7x7=160, name="Mixed_6c", **kw)(x, train=train)
    x = InceptionC(channels_7x7=160, name="Mixed_6d", **kw)(x, train=train)
    x = InceptionC(channels_7x7=192, name="Mixed_6e", **kw)(x, train=train)
    aux = None
    if self.aux_logits and (train or self.is_initializing()):
      if min(x.shape[1:3]) < 17:
        raise ValueError(
            "the auxiliary head (aux_logits=True) needs inputs of at least 299x299 to "
            f"initialise or train (Mixed_6e gives {x.shape[1]}x{x.shape[2]}, its 5x5/3 pool "
            "and 5x5 conv need 17x17); eval mode works at any size >= 75x75")
      aux = InceptionAux(self.num_classes, name="AuxLogits", **kw)(x, train=train)
    x = InceptionD(name="Mixed_7a", **kw)(x, train=train)
    x = InceptionE(name="Mixed_7b", **kw)(x, train=train)
    x = InceptionE(name="Mixed_7c", **kw)(x, train=train)
    x = layers.adaptive_avg_pool(x, (1, 1))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = Linear(self.num_classes, dtype=self.dtype, name="fc")(x.reshape(x.shape[0], -1))
    logits = x.astype(layers.output_dtype(self.dtype))
    if train and aux is not None:
      return InceptionOutputs(logits, aux)
    return logits
