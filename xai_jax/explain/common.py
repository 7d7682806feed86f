"""Shared plumbing for explainers: targets, input validation, target-score gradients, step chunking.

Conventions (Captum's, reference-semantics A.0):
  * The score explained for a batch is `sum_n logits[n, target[n]]` on raw
    logits (no softmax). Its gradient with respect to `x` gives every image its
    own input gradient in ONE backward pass of the batch (rather than
    `vmap(grad)`, which is slower on XLA:CPU; see performance-notes).
  * `x` is `float32[N, H, W, C]` (channels last); `target` is `int32[N]`.
    `target=None` means "the predicted class" (`predicted_class`).

Step chunking (integrated gradients, SmoothGrad, GradientShap, ...): a method
with S steps per image evaluates them `chunk` steps at a time, so at most
`chunk * N` rows go through the model at once and memory stays bounded. Two
loop forms are provided (`loop=`):
  * "python": a Python loop over chunks; each chunk builds its rows op by op
    and calls one shared jitted gradient of the model (`jit_target_gradient`),
    so every method with the same rows per call reuses one compilation. On
    XLA:CPU a gradient inside `lax.map`/`scan` measured up to 3.5x slower than
    the same jitted chunk called from Python (performance-notes). Default on
    CPU. Under an outer `jax.jit` the loop is unrolled into the trace.
  * "lax": one jitted call that `lax.scan`s over all full chunks. Default on
    accelerators, where per-call dispatch latency matters more.
Both give the same sums up to float summation order. `benchmarks/explainers.py`
times both forms.

Memory: the default chunk keeps about 32 images of 224x224 in flight; VGG16
integrated gradients on a batch of 8 at 224x224 (4 steps x 8 images per call)
peaked at 7.0 GiB RSS on CPU, independent of the number of steps.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from xai_jax import xla
from xai_jax.models.base import ApplyFn, as_apply, shape_cached

PyTree = Any
Model = nn.Module | ApplyFn

LOOPS = ("auto", "python", "lax")

# Default chunk size (rows = chunk * N) is chosen so that about this many input
# pixels (rows * H * W) go through the model at once: 32 images at 224x224
# (VGG16 IG then peaks near 6 GiB on CPU) or 384 at 64x64.
DEFAULT_PIXELS_PER_CHUNK = 32 * 224 * 224


# ---------------------------------------------------------------------------
# Validation.
# ---------------------------------------------------------------------------


def _is_tracer(a) -> bool:
  return isinstance(a, jax.core.Tracer)


def is_concrete(a) -> bool:
  """True unless `a` is traced (inside jit/vmap), i.e. its values can be checked."""
  return not _is_tracer(a)


def check_images(x, *, name: str = "x") -> jax.Array:
  """Validates and returns an image batch as a float array `[N, H, W, C]`.

  Args:
    x: array-like, `float[N, H, W, C]`.
    name: argument name used in error messages.

  Returns:
    `x` as a `jax.Array` (float dtype kept; integers are rejected).

  Raises:
    ValueError: if `x` is not 4-D, not floating point, empty, or (when
      concrete) contains NaN or infinity.
  """
  if not _is_tracer(x):
    x = jnp.asarray(x)
  if x.ndim != 4:
    raise ValueError(f"{name} must be float[N, H, W, C] (channels last); got shape {x.shape}")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"{name} must be a floating point array; got dtype {x.dtype}")
  if x.shape[0] == 0:
    raise ValueError(f"{name} is an empty batch (shape {x.shape})")
  if not _is_tracer(x) and not bool(jnp.all(jnp.isfinite(x))):
    raise ValueError(f"{name} contains NaN or infinite values")
  return x


def num_classes(model: Model, variables: PyTree, x: jax.Array) -> int:
  """Number of logits of `model` on `x`, from shapes only (no FLOPs; cached per shapes)."""
  return _num_classes(model, variables, x)


@shape_cached
def _num_classes(model, variables, x) -> int:
  apply = as_apply(model)
  out = jax.eval_shape(apply, variables, jax.ShapeDtypeStruct(x.shape, x.dtype))
  if len(out.shape) != 2 or out.shape[0] != x.shape[0]:
    raise ValueError(f"model must return logits [N, num_classes] for N={x.shape[0]}; "
                     f"got shape {out.shape}")
  return int(out.shape[1])


@functools.partial(xla.jit, static_argnames=("model",))
def _predicted_class(model, variables, x):
  return jnp.argmax(as_apply(model)(variables, x), axis=-1).astype(jnp.int32)


def predicted_class(model: Model, variables: PyTree, x: jax.Array) -> jax.Array:
  """Arg-max class of the raw logits.

  Args:
    model: Flax module or `apply(variables, x) -> logits` callable.
    variables: model variables.
    x: `float32[N, H, W, C]`.

  Returns:
    `int32[N]`, the first maximal logit's index (like `torch.argmax`).
  """
  x = check_images(x)
  return _predicted_class(model, variables, x)


def check_target(target, n: int, classes: int | None = None) -> jax.Array:
  """Validates a target vector.

  Args:
    target: `int[N]` class indices, or a Python int broadcast to all images.
    n: batch size N.
    classes: number of logits; when given (and `target` is concrete) indices
      must lie in `[0, classes)`.

  Returns:
    `int32[N]`.

  Raises:
    ValueError: on a wrong shape, a non-integer dtype or an index out of range.
  """
  if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
    target = jnp.full((n,), int(target), jnp.int32)
  if not _is_tracer(target):
    target = jnp.asarray(target)
  if not jnp.issubdtype(target.dtype, jnp.integer):
    raise ValueError(f"target must be an integer array [N]; got dtype {target.dtype}")
  if target.shape != (n,):
    raise ValueError(f"target must have shape ({n},) (one class per image); got {target.shape}")
  if classes is not None and not _is_tracer(target):
    lo, hi = int(jnp.min(target)), int(jnp.max(target))
    if lo < 0 or hi >= classes:
      raise ValueError(f"target index out of range: must lie in [0, {classes}); "
                       f"got values in [{lo}, {hi}]")
  return target.astype(jnp.int32)


def prepare(model: Model, variables: PyTree, x, target) -> tuple[jax.Array, jax.Array]:
  """Validates `(x, target)` for an explainer; `target=None` -> predicted class.

  Returns:
    `(x float[N, H, W, C], target int32[N])`.

  Raises:
    ValueError: see `check_images` and `check_target`.
  """
  x = check_images(x)
  if target is None:
    return x, _predicted_class(model, variables, x)
  return x, check_target(target, x.shape[0], num_classes(model, variables, x))


def check_like(a, x: jax.Array, name: str) -> jax.Array:
  """Broadcasts a scalar / `[1, ...]` / `[N, ...]` array (e.g. a baseline) to `x`'s shape.

  Raises:
    ValueError: if `a` does not broadcast to `x.shape` or is not finite.
  """
  if a is None:
    return jnp.zeros_like(x)
  if not _is_tracer(a):
    a = jnp.asarray(a, x.dtype)
  try:
    a = jnp.broadcast_to(a, x.shape).astype(x.dtype)
  except ValueError as e:
    raise ValueError(f"{name} of shape {jnp.shape(a)} does not broadcast to x's shape "
                     f"{x.shape}") from e
  if not _is_tracer(a) and not bool(jnp.all(jnp.isfinite(a))):
    raise ValueError(f"{name} contains NaN or infinite values")
  return a


# ---------------------------------------------------------------------------
# Target scores and their gradients.
# ---------------------------------------------------------------------------


def target_score_fn(model: Model, variables: PyTree,
                    target: jax.Array) -> Callable[[jax.Array], tuple[jax.Array, jax.Array]]:
  """Returns `score(x) -> (sum_n logits[n, target[n]], logits)` for `jax.grad(has_aux=True)`.

  `target` may be shorter than `x`'s batch by an integer factor: it is then
  tiled (step-major, Captum's order), so a stack of S copies of the batch uses
  `tile(target, S)`.
  """
  apply = as_apply(model)

  def score(x):
    logits = apply(variables, x)
    reps = x.shape[0] // target.shape[0]
    t = jnp.tile(target, reps) if reps != 1 else target
    picked = jnp.take_along_axis(logits, t[:, None], axis=1)[:, 0]
    return jnp.sum(picked), logits

  return score


def target_gradient(model: Model, variables: PyTree, x: jax.Array,
                    target: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Gradient of `sum_n logits[n, target[n]]` w.r.t. `x` (plain JAX, jit/vmap friendly).

  Args:
    model: Flax module or apply function.
    variables: model variables.
    x: `float[M, H, W, C]`; M may be a multiple k*N of `target`'s length
      (k step-major copies of a batch).
    target: `int32[N]`.

  Returns:
    `(grad float[M, H, W, C], logits float[M, K])`.
  """
  grad, logits = jax.grad(target_score_fn(model, variables, target), has_aux=True)(x)
  return grad, logits


def target_logits(model: Model, variables: PyTree, x: jax.Array,
                  target: jax.Array) -> jax.Array:
  """`logits[n, target[n]]`, `float[N]` (plain JAX)."""
  logits = as_apply(model)(variables, x)
  return jnp.take_along_axis(logits, target[:, None], axis=1)[:, 0]


@functools.partial(xla.jit, static_argnames=("model",))
def jit_target_gradient(model, variables, x, target):
  """Jitted `target_gradient` (one compilation per model and shapes)."""
  return target_gradient(model, variables, x, target)


@functools.partial(xla.jit, static_argnames=("model",))
def jit_target_logits(model, variables, x, target):
  """Jitted `target_logits`."""
  return target_logits(model, variables, x, target)


# ---------------------------------------------------------------------------
# Step chunking.
# ---------------------------------------------------------------------------


def default_loop() -> str:
  """"python" on the CPU backend, "lax" elsewhere (see the module docstring)."""
  return "python" if jax.default_backend() == "cpu" else "lax"


def resolve_loop(loop: str) -> str:
  if loop not in LOOPS:
    raise ValueError(f"unknown loop {loop!r}; valid: {', '.join(LOOPS)}")
  return default_loop() if loop == "auto" else loop


def default_chunk(steps: int, x_shape) -> int:
  """Steps per chunk so that about `DEFAULT_PIXELS_PER_CHUNK` pixels are in flight."""
  n, h, w = x_shape[0], x_shape[1], x_shape[2]
  rows = max(1, DEFAULT_PIXELS_PER_CHUNK // (h * w))
  return int(max(1, min(steps, rows // n)))


def resolve_chunk(chunk: int | None, steps: int, x_shape) -> int:
  """Validates `chunk` (None -> `default_chunk`), clipped to `steps`."""
  if chunk is None:
    return default_chunk(steps, x_shape)
  if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
    raise ValueError(f"chunk must be a positive int (steps per model call) or None; got {chunk!r}")
  return int(min(chunk, steps))


def sum_over_chunks(body: Callable[[PyTree, PyTree], PyTree], operands: PyTree,
                    chunked: PyTree) -> PyTree:
  """Inside jit: `sum_i body(operands, chunked[i])` over the leading (chunk) axis.

  One chunk is called directly (no loop); several are `lax.scan`ned, with a
  running sum as carry so only one chunk's intermediates are alive.

  Args:
    body: `(operands, chunk_args) -> pytree of arrays`, the partial sum of one
      chunk (plain JAX).
    operands: pytree shared by all chunks (e.g. x, baseline, target).
    chunked: pytree of arrays `[num_chunks, chunk, ...]`.

  Returns:
    The pytree sum.
  """
  num = jax.tree_util.tree_leaves(chunked)[0].shape[0]
  first = body(operands, jax.tree_util.tree_map(lambda a: a[0], chunked))
  if num == 1:
    return first

  def step(carry, args):
    return jax.tree_util.tree_map(jnp.add, carry, body(operands, args)), None

  rest = jax.tree_util.tree_map(lambda a: a[1:], chunked)
  total, _ = jax.lax.scan(step, first, rest)
  return total


def run_chunked(unit: Callable[[PyTree, PyTree], PyTree], operands: PyTree, step_args: PyTree,
                *, chunk: int, loop: str = "auto",
                eager_body: Callable[[PyTree, PyTree], PyTree] | None = None) -> PyTree:
  """Sums a per-step computation over S steps, `chunk` steps per model call.

  Args:
    unit: a jitted function `(operands, chunked) -> pytree`, where `chunked`
      has leaves `[num_chunks, chunk, ...]`; typically
      `functools.partial(jitted_fn, model=model, ...)` of a function whose body
      is `sum_over_chunks(body, operands, chunked)`.
    operands: pytree passed unchanged to every call.
    step_args: pytree with leaves `[S, ...]` (per-step values: nodes, weights,
      noise, ...).
    chunk: steps per model call (>= 1).
    loop: "python" (one call per chunk), "lax" (one call scanning all full
      chunks) or "auto" (`default_loop()`). A remainder of `S % chunk` steps
      is one more call with a smaller chunk in both forms.
    eager_body: optional `(operands, chunk_args) -> pytree` (leaves
      `[chunk, ...]`) used by the "python" form instead of `unit`: the same
      maths run op by op around a shared jitted model call (e.g.
      `jit_target_gradient`), so that every method with the same number of
      rows per call reuses one compiled gradient.

  Returns:
    The sum over all steps of the per-step pytree.
  """
  loop = resolve_loop(loop)
  leaves = jax.tree_util.tree_leaves(step_args)
  steps = leaves[0].shape[0]
  full, rest = divmod(steps, chunk)
  total = None

  def add(a, b):
    return b if a is None else jax.tree_util.tree_map(jnp.add, a, b)

  def call(chunked):
    if loop == "python" and eager_body is not None:
      return eager_body(operands, jax.tree_util.tree_map(lambda a: a[0], chunked))
    return unit(operands, chunked)

  def piece(lo, num, size):
    return jax.tree_util.tree_map(
        lambda a: a[lo:lo + num * size].reshape((num, size) + a.shape[1:]), step_args)

  if full:
    if loop == "lax":
      total = add(total, unit(operands, piece(0, full, chunk)))
    else:
      for i in range(full):
        total = add(total, call(piece(i * chunk, 1, chunk)))
  if rest:
    total = add(total, call(piece(full * chunk, 1, rest)))
  return total
