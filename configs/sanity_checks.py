r"""Sanity checks for saliency maps (Adebayo et al., NeurIPS 2018) on the synthetic cells.

  python -m experiments.sanity_checks --workdir=/tmp/sanity_quick \
      --config=configs/sanity_checks.py:quick

Variants (`get_config(variant)`):

* "quick": a small CNN (Adebayo et al.'s MNIST CNN, `models.get("cnn")`) trained from
  scratch for 320 Adam steps on 2560 cells of 48x48 pixels, then cascading and independent
  model-parameter randomisation for seven methods (gradient, |gradient|, guided backprop,
  integrated gradients with 16 steps, SmoothGrad with 16 samples, Grad-CAM, input x gradient)
  on 16 test cells, with the four similarity measures of the paper. About 2 minutes on
  2 idle CPU cores (2 min 11 s of CPU time; measured 4 min wall on a 2-core machine shared
  with four other jobs, 2/3 of it training); a rerun in the same workdir resumes and only
  redraws the figures. Expected numbers (CNN test accuracy 0.53 on 256 test cells; mean over
  the 16 images when every layer is re-initialised, the last cascading stage):

    method                 spearman_abs  spearman_signed  ssim   hog
    gradient                   0.12         -0.00         0.05   0.20
    gradient_abs               0.12          0.12         0.02   0.23
    guided_backprop            0.20          0.22         0.24   0.52
    integrated_gradients       0.32         -0.01         0.20   0.30
    smoothgrad                 0.14          0.01         0.07   0.30
    gradcam                   -0.02         -0.04         0.07   0.53
    input_x_gradient           0.32         -0.01         0.23   0.28

  The paper's ordering by similarity decay: the signed Spearman correlation of the gradient,
  SmoothGrad, integrated gradients and input x gradient falls to about 0.1 once the logits
  (fc2) are re-initialised (Grad-CAM 0.27) and to about 0 after fc1, while guided backprop
  keeps 0.87 and 0.77 there (SSIM 0.93, 0.86); integrated gradients and input x gradient
  keep the most of their absolute-value structure at the end (0.32: the input's edges
  survive) while their sign is lost. Guided backprop decays slowest on signed Spearman and
  SSIM (with Grad-CAM on HOG). The numbers of a run are in `WORKDIR/report.md` (see
  `xai_jax.pipelines.sanity_checks` for every output).

* "tiny": seconds, for the tests: 32x32 cells, a few training steps, three methods, four
  images, three similarity measures (HOG needs maps of at least 48x48 pixels), data
  randomisation on 32 memorised images.

* "paper": Adebayo et al.'s ImageNet setting with VGG16 in place of Inception v3 (which
  `xai_jax.models` does not provide): torchvision's ImageNet VGG16 weights from an orbax
  checkpoint (`python -m experiments.port_weights --arch=vgg16 --out=/ckpt/vgg16`, needs
  internet once), 224x224 images from a folder (their 50 ImageNet validation images; any
  folder of JPEG/PNG files works), normalised with the ImageNet mean and standard deviation,
  the paper's methods (gradient, SmoothGrad, VarGrad, integrated gradients, guided backprop,
  Grad-CAM, guided Grad-CAM, input x gradient), the 16 VGG16 layers re-initialised from the
  logits down (truncated normal, std 0.01, as their appendix B) and one at a time:

    python -m experiments.sanity_checks --workdir=/tmp/sanity_paper \
        --config=configs/sanity_checks.py:paper \
        --config.model.checkpoint=/ckpt/vgg16 --config.data.image_folder=/data/imagenet50

  Estimated (not measured) at about 1 hour on one GPU (50 images x 8 methods x 33 stages;
  SmoothGrad, VarGrad and IG dominate), days on a CPU. Expected (their Fig. 2, 3, 4, with
  Inception v3): at the last stage the Spearman correlation of the absolute maps is near 0
  for gradient, SmoothGrad, VarGrad and Grad-CAM, stays high (> 0.5) for guided backprop and
  guided Grad-CAM, and stays intermediate for integrated gradients and input x gradient
  (their input structure survives), whose signed Spearman correlation drops to about 0 as
  soon as the logits are re-initialised; SSIM and HOG keep guided backprop / guided Grad-CAM
  near the top. The ordering by similarity decay, fastest first: gradient ~ SmoothGrad ~
  VarGrad ~ Grad-CAM < integrated gradients ~ input x gradient < guided backprop ~ guided
  Grad-CAM.

`xai_jax.pipelines.sanity_checks.check_config` checks the whole config (methods and their options,
measures, modes, data, model) before anything is trained; a refused config writes nothing.
On a trained workdir, changing only evaluation fields (methods, measures, randomisation,
images explained, ...) reuses the trained models (`train/`, `train_random_labels/`) and writes
the new outputs to `WORKDIR/eval_<hash>/`; other training fields are refused.
"""

import ml_collections

from configs import common

VARIANTS = ("quick", "tiny", "paper")

_QUICK_METHODS = {
    "gradient": {},
    "gradient_abs": {"method_name": "gradient", "abs": True},
    "guided_backprop": {},
    "integrated_gradients": {"steps": 16},
    "smoothgrad": {"method": "gradient", "samples": 16, "stdev_spread": 0.15},
    "gradcam": {},
    "input_x_gradient": {},
}

_PAPER_METHODS = {
    "gradient": {},
    "smoothgrad": {"method": "gradient", "samples": 50, "stdev_spread": 0.15},
    "vargrad": {"method_name": "smoothgrad", "method": "gradient", "samples": 50,
                "stdev_spread": 0.15, "kind": "var"},
    "integrated_gradients": {"steps": 50},
    "guided_backprop": {},
    "gradcam": {},
    "guided_gradcam": {},
    "input_x_gradient": {},
}


def get_config(variant: str = "quick") -> ml_collections.ConfigDict:
  """The configuration of a variant ("quick", "tiny" or "paper"), locked.

  Raises:
    ValueError: an unknown variant (listing the valid ones).
  """
  common.check_variant("sanity_checks", variant, VARIANTS)
  config = ml_collections.ConfigDict()
  config.variant = variant
  config.seed = 0

  # Images: "cells" (xai_jax.data.cell_source.source) or "image_folder" (JPEG/PNG files).
  config.data = ml_collections.ConfigDict(dict(
      source="cells", size=48, train_examples=2560, num_explain=16, explain_split="test",
      image_folder="", normalize="none", explain_batch_size=16))

  # checkpoint: a folder written by `xai_jax.models.port.save` (its model.json names the
  # architecture); empty: train `name` from scratch on the cells in WORKDIR/train.
  config.model = ml_collections.ConfigDict(dict(name="cnn", num_classes=10, checkpoint=""))

  config.train = ml_collections.ConfigDict(dict(
      # checkpoint_every: steps between checkpoints in WORKDIR/train (0: only at the end).
      epochs=4, batch_size=32, learning_rate=1e-3, weight_decay=0.0, checkpoint_every=100,
      test_examples=256))

  # Display names in table order; `method_options[name]` holds the registry name
  # (`method_name`, default the display name) and keyword options of xai_jax.explain.
  config.methods = tuple(_QUICK_METHODS)
  config.method_options = ml_collections.ConfigDict(_QUICK_METHODS)

  config.randomization = ml_collections.ConfigDict(dict(
      modes=("cascading", "independent"), init="model", std=0.01, keep_batch_stats=True,
      layers=()))  # layers: () = every layer, from the logits down

  config.data_randomization = ml_collections.ConfigDict(dict(
      enabled=False, train_examples=256, target_accuracy=0.95, steps_per_check=64,
      max_steps=4096, batch_size=32, learning_rate=1e-3))

  config.measures = ("spearman_abs", "spearman_signed", "ssim", "hog")
  config.grid_images = 2  # images of the randomisation grids (first of the explained ones)

  if variant == "tiny":
    config.data.update(size=32, train_examples=64, num_explain=4, explain_batch_size=4)
    config.train.update(epochs=1, batch_size=16, learning_rate=3e-3, checkpoint_every=0,
                        test_examples=32)
    tiny_methods = {"gradient": {}, "gradient_abs": {"method_name": "gradient", "abs": True},
                    "guided_backprop": {}}
    config.methods = tuple(tiny_methods)
    config.method_options = ml_collections.ConfigDict(tiny_methods)
    # The same optimiser settings as the main model: one compiled training step.
    config.data_randomization.update(enabled=True, train_examples=32, steps_per_check=32,
                                     max_steps=256, batch_size=32, learning_rate=3e-3)
    config.measures = ("spearman_abs", "spearman_signed", "ssim")
    config.grid_images = 1
  elif variant == "paper":
    config.data.update(source="image_folder", size=224, num_explain=50,
                       normalize="imagenet", explain_batch_size=10)
    config.model.update(name="vgg16", num_classes=1000, checkpoint="/path/to/vgg16")
    config.methods = tuple(_PAPER_METHODS)
    config.method_options = ml_collections.ConfigDict(_PAPER_METHODS)
    config.randomization.update(init="truncated_normal", std=0.01)
    config.grid_images = 3
  config.lock()
  return config
