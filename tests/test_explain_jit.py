"""Every registry explainer under `jax.jit` and `jax.vmap`, and its entry checks.

For each method in `explain.METHODS`, on the registry's small CNN with 2 images
of 8x8x3: jit with x traced, with the target traced, with both, with the
variables traced, with everything traced (including array options: baselines
and keys), and vmap over a stack of two batches all equal the eager call (same
key where the method draws noise). A traced out-of-range target gives NaN for
exactly that image (every method that uses a target; `random` and `edge` ignore
it), while a concrete one raises. Integer seeds as keys, a wrong channel count
and another model's variables raise ValueErrors naming the argument, also
under jit.

Unmarked (about 55 s of CPU time on a 2-core machine, and about 50 s for the five
perturbation methods): every method with x traced and with everything traced (plus
the bad-target NaN check), vmap for a few methods, and all error checks. Marked
slow (about 85 s more, 80 s for the perturbation methods): the target-only,
x-and-target and variables-only modes, the remaining vmaps and vmap over bad
targets.
"""

import functools

import flax.linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xai_jax import explain, models
from xai_jax.explain import common
from xai_jax.models import taps

N, H, W, C, K = 2, 8, 8, 3, 4
KEY = jax.random.key(7)
TARGETLESS = ("random", "edge")  # ignore the model and the target


def _images(n, seed):
  return np.random.default_rng(seed).normal(size=(n, H, W, C)).astype(np.float32)


MODEL = models.get("cnn", num_classes=K)
VARIABLES = models.init(MODEL, jax.random.key(0), (1, H, W, C))
X = _images(N, 1)
T = np.array([1, 3], np.int32)
X2 = _images(N, 2)
T2 = np.array([0, 2], np.int32)

_QUADRANTS = np.repeat(np.repeat(np.arange(4, dtype=np.int32).reshape(2, 2), H // 2, 0), W // 2, 1)
FEATURE_MASK = np.stack([_QUADRANTS, _QUADRANTS.T])
# Options per method: (static options, array options that may be traced).
OPTIONS = {
    "integrated_gradients": ({"steps": 3}, {}),
    "smoothgrad": ({"samples": 2}, {"key": KEY}),
    "gradient_shap": ({"samples": 2}, {"key": KEY, "baselines": _images(3, 3)}),
    "deeplift": ({}, {"baseline": 0.1 * _images(1, 4)}),
    "deeplift_shap": ({}, {"baselines": _images(2, 5)}),
    "random": ({}, {"key": KEY}),
    "layer_shap": ({"samples": 2}, {"key": KEY, "background": _images(3, 7)}),
    # Perturbation methods: a per-image mask of 4 quadrant features (traced in the
    # everything-traced mode, hence num_features).
    "occlusion": ({"sliding_window_shapes": (4, 4), "strides": 4},
                  {"baseline": 0.1 * _images(1, 6)}),
    "feature_ablation": ({"num_features": 4}, {"feature_mask": FEATURE_MASK}),
    "shapley_sampling": ({"samples": 2, "num_features": 4},
                         {"feature_mask": FEATURE_MASK, "key": KEY}),
    "lime": ({"samples": 6, "num_features": 4}, {"feature_mask": FEATURE_MASK, "key": KEY}),
    "kernel_shap": ({"samples": 6, "num_features": 4}, {"feature_mask": FEATURE_MASK, "key": KEY}),
}
NAMES = sorted(explain.METHODS)


def _run(name, variables, x, target, arrays):
  static, _ = OPTIONS.get(name, ({}, {}))
  return explain.explain(name, MODEL, variables, x, target, **static, **arrays)


def _arrays(name):
  return OPTIONS.get(name, ({}, {}))[1]


@functools.lru_cache(maxsize=None)
def _eager(name, batch=0):
  x, t = (X, T) if batch == 0 else (X2, T2)
  return np.asarray(_run(name, VARIABLES, x, t, _arrays(name)))


def _close(got, want):
  got, want = np.asarray(got), np.asarray(want)
  assert got.shape == want.shape
  assert np.all(np.isfinite(want))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def _check_bad_targets(name, run):
  """`run(target)` with a traced out-of-range entry: that image NaN, the other as eager."""
  for bad in (K, -1, K + 5):
    out = np.asarray(run(np.array([1, bad], np.int32)))
    if name in TARGETLESS:  # the target is ignored: the same map as with a valid target
      _close(out, _eager(name))
      continue
    assert np.isnan(out[1]).all(), (name, bad)
    _close(out[0], _eager(name)[0])


# Traced arguments of each mode: (function, arguments) for a method name.
MODES = {
    "x": lambda name: (lambda x: _run(name, VARIABLES, x, T, _arrays(name)), (X,)),
    "target": lambda name: (lambda t: _run(name, VARIABLES, X, t, _arrays(name)), (T,)),
    "x_and_target": lambda name: (lambda x, t: _run(name, VARIABLES, x, t, _arrays(name)),
                                  (X, T)),
    "variables": lambda name: (lambda v: _run(name, v, X, T, _arrays(name)), (VARIABLES,)),
}
# The fast subset runs every method with x traced (everything else closed over and
# concrete, so every value check runs inside the trace) and with everything traced;
# the single-argument modes and the remaining vmaps are marked slow.
SLOW_MODES = ("target", "x_and_target", "variables")
FAST_VMAP = ("deeplift", "gradcam", "gradient", "integrated_gradients", "random")
# Sampling and perturbation methods take 1.5-15 s per case on a 2-core CPU: slow in every
# mode, so that `-m "not slow"` stays under 3 minutes.
SLOW_NAMES = ("deeplift_shap", "gradient_shap", "kernel_shap", "layer_shap", "lime",
              "shapley_sampling", "smoothgrad")


def _slow_unless(fast: bool):
  return () if fast else (pytest.mark.slow,)


@pytest.mark.parametrize("name, mode", [
    pytest.param(name, mode, marks=_slow_unless(mode not in SLOW_MODES
                                                 and name not in SLOW_NAMES))
    for name in NAMES for mode in sorted(MODES)])
def test_jit_equals_eager(name, mode):
  fn, args = MODES[mode](name)
  _close(jax.jit(fn)(*args), _eager(name))


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=_slow_unless(name not in SLOW_NAMES)) for name in NAMES])
def test_jit_with_everything_traced_equals_eager_and_bad_targets_are_nan(name):
  """x, target, variables and the array options (baselines, keys) all traced."""
  jitted = jax.jit(lambda v, x, t, a: _run(name, v, x, t, a))
  _close(jitted(VARIABLES, X, T, _arrays(name)), _eager(name))
  _check_bad_targets(name, lambda t: jitted(VARIABLES, X, t, _arrays(name)))


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=_slow_unless(name in FAST_VMAP)) for name in NAMES])
def test_vmap_over_stacked_batches_equals_loop(name):
  xs, ts = np.stack([X, X2]), np.stack([T, T2])
  got = jax.vmap(lambda x, t: _run(name, VARIABLES, x, t, _arrays(name)))(xs, ts)
  _close(got[0], _eager(name, 0))
  _close(got[1], _eager(name, 1))


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_traced_out_of_range_target_under_vmap_gives_nan(name):
  ts = np.array([[1, 3], [K, 0]], np.int32)
  out = np.asarray(jax.vmap(lambda t: _run(name, VARIABLES, X, t, _arrays(name)))(ts))
  if name in TARGETLESS:
    assert np.isfinite(out).all()
    return
  _close(out[0], _eager(name))
  assert np.isnan(out[1, 0]).all()
  assert np.isfinite(out[1, 1]).all()


def test_plain_target_scores_and_gradients_are_nan_for_out_of_range_targets():
  logits = jnp.asarray([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
  picked = jax.jit(common.pick_target)(logits, jnp.array([2, 3]))
  assert float(picked[0]) == 3.0 and np.isnan(picked[1])
  # A linear model: the input gradient of image n is w[:, t_n], NaN for a bad target.
  w = np.random.default_rng(6).normal(size=(H * W * C, K)).astype(np.float32)
  apply = lambda v, x: x.reshape(x.shape[0], -1) @ v
  grad, _ = jax.jit(common.target_gradient, static_argnums=0)(apply, w, X, jnp.array([-1, 2]))
  assert np.isnan(grad[0]).all()
  np.testing.assert_array_equal(np.asarray(grad[1]).reshape(-1), w[:, 2])


@pytest.mark.parametrize("name", [n for n in NAMES if n not in TARGETLESS])
def test_concrete_out_of_range_target_raises(name):
  bad = np.array([1, K], np.int32)
  with pytest.raises(ValueError, match=r"target index out of range: must lie in \[0, 4\)"):
    _run(name, VARIABLES, X, bad, _arrays(name))
  # Closed over by a jitted function, the target is still concrete and checked.
  with pytest.raises(ValueError, match="out of range"):
    jax.jit(lambda x: _run(name, VARIABLES, x, bad, _arrays(name)))(X)


@pytest.mark.parametrize("name", NAMES)
def test_non_finite_closed_over_x_raises_under_jit(name):
  x = X.copy()
  x[0, 2, 3, 1] = np.nan
  with pytest.raises(ValueError, match="NaN or infinite"):
    jax.jit(lambda t: _run(name, VARIABLES, x, t, _arrays(name)))(T)


@pytest.mark.parametrize("name", ["random", "smoothgrad", "gradient_shap"])
def test_integer_key_raises(name):
  static, arrays = OPTIONS[name]
  # One key per image is accepted (`sampling.check_keys`), but not another number of keys.
  for bad in (0, np.int64(3), jnp.zeros((3,), jnp.uint32), jax.random.split(KEY, len(X) + 1)):
    with pytest.raises(ValueError, match=r"key must be a jax.random.key\(\.\.\.\)"):
      explain.explain(name, MODEL, VARIABLES, X, T, **static, **{**arrays, "key": bad})
  with pytest.raises(ValueError, match=r"key must be a jax.random.key"):
    jax.jit(lambda x: explain.explain(name, MODEL, VARIABLES, x, T, **static,
                                      **{**arrays, "key": 5}))(X)


@pytest.mark.parametrize("name", ["random", pytest.param("smoothgrad", marks=pytest.mark.slow),
                                  pytest.param("gradient_shap", marks=pytest.mark.slow)])
def test_legacy_key_equals_its_typed_key(name):
  static, arrays = OPTIONS[name]
  raw = jax.random.PRNGKey(11)
  legacy = explain.explain(name, MODEL, VARIABLES, X, T, **static, **{**arrays, "key": raw})
  typed = explain.explain(name, MODEL, VARIABLES, X, T, **static,
                          **{**arrays, "key": jax.random.wrap_key_data(raw)})
  _close(legacy, typed)


@pytest.mark.parametrize("name", [n for n in NAMES if n not in TARGETLESS])
def test_wrong_channel_count_names_x(name):
  one_channel = X[..., :1]
  match = r"x has 1 channels but CNN's variables expect 3: x must be float\[N, H, W, 3\]"
  with pytest.raises(ValueError, match=match):
    _run(name, VARIABLES, one_channel, T, _arrays(name))
  with pytest.raises(ValueError, match=match):
    jax.jit(lambda x: explain.gradient(MODEL, VARIABLES, x, T))(one_channel)


def test_other_models_variables_name_variables_and_the_first_mismatch():
  resnet = models.get("resnet18", num_classes=K)
  vgg = models.get("vgg11", num_classes=K)
  # Shapes are all the checks need: the ResNet18 variables as ShapeDtypeStructs.
  resnet_variables = jax.eval_shape(lambda: models.init(resnet, jax.random.key(0),
                                                        (1, 32, 32, 3)))
  x = np.zeros((1, 32, 32, 3), np.float32)
  match = (r"variables do not fit VGG on x of shape \(1, 32, 32, 3\): params/bn1/bias "
           r"\(shape \(64,\)\) is not a parameter of this model")
  with pytest.raises(ValueError, match=match):
    explain.gradient(vgg, resnet_variables, x, None)
  with pytest.raises(ValueError, match=r"fit ResNet .*: params/bn1/bias is missing"):
    explain.gradcam(resnet, VARIABLES, x, 0)
  # Traced variables of the wrong model fail the same way at trace time.
  with pytest.raises(ValueError, match="variables do not fit ResNet"):
    jax.jit(lambda v: explain.deeplift(resnet, v, x, 0))(VARIABLES)


def test_variables_of_other_classes_or_image_size_name_the_parameter():
  other_classes = models.get("cnn", num_classes=K + 1)
  with pytest.raises(ValueError, match=r"params/fc2/bias has shape \(4,\), the model expects "
                                       r"\(5,\)"):
    explain.gradient(other_classes, VARIABLES, X, T)
  big = np.zeros((N, 2 * H, 2 * W, C), np.float32)
  with pytest.raises(ValueError, match=r"params/fc1/kernel has shape \(256, 1024\), the "
                                       r"model expects \(1024, 1024\)"):
    explain.fullgrad(MODEL, VARIABLES, big, T)


def test_plain_apply_function_failure_is_a_value_error():
  apply = lambda v, x: x.reshape(x.shape[0], -1) @ v["w"]
  w = {"w": np.zeros((H * W * C, K), np.float32)}
  np.testing.assert_allclose(explain.gradient(apply, w, X, T), np.zeros_like(X))
  with pytest.raises(ValueError, match=r"model cannot be applied to x of shape \(2, 8, 8, 1\)"):
    explain.gradient(apply, w, X[..., :1], T)


def test_contract_check_is_shared():
  apply = models.as_apply(MODEL)
  for name in ("deeplift", "deeplift_shap", "guided_backprop", "deconvolution", "gradcam",
               "guided_gradcam", "fullgrad", "simple_fullgrad", "deepmaps", "lrp",
               "layer_shap"):
    with pytest.raises(ValueError, match=f"^{name} needs an xai_jax.models contract model"):
      explain.explain(name, apply, VARIABLES, X, T, **OPTIONS.get(name, ({}, {}))[0],
                      **_arrays(name))
  # The one definition (models.taps): a contract model passes, a Module without `ops` does not.
  taps.check_contract(MODEL, "any_method")
  with pytest.raises(ValueError, match="^any_method needs .* got Dense$"):
    taps.check_contract(flax.linen.Dense(3), "any_method")
