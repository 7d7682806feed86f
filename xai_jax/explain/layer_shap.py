"""Layer SHAP: expected gradients at a hidden layer, upsampled and (optionally) guided.

Erion, Janizek, Sturmfels, Lundberg & Lee, "Improving performance of deep
learning models with axiomatic attribution priors and expected gradients"
(Nature Machine Intelligence 2021), https://arxiv.org/abs/1906.10670, as
implemented by `shap.GradientExplainer` (Lundberg & Lee, "A Unified Approach
to Interpreting Model Predictions", NeurIPS 2017); Gattas, "Evaluating
Feature Attribution Methods" (thesis), section 3.7, for the map: the layer
attributions summed over channels, resized to the input and multiplied by
guided backpropagation, "following the Guided GradCAM approach".

For image n and sample s = 1..S, a background image `b_s` drawn uniformly with
replacement from `background` and `alpha_s ~ U(0, 1)` (shap's draws: for each
image in turn, for each sample, first the background index, then alpha). With
`h` the named activation and `f_t` the target logit:
  * `space="layer"` (default; shap's GradientExplainer on the sub-network
    from the layer to the output, as shap's TensorFlow examples split a
    network with `(layer.input, model.output)`, which is how Gattas used it
    with Keras): the reference is `h(b_s)`, the interpolation is in the
    layer's activation space, `h_s = alpha_s * h~(x) + (1 - alpha_s) * h(b_s)`
    with `h~(x) = h(x) + local_smoothing * N(0, 1)`, and
    `phi = mean_s grad_h f_t(h_s) * (h~(x) - h(b_s))`: expected gradients of
    `f_t` as a function of the activation, summing to
    `f_t(h~(x)) - mean_s f_t(h(b_s))` in expectation. The rest of the network
    is evaluated at the layer value `h_s` through the contract's activation
    probe; for a layer that every path to the logits crosses (VGG / AlexNet
    activations, ResNet block outputs) that is exactly the sub-network.
  * `space="input"`: shap's PyTorch `GradientExplainer((model, layer), ...)`,
    which interpolates images, `x_s = alpha_s * x~ + (1 - alpha_s) * b_s` with
    `x~ = x + local_smoothing * N(0, 1)`, and returns
    `phi = mean_s grad_h f_t(h(x_s)) * h(x_s)` (the activation itself, not a
    difference: shap's code).
`layer_expected_gradients` returns `phi` (`float[N, h, w, c]`); `layer_shap`
sums it over channels, resizes the map to the input (bilinear, half-pixel:
OpenCV's `cv2.resize` that Gattas first used, or nearest) and, with
`guided=True`, multiplies it into guided backpropagation as Guided Grad-CAM
does (`float[N, H, W, C]`; the map keeps its sign, no ReLU).

Randomness comes only from `key`; for parity with shap (whose numpy stream is
replayed in the tests) the background indices, alphas and noise can be
injected, entry `[n, s]` belonging to image n, sample s. Samples are evaluated
`chunk` at a time (see `xai_jax.explain.common`).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from xai_jax import xla
from xai_jax.explain import cam, common, guided, postprocess, sampling
from xai_jax.models import taps

Array = jax.Array

SPACES = ("layer", "input")
UPSAMPLE = ("bilinear", "nearest")
KEY_SLOTS = ("indices", "alphas", "noise")
"""Layer SHAP's use of `jax.random.split(key, 3)` (see `sampling.expected_gradients_draws`)."""


def _noise(args, point, sigma):
  """Noise `[c, N, ...]` for a chunk: injected, drawn from per-sample keys, or none."""
  if "noise" in args:
    return args["noise"]
  if "keys" in args or "image_keys" in args:
    return sampling.normal_noise(args, point.shape, point.dtype) * sigma
  return jnp.zeros((), point.dtype)


def _rows(a):
  """`[c, N, ...] -> [c * N, ...]`."""
  return a.reshape((a.shape[0] * a.shape[1],) + a.shape[2:])


def _layer_body(model, layer, ops, args):
  """Sum over a chunk of `grad f_t(h_s) * (h~(x) - h(b_s))` (layer space)."""
  variables, x, target, act_x, act_background, sigma = ops
  point = act_x[None] + _noise(args, act_x, sigma)  # [c, N, ...]
  reference = act_background[args["indices"]]
  alpha = args["alphas"].reshape(args["alphas"].shape + (1,) * (act_x.ndim - 1))
  interpolated = alpha * point + (1.0 - alpha) * reference
  c = interpolated.shape[0]
  images = _rows(jnp.broadcast_to(x[None], (c,) + x.shape))
  probe = _rows(interpolated - act_x[None])  # the activation becomes h(x) + probe = h_s
  _, grad = cam.layer_gradient(model, variables, images, jnp.tile(target, c), layer, probe)
  return jnp.sum(grad.reshape(interpolated.shape) * (point - reference), axis=0)


def _input_body(model, layer, ops, args):
  """Sum over a chunk of `grad f_t(h(x_s)) * h(x_s)` (shap's PyTorch layer mode)."""
  variables, x, target, background, sigma = ops
  point = x[None] + _noise(args, x, sigma)
  alpha = args["alphas"].reshape(args["alphas"].shape + (1,) * (x.ndim - 1))
  images = alpha * point + (1.0 - alpha) * background[args["indices"]]
  c = images.shape[0]
  act, grad = cam.layer_gradient(model, variables, _rows(images), jnp.tile(target, c), layer)
  return jnp.sum((grad * act).reshape((c, x.shape[0]) + act.shape[1:]), axis=0)


@functools.partial(xla.jit, static_argnames=("model", "layer", "space"))
def _unit(operands, chunked, *, model, layer, space):
  body = _layer_body if space == "layer" else _input_body
  return common.sum_over_chunks(functools.partial(body, model, layer), operands, chunked)


@functools.partial(xla.jit, static_argnames=("model", "layer"))
def _activations(model, variables, images, *, layer):
  return taps.forward(model, variables, images)[1][layer]


def check_static_options(options) -> None:
  """Checks the options of `layer_shap` that need no model (`space`, `upsample`, `guided`,
  `samples`, a concrete `local_smoothing`); used by `explain.check_options` too.

  Raises:
    ValueError: naming the bad option.
  """
  if options.get("space", "layer") not in SPACES:
    raise ValueError(f"unknown space {options['space']!r}; valid: {', '.join(SPACES)}")
  if options.get("upsample", "bilinear") not in UPSAMPLE:
    raise ValueError(f"unknown upsample {options['upsample']!r}; valid: {', '.join(UPSAMPLE)}")
  if not isinstance(options.get("guided", True), bool):
    raise ValueError(f"guided must be a bool; got {options['guided']!r}")
  common.check_positive_int(options.get("samples", 200), "samples")
  level = options.get("local_smoothing", 0.0)
  if common.is_concrete(level) and not float(np.asarray(level)) >= 0:
    raise ValueError(f"local_smoothing must be >= 0; got {level}")


def layer_expected_gradients(model: nn.Module, variables: Any, x: Array,
                             target: Array | int | None = None, *, background: Array,
                             layer: str | None = None, samples: int = 200,
                             key: Array | None = None, space: str = "layer",
                             local_smoothing: float = 0.0, chunk: int | None = None,
                             loop: str = "auto", alphas: Array | None = None,
                             background_indices: Array | None = None,
                             noise: Array | None = None) -> Array:
  """shap's GradientExplainer values at a hidden layer (see the module docstring).

  Args:
    model: an `xai_jax.models` contract model.
    variables: its variables.
    x: `float32[N, H, W, C]`.
    target: `int[N]`, an int, or None for the predicted class.
    background: `float32[M, H, W, C]`, shap's background data (M >= 1).
    layer: activation name; default `taps.default_gradcam_layer(model)`.
    samples: samples per image (shap's `nsamples`, default 200 as shap).
    key: `jax.random` key, or one key per image `key[N]` (image i's draws from `key[i]`
      alone, as if explained alone; `sampling.check_keys`); required unless the draws are
      injected.
    space: "layer" (expected gradients in activation space) or "input"
      (shap's PyTorch `(model, layer)` mode).
    local_smoothing: standard deviation of the noise added to the explained
      point (the activation in "layer" space, the image in "input" space).
    chunk: samples per model call (memory bound); None -> default.
    loop: "python", "lax" or "auto" (see `common.run_chunked`).
    alphas: optional injected `float[N, samples]` interpolation points.
    background_indices: optional injected `int[N, samples]` rows of `background`.
    noise: optional injected `float[N, samples, ...]` standard normal noise
      (activation-shaped in "layer" space, image-shaped in "input" space),
      scaled by `local_smoothing`.

  Returns:
    `float32[N, h, w, c]` (the layer's shape); all NaN for an image whose
    traced target is out of range (see `xai_jax.explain.common`).

  Raises:
    ValueError: for a non-contract model, bad `x` / `target` / `background`,
      an unknown layer or space, a negative `local_smoothing`, malformed
      injected draws, or a missing or malformed key.
  """
  taps.check_contract(model, "layer_shap")
  check_static_options(dict(space=space, samples=samples, local_smoothing=local_smoothing))
  x, target, valid = common.prepare(model, variables, x, target)
  layer = cam.check_layer(model, variables, x, layer)
  background = sampling.check_references(background, x, name="background")
  sigma = local_smoothing
  smoothing = True  # a traced level may be > 0
  if common.is_concrete(sigma):
    sigma = float(np.asarray(sigma))
    smoothing = sigma > 0
  point_shape = (cam.layer_shape(model, variables, x, layer).shape
                 if space == "layer" else x.shape)
  step_args = sampling.expected_gradients_draws(
      key, samples=samples, references=background.shape[0], point_shape=point_shape,
      dtype=x.dtype, smoothing=smoothing, key_slots=KEY_SLOTS, indices=background_indices,
      alphas=alphas, noise=noise, indices_name="background_indices",
      smoothing_name="local_smoothing")
  if "noise" in step_args:  # injected standard normal noise, scaled here
    step_args["noise"] = step_args["noise"] * jnp.asarray(sigma, x.dtype)
  sigma = jnp.asarray(sigma, x.dtype)
  if space == "layer":
    operands = (variables, x, target, _activations(model, variables, x, layer=layer),
                _activations(model, variables, background, layer=layer), sigma)
  else:
    operands = (variables, x, target, background, sigma)
  chunk = common.resolve_chunk(chunk, samples, x.shape)
  unit = functools.partial(_unit, model=model, layer=layer, space=space)
  total = common.run_chunked(unit, operands, step_args, chunk=chunk, loop=loop)
  return common.nan_where_invalid(total / samples, valid)


@functools.partial(xla.jit, static_argnames=("size", "upsample"))
def _upsampled_map(phi, *, size, upsample):
  return postprocess.resize(jnp.sum(phi, axis=-1), size, mode=upsample)


def layer_shap(model: nn.Module, variables: Any, x: Array, target: Array | int | None = None,
               *, background: Array, layer: str | None = None, samples: int = 200,
               key: Array | None = None, guided: bool = True, upsample: str = "bilinear",
               space: str = "layer", local_smoothing: float = 0.0, chunk: int | None = None,
               loop: str = "auto", alphas: Array | None = None,
               background_indices: Array | None = None, noise: Array | None = None) -> Array:
  """Layer SHAP map: `layer_expected_gradients` summed over channels, resized, guided.

  Args:
    model, variables, x, target, background, layer, samples, key, space,
    local_smoothing, chunk, loop, alphas, background_indices, noise: as
      `layer_expected_gradients`; the layer must be spatial (`[N, h, w, c]`).
    guided: multiply the map into guided backpropagation (Gattas, section 3.7).
    upsample: "bilinear" (half-pixel, OpenCV's default) or "nearest" (torch's).

  Returns:
    `float32[N, H, W, C]` with `guided=True` (guided backprop times the map,
    broadcast over channels), else the map `float32[N, H, W]`; all NaN for an
    image whose traced target is out of range.

  Raises:
    ValueError: as `layer_expected_gradients`, for an unknown `upsample`, a
      non-bool `guided` or a non-spatial layer.
  """
  taps.check_contract(model, "layer_shap")
  check_static_options(dict(upsample=upsample, guided=guided, space=space, samples=samples,
                            local_smoothing=local_smoothing))
  x, target, valid = common.prepare(model, variables, x, target)
  layer = cam.check_layer(model, variables, x, layer)
  shape = cam.layer_shape(model, variables, x, layer).shape
  if len(shape) != 4:
    raise ValueError(f"layer_shap needs a spatial layer [N, h, w, c]; {layer!r} has shape "
                     f"{shape}")
  phi = layer_expected_gradients(
      model, variables, x, target, background=background, layer=layer, samples=samples,
      key=key, space=space, local_smoothing=local_smoothing, chunk=chunk, loop=loop,
      alphas=alphas, background_indices=background_indices, noise=noise)
  out = _upsampled_map(phi, size=tuple(x.shape[1:3]), upsample=upsample)
  if guided:
    out = _guided_backprop(model, variables, x, target) * out[..., None]
  return common.nan_where_invalid(out, valid)


@functools.partial(xla.jit, static_argnames=("model",))
def _guided_backprop(model, variables, x, target):
  return guided.modified_relu_gradient(model, variables, x, target, relu=guided.guided_relu)


__all__ = ["SPACES", "UPSAMPLE", "check_static_options", "layer_expected_gradients", "layer_shap"]
