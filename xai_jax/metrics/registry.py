"""The registry of metrics: every column an evaluation writes, in one place.

An evaluation (`xai_jax.runner.evaluate`) scores saliency maps with *families* of metrics;
each family is computed by one function on a batch and adds several per-sample columns to
the `samples` table. This module declares, once:

* for every column (`Metric`): its name, the family that computes it, its direction
  (`higher_is_better`: True, False, or None for a column that is not a score, such as the
  index of a best threshold), the inputs it needs, how it reduces across images (the mean)
  and the one-line description a report prints;
* for every family (`Family`): the ground truth it needs from the data source, its options
  with their defaults and their validation, the function that computes its columns (and the
  family's aggregate tables: ROC sums, perturbation-curve sums) inside the evaluation's jit,
  and its paper.

The runner, the statistics, the reports and the configs read names, directions and defaults
from here; nothing else keeps a list of metrics. Look-ups: `get(name)`, `direction(name)`,
`columns(families, options)`, `family(name)`, `check_options(families, options)`.

Families and their columns:

* "five_band" (Tjoa & Guan): `Amu Au Au1 Rmu Ru Ru1 Pmu Pu Pu1` with the soft thresholds
  and the same with suffix `_clamp` with the clamped ones (`FIVE_BAND_SETTINGS`); option
  `clamp`: "code" (default: the clamped setting clips the raw attribution, as the original
  code) or "paper" (it normalises by the maximum |value| first, as the paper's text), see
  `ground_truth.CLAMP_ORDERS`.
* "iou" (Gattas): `iou` and `iou_star`.
* "pixel_removal" (DeepMaps): `aopc afoc_morf afoc_lerf n_morf n_lerf flipped_morf
  flipped_lerf`, and with `delta_k > 0` the Eq. 9 variants `delta_<metric>` of
  `pixel_removal.DELTA_METRICS`.

The similarity measures of the sanity checks (`metrics.similarity`) are not registered here:
they are values of a `measure` column of long tables written by the sanity-check protocol,
not columns of an evaluation, and they have no direction of their own (a similarity near 1
is expected for the trained model and a low one after randomisation).

References:
  E. Tjoa and C. Guan, "Quantifying explainability of saliency methods in deep neural
    networks with a synthetic dataset", IEEE TAI 2022 (five-band scores).
  C. Gattas, "Evaluating feature attribution methods", thesis, 2020, sections 3.7-3.8
    (IOU, IOU*).
  W. Samek et al., "Evaluating the visualization of what a deep neural network has learned",
    IEEE TNNLS 2016 (AOPC).
  S. Srinivas and F. Fleuret, "Full-gradient representation for neural network
    visualization", NeurIPS 2019 (AFOC).
  A. Grabska-Barwinska et al., "Measuring and improving the quality of visual explanations"
    (DeepMaps), 2021, Sec. 4.2-4.3, Eq. 9 and App. B (n_MoRF, n_LeRF, delta).
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from xai_jax.metrics import ground_truth
from xai_jax.metrics import pixel_removal

INPUTS = types.MappingProxyType({
    "attributions": "the explainer's output, float32[N, H, W, C] (or [N, H, W])",
    "map": "the saliency map, the attributions summed over channels, float32[N, H, W]",
    "heatmap": "the source's ground-truth heatmap, float[N, H, W]",
    "mask": "the source's object mask, [N, H, W] (default: the heatmap's non-zero pixels)",
    "model": "the classifier, its variables and the images it is evaluated on",
    "other_maps": "the same method's maps of K other images of the evaluated set (DeepMaps "
                  "Eq. 9)",
})
"""The inputs a metric may need (`Metric.inputs`), with what each one is."""

REDUCTIONS = ("mean",)
"""How a metric column reduces across images (`Metric.reduce`); None: not reduced."""

REMOVAL_FILLS = (pixel_removal.DATASET_MEAN, "batch_mean", "image_mean", "blur")
"""The named fills of the pixel-removal family: "dataset_mean" (`pixel_removal.DATASET_MEAN`,
the papers' fill: the per-channel mean of the training split, which a pipeline computes and
passes as numbers: `runner.evaluate` needs it resolved), "batch_mean" (the per-channel mean of
each evaluated batch, so scores depend on the shard), "image_mean" and "blur"
(`pixel_removal.perturbation_curve`)."""

FIVE_BAND_SETTINGS = types.MappingProxyType({"soft": "", "clamped": "_clamp"})
"""Five-band threshold presets (`ground_truth.PRESETS`, Tjoa & Guan's two settings) and the
suffix of their columns."""


@dataclasses.dataclass(frozen=True)
class Metric:
  """One column of the `samples` table.

  Attributes:
    name: the column.
    family: the `Family` that computes it.
    higher_is_better: True or False for a score; None for a column that is not a score
      (e.g. the index of the best threshold), which is neither averaged nor ranked.
    description: one line for a report ("how to read the columns").
    inputs: keys of `INPUTS` it needs.
    reduce: how it reduces across images ("mean", NaN skipped); None when it is not reduced.
    delta_of: for a DeepMaps delta column, the metric it is the Eq. 9 delta of.
  """
  name: str
  family: str
  higher_is_better: bool | None
  description: str
  inputs: tuple[str, ...]
  reduce: str | None = "mean"
  delta_of: str | None = None


class ScoringInputs(NamedTuple):
  """What a family's `score` function receives for one method on one batch (traced arrays).

  Attributes:
    model: the Flax module (or `apply` function); static.
    variables: the model's variables.
    images: `float32[N, H, W, C]`, the unpadded batch.
    attributions: `float32[N, H, W, C]` (or `[N, H, W]`), the explainer's output.
    maps: `float32[N, H, W]`, the attributions summed over channels.
    heatmap: `float32[N, H, W]` ground truth, or None when the source has none.
    mask: `float32[N, H, W]` object mask, or None.
    other_maps: `float32[N, K, H, W]`, the same method's maps of each image's K partners
      (DeepMaps Eq. 9; `pixel_removal.draw_partners`), or None without a delta.
  """
  model: Any
  variables: Any
  images: jax.Array
  attributions: jax.Array
  maps: jax.Array
  heatmap: jax.Array | None
  mask: jax.Array | None
  other_maps: jax.Array | None


class FamilyScores(NamedTuple):
  """What a family's `score` function returns.

  Attributes:
    columns: `{column: [N]}`, per-sample values of the family's metric columns.
    roc: `{setting: (recall sum float32[M], FPR sum float32[M])}` over the batch, per
      five-band threshold index; empty for the other families.
    curves: `{order: {"fraction", "score_sum", "drop_sum", "flip_sum"}}`, the grid and the
      batch sums of the perturbation curves; empty for the other families.
  """
  columns: dict[str, jax.Array]
  roc: dict[str, tuple[jax.Array, jax.Array]]
  curves: dict[str, dict[str, jax.Array]]


@dataclasses.dataclass(frozen=True)
class Family:
  """A family of metrics computed together.

  Attributes:
    name: the family's name (`evaluate(metrics=...)`).
    description: one line.
    ground_truth: keys of the source's batch the family needs, any one of them; () for none.
    defaults: every option with its default (`metric_options[name]`).
    check: `check(options, image_size)` raises a ValueError for a bad option value;
      `options` has the defaults filled in, `image_size` is `(H, W)` or None.
    score: `score(inputs: ScoringInputs, options) -> FamilyScores`; plain JAX, traced inside
      the evaluation's jit (`options` are static, with lists turned into tuples).
  """
  name: str
  description: str
  ground_truth: tuple[str, ...]
  defaults: Mapping[str, Any]
  check: Callable[[Mapping[str, Any], tuple[int, int] | None], None]
  score: Callable[[ScoringInputs, Mapping[str, Any]], FamilyScores]


# --------------------------------------------------------------------------------------------
# Option checks.


def _is_int(value) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value) -> bool:
  return (isinstance(value, (int, float, np.number)) and not isinstance(value, (bool, np.bool_))
          and np.isfinite(float(value)))


def _fail(family: str, option: str, message: str):
  raise ValueError(f"metric_options.{family}.{option}: {message}")


def _check_five_band(options: Mapping[str, Any], image_size: tuple[int, int] | None) -> None:
  del image_size
  clamp = options["clamp"]
  if not isinstance(clamp, str) or clamp not in ground_truth.CLAMP_ORDERS:
    _fail("five_band", "clamp", f"unknown clamp order {clamp!r}; valid: "
          f"{', '.join(map(repr, ground_truth.CLAMP_ORDERS))} (\"code\": clip the raw "
          "attribution, as the original code; \"paper\": normalise by its maximum |value| "
          "first, as the paper's text)")


def _check_iou(options: Mapping[str, Any], image_size: tuple[int, int] | None) -> None:
  del image_size
  for option in ("n_std", "n_std_star"):
    if not _is_number(options[option]) or options[option] < 0:
      _fail("iou", option, f"must be a finite number >= 0; got {options[option]!r}")
  if not isinstance(options["abs"], (bool, np.bool_)):
    _fail("iou", "abs", f"must be true or false; got {options['abs']!r}")


def _check_pixel_removal(options: Mapping[str, Any],
                         image_size: tuple[int, int] | None) -> None:
  fraction, step, fill = options["fraction"], options["step"], options["fill"]
  step_fraction = options["step_fraction"]
  if not _is_number(fraction) or not 0 < fraction <= 1:
    _fail("pixel_removal", "fraction", f"must be a fraction in (0, 1]; got {fraction!r}")
  if step is not None and (not _is_int(step) or step < 1):
    _fail("pixel_removal", "step", f"must be a positive int (pixels per grid point) or None "
          f"(step_fraction, or its default 0.5% of the pixels); got {step!r}")
  if step_fraction is not None and (not _is_number(step_fraction)
                                    or not 0 < step_fraction <= 1):
    _fail("pixel_removal", "step_fraction", f"must be a fraction of the pixels in (0, 1] or "
          f"None (step, or the default 0.005); got {step_fraction!r}")
  if step is not None and step_fraction is not None:
    _fail("pixel_removal", "step", f"give the grid as step (pixels) or step_fraction, not both; "
          f"got step={step!r}, step_fraction={step_fraction!r}")
  _check_fill(fill)
  if not _is_int(options["chunk"]) or options["chunk"] < 1:
    _fail("pixel_removal", "chunk", f"must be a positive int; got {options['chunk']!r}")
  delta_k = options["delta_k"]
  if delta_k is not None and (not _is_int(delta_k) or delta_k < 0):
    _fail("pixel_removal", "delta_k", f"must be an int >= 0 (0: no delta); got {delta_k!r}")
  if options["score"] not in pixel_removal.SCORES:
    _fail("pixel_removal", "score", f"unknown score {options['score']!r}; valid: "
          f"{', '.join(pixel_removal.SCORES)}")
  if image_size is not None:
    height, width = image_size
    try:
      pixel_removal.check_removal_grid(int(height) * int(width), step=step,
                                       step_fraction=step_fraction, fraction=float(fraction))
    except ValueError as error:
      _fail("pixel_removal", "step_fraction" if step_fraction is not None else "step",
            f"{error} (images of {height}x{width})")


def _check_fill(fill) -> None:
  """A removal fill: a name of `REMOVAL_FILLS`, a finite number or per-channel numbers."""
  valid = f"{', '.join(REMOVAL_FILLS)}, a finite number or per-channel numbers"
  if isinstance(fill, str):
    if fill == "mean":
      _fail("pixel_removal", "fill", "'mean' is ambiguous: use 'batch_mean' (the per-channel "
            "mean of each evaluated batch, what 'mean' was) or 'dataset_mean' (the training "
            "split's mean, as the papers)")
    if fill not in REMOVAL_FILLS:
      _fail("pixel_removal", "fill", f"unknown fill {fill!r}; valid: {valid}")
  elif not (_is_number(fill) or (isinstance(fill, (tuple, list)) and fill
                                 and all(_is_number(v) for v in fill))):
    _fail("pixel_removal", "fill", f"must be one of {valid}; got {fill!r}")


# --------------------------------------------------------------------------------------------
# Scoring: one function per family, traced inside the evaluation's jit. The operations and
# their order are those of the recorded evaluations: changing them changes recorded bytes.


def _score_five_band(inputs: ScoringInputs, options: Mapping[str, Any]) -> FamilyScores:
  """Five-band summary columns of both threshold settings on the raw attributions, and the
  ROC sums (recall and FPR per threshold index) of the batch. The option `clamp` is where the
  clamped setting clips (`ground_truth.CLAMP_ORDERS`); the soft setting has no clip."""
  columns, roc = {}, {}
  for setting, suffix in FIVE_BAND_SETTINGS.items():
    scores = ground_truth.five_band_scores(inputs.attributions, inputs.heatmap,
                                           thresholds=setting, clamp_order=options["clamp"])
    for column, values in ground_truth.five_band_summary(scores).items():
      columns[column + suffix] = values
    roc[setting] = (scores.recall.sum(0), scores.fpr.sum(0))
  return FamilyScores(columns=columns, roc=roc, curves={})


def _score_iou(inputs: ScoringInputs, options: Mapping[str, Any]) -> FamilyScores:
  """IOU and IOU* of the maps against the mask."""
  columns = {
      "iou": ground_truth.iou(inputs.maps, inputs.mask, n_std=options["n_std"],
                              abs=options["abs"]),
      "iou_star": ground_truth.iou_star(inputs.maps, inputs.mask, n_std=options["n_std_star"],
                                        abs=options["abs"]),
  }
  return FamilyScores(columns=columns, roc={}, curves={})


def _score_pixel_removal(inputs: ScoringInputs, options: Mapping[str, Any]) -> FamilyScores:
  """The DeepMaps set from full MoRF and LeRF curves, the Eq. 9 deltas against the maps of
  `delta_k` other images (`inputs.other_maps`; `pixel_removal.shared_curve_delta`) and the
  curve sums."""
  k = int(options["delta_k"] or 0)
  other_maps = inputs.other_maps
  if k and (other_maps is None or other_maps.shape[1] != k):
    raise ValueError(f"pixel_removal with delta_k = {k} needs the maps of {k} other images "
                     f"per image (other_maps [N, {k}, H, W]); got "
                     f"{None if other_maps is None else tuple(other_maps.shape)}")
  result = pixel_removal.shared_curve_delta(
      inputs.model, inputs.variables, inputs.images, inputs.maps,
      other_maps=other_maps if k else None, fraction=options["fraction"],
      step=options["step"], step_fraction=options["step_fraction"], fill=options["fill"],
      score=options["score"], chunk=options["chunk"])
  columns = dict(result.own)
  if result.delta is not None:
    columns.update({delta_column(name): values for name, values in result.delta.items()})
  curves = {}
  for order, curve in result.curves.items():
    scores = curve.scores.astype(jnp.float32)
    curves[order] = {
        "fraction": curve.fractions, "score_sum": scores.sum(0),
        "drop_sum": (scores[:, :1] - scores).sum(0),
        "flip_sum": (curve.labels != curve.labels[:, :1]).sum(0).astype(jnp.float32)}
  return FamilyScores(columns=columns, roc={}, curves=curves)


# --------------------------------------------------------------------------------------------
# The registry.


_FAMILIES: dict[str, Family] = {
    "five_band": Family(
        name="five_band",
        description="five-band accuracy, recall and precision against the ground-truth "
                    "heatmap over two threshold settings (Tjoa & Guan)",
        ground_truth=("heatmap",), defaults=types.MappingProxyType({"clamp": "code"}),
        check=_check_five_band, score=_score_five_band),
    "iou": Family(
        name="iou",
        description="IOU and IOU* of the thresholded map with the object mask (Gattas)",
        ground_truth=("mask", "heatmap"),
        defaults=types.MappingProxyType({"n_std": 0.5, "n_std_star": 1.0, "abs": True}),
        check=_check_iou, score=_score_iou),
    "pixel_removal": Family(
        name="pixel_removal",
        description="AOPC, AFOC and pixels-to-flip from MoRF / LeRF perturbation curves, "
                    "with the DeepMaps delta (Samek et al.; Srinivas & Fleuret; DeepMaps)",
        ground_truth=(),
        defaults=types.MappingProxyType({"fraction": 0.1, "step": None, "step_fraction": None,
                                         "fill": "batch_mean", "chunk": 4, "delta_k": 5,
                                         "score": "logit"}),
        check=_check_pixel_removal, score=_score_pixel_removal),
}
FAMILIES: Mapping[str, Family] = types.MappingProxyType(_FAMILIES)
"""Every metric family by name, in the order an evaluation computes them (read-only view;
`register` adds to it)."""

FAMILY_NAMES: tuple[str, ...] = tuple(FAMILIES)
"""The built-in families."""

_FIVE_BAND_TEXT = {"A": "five-band accuracy", "R": "five-band recall",
                   "P": "five-band precision"}
_FIVE_BAND_STATISTIC = {"mu": "mean over the thresholds", "u": "at the best threshold"}
_FIVE_BAND_SETTING_TEXT = {"soft": "soft thresholds", "clamped": "clamped setting"}


def delta_column(name: str) -> str:
  """The column of the DeepMaps Eq. 9 delta of metric `name`: `delta_<name>`."""
  return f"delta_{name}"


def _declare() -> dict[str, Metric]:
  """Every column, in the order reports list them."""
  metrics: list[Metric] = []
  for setting, suffix in FIVE_BAND_SETTINGS.items():
    where = _FIVE_BAND_SETTING_TEXT[setting]
    for letter, text in _FIVE_BAND_TEXT.items():
      for statistic, how in _FIVE_BAND_STATISTIC.items():
        metrics.append(Metric(
            f"{letter}{statistic}{suffix}", "five_band", True,
            f"{text} vs the ground truth, {how} ({where}; Tjoa & Guan)",
            ("attributions", "heatmap")))
      metrics.append(Metric(
          f"{letter}u1{suffix}", "five_band", None,
          f"index of the threshold giving the best {text} ({where}); not a score",
          ("attributions", "heatmap"), reduce=None))
  map_and_mask = ("map", "mask")
  metrics += [
      Metric("iou", "iou", True,
             "pixel-wise IOU of the thresholded |map| with the object mask (Gattas)",
             map_and_mask),
      Metric("iou_star", "iou", True,
             "IOU* of Gattas: attribution-weighted intersection over union", map_and_mask),
  ]
  removal = ("map", "model")
  scores = [
      # AOPC: the mean drop of the predicted-class score while the most relevant pixels go
      # (Samek et al.): a better map makes it fall faster.
      Metric("aopc", "pixel_removal", True,
             "area over the MoRF perturbation curve (Samek et al.)", removal),
      # AFOC after MoRF removal: a better map changes the output more (Srinivas & Fleuret).
      Metric("afoc_morf", "pixel_removal", True,
             "absolute fractional output change after removing the most relevant pixels "
             "(Srinivas & Fleuret)", removal),
      # AFOC after LeRF removal: a better map leaves the output as it was.
      Metric("afoc_lerf", "pixel_removal", False,
             "absolute fractional output change after removing the least relevant pixels",
             removal),
      # n_MoRF: a better map flips the decision after fewer pixels (DeepMaps App. B).
      Metric("n_morf", "pixel_removal", False,
             "fraction of pixels removed, most relevant first, until the decision changes "
             "(DeepMaps)", removal),
      # n_LeRF: a better map keeps the decision for more pixels.
      Metric("n_lerf", "pixel_removal", True,
             "fraction of pixels removed, least relevant first, until the decision changes "
             "(DeepMaps)", removal),
  ]
  metrics += scores
  metrics += [
      Metric("flipped_morf", "pixel_removal", True,
             "share of samples whose decision changed under MoRF removal", removal),
      Metric("flipped_lerf", "pixel_removal", False,
             "share of samples whose decision changed under LeRF removal", removal),
  ]
  # DeepMaps Eq. 9: own map minus other images' maps, so the base metric's direction.
  by_name = {m.name: m for m in scores}
  for name in pixel_removal.DELTA_METRICS:
    base = by_name[name]
    metrics.append(Metric(
        delta_column(name), "pixel_removal", base.higher_is_better,
        f"DeepMaps delta (Eq. 9) of {name}: own map minus other images' maps",
        (*removal, "other_maps"), delta_of=name))
  return {m.name: m for m in metrics}


_METRICS: dict[str, Metric] = _declare()
METRICS: Mapping[str, Metric] = types.MappingProxyType(_METRICS)
"""Every metric column by name, in the order reports list them (read-only view; `register`
adds to it)."""


def register(new_family: Family, metrics: Sequence[Metric]) -> None:
  """Adds a family of metrics and its columns, so that every evaluation, report and config
  check knows them (`docs/architecture.md`, "How to add a metric").

  Args:
    new_family: the `Family`; its `score` returns one `[N]` column per metric in `metrics`.
    metrics: its columns, each with `family == new_family.name`.

  Raises:
    ValueError: the family or a column is already registered, a column names another
      family, an input is not one of `INPUTS`, or a reduction is not one of `REDUCTIONS`.
  """
  if new_family.name in _FAMILIES:
    raise ValueError(f"metric family {new_family.name!r} is already registered")
  if not metrics:
    raise ValueError(f"metric family {new_family.name!r} needs at least one Metric column")
  for metric in metrics:
    if metric.name in _METRICS:
      raise ValueError(f"metric {metric.name!r} is already registered (family "
                       f"{_METRICS[metric.name].family!r})")
    if metric.family != new_family.name:
      raise ValueError(f"metric {metric.name!r} names family {metric.family!r}, not "
                       f"{new_family.name!r}")
    unknown = [i for i in metric.inputs if i not in INPUTS]
    if unknown:
      raise ValueError(f"metric {metric.name!r}: unknown inputs {unknown}; valid: "
                       f"{', '.join(INPUTS)}")
    if metric.reduce is not None and metric.reduce not in REDUCTIONS:
      raise ValueError(f"metric {metric.name!r}: unknown reduction {metric.reduce!r}; valid: "
                       f"{', '.join(REDUCTIONS)}")
  _FAMILIES[new_family.name] = new_family
  _METRICS.update((m.name, m) for m in metrics)


def unregister(name: str) -> None:
  """Removes a family added by `register`, with its columns (tests; the built-ins stay).

  Raises:
    ValueError: an unknown or built-in family.
  """
  if name in FAMILY_NAMES or name not in _FAMILIES:
    raise ValueError(f"{name!r} is not a registered family other than the built-in "
                     f"{', '.join(FAMILY_NAMES)}")
  del _FAMILIES[name]
  for column in [c for c, m in _METRICS.items() if m.family == name]:
    del _METRICS[column]


# --------------------------------------------------------------------------------------------
# Look-ups.


def get(name: str) -> Metric:
  """The `Metric` of column `name`.

  Raises:
    ValueError: for an unknown name (the message lists the valid ones).
  """
  if name not in METRICS:
    raise ValueError(f"unknown metric {name!r}; valid: {', '.join(METRICS)}")
  return METRICS[name]


def direction(name: str) -> bool | None:
  """`higher_is_better` of column `name`: True, False, or None for a non-score.

  Raises:
    ValueError: for an unknown name.
  """
  return get(name).higher_is_better


def score_direction(name: str) -> bool:
  """`higher_is_better` of a score column (what rankings and win rates need).

  Raises:
    ValueError: for an unknown name, or a column that is not a score (e.g. `Au1`).
  """
  higher = direction(name)
  if higher is None:
    raise ValueError(f"metric {name!r} is not a score ({get(name).description}): it has no "
                     "direction to rank methods by")
  return higher


def scores() -> tuple[str, ...]:
  """The columns that are scores (direction not None), in registry order."""
  return tuple(name for name, m in METRICS.items() if m.higher_is_better is not None)


def family(name: str) -> Family:
  """The `Family` called `name`.

  Raises:
    ValueError: for an unknown name (the message lists the valid ones).
  """
  if name not in FAMILIES:
    raise ValueError(f"unknown metric family {name!r}; valid: {', '.join(FAMILIES)}")
  return FAMILIES[name]


def _check_families(families: Sequence[str]) -> tuple[str, ...]:
  if isinstance(families, str):
    raise ValueError(f"metrics must be a sequence of family names, not the string "
                     f"{families!r}; valid names: {', '.join(FAMILIES)}")
  unknown = [m for m in families if m not in FAMILIES]
  if unknown:
    raise ValueError(f"unknown metrics {unknown}; valid: {', '.join(FAMILIES)}")
  return tuple(families)


def check_options(families: Sequence[str],
                  metric_options: Mapping[str, Mapping[str, Any]] | None = None, *,
                  image_size: tuple[int, int] | None = None
                  ) -> tuple[tuple[str, ...], dict[str, dict[str, Any]]]:
  """Checks family names and options, with the defaults filled in, before any work.

  Option names are checked for every family; values for the families in `families`. With
  `image_size`, the pixel-removal grid is checked against it
  (`pixel_removal.check_removal_grid`: a `step` above `fraction` of the pixels leaves AOPC
  and AFOC 0 for every image; a `fraction` between two grid points is refused).

  Args:
    families: names of `FAMILIES` (what `evaluate(metrics=...)` takes).
    metric_options: `{family: {option: value}}`; missing options take `Family.defaults`.
    image_size: `(H, W)` of the evaluated images, when known.

  Returns:
    `(families, {family: options})` with an entry, defaults filled in, for every family of
    `FAMILIES` (not only those in `families`).

  Raises:
    ValueError: an unknown family or option, or a bad value; the message names the family
      and the option (`metric_options.<family>.<option>`).
  """
  families = _check_families(families)
  metric_options = dict(metric_options or {})
  bad = [m for m in metric_options if m not in FAMILIES]
  if bad:
    raise ValueError(f"metric_options for unknown metrics {bad}; valid: {', '.join(FAMILIES)}")
  resolved = {}
  for name, spec in FAMILIES.items():
    given = dict(metric_options.get(name) or {})
    extra = sorted(set(given) - set(spec.defaults))
    if extra:
      raise ValueError(f"unknown {name} options {extra}; valid: {sorted(spec.defaults)}")
    resolved[name] = {**spec.defaults, **given}
  for name in FAMILIES:
    if name in families:
      FAMILIES[name].check(resolved[name], image_size)
  return families, resolved


def delta_k(families: Sequence[str], options: Mapping[str, Mapping[str, Any]]) -> int:
  """The K of the DeepMaps delta (`delta_k` of the pixel-removal options; 0 without it).

  The evaluated set then needs more than K images (each map is compared with the maps of K
  other images of the set; `runner.check_shards`).

  Args:
    families: the evaluated families.
    options: `{family: options}` as returned by `check_options`.
  """
  if "pixel_removal" not in families:
    return 0
  return int(options.get("pixel_removal", {}).get("delta_k") or 0)


def columns(families: Sequence[str] | None = None,
            options: Mapping[str, Mapping[str, Any]] | None = None) -> tuple[str, ...]:
  """The metric columns an evaluation of `families` with `options` writes, in registry order.

  The `delta_<metric>` columns are there only with `delta_k > 0`.

  Args:
    families: family names.
    options: `metric_options` (`{family: {option: value}}`); defaults fill in the rest.

  Raises:
    ValueError: as `check_options`.
  """
  families, resolved = check_options(tuple(FAMILIES) if families is None else families,
                                     options)
  with_delta = delta_k(families, resolved) > 0
  return tuple(name for name, m in METRICS.items()
               if m.family in families and (m.delta_of is None or with_delta))
