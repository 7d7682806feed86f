r"""Configs of `xai_jax.pipelines.pixel_removal`: the DeepMaps pixel-removal protocol.

Variants (`--config=configs/pixel_removal.py:<variant>`):

* `quick` (default): the synthetic cells at 48x48, the small CNN `cnn` trained here for 300
  Adam steps on 2560 cells (resumable), 100 test cells, DeepMaps' panel as the paper
  defines each method (`METHODS`: random map, GRADIENTS = sum_phi |df/dx_phi|, signed input x
  gradient, Grad-CAM with its ReLU, FullGrad as their Eq. 4, DeepMaps over the paper's
  layers of the architecture, `explain.deepmaps_layers`), MoRF and LeRF curves to 100% in
  steps of 46 pixels (2% of the pixels; 10% is grid point 5), fill = per-channel mean of the
  evaluated batch ("batch_mean"; "dataset_mean" is the training cells' mean), AOPC / AFOC at
  10%, delta against K = 2 other images' maps.

      python -m experiments.pixel_removal --workdir=workdir/pixel_removal_quick

  Measured: 567 s (332 s of CPU time) on a 2-core CPU shared with other jobs (load 5-8;
  training ~100 s, the 6 methods x 2 orders x 51 grid points x 3 maps (own + 2 delta
  partners) ~440 s); about 2-3 minutes on an idle machine (estimate). A rerun in the same
  workdir takes seconds. Measured numbers (seed 0; test accuracy of the CNN on the 100 images
  0.53), with each method's options as the paper defines it (`METHODS`):

    method            aopc   afoc_lerf  n_morf  n_lerf  delta_aopc  delta_n_morf
    random            0.45   0.48       0.327   0.328    0.009      -0.005
    gradient          2.13   0.48       0.130   0.498    1.26       -0.125
    input_x_gradient  2.79   0.85       0.144   0.509    1.97       -0.158
    gradcam           1.44   0.37       0.115   0.438    0.60       -0.147
    fullgrad          1.24   0.38       0.183   0.377    0.50       -0.097
    deepmaps          1.17   0.50       0.155   0.373    0.31       -0.127

  On the same trained model, the options used before (signed gradient; Grad-CAM without its
  ReLU, nearest upsampling; FullGrad normalised per site; DeepMaps over the input map and every
  ReLU map) gave: gradient 1.71 / 0.93 / 0.258 / 0.233 / 0.85 / -0.017 (n_lerf ~ n_morf: LeRF
  removed the strongly negative, important pixels first), gradcam 1.37 / 0.42 / 0.120 / 0.450
  / 0.58 / -0.150, fullgrad 1.80 / 0.37 / 0.144 / 0.375 / 1.03 / -0.121, deepmaps 1.97 / 0.49
  / 0.108 / 0.388 / 1.13 / -0.172 (random and input x gradient unchanged). As in DeepMaps: the
  random map needs the most pixels removed to change the decision (n_morf 0.33) and scores
  delta ~0 on every metric; every other map flips the decision with less than half of that.
  On this two-conv-layer CNN the paper's DeepMaps set (the two conv ReLUs, without the input
  map) and FullGrad's per-feature-map Psi score below Grad-CAM and the gradient on MoRF;
  input x gradient looks strong on n_morf and AOPC (the artefact DeepMaps appendix C.1
  discusses).

  The appendix-C statistics of the same run (`stats/`; recomputed from `samples.csv` in
  0.8 s): Krippendorff's interval alpha of the rankings of all 6 methods, mean over 50 draws
  of 50 of the 100 images: aopc 0.61, afoc_morf 0.36, afoc_lerf 0.08, n_morf 0.24, n_lerf
  0.06, delta_aopc 0.50, delta_afoc_morf 0.25, delta_afoc_lerf 0.01, delta_n_morf 0.11,
  delta_n_lerf 0.05 (ordinal: the same to 0.01; the levels differ only where a metric ties
  methods). Wilcoxon, DeepMaps vs random: aopc 3e-10, n_morf 4e-8, afoc_morf 1e-5,
  delta_n_morf 3e-5, delta_afoc_morf 0.03, n_lerf 0.86. Spearman on the random map (metrics
  oriented larger-is-better, as the paper): n_morf vs n_lerf -0.94, afoc_morf vs afoc_lerf
  -0.90, |rho| <= 0.3 for every pair with a delta (DeepMaps Fig. 11's picture).

* `tiny` (the tests): 32x32, a few training steps, 8 test cells, 2 methods; seconds.

* `paper` (VGG16) and `paper_resnet50`: DeepMaps section 4: torchvision's ImageNet weights
  (port them once: `python -m experiments.port_weights --arch=vgg16 --out=/ckpt/vgg16`), the
  ImageNet validation images of classes 0..99, 50 each (5000), at 224x224 (resize 256,
  centre crop 224, ImageNet normalisation), removal fill = the ImageNet mean RGB (0 after
  normalisation), steps of 0.5% of the pixels (`step_fraction=0.005`: grid point k removes
  round(k * 0.005 * 50176) pixels, so 10% is grid point 20, 5018 pixels), AOPC / AFOC at 10%,
  delta with K = 5. Images
  from a folder laid out `val/<wnid>/<image>` (the usual ImageNet layout; sorted wnids are
  the class order), or from a prepared TFDS `imagenet2012` with `--config.data.source=tfds
  --config.data.tfds_dir=DIR` (labels are scanned once to select the classes).

      python -m experiments.pixel_removal --workdir=workdir/pixel_removal_vgg16 \
          --config=configs/pixel_removal.py:paper --config.model.checkpoint=/ckpt/vgg16 \
          --config.data.image_folder=/data/imagenet/val

  Hours on one GPU (5000 images x 6 methods x 2 orders x 200 grid points x 6 maps with the
  delta partners; not measured: no GPU in the session that wrote this). Expected (DeepMaps
  Fig. 4, 6, 7 for VGG16): random removal needs about 20% of the pixels to change the
  decision (n_morf of the random map ~0.2), DeepMaps about 10%, Grad-CAM and FullGrad about
  12-14%; DeepMaps allows about 60% LeRF removal (n_lerf ~0.6); delta_n_morf about 0 for the
  random map, about -0.1 for the gradient and about -0.2 for DeepMaps; DeepMaps wins the
  pairwise comparisons on every metric except delta_afoc_lerf.

Every variant also writes DeepMaps' appendix-C statistics (`stats/`, `figures/wilcoxon.png`,
`alpha.png`, `spearman.png`; their Fig. 9-11 for VGG16 and 16-18 for ResNet-50): Wilcoxon
p-values between the methods per metric, Krippendorff's alpha of the per-image method
rankings (all methods and without random; `statistics`: the paper's 50 draws of 500 images
for `paper*`, 50 draws of 50 of the 100 images for `quick`, 5 of 4 for `tiny`; level
`alpha_level`, "interval" as the paper) and Spearman correlations between the metrics per
method. They are recomputed from `samples.csv` on every run, deterministically given `seed`.

Every field can be overridden from the command line (the config is locked).
`xai_jax.pipelines.pixel_removal.validate` checks the whole config before any data is read or a
model trained (methods and their options; `pixel_removal.step` at most `fraction` of the
pixels and `fraction` a grid point; more evaluated images than `delta_k`); a refused config
writes
nothing. On a workdir whose model was trained here, changing only evaluation fields reuses
the model and writes the new outputs to `WORKDIR/eval_<hash>/`; other training fields are
refused (see `xai_jax.pipelines.workdir`).
"""

import ml_collections

from configs import common

VARIANTS = ("quick", "tiny", "paper", "paper_resnet50")

# DeepMaps' panel (their Fig. 6), each method as Grabska-Barwinska et al. (2021) define it;
# the runner sums attributions over channels into the map that orders the pixels.
METHODS = {
    "random": {},
    # GRADIENTS, their Sec. 2.1: s_ij = sum_phi |df_c / dx_ij phi|. The signed gradient would
    # let LeRF remove strongly negative (important) pixels first.
    "gradient": {"abs": True},
    # gradient x input, their Eq. 1: a_ij = sum_phi x_ij phi df_c / dx_ij phi (signed).
    "input_x_gradient": {},
    # GRADCAM (Selvaraju et al.): ReLU(sum_k alpha_k A^k) at the last conv block, upsampled
    # bilinearly.
    "gradcam": {"relu": True, "upsample": "bilinear"},
    # FULLGRAD as their Eq. 4 writes it: Psi (Eq. 5) of every feature map of every bias site
    # (their appendix D), not of each site's whole C x H x W tensor (idiap's code).
    "fullgrad": {"normalization": "feature_map"},
    # DEEPMAPS, Eq. 8 over the paper's layers: VGG16's 13 conv ReLUs, ResNet-50's stem ReLU and
    # 16 bottleneck outputs (appendix F), no input map (`explain.deepmaps_layers`).
    "deepmaps": {"layers": "paper"},
}


def get_config(variant: str = "quick") -> ml_collections.ConfigDict:
  """The locked config of `variant` (one of `VARIANTS`).

  Raises:
    ValueError: an unknown variant, listing the valid ones.
  """
  common.check_variant("pixel_removal", variant, VARIANTS)
  config = common.image_experiment(variant, num_examples=100)
  config.methods = ml_collections.ConfigDict(METHODS)
  # fill (a string): "batch_mean" (the mean of each evaluated shard), "dataset_mean" (the
  # training split's mean RGB, computed once: cells only), "imagenet_mean" (the ImageNet
  # training mean, 0 with ImageNet normalisation), "image_mean", "blur", a number ("0") or
  # per-channel numbers ("0.5,0.4,0.3").
  # The grid: step (pixels per grid point) or step_fraction (grid point k removes
  # round(k * step_fraction * P) pixels); 0 is unset, both 0: step_fraction 0.005. `fraction`
  # must be a grid point: step 46 puts 10% of 48x48 (230 pixels) at grid point 5.
  config.pixel_removal = ml_collections.ConfigDict(dict(
      fraction=0.1, step=46, step_fraction=0.0, fill="batch_mean", chunk=8, delta_k=2,
      score="logit"))
  config.evaluate = ml_collections.ConfigDict(dict(shard_size=50, gallery_size=0))
  # DeepMaps appendix C (stats/ and Fig. 9-11): Krippendorff's alpha of the per-image method
  # rankings is the mean over alpha_draws draws of alpha_images images, each drawn without
  # replacement (the paper: 500 of 5000, 50 times; 0, or at least the evaluated images: every
  # image, once), at level alpha_level ("interval": the paper's, the default of the package it
  # used; "ordinal"). quick: 50 of its 100 images.
  config.statistics = ml_collections.ConfigDict(dict(alpha_images=50, alpha_draws=50,
                                                     alpha_level="interval"))
  config.figures = True
  if variant == "tiny":
    common.shrink_to_tiny(config)
    config.statistics.update(alpha_images=4, alpha_draws=5)
    # Grid points every 5% of the pixels: 10% of 32x32 (102 pixels) is grid point 2 (the
    # former step 64 had no point at 10%, and AOPC / AFOC took 64 pixels, 6.25%).
    config.pixel_removal.update(step=0, step_fraction=0.05, chunk=4, delta_k=2)
    config.evaluate.update(shard_size=4)
  elif variant in ("paper", "paper_resnet50"):
    arch = "vgg16" if variant == "paper" else "resnet50"
    config.model_name = arch
    config.data.update(source="image_folder", split="validation", size=224, num_examples=0,
                       crop="center", normalize="imagenet", keep_labels=tuple(range(100)),
                       per_class=50, tfds_name="imagenet2012")
    config.model.update(name=arch, num_classes=1000, checkpoint=f"/path/to/{arch}")
    # DeepMaps: steps of 0.5% of the pixels (10% of 224x224 is grid point 20, 5018 pixels).
    config.pixel_removal.update(step=0, step_fraction=0.005, fill="imagenet_mean", chunk=4,
                                delta_k=5)
    config.statistics.update(alpha_images=500, alpha_draws=50)
    config.evaluate.update(shard_size=32)
  config.lock()
  return config
