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
"""

from __future__ import annotations

import functools
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

GUIDED_OPS = taps.Ops(relu=guided_relu)
DECONV_OPS = taps.Ops(relu=deconv_relu)


@functools.partial(xla.jit, static_argnames=("model",))
def _modified_gradient(model, variables, x, target):
  grad, _ = common.target_gradient(model, variables, x, target)
  return grad


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


def guided_backprop(model: nn.Module, variables: Any, x: Array,
                    target: Array | int | None) -> Array:
  """Guided backpropagation (Captum `GuidedBackprop`).

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
  common.check_contract(model, "guided_backprop")
  x, target, valid = common.prepare(model, variables, x, target)
  grad = _modified_gradient(taps.with_ops(model, GUIDED_OPS), variables, x, target)
  return common.nan_where_invalid(grad, valid)


def deconvolution(model: nn.Module, variables: Any, x: Array,
                  target: Array | int | None) -> Array:
  """Deconvolution (Captum `Deconvolution`).

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
  common.check_contract(model, "deconvolution")
  x, target, valid = common.prepare(model, variables, x, target)
  grad = _modified_gradient(taps.with_ops(model, DECONV_OPS), variables, x, target)
  return common.nan_where_invalid(grad, valid)
