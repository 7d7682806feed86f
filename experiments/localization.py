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

The config is checked first (`validate`: methods and their options, IOU options, data and
model fields, shard sizes), before any data is read or a model trained, so a bad config
fails at once and leaves nothing in the workdir. Rerunning with the same workdir skips
finished shards. A model trained here (`WORKDIR/train`) depends only on the training fields
(`training_fields`: seed, data.size, model, train), recorded in `WORKDIR/train_config.json`;
a run with other training fields is refused, while other fields (methods, `iou`,
`data.num_examples`, `evaluate.*`, ...) may change: the model is reused and the new outputs go
to `WORKDIR/eval_<hash>/` (see `experiments/launch.py`). The helpers of the "data and model"
section are shared with `experiments/pixel_removal.py`.
"""

from __future__ import annotations

import io
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
from xai_jax import files, models, runner, train
from xai_jax.data import cell_source
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
  arrays = runner.load_npz(path, unrecorded="accept",  # may come from elsewhere
                           fix="write it again (save_npz)")
  flat = {tuple(k.split("/")): np.asarray(v) for k, v in arrays.items()}
  if not flat or any(len(k) < 2 for k in flat):
    raise ValueError(f"{path}: expected keys like 'params/<module>/kernel'; got "
                     f"{sorted('/'.join(k) for k in flat)[:5]}")
  return traverse_util.unflatten_dict(flat)


def save_npz(variables: dict, path: str | os.PathLike) -> None:
  """Writes Flax variables as the flat `.npz` that `model.npz` reads."""
  from flax import traverse_util  # pylint: disable=import-outside-toplevel
  flat = traverse_util.flatten_dict(jax.device_get(dict(variables)))
  buffer = io.BytesIO()
  np.savez(buffer, **{"/".join(k): np.asarray(v) for k, v in flat.items()})
  files.write_verified(path, buffer.getvalue())  # with its record, checked by `_load_npz`


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


def trains_here(config) -> bool:
  """Whether the model is trained on the cells in the workdir (no checkpoint, no npz)."""
  return not (config.model.checkpoint or config.model.npz)


def training_fields(config) -> tuple[str, ...]:
  """The fields that define the model: the training fields when it is trained here, else
  `model` (its checkpoint or npz)."""
  return ("seed", "data.size", "model", "train") if trains_here(config) else ("model",)


def validate_image_experiment(config, *, metrics, metric_options) -> None:
  """The checks `localization` and `pixel_removal` share, before anything is read or trained.

  Raises:
    ValueError: naming the bad field: data source, split or sizes; model name or training
      settings; no model for a non-cells source; methods and their options
      (`runner.check_methods`); metric options (`runner.check_metrics`, with the pixel-removal
      grid against `data.size`); for the cells, shards too small for the pixel-removal delta
      (`check_evaluation_size`).
  """
  data, m = config.data, config.model
  if data.source not in DATA_SOURCES:
    raise ValueError(f"unknown data.source {data.source!r}; valid: {', '.join(DATA_SOURCES)}")
  if not isinstance(data.size, int) or data.size < 1:
    raise ValueError(f"data.size must be a positive int; got {data.size!r}")
  if not isinstance(data.num_examples, int) or data.num_examples < 0:
    raise ValueError(f"data.num_examples must be an int >= 0 (0: all); got "
                     f"{data.num_examples!r}")
  if data.source == "cells" and data.split not in cell_source.SPLITS:
    raise ValueError(f"unknown data.split {data.split!r} for the cells; valid: "
                     f"{', '.join(cell_source.SPLITS)}")
  if not m.checkpoint:
    if m.name not in models.NAMES:
      raise ValueError(f"unknown model.name {m.name!r}; valid: {', '.join(models.NAMES)}")
    if not m.npz and data.source != "cells":
      raise ValueError("a model is needed: --config.model.checkpoint=DIR (port.save / "
                       "experiments.port_weights) or --config.model.npz=FILE; training here "
                       "is only done on the cells (data.source='cells')")
  if trains_here(config):
    for field in ("num_train", "shard_size", "batch_size"):
      if not isinstance(config.train[field], int) or config.train[field] < 1:
        raise ValueError(f"train.{field} must be a positive int; got {config.train[field]!r}")
  if not isinstance(config.evaluate.gallery_size, int) or config.evaluate.gallery_size < 0:
    raise ValueError(f"evaluate.gallery_size must be an int >= 0; got "
                     f"{config.evaluate.gallery_size!r}")
  runner.check_methods(method_options(config))
  runner.check_metrics(metrics, metric_options, image_size=(data.size, data.size))
  if data.source == "cells":
    count = data.num_examples or cell_source.num_examples_of(data.split)
    check_evaluation_size(config, count, metric_options=metric_options)


def check_evaluation_size(config, num_examples: int, *, metric_options) -> None:
  """Checks the shards of `num_examples` images against the pixel-removal delta's K
  (`runner.check_shards`: every shard, the last one included, needs more than K images)."""
  removal = metric_options.get("pixel_removal", {})
  delta_k = removal.get("delta_k", 0) if removal else 0
  try:
    runner.check_shards(num_examples, config.evaluate.shard_size, delta_k=delta_k or 0)
  except ValueError as error:
    raise ValueError(f"data.num_examples / evaluate.shard_size: {error}") from None


def validate(config) -> None:
  """Checks a localization config before anything is read or trained.

  Raises:
    ValueError: as `validate_image_experiment`, or a `confidence_threshold` outside [0, 1].
  """
  if not 0.0 <= config.confidence_threshold <= 1.0:
    raise ValueError(f"confidence_threshold must be in [0, 1]; got "
                     f"{config.confidence_threshold!r}")
  validate_image_experiment(config, metrics=("iou",), metric_options=_metric_options(config))


def _metric_options(config) -> dict[str, dict]:
  return {"iou": dict(config.iou)}


def check_workdir(config, workdir: pathlib.Path) -> pathlib.Path:
  """Records the model's fields (refusing other ones, `launch.check_training`) and returns the
  folder of this config's outputs (`launch.evaluation_folder`: WORKDIR, or WORKDIR/eval_<hash>
  when WORKDIR holds another evaluation config)."""
  current = json.loads(config.to_json())
  launch.check_training(workdir, current, training_fields(config))
  return launch.evaluation_folder(workdir, current, ignore=_VOLATILE_FIELDS)


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
  """Runs (or resumes) the localisation experiment; returns its tables and the report path.

  Outputs go to `WORKDIR`, or to `WORKDIR/eval_<hash>` for a config whose evaluation fields
  differ from those `WORKDIR` holds (see the module docstring).

  Raises:
    ValueError: a bad config (`validate`; nothing is written then), or a workdir whose model
      comes from other training fields.
  """
  started = time.perf_counter()
  validate(config)
  metric_options = _metric_options(config)
  source = build_source(config)
  check_evaluation_size(config, len(source), metric_options=metric_options)
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  out = check_workdir(config, workdir)
  model, variables, described = build_model(config, workdir, progress=progress)
  logging.info("model: %s; %d images from %r", described, len(source), source)
  tables = evaluate(config, out, source, model, variables, metrics=("iou",),
                    metric_options=metric_options, progress=progress)
  samples = tables.samples
  runner.write_table(samples, out / "samples.csv")
  accuracy = accuracy_of(samples, config.data.split)
  runner.write_table(accuracy, out / "accuracy.csv")
  summary = report.summary_table(samples, metrics=list(LOCALIZATION_METRICS), accuracy=accuracy,
                                 split=config.data.split)
  runner.write_table(summary, out / "summary.csv")
  (out / "summary.md").write_text(report.to_markdown(summary))
  confidence = confidence_table(samples, threshold=config.confidence_threshold)
  runner.write_table(confidence, out / "confidence.csv")
  wide = confidence_wide(confidence)
  (out / "confidence.md").write_text(report.to_markdown(wide))

  figures = {}
  if config.figures:
    folder = out / "figures"
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
      out, title=f"Pixel-wise localisation, IOU / IOU* ({config.model_name})",
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
