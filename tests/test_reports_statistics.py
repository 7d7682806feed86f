"""DeepMaps' appendix-C statistics (`xai_jax.reports.statistics`) against the reference libraries.

A synthetic samples table (2 models, 4 methods including "random", 24 images, one metric of
each direction, with ties) is checked against independent computations:

* Wilcoxon p-values: `scipy.stats.wilcoxon` called directly on each pair of columns;
* Krippendorff's alpha: the draws replayed with the same NumPy generator in a slow loop,
  ranks from `scipy.stats.rankdata` and alpha from `krippendorff.alpha` itself, at the
  interval (DeepMaps) and ordinal levels;
* Spearman: `scipy.stats.spearmanr` on each pair of metrics, oriented so larger is better;
* the figures are PNG files listed in the report.
"""

import warnings

import jax
import krippendorff
import numpy as np
import pandas as pd
import pytest
import scipy.stats

from xai_jax import reports
from xai_jax.metrics import registry
from xai_jax.metrics import stats
from xai_jax.reports import statistics

MODELS = ("base", "branch")
METHODS = ("random", "gradient", "gradcam", "deepmaps")
METRICS = ("aopc", "n_morf", "delta_n_lerf")  # higher, lower, higher is better
N_IMAGES = 24


@pytest.fixture(scope="module")
def samples() -> pd.DataFrame:
  rng = np.random.default_rng(0)
  rows = []
  for m, model in enumerate(MODELS):
    for k, method in enumerate(METHODS):
      for index in range(N_IMAGES):
        # A shared method effect plus per-image noise; n_morf on a coarse grid (ties).
        rows.append({"model": model, "method": method, "index": index,
                     "aopc": 0.3 * k + rng.normal(), "n_morf": np.round(
                         0.5 - 0.05 * k * (m + 1) + 0.1 * rng.normal(), 1),
                     "delta_n_lerf": rng.normal()})
  return pd.DataFrame(rows)


def _scores(samples, model, metric, methods):
  part = samples[samples["model"] == model]
  return part.pivot(index="index", columns="method", values=metric)[list(methods)].to_numpy()


def test_wilcoxon_table_is_scipy_on_every_pair(samples):
  table = reports.wilcoxon_table(samples, metrics=METRICS)
  assert list(table.columns) == statistics.WILCOXON_COLUMNS
  assert len(table) == len(MODELS) * len(METRICS) * len(METHODS) * (len(METHODS) - 1)
  for row in table.itertuples():
    values = _scores(samples, row.model, row.metric, METHODS)
    a, b = METHODS.index(row.method), METHODS.index(row.opponent)
    expected = scipy.stats.wilcoxon(values[:, a], values[:, b]).pvalue
    assert row.p_value == pytest.approx(expected, rel=1e-12), row
    assert row.images == N_IMAGES


def _replayed_alpha(values, *, seed, images, draws, level, higher):
  """Alpha per draw, slowly: the draws of `np.random.default_rng(seed)` replayed one by one,
  each image's ranks by `scipy.stats.rankdata`, alpha by `krippendorff.alpha`."""
  rng = np.random.default_rng(seed)
  alphas = []
  for _ in range(draws):
    chosen = rng.choice(len(values), size=images, replace=False)
    ranks = np.stack([scipy.stats.rankdata(-values[i] if higher else values[i])
                      for i in chosen])
    alphas.append(krippendorff.alpha(reliability_data=ranks, level_of_measurement=level))
  return np.array(alphas)


@pytest.mark.parametrize("level", statistics.ALPHA_LEVELS)
def test_alpha_table_replays_the_draws_with_krippendorff(samples, level):
  table = reports.alpha_table(samples, metrics=METRICS, key=11, images=10, draws=6,
                              level=level)
  assert list(table.columns) == statistics.ALPHA_COLUMNS
  # Per model and metric: all methods ("Full") and without random ("No Random").
  assert len(table) == len(MODELS) * len(METRICS) * 2
  for row in table.itertuples():
    methods = METHODS if row.methods == "all" else METHODS[1:]
    values = _scores(samples, row.model, row.metric, methods)
    alphas = _replayed_alpha(values, seed=11, images=10, draws=6, level=level,
                             higher=registry.score_direction(row.metric))
    assert (row.level, row.images, row.draws, row.available) == (level, 10, 6, N_IMAGES)
    assert row.alpha == pytest.approx(alphas.mean(), rel=1e-10)
    assert row.std == pytest.approx(alphas.std(ddof=1), rel=1e-10)
    low, high = np.quantile(alphas, [0.025, 0.975])
    assert (row.low, row.high) == pytest.approx((low, high), rel=1e-10)
  # The levels weigh disagreements differently: not the same numbers.
  other = reports.alpha_table(samples, metrics=METRICS, key=11, images=10, draws=6,
                              level=({*statistics.ALPHA_LEVELS} - {level}).pop())
  assert not np.allclose(table["alpha"], other["alpha"])


def test_alpha_table_uses_every_image_once_when_there_are_not_enough(samples):
  for images in (0, N_IMAGES, 500):
    table = reports.alpha_table(samples, metrics=("n_morf",), key=jax.random.key(3),
                                images=images, draws=50, level="interval")
    for row in table.itertuples():
      methods = METHODS if row.methods == "all" else METHODS[1:]
      ranks = scipy.stats.rankdata(_scores(samples, row.model, "n_morf", methods), axis=1)
      expected = krippendorff.alpha(reliability_data=ranks, level_of_measurement="interval")
      assert (row.images, row.draws, row.std) == (N_IMAGES, 1, 0.0)
      assert row.alpha == pytest.approx(expected, rel=1e-10)
      assert row.low == row.high == row.alpha


def test_alpha_table_same_key_same_draws_and_undefined_is_nan(samples):
  key = jax.random.fold_in(jax.random.key(0), 2000)
  first = reports.alpha_table(samples, metrics=METRICS, key=key, images=8, draws=4,
                              level="ordinal")
  again = reports.alpha_table(samples, metrics=METRICS, key=key, images=8, draws=4,
                              level="ordinal")
  pd.testing.assert_frame_equal(first, again)
  # The JAX key seeds NumPy with its key data (`stats.krippendorff_alpha_rankings`).
  seed = np.asarray(jax.random.key_data(key)).ravel().tolist()
  row = first.iloc[0]
  values = _scores(samples, row.model, row.metric, METHODS)
  alphas = _replayed_alpha(values, seed=seed, images=8, draws=4, level="ordinal",
                           higher=registry.score_direction(row.metric))
  assert row.alpha == pytest.approx(alphas.mean(), rel=1e-10)
  # A metric tying every method on every image ranks nothing: alpha is undefined (NaN).
  tied = samples.assign(aopc=1.0)
  table = reports.alpha_table(tied, metrics=("aopc",), key=0, images=8, draws=4,
                              level="interval")
  assert table["alpha"].isna().all() and table["std"].isna().all()


def test_spearman_table_is_scipy_with_larger_is_better(samples):
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # no metric is constant here
    table = reports.spearman_table(samples, metrics=METRICS)
  assert list(table.columns) == statistics.SPEARMAN_COLUMNS
  assert len(table) == len(MODELS) * len(METHODS) * len(METRICS) ** 2
  signs = {m: 1.0 if registry.score_direction(m) else -1.0 for m in METRICS}
  assert signs["n_morf"] == -1.0  # DeepMaps negates n_MoRF (smaller is better)
  for row in table.itertuples():
    part = samples[(samples["model"] == row.model) & (samples["method"] == row.method)]
    expected = scipy.stats.spearmanr(signs[row.metric] * part[row.metric],
                                     signs[row.versus] * part[row.versus]).statistic
    assert row.rho == pytest.approx(expected, rel=1e-10, abs=1e-12), row
    assert row.images == N_IMAGES


def test_method_statistics_writes_tables_figures_and_report(samples, tmp_path):
  one = samples[samples["model"] == "base"]
  result = reports.method_statistics(one, tmp_path / "stats", metrics=METRICS, key=5,
                                     alpha_images=12, alpha_draws=3, alpha_level="interval")
  for name, file_name in statistics.FILES.items():
    written = pd.read_csv(tmp_path / "stats" / file_name)
    pd.testing.assert_frame_equal(written, getattr(result, name), check_dtype=False)
  figures = reports.statistics_figures(result, tmp_path / "figures", metrics=METRICS[:2])
  assert sorted(p.name for p in figures.values()) == ["alpha.png", "spearman.png",
                                                      "wilcoxon.png"]
  captions = " ".join(figures)
  for figure in ("Fig. 9", "Fig. 10", "Fig. 11", "interval level"):
    assert figure in captions
  summary = reports.summary_table(one, metrics=list(METRICS))
  report = reports.write_report(tmp_path, title="t", summary=summary, accuracy=None,
                                figures=figures).read_text()
  for path in figures.values():
    assert path.read_bytes().startswith(b"\x89PNG")
    assert f"figures/{path.name}" in report
  # Several models need a choice.
  several = reports.method_statistics(samples, tmp_path / "both", metrics=METRICS, key=5,
                                      alpha_images=0, alpha_draws=1, alpha_level="ordinal")
  with pytest.raises(ValueError, match=r"several models \['base', 'branch'\]: pass model="):
    reports.alpha_figure(several.alpha, tmp_path / "a.png")
  assert reports.alpha_figure(several.alpha, tmp_path / "a.png", model="branch").is_file()


@pytest.mark.parametrize("options, message", [
    (dict(alpha_images=1), r"alpha_images must be an int >= 2 \(images per draw\), or 0"),
    (dict(alpha_images=-5), r"alpha_images must be"),
    (dict(alpha_images=2.5), r"alpha_images must be"),
    (dict(alpha_images=True), r"alpha_images must be"),
    (dict(alpha_draws=0), r"alpha_draws must be a positive int; got 0"),
    (dict(alpha_level="nominal"), r"alpha_level must be one of interval, ordinal; got 'nominal'"),
])
def test_bad_alpha_options_are_refused(options, message):
  arguments = dict(alpha_images=500, alpha_draws=50, alpha_level="interval") | options
  with pytest.raises(ValueError, match=message):
    reports.check_alpha_options(**arguments)


def test_spearman_matrix_against_scipy_and_constant_columns():
  rng = np.random.default_rng(4)
  values = np.round(rng.normal(size=(15, 4)), 1)  # ties
  values[3, 2] = np.inf  # ranks as the largest value
  rho = stats.spearman_matrix(values)
  for a in range(4):
    for b in range(4):
      expected = scipy.stats.spearmanr(values[:, a], values[:, b]).statistic
      assert rho[a, b] == pytest.approx(expected, rel=1e-12), (a, b)
  values[:, 1] = 2.0
  with pytest.warns(scipy.stats.ConstantInputWarning, match=r"constant columns \['n_lerf'\]"):
    rho = stats.spearman_matrix(values, names=["a", "n_lerf", "c", "d"])
  assert np.isnan(rho[1]).all() and np.isnan(rho[:, 1]).all()
  assert rho[0, 2] == pytest.approx(scipy.stats.spearmanr(values[:, 0], values[:, 2]).statistic)
  with pytest.raises(ValueError, match="NaN"):
    stats.spearman_matrix(np.array([[1.0, np.nan], [2.0, 3.0]]))
  with pytest.raises(ValueError, match="n_rows >= 2"):
    stats.spearman_matrix(np.ones((1, 3)))
