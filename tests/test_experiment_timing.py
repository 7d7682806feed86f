"""End-to-end tests of `xai_jax.pipelines.timing` (Gattas Fig. 4.2's design).

The clock is checked against calls of known duration (sleeps): the warm-up call is left out
of the median, seconds per 100 explanations is the median scaled by 100 / batch size, and the
reference libraries are injected factories (no torch needed).
"""

import json
import time

import pandas as pd
import pytest

from configs import timing as timing_config
from xai_jax.pipelines import timing


def _config(**overrides):
  config = timing_config.get_config("tiny")
  config.unlock()
  config.methods = {"gradient": {}, "random": {}}
  config.update(overrides)
  return config


def test_time_call_excludes_the_warm_up_call():
  calls = []

  def fn():
    calls.append(None)
    time.sleep(0.25 if len(calls) == 1 else 0.02)  # the first call "compiles"

  first, median = timing.time_call(fn, repeats=3)
  assert len(calls) == 4
  assert first >= 0.25 and 0.02 <= median < 0.15


def test_run_times_each_method_and_reference_and_resumes(tmp_path):
  config = _config(batch_size=2, repeats=2)
  made = []

  def fake_library(model_name, size, x, target, background, methods):
    # A reference whose "gradient" takes 0.05 s per call of the 2-image batch; no "random".
    made.append((model_name, size, x.shape, target.shape))
    return {"gradient": lambda: time.sleep(0.05)}

  out = timing.run(config, tmp_path, progress=False, references={"fake": fake_library})
  table = out["timing"]
  assert list(zip(table["method"], table["library"])) == [
      ("gradient", "xai_jax"), ("gradient", "fake"), ("random", "xai_jax")]
  assert made[0] == ("cnn", 32, (2, 32, 32, 3), (2,))
  fake = table.set_index(["method", "library"]).loc[("gradient", "fake")]
  # 0.05 s per call of 2 explanations: 2.5 s per 100 (sleep overshoots by a few ms).
  assert 2.5 <= fake["seconds_per_100"] < 4.0
  assert fake["seconds_per_100"] == pytest.approx(fake["median_s"] * 100 / 2)
  assert (table["seconds_per_100"] > 0).all() and (table["error"] == "").all()
  assert (tmp_path / "timing.csv").is_file() and (tmp_path / "figures" / "timing.png").is_file()
  wide = out["summary"].set_index(["model", "method"])
  assert wide.loc[("cnn", "gradient"), "fake/xai_jax"] == pytest.approx(
      fake["seconds_per_100"] / table.iloc[0]["seconds_per_100"])
  assert json.loads((tmp_path / "config.json").read_text())["batch_size"] == 2
  # A rerun resumes: every row is a finished shard, nothing is timed again.
  made.clear()
  again = timing.run(config, tmp_path, progress=False, references={"fake": fake_library})
  assert not made
  pd.testing.assert_frame_equal(again["timing"], table)


def test_a_bad_config_is_refused_before_any_file(tmp_path):
  for overrides, message in (({"models": {"nonexistent": 32}}, r"unknown model 'nonexistent'"),
                             ({"batch_size": 0}, r"batch_size must be a positive int"),
                             ({"methods": {"lime": {"samples": 0}}}, r"methods.lime")):
    with pytest.raises(ValueError, match=message):
      timing.run(_config(**overrides), tmp_path / "out", progress=False)
  assert not (tmp_path / "out").exists()
  for variant in timing_config.VARIANTS:
    timing.validate(timing_config.get_config(variant))
