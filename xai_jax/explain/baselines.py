"""Model-independent reference "explanations" used as baselines in the metrics.

A saliency method should beat both: a uniformly random map, and an edge
detector that looks only at the image (Adebayo et al. 2018, "Sanity checks for
saliency maps", https://arxiv.org/abs/1810.03292, show that several methods are
close to the latter).

Both take the common explainer signature but use neither the model, its
variables nor the target: the target is not validated (any value, traced or
concrete, in range or not, gives the same map) and never turns a map into NaN,
unlike the model-based explainers (see `xai_jax.explain.common`). Only `x`
(and `random_map`'s key) are checked, from shapes, so both run under
`jax.jit` and `jax.vmap`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from xai_jax import xla
from xai_jax.explain import common, sampling

_SMOOTH = jnp.array([1.0, 2.0, 1.0])
_DERIV = jnp.array([-1.0, 0.0, 1.0])


def random_map(model: common.Model | None, variables: common.PyTree, x: jax.Array,
               target: jax.Array | None = None, *, key: jax.Array) -> jax.Array:
  """Uniform random map in [0, 1), independent of model, image and target.

  Args:
    model: ignored (kept for the common explainer signature).
    variables: ignored.
    x: `float32[N, H, W, C]`, only its shape is used.
    target: ignored (not validated; see the module docstring).
    key: `jax.random.key(seed)` (or a legacy `uint32[2]` key), or one key per image
      `key[N]`: image i's map is then `uniform(key[i], (1, H, W))[0]`, its map when
      explained alone (`sampling.check_keys`).

  Returns:
    `float32[N, H, W]`.

  Raises:
    ValueError: on a malformed `x`, or a `key` that is not a PRNG key (e.g. an
      integer seed).
  """
  del model, variables, target
  x = common.check_images(x)
  key, per_image = sampling.check_keys(key, x.shape[0])
  return sampling.draw_batch(lambda k, n: jax.random.uniform(k, (n,) + x.shape[1:3], jnp.float32),
                             key, x.shape[0], per_image=per_image)


def _sobel(img: jax.Array, axis: int) -> jax.Array:
  """scipy.ndimage.sobel(img, axis) on `[N, H, W, C]` along H (1) or W (2), 'reflect' borders."""
  padded = jnp.pad(img, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="symmetric")
  h, w = img.shape[1], img.shape[2]
  kh = _DERIV if axis == 1 else _SMOOTH
  kw = _SMOOTH if axis == 1 else _DERIV
  out = jnp.zeros_like(img)
  for i in range(3):
    for j in range(3):
      out = out + kh[i] * kw[j] * padded[:, i:i + h, j:j + w, :]
  return out


@xla.jit
def _edge(x):
  magnitude = jnp.hypot(_sobel(x, 1), _sobel(x, 2))
  return jnp.mean(magnitude, axis=-1)


def edge(model: common.Model | None, variables: common.PyTree, x: jax.Array,
         target: jax.Array | None = None) -> jax.Array:
  """Sobel gradient magnitude of the image, averaged over channels (model-independent).

  Per channel `sqrt(S_h^2 + S_w^2)` with the 3x3 Sobel filters of
  `scipy.ndimage.sobel` (derivative [-1, 0, 1] times smoothing [1, 2, 1],
  'reflect' = half-sample symmetric borders), then the channel mean.

  Args:
    model: ignored (kept for the common explainer signature).
    variables: ignored.
    x: `float32[N, H, W, C]`.
    target: ignored (not validated; see the module docstring).

  Returns:
    `float32[N, H, W]`.

  Raises:
    ValueError: on a malformed `x`.
  """
  del model, variables, target
  return _edge(common.check_images(x))
