"""`xla.jit`: `jax.jit` with per-platform compiler options (on XLA:CPU, YNNPACK for dots only)."""

import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xai_jax import xla

_OPTION = "xla_cpu_experimental_ynn_fusion_type"
_DOTS_ONLY = "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"
_YNN_MARKER = '"kind":"__ynn_fusion"'


def _conv(x, k):
  """A 3->32 channel 5x5 convolution: XLA:CPU gives it to YNNPACK by default."""
  return jax.lax.conv_general_dilated(x, k, (1, 1), ((2, 2), (2, 2)),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _conv_args():
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
  k = jax.random.normal(jax.random.key(1), (5, 5, 3, 32))
  return x, k


@pytest.fixture
def default_env(monkeypatch):
  monkeypatch.delenv("XAI_JAX_KEEP_XLA_DEFAULTS", raising=False)
  monkeypatch.setenv("XLA_FLAGS", "")
  return monkeypatch


def test_options_only_on_cpu(default_env):
  assert xla.compiler_options("gpu") == {}
  assert xla.compiler_options("tpu") == {}
  assert xla.compiler_options("cpu") == {_OPTION: _DOTS_ONLY}


def test_user_flags_and_opt_out_win(default_env):
  default_env.setenv("XLA_FLAGS", f"--{_OPTION}=")
  assert xla.compiler_options("cpu") == {}
  default_env.setenv("XLA_FLAGS", "")
  default_env.setenv("XAI_JAX_KEEP_XLA_DEFAULTS", "1")
  assert xla.compiler_options("cpu") == {}
  default_env.setenv("XAI_JAX_KEEP_XLA_DEFAULTS", "0")
  assert xla.compiler_options("cpu") == {_OPTION: _DOTS_ONLY}


def test_falls_back_to_no_ynn_fusions_then_to_defaults(default_env, monkeypatch):
  known = {(_OPTION, "")}
  monkeypatch.setattr(xla, "_option_is_known", lambda name, value: (name, value) in known)
  assert xla.compiler_options("cpu") == {_OPTION: ""}
  known.clear()
  assert xla.compiler_options("cpu") == {}


def _ynn_fusions(jitted, *args) -> int:
  return jitted.lower(*args).compile().as_text().count(_YNN_MARKER)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the options are XLA:CPU's")
def test_cpu_compile_gives_dots_not_convolutions_to_ynn_and_opt_out_compiles_as_jax_jit(
    default_env):
  x, k = _conv_args()
  a, w = jnp.ones((8, 256)), jnp.ones((256, 128))
  matmul = lambda a, w: a @ w  # noqa: E731
  default_conv = _ynn_fusions(jax.jit(_conv), x, k)
  assert default_conv > 0, "this jaxlib no longer gives convolutions to YNNPACK: revisit xla.py"
  assert _ynn_fusions(xla.jit(_conv), x, k) == 0
  assert _ynn_fusions(xla.jit(matmul), a, w) == 1
  default_env.setenv("XAI_JAX_KEEP_XLA_DEFAULTS", "1")
  assert _ynn_fusions(xla.jit(_conv), x, k) == default_conv
  assert _ynn_fusions(xla.jit(matmul), a, w) == _ynn_fusions(jax.jit(matmul), a, w)


@pytest.mark.slow
def test_results_match_jax_jit_and_eager(default_env):
  x, k = _conv_args()
  expected = _conv(x, k)
  np.testing.assert_allclose(xla.jit(_conv)(x, k), expected, rtol=1e-5, atol=1e-4)
  grad = xla.jit(jax.grad(lambda x, k: jnp.sum(jax.nn.relu(_conv(x, k)) ** 2)))
  np.testing.assert_allclose(
      grad(x, k), jax.grad(lambda x, k: jnp.sum(jax.nn.relu(_conv(x, k)) ** 2))(x, k),
      rtol=1e-5, atol=1e-3)
  a = jax.random.normal(jax.random.key(2), (8, 256))
  w = jax.random.normal(jax.random.key(3), (256, 128))
  dense_loss = lambda a, w: jnp.sum(jax.nn.relu(a @ w) ** 2)  # noqa: E731
  for argnum in (0, 1):  # the transposed dots of the backward pass
    np.testing.assert_allclose(xla.jit(jax.grad(dense_loss, argnum))(a, w),
                               jax.grad(dense_loss, argnum)(a, w), rtol=1e-4, atol=1e-2)


def test_jit_arguments_decorators_and_metadata(default_env):
  @functools.partial(xla.jit, static_argnames=("power",))
  def scaled(x, *, power: int):
    """Doc of scaled."""
    return x ** power

  assert float(scaled(jnp.float32(3.0), power=2)) == 9.0
  assert float(scaled(jnp.float32(3.0), power=3)) == 27.0
  assert scaled.__doc__ == "Doc of scaled."
  assert scaled.__name__ == "scaled"
  assert list(inspect.signature(scaled).parameters) == ["x", "power"]
  assert scaled.eval_shape(jax.ShapeDtypeStruct((4,), jnp.float32), power=2).shape == (4,)

  @xla.jit
  def double(x):
    return 2 * x

  assert float(double(jnp.float32(1.5))) == 3.0
  with pytest.raises(TypeError, match="compiler_options"):
    xla.jit(double, compiler_options={})


def test_one_compilation_per_shape(default_env):
  traces = []

  @xla.jit
  def f(x):
    traces.append(x.shape)
    return x + 1

  f(jnp.zeros(3))
  f(jnp.ones(3))
  f(jnp.zeros(4))
  assert traces == [(3,), (4,)]


def test_nested_inside_jax_jit_and_xla_jit_and_under_vmap(default_env):
  x, k = _conv_args()
  inner = xla.jit(_conv)
  expected = _conv(x, k)
  np.testing.assert_allclose(jax.jit(lambda x, k: inner(x, k) * 2)(x, k), 2 * expected,
                             rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(xla.jit(lambda x, k: inner(x, k) + 1)(x, k), expected + 1,
                             rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(jax.vmap(inner, in_axes=(0, None))(x[:, None], k), expected[:, None],
                             rtol=1e-5, atol=1e-4)
  grad = jax.jit(jax.grad(lambda x: inner(x, k).sum()))(x)
  np.testing.assert_allclose(grad, jax.grad(lambda x: _conv(x, k).sum())(x), rtol=1e-5, atol=1e-3)


def test_errors_inside_the_function_are_not_swallowed(default_env):
  @xla.jit
  def checked(x):
    if x.shape[-1] != 3:
      raise ValueError("x must have 3 channels")
    return x

  with pytest.raises(ValueError, match="3 channels"):
    checked(jnp.zeros((2, 4)))
  with pytest.raises(ValueError, match="3 channels"):
    jax.jit(lambda x: checked(x))(jnp.zeros((2, 4)))
