r"""Throughput of the synthetic cell generator: images per second.

  python -m benchmarks.cells [--sizes=64,224,512] [--batch=64] [--repeats=5]
  python -m benchmarks.cells --sizes=32 --batch=8 --repeats=2     # a quick check

For each size, `xla.jit(jax.vmap(make_cell))` (as `cells.make_batch` compiles it)
runs on batches of `--batch`
random keys with uniformly drawn (traced) labels and backgrounds, as the
dataset is built. The first call (compilation) is timed separately; the table
gives the median over `--repeats` timed batches and the projected time to
generate the paper's 9,600 samples (6400 train + 1600 validation + 1600 test)
at 224x224. Target (issue 2): under 60 s on a 2-core CPU, 10x faster on a GPU.
"""

import functools
import resource
import statistics
import time

from absl import app
from absl import flags
import jax

from xai_jax import xla
from xai_jax.data import cells

_SIZES = flags.DEFINE_list("sizes", ["64", "224", "512"], "Image sizes to time.")
_BATCH = flags.DEFINE_integer("batch", 64, "Images per jitted call.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per size (median reported).")
_DATASET = flags.DEFINE_integer("dataset_size", 9600, "Samples for the projected time.")
_PROJECT_SIZE = 224


def time_generator(size: int, *, batch: int, repeats: int, seed: int = 0) -> dict:
  """Times `jit(vmap(make_cell))` at one size.

  Args:
    size: image side length.
    batch: images per call.
    repeats: timed calls after the warm-up call.
    seed: PRNG seed.

  Returns:
    dict with `size`, `batch`, `compile_s` (first call, incl. compilation),
    `median_s` (wall time per call), `images_per_s`, and `images_per_cpu_s`
    (images per second of process CPU time, all threads: a figure that a
    machine shared with other jobs distorts less than wall time).
  """
  generate = xla.jit(jax.vmap(functools.partial(cells.make_cell, size=size)))
  key = jax.random.key(seed)
  k_labels, k_backgrounds = jax.random.split(jax.random.fold_in(key, size))
  labels = jax.random.randint(k_labels, (batch,), 0, cells.NUM_CLASSES)
  backgrounds = jax.random.randint(k_backgrounds, (batch,), 0, cells.NUM_BACKGROUNDS)
  start = time.perf_counter()
  jax.block_until_ready(generate(jax.random.split(key, batch), labels, backgrounds))
  compile_s = time.perf_counter() - start
  times, cpu_times = [], []
  for repeat in range(repeats):
    keys = jax.random.split(jax.random.fold_in(key, repeat + 1), batch)
    jax.block_until_ready(keys)
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    jax.block_until_ready(generate(keys, labels, backgrounds))
    times.append(time.perf_counter() - start)
    cpu_times.append(_cpu_seconds() - cpu_start)
  median = statistics.median(times)
  return dict(size=size, batch=batch, compile_s=compile_s, median_s=median,
              images_per_s=batch / median,
              images_per_cpu_s=batch / max(statistics.median(cpu_times), 1e-9))


def _cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def main(argv):
  del argv
  device = jax.devices()[0]
  print(f"device: {device.platform} {device.device_kind} ({len(jax.devices())} device(s))")
  print(f"{'size':>6} {'batch':>6} {'compile+1st s':>14} {'s/batch':>9} {'images/s':>10} "
        f"{'images/cpu-s':>13}")
  rows = []
  for size in (int(s) for s in _SIZES.value):
    row = time_generator(size, batch=_BATCH.value, repeats=_REPEATS.value)
    rows.append(row)
    print(f"{row['size']:>6} {row['batch']:>6} {row['compile_s']:>14.2f} "
          f"{row['median_s']:>9.3f} {row['images_per_s']:>10.1f} "
          f"{row['images_per_cpu_s']:>13.1f}", flush=True)
  at_224 = [r for r in rows if r["size"] == _PROJECT_SIZE]
  if at_224:
    seconds = _DATASET.value / at_224[0]["images_per_s"]
    print(f"projected: {_DATASET.value} samples at {_PROJECT_SIZE}x{_PROJECT_SIZE} in "
          f"{seconds:.1f} s (generation only, median batch time; target < 60 s on CPU)")
  else:
    print(f"(no projection: {_PROJECT_SIZE} not among --sizes)")


if __name__ == "__main__":
  app.run(main)
