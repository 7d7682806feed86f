"""End-to-end tests of `xai_jax.pipelines.localization` and `xai_jax.pipelines.pixel_removal`.

Two kinds of checks:

* closed forms through the whole experiment (`run`): a linear two-class model, a hand-built
  source and "oracle" saliency methods registered for the test, whose IOU / IOU* and
  AOPC / AFOC / n_MoRF / n_LeRF / win rates are known exactly;
* the "tiny" configs on the synthetic cells with a trained CNN: every output is written, and
  the IOU column equals an independent numpy implementation of Gattas' procedure applied to
  the maps recomputed here (DeepLIFT for localization, the gradient for pixel removal).
"""

import fractions
import itertools
import json
import math
import warnings

import jax
import jax.numpy as jnp
import krippendorff
import numpy as np
import pandas as pd
import pytest
import scipy.stats

from configs import localization as localization_config
from configs import pixel_removal as pixel_removal_config
from xai_jax import explain
from xai_jax import models
from xai_jax import reports
from xai_jax.data import cell_source
from xai_jax.data import sources
from xai_jax.metrics import pixel_removal as metric_removal
from xai_jax.metrics import registry
from xai_jax.pipelines import image_experiment
from xai_jax.pipelines import localization
from xai_jax.pipelines import pixel_removal

SIDE = 4  # 4x4 images: P = 16 pixels


def linear_apply(variables, x):
  """Two logits: f_0 = sum_p w_p x_p (channel 0), f_1 = b."""
  f0 = jnp.sum(x[..., 0] * variables["w"], axis=(1, 2))
  return jnp.stack([f0, jnp.full_like(f0, variables["b"])], axis=-1)


class ArraySource(sources.RandomAccessSource):
  """A source over in-memory arrays."""

  def __init__(self, **arrays):
    self.arrays = arrays

  def __len__(self):
    return len(self.arrays["image"])

  def _get_batch(self, indices):
    return {k: v[indices] for k, v in self.arrays.items()}


def _channel(c):
  return lambda model, variables, x, target, **_: x[..., c]


@pytest.fixture
def oracles(monkeypatch):
  """Test-only methods: maps read from image channels or from the model's weights."""
  monkeypatch.setitem(explain.METHODS, "oracle_map", _channel(1))
  monkeypatch.setitem(explain.METHODS, "oracle_mask", _channel(2))
  monkeypatch.setitem(explain.METHODS, "oracle_weights",
                      lambda model, variables, x, target, **_: jnp.broadcast_to(
                          variables["w"], x.shape[:3]))
  monkeypatch.setitem(explain.METHODS, "oracle_reversed",
                      lambda model, variables, x, target, **_: -jnp.broadcast_to(
                          variables["w"], x.shape[:3]))


def _use(monkeypatch, source, variables):
  # Both pipelines read their data and model through `image_experiment`.
  monkeypatch.setattr(image_experiment, "build_source", lambda config: source)
  monkeypatch.setattr(image_experiment, "build_model",
                      lambda config, workdir, progress=True: (linear_apply, variables, "linear"))


def _unlocked(config):
  config.unlock()
  return config


def test_localization_closed_form(tmp_path, monkeypatch, oracles):
  # Mask: the top half. Designed map (channel 1): A = 1 on row 0, B = 0.5 on row 1 (both inside
  # the mask), C = 0.25 on row 2 (outside), 0 on row 3. Channel 2 is the mask itself.
  mask = np.zeros((SIDE, SIDE), bool)
  mask[:2] = True
  designed = np.zeros((SIDE, SIDE), np.float32)
  designed[0], designed[1], designed[2] = 1.0, 0.5, 0.25
  std = designed.std()
  assert 0.5 * std < 0.25 < 1.0 * std < 0.5  # IOU keeps A, B, C; IOU* keeps A, B
  alphas = np.array([1.0, 0.75, 1.0], np.float32)  # f_0 = 16 alpha vs b = 11.6
  image = np.zeros((3, SIDE, SIDE, 3), np.float32)
  image[..., 0] = alphas[:, None, None]
  image[..., 1] = designed
  image[..., 2] = mask
  source = ArraySource(image=image, label=np.array([0, 1, 0], np.int32),
                       mask=np.repeat(mask[None], 3, 0))
  variables = {"w": jnp.ones((SIDE, SIDE)), "b": jnp.float32(11.6)}
  _use(monkeypatch, source, variables)
  config = _unlocked(localization_config.get_config("tiny"))
  config.methods = {"oracle_map": {}, "oracle_mask": {}}
  config.evaluate.update(shard_size=2, gallery_size=2)
  out = localization.run(config, tmp_path, progress=False)

  samples = out["samples"]
  assert len(samples) == 6
  by = samples.set_index(["method", "index"])
  np.testing.assert_allclose(by.loc["oracle_mask", "iou"], 1.0)
  np.testing.assert_allclose(by.loc["oracle_mask", "iou_star"], 1.0)
  np.testing.assert_allclose(by.loc["oracle_map", "iou"], 8 / 12, rtol=1e-6)
  np.testing.assert_allclose(by.loc["oracle_map", "iou_star"], (4 * 1 + 4 * 0.5) / 8, rtol=1e-6)
  # Confidence = softmax of [16 alpha, 11.6]: image 1 (12 vs 11.6) is the low-confidence one.
  logits = np.stack([16 * alphas, np.full(3, 11.6)], 1)
  expected = np.exp(logits.max(1) - np.logaddexp(logits[:, 0], logits[:, 1]))
  np.testing.assert_allclose(by.loc["oracle_map", "confidence"], expected, rtol=1e-5)
  np.testing.assert_array_equal(by.loc["oracle_map", "correct"], [1, 0, 1])
  table = out["confidence"].set_index(["metric", "method", "group"])
  assert table.loc[("iou", "oracle_map", "high"), "count"] == 2
  assert table.loc[("iou", "oracle_map", "low"), "count"] == 1
  np.testing.assert_allclose(table.loc[("iou_star", "oracle_map", "all"), "mean"], 0.75)
  assert table.loc[("iou", "oracle_mask", "high"), "std"] == 0.0
  wide = localization.confidence_wide(out["confidence"]).set_index("method")
  assert wide.loc["oracle_map", "iou_all"] == "0.667 +- 0.000"
  assert wide.loc["oracle_mask", "iou_star_high"] == "1.000 +- 0.000"
  assert (wide.loc["oracle_map", "n_high"], wide.loc["oracle_map", "n_low"]) == (2, 1)
  np.testing.assert_allclose(out["accuracy"]["accuracy"], [2 / 3])
  summary = out["summary"].set_index("method")
  np.testing.assert_allclose(summary.loc["oracle_map", "iou"], 8 / 12, rtol=1e-6)
  for name in ("config.json", "samples.csv", "summary.csv", "summary.md", "confidence.csv",
               "confidence.md", "accuracy.csv", "report.md", "figures/iou_by_confidence.png",
               "figures/gallery.png"):
    assert (tmp_path / name).is_file(), name
  assert "oracle_map" in (tmp_path / "report.md").read_text()


def test_pixel_removal_closed_form(tmp_path, monkeypatch, oracles):
  # w_p = p + 1 in raster order (sum 136), b = 100, images of ones, fill 0.
  # MoRF removes 16, 15, 14, ...: f_0 = 120, 105, 91 < 100 at k = 3.
  # LeRF removes 1, 2, 3, ...: f_0 = 136 - k (k + 1) / 2 < 100 first at k = 9.
  # AOPC at 25% (k = 0..4): drops 0, 16, 31, 45, 58 -> 150 / 5 = 30.
  # AFOC at 25%: MoRF 58 / 136, LeRF 10 / 136. Three equal images: every delta is 0.
  w = jnp.arange(1, SIDE * SIDE + 1, dtype=jnp.float32).reshape(SIDE, SIDE)
  variables = {"w": w, "b": jnp.float32(100.0)}
  source = ArraySource(image=np.ones((3, SIDE, SIDE, 3), np.float32),
                       label=np.zeros(3, np.int32))
  _use(monkeypatch, source, variables)
  config = _unlocked(pixel_removal_config.get_config("tiny"))
  config.methods = {"oracle_weights": {}, "oracle_reversed": {}}
  config.pixel_removal.update(fraction=0.25, step=1, step_fraction=0.0, fill="0", delta_k=1)
  config.evaluate.update(shard_size=3)
  config.statistics.update(alpha_level="ordinal", alpha_images=0)
  config.figures = False
  with warnings.catch_warnings():  # three equal images: every Spearman correlation is NaN
    warnings.simplefilter("ignore", scipy.stats.ConstantInputWarning)
    out = pixel_removal.run(config, tmp_path, progress=False)

  by = out["samples"].set_index("method")
  expected = {"oracle_weights": dict(aopc=30.0, afoc_morf=58 / 136, afoc_lerf=10 / 136,
                                     n_morf=3 / 16, n_lerf=9 / 16),
              "oracle_reversed": dict(aopc=(0 + 1 + 3 + 6 + 10) / 5, afoc_morf=10 / 136,
                                      afoc_lerf=58 / 136, n_morf=9 / 16, n_lerf=3 / 16)}
  for method, values in expected.items():
    for column, value in values.items():
      np.testing.assert_allclose(by.loc[method, column], value, rtol=1e-6, err_msg=column)
      np.testing.assert_allclose(by.loc[method, f"delta_{column}"], 0.0, atol=1e-5)
    np.testing.assert_array_equal(by.loc[method, "flipped_morf"], 1.0)
  wins = out["win_rates"].set_index(["metric", "method", "opponent"])["win_rate"]
  # The weights' own order is better on every metric: 1.0 (all images won). (The deltas are
  # 0 up to float rounding, so their win rates are not asserted beyond antisymmetry.)
  for metric in pixel_removal.METRICS:
    assert wins[(metric, "oracle_weights", "oracle_reversed")] == 1.0
    assert wins[(metric, "oracle_reversed", "oracle_weights")] == 0.0
    delta = f"delta_{metric}"
    assert wins[(delta, "oracle_weights", "oracle_reversed")] + wins[
        (delta, "oracle_reversed", "oracle_weights")] == 1.0
  # Statistics (DeepMaps appendix C): the weights' order wins on all 3 images, so the exact
  # two-sided Wilcoxon p-value is 2 / 2^3 and every image ranks the methods alike (alpha 1,
  # here at the config's ordinal level over all 3 images, once).
  statistics = out["statistics"]
  p_values = statistics.wilcoxon.set_index(["metric", "method", "opponent"])["p_value"]
  alpha = statistics.alpha.set_index("metric")
  for metric in pixel_removal.METRICS:
    assert p_values[(metric, "oracle_weights", "oracle_reversed")] == pytest.approx(0.25)
    assert alpha.loc[metric, "alpha"] == pytest.approx(1.0)
    assert tuple(alpha.loc[metric, ["level", "images", "draws"]]) == ("ordinal", 3, 1)
  assert statistics.spearman["rho"].isna().all()
  curves = out["curves"]
  morf = curves[(curves.method == "oracle_weights") & (curves.order == "morf")]
  np.testing.assert_allclose(morf["score"].to_numpy()[:4], [136, 120, 105, 91])
  np.testing.assert_allclose(morf["flip_rate"].to_numpy()[:4], [0, 0, 0, 1])
  for name in ("config.json", "samples.csv", "curves.csv", "summary.csv", "summary.md",
               "win_rates.csv", "accuracy.csv", "report.md"):
    assert (tmp_path / name).is_file(), name


@pytest.mark.slow
def test_pixel_removal_statistics_match_scipy_and_krippendorff(tmp_path, monkeypatch, oracles):
  """DeepMaps appendix C from the command (`stats/`, Fig. 9-11), recomputed from samples.csv:
  Wilcoxon by `scipy.stats.wilcoxon`, alpha by `krippendorff.alpha` on the draws replayed with
  the run's key (the config's interval level, and the ordinal one), Spearman by
  `scipy.stats.spearmanr`; a rerun writes the same bytes; the figures are in the report."""
  rng = np.random.default_rng(0)
  image = rng.uniform(0.5, 1.5, size=(8, SIDE, SIDE, 3)).astype(np.float32)  # f_0 ~ 136
  source = ArraySource(image=image, label=np.zeros(8, np.int32))
  variables = {"w": jnp.arange(1, SIDE * SIDE + 1, dtype=jnp.float32).reshape(SIDE, SIDE),
               "b": jnp.float32(100.0)}
  _use(monkeypatch, source, variables)
  # "random" (left out of alpha's "No Random" set): the noise of channel 2, and oracle_map
  # that of channel 1, so the methods' ranks vary from image to image. (A map read from the
  # input compiles in a fraction of the random explainer's time.)
  monkeypatch.setitem(explain.METHODS, "random", _channel(2))
  config = _unlocked(pixel_removal_config.get_config("tiny"))
  config.methods = {"oracle_weights": {}, "oracle_map": {}, "random": {}}
  config.pixel_removal.update(fraction=0.25, step=1, step_fraction=0.0, fill="0", delta_k=2)
  config.evaluate.update(shard_size=4)
  config.statistics.update(alpha_images=6, alpha_draws=7, alpha_level="interval")
  out = pixel_removal.run(config, tmp_path, progress=False)

  samples = pd.read_csv(tmp_path / "samples.csv")
  methods = list(config.methods)
  scored = (*pixel_removal.METRICS, *pixel_removal.DELTA_METRICS)
  table = samples.pivot(index="index", columns="method")
  wilcoxon = pd.read_csv(tmp_path / "stats" / "wilcoxon.csv")
  assert len(wilcoxon) == len(scored) * len(methods) * (len(methods) - 1)
  for row in wilcoxon.itertuples():
    a, b = table[row.metric][row.method], table[row.metric][row.opponent]
    expected = 1.0 if (a == b).all() else scipy.stats.wilcoxon(a, b).pvalue
    assert row.p_value == pytest.approx(expected, rel=1e-7), row

  key = jax.random.fold_in(jax.random.key(config.seed), 2000)
  seed = np.asarray(jax.random.key_data(key)).ravel().tolist()

  def check_alpha(alpha, level):
    assert set(alpha["methods"]) == {"all", "without_random"}
    checked = 0
    for row in alpha.itertuples():
      chosen = methods if row.methods == "all" else methods[:-1]
      values = table[row.metric][chosen].to_numpy()
      higher = registry.direction(row.metric)
      ranks = np.stack([scipy.stats.rankdata(-v if higher else v) for v in values])
      draw = np.random.default_rng(seed)
      alphas = []
      for _ in range(7):
        subset = ranks[draw.choice(8, size=6, replace=False)]
        alphas.append(krippendorff.alpha(reliability_data=subset, level_of_measurement=level)
                      if np.unique(subset).size > 1 else np.nan)
      assert (row.level, row.images, row.draws, row.available) == (level, 6, 7, 8)
      if np.isnan(alphas).any():
        assert np.isnan(row.alpha), row
        continue
      checked += 1
      assert row.alpha == pytest.approx(np.mean(alphas), rel=1e-7), row
      assert row.std == pytest.approx(np.std(alphas, ddof=1), rel=1e-6, abs=1e-12), row
      assert (row.low, row.high) == pytest.approx(tuple(np.quantile(alphas, [0.025, 0.975])),
                                                  rel=1e-7)
    assert checked >= len(alpha) // 2
    return alpha

  interval = check_alpha(pd.read_csv(tmp_path / "stats" / "krippendorff_alpha.csv"), "interval")
  spearman = pd.read_csv(tmp_path / "stats" / "spearman.csv")
  for row in spearman[spearman["method"] == "oracle_map"].itertuples():
    rows = samples[samples["method"] == row.method]
    sign = lambda m: 1.0 if registry.direction(m) else -1.0  # larger is better, as DeepMaps
    if rows[row.metric].nunique() > 1 and rows[row.versus].nunique() > 1:
      expected = scipy.stats.spearmanr(sign(row.metric) * rows[row.metric],
                                       sign(row.versus) * rows[row.versus]).statistic
      assert row.rho == pytest.approx(expected, rel=1e-7, abs=1e-12), row  # CSV: 8 digits
    else:
      assert np.isnan(row.rho)
  report = out["report"].read_text()
  for name in ("wilcoxon", "alpha", "spearman"):
    assert (tmp_path / "figures" / f"{name}.png").is_file()
    assert f"figures/{name}.png" in report
  assert "DeepMaps Fig. 10 / 17" in report and "interval level" in report
  # A rerun recomputes the statistics from the samples: the same bytes.
  before = {p.name: p.read_bytes() for p in (tmp_path / "stats").iterdir()}
  config.figures = False  # (not an evaluation field: the same folder)
  pixel_removal.run(config, tmp_path, progress=False)
  assert {p.name: p.read_bytes() for p in (tmp_path / "stats").iterdir()} == before
  # The ordinal level on the same samples and draws (`reports.alpha_table`, which the command
  # calls; `test_pixel_removal_closed_form` runs the command at the ordinal level).
  ordinal = reports.alpha_table(samples, metrics=scored, key=key, images=6, draws=7,
                                level="ordinal")
  check_alpha(ordinal, "ordinal")
  assert not np.allclose(ordinal["alpha"], interval["alpha"], equal_nan=True)


def _numpy_iou(maps, masks, n_std, weighted):
  """Gattas' procedure, written independently: normalise, abs, threshold, count."""
  out = []
  for s, m in zip(maps, masks):
    peak = np.abs(s).max()
    v = np.abs(s / peak) if peak > 0 else np.zeros_like(s)
    kept = (v >= n_std * v.std()) & (v > 0)
    union = (kept | m).sum()
    inter = (v * (kept & m)).sum() if weighted else (kept & m).sum()
    out.append(inter / union if union else 0.0)
  return np.array(out)


@pytest.fixture(scope="module")
def trained_npz(tmp_path_factory):
  """The tiny configs' CNN, trained once on the cells (the experiments' training path) and
  saved as the flat `.npz` that `model.npz` loads."""
  folder = tmp_path_factory.mktemp("trained")
  config = localization_config.get_config("tiny")
  model, variables, described = image_experiment.build_model(config, folder, progress=False)
  assert "trained on 64 cells" in described
  assert (folder / "train").is_dir()  # orbax checkpoints of the resumable training
  path = folder / "cnn.npz"
  image_experiment.save_npz(variables, path)
  return str(path)


def _with_npz(config, path):
  config.unlock()
  config.model.npz = path
  return config


@pytest.mark.slow
def test_tiny_localization_on_cells_matches_numpy(tmp_path, trained_npz):
  config = _with_npz(localization_config.get_config("tiny"), trained_npz)
  out = localization.run(config, tmp_path, progress=False)
  samples = pd.read_csv(tmp_path / "samples.csv")
  # Gattas' panel (configs/localization.py TINY_METHODS) and the random map.
  assert len(samples) == 8 * 5 and set(samples["method"]) == {
      "guided_gradcam", "deeplift", "layer_shap", "lime", "random"}
  assert samples[["iou", "iou_star"]].notna().all().all()
  assert samples["iou"].between(0, 1).all() and samples["iou_star"].between(0, 1).all()
  assert json.loads((tmp_path / "config.json").read_text())["variant"] == "tiny"
  assert (tmp_path / "figures" / "gallery.png").is_file()
  # Recompute the DeepLIFT maps (black-image reference) and IOU / IOU* here.
  model, variables, _ = image_experiment.build_model(config, tmp_path, progress=False)
  batch = image_experiment.build_source(config).get_batch(np.arange(8))
  x = jnp.asarray(batch["image"])
  target = jnp.argmax(model.apply(variables, x), axis=-1)
  maps = np.asarray(explain.to_map(explain.deeplift(
      model, variables, x, target, baseline=jnp.zeros(x.shape[1:])), "sum"), np.float64)
  masks = batch["heatmap"] > 0
  rows = samples[samples["method"] == "deeplift"].sort_values("index")
  np.testing.assert_allclose(rows["iou"], _numpy_iou(maps, masks, 0.5, False), atol=1e-5)
  np.testing.assert_allclose(rows["iou_star"], _numpy_iou(maps, masks, 1.0, True), atol=1e-5)
  # A rerun resumes (every shard exists) and gives the same table; another model is refused
  # (other evaluation fields get a folder of their own: tests/test_config_validation.py).
  again = localization.run(config, tmp_path, progress=False)
  pd.testing.assert_frame_equal(again["samples"], out["samples"])
  other = _with_npz(localization_config.get_config("tiny"), trained_npz + ".other.npz")
  with pytest.raises(ValueError, match=r"different config \(fields \['model'\]"):
    localization.run(other, tmp_path, progress=False)


def _grid(num_pixels, step, step_fraction):
  """Removed pixel counts (the documented grid): 0, step, 2 step, ... and P itself; or
  round(k * step_fraction * P), halves up, in exact rational arithmetic, and P itself."""
  if step:
    counts = list(range(0, num_pixels + 1, step))
  else:
    d = fractions.Fraction(str(step_fraction or 0.005))
    counts = [math.floor(k * d * num_pixels + fractions.Fraction(1, 2))
              for k in range(int(1 / d) + 1)]
  return counts if counts[-1] == num_pixels else counts + [num_pixels]


def _slow_curve(apply, x, saliency, fill, counts, order):
  """Logits `[K, classes]` of image `x` [H, W, C] with the first `counts[k]` pixels of
  `order` removed (all channels set to `fill`), one pixel at a time in a Python loop. The
  order sorts the flat map (descending for MoRF), ties by ascending flat index."""
  h, w, _ = x.shape
  flat = saliency.reshape(-1)
  index = np.arange(h * w)
  ranked = np.lexsort((index, -flat if order == "morf" else flat))
  images, current = [], x.copy()
  removed = 0
  for count in counts:
    while removed < count:
      row, col = divmod(int(ranked[removed]), w)
      current[row, col, :] = fill
      removed += 1
    images.append(current.copy())
  return np.asarray(apply(jnp.asarray(np.stack(images))), np.float64)


def _removal_metrics(logits_morf, logits_lerf, counts, fraction, num_pixels):
  """AOPC / AFOC / n_MoRF / n_LeRF of one image from its two curves (DeepMaps sec. 4, App. B),
  and the smallest relative decision margin (top logit minus the runner-up) at the grid points
  up to the first flip: how far the flip point was from depending on rounding."""
  target = int(np.argmax(logits_morf[0]))
  last = max(i for i, k in enumerate(counts) if k <= np.floor(fraction * num_pixels + 1e-6))
  f0 = logits_morf[0, target]
  out = {"aopc": np.mean(f0 - logits_morf[:last + 1, target]),
         "afoc_morf": abs(f0 - logits_morf[last, target]) / abs(f0),
         "afoc_lerf": abs(f0 - logits_lerf[last, target]) / abs(f0)}
  margins = []
  for name, logits in (("n_morf", logits_morf), ("n_lerf", logits_lerf)):
    flips = np.flatnonzero(np.argmax(logits, axis=1) != target)
    out[name] = counts[flips[0]] / num_pixels if len(flips) else 1.0
    decisive = logits[:flips[0] + 1] if len(flips) else logits  # up to the first flip
    others = np.delete(decisive, target, axis=1).max(axis=1)
    margins.append(np.abs(decisive[:, target] - others).min() / max(1.0, abs(f0)))
  return out, min(margins)


@pytest.mark.slow
def test_tiny_pixel_removal_on_cells(tmp_path, trained_npz):
  """Every number recomputed independently: the gradient maps, the MoRF / LeRF curves with a
  pixel-by-pixel loop over the configured grid (whatever its step), AOPC, AFOC, n_MoRF,
  n_LeRF, the mean curves, delta_aopc / delta_afoc_* (own map minus the mean over `delta_k`
  maps of other images of the whole evaluated set) and the win rates from the samples
  table."""
  config = _with_npz(pixel_removal_config.get_config("tiny"), trained_npz)
  out = pixel_removal.run(config, tmp_path, progress=False)
  samples = pd.read_csv(tmp_path / "samples.csv")
  num_images = config.data.num_examples
  assert len(samples) == num_images * 2
  options = pixel_removal.removal_options(config)
  assert options["fill"] == "batch_mean" and options["score"] == "logit"
  size = config.data.size
  num_pixels = size * size
  counts = _grid(num_pixels, options["step"], options["step_fraction"])
  # 10% of the pixels is a grid point (AOPC / AFOC are taken there, not at the point before).
  assert math.floor(options["fraction"] * num_pixels) in counts
  fraction, delta_k, shard_size = options["fraction"], options["delta_k"], (
      config.evaluate.shard_size)
  curves = pd.read_csv(tmp_path / "curves.csv")
  assert set(curves["order"]) == {"morf", "lerf"}
  assert curves.groupby(["method", "order"]).size().eq(len(counts)).all()

  model, variables, _ = image_experiment.build_model(config, tmp_path, progress=False)
  forward = models.as_apply(model)
  apply = jax.jit(lambda images: forward(variables, images))
  source = image_experiment.build_source(config)
  rows = samples[samples["method"] == "gradient"].set_index("index")
  own_curves = {"morf": [], "lerf": []}
  checked_n = 0
  # Every image's gradient map, for its own predicted class (the delta partners' maps).
  images = np.asarray(source.get_batch(np.arange(num_images))["image"], np.float32)
  all_maps = np.asarray(explain.to_map(explain.explain(
      "gradient", model, variables, jnp.asarray(images),
      jnp.argmax(apply(jnp.asarray(images)), axis=-1)), "sum"))
  for first in range(0, num_images, shard_size):
    indices = np.arange(first, min(num_images, first + shard_size))
    x = images[indices]
    fill = x.mean(axis=(0, 1, 2))  # "batch_mean": per channel over the evaluated shard
    metrics = {}  # (image, map of image j of the whole set) -> metrics
    for i, index in enumerate(indices):
      for j in range(num_images):
        curves_ij = [_slow_curve(apply, x[i], all_maps[j], fill, counts, order)
                     for order in ("morf", "lerf")]
        metrics[index, j] = _removal_metrics(*curves_ij, counts, fraction, num_pixels)
        if index == j:
          for order, logits in zip(("morf", "lerf"), curves_ij):
            own_curves[order].append(logits[:, int(np.argmax(logits[0]))])
    for index in indices:
      row = rows.loc[index]
      own, margin = metrics[index, index]
      for name in ("aopc", "afoc_morf", "afoc_lerf"):
        np.testing.assert_allclose(row[name], own[name], rtol=1e-4, atol=1e-5, err_msg=name)
      # A decision within rounding of a tie may flip either way; all others must match.
      if margin > 1e-4:
        checked_n += 1
        assert (row["n_morf"], row["n_lerf"]) == pytest.approx((own["n_morf"], own["n_lerf"]))
      # delta: own minus the mean over the maps of delta_k distinct other images of the
      # whole set (drawn with the run's key): one such subset must reproduce every
      # continuous delta.
      others = [j for j in range(num_images) if j != index]
      matches = []
      for subset in itertools.combinations(others, delta_k):
        expected = {name: own[name] - np.mean([metrics[index, j][0][name] for j in subset])
                    for name in ("aopc", "afoc_morf", "afoc_lerf")}
        matches.append(all(np.isclose(row[f"delta_{name}"], value, rtol=1e-4, atol=1e-5)
                           for name, value in expected.items()))
      assert any(matches), (index, row.filter(like="delta_").to_dict())
  assert checked_n >= num_images // 2, checked_n
  # Mean curves of the gradient maps.
  for order, scores in own_curves.items():
    table = curves[(curves.method == "gradient") & (curves.order == order)]
    np.testing.assert_allclose(table["fraction"], np.array(counts) / num_pixels, rtol=1e-6)
    scores = np.stack(scores)
    np.testing.assert_allclose(table["score"], scores.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(table["drop"], (scores[:, :1] - scores).mean(0), atol=1e-5)
  # Win rates, by hand from the samples table: wins + ties / 2 over the images, in [0, 1].
  wins = pd.read_csv(tmp_path / "win_rates.csv").set_index(["metric", "method", "opponent"])
  scored = (*pixel_removal.METRICS, *pixel_removal.DELTA_METRICS)
  table = samples.pivot(index="index", columns="method")
  assert len(wins) == 2 * len(scored)
  for metric in scored:
    higher = registry.direction(metric)
    a, b = table[metric]["gradient"].to_numpy(), table[metric]["random"].to_numpy()
    better = (a > b) if higher else (a < b)
    expected = np.mean(better + 0.5 * (a == b))
    assert wins.loc[(metric, "gradient", "random"), "win_rate"] == pytest.approx(expected)
    assert wins.loc[(metric, "random", "gradient"), "win_rate"] == pytest.approx(1 - expected)
    assert wins.loc[(metric, "gradient", "random"), "images"] == len(a)
  assert "Pixel removal" in out["report"].read_text()
  for name in ("figures/perturbation_curves.png", "figures/flip_rate.png",
               "figures/win_rates_n_morf.png", "accuracy.csv", "summary.md"):
    assert (tmp_path / name).is_file(), name


def test_configs_are_locked_and_validated():
  for module in (localization_config, pixel_removal_config):
    for variant in module.VARIANTS:
      config = module.get_config(variant)
      with pytest.raises(AttributeError):
        config.data.sizee = 3
    with pytest.raises(ValueError, match="valid: quick, tiny, paper"):
      module.get_config("huge")
  paper = pixel_removal_config.get_config("paper")
  assert tuple(paper.data.keep_labels) == tuple(range(100)) and paper.data.per_class == 50
  options = pixel_removal.removal_options(paper)
  assert options["fill"] == 0.0  # the ImageNet mean after ImageNet normalisation
  assert options["step"] is None and options["delta_k"] == 5
  # DeepMaps' grid: steps of 0.5%, so 10% of 224x224 is grid point 20 (5018 pixels).
  assert options["step_fraction"] == 0.005 and options["fraction"] == 0.1
  assert metric_removal.removal_grid(224 * 224, step_fraction=0.005)[20] == 5018
  paper.pixel_removal.fill = "0.5,0.5,0.5"
  assert pixel_removal.removal_options(paper)["fill"] == 0.5
  paper.pixel_removal.fill = "0.5,0.25,0"  # per-channel numbers pass as a tuple
  assert pixel_removal.removal_options(paper)["fill"] == (0.5, 0.25, 0.0)
  paper.pixel_removal.fill = "grey"
  with pytest.raises(ValueError, match="unknown pixel_removal.fill 'grey'"):
    pixel_removal.removal_options(paper)
  paper.pixel_removal.fill = "blur"
  assert pixel_removal.removal_options(paper)["fill"] == "blur"
  # The training split's mean needs a training split: the cells have one, ImageNet here not.
  paper.pixel_removal.fill = "dataset_mean"
  with pytest.raises(ValueError, match="'dataset_mean' needs the training split.*'imagenet_mean'"):
    pixel_removal.removal_options(paper)
  paper.pixel_removal.fill = "mean"
  with pytest.raises(ValueError, match="pixel_removal.fill: 'mean' is ambiguous"):
    pixel_removal.validate(paper)


def test_dataset_mean_fill_is_the_mean_of_the_training_cells():
  config = _unlocked(pixel_removal_config.get_config("tiny"))
  config.pixel_removal.fill = "dataset_mean"
  pixel_removal.validate(config)
  assert pixel_removal.removal_options(config)["fill"] == "dataset_mean"  # resolved in `run`
  fill = pixel_removal.resolved_removal_options(config)["fill"]
  source = cell_source.source("train", size=config.data.size,
                              key=jax.random.key(config.seed),
                              num_examples=config.train.num_train)
  images = np.asarray(source.get_batch(np.arange(len(source)))["image"], np.float64)
  np.testing.assert_allclose(fill, images.mean(axis=(0, 1, 2)), rtol=1e-12)
  assert isinstance(fill, tuple) and len(fill) == 3


def test_bad_data_source_is_named(tmp_path):
  config = _unlocked(localization_config.get_config("tiny"))
  config.data.source = "parquet"
  with pytest.raises(ValueError, match="unknown data.source 'parquet'; valid: cells, "
                                       "image_folder, tfds"):
    image_experiment.build_source(config)
  config.data.source = "image_folder"
  with pytest.raises(ValueError, match="needs --config.data.image_folder"):
    image_experiment.build_source(config)
  with pytest.raises(ValueError, match="a model is needed"):
    image_experiment.build_model(config, tmp_path)
