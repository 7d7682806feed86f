"""MNIST and Fashion-MNIST read from prepared TFDS array_record files (no TensorFlow).

The data of Adebayo et al.'s data-randomisation test (Sec. 4; appendix: a CNN and an MLP
trained on MNIST and on Fashion-MNIST, `xai_jax.models.small`). `source(name, split,
data_dir=...)` is a random-access source like the others of `xai_jax.data` (`len`,
`source[i]`, `get_batch(indices)`, grain's `__getitems__`) over TFDS's `mnist` or
`fashion_mnist`, read with `tfds.data_source` (array_record files, random access, no
TensorFlow). A batch is

    image: float32[N, 28, 28, 1]  grey levels / 255, in [0, 1] (the paper's models were
                                  trained on such inputs: TensorFlow's MNIST reader gives
                                  [0, 1] floats, and `xai_jax.train` takes raw [0, 1] pixels)
    label: int32[N]               0..9 (`CLASS_NAMES[name]`)
    index: int64[N]               position in the source

Preparing the data (once, on a machine with internet and `pip install tensorflow
tensorflow-datasets`: TFDS's MNIST builders need TensorFlow to encode their images; reading
here needs neither):

    tfds build mnist fashion_mnist --data_dir=DIR --file_format=array_record

then copy `DIR/mnist` and `DIR/fashion_mnist` into the `data_dir` given to `source` (the
default `file_format`, tfrecord, cannot be read with random access: rebuild it).

Training the paper's models on it with `xai_jax.train` (true labels; for the data
randomisation test the labels are permuted once with a key, Sec. 4):

    import jax
    from xai_jax import models, train
    from xai_jax.data import mnist
    from xai_jax.metrics import sanity
    from xai_jax.models import small
    from xai_jax.pipelines import training_data

    images = mnist.source("mnist", "train", data_dir="/data/tfds")       # 60000 examples
    labels = images.labels()                                             # int32[60000]
    labels = sanity.permute_labels(labels, key=jax.random.key(1))        # data randomisation
    shards = training_data.TrainingShards(images, 10_000, labels=labels, keep=True)
    model = models.get("cnn", num_classes=10)                            # or "mlp"
    tx = train.make_optimizer(learning_rate=small.TUTORIAL_LEARNING_RATE,
                              weight_decay=small.PAPER_WEIGHT_DECAY["cnn"])
    state = train.init_train_state(model, tx=tx, key=jax.random.key(0),
                                   input_shape=(1, 28, 28, 1))
    result = train.train_continuous(model, state, shards.get, num_shards=shards.num_shards,
                                    tx=tx, epochs=17, batch_size=small.TUTORIAL_BATCH_SIZE,
                                    key=jax.random.key(2), workdir="/tmp/mnist_cnn",
                                    max_steps=small.PAPER_TRAINING_STEPS)
    train_accuracy = train.evaluate(model, result.state, shards)
    test = mnist.source("mnist", "test", data_dir="/data/tfds")
    test_accuracy = train.evaluate(model, result.state,
                                   training_data.TrainingShards(test, 10_000))

(drop the `permute_labels` line for the true labels). 20,000 Adam steps of batches of 50
(17 epochs) is the paper's budget (`small.PAPER_TRAINING_STEPS`; batch size
and learning rate are not given there: 50 and 1e-4 are those of TensorFlow's "Deep MNIST"
tutorial, whose CNN, step count and 99.2% test accuracy the paper's appendix repeats). The
permuted-label model is trained until its accuracy on the permuted training labels exceeds
0.95 (`small.PAPER_RANDOM_LABEL_TRAIN_ACCURACY`): rerun `train_continuous` in the same
workdir with a larger `max_steps` until `train.evaluate` says so, or use
`xai_jax.metrics.sanity.data_randomization`, which does this and explains both models. Its
test accuracy on the true labels is chance, 0.1 up to sampling error.

Tests use `tfds.testing.mock_data` (random uint8 images and labels; every split of every
dataset then holds the same `num_examples` records, so held-out examples must be other
indices) and a tiny array_record dataset written by TFDS's own builder.

References:
  J. Adebayo, J. Gilmer, M. Muelly, I. Goodfellow, M. Hardt and B. Kim, "Sanity Checks for
    Saliency Maps", NeurIPS 2018 (arXiv:1810.03292), Sec. 4 and appendix (models, data).
  Y. LeCun, C. Cortes and C. J. C. Burges, "The MNIST database of handwritten digits", 1998.
  H. Xiao, K. Rasul and R. Vollgraf, "Fashion-MNIST: a Novel Image Dataset for Benchmarking
    Machine Learning Algorithms", arXiv:1708.07747, 2017.
"""

from __future__ import annotations

import json
import operator
import os
import pathlib
import re
from typing import Any, Mapping

import numpy as np
import tensorflow_datasets as tfds

from xai_jax.data import sources

DATASETS = ("mnist", "fashion_mnist")
SPLITS = ("train", "test")
NUM_EXAMPLES: Mapping[str, int] = {"train": 60_000, "test": 10_000}
IMAGE_SHAPE = (28, 28, 1)
NUM_CLASSES = 10
CLASS_NAMES: Mapping[str, tuple[str, ...]] = {
    "mnist": tuple(str(digit) for digit in range(10)),
    "fashion_mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                      "Sneaker", "Bag", "Ankle boot"),
}
PREPARE_COMMAND = ("pip install tensorflow tensorflow-datasets && tfds build {name} "
                   "--data_dir={data_dir} --file_format=array_record")
# One split of a TFDS split expression: a name with an optional slice ("train[:10%]").
_SPLIT_PART = re.compile(r"^\s*([A-Za-z_]\w*)\s*(\[[^\]]*\])?\s*$")


def _check_name(name: Any) -> str:
  if name not in DATASETS:
    raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
  return name


def check_split(split: Any) -> str:
  """A TFDS split expression over `SPLITS` ("test", "train[:1000]", "train[:50%]+test")."""
  if not isinstance(split, str) or not split.strip():
    raise ValueError(f"split must be a non-empty string such as 'train' or 'test[:1000]'; "
                     f"got {split!r}")
  for part in split.split("+"):
    match = _SPLIT_PART.match(part)
    if match is None:
      raise ValueError(f"malformed split {split!r}: {part!r} is not NAME or NAME[slice]")
    if match.group(1) not in SPLITS:
      raise ValueError(f"unknown split {match.group(1)!r} in {split!r}; valid: "
                       f"{', '.join(SPLITS)} (with TFDS slicing, e.g. 'train[:1000]')")
  try:
    tfds.core.ReadInstruction.from_spec(split)
  except (ValueError, AssertionError) as error:
    raise ValueError(f"malformed split {split!r}: {error}") from None
  return split


def _data_dir(data_dir: str | os.PathLike | None) -> pathlib.Path:
  """The TFDS data directory: `data_dir`, or TFDS's default when None; it must exist."""
  path = pathlib.Path(os.path.expanduser(os.fspath(data_dir) if data_dir is not None
                                         else tfds.core.constants.DATA_DIR))
  if not path.is_dir():
    raise ValueError(f"TFDS data_dir {path} does not exist or is not a folder; prepare the "
                     "datasets on a machine with internet and TensorFlow ("
                     f"{PREPARE_COMMAND.format(name='mnist fashion_mnist', data_dir='DIR')}) "
                     f"and copy DIR/mnist and DIR/fashion_mnist into {path}")
  return path


def _not_readable(name: str, split: str, data_dir: pathlib.Path, error: Exception) -> ValueError:
  """A ValueError that says why `tfds.data_source` failed and how to prepare the dataset."""
  infos = sorted((data_dir / name).glob("*/dataset_info.json"))
  if not infos:
    # TFDS then complains about the tfrecord format, which is not the problem.
    reason = (f"{name!r} is not prepared under data_dir {data_dir} (there is no "
              f"{data_dir / name}/<version>/dataset_info.json)")
  else:
    try:
      file_format = json.loads(infos[-1].read_text()).get("fileFormat", "tfrecord")
    except (OSError, ValueError):
      file_format = "an unreadable dataset_info.json"
    if file_format != "array_record":
      reason = (f"{name!r} under {infos[-1].parent} is stored as {file_format}, which has no "
                "random access; rebuild it with --file_format=array_record")
    else:
      reason = (f"cannot read {name!r} split {split!r} under {data_dir} "
                f"({type(error).__name__}: {error})")
  return ValueError(f"{reason}. Prepare it on a machine with internet and TensorFlow: "
                    f"{PREPARE_COMMAND.format(name=name, data_dir='DIR')}; then copy "
                    f"DIR/{name} into {data_dir}.")


class MnistSource(sources.RandomAccessSource):
  """Random access to TFDS's `mnist` or `fashion_mnist` (array_record files).

  `source[i]` is `{"image": float32[28, 28, 1] in [0, 1], "label": int32[], "index":
  int64[]}`; `get_batch(indices)` stacks them along a leading axis. Records are read and
  decoded on every access (about 75 us each on one CPU core); nothing is cached but
  `labels()`.

  Attributes:
    name: "mnist" or "fashion_mnist".
    split: the TFDS split expression read.
    data_dir: the TFDS data directory.
    class_names: `CLASS_NAMES[name]`.
  """

  def __init__(self, name: str, split: str, *, data_dir: str | os.PathLike | None,
               num_examples: int | None = None):
    """Opens a prepared split for reading.

    Args:
      name: "mnist" or "fashion_mnist".
      split: "train" or "test", TFDS slicing allowed ("train[:1000]", "test[50%:]").
      data_dir: the TFDS data directory holding `name/<version>/` as array_record files;
        None for TFDS's default (`$TFDS_DATA_DIR` or `~/tensorflow_datasets`).
      num_examples: keep only the first `num_examples` records of the split; None: all.

    Raises:
      ValueError: an unknown dataset or split, a malformed split, a `data_dir` that does
        not exist, a dataset not prepared there (or prepared as tfrecord; the message gives
        the command that prepares it), or a bad `num_examples`.
    """
    self.name = _check_name(name)
    self.split = check_split(split)
    self.data_dir = _data_dir(data_dir)
    self.class_names = CLASS_NAMES[name]
    try:
      self._records = tfds.data_source(name, split=split, data_dir=os.fspath(self.data_dir),
                                       download=False)
    except Exception as error:  # tfds raises several types (not prepared, wrong format, ...)
      raise _not_readable(name, split, self.data_dir, error) from None
    count = len(self._records)
    if num_examples is not None:
      if isinstance(num_examples, bool) or not isinstance(num_examples, (int, np.integer)) or (
          num_examples < 1):
        raise ValueError(f"num_examples must be a positive int or None; got {num_examples!r}")
      count = min(count, int(num_examples))
    self._length = count
    self._labels: np.ndarray | None = None

  def __len__(self) -> int:
    return self._length

  def __repr__(self) -> str:
    return (f"MnistSource(name={self.name!r}, split={self.split!r}, "
            f"data_dir={str(self.data_dir)!r}, num_examples={len(self)})")

  def _read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`(uint8[n, 28, 28, 1], int64[n])`: the records at `indices`, checked."""
    # One record at a time: `ArrayRecordDataSource.__getitems__` is faster (~50 us a record
    # against ~75 us) but TFDS's mock data source does not implement it.
    records = [self._records[operator.index(i)] for i in indices]
    images = np.zeros((len(records),) + IMAGE_SHAPE, np.uint8)
    labels = np.zeros(len(records), np.int64)
    for n, (i, record) in enumerate(zip(indices, records)):
      image = np.asarray(record["image"])
      if image.shape != IMAGE_SHAPE or image.dtype != np.uint8:
        raise ValueError(f"{self.name}[{i}] ({self.data_dir}): expected a uint8 image of shape "
                         f"{IMAGE_SHAPE}, got {image.dtype} {image.shape}")
      label = int(record["label"])
      if not 0 <= label < NUM_CLASSES:
        raise ValueError(f"{self.name}[{i}] ({self.data_dir}): label {label} is not in "
                         f"0..{NUM_CLASSES - 1}")
      images[n], labels[n] = image, label
    return images, labels

  def _get_batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    images, labels = self._read(indices)
    return {"image": images.astype(np.float32) / np.float32(255),
            "label": labels.astype(np.int32),
            "index": np.asarray(indices, np.int64)}

  def labels(self) -> np.ndarray:
    """`int32[len(self)]`: every label, in record order (read once, then kept).

    Reading decodes every record (about 5 s for MNIST's 60000 training images); the labels
    are what `xai_jax.metrics.sanity.permute_labels` permutes for the data randomisation
    test.
    """
    if self._labels is None:
      labels = [self._read(np.arange(start, min(start + 4096, len(self))))[1]
                for start in range(0, len(self), 4096)]
      self._labels = np.concatenate(labels).astype(np.int32)
    return self._labels.copy()


def source(name: str, split: str, *, data_dir: str | os.PathLike | None,
           num_examples: int | None = None) -> MnistSource:
  """`MnistSource(name, split, data_dir=..., num_examples=...)`: see the class."""
  return MnistSource(name, split, data_dir=data_dir, num_examples=num_examples)


__all__ = ["CLASS_NAMES", "DATASETS", "IMAGE_SHAPE", "MnistSource", "NUM_CLASSES",
           "NUM_EXAMPLES", "PREPARE_COMMAND", "SPLITS", "check_split", "source"]
