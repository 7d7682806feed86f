"""Turning attributions into maps: channel reduction (resizing kernels live here too)."""

import jax
import jax.numpy as jnp

REDUCTIONS = ("sum", "abs_sum", "max_abs")


def to_map(attributions: jax.Array, reduce: str = "sum") -> jax.Array:
  """Reduces attributions over the channel axis to one saliency value per pixel.

  Args:
    attributions: `float[..., H, W, C]` (channels last), e.g. `[N, H, W, C]`.
    reduce: "sum" (signed channel sum, the default of Tjoa & Guan and of
      DeepMaps), "abs_sum" (sum of absolute values, as in Adebayo et al.'s
      grayscale visualisation) or "max_abs" (largest absolute value, as in
      Simonyan et al. 2014).

  Returns:
    `float[..., H, W]`.

  Raises:
    ValueError: for an unknown `reduce` or an input with fewer than 3 axes.
  """
  if attributions.ndim < 3:
    raise ValueError(
        f"attributions must be [..., H, W, C] with a channel axis; got shape {attributions.shape}")
  if reduce == "sum":
    return jnp.sum(attributions, axis=-1)
  if reduce == "abs_sum":
    return jnp.sum(jnp.abs(attributions), axis=-1)
  if reduce == "max_abs":
    return jnp.max(jnp.abs(attributions), axis=-1)
  raise ValueError(f"unknown reduce {reduce!r}; valid: {', '.join(REDUCTIONS)}")
