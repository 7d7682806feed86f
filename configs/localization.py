r"""Configs of `xai_jax.pipelines.localization`: IOU / IOU* of Gattas (2020).

Variants (`--config=configs/localization.py:<variant>`):

* `quick` (default): the synthetic cells at 48x48, the small CNN `cnn` trained here for 300
  Adam steps on 2560 cells (resumable), 200 test cells explained by 10 methods, masks = the
  non-zero region of the ground-truth heatmap (cell body and its distinguishing feature).

      python -m experiments.localization --workdir=workdir/localization_quick

  Measured: 295 s on a 2-core CPU shared with ~3 other jobs (load 7; training ~170 s,
  explaining and scoring ~120 s); roughly 2 minutes on an idle machine (estimate). A rerun in
  the same workdir resumes and takes seconds. Measured numbers (seed 0; test accuracy of the
  CNN on the 200 images 0.53; 58 of 200 predictions with softmax > 0.9):

    method                iou    iou_star        method                iou    iou_star
    deeplift              0.345  0.086           guided_backprop       0.248  0.080
    guided_gradcam        0.345  0.080           gradient              0.227  0.070
    integrated_gradients  0.334  0.081           edge                  0.205  0.126
    input_x_gradient      0.329  0.073           smoothgrad            0.168  0.062
    gradcam               0.269  0.152           random                0.105  0.066

  i.e. every method localises the cell better than the random map (IOU 0.105), DeepLIFT and
  the attribution methods highest on IOU, the coarse Grad-CAM highest on IOU* (its strong
  values sit on the cell); as in the thesis, standard deviations are large (0.1-0.25).

* `tiny` (the tests): 32x32, a few training steps, 8 test cells, 2 methods; seconds.

* `paper`: Gattas' setting: a torchvision VGG16 (port the ImageNet weights once with
  `python -m experiments.port_weights --arch=vgg16 --out=/ckpt/vgg16`), 224x224 images
  (torchvision's resize 256 + centre crop 224, ImageNet normalisation), masks from the
  Pascal-VOC-format bounding-box XMLs (the ILSVRC 2012 validation boxes, which the thesis
  used, or Pascal VOC itself), 1000 images, his panel as far as `xai_jax.explain` has it
  (DeepLIFT, GradientSHAP for SHAP, Grad-CAM and guided Grad-CAM; LIME is not implemented),
  plus the gradient and a random map; IOU at 0.5 std, IOU* at 1.0 std; split at softmax 0.9.

      python -m experiments.localization --workdir=workdir/localization_paper \
          --config=configs/localization.py:paper --config.model.checkpoint=/ckpt/vgg16 \
          --config.data.image_folder=/data/ILSVRC2012/val \
          --config.data.annotations_dir=/data/ILSVRC2012/val_xml \
          --config.data.class_names_file=/data/imagenet_wnids.txt

  Minutes on one GPU, an hour or more on a CPU (not measured: no GPU in the session that
  wrote this). Expected (thesis Fig. 4.1 and Table 4.1, VGG16): IOU of order 0.2-0.4 and IOU*
  of order 0.05-0.1 for every method, similar for high and low confidence, standard
  deviations about 0.09-0.15 (IOU) and about 0.01 (IOU*) for SHAP, DeepLIFT and Grad-CAM;
  Grad-CAM scoring lower than DeepLIFT.

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

VARIANTS = ("quick", "tiny", "paper")

QUICK_METHODS = {
    "gradient": {},
    "input_x_gradient": {},
    "integrated_gradients": {"steps": 16},
    "smoothgrad": {"samples": 8, "stdev_spread": 0.15},
    "deeplift": {},
    "guided_backprop": {},
    "gradcam": {},
    "guided_gradcam": {},
    "random": {},
    "edge": {},
}

PAPER_METHODS = {
    "deeplift": {},
    "gradient_shap": {"baselines": "uniform:4", "samples": 16},
    "gradcam": {},
    "guided_gradcam": {},
    "gradient": {},
    "random": {},
}


def get_config(variant: str = "quick") -> ml_collections.ConfigDict:
  """The locked config of `variant` (one of `VARIANTS`).

  Raises:
    ValueError: an unknown variant, listing the valid ones.
  """
  common.check_variant("localization", variant, VARIANTS)
  config = common.image_experiment(variant, num_examples=200)
  config.methods = ml_collections.ConfigDict(QUICK_METHODS)
  config.iou = ml_collections.ConfigDict(dict(n_std=0.5, n_std_star=1.0, abs=True))
  config.confidence_threshold = 0.9
  config.evaluate = ml_collections.ConfigDict(dict(shard_size=50, gallery_size=10))
  config.figures = True
  if variant == "tiny":
    common.shrink_to_tiny(config)
    config.evaluate.update(shard_size=4, gallery_size=2)
  elif variant == "paper":
    config.model_name = "vgg16"
    config.data.update(source="image_folder", split="validation", size=224, num_examples=1000,
                       crop="center", normalize="imagenet")
    config.model.update(name="vgg16", num_classes=1000, checkpoint="/path/to/vgg16")
    config.methods = ml_collections.ConfigDict(PAPER_METHODS)
    config.evaluate.update(shard_size=16, gallery_size=10)
  config.lock()
  return config
