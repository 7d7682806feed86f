"""The registry's `takes_key`: which methods draw randomness from a `key` option.

Checked two ways, independently of how `takes_key` reads signatures: against the
known set of sampling methods, and against what each registered method does when
handed an integer seed as `key` (a keyed method rejects it with its key check, a
deterministic one with Python's "unexpected keyword argument 'key'"). Both fail if
a method's `key` parameter is removed or one is added.
"""

import jax
import numpy as np
import pytest

from xai_jax import explain, models

H, W, C, K = 8, 8, 3, 3

# Every registered method that samples: SmoothGrad's noise, GradientSHAP's and layer SHAP's
# references/alphas/noise, the random baseline, Shapley value sampling's permutations,
# LIME's and KernelSHAP's coalitions.
KEYED = {"smoothgrad", "gradient_shap", "random", "shapley_sampling", "lime", "kernel_shap",
         "layer_shap"}

# Options a method cannot be called without (the rest keep their defaults).
_REQUIRED = {
    "gradient_shap": {"baselines": np.zeros((2, H, W, C), np.float32)},
    "deeplift_shap": {"baselines": np.zeros((2, H, W, C), np.float32)},
    "layer_shap": {"background": np.zeros((2, H, W, C), np.float32)},
    "occlusion": {"sliding_window_shapes": (2, 2, C)},
}


@pytest.fixture(scope="module")
def cnn():
  model = models.get("cnn", num_classes=K)
  variables = models.init(model, jax.random.key(0), (1, H, W, C))
  x = np.random.default_rng(0).normal(size=(2, H, W, C)).astype(np.float32)
  return model, variables, x


def _accepts_a_key(name, model, variables, x) -> bool:
  """Calls the method with `key=7`: True if its key check answers, False if Python does."""
  try:
    explain.METHODS[name](model, variables, x, None, key=7, **_REQUIRED.get(name, {}))
  except TypeError as error:
    assert "unexpected keyword argument 'key'" in str(error), (name, error)
    return False
  except ValueError as error:
    assert "key must be a jax.random.key" in str(error), (name, error)
    return True
  raise AssertionError(f"{name} accepted an integer seed as key")


def test_takes_key_is_the_known_set_of_sampling_methods():
  assert KEYED <= set(explain.METHODS)
  assert {name for name in explain.METHODS if explain.takes_key(name)} == KEYED


def test_takes_key_matches_what_each_method_does_with_a_key(cnn):
  model, variables, x = cnn
  behaviour = {name: _accepts_a_key(name, model, variables, x) for name in explain.METHODS}
  assert behaviour == {name: explain.takes_key(name) for name in explain.METHODS}
  assert {name for name, keyed in behaviour.items() if keyed} == KEYED


def test_smoothgrad_takes_a_key_whatever_it_wraps(cnn):
  model, variables, x = cnn
  for inner in ("gradient", "guided_backprop", "integrated_gradients"):
    with pytest.raises(ValueError, match="key must be a jax.random.key"):
      explain.explain("smoothgrad", model, variables, x, None, method=inner, key=7)
  assert explain.takes_key("smoothgrad")


def test_takes_key_unknown_name_lists_the_valid_ones():
  with pytest.raises(ValueError, match="unknown explanation method 'smoothgrd'; valid: .*lime"):
    explain.takes_key("smoothgrd")
