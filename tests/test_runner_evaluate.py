"""`runner.evaluate`: every column against a direct computation, resuming, devices, errors."""

import functools
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from xai_jax import explain, models, runner
from xai_jax.data import cell_source
from xai_jax.metrics import ground_truth, pixel_removal

ROOT = pathlib.Path(__file__).resolve().parents[1]
SIZE = 32
SHARD = 6
KEY_SEED = 3
METHODS = {"gradient": {}, "noisy": {"method_name": "smoothgrad", "samples": 2,
                                     "stdev_spread": 0.1},
           "gradcam": {}}
# fraction 0.125 = 128 of the 32x32 pixels: AOPC / AFOC see the first removal step (at the
# default 0.1, step 128 left them 0 for every map, which `check_removal_grid` now refuses).
REMOVAL = {"fraction": 0.125, "step": 128, "delta_k": 2, "chunk": 4}


@pytest.fixture(scope="module")
def setup():
  model = models.get("small_vgg", num_classes=10, widths=(8, 16))
  variables = models.init(model, jax.random.key(0), (1, SIZE, SIZE, 3))
  source = cell_source.source("test", size=SIZE, num_examples=2 * SHARD)
  # A random network predicts one class for every image. Centring each logit over the data
  # (through the last bias) and scaling it makes the predictions vary and lets pixel removal
  # flip them, so the pixel-removal columns are not trivially 0 / 1.
  logits = model.apply(variables, jnp.asarray(source.get_batch(np.arange(2 * SHARD))["image"]))
  fc2 = variables["params"]["fc2"]
  fc2 = {"kernel": 30.0 * fc2["kernel"], "bias": 30.0 * (fc2["bias"] - logits.mean(0))}
  variables = {**variables, "params": {**variables["params"], "fc2": fc2}}
  return model, variables, source


def _evaluate(workdir, setup, **overrides):
  model, variables, source = setup
  kwargs = dict(source=source, model=model, variables=variables, methods=METHODS,
                metric_options={"pixel_removal": REMOVAL}, shard_size=SHARD,
                key=jax.random.key(KEY_SEED), model_name="m", progress=False, gallery_size=4)
  kwargs.update(overrides)
  return runner.evaluate(workdir, **kwargs)


@pytest.fixture(scope="module")
def result(setup, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("evaluate")
  return workdir, _evaluate(workdir, setup)


@pytest.mark.slow
def test_tables_have_one_row_per_sample_and_method(result):
  _, tables = result
  samples = tables.samples
  assert len(samples) == 2 * SHARD * len(METHODS)
  assert list(samples.columns[:11]) == ["model", "method", "shard", "position", "index", "label",
                                        "background", "predicted", "confidence", "correct",
                                        "Amu"]
  for method in METHODS:
    rows = samples[samples["method"] == method]
    assert sorted(rows["index"]) == list(range(2 * SHARD))
  for column in ("iou", "iou_star", "aopc", "n_lerf", "delta_aopc", "Pu1_clamp"):
    assert column in samples.columns
  assert set(tables.roc["setting"]) == {"soft", "clamped"}
  assert set(tables.curves["order"]) == {"morf", "lerf"}
  assert tables.gallery["map/noisy"].shape == (4, SIZE, SIZE)


@pytest.mark.slow
def test_columns_equal_a_direct_computation(result, setup):
  _, tables = result
  model, variables, source = setup
  indices = np.arange(SHARD, 2 * SHARD)  # shard 1
  batch = source.get_batch(indices)
  x = jnp.asarray(batch["image"])
  logits = model.apply(variables, x)
  target = jnp.argmax(logits, axis=-1)
  attributions = explain.gradient(model, variables, x, target)
  maps = attributions.sum(-1)
  rows = tables.samples[(tables.samples["method"] == "gradient") & (tables.samples["shard"] == 1)]
  np.testing.assert_array_equal(rows["index"], indices)
  np.testing.assert_array_equal(rows["label"], batch["label"])
  np.testing.assert_array_equal(rows["predicted"], np.asarray(target))
  np.testing.assert_allclose(rows["confidence"], np.max(jax.nn.softmax(logits), -1), rtol=1e-5)
  for setting, suffix in (("soft", ""), ("clamped", "_clamp")):
    scores = ground_truth.five_band_scores(attributions, batch["heatmap"], thresholds=setting)
    for column, values in ground_truth.five_band_summary(scores).items():
      np.testing.assert_allclose(rows[column + suffix], np.asarray(values), rtol=1e-6,
                                 err_msg=column + suffix)
  mask = batch["heatmap"] > 0
  np.testing.assert_allclose(rows["iou"], ground_truth.iou(maps, mask, n_std=0.5), rtol=1e-6)
  np.testing.assert_allclose(rows["iou_star"], ground_truth.iou_star(maps, mask, n_std=1.0),
                             rtol=1e-6)
  metric_fn = functools.partial(pixel_removal.pixel_removal_metrics, fraction=0.125, step=128,
                                chunk=4, fill="batch_mean")
  direct = metric_fn(model, variables, x, maps)
  # The runner's own curves share a batch with the delta partners: same fill mean up to
  # rounding, so allow float tolerance.
  for column in ("aopc", "afoc_morf", "afoc_lerf", "n_morf", "n_lerf", "flipped_morf"):
    np.testing.assert_allclose(rows[column], np.asarray(direct[column]), rtol=1e-4, atol=1e-5,
                               err_msg=column)
  # The delta: each image's delta_k partners, drawn from all 2 * SHARD images (not only
  # those of its shard), each with its own gradient map (its own predicted class).
  total = 2 * SHARD
  partners = np.asarray(pixel_removal.draw_partners(
      runner.partner_key(jax.random.key(KEY_SEED)), indices, total, REMOVAL["delta_k"]))
  assert not np.any(partners == indices[:, None])
  everything = jnp.asarray(source.get_batch(np.arange(total))["image"])
  every_target = jnp.argmax(model.apply(variables, everything), axis=-1)
  every_map = explain.gradient(model, variables, everything, every_target).sum(-1)
  own = metric_fn(model, variables, x, maps)
  with_partners = [metric_fn(model, variables, x, every_map[partners[:, j]])
                   for j in range(REMOVAL["delta_k"])]
  # A delta is a difference of two metric values of order 1, each off by float32 rounding of
  # the fill mean: the tolerance is absolute, on the scale of the terms.
  for column in ("aopc", "afoc_morf", "afoc_lerf", "n_morf", "n_lerf"):
    expected = np.asarray(own[column]) - np.mean(
        [np.asarray(m[column]) for m in with_partners], axis=0)
    np.testing.assert_allclose(rows["delta_" + column], expected, rtol=1e-4, atol=1e-4,
                               err_msg="delta_" + column)
  # AOPC and AFOC see a removal step (they were 0 for every map at step > fraction * P).
  assert np.all(rows["aopc"] != 0) and np.all(rows["afoc_lerf"] != 0)
  assert rows["flipped_morf"].sum() > 0, "the test model should flip some decisions"


@pytest.mark.slow
def test_roc_and_curves_are_means_over_all_samples(result, setup):
  _, tables = result
  model, variables, source = setup
  batch = source.get_batch(np.arange(2 * SHARD))
  x = jnp.asarray(batch["image"])
  target = jnp.argmax(model.apply(variables, x), axis=-1)
  attributions = explain.gradient(model, variables, x, target)
  scores = ground_truth.five_band_scores(attributions, batch["heatmap"], thresholds="soft")
  roc = tables.roc[(tables.roc["method"] == "gradient") & (tables.roc["setting"] == "soft")]
  np.testing.assert_allclose(roc["recall"], np.asarray(scores.recall).mean(0), rtol=1e-5)
  np.testing.assert_allclose(roc["fpr"], np.asarray(scores.fpr).mean(0), rtol=1e-5)
  curve_scores = []
  for shard in range(2):  # fill "batch_mean" (the default) is the mean of each shard's batch
    part = slice(shard * SHARD, (shard + 1) * SHARD)
    curve = pixel_removal.perturbation_curve(model, variables, x[part],
                                             attributions[part].sum(-1), order="lerf",
                                             step=128, chunk=4)
    curve_scores.append(np.asarray(curve.scores))
  curve_scores = np.concatenate(curve_scores)
  got = tables.curves[(tables.curves["method"] == "gradient") & (tables.curves["order"] == "lerf")]
  np.testing.assert_allclose(got["score"], curve_scores.mean(0), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(got["drop"], (curve_scores[:, :1] - curve_scores).mean(0),
                             rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_resuming_after_losing_a_shard_gives_identical_bytes(result, setup, tmp_path):
  workdir, _ = result
  copy = tmp_path / "copy"
  shutil.copytree(workdir, copy)
  for table in ("samples", "roc", "curves"):
    (copy / "shards" / "m" / table / "shard_00001.csv").unlink()
    (copy / "m" / f"{table}.csv").unlink()
  (copy / "m" / "gallery.npz").unlink()  # shard 0 is redone to rewrite the gallery
  _evaluate(copy, setup)
  for table in ("samples", "roc", "curves"):
    assert (copy / "m" / f"{table}.csv").read_bytes() == (workdir / "m" / f"{table}.csv").read_bytes()
  before = runner.load_gallery(workdir / "m" / "gallery.npz")
  after = runner.load_gallery(copy / "m" / "gallery.npz")
  assert sorted(before) == sorted(after)
  for name in before:
    np.testing.assert_array_equal(before[name], after[name])


class _ImagesOnly:
  """A source without ground truth."""

  def __init__(self, source):
    self.source = source

  def __len__(self):
    return len(self.source)

  def get_batch(self, indices):
    batch = self.source.get_batch(indices)
    return {"image": batch["image"], "label": batch["label"]}


class _WithNaN(_ImagesOnly):

  def get_batch(self, indices):
    batch = super().get_batch(indices)
    batch["image"][0, 0, 0, 0] = np.nan
    return batch


@pytest.mark.slow
@pytest.mark.parametrize("overrides, message", [
    (dict(methods={"nope": {}}), "unknown explanation method 'nope'"),
    (dict(metrics=("five_band", "psnr")), "unknown metrics"),
    (dict(metric_options={"pixel_removal": {"steps": 3}}), "unknown pixel_removal options"),
    (dict(metric_options={"pixel_removal": {"delta_k": 2 * SHARD}}),
     "delta_k = 12 needs more than 12 evaluated images"),
    (dict(num_examples=100), "num_examples must be in"),
])
def test_bad_arguments_raise_clear_errors(setup, tmp_path, overrides, message):
  with pytest.raises(ValueError, match=message):
    _evaluate(tmp_path, setup, **overrides)


@pytest.mark.slow
def test_missing_ground_truth_and_nan_images_raise(setup, tmp_path):
  model, variables, source = setup
  with pytest.raises(ValueError, match="'five_band' needs a source with 'heatmap'"):
    _evaluate(tmp_path / "a", setup, source=_ImagesOnly(source))
  with pytest.raises(ValueError, match="NaN"):
    _evaluate(tmp_path / "b", setup, source=_WithNaN(source), metrics=("pixel_removal",))
  tables = _evaluate(tmp_path / "c", setup, source=_ImagesOnly(source), metrics=("pixel_removal",),
                     methods={"gradient": {}})
  assert tables.roc.empty and not tables.curves.empty
  assert "Amu" not in tables.samples.columns


_DEVICES_SCRIPT = textwrap.dedent("""
    import sys, jax
    from xai_jax import models, runner
    from xai_jax.data import cell_source
    model = models.get("small_vgg", num_classes=10, widths=(8,))
    variables = models.init(model, jax.random.key(0), (1, 32, 32, 3))
    source = cell_source.source("test", size=32, num_examples=10)
    tables = runner.evaluate(sys.argv[1], source=source,
                             model=model, variables=variables,
                             methods={"smoothgrad": {"samples": 2}},
                             metric_options={"pixel_removal": {"fraction": 0.25, "step": 256,
                                                              "delta_k": 2}},
                             shard_size=5, key=jax.random.key(1), progress=False,
                             gallery_size=0)
    print(jax.device_count())
""")


@pytest.mark.slow
def test_eight_fake_devices_give_the_same_tables_as_one(tmp_path):
  tables = {}
  for devices in (1, 8):
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
           "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", _DEVICES_SCRIPT, str(tmp_path / str(devices))],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[-1] == str(devices)
    tables[devices] = pd.read_csv(tmp_path / str(devices) / "model" / "samples.csv")
  one, eight = tables[1], tables[8]
  assert list(one.columns) == list(eight.columns) and len(one) == len(eight) == 10
  numeric = one.select_dtypes("number").columns
  np.testing.assert_allclose(eight[numeric], one[numeric], rtol=1e-5, atol=1e-6)
  pd.testing.assert_series_equal(one["method"], eight["method"])


def test_image_keys_depend_on_method_and_index_only():
  key = jax.random.key(0)
  data = lambda name, indices: [tuple(np.asarray(jax.random.key_data(k))) for k in
                                runner.image_keys(key, name, np.asarray(indices))]
  names = ("gradient", "gradient_shap", "guided_backprop", "guided_gradcam")
  drawn = {k for n in names for k in data(n, [0, 1, 7])}
  assert len(drawn) == 3 * len(names)  # a shared prefix does not share a key
  # An image's key is the same in any batch and at any position.
  assert data("gradient_shap", [7, 1])[0] == data("gradient_shap", [0, 1, 7])[2]
  assert data("gradient_shap", [1]) == data("gradient_shap", [3, 1])[1:]
  method = runner.method_key(key, "smoothgrad")
  assert data("smoothgrad", [5])[0] == tuple(np.asarray(jax.random.key_data(
      jax.random.fold_in(method, 5))))
  partner = tuple(np.asarray(jax.random.key_data(runner.partner_key(key))))
  assert partner not in drawn


def test_keys_are_filled_in_for_exactly_the_methods_that_take_one():
  # Which method draws randomness comes from the explainer registry, not from a list of names.
  x = jnp.zeros((2, 8, 8, 3))
  keys = runner.image_keys(jax.random.key(0), "m", np.arange(2))
  for name in explain.METHODS:
    options = runner.explain_options(name, {}, x, keys)
    assert ("key" in options) == explain.takes_key(name), name
  given = jax.random.key(9)
  assert runner.explain_options("smoothgrad", {"key": given}, x, keys)["key"] is given
  assert {"smoothgrad", "gradient_shap", "random"} <= {
      n for n in explain.METHODS if explain.takes_key(n)}
  # A keyed method is accepted without a key (the runner supplies it).
  resolved = runner.check_methods({"noisy": {"method_name": "smoothgrad", "samples": 2},
                                   "gradient": {}})
  assert resolved == {"noisy": ("smoothgrad", {"samples": 2}), "gradient": ("gradient", {})}


def test_named_uniform_baselines_are_per_image_and_in_its_range():
  x = jnp.stack([jnp.full((4, 4, 3), 0.5).at[0, 0, 0].set(0.0),
                 jnp.full((4, 4, 3), 2.0).at[1, 1, 1].set(3.0)])
  keys = runner.image_keys(jax.random.key(0), "m", np.array([4, 9]))
  options = runner.explain_options("gradient_shap", {"baselines": "uniform:3"}, x, keys)
  sets = np.asarray(options["baselines"])
  assert sets.shape == (2, 3, 4, 4, 3)
  assert sets[0].min() >= 0.0 and sets[0].max() <= 0.5
  assert sets[1].min() >= 2.0 and sets[1].max() <= 3.0
  alone = runner.explain_options("gradient_shap", {"baselines": "uniform:3"}, x[1:], keys[1:])
  np.testing.assert_array_equal(alone["baselines"][0], sets[1])
  zeros = runner.explain_options("deeplift", {"baseline": "zeros"}, x, keys)
  np.testing.assert_array_equal(zeros["baseline"], np.zeros((4, 4, 3)))


def test_named_normal_baselines_are_the_per_image_noise_draws():
  # "normal:K:STD" (Tjoa & Guan's four N(0, 0.001^2) images): image i's set is exactly
  # STD * normal(fold_in(keys[i], 7), (K, H, W, C)), whatever the image's values.
  x = jnp.stack([jnp.full((4, 4, 3), 0.5), jnp.full((4, 4, 3), 9.0)])
  keys = runner.image_keys(jax.random.key(0), "m", np.array([4, 9]))
  options = runner.explain_options("deeplift_shap", {"baselines": "normal:4:0.001"}, x, keys)
  sets = np.asarray(options["baselines"])
  assert sets.shape == (2, 4, 4, 4, 3)
  for i in range(2):
    expected = 0.001 * jax.random.normal(jax.random.fold_in(keys[i], 7), (4, 4, 4, 3))
    np.testing.assert_array_equal(sets[i], np.asarray(expected))
  assert 0.0005 < sets.std() < 0.002 and abs(sets.mean()) < 0.0005
  for bad in ("normal:4", "normal:0:0.001", "normal:4:0", "normal:4:-1", "normal:4:nan",
              "normal:4:x", "uniform:4:0.1"):
    with pytest.raises(ValueError, match=r"methods.m: unknown baselines .*'normal:K:STD'"):
      runner.check_methods({"m": {"method_name": "gradient_shap", "baselines": bad}})
  runner.check_methods({"m": {"method_name": "gradient_shap", "baselines": "normal:4:0.001"}})


def test_named_training_references_are_the_first_n_training_images():
  # "train:N": the first N rows of the training references, one set shared by every image
  # (shap's background data), for `background` (layer SHAP) and `baselines`.
  x = jnp.zeros((2, 4, 4, 3))
  keys = runner.image_keys(jax.random.key(0), "m", np.arange(2))
  references = jnp.asarray(np.random.default_rng(0).normal(size=(5, 4, 4, 3)), jnp.float32)
  for name, field in (("layer_shap", "background"), ("gradient_shap", "baselines")):
    options = runner.explain_options(name, {field: "train:3"}, x, keys, references)
    np.testing.assert_array_equal(options[field], references[:3])
    with pytest.raises(ValueError, match=r"needs at least 6 training reference images; got 5"):
      runner.explain_options(name, {field: "train:6"}, x, keys, references)
    with pytest.raises(ValueError, match=r"got none"):
      runner.explain_options(name, {field: "train:1"}, x, keys)
  assert runner.training_references_needed(
      {"a": {"background": "train:4"}, "b": {"baselines": "train:7"}, "c": {}}) == 7
  assert runner.training_references_needed({"a": {"baselines": "normal:4:0.001"}}) == 0
  for bad in ("train:0", "train:", "train:x"):
    with pytest.raises(ValueError, match=r"methods.m: unknown background .*'train:N'"):
      runner.check_methods({"m": {"method_name": "layer_shap", "background": bad}})
  with pytest.raises(ValueError, match=r"methods.m: unknown baseline 'train:3'"):
    runner.check_methods({"m": {"method_name": "deeplift", "baseline": "train:3"}})


@pytest.mark.slow
def test_evaluate_gives_layer_shap_the_training_references(setup, tmp_path):
  # Through `evaluate`, "train:3" is exactly the first 3 training images as the background:
  # the IOU equals that of the map computed directly with that background and the same keys.
  model, variables, source = setup
  train = cell_source.source("train", size=SIZE, num_examples=4)
  methods = {"shap": {"method_name": "layer_shap", "background": "train:3", "samples": 2,
                      "guided": False}}
  with pytest.raises(ValueError, match=r"needs references with at least 3 training images"):
    _evaluate(tmp_path / "none", setup, methods=methods, metrics=("iou",), metric_options={})
  tables = _evaluate(tmp_path, setup, methods=methods, metrics=("iou",), metric_options={},
                     num_examples=3, shard_size=3, gallery_size=0, references=train)
  x = jnp.asarray(source.get_batch(np.arange(3))["image"])
  target = jnp.argmax(model.apply(variables, x), axis=-1)
  background = jnp.asarray(train.get_batch(np.arange(3))["image"])
  maps = explain.layer_shap(model, variables, x, target, background=background, samples=2,
                            guided=False,
                            key=runner.image_keys(jax.random.key(KEY_SEED), "shap", np.arange(3)))
  mask = source.get_batch(np.arange(3))["heatmap"] > 0
  expected = ground_truth.iou(np.asarray(maps), mask, n_std=0.5, abs=True)
  np.testing.assert_allclose(tables.samples["iou"], np.asarray(expected), rtol=1e-5)


@pytest.mark.slow
def test_every_per_image_result_is_the_same_for_any_shard_size(setup, tmp_path):
  # Per-image keys and partners drawn from the whole evaluated set: every column of every
  # row (the delta included) is the same whatever the shards. A batch of another
  # composition may round float32 differently (on some backends), hence allclose; the
  # "image_mean" fill depends on the image only ("mean" is the batch's mean).
  model, variables, _ = setup
  total = 32
  source = cell_source.source("test", size=SIZE, num_examples=total)
  methods = {"gradient": {}, "noisy": {"method_name": "smoothgrad", "samples": 2,
                                       "stdev_spread": 0.1},
             "random": {}}
  removal = {**REMOVAL, "fill": "image_mean"}
  tables = {}
  for shard_size in (4, 7, 32):
    tables[shard_size] = _evaluate(tmp_path / str(shard_size), setup, source=source,
                                   methods=methods, metrics=("iou", "pixel_removal"),
                                   metric_options={"pixel_removal": removal},
                                   shard_size=shard_size, gallery_size=0)
  sort = lambda frame: frame.sort_values(["method", "index"]).reset_index(drop=True)
  reference = sort(tables[4].samples)
  assert len(reference) == total * len(methods)
  columns = [c for c in reference.columns if c not in ("shard", "position")]
  numeric = [c for c in columns if reference[c].dtype.kind in "fi"]
  assert {"delta_aopc", "delta_n_morf", "iou"} <= set(numeric)
  for shard_size in (7, 32):
    other = sort(tables[shard_size].samples)
    pd.testing.assert_frame_equal(other[["method", "model"]], reference[["method", "model"]])
    np.testing.assert_allclose(other[numeric], reference[numeric], rtol=1e-5, atol=1e-6,
                               err_msg=f"shard_size {shard_size}")
    np.testing.assert_allclose(tables[shard_size].curves.select_dtypes("number"),
                               tables[4].curves.select_dtypes("number"), rtol=1e-5, atol=1e-6)
  # Not trivially equal: the keyed maps and the deltas vary across images.
  for method in ("noisy", "random"):
    rows = reference[reference["method"] == method]
    assert rows["delta_aopc"].std() > 0 and rows["aopc"].std() > 0, method
