r"""Configs of `xai_jax.pipelines.timing`: seconds per 100 explanations (Gattas Fig. 4.2).

Variants (`--config=configs/timing.py:<variant>`):

* `quick` (default): the small CNN `cnn` at 48x48 (random weights), Gattas' panel with the
  cells-quick options (`configs/localization.py` `QUICK_METHODS`) plus plain Grad-CAM (the
  thesis compared it with Guided Grad-CAM), 8 explanations per call, median of 3 calls.

      python -m experiments.timing --workdir=workdir/timing_quick

  With the optional torch extra installed, Captum (Grad-CAM, Guided Grad-CAM, DeepLIFT), the
  `lime` package (LimeImageExplainer, the same samples) and `shap` (GradientExplainer at the
  Grad-CAM layer, no guided product) are timed side by side (`--noreferences`: xai_jax only).
  Measured: 21 s (the references included) on a 2-core CPU shared with other jobs, CPU
  devices for both; seconds per 100 explanations (xai_jax jitted, compilation excluded;
  Captum 0.9, lime 0.2.0.1, shap 0.51 on torch CPU, lime's `batch_size` 50, the same samples):

    method          xai_jax  captum  lime   shap   reference / xai_jax
    deeplift        0.23     0.36                  1.5
    gradcam         0.075    0.136                 1.8
    guided_gradcam  0.135    0.29                  2.1
    layer_shap      1.98                    8.9    4.5 (shap: input space, no guided product)
    lime            8.4              6.7           0.8 (100 samples, quickshift on the host)
    random          0.010

  On this tiny CNN LIME is bound by its 800 forward passes per call, where torch's CPU
  convolutions beat XLA:CPU's; the shares change on larger models and on a GPU.

* `tiny` (the tests): a 16-wide CNN at 32x32, 2 explanations per call, one timed call.

* `paper`: Gattas' design: VGG16 and ResNet50 at 224x224 and Inception v3 at 299x299 (10
  outputs, as the torch twins), his panel with his options (`THESIS_PANEL`: LIME 1000
  samples, layer SHAP 200 samples on 100 training images) plus Grad-CAM, 16 explanations per
  call, median of 3.

      python -m experiments.timing --config=configs/timing.py:paper \
          --workdir=workdir/timing_paper

  Not measured here (no GPU in the session that wrote this; on a 2-core CPU it takes hours:
  LIME's 1000 VGG16 passes per image). Thesis Fig. 4.2 (GTX 1080, Keras/TensorFlow 1, 100
  explanations): Guided Grad-CAM over 6000 s on Inception v3 (about 200 s without guided
  backprop), Grad-CAM slower than LIME, DeepLIFT the fastest on VGG16 and Inception v3;
  SHAP missing on Inception v3 and ResNet50. A compiled, batched implementation should be
  orders of magnitude below those numbers on any GPU.

Every field can be overridden from the command line (the config is locked).
`xai_jax.pipelines.timing.validate` checks the whole config before any timing.
"""

import ml_collections

from configs import common
from configs import localization

VARIANTS = ("quick", "tiny", "paper")

def _with_gradcam(methods):
  return {"gradcam": {}, **methods}


def get_config(variant: str = "quick") -> ml_collections.ConfigDict:
  """The locked config of `variant` (one of `VARIANTS`).

  Raises:
    ValueError: an unknown variant, listing the valid ones.
  """
  common.check_variant("timing", variant, VARIANTS)
  config = ml_collections.ConfigDict()
  config.variant = variant
  config.seed = 0
  config.models = ml_collections.ConfigDict({"cnn": 48})
  # As the torch twins of benchmarks.explainers (10 outputs); the head is a small share of
  # the cost.
  config.num_classes = 10
  config.methods = ml_collections.ConfigDict(_with_gradcam(localization.QUICK_METHODS))
  config.batch_size = 8
  config.repeats = 3
  config.figures = True
  if variant == "tiny":
    config.models = ml_collections.ConfigDict({"cnn": 32})
    config.methods = ml_collections.ConfigDict(_with_gradcam(localization.TINY_METHODS))
    config.batch_size = 2
    config.repeats = 1
  elif variant == "paper":
    config.models = ml_collections.ConfigDict(
        {"vgg16": 224, "inception_v3": 299, "resnet50": 224})
    config.methods = ml_collections.ConfigDict(_with_gradcam(localization.THESIS_PANEL))
    config.batch_size = 16
  config.lock()
  return config
