"""DeepMaps: multi-layer activation-times-gradient saliency maps.

Grabska-Barwinska, Rannen-Triki, Rivasplata & Gyorgy, "Towards Better Visual
Explanations for Deep Image Classifiers" (eXplainable AI approaches for
debugging and diagnosis workshop, NeurIPS 2021), Eqs. (5)-(8) and appendix D.

Layer attributions (Eq. 6): `a^{h,l}_{ij} = sum_phi x^l_{ij phi} * df_c/dx^l_{ij phi}`,
with layer 0 the input (`a^{h,0} = x * dx`, Eq. 1) and layers 1, 2, ... the
contract's spatial activations (`taps.activation`: every hidden ReLU output and
residual block output) in forward order. Dense (non-spatial) activations are
left out: a single value per channel has no map to upscale.

DeepMaps (Eq. 8): `s = sum_{l >= first_layer} Psi(a^{h,l})` with
`Psi(a) = bilinearUpscale(normalize(|a|))` (Eq. 5), `normalize` the per-image
min-max `(a - min) / (max - min)` (a constant map becomes 0). Eq. 5 is
FullGrad's Psi, so upscaling defaults to FullGrad's reference kernel
(bilinear, `align_corners=True`); `align_corners=False` gives the half-pixel
kernel. `per_channel=True` is the appendix D / Fig. 12 (bottom) variant that
applies Psi to every channel before summing: `sum_l sum_phi Psi(a^{h,l}_phi)`.
All gradients come from one backward pass (`taps.tap_gradients`).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from xai_jax import xla
from xai_jax.explain import common, postprocess
from xai_jax.models import taps
from xai_jax.models.base import shape_cached

Array = jax.Array

INPUT = "input"


def _normalize(a: Array) -> Array:
  """Per-sample min-max over all non-batch axes, exactly Eq. 5 (constant maps -> 0)."""
  axes = tuple(range(1, a.ndim))
  shifted = a - jnp.min(a, axis=axes, keepdims=True)
  top = jnp.max(shifted, axis=axes, keepdims=True)
  return shifted / jnp.where(top > 0, top, jnp.ones_like(top))


def psi(a: Array, size: tuple[int, int], *, align_corners: bool = True) -> Array:
  """Eq. 5: bilinear upscale of the min-max-normalised absolute map.

  Args:
    a: `float[N, h, w]` map (or `float[N, h, w, C]`: normalised per channel
      and upscaled channel by channel).
    size: output `(H, W)`.
    align_corners: bilinear kernel (see the module docstring).

  Returns:
    `float[N, H, W]` (or `[N, H, W, C]`).
  """
  if a.ndim == 4:  # per channel: normalise over (h, w) of each channel separately
    n, h, w, c = a.shape
    flat = jnp.moveaxis(jnp.abs(a), -1, 1).reshape(n * c, h, w)
    normed = jnp.moveaxis(_normalize(flat).reshape(n, c, h, w), 1, -1)
  else:
    normed = _normalize(jnp.abs(a))
  return postprocess.resize_bilinear(normed, size, align_corners=align_corners)


def psi_per_channel_sum(a: Array, size: tuple[int, int], *,
                        align_corners: bool = True) -> Array:
  """`psi(a, size).sum(-1)` for `a: float[N, h, w, C]`, resizing one map instead of C.

  Equal up to float rounding because bilinear resizing is linear and the same
  for every channel.
  """
  n, h, w, c = a.shape
  flat = jnp.moveaxis(jnp.abs(a), -1, 1).reshape(n * c, h, w)
  summed = jnp.sum(_normalize(flat).reshape(n, c, h, w), axis=1)
  return postprocess.resize_bilinear(summed, size, align_corners=align_corners)


def _layer_maps(model, variables, x, target, *, per_channel, align_corners, normalize):
  out = taps.tap_gradients(model, variables, x, target)
  size = x.shape[1:3]
  raw = {INPUT: x * out.input_grad}
  for name, act in out.activations.items():
    if act.ndim == 4:
      raw[name] = act * out.activation_grads[name]
  maps = {}
  for name, a in raw.items():
    if not normalize:
      maps[name] = postprocess.resize_bilinear(jnp.sum(a, axis=-1), size,
                                               align_corners=align_corners)
    elif per_channel:  # resizing is linear: sum the normalised channels, resize once
      maps[name] = psi_per_channel_sum(a, size, align_corners=align_corners)
    else:
      maps[name] = psi(jnp.sum(a, axis=-1), size, align_corners=align_corners)
  return maps


@functools.partial(xla.jit, static_argnames=("model", "per_channel", "align_corners",
                                             "normalize"))
def _layer_maps_jit(model, variables, x, target, *, per_channel, align_corners, normalize):
  return _layer_maps(model, variables, x, target, per_channel=per_channel,
                     align_corners=align_corners, normalize=normalize)


@shape_cached
def layer_names(model: nn.Module, variables: Any, x: Array) -> tuple[str, ...]:
  """DeepMaps layer order: `("input", spatial activation names in forward order...)`.

  Index l of this tuple is the paper's layer l (0 = the input attribution).
  """
  shapes = jax.eval_shape(lambda v, x: taps.forward(model, v, x)[1], variables, x)
  return (INPUT,) + tuple(name for name in taps.activation_names(model, variables, x)
                          if len(shapes[name].shape) == 4)


def layer_attributions(model: nn.Module, variables: Any, x: Array,
                       target: Array | int | None, *, per_channel: bool = False,
                       normalize: bool = True, align_corners: bool = True
                       ) -> dict[str, Array]:
  """Single-layer saliency maps, one per layer (the paper's Fig. 2 and Fig. 12).

  Args:
    model: an `xai_jax.models` contract model.
    variables: its variables.
    x: `float32[N, H, W, C]`.
    target: `int[N]`, an int, or None for the predicted class.
    per_channel: Psi per channel, then channel sum (Fig. 12 bottom) instead
      of Psi of the channel sum (Fig. 12 top).
    normalize: if False, return the signed channel-summed attribution
      `a^{h,l}` bilinearly upscaled without abs / normalisation (Fig. 2,
      middle row); `per_channel` is then ignored.
    align_corners: bilinear kernel (see the module docstring).

  Returns:
    Dict layer name -> `float32[N, H, W]` in layer order (`layer_names`):
    "input" first, then the spatial activations. All NaN for an image whose
    traced target is out of range (see `xai_jax.explain.common`).

  Raises:
    ValueError: for a non-contract model, bad `x` / `target`, or variables /
      channels that do not fit the model.
  """
  taps.check_contract(model, "layer_attributions")
  x, target, valid = common.prepare(model, variables, x, target)
  maps = _layer_maps_jit(model, variables, x, target, per_channel=bool(per_channel),
                         align_corners=bool(align_corners), normalize=bool(normalize))
  return common.nan_where_invalid({name: maps[name] for name in layer_names(model, variables, x)},
                                  valid)


@functools.partial(xla.jit, static_argnames=("model", "layers", "per_channel", "align_corners"))
def _deepmaps(model, variables, x, target, *, layers, per_channel, align_corners):
  maps = _layer_maps(model, variables, x, target, per_channel=per_channel,
                     align_corners=align_corners, normalize=True)
  return functools.reduce(jnp.add, [maps[name] for name in layers])


def deepmaps(model: nn.Module, variables: Any, x: Array, target: Array | int | None, *,
             first_layer: int = 0, per_channel: bool = False,
             layers: Sequence[str] | None = None, align_corners: bool = True) -> Array:
  """DeepMaps saliency (Eq. 8): sum over layers l >= first_layer of Psi(a^{h,l}).

  Args:
    model: an `xai_jax.models` contract model.
    variables: its variables.
    x: `float32[N, H, W, C]`.
    target: `int[N]`, an int, or None for the predicted class.
    first_layer: the paper's l_0; 0 includes the input attribution `x * dx`,
      1 starts at the first hidden activation (see `layer_names`).
    per_channel: appendix D variant (Psi per channel, then summed).
    layers: explicit layer names to sum instead of `first_layer` (e.g. only
      ResNet block outputs, as the paper's ResNet-50 experiments).
    align_corners: bilinear kernel (see the module docstring).

  Returns:
    `float32[N, H, W]`; all NaN for an image whose traced target is out of
    range.

  Raises:
    ValueError: for a non-contract model, bad inputs (also variables or
      channels that do not fit the model), `first_layer` out of range or an
      unknown layer name.
  """
  taps.check_contract(model, "deepmaps")
  x, target, valid = common.prepare(model, variables, x, target)
  names = layer_names(model, variables, x)
  if layers is None:
    if isinstance(first_layer, bool) or not isinstance(first_layer, int) or not (
        0 <= first_layer < len(names)):
      raise ValueError(f"first_layer must be an int in [0, {len(names) - 1}] "
                       f"(layers: {', '.join(names)}); got {first_layer!r}")
    layers = names[first_layer:]
  else:
    layers = tuple(layers)
    unknown = [name for name in layers if name not in names]
    if unknown or not layers:
      raise ValueError(f"unknown or empty layers {unknown or layers}; valid: {', '.join(names)}")
  maps = _deepmaps(model, variables, x, target, layers=tuple(layers),
                   per_channel=bool(per_channel), align_corners=bool(align_corners))
  return common.nan_where_invalid(maps, valid)
