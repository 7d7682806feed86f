r"""Seconds per 100 explanations per method and model (Gattas 2020, Fig. 4.2).

  python -m experiments.timing --workdir=workdir/timing_quick                 # CPU, minutes
  python -m experiments.timing --config=configs/timing.py:paper --workdir=workdir/timing_paper

Times every method of the configured panel on every model (compilation excluded), and, when
the optional torch extra is installed, Captum, the `lime` package and `shap` on torch models
of the same architecture (`benchmarks.explainers.reference_timers`; `--noreferences` skips
them). The pipeline is `xai_jax.pipelines.timing.run` (outputs listed in its docstring);
the variants and their expected numbers are in `configs/timing.py`.
"""

from absl import app
from absl import flags

from experiments import launch
from xai_jax.pipelines import timing


def main(argv):
  del argv
  launch.start()
  references = None
  if flags.FLAGS.references:
    from benchmarks import explainers  # pylint: disable=import-outside-toplevel
    references = explainers.reference_timers()
    print(f"reference libraries: {', '.join(references) or 'none installed'}", flush=True)
  launch.run_and_print(lambda config, workdir: timing.run(config, workdir,
                                                          references=references))


if __name__ == "__main__":
  launch.define_config_and_workdir("timing")
  flags.DEFINE_bool("references", True, "also time Captum / lime / shap where installed")
  app.run(main)
