r"""Pixel-wise localisation of saliency maps: IOU and IOU* (Gattas 2020), split by confidence.

  python -m experiments.localization --workdir=workdir/localization_quick     # cells, CPU
  python -m experiments.localization --workdir=workdir/localization_voc \
      --config=configs/localization.py:paper \
      --config.model.checkpoint=/ckpt/vgg16 --config.data.image_folder=/data/val \
      --config.data.annotations_dir=/data/val_xml

B. Gattas, "Evaluating Feature Attribution Methods" (thesis, University of Queensland, 2020),
section 3.4 and 4.2 (protocol in `shared/specs/metrics.md`, section 3): every configured
saliency method explains the model's predicted class; its map (channel-summed) is normalised to
[-1, 1], made absolute, thresholded at `n_std` standard deviations (0.5 for IOU, 1.0 for IOU*)
and compared with a binary object mask:

* `iou` = |kept AND mask| / |kept OR mask|,
* `iou_star` = sum of |value| over (kept AND mask) / |kept OR mask|.

Masks: the union of the Pascal-VOC (or ILSVRC) bounding boxes of each image
(`data.source="image_folder"` with `data.annotations_dir`, or a TFDS dataset with bounding-box
features), or, the default, the non-zero region of the synthetic cells' ground-truth heatmap
(`data.source="cells"`). Models: a checkpoint written by `xai_jax.models.port.save`
(`model.checkpoint`, e.g. torchvision weights from `experiments.port_weights`), a flat `.npz`
of variables (`model.npz`), or, on the cells, a small model trained here (`xai_jax.train`,
resumable under `WORKDIR/train`).

Outputs in WORKDIR:

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

Rerunning with the same workdir skips finished shards; a workdir holding another config is
refused. The helpers of the "data and model" section are shared with
`experiments/pixel_removal.py`.
"""

from __future__ import annotations

import json
import os
import pathlib
import time
from typing import Any

from absl import app
from absl import logging
import jax
import ml_collections
import numpy as np
import pandas as pd

from experiments import launch
from xai_jax import models, runner, train
from xai_jax.data import cells
from xai_jax.data import images
from xai_jax.metrics import ground_truth
from xai_jax.reports import evaluation as report

DATA_SOURCES = ("cells", "image_folder", "tfds")
LOCALIZATION_METRICS = ("iou", "iou_star")
# Fields that may change between runs sharing a workdir without changing the results.
_VOLATILE_FIELDS = ("figures",)


# --------------------------------------------------------------------------------------------
# Data and model (shared with experiments/pixel_removal.py).


def _read_lines(path: str) -> list[str]:
  with open(path) as stream:
    return [line.strip() for line in stream if line.strip()]


def build_source(config: ml_collections.ConfigDict):
  """The evaluated images: a random-access source (see `xai_jax.data.images`).

  Raises:
    ValueError: an unknown `data.source` (listing the valid ones) or missing paths.
  """
  data = config.data
  num = data.num_examples or None
  if data.source == "cells":
    return cells.source(data.split, size=data.size, key=jax.random.key(config.seed),
                        num_examples=num or None)
  class_names = tuple(data.class_names) or None
  if data.class_names_file:
    class_names = tuple(_read_lines(data.class_names_file))
  if data.source == "image_folder":
    if not data.image_folder:
      raise ValueError("data.source='image_folder' needs --config.data.image_folder=DIR")
    return images.ImageFolderSource(
        data.image_folder, size=data.size, annotations_dir=data.annotations_dir or None,
        class_names=class_names, crop=data.crop, normalize=data.normalize,
        include_difficult=data.include_difficult, keep_labels=tuple(data.keep_labels) or None,
        per_class=data.per_class or None, num_examples=num)
  if data.source == "tfds":
    if not data.tfds_name:
      raise ValueError("data.source='tfds' needs --config.data.tfds_name=NAME")
    if data.tfds_name.startswith("xai_cells"):
      from xai_jax.data import tfds_cells  # pylint: disable=import-outside-toplevel,unused-import
    return images.TfdsImageSource(data.tfds_name, data.split, size=data.size,
                                  data_dir=data.tfds_dir or None, crop=data.crop,
                                  normalize=data.normalize,
                                  keep_labels=tuple(data.keep_labels) or None,
                                  per_class=data.per_class or None, num_examples=num)
  raise ValueError(f"unknown data.source {data.source!r}; valid: {', '.join(DATA_SOURCES)}")


def _load_npz(path: str) -> dict:
  """Flax variables from a flat `.npz` whose keys are "/"-joined paths ("params/fc/kernel")."""
  from flax import traverse_util  # pylint: disable=import-outside-toplevel
  with np.load(path) as data:
    flat = {tuple(k.split("/")): np.asarray(data[k]) for k in data.files}
  if not flat or any(len(k) < 2 for k in flat):
    raise ValueError(f"{path}: expected keys like 'params/<module>/kernel'; got "
                     f"{sorted('/'.join(k) for k in flat)[:5]}")
  return traverse_util.unflatten_dict(flat)


def save_npz(variables: dict, path: str | os.PathLike) -> None:
  """Writes Flax variables as the flat `.npz` that `model.npz` reads."""
  from flax import traverse_util  # pylint: disable=import-outside-toplevel
  flat = traverse_util.flatten_dict(jax.device_get(dict(variables)))
  np.savez(path, **{"/".join(k): np.asarray(v) for k, v in flat.items()})


def _train_on_cells(config, workdir: pathlib.Path, model, *, progress: bool) -> dict:
  """Trains `model` on the cells (resumable under WORKDIR/train); returns its variables."""
  t, data = config.train, config.data
  source = cells.source("train", size=data.size, key=jax.random.key(config.seed),
                        num_examples=t.num_train)
  shard_size = t.shard_size
  num_shards = -(-len(source) // shard_size)

  def get_shard(i: int) -> dict[str, np.ndarray]:
    batch = source.get_batch(np.arange(i * shard_size, min(len(source), (i + 1) * shard_size)))
    return {"image": batch["image"], "label": batch["label"]}

  tx = train.make_optimizer(learning_rate=t.learning_rate, weight_decay=t.weight_decay)
  init_key, order_key = jax.random.split(jax.random.fold_in(jax.random.key(config.seed), 1))
  state = train.init_train_state(model, tx=tx, key=init_key,
                                 input_shape=(1, data.size, data.size, 3))
  result = train.train_continuous(
      model, state, get_shard, num_shards=num_shards, tx=tx, epochs=t.epochs,
      batch_size=t.batch_size, key=order_key, workdir=workdir / "train",
      checkpoint_every=t.checkpoint_every or None, max_steps=t.max_steps or None,
      progress=progress)
  return result.state.variables


def build_model(config, workdir: pathlib.Path, *, progress: bool = True):
  """`(model, variables, description)` from `config.model` (checkpoint, npz or cells training).

  Raises:
    ValueError: no model given for a non-cells source, or a bad `model.name`.
  """
  m = config.model
  if m.checkpoint:
    from xai_jax.models import port  # pylint: disable=import-outside-toplevel
    model, variables = port.load(m.checkpoint)
    return model, variables, f"checkpoint {m.checkpoint}"
  if m.name not in models.NAMES:
    raise ValueError(f"unknown model.name {m.name!r}; valid: {', '.join(models.NAMES)}")
  options = {"head": m.head} if m.head else {}
  model = models.get(m.name, num_classes=m.num_classes, **options)
  if m.npz:
    return model, _load_npz(m.npz), f"{m.name} from {m.npz}"
  if config.data.source != "cells":
    raise ValueError("a model is needed: --config.model.checkpoint=DIR (port.save / "
                     "experiments.port_weights) or --config.model.npz=FILE; training here "
                     "is only done on the cells (data.source='cells')")
  variables = _train_on_cells(config, workdir, model, progress=progress)
  return model, variables, (f"{m.name} trained on {config.train.num_train} cells "
                            f"({config.train.max_steps or 'all'} steps)")


def method_options(config) -> dict[str, dict]:
  """`{display name: options}` for `runner.evaluate`, ConfigDicts turned into plain dicts."""
  return {name: dict(options) for name, options in config.methods.items()}


def check_workdir(config, workdir: pathlib.Path) -> None:
  """Refuses a workdir that holds a run of another config; writes `config.json`."""
  runner.record_config(workdir / "config.json", json.loads(config.to_json()),
                       ignore=_VOLATILE_FIELDS)


def accuracy_of(samples: pd.DataFrame, split: str) -> pd.DataFrame:
  """Accuracy of each model on the evaluated images with a known label (label >= 0)."""
  rows = []
  for name, group in samples.groupby("model", sort=False):
    per_image = group.drop_duplicates("index")
    known = per_image[per_image["label"] >= 0]
    rows.append({"model": name, "split": split,
                 "accuracy": float(known["correct"].mean()) if len(known) else float("nan"),
                 "num_examples": int(len(known))})
  return pd.DataFrame(rows)


def evaluate(config, workdir: pathlib.Path, source, model, variables, *, metrics,
             metric_options, progress: bool = True) -> runner.EvaluationTables:
  """The one evaluation call: `runner.evaluate` over `source` (resumable, sharded)."""
  return runner.evaluate(
      workdir, source=source, model=model, variables=variables,
      methods=method_options(config), metrics=metrics, metric_options=metric_options,
      shard_size=config.evaluate.shard_size, num_examples=None,
      key=jax.random.fold_in(jax.random.key(config.seed), 1000), model_name=config.model_name,
      progress=progress, gallery_size=config.evaluate.gallery_size)


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
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
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
  """Runs (or resumes) the localisation experiment; returns its tables and the report path."""
  started = time.perf_counter()
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  check_workdir(config, workdir)
  source = build_source(config)
  model, variables, described = build_model(config, workdir, progress=progress)
  logging.info("model: %s; %d images from %r", described, len(source), source)
  metric_options = {"iou": dict(config.iou)}
  tables = evaluate(config, workdir, source, model, variables, metrics=("iou",),
                    metric_options=metric_options, progress=progress)
  samples = tables.samples
  runner.write_table(samples, workdir / "samples.csv")
  accuracy = accuracy_of(samples, config.data.split)
  runner.write_table(accuracy, workdir / "accuracy.csv")
  summary = report.summary_table(samples, metrics=list(LOCALIZATION_METRICS), accuracy=accuracy,
                                 split=config.data.split)
  runner.write_table(summary, workdir / "summary.csv")
  (workdir / "summary.md").write_text(report.to_markdown(summary))
  confidence = confidence_table(samples, threshold=config.confidence_threshold)
  runner.write_table(confidence, workdir / "confidence.csv")
  wide = confidence_wide(confidence)
  (workdir / "confidence.md").write_text(report.to_markdown(wide))

  figures = {}
  if config.figures:
    folder = workdir / "figures"
    figures["IOU and IOU* by prediction confidence (Gattas Fig. 4.1)"] = confidence_figure(
        confidence, folder / "iou_by_confidence.png", threshold=config.confidence_threshold)
    if tables.gallery:
      figures["Saliency maps of a few images"] = report.method_class_gallery(
          gallery_for_figure(tables.gallery), folder / "gallery.png",
          title=f"{config.model_name}: saliency maps")
  high = confidence[(confidence["group"] == "high") & (confidence["metric"] == "iou")]
  notes = (f"Model: {described}. Masks: "
           + ("non-zero ground-truth heatmap of the cells" if config.data.source == "cells"
              else "union of the annotated bounding boxes")
           + f". Thresholds: IOU at {config.iou.n_std} std, IOU* at {config.iou.n_std_star} "
           f"std, abs={config.iou.abs}. High confidence: softmax > "
           f"{config.confidence_threshold} ({int(high['count'].iloc[0]) if len(high) else 0} of "
           f"{samples['index'].nunique()} images); the split is in `confidence.md`. Wall time "
           f"of this invocation {time.perf_counter() - started:.0f} s.")
  report_path = report.write_report(
      workdir, title=f"Pixel-wise localisation, IOU / IOU* ({config.model_name})",
      summary=summary, accuracy=accuracy, figures=figures, config=json.loads(config.to_json()),
      notes=notes)
  with open(report_path, "a") as stream:
    stream.write(f"\n## IOU and IOU* by prediction confidence (mean +- std; high: softmax > "
                 f"{config.confidence_threshold})\n\n" + report.to_markdown(wide))
  return {"samples": samples, "summary": summary, "confidence": confidence,
          "accuracy": accuracy, "gallery": tables.gallery, "report": report_path,
          "figures": figures}


def main(argv):
  del argv
  launch.start()
  launch.run_and_print(run)


if __name__ == "__main__":
  # Flags are defined here, not at import, so that several experiment modules can be imported
  # in one process (tests) without clashing `--config` / `--workdir` definitions.
  launch.define_config_and_workdir("localization")
  app.run(main)
