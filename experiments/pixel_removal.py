r"""The DeepMaps pixel-removal protocol: AOPC, AFOC, n_MoRF / n_LeRF and their delta variants.

  python -m experiments.pixel_removal --workdir=workdir/pixel_removal_quick     # cells, CPU
  python -m experiments.pixel_removal --workdir=workdir/pixel_removal_vgg16 \
      --config=configs/pixel_removal.py:paper --config.model.checkpoint=/ckpt/vgg16 \
      --config.data.image_folder=/data/imagenet/val

A. Grabska-Barwinska et al., "Towards Better Visual Explanations for Deep Image Classifiers"
(DeepMaps, 2021), section 4 and appendix B-C (protocol in `shared/specs/metrics.md`,
sections 1 and 5): every configured saliency method explains the model's predicted class
`c`; its map ranks the pixels, which are removed (all channels replaced by the fill value,
by default the mean RGB) most relevant first (MoRF) and least relevant first (LeRF), and
the model is re-evaluated on a grid of removed fractions (`xai_jax.runner.evaluate` with the
metric "pixel_removal"). Per image and method:

* `aopc`: mean drop of the logit f_c over the MoRF grid up to `fraction` (10%) of the pixels;
* `afoc_morf`, `afoc_lerf`: |f_c(x) - f_c(x_k)| / |f_c(x)| after removing `fraction`;
* `n_morf`, `n_lerf`: fraction of pixels removed when the decision first changes (1.0 and
  `flipped_*` = 0 when it never does);
* `delta_<metric>` (DeepMaps Eq. 9): the metric with the image's own map minus its mean with
  the maps the same method gave `delta_k` other images of the same shard.

Data: the synthetic cells (default; a small model is trained here), any prepared TFDS image
dataset (`data.source="tfds"`, e.g. `imagenet2012`), or an image folder; models as in
`experiments/localization.py` (a `port.save` checkpoint, an `.npz`, or trained on the cells).

Outputs in WORKDIR: `config.json`; `<model>/samples.csv` and `samples.csv` (one row per image
x method; resumable per shard under `shards/`); `curves.csv` (mean MoRF / LeRF curves: score,
drop and flip rate per removed fraction); `summary.csv` / `summary.md` (means per method, with
the model's accuracy on the evaluated images in `accuracy.csv`); `win_rates.csv` (for every
metric, how often the row method beats the column method, ties one half, minus 50%, as
DeepMaps Fig. 7; `stats.win_rate_matrix`); `figures/perturbation_curves.png`,
`figures/flip_rate.png`, `figures/win_rates_<metric>.png`; `report.md`.

The config is checked first (`validate`): methods and their options, the removal options
(`step` must not exceed `fraction` of the `data.size` x `data.size` pixels, or AOPC and AFOC
would be 0 for every map), and every shard, the last (remainder) one included, must hold more
than `delta_k` images; a bad config fails before any data is read or a model trained and
leaves nothing in the workdir. As in `experiments/localization.py`, a trained model is kept
across runs that change only evaluation fields (methods, `pixel_removal`, `data.num_examples`,
...), whose outputs then go to `WORKDIR/eval_<hash>/`; other training fields are refused.
"""

from __future__ import annotations

import json
import pathlib
import time
from typing import Any

from absl import app
from absl import logging
import ml_collections
import numpy as np
import pandas as pd

from experiments import launch
from experiments import localization as common
from xai_jax import runner
from xai_jax.data import images
from xai_jax.metrics import stats
from xai_jax.reports import evaluation as report

# Metric columns and their direction (higher is better?), DeepMaps section 4 / appendix B.
METRICS = {"aopc": True, "afoc_morf": True, "afoc_lerf": False, "n_morf": False,
           "n_lerf": True}
DELTA_METRICS = {f"delta_{name}": up for name, up in METRICS.items()}
# Win-rate figures drawn for these (the CSV has every metric).
FIGURE_METRICS = ("aopc", "afoc_lerf", "n_morf", "n_lerf", "delta_n_morf", "delta_afoc_morf")


def removal_options(config) -> dict[str, Any]:
  """`metric_options["pixel_removal"]` for the runner; resolves the named fills.

  `fill` is a string: "mean" (per-channel mean of the evaluated batch), "image_mean", "blur",
  "imagenet_mean" (the ImageNet training-set mean RGB in the images' space, as DeepMaps: 0
  after ImageNet normalisation), a number ("0") or comma-separated per-channel values
  ("0.5,0.4,0.3").

  Raises:
    ValueError: a fill that is none of these.
  """
  options = dict(config.pixel_removal)
  fill = str(options["fill"]).strip()
  if fill == "imagenet_mean":
    values = [float(v) for v in images.fill_value(config.data.normalize)]
  elif fill in ("mean", "image_mean", "blur"):
    values = None
  else:
    try:
      values = [float(v) for v in fill.split(",")]
    except ValueError:
      raise ValueError(f"unknown pixel_removal.fill {fill!r}; valid: mean, image_mean, blur, "
                       "imagenet_mean, a number or comma-separated per-channel values") from None
  if values is not None:
    if len(set(values)) != 1:
      # The runner passes the removal options as static (hashed) jit arguments, so an array
      # fill cannot go through it; a constant (the normalised ImageNet mean is 0) can.
      raise ValueError(f"pixel_removal.fill {fill!r} gives per-channel values {values}; "
                       "runner.evaluate accepts only a single number (e.g. 'imagenet_mean' "
                       "with data.normalize='imagenet', which is 0)")
    values = values[0]
  options["fill"] = fill if values is None else values
  options["step"] = options["step"] or None
  return options


def win_rates(samples: pd.DataFrame) -> pd.DataFrame:
  """Pairwise win rates per (model, metric): `model, metric, method, opponent, win_rate`.

  `win_rate` is the fraction of images on which `method` beats `opponent` (ties one half)
  minus 0.5, in the metric's direction (DeepMaps Fig. 7, appendix C).
  """
  directions = {**METRICS, **DELTA_METRICS}
  rows = []
  for model_name, group in samples.groupby("model", sort=False):
    methods = list(dict.fromkeys(group["method"]))
    if len(methods) < 2:
      continue
    for metric, higher in directions.items():
      if metric not in group.columns:
        continue
      table = group.pivot(index="index", columns="method", values=metric)[methods].dropna()
      wins = stats.win_rate_matrix(table.to_numpy(np.float64), higher_is_better=higher,
                                   minus_half=True)
      for i, method in enumerate(methods):
        for j, opponent in enumerate(methods):
          if i != j:
            rows.append({"model": model_name, "metric": metric, "method": method,
                         "opponent": opponent, "win_rate": float(wins[i, j]),
                         "images": len(table)})
  return pd.DataFrame(rows)


def validate(config) -> None:
  """Checks a pixel-removal config before anything is read or trained.

  Raises:
    ValueError: naming the bad field: a bad `pixel_removal` option (fill, step against
      `fraction` of the pixels, chunk, delta_k, score), or as
      `localization.validate_image_experiment` (methods, data, model, shards too small for
      the delta).
  """
  common.validate_image_experiment(config, metrics=("pixel_removal",),
                                   metric_options={"pixel_removal": removal_options(config)})


def run(config: ml_collections.ConfigDict, workdir, *, progress: bool = True) -> dict[str, Any]:
  """Runs (or resumes) the pixel-removal experiment; returns its tables and the report path.

  Raises:
    ValueError: a bad config (`validate`; nothing is written then), or a workdir whose model
      comes from other training fields.
  """
  started = time.perf_counter()
  validate(config)
  metric_options = {"pixel_removal": removal_options(config)}
  source = common.build_source(config)
  common.check_evaluation_size(config, len(source), metric_options=metric_options)
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  out = common.check_workdir(config, workdir)
  model, variables, described = common.build_model(config, workdir, progress=progress)
  logging.info("model: %s; %d images from %r", described, len(source), source)
  tables = common.evaluate(config, out, source, model, variables,
                           metrics=("pixel_removal",), metric_options=metric_options,
                           progress=progress)
  samples, curves = tables.samples, tables.curves
  runner.write_table(samples, out / "samples.csv")
  runner.write_table(curves, out / "curves.csv")
  accuracy = common.accuracy_of(samples, config.data.split)
  runner.write_table(accuracy, out / "accuracy.csv")
  columns = [c for c in (*METRICS, *DELTA_METRICS, "flipped_morf", "flipped_lerf")
             if c in samples.columns]
  summary = report.summary_table(samples, metrics=columns, accuracy=accuracy,
                                 split=config.data.split)
  runner.write_table(summary, out / "summary.csv")
  (out / "summary.md").write_text(report.to_markdown(summary))
  wins = win_rates(samples)
  runner.write_table(wins, out / "win_rates.csv")

  figures = {}
  if config.figures:
    folder = out / "figures"
    figures["Perturbation curves: mean logit of the predicted class"] = (
        report.perturbation_curves_figure(curves, folder / "perturbation_curves.png"))
    figures["Share of changed decisions along the curves (n_MoRF / n_LeRF)"] = (
        report.perturbation_curves_figure(curves, folder / "flip_rate.png",
                                          quantity="flip_rate"))
    if samples["method"].nunique() >= 2:
      directions = {**METRICS, **DELTA_METRICS}
      for metric in FIGURE_METRICS:
        if metric in samples.columns:
          figures[f"Win rates on {metric} (DeepMaps Fig. 7)"] = report.win_rate_figure(
              samples, folder / f"win_rates_{metric}.png", metric=metric,
              higher_is_better=directions[metric])
  options = removal_options(config)
  fill = options["fill"]
  notes = (f"Model: {described}; {samples['index'].nunique()} images. Removal: fill "
           f"{fill}, step "
           f"{options['step'] or '0.5% of the pixels'}, AOPC/AFOC at {options['fraction']:g} of "
           f"the pixels, score {options['score']}, delta against {options['delta_k']} other "
           f"images' maps. Win rates (minus 50%) of every metric are in `win_rates.csv`. Wall "
           f"time of this invocation {time.perf_counter() - started:.0f} s.")
  report_path = report.write_report(
      out, title=f"Pixel removal, the DeepMaps protocol ({config.model_name})",
      summary=summary, accuracy=accuracy, figures=figures, config=json.loads(config.to_json()),
      notes=notes)
  return {"samples": samples, "curves": curves, "summary": summary, "win_rates": wins,
          "accuracy": accuracy, "report": report_path, "figures": figures}


def main(argv):
  del argv
  launch.start()
  launch.run_and_print(run)


if __name__ == "__main__":
  # Flags are defined here, not at import, so that several experiment modules can be imported
  # in one process (tests) without clashing `--config` / `--workdir` definitions.
  launch.define_config_and_workdir("pixel_removal")
  app.run(main)
