"""`pipelines.training_data.TrainingShards`: the one view of a source as training shards.

Checked against a direct slicing of the source (the reference: the examples in order, the
last shard holding the remainder), for the three ways the pipelines use it: plain shards of
the cells (the cells and image pipelines), normalised images with kept shards (the sanity
checks) and permuted labels (data randomisation).
"""

import jax
import numpy as np
import pytest

from configs import sanity_checks as sanity_config
from xai_jax.data import cell_source
from xai_jax.pipelines import sanity_checks
from xai_jax.pipelines import training_data

SIZE = 32
COUNT = 37  # shards of 16: 16, 16 and a remainder of 5


class CountingSource:
  """A source over in-memory arrays that counts its `get_batch` calls."""

  def __init__(self, images, labels):
    self.images, self.labels, self.calls = images, labels, []

  def __len__(self):
    return len(self.labels)

  def get_batch(self, indices):
    self.calls.append(np.asarray(indices).tolist())
    return {"image": self.images[indices], "label": self.labels[indices],
            "index": np.asarray(indices, np.int64)}


def _source():
  rng = np.random.default_rng(0)
  return CountingSource(rng.random((COUNT, 4, 4, 3), dtype=np.float32),
                        rng.integers(0, 10, COUNT).astype(np.int32))


def test_shards_are_the_source_in_order_with_the_remainder_last():
  source = cell_source.source("train", size=SIZE, key=jax.random.key(0), num_examples=COUNT)
  shards = training_data.TrainingShards(source, 16)
  assert shards.num_shards == 3 and shards.sizes() == [16, 16, 5]
  reference = source.get_batch(np.arange(COUNT))
  got = list(shards)
  assert [sorted(s) for s in got] == [["image", "label"]] * 3
  np.testing.assert_array_equal(np.concatenate([s["image"] for s in got]), reference["image"])
  np.testing.assert_array_equal(np.concatenate([s["label"] for s in got]), reference["label"])
  assert all(s["label"].dtype == np.int32 for s in got)
  last = shards.get(2)
  np.testing.assert_array_equal(last["image"], reference["image"][32:])


def test_preprocess_and_replacement_labels():
  source = _source()
  permuted = np.random.default_rng(1).permutation(COUNT).astype(np.int64) % 10
  shards = training_data.TrainingShards(source, 16, preprocess=lambda x: 2.0 * x - 1.0,
                                        labels=permuted)
  shard = shards.get(1)
  np.testing.assert_allclose(shard["image"], 2.0 * source.images[16:32] - 1.0)
  np.testing.assert_array_equal(shard["label"], permuted[16:32])
  assert shard["label"].dtype == np.int32  # cast from the int64 labels given


def test_kept_shards_are_read_once_and_others_on_every_access():
  source = _source()
  kept = training_data.TrainingShards(source, 16, keep=True)
  for _ in range(2):
    list(kept)
  assert source.calls == [list(range(0, 16)), list(range(16, 32)), list(range(32, 37))]
  source.calls.clear()
  read = training_data.TrainingShards(source, 16)
  read.get(0)
  read.get(0)
  assert source.calls == [list(range(0, 16))] * 2


def test_bad_arguments_are_refused():
  source = _source()
  with pytest.raises(ValueError, match="shard_size must be a positive int; got 0"):
    training_data.TrainingShards(source, 0)
  with pytest.raises(ValueError, match="one label per example: 3 labels for 37 examples"):
    training_data.TrainingShards(source, 16, labels=np.zeros(3, np.int32))
  with pytest.raises(IndexError, match=r"shard 3 out of range \[0, 3\)"):
    training_data.TrainingShards(source, 16).get(3)


def test_the_sanity_checks_shards_normalise_as_configured():
  config = sanity_config.get_config("tiny")
  config.data.normalize = "imagenet"
  shards = sanity_checks._cell_shards(config, "train", 20)  # pylint: disable=protected-access
  raw = cell_source.source("train", size=config.data.size, num_examples=20).get_batch(np.arange(20))
  mean = np.array([0.485, 0.456, 0.406], np.float32)
  std = np.array([0.229, 0.224, 0.225], np.float32)
  np.testing.assert_allclose(shards.get(0)["image"], (raw["image"] - mean) / std, rtol=1e-6)
  np.testing.assert_array_equal(shards.get(0)["label"], raw["label"])
