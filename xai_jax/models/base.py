"""What every layer to the right of `models` needs to know about a classifier.

Explainers and metrics accept either a `flax.linen.Module` (called as
`model.apply(variables, x)`) or any plain function `apply(variables, x) -> logits`.
`as_apply` turns both into the latter so that downstream code has one shape to handle.
"""

from typing import Any, Callable

import flax.linen as nn
import jax

ApplyFn = Callable[[Any, jax.Array], jax.Array]


def as_apply(model: nn.Module | ApplyFn) -> ApplyFn:
  """Returns `apply(variables, x) -> logits` for a Flax module or an apply function.

  Args:
    model: a `flax.linen.Module` whose `__call__(x)` returns logits
      `float32[N, num_classes]`, or a callable `apply(variables, x)` returning them.

  Returns:
    A function `(variables, x: float32[N, H, W, C]) -> float32[N, num_classes]`.

  Raises:
    TypeError: if `model` is neither a Flax module nor callable.
  """
  if isinstance(model, nn.Module):
    return lambda variables, x: model.apply(variables, x)
  if callable(model):
    return model
  raise TypeError(
      f"model must be a flax.linen.Module or a callable apply(variables, x) -> logits; "
      f"got {type(model).__name__}")
