"""Grad-CAM and Guided Grad-CAM at a named activation of a contract model.

Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
Gradient-based Localization" (ICCV 2017), https://arxiv.org/abs/1610.02391.

Two reference implementations disagree on the output, so there are two modes
(reference-semantics A.8, A.9, C):
  * `mode="raw"`: Captum's `LayerGradCam` followed by
    `LayerAttribution.interpolate`: weights = mean gradient over the spatial
    axes, map = sum_c w_c A_c, ReLU only if `relu=True` (Captum's default is
    no ReLU), no normalisation, then resizing to the input size with torch's
    "nearest" (floor index, Captum's default) or "bilinear" (half-pixel).
  * `mode="normalized"`: pytorch-grad-cam: the same map, ReLU, per-image
    min-max `(m - min) / (max(m - min) + 1e-7)`, then half-pixel bilinear
    resizing (cv2 INTER_LINEAR).
The activation gradient comes from one backward pass that stops at the layer
(the layer's zero probe is the only differentiated argument).

A layer is an activation of the contract (`taps.activation_names`: ReLU outputs, block
outputs) or the output of a linear layer (`taps.linear_layers`: a conv, dense or batch-norm
module, e.g. VGG's first conv `"features_0"` or ResNet's stem conv `"conv1"`, before any
ReLU), as Captum's layer methods take any module; Tjoa & Guan hook the first conv layer.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from xai_jax import xla
from xai_jax.explain import common, guided, postprocess
from xai_jax.models import taps
from xai_jax.models.base import shape_cached

Array = jax.Array

MODES = ("raw", "normalized")
UPSAMPLE = ("nearest", "bilinear")
_TAP_COLLECTIONS = (taps.ACTIVATIONS, taps.ACTIVATION_PROBES, taps.BIASES, taps.BIAS_PROBES)


def _plain(variables) -> dict:
  return {k: v for k, v in dict(variables).items() if k not in _TAP_COLLECTIONS}


@shape_cached
def activation_probe_shapes(model: nn.Module, variables: Any, x: Array) -> dict[str, Any]:
  """Flat name -> `ShapeDtypeStruct` of every activation site (no FLOPs; cached per shapes)."""
  _, state = jax.eval_shape(
      lambda v, x: model.apply(v, x, mutable=[taps.ACTIVATION_PROBES]), _plain(variables), x)
  return traverse_util.flatten_dict(dict(state.get(taps.ACTIVATION_PROBES, {})), sep="/")


@shape_cached
def linear_output_shapes(model: nn.Module, variables: Any, x: Array) -> dict[str, Any]:
  """Linear layer name -> `ShapeDtypeStruct` of its output, for the layers called once
  (`taps.linear_layers`; no FLOPs; cached per shapes)."""
  shapes: dict[str, list] = {}

  def record(call: taps.LinearCall) -> Array:
    shapes.setdefault(call.name, []).append(jax.ShapeDtypeStruct(call.output.shape,
                                                                 call.output.dtype))
    return call.output

  def run(v, x):
    with taps.linear_layer_rule(record):
      return model.apply(v, x)

  jax.eval_shape(run, _plain(variables), x)
  return {name: found[0] for name, found in shapes.items() if len(found) == 1}


def layer_shape(model: nn.Module, variables: Any, x: Array, layer: str) -> Any:
  """The `ShapeDtypeStruct` of a layer `layer_gradient` takes: an activation or, failing
  that, a linear layer's output (`linear_output_shapes`, traced only then).

  Raises:
    ValueError: for an unknown layer name (listing the valid ones).
  """
  activations = activation_probe_shapes(model, variables, x)
  if layer in activations:
    return activations[layer]
  linear = linear_output_shapes(model, variables, x)
  if layer in linear:
    return linear[layer]
  raise ValueError(f"unknown layer {layer!r}; valid activation names: {', '.join(activations)}"
                   f"; or a linear layer's output: {', '.join(linear)}")


def check_layer(model: nn.Module, variables: Any, x: Array, layer: str | None) -> str:
  """Resolves `layer` (None -> the model's default Grad-CAM layer) and checks that it exists.

  Raises:
    ValueError: for an unknown layer name (listing the valid ones).
  """
  if layer is None:
    layer = taps.default_gradcam_layer(model)
  layer_shape(model, variables, x, layer)
  return layer


def layer_gradient(model: nn.Module, variables: Any, x: Array, target: Array,
                   layer: str, probe: Array | None = None) -> tuple[Array, Array]:
  """Activation and target-score gradient at one named layer (plain JAX, jit/vmap friendly).

  Args:
    model: contract model.
    variables: its variables.
    x: `float[N, H, W, C]`.
    target: `int32[N]`.
    layer: an activation name (see `taps.activation_names`) or the name of a linear layer
      called once (`linear_output_shapes`; its output, before any ReLU).
    probe: optional value added to the layer's activation (default zero), e.g.
      to evaluate the rest of the network at another activation (layer SHAP).

  Returns:
    `(activation, gradient)`, both `float[N, h, w, c]` (or `[N, c]`): the
    activation (including `probe`) and the gradient of
    `sum_n logits[n, target[n]]` with respect to it (NaN for an image whose
    target is out of range, see `common.pick_target`).
  """
  plain = _plain(variables)
  shapes = activation_probe_shapes(model, plain, x)
  if layer not in shapes:
    return _linear_output_gradient(model, plain, x, target, layer, probe)
  zeros = {k: jnp.zeros(s.shape, s.dtype) for k, s in shapes.items()}

  def score(probe):
    probes = traverse_util.unflatten_dict({**zeros, layer: probe}, sep="/")
    logits, state = model.apply({**plain, taps.ACTIVATION_PROBES: probes}, x,
                                mutable=[taps.ACTIVATIONS])
    act = traverse_util.flatten_dict(dict(state[taps.ACTIVATIONS]), sep="/")[layer]
    return jnp.sum(common.pick_target(logits, target)), act

  grad, act = jax.grad(score, has_aux=True)(zeros[layer] if probe is None else probe)
  return act, grad


def _linear_output_gradient(model, plain, x, target, layer, probe):
  """`layer_gradient` at a linear layer's output, through `taps.linear_layer_rule`."""
  if probe is None:
    shape = layer_shape(model, plain, x, layer)
    probe = jnp.zeros(shape.shape, shape.dtype)

  def score(added):
    seen = []

    def rule(call: taps.LinearCall) -> Array:
      if call.name != layer:
        return call.output
      seen.append(call.output + added)
      return seen[-1]

    with taps.linear_layer_rule(rule):
      logits = model.apply(plain, x)
    return jnp.sum(common.pick_target(logits, target)), seen[0]

  grad, act = jax.grad(score, has_aux=True)(probe)
  return act, grad


def layer_gradcam(activation: Array, gradient: Array) -> Array:
  """Captum's LayerGradCam map at layer resolution: `sum_c mean_hw(grad_c) * A_c`.

  Args:
    activation: `float[N, h, w, c]`.
    gradient: `float[N, h, w, c]`.

  Returns:
    `float[N, h, w]` (no ReLU, no normalisation).
  """
  weights = jnp.mean(gradient, axis=(1, 2), keepdims=True)
  return jnp.sum(weights * activation, axis=-1)


def _resolve(mode: str, relu, upsample) -> tuple[bool, str]:
  if mode not in MODES:
    raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
  if relu is None:
    relu = mode == "normalized"
  if upsample is None:
    upsample = "nearest" if mode == "raw" else "bilinear"
  if upsample not in UPSAMPLE:
    raise ValueError(f"unknown upsample {upsample!r}; valid: {', '.join(UPSAMPLE)}")
  return bool(relu), upsample


@functools.partial(xla.jit, static_argnames=("model", "layer", "relu", "upsample", "mode"))
def _gradcam(model, variables, x, target, *, layer, relu, upsample, mode):
  act, grad = layer_gradient(model, variables, x, target, layer)
  cam = layer_gradcam(act, grad)
  if relu:
    cam = jax.nn.relu(cam)
  if mode == "normalized":
    cam = postprocess.normalize_min_max(cam, eps=1e-7)
  return postprocess.resize(cam, x.shape[1:3], mode=upsample)


def gradcam(model: nn.Module, variables: Any, x: Array, target: Array | int | None, *,
            layer: str | None = None, relu: bool | None = None, upsample: str | None = None,
            mode: str = "raw") -> Array:
  """Grad-CAM map at input resolution.

  Args:
    model: an `xai_jax.models` contract model.
    variables: its variables.
    x: `float32[N, H, W, C]`.
    target: `int[N]`, an int, or None for the predicted class.
    layer: activation name or a linear layer's name (module docstring); default
      `taps.default_gradcam_layer(model)` (last conv block output). Must be spatial
      (`[N, h, w, c]`).
    relu: ReLU on the map before resizing; default False for "raw" (Captum's
      `relu_attributions=False`) and True for "normalized".
    upsample: "nearest" (torch floor-index) or "bilinear" (half-pixel);
      default "nearest" for "raw" (Captum's interpolate default) and
      "bilinear" for "normalized" (cv2).
    mode: "raw" (Captum) or "normalized" (pytorch-grad-cam), see the module
      docstring.

  Returns:
    `float32[N, H, W]`; all NaN for an image whose traced target is out of
    range (see `xai_jax.explain.common`).

  Raises:
    ValueError: for a non-contract model, bad inputs (also variables or
      channels that do not fit the model), an unknown layer, mode or
      upsampling, or a non-spatial layer.
  """
  taps.check_contract(model, "gradcam")
  relu, upsample = _resolve(mode, relu, upsample)
  x, target, valid = common.prepare(model, variables, x, target)
  layer = check_layer(model, variables, x, layer)
  shape = layer_shape(model, variables, x, layer).shape
  if len(shape) != 4:
    raise ValueError(f"gradcam needs a spatial layer [N, h, w, c]; {layer!r} has shape {shape}")
  cam = _gradcam(model, variables, x, target, layer=layer, relu=relu, upsample=upsample,
                 mode=mode)
  return common.nan_where_invalid(cam, valid)


@functools.partial(xla.jit, static_argnames=("model", "layer", "upsample"))
def _guided_gradcam(model, variables, x, target, *, layer, upsample):
  act, grad = layer_gradient(model, variables, x, target, layer)
  cam = postprocess.resize(jax.nn.relu(layer_gradcam(act, grad)), x.shape[1:3], mode=upsample)
  gbp = guided.modified_relu_gradient(model, variables, x, target, relu=guided.guided_relu)
  return gbp * cam[..., None]


def guided_gradcam(model: nn.Module, variables: Any, x: Array, target: Array | int | None,
                   *, layer: str | None = None, upsample: str = "nearest") -> Array:
  """Guided Grad-CAM as Captum's `GuidedGradCam`: guided backprop x upsampled ReLU'd Grad-CAM.

  Args:
    model: an `xai_jax.models` contract model.
    variables: its variables.
    x: `float32[N, H, W, C]`.
    target: `int[N]`, an int, or None for the predicted class.
    layer: activation name or a linear layer's name (module docstring); default the
      model's Grad-CAM layer.
    upsample: "nearest" (Captum's default `interpolate_mode`) or "bilinear".

  Returns:
    `float32[N, H, W, C]`: the raw-mode map with `relu=True` broadcast over channels,
    times the guided-backprop gradient; all NaN for an image whose traced
    target is out of range.

  Raises:
    ValueError: as `gradcam`.
  """
  taps.check_contract(model, "guided_gradcam")
  if upsample not in UPSAMPLE:
    raise ValueError(f"unknown upsample {upsample!r}; valid: {', '.join(UPSAMPLE)}")
  x, target, valid = common.prepare(model, variables, x, target)
  layer = check_layer(model, variables, x, layer)
  shape = layer_shape(model, variables, x, layer).shape
  if len(shape) != 4:
    raise ValueError(
        f"guided_gradcam needs a spatial layer [N, h, w, c]; {layer!r} has shape {shape}")
  out = _guided_gradcam(model, variables, x, target, layer=layer, upsample=upsample)
  return common.nan_where_invalid(out, valid)
