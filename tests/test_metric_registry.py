"""`metrics.registry`: every evaluated column is registered once, with the papers' directions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xai_jax import models, runner
from xai_jax.data import cell_source
from xai_jax.metrics import ground_truth, pixel_removal, registry

# The columns `runner.evaluate` writes before the metric columns.
ID_COLUMNS = ("model", "method", "shard", "position", "index", "label", "background",
              "predicted", "confidence", "correct")

# Directions as the papers define them, written out here independently of the registry.
PAPER_DIRECTIONS = {
    # Tjoa & Guan: accuracy, recall and precision of the five-band map against the ground
    # truth (mean over thresholds, and at the best threshold): higher is better. `u1` is the
    # index of the best threshold: not a score.
    **{f"{letter}{statistic}{suffix}": True for letter in "ARP" for statistic in ("mu", "u")
       for suffix in ("", "_clamp")},
    **{f"{letter}u1{suffix}": None for letter in "ARP" for suffix in ("", "_clamp")},
    # Gattas: overlap of the thresholded map with the object mask.
    "iou": True, "iou_star": True,
    # Samek et al.: the MoRF curve of a good map falls fast, a large area over it.
    "aopc": True,
    # Srinivas & Fleuret: removing the most relevant pixels changes the output a lot,
    # removing the least relevant ones leaves it.
    "afoc_morf": True, "afoc_lerf": False,
    # DeepMaps App. B: few MoRF pixels flip the decision, many LeRF pixels are needed.
    "n_morf": False, "n_lerf": True,
    # The same, as the share of decisions that changed at all.
    "flipped_morf": True, "flipped_lerf": False,
    # DeepMaps Eq. 9: own map minus other images' maps keeps the metric's direction.
    "delta_aopc": True, "delta_afoc_morf": True, "delta_afoc_lerf": False,
    "delta_n_morf": False, "delta_n_lerf": True,
}


def test_directions_match_the_papers():
  assert {name: m.higher_is_better for name, m in registry.METRICS.items()} == PAPER_DIRECTIONS
  for name, higher in PAPER_DIRECTIONS.items():
    assert registry.direction(name) is higher
  scores = {n for n, h in PAPER_DIRECTIONS.items() if h is not None}
  assert registry.scores() == tuple(n for n in registry.METRICS if n in scores)
  assert registry.score_direction("n_morf") is False


def test_every_family_declares_exactly_the_columns_its_functions_compute():
  by_family = {f: [n for n, m in registry.METRICS.items() if m.family == f]
               for f in registry.FAMILY_NAMES}
  assert by_family["five_band"] == [c + suffix for suffix in ("", "_clamp")
                                    for c in ground_truth.SUMMARY_COLUMNS]
  assert tuple(registry.FIVE_BAND_SETTINGS) == tuple(ground_truth.PRESETS)
  assert by_family["iou"] == ["iou", "iou_star"]
  assert by_family["pixel_removal"] == [*pixel_removal.REMOVAL_METRICS,
                                        *(f"delta_{m}" for m in pixel_removal.DELTA_METRICS)]
  for name, metric in registry.METRICS.items():
    assert metric.name == name
    assert set(metric.inputs) <= set(registry.INPUTS), name
    # Scores are averaged over images; an index is not reduced.
    if metric.higher_is_better is None:
      assert metric.reduce is None, name
    else:
      assert metric.reduce in registry.REDUCTIONS, name
    assert metric.description and "\n" not in metric.description, name
    if metric.delta_of is not None:
      base = registry.get(metric.delta_of)
      assert name == registry.delta_column(base.name)
      assert metric.higher_is_better is base.higher_is_better
      assert "other_maps" in metric.inputs
  for name, family in registry.FAMILIES.items():
    assert family.name == name
    assert set(family.ground_truth) <= set(registry.INPUTS)


def test_lookups_and_unknown_names():
  assert registry.get("aopc").family == "pixel_removal"
  assert registry.get("Amu_clamp").inputs == ("attributions", "heatmap")
  assert registry.family("iou").defaults == {"n_std": 0.5, "n_std_star": 1.0, "abs": True}
  with pytest.raises(ValueError, match=r"unknown metric 'psnr'; valid: Amu, Au, Au1"):
    registry.get("psnr")
  with pytest.raises(ValueError, match="unknown metric 'AOPC'"):
    registry.direction("AOPC")
  with pytest.raises(ValueError, match="'Pu1' is not a score"):
    registry.score_direction("Pu1")
  with pytest.raises(ValueError, match="unknown metric family 'ssim'; valid: five_band, iou, "
                                       "pixel_removal"):
    registry.family("ssim")
  with pytest.raises(ValueError, match=r"unknown metrics \['psnr'\]"):
    registry.columns(("iou", "psnr"))
  with pytest.raises(ValueError, match="not the string"):
    registry.columns("iou")


def test_columns_follow_families_and_the_delta_option():
  assert registry.columns(("iou",)) == ("iou", "iou_star")
  removal = registry.columns(("pixel_removal",))
  assert removal[-5:] == tuple(f"delta_{m}" for m in pixel_removal.DELTA_METRICS)  # default K 5
  without = registry.columns(("pixel_removal",), {"pixel_removal": {"delta_k": 0}})
  assert without == pixel_removal.REMOVAL_METRICS
  assert registry.columns() == tuple(registry.METRICS)


def test_check_options_fills_defaults_and_names_the_bad_option():
  families, options = registry.check_options(("iou",), {"iou": {"n_std": 0.2}})
  assert families == ("iou",)
  assert options["iou"] == {"n_std": 0.2, "n_std_star": 1.0, "abs": True}
  assert options["pixel_removal"] == dict(registry.FAMILIES["pixel_removal"].defaults)
  assert options["five_band"] == {"clamp": "code"}
  assert registry.delta_k(families, options) == 0
  assert registry.delta_k(("pixel_removal",), options) == 5
  cases = [
      ((("pixel_removal",), {"pixel_removal": {"steps": 3}}), r"unknown pixel_removal options"),
      ((("iou",), {"five_band": {"clip": 1}}), r"unknown five_band options \['clip'\]"),
      ((("five_band",), {"five_band": {"clamp": "raw"}}),
       "metric_options.five_band.clamp: unknown clamp order 'raw'; valid: 'code', 'paper'"),
      ((("five_band",), {"five_band": {"clamp": 0.1}}),
       "metric_options.five_band.clamp: unknown clamp order 0.1"),
      ((("iou",), {"psnr": {}}), r"metric_options for unknown metrics \['psnr'\]"),
      ((("pixel_removal",), {"pixel_removal": {"fraction": 0}}),
       r"metric_options.pixel_removal.fraction: must be a fraction in \(0, 1\]"),
      ((("pixel_removal",), {"pixel_removal": {"fill": "zeros"}}),
       "metric_options.pixel_removal.fill: unknown fill 'zeros'; valid: dataset_mean, "
       "batch_mean, image_mean, blur, a finite number or per-channel numbers"),
      ((("pixel_removal",), {"pixel_removal": {"fill": "mean"}}),
       "metric_options.pixel_removal.fill: 'mean' is ambiguous: use 'batch_mean'"),
      ((("pixel_removal",), {"pixel_removal": {"fill": (0.5, "a")}}),
       "metric_options.pixel_removal.fill: must be one of"),
      ((("pixel_removal",), {"pixel_removal": {"step_fraction": 1.5}}),
       r"metric_options.pixel_removal.step_fraction: must be a fraction of the pixels in \(0, 1\]"),
      ((("pixel_removal",), {"pixel_removal": {"step": 3, "step_fraction": 0.1}}),
       "metric_options.pixel_removal.step: give the grid as step .* not both"),
      ((("pixel_removal",), {"pixel_removal": {"delta_k": -1}}),
       "metric_options.pixel_removal.delta_k"),
      ((("pixel_removal",), {"pixel_removal": {"score": "softmax"}}),
       "metric_options.pixel_removal.score: unknown score 'softmax'"),
      ((("iou",), {"iou": {"abs": 1}}), "metric_options.iou.abs: must be true or false"),
  ]
  for (args, message) in cases:
    with pytest.raises(ValueError, match=message):
      registry.check_options(*args)
  # Values of a family that is not evaluated are not checked; its option names are.
  registry.check_options(("iou",), {"pixel_removal": {"fraction": 0}})
  # The removal grid against the image size: step 128 > 10% of 32x32 = 102 pixels.
  with pytest.raises(ValueError, match=r"pixel_removal.step: step 128 .* \(images of 32x32\)"):
    registry.check_options(("pixel_removal",), {"pixel_removal": {"step": 128}},
                           image_size=(32, 32))
  # 10% of 224x224 on the former default step 251 (round(0.5% of P)): between grid points.
  with pytest.raises(ValueError, match=r"pixel_removal.step: fraction=0.1 \(5017 of 50176 "
                                       r"pixels\) is not on the removal grid of step=251"):
    registry.check_options(("pixel_removal",), {"pixel_removal": {"step": 251}},
                           image_size=(224, 224))
  # The defaults (steps of 0.5% of the pixels) have 10% on the grid.
  assert options["pixel_removal"]["step"] is None
  assert options["pixel_removal"]["step_fraction"] is None
  registry.check_options(("pixel_removal",), image_size=(224, 224))
  # "dataset_mean" is a valid spelling (a pipeline resolves it), as are per-channel numbers.
  for fill in ("dataset_mean", "batch_mean", (0.485, 0.456, 0.406), [0.5, 0.5, 0.5], 0.0):
    registry.check_options(("pixel_removal",), {"pixel_removal": {"fill": fill}})
  assert options["pixel_removal"]["fill"] == "batch_mean"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  model = models.get("small_vgg", num_classes=10, widths=(4,))
  variables = models.init(model, jax.random.key(0), (1, 32, 32, 3))
  source = cell_source.source("test", size=32, num_examples=4)
  workdir = tmp_path_factory.mktemp("registry")
  options = {"pixel_removal": {"fraction": 0.25, "step": 256, "delta_k": 2}}
  tables = runner.evaluate(workdir, source=source, model=model, variables=variables,
                           methods={"gradient": {}}, metric_options=options, shard_size=4,
                           key=jax.random.key(1), progress=False, gallery_size=0)
  return tables, options


@pytest.mark.slow
def test_every_column_of_a_tiny_evaluation_is_registered(tiny_run):
  tables, options = tiny_run
  columns = list(tables.samples.columns)
  assert tuple(columns[:len(ID_COLUMNS)]) == ID_COLUMNS
  produced = columns[len(ID_COLUMNS):]
  assert sorted(produced) == sorted(registry.columns(registry.FAMILY_NAMES, options))
  for name in produced:
    metric = registry.get(name)
    values = tables.samples[name].to_numpy()
    assert np.isfinite(values).all() or name.startswith(("afoc", "delta_afoc")), name
    if metric.higher_is_better is None:  # an index: integer valued
      assert np.issubdtype(values.dtype, np.integer), name


def test_family_scores_under_jit_match_the_metric_functions():
  # The registry's scoring functions against direct calls, on one random batch.
  rng = np.random.default_rng(0)
  attributions = jnp.asarray(rng.normal(size=(3, 8, 8, 2)), jnp.float32)
  heatmap = jnp.asarray(rng.choice([0.0, 0.4, 0.9], size=(3, 8, 8)), jnp.float32)
  maps = attributions.sum(-1)
  mask = (heatmap > 0).astype(jnp.float32)
  inputs = registry.ScoringInputs(model=None, variables=None, images=None,
                                  attributions=attributions, maps=maps, heatmap=heatmap,
                                  mask=mask, other_maps=None)
  _, options = registry.check_options(("five_band", "iou"), {"iou": {"n_std": 0.3}})
  five_band = jax.jit(lambda a, h: registry.family("five_band").score(
      inputs._replace(attributions=a, heatmap=h), options["five_band"]))(attributions, heatmap)
  for setting, suffix in registry.FIVE_BAND_SETTINGS.items():
    scores = ground_truth.five_band_scores(attributions, heatmap, thresholds=setting)
    for column, values in ground_truth.five_band_summary(scores).items():
      np.testing.assert_allclose(five_band.columns[column + suffix], values, rtol=1e-6)
    np.testing.assert_allclose(five_band.roc[setting][0], scores.recall.sum(0), rtol=1e-6)
    np.testing.assert_allclose(five_band.roc[setting][1], scores.fpr.sum(0), rtol=1e-6)
  # clamp="paper": the clamped setting normalises before clipping; the soft one is unchanged.
  paper = registry.family("five_band").score(inputs, {"clamp": "paper"})
  for setting, suffix in registry.FIVE_BAND_SETTINGS.items():
    scores = ground_truth.five_band_scores(attributions, heatmap, thresholds=setting,
                                           clamp_order="paper")
    for column, values in ground_truth.five_band_summary(scores).items():
      np.testing.assert_allclose(paper.columns[column + suffix], values, rtol=1e-6)
    if setting == "soft":
      np.testing.assert_allclose(paper.columns["Amu"], five_band.columns["Amu"], rtol=1e-6)
  iou = registry.family("iou").score(inputs, options["iou"])
  np.testing.assert_allclose(iou.columns["iou"], ground_truth.iou(maps, mask, n_std=0.3))
  np.testing.assert_allclose(iou.columns["iou_star"],
                             ground_truth.iou_star(maps, mask, n_std=1.0))
  assert not iou.roc and not iou.curves
  # The delta needs the partners' maps, K of them per image.
  _, options = registry.check_options(("pixel_removal",), {"pixel_removal": {"delta_k": 2}})
  with pytest.raises(ValueError, match=r"delta_k = 2 needs the maps of 2 other images"):
    registry.family("pixel_removal").score(inputs, options["pixel_removal"])
  with pytest.raises(ValueError, match=r"got \(3, 1, 8, 8\)"):
    registry.family("pixel_removal").score(inputs._replace(other_maps=maps[:, None]),
                                           options["pixel_removal"])
