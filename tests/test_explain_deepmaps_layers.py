"""DeepMaps' layer sets per architecture and FullGrad's per-feature-map normalisation.

Grabska-Barwinska et al. (2021), "DeepMaps": Eq. 8 sums Psi over the hidden layers of VGG16
(its 13 conv ReLUs, Fig. 2 and Fig. 12) and of ResNet-50 (the stem ReLU and the 16 bottleneck
outputs, appendix F); Eq. 4 writes FullGrad with Psi applied to every feature map. The
references here are slow loops: the per-layer maps summed in Python, and numpy min-max /
bilinear (align_corners) loops over every feature map of FullGrad's terms.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xai_jax import explain, models
from xai_jax.explain import deep_maps, full_gradient

# torchvision's VGG16 conv ReLUs (features.1, 3, 6, ..., 29): the paper's layers 1-13.
VGG16_CONV_RELUS = tuple(f"features_{i}" for i in (1, 3, 6, 8, 11, 13, 15, 18, 20, 22, 25,
                                                   27, 29))
# ResNet-50: the stem ReLU, then the output (after the residual add + ReLU) of each of the
# 3 + 4 + 6 + 3 = 16 bottleneck blocks.
RESNET50_BLOCK_OUTPUTS = ("relu",) + tuple(
    f"layer{stage}_{block}/relu3" for stage, blocks in enumerate((3, 4, 6, 3), start=1)
    for block in range(blocks))


def _shapes(model, size):
  """Abstract variables and input (the layer sets need shapes only)."""
  shape = (1, size, size, 3)
  variables = jax.eval_shape(lambda: models.init(model, jax.random.key(0), shape))
  return variables, jax.ShapeDtypeStruct(shape, jnp.float32)


def test_resnet50_sums_the_stem_and_16_block_outputs():
  model = models.get("resnet50", num_classes=10)
  variables, x = _shapes(model, 32)
  names = explain.deepmaps_layers(model)
  assert len(names) == 17 and names == RESNET50_BLOCK_OUTPUTS
  # The declared names are spatial activations of the traced model, in forward order.
  assert explain.deepmaps_layers(model, variables, x) == names
  every = deep_maps.layer_names(model, variables, x)
  assert [every.index(n) for n in names] == sorted(every.index(n) for n in names)
  # The other sets: input + 49 ReLU maps (the previous default) and the 49 without the input.
  assert len(explain.deepmaps_layers(model, variables, x, layers="all")) == 50
  hidden = explain.deepmaps_layers(model, variables, x, layers="hidden")
  assert len(hidden) == 49 and "input" not in hidden and set(names) < set(hidden)


def test_vgg16_sums_its_13_conv_relus():
  model = models.get("vgg16", num_classes=10)
  variables, x = _shapes(model, 32)
  assert explain.deepmaps_layers(model) == VGG16_CONV_RELUS
  assert explain.deepmaps_layers(model, variables, x) == VGG16_CONV_RELUS
  # The dense ReLUs (classifier_1, classifier_4) have no map; "all" only adds the input.
  assert explain.deepmaps_layers(model, variables, x, layers="all") == ("input",
                                                                         *VGG16_CONV_RELUS)


def test_other_architectures_declare_their_analogous_sets():
  expected = {
      "resnet18": ("relu",) + tuple(f"layer{s}_{b}/relu2" for s in range(1, 5) for b in (0, 1)),
      "alexnet": ("features_1", "features_4", "features_7", "features_9", "features_11"),
      "cnn": ("relu1", "relu2"),
      "mlp": ("input",),  # no spatial activation: only the input map
  }
  for name, names in expected.items():
    assert explain.deepmaps_layers(models.get(name, num_classes=10)) == names, name
  inception = explain.deepmaps_layers(models.get("inception_v3", num_classes=10))
  assert len(inception) == 16 and inception[:5] == tuple(
      f"{b}/relu" for b in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1",
                            "Conv2d_4a_3x3"))
  assert all(n.endswith("/output") for n in inception[5:])
  small = models.get("small_vgg", num_classes=10, widths=(4, 8))
  assert explain.deepmaps_layers(small) == ("relu1_1", "relu1_2", "relu2_1", "relu2_2")
  # Every declared name is a spatial activation of the model (traced at small sizes).
  for name, size in (("vgg11_bn", 32), ("resnet34", 32), ("alexnet_plus", 63),
                     ("inception_v3", 75)):
    model = models.get(name, num_classes=10)
    assert explain.deepmaps_layers(model, *_shapes(model, size)) == explain.deepmaps_layers(
        model), name


def test_layer_set_errors():
  model = models.get("cnn", num_classes=10)
  with pytest.raises(ValueError, match="unknown layers 'top'; valid: paper, hidden, all"):
    explain.deepmaps_layers(model, layers="top")
  with pytest.raises(ValueError, match="pass variables and x"):
    explain.deepmaps_layers(model, layers="hidden")
  with pytest.raises(ValueError, match="give layers or first_layer, not both"):
    explain.check_options("deepmaps", {"layers": "all", "first_layer": 1})
  with pytest.raises(ValueError, match="deepmaps: unknown layers 'top'"):
    explain.check_options("deepmaps", {"layers": "top"})
  explain.check_options("deepmaps", {"layers": ("relu1", "relu2")})
  with pytest.raises(ValueError, match="fullgrad: unknown normalization 'channel'"):
    explain.check_options("fullgrad", {"normalization": "channel"})
  explain.check_options("simple_fullgrad", {"normalization": "feature_map"})


def _random_variables(model, shape, seed):
  """Random weights, nonzero biases and batch-norm statistics (so every bias term is nonzero)."""
  rng = np.random.default_rng(seed)

  def draw(path, a):
    values = rng.normal(size=a.shape)
    if jax.tree_util.keystr(path).endswith("['var']"):  # batch-norm variances stay positive
      return jnp.asarray(np.abs(values) + 0.5, a.dtype)
    return jnp.asarray(0.3 * values, a.dtype)

  return jax.tree_util.tree_map_with_path(draw, models.init(model, jax.random.key(seed), shape))


@pytest.mark.parametrize("name, size", [
    pytest.param("resnet18", 32, marks=pytest.mark.slow),  # ~25 s on a 2-core CPU
    ("small_vgg", 16)])
def test_default_deepmaps_is_the_sum_over_the_declared_layers(name, size):
  options = {"widths": (4, 8)} if name == "small_vgg" else {}
  model = models.get(name, num_classes=5, **options)
  variables = _random_variables(model, (1, size, size, 3), seed=1)
  x = jnp.asarray(np.random.default_rng(2).uniform(size=(2, size, size, 3)), jnp.float32)
  target = jnp.array([1, 3])
  per_layer = explain.layer_attributions(model, variables, x, target)
  names = explain.deepmaps_layers(model)
  expected = np.zeros((2, size, size))
  for layer in names:  # the slow loop: one Psi map per declared layer
    expected += np.asarray(per_layer[layer], np.float64)
  got = np.asarray(explain.deepmaps(model, variables, x, target))
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  # "all" adds the input map and the block-internal ReLUs: not the same map.
  everything = sum(np.asarray(m, np.float64) for m in per_layer.values())
  np.testing.assert_allclose(explain.deepmaps(model, variables, x, target, layers="all"),
                             everything, rtol=1e-5, atol=1e-5)
  assert np.abs(everything - expected).max() > 0.1
  np.testing.assert_allclose(explain.deepmaps(model, variables, x, target, layers=names), got,
                             rtol=1e-6, atol=1e-6)


def _bilinear_align_corners(a, size):
  """Plain-loop bilinear resize of `a [h, w]` to `size` with align_corners=True."""
  h, w = a.shape
  out = np.zeros(size)
  for i in range(size[0]):
    y = i * (h - 1) / (size[0] - 1) if size[0] > 1 else 0.0
    y0 = int(np.floor(y))
    y1, fy = min(y0 + 1, h - 1), y - y0
    for j in range(size[1]):
      xx = j * (w - 1) / (size[1] - 1) if size[1] > 1 else 0.0
      x0 = int(np.floor(xx))
      x1, fx = min(x0 + 1, w - 1), xx - x0
      out[i, j] = ((1 - fy) * ((1 - fx) * a[y0, x0] + fx * a[y0, x1])
                   + fy * ((1 - fx) * a[y1, x0] + fx * a[y1, x1]))
  return out


def _psi(a, size):
  """DeepMaps Eq. 5 on one map `a [h, w]`: upscale((|a| - min) / (max - min)), 0 if constant."""
  a = np.abs(a)
  span = a.max() - a.min()
  return _bilinear_align_corners((a - a.min()) / span if span > 0 else np.zeros_like(a), size)


@pytest.mark.slow
def test_fullgrad_feature_map_normalisation_matches_a_numpy_loop():
  model = models.get("small_vgg", num_classes=5, widths=(3, 4))
  variables = _random_variables(model, (1, 8, 8, 3), seed=3)
  x = jnp.asarray(np.random.default_rng(4).uniform(size=(2, 8, 8, 3)), jnp.float32)
  target = jnp.array([0, 4])
  _, input_term, bias_terms, bias_grads = full_gradient.fullgrad_terms(model, variables, x,
                                                                       target)
  for simple, terms in ((False, bias_terms), (True, bias_grads)):
    expected = np.zeros((2, 8, 8))
    for n in range(2):
      expected[n] += _psi(np.asarray(input_term[n], np.float64).sum(-1), (8, 8))
      for term in terms.values():
        if term.ndim != 4:
          continue  # dense sites have no map
        for phi in range(term.shape[-1]):
          expected[n] += _psi(np.asarray(term[n, ..., phi], np.float64), (8, 8))
    method = explain.simple_fullgrad if simple else explain.fullgrad
    got = method(model, variables, x, target, normalization="feature_map")
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    # The reference normalisation (over each site's C x H x W) is another map.
    reference = method(model, variables, x, target)
    np.testing.assert_array_equal(reference, method(model, variables, x, target,
                                                    normalization="reference"))
    assert np.abs(np.asarray(reference) - expected).max() > 0.1
  jitted = jax.jit(lambda v, x: explain.fullgrad(model, v, x, target,
                                                 normalization="feature_map"))(variables, x)
  np.testing.assert_allclose(jitted, explain.fullgrad(model, variables, x, target,
                                                      normalization="feature_map"),
                             rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match="unknown normalization 'layer'"):
    explain.fullgrad(model, variables, x, target, normalization="layer")
