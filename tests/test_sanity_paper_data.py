"""The sanity checks on MNIST / Fashion-MNIST and ImageNet inputs (configs `paper_*`).

The data cannot be downloaded here: MNIST is TFDS's mock data (`tfds.testing.mock_data`,
random images and labels; every split holds the same records, slicing is ignored). The
end-to-end data-randomisation run is checked against an independent computation: the raw
TFDS records, the permuted labels, the recorded accuracies recomputed from the restored
models' logits, and the Spearman similarities recomputed from `jax.grad` maps with
`scipy.stats.spearmanr` on PAIR's visualisations.
"""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest
import scipy.stats
import tensorflow_datasets as tfds

from configs import sanity_checks as sanity_config
from xai_jax import models
from xai_jax.metrics import sanity
from xai_jax.models import port
from xai_jax.pipelines import sanity_checks

RECORDS = 64


def _shrunk(variant, tfds_dir):
  config = sanity_config.get_config(variant)
  config.data.update(tfds_dir=str(tfds_dir), train_examples=48, num_explain=4,
                     explain_batch_size=4)
  config.train.update(epochs=40, max_steps=60, batch_size=16, learning_rate=1e-3,
                      weight_decay=0.0, checkpoint_every=0, test_examples=32)
  config.methods = ("gradient",)
  config.randomization.modes = ()
  config.data_randomization.update(train_examples=48, batch_size=16, learning_rate=1e-3,
                                   steps_per_check=15, max_steps=600)
  config.grid_images = 1
  return config


def _visual(maps, absolute):
  """PAIR's grayscale / diverging visualisation at the 99th percentile, written anew."""
  out = []
  for m in maps:
    m = m.sum(-1).ravel().astype(np.float64)
    if absolute:
      m = np.abs(m)
      low, high = m.min(), np.percentile(m, 99)
      out.append(np.clip((m - low) / (high - low), 0, 1))
    else:
      span = abs(np.percentile(m, 99))
      out.append(np.clip((m + span) / (2 * span), -1, 1))
  return out


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["paper_mnist"])  # the MLP: 9 s more, same path
def test_data_randomisation_end_to_end_on_mock_data(tmp_path, variant):
  config = _shrunk(variant, tmp_path)
  captured = {}
  real_load, real_random = sanity_checks.load_or_train_model, sanity_checks.train_random_labels

  def load(*args, **kwargs):
    captured["true"] = real_load(*args, **kwargs)
    return captured["true"]

  def random_labels(*args, **kwargs):
    captured["random"] = real_random(*args, **kwargs)
    return captured["random"]

  sanity_checks.load_or_train_model = load
  sanity_checks.train_random_labels = random_labels
  try:
    with tfds.testing.mock_data(num_examples=RECORDS):
      tables = sanity_checks.run(config, tmp_path / "work", progress=False)
      raw = tfds.data_source(config.data.tfds_name, split="train")
      records = [raw[i] for i in range(48)]
  finally:
    sanity_checks.load_or_train_model = real_load
    sanity_checks.train_random_labels = real_random
  images = np.stack([r["image"] for r in records]).astype(np.float32) / 255
  labels = np.array([int(r["label"]) for r in records])
  model, true_variables, true_info = captured["true"]
  random_variables, random_info = captured["random"]
  permuted = np.asarray(sanity.permute_labels(
      labels, key=jax.random.fold_in(jax.random.fold_in(jax.random.key(config.seed), 3), 0)))
  assert sorted(permuted) == sorted(labels) and np.mean(permuted != labels) > 0.5

  def predict(variables, x):
    return np.asarray(model.apply(variables, jnp.asarray(x))).argmax(-1)

  # The recorded accuracies, recomputed from the models' logits on the raw records.
  random_train = np.mean(predict(random_variables, images) == permuted)
  assert random_info["train_accuracy"] == pytest.approx(random_train)
  assert random_train > 0.95
  true_train = np.mean(predict(true_variables, images) == labels)
  assert true_info["train_accuracy"] == pytest.approx(true_train)
  # Mock "test" is the same records: the first 32 of them, with their true labels.
  assert random_info["test_accuracy_true_labels"] == pytest.approx(
      np.mean(predict(random_variables, images[:32]) == labels[:32]))
  print(f"{variant}: permuted-label training accuracy {random_train:.3f}, "
        f"true-label training accuracy {true_train:.3f}")

  # The data table: each model's own prediction, gradient maps, Spearman |.| and signed.
  x = images[:4]
  maps = []
  for variables in (true_variables, random_variables):
    target = predict(variables, x)
    logit = lambda xs, t=target, v=variables: jnp.sum(  # noqa: E731
        model.apply(v, xs)[jnp.arange(len(xs)), t])
    maps.append(np.asarray(jax.grad(logit)(jnp.asarray(x))))
  table = tables["data"]
  for measure, absolute in (("spearman_abs", True), ("spearman_signed", False)):
    got = table[(table.stage == "random_labels") & (table.measure == measure)]
    expected = [scipy.stats.spearmanr(a, b).statistic
                for a, b in zip(_visual(maps[0], absolute), _visual(maps[1], absolute))]
    # float32 gradients from two differently compiled programs (the pipeline's batch, this
    # test's) differ in the last bits, which can split or join rank ties among the many
    # near-zero pixels; that moves rho by ~1e-5 here. Another image or model moves it by > 1e-2.
    np.testing.assert_allclose(got.sort_values("image").value.to_numpy(), expected, atol=1e-3)


def _set(config, field, value):
  *parents, leaf = field.split(".")
  for parent in parents:
    config = config[parent]
  config[leaf] = value


@pytest.mark.parametrize("variant, field, value, message", [
    ("paper_mnist", "data.source", "webdataset", r"unknown data.source 'webdataset'"),
    ("paper_mnist", "data.tfds_name", "", r"data.source='tfds' needs data.tfds_name"),
    ("tiny", "data.tfds_name", "mnist", r"data.tfds_name / data.tfds_dir are read only"),
    ("paper_mnist", "data.image_folder", "/x", r"data.image_folder is read only"),
    ("paper_mnist", "data.size", 32, r"data.size must be 28 for mnist"),
    ("paper_mnist", "data.normalize", "imagenet", r"'imagenet' needs RGB images"),
    ("paper_mnist", "data.normalize", "unit", r"unknown data.normalize 'unit'"),
    ("paper_inception", "data.crop", "random", r"unknown data.crop 'random'"),
    ("paper_mnist", "data.explain_split", "validation", r"data.explain_split: unknown split"),
    ("paper_mnist", "data.train_split", "train[:ten]", r"data.train_split: malformed split"),
    ("paper_mnist", "data.train_examples", 0, r"data.train_examples must be >= 1 \(an int\)"),
    ("paper_mnist", "train.max_steps", -1, r"train.max_steps must be an int >= 0"),
    ("paper_mnist", "data_randomization.target_accuracy", 1.5, r"target_accuracy must be in"),
    ("paper_mnist", "data_randomization.steps_per_check", 0, r"steps_per_check must be"),
    ("paper_inception", "model.checkpoint", "", r"training from scratch needs"),
    ("paper_inception", "data_randomization.enabled", True,
     r"data_randomization trains on permuted training labels"),
])
def test_new_fields_are_validated_with_their_names(variant, field, value, message):
  config = sanity_config.get_config(variant)
  _set(config, field, value)
  with pytest.raises(ValueError, match=message):
    sanity_checks.validate(config)


def test_a_missing_tfds_dir_is_refused_before_anything_is_written(tmp_path):
  config = sanity_config.get_config("paper_mnist")
  config.data.tfds_dir = str(tmp_path / "nowhere")
  with pytest.raises(ValueError, match=r"data_dir .*nowhere does not exist.*tfds build"):
    sanity_checks.run(config, tmp_path / "work")
  assert not (tmp_path / "work").exists()


def test_image_folder_images_are_scaled_to_minus_one_one(tmp_path):
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
  for i, image in enumerate(pixels):
    Image.fromarray(image).save(tmp_path / f"{i}.png")
  config = sanity_config.get_config("paper_inception")
  config.data.update(image_folder=str(tmp_path), size=32, crop="resize", num_explain=3)
  config.grid_images = 1
  x = sanity_checks.explain_images(config)  # same size: no resampling
  np.testing.assert_allclose(x, pixels / 127.5 - 1.0, atol=1e-6)
  config.data.num_explain = 4
  with pytest.raises(ValueError, match="num_explain"):
    sanity_checks.explain_images(config)


@pytest.mark.slow
def test_inception_checkpoint_takes_minus_one_one_input_without_transform_input(tmp_path):
  """`paper_inception`: torchvision's weights expect ImageNet-normalised pixels and re-scale
  them with `transform_input` to 2 * pixel - 1; the pipeline feeds 2 * pixel - 1 directly
  and turns `transform_input` off, so the logits equal the checkpoint's own on its input."""
  model = models.get("inception_v3", num_classes=5, transform_input=True)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 75, 75, 3)))
  port.save(str(tmp_path / "ckpt"), variables, arch="inception_v3", num_classes=5,
            options={"transform_input": True})
  pixels = jax.random.uniform(jax.random.key(1), (2, 75, 75, 3))
  mean, std = sanity_checks.NORMALIZATIONS["imagenet"]
  expected = model.apply(variables, (pixels - jnp.asarray(mean)) / jnp.asarray(std))

  config = sanity_config.get_config("paper_inception")
  config.model.checkpoint = str(tmp_path / "ckpt")
  assert config.data.normalize == "inception"
  loaded, restored = sanity_checks.load_checkpoint(config)
  assert not loaded.transform_input
  np.testing.assert_allclose(loaded.apply(restored, 2 * pixels - 1), expected,
                             rtol=1e-4, atol=1e-5)
  # With ImageNet normalisation the checkpoint keeps its transform_input, which on [-1, 1]
  # input would re-scale a second time: other logits.
  config.data.normalize = "imagenet"
  kept, _ = sanity_checks.load_checkpoint(config)
  assert kept.transform_input
  assert not np.allclose(kept.apply(restored, 2 * pixels - 1), expected, rtol=1e-2)
