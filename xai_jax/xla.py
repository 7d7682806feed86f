"""`jit` with per-platform XLA compiler options: the one place xai_jax tunes the compiler.

Every jitted function in xai_jax is built with `xla.jit` instead of `jax.jit`. It behaves
like `jax.jit` (same arguments, `lower`, `eval_shape`, `trace`) but compiles with the options
`compiler_options(platform)` gives for the platform `jax.default_backend()` names when the
function is called; on other platforms nothing changes.

XLA:CPU (jaxlib 0.10) hands convolutions, dots and elementwise fusions to YNNPACK. On the
2-core AVX-512 machines this project measures on, some of its convolutions are far slower
than XLA's own (Eigen) kernels (a 5x5 convolution from 3 to 24 channels on 64 images of
64x64: 137 ms against 14 ms), while its dots are faster, above all the transposed ones of a
backward pass (the small CNN's dense layer, [64, 1024] x [1024, 16384]: 9 ms against 40 ms).
So on CPU `xla.jit` sets `xla_cpu_experimental_ynn_fusion_type` to
`LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT`: YNNPACK for single dot instructions, XLA for the rest.
Whole models, one process, ms/image, XLA defaults / no YNN fusions / YNN dots only (the
choice; benchmarks/RESULTS.md):

  small CNN 64, batch 64, input gradient     3.6 / 3.3 / 2.7
  small CNN 64, batch 256, forward           0.9 / 1.0 / 1.0
  small_vgg 96, batch 32, train step         4.0 / 3.3 / 3.2
  small_vgg 96, batch 150, forward           1.0 / 0.9 / 0.9
  AlexNet 224, batch 8, input gradient        24 /  35 /  21
  AlexNet 224, batch 8, forward              8.8 / 7.1 / 7.7
  ResNet50 224, batch 8, input gradient      127 /  97 /  98
  VGG16 224, batch 8, input gradient         279 / 299 / 242

Every other YNN fusion kind measured worse somewhere: elementwise fusions took AlexNet's
forward pass from 7.4 to 56 ms, dot fusions (`LIBRARY_FUSION_TYPE_DOT` alone) to 53 ms
(no YNN fusions and each kind alone, one process). XLA's defaults are kept when:

- `XLA_FLAGS` already sets `xla_cpu_experimental_ynn_fusion_type` (the user's choice wins);
- `XAI_JAX_KEEP_XLA_DEFAULTS=1` is set (compile exactly as `jax.jit` would);
- the installed jaxlib does not know the option or its value (checked once by compiling a
  constant; a jaxlib that knows the option but not the value gets no YNN fusions at all).

Under an outer `jax.jit` the outer function's options apply, as with nested `jax.jit`.
"""

import functools
import os
from typing import Any, Callable

import jax

_YNN_OPTION = "xla_cpu_experimental_ynn_fusion_type"
_CPU_YNN_FUSIONS = ("LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT", "")  # preferred first
_KEEP_DEFAULTS_ENV = "XAI_JAX_KEEP_XLA_DEFAULTS"
_NESTED_OPTIONS_ERROR = "can only be passed to top-level `jax.jit`"


@functools.cache
def _option_is_known(name: str, value: str) -> bool:
  try:
    jax.jit(lambda: 0.0, compiler_options={name: value}).lower().compile()
  except Exception:  # noqa: BLE001 - any failure means "do not pass this option"
    return False
  return True


def compiler_options(platform: str) -> dict[str, str]:
  """The XLA options `xla.jit` compiles with on `platform` ("cpu", "gpu", "tpu"...).

  Returns an empty dict where xai_jax keeps XLA's defaults (all platforms but CPU, or
  when the user opted out; see the module docstring).
  """
  if platform != "cpu" or os.environ.get(_KEEP_DEFAULTS_ENV, "") not in ("", "0"):
    return {}
  if _YNN_OPTION in os.environ.get("XLA_FLAGS", ""):
    return {}
  for fusions in _CPU_YNN_FUSIONS:
    if _option_is_known(_YNN_OPTION, fusions):
      return {_YNN_OPTION: fusions}
  return {}


class _PlatformJit:
  """A `jax.jit` of `fun` per set of compiler options (the platform's, or none when nested)."""

  def __init__(self, fun: Callable[..., Any], jit_kwargs: dict[str, Any]):
    if "compiler_options" in jit_kwargs:
      raise TypeError("xla.jit chooses compiler_options per platform; use jax.jit to set them")
    self._fun = fun
    self._jit_kwargs = jit_kwargs
    self._by_options: dict[tuple, Any] = {}
    functools.update_wrapper(self, fun)

  def _jitted(self, options: dict[str, str] | None = None):
    if options is None:
      options = compiler_options(jax.default_backend())
    key = tuple(sorted(options.items()))
    jitted = self._by_options.get(key)
    if jitted is None:
      jitted = jax.jit(self._fun, compiler_options=options or None, **self._jit_kwargs)
      self._by_options[key] = jitted
    return jitted

  def __call__(self, *args, **kwargs):
    jitted = self._jitted()
    try:
      return jitted(*args, **kwargs)
    except ValueError as error:
      # Inside an outer jit (a staging trace) JAX refuses compiler options before staging
      # anything; the outer function's options apply there, so stage the plain jit.
      if _NESTED_OPTIONS_ERROR not in str(error) or jitted is self._jitted({}):
        raise
      return self._jitted({})(*args, **kwargs)

  def lower(self, *args, **kwargs):
    return self._jitted().lower(*args, **kwargs)

  def eval_shape(self, *args, **kwargs):
    return self._jitted().eval_shape(*args, **kwargs)

  def trace(self, *args, **kwargs):
    return self._jitted().trace(*args, **kwargs)

  def __repr__(self) -> str:
    return f"xla.jit({getattr(self._fun, '__qualname__', self._fun)!r})"


def jit(fun: Callable[..., Any] | None = None, /, **jit_kwargs) -> Any:
  """`jax.jit(fun, **jit_kwargs)` compiled with `compiler_options` of the current platform.

  Usable as `xla.jit(f, static_argnames=...)`, `@xla.jit` or
  `@functools.partial(xla.jit, static_argnames=...)`.

  Raises:
    TypeError: if `compiler_options` is passed (they are chosen per platform here).
  """
  if fun is None:
    return functools.partial(jit, **jit_kwargs)
  return _PlatformJit(fun, jit_kwargs)
