"""xai_jax.explain: saliency methods as pure functions, and a registry to choose them by name.

Every method is `method(model, variables, x, target, **options)` with
`x: float32[N, H, W, C]`, `target: int32[N]` (None -> predicted class) and
keyword-only options. Input-space methods return attributions shaped like `x`;
map methods (GradCAM, FullGrad, DeepMaps, the baselines) return
`float32[N, H, W]`. `to_map` reduces input-space attributions over channels.
"""

from __future__ import annotations

from typing import Callable

from xai_jax.explain.baselines import edge, random_map
from xai_jax.explain.cam import gradcam, guided_gradcam
from xai_jax.explain.common import predicted_class
from xai_jax.explain.deep_maps import deepmaps, layer_attributions
from xai_jax.explain.deeplift_rules import deeplift, deeplift_multipliers, deeplift_shap
from xai_jax.explain.full_gradient import fullgrad, fullgrad_completeness, simple_fullgrad
from xai_jax.explain.gradients import gradient, input_x_gradient
from xai_jax.explain.guided import deconvolution, guided_backprop
from xai_jax.explain.integrated import integrated_gradients
from xai_jax.explain.noise import gradient_shap, smoothgrad
from xai_jax.explain.postprocess import (normalize_min_max, resize, resize_bilinear,
                                         resize_nearest, to_map)



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
}

def explain(name: str, model, variables, x, target=None, **options):
  """Runs the registered method `name`: `METHODS[name](model, variables, x, target, **options)`.

  Raises:
    ValueError: for an unknown name (the message lists the valid ones), or
      whatever the method raises for bad input.
  """
  if name not in METHODS:
    raise ValueError(f"unknown explanation method {name!r}; valid: {', '.join(sorted(METHODS))}")
  return METHODS[name](model, variables, x, target, **options)


__all__ = [
    "METHODS", "explain", "deconvolution", "deeplift", "deeplift_multipliers", "deeplift_shap",
    "deepmaps", "edge", "fullgrad", "fullgrad_completeness", "gradcam", "gradient",
    "gradient_shap", "guided_backprop", "guided_gradcam", "input_x_gradient",
    "integrated_gradients", "layer_attributions", "normalize_min_max", "predicted_class",
    "random_map", "resize", "resize_bilinear", "resize_nearest", "simple_fullgrad",
    "smoothgrad", "to_map",
]
