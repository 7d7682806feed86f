"""Configs are checked before any work, and evaluation fields may change on a trained workdir.

* Every shipped variant of every config module passes its experiment's `validate`.
* A bad config (unknown method or option, a bad option value, an unknown metric, a
  pixel-removal step above `fraction` of the pixels, too few images for the delta)
  is refused before anything is written: the workdir does not even exist afterwards, and the
  error names the field.
* Training fields and evaluation fields are recorded apart (`xai_jax.pipelines.workdir`): a
  trained workdir refuses other training fields but accepts other evaluation fields, whose
  outputs go to `WORKDIR/eval_<hash>/` while the trained models are reused.
"""

import fractions
import json
import math
import pathlib

import numpy as np
import pandas as pd
import pytest

from configs import cells as cells_config
from configs import localization as localization_config
from configs import pixel_removal as pixel_removal_config
from configs import sanity_checks as sanity_config
# The documented removal grid as a slow rational-arithmetic loop, shared with the experiment tests.
from test_experiment_localization_pixel_removal import _grid as removal_grid_loop
from xai_jax import explain
from xai_jax import runner
from xai_jax.pipelines import cells
from xai_jax.pipelines import image_experiment
from xai_jax.pipelines import localization
from xai_jax.pipelines import pixel_removal
from xai_jax.pipelines import sanity_checks
from xai_jax.pipelines import workdir as workdir_layout

EXPERIMENTS = ((cells_config, cells), (localization_config, localization),
               (pixel_removal_config, pixel_removal), (sanity_config, sanity_checks))


@pytest.mark.parametrize("config_module, experiment, variant", [
    (c, e, v) for c, e in EXPERIMENTS for v in c.VARIANTS],
    ids=lambda a: a if isinstance(a, str) else a.__name__.split(".")[-1])
def test_every_shipped_variant_validates(config_module, experiment, variant):
  experiment.validate(config_module.get_config(variant))


def test_shipped_removal_steps_fit_their_fraction():
  # AOPC / AFOC at `fraction` need a grid point 0 < step <= the fraction's pixels, and that
  # count on the grid (10% itself, not the grid point before it).
  for config_module, options_of in (
      (cells_config, lambda c: c.metric_options.pixel_removal),
      (pixel_removal_config, lambda c: c.pixel_removal)):
    for variant in config_module.VARIANTS:
      config = config_module.get_config(variant)
      options = options_of(config)
      size = config.data.size
      num_pixels = size * size
      assert not (options.step and options.step_fraction), (config_module, variant)
      grid = removal_grid_loop(num_pixels, options.step, options.step_fraction)
      exact = fractions.Fraction(str(options.fraction)) * num_pixels
      count = (math.floor(exact) if options.step else
               math.floor(exact + fractions.Fraction(1, 2)))
      assert 0 < grid[1] <= count and count in grid, (config_module, variant, count)
  # The old tiny cells setting (step 128 > 102 = 10% of 32x32) left every AOPC at 0.
  config = cells_config.get_config("tiny")
  config.metric_options.pixel_removal.update(step=128, step_fraction=0.0)  # 0: unset
  with pytest.raises(ValueError, match=r"metric_options.pixel_removal.step: step 128 removes "
                                       r"more than fraction 0.1 of the 1024 pixels"):
    cells.validate(config)


def _tiny_cells(**evaluate):
  config = cells_config.get_config("tiny")
  config.evaluate.update(evaluate)
  return config


def _set(config, path, value):
  *parents, leaf = path.split(".")
  for parent in parents:
    config = config[parent]
  config[leaf] = value


# (field path, value, the error must match): each one refused on cells:tiny.
CELLS_BAD = [
    ("methods", {"nonexistent": {}},
     r"methods.nonexistent: unknown explanation method 'nonexistent'; valid: .*gradient"),
    ("methods", {"gradient": {"stepz": 3}},
     r"methods.gradient: gradient: unknown options \['stepz'\]; valid: \['abs'\]"),
    ("methods", {"integrated_gradients": {"steps": 0}},
     r"methods.integrated_gradients: integrated_gradients: steps must be >= 1; got 0"),
    ("methods", {"smoothgrad": {"samples": 0}},
     r"methods.smoothgrad: smoothgrad: samples must be a positive int; got 0"),
    ("methods", {"ig": {"method_name": "integrated_gradients", "rule": "simpson"}},
     r"methods.ig: integrated_gradients: unknown rule 'simpson'"),
    ("methods", {"gradient_shap": {"baselines": "uniform:0", "samples": 4}},
     r"methods.gradient_shap: unknown baselines 'uniform:0'"),
    ("metrics", ("five_band", "psnr"), r"unknown metrics \['psnr'\]"),
    ("metric_options.pixel_removal.step_fraction", 0.2,
     r"metric_options.pixel_removal.step_fraction: step_fraction 0.2 removes 205 pixels at the "
     r"first grid point, more than fraction 0.1 of the 1024 pixels \(102\)"),
    # 15% (154 pixels) lies between grid points 1 and 2 of the 10% grid: refused, not 10%.
    ("metric_options.pixel_removal.fraction", 0.15,
     r"metric_options.pixel_removal.step_fraction: fraction=0.15 \(154 of 1024 pixels\) is not "
     r"on the removal grid of step_fraction=0.1 .*nearest grid fractions are 0.1 \(102 pixels\) "
     r"and 0.2 \(205 pixels\)"),
    ("metric_options.pixel_removal.fill", "mean",
     r"metric_options.pixel_removal.fill: 'mean' is ambiguous: use 'batch_mean'"),
    ("metric_options.pixel_removal.fill", "zeros",
     r"metric_options.pixel_removal.fill: unknown fill 'zeros'; valid: dataset_mean, "
     r"batch_mean, image_mean, blur"),
    ("metric_options.pixel_removal.score", "softmax",
     r"metric_options.pixel_removal.score: unknown score 'softmax'"),
    # 16 test images with delta_k = 16: an image has only 15 others (shards do not matter:
    # the partners are drawn from the whole evaluated set).
    ("metric_options.pixel_removal.delta_k", 16,
     r"delta_k = 16 needs more than 16 evaluated images.*num_examples = 16: use delta_k < 16"),
    ("evaluate.num_examples", 2,
     r"evaluate.num_examples / evaluate.shard_size: pixel_removal delta_k = 2 needs more than 2 "
     r"evaluated images .*num_examples = 2: use num_examples > 2 or delta_k < 2"),
    ("evaluate.num_examples", 17, r"evaluate.num_examples must be in 0..data.num_test = 16"),
    ("evaluate.models", ("base", "branch_3"), r"evaluate.models \['branch_3'\] are not trained"),
]


@pytest.mark.parametrize("path, value, message", CELLS_BAD,
                         ids=[f"{p}={v}" for p, v, _ in CELLS_BAD])
def test_bad_cells_configs_are_refused_before_any_file(tmp_path, path, value, message):
  config = cells_config.get_config("tiny")
  _set(config, path, value)
  workdir = tmp_path / "work"
  with pytest.raises(ValueError, match=message):
    cells.run(config, workdir, progress=False)
  assert not workdir.exists()


def test_bad_configs_of_the_other_experiments_are_refused_before_any_file(tmp_path):
  cases = []
  config = localization_config.get_config("tiny")
  config.methods = {"gradient": {}, "nonexistent": {}}
  cases.append((localization, config, r"methods.nonexistent: unknown explanation method"))
  config = localization_config.get_config("tiny")
  config.iou.n_std = -1.0
  cases.append((localization, config, r"metric_options.iou.n_std: must be a finite number"))
  config = pixel_removal_config.get_config("tiny")
  config.pixel_removal.update(step=103, step_fraction=0.0)  # 10% of 32x32 is 102 pixels
  cases.append((pixel_removal, config, r"metric_options.pixel_removal.step: step 103"))
  config = pixel_removal_config.get_config("tiny")
  config.pixel_removal.update(step=64, step_fraction=0.0)  # the former tiny grid: 64, 128
  cases.append((pixel_removal, config, r"metric_options.pixel_removal.step: fraction=0.1 \(102 "
                                       r"of 1024 pixels\) is not on the removal grid of step=64 "
                                       r"pixels: the nearest grid fractions are 0.0625 \(64 "
                                       r"pixels\) and 0.125 \(128 pixels\)"))
  config = pixel_removal_config.get_config("tiny")
  config.pixel_removal.step = 51  # and step_fraction 0.05
  cases.append((pixel_removal, config, r"step \(pixels\) or step_fraction, not both"))
  for field, value, message in (
      ("alpha_images", 1, r"statistics.alpha_images must be an int >= 2 \(images per draw\), "
                          r"or 0 for every image; got 1"),
      ("alpha_draws", 0, r"statistics.alpha_draws must be a positive int; got 0"),
      ("alpha_level", "nominal", r"statistics.alpha_level must be one of interval, ordinal; "
                                 r"got 'nominal'")):
    config = pixel_removal_config.get_config("tiny")
    config.statistics[field] = value
    cases.append((pixel_removal, config, message))
  config = pixel_removal_config.get_config("tiny")
  config.data.num_examples = 2  # delta_k = 2: each image has only one other
  cases.append((pixel_removal, config, r"data.num_examples / evaluate.shard_size: pixel_removal "
                                       r"delta_k = 2 needs more than 2 evaluated images"))
  config = sanity_config.get_config("tiny")
  config.method_options.guided_backprop = {"steps": 4}
  cases.append((sanity_checks, config, r"method_options.guided_backprop: guided_backprop: "
                                       r"unknown options \['steps'\]; valid: none"))
  config = sanity_config.get_config("tiny")
  with config.unlocked():
    config.methods = ("gradient", "ig")
    config.method_options.ig = {"method_name": "integrated_gradients", "steps": 0}
  cases.append((sanity_checks, config, r"method_options.ig: integrated_gradients: steps must "
                                       r"be >= 1"))
  for i, (experiment, config, message) in enumerate(cases):
    workdir = tmp_path / f"work{i}"
    with pytest.raises(ValueError, match=message):
      experiment.run(config, workdir, progress=False)
    assert not workdir.exists(), message


def test_check_options_against_signatures_and_entry_checks():
  explain.check_options("integrated_gradients", {"steps": 4, "rule": "riemann_trapezoid"})
  explain.check_options("smoothgrad", {"method": "gradient", "abs": True, "samples": 8,
                                       "stdev_spread": 0.15})
  explain.check_options("random", {}, supplied=("key",))
  for name, options, message in [
      ("integrated_gradients", {"steps": 1, "rule": "riemann_left"}, "needs steps >= 2"),
      ("integrated_gradients", {"steps": 2.5}, "steps must be an int"),
      ("smoothgrad", {"method": "gradient", "foo": 1},
       r"smoothgrad \(wrapping gradient: unknown options \['foo'\]"),
      ("smoothgrad", {"kind": "max"}, "unknown kind 'max'"),
      ("smoothgrad", {"stdev": 0.1, "stdev_spread": 0.1}, "not both"),
      ("gradient_shap", {"samples": 4}, r"missing required options \['baselines'\]"),
      ("random", {}, r"missing required options \['key'\]"),
      ("gradcam", {"upsample": "cubic"}, "unknown upsample 'cubic'"),
      ("integrated_gradients", {"chunk": 0}, "chunk must be a positive int"),
      ("gradient", {"loop": "scan"}, r"unknown options \['loop'\]"),
  ]:
    with pytest.raises(ValueError, match=message):
      explain.check_options(name, options)


def test_check_shards_needs_more_images_than_delta_k_in_any_shards():
  # The partners come from the whole evaluated set: N > K, whatever the shards (a last shard
  # of 1 image included).
  for num, size, k, ok in [(16, 8, 2, True), (9, 8, 2, True), (3, 8, 2, True),
                           (3, 1, 2, True), (8, 8, 7, True), (8, 8, 8, False),
                           (2, 8, 2, False), (9, 8, 0, True)]:
    if ok:
      runner.check_shards(num, size, delta_k=k)
    else:
      with pytest.raises(ValueError, match=f"delta_k = {k} needs more than {k} evaluated "
                                           f"images.*num_examples = {num}: use num_examples > "
                                           f"{k} or delta_k < {num}"):
        runner.check_shards(num, size, delta_k=k)
  with pytest.raises(ValueError, match=r"delta_k < 1 \(0: no delta\)"):
    runner.check_shards(1, 8, delta_k=1)
  with pytest.raises(ValueError, match=r"num_examples = 4: use delta_k < 4"):
    runner.check_shards(4, 8, delta_k=5, available=4)
  with pytest.raises(ValueError, match=r"num_examples must be in \[1, 16\]"):
    runner.check_shards(17, 8, available=16)
  with pytest.raises(ValueError, match="shard_size must be a positive int"):
    runner.check_shards(4, 0)


def test_runner_refuses_too_few_images_for_the_delta_before_reading_data(tmp_path):
  class Two:
    def __len__(self):
      return 2

    def get_batch(self, indices):
      raise AssertionError("no data may be read")

  with pytest.raises(ValueError, match="delta_k = 2 needs more than 2 evaluated images"):
    runner.evaluate(tmp_path / "out", source=Two(), model=None, variables=None,
                    methods={"gradient": {}}, metrics=("pixel_removal",),
                    metric_options={"pixel_removal": {"delta_k": 2}}, shard_size=8,
                    key=None)
  assert not (tmp_path / "out").exists()


def _json(config):
  return json.loads(config.to_json())


def test_training_and_evaluation_records(tmp_path):
  config = sanity_config.get_config("tiny")
  assert sanity_checks.check_workdir(config, tmp_path) == tmp_path
  recorded = json.loads((tmp_path / workdir_layout.TRAINING_RECORD).read_text())
  assert recorded == runner.config_fields(_json(config), sanity_checks.training_fields(config))
  assert "measures" not in recorded and recorded["data.train_examples"] == 64
  assert (tmp_path / "train_random_labels" / "train_config.json").is_file()
  # Evaluation fields: a folder of their own, the same one on every rerun.
  other = sanity_config.get_config("tiny")
  other.measures = ("spearman_abs",)
  other.data.num_explain = 2
  folder = sanity_checks.check_workdir(other, tmp_path)
  assert folder.parent == tmp_path and folder.name.startswith("eval_")
  assert sanity_checks.check_workdir(other, tmp_path) == folder
  assert sanity_checks.check_workdir(config, tmp_path) == tmp_path
  # `figures`-like volatile fields do not count; the cells' `figures` neither.
  cells_tiny = cells_config.get_config("tiny")
  assert cells.check_workdir(cells_tiny, tmp_path / "c") == tmp_path / "c"
  cells_tiny.figures = False
  assert cells.check_workdir(cells_tiny, tmp_path / "c") == tmp_path / "c"
  cells_tiny.data.num_test = 8  # evaluation data, not training data
  assert cells.check_workdir(cells_tiny, tmp_path / "c").name.startswith("eval_")
  # Training fields: refused, and nothing is recorded.
  before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
  trained_otherwise = sanity_config.get_config("tiny")
  trained_otherwise.train.learning_rate = 1e-2
  with pytest.raises(ValueError, match=r"trained models of a different config \(fields "
                                       r"\['train'\] differ\); they are kept"):
    sanity_checks.check_workdir(trained_otherwise, tmp_path)
  random_labels_otherwise = sanity_config.get_config("tiny")
  random_labels_otherwise.data_randomization.max_steps = 512
  with pytest.raises(ValueError, match=r"\['data_randomization'\]"):
    sanity_checks.check_workdir(random_labels_otherwise, tmp_path)
  assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_a_workdir_with_only_a_legacy_config_json(tmp_path):
  # Workdirs written before the split hold only config.json (the whole config).
  config = localization_config.get_config("tiny")
  (tmp_path / "config.json").write_text(json.dumps(_json(config)))
  other = localization_config.get_config("tiny")
  other.train.max_steps = 8
  with pytest.raises(ValueError, match=r"fields \['train'\] differ"):
    image_experiment.check_workdir(other, tmp_path)
  assert not (tmp_path / workdir_layout.TRAINING_RECORD).exists()
  other = localization_config.get_config("tiny")
  other.methods = {"gradient": {}}
  assert image_experiment.check_workdir(other, tmp_path).name.startswith("eval_")
  assert image_experiment.check_workdir(config, tmp_path) == tmp_path


def _stamps(folder: pathlib.Path) -> dict:
  return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def _trained(folder: pathlib.Path) -> tuple[dict, dict]:
  """Checkpoint files' mtimes (a retraining rewrites them) and every other file's bytes
  (a resumed training rewrites its history with the same bytes)."""
  files = [p for p in folder.rglob("*") if p.is_file()]
  checkpoints = {p: p.stat().st_mtime_ns for p in files if "checkpoints" in p.parts}
  assert checkpoints, f"no checkpoint under {folder}"
  return checkpoints, {p: p.read_bytes() for p in files if "checkpoints" not in p.parts}


@pytest.mark.slow
def test_cells_corrected_command_then_other_evaluation_fields_reuse_the_models(tmp_path):
  workdir = tmp_path / "cells"

  def small(**evaluate):
    config = cells_config.get_config("tiny")
    config.train.num_branches = 0
    config.methods = {"gradient": {}}
    config.figures = False
    config.evaluate.update(models=("base",), gallery_size=0, **evaluate)
    return config

  with pytest.raises(ValueError, match="needs more than 2 evaluated images"):
    cells.run(small(num_examples=2), workdir, progress=False)
  assert not workdir.exists()
  first = cells.run(small(num_examples=8), workdir, progress=False)  # the corrected command
  assert len(first["samples"]) == 8
  trained = _trained(workdir / "train")
  samples_before = (workdir / "samples.csv").read_bytes()

  changed = small(num_examples=16)
  changed.methods = {"gradient": {}, "random": {}}
  second = cells.run(changed, workdir, progress=False)
  assert _trained(workdir / "train") == trained  # no retraining
  folders = [p for p in workdir.iterdir() if p.name.startswith("eval_")]
  assert len(folders) == 1
  samples = pd.read_csv(folders[0] / "samples.csv")
  assert len(samples) == 16 * 2 and set(samples["method"]) == {"gradient", "random"}
  assert (workdir / "samples.csv").read_bytes() == samples_before  # the outputs do not mix
  # Same weights: the gradient maps of the first 8 images score the same.
  old = first["samples"].set_index("index")
  new = second["samples"][second["samples"]["method"] == "gradient"].set_index("index")
  np.testing.assert_allclose(new.loc[old.index, "Amu"], old["Amu"], rtol=1e-6, atol=1e-7)
  # A rerun of the changed config resumes in its folder and recomputes nothing.
  shards = _stamps(folders[0] / "shards")
  cells.run(changed, workdir, progress=False)
  assert _stamps(folders[0] / "shards") == shards
  assert [p for p in workdir.iterdir() if p.name.startswith("eval_")] == folders


@pytest.mark.slow
def test_pixel_removal_other_evaluation_fields_reuse_the_trained_model(tmp_path):
  config = pixel_removal_config.get_config("tiny")
  config.methods = {"gradient": {}}
  config.figures = False
  pixel_removal.run(config, tmp_path, progress=False)
  trained = _trained(tmp_path / "train")
  other = pixel_removal_config.get_config("tiny")
  other.methods = {"gradient": {}}
  other.figures = False
  other.data.num_examples = 4
  other.pixel_removal.update(step=51, step_fraction=0.0)
  out = pixel_removal.run(other, tmp_path, progress=False)
  assert _trained(tmp_path / "train") == trained  # no retraining
  folder = out["report"].parent
  assert folder.name.startswith("eval_") and folder.parent == tmp_path
  assert len(pd.read_csv(folder / "samples.csv")) == 4
  assert len(pd.read_csv(tmp_path / "samples.csv")) == 8
  # 51-pixel steps on 1024 pixels: 0, 51, ..., 1020 and 1024, 22 points per curve.
  curves = pd.read_csv(folder / "curves.csv")
  assert curves.groupby("order").size().eq(22).all()
