"""FullGrad and SimpleFullGrad, matching idiap/fullgrad-saliency's reference code.

Srinivas & Fleuret, "Full-Gradient Representation for Neural Network
Visualization" (NeurIPS 2019), https://arxiv.org/abs/1905.00780; reference
implementation https://github.com/idiap/fullgrad-saliency (`saliency/fullgrad.py`,
`simple_fullgrad.py`, `tensor_extractor.py`); reference-semantics.md section B.

Full-gradient decomposition of the target logit of a piecewise-linear network:
`f_t(x) = sum(x * dx) + sum_sites sum(bias_grad * bias)`, with one bias term
per bias site of the contract (`taps.bias_site`: conv / dense outputs after
their bias, batch-norm outputs with the effective bias
`beta - mean * gamma / sqrt(var + eps)`). All gradients come from one
backward pass (`taps.tap_gradients`).

Saliency map (idiap `FullGrad.saliency`):
  `post(x * dx).sum(C) + sum_{spatial sites} upsample(post(bias_grad * bias)).sum(C)`,
where `post(a) = (|a| - min) / (max + 1e-6)` per sample over all of C x H x W
(not per channel) and `upsample` is bilinear with `align_corners=True`. Dense
(2-D) sites count toward completeness only. No final normalisation.
SimpleFullGrad uses the raw bias-site gradients instead of `bias_grad * bias`.

`normalization="feature_map"` is FullGrad as Grabska-Barwinska et al. (2021,
"DeepMaps") write it in their Eq. 4: `s = Psi(a) + sum_l sum_phi Psi(a^{b,l}_phi)`
with `a = sum_C x * dx` (their Eq. 1, one map) and `Psi` their Eq. 5, bilinear
upscale (`align_corners=True`) of the per-map min-max normalised `|.|`, applied
to every feature map (channel) of every bias site separately instead of to the
site's whole C x H x W tensor; their appendix D compares the two orders.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from xai_jax import xla
from xai_jax.explain import common, deep_maps, postprocess
from xai_jax.models import taps

Array = jax.Array

_POST_EPS = 1e-6

NORMALIZATIONS = ("reference", "feature_map")
"""How each term is normalised: "reference" (idiap's `_postProcess` over the whole
C x H x W tensor of a site) or "feature_map" (DeepMaps Eq. 4: Psi of every feature map)."""


def post_process(a: Array) -> Array:
  """idiap's `_postProcess`: abs, minus the per-sample min, divided by (max + 1e-6).

  Args:
    a: `float[N, ...]`.

  Returns:
    `float[N, ...]` in [0, 1).
  """
  return postprocess.normalize_min_max(jnp.abs(a), eps=_POST_EPS)


def fullgrad_terms(model: nn.Module, variables: Any, x: Array,
                   target: Array) -> tuple[Array, Array, dict[str, Array], dict[str, Array]]:
  """Input-gradient and bias terms of the full-gradient decomposition (plain JAX).

  Args:
    model: contract model.
    variables: its variables.
    x: `float[N, H, W, C]`.
    target: `int32[N]`.

  Returns:
    `(target_logits float32[N], input_term x*dx [N, H, W, C],
    bias_terms {site: bias_grad * bias}, bias_grads {site: bias_grad})`, the
    dicts in forward order with `[N, h, w, c]` (conv / BN) or `[N, c]` (dense) values.
  """
  out = taps.tap_gradients(model, variables, x, target)
  picked = common.pick_target(out.logits, target)
  terms = {name: grad * out.biases[name].astype(grad.dtype)
           for name, grad in out.bias_grads.items()}
  return picked, x * out.input_grad, terms, dict(out.bias_grads)


def check_normalization(normalization: Any) -> str:
  """Returns `normalization` if it is one of `NORMALIZATIONS`; raises ValueError otherwise."""
  if not isinstance(normalization, str) or normalization not in NORMALIZATIONS:
    raise ValueError(f"unknown normalization {normalization!r}; valid: "
                     f"{', '.join(NORMALIZATIONS)}")
  return normalization


def _saliency_per_feature_map(input_term: Array, bias_maps: dict[str, Array]) -> Array:
  """DeepMaps Eq. 4: Psi of the channel-summed input term plus Psi of every bias feature map."""
  size = input_term.shape[1:3]
  cam = deep_maps.psi(jnp.sum(input_term, axis=-1), size, align_corners=True)
  for term in bias_maps.values():
    if term.ndim == 4:  # a dense site has no map (Psi of a 1x1 map would be 0 anyway)
      cam = cam + deep_maps.psi_per_channel_sum(term, size, align_corners=True)
  return cam


def _saliency(input_term: Array, bias_maps: dict[str, Array]) -> Array:
  size = input_term.shape[1:3]
  cam = jnp.sum(post_process(input_term), axis=-1)
  for term in bias_maps.values():
    if term.ndim != 4:
      continue  # dense sites: completeness only (as idiap)
    # Bilinear resizing is linear and acts on each channel alike, so summing the
    # channels first gives idiap's `upsample(...).sum(C)` while resizing one map
    # instead of C (ResNet50 at 224x224 otherwise ran out of 24 GiB at batch 8).
    cam = cam + postprocess.resize_bilinear(jnp.sum(post_process(term), axis=-1), size,
                                            align_corners=True)
  return cam


@functools.partial(xla.jit, static_argnames=("model", "simple", "normalization"))
def _fullgrad(model, variables, x, target, *, simple, normalization="reference"):
  _, input_term, terms, grads = fullgrad_terms(model, variables, x, target)
  saliency = _saliency if normalization == "reference" else _saliency_per_feature_map
  return saliency(input_term, grads if simple else terms)


def fullgrad(model: nn.Module, variables: Any, x: Array,
             target: Array | int | None, *, normalization: str = "reference") -> Array:
  """FullGrad saliency map, `float32[N, H, W]`.

  Args:
    model: an `xai_jax.models` contract model.
    variables: its variables.
    x: `float32[N, H, W, C]`.
    target: `int[N]`, an int, or None for the predicted class.
    normalization: "reference" (idiap's code: each term normalised over its
      whole C x H x W tensor, then summed over channels) or "feature_map"
      (DeepMaps Eq. 4: Psi of the channel-summed input term and of every
      feature map of every bias site); see the module docstring.

  Returns:
    `float32[N, H, W]`, unnormalised (a sum of maps in [0, 1], one per site
    ("reference") or per feature map ("feature_map"), plus the input term);
    all NaN for an image whose traced target is out of range (see
    `xai_jax.explain.common`).

  Raises:
    ValueError: for a non-contract model, bad `x` / `target`, variables /
      channels that do not fit the model, or an unknown `normalization`.
  """
  taps.check_contract(model, "fullgrad")
  normalization = check_normalization(normalization)
  x, target, valid = common.prepare(model, variables, x, target)
  return common.nan_where_invalid(
      _fullgrad(model, variables, x, target, simple=False, normalization=normalization), valid)


def simple_fullgrad(model: nn.Module, variables: Any, x: Array,
                    target: Array | int | None, *, normalization: str = "reference") -> Array:
  """SimpleFullGrad (idiap `SimpleFullGrad`): raw bias-site gradients instead of bias terms.

  Args:
    model: an `xai_jax.models` contract model.
    variables: its variables.
    x: `float32[N, H, W, C]`.
    target: `int[N]`, an int, or None for the predicted class.
    normalization: "reference" or "feature_map", as for `fullgrad`.

  Returns:
    `float32[N, H, W]`; all NaN for an image whose traced target is out of
    range.

  Raises:
    ValueError: for a non-contract model, bad `x` / `target`, variables /
      channels that do not fit the model, or an unknown `normalization`.
  """
  taps.check_contract(model, "simple_fullgrad")
  normalization = check_normalization(normalization)
  x, target, valid = common.prepare(model, variables, x, target)
  return common.nan_where_invalid(
      _fullgrad(model, variables, x, target, simple=True, normalization=normalization), valid)


@functools.partial(xla.jit, static_argnames=("model",))
def _completeness(model, variables, x, target):
  picked, input_term, terms, _ = fullgrad_terms(model, variables, x, target)
  axes = lambda a: tuple(range(1, a.ndim))
  lhs = jnp.sum(input_term, axis=axes(input_term))
  for term in terms.values():
    lhs = lhs + jnp.sum(term, axis=axes(term)).astype(lhs.dtype)
  rhs = picked.astype(lhs.dtype)
  return lhs, rhs


def fullgrad_completeness(model: nn.Module, variables: Any, x: Array,
                          target: Array | int | None) -> tuple[Array, Array, Array]:
  """Checks the full-gradient decomposition `sum(x*dx) + sum(bias terms) == f_t(x)`.

  idiap's `FullGrad.checkCompleteness` asserts this within `rel_tol=1e-4`; it
  holds for piecewise-linear networks (ReLU, max-pool, eval batch norm) whose
  every bias is a bias site.

  Args:
    model: an `xai_jax.models` contract model.
    variables: its variables.
    x: `float32[N, H, W, C]`.
    target: `int[N]`, an int, or None for the predicted class.

  Returns:
    `(lhs, rhs, rel_error)`, each `float[N]`: the decomposition sum, the
    target logit, and `|lhs - rhs| / |rhs|` (NaN for an image whose traced
    target is out of range).

  Raises:
    ValueError: for a non-contract model or bad `x` / `target`.
  """
  taps.check_contract(model, "fullgrad_completeness")
  x, target, valid = common.prepare(model, variables, x, target)
  lhs, rhs = _completeness(model, variables, x, target)
  tiny = jnp.finfo(rhs.dtype).tiny
  return common.nan_where_invalid(
      (lhs, rhs, jnp.abs(lhs - rhs) / jnp.maximum(jnp.abs(rhs), tiny)), valid)
