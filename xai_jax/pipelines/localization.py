"""Pixel-wise localisation of saliency maps: IOU and IOU* (Gattas 2020), split by confidence.

B. Gattas, "Evaluating Feature Attribution Methods" (thesis, University of Queensland, 2020),
sections 3.4 and 4.2: every configured saliency method explains the model's predicted class;
its map (channel-summed) is normalised to [-1, 1], made absolute, thresholded at `n_std`
standard deviations (0.5 for IOU, 1.0 for IOU*) and compared with a binary object mask:

* `iou` = |kept AND mask| / |kept OR mask|,
* `iou_star` = sum of |value| over (kept AND mask) / |kept OR mask|.

Masks: the union of the Pascal-VOC (or ILSVRC) bounding boxes of each image
(`data.source="image_folder"` with `data.annotations_dir`, or a TFDS dataset with bounding-box
features), or, the default, the non-zero region of the synthetic cells' ground-truth heatmap
(`data.source="cells"`). Models: a checkpoint written by `xai_jax.models.port.save`
(`model.checkpoint`, e.g. torchvision weights from `python -m experiments.port_weights`), a flat
`.npz` of variables (`model.npz`), or, on the cells, a small model trained here
(`xai_jax.train`, resumable under `WORKDIR/train`); see `image_experiment`.

`run(config, workdir)` writes, in WORKDIR:

* `config.json`; `<model>/samples.csv` and `samples.csv`: one row per image x method (the
  runner's schema: `model, method, shard, position, index, label, background, predicted,
  confidence, correct, iou, iou_star`), resumable per shard under `shards/`;
* `summary.csv` / `summary.md`: mean IOU and IOU* per method, and the model's accuracy on the
  evaluated images (`accuracy.csv`);
* `confidence.csv` / `confidence.md`: mean, standard deviation and count of IOU and IOU* per
  method for high-confidence predictions (softmax > `confidence_threshold`, 0.9 as the
  thesis), the rest, and all (Gattas Fig. 4.1, Table 4.1);
* `figures/iou_by_confidence.png` (the thesis' Fig. 4.1: bars with one-standard-deviation
  error bars, high vs low confidence), `figures/gallery.png` (maps of a few images);
* `report.md` linking everything.

The config (`configs/localization.py`) is checked first (`validate`: methods and their
options, IOU options, data and model fields, shard sizes), before any data is read or a model
trained, so a bad config fails at once and leaves nothing in the workdir. Rerunning with the
same workdir skips finished shards. A model trained here (`WORKDIR/train`) depends only on the
training fields (`image_experiment.training_fields`: seed, data.size, model, train), recorded
in `WORKDIR/train_config.json`; a run with other training fields is refused, while other
fields (methods, `iou`, `data.num_examples`, `evaluate.*`, ...) may change: the model is
reused and the new outputs go to `WORKDIR/eval_<hash>/` (see `xai_jax.pipelines.workdir`).
"""

from __future__ import annotations

import json
import pathlib
import time
from typing import Any

from absl import logging
from matplotlib.figure import Figure
import ml_collections
import numpy as np
import pandas as pd

from xai_jax import files
from xai_jax import reports
from xai_jax.data import cells
from xai_jax.metrics import ground_truth
from xai_jax.pipelines import image_experiment

LOCALIZATION_METRICS = ("iou", "iou_star")


# --------------------------------------------------------------------------------------------
# Checks.


def validate(config) -> None:
  """Checks a localization config before anything is read or trained.

  Raises:
    ValueError: as `image_experiment.validate_image_experiment`, or a `confidence_threshold`
      outside [0, 1].
  """
  if not 0.0 <= config.confidence_threshold <= 1.0:
    raise ValueError(f"confidence_threshold must be in [0, 1]; got "
                     f"{config.confidence_threshold!r}")
  image_experiment.validate_image_experiment(config, metrics=("iou",),
                                             metric_options=_metric_options(config))


def _metric_options(config) -> dict[str, dict]:
  return {"iou": dict(config.iou)}


# --------------------------------------------------------------------------------------------
# Confidence split and figure.


def gallery_for_figure(gallery: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The runner's gallery with "heatmaps" matching "images".

  Without a heatmap (mask sources) `runner.evaluate` stores zeros for the whole first shard
  instead of the kept samples; they carry no information, so they are cut to the gallery's
  length here.
  """
  gallery = dict(gallery)
  count = len(gallery["images"])
  if "heatmaps" in gallery and len(gallery["heatmaps"]) != count:
    if np.any(gallery["heatmaps"]):
      raise ValueError(f"gallery heatmaps ({len(gallery['heatmaps'])}) do not match its "
                       f"{count} images")
    gallery["heatmaps"] = np.zeros(gallery["images"].shape[:3], np.float32)
  return gallery


def confidence_table(samples: pd.DataFrame, *, threshold: float) -> pd.DataFrame:
  """IOU and IOU* per method for high-confidence predictions, the rest, and all (Gattas 4.2).

  Returns:
    DataFrame `model, metric, method, group ("high"|"low"|"all"), mean, std, count` (std with
    ddof 1, NaN for fewer than two images), from `ground_truth.summarize_by_confidence`.
  """
  rows = []
  for name, group in samples.groupby("model", sort=False):
    methods = list(dict.fromkeys(group["method"]))
    confidence = group.drop_duplicates("index").set_index("index")["confidence"]
    for metric in LOCALIZATION_METRICS:
      table = group.pivot(index="index", columns="method", values=metric)[methods]
      summary = ground_truth.summarize_by_confidence(
          table.to_numpy(np.float64), confidence.loc[table.index].to_numpy(np.float64),
          threshold=threshold)
      for which in ("high", "low", "all"):
        for k, method in enumerate(methods):
          rows.append({"model": name, "metric": metric, "method": method, "group": which,
                       "mean": float(summary[which]["mean"][k]),
                       "std": float(summary[which]["std"][k]),
                       "count": summary[which]["count"]})
  return pd.DataFrame(rows)


def confidence_wide(table: pd.DataFrame) -> pd.DataFrame:
  """`confidence_table` with one row per (model, method): `<metric>_<group>` = "mean +- std"."""
  frame = table.copy()
  frame["value"] = [f"{m:.3f} +- {s:.3f}" for m, s in zip(frame["mean"], frame["std"])]
  frame["column"] = frame["metric"] + "_" + frame["group"]
  wide = frame.pivot(index=["model", "method"], columns="column", values="value")
  order = [f"{m}_{g}" for m in LOCALIZATION_METRICS for g in ("high", "low", "all")]
  wide = wide[order].reset_index()
  counts = table[(table["metric"] == LOCALIZATION_METRICS[0])].pivot(
      index=["model", "method"], columns="group", values="count")
  wide.insert(2, "n_high", counts["high"].to_numpy())
  wide.insert(3, "n_low", counts["low"].to_numpy())
  methods = list(dict.fromkeys(table["method"]))
  return wide.sort_values("method", key=lambda c: c.map(methods.index)).reset_index(drop=True)


def confidence_figure(table: pd.DataFrame, path: pathlib.Path, *, threshold: float
                      ) -> pathlib.Path:
  """Gattas Fig. 4.1: mean IOU and IOU* per method, high vs low confidence, +-1 std bars."""
  model = table["model"].iloc[0]
  table = table[table["model"] == model]
  methods = list(dict.fromkeys(table["method"]))
  fig = Figure(figsize=(max(6.0, 0.9 * len(methods) + 2), 6.5), layout="constrained")
  axes = fig.subplots(len(LOCALIZATION_METRICS), 1)
  width = 0.38
  for axis, metric in zip(axes, LOCALIZATION_METRICS):
    for offset, (which, colour) in zip((-width / 2, width / 2),
                                       (("high", "tab:blue"), ("low", "tab:orange"))):
      rows = table[(table["metric"] == metric) & (table["group"] == which)].set_index(
          "method").loc[methods]
      count = int(rows["count"].iloc[0]) if len(rows) else 0
      label = (f"p > {threshold:g} (n={count})" if which == "high" else
               f"p <= {threshold:g} (n={count})")
      axis.bar(np.arange(len(methods)) + offset, rows["mean"].to_numpy(np.float64), width,
               yerr=np.nan_to_num(rows["std"].to_numpy(np.float64)), capsize=2,
               color=colour, label=label)
    axis.set_xticks(np.arange(len(methods)), [m.replace("_", " ") for m in methods],
                    rotation=30, ha="right", fontsize=7)
    axis.set_ylabel(metric.replace("_star", "*").upper())
    axis.legend(fontsize=7)
  fig.suptitle(f"Pixel-wise localisation ({model}; mean +- 1 std)", fontsize=9)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=110)
  return path


# --------------------------------------------------------------------------------------------
# The run.


def run(config: ml_collections.ConfigDict, workdir, *, progress: bool = True) -> dict[str, Any]:
  """Runs (or resumes) the localisation experiment; returns its tables and the report path.

  Args:
    config: from `configs/localization.py` (`get_config(variant)`).
    workdir: the output folder (a rerun resumes).
    progress: show progress bars.

  Returns:
    `{"samples", "summary", "confidence", "accuracy": DataFrame, "gallery": dict of arrays,
    "report": path of report.md, "figures": {caption: path}}`.

  Outputs go to `WORKDIR`, or to `WORKDIR/eval_<hash>` for a config whose evaluation fields
  differ from those `WORKDIR` holds (see the module docstring).

  Raises:
    ValueError: a bad config (`validate`; nothing is written then), or a workdir whose model
      comes from other training fields.
  """
  started = time.perf_counter()
  validate(config)
  metric_options = _metric_options(config)
  source = image_experiment.build_source(config)
  image_experiment.check_evaluation_size(config, len(source), metric_options=metric_options)
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  out = image_experiment.check_workdir(config, workdir)
  model, variables, described = image_experiment.build_model(config, workdir, progress=progress)
  logging.info("model: %s; %d images from %r", described, len(source), source)
  tables = image_experiment.evaluate(config, out, source, model, variables, metrics=("iou",),
                                     metric_options=metric_options, progress=progress)
  samples = tables.samples
  files.write_table(samples, out / "samples.csv")
  accuracy = image_experiment.accuracy_of(samples, config.data.split)
  files.write_table(accuracy, out / "accuracy.csv")
  summary = reports.summary_table(samples, metrics=list(LOCALIZATION_METRICS), accuracy=accuracy,
                                  split=config.data.split)
  files.write_table(summary, out / "summary.csv")
  (out / "summary.md").write_text(reports.to_markdown(summary))
  confidence = confidence_table(samples, threshold=config.confidence_threshold)
  files.write_table(confidence, out / "confidence.csv")
  wide = confidence_wide(confidence)
  (out / "confidence.md").write_text(reports.to_markdown(wide))

  figures = {}
  if config.figures:
    folder = out / "figures"
    figures["IOU and IOU* by prediction confidence (Gattas Fig. 4.1)"] = confidence_figure(
        confidence, folder / "iou_by_confidence.png", threshold=config.confidence_threshold)
    if tables.gallery:
      figures["Saliency maps of a few images"] = reports.method_class_gallery(
          gallery_for_figure(tables.gallery), folder / "gallery.png",
          title=f"{config.model_name}: saliency maps",
          class_names=cells.CLASS_NAMES if config.data.source == "cells" else None)
  high = confidence[(confidence["group"] == "high") & (confidence["metric"] == "iou")]
  notes = (f"Model: {described}. Masks: "
           + ("non-zero ground-truth heatmap of the cells" if config.data.source == "cells"
              else "union of the annotated bounding boxes")
           + f". Thresholds: IOU at {config.iou.n_std} std, IOU* at {config.iou.n_std_star} "
           f"std, abs={config.iou.abs}. High confidence: softmax > "
           f"{config.confidence_threshold} ({int(high['count'].iloc[0]) if len(high) else 0} of "
           f"{samples['index'].nunique()} images); the split is in `confidence.md`. Wall time "
           f"of this invocation {time.perf_counter() - started:.0f} s.")
  report_path = reports.write_report(
      out, title=f"Pixel-wise localisation, IOU / IOU* ({config.model_name})",
      summary=summary, accuracy=accuracy, figures=figures, config=json.loads(config.to_json()),
      notes=notes)
  with open(report_path, "a") as stream:
    stream.write(f"\n## IOU and IOU* by prediction confidence (mean +- std; high: softmax > "
                 f"{config.confidence_threshold})\n\n" + reports.to_markdown(wide))
  return {"samples": samples, "summary": summary, "confidence": confidence,
          "accuracy": accuracy, "gallery": tables.gallery, "report": report_path,
          "figures": figures}
