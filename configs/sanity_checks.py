r"""Sanity checks for saliency maps (Adebayo et al., NeurIPS 2018): cells, ImageNet, MNIST.

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

* "paper": Adebayo et al.'s ImageNet setting with VGG16 in place of Inception v3 (for
  Inception v3 itself see "paper_inception"): torchvision's ImageNet VGG16 weights from an orbax
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

* "paper_inception": the paper's own ImageNet model, Inception v3 (Figs. 1-4, 16-21): ported
  torchvision weights (`python -m experiments.port_weights --arch=inception_v3
  --out=/ckpt/inception_v3`, needs internet once), 299x299 images (resize 342, centre crop),
  in [-1, 1] ("inception" normalisation: the checkpoint then runs without its
  `transform_input`, same logits), the same eight methods, the 17 phases of their cascading
  randomisation (`layer_order`: logits `fc`, Mixed_7c ... Conv2d_1a_3x3), truncated normal
  std 0.01:

    python -m experiments.sanity_checks --workdir=/tmp/sanity_inception \
        --config=configs/sanity_checks.py:paper_inception \
        --config.model.checkpoint=/ckpt/inception_v3 --config.data.image_folder=/data/imagenet50

  or from TFDS (prepared once with TensorFlow: `tfds build imagenet2012
  --manual_dir=DIR_WITH_ILSVRC_TARS --data_dir=/data/tfds --file_format=array_record`):
  `--config.data.source=tfds --config.data.tfds_name=imagenet2012
  --config.data.tfds_dir=/data/tfds` (split `validation`, the first 50 images).
  Not measured; estimated at 1-2 hours on one GPU (50 images x 8 methods x 34 stages).
  Compare with Figs. 2-4 and 11/12 (ImageNet panels): the same ordering as described for
  "paper" above; their calibration (appendix): gradient vs a random Gaussian mask gives
  about 0 on all four measures. torchvision's weights score 77.3% top-1 / 93.5% top-5 (the
  paper's TF-slim weights: 93.9% top-5).

* "paper_mnist", "paper_fashion_mnist" (the CNN) and "paper_mnist_mlp",
  "paper_fashion_mnist_mlp" (the MLP), `xai_jax.models.small`: trained here on TFDS's
  `mnist` / `fashion_mnist` (prepared once as array_record, see `xai_jax.data.mnist`), 20,000
  Adam steps of 50 at 1e-4 (CNN weight decay 0.001), then cascading and independent
  randomisation (truncated normal std 0.01) and the data-randomisation test: the same
  architecture trained on the permuted 60,000 training labels until > 95% training
  accuracy; 100 test images explained, Spearman with and without absolute values (the paper
  computes SSIM and HOG only on ImageNet); the MLP panel lacks Grad-CAM / guided Grad-CAM:

    python -m experiments.sanity_checks --workdir=/tmp/sanity_mnist \
        --config=configs/sanity_checks.py:paper_mnist --config.data.tfds_dir=/data/tfds

  Not measured (the data cannot be downloaded where this was written); estimated at a few
  minutes on one GPU for the true-label model and up to an hour for the permuted labels
  (at most `data_randomization.max_steps` = 400,000 steps, checked every 2,000), hours on a
  CPU. Expected: MNIST test accuracy 0.992 (CNN) and 0.987 (MLP) (appendix; none given for
  Fashion-MNIST); the permuted-label model at chance (about 0.1) on the test set
  (`model.json`: `test_accuracy_true_labels`). Compare with Fig. 3 (CNN on Fashion-MNIST,
  MLP on MNIST), Figs. 11/12 and 22-25 (cascading / independent): the gradient, SmoothGrad,
  VarGrad and Grad-CAM lose their similarity as soon as the top layers are re-initialised,
  guided backprop and guided Grad-CAM keep it; integrated gradients and input x gradient
  keep their absolute-value structure (for the MLP on MNIST they coincide). Data
  randomisation, Fig. 5 (CNN on MNIST, MLP Spearman bars) and Figs. 13-15: gradient and
  SmoothGrad change substantially, guided backprop still highlights the digit, integrated
  gradients and input x gradient keep the input's structure but change sign.

`xai_jax.pipelines.sanity_checks.check_config` checks the whole config (methods and their options,
measures, modes, data, model) before anything is trained; a refused config writes nothing.
On a trained workdir, changing only evaluation fields (methods, measures, randomisation,
images explained, ...) reuses the trained models (`train/`, `train_random_labels/`) and writes
the new outputs to `WORKDIR/eval_<hash>/`; other training fields are refused.
"""

import ml_collections

from configs import common

VARIANTS = ("quick", "tiny", "paper", "paper_inception", "paper_mnist", "paper_mnist_mlp",
            "paper_fashion_mnist", "paper_fashion_mnist_mlp")

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
# The MLP has no spatial activation: no Grad-CAM, no guided Grad-CAM (their Figs. 13, 15,
# 24, 25 show the MLP without them).
_MLP_METHODS = {name: options for name, options in _PAPER_METHODS.items()
                if name not in ("gradcam", "guided_gradcam")}

# MNIST / Fashion-MNIST (`xai_jax.models.small`): Adam for 20,000 steps, weight decay 0.001
# on the CNN's weights; batches of 50 and learning rate 1e-4 from TensorFlow's "Deep MNIST"
# tutorial, whose CNN, step count and 99.2% test accuracy the appendix repeats.
_MNIST_VARIANTS = {  # variant: (TFDS name, model)
    "paper_mnist": ("mnist", "cnn"), "paper_mnist_mlp": ("mnist", "mlp"),
    "paper_fashion_mnist": ("fashion_mnist", "cnn"),
    "paper_fashion_mnist_mlp": ("fashion_mnist", "mlp"),
}
_MNIST_STEPS = 20_000
_MNIST_BATCH = 50
_MNIST_LEARNING_RATE = 1e-4
_MNIST_WEIGHT_DECAY = {"cnn": 1e-3, "mlp": 0.0}


def get_config(variant: str = "quick") -> ml_collections.ConfigDict:
  """The configuration of a variant (one of `VARIANTS`), locked.

  Raises:
    ValueError: an unknown variant (listing the valid ones).
  """
  common.check_variant("sanity_checks", variant, VARIANTS)
  config = ml_collections.ConfigDict()
  config.variant = variant
  config.seed = 0

  # Images. source: "cells" (xai_jax.data.cell_source.source), "image_folder" (JPEG/PNG
  # files of `image_folder` and its immediate subfolders) or "tfds" (a prepared TFDS dataset
  # `tfds_name` under `tfds_dir`, "" for TFDS's default: "mnist" / "fashion_mnist" through
  # xai_jax.data.mnist, trainable here; image datasets such as "imagenet2012" through
  # xai_jax.data.images.TfdsImageSource). explain_split: the cells' split, or the TFDS split
  # explained (and where a model trained here is tested); train_split: the TFDS split trained
  # on. crop: "center" (torchvision's resize to size / 0.875 and centre crop) or "resize"
  # (squash), for image folders and TFDS images (MNIST is used at 28x28 as it is).
  # normalize: "none" ([0, 1]), "imagenet" (torchvision's mean / std) or "inception" ([-1, 1]).
  config.data = ml_collections.ConfigDict(dict(
      source="cells", size=48, train_examples=2560, num_explain=16, explain_split="test",
      train_split="train", image_folder="", tfds_name="", tfds_dir="", crop="center",
      normalize="none", explain_batch_size=16))

  # checkpoint: a folder written by `xai_jax.models.port.save` (its model.json names the
  # architecture); empty: train `name` from scratch in WORKDIR/train.
  config.model = ml_collections.ConfigDict(dict(name="cnn", num_classes=10, checkpoint=""))

  config.train = ml_collections.ConfigDict(dict(
      # checkpoint_every: steps between checkpoints in WORKDIR/train (0: only at the end);
      # max_steps: stop after that many steps (0: run all epochs).
      epochs=4, max_steps=0, batch_size=32, learning_rate=1e-3, weight_decay=0.0,
      checkpoint_every=100, test_examples=256))

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
  elif variant in ("paper", "paper_inception"):
    config.data.update(source="image_folder", size=224, num_explain=50, crop="center",
                       normalize="imagenet", explain_batch_size=10, explain_split="validation")
    config.model.update(name="vgg16", num_classes=1000, checkpoint="/path/to/vgg16")
    config.methods = tuple(_PAPER_METHODS)
    config.method_options = ml_collections.ConfigDict(_PAPER_METHODS)
    config.randomization.update(init="truncated_normal", std=0.01)
    config.grid_images = 3
    if variant == "paper_inception":
      # 299x299 (torchvision: resize 342, centre crop 299) in [-1, 1], the input of the
      # TF-slim weights the paper explains (a ported torchvision checkpoint then runs without
      # its transform_input: `pipelines.sanity_checks.load_checkpoint`).
      config.data.update(size=299, normalize="inception")
      config.model.update(name="inception_v3", checkpoint="/path/to/inception_v3")
  elif variant in _MNIST_VARIANTS:
    dataset, model = _MNIST_VARIANTS[variant]
    config.data.update(source="tfds", tfds_name=dataset, size=28, train_examples=60_000,
                       num_explain=100, explain_split="test", train_split="train",
                       normalize="none", explain_batch_size=50)
    config.model.update(name=model, num_classes=10)
    config.train.update(epochs=-(-_MNIST_STEPS * _MNIST_BATCH // 60_000),
                        max_steps=_MNIST_STEPS, batch_size=_MNIST_BATCH,
                        learning_rate=_MNIST_LEARNING_RATE,
                        weight_decay=_MNIST_WEIGHT_DECAY[model], checkpoint_every=2000,
                        test_examples=10_000)
    methods = _PAPER_METHODS if model == "cnn" else _MLP_METHODS
    config.methods = tuple(methods)
    config.method_options = ml_collections.ConfigDict(methods)
    config.randomization.update(init="truncated_normal", std=0.01)
    # Permuted labels of the whole training set, trained the same way (no weight decay)
    # until > 95% training accuracy (Sec. 4).
    config.data_randomization.update(
        enabled=True, train_examples=60_000, target_accuracy=0.95, steps_per_check=2000,
        max_steps=400_000, batch_size=_MNIST_BATCH, learning_rate=_MNIST_LEARNING_RATE)
    # Spearman only: the paper computes SSIM and HOG on ImageNet alone (and HOG needs maps
    # of at least 48x48 pixels).
    config.measures = ("spearman_abs", "spearman_signed")
    config.grid_images = 3
  config.lock()
  return config
