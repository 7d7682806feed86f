"""xai_jax.explain: saliency methods as pure functions, and a registry to choose them by name.

Every method is `method(model, variables, x, target, **options)` with
`x: float32[N, H, W, C]`, `target: int32[N]` (None -> predicted class) and
keyword-only options. Input-space methods return attributions shaped like `x`;
map methods (GradCAM, FullGrad, DeepMaps, the baselines) return
`float32[N, H, W]`. `to_map` reduces input-space attributions over channels.
"""

from __future__ import annotations

import importlib
from typing import Callable

from xai_jax.explain.baselines import edge, random_map
from xai_jax.explain.common import predicted_class
from xai_jax.explain.gradients import gradient, input_x_gradient
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
    "random": random_map,
    "edge": edge,
}

# --- Methods of the second explainer module set (helper H4b). ----------------
# TODO(lead): finalise. Registered only when their module is present, so that
# the package imports while those files are being written; an ImportError
# raised *inside* an existing module is not swallowed.
_OPTIONAL_METHODS = {
    "deeplift": ("deeplift", "deeplift"),
    "deeplift_shap": ("deeplift", "deeplift_shap"),
    "guided_backprop": ("guided", "guided_backprop"),
    "deconvolution": ("guided", "deconvolution"),
    "gradcam": ("cam", "gradcam"),
    "guided_gradcam": ("cam", "guided_gradcam"),
    "fullgrad": ("fullgrad", "fullgrad"),
    "simple_fullgrad": ("fullgrad", "simple_fullgrad"),
    "deepmaps": ("deepmaps", "deepmaps"),
}


def _register_optional() -> None:
  for name, (module_name, attr) in _OPTIONAL_METHODS.items():
    full = f"{__name__}.{module_name}"
    try:
      module = importlib.import_module(full)
    except ModuleNotFoundError as e:
      if e.name != full:
        raise
      continue
    fn = getattr(module, attr, None)
    if fn is not None:
      METHODS[name] = fn
      globals()[attr] = fn


_register_optional()


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
    "METHODS", "explain", "edge", "gradient", "gradient_shap", "input_x_gradient",
    "integrated_gradients", "normalize_min_max", "predicted_class", "random_map", "resize",
    "resize_bilinear", "resize_nearest", "smoothgrad", "to_map",
]
