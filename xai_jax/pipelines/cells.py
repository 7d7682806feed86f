r"""Tjoa & Guan's workflow on the synthetic cells, end to end.

E. Tjoa and C. Guan, "Quantifying Explainability of Saliency Methods in Deep Neural Networks",
arXiv:2009.02899; with the pixel-removal metrics and statistics across methods of DeepMaps
(A. Grabska-Barwinska et al., "Towards Better Visual Explanations for Deep Image Classifiers",
2021). `run(config, workdir)` does, with `config` from `configs/cells.py`:

1. Data: the synthetic cells, regenerated on the fly from the dataset key
   (`data.source="generator"`) or built once as the TFDS dataset `xai_cells` and read from
   disk (`"tfds"`).
2. Training: a base model in continuous mode, then `num_branches` branches in regular-
   evaluation mode with early stopping (`xai_jax.train`); orbax checkpoints under
   `WORKDIR/train`, so an interrupted run resumes mid-training.
3. Test accuracy of every model (`accuracy.csv`).
4. Every configured explainer on the test split, every configured metric
   (`xai_jax.runner.evaluate`: five-band average / best / clamped, IOU/IOU*, the DeepMaps
   pixel-removal set with delta), resumable per shard. The removal fill "dataset_mean" (the
   default) is the training split's mean RGB, computed once here
   (`training_data.resolve_dataset_mean`), so no score depends on the shard it is computed in.
5. Tables: `samples.csv` (one row per test image x model x method), `roc.csv`, `curves.csv`,
   `summary.csv` / `summary.md` (one row per model x method, one column per metric), and
   statistics across methods under `stats/` (win rates, Wilcoxon p-values, Krippendorff's
   ordinal alpha of the method rankings over all test images, Spearman correlations between
   the metrics per method; `reports.method_statistics`).
6. Figures under `figures/` and `report.md` linking everything.

The config is validated first (`validate`: methods and their options, metrics and their
options, shard sizes against the pixel-removal delta, ...), so a bad config fails in a second,
before any data generation or training, and leaves nothing in the workdir.

Training and evaluation share the workdir as `xai_jax.pipelines.workdir` describes: the
trained models (`WORKDIR/train`, recorded in `WORKDIR/train_config.json`) depend only on the
training fields (`TRAINING_FIELDS`: seed, the training data, model and training settings); a
run whose training fields differ is refused. Every other field (methods, metrics,
`evaluate.*`, `data.num_test`, dtype) may change on a trained workdir: the models are reused,
and the outputs of a new evaluation config go to `WORKDIR/eval_<hash>/` (printed), the first
one's staying in `WORKDIR` itself. With `dtype="bfloat16"` the evaluation (models, explainers,
metrics) runs in bfloat16 and writes to `WORKDIR/bfloat16/`. Rerunning a config skips
everything already done.
"""

from __future__ import annotations

import json
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
import pandas as pd

from xai_jax import files, models, reports, runner, train
from xai_jax.data import cell_source
from xai_jax.data import cells
from xai_jax.data import tfds_cells
from xai_jax.metrics import registry
from xai_jax.models import port
from xai_jax.pipelines import training_data
from xai_jax.pipelines import workdir as workdir_layout

# Metric columns that get win-rate statistics (directions: `metrics.registry`).
STAT_METRICS = ("Amu", "Pmu", "Rmu", "Amu_clamp", "iou", "iou_star", "aopc", "afoc_lerf",
                "n_morf", "n_lerf", "delta_aopc")
# The columns of the short summary (`summary.md`, the report and the README); `summary.csv`
# has every metric.
SHORT_SUMMARY = ("Amu", "Rmu", "Pmu", "Amu_clamp", "iou", "iou_star", "aopc", "afoc_lerf",
                 "n_morf", "n_lerf", "delta_aopc")
# Config fields that define the trained models (shared by every evaluation in a workdir), and
# fields that may change between runs sharing an output folder (they do not change results).
TRAINING_FIELDS = ("seed", "data.source", "data.tfds_dir", "data.size", "data.num_train",
                   "data.num_validation", "data.shard_size", "model", "train")
_VOLATILE_FIELDS = ("figures",)
DATA_SOURCES = ("generator", "tfds")
DTYPES = ("float32", "bfloat16")
NUM_CLASSES = len(cells.CLASS_NAMES)


# --------------------------------------------------------------------------------------------
# Data.


def _sources(config, workdir: pathlib.Path) -> dict[str, Any]:
  """Random-access sources of the three splits (generator or TFDS)."""
  data = config.data
  counts = {"train": data.num_train, "validation": data.num_validation, "test": data.num_test}
  if data.source == "generator":
    key = jax.random.key(config.seed)
    return {split: cell_source.source(split, size=data.size, key=key, num_examples=count)
            for split, count in counts.items()}
  if data.source == "tfds":
    tfds_dir = data.tfds_dir or str(workdir / "tfds")
    tfds_cells.build(tfds_dir, config=str(data.size))
    return {split: tfds_cells.load(f"{split}[:{count}]", config=str(data.size),
                                   data_dir=tfds_dir)
            for split, count in counts.items()}
  raise ValueError(f"unknown data.source {data.source!r}; valid: 'generator', 'tfds'")


# --------------------------------------------------------------------------------------------
# Training.


def _optimizer(config, *, learning_rate: float, steps: int) -> optax.GradientTransformation:
  t = config.train
  if t.schedule == "constant":
    schedule = learning_rate
  elif t.schedule == "cosine":
    if steps < 1:
      raise ValueError("train.schedule='cosine' needs a step limit (train.base_max_steps > 0)")
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, learning_rate, min(t.warmup_steps, steps - 1), steps, 0.02 * learning_rate)
  else:
    raise ValueError(f"unknown train.schedule {t.schedule!r}; valid: 'cosine', 'constant'")
  return train.make_optimizer(learning_rate=schedule, weight_decay=t.weight_decay)


def train_models(config, workdir: pathlib.Path, sources, model, *, progress: bool = True
                 ) -> dict[str, dict]:
  """Trains (or resumes) the base model and its branches; returns `{name: variables}`."""
  t, data = config.train, config.data
  train_shards = training_data.TrainingShards(sources["train"], data.shard_size)
  validation_shards = training_data.TrainingShards(sources["validation"], data.shard_size)
  base_steps = t.base_max_steps or t.base_epochs * sum(
      -(-size // t.batch_size) for size in train_shards.sizes())  # counted, not loaded
  base_tx = _optimizer(config, learning_rate=t.learning_rate, steps=base_steps)
  key = jax.random.key(config.seed)
  init_key, base_key, branch_key = jax.random.split(jax.random.fold_in(key, 1), 3)
  state = train.init_train_state(model, tx=base_tx, key=init_key,
                                 input_shape=(1, data.size, data.size, 3))
  if config.model.init:  # Tjoa & Guan: fine-tune ImageNet weights, every layer trained
    variables, _ = initial_variables(config.model.init, state.variables)
    state = state.replace(params=variables["params"],
                          batch_stats=variables.get("batch_stats", {}),
                          opt_state=base_tx.init(variables["params"]))
  base = train.train_continuous(
      model, state, train_shards.get, num_shards=train_shards.num_shards, tx=base_tx,
      epochs=t.base_epochs, batch_size=t.batch_size, key=base_key,
      workdir=workdir / "train" / "base",
      checkpoint_every=t.checkpoint_every or None, max_steps=t.base_max_steps or None,
      progress=progress)
  trained = {"base": base.state.variables}
  if t.num_branches:
    branch_tx = train.make_optimizer(learning_rate=t.branch_learning_rate,
                                     weight_decay=t.weight_decay)
    max_steps = (int(base.state.step) + t.branch_max_steps) if t.branch_max_steps else None
    branches = train.train_branches(
        model, base.state, train_shards.get, validation_shards.get, tx=branch_tx,
        key=branch_key, num_branches=t.num_branches, workdir=workdir / "train",
        num_shards=train_shards.num_shards,
        num_validation_shards=validation_shards.num_shards, epochs=t.branch_epochs,
        batch_size=t.batch_size, patience=t.patience, refresh_fraction=t.refresh_fraction,
        target_accuracy=t.target_accuracy, eval_every=t.eval_every,
        checkpoint_every=t.checkpoint_every or None, max_steps=max_steps, progress=progress)
    for i, result in enumerate(branches):
      trained[f"branch_{i}"] = result.best if result.best is not None else result.state.variables
  return trained


def mean_branch_accuracy(accuracy: pd.DataFrame) -> float | None:
  """The test accuracy averaged over the branch models (`branch_*` rows), Tjoa & Guan Table
  I's <Acc.>; None without branches."""
  branches = accuracy[accuracy["model"].astype(str).str.startswith("branch_")]
  return float(branches["accuracy"].mean()) if len(branches) else None


def initial_variables(init: str, fresh: dict) -> tuple[dict, str]:
  """The start of Tjoa & Guan's fine-tuning: `fresh` (the cells model's initial variables)
  with every variable the ported ImageNet weights in folder `init` (`experiments.port_weights`)
  have at the same path and shape (`port.transplant`): the features, and the ImageNet head's
  layers the cells head keeps; the rest (the 10-class layer) stays fresh.

  Returns:
    `(variables, description)`, the description naming the layers kept fresh.
  """
  _, ported = port.load(init)
  variables, taken, kept = port.transplant(ported, fresh)
  return variables, (f"{len(taken)} of {len(taken) + len(kept)} variables from {init}; "
                     f"fresh: {', '.join(kept) or 'none'}")


def check_init(config) -> None:
  """Checks `model.init` (a folder of `experiments.port_weights`, or "" to train from scratch)
  without reading the weights: its `model.json` is readable and names `model.name`'s
  architecture.

  Raises:
    ValueError: naming `model.init`.
  """
  init = config.model.init
  if not init:
    return
  try:
    meta = port.read_metadata(init)
  except (OSError, ValueError, files.DamagedFileError) as error:
    raise ValueError(f"model.init: {init!r} is not a folder of ported weights "
                     f"(experiments.port_weights --arch={config.model.name} --out=DIR): "
                     f"{error}") from None
  if meta["arch"] != config.model.name:
    raise ValueError(f"model.init: {init!r} holds {meta['arch']!r} weights; model.name is "
                     f"{config.model.name!r} (port the weights of that architecture)")


def accuracy_table(model, trained: dict[str, dict], source, *, batch_size: int) -> pd.DataFrame:
  """Test accuracy of every trained model."""
  test_shards = training_data.TrainingShards(source, batch_size)
  rows = []
  for name, variables in trained.items():
    accuracy = train.evaluate(model, variables, test_shards)
    rows.append({"model": name, "split": "test", "accuracy": float(accuracy),
                 "num_examples": len(source)})
  return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# Statistics across methods.


def method_statistics(samples: pd.DataFrame, out_dir: pathlib.Path, *, key) -> pd.DataFrame:
  """Win rates, Wilcoxon p-values, Krippendorff's alpha and Spearman correlations per model.

  Writes `out_dir/win_rates.csv` (model, metric, method, opponent, win_rate, images: the
  fraction of the images where `method` beats `opponent`, ties half, in [0, 1];
  `reports.pairwise_win_rates`) and, through `reports.method_statistics` (DeepMaps appendix
  C), `out_dir/wilcoxon.csv`, `out_dir/krippendorff_alpha.csv` and `out_dir/spearman.csv`
  over `STAT_METRICS`. Alpha here is the ordinal alpha of the rankings over all test images,
  once (`alpha_images=0`), not the paper's mean over 50 draws of 500 images (which
  `pipelines.pixel_removal` computes).

  Returns:
    The alpha table (`reports.statistics.ALPHA_COLUMNS`).
  """
  metrics = [m for m in STAT_METRICS if m in samples.columns]
  files.write_table(reports.pairwise_win_rates(samples, metrics=metrics),
                    out_dir / "win_rates.csv")
  return reports.method_statistics(samples, out_dir, metrics=metrics, key=key, alpha_images=0,
                                   alpha_draws=1, alpha_level="ordinal").alpha


# --------------------------------------------------------------------------------------------
# The run.


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks the whole config in milliseconds, before any data generation or training.

  Raises:
    ValueError: naming the bad field: an unknown data source, dtype, model or schedule;
      sizes or counts out of range (`evaluate.num_examples` beyond `data.num_test`);
      `evaluate.models` that are not trained; an unknown method or option, or a bad option
      value (`runner.check_methods`); an unknown metric or option, or a pixel-removal `step`
      above `fraction` of the pixels (`registry.check_options`); no more evaluated images
      than the pixel-removal delta's K (`runner.check_shards`).
  """
  data, t, ev = config.data, config.train, config.evaluate
  if data.source not in DATA_SOURCES:
    raise ValueError(f"unknown data.source {data.source!r}; valid: {', '.join(DATA_SOURCES)}")
  if config.dtype not in DTYPES:
    raise ValueError(f"unknown dtype {config.dtype!r}; valid: {', '.join(DTYPES)}")
  for field in ("size", "num_train", "num_validation", "num_test", "shard_size"):
    if not isinstance(data[field], int) or data[field] < 1:
      raise ValueError(f"data.{field} must be a positive int; got {data[field]!r}")
  if data.source == "tfds":
    for field, split in (("num_train", "train"), ("num_validation", "validation"),
                         ("num_test", "test")):
      available = cell_source.SPLITS[split] * cell_source.SHARD_SIZE
      if data[field] > available:
        raise ValueError(f"data.{field} = {data[field]} exceeds the {available} images of the "
                         f"xai_cells {split} split")
  if config.model.name not in models.NAMES:
    raise ValueError(f"unknown model.name {config.model.name!r}; valid: "
                     f"{', '.join(models.NAMES)}")
  check_init(config)
  if t.schedule not in ("cosine", "constant"):
    raise ValueError(f"unknown train.schedule {t.schedule!r}; valid: 'cosine', 'constant'")
  trained = ("base", *(f"branch_{i}" for i in range(t.num_branches)))
  unknown = [m for m in ev.models if m not in trained]
  if unknown or not ev.models:
    raise ValueError(f"evaluate.models {list(unknown or ev.models)} are not trained: valid "
                     f"are {', '.join(trained)} (train.num_branches = {t.num_branches})")
  unknown = [m for m in ev.pixel_removal_models if m not in ev.models]
  if unknown:
    raise ValueError(f"evaluate.pixel_removal_models {unknown} are not in evaluate.models "
                     f"{list(ev.models)}")
  if not isinstance(ev.num_examples, int) or not 0 <= ev.num_examples <= data.num_test:
    raise ValueError(f"evaluate.num_examples must be in 0..data.num_test = {data.num_test} "
                     f"(0: all); got {ev.num_examples!r}")
  if not isinstance(ev.gallery_size, int) or ev.gallery_size < 0:
    raise ValueError(f"evaluate.gallery_size must be an int >= 0; got {ev.gallery_size!r}")
  runner.check_methods(_methods(config))
  metrics, options = registry.check_options(tuple(config.metrics), _metric_options(config),
                                            image_size=(data.size, data.size))
  try:
    runner.check_shards(ev.num_examples or data.num_test, ev.shard_size,
                        delta_k=registry.delta_k(metrics, options), available=data.num_test)
  except ValueError as error:
    raise ValueError(f"evaluate.num_examples / evaluate.shard_size: {error}") from None


def _methods(config) -> dict[str, dict]:
  return {name: dict(options) for name, options in config.methods.items()}


def _metric_options(config) -> dict[str, dict]:
  """The config's `metric_options`; a pixel-removal `step` or `step_fraction` of 0 is unset
  (`training_data.unset_zero_grid`)."""
  options = {k: dict(v) for k, v in config.metric_options.items()}
  if "pixel_removal" in options:
    options["pixel_removal"] = training_data.unset_zero_grid(options["pixel_removal"])
  return options


def check_workdir(config, workdir: pathlib.Path) -> pathlib.Path:
  """Records the training fields (refusing other ones) and returns the evaluation folder.

  The folder is `WORKDIR` (float32) or `WORKDIR/bfloat16`, or `WORKDIR/eval_<hash>` when that
  holds another evaluation config (`workdir.evaluation_folder`), so every evaluation reuses
  the trained models and no output folder mixes results of two configs.
  """
  current = json.loads(config.to_json())
  workdir_layout.check_training(workdir, current, TRAINING_FIELDS)
  default = workdir if config.dtype == "float32" else workdir / config.dtype
  return workdir_layout.evaluation_folder(workdir, current, default=default,
                                         ignore=_VOLATILE_FIELDS)


def run(config: ml_collections.ConfigDict, workdir, *, progress: bool = True) -> dict[str, Any]:
  """Runs (or resumes) the whole experiment; returns the tables and the report path.

  Args:
    config: from `configs/cells.py` (`get_config(variant)`), checked by `validate`.
    workdir: the output folder (a rerun resumes).
    progress: show progress bars.

  Returns:
    `{"accuracy", "samples", "roc", "curves", "summary": DataFrame, "branch_accuracy": the
    branches' mean test accuracy (Tjoa & Guan Table I; None without branches), "report":
    path of report.md, "figures": {caption: path}, "model": the float32 Flax module,
    "variables": {model name: trained variables}}`; the tables are those written to the evaluation folder
    (`check_workdir`).

  Raises:
    ValueError: a bad config (`validate`; nothing is written then), or a workdir whose
      trained models come from other training fields.
  """
  started = time.perf_counter()
  validate(config)
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  out = check_workdir(config, workdir)

  sources = _sources(config, workdir)
  options = dict(config.model.options)
  model = models.get(config.model.name, num_classes=NUM_CLASSES, **options)
  trained = train_models(config, workdir, sources, model, progress=progress)
  accuracy = accuracy_table(model, trained, sources["test"], batch_size=config.evaluate.shard_size)
  files.write_table(accuracy, out / "accuracy.csv")
  print(f"test accuracy:\n{accuracy.to_string(index=False)}", flush=True)
  branch_accuracy = mean_branch_accuracy(accuracy)
  accuracy_note = ("" if branch_accuracy is None else
                   f"Mean test accuracy of the {config.train.num_branches} branches (Tjoa & "
                   f"Guan Table I, <Acc.>): {branch_accuracy:.3f}. ")

  eval_model = models.get(config.model.name, num_classes=NUM_CLASSES,
                          dtype=jnp.dtype(config.dtype), **options)
  methods = _methods(config)
  # fill "dataset_mean" (the default): the training split's mean RGB, computed once here, so
  # that no image's removal scores depend on its shard (DeepMaps App. B).
  metric_options = _metric_options(config)
  removal_note = ""
  if "pixel_removal" in config.metrics:
    metric_options = training_data.resolve_dataset_mean(
        metric_options,
        lambda: training_data.TrainingShards(sources["train"], config.data.shard_size))
    removal_note = "Pixel-removal fill: " + training_data.describe_fill(
        config.metric_options.pixel_removal.fill, metric_options["pixel_removal"]["fill"]) + ". "
    print(removal_note, flush=True)
  results = {}
  removal_models = tuple(config.evaluate.pixel_removal_models) or tuple(config.evaluate.models)
  for i, name in enumerate(config.evaluate.models):
    metrics = tuple(m for m in config.metrics if m != "pixel_removal" or name in removal_models)
    results[name] = runner.evaluate(
        out, source=sources["test"], model=eval_model, variables=trained[name],
        methods=methods, metrics=metrics, metric_options=metric_options,
        shard_size=config.evaluate.shard_size,
        num_examples=config.evaluate.num_examples or None,
        key=jax.random.fold_in(jax.random.key(config.seed), 1000 + i), model_name=name,
        progress=progress, gallery_size=config.evaluate.gallery_size)
  samples = pd.concat([r.samples for r in results.values()], ignore_index=True)
  roc = pd.concat([r.roc for r in results.values()], ignore_index=True)
  curves = pd.concat([r.curves for r in results.values()], ignore_index=True)
  for frame, name in ((samples, "samples"), (roc, "roc"), (curves, "curves")):
    files.write_table(frame, out / f"{name}.csv")
  files.write_table(reports.summary_table(samples, accuracy=accuracy), out / "summary.csv")
  summary = reports.summary_table(
      samples, accuracy=accuracy, metrics=[m for m in SHORT_SUMMARY if m in samples.columns])
  (out / "summary.md").write_text(reports.to_markdown(summary) + "\n")
  alpha = method_statistics(samples, out / "stats",
                            key=jax.random.fold_in(jax.random.key(config.seed), 2000))

  figures = {}
  if config.figures:
    figures = make_figures(results, samples, roc, curves, out / "figures")
  alpha = alpha[alpha["methods"] == "all"]
  first = alpha[alpha["model"] == alpha["model"].iloc[0]] if len(alpha) else alpha
  notes = (f"Evaluation dtype {config.dtype}; {len(samples)} (image, model, method) rows. "
           f"{accuracy_note}{removal_note}"
           "Krippendorff's alpha of the per-image method rankings (1 = every image ranks the "
           "methods alike): " + ", ".join(f"{r.metric} {r.alpha:.2f}"
                                           for r in first.itertuples()) +
           f" ({first['model'].iloc[0] if len(first) else '-'}); statistics in stats/. "
           f"Wall time of this invocation: {time.perf_counter() - started:.0f} s.")
  report_path = reports.write_report(out, title=f"Cells experiment ({config.model.name}, "
                                     f"{config.data.size}x{config.data.size})",
                                     summary=summary, accuracy=accuracy, figures=figures,
                                     config=json.loads(config.to_json()), notes=notes)
  return {"accuracy": accuracy, "branch_accuracy": branch_accuracy, "samples": samples,
          "roc": roc, "curves": curves, "summary": summary, "report": report_path,
          "figures": figures, "model": model, "variables": trained}


def make_figures(results, samples, roc, curves, folder: pathlib.Path) -> dict[str, pathlib.Path]:
  """Every figure of the report; returns `{caption: path}`."""
  folder.mkdir(parents=True, exist_ok=True)
  figures = {}
  for name, result in results.items():
    if result.gallery:
      figures[f"Heatmaps per method and class ({name}; Tjoa & Guan Fig. 5/6)"] = (
          reports.method_class_gallery(result.gallery, folder / f"gallery_{name}.png",
                                       title=f"{name}: saliency maps per class",
                                       class_names=cells.CLASS_NAMES))
  first = next(iter(results))
  if "Rmu" in samples.columns:
    figures[f"Recall vs precision per sample ({first}; Tjoa & Guan Fig. 3 A)"] = (
        reports.precision_recall_scatter(samples, folder / "recall_precision.png", model=first))
    figures["Recall vs precision per method and model: average, best and best clamped "
            "(Tjoa & Guan Fig. 3 A/B/C)"] = reports.recall_precision_points_figure(
                samples, folder / "recall_precision_points.png")
  if not roc.empty:
    figures[f"ROC over the soft thresholds ({first}; Tjoa & Guan Fig. 4)"] = (
        reports.roc_figure(roc, folder / "roc.png", model=first))
  if not curves.empty:
    figures[f"Perturbation curves ({first})"] = reports.perturbation_curves_figure(
        curves, folder / "perturbation_curves.png", model=first)
  first_samples = samples[samples["model"] == first]
  several_methods = first_samples["method"].nunique() >= 2
  for metric in ("aopc", "Amu"):
    if several_methods and metric in samples.columns and first_samples[metric].notna().all():
      figures[f"Win rates on {metric} ({first}; DeepMaps Fig. 7)"] = reports.win_rate_figure(
          samples, folder / f"win_rates_{metric}.png", metric=metric, model=first)
  return figures
