"""The sanity-check experiment end to end on the "tiny" config (seconds, CPU).

Checks the workdir contents, the table shapes, that stage 0 compares each map with itself
(similarity 1), that the experiment's stages equal `xai_jax.metrics.sanity`'s own
cascading randomisation (the reference), that a rerun through the absl main recomputes
only the deleted shards, and that bad configs fail early with a clear message.
"""

import pathlib
import shutil

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from configs import sanity_checks as sanity_config
from experiments import sanity_checks as sanity_checks_main
from xai_jax import explain
from xai_jax import runner
from xai_jax.metrics import sanity
from xai_jax.pipelines import sanity_checks

REPO = pathlib.Path(__file__).resolve().parents[1]
MODES = ("cascading", "independent", "data")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  config = sanity_config.get_config("tiny")
  workdir = tmp_path_factory.mktemp("sanity_tiny")
  loaded = []  # the trained model, for the reference computation below
  real = sanity_checks.load_or_train_model
  sanity_checks.load_or_train_model = lambda *a, **k: loaded.append(real(*a, **k)) or loaded[0]
  try:
    tables = sanity_checks.run(config, workdir, progress=False)
  finally:
    sanity_checks.load_or_train_model = real
  return config, workdir, tables, loaded[0]


@pytest.mark.slow
def test_the_workdir_holds_every_output(finished):
  config, workdir, tables, _ = finished
  assert set(tables) == {*MODES, "summary"}
  expected = ["config.json", "model.json", "report.md", "summary.csv"]
  for mode in MODES:
    expected += [f"similarity_{mode}.csv", f"curves_{mode}.png", f"grid_{mode}_0.png"]
    expected += [f"explanations/{mode}/{name}.npz" for name in config.methods]
    expected += [f"shards/similarity_{mode}/shard_{i:05d}.csv"
                 for i in range(len(config.methods))]
  missing = [name for name in expected if not (workdir / name).is_file()]
  assert not missing
  for name in expected:
    if name.endswith(".png"):
      assert (workdir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  report = (workdir / "report.md").read_text()
  for name in config.methods:
    assert f"| {name} |" in report
  for mode in MODES:
    assert f"](curves_{mode}.png)" in report


@pytest.mark.slow
def test_the_tables_have_one_row_per_method_stage_measure_and_image(finished):
  config, workdir, tables, _ = finished
  layers = ("fc2", "fc1", "conv2", "conv1")  # the CNN from the logits down
  stages = {"cascading": ("original", *layers), "independent": ("original", *layers),
            "data": ("true_labels", "random_labels")}
  for mode in MODES:
    table = pd.read_csv(workdir / f"similarity_{mode}.csv")
    pd.testing.assert_frame_equal(table, tables[mode], check_dtype=False)
    assert list(table.columns) == ["method", "mode", "stage_index", "stage", "image",
                                   "measure", "value"]
    size = len(config.methods) * len(stages[mode]) * len(config.measures) * 4
    assert len(table) == size
    assert not table.duplicated(["method", "stage_index", "image", "measure"]).any()
    assert list(table.method.unique()) == list(config.methods)
    assert tuple(table.drop_duplicates("stage_index").stage) == stages[mode]
    assert set(table.measure) == set(config.measures)
    assert set(table.image) == {0, 1, 2, 3}
  summary = pd.read_csv(workdir / "summary.csv")
  cascading = pd.read_csv(workdir / "similarity_cascading.csv")
  mean = cascading[(cascading.method == "gradient") & (cascading.stage == "fc1")
                   & (cascading.measure == "ssim")].value.mean()
  row = summary[(summary["mode"] == "cascading") & (summary.method == "gradient")
                & (summary.stage == "fc1") & (summary.measure == "ssim")]
  np.testing.assert_allclose(row["mean"].item(), mean, rtol=1e-6)


@pytest.mark.slow
def test_the_unrandomised_stage_is_identical_to_itself(finished):
  _, _, tables, _ = finished
  for mode in MODES:
    table = tables[mode]
    first = table[table.stage_index == 0].value.to_numpy()
    np.testing.assert_allclose(first, 1.0, atol=1e-9)
    # ... and randomisation changes the gradient (the paper's passing method).
    later = table[(table.stage_index > 0) & (table.method == "gradient")]
    assert later.value.mean() < 0.9


@pytest.mark.slow
def test_stages_equal_the_sanity_modules_cascading_randomisation(finished):
  config, workdir, tables, (model, variables, _) = finished
  x = jnp.asarray(sanity_checks.explain_images(config))
  target = explain.predicted_class(model, variables, x)
  reference = sanity.cascading_randomization(
      explain.gradient, model, variables, x, target,
      key=jax.random.fold_in(jax.random.key(config.seed), 4))
  with np.load(workdir / "explanations" / "cascading" / "gradient.npz") as stored:
    assert tuple(stored["stages"]) == reference.stages
    np.testing.assert_allclose(stored["explanations"], reference.explanations[:, :1],
                               rtol=1e-5, atol=1e-6)
  expected = sanity.similarity_table(reference, measures=config.measures)
  got = tables["cascading"][tables["cascading"].method == "gradient"]
  np.testing.assert_allclose(got.value.to_numpy(), expected.value.to_numpy(), atol=1e-5)


@pytest.mark.slow
def test_a_rerun_through_main_recomputes_only_missing_shards(finished, tmp_path, monkeypatch):
  _, original, _, _ = finished
  workdir = tmp_path / "rerun"
  shutil.copytree(original, workdir)
  shards = sorted((workdir / "shards").rglob("*.csv"))
  before = {path: path.stat().st_mtime_ns for path in shards}
  tables_before = {m: (workdir / f"similarity_{m}.csv").read_bytes() for m in MODES}
  removed_csv = workdir / "shards" / "similarity_cascading" / "shard_00001.csv"
  removed_csv.unlink()
  (workdir / "explanations" / "data" / "guided_backprop.npz").unlink()

  calls = []
  real = sanity_checks.explain_stages

  def counting(compiled, model, stage_list, *args, stage_names, **kwargs):
    calls.append(stage_names)
    return real(compiled, model, stage_list, *args, stage_names=stage_names, **kwargs)

  monkeypatch.setattr(sanity_checks, "explain_stages", counting)
  argv = ["sanity_checks", f"--config={REPO / 'configs' / 'sanity_checks.py'}:tiny",
          f"--workdir={workdir}"]
  defined = sanity_checks_main.define_flags()
  try:
    flags.FLAGS(argv)
    sanity_checks_main.main(argv[:1])
  finally:
    flags.FLAGS.unparse_flags()
    for name in defined:  # leave the global flags as found
      delattr(flags.FLAGS, name)

  # Cascading shard 1 lost its CSV; data shard 2 lost its maps (so its CSV is redone too).
  assert [names[0] for names in calls] == ["original", "true_labels"]
  recomputed = {removed_csv, workdir / "shards" / "similarity_data" / "shard_00002.csv"}
  for path, mtime in before.items():
    if path not in recomputed:
      assert path.stat().st_mtime_ns == mtime, path
  assert all(path.exists() for path in recomputed)
  assert (workdir / "explanations" / "data" / "guided_backprop.npz").exists()
  for mode in MODES:  # deterministic: the recomputed rows are the same bytes
    assert (workdir / f"similarity_{mode}.csv").read_bytes() == tables_before[mode]


@pytest.mark.parametrize("override, message", [
    (lambda c: c.update(methods=("gradient", "gradient_abs", "guided_backprop", "saliency")),
     "unknown explanation method"),
    (lambda c: c.update(measures=("spearman_abs", "hog")), "at least 48x48"),
    (lambda c: c.update(measures=("pearson",)), "unknown or no similarity measures"),
    (lambda c: c.randomization.update(modes=("reverse",)), "unknown randomization.modes"),
    (lambda c: c.randomization.update(init="uniform"), "unknown randomization.init"),
    (lambda c: c.model.update(name="inception_v9"), "unknown model.name"),
    (lambda c: c.model.update(checkpoint="/nonexistent/vgg16"), "holds no model.json"),
    (lambda c: c.data.update(num_explain=0), "data.num_explain must be >= 1"),
    (lambda c: c.update(methods=()), "config.methods is empty"),
    (lambda c: c.data.update(normalize="zscore"), "unknown data.normalize"),
    (lambda c: c.update(methods=("gradient", "gradient")), "duplicates"),
])
def test_a_bad_config_fails_before_any_work(tmp_path, override, message):
  config = sanity_config.get_config("tiny")
  with config.unlocked():
    override(config)
  with pytest.raises(ValueError, match=message):
    sanity_checks.run(config, tmp_path)
  assert not (tmp_path / "config.json").exists()


def test_configs_are_locked_and_variants_checked():
  config = sanity_config.get_config("quick")
  with pytest.raises(AttributeError):
    config.trian = None  # a misspelt override
  with pytest.raises(ValueError, match="valid: quick, tiny, paper"):
    sanity_config.get_config("huge")
  assert "hog" in config.measures and config.data.size >= 48
  paper = sanity_config.get_config("paper")
  assert paper.model.name == "vgg16" and paper.data.size == 224
  assert set(paper.randomization.modes) == {"cascading", "independent"}
  with pytest.raises(ValueError, match="data.image_folder"):  # the paper needs its images
    sanity_checks.check_config(paper)


@pytest.mark.slow
def test_a_workdir_with_another_config_is_refused(finished, tmp_path):
  config, original, _, _ = finished
  shutil.copy(original / "config.json", tmp_path / "config.json")
  other = sanity_config.get_config("tiny")
  with other.unlocked():
    other.seed = 1
  with pytest.raises(ValueError, match="another config"):
    sanity_checks.run(other, tmp_path)


def test_noise_keys_are_per_method_and_independent_of_the_method_order():
  config = sanity_config.get_config("tiny")
  config.methods = ("smoothgrad", "gradient", "random")
  forward = sanity_checks.explainers(config)
  config.methods = ("random", "smoothgrad", "gradient")
  backward = sanity_checks.explainers(config)
  key_data = lambda fn: np.asarray(jax.random.key_data(fn.keywords["key"]))  # noqa: E731
  for name in ("smoothgrad", "random"):
    np.testing.assert_array_equal(key_data(forward[name]), key_data(backward[name]))
  assert not np.array_equal(key_data(forward["smoothgrad"]), key_data(forward["random"]))
  assert "key" not in forward["gradient"].keywords
  # the runner derives its per-shard keys from the same per-method key
  np.testing.assert_array_equal(
      key_data(forward["random"]),
      np.asarray(jax.random.key_data(
          runner.method_key(jax.random.key(config.seed), "random"))))
