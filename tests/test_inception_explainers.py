"""Every registered explainer runs unchanged on Inception v3 (issue: the explainer contract).

Its own module (not `test_inception.py`) because it compiles every method on Inception v3 (about
3 minutes on a 2-core CPU): under `pytest -n auto --dist loadfile` a module runs on one worker, and
alone this one can run beside the rest. The model and random weights are `test_inception`'s.
"""

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("torchvision")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import test_inception  # noqa: E402  (the shared torch model and its ported weights)
from xai_jax import explain, models  # noqa: E402
from xai_jax.explain import full_gradient  # noqa: E402


@pytest.mark.slow
def test_every_registered_explainer_runs():
  _, variables = test_inception._setup()
  model = models.get("inception_v3", num_classes=test_inception.NUM_CLASSES)
  x = jnp.asarray(test_inception._nhwc(test_inception._input(2, 75, seed=11)))
  target = jnp.asarray(test_inception.TARGET)
  key = jax.random.key(0)
  baselines = 0.1 * jax.random.normal(key, (2, 75, 75, 3))
  grid = np.repeat(np.repeat(np.arange(9).reshape(3, 3), 25, axis=0), 25, axis=1)  # 9 squares
  options = {
      "integrated_gradients": dict(steps=2),
      "smoothgrad": dict(key=key, samples=2),
      "gradient_shap": dict(baselines=baselines, key=key, samples=2),
      "deeplift_shap": dict(baselines=baselines),
      "random": dict(key=key),
      # Perturbation and surrogate methods on 9 features, a few samples.
      "occlusion": dict(sliding_window_shapes=(25, 25), strides=25),
      "feature_ablation": dict(feature_mask=grid),
      "shapley_sampling": dict(feature_mask=grid, samples=2, key=key),
      "lime": dict(feature_mask=grid, samples=8, key=key),
      "kernel_shap": dict(feature_mask=grid, samples=8, key=key),
      "layer_shap": dict(background=baselines, samples=2, key=key),
  }
  map_methods = ("gradcam", "fullgrad", "simple_fullgrad", "deepmaps", "random", "edge")
  for name in explain.METHODS:
    out = np.asarray(explain.explain(name, model, variables, x, target, **options.get(name, {})))
    shape = x.shape[:3] if name in map_methods else x.shape
    assert out.shape == shape, (name, out.shape)
    assert np.isfinite(out).all(), name
    if name not in ("edge", "random", "gradcam"):  # Mixed_7c is 1x1 at 75x75
      assert np.abs(out).max() > 0, name
  # FullGrad completeness: every bias enters at a bias site.
  _, _, rel = full_gradient.fullgrad_completeness(model, variables, x, target)
  assert np.max(rel) < 1e-3, rel
