"""DeepMaps: multi-layer activation-times-gradient saliency maps.

Grabska-Barwinska, Rannen-Triki, Rivasplata & Gyorgy, "Towards Better Visual
Explanations for Deep Image Classifiers" (eXplainable AI approaches for
debugging and diagnosis workshop, NeurIPS 2021), Eqs. (5)-(8) and appendices D, F.

Layer attributions (Eq. 6): `a^{h,l}_{ij} = sum_phi x^l_{ij phi} * df_c/dx^l_{ij phi}`,
with layer 0 the input (`a^{h,0} = x * dx`, Eq. 1) and layers 1, 2, ... the
contract's spatial activations (`taps.activation`: every hidden ReLU output and
residual block output) in forward order (`layer_names`). Dense (non-spatial)
activations are left out: a single value per channel has no map to upscale.

DeepMaps (Eq. 8): `s = sum_{l in layers} Psi(a^{h,l})` with
`Psi(a) = bilinearUpscale(normalize(|a|))` (Eq. 5), `normalize` the per-image
min-max `(a - min) / (max - min)` (a constant map becomes 0). Which layers
(`deepmaps_layers`, `LAYER_SETS`):

* "paper" (default): the set the paper sums for the architecture, declared by
  the model (`deepmaps_layers` of the taps contract): VGG16's 13 conv ReLUs
  (their layers 1-13, Fig. 2 and Fig. 12) and ResNet-50's stem ReLU and 16
  bottleneck outputs ("17 hidden-activity attributions", appendix F). The input
  map `x * dx` is not in it: it is gradient x input, whose grey-pixel artefact
  appendix C.1 describes. Other architectures declare the analogous set (every
  conv ReLU of a plain chain, the stem and block outputs of a network with
  parallel routes; see each model). A network without spatial activations (the
  MLP) has only the input map. A contract model that declares no set gets
  "hidden".
* "hidden": every spatial hidden activation (Eq. 8 with l_0 = 1).
* "all": the input map and every spatial hidden activation (l_0 = 0; the
  default before the paper's sets, e.g. 50 maps on ResNet-50).
* explicit names from `layer_names`, or `first_layer=l_0` for
  `layer_names[l_0:]`.

Eq. 5 is FullGrad's Psi, so upscaling defaults to FullGrad's reference kernel
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

LAYER_SETS = ("paper", "hidden", "all")
"""Named DeepMaps layer sets (see the module docstring and `deepmaps_layers`)."""


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


def _layer_maps(model, variables, x, target, *, per_channel, align_corners, normalize,
                names=None):
  """Maps of the layers `names` (None: every layer), keyed by name."""
  out = taps.tap_gradients(model, variables, x, target)
  size = x.shape[1:3]
  raw = {}
  if names is None or INPUT in names:
    raw[INPUT] = x * out.input_grad
  for name, act in out.activations.items():
    if act.ndim == 4 and (names is None or name in names):
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

  Index l of this tuple is the paper's layer l (0 = the input attribution): the
  "all" set of `deepmaps_layers`, and what `first_layer` indexes.
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


def _declared_layers(model: nn.Module) -> tuple[str, ...] | None:
  """The model's `deepmaps_layers` (the taps contract), or None when it declares none."""
  declared = getattr(model, "deepmaps_layers", None)
  if declared is None:
    return None
  if isinstance(declared, str) or not all(isinstance(name, str) for name in declared):
    raise ValueError(f"{type(model).__name__}.deepmaps_layers must be a tuple of activation "
                     f"names; got {declared!r}")
  return tuple(declared) or (INPUT,)


def check_layer_set(layers: Any = None, first_layer: Any = None) -> None:
  """Checks `deepmaps`' `layers` / `first_layer` options without a model (for configs).

  Raises:
    ValueError: for an unknown named set, both options given, a `first_layer`
      that is not a non-negative int, or names that are not strings.
  """
  if layers is not None and first_layer is not None:
    raise ValueError(f"give layers or first_layer, not both; got layers={layers!r} and "
                     f"first_layer={first_layer!r}")
  if first_layer is not None and (isinstance(first_layer, bool) or not isinstance(
      first_layer, int) or first_layer < 0):
    raise ValueError(f"first_layer must be an int >= 0 (an index into layer_names); "
                     f"got {first_layer!r}")
  if isinstance(layers, str):
    if layers not in LAYER_SETS:
      raise ValueError(f"unknown layers {layers!r}; valid: {', '.join(LAYER_SETS)} or a "
                       "sequence of layer names (see layer_names)")
  elif layers is not None:
    try:
      names = tuple(layers)
    except TypeError:
      names = None
    if not names or not all(isinstance(name, str) for name in names):
      raise ValueError(f"layers must be one of {', '.join(LAYER_SETS)} or a non-empty "
                       f"sequence of layer names; got {layers!r}")


def deepmaps_layers(model: nn.Module, variables: Any = None, x: Array | None = None, *,
                    layers: str = "paper") -> tuple[str, ...]:
  """The layers DeepMaps sums, in forward order (names from `layer_names`).

  Args:
    model: an `xai_jax.models` contract model.
    variables: its variables; needed for "hidden" and "all", and for "paper"
      when the model declares no set. With `x`, the names are also checked
      against the model's activations.
    x: an example input `float32[N, H, W, C]` (or a `jax.ShapeDtypeStruct`),
      as `variables`.
    layers: "paper" (the model's `deepmaps_layers`: VGG16's 13 conv ReLUs,
      ResNet-50's stem ReLU and 16 block outputs, ...; `("input",)` for a
      network without spatial activations), "hidden" (every spatial
      activation) or "all" (the input map, then every spatial activation).

  Returns:
    The layer names, e.g. `("relu", "layer1_0/relu3", ..., "layer4_2/relu3")`
    for ResNet-50.

  Raises:
    ValueError: for a non-contract model, an unknown set, a set that needs
      `variables` and `x` without them, or declared names the model does not
      have.
  """
  taps.check_contract(model, "deepmaps_layers")
  if not isinstance(layers, str) or layers not in LAYER_SETS:
    raise ValueError(f"unknown layers {layers!r}; valid: {', '.join(LAYER_SETS)}")
  declared = _declared_layers(model) if layers == "paper" else None
  if declared is not None and (variables is None or x is None):
    return declared
  if variables is None or x is None:
    why = ("declares no deepmaps_layers" if layers == "paper"
           else f"needs its activations for the {layers!r} set")
    raise ValueError(f"{type(model).__name__} {why}: pass variables and x to trace them")
  names = layer_names(model, variables, x)
  if declared is not None:
    missing = [name for name in declared if name not in names]
    if missing:
      raise ValueError(f"{type(model).__name__}.deepmaps_layers names {missing}, which are not "
                       f"spatial activations of the model; valid: {', '.join(names)}")
    return declared
  if layers == "all":
    return names
  return names[1:] or (INPUT,)


@functools.partial(xla.jit, static_argnames=("model", "layers", "per_channel", "align_corners"))
def _deepmaps(model, variables, x, target, *, layers, per_channel, align_corners):
  maps = _layer_maps(model, variables, x, target, per_channel=per_channel,
                     align_corners=align_corners, normalize=True, names=frozenset(layers))
  return functools.reduce(jnp.add, [maps[name] for name in layers])


def deepmaps(model: nn.Module, variables: Any, x: Array, target: Array | int | None, *,
             layers: str | Sequence[str] | None = None, first_layer: int | None = None,
             per_channel: bool = False, align_corners: bool = True) -> Array:
  """DeepMaps saliency (Eq. 8): the sum of Psi(a^{h,l}) over the chosen layers.

  Args:
    model: an `xai_jax.models` contract model.
    variables: its variables.
    x: `float32[N, H, W, C]`.
    target: `int[N]`, an int, or None for the predicted class.
    layers: a named set, "paper" (the default: the architecture's set of the
      paper, `deepmaps_layers(model)`), "hidden" or "all" (see the module
      docstring), or explicit layer names from `layer_names`.
    first_layer: the paper's l_0 instead of `layers`: sum over
      `layer_names(...)[first_layer:]` (0 includes the input map `x * dx`,
      1 starts at the first hidden activation).
    per_channel: appendix D variant (Psi per channel, then summed).
    align_corners: bilinear kernel (see the module docstring).

  Returns:
    `float32[N, H, W]`; all NaN for an image whose traced target is out of
    range.

  Raises:
    ValueError: for a non-contract model, bad inputs (also variables or
      channels that do not fit the model), both `layers` and `first_layer`,
      `first_layer` out of range, an unknown set or an unknown layer name.
  """
  taps.check_contract(model, "deepmaps")
  check_layer_set(layers, first_layer)
  x, target, valid = common.prepare(model, variables, x, target)
  names = layer_names(model, variables, x)
  if first_layer is not None:
    if first_layer >= len(names):
      raise ValueError(f"first_layer must be an int in [0, {len(names) - 1}] "
                       f"(layers: {', '.join(names)}); got {first_layer!r}")
    layers = names[first_layer:]
  elif layers is None or isinstance(layers, str):
    layers = deepmaps_layers(model, variables, x, layers=layers or "paper")
  else:
    layers = tuple(layers)
    unknown = [name for name in layers if name not in names]
    if unknown:
      raise ValueError(f"unknown layers {unknown}; valid: {', '.join(names)}")
  maps = _deepmaps(model, variables, x, target, layers=tuple(layers),
                   per_channel=bool(per_channel), align_corners=bool(align_corners))
  return common.nan_where_invalid(maps, valid)
