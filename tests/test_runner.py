"""Resumable shards (kill -9 and rerun gives identical tables) and batch sharding."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from xai_jax import runner

ROOT = pathlib.Path(__file__).resolve().parents[1]

# A shard's rows depend only on its id; the sleep leaves time to kill the run mid-way.
_SCRIPT = textwrap.dedent("""
    import sys, time
    import numpy as np, pandas as pd
    from xai_jax import runner

    def compute(shard):
      time.sleep(float(sys.argv[2]))
      rng = np.random.default_rng(shard)
      return pd.DataFrame({"shard": shard, "row": np.arange(3), "score": rng.normal(size=3)})

    runner.run_shards(sys.argv[1], "scores", range(12), compute, progress=False)
""")


def _run_script(workdir, delay, **kwargs):
  return subprocess.Popen([sys.executable, "-c", _SCRIPT, str(workdir), str(delay)],
                          cwd=ROOT, **kwargs)


@pytest.mark.slow
def test_kill_9_then_rerun_gives_the_same_bytes_as_an_uninterrupted_run(tmp_path):
  reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
  assert _run_script(reference, 0.0).wait(timeout=120) == 0

  process = _run_script(interrupted, 0.4)
  shard_dir = interrupted / "shards" / "scores"
  deadline = time.time() + 120
  while len(list(shard_dir.glob("shard_*.csv"))) < 3 and time.time() < deadline:
    time.sleep(0.05)
  os.kill(process.pid, signal.SIGKILL)
  process.wait()
  written = sorted(shard_dir.glob("shard_*.csv"))
  assert 3 <= len(written) < 12, "the kill should land mid-run"
  assert not (interrupted / "scores.csv").exists()

  assert _run_script(interrupted, 0.0).wait(timeout=120) == 0
  assert (interrupted / "scores.csv").read_bytes() == (reference / "scores.csv").read_bytes()
  table = pd.read_csv(interrupted / "scores.csv")
  assert len(table) == 36 and not table.duplicated(["shard", "row"]).any()
  assert list(table.shard.unique()) == list(range(12))


def test_finished_shards_are_not_recomputed(tmp_path):
  calls = []

  def compute(shard):
    calls.append(shard)
    return pd.DataFrame({"shard": [shard], "value": [shard * 0.5]})

  runner.run_shards(tmp_path, "t", [0, 1, 2], compute, progress=False)
  first = (tmp_path / "t.csv").read_bytes()
  runner.run_shards(tmp_path, "t", [0, 1, 2, 3], compute, progress=False)
  assert calls == [0, 1, 2, 3]
  assert (tmp_path / "t.csv").read_bytes().startswith(first)


def test_a_failing_shard_leaves_no_partial_file(tmp_path):
  def compute(shard):
    if shard == 1:
      raise RuntimeError("boom")
    return pd.DataFrame({"shard": [shard]})

  with pytest.raises(RuntimeError):
    runner.run_shards(tmp_path, "t", [0, 1], compute, progress=False)
  assert sorted(p.name for p in (tmp_path / "shards" / "t").iterdir()) == [
      ".shard_00000.csv.sha256", "shard_00000.csv"]  # the finished shard and its record


def test_shard_batch_pads_and_unpad_restores():
  x = jnp.arange(10.0).reshape(5, 2)
  placed, size = runner.shard_batch({"x": x})
  assert size == 5 and placed["x"].shape[0] % jax.local_device_count() == 0
  np.testing.assert_array_equal(runner.unpad(placed, size)["x"], x)


_SHARDING_SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from xai_jax import runner
    x = jax.random.normal(jax.random.key(0), (13, 8, 8, 3))
    w = jax.random.normal(jax.random.key(1), (8 * 8 * 3, 4))
    f = jax.jit(lambda w, x: jax.nn.log_softmax(x.reshape(len(x), -1) @ w))
    placed, size = runner.shard_batch(x)
    out = runner.unpad(f(w, placed), size)
    print(jax.device_count(), len(placed.sharding.device_set))
    np.save(__import__("sys").argv[1], out)
""")


@pytest.mark.slow
def test_eight_fake_devices_give_the_same_numbers_as_one(tmp_path):
  results = {}
  for devices in (1, 8):
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
           "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", _SHARDING_SCRIPT, str(tmp_path / f"{devices}.npy")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(devices), str(devices)]
    results[devices] = np.load(tmp_path / f"{devices}.npy")
  np.testing.assert_allclose(results[8], results[1], rtol=1e-6, atol=1e-6)


def test_two_processes_split_the_shards_and_return_the_same_tables(tmp_path):
  computed = {0: [], 1: []}

  def compute(process):
    def shard_rows(shard):
      computed[process].append(shard)
      return {"t": pd.DataFrame({"shard": [shard] * 2, "value": [shard * 0.5, shard + 1.0]})}
    return shard_rows

  results = {}
  other = threading.Thread(target=lambda: results.__setitem__(1, runner.run_shard_tables(
      tmp_path / "shared", ("t",), range(5), compute(1), progress=False, process_index=1,
      process_count=2, poll_seconds=0.01)))
  other.start()
  results[0] = runner.run_shard_tables(tmp_path / "shared", ("t",), range(5), compute(0),
                                       progress=False, process_index=0, process_count=2,
                                       poll_seconds=0.01)
  other.join(timeout=60)
  assert sorted(computed[0]) == [0, 2, 4] and sorted(computed[1]) == [1, 3]
  single = runner.run_shard_tables(tmp_path / "single", ("t",), range(5),
                                   lambda s: compute(0)(s), progress=False)
  for process in (0, 1):
    pd.testing.assert_frame_equal(results[process]["t"], single["t"])
  assert ((tmp_path / "shared" / "t.csv").read_bytes()
          == (tmp_path / "single" / "t.csv").read_bytes())
  with pytest.raises(ValueError, match="process_index must be in"):
    runner.run_shard_tables(tmp_path / "x", ("t",), range(2), compute(0), progress=False,
                            process_index=2, process_count=2)


def test_record_config_refuses_a_different_config_and_names_the_fields(tmp_path):
  path = tmp_path / "run" / "config.json"
  runner.record_config(path, {"seed": 0, "data": {"size": 32}, "figures": True})
  runner.record_config(path, {"seed": 0, "data": {"size": 32}, "figures": False},
                       ignore=("figures",))
  assert json.loads(path.read_text())["figures"] is False  # ignored fields are still written
  with pytest.raises(ValueError, match=r"holds results of a different config \(fields "
                                       r"\['data', 'figures'\] differ\)"):
    runner.record_config(path, {"seed": 0, "data": {"size": 64}, "figures": True},
                         what="results")
