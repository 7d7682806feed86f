"""Resumable, sharded evaluation: the workdir is the unit of output.

A long evaluation is split into shards (fixed, ordered slices of a dataset). Each shard's
rows are written atomically to `WORKDIR/shards/TABLE/shard_XXXXX.csv` (a temporary file in
the same folder, flushed and fsynced, then `os.replace`d), followed by its record
`.shard_XXXXX.csv.sha256` (checksum, size and row count; `xai_jax.files`). A shard counts as
finished only when its file verifies against its record. A rerun skips the finished shards
and recomputes the others: a missing shard silently, a damaged one (truncated, emptied,
garbled, deleted after it was written, or written by an xai_jax version before records) with
a `files.DamagedFileWarning` naming the file and the reason. The final table concatenates the
verified shard files in shard order, and a shard file that stops verifying while it is read
raises `files.DamagedFileError`, so a table is never silently shorter. Killing a run (even
with `kill -9`) and rerunning it therefore gives a final table byte-identical to an
uninterrupted run, with no lost and no duplicated rows. A shard whose table legitimately has
no rows (e.g. no ROC without five-band) is recorded with 0 rows.

Arrays are spread over all local devices with `jax.sharding` (a 1-D mesh over the batch
axis; never `pmap`): `shard_batch` pads the batch to a multiple of the device count and
places it, and jitted functions then run data-parallel under GSPMD.
"""

import dataclasses
import functools
import io
import json
import pathlib
import time
import zipfile
import zlib
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm import auto as tqdm

from xai_jax import xla
from xai_jax import files

BATCH_AXIS = "batch"


def batch_mesh(devices: Iterable[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh named "batch" over the given (default: all local) devices."""
  devices = np.asarray(list(jax.local_devices() if devices is None else devices))
  return Mesh(devices, (BATCH_AXIS,))


def shard_batch(tree, mesh: Mesh | None = None):
  """Pads every array of `tree` along axis 0 to a multiple of the mesh size and places it.

  Padding repeats the last example, so padded rows are valid inputs; drop them with
  `unpad`.

  Args:
    tree: a pytree of arrays with a common leading batch size `N`.
    mesh: from `batch_mesh` (default: all local devices).

  Returns:
    `(placed_tree, N)`.
  """
  mesh = batch_mesh() if mesh is None else mesh
  leaves = jax.tree_util.tree_leaves(tree)
  if not leaves:
    raise ValueError("shard_batch needs at least one array")
  size = leaves[0].shape[0]
  if any(leaf.shape[0] != size for leaf in leaves):
    raise ValueError(f"arrays disagree in batch size: {[l.shape for l in leaves]}")
  padded_size = -(-size // mesh.size) * mesh.size

  def place(leaf):
    leaf = jnp.asarray(leaf)
    if padded_size != size:
      filler = jnp.repeat(leaf[-1:], padded_size - size, axis=0)
      leaf = jnp.concatenate([leaf, filler], axis=0)
    spec = PartitionSpec(BATCH_AXIS, *([None] * (leaf.ndim - 1)))
    return jax.device_put(leaf, NamedSharding(mesh, spec))

  return jax.tree_util.tree_map(place, tree), size


def unpad(tree, size: int):
  """Drops the padding rows added by `shard_batch` and fetches the arrays to the host."""
  return jax.tree_util.tree_map(lambda leaf: np.asarray(leaf)[:size], tree)


def write_table(frame: pd.DataFrame, path, *, verified: bool = False) -> None:
  """Writes a CSV atomically with a fixed float format (bytes depend only on the values).

  Args:
    frame: the table.
    path: the CSV file.
    verified: also write its record (checksum and row count) for `read_table`; for tables
      that are read back, such as shards.
  """
  text = frame.to_csv(index=False, float_format="%.8g")
  if verified:
    files.write_verified(path, text, rows=len(frame))
  else:
    files.write_text(path, text)


def read_table(path, *, fix: str | None = None) -> pd.DataFrame:
  """Reads a table written by `write_table(..., verified=True)`, checking bytes and row count.

  A table recorded with 0 rows (and possibly no columns) reads as an empty DataFrame.

  Raises:
    FileNotFoundError: neither the file nor its record exists.
    files.DamagedFileError: the file is damaged or has no record (see `files.read_verified`),
      or its row count differs from the recorded one.
  """
  data = files.read_verified(path, fix=fix)
  rows = files.recorded_rows(path)
  try:
    frame = pd.read_csv(io.BytesIO(data))
  except pd.errors.EmptyDataError:  # no columns: a table recorded with 0 rows
    frame = pd.DataFrame()
  except (pd.errors.ParserError, UnicodeDecodeError) as error:
    raise files.DamagedFileError(path, f"not a readable CSV ({error})", fix) from None
  if rows is None or len(frame) != rows:
    raise files.DamagedFileError(path, f"holds {len(frame)} rows; its record says {rows}", fix)
  return frame


def write_json(data: Mapping[str, Any], path, *, verified: bool = False) -> None:
  """Writes JSON atomically, keys sorted; with `verified`, also its record (for files read
  back with `files.read_verified`)."""
  text = json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"
  if verified:
    files.write_verified(path, text)
  else:
    files.write_text(path, text)


def config_fields(config: Mapping[str, Any], fields: Sequence[str]) -> dict[str, Any]:
  """`{field: value}` for dotted paths into a nested mapping ("seed", "data.size"); a path
  that `config` lacks is left out."""
  picked = {}
  for field in fields:
    value: Any = config
    for part in field.split("."):
      if not isinstance(value, Mapping) or part not in value:
        break
      value = value[part]
    else:
      picked[field] = value
  return picked


def config_difference(previous: Mapping[str, Any], current: Mapping[str, Any], *,
                      fields: Sequence[str] | None = None,
                      ignore: Sequence[str] = ()) -> list[str]:
  """The fields where two JSON configs differ, sorted.

  Args:
    previous, current: the configs (JSON-like nested mappings).
    fields: dotted paths to compare (default: every top-level field).
    ignore: top-level fields left out.
  """
  if fields is None:
    fields = sorted(set(previous) | set(current))
  fields = [f for f in fields if f.split(".")[0] not in ignore]
  before, after = config_fields(previous, fields), config_fields(current, fields)
  return sorted(f for f in fields if before.get(f) != after.get(f))


def record_config(path, config: Mapping[str, Any], *, ignore: Sequence[str] = (),
                  what: str = "a run", fields: Sequence[str] | None = None,
                  hint: str = "use another config, another --workdir, or delete it") -> None:
  """Writes `config` as JSON to `path`, or refuses if `path` records a different one.

  A resumable output folder must never mix results of two configs: the first run records
  its config, and a later run with the same folder must bring the same one (fields in
  `ignore`, such as whether to draw figures, may differ). Call it only once the config is
  validated, so that a refused config is never recorded.

  Args:
    path: the record, e.g. `WORKDIR/config.json`.
    config: JSON-serialisable mapping (e.g. `json.loads(config_dict.to_json())`).
    ignore: top-level fields left out of the comparison (still written).
    what: what the folder holds, for the error message.
    fields: dotted paths ("data.size") that are compared and recorded (default: every
      field), e.g. the fields that define trained models.
    hint: what to do instead, for the error message.

  Raises:
    ValueError: the recorded config differs; the message names the differing fields.
  """
  current = json.loads(json.dumps(dict(config), sort_keys=True, default=str))
  if fields is not None:
    current = config_fields(current, fields)
  path = pathlib.Path(path)
  if path.exists():
    previous = json.loads(path.read_text())
    if fields is not None and not set(previous) <= set(fields):  # a nested record: project it
      previous = config_fields(previous, fields)
    changed = sorted(k for k in set(previous) | set(current)
                     if k not in ignore and previous.get(k) != current.get(k))
    if changed:
      raise ValueError(f"{path.parent} holds {what} of a different config (fields {changed} "
                       f"differ); {hint}")
  write_json(current, path)


def shard_path(workdir, table: str, shard: int) -> pathlib.Path:
  return pathlib.Path(workdir) / "shards" / table / f"shard_{shard:05d}.csv"


def run_shards(workdir, table: str, shards: Iterable[int],
               compute_shard: Callable[[int], pd.DataFrame], *,
               images_per_shard: int | None = None, progress: bool = True,
               description: str | None = None) -> pd.DataFrame:
  """Computes every missing shard of a table and returns the table in shard order.

  Args:
    workdir: the experiment's output folder.
    table: the table's name; the final CSV is `WORKDIR/TABLE.csv` (a name with "/" nests it,
      e.g. "base/samples").
    shards: shard ids, in the order of the final table.
    compute_shard: `shard id -> DataFrame` of that shard's rows; pure apart from reading
      data, so a rerun recomputes exactly the same rows.
    images_per_shard: for the progress bar's images/s.
    progress: show a tqdm bar with shards/s (images/s) and ETA.
    description: the bar's label (default: the table name).

  Returns:
    The concatenated table, also written to `WORKDIR/TABLE.csv`.
  """
  return run_shard_tables(workdir, (table,), shards, lambda s: {table: compute_shard(s)},
                          images_per_shard=images_per_shard, progress=progress,
                          description=description or table)[table]


def run_shard_tables(workdir, tables: Sequence[str], shards: Iterable[int],
                     compute_shard: Callable[[int], Mapping[str, pd.DataFrame]], *,
                     images_per_shard: int | None = None, progress: bool = True,
                     description: str | None = None, process_index: int | None = None,
                     process_count: int | None = None, poll_seconds: float = 2.0
                     ) -> dict[str, pd.DataFrame]:
  """`run_shards` for several tables computed together, one file per (table, shard).

  A shard counts as finished when the files of all its tables verify against their records
  (`xai_jax.files`). They are written in the order of `tables`, each atomically and then its
  record; a shard interrupted between two writes is recomputed and its files rewritten with
  the same bytes (`compute_shard` is deterministic). A shard with a damaged or unrecorded
  file (truncated, emptied, garbled, deleted, or from an xai_jax version before records) is
  recomputed with a `files.DamagedFileWarning` naming the file; a shard whose files are all
  absent is recomputed silently.

  Several hosts (`jax.distributed.initialize()`, one process per host) sharing `workdir` on
  a common file system split the work: process `i` of `n` computes the unfinished shards at
  positions `p` with `p % n == i`, then waits until every shard file verifies, and all
  processes return the same tables.

  Args:
    workdir: the experiment's output folder.
    tables: table names; the final CSVs are `WORKDIR/<table>.csv`.
    shards: shard ids, in the order of the final tables.
    compute_shard: `shard id -> {table: DataFrame}` with every name of `tables`.
    images_per_shard, progress, description: as in `run_shards`.
    process_index, process_count: this process and the number of processes (default
      `jax.process_index()`, `jax.process_count()`).
    poll_seconds: how often a process that finished its shards looks for the others'.

  Returns:
    `{table: concatenated DataFrame}`, each also written to `WORKDIR/<table>.csv`.

  Raises:
    files.DamagedFileError: a shard file that verified stopped verifying before it was read
      (changed by something else meanwhile); rerunning recomputes it.
  """
  shards, tables = list(shards), tuple(tables)
  if len(set(shards)) != len(shards):
    raise ValueError(f"shard ids must be unique; got {shards}")
  if not tables or len(set(tables)) != len(tables):
    raise ValueError(f"need at least one table and unique table names; got {tables}")
  index = jax.process_index() if process_index is None else int(process_index)
  count = jax.process_count() if process_count is None else int(process_count)
  if not 0 <= index < count:
    raise ValueError(f"process_index must be in [0, {count}); got {index}")
  finished = lambda s: all(files.is_intact(shard_path(workdir, t, s)) for t in tables)
  own = [s for position, s in enumerate(shards) if position % count == index]
  missing = [s for s in own if not _check_shard(workdir, tables, s)]
  bar = tqdm.tqdm(total=len(own), initial=len(own) - len(missing),
                  desc=description or ",".join(tables), unit="shard", disable=not progress,
                  dynamic_ncols=True)
  started, done = time.perf_counter(), 0
  with bar:
    for shard in missing:
      frames = compute_shard(shard)
      if not isinstance(frames, Mapping) or set(frames) != set(tables):
        got = sorted(frames) if isinstance(frames, Mapping) else type(frames).__name__
        raise TypeError(f"compute_shard must return {{table: DataFrame}} for the tables "
                        f"{list(tables)}; got {got}")
      for table in tables:
        if not isinstance(frames[table], pd.DataFrame):
          raise TypeError(f"compute_shard returned {type(frames[table])} for table {table!r}; "
                          "expected a pandas DataFrame")
        write_table(frames[table], shard_path(workdir, table, shard), verified=True)
      done += 1
      if images_per_shard:
        rate = done * images_per_shard / max(time.perf_counter() - started, 1e-9)
        bar.set_postfix_str(f"{rate:.1f} images/s")
      bar.update(1)
  waiting = [s for s in shards if s not in own]
  while waiting:  # other processes' shards
    waiting = [s for s in waiting if not finished(s)]
    if waiting:
      time.sleep(poll_seconds)
  results = {}
  for table in tables:
    frames = [read_table(shard_path(workdir, table, s), fix="rerun to recompute it")
              for s in shards]
    result = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    write_table(result, pathlib.Path(workdir) / f"{table}.csv")
    results[table] = result
  return results


def _check_shard(workdir, tables: Sequence[str], shard: int) -> bool:
  """Whether every table file of `shard` verifies; warns about each damaged one."""
  intact = True
  for table in tables:
    path = shard_path(workdir, table, shard)
    try:
      read_table(path)
    except FileNotFoundError:
      intact = False
    except files.DamagedFileError as error:
      files.warn_damaged(error, f"recomputing shard {shard}")
      intact = False
  return intact


# --------------------------------------------------------------------------------------------
# Explain and score a dataset: every configured method x every configured metric, in shards.

METRICS = ("five_band", "iou", "pixel_removal")
"""Metric families `evaluate` computes (see `evaluate` for the columns each adds)."""

FIVE_BAND_SETTINGS = {"soft": "", "clamped": "_clamp"}
"""Five-band threshold presets (Tjoa & Guan's two settings) and their column suffixes."""

PIXEL_REMOVAL_DEFAULTS = {"fraction": 0.1, "step": None, "fill": "mean", "chunk": 4,
                          "delta_k": 5, "score": "logit"}
IOU_DEFAULTS = {"n_std": 0.5, "n_std_star": 1.0, "abs": True}
_KEYED_METHODS = ("smoothgrad", "gradient_shap", "random", "shapley_sampling", "lime",
                  "kernel_shap")
_MAP_REDUCE = "sum"


@dataclasses.dataclass(frozen=True)
class EvaluationTables:
  """What `evaluate` returns (the tables are also CSV files in the workdir).

  Attributes:
    samples: one row per (sample, method): identification columns and every metric column.
    roc: `model, method, setting, threshold, recall, fpr`: mean recall and FPR over all samples
      per five-band threshold index (Tjoa & Guan Fig. 4); empty without "five_band".
    curves: `model, method, order, fraction, score, drop, flip_rate`: mean perturbation curves
      (empty without "pixel_removal").
    gallery: `{"images", "heatmaps", "labels", "predicted", "map/<method>"...}`, numpy arrays
      of a few samples of the first shard (one per class where possible).
  """
  samples: pd.DataFrame
  roc: pd.DataFrame
  curves: pd.DataFrame
  gallery: dict[str, np.ndarray]


def check_methods(methods: Mapping[str, Mapping[str, Any]]) -> dict[str, tuple[str, dict]]:
  """Resolves `{display name: options}` and checks every option without a model or data.

  What `evaluate` runs first; experiments call it while validating their config, before any
  data generation or training. Besides `explain.check_options`, the runner's own option
  values are checked: `method_name` (the registry name when it differs from the display
  name) and named baselines ("zeros", "uniform:K").

  Returns:
    `{display name: (registry name, options without method_name)}`.

  Raises:
    ValueError: no methods, or a bad method or option; the message starts with
      `methods.<display name>`.
  """
  from xai_jax import explain  # pylint: disable=import-outside-toplevel
  if not methods:
    raise ValueError("no methods to evaluate: give {display name: options}")
  resolved = {}
  for display, options in methods.items():
    options = dict(options or {})
    name = options.pop("method_name", display)
    if name not in explain.METHODS:
      raise ValueError(f"methods.{display}: unknown explanation method {name!r}; valid: "
                       f"{', '.join(sorted(explain.METHODS))}; a display name that differs "
                       "from the registry name needs the option method_name=<registry name>")
    try:
      for field in ("baseline", "baselines"):
        if isinstance(options.get(field), str):
          _baseline_count(options[field], field)
      explain.check_options(name, options,
                            supplied=("key",) if name in _KEYED_METHODS else ())
    except ValueError as error:
      raise ValueError(f"methods.{display}: {error}") from None
    resolved[display] = (name, options)
  return resolved


def _is_int(value) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value) -> bool:
  return (isinstance(value, (int, float, np.number)) and not isinstance(value, (bool, np.bool_))
          and np.isfinite(float(value)))


def check_metrics(metrics: Sequence[str], metric_options: Mapping[str, Mapping] | None, *,
                  image_size: tuple[int, int] | None = None
                  ) -> tuple[tuple[str, ...], dict[str, Any], dict[str, Any]]:
  """Checks metric names and options, with the defaults filled in, before any work.

  Option names are checked for every metric; values for the metrics in `metrics`. With
  `image_size`, the pixel-removal grid is checked against it
  (`pixel_removal.check_removal_grid`: a `step` above `fraction` of the pixels leaves AOPC
  and AFOC 0 for every image).

  Args:
    metrics: a subset of `METRICS`.
    metric_options: `{"pixel_removal": {...}, "iou": {...}}` (see `evaluate`).
    image_size: `(H, W)` of the evaluated images, when known.

  Returns:
    `(metrics, pixel-removal options, IOU options)`.

  Raises:
    ValueError: naming the metric and the option (`metric_options.<metric>.<option>`).
  """
  from xai_jax.metrics import pixel_removal  # pylint: disable=import-outside-toplevel
  unknown = [m for m in metrics if m not in METRICS]
  if unknown:
    raise ValueError(f"unknown metrics {unknown}; valid: {', '.join(METRICS)}")
  metric_options = dict(metric_options or {})
  bad = [m for m in metric_options if m not in METRICS]
  if bad:
    raise ValueError(f"metric_options for unknown metrics {bad}; valid: {', '.join(METRICS)}")
  removal = {**PIXEL_REMOVAL_DEFAULTS, **metric_options.get("pixel_removal", {})}
  iou_options = {**IOU_DEFAULTS, **metric_options.get("iou", {})}
  for name, given, defaults in (("pixel_removal", removal, PIXEL_REMOVAL_DEFAULTS),
                                ("iou", iou_options, IOU_DEFAULTS)):
    extra = sorted(set(given) - set(defaults))
    if extra:
      raise ValueError(f"unknown {name} options {extra}; valid: {sorted(defaults)}")

  def fail(metric: str, option: str, message: str):
    raise ValueError(f"metric_options.{metric}.{option}: {message}")

  if "pixel_removal" in metrics:
    fraction, step, fill = removal["fraction"], removal["step"], removal["fill"]
    if not _is_number(fraction) or not 0 < fraction <= 1:
      fail("pixel_removal", "fraction", f"must be a fraction in (0, 1]; got {fraction!r}")
    if step is not None and (not _is_int(step) or step < 1):
      fail("pixel_removal", "step", f"must be a positive int (pixels per grid point) or None "
           f"(0.5% of the pixels); got {step!r}")
    fills = ("mean", "image_mean", "blur")
    if isinstance(fill, str):
      if fill not in fills:
        fail("pixel_removal", "fill", f"unknown fill {fill!r}; valid: {', '.join(fills)}, a "
             "number or per-channel numbers")
    elif not (_is_number(fill) or (isinstance(fill, (tuple, list)) and fill
                                   and all(_is_number(v) for v in fill))):
      fail("pixel_removal", "fill", f"must be one of {', '.join(fills)}, a finite number or "
           f"per-channel numbers; got {fill!r}")
    if not _is_int(removal["chunk"]) or removal["chunk"] < 1:
      fail("pixel_removal", "chunk", f"must be a positive int; got {removal['chunk']!r}")
    delta_k = removal["delta_k"]
    if delta_k is not None and (not _is_int(delta_k) or delta_k < 0):
      fail("pixel_removal", "delta_k", f"must be an int >= 0 (0: no delta); got {delta_k!r}")
    if removal["score"] not in pixel_removal.SCORES:
      fail("pixel_removal", "score", f"unknown score {removal['score']!r}; valid: "
           f"{', '.join(pixel_removal.SCORES)}")
    if image_size is not None:
      height, width = image_size
      try:
        pixel_removal.check_removal_grid(int(height) * int(width), step=step,
                                         fraction=float(fraction))
      except ValueError as error:
        fail("pixel_removal", "step", f"{error} (images of {height}x{width})")
  if "iou" in metrics:
    for option in ("n_std", "n_std_star"):
      if not _is_number(iou_options[option]) or iou_options[option] < 0:
        fail("iou", option, f"must be a finite number >= 0; got {iou_options[option]!r}")
    if not isinstance(iou_options["abs"], (bool, np.bool_)):
      fail("iou", "abs", f"must be true or false; got {iou_options['abs']!r}")
  return tuple(metrics), removal, iou_options


def check_shards(num_examples: int, shard_size: int, *, delta_k: int = 0,
                 available: int | None = None) -> None:
  """Checks the split of `num_examples` samples into shards of `shard_size` (the last smaller).

  The DeepMaps delta (`delta_k > 0`) compares each image's map with the maps of `delta_k`
  *other* images of the same shard, so every shard, including the last (remainder) one of
  `num_examples % shard_size` images, needs more than `delta_k` images.

  Args:
    num_examples: samples evaluated.
    shard_size: samples per shard.
    delta_k: the pixel-removal delta's K (0: no delta).
    available: samples the data holds (checked when given).

  Raises:
    ValueError: `shard_size < 1`, `num_examples` outside `[1, available]`, or a shard too
      small for the delta; the message names the fields and suggests valid values.
  """
  if not _is_int(shard_size) or shard_size < 1:
    raise ValueError(f"shard_size must be a positive int; got {shard_size!r}")
  if (not _is_int(num_examples) or num_examples < 1
      or (available is not None and num_examples > available)):
    raise ValueError(f"num_examples must be in [1, {available if available is not None else 'N'}]"
                     f" (the samples of the data); got {num_examples!r}")
  delta_k = int(delta_k or 0)
  if not delta_k:
    return
  needs = (f"pixel_removal delta_k = {delta_k} needs shards of more than {delta_k} images (each "
           f"map is compared with the maps of {delta_k} other images of the same shard)")
  if shard_size <= delta_k and num_examples >= shard_size:
    raise ValueError(f"{needs}; shard_size = {shard_size} is too small: use shard_size > "
                     f"{delta_k} or delta_k < {shard_size}")
  # Shard sizes of n samples: `shard_size` (if n >= shard_size) and the remainder n % shard_size.
  fits = lambda n: all(size > delta_k for size in (*((shard_size,) if n >= shard_size else ()),
                                                   *((n % shard_size,) if n % shard_size else ())))
  if not fits(num_examples):
    last = num_examples % shard_size
    below = next((n for n in range(num_examples - 1, delta_k, -1) if fits(n)), None)
    above = next((n for n in range(num_examples + 1, num_examples + shard_size + 1) if fits(n)),
                 None)
    if above is not None and available is not None and above > available:
      above = None
    suggestions = " or ".join(str(n) for n in (below, above) if n is not None)
    suggestions = f"num_examples = {suggestions}, " if suggestions else ""
    raise ValueError(
        f"{needs}; num_examples = {num_examples} in shards of shard_size = {shard_size} leaves "
        f"a last shard of {last}: use {suggestions}another shard_size, or delta_k < {last}"
        + (" (0: no delta)" if last == 1 else ""))


def _baseline_count(spec: str, field: str) -> int:
  """Checks a named baseline: "zeros" (0), or "uniform:K" (K >= 1) for `baselines`."""
  if spec == "zeros":
    return 0
  if spec.startswith("uniform:") and field == "baselines":
    count = spec.split(":", 1)[1]
    if count.isdigit() and int(count) >= 1:
      return int(count)
  raise ValueError(f"unknown {field} {spec!r}; valid: 'zeros'"
                   + (", 'uniform:K' with K >= 1" if field == "baselines" else ""))


def method_key(key: jax.Array, display: str) -> jax.Array:
  """`key` folded with a hash of the method's display name: independent of the methods' order.

  The hash (CRC-32) is stable across processes and runs, unlike Python's `hash`.
  """
  return jax.random.fold_in(key, zlib.crc32(display.encode()) % (2**31 - 1))


def _method_key(key: jax.Array, display: str, shard: int) -> jax.Array:
  """A key per (method, shard) that does not depend on the order of the methods."""
  return jax.random.fold_in(method_key(key, display), shard)


def _explain_options(name: str, options: dict, x: jax.Array, key: jax.Array) -> dict:
  """Fills the options a method cannot run without: keys, and baselines given by name."""
  options = dict(options)
  if name in _KEYED_METHODS and "key" not in options:
    options["key"] = key
  for field in ("baseline", "baselines"):
    spec = options.get(field)
    if isinstance(spec, str):
      options[field] = _named_baseline(spec, field, x, jax.random.fold_in(key, 7))
  return options


def _named_baseline(spec: str, field: str, x: jax.Array, key: jax.Array) -> jax.Array:
  """"zeros" (black image) or "uniform:K" (K images uniform in [min x, max x])."""
  shape = x.shape[1:]
  if spec == "zeros":
    zeros = jnp.zeros(shape, x.dtype)
    return zeros if field == "baseline" else zeros[None]
  count = _baseline_count(spec, field)
  low, high = jnp.min(x), jnp.max(x)
  return jax.random.uniform(key, (count, *shape), x.dtype, low, high)


def _gallery_positions(labels: np.ndarray, size: int) -> np.ndarray:
  """The first sample of each class (in class order), then the next samples, up to `size`."""
  firsts = [int(np.flatnonzero(labels == c)[0]) for c in np.unique(labels)]
  rest = [i for i in range(len(labels)) if i not in firsts]
  return np.asarray((firsts + rest)[:size], np.int64)


def save_npz(arrays: Mapping[str, np.ndarray], path) -> None:
  """Writes arrays as a compressed `.npz` with its record (`files.write_verified`).

  The bytes depend only on the arrays, so a recomputed file is byte-identical.
  """
  buffer = io.BytesIO()
  np.savez_compressed(buffer, **arrays)
  files.write_verified(path, buffer.getvalue())


def load_npz(path, *, unrecorded: str = "error", fix: str | None = None
             ) -> dict[str, np.ndarray]:
  """Reads an `.npz` written by `save_npz`, checked against its record.

  Args:
    path: the file.
    unrecorded: for a file without a record, as in `files.read_verified`.
    fix: appended to the error message.

  Raises:
    FileNotFoundError: neither the file nor its record exists.
    files.DamagedFileError: the file is damaged (or unrecorded, see `unrecorded`) or is not
      a readable `.npz`.
  """
  data = files.read_verified(path, unrecorded=unrecorded, fix=fix)
  try:
    with np.load(io.BytesIO(data)) as arrays:
      return {k: arrays[k] for k in arrays.files}
  except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
    raise files.DamagedFileError(path, f"not a readable .npz ({error})", fix) from None


def load_gallery(path) -> dict[str, np.ndarray]:
  """Reads a `gallery.npz` written by `evaluate`, checked against its record.

  A gallery without a record (written by an xai_jax version before records) is read with a
  `files.DamagedFileWarning`; `evaluate` itself recomputes such a gallery.

  Raises:
    files.DamagedFileError: the gallery is damaged; rerunning `evaluate` recomputes it.
  """
  return load_npz(path, unrecorded="warn", fix="rerun the evaluation to recompute it")


def evaluate(workdir, *, source, model, variables, methods: Mapping[str, Mapping[str, Any]],
             metrics: Sequence[str] = METRICS,
             metric_options: Mapping[str, Mapping[str, Any]] | None = None,
             shard_size: int = 64, num_examples: int | None = None, key: jax.Array,
             model_name: str = "model", mesh: Mesh | None = None, progress: bool = True,
             gallery_size: int = 10) -> EvaluationTables:
  """Explains every sample of `source` with every method and scores every map, in shards.

  Per shard of `shard_size` samples (the last may be smaller): the batch is placed on all
  devices of `mesh` (`shard_batch`), the model's prediction `c = argmax f(x)` is the target of
  every explanation (Tjoa & Guan and DeepMaps explain the predicted class), each method runs
  once on the whole batch (compiled once per method and options; the variables are
  arguments), and the metrics are computed on the device:

  * "five_band" (needs "heatmap"; Tjoa & Guan): `Amu Au Au1 Rmu Ru Ru1 Pmu Pu Pu1` for the
    soft preset and the same with suffix `_clamp` for the clamped one (`five_band_scores` on
    the raw attribution), and the `roc` table.
  * "iou" (needs "mask", or "heatmap" whose non-zero pixels are the mask; Gattas 2020):
    `iou` (n_std 0.5) and `iou_star` (n_std 1.0) of the channel-summed map.
  * "pixel_removal" (DeepMaps): `aopc afoc_morf afoc_lerf n_morf n_lerf flipped_morf
    flipped_lerf` from full MoRF and LeRF curves, and with `delta_k > 0` the DeepMaps Eq. 9
    variants `delta_<metric>` against `delta_k` maps of other images of the same shard; the
    `curves` table holds the mean curves.

  Every shard writes its rows atomically (`run_shard_tables`), so an interrupted run resumes
  where it stopped and its final tables are byte-identical to an uninterrupted run. Random
  draws (SmoothGrad noise, GradientShap baselines, delta partners) come from
  `fold_in(key, method, shard)`, so they do not depend on the device count or on resuming.

  Args:
    workdir: output folder; tables go to `WORKDIR/<model_name>/{samples,roc,curves}.csv` and
      the shards to `WORKDIR/shards/<model_name>/...`.
    source: random-access data: `len(source)` and `source.get_batch(indices)` returning
      `"image"` `float32[n, H, W, C]` (the model's input), `"label"` `int[n]` (-1 if unknown) and
      optionally `"heatmap"` `float[n, H, W]`, `"mask"` `[n, H, W]`, `"background"` `int[n]`.
    model: Flax module (or `apply(variables, x) -> logits` for logit-only methods).
    variables: the model's variables.
    methods: `{display name: options}`; options are passed to the method (`explain.METHODS`),
      plus `method_name` when the display name is not a registry name. `key` is filled in for
      SmoothGrad, GradientShap and random maps; `baseline(s)` may be "zeros" or "uniform:K".
    metrics: a subset of `METRICS`.
    metric_options: `{"pixel_removal": {fraction, step, fill, chunk, delta_k, score},
      "iou": {n_std, n_std_star, abs}}`, defaults `PIXEL_REMOVAL_DEFAULTS`, `IOU_DEFAULTS`.
    shard_size: samples per shard (and per device batch: memory scales with it).
    num_examples: evaluate the first `num_examples` samples (default all).
    key: PRNG key of every random draw.
    model_name: the `model` column, and the tables' folder.
    mesh: from `batch_mesh` (default: all local devices).
    progress: tqdm bar with images/s and ETA.
    gallery_size: samples kept with their maps in `gallery.npz` (0: none).

  Returns:
    An `EvaluationTables`.

  Raises:
    ValueError: unknown methods or metrics, a metric whose ground truth the source lacks, a
      shard too small for the delta draws, NaN images.
  """
  from xai_jax import explain  # pylint: disable=import-outside-toplevel

  resolved = check_methods(methods)
  metrics, removal, iou_options = check_metrics(metrics, metric_options)
  total = len(source) if num_examples is None else num_examples
  delta_k = int(removal["delta_k"] or 0) if "pixel_removal" in metrics else 0
  check_shards(total, shard_size, delta_k=delta_k, available=len(source))
  mesh = batch_mesh() if mesh is None else mesh
  num_shards = -(-total // shard_size)
  workdir = pathlib.Path(workdir)
  tables = tuple(f"{model_name}/{t}" for t in ("samples", "roc", "curves"))
  gallery_path = workdir / model_name / "gallery.npz"
  static_removal = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in
                         ((k, removal[k]) for k in ("fraction", "step", "fill", "chunk", "score")))
  static_iou = tuple(sorted(iou_options.items()))

  def compute_shard(shard: int) -> dict[str, pd.DataFrame]:
    indices = np.arange(shard * shard_size, min(total, (shard + 1) * shard_size))
    batch = source.get_batch(indices)
    images = np.asarray(batch["image"], np.float32)
    if not np.isfinite(images).all():
      raise ValueError(f"shard {shard}: images contain NaN or inf (samples "
                       f"{indices[~np.isfinite(images).reshape(len(indices), -1).all(1)]})")
    n = len(indices)
    labels = np.asarray(batch.get("label", np.full(n, -1)), np.int64)
    for metric, needs in (("five_band", ("heatmap",)), ("iou", ("mask", "heatmap"))):
      if metric in metrics and not any(k in batch for k in needs):
        raise ValueError(f"metric {metric!r} needs a source with {' or '.join(needs)!r}; "
                         f"the batch has {sorted(batch)}")
    heatmap = None if batch.get("heatmap") is None else np.asarray(batch["heatmap"], np.float32)
    mask = batch.get("mask", None if heatmap is None else heatmap > 0)
    mask = None if mask is None else np.asarray(mask, np.float32)
    placed, _ = shard_batch({"x": images}, mesh)
    x = placed["x"]
    target, confidence = _predict(model, variables, x)
    predicted = np.asarray(target)[:n].astype(np.int64)
    base = pd.DataFrame({
        "model": model_name, "shard": shard, "position": np.arange(n), "index": indices,
        "label": labels, "background": np.asarray(batch.get("background", np.full(n, -1))),
        "predicted": predicted, "confidence": np.asarray(confidence, np.float64)[:n],
        "correct": (predicted == labels).astype(np.int64)})
    sample_frames, roc_frames, curve_frames, maps_of = [], [], [], {}
    for display, (name, options) in resolved.items():
      method_key = _method_key(key, display, shard)
      attributions = explain.explain(name, model, variables, x, target,
                                     **_explain_options(name, options, x, method_key))
      scored = jax.device_get(_score(
          model, variables, x, attributions, heatmap, mask, jax.random.fold_in(method_key, 1),
          n=n, metrics=metrics, removal=static_removal, iou_options=static_iou,
          delta_k=delta_k))
      maps_of[display] = np.asarray(scored["maps"])
      frame = base.copy()
      frame.insert(1, "method", display)
      for column, values in scored["columns"].items():
        values = np.asarray(values)
        frame[column] = values.astype(np.float64 if values.dtype.kind == "f" else np.int64)
      sample_frames.append(frame)
      for setting, (recall_sum, fpr_sum) in scored["roc"].items():
        roc_frames.append(pd.DataFrame({
            "method": display, "setting": setting, "threshold": np.arange(len(recall_sum)),
            "recall_sum": np.asarray(recall_sum, np.float64),
            "fpr_sum": np.asarray(fpr_sum, np.float64), "count": n}))
      for order, sums in scored["curves"].items():
        curve_frames.append(pd.DataFrame({
            "method": display, "order": order, **{k: np.asarray(v, np.float64)
                                                   for k, v in sums.items()}, "count": n}))
    if shard == 0 and gallery_size:
      keep = _gallery_positions(labels, gallery_size)
      gallery = {"images": images[keep],
                 "heatmaps": (np.zeros(images[keep].shape[:3], np.float32) if heatmap is None
                              else heatmap[keep]),
                 "labels": labels[keep], "predicted": predicted[keep],
                 **{f"map/{d}": m[keep] for d, m in maps_of.items()}}
      save_npz(gallery, gallery_path)
    with_model = lambda frames: (pd.concat(frames, ignore_index=True).assign(model=model_name)
                                 if frames else pd.DataFrame())
    return {tables[0]: pd.concat(sample_frames, ignore_index=True),
            tables[1]: with_model(roc_frames), tables[2]: with_model(curve_frames)}

  if gallery_size and jax.process_index() == 0:
    try:
      files.read_verified(gallery_path)
      gallery_intact = True
    except FileNotFoundError:
      gallery_intact = False
    except files.DamagedFileError as error:
      files.warn_damaged(error, "recomputing shard 0, which writes it")
      gallery_intact = False
    if not gallery_intact:  # shard 0 (process 0's) writes the gallery: make sure it runs again
      for table in tables:
        files.remove_verified(shard_path(workdir, table, 0))
  raw = run_shard_tables(workdir, tables, range(num_shards), compute_shard,
                         images_per_shard=shard_size, progress=progress,
                         description=f"{model_name}: {len(resolved)} methods")
  roc = _mean_over_shards(raw[tables[1]], ("model", "method", "setting", "threshold"),
                          {"recall": "recall_sum", "fpr": "fpr_sum"})
  curves = _mean_over_shards(raw[tables[2]], ("model", "method", "order", "fraction"),
                             {"score": "score_sum", "drop": "drop_sum", "flip_rate": "flip_sum"})
  write_table(roc, workdir / model_name / "roc.csv")
  write_table(curves, workdir / model_name / "curves.csv")
  gallery = load_gallery(gallery_path) if gallery_size else {}
  return EvaluationTables(samples=raw[tables[0]], roc=roc, curves=curves, gallery=gallery)


@functools.partial(xla.jit, static_argnames=("model",))
def _predict(model, variables, x):
  """`(argmax f(x), softmax probability of it)`, the target of every explanation."""
  from xai_jax.models.base import as_apply  # pylint: disable=import-outside-toplevel
  logits = as_apply(model)(variables, x).astype(jnp.float32)
  target = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  return target, jnp.max(jax.nn.softmax(logits, axis=-1), axis=-1)


@functools.partial(xla.jit, static_argnames=("model", "n", "metrics", "removal", "iou_options",
                                             "delta_k"))
def _score(model, variables, x, attributions, heatmap, mask, key, *, n, metrics, removal,
           iou_options, delta_k):
  """Every metric of one method's attributions on the first `n` (unpadded) rows, in one jit.

  Returns `{"maps": float32[n, H, W], "columns": {name: [n]}, "roc": {setting: (recall
  sum, FPR sum)}, "curves": {order: {fraction, score_sum, drop_sum, flip_sum}}}`.
  """
  from xai_jax.explain.postprocess import to_map  # pylint: disable=import-outside-toplevel
  from xai_jax.metrics import ground_truth, pixel_removal  # pylint: disable=import-outside-toplevel
  removal, iou_options = dict(removal), dict(iou_options)
  attributions = attributions[:n].astype(jnp.float32)
  maps = attributions if attributions.ndim == 3 else to_map(attributions, _MAP_REDUCE)
  out = {"maps": maps, "columns": {}, "roc": {}, "curves": {}}
  columns = out["columns"]
  if "five_band" in metrics:
    for setting, suffix in FIVE_BAND_SETTINGS.items():
      scores = ground_truth.five_band_scores(attributions, heatmap[:n], thresholds=setting)
      for column, values in ground_truth.five_band_summary(scores).items():
        columns[column + suffix] = values
      out["roc"][setting] = (scores.recall.sum(0), scores.fpr.sum(0))
  if "iou" in metrics:
    columns["iou"] = ground_truth.iou(maps, mask[:n], n_std=iou_options["n_std"],
                                      abs=iou_options["abs"])
    columns["iou_star"] = ground_truth.iou_star(maps, mask[:n], n_std=iou_options["n_std_star"],
                                                abs=iou_options["abs"])
  if "pixel_removal" in metrics:
    own, others, curves = _pixel_removal(pixel_removal, model, variables, x[:n], maps, removal,
                                         delta_k=delta_k, key=key)
    columns.update(own)
    if delta_k:
      for column in _DELTA_COLUMNS:
        columns["delta_" + column] = own[column].astype(jnp.float32) - others[column]
    for order, curve in curves.items():
      scores = curve.scores.astype(jnp.float32)
      out["curves"][order] = {
          "fraction": curve.fractions, "score_sum": scores.sum(0),
          "drop_sum": (scores[:, :1] - scores).sum(0),
          "flip_sum": (curve.labels != curve.labels[:, :1]).sum(0).astype(jnp.float32)}
  return out


def _pixel_removal(pixel_removal, model, variables, x, maps, options, *, delta_k: int,
                   key: jax.Array):
  """Own metrics, mean metrics with `delta_k` other maps (DeepMaps Eq. 9) and own curves.

  As `pixel_removal.delta(pixel_removal_metrics, ...)` with the same draws
  (`draw_others(key, N, N, k, arange(N))`), but the own and the borrowed maps share one
  MoRF and one LeRF `perturbation_curve` call of `N * (k + 1)` images, whose first N rows
  are also the own curves of the `curves` table (no second evaluation of the own maps).
  """
  n = x.shape[0]
  if delta_k:
    index = pixel_removal.draw_others(key, n, n, delta_k, jnp.arange(n))
    x_all = jnp.concatenate([x, jnp.repeat(x, delta_k, axis=0)], axis=0)
    maps_all = jnp.concatenate([maps, maps[index.reshape(-1)]], axis=0)
  else:
    x_all, maps_all = x, maps
  curve_options = {k: options[k] for k in ("step", "fill", "chunk", "score")}
  if isinstance(curve_options["fill"], (tuple, list)):  # per-channel fill, e.g. an RGB mean
    curve_options["fill"] = jnp.asarray(curve_options["fill"], x.dtype)
  curves = {order: pixel_removal.perturbation_curve(model, variables, x_all, maps_all,
                                                    order=order, max_fraction=1.0,
                                                    **curve_options)
            for order in ("morf", "lerf")}
  values = _removal_from_curves(pixel_removal, curves, options["fraction"])
  own = {k: v[:n] for k, v in values.items()}
  others = ({k: v[n:].astype(jnp.float32).reshape(n, delta_k).mean(axis=1)
             for k, v in values.items()} if delta_k else None)
  own_curves = {order: curve.replace(scores=curve.scores[:n], labels=curve.labels[:n],
                                     target=curve.target[:n])
                for order, curve in curves.items()}
  return own, others, own_curves


_DELTA_COLUMNS = ("aopc", "afoc_morf", "afoc_lerf", "n_morf", "n_lerf")


def _removal_from_curves(pixel_removal, curves, fraction: float) -> dict[str, jax.Array]:
  """The DeepMaps set from a MoRF and a LeRF curve (as `pixel_removal_metrics`)."""
  morf, lerf = curves["morf"], curves["lerf"]
  n_morf, flipped_morf = pixel_removal.pixels_to_flip(morf)
  n_lerf, flipped_lerf = pixel_removal.pixels_to_flip(lerf)
  return {"aopc": pixel_removal.aopc(morf, max_fraction=fraction),
          "afoc_morf": pixel_removal.afoc(morf, fraction=fraction),
          "afoc_lerf": pixel_removal.afoc(lerf, fraction=fraction),
          "n_morf": n_morf, "n_lerf": n_lerf,
          "flipped_morf": flipped_morf.astype(jnp.float32),
          "flipped_lerf": flipped_lerf.astype(jnp.float32)}


def _mean_over_shards(frame: pd.DataFrame, keys: Sequence[str],
                      means: Mapping[str, str]) -> pd.DataFrame:
  """Sums the per-shard sums and counts over shards; returns the means, in first-seen order."""
  if frame.empty:
    return pd.DataFrame(columns=[*keys, *means])
  grouped = frame.groupby(list(keys), sort=False)
  sums = grouped[[*means.values(), "count"]].sum()
  out = pd.DataFrame({name: sums[column] / sums["count"] for name, column in means.items()})
  return out.reset_index()
