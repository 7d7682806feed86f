"""xai_jax.reports: tables, figures and `report.md` from an evaluation's tables.

One module per kind of output; the functions users call are re-exported here
(`xai_jax.reports.summary_table`, ...):

* `tables`: DataFrames and markdown: `summary_table` (means per model and method),
  `win_rate_table` and `pairwise_win_rates` (DeepMaps' win rates), `recall_precision_points`
  (Tjoa & Guan Fig. 3's points), `to_markdown`.
* `plots`: PNG figures of the scores: `precision_recall_scatter`,
  `recall_precision_points_figure`, `roc_figure` (Tjoa & Guan, Fig. 3 and 4), `perturbation_curves_figure`, `win_rate_figure` (DeepMaps, Fig. 7).
* `gallery`: grids of images, ground truths and saliency maps: `gallery_figure` (the cells,
  Tjoa & Guan Fig. 2), `method_class_gallery` and `method_gallery` (their Fig. 5 and 6).
* `writer`: `write_report`, the markdown report of an evaluation.
* `sanity`: figures of the sanity checks (Adebayo et al. 2018): `randomization_grid`,
  `similarity_curves`.
* `training`: `plot_history`, loss and accuracy against the training step.

Reports consume tables and arrays; class names arrive as arguments (they never import
`xai_jax.data`).
"""

from xai_jax.reports.gallery import gallery_figure
from xai_jax.reports.gallery import heatmap_to_rgb
from xai_jax.reports.gallery import method_class_gallery
from xai_jax.reports.gallery import method_gallery
from xai_jax.reports.plots import perturbation_curves_figure
from xai_jax.reports.plots import precision_recall_scatter
from xai_jax.reports.plots import recall_precision_points_figure
from xai_jax.reports.plots import roc_figure
from xai_jax.reports.plots import win_rate_figure
from xai_jax.reports.sanity import randomization_grid
from xai_jax.reports.sanity import similarity_curves
from xai_jax.reports.tables import pairwise_win_rates
from xai_jax.reports.tables import recall_precision_points
from xai_jax.reports.tables import summary_table
from xai_jax.reports.tables import to_markdown
from xai_jax.reports.tables import win_rate_table
from xai_jax.reports.training import plot_history
from xai_jax.reports.writer import write_report

__all__ = [
    "gallery_figure", "heatmap_to_rgb", "method_class_gallery", "method_gallery",
    "pairwise_win_rates", "perturbation_curves_figure", "plot_history", "precision_recall_scatter",
    "randomization_grid", "recall_precision_points", "recall_precision_points_figure", "roc_figure", "similarity_curves", "summary_table", "to_markdown",
    "win_rate_figure", "win_rate_table", "write_report",
]
