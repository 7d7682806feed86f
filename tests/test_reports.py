"""Figures, tables and report of an evaluation (`xai_jax.reports`: `tables`, `plots`,
`gallery`, `writer`).

Synthetic tables in the schema of `runner.evaluate` (2 models, 3 methods, 20 images)
are built by hand; every figure is checked for a valid PNG and, through a spy on
`plots.save_figure` (which the galleries use too), for the content it draws (panel
count, plotted values, AUCs, win rates) against independent numpy loops.
"""

import json
import math
import pathlib
import re

import numpy as np
import pandas as pd
import pytest
from matplotlib import image as mpimg

from xai_jax.data import cells
from xai_jax import reports
from xai_jax.reports import plots

MODELS = ("base", "branch")
METHODS = ("gradient", "integrated_gradients", "gradcam")
N_IMAGES = 20
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------
# Fixtures.


@pytest.fixture(scope="module")
def samples() -> pd.DataFrame:
  rng = np.random.default_rng(0)
  rows = []
  for m, model in enumerate(MODELS):
    for k, method in enumerate(METHODS):
      for index in range(N_IMAGES):
        row = {"model": model, "method": method, "shard": index // 8, "position": index % 8,
               "index": index, "label": index % 10, "background": -1,
               "predicted": (index + (index == 3)) % 10, "confidence": 0.9,
               "correct": int(index != 3)}
        for column in ("Amu", "Rmu", "Pmu", "Rmu_clamp", "Pmu_clamp", "iou"):
          row[column] = float(rng.uniform(0.1 * k, 0.5 + 0.1 * k + 0.1 * m))
        row["Au1"] = int(rng.integers(0, 56))
        # Rounded to one decimal: many ties, which count one half in the win rates.
        row["aopc"] = round(float(rng.normal(k, 1.0)), 1)
        row["n_morf"] = round(float(rng.uniform(0, 1)), 1)
        rows.append(row)
  frame = pd.DataFrame(rows)
  frame.loc[5, "iou"] = np.nan  # NaNs are skipped by the means and the win rates.
  return frame


@pytest.fixture(scope="module")
def roc() -> pd.DataFrame:
  rng = np.random.default_rng(1)
  rows = []
  for model in MODELS:
    for method in METHODS:
      for setting in ("soft", "clamped"):
        fpr = np.sort(rng.uniform(0, 1, 8))[::-1]
        recall = np.sort(rng.uniform(0, 1, 8))[::-1]
        for threshold in rng.permutation(8):  # stored out of order on purpose
          rows.append({"model": model, "method": method, "setting": setting,
                       "threshold": int(threshold), "recall": recall[threshold],
                       "fpr": fpr[threshold]})
  return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def curves() -> pd.DataFrame:
  rows = []
  fractions = np.linspace(0, 0.5, 11)
  for m, model in enumerate(MODELS):
    for k, method in enumerate(METHODS):
      for order, sign in (("morf", -1.0), ("lerf", -0.2)):
        for fraction in fractions[::-1]:
          score = 5.0 + sign * (k + 1 + m) * fraction
          rows.append({"model": model, "method": method, "order": order, "fraction": fraction,
                       "score": score, "drop": 5.0 - score, "flip_rate": fraction * (k + 1) / 3})
  return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def accuracy() -> pd.DataFrame:
  return pd.DataFrame({"model": ["base", "branch", "base"], "split": ["test", "test", "train"],
                       "accuracy": [0.91, 0.875, 0.99], "num_examples": [500, 500, 4000]})


def _gallery(count: int = 10, *, size: int = 16, labels=None, heatmaps: bool = True) -> dict:
  rng = np.random.default_rng(2)
  labels = np.arange(count) % 10 if labels is None else np.asarray(labels)
  heatmap = rng.choice(np.array(cells.HEATMAP_VALUES, np.float32), size=(count, size, size))
  gallery = {
      "images": rng.uniform(0, 1, (count, size, size, 3)).astype(np.float32),
      "heatmaps": heatmap if heatmaps else np.zeros((count, size, size), np.float32),
      "labels": labels.astype(np.int32),
      "predicted": np.where(np.arange(count) == 2, (labels + 1) % 10, labels).astype(np.int32),
  }
  for k, method in enumerate(METHODS):
    gallery[f"map/{method}"] = (rng.normal(size=(count, size, size)) * (k + 1)).astype(np.float32)
  return gallery


@pytest.fixture
def spy(monkeypatch):
  """Records every figure saved by `plots.save_figure` (inspected before it is written and
  cleared)."""
  seen = []
  original = plots.save_figure

  def recording_save(fig, path, **kwargs):
    seen.append(_describe(fig))
    return original(fig, path, **kwargs)

  monkeypatch.setattr(plots, "save_figure", recording_save)
  return seen


def _describe(fig) -> dict:
  axes = [a for a in fig.axes if a.get_label() != "<colorbar>"]
  return {
      "axes": [{
          "title": a.get_title(),
          "ylabel": a.get_ylabel(),
          "ylabel_colour": a.yaxis.label.get_color(),
          "visible": a.axison,
          "images": [(np.asarray(i.get_array()).copy(), i.get_clim()) for i in a.images],
          "lines": [(l.get_xdata().astype(float), l.get_ydata().astype(float), l.get_label())
                    for l in a.lines],
          "containers": [c.lines[0].get_xydata().copy() for c in a.containers
                         if hasattr(c, "has_xerr")],
          "offsets": [np.asarray(c.get_offsets()).copy() for c in a.collections
                      if len(np.asarray(c.get_offsets()))],
          "legend": [t.get_text() for t in a.get_legend().get_texts()] if a.get_legend() else [],
          "texts": [t.get_text() for t in a.texts],
      } for a in axes],
      "size": tuple(fig.get_size_inches()),
  }


def _assert_png(path, *, min_bytes: int = 4000):
  path = pathlib.Path(path)
  data = path.read_bytes()
  assert data[:8] == PNG_MAGIC
  assert len(data) > min_bytes
  pixels = mpimg.imread(path)
  assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
  assert np.std(pixels[..., :3]) > 0.02  # something was drawn
  return pixels


# ----------------------------------------------------------------------------
# Galleries.


def test_method_class_gallery_rows_per_class_columns_per_method(tmp_path, spy):
  # 12 samples, classes 0 and 1 twice: still one row per class.
  gallery = _gallery(12)
  path = reports.method_class_gallery(gallery, tmp_path / "sub" / "classes.png",
                                      class_names=cells.CLASS_NAMES)
  assert path == tmp_path / "sub" / "classes.png"
  _assert_png(path)
  axes = spy[-1]["axes"]
  assert len(axes) == 10 * (2 + len(METHODS))
  grid = [axes[r * 5:(r + 1) * 5] for r in range(10)]
  assert [a["title"] for a in grid[0]] == ["image", "ground truth", "gradient",
                                           "integrated gradients", "gradcam"]
  for label, row in enumerate(grid):
    name = cells.CLASS_NAMES[label]
    predicted = cells.CLASS_NAMES[(label + 1) % 10] if label == 2 else name
    assert row[0]["ylabel"] == f"{name}\npred {predicted}"
    assert (row[0]["ylabel_colour"] == "tab:red") == (label == 2)
    np.testing.assert_array_equal(row[1]["images"][0][0], gallery["heatmaps"][label])
    for column, method in enumerate(METHODS, start=2):
      shown, clim = row[column]["images"][0]
      values = gallery[f"map/{method}"][label]
      np.testing.assert_array_equal(shown, values)
      span = np.abs(values).max()
      np.testing.assert_allclose(clim, (-span, span), rtol=1e-6)


def test_method_class_gallery_options_and_errors(tmp_path, spy):
  # No non-zero heatmap: no ground-truth column; labels outside 0..9 are written as numbers.
  gallery = _gallery(3, labels=[12, 10, 11], heatmaps=False)
  reports.method_class_gallery(gallery, tmp_path / "g.png", methods=["gradcam", "gradient"],
                               title="custom")
  axes = spy[-1]["axes"]
  assert len(axes) == 3 * 3
  assert [a["title"] for a in axes[:3]] == ["image", "gradcam", "gradient"]
  assert [a["ylabel"].split("\n")[0] for a in axes[::3]] == ["10", "11", "12"]
  # Without class names the labels 0..9 are numbers too (the report knows no data set);
  # with names, a label beyond them stays a number.
  numbered = _gallery(3, labels=[0, 1, 2], heatmaps=False)
  reports.method_class_gallery(numbered, tmp_path / "n.png", methods=["gradient"])
  assert [a["ylabel"] for a in spy[-1]["axes"][::2]] == ["0\npred 0", "1\npred 1", "2\npred 3"]
  reports.method_class_gallery(numbered, tmp_path / "n.png", methods=["gradient"],
                               class_names=("zero", "one"))
  assert [a["ylabel"].split("\n")[0] for a in spy[-1]["axes"][::2]] == ["zero", "one", "2"]
  with pytest.raises(ValueError, match="class_names must be a sequence"):
    reports.method_class_gallery(numbered, tmp_path / "x.png", class_names="abc")
  with pytest.raises(ValueError, match="unknown methods.*gradient"):
    reports.method_class_gallery(gallery, tmp_path / "x.png", methods=["lime"])
  with pytest.raises(ValueError, match="no 'images'"):
    reports.method_class_gallery({"map/a": np.zeros((1, 4, 4))}, tmp_path / "x.png")
  bad = dict(gallery, **{"map/gradient": np.zeros((3, 5, 5), np.float32)})
  with pytest.raises(ValueError, match="map/gradient.*shape"):
    reports.method_class_gallery(bad, tmp_path / "x.png")
  nan = dict(gallery, **{"map/gradient": np.full((3, 16, 16), np.nan, np.float32)})
  with pytest.raises(ValueError, match="NaN"):
    reports.method_class_gallery(nan, tmp_path / "x.png")
  assert not (tmp_path / "x.png").exists()


def test_method_gallery_shows_every_sample(tmp_path, spy):
  gallery = _gallery(12)
  path = reports.method_gallery(gallery, "map/integrated_gradients", tmp_path / "ig.png",
                                columns=5)
  _assert_png(path)
  axes = spy[-1]["axes"]
  assert len(axes) == 3 * 3 * 5  # 3 blocks of (image, truth, map) rows, 5 columns
  shown = 0
  for sample in range(12):
    block, column = divmod(sample, 5)
    map_axis = axes[(block * 3 + 2) * 5 + column]
    np.testing.assert_array_equal(map_axis["images"][0][0],
                                  gallery["map/integrated_gradients"][sample])
    shown += 1
  assert shown == 12
  assert sum(a["visible"] for a in axes) == 12 * 3  # the 3 unused slots are hidden
  with pytest.raises(ValueError, match="unknown method 'lime'.*gradcam"):
    reports.method_gallery(gallery, "lime", tmp_path / "x.png")


# ----------------------------------------------------------------------------
# Ground-truth figures.


@pytest.mark.parametrize("setting,suffix", [("soft", ""), ("clamped", "_clamp")])
def test_precision_recall_scatter_marks_the_means(tmp_path, spy, samples, setting, suffix):
  path = reports.precision_recall_scatter(samples, tmp_path / f"pr_{setting}.png",
                                          model="branch", setting=setting)
  _assert_png(path)
  axes = [a for a in spy[-1]["axes"] if a["visible"]]
  assert [a["title"] for a in axes] == [m.replace("_", " ") for m in METHODS]
  for axis, method in zip(axes, METHODS):
    rows = samples[(samples.model == "branch") & (samples.method == method)]
    points = np.stack([rows[f"Rmu{suffix}"], rows[f"Pmu{suffix}"]], axis=1)
    np.testing.assert_allclose(axis["offsets"][0], points)
    np.testing.assert_allclose(axis["containers"][0], [points.mean(axis=0)])


def test_precision_recall_scatter_all_models_and_errors(tmp_path, spy, samples):
  reports.precision_recall_scatter(samples, tmp_path / "pr.png")
  first = spy[-1]["axes"][0]
  assert len(first["containers"]) == len(MODELS)  # one mean per model
  for model, mean in zip(MODELS, first["containers"]):
    rows = samples[(samples.model == model) & (samples.method == METHODS[0])]
    np.testing.assert_allclose(mean, [[rows.Rmu.mean(), rows.Pmu.mean()]])
  with pytest.raises(ValueError, match="unknown setting 'hard'"):
    reports.precision_recall_scatter(samples, tmp_path / "x.png", setting="hard")
  with pytest.raises(ValueError, match=r"missing columns \['Rmu_clamp'"):
    reports.precision_recall_scatter(samples.drop(columns="Rmu_clamp"), tmp_path / "x.png",
                                     setting="clamped")
  with pytest.raises(ValueError, match="unknown model 'resnet'.*base"):
    reports.precision_recall_scatter(samples, tmp_path / "x.png", model="resnet")
  with pytest.raises(ValueError, match="empty"):
    reports.precision_recall_scatter(samples.iloc[:0], tmp_path / "x.png")


def _trapezoid_auc(recall, fpr):
  points = sorted(zip(fpr, recall))
  points = [(0.0, 0.0)] + points + [(1.0, 1.0)]
  return sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in zip(points, points[1:]))


def test_roc_figure_lines_and_auc_legend(tmp_path, spy, roc):
  _assert_png(reports.roc_figure(roc, tmp_path / "roc.png", model="base"))
  axes = spy[-1]["axes"]
  assert [a["title"] for a in axes] == ["soft thresholds", "clamped thresholds"]
  for axis, setting in zip(axes, ("soft", "clamped")):
    assert len(axis["legend"]) == len(METHODS)
    for (x, y, _), legend, method in zip(axis["lines"], axis["legend"], METHODS):
      rows = roc[(roc.model == "base") & (roc.method == method) & (roc.setting == setting)]
      rows = rows.sort_values("threshold")
      np.testing.assert_allclose(x, rows.fpr)
      np.testing.assert_allclose(y, rows.recall)
      auc = float(re.fullmatch(rf"{method} \(AUC ([0-9.]+)\)", legend).group(1))
      assert auc == pytest.approx(_trapezoid_auc(rows.recall, rows.fpr), abs=5e-4)


def test_roc_figure_settings_and_errors(tmp_path, spy, roc):
  reports.roc_figure(roc[roc.setting == "clamped"], tmp_path / "roc.png")
  axes = spy[-1]["axes"]
  assert [a["title"] for a in axes] == ["clamped thresholds"]
  assert len(axes[0]["legend"]) == len(MODELS) * len(METHODS)
  assert axes[0]["legend"][0].startswith("base: gradient (AUC ")
  with pytest.raises(ValueError, match=r"unknown setting \['hard'\]"):
    reports.roc_figure(roc.assign(setting="hard"), tmp_path / "x.png")
  with pytest.raises(ValueError, match="missing columns.*fpr"):
    reports.roc_figure(roc.drop(columns="fpr"), tmp_path / "x.png")
  with pytest.raises(ValueError, match="unknown model"):
    reports.roc_figure(roc, tmp_path / "x.png", model="vgg")
  with pytest.raises(ValueError, match="duplicate"):
    reports.roc_figure(pd.concat([roc, roc.iloc[:1]]), tmp_path / "x.png")


# ----------------------------------------------------------------------------
# Pixel removal.


@pytest.mark.parametrize("quantity", ["score", "drop"])
def test_perturbation_curves_figure(tmp_path, spy, curves, quantity):
  _assert_png(reports.perturbation_curves_figure(curves, tmp_path / f"{quantity}.png",
                                                 model="branch", quantity=quantity))
  axes = spy[-1]["axes"]
  assert [a["title"].split()[0] for a in axes] == ["MoRF", "LeRF"]
  for axis, order in zip(axes, ("morf", "lerf")):
    assert axis["legend"] == list(METHODS)
    for (x, y, _), method in zip(axis["lines"], METHODS):
      rows = curves[(curves.model == "branch") & (curves.method == method)
                    & (curves.order == order)].sort_values("fraction")
      np.testing.assert_allclose(x, rows.fraction)
      np.testing.assert_allclose(y, rows[quantity])
  with pytest.raises(ValueError, match="unknown quantity"):
    reports.perturbation_curves_figure(curves, tmp_path / "x.png", quantity="auc")
  with pytest.raises(ValueError, match="unknown order"):
    reports.perturbation_curves_figure(curves.assign(order="sideways"), tmp_path / "x.png")


# ----------------------------------------------------------------------------
# Win rates.


def _loop_win_rates(samples, metric, higher_is_better, model=None):
  """Plain loops: for each pair, the share of complete (model, index) images won, ties 1/2."""
  frame = samples if model is None else samples[samples.model == model]
  values = {}
  for row in frame.itertuples():
    values.setdefault((row.model, row.index), {})[row.method] = getattr(row, metric)
  images = [v for v in values.values()
            if len(v) == len(METHODS) and not any(math.isnan(x) for x in v.values())]
  table = np.zeros((len(METHODS), len(METHODS)))
  for i, a in enumerate(METHODS):
    for j, b in enumerate(METHODS):
      total = 0.0
      for image in images:
        x, y = image[a], image[b]
        if not higher_is_better:
          x, y = -x, -y
        total += 1.0 if x > y else 0.5 if x == y else 0.0
      table[i, j] = total / len(images)
  return table, len(images)


@pytest.mark.parametrize("metric,higher,model", [("aopc", True, None), ("n_morf", False, "base"),
                                                  ("iou", True, None)])
def test_win_rate_table_and_figure_match_a_loop(tmp_path, spy, samples, metric, higher, model):
  expected, images = _loop_win_rates(samples, metric, higher, model)
  table = reports.win_rate_table(samples, metric=metric, higher_is_better=higher, model=model)
  assert list(table.index) == list(METHODS) == list(table.columns)
  np.testing.assert_allclose(table.to_numpy(), expected, atol=1e-12)
  np.testing.assert_allclose(np.diag(table.to_numpy()), 0.5)  # win rates in [0, 1]
  assert table.attrs["images"] == images
  # Without a direction, the registry's (the same as the papers', see test_metric_registry).
  from_registry = reports.win_rate_table(samples, metric=metric, model=model)
  pd.testing.assert_frame_equal(from_registry, table)
  path = reports.win_rate_figure(samples, tmp_path / f"win_{metric}.png", metric=metric,
                                 higher_is_better=higher, model=model)
  _assert_png(path)
  panel = spy[-1]["axes"][0]
  np.testing.assert_allclose(panel["images"][0][0], expected, atol=1e-12)
  assert panel["images"][0][1] == (0.0, 1.0)  # colours centred on an even match, 0.5
  np.testing.assert_allclose([float(t) for t in panel["texts"]], expected.ravel(), atol=0.005)
  assert f"{images} images" in panel["title"]


def test_win_rate_errors(tmp_path, samples):
  with pytest.raises(ValueError, match="duplicate"):
    reports.win_rate_table(pd.concat([samples, samples.iloc[:1]]), metric="aopc",
                           higher_is_better=True)
  with pytest.raises(ValueError, match="at least 2 methods"):
    reports.win_rate_table(samples[samples.method == "gradcam"], metric="aopc",
                           higher_is_better=True)
  with pytest.raises(ValueError, match="missing columns.*'delta_aopc'"):
    reports.win_rate_figure(samples, tmp_path / "x.png", metric="delta_aopc",
                            higher_is_better=True)
  with pytest.raises(ValueError, match="unknown model"):
    reports.win_rate_figure(samples, tmp_path / "x.png", metric="aopc",
                            higher_is_better=True, model="vgg")
  # No direction to rank by: an index column, or a column the registry does not know.
  with pytest.raises(ValueError, match="'Au1' is not a score"):
    reports.win_rate_table(samples, metric="Au1")
  with pytest.raises(ValueError, match="unknown metric 'confidence'"):
    reports.win_rate_table(samples, metric="confidence")
  assert reports.win_rate_table(samples, metric="confidence", higher_is_better=True).shape == (
      3, 3)
  with pytest.raises(ValueError, match="higher_is_better must be"):
    reports.win_rate_table(samples, metric="aopc", higher_is_better="yes")


def test_pairwise_win_rates_match_the_loop_per_model(samples):
  metrics = ["aopc", "n_morf", "iou", "delta_aopc"]  # delta_aopc: not in the table, skipped
  table = reports.pairwise_win_rates(samples, metrics=metrics)
  assert list(table.columns) == ["model", "metric", "method", "opponent", "win_rate", "images"]
  pairs = [(a, b) for a in METHODS for b in METHODS if a != b]
  assert len(table) == len(MODELS) * 3 * len(pairs)
  expected_rows = [(model, metric, a, b) for model in MODELS
                   for metric in ("aopc", "n_morf", "iou") for a, b in pairs]
  assert list(table[["model", "metric", "method", "opponent"]].itertuples(
      index=False, name=None)) == expected_rows
  for (model, metric), group in table.groupby(["model", "metric"], sort=False):
    higher = {"aopc": True, "n_morf": False, "iou": True}[metric]
    expected, images = _loop_win_rates(samples, metric, higher, model)
    for row in group.itertuples(index=False):
      i, j = METHODS.index(row.method), METHODS.index(row.opponent)
      assert row.win_rate == pytest.approx(expected[i, j], abs=1e-12)
      assert row.images == images
  # W[a, b] + W[b, a] = 1.
  wins = table.set_index(["model", "metric", "method", "opponent"])["win_rate"]
  for (model, metric, a, b), value in wins.items():
    assert value + wins[(model, metric, b, a)] == pytest.approx(1.0)
  # The NaN iou (model base, image 5) drops that image from base's iou only.
  assert set(table[(table.metric == "iou") & (table.model == "base")]["images"]) == {N_IMAGES - 1}
  assert set(table[(table.metric == "aopc")]["images"]) == {N_IMAGES}
  one_method = reports.pairwise_win_rates(samples[samples.method == "gradient"],
                                          metrics=metrics)
  assert one_method.empty and list(one_method.columns) == list(table.columns)
  with pytest.raises(ValueError, match="'Au1' is not a score"):
    reports.pairwise_win_rates(samples, metrics=["Au1"])
  with pytest.raises(ValueError, match="duplicate"):
    reports.pairwise_win_rates(pd.concat([samples, samples.iloc[:1]]), metrics=["aopc"])


# ----------------------------------------------------------------------------
# Tables and report.


def test_summary_table_means_equal_masked_means(samples, accuracy):
  summary = reports.summary_table(samples, accuracy=accuracy)
  metrics = ["Amu", "Rmu", "Pmu", "Rmu_clamp", "Pmu_clamp", "iou", "aopc", "n_morf"]
  assert list(summary.columns) == ["model", "method", "n", "accuracy"] + metrics
  assert "Au1" not in summary.columns  # an argmax index, not a score
  assert list(zip(summary.model, summary.method)) == [(m, k) for m in MODELS for k in METHODS]
  test_accuracy = {"base": 0.91, "branch": 0.875}
  for row in summary.itertuples(index=False):
    mask = (samples.model.to_numpy() == row.model) & (samples.method.to_numpy() == row.method)
    assert row.n == mask.sum() == N_IMAGES
    assert row.accuracy == test_accuracy[row.model]
    for metric in metrics:
      assert getattr(row, metric) == pytest.approx(np.nanmean(samples[metric].to_numpy()[mask]))
  chosen = reports.summary_table(samples, metrics=["aopc", "Au1"])
  assert list(chosen.columns) == ["model", "method", "n", "aopc", "Au1"]


def test_summary_table_errors(samples, accuracy):
  with pytest.raises(ValueError, match="empty"):
    reports.summary_table(samples.iloc[:0])
  with pytest.raises(ValueError, match=r"missing columns \['delta_aopc'\]"):
    reports.summary_table(samples, metrics=["aopc", "delta_aopc"])
  with pytest.raises(ValueError, match=r"metric columns \['method'\] are not numeric"):
    reports.summary_table(samples, metrics=["aopc", "method"])
  with pytest.raises(ValueError, match="no metric column"):
    reports.summary_table(samples[["model", "method", "index"]])
  with pytest.raises(ValueError, match="missing columns.*'model'"):
    reports.summary_table(samples.drop(columns="model"))
  with pytest.raises(ValueError, match="no split 'valid'.*test"):
    reports.summary_table(samples, accuracy=accuracy, split="valid")
  with pytest.raises(ValueError, match="several 'test' rows.*base"):
    reports.summary_table(samples, accuracy=pd.concat([accuracy, accuracy.iloc[:1]]))


def _parse_markdown(text):
  lines = text.strip().splitlines()
  split = lambda line: [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
  return split(lines[0]), split(lines[1]), [split(line) for line in lines[2:]]


@pytest.mark.parametrize("floatfmt,tolerance", [(".3f", 5e-4), (".8g", 1e-7)])
def test_to_markdown_round_trips(samples, accuracy, floatfmt, tolerance):
  summary = reports.summary_table(samples, accuracy=accuracy)
  header, alignment, rows = _parse_markdown(reports.to_markdown(summary, floatfmt=floatfmt))
  assert header == list(summary.columns)
  assert alignment[:3] == [":---", ":---", "---:"]
  assert len(rows) == len(summary)
  for parsed, (_, row) in zip(rows, summary.iterrows()):
    assert parsed[:2] == [row.model, row.method]
    assert int(parsed[2]) == row.n
    np.testing.assert_allclose([float(v) for v in parsed[3:]],
                               row.iloc[3:].to_numpy(np.float64), rtol=tolerance, atol=tolerance)


def test_to_markdown_index_nan_and_escaping():
  frame = pd.DataFrame({"name": ["a|b", "c"], "value": [np.nan, 2.5]},
                       index=pd.Index([7, 9], name="key"))
  header, _, rows = _parse_markdown(reports.to_markdown(frame, floatfmt=".2f"))
  assert header == ["key", "name", "value"]
  assert rows == [["7", "a\\|b", "nan"], ["9", "c", "2.50"]]
  with pytest.raises(ValueError, match="floatfmt"):
    reports.to_markdown(frame, floatfmt="%d")
  with pytest.raises(ValueError, match="DataFrame"):
    reports.to_markdown([1, 2])


def test_write_report_links_figures_and_rows(tmp_path, samples, roc, accuracy):
  workdir = tmp_path / "run"
  figures = {
      "ROC": reports.roc_figure(roc, workdir / "figures" / "roc.png", model="base"),
      "Win rates on AOPC": reports.win_rate_figure(
          samples, workdir / "figures" / "win aopc.png", metric="aopc", higher_is_better=True),
  }
  (workdir / "gallery.png").write_bytes(PNG_MAGIC)
  figures["Gallery"] = "gallery.png"  # relative to the workdir
  summary = reports.summary_table(samples, accuracy=accuracy)
  config = {"methods": {"gradient": {}}, "shard_size": 64}
  path = reports.write_report(workdir, title="Cells", summary=summary, accuracy=accuracy,
                              figures=figures, config=config, notes="Quick run.")
  assert path == workdir / "report.md"
  text = path.read_text()
  assert text.startswith("# Cells\n") and "Quick run." in text
  links = re.findall(r"!\[([^\]]*)\]\(<?([^)>]*)>?\)", text)
  assert [caption for caption, _ in links] == list(figures)
  assert [link for _, link in links] == ["figures/roc.png", "figures/win aopc.png", "gallery.png"]
  for _, link in links:
    assert (workdir / link).is_file()
  lines = text.splitlines()
  for row in summary.itertuples(index=False):
    assert any(line.startswith(f"| {row.model} | {row.method} | {row.n} | {row.accuracy:.3f} | ")
               for line in lines)
  for row in accuracy.itertuples(index=False):
    assert f"| {row.model} | {row.split} | {row.accuracy:.3f} | {row.num_examples} |" in lines
  assert re.search(r"^- `Rmu`: .*\*\*higher is better\*\*", text, flags=re.M)
  assert re.search(r"^- `n_morf`: .*\*\*lower is better\*\*", text, flags=re.M)
  assert "- `Au1`" not in text
  block = re.search(r"```json\n(.*?)```", text, flags=re.S).group(1)
  assert json.loads(block) == config
  assert sorted(p.name for p in workdir.iterdir()) == ["figures", "gallery.png", "report.md"]


def test_write_report_errors(tmp_path, samples):
  summary = reports.summary_table(samples)
  with pytest.raises(ValueError, match="missing.png.*does not exist"):
    reports.write_report(tmp_path, title="t", summary=summary, accuracy=None,
                         figures={"x": tmp_path / "missing.png"})
  with pytest.raises(ValueError, match="non-empty summary"):
    reports.write_report(tmp_path, title="t", summary=summary.iloc[:0], accuracy=None,
                         figures={})
  assert not (tmp_path / "report.md").exists()
  path = reports.write_report(tmp_path, title="t", summary=summary, accuracy=None, figures={})
  assert "Accuracy" not in path.read_text() and "Figures" not in path.read_text()


# ----------------------------------------------------------------------------
# The package's public API.


# Public in their modules so that `plots` and `gallery` share them, but not for users.
SHARED_HELPERS = {"check_frame", "select_model", "unique_in_order", "metric_direction",
                  "save_figure", "complete_scores", "panel_grid"}


def test_reports_reexports_every_public_function_of_its_modules():
  defined = {}
  for module in (reports.gallery, reports.plots, reports.sanity, reports.statistics,
                 reports.tables, reports.training, reports.writer):
    for name, value in vars(module).items():
      if (callable(value) and getattr(value, "__module__", None) == module.__name__
          and not name.startswith("_") and not isinstance(value, type)):
        defined[name] = value
  public = {name: value for name, value in defined.items() if name not in SHARED_HELPERS}
  assert SHARED_HELPERS <= set(defined)
  assert sorted(reports.__all__) == sorted(public)
  for name, value in public.items():
    assert getattr(reports, name) is value
