"""xai_jax: saliency maps for image classifiers in JAX/Flax, and the metrics that measure them.

Data flows one way (`docs/architecture.md`): `data -> models -> explain / train -> metrics ->
reports -> runner -> pipelines`. Every layer is a subpackage reachable from here:

  import xai_jax
  maps = xai_jax.explain.explain("integrated_gradients", model, variables, x, steps=32)
  tables = xai_jax.evaluate(workdir, source=..., model=..., variables=..., methods=...)
  summary = xai_jax.reports.summary_table(tables.samples)
  xai_jax.files.write_table(summary, workdir / "summary.csv")
  results = xai_jax.pipelines.cells.run(config, workdir)

The registries: `explain.METHODS` (explainers), `metrics.registry` (metric families and
columns with their directions), `models.get` (models).
"""

from xai_jax import data
from xai_jax import explain
from xai_jax import files
from xai_jax import keys
from xai_jax import metrics
from xai_jax import models
from xai_jax import pipelines
from xai_jax import reports
from xai_jax import runner
from xai_jax import train
from xai_jax import xla
from xai_jax.runner import evaluate

__version__ = "0.1.0"

# `keys` (the PRNG-key checks every layer shares) is plumbing, imported but not listed.
__all__ = ["data", "evaluate", "explain", "files", "metrics", "models", "pipelines", "reports",
           "runner", "train", "xla"]
