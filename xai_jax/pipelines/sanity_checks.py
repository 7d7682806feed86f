"""Sanity checks for saliency maps (Adebayo et al., NeurIPS 2018, arXiv:1810.03292).

`run(config, workdir)` trains a classifier on the synthetic cells or on MNIST / Fashion-MNIST
(`data.source="tfds"`, `xai_jax.data.mnist`), or loads an orbax checkpoint written by
`xai_jax.models.port.save` (e.g. Inception v3 on ImageNet images from a folder or from TFDS's
`imagenet2012`), explains the model's predicted class on a batch of
images with every configured method, and measures how the explanations change under cascading
and independent model-parameter randomisation (and, when enabled, data randomisation: the same
architecture trained on permuted labels). The variants, run times and expected numbers are in
`configs/sanity_checks.py`.

The workdir is the unit of output; a rerun with the same config resumes and recomputes only
what is missing:

  config.json                        the configuration (a rerun with another one is refused)
  train/                             checkpoints and history of the trained model
  train_random_labels/               the permuted-label model (data randomisation)
  model.json                         architecture, layers from the logits down, accuracies
  shards/similarity_<mode>/          one CSV per method (`xai_jax.runner.run_shards`)
  explanations/<mode>/<method>.npz   the maps of the first `grid_images` images, every stage
  similarity_<mode>.csv              method, mode, stage_index, stage, image, measure, value
  summary.csv                        mean, std and count over the images per stage
  grid_<mode>_<image>.png            methods x stages, diverging maps (their Fig. 2)
  curves_<mode>.png                  mean similarity per stage and measure (their Fig. 3, 4)
  report.md                          links, and the mean similarities at the last stage

<mode> is "cascading", "independent" or "data" (stages "true_labels", "random_labels").
Stage 0 ("original", or "true_labels") compares each map with itself, so its similarity is
1 wherever the measure is defined.
"""

import functools
import json
import math
import os
import pathlib
from typing import Any, Mapping

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from xai_jax import explain
from xai_jax import files
from xai_jax import models
from xai_jax import reports
from xai_jax import runner
from xai_jax import train
from xai_jax import xla
from xai_jax.data import cell_source
from xai_jax.data import images
from xai_jax.data import mnist
from xai_jax.metrics import sanity
from xai_jax.metrics import similarity
from xai_jax.models import port
from xai_jax.pipelines import training_data
from xai_jax.pipelines import workdir as workdir_layout
from xai_jax.reports import sanity as sanity_figures

MODES = ("cascading", "independent")
DATA_MODE = "data"
SOURCES = ("cells", "image_folder", "tfds")
# `(mean, std)` per channel of images in [0, 1]. "inception": the [-1, 1] scaling of the
# original (TF-slim) Inception v3 weights that Adebayo et al. explain; scalars, so it also
# applies to one-channel images.
NORMALIZATIONS = {"none": None,
                  "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
                  "inception": (0.5, 0.5)}
CROPS = images.CROPS
# TFDS datasets a model may be trained on here (from scratch, and on permuted labels).
TRAINABLE_TFDS = mnist.DATASETS
_SHARD_SIZE = 256  # training samples per training shard


# --------------------------------------------------------------------------------------------
# Configuration


def method_options(config) -> dict[str, tuple[str, dict[str, Any]]]:
  """`{display name: (registry name, keyword options)}` in the order of `config.methods`."""
  given = config.method_options.to_dict()
  resolved = {}
  for display in config.methods:
    options = dict(given.get(display) or {})
    resolved[display] = (options.pop("method_name", display), options)
  return resolved


def trains_here(config) -> bool:
  """Whether the model is trained in the workdir (no `model.checkpoint`)."""
  return not config.model.checkpoint


def is_mnist(config) -> bool:
  """Whether the images are TFDS's MNIST or Fashion-MNIST (28x28x1, `xai_jax.data.mnist`)."""
  return config.data.source == "tfds" and config.data.tfds_name in TRAINABLE_TFDS


def channels(config) -> int:
  """Colour channels of the images: 1 for MNIST / Fashion-MNIST, else 3."""
  return mnist.IMAGE_SHAPE[-1] if is_mnist(config) else 3


def _check_counts(block, prefix: str, fields: tuple[str, ...]) -> None:
  """Raises ValueError naming `prefix.field` unless each field of `block` is an int >= 1."""
  for field in fields:
    value = block[field]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"{prefix}.{field} must be >= 1 (an int), got {value!r}")


def _validate_data(config) -> None:
  """The `data` block (see `validate`)."""
  data = config.data
  if data.source not in SOURCES:
    raise ValueError(f"unknown data.source {data.source!r}; valid: {', '.join(SOURCES)}")
  if data.normalize not in NORMALIZATIONS:
    raise ValueError(f"unknown data.normalize {data.normalize!r}; valid: "
                     f"{', '.join(NORMALIZATIONS)}")
  if data.crop not in CROPS:
    raise ValueError(f"unknown data.crop {data.crop!r}; valid: {', '.join(CROPS)}")
  _check_counts(data, "data", ("num_explain", "explain_batch_size", "train_examples"))
  if data.source == "cells" and data.explain_split not in cell_source.SPLITS:
    raise ValueError(f"unknown data.explain_split {data.explain_split!r}; valid: "
                     f"{', '.join(cell_source.SPLITS)}")
  if data.source == "tfds" and not data.tfds_name:
    raise ValueError("data.source='tfds' needs data.tfds_name (e.g. 'mnist', "
                     "'fashion_mnist', 'imagenet2012')")
  if data.source != "tfds" and (data.tfds_name or data.tfds_dir):
    raise ValueError(f"data.tfds_name / data.tfds_dir are read only with data.source='tfds'"
                     f" (data.source is {data.source!r}); leave them empty")
  if data.source != "image_folder" and data.image_folder:
    raise ValueError(f"data.image_folder is read only with data.source='image_folder' "
                     f"(data.source is {data.source!r}); leave it empty")
  if is_mnist(config):
    for field in ("explain_split", "train_split"):
      try:
        mnist.check_split(data[field])
      except ValueError as error:
        raise ValueError(f"data.{field}: {error}") from None
    if data.size != mnist.IMAGE_SHAPE[0]:
      raise ValueError(f"data.size must be {mnist.IMAGE_SHAPE[0]} for {data.tfds_name} "
                       f"(its images are not resized); got {data.size!r}")
    if data.normalize == "imagenet":
      raise ValueError(f"data.normalize='imagenet' needs RGB images; {data.tfds_name} is "
                       "grey: use 'none' (the paper's [0, 1] pixels) or 'inception'")
  elif not isinstance(data.size, int) or not 32 <= data.size <= 1024:
    raise ValueError(f"data.size must be an int in 32..1024, got {data.size!r}")
  if not 1 <= config.grid_images <= data.num_explain:
    raise ValueError(f"grid_images must be in 1..data.num_explain={data.num_explain}, got "
                     f"{config.grid_images}")


def validate(config) -> None:
  """Checks a sanity-check config without touching any file, before anything runs.

  Raises:
    ValueError: naming the bad field: an unknown method or option, or a bad option value
      (`explain.check_options`), an unknown model, measure, mode, init, data source, split,
      crop or normalisation; fields of another data source (`tfds_name` without
      `source="tfds"`, ...); training with neither the cells nor MNIST / Fashion-MNIST;
      MNIST at another size than 28 or with the ImageNet normalisation; sizes too small
      for a measure; empty or duplicate method lists.
  """
  _validate_data(config)
  data = config.data
  trainable = data.source == "cells" or is_mnist(config)
  if trains_here(config):
    if config.model.name not in models.NAMES:
      raise ValueError(f"unknown model.name {config.model.name!r}; valid: "
                       f"{', '.join(models.NAMES)}")
    if not trainable:
      raise ValueError("training from scratch needs data.source='cells' or data.source="
                       f"'tfds' with data.tfds_name in {', '.join(TRAINABLE_TFDS)}; give "
                       "model.checkpoint to explain a trained model on other images")
    _check_counts(config.train, "train", ("epochs", "batch_size", "test_examples"))
    if not isinstance(config.train.max_steps, int) or config.train.max_steps < 0:
      raise ValueError(f"train.max_steps must be an int >= 0 (0: all epochs), got "
                       f"{config.train.max_steps!r}")

  if not config.methods:
    raise ValueError("config.methods is empty; name at least one explanation method")
  if len(set(config.methods)) != len(config.methods):
    raise ValueError(f"config.methods has duplicates: {list(config.methods)}")
  for display, (name, options) in method_options(config).items():
    if name not in explain.METHODS:
      raise ValueError(f"unknown explanation method {name!r} (for {display!r}); valid: "
                       f"{', '.join(sorted(explain.METHODS))}; a display name that differs "
                       "from the registry name needs the option method_name=<registry name>")
    try:
      named = [f for f in ("baseline", "baselines") if isinstance(options.get(f), str)]
      if named:
        raise ValueError(f"option {named[0]} must be an array or number here (named "
                         "baselines such as 'zeros' are resolved only by runner.evaluate)")
      explain.check_options(name, options,
                            supplied=("key",) if explain.takes_key(name) else ())
    except ValueError as error:
      raise ValueError(f"method_options.{display}: {error}") from None

  modes = tuple(config.randomization.modes)
  unknown = [m for m in modes if m not in MODES]
  if unknown:
    raise ValueError(f"unknown randomization.modes {unknown}; valid: {', '.join(MODES)}")
  if not modes and not config.data_randomization.enabled:
    raise ValueError("nothing to do: randomization.modes is empty and data_randomization "
                     "is disabled")
  if config.randomization.init not in sanity.INITS:
    raise ValueError(f"unknown randomization.init {config.randomization.init!r}; valid: "
                     f"{', '.join(sanity.INITS)}")
  if config.data_randomization.enabled:
    if not trainable:
      raise ValueError("data_randomization trains on permuted training labels: it needs "
                       "data.source='cells' or data.source='tfds' with data.tfds_name in "
                       f"{', '.join(TRAINABLE_TFDS)}")
    settings = config.data_randomization
    _check_counts(settings, "data_randomization",
                  ("train_examples", "steps_per_check", "max_steps", "batch_size"))
    if not 0.0 < settings.target_accuracy < 1.0:
      raise ValueError(f"data_randomization.target_accuracy must be in (0, 1), got "
                       f"{settings.target_accuracy!r}")

  unknown = [m for m in config.measures if m not in similarity.MEASURES]
  if unknown or not config.measures:
    raise ValueError(f"unknown or no similarity measures {list(config.measures)}; valid: "
                     f"{', '.join(similarity.MEASURES)}")
  if "hog" in config.measures and data.size < 48:
    raise ValueError(f"the 'hog' measure needs images of at least 48x48 pixels (3 cells of "
                     f"16); data.size is {data.size}: drop 'hog' from measures or enlarge")


def check_config(config) -> None:
  """`validate`, then the files the config names: the checkpoint and the images.

  Raises:
    ValueError: as `validate`, or a missing checkpoint, image folder or TFDS dataset (the
      message says how to prepare it).
  """
  validate(config)
  data = config.data
  if data.source == "image_folder" and not os.path.isdir(data.image_folder):
    raise ValueError(f"data.image_folder {data.image_folder!r} is not a folder; pass "
                     "--config.data.image_folder=DIR (JPEG/PNG files)")
  if data.source == "tfds":
    _tfds_source(config, data.explain_split, 1)  # opening checks data_dir and preparation
  if config.model.checkpoint:
    if not os.path.isfile(os.path.join(config.model.checkpoint, port.METADATA_FILE)):
      raise ValueError(f"model.checkpoint {config.model.checkpoint!r} holds no "
                       f"{port.METADATA_FILE}; write one with `python -m "
                       "experiments.port_weights` (xai_jax.models.port.save)")


def _data_fields(config) -> tuple[str, ...]:
  """The data fields a trained model depends on (TFDS fields only for `source="tfds"`)."""
  if config.data.source == "tfds":
    return ("data.source", "data.tfds_name", "data.train_split", "data.size",
            "data.normalize")
  return ("data.source", "data.size", "data.normalize")


def training_fields(config) -> tuple[str, ...]:
  """The fields that define the model in `WORKDIR/train` (only `model` for a checkpoint)."""
  if config.model.checkpoint:
    return ("model",)
  return ("seed", *_data_fields(config), "data.train_examples", "model", "train")


def random_labels_fields(config) -> tuple[str, ...]:
  """The fields that define the permuted-label model in `WORKDIR/train_random_labels`."""
  return ("seed", *_data_fields(config), "model", "data_randomization")


def check_workdir(config, workdir: pathlib.Path) -> pathlib.Path:
  """Records the trained models' fields (refusing other ones) and returns the output folder.

  The models (`WORKDIR/train`, and `WORKDIR/train_random_labels` with data randomisation)
  depend only on their training fields (`training_fields`, `random_labels_fields`); every
  other field may change on a trained workdir, whose outputs then go to
  `WORKDIR/eval_<hash>` (`workdir.evaluation_folder`), reusing the models.
  """
  current = json.loads(config.to_json())
  if config.data_randomization.enabled:
    workdir_layout.check_training(workdir, current, random_labels_fields(config),
                                  record="train_random_labels/train_config.json")
  workdir_layout.check_training(workdir, current, training_fields(config))
  return workdir_layout.evaluation_folder(workdir, current)


# --------------------------------------------------------------------------------------------
# Data and model


def normalize(images: np.ndarray, name: str) -> np.ndarray:
  """`(images - mean) / std` with the statistics `NORMALIZATIONS[name]`.

  Args:
    images: `float32[N, H, W, C]` in [0, 1].
    name: "none", "imagenet" (torchvision's statistics, RGB) or "inception" (to [-1, 1]).

  Returns:
    `float32[N, H, W, C]`.
  """
  stats = NORMALIZATIONS[name]
  if stats is None:
    return np.asarray(images, np.float32)
  mean, std = (np.asarray(v, np.float32) for v in stats)
  return ((np.asarray(images, np.float32) - mean) / std).astype(np.float32)


def _tfds_source(config, split: str, count: int):
  """The first `count` records of a TFDS split: `mnist.source` for MNIST / Fashion-MNIST
  (28x28x1 in [0, 1]), else `images.TfdsImageSource` (resized / cropped RGB in [0, 1])."""
  data = config.data
  data_dir = data.tfds_dir or None
  if is_mnist(config):
    return mnist.source(data.tfds_name, split, data_dir=data_dir, num_examples=count)
  return images.TfdsImageSource(data.tfds_name, split, size=data.size, data_dir=data_dir,
                                crop=data.crop, num_examples=count)


def _training_source(config, split: str, count: int):
  """`count` training (or test) examples, unnormalised: cells or MNIST / Fashion-MNIST.

  `split` is "train" or "test": the cells' split of that name; for TFDS `data.train_split`
  or `data.explain_split` (where the held-out accuracy is measured).
  """
  if config.data.source == "cells":
    return cell_source.source(split, size=config.data.size, num_examples=count)
  tfds_split = config.data.train_split if split == "train" else config.data.explain_split
  return _tfds_source(config, tfds_split, count)


def _training_labels(source) -> np.ndarray:
  """`int32[len(source)]`: every label of a training source, without reading the images
  where the source allows it (the cells)."""
  if isinstance(source, cell_source.CellSource):
    return np.asarray(source.labels()[0], np.int32)
  return np.asarray(source.labels(), np.int32)


def explain_images(config) -> np.ndarray:
  """The images to explain, `float32[num_explain, size, size, C]`, normalised as configured.

  The cells' `explain_split`; the first `num_explain` images of `image_folder` (sorted by
  relative path, also in its immediate subfolders) or of the TFDS split `explain_split`,
  resized and cropped as `data.crop` says (`xai_jax.data.images`; MNIST is not resized).
  """
  data = config.data
  if data.source == "cells":
    source = cell_source.source(data.explain_split, size=data.size, num_examples=data.num_explain)
  elif data.source == "image_folder":
    source = images.ImageFolderSource(data.image_folder, size=data.size, crop=data.crop,
                                      num_examples=data.num_explain)
  else:
    source = _tfds_source(config, data.explain_split, data.num_explain)
  if len(source) < data.num_explain:
    raise ValueError(f"data.num_explain asks for {data.num_explain} images; {source!r} "
                     f"has {len(source)}")
  batch = source.get_batch(np.arange(data.num_explain))
  return normalize(batch["image"], data.normalize)


def _training_shards(config, split: str, count: int, labels=None
                     ) -> training_data.TrainingShards:
  """`count` examples of a split as training shards of `_SHARD_SIZE`, read on first access and
  kept (a finished training run that only restores its checkpoint needs none). Images are
  normalised as configured; `labels` replaces the true labels."""
  return training_data.TrainingShards(
      _training_source(config, split, count), _SHARD_SIZE, labels=labels, keep=True,
      preprocess=functools.partial(normalize, name=config.data.normalize))


def _accuracy(model, variables, shards: training_data.TrainingShards) -> float:
  return float(train.evaluate(model, variables, shards))


def _read_json(path: pathlib.Path):
  """The JSON at `path` if it verifies; None if it is missing, or damaged (then reported with
  a warning and removed: the caller recomputes it)."""
  data = files.read_or_discard(path, action="recomputing it")
  return None if data is None else json.loads(data)


def load_checkpoint(config):
  """`(model, variables)` of `model.checkpoint` (`port.load`).

  With `data.normalize="inception"` an Inception v3 checkpoint's `transform_input` is turned
  off: torchvision's pretrained weights expect ImageNet-normalised images, which
  `transform_input` maps to `2 * pixel - 1`, the [-1, 1] input of the original Google
  weights that Adebayo et al. explain; feeding that input directly gives the same logits
  and explanations with respect to the paper's input (its gradients, its zero baseline).
  """
  model, variables = port.load(config.model.checkpoint)
  if config.data.normalize == "inception" and getattr(model, "transform_input", False):
    model = model.clone(transform_input=False)
  return model, variables


def load_or_train_model(config, workdir: pathlib.Path, *, progress: bool = True):
  """The model to explain: loaded from `config.model.checkpoint` (`load_checkpoint`), or
  trained on the cells or MNIST / Fashion-MNIST (checkpointed in `WORKDIR/train`, so a rerun
  resumes or returns at once).

  Returns:
    `(model, variables, info)` with `info` a JSON-able dict (accuracies, steps).
  """
  if config.model.checkpoint:
    model, variables = load_checkpoint(config)
    return model, variables, {"checkpoint": os.path.abspath(config.model.checkpoint)}
  key = jax.random.key(config.seed)
  model = models.get(config.model.name, num_classes=config.model.num_classes)
  settings = config.train
  tx = train.make_optimizer(learning_rate=settings.learning_rate,
                            weight_decay=settings.weight_decay)
  size = config.data.size
  state = train.init_train_state(model, tx=tx, key=jax.random.fold_in(key, 1),
                                 input_shape=(1, size, size, channels(config)))
  shards = _training_shards(config, "train", config.data.train_examples)
  result = train.train_continuous(
      model, state, shards.get, num_shards=shards.num_shards, tx=tx, epochs=settings.epochs,
      batch_size=settings.batch_size, key=jax.random.fold_in(key, 2),
      workdir=workdir / "train", checkpoint_every=settings.checkpoint_every or None,
      max_steps=settings.max_steps or None, progress=progress)
  variables = result.state.variables
  path = workdir / "train" / "accuracy.json"
  info = _read_json(path)
  if info is None or info["steps"] != int(result.state.step):
    info = {"steps": int(result.state.step),
            "train_accuracy": _accuracy(model, variables, shards),
            "test_accuracy": _accuracy(
                model, variables, _training_shards(config, "test", settings.test_examples))}
    files.write_json(info, path, verified=True)
  return model, variables, info


def label_memorizer(model, *, learning_rate: float = 1e-3, batch_size: int = 32,
                    target_accuracy: float = 0.95, max_epochs: int = 200,
                    epochs_per_check: int = 5, weight_decay: float = 0.0) -> sanity.TrainFn:
  """A `train_fn` for `metrics.sanity.data_randomization`: trains `model` until it memorises.

  Adebayo et al., Sec. 4: the architecture is trained from scratch (Adam,
  `train.make_optimizer`) on the given (permuted) labels, in-memory, `epochs_per_check` epochs
  at a time, until its accuracy on that training set exceeds `target_accuracy`.

  Args:
    model: the Flax module.
    learning_rate, batch_size, weight_decay: Adam settings (`xai_jax.train.make_optimizer`).
    target_accuracy: stop once the training accuracy on the given labels exceeds it.
    max_epochs: give up after this many epochs.
    epochs_per_check: epochs between training-accuracy checks.

  Returns:
    `train_fn(images, labels, *, init_key, train_key) -> sanity.LabelTraining`, which raises
    a ValueError when the model does not reach `target_accuracy` within `max_epochs`.
  """

  def train_fn(images, labels, *, init_key: jax.Array, train_key: jax.Array
               ) -> sanity.LabelTraining:
    images, labels = np.asarray(images), np.asarray(labels)
    shard = {"image": images, "label": labels}
    tx = train.make_optimizer(learning_rate=learning_rate, weight_decay=weight_decay)
    state = train.init_train_state(model, tx=tx, key=init_key,
                                   input_shape=(1,) + images.shape[1:])
    accuracy, epochs = 0.0, 0
    while epochs < max_epochs:
      result = train.train_continuous(model, state, [shard], tx=tx, epochs=epochs_per_check,
                                      batch_size=batch_size,
                                      key=jax.random.fold_in(train_key, epochs),
                                      progress=False)
      state, epochs = result.state, epochs + epochs_per_check
      batches = [{"image": images[i:i + 256], "label": labels[i:i + 256]}
                 for i in range(0, len(labels), 256)]
      accuracy = train.evaluate(model, state.variables, batches)
      if accuracy > target_accuracy:
        break
    else:
      raise ValueError(f"the permuted-label model reached training accuracy {accuracy:.3f} < "
                       f"{target_accuracy} after {max_epochs} epochs; raise max_epochs or the "
                       "learning rate")
    return sanity.LabelTraining(variables=state.variables, train_accuracy=float(accuracy),
                                steps=int(state.step))

  return train_fn


def train_random_labels(config, model, workdir: pathlib.Path, *, progress: bool = True):
  """The same architecture trained on permuted labels until it memorises them (Sec. 4).

  Training runs `steps_per_check` steps at a time (resumable in
  `WORKDIR/train_random_labels`) until the accuracy on the permuted training labels exceeds
  `target_accuracy`: the first `data_randomization.train_examples` training examples (cells,
  or `data.train_split` of MNIST / Fashion-MNIST) with their labels permuted once
  (`sanity.permute_labels`), Adam without weight decay.

  Returns:
    `(variables, info)`, info with `steps`, `train_accuracy` (on the permuted labels) and
    `test_accuracy_true_labels` (on `train.test_examples` held-out images: chance).

  Raises:
    ValueError: if `max_steps` pass without reaching the target accuracy.
  """
  settings = config.data_randomization
  key = jax.random.fold_in(jax.random.key(config.seed), 3)
  labels = _training_labels(_training_source(config, "train", settings.train_examples))
  permuted = sanity.permute_labels(labels, key=jax.random.fold_in(key, 0))
  shards = _training_shards(config, "train", len(labels), labels=permuted)
  tx = train.make_optimizer(learning_rate=settings.learning_rate, weight_decay=0.0)
  size = config.data.size
  state = train.init_train_state(model, tx=tx, key=jax.random.fold_in(key, 1),
                                 input_shape=(1, size, size, channels(config)))
  steps_per_epoch = sum(math.ceil(size / settings.batch_size) for size in shards.sizes())
  epochs = math.ceil(settings.max_steps / steps_per_epoch)
  path = workdir / "train_random_labels" / "accuracy.json"
  finished = _read_json(path)
  max_steps = finished["steps"] if finished else settings.steps_per_check
  while True:
    result = train.train_continuous(
        model, state, shards.get, num_shards=shards.num_shards, tx=tx, epochs=epochs,
        batch_size=settings.batch_size, key=jax.random.fold_in(key, 2),
        workdir=workdir / "train_random_labels", max_steps=max_steps, progress=progress)
    steps = int(result.state.step)
    if finished and finished["steps"] == steps:  # restored a model that reached the target
      return result.state.variables, finished
    accuracy = _accuracy(model, result.state.variables, shards)
    if accuracy > settings.target_accuracy:
      # The paper: "the test accuracy is never better than randomly guessing a label".
      held_out = _training_shards(config, "test", config.train.test_examples)
      info = {"steps": steps, "train_accuracy": accuracy,
              "test_accuracy_true_labels": _accuracy(model, result.state.variables, held_out)}
      files.write_json(info, path, verified=True)
      return result.state.variables, info
    if steps >= settings.max_steps or result.stop_reason != train.STOP_MAX_STEPS:
      raise ValueError(
          f"the permuted-label model reached training accuracy {accuracy:.3f} <= "
          f"{settings.target_accuracy} after {steps} steps; raise "
          "data_randomization.max_steps or learning_rate (in a new workdir)")
    max_steps = max(steps, max_steps) + settings.steps_per_check


def _random_labels_info(workdir: pathlib.Path) -> dict[str, Any] | None:
  return _read_json(workdir / "train_random_labels" / "accuracy.json")


# --------------------------------------------------------------------------------------------
# Explanations and similarity tables


def explainers(config) -> dict[str, Any]:
  """`{display name: explainer(model, variables, x, target)}` for every configured method.

  Methods that draw noise get a fixed key per method, so every randomisation stage sees
  the same noise and only the parameters differ.
  """
  result = {}
  for display, (name, options) in method_options(config).items():
    if explain.takes_key(name) and "key" not in options:
      options["key"] = runner.method_key(jax.random.key(config.seed), display)
    result[display] = functools.partial(explain.METHODS[name], **options)
  return result


def _batches(x: np.ndarray, target: np.ndarray, batch_size: int):
  """Fixed-size batches (the last padded by repeating its last image): one compilation."""
  for start in range(0, len(x), batch_size):
    xb, tb = x[start:start + batch_size], target[start:start + batch_size]
    count = len(xb)
    if count < batch_size and len(x) > batch_size:
      pad = batch_size - count
      xb = np.concatenate([xb, np.repeat(xb[-1:], pad, 0)])
      tb = np.concatenate([tb, np.repeat(tb[-1:], pad, 0)])
    yield jnp.asarray(xb), jnp.asarray(tb), count


def _save_npz(path: pathlib.Path, **arrays) -> None:
  files.save_npz(arrays, path)  # with its record, checked when read back


def _table(result: sanity.RandomizationResult, *, method: str, mode: str,
           measures) -> pd.DataFrame:
  table = sanity.similarity_table(result, measures=tuple(measures))
  table.insert(0, "mode", mode)
  table.insert(0, "method", method)
  return table


def _run_table(config, workdir: pathlib.Path, mode: str, compute_result, *,
               progress: bool) -> pd.DataFrame:
  """One shard per method; a shard counts as finished when its CSV and its grid maps verify
  (a damaged maps file is reported with a warning and its shard recomputed)."""
  names = list(config.methods)
  for index, name in enumerate(names):
    maps = workdir / "explanations" / mode / f"{name}.npz"
    if files.read_or_discard(maps, action=f"recomputing {name}'s {mode} shard") is None:
      files.remove_verified(runner.shard_path(workdir, f"similarity_{mode}", index))

  def compute_shard(index: int) -> pd.DataFrame:
    name = names[index]
    logging.info("sanity checks: %s randomisation of %s", mode, name)
    result = compute_result(name)
    _save_npz(workdir / "explanations" / mode / f"{name}.npz",
              stages=np.asarray(result.stages),
              explanations=result.explanations[:, :config.grid_images].astype(np.float32))
    return _table(result, method=name, mode=mode, measures=config.measures)

  return runner.run_shards(workdir, f"similarity_{mode}", range(len(names)), compute_shard,
                           progress=progress, description=f"{mode} randomisation")


def fresh_variables(model, variables, x, config):
  """The one draw of re-initialised parameters shared by every stage, method, batch and
  mode (`sanity.fresh_variables` with `randomization.init` and `std`)."""
  settings = config.randomization
  key = jax.random.fold_in(jax.random.key(config.seed), 4)
  return sanity.fresh_variables(model, variables, jnp.asarray(x[:1]), key=key,
                                init=settings.init, std=settings.std)


def stage_variables(variables, fresh, *, mode: str, layers, config):
  """The randomised variables of every stage after "original", and the stage names.

  The same construction as `sanity.cascading_randomization` / `independent_randomization`
  (`sanity.randomize` with one shared draw), done once for all methods and image batches so
  the model's initialiser and each explainer compile once per run.

  Args:
    variables: the trained variables.
    fresh: from `fresh_variables`.
    mode: "cascading" (layers re-initialised from the logits down, cumulatively) or
      "independent" (one layer at a time).
    layers: layer names from the logits down (`sanity.layer_order`).
    config: the experiment config (`randomization.keep_batch_stats`).

  Returns:
    `(stage names, list of variables)`, one entry per randomised stage.
  """
  settings = config.randomization
  groups = ([tuple(layers[:i + 1]) for i in range(len(layers))] if mode == "cascading"
            else [(name,) for name in layers])
  return tuple(layers), [sanity.randomize(variables, group, fresh=fresh,
                                          keep_batch_stats=settings.keep_batch_stats)
                         for group in groups]


def explain_stages(compiled, model, stage_list, x, target, *, batch_size: int,
                   stage_names) -> sanity.RandomizationResult:
  """Explanations of all images at every stage, in fixed-size batches.

  Args:
    compiled: `jax.jit(explainer, static_argnums=0)` (one compilation for all stages).
    model: the Flax module.
    stage_list: variables of each stage, the trained ones first.
    x: `float32[N, H, W, C]`; target: `int32[N]` (None: each stage's own prediction).
    batch_size: images per call.
    stage_names: names of all stages (the first is the trained model).

  Returns:
    A `sanity.RandomizationResult` with explanations `float32[S, N, ...]`.
  """
  outputs = []
  for params in stage_list:
    parts = []
    for xb, tb, count in _batches(x, np.zeros(len(x), np.int32) if target is None else target,
                                  batch_size):
      if target is None:
        tb = explain.predicted_class(model, params, xb)
      parts.append(np.asarray(compiled(model, params, xb, tb))[:count])
    outputs.append(np.concatenate(parts))
  return sanity.RandomizationResult(tuple(stage_names), np.stack(outputs))


# --------------------------------------------------------------------------------------------
# Summary, figures, report


def summarize(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
  """Mean, standard deviation and count (NaN excluded) over images per stage and measure."""
  frame = pd.concat(list(tables.values()), ignore_index=True)
  grouped = frame.groupby(["mode", "method", "stage_index", "stage", "measure"], sort=False)
  return grouped.value.agg(["mean", "std", "count"]).reset_index()


def _figures(config, workdir: pathlib.Path, tables: Mapping[str, pd.DataFrame]) -> list[str]:
  written = []
  for mode, table in tables.items():
    explanations, stages = {}, None
    for name in config.methods:
      data = files.load_npz(workdir / "explanations" / mode / f"{name}.npz",
                            fix="rerun to recompute it")
      explanations[name] = data["explanations"]
      stages = [str(s) for s in data["stages"]]
    for image in range(config.grid_images):
      path = workdir / f"grid_{mode}_{image}.png"
      sanity_figures.randomization_grid(
          explanations, stages, path, image=image,
          title={"cascading": "Cascading randomisation", "independent": "Independent randomisation",
                 "data": "Data randomisation"}.get(mode, mode))
      written.append(path.name)
    path = workdir / f"curves_{mode}.png"
    sanity_figures.similarity_curves(
        {name: table[table.method == name] for name in config.methods}, path,
        measures=tuple(config.measures))
    written.append(path.name)
  return written


def last_stage_means(summary: pd.DataFrame, mode: str, config) -> pd.DataFrame:
  """Method x measure table of the mean similarity at the last stage of a mode."""
  rows = summary[summary["mode"] == mode]
  last = rows[rows.stage_index == rows.stage_index.max()]
  table = last.pivot(index="method", columns="measure", values="mean")
  table = table.reindex(index=list(config.methods), columns=list(config.measures))
  return table.reset_index()


def write_report(config, workdir: pathlib.Path, summary: pd.DataFrame, info: Mapping,
                 figures: list[str]) -> pathlib.Path:
  """`WORKDIR/report.md`: the model, links to the tables and figures, last-stage means."""
  lines = ["# Sanity checks for saliency maps (Adebayo et al. 2018)", "",
           f"Config variant `{config.variant}`, model `{info['model']['arch']}`, "
           f"{config.data.num_explain} images of {config.data.size}x{config.data.size} "
           f"({config.data.source}); full config in [config.json](config.json).", ""]
  model_info = {k: v for k, v in info["model"].items() if k != "layers"}
  lines += ["Model: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                  for k, v in model_info.items()) + ".",
            "Layers from the logits down: " + ", ".join(info["model"]["layers"]) + ".", ""]
  if "random_labels_model" in info:
    random_info = info["random_labels_model"]
    held_out = random_info.get("test_accuracy_true_labels")
    lines += [f"Permuted-label model: {random_info['steps']} steps, training accuracy on "
              f"the permuted labels {random_info['train_accuracy']:.3f}"
              + ("" if held_out is None else
                 f", held-out accuracy on the true labels {held_out:.3f} (chance)") + ".", ""]
  lines += ["Tables: " + ", ".join(f"[{name}]({name})" for name in
                                   [f"similarity_{m}.csv" for m in info["modes"]]
                                   + ["summary.csv"]) + ".", ""]
  titles = {"cascading": "Cascading randomisation (all layers re-initialised at the last stage)",
            "independent": "Independent randomisation (the last stage: only the first layer "
                           "re-initialised)",
            DATA_MODE: "Data randomisation (model trained on permuted labels)"}
  for mode in info["modes"]:
    lines += [f"## {titles[mode]}", "",
              "Mean similarity to the original explanation at the last stage:", "",
              reports.to_markdown(last_stage_means(summary, mode, config)), ""]
    lines += [f"![{name}]({name})" for name in figures if f"_{mode}" in name]
    lines.append("")
  path = workdir / "report.md"
  files.write_text(path, "\n".join(lines))
  return path


# --------------------------------------------------------------------------------------------
# The experiment


def run(config, workdir, *, progress: bool = True) -> dict[str, pd.DataFrame]:
  """Runs the sanity checks of `config` into `workdir` (resumable; see the module docstring).

  Args:
    config: from `configs/sanity_checks.py` (`get_config(variant)`).
    workdir: the output folder.
    progress: show progress bars.

  Returns:
    `{mode: similarity table}` for every mode run, plus `"summary"`.

  Outputs go to `workdir`, or to `workdir/eval_<hash>` for a config whose evaluation fields
  differ from those `workdir` holds (`check_workdir`).

  Raises:
    ValueError: a bad config (`check_config`; nothing is written then), or a workdir whose
      trained models come from other training fields.
  """
  check_config(config)
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  out = check_workdir(config, workdir)

  model, variables, model_info = load_or_train_model(config, workdir, progress=progress)
  x = explain_images(config)
  target = np.asarray(explain.predicted_class(model, variables, jnp.asarray(x)))
  layers = tuple(config.randomization.layers) or sanity.layer_order(model, variables,
                                                                     jnp.asarray(x[:1]))
  arch = config.model.name
  if config.model.checkpoint:
    arch = port.read_metadata(config.model.checkpoint)["arch"]
  info = {"model": {"arch": arch, **model_info, "layers": list(layers)},
          "modes": list(config.randomization.modes)}
  compiled = {name: xla.jit(explainer, static_argnums=0)
              for name, explainer in explainers(config).items()}
  batch_size = config.data.explain_batch_size

  # Built on first use, so a rerun whose shards are all finished computes nothing.
  @functools.cache
  def fresh():
    return fresh_variables(model, variables, x, config)

  @functools.cache
  def stages(mode):
    return stage_variables(variables, fresh(), mode=mode, layers=layers, config=config)

  @functools.cache
  def random_labels():  # (variables, info)
    return train_random_labels(config, model, workdir, progress=progress)

  tables = {}
  for mode in config.randomization.modes:
    tables[mode] = _run_table(
        config, out, mode,
        lambda name, mode=mode: explain_stages(
            compiled[name], model, [variables, *stages(mode)[1]], x, target,
            batch_size=batch_size, stage_names=("original", *stages(mode)[0])),
        progress=progress)
  if config.data_randomization.enabled:
    # Each model explains its own prediction (target None), as in the paper's Fig. 5.
    tables[DATA_MODE] = _run_table(
        config, out, DATA_MODE,
        lambda name: explain_stages(compiled[name], model,
                                    [variables, random_labels()[0]], x, None,
                                    batch_size=batch_size,
                                    stage_names=("true_labels", "random_labels")),
        progress=progress)
    info["random_labels_model"] = _random_labels_info(workdir) or random_labels()[1]
    info["modes"].append(DATA_MODE)
  files.write_json(info, out / "model.json")

  summary = summarize(tables)
  files.write_table(summary, out / "summary.csv")
  figures = _figures(config, out, tables)
  write_report(config, out, summary, info, figures)
  return {**tables, "summary": summary}
