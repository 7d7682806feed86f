r"""Configs of `xai_jax.pipelines.localization`: IOU / IOU* of Gattas (2020).

Variants (`--config=configs/localization.py:<variant>`):

* `quick` (default): the synthetic cells at 48x48, the small CNN `cnn` trained here for 300
  Adam steps on 2560 cells (resumable), 200 test cells explained by Gattas' panel
  (`THESIS_PANEL` with fewer samples, `QUICK_METHODS`) and a random map, masks = the non-zero
  region of the ground-truth heatmap (cell body and its distinguishing feature); IOU at 0.5
  std, IOU* at 1 std, high confidence = softmax > 0.9.

      python -m experiments.localization --workdir=workdir/localization_quick

  The thesis' alternative thresholds (its Appendix C: 1 std for IOU, 2 std for IOU*) are an
  override, `--config.iou.n_std=1 --config.iou.n_std_star=2` (a new `eval_<hash>` folder of
  the same workdir, the model reused).

  Measured: 135 s on a 2-core CPU shared with other jobs (training ~65 s, the five methods on
  200 cells ~70 s); a rerun in the same workdir resumes and takes seconds. Measured numbers
  (seed 0; test accuracy of the CNN on the 200 images 0.54; 50 of 200 predictions with
  softmax > 0.9), mean +- std:

    method          IOU high       IOU low        IOU all        IOU* high      IOU* low
    deeplift        0.289 +- 0.267 0.370 +- 0.196 0.350 +- 0.218 0.096 +- 0.087 0.079 +- 0.040
    guided_gradcam  0.302 +- 0.232 0.351 +- 0.158 0.339 +- 0.180 0.079 +- 0.073 0.073 +- 0.045
    layer_shap      0.260 +- 0.200 0.270 +- 0.124 0.268 +- 0.146 0.054 +- 0.049 0.044 +- 0.029
    lime            0.134 +- 0.114 0.191 +- 0.147 0.177 +- 0.142 0.130 +- 0.116 0.194 +- 0.164
    random          0.067 +- 0.041 0.117 +- 0.053 0.104 +- 0.055 0.042 +- 0.026 0.073 +- 0.033

  i.e. as the thesis' Fig. 4.1: every method above the random map, DeepLIFT highest on IOU
  with SHAP and Guided Grad-CAM close, LIME highest on IOU* (its superpixels carry one value
  each) and least consistent; high and low confidence alike within a standard deviation.

* `tiny` (the tests): 32x32, a few training steps, 8 test cells, the same panel with a handful
  of samples (`TINY_METHODS`); seconds.

* `paper`: Gattas' setting: a torchvision VGG16 (port the ImageNet weights once with
  `python -m experiments.port_weights --arch=vgg16 --out=/ckpt/vgg16`), 224x224 images
  (torchvision's resize 256 + centre crop 224, ImageNet normalisation), masks from the
  Pascal-VOC-format bounding-box XMLs (the ILSVRC 2012 validation boxes, which the thesis
  used), 1000 images, his panel (`THESIS_PANEL`, thesis sections 3.5-3.7): Guided Grad-CAM
  at the last conv layer, DeepLIFT (rescale rule, black-image reference), SHAP = expected
  gradients at that layer (shap's `GradientExplainer`, 200 samples, 100 training images as
  its background) summed over channels, upsampled and multiplied by guided backprop, LIME
  (the lime package's defaults: quickshift superpixels, 1000 samples, ridge surrogate)
  painted onto its superpixels; plus a random map as the floor. IOU at 0.5 std, IOU* at 1
  std, split at softmax 0.9.

      python -m experiments.localization --workdir=workdir/localization_paper \
          --config=configs/localization.py:paper --config.model.checkpoint=/ckpt/vgg16 \
          --config.data.image_folder=/data/ILSVRC2012/val \
          --config.data.annotations_dir=/data/ILSVRC2012/val_xml \
          --config.data.class_names_file=/data/imagenet_wnids.txt \
          --config.data.reference_folder=/data/ILSVRC2012/train_sample

  Not measured (no GPU in the session that wrote this): LIME's 1000 VGG16 forward passes and
  layer SHAP's 200 samples dominate, of order 10-20 minutes on one H100 and many hours on a
  CPU. Expected (thesis Fig. 4.1 and Table 4.1, VGG16, 1000 images): IOU of order 0.2-0.4
  and IOU* of order 0.05-0.1 for every method, similar for high and low confidence; SHAP
  and DeepLIFT close on IOU, LIME highest on IOU*, Grad-CAM lower; standard deviations
  (Table 4.1, high p / low p): IOU LIME 0.145 / 0.122, SHAP 0.089 / 0.085, DeepLIFT 0.112 /
  0.118, Grad-CAM 0.109 / 0.105; IOU* LIME 0.052 / 0.055, SHAP 0.010 / 0.008, DeepLIFT
  0.012 / 0.011, Grad-CAM 0.012 / 0.012.

* `paper_appendix_c`: `paper` on 300 images with the alternative thresholds, 1 std for IOU
  and 2 std for IOU* (thesis Appendix C: "comparatively identical results" to Fig. 4.1).

* `paper_inception`: Gattas' second model, Inception v3 at 299x299 (torchvision's resize
  342 + centre crop 299, ImageNet normalisation; port its weights once with
  `python -m experiments.port_weights --arch=inception_v3 --out=/ckpt/inception_v3`, which
  records torchvision's `transform_input`), the same panel at its last Inception block
  (`Mixed_7c`), the same masks, thresholds and split.

      python -m experiments.localization --workdir=workdir/localization_inception \
          --config=configs/localization.py:paper_inception \
          --config.model.checkpoint=/ckpt/inception_v3 \
          --config.data.image_folder=/data/ILSVRC2012/val \
          --config.data.annotations_dir=/data/ILSVRC2012/val_xml \
          --config.data.class_names_file=/data/imagenet_wnids.txt \
          --config.data.reference_folder=/data/ILSVRC2012/train_sample

  Not measured (no GPU here); an Inception v3 forward pass at 299 costs about a third of
  VGG16's at 224 (5.7 vs 15.5 GFLOPs), so expect well under the `paper` time. The thesis
  gives no Inception IOU numbers (its section 4.2.2 is empty; its SHAP failed on Inception
  v3, section 4.1.3), only qualitative ones to compare with: DeepLIFT "performed strongly on
  VGG16 but poorly on more complex architectures" (blamed on its DeepLIFT implementation,
  which could not handle Inception's modules; this DeepLIFT goes through the model contract
  and has no such limit), SHAP and Grad-CAM "slightly worse on IOU but better on more
  complicated architectures". Its Fig. 4.2 gives the cost: Guided Grad-CAM over 6000 s per
  100 Inception v3 explanations on a GTX 1080 (about 200 s without guided backprop); see
  `configs/timing.py` for that measurement here.

Every field can be overridden from the command line (the config is locked, so a misspelt
field fails).
`xai_jax.pipelines.localization.validate` checks the whole config before any data is read or a
model trained (methods and their options, IOU options, data, model, shards); a refused config
writes nothing. On a workdir whose model was trained here, changing only evaluation fields
reuses the model and writes the new outputs to `WORKDIR/eval_<hash>/`; other training fields
are refused (see `xai_jax.pipelines.workdir`).
"""

import ml_collections

from configs import common

VARIANTS = ("quick", "tiny", "paper", "paper_appendix_c", "paper_inception")

THESIS_PANEL = {
    # Gattas sec. 3.5/3.7: Guided Grad-CAM at the final conv layer (the model's default
    # Grad-CAM layer, `taps.default_gradcam_layer`).
    "guided_gradcam": {},
    # DeepLIFT's rescale rule with the authors' default reference, the black image (sec. 2).
    "deeplift": {"baseline": "zeros"},
    # SHAP: shap's GradientExplainer at the Grad-CAM layer (nsamples 200, its default),
    # background = training images, times guided backprop (sec. 3.7).
    "layer_shap": {"guided": True, "background": "train:100", "samples": 200},
    # LIME: the lime package's LimeImageExplainer defaults (quickshift, 1000 samples, kernel
    # width 0.25, ridge), the superpixel weights painted onto the superpixels (sec. 3.7).
    "lime": {"reference": "lime", "feature_mask": "quickshift", "samples": 1000},
    # Not in the thesis: the floor every method should beat.
    "random": {},
}

QUICK_METHODS = {
    **THESIS_PANEL,
    "layer_shap": {"guided": True, "background": "train:32", "samples": 32},
    "lime": {"reference": "lime", "feature_mask": "quickshift", "samples": 100},
}

TINY_METHODS = {
    **THESIS_PANEL,
    "layer_shap": {"guided": True, "background": "train:4", "samples": 4},
    "lime": {"reference": "lime", "feature_mask": "quickshift", "samples": 8},
}

THRESHOLDS = {"n_std": 0.5, "n_std_star": 1.0}
"""Thesis Fig. 4.1: 0.5 std for IOU, 1 std for IOU*."""
ALTERNATIVE_THRESHOLDS = {"n_std": 1.0, "n_std_star": 2.0}
"""Thesis Appendix C: 1 std for IOU, 2 std for IOU*."""
HIGH_CONFIDENCE = 0.9
"""Thesis sec. 4.2.1: high confidence is a softmax output p > 0.9."""


def get_config(variant: str = "quick") -> ml_collections.ConfigDict:
  """The locked config of `variant` (one of `VARIANTS`).

  Raises:
    ValueError: an unknown variant, listing the valid ones.
  """
  common.check_variant("localization", variant, VARIANTS)
  config = common.image_experiment(variant, num_examples=200)
  config.methods = ml_collections.ConfigDict(QUICK_METHODS)
  config.iou = ml_collections.ConfigDict(dict(**THRESHOLDS, abs=True))
  config.confidence_threshold = HIGH_CONFIDENCE
  config.evaluate = ml_collections.ConfigDict(dict(shard_size=50, gallery_size=10))
  config.figures = True
  if variant == "tiny":
    common.shrink_to_tiny(config)
    config.methods = ml_collections.ConfigDict(TINY_METHODS)
    config.evaluate.update(shard_size=4, gallery_size=2)
  elif variant.startswith("paper"):
    inception = variant == "paper_inception"
    config.model_name = "inception_v3" if inception else "vgg16"
    config.data.update(source="image_folder", split="validation", size=299 if inception else 224,
                       num_examples=1000, crop="center", normalize="imagenet")
    config.model.update(name=config.model_name, num_classes=1000,
                        checkpoint=f"/path/to/{config.model_name}")
    config.methods = ml_collections.ConfigDict(THESIS_PANEL)
    config.evaluate.update(shard_size=8 if inception else 16, gallery_size=10)
    if variant == "paper_appendix_c":
      config.data.num_examples = 300
      config.iou.update(**ALTERNATIVE_THRESHOLDS)
  config.lock()
  return config
