"""xai_jax.metrics: jitted, batched measures of saliency maps.

- `pixel_removal`: perturbation curves (MoRF / LeRF / random), AOPC, AFOC, n_MoRF / n_LeRF
  and the DeepMaps delta variants (Samek et al. 2016; Grabska-Barwinska et al. 2021).
- `ground_truth`: five-band scores against the cells' heatmaps, ROC points (Tjoa & Guan
  2020), IOU and IOU* against masks (Gattas 2020).
- `registry`: every metric column an evaluation writes (family, direction, inputs,
  reduction, description) and every family's options and scoring function.
- `stats`: win rates, Wilcoxon p-values, Krippendorff's alpha of rankings, Spearman
  matrices across methods and metrics.
- `sanity` and `similarity`: model randomisation and the similarity measures of
  Adebayo et al. (2018).

Metrics take saliency maps as arrays, or an explainer function as an argument; they never
import explainers.
"""

from xai_jax.metrics import ground_truth, pixel_removal, registry, sanity, similarity, stats
from xai_jax.metrics.ground_truth import (
    FiveBandScores, channel_adjust, five_band, five_band_scores, five_band_summary, iou,
    iou_star, roc_auc, roc_points, soft_thresholds)
from xai_jax.metrics.pixel_removal import (
    DeltaResult, PerturbationCurve, SharedCurveDelta, afoc, aopc, check_removal_grid,
    delta, draw_others, draw_partners, metrics_from_curves, perturbation_curve,
    pixel_removal_metrics, pixels_to_flip, removal_grid, shared_curve_delta)

__all__ = [
    "DeltaResult", "FiveBandScores", "PerturbationCurve", "SharedCurveDelta", "afoc", "aopc",
    "channel_adjust", "check_removal_grid", "delta", "draw_others", "draw_partners",
    "five_band", "five_band_scores", "five_band_summary", "ground_truth", "iou", "iou_star",
    "metrics_from_curves", "perturbation_curve", "pixel_removal", "pixel_removal_metrics",
    "pixels_to_flip", "registry", "removal_grid", "roc_auc", "roc_points", "sanity",
    "shared_curve_delta", "similarity", "soft_thresholds", "stats",
]
