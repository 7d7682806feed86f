"""The explainer benchmark runs end to end on a tiny configuration (xai_jax only)."""

import argparse

import pytest

from benchmarks import explainers as bench


@pytest.mark.slow
def test_explainer_benchmark_tiny_run_reports_times_and_floor_ratios(capsys):
  rows = bench.run(argparse.Namespace(
      models="cnn", methods="gradient,integrated_gradients,deeplift", size=16, batch=2,
      steps=4, samples=2, chunk=2, loops="python,lax", repeats=1, min_seconds=0.0,
      no_captum=True))
  assert [(r["method"], r["loop"]) for r in rows] == [
      ("gradient", "-"), ("integrated_gradients", "python"), ("integrated_gradients", "lax"),
      ("deeplift", "-")]
  assert all(r["xai_s"] > 0 and "error" not in r for r in rows)
  assert all(r["ratio_floor"] > 0 for r in rows if r["method"] == "integrated_gradients")
  assert "integrated_gradients" in capsys.readouterr().out


@pytest.mark.slow
def test_explainer_benchmark_times_perturbation_methods_against_forward_passes():
  rows = bench.run(argparse.Namespace(
      models="cnn", methods="occlusion,kernel_shap", size=16, batch=2, steps=4, samples=2,
      chunk=3, loops="python", repeats=1, min_seconds=0.0, no_captum=True, grid=2,
      perturbation_samples=6))
  assert [(r["method"], r["loop"]) for r in rows] == [("occlusion", "python"),
                                                      ("kernel_shap", "python")]
  assert all(r["xai_s"] > 0 and r["ratio_floor"] > 0 and "error" not in r for r in rows)


def test_timing_repeats_cheap_calls_until_min_seconds(monkeypatch):
  clock = iter(0.0625 * i for i in range(10_000))  # every timed call lasts 1/16 s (exact)
  monkeypatch.setattr(bench.time, "perf_counter", lambda: next(clock))
  calls = []
  fn = lambda: calls.append(1)  # noqa: E731
  assert bench._time(fn, 3, 0.0) == 0.0625  # pylint: disable=protected-access
  assert len(calls) == 1 + 3  # the warm-up, then `repeats`
  calls.clear()
  bench._time(fn, 3, 1.0)  # pylint: disable=protected-access
  assert len(calls) == 1 + 16  # 16 x 1/16 s reach 1 s
  calls.clear()
  bench._time(fn, 3, 1e9)  # pylint: disable=protected-access
  assert len(calls) == 1 + bench.MAX_CALLS


def test_explainer_benchmark_rejects_unknown_names():
  with pytest.raises(SystemExit):
    bench.main(["--loops", "scan"])
  with pytest.raises(ValueError, match="unknown methods"):
    bench.main(["--methods", "gradient,nope", "--no-captum", "--models", "cnn", "--size", "8",
                "--batch", "1"])
