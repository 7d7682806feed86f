"""Guided backpropagation and deconvolution: input gradients through modified ReLUs.

Springenberg, Dosovitskiy, Brox & Riedmiller, "Striving for Simplicity: The All
Convolutional Net" (ICLR 2015 workshop), https://arxiv.org/abs/1412.6806 (guided
backpropagation); Zeiler & Fergus, "Visualizing and Understanding
Convolutional Networks" (ECCV 2014), https://arxiv.org/abs/1311.2901
(deconvolution).

As Captum 0.9 (reference-semantics A.7), only ReLUs are modified: the
contract's `ops.relu` gets a `jax.custom_vjp` backward rule, while LeakyReLU
and max-pool keep their ordinary gradients (Captum hooks only `nn.ReLU`
modules). The score is `sum_n logits[n, target[n]]`; no absolute value.
  * guided backprop: `g_in = 1[x > 0] * max(g_out, 0)`;
  * deconvolution:   `g_in = max(g_out, 0)` (the forward mask is ignored).
The rule is the only difference: `RELU_RULES` maps each method to its ReLU and
both run one body.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from xai_jax import xla
from xai_jax.explain import common
from xai_jax.models import taps

Array = jax.Array


@jax.custom_vjp
def guided_relu(x: Array) -> Array:
  """ReLU whose backward pass is guided backprop's `1[x > 0] * max(g, 0)`."""
  return jax.nn.relu(x)


def _guided_fwd(x):
  return jax.nn.relu(x), x


def _guided_bwd(x, g):
  return (jnp.where(x > 0, jnp.maximum(g, 0), jnp.zeros_like(g)),)


guided_relu.defvjp(_guided_fwd, _guided_bwd)


@jax.custom_vjp
def deconv_relu(x: Array) -> Array:
  """ReLU whose backward pass is deconvolution's `max(g, 0)`."""
  return jax.nn.relu(x)


def _deconv_fwd(x):
  return jax.nn.relu(x), None


def _deconv_bwd(_, g):
  return (jnp.maximum(g, 0),)


deconv_relu.defvjp(_deconv_fwd, _deconv_bwd)

RELU_RULES = {"guided_backprop": guided_relu, "deconvolution": deconv_relu}
"""The replacement ReLU (its backward rule) of each method; nothing else differs."""


def modified_relu_gradient(model: nn.Module, variables: Any, x: Array, target: Array,
                           *, relu) -> Array:
  """Input gradient of the target score with every ReLU's backward replaced (plain JAX).

  Args:
    model: contract model.
    variables: its variables.
    x: `float[N, H, W, C]`.
    target: `int32[N]`.
    relu: the replacement ReLU (e.g. `guided_relu`).

  Returns:
    `float[N, H, W, C]`.
  """
  grad, _ = common.target_gradient(taps.with_ops(model, taps.Ops(relu=relu)), variables, x,
                                   target)
  return grad


_jitted_modified_relu_gradient = xla.jit(modified_relu_gradient,
                                         static_argnames=("model", "relu"))


def _modified_relu_attribution(method: str, model: nn.Module, variables: Any, x: Array,
                               target: Array | int | None) -> Array:
  """The body of every `RELU_RULES` method: checked inputs, then `modified_relu_gradient`."""
  taps.check_contract(model, method)
  x, target, valid = common.prepare(model, variables, x, target)
  grad = _jitted_modified_relu_gradient(model, variables, x, target, relu=RELU_RULES[method])
  return common.nan_where_invalid(grad, valid)


def guided_backprop(model: nn.Module, variables: Any, x: Array,
                    target: Array | int | None) -> Array:
  """Guided backpropagation (Springenberg et al. 2015; Captum `GuidedBackprop`).

  The input gradient of the target score with every ReLU's backward replaced by
  `g_in = 1[x > 0] * max(g_out, 0)` (`guided_relu`).

  Args:
    model: an `xai_jax.models` contract model.
    variables: its variables.
    x: `float32[N, H, W, C]`.
    target: `int[N]`, an int, or None for the predicted class.

  Returns:
    `float32[N, H, W, C]`; all NaN for an image whose traced target is out of
    range (see `xai_jax.explain.common`).

  Raises:
    ValueError: for a non-contract model, bad `x` / `target`, or variables /
      channels that do not fit the model.
  """
  return _modified_relu_attribution("guided_backprop", model, variables, x, target)


def deconvolution(model: nn.Module, variables: Any, x: Array,
                  target: Array | int | None) -> Array:
  """Deconvolution (Zeiler & Fergus 2014; Captum `Deconvolution`).

  The input gradient of the target score with every ReLU's backward replaced by
  `g_in = max(g_out, 0)`, the forward mask ignored (`deconv_relu`).

  Args:
    model: an `xai_jax.models` contract model.
    variables: its variables.
    x: `float32[N, H, W, C]`.
    target: `int[N]`, an int, or None for the predicted class.

  Returns:
    `float32[N, H, W, C]`; all NaN for an image whose traced target is out of
    range (see `xai_jax.explain.common`).

  Raises:
    ValueError: for a non-contract model, bad `x` / `target`, or variables /
      channels that do not fit the model.
  """
  return _modified_relu_attribution("deconvolution", model, variables, x, target)
