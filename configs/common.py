"""Config blocks shared by the image experiments (`pixel_removal`, `localization`)."""

import ml_collections


def image_data(*, num_examples: int, size: int = 48) -> ml_collections.ConfigDict:
  """Where the images come from.

  source: "cells" (the generator; mask = heatmap > 0), "image_folder" (JPEG/PNG files,
  optionally root/<class>/<image>, masks from the VOC XMLs in annotations_dir) or "tfds" (a
  prepared TFDS image dataset such as imagenet2012; masks from its bbox features).
  """
  return ml_collections.ConfigDict(dict(
      source="cells", split="test", size=size, num_examples=num_examples,
      image_folder="", annotations_dir="", class_names=(), class_names_file="",
      tfds_name="", tfds_dir="", crop="resize", normalize="none", include_difficult=True,
      keep_labels=(), per_class=0))


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
