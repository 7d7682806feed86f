"""xai_jax.models: torchvision-exact AlexNet/VGG/ResNet/Inception v3, small CNN/MLP, taps.

    model = models.get("vgg16", num_classes=10, head="tjoa")
    variables = models.init(model, jax.random.key(0), (1, 224, 224, 3))
    logits = model.apply(variables, x)                     # x: float32[N, H, W, 3]
    out = models.tap_gradients(model, variables, x, target)  # the explainer contract

Every model follows the contract in `xai_jax.models.taps` (named activations,
bias sites with effective biases, replaceable ReLU / LeakyReLU / max-pool,
default Grad-CAM layer). Inputs are NHWC float32 raw pixels. Weights from
torchvision are converted by `xai_jax.models.port.from_torchvision`.

Heads (`head=` keyword of the AlexNet/VGG/ResNet families):
- "torchvision" (default): the torchvision classifier.
- "tjoa": Tjoa & Guan's adjusted heads (cells.md section 3): AlexNet with
  LeakyReLU(0.01) classifier activations; VGG with a two-layer LeakyReLU
  classifier and LeakyReLU(0.01) on the logits; ResNet with a 1x1 conv
  (with bias) after the global pool. `alexnet_plus` defaults to "tjoa".
"""

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from xai_jax import xla
from xai_jax.models.alexnet import AlexNet
from xai_jax.models.base import ApplyFn, as_apply
from xai_jax.models.inception import Inception3
from xai_jax.models.resnet import ResNet
from xai_jax.models.small import CNN, MLP, SmallVGG
from xai_jax.models.taps import (
    DEFAULT_OPS, Ops, TapGradients, activation_names, bias_site_names,
    default_gradcam_layer, forward, max_pool, tap_gradients, with_ops)
from xai_jax.models.vgg import VGG


def _vgg(depth, bn):
  return lambda **kw: VGG(depth=depth, batch_norm=bn, **kw)


def _resnet(depth):
  return lambda **kw: ResNet(depth=depth, **kw)


def _alexnet_plus(*, extra_layers: int = 1, head: str = "tjoa", **kw):
  if extra_layers < 0:
    raise ValueError(f"extra_layers must be >= 0, got {extra_layers}")
  return AlexNet(extra_layers=extra_layers, head=head, **kw)


_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "alexnet": AlexNet,
    "alexnet_plus": _alexnet_plus,
    **{f"vgg{d}": _vgg(d, False) for d in (11, 13, 16, 19)},
    **{f"vgg{d}_bn": _vgg(d, True) for d in (11, 13, 16, 19)},
    **{f"resnet{d}": _resnet(d) for d in (18, 34, 50)},
    "inception_v3": Inception3,
    "cnn": CNN,
    "mlp": MLP,
    "small_vgg": SmallVGG,
}

NAMES: tuple[str, ...] = tuple(_REGISTRY)

# Names with a torchvision counterpart (see `port.from_torchvision`).
TORCHVISION_NAMES: tuple[str, ...] = tuple(
    n for n in NAMES if n not in ("alexnet_plus", "cnn", "mlp", "small_vgg"))


def get(name: str, *, num_classes: int = 1000, dtype: Any = jnp.float32,
        **kwargs) -> nn.Module:
  """Returns the named network as a `flax.linen.Module`.

  Args:
    name: one of `NAMES`.
    num_classes: number of logits.
    dtype: computation dtype (parameters stay float32; logits are float32).
    **kwargs: model options: `head` ("torchvision" | "tjoa") for the
      AlexNet/VGG/ResNet families, `extra_layers` for `alexnet_plus`
      (default 1), `classifier_width` for AlexNet and the VGGs (4096), `ops` (a `taps.Ops`), `hidden`
      for `mlp` and `small_vgg`,
      `widths` for `small_vgg`, `transform_input`, `aux_logits` and `dropout`
      for `inception_v3` (see `xai_jax.models.inception`).

  Returns:
    The module; `__call__(x: float32[N, H, W, C], *, train=False)` returns
    `float32[N, num_classes]`.

  Raises:
    ValueError: unknown name, head, or invalid option.
  """
  if name not in _REGISTRY:
    raise ValueError(f"unknown model {name!r}; valid names: {', '.join(NAMES)}")
  if num_classes < 1:
    raise ValueError(f"num_classes must be >= 1, got {num_classes}")
  head = kwargs.get("head")
  if head is not None and head not in ("torchvision", "tjoa"):
    raise ValueError(f"unknown head {head!r}; valid: 'torchvision', 'tjoa'")
  try:
    return _REGISTRY[name](num_classes=num_classes, dtype=dtype, **kwargs)
  except TypeError as e:
    raise ValueError(f"invalid option for model {name!r}: {e}") from None


def init(model: nn.Module, key: jax.Array, input_shape: tuple[int, ...]) -> dict:
  """Initialises `model` on a zero input of `input_shape` (jitted, eval mode).

  Args:
    model: a module from `get`.
    key: PRNG key.
    input_shape: e.g. `(1, 224, 224, 3)` (batch size does not matter).

  Returns:
    `{"params": ..., ["batch_stats": ...]}` (float32).
  """
  x = jnp.zeros(input_shape, jnp.float32)
  variables = xla.jit(lambda k: model.init(k, x))(key)
  return dict(variables)


__all__ = [
    "AlexNet", "ApplyFn", "CNN", "DEFAULT_OPS", "Inception3", "MLP", "NAMES", "Ops", "ResNet",
    "SmallVGG", "TORCHVISION_NAMES", "TapGradients", "VGG", "activation_names", "as_apply",
    "bias_site_names", "default_gradcam_layer", "forward", "get", "init",
    "max_pool", "tap_gradients", "with_ops",
]
