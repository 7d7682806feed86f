"""Resumable, sharded evaluation: the workdir is the unit of output.

A long evaluation is split into shards (fixed, ordered slices of a dataset). Each shard's
rows are written atomically to `WORKDIR/shards/TABLE/shard_XXXXX.csv` (a temporary file in
the same folder, flushed and fsynced, then `os.replace`d), so a shard file either holds
every row of its shard or does not exist. A rerun skips the shards whose files exist; the
final table concatenates the shard files in shard order. Killing a run (even with
`kill -9`) and rerunning it therefore gives a final table byte-identical to an
uninterrupted run, with no lost and no duplicated rows.

Arrays are spread over all local devices with `jax.sharding` (a 1-D mesh over the batch
axis; never `pmap`): `shard_batch` pads the batch to a multiple of the device count and
places it, and jitted functions then run data-parallel under GSPMD.
"""

import json
import os
import pathlib
import tempfile
import time
from typing import Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm import auto as tqdm

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


def _atomic_write_text(path: pathlib.Path, text: str) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(handle, "w") as stream:
      stream.write(text)
      stream.flush()
      os.fsync(stream.fileno())
    os.replace(temporary, path)
  except BaseException:
    if os.path.exists(temporary):
      os.unlink(temporary)
    raise


def write_table(frame: pd.DataFrame, path) -> None:
  """Writes a CSV atomically with a fixed float format (bytes depend only on the values)."""
  _atomic_write_text(pathlib.Path(path), frame.to_csv(index=False, float_format="%.8g"))


def write_json(data: Mapping[str, Any], path) -> None:
  """Writes JSON atomically, keys sorted."""
  _atomic_write_text(pathlib.Path(path), json.dumps(data, indent=2, sort_keys=True,
                                                    default=str) + "\n")


def shard_path(workdir, table: str, shard: int) -> pathlib.Path:
  return pathlib.Path(workdir) / "shards" / table / f"shard_{shard:05d}.csv"


def run_shards(workdir, table: str, shards: Iterable[int],
               compute_shard: Callable[[int], pd.DataFrame], *,
               images_per_shard: int | None = None, progress: bool = True,
               description: str | None = None) -> pd.DataFrame:
  """Computes every missing shard of a table and returns the table in shard order.

  Args:
    workdir: the experiment's output folder.
    table: the table's name; the final CSV is `WORKDIR/TABLE.csv`.
    shards: shard ids, in the order of the final table.
    compute_shard: `shard id -> DataFrame` of that shard's rows; pure apart from reading
      data, so a rerun recomputes exactly the same rows.
    images_per_shard: for the progress bar's images/s.
    progress: show a tqdm bar with shards/s (images/s) and ETA.
    description: the bar's label (default: the table name).

  Returns:
    The concatenated table, also written to `WORKDIR/TABLE.csv`.
  """
  shards = list(shards)
  if len(set(shards)) != len(shards):
    raise ValueError(f"shard ids must be unique; got {shards}")
  missing = [s for s in shards if not shard_path(workdir, table, s).exists()]
  bar = tqdm.tqdm(total=len(shards), initial=len(shards) - len(missing),
                  desc=description or table, unit="shard", disable=not progress,
                  dynamic_ncols=True)
  started, done = time.perf_counter(), 0
  with bar:
    for shard in missing:
      frame = compute_shard(shard)
      if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"compute_shard must return a pandas DataFrame, got {type(frame)}")
      write_table(frame, shard_path(workdir, table, shard))
      done += 1
      if images_per_shard:
        rate = done * images_per_shard / max(time.perf_counter() - started, 1e-9)
        bar.set_postfix_str(f"{rate:.1f} images/s")
      bar.update(1)
  frames = [pd.read_csv(shard_path(workdir, table, s)) for s in shards]
  result = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
  write_table(result, pathlib.Path(workdir) / f"{table}.csv")
  return result
