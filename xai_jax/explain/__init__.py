"""xai_jax.explain: saliency methods as pure functions, and a registry to choose them by name.

Every method is `method(model, variables, x, target, **options)` with
`x: float32[N, H, W, C]`, `target: int32[N]` (None -> predicted class) and
keyword-only options. Input-space methods return attributions shaped like `x`;
map methods (GradCAM, FullGrad, DeepMaps, the baselines) return
`float32[N, H, W]`. `to_map` reduces input-space attributions over channels.

Every method runs under `jax.jit` and `jax.vmap` with any of x, target,
variables, baselines and key traced or closed over. Entry checks work from
shapes (wrong channel counts, another model's variables, an integer seed as
`key` raise ValueError, also at trace time); value checks (finite inputs,
target range) run on concrete arguments only. A traced out-of-range target
gives an all-NaN result for its image; `random` and `edge` ignore the target
(see `explain.common` and `explain.baselines`). The perturbation methods
(`explain.perturbation`) take a traced `feature_mask` only with `num_features`,
and segment x on the host (`segment`, a `feature_mask` method name or LIME's
default) only when x is concrete.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Mapping, Sequence

from xai_jax.explain import cam, common, deep_maps, full_gradient, integrated, noise, perturbation
# The modules, bound before their same-named functions below shadow them.
from xai_jax.explain import layer_shap as _layer_shap_module, lrp as _lrp_module
from xai_jax.explain.baselines import edge, random_map
from xai_jax.explain.cam import gradcam, guided_gradcam
from xai_jax.explain.common import predicted_class
from xai_jax.explain.deep_maps import deepmaps, deepmaps_layers, layer_attributions
from xai_jax.explain.deeplift_rules import deeplift, deeplift_multipliers, deeplift_shap
from xai_jax.explain.full_gradient import fullgrad, fullgrad_completeness, simple_fullgrad
from xai_jax.explain.gradients import gradient, input_x_gradient
from xai_jax.explain.guided import deconvolution, guided_backprop
from xai_jax.explain.integrated import integrated_gradients
from xai_jax.explain.layer_shap import layer_expected_gradients, layer_shap
from xai_jax.explain.lrp import lrp
from xai_jax.explain.noise import gradient_shap
from xai_jax.explain.perturbation import (feature_ablation, kernel_shap, lime, occlusion,
                                          shapley_sampling)
from xai_jax.explain.postprocess import (normalize_min_max, resize, resize_bilinear,
                                         resize_nearest, to_map)
from xai_jax.explain.segmentation import segment


@functools.wraps(noise.smoothgrad)
def smoothgrad(method, model, variables, x, target=None, **options):
  # `noise.smoothgrad`, with `method` also given by registry name (resolved here, where the
  # registry is: `noise` cannot import it).
  if isinstance(method, str):
    if method not in METHODS:
      raise ValueError(f"unknown method {method!r}; valid: {', '.join(sorted(METHODS))}")
    method = METHODS[method]
  return noise.smoothgrad(method, model, variables, x, target, **options)


def _smoothgrad_entry(model, variables, x, target=None, *, method="gradient", **options):
  """Registry form of `smoothgrad`: the wrapped method is the `method` option."""
  return smoothgrad(method, model, variables, x, target, **options)


METHODS: dict[str, Callable] = {
    "gradient": gradient,
    "input_x_gradient": input_x_gradient,
    "integrated_gradients": integrated_gradients,
    # explain("smoothgrad", model, variables, x, target, method=<name or fn>, key=..., ...)
    "smoothgrad": _smoothgrad_entry,
    "gradient_shap": gradient_shap,
    "deeplift": deeplift,
    "deeplift_shap": deeplift_shap,
    "guided_backprop": guided_backprop,
    "deconvolution": deconvolution,
    "gradcam": gradcam,
    "guided_gradcam": guided_gradcam,
    "fullgrad": fullgrad,
    "simple_fullgrad": simple_fullgrad,
    "deepmaps": deepmaps,
    "random": random_map,
    "edge": edge,
    # Perturbation methods (forward passes only; feature_mask from `segment` or any int mask).
    "occlusion": occlusion,
    "feature_ablation": feature_ablation,
    "shapley_sampling": shapley_sampling,
    "lime": lime,
    "kernel_shap": kernel_shap,
    # Propagation and layer methods (explain.lrp, explain.layer_shap).
    "lrp": lrp,
    "layer_shap": layer_shap,
}

def explain(name: str, model, variables, x, target=None, **options):
  """Runs the registered method `name`: `METHODS[name](model, variables, x, target, **options)`.

  Raises:
    ValueError: for an unknown name (the message lists the valid ones), or
      whatever the method raises for bad input.
  """
  _check_name(name)
  return METHODS[name](model, variables, x, target, **options)



# The first four parameters of every method (`model, variables, x, target`) are not options.
_CALL_ARGUMENTS = 4


def _accepted(function: Callable) -> tuple[dict[str, inspect.Parameter], bool]:
  """The option parameters of `function` and whether it takes `**options` too."""
  parameters = list(inspect.signature(function).parameters.values())
  named = {p.name: p for p in parameters[_CALL_ARGUMENTS:]
           if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
  return named, any(p.kind == p.VAR_KEYWORD for p in parameters)


def _check_values(name: str, options: Mapping[str, Any]) -> None:
  """The option values each method checks on entry that need no model and no data."""
  try:
    if name == "integrated_gradients" and ("steps" in options or "rule" in options):
      integrated.nodes_and_weights(options.get("steps", 50), options.get("rule", "gausslegendre"))
    if options.get("samples") is not None:  # None: lime's per-reference default
      common.check_positive_int(options["samples"], "samples")
    if options.get("chunk") is not None:
      common.resolve_chunk(options["chunk"], 1, (1, 1, 1, 1))
    if "loop" in options:
      common.resolve_loop(options["loop"])
    if name == "smoothgrad":
      if options.get("kind", "mean") not in noise.KINDS:
        raise ValueError(f"unknown kind {options['kind']!r}; valid: {', '.join(noise.KINDS)}")
      if options.get("stdev") is not None and options.get("stdev_spread") is not None:
        raise ValueError("give either stdev (absolute) or stdev_spread (relative), not both")
    for field in ("stdev", "stdev_spread"):
      if isinstance(options.get(field), (int, float)):
        noise._noise_level(options[field], field)  # pylint: disable=protected-access
    if name == "gradcam":
      # pylint: disable-next=protected-access
      cam._resolve(options.get("mode", "raw"), options.get("relu"), options.get("upsample"))
    if name in ("occlusion", "feature_ablation", "shapley_sampling", "lime", "kernel_shap"):
      perturbation.check_static_options(name, options)
    if name in ("lrp", "layer_shap"):
      _STATIC_CHECKS[name](options)
    if name == "deepmaps":
      deep_maps.check_layer_set(options.get("layers"), options.get("first_layer"))
    if name in ("fullgrad", "simple_fullgrad") and "normalization" in options:
      full_gradient.check_normalization(options["normalization"])
    if name == "guided_gradcam" and options.get("upsample", "nearest") not in cam.UPSAMPLE:
      raise ValueError(f"unknown upsample {options['upsample']!r}; valid: "
                       f"{', '.join(cam.UPSAMPLE)}")
  except ValueError as error:
    message = str(error)
    raise ValueError(message if message.startswith(f"{name}:") else f"{name}: {message}") from None


_STATIC_CHECKS = {
    "lrp": _lrp_module.check_static_options,
    "layer_shap": _layer_shap_module.check_static_options,
}


def _check_name(name: str) -> None:
  if name not in METHODS:
    raise ValueError(f"unknown explanation method {name!r}; valid: {', '.join(sorted(METHODS))}")


def _option_parameters(name: str) -> tuple[dict[str, inspect.Parameter | None], bool]:
  """The options the registered method `name` takes itself, and whether it forwards others.

  For "smoothgrad", whose registry entry forwards `**options`, these are the keyword-only
  parameters of `noise.smoothgrad` plus `method` (mapped to None: it has a default); the
  rest go to the wrapped method, so the entry is not open-ended here.

  Raises:
    ValueError: for an unknown name (the message lists the valid ones).
  """
  _check_name(name)
  if name == "smoothgrad":  # smoothgrad(method, model, variables, x, target, *, ...)
    named: dict[str, inspect.Parameter | None] = {
        k: p for k, p in inspect.signature(noise.smoothgrad).parameters.items()
        if p.kind == p.KEYWORD_ONLY}
    named["method"] = None
    return named, False
  return _accepted(METHODS[name])


def takes_key(name: str) -> bool:
  """Whether the registered method `name` takes a PRNG `key` option (it draws randomness).

  Read from the method's signature, so a caller that fills in keys (the runner, the
  sanity checks) needs no list of method names: True for SmoothGrad (its noise, whatever
  the method it wraps), GradientSHAP, the random baseline, Shapley value sampling, LIME,
  KernelSHAP and layer SHAP; False for the deterministic methods.

  Args:
    name: a key of `METHODS`.

  Returns:
    True when `explain(name, ..., key=jax.random.key(seed))` is accepted.

  Raises:
    ValueError: for an unknown name (the message lists the valid ones).
  """
  named, _ = _option_parameters(name)
  return "key" in named


def check_options(name: str, options: Mapping[str, Any] | None = None, *,
                  supplied: Sequence[str] = ()) -> None:
  """Checks, without a model or data, that `explain(name, ..., **options)` can accept `options`.

  Meant for configs: it fails in milliseconds, before any training or data generation.
  Checked: `name` is registered; every option is a parameter of the method (for
  "smoothgrad", of `smoothgrad` or of the method it wraps, `method`, checked recursively);
  required options are given; and the values each method validates on entry without a model
  (integrated gradients' `steps` and `rule`, `samples`, `chunk`, `loop`, SmoothGrad's `kind`
  and `stdev`/`stdev_spread`, Grad-CAM's `mode` and `upsample`). Arrays (baselines, keys,
  injected noise) and model-dependent options (layer names) are checked when the method
  runs.

  Args:
    name: a key of `METHODS`.
    options: the keyword options, without `model, variables, x, target`.
    supplied: options the caller fills in later (e.g. `("key",)`), so not required here.

  Raises:
    ValueError: naming the method and the option: an unknown method or option (listing the
      valid ones), a missing required option, or a bad value.
  """
  named, open_ended = _option_parameters(name)
  options = dict(options or {})
  if name == "smoothgrad":
    inner = options.get("method", "gradient")
    if not isinstance(inner, str):
      raise ValueError(f"smoothgrad: option method must be a registry name; got {inner!r}")
    if inner == "smoothgrad":
      raise ValueError("smoothgrad: option method cannot be 'smoothgrad' itself")
    try:
      check_options(inner, {k: v for k, v in options.items() if k not in named},
                    supplied=supplied)
    except ValueError as error:
      raise ValueError(f"smoothgrad (wrapping {error}); smoothgrad's own options: "
                       f"{sorted(named)}") from None
  else:
    unknown = [] if open_ended else sorted(set(options) - set(named))
    if unknown:
      raise ValueError(f"{name}: unknown options {unknown}; valid: {sorted(named) or 'none'}")
  missing = sorted(k for k, p in named.items()
                   if p is not None and p.default is p.empty and k not in options
                   and k not in supplied)
  if missing:
    raise ValueError(f"{name}: missing required options {missing}")
  _check_values(name, options)


__all__ = [
    "METHODS", "check_options", "explain", "takes_key", "deconvolution", "deeplift",
    "deeplift_multipliers", "deeplift_shap", "deepmaps", "deepmaps_layers", "edge",
    "feature_ablation", "fullgrad", "fullgrad_completeness", "gradcam", "gradient",
    "gradient_shap", "guided_backprop", "guided_gradcam", "input_x_gradient",
    "integrated_gradients", "kernel_shap", "layer_attributions", "layer_expected_gradients",
    "layer_shap", "lime", "lrp", "normalize_min_max", "occlusion", "predicted_class", "random_map",
    "resize", "resize_bilinear", "resize_nearest", "segment", "shapley_sampling",
    "simple_fullgrad", "smoothgrad", "to_map",
]
