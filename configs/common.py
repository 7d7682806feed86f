"""Config blocks shared by the experiments (the variant check; the image experiments' base)."""

from typing import Sequence

import ml_collections


def check_variant(experiment: str, variant: str, variants: Sequence[str]) -> None:
  """Raises `ValueError` naming the valid variants when `variant` is not one of them."""
  if variant not in variants:
    raise ValueError(f"unknown {experiment} config variant {variant!r}; valid: "
                     f"{', '.join(variants)}")


def image_experiment(variant: str, *, num_examples: int) -> ml_collections.ConfigDict:
  """The fields `pixel_removal` and `localization` start from: variant, seed, data, model,
  training on the cells."""
  config = ml_collections.ConfigDict()
  config.variant = variant
  config.seed = 0
  config.model_name = "model"
  config.data = image_data(num_examples=num_examples)
  config.model = model()
  config.train = cells_training()
  return config


def shrink_to_tiny(config: ml_collections.ConfigDict) -> None:
  """The `tiny` variant of an image experiment (tests): 8 images of 32x32, 4 training steps,
  the gradient and random maps."""
  config.data.update(size=32, num_examples=8)
  config.train.update(num_train=64, shard_size=32, epochs=1, max_steps=4, batch_size=16,
                      checkpoint_every=0)
  config.methods = ml_collections.ConfigDict({"gradient": {}, "random": {}})


def image_data(*, num_examples: int, size: int = 48) -> ml_collections.ConfigDict:
  """Where the images come from.

  source: "cells" (the generator; mask = heatmap > 0), "image_folder" (JPEG/PNG files,
  optionally root/<class>/<image>, masks from the VOC XMLs in annotations_dir) or "tfds" (a
  prepared TFDS image dataset such as imagenet2012; masks from its bbox features).
  reference_folder: training images of an image_folder source, for methods whose background
  or baselines are "train:N" (layer SHAP); the cells and TFDS use their training split.
  """
  return ml_collections.ConfigDict(dict(
      source="cells", split="test", size=size, num_examples=num_examples,
      image_folder="", annotations_dir="", class_names=(), class_names_file="",
      tfds_name="", tfds_dir="", crop="resize", normalize="none", include_difficult=True,
      keep_labels=(), per_class=0, reference_folder=""))


def model() -> ml_collections.ConfigDict:
  """checkpoint: a folder of `port.save`; npz: flat variables for `name`; neither: train
  `name` on the cells (data.source="cells" only)."""
  return ml_collections.ConfigDict(dict(name="cnn", num_classes=10, head="", checkpoint="",
                                        npz=""))


def cells_training() -> ml_collections.ConfigDict:
  """Training of the model on the cells when no checkpoint is given."""
  return ml_collections.ConfigDict(dict(
      num_train=2560, shard_size=256, epochs=4, max_steps=300, batch_size=32,
      learning_rate=1e-3, weight_decay=0.0, checkpoint_every=100))
