"""The cells experiment end to end on the tiny config: outputs, consistency, resuming."""

import json
import pathlib

import jax
import numpy as np
import pandas as pd
import pytest

from configs import cells as cells_configs
from xai_jax import train
from xai_jax.data import cell_source
from xai_jax.pipelines import cells as experiment
from xai_jax.metrics import stats


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("cells")
  config = cells_configs.get_config("tiny")
  return workdir, config, experiment.run(config, workdir, progress=False)


@pytest.mark.slow
def test_every_output_is_written(finished):
  workdir, _, outputs = finished
  for name in ("config.json", "accuracy.csv", "samples.csv", "roc.csv", "curves.csv",
               "summary.csv", "summary.md", "report.md", "stats/win_rates.csv",
               "stats/wilcoxon.csv", "stats/krippendorff_alpha.csv",
               "base/gallery.npz", "branch_0/gallery.npz"):
    assert (workdir / name).is_file(), name
  figures = sorted(p.name for p in (workdir / "figures").glob("*.png"))
  assert figures == ["gallery_base.png", "gallery_branch_0.png", "perturbation_curves.png",
                     "recall_precision.png", "recall_precision_points.png", "roc.png",
                     "win_rates_Amu.png",
                     "win_rates_aopc.png"]
  report = (workdir / "report.md").read_text()
  for figure in figures:
    assert f"figures/{figure}" in report
  assert outputs["report"] == workdir / "report.md"


@pytest.mark.slow
def test_tables_cover_every_sample_model_and_method(finished):
  workdir, config, outputs = finished
  samples = pd.read_csv(workdir / "samples.csv")
  models, methods = list(config.evaluate.models), list(config.methods)
  assert len(samples) == config.data.num_test * len(models) * len(methods)
  assert list(dict.fromkeys(samples["model"])) == models
  assert list(dict.fromkeys(samples["method"])) == methods
  summary = pd.read_csv(workdir / "summary.csv")
  assert len(summary) == len(models) * len(methods)
  means = samples.groupby(["model", "method"], sort=False)["Amu"].mean().to_numpy()
  np.testing.assert_allclose(summary["Amu"], means, rtol=1e-6)
  assert json.loads((workdir / "config.json").read_text())["data"]["size"] == config.data.size


@pytest.mark.slow
def test_removal_fill_is_the_mean_of_the_training_split(finished):
  # The default fill "dataset_mean": the training cells' mean RGB, computed once (not each
  # shard's mean), as the report states.
  workdir, config, _ = finished
  assert config.metric_options.pixel_removal.fill == "dataset_mean"
  train = cell_source.source("train", size=config.data.size, key=jax.random.key(config.seed),
                             num_examples=config.data.num_train)
  mean = np.asarray(train.get_batch(np.arange(len(train)))["image"], np.float64).mean((0, 1, 2))
  values = ", ".join(f"{v:.4f}" for v in mean)
  assert f"Pixel-removal fill: dataset_mean = {values}." in (workdir / "report.md").read_text()


@pytest.mark.slow
def test_accuracy_agrees_with_the_explained_predictions(finished):
  workdir, _, outputs = finished
  samples = pd.read_csv(workdir / "samples.csv")
  accuracy = pd.read_csv(workdir / "accuracy.csv").set_index("model")["accuracy"]
  for model, rows in samples[samples["method"] == "gradient"].groupby("model"):
    # train.evaluate (accuracy.csv) and the runner's argmax (samples.csv) are separate paths.
    assert rows["correct"].mean() == pytest.approx(accuracy[model], abs=1e-9)


@pytest.mark.slow
def test_win_rates_match_a_direct_count(finished):
  workdir, _, _ = finished
  samples = pd.read_csv(workdir / "samples.csv")
  wins = pd.read_csv(workdir / "stats" / "win_rates.csv")
  base = samples[samples["model"] == "base"]
  a = base[base["method"] == "integrated_gradients"].set_index("index")["Amu"]
  b = base[base["method"] == "random"].set_index("index")["Amu"]
  expected = ((a > b).sum() + 0.5 * (a == b).sum()) / len(a)
  row = wins[(wins["model"] == "base") & (wins["metric"] == "Amu")
             & (wins["method"] == "integrated_gradients") & (wins["opponent"] == "random")]
  assert row["win_rate"].item() == pytest.approx(expected)
  assert row["images"].item() == len(a)
  assert list(wins.columns) == ["model", "metric", "method", "opponent", "win_rate", "images"]
  scores = base.pivot(index="index", columns="method", values="Amu").to_numpy()
  assert np.isfinite(stats.win_rate_matrix(scores)).all()


@pytest.mark.slow
def test_rerun_recomputes_nothing(finished):
  workdir, config, _ = finished
  shards = sorted((workdir / "shards").rglob("*.csv"))
  stamps = [p.stat().st_mtime_ns for p in shards]
  before = (workdir / "samples.csv").read_bytes()
  experiment.run(config, workdir, progress=False)
  assert [p.stat().st_mtime_ns for p in shards] == stamps
  assert (workdir / "samples.csv").read_bytes() == before


@pytest.mark.slow
def test_a_workdir_of_another_training_config_is_refused(finished):
  workdir, config, _ = finished
  other = cells_configs.get_config("tiny")
  other.data.num_train = 32
  with pytest.raises(ValueError, match=r"trained models of a different config \(fields "
                                       r"\['data.num_train'\] differ\); they are kept"):
    experiment.run(other, workdir, progress=False)


def test_bad_configs_raise_clear_errors(tmp_path):
  with pytest.raises(ValueError, match="unknown cells config variant 'huge'"):
    cells_configs.get_config("huge")
  config = cells_configs.get_config("tiny")
  config.evaluate.models = ("base", "branch_3")
  with pytest.raises(ValueError, match=r"evaluate.models \['branch_3'\] are not trained"):
    experiment.run(config, tmp_path / "a", progress=False)
  config = cells_configs.get_config("tiny")
  config.dtype = "float16"
  with pytest.raises(ValueError, match="unknown dtype 'float16'"):
    experiment.run(config, tmp_path / "b", progress=False)


@pytest.mark.parametrize("variant", ["paper_alexnet", "paper_vgg", "paper_resnet34"])
def test_paper_configs_follow_the_paper_settings(variant):
  config = cells_configs.get_config(variant)
  paper = train.paper_settings(config.model.name)
  assert config.train.learning_rate == paper["learning_rate"]
  assert config.train.weight_decay == paper["weight_decay"]
  assert config.train.batch_size == paper["batch_size"]
  assert config.train.patience == paper["patience"]
  assert config.train.refresh_fraction == paper["refresh_fraction"]
  assert config.train.target_accuracy == paper["target_accuracy"]
  assert config.train.eval_every == paper["eval_every"]
  assert config.train.base_epochs == paper["epochs_continuous"]
  # Branches train for the regular-mode epochs (ResNet: 4, not the continuous 2; cells.md table).
  assert config.train.branch_epochs == paper["epochs_regular"]
  assert config.train.branch_learning_rate == paper["learning_rate"]
  assert config.train.num_branches == paper["num_branches"]
  assert config.data.num_test == 1600 and config.evaluate.num_examples == 0


@pytest.mark.slow
def test_bfloat16_evaluation_reuses_the_trained_models(finished):
  workdir, config, outputs = finished
  files = sorted(p for p in (workdir / "train").rglob("*") if p.is_file())
  # History files and their checksum records (.history.json.sha256) are rewritten on resume.
  checkpoints = [p for p in files if "history" not in p.name]
  histories = {p: p.read_bytes() for p in files if "history" in p.name}
  stamps = [p.stat().st_mtime_ns for p in checkpoints]
  bf16 = cells_configs.get_config("tiny")
  bf16.dtype = "bfloat16"
  bf16.methods = {"gradient": {}}
  result = experiment.run(bf16, workdir, progress=False)
  assert [p.stat().st_mtime_ns for p in checkpoints] == stamps  # no retraining
  assert {p: p.read_bytes() for p in histories} == histories  # rewritten, unchanged
  samples = pd.read_csv(workdir / "bfloat16" / "samples.csv")
  assert set(samples["method"]) == {"gradient"}
  float32 = outputs["samples"]
  float32 = float32[float32["method"] == "gradient"].reset_index(drop=True)
  assert (samples["index"] == float32["index"]).all()
  # Same weights, coarser arithmetic: the predictions mostly agree, the scores are close.
  assert (samples["predicted"] == float32["predicted"]).mean() >= 0.75
  assert abs(samples["Amu"].mean() - float32["Amu"].mean()) < 0.1
  assert result["report"] == workdir / "bfloat16" / "report.md"
  other = cells_configs.get_config("tiny")
  other.dtype = "bfloat16"  # same folder, other methods: a folder of its own, same models
  folder = experiment.check_workdir(other, workdir)
  assert folder.parent == workdir and folder.name.startswith("eval_")
  assert json.loads((folder / "config.json").read_text())["methods"] == other.methods.to_dict()
  assert experiment.check_workdir(other, workdir) == folder
