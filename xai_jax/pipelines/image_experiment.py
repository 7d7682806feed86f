"""What the image pipelines (`localization`, `pixel_removal`) share: data, model, checks, workdir.

Both explain a model's predicted class on a set of images and score the maps with
`runner.evaluate`; they differ only in the metric and its tables. The images come from a
random-access source (`build_source`): the synthetic cells (`data.source="cells"`, masks and
ground truth from their heatmaps), a folder of images with Pascal-VOC bounding-box XMLs
(`"image_folder"`) or a prepared TFDS image dataset (`"tfds"`). The model (`build_model`) is a
checkpoint written by `xai_jax.models.port.save` (`model.checkpoint`, e.g. torchvision weights
ported by `pipelines.port_weights`), a flat `.npz` of variables (`model.npz`, `save_npz`), or,
on the cells, a small model trained in the workdir (`train_on_cells`, resumable under
`WORKDIR/train`).

A model trained here depends only on the training fields (`training_fields`: seed,
data.size, model, train), recorded in `WORKDIR/train_config.json`; every other field may change
on a trained workdir, whose outputs then go to `WORKDIR/eval_<hash>/` (`check_workdir`, see
`xai_jax.pipelines.workdir`).
"""

from __future__ import annotations

import io
import json
import os
import pathlib

from flax import traverse_util
import jax
import ml_collections
import numpy as np
import pandas as pd

from xai_jax import files, models, runner, train
from xai_jax.data import cell_source
from xai_jax.data import images
from xai_jax.data import tfds_cells  # pylint: disable=unused-import  # registers `xai_cells`
from xai_jax.metrics import registry
from xai_jax.models import port
from xai_jax.pipelines import training_data
from xai_jax.pipelines import workdir as workdir_layout

DATA_SOURCES = ("cells", "image_folder", "tfds")
# Fields that may change between runs sharing a workdir without changing the results.
_VOLATILE_FIELDS = ("figures",)


# --------------------------------------------------------------------------------------------
# Data and model.


def _read_lines(path: str) -> list[str]:
  with open(path) as stream:
    return [line.strip() for line in stream if line.strip()]


def build_source(config: ml_collections.ConfigDict):
  """The evaluated images: a random-access source (see `xai_jax.data.images`).

  Raises:
    ValueError: an unknown `data.source` (listing the valid ones) or missing paths (an
      image folder without `data.reference_folder` when a method names "train:N" too).
  """
  data = config.data
  num = data.num_examples or None
  if data.source == "cells":
    return cell_source.source(data.split, size=data.size, key=jax.random.key(config.seed),
                        num_examples=num or None)
  class_names = tuple(data.class_names) or None
  if data.class_names_file:
    class_names = tuple(_read_lines(data.class_names_file))
  if data.source == "image_folder":
    if not data.image_folder:
      raise ValueError("data.source='image_folder' needs --config.data.image_folder=DIR")
    if not data.reference_folder and runner.training_references_needed(method_options(config)):
      raise ValueError(_NO_REFERENCE_FOLDER)
    return images.ImageFolderSource(
        data.image_folder, size=data.size, annotations_dir=data.annotations_dir or None,
        class_names=class_names, crop=data.crop, normalize=data.normalize,
        include_difficult=data.include_difficult, keep_labels=tuple(data.keep_labels) or None,
        per_class=data.per_class or None, num_examples=num)
  if data.source == "tfds":
    if not data.tfds_name:
      raise ValueError("data.source='tfds' needs --config.data.tfds_name=NAME")
    return images.TfdsImageSource(data.tfds_name, data.split, size=data.size,
                                  data_dir=data.tfds_dir or None, crop=data.crop,
                                  normalize=data.normalize,
                                  keep_labels=tuple(data.keep_labels) or None,
                                  per_class=data.per_class or None, num_examples=num)
  raise ValueError(f"unknown data.source {data.source!r}; valid: {', '.join(DATA_SOURCES)}")


_NO_REFERENCE_FOLDER = (
    "data.source='image_folder' with a method that names 'train:N' (training images as its "
    "background or baselines) needs --config.data.reference_folder=DIR (training images)")


def reference_source(config: ml_collections.ConfigDict):
  """The training images that a method's "train:N" option takes its first N from, or None when
  no method names one (`runner.training_references_needed`).

  The cells: the training split the model is trained on (`cells_training_shards`); a TFDS
  dataset: its "train" split; an image folder: `data.reference_folder` (the same resize, crop
  and normalisation as the evaluated images). As shap's `GradientExplainer` background in
  Gattas' layer SHAP (thesis sec. 3.7), the references are training images, never the
  evaluated ones.

  Raises:
    ValueError: an image folder source without `data.reference_folder`.
  """
  if not runner.training_references_needed(method_options(config)):
    return None
  data = config.data
  if data.source == "cells":
    return cells_training_shards(config).source
  if data.source == "tfds":
    return images.TfdsImageSource(data.tfds_name, "train", size=data.size,
                                  data_dir=data.tfds_dir or None, crop=data.crop,
                                  normalize=data.normalize)
  if not data.reference_folder:
    raise ValueError(_NO_REFERENCE_FOLDER)
  return images.ImageFolderSource(data.reference_folder, size=data.size, crop=data.crop,
                                  normalize=data.normalize)


def load_npz(path: str | os.PathLike) -> dict:
  """Flax variables from a flat `.npz` whose keys are "/"-joined paths ("params/fc/kernel").

  Raises:
    files.DamagedFileError: the file does not match the record `save_npz` wrote with it.
    ValueError: keys that are not variable paths.
  """
  arrays = files.load_npz(path, unrecorded="accept",  # may come from elsewhere
                          fix="write it again (save_npz)")
  flat = {tuple(k.split("/")): np.asarray(v) for k, v in arrays.items()}
  if not flat or any(len(k) < 2 for k in flat):
    raise ValueError(f"{path}: expected keys like 'params/<module>/kernel'; got "
                     f"{sorted('/'.join(k) for k in flat)[:5]}")
  return traverse_util.unflatten_dict(flat)


def save_npz(variables: dict, path: str | os.PathLike) -> None:
  """Writes Flax variables as the flat `.npz` that `model.npz` reads."""
  flat = traverse_util.flatten_dict(jax.device_get(dict(variables)))
  buffer = io.BytesIO()
  np.savez(buffer, **{"/".join(k): np.asarray(v) for k, v in flat.items()})
  files.write_verified(path, buffer.getvalue())  # with its record, checked by `load_npz`


def cells_training_shards(config) -> training_data.TrainingShards:
  """The cells' training split (`train.num_train` cells of `data.size`) in `train.shard_size`
  shards: what `train_on_cells` trains on, and whose mean RGB is the fill "dataset_mean"."""
  t, data = config.train, config.data
  source = cell_source.source("train", size=data.size, key=jax.random.key(config.seed),
                              num_examples=t.num_train)
  return training_data.TrainingShards(source, t.shard_size)


def train_on_cells(config, workdir: pathlib.Path, model, *, progress: bool) -> dict:
  """Trains `model` on the cells (resumable under WORKDIR/train); returns its variables."""
  t, data = config.train, config.data
  shards = cells_training_shards(config)
  tx = train.make_optimizer(learning_rate=t.learning_rate, weight_decay=t.weight_decay)
  init_key, order_key = jax.random.split(jax.random.fold_in(jax.random.key(config.seed), 1))
  state = train.init_train_state(model, tx=tx, key=init_key,
                                 input_shape=(1, data.size, data.size, 3))
  result = train.train_continuous(
      model, state, shards.get, num_shards=shards.num_shards, tx=tx, epochs=t.epochs,
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
    model, variables = port.load(m.checkpoint)
    return model, variables, f"checkpoint {m.checkpoint}"
  if m.name not in models.NAMES:
    raise ValueError(f"unknown model.name {m.name!r}; valid: {', '.join(models.NAMES)}")
  options = {"head": m.head} if m.head else {}
  model = models.get(m.name, num_classes=m.num_classes, **options)
  if m.npz:
    return model, load_npz(m.npz), f"{m.name} from {m.npz}"
  if config.data.source != "cells":
    raise ValueError("a model is needed: --config.model.checkpoint=DIR (port.save / "
                     "experiments.port_weights) or --config.model.npz=FILE; training here "
                     "is only done on the cells (data.source='cells')")
  variables = train_on_cells(config, workdir, model, progress=progress)
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


# --------------------------------------------------------------------------------------------
# Checks and workdir.


def validate_image_experiment(config, *, metrics, metric_options) -> None:
  """The checks `localization` and `pixel_removal` share, before anything is read or trained.

  Raises:
    ValueError: naming the bad field: data source, split or sizes; model name or training
      settings; no model for a non-cells source; methods and their options
      (`runner.check_methods`); metric options (`registry.check_options`, with the pixel-removal
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
  registry.check_options(metrics, metric_options, image_size=(data.size, data.size))
  if data.source == "cells":
    count = data.num_examples or cell_source.num_examples_of(data.split)
    check_evaluation_size(config, count, metric_options=metric_options)


def check_evaluation_size(config, num_examples: int, *, metric_options) -> None:
  """Checks the shards of `num_examples` images and the pixel-removal delta's K
  (`runner.check_shards`: the evaluated set needs more than K images)."""
  removal = metric_options.get("pixel_removal", {})
  delta_k = removal.get("delta_k", 0) if removal else 0
  try:
    runner.check_shards(num_examples, config.evaluate.shard_size, delta_k=delta_k or 0)
  except ValueError as error:
    raise ValueError(f"data.num_examples / evaluate.shard_size: {error}") from None


def check_workdir(config, workdir: pathlib.Path) -> pathlib.Path:
  """Records the model's fields (refusing other ones, `workdir.check_training`) and returns
  the folder of this config's outputs (`workdir.evaluation_folder`: WORKDIR, or
  WORKDIR/eval_<hash> when WORKDIR holds another evaluation config)."""
  current = json.loads(config.to_json())
  workdir_layout.check_training(workdir, current, training_fields(config))
  return workdir_layout.evaluation_folder(workdir, current, ignore=_VOLATILE_FIELDS)


# --------------------------------------------------------------------------------------------
# Evaluation.


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
      progress=progress, gallery_size=config.evaluate.gallery_size,
      references=reference_source(config))
