"""MNIST / Fashion-MNIST through TFDS (`xai_jax.data.mnist`) and the data randomisation test.

The real datasets cannot be downloaded here. Reading is checked on two stand-ins:

* `tfds.testing.mock_data`: TFDS's own `tfds.data_source` answers with random uint8 images
  and labels; every split of every dataset then holds the same records, so held-out
  examples are other indices. Batches are compared with the raw TFDS records.
* a tiny array_record dataset written by TFDS's own `MNIST` builder (its download step
  replaced by a few known images) into a temporary `data_dir`, read back through the same
  `tfds.data_source` path as the real files.

Training (Adebayo et al., Sec. 4): a model trained with `xai_jax.train` on permuted labels
memorises them (> 95% training accuracy) and scores chance on the true labels of held-out
images: with labels independent of everything the model saw, its number of correct
answers on n held-out images is Binomial(n, 1/10) whatever it predicts, so 500 images give
0.1 +- 0.0134 (one standard deviation) and the +-0.06 accepted here is 4.5 standard
deviations (a chance of about 1e-5 of failing a correct pipeline; the draws are seeded, so
the test is deterministic). The fast test uses a narrower MLP (`hidden`; compiling the
training step is most of its time); the paper-size CNN and MLP are in the slow tests.
"""

import io
import json
import pathlib
from unittest import mock

import jax
import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.image_classification import mnist as tfds_mnist

from xai_jax import models, train
from xai_jax.data import mnist
from xai_jax.metrics import sanity

CHANCE = 1 / mnist.NUM_CLASSES
HELD_OUT = 500
CHANCE_MARGIN = 0.06  # 4.5 binomial standard deviations at 500 images (module docstring)
# Adam 3e-4, batches of 25, 200 mock images: 100% training accuracy is reached after about
# 10 (MLP) and 22 (CNN) epochs.
EPOCHS_PAPER_MODELS = {"cnn": 30, "mlp": 20}


def _png(image: np.ndarray) -> bytes:
  """uint8[28, 28, 1] -> PNG bytes (TFDS's Image feature takes encoded bytes without TF)."""
  stream = io.BytesIO()
  Image.fromarray(image[..., 0]).save(stream, format="PNG")
  return stream.getvalue()


def _build_local(data_dir: pathlib.Path, name: str, splits: dict) -> None:
  """Writes `splits = {split: (uint8[n, 28, 28, 1], int[n])}` as TFDS dataset `name`.

  TFDS's own builder class (`MNIST`, or `FashionMNIST`, which inherits these two methods)
  does the work; only its download step and example generator are replaced.
  """
  def split_generators(self, dl_manager):
    del self, dl_manager
    return [tfds.core.SplitGenerator(name=split, gen_kwargs={"split": split})
            for split in splits]

  def generate_examples(self, split):
    del self
    images, labels = splits[split]
    for i, (image, label) in enumerate(zip(images, labels)):
      yield i, {"image": _png(image), "label": int(label)}

  with mock.patch.object(tfds_mnist.MNIST, "_split_generators", split_generators), \
      mock.patch.object(tfds_mnist.MNIST, "_generate_examples", generate_examples):
    builder = tfds.builder(name, data_dir=str(data_dir), file_format="array_record")
    builder.download_and_prepare()


def _random_split(seed: int, count: int):
  rng = np.random.default_rng(seed)
  return (rng.integers(0, 256, (count, 28, 28, 1), dtype=np.uint8),
          rng.integers(0, 10, count))


# ------------------------------------------------------------------ reading mock data


@pytest.mark.parametrize("split", mnist.SPLITS)
@pytest.mark.parametrize("name", mnist.DATASETS)
def test_mock_batches_are_the_tfds_records_scaled_to_unit_range(tmp_path, name, split):
  with tfds.testing.mock_data(num_examples=12):
    source = mnist.source(name, split, data_dir=tmp_path)
    raw = tfds.data_source(name, split=split)
    expected = [raw[i] for i in range(12)]
    batch = source.get_batch([0, 5, 11])
    single = source[7]
    sliced = source[2:5]
    labels = source.labels()
  assert len(source) == 12 and source.class_names == mnist.CLASS_NAMES[name]
  assert batch["image"].dtype == np.float32 and batch["image"].shape == (3, 28, 28, 1)
  assert batch["label"].dtype == np.int32 and batch["label"].shape == (3,)
  assert batch["index"].tolist() == [0, 5, 11]
  assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
  assert batch["image"].max() > 0.9  # random uint8: scaled by 1/255, not left in 0..255
  for row, i in enumerate([0, 5, 11]):
    np.testing.assert_array_equal(batch["image"][row],
                                  expected[i]["image"].astype(np.float32) / 255)
    assert batch["label"][row] == int(expected[i]["label"])
  assert single["image"].shape == (28, 28, 1) and single["label"].shape == ()
  np.testing.assert_array_equal(single["image"], expected[7]["image"] / np.float32(255))
  assert sliced["index"].tolist() == [2, 3, 4]
  assert labels.dtype == np.int32
  assert labels.tolist() == [int(r["label"]) for r in expected]


def test_num_examples_keeps_the_first_records_and_indices_are_checked(tmp_path):
  with tfds.testing.mock_data(num_examples=10):
    source = mnist.source("mnist", "train", data_dir=tmp_path, num_examples=4)
    everything = mnist.source("mnist", "train", data_dir=tmp_path, num_examples=100)
    assert len(source) == 4 and len(everything) == 10
    np.testing.assert_array_equal(source.labels(), everything.labels()[:4])
    with pytest.raises(IndexError):
      source.get_batch([4])
    with pytest.raises(IndexError):
      source[-1]  # pylint: disable=pointless-statement


# ------------------------------------------------------------------ a real array_record dataset


@pytest.mark.parametrize("name", mnist.DATASETS)
def test_reads_a_local_array_record_dataset_written_by_tfds(tmp_path, name):
  written = {"train": _random_split(0, 9), "test": _random_split(1, 4)}
  _build_local(tmp_path, name, written)
  files = sorted(p.name for p in (tmp_path / name).glob("*/*array_record*"))
  assert any("train" in f for f in files) and any("test" in f for f in files), files
  for split, (images, labels) in written.items():
    source = mnist.source(name, split, data_dir=tmp_path)
    assert len(source) == len(labels)
    batch = source.get_batch(np.arange(len(source)))
    assert batch["image"].dtype == np.float32 and batch["image"].shape == (len(labels), 28, 28, 1)
    # TFDS shuffles records when writing: match each record to the image written.
    by_bytes = {image.tobytes(): int(label) for image, label in zip(images, labels)}
    read_back = np.round(batch["image"] * 255).astype(np.uint8)
    assert sorted(r.tobytes() for r in read_back) == sorted(by_bytes)
    assert [by_bytes[r.tobytes()] for r in read_back] == batch["label"].tolist()
    np.testing.assert_array_equal(source.labels(), batch["label"])
  sliced = mnist.source(name, "train[:3]+test[-1:]", data_dir=tmp_path)
  assert len(sliced) == 4
  assert sliced.get_batch([0, 1, 2])["label"].tolist() == (
      mnist.source(name, "train", data_dir=tmp_path).labels()[:3].tolist())


def test_a_tfrecord_dataset_is_refused_with_the_rebuild_command(tmp_path):
  _build_local(tmp_path, "mnist", {"train": _random_split(0, 3), "test": _random_split(1, 2)})
  info_path = next((tmp_path / "mnist").glob("*/dataset_info.json"))
  info = json.loads(info_path.read_text())
  info["fileFormat"] = "tfrecord"
  info_path.write_text(json.dumps(info))
  with pytest.raises(ValueError, match=r"stored as tfrecord.*--file_format=array_record"):
    mnist.source("mnist", "train", data_dir=tmp_path)


# ------------------------------------------------------------------ bad input


def test_bad_input_raises_clear_errors(tmp_path):
  with pytest.raises(ValueError, match=r"unknown dataset 'emnist'; valid: mnist, fashion_mnist"):
    mnist.source("emnist", "train", data_dir=tmp_path)
  with pytest.raises(ValueError, match=r"unknown split 'validation'.*valid: train, test"):
    mnist.source("mnist", "validation", data_dir=tmp_path)
  with pytest.raises(ValueError, match=r"unknown split 'val'"):
    mnist.source("mnist", "train[:10]+val", data_dir=tmp_path)
  with pytest.raises(ValueError, match="malformed split"):
    mnist.source("mnist", "train[:ten]", data_dir=tmp_path)
  with pytest.raises(ValueError, match="non-empty string"):
    mnist.source("mnist", None, data_dir=tmp_path)
  missing = tmp_path / "nowhere"
  with pytest.raises(ValueError, match=rf"data_dir {missing} does not exist.*tfds build"):
    mnist.source("mnist", "train", data_dir=missing)
  with pytest.raises(ValueError, match=(
      rf"'fashion_mnist' is not prepared under data_dir {tmp_path}.*tfds build fashion_mnist "
      r"--data_dir=DIR --file_format=array_record")):
    mnist.source("fashion_mnist", "test", data_dir=tmp_path)
  with tfds.testing.mock_data(num_examples=3):
    for bad in (0, -2, True, 1.5):
      with pytest.raises(ValueError, match="num_examples"):
        mnist.source("mnist", "test", data_dir=tmp_path, num_examples=bad)


# ------------------------------------------------------------------ data randomisation


def _mock_data(data_dir: pathlib.Path, count: int, held_out: int):
  """Training images and labels, and held-out images with their true labels (mock MNIST)."""
  with tfds.testing.mock_data(num_examples=count + held_out):
    source = mnist.source("mnist", "train", data_dir=data_dir)
    train_set = source.get_batch(np.arange(count))
    held = source.get_batch(np.arange(count, count + held_out))
    labels = source.labels()[:count]
  np.testing.assert_array_equal(labels, train_set["label"])
  return train_set, held


def _train_on(model, images, labels, *, learning_rate, batch_size, epochs, seed=0):
  tx = train.make_optimizer(learning_rate=learning_rate, weight_decay=0.0)
  state = train.init_train_state(model, tx=tx, key=jax.random.key(seed),
                                 input_shape=(1, 28, 28, 1))
  result = train.train_continuous(model, state, [{"image": images, "label": labels}], tx=tx,
                                  epochs=epochs, batch_size=batch_size,
                                  key=jax.random.key(seed + 1), progress=False)
  return result.state


def test_permuted_labels_are_memorised_and_true_held_out_labels_are_at_chance(tmp_path):
  """The data randomisation recipe on mock MNIST, with a narrow MLP (a few seconds)."""
  train_set, held = _mock_data(tmp_path, 200, HELD_OUT)
  permuted = sanity.permute_labels(train_set["label"], key=jax.random.key(7))
  # A fixed permutation from the key: the same labels, reordered; mostly changed.
  np.testing.assert_array_equal(np.sort(permuted), np.sort(train_set["label"]))
  np.testing.assert_array_equal(permuted,
                                sanity.permute_labels(train_set["label"], key=jax.random.key(7)))
  assert np.mean(permuted != train_set["label"]) > 0.8
  model = models.get("mlp", num_classes=10, hidden=(256, 128))
  state = _train_on(model, train_set["image"], permuted, learning_rate=1e-3, batch_size=50,
                    epochs=40)
  train_accuracy = train.evaluate(model, state, [{"image": train_set["image"],
                                                  "label": permuted}])
  held_out_accuracy = train.evaluate(model, state, [held])
  assert train_accuracy > 0.95
  assert abs(held_out_accuracy - CHANCE) < CHANCE_MARGIN, held_out_accuracy


def _structured_split(seed: int, count: int):
  """Images whose label is readable: class k lights one of ten 7x7 cells, plus noise."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 10, count)
  images = rng.integers(0, 64, (count, 28, 28, 1))
  for image, label in zip(images, labels):
    row, col = divmod(int(label), 4)
    image[7 * row:7 * row + 7, 7 * col:7 * col + 7] += 160
  return images.astype(np.uint8), labels


@pytest.mark.slow
def test_true_labels_generalise_and_permuted_labels_do_not_on_array_record_data(tmp_path):
  """The randomisation test's contrast, read from a TFDS-written array_record dataset.

  Here images do carry their class, so the permuted-label model's held-out answers depend
  mostly on the class of the image: its accuracy is chance with the sampling error of about
  ten effective draws (one per class, each right with probability 1/10), a standard
  deviation near 0.095 rather than the 0.0134 of 500 independent images. 0.4 is 3 of those
  above 0.1 (measured: 0.18), against 1.0 for the model trained on the true labels.
  """
  _build_local(tmp_path, "mnist", {"train": _structured_split(0, 300),
                                   "test": _structured_split(1, HELD_OUT)})
  train_source = mnist.source("mnist", "train", data_dir=tmp_path)
  test_source = mnist.source("mnist", "test", data_dir=tmp_path)
  train_set = train_source.get_batch(np.arange(len(train_source)))
  test_set = test_source.get_batch(np.arange(len(test_source)))
  model = models.get("mlp", num_classes=10, hidden=(64,))
  accuracies = {}
  for which, labels in (("true", train_set["label"]),
                        ("permuted", sanity.permute_labels(train_set["label"],
                                                           key=jax.random.key(3)))):
    state = _train_on(model, train_set["image"], labels, learning_rate=3e-3, batch_size=50,
                      epochs=60)
    accuracies[which] = (
        train.evaluate(model, state, [{"image": train_set["image"], "label": labels}]),
        train.evaluate(model, state, [test_set]))
  assert accuracies["true"][0] > 0.95 and accuracies["true"][1] > 0.9, accuracies
  assert accuracies["permuted"][0] > 0.95, accuracies
  assert accuracies["permuted"][1] < 0.4, accuracies


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cnn", "mlp"])
def test_the_paper_models_memorise_permuted_mock_labels(tmp_path, name):
  """Paper-size CNN / MLP: > 95% on the permuted labels, chance on held-out true labels."""
  train_set, held = _mock_data(tmp_path, 200, HELD_OUT)
  permuted = sanity.permute_labels(train_set["label"], key=jax.random.key(7))
  model = models.get(name, num_classes=10)
  state = _train_on(model, train_set["image"], permuted, learning_rate=3e-4, batch_size=25,
                    epochs=EPOCHS_PAPER_MODELS[name])
  assert train.evaluate(model, state, [{"image": train_set["image"], "label": permuted}]) > 0.95
  assert abs(train.evaluate(model, state, [held]) - CHANCE) < CHANCE_MARGIN
