"""PRNG key checks shared by every layer that takes an explicit `key`.

Randomness in xai_jax always comes through an explicit key argument. JAX has two kinds:
typed keys (`jax.random.key(seed)`, dtype `key<impl>`, shape `()`) and legacy raw keys
(`jax.random.PRNGKey(seed)`, `uint32[2]` for the default threefry implementation). Both are
accepted. A plain integer seed is not: passing `key=0` is a common slip that JAX reports
deep inside `jax.random` (or silently treats as something else), so it is rejected here at
the entry with a message naming the argument.

This module imports nothing from the rest of xai_jax, so any layer may use it.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import numpy as np


@functools.lru_cache(maxsize=None)
def _legacy_key_shape() -> tuple[int, ...]:
  """Shape of a raw key of the default PRNG implementation (`(2,)` for threefry)."""
  return tuple(jax.eval_shape(lambda: jax.random.PRNGKey(0)).shape)


def _describe(value: Any) -> str:
  if value is None:
    return "None"
  if isinstance(value, (bool, int, float, np.generic)):
    return f"{type(value).__name__} {value}"
  dtype, shape = getattr(value, "dtype", None), getattr(value, "shape", None)
  if dtype is not None and shape is not None:
    return f"{dtype}{list(shape)} {type(value).__name__}"
  return f"{type(value).__name__} {value!r}"


def check_key(key: Any, *, name: str = "key") -> Any:
  """Checks that `key` is one PRNG key and returns it unchanged.

  Works on concrete and traced keys alike (only dtype and shape are inspected), so it may
  be called inside `jax.jit`/`jax.vmap`.

  Args:
    key: a typed key `jax.random.key(seed)` (shape `()`) or a legacy raw key
      `jax.random.PRNGKey(seed)` (`uint32[2]` for the default implementation).
    name: the argument's name, used in the error message.

  Returns:
    `key`, unchanged.

  Raises:
    ValueError: for a Python or NumPy integer seed, None, or an array that is not a single
      key (a float/int array, a wrongly shaped uint32 array, a batch of typed keys). The
      message names the argument and what was received.
  """
  hint = f"{name} must be a jax.random.key(...) (or a legacy jax.random.PRNGKey(...))"
  if key is None or isinstance(key, (bool, int, float, np.generic)):
    raise ValueError(f"{hint}; got {_describe(key)}. Wrap an integer seed: "
                     f"{name}=jax.random.key(seed)")
  dtype, shape = getattr(key, "dtype", None), getattr(key, "shape", None)
  if dtype is None or shape is None:
    raise ValueError(f"{hint}; got {_describe(key)}")
  if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    if tuple(shape) != ():
      raise ValueError(f"{hint}: a single key of shape (); got a key array of shape "
                       f"{tuple(shape)} (split keys are passed one at a time)")
    return key
  if np.dtype(dtype) == np.uint32 and tuple(shape) == _legacy_key_shape():
    return key
  raise ValueError(f"{hint}; got {_describe(key)} (a raw key is "
                   f"uint32{list(_legacy_key_shape())})")
