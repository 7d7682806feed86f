"""`docs/architecture.md`, checked by doing it: a new explainer and a new metric family, each
written in its own code and added to its registry (`explain.METHODS`, `metrics.registry.register`),
flow through config checks, `runner.evaluate`, the summary and `report.md`, with no change to any
other file.

The explainer is a centre prior (a Gaussian bump, the same for every image); the metric is the
share of the map's absolute mass inside the ground-truth cell. Both have closed forms here, so
the test checks values, not only that columns exist.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xai_jax import explain, models, reports, runner
from xai_jax.data import cell_source
from xai_jax.metrics import registry

SIZE = 32
NUM = 6


def center_prior(model, variables, x, target=None, *, width: float = 8.0):
  """A map method: `exp(-r^2 / (2 width^2))` around the image centre, `float32[N, H, W]`."""
  del model, variables, target
  rows, cols = jnp.meshgrid(jnp.arange(x.shape[1]), jnp.arange(x.shape[2]), indexing="ij")
  r2 = (rows - (x.shape[1] - 1) / 2) ** 2 + (cols - (x.shape[2] - 1) / 2) ** 2
  return jnp.broadcast_to(jnp.exp(-r2 / (2 * width**2)), x.shape[:3]).astype(jnp.float32)


def _score_mass_inside(inputs: registry.ScoringInputs, options) -> registry.FamilyScores:
  mass = jnp.abs(inputs.maps)
  inside = (inputs.heatmap > options["level"]).astype(mass.dtype)
  share = (mass * inside).sum((1, 2)) / jnp.maximum(mass.sum((1, 2)), 1e-12)
  return registry.FamilyScores(columns={"mass_inside": share}, roc={}, curves={})


def _check_level(options, image_size):
  del image_size
  if not 0 <= options["level"] < 1:
    raise ValueError(f"metric_options.mass.level must be in [0, 1); got {options['level']!r}")


MASS = registry.Family(
    name="mass", description="share of the map's absolute mass on the ground-truth cell",
    ground_truth=("heatmap",), defaults={"level": 0.0}, check=_check_level,
    score=_score_mass_inside)
MASS_COLUMNS = [registry.Metric(
    "mass_inside", "mass", True, "share of |map| inside the ground-truth cell (higher: better)",
    ("map", "heatmap"))]


@pytest.fixture
def registered(monkeypatch):
  monkeypatch.setitem(explain.METHODS, "center_prior", center_prior)
  registry.register(MASS, MASS_COLUMNS)
  yield
  registry.unregister("mass")


@pytest.mark.slow
def test_a_new_explainer_and_metric_flow_to_the_report(registered, tmp_path):
  model = models.get("small_vgg", num_classes=10, widths=(8, 16))
  variables = models.init(model, jax.random.key(0), (1, SIZE, SIZE, 3))
  source = cell_source.source("test", size=SIZE, num_examples=NUM)
  methods = {"center_prior": {"width": 6.0}, "gradient": {}}
  # Config-time checks know both (names, options, values) before any work.
  runner.check_methods(methods)
  assert registry.check_options(("five_band", "mass"), {"mass": {"level": 0.5}})[1]["mass"] == {
      "level": 0.5}
  with pytest.raises(ValueError, match="level must be in"):
    registry.check_options(("mass",), {"mass": {"level": 2.0}})
  with pytest.raises(ValueError, match="unknown mass options"):
    registry.check_options(("mass",), {"mass": {"levl": 0.5}})

  tables = runner.evaluate(tmp_path, source=source, model=model, variables=variables,
                           methods=methods, metrics=("mass", "iou"), shard_size=NUM,
                           key=jax.random.key(0), model_name="m", progress=False,
                           gallery_size=2)
  samples = tables.samples
  assert {"mass_inside", "iou", "iou_star"} <= set(samples.columns)
  # Closed form: the centre prior's mass inside each image's cell, computed here directly.
  batch = source.get_batch(np.arange(NUM))
  prior = np.asarray(center_prior(None, None, jnp.zeros((1, SIZE, SIZE, 3)), width=6.0))[0]
  expected = [(prior * (h > 0)).sum() / prior.sum() for h in np.asarray(batch["heatmap"])]
  got = samples[samples.method == "center_prior"].sort_values("index")["mass_inside"]
  np.testing.assert_allclose(got.to_numpy(), expected, rtol=1e-5)

  summary = reports.summary_table(samples)
  assert "mass_inside" in summary.columns  # a registered score: summarised by default
  path = reports.write_report(tmp_path, title="added", summary=summary, accuracy=None,
                              figures={})
  text = path.read_text()
  assert "center_prior" in text and "mass_inside" in text
  assert "share of |map| inside the ground-truth cell" in text  # the registry's description


def test_register_refuses_clashes_and_unregister_keeps_the_built_ins(registered):
  with pytest.raises(ValueError, match="already registered"):
    registry.register(MASS, MASS_COLUMNS)
  other = registry.Family(name="other", description="", ground_truth=(), defaults={},
                          check=_check_level, score=_score_mass_inside)
  with pytest.raises(ValueError, match="names family 'mass', not 'other'"):
    registry.register(other, [registry.Metric("y", "mass", True, "", ("map",))])
  with pytest.raises(ValueError, match="unknown inputs"):
    registry.register(other, [registry.Metric("x", "other", True, "", ("pixels",))])
  with pytest.raises(ValueError, match="built-in"):
    registry.unregister("iou")
  assert registry.direction("mass_inside") is True
  assert "mass_inside" in registry.columns(("mass",))
