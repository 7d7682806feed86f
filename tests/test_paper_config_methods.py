"""Every `paper*` config runs each method with the options its paper gives.

* pixel_removal (Grabska-Barwinska et al. 2021, "DeepMaps"): GRADIENTS is
  `sum_phi |df/dx_phi|` (Sec. 2.1), gradient x input the signed Eq. 1, Grad-CAM with its ReLU
  (Selvaraju et al.), FullGrad as Eq. 4 (Psi per feature map), DeepMaps over the paper's
  layers (13 conv ReLUs of VGG16, stem + 16 block outputs of ResNet-50).
* cells (Tjoa & Guan): their eight methods: Captum's Saliency (|gradient|), Guided Grad-CAM
  at the first conv layer, GradientShap (5 samples, no noise) and DeepLiftShap on four
  N(0, 0.001^2) baselines per sample, everything else signed; the clamped setting clips the
  raw attribution (their code); plain AlexNet (no extra layer).
* localization (Gattas 2020): his panel (`GATTAS_PANEL`) with signed attributions (the absolute
  value is taken by IOU), IOU at 0.5 std and IOU* at 1 std (Appendix C: 1 and 2), split at
  p > 0.9; the quick / tiny variants run the same panel with fewer samples.
* sanity_checks (Adebayo et al. 2018): signed attributions; the figures' "absolute value" vs
  "diverging" is the similarity measure (Fig. 3 top / bottom, Fig. 11 / 12), not the method.

The options are compared with literal tables written from the papers, and the gradient's
absolute value is checked on a model.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import cells as cells_config
from configs import localization as localization_config
from configs import pixel_removal as pixel_removal_config
from configs import sanity_checks as sanity_config
from xai_jax import explain, models, runner
from xai_jax.models import taps
from xai_jax.pipelines import image_experiment

DEEPMAPS_PANEL = {
    "random": {},
    "gradient": {"abs": True},
    "input_x_gradient": {},
    "gradcam": {"relu": True, "upsample": "bilinear"},
    "fullgrad": {"normalization": "feature_map"},
    "deepmaps": {"layers": "paper"},
}


# Tjoa & Guan's analysis code: Captum's Saliency (abs=True), InputXGradient, DeepLift (zero
# baseline), GuidedBackprop, GuidedGradCam, Deconvolution, GradientShap (n_samples=5,
# stdevs=0) and DeepLiftShap, both with 4 baselines of N(0, 0.001^2) noise per sample; plus
# xai_jax's random and edge reference maps.
TJOA_GUAN_PANEL = {
    "saliency": {"method_name": "gradient", "abs": True},
    "input_x_gradient": {},
    "deeplift": {},
    "guided_backprop": {},
    "guided_gradcam": {},
    "deconvolution": {},
    "gradient_shap": {"baselines": "normal:4:0.001", "samples": 5, "stdev": 0.0},
    "deeplift_shap": {"baselines": "normal:4:0.001"},
    "random": {},
    "edge": {},
}


def _methods(config_methods):
  return {name: dict(options) for name, options in config_methods.items()}


def test_pixel_removal_paper_variants_follow_deepmaps():
  for variant, layers in (("paper", 13), ("paper_resnet50", 17)):
    config = pixel_removal_config.get_config(variant)
    assert _methods(config.methods) == DEEPMAPS_PANEL, variant
    model = models.get(config.model.name, num_classes=config.model.num_classes)
    assert len(explain.deepmaps_layers(model)) == layers, variant
  # The quick variant runs the same panel.
  assert _methods(pixel_removal_config.get_config("quick").methods) == DEEPMAPS_PANEL


def test_the_deepmaps_gradient_is_the_channel_sum_of_absolute_values():
  model = models.get("cnn", num_classes=3, widths=(2, 3), hidden=4)
  variables = models.init(model, jax.random.key(0), (1, 8, 8, 3))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 3)), jnp.float32)
  name, options = runner.check_methods({"gradient": DEEPMAPS_PANEL["gradient"]})["gradient"]
  attributions = np.asarray(explain.explain(name, model, variables, x, 1, **options))
  signed = np.asarray(explain.gradient(model, variables, x, 1))
  assert (signed < 0).any()  # the signed gradient has negative, important pixels
  np.testing.assert_allclose(attributions.sum(-1), np.abs(signed).sum(-1), rtol=1e-6)


def test_cells_paper_variants_follow_tjoa_and_guan():
  first_layers = {"paper_alexnet": "features_0", "paper_vgg": "features_0",
                  "paper_resnet34": "conv1"}
  for variant, layer in first_layers.items():
    config = cells_config.get_config(variant)
    # Exactly their eight methods (and the two reference maps), nothing added.
    assert _methods(config.methods) == {**TJOA_GUAN_PANEL, "guided_gradcam": {"layer": layer}}
    assert dict(config.metric_options.five_band) == {"clamp": "code"}
    assert config.model.name == {"paper_alexnet": "alexnet", "paper_vgg": "vgg16",
                                 "paper_resnet34": "resnet34"}[variant]
    assert dict(config.model.options) == {"head": "tjoa"}
    # The layer is the paper model's first linear layer, a conv: its output before any ReLU.
    model = models.get(config.model.name, num_classes=10, **config.model.options)
    shape = (1, config.data.size, config.data.size, 3)
    variables = jax.eval_shape(lambda m=model, s=shape: models.init(m, jax.random.key(0), s))
    linear = taps.linear_layers(model, variables, jax.ShapeDtypeStruct(shape, jnp.float32))
    assert linear[0] == (layer, "conv"), variant


# Gattas' panel (thesis secs. 3.5-3.7): Guided Grad-CAM at the final conv layer (the model's
# default Grad-CAM layer), DeepLIFT on the black image, SHAP = shap's GradientExplainer at that
# layer (its default 200 samples) on training images, times guided backprop, LIME with the lime
# package's defaults (quickshift, 1000 samples) painted onto the superpixels; plus the random
# map as the floor.
GATTAS_PANEL = {
    "guided_gradcam": {},
    "deeplift": {"baseline": "zeros"},
    "layer_shap": {"guided": True, "background": "train:100", "samples": 200},
    "lime": {"reference": "lime", "feature_mask": "quickshift", "samples": 1000},
    "random": {},
}


def test_localization_paper_variants_follow_gattas():
  expected = {"paper": ("vgg16", 224, 1000, 0.5, 1.0),
              "paper_appendix_c": ("vgg16", 224, 300, 1.0, 2.0),  # his Appendix C thresholds
              "paper_inception": ("inception_v3", 299, 1000, 0.5, 1.0)}
  for variant, (name, size, count, n_std, n_std_star) in expected.items():
    config = localization_config.get_config(variant)
    assert _methods(config.methods) == GATTAS_PANEL, variant
    assert (config.model.name, config.data.size, config.data.num_examples) == (name, size, count)
    assert (config.iou.n_std, config.iou.n_std_star, config.iou.abs) == (n_std, n_std_star, True)
    assert config.confidence_threshold == 0.9  # high confidence: p > 0.9
    # The options are the registry's: every method accepts them.
    runner.check_methods(_methods(config.methods))
  # The Grad-CAM layer of the panel is each model's last conv block.
  assert models.get("vgg16", num_classes=1000).gradcam_layer == "features_29"
  assert models.get("inception_v3", num_classes=1000).gradcam_layer == "Mixed_7c/output"


def test_localization_quick_and_tiny_run_the_same_panel_with_fewer_samples():
  for variant, (samples, background, lime_samples) in (("quick", (32, "train:32", 100)),
                                                       ("tiny", (4, "train:4", 8))):
    config = localization_config.get_config(variant)
    methods = _methods(config.methods)
    assert methods == {**GATTAS_PANEL,
                       "layer_shap": {"guided": True, "background": background,
                                      "samples": samples},
                       "lime": {**GATTAS_PANEL["lime"], "samples": lime_samples}}, variant
    assert (config.iou.n_std, config.iou.n_std_star, config.confidence_threshold) == (
        0.5, 1.0, 0.9)
    assert config.data.source == "cells"


def test_localization_paper_needs_training_images_for_the_shap_background():
  # Checked when the sources are built, before the model is loaded or a file written.
  config = localization_config.get_config("paper")
  config.data.image_folder = "/nonexistent/val"
  with pytest.raises(ValueError, match=r"'train:N'.*--config.data.reference_folder=DIR"):
    image_experiment.build_source(config)
  config.data.reference_folder = "/nonexistent/train"
  with pytest.raises(ValueError, match=r"image folder /nonexistent/val does not exist"):
    image_experiment.build_source(config)


def test_sanity_paper_variant_follows_adebayo():
  config = sanity_config.get_config("paper")
  methods = _methods(config.method_options)
  assert tuple(config.methods) == ("gradient", "smoothgrad", "vargrad", "integrated_gradients",
                                   "guided_backprop", "gradcam", "guided_gradcam",
                                   "input_x_gradient")
  assert not any("abs" in options for options in methods.values())
  assert methods["smoothgrad"]["method"] == methods["vargrad"]["method"] == "gradient"
  # Fig. 3 top and Fig. 11 (absolute), Fig. 3 bottom and Fig. 12 (diverging), Fig. 4.
  assert set(config.measures) == {"spearman_abs", "spearman_signed", "ssim", "hog"}


def test_sanity_inception_and_mnist_variants_follow_adebayo():
  paper = _methods(sanity_config.get_config("paper").method_options)
  inception = sanity_config.get_config("paper_inception")
  assert _methods(inception.method_options) == paper
  assert inception.model.name == "inception_v3" and inception.data.size == 299
  assert inception.data.normalize == "inception" and tuple(inception.randomization.layers) == ()
  assert set(inception.measures) == {"spearman_abs", "spearman_signed", "ssim", "hog"}
  without_cam = {k: v for k, v in paper.items() if k not in ("gradcam", "guided_gradcam")}
  for variant, (dataset, model) in {
      "paper_mnist": ("mnist", "cnn"), "paper_mnist_mlp": ("mnist", "mlp"),
      "paper_fashion_mnist": ("fashion_mnist", "cnn"),
      "paper_fashion_mnist_mlp": ("fashion_mnist", "mlp")}.items():
    config = sanity_config.get_config(variant)
    # The CNN gets the ImageNet panel; the MLP has no spatial layer for Grad-CAM.
    assert _methods(config.method_options) == (paper if model == "cnn" else without_cam)
    assert (config.data.tfds_name, config.model.name) == (dataset, model), variant
    # Spearman only: the paper computes SSIM and HOG on ImageNet alone.
    assert tuple(config.measures) == ("spearman_abs", "spearman_signed")
    assert config.data_randomization.enabled and config.data_randomization.target_accuracy == 0.95
    assert config.train.max_steps == 20_000 and config.train.weight_decay == (
        1e-3 if model == "cnn" else 0.0)
