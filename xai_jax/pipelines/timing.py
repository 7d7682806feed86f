"""Seconds per 100 explanations: Gattas' timing study (thesis sec. 4.3.1, Fig. 4.2).

B. Gattas, "Evaluating Feature Attribution Methods" (thesis, University of Queensland, 2020),
Fig. 4.2: the time each method of the panel takes for 100 explanations, on each model
(VGG16, Inception v3, ResNet50 on a GTX 1080; Guided Grad-CAM took over 6000 s per 100 on
Inception v3, about 200 s without its guided-backprop factor). Here, for every model of
`config.models` and every method of `config.methods` (the runner's `{display name: options}`,
named baselines such as "train:N" included, `runner.explain_options`):

* the inputs are `batch_size` synthetic cells at the model's size (`xai_jax.data.cell_source`,
  the "test" split; the "train:N" references come from its "train" split), the model has
  random weights (`models.init`; the cost of a forward or backward pass does not depend on
  the weights) and the target is its predicted class;
* one warm-up call (it compiles; its wall time is the `first_call_s` column), then `repeats`
  timed calls, each ended by `block_until_ready`, so compilation is excluded; the table gives
  the median call's seconds scaled to 100 explanations, `seconds_per_100 = median * 100 /
  batch_size`.

Reference libraries (Captum, the `lime` package, `shap`) are optional: `run` takes them as
`references`, `{library: factory}`, where `factory(model_name, size, x, target, background,
methods)` returns `{display name: zero-argument call}` for the methods that library has, on a
torch model of the same architecture (see `experiments/timing.py`, which builds them from
`benchmarks.explainers`). They are timed the same way (one warm-up call, median of
`repeats`); a failing call is recorded in the `error` column instead of a time. This module
imports no torch.

`run(config, workdir)` writes, in WORKDIR:

* `config.json` (the config, checked by `validate` before anything is computed; a rerun with
  other fields writes to `WORKDIR/eval_<hash>/`, see `xai_jax.pipelines.workdir`);
* `timing.csv`: one row per (model, method, library that has the method): `model, size, method,
  library, device, batch_size, repeats, first_call_s, median_s, seconds_per_100, error`
  (`error`: a reference call that failed, then no time); each (model, method, library) is a
  shard under `shards/timing/`, so an interrupted run resumes at the first missing one (rows
  keep the `device` they were measured on);
* `timing.md` (one column per library) and `figures/timing.png` (Fig. 4.2's bar chart,
  seconds per 100 explanations, log scale, one group of bars per model and method);
* `report.md`.
"""

from __future__ import annotations

import functools
import json
import pathlib
import statistics
import sys
import time
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
from matplotlib.figure import Figure
import ml_collections
import numpy as np
import pandas as pd

from xai_jax import explain, files, models, reports, runner
from xai_jax.data import cell_source
from xai_jax.pipelines import workdir as workdir_layout

LIBRARY = "xai_jax"
COLUMNS = ("model", "size", "method", "library", "device", "batch_size", "repeats",
           "first_call_s", "median_s", "seconds_per_100", "error")

ReferenceFactory = Callable[..., Mapping[str, Callable[[], Any]]]


# --------------------------------------------------------------------------------------------
# Checks.


def validate(config) -> None:
  """Checks a timing config before anything is built or timed.

  Raises:
    ValueError: unknown models (listing the valid ones), sizes, batch size, repeats or
      explanations below 1, or a bad method or option (`runner.check_methods`).
  """
  if not config.models:
    raise ValueError("models: give {model name: image size}, e.g. {'vgg16': 224}")
  for name, size in config.models.items():
    if name not in models.NAMES:
      raise ValueError(f"models: unknown model {name!r}; valid: {', '.join(models.NAMES)}")
    if not isinstance(size, int) or size < 8:
      raise ValueError(f"models.{name}: the image size must be an int >= 8; got {size!r}")
  for field in ("batch_size", "repeats", "num_classes"):
    value = config[field]
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      raise ValueError(f"{field} must be a positive int; got {value!r}")
  runner.check_methods({k: dict(v) for k, v in config.methods.items()})


# --------------------------------------------------------------------------------------------
# Timing.


def block(tree) -> Any:
  """Waits for every JAX array of `tree` (asynchronous dispatch) and, when torch is already
  imported and uses CUDA, for its queued work; returns `tree`."""
  jax.block_until_ready(tree)
  torch = sys.modules.get("torch")
  if torch is not None and torch.cuda.is_available():
    torch.cuda.synchronize()
  return tree


def time_call(fn: Callable[[], Any], *, repeats: int) -> tuple[float, float]:
  """`(first_call_s, median_s)`: the wall seconds of a warm-up call of `fn` (compilation
  included) and the median of `repeats` further calls, each waited for (`block`)."""
  start = time.perf_counter()
  block(fn())
  first = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    block(fn())
    times.append(time.perf_counter() - start)
  return first, statistics.median(times)


def _inputs(config, size: int) -> tuple[np.ndarray, np.ndarray]:
  """`(x, references)`: `batch_size` test cells and the training cells "train:N" needs."""
  key = jax.random.key(config.seed)
  x = cell_source.source("test", size=size, key=key, num_examples=config.batch_size)
  x = np.asarray(x.get_batch(np.arange(config.batch_size))["image"], np.float32)
  needed = runner.training_references_needed(config.methods)
  references = np.zeros((0, size, size, 3), np.float32)
  if needed:
    train = cell_source.source("train", size=size, key=key, num_examples=needed)
    references = np.asarray(train.get_batch(np.arange(needed))["image"], np.float32)
  return x, references


def _plan(config, references: Mapping[str, ReferenceFactory]) -> list[tuple[str, str, str]]:
  """The rows to measure, in table order: (model, method, library)."""
  return [(name, method, library) for name in config.models for method in config.methods
          for library in (LIBRARY, *references)]


NOT_AVAILABLE = "not available"


@functools.lru_cache(maxsize=2)
def _prepared(config_json: str, model_name: str):
  """`(model, variables, x, target, x_np, background_np)` of one model (cached: every row of
  the model times the same inputs)."""
  config = ml_collections.ConfigDict(json.loads(config_json))
  size = config.models[model_name]
  x_np, background_np = _inputs(config, size)
  model = models.get(model_name, num_classes=config.num_classes)
  variables = models.init(model, jax.random.key(config.seed), (1, size, size, 3))
  x = jnp.asarray(x_np)
  target = jnp.argmax(model.apply(variables, x), axis=-1)
  return model, variables, x, target, x_np, background_np


def measure(config, model_name: str, method: str, library: str, *,
            references: Mapping[str, ReferenceFactory]) -> dict[str, Any]:
  """One row of `timing.csv` (see the module docstring); `error` is `NOT_AVAILABLE` when
  `library` has no such method."""
  size = config.models[model_name]
  row = {"model": model_name, "size": size, "method": method, "library": library,
         "device": str(jax.devices()[0].device_kind), "batch_size": config.batch_size,
         "repeats": config.repeats, "first_call_s": np.nan, "median_s": np.nan,
         "seconds_per_100": np.nan, "error": ""}
  model, variables, x, target, x_np, background_np = _prepared(config.to_json(), model_name)
  if library == LIBRARY:
    name, options = runner.check_methods({method: dict(config.methods[method])})[method]
    keys = runner.image_keys(jax.random.key(config.seed), method, np.arange(len(x_np)))
    options = runner.explain_options(name, options, x, keys, jnp.asarray(background_np))
    call = lambda: explain.explain(name, model, variables, x, target, **options)
  else:
    calls = references[library](model_name, size, x_np, np.asarray(target), background_np,
                                {k: dict(v) for k, v in config.methods.items()})
    call = calls.get(method)
    if call is None:
      row["error"] = NOT_AVAILABLE
      return row
  try:
    first, median = time_call(call, repeats=config.repeats)
  except Exception as error:  # pylint: disable=broad-except  # a reference library's failure
    if library == LIBRARY:
      raise
    row["error"] = f"{type(error).__name__}: {str(error)[:120]}"
    return row
  row.update(first_call_s=first, median_s=median,
             seconds_per_100=median * 100.0 / config.batch_size)
  return row


# --------------------------------------------------------------------------------------------
# Tables and figure.


def wide_table(table: pd.DataFrame) -> pd.DataFrame:
  """`timing.csv` with one row per (model, method) and one seconds-per-100 column per
  library, plus `<library>/xai_jax` ratios for the references."""
  wide = table.pivot_table(index=["model", "method"], columns="library",
                           values="seconds_per_100", sort=False, dropna=False)
  libraries = [l for l in dict.fromkeys(table["library"]) if l in wide.columns]
  wide = wide[libraries]
  for library in libraries:
    if library != LIBRARY:
      wide[f"{library}/{LIBRARY}"] = wide[library] / wide[LIBRARY]
  wide.columns.name = None
  return wide.reset_index()


def timing_figure(table: pd.DataFrame, path: pathlib.Path) -> pathlib.Path:
  """Fig. 4.2's design: seconds per 100 explanations, a group of bars per model and method,
  one bar per library (log scale)."""
  groups = list(dict.fromkeys(zip(table["model"], table["method"])))
  libraries = list(dict.fromkeys(table["library"]))
  width = 0.8 / len(libraries)
  fig = Figure(figsize=(max(6.0, 0.7 * len(groups) + 2), 4.5), layout="constrained")
  axis = fig.subplots()
  indexed = table.set_index(["model", "method", "library"])["seconds_per_100"]
  for k, library in enumerate(libraries):
    values = [indexed.get((m, meth, library), np.nan) for m, meth in groups]
    axis.bar(np.arange(len(groups)) + (k - (len(libraries) - 1) / 2) * width, values, width,
             label=library)
  axis.set_xticks(np.arange(len(groups)), [f"{m}\n{meth}" for m, meth in groups],
                  rotation=30, ha="right", fontsize=7)
  axis.set_yscale("log")
  axis.set_ylabel("seconds per 100 explanations")
  devices = ", ".join(sorted(set(table["device"])))
  axis.set_title(f"Explanation time (compilation excluded; {devices})", fontsize=9)
  axis.legend(fontsize=7)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=110)
  return path


# --------------------------------------------------------------------------------------------
# The run.


def run(config: ml_collections.ConfigDict, workdir, *, progress: bool = True,
        references: Mapping[str, ReferenceFactory] | None = None) -> dict[str, Any]:
  """Runs (or resumes) the timing study; returns its tables and the report path.

  Args:
    config: from `configs/timing.py` (`get_config(variant)`).
    workdir: the output folder (a rerun resumes).
    progress: show a progress bar.
    references: `{library: factory}` of reference libraries (module docstring); None: only
      xai_jax is timed.

  Returns:
    `{"timing": long DataFrame, "summary": wide DataFrame, "report": path, "figures": {caption:
    path}}`.

  Raises:
    ValueError: a bad config (`validate`; nothing is written then).
  """
  started = time.perf_counter()
  validate(config)
  references = dict(references or {})
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  recorded = json.loads(config.to_json())
  out = workdir_layout.evaluation_folder(workdir, recorded, ignore=("figures",))
  plan = _plan(config, references)

  def compute(row: int) -> pd.DataFrame:
    model_name, method, library = plan[row]
    return pd.DataFrame([measure(config, model_name, method, library,
                                 references=references)], columns=list(COLUMNS))

  table = runner.run_shards(out, "timing", range(len(plan)), compute, progress=progress,
                            description=f"{len(plan)} timings")
  table["error"] = table["error"].fillna("")
  table = table[table["error"] != NOT_AVAILABLE].reset_index(drop=True)
  files.write_table(table, out / "timing.csv")
  summary = wide_table(table)
  (out / "timing.md").write_text(reports.to_markdown(summary))
  figures = {}
  if config.figures:
    figures["Seconds per 100 explanations (Gattas Fig. 4.2)"] = timing_figure(
        table, out / "figures" / "timing.png")
  errors = table[table["error"] != ""]
  failed = "; ".join(f"{r.library} {r.method}: {r.error}" for r in errors.itertuples())
  notes = (f"{config.batch_size} explanations per call, the median of {config.repeats} calls "
           f"after one warm-up call (compilation excluded), scaled to 100; devices: "
           f"{', '.join(sorted(set(table['device'])))}. "
           + (f"Not timed: {failed}. " if failed else "")
           + f"Wall time of this invocation {time.perf_counter() - started:.0f} s.")
  report = reports.write_report(out, title="Seconds per 100 explanations", summary=summary,
                                accuracy=None, figures=figures, config=recorded, notes=notes)
  return {"timing": table, "summary": summary, "report": report, "figures": figures}
