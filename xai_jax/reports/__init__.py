"""xai_jax.reports: tables, figures and `report.md` from an evaluation's tables.

One module per kind of output; the functions users call are re-exported here
(`xai_jax.reports.summary_table`, ...):

* `tables`: DataFrames and markdown: `summary_table` (means per model and method),
  `win_rate_table` and `pairwise_win_rates` (DeepMaps' win rates), `recall_precision_points`
  (Tjoa & Guan Fig. 3's points), `to_markdown`.
* `plots`: PNG figures of the scores: `precision_recall_scatter`,
  `recall_precision_points_figure`, `roc_figure` (Tjoa & Guan, Fig. 3 and 4),
  `perturbation_curves_figure`, `win_rate_figure` (DeepMaps, Fig. 7).
* `gallery`: grids of images, ground truths and saliency maps: `gallery_figure` (the cells,
  Tjoa & Guan Fig. 2), `method_class_gallery` and `method_gallery` (their Fig. 5 and 6).
* `statistics`: DeepMaps' appendix-C statistics across methods: `wilcoxon_table`,
  `alpha_table` (Krippendorff's alpha of the method rankings over draws of images, interval or
  ordinal level), `spearman_table`, all three written by `method_statistics`; their figures
  `wilcoxon_figure`, `alpha_figure`, `spearman_figure` (DeepMaps Fig. 9-11 / 16-18), drawn
  together by `statistics_figures`.
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
from xai_jax.reports.statistics import alpha_figure
from xai_jax.reports.statistics import alpha_table
from xai_jax.reports.statistics import check_alpha_options
from xai_jax.reports.statistics import method_statistics
from xai_jax.reports.statistics import spearman_figure
from xai_jax.reports.statistics import spearman_table
from xai_jax.reports.statistics import statistics_figures
from xai_jax.reports.statistics import wilcoxon_figure
from xai_jax.reports.statistics import wilcoxon_table
from xai_jax.reports.tables import pairwise_win_rates
from xai_jax.reports.tables import recall_precision_points
from xai_jax.reports.tables import summary_table
from xai_jax.reports.tables import to_markdown
from xai_jax.reports.tables import win_rate_table
from xai_jax.reports.training import plot_history
from xai_jax.reports.writer import write_report

__all__ = [
    "alpha_figure", "alpha_table", "check_alpha_options", "gallery_figure", "heatmap_to_rgb",
    "method_class_gallery", "method_gallery", "method_statistics", "pairwise_win_rates",
    "perturbation_curves_figure", "plot_history", "precision_recall_scatter",
    "randomization_grid", "recall_precision_points", "recall_precision_points_figure",
    "roc_figure", "similarity_curves", "spearman_figure", "spearman_table",
    "statistics_figures", "summary_table", "to_markdown", "wilcoxon_figure", "wilcoxon_table",
    "win_rate_figure", "win_rate_table", "write_report",
]
