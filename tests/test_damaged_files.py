"""Damaged files are detected when read back: recomputed to the same bytes, or refused.

Every kind of file that xai_jax writes and reads back is damaged in four ways (the first half
kept: truncated; emptied; four bytes flipped in the middle: garbled; deleted), and the run
that reads it is repeated. The outcome must be one of two (never a shorter table):

* recomputed, with a `files.DamagedFileWarning` naming the file, to bytes identical to an
  undamaged run (shard tables of each kind, the gallery, training checkpoints and history,
  the sanity checks' accuracy JSON and saved explanations);
* refused, with a `files.DamagedFileError` naming the file and the fix (ported weights, a
  training run without any intact checkpoint, a weights `.npz`).

Files written before records existed ("unrecorded") are covered too.
"""

import contextlib
import io
import pathlib
import re
import shutil
import threading
import time
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from configs import sanity_checks as sanity_config
from xai_jax import files, models, runner, train
from xai_jax.data import cell_source
from xai_jax.models import port
from xai_jax.pipelines import image_experiment
from xai_jax.pipelines import sanity_checks

DAMAGES = ("truncate", "empty", "garble", "delete")


def damage(path: pathlib.Path, how: str) -> None:
  """Damages a file the way a full disk, a bad copy or a stray edit would."""
  data = path.read_bytes()
  if how == "truncate":
    path.write_bytes(data[:len(data) // 2])
  elif how == "empty":
    path.write_bytes(b"")
  elif how == "garble":
    middle = max(0, len(data) // 2 - 2)
    flipped = bytes(b ^ 0xFF for b in data[middle:middle + 4])
    assert flipped, f"{path} is empty: nothing to garble"
    path.write_bytes(data[:middle] + flipped + data[middle + 4:])
  elif how == "delete":
    path.unlink()
  elif how == "unrecorded":  # as written by an xai_jax version before records
    files.record_path(path).unlink()
  else:
    raise ValueError(how)


@contextlib.contextmanager
def warned_about(*paths):
  """Asserts that `DamagedFileWarning`s name every one of `paths` (other warnings are kept
  out of the test log)."""
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    yield
  messages = [str(w.message) for w in caught if issubclass(w.category, files.DamagedFileWarning)]
  for path in paths:
    assert any(str(path) in message for message in messages), (str(path), messages)


def _outputs(workdir: pathlib.Path) -> dict[str, bytes]:
  """Every table, shard, record and the gallery, by relative path."""
  return {p.relative_to(workdir).as_posix(): p.read_bytes()
          for p in sorted(workdir.rglob("*")) if p.is_file()}


@pytest.fixture
def no_damage_warnings():
  """Turns every `DamagedFileWarning` into an error (an undamaged run must not warn)."""
  with warnings.catch_warnings():
    warnings.simplefilter("error", files.DamagedFileWarning)
    yield


# --------------------------------------------------------------------------------------------
# The checks themselves (xai_jax.files).


def test_every_damage_is_detected_and_a_table_with_no_rows_is_not_damage(tmp_path):
  path = tmp_path / "a.csv"
  files.write_table(pd.DataFrame({"x": [1.5, 2.0], "y": ["a", "b"]}), path, verified=True)
  assert files.read_verified(path) == b"x,y\n1.5,a\n2,b\n"
  assert files.recorded_rows(path) == 2
  for how, reason in (("truncate", "truncated: 7 bytes, 14 were written"),
                      ("empty", "emptied: 0 bytes, 14 were written"),
                      ("garble", "garbled"), ("delete", "deleted after it was written"),
                      ("unrecorded", "no checksum record")):
    files.write_table(pd.DataFrame({"x": [1.5, 2.0], "y": ["a", "b"]}), path, verified=True)
    damage(path, how)
    with pytest.raises(files.DamagedFileError, match=reason) as error:
      files.read_table(path)
    assert error.value.path == path
  # A table legitimately without rows (or without columns) reads back; emptied, it does not.
  for frame, text in ((pd.DataFrame(columns=["x"]), b"x\n"), (pd.DataFrame(), b"\n")):
    files.write_table(frame, path, verified=True)
    assert path.read_bytes() == text and files.recorded_rows(path) == 0
    assert files.read_table(path).empty
    path.write_bytes(b"")
    with pytest.raises(files.DamagedFileError, match="emptied"):
      files.read_table(path)
  # A garbled record is damage too, and a file written again with the same bytes is untouched.
  files.write_table(pd.DataFrame({"x": [1]}), path, verified=True)
  files.record_path(path).write_text("{not json")
  with pytest.raises(files.DamagedFileError, match="record .* is unreadable"):
    files.read_verified(path)
  files.write_table(pd.DataFrame({"x": [1]}), path, verified=True)
  stamp = path.stat().st_mtime_ns, files.record_path(path).stat().st_mtime_ns
  time.sleep(0.01)
  files.write_table(pd.DataFrame({"x": [1]}), path, verified=True)
  assert (path.stat().st_mtime_ns, files.record_path(path).stat().st_mtime_ns) == stamp


def test_a_record_that_disagrees_with_the_parsed_rows_is_damage(tmp_path):
  path = tmp_path / "a.csv"
  files.write_verified(path, "x\n1\n2\n", rows=3)  # a writer bug, or a hand-made record
  with pytest.raises(files.DamagedFileError, match="holds 2 rows; its record says 3"):
    files.read_table(path)


# --------------------------------------------------------------------------------------------
# Shard tables of `runner.run_shard_tables` (fast: the rows are made up).


def _made_up_shard(shard: int) -> dict[str, pd.DataFrame]:
  """Three tables: rows, no rows but columns, and no rows nor columns (e.g. ROC without
  five-band)."""
  rng = np.random.default_rng(shard)
  return {"scores": pd.DataFrame({"shard": shard, "row": np.arange(3),
                                  "score": rng.normal(size=3)}),
          "header_only": pd.DataFrame(columns=["shard", "value"]), "nothing": pd.DataFrame()}


_MADE_UP_TABLES = ("scores", "header_only", "nothing")


@pytest.fixture(scope="module")
def made_up_shards(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("made_up")
  runner.run_shard_tables(workdir, _MADE_UP_TABLES, range(3), _made_up_shard, progress=False)
  return workdir


@pytest.mark.parametrize("how", [*DAMAGES, "unrecorded"])
@pytest.mark.parametrize("table", _MADE_UP_TABLES)
def test_a_damaged_shard_is_recomputed_never_read_as_fewer_rows(made_up_shards, tmp_path,
                                                                 table, how):
  workdir = tmp_path / "w"
  shutil.copytree(made_up_shards, workdir)
  target = runner.shard_path(workdir, table, 1)
  damage(target, how)
  computed = []
  with warned_about(target):
    tables = runner.run_shard_tables(workdir, _MADE_UP_TABLES, range(3),
                                     lambda s: computed.append(s) or _made_up_shard(s),
                                     progress=False)
  assert computed == [1]
  assert len(tables["scores"]) == 9
  assert _outputs(workdir) == _outputs(made_up_shards)


def test_an_undamaged_rerun_computes_and_warns_about_nothing(made_up_shards, no_damage_warnings):
  computed = []
  runner.run_shard_tables(made_up_shards, _MADE_UP_TABLES, range(3),
                          lambda s: computed.append(s) or _made_up_shard(s), progress=False)
  assert computed == []
  assert [files.recorded_rows(runner.shard_path(made_up_shards, t, 0))
          for t in _MADE_UP_TABLES] == [3, 0, 0]


# --------------------------------------------------------------------------------------------
# Shard tables and the gallery of `runner.evaluate`.

SIZE, SHARD, NUM = 32, 4, 8


@pytest.fixture(scope="module")
def evaluation_setup():
  model = models.get("small_vgg", num_classes=10, widths=(8,))
  variables = models.init(model, jax.random.key(0), (1, SIZE, SIZE, 3))
  return model, variables, cell_source.source("test", size=SIZE, num_examples=NUM)


def _evaluate(workdir, setup, **overrides):
  model, variables, source = setup
  kwargs = dict(source=source, model=model, variables=variables, methods={"gradient": {}},
                metric_options={"pixel_removal": {"step_fraction": 0.05, "delta_k": 0}},
                shard_size=SHARD, key=jax.random.key(1), model_name="m", progress=False,
                gallery_size=2)
  return runner.evaluate(workdir, **{**kwargs, **overrides})


@pytest.fixture(scope="module")
def evaluated(evaluation_setup, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("evaluated")
  _evaluate(workdir, evaluation_setup)
  return workdir


@pytest.mark.slow
@pytest.mark.parametrize("how", [*DAMAGES, "unrecorded"])
@pytest.mark.parametrize("target", ["shards/m/samples/shard_00001.csv",
                                    "shards/m/roc/shard_00001.csv",
                                    "shards/m/curves/shard_00000.csv", "m/gallery.npz"])
def test_a_damaged_shard_or_gallery_is_recomputed_to_the_same_bytes(
    evaluated, evaluation_setup, tmp_path, target, how):
  workdir = tmp_path / "w"
  shutil.copytree(evaluated, workdir)
  damage(workdir / target, how)
  with warned_about(workdir / target):
    tables = _evaluate(workdir, evaluation_setup)
  assert _outputs(workdir) == _outputs(evaluated)
  assert len(tables.samples) == NUM  # one method: one row per image, none lost
  np.testing.assert_array_equal(tables.gallery["map/gradient"],
                                runner.load_gallery(evaluated / "m" / "gallery.npz")
                                ["map/gradient"])


@pytest.mark.slow
def test_an_undamaged_rerun_warns_about_nothing_and_keeps_every_file(
    evaluated, evaluation_setup, tmp_path, no_damage_warnings):
  workdir = tmp_path / "w"
  shutil.copytree(evaluated, workdir)
  stamps = {p: p.stat().st_mtime_ns for p in (workdir / "shards").rglob("*")}
  _evaluate(workdir, evaluation_setup)
  assert {p: p.stat().st_mtime_ns for p in (workdir / "shards").rglob("*")} == stamps
  assert _outputs(workdir) == _outputs(evaluated)


@pytest.mark.slow
def test_roc_shards_without_rows_are_finished_not_damaged(evaluation_setup, tmp_path):
  workdir = tmp_path / "w"
  with warnings.catch_warnings():
    warnings.simplefilter("error", files.DamagedFileWarning)
    first = _evaluate(workdir, evaluation_setup, metrics=("pixel_removal",))
    reference = _outputs(workdir)
    _evaluate(workdir, evaluation_setup, metrics=("pixel_removal",))  # nothing recomputed
  assert first.roc.empty and len(first.samples) == NUM
  shard = workdir / "shards" / "m" / "roc" / "shard_00001.csv"
  assert files.recorded_rows(shard) == 0 and _outputs(workdir) == reference
  damage(shard, "empty")  # "\n" (no rows, no columns) -> "": damaged, not "no rows"
  with warned_about(shard):
    _evaluate(workdir, evaluation_setup, metrics=("pixel_removal",))
  assert _outputs(workdir) == reference


def test_a_legacy_gallery_is_read_with_a_warning(tmp_path):
  arrays = {"images": np.arange(12.0).reshape(1, 2, 2, 3), "labels": np.array([3])}
  files.save_npz(arrays, tmp_path / "recorded.npz")
  path = tmp_path / "gallery.npz"
  shutil.copy(tmp_path / "recorded.npz", path)  # without its record, as before records
  with warned_about(path):
    gallery = runner.load_gallery(path)
  for name, values in arrays.items():
    np.testing.assert_array_equal(gallery[name], values)
  damage(path, "truncate")  # without a record only what breaks the zip format is found
  with pytest.raises(files.DamagedFileError, match="not a readable .npz"):
    files.load_npz(path, unrecorded="accept")
  damage(tmp_path / "recorded.npz", "garble")
  with pytest.raises(files.DamagedFileError, match="garbled"):
    runner.load_gallery(tmp_path / "recorded.npz")


def test_a_process_waits_until_another_process_has_repaired_its_shard(tmp_path):
  compute = lambda shard: {"t": pd.DataFrame({"shard": [shard] * 3, "value": [shard / 7] * 3})}
  reference = runner.run_shard_tables(tmp_path / "ref", ("t",), range(4), compute,
                                      progress=False)["t"]
  shared = tmp_path / "shared"
  shutil.copytree(tmp_path / "ref", shared)
  garbled = runner.shard_path(shared, "t", 1)  # process 1's shard (position 1 of 4)
  damage(garbled, "truncate")
  results = {}
  waiting = threading.Thread(target=lambda: results.__setitem__(0, runner.run_shard_tables(
      shared, ("t",), range(4), compute, progress=False, process_index=0, process_count=2,
      poll_seconds=0.01)["t"]))
  waiting.start()
  time.sleep(0.5)
  assert waiting.is_alive(), "process 0 must not take the truncated shard 1 as finished"
  with warned_about(garbled):
    results[1] = runner.run_shard_tables(shared, ("t",), range(4), compute, progress=False,
                                         process_index=1, process_count=2)["t"]
  waiting.join(timeout=30)
  assert not waiting.is_alive()
  for process in (0, 1):
    pd.testing.assert_frame_equal(results[process], reference)
  assert (shared / "t.csv").read_bytes() == (tmp_path / "ref" / "t.csv").read_bytes()


# --------------------------------------------------------------------------------------------
# Training checkpoints and history (xai_jax.train).


class _Linear(nn.Module):

  @nn.compact
  def __call__(self, x, *, train: bool = False):  # pylint: disable=redefined-outer-name
    del train
    return nn.Dense(2, name="dense")(x.reshape(len(x), -1))


_MODEL = _Linear()
_TX = train.make_optimizer(learning_rate=0.05)
_RNG = np.random.default_rng(0)
_SHARDS = [{"image": _RNG.uniform(size=(8, 4, 4, 1)).astype(np.float32),
            "label": _RNG.integers(0, 2, 8).astype(np.int32)} for _ in range(2)]
# 2 shards x 2 batches x 2 epochs = 8 steps; saved at 3, 6 and 8, of which 6 and 8 are kept.


def _train(workdir, steps=None):
  state = train.init_train_state(_MODEL, tx=_TX, key=jax.random.key(0), input_shape=(1, 4, 4, 1))
  return train.train_continuous(
      _MODEL, state, _SHARDS, tx=_TX, epochs=2, batch_size=4, key=jax.random.key(1),
      workdir=workdir, checkpoint_every=3, progress=False,
      callback=None if steps is None else lambda step, *_: steps.append(step))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("trained")
  with warnings.catch_warnings():
    warnings.simplefilter("error", files.DamagedFileWarning)
    result = _train(workdir)
  assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.is_dir()) == [6, 8]
  return workdir, result


def _assert_same_run(result, workdir, reference, reference_dir):
  for a, b in zip(jax.tree.leaves(result.state), jax.tree.leaves(reference.state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert result.history == reference.history and result.stop_reason == reference.stop_reason
  for name in ("history.json", "history.csv"):
    assert (workdir / name).read_bytes() == (reference_dir / name).read_bytes()


def _largest_file(folder: pathlib.Path) -> pathlib.Path:
  return max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


@pytest.mark.slow
@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize("item", ["state", "progress"])
def test_a_damaged_final_checkpoint_is_recomputed_from_the_older_step(trained, tmp_path, item,
                                                                     how):
  reference_dir, reference = trained
  workdir = tmp_path / "w"
  shutil.copytree(reference_dir, workdir)
  # The array data (orbax restores garbled arrays without complaint), or the JSON progress
  # that says the run has finished.
  step = workdir / "checkpoints" / "8"
  target = _largest_file(step / "state") if item == "state" else step / "progress" / "metadata"
  damage(target, how)
  steps = []
  with warned_about(target):
    result = _train(workdir, steps)
  assert steps == [7, 8], "the damaged final step must not be taken as 'finished'"
  _assert_same_run(result, workdir, reference, reference_dir)
  assert files.is_intact(workdir / "history.json")
  files.verify_directory(workdir / "checkpoints" / "8")  # rewritten and recorded again


def test_a_deleted_final_step_is_recomputed_and_no_intact_step_is_refused(trained, tmp_path):
  reference_dir, reference = trained
  workdir = tmp_path / "w"
  shutil.copytree(reference_dir, workdir)
  shutil.rmtree(workdir / "checkpoints" / "8")
  steps = []
  with warned_about(workdir / "checkpoints" / "8"):
    result = _train(workdir, steps)
  assert steps == [7, 8]
  _assert_same_run(result, workdir, reference, reference_dir)
  for step in (6, 8):  # nothing left to resume from: refused, not restarted or "finished"
    damage(workdir / "checkpoints" / str(step) / "progress" / "metadata", "garble")
  with pytest.warns(files.DamagedFileWarning), pytest.raises(
      files.DamagedFileError, match=re.escape(str(workdir / "checkpoints")) + ".*delete"):
    _train(workdir)
  shutil.rmtree(workdir / "checkpoints")  # the fix the message gives
  _assert_same_run(_train(workdir), workdir, reference, reference_dir)


def test_checkpoints_without_records_are_used_with_a_warning(trained, tmp_path):
  reference_dir, reference = trained
  workdir = tmp_path / "w"
  shutil.copytree(reference_dir, workdir)
  for record in (workdir / "checkpoints").glob(f".*{files.RECORD_SUFFIX}"):
    record.unlink()  # as written by an xai_jax version before records
  steps = []
  with warned_about(workdir / "checkpoints" / "8"):
    result = _train(workdir, steps)
  assert steps == []  # finished, restored as it is
  _assert_same_run(result, workdir, reference, reference_dir)
  files.verify_directory(workdir / "checkpoints" / "8")  # recorded from now on


@pytest.mark.parametrize("how", [*DAMAGES, "unrecorded"])
def test_a_damaged_history_is_rebuilt_from_the_checkpoint(trained, tmp_path, how):
  reference_dir, reference = trained
  workdir = tmp_path / "w"
  shutil.copytree(reference_dir, workdir)
  damage(workdir / "history.json", how)
  with warned_about(workdir / "history.json"):
    history = train.load_history(workdir)
  assert history == reference.history
  assert (workdir / "history.json").read_bytes() == (reference_dir / "history.json").read_bytes()
  assert files.is_intact(workdir / "history.json")


def test_a_damaged_history_without_checkpoints_is_refused(tmp_path):
  train._write_history(tmp_path, [{"step": 4, "loss": 0.5}])  # pylint: disable=protected-access
  damage(tmp_path / "history.json", "truncate")
  with pytest.raises(files.DamagedFileError,
                     match=re.escape(str(tmp_path / "history.json")) + ".*rerun the training"):
    train.load_history(tmp_path)


# --------------------------------------------------------------------------------------------
# Ported weights (xai_jax.models.port): nothing to recompute them from, so refused.


@pytest.fixture(scope="module")
def ported(tmp_path_factory):
  model = models.get("resnet18", num_classes=2)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
  variables = jax.tree.map(lambda s: jnp.full(s.shape, 0.5, s.dtype), dict(shapes))
  directory = tmp_path_factory.mktemp("ported") / "resnet18"
  port.save(str(directory), variables, arch="resnet18", num_classes=2, source="test")
  return directory


def test_intact_ported_weights_load_without_warnings(ported, no_damage_warnings):
  model, variables = port.load(str(ported))
  assert model.num_classes == 2
  assert all(np.all(np.asarray(leaf) == 0.5) for leaf in jax.tree.leaves(variables))


@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize("target", ["model.json", "variables"])
def test_damaged_ported_weights_are_refused_with_the_fix(ported, tmp_path, target, how):
  directory = tmp_path / "resnet18"
  shutil.copytree(ported, directory)
  path = directory / target
  path = _largest_file(path) if path.is_dir() else path
  damage(path, how)
  with pytest.raises(files.DamagedFileError, match=re.escape(str(path)) + ".*experiments"
                     r"\.port_weights"):
    port.load(str(directory))


def test_ported_weights_without_records_load_with_a_warning(ported, tmp_path):
  directory = tmp_path / "resnet18"
  shutil.copytree(ported, directory)
  files.record_path(directory / "model.json").unlink()
  files.record_path(directory / "variables").unlink()
  with warned_about(directory / "model.json", directory / "variables"):
    model, _ = port.load(str(directory))
  assert model.num_classes == 2


def test_a_damaged_weights_npz_is_refused(tmp_path):
  load = image_experiment.load_npz
  variables = {"params": {"fc": {"kernel": np.arange(6.0).reshape(2, 3), "bias": np.ones(3)}}}
  path = tmp_path / "model.npz"
  image_experiment.save_npz(variables, path)
  np.testing.assert_array_equal(load(path)["params"]["fc"]["kernel"],
                                variables["params"]["fc"]["kernel"])
  for how in DAMAGES:
    image_experiment.save_npz(variables, path)
    damage(path, how)
    with pytest.raises(files.DamagedFileError, match=re.escape(str(path))):
      load(path)
  buffer = io.BytesIO()  # an .npz from elsewhere (no record) is read as it is
  np.savez(buffer, **{"params/fc/bias": np.ones(3)})
  (tmp_path / "foreign.npz").write_bytes(buffer.getvalue())
  assert load(tmp_path / "foreign.npz")["params"]["fc"]["bias"].shape == (3,)


# --------------------------------------------------------------------------------------------
# The sanity-check experiment: accuracy JSON, saved explanations, similarity shards.

_SANITY_TARGETS = ("train/accuracy.json", "train_random_labels/accuracy.json",
                   "explanations/data/gradient.npz", "shards/similarity_independent/"
                   "shard_00001.csv")


@pytest.fixture(scope="module")
def sanity_run(tmp_path_factory):
  config = sanity_config.get_config("tiny")
  workdir = tmp_path_factory.mktemp("sanity")
  sanity_checks.run(config, workdir, progress=False)
  return config, workdir


@pytest.mark.slow
@pytest.mark.parametrize("how", DAMAGES)
def test_damaged_sanity_check_files_are_recomputed_to_the_same_bytes(sanity_run, tmp_path, how):
  config, reference = sanity_run
  workdir = tmp_path / "w"
  shutil.copytree(reference, workdir)
  for target in _SANITY_TARGETS:
    damage(workdir / target, how)
  with warned_about(*(workdir / target for target in _SANITY_TARGETS)):
    sanity_checks.run(config, workdir, progress=False)
  for name in (*_SANITY_TARGETS, "model.json", "summary.csv", "similarity_data.csv",
               "similarity_independent.csv", "explanations/data/gradient.npz"):
    assert (workdir / name).read_bytes() == (reference / name).read_bytes(), name
