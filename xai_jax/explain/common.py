"""Shared plumbing for explainers: targets, input validation, target-score gradients, step chunking.

Conventions (Captum's, reference-semantics A.0):
  * The score explained for a batch is `sum_n logits[n, target[n]]` on raw
    logits (no softmax). Its gradient with respect to `x` gives every image its
    own input gradient in ONE backward pass of the batch (rather than
    `vmap(grad)`, which is slower on XLA:CPU; see performance-notes).
  * `x` is `float32[N, H, W, C]` (channels last); `target` is `int32[N]`.
    `target=None` means "the predicted class" (`predicted_class`).

Under `jax.jit` and `jax.vmap` (any of x, target, variables, baselines and
key traced or closed over): every entry check runs from shapes and dtypes
(`jax.eval_shape`, cached per shapes), so a wrong channel count, another
model's variables, an integer seed as `key` or a malformed target raise a
ValueError at trace time. Checks that need values (finite inputs, target
indices in range) run only on concrete arguments. A traced target cannot be
checked, so an out-of-range index gives NaN for that image's whole result
(`pick_target`, `nan_where_invalid`) rather than a plausible-looking map.

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
import math
from typing import Any, Callable, NoReturn

import flax
import flax.errors
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from xai_jax import keys, xla
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
#
# Every check works from shapes and dtypes alone, so it runs under `jax.jit` and
# `jax.vmap` too; checks that need values (finite pixels, target indices in
# range) run only on concrete arguments. Inside a trace even `jnp` operations on
# a closed-over (concrete) array are staged, so those checks are evaluated with
# `jax.ensure_compile_time_eval` (or NumPy) instead of forcing a tracer.
# ---------------------------------------------------------------------------


def _is_tracer(a) -> bool:
  return isinstance(a, jax.core.Tracer)


def is_concrete(a) -> bool:
  """True unless `a` is traced (inside jit/vmap), i.e. its values can be checked."""
  return not _is_tracer(a)


def all_finite(a) -> bool:
  """`all(isfinite(a))` for a concrete array, evaluated eagerly even inside a trace."""
  with jax.ensure_compile_time_eval():
    return bool(jnp.all(jnp.isfinite(jnp.asarray(a))))


def concrete_array(a, dtype=None) -> jax.Array:
  """`jnp.asarray(a, dtype)` that stays a concrete array (not a staged constant) under jit."""
  with jax.ensure_compile_time_eval():
    return jnp.asarray(a, dtype)


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
  concrete = is_concrete(x)
  if concrete:
    x = concrete_array(x)
  if x.ndim != 4:
    raise ValueError(f"{name} must be float[N, H, W, C] (channels last); got shape {x.shape}")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"{name} must be a floating point array; got dtype {x.dtype}")
  if x.shape[0] == 0:
    raise ValueError(f"{name} is an empty batch (shape {x.shape})")
  if concrete and not all_finite(x):
    raise ValueError(f"{name} contains NaN or infinite values")
  return x


def num_classes(model: Model, variables: PyTree, x: jax.Array) -> int:
  """Number of logits of `model` on `x`, from shapes only (no FLOPs; cached per shapes).

  Also the entry check that `variables` fit `model` and `x` (see
  `check_model_inputs`).

  Raises:
    ValueError: if the model cannot run on `x` with `variables`, or does not
      return logits `[N, num_classes]`.
  """
  return _num_classes(model, variables, x)


# Errors a model raises on inputs or variables of the wrong shape: flax's scope
# errors, lax shape errors (TypeError), missing entries in a variables dict.
_MODEL_ERRORS = (TypeError, ValueError, KeyError, IndexError, flax.errors.FlaxError)


@shape_cached
def _num_classes(model, variables, x) -> int:
  apply = as_apply(model)
  try:
    out = jax.eval_shape(apply, variables, jax.ShapeDtypeStruct(x.shape, x.dtype))
  except _MODEL_ERRORS as error:
    _raise_model_mismatch(model, variables, x, error)
  if len(out.shape) != 2 or out.shape[0] != x.shape[0]:
    raise ValueError(f"model must return logits [N, num_classes] for N={x.shape[0]}; "
                     f"got shape {out.shape}")
  return int(out.shape[1])


def check_model_inputs(model: Model, variables: PyTree, x: jax.Array) -> None:
  """Checks from shapes only (`jax.eval_shape`, cached) that `model` runs on `x` with `variables`.

  A flax Module whose variables do not fit is diagnosed against the shapes
  `model.init` would create for `x`: when some other channel count would fit,
  the error names `x` and the expected channels; otherwise it names
  `variables` and the first parameter (in sorted path order) whose path or
  shape differs.

  Raises:
    ValueError: as described; a plain apply function that fails gets the
      underlying error's message.
  """
  _num_classes(model, variables, x)


def _flat_shapes(tree) -> dict[str, tuple[int, ...]]:
  flat = traverse_util.flatten_dict(flax.core.unfreeze(tree), sep="/")
  return {k: tuple(jnp.shape(v)) for k, v in flat.items()}


def _init_shapes(model: nn.Module, shape: tuple[int, ...], dtype) -> dict | None:
  """Collection -> {path: shape} that `model.init` creates for `shape` inputs (None on failure)."""
  try:
    out = jax.eval_shape(lambda a: model.init(jax.random.key(0), a),
                         jax.ShapeDtypeStruct(shape, dtype))
  except _MODEL_ERRORS:
    return None
  collections = sorted(dict(out), key=lambda name: (name != "params", name))  # params first
  return {name: _flat_shapes(dict(out)[name]) for name in collections}


def _given_shapes(variables, collections) -> dict:
  try:
    variables = dict(variables)
  except (TypeError, ValueError):
    return {}
  return {name: _flat_shapes(variables[name]) if name in variables else {}
          for name in collections}


def _first_mismatch(expected: dict, given: dict) -> str | None:
  """The first differing entry, in sorted path order (None if the shapes agree)."""
  for name, want in expected.items():
    got = given.get(name, {})
    for path in sorted(set(want) | set(got)):
      if path not in got:
        return f"{name}/{path} is missing (the model expects shape {want[path]})"
      if path not in want:
        return f"{name}/{path} (shape {got[path]}) is not a parameter of this model"
      if got[path] != want[path]:
        return f"{name}/{path} has shape {got[path]}, the model expects {want[path]}"
  return None


def _channel_candidates(expected: dict, given: dict, channels: int) -> list[int]:
  """Channel counts that would explain the size ratio of a mismatching parameter."""
  out = []
  for name, want in expected.items():
    for path, shape in want.items():
      got = given.get(name, {}).get(path)
      if got is None or got == shape or len(got) != len(shape):
        continue
      scaled = channels * math.prod(got)
      if scaled % max(math.prod(shape), 1) == 0:
        cand = scaled // max(math.prod(shape), 1)
        if 0 < cand != channels and cand not in out:
          out.append(cand)
      if len(out) >= 3:
        return out
  return out


def _raise_model_mismatch(model, variables, x, error: Exception) -> NoReturn:
  shape = tuple(x.shape)
  detail = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
  if not isinstance(model, nn.Module):
    raise ValueError(f"model cannot be applied to x of shape {shape} with these variables "
                     f"({detail})") from error
  name = type(model).__name__
  expected = _init_shapes(model, shape, x.dtype)
  if expected is not None:
    given = _given_shapes(variables, expected)
    mismatch = _first_mismatch(expected, given)
    if mismatch is not None:
      for channels in _channel_candidates(expected, given, shape[-1]):
        if _init_shapes(model, shape[:-1] + (channels,), x.dtype) == given:
          raise ValueError(
              f"x has {shape[-1]} channels but {name}'s variables expect {channels}: x must be "
              f"float[N, H, W, {channels}]; got shape {shape}") from error
      raise ValueError(f"variables do not fit {name} on x of shape {shape}: {mismatch} "
                       f"(variables of another model, or of other input shape or "
                       f"number of classes?)") from error
  raise ValueError(f"{name} cannot be applied to x of shape {shape} with these variables "
                   f"({detail})") from error


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
    classes: number of logits; when given and `target` is concrete, indices
      must lie in `[0, classes)`. A traced target cannot be checked here: the
      explainers turn the maps of its out-of-range entries into NaN
      (`nan_where_invalid`).

  Returns:
    `int32[N]`.

  Raises:
    ValueError: on a wrong shape, a non-integer dtype or an index out of range.
  """
  if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
    target = np.full((n,), int(target), np.int32)
  concrete = is_concrete(target)
  if concrete:
    target = concrete_array(target)
  if not jnp.issubdtype(target.dtype, jnp.integer):
    raise ValueError(f"target must be an integer array [N]; got dtype {target.dtype}")
  if target.shape != (n,):
    raise ValueError(f"target must have shape ({n},) (one class per image); got {target.shape}")
  if classes is not None and concrete:
    values = np.asarray(target)
    lo, hi = int(values.min()), int(values.max())
    if lo < 0 or hi >= classes:
      raise ValueError(f"target index out of range: must lie in [0, {classes}); "
                       f"got values in [{lo}, {hi}]")
  if concrete:
    return concrete_array(target, jnp.int32)
  return target.astype(jnp.int32)


def prepare(model: Model, variables: PyTree, x,
            target) -> tuple[jax.Array, jax.Array, jax.Array | None]:
  """Validates `(variables, x, target)` for an explainer; `target=None` -> predicted class.

  Shape checks (`check_images`, `check_model_inputs`, the target's shape and
  dtype) always run; value checks only on concrete arguments.

  Returns:
    `(x float[N, H, W, C], target int32[N], valid)`: `valid` is None when the
    target is known to be in range (concrete and checked, or predicted), and
    `bool[N]` for a traced target; pass it with the result to
    `nan_where_invalid`.

  Raises:
    ValueError: see `check_images`, `check_model_inputs` and `check_target`.
  """
  x = check_images(x)
  classes = num_classes(model, variables, x)
  if target is None:
    return x, _predicted_class(model, variables, x), None
  concrete = is_concrete(target)
  target = check_target(target, x.shape[0], classes)
  valid = None if concrete else (target >= 0) & (target < classes)
  return x, target, valid


def nan_where_invalid(out: PyTree, valid: jax.Array | None) -> PyTree:
  """Sets every leaf's rows `n` with `valid[n] == False` to NaN (no-op for `valid=None`).

  Explainers call this on their result so that an out-of-range target that
  could not be checked (traced under jit/vmap) gives an all-NaN map for its
  image instead of a plausible-looking one (a gather with an out-of-range
  index has a zero gradient). Leaves are `[N, ...]` float arrays.
  """
  if valid is None:
    return out

  def mask(a):
    rows = valid.reshape(valid.shape + (1,) * (a.ndim - 1))
    return jnp.where(rows, a, jnp.asarray(jnp.nan, a.dtype))

  return jax.tree_util.tree_map(mask, out)


def check_like(a, x: jax.Array, name: str) -> jax.Array:
  """Broadcasts a scalar / `[1, ...]` / `[N, ...]` array (e.g. a baseline) to `x`'s shape.

  Raises:
    ValueError: if `a` does not broadcast to `x.shape` or (when concrete) is
      not finite.
  """
  if a is None:
    return jnp.zeros_like(x)
  if is_concrete(a):
    a = concrete_array(a, x.dtype)
    if not all_finite(a):
      raise ValueError(f"{name} contains NaN or infinite values")
  try:
    a = jnp.broadcast_to(a, x.shape).astype(x.dtype)
  except ValueError as e:
    raise ValueError(f"{name} of shape {jnp.shape(a)} does not broadcast to x's shape "
                     f"{x.shape}") from e
  return a


def check_positive_int(value, name: str) -> int:
  """Returns `value` as an int if it is a positive Python or NumPy integer (not a bool).

  Raises:
    ValueError: naming `name` and the value received.
  """
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{name} must be a positive int; got {value!r}")
  return int(value)


def check_key(key, *, name: str = "key"):
  """`xai_jax.keys.check_key`: a typed `jax.random.key` or a legacy `uint32[2]` key.

  Shapes and dtypes only, so traced keys (jit, vmap over keys) pass.

  Raises:
    ValueError: for an integer seed, None or an array that is not one key.
  """
  return keys.check_key(key, name=name)


# ---------------------------------------------------------------------------
# Target scores and their gradients.
# ---------------------------------------------------------------------------


def pick_target(logits: jax.Array, target: jax.Array) -> jax.Array:
  """`logits[n, target[n]]`, `float[N]`; NaN (NaN gradient too) where `target[n]` is out of range.

  A plain gather would wrap negative indices or fill out-of-range ones with a
  value whose gradient is zero, which makes a traced bad target look like a
  flat explanation; multiplying by NaN instead makes it visible in the score
  and in every gradient taken from it. In-range targets are multiplied by
  exactly 1.

  Args:
    logits: `float[N, K]`.
    target: `int[N]`.

  Returns:
    `float[N]`.
  """
  k = logits.shape[-1]
  valid = (target >= 0) & (target < k)
  picked = jnp.take_along_axis(logits, jnp.clip(target, 0, k - 1)[:, None], axis=1)[:, 0]
  return picked * jnp.where(valid, 1.0, jnp.nan).astype(picked.dtype)


def target_score_fn(model: Model, variables: PyTree,
                    target: jax.Array) -> Callable[[jax.Array], tuple[jax.Array, jax.Array]]:
  """Returns `score(x) -> (sum_n logits[n, target[n]], logits)` for `jax.grad(has_aux=True)`.

  `target` may be shorter than `x`'s batch by an integer factor: it is then
  tiled (step-major, Captum's order), so a stack of S copies of the batch uses
  `tile(target, S)`. An out-of-range target gives a NaN score (`pick_target`).
  """
  apply = as_apply(model)

  def score(x):
    logits = apply(variables, x)
    reps = x.shape[0] // target.shape[0]
    t = jnp.tile(target, reps) if reps != 1 else target
    return jnp.sum(pick_target(logits, t)), logits

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
  """`logits[n, target[n]]`, `float[N]` (plain JAX; NaN for an out-of-range target)."""
  return pick_target(as_apply(model)(variables, x), target)


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
