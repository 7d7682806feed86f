"""The DeepMaps pixel-removal protocol: AOPC, AFOC, n_MoRF / n_LeRF and their delta variants.

A. Grabska-Barwinska et al., "Towards Better Visual Explanations for Deep Image Classifiers"
(DeepMaps, 2021), section 4 and appendices B-C: every configured saliency method explains the
model's predicted class `c`; its map ranks the pixels, which are removed (all channels
replaced by the fill value `pixel_removal.fill`, a mean RGB) most relevant first (MoRF) and
least relevant first (LeRF), and the model is re-evaluated on a grid of removed fractions
(`xai_jax.runner.evaluate` with the metric "pixel_removal"). Per image and method:

* `aopc`: mean drop of the logit f_c over the MoRF grid up to `fraction` (10%) of the pixels
  (W. Samek et al., "Evaluating the visualization of what a deep neural network has learned",
  IEEE TNNLS 2017);
* `afoc_morf`, `afoc_lerf`: |f_c(x) - f_c(x_k)| / |f_c(x)| after removing `fraction`
  (S. Srinivas and F. Fleuret, "Full-Gradient Representation for Neural Network
  Visualization", NeurIPS 2019);
* `n_morf`, `n_lerf`: fraction of pixels removed when the decision first changes (1.0 and
  `flipped_*` = 0 when it never does);
* `delta_<metric>` (DeepMaps Eq. 9): the metric with the image's own map minus its mean with
  the maps the same method gives `delta_k` other images, drawn uniformly from the whole
  evaluated set (`xai_jax.metrics.pixel_removal.draw_partners`).

Data: the synthetic cells (default; a small model is trained here), any prepared TFDS image
dataset (`data.source="tfds"`, e.g. `imagenet2012`), or an image folder; models as in
`image_experiment` (a `port.save` checkpoint, an `.npz`, or trained on the cells).

`run(config, workdir)` writes, in WORKDIR: `config.json`; `<model>/samples.csv` and
`samples.csv` (one row per image x method; resumable per shard under `shards/`); `curves.csv`
(mean MoRF / LeRF curves: score, drop and flip rate per removed fraction); `summary.csv` /
`summary.md` (means per method, with the model's accuracy on the evaluated images in
`accuracy.csv`); `win_rates.csv` (for every metric, the share of images on which the method
beats the opponent, ties one half, in [0, 1]; DeepMaps Fig. 7 plots it minus 50%;
`reports.pairwise_win_rates`); DeepMaps' appendix-C statistics in `stats/`
(`reports.method_statistics`, over every metric): `wilcoxon.csv` (two-sided Wilcoxon
signed-rank p-value of every pair of methods per metric, Fig. 9), `krippendorff_alpha.csv`
(alpha of the per-image method rankings, all methods and without the random map, the mean,
standard deviation and 95% interval over `statistics.alpha_draws` draws of
`statistics.alpha_images` images at level `statistics.alpha_level`, Fig. 10) and
`spearman.csv` (Spearman correlation between the metrics over the images, per method,
Fig. 11); `figures/perturbation_curves.png`, `figures/flip_rate.png`,
`figures/win_rates_<metric>.png`, and `figures/wilcoxon.png`, `figures/alpha.png`,
`figures/spearman.png` (DeepMaps Fig. 9-11 / 16-18, over `STATISTICS_FIGURE_METRICS`);
`report.md`. The statistics are recomputed from the samples table on every run,
deterministically given `seed` (the alpha draws use a key folded from it).

The config (`configs/pixel_removal.py`) is checked first (`validate`): methods and their
options, the removal options (`step` must not exceed `fraction` of the `data.size` x
`data.size` pixels, or AOPC and AFOC would be 0 for every map, and `fraction` must be a grid
point, not rounded down to the one before it), and the evaluated set must hold more than
`delta_k` images; a bad config fails before any
data is read or a model trained and leaves nothing in the workdir. A trained model is kept
across runs that change only evaluation fields (methods, `pixel_removal`,
`data.num_examples`, ...), whose outputs then go to `WORKDIR/eval_<hash>/`; other training
fields are refused (`xai_jax.pipelines.workdir`).
"""

from __future__ import annotations

import json
import pathlib
import time
from typing import Any

from absl import logging
import jax
import ml_collections
import pandas as pd

from xai_jax import files
from xai_jax import reports
from xai_jax.data import images
from xai_jax.metrics import pixel_removal as metric_removal
from xai_jax.metrics import registry
from xai_jax.pipelines import image_experiment
from xai_jax.pipelines import training_data

# Metric columns, DeepMaps section 4 / appendix B (directions: `metrics.registry`).
# The scores (the `flipped_*` shares are summarised but not ranked).
METRICS = ("aopc", "afoc_morf", "afoc_lerf", "n_morf", "n_lerf")
DELTA_METRICS = tuple(registry.delta_column(name) for name in metric_removal.DELTA_METRICS)
# Win-rate figures drawn for these (the CSV has every metric).
FIGURE_METRICS = ("aopc", "afoc_lerf", "n_morf", "n_lerf", "delta_n_morf", "delta_afoc_morf")
# The metrics of DeepMaps' statistics figures (Fig. 9-11): AFOC and n, MoRF and LeRF, each
# with its delta ("we only present results for AFOC and not for AOPC", appendix C.2); the
# CSV files under stats/ have every metric.
STATISTICS_FIGURE_METRICS = ("n_morf", "delta_n_morf", "n_lerf", "delta_n_lerf", "afoc_morf",
                             "delta_afoc_morf", "afoc_lerf", "delta_afoc_lerf")
# The stream of the run's key that draws the images of Krippendorff's alpha.
_STATISTICS_STREAM = 2000


def removal_options(config) -> dict[str, Any]:
  """`metric_options["pixel_removal"]` for the runner; resolves the named fills but one.

  `fill` is a string: "batch_mean" (per-channel mean of each evaluated shard),
  "dataset_mean" (the training split's mean RGB, as the papers; only for `data.source="cells"`,
  whose training split is known: kept as the name here, `run` computes it once and passes the
  numbers), "imagenet_mean" (the ImageNet training-set mean RGB in the images' space, as
  DeepMaps: 0 after ImageNet normalisation), "image_mean", "blur", a number ("0") or
  comma-separated per-channel values ("0.5,0.4,0.3"). `step` or `step_fraction` of 0 is unset
  (None).

  Raises:
    ValueError: a fill that is none of these, or "dataset_mean" on another data source.
  """
  options = dict(config.pixel_removal)
  fill = str(options["fill"]).strip()
  if fill == "imagenet_mean":
    values = tuple(float(v) for v in images.fill_value(config.data.normalize))
  elif fill in registry.REMOVAL_FILLS or fill == "mean":  # "mean": the registry explains
    values = None
    if fill == metric_removal.DATASET_MEAN and config.data.source != "cells":
      raise ValueError(
          f"pixel_removal.fill 'dataset_mean' needs the training split, which this pipeline "
          f"has only for data.source='cells' (got {config.data.source!r}); on ImageNet use "
          "'imagenet_mean' (DeepMaps), or give per-channel values")
  else:
    try:
      values = tuple(float(v) for v in fill.split(","))
    except ValueError:
      raise ValueError(f"unknown pixel_removal.fill {fill!r}; valid: "
                       f"{', '.join(registry.REMOVAL_FILLS)}, imagenet_mean, a number or "
                       "comma-separated per-channel values") from None
  if values is not None and len(set(values)) == 1:
    values = values[0]  # one number for every channel (e.g. the normalised ImageNet mean 0)
  options["fill"] = fill if values is None else values
  return training_data.unset_zero_grid(options)


def resolved_removal_options(config) -> dict[str, Any]:
  """`removal_options` with "dataset_mean" computed: the mean RGB of the cells the model is
  trained on (`image_experiment.cells_training_shards`), read once."""
  return training_data.resolve_dataset_mean(
      {"pixel_removal": removal_options(config)},
      lambda: image_experiment.cells_training_shards(config))["pixel_removal"]


def win_rates(samples: pd.DataFrame) -> pd.DataFrame:
  """Pairwise win rates per (model, metric): `model, metric, method, opponent, win_rate, images`.

  `win_rate` is the fraction of the `images` images on which `method` beats `opponent`, ties
  counting one half, in [0, 1], in the metric's registered direction
  (`reports.pairwise_win_rates`; DeepMaps Fig. 7 and appendix C plot it minus 0.5).
  """
  return reports.pairwise_win_rates(samples, metrics=(*METRICS, *DELTA_METRICS))


def validate(config) -> None:
  """Checks a pixel-removal config before anything is read or trained.

  Raises:
    ValueError: naming the bad field: a bad `pixel_removal` option (fill, step against
      `fraction` of the pixels, chunk, delta_k, score), a bad `statistics` option
      (`reports.check_alpha_options`: alpha_images, alpha_draws, alpha_level), or
      as `image_experiment.validate_image_experiment` (methods, data, model, shards too small
      for the delta).
  """
  image_experiment.validate_image_experiment(
      config, metrics=("pixel_removal",),
      metric_options={"pixel_removal": removal_options(config)})
  settings = config.statistics
  try:
    reports.check_alpha_options(alpha_images=settings.alpha_images,
                                alpha_draws=settings.alpha_draws,
                                alpha_level=settings.alpha_level)
  except ValueError as error:
    raise ValueError(f"statistics.{error}") from None


def run(config: ml_collections.ConfigDict, workdir, *, progress: bool = True) -> dict[str, Any]:
  """Runs (or resumes) the pixel-removal experiment; returns its tables and the report path.

  Args:
    config: from `configs/pixel_removal.py` (`get_config(variant)`).
    workdir: the output folder (a rerun resumes).
    progress: show progress bars.

  Returns:
    `{"samples", "curves", "summary", "win_rates", "accuracy": DataFrame, "statistics":
    `reports.statistics.MethodStatistics` (wilcoxon, alpha, spearman), "report": path of
    report.md, "figures": {caption: path}}`. Outputs go to `WORKDIR`, or to
    `WORKDIR/eval_<hash>` for a config whose evaluation fields differ from those `WORKDIR`
    holds.

  Raises:
    ValueError: a bad config (`validate`; nothing is written then), or a workdir whose model
      comes from other training fields.
  """
  started = time.perf_counter()
  validate(config)
  metric_options = {"pixel_removal": resolved_removal_options(config)}
  source = image_experiment.build_source(config)
  image_experiment.check_evaluation_size(config, len(source), metric_options=metric_options)
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  out = image_experiment.check_workdir(config, workdir)
  model, variables, described = image_experiment.build_model(config, workdir, progress=progress)
  logging.info("model: %s; %d images from %r", described, len(source), source)
  tables = image_experiment.evaluate(config, out, source, model, variables,
                                     metrics=("pixel_removal",), metric_options=metric_options,
                                     progress=progress)
  samples, curves = tables.samples, tables.curves
  files.write_table(samples, out / "samples.csv")
  files.write_table(curves, out / "curves.csv")
  accuracy = image_experiment.accuracy_of(samples, config.data.split)
  files.write_table(accuracy, out / "accuracy.csv")
  columns = [c for c in (*METRICS, *DELTA_METRICS, "flipped_morf", "flipped_lerf")
             if c in samples.columns]
  summary = reports.summary_table(samples, metrics=columns, accuracy=accuracy,
                                  split=config.data.split)
  files.write_table(summary, out / "summary.csv")
  (out / "summary.md").write_text(reports.to_markdown(summary))
  wins = win_rates(samples)
  files.write_table(wins, out / "win_rates.csv")
  settings = config.statistics
  statistics = reports.method_statistics(
      samples, out / "stats", metrics=(*METRICS, *DELTA_METRICS),
      key=jax.random.fold_in(jax.random.key(config.seed), _STATISTICS_STREAM),
      alpha_images=settings.alpha_images, alpha_draws=settings.alpha_draws,
      alpha_level=settings.alpha_level)

  figures = {}
  if config.figures:
    folder = out / "figures"
    figures["Perturbation curves: mean logit of the predicted class"] = (
        reports.perturbation_curves_figure(curves, folder / "perturbation_curves.png"))
    figures["Share of changed decisions along the curves (n_MoRF / n_LeRF)"] = (
        reports.perturbation_curves_figure(curves, folder / "flip_rate.png",
                                           quantity="flip_rate"))
    if samples["method"].nunique() >= 2:
      for metric in FIGURE_METRICS:
        if metric in samples.columns:
          figures[f"Win rates on {metric} (DeepMaps Fig. 7)"] = reports.win_rate_figure(
              samples, folder / f"win_rates_{metric}.png", metric=metric)
    figures.update(reports.statistics_figures(statistics, folder,
                                              metrics=STATISTICS_FIGURE_METRICS))
  options = metric_options["pixel_removal"]
  grid = (f"{options['step']} pixels" if options["step"] else
          f"{(options['step_fraction'] or metric_removal.DEFAULT_STEP_FRACTION):g} of the pixels")
  notes = (f"Model: {described}; {samples['index'].nunique()} images. Removal: fill "
           f"{training_data.describe_fill(config.pixel_removal.fill, options['fill'])}, step {grid}, AOPC/AFOC at "
           f"{options['fraction']:g} of "
           f"the pixels, score {options['score']}, delta against {options['delta_k']} other "
           f"images' maps. Win rates (share of images won, ties 1/2) of every metric are in "
           f"`win_rates.csv`. {_describe_statistics(statistics.alpha)} Wall "
           f"time of this invocation {time.perf_counter() - started:.0f} s.")
  report_path = reports.write_report(
      out, title=f"Pixel removal, the DeepMaps protocol ({config.model_name})",
      summary=summary, accuracy=accuracy, figures=figures, config=json.loads(config.to_json()),
      notes=notes)
  return {"samples": samples, "curves": curves, "summary": summary, "win_rates": wins,
          "accuracy": accuracy, "statistics": statistics, "report": report_path,
          "figures": figures}


def _describe_statistics(alpha: pd.DataFrame) -> str:
  """The report's sentence on `stats/`: the draws and level of alpha and its values over
  all methods."""
  text = ("DeepMaps' appendix-C statistics of every metric are in `stats/`: Wilcoxon "
          "signed-rank p-values (`wilcoxon.csv`), Spearman correlations between the metrics "
          "per method (`spearman.csv`) and Krippendorff's alpha of the per-image method "
          "rankings (`krippendorff_alpha.csv`")
  rows = alpha[alpha["methods"] == "all"]
  if rows.empty:
    return text + ")."
  draws = sorted({(int(r.images), int(r.draws), int(r.available)) for r in rows.itertuples()})
  how = "; ".join(f"mean over {d} draws of {i} of the {a} images" if d > 1 else
                  f"all {a} images, once" for i, d, a in draws)
  values = ", ".join(f"{r.metric} {r.alpha:.2f}" for r in rows.itertuples())
  return (text + f", {rows['level'].iloc[0]} level, {how}; all methods: {values}).")
