"""`pipelines.training_data.TrainingShards`: the one view of a source as training shards.

Checked against a direct slicing of the source (the reference: the examples in order, the
last shard holding the remainder), for the three ways the pipelines use it: plain shards of
the cells (the cells and image pipelines), normalised images with kept shards (the sanity
checks) and permuted labels (data randomisation). The dataset-mean removal fill
(`channel_mean`, `resolve_dataset_mean`) against a closed form, and through an evaluation
whose shards it must not depend on.
"""

import jax
import numpy as np
import pytest

from configs import sanity_checks as sanity_config
from xai_jax import models
from xai_jax import runner
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
  shards = sanity_checks._training_shards(config, "train", 20)  # pylint: disable=protected-access
  raw = cell_source.source("train", size=config.data.size, num_examples=20).get_batch(np.arange(20))
  mean = np.array([0.485, 0.456, 0.406], np.float32)
  std = np.array([0.229, 0.224, 0.225], np.float32)
  np.testing.assert_allclose(shards.get(0)["image"], (raw["image"] - mean) / std, rtol=1e-6)
  np.testing.assert_array_equal(shards.get(0)["label"], raw["label"])


def test_channel_mean_is_the_mean_of_every_image():
  # Closed form: image i has the constant value i + 10 c in channel c, so the mean over the
  # 37 images (shards of 16, 16, 5) is 18 + 10 c.
  images = (np.arange(COUNT, dtype=np.float32)[:, None, None, None]
            + 10.0 * np.arange(3, dtype=np.float32)).repeat(4, 1).repeat(4, 2)
  source = CountingSource(images, np.zeros(COUNT, np.int32))
  shards = training_data.TrainingShards(source, 16)
  assert training_data.channel_mean(shards) == (18.0, 28.0, 38.0)
  random = _source()  # and the numpy mean of random images
  np.testing.assert_allclose(training_data.channel_mean(training_data.TrainingShards(random, 16)),
                             random.images.astype(np.float64).mean(axis=(0, 1, 2)), rtol=1e-12)
  with pytest.raises(ValueError, match="at least one image"):
    training_data.channel_mean([])


def test_resolve_dataset_mean_reads_the_split_only_when_asked():
  source = _source()
  calls = []
  shards = lambda: calls.append(1) or training_data.TrainingShards(source, 16)
  options = {"pixel_removal": {"fill": "dataset_mean", "step": 4}, "iou": {"n_std": 0.5}}
  resolved = training_data.resolve_dataset_mean(options, shards)
  assert resolved["pixel_removal"]["fill"] == training_data.channel_mean(
      training_data.TrainingShards(source, 16))
  assert resolved["pixel_removal"]["step"] == 4 and resolved["iou"] == {"n_std": 0.5}
  assert options["pixel_removal"]["fill"] == "dataset_mean"  # the input is not changed
  assert len(calls) == 1
  for fill in ("batch_mean", 0.5, (0.1, 0.2, 0.3)):
    kept = training_data.resolve_dataset_mean({"pixel_removal": {"fill": fill}}, shards)
    assert kept["pixel_removal"]["fill"] == fill
  assert len(calls) == 1


@pytest.mark.slow
def test_dataset_mean_scores_do_not_depend_on_the_shards(tmp_path):
  # The same 6 test cells evaluated in one shard of 6 and in shards of 3: the removal columns
  # agree with the training split's mean as the fill, and differ with each shard's mean.
  model = models.get("small_vgg", num_classes=10, widths=(4,))
  variables = models.init(model, jax.random.key(0), (1, SIZE, SIZE, 3))
  variables = jax.tree.map(lambda v: 4.0 * v, variables)  # decisions that removal can flip
  source = cell_source.source("test", size=SIZE, num_examples=6)
  train = training_data.TrainingShards(cell_source.source("train", size=SIZE, num_examples=32),
                                       16)
  base = {"fraction": 0.25, "step": 256, "delta_k": 0, "chunk": 4}
  tables = {}
  for fill in ("dataset_mean", "batch_mean"):
    options = training_data.resolve_dataset_mean(
        {"pixel_removal": {**base, "fill": fill}}, lambda: train)
    if fill == "dataset_mean":
      assert options["pixel_removal"]["fill"] == training_data.channel_mean(train)
    for shard_size in (6, 3):
      tables[fill, shard_size] = runner.evaluate(
          tmp_path / f"{fill}_{shard_size}", source=source, model=model, variables=variables,
          methods={"gradient": {}}, metrics=("pixel_removal",), metric_options=options,
          shard_size=shard_size, key=jax.random.key(1), progress=False,
          gallery_size=0).samples.set_index("index")
  columns = ["aopc", "afoc_morf", "afoc_lerf"]
  np.testing.assert_allclose(tables["dataset_mean", 3][columns],
                             tables["dataset_mean", 6][columns], rtol=1e-5, atol=1e-6)
  assert not np.allclose(tables["batch_mean", 3][columns], tables["batch_mean", 6][columns],
                         rtol=1e-5, atol=1e-6)
