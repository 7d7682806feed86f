r"""Configs of the cells experiment (`xai_jax.pipelines.cells`), Tjoa & Guan (2020) on the cells.

Variants (`--config=configs/cells.py:<variant>`):

* `quick` (the README's main job): 96x96 cells, the small VGG-style CNN `small_vgg` with
  widths (8, 16, 32, 32), a base model (continuous mode, 4000 training images regenerated on
  the fly, 1200 Adam steps of batch 32 with a warm-up + cosine schedule peaking at 3e-3) and
  one branch (regular-evaluation mode with early stopping, 100 steps at 3e-4), 100 test
  images explained with 14 methods and scored with five-band (soft and clamped) and IOU/IOU*
  for both models, and with the DeepMaps pixel-removal set with delta (K = 2, 10% removal
  steps, removed pixels filled with the training split's mean RGB) for the base model.

      python -m experiments.cells --workdir=workdir/cells_quick

  Measured on a 2-core CPU: 4 min 25 s with the environment installed (a fresh clone's
  install adds 1-2 minutes), 417 s of CPU time. Test accuracy 0.97 (base) and 0.94 (branch);
  compiler rounding amplified by training moves these by a few images (0.95 / 0.91 under
  other XLA:CPU options, `xai_jax.xla`). Expected (the README's table): the random map lowest
  on Amu (0.18), Pmu, Amu_clamp and IOU, with delta_aopc about 0 (-0.005); DeepMaps,
  FullGrad and GradCAM with the highest n_lerf (0.76-0.89) and DeepMaps the lowest n_morf
  (0.16); the gradient-type maps at about 0.89 five-band accuracy (Amu). `report.md` gives
  the branches' mean test accuracy (Table I's <Acc.>) and `figures/recall_precision_points.png`
  Fig. 3 A/B/C.

* `tiny` (the tests): 32x32, a few training steps, 16 test images, 3 methods; seconds.

* `paper_alexnet`, `paper_vgg`, `paper_resnet34`: Tjoa & Guan's setting (their Table I and
  seed code, as `xai_jax.train.paper_settings` records it): AlexNet and VGG16 (both with
  their head "tjoa") at 224x224, ResNet34 at 512x512; Adam with L2 weight decay 1e-5,
  learning rate 1e-4 (AlexNet, VGG) or 1e-3 (ResNet), batch 16 / 16 / 4, continuous-mode
  epochs 16 / 4 / 2 on the 6400 training images, then 5 branches in regular-evaluation mode
  for 16 / 4 / 4 epochs (evaluate every 4 steps on one of the 8 validation shards, patience
  n_l 48 / 48 / 24, refresh fraction r_f 0.3 / 0.3 / 0.4, target 0.96); all 1600 test
  images; their eight methods with Captum's defaults (`PAPER_METHODS`: Saliency is
  |gradient|, Guided Grad-CAM at the first conv layer, GradientShap and DeepLiftShap on four
  N(0, 0.001^2) baseline images per sample) plus the random and edge reference maps;
  five-band with the soft (M = 56) and clamped (M = 41) thresholds, the clamped setting
  clipping the raw attribution as their code does
  (`--config.metric_options.five_band.clamp=paper` normalises first, as their text says).
  The TFDS dataset is built first (`data.source = "tfds"`). They fine-tuned torchvision's
  ImageNet weights; give the same start with `--config.model.init=DIR`, a folder written by
  `python -m experiments.port_weights --arch=vgg16 --out=DIR` (alexnet, vgg16, resnet34):
  every layer of the ImageNet model that fits is taken, the 10-class layer is fresh, and
  every layer is trained. Without it (the default here, where no weights can be downloaded)
  the models train from scratch, which their schedule was not made for: expect lower
  accuracy.

      python -m experiments.port_weights --arch=vgg16 --out=weights/vgg16 \
          --state_dict=vgg16-397923af.pth
      python -m experiments.cells --workdir=workdir/cells_vgg \
          --config=configs/cells.py:paper_vgg --config.model.init=weights/vgg16

  Hours on one GPU (VGG: about 1 h of training and 1-2 h of evaluation on an H100; not
  measured here: no GPU was available to the session that wrote this). Expected (their
  Table I and Fig. 3-4): mean test accuracy of the five branches 0.951 (ResNet34), 0.980
  (AlexNet), 0.986 (VGG) (`report.md` gives this mean, Table I's <Acc.>); Saliency on AlexNet
  with the highest recall in Fig. 3 A; GradCAM-type maps (Guided Grad-CAM here) low five-band
  precision; the clamped setting (Fig. 3 C, `figures/recall_precision_points.png` draws A, B
  and C) changing precision and recall most for AlexNet and VGG, not necessarily upward.

Every field can be overridden from the command line, e.g.
`--config.evaluate.num_examples=50 --config.dtype=bfloat16`. The config is checked before
anything runs (`xai_jax.pipelines.cells.validate`): unknown methods, options or metrics, a
pixel-removal step above `fraction` of the pixels or a `fraction` between two grid points (a
step of 0, or a step_fraction of 0, is unset), or too few examples for the delta (e.g. 2 on
`tiny`: an image needs delta_k = 2 partners among the other evaluated images) fail at once,
naming the field. Changing only evaluation fields
(methods, metrics, `metric_options`, `evaluate.*`, `data.num_test`, dtype) on a trained
workdir reuses its models; the new outputs go to `WORKDIR/eval_<hash>/` (see
`xai_jax.pipelines.workdir`).
"""

import ml_collections

from configs import common
from xai_jax import train

# The explainer panel of the quick run: every method of `xai_jax.explain.METHODS` that needs
# no extra data, with step counts that keep the run within minutes on a CPU.
QUICK_METHODS = {
    "gradient": {},
    "input_x_gradient": {},
    "integrated_gradients": {"steps": 16},
    "smoothgrad": {"samples": 8, "stdev_spread": 0.15},
    "gradient_shap": {"baselines": "uniform:4", "samples": 8},
    "deeplift": {},
    "guided_backprop": {},
    "deconvolution": {},
    "gradcam": {},
    "guided_gradcam": {},
    "fullgrad": {},
    "deepmaps": {},
    "random": {},
    "edge": {},
}

# Tjoa & Guan's panel (their Sec. II-C and analysis code: Saliency, Input*Gradient, DeepLift,
# GuidedBackprop, GuidedGradCam, Deconvolution, GradientShap, DeepLiftShap, each with Captum's
# defaults and the predicted class as target), plus the two model-independent reference maps
# (random, edge), which are xai_jax additions and not in their figures.
PAPER_METHODS = {
    # Captum's Saliency takes the absolute value by default (abs=True).
    "saliency": {"method_name": "gradient", "abs": True},
    "input_x_gradient": {},
    "deeplift": {},  # zero baseline, rescale rule (Captum's default)
    "guided_backprop": {},
    # Their GuidedGradCam hooks the first conv layer (`select_first_layer` of their code); the
    # layer is set per model in `get_config` (`PAPER_GUIDED_GRADCAM_LAYERS`).
    "guided_gradcam": {},
    "deconvolution": {},
    # Their baselines: 4 images of N(0, 0.001^2) noise, drawn afresh for every sample
    # (`shap_n_baseline=4`); GradientShap with Captum's n_samples=5, stdevs=0.
    "gradient_shap": {"baselines": "normal:4:0.001", "samples": 5, "stdev": 0.0},
    "deeplift_shap": {"baselines": "normal:4:0.001"},
    "random": {},
    "edge": {},
}

# The first conv layer of each paper model, where Tjoa & Guan's GuidedGradCam takes its
# Grad-CAM (`select_first_layer`: AlexNet / VGG `features[0]`, ResNet `backbone.conv1`):
# Captum hooks the conv module, so the map is computed on the conv's output before any ReLU
# (or, for ResNet, batch norm); `explain.guided_gradcam` takes a linear layer's name for that.
PAPER_GUIDED_GRADCAM_LAYERS = {
    "paper_alexnet": "features_0",
    "paper_vgg": "features_0",
    "paper_resnet34": "conv1",
}

PAPER_MODELS = {
    # variant: (model name, image size, model options)
    "paper_alexnet": ("alexnet", 224, {"head": "tjoa"}),
    "paper_vgg": ("vgg16", 224, {"head": "tjoa"}),
    "paper_resnet34": ("resnet34", 512, {"head": "tjoa"}),
}

VARIANTS = ("quick", "tiny", *PAPER_MODELS)


def _base() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  # Computation dtype of the models during evaluation (explainers and metrics run through
  # them): "float32" or "bfloat16" (for accelerators; training always runs in float32).
  config.dtype = "float32"
  config.data = ml_collections.ConfigDict(dict(
      source="generator",  # "generator" (no disk) or "tfds" (build xai_cells, then read it)
      tfds_dir="",  # TFDS data_dir for source="tfds" (default WORKDIR/tfds)
      size=96, num_train=4000, num_validation=400, num_test=100, shard_size=200))
  # init: "" trains from scratch; a folder of `experiments.port_weights` (ImageNet weights of
  # model.name's architecture) starts from its weights with a fresh 10-class head, every
  # layer trained (Tjoa & Guan's fine-tuning).
  config.model = ml_collections.ConfigDict(dict(name="small_vgg",
                                                options={"widths": (8, 16, 32, 32)}, init=""))
  config.train = ml_collections.ConfigDict(dict(
      batch_size=32,
      learning_rate=3e-3,
      schedule="cosine",  # "cosine" (warm-up then cosine decay) or "constant" (the paper)
      warmup_steps=50,
      weight_decay=0.0,
      base_epochs=9,
      base_max_steps=1200,  # 0: no limit
      num_branches=1,
      branch_learning_rate=3e-4,
      branch_epochs=1,
      branch_max_steps=100,  # per branch, 0: no limit
      eval_every=20,
      patience=4,
      refresh_fraction=0.3,
      target_accuracy=0.96,
      checkpoint_every=200,
  ))
  config.evaluate = ml_collections.ConfigDict(dict(
      models=("base", "branch_0"),
      num_examples=0,  # 0: the whole test split (data.num_test)
      shard_size=50,
      gallery_size=10,
      # Models that get the pixel-removal metrics (the costly ones: 2 (1 + delta_k) curves per
      # map); the others get five-band and IOU. Empty: every model.
      pixel_removal_models=("base",),
  ))
  config.methods = ml_collections.ConfigDict(QUICK_METHODS)
  config.metrics = ("five_band", "iou", "pixel_removal")
  config.metric_options = ml_collections.ConfigDict(dict(
      # Grid points every 10% of the pixels (step_fraction; step = 0: unset), so AOPC / AFOC
      # at 10% are grid point 1 at every image size; one grid point per forward pass (chunk 1)
      # measured fastest on a 2-core CPU for this model. fill "dataset_mean": the training
      # split's mean RGB, computed once by the pipeline (DeepMaps App. B); "batch_mean" is the
      # mean of each evaluated shard (scores then depend on the shard).
      pixel_removal=dict(fraction=0.1, step=0, step_fraction=0.1, fill="dataset_mean", chunk=1,
                         delta_k=2, score="logit"),
      iou=dict(n_std=0.5, n_std_star=1.0, abs=True),
      # clamp: where the clamped setting clips, "code" (the raw attribution, as Tjoa & Guan's
      # code) or "paper" (after normalising by max |h|, as their text).
      five_band=dict(clamp="code"),
  ))
  config.figures = True
  return config


def get_config(variant: str = "quick") -> ml_collections.ConfigDict:
  """The config of `variant` (one of `VARIANTS`)."""
  common.check_variant("cells", variant, VARIANTS)
  config = _base()
  if variant == "tiny":
    config.data.update(size=32, num_train=64, num_validation=32, num_test=16, shard_size=32)
    config.model.options = {"widths": (8, 16)}
    config.train.update(batch_size=16, base_epochs=2, base_max_steps=6, branch_max_steps=4,
                        eval_every=2, checkpoint_every=0, warmup_steps=2)
    config.evaluate.update(shard_size=8, gallery_size=4, pixel_removal_models=())
    config.methods = ml_collections.ConfigDict({
        "gradient": {}, "integrated_gradients": {"steps": 4}, "random": {}})
    config.metric_options.pixel_removal.update(chunk=4)
  elif variant in PAPER_MODELS:
    name, size, options = PAPER_MODELS[variant]
    paper = train.paper_settings(name)  # Tjoa & Guan's hyperparameters for this family
    config.data.update(source="tfds", size=size, num_train=6400, num_validation=1600,
                       num_test=1600)
    config.model.name = name
    config.model.options = options
    config.train.update(
        batch_size=paper["batch_size"], learning_rate=paper["learning_rate"],
        schedule="constant", warmup_steps=0, weight_decay=paper["weight_decay"],
        base_epochs=paper["epochs_continuous"], base_max_steps=0,
        num_branches=paper["num_branches"], branch_learning_rate=paper["learning_rate"],
        branch_epochs=paper["epochs_regular"], branch_max_steps=0,
        eval_every=paper["eval_every"], patience=paper["patience"],
        refresh_fraction=paper["refresh_fraction"], target_accuracy=paper["target_accuracy"],
        checkpoint_every=500)
    config.evaluate.update(models=("base", *(f"branch_{i}" for i in range(5))),
                           shard_size=16 if size == 224 else 4)
    methods = {name: dict(options) for name, options in PAPER_METHODS.items()}
    methods["guided_gradcam"]["layer"] = PAPER_GUIDED_GRADCAM_LAYERS[variant]
    config.methods = ml_collections.ConfigDict(methods)
    config.metrics = ("five_band", "iou")
  return config
