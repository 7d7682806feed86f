"""Tjoa & Guan's protocol in the cells command: fine-tuning from ported weights, Table I's
accuracy over the branches and Fig. 3's three panels of (recall, precision) points.

References are independent: variables compared leaf by leaf, means and population standard
deviations recomputed with a plain loop, training with a learning rate of 1e-30 (Adam then
moves nothing measurably, so the trained variables must be the starting ones).
"""

import jax
import numpy as np
import pandas as pd
import pytest
from flax import traverse_util

from configs import cells as cells_config
from xai_jax import models, reports
from xai_jax.models import port
from xai_jax.pipelines import cells


def _flat(variables):
  return traverse_util.flatten_dict({k: dict(v) for k, v in variables.items()
                                     if k in ("params", "batch_stats")})


def test_transplant_takes_every_fitting_variable_and_keeps_the_new_head():
  source_model = models.get("cnn", num_classes=7, widths=(2, 3), hidden=4)
  target_model = models.get("cnn", num_classes=10, widths=(2, 3), hidden=4)
  source = models.init(source_model, jax.random.key(1), (1, 8, 8, 3))
  fresh = models.init(target_model, jax.random.key(2), (1, 8, 8, 3))
  variables, taken, kept = port.transplant(source, fresh)
  flat_source, flat_fresh, flat = _flat(source), _flat(fresh), _flat(variables)
  assert set(flat) == set(flat_fresh)
  for path, value in flat.items():
    name = "/".join(path)
    if np.shape(flat_source.get(path)) == np.shape(flat_fresh[path]):
      np.testing.assert_array_equal(value, flat_source[path], err_msg=name)
      assert name in taken
    else:  # the 10-class layer (7 classes in the source)
      np.testing.assert_array_equal(value, flat_fresh[path], err_msg=name)
      assert name in kept
  assert kept and all(np.shape(flat_source[p]) != np.shape(flat_fresh[p])
                      for p in map(lambda n: tuple(n.split("/")), kept))
  assert len(taken) + len(kept) == len(flat)
  other = models.init(models.get("mlp", num_classes=9, hidden=(5,)), jax.random.key(3),
                      (1, 8, 8, 3))
  with pytest.raises(ValueError, match="no variable of the source weights fits"):
    port.transplant(other, fresh)


def test_model_init_is_checked_before_anything_runs(tmp_path):
  config = cells_config.get_config("tiny")
  config.model.init = str(tmp_path / "nowhere")
  with pytest.raises(ValueError, match=r"model.init: .*nowhere' is not a folder of ported "
                                       r"weights \(experiments.port_weights --arch=small_vgg"):
    cells.validate(config)
  tiny = models.init(models.get("cnn", num_classes=3, widths=(2, 2), hidden=2),
                     jax.random.key(0), (1, 8, 8, 3))
  port.save(str(tmp_path / "cnn"), tiny, arch="cnn", num_classes=3)
  config.model.init = str(tmp_path / "cnn")
  with pytest.raises(ValueError, match="model.init: .* holds 'cnn' weights; model.name is "
                                       "'small_vgg'"):
    cells.validate(config)


@pytest.mark.slow
def test_training_starts_from_the_transplanted_weights(tmp_path, monkeypatch):
  # With a learning rate of 1e-30 (and no weight decay) Adam's steps (at most about the
  # learning rate) move nothing measurably: the base model is the start, the source's
  # features and a fresh 10-class head.
  config = cells_config.get_config("tiny")
  config.train.update(learning_rate=1e-30, schedule="constant", warmup_steps=0,
                      weight_decay=0.0, num_branches=0, base_max_steps=2)
  config.model.init = "ported"
  options = dict(config.model.options)
  source = models.init(models.get(config.model.name, num_classes=4, **options),
                       jax.random.key(5), (1, config.data.size, config.data.size, 3))
  monkeypatch.setattr(port, "load", lambda folder: (None, source) if folder == "ported"
                      else pytest.fail(folder))
  model = models.get(config.model.name, num_classes=10, **options)
  sources = cells._sources(config, tmp_path)  # pylint: disable=protected-access
  trained = cells.train_models(config, tmp_path, sources, model, progress=False)
  # Parameters only: the batch-norm running statistics move in train mode whatever the rate.
  base, flat_source = _flat(trained["base"]), _flat(source)
  base = {p: v for p, v in base.items() if p[0] == "params"}
  same = [p for p in base if np.shape(flat_source[p]) == np.shape(base[p])]
  assert len(same) == len(base) - 2  # all but the head's kernel and bias
  for path in base:
    if path in same:
      np.testing.assert_allclose(base[path], flat_source[path], rtol=1e-6, atol=1e-20,
                                 err_msg=str(path))
    else:
      assert np.shape(base[path])[-1] == 10


def test_mean_branch_accuracy_is_table_one_s_average_over_branches():
  accuracy = pd.DataFrame({"model": ["base", "branch_0", "branch_1", "branch_2"],
                           "split": "test", "accuracy": [0.5, 0.9, 0.96, 0.99],
                           "num_examples": 100})
  assert cells.mean_branch_accuracy(accuracy) == pytest.approx((0.9 + 0.96 + 0.99) / 3)
  assert cells.mean_branch_accuracy(accuracy.iloc[:1]) is None


def test_fig_3_points_are_means_and_population_stds_per_model_and_method(tmp_path):
  rng = np.random.default_rng(0)
  rows = []
  for model in ("branch_0", "branch_1"):
    for method in ("saliency", "deeplift"):
      for index in range(5):
        rows.append({"model": model, "method": method, "index": index,
                     **{c: rng.uniform() for c in ("Rmu", "Pmu", "Ru", "Pu", "Ru_clamp",
                                                   "Pu_clamp")}})
  samples = pd.DataFrame(rows)
  samples.loc[0, "Ru"] = np.nan  # dropped from panel B only
  points = reports.recall_precision_points(samples)
  assert len(points) == 3 * 2 * 2
  for row in points.itertuples():
    recall, precision = {"A": ("Rmu", "Pmu"), "B": ("Ru", "Pu"),
                         "C": ("Ru_clamp", "Pu_clamp")}[row.panel[0]]
    values = [(r[recall], r[precision]) for r in rows
              if r["model"] == row.model and r["method"] == row.method
              and not np.isnan(samples.loc[rows.index(r), recall])]
    r, p = np.array(values).T
    assert row.samples == len(values)
    np.testing.assert_allclose([row.recall, row.precision], [r.mean(), p.mean()])
    n = len(r)
    np.testing.assert_allclose([row.recall_std, row.precision_std],
                               [np.sqrt(((r - r.mean()) ** 2).sum() / n),
                                np.sqrt(((p - p.mean()) ** 2).sum() / n)])
  assert points.loc[points["panel"].str.startswith("B"), "samples"].min() == 4
  # Without the clamped columns panel C is left out.
  assert set(reports.recall_precision_points(samples.drop(columns=["Ru_clamp", "Pu_clamp"]))
             ["panel"].str[0]) == {"A", "B"}
  path = reports.recall_precision_points_figure(samples, tmp_path / "fig3.png")
  assert path.stat().st_size > 10_000
  with pytest.raises(ValueError, match=r"missing columns \['Rmu'"):
    reports.recall_precision_points(samples.drop(columns=["Rmu"]))
