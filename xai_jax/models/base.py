"""What every layer to the right of `models` needs to know about a classifier.

Explainers and metrics accept either a `flax.linen.Module` (called as
`model.apply(variables, x)`) or any plain function `apply(variables, x) -> logits`.
`as_apply` turns both into the latter so that downstream code has one shape to handle.
"""

import collections
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

ApplyFn = Callable[[Any, jax.Array], jax.Array]

_SHAPE_CACHE_SIZE = 64


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


def shape_cached(fn: Callable[..., Any]) -> Callable[..., Any]:
  """Memoises `fn(model, variables, x, *args)` on the model, shapes, dtypes and `args`.

  For functions whose result depends only on shapes (site names, probe shapes,
  the number of logits), computed with `jax.eval_shape`. Tracing a ResNet50 in
  Python takes tens of milliseconds, which showed up in per-call timings of
  Grad-CAM. `x` may be an array, a tracer or a `jax.ShapeDtypeStruct`. An
  unhashable model or argument is computed without caching. The cache keeps
  the `_SHAPE_CACHE_SIZE` most recent entries (a model rebuilt per call, e.g.
  with per-call ops, must not grow it without bound). Returned values are
  shared between calls: callers must not mutate them.
  """
  cache: collections.OrderedDict = collections.OrderedDict()

  @functools.wraps(fn)
  def cached(model, variables, x, *args):
    leaves, treedef = jax.tree_util.tree_flatten(variables)
    key = (model, treedef, tuple((jnp.shape(a), jnp.result_type(a)) for a in leaves),
           tuple(x.shape), jnp.dtype(x.dtype), args)
    try:
      hash(key)
    except TypeError:
      return fn(model, variables, x, *args)
    if key in cache:
      cache.move_to_end(key)
    else:
      cache[key] = fn(model, variables, x, *args)
      if len(cache) > _SHAPE_CACHE_SIZE:
        cache.popitem(last=False)
    return cache[key]

  cached.cache_clear = cache.clear
  return cached
