"""Plain gradient methods: the input gradient (Saliency) and input x gradient.

References:
  Simonyan, Vedaldi & Zisserman 2014, "Deep inside convolutional networks",
  https://arxiv.org/abs/1312.6034 (saliency maps).
  Shrikumar et al. 2016, "Not just a black box", https://arxiv.org/abs/1605.01713
  (gradient x input).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from xai_jax.explain import common


def gradient(model: common.Model, variables: common.PyTree, x: jax.Array,
             target: jax.Array | None = None, *,
             abs: bool = False) -> jax.Array:  # pylint: disable=redefined-builtin
  """Gradient of the target logit with respect to the input.

  Captum's `Saliency(model).attribute(x, target)` is `gradient(..., abs=True)`
  (Captum's default takes the absolute value; `abs=False` is the signed
  gradient, Quantus's "Gradient"). No channel reduction: use
  `postprocess.to_map` for a map.

  Args:
    model: Flax module or `apply(variables, x) -> logits` callable.
    variables: model variables.
    x: `float32[N, H, W, C]`.
    target: `int32[N]` class per image; None -> predicted class.
    abs: return `|gradient|` (Captum Saliency) instead of the signed gradient.

  Returns:
    `float32[N, H, W, C]`: d logits[n, target[n]] / d x[n]; all NaN for an
    image whose traced target is out of range (see `common`).

  Raises:
    ValueError: on a malformed `x` or `target`, or variables / channels that
      do not fit the model (see `common.prepare`).
  """
  x, target, valid = common.prepare(model, variables, x, target)
  grad, _ = common.jit_target_gradient(model, variables, x, target)
  return common.nan_where_invalid(jnp.abs(grad) if abs else grad, valid)


def input_x_gradient(model: common.Model, variables: common.PyTree, x: jax.Array,
                     target: jax.Array | None = None) -> jax.Array:
  """Input times gradient, `x * d logits[n, target[n]] / d x` (Captum InputXGradient).

  Args:
    model: Flax module or `apply(variables, x) -> logits` callable.
    variables: model variables.
    x: `float32[N, H, W, C]`.
    target: `int32[N]` class per image; None -> predicted class.

  Returns:
    `float32[N, H, W, C]`; all NaN for an image whose traced target is out of range.

  Raises:
    ValueError: on a malformed `x` or `target`, or variables / channels that
      do not fit the model (see `common.prepare`).
  """
  x, target, valid = common.prepare(model, variables, x, target)
  grad, _ = common.jit_target_gradient(model, variables, x, target)
  return common.nan_where_invalid(x * grad, valid)
