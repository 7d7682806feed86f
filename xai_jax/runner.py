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
import json
import math
import pathlib
import time
import zlib
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm import auto as tqdm

from xai_jax import explain
from xai_jax import files
from xai_jax import xla
from xai_jax.explain.postprocess import to_map
from xai_jax.metrics import pixel_removal, registry
from xai_jax.models.base import as_apply

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
  files.write_json(current, path)


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
        files.write_table(frames[table], shard_path(workdir, table, shard), verified=True)
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
    frames = [files.read_table(shard_path(workdir, table, s), fix="rerun to recompute it")
              for s in shards]
    result = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    files.write_table(result, pathlib.Path(workdir) / f"{table}.csv")
    results[table] = result
  return results


def _check_shard(workdir, tables: Sequence[str], shard: int) -> bool:
  """Whether every table file of `shard` verifies; warns about each damaged one."""
  intact = True
  for table in tables:
    path = shard_path(workdir, table, shard)
    try:
      files.read_table(path)
    except FileNotFoundError:
      intact = False
    except files.DamagedFileError as error:
      files.warn_damaged(error, f"recomputing shard {shard}")
      intact = False
  return intact


# --------------------------------------------------------------------------------------------
# Explain and score a dataset: every configured method x every configured metric, in shards.

_MAP_REDUCE = "sum"
"""How attributions become the maps that the metrics (except five-band) and the gallery use."""


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
  name) and named baselines ("zeros", "uniform:K", "normal:K:STD", "train:N"; see
  `_baseline_spec`). A `key` is not required
  from methods that take one (`explain.takes_key`): `evaluate` fills it in.

  Returns:
    `{display name: (registry name, options without method_name)}`.

  Raises:
    ValueError: no methods, or a bad method or option; the message starts with
      `methods.<display name>`.
  """
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
      for field in NAMED_BASELINE_FIELDS:
        if isinstance(options.get(field), str):
          _baseline_spec(options[field], field)
      explain.check_options(name, options,
                            supplied=("key",) if explain.takes_key(name) else ())
    except ValueError as error:
      raise ValueError(f"methods.{display}: {error}") from None
    resolved[display] = (name, options)
  return resolved


def _is_int(value) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_shards(num_examples: int, shard_size: int, *, delta_k: int = 0,
                 available: int | None = None) -> None:
  """Checks the split of `num_examples` samples into shards of `shard_size` (the last smaller).

  The DeepMaps delta (`delta_k > 0`) compares each image's map with the maps of `delta_k`
  *other* images of the evaluated set (`pixel_removal.draw_partners`), so the set needs more
  than `delta_k` images; the shards may have any size.

  Args:
    num_examples: samples evaluated.
    shard_size: samples per shard.
    delta_k: the pixel-removal delta's K (0: no delta).
    available: samples the data holds (checked when given).

  Raises:
    ValueError: `shard_size < 1`, `num_examples` outside `[1, available]`, or not more than
      `delta_k` samples; the message names the fields and suggests valid values.
  """
  if not _is_int(shard_size) or shard_size < 1:
    raise ValueError(f"shard_size must be a positive int; got {shard_size!r}")
  if (not _is_int(num_examples) or num_examples < 1
      or (available is not None and num_examples > available)):
    raise ValueError(f"num_examples must be in [1, {available if available is not None else 'N'}]"
                     f" (the samples of the data); got {num_examples!r}")
  delta_k = int(delta_k or 0)
  if delta_k and num_examples <= delta_k:
    more = ("" if available is not None and available <= delta_k
            else f"num_examples > {delta_k} or ")
    raise ValueError(
        f"pixel_removal delta_k = {delta_k} needs more than {delta_k} evaluated images (each "
        f"map is compared with the maps of {delta_k} other images of the set); "
        f"num_examples = {num_examples}: use {more}delta_k < {num_examples}"
        + (" (0: no delta)" if num_examples == 1 else ""))


NAMED_BASELINE_FIELDS = ("baseline", "baselines", "background")
"""The method options that may name their reference images (`_baseline_spec`)."""


def _baseline_spec(spec: str, field: str) -> tuple[str, int, float]:
  """Checks a named baseline; returns `(kind, K, scale)`: "zeros" (0 images), or for
  `baselines` "uniform:K" (K >= 1) or "normal:K:STD" (K >= 1, STD > 0 finite), or for
  `baselines` and `background` "train:N" (N >= 1: the first N images of the training
  references given to `evaluate`, e.g. layer SHAP's expected-gradients background)."""
  if spec == "zeros":
    return "zeros", 0, 0.0
  kind, _, rest = spec.partition(":")
  if field == "baselines" and kind in ("uniform", "normal"):
    count, _, scale = rest.partition(":")
    if count.isdigit() and int(count) >= 1:
      if kind == "uniform" and not scale:
        return kind, int(count), 0.0
      try:
        std = float(scale)
      except ValueError:
        std = math.nan
      if kind == "normal" and 0.0 < std < math.inf:
        return kind, int(count), std
  if field in ("baselines", "background") and kind == "train":
    if rest.isdigit() and int(rest) >= 1:
      return kind, int(rest), 0.0
  valid = {"baseline": "",
           "baselines": ", 'uniform:K', 'normal:K:STD' or 'train:N' with K, N >= 1 and STD > 0",
           "background": " or 'train:N' with N >= 1"}[field]
  raise ValueError(f"unknown {field} {spec!r}; valid: 'zeros'{valid}")


def training_references_needed(methods: Mapping[str, Mapping[str, Any]]) -> int:
  """The largest N of the "train:N" named baselines of `methods` (0: none); `evaluate` needs
  `references` with at least that many training images.

  Raises:
    ValueError: a malformed named baseline (`_baseline_spec`).
  """
  needed = 0
  for options in methods.values():
    for field in NAMED_BASELINE_FIELDS:
      spec = (options or {}).get(field)
      if isinstance(spec, str):
        kind, count, _ = _baseline_spec(spec, field)
        if kind == "train":
          needed = max(needed, count)
  return needed


def method_key(key: jax.Array, display: str) -> jax.Array:
  """`key` folded with a hash of the method's display name: independent of the methods' order.

  The hash (CRC-32) is stable across processes and runs, unlike Python's `hash`.
  """
  return jax.random.fold_in(key, zlib.crc32(display.encode()) % (2**31 - 1))


def image_keys(key: jax.Array, display: str, indices) -> jax.Array:
  """The keys of method `display`'s random draws for each image, a key array `[len(indices)]`:
  `fold_in(method_key(key, display), index)`, so an image's draws depend only on the run's
  key, the method and the image's index in the evaluated set (not on its shard or position).
  """
  indices = jnp.asarray(np.asarray(indices, np.uint32))
  return jax.vmap(jax.random.fold_in, (None, 0))(method_key(key, display), indices)


def partner_key(key: jax.Array) -> jax.Array:
  """The key of the DeepMaps delta's partner draws (`pixel_removal.draw_partners`), shared by
  all methods; `method_key`'s fold-in values stay below `2**31 - 1`, so it is none of them."""
  return jax.random.fold_in(key, 2**31 - 1)


def explain_options(name: str, options: dict, x: jax.Array, keys: jax.Array,
                     references: jax.Array | None = None) -> dict:
  """Fills the options a method cannot run without: its per-image keys `keys[N]` (one per
  row of `x`, `image_keys`), and baselines given by name (`references`: the training images
  that "train:N" takes)."""
  options = dict(options)
  if explain.takes_key(name) and "key" not in options:
    options["key"] = keys
  for field in NAMED_BASELINE_FIELDS:
    spec = options.get(field)
    if isinstance(spec, str):
      options[field] = _named_baseline(spec, field, x, keys, references)
  return options


def _named_baseline(spec: str, field: str, x: jax.Array, keys: jax.Array,
                    references: jax.Array | None = None) -> jax.Array:
  """A named baseline (`_baseline_spec`): "zeros" (black image); "uniform:K", for each image i
  K images uniform in `[min x_i, max x_i]`; "normal:K:STD", for each image K images of
  N(0, STD^2) noise (Tjoa & Guan's GradientShap / DeepLiftShap baselines, "normal:4:0.001");
  or "train:N", the first N rows of `references` (`float[M >= N, H, W, C]`, training images),
  one set `[N, H, W, C]` shared by every image (shap's background data: Gattas' layer SHAP).
  The random sets are `[N, K, H, W, C]`, drawn from `fold_in(keys[i], 7)`: one per image, so
  that an image's set does not depend on its batch.

  Raises:
    ValueError: "train:N" without `references`, or with fewer than N of them.
  """
  shape = x.shape[1:]
  kind, count, std = _baseline_spec(spec, field)
  if kind == "zeros":
    zeros = jnp.zeros(shape, x.dtype)
    return zeros if field == "baseline" else zeros[None]
  if kind == "train":
    if references is None or references.shape[0] < count:
      have = "none" if references is None else str(references.shape[0])
      raise ValueError(f"{field} {spec!r} needs at least {count} training reference images; "
                       f"got {have} (runner.evaluate's references)")
    return jnp.asarray(references[:count], x.dtype)
  if kind == "normal":
    draw = lambda k: std * jax.random.normal(jax.random.fold_in(k, 7), (count, *shape), x.dtype)
    return jax.vmap(draw)(keys)
  flat = x.reshape(x.shape[0], -1)
  draw = lambda k, low, high: jax.random.uniform(jax.random.fold_in(k, 7), (count, *shape),
                                                 x.dtype, low, high)
  return jax.vmap(draw)(keys, jnp.min(flat, axis=1), jnp.max(flat, axis=1))


def _gallery_positions(labels: np.ndarray, size: int) -> np.ndarray:
  """The first sample of each class (in class order), then the next samples, up to `size`."""
  firsts = [int(np.flatnonzero(labels == c)[0]) for c in np.unique(labels)]
  rest = [i for i in range(len(labels)) if i not in firsts]
  return np.asarray((firsts + rest)[:size], np.int64)


def load_gallery(path) -> dict[str, np.ndarray]:
  """Reads a `gallery.npz` written by `evaluate`, checked against its record.

  A gallery without a record (written by an xai_jax version before records) is read with a
  `files.DamagedFileWarning`; `evaluate` itself recomputes such a gallery.

  Raises:
    files.DamagedFileError: the gallery is damaged; rerunning `evaluate` recomputes it.
  """
  return files.load_npz(path, unrecorded="warn", fix="rerun the evaluation to recompute it")


def evaluate(workdir, *, source, model, variables, methods: Mapping[str, Mapping[str, Any]],
             metrics: Sequence[str] = registry.FAMILY_NAMES,
             metric_options: Mapping[str, Mapping[str, Any]] | None = None,
             shard_size: int = 64, num_examples: int | None = None, key: jax.Array,
             model_name: str = "model", mesh: Mesh | None = None, progress: bool = True,
             gallery_size: int = 10, references=None) -> EvaluationTables:
  """Explains every sample of `source` with every method and scores every map, in shards.

  Per shard of `shard_size` samples (the last may be smaller): the batch is placed on all
  devices of `mesh` (`shard_batch`), the model's prediction `c = argmax f(x)` is the target of
  every explanation (Tjoa & Guan and DeepMaps explain the predicted class), each method runs
  once on the whole batch (compiled once per method and options; the variables are
  arguments), and every metric family of `metrics` (`xai_jax.metrics.registry`: its columns,
  directions, options and the ground truth it needs) is computed on the device, in one jit
  per method:

  * "five_band" (needs "heatmap"): the five-band columns of both threshold settings, and the
    `roc` table.
  * "iou" (needs "mask", or "heatmap" whose non-zero pixels are the mask): `iou`, `iou_star`.
  * "pixel_removal": the DeepMaps set from full MoRF and LeRF curves and, with `delta_k > 0`,
    its Eq. 9 variants `delta_<metric>` against the maps of `delta_k` other images drawn
    uniformly from the whole evaluated set (`pixel_removal.draw_partners` with
    `partner_key(key)`, per image index, the same partners for every method); the `curves`
    table holds the mean curves. A partner's map is the one the method gives it as its own
    image (its predicted class, its per-image keys): the shard loads the partner images
    and explains them, in batches of at most `shard_size`. The delta therefore costs
    `delta_k` more explanations per image, besides the `delta_k` extra MoRF and LeRF curves.

  The columns of a run are `registry.columns(metrics, metric_options)`.

  Every shard writes its rows atomically (`run_shard_tables`), so an interrupted run resumes
  where it stopped and its final tables are byte-identical to an uninterrupted run. Random
  draws (SmoothGrad noise, GradientShap baselines and samples, random maps, ...) come from
  per-image keys `image_keys(key, method, index)` (the explainers take one key per image:
  `explain.sampling.check_keys`), and the delta partners from `partner_key(key)` and the
  image's index: every per-image result (the delta included) is the same for any shard size,
  device count or process count, and when resuming, up to float rounding of batches of
  another composition (and as long as the metric options do not depend on the batch:
  pixel removal's `fill="batch_mean"` is the batch mean).

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
      the methods that take one (`explain.takes_key`: SmoothGrad, GradientShap, random maps,
      the sampling methods), one key per image (`image_keys`); `baseline(s)` may be "zeros",
      "uniform:K" (K images uniform in each image's value range, one set per image) or
      "normal:K:STD" (K images of N(0, STD^2) noise per image); `baselines` and `background`
      (layer SHAP) may be "train:N", the first N images of `references`, one set for all.
    metrics: metric family names, keys of `registry.FAMILIES`.
    metric_options: `{family: {option: value}}`, e.g. `{"pixel_removal": {fraction, step,
      fill, chunk, delta_k, score}, "iou": {n_std, n_std_star, abs}}`; defaults
      `registry.FAMILIES[family].defaults`.
    shard_size: samples per shard (and per device batch: memory scales with it; the delta's
      partner images add `delta_k * shard_size` images on the host and on the devices).
    num_examples: evaluate the first `num_examples` samples (default all).
    key: PRNG key of every random draw.
    model_name: the `model` column, and the tables' folder.
    mesh: from `batch_mesh` (default: all local devices).
    progress: tqdm bar with images/s and ETA.
    gallery_size: samples kept with their maps in `gallery.npz` (0: none).
    references: random-access training images (`len`, `get_batch(indices)["image"]`), read
      once (the first N) when a method names "train:N"; None otherwise.

  Returns:
    An `EvaluationTables`.

  Raises:
    ValueError: unknown methods or metrics, a metric whose ground truth the source lacks, no
      more images than `delta_k`, NaN images, "train:N" without N `references`.
  """
  resolved = check_methods(methods)
  needed = training_references_needed(methods)
  reference_images = None
  if needed:
    if references is None or len(references) < needed:
      raise ValueError(f"a method names 'train:{needed}': evaluate needs references with at "
                       f"least {needed} training images; got "
                       f"{'none' if references is None else len(references)}")
    reference_images = jnp.asarray(np.asarray(
        references.get_batch(np.arange(needed))["image"], np.float32))
  metrics, options = registry.check_options(metrics, metric_options)
  total = len(source) if num_examples is None else num_examples
  delta_k = registry.delta_k(metrics, options)
  check_shards(total, shard_size, delta_k=delta_k, available=len(source))
  mesh = batch_mesh() if mesh is None else mesh
  num_shards = -(-total // shard_size)
  workdir = pathlib.Path(workdir)
  tables = tuple(f"{model_name}/{t}" for t in ("samples", "roc", "curves"))
  gallery_path = workdir / model_name / "gallery.npz"
  families = tuple(name for name in registry.FAMILIES if name in metrics)
  static_options = tuple((name, tuple((k, tuple(v) if isinstance(v, list) else v)
                                      for k, v in sorted(options[name].items())))
                         for name in families)

  def load(indices: np.ndarray, what: str) -> tuple[dict, np.ndarray]:
    batch = source.get_batch(indices)
    images = np.asarray(batch["image"], np.float32)
    if not np.isfinite(images).all():
      raise ValueError(f"{what}: images contain NaN or inf (samples "
                       f"{indices[~np.isfinite(images).reshape(len(indices), -1).all(1)]})")
    return batch, images

  def place(images: np.ndarray, indices: np.ndarray):
    """`(x, padded indices, target, confidence)`: the batch on the devices, the index of
    each of its rows (padding repeats the last) and the prediction, the target."""
    placed, _ = shard_batch({"x": images}, mesh)
    x = placed["x"]
    padded = np.concatenate([indices, np.repeat(indices[-1:], x.shape[0] - len(indices))])
    target, confidence = _predict(model, variables, x)
    return x, padded, target, confidence

  def explain_batch(display: str, x, padded: np.ndarray, target) -> jax.Array:
    name, method_options = resolved[display]
    return explain.explain(name, model, variables, x, target, **explain_options(
        name, method_options, x, image_keys(key, display, padded), reference_images))

  def compute_shard(shard: int) -> dict[str, pd.DataFrame]:
    indices = np.arange(shard * shard_size, min(total, (shard + 1) * shard_size))
    batch, images = load(indices, f"shard {shard}")
    n = len(indices)
    labels = np.asarray(batch.get("label", np.full(n, -1)), np.int64)
    for family in families:
      needs = registry.family(family).ground_truth
      if needs and not any(k in batch for k in needs):
        raise ValueError(f"metric {family!r} needs a source with {' or '.join(needs)!r}; "
                         f"the batch has {sorted(batch)}")
    heatmap = None if batch.get("heatmap") is None else np.asarray(batch["heatmap"], np.float32)
    mask = batch.get("mask", None if heatmap is None else heatmap > 0)
    mask = None if mask is None else np.asarray(mask, np.float32)
    x, padded, target, confidence = place(images, indices)
    predicted = np.asarray(target)[:n].astype(np.int64)
    base = pd.DataFrame({
        "model": model_name, "shard": shard, "position": np.arange(n), "index": indices,
        "label": labels, "background": np.asarray(batch.get("background", np.full(n, -1))),
        "predicted": predicted, "confidence": np.asarray(confidence, np.float64)[:n],
        "correct": (predicted == labels).astype(np.int64)})
    partner_batches, partner_of = [], None
    if delta_k:  # DeepMaps Eq. 9: each image's k partners, drawn from the whole evaluated set
      partners = np.asarray(pixel_removal.draw_partners(partner_key(key), indices, total, delta_k))
      unique, partner_of = np.unique(partners, return_inverse=True)
      for first in range(0, len(unique), shard_size):
        chunk = unique[first:first + shard_size]
        # Padded to shard_size: every batch has the shape of a full shard (one compilation).
        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], shard_size - len(chunk))])
        _, partner_images = load(chunk, f"shard {shard} (delta partners)")
        partner_batches.append((min(shard_size, len(unique) - first),
                                *place(partner_images, chunk)[:3]))
    sample_frames, roc_frames, curve_frames, maps_of = [], [], [], {}
    for display in resolved:
      attributions = explain_batch(display, x, padded, target)
      other_maps = None
      if delta_k:
        partner_maps = np.concatenate([
            np.asarray(_maps(explain_batch(display, px, p_padded, p_target), n=count))
            for count, px, p_padded, p_target in partner_batches])
        other_maps = partner_maps[partner_of.reshape(n, delta_k)]
      scored = jax.device_get(_score(
          model, variables, x, attributions, heatmap, mask, other_maps, n=n,
          options=static_options))
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
      files.save_npz(gallery, gallery_path)
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
  files.write_table(roc, workdir / model_name / "roc.csv")
  files.write_table(curves, workdir / model_name / "curves.csv")
  gallery = load_gallery(gallery_path) if gallery_size else {}
  return EvaluationTables(samples=raw[tables[0]], roc=roc, curves=curves, gallery=gallery)


@functools.partial(xla.jit, static_argnames=("model",))
def _predict(model, variables, x):
  """`(argmax f(x), softmax probability of it)`, the target of every explanation."""
  logits = as_apply(model)(variables, x).astype(jnp.float32)
  target = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  return target, jnp.max(jax.nn.softmax(logits, axis=-1), axis=-1)


def _maps_of(attributions: jax.Array) -> jax.Array:
  """The saliency maps `float32[N, H, W]` of attributions (input-space ones summed over
  channels), what the metrics (except five-band) and the gallery use."""
  attributions = attributions.astype(jnp.float32)
  return attributions if attributions.ndim == 3 else to_map(attributions, _MAP_REDUCE)


@functools.partial(xla.jit, static_argnames=("n",))
def _maps(attributions, *, n):
  """`_maps_of` the first `n` (unpadded) rows."""
  return _maps_of(attributions[:n])


@functools.partial(xla.jit, static_argnames=("model", "n", "options"))
def _score(model, variables, x, attributions, heatmap, mask, other_maps, *, n, options):
  """Every metric family of one method's attributions on the first `n` (unpadded) rows, in
  one jit.

  Args:
    other_maps: `float32[n, K, H, W]`, the maps of each image's delta partners, or None.
    options: `((family, ((option, value), ...)), ...)`, hashable, in registry order.

  Returns:
    `{"maps": float32[n, H, W], "columns": {name: [n]}, "roc": {setting: (recall sum, FPR
    sum)}, "curves": {order: {fraction, score_sum, drop_sum, flip_sum}}}`, gathered from the
    families' `registry.FamilyScores`.
  """
  attributions = attributions[:n].astype(jnp.float32)
  maps = _maps_of(attributions)
  inputs = registry.ScoringInputs(
      model=model, variables=variables, images=x[:n], attributions=attributions, maps=maps,
      heatmap=None if heatmap is None else heatmap[:n], mask=None if mask is None else mask[:n],
      other_maps=other_maps)
  out = {"maps": maps, "columns": {}, "roc": {}, "curves": {}}
  for family, family_options in options:
    scores = registry.family(family).score(inputs, dict(family_options))
    out["columns"].update(scores.columns)
    out["roc"].update(scores.roc)
    out["curves"].update(scores.curves)
  return out


def _mean_over_shards(frame: pd.DataFrame, keys: Sequence[str],
                      means: Mapping[str, str]) -> pd.DataFrame:
  """Sums the per-shard sums and counts over shards; returns the means, in first-seen order."""
  if frame.empty:
    return pd.DataFrame(columns=[*keys, *means])
  grouped = frame.groupby(list(keys), sort=False)
  sums = grouped[[*means.values(), "count"]].sum()
  out = pd.DataFrame({name: sums[column] / sums["count"] for name, column in means.items()})
  return out.reset_index()
